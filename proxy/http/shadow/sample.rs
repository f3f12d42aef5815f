//! Which requests are shadowed: pure functions of a request's sequence number or sticky key.

/// frac(√2) in 64-bit fixed point: consecutive multiples spread evenly over [0, 1) (a Weyl
/// sequence), and independently of the split's golden-ratio sequence, so the requests shadowed
/// are not tied to the upstream the split chose.
const SPREAD: u64 = 0x6A09_E667_F3BC_C909;

/// Whether the `seq`-th request of a route is shadowed at `basis_points` (hundredths of a
/// percent). Over any run of consecutive requests the share is within a few requests of exact.
pub fn spread_sampled(seq: u64, basis_points: u32) -> bool {
    ((u128::from(seq.wrapping_mul(SPREAD)) * 10_000) >> 64) < u128::from(basis_points)
}

/// Whether a sticky key is shadowed: the same key always gets the same answer, and raising the
/// percent only adds keys.
pub fn sticky_sampled(key: &[u8], basis_points: u32) -> bool {
    // FNV-1a from a basis of its own (not the split's hash), then splitmix64's finalizer.
    let mut h: u64 = 0x9ae1_6a3b_2f90_404f;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h % 10_000 < u64::from(basis_points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_sampling_holds_its_percent_over_any_run() {
        for percent in [1u32, 10, 25, 33, 50, 90, 99] {
            for start in [0u64, 1, 12_345, u64::MAX - 2_500] {
                let n = (0..5_000u64)
                    .filter(|i| spread_sampled(start.wrapping_add(*i), percent * 100))
                    .count();
                let share = n as f64 / 50.0;
                assert!(
                    (share - f64::from(percent)).abs() <= 2.0,
                    "{percent}% from {start}: {share}%"
                );
            }
        }
        assert!((0..1000).all(|i| !spread_sampled(i, 0)));
        assert!((0..1000).all(|i| spread_sampled(i, 10_000)));
    }

    #[test]
    fn sticky_sampling_holds_per_user_and_overall() {
        for percent in [5u32, 20, 50] {
            let n = (0..5_000)
                .filter(|i| sticky_sampled(format!("user-{i}").as_bytes(), percent * 100))
                .count();
            let share = n as f64 / 50.0;
            assert!(
                (share - f64::from(percent)).abs() <= 2.0,
                "{percent}%: {share}%"
            );
        }
        // The same user always gets the same answer; a higher percent keeps everyone in.
        for i in 0..500 {
            let key = format!("u{i}");
            let at10 = sticky_sampled(key.as_bytes(), 1_000);
            assert_eq!(at10, sticky_sampled(key.as_bytes(), 1_000));
            assert!(!at10 || sticky_sampled(key.as_bytes(), 2_000));
        }
    }
}
