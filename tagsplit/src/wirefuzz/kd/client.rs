//! A mutating KD target for KD debuggers ([`fuzz_client`]) and the replay of its
//! findings ([`replay_serve`]).
//!
//! Each iteration boots a fresh simulator (`part4`) behind our KD stub
//! ([`KdStub`](tagsplit_target_sim::server::kd::KdStub)) and launches the client command
//! against a relay in front of it, so the stub itself stays untouched:
//!
//! - KDCOM: the relay listens on TCP `127.0.0.1:0` (`{addr}`, `{host}`, `{port}` in the
//!   command) and connects to the stub; the target's byte stream is cut into packets by
//!   the protocol's [`StreamDecoder`].
//! - KDNET: the stub pokes the relay's UDP socket, which forwards to the debugger's port
//!   (a free port, `{port}` in the command: `tagsplit console --target
//!   kdnet:port={port},key=K …`) and back; the relay knows the key, learns the data key
//!   from the debugger's response (as both ends derive it), opens each data datagram,
//!   and seals the (mutated) KD packet inside again with the same sequence number.
//!
//! Of the data packets the target sends, four in five pass untouched; the others go
//! through [`mutate::kd_packet`] (a mutation that still frames is preferred: valid
//! framing, hostile contents) or are replaced by a generated packet of the same type
//! (for a manipulate reply, of the same API), framed with the original id. ACKs, RESENDs
//! and RESETs pass untouched.
//!
//! Oracle: the client killed by a signal is **Crashed**; not exited within
//! `client_timeout`, **Hang** (it is killed); the same request [`LOOP_REPEAT`] times in
//! a row, or more than [`LOOP_TOTAL`] requests, **Loop**. An exit with any code is not a
//! finding.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use tagsplit_protocol::fuzz::arbitrary::Unstructured;
use tagsplit_protocol::fuzz::mutate;
use tagsplit_protocol::gdb::remotelog::{LogDirection, LogRecord, parse_remote_log};
use tagsplit_protocol::kd::{
    DebugIo, Leader, Manipulate, PacketType, Repr, StateChange, StreamDecoder, StreamEvent, le,
};
use tagsplit_protocol::kdnet::{
    Channel, ControlMessage, Endpoint, EndpointConfig, EndpointEvent, Key, Keys, Message,
};

use super::super::{
    Campaign, Finding, FindingKind, Launcher, ReplayOutcome, Rng, WireFuzzError, exit_signal,
    state_hash,
};
use super::wire::is_timeout;
use super::{KdLink, TRANSCRIPT_MARK, Transcript, is_kd_transcript, transcript_option};

/// The same request this many times in a row is a loop.
pub const LOOP_REPEAT: u32 = 200;
/// More requests than this in one run is a loop.
pub const LOOP_TOTAL: u64 = 200_000;
/// Largest read from either side.
const READ_MAX: usize = 65536;
/// How long the relay waits for input before it looks at the client again.
const TICK: Duration = Duration::from_millis(5);

/// What a relay works with while a client runs.
struct Run<'a> {
    launcher: &'a mut Launcher,
    rng: &'a mut Rng,
    deadline: Instant,
    log: &'a mut Transcript,
    requests: &'a mut Requests,
}

/// How one client run ended.
struct RunEnd {
    finding: Option<(FindingKind, String, String)>,
    state: u64,
    log: Transcript,
}

/// What the relay counts of the client's requests.
#[derive(Default)]
struct Requests {
    total: u64,
    last: Vec<u8>,
    repeat: u32,
    last_api: u32,
}

