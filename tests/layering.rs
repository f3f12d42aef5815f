//! The module graph of `proxy/`, read from the source: no import cycle between top-level modules,
//! none between the submodules of any one of them, and nothing below `http`, `rollout`, `fleet`
//! or `admin` imports them (DESIGN.md's "data flows one way").
//!
//! An edge is any path through `crate::`, `super::` or `self::` (in a `use` or inline in code),
//! resolved to the module that defines the item: a `pub use` re-export is followed to its source,
//! so a `mod.rs` that only re-exports is a namespace, not a node. Test code (`#[cfg(test)]` items
//! and `*_tests.rs` files) is left out: a test may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Top-level modules whose submodules are not checked (yet). Each line is one exception.
const NOT_YET_CHECKED_INSIDE: &[&str] = &[];

/// The modules DESIGN puts on top: only `app` and each other may import them.
const TOP: &[&str] = &["http", "rollout", "fleet", "admin"];

#[test]
fn top_level_modules_import_each_other_in_one_direction() {
    let graph = Graph::read();
    let edges = graph.edges(|m| m.first().cloned());
    if std::env::var_os("LAYERING_PRINT").is_some() {
        for ((a, b), at) in &edges {
            println!("{a} -> {b} (at {at})");
        }
    }
    let cycles = cycles(&edges);
    assert!(
        cycles.is_empty(),
        "import cycles between top-level modules:\n{}",
        describe(&cycles, &edges)
    );
    let upward: Vec<String> = edges
        .iter()
        .filter(|((from, to), _)| TOP.contains(&to.as_str()) && !TOP.contains(&from.as_str()))
        .filter(|((from, _), _)| from != "app")
        .map(|((from, to), at)| format!("  {from} -> {to} (at {at})"))
        .collect();
    assert!(
        upward.is_empty(),
        "only `app` and {TOP:?} may import {TOP:?}:\n{}",
        upward.join("\n")
    );
}

#[test]
fn submodules_of_each_module_import_each_other_in_one_direction() {
    let graph = Graph::read();
    let mut report = String::new();
    let tops: BTreeSet<String> = graph
        .modules
        .iter()
        .filter_map(|m| m.first().cloned())
        .collect();
    for top in &tops {
        if NOT_YET_CHECKED_INSIDE.contains(&top.as_str()) {
            continue;
        }
        let edges = graph.edges(|m| match m.as_slice() {
            [t, sub, ..] if t == top => Some(sub.clone()),
            [t] if t == top => Some("mod.rs".to_owned()),
            _ => None,
        });
        let found = cycles(&edges);
        if !found.is_empty() {
            report.push_str(&format!("in {top}/:\n{}", describe(&found, &edges)));
        }
    }
    assert!(report.is_empty(), "import cycles inside modules:\n{report}");
}

#[test]
fn the_reader_sees_real_edges() {
    // Guards the parser: if it stopped seeing edges, the checks above would pass vacuously.
    let graph = Graph::read();
    let edges = graph.edges(|m| m.first().cloned());
    for (from, to) in [("http", "backend"), ("reload", "config"), ("app", "server")] {
        assert!(
            edges.contains_key(&(from.to_owned(), to.to_owned())),
            "expected an edge {from} -> {to}; the reader is broken"
        );
    }
    assert!(graph.modules.len() > 40, "{} modules", graph.modules.len());
}

type Module = Vec<String>;

/// Where one reference was seen: `file:line`.
type At = String;

struct Graph {
    modules: BTreeSet<Module>,
    /// Re-exports: (module, name) -> the path it stands for.
    reexports: BTreeMap<(Module, String), Vec<String>>,
    /// (from module, referenced path as written but made absolute, where).
    refs: Vec<(Module, Vec<String>, At)>,
}

