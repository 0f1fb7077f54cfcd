//! The x64 `DBGKD_*` payloads carried in KD data packets.
//!
//! Every payload is a fixed-size "message header" followed by optional "message data".
//! Each type keeps its header as raw bytes and reads typed fields from it, so anything a
//! debugger fills with junk (requests carry `STATUS_PENDING`, stale processor levels,
//! unused union bytes) survives a parse/emit round trip byte for byte. Typed views
//! ([`ManipulateApi`], [`StateChangeKind`], [`GetVersion64`]) are read with `api()`/`kind()`
//! and written back with `set_api()`/`set_kind()`, which touch only the fields they own.

use nom::Parser;
use serde::Serialize;

use super::{KdError, PacketType, le, status};

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

/// Splits `bytes` into a fixed `N`-byte header and the rest (nom, complete input).
fn split_head<const N: usize>(bytes: &[u8]) -> Result<([u8; N], Vec<u8>), KdError> {
    let (rest, head) = nom::bytes::take::<usize, &[u8], nom::error::Error<&[u8]>>(N)
        .parse_complete(bytes)
        .map_err(|_| KdError::Truncated {
            need: N,
            have: bytes.len(),
        })?;
    let head: [u8; N] = head.try_into().map_err(|_| KdError::Truncated {
        need: N,
        have: bytes.len(),
    })?;
    Ok((head, rest.to_vec()))
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
                let (head, data) = split_head::<$len>(bytes)?;
                Ok($name { head, data })
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

            /// Writes header and data into `buf` (truncated if `buf` is short).
            pub fn emit(&self, buf: &mut [u8]) {
                le::put(buf, 0, &self.head);
                let n = buf.len().saturating_sub($len).min(self.data.len());
                if let (Some(d), Some(s)) = (buf.get_mut($len..$len + n), self.data.get(..n)) {
                    d.copy_from_slice(s);
                }
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
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

/// The transfer fields of memory and control-space requests (`DBGKD_READ_MEMORY64` and
/// `DBGKD_WRITE_MEMORY64` share this layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryTransfer {
    /// `TargetBaseAddress` (for control space: the selector).
    pub address: u64,
    /// `TransferCount`.
    pub count: u32,
    /// `ActualBytesRead`/`ActualBytesWritten` (in physical requests: the caching flag).
    pub actual: u32,
}

/// `DBGKD_GET_VERSION64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GetVersion64 {
    /// `MajorVersion` (low byte 0x0F free build; high byte the DBGKD_MAJOR type).
    pub major_version: u16,
    /// `MinorVersion` (the build number).
    pub minor_version: u16,
    /// `ProtocolVersion` (6 for 64-bit protocol version 2).
    pub protocol_version: u8,
    /// `KdSecondaryVersion` (2 on AMD64).
    pub kd_secondary_version: u8,
    /// `Flags` (MP 0x1, DATA 0x2, PTR64 0x4, …).
    pub flags: u16,
    /// `MachineType` (0x8664 for AMD64).
    pub machine_type: u16,
    /// `MaxPacketType`.
    pub max_packet_type: u8,
    /// `MaxStateChange`.
    pub max_state_change: u8,
    /// `MaxManipulate`.
    pub max_manipulate: u8,
    /// `Simulation`.
    pub simulation: u8,
    /// `Unused` (kept for round trips).
    pub unused: u16,
    /// `KernBase`.
    pub kern_base: u64,
    /// `PsLoadedModuleList`.
    pub ps_loaded_module_list: u64,
    /// `DebuggerDataList`.
    pub debugger_data_list: u64,
}

impl GetVersion64 {
    /// Reads the 40-byte structure (missing bytes read as zero).
    pub fn parse(b: &[u8]) -> GetVersion64 {
        GetVersion64 {
            major_version: le::u16_at(b, 0),
            minor_version: le::u16_at(b, 2),
            protocol_version: le::u8_at(b, 4),
            kd_secondary_version: le::u8_at(b, 5),
            flags: le::u16_at(b, 6),
            machine_type: le::u16_at(b, 8),
            max_packet_type: le::u8_at(b, 10),
            max_state_change: le::u8_at(b, 11),
            max_manipulate: le::u8_at(b, 12),
            simulation: le::u8_at(b, 13),
            unused: le::u16_at(b, 14),
            kern_base: le::u64_at(b, 16),
            ps_loaded_module_list: le::u64_at(b, 24),
            debugger_data_list: le::u64_at(b, 32),
        }
    }

