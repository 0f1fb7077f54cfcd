//! A fuzzing campaign's bookkeeping: the clock and Ctrl-C, the seeded randomness, the
//! progress line, the findings written as they are found, and the summary.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::target::Interrupt;

/// A small, fast, seeded generator (SplitMix64): the same seed gives the same numbers on
/// every machine, which is what makes a campaign replayable.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The generator for one iteration of a campaign: it depends only on the campaign's
    /// seed and the iteration's number, so iteration `n` does the same thing however the
    /// iterations before it went.
    pub fn for_iteration(seed: u64, iteration: u64) -> Rng {
        let mut r = Rng(seed ^ iteration.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough for fuzzing, and free of a modulo loop.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// An index into a slice of `len` items (0 when it is empty).
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// True `per_mille` times in a thousand.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }

    /// `len` random bytes: input for an [`arbitrary::Unstructured`](tagsplit_protocol::fuzz::arbitrary::Unstructured),
    /// so the protocol's generators and mutator draw their choices from this seed.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let word = self.next_u64().to_le_bytes();
            let take = (len - out.len()).min(8);
            out.extend_from_slice(word.get(..take).unwrap_or_default());
        }
        out
    }
}

/// A stable 64-bit hash (FNV-1a) of some byte strings, for counting distinct replies or
/// states: the same parts give the same hash in every run and on every machine.
pub fn state_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so that ["ab", "c"] and ["a", "bc"] differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What kind of misbehaviour a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// The peer process died by a signal (a crash: SIGSEGV, SIGABRT, …).
    Crashed {
        /// The signal's number.
        signal: i32,
    },
    /// The peer went away where the protocol does not let it: the connection closed or
    /// the process exited without a signal, after something other than a detach, a
    /// kill or the end of its inferior.
    Died,
    /// The peer stopped answering: no reply (or, for a client, no exit) within the limit.
    Hang,
    /// The peer answered out of protocol: bytes that do not frame, more replies than
    /// commands, a reply that cannot answer the command sent.
    OutOfProtocol,
    /// A client kept sending the same thing without end.
    Loop,
}

impl FindingKind {
    /// A short name for file names and the progress line.
    pub fn name(&self) -> &'static str {
        match self {
            FindingKind::Crashed { .. } => "crash",
            FindingKind::Died => "died",
            FindingKind::Hang => "hang",
            FindingKind::OutOfProtocol => "out-of-protocol",
            FindingKind::Loop => "loop",
        }
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FindingKind::Crashed { signal } => write!(f, "crash (signal {signal})"),
            other => f.write_str(other.name()),
        }
    }
}

/// One finding, as a campaign reports it.
#[derive(Clone, Debug)]
pub struct Finding {
    /// What happened.
    pub kind: FindingKind,
    /// What makes two findings the same bug (say `"hang after qXfer:features:read"`):
    /// findings with the same kind and signature are counted together, and only the
    /// first `TRANSCRIPTS_PER_SIGNATURE` of them are written out.
    pub signature: String,
    /// One line for a person: what was sent, what came back.
    pub detail: String,
    /// The replayable transcript: the exact bytes that crossed the wire.
    pub transcript: Vec<u8>,
    /// The transcript file's extension (`log` for gdb's `set remotelogfile` format).
    pub extension: &'static str,
}

/// Transcripts written per distinct finding; later ones are only counted.
pub const TRANSCRIPTS_PER_SIGNATURE: u32 = 3;

/// Distinct states remembered; beyond this the count stops growing (memory stays bounded
/// however long the campaign runs).
pub const MAX_STATES: usize = 1 << 20;

/// How a campaign runs.
#[derive(Clone, Debug)]
pub struct CampaignOptions {
    /// What is fuzzed, for the progress line and the summary (`fuzz-stub gdb://…`).
    pub name: String,
    /// The seed every iteration's randomness derives from.
    pub seed: u64,
    /// How long to run.
    pub time: Duration,
    /// Where findings and the summary go (created if missing).
    pub out: PathBuf,
    /// Print a progress line to stderr this often (`None`: quiet).
    pub progress: Option<Duration>,
    /// Set by Ctrl-C (or anything else): the campaign stops after the current iteration
    /// and keeps every finding.
    pub cancel: Option<Interrupt>,
    /// Stop after this many iterations, whatever the clock says (tests; `None`: the
    /// clock alone).
    pub max_iterations: Option<u64>,
}

