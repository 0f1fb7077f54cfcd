//! gdb's remote session log (`set remotelogfile FILE`): writing and reading it.
//!
//! The format, as gdb 13 writes it (gdb/serial.c, in its default `remotelogbase ascii`):
//! every byte gdb sends is logged as it is written, every byte it reads as it is read. A
//! new line starts whenever the direction changes: `\n` then `w ` (bytes gdb wrote) or
//! `r ` (bytes gdb read). Bytes are written as themselves when printable (0x20..=0x7e),
//! except `\` which is doubled; `\b \f \n \r \t \v` become those two-character escapes,
//! and every other byte `\xNN` (two lower-case hex digits). Events that are not bytes are
//! written in angle brackets: `<Timeout: N seconds>`, `<Error: …>`, `<Eof>` and `<Break>`
//! (a serial break). A command typed at gdb's prompt is logged as a line of its own,
//! `c COMMAND`. Closing the connection writes `\nEnd of log\n`. The file thus starts with
//! an empty line, and a raw newline only ever starts a record, so records are lines.
//!
//! [`RemoteLogWriter`] writes that format from tagsplit's side of a connection: its `w`
//! is always what the *client* (the debugger) sent and `r` what the stub sent, so a log
//! written by our stub reads like one gdb wrote of the same session. [`parse_remote_log`]
//! reads it back into [`LogRecord`]s (from gdb, from us, or cut off anywhere: nothing is
//! an error), and [`super::transcript::parse_log`] turns it into command/reply pairs.
//!
//! Only gdb's default `remotelogbase ascii` is read; a log written with `set remotelogbase
//! hex` or `octal` (each byte as ` NN` or ` NNN`) reads as those digits.
//!
//! The angle-bracket markers are not escaped by gdb (`<` is printable), so a packet whose
//! payload holds exactly `<Eof>`, `<Break>`, `<Timeout: N seconds>` or `<Error: …>` reads
//! back as the marker; RSP traffic has no such text in practice (target descriptions use
//! `<` only for XML elements).

use std::io::{self, Write};

/// Which way bytes went, from the client's (the debugger's) point of view, as gdb's log
/// marks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogDirection {
    /// `w`: sent by the client (gdb, tagsplit's `gdb://` client) to the stub.
    Write,
    /// `r`: sent by the stub, read by the client.
    Read,
}

impl LogDirection {
    /// The letter that starts a record of this direction.
    pub fn letter(self) -> u8 {
        match self {
            LogDirection::Write => b'w',
            LogDirection::Read => b'r',
        }
    }
}

/// A log writer over any boxed output (a file, a buffer), as the stub and the client
/// keep one.
pub type BoxedLogWriter = RemoteLogWriter<Box<dyn Write + Send>>;

/// Appends `byte` to `out` as gdb's log writes it.
pub fn escape_byte(byte: u8, out: &mut Vec<u8>) {
    match byte {
        b'\\' => out.extend_from_slice(b"\\\\"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x0b => out.extend_from_slice(b"\\v"),
        0x20..=0x7e => out.push(byte),
        other => {
            let digit = |n: u8| if n < 10 { b'0' + n } else { b'a' + n - 10 };
            out.extend_from_slice(b"\\x");
            out.push(digit(other >> 4));
            out.push(digit(other & 0x0f));
        }
    }
}

/// Writes a session log in gdb's `remotelogfile` format to any [`Write`]: give it the
/// bytes of each direction as they cross the wire; it starts a new record when the
/// direction changes. Each call is written through in one `write_all` (a log cut short
/// by a crash holds everything logged before it); [`finish`](Self::finish) writes gdb's
/// `End of log` line.
#[derive(Debug)]
pub struct RemoteLogWriter<W: Write> {
    out: W,
    /// The direction of the record being written, if one is open.
    current: Option<LogDirection>,
    /// Reused for formatting each call's bytes.
    scratch: Vec<u8>,
    finished: bool,
}

impl<W: Write> RemoteLogWriter<W> {
    /// A log writing to `out` (nothing is written until the first bytes).
    pub fn new(out: W) -> Self {
        RemoteLogWriter {
            out,
            current: None,
            scratch: Vec::new(),
            finished: true,
        }
    }

    /// Logs `bytes` that went `direction`.
    pub fn log(&mut self, direction: LogDirection, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.scratch.clear();
        self.open(direction);
        for &b in bytes {
            escape_byte(b, &mut self.scratch);
        }
        self.flush_scratch()
    }

    /// Logs a serial break sent by the client (`<Break>` in a `w` record).
    pub fn log_break(&mut self) -> io::Result<()> {
        self.scratch.clear();
        self.open(LogDirection::Write);
        self.scratch.extend_from_slice(b"<Break>");
        self.flush_scratch()
    }

    /// Logs a command line (`c TEXT`, as gdb logs what is typed at its prompt); a newline
    /// in `text` ends it.
    pub fn log_command(&mut self, text: &str) -> io::Result<()> {
        self.scratch.clear();
        self.finished = false;
        self.scratch.extend_from_slice(b"\nc ");
        let line = text.split(['\n', '\r']).next().unwrap_or_default();
        self.scratch.extend_from_slice(line.as_bytes());
        // gdb then starts the next bytes on a new record whatever their direction.
        self.current = None;
        self.flush_scratch()
    }

    /// Ends the log with gdb's `End of log` line and flushes; later calls start a new
    /// log in the same output (as gdb does when it connects again). A log with nothing
    /// in it since the last `finish` gets no second line.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.finished {
            return self.out.flush();
        }
        self.current = None;
        self.finished = true;
        self.out.write_all(b"\nEnd of log\n")?;
        self.out.flush()
    }

    /// The output.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Whether nothing was logged since the last [`finish`](Self::finish) (or since the
    /// start).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The output (call [`finish`](Self::finish) first for a complete log).
    pub fn into_inner(self) -> W {
        self.out
    }

    fn open(&mut self, direction: LogDirection) {
        self.finished = false;
        if self.current != Some(direction) {
            self.scratch.push(b'\n');
            self.scratch.push(direction.letter());
            self.scratch.push(b' ');
            self.current = Some(direction);
        }
    }

    fn flush_scratch(&mut self) -> io::Result<()> {
        self.out.write_all(&self.scratch)?;
        self.out.flush()
    }
}

