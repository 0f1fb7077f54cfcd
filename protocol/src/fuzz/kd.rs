//! KD generators: `Arbitrary` for the `DBGKD_*` structures, the manipulate union, every
//! payload type and whole packets.

use arbitrary::{Arbitrary, Result, Unstructured};

use super::{MAX_DATA, MAX_NAME, bytes, number, number32, text};
use crate::kd::payload::{
    AMD64_CONTEXT_LEN, CLOSE_FILE_API, CONTROL_REQUEST_LEN, CREATE_FILE_API, CommandString64,
    ControlReport, Exception64, FILE_IO_LEN, GET_STRING_API, LoadSymbols64, READ_FILE_API,
    STATE_COMMAND_STRING, STATE_EXCEPTION, STATE_LOAD_SYMBOLS, TRACE_IO_LEN, WRITE_FILE_API,
};
use crate::kd::{
    ApiNumber, ContextEx, ControlRequest, DebugIo, FileIo, GetVersion64, INITIAL_PACKET_ID,
    Manipulate, ManipulateApi, MemoryTransfer, PacketType, Payload, ReadWriteIo64, ReadWriteMsr,
    Repr, SYNC_PACKET_ID, StateChange, StateChangeKind, TraceIo, le, status,
};

/// Implements `Arbitrary` for a `DBGKD_*` structure field by field, each field from
/// [`number`] (biased to edge values) cut to its width.
macro_rules! arbitrary_layout {
    ($($name:ident { $($field:ident),* $(,)? })*) => {$(
        impl<'a> Arbitrary<'a> for $name {
            fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
                Ok($name { $( $field: Cut::cut(number(u)?), )* })
            }
        }
    )*};
}

/// A `u64` cut to a field's width.
trait Cut {
    fn cut(v: u64) -> Self;
}

macro_rules! cut_int {
    ($($t:ty),*) => {$(
        impl Cut for $t {
            fn cut(v: u64) -> $t {
                v as $t
            }
        }
    )*};
}
cut_int!(u8, u16, u32, u64);

arbitrary_layout! {
    MemoryTransfer { address, count, actual }
    ReadWriteIo64 { address, size, value }
    ReadWriteMsr { msr, low, high }
    ContextEx { offset, byte_count, bytes_copied }
    LoadSymbols64 {
        path_name_length, base_of_dll, process_id, checksum, size_of_image, unload_symbols,
    }
    CommandString64 { flags }
}