impl Graph {
    fn read() -> Graph {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy");
        let mut files = Vec::new();
        walk(&root, &mut files);
        let mut g = Graph {
            modules: BTreeSet::new(),
            reexports: BTreeMap::new(),
            refs: Vec::new(),
        };
        let mut parsed = Vec::new();
        for file in files {
            let rel = file.strip_prefix(&root).unwrap_or(&file);
            let Some(module) = module_of(rel) else {
                continue;
            };
            let text =
                fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            g.modules.insert(module.clone());
            parsed.push((module, rel.display().to_string(), tokens(&text)));
        }
        for (module, name, toks) in parsed {
            let toks = without_test_items(toks);
            let mut i = 0;
            while i < toks.len() {
                let (t, line) = (&toks[i].0, toks[i].1);
                let at = format!("proxy/{name}:{line}");
                let public = i > 0 && is_visibility_end(&toks, i);
                if t == "use" {
                    let end = (i..toks.len())
                        .find(|&j| toks[j].0 == ";")
                        .unwrap_or(toks.len());
                    for (path, alias) in use_paths(&toks[i + 1..end]) {
                        let Some(abs) = absolute(&module, &path) else {
                            continue;
                        };
                        if public {
                            g.reexports.insert((module.clone(), alias), abs.clone());
                        } else {
                            g.refs.push((module.clone(), abs, at.clone()));
                        }
                    }
                    i = end;
                    continue;
                }
                if matches!(t.as_str(), "crate" | "super" | "self")
                    && toks.get(i + 1).is_some_and(|n| n.0 == "::")
                    && (i == 0 || toks[i - 1].0 != "::")
                {
                    let mut path = vec![t.clone()];
                    let mut j = i + 1;
                    while toks.get(j).is_some_and(|n| n.0 == "::")
                        && toks.get(j + 1).is_some_and(|n| is_ident(&n.0))
                    {
                        path.push(toks[j + 1].0.clone());
                        j += 2;
                    }
                    if let Some(abs) = absolute(&module, &path) {
                        g.refs.push((module.clone(), abs, at));
                    }
                    i = j;
                    continue;
                }
                i += 1;
            }
        }
        g
    }

    /// The module that defines what `path` names, following re-exports.
    fn resolve(&self, path: &[String]) -> Module {
        let mut path = path.to_vec();
        for _ in 0..8 {
            let module = self.longest_module(&path);
            let Some(next) = path.get(module.len()) else {
                return module;
            };
            match self.reexports.get(&(module.clone(), next.clone())) {
                Some(target) => {
                    let mut p = target.clone();
                    p.extend_from_slice(&path[module.len() + 1..]);
                    path = p;
                }
                None => return module,
            }
        }
        self.longest_module(&path)
    }

    fn longest_module(&self, path: &[String]) -> Module {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| self.modules.contains(m))
            .unwrap_or_default()
    }

    /// Edges between the nodes `node` maps modules to (modules it maps to `None` are outside
    /// the graph), each with one place it was seen.
    fn edges(&self, node: impl Fn(&Module) -> Option<String>) -> BTreeMap<(String, String), At> {
        let mut edges = BTreeMap::new();
        for (from, path, at) in &self.refs {
            let to = self.resolve(path);
            if let (Some(a), Some(b)) = (node(from), node(&to))
                && a != b
            {
                edges.entry((a, b)).or_insert_with(|| at.clone());
            }
        }
        edges
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `http/shadow/mod.rs` -> [http, shadow]; `lib.rs`, `main.rs` and test files -> none.
fn module_of(rel: &Path) -> Option<Module> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop()?;
    let stem = file.strip_suffix(".rs")?;
    if stem.ends_with("_tests") || (parts.is_empty() && matches!(stem, "lib" | "main")) {
        return None;
    }
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    Some(parts)
}

/// Makes a `crate::`/`super::`/`self::` path absolute (without `crate`); other paths: `None`.
fn absolute(module: &Module, path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "self" => module.clone(),
        "super" => module.clone(),
        _ => return None,
    };
    let mut rest = &path[1..];
    if path[0] == "super" {
        base.pop()?;
        while rest.first().is_some_and(|s| s == "super") {
            base.pop()?;
            rest = &rest[1..];
        }
    }
    base.extend(rest.iter().filter(|s| *s != "self").cloned());
    Some(base)
}

/// Whether the `use` at `i` is `pub`, `pub(crate)` or `pub(super)`.
fn is_visibility_end(toks: &[(String, usize)], i: usize) -> bool {
    let prev = &toks[i - 1].0;
    prev == "pub" || (prev == ")" && i >= 4 && toks[i - 4].0 == "pub")
}

