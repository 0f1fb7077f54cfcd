//! Newtypes shared by a target (the simulator) and the debugger side: addresses and pool
//! tags.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A 64-bit virtual address on the (simulated or real) x64 target.
///
/// `Display` prints WinDbg's x64 form with the backtick: `fffff880`0496e3aa`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct VirtAddr(pub u64);

impl VirtAddr {
    /// The raw address.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// `self + n`, or `None` on overflow.
    pub const fn checked_add(self, n: u64) -> Option<VirtAddr> {
        match self.0.checked_add(n) {
            Some(v) => Some(VirtAddr(v)),
            None => None,
        }
    }

    /// `self + n`, saturating at the top of the address space.
    pub const fn saturating_add(self, n: u64) -> VirtAddr {
        VirtAddr(self.0.saturating_add(n))
    }

    /// Whether the address is canonical for 48-bit x64 (bits 63..47 all equal).
    pub const fn is_canonical(self) -> bool {
        let top = self.0 >> 47;
        top == 0 || top == 0x1_ffff
    }
}

impl fmt::Display for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}`{:08x}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl fmt::LowerHex for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl From<u64> for VirtAddr {
    fn from(v: u64) -> Self {
        VirtAddr(v)
    }
}

impl From<VirtAddr> for u64 {
    fn from(v: VirtAddr) -> Self {
        v.0
    }
}

/// A Windows pool tag: four bytes, stored little-endian, so the ULONG `0x6b61654c`
/// is the tag `Leak` (bytes `4c 65 61 6b`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct PoolTag(pub [u8; 4]);

/// Bit 31 of a tag's ULONG: `PROTECTED_POOL`.
pub const PROTECTED_POOL: u32 = 0x8000_0000;

impl PoolTag {
    /// A tag from its four bytes in memory order (`*b"Leak"`).
    pub const fn new(bytes: [u8; 4]) -> PoolTag {
        PoolTag(bytes)
    }

    /// A tag from the ULONG value a driver passes (`0x6b61654c` is `Leak`).
    pub const fn from_u32(v: u32) -> PoolTag {
        PoolTag(v.to_le_bytes())
    }

    /// The ULONG value (`Leak` is `0x6b61654c`).
    pub const fn to_u32(self) -> u32 {
        u32::from_le_bytes(self.0)
    }

    /// The four bytes in memory order.
    pub const fn bytes(self) -> [u8; 4] {
        self.0
    }

    /// The tag with the `PROTECTED_POOL` bit cleared (what the tracker and debuggers show).
    pub const fn unprotected(self) -> PoolTag {
        PoolTag::from_u32(self.to_u32() & !PROTECTED_POOL)
    }

    /// Whether the `PROTECTED_POOL` bit is set.
    pub const fn is_protected(self) -> bool {
        self.to_u32() & PROTECTED_POOL != 0
    }

    /// Whether Windows accepts this tag for an allocation: not zero, not `BIG `, and at
    /// least one ASCII letter or digit (BAD_POOL_CALLER 0x9B/0x9C/0x9D otherwise).
    pub fn is_valid_for_alloc(self) -> bool {
        let t = self.unprotected();
        t.to_u32() != 0 && t.0 != *b"BIG " && t.0.iter().any(|b| b.is_ascii_alphanumeric())
    }

    /// Parse a tag as written by a user: up to four characters, padded with spaces
    /// (`"Cc"` is `Cc  `). Returns `None` for an empty or longer string or non-ASCII text.
    pub fn parse(s: &str) -> Option<PoolTag> {
        let b = s.as_bytes();
        if b.is_empty() || b.len() > 4 || !s.is_ascii() {
            return None;
        }
        let mut out = [b' '; 4];
        for (o, c) in out.iter_mut().zip(b) {
            *o = *c;
        }
        Some(PoolTag(out))
    }
}

impl fmt::Display for PoolTag {
    /// Prints the four characters, non-printable bytes (and the protected bit) shown as `.`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.unprotected().0 {
            let c = if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PoolTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PoolTag({:?} = {:#010x})",
            self.to_string(),
            self.to_u32()
        )
    }
}

impl From<PoolTag> for String {
    fn from(t: PoolTag) -> String {
        t.to_string()
    }
}

impl TryFrom<String> for PoolTag {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        PoolTag::parse(&s)
            .ok_or_else(|| format!("invalid pool tag {s:?}: expected 1-4 ASCII characters"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virt_addr_prints_with_backtick() {
        assert_eq!(
            VirtAddr(0xfffff880_0496e3aa).to_string(),
            "fffff880`0496e3aa"
        );
        assert_eq!(VirtAddr(0x1000).to_string(), "00000000`00001000");
    }

    #[test]
    fn tag_byte_order() {
        let t = PoolTag::new(*b"Leak");
        assert_eq!(t.to_u32(), 0x6b61_654c);
        assert_eq!(PoolTag::from_u32(0x3261_654c).to_string(), "Lea2");
        assert_eq!(PoolTag::parse("Cc").map(|t| t.0), Some(*b"Cc  "));
    }

    #[test]
    fn invalid_tags_are_refused() {
        assert!(!PoolTag::from_u32(0).is_valid_for_alloc());
        assert!(!PoolTag::new(*b"BIG ").is_valid_for_alloc());
        assert!(!PoolTag::new(*b"-_- ").is_valid_for_alloc());
        assert!(PoolTag::new(*b"Leak").is_valid_for_alloc());
        assert!(PoolTag::from_u32(0x6b61_654c | PROTECTED_POOL).is_protected());
    }
}