impl<'a> Arbitrary<'a> for GetVersion64 {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(GetVersion64 {
            major_version: u.arbitrary()?,
            minor_version: u.arbitrary()?,
            protocol_version: u.arbitrary()?,
            kd_secondary_version: u.arbitrary()?,
            flags: u.arbitrary()?,
            machine_type: *u.choose(&[0x8664, 0x14c, 0xaa64, 0])?,
            max_packet_type: u.arbitrary()?,
            max_state_change: u.arbitrary()?,
            max_manipulate: u.arbitrary()?,
            simulation: u.arbitrary()?,
            unused: u.arbitrary()?,
            kern_base: number(u)?,
            ps_loaded_module_list: number(u)?,
            debugger_data_list: number(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for Exception64 {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut information = [0u64; 15];
        for slot in &mut information {
            *slot = number(u)?;
        }
        Ok(Exception64 {
            code: *u.choose(&[0x8000_0003, 0x8000_0004, 0xc000_0005, 0xc000_001d, 0])?,
            flags: number32(u)?,
            record: number(u)?,
            address: number(u)?,
            number_parameters: u.int_in_range(0..=16)?,
            information,
            first_chance: u.arbitrary::<bool>()?.into(),
        })
    }
}

impl<'a> Arbitrary<'a> for ControlReport {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(ControlReport {
            dr6: number(u)?,
            dr7: number(u)?,
            eflags: number32(u)?,
            instruction_count: u.int_in_range(0..=16)?,
            report_flags: u.arbitrary()?,
            instruction_stream: u.arbitrary()?,
            seg_cs: u.arbitrary()?,
            seg_ds: u.arbitrary()?,
            seg_es: u.arbitrary()?,
            seg_fs: u.arbitrary()?,
        })
    }
}

/// One of `list`, or one time in four any value from [`number32`].
fn pick(u: &mut Unstructured<'_>, list: &[u32]) -> Result<u32> {
    if u.ratio(1u8, 4)? {
        number32(u)
    } else {
        u.choose(list).copied()
    }
}

/// API numbers without a typed variant: [`ManipulateApi::Unknown`] carries them.
fn untyped_api(u: &mut Unstructured<'_>) -> Result<ApiNumber> {
    let api = if u.arbitrary()? {
        *u.choose(ApiNumber::ALL)?
    } else {
        ApiNumber(number32(u)?)
    };
    Ok(if ManipulateApi::union_fields(api).is_empty() {
        api
    } else {
        ApiNumber::REBOOT
    })
}

/// Every manipulate API: each typed variant with its fields biased to edge values
/// ([`INTERESTING`](super::INTERESTING)), and every other API number (known or not) as
/// [`ManipulateApi::Unknown`] with arbitrary union bytes. What [`ManipulateApi::parse`]
/// reads back from the header is the value generated.
impl<'a> Arbitrary<'a> for ManipulateApi {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0u8..=20)? {
            0 => ManipulateApi::ReadVirtualMemory(u.arbitrary()?),
            1 => ManipulateApi::WriteVirtualMemory(u.arbitrary()?),
            2 => ManipulateApi::ReadControlSpace(u.arbitrary()?),
            3 => ManipulateApi::WriteControlSpace(u.arbitrary()?),
            4 => ManipulateApi::ReadPhysicalMemory(u.arbitrary()?),
            5 => ManipulateApi::WritePhysicalMemory(u.arbitrary()?),
            6 => ManipulateApi::GetVersion(u.arbitrary()?),
            7 => ManipulateApi::ReadIoSpace(u.arbitrary()?),
            8 => ManipulateApi::WriteIoSpace(u.arbitrary()?),
            9 => ManipulateApi::ReadMsr(u.arbitrary()?),
            10 => ManipulateApi::WriteMsr(u.arbitrary()?),
            11 => ManipulateApi::GetContextEx(u.arbitrary()?),
            12 => ManipulateApi::SetContextEx(u.arbitrary()?),
            13 => ManipulateApi::GetContext {
                unused: number32(u)?,
            },
            14 => ManipulateApi::SetContext {
                context_flags: number32(u)?,
            },
            15 => ManipulateApi::WriteBreakPoint {
                address: number(u)?,
                handle: number32(u)?,
            },
            16 => ManipulateApi::RestoreBreakPoint {
                handle: number32(u)?,
            },
            17 => ManipulateApi::Continue {
                status: pick(u, &[status::SUCCESS, 0x8001_0001, 0x1_0002])?,
            },
            18 => ManipulateApi::Continue2 {
                status: number32(u)?,
                trace_flag: u.int_in_range(0..=1)?,
                dr7: number(u)?,
                symbol_start: number(u)?,
                symbol_end: number(u)?,
            },
            19 => ManipulateApi::SearchMemory {
                address: number(u)?,
                length: number(u)?,
                pattern_length: number32(u)?,
            },
            _ => ManipulateApi::Unknown {
                api: untyped_api(u)?,
                union: u.arbitrary()?,
            },
        })
    }
}

/// Data of `len` bytes (capped at [`MAX_DATA`]).
fn data_of(u: &mut Unstructured<'_>, len: usize) -> Result<Vec<u8>> {
    let len = len.min(MAX_DATA);
    let mut d = u.bytes(len.min(u.len()))?.to_vec();
    d.resize(len, 0);
    Ok(d)
}

