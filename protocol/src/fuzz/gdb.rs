//! GDB generators: commands (owned, as their payload) and replies (with the kind they
//! answer).

use arbitrary::{Arbitrary, Result, Unstructured};

use super::{MAX_DATA, MAX_ITEMS, MAX_NAME, NAME_CHARS, bytes, number, number32, text};
use crate::gdb::command::host_io;
use crate::gdb::{
    Breakpoint, BreakpointType, Command, Expedited, Feature, FeatureValue, Features, HexBytes,
    HostIo, HostIoReply, Reply, ReplyKind, ResumeAction, ResumeActions, ResumeKind, StopKind,
    StopReply, ThreadId, ThreadOp, ThreadSel, XferObject, frame,
};

/// An arbitrary, well-formed GDB command, owned: its packet payload.
///
/// [`Command`] borrows from the packet it was parsed from, so the generator builds a
/// typed command over its own buffers, encodes it, and keeps the payload;
/// [`command`](Self::command) parses it back (for every generated value, the command it
/// was built as: never [`Command::Malformed`]). Every command this crate models is
/// generated (memory, registers, breakpoints, `vCont`, `qXfer` reads, `qSearch`, `qCRC`,
/// `qRcmd`, every host I/O request, the connect sequence, `QTagsplit.RunLimit`), plus a
/// few real gdb packets it does not model (which parse as [`Command::Unknown`]). Sizes are
/// capped (see the [module docs](super)).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GdbCommand {
    payload: Vec<u8>,
}

/// Real gdb 13 packets this crate does not model: a stub answers them "unsupported".
const UNMODELED: &[&[u8]] = &[
    b"qOffsets",
    b"qSymbol::",
    b"QNonStop:0",
    b"qL1160000000000000000",
    b"vFile:mkdir:2f746d70,1ff",
    b"QThreadEvents:1",
    b"qGetTLSAddr:1,0,1000",
    b"QPassSignals:e;10;14",
    b"qMemTags:1000,10:1",
    b"vRun;2f62696e2f7368",
];

/// How many kinds of command [`GdbCommand`] chooses among.
const COMMAND_KINDS: u8 = 41;

impl GdbCommand {
    /// The command, parsed from the payload.
    pub fn command(&self) -> Command<'_> {
        Command::parse(&self.payload)
    }

    /// The packet payload (unescaped).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The whole `$payload#cs` frame, escaped, run-length encoded with `rle`.
    pub fn frame(&self, rle: bool) -> Vec<u8> {
        frame::encode_packet(&self.payload, rle)
    }
}