impl CampaignOptions {
    /// Options with a quiet progress, no cancel and no iteration limit.
    pub fn new(
        name: impl Into<String>,
        seed: u64,
        time: Duration,
        out: impl Into<PathBuf>,
    ) -> Self {
        CampaignOptions {
            name: name.into(),
            seed,
            time,
            out: out.into(),
            progress: None,
            cancel: None,
            max_iterations: None,
        }
    }
}

/// Counters as the progress line shows them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Progress {
    /// Iterations done.
    pub executions: u64,
    /// Distinct replies or states reached (see [`Campaign::executed`]).
    pub distinct_states: u64,
    /// Findings, counting repeats.
    pub findings: u64,
    /// Distinct findings (kind and signature).
    pub distinct_findings: u64,
    /// Times the peer was started again.
    pub restarts: u64,
}

/// What a campaign did, written to `summary.json` in the output directory.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// What was fuzzed.
    pub name: String,
    /// The seed.
    pub seed: u64,
    /// Seconds it ran.
    pub seconds: f64,
    /// Iterations per second.
    pub per_second: f64,
    /// Whether it stopped early (Ctrl-C).
    pub cancelled: bool,
    /// The counters.
    #[serde(flatten)]
    pub progress: Progress,
    /// Every distinct finding: kind, signature, how often, and the transcripts written.
    pub found: Vec<FoundSummary>,
}

/// One distinct finding in a [`Summary`].
#[derive(Clone, Debug, Serialize)]
pub struct FoundSummary {
    /// What happened.
    pub kind: FindingKind,
    /// Its signature.
    pub signature: String,
    /// The first one's detail line.
    pub detail: String,
    /// How many times it was found.
    pub count: u32,
    /// The transcripts written for it (file names in the output directory).
    pub transcripts: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} executions in {:.1} s ({:.0}/s), {} distinct states, {} findings ({} distinct), {} peer restarts{}",
            self.name,
            self.progress.executions,
            self.seconds,
            self.per_second,
            self.progress.distinct_states,
            self.progress.findings,
            self.progress.distinct_findings,
            self.progress.restarts,
            if self.cancelled {
                ", stopped early"
            } else {
                ""
            }
        )?;
        for found in &self.found {
            writeln!(
                f,
                "  {} x{}: {} — {}{}",
                found.kind,
                found.count,
                found.signature,
                found.detail,
                match found.transcripts.first() {
                    Some(t) => format!(" [{t}]"),
                    None => String::new(),
                }
            )?;
        }
        Ok(())
    }
}

/// A running campaign.
#[derive(Debug)]
pub struct Campaign {
    options: CampaignOptions,
    started: Instant,
    progress: Progress,
    ticker: Option<Ticker>,
    states: HashSet<u64>,
    found: Vec<FoundSummary>,
    by_signature: HashMap<(FindingKind, String), usize>,
    files: u32,
}

impl Campaign {
    /// Starts a campaign: creates the output directory.
    pub fn new(options: CampaignOptions) -> io::Result<Campaign> {
        std::fs::create_dir_all(&options.out)?;
        let now = Instant::now();
        let ticker = options
            .progress
            .map(|every| Ticker::start(options.name.clone(), now, every));
        Ok(Campaign {
            options,
            started: now,
            progress: Progress::default(),
            ticker,
            states: HashSet::new(),
            found: Vec::new(),
            by_signature: HashMap::new(),
            files: 0,
        })
    }

    /// The options it runs with.
    pub fn options(&self) -> &CampaignOptions {
        &self.options
    }

    /// The output directory.
    pub fn out(&self) -> &Path {
        &self.options.out
    }