    /// Writes the 40-byte structure at the start of `b`.
    pub fn emit(&self, b: &mut [u8]) {
        le::put_u16(b, 0, self.major_version);
        le::put_u16(b, 2, self.minor_version);
        le::put(b, 4, &[self.protocol_version, self.kd_secondary_version]);
        le::put_u16(b, 6, self.flags);
        le::put_u16(b, 8, self.machine_type);
        le::put(
            b,
            10,
            &[
                self.max_packet_type,
                self.max_state_change,
                self.max_manipulate,
                self.simulation,
            ],
        );
        le::put_u16(b, 14, self.unused);
        le::put_u64(b, 16, self.kern_base);
        le::put_u64(b, 24, self.ps_loaded_module_list);
        le::put_u64(b, 32, self.debugger_data_list);
    }
}

/// The typed union of a manipulate-state packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum ManipulateApi {
    /// 0x3130: read virtual memory.
    ReadVirtualMemory(MemoryTransfer),
    /// 0x3131: write virtual memory (bytes follow the request).
    WriteVirtualMemory(MemoryTransfer),
    /// 0x3132: get the CONTEXT (reply carries it).
    GetContext {
        /// `Unused` (junk in requests).
        unused: u32,
    },
    /// 0x3133: set the CONTEXT (it follows the request).
    SetContext {
        /// `ContextFlags`.
        context_flags: u32,
    },
    /// 0x3134: write a software breakpoint.
    WriteBreakPoint {
        /// `BreakPointAddress`.
        address: u64,
        /// `BreakPointHandle` (output).
        handle: u32,
    },
    /// 0x3135: remove a breakpoint.
    RestoreBreakPoint {
        /// `BreakPointHandle`.
        handle: u32,
    },
    /// 0x3136: resume.
    Continue {
        /// `ContinueStatus`.
        status: u32,
    },
    /// 0x3137: read control space (address = selector).
    ReadControlSpace(MemoryTransfer),
    /// 0x3138: write control space.
    WriteControlSpace(MemoryTransfer),
    /// 0x3139: read I/O space.
    ReadIoSpace {
        /// `IoAddress`.
        address: u64,
        /// `DataSize`.
        size: u32,
        /// `DataValue`.
        value: u32,
    },
    /// 0x313A: write I/O space.
    WriteIoSpace {
        /// `IoAddress`.
        address: u64,
        /// `DataSize`.
        size: u32,
        /// `DataValue`.
        value: u32,
    },
    /// 0x313C: resume with the AMD64 control set.
    Continue2 {
        /// `ContinueStatus`.
        status: u32,
        /// `TraceFlag`.
        trace_flag: u32,
        /// `Dr7`.
        dr7: u64,
        /// `CurrentSymbolStart`.
        symbol_start: u64,
        /// `CurrentSymbolEnd`.
        symbol_end: u64,
    },
    /// 0x313D: read physical memory.
    ReadPhysicalMemory(MemoryTransfer),
    /// 0x313E: write physical memory.
    WritePhysicalMemory(MemoryTransfer),
    /// 0x3146: get version.
    GetVersion(GetVersion64),
    /// 0x3152: read an MSR.
    ReadMsr {
        /// `Msr`.
        msr: u32,
        /// `DataValueLow`.
        low: u32,
        /// `DataValueHigh`.
        high: u32,
    },
    /// 0x3153: write an MSR.
    WriteMsr {
        /// `Msr`.
        msr: u32,
        /// `DataValueLow`.
        low: u32,
        /// `DataValueHigh`.
        high: u32,
    },
    /// 0x3156: search memory (pattern follows; reply's address is the hit).
    SearchMemory {
        /// `SearchAddress` / `FoundAddress`.
        address: u64,
        /// `SearchLength`.
        length: u64,
        /// `PatternLength`.
        pattern_length: u32,
    },
    /// 0x315F: get part of the CONTEXT.
    GetContextEx {
        /// `Offset`.
        offset: u32,
        /// `ByteCount`.
        byte_count: u32,
        /// `BytesCopied`.
        bytes_copied: u32,
    },
    /// 0x3160: set part of the CONTEXT.
    SetContextEx {
        /// `Offset`.
        offset: u32,
        /// `ByteCount`.
        byte_count: u32,
        /// `BytesCopied`.
        bytes_copied: u32,
    },
    /// Any other API number (known or not), with the raw 40-byte union.
    Unknown {
        /// The API number.
        api: ApiNumber,
        /// The union bytes (offsets 16..56 of the header).
        #[serde(skip)]
        union: [u8; 40],
    },
}

