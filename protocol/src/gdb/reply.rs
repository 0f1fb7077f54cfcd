//! Typed replies: what a stub sends back.
//!
//! Encoding is context-free; parsing needs to know which command was asked
//! ([`ReplyKind`], from [`Command::reply_kind`](super::Command::reply_kind)), because the
//! same text means different things (`1` is "attached" to `qAttached` and hex data to `m`).

use super::command::{Feature, ThreadId, ThreadSel};
use super::hex::{
    decode_hex, decode_register_hex, encode_hex_into, parse_hex_u64, push_hex_u8, push_hex_u64,
    push_op_hex_u8,
};
use nom::Parser;

/// Errors parsing a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The reply does not fit the kind of reply expected.
    #[error("malformed {kind:?} reply: {text}")]
    Malformed {
        /// What was expected.
        kind: ReplyKind,
        /// The start of the offending payload, lossily decoded.
        text: String,
    },
}

/// Which kind of reply a command gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplyKind {
    /// `OK`, `Exx` or empty.
    Status,
    /// Hex data (`m`, `g`, `p`); `xx` means unavailable.
    Hex,
    /// `b` + binary data (`x`).
    Binary,
    /// A stop reply (`?`, `c`, `s`, `vCont`), possibly after `O` output.
    Stop,
    /// A `qXfer` chunk (`l`/`m` + data).
    Xfer,
    /// A `qSupported` feature list.
    Supported,
    /// A `qSearch:memory` answer (`0` or `1,ADDR`).
    Search,
    /// A `qCRC` answer (`C` + the CRC in hex).
    Crc,
    /// A thread list (`m01,02` or `l`).
    ThreadInfo,
    /// `QC` + thread.
    CurrentThread,
    /// `1` or `0`.
    Attached,
    /// `O` output lines then `OK` (`qRcmd`).
    Monitor,
    /// `vCont;c;s…`.
    VContSupported,
    /// A host I/O answer (`F…`, see [`HostIoReply`]).
    HostIo,
    /// Anything, kept as raw bytes.
    Raw,
}

/// Why a thread stopped, as reported in a `T` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopKind {
    /// `swbreak:` — a software breakpoint the client inserted.
    SwBreak,
    /// `hwbreak:` — a hardware breakpoint the client inserted.
    HwBreak,
}

/// Registers a `T` stop reply carries as `NN:VALUE;` pairs (gdb's x86-64 register
/// numbers: 6 `rbp`, 7 `rsp`, 0x10 `rip`; values as target-order hex), so that neither
/// gdb nor our client has to ask for them before showing where the target stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Expedited {
    /// `rbp` (register 6).
    pub rbp: u64,
    /// `rsp` (register 7).
    pub rsp: u64,
    /// `rip` (register 0x10).
    pub rip: u64,
}

impl Expedited {
    /// The registers by gdb number, in the order they are sent.
    fn numbered(&self) -> [(u8, u64); 3] {
        [(0x06, self.rbp), (0x07, self.rsp), (0x10, self.rip)]
    }
}

/// A stop reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReply {
    /// `Sxx` or `Txx…`: stopped with a signal.
    Signal {
        /// The signal (5 = SIGTRAP, 2 = SIGINT).
        signal: u8,
        /// The thread, if reported.
        thread: Option<ThreadId>,
        /// The breakpoint kind, if a client breakpoint was hit.
        reason: Option<StopKind>,
        /// `rbp`, `rsp` and `rip`, when the reply carries all three.
        registers: Option<Expedited>,
    },
    /// `Wxx`: the process exited with this status.
    Exited(u8),
    /// `Xxx`: the process was terminated by this signal.
    Terminated(u8),
}

/// SIGINT, reported after an interrupt.
pub const SIGINT: u8 = 0x02;
/// SIGTRAP, reported after a breakpoint or a step.
pub const SIGTRAP: u8 = 0x05;

