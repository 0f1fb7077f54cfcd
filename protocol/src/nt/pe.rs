//! PE32+ (x64 image) header layouts, as a loaded module has them at its base: enough to find
//! sections, the image size and timestamp, and the exception directory's unwind data.
//!
//! Offsets are relative to the start of each structure; [`nt_headers`] says where the file
//! and optional headers sit after `e_lfanew`.

/// `IMAGE_DOS_HEADER`: the `MZ` header at the image base.
pub mod dos {
    /// `e_magic`: [`MAGIC`].
    pub const E_MAGIC: u64 = 0x00;
    /// The DOS signature as stored.
    pub const MAGIC: [u8; 2] = *b"MZ";
    /// `e_lfanew` (u32): offset of the NT headers from the image base.
    pub const E_LFANEW: u64 = 0x3c;
    /// Size of the structure.
    pub const SIZE: u64 = 0x40;
}

/// `IMAGE_NT_HEADERS64`: the signature, then the file header, then the optional header.
pub mod nt_headers {
    /// `Signature`: [`SIGNATURE`].
    pub const SIGNATURE_OFFSET: u64 = 0x00;
    /// The PE signature as stored.
    pub const SIGNATURE: [u8; 4] = *b"PE\0\0";
    /// `FileHeader` ([`file_header`](super::file_header)).
    pub const FILE_HEADER: u64 = 0x04;
    /// `OptionalHeader` ([`optional_header`](super::optional_header)).
    pub const OPTIONAL_HEADER: u64 = 0x18;
}

/// `IMAGE_FILE_HEADER` (COFF header).
pub mod file_header {
    /// `Machine` (u16): [`MACHINE_AMD64`].
    pub const MACHINE: u64 = 0x00;
    /// `NumberOfSections` (u16).
    pub const NUMBER_OF_SECTIONS: u64 = 0x02;
    /// `TimeDateStamp` (u32).
    pub const TIME_DATE_STAMP: u64 = 0x04;
    /// `PointerToSymbolTable` (u32).
    pub const POINTER_TO_SYMBOL_TABLE: u64 = 0x08;
    /// `NumberOfSymbols` (u32).
    pub const NUMBER_OF_SYMBOLS: u64 = 0x0c;
    /// `SizeOfOptionalHeader` (u16): the section table follows the optional header.
    pub const SIZE_OF_OPTIONAL_HEADER: u64 = 0x10;
    /// `Characteristics` (u16).
    pub const CHARACTERISTICS: u64 = 0x12;
    /// Size of the structure.
    pub const SIZE: u64 = 0x14;
    /// `IMAGE_FILE_MACHINE_AMD64`.
    pub const MACHINE_AMD64: u16 = 0x8664;
}

/// `IMAGE_OPTIONAL_HEADER64`.
pub mod optional_header {
    /// `Magic` (u16): [`MAGIC_PE32_PLUS`].
    pub const MAGIC: u64 = 0x00;
    /// `IMAGE_NT_OPTIONAL_HDR64_MAGIC`.
    pub const MAGIC_PE32_PLUS: u16 = 0x20b;
    /// `SizeOfCode` (u32).
    pub const SIZE_OF_CODE: u64 = 0x04;
    /// `AddressOfEntryPoint` (u32 RVA).
    pub const ADDRESS_OF_ENTRY_POINT: u64 = 0x10;
    /// `BaseOfCode` (u32 RVA).
    pub const BASE_OF_CODE: u64 = 0x14;
    /// `ImageBase` (u64).
    pub const IMAGE_BASE: u64 = 0x18;
    /// `SectionAlignment` (u32).
    pub const SECTION_ALIGNMENT: u64 = 0x20;
    /// `FileAlignment` (u32).
    pub const FILE_ALIGNMENT: u64 = 0x24;
    /// `SizeOfImage` (u32).
    pub const SIZE_OF_IMAGE: u64 = 0x38;
    /// `SizeOfHeaders` (u32).
    pub const SIZE_OF_HEADERS: u64 = 0x3c;
    /// `CheckSum` (u32).
    pub const CHECKSUM: u64 = 0x40;
    /// `Subsystem` (u16).
    pub const SUBSYSTEM: u64 = 0x44;
    /// `DllCharacteristics` (u16).
    pub const DLL_CHARACTERISTICS: u64 = 0x46;
    /// `NumberOfRvaAndSizes` (u32).
    pub const NUMBER_OF_RVA_AND_SIZES: u64 = 0x6c;
    /// `DataDirectory[0]`: an array of `IMAGE_DATA_DIRECTORY` (u32 RVA, u32 size).
    pub const DATA_DIRECTORY: u64 = 0x70;
    /// Size of one `IMAGE_DATA_DIRECTORY`.
    pub const DATA_DIRECTORY_ENTRY_SIZE: u64 = 0x08;
    /// Size of the structure with its 16 data directories.
    pub const SIZE: u64 = 0xf0;
}

/// Indices into `DataDirectory`.
pub mod directory {
    /// `IMAGE_DIRECTORY_ENTRY_EXPORT`.
    pub const EXPORT: u64 = 0;
    /// `IMAGE_DIRECTORY_ENTRY_IMPORT`.
    pub const IMPORT: u64 = 1;
    /// `IMAGE_DIRECTORY_ENTRY_EXCEPTION`: the [`runtime_function`](super::runtime_function) table.
    pub const EXCEPTION: u64 = 3;
    /// `IMAGE_DIRECTORY_ENTRY_IAT`.
    pub const IAT: u64 = 12;
    /// Number of data directories in a PE32+ optional header.
    pub const COUNT: u64 = 16;
}

