//! Lock-free request counters, kept by the reloader across reloads so that Prometheus counters
//! never go backwards while their series exist.

use std::sync::atomic::{AtomicU64, Ordering};

/// `code_class` label values, indexed by [`code_class`].
pub(crate) const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index into [`CODE_CLASSES`] of a status code.
pub(crate) fn code_class(status: u16) -> usize {
    (usize::from(status / 100).clamp(1, 5)) - 1
}

/// Responses by status class for one (route, upstream, backend).
#[derive(Debug, Default)]
pub(crate) struct RequestCounters {
    by_class: [AtomicU64; 5],
}

impl RequestCounters {
    pub(crate) fn record(&self, status: u16) {
        self.by_class[code_class(status)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, class: usize) -> u64 {
        self.by_class[class].load(Ordering::Relaxed)
    }
}

/// Process-wide counters that belong to no route.
#[derive(Debug, Default)]
pub(crate) struct GlobalCounters {
    pub(crate) reloads_applied: AtomicU64,
    pub(crate) reloads_rejected: AtomicU64,
    pub(crate) reloads_unchanged: AtomicU64,
    no_route: AtomicU64,
    pub(crate) tls: super::tls::TlsCounters,
    /// The proxy's own shortages (`switchyard_local_resource_errors_total`).
    pub(crate) local: LocalErrors,
}

impl GlobalCounters {
    /// A request no route matched.
    pub(crate) fn unrouted(&self) {
        self.no_route.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn unrouted_total(&self) -> u64 {
        self.no_route.load(Ordering::Relaxed)
    }
}

/// What the proxy was doing when it ran short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalOp {
    /// Opening a connection to a backend.
    Connect,
    /// Accepting a client's connection.
    Accept,
}

impl LocalOp {
    pub(crate) const ALL: [LocalOp; 2] = [LocalOp::Connect, LocalOp::Accept];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LocalOp::Connect => "connect",
            LocalOp::Accept => "accept",
        }
    }
}

/// A shortage of the proxy's own: descriptors, buffers or memory. It says nothing about any
/// backend, so it never counts against one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shortage {
    /// `EMFILE`: the process is at its open-file limit.
    ProcessFiles,
    /// `ENFILE`: the system is at its open-file limit.
    SystemFiles,
    /// `ENOBUFS`: no buffer space for a socket.
    Buffers,
    /// `ENOMEM`: no memory for a socket.
    Memory,
}

impl Shortage {
    pub(crate) const ALL: [Shortage; 4] = [
        Shortage::ProcessFiles,
        Shortage::SystemFiles,
        Shortage::Buffers,
        Shortage::Memory,
    ];

    /// The shortage an I/O error reports, if it is one.
    pub(crate) fn of(e: &std::io::Error) -> Option<Shortage> {
        // Linux's numbers, the platform switchyard ships for.
        match e.raw_os_error()? {
            24 => Some(Shortage::ProcessFiles),
            23 => Some(Shortage::SystemFiles),
            105 => Some(Shortage::Buffers),
            12 => Some(Shortage::Memory),
            _ => None,
        }
    }

    /// The `error` label: the errno's name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Shortage::ProcessFiles => "EMFILE",
            Shortage::SystemFiles => "ENFILE",
            Shortage::Buffers => "ENOBUFS",
            Shortage::Memory => "ENOMEM",
        }
    }
}

/// Shortages by (operation, kind).
#[derive(Debug, Default)]
pub(crate) struct LocalErrors {
    by: [[AtomicU64; Shortage::ALL.len()]; LocalOp::ALL.len()],
}

impl LocalErrors {
    pub(crate) fn count(&self, op: LocalOp, s: Shortage) {
        self.by[op as usize][s as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, op: LocalOp, s: Shortage) -> u64 {
        self.by[op as usize][s as usize].load(Ordering::Relaxed)
    }

    /// `switchyard_local_resource_errors_total{op,error}`, every series from the start.
    pub(crate) fn render(&self, e: &mut super::prometheus::Exposition) {
        e.family(
            "switchyard_local_resource_errors_total",
            "counter",
            "The proxy's own shortages (file descriptors, socket buffers, memory) when connecting to a backend or accepting a client; never counted against a backend.",
        );
        for op in LocalOp::ALL {
            for s in Shortage::ALL {
                e.sample(
                    "switchyard_local_resource_errors_total",
                    &[("op", op.as_str()), ("error", s.as_str())],
                    self.get(op, s) as f64,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortages_are_known_by_their_errno() {
        let e = std::io::Error::from_raw_os_error(24);
        assert_eq!(Shortage::of(&e), Some(Shortage::ProcessFiles));
        let refused = std::io::Error::from_raw_os_error(111);
        assert_eq!(Shortage::of(&refused), None);
    }

    #[test]
    fn classes() {
        assert_eq!(CODE_CLASSES[code_class(200)], "2xx");
        assert_eq!(CODE_CLASSES[code_class(101)], "1xx");
        assert_eq!(CODE_CLASSES[code_class(504)], "5xx");
        assert_eq!(CODE_CLASSES[code_class(999)], "5xx");
    }
}