impl StopReply {
    /// A `T` stop reply for `thread` with `signal` and an optional breakpoint kind.
    pub fn thread(signal: u8, thread: u64, reason: Option<StopKind>) -> Self {
        StopReply::Signal {
            signal,
            thread: Some(ThreadId::Id(thread)),
            reason,
            registers: None,
        }
    }

    /// The same reply carrying `registers` (a `T` reply; `Exited`/`Terminated` are
    /// returned as they are).
    pub fn with_registers(self, registers: Expedited) -> Self {
        match self {
            StopReply::Signal {
                signal,
                thread,
                reason,
                ..
            } => StopReply::Signal {
                signal,
                thread,
                reason,
                registers: Some(registers),
            },
            other => other,
        }
    }

    /// Appends the reply text.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match *self {
            StopReply::Signal {
                signal,
                thread: None,
                reason: None,
                registers: None,
            } => push_op_hex_u8(b'S', signal, out),
            StopReply::Signal {
                signal,
                thread,
                reason,
                registers,
            } => {
                push_op_hex_u8(b'T', signal, out);
                if let Some(t) = thread {
                    out.extend_from_slice(b"thread:");
                    if let ThreadId::Id(id) = t
                        && id < 0x10
                    {
                        out.push(b'0');
                    }
                    t.encode_into(out);
                    out.push(b';');
                }
                match reason {
                    Some(StopKind::SwBreak) => out.extend_from_slice(b"swbreak:;"),
                    Some(StopKind::HwBreak) => out.extend_from_slice(b"hwbreak:;"),
                    None => {}
                }
                for (number, value) in registers.iter().flat_map(Expedited::numbered) {
                    push_hex_u8(number, out);
                    out.push(b':');
                    encode_hex_into(&value.to_le_bytes(), out);
                    out.push(b';');
                }
            }
            StopReply::Exited(code) => push_op_hex_u8(b'W', code, out),
            StopReply::Terminated(sig) => push_op_hex_u8(b'X', sig, out),
        }
    }

    /// Parses a stop reply.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let (&op, rest) = payload.split_first()?;
        let sig = rest
            .get(..2)
            .and_then(decode_hex)
            .and_then(|v| v.first().copied())?;
        let tail = rest.get(2..)?;
        match op {
            b'S' if tail.is_empty() => Some(StopReply::Signal {
                signal: sig,
                thread: None,
                reason: None,
                registers: None,
            }),
            b'W' => Some(StopReply::Exited(sig)),
            b'X' => Some(StopReply::Terminated(sig)),
            b'T' => {
                let mut thread = None;
                let mut reason = None;
                let (mut rbp, mut rsp, mut rip) = (None, None, None);
                for pair in tail.split(|&c| c == b';').filter(|p| !p.is_empty()) {
                    let mut kv = pair.splitn(2, |&c| c == b':');
                    let key = kv.next()?;
                    let val = kv.next()?;
                    match key {
                        b"thread" => {
                            let (_, sel) = ThreadSel::parser().parse_complete(val).ok()?;
                            thread = Some(sel.thread);
                        }
                        b"swbreak" => reason = Some(StopKind::SwBreak),
                        b"hwbreak" => reason = Some(StopKind::HwBreak),
                        // An expedited register: two hex digits, then 8 bytes in hex.
                        [h, l] => {
                            let number = decode_hex(&[*h, *l]).and_then(|v| v.first().copied());
                            let value = decode_hex(val)
                                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                                .map(u64::from_le_bytes);
                            if let (Some(n), Some(v)) = (number, value) {
                                match n {
                                    0x06 => rbp = Some(v),
                                    0x07 => rsp = Some(v),
                                    0x10 => rip = Some(v),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                let registers = match (rbp, rsp, rip) {
                    (Some(rbp), Some(rsp), Some(rip)) => Some(Expedited { rbp, rsp, rip }),
                    _ => None,
                };
                Some(StopReply::Signal {
                    signal: sig,
                    thread,
                    reason,
                    registers,
                })
            }
            _ => None,
        }
    }
}

/// The answer to a host I/O request ([`HostIo`](super::HostIo)): `F` + a result in hex,
/// `F-1,ERRNO` on failure (gdb's `errno` numbers, [`host_io`](super::command::host_io)).
/// `pread`, `fstat` and `readlink` answer with their data after a `;` (binary; framing
/// escapes it), and gdb requires the `;` with them even for no data (an empty read at the
/// end of a file is `F0;`), and without it for the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostIoReply {
    /// `Fvalue`: a descriptor (`open`), 0 (`close`, `setfs`).
    Value(u64),
    /// `FLEN;DATA`: the bytes read, a `struct stat`, a link's target.
    Data(Vec<u8>),
    /// `F-1,errno`.
    Error(u32),
}

impl HostIoReply {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(b'F');
        match self {
            HostIoReply::Value(value) => push_hex_u64(*value, out),
            HostIoReply::Data(data) => {
                push_hex_u64(data.len() as u64, out);
                out.push(b';');
                out.extend_from_slice(data);
            }
            HostIoReply::Error(errno) => {
                out.extend_from_slice(b"-1,");
                push_hex_u64(u64::from(*errno), out);
            }
        }
    }

    fn parse(payload: &[u8]) -> Option<Self> {
        let body = payload.strip_prefix(b"F")?;
        let Some(at) = body.iter().position(|&c| c == b';') else {
            return match body.strip_prefix(b"-1,") {
                Some(errno) => Some(HostIoReply::Error(
                    u32::try_from(parse_hex_u64(errno)?).ok()?,
                )),
                None => parse_hex_u64(body).map(HostIoReply::Value),
            };
        };
        let len = parse_hex_u64(body.get(..at)?)?;
        let data = body.get(at + 1..)?;
        (len == data.len() as u64).then(|| HostIoReply::Data(data.to_vec()))
    }
}

/// A reply from a stub.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// `OK`.
    Ok,
    /// `Exx`.
    Error(u8),
    /// `E.text` (an error with a message).
    ErrorText(String),
    /// The empty reply: unsupported command.
    Empty,
    /// A stop reply.
    Stop(StopReply),
    /// `O` + hex: console output (during `qRcmd` or while running).
    Output(Vec<u8>),
    /// Hex data (memory, registers).
    Hex(Vec<u8>),
    /// `b` + binary data (the reply to `x`).
    Binary(Vec<u8>),
    /// A `qXfer` chunk: `m` + data if more follows, `l` + data if last.
    Xfer {
        /// Whether more data follows.
        more: bool,
        /// The chunk.
        data: Vec<u8>,
    },
    /// The `qSupported` reply.
    Supported(Vec<Feature>),
    /// The `qSearch:memory` reply: `1,ADDR` or `0`.
    SearchResult(Option<u64>),
    /// The `qCRC` reply: `C` + the CRC-32 in hex.
    Crc(u32),
    /// `m` + thread ids.
    ThreadList(Vec<ThreadId>),
    /// `l`: end of the thread list.
    ThreadListEnd,
    /// `QC` + thread.
    CurrentThread(ThreadId),
    /// `qAttached`: `1` attached to an existing process, `0` created one.
    Attached(bool),
    /// `vCont;…`: the supported actions (`c`, `C`, `s`, `S`, …).
    VContSupported(Vec<String>),
    /// A host I/O answer.
    HostIo(HostIoReply),
    /// Anything else, verbatim.
    Raw(Vec<u8>),
}

