//! A mutating GDB client against a GDB stub (`tagsplit fuzz-stub --target gdb://…`), and
//! the replay of its findings (`tagsplit replay FILE --target gdb://…`).
//!
//! # An iteration
//!
//! Each iteration draws everything from [`Campaign::rng`], so it sends the same bytes for
//! the same seed and the same answers:
//!
//! 1. It connects (a new connection every iteration: the stub starts from the same state
//!    and a finding's transcript holds the whole session from its connect).
//! 2. It sends `qSupported`, then, one time in two, `QStartNoAckMode` (both modes are
//!    fuzzed; in ack mode every packet received is acked with `+`), then, seven times in
//!    ten, `?` as gdb does (gdbserver sets its current thread there and crashes on
//!    several commands without it: both are fuzzed).
//! 3. It sends 1 to 16 commands, one at a time, each waiting for its reply: a seed command
//!    (a [built-in set](BUILTIN_SEEDS) and the commands gdb sent in the recorded sessions
//!    [`load_seeds`] reads), a generated [`GdbCommand`], or either of them through the
//!    mutator [`gdb_frame`]. A mutated packet that does not frame (a wrong checksum, a
//!    dangling escape) is always the sequence's last: whether a stub answers it is up to
//!    the stub (gdbserver takes a bad checksum in no-ack mode), so it is followed by a
//!    probe (`qC`, sent a second time if the first gets no reply) that only has to be
//!    answered somehow.
//! 4. It half-closes the connection and reads until the stub closes it (2 s at most).
//!
//! Commands that would resume the target (`c`, `s`, `C`, `S`, `vCont;…`, `i`, `bc`, …),
//! start or attach a process (`vRun`, `vAttach`, `!`, `R`), change the host
//! (`vFile:` other than reading, `QEnvironment…`, `QSetWorkingDir`, `qXfer:…:write`,
//! tracepoints) or run arbitrary monitor commands (`qRcmd` other than a few harmless ones)
//! are never sent: a drawn one is replaced by another draw (see [`is_safe`]). `D`, `k` and
//! `vKill` are sent only with `--launch` (rarely, and as the last command), since they
//! may end the peer; the peer is then restarted before the next iteration.
//!
//! # The oracle
//!
//! A finding is, for the command sent last:
//!
//! - [`FindingKind::Died`] (or [`FindingKind::Crashed`] when the launched peer died by a
//!   signal): the connection is closed or reset while a reply is awaited or before the
//!   stub closes after our half-close, unless a `D`, `k` or `vKill` was sent or a `W`/`X`
//!   stop reply was received in this session. A launched peer found dead by a signal at
//!   the start of an iteration is a crash of the iteration before.
//! - [`FindingKind::Hang`]: no reply within the reply time-out to a command that frames
//!   (the probe after one that does not: no reply to two probes).
//! - [`FindingKind::OutOfProtocol`]: bytes outside any packet other than `+` and `-`
//!   (including a `0x03` from the stub), a packet with a wrong checksum, a packet larger
//!   than [`MAX_REPLY`], a `+` once the stub has answered `OK` to `QStartNoAckMode` (it
//!   acks as if it had left no-ack mode; signature `out-of-protocol: a + in no-ack mode`,
//!   whatever the command), or, while the session is drained at its end, a packet that is
//!   not a stop reply, a notification or console output (`O…`): a reply nothing asked for.
//!
//! A stub that asks for symbols (`qSymbol:NAME`, gdbserver's answer to `qSymbol::`) is
//! answered "unknown" (`qSymbol::NAME`) as gdb does, until it says `OK` (256 lookups at
//! most); the replay answers them itself too (it does not copy them from the transcript).
//!
//! A stop reply answers a command that reads as `?` (to us, or to a stub that reads only
//! the first byte); to any other command it is taken as unasked, unless nothing else comes
//! before the time-out, when it is taken as the reply after all.
//!
//! Never a finding: a stop reply (`T`, `S`, `W`, `X`) or console output (`O` + hex)
//! received unasked (QEMU's `T02thread:01;` on connect), a notification, `-` in either
//! mode, `+` in ack mode, a `-` for a packet we framed (it is sent again, twice at most, then let
//! go), any reply contents (an `E` code, an empty reply), a stub that refuses a second
//! client with our simulator's "busy" error while the previous connection winds down (the
//! connection is retried and not logged), a peer that exits after `D`/`k`/`vKill`.
//!
//! # Distinct states
//!
//! Each reply counts as the [`state_hash`] of the command's name (its letter, or a `q`/`Q`/`v`
//! packet's name up to the first `:`, `,` or `;`; `qXfer` and `vFile` with their object)
//! and the reply's class: `OK`, `E` with its first two characters, empty, a stop reply
//! with its first three bytes, or data with its first byte and the bit length of its
//! size.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use tagsplit_protocol::fuzz::GdbCommand;
use tagsplit_protocol::fuzz::arbitrary::{Arbitrary as _, Unstructured};
use tagsplit_protocol::fuzz::mutate::gdb_frame;
use tagsplit_protocol::gdb::frame::{self, Decoder, Event};
use tagsplit_protocol::gdb::remotelog::{
    LogDirection, LogRecord, RemoteLogWriter, parse_remote_log,
};
use tagsplit_protocol::gdb::transcript::parse_log;

use super::{
    Campaign, Finding, FindingKind, Launcher, ReplayOutcome, Rng, WireFuzzError, crash_signal,
    state_hash,
};

/// The largest packet accepted from a stub (a larger one is out of protocol).
pub const MAX_REPLY: usize = 1 << 20;

/// Most commands in one iteration (after the handshake).
pub const MAX_COMMANDS: u64 = 16;

