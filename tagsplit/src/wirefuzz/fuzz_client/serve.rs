//! Serving one client connection: accept it, read what it sends, answer through a
//! [`Responder`], log both directions in gdb's `set remotelogfile` format, and watch the
//! client process (the oracle: exit by a signal, a hang, a loop).

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tagsplit_protocol::gdb::frame::{Decoder, Event};
use tagsplit_protocol::gdb::remotelog::{LogDirection, RemoteLogWriter};

use crate::target::Interrupt;
use crate::wirefuzz::{FindingKind, Launcher, WireFuzzError, crash_signal, exit_signal};

/// The same packet sent this many times in a row (without anything else in between) is a
/// loop ([`FindingKind::Loop`]): no client resends one packet a hundred times against a
/// stub that answers every one of them.
pub const MAX_SAME_IN_A_ROW: usize = 100;
/// More packets than this from one client in one iteration, at least half of them
/// repeats of packets it sent before, is a loop too: a client cycling through a few
/// requests. A client that sends ever new requests is not looping, however many it
/// sends (told a `PacketSize` of 16, our console reads the pool 16 bytes at a time: tens
/// of thousands of distinct `x` packets); if it never ends, the time-out calls it a hang.
pub const MAX_PACKETS: usize = 20_000;
/// Distinct packets remembered per iteration (for [`MAX_PACKETS`]).
const MAX_DISTINCT: usize = 4 * MAX_PACKETS;
/// Largest client packet decoded (bigger ones count as one oversize event).
const MAX_CLIENT_PACKET: usize = 0x1_0000;
/// Bytes read at a time.
const READ_CHUNK: usize = 0x4000;
/// A transcript stops growing at this size (the rest of the iteration is not logged).
pub const MAX_LOG: usize = 16 << 20;
/// How long one write to the client may block (a client that stops reading is dropped).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Command kinds kept per iteration for the state hash.
const MAX_KINDS: usize = 4096;

/// What answers the client.
pub(crate) trait Responder {
    /// The client sent `bytes` (raw), holding the whole packets `packets` (payloads);
    /// append what to write back to `out`.
    fn input(&mut self, bytes: &[u8], packets: &[Vec<u8>], out: &mut Vec<u8>);
    /// Lets time pass (a running target); append anything to write to `out`. Returns
    /// true when it wants to be called again soon.
    fn poll(&mut self, out: &mut Vec<u8>) -> bool;
    /// Whether the responder is done with this client (a detach or a kill was answered).
    fn closed(&self) -> bool;
}

/// How serving a client ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The client process exited.
    Exited(ExitStatus),
    /// The client did not exit in time.
    Hang,
    /// The client looped (what it repeated).
    Loop(String),
    /// The campaign was cancelled.
    Cancelled,
    /// No client process was watched, and its connection ended.
    Closed,
    /// No client process was watched, and the time ran out.
    TimedOut,
}

/// What serving a client saw.
pub(crate) struct Served {
    /// Both directions, in gdb's log format (without `End of log`).
    pub log: RemoteLogWriter<Vec<u8>>,
    /// The kind of every packet the client sent ([`packet_kind`]), up to a bound.
    pub kinds: Vec<Vec<u8>>,
    /// Packets the client sent.
    pub packets: usize,
    /// Bytes written to the client.
    pub sent: usize,
    /// The last packet the client sent (payload).
    pub last: Option<Vec<u8>>,
    /// How it ended.
    pub end: End,
}

/// A packet's kind for signatures and the state hash: for `q`, `Q` and `v` packets the
/// name up to the first `:`, `,` or `;` (for `qXfer` and `vFile`, the second; at most 32
/// bytes); otherwise its first byte.
pub(crate) fn packet_kind(payload: &[u8]) -> &[u8] {
    match payload.first() {
        Some(b'q' | b'Q' | b'v') => {
            // `qXfer:OBJECT` and `vFile:OPERATION`: the name alone says little.
            let skip = if payload.starts_with(b"qXfer:") || payload.starts_with(b"vFile:") {
                6
            } else {
                0
            };
            let end = payload
                .iter()
                .skip(skip)
                .position(|&b| matches!(b, b':' | b',' | b';'))
                .map_or(payload.len(), |p| p + skip)
                .min(32);
            payload.get(..end).unwrap_or(payload)
        }
        Some(_) => payload.get(..1).unwrap_or(payload),
        None => b"(empty)",
    }
}

