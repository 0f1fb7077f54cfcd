#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Properties of the GDB framing, commands and replies.

use proptest::prelude::*;
use tagsplit_protocol::gdb::frame::{self, Decoder, Event};
use tagsplit_protocol::gdb::{
    Breakpoint, BreakpointType, Command, Expedited, HexBytes, Reply, ReplyKind, ResumeAction,
    ResumeActions, ResumeKind, StopKind, StopReply, ThreadId, ThreadOp, ThreadSel, XferObject,
};

/// Decodes `bytes` split at `cuts`, then ends the stream.
fn decode_chunked(bytes: &[u8], cuts: &[usize], max: usize) -> Vec<Event> {
    let mut d = Decoder::new(max);
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut events = Vec::new();
    let mut start = 0;
    for p in points.into_iter().chain([bytes.len()]) {
        d.decode_into(&bytes[start..p], &mut events);
        start = p;
    }
    events.extend(d.finish());
    events
}

/// Pieces a realistic stream is made of.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (prop::collection::vec(any::<u8>(), 0..64), any::<bool>())
            .prop_map(|(p, rle)| frame::encode_packet(&p, rle)),
        prop::collection::vec(
            prop_oneof![Just(b'0'), Just(b'#'), Just(b'$'), any::<u8>()],
            0..40
        )
        .prop_map(|p| frame::encode_packet(&p, true)),
        Just(b"+".to_vec()),
        Just(b"-".to_vec()),
        Just(vec![0x03]),
        Just(b"$OK#00".to_vec()),
        Just(b"%Stop:T05#5e".to_vec()),
        prop::collection::vec(any::<u8>(), 1..8),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The SIMD hex frame (hex, in-place run-length encoding, fused checksum) is byte for
    /// byte the generic encoder's frame of the hex text, on data rich in runs and not.
    #[test]
    fn hex_frames_equal_the_generic_encoder(
        data in prop::collection::vec(
            prop_oneof![Just(0u8), Just(0x11), Just(0xaa), Just(0xa0), Just(0x0a), any::<u8>()],
            0..700,
        ),
        rle in any::<bool>(),
    ) {
        let hex = tagsplit_protocol::gdb::hex::encode_hex(&data);
        let want = frame::encode_packet(&hex, rle);
        let mut got = b"junk".to_vec();
        frame::encode_hex_packet_into(&data, rle, &mut got);
        prop_assert_eq!(&got[4..], &want[..]);
    }

    #[test]
    fn decoding_is_independent_of_chunking(
        pieces in prop::collection::vec(piece(), 0..12),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        max in prop_oneof![Just(16usize), Just(4096usize)],
    ) {
        let bytes: Vec<u8> = pieces.concat();
        let whole = decode_chunked(&bytes, &[], max);
        let chunked = decode_chunked(&bytes, &cuts, max);
        prop_assert_eq!(&whole, &chunked);
        // Byte by byte too.
        let every: Vec<usize> = (0..bytes.len()).collect();
        prop_assert_eq!(&whole, &decode_chunked(&bytes, &every, max));
    }

    #[test]
    fn arbitrary_bytes_decode_the_same_however_chunked(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        prop_assert_eq!(decode_chunked(&bytes, &[], 64), decode_chunked(&bytes, &cuts, 64));
    }

    #[test]
    fn frames_round_trip_and_never_contain_delimiters(
        payload in prop::collection::vec(any::<u8>(), 0..600),
        rle in any::<bool>(),
    ) {
        let framed = frame::encode_packet(&payload, rle);
        let body = &framed[1..framed.len() - 3];
        prop_assert!(!body.contains(&b'#') && !body.contains(&b'$'));
        prop_assert_eq!(frame::unescape(body, 1 << 20), Some(payload.clone()));
        let mut d = Decoder::new(framed.len());
        prop_assert_eq!(d.decode(&framed), vec![Event::Packet(payload)]);
    }

    #[test]
    fn runs_of_every_length_round_trip(byte in any::<u8>(), len in 1usize..300) {
        let payload = vec![byte; len];
        let mut out = Vec::new();
        frame::escape_rle_into(&payload, &mut out);
        prop_assert!(!out.contains(&b'#') && !out.contains(&b'$'));
        prop_assert!(!frame::needs_escape(byte) || out.len() == 2 * len);
        if !frame::needs_escape(byte) && len > 8 {
            prop_assert!(out.len() < len, "runs compress");
        }
        prop_assert_eq!(frame::unescape(&out, 1 << 16), Some(payload));
    }

    #[test]
    fn oversize_frames_are_never_buffered(len in 65usize..2000, rle in any::<bool>()) {
        let framed = frame::encode_packet(&vec![b'a'; len], rle);
        let mut d = Decoder::new(64);
        let evs = d.decode(&framed);
        prop_assert!(matches!(evs.as_slice(), [Event::Oversize { .. }]), "{:?}", evs);
        prop_assert_eq!(d.decode(b"$OK#9a"), vec![Event::Packet(b"OK".to_vec())]);
    }

    #[test]
    fn commands_round_trip(cmd in command()) {
        let cmd = cmd.command();
        let bytes = cmd.encode();
        prop_assert_eq!(Command::parse(&bytes), cmd);
    }

    #[test]
    fn command_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let cmd = Command::parse(&bytes);
        if let Command::Unknown(raw) | Command::Malformed(raw) = cmd {
            prop_assert_eq!(raw, &bytes[..]);
        }
    }

    #[test]
    fn replies_round_trip((kind, reply) in reply()) {
        let bytes = reply.encode();
        prop_assert_eq!(Reply::parse(kind, &bytes).unwrap(), reply);
    }
}

