//! PE headers read from target memory: just enough to find a module's sections.

use serde::Serialize;
use tagsplit_protocol::nt::pe::{dos, file_header, nt_headers, optional_header, section};

use crate::VirtAddr;
use crate::target::{DebugTarget, TargetError, read_exact};

pub use tagsplit_protocol::nt::pe::{SCN_CNT_CODE, SCN_MEM_EXECUTE, SCN_MEM_WRITE};
/// Most sections read from one image.
pub const MAX_SECTIONS: usize = 96;
/// Headers are looked for in the first this-many bytes of an image.
const HEADER_WINDOW: usize = 0x1000;
/// The first read of the headers: below [`CACHE_BLOCK`](crate::target::CACHE_BLOCK), so a
/// cached target fetches the block around it once and the section table and the
/// timestamp come from it; a whole page of headers costs 0.35 s at 115,200 baud.
const HEADER_FIRST: usize = 0x200;
/// What [`sections`] and [`timestamp`] read first at an image's base, for a caller that
/// fetches ahead ([`DebugTarget::prefetch`]).
pub const HEADERS_READ: usize = HEADER_FIRST;

/// One section of a loaded image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Section {
    /// The name (`.text`), NULs trimmed.
    pub name: String,
    /// First byte of the section in memory.
    pub start: VirtAddr,
    /// `VirtualSize` (falls back to `SizeOfRawData` when zero).
    pub size: u64,
    /// `Characteristics`.
    pub characteristics: u32,
}

impl Section {
    /// Whether the section holds code (`MEM_EXECUTE` or `CNT_CODE`).
    pub fn is_executable(&self) -> bool {
        self.characteristics & (SCN_MEM_EXECUTE | SCN_CNT_CODE) != 0
    }

    /// The exclusive end address.
    pub fn end(&self) -> VirtAddr {
        self.start.saturating_add(self.size)
    }

    /// Whether `addr` lies inside the section.
    pub fn contains(&self, addr: VirtAddr) -> bool {
        addr >= self.start && addr < self.end()
    }
}

