//! Capture decoding: KDNET and KDCOM traffic in pcap/pcapng files, like a dissector.
//!
//! [`decode_file`] reads a pcap or pcapng file (gzipped or not) or a raw file of KDCOM
//! bytes, finds KDNET datagrams (by their `MDBG` magic, on any UDP port) and KDCOM
//! streams (in TCP payloads or the raw file), decrypts KDNET with the key string (the
//! data key is derived from the captured control handshake), verifies every integrity
//! tag and KD checksum, and decodes every KD packet. [`render_text`] prints one line per
//! datagram and packet plus totals; the report serialises to JSON.
//!
//! A wrong key is an error ([`DecodeError::NotAuthenticated`]): nothing undecryptable is
//! ever shown as data.

pub mod capture;
pub mod describe;
mod render;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Serialize;
use tagsplit_protocol::kd::{Leader, PacketType, Repr, StreamDecoder, StreamEvent, checksum};
use tagsplit_protocol::kdnet::{
    Channel, ControlMessage, Datagram, KdnetError, Key, Keys, Message, hex,
};

pub use capture::FileFormat;
pub use describe::Detail;
pub use render::{render_json, render_text};

/// Errors that stop a decode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The gzip stream is damaged.
    #[error("bad gzip data: {0}")]
    Gzip(String),
    /// The pcap/pcapng container is damaged.
    #[error("bad capture file: {0}")]
    Capture(String),
    /// A record claims more bytes than the file holds.
    #[error(
        "truncated capture: record {record} at byte {offset} needs {claimed} bytes, {available} are left"
    )]
    Truncated {
        /// 1-based record (frame or block) number.
        record: usize,
        /// Its offset in the (decompressed) file.
        offset: usize,
        /// The length it claims (header included).
        claimed: usize,
        /// The bytes left in the file.
        available: usize,
    },
    /// A record claims more bytes than any capture tool writes.
    #[error(
        "bad capture file: record {record} at byte {offset} claims {claimed} bytes (at most {max} are accepted)"
    )]
    RecordTooLong {
        /// 1-based record (frame or block) number.
        record: usize,
        /// Its offset in the (decompressed) file.
        offset: usize,
        /// The length it claims.
        claimed: usize,
        /// [`capture::MAX_RECORD_BYTES`].
        max: usize,
    },
    /// The key string is not a KDNET key.
    #[error("bad key: {0}")]
    Key(#[from] KdnetError),
    /// KDNET datagrams were found but none authenticates with the key.
    #[error("none of the {datagrams} kdnet datagrams authenticates with key {key}: wrong key?")]
    NotAuthenticated {
        /// How many KDNET datagrams the capture holds.
        datagrams: usize,
        /// The key tried.
        key: String,
    },
}

/// Who sent a datagram or packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Direction {
    /// From the debuggee.
    #[serde(rename = "target->debugger")]
    TargetToDebugger,
    /// From the debugger.
    #[serde(rename = "debugger->target")]
    DebuggerToTarget,
}

impl Direction {
    /// Short form for text output.
    pub fn arrow(self) -> &'static str {
        match self {
            Direction::TargetToDebugger => "T->D",
            Direction::DebuggerToTarget => "D->T",
        }
    }
}

/// What a KDNET datagram carried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Content {
    /// The target's poke (control channel).
    Poke {
        /// The target nonce, hex.
        nonce: String,
        /// Target address.
        target: String,
        /// Host address.
        host: String,
    },
    /// The debugger's response; the data key was derived from it.
    Response {
        /// The derived data key, hex.
        data_key: String,
    },
    /// Another control payload.
    ControlOther {
        /// Its length.
        len: usize,
    },
    /// A KD packet (index into [`CaptureReport::packets`]).
    Kd {
        /// Packet number (0-based index).
        packet: usize,
    },
    /// The break-in byte.
    BreakIn,
    /// KDNET's 12-byte hello (first data datagram from the target).
    Hello {
        /// Its bytes, hex.
        bytes: String,
    },
    /// A data payload that is not a KD packet.
    BadKd {
        /// Why.
        error: String,
    },
    /// A data-channel datagram before any captured handshake: without the data key it
    /// can be neither decrypted nor authenticated (the tag covers the plaintext).
    NoDataKey,
    /// The tag did not verify (or no key was given): content not shown.
    Unauthenticated {
        /// Why.
        reason: String,
    },
}