    /// Whether to run another iteration: false once the time is up, the iteration limit
    /// is reached or the cancel flag is set. (The progress line is printed by a thread of
    /// its own, every [`CampaignOptions::progress`], however long an iteration takes.)
    pub fn running(&mut self) -> bool {
        !self.cancelled()
            && self.started.elapsed() < self.options.time
            && self
                .options
                .max_iterations
                .is_none_or(|max| self.progress.executions < max)
    }

    /// Whether the cancel flag is set.
    pub fn cancelled(&self) -> bool {
        self.options.cancel.as_ref().is_some_and(Interrupt::is_set)
    }

    /// The time left (zero once it is up).
    pub fn remaining(&self) -> Duration {
        self.options.time.saturating_sub(self.started.elapsed())
    }

    /// The number of the iteration about to run (the executions so far).
    pub fn iteration(&self) -> u64 {
        self.progress.executions
    }

    /// The generator for the iteration about to run ([`Rng::for_iteration`]).
    pub fn rng(&self) -> Rng {
        Rng::for_iteration(self.options.seed, self.progress.executions)
    }

    /// One iteration done, having reached `state` (a [`state_hash`] of what the peer
    /// answered, or of what the client did).
    pub fn executed(&mut self, state: u64) {
        self.progress.executions += 1;
        if self.states.len() < MAX_STATES {
            self.states.insert(state);
        }
        self.progress.distinct_states = self.states.len() as u64;
        self.publish();
    }

    /// A state reached during the iteration running, counted with the one
    /// [`executed`](Self::executed) gives (for campaigns that see several per iteration,
    /// such as one per reply).
    pub fn reached(&mut self, state: u64) {
        if self.states.len() < MAX_STATES {
            self.states.insert(state);
        }
        self.progress.distinct_states = self.states.len() as u64;
        self.publish();
    }

    /// The peer was started again.
    pub fn restarted(&mut self) {
        self.progress.restarts += 1;
        self.publish();
    }

    /// Hands the counters to the progress thread.
    fn publish(&self) {
        if let Some(t) = &self.ticker {
            t.publish(&self.progress);
        }
    }

    /// The counters so far.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The progress line.
    pub fn progress_line(&self) -> String {
        progress_line(&self.options.name, self.started, &self.progress)
    }

    /// Records a finding: writes its transcript to the output directory at once (unless
    /// `TRANSCRIPTS_PER_SIGNATURE` of the same were written already) and appends a line
    /// to `findings.txt`. Returns the transcript's path when one was written.
    pub fn found(&mut self, finding: Finding) -> io::Result<Option<PathBuf>> {
        self.progress.findings += 1;
        let key = (finding.kind, finding.signature.clone());
        let index = match self.by_signature.get(&key) {
            Some(&i) => i,
            None => {
                self.found.push(FoundSummary {
                    kind: finding.kind,
                    signature: finding.signature.clone(),
                    detail: finding.detail.clone(),
                    count: 0,
                    transcripts: Vec::new(),
                });
                self.progress.distinct_findings += 1;
                self.by_signature.insert(key, self.found.len() - 1);
                self.found.len() - 1
            }
        };
        self.publish();
        #[allow(clippy::indexing_slicing)]
        let entry = &mut self.found[index];
        entry.count += 1;
        if entry.count > TRANSCRIPTS_PER_SIGNATURE {
            return Ok(None);
        }
        self.files += 1;
        let name = format!(
            "finding-{:04}-{}.{}",
            self.files,
            finding.kind.name(),
            finding.extension
        );
        let path = self.options.out.join(&name);
        std::fs::write(&path, &finding.transcript)?;
        entry.transcripts.push(name.clone());
        let mut index_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.options.out.join("findings.txt"))?;
        writeln!(
            index_file,
            "{name}\t{}\t{}\titeration {}\t{}",
            finding.kind, finding.signature, self.progress.executions, finding.detail
        )?;
        if self.options.progress.is_some() {
            eprintln!(
                "{}: finding: {} — {} [{name}]",
                self.options.name, finding.kind, finding.signature
            );
        }
        Ok(Some(path))
    }

    /// Ends the campaign: writes `summary.json` to the output directory and returns the
    /// summary (print it with `{}`).
    pub fn finish(mut self) -> io::Result<Summary> {
        if let Some(t) = self.ticker.take() {
            t.stop();
        }
        let seconds = self.started.elapsed().as_secs_f64();
        let summary = Summary {
            name: self.options.name.clone(),
            seed: self.options.seed,
            seconds,
            per_second: if seconds > 0.0 {
                self.progress.executions as f64 / seconds
            } else {
                0.0
            },
            cancelled: self.cancelled(),
            progress: self.progress.clone(),
            found: self.found.clone(),
        };
        let json = serde_json::to_vec_pretty(&summary).map_err(io::Error::other)?;
        std::fs::write(self.options.out.join("summary.json"), json)?;
        Ok(summary)
    }
}

