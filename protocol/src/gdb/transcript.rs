//! Reads packet logs into command/reply pairs, in two formats (told apart by
//! [`parse_log`] itself):
//!
//! * gdb's own session log (`set remotelogfile FILE`, and what `tagsplit --log-packets`
//!   writes; see [`super::remotelog`]): the bytes each way, which are framed here with
//!   the protocol's [`frame::Decoder`](super::frame::Decoder); every command the client
//!   sent is paired with the next reply the stub sent (replies answer in order, so
//!   pipelined commands pair up too). Acks, the interrupt byte, notifications and console
//!   output (`O` packets) are not replies; a command sent again after the stub's `-` and
//!   a reply sent again after the client's `-` are counted once. `End of log` ends a
//!   session: commands still unanswered there keep no reply.
//! * the format of `shared/reference/gdb-transcripts/`: one line per packet, a time
//!   column, then `<- PAYLOAD` (from gdb) or `-> PAYLOAD` (the reply); long replies are
//!   cut and end in `...(N bytes)`.
//!
//! Used by the replay tests of both ends.

use std::collections::VecDeque;

use super::frame::{Decoder, Event};
use super::remotelog::{LogDirection, LogRecord, is_remote_log, parse_remote_log};

/// One logged exchange: a command from gdb and the reply that followed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedExchange {
    /// The command payload, as gdb sent it.
    pub command: Vec<u8>,
    /// The reply payload, when it was logged in full.
    pub reply: Option<Vec<u8>>,
    /// The real length of a reply the log cut short.
    pub truncated_reply_len: Option<usize>,
}

/// `...(N bytes)` at the end of a logged payload: the real length.
fn truncated_len(text: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(text).ok()?;
    let body = text.strip_suffix(" bytes)")?;
    let pos = body.rfind("...(")?;
    body.get(pos + 4..)?.parse().ok()
}

/// The largest packet a logged session is read with (larger frames are reported as a
/// reply of that length, [`LoggedExchange::truncated_reply_len`], not kept).
pub const MAX_LOGGED_PACKET: usize = 1 << 20;

/// Parses a log in either format (see the [module docs](self)). In the transcript
/// format, lines that are neither commands nor replies (`-- connection closed`) are
/// skipped, as are replies before the first command and truncated commands.
pub fn parse_log(log: &[u8]) -> Vec<LoggedExchange> {
    if is_remote_log(log) {
        return exchanges_of_remote_log(&parse_remote_log(log));
    }
    let mut out: Vec<LoggedExchange> = Vec::new();
    for line in log.split(|&b| b == b'\n') {
        let trimmed = line.trim_ascii_start();
        let Some(pos) = trimmed.iter().position(|&b| b == b' ') else {
            continue;
        };
        let rest = trimmed.get(pos + 1..).unwrap_or_default();
        if let Some(cmd) = rest.strip_prefix(b"<- ") {
            if truncated_len(cmd).is_none() {
                out.push(LoggedExchange {
                    command: cmd.to_vec(),
                    reply: None,
                    truncated_reply_len: None,
                });
            }
        } else if let Some(reply) = rest.strip_prefix(b"->") {
            let reply = reply.strip_prefix(b" ").unwrap_or(reply);
            if let Some(last) = out.last_mut() {
                match truncated_len(reply) {
                    Some(n) => last.truncated_reply_len = Some(n),
                    None => last.reply = Some(reply.to_vec()),
                }
            }
        }
    }
    out
}

/// Whether a packet from the stub is console output (`O` and hex text), not a reply.
fn is_output(packet: &[u8]) -> bool {
    match packet.split_first() {
        Some((b'O', hex)) => {
            !hex.is_empty() && hex.len() % 2 == 0 && hex.iter().all(u8::is_ascii_hexdigit)
        }
        _ => false,
    }
}