impl<'a> Arbitrary<'a> for GdbCommand {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut payload = Vec::new();
        let kind = u.int_in_range(0..=COMMAND_KINDS - 1)?;
        if kind == 0 {
            payload.extend_from_slice(u.choose(UNMODELED)?);
            return Ok(GdbCommand { payload });
        }
        // Drawn only by the commands that carry data, so the others cost a few bytes.
        let data;
        let features;
        let annex;
        let name;
        let actions;
        let command = match kind {
            1 => {
                let list = feature_list(u, false)?;
                let mut text = Vec::new();
                Feature::encode_list_into(&list, &mut text);
                features = text;
                Command::QSupported(Features::new(&features))
            }
            2 => Command::MustReplyEmpty,
            3 => Command::StartNoAckMode,
            4 => Command::SetThread(
                if u.arbitrary()? {
                    ThreadOp::General
                } else {
                    ThreadOp::Continue
                },
                thread_sel(u)?,
            ),
            5 => {
                let object = match u.int_in_range(0u8..=4)? {
                    0 => XferObject::Features,
                    1 => XferObject::Libraries,
                    2 => XferObject::MemoryMap,
                    3 => XferObject::Other(b"exec-file"),
                    _ => XferObject::Other(b"threads"),
                };
                annex = match u.int_in_range(0u8..=3)? {
                    0 => b"target.xml".to_vec(),
                    1 => Vec::new(),
                    2 => b"64bit-core.xml".to_vec(),
                    _ => text(u, NAME_CHARS, MAX_NAME)?,
                };
                Command::XferRead {
                    object,
                    annex: &annex,
                    offset: number(u)?,
                    length: number(u)?,
                }
            }
            6 => Command::TraceStatus,
            7 => Command::HaltReason,
            8 => Command::ThreadInfoFirst,
            9 => Command::ThreadInfoNext,
            10 => Command::CurrentThread,
            11 => Command::Attached(u.arbitrary::<bool>()?.then(|| number(u)).transpose()?),
            12 => Command::ReadRegisters,
            13 => {
                data = bytes(u, MAX_DATA)?;
                Command::WriteRegisters(HexBytes::raw(&data))
            }
            14 => Command::ReadRegister(register(u)?),
            15 => {
                data = bytes(u, MAX_DATA)?;
                Command::WriteRegister {
                    reg: register(u)?,
                    value: HexBytes::raw(&data),
                }
            }
            16 => Command::ReadMemory {
                addr: number(u)?,
                len: number(u)?,
            },
            17 => Command::ReadMemoryBinary {
                addr: number(u)?,
                len: number(u)?,
            },
            18 => {
                data = bytes(u, MAX_DATA)?;
                Command::WriteMemory {
                    addr: number(u)?,
                    data: HexBytes::raw(&data),
                }
            }
            19 => {
                data = bytes(u, MAX_DATA)?;
                Command::WriteMemoryBinary {
                    addr: number(u)?,
                    data: &data,
                }
            }
            20 => {
                data = bytes(u, MAX_DATA)?;
                Command::SearchMemory {
                    addr: number(u)?,
                    len: number(u)?,
                    pattern: &data,
                }
            }
            21 => Command::Crc {
                addr: number(u)?,
                len: number(u)?,
            },
            22 => {
                data = bytes(u, MAX_DATA)?;
                Command::Monitor(HexBytes::raw(&data))
            }
            23 => Command::InsertBreakpoint(breakpoint(u)?),
            24 => Command::RemoveBreakpoint(breakpoint(u)?),
            25 => Command::VContQuery,
            26 => {
                let n = u.int_in_range(0..=MAX_ITEMS)?;
                actions = (0..n)
                    .map(|_| resume_action(u))
                    .collect::<Result<Vec<_>>>()?;
                Command::VCont(ResumeActions::list(&actions))
            }
            27 => Command::Continue(opt_number(u)?),
            28 => Command::Step(opt_number(u)?),
            29 => Command::Detach(opt_number(u)?),
            30 => Command::Kill,
            31 => Command::VKill(opt_number(u)?),
            32 => Command::RunLimit(number(u)?),
            33 => Command::HostIo(HostIo::Setfs(number(u)?)),
            34 => {
                name = path(u)?;
                let flags = *u.choose(&[
                    host_io::O_RDONLY,
                    host_io::O_WRONLY,
                    host_io::O_RDWR,
                    host_io::O_CREAT | host_io::O_TRUNC | host_io::O_WRONLY,
                    host_io::O_APPEND | host_io::O_EXCL,
                ])?;
                Command::HostIo(HostIo::Open {
                    name: HexBytes::raw(&name),
                    flags,
                    mode: number(u)?,
                })
            }
            35 => Command::HostIo(HostIo::Close(number(u)?)),
            36 => Command::HostIo(HostIo::Pread {
                fd: number(u)?,
                count: number(u)?,
                offset: number(u)?,
            }),
            37 => {
                data = bytes(u, MAX_DATA)?;
                Command::HostIo(HostIo::Pwrite {
                    fd: number(u)?,
                    offset: number(u)?,
                    data: &data,
                })
            }
            38 => Command::HostIo(HostIo::Fstat(number(u)?)),
            39 => {
                name = path(u)?;
                Command::HostIo(HostIo::Unlink(HexBytes::raw(&name)))
            }
            _ => {
                name = path(u)?;
                Command::HostIo(HostIo::Readlink(HexBytes::raw(&name)))
            }
        };
        command.encode_into(&mut payload);
        Ok(GdbCommand { payload })
    }
}

