//! SIGINT, SIGTERM and SIGHUP all mean "stop", and what stopping means depends on whether
//! patches may be on the target:
//!
//! - **Nothing to undo** (connecting, surveying, a console, the demo): the process exits at
//!   once with 128 + the signal's number.
//! - **Patches possible** (from the moment the journal is about to be written until the
//!   restore is done, and during `restore`): the first signal triggers the
//!   [`Interrupt`], so a running target is broken into (the backend's waker interrupts
//!   its wait at once), every patch is restored and read back, the journal is
//!   removed, and the command then exits with 128 + the signal's number. A second signal
//!   is reported and ignored. A third exits at once, keeping the journal, and prints the
//!   command that finishes the restore.
//!
//! The handler runs on its own thread (`signal-hook`'s iterator), so it may take locks and
//! print. SIGKILL cannot be caught: the journal on disk and `tagsplit restore` cover it.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;

use tagsplit::target::Interrupt;

/// What a signal does now.
#[derive(Clone, Debug)]
enum Mode {
    /// Exit at once: nothing to undo.
    ExitAtOnce,
    /// Set the cancel flag and let the command wind down (a server); a second signal
    /// exits at once.
    Stop,
    /// The interactive console while a command runs: SIGINT (Ctrl-C) triggers this
    /// interrupt, so a running target is broken into and the console goes back to its
    /// prompt; SIGTERM and SIGHUP exit at once.
    BreakIn(Interrupt),
    /// Cancel and let the command restore; a third signal exits, printing `hint`.
    Restore {
        /// What the user must run to finish the job when we exit early.
        hint: String,
    },
}

struct Shared {
    cancel: Interrupt,
    count: AtomicUsize,
    first: AtomicI32,
    /// The main thread decides the mode under this lock; the handler exits holding it, so
    /// the main thread can never start patching after the handler chose to exit.
    mode: Mutex<Mode>,
    main: Thread,
}

static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();

/// The signals handled.
#[cfg(unix)]
const SIGNALS: [i32; 3] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
];

/// SIGINT's number.
const SIGINT: i32 = 2;

