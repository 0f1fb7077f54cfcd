//! Typed commands: what a client (gdb) sends to a stub.
//!
//! [`Command::parse`] takes the payload of one framed packet (already unescaped) and never
//! fails, and never allocates: the command borrows its data from the payload (hex
//! arguments stay hex text until asked for, see [`HexBytes`]). A packet it does not know
//! becomes [`Command::Unknown`], which a stub answers with the empty reply ("unsupported");
//! a packet it knows with malformed arguments becomes [`Command::Malformed`], which a stub
//! answers with an `E` reply. [`Command::encode`] is the inverse, for the client side,
//! which builds commands over its own bytes ([`HexBytes::raw`], [`ResumeActions::list`]).

use nom::Parser;
use nom::branch::alt;
use nom::bytes::{tag, take_while1};
use nom::combinator::{all_consuming, map, opt, recognize, rest, value};
use nom::multi::fold_many0;
use nom::sequence::{preceded, separated_pair, terminated};

use super::frame::hex_value;
use super::hex::{
    In, PErr, encode_hex_into, hex_u8, hex_u32, hex_u64, push_hex_u64, push_op_hex_u8,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XferObject<'a> {
    /// `features` (target description; annex `target.xml`).
    Features,
    /// `libraries` (the library list).
    Libraries,
    /// `memory-map`.
    MemoryMap,
    /// Any other object, by name.
    Other(&'a [u8]),
}

impl<'a> XferObject<'a> {
    /// The protocol name.
    pub fn name(&self) -> &'a [u8] {
        match self {
            XferObject::Features => b"features",
            XferObject::Libraries => b"libraries",
            XferObject::MemoryMap => b"memory-map",
            XferObject::Other(s) => s,
        }
    }

    fn from_name(name: &'a [u8]) -> Self {
        match name {
            b"features" => XferObject::Features,
            b"libraries" => XferObject::Libraries,
            b"memory-map" => XferObject::MemoryMap,
            other => XferObject::Other(other),
        }
    }
}

/// Bytes a command carries as hex text (`M`, `G`, `P`, `qRcmd`), decoded on demand.
///
/// A parsed command holds the validated hex text of its packet ([`HexBytes::hex`]); a
/// client building a command holds its own bytes ([`HexBytes::raw`]). Both compare by
/// the bytes they stand for.
#[derive(Clone, Copy, Debug)]
pub enum HexBytes<'a> {
    /// Hex text with an even number of hex digits.
    Hex(&'a [u8]),
    /// The bytes themselves.
    Raw(&'a [u8]),
}

impl<'a> HexBytes<'a> {
    /// Bytes given as they are.
    pub fn raw(bytes: &'a [u8]) -> Self {
        HexBytes::Raw(bytes)
    }

    /// Hex text; `None` unless it is an even number of hex digits.
    pub fn hex(text: &'a [u8]) -> Option<Self> {
        (text.len().is_multiple_of(2) && text.iter().all(|&c| hex_value(c).is_some()))
            .then_some(HexBytes::Hex(text))
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        match self {
            HexBytes::Hex(t) => t.len() / 2,
            HexBytes::Raw(b) => b.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, one by one.
    pub fn iter(&self) -> impl Iterator<Item = u8> + 'a {
        let (hex, raw): (&'a [u8], &'a [u8]) = match *self {
            HexBytes::Hex(t) => (t, &[]),
            HexBytes::Raw(b) => (&[], b),
        };
        let decoded = hex.chunks_exact(2).map(|pair| match pair {
            [h, l] => (hex_value(*h).unwrap_or(0) << 4) | hex_value(*l).unwrap_or(0),
            _ => 0,
        });
        decoded.chain(raw.iter().copied())
    }

    /// The bytes, in a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        self.iter().collect()
    }

    /// Appends the bytes as hex text.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            HexBytes::Hex(t) => out.extend(t.iter().map(|c| c.to_ascii_lowercase())),
            HexBytes::Raw(b) => encode_hex_into(b, out),
        }
    }
}

impl PartialEq for HexBytes<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for HexBytes<'_> {}

/// The feature list of a `qSupported` packet, as its text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Features<'a>(&'a [u8]);

