//! Choosing the unused tags a split writes.

use crate::PoolTag;

/// The characters the varied position runs over, in order: `1-9A-Za-z` (61).
pub const VARIANTS: &[u8; 61] = b"123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Chooses `n` distinct new tags for sites that share `original`.
///
/// Keeps the first three characters and varies the fourth over [`VARIANTS`]; when those
/// run out (more than 61 sites, or collisions), varies the third character too. Never
/// returns a tag for which `taken` is true, the original tag, a duplicate, or a tag
/// Windows would refuse; the original's `PROTECTED_POOL` bit (bit 31) is preserved and
/// never newly set. Returns `None` when fewer than `n` candidates exist.
pub fn choose(
    original: PoolTag,
    n: usize,
    mut taken: impl FnMut(PoolTag) -> bool,
) -> Option<Vec<PoolTag>> {
    let [a, b, c, d] = original.unprotected().bytes();
    let protected = original.bytes()[3] & 0x80;
    let _ = d;
    let first = VARIANTS.iter().map(move |&v| [a, b, c, v]);
    let rest = VARIANTS
        .iter()
        .filter(move |&&v| v != c)
        .flat_map(move |&v3| VARIANTS.iter().map(move |&v4| [a, b, v3, v4]));
    let mut out: Vec<PoolTag> = Vec::with_capacity(n.min(VARIANTS.len() * VARIANTS.len()));
    for bytes in first.chain(rest) {
        if out.len() >= n {
            break;
        }
        let bare = PoolTag::new(bytes);
        if bare == original.unprotected()
            || !bare.is_valid_for_alloc()
            || taken(bare)
            || out.iter().any(|t| t.unprotected() == bare)
        {
            continue;
        }
        let [w, x, y, z] = bytes;
        out.push(PoolTag::new([w, x, y, z | protected]));
    }
    (out.len() == n).then_some(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn seed_order() {
        let t = choose(PoolTag::new(*b"Leak"), 3, |_| false).unwrap();
        assert_eq!(
            t,
            vec![
                PoolTag::new(*b"Lea1"),
                PoolTag::new(*b"Lea2"),
                PoolTag::new(*b"Lea3")
            ]
        );
    }

    #[test]
    fn skips_taken_and_goes_past_61() {
        let t = choose(PoolTag::new(*b"Leak"), 70, |t| t == PoolTag::new(*b"Lea1")).unwrap();
        assert_eq!(t[0], PoolTag::new(*b"Lea2"));
        assert_eq!(t.iter().filter(|t| t.bytes()[2] == b'a').count(), 59); // 61 minus Lea1 (taken) and Leak (original)
        assert_eq!(t[59].bytes()[..3], *b"Le1");
    }

    #[test]
    fn protected_bit_is_kept_never_added() {
        let p = PoolTag::from_u32(PoolTag::new(*b"Leak").to_u32() | 0x8000_0000);
        let t = choose(p, 2, |_| false).unwrap();
        assert!(t.iter().all(|t| t.is_protected()));
        assert_eq!(t[0].unprotected(), PoolTag::new(*b"Lea1"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn chosen_tags_are_sound(
            orig in proptest::array::uniform4(0x20u8..0x7f),
            protected in any::<bool>(),
            used in proptest::collection::hash_set(0usize..61, 0..40),
            n in 1usize..150,
        ) {
            let mut bytes = orig;
            if protected { bytes[3] |= 0x80; }
            let original = PoolTag::new(bytes);
            let bare = original.unprotected().bytes();
            let used: HashSet<PoolTag> = used.iter().map(|&i| PoolTag::new([bare[0], bare[1], bare[2], VARIANTS[i]])).collect();
            if let Some(chosen) = choose(original, n, |t| used.contains(&t)) {
                prop_assert_eq!(chosen.len(), n);
                let uniq: HashSet<_> = chosen.iter().map(|t| t.unprotected()).collect();
                prop_assert_eq!(uniq.len(), n);
                for t in &chosen {
                    prop_assert!(!used.contains(&t.unprotected()));
                    prop_assert_eq!(t.is_protected(), protected);
                    prop_assert!(t.unprotected() != original.unprotected());
                    prop_assert!(t.is_valid_for_alloc());
                    prop_assert_eq!(&t.bytes()[..2], &bare[..2]);
                }
                let family_free = VARIANTS.iter().filter(|&&v| {
                    let t = PoolTag::new([bare[0], bare[1], bare[2], v]);
                    !used.contains(&t) && t != original.unprotected() && t.is_valid_for_alloc()
                }).count();
                if n <= family_free {
                    for t in &chosen {
                        prop_assert_eq!(&t.bytes()[..3], &bare[..3]);
                    }
                }
            }
        }
    }
}
