//! The fuzz-client campaign: a mutating GDB stub that a client is launched against
//! again and again, and `replay --serve`, which serves a finding's replies once more.
//!
//! # The mutating stub
//!
//! Each iteration boots a fresh simulated machine (the scenario, `part4` by default), so
//! iterations are deterministic, listens on `127.0.0.1:0`, launches the client command
//! with `{addr}` (and `{host}`, `{port}`) put in, and serves it with our own stub core
//! ([`Stub`](tagsplit_protocol::gdb::stub::Stub) over the simulator's
//! [`SimTarget`](tagsplit_target_sim::server::gdb::SimTarget)). Every reply the stub
//! writes is split into `+`/`-` and `$…#cs` units and, with a probability of
//! [`MUTATE_PER_MILLE`] per mille, a reply frame is replaced by (chosen by the
//! iteration's [`Rng`](super::Rng), so the bytes served depend only on the seed and what the client
//! sent):
//!
//! - a [`mutate::gdb_frame`](tagsplit_protocol::fuzz::mutate::gdb_frame) of it, keeping
//!   only mutations that still frame (hostile numbers, lengths, escapes, run lengths,
//!   XML);
//! - a generated [`GdbReply`](tagsplit_protocol::fuzz::GdbReply) of the kind the command
//!   expects;
//! - for `qXfer`, a hostile document (deep nesting, a huge attribute, entity
//!   declarations, an include of itself, thousands of elements, odd numbers, the real
//!   document cut short); for a stop reply, an odd one (`T` with huge or unknown fields,
//!   registers of odd numbers and sizes, `W`, `X`, `S`, `N`, or `O` output ahead of the
//!   real reply).
//!
//! Each reply is at most [`MAX_REPLY`] bytes. Runs are deterministic: a resume
//! stops after [`RUN_TICKS`] ticks, unpaced by the clock.
//!
//! # The oracle
//!
//! - The client dies by a signal (or its shell exits with 128 + SIGILL, SIGABRT, SIGBUS,
//!   SIGFPE or SIGSEGV): [`FindingKind::Crashed`].
//! - It has not exited after the client time-out: [`FindingKind::Hang`] (it is killed).
//!   gdb waits `remotetimeout` (2 s) for a reply and retries a few times, so keep the
//!   time-out well above that (the default is 10 s).
//! - It sends the same packet more than [`MAX_SAME_IN_A_ROW`] times in a row, or
//!   more than [`MAX_PACKETS`] packets in one iteration of which at least half repeat
//!   earlier ones: [`FindingKind::Loop`].
//!
//! Any normal exit, whatever its code, is not a finding (gdb exits 1 on many errors).
//! The finding's signature is its kind and the kind of the last packet the client sent
//! (the name of a `q`/`Q`/`v` packet, with the object for `qXfer` and the operation for `vFile`; otherwise its first letter), so the same crash after the same command counts once.
//!
//! gdb asked to dump core on an internal error (it asks in `-batch` and answers yes)
//! raises its own core-size limit: run the campaign in a scratch directory, or add
//! `-iex "maint set internal-error corefile no"` to its command.
//!
//! # Distinct states
//!
//! An iteration's state is the [`state_hash`](super::state_hash) of the sequence of
//! packet kinds the client sent and how it ended (`exit N`, `signal N`, `hang`, `loop`).
//!
//! # Transcripts
//!
//! A finding's transcript is the whole iteration in gdb's `set remotelogfile` format
//! (extension `log`): first a `c` record with the client command (as given, with
//! `{addr}`), then a `c #finding KIND: SIGNATURE` record, then `w` records (what the
//! client sent) and `r` records (exactly what the mutating stub sent), and `End of log`.
//!
//! # Replay
//!
//! [`replay_serve`] listens, and answers each client packet with the stub bytes that
//! followed the same client packet in the transcript (acks too, in order: the first
//! match at or after the last one used, else the first anywhere), so the client sees what
//! it saw in the campaign. With a command, it launches that client and judges its end
//! with the same oracle; the finding is reproduced when the same kind of finding happens.

