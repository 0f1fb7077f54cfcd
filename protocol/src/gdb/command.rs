//! Typed commands: what a client (gdb) sends to a stub.
//!
//! [`Command::parse`] takes the payload of one framed packet (already unescaped) and never
//! fails: a packet it does not know, or a known one with malformed arguments, becomes
//! [`Command::Unknown`], which a stub answers with the empty reply. [`Command::encode`] is
//! the inverse, for the client side.

use nom::Parser;
use nom::branch::alt;
use nom::bytes::{tag, take_while1};
use nom::combinator::{all_consuming, map, opt, rest, value, verify};
use nom::multi::many0;
use nom::sequence::{preceded, separated_pair, terminated};

use super::hex::{
    In, PErr, decode_hex, encode_hex_into, hex_u8, hex_u32, hex_u64, push_hex_u64, push_op_hex_u8,
};
use super::reply::ReplyKind;

/// A thread (or process) id as the protocol writes it: `-1`, `0` or a positive hex number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadId {
    /// `-1`: all threads.
    All,
    /// `0`: any thread.
    Any,
    /// A specific id.
    Id(u64),
}

impl ThreadId {
    /// Appends the id as the protocol writes it (minimal hex).
    pub fn encode_into(self, out: &mut Vec<u8>) {
        match self {
            ThreadId::All => out.extend_from_slice(b"-1"),
            ThreadId::Any => out.push(b'0'),
            ThreadId::Id(id) => push_hex_u64(id, out),
        }
    }

    pub(crate) fn parser<'a>() -> impl Parser<In<'a>, Output = ThreadId, Error = PErr<'a>> {
        alt((
            value(ThreadId::All, tag(&b"-1"[..])),
            map(hex_u64(), |id| {
                if id == 0 {
                    ThreadId::Any
                } else {
                    ThreadId::Id(id)
                }
            }),
        ))
    }
}

/// A thread selector, with the optional multiprocess `pPID.TID` form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ThreadSel {
    /// The process, when written in the `p` form.
    pub process: Option<ThreadId>,
    /// The thread (`All` when a `pPID` form has no `.TID`).
    pub thread: ThreadId,
}

impl ThreadSel {
    /// A plain thread selector.
    pub fn thread(thread: ThreadId) -> Self {
        Self {
            process: None,
            thread,
        }
    }

    fn encode_into(self, out: &mut Vec<u8>) {
        if let Some(p) = self.process {
            out.push(b'p');
            p.encode_into(out);
            out.push(b'.');
        }
        self.thread.encode_into(out);
    }

    pub(crate) fn parser<'a>() -> impl Parser<In<'a>, Output = ThreadSel, Error = PErr<'a>> {
        alt((
            map(
                preceded(
                    tag(&b"p"[..]),
                    (
                        ThreadId::parser(),
                        opt(preceded(tag(&b"."[..]), ThreadId::parser())),
                    ),
                ),
                |(p, t)| ThreadSel {
                    process: Some(p),
                    thread: t.unwrap_or(ThreadId::All),
                },
            ),
            map(ThreadId::parser(), ThreadSel::thread),
        ))
    }
}

/// One `qSupported` feature: `name+`, `name-`, `name?` or `name=value`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Feature {
    /// The feature name (`PacketSize`, `swbreak`, `qXfer:features:read`).
    pub name: String,
    /// Its value.
    pub value: FeatureValue,
}

/// The value part of a [`Feature`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FeatureValue {
    /// `+`.
    Supported,
    /// `-`.
    Unsupported,
    /// `?`.
    Query,
    /// `=value`.
    Value(String),
}