/// A register number: mostly gdb's x86-64 ones (0 to 0x39), sometimes any.
fn register(u: &mut Unstructured<'_>) -> Result<u32> {
    if u.ratio(7u8, 8)? {
        u.int_in_range(0..=0x39)
    } else {
        number32(u)
    }
}

fn opt_number(u: &mut Unstructured<'_>) -> Result<Option<u64>> {
    u.arbitrary::<bool>()?.then(|| number(u)).transpose()
}

/// A file name: a path under `/`, never empty.
fn path(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let mut p = b"/".to_vec();
    p.extend(text(
        u,
        b"abcdefghijklmnopqrstuvwxyz0123456789./_-",
        MAX_NAME,
    )?);
    Ok(p)
}

/// A thread id as the protocol writes it: `-1`, `0` or a positive number (never
/// `Id(0)`, which the protocol writes as `0`, "any").
fn thread_id(u: &mut Unstructured<'_>) -> Result<ThreadId> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => ThreadId::All,
        1 => ThreadId::Any,
        _ => ThreadId::Id(number(u)?.max(1)),
    })
}

fn thread_sel(u: &mut Unstructured<'_>) -> Result<ThreadSel> {
    Ok(ThreadSel {
        process: u.arbitrary::<bool>()?.then(|| thread_id(u)).transpose()?,
        thread: thread_id(u)?,
    })
}

fn breakpoint(u: &mut Unstructured<'_>) -> Result<Breakpoint> {
    Ok(Breakpoint {
        kind: *u.choose(&[
            BreakpointType::Software,
            BreakpointType::Hardware,
            BreakpointType::WriteWatch,
            BreakpointType::ReadWatch,
            BreakpointType::AccessWatch,
        ])?,
        addr: number(u)?,
        size: number(u)?,
    })
}

fn resume_action(u: &mut Unstructured<'_>) -> Result<ResumeAction> {
    let kind = match u.int_in_range(0u8..=5)? {
        0 => ResumeKind::Continue,
        1 => ResumeKind::ContinueSignal(u.arbitrary()?),
        2 => ResumeKind::Step,
        3 => ResumeKind::StepSignal(u.arbitrary()?),
        4 => ResumeKind::Stop,
        _ => ResumeKind::RangeStep {
            start: number(u)?,
            end: number(u)?,
        },
    };
    Ok(ResumeAction {
        kind,
        thread: u.arbitrary::<bool>()?.then(|| thread_sel(u)).transpose()?,
    })
}

/// Real feature names, from gdb's and gdbserver's `qSupported` packets.
const FEATURE_NAMES: &[&str] = &[
    "PacketSize",
    "multiprocess",
    "swbreak",
    "hwbreak",
    "qRelocInsn",
    "fork-events",
    "vContSupported",
    "QThreadEvents",
    "no-resumed",
    "xmlRegisters",
    "qXfer:features:read",
    "qXfer:libraries:read",
    "qXfer:memory-map:read",
    "qXfer:exec-file:read",
    "QStartNoAckMode",
    "qSearch:memory",
    "QTagsplit.RunLimit",
    "QTagsplit.DefaultRun",
];

