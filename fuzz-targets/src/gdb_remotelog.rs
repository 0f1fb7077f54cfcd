//! gdb's remote session log (`set remotelogfile`): any bytes read without panic, records
//! no larger than the input, and what the writer writes reads back as the same bytes.

use tagsplit_protocol::gdb::remotelog::{LogRecord, RemoteLogWriter, parse_remote_log};
use tagsplit_protocol::gdb::transcript::parse_log;

/// One fuzz input.
pub fn run(data: &[u8]) {
    let records = parse_remote_log(data);
    let mut total = 0usize;
    let mut writer = RemoteLogWriter::new(Vec::new());
    let mut written = Vec::new();
    let mut ambiguous = false;
    for r in &records {
        match r {
            LogRecord::Bytes { direction, bytes } => {
                total += bytes.len();
                // `<` is not escaped by gdb: bytes that spell a marker read back as one.
                ambiguous |= bytes.contains(&b'<');
                writer.log(*direction, bytes).unwrap_or_default();
                written.push((*direction, bytes.clone()));
            }
            LogRecord::Command(c) => total += c.len(),
            LogRecord::End | LogRecord::Event { .. } => {}
        }
    }
    assert!(total <= data.len(), "{total} bytes out of {}", data.len());
    // Pairing never invents packets: each command is a frame of at least 4 bytes.
    assert!(parse_log(data).len() <= data.len() / 4 + 1);
    if !ambiguous {
        let back: Vec<_> = parse_remote_log(&writer.into_inner())
            .into_iter()
            .filter_map(|r| match r {
                LogRecord::Bytes { direction, bytes } => Some((direction, bytes)),
                _ => None,
            })
            .collect();
        // The writer merges consecutive records of one direction: compare per byte.
        let flat = |v: &[(tagsplit_protocol::gdb::remotelog::LogDirection, Vec<u8>)]| {
            v.iter()
                .flat_map(|(d, b)| b.iter().map(move |x| (*d, *x)))
                .collect::<Vec<_>>()
        };
        assert_eq!(flat(&written), flat(&back));
    }
}