impl Feature {
    /// A `name+` feature.
    pub fn supported(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            value: FeatureValue::Supported,
        }
    }

    /// A `name=value` feature.
    pub fn with_value(name: &str, value: &str) -> Self {
        Self {
            name: name.to_owned(),
            value: FeatureValue::Value(value.to_owned()),
        }
    }

    /// Parses one feature; `None` for an empty string.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let text = String::from_utf8_lossy(text);
        if let Some((name, v)) = text.split_once('=') {
            return Some(Self::with_value(name, v));
        }
        let (name, value) = match text.as_bytes().last()? {
            b'+' => (text.get(..text.len() - 1)?, FeatureValue::Supported),
            b'-' => (text.get(..text.len() - 1)?, FeatureValue::Unsupported),
            b'?' => (text.get(..text.len() - 1)?, FeatureValue::Query),
            _ => (text.as_ref(), FeatureValue::Supported),
        };
        Some(Self {
            name: name.to_owned(),
            value,
        })
    }

    /// Parses a `;`-separated feature list.
    pub fn parse_list(text: &[u8]) -> Vec<Self> {
        text.split(|&c| c == b';').filter_map(Self::parse).collect()
    }

    /// Appends the feature as text.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.name.as_bytes());
        match &self.value {
            FeatureValue::Supported => out.push(b'+'),
            FeatureValue::Unsupported => out.push(b'-'),
            FeatureValue::Query => out.push(b'?'),
            FeatureValue::Value(v) => {
                out.push(b'=');
                out.extend_from_slice(v.as_bytes());
            }
        }
    }

    /// Appends a `;`-separated list.
    pub fn encode_list_into(list: &[Feature], out: &mut Vec<u8>) {
        for (i, f) in list.iter().enumerate() {
            if i > 0 {
                out.push(b';');
            }
            f.encode_into(out);
        }
    }
}

/// Which `qXfer` object is read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum XferObject {
    /// `features` (target description; annex `target.xml`).
    Features,
    /// `libraries` (the library list).
    Libraries,
    /// `memory-map`.
    MemoryMap,
    /// Any other object, by name.
    Other(String),
}

impl XferObject {
    /// The protocol name.
    pub fn name(&self) -> &str {
        match self {
            XferObject::Features => "features",
            XferObject::Libraries => "libraries",
            XferObject::MemoryMap => "memory-map",
            XferObject::Other(s) => s,
        }
    }

    fn from_name(name: &[u8]) -> Self {
        match name {
            b"features" => XferObject::Features,
            b"libraries" => XferObject::Libraries,
            b"memory-map" => XferObject::MemoryMap,
            other => XferObject::Other(String::from_utf8_lossy(other).into_owned()),
        }
    }
}

/// Breakpoint and watchpoint types of `Z`/`z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakpointType {
    /// `0`: software breakpoint.
    Software,
    /// `1`: hardware breakpoint.
    Hardware,
    /// `2`: write watchpoint.
    WriteWatch,
    /// `3`: read watchpoint.
    ReadWatch,
    /// `4`: access watchpoint.
    AccessWatch,
}

impl BreakpointType {
    fn code(self) -> u8 {
        match self {
            BreakpointType::Software => b'0',
            BreakpointType::Hardware => b'1',
            BreakpointType::WriteWatch => b'2',
            BreakpointType::ReadWatch => b'3',
            BreakpointType::AccessWatch => b'4',
        }
    }

    fn parser<'a>() -> impl Parser<In<'a>, Output = BreakpointType, Error = PErr<'a>> {
        alt((
            value(BreakpointType::Software, tag(&b"0"[..])),
            value(BreakpointType::Hardware, tag(&b"1"[..])),
            value(BreakpointType::WriteWatch, tag(&b"2"[..])),
            value(BreakpointType::ReadWatch, tag(&b"3"[..])),
            value(BreakpointType::AccessWatch, tag(&b"4"[..])),
        ))
    }
}

/// A `Z`/`z` breakpoint specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Breakpoint {
    /// The type.
    pub kind: BreakpointType,
    /// The address.
    pub addr: u64,
    /// The kind/length field (1 for an x86 software breakpoint).
    pub size: u64,
}

/// What a `vCont` action does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResumeKind {
    /// `c`.
    Continue,
    /// `Csig`.
    ContinueSignal(u8),
    /// `s`.
    Step,
    /// `Ssig`.
    StepSignal(u8),
    /// `t` (stop).
    Stop,
    /// `rSTART,END` (step while in range).
    RangeStep {
        /// First address of the range.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
    },
}

