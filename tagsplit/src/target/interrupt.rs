//! [`Interrupt`]: a request to stop, from any thread (a signal handler's, a UI's), to a
//! target that may be blocked on its link.
//!
//! A backend never polls for it. While it waits for a running target it registers a
//! *waker* with [`Interrupt::on_trigger`]; [`Interrupt::trigger`] sets the flag and runs
//! every waker on the triggering thread. A waker does what unblocks its backend's wait:
//! the GDB backend sends the interrupt byte (0x03) on a clone of its socket, KDCOM the
//! break-in byte, KDNET a wake-up datagram to its own socket. The waiting thread then
//! sees the stop reply (or the wake-up), finds the flag set, and reports
//! [`TargetError::Interrupted`](super::TargetError::Interrupted).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Runs on the triggering thread when an [`Interrupt`] is triggered.
type Waker = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Inner {
    set: AtomicBool,
    next_id: AtomicU64,
    wakers: Mutex<Vec<(u64, Waker)>>,
}

/// A request to stop that any thread may [`trigger`](Interrupt::trigger); clones share it.
#[derive(Clone, Default)]
pub struct Interrupt(Arc<Inner>);

impl fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interrupt")
            .field("set", &self.is_set())
            .finish()
    }
}

impl Interrupt {
    /// A new, unset interrupt.
    pub fn new() -> Interrupt {
        Interrupt::default()
    }

    /// Sets the flag, then runs every registered waker (on this thread).
    pub fn trigger(&self) {
        self.0.set.store(true, Ordering::SeqCst);
        let wakers = self.0.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, wake) in wakers.iter() {
            wake();
        }
    }

    /// Whether [`trigger`](Self::trigger) was called.
    pub fn is_set(&self) -> bool {
        self.0.set.load(Ordering::SeqCst)
    }

    /// Registers `wake` until the returned guard is dropped. If the interrupt is already
    /// set, `wake` runs at once as well.
    pub fn on_trigger(&self, wake: impl Fn() + Send + Sync + 'static) -> WakerGuard {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let mut wakers = self.0.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        if self.is_set() {
            wake();
        }
        wakers.push((id, Box::new(wake)));
        WakerGuard {
            interrupt: self.clone(),
            id,
        }
    }
}

/// Keeps a waker registered; dropping it unregisters the waker.
#[must_use = "the waker is unregistered when the guard is dropped"]
pub struct WakerGuard {
    interrupt: Interrupt,
    id: u64,
}

impl fmt::Debug for WakerGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakerGuard").field("id", &self.id).finish()
    }
}

impl Drop for WakerGuard {
    fn drop(&mut self) {
        self.interrupt
            .0
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(id, _)| *id != self.id);
    }
}

/// Whether `interrupt` is given and set.
pub fn interrupted(interrupt: Option<&Interrupt>) -> bool {
    interrupt.is_some_and(Interrupt::is_set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn wakers_run_on_trigger_until_dropped() {
        let i = Interrupt::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let guard = i.on_trigger(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        assert!(!i.is_set());
        i.clone().trigger();
        assert!(i.is_set() && interrupted(Some(&i)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        drop(guard);
        i.trigger();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "unregistered");
        // Registered after the trigger: runs at once.
        let c = calls.clone();
        let _late = i.on_trigger(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(!interrupted(None));
    }
}