/// A `DBGKD_MANIPULATE_STATE64` as a debugger sends it (a request) or a target answers it
/// (a reply, echoing the request's header), with data that agrees with the API: a write
/// carries `count` bytes, a read's reply `actual` bytes, `SetContext` and a `GetContext`
/// reply a `CONTEXT`, a search its pattern; counts are capped at [`MAX_DATA`].
impl<'a> Arbitrary<'a> for Manipulate {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut api: ManipulateApi = u.arbitrary()?;
        let reply = u.arbitrary::<bool>()?;
        let cap = |v: u32| v % (MAX_DATA as u32 + 1);
        let data = match &mut api {
            ManipulateApi::WriteVirtualMemory(t)
            | ManipulateApi::WritePhysicalMemory(t)
            | ManipulateApi::WriteControlSpace(t) => {
                t.count = cap(t.count);
                if reply {
                    t.actual = t.count;
                }
                data_of(u, t.count as usize)?
            }
            ManipulateApi::ReadVirtualMemory(t)
            | ManipulateApi::ReadPhysicalMemory(t)
            | ManipulateApi::ReadControlSpace(t) => {
                t.count = cap(t.count);
                if reply {
                    t.actual = t.count.min(cap(t.actual));
                    data_of(u, t.actual as usize)?
                } else {
                    Vec::new()
                }
            }
            ManipulateApi::SetContext { .. } => data_of(u, AMD64_CONTEXT_LEN)?,
            ManipulateApi::GetContext { .. } if reply => data_of(u, AMD64_CONTEXT_LEN)?,
            ManipulateApi::GetContextEx(c) | ManipulateApi::SetContextEx(c) => {
                c.byte_count = cap(c.byte_count);
                c.bytes_copied = c.byte_count;
                data_of(u, c.byte_count as usize)?
            }
            ManipulateApi::SearchMemory { pattern_length, .. } => {
                *pattern_length = cap(*pattern_length);
                if reply {
                    Vec::new()
                } else {
                    data_of(u, *pattern_length as usize)?
                }
            }
            _ => Vec::new(),
        };
        let mut m = Manipulate::request(&api, data);
        m.set_processor(u.int_in_range(0..=3)?);
        if reply {
            let st = pick(u, &[status::SUCCESS, status::UNSUCCESSFUL, 0xC000_0005])?;
            m.set_return_status(st);
        }
        Ok(m)
    }
}

impl<'a> Arbitrary<'a> for StateChangeKind {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0u8..=3)? {
            0 | 1 => StateChangeKind::Exception(u.arbitrary()?),
            2 => StateChangeKind::LoadSymbols(u.arbitrary()?),
            _ if u.arbitrary()? => StateChangeKind::CommandString {
                flags: number32(u)?,
            },
            _ => {
                let v = number32(u)?;
                let known = [STATE_EXCEPTION, STATE_LOAD_SYMBOLS, STATE_COMMAND_STRING];
                StateChangeKind::Unknown(if known.contains(&(v & 0xffff)) {
                    v ^ 0x100
                } else {
                    v
                })
            }
        })
    }
}

/// A `DBGKD_ANY_WAIT_STATE_CHANGE`: an exception, a module load or unload (its path after
/// the header, `PathNameLength` counting the NUL), a command string (name and command)
/// or an unknown state, with a control report.
impl<'a> Arbitrary<'a> for StateChange {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut kind: StateChangeKind = u.arbitrary()?;
        let data = match &mut kind {
            StateChangeKind::LoadSymbols(l) => {
                let mut path = b"\\SystemRoot\\system32\\".to_vec();
                path.extend(text(u, super::NAME_CHARS, MAX_NAME)?);
                path.push(0);
                l.path_name_length = path.len() as u32;
                path
            }
            StateChangeKind::CommandString { .. } => {
                let mut d = text(u, super::NAME_CHARS, MAX_NAME)?;
                d.push(0);
                d.extend(text(
                    u,
                    b"!.r abcdefghijklmnopqrstuvwxyz0123456789",
                    MAX_NAME,
                )?);
                d.push(0);
                d
            }
            _ => Vec::new(),
        };
        let mut s = StateChange::new(
            &kind,
            u.int_in_range(0..=3)?,
            u.int_in_range(1..=64)?,
            number(u)?,
            number(u)?,
        );
        s.set_control_report(&u.arbitrary()?);
        s.set_data(data);
        Ok(s)
    }
}

/// A `DBGKD_DEBUG_IO`: `PrintString` with its text, or `GetString` with its prompt
/// (lengths agreeing with the data).
impl<'a> Arbitrary<'a> for DebugIo {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let text = bytes(u, MAX_DATA)?;
        let mut d = DebugIo::print_string(u.int_in_range(0..=3)?, &text);
        if u.arbitrary()? {
            d.set_api_number(GET_STRING_API);
            le::put_u32(d.head_mut(), 12, u.int_in_range(0..=MAX_DATA as u32)?);
        } else if u.ratio(1u8, 8)? {
            d.set_api_number(number32(u)?);
        }
        Ok(d)
    }
}