impl Requests {
    /// One data packet from the client; a loop's description when it is one.
    fn saw(&mut self, packet_type: PacketType, payload: &[u8]) -> Option<String> {
        self.total += 1;
        let mut key = packet_type.value().to_le_bytes().to_vec();
        key.extend_from_slice(payload);
        if key == self.last {
            self.repeat += 1;
        } else {
            self.repeat = 1;
            self.last = key;
        }
        self.last_api = le::u32_at(payload, 0);
        if self.repeat >= LOOP_REPEAT {
            return Some(format!(
                "the same {} request (API {:#x}) {} times in a row",
                packet_type.name(),
                self.last_api,
                self.repeat
            ));
        }
        (self.total > LOOP_TOTAL).then(|| format!("more than {LOOP_TOTAL} requests"))
    }
}

/// Decides what becomes of a data packet the target sends: itself (most of the time),
/// a mutation of it, or a generated packet of its type with its id.
fn hostile(rng: &mut Rng, repr: &Repr, kdcom: bool) -> Vec<u8> {
    let frame = |r: &Repr| {
        if kdcom {
            r.to_kdcom_bytes()
        } else {
            r.to_bytes()
        }
    };
    let framed = frame(repr);
    if repr.leader != Leader::Data {
        return framed;
    }
    let roll = rng.below(100);
    if roll < 80 {
        return framed;
    }
    let bytes = rng.bytes(1024);
    let mut u = Unstructured::new(&bytes);
    if roll < 92 {
        let mut last = None;
        for _ in 0..3 {
            let Ok(m) = mutate::kd_packet(&framed, &mut u) else {
                break;
            };
            if m.frames {
                return m.bytes;
            }
            last = Some(m.bytes);
        }
        return match last {
            Some(b) if rng.chance(250) => b,
            _ => framed,
        };
    }
    let payload = match repr.packet_type {
        PacketType::StateManipulate => u.arbitrary::<Manipulate>().ok().map(|m| {
            let mut b = m.to_bytes();
            // The API of the request it answers.
            le::put_u32(&mut b, 0, le::u32_at(&repr.payload, 0));
            b
        }),
        PacketType::StateChange64 => u.arbitrary::<StateChange>().ok().map(|s| s.to_bytes()),
        PacketType::DebugIo => u.arbitrary::<DebugIo>().ok().map(|d| d.to_bytes()),
        _ => None,
    };
    match payload {
        Some(p) => frame(&Repr::data(repr.packet_type, repr.id, p)),
        None => framed,
    }
}

/// Serves a mutating KD target over `link` to the client `command` launches, again and
/// again, until the campaign ends. See the [module docs](self).
pub fn fuzz_client(
    campaign: &mut Campaign,
    link: &KdLink,
    command: &str,
    client_timeout: Duration,
) -> Result<(), WireFuzzError> {
    let header = header(link, "client");
    let mut launcher = Launcher::new(command);
    while campaign.running() {
        let rng = campaign.rng();
        let end = one_run(link, &mut launcher, rng, client_timeout)?;
        campaign.executed(end.state);
        if let Some((kind, signature, detail)) = end.finding {
            let mut t = Transcript::default();
            t.note(&format!("client {}", launcher.command()));
            t.bytes.extend_from_slice(&end.log.bytes);
            let transcript = t.finish(&header);
            campaign
                .found(Finding {
                    kind,
                    signature,
                    detail,
                    transcript,
                    extension: "log",
                })
                .map_err(|e| WireFuzzError::io("writing a finding", e))?;
        }
    }
    launcher.stop();
    Ok(())
}

fn header(link: &KdLink, side: &str) -> String {
    match link {
        KdLink::Com => format!("{TRANSCRIPT_MARK} link=kdcom side={side}"),
        KdLink::Net { key } => format!("{TRANSCRIPT_MARK} link=kdnet key={key} side={side}"),
    }
}

#[cfg(feature = "sim")]
fn boot() -> Result<tagsplit_target_sim::machine::Machine, WireFuzzError> {
    use tagsplit_target_sim::machine::Machine;
    use tagsplit_target_sim::scenario::Scenario;
    let scenario = Scenario::builtin("part4")
        .ok_or_else(|| WireFuzzError::Usage("no built-in scenario part4".into()))?;
    Machine::boot(&scenario).map_err(|e| WireFuzzError::Usage(format!("booting part4: {e}")))
}

