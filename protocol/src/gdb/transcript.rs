//! Reads packet logs in the format of `shared/reference/gdb-transcripts/`: one line per
//! packet, a time column, then `<- PAYLOAD` (from gdb) or `-> PAYLOAD` (the reply); long
//! replies are cut and end in `...(N bytes)`. Used by replay tests of both ends.

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

/// Parses a log. Lines that are neither commands nor replies (`-- connection closed`) are
/// skipped, as are replies before the first command and truncated commands.
pub fn parse_log(log: &[u8]) -> Vec<LoggedExchange> {
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
}