/// Most payload bytes [`Reply`]'s `Display` shows before it cuts the text short.
pub const DISPLAY_LIMIT: usize = 96;

/// Packet bytes as text people read in a log or an error: printable ASCII as is, a
/// backslash as `\\`, anything else as `\xNN`; cut after `limit` bytes with how many
/// there were (`…(1,234 bytes)`).
pub fn packet_text(bytes: &[u8], limit: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(limit) + 16);
    for &b in bytes.iter().take(limit) {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = std::fmt::Write::write_fmt(&mut out, format_args!("\\x{b:02x}"));
            }
        }
    }
    if bytes.len() > limit {
        let _ = std::fmt::Write::write_fmt(&mut out, format_args!("…({} bytes)", bytes.len()));
    }
    out
}

/// The reply as it crossed the wire (its payload as text, see [`packet_text`]), e.g.
/// `'T05thread:01;'` or `'E0e'`, not a list of byte values.
impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut payload = Vec::new();
        self.encode_into(&mut payload);
        if payload.is_empty() {
            return f.write_str("the empty reply");
        }
        write!(f, "'{}'", packet_text(&payload, DISPLAY_LIMIT))
    }
}

impl Reply {
    /// Appends the packet payload (unescaped; framing escapes it) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Ok => out.extend_from_slice(b"OK"),
            Reply::Error(code) => push_op_hex_u8(b'E', *code, out),
            Reply::ErrorText(text) => {
                out.extend_from_slice(b"E.");
                out.extend_from_slice(text.as_bytes());
            }
            Reply::Empty => {}
            Reply::Stop(stop) => stop.encode_into(out),
            Reply::Output(text) => {
                out.push(b'O');
                encode_hex_into(text, out);
            }
            Reply::Hex(data) => encode_hex_into(data, out),
            Reply::Binary(data) => {
                out.push(b'b');
                out.extend_from_slice(data);
            }
            Reply::Xfer { more, data } => {
                out.push(if *more { b'm' } else { b'l' });
                out.extend_from_slice(data);
            }
            Reply::Supported(features) => Feature::encode_list_into(features, out),
            Reply::Crc(crc) => {
                out.push(b'C');
                push_hex_u64(u64::from(*crc), out);
            }
            Reply::SearchResult(None) => out.push(b'0'),
            Reply::SearchResult(Some(addr)) => {
                out.extend_from_slice(b"1,");
                push_hex_u64(*addr, out);
            }
            Reply::ThreadList(ids) => {
                out.push(b'm');
                for (i, t) in ids.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    if let ThreadId::Id(id) = t
                        && *id < 0x10
                    {
                        out.push(b'0');
                    }
                    t.encode_into(out);
                }
            }
            Reply::ThreadListEnd => out.push(b'l'),
            Reply::CurrentThread(t) => {
                out.extend_from_slice(b"QC");
                t.encode_into(out);
            }
            Reply::Attached(a) => out.push(if *a { b'1' } else { b'0' }),
            Reply::VContSupported(actions) => {
                out.extend_from_slice(b"vCont");
                for a in actions {
                    out.push(b';');
                    out.extend_from_slice(a.as_bytes());
                }
            }
            Reply::HostIo(io) => io.encode_into(out),
            Reply::Raw(raw) => out.extend_from_slice(raw),
        }
    }

    /// Returns the packet payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Parses a reply to a command of `kind`.
    pub fn parse(kind: ReplyKind, payload: &[u8]) -> Result<Reply, ReplyError> {
        let bad = || ReplyError::Malformed {
            kind,
            text: String::from_utf8_lossy(payload.get(..payload.len().min(40)).unwrap_or_default())
                .into_owned(),
        };
        if kind == ReplyKind::Raw {
            return Ok(if payload.is_empty() {
                Reply::Empty
            } else {
                Reply::Raw(payload.to_vec())
            });
        }
        if payload.is_empty() {
            return Ok(Reply::Empty);
        }
        if let Some(text) = payload.strip_prefix(b"E.") {
            return Ok(Reply::ErrorText(String::from_utf8_lossy(text).into_owned()));
        }
        if let [b'E', h, l] = payload
            && let Some(v) = decode_hex(&[*h, *l])
        {
            return Ok(Reply::Error(v.first().copied().unwrap_or(0)));
        }
        // `Wxx`/`Xxx`: the target exited, whatever was asked (a stub whose process or
        // guest ended answers any command so). Never hex (`W`, `X` are not digits) nor
        // another kind's reply; a `qSupported` list or raw text is taken as it is.
        if !matches!(
            kind,
            ReplyKind::Supported | ReplyKind::Raw | ReplyKind::Stop
        ) && let [b'W' | b'X', _, _, rest @ ..] = payload
            && (rest.is_empty() || rest.starts_with(b";"))
            && let Some(stop @ (StopReply::Exited(_) | StopReply::Terminated(_))) =
                StopReply::parse(payload)
        {
            return Ok(Reply::Stop(stop));
        }
        if payload == b"OK" && matches!(kind, ReplyKind::Status | ReplyKind::Monitor) {
            return Ok(Reply::Ok);
        }
        if matches!(kind, ReplyKind::Monitor | ReplyKind::Stop)
            && let Some(hex) = payload.strip_prefix(b"O")
        {
            return decode_hex(hex).map(Reply::Output).ok_or_else(bad);
        }
        match kind {
            ReplyKind::Status | ReplyKind::Monitor | ReplyKind::Raw => {
                Ok(Reply::Raw(payload.to_vec()))
            }
            ReplyKind::Hex => decode_register_hex(payload).map(Reply::Hex).ok_or_else(bad),
            ReplyKind::Binary => payload
                .strip_prefix(b"b")
                .map(|d| Reply::Binary(d.to_vec()))
                .ok_or_else(bad),
            ReplyKind::Stop => StopReply::parse(payload).map(Reply::Stop).ok_or_else(bad),
            ReplyKind::Xfer => match payload.split_first() {
                Some((b'm', d)) => Ok(Reply::Xfer {
                    more: true,
                    data: d.to_vec(),
                }),
                Some((b'l', d)) => Ok(Reply::Xfer {
                    more: false,
                    data: d.to_vec(),
                }),
                _ => Err(bad()),
            },
            ReplyKind::Supported => Ok(Reply::Supported(Feature::parse_list(payload))),
            ReplyKind::Search => match payload {
                b"0" => Ok(Reply::SearchResult(None)),
                _ => payload
                    .strip_prefix(b"1,")
                    .and_then(parse_hex_u64)
                    .map(|a| Reply::SearchResult(Some(a)))
                    .ok_or_else(bad),
            },
            ReplyKind::Crc => payload
                .strip_prefix(b"C")
                .and_then(parse_hex_u64)
                .and_then(|v| u32::try_from(v).ok())
                .map(Reply::Crc)
                .ok_or_else(bad),
            ReplyKind::ThreadInfo => match payload.split_first() {
                Some((b'l', [])) => Ok(Reply::ThreadListEnd),
                Some((b'm', ids)) => ids
                    .split(|&c| c == b',')
                    .map(|id| {
                        ThreadSel::parser()
                            .parse_complete(id)
                            .ok()
                            .map(|(_, s)| s.thread)
                    })
                    .collect::<Option<Vec<_>>>()
                    .map(Reply::ThreadList)
                    .ok_or_else(bad),
                _ => Err(bad()),
            },
            ReplyKind::CurrentThread => payload
                .strip_prefix(b"QC")
                .and_then(|t| ThreadSel::parser().parse_complete(t).ok())
                .map(|(_, s)| Reply::CurrentThread(s.thread))
                .ok_or_else(bad),
            ReplyKind::Attached => match payload {
                b"1" => Ok(Reply::Attached(true)),
                b"0" => Ok(Reply::Attached(false)),
                _ => Err(bad()),
            },
            ReplyKind::VContSupported => payload
                .strip_prefix(b"vCont")
                .map(|rest| {
                    Reply::VContSupported(
                        rest.split(|&c| c == b';')
                            .filter(|a| !a.is_empty())
                            .map(|a| String::from_utf8_lossy(a).into_owned())
                            .collect(),
                    )
                })
                .ok_or_else(bad),
            ReplyKind::HostIo => HostIoReply::parse(payload)
                .map(Reply::HostIo)
                .ok_or_else(bad),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(kind: ReplyKind, text: &[u8], reply: Reply) {
        assert_eq!(reply.encode(), text, "encoding {reply:?}");
        assert_eq!(
            Reply::parse(kind, text).unwrap(),
            reply,
            "parsing {:?}",
            String::from_utf8_lossy(text)
        );
    }

    #[test]
    fn fixtures() {
        round_trip(ReplyKind::Status, b"OK", Reply::Ok);
        round_trip(ReplyKind::Hex, b"E14", Reply::Error(0x14));
        round_trip(
            ReplyKind::Monitor,
            b"E.no console",
            Reply::ErrorText("no console".into()),
        );
        round_trip(ReplyKind::Raw, b"", Reply::Empty);
        round_trip(
            ReplyKind::Stop,
            b"T05thread:01;",
            Reply::Stop(StopReply::thread(5, 1, None)),
        );
        round_trip(
            ReplyKind::Stop,
            b"T05thread:01;swbreak:;",
            Reply::Stop(StopReply::thread(5, 1, Some(StopKind::SwBreak))),
        );
        round_trip(
            ReplyKind::Stop,
            b"T05thread:01;hwbreak:;",
            Reply::Stop(StopReply::thread(5, 1, Some(StopKind::HwBreak))),
        );
        round_trip(
            ReplyKind::Stop,
            b"S02",
            Reply::Stop(StopReply::Signal {
                signal: 2,
                thread: None,
                reason: None,
                registers: None,
            }),
        );
        round_trip(
            ReplyKind::Stop,
            b"T05thread:01;swbreak:;06:1000000000000000;07:f8ff02f080f8ffff;10:4810a002\
00f8ffff;",
            Reply::Stop(
                StopReply::thread(5, 1, Some(StopKind::SwBreak)).with_registers(Expedited {
                    rbp: 0x10,
                    rsp: 0xffff_f880_f002_fff8,
                    rip: 0xffff_f800_02a0_1048,
                }),
            ),
        );
        // A reply with only some of them (or a malformed value) carries none.
        assert_eq!(
            StopReply::parse(b"T05thread:01;10:4810a00200f8ffff;07:zz;"),
            Some(StopReply::thread(5, 1, None))
        );
        round_trip(ReplyKind::Stop, b"W00", Reply::Stop(StopReply::Exited(0)));
        round_trip(
            ReplyKind::Stop,
            b"X09",
            Reply::Stop(StopReply::Terminated(9)),
        );
        round_trip(
            ReplyKind::Monitor,
            b"O4c6561",
            Reply::Output(b"Lea".to_vec()),
        );
        round_trip(ReplyKind::Hex, b"4c65616b", Reply::Hex(b"Leak".to_vec()));
        round_trip(ReplyKind::Binary, b"b#$", Reply::Binary(b"#$".to_vec()));
        round_trip(
            ReplyKind::Xfer,
            b"l<x/>",
            Reply::Xfer {
                more: false,
                data: b"<x/>".to_vec(),
            },
        );
        round_trip(
            ReplyKind::Xfer,
            b"m<x",
            Reply::Xfer {
                more: true,
                data: b"<x".to_vec(),
            },
        );
        round_trip(
            ReplyKind::Supported,
            b"PacketSize=4000;qXfer:features:read+;QStartNoAckMode+",
            Reply::Supported(vec![
                Feature::with_value("PacketSize", "4000"),
                Feature::supported("qXfer:features:read"),
                Feature::supported("QStartNoAckMode"),
            ]),
        );
        round_trip(
            ReplyKind::Search,
            b"1,140001010",
            Reply::SearchResult(Some(0x1_4000_1010)),
        );
        round_trip(ReplyKind::Search, b"0", Reply::SearchResult(None));
        round_trip(ReplyKind::Crc, b"Cdeadbeef", Reply::Crc(0xdead_beef));
        round_trip(ReplyKind::Crc, b"C0", Reply::Crc(0));
        round_trip(
            ReplyKind::ThreadInfo,
            b"m01",
            Reply::ThreadList(vec![ThreadId::Id(1)]),
        );
        round_trip(ReplyKind::ThreadInfo, b"l", Reply::ThreadListEnd);
        round_trip(
            ReplyKind::CurrentThread,
            b"QC1",
            Reply::CurrentThread(ThreadId::Id(1)),
        );
        round_trip(ReplyKind::Attached, b"1", Reply::Attached(true));
        round_trip(
            ReplyKind::VContSupported,
            b"vCont;c;C;s;S",
            Reply::VContSupported(vec!["c".into(), "C".into(), "s".into(), "S".into()]),
        );
    }

    #[test]
    fn host_io_replies() {
        round_trip(
            ReplyKind::HostIo,
            b"F3",
            Reply::HostIo(HostIoReply::Value(3)),
        );
        round_trip(
            ReplyKind::HostIo,
            b"F-1,2",
            Reply::HostIo(HostIoReply::Error(2)),
        );
        // Data follows the `;`, binary (framing escapes it), even none at all.
        round_trip(
            ReplyKind::HostIo,
            b"F3;M;\x00",
            Reply::HostIo(HostIoReply::Data(b"M;\x00".to_vec())),
        );
        round_trip(
            ReplyKind::HostIo,
            b"F0;",
            Reply::HostIo(HostIoReply::Data(Vec::new())),
        );
        for bad in [&b"F"[..], b"Fzz", b"F5;abc", b"F-1,", b"3", b"F-1,2;x"] {
            assert!(Reply::parse(ReplyKind::HostIo, bad).is_err(), "{bad:?}");
        }
        assert_eq!(Reply::parse(ReplyKind::HostIo, b"").unwrap(), Reply::Empty);
    }

    #[test]
    fn an_exit_answers_any_command() {
        for kind in [
            ReplyKind::Hex,
            ReplyKind::Status,
            ReplyKind::Search,
            ReplyKind::Xfer,
        ] {
            assert_eq!(
                Reply::parse(kind, b"W00").unwrap(),
                Reply::Stop(StopReply::Exited(0)),
                "{kind:?}"
            );
            assert_eq!(
                Reply::parse(kind, b"X09;process:1a").unwrap(),
                Reply::Stop(StopReply::Terminated(9)),
                "{kind:?}"
            );
        }
        assert_eq!(
            Reply::parse(ReplyKind::Raw, b"W00").unwrap(),
            Reply::Raw(b"W00".to_vec())
        );
        assert!(Reply::parse(ReplyKind::Hex, b"W0").is_err());
        assert!(Reply::parse(ReplyKind::Hex, b"W00x").is_err());
    }

    #[test]
    fn replies_show_as_the_text_on_the_wire() {
        assert_eq!(Reply::Raw(b"Packet".to_vec()).to_string(), "'Packet'");
        assert_eq!(Reply::Error(0x0e).to_string(), "'E0e'");
        assert_eq!(Reply::Empty.to_string(), "the empty reply");
        assert_eq!(
            Reply::Binary(vec![0, b'\\', 0xff, b'a']).to_string(),
            "'b\\x00\\\\\\xffa'"
        );
        let long = Reply::Raw(vec![b'x'; 200]).to_string();
        assert!(long.ends_with("…(200 bytes)'"), "{long}");
        assert!(long.len() < 120);
    }

    #[test]
    fn malformed_is_an_error_not_a_panic() {
        assert!(Reply::parse(ReplyKind::Hex, b"4").is_err());
        assert!(Reply::parse(ReplyKind::Search, b"1,zz").is_err());
        assert!(Reply::parse(ReplyKind::Crc, b"C123456789").is_err());
        assert!(Reply::parse(ReplyKind::Crc, b"Czz").is_err());
        assert!(Reply::parse(ReplyKind::Stop, b"T").is_err());
        assert!(Reply::parse(ReplyKind::Attached, b"2").is_err());
        assert_eq!(
            Reply::parse(ReplyKind::Hex, b"xx01").unwrap(),
            Reply::Hex(vec![0, 1])
        );
    }
}
