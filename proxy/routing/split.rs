//! Which upstream of a route's split takes a request: pure functions over a table compiled once
//! per snapshot.
//!
//! - Without a sticky key, the n-th request of a route takes slot `n` of a smooth weighted
//!   round-robin cycle (NGINX's algorithm, computed once per snapshot): every full cycle matches
//!   the weights exactly and the upstreams interleave within it, with no lock and no per-route
//!   state but one counter. Weights whose cycle would be too long to precompute use the
//!   golden-ratio (Weyl) sequence instead, which is within a few requests of exact over any run.
//! - With a sticky key, the key hashes into a fixed space of [`STICKY_BUCKETS`] buckets, and each
//!   bucket goes to the upstream with the highest weighted rendezvous score. Raising one
//!   upstream's weight only raises its own scores, so the only users who move are those moving
//!   *to* it: a canary growing from 5 to 20 to 50 keeps every user it already had.

/// The fixed space sticky keys hash into.
pub(crate) const STICKY_BUCKETS: u32 = 10_000;

/// The longest round-robin cycle precomputed (after dividing the weights by their GCD).
const MAX_CYCLE: u64 = 10_000;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Debug, Clone)]
pub struct Split {
    weights: Vec<u32>,
    /// `cumulative[i]` is the sum of weights `0..=i`.
    cumulative: Vec<u64>,
    /// A per-upstream hash seed, from its name, so reordering the split moves nobody.
    seeds: Vec<u64>,
    /// Bucket -> target index; only for sticky routes.
    sticky: Option<Box<[u16]>>,
    /// One smooth round-robin cycle of target indexes, when short enough.
    cycle: Option<Box<[u16]>>,
}

impl Split {
    /// `names[i]` and `weights[i]` describe target `i`. At least one weight must be positive.
    pub fn new(names: &[&str], weights: &[u32], sticky: bool) -> Split {
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|&w| {
                total += u64::from(w);
                total
            })
            .collect();
        let seeds: Vec<u64> = names.iter().map(|n| hash_bytes(n.as_bytes())).collect();
        let sticky = sticky.then(|| {
            (0..STICKY_BUCKETS)
                .map(|b| rendezvous(b, &seeds, weights, |_| true).unwrap_or(0) as u16)
                .collect()
        });
        Split {
            cycle: smooth_cycle(weights),
            weights: weights.to_vec(),
            cumulative,
            seeds,
            sticky,
        }
    }

    pub(crate) fn weights(&self) -> &[u32] {
        &self.weights
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The target for the `seq`-th request of the route.
    pub fn pick(&self, seq: u64) -> usize {
        match &self.cycle {
            Some(cycle) => usize::from(cycle[(seq % cycle.len() as u64) as usize]),
            None => {
                let x = weyl(seq, self.total());
                self.cumulative.partition_point(|&c| c <= x)
            }
        }
    }

    /// The target for a sticky key.
    pub fn pick_sticky(&self, key: &[u8]) -> usize {
        let bucket = sticky_bucket(key);
        match &self.sticky {
            Some(table) => usize::from(table[bucket as usize]),
            None => rendezvous(bucket, &self.seeds, &self.weights, |_| true).unwrap_or(0),
        }
    }

    /// Like [`Split::pick`] or [`Split::pick_sticky`], among the targets `usable` allows,
    /// in their relative weights; `None` if no usable target has weight.
    pub(crate) fn pick_among(
        &self,
        seq: u64,
        sticky_key: Option<&[u8]>,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if let Some(key) = sticky_key {
            return rendezvous(sticky_bucket(key), &self.seeds, &self.weights, usable);
        }
        let total: u64 = (0..self.weights.len())
            .filter(|&i| usable(i))
            .map(|i| u64::from(self.weights[i]))
            .sum();
        let mut x = weyl(seq, total);
        for (i, &w) in self.weights.iter().enumerate() {
            if !usable(i) || w == 0 {
                continue;
            }
            if x < u64::from(w) {
                return Some(i);
            }
            x -= u64::from(w);
        }
        None
    }
}

/// Smooth weighted round robin over one cycle: each step every target gains its weight, the
/// richest is picked and pays the total. `None` when the cycle would be longer than
/// [`MAX_CYCLE`].
fn smooth_cycle(weights: &[u32]) -> Option<Box<[u16]>> {
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
    if g == 0 || weights.len() > usize::from(u16::MAX) {
        return None;
    }
    let w: Vec<i64> = weights.iter().map(|&w| (u64::from(w) / g) as i64).collect();
    let total: i64 = w.iter().sum();
    if total as u64 > MAX_CYCLE {
        return None;
    }
    let mut current = vec![0i64; w.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&w) {
            *c += w;
        }
        let best = (0..w.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i)))?;
        current[best] -= total;
        cycle.push(best as u16);
    }
    Some(cycle.into_boxed_slice())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Where the `seq`-th point of the golden-ratio sequence falls on a line of length `total`.
fn weyl(seq: u64, total: u64) -> u64 {
    ((u128::from(seq.wrapping_mul(GOLDEN)) * u128::from(total)) >> 64) as u64
}

