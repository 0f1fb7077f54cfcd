//! Arbitrary text as pooltag.txt: parsing and lookups never panic.

use tagsplit::PoolTag;
use tagsplit::pooltag::PoolTagDb;

/// One fuzz input.
pub fn run(data: &[u8]) {
    let db = PoolTagDb::parse(&String::from_utf8_lossy(data));
    for tag in [*b"Leak", *b"Cc  ", *b"Afd1", *b"CM12"] {
        let _ = db.describe(PoolTag::new(tag));
    }
    if let Some(head) = data.get(..4) {
        let mut t = [0u8; 4];
        t.copy_from_slice(head);
        let _ = db.lookup(PoolTag::new(t));
    }
}