impl<'a> Features<'a> {
    /// A `;`-separated feature list (see [`Feature::encode_list_into`] to write one).
    pub fn new(text: &'a [u8]) -> Self {
        Features(text)
    }

    /// The list text.
    pub fn text(&self) -> &'a [u8] {
        self.0
    }

    /// The features, parsed one by one.
    pub fn iter(&self) -> impl Iterator<Item = Feature> + 'a {
        self.0.split(|&c| c == b';').filter_map(Feature::parse)
    }
}

/// The actions of a `vCont` packet.
///
/// A parsed command holds the validated text of its packet; a client holds a list.
#[derive(Clone, Copy, Debug)]
pub enum ResumeActions<'a> {
    /// `;ACTION[:TID]` repeated, as received.
    Wire(&'a [u8]),
    /// Actions given as values.
    List(&'a [ResumeAction]),
}

impl<'a> ResumeActions<'a> {
    /// Actions given as values.
    pub fn list(actions: &'a [ResumeAction]) -> Self {
        ResumeActions::List(actions)
    }

    /// The actions, in order.
    pub fn iter(&self) -> impl Iterator<Item = ResumeAction> + 'a {
        let (wire, list): (&'a [u8], &'a [ResumeAction]) = match *self {
            ResumeActions::Wire(w) => (w, &[]),
            ResumeActions::List(l) => (&[], l),
        };
        let parsed = wire.split(|&c| c == b';').skip(1).filter_map(|a| {
            ResumeAction::parser()
                .parse_complete(a)
                .ok()
                .map(|(_, a)| a)
        });
        parsed.chain(list.iter().copied())
    }

    /// The first action.
    pub fn first(&self) -> Option<ResumeAction> {
        self.iter().next()
    }
}

impl PartialEq for ResumeActions<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for ResumeActions<'_> {}

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

    pub(crate) fn parser<'a>() -> impl Parser<In<'a>, Output = BreakpointType, Error = PErr<'a>> {
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
    pub(crate) fn parser<'a>() -> impl Parser<In<'a>, Output = ResumeAction, Error = PErr<'a>> {
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