/// How long the stub may take to close the connection after our half-close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How long connecting may be retried (a stub that reopens its port after a client left,
/// our simulator refusing while the last client winds down).
const CONNECT_RETRY: Duration = Duration::from_secs(10);

/// Transcript bytes kept per iteration; beyond this the session is cut short (no finding).
const MAX_TRANSCRIPT: usize = 4 << 20;

/// Symbols a stub may ask for in one go (`qSymbol:NAME`, each answered "unknown").
const MAX_SYMBOL_LOOKUPS: usize = 256;

/// The start of the answer "unknown symbol" to a stub's `qSymbol:NAME`.
const SYMBOL_UNKNOWN: &[u8] = b"qSymbol::";

/// The probe that follows a packet that does not frame.
const PROBE: &[u8] = b"qC";

/// Commands gdb sends, written for this fuzzer: the built-in seed set, so the binary
/// needs no files (the recorded sessions add to it, see [`load_seeds`]).
pub const BUILTIN_SEEDS: &[&[u8]] = &[
    b"qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;fork-events+;vfork-events+;exec-events+;vContSupported+;QThreadEvents+;no-resumed+;memory-tagging+;xmlRegisters=i386",
    b"vMustReplyEmpty",
    b"QStartNoAckMode",
    b"Hg0",
    b"Hc-1",
    b"Hgp1.1",
    b"qXfer:features:read:target.xml:0,1000",
    b"qXfer:features:read:target.xml:ffe,2",
    b"qXfer:features:read:i386-64bit.xml:0,ffb",
    b"qXfer:libraries:read::0,1000",
    b"qXfer:libraries-svr4:read::0,fff",
    b"qXfer:memory-map:read::0,1000",
    b"qXfer:threads:read::0,fff",
    b"qXfer:exec-file:read:1:0,fff",
    b"qXfer:auxv:read::0,1000",
    b"qTStatus",
    b"?",
    b"qfThreadInfo",
    b"qsThreadInfo",
    b"qAttached",
    b"qAttached:1",
    b"qC",
    b"qOffsets",
    b"qSymbol::",
    b"g",
    b"p0",
    b"p10",
    b"p1f",
    b"pffff",
    b"P0=0000000000000000",
    b"m0,1",
    b"m140001000,1",
    b"m140001000,100",
    b"mfffffffffffffff0,20",
    b"m400000,fff",
    b"M140001010,4:deadbeef",
    b"M0,0:",
    b"X140001010,0:",
    b"X140001010,4:abcd",
    b"qSearch:memory:140000000;4000;4c65616b",
    b"qSearch:memory:0;ffffffffffffffff;00",
    b"Z0,140001000,1",
    b"z0,140001000,1",
    b"Z1,140001000,1",
    b"Z2,140001000,8",
    b"z2,140001000,8",
    b"Z4,0,1",
    b"vCont?",
    b"qThreadExtraInfo,1",
    b"qThreadExtraInfo,p1.1",
    b"T1",
    b"Tp1.1",
    b"qCRC:140001000,100",
    b"qRcmd,68656c70",
    b"vFile:setfs:0",
    b"vFile:open:2f6574632f686f73746e616d65,0,0",
    b"vFile:pread:0,100,0",
    b"vFile:close:0",
    b"vFile:fstat:0",
    b"vFile:readlink:2f70726f632f73656c662f657865",
    b"qGetTLSAddr:1,0,1000",
    b"qL1160000000000000000",
    b"QNonStop:0",
    b"QThreadEvents:1",
    b"qMemTags:1000,10:1",
    b"qMARK:find",
    b"vCtrlC",
];

/// The `qSupported` of the handshake (gdb 13's).
const QSUPPORTED: &[u8] = b"qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;fork-events+;vfork-events+;exec-events+;vContSupported+;QThreadEvents+;no-resumed+;memory-tagging+;xmlRegisters=i386";

/// Monitor commands (`qRcmd`) that may be sent: they only print.
const SAFE_MONITOR: &[&[u8]] = &[b"help", b"info registers", b"lm", b"r", b"info status"];

/// Whether the stub should see `payload` at all (see the [module docs](self)): it must not
/// resume the target, start or attach processes, write files or run arbitrary monitor
/// commands. `enders` allows `D`, `k` and `vKill`.
pub fn is_safe(payload: &[u8], enders: bool) -> bool {
    let Some(&first) = payload.first() else {
        return true;
    };
    if is_ender(payload) {
        return enders;
    }
    match first {
        b'c' | b's' | b'C' | b'S' | b'i' | b'I' | b'R' | b'r' | b'A' | b'!' | b'b' | b'B'
        | b'W' | b'd' | b'D' | b'k' | 0x03 => return false,
        _ => {}
    }
    if payload.starts_with(b"vCont") {
        return payload == b"vCont?";
    }
    if payload.starts_with(b"vFile:") {
        const READ_ONLY: &[&[u8]] = &[
            b"vFile:setfs:",
            b"vFile:pread:",
            b"vFile:close:",
            b"vFile:fstat:",
            b"vFile:readlink:",
        ];
        if READ_ONLY.iter().any(|p| payload.starts_with(p)) {
            return true;
        }
        // `vFile:open:PATH,FLAGS,MODE` only read-only.
        return payload.starts_with(b"vFile:open:")
            && payload.split(|&b| b == b',').nth(1) == Some(b"0");
    }
    if let Some(hex) = payload.strip_prefix(b"qRcmd,") {
        return SAFE_MONITOR
            .iter()
            .any(|m| hex.eq_ignore_ascii_case(hex_of(m).as_bytes()));
    }
    const BLOCKED: &[&[u8]] = &[
        b"vRun",
        b"vAttach",
        b"vStopped",
        b"QEnvironment",
        b"QSetWorkingDir",
        b"QStartupWithShell",
        b"QAllow",
        b"QPassSignals",
        b"QProgramSignals",
        b"QCatchSyscalls",
        b"QTagsplit.Run",
    ];
    if BLOCKED.iter().any(|p| payload.starts_with(p)) {
        return false;
    }
    if payload.starts_with(b"qXfer:") && payload.windows(7).any(|w| w == b":write:") {
        return false;
    }
    // Tracepoints (`QTDP`, `QTStart`, …), not our own `QTagsplit` packets.
    if payload.starts_with(b"QT") && !payload.starts_with(b"QTagsplit") {
        return false;
    }
    true
}