#[cfg(not(feature = "sim"))]
fn one_run(
    _link: &KdLink,
    _launcher: &mut Launcher,
    _rng: Rng,
    _client_timeout: Duration,
) -> Result<RunEnd, WireFuzzError> {
    Err(WireFuzzError::Usage(
        "a mutating KD target needs the simulator (feature `sim`)".into(),
    ))
}

#[cfg(feature = "sim")]
fn one_run(
    link: &KdLink,
    launcher: &mut Launcher,
    mut rng: Rng,
    client_timeout: Duration,
) -> Result<RunEnd, WireFuzzError> {
    use tagsplit_target_sim::server::kd::{KdStub, KdStubOptions};
    let machine = boot()?;
    let options = KdStubOptions {
        stop_after_ticks: Some(2000),
        ..KdStubOptions::default()
    };
    let deadline = Instant::now() + client_timeout;
    let mut log = Transcript::default();
    let mut requests = Requests::default();
    let io = |e: std::io::Error| WireFuzzError::io("the mutating target", e);
    let mut run = Run {
        launcher,
        rng: &mut rng,
        deadline,
        log: &mut log,
        requests: &mut requests,
    };
    let outcome = match link {
        KdLink::Com => {
            let stub = KdStub::spawn_kdcom(machine, options).map_err(io)?;
            let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(io)?;
            listener.set_nonblocking(true).map_err(io)?;
            let addr = listener.local_addr().map_err(io)?;
            run.launcher.run_client(addr)?;
            let r = relay_kdcom(&listener, stub.addr(), &mut run);
            let _ = stub.shutdown();
            r
        }
        KdLink::Net { key } => {
            let relay = UdpSocket::bind(("127.0.0.1", 0)).map_err(io)?;
            let debugger = Launcher::free_port().map_err(io)?;
            let debugger = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), debugger.port());
            let stub = KdStub::spawn_kdnet(machine, relay.local_addr().map_err(io)?, *key, options)
                .map_err(io)?;
            run.launcher.run_client(debugger)?;
            let r = relay_kdnet(&relay, stub.addr(), debugger, *key, &mut run);
            let _ = stub.shutdown();
            r
        }
    }?;
    let finding = match &outcome {
        Ended::Exited(status) => exit_signal(*status).map(|signal| {
            (
                FindingKind::Crashed { signal },
                format!("signal {signal}"),
                format!(
                    "killed by signal {signal} after {} requests (last API {:#x})",
                    requests.total, requests.last_api
                ),
            )
        }),
        Ended::Timeout => Some((
            FindingKind::Hang,
            "no exit".to_string(),
            format!(
                "still running after {} s, {} requests (last API {:#x})",
                client_timeout.as_secs(),
                requests.total,
                requests.last_api
            ),
        )),
        Ended::Loop(what) => Some((FindingKind::Loop, "request loop".to_string(), what.clone())),
    };
    launcher.stop();
    let code = match &outcome {
        Ended::Exited(s) => s.code().unwrap_or(-1).to_le_bytes().to_vec(),
        Ended::Timeout => b"timeout".to_vec(),
        Ended::Loop(_) => b"loop".to_vec(),
    };
    let state = state_hash(&[
        &code,
        &requests.total.to_le_bytes(),
        &requests.last_api.to_le_bytes(),
    ]);
    Ok(RunEnd {
        finding,
        state,
        log,
    })
}

/// How a relayed run ended.
enum Ended {
    Exited(std::process::ExitStatus),
    Timeout,
    Loop(String),
}

/// Whether the client ended, the time is up, or neither.
fn client_end(launcher: &mut Launcher, deadline: Instant) -> Option<Ended> {
    if let Some(status) = launcher.exit_status() {
        return Some(Ended::Exited(status));
    }
    (Instant::now() >= deadline).then_some(Ended::Timeout)
}