/// One KDNET datagram.
#[derive(Clone, Debug, Serialize)]
pub struct DatagramRecord {
    /// Frame number in the capture (1-based).
    pub frame: usize,
    /// Seconds since the first frame.
    pub time: f64,
    /// UDP source.
    pub src: SocketAddr,
    /// UDP destination.
    pub dst: SocketAddr,
    /// Datagram length.
    pub length: usize,
    /// KDNET version byte.
    pub version: u8,
    /// Channel (from the clear header).
    pub channel: Option<Channel>,
    /// Whether the integrity tag verified.
    pub authenticated: bool,
    /// Sequence number (decrypted datagrams only).
    pub seq: Option<u64>,
    /// Direction bit (decrypted datagrams only).
    pub direction: Option<Direction>,
    /// Pad count.
    pub pad: Option<usize>,
    /// What it carried.
    pub content: Content,
}

/// One KD packet.
#[derive(Clone, Debug, Serialize)]
pub struct PacketRecord {
    /// 0-based packet number.
    pub number: usize,
    /// Frame it came in (1-based), if from a capture container.
    pub frame: Option<usize>,
    /// Who sent it, when known.
    pub direction: Option<Direction>,
    /// Where it came from: `kdnet`, `tcp a -> b`, `raw`.
    pub transport: String,
    /// Data or control leader.
    pub leader: Leader,
    /// `PacketType` name.
    pub packet_type: String,
    /// `PacketType` value.
    pub packet_type_value: u16,
    /// `PacketId`.
    pub id: u32,
    /// `ByteCount`.
    pub byte_count: usize,
    /// `Checksum`.
    pub checksum: u32,
    /// Whether the checksum verified.
    pub checksum_ok: bool,
    /// The decoded payload.
    pub detail: Detail,
    /// One-line summary.
    pub summary: String,
    /// The packet's payload bytes as captured (decrypted), for tools that reuse the
    /// packets (the KD wire fuzzer's seeds); not part of the JSON.
    #[serde(skip)]
    pub payload: Vec<u8>,
}

/// Counts over the whole capture.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Frames in the container (0 for raw files).
    pub frames: usize,
    /// KDNET datagrams.
    pub datagrams: usize,
    /// … on the control channel.
    pub control_datagrams: usize,
    /// … on the data channel.
    pub data_datagrams: usize,
    /// … whose tag verified.
    pub authenticated: usize,
    /// … whose tag did not verify (or could not be checked).
    pub unauthenticated: usize,
    /// Target pokes.
    pub pokes: usize,
    /// Debugger responses.
    pub responses: usize,
    /// KDNET hellos.
    pub hellos: usize,
    /// Break-in bytes.
    pub break_ins: usize,
    /// KD packets (good and bad checksums).
    pub kd_packets: usize,
    /// KD packets with a bad checksum (or bad trailer).
    pub bad_checksums: usize,
    /// Packets per `PacketType` name.
    pub by_type: BTreeMap<String, usize>,
    /// Manipulate packets per API name.
    pub by_api: BTreeMap<String, usize>,
    /// Bytes outside any KDCOM packet.
    pub noise_bytes: usize,
}

impl Totals {
    /// Packets of one type.
    pub fn of_type(&self, t: PacketType) -> usize {
        self.by_type.get(t.name()).copied().unwrap_or(0)
    }
}

/// The result of decoding a capture.
#[derive(Clone, Debug, Serialize)]
pub struct CaptureReport {
    /// The file decoded.
    pub file: String,
    /// Container format.
    pub format: FileFormat,
    /// The derived KDNET data key, hex.
    pub data_key: Option<String>,
    /// Every KDNET datagram.
    pub datagrams: Vec<DatagramRecord>,
    /// Every KD packet.
    pub packets: Vec<PacketRecord>,
    /// Totals.
    pub totals: Totals,
    /// Remarks (missing key, trailing noise, …).
    pub notes: Vec<String>,
}

/// Decodes a capture file; `key` is the KDNET key string, if any.
pub fn decode_file(path: &Path, key: Option<&str>) -> Result<CaptureReport, DecodeError> {
    let bytes = capture::read_file(path)?;
    decode_bytes(&path.display().to_string(), bytes, key)
}