fn transfer(h: &[u8]) -> MemoryTransfer {
    MemoryTransfer {
        address: le::u64_at(h, 16),
        count: le::u32_at(h, 24),
        actual: le::u32_at(h, 28),
    }
}

fn put_transfer(h: &mut [u8], t: &MemoryTransfer) {
    le::put_u64(h, 16, t.address);
    le::put_u32(h, 24, t.count);
    le::put_u32(h, 28, t.actual);
}

impl ManipulateApi {
    /// The API number of this variant.
    pub fn number(&self) -> ApiNumber {
        use ManipulateApi as M;
        match self {
            M::ReadVirtualMemory(_) => ApiNumber::READ_VIRTUAL_MEMORY,
            M::WriteVirtualMemory(_) => ApiNumber::WRITE_VIRTUAL_MEMORY,
            M::GetContext { .. } => ApiNumber::GET_CONTEXT,
            M::SetContext { .. } => ApiNumber::SET_CONTEXT,
            M::WriteBreakPoint { .. } => ApiNumber::WRITE_BREAKPOINT,
            M::RestoreBreakPoint { .. } => ApiNumber::RESTORE_BREAKPOINT,
            M::Continue { .. } => ApiNumber::CONTINUE,
            M::ReadControlSpace(_) => ApiNumber::READ_CONTROL_SPACE,
            M::WriteControlSpace(_) => ApiNumber::WRITE_CONTROL_SPACE,
            M::ReadIoSpace { .. } => ApiNumber::READ_IO_SPACE,
            M::WriteIoSpace { .. } => ApiNumber::WRITE_IO_SPACE,
            M::Continue2 { .. } => ApiNumber::CONTINUE2,
            M::ReadPhysicalMemory(_) => ApiNumber::READ_PHYSICAL_MEMORY,
            M::WritePhysicalMemory(_) => ApiNumber::WRITE_PHYSICAL_MEMORY,
            M::GetVersion(_) => ApiNumber::GET_VERSION,
            M::ReadMsr { .. } => ApiNumber::READ_MSR,
            M::WriteMsr { .. } => ApiNumber::WRITE_MSR,
            M::SearchMemory { .. } => ApiNumber::SEARCH_MEMORY,
            M::GetContextEx { .. } => ApiNumber::GET_CONTEXT_EX,
            M::SetContextEx { .. } => ApiNumber::SET_CONTEXT_EX,
            M::Unknown { api, .. } => *api,
        }
    }

