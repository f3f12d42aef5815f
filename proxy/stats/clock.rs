//! One clock reading per record. Windowed statistics slot what they count into periods by the
//! time since a fixed point of the process; a try's end feeds several of them (the backend's
//! window, its latency histogram, its breaker's window), so the time is turned into a [`Tick`]
//! once and handed to each.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// Nanoseconds since a fixed point of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(pub(crate) u64);

impl From<Instant> for Tick {
    fn from(now: Instant) -> Tick {
        static START: OnceLock<Instant> = OnceLock::new();
        // A second before the first reading, so no reading is ever at 0.
        let start = *START.get_or_init(|| Instant::now() - Duration::from_secs(1));
        Tick(now.saturating_duration_since(start).as_nanos() as u64)
    }
}
