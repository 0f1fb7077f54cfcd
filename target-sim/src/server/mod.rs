//! The wire side of the simulated target: a GDB stub over TCP and a KD stub over KDNET/KDCOM.

pub mod gdb;
pub mod kd;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crate::machine::Machine;

/// Locks `m`, recovering the value if a thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A machine shared by a stub thread and its handle.
struct SharedMachine(Mutex<Machine>);

impl SharedMachine {
    fn new(machine: Machine) -> Self {
        SharedMachine(Mutex::new(machine))
    }

    /// Runs `f` on the machine with a protocol core locked after it (always in this order).
    fn with_core<C, R>(&self, core: &Mutex<C>, f: impl FnOnce(&mut Machine, &mut C) -> R) -> R {
        let mut m = lock(&self.0);
        let mut c = lock(core);
        f(&mut m, &mut c)
    }

    /// Runs `f` on the machine.
    fn with<R>(&self, f: impl FnOnce(&mut Machine) -> R) -> R {
        f(&mut lock(&self.0))
    }

    /// The machine itself.
    fn into_machine(self) -> Machine {
        self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The state a stub thread shares with its handle.
trait StubState: Send + Sync + 'static {
    /// The machine the stub serves.
    fn machine(&self) -> &SharedMachine;
    /// Takes the machine out of the state.
    fn into_machine(self) -> Machine;
}

/// Tells a stub thread to stop.
type StopFn<S> = Box<dyn Fn(&S) + Send + Sync>;

/// A stub running on a background thread: its address, its shared state, and how to stop it.
/// Dropping it stops the thread and waits for it.
struct StubThread<S: StubState> {
    addr: SocketAddr,
    shared: Arc<S>,
    thread: Option<JoinHandle<()>>,
    stop: StopFn<S>,
}

impl<S: StubState> StubThread<S> {
    fn new(addr: SocketAddr, shared: Arc<S>, thread: JoinHandle<()>, stop: StopFn<S>) -> Self {
        StubThread {
            addr,
            shared,
            thread: Some(thread),
            stop,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn shared(&self) -> &S {
        &self.shared
    }

    fn with_machine<R>(&self, f: impl FnOnce(&mut Machine) -> R) -> R {
        self.shared.machine().with(f)
    }

    /// Blocks until the thread ends on its own.
    fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops the thread and returns the machine (moved out when no one else holds the
    /// state, else cloned).
    fn shutdown(mut self) -> Machine {
        self.stop_thread();
        let shared = Arc::clone(&self.shared);
        drop(self);
        match Arc::try_unwrap(shared) {
            Ok(s) => s.into_machine(),
            Err(shared) => shared.machine().with(|m| m.clone()),
        }
    }

    fn stop_thread(&mut self) {
        (self.stop)(&self.shared);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<S: StubState> Drop for StubThread<S> {
    fn drop(&mut self) {
        self.stop_thread();
    }
}