/// Decodes capture bytes (already read; gzip is detected here too).
pub fn decode_bytes(
    name: &str,
    bytes: Vec<u8>,
    key: Option<&str>,
) -> Result<CaptureReport, DecodeError> {
    let keys = key.map(|k| k.parse::<Key>().map(Keys::new)).transpose()?;
    let bytes = capture::gunzip_if_needed(bytes)?;
    let format = capture::detect(&bytes);
    let mut d = Decoder {
        report: CaptureReport {
            file: name.to_string(),
            format,
            data_key: None,
            datagrams: Vec::new(),
            packets: Vec::new(),
            totals: Totals::default(),
            notes: Vec::new(),
        },
        keys,
    };
    if format == FileFormat::Raw {
        d.kdcom_stream(&bytes, None, "raw".to_string(), true);
    } else {
        let frames = capture::frames(&bytes, format)?;
        d.report.totals.frames = frames.len();
        d.frames(&frames);
    }
    d.finish(key)
}

struct Decoder {
    report: CaptureReport,
    keys: Option<Keys>,
}

impl Decoder {
    fn frames(&mut self, frames: &[capture::Frame]) {
        let t0 = frames.first().map(|f| f.timestamp).unwrap_or_default();
        let mut flows: Vec<(SocketAddr, SocketAddr, StreamDecoder, Vec<usize>)> = Vec::new();
        let mut tcp_frames: Vec<(usize, usize, Vec<u8>)> = Vec::new();
        for frame in frames {
            let Some(seg) = capture::segment(frame) else {
                continue;
            };
            match seg.transport {
                capture::Transport::Udp if Datagram::<&[u8]>::has_magic(&seg.payload) => {
                    let time = frame.timestamp.saturating_sub(t0).as_secs_f64();
                    self.datagram(frame.number, time, &seg);
                }
                capture::Transport::Tcp if !seg.payload.is_empty() => {
                    let idx = match flows
                        .iter()
                        .position(|(s, d, _, _)| *s == seg.src && *d == seg.dst)
                    {
                        Some(i) => i,
                        None => {
                            flows.push((seg.src, seg.dst, StreamDecoder::new(), Vec::new()));
                            flows.len() - 1
                        }
                    };
                    tcp_frames.push((idx, frame.number, seg.payload));
                }
                _ => {}
            }
        }
        // KDCOM in TCP: decode each flow; keep flows in which real packets were found.
        let mut found: Vec<(usize, usize, StreamEvent)> = Vec::new();
        for (idx, number, payload) in tcp_frames {
            if let Some((_, _, dec, _)) = flows.get_mut(idx) {
                dec.push(&payload);
                while let Some(ev) = dec.next_event() {
                    found.push((idx, number, ev));
                }
            }
        }
        let good: Vec<usize> = (0..flows.len())
            .filter(|i| {
                found
                    .iter()
                    .any(|(f, _, ev)| f == i && matches!(ev, StreamEvent::Packet(_)))
            })
            .collect();
        for (idx, number, ev) in found {
            if !good.contains(&idx) {
                continue;
            }
            let transport = flows
                .get(idx)
                .map(|(s, d, _, _)| format!("tcp {s} -> {d}"))
                .unwrap_or_default();
            self.stream_event(ev, Some(number), transport);
        }
    }

    fn kdcom_stream(&mut self, bytes: &[u8], frame: Option<usize>, transport: String, end: bool) {
        let mut dec = StreamDecoder::new();
        dec.push(bytes);
        if end {
            dec.finish();
        }
        while let Some(ev) = dec.next_event() {
            self.stream_event(ev, frame, transport.clone());
        }
    }