/// A GDB host I/O request (`vFile:…`): gdb reading files on the target's side, such as
/// the libraries a stub lists in `qXfer:libraries` (with `set sysroot target:`, gdb's
/// default). Answered with [`HostIoReply`](super::reply::HostIoReply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostIo<'a> {
    /// `vFile:setfs:PID`: which process's filesystem later requests use (0: the stub's).
    Setfs(u64),
    /// `vFile:open:NAME,FLAGS,MODE` (the name hex-encoded).
    Open {
        /// The file name.
        name: HexBytes<'a>,
        /// gdb's `open` flags ([`host_io::O_WRONLY`] …; 0 is read-only).
        flags: u64,
        /// The mode a created file gets.
        mode: u64,
    },
    /// `vFile:close:FD`.
    Close(u64),
    /// `vFile:pread:FD,COUNT,OFFSET`.
    Pread {
        /// The descriptor `open` returned.
        fd: u64,
        /// Bytes asked for (a stub answers at most what fits in one packet).
        count: u64,
        /// Where in the file.
        offset: u64,
    },
    /// `vFile:pwrite:FD,OFFSET,DATA` (the data binary).
    Pwrite {
        /// The descriptor.
        fd: u64,
        /// Where in the file.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
    },
    /// `vFile:fstat:FD`.
    Fstat(u64),
    /// `vFile:unlink:NAME`.
    Unlink(HexBytes<'a>),
    /// `vFile:readlink:NAME`.
    Readlink(HexBytes<'a>),
}

/// gdb's host I/O constants (its "File-I/O" protocol: flags, modes and `errno` values are
/// gdb's own numbers, not the host's).
pub mod host_io {
    /// `O_RDONLY`.
    pub const O_RDONLY: u64 = 0x0;
    /// `O_WRONLY`.
    pub const O_WRONLY: u64 = 0x1;
    /// `O_RDWR`.
    pub const O_RDWR: u64 = 0x2;
    /// `O_APPEND`.
    pub const O_APPEND: u64 = 0x8;
    /// `O_CREAT`.
    pub const O_CREAT: u64 = 0x200;
    /// `O_TRUNC`.
    pub const O_TRUNC: u64 = 0x400;
    /// `O_EXCL`.
    pub const O_EXCL: u64 = 0x800;
    /// `S_IFREG`: a regular file (in `st_mode`).
    pub const S_IFREG: u32 = 0o100000;
    /// `ENOENT`: no such file.
    pub const ENOENT: u32 = 2;
    /// `EBADF`: not an open descriptor.
    pub const EBADF: u32 = 9;
    /// `EACCES`: permission denied.
    pub const EACCES: u32 = 13;
    /// `EINVAL`: invalid argument (`readlink` of a file that is not a link).
    pub const EINVAL: u32 = 22;
    /// `EMFILE`: too many open files.
    pub const EMFILE: u32 = 24;
    /// `EROFS`: read-only file system.
    pub const EROFS: u32 = 30;
    /// `ENAMETOOLONG`.
    pub const ENAMETOOLONG: u32 = 91;
    /// `EUNKNOWN`: any other error.
    pub const EUNKNOWN: u32 = 9999;
    /// The size of gdb's `struct stat` as `vFile:fstat` returns it (every field
    /// big-endian: `st_dev`, `st_ino`, `st_mode`, `st_nlink`, `st_uid`, `st_gid`,
    /// `st_rdev` of 4 bytes, `st_size`, `st_blksize`, `st_blocks` of 8, then `st_atime`,
    /// `st_mtime`, `st_ctime` of 4).
    pub const STAT_SIZE: usize = 64;

    /// gdb's `struct stat` of a read-only regular file of `size` bytes (see
    /// [`STAT_SIZE`]); `ino` tells files apart.
    pub fn stat_regular_file(size: u64, ino: u32) -> [u8; STAT_SIZE] {
        let mut st = [0u8; STAT_SIZE];
        let mut put = |at: usize, bytes: &[u8]| {
            if let Some(slot) = st.get_mut(at..at + bytes.len()) {
                slot.copy_from_slice(bytes);
            }
        };
        put(4, &ino.to_be_bytes());
        put(8, &(S_IFREG | 0o444).to_be_bytes());
        put(12, &1u32.to_be_bytes());
        put(28, &size.to_be_bytes());
        put(36, &4096u64.to_be_bytes());
        put(44, &size.div_ceil(512).to_be_bytes());
        st
    }
}

impl HostIo<'_> {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"vFile:");
        let nums = |op: &[u8], values: &[u64], out: &mut Vec<u8>| {
            out.extend_from_slice(op);
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_hex_u64(*v, out);
            }
        };
        match self {
            HostIo::Setfs(pid) => nums(b"setfs:", &[*pid], out),
            HostIo::Open { name, flags, mode } => {
                out.extend_from_slice(b"open:");
                name.encode_into(out);
                out.push(b',');
                nums(b"", &[*flags, *mode], out);
            }
            HostIo::Close(fd) => nums(b"close:", &[*fd], out),
            HostIo::Pread { fd, count, offset } => nums(b"pread:", &[*fd, *count, *offset], out),
            HostIo::Pwrite { fd, offset, data } => {
                nums(b"pwrite:", &[*fd, *offset], out);
                out.push(b',');
                out.extend_from_slice(data);
            }
            HostIo::Fstat(fd) => nums(b"fstat:", &[*fd], out),
            HostIo::Unlink(name) => {
                out.extend_from_slice(b"unlink:");
                name.encode_into(out);
            }
            HostIo::Readlink(name) => {
                out.extend_from_slice(b"readlink:");
                name.encode_into(out);
            }
        }
    }

    /// Parses what follows `vFile:`.
    fn parse(args: &[u8]) -> Option<HostIo<'_>> {
        let (op, rest) = args.split_at(args.iter().position(|&c| c == b':')?);
        let rest = rest.get(1..)?;
        let comma = || preceded(lit(b","), hex_u64());
        match op {
            b"setfs" => whole(rest, hex_u64()).map(HostIo::Setfs),
            b"open" => whole(rest, (hex_name(), comma(), comma()))
                .map(|(name, flags, mode)| HostIo::Open { name, flags, mode }),
            b"close" => whole(rest, hex_u64()).map(HostIo::Close),
            b"pread" => whole(rest, (hex_u64(), comma(), comma()))
                .map(|(fd, count, offset)| HostIo::Pread { fd, count, offset }),
            b"pwrite" => whole(
                rest,
                (
                    hex_u64(),
                    comma(),
                    preceded(lit(b","), nom::combinator::rest),
                ),
            )
            .map(|(fd, offset, data)| HostIo::Pwrite { fd, offset, data }),
            b"fstat" => whole(rest, hex_u64()).map(HostIo::Fstat),
            b"unlink" => whole(rest, hex_name()).map(HostIo::Unlink),
            b"readlink" => whole(rest, hex_name()).map(HostIo::Readlink),
            _ => None,
        }
    }
}