/// Pairs the packets of a remote log's records (see the [module docs](self)).
pub fn exchanges_of_remote_log(records: &[LogRecord]) -> Vec<LoggedExchange> {
    let mut out: Vec<LoggedExchange> = Vec::new();
    let mut client = Decoder::new(MAX_LOGGED_PACKET);
    let mut stub = Decoder::new(MAX_LOGGED_PACKET);
    // Commands waiting for their reply, oldest first (indices into `out`).
    let mut unanswered: VecDeque<usize> = VecDeque::new();
    // The stub asked for the last command again / the client for the last reply.
    let mut command_again = false;
    let mut reply_again = false;
    let mut last_reply: Option<Vec<u8>> = None;
    let mut events = Vec::new();
    for record in records {
        match record {
            LogRecord::Bytes {
                direction: LogDirection::Write,
                bytes,
            } => {
                events.clear();
                client.decode_into(bytes, &mut events);
                for ev in events.drain(..) {
                    match ev {
                        Event::Packet(p) => {
                            let resent = std::mem::take(&mut command_again)
                                && out.last().is_some_and(|l| l.command == p);
                            if !resent {
                                unanswered.push_back(out.len());
                                out.push(LoggedExchange {
                                    command: p,
                                    reply: None,
                                    truncated_reply_len: None,
                                });
                            }
                        }
                        Event::Nak => reply_again = true,
                        _ => {}
                    }
                }
            }
            LogRecord::Bytes {
                direction: LogDirection::Read,
                bytes,
            } => {
                events.clear();
                stub.decode_into(bytes, &mut events);
                for ev in events.drain(..) {
                    match ev {
                        Event::Packet(p) if is_output(&p) => {}
                        Event::Packet(p) => {
                            if std::mem::take(&mut reply_again) && last_reply.as_ref() == Some(&p) {
                                continue;
                            }
                            if let Some(ex) = unanswered.pop_front().and_then(|i| out.get_mut(i)) {
                                ex.reply = Some(p.clone());
                            }
                            last_reply = Some(p);
                        }
                        Event::Oversize { len } => {
                            if let Some(ex) = unanswered.pop_front().and_then(|i| out.get_mut(i)) {
                                ex.truncated_reply_len = Some(len);
                            }
                            last_reply = None;
                        }
                        Event::Nak => command_again = true,
                        _ => {}
                    }
                }
            }
            LogRecord::End => {
                client = Decoder::new(MAX_LOGGED_PACKET);
                stub = Decoder::new(MAX_LOGGED_PACKET);
                unanswered.clear();
                command_again = false;
                reply_again = false;
                last_reply = None;
            }
            LogRecord::Event { .. } | LogRecord::Command(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_replies_and_cut_replies() {
        let log = b"      0 <- qSupported:swbreak+\n      0 -> PacketSize=4000\n      0 <- vMustReplyEmpty\n      0 -> \n      2 <- g\n      2 -> 0000...(1072 bytes)\n     11 -- connection closed by gdb\n";
        let ex = parse_log(log);
        assert_eq!(ex.len(), 3);
        assert_eq!(ex[0].reply.as_deref(), Some(&b"PacketSize=4000"[..]));
        assert_eq!(ex[1].reply.as_deref(), Some(&b""[..]));
        assert_eq!(
            ex[2],
            LoggedExchange {
                command: b"g".to_vec(),
                reply: None,
                truncated_reply_len: Some(1072)
            }
        );
    }

    #[test]
    fn pairs_a_remote_log_in_order_skipping_acks_output_and_resends() {
        // Ack mode, a NAKed command sent again, monitor output before its OK, a reply
        // the client NAKed and got again, two pipelined commands, a session cut short.
        use super::super::frame::encode_packet;
        use super::super::remotelog::RemoteLogWriter;
        let p = |payload: &[u8]| encode_packet(payload, false);
        let cat = |parts: &[&[u8]]| parts.concat();
        let mut w = RemoteLogWriter::new(Vec::new());
        let (out, back) = (LogDirection::Write, LogDirection::Read);
        w.log(out, &cat(&[b"+", &p(b"qSupported:swbreak+")]))
            .unwrap();
        w.log(back, &cat(&[b"+", &p(b"PacketSize=4000")])).unwrap();
        w.log(out, &cat(&[b"+", &p(b"?")])).unwrap();
        w.log(back, b"-").unwrap();
        w.log(out, &p(b"?")).unwrap();
        w.log(back, &cat(&[b"+", &p(b"T05thread:01;")])).unwrap();
        w.log(out, &cat(&[b"+", &p(b"qRcmd,68656c70")])).unwrap();
        w.log(back, &cat(&[b"+", &p(b"O6869"), &p(b"OK")])).unwrap();
        w.log(out, b"+-").unwrap();
        w.log(back, &p(b"OK")).unwrap();
        w.log(out, &cat(&[b"+", &p(b"m0,1"), &p(b"m1,1")])).unwrap();
        w.log(back, &cat(&[&p(b"00"), &p(b"01")])).unwrap();
        w.log(out, &[0x03]).unwrap();
        w.finish().unwrap();
        w.log(out, &p(b"g")).unwrap();
        w.finish().unwrap();
        let log = w.into_inner();
        let ex = parse_log(&log);
        let pairs: Vec<(&[u8], Option<&[u8]>)> = ex
            .iter()
            .map(|e| (&e.command[..], e.reply.as_deref()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                (&b"qSupported:swbreak+"[..], Some(&b"PacketSize=4000"[..])),
                (b"?", Some(b"T05thread:01;")),
                (b"qRcmd,68656c70", Some(b"OK")),
                (b"m0,1", Some(b"00")),
                (b"m1,1", Some(b"01")),
                (b"g", None),
            ]
        );
    }
}
