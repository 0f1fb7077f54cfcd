//! Recording a target's traffic: [`OpenOptions`] for [`open_with`](super::open_with), the
//! GDB session log ([`PacketLog`], gdb's `set remotelogfile` format) and the KD capture
//! (a [`PcapRecorder`], pcapng).
//!
//! Which recording applies to which target:
//!
//! | option | `gdb://` | `kdnet:` | `kdcom:` | `sim:` |
//! |---|---|---|---|---|
//! | [`log_packets`](OpenOptions::log_packets) | every byte each way, `w` = sent by tagsplit | refused | refused | refused |
//! | [`pcap`](OpenOptions::pcap) | refused | every datagram, Ethernet/IP/UDP | the stream, Ethernet/IP/TCP | refused |
//!
//! A refused option is an [`OpenError::NotApplicable`] that says why. Nothing is formatted
//! or written when no recording is set: the backends hold an `Option` and check it.
//! Recording that fails later (a full disk) is reported once as a warning and stops;
//! the session goes on.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tagsplit_protocol::gdb::remotelog::{BoxedLogWriter, LogDirection, RemoteLogWriter};
pub use tagsplit_protocol::pcap::{PcapRecorder, TcpFlow, UdpFlow, Way};

use super::OpenError;

/// What [`open_with`](super::open_with) records besides opening the target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Write the GDB traffic to this file in gdb's `set remotelogfile` format (`gdb://`
    /// targets only).
    pub log_packets: Option<PathBuf>,
    /// Record the KDNET or KDCOM traffic to this file as pcapng (`kdnet:` and `kdcom:`
    /// targets only).
    pub pcap: Option<PathBuf>,
    /// Add to the files instead of replacing them: a GDB log goes on after the last
    /// one's `End of log`, a capture gets a section of its own (a second connection in
    /// one run: `tagsplit demo` opens its target twice).
    pub append: bool,
}

impl OpenOptions {
    /// No recording.
    pub fn new() -> OpenOptions {
        OpenOptions::default()
    }

    /// With a GDB session log to `path`.
    pub fn log_packets(mut self, path: impl Into<PathBuf>) -> OpenOptions {
        self.log_packets = Some(path.into());
        self
    }

    /// With a pcapng capture to `path`.
    pub fn pcap(mut self, path: impl Into<PathBuf>) -> OpenOptions {
        self.pcap = Some(path.into());
        self
    }

    /// Appending to the files ([`append`](Self::append)).
    pub fn append(mut self, append: bool) -> OpenOptions {
        self.append = append;
        self
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.log_packets.is_none() && self.pcap.is_none()
    }

    /// Refuses the options the target `spec` names cannot record, before anything is
    /// opened ([`OpenError::NotApplicable`], which says why); an unknown scheme passes
    /// (opening it fails anyway).
    pub fn check_spec(&self, spec: &str) -> Result<(), OpenError> {
        let kind = if spec.starts_with("gdb://") {
            TargetKind::Gdb
        } else if spec.starts_with("kdnet:") || spec.starts_with("kdcom:") {
            TargetKind::Kd
        } else if spec.starts_with("sim:") {
            TargetKind::Sim
        } else {
            return Ok(());
        };
        self.check(spec, kind)
    }