fn is_ident(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// The paths of a use tree (tokens between `use` and `;`), each with the name it binds.
fn use_paths(toks: &[(String, usize)]) -> Vec<(Vec<String>, String)> {
    fn tree(
        toks: &[(String, usize)],
        i: &mut usize,
        prefix: &[String],
        out: &mut Vec<(Vec<String>, String)>,
    ) {
        let mut path = prefix.to_vec();
        while *i < toks.len() {
            let t = toks[*i].0.as_str();
            match t {
                "::" => *i += 1,
                "{" => {
                    *i += 1;
                    while *i < toks.len() && toks[*i].0 != "}" {
                        tree(toks, i, &path, out);
                        if toks.get(*i).is_some_and(|t| t.0 == ",") {
                            *i += 1;
                        }
                    }
                    *i += 1;
                    return;
                }
                "*" => {
                    *i += 1;
                    out.push((path, "*".to_owned()));
                    return;
                }
                "," | "}" => break,
                "as" => {
                    let alias = toks.get(*i + 1).map_or(String::new(), |t| t.0.clone());
                    *i += 2;
                    out.push((path, alias));
                    return;
                }
                _ => {
                    path.push(t.to_owned());
                    *i += 1;
                }
            }
        }
        let name = match path.last().map(String::as_str) {
            Some("self") => path
                .get(path.len().wrapping_sub(2))
                .cloned()
                .unwrap_or_default(),
            Some(n) => n.to_owned(),
            None => return,
        };
        out.push((path, name));
    }
    let mut out = Vec::new();
    let mut i = 0;
    if toks.first().is_some_and(|t| t.0 == "::") {
        i = 1;
    }
    tree(toks, &mut i, &[], &mut out);
    out
}

/// Drops every item marked `#[cfg(test)]` (attribute and item, up to its `;` or closing `}`).
fn without_test_items(toks: Vec<(String, usize)>) -> Vec<(String, usize)> {
    let pattern = ["#", "[", "cfg", "(", "test", ")", "]"];
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let is_test = pattern
            .iter()
            .enumerate()
            .all(|(k, p)| toks.get(i + k).is_some_and(|t| t.0 == *p));
        if !is_test {
            out.push(toks[i].clone());
            i += 1;
            continue;
        }
        i += pattern.len();
        let mut depth = 0usize;
        while i < toks.len() {
            let t = toks[i].0.as_str();
            i += 1;
            match t {
                "{" => depth += 1,
                "}" => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                ";" if depth == 0 => break,
                _ => {}
            }
        }
    }
    out
}

/// Identifiers and punctuation with their line, comments and literals left out.
fn tokens(text: &str) -> Vec<(String, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        line += usize::from(b[i] == b'\n');
                        i += 1;
                    }
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    line += usize::from(b[i] == b'\n');
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'r' if b.get(i + 1) == Some(&b'#') || (b.get(i + 1) == Some(&b'"')) => {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    // `r#ident`: a raw identifier.
                    out.push((
                        String::from_utf8_lossy(&b[j..ident_end(b, j)]).into_owned(),
                        line,
                    ));
                    i = ident_end(b, j);
                    continue;
                }
                j += 1;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                while j < b.len() && !b[j..].starts_with(&close) {
                    line += usize::from(b[j] == b'\n');
                    j += 1;
                }
                i = j + close.len();
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
                if b.get(i + 1) == Some(&b'\\') {
                    i += 2;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                } else if b.get(i + 2) == Some(&b'\'') {
                    i += 3;
                } else {
                    let len = std::str::from_utf8(&b[i + 1..])
                        .ok()
                        .and_then(|s| s.chars().next())
                        .map_or(1, char::len_utf8);
                    if b.get(i + 1 + len) == Some(&b'\'') {
                        i += 2 + len;
                    } else {
                        i += 1;
                    }
                }
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                out.push(("::".to_owned(), line));
                i += 2;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end = ident_end(b, i);
                out.push((String::from_utf8_lossy(&b[i..end]).into_owned(), line));
                i = end;
            }
            c if c.is_ascii_whitespace() || c.is_ascii_digit() => i += 1,
            c => {
                out.push(((c as char).to_string(), line));
                i += 1;
            }
        }
    }
    out
}

fn ident_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
        i += 1;
    }
    i
}

/// Strongly connected components of more than one node (Tarjan), each sorted.
fn cycles(edges: &BTreeMap<(String, String), At>) -> Vec<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        next.entry(a).or_default().push(b);
        next.entry(b).or_default();
    }
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(v: &'a str, next: &BTreeMap<&'a str, Vec<&'a str>>, s: &mut State<'a>) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in &next[v] {
            if !s.index.contains_key(w) {
                visit(w, next, s);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                scc.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for &v in next.keys() {
        if !s.index.contains_key(v) {
            visit(v, &next, &mut s);
        }
    }
    s.out
}

/// Each cycle with the edges inside it and where each edge was seen.
fn describe(cycles: &[Vec<String>], edges: &BTreeMap<(String, String), At>) -> String {
    let mut out = String::new();
    for c in cycles {
        out.push_str(&format!("  cycle through {}:\n", c.join(", ")));
        for ((a, b), at) in edges {
            if c.contains(a) && c.contains(b) {
                out.push_str(&format!("    {a} -> {b} (at {at})\n"));
            }
        }
    }
    out
}