fn thread_id() -> impl Strategy<Value = ThreadId> {
    prop_oneof![
        Just(ThreadId::All),
        Just(ThreadId::Any),
        (1u64..0xffff).prop_map(ThreadId::Id)
    ]
}

fn thread_sel() -> impl Strategy<Value = ThreadSel> {
    (prop::option::of(thread_id()), thread_id())
        .prop_map(|(process, thread)| ThreadSel { process, thread })
}

fn breakpoint() -> impl Strategy<Value = Breakpoint> {
    (
        prop_oneof![
            Just(BreakpointType::Software),
            Just(BreakpointType::Hardware),
            Just(BreakpointType::WriteWatch),
            Just(BreakpointType::ReadWatch),
            Just(BreakpointType::AccessWatch)
        ],
        any::<u64>(),
        0u64..16,
    )
        .prop_map(|(kind, addr, size)| Breakpoint { kind, addr, size })
}

fn resume_action() -> impl Strategy<Value = ResumeAction> {
    (
        prop_oneof![
            Just(ResumeKind::Continue),
            Just(ResumeKind::Step),
            Just(ResumeKind::Stop),
            any::<u8>().prop_map(ResumeKind::ContinueSignal),
            any::<u8>().prop_map(ResumeKind::StepSignal),
            (any::<u64>(), any::<u64>())
                .prop_map(|(start, end)| ResumeKind::RangeStep { start, end }),
        ],
        prop::option::of(thread_sel()),
    )
        .prop_map(|(kind, thread)| ResumeAction { kind, thread })
}

