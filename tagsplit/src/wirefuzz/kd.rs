//! KD over the wire (being written): a mutating KD debugger against a KD target
//! (`kdnet:`, `kdcom:`), and a mutating KD target for KD debuggers.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Campaign, Launcher, ReplayOutcome, WireFuzzError};

/// The KD link a mutating target serves.
#[derive(Clone, Debug)]
pub enum KdLink {
    /// KDNET: the target pokes the debugger's UDP port, sealed under this key.
    Net {
        /// The KDNET key.
        key: tagsplit_protocol::kdnet::Key,
    },
    /// KDCOM framing over TCP (a VM's serial port).
    Com,
}

/// Whether `transcript` is a KD transcript (not a GDB one).
pub fn is_kd_transcript(transcript: &[u8]) -> bool {
    let _ = transcript;
    false
}

/// Fuzzes the KD target at `spec` (`kdnet:…`, `kdcom:…`) until the campaign ends.
pub fn fuzz_target(
    campaign: &mut Campaign,
    spec: &str,
    launcher: Option<&mut Launcher>,
    reply_timeout: Duration,
) -> Result<(), WireFuzzError> {
    let _ = (campaign, spec, launcher, reply_timeout);
    Err(WireFuzzError::Usage(
        "KD fuzz-stub is not written yet".into(),
    ))
}

/// Sends a KD finding's packets to `spec` again.
pub fn replay_target(
    transcript: &[u8],
    spec: &str,
    launcher: Option<&mut Launcher>,
    reply_timeout: Duration,
) -> Result<ReplayOutcome, WireFuzzError> {
    let _ = (transcript, spec, launcher, reply_timeout);
    Err(WireFuzzError::Usage("KD replay is not written yet".into()))
}

/// Serves a mutating KD target over `link` to the client `command` launches, again and
/// again, until the campaign ends.
pub fn fuzz_client(
    campaign: &mut Campaign,
    link: &KdLink,
    command: &str,
    client_timeout: Duration,
) -> Result<(), WireFuzzError> {
    let _ = (campaign, link, command, client_timeout);
    Err(WireFuzzError::Usage(
        "KD fuzz-client is not written yet".into(),
    ))
}

/// Serves a KD finding's target packets again (to the client `command` launches, or to
/// whoever attaches at `listen`).
pub fn replay_serve(
    transcript: &[u8],
    command: Option<&str>,
    listen: Option<SocketAddr>,
    timeout: Duration,
) -> Result<ReplayOutcome, WireFuzzError> {
    let _ = (transcript, command, listen, timeout);
    Err(WireFuzzError::Usage(
        "KD replay --serve is not written yet".into(),
    ))
}