    /// Refuses the options a target of `kind` cannot record (`spec` names it in the error).
    pub(crate) fn check(&self, spec: &str, kind: TargetKind) -> Result<(), OpenError> {
        let refuse = |option: &'static str, reason: &str| {
            Err(OpenError::NotApplicable {
                option,
                spec: spec.to_string(),
                reason: reason.to_string(),
            })
        };
        match kind {
            TargetKind::Gdb if self.pcap.is_some() => refuse(
                "--pcap",
                "it records KDNET and KDCOM traffic, and this is a GDB remote-protocol target (log its packets with --log-packets FILE)",
            ),
            TargetKind::Kd if self.log_packets.is_some() => refuse(
                "--log-packets",
                "it logs GDB remote-protocol traffic, and this is a KD target (record its traffic with --pcap FILE)",
            ),
            TargetKind::Sim if !self.is_empty() => refuse(
                if self.log_packets.is_some() {
                    "--log-packets"
                } else {
                    "--pcap"
                },
                "the simulator runs in this process and has no wire to record (serve it with `tagsplit serve` and attach over gdb://, kdnet: or kdcom:)",
            ),
            _ => Ok(()),
        }
    }

    /// Opens the GDB session log, if one is set (what `open_with` gives a `gdb://`
    /// target).
    pub fn open_packet_log(&self) -> Result<Option<PacketLog>, OpenError> {
        self.log_packets
            .as_deref()
            .map(|p| {
                PacketLog::create(p, self.append).map_err(|e| file_error("--log-packets", p, e))
            })
            .transpose()
    }

    /// Starts the capture, if one is set (what `open_with` gives a `kdnet:` or `kdcom:`
    /// target).
    pub fn open_pcap(&self) -> Result<Option<PcapRecorder>, OpenError> {
        self.pcap
            .as_deref()
            .map(|p| {
                create_file(p, self.append)
                    .and_then(|f| PcapRecorder::new(io::BufWriter::new(f)))
                    .map_err(|e| file_error("--pcap", p, e))
            })
            .transpose()
    }
}

/// The kinds of target, as far as recording goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TargetKind {
    Sim,
    Gdb,
    Kd,
}

fn file_error(option: &'static str, path: &Path, e: io::Error) -> OpenError {
    OpenError::Record {
        option,
        path: path.to_path_buf(),
        source: e,
    }
}

/// Creates (or, with `append`, opens for appending) a recording file.
pub fn create_file(path: &Path, append: bool) -> io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true);
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(true);
    }
    o.open(path)
}

/// The log and whether it failed (then nothing more is written).
struct LogState {
    writer: BoxedLogWriter,
    failed: bool,
    name: String,
}

/// A GDB session log in gdb's `set remotelogfile` format
/// ([`tagsplit_protocol::gdb::remotelog`]), shared by a target and its interrupt waker:
/// `w` is what tagsplit sent, `r` what the stub sent. The first write error is reported
/// once (a warning) and ends the logging; the session goes on.
#[derive(Clone)]
pub struct PacketLog {
    state: Arc<Mutex<LogState>>,
}

impl std::fmt::Debug for PacketLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketLog")
            .field("name", &self.lock().name)
            .finish_non_exhaustive()
    }
}

impl PacketLog {
    /// A log written to `out`; `name` says where in a warning.
    pub fn new(out: impl Write + Send + 'static, name: impl Into<String>) -> PacketLog {
        let boxed: Box<dyn Write + Send> = Box::new(out);
        PacketLog {
            state: Arc::new(Mutex::new(LogState {
                writer: RemoteLogWriter::new(boxed),
                failed: false,
                name: name.into(),
            })),
        }
    }

    /// A log in the file at `path` (replaced, or appended to with `append`).
    pub fn create(path: &Path, append: bool) -> io::Result<PacketLog> {
        let file = create_file(path, append)?;
        Ok(PacketLog::new(file, path.display().to_string()))
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs bytes that went `direction`.
    pub fn log(&self, direction: LogDirection, bytes: &[u8]) {
        let mut s = self.lock();
        if !s.failed {
            let result = s.writer.log(direction, bytes);
            s.check(result);
        }
    }

    /// Ends the session's log (`End of log`); bytes logged later start another.
    pub fn finish(&self) {
        let mut s = self.lock();
        if !s.failed {
            let result = s.writer.finish();
            s.check(result);
        }
    }
}

impl LogState {
    fn check(&mut self, result: io::Result<()>) {
        if let Err(e) = result {
            self.failed = true;
            tracing::warn!("packet log {}: {e}; logging stopped", self.name);
        }
    }
}

/// Records a flow's bytes, reporting the first failure once (a warning) and then
/// nothing more; the session goes on.
pub(crate) fn record_or_warn(result: io::Result<()>, warned: &mut bool) {
    if let Err(e) = result
        && !std::mem::replace(warned, true)
    {
        tracing::warn!("pcap recording: {e}; recording stopped");
    }
}