/// One `vCont` action with its optional thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResumeAction {
    /// What to do.
    pub kind: ResumeKind,
    /// Which thread (all when absent).
    pub thread: Option<ThreadSel>,
}

impl ResumeAction {
    fn parser<'a>() -> impl Parser<In<'a>, Output = ResumeAction, Error = PErr<'a>> {
        map(
            (
                alt((
                    map(
                        preceded(tag(&b"C"[..]), hex_u8()),
                        ResumeKind::ContinueSignal,
                    ),
                    map(preceded(tag(&b"S"[..]), hex_u8()), ResumeKind::StepSignal),
                    value(ResumeKind::Continue, tag(&b"c"[..])),
                    value(ResumeKind::Step, tag(&b"s"[..])),
                    value(ResumeKind::Stop, tag(&b"t"[..])),
                    map(
                        preceded(
                            tag(&b"r"[..]),
                            separated_pair(hex_u64(), tag(&b","[..]), hex_u64()),
                        ),
                        |(start, end)| ResumeKind::RangeStep { start, end },
                    ),
                )),
                opt(preceded(tag(&b":"[..]), ThreadSel::parser())),
            ),
            |(kind, thread)| ResumeAction { kind, thread },
        )
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self.kind {
            ResumeKind::Continue => out.push(b'c'),
            ResumeKind::Step => out.push(b's'),
            ResumeKind::Stop => out.push(b't'),
            ResumeKind::ContinueSignal(s) => push_op_hex_u8(b'C', s, out),
            ResumeKind::StepSignal(s) => push_op_hex_u8(b'S', s, out),
            ResumeKind::RangeStep { start, end } => {
                out.push(b'r');
                push_hex_u64(start, out);
                out.push(b',');
                push_hex_u64(end, out);
            }
        }
        if let Some(t) = self.thread {
            out.push(b':');
            t.encode_into(out);
        }
    }
}

/// Which operations `H` selects a thread for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadOp {
    /// `Hg`: register and memory access.
    General,
    /// `Hc`: continue and step.
    Continue,
}

/// A command from a client, parsed from one packet payload.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `qSupported[:features]`.
    QSupported(Vec<Feature>),
    /// `vMustReplyEmpty` (the stub must answer with the empty packet).
    MustReplyEmpty,
    /// `QStartNoAckMode`.
    StartNoAckMode,
    /// `Hg`/`Hc` + thread.
    SetThread(ThreadOp, ThreadSel),
    /// `qXfer:OBJECT:read:ANNEX:OFFSET,LENGTH`.
    XferRead {
        /// The object.
        object: XferObject,
        /// The annex (`target.xml` for features; empty for libraries).
        annex: String,
        /// Offset into the document.
        offset: u64,
        /// Maximum bytes to return.
        length: u64,
    },
    /// `qTStatus`.
    TraceStatus,
    /// `?`.
    HaltReason,
    /// `qfThreadInfo`.
    ThreadInfoFirst,
    /// `qsThreadInfo`.
    ThreadInfoNext,
    /// `qC`.
    CurrentThread,
    /// `qAttached[:pid]`.
    Attached(Option<u64>),
    /// `g`.
    ReadRegisters,
    /// `G` + hex.
    WriteRegisters(Vec<u8>),
    /// `p` + register number.
    ReadRegister(u32),
    /// `Pn=hex`.
    WriteRegister {
        /// Register number.
        reg: u32,
        /// Its new value, target byte order.
        value: Vec<u8>,
    },
    /// `mADDR,LEN`.
    ReadMemory {
        /// Start address.
        addr: u64,
        /// Bytes requested.
        len: u64,
    },
    /// `xADDR,LEN` (binary reply).
    ReadMemoryBinary {
        /// Start address.
        addr: u64,
        /// Bytes requested.
        len: u64,
    },
    /// `MADDR,LEN:hex`.
    WriteMemory {
        /// Start address.
        addr: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// `XADDR,LEN:binary`.
    WriteMemoryBinary {
        /// Start address.
        addr: u64,
        /// The bytes (possibly none: gdb probes with a zero-length `X`).
        data: Vec<u8>,
    },
    /// `qSearch:memory:ADDR;LEN;PATTERN`.
    SearchMemory {
        /// Start address.
        addr: u64,
        /// Length of the range.
        len: u64,
        /// The raw pattern.
        pattern: Vec<u8>,
    },
    /// `qRcmd,hex` (`monitor` text, decoded).
    Monitor(Vec<u8>),
    /// `Z` + type,addr,kind.
    InsertBreakpoint(Breakpoint),
    /// `z` + type,addr,kind.
    RemoveBreakpoint(Breakpoint),
    /// `vCont?`.
    VContQuery,
    /// `vCont;ACTION[:TID]...`.
    VCont(Vec<ResumeAction>),
    /// `c[ADDR]`.
    Continue(Option<u64>),
    /// `s[ADDR]`.
    Step(Option<u64>),
    /// `D[;PID]`.
    Detach(Option<u64>),
    /// `k`.
    Kill,
    /// `vKill;PID`.
    VKill(Option<u64>),
    /// `QTagsplit.RunLimit:TICKS` (extension): the next resume runs at most this many
    /// virtual-clock ticks, then stops with `T02` (0 = no limit). Offered in `qSupported`
    /// as `QTagsplit.RunLimit+` by stubs over a simulator.
    RunLimit(u64),
    /// Anything else (answered with the empty reply).
    Unknown(Vec<u8>),
}