    fn stream_event(&mut self, ev: StreamEvent, frame: Option<usize>, transport: String) {
        match ev {
            StreamEvent::Packet(repr) => {
                self.packet(&repr, true, frame, None, transport);
            }
            StreamEvent::BreakIn => self.report.totals.break_ins += 1,
            StreamEvent::Noise { bytes } => self.report.totals.noise_bytes += bytes,
            StreamEvent::BadChecksum {
                id,
                expected,
                actual,
                ..
            } => {
                self.report.totals.bad_checksums += 1;
                self.report.notes.push(format!(
                    "{transport}: packet id {id:#x} has checksum {expected:#x}, payload sums to {actual:#x}"
                ));
            }
            StreamEvent::BadTrailer { id, found } => {
                self.report.totals.bad_checksums += 1;
                self.report.notes.push(format!(
                    "{transport}: packet id {id:#x} ends with {found:#04x}, not 0xaa"
                ));
            }
            StreamEvent::TooLong { byte_count } => self.report.notes.push(format!(
                "{transport}: header announces {byte_count} bytes (over the limit)"
            )),
            StreamEvent::MissingTrailer { id } => self.report.notes.push(format!(
                "{transport}: packet id {id:#x} lacks its 0xaa trailer (end of input)"
            )),
            _ => {}
        }
    }

    fn packet(
        &mut self,
        repr: &Repr,
        checksum_ok: bool,
        frame: Option<usize>,
        direction: Option<Direction>,
        transport: String,
    ) -> usize {
        let detail = describe::detail(repr);
        let summary = describe::summary(repr, &detail);
        let t = &mut self.report.totals;
        t.kd_packets += 1;
        *t.by_type
            .entry(repr.packet_type.name().to_string())
            .or_default() += 1;
        if let Detail::Manipulate { api, .. } = &detail {
            *t.by_api.entry(api.clone()).or_default() += 1;
        }
        if !checksum_ok {
            t.bad_checksums += 1;
        }
        let number = self.report.packets.len();
        let direction = direction.or_else(|| infer_direction(repr));
        self.report.packets.push(PacketRecord {
            number,
            frame,
            direction,
            transport,
            leader: repr.leader,
            packet_type: repr.packet_type.name().to_string(),
            packet_type_value: repr.packet_type.value(),
            id: repr.id,
            byte_count: repr.payload.len(),
            checksum: checksum(&repr.payload),
            checksum_ok,
            detail,
            summary,
            payload: repr.payload.clone(),
        });
        number
    }

    fn datagram(&mut self, frame: usize, time: f64, seg: &capture::Segment) {
        let bytes = &seg.payload[..];
        let t = &mut self.report.totals;
        t.datagrams += 1;
        let view = Datagram::new_checked(bytes);
        let (version, channel) = match &view {
            Ok(d) => (d.version(), Channel::from_value(d.channel_byte()).ok()),
            Err(_) => (bytes.get(4).copied().unwrap_or(0), None),
        };
        match channel {
            Some(Channel::Control) => t.control_datagrams += 1,
            Some(Channel::Data) => t.data_datagrams += 1,
            None => {}
        }
        let mut rec = DatagramRecord {
            frame,
            time,
            src: seg.src,
            dst: seg.dst,
            length: bytes.len(),
            version,
            channel,
            authenticated: false,
            seq: None,
            direction: None,
            pad: None,
            content: Content::Unauthenticated {
                reason: "no key given".to_string(),
            },
        };
        let opened = self.keys.as_ref().map(|keys| keys.open(bytes));
        match opened {
            None => {}
            Some(Err(KdnetError::NoDataKey)) => rec.content = Content::NoDataKey,
            Some(Err(e)) => {
                rec.content = Content::Unauthenticated {
                    reason: e.to_string(),
                };
            }
            Some(Ok(msg)) => {
                rec.authenticated = true;
                rec.seq = Some(msg.seq);
                rec.pad = Some(msg.pad());
                let dir = if msg.from_debugger {
                    Direction::DebuggerToTarget
                } else {
                    Direction::TargetToDebugger
                };
                rec.direction = Some(dir);
                rec.content = self.message(&msg, frame, dir);
            }
        }
        if rec.authenticated {
            self.report.totals.authenticated += 1;
        } else {
            self.report.totals.unauthenticated += 1;
        }
        self.report.datagrams.push(rec);
    }