/// A command with owned data (commands borrow; the strategy needs owned values).
#[derive(Clone, Debug)]
enum Owned {
    Plain(Command<'static>),
    Xfer(XferObject<'static>, String, u64, u64),
    WriteRegisters(Vec<u8>),
    WriteRegister(u32, Vec<u8>),
    WriteMemory(u64, Vec<u8>),
    WriteMemoryBinary(u64, Vec<u8>),
    Search(u64, u64, Vec<u8>),
    Monitor(Vec<u8>),
    VCont(Vec<ResumeAction>),
}

impl Owned {
    fn command(&self) -> Command<'_> {
        match self {
            Owned::Plain(c) => *c,
            Owned::Xfer(object, annex, offset, length) => Command::XferRead {
                object: *object,
                annex: annex.as_bytes(),
                offset: *offset,
                length: *length,
            },
            Owned::WriteRegisters(d) => Command::WriteRegisters(HexBytes::raw(d)),
            Owned::WriteRegister(reg, d) => Command::WriteRegister {
                reg: *reg,
                value: HexBytes::raw(d),
            },
            Owned::WriteMemory(addr, d) => Command::WriteMemory {
                addr: *addr,
                data: HexBytes::raw(d),
            },
            Owned::WriteMemoryBinary(addr, d) => Command::WriteMemoryBinary {
                addr: *addr,
                data: d,
            },
            Owned::Search(addr, len, p) => Command::SearchMemory {
                addr: *addr,
                len: *len,
                pattern: p,
            },
            Owned::Monitor(d) => Command::Monitor(HexBytes::raw(d)),
            Owned::VCont(a) => Command::VCont(ResumeActions::list(a)),
        }
    }
}

fn command() -> impl Strategy<Value = Owned> {
    let bytes = || prop::collection::vec(any::<u8>(), 0..32);
    let plain = prop_oneof![
        Just(Command::MustReplyEmpty),
        Just(Command::StartNoAckMode),
        (
            prop_oneof![Just(ThreadOp::General), Just(ThreadOp::Continue)],
            thread_sel()
        )
            .prop_map(|(op, t)| Command::SetThread(op, t)),
        Just(Command::TraceStatus),
        Just(Command::HaltReason),
        Just(Command::ThreadInfoFirst),
        Just(Command::ThreadInfoNext),
        Just(Command::CurrentThread),
        prop::option::of(any::<u64>()).prop_map(Command::Attached),
        Just(Command::ReadRegisters),
        any::<u32>().prop_map(Command::ReadRegister),
        (any::<u64>(), any::<u64>()).prop_map(|(addr, len)| Command::ReadMemory { addr, len }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(addr, len)| Command::ReadMemoryBinary { addr, len }),
        breakpoint().prop_map(Command::InsertBreakpoint),
        breakpoint().prop_map(Command::RemoveBreakpoint),
        Just(Command::VContQuery),
        prop::option::of(any::<u64>()).prop_map(Command::Continue),
        prop::option::of(any::<u64>()).prop_map(Command::Step),
        prop::option::of(any::<u64>()).prop_map(Command::Detach),
        Just(Command::Kill),
        prop::option::of(any::<u64>()).prop_map(Command::VKill),
        any::<u64>().prop_map(Command::RunLimit),
    ];
    prop_oneof![
        plain.prop_map(Owned::Plain),
        (
            prop_oneof![
                Just(XferObject::Features),
                Just(XferObject::Libraries),
                Just(XferObject::MemoryMap),
                Just(XferObject::Other(b"exec-file"))
            ],
            "[a-z.]{0,12}",
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(object, annex, offset, length)| Owned::Xfer(object, annex, offset, length)),
        bytes().prop_map(Owned::WriteRegisters),
        (any::<u32>(), bytes()).prop_map(|(reg, value)| Owned::WriteRegister(reg, value)),
        (any::<u64>(), bytes()).prop_map(|(addr, data)| Owned::WriteMemory(addr, data)),
        (any::<u64>(), bytes()).prop_map(|(addr, data)| Owned::WriteMemoryBinary(addr, data)),
        (any::<u64>(), any::<u64>(), bytes())
            .prop_map(|(addr, len, pattern)| Owned::Search(addr, len, pattern)),
        bytes().prop_map(Owned::Monitor),
        prop::collection::vec(resume_action(), 0..4).prop_map(Owned::VCont),
    ]
}

fn reply() -> impl Strategy<Value = (ReplyKind, Reply)> {
    let bytes = || prop::collection::vec(any::<u8>(), 0..48);
    let stop = prop_oneof![
        (
            any::<u8>(),
            prop::option::of(1u64..0xffff),
            prop::option::of(prop_oneof![
                Just(StopKind::SwBreak),
                Just(StopKind::HwBreak)
            ]),
            prop::option::of((any::<u64>(), any::<u64>(), any::<u64>()))
        )
            .prop_map(|(signal, thread, reason, regs)| StopReply::Signal {
                signal,
                thread: thread.map(ThreadId::Id),
                reason: if thread.is_some() { reason } else { None },
                registers: regs.map(|(rbp, rsp, rip)| Expedited { rbp, rsp, rip }),
            }),
        any::<u8>().prop_map(StopReply::Exited),
        any::<u8>().prop_map(StopReply::Terminated),
    ];
    prop_oneof![
        Just((ReplyKind::Status, Reply::Ok)),
        any::<u8>().prop_map(|c| (ReplyKind::Status, Reply::Error(c))),
        Just((ReplyKind::Status, Reply::Empty)),
        stop.prop_map(|s| (ReplyKind::Stop, Reply::Stop(s))),
        bytes()
            .prop_filter("empty output is an empty O", |b| !b.is_empty())
            .prop_map(|b| (ReplyKind::Monitor, Reply::Output(b))),
        bytes()
            .prop_filter("empty hex is the empty reply", |b| !b.is_empty())
            .prop_map(|b| (ReplyKind::Hex, Reply::Hex(b))),
        bytes().prop_map(|b| (ReplyKind::Binary, Reply::Binary(b))),
        (any::<bool>(), bytes())
            .prop_map(|(more, data)| (ReplyKind::Xfer, Reply::Xfer { more, data })),
        prop::option::of(any::<u64>()).prop_map(|a| (ReplyKind::Search, Reply::SearchResult(a))),
        prop::collection::vec((1u64..0xfff).prop_map(ThreadId::Id), 1..4)
            .prop_map(|t| (ReplyKind::ThreadInfo, Reply::ThreadList(t))),
        any::<bool>().prop_map(|a| (ReplyKind::Attached, Reply::Attached(a))),
    ]
}