/// The `qSupported` feature a stub offers when it understands [`Command::RunLimit`].
pub const RUN_LIMIT_FEATURE: &str = "QTagsplit.RunLimit";

/// The `qSupported` feature (`QTagsplit.DefaultRun=TICKS`, hex) by which a simulator stub
/// tells the scenario's default run length.
pub const DEFAULT_RUN_FEATURE: &str = "QTagsplit.DefaultRun";

fn lit<'a>(t: &'static [u8]) -> impl Parser<In<'a>, Output = In<'a>, Error = PErr<'a>> {
    tag(t)
}

fn addr_len<'a>() -> impl Parser<In<'a>, Output = (u64, u64), Error = PErr<'a>> {
    separated_pair(hex_u64(), lit(b","), hex_u64())
}

fn hex_data<'a>() -> impl Parser<In<'a>, Output = Vec<u8>, Error = PErr<'a>> {
    nom::combinator::map_opt(rest, decode_hex)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn command_parser<'a>() -> impl Parser<In<'a>, Output = Command, Error = PErr<'a>> {
    let queries = alt((
        map(
            preceded(lit(b"qSupported"), opt(preceded(lit(b":"), rest))),
            |f: Option<In<'a>>| Command::QSupported(f.map(Feature::parse_list).unwrap_or_default()),
        ),
        value(Command::MustReplyEmpty, lit(b"vMustReplyEmpty")),
        value(Command::StartNoAckMode, lit(b"QStartNoAckMode")),
        map(
            preceded(lit(b"QTagsplit.RunLimit:"), hex_u64()),
            Command::RunLimit,
        ),
        map(
            (
                preceded(lit(b"qXfer:"), take_while1(|c| c != b':')),
                preceded(lit(b":read:"), nom::bytes::take_while(|c| c != b':')),
                preceded(lit(b":"), addr_len()),
            ),
            |(object, annex, (offset, length))| Command::XferRead {
                object: XferObject::from_name(object),
                annex: text(annex),
                offset,
                length,
            },
        ),
        value(Command::TraceStatus, lit(b"qTStatus")),
        value(Command::ThreadInfoFirst, lit(b"qfThreadInfo")),
        value(Command::ThreadInfoNext, lit(b"qsThreadInfo")),
        value(Command::CurrentThread, lit(b"qC")),
        map(
            preceded(lit(b"qAttached"), opt(preceded(lit(b":"), hex_u64()))),
            Command::Attached,
        ),
        map(
            (
                preceded(lit(b"qSearch:memory:"), hex_u64()),
                preceded(lit(b";"), hex_u64()),
                preceded(lit(b";"), rest),
            ),
            |(addr, len, pattern): (u64, u64, In<'a>)| Command::SearchMemory {
                addr,
                len,
                pattern: pattern.to_vec(),
            },
        ),
        map(preceded(lit(b"qRcmd,"), hex_data()), Command::Monitor),
    ));
    let resume = alt((
        value(Command::VContQuery, lit(b"vCont?")),
        map(
            preceded(
                lit(b"vCont"),
                many0(preceded(lit(b";"), ResumeAction::parser())),
            ),
            Command::VCont,
        ),
        map(
            preceded(lit(b"vKill"), opt(preceded(lit(b";"), hex_u64()))),
            Command::VKill,
        ),
        map(preceded(lit(b"c"), opt(hex_u64())), Command::Continue),
        map(preceded(lit(b"s"), opt(hex_u64())), Command::Step),
        map(
            preceded(lit(b"D"), opt(preceded(lit(b";"), hex_u64()))),
            Command::Detach,
        ),
        value(Command::Kill, lit(b"k")),
        value(Command::HaltReason, lit(b"?")),
    ));
    let breakpoint = || {
        map(
            terminated(
                (
                    BreakpointType::parser(),
                    preceded(lit(b","), hex_u64()),
                    preceded(lit(b","), hex_u64()),
                ),
                // Conditions and commands (`;X...`) are accepted and ignored.
                opt(preceded(lit(b";"), rest)),
            ),
            |(kind, addr, size)| Breakpoint { kind, addr, size },
        )
    };
    let state = alt((
        map(
            preceded(
                lit(b"H"),
                (
                    alt((
                        value(ThreadOp::General, lit(b"g")),
                        value(ThreadOp::Continue, lit(b"c")),
                    )),
                    ThreadSel::parser(),
                ),
            ),
            |(op, t)| Command::SetThread(op, t),
        ),
        value(Command::ReadRegisters, lit(b"g")),
        map(preceded(lit(b"G"), hex_data()), Command::WriteRegisters),
        map(preceded(lit(b"p"), hex_u32()), Command::ReadRegister),
        map(
            preceded(lit(b"P"), separated_pair(hex_u32(), lit(b"="), hex_data())),
            |(reg, value)| Command::WriteRegister { reg, value },
        ),
        map(preceded(lit(b"m"), addr_len()), |(addr, len)| {
            Command::ReadMemory { addr, len }
        }),
        map(preceded(lit(b"x"), addr_len()), |(addr, len)| {
            Command::ReadMemoryBinary { addr, len }
        }),
        map(
            verify(
                preceded(lit(b"M"), separated_pair(addr_len(), lit(b":"), hex_data())),
                |((_, len), data): &((u64, u64), Vec<u8>)| *len == data.len() as u64,
            ),
            |((addr, _), data)| Command::WriteMemory { addr, data },
        ),
        map(
            verify(
                preceded(lit(b"X"), separated_pair(addr_len(), lit(b":"), rest)),
                |((_, len), data): &((u64, u64), In<'a>)| *len == data.len() as u64,
            ),
            |((addr, _), data)| Command::WriteMemoryBinary {
                addr,
                data: data.to_vec(),
            },
        ),
        map(preceded(lit(b"Z"), breakpoint()), Command::InsertBreakpoint),
        map(preceded(lit(b"z"), breakpoint()), Command::RemoveBreakpoint),
    ));
    all_consuming(alt((queries, resume, state)))
}