/// Records the client's packets (data packets, RESETs, break-ins) and counts requests.
fn client_packets(
    decoder: &mut StreamDecoder,
    log: &mut Transcript,
    requests: &mut Requests,
) -> Option<String> {
    let mut looping = None;
    while let Some(ev) = decoder.next_event() {
        match ev {
            StreamEvent::Packet(r) if r.leader == Leader::Data => {
                log.packet(LogDirection::Write, &r.to_kdcom_bytes());
                looping = looping.or(requests.saw(r.packet_type, &r.payload));
            }
            StreamEvent::Packet(r) if r.packet_type == PacketType::Reset => {
                log.packet(LogDirection::Write, &r.to_kdcom_bytes());
            }
            StreamEvent::BreakIn => log.packet(LogDirection::Write, b"b"),
            _ => {}
        }
    }
    looping
}

/// Which of two streams has input within `wait` (both waited on at once).
#[cfg(unix)]
fn readable2(a: &TcpStream, b: &TcpStream, wait: Duration) -> std::io::Result<(bool, bool)> {
    use nix::poll::{PollFd, PollFlags, ppoll};
    use nix::sys::time::TimeSpec;
    use std::os::fd::AsFd as _;
    let mut fds = [
        PollFd::new(a.as_fd(), PollFlags::POLLIN),
        PollFd::new(b.as_fd(), PollFlags::POLLIN),
    ];
    match ppoll(&mut fds, Some(TimeSpec::from_duration(wait)), None) {
        Ok(_) => {
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            let [fa, fb] = &fds;
            Ok((ready(fa), ready(fb)))
        }
        Err(nix::errno::Errno::EINTR) => Ok((false, false)),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

/// Which of two streams has input: both may (their read time-outs wait).
#[cfg(not(unix))]
fn readable2(_a: &TcpStream, _b: &TcpStream, _wait: Duration) -> std::io::Result<(bool, bool)> {
    Ok((true, true))
}

fn relay_kdcom(
    listener: &TcpListener,
    stub: SocketAddr,
    run: &mut Run<'_>,
) -> Result<Ended, WireFuzzError> {
    let io = |e: std::io::Error| WireFuzzError::io("the KDCOM relay", e);
    let mut client = loop {
        if let Some(end) = client_end(run.launcher, run.deadline) {
            return Ok(end);
        }
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(TICK),
            Err(e) => return Err(io(e)),
        }
    };
    client.set_nonblocking(false).map_err(io)?;
    client.set_nodelay(true).map_err(io)?;
    let mut target = TcpStream::connect_timeout(&stub, Duration::from_secs(5)).map_err(io)?;
    target.set_nodelay(true).map_err(io)?;
    let mut from_client = StreamDecoder::new();
    let mut from_target = StreamDecoder::new();
    let mut buf = vec![0u8; READ_MAX];
    let mut client_open = true;
    loop {
        if let Some(end) = client_end(run.launcher, run.deadline) {
            return Ok(end);
        }
        let mut idle = true;
        let (client_ready, target_ready) = readable2(&client, &target, TICK).map_err(io)?;
        if client_open && client_ready {
            client.set_read_timeout(Some(TICK)).map_err(io)?;
            match client.read(&mut buf) {
                Ok(0) => client_open = false,
                Ok(n) => {
                    idle = false;
                    let bytes = buf.get(..n).unwrap_or_default();
                    // The stub going away is the end of the run, not an error.
                    let _ = target.write_all(bytes);
                    from_client.push(bytes);
                    if let Some(what) = client_packets(&mut from_client, run.log, run.requests) {
                        return Ok(Ended::Loop(what));
                    }
                }
                Err(e) if is_timeout(&e) => {}
                Err(_) => client_open = false,
            }
        }
        if !target_ready {
            continue;
        }
        target.set_read_timeout(Some(TICK)).map_err(io)?;
        match target.read(&mut buf) {
            Ok(0) => client_open = false,
            Ok(n) => {
                idle = false;
                from_target.push(buf.get(..n).unwrap_or_default());
                while let Some(ev) = from_target.next_event() {
                    let StreamEvent::Packet(repr) = ev else {
                        continue;
                    };
                    let out = hostile(run.rng, &repr, true);
                    if repr.leader == Leader::Data {
                        run.log.packet(LogDirection::Read, &out);
                    }
                    if client_open && client.write_all(&out).is_err() {
                        client_open = false;
                    }
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => {}
        }
        if idle && !client_open {
            std::thread::sleep(TICK);
        }
    }
}

fn relay_kdnet(
    relay: &UdpSocket,
    stub: SocketAddr,
    debugger: SocketAddr,
    key: Key,
    run: &mut Run<'_>,
) -> Result<Ended, WireFuzzError> {
    let io = |e: std::io::Error| WireFuzzError::io("the KDNET relay", e);
    let mut keys = Keys::new(key);
    let mut buf = vec![0u8; READ_MAX];
    relay.set_read_timeout(Some(TICK)).map_err(io)?;
    loop {
        if let Some(end) = client_end(run.launcher, run.deadline) {
            return Ok(end);
        }
        let (n, from) = match relay.recv_from(&mut buf) {
            Ok(r) => r,
            // Timeouts, and ICMP port-unreachable from a debugger not bound yet.
            Err(_) => continue,
        };
        let datagram = buf.get(..n).unwrap_or_default();
        if from == stub {
            let out = match keys.open(datagram) {
                Ok(msg) if msg.channel == Channel::Data => {
                    let payload = match Repr::parse_bytes(&msg.payload) {
                        Ok(repr) if repr.leader == Leader::Data => {
                            let p = hostile(run.rng, &repr, false);
                            run.log.packet(LogDirection::Read, &p);
                            p
                        }
                        Ok(_) => msg.payload.clone(),
                        Err(_) => {
                            // The hello.
                            run.log.packet(LogDirection::Read, &msg.payload);
                            msg.payload.clone()
                        }
                    };
                    let sealed = Message::new(
                        Channel::Data,
                        msg.version,
                        msg.seq,
                        msg.from_debugger,
                        payload,
                    );
                    keys.seal(&sealed).unwrap_or_else(|_| datagram.to_vec())
                }
                _ => datagram.to_vec(),
            };
            let _ = relay.send_to(&out, debugger);
        } else {
            if let Ok(msg) = keys.open(datagram) {
                match msg.channel {
                    Channel::Control => {
                        if let ControlMessage::Response(resp) = ControlMessage::parse(&msg.payload)
                        {
                            let k = resp.data_key(keys.initial());
                            keys.set_data_key(k);
                        }
                    }
                    Channel::Data => {
                        if msg.payload == [tagsplit_protocol::kd::BREAKIN_PACKET_BYTE] {
                            run.log.packet(LogDirection::Write, b"b");
                        } else if let Ok(r) = Repr::parse_bytes(&msg.payload)
                            && (r.leader == Leader::Data || r.packet_type == PacketType::Reset)
                        {
                            run.log.packet(LogDirection::Write, &msg.payload);
                            if r.leader == Leader::Data
                                && let Some(what) = run.requests.saw(r.packet_type, &r.payload)
                            {
                                return Ok(Ended::Loop(what));
                            }
                        }
                    }
                }
            }
            let _ = relay.send_to(datagram, stub);
        }
    }
}

/// Serves a KD finding's target packets again (to the client `command` launches, or to
/// whoever attaches at `listen`): each `r` packet of the transcript is sent once the
/// client has sent as many data packets as preceded it in the transcript (or after a
/// wait of a second for one that does not come). KDCOM: on TCP at `listen` (default
/// `127.0.0.1:0`: `{addr}`, `{port}` in the command). KDNET: a fresh handshake under the
/// transcript's key (poking the debugger at `listen`, or at a free port that becomes
/// `{port}` in the command), the packets sealed under the new session's keys. The client
/// killed by a signal, or not exited within `timeout`, is the finding reproduced.
pub fn replay_serve(
    transcript: &[u8],
    command: Option<&str>,
    listen: Option<SocketAddr>,
    timeout: Duration,
) -> Result<ReplayOutcome, WireFuzzError> {
    if !is_kd_transcript(transcript) {
        return Err(WireFuzzError::Transcript(
            "not a KD transcript (no `c tagsplit-kd` first line)".into(),
        ));
    }
    let kdnet = transcript_option(transcript, "link").as_deref() == Some("kdnet");
    let key = match transcript_option(transcript, "key") {
        Some(k) => Some(
            k.parse::<Key>()
                .map_err(|e| WireFuzzError::Transcript(format!("key: {e}")))?,
        ),
        None => None,
    };
    let records: Vec<(LogDirection, Vec<u8>)> = parse_remote_log(transcript)
        .into_iter()
        .filter_map(|r| match r {
            LogRecord::Bytes { direction, bytes } => Some((direction, bytes)),
            _ => None,
        })
        .collect();
    let mut launcher = command.map(Launcher::new);
    let deadline = Instant::now() + timeout;
    let mut log = String::new();
    let mut sent = 0;
    let io = |e: std::io::Error| WireFuzzError::io("serving the transcript", e);
    if kdnet {
        let key =
            key.ok_or_else(|| WireFuzzError::Transcript("a KDNET transcript without key=".into()))?;
        let debugger = match (listen, launcher.as_mut()) {
            (Some(a), _) => a,
            (None, Some(_)) => {
                let p = Launcher::free_port().map_err(io)?;
                SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), p.port())
            }
            (None, None) => {
                return Err(WireFuzzError::Usage(
                    "replaying a KDNET target needs the debugger's address or a command".into(),
                ));
            }
        };
        if let Some(l) = launcher.as_mut() {
            l.run_client(debugger)?;
        }
        let sock = UdpSocket::bind(("127.0.0.1", 0)).map_err(io)?;
        let mut serve = Serve {
            records: &records,
            launcher: launcher.as_mut(),
            deadline,
            log: &mut log,
            sent: &mut sent,
        };
        serve_kdnet(&sock, debugger, key, &mut serve).map_err(io)?;
    } else {
        let listener =
            TcpListener::bind(listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))))
                .map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        if let Some(l) = launcher.as_mut() {
            l.run_client(addr)?;
        } else {
            eprintln!("serving the transcript's KDCOM target on {addr}");
        }
        let mut serve = Serve {
            records: &records,
            launcher: launcher.as_mut(),
            deadline,
            log: &mut log,
            sent: &mut sent,
        };
        serve_kdcom(&listener, &mut serve).map_err(io)?;
    }
    let finding = match launcher.as_mut() {
        Some(l) => {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = match l.wait_exit(left) {
                Some(status) => {
                    log.push_str(&format!("client exited: {status}\n"));
                    exit_signal(status)
                        .map(|signal| (FindingKind::Crashed { signal }, format!("signal {signal}")))
                }
                None => {
                    log.push_str("client still running at the time-out\n");
                    Some((FindingKind::Hang, "no exit".to_string()))
                }
            };
            l.stop();
            r
        }
        None => None,
    };
    Ok(ReplayOutcome { finding, sent, log })
}

