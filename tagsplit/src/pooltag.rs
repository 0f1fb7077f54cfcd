//! The `pooltag.txt` database: which component owns a pool tag.
//!
//! The real file's format: `rem` comment lines, blank lines, and entries
//! `Tag - binary - description` with free spacing. A tag is up to four characters and may
//! contain spaces; trailing spaces are significant (`Cc  `). Entries whose tag contains
//! `?` (one character) or `*` (any run) are wildcard family defaults (`Afd?`, `CM??`,
//! `Acp*`). Lookups prefer an exact entry, then the most specific wildcard. Malformed lines
//! are skipped.

use std::collections::HashMap;

use crate::PoolTag;

/// What `pooltag.txt` says about a tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagInfo {
    /// The binary (`nt!etw`, `afd.sys`), or `None` for `<unknown>` or a missing field.
    pub binary: Option<String>,
    /// The description.
    pub description: String,
}

impl TagInfo {
    /// As `!poolused` prints it: `Etw Buffer, Binary: nt!etw` (or just the description).
    pub fn render(&self) -> String {
        match &self.binary {
            Some(b) => format!("{}, Binary: {b}", self.description),
            None => self.description.clone(),
        }
    }
}

/// A parsed pooltag database.
#[derive(Clone, Debug, Default)]
pub struct PoolTagDb {
    exact: HashMap<[u8; 4], TagInfo>,
    wild: Vec<(Vec<u8>, TagInfo)>,
    skipped: usize,
}

