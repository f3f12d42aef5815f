//! `x-request-id`: a client's own is kept when it is short and plain; otherwise switchyard makes
//! one. Made ids are 128 bits as 32 hex digits: 64 random bits per thread (so replicas and
//! threads never share a prefix) followed by a per-thread counter passed through a bijective
//! mix (so ids from one thread never repeat and do not look sequential). No system call and no
//! lock per id.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

use crate::trace::context::hex_into;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-sent id kept (longer ones are replaced).
pub(crate) const MAX_LEN: usize = 128;

/// Whether a client's id is kept: 1 to 128 bytes of letters, digits and `-_.:/+=@`, so it
/// cannot carry quotes, spaces, control characters or anything else a log reader might trip on.
pub(crate) fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:/+=@".contains(c))
}

thread_local! {
    static STATE: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

/// A fresh id.
pub(crate) fn generate() -> HeaderValue {
    let (prefix, n) = STATE.with(|s| {
        let (prefix, n) = s.get().unwrap_or_else(seed);
        s.set(Some((prefix, n.wrapping_add(1))));
        (prefix, n)
    });
    let mut buf = [0u8; 32];
    hex_into(&prefix.to_be_bytes(), &mut buf[..16]);
    hex_into(&mix(n).to_be_bytes(), &mut buf[16..]);
    // The digits are kept where they are written (one allocation, no copy), and the request's
    // and the response's copies share them without another. 32 hex digits are always a valid
    // header value.
    HeaderValue::from_maybe_shared(Bytes::from_owner(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// This thread's random prefix and counter start, from the standard library's randomly keyed
/// hasher (seeded from the operating system once per thread).
fn seed() -> (u64, u64) {
    let random = |salt: u64| {
        let mut h = std::hash::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        h.write_u32(std::process::id());
        h.finish()
    };
    (random(1), random(2))
}

/// splitmix64's finaliser: a bijection on u64.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn made_ids_are_32_hex_digits_and_distinct() {
        let ids: HashSet<_> = (0..10_000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(10) {
            assert_eq!(id.len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
            assert!(acceptable(id));
        }
        let other = std::thread::spawn(generate).join().unwrap();
        assert!(!ids.contains(&other));
        assert_ne!(other.as_bytes()[..16], generate().as_bytes()[..16]);
    }

    #[test]
    fn only_plain_short_ids_are_kept() {
        let ok = |s: &[u8]| acceptable(&HeaderValue::from_bytes(s).unwrap());
        assert!(ok(b"abc-123_x.y:z/w+v=u@t"));
        assert!(ok(&[b'a'; MAX_LEN]));
        assert!(!ok(&[b'a'; MAX_LEN + 1]));
        assert!(!ok(b"a\"b"));
        assert!(!ok(b"a b"));
        assert!(!ok(b"a\\b"));
        assert!(!ok(b"a\tb"));
        assert!(!ok(b"\xc3\xa9"));
        assert!(!ok(b""));
    }
}