/// Weighted rendezvous hashing: the usable target with the highest `w / -ln(u)` for this
/// bucket, where `u` is uniform in (0, 1) from (bucket, target).
fn rendezvous(
    bucket: u32,
    seeds: &[u64],
    weights: &[u32],
    usable: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for (i, (&seed, &w)) in seeds.iter().zip(weights).enumerate() {
        if w == 0 || !usable(i) {
            continue;
        }
        let h = mix(seed ^ u64::from(bucket).wrapping_mul(GOLDEN));
        // 53 random bits, shifted off zero so the log is finite.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(w) / -u.ln();
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| i)
}

/// The bucket of a sticky key. Stable across processes and versions: users keep their upstream
/// across restarts and across replicas.
pub(crate) fn sticky_bucket(key: &[u8]) -> u32 {
    (hash_bytes(key) % u64::from(STICKY_BUCKETS)) as u32
}

/// FNV-1a, then a finalizer so that similar keys land far apart.
fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// The splitmix64 finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(split: &Split, n: u64) -> Vec<f64> {
        let mut counts = vec![0u64; split.weights().len()];
        for seq in 0..n {
            counts[split.pick(seq)] += 1;
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    #[test]
    fn weighted_pick_is_exact_over_any_run() {
        let s = Split::new(&["blue", "green", "grey"], &[90, 9, 1], false);
        for n in [100, 1000, 10_000] {
            let got = shares(&s, n);
            for (g, want) in got.iter().zip([0.90, 0.09, 0.01]) {
                assert!((g - want).abs() <= 1.5 / n as f64 + 0.005, "n={n} {got:?}");
            }
        }
    }

    #[test]
    fn every_full_cycle_is_exact_and_interleaved() {
        let s = Split::new(&["blue", "green"], &[3, 1], false);
        let picks: Vec<usize> = (0..8).map(|i| s.pick(i)).collect();
        assert_eq!(picks, [0, 0, 1, 0, 0, 0, 1, 0]);
        let s = Split::new(&["a", "b"], &[95, 5], false);
        let canary: Vec<u64> = (0..100).filter(|&i| s.pick(i) == 1).collect();
        assert_eq!(canary.len(), 5);
        assert!(
            canary.windows(2).all(|w| w[1] - w[0] >= 15),
            "spread out: {canary:?}"
        );
    }

    #[test]
    fn long_cycles_fall_back_to_the_weyl_sequence() {
        let s = Split::new(&["a", "b"], &[9_999, 2], false);
        assert!(s.cycle.is_none());
        let n = 100_000;
        let b = (0..n).filter(|&i| s.pick(i) == 1).count();
        assert!((b as i64 - 20).abs() <= 2, "{b}");
    }

    #[test]
    fn zero_weight_targets_never_get_picked() {
        let s = Split::new(&["a", "b"], &[0, 3], false);
        assert!((0..1000).all(|i| s.pick(i) == 1));
        let s = Split::new(&["a", "b"], &[0, 3], true);
        assert!((0..1000u32).all(|i| s.pick_sticky(&i.to_be_bytes()) == 1));
    }

    #[test]
    fn sticky_shares_follow_the_weights() {
        let s = Split::new(&["stable", "canary"], &[80, 20], true);
        let n = 20_000u32;
        let canary = (0..n)
            .filter(|u| s.pick_sticky(format!("user-{u}").as_bytes()) == 1)
            .count();
        let share = canary as f64 / f64::from(n);
        assert!((share - 0.20).abs() < 0.02, "{share}");
    }

    #[test]
    fn a_growing_canary_keeps_its_users() {
        let names = ["stable", "canary"];
        let mut on_canary: Vec<bool> = vec![false; 10_000];
        for w in [5, 20, 50, 100] {
            let s = Split::new(&names, &[100 - w.min(100), w], true);
            for (u, was) in on_canary.iter_mut().enumerate() {
                let now = s.pick_sticky(format!("user-{u}").as_bytes()) == 1;
                assert!(now || !*was, "user-{u} left the canary at weight {w}");
                *was = now;
            }
        }
        assert!(
            on_canary.iter().all(|&c| c),
            "at 100 everyone is on the canary"
        );
    }

    #[test]
    fn reordering_the_split_moves_nobody() {
        let a = Split::new(&["x", "y", "z"], &[1, 2, 3], true);
        let b = Split::new(&["z", "x", "y"], &[3, 1, 2], true);
        let remap = [2, 0, 1];
        for u in 0..2000u32 {
            let k = u.to_le_bytes();
            assert_eq!(remap[b.pick_sticky(&k)], a.pick_sticky(&k));
        }
    }

    #[test]
    fn pick_among_reroutes_in_relative_weights() {
        let s = Split::new(&["a", "b", "c"], &[10, 60, 30], false);
        let mut counts = [0; 3];
        for seq in 0..9000 {
            counts[s.pick_among(seq, None, |i| i != 1).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!((counts[0] as i64 - 2250).abs() < 50, "{counts:?}");
        assert_eq!(s.pick_among(0, None, |_| false), None);
        assert_eq!(s.pick_among(0, Some(b"k"), |i| i == 2), Some(2));
    }

    #[test]
    fn buckets_are_stable_values() {
        // Users keep their upstream across versions only if this never changes.
        assert_eq!(sticky_bucket(b"user-42"), 8355);
        assert_eq!(sticky_bucket(b"alice"), sticky_bucket(b"alice"));
        assert!(sticky_bucket(b"") < STICKY_BUCKETS);
    }
}
