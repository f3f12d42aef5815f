//! When a name is looked up next: pure functions of the last outcome.
//!
//! After an answer with addresses, at the sooner of `refresh` and the records' TTL, so that a
//! short TTL (a DNS server that expects to be asked often) is honoured, and a long one never
//! delays `refresh`. After a failed or empty lookup, soon (the floor), then doubling up to
//! `refresh`: a blip is over within a second, and a server that is down is not hammered. Never
//! sooner than the floor: a TTL of 0 (common for records that change often) must not make a
//! busy loop.

use std::time::Duration;

use crate::config::discover::MIN_REFRESH;

/// After an answer with addresses whose shortest TTL is `ttl`.
pub fn after_answer(refresh: Duration, ttl: Duration) -> Duration {
    refresh.min(ttl).max(MIN_REFRESH)
}

/// After the `streak`-th failed or empty lookup in a row (1 for the first).
pub fn after_miss(refresh: Duration, streak: u32) -> Duration {
    let doublings = streak.saturating_sub(1).min(16);
    MIN_REFRESH
        .saturating_mul(1 << doublings)
        .min(refresh)
        .max(MIN_REFRESH)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_sooner_of_refresh_and_ttl_with_a_floor() {
        assert_eq!(after_answer(S(5), S(30)), S(5), "refresh is sooner");
        assert_eq!(after_answer(S(60), S(2)), S(2), "the TTL is sooner");
        assert_eq!(after_answer(S(5), S(0)), MIN_REFRESH, "TTL 0: the floor");
    }

    #[test]
    fn misses_back_off_from_the_floor_to_refresh() {
        let delays: Vec<Duration> = (1..=6).map(|n| after_miss(S(10), n)).collect();
        assert_eq!(delays, [S(1), S(2), S(4), S(8), S(10), S(10)]);
        assert_eq!(after_miss(S(10), u32::MAX), S(10), "no overflow");
        assert_eq!(after_miss(MIN_REFRESH, 3), MIN_REFRESH);
    }
}