    /// Reads the typed union from a 56-byte manipulate header.
    pub fn parse(h: &[u8; MANIPULATE_LEN]) -> ManipulateApi {
        use ManipulateApi as M;
        let api = ApiNumber(le::u32_at(h, 0));
        let u32_at = |off| le::u32_at(h, off);
        let u64_at = |off| le::u64_at(h, off);
        match api {
            ApiNumber::READ_VIRTUAL_MEMORY => M::ReadVirtualMemory(transfer(h)),
            ApiNumber::WRITE_VIRTUAL_MEMORY => M::WriteVirtualMemory(transfer(h)),
            ApiNumber::GET_CONTEXT => M::GetContext { unused: u32_at(16) },
            ApiNumber::SET_CONTEXT => M::SetContext {
                context_flags: u32_at(16),
            },
            ApiNumber::WRITE_BREAKPOINT => M::WriteBreakPoint {
                address: u64_at(16),
                handle: u32_at(24),
            },
            ApiNumber::RESTORE_BREAKPOINT => M::RestoreBreakPoint { handle: u32_at(16) },
            ApiNumber::CONTINUE => M::Continue { status: u32_at(16) },
            ApiNumber::READ_CONTROL_SPACE => M::ReadControlSpace(transfer(h)),
            ApiNumber::WRITE_CONTROL_SPACE => M::WriteControlSpace(transfer(h)),
            ApiNumber::READ_IO_SPACE => M::ReadIoSpace {
                address: u64_at(16),
                size: u32_at(24),
                value: u32_at(28),
            },
            ApiNumber::WRITE_IO_SPACE => M::WriteIoSpace {
                address: u64_at(16),
                size: u32_at(24),
                value: u32_at(28),
            },
            ApiNumber::CONTINUE2 => M::Continue2 {
                status: u32_at(16),
                trace_flag: u32_at(20),
                dr7: u64_at(24),
                symbol_start: u64_at(32),
                symbol_end: u64_at(40),
            },
            ApiNumber::READ_PHYSICAL_MEMORY => M::ReadPhysicalMemory(transfer(h)),
            ApiNumber::WRITE_PHYSICAL_MEMORY => M::WritePhysicalMemory(transfer(h)),
            ApiNumber::GET_VERSION => {
                M::GetVersion(GetVersion64::parse(h.get(16..).unwrap_or(&[])))
            }
            ApiNumber::READ_MSR => M::ReadMsr {
                msr: u32_at(16),
                low: u32_at(20),
                high: u32_at(24),
            },
            ApiNumber::WRITE_MSR => M::WriteMsr {
                msr: u32_at(16),
                low: u32_at(20),
                high: u32_at(24),
            },
            ApiNumber::SEARCH_MEMORY => M::SearchMemory {
                address: u64_at(16),
                length: u64_at(24),
                pattern_length: u32_at(32),
            },
            ApiNumber::GET_CONTEXT_EX => M::GetContextEx {
                offset: u32_at(16),
                byte_count: u32_at(20),
                bytes_copied: u32_at(24),
            },
            ApiNumber::SET_CONTEXT_EX => M::SetContextEx {
                offset: u32_at(16),
                byte_count: u32_at(20),
                bytes_copied: u32_at(24),
            },
            _ => {
                let mut union = [0u8; 40];
                if let Some(src) = h.get(16..56) {
                    union.copy_from_slice(src);
                }
                M::Unknown { api, union }
            }
        }
    }

    /// Writes the API number and this variant's union fields into a 56-byte header; bytes
    /// the variant does not own are left as they are.
    pub fn emit(&self, h: &mut [u8; MANIPULATE_LEN]) {
        use ManipulateApi as M;
        le::put_u32(h, 0, self.number().0);
        match self {
            M::ReadVirtualMemory(t)
            | M::WriteVirtualMemory(t)
            | M::ReadControlSpace(t)
            | M::WriteControlSpace(t)
            | M::ReadPhysicalMemory(t)
            | M::WritePhysicalMemory(t) => put_transfer(h, t),
            M::GetContext { unused } => le::put_u32(h, 16, *unused),
            M::SetContext { context_flags } => le::put_u32(h, 16, *context_flags),
            M::WriteBreakPoint { address, handle } => {
                le::put_u64(h, 16, *address);
                le::put_u32(h, 24, *handle);
            }
            M::RestoreBreakPoint { handle } => le::put_u32(h, 16, *handle),
            M::Continue { status } => le::put_u32(h, 16, *status),
            M::ReadIoSpace {
                address,
                size,
                value,
            }
            | M::WriteIoSpace {
                address,
                size,
                value,
            } => {
                le::put_u64(h, 16, *address);
                le::put_u32(h, 24, *size);
                le::put_u32(h, 28, *value);
            }
            M::Continue2 {
                status,
                trace_flag,
                dr7,
                symbol_start,
                symbol_end,
            } => {
                le::put_u32(h, 16, *status);
                le::put_u32(h, 20, *trace_flag);
                le::put_u64(h, 24, *dr7);
                le::put_u64(h, 32, *symbol_start);
                le::put_u64(h, 40, *symbol_end);
            }
            M::GetVersion(v) => {
                if let Some(dst) = h.get_mut(16..56) {
                    v.emit(dst);
                }
            }
            M::ReadMsr { msr, low, high } | M::WriteMsr { msr, low, high } => {
                le::put_u32(h, 16, *msr);
                le::put_u32(h, 20, *low);
                le::put_u32(h, 24, *high);
            }
            M::SearchMemory {
                address,
                length,
                pattern_length,
            } => {
                le::put_u64(h, 16, *address);
                le::put_u64(h, 24, *length);
                le::put_u32(h, 32, *pattern_length);
            }
            M::GetContextEx {
                offset,
                byte_count,
                bytes_copied,
            }
            | M::SetContextEx {
                offset,
                byte_count,
                bytes_copied,
            } => {
                le::put_u32(h, 16, *offset);
                le::put_u32(h, 20, *byte_count);
                le::put_u32(h, 24, *bytes_copied);
            }
            M::Unknown { union, .. } => le::put(h, 16, union),
        }
    }
}