mod hostile;
mod serve;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use tagsplit_protocol::gdb::remotelog::{
    LogDirection, LogRecord, RemoteLogWriter, parse_remote_log,
};

use super::{Campaign, FindingKind, Launcher, ReplayOutcome, WireFuzzError};
pub use hostile::{MAX_REPLY, MUTATE_PER_MILLE};
pub use serve::{MAX_PACKETS, MAX_SAME_IN_A_ROW};

/// Ticks a resume (`c`, `s`, `vCont`) runs before the stub reports a stop: runs are
/// exact, so the stop replies served do not depend on the clock.
pub const RUN_TICKS: u64 = 2000;

/// The `c` record that carries the finding in a transcript.
const FINDING_MARK: &str = "#finding ";

/// Serves a mutating stub (the simulator booted from `scenario`, a built-in name) to the
/// client `command` launches, again and again, until the campaign ends. See the
/// [module docs](self).
#[cfg(feature = "sim")]
pub fn fuzz_client(
    campaign: &mut Campaign,
    command: &str,
    scenario: &str,
    client_timeout: Duration,
) -> Result<(), WireFuzzError> {
    use tagsplit_target_sim::scenario::Scenario;

    let scenario = Scenario::builtin(scenario)
        .ok_or_else(|| WireFuzzError::Usage(format!("no built-in scenario `{scenario}`")))?;
    let mut launcher = Launcher::new(command);
    let cancel = campaign.options().cancel.clone();
    while campaign.running() {
        let mut responder = stub::MutatingStub::new(&scenario, campaign.rng())?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| WireFuzzError::io("listening on 127.0.0.1", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| WireFuzzError::io("listening on 127.0.0.1", e))?;
        launcher.run_client(addr)?;
        let served = serve::serve(
            &listener,
            Some(&mut launcher),
            &mut responder,
            client_timeout,
            cancel.as_ref(),
            header(command),
        )?;
        if matches!(served.end, serve::End::Cancelled) {
            break;
        }
        let end = serve::end_text(&served.end);
        let mut parts: Vec<&[u8]> = served.kinds.iter().map(Vec::as_slice).collect();
        parts.push(end.as_bytes());
        campaign.executed(super::state_hash(&parts));
        if let Some((kind, detail)) = serve::judge(&served.end, client_timeout) {
            let last = served.last.as_deref().map_or("(nothing)".to_string(), |p| {
                String::from_utf8_lossy(serve::packet_kind(p)).into_owned()
            });
            let signature = format!("{kind} after {last}");
            let mut log = served.log;
            let _ = log.finish();
            let transcript = mark_finding(log.into_inner(), kind, &signature);
            campaign
                .found(super::Finding {
                    kind,
                    detail: format!(
                        "{detail}; {} packets from the client, {} bytes served",
                        served.packets, served.sent
                    ),
                    signature,
                    transcript,
                    extension: "log",
                })
                .map_err(|e| WireFuzzError::io("writing a finding", e))?;
        }
    }
    Ok(())
}

/// A transcript's start: the client command as a `c` record.
fn header(command: &str) -> RemoteLogWriter<Vec<u8>> {
    let mut log = RemoteLogWriter::new(Vec::new());
    let _ = log.log_command(command);
    log
}

/// Puts the `c #finding …` record after the command record at the top of `log`.
fn mark_finding(log: Vec<u8>, kind: FindingKind, signature: &str) -> Vec<u8> {
    let mut mark = RemoteLogWriter::new(Vec::new());
    let _ = mark.log_command(&format!("{FINDING_MARK}{}: {signature}", kind.name()));
    let mark = mark.into_inner();
    // The log starts with "\nc COMMAND"; the mark goes right after that line.
    let first_line_end = log
        .iter()
        .skip(1)
        .position(|&b| b == b'\n')
        .map_or(log.len(), |p| p + 1);
    let mut out = Vec::with_capacity(log.len() + mark.len());
    out.extend_from_slice(log.get(..first_line_end).unwrap_or(&log));
    out.extend_from_slice(&mark);
    out.extend_from_slice(log.get(first_line_end..).unwrap_or_default());
    out
}