/// Whether `payload` may end the session (`D`, `k`, `vKill`).
fn is_ender(payload: &[u8]) -> bool {
    payload == b"k" || payload.first() == Some(&b'D') || payload.starts_with(b"vKill")
}

fn hex_of(text: &[u8]) -> String {
    text.iter().map(|b| format!("{b:02x}")).collect()
}

/// The command payloads gdb sent in every `*.server.log` (and `*.log` in gdb's remote
/// log format) in `dir`, in file-name order, de-duplicated. A missing directory gives
/// none; unreadable files are skipped.
pub fn load_seeds(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for file in files {
        // Recorded sessions are small; a huge file is not one.
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        if meta.len() > 64 << 20 {
            continue;
        }
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        for exchange in parse_log(&bytes) {
            if exchange.command.len() <= 4096 && seen.insert(exchange.command.clone()) {
                out.push(exchange.command);
            }
        }
    }
    out
}

/// How the GDB fuzzer runs.
#[derive(Clone, Debug)]
pub struct StubFuzzOptions {
    /// How long a reply may take before it counts as a hang.
    pub reply_timeout: Duration,
    /// Seed command payloads besides [`BUILTIN_SEEDS`] (from [`load_seeds`]).
    pub seeds: Vec<Vec<u8>>,
    /// With a launcher: start the peer afresh before every iteration, so that no state
    /// carries over from one session to the next (gdbserver keeps its inferior, its
    /// selected thread and more across connections) and every finding's transcript
    /// replays against a fresh peer as it happened. Slower; restarts are counted.
    pub fresh_peer: bool,
}

impl StubFuzzOptions {
    /// Options with `reply_timeout` and the built-in seeds only.
    pub fn new(reply_timeout: Duration) -> StubFuzzOptions {
        StubFuzzOptions {
            reply_timeout,
            seeds: Vec::new(),
            fresh_peer: false,
        }
    }
}

/// A session's finding (if any) given how the launched peer ended: a crash when by a
/// signal, else the exit status added to the detail.
fn with_exit(
    finding: Option<(FindingKind, String, String)>,
    status: std::process::ExitStatus,
    last: &str,
) -> Option<(FindingKind, String, String)> {
    match (crash_signal(status), finding) {
        (Some(signal), f) => Some((
            FindingKind::Crashed { signal },
            f.map_or_else(
                || format!("the peer died by signal {signal}"),
                |(_, d, _)| format!("{d}; the peer died by signal {signal}"),
            ),
            last.to_owned(),
        )),
        (None, Some((kind, detail, name))) => {
            Some((kind, format!("{detail}; the peer exited ({status})"), name))
        }
        (None, None) => None,
    }
}

/// Where the target is: a fixed address, or a launched peer's.
fn resolve(spec: &str, launcher: Option<&Launcher>) -> Result<SocketAddr, WireFuzzError> {
    if let Some(l) = launcher
        && let Some(addr) = l.addr()
    {
        return Ok(addr);
    }
    let rest = spec
        .strip_prefix("gdb://")
        .ok_or_else(|| WireFuzzError::Usage(format!("`{spec}`: expected gdb://HOST:PORT")))?;
    if rest.contains("{port}") {
        return Err(WireFuzzError::Usage(format!(
            "`{spec}` has {{port}} in it: give --launch too"
        )));
    }
    rest.to_socket_addrs()
        .map_err(|e| WireFuzzError::Usage(format!("`{spec}`: {e}")))?
        .next()
        .ok_or_else(|| WireFuzzError::Usage(format!("`{spec}`: no address")))
}

/// Whether `spec` names a GDB target (`gdb://…`, or `gdb` with a launcher).
pub fn is_gdb_spec(spec: &str) -> bool {
    spec == "gdb" || spec.starts_with("gdb://")
}

/// Fuzzes the target at `spec` until the campaign ends: a GDB stub (`gdb://HOST:PORT`, or
/// `gdb` / `gdb://127.0.0.1:{port}` with a `launcher`) with [`fuzz_gdb`], a KD target
/// (`kdnet:`, `kdcom:`) with [`super::kd::fuzz_target`].
pub fn fuzz_target(
    campaign: &mut Campaign,
    spec: &str,
    launcher: Option<&mut Launcher>,
    options: &StubFuzzOptions,
) -> Result<(), WireFuzzError> {
    if spec.starts_with("kdnet:") || spec.starts_with("kdcom:") {
        return super::kd::fuzz_target(campaign, spec, launcher, options.reply_timeout);
    }
    if !is_gdb_spec(spec) {
        return Err(WireFuzzError::Usage(format!(
            "`{spec}`: expected gdb://HOST:PORT, kdnet:… or kdcom:…"
        )));
    }
    fuzz_gdb(campaign, spec, launcher, options)
}