/// `IMAGE_SECTION_HEADER`, [`SIZE`](section::SIZE) bytes each, right after the optional
/// header.
pub mod section {
    /// `Name` (8 bytes, NUL-padded).
    pub const NAME: u64 = 0x00;
    /// Length of `Name`.
    pub const NAME_LEN: u64 = 8;
    /// `VirtualSize` (u32).
    pub const VIRTUAL_SIZE: u64 = 0x08;
    /// `VirtualAddress` (u32 RVA).
    pub const VIRTUAL_ADDRESS: u64 = 0x0c;
    /// `SizeOfRawData` (u32).
    pub const SIZE_OF_RAW_DATA: u64 = 0x10;
    /// `PointerToRawData` (u32).
    pub const POINTER_TO_RAW_DATA: u64 = 0x14;
    /// `Characteristics` (u32): `SCN_*` flags.
    pub const CHARACTERISTICS: u64 = 0x24;
    /// Size of one section header.
    pub const SIZE: u64 = 0x28;
}

/// `IMAGE_SCN_CNT_CODE`.
pub const SCN_CNT_CODE: u32 = 0x0000_0020;
/// `IMAGE_SCN_CNT_INITIALIZED_DATA`.
pub const SCN_CNT_INITIALIZED_DATA: u32 = 0x0000_0040;
/// `IMAGE_SCN_MEM_EXECUTE`.
pub const SCN_MEM_EXECUTE: u32 = 0x2000_0000;
/// `IMAGE_SCN_MEM_READ`.
pub const SCN_MEM_READ: u32 = 0x4000_0000;
/// `IMAGE_SCN_MEM_WRITE`.
pub const SCN_MEM_WRITE: u32 = 0x8000_0000;

/// `RUNTIME_FUNCTION` (x64), one per non-leaf function in the exception directory, sorted
/// by `BeginAddress`. All three fields are u32 RVAs.
pub mod runtime_function {
    /// `BeginAddress`: first byte of the function.
    pub const BEGIN_ADDRESS: u64 = 0x0;
    /// `EndAddress`: one past its last byte.
    pub const END_ADDRESS: u64 = 0x4;
    /// `UnwindData`: the function's [`unwind_info`](super::unwind_info).
    pub const UNWIND_DATA: u64 = 0x8;
    /// Size of one entry.
    pub const SIZE: u64 = 0xc;
}

/// `UNWIND_INFO` (x64): a 4-byte head, then `CountOfCodes` 2-byte `UNWIND_CODE` slots
/// (padded to an even count), then a handler RVA or a chained `RUNTIME_FUNCTION` per the
/// flags.
pub mod unwind_info {
    /// `Version : 3` (low bits) and `Flags : 5` (high bits), one byte.
    pub const VERSION_AND_FLAGS: u64 = 0x0;
    /// `SizeOfProlog` (u8).
    pub const SIZE_OF_PROLOG: u64 = 0x1;
    /// `CountOfCodes` (u8): number of 2-byte unwind code slots.
    pub const COUNT_OF_CODES: u64 = 0x2;
    /// `FrameRegister : 4` (low bits) and `FrameOffset : 4` (high bits, in 16-byte units).
    pub const FRAME_REGISTER_AND_OFFSET: u64 = 0x3;
    /// The first `UNWIND_CODE`.
    pub const UNWIND_CODES: u64 = 0x4;
    /// Size of one `UNWIND_CODE` slot.
    pub const UNWIND_CODE_SIZE: u64 = 0x2;
    /// `UNW_FLAG_EHANDLER`: an exception handler follows the codes.
    pub const FLAG_EHANDLER: u8 = 0x1;
    /// `UNW_FLAG_UHANDLER`: a termination handler follows the codes.
    pub const FLAG_UHANDLER: u8 = 0x2;
    /// `UNW_FLAG_CHAININFO`: a chained `RUNTIME_FUNCTION` follows the codes.
    pub const FLAG_CHAININFO: u8 = 0x4;

    /// `Version` from the first byte.
    pub const fn version(first: u8) -> u8 {
        first & 0x7
    }

    /// `Flags` from the first byte.
    pub const fn flags(first: u8) -> u8 {
        first >> 3
    }

    /// The first byte for `version` and `flags`.
    pub const fn version_and_flags(version: u8, flags: u8) -> u8 {
        (version & 0x7) | (flags << 3)
    }

    /// `FrameRegister` from the fourth byte.
    pub const fn frame_register(fourth: u8) -> u8 {
        fourth & 0xf
    }

    /// `FrameOffset` (16-byte units) from the fourth byte.
    pub const fn frame_offset(fourth: u8) -> u8 {
        fourth >> 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_offsets_add_up() {
        // SizeOfImage sits 0x50 bytes after `e_lfanew`, as every PE parser knows it.
        assert_eq!(
            nt_headers::OPTIONAL_HEADER + optional_header::SIZE_OF_IMAGE,
            0x50
        );
        assert_eq!(
            nt_headers::FILE_HEADER + file_header::SIZE,
            nt_headers::OPTIONAL_HEADER
        );
        assert_eq!(
            optional_header::DATA_DIRECTORY
                + directory::COUNT * optional_header::DATA_DIRECTORY_ENTRY_SIZE,
            optional_header::SIZE
        );
    }

    #[test]
    fn unwind_info_bit_fields() {
        let b = unwind_info::version_and_flags(1, unwind_info::FLAG_CHAININFO);
        assert_eq!(b, 0x21);
        assert_eq!(unwind_info::version(b), 1);
        assert_eq!(unwind_info::flags(b), unwind_info::FLAG_CHAININFO);
        assert_eq!(unwind_info::frame_register(0x35), 5);
        assert_eq!(unwind_info::frame_offset(0x35), 3);
    }
}