/// Something other than bytes in a log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEvent {
    /// `<Timeout: N seconds>`: a read that timed out.
    Timeout(u64),
    /// `<Error: TEXT>`: a read that failed.
    Error(Vec<u8>),
    /// `<Eof>`: the other end closed the connection.
    Eof,
    /// `<Break>`: a serial break.
    Break,
}

/// One piece of a remote log, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRecord {
    /// Bytes that went one way (consecutive bytes of one record, unescaped).
    Bytes {
        /// Which way.
        direction: LogDirection,
        /// The bytes as they crossed the wire.
        bytes: Vec<u8>,
    },
    /// A marker inside a `w` or `r` record.
    Event {
        /// The record it was in.
        direction: LogDirection,
        /// What happened.
        event: LogEvent,
    },
    /// `c TEXT`: a command typed at gdb's prompt.
    Command(Vec<u8>),
    /// `End of log`: the connection was closed; what follows is another session.
    End,
}

/// Whether `log` looks like a remote log: its first non-empty line is a `w`, `r` or `c`
/// record or `End of log`.
pub fn is_remote_log(log: &[u8]) -> bool {
    log.split(|&b| b == b'\n')
        .map(trim_cr)
        .find(|l| !l.is_empty())
        .is_some_and(|l| {
            l.starts_with(b"w ")
                || l.starts_with(b"r ")
                || l.starts_with(b"c ")
                || l == b"End of log"
        })
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Reads a remote log (see the [module docs](self)). Never fails: lines gdb does not
/// write are skipped, a malformed or cut escape is taken as the bytes it is, and the
/// records hold no more bytes than the log. Consecutive records of one direction (a log
/// that was appended to) are not merged.
pub fn parse_remote_log(log: &[u8]) -> Vec<LogRecord> {
    let mut out = Vec::new();
    for line in log.split(|&b| b == b'\n').map(trim_cr) {
        if line == b"End of log" {
            out.push(LogRecord::End);
            continue;
        }
        let direction = match line.get(..2) {
            Some(b"w ") => LogDirection::Write,
            Some(b"r ") => LogDirection::Read,
            Some(b"c ") => {
                out.push(LogRecord::Command(
                    line.get(2..).unwrap_or_default().to_vec(),
                ));
                continue;
            }
            _ => continue,
        };
        unescape_record(direction, line.get(2..).unwrap_or_default(), &mut out);
    }
    out
}

/// The value of an ASCII hex digit.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The marker at the start of `text` and its length, if there is one.
fn marker(text: &[u8]) -> Option<(LogEvent, usize)> {
    if text.starts_with(b"<Eof>") {
        return Some((LogEvent::Eof, 5));
    }
    if text.starts_with(b"<Break>") {
        return Some((LogEvent::Break, 7));
    }
    if let Some(rest) = text.strip_prefix(b"<Timeout: ") {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let tail = rest.get(digits..)?;
        if digits > 0 && digits <= 19 && tail.starts_with(b" seconds>") {
            let n = std::str::from_utf8(rest.get(..digits)?)
                .ok()?
                .parse()
                .ok()?;
            return Some((LogEvent::Timeout(n), 10 + digits + 9));
        }
        return None;
    }
    if let Some(rest) = text.strip_prefix(b"<Error: ") {
        let end = rest.iter().position(|&b| b == b'>')?;
        return Some((LogEvent::Error(rest.get(..end)?.to_vec()), 8 + end + 1));
    }
    None
}

/// Unescapes one `w`/`r` record's text into byte and event records.
fn unescape_record(direction: LogDirection, text: &[u8], out: &mut Vec<LogRecord>) {
    let mut bytes = Vec::with_capacity(text.len());
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        match b {
            b'\\' => {
                let (byte, used) = match text.get(i + 1) {
                    Some(b'\\') => (b'\\', 2),
                    Some(b'b') => (0x08, 2),
                    Some(b'f') => (0x0c, 2),
                    Some(b'n') => (b'\n', 2),
                    Some(b'r') => (b'\r', 2),
                    Some(b't') => (b'\t', 2),
                    Some(b'v') => (0x0b, 2),
                    Some(b'x') => match (
                        text.get(i + 2).copied().and_then(hex_value),
                        text.get(i + 3).copied().and_then(hex_value),
                    ) {
                        (Some(hi), Some(lo)) => ((hi << 4) | lo, 4),
                        _ => (b'\\', 1),
                    },
                    _ => (b'\\', 1),
                };
                bytes.push(byte);
                i += used;
            }
            b'<' => match marker(text.get(i..).unwrap_or_default()) {
                Some((event, used)) => {
                    if !bytes.is_empty() {
                        out.push(LogRecord::Bytes {
                            direction,
                            bytes: std::mem::take(&mut bytes),
                        });
                    }
                    out.push(LogRecord::Event { direction, event });
                    i += used;
                }
                None => {
                    bytes.push(b);
                    i += 1;
                }
            },
            _ => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    if !bytes.is_empty() {
        out.push(LogRecord::Bytes { direction, bytes });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_gdbs_format() {
        let mut log = RemoteLogWriter::new(Vec::new());
        log.log(LogDirection::Write, b"+$qSupported:a+#c9").unwrap();
        log.log(LogDirection::Read, b"+").unwrap();
        log.log(LogDirection::Read, b"$x}\x03\\\n\t\x00\xff#00")
            .unwrap();
        log.log(LogDirection::Write, &[0x03]).unwrap();
        log.log_command("info registers\nrip").unwrap();
        log.log(LogDirection::Write, b"-").unwrap();
        log.finish().unwrap();
        log.finish().unwrap();
        assert_eq!(
            String::from_utf8(log.into_inner()).unwrap(),
            "\nw +$qSupported:a+#c9\nr +$x}\\x03\\\\\\n\\t\\x00\\xff#00\nw \\x03\nc info registers\nw -\nEnd of log\n"
        );
    }

    #[test]
    fn reads_back_every_byte_and_marker() {
        let all: Vec<u8> = (0..=255).collect();
        let mut log = RemoteLogWriter::new(Vec::new());
        log.log(LogDirection::Write, &all).unwrap();
        log.log(LogDirection::Read, b"$OK#9a").unwrap();
        log.finish().unwrap();
        let mut text = log.into_inner();
        text.extend_from_slice(b"\nr <Timeout: 2 seconds><Eof>x<Error: Connection reset>\\q\\x4\nw <Break><target>\nzzz\n");
        let records = parse_remote_log(&text);
        assert!(is_remote_log(&text));
        assert_eq!(
            records,
            vec![
                LogRecord::Bytes {
                    direction: LogDirection::Write,
                    bytes: all
                },
                LogRecord::Bytes {
                    direction: LogDirection::Read,
                    bytes: b"$OK#9a".to_vec()
                },
                LogRecord::End,
                LogRecord::Event {
                    direction: LogDirection::Read,
                    event: LogEvent::Timeout(2)
                },
                LogRecord::Event {
                    direction: LogDirection::Read,
                    event: LogEvent::Eof
                },
                LogRecord::Bytes {
                    direction: LogDirection::Read,
                    bytes: b"x".to_vec()
                },
                LogRecord::Event {
                    direction: LogDirection::Read,
                    event: LogEvent::Error(b"Connection reset".to_vec())
                },
                // A malformed escape is taken as it stands.
                LogRecord::Bytes {
                    direction: LogDirection::Read,
                    bytes: b"\\q\\x4".to_vec()
                },
                LogRecord::Event {
                    direction: LogDirection::Write,
                    event: LogEvent::Break
                },
                LogRecord::Bytes {
                    direction: LogDirection::Write,
                    bytes: b"<target>".to_vec()
                },
            ]
        );
        assert!(!is_remote_log(b"      0 <- qSupported\n"));
    }

    #[test]
    fn any_input_is_read_without_panic_and_within_its_size() {
        let samples: [&[u8]; 6] = [
            b"",
            b"\n",
            b"w \\",
            b"r \\x",
            b"w <Timeout: 99999999999999999999 seconds>",
            b"c \xff\xfe",
        ];
        for s in samples {
            let records = parse_remote_log(s);
            let total: usize = records
                .iter()
                .map(|r| match r {
                    LogRecord::Bytes { bytes, .. } => bytes.len(),
                    LogRecord::Command(c) => c.len(),
                    _ => 1,
                })
                .sum();
            assert!(total <= s.len());
        }
    }
}