/// The oracle on a client's end: a signal is a crash; so is an exit code of 128 + SIGILL,
/// SIGABRT, SIGBUS, SIGFPE or SIGSEGV (a shell between us and the client reports its
/// death that way). Any other exit, whatever its code, is not a finding.
pub(crate) fn judge(end: &End, timeout: Duration) -> Option<(FindingKind, String)> {
    match end {
        End::Exited(status) => {
            let signal = crash_signal(*status)?;
            Some((
                FindingKind::Crashed { signal },
                match exit_signal(*status) {
                    Some(_) => format!("the client died by signal {signal}"),
                    None => format!(
                        "the client exited with {} (its shell's report of signal {signal})",
                        128 + signal
                    ),
                },
            ))
        }
        End::Hang => Some((
            FindingKind::Hang,
            format!(
                "the client had not exited after {:.0} s",
                timeout.as_secs_f64()
            ),
        )),
        End::Loop(what) => Some((FindingKind::Loop, what.clone())),
        End::Cancelled | End::Closed | End::TimedOut => None,
    }
}

/// How `end` reads in a state hash.
pub(crate) fn end_text(end: &End) -> String {
    match end {
        End::Exited(status) => match exit_signal(*status) {
            Some(s) => format!("signal {s}"),
            None => format!("exit {}", status.code().unwrap_or(-1)),
        },
        End::Hang => "hang".into(),
        End::Loop(_) => "loop".into(),
        End::Cancelled => "cancelled".into(),
        End::Closed => "closed".into(),
        End::TimedOut => "timed out".into(),
    }
}

/// Serves the one client that connects to `listener` until the client process exits
/// (or, without one, its connection ends), `timeout` passes, it loops, or `cancel` is
/// set. Only the first connection is served. A hung or looping client is stopped.
pub(crate) fn serve(
    listener: &TcpListener,
    mut client: Option<&mut Launcher>,
    responder: &mut dyn Responder,
    timeout: Duration,
    cancel: Option<&Interrupt>,
    mut log: RemoteLogWriter<Vec<u8>>,
) -> Result<Served, WireFuzzError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| WireFuzzError::io("listening", e))?;
    let start = Instant::now();
    let mut conn: Option<TcpStream> = None;
    let mut connected_once = false;
    let mut decoder = Decoder::new(MAX_CLIENT_PACKET);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut out = Vec::new();
    let mut packets_now = Vec::new();
    let mut served = Served {
        log: RemoteLogWriter::new(Vec::new()),
        kinds: Vec::new(),
        packets: 0,
        sent: 0,
        last: None,
        end: End::Closed,
    };
    let mut same = 0usize;
    let mut distinct = std::collections::HashSet::new();
    let end = loop {
        if cancel.is_some_and(Interrupt::is_set) {
            break End::Cancelled;
        }
        if let Some(l) = client.as_deref_mut()
            && let Some(status) = l.exit_status()
        {
            break End::Exited(status);
        }
        if start.elapsed() >= timeout {
            break if client.is_some() {
                End::Hang
            } else {
                End::TimedOut
            };
        }
        let Some(stream) = conn.as_mut() else {
            if connected_once {
                if client.is_none() {
                    break End::Closed;
                }
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)
                        .and_then(|()| s.set_nodelay(true))
                        .and_then(|()| s.set_write_timeout(Some(WRITE_TIMEOUT)))
                        .map_err(|e| WireFuzzError::io("setting up the client's socket", e))?;
                    conn = Some(s);
                    connected_once = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(WireFuzzError::io("accepting the client", e)),
            }
            continue;
        };
        out.clear();
        let busy = responder.poll(&mut out);
        if !send(stream, &out, &mut log, &mut served.sent) {
            conn = None;
            continue;
        }
        if responder.closed() {
            // Answered a detach or a kill: close, as a stub does.
            conn = None;
            continue;
        }
        let wait = if busy {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(20)
        };
        if stream.set_read_timeout(Some(wait)).is_err() {
            conn = None;
            continue;
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                conn = None;
                continue;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                conn = None;
                continue;
            }
        };
        let bytes = buf.get(..n).unwrap_or_default();
        if log.get_ref().len() < MAX_LOG {
            let _ = log.log(LogDirection::Write, bytes);
        }
        packets_now.clear();
        for event in decoder.decode(bytes) {
            if let Event::Packet(p) = event {
                packets_now.push(p);
            }
        }
        let mut looped = None;
        for p in &packets_now {
            served.packets += 1;
            if served.last.as_deref() == Some(p.as_slice()) {
                same += 1;
            } else {
                same = 1;
            }
            if served.kinds.len() < MAX_KINDS {
                served.kinds.push(packet_kind(p).to_vec());
            }
            served.last = Some(p.clone());
            if same > MAX_SAME_IN_A_ROW {
                looped = Some(format!(
                    "the client sent `{}` more than {MAX_SAME_IN_A_ROW} times in a row",
                    String::from_utf8_lossy(packet_kind(p))
                ));
            } else {
                if distinct.len() < MAX_DISTINCT {
                    distinct.insert(crate::wirefuzz::state_hash(&[p]));
                }
                if served.packets > MAX_PACKETS && distinct.len() * 2 < served.packets {
                    looped = Some(format!(
                        "the client sent {} packets, only {} of them different (last `{}`)",
                        served.packets,
                        distinct.len(),
                        String::from_utf8_lossy(packet_kind(p))
                    ));
                }
            }
        }
        if let Some(what) = looped {
            break End::Loop(what);
        }
        out.clear();
        responder.input(bytes, &packets_now, &mut out);
        if !send(stream, &out, &mut log, &mut served.sent) {
            conn = None;
        }
    };
    if matches!(end, End::Hang | End::Loop(_) | End::Cancelled)
        && let Some(l) = client
    {
        l.stop();
    }
    drop(conn);
    served.log = log;
    served.end = end;
    Ok(served)
}