impl Command {
    /// Parses one packet payload; anything unrecognised or malformed is [`Command::Unknown`].
    pub fn parse(payload: &[u8]) -> Command {
        match command_parser().parse_complete(payload) {
            Ok((_, cmd)) => cmd,
            Err(_) => Command::Unknown(payload.to_vec()),
        }
    }

    /// Whether this command resumes the target (its reply is a stop reply, later).
    pub fn resumes(&self) -> bool {
        match self {
            Command::Continue(_) | Command::Step(_) => true,
            Command::VCont(actions) => actions.iter().any(|a| a.kind != ResumeKind::Stop),
            _ => false,
        }
    }

    /// What kind of reply the stub sends to this command (for parsing it).
    pub fn reply_kind(&self) -> ReplyKind {
        match self {
            Command::QSupported(_) => ReplyKind::Supported,
            Command::XferRead { .. } => ReplyKind::Xfer,
            Command::HaltReason => ReplyKind::Stop,
            Command::ThreadInfoFirst | Command::ThreadInfoNext => ReplyKind::ThreadInfo,
            Command::CurrentThread => ReplyKind::CurrentThread,
            Command::Attached(_) => ReplyKind::Attached,
            Command::ReadRegisters | Command::ReadRegister(_) | Command::ReadMemory { .. } => {
                ReplyKind::Hex
            }
            Command::ReadMemoryBinary { .. } => ReplyKind::Binary,
            Command::SearchMemory { .. } => ReplyKind::Search,
            Command::Monitor(_) => ReplyKind::Monitor,
            Command::VContQuery => ReplyKind::VContSupported,
            Command::Continue(_) | Command::Step(_) | Command::VCont(_) => ReplyKind::Stop,
            Command::Detach(_) | Command::Kill | Command::VKill(_) => ReplyKind::Status,
            Command::Unknown(_) | Command::TraceStatus => ReplyKind::Raw,
            _ => ReplyKind::Status,
        }
    }