block! {
    /// `DBGKD_MANIPULATE_STATE64` (packet type 2): 56-byte header + data.
    Manipulate, MANIPULATE_LEN
}

impl Manipulate {
    /// A request as a debugger sends it: `ReturnStatus` = `STATUS_PENDING`.
    pub fn request(api: &ManipulateApi, data: Vec<u8>) -> Manipulate {
        let mut head = [0u8; MANIPULATE_LEN];
        api.emit(&mut head);
        le::put_u32(&mut head, 8, status::PENDING);
        Manipulate { head, data }
    }

    /// The reply convention: echo this request's header, set `ReturnStatus`, the typed
    /// output fields and the data.
    pub fn reply(&self, return_status: u32, api: &ManipulateApi, data: Vec<u8>) -> Manipulate {
        let mut head = self.head;
        api.emit(&mut head);
        le::put_u32(&mut head, 8, return_status);
        Manipulate { head, data }
    }

    /// `ApiNumber`.
    pub fn api_number(&self) -> ApiNumber {
        ApiNumber(le::u32_at(&self.head, 0))
    }
    /// `ProcessorLevel`.
    pub fn processor_level(&self) -> u16 {
        le::u16_at(&self.head, 4)
    }
    /// `Processor`.
    pub fn processor(&self) -> u16 {
        le::u16_at(&self.head, 6)
    }
    /// Sets `Processor`.
    pub fn set_processor(&mut self, p: u16) {
        le::put_u16(&mut self.head, 6, p);
    }
    /// `ReturnStatus`.
    pub fn return_status(&self) -> u32 {
        le::u32_at(&self.head, 8)
    }
    /// Sets `ReturnStatus`.
    pub fn set_return_status(&mut self, s: u32) {
        le::put_u32(&mut self.head, 8, s);
    }
    /// The typed union.
    pub fn api(&self) -> ManipulateApi {
        ManipulateApi::parse(&self.head)
    }
    /// Writes a typed union (and its API number) into the header.
    pub fn set_api(&mut self, api: &ManipulateApi) {
        api.emit(&mut self.head);
    }
}

/// `DBGKM_EXCEPTION64` inside an exception state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Exception64 {
    /// `ExceptionCode`.
    pub code: u32,
    /// `ExceptionFlags`.
    pub flags: u32,
    /// `ExceptionRecord` (chained record pointer).
    pub record: u64,
    /// `ExceptionAddress`.
    pub address: u64,
    /// `NumberParameters`.
    pub number_parameters: u32,
    /// `ExceptionInformation[15]`.
    pub information: [u64; 15],
    /// `FirstChance`.
    pub first_chance: u32,
}

/// `DBGKD_LOAD_SYMBOLS64` inside a load-symbols state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LoadSymbols64 {
    /// `PathNameLength` (including the NUL).
    pub path_name_length: u32,
    /// `BaseOfDll`.
    pub base_of_dll: u64,
    /// `ProcessId`.
    pub process_id: u64,
    /// `CheckSum`.
    pub checksum: u32,
    /// `SizeOfImage`.
    pub size_of_image: u32,
    /// `UnloadSymbols` (non-zero: the module was unloaded).
    pub unload_symbols: u8,
}

/// The AMD64 control report at the end of a state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ControlReport {
    /// `Dr6`.
    pub dr6: u64,
    /// `Dr7`.
    pub dr7: u64,
    /// `EFlags`.
    pub eflags: u32,
    /// `InstructionCount` (valid bytes of the instruction stream).
    pub instruction_count: u16,
    /// `ReportFlags`.
    pub report_flags: u16,
    /// `InstructionStream[16]` (code bytes at the program counter).
    pub instruction_stream: [u8; 16],
    /// `SegCs`.
    pub seg_cs: u16,
    /// `SegDs`.
    pub seg_ds: u16,
    /// `SegEs`.
    pub seg_es: u16,
    /// `SegFs`.
    pub seg_fs: u16,
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

