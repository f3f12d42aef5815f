//! Which backend of an upstream takes a request: least outstanding requests over two choices.
//!
//! The first candidate comes from a round-robin cursor, the second at random; the one with
//! fewer requests in flight wins and the round-robin one wins ties. With a load signal this is
//! power-of-two-choices; with none (everything idle) it degrades to plain round robin rather than
//! to a coin toss.

use std::cell::Cell;

/// The two candidates: the round-robin one and a random other one (the same when `n` is 1).
pub(crate) fn two_choices(n: usize, rr: usize, random: u64) -> (usize, usize) {
    let first = rr % n;
    let mut second = (random % n as u64) as usize;
    if second == first && n > 1 {
        second = (second + 1) % n;
    }
    (first, second)
}

/// The candidate with fewer requests in flight; the first (round-robin) one on a tie.
pub(crate) fn less_loaded(first: usize, second: usize, in_flight: impl Fn(usize) -> u64) -> usize {
    if in_flight(second) < in_flight(first) {
        second
    } else {
        first
    }
}

/// Picks among `n` backends. `usable(i)` says whether backend `i` may take traffic.
pub(crate) fn pick(
    n: usize,
    rr: usize,
    random: u64,
    in_flight: impl Fn(usize) -> u64,
    usable: impl Fn(usize) -> bool,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let scan = |start: usize, skip: Option<usize>| {
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| Some(i) != skip && usable(i))
    };
    let first = scan(rr % n, None)?;
    let Some(second) = scan((random % n as u64) as usize, Some(first)) else {
        return Some(first);
    };
    Some(less_loaded(first, second, in_flight))
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    // Distinct per thread and per process; quality is not critical, speed is.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    (t ^ (&local as *const u8 as u64)) | 1
}

/// A fast thread-local xorshift64* draw; no lock, no syscall.
pub(crate) fn fast_random() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_load_it_is_round_robin() {
        let picks: Vec<usize> = (0..6)
            .map(|rr| pick(3, rr, fast_random(), |_| 0, |_| true).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn the_less_loaded_of_two_wins() {
        let load = [10, 0, 10];
        // rr points at 0 (loaded); the random choice lands on 1 (idle).
        assert_eq!(pick(3, 0, 1, |i| load[i], |_| true), Some(1));
        // The random choice lands on 2, as loaded as 0: the round-robin pick keeps it.
        assert_eq!(pick(3, 0, 2, |i| load[i], |_| true), Some(0));
    }

    #[test]
    fn unusable_backends_are_skipped() {
        assert_eq!(pick(3, 0, 0, |_| 0, |i| i == 2), Some(2));
        assert_eq!(pick(3, 5, 7, |_| 0, |_| false), None);
        assert_eq!(pick(0, 0, 0, |_| 0, |_| true), None);
        for r in 0..20 {
            assert_ne!(pick(4, r, fast_random(), |_| 0, |i| i != 1), Some(1));
        }
    }

    #[test]
    fn two_choices_are_distinct_when_they_can_be() {
        assert_eq!(two_choices(1, 5, 9), (0, 0));
        for r in 0..50 {
            let (a, b) = two_choices(3, r, fast_random());
            assert_ne!(a, b);
            assert_eq!(a, r % 3);
        }
    }

    #[test]
    fn random_draws_vary() {
        let a = fast_random();
        let b = fast_random();
        assert_ne!(a, b);
    }
}
