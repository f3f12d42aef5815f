//! TLS counters: certificate reloads and failed handshakes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::prometheus::Exposition;

#[derive(Debug, Default)]
pub(crate) struct TlsCounters {
    /// Certificate files re-read after a change and put in service.
    pub(crate) cert_reloads_applied: AtomicU64,
    /// Certificate files re-read after a change and refused (the old ones keep serving).
    pub(crate) cert_reloads_rejected: AtomicU64,
    /// Client connections that failed or timed out in the TLS handshake.
    pub(crate) handshake_errors: AtomicU64,
}

impl TlsCounters {
    pub(crate) fn render(&self, e: &mut Exposition) {
        e.family(
            "switchyard_tls_cert_reloads_total",
            "counter",
            "Listener certificate reloads after their files changed, by result.",
        );
        for (result, n) in [
            ("applied", &self.cert_reloads_applied),
            ("rejected", &self.cert_reloads_rejected),
        ] {
            e.sample(
                "switchyard_tls_cert_reloads_total",
                &[("result", result)],
                n.load(Relaxed) as f64,
            );
        }
        e.family(
            "switchyard_tls_handshake_errors_total",
            "counter",
            "Client TLS handshakes that failed or timed out.",
        );
        e.sample(
            "switchyard_tls_handshake_errors_total",
            &[],
            self.handshake_errors.load(Relaxed) as f64,
        );
    }
}