/// The simulator's own tags (and a few common kernel ones), in pooltag.txt format.
pub const BUILTIN: &str = "\
rem Built-in pool tags (tagsplit). Third-party tags are deliberately absent.
EtwB - nt!etw        - Etw Buffer
EtwR - nt!etw        - Etw KM RegEntry
Irp  - nt!io         - Io, IRP packets
MmSt - nt!mm         - Mm section object prototype ptes
Ntf0 - ntfs.sys      - general pool allocation
Proc - nt!ps         - Process objects
Thre - nt!ps         - Thread objects
File - nt!io         - File objects
Even - <unknown>     - Event objects
Toke - nt!se         - Token objects
Se   - nt!se         - General security allocations
Cc   - nt!cc         - Cache Manager allocations
CcBc - nt!cc         - Cache Manager Bcb from pool
Ddk  - <unknown>     - Default for driver allocated memory (user's of ntddk.h)
CM?? - nt!cm         - Configuration Manager (registry)
";

/// Glob match of a pool tag against a pattern (`*` any run, `?` one byte), case-sensitive.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || Some(&c) == text.get(t) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

impl PoolTagDb {
    /// An empty database.
    pub fn new() -> PoolTagDb {
        PoolTagDb::default()
    }

    /// The built-in table ([`BUILTIN`]).
    pub fn builtin() -> PoolTagDb {
        PoolTagDb::parse(BUILTIN)
    }

    /// Parses pooltag.txt text; malformed lines are counted in [`skipped`](Self::skipped).
    pub fn parse(text: &str) -> PoolTagDb {
        let mut db = PoolTagDb::default();
        for line in text.lines() {
            match parse_line(line) {
                Line::Blank => {}
                Line::Bad => db.skipped += 1,
                Line::Entry(tag, info) => db.insert(&tag, info),
            }
        }
        db
    }

    fn insert(&mut self, tag: &[u8], info: TagInfo) {
        if tag.iter().any(|&c| c == b'*' || c == b'?') {
            self.wild.push((tag.to_vec(), info));
        } else {
            let mut key = [b' '; 4];
            for (k, c) in key.iter_mut().zip(tag) {
                *k = *c;
            }
            self.exact.entry(key).or_insert(info);
        }
    }

    /// Adds every entry of `other` this database does not have yet (exact tags and
    /// wildcard patterns); used to put the built-in table behind a user's file.
    pub fn add_missing(&mut self, other: PoolTagDb) {
        for (k, v) in other.exact {
            self.exact.entry(k).or_insert(v);
        }
        for (p, v) in other.wild {
            if !self.wild.iter().any(|(q, _)| *q == p) {
                self.wild.push((p, v));
            }
        }
    }

    /// Number of malformed lines skipped while parsing.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Number of entries (exact and wildcard).
    pub fn len(&self) -> usize {
        self.exact.len() + self.wild.len()
    }

    /// Whether the database has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the database says about `tag` (protected bit ignored): exact entry first, then
    /// the wildcard with the most literal characters (earliest in the file on a tie).
    pub fn lookup(&self, tag: PoolTag) -> Option<&TagInfo> {
        let key = tag.unprotected().bytes();
        if let Some(i) = self.exact.get(&key) {
            return Some(i);
        }
        let mut best: Option<(usize, &TagInfo)> = None;
        for (pat, info) in &self.wild {
            if glob_match(pat, &key) {
                let literal = pat.iter().filter(|&&c| c != b'*' && c != b'?').count();
                if best.is_none_or(|(l, _)| literal > l) {
                    best = Some((literal, info));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Whether any entry (exact or wildcard family) covers `tag`.
    pub fn covers(&self, tag: PoolTag) -> bool {
        self.lookup(tag).is_some()
    }

    /// The `!poolused` description column for `tag`.
    pub fn describe(&self, tag: PoolTag) -> String {
        match self.lookup(tag) {
            Some(i) => i.render(),
            None => format!("UNKNOWN pooltag '{tag}', please update pooltag.txt"),
        }
    }
}

enum Line {
    Blank,
    Bad,
    Entry(Vec<u8>, TagInfo),
}

fn parse_line(line: &str) -> Line {
    let line = line.trim_end_matches(['\r', '\n']);
    let body = line.trim_start();
    if body.trim().is_empty() {
        return Line::Blank;
    }
    let lower = body.get(..3).map(str::to_ascii_lowercase);
    if lower.as_deref() == Some("rem") && body.get(3..4).is_none_or(|c| c.trim().is_empty())
        || body.starts_with("//")
        || body.starts_with(';')
    {
        return Line::Blank;
    }
    // The tag is everything before the first " - " (or "\t- "), spaces kept, at most 4 bytes.
    let Some(sep) = find_separator(body) else {
        return Line::Bad;
    };
    let (tag, rest) = (
        body.get(..sep).unwrap_or_default(),
        body.get(sep..).unwrap_or_default(),
    );
    let tag = tag.trim_start_matches('\t');
    if tag.is_empty() || tag.len() > 4 || !tag.is_ascii() || tag.trim().is_empty() {
        return Line::Bad;
    }
    // Drop the separator itself: whitespace, then '-'.
    let rest = rest.trim_start().strip_prefix('-').unwrap_or(rest).trim();
    let (binary, description) = match find_separator(rest) {
        Some(i) => {
            let bin = rest.get(..i).unwrap_or_default().trim();
            let desc = rest.get(i..).unwrap_or_default().trim_start();
            let desc = desc.strip_prefix('-').unwrap_or(desc).trim();
            (bin, desc)
        }
        None => ("", rest),
    };
    let binary = match binary {
        "" => None,
        b if b.eq_ignore_ascii_case("<unknown>") => None,
        b => Some(b.to_string()),
    };
    Line::Entry(
        tag.as_bytes().to_vec(),
        TagInfo {
            binary,
            description: description.to_string(),
        },
    )
}

/// Index of the whitespace starting the first `<ws>-<ws or end>` separator.
fn find_separator(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    (0..b.len()).find(|&i| {
        b.get(i).is_some_and(|c| *c == b' ' || *c == b'\t')
            && b.get(i + 1) == Some(&b'-')
            && b.get(i + 2).is_none_or(|c| *c == b' ' || *c == b'\t')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
rem
rem Pool tag file
rem

8042 - i8042prt.sys - PS/2 kb and mouse
CcBc - nt!cc        - Cache Manager Bcb from pool
Cc   - nt!cc        - Cache Manager allocations (catch-all)
Atom - <unknown>    - Atom Tables
Ddk  - <unknown>    - Default for driver allocated memory (user's of ntddk.h)
Dh 0 - <unknown>    - DirectDraw/3D default object
Afd? - afd.sys      - AFD objects
 AfdB - afd.sys     -     AFD bind
CM?? - nt!cm        - Internal Configuration manager allocations
Acp* - acpi.sys     - ACPI
this line is junk
TooLong - x - y
";

    fn tag(s: &[u8; 4]) -> PoolTag {
        PoolTag::new(*s)
    }

    #[test]
    fn parses_the_real_format() {
        let db = PoolTagDb::parse(SAMPLE);
        assert_eq!(
            db.describe(tag(b"8042")),
            "PS/2 kb and mouse, Binary: i8042prt.sys"
        );
        assert_eq!(
            db.describe(tag(b"CcBc")),
            "Cache Manager Bcb from pool, Binary: nt!cc"
        );
        assert_eq!(
            db.describe(tag(b"Cc  ")),
            "Cache Manager allocations (catch-all), Binary: nt!cc"
        );
        assert_eq!(db.describe(tag(b"Atom")), "Atom Tables");
        assert_eq!(db.describe(tag(b"Dh 0")), "DirectDraw/3D default object");
        assert_eq!(db.skipped(), 2);
    }

    #[test]
    fn trailing_spaces_are_significant() {
        let db = PoolTagDb::parse(SAMPLE);
        assert!(db.lookup(tag(b"Ddk ")).is_some());
        assert!(db.lookup(tag(b"Ddkx")).is_none());
        assert!(db.lookup(tag(b"Cc1 ")).is_none());
    }

    #[test]
    fn exact_beats_wildcard_and_wildcards_cover_families() {
        let db = PoolTagDb::parse(SAMPLE);
        assert_eq!(
            db.lookup(tag(b"AfdB")).map(|i| i.description.as_str()),
            Some("AFD bind")
        );
        assert_eq!(
            db.lookup(tag(b"AfdZ")).map(|i| i.description.as_str()),
            Some("AFD objects")
        );
        assert!(db.covers(tag(b"CMa1")));
        assert!(db.covers(tag(b"AcpX")));
        assert!(!db.covers(tag(b"Lea1")));
        assert_eq!(
            db.describe(tag(b"Lea1")),
            "UNKNOWN pooltag 'Lea1', please update pooltag.txt"
        );
    }

    #[test]
    fn builtin_has_etw_buffer() {
        let db = PoolTagDb::builtin();
        assert_eq!(db.describe(tag(b"EtwB")), "Etw Buffer, Binary: nt!etw");
        assert_eq!(db.skipped(), 0);
        assert!(!db.covers(tag(b"Leak")));
        assert!(!db.covers(tag(b"nVsC")));
    }

    #[test]
    fn glob() {
        assert!(glob_match(b"Lea?", b"Lea2"));
        assert!(glob_match(b"*", b"Lea2"));
        assert!(glob_match(b"L*2", b"Lea2"));
        assert!(!glob_match(b"Lea?", b"Leak2"));
        assert!(!glob_match(b"lea2", b"Lea2"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        #[test]
        fn never_panics(s in "(?s).{0,400}") {
            let db = PoolTagDb::parse(&s);
            let _ = db.describe(tag(b"Leak"));
        }
    }
}