    /// Appends the packet payload (unescaped; framing escapes it) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Command::QSupported(features) => {
                out.extend_from_slice(b"qSupported");
                if !features.is_empty() {
                    out.push(b':');
                    Feature::encode_list_into(features, out);
                }
            }
            Command::MustReplyEmpty => out.extend_from_slice(b"vMustReplyEmpty"),
            Command::StartNoAckMode => out.extend_from_slice(b"QStartNoAckMode"),
            Command::SetThread(op, t) => {
                out.push(b'H');
                out.push(match op {
                    ThreadOp::General => b'g',
                    ThreadOp::Continue => b'c',
                });
                t.encode_into(out);
            }
            Command::XferRead {
                object,
                annex,
                offset,
                length,
            } => {
                out.extend_from_slice(b"qXfer:");
                out.extend_from_slice(object.name().as_bytes());
                out.extend_from_slice(b":read:");
                out.extend_from_slice(annex.as_bytes());
                out.push(b':');
                push_hex_u64(*offset, out);
                out.push(b',');
                push_hex_u64(*length, out);
            }
            Command::TraceStatus => out.extend_from_slice(b"qTStatus"),
            Command::HaltReason => out.push(b'?'),
            Command::ThreadInfoFirst => out.extend_from_slice(b"qfThreadInfo"),
            Command::ThreadInfoNext => out.extend_from_slice(b"qsThreadInfo"),
            Command::CurrentThread => out.extend_from_slice(b"qC"),
            Command::Attached(pid) => {
                out.extend_from_slice(b"qAttached");
                if let Some(pid) = pid {
                    out.push(b':');
                    push_hex_u64(*pid, out);
                }
            }
            Command::ReadRegisters => out.push(b'g'),
            Command::WriteRegisters(data) => {
                out.push(b'G');
                encode_hex_into(data, out);
            }
            Command::ReadRegister(n) => {
                out.push(b'p');
                push_hex_u64(u64::from(*n), out);
            }
            Command::WriteRegister { reg, value } => {
                out.push(b'P');
                push_hex_u64(u64::from(*reg), out);
                out.push(b'=');
                encode_hex_into(value, out);
            }
            Command::ReadMemory { addr, len } => encode_addr_len(b'm', *addr, *len, out),
            Command::ReadMemoryBinary { addr, len } => encode_addr_len(b'x', *addr, *len, out),
            Command::WriteMemory { addr, data } => {
                encode_addr_len(b'M', *addr, data.len() as u64, out);
                out.push(b':');
                encode_hex_into(data, out);
            }
            Command::WriteMemoryBinary { addr, data } => {
                encode_addr_len(b'X', *addr, data.len() as u64, out);
                out.push(b':');
                out.extend_from_slice(data);
            }
            Command::SearchMemory { addr, len, pattern } => {
                out.extend_from_slice(b"qSearch:memory:");
                push_hex_u64(*addr, out);
                out.push(b';');
                push_hex_u64(*len, out);
                out.push(b';');
                out.extend_from_slice(pattern);
            }
            Command::Monitor(text) => {
                out.extend_from_slice(b"qRcmd,");
                encode_hex_into(text, out);
            }
            Command::InsertBreakpoint(bp) => encode_breakpoint(b'Z', bp, out),
            Command::RemoveBreakpoint(bp) => encode_breakpoint(b'z', bp, out),
            Command::VContQuery => out.extend_from_slice(b"vCont?"),
            Command::VCont(actions) => {
                out.extend_from_slice(b"vCont");
                for a in actions {
                    out.push(b';');
                    a.encode_into(out);
                }
            }
            Command::Continue(addr) => encode_opt_addr(b'c', *addr, out),
            Command::Step(addr) => encode_opt_addr(b's', *addr, out),
            Command::Detach(pid) => {
                out.push(b'D');
                if let Some(pid) = pid {
                    out.push(b';');
                    push_hex_u64(*pid, out);
                }
            }
            Command::Kill => out.push(b'k'),
            Command::VKill(pid) => {
                out.extend_from_slice(b"vKill");
                if let Some(pid) = pid {
                    out.push(b';');
                    push_hex_u64(*pid, out);
                }
            }
            Command::RunLimit(ticks) => {
                out.extend_from_slice(b"QTagsplit.RunLimit:");
                push_hex_u64(*ticks, out);
            }
            Command::Unknown(raw) => out.extend_from_slice(raw),
        }
    }

    /// Returns the packet payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