    fn message(&mut self, msg: &Message, frame: usize, dir: Direction) -> Content {
        match msg.channel {
            Channel::Control => match ControlMessage::parse(&msg.payload) {
                ControlMessage::Poke(p) => {
                    self.report.totals.pokes += 1;
                    Content::Poke {
                        nonce: hex(&p.nonce),
                        target: p.target.to_string(),
                        host: p.host.to_string(),
                    }
                }
                ControlMessage::Response(r) => {
                    self.report.totals.responses += 1;
                    let Some(keys) = self.keys.as_mut() else {
                        return Content::ControlOther {
                            len: msg.payload.len(),
                        };
                    };
                    let data_key = r.data_key(keys.initial());
                    keys.set_data_key(data_key);
                    let h = hex(&data_key);
                    self.report.data_key = Some(h.clone());
                    Content::Response { data_key: h }
                }
                _ => Content::ControlOther {
                    len: msg.payload.len(),
                },
            },
            Channel::Data => {
                let p = &msg.payload;
                if p[..] == [tagsplit_protocol::kd::BREAKIN_PACKET_BYTE] {
                    self.report.totals.break_ins += 1;
                    return Content::BreakIn;
                }
                if p.len() >= 4 && p.get(..4) == Some(&[0u8; 4][..]) {
                    self.report.totals.hellos += 1;
                    return Content::Hello { bytes: hex(p) };
                }
                match Repr::parse_bytes(p) {
                    Ok(repr) => {
                        let n = self.packet(&repr, true, Some(frame), Some(dir), "kdnet".into());
                        Content::Kd { packet: n }
                    }
                    Err(tagsplit_protocol::kd::KdError::BadChecksum { .. }) => {
                        // Record it with the bad checksum rather than hiding it.
                        let repr = Repr {
                            leader: Leader::Data,
                            packet_type: tagsplit_protocol::kd::Packet::new_unchecked(&p[..])
                                .packet_type(),
                            id: tagsplit_protocol::kd::Packet::new_unchecked(&p[..]).packet_id(),
                            payload: tagsplit_protocol::kd::Packet::new_unchecked(&p[..])
                                .payload()
                                .to_vec(),
                        };
                        let n = self.packet(&repr, false, Some(frame), Some(dir), "kdnet".into());
                        Content::Kd { packet: n }
                    }
                    Err(e) => Content::BadKd {
                        error: e.to_string(),
                    },
                }
            }
        }
    }

    fn finish(mut self, key: Option<&str>) -> Result<CaptureReport, DecodeError> {
        let t = &self.report.totals;
        if t.datagrams > 0 {
            match key {
                Some(k) if t.authenticated == 0 => {
                    return Err(DecodeError::NotAuthenticated {
                        datagrams: t.datagrams,
                        key: k.to_string(),
                    });
                }
                None => self.report.notes.push(format!(
                    "{} kdnet datagrams found; give --key to authenticate and decrypt them",
                    t.datagrams
                )),
                _ => {}
            }
            if t.unauthenticated > 0 && key.is_some() {
                self.report.notes.push(format!(
                    "{} datagrams did not authenticate",
                    t.unauthenticated
                ));
            }
        }
        if t.datagrams == 0 && t.kd_packets == 0 {
            self.report
                .notes
                .push("no kdnet or kdcom traffic found".to_string());
        }
        Ok(self.report)
    }
}

/// Who sends a packet of this kind, when the payload tells (KDCOM has no direction bit).
fn infer_direction(repr: &Repr) -> Option<Direction> {
    match repr.packet_type {
        PacketType::StateChange64
        | PacketType::StateChange32
        | PacketType::DebugIo
        | PacketType::TraceIo => Some(Direction::TargetToDebugger),
        _ => None,
    }
}

/// Arguments of `tagsplit decode`.
#[derive(Clone, Debug, Default)]
pub struct DecodeArgs {
    /// The capture file.
    pub file: std::path::PathBuf,
    /// KDNET key string.
    pub key: Option<String>,
    /// Emit JSON instead of text.
    pub json: bool,
}

/// What `tagsplit decode` runs: decode, then print text or JSON to `out`.
pub fn run_decode(args: &DecodeArgs, out: &mut dyn std::io::Write) -> Result<(), DecodeError> {
    let report = decode_file(&args.file, args.key.as_deref())?;
    let text = if args.json {
        render_json(&report)
    } else {
        render_text(&report)
    };
    out.write_all(text.as_bytes()).map_err(|e| DecodeError::Io {
        path: "<stdout>".to_string(),
        source: e,
    })
}