/// The wait for a client packet the transcript says came before the next reply.
const REPLAY_STEP: Duration = Duration::from_secs(1);

fn client_gone(launcher: &mut Option<&mut Launcher>, deadline: Instant) -> bool {
    Instant::now() >= deadline || launcher.as_mut().is_some_and(|l| l.exit_status().is_some())
}

/// What serving a transcript works with.
struct Serve<'a> {
    records: &'a [(LogDirection, Vec<u8>)],
    launcher: Option<&'a mut Launcher>,
    deadline: Instant,
    log: &'a mut String,
    sent: &'a mut usize,
}

fn serve_kdcom(listener: &TcpListener, serve: &mut Serve<'_>) -> std::io::Result<()> {
    let Serve {
        records,
        launcher,
        deadline,
        log,
        sent,
    } = serve;
    let (records, deadline) = (*records, *deadline);
    let mut client = loop {
        if client_gone(launcher, deadline) {
            return Ok(());
        }
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(TICK),
            Err(e) => return Err(e),
        }
    };
    client.set_nonblocking(false)?;
    client.set_nodelay(true)?;
    let mut decoder = StreamDecoder::new();
    let mut buf = vec![0u8; READ_MAX];
    let mut heard = 0usize;
    let mut expected = 0usize;
    for (direction, bytes) in records {
        if *direction == LogDirection::Write {
            expected += 1;
            continue;
        }
        let wait_until = (Instant::now() + REPLAY_STEP).min(deadline);
        while heard < expected && Instant::now() < wait_until {
            if !hear_kdcom(&mut client, &mut decoder, &mut buf, &mut heard, TICK)? {
                return Ok(());
            }
        }
        if client_gone(launcher, deadline) || client.write_all(bytes).is_err() {
            return Ok(());
        }
        **sent += 1;
        log.push_str(&format!(
            "r {} bytes (after {heard} client packets)\n",
            bytes.len()
        ));
    }
    // Keep the line open until the client is done with it.
    loop {
        if client_gone(launcher, deadline) || launcher.is_none() {
            return Ok(());
        }
        if !hear_kdcom(&mut client, &mut decoder, &mut buf, &mut heard, TICK * 4)? {
            return Ok(());
        }
    }
}