/// Errors from [`sections`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeError {
    /// The headers could not be read.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The bytes are not a PE image.
    #[error("not a PE image at {0}: {1}")]
    NotPe(VirtAddr, &'static str),
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// A layout offset as an index (they are all small).
const fn at(off: u64) -> usize {
    off as usize
}

/// Reads the `TimeDateStamp` of the image at `base` (from its PE file header); a reloaded
/// or different build of a module usually has another one.
pub fn timestamp<T: DebugTarget + ?Sized>(target: &mut T, base: VirtAddr) -> Result<u32, PeError> {
    let mut hdr = [0u8; at(dos::SIZE)];
    read_exact(target, base, &mut hdr)?;
    if hdr.get(..2) != Some(dos::MAGIC.as_slice()) {
        return Err(PeError::NotPe(base, "no MZ signature"));
    }
    let lfanew = u64::from(u32_at(&hdr, at(dos::E_LFANEW)).unwrap_or(0));
    let mut file = [0u8; at(nt_headers::FILE_HEADER + file_header::TIME_DATE_STAMP + 4)];
    let nt = base
        .checked_add(lfanew)
        .ok_or(PeError::NotPe(base, "bad e_lfanew"))?;
    read_exact(target, nt, &mut file)?;
    if file.get(..4) != Some(nt_headers::SIGNATURE.as_slice()) {
        return Err(PeError::NotPe(base, "no PE signature"));
    }
    u32_at(
        &file,
        at(nt_headers::FILE_HEADER + file_header::TIME_DATE_STAMP),
    )
    .ok_or(PeError::NotPe(base, "truncated file header"))
}

/// Reads data directory `index` (`directory::EXCEPTION`, ...) of the PE32+ image at
/// `base`: its RVA and size, or `None` when the image has no such directory or it is
/// empty. Two reads: the DOS header, then the NT headers up to the entry.
pub fn data_directory<T: DebugTarget + ?Sized>(
    target: &mut T,
    base: VirtAddr,
    index: u64,
) -> Result<Option<(u32, u32)>, PeError> {
    use tagsplit_protocol::nt::pe::directory;
    if index >= directory::COUNT {
        return Ok(None);
    }
    let mut hdr = [0u8; at(dos::SIZE)];
    read_exact(target, base, &mut hdr)?;
    if hdr.get(..2) != Some(dos::MAGIC.as_slice()) {
        return Err(PeError::NotPe(base, "no MZ signature"));
    }
    let lfanew = u64::from(u32_at(&hdr, at(dos::E_LFANEW)).unwrap_or(0));
    let nt = base
        .checked_add(lfanew)
        .ok_or(PeError::NotPe(base, "bad e_lfanew"))?;
    let opt = at(nt_headers::OPTIONAL_HEADER);
    let entry = opt
        + at(optional_header::DATA_DIRECTORY + index * optional_header::DATA_DIRECTORY_ENTRY_SIZE);
    let mut nt_hdr = [0u8; at(nt_headers::OPTIONAL_HEADER + optional_header::SIZE)];
    let want = nt_hdr
        .get_mut(..entry + at(optional_header::DATA_DIRECTORY_ENTRY_SIZE))
        .unwrap_or_default();
    read_exact(target, nt, want)?;
    if nt_hdr.get(..4) != Some(nt_headers::SIGNATURE.as_slice()) {
        return Err(PeError::NotPe(base, "no PE signature"));
    }
    if u16_at(&nt_hdr, opt + at(optional_header::MAGIC)) != Some(optional_header::MAGIC_PE32_PLUS) {
        return Err(PeError::NotPe(base, "not a PE32+ optional header"));
    }
    let count = u32_at(&nt_hdr, opt + at(optional_header::NUMBER_OF_RVA_AND_SIZES)).unwrap_or(0);
    if u64::from(count) <= index {
        return Ok(None);
    }
    let rva = u32_at(&nt_hdr, entry).unwrap_or(0);
    let size = u32_at(&nt_hdr, entry + 4).unwrap_or(0);
    Ok((rva != 0 && size != 0).then_some((rva, size)))
}

/// Parses the section table of the image at `base` from target memory.
pub fn sections<T: DebugTarget + ?Sized>(
    target: &mut T,
    base: VirtAddr,
) -> Result<Vec<Section>, PeError> {
    let mut hdr = vec![0u8; HEADER_FIRST];
    let got = target.read_memory(base, &mut hdr)?;
    hdr.truncate(got);
    if hdr.get(..2) != Some(dos::MAGIC.as_slice()) {
        return Err(PeError::NotPe(base, "no MZ signature"));
    }
    let lfanew = u32_at(&hdr, at(dos::E_LFANEW))
        .ok_or(PeError::NotPe(base, "truncated DOS header"))? as usize;
    if lfanew.saturating_add(at(nt_headers::FILE_HEADER) + at(file_header::SIZE)) > hdr.len()
        && got == HEADER_FIRST
    {
        // Headers further in than usual: the whole window.
        hdr.resize(HEADER_WINDOW, 0);
        let got = target.read_memory(base, &mut hdr)?;
        hdr.truncate(got);
    }
    if hdr.get(lfanew..lfanew.saturating_add(4)) != Some(nt_headers::SIGNATURE.as_slice()) {
        return Err(PeError::NotPe(base, "no PE signature"));
    }
    let file_hdr = lfanew + at(nt_headers::FILE_HEADER);
    let count = usize::from(
        u16_at(&hdr, file_hdr + at(file_header::NUMBER_OF_SECTIONS))
            .ok_or(PeError::NotPe(base, "truncated file header"))?,
    );
    let opt_size = usize::from(
        u16_at(&hdr, file_hdr + at(file_header::SIZE_OF_OPTIONAL_HEADER))
            .ok_or(PeError::NotPe(base, "truncated file header"))?,
    );
    let table = file_hdr + at(file_header::SIZE) + opt_size;
    let count = count.min(MAX_SECTIONS);
    let need = table + count * at(section::SIZE);
    if need > hdr.len() {
        // The table runs past what we read: read exactly what it needs.
        hdr.resize(need, 0);
        read_exact(target, base, &mut hdr)?;
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let start = table + i * at(section::SIZE);
        let raw = hdr
            .get(start..start + at(section::SIZE))
            .ok_or(PeError::NotPe(base, "truncated section table"))?;
        let name_bytes = raw
            .get(at(section::NAME)..at(section::NAME + section::NAME_LEN))
            .unwrap_or_default();
        let name: String = name_bytes
            .iter()
            .take_while(|&&b| b != 0)
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
            .collect();
        let vsize = u32_at(raw, at(section::VIRTUAL_SIZE)).unwrap_or(0);
        let rva = u32_at(raw, at(section::VIRTUAL_ADDRESS)).unwrap_or(0);
        let raw_size = u32_at(raw, at(section::SIZE_OF_RAW_DATA)).unwrap_or(0);
        let characteristics = u32_at(raw, at(section::CHARACTERISTICS)).unwrap_or(0);
        let size = if vsize != 0 { vsize } else { raw_size };
        out.push(Section {
            name,
            start: base.saturating_add(u64::from(rva)),
            size: u64::from(size),
            characteristics,
        });
    }
    Ok(out)
}