impl StateChange {
    /// A state change with the common fields set; the union and control report are zero.
    pub fn new(
        kind: &StateChangeKind,
        processor: u16,
        number_processors: u32,
        thread: u64,
        program_counter: u64,
    ) -> StateChange {
        let mut s = StateChange {
            head: [0u8; STATE_CHANGE_LEN],
            data: Vec::new(),
        };
        le::put_u16(&mut s.head, 6, processor);
        le::put_u32(&mut s.head, 8, number_processors);
        le::put_u64(&mut s.head, 16, thread);
        le::put_u64(&mut s.head, 24, program_counter);
        s.set_kind(kind);
        s
    }

    /// `NewState`.
    pub fn new_state(&self) -> u32 {
        le::u32_at(&self.head, 0)
    }
    /// `ProcessorLevel`.
    pub fn processor_level(&self) -> u16 {
        le::u16_at(&self.head, 4)
    }
    /// Sets `ProcessorLevel`.
    pub fn set_processor_level(&mut self, v: u16) {
        le::put_u16(&mut self.head, 4, v);
    }
    /// `Processor`.
    pub fn processor(&self) -> u16 {
        le::u16_at(&self.head, 6)
    }
    /// `NumberProcessors`.
    pub fn number_processors(&self) -> u32 {
        le::u32_at(&self.head, 8)
    }
    /// `Thread`.
    pub fn thread(&self) -> u64 {
        le::u64_at(&self.head, 16)
    }
    /// `ProgramCounter`.
    pub fn program_counter(&self) -> u64 {
        le::u64_at(&self.head, 24)
    }

    /// The typed union.
    pub fn kind(&self) -> StateChangeKind {
        let h = &self.head;
        match self.new_state() & 0xFFFF {
            STATE_EXCEPTION => {
                let mut information = [0u64; 15];
                for (i, slot) in information.iter_mut().enumerate() {
                    *slot = le::u64_at(h, 64 + 8 * i);
                }
                StateChangeKind::Exception(Exception64 {
                    code: le::u32_at(h, 32),
                    flags: le::u32_at(h, 36),
                    record: le::u64_at(h, 40),
                    address: le::u64_at(h, 48),
                    number_parameters: le::u32_at(h, 56),
                    information,
                    first_chance: le::u32_at(h, 184),
                })
            }
            STATE_LOAD_SYMBOLS => StateChangeKind::LoadSymbols(LoadSymbols64 {
                path_name_length: le::u32_at(h, 32),
                base_of_dll: le::u64_at(h, 40),
                process_id: le::u64_at(h, 48),
                checksum: le::u32_at(h, 56),
                size_of_image: le::u32_at(h, 60),
                unload_symbols: le::u8_at(h, 64),
            }),
            STATE_COMMAND_STRING => StateChangeKind::CommandString {
                flags: le::u32_at(h, 32),
            },
            _ => StateChangeKind::Unknown(self.new_state()),
        }
    }

    /// Writes `NewState` and the union fields of `kind`.
    pub fn set_kind(&mut self, kind: &StateChangeKind) {
        // Keep the high half of NewState (0x10000 marks an alternate source).
        let high = self.new_state() & 0xFFFF_0000;
        let h = &mut self.head;
        match kind {
            StateChangeKind::Exception(e) => {
                le::put_u32(h, 0, high | STATE_EXCEPTION);
                le::put_u32(h, 32, e.code);
                le::put_u32(h, 36, e.flags);
                le::put_u64(h, 40, e.record);
                le::put_u64(h, 48, e.address);
                le::put_u32(h, 56, e.number_parameters);
                for (i, v) in e.information.iter().enumerate() {
                    le::put_u64(h, 64 + 8 * i, *v);
                }
                le::put_u32(h, 184, e.first_chance);
            }
            StateChangeKind::LoadSymbols(l) => {
                le::put_u32(h, 0, high | STATE_LOAD_SYMBOLS);
                le::put_u32(h, 32, l.path_name_length);
                le::put_u64(h, 40, l.base_of_dll);
                le::put_u64(h, 48, l.process_id);
                le::put_u32(h, 56, l.checksum);
                le::put_u32(h, 60, l.size_of_image);
                le::put(h, 64, &[l.unload_symbols]);
            }
            StateChangeKind::CommandString { flags } => {
                le::put_u32(h, 0, high | STATE_COMMAND_STRING);
                le::put_u32(h, 32, *flags);
            }
            StateChangeKind::Unknown(v) => le::put_u32(h, 0, *v),
        }
    }