/// A signal's name.
pub fn name(sig: i32) -> String {
    match sig {
        1 => "SIGHUP".into(),
        2 => "SIGINT".into(),
        15 => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

/// Installs the handler once (in "exit at once" mode) and returns the interrupt that the
/// first signal triggers in the modes that wind down.
pub fn install() -> Interrupt {
    shared().cancel.clone()
}

fn shared() -> &'static Arc<Shared> {
    SHARED.get_or_init(|| {
        let shared = Arc::new(Shared {
            cancel: Interrupt::new(),
            count: AtomicUsize::new(0),
            first: AtomicI32::new(0),
            mode: Mutex::new(Mode::ExitAtOnce),
            main: std::thread::current(),
        });
        start(shared.clone());
        shared
    })
}

#[cfg(unix)]
fn start(shared: Arc<Shared>) {
    match signal_hook::iterator::Signals::new(SIGNALS) {
        Ok(mut signals) => {
            let spawned = std::thread::Builder::new()
                .name("signals".into())
                .spawn(move || {
                    for sig in signals.forever() {
                        on_signal(&shared, sig);
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot start the signal thread: {e}");
            }
        }
        Err(e) => tracing::warn!("cannot install the signal handlers: {e}"),
    }
}

#[cfg(not(unix))]
fn start(shared: Arc<Shared>) {
    if let Err(e) = ctrlc::set_handler(move || on_signal(&shared, 2)) {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
}

fn on_signal(shared: &Shared, sig: i32) {
    let mode = shared
        .mode
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let what = name(sig);
    if let Mode::BreakIn(interrupt) = &*mode
        && sig == SIGINT
    {
        // Not counted towards exiting: every Ctrl-C breaks into the command running.
        interrupt.trigger();
        eprintln!("tagsplit: {what}: breaking in");
        drop(mode);
        shared.main.unpark();
        return;
    }
    let n = shared.count.fetch_add(1, Ordering::SeqCst) + 1;
    let _ = shared
        .first
        .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    match (&*mode, n) {
        (Mode::ExitAtOnce, _) => {
            eprintln!("tagsplit: {what}: stopped; nothing was patched");
            std::process::exit(128 + sig);
        }
        (Mode::BreakIn(_), _) => {
            eprintln!("tagsplit: {what}: exiting");
            std::process::exit(128 + sig);
        }
        (Mode::Stop, 1) => {
            shared.cancel.trigger();
            eprintln!("tagsplit: {what}: stopping");
        }
        (Mode::Stop, _) => {
            eprintln!("tagsplit: {what} again: exiting at once");
            std::process::exit(128 + sig);
        }
        (Mode::Restore { .. }, 1) => {
            shared.cancel.trigger();
            eprintln!(
                "tagsplit: {what}: breaking in and restoring every patch before exiting (a third signal exits at once and keeps the journal)"
            );
        }
        (Mode::Restore { .. }, 2) => {
            eprintln!(
                "tagsplit: {what} again: ignored while the patches are restored (one more exits at once, keeping the journal)"
            );
        }
        (Mode::Restore { hint }, _) => {
            eprintln!("tagsplit: {what} a third time: exiting without finishing; {hint}");
            std::process::exit(128 + sig);
        }
    }
    drop(mode);
    shared.main.unpark();
}

fn set_mode(mode: Mode) {
    *shared()
        .mode
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = mode;
}

/// From now on a signal exits at once (nothing to undo).
pub fn exit_at_once() {
    set_mode(Mode::ExitAtOnce);
}

/// From now on Ctrl-C (SIGINT) triggers `interrupt` (the console breaks into the
/// command running) and other signals exit at once.
pub fn break_in_on_sigint(interrupt: Interrupt) {
    let _ = install();
    set_mode(Mode::BreakIn(interrupt));
}

/// From now on the first signal sets the cancel flag (the command winds down) and a
/// second exits at once.
pub fn stop_on_signal() {
    set_mode(Mode::Stop);
}

/// From now on a signal cancels, and the command restores; `hint` says how to finish the
/// restore if a third signal makes us exit early.
pub fn restore_on_signal(hint: String) {
    set_mode(Mode::Restore { hint });
}

/// The first signal received, if any.
pub fn received() -> Option<i32> {
    SHARED
        .get()
        .map(|s| s.first.load(Ordering::SeqCst))
        .filter(|&s| s != 0)
}

/// The exit code for a run stopped by `sig`: 128 + its number.
pub fn exit_code(sig: i32) -> u8 {
    u8::try_from(128 + sig).unwrap_or(u8::MAX)
}

/// Blocks the calling (main) thread until at least `n` signals have arrived.
pub fn wait_for(n: usize) {
    let s = shared();
    while s.count.load(Ordering::SeqCst) < n {
        std::thread::park();
    }
    // A signal is counted while its handler holds the mode lock, and a signal that exits
    // exits holding it: taking the lock waits until the last signal counted is handled,
    // so the caller never runs on (restoring a patch) while the process is on its way out.
    drop(
        s.mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
}

/// A test hook: when the environment variable `TAGSPLIT_TEST_PAUSE_AT` names `phase`
/// (optionally `phase:N`), prints a line saying so on stderr and waits for N signals
/// (default 1). Tests use it to deliver a signal in a known phase without sleeping.
pub fn test_pause(phase: &str) {
    let Ok(want) = std::env::var("TAGSPLIT_TEST_PAUSE_AT") else {
        return;
    };
    let (name, count) = match want.split_once(':') {
        Some((n, c)) => (n, c.parse().unwrap_or(1)),
        None => (want.as_str(), 1),
    };
    if name != phase {
        return;
    }
    eprintln!("tagsplit: test pause at {phase}: waiting for {count} signal(s)");
    wait_for(count);
}
