#!/usr/bin/env python3
"""Instructions per request by whose code ran them: the difference of two callgrind profiles
(FEW and MANY requests, as load-tests/callgrind.sh takes them) divided by MANY - FEW, grouped
by the source file each instruction came from (so code inlined from tokio counts as tokio's).

    python3 load-tests/floor/by_crate.py DIR FEW MANY [TOP]    # DIR holds cg.FEW and cg.MANY
"""
import collections
import re
import subprocess
import sys


def profile(path):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", "--auto=no", path],
                         capture_output=True, text=True, check=True).stdout
    rows = {}
    # The function table sits after the "Ir  file:function" header.
    table = out.split("file:function", 1)[1]
    for line in table.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*?)(?: \[[^\]]*\])?$", line)
        if m and "PROGRAM TOTALS" not in m.group(2):
            rows[m.group(2)] = rows.get(m.group(2), 0) + int(m.group(1).replace(",", ""))
    return rows


def group(key):
    src, _, func = key.partition(":")
    # Inlined std/core code counts for the function it was inlined into.
    if src.startswith("/rustc/") or "sysdeps" in src:
        if re.search(r"Timespec|clock_gettime|Instant", func):
            return "clock reads (Instant::now, for tokio's timers)"
        for name, pat in [("tokio", r"\btokio::|\bmio::"), ("httparse", r"httparse::"),
                          ("floor (own code)", r"\bfloor::"), ("hyper, hyper-util", r"\bhyper(_util)?::"),
                          ("switchyard (own code)", r"\bswitchyard::")]:
            if re.search(pat, func):
                return name
    for name, pat in [("tokio", r"/(tokio|mio)-\d"), ("httparse", r"/httparse-\d"),
                      ("floor (own code)", r"load-tests/floor/src/"),
                      ("hyper, hyper-util", r"/hyper(-util)?-\d"),
                      ("http, h2, bytes, http-body", r"/(h2|http|bytes|http-body[-\w]*)-\d"),
                      ("switchyard (own code)", r"(^|/)proxy/"),
                      ("jemalloc", r"jemalloc"),
                      ("libc (memcpy, memset, malloc, syscall stubs)", r"sysdeps|/glibc|libc\.so|nptl|malloc"),
                      ("rust std/core/alloc", r"^/rustc/")]:
        if re.search(pat, src):
            return name
    return "other crates"


def main():
    d, few, many = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 25
    a, b = profile(f"{d}/cg.{few}"), profile(f"{d}/cg.{many}")
    n = many - few
    diff = {k: (b.get(k, 0) - a.get(k, 0)) / n for k in set(a) | set(b)}
    groups = collections.Counter()
    for k, v in diff.items():
        groups[group(k)] += v
    total = sum(diff.values())
    print(f"instructions per request: {total:,.0f}")
    for g, v in groups.most_common():
        if abs(v) >= 50:
            print(f"  {v:8,.0f}  {g}")
    print(f"top {top} source:function rows (per request; inlined code under its own source file):")
    for k, v in sorted(diff.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {v:8,.0f}  {k[-110:]}")


if __name__ == "__main__":
    main()
