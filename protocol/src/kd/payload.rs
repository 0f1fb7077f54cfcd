//! The x64 `DBGKD_*` payloads carried in KD data packets.
//!
//! Every payload is a fixed-size "message header" followed by optional "message data".
//! Each type keeps its header as raw bytes and reads typed fields from it, so anything a
//! debugger fills with junk (requests carry `STATUS_PENDING`, stale processor levels,
//! unused union bytes) survives a parse/emit round trip byte for byte. Typed views
//! ([`ManipulateApi`], [`StateChangeKind`], [`GetVersion64`]) are read with `api()`/`kind()`
//! and written back with `set_api()`/`set_kind()`, which touch only the fields they own.
//!
//! Each structure's fields are declared once, as `name: type = offset` rows (`layout!`
//! for structures, `head_fields!` for the fixed header fields of a block,
//! `manipulate_api!` for the manipulate union). The rows generate the struct, its
//! [`Field`] table (`FIELDS`, [`ManipulateApi::union_fields`]), the parse side (fewer
//! bytes than the layout is [`KdError::Truncated`]) and the emit side (into a buffer of
//! exactly the layout's length). A row outside its layout fails the build.
//!
//! ```
//! use tagsplit_protocol::kd::{ApiNumber, ManipulateApi, MemoryTransfer};
//!
//! let names: Vec<_> = ManipulateApi::union_fields(ApiNumber::READ_VIRTUAL_MEMORY)
//!     .iter()
//!     .map(|f| (f.name, f.offset, f.width))
//!     .collect();
//! assert_eq!(names, [("address", 0, 8), ("count", 8, 4), ("actual", 12, 4)]);
//! assert!(MemoryTransfer::parse(&[0; 15]).is_err());
//! ```

use serde::Serialize;

use super::{KdError, PacketType, status};

/// Length of `DBGKD_MANIPULATE_STATE64`.
pub const MANIPULATE_LEN: usize = 56;
/// Length of `DBGKD_ANY_WAIT_STATE_CHANGE` (x64).
pub const STATE_CHANGE_LEN: usize = 240;
/// Length of `DBGKD_DEBUG_IO`.
pub const DEBUG_IO_LEN: usize = 16;
/// Length of `DBGKD_FILE_IO`.
pub const FILE_IO_LEN: usize = 64;
/// Length of `DBGKD_TRACE_IO`.
pub const TRACE_IO_LEN: usize = 64;
/// Length of `DBGKD_CONTROL_REQUEST`.
pub const CONTROL_REQUEST_LEN: usize = 64;
/// Length of `DBGKD_GET_VERSION64`.
pub const GET_VERSION_LEN: usize = 40;
/// Size of an AMD64 `CONTEXT`.
pub const AMD64_CONTEXT_LEN: usize = 0x4D0;

/// Offset of the API-specific union in a `DBGKD_MANIPULATE_STATE64` header.
pub const MANIPULATE_UNION_OFFSET: usize = 16;
/// Length of that union.
pub const MANIPULATE_UNION_LEN: usize = MANIPULATE_LEN - MANIPULATE_UNION_OFFSET;
/// Offset of the `NewState` union in a state change.
pub const STATE_UNION_OFFSET: usize = 32;
/// Length of that union (up to the control report).
pub const STATE_UNION_LEN: usize = STATE_REPORT_OFFSET - STATE_UNION_OFFSET;

const _: () = assert!(
    Exception64::LEN <= STATE_UNION_LEN
        && LoadSymbols64::LEN <= STATE_UNION_LEN
        && CommandString64::LEN <= STATE_UNION_LEN
        && STATE_REPORT_OFFSET + ControlReport::LEN == STATE_CHANGE_LEN
);
/// Offset of the AMD64 control report in a state change.
pub const STATE_REPORT_OFFSET: usize = 192;

/// One declared field of a `DBGKD_*` layout: every offset is written once, in the
/// declarations of this module, and both the parse and the emit side are generated from
/// it. Offsets are checked against the layout's length when the crate compiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field name (the Rust name of the structure's member).
    pub name: &'static str,
    /// Byte offset from the start of the structure.
    pub offset: usize,
    /// Width in bytes.
    pub width: usize,
}

impl Field {
    /// A field of a `len`-byte layout; a field that does not fit fails the build.
    pub const fn new(name: &'static str, offset: usize, width: usize, len: usize) -> Field {
        assert!(offset + width <= len, "field outside its layout");
        Field {
            name,
            offset,
            width,
        }
    }

    /// The field's value in `bytes` (the structure's bytes), for fields of 1 to 8 bytes;
    /// `None` for wider fields or when `bytes` is too short.
    pub fn value(&self, bytes: &[u8]) -> Option<u64> {
        let raw = bytes.get(self.offset..self.offset.checked_add(self.width)?)?;
        let mut v = [0u8; 8];
        v.get_mut(..raw.len())?.copy_from_slice(raw);
        Some(u64::from_le_bytes(v))
    }
}