fn encode_addr_len(op: u8, addr: u64, len: u64, out: &mut Vec<u8>) {
    out.push(op);
    push_hex_u64(addr, out);
    out.push(b',');
    push_hex_u64(len, out);
}

fn encode_opt_addr(op: u8, addr: Option<u64>, out: &mut Vec<u8>) {
    out.push(op);
    if let Some(a) = addr {
        push_hex_u64(a, out);
    }
}

fn encode_breakpoint(op: u8, bp: &Breakpoint, out: &mut Vec<u8>) {
    out.push(op);
    out.push(bp.kind.code());
    out.push(b',');
    push_hex_u64(bp.addr, out);
    out.push(b',');
    push_hex_u64(bp.size, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(packet: &[u8], expected: Command) {
        let cmd = Command::parse(packet);
        assert_eq!(
            cmd,
            expected,
            "parsing {:?}",
            String::from_utf8_lossy(packet)
        );
        assert_eq!(cmd.encode(), packet, "encoding {cmd:?}");
    }

    #[test]
    fn connect_sequence() {
        let cmd = Command::parse(b"qSupported:multiprocess+;swbreak+;xmlRegisters=i386");
        let Command::QSupported(f) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(f.len(), 3);
        assert_eq!(f[2], Feature::with_value("xmlRegisters", "i386"));
        round_trip(b"vMustReplyEmpty", Command::MustReplyEmpty);
        round_trip(b"QStartNoAckMode", Command::StartNoAckMode);
        round_trip(
            b"Hg0",
            Command::SetThread(ThreadOp::General, ThreadSel::thread(ThreadId::Any)),
        );
        round_trip(
            b"Hc-1",
            Command::SetThread(ThreadOp::Continue, ThreadSel::thread(ThreadId::All)),
        );
        round_trip(
            b"qXfer:features:read:target.xml:0,1000",
            Command::XferRead {
                object: XferObject::Features,
                annex: "target.xml".into(),
                offset: 0,
                length: 0x1000,
            },
        );
        round_trip(
            b"qXfer:libraries:read::0,1000",
            Command::XferRead {
                object: XferObject::Libraries,
                annex: String::new(),
                offset: 0,
                length: 0x1000,
            },
        );
        round_trip(b"qTStatus", Command::TraceStatus);
        round_trip(b"?", Command::HaltReason);
        round_trip(b"qfThreadInfo", Command::ThreadInfoFirst);
        round_trip(b"qsThreadInfo", Command::ThreadInfoNext);
        round_trip(b"qC", Command::CurrentThread);
        round_trip(b"qAttached", Command::Attached(None));
        round_trip(b"qAttached:1", Command::Attached(Some(1)));
        round_trip(b"g", Command::ReadRegisters);
    }

    #[test]
    fn memory_and_registers() {
        round_trip(
            b"m140001010,1",
            Command::ReadMemory {
                addr: 0x1_4000_1010,
                len: 1,
            },
        );
        round_trip(
            b"x140001010,100",
            Command::ReadMemoryBinary {
                addr: 0x1_4000_1010,
                len: 0x100,
            },
        );
        round_trip(
            b"M140001010,1:31",
            Command::WriteMemory {
                addr: 0x1_4000_1010,
                data: vec![0x31],
            },
        );
        round_trip(
            b"X140001010,0:",
            Command::WriteMemoryBinary {
                addr: 0x1_4000_1010,
                data: vec![],
            },
        );
        round_trip(
            b"X140001010,2:#}",
            Command::WriteMemoryBinary {
                addr: 0x1_4000_1010,
                data: b"#}".to_vec(),
            },
        );
        round_trip(b"p10", Command::ReadRegister(0x10));
        round_trip(
            b"P10=0102",
            Command::WriteRegister {
                reg: 0x10,
                value: vec![1, 2],
            },
        );
        round_trip(b"G0102", Command::WriteRegisters(vec![1, 2]));
        // Length mismatch is malformed, hence Unknown.
        assert!(matches!(Command::parse(b"M1,2:31"), Command::Unknown(_)));
        assert!(matches!(Command::parse(b"m1,"), Command::Unknown(_)));
        assert!(matches!(
            Command::parse(b"m11112222333344445,1"),
            Command::Unknown(_)
        ));
    }

    #[test]
    fn search_monitor_breakpoints_resume() {
        round_trip(
            b"qSearch:memory:140000000;4000;Leak",
            Command::SearchMemory {
                addr: 0x1_4000_0000,
                len: 0x4000,
                pattern: b"Leak".to_vec(),
            },
        );
        round_trip(b"qRcmd,68656c70", Command::Monitor(b"help".to_vec()));
        let bp = Breakpoint {
            kind: BreakpointType::Software,
            addr: 0x1_4000_1002,
            size: 1,
        };
        round_trip(b"Z0,140001002,1", Command::InsertBreakpoint(bp));
        round_trip(b"z0,140001002,1", Command::RemoveBreakpoint(bp));
        let hw = Breakpoint {
            kind: BreakpointType::Hardware,
            ..bp
        };
        round_trip(b"Z1,140001002,1", Command::InsertBreakpoint(hw));
        round_trip(b"vCont?", Command::VContQuery);
        round_trip(
            b"vCont;s:1;c",
            Command::VCont(vec![
                ResumeAction {
                    kind: ResumeKind::Step,
                    thread: Some(ThreadSel::thread(ThreadId::Id(1))),
                },
                ResumeAction {
                    kind: ResumeKind::Continue,
                    thread: None,
                },
            ]),
        );
        round_trip(b"c", Command::Continue(None));
        round_trip(b"c140001000", Command::Continue(Some(0x1_4000_1000)));
        round_trip(b"s", Command::Step(None));
        round_trip(b"D", Command::Detach(None));
        round_trip(b"D;1", Command::Detach(Some(1)));
        round_trip(b"k", Command::Kill);
        round_trip(b"vKill;a", Command::VKill(Some(10)));
        round_trip(
            b"vFile:setfs:0",
            Command::Unknown(b"vFile:setfs:0".to_vec()),
        );
        round_trip(b"qMARK:find", Command::Unknown(b"qMARK:find".to_vec()));
        round_trip(b"QTagsplit.RunLimit:3e8", Command::RunLimit(1000));
    }
}