#[cfg(feature = "sim")]
mod stub {
    use std::collections::VecDeque;

    use tagsplit_protocol::gdb::stub::{Stub, StubConfig};
    use tagsplit_target_sim::machine::Machine;
    use tagsplit_target_sim::scenario::Scenario;
    use tagsplit_target_sim::server::gdb::{GdbStubOptions, SimRun, SimTarget};

    use super::hostile;
    use super::serve::{Responder, units};
    use crate::wirefuzz::{Rng, WireFuzzError};

    /// Commands remembered to know what a reply answers.
    const MAX_QUEUED: usize = 256;

    /// Our stub core over a fresh simulator, its replies mutated.
    pub(super) struct MutatingStub {
        machine: Machine,
        run: SimRun,
        stub: Stub,
        rng: Rng,
        /// Input the stub has not taken yet.
        held: Vec<u8>,
        /// Client commands not answered yet, oldest first.
        commands: VecDeque<Vec<u8>>,
        /// The last command answered (for replies beyond the queue).
        last: Option<Vec<u8>>,
        raw: Vec<u8>,
    }

    impl MutatingStub {
        pub(super) fn new(scenario: &Scenario, rng: Rng) -> Result<Self, WireFuzzError> {
            let machine = Machine::boot(scenario)
                .map_err(|e| WireFuzzError::Usage(format!("booting the simulator: {e}")))?;
            let options = GdbStubOptions {
                stop_after_ticks: Some(super::RUN_TICKS),
                slice_interval: std::time::Duration::ZERO,
                ..GdbStubOptions::default()
            };
            let stub = Stub::new(StubConfig {
                packet_size: options.packet_size,
                max_pending: options.max_pending,
                max_transmit: options.max_transmit,
                ..StubConfig::default()
            });
            Ok(MutatingStub {
                machine,
                run: SimRun::new(options),
                stub,
                rng,
                held: Vec::new(),
                commands: VecDeque::new(),
                last: None,
                raw: Vec::new(),
            })
        }

        /// Takes the stub's output and mutates it into `out`.
        fn transmit(&mut self, out: &mut Vec<u8>) {
            self.raw.clear();
            self.stub.poll_transmit_into(&mut self.raw);
            let raw = std::mem::take(&mut self.raw);
            for unit in units(&raw) {
                if unit.first() == Some(&b'$') {
                    if let Some(c) = self.commands.pop_front() {
                        self.last = Some(c);
                    }
                    out.extend(hostile::reply_for(
                        &mut self.rng,
                        unit,
                        self.last.as_deref(),
                    ));
                } else {
                    out.extend_from_slice(unit);
                }
            }
            self.raw = raw;
        }

        fn feed(&mut self, out: &mut Vec<u8>) {
            loop {
                let mut target = SimTarget::new(&mut self.machine, &mut self.run);
                let used = self.stub.receive(&mut target, &self.held);
                self.held.drain(..used.min(self.held.len()));
                let before = out.len();
                self.transmit(out);
                if self.held.is_empty() || (used == 0 && out.len() == before) {
                    break;
                }
            }
        }
    }

    impl Responder for MutatingStub {
        fn input(&mut self, bytes: &[u8], packets: &[Vec<u8>], out: &mut Vec<u8>) {
            for p in packets {
                if self.commands.len() < MAX_QUEUED {
                    self.commands.push_back(p.clone());
                }
            }
            self.held.extend_from_slice(bytes);
            self.feed(out);
        }