/// Writes `out` to the client and logs it; false when the connection is gone.
fn send(
    stream: &mut TcpStream,
    out: &[u8],
    log: &mut RemoteLogWriter<Vec<u8>>,
    sent: &mut usize,
) -> bool {
    if out.is_empty() {
        return true;
    }
    if log.get_ref().len() < MAX_LOG {
        let _ = log.log(LogDirection::Read, out);
    }
    *sent += out.len();
    stream.write_all(out).is_ok()
}

/// Splits a stub's output into units: `+`, `-`, 0x03, whole `$…#cs` or `%…#cs` frames,
/// and runs of anything else.
pub(crate) fn units(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = bytes.get(i..).unwrap_or_default();
        let len = match rest.first() {
            Some(b'$' | b'%') => rest
                .iter()
                .position(|&b| b == b'#')
                .map_or(rest.len(), |h| (h + 3).min(rest.len())),
            Some(b'+' | b'-' | 0x03) => 1,
            _ => rest
                .iter()
                .position(|&b| matches!(b, b'$' | b'%' | b'+' | b'-' | 0x03))
                .unwrap_or(rest.len())
                .max(1),
        };
        out.push(rest.get(..len).unwrap_or(rest));
        i += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_split_acks_and_frames() {
        let u = units(b"+$OK#9a-$T05;#00xx%Stop:T05#aa");
        assert_eq!(
            u,
            vec![
                &b"+"[..],
                b"$OK#9a",
                b"-",
                b"$T05;#00",
                b"xx",
                b"%Stop:T05#aa"
            ]
        );
        assert_eq!(units(b"$cut"), vec![&b"$cut"[..]]);
    }

    /// Answers nothing.
    struct Mute;
    impl Responder for Mute {
        fn input(&mut self, _: &[u8], _: &[Vec<u8>], _: &mut Vec<u8>) {}
        fn poll(&mut self, _: &mut Vec<u8>) -> bool {
            false
        }
        fn closed(&self) -> bool {
            false
        }
    }

    /// Serves a client thread that sends `payload(i)` for `i` in `0..n`, then closes.
    fn serve_packets(n: usize, payload: fn(usize) -> String) -> End {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            let mut all = Vec::new();
            for i in 0..n {
                all.extend(tagsplit_protocol::gdb::frame::encode_packet(
                    payload(i).as_bytes(),
                    false,
                ));
            }
            // The server stops reading at a loop: the rest may not go out.
            let _ = s.write_all(&all);
        });
        let served = serve(
            &listener,
            None,
            &mut Mute,
            Duration::from_secs(120),
            None,
            RemoteLogWriter::new(Vec::new()),
        )
        .expect("serve");
        client.join().expect("client");
        served.end
    }

    #[test]
    fn many_different_packets_are_no_loop_but_a_cycle_is() {
        let n = MAX_PACKETS + 5000;
        assert!(matches!(
            serve_packets(n, |i| format!("m{:x},10", 0x1000 + 16 * i)),
            End::Closed
        ));
        match serve_packets(n, |i| format!("m{:x},10", 0x1000 + 16 * (i % 3))) {
            End::Loop(what) => assert!(what.contains("only 3 of them different"), "{what}"),
            other => panic!("expected a loop, got {other:?}"),
        }
        assert!(matches!(
            serve_packets(MAX_SAME_IN_A_ROW + 1, |_| "g".into()),
            End::Loop(_)
        ));
    }

    #[test]
    fn kinds() {
        assert_eq!(
            packet_kind(b"qXfer:features:read:target.xml:0,fff"),
            b"qXfer:features"
        );
        assert_eq!(packet_kind(b"vFile:pread:4,1,2"), b"vFile:pread");
        assert_eq!(packet_kind(b"qC"), b"qC");
        assert_eq!(packet_kind(b"vCont;c"), b"vCont");
        assert_eq!(packet_kind(b"m1000,4"), b"m");
        assert_eq!(packet_kind(b""), b"(empty)");
    }
}
