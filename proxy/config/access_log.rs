//! Per-listener `access_log:`: one JSON line per request, to a file or to stderr. Off unless
//! configured. The YAML shape, the validated model and the validation live together.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration::DurationStr;
use super::errors::{Errors, did_you_mean};

/// Lines that may wait for the writer before new ones are dropped (and counted).
pub const DEFAULT_BUFFER_LINES: usize = 16_384;
const MIN_BUFFER_LINES: usize = 1;
const MAX_BUFFER_LINES: usize = 1 << 20;
/// How long a queued line may wait for the writer (nginx's `flush=`).
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(60);
const FORMATS: &[&str] = &["json"];

// ----- as written -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    /// An absolute file path, or `stderr`.
    pub path: Option<String>,
    pub format: Option<String>,
    pub buffer_lines: Option<usize>,
    pub flush_interval: Option<DurationStr>,
}

// ----- validated -----

/// Where a listener's access log goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccessLogTarget {
    File(PathBuf),
    Stderr,
}

impl AccessLogTarget {
    /// As `switchyard_access_log_*{path}` and logs name it.
    pub fn label(&self) -> String {
        match self {
            AccessLogTarget::File(p) => p.display().to_string(),
            AccessLogTarget::Stderr => "stderr".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    pub target: AccessLogTarget,
    /// The writer's queue, in lines (shared by every listener logging to the same target; the
    /// first listener's value wins).
    pub buffer_lines: usize,
    /// The longest a queued line waits before the writer writes it (it writes sooner once a
    /// batch has queued up, on SIGUSR1 and at shutdown).
    pub flush_interval: Duration,
}

/// `path` is the listener's (`listeners[0]`); errors are reported under `{path}.access_log`.
pub(super) fn access_log(
    path: &str,
    f: Option<&AccessLogFile>,
    errs: &mut Errors,
) -> Option<AccessLog> {
    let f = f?;
    let p = format!("{path}.access_log");
    let before = errs.len();
    let target = match f.path.as_deref() {
        None => {
            errs.push(
                format!("{p}.path"),
                "missing; give an absolute file path, e.g. /var/log/switchyard/access.log, or `stderr`",
            );
            None
        }
        Some("stderr") => Some(AccessLogTarget::Stderr),
        Some(s) if s.is_empty() || s.ends_with('/') || s.contains('\0') => {
            errs.push(
                format!("{p}.path"),
                format!("`{s}` is not a file path; give an absolute file path, e.g. /var/log/switchyard/access.log, or `stderr`"),
            );
            None
        }
        Some(s) if !s.starts_with('/') => {
            errs.push(
                format!("{p}.path"),
                format!("`{s}` is relative; give an absolute path (a relative one would depend on the directory switchyard was started in), or `stderr`"),
            );
            None
        }
        Some(s) => Some(AccessLogTarget::File(PathBuf::from(s))),
    };
    match f.format.as_deref() {
        None | Some("json") => {}
        Some(other) => errs.push(
            format!("{p}.format"),
            format!(
                "unknown format `{other}`{}; the one format is `json`",
                did_you_mean(other, FORMATS)
            ),
        ),
    }
    let buffer_lines = f.buffer_lines.unwrap_or(DEFAULT_BUFFER_LINES);
    if !(MIN_BUFFER_LINES..=MAX_BUFFER_LINES).contains(&buffer_lines) {
        errs.push(
            format!("{p}.buffer_lines"),
            format!("{buffer_lines} is out of range; use {MIN_BUFFER_LINES} to {MAX_BUFFER_LINES} (default {DEFAULT_BUFFER_LINES})"),
        );
    }
    let flush_interval = f.flush_interval.map_or(DEFAULT_FLUSH_INTERVAL, |d| d.0);
    if flush_interval.is_zero() || flush_interval > MAX_FLUSH_INTERVAL {
        errs.push(
            format!("{p}.flush_interval"),
            format!("{flush_interval:?} is out of range; use 1ms to 60s (default 1s)"),
        );
    }
    if errs.len() > before {
        return None;
    }
    Some(AccessLog {
        target: target?,
        buffer_lines,
        flush_interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> (Option<AccessLog>, Vec<String>) {
        let f: AccessLogFile = serde_yaml::from_str(yaml).unwrap();
        let mut errs = Errors::default();
        let out = access_log("listeners[0]", Some(&f), &mut errs);
        let paths = errs.into_vec().into_iter().map(|e| e.path).collect();
        (out, paths)
    }

    #[test]
    fn a_file_or_stderr() {
        let (out, errs) = check("{ path: /var/log/a.log, format: json }");
        assert!(errs.is_empty());
        let out = out.unwrap();
        assert_eq!(
            out.target,
            AccessLogTarget::File(PathBuf::from("/var/log/a.log"))
        );
        assert_eq!(out.flush_interval, DEFAULT_FLUSH_INTERVAL);
        let (out, _) = check("{ path: /var/log/a.log, flush_interval: 50ms }");
        assert_eq!(out.unwrap().flush_interval, Duration::from_millis(50));
        let (out, _) = check("{ path: stderr }");
        assert_eq!(out.unwrap().target, AccessLogTarget::Stderr);
    }

    #[test]
    fn every_mistake_with_its_path() {
        let (out, errs) = check("{ path: logs/a.log, format: jsn, buffer_lines: 0 }");
        assert!(out.is_none());
        assert_eq!(
            errs,
            [
                "listeners[0].access_log.path",
                "listeners[0].access_log.format",
                "listeners[0].access_log.buffer_lines"
            ]
        );
        let (_, errs) = check("{ format: json }");
        assert_eq!(errs, ["listeners[0].access_log.path"]);
        let (_, errs) = check("{ path: /var/log/ }");
        assert_eq!(errs, ["listeners[0].access_log.path"]);
        for bad in ["0s", "2m"] {
            let (_, errs) = check(&format!("{{ path: /a.log, flush_interval: {bad} }}"));
            assert_eq!(errs, ["listeners[0].access_log.flush_interval"], "{bad}");
        }
    }
}