        fn poll(&mut self, out: &mut Vec<u8>) -> bool {
            let mut target = SimTarget::new(&mut self.machine, &mut self.run);
            let wait = self.stub.poll_run(&mut target);
            if !self.held.is_empty() {
                self.feed(out);
            } else {
                self.transmit(out);
            }
            wait.is_some()
        }

        fn closed(&self) -> bool {
            self.stub.is_closed()
        }
    }
}

/// One step of a transcript being replayed: a client packet and the stub bytes that
/// followed it.
#[derive(Debug)]
struct Step {
    packet: Vec<u8>,
    answer: Vec<u8>,
}

/// A transcript read for replay.
#[derive(Debug, Default)]
struct Script {
    command: Option<String>,
    finding: Option<String>,
    /// Stub bytes before the client sent any packet.
    greeting: Vec<u8>,
    steps: Vec<Step>,
}

fn read_script(transcript: &[u8]) -> Result<Script, WireFuzzError> {
    if !tagsplit_protocol::gdb::remotelog::is_remote_log(transcript) {
        return Err(WireFuzzError::Transcript(
            "not a gdb remote log (set remotelogfile format)".into(),
        ));
    }
    let mut script = Script::default();
    let mut decoder = tagsplit_protocol::gdb::frame::Decoder::new(serve::MAX_LOG);
    for record in parse_remote_log(transcript) {
        match record {
            LogRecord::Command(c) => {
                let c = String::from_utf8_lossy(&c).into_owned();
                if let Some(f) = c.strip_prefix(FINDING_MARK) {
                    script.finding = Some(f.to_string());
                } else if script.command.is_none() {
                    script.command = Some(c);
                }
            }
            LogRecord::Bytes {
                direction: LogDirection::Write,
                bytes,
            } => {
                for event in decoder.decode(&bytes) {
                    if let tagsplit_protocol::gdb::frame::Event::Packet(p) = event {
                        script.steps.push(Step {
                            packet: p,
                            answer: Vec::new(),
                        });
                    }
                }
            }
            LogRecord::Bytes {
                direction: LogDirection::Read,
                bytes,
            } => match script.steps.last_mut() {
                Some(step) => step.answer.extend_from_slice(&bytes),
                None => script.greeting.extend_from_slice(&bytes),
            },
            _ => {}
        }
    }
    Ok(script)
}

/// Answers client packets from a [`Script`].
struct Replayer {
    script: Script,
    cursor: usize,
    greeted: bool,
    lines: String,
}

impl serve::Responder for Replayer {
    fn input(&mut self, _bytes: &[u8], packets: &[Vec<u8>], out: &mut Vec<u8>) {
        for p in packets {
            let found = (self.cursor..self.script.steps.len())
                .chain(0..self.cursor)
                .find(|&i| self.script.steps.get(i).is_some_and(|s| &s.packet == p));
            let text = String::from_utf8_lossy(p.get(..p.len().min(60)).unwrap_or(p)).into_owned();
            match found.and_then(|i| self.script.steps.get(i).map(|s| (i, s))) {
                Some((i, step)) => {
                    out.extend_from_slice(&step.answer);
                    self.lines.push_str(&format!(
                        "{text} -> {} bytes (step {i})\n",
                        step.answer.len()
                    ));
                    self.cursor = i + 1;
                }
                None => self
                    .lines
                    .push_str(&format!("{text} -> not in the transcript\n")),
            }
        }
    }

    fn poll(&mut self, out: &mut Vec<u8>) -> bool {
        if !std::mem::replace(&mut self.greeted, true) {
            out.extend_from_slice(&self.script.greeting);
        }
        false
    }

    fn closed(&self) -> bool {
        false
    }
}