/// A `qSupported` list of 1 to [`MAX_ITEMS`] features whose text reads back as the same
/// list: names without `;` or `=` (never starting with `E`, which would read as an
/// error reply), values without `;`.
fn feature_list(u: &mut Unstructured<'_>, non_empty: bool) -> Result<Vec<Feature>> {
    let n = u.int_in_range(usize::from(non_empty)..=MAX_ITEMS)?;
    (0..n)
        .map(|_| {
            let name = if u.ratio(3u8, 4)? {
                (*u.choose(FEATURE_NAMES)?).to_owned()
            } else {
                let mut t = text(u, b"abcdefghijklmnopqrstuvwxyz", 1)?;
                t.extend(text(u, NAME_CHARS, MAX_NAME)?);
                String::from_utf8_lossy(&t).into_owned()
            };
            let value = match u.int_in_range(0u8..=3)? {
                0 => FeatureValue::Supported,
                1 => FeatureValue::Unsupported,
                2 => FeatureValue::Query,
                _ => FeatureValue::Value(format!("{:x}", number(u)?)),
            };
            Ok(Feature { name, value })
        })
        .collect()
}

/// An arbitrary reply and the [`ReplyKind`] of the command it answers: parsing the
/// reply's payload as that kind gives the reply back (the generator keeps to what reads
/// back unambiguously: no empty hex data, no empty thread list, no `qSupported` feature
/// that reads as an error).
///
/// Every [`Reply`] variant is generated. `qXfer` chunks carry XML documents in the shape
/// of a target description, a library list or a memory map (sometimes cut, as a chunk
/// is), with arbitrary names, addresses and lengths. Sizes are capped (see the
/// [module docs](super)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GdbReply {
    /// The reply.
    pub reply: Reply,
    /// What it answers.
    pub kind: ReplyKind,
}

impl GdbReply {
    /// The packet payload.
    pub fn payload(&self) -> Vec<u8> {
        self.reply.encode()
    }

    /// The whole `$payload#cs` frame, escaped, run-length encoded with `rle`.
    pub fn frame(&self, rle: bool) -> Vec<u8> {
        frame::encode_packet(&self.reply.encode(), rle)
    }
}

impl<'a> Arbitrary<'a> for Reply {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(GdbReply::arbitrary(u)?.reply)
    }
}

impl<'a> Arbitrary<'a> for GdbReply {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let non_empty = |u: &mut Unstructured<'a>| -> Result<Vec<u8>> {
            let mut d = bytes(u, MAX_DATA - 1)?;
            d.push(u.arbitrary()?);
            Ok(d)
        };
        let (reply, kind) = match u.int_in_range(0u8..=20)? {
            0 => (Reply::Ok, ReplyKind::Status),
            1 => (Reply::Error(u.arbitrary()?), ReplyKind::Status),
            2 => (
                Reply::ErrorText(String::from_utf8_lossy(&bytes(u, MAX_NAME)?).into_owned()),
                ReplyKind::Status,
            ),
            3 => (Reply::Empty, ReplyKind::Status),
            4 => (Reply::Stop(stop_reply(u)?), ReplyKind::Stop),
            5 => (Reply::Output(non_empty(u)?), ReplyKind::Monitor),
            6 => (Reply::Hex(non_empty(u)?), ReplyKind::Hex),
            7 => (Reply::Binary(bytes(u, MAX_DATA)?), ReplyKind::Binary),
            8 => (
                Reply::Xfer {
                    more: u.arbitrary()?,
                    data: xml(u)?,
                },
                ReplyKind::Xfer,
            ),
            9 => (
                Reply::Supported(feature_list(u, true)?),
                ReplyKind::Supported,
            ),
            10 => (Reply::SearchResult(opt_number(u)?), ReplyKind::Search),
            11 => (Reply::Crc(number32(u)?), ReplyKind::Crc),
            12 => {
                let n = u.int_in_range(1..=MAX_ITEMS)?;
                let ids = (0..n).map(|_| thread_id(u)).collect::<Result<_>>()?;
                (Reply::ThreadList(ids), ReplyKind::ThreadInfo)
            }
            13 => (Reply::ThreadListEnd, ReplyKind::ThreadInfo),
            14 => (
                Reply::CurrentThread(thread_id(u)?),
                ReplyKind::CurrentThread,
            ),
            15 => (Reply::Attached(u.arbitrary()?), ReplyKind::Attached),
            16 => {
                let n = u.int_in_range(0..=MAX_ITEMS)?;
                let actions = (0..n)
                    .map(|_| {
                        u.choose(&["c", "C", "s", "S", "t", "r"])
                            .map(|a| (*a).to_owned())
                    })
                    .collect::<Result<_>>()?;
                (Reply::VContSupported(actions), ReplyKind::VContSupported)
            }
            17 => (
                Reply::HostIo(HostIoReply::Value(number(u)?)),
                ReplyKind::HostIo,
            ),
            18 => (
                Reply::HostIo(HostIoReply::Data(bytes(u, MAX_DATA)?)),
                ReplyKind::HostIo,
            ),
            19 => (
                Reply::HostIo(HostIoReply::Error(number32(u)?)),
                ReplyKind::HostIo,
            ),
            _ => (Reply::Raw(non_empty(u)?), ReplyKind::Raw),
        };
        Ok(GdbReply { reply, kind })
    }
}