/// The progress line for counters `p` of a campaign called `name` started at `started`.
fn progress_line(name: &str, started: Instant, p: &Progress) -> String {
    let secs = started.elapsed().as_secs_f64();
    let rate = if secs > 0.0 {
        p.executions as f64 / secs
    } else {
        0.0
    };
    format!(
        "{name}: {secs:.0} s, {} executions ({rate:.0}/s), {} distinct states, {} findings ({} distinct), {} restarts",
        p.executions, p.distinct_states, p.findings, p.distinct_findings, p.restarts
    )
}

/// What the campaign and its progress thread share.
#[derive(Debug, Default)]
struct TickerShared {
    /// The counters as last published, and whether to stop.
    state: Mutex<(Progress, bool)>,
    wake: Condvar,
}

/// The thread that prints the progress line to stderr at a steady pace, even while one
/// iteration takes long (a client waiting out its time-outs).
#[derive(Debug)]
struct Ticker {
    shared: Arc<TickerShared>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(name: String, started: Instant, every: Duration) -> Ticker {
        let shared = Arc::new(TickerShared::default());
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("wirefuzz-progress".into())
            .spawn(move || {
                let mut state = theirs.state.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    let (next, _) = theirs
                        .wake
                        .wait_timeout(state, every)
                        .unwrap_or_else(PoisonError::into_inner);
                    state = next;
                    if state.1 {
                        return;
                    }
                    eprintln!("{}", progress_line(&name, started, &state.0));
                }
            })
            .ok();
        Ticker { shared, thread }
    }

    fn publish(&self, progress: &Progress) {
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.0.clone_from(progress);
    }

    fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1 = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_iterations_differ() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut x = Rng::for_iteration(7, 1);
        let mut y = Rng::for_iteration(7, 2);
        assert_ne!(x.next_u64(), y.next_u64());
        let mut r = Rng::new(3);
        for _ in 0..1000 {
            assert!(r.below(10) < 10);
        }
        assert_eq!(r.bytes(13).len(), 13);
    }

    #[test]
    fn findings_are_written_deduplicated_and_summarised() {
        let dir = std::env::temp_dir().join(format!("wirefuzz-campaign-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = Campaign::new(CampaignOptions::new("t", 1, Duration::from_secs(60), &dir))
            .expect("campaign");
        let finding = |sig: &str| Finding {
            kind: FindingKind::Hang,
            signature: sig.into(),
            detail: "no reply".into(),
            transcript: b"w $g#67\n".to_vec(),
            extension: "log",
        };
        for _ in 0..5 {
            c.found(finding("hang after g")).expect("write");
        }
        c.found(finding("hang after m")).expect("write");
        c.executed(1);
        c.executed(1);
        c.executed(2);
        let s = c.finish().expect("finish");
        assert_eq!(s.progress.findings, 6);
        assert_eq!(s.progress.distinct_findings, 2);
        assert_eq!(s.progress.distinct_states, 2);
        assert_eq!(s.found[0].count, 5);
        assert_eq!(
            s.found[0].transcripts.len(),
            TRANSCRIPTS_PER_SIGNATURE as usize
        );
        let files = std::fs::read_dir(&dir).expect("dir").count();
        // 4 transcripts, findings.txt, summary.json.
        assert_eq!(files, 6);
        let index = std::fs::read_to_string(dir.join("findings.txt")).expect("index");
        assert_eq!(index.lines().count(), 4);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
