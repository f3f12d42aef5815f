//! Lock-free request counters, kept by the reloader across reloads so that Prometheus counters
//! never go backwards while their series exist.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `code_class` label values, indexed by [`code_class`].
pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index into [`CODE_CLASSES`] of a status code.
pub fn code_class(status: u16) -> usize {
    (usize::from(status / 100).clamp(1, 5)) - 1
}

/// The status codes counted one by one: those registered with IANA, and 418. Any other code
/// is counted under its class, so the `code` label stays bounded whatever a backend sends.
const CODES: [u16; 62] = [
    100, 101, 102, 103, //
    200, 201, 202, 203, 204, 205, 206, 207, 208, 226, //
    300, 301, 302, 303, 304, 305, 307, 308, //
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 418,
    421, 422, 423, 424, 425, 426, 428, 429, 431, 451, //
    500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
];

/// One slot per code of [`CODES`], then one per class for the other codes of that class.
const SLOTS: usize = CODES.len() + CODE_CLASSES.len();

/// The slot of each status from 100 to 599 (a table, so the request path does one load).
static SLOT_OF: [u8; 500] = slot_table();

const fn slot_table() -> [u8; 500] {
    let mut table = [0u8; 500];
    let mut s = 0;
    while s < 500 {
        table[s] = (CODES.len() + s / 100) as u8;
        s += 1;
    }
    let mut i = 0;
    while i < CODES.len() {
        table[(CODES[i] - 100) as usize] = i as u8;
        i += 1;
    }
    table
}

fn slot(status: u16) -> usize {
    match status.checked_sub(100) {
        Some(i) if i < 500 => usize::from(SLOT_OF[usize::from(i)]),
        // Only 600-999 get here (hyper refuses the rest); `code_class` files them under 5xx.
        _ => CODES.len() + code_class(status),
    }
}

/// What a slot counts: one code, or the unregistered codes of a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Exact(u16),
    OtherIn(usize),
}

impl Code {
    fn of_slot(slot: usize) -> Code {
        match CODES.get(slot) {
            Some(&c) => Code::Exact(c),
            None => Code::OtherIn(slot - CODES.len()),
        }
    }

    /// The index into [`CODE_CLASSES`].
    pub fn class(self) -> usize {
        match self {
            Code::Exact(c) => code_class(c),
            Code::OtherIn(class) => class,
        }
    }

    /// The `code` label: `"503"`, or `"5xx"` for a code that is not counted on its own.
    pub fn label(self) -> Cow<'static, str> {
        match self {
            Code::Exact(c) => Cow::Owned(c.to_string()),
            Code::OtherIn(class) => Cow::Borrowed(CODE_CLASSES[class]),
        }
    }
}

/// Responses by status code for one (route, upstream, backend).
#[derive(Debug)]
pub struct RequestCounters {
    by_slot: [AtomicU64; SLOTS],
}

impl Default for RequestCounters {
    fn default() -> Self {
        RequestCounters {
            by_slot: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RequestCounters {
    pub fn record(&self, status: u16) {
        self.by_slot[slot(status)].fetch_add(1, Ordering::Relaxed);
    }

    /// Responses of one class (an index into [`CODE_CLASSES`]).
    pub fn get(&self, class: usize) -> u64 {
        self.by_code()
            .filter(|(code, _)| code.class() == class)
            .map(|(_, n)| n)
            .sum()
    }

    /// Every code with its count, zeros included.
    pub fn by_code(&self) -> impl Iterator<Item = (Code, u64)> + '_ {
        self.by_slot
            .iter()
            .enumerate()
            .map(|(slot, n)| (Code::of_slot(slot), n.load(Ordering::Relaxed)))
    }
}

/// Process-wide counters that belong to no route.
#[derive(Debug, Default)]
pub struct GlobalCounters {
    pub reloads_applied: AtomicU64,
    pub reloads_rejected: AtomicU64,
    pub reloads_unchanged: AtomicU64,
    no_route: AtomicU64,
    pub tls: super::tls::TlsCounters,
    pub last_reload: LastReload,
    /// The proxy's own shortages connecting to backends (accept's are the listeners').
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

/// The shortages met connecting to backends, by kind (accept's are counted by listener, in
/// `stats::limits::AcceptStats`).
#[derive(Debug, Default)]
pub(crate) struct LocalErrors {
    by: [AtomicU64; Shortage::ALL.len()],
}

impl LocalErrors {
    pub(crate) fn count(&self, s: Shortage) {
        self.by[s as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, s: Shortage) -> u64 {
        self.by[s as usize].load(Ordering::Relaxed)
    }
}

/// When the config was last loaded, and whether the latest attempt loaded it.
#[derive(Debug)]
pub struct LastReload {
    /// Unix time in milliseconds.
    success_ms: AtomicU64,
    ok: AtomicBool,
}

/// Made with the first config, which has just loaded.
impl Default for LastReload {
    fn default() -> Self {
        LastReload {
            success_ms: AtomicU64::new(unix_ms()),
            ok: AtomicBool::new(true),
        }
    }
}

impl LastReload {
    /// One reload attempt: `ok` when the config in the file is the one in force afterwards
    /// (applied, or unchanged).
    pub fn record(&self, ok: bool) {
        if ok {
            self.success_ms.store(unix_ms(), Ordering::Relaxed);
        }
        self.ok.store(ok, Ordering::Relaxed);
    }

    /// Unix time of the last successful load, in seconds.
    pub fn success_seconds(&self) -> f64 {
        self.success_ms.load(Ordering::Relaxed) as f64 / 1e3
    }

    pub fn ok(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

    #[test]
    fn registered_codes_count_alone_and_others_under_their_class() {
        let c = RequestCounters::default();
        for status in [200, 200, 503, 599, 299, 999, 101, 418] {
            c.record(status);
        }
        let seen: Vec<(String, u64)> = c
            .by_code()
            .filter(|(_, n)| *n > 0)
            .map(|(code, n)| (code.label().into_owned(), n))
            .collect();
        let want = [
            ("101", 1),
            ("200", 2),
            ("418", 1),
            ("503", 1),
            ("2xx", 1),
            ("5xx", 2),
        ];
        assert_eq!(
            seen,
            want.map(|(l, n)| (l.to_owned(), n)).to_vec(),
            "registered codes first, then the rest by class"
        );
        assert_eq!(c.get(code_class(500)), 3);
        assert_eq!(c.get(code_class(200)), 3);
        assert_eq!(c.by_code().map(|(_, n)| n).sum::<u64>(), 8);
    }

    #[test]
    fn every_status_has_a_slot_of_its_own_class() {
        assert!(CODES.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        for status in 100..=999u16 {
            let code = Code::of_slot(slot(status));
            assert_eq!(code.class(), code_class(status), "{status}");
            if let Code::Exact(c) = code {
                assert_eq!(c, status);
            }
        }
    }

    #[test]
    fn a_failed_reload_keeps_the_last_success_time() {
        let r = LastReload::default();
        let first = r.success_seconds();
        assert!(r.ok() && first > 1.6e9, "{first}");
        r.record(false);
        assert!(!r.ok());
        assert_eq!(r.success_seconds(), first);
        r.record(true);
        assert!(r.ok() && r.success_seconds() >= first);
    }
}
