//! Latency histograms.
//!
//! - [`Recorder`]: hdrhistogram (1 µs to 60 s, 3 significant digits), one per worker shard so
//!   that recording only ever takes the recording worker's own lock; shards are merged on read.
//!   Windowed recorders rotate two histograms of half a window each (as tower's `hedge` does):
//!   a read sees the last half-window to full window. Histograms are allocated on first use and
//!   freed after a window of silence, so an idle backend costs no histogram memory.
//! - [`Buckets`]: Prometheus's fixed cumulative buckets, lock-free atomics, for `/metrics`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::clock::Tick;
use crate::shard::Padded;
use hdrhistogram::Histogram;
use tokio::time::Instant;

pub(crate) const LOWEST_MICROS: u64 = 1;
pub(crate) const HIGHEST_MICROS: u64 = 60_000_000;
pub(crate) const SIGNIFICANT_DIGITS: u8 = 3;

/// A fresh histogram with the project's bounds.
pub(crate) fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: construction cannot fail, and nothing outside can influence it.
    Histogram::new_with_bounds(LOWEST_MICROS, HIGHEST_MICROS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

fn new_shard_histogram() -> Option<Histogram<u32>> {
    Histogram::new_with_bounds(LOWEST_MICROS, HIGHEST_MICROS, SIGNIFICANT_DIGITS).ok()
}

#[derive(Default)]
struct Shard {
    /// Index of the period `current` holds (windowed recorders only).
    period: u64,
    current: Option<Histogram<u32>>,
    previous: Option<Histogram<u32>>,
}

impl Shard {
    fn rotate_to(&mut self, period: u64) {
        if period == self.period {
            return;
        }
        if period == self.period + 1 {
            // Reuse the oldest histogram's memory for the new period.
            let mut recycled = self.previous.take();
            if let Some(h) = recycled.as_mut() {
                h.reset();
            }
            self.previous = self.current.take();
            self.current = recycled;
        } else {
            self.previous = None;
            self.current = None;
        }
        self.period = period;
    }
}

pub struct Recorder {
    /// Padded: every record writes its shard's histogram counters, inline in the struct.
    shards: Box<[Padded<Mutex<Shard>>]>,
    /// Half the window; `None` for a cumulative recorder.
    period_nanos: Option<u64>,
}

impl Recorder {
    /// Keeps the last `window` (read: between half of it and all of it).
    pub fn windowed(window: Duration, shards: usize) -> Self {
        Recorder {
            shards: (0..shards.max(1)).map(|_| Padded::default()).collect(),
            period_nanos: Some((window.as_nanos() as u64 / 2).max(1)),
        }
    }

    /// Keeps everything since creation.
    pub(crate) fn cumulative(shards: usize) -> Self {
        Recorder {
            shards: (0..shards.max(1)).map(|_| Padded::default()).collect(),
            period_nanos: None,
        }
    }

    fn period(&self, at: Tick) -> u64 {
        self.period_nanos.map_or(0, |p| at.0 / p)
    }

    /// Records one latency on this worker's shard.
    pub fn record(&self, latency: Duration, at: impl Into<Tick>) {
        let micros = (latency.as_micros() as u64).clamp(LOWEST_MICROS, HIGHEST_MICROS);
        let shard = &self.shards[crate::shard::current() % self.shards.len()];
        let Ok(mut s) = shard.0.lock() else { return };
        if self.period_nanos.is_some() {
            s.rotate_to(self.period(at.into()));
        }
        if s.current.is_none() {
            s.current = new_shard_histogram();
        }
        if let Some(h) = s.current.as_mut() {
            h.saturating_record(micros);
        }
    }

    /// Everything recorded in the window (or ever), over all shards.
    pub(crate) fn snapshot(&self, now: Instant) -> Histogram<u64> {
        let mut merged = new_histogram();
        let period = self.period(now.into());
        for shard in self.shards.iter() {
            let Ok(mut s) = shard.0.lock() else { continue };
            s.rotate_to(period);
            for h in [&s.current, &s.previous].into_iter().flatten() {
                // Shards count in u32 to halve their memory; widen while merging.
                for v in h.iter_recorded() {
                    let _ = merged.record_n(v.value_iterated_to(), u64::from(v.count_at_value()));
                }
            }
        }
        merged
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Percentiles {
    pub(crate) count: u64,
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
        }
    }
}

/// Upper bounds (seconds) of the Prometheus buckets; `+Inf` follows.
pub(crate) const BUCKET_BOUNDS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A Prometheus histogram: cumulative, lock-free.
pub(crate) struct Buckets {
    counts: [AtomicU64; BUCKET_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Buckets {
    pub fn record(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        let i = BUCKET_BOUNDS.partition_point(|&b| b < secs);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// (upper bound, cumulative count) for each bucket, `+Inf` last; then the sum in seconds.
    pub(crate) fn cumulative(&self) -> (Vec<(f64, u64)>, f64) {
        let mut running = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            running += c.load(Ordering::Relaxed);
            out.push((
                BUCKET_BOUNDS.get(i).copied().unwrap_or(f64::INFINITY),
                running,
            ));
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (out, sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_windowed_recorder_forgets_what_is_older_than_its_window() {
        let r = Recorder::windowed(Duration::from_secs(10), 2);
        // Periods are counted from a process-wide epoch other tests may have set: start at the
        // beginning of one, so that the steps below cross the boundaries they mean to.
        let into = Tick::from(Instant::now()).0 % 5_000_000_000;
        if into > 0 {
            tokio::time::advance(Duration::from_nanos(5_000_000_000 - into)).await;
        }
        r.record(Duration::from_millis(5), Instant::now());
        r.record(Duration::from_millis(7), Instant::now());
        assert_eq!(r.snapshot(Instant::now()).len(), 2);
        tokio::time::advance(Duration::from_secs(6)).await;
        r.record(Duration::from_millis(1), Instant::now());
        assert_eq!(
            r.snapshot(Instant::now()).len(),
            3,
            "still within the window"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            r.snapshot(Instant::now()).len(),
            1,
            "the first period rotated out"
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(r.snapshot(Instant::now()).is_empty());
    }

    #[test]
    fn percentiles_keep_three_significant_digits() {
        let r = Recorder::cumulative(1);
        let now = Instant::now();
        for ms in 1..=1000 {
            r.record(Duration::from_micros(ms * 1000), now);
        }
        let p = Percentiles::of(&r.snapshot(now));
        assert_eq!(p.count, 1000);
        assert!(
            (p.p50 as f64 - 500_000.0).abs() / 500_000.0 < 0.002,
            "{p:?}"
        );
        assert!(
            (p.p99 as f64 - 990_000.0).abs() / 990_000.0 < 0.002,
            "{p:?}"
        );
    }

    #[test]
    fn buckets_are_cumulative() {
        let b = Buckets::default();
        b.record(Duration::from_micros(300));
        b.record(Duration::from_millis(3));
        b.record(Duration::from_secs(100));
        let (buckets, sum) = b.cumulative();
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[3], (0.005, 2));
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 3));
        assert!((sum - 100.0033).abs() < 1e-6);
    }
}