    /// The AMD64 control report.
    pub fn control_report(&self) -> ControlReport {
        let h = &self.head;
        let mut instruction_stream = [0u8; 16];
        if let Some(src) = h.get(216..232) {
            instruction_stream.copy_from_slice(src);
        }
        ControlReport {
            dr6: le::u64_at(h, 192),
            dr7: le::u64_at(h, 200),
            eflags: le::u32_at(h, 208),
            instruction_count: le::u16_at(h, 212),
            report_flags: le::u16_at(h, 214),
            instruction_stream,
            seg_cs: le::u16_at(h, 232),
            seg_ds: le::u16_at(h, 234),
            seg_es: le::u16_at(h, 236),
            seg_fs: le::u16_at(h, 238),
        }
    }

    /// Writes the AMD64 control report.
    pub fn set_control_report(&mut self, r: &ControlReport) {
        let h = &mut self.head;
        le::put_u64(h, 192, r.dr6);
        le::put_u64(h, 200, r.dr7);
        le::put_u32(h, 208, r.eflags);
        le::put_u16(h, 212, r.instruction_count);
        le::put_u16(h, 214, r.report_flags);
        le::put(h, 216, &r.instruction_stream);
        le::put_u16(h, 232, r.seg_cs);
        le::put_u16(h, 234, r.seg_ds);
        le::put_u16(h, 236, r.seg_es);
        le::put_u16(h, 238, r.seg_fs);
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

impl DebugIo {
    /// A `PrintString` packet carrying `text`.
    pub fn print_string(processor: u16, text: &[u8]) -> DebugIo {
        let mut head = [0u8; DEBUG_IO_LEN];
        le::put_u32(&mut head, 0, PRINT_STRING_API);
        le::put_u16(&mut head, 6, processor);
        le::put_u32(&mut head, 8, u32::try_from(text.len()).unwrap_or(u32::MAX));
        DebugIo {
            head,
            data: text.to_vec(),
        }
    }
    /// `ApiNumber` (0x3230 PrintString, 0x3231 GetString).
    pub fn api_number(&self) -> u32 {
        le::u32_at(&self.head, 0)
    }
    /// `ProcessorLevel`.
    pub fn processor_level(&self) -> u16 {
        le::u16_at(&self.head, 4)
    }
    /// `Processor`.
    pub fn processor(&self) -> u16 {
        le::u16_at(&self.head, 6)
    }
    /// `LengthOfString` (PrintString) or `LengthOfPromptString` (GetString).
    pub fn length(&self) -> u32 {
        le::u32_at(&self.head, 8)
    }
    /// `LengthOfStringRead` (GetString).
    pub fn length_read(&self) -> u32 {
        le::u32_at(&self.head, 12)
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

impl FileIo {
    /// `ApiNumber` (0x3430 Create, 0x3431 Read, 0x3432 Write, 0x3433 Close).
    pub fn api_number(&self) -> u32 {
        le::u32_at(&self.head, 0)
    }
    /// `Status`.
    pub fn status(&self) -> u32 {
        le::u32_at(&self.head, 4)
    }
    /// Sets `Status`.
    pub fn set_status(&mut self, s: u32) {
        le::put_u32(&mut self.head, 4, s);
    }
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
            .map(|c| {
                u16::from_le_bytes([
                    c.first().copied().unwrap_or(0),
                    c.get(1).copied().unwrap_or(0),
                ])
            })
            .take_while(|&u| u != 0)
            .collect();
        String::from_utf16_lossy(&units)
    }
}

block! {
    /// `DBGKD_TRACE_IO` (packet type 9): 64-byte header + trace data.
    TraceIo, TRACE_IO_LEN
}

impl TraceIo {
    /// `ApiNumber` (0x3330 PrintTrace).
    pub fn api_number(&self) -> u32 {
        le::u32_at(&self.head, 0)
    }
    /// `LengthOfData`.
    pub fn length_of_data(&self) -> u32 {
        le::u32_at(&self.head, 8)
    }
}

block! {
    /// `DBGKD_CONTROL_REQUEST` (packet type 10): 64-byte header.
    ControlRequest, CONTROL_REQUEST_LEN
}

impl ControlRequest {
    /// `ApiNumber` (0x4300 RequestHardwareBp, 0x4301 ReleaseHardwareBp).
    pub fn api_number(&self) -> u32 {
        le::u32_at(&self.head, 0)
    }
    /// `ReturnStatus`.
    pub fn return_status(&self) -> u32 {
        le::u32_at(&self.head, 4)
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