fn stop_reply(u: &mut Unstructured<'_>) -> Result<StopReply> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => StopReply::Exited(u.arbitrary()?),
        1 => StopReply::Terminated(u.arbitrary()?),
        _ => StopReply::Signal {
            signal: u.arbitrary()?,
            thread: u.arbitrary::<bool>()?.then(|| thread_id(u)).transpose()?,
            reason: match u.int_in_range(0u8..=2)? {
                0 => None,
                1 => Some(StopKind::SwBreak),
                _ => Some(StopKind::HwBreak),
            },
            registers: if u.arbitrary()? {
                Some(Expedited {
                    rbp: number(u)?,
                    rsp: number(u)?,
                    rip: number(u)?,
                })
            } else {
                None
            },
        },
    })
}

/// A `qXfer` document: a target description, a library list or a memory map of up to
/// [`MAX_ITEMS`] elements with arbitrary names and numbers, sometimes cut short as a
/// chunk of it would be.
pub(crate) fn xml(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let n = u.int_in_range(0..=MAX_ITEMS)?;
    let mut doc = String::from("<?xml version=\"1.0\"?>");
    let name = |u: &mut Unstructured<'_>| -> Result<String> {
        Ok(String::from_utf8_lossy(&text(u, NAME_CHARS, MAX_NAME)?).into_owned())
    };
    match u.int_in_range(0u8..=2)? {
        0 => {
            doc.push_str("<target version=\"1.0\"><architecture>i386:x86-64</architecture>");
            doc.push_str("<feature name=\"org.gnu.gdb.i386.core\">");
            for i in 0..n {
                let bits = *u.choose(&[8u32, 16, 32, 64, 80, 128, 0, u32::MAX])?;
                doc.push_str(&format!(
                    "<reg name=\"{}\" bitsize=\"{bits}\" regnum=\"{}\" type=\"{}\"/>",
                    name(u)?,
                    if u.arbitrary()? { i as u64 } else { number(u)? },
                    u.choose(&["int64", "code_ptr", "data_ptr", "i387_ext", "vec128", "x"])?,
                ));
            }
            doc.push_str("</feature></target>");
        }
        1 => {
            doc.push_str("<library-list>");
            for _ in 0..n {
                doc.push_str(&format!(
                    "<library name=\"{}\"><segment address=\"{:#x}\"/></library>",
                    name(u)?,
                    number(u)?
                ));
            }
            doc.push_str("</library-list>");
        }
        _ => {
            doc.push_str("<memory-map>");
            for _ in 0..n {
                doc.push_str(&format!(
                    "<memory type=\"{}\" start=\"{:#x}\" length=\"{:#x}\"/>",
                    u.choose(&["ram", "rom", "flash"])?,
                    number(u)?,
                    number(u)?
                ));
            }
            doc.push_str("</memory-map>");
        }
    }
    let mut doc = doc.into_bytes();
    if u.ratio(1u8, 4)? {
        let cut = u.int_in_range(0..=doc.len())?;
        doc.truncate(cut);
    }
    Ok(doc)
}
