//! TLS counters: certificate reloads and failed handshakes; and when the certificates in
//! service expire.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct TlsCounters {
    /// Certificate files re-read after a change and put in service.
    pub cert_reloads_applied: AtomicU64,
    /// Certificate files re-read after a change and refused (the old ones keep serving).
    pub cert_reloads_rejected: AtomicU64,
    /// Client connections that failed or timed out in the TLS handshake.
    pub handshake_errors: AtomicU64,
    pub expiry: CertExpiry,
}

/// When each listener's certificates in service expire, by the name they are served for.
///
/// A reload replaces a listener's TLS whole: the new one is made before the reload is sure to
/// go through, and the old one may live on a moment for the handshakes it started. So each
/// holder registers under an owner id, the newest holder of a listener name is the one shown,
/// and a holder leaving takes only its own entry with it.
#[derive(Debug, Default)]
pub struct CertExpiry {
    owners: AtomicU64,
    by_listener: Mutex<Vec<Holder>>,
}

/// What one holder of a listener's TLS registered.
#[derive(Debug)]
struct Holder {
    owner: u64,
    listener: String,
    /// (server name, unix seconds).
    certs: Vec<(String, f64)>,
}

impl CertExpiry {
    /// A new owner id for [`CertExpiry::set`] and [`CertExpiry::forget`].
    pub fn owner(&self) -> u64 {
        self.owners.fetch_add(1, Relaxed)
    }

    /// The certificates `listener` serves now, as (server name, expiry in unix seconds).
    pub fn set(&self, owner: u64, listener: &str, certs: Vec<(String, f64)>) {
        let mut all = self.by_listener.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|h| h.owner != owner);
        all.push(Holder {
            owner,
            listener: listener.to_owned(),
            certs,
        });
    }

    /// Drops what `owner` registered.
    pub fn forget(&self, owner: u64) {
        let mut all = self.by_listener.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|h| h.owner != owner);
    }

    /// (listener, server name, expiry) of each listener's newest holder, sorted by listener.
    pub fn all(&self) -> Vec<(String, String, f64)> {
        let all = self.by_listener.lock().unwrap_or_else(|p| p.into_inner());
        let mut newest: Vec<&Holder> = Vec::new();
        for h in all.iter() {
            match newest.iter_mut().find(|n| n.listener == h.listener) {
                Some(n) if n.owner < h.owner => *n = h,
                Some(_) => {}
                None => newest.push(h),
            }
        }
        newest.sort_by(|a, b| a.listener.cmp(&b.listener));
        newest
            .into_iter()
            .flat_map(|h| {
                h.certs
                    .iter()
                    .map(|(name, t)| (h.listener.clone(), name.clone(), *t))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_holder_of_a_listener_is_shown_until_it_leaves() {
        let e = CertExpiry::default();
        let (old, new) = (e.owner(), e.owner());
        e.set(old, "public", vec![("a".into(), 1.0)]);
        e.set(new, "public", vec![("a".into(), 2.0), ("b".into(), 3.0)]);
        e.set(e.owner(), "admin", vec![("".into(), 4.0)]);
        let shown = |e: &CertExpiry| -> Vec<f64> { e.all().iter().map(|x| x.2).collect() };
        assert_eq!(
            shown(&e),
            [4.0, 2.0, 3.0],
            "sorted by listener, newest holder"
        );
        // A reload that made a new holder and then failed: the old one shows again.
        e.forget(new);
        assert_eq!(shown(&e), [4.0, 1.0]);
        e.forget(old);
        assert_eq!(e.all(), [("admin".into(), "".into(), 4.0)]);
    }
}
