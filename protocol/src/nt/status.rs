//! NTSTATUS values a debugger meets: in KD replies, exception records and state changes.

/// `STATUS_SUCCESS`.
pub const SUCCESS: u32 = 0;
/// `STATUS_PENDING` (what debuggers put in KD requests).
pub const PENDING: u32 = 0x103;
/// `STATUS_BUFFER_OVERFLOW`.
pub const BUFFER_OVERFLOW: u32 = 0x8000_0005;
/// `STATUS_BREAKPOINT`.
pub const BREAKPOINT: u32 = 0x8000_0003;
/// `STATUS_SINGLE_STEP`.
pub const SINGLE_STEP: u32 = 0x8000_0004;
/// `STATUS_NO_MORE_ENTRIES`: what a KD `SearchMemory` that found nothing returns.
pub const NO_MORE_ENTRIES: u32 = 0x8000_001A;
/// `STATUS_UNSUCCESSFUL`.
pub const UNSUCCESSFUL: u32 = 0xC000_0001;
/// `STATUS_NOT_IMPLEMENTED`.
pub const NOT_IMPLEMENTED: u32 = 0xC000_0002;
/// `STATUS_NO_SUCH_FILE`.
pub const NO_SUCH_FILE: u32 = 0xC000_000F;
/// `DBG_CONTINUE`.
pub const DBG_CONTINUE: u32 = 0x0001_0002;
/// `DBG_EXCEPTION_HANDLED`.
pub const DBG_EXCEPTION_HANDLED: u32 = 0x0001_0001;
/// `DBG_EXCEPTION_NOT_HANDLED`.
pub const DBG_EXCEPTION_NOT_HANDLED: u32 = 0x8001_0001;
