//! Accepting connections without spinning when accept fails.
//!
//! When the process is out of file descriptors (EMFILE, ENFILE) or the kernel out of buffers,
//! `accept` fails at once and the pending connection stays in the backlog, so the socket is
//! still readable: a loop that retries at once burns a core and, logging each failure, writes
//! millions of lines. Every accept loop (public listeners, admin, ops) therefore backs off
//! (5 ms, doubling to 1 s, as Go's net/http does; reset by the next success) and logs at most
//! one line per second per listener, saying how many failures it did not log. A client that
//! gave up before its connection was accepted (ECONNABORTED and the like) is that client's
//! problem: counted, not logged, no pause. Every failure counts in
//! `switchyard_accept_errors_total{listener}`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

pub use crate::stats::limits::AcceptStats;

/// The first pause after a failed accept.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// The longest pause: how late a listener may notice that descriptors are free again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Consecutive failures -> pauses: 5 ms, 10 ms, ... 1 s, 1 s, ...
#[derive(Debug, Default)]
pub struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    /// The pause after one more failure in a row.
    pub fn failed(&mut self) -> Duration {
        let pause = self.next.unwrap_or(FIRST_BACKOFF);
        self.next = Some((pause * 2).min(MAX_BACKOFF));
        pause
    }

    pub fn succeeded(&mut self) {
        self.next = None;
    }
}

/// A failure that belongs to one client's connection, not to the listener or the process.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// One accept loop's view of its listener: its stats (shared with the listener's other loops)
/// and its own backoff.
pub struct Acceptor {
    listener: String,
    stats: Arc<AcceptStats>,
    backoff: Backoff,
}

impl Acceptor {
    pub fn new(listener: impl Into<String>, stats: Arc<AcceptStats>) -> Self {
        Acceptor {
            listener: listener.into(),
            stats,
            backoff: Backoff::default(),
        }
    }

    /// The next connection; failures in between are counted, paused after and logged sparingly.
    /// Cancel-safe: dropping the future loses no connection.
    pub async fn next(&mut self, socket: &TcpListener) -> (TcpStream, SocketAddr) {
        loop {
            match socket.accept().await {
                Ok(accepted) => {
                    self.backoff.succeeded();
                    return accepted;
                }
                Err(e) => {
                    self.stats.failed(&e);
                    if is_connection_error(&e) {
                        tracing::debug!(listener = %self.listener, error = %e, "a client left before its connection was accepted");
                        continue;
                    }
                    let pause = self.backoff.failed();
                    if let Some(suppressed) = self.stats.admit_log(Instant::now()) {
                        tracing::warn!(
                            listener = %self.listener,
                            error = %e,
                            suppressed,
                            ?pause,
                            "accept failed; backing off"
                        );
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_to_a_second_and_a_success_resets_it() {
        let mut b = Backoff::default();
        let pauses: Vec<u64> = (0..10).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), FIRST_BACKOFF);
    }

    #[test]
    fn a_client_that_left_early_is_not_the_listeners_failure() {
        assert!(is_connection_error(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        assert!(!is_connection_error(&io::Error::from_raw_os_error(24)));
    }
}
