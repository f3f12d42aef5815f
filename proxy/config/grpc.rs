//! gRPC status codes as the config names them: which statuses say an upstream's backend failed
//! (`grpc_failures`, per upstream) and the sets `retries.on` lists. A set of codes is a bitmask
//! of the 17 codes, so the request path asks it with one AND and carries no list.

use serde::Deserialize;

use super::errors::{Errors, did_you_mean};

/// The 17 status codes, by their number, as gRPC spells them.
pub const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A set of gRPC status codes (bit `n`: code `n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GrpcCodes(u32);

impl GrpcCodes {
    pub const EMPTY: GrpcCodes = GrpcCodes(0);

    /// The statuses that say the backend failed whatever the upstream adds: UNKNOWN,
    /// DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS (as Linkerd's default gRPC failure
    /// classes). Client-side statuses (INVALID_ARGUMENT, NOT_FOUND, ...) are not among them.
    pub const DEFAULT_FAILURES: GrpcCodes =
        GrpcCodes(1 << 2 | 1 << 4 | 1 << 13 | 1 << 14 | 1 << 15);

    pub const fn contains(self, code: u8) -> bool {
        code < 32 && self.0 & (1 << code) != 0
    }

    #[must_use]
    pub const fn with(self, code: u8) -> GrpcCodes {
        if code < 17 {
            GrpcCodes(self.0 | 1 << code)
        } else {
            self
        }
    }

    #[must_use]
    pub const fn union(self, other: GrpcCodes) -> GrpcCodes {
        GrpcCodes(self.0 | other.0)
    }

    /// The codes in `self` and not in `other`.
    #[must_use]
    pub const fn without(self, other: GrpcCodes) -> GrpcCodes {
        GrpcCodes(self.0 & !other.0)
    }

    /// The codes in the set, smallest first.
    pub fn codes(self) -> impl Iterator<Item = u8> {
        (0u8..17).filter(move |c| self.contains(*c))
    }

    /// The names of the codes in the set, as gRPC spells them.
    pub fn names(self) -> Vec<&'static str> {
        self.codes().map(|c| NAMES[usize::from(c)]).collect()
    }
}

/// The code a name stands for: as gRPC spells it (`RESOURCE_EXHAUSTED`) or as `retries.on` and
/// Envoy's `retry_on` do (`resource-exhausted`).
pub fn code(name: &str) -> Option<u8> {
    let position = NAMES.iter().position(|n| {
        *n == name
            || (n.len() == name.len()
                && n.bytes().zip(name.bytes()).all(|(a, b)| {
                    b == if a == b'_' {
                        b'-'
                    } else {
                        a.to_ascii_lowercase()
                    }
                }))
    });
    position.and_then(|p| u8::try_from(p).ok())
}

/// One entry of `grpc_failures` as written: a name or a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum GrpcStatusFile {
    Code(i64),
    Name(String),
}

/// An upstream's `grpc_failures`: the statuses it adds to [`GrpcCodes::DEFAULT_FAILURES`].
/// Every entry is checked (OK and unknown names are errors, each with its path).
pub(super) fn failures(
    path: &str,
    list: Option<&[GrpcStatusFile]>,
    errs: &mut Errors,
) -> GrpcCodes {
    let mut set = GrpcCodes::DEFAULT_FAILURES;
    for (i, item) in list.unwrap_or_default().iter().enumerate() {
        let at = format!("{path}.grpc_failures[{i}]");
        let code = match item {
            GrpcStatusFile::Code(n) => u8::try_from(*n).ok().filter(|c| *c < 17).ok_or_else(|| {
                format!("{n} is not a gRPC status; codes run from 1 (CANCELLED) to 16 (UNAUTHENTICATED)")
            }),
            GrpcStatusFile::Name(n) => code(n).ok_or_else(|| {
                format!(
                    "`{n}` is not a gRPC status{}; write a name as gRPC spells it (e.g. RESOURCE_EXHAUSTED) or its number",
                    did_you_mean(&n.to_ascii_uppercase().replace('-', "_"), &NAMES)
                )
            }),
        };
        match code {
            Ok(0) => errs.push(at, "OK is a success; it cannot count as a failure"),
            Ok(c) => set = set.with(c),
            Err(why) => errs.push(at, why),
        }
    }
    set
}

/// A rollout's gates compare the canary's error rate with stable's: both must count the same
/// gRPC statuses as failures, or a canary that answers RESOURCE_EXHAUSTED exactly as often as
/// stable passes (or fails) only because one side counts it. A mismatch is reported at the
/// canary's list, where the new version's config is being written.
pub(super) fn rollout_counts_alike(
    route: &str,
    rollout: &super::rollout::RolloutFile,
    upstreams: &[std::sync::Arc<super::model::Upstream>],
    errs: &mut Errors,
) {
    let find = |name: &str| upstreams.iter().find(|u| &*u.name == name);
    let (Some(stable), Some(canary)) = (find(&rollout.stable), find(&rollout.canary)) else {
        return;
    };
    let (s, c) = (stable.grpc_failures, canary.grpc_failures);
    if s == c {
        return;
    }
    let only = |name: &str, set: GrpcCodes| match set.names().as_slice() {
        [] => None,
        names => Some(format!("only `{name}` counts {}", names.join(", "))),
    };
    let differences: Vec<String> = [
        only(&canary.name, c.without(s)),
        only(&stable.name, s.without(c)),
    ]
    .into_iter()
    .flatten()
    .collect();
    errs.push(
        format!("upstreams.{}.grpc_failures", canary.name),
        format!(
            "{route}.rollout compares canary `{}` with stable `{}`, and they count different gRPC statuses as failures ({}): the gates would compare error rates counted two ways; give both the same `grpc_failures`",
            canary.name,
            stable.name,
            differences.join("; ")
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_grpc_or_envoy_spell_them() {
        assert_eq!(code("RESOURCE_EXHAUSTED"), Some(8));
        assert_eq!(code("resource-exhausted"), Some(8));
        assert_eq!(code("UNAUTHENTICATED"), Some(16));
        assert_eq!(code("ok"), Some(0));
        assert_eq!(code("Resource_Exhausted"), None);
        assert_eq!(code("resource_exhausted"), None);
        assert_eq!(code("RESOURCE-EXHAUSTED"), None);
        assert_eq!(code(""), None);
    }

    #[test]
    fn the_default_five_and_what_an_upstream_adds() {
        let d = GrpcCodes::DEFAULT_FAILURES;
        assert_eq!(
            d.names(),
            [
                "UNKNOWN",
                "DEADLINE_EXCEEDED",
                "INTERNAL",
                "UNAVAILABLE",
                "DATA_LOSS"
            ]
        );
        for c in [0, 1, 3, 5, 7, 8, 16, 17, 31, 200] {
            assert!(!d.contains(c), "{c}");
        }
        let mut errs = Errors::default();
        let list = [
            GrpcStatusFile::Name("RESOURCE_EXHAUSTED".into()),
            GrpcStatusFile::Code(10),
            GrpcStatusFile::Name("unavailable".into()),
        ];
        let set = failures("upstreams.u", Some(&list), &mut errs);
        assert!(errs.is_empty());
        assert!(set.contains(8) && set.contains(10) && set.contains(14) && set.contains(2));
        assert_eq!(set.codes().count(), 7);
    }

    /// A rollout's two sides are compared by the statuses they count, not by how their lists
    /// are written: a default status listed on one side only is no difference.
    #[test]
    fn a_rollout_whose_sides_count_alike_passes_however_their_lists_are_written() {
        let config = |stable: &str, canary: &str| {
            format!(
                "listeners: [{{ bind: \"127.0.0.1:0\" }}]\nupstreams:\n  a: {{ protocol: http2, backends: [\"127.0.0.1:1\"]{stable} }}\n  b: {{ protocol: http2, backends: [\"127.0.0.1:2\"]{canary} }}\n\
                 routes:\n  - name: r\n    split: [{{ upstream: a, weight: 100 }}, {{ upstream: b, weight: 0 }}]\n    rollout: {{ strategy: canary, stable: a, canary: b }}\n"
            )
        };
        let parse = |s: &str, c: &str| crate::config::load::parse_str(&config(s, c));
        assert!(parse("", ", grpc_failures: [UNAVAILABLE]").is_ok());
        assert!(
            parse(
                ", grpc_failures: [8, 10]",
                ", grpc_failures: [ABORTED, resource-exhausted]"
            )
            .is_ok()
        );
        let errs = parse("", ", grpc_failures: [RESOURCE_EXHAUSTED]")
            .unwrap_err()
            .0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "upstreams.b.grpc_failures");
        assert!(
            errs[0]
                .message
                .contains("only `b` counts RESOURCE_EXHAUSTED"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn ok_unknown_names_and_codes_out_of_range_are_each_reported() {
        let mut errs = Errors::default();
        let list = [
            GrpcStatusFile::Name("OK".into()),
            GrpcStatusFile::Name("RESOURCE_EXHAUSTD".into()),
            GrpcStatusFile::Code(17),
            GrpcStatusFile::Code(-1),
            GrpcStatusFile::Code(0),
        ];
        let set = failures("upstreams.u", Some(&list), &mut errs);
        assert_eq!(set, GrpcCodes::DEFAULT_FAILURES);
        let errs = errs.into_vec();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            (0..5)
                .map(|i| format!("upstreams.u.grpc_failures[{i}]"))
                .collect::<Vec<_>>()
        );
        assert!(
            errs[1]
                .message
                .contains("did you mean `RESOURCE_EXHAUSTED`"),
            "{}",
            errs[1]
        );
        assert!(errs[0].message.contains("OK is a success"));
    }
}