/// Reads what the KDCOM client sent within `wait`, counting its data packets in `heard`
/// and answering them at once (ACKs, RESETs). False when the client is gone.
fn hear_kdcom(
    client: &mut TcpStream,
    decoder: &mut StreamDecoder,
    buf: &mut [u8],
    heard: &mut usize,
    wait: Duration,
) -> std::io::Result<bool> {
    client.set_read_timeout(Some(wait))?;
    match client.read(buf) {
        Ok(0) => Ok(false),
        Ok(n) => {
            decoder.push(buf.get(..n).unwrap_or_default());
            let answers = kdcom_answers(decoder, heard);
            Ok(client.write_all(&answers).is_ok())
        }
        Err(e) if is_timeout(&e) => Ok(true),
        Err(_) => Ok(false),
    }
}

/// What a target answers at once, which a transcript does not record: an ACK for each
/// data packet (with the packet's id; KDCOM without the SYNC bit), a RESET for a RESET.
fn answer(repr: &Repr, kdcom: bool) -> Option<Repr> {
    if repr.leader == Leader::Data {
        let id = if kdcom {
            repr.id & !tagsplit_protocol::kd::SYNC_PACKET_ID
        } else {
            repr.id
        };
        return Some(Repr::control(PacketType::Acknowledge, id));
    }
    (repr.packet_type == PacketType::Reset).then(|| Repr::control(PacketType::Reset, 0))
}