/// A hex-encoded file name (up to the next `,`).
fn hex_name<'a>() -> impl Parser<In<'a>, Output = HexBytes<'a>, Error = PErr<'a>> {
    nom::combinator::map_opt(take_while1(|c: u8| c != b','), HexBytes::hex)
}

/// A command from a client, parsed from one packet payload (and borrowing from it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command<'a> {
    /// `qSupported[:features]`.
    QSupported(Features<'a>),
    /// `vMustReplyEmpty` (the stub must answer with the empty packet).
    MustReplyEmpty,
    /// `QStartNoAckMode`.
    StartNoAckMode,
    /// `Hg`/`Hc` + thread.
    SetThread(ThreadOp, ThreadSel),
    /// `qXfer:OBJECT:read:ANNEX:OFFSET,LENGTH`.
    XferRead {
        /// The object.
        object: XferObject<'a>,
        /// The annex (`target.xml` for features; empty for libraries).
        annex: &'a [u8],
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
    WriteRegisters(HexBytes<'a>),
    /// `p` + register number.
    ReadRegister(u32),
    /// `Pn=hex`.
    WriteRegister {
        /// Register number.
        reg: u32,
        /// Its new value, target byte order.
        value: HexBytes<'a>,
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
        data: HexBytes<'a>,
    },
    /// `XADDR,LEN:binary`.
    WriteMemoryBinary {
        /// Start address.
        addr: u64,
        /// The bytes (possibly none: gdb probes with a zero-length `X`).
        data: &'a [u8],
    },
    /// `qSearch:memory:ADDR;LEN;PATTERN`.
    SearchMemory {
        /// Start address.
        addr: u64,
        /// Length of the range.
        len: u64,
        /// The raw pattern.
        pattern: &'a [u8],
    },
    /// `qCRC:ADDR,LEN`: the CRC-32 of a range, as gdb's `compare-sections` asks for it
    /// (see [`crc32`](super::crc32)).
    Crc {
        /// Start address.
        addr: u64,
        /// Length of the range.
        len: u64,
    },
    /// `qRcmd,hex` (`monitor` text).
    Monitor(HexBytes<'a>),
    /// `Z` + type,addr,kind.
    InsertBreakpoint(Breakpoint),
    /// `z` + type,addr,kind.
    RemoveBreakpoint(Breakpoint),
    /// `vCont?`.
    VContQuery,
    /// `vCont;ACTION[:TID]...`.
    VCont(ResumeActions<'a>),
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
    /// `vFile:…`: host I/O, gdb reading the target's files.
    HostIo(HostIo<'a>),
    /// `QTagsplit.RunLimit:TICKS`: **tagsplit's own extension**, not a gdb packet. The
    /// next resume runs at most this many ticks of the target's clock, then stops with
    /// `T02` (0 = no limit). Offered in `qSupported` as `QTagsplit.RunLimit+` only by stubs
    /// whose target opts into [`RunLimitOps`](crate::stub::RunLimitOps).
    RunLimit(u64),
    /// A packet this crate does not know (answered with the empty reply: unsupported).
    Unknown(&'a [u8]),
    /// A packet this crate knows whose arguments are malformed (answered with an `E`
    /// reply, not the empty one: the command is supported, the request is wrong).
    Malformed(&'a [u8]),
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

fn hex_data<'a>() -> impl Parser<In<'a>, Output = HexBytes<'a>, Error = PErr<'a>> {
    nom::combinator::map_opt(rest, HexBytes::hex)
}

/// The name a `q`, `Q` or `v` packet is known by: up to its first `:`, `,`, `;` or `?`.
fn packet_name(payload: &[u8]) -> &[u8] {
    payload
        .split(|&c| matches!(c, b':' | b',' | b';' | b'?'))
        .next()
        .unwrap_or_default()
}

/// The whole payload through `parser`, which must consume all of it.
fn whole<'a, O>(
    payload: In<'a>,
    parser: impl Parser<In<'a>, Output = O, Error = PErr<'a>>,
) -> Option<O> {
    all_consuming(parser)
        .parse_complete(payload)
        .ok()
        .map(|(_, o)| o)
}

/// `Z`/`z` arguments: `TYPE,ADDR,KIND[;cond...]`.
fn breakpoint<'a>() -> impl Parser<In<'a>, Output = Breakpoint, Error = PErr<'a>> {
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
}

/// Parses a known command: the first byte (and for `q`, `Q` and `v` packets the name)
/// picks the one grammar that can match, so a packet costs one grammar, not a search
/// through all of them. `None` when that grammar does not take the whole payload or no
/// grammar is known for it.
fn parse_known(payload: &[u8]) -> Option<Command<'_>> {
    let (&first, args) = payload.split_first()?;
    match first {
        b'q' | b'Q' | b'v' => parse_named(payload),
        b'c' => whole(args, opt(hex_u64())).map(Command::Continue),
        b's' => whole(args, opt(hex_u64())).map(Command::Step),
        b'D' => whole(args, opt(preceded(lit(b";"), hex_u64()))).map(Command::Detach),
        b'k' => args.is_empty().then_some(Command::Kill),
        b'?' => args.is_empty().then_some(Command::HaltReason),
        b'H' => whole(
            args,
            (
                alt((
                    value(ThreadOp::General, lit(b"g")),
                    value(ThreadOp::Continue, lit(b"c")),
                )),
                ThreadSel::parser(),
            ),
        )
        .map(|(op, t)| Command::SetThread(op, t)),
        b'g' => args.is_empty().then_some(Command::ReadRegisters),
        b'G' => whole(args, hex_data()).map(Command::WriteRegisters),
        b'p' => whole(args, hex_u32()).map(Command::ReadRegister),
        b'P' => whole(args, separated_pair(hex_u32(), lit(b"="), hex_data()))
            .map(|(reg, value)| Command::WriteRegister { reg, value }),
        b'm' => whole(args, addr_len()).map(|(addr, len)| Command::ReadMemory { addr, len }),
        b'x' => whole(args, addr_len()).map(|(addr, len)| Command::ReadMemoryBinary { addr, len }),
        b'M' => whole(args, separated_pair(addr_len(), lit(b":"), hex_data()))
            .filter(|((_, len), data)| *len == data.len() as u64)
            .map(|((addr, _), data)| Command::WriteMemory { addr, data }),
        b'X' => whole(args, separated_pair(addr_len(), lit(b":"), rest))
            .filter(|((_, len), data)| *len == data.len() as u64)
            .map(|((addr, _), data)| Command::WriteMemoryBinary { addr, data }),
        b'Z' => whole(args, breakpoint()).map(Command::InsertBreakpoint),
        b'z' => whole(args, breakpoint()).map(Command::RemoveBreakpoint),
        _ => None,
    }
}

/// The `q`, `Q` and `v` packets, by name.
fn parse_named(payload: &[u8]) -> Option<Command<'_>> {
    let name = packet_name(payload);
    let args = payload.get(name.len()..).unwrap_or_default();
    match name {
        b"qSupported" => whole(args, opt(preceded(lit(b":"), rest)))
            .map(|f| Command::QSupported(Features::new(f.unwrap_or_default()))),
        b"vMustReplyEmpty" => args.is_empty().then_some(Command::MustReplyEmpty),
        b"QStartNoAckMode" => args.is_empty().then_some(Command::StartNoAckMode),
        b"QTagsplit.RunLimit" => whole(args, preceded(lit(b":"), hex_u64())).map(Command::RunLimit),
        b"qXfer" => whole(
            args,
            (
                preceded(lit(b":"), take_while1(|c| c != b':')),
                preceded(lit(b":read:"), nom::bytes::take_while(|c| c != b':')),
                preceded(lit(b":"), addr_len()),
            ),
        )
        .map(|(object, annex, (offset, length))| Command::XferRead {
            object: XferObject::from_name(object),
            annex,
            offset,
            length,
        }),
        b"qTStatus" => args.is_empty().then_some(Command::TraceStatus),
        b"qfThreadInfo" => args.is_empty().then_some(Command::ThreadInfoFirst),
        b"qsThreadInfo" => args.is_empty().then_some(Command::ThreadInfoNext),
        b"qC" => args.is_empty().then_some(Command::CurrentThread),
        b"qAttached" => whole(args, opt(preceded(lit(b":"), hex_u64()))).map(Command::Attached),
        b"qSearch" => whole(
            args,
            (
                preceded(lit(b":memory:"), hex_u64()),
                preceded(lit(b";"), hex_u64()),
                preceded(lit(b";"), rest),
            ),
        )
        .map(|(addr, len, pattern)| Command::SearchMemory { addr, len, pattern }),
        b"qCRC" => whole(args, preceded(lit(b":"), addr_len()))
            .map(|(addr, len)| Command::Crc { addr, len }),
        b"qRcmd" => whole(args, preceded(lit(b","), hex_data())).map(Command::Monitor),
        b"vCont" if args == b"?" => Some(Command::VContQuery),
        b"vCont" => whole(
            args,
            recognize(fold_many0(
                preceded(lit(b";"), ResumeAction::parser()),
                || (),
                |(), _| (),
            )),
        )
        .map(|wire| Command::VCont(ResumeActions::Wire(wire))),
        b"vKill" => whole(args, opt(preceded(lit(b";"), hex_u64()))).map(Command::VKill),
        b"vFile" => HostIo::parse(args.strip_prefix(b":")?).map(Command::HostIo),
        _ => None,
    }
}

/// Whether `payload` is a command this crate knows (whatever its arguments).
fn is_known(payload: &[u8]) -> bool {
    match payload.first() {
        Some(
            b'c' | b's' | b'D' | b'k' | b'?' | b'H' | b'g' | b'G' | b'p' | b'P' | b'm' | b'M'
            | b'x' | b'X' | b'Z' | b'z',
        ) => true,
        Some(b'q' | b'Q' | b'v') => {
            let mut parts = payload.split(|&c| matches!(c, b':' | b',' | b';' | b'?'));
            match parts.next().unwrap_or_default() {
                b"qSupported"
                | b"vMustReplyEmpty"
                | b"QStartNoAckMode"
                | b"QTagsplit.RunLimit"
                | b"qTStatus"
                | b"qfThreadInfo"
                | b"qsThreadInfo"
                | b"qC"
                | b"qAttached"
                | b"qCRC"
                | b"qRcmd"
                | b"vCont"
                | b"vKill" => true,
                b"qXfer" => payload.split(|&c| c == b':').nth(2) == Some(&b"read"[..]),
                b"qSearch" => payload.starts_with(b"qSearch:memory:"),
                b"vFile" => matches!(
                    parts.next(),
                    Some(
                        b"setfs"
                            | b"open"
                            | b"close"
                            | b"pread"
                            | b"pwrite"
                            | b"fstat"
                            | b"unlink"
                            | b"readlink"
                    )
                ),
                _ => false,
            }
        }
        _ => false,
    }
}

impl<'a> Command<'a> {
    /// Parses one packet payload, borrowing from it. A packet this crate does not know is
    /// [`Command::Unknown`]; a known one with malformed arguments is
    /// [`Command::Malformed`].
    pub fn parse(payload: &'a [u8]) -> Command<'a> {
        match parse_known(payload) {
            Some(cmd) => cmd,
            None if is_known(payload) => Command::Malformed(payload),
            None => Command::Unknown(payload),
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
            Command::Crc { .. } => ReplyKind::Crc,
            Command::Monitor(_) => ReplyKind::Monitor,
            Command::HostIo(_) => ReplyKind::HostIo,
            Command::VContQuery => ReplyKind::VContSupported,
            Command::Continue(_) | Command::Step(_) | Command::VCont(_) => ReplyKind::Stop,
            Command::Detach(_) | Command::Kill | Command::VKill(_) => ReplyKind::Status,
            Command::Unknown(_) | Command::Malformed(_) | Command::TraceStatus => ReplyKind::Raw,
            _ => ReplyKind::Status,
        }
    }

    /// Appends the packet payload (unescaped; framing escapes it) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Command::QSupported(features) => {
                out.extend_from_slice(b"qSupported");
                if !features.text().is_empty() {
                    out.push(b':');
                    out.extend_from_slice(features.text());
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
                out.extend_from_slice(object.name());
                out.extend_from_slice(b":read:");
                out.extend_from_slice(annex);
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
                data.encode_into(out);
            }
            Command::ReadRegister(n) => {
                out.push(b'p');
                push_hex_u64(u64::from(*n), out);
            }
            Command::WriteRegister { reg, value } => {
                out.push(b'P');
                push_hex_u64(u64::from(*reg), out);
                out.push(b'=');
                value.encode_into(out);
            }
            Command::ReadMemory { addr, len } => encode_addr_len(b'm', *addr, *len, out),
            Command::ReadMemoryBinary { addr, len } => encode_addr_len(b'x', *addr, *len, out),
            Command::WriteMemory { addr, data } => {
                encode_addr_len(b'M', *addr, data.len() as u64, out);
                out.push(b':');
                data.encode_into(out);
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
            Command::Crc { addr, len } => {
                out.extend_from_slice(b"qCRC:");
                push_hex_u64(*addr, out);
                out.push(b',');
                push_hex_u64(*len, out);
            }
            Command::Monitor(text) => {
                out.extend_from_slice(b"qRcmd,");
                text.encode_into(out);
            }
            Command::InsertBreakpoint(bp) => encode_breakpoint(b'Z', bp, out),
            Command::RemoveBreakpoint(bp) => encode_breakpoint(b'z', bp, out),
            Command::VContQuery => out.extend_from_slice(b"vCont?"),
            Command::VCont(actions) => {
                out.extend_from_slice(b"vCont");
                for a in actions.iter() {
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
            Command::HostIo(io) => io.encode_into(out),
            Command::RunLimit(ticks) => {
                out.extend_from_slice(b"QTagsplit.RunLimit:");
                push_hex_u64(*ticks, out);
            }
            Command::Unknown(raw) | Command::Malformed(raw) => out.extend_from_slice(raw),
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
        let f: Vec<Feature> = f.iter().collect();
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
                annex: b"target.xml",
                offset: 0,
                length: 0x1000,
            },
        );
        round_trip(
            b"qXfer:libraries:read::0,1000",
            Command::XferRead {
                object: XferObject::Libraries,
                annex: b"",
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
                data: HexBytes::raw(&[0x31]),
            },
        );
        round_trip(
            b"X140001010,0:",
            Command::WriteMemoryBinary {
                addr: 0x1_4000_1010,
                data: &[],
            },
        );
        round_trip(
            b"X140001010,2:#}",
            Command::WriteMemoryBinary {
                addr: 0x1_4000_1010,
                data: b"#}",
            },
        );
        round_trip(b"p10", Command::ReadRegister(0x10));
        round_trip(
            b"P10=0102",
            Command::WriteRegister {
                reg: 0x10,
                value: HexBytes::raw(&[1, 2]),
            },
        );
        round_trip(b"G0102", Command::WriteRegisters(HexBytes::raw(&[1, 2])));
        // Known commands with bad arguments are malformed, not unknown.
        for bad in [
            &b"M1,2:31"[..],
            b"m1,",
            b"m11112222333344445,1",
            b"Mzz,1:00",
            b"G123",
            b"Z9,1,1",
            b"qXfer:features:read:target.xml:0",
            b"qRcmd,6",
            b"vCont;q",
            b"qSearch:memory:1",
            b"gx",
        ] {
            assert_eq!(Command::parse(bad), Command::Malformed(bad));
        }
        assert_eq!(
            Command::parse(b"qCRC:1,2"),
            Command::Crc { addr: 1, len: 2 }
        );
        assert_eq!(Command::parse(b"qCRC:1"), Command::Malformed(b"qCRC:1"));
        for unknown in [
            &b"qGetTLSAddr:1,2,3"[..],
            b"vFile:mkdir:78",
            b"qXfer:features:write:x:0:",
            b"!",
        ] {
            assert_eq!(Command::parse(unknown), Command::Unknown(unknown));
        }
        // Hex text is kept as received and compares by its bytes.
        let Command::WriteMemory { data, .. } = Command::parse(b"M10,2:4C6b") else {
            panic!()
        };
        assert_eq!(data, HexBytes::raw(b"Lk"));
        assert_eq!(data.to_vec(), b"Lk");
    }

    #[test]
    fn host_io_requests() {
        round_trip(b"vFile:setfs:0", Command::HostIo(HostIo::Setfs(0)));
        // gdb 13's open of `/SystemRoot/x`, read-only.
        round_trip(
            b"vFile:open:2f53797374656d526f6f742f78,0,0",
            Command::HostIo(HostIo::Open {
                name: HexBytes::raw(b"/SystemRoot/x"),
                flags: host_io::O_RDONLY,
                mode: 0,
            }),
        );
        round_trip(
            b"vFile:pread:3,4000,e00",
            Command::HostIo(HostIo::Pread {
                fd: 3,
                count: 0x4000,
                offset: 0xe00,
            }),
        );
        round_trip(
            b"vFile:pwrite:3,10,a,b#",
            Command::HostIo(HostIo::Pwrite {
                fd: 3,
                offset: 0x10,
                data: b"a,b#",
            }),
        );
        round_trip(b"vFile:close:3", Command::HostIo(HostIo::Close(3)));
        round_trip(b"vFile:fstat:3", Command::HostIo(HostIo::Fstat(3)));
        round_trip(
            b"vFile:unlink:78",
            Command::HostIo(HostIo::Unlink(HexBytes::raw(b"x"))),
        );
        round_trip(
            b"vFile:readlink:78",
            Command::HostIo(HostIo::Readlink(HexBytes::raw(b"x"))),
        );
        assert_eq!(
            Command::parse(b"vFile:pread:3,4000,e00").reply_kind(),
            ReplyKind::HostIo
        );
        // Known requests with bad arguments: an error, not "unsupported".
        for bad in [
            &b"vFile:open:2f7,0,0"[..],
            b"vFile:open:2f78,0",
            b"vFile:open:,0,0",
            b"vFile:pread:3,4000",
            b"vFile:pread:3,4000,e00,1",
            b"vFile:close:",
            b"vFile:fstat:zz",
            b"vFile:setfs",
            b"vFile:pread:11112222333344445,1,0",
        ] {
            assert_eq!(Command::parse(bad), Command::Malformed(bad), "{bad:?}");
        }
        let st = host_io::stat_regular_file(0xe00, 7);
        assert_eq!(&st[4..8], &7u32.to_be_bytes());
        assert_eq!(&st[8..12], &0o100444u32.to_be_bytes());
        assert_eq!(&st[28..36], &0xe00u64.to_be_bytes());
        assert_eq!(&st[44..52], &7u64.to_be_bytes());
    }

    #[test]
    fn search_monitor_breakpoints_resume() {
        round_trip(
            b"qSearch:memory:140000000;4000;Leak",
            Command::SearchMemory {
                addr: 0x1_4000_0000,
                len: 0x4000,
                pattern: b"Leak",
            },
        );
        round_trip(b"qRcmd,68656c70", Command::Monitor(HexBytes::raw(b"help")));
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
            Command::VCont(ResumeActions::list(&[
                ResumeAction {
                    kind: ResumeKind::Step,
                    thread: Some(ThreadSel::thread(ThreadId::Id(1))),
                },
                ResumeAction {
                    kind: ResumeKind::Continue,
                    thread: None,
                },
            ])),
        );
        round_trip(b"c", Command::Continue(None));
        round_trip(b"c140001000", Command::Continue(Some(0x1_4000_1000)));
        round_trip(b"s", Command::Step(None));
        round_trip(b"D", Command::Detach(None));
        round_trip(b"D;1", Command::Detach(Some(1)));
        round_trip(b"k", Command::Kill);
        round_trip(b"vKill;a", Command::VKill(Some(10)));
        round_trip(b"qMARK:find", Command::Unknown(b"qMARK:find"));
        round_trip(b"QTagsplit.RunLimit:3e8", Command::RunLimit(1000));
    }
}