/// Serves a fuzz-client finding's recorded replies again: to the client `command`
/// launches (default: none, just serve whoever connects), listening at `listen` (default
/// 127.0.0.1 and a free port; `on_listen` is told the address). With a command, the
/// client's end is judged as the campaign judged it (`timeout` is the client time-out);
/// without, it serves one connection until it closes or `timeout` passes.
pub fn replay_serve(
    transcript: &[u8],
    command: Option<&str>,
    listen: Option<SocketAddr>,
    timeout: Duration,
    on_listen: &mut dyn FnMut(SocketAddr),
) -> Result<(ReplayOutcome, Option<String>), WireFuzzError> {
    let script = read_script(transcript)?;
    let expected = script.finding.clone();
    let listen = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = TcpListener::bind(listen)
        .map_err(|e| WireFuzzError::io(format!("listening on {listen}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| WireFuzzError::io("listening", e))?;
    on_listen(addr);
    let mut launcher = command.map(Launcher::new);
    if let Some(l) = launcher.as_mut() {
        l.run_client(addr)?;
    }
    let mut replayer = Replayer {
        script,
        cursor: 0,
        greeted: false,
        lines: String::new(),
    };
    let served = serve::serve(
        &listener,
        launcher.as_mut(),
        &mut replayer,
        timeout,
        None,
        RemoteLogWriter::new(Vec::new()),
    )?;
    let finding = serve::judge(&served.end, timeout);
    let mut log = replayer.lines;
    log.push_str(&format!("client: {}\n", serve::end_text(&served.end)));
    Ok((
        ReplayOutcome {
            finding,
            sent: served.sent,
            log,
        },
        expected,
    ))
}

/// Whether `outcome` reproduces the finding recorded as `expected` (`KIND: SIGNATURE`
/// from the transcript's `c #finding` record): a finding of the same kind (any finding
/// when the transcript names none).
pub fn reproduces(outcome: &ReplayOutcome, expected: Option<&str>) -> bool {
    match (&outcome.finding, expected) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some((kind, _)), Some(e)) => e.split(':').next() == Some(kind.name()),
    }
}

/// The client command recorded in a transcript (its first `c` record), if any.
pub fn recorded_command(transcript: &[u8]) -> Option<String> {
    read_script(transcript).ok().and_then(|s| s.command)
}

#[cfg(test)]
#[cfg(feature = "sim")]
mod tests {
    use super::serve::Responder as _;
    use super::*;
    use crate::wirefuzz::Rng;
    use tagsplit_protocol::gdb::frame::encode_packet;
    use tagsplit_target_sim::scenario::Scenario;

    /// What the mutating stub sends for a fixed client session, for iteration `n` of
    /// seed `seed`.
    fn session(seed: u64, n: u64) -> Vec<u8> {
        let scenario = Scenario::builtin("part4").expect("part4");
        let mut stub =
            stub::MutatingStub::new(&scenario, Rng::for_iteration(seed, n)).expect("boot");
        let commands: [&[u8]; 11] = [
            b"qSupported:swbreak+;xmlRegisters=i386",
            b"QStartNoAckMode",
            b"?",
            b"qXfer:features:read:target.xml:0,1000",
            b"qXfer:libraries:read::0,1000",
            b"g",
            b"mfffff80002a01000,40",
            b"qXfer:memory-map:read::0,1000",
            b"Z0,fffff80002a01004,1",
            b"vCont;c",
            b"D",
        ];
        let mut out = Vec::new();
        for c in commands {
            let wire = encode_packet(c, false);
            stub.input(&wire, &[c.to_vec()], &mut out);
            for _ in 0..10_000 {
                if !stub.poll(&mut out) {
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn the_same_seed_serves_the_same_bytes_and_seeds_differ() {
        let mut distinct = std::collections::HashSet::new();
        for n in 0..24 {
            let a = session(5, n);
            assert!(a.len() > 1000);
            assert_eq!(a, session(5, n), "iteration {n}");
            distinct.insert(a);
        }
        // Mutations happen (about one reply in eight): the iterations do not all serve
        // the same bytes.
        assert!(distinct.len() > 4, "{} distinct sessions", distinct.len());
    }
}