/// Counts the client's packets (data packets, RESETs, break-ins) in what it sent, and
/// returns the KDCOM bytes that answer them ([`answer`]).
fn kdcom_answers(decoder: &mut StreamDecoder, heard: &mut usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(ev) = decoder.next_event() {
        match ev {
            StreamEvent::Packet(r) => {
                if let Some(a) = answer(&r, true) {
                    *heard += 1;
                    out.extend_from_slice(&a.to_kdcom_bytes());
                }
            }
            StreamEvent::BreakIn => *heard += 1,
            _ => {}
        }
    }
    out
}

fn serve_kdnet(
    sock: &UdpSocket,
    debugger: SocketAddr,
    key: Key,
    serve: &mut Serve<'_>,
) -> std::io::Result<()> {
    let Serve {
        records,
        launcher,
        deadline,
        log,
        sent,
    } = serve;
    let (records, deadline) = (*records, *deadline);
    let start = Instant::now();
    let mut cfg = EndpointConfig::new(tagsplit_protocol::kd::Role::Target, key, [0x5A; 32]);
    cfg.local = sock.local_addr()?;
    cfg.peer = debugger;
    cfg.poke_interval = Duration::from_millis(200);
    let mut endpoint = Endpoint::new(cfg, Duration::ZERO);
    let mut buf = vec![0u8; READ_MAX];
    sock.set_read_timeout(Some(TICK))?;
    // The handshake (the endpoint sends its hello itself).
    let data_key = loop {
        if client_gone(launcher, deadline) {
            return Ok(());
        }
        endpoint.handle_timeout(start.elapsed());
        while let Some(d) = endpoint.poll_transmit() {
            let _ = sock.send_to(&d, debugger);
        }
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            endpoint.handle_datagram_from(start.elapsed(), from, buf.get(..n).unwrap_or_default());
        }
        while let Some(d) = endpoint.poll_transmit() {
            let _ = sock.send_to(&d, debugger);
        }
        let mut key = None;
        while let Some(ev) = endpoint.poll_event() {
            if let EndpointEvent::Connected { data_key } = ev {
                key = Some(data_key);
            }
        }
        if let Some(k) = key {
            break k;
        }
    };
    let mut keys = Keys::new(key);
    keys.set_data_key(data_key);
    // The endpoint sealed its hello with sequence number 1.
    let mut seq = 1u64;
    let mut seq_in = 0u64;
    let mut heard = 0usize;
    let mut expected = 0usize;
    let mut pending = records.iter();
    loop {
        if client_gone(launcher, deadline) {
            return Ok(());
        }
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && let Ok(msg) = keys.open(buf.get(..n).unwrap_or_default())
            && msg.channel == Channel::Data
            && msg.from_debugger
            && msg.seq > seq_in
        {
            seq_in = msg.seq;
            if msg.payload == [tagsplit_protocol::kd::BREAKIN_PACKET_BYTE] {
                heard += 1;
            } else if let Some(a) = Repr::parse_bytes(&msg.payload)
                .ok()
                .and_then(|r| answer(&r, false))
            {
                heard += 1;
                seq += 1;
                send_sealed(sock, debugger, &keys, seq, a.to_bytes());
            }
        }
        // Send what the transcript holds next, once the client has caught up.
        loop {
            let Some((direction, bytes)) = pending.as_slice().first() else {
                if launcher.is_none() {
                    return Ok(());
                }
                break;
            };
            if *direction == LogDirection::Write {
                expected += 1;
                pending.next();
                continue;
            }
            if heard < expected && Instant::now() < start + REPLAY_STEP * (expected as u32) {
                break;
            }
            pending.next();
            // The hello was sent by the endpoint.
            if bytes.len() == 12 && le::u32_at(bytes, 0) == 0 {
                continue;
            }
            seq += 1;
            if send_sealed(sock, debugger, &keys, seq, bytes.clone()) {
                **sent += 1;
                log.push_str(&format!(
                    "r {} bytes (after {heard} client packets)\n",
                    bytes.len()
                ));
            }
        }
    }
}

/// Seals `payload` as the target's data datagram number `seq` and sends it; whether it
/// could be sealed.
fn send_sealed(sock: &UdpSocket, to: SocketAddr, keys: &Keys, seq: u64, payload: Vec<u8>) -> bool {
    let msg = Message::new(
        Channel::Data,
        tagsplit_protocol::kdnet::DEFAULT_VERSION,
        seq,
        false,
        payload,
    );
    match keys.seal(&msg) {
        Ok(d) => {
            let _ = sock.send_to(&d, to);
            true
        }
        Err(_) => false,
    }
}