/// A fixed-width little-endian value that a declared field holds.
pub trait Wire: Sized {
    /// Bytes on the wire.
    const WIDTH: usize;
    /// Reads from exactly `WIDTH` bytes (`None` for any other length).
    fn read(bytes: &[u8]) -> Option<Self>;
    /// Writes into exactly `WIDTH` bytes (the caller slices them).
    fn write(&self, out: &mut [u8]);
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            const WIDTH: usize = std::mem::size_of::<$t>();
            fn read(bytes: &[u8]) -> Option<$t> {
                bytes.try_into().ok().map(<$t>::from_le_bytes)
            }
            fn write(&self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
wire_int!(u8, u16, u32, u64);

impl<const N: usize> Wire for [u8; N] {
    const WIDTH: usize = N;
    fn read(bytes: &[u8]) -> Option<[u8; N]> {
        bytes.try_into().ok()
    }
    fn write(&self, out: &mut [u8]) {
        out.copy_from_slice(self);
    }
}

impl<const N: usize> Wire for [u64; N] {
    const WIDTH: usize = 8 * N;
    fn read(bytes: &[u8]) -> Option<[u64; N]> {
        if bytes.len() != 8 * N {
            return None;
        }
        let mut out = [0u64; N];
        for (slot, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
            *slot = u64::read(chunk)?;
        }
        Some(out)
    }
    fn write(&self, out: &mut [u8]) {
        for (v, chunk) in self.iter().zip(out.chunks_exact_mut(8)) {
            v.write(chunk);
        }
    }
}

impl Wire for ApiNumber {
    const WIDTH: usize = 4;
    fn read(bytes: &[u8]) -> Option<ApiNumber> {
        u32::read(bytes).map(ApiNumber)
    }
    fn write(&self, out: &mut [u8]) {
        self.0.write(out);
    }
}

/// Reads a field at `off` of a structure `need` bytes long; too few bytes is a typed error.
fn read_field<T: Wire>(bytes: &[u8], off: usize, need: usize) -> Result<T, KdError> {
    bytes
        .get(off..off.saturating_add(T::WIDTH))
        .and_then(T::read)
        .ok_or(KdError::Truncated {
            need,
            have: bytes.len(),
        })
}

/// Reads a field of a fixed-size header. Header fields are declared with [`Field::new`],
/// which fails the build for a field outside the header, so the default never shows.
fn head_field<T: Wire + Default, const N: usize>(head: &[u8; N], off: usize) -> T {
    read_field(head, off, N).unwrap_or_default()
}

/// Writes a field into a buffer sized from its layout (in range by construction).
fn write_field<T: Wire>(v: &T, out: &mut [u8], off: usize) {
    if let Some(dst) = out.get_mut(off..off.saturating_add(T::WIDTH)) {
        v.write(dst);
    }
}

/// The `N`-byte window at `off` of a header (in range by the layouts' compile-time checks).
fn window<const N: usize>(head: &[u8], off: usize) -> Option<&[u8; N]> {
    head.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// The `N`-byte window at `off` of a header, mutable.
fn window_mut<const N: usize>(head: &mut [u8], off: usize) -> Option<&mut [u8; N]> {
    head.get_mut(off..off.checked_add(N)?)?.try_into().ok()
}

/// Declares a structure once, as `(name: type = offset)` rows: the struct, its field
/// table, `parse` (typed error on short input) and `emit` (into a buffer of exactly the
/// layout's length, so nothing can fall outside).
macro_rules! layout {
    (
        $(#[$meta:meta])* $name:ident [$len:expr] {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $off:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            /// Bytes the structure spans.
            pub const LEN: usize = $len;
            /// The declared fields, offsets from the start of the structure.
            pub const FIELDS: &'static [Field] =
                &[$( Field::new(stringify!($field), $off, <$ty as Wire>::WIDTH, $len), )*];

            /// Reads the structure from the start of `bytes` (which may run on); fewer
            /// than `LEN` bytes is [`KdError::Truncated`].
            pub fn parse(bytes: &[u8]) -> Result<$name, KdError> {
                if bytes.len() < $len {
                    return Err(KdError::Truncated { need: $len, have: bytes.len() });
                }
                Ok($name { $( $field: read_field(bytes, $off, $len)?, )* })
            }

            /// Writes every declared field into `out`; bytes no field declares keep
            /// their value.
            pub fn emit(&self, out: &mut [u8; $len]) {
                $( write_field(&self.$field, out, $off); )*
            }
        }

        const _: &[Field] = $name::FIELDS;
    };
}

/// Declares the fixed fields of a block's header once: a getter (and optionally a
/// setter) per row, plus the block's `FIELDS` table.
macro_rules! head_fields {
    (
        $block:ident [$len:expr] {
            $( $(#[$m:meta])* $get:ident $(/ $set:ident)? : $ty:ty = $off:expr; )*
        }
    ) => {
        impl $block {
            /// The declared header fields outside the typed unions.
            pub const FIELDS: &'static [Field] =
                &[$( Field::new(stringify!($get), $off, <$ty as Wire>::WIDTH, $len), )*];

            $(
                $(#[$m])*
                pub fn $get(&self) -> $ty {
                    head_field(&self.head, $off)
                }
                $(
                    #[doc = concat!("Sets [`", stringify!($get), "`](Self::", stringify!($get), ").")]
                    pub fn $set(&mut self, v: $ty) {
                        write_field(&v, &mut self.head, $off);
                    }
                )?
            )*
        }

        const _: &[Field] = $block::FIELDS;
    };
}

macro_rules! block {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name {
            head: [u8; $len],
            data: Vec<u8>,
        }

        impl $name {
            /// Length of the fixed header.
            pub const HEAD_LEN: usize = $len;

            /// Parses header and trailing data; nothing in the header is validated.
            pub fn parse(bytes: &[u8]) -> Result<$name, KdError> {
                let head = window::<$len>(bytes, 0).ok_or(KdError::Truncated {
                    need: $len,
                    have: bytes.len(),
                })?;
                Ok($name {
                    head: *head,
                    data: bytes.get($len..).unwrap_or(&[]).to_vec(),
                })
            }

            /// Builds from a raw header and data.
            pub fn from_parts(head: [u8; $len], data: Vec<u8>) -> $name {
                $name { head, data }
            }

            /// The raw header bytes.
            pub fn head(&self) -> &[u8; $len] {
                &self.head
            }

            /// The raw header bytes, mutable.
            pub fn head_mut(&mut self) -> &mut [u8; $len] {
                &mut self.head
            }

            /// The message data after the header.
            pub fn data(&self) -> &[u8] {
                &self.data
            }

            /// Replaces the message data.
            pub fn set_data(&mut self, data: Vec<u8>) {
                self.data = data;
            }

            /// Header plus data length.
            pub fn buffer_len(&self) -> usize {
                $len + self.data.len()
            }

            /// Writes header and data into the first [`buffer_len`](Self::buffer_len)
            /// bytes of `buf`; a shorter `buf` is [`KdError::Truncated`] and nothing is
            /// written.
            pub fn emit(&self, buf: &mut [u8]) -> Result<(), KdError> {
                let have = buf.len();
                let need = self.buffer_len();
                let (head, data) = buf
                    .get_mut(..need)
                    .ok_or(KdError::Truncated { need, have })?
                    .split_at_mut($len);
                head.copy_from_slice(&self.head);
                data.copy_from_slice(&self.data);
                Ok(())
            }

            /// Header and data as a new vector.
            pub fn to_bytes(&self) -> Vec<u8> {
                let mut v = Vec::with_capacity(self.buffer_len());
                v.extend_from_slice(&self.head);
                v.extend_from_slice(&self.data);
                v
            }
        }
    };
}

/// A `DBGKD_MANIPULATE_STATE64` API number (`ApiNumber`); the constants cover every number
/// in `windbgkd.h`, unknown values are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ApiNumber(pub u32);

macro_rules! api_numbers {
    ($( $(#[$doc:meta])* $name:ident = $val:literal, $text:literal; )*) => {
        impl ApiNumber {
            $( $(#[$doc])* pub const $name: ApiNumber = ApiNumber($val); )*

            /// Every known API number, ascending.
            pub const ALL: &'static [ApiNumber] = &[ $( ApiNumber($val), )* ];

            /// The `DbgKd…Api` name without prefix and suffix (`ReadVirtualMemory`), or
            /// `"Unknown"`.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $( $val => $text, )*
                    _ => "Unknown",
                }
            }
        }
    };
}

api_numbers! {
    /// 0x3130 `DbgKdReadVirtualMemoryApi`.
    READ_VIRTUAL_MEMORY = 0x3130, "ReadVirtualMemory";
    /// 0x3131 `DbgKdWriteVirtualMemoryApi`.
    WRITE_VIRTUAL_MEMORY = 0x3131, "WriteVirtualMemory";
    /// 0x3132 `DbgKdGetContextApi`.
    GET_CONTEXT = 0x3132, "GetContext";
    /// 0x3133 `DbgKdSetContextApi`.
    SET_CONTEXT = 0x3133, "SetContext";
    /// 0x3134 `DbgKdWriteBreakPointApi`.
    WRITE_BREAKPOINT = 0x3134, "WriteBreakPoint";
    /// 0x3135 `DbgKdRestoreBreakPointApi`.
    RESTORE_BREAKPOINT = 0x3135, "RestoreBreakPoint";
    /// 0x3136 `DbgKdContinueApi`.
    CONTINUE = 0x3136, "Continue";
    /// 0x3137 `DbgKdReadControlSpaceApi`.
    READ_CONTROL_SPACE = 0x3137, "ReadControlSpace";
    /// 0x3138 `DbgKdWriteControlSpaceApi`.
    WRITE_CONTROL_SPACE = 0x3138, "WriteControlSpace";
    /// 0x3139 `DbgKdReadIoSpaceApi`.
    READ_IO_SPACE = 0x3139, "ReadIoSpace";
    /// 0x313A `DbgKdWriteIoSpaceApi`.
    WRITE_IO_SPACE = 0x313A, "WriteIoSpace";
    /// 0x313B `DbgKdRebootApi`.
    REBOOT = 0x313B, "Reboot";
    /// 0x313C `DbgKdContinueApi2`.
    CONTINUE2 = 0x313C, "Continue2";
    /// 0x313D `DbgKdReadPhysicalMemoryApi`.
    READ_PHYSICAL_MEMORY = 0x313D, "ReadPhysicalMemory";
    /// 0x313E `DbgKdWritePhysicalMemoryApi`.
    WRITE_PHYSICAL_MEMORY = 0x313E, "WritePhysicalMemory";
    /// 0x313F `DbgKdQuerySpecialCallsApi`.
    QUERY_SPECIAL_CALLS = 0x313F, "QuerySpecialCalls";
    /// 0x3140 `DbgKdSetSpecialCallApi`.
    SET_SPECIAL_CALL = 0x3140, "SetSpecialCall";
    /// 0x3141 `DbgKdClearSpecialCallsApi`.
    CLEAR_SPECIAL_CALLS = 0x3141, "ClearSpecialCalls";
    /// 0x3142 `DbgKdSetInternalBreakPointApi`.
    SET_INTERNAL_BREAKPOINT = 0x3142, "SetInternalBreakPoint";
    /// 0x3143 `DbgKdGetInternalBreakPointApi`.
    GET_INTERNAL_BREAKPOINT = 0x3143, "GetInternalBreakPoint";
    /// 0x3144 `DbgKdReadIoSpaceExtendedApi`.
    READ_IO_SPACE_EXTENDED = 0x3144, "ReadIoSpaceExtended";
    /// 0x3145 `DbgKdWriteIoSpaceExtendedApi`.
    WRITE_IO_SPACE_EXTENDED = 0x3145, "WriteIoSpaceExtended";
    /// 0x3146 `DbgKdGetVersionApi`.
    GET_VERSION = 0x3146, "GetVersion";
    /// 0x3147 `DbgKdWriteBreakPointExApi`.
    WRITE_BREAKPOINT_EX = 0x3147, "WriteBreakPointEx";
    /// 0x3148 `DbgKdRestoreBreakPointExApi`.
    RESTORE_BREAKPOINT_EX = 0x3148, "RestoreBreakPointEx";
    /// 0x3149 `DbgKdCauseBugCheckApi`.
    CAUSE_BUGCHECK = 0x3149, "CauseBugCheck";
    /// 0x3150 `DbgKdSwitchProcessor`.
    SWITCH_PROCESSOR = 0x3150, "SwitchProcessor";
    /// 0x3151 `DbgKdPageInApi`.
    PAGE_IN = 0x3151, "PageIn";
    /// 0x3152 `DbgKdReadMachineSpecificRegister`.
    READ_MSR = 0x3152, "ReadMachineSpecificRegister";
    /// 0x3153 `DbgKdWriteMachineSpecificRegister`.
    WRITE_MSR = 0x3153, "WriteMachineSpecificRegister";
    /// 0x3154 `OldVlm1`.
    OLD_VLM1 = 0x3154, "OldVlm1";
    /// 0x3155 `OldVlm2`.
    OLD_VLM2 = 0x3155, "OldVlm2";
    /// 0x3156 `DbgKdSearchMemoryApi`.
    SEARCH_MEMORY = 0x3156, "SearchMemory";
    /// 0x3157 `DbgKdGetBusDataApi`.
    GET_BUS_DATA = 0x3157, "GetBusData";
    /// 0x3158 `DbgKdSetBusDataApi`.
    SET_BUS_DATA = 0x3158, "SetBusData";
    /// 0x3159 `DbgKdCheckLowMemoryApi`.
    CHECK_LOW_MEMORY = 0x3159, "CheckLowMemory";
    /// 0x315A `DbgKdClearAllInternalBreakpointsApi`.
    CLEAR_ALL_INTERNAL_BREAKPOINTS = 0x315A, "ClearAllInternalBreakpoints";
    /// 0x315B `DbgKdFillMemoryApi`.
    FILL_MEMORY = 0x315B, "FillMemory";
    /// 0x315C `DbgKdQueryMemoryApi`.
    QUERY_MEMORY = 0x315C, "QueryMemory";
    /// 0x315D `DbgKdSwitchPartition`.
    SWITCH_PARTITION = 0x315D, "SwitchPartition";
    /// 0x315E `DbgKdWriteCustomBreakpointApi`.
    WRITE_CUSTOM_BREAKPOINT = 0x315E, "WriteCustomBreakpoint";
    /// 0x315F `DbgKdGetContextExApi`.
    GET_CONTEXT_EX = 0x315F, "GetContextEx";
    /// 0x3160 `DbgKdSetContextExApi`.
    SET_CONTEXT_EX = 0x3160, "SetContextEx";
}

impl ApiNumber {
    /// `DbgKdMaximumManipulate` (one past the last API number).
    pub const MAXIMUM: ApiNumber = ApiNumber(0x3161);
}

layout! {
    /// The transfer fields of memory and control-space requests (`DBGKD_READ_MEMORY64`
    /// and `DBGKD_WRITE_MEMORY64` share this layout).
    MemoryTransfer [16] {
        /// `TargetBaseAddress` (for control space: the selector).
        address: u64 = 0,
        /// `TransferCount`.
        count: u32 = 8,
        /// `ActualBytesRead`/`ActualBytesWritten` (in physical requests: the caching flag).
        actual: u32 = 12,
    }
}

layout! {
    /// `DBGKD_GET_VERSION64`.
    GetVersion64 [GET_VERSION_LEN] {
        /// `MajorVersion` (low byte 0x0F free build; high byte the DBGKD_MAJOR type).
        major_version: u16 = 0,
        /// `MinorVersion` (the build number).
        minor_version: u16 = 2,
        /// `ProtocolVersion` (6 for 64-bit protocol version 2).
        protocol_version: u8 = 4,
        /// `KdSecondaryVersion` (2 on AMD64).
        kd_secondary_version: u8 = 5,
        /// `Flags` (MP 0x1, DATA 0x2, PTR64 0x4, …).
        flags: u16 = 6,
        /// `MachineType` (0x8664 for AMD64).
        machine_type: u16 = 8,
        /// `MaxPacketType`.
        max_packet_type: u8 = 10,
        /// `MaxStateChange`.
        max_state_change: u8 = 11,
        /// `MaxManipulate`.
        max_manipulate: u8 = 12,
        /// `Simulation`.
        simulation: u8 = 13,
        /// `Unused` (kept for round trips).
        unused: u16 = 14,
        /// `KernBase`.
        kern_base: u64 = 16,
        /// `PsLoadedModuleList`.
        ps_loaded_module_list: u64 = 24,
        /// `DebuggerDataList`.
        debugger_data_list: u64 = 32,
    }
}

layout! {
    /// `DBGKD_READ_WRITE_IO64`: the fields of I/O-space requests.
    ReadWriteIo64 [16] {
        /// `IoAddress`.
        address: u64 = 0,
        /// `DataSize`.
        size: u32 = 8,
        /// `DataValue`.
        value: u32 = 12,
    }
}

layout! {
    /// `DBGKD_READ_WRITE_MSR`: the fields of MSR requests.
    ReadWriteMsr [12] {
        /// `Msr`.
        msr: u32 = 0,
        /// `DataValueLow`.
        low: u32 = 4,
        /// `DataValueHigh`.
        high: u32 = 8,
    }
}

layout! {
    /// `DBGKD_CONTEXT_EX`: the fields of partial CONTEXT requests.
    ContextEx [12] {
        /// `Offset`.
        offset: u32 = 0,
        /// `ByteCount`.
        byte_count: u32 = 4,
        /// `BytesCopied`.
        bytes_copied: u32 = 8,
    }
}

/// Declares the manipulate union once: variants that embed a declared structure, and
/// variants whose fields are listed inline (offsets from the start of the union). The
/// enum, `number`, the field tables and both directions are generated from the rows.
macro_rules! manipulate_api {
    (
        embedded {
            $( $(#[$lmeta:meta])* $lvar:ident ( $lty:ident ) = $lapi:ident; )*
        }
        inline {
            $(
                $(#[$imeta:meta])* $ivar:ident = $iapi:ident {
                    $( $(#[$fmeta:meta])* $field:ident : $fty:ty = $foff:expr, )*
                }
            )*
        }
    ) => {
        /// The typed union of a manipulate-state packet.
        #[derive(Clone, Debug, PartialEq, Eq, Serialize)]
        #[non_exhaustive]
        pub enum ManipulateApi {
            $( $(#[$lmeta])* $lvar($lty), )*
            $( $(#[$imeta])* $ivar { $( $(#[$fmeta])* $field: $fty, )* }, )*
            /// Any other API number (known or not), with the raw 40-byte union.
            Unknown {
                /// The API number.
                api: ApiNumber,
                /// The union bytes (offsets 16..56 of the header).
                #[serde(skip)]
                union: [u8; MANIPULATE_UNION_LEN],
            },
        }

        $( const _: () = assert!($lty::LEN <= MANIPULATE_UNION_LEN); )*

        impl ManipulateApi {
            /// The API number of this variant.
            pub fn number(&self) -> ApiNumber {
                match self {
                    $( ManipulateApi::$lvar(_) => ApiNumber::$lapi, )*
                    $( ManipulateApi::$ivar { .. } => ApiNumber::$iapi, )*
                    ManipulateApi::Unknown { api, .. } => *api,
                }
            }

            /// The declared union fields of an API number (offsets from the start of
            /// the union); empty for numbers without a typed variant.
            pub fn union_fields(api: ApiNumber) -> &'static [Field] {
                match api {
                    $( ApiNumber::$lapi => $lty::FIELDS, )*
                    $(
                        ApiNumber::$iapi => {
                            const FIELDS: &[Field] = &[$(
                                Field::new(
                                    stringify!($field),
                                    $foff,
                                    <$fty as Wire>::WIDTH,
                                    MANIPULATE_UNION_LEN,
                                ),
                            )*];
                            FIELDS
                        }
                    )*
                    _ => &[],
                }
            }

            /// Reads the typed union of `api` from the 40 union bytes.
            pub fn parse_union(
                api: ApiNumber,
                union: &[u8; MANIPULATE_UNION_LEN],
            ) -> Result<ManipulateApi, KdError> {
                Ok(match api {
                    $( ApiNumber::$lapi => ManipulateApi::$lvar($lty::parse(union)?), )*
                    $(
                        ApiNumber::$iapi => ManipulateApi::$ivar {
                            $( $field: read_field(union, $foff, MANIPULATE_UNION_LEN)?, )*
                        },
                    )*
                    _ => ManipulateApi::Unknown { api, union: *union },
                })
            }

            /// Writes this variant's fields into the 40 union bytes; bytes the variant
            /// does not own are left as they are.
            pub fn emit_union(&self, union: &mut [u8; MANIPULATE_UNION_LEN]) {
                match self {
                    $(
                        ManipulateApi::$lvar(v) => {
                            if let Some(dst) = window_mut(union, 0) {
                                v.emit(dst);
                            }
                        }
                    )*
                    $(
                        ManipulateApi::$ivar { $( $field, )* } => {
                            $( write_field($field, union, $foff); )*
                        }
                    )*
                    ManipulateApi::Unknown { union: raw, .. } => *union = *raw,
                }
            }
        }
    };
}

manipulate_api! {
    embedded {
        /// 0x3130: read virtual memory.
        ReadVirtualMemory(MemoryTransfer) = READ_VIRTUAL_MEMORY;
        /// 0x3131: write virtual memory (bytes follow the request).
        WriteVirtualMemory(MemoryTransfer) = WRITE_VIRTUAL_MEMORY;
        /// 0x3137: read control space (address = selector).
        ReadControlSpace(MemoryTransfer) = READ_CONTROL_SPACE;
        /// 0x3138: write control space.
        WriteControlSpace(MemoryTransfer) = WRITE_CONTROL_SPACE;
        /// 0x313D: read physical memory.
        ReadPhysicalMemory(MemoryTransfer) = READ_PHYSICAL_MEMORY;
        /// 0x313E: write physical memory.
        WritePhysicalMemory(MemoryTransfer) = WRITE_PHYSICAL_MEMORY;
        /// 0x3146: get version.
        GetVersion(GetVersion64) = GET_VERSION;
        /// 0x3139: read I/O space.
        ReadIoSpace(ReadWriteIo64) = READ_IO_SPACE;
        /// 0x313A: write I/O space.
        WriteIoSpace(ReadWriteIo64) = WRITE_IO_SPACE;
        /// 0x3152: read an MSR.
        ReadMsr(ReadWriteMsr) = READ_MSR;
        /// 0x3153: write an MSR.
        WriteMsr(ReadWriteMsr) = WRITE_MSR;
        /// 0x315F: get part of the CONTEXT.
        GetContextEx(ContextEx) = GET_CONTEXT_EX;
        /// 0x3160: set part of the CONTEXT.
        SetContextEx(ContextEx) = SET_CONTEXT_EX;
    }
    inline {
        /// 0x3132: get the CONTEXT (reply carries it).
        GetContext = GET_CONTEXT {
            /// `Unused` (junk in requests).
            unused: u32 = 0,
        }
        /// 0x3133: set the CONTEXT (it follows the request).
        SetContext = SET_CONTEXT {
            /// `ContextFlags`.
            context_flags: u32 = 0,
        }
        /// 0x3134: write a software breakpoint.
        WriteBreakPoint = WRITE_BREAKPOINT {
            /// `BreakPointAddress`.
            address: u64 = 0,
            /// `BreakPointHandle` (output).
            handle: u32 = 8,
        }
        /// 0x3135: remove a breakpoint.
        RestoreBreakPoint = RESTORE_BREAKPOINT {
            /// `BreakPointHandle`.
            handle: u32 = 0,
        }
        /// 0x3136: resume.
        Continue = CONTINUE {
            /// `ContinueStatus`.
            status: u32 = 0,
        }
        /// 0x313C: resume with the AMD64 control set.
        Continue2 = CONTINUE2 {
            /// `ContinueStatus`.
            status: u32 = 0,
            /// `TraceFlag`.
            trace_flag: u32 = 4,
            /// `Dr7`.
            dr7: u64 = 8,
            /// `CurrentSymbolStart`.
            symbol_start: u64 = 16,
            /// `CurrentSymbolEnd`.
            symbol_end: u64 = 24,
        }
        /// 0x3156: search memory (pattern follows; reply's address is the hit).
        SearchMemory = SEARCH_MEMORY {
            /// `SearchAddress` / `FoundAddress`.
            address: u64 = 0,
            /// `SearchLength`.
            length: u64 = 8,
            /// `PatternLength`.
            pattern_length: u32 = 16,
        }
    }
}

impl ManipulateApi {
    /// Reads the typed union from a 56-byte manipulate header.
    pub fn parse(h: &[u8; MANIPULATE_LEN]) -> ManipulateApi {
        let api: ApiNumber = head_field(h, 0);
        let union = window::<MANIPULATE_UNION_LEN>(h, MANIPULATE_UNION_OFFSET);
        // Every declared layout fits the 40-byte union (checked when the crate builds),
        // so the raw fallback below is never taken.
        union
            .and_then(|u| ManipulateApi::parse_union(api, u).ok())
            .unwrap_or(ManipulateApi::Unknown {
                api,
                union: [0; MANIPULATE_UNION_LEN],
            })
    }

    /// Writes the API number and this variant's union fields into a 56-byte header; bytes
    /// the variant does not own are left as they are.
    pub fn emit(&self, h: &mut [u8; MANIPULATE_LEN]) {
        write_field(&self.number(), h, 0);
        if let Some(union) = window_mut(h, MANIPULATE_UNION_OFFSET) {
            self.emit_union(union);
        }
    }
}

block! {
    /// `DBGKD_MANIPULATE_STATE64` (packet type 2): 56-byte header + data.
    Manipulate, MANIPULATE_LEN
}

head_fields! {
    Manipulate [MANIPULATE_LEN] {
        /// `ApiNumber`.
        api_number: ApiNumber = 0;
        /// `ProcessorLevel`.
        processor_level: u16 = 4;
        /// `Processor`.
        processor / set_processor: u16 = 6;
        /// `ReturnStatus`.
        return_status / set_return_status: u32 = 8;
    }
}

impl Manipulate {
    /// A request as a debugger sends it: `ReturnStatus` = `STATUS_PENDING`.
    pub fn request(api: &ManipulateApi, data: Vec<u8>) -> Manipulate {
        let mut m = Manipulate::from_parts([0u8; MANIPULATE_LEN], data);
        m.set_api(api);
        m.set_return_status(status::PENDING);
        m
    }

    /// The reply convention: echo this request's header, set `ReturnStatus`, the typed
    /// output fields and the data.
    pub fn reply(&self, return_status: u32, api: &ManipulateApi, data: Vec<u8>) -> Manipulate {
        let mut m = Manipulate::from_parts(self.head, data);
        m.set_api(api);
        m.set_return_status(return_status);
        m
    }

    /// The typed union.
    pub fn api(&self) -> ManipulateApi {
        ManipulateApi::parse(&self.head)
    }
    /// Writes a typed union (and its API number) into the header.
    pub fn set_api(&mut self, api: &ManipulateApi) {
        api.emit(&mut self.head);
    }
    /// The raw 40-byte union (what [`ManipulateApi::union_fields`] offsets are relative to).
    pub fn union(&self) -> &[u8] {
        self.head.get(MANIPULATE_UNION_OFFSET..).unwrap_or(&[])
    }
}

layout! {
    /// `DBGKM_EXCEPTION64` inside an exception state change.
    Exception64 [0xA0] {
        /// `ExceptionCode`.
        code: u32 = 0,
        /// `ExceptionFlags`.
        flags: u32 = 4,
        /// `ExceptionRecord` (chained record pointer).
        record: u64 = 8,
        /// `ExceptionAddress`.
        address: u64 = 16,
        /// `NumberParameters`.
        number_parameters: u32 = 24,
        /// `ExceptionInformation[15]`.
        information: [u64; 15] = 32,
        /// `FirstChance`.
        first_chance: u32 = 152,
    }
}

layout! {
    /// `DBGKD_LOAD_SYMBOLS64` inside a load-symbols state change.
    LoadSymbols64 [0x28] {
        /// `PathNameLength` (including the NUL).
        path_name_length: u32 = 0,
        /// `BaseOfDll`.
        base_of_dll: u64 = 8,
        /// `ProcessId`.
        process_id: u64 = 16,
        /// `CheckSum`.
        checksum: u32 = 24,
        /// `SizeOfImage`.
        size_of_image: u32 = 28,
        /// `UnloadSymbols` (non-zero: the module was unloaded).
        unload_symbols: u8 = 32,
    }
}

layout! {
    /// `DBGKD_COMMAND_STRING` inside a command-string state change.
    CommandString64 [0x40] {
        /// `Flags`.
        flags: u32 = 0,
    }
}

layout! {
    /// The AMD64 control report at the end of a state change.
    ControlReport [STATE_CHANGE_LEN - STATE_REPORT_OFFSET] {
        /// `Dr6`.
        dr6: u64 = 0,
        /// `Dr7`.
        dr7: u64 = 8,
        /// `EFlags`.
        eflags: u32 = 16,
        /// `InstructionCount` (valid bytes of the instruction stream).
        instruction_count: u16 = 20,
        /// `ReportFlags`.
        report_flags: u16 = 22,
        /// `InstructionStream[16]` (code bytes at the program counter).
        instruction_stream: [u8; 16] = 24,
        /// `SegCs`.
        seg_cs: u16 = 40,
        /// `SegDs`.
        seg_ds: u16 = 42,
        /// `SegEs`.
        seg_es: u16 = 44,
        /// `SegFs`.
        seg_fs: u16 = 46,
    }
}

/// The typed `NewState` union of a state change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum StateChangeKind {
    /// 0x3030: an exception (breakpoint, single step, …).
    Exception(Exception64),
    /// 0x3031: a module was loaded or unloaded (path follows the header).
    LoadSymbols(LoadSymbols64),
    /// 0x3032: a command string (name and command follow).
    CommandString {
        /// `Flags`.
        flags: u32,
    },
    /// Anything else (the `NewState` value).
    Unknown(u32),
}

/// `NewState` of an exception state change.
pub const STATE_EXCEPTION: u32 = 0x3030;
/// `NewState` of a load-symbols state change.
pub const STATE_LOAD_SYMBOLS: u32 = 0x3031;
/// `NewState` of a command-string state change.
pub const STATE_COMMAND_STRING: u32 = 0x3032;

block! {
    /// `DBGKD_ANY_WAIT_STATE_CHANGE` (packet type 7): 240-byte header + data.
    StateChange, STATE_CHANGE_LEN
}

head_fields! {
    StateChange [STATE_CHANGE_LEN] {
        /// `NewState`.
        new_state / set_new_state: u32 = 0;
        /// `ProcessorLevel`.
        processor_level / set_processor_level: u16 = 4;
        /// `Processor`.
        processor / set_processor: u16 = 6;
        /// `NumberProcessors`.
        number_processors / set_number_processors: u32 = 8;
        /// `Thread`.
        thread / set_thread: u64 = 16;
        /// `ProgramCounter`.
        program_counter / set_program_counter: u64 = 24;
    }
}

impl StateChange {
    /// A state change with the common fields set; the union and control report are zero.
    pub fn new(
        kind: &StateChangeKind,
        processor: u16,
        number_processors: u32,
        thread: u64,
        program_counter: u64,
    ) -> StateChange {
        let mut s = StateChange::from_parts([0u8; STATE_CHANGE_LEN], Vec::new());
        s.set_processor(processor);
        s.set_number_processors(number_processors);
        s.set_thread(thread);
        s.set_program_counter(program_counter);
        s.set_kind(kind);
        s
    }

    /// The typed union.
    pub fn kind(&self) -> StateChangeKind {
        // Each union layout fits the window (checked when the crate builds), so a parse
        // error here cannot happen; it would read as `Unknown`.
        let u = window::<STATE_UNION_LEN>(&self.head, STATE_UNION_OFFSET)
            .map_or(&[][..], |u| u.as_slice());
        let typed = match self.new_state() & 0xFFFF {
            STATE_EXCEPTION => Exception64::parse(u).map(StateChangeKind::Exception),
            STATE_LOAD_SYMBOLS => LoadSymbols64::parse(u).map(StateChangeKind::LoadSymbols),
            STATE_COMMAND_STRING => {
                CommandString64::parse(u).map(|c| StateChangeKind::CommandString { flags: c.flags })
            }
            _ => Ok(StateChangeKind::Unknown(self.new_state())),
        };
        typed.unwrap_or(StateChangeKind::Unknown(self.new_state()))
    }

    /// Writes `NewState` and the union fields of `kind`.
    pub fn set_kind(&mut self, kind: &StateChangeKind) {
        // Keep the high half of NewState (0x10000 marks an alternate source).
        let high = self.new_state() & 0xFFFF_0000;
        let state = match kind {
            StateChangeKind::Exception(_) => high | STATE_EXCEPTION,
            StateChangeKind::LoadSymbols(_) => high | STATE_LOAD_SYMBOLS,
            StateChangeKind::CommandString { .. } => high | STATE_COMMAND_STRING,
            StateChangeKind::Unknown(v) => *v,
        };
        self.set_new_state(state);
        let h = &mut self.head;
        let at = STATE_UNION_OFFSET;
        match kind {
            StateChangeKind::Exception(e) => window_mut(h, at).map(|u| e.emit(u)),
            StateChangeKind::LoadSymbols(l) => window_mut(h, at).map(|u| l.emit(u)),
            StateChangeKind::CommandString { flags } => {
                window_mut(h, at).map(|u| CommandString64 { flags: *flags }.emit(u))
            }
            StateChangeKind::Unknown(_) => None,
        };
    }

    /// The AMD64 control report.
    pub fn control_report(&self) -> ControlReport {
        // The report window is in range by construction; the zero report is never used.
        window::<{ ControlReport::LEN }>(&self.head, STATE_REPORT_OFFSET)
            .and_then(|r| ControlReport::parse(r).ok())
            .unwrap_or_default()
    }

    /// Writes the AMD64 control report.
    pub fn set_control_report(&mut self, r: &ControlReport) {
        if let Some(dst) = window_mut(&mut self.head, STATE_REPORT_OFFSET) {
            r.emit(dst);
        }
    }

    /// For a load-symbols change: the image path (ASCII up to the first NUL).
    pub fn path(&self) -> String {
        let end = memchr::memchr(0, &self.data).unwrap_or(self.data.len());
        String::from_utf8_lossy(self.data.get(..end).unwrap_or(&[])).into_owned()
    }
}

/// `ApiNumber` of `DbgKdPrintStringApi`.
pub const PRINT_STRING_API: u32 = 0x3230;
/// `ApiNumber` of `DbgKdGetStringApi`.
pub const GET_STRING_API: u32 = 0x3231;

block! {
    /// `DBGKD_DEBUG_IO` (packet type 3): 16-byte header + string.
    DebugIo, DEBUG_IO_LEN
}

head_fields! {
    DebugIo [DEBUG_IO_LEN] {
        /// `ApiNumber` (0x3230 PrintString, 0x3231 GetString).
        api_number / set_api_number: u32 = 0;
        /// `ProcessorLevel`.
        processor_level: u16 = 4;
        /// `Processor`.
        processor / set_processor: u16 = 6;
        /// `LengthOfString` (PrintString) or `LengthOfPromptString` (GetString).
        length / set_length: u32 = 8;
        /// `LengthOfStringRead` (GetString).
        length_read: u32 = 12;
    }
}

impl DebugIo {
    /// A `PrintString` packet carrying `text`.
    pub fn print_string(processor: u16, text: &[u8]) -> DebugIo {
        let mut d = DebugIo::from_parts([0u8; DEBUG_IO_LEN], text.to_vec());
        d.set_api_number(PRINT_STRING_API);
        d.set_processor(processor);
        d.set_length(u32::try_from(text.len()).unwrap_or(u32::MAX));
        d
    }
    /// The string bytes, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// `ApiNumber` of `DbgKdCreateFileApi`.
pub const CREATE_FILE_API: u32 = 0x3430;
/// `ApiNumber` of `DbgKdReadFileApi`.
pub const READ_FILE_API: u32 = 0x3431;
/// `ApiNumber` of `DbgKdWriteFileApi`.
pub const WRITE_FILE_API: u32 = 0x3432;
/// `ApiNumber` of `DbgKdCloseFileApi`.
pub const CLOSE_FILE_API: u32 = 0x3433;

block! {
    /// `DBGKD_FILE_IO` (packet type 11): 64-byte header + data (a UTF-16 name for
    /// CreateFile).
    FileIo, FILE_IO_LEN
}

head_fields! {
    FileIo [FILE_IO_LEN] {
        /// `ApiNumber` (0x3430 Create, 0x3431 Read, 0x3432 Write, 0x3433 Close).
        api_number: u32 = 0;
        /// `Status`.
        status / set_status: u32 = 4;
    }
}

impl FileIo {
    /// The operation name.
    pub fn api_name(&self) -> &'static str {
        match self.api_number() {
            CREATE_FILE_API => "CreateFile",
            READ_FILE_API => "ReadFile",
            WRITE_FILE_API => "WriteFile",
            CLOSE_FILE_API => "CloseFile",
            _ => "Unknown",
        }
    }
    /// For CreateFile: the UTF-16LE file name in the data, up to the first NUL.
    pub fn file_name(&self) -> String {
        let units: Vec<u16> = self
            .data
            .chunks_exact(2)
            .filter_map(u16::read)
            .take_while(|&u| u != 0)
            .collect();
        String::from_utf16_lossy(&units)
    }
}

block! {
    /// `DBGKD_TRACE_IO` (packet type 9): 64-byte header + trace data.
    TraceIo, TRACE_IO_LEN
}

head_fields! {
    TraceIo [TRACE_IO_LEN] {
        /// `ApiNumber` (0x3330 PrintTrace).
        api_number: u32 = 0;
        /// `LengthOfData`.
        length_of_data: u32 = 8;
    }
}

block! {
    /// `DBGKD_CONTROL_REQUEST` (packet type 10): 64-byte header.
    ControlRequest, CONTROL_REQUEST_LEN
}

head_fields! {
    ControlRequest [CONTROL_REQUEST_LEN] {
        /// `ApiNumber` (0x4300 RequestHardwareBp, 0x4301 ReleaseHardwareBp).
        api_number: u32 = 0;
        /// `ReturnStatus`.
        return_status: u32 = 4;
    }
}

/// A data packet's payload, typed by its packet type.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Payload {
    /// Packet type 2.
    Manipulate(Manipulate),
    /// Packet type 7.
    StateChange(StateChange),
    /// Packet type 3.
    DebugIo(DebugIo),
    /// Packet type 11.
    FileIo(FileIo),
    /// Packet type 9.
    TraceIo(TraceIo),
    /// Packet type 10.
    ControlRequest(ControlRequest),
    /// Any other packet type: the raw bytes.
    Other(Vec<u8>),
}

impl Payload {
    /// Parses the payload of a packet of type `ty`.
    pub fn parse(ty: PacketType, bytes: &[u8]) -> Result<Payload, KdError> {
        Ok(match ty {
            PacketType::StateManipulate => Payload::Manipulate(Manipulate::parse(bytes)?),
            PacketType::StateChange64 => Payload::StateChange(StateChange::parse(bytes)?),
            PacketType::DebugIo => Payload::DebugIo(DebugIo::parse(bytes)?),
            PacketType::FileIo => Payload::FileIo(FileIo::parse(bytes)?),
            PacketType::TraceIo => Payload::TraceIo(TraceIo::parse(bytes)?),
            PacketType::ControlRequest => Payload::ControlRequest(ControlRequest::parse(bytes)?),
            _ => Payload::Other(bytes.to_vec()),
        })
    }

    /// The packet type this payload travels in (`Unused` for raw payloads).
    pub fn packet_type(&self) -> PacketType {
        match self {
            Payload::Manipulate(_) => PacketType::StateManipulate,
            Payload::StateChange(_) => PacketType::StateChange64,
            Payload::DebugIo(_) => PacketType::DebugIo,
            Payload::FileIo(_) => PacketType::FileIo,
            Payload::TraceIo(_) => PacketType::TraceIo,
            Payload::ControlRequest(_) => PacketType::ControlRequest,
            Payload::Other(_) => PacketType::Unused,
        }
    }

    /// The payload bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Payload::Manipulate(p) => p.to_bytes(),
            Payload::StateChange(p) => p.to_bytes(),
            Payload::DebugIo(p) => p.to_bytes(),
            Payload::FileIo(p) => p.to_bytes(),
            Payload::TraceIo(p) => p.to_bytes(),
            Payload::ControlRequest(p) => p.to_bytes(),
            Payload::Other(v) => v.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every declared table: fields in order, none overlapping, all inside the layout.
    fn check_table(name: &str, fields: &[Field], len: usize) {
        let mut end = 0;
        for f in fields {
            assert!(
                f.offset >= end,
                "{name}.{} overlaps the field before",
                f.name
            );
            end = f.offset + f.width;
            assert!(end <= len, "{name}.{} outside {len} bytes", f.name);
        }
    }

    #[test]
    fn declared_tables_are_ordered_and_disjoint() {
        check_table("GetVersion64", GetVersion64::FIELDS, GET_VERSION_LEN);
        check_table("Exception64", Exception64::FIELDS, Exception64::LEN);
        check_table("LoadSymbols64", LoadSymbols64::FIELDS, LoadSymbols64::LEN);
        check_table("ControlReport", ControlReport::FIELDS, ControlReport::LEN);
        check_table("Manipulate", Manipulate::FIELDS, MANIPULATE_LEN);
        check_table("StateChange", StateChange::FIELDS, STATE_CHANGE_LEN);
        check_table("DebugIo", DebugIo::FIELDS, DEBUG_IO_LEN);
        for api in ApiNumber::ALL {
            check_table(
                api.name(),
                ManipulateApi::union_fields(*api),
                MANIPULATE_UNION_LEN,
            );
        }
        assert_eq!(
            GetVersion64::FIELDS.last().map(|f| f.offset + f.width),
            Some(40)
        );
        let rvm: Vec<_> = ManipulateApi::union_fields(ApiNumber::READ_VIRTUAL_MEMORY)
            .iter()
            .map(|f| (f.name, f.offset, f.width))
            .collect();
        assert_eq!(rvm, [("address", 0, 8), ("count", 8, 4), ("actual", 12, 4)]);
        assert!(ManipulateApi::union_fields(ApiNumber::REBOOT).is_empty());
    }

    #[test]
    fn short_input_is_a_typed_error_and_short_output_is_refused() {
        assert_eq!(
            GetVersion64::parse(&[0; 39]),
            Err(KdError::Truncated { need: 40, have: 39 })
        );
        assert_eq!(
            MemoryTransfer::parse(&[0; 3]),
            Err(KdError::Truncated { need: 16, have: 3 })
        );
        let d = DebugIo::print_string(0, b"hi");
        let mut buf = [0xEE; DEBUG_IO_LEN + 1];
        assert_eq!(
            d.emit(&mut buf),
            Err(KdError::Truncated { need: 18, have: 17 })
        );
        assert_eq!(buf, [0xEE; DEBUG_IO_LEN + 1], "nothing written");
        let mut buf = [0u8; 20];
        d.emit(&mut buf).unwrap();
        assert_eq!(&buf[..18], &d.to_bytes()[..]);
    }

    #[test]
    fn field_values_read_from_the_declared_offsets() {
        let m = Manipulate::request(
            &ManipulateApi::WriteBreakPoint {
                address: 0xFFFF_F800_0000_1234,
                handle: 7,
            },
            vec![],
        );
        let values: Vec<_> = ManipulateApi::union_fields(m.api_number())
            .iter()
            .map(|f| (f.name, f.value(m.union())))
            .collect();
        assert_eq!(
            values,
            [
                ("address", Some(0xFFFF_F800_0000_1234)),
                ("handle", Some(7))
            ]
        );
        let stream = ControlReport::FIELDS
            .iter()
            .find(|f| f.name == "instruction_stream")
            .unwrap();
        assert_eq!(stream.value(&[0; 48]), None, "wider than 8 bytes");
    }
}