/// A `DBGKD_FILE_IO`: `CreateFile` with a UTF-16 name, `ReadFile`, `WriteFile` with its
/// data, `CloseFile`, with arbitrary handles, offsets and lengths in the rest of the
/// header.
impl<'a> Arbitrary<'a> for FileIo {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let api = pick(
            u,
            &[
                CREATE_FILE_API,
                READ_FILE_API,
                WRITE_FILE_API,
                CLOSE_FILE_API,
            ],
        )?;
        let mut head: [u8; FILE_IO_LEN] = u.arbitrary()?;
        le::put_u32(&mut head, 0, api);
        let data = match api {
            CREATE_FILE_API => {
                let mut name = b"\\??\\C:\\".to_vec();
                name.extend(text(u, super::NAME_CHARS, MAX_NAME)?);
                name.iter()
                    .flat_map(|&c| u16::from(c).to_le_bytes())
                    .chain([0, 0])
                    .collect()
            }
            WRITE_FILE_API => bytes(u, MAX_DATA)?,
            _ => Vec::new(),
        };
        let mut f = FileIo::from_parts(head, data);
        f.set_status(pick(u, &[status::PENDING, status::SUCCESS])?);
        Ok(f)
    }
}

/// A `DBGKD_TRACE_IO` (`PrintTrace`, `LengthOfData` agreeing with the data).
impl<'a> Arbitrary<'a> for TraceIo {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let data = bytes(u, MAX_DATA)?;
        let mut head: [u8; TRACE_IO_LEN] = u.arbitrary()?;
        le::put_u32(&mut head, 0, 0x3330);
        le::put_u32(&mut head, 8, data.len() as u32);
        Ok(TraceIo::from_parts(head, data))
    }
}

/// A `DBGKD_CONTROL_REQUEST` (request or release of a hardware breakpoint).
impl<'a> Arbitrary<'a> for ControlRequest {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut head: [u8; CONTROL_REQUEST_LEN] = u.arbitrary()?;
        le::put_u32(&mut head, 0, *u.choose(&[0x4300, 0x4301])?);
        Ok(ControlRequest::from_parts(head, Vec::new()))
    }
}

/// One of the typed payloads (never [`Payload::Other`]): what
/// [`Payload::parse`] reads back from [`Payload::to_bytes`] under
/// [`Payload::packet_type`] is the value generated.
impl<'a> Arbitrary<'a> for Payload {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0u8..=7)? {
            0..=2 => Payload::Manipulate(u.arbitrary()?),
            3 | 4 => Payload::StateChange(u.arbitrary()?),
            5 => Payload::DebugIo(u.arbitrary()?),
            6 => Payload::FileIo(u.arbitrary()?),
            _ if u.arbitrary()? => Payload::TraceIo(u.arbitrary()?),
            _ => Payload::ControlRequest(u.arbitrary()?),
        })
    }
}

/// A packet id: mostly in the KDCOM scheme (`0x80800000`, the sync bit, a small count),
/// sometimes any.
pub(crate) fn packet_id(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(if u.ratio(3u8, 4)? {
        let sync = if u.arbitrary()? { SYNC_PACKET_ID } else { 0 };
        INITIAL_PACKET_ID | sync | u32::from(u.int_in_range(0u8..=3)?)
    } else {
        number32(u)?
    })
}

/// A well-formed KD packet: mostly a data packet carrying an arbitrary [`Payload`] under
/// its packet type, else an ACK, RESEND or RESET control packet. Its payload never
/// exceeds [`PACKET_MAX_SIZE`](crate::kd::PACKET_MAX_SIZE), so
/// [`Repr::parse_bytes`] reads back the value generated and the KDCOM stream decoder
/// frames it.
impl<'a> Arbitrary<'a> for Repr {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let id = packet_id(u)?;
        if u.ratio(1u8, 5)? {
            let ty = *u.choose(&[
                PacketType::Acknowledge,
                PacketType::Resend,
                PacketType::Reset,
            ])?;
            return Ok(Repr::control(ty, id));
        }
        let payload: Payload = u.arbitrary()?;
        Ok(Repr::data(payload.packet_type(), id, payload.to_bytes()))
    }
}