/// Fuzzes the GDB stub at `spec` until the campaign ends (see the [module docs](self)).
pub fn fuzz_gdb(
    campaign: &mut Campaign,
    spec: &str,
    mut launcher: Option<&mut Launcher>,
    options: &StubFuzzOptions,
) -> Result<(), WireFuzzError> {
    if let Some(l) = launcher.as_deref_mut()
        && l.addr().is_none()
    {
        l.start()?;
    }
    let mut seeds: Vec<Vec<u8>> = BUILTIN_SEEDS.iter().map(|s| s.to_vec()).collect();
    seeds.extend(options.seeds.iter().cloned());
    let enders = launcher.is_some();
    // The last iteration's transcript, for a crash found only when the next one starts.
    let mut last: Option<(Vec<u8>, String)> = None;
    let mut restart_due = false;
    while campaign.running() {
        if let Some(l) = launcher.as_deref_mut() {
            if let Some(status) = l.exit_status()
                && let Some(signal) = crash_signal(status)
                && let Some((transcript, name)) = last.take()
            {
                report(
                    campaign,
                    Outcome::finding(
                        FindingKind::Crashed { signal },
                        &name,
                        format!("the peer died by signal {signal} after the session ended"),
                    ),
                    transcript,
                )?;
                restart_due = true;
            }
            if restart_due
                || l.exit_status().is_some()
                || (options.fresh_peer && campaign.iteration() > 0)
            {
                l.start()?;
                campaign.restarted();
                restart_due = false;
            }
        }
        let addr = resolve(spec, launcher.as_deref())?;
        let mut rng = campaign.rng();
        let plan = plan(&mut rng, &seeds, enders);
        let busy_since = Instant::now();
        let (outcome, session) = loop {
            let stream = connect(addr, launcher.as_deref_mut(), campaign)?;
            let mut session = Session::new(stream, options.reply_timeout);
            match session.run(&plan) {
                Some(outcome) => break (outcome, session),
                None if busy_since.elapsed() < CONNECT_RETRY => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                None => {
                    return Err(WireFuzzError::Unreachable(format!(
                        "{addr} stays busy with another client"
                    )));
                }
            }
        };
        let mut session = session;
        let states = std::mem::take(&mut session.states);
        let transcript = session.transcript();
        let mut outcome = outcome;
        if let Some(l) = launcher.as_deref_mut() {
            if outcome.finding.is_some() || outcome.ended {
                // A dying peer closes its socket before it is reaped: give it a moment.
                // (A peer that hung or answered out of protocol is alive: it is only looked at.)
                let wait = match &outcome.finding {
                    Some((FindingKind::Died, ..)) => Duration::from_secs(2),
                    Some(_) => Duration::ZERO,
                    None => Duration::from_millis(200),
                };
                if let Some(status) = l.wait_exit(wait) {
                    outcome.finding = with_exit(outcome.finding.take(), status, &outcome.last);
                }
            }
            if outcome.finding.is_some() || outcome.ended {
                restart_due = true;
            }
        }
        for s in &states {
            campaign.reached(*s);
        }
        campaign.executed(states.last().copied().unwrap_or(0));
        match outcome.finding.take() {
            Some((kind, detail, name)) => {
                report(
                    campaign,
                    Outcome::finding(kind, &name, detail),
                    transcript.clone(),
                )?;
                last = None;
                if launcher.is_none() && kind == FindingKind::Hang {
                    // A stub that hangs keeps its client: wait for it to let go.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            None => last = Some((transcript, outcome.last)),
        }
    }
    Ok(())
}

struct Outcome {
    kind: FindingKind,
    signature: String,
    detail: String,
}

impl Outcome {
    /// `what` is the name of the command last sent (the signature is "KIND after NAME"),
    /// or, after a `=`, what the stub did whatever came before it ("KIND: WHAT").
    fn finding(kind: FindingKind, what: &str, detail: String) -> Outcome {
        Outcome {
            kind,
            signature: match what.strip_prefix('=') {
                Some(what) => format!("{}: {what}", kind.name()),
                None => format!("{} after {what}", kind.name()),
            },
            detail,
        }
    }
}

fn report(
    campaign: &mut Campaign,
    outcome: Outcome,
    transcript: Vec<u8>,
) -> Result<(), WireFuzzError> {
    campaign
        .found(Finding {
            kind: outcome.kind,
            signature: outcome.signature,
            detail: outcome.detail,
            transcript,
            extension: "log",
        })
        .map_err(|e| WireFuzzError::io("writing a finding", e))?;
    Ok(())
}

/// Connects to `addr`, retrying while it refuses (a peer reopening its port) and while
/// our simulator answers that another client is attached.
fn connect(
    addr: SocketAddr,
    mut launcher: Option<&mut Launcher>,
    campaign: &mut Campaign,
) -> Result<TcpStream, WireFuzzError> {
    let started = Instant::now();
    let mut restarted = false;
    let mut addr = addr;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) if started.elapsed() >= CONNECT_RETRY => {
                if let Some(l) = launcher.as_deref_mut()
                    && !restarted
                {
                    addr = l.start()?;
                    campaign.restarted();
                    restarted = true;
                    continue;
                }
                return Err(WireFuzzError::Unreachable(format!(
                    "cannot connect to {addr}: {e}"
                )));
            }
            Err(_) => {
                if let Some(l) = launcher.as_deref_mut()
                    && l.exit_status().is_some()
                {
                    addr = l.start()?;
                    campaign.restarted();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One step of a session's plan.
#[derive(Clone, Debug)]
struct Step {
    /// The bytes sent, exactly.
    wire: Vec<u8>,
    /// The payload as our decoder reads it (the raw body when it does not frame).
    payload: Vec<u8>,
    /// Whether our decoder delivers it as one packet.
    frames: bool,
}

impl Step {
    fn packet(payload: &[u8]) -> Step {
        Step {
            wire: frame::encode_packet(payload, false),
            payload: payload.to_vec(),
            frames: true,
        }
    }

    /// A step from bytes on the wire (a mutated packet, or a transcript's).
    fn from_wire(wire: Vec<u8>) -> Step {
        let mut decoder = Decoder::new(MAX_REPLY);
        let (payload, frames) = match decoder.decode(&wire).as_slice() {
            [Event::Packet(p)] => (p.clone(), decoder.finish().is_none()),
            _ => (raw_body(&wire), false),
        };
        Step {
            wire,
            payload,
            frames,
        }
    }
}

/// The bytes between `$` and `#` of a frame, unescaped where the escapes are whole.
fn raw_body(wire: &[u8]) -> Vec<u8> {
    let start = wire.iter().position(|&b| b == b'$').map_or(0, |p| p + 1);
    let end = wire.iter().rposition(|&b| b == b'#').unwrap_or(wire.len());
    let body = wire.get(start..end.max(start)).unwrap_or_default();
    frame::unescape(body, MAX_REPLY).unwrap_or_else(|| body.to_vec())
}

/// What an iteration sends: the handshake's mode and the commands.
#[derive(Clone, Debug)]
struct Plan {
    no_ack: bool,
    steps: Vec<Step>,
}

/// Draws one command payload: a seed or a generated command.
fn draw(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.chance(450) && !seeds.is_empty() {
        return seeds
            .get(rng.index(seeds.len()))
            .cloned()
            .unwrap_or_default();
    }
    let bytes = rng.bytes(256);
    let mut u = Unstructured::new(&bytes);
    GdbCommand::arbitrary(&mut u)
        .map(|c| c.payload().to_vec())
        .unwrap_or_else(|_| b"?".to_vec())
}

/// Whether a step may be sent: the payload as our decoder reads it and the raw body as a
/// stub without escapes at the framing level reads it.
fn step_is_safe(step: &Step, enders: bool) -> bool {
    let raw = {
        let start = step
            .wire
            .iter()
            .position(|&b| b == b'$')
            .map_or(0, |p| p + 1);
        let end = step
            .wire
            .iter()
            .rposition(|&b| b == b'#')
            .unwrap_or(step.wire.len());
        step.wire.get(start..end.max(start)).unwrap_or_default()
    };
    is_safe(&step.payload, enders) && is_safe(raw, enders) && !step.wire.contains(&0x03)
}

fn plan(rng: &mut Rng, seeds: &[Vec<u8>], enders: bool) -> Plan {
    let no_ack = rng.chance(500);
    let n = 1 + rng.below(MAX_COMMANDS);
    let mut steps = Vec::new();
    // gdb asks why the target stopped first thing; stubs that set their current thread
    // there (gdbserver) are fuzzed past it most of the time, and without it the rest.
    if rng.chance(700) {
        steps.push(Step::packet(b"?"));
    }
    for _ in 0..n {
        let mut step = Step::packet(b"?");
        for _ in 0..16 {
            let payload = draw(rng, seeds);
            let candidate = if rng.chance(400) {
                let input = frame::encode_packet(&payload, false);
                let choice = rng.bytes(64);
                let mut u = Unstructured::new(&choice);
                match gdb_frame(&input, &mut u) {
                    Ok(m) => {
                        let mut s = Step::from_wire(m.bytes);
                        s.frames &= m.frames;
                        s
                    }
                    Err(_) => Step::packet(&payload),
                }
            } else {
                Step::packet(&payload)
            };
            // Commands that may end the peer: rarely, and only where it is restarted.
            if is_ender(&candidate.payload) && !(enders && rng.chance(100)) {
                continue;
            }
            if step_is_safe(&candidate, enders) {
                step = candidate;
                break;
            }
        }
        let last = !step.frames || is_ender(&step.payload);
        steps.push(step);
        if last {
            break;
        }
    }
    Plan { no_ack, steps }
}

/// A command's name for states and signatures.
fn command_name(payload: &[u8]) -> String {
    let Some(&first) = payload.first() else {
        return "(empty)".into();
    };
    let name: Vec<u8> = if matches!(first, b'q' | b'Q' | b'v') {
        let mut parts = payload.split(|&b| matches!(b, b':' | b',' | b';'));
        let head = parts.next().unwrap_or_default();
        if head == b"qXfer" || head == b"vFile" {
            let object = parts.next().unwrap_or_default();
            [head, b":", object].concat()
        } else {
            head.to_vec()
        }
    } else {
        vec![first]
    };
    let name: Vec<u8> = name.into_iter().take(32).collect();
    name.iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect()
}

/// The class of a reply for the state count (see the [module docs](self)).
fn reply_class(reply: &[u8]) -> Vec<u8> {
    match reply.first() {
        None => b"empty".to_vec(),
        Some(b'O') if reply == b"OK" => b"OK".to_vec(),
        Some(b'E') if reply.len() <= 3 || reply.get(1) == Some(&b'.') => {
            reply.iter().take(3).copied().collect()
        }
        Some(_) if is_stop(reply) => [b"stop:", reply.get(..3).unwrap_or(reply)].concat(),
        Some(&b) => {
            let bits = usize::BITS - reply.len().leading_zeros();
            [b"data:".as_slice(), &[b], &bits.to_le_bytes()].concat()
        }
    }
}

/// Whether a packet is a stop reply (`T`/`S` and a hex signal, `W`/`X` and hex).
fn is_stop(p: &[u8]) -> bool {
    match p.split_first() {
        Some((b'T' | b'S', rest)) => {
            rest.len() >= 2 && rest.iter().take(2).all(u8::is_ascii_hexdigit)
        }
        Some((b'W' | b'X', rest)) => rest.first().is_some_and(u8::is_ascii_hexdigit),
        _ => false,
    }
}

/// Whether a packet is console output (`O` and hex text).
fn is_output(p: &[u8]) -> bool {
    match p.split_first() {
        Some((b'O', hex)) => {
            !hex.is_empty() && hex.len() % 2 == 0 && hex.iter().all(u8::is_ascii_hexdigit)
        }
        _ => false,
    }
}

/// A short, printable view of a payload.
fn show(payload: &[u8]) -> String {
    let mut s: String = payload
        .iter()
        .take(60)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if payload.len() > 60 {
        s.push_str(&format!("…({} bytes)", payload.len()));
    }
    s
}

/// How an iteration (or a replay) ended.
#[derive(Debug, Default)]
struct SessionOutcome {
    /// A finding: kind, detail, name of the last command.
    finding: Option<(FindingKind, String, String)>,
    /// The session may have ended the peer (`D`, `k`, `vKill`, a `W`/`X`).
    ended: bool,
    /// The name of the last command sent.
    last: String,
}

/// What waiting for a reply gave.
enum Wait {
    Reply(Vec<u8>),
    /// A finding: kind, detail, and the signature's `what` when it is not the command's
    /// name (see [`Outcome::finding`]).
    Bad(FindingKind, String, Option<String>),
    /// Nothing within the time-out.
    Timeout,
    /// The connection closed (or reset).
    Closed(String),
}

/// One connection: the socket, the decoder, the transcript and what was seen.
struct Session {
    stream: TcpStream,
    decoder: Decoder,
    log: RemoteLogWriter<Vec<u8>>,
    reply_timeout: Duration,
    no_ack: bool,
    ended: bool,
    states: Vec<u64>,
    /// Events decoded and not yet looked at.
    pending: std::collections::VecDeque<Event>,
    /// A readable account, one line per packet (for replay).
    account: String,
}

impl Session {
    fn new(stream: TcpStream, reply_timeout: Duration) -> Session {
        Session {
            stream,
            decoder: Decoder::new(MAX_REPLY),
            log: RemoteLogWriter::new(Vec::new()),
            reply_timeout,
            no_ack: false,
            ended: false,
            states: Vec::new(),
            pending: std::collections::VecDeque::new(),
            account: String::new(),
        }
    }

    fn transcript(mut self) -> Vec<u8> {
        let _ = self.log.finish();
        self.log.into_inner()
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.log.get_ref().len() < MAX_TRANSCRIPT {
            let _ = self.log.log(LogDirection::Write, bytes);
        }
        self.stream
            .write_all(bytes)
            .map_err(|e| format!("sending failed: {e}"))
    }

    /// Reads what is there (up to `deadline`) into the pending events; `Ok(false)` on a
    /// time-out, `Err` when the connection closed.
    fn fill(&mut self, deadline: Instant) -> Result<bool, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let _ = self.stream.set_read_timeout(Some(left));
        let mut buf = [0u8; 16 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => Err("the connection was closed".into()),
            Ok(n) => {
                let got = buf.get(..n).unwrap_or_default();
                if self.log.get_ref().len() < MAX_TRANSCRIPT {
                    let _ = self.log.log(LogDirection::Read, got);
                }
                let mut events = Vec::new();
                self.decoder.decode_into(got, &mut events);
                self.pending.extend(events);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(format!("the connection failed: {e}")),
        }
    }

    /// Waits for the reply to `step` (see the [module docs](super::fuzz_stub) for what
    /// is skipped). `expect_stop`: a stop reply answers it.
    fn wait_reply(&mut self, step: &Step, expect_stop: bool) -> Wait {
        let deadline = Instant::now() + self.reply_timeout;
        let mut naks = 0;
        // A stop reply taken as unasked: the reply after all if nothing else comes (a
        // stub that reads `?` in a packet we did not take for `?`).
        let mut unasked: Option<Vec<u8>> = None;
        loop {
            while let Some(event) = self.pending.pop_front() {
                match event {
                    Event::Packet(p) => {
                        if !self.no_ack
                            && let Err(e) = self.send(b"+")
                        {
                            return Wait::Closed(e);
                        }
                        if is_output(&p) {
                            continue;
                        }
                        if is_stop(&p) && matches!(p.first(), Some(b'W' | b'X')) {
                            self.ended = true;
                        }
                        if is_stop(&p) && !expect_stop {
                            let _ = writeln!(self.account, "  <- {} (unasked)", show(&p));
                            unasked.get_or_insert(p);
                            continue;
                        }
                        return Wait::Reply(p);
                    }
                    Event::Ack if self.no_ack => {
                        return Wait::Bad(
                            FindingKind::OutOfProtocol,
                            "a `+` in no-ack mode (the stub acks as if it had left it)".into(),
                            Some("=a + in no-ack mode".into()),
                        );
                    }
                    Event::Notification(_) | Event::Ack => {}
                    Event::Nak if step.frames && naks < 2 => {
                        naks += 1;
                        if let Err(e) = self.send(&step.wire) {
                            return Wait::Closed(e);
                        }
                    }
                    Event::Interrupt => {
                        return Wait::Bad(
                            FindingKind::OutOfProtocol,
                            "the stub sent a 0x03 byte".into(),
                            None,
                        );
                    }
                    Event::BadChecksum { computed, received } => {
                        return Wait::Bad(
                            FindingKind::OutOfProtocol,
                            format!(
                                "a packet with a wrong checksum (#{received:02x}, the bytes sum to {computed:02x})"
                            ),
                            None,
                        );
                    }
                    Event::Oversize { len } => {
                        return Wait::Bad(
                            FindingKind::OutOfProtocol,
                            format!("a packet of more than {MAX_REPLY} bytes ({len})"),
                            None,
                        );
                    }
                    Event::Garbage { len } => {
                        return Wait::Bad(
                            FindingKind::OutOfProtocol,
                            format!("{len} bytes outside any packet"),
                            None,
                        );
                    }
                    _ => {}
                }
            }
            match self.fill(deadline) {
                Ok(true) => {}
                Ok(false) => {
                    return match unasked {
                        Some(p) => {
                            let _ = writeln!(self.account, "  (taken as the reply)");
                            Wait::Reply(p)
                        }
                        None => Wait::Timeout,
                    };
                }
                Err(e) => return Wait::Closed(e),
            }
        }
    }

    /// The handshake: `qSupported`, then `QStartNoAckMode` when `no_ack`. `Err(true)`:
    /// our simulator said another client is attached (retry); `Err(false)`: a finding
    /// (in `out`).
    fn handshake(&mut self, no_ack: bool, out: &mut SessionOutcome) -> Result<(), bool> {
        let mut steps = vec![Step::packet(QSUPPORTED)];
        if no_ack {
            steps.push(Step::packet(b"QStartNoAckMode"));
        }
        for step in &steps {
            let reply = self.exchange(step, out).ok_or(false)?;
            if reply.starts_with(b"E.") && reply.windows(8).any(|w| w == b"attached") {
                return Err(true);
            }
        }
        Ok(())
    }

    /// Sends `step` and waits for its reply; records a finding in `out` (and returns
    /// `None`) when the oracle says so.
    fn exchange(&mut self, step: &Step, out: &mut SessionOutcome) -> Option<Vec<u8>> {
        let name = command_name(&step.payload);
        out.last = name.clone();
        let ender = is_ender(&step.payload);
        if ender {
            self.ended = true;
        }
        let _ = writeln!(
            self.account,
            "-> {}{}",
            show(&step.payload),
            if step.frames { "" } else { " (does not frame)" }
        );
        if let Err(e) = self.send(&step.wire) {
            if !self.ended {
                out.finding = Some((
                    FindingKind::Died,
                    format!("{e} at `{}`", show(&step.payload)),
                    name,
                ));
            }
            return None;
        }
        if !step.frames {
            // Whether it is answered is the stub's business: a probe must be.
            for attempt in 0..2 {
                let probe = Step::packet(PROBE);
                let _ = writeln!(self.account, "-> {} (probe)", show(PROBE));
                if let Err(e) = self.send(&probe.wire) {
                    out.finding = Some((
                        FindingKind::Died,
                        format!("{e} after `{}`", show(&step.payload)),
                        name,
                    ));
                    return None;
                }
                match self.wait_reply(&probe, false) {
                    Wait::Reply(p) => {
                        let _ = writeln!(self.account, "  <- {}", show(&p));
                        self.states.push(state_hash(&[
                            name.as_bytes(),
                            b"unframed",
                            &reply_class(&p),
                        ]));
                        return Some(p);
                    }
                    Wait::Timeout if attempt == 0 => {}
                    other => {
                        self.judge(other, step, &name, out);
                        return None;
                    }
                }
            }
            return None;
        }
        // Any packet that reads as `?`, to us or to a stub that takes its first byte.
        let expect_stop = step.payload.first() == Some(&b'?') || step.wire.get(1) == Some(&b'?');
        let mut wait = self.wait_reply(step, expect_stop);
        // The stub asks for symbols (`qSymbol:NAME`, gdbserver's answer to `qSymbol::`, and
        // then to whatever comes next until it is answered): answer each "unknown" as gdb
        // does, until it says OK.
        let mut lookups = 0;
        while let Wait::Reply(p) = &wait
            && let Some(symbol) = p.strip_prefix(b"qSymbol:")
            && lookups < MAX_SYMBOL_LOOKUPS
        {
            lookups += 1;
            let _ = writeln!(self.account, "  <- {}", show(p));
            let answer = Step::packet(&[SYMBOL_UNKNOWN, symbol].concat());
            let _ = writeln!(self.account, "-> {}", show(&answer.payload));
            if let Err(e) = self.send(&answer.wire) {
                wait = Wait::Closed(e);
                break;
            }
            wait = self.wait_reply(&answer, false);
        }
        match wait {
            Wait::Reply(p) => {
                let _ = writeln!(self.account, "  <- {}", show(&p));
                if step.payload == b"QStartNoAckMode" && p == b"OK" {
                    self.no_ack = true;
                }
                self.states
                    .push(state_hash(&[name.as_bytes(), &reply_class(&p)]));
                Some(p)
            }
            other => {
                self.judge(other, step, &name, out);
                None
            }
        }
    }

    /// Turns a failed wait into a finding (or not, after an ender).
    fn judge(&mut self, wait: Wait, step: &Step, name: &str, out: &mut SessionOutcome) {
        let sent = show(&step.payload);
        let finding = match wait {
            Wait::Reply(_) => return,
            Wait::Bad(kind, why, what) => (kind, format!("{why}, answering `{sent}`"), what),
            Wait::Timeout => (
                FindingKind::Hang,
                format!(
                    "no reply within {:.1} s to `{sent}`{}",
                    self.reply_timeout.as_secs_f64(),
                    if step.frames {
                        ""
                    } else {
                        " (nor to two probes after it)"
                    }
                ),
                None,
            ),
            Wait::Closed(why) => {
                if self.ended {
                    let _ = writeln!(self.account, "  (closed after an ending command)");
                    return;
                }
                (
                    FindingKind::Died,
                    format!("{why} awaiting the reply to `{sent}`"),
                    None,
                )
            }
        };
        let _ = writeln!(self.account, "  finding: {} — {}", finding.0, finding.1);
        out.finding = Some((
            finding.0,
            finding.1,
            finding.2.unwrap_or_else(|| name.to_owned()),
        ));
    }

    /// Half-closes and reads until the stub closes: a packet other than a stop reply,
    /// a notification or output is a reply nothing asked for (unless `lenient`).
    fn drain(&mut self, lenient: bool, out: &mut SessionOutcome) {
        let _ = self.stream.shutdown(Shutdown::Write);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            while let Some(event) = self.pending.pop_front() {
                let bad = match event {
                    Event::Packet(p) if !lenient && !is_stop(&p) && !is_output(&p) => {
                        Some(format!("a reply nothing asked for: `{}`", show(&p)))
                    }
                    Event::Interrupt => Some("the stub sent a 0x03 byte".into()),
                    Event::BadChecksum { computed, received } => Some(format!(
                        "a packet with a wrong checksum (#{received:02x}, the bytes sum to {computed:02x})"
                    )),
                    Event::Oversize { len } => {
                        Some(format!("a packet of more than {MAX_REPLY} bytes ({len})"))
                    }
                    Event::Garbage { len } => Some(format!("{len} bytes outside any packet")),
                    _ => None,
                };
                if let Some(why) = bad {
                    let _ = writeln!(self.account, "  finding: out-of-protocol — {why}");
                    out.finding = Some((
                        FindingKind::OutOfProtocol,
                        format!("{why} after `{}`", out.last),
                        out.last.clone(),
                    ));
                    return;
                }
            }
            match self.fill(deadline) {
                Ok(true) => {}
                // A stub that keeps the connection open: not ours to judge.
                Ok(false) => return,
                Err(why) => {
                    if why.contains("closed") || self.ended {
                        return;
                    }
                    // A reset instead of a close: the stub's way of hanging up.
                    return;
                }
            }
        }
    }

    /// Runs a whole session: the handshake, the steps, the drain. `None`: our simulator
    /// refused the connection (another client still attached).
    fn run(&mut self, plan: &Plan) -> Option<SessionOutcome> {
        let mut out = SessionOutcome::default();
        match self.handshake(plan.no_ack, &mut out) {
            Err(true) => return None,
            Err(false) => {}
            Ok(()) => self.run_steps(&plan.steps, &mut out),
        }
        out.ended = self.ended;
        Some(out)
    }

    fn run_steps(&mut self, steps: &[Step], out: &mut SessionOutcome) {
        let mut lenient = false;
        for step in steps {
            lenient |= !step.frames;
            if self.exchange(step, out).is_none() {
                return;
            }
        }
        self.drain(lenient, out);
    }
}

use std::fmt::Write as _;

/// Sends a finding's commands to `spec` again (see the [module docs](self)): the `w`
/// packets of the transcript's first session, in order, each waiting for its reply as the
/// campaign did (acks are sent as the mode requires, not copied; the probes after a packet
/// that does not frame are sent by the replay itself, as the campaign sent them), with the
/// same oracle. A KD transcript goes to [`super::kd::replay_target`].
pub fn replay_target(
    transcript: &[u8],
    spec: &str,
    mut launcher: Option<&mut Launcher>,
    reply_timeout: Duration,
) -> Result<ReplayOutcome, WireFuzzError> {
    if super::kd::is_kd_transcript(transcript) {
        return super::kd::replay_target(transcript, spec, launcher, reply_timeout);
    }
    if !is_gdb_spec(spec) {
        return Err(WireFuzzError::Usage(format!(
            "`{spec}`: a GDB transcript is replayed to gdb://HOST:PORT"
        )));
    }
    let steps = transcript_steps(transcript)?;
    if let Some(l) = launcher.as_deref_mut()
        && l.addr().is_none()
    {
        l.start()?;
    }
    let addr = resolve(spec, launcher.as_deref())?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| WireFuzzError::Unreachable(format!("cannot connect to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let mut session = Session::new(stream, reply_timeout);
    let mut out = SessionOutcome::default();
    session.run_steps(&steps, &mut out);
    if let Some(l) = launcher
        && (out.finding.is_some() || session.ended)
        && let Some(status) = l.wait_exit(Duration::from_secs(2))
    {
        out.finding = with_exit(out.finding.take(), status, &out.last);
    }
    Ok(ReplayOutcome {
        finding: out
            .finding
            .map(|(kind, _, name)| (kind, Outcome::finding(kind, &name, String::new()).signature)),
        sent: steps.len(),
        log: session.account,
    })
}

/// The commands of a transcript's first session, as steps: every `$…#cs` frame the
/// client wrote (with its two checksum characters), except the probes after a frame that
/// does not frame (the replay sends its own).
fn transcript_steps(transcript: &[u8]) -> Result<Vec<Step>, WireFuzzError> {
    let mut written = Vec::new();
    for record in parse_remote_log(transcript) {
        match record {
            LogRecord::Bytes {
                direction: LogDirection::Write,
                bytes,
            } => written.extend(bytes),
            LogRecord::End => break,
            _ => {}
        }
    }
    if written.is_empty() {
        return Err(WireFuzzError::Transcript(
            "no bytes sent by the client in it".into(),
        ));
    }
    let mut steps = Vec::new();
    let mut i = 0;
    while let Some(start) = written
        .get(i..)
        .and_then(|w| w.iter().position(|&b| b == b'$'))
    {
        let start = i + start;
        let end = written
            .get(start + 1..)
            .and_then(|w| w.iter().position(|&b| b == b'#'))
            .map_or(written.len(), |p| (start + 1 + p + 3).min(written.len()));
        let wire = written.get(start..end).unwrap_or_default().to_vec();
        i = end;
        let step = Step::from_wire(wire);
        // Our answers to the stub's symbol lookups: the replay answers them itself.
        if step
            .payload
            .strip_prefix(SYMBOL_UNKNOWN)
            .is_some_and(|name| !name.is_empty() && name.iter().all(u8::is_ascii_hexdigit))
        {
            continue;
        }
        let after_unframed = steps.last().is_some_and(|s: &Step| !s.frames);
        if after_unframed {
            // The campaign's probes: the replay sends its own.
            break;
        }
        steps.push(step);
    }
    Ok(steps)
}
