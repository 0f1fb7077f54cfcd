//! The wire side of the simulated target, transport only: GDB over TCP and KD over
//! KDNET (UDP) or KDCOM (a TCP stream), each a blocking loop that feeds the protocol
//! crate's stub ([`tagsplit_protocol::gdb::stub`], [`tagsplit_protocol::kd::stub`]) over
//! the simulator as a [`Target`](tagsplit_protocol::stub::Target) ([`gdb::SimTarget`]) and
//! waits on its socket until the stub's next deadline.

pub mod gdb;
pub mod kd;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

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

/// A socket a server reads with a time-out.
trait TimedRead {
    /// The descriptor [`readable_within`] waits on.
    #[cfg(unix)]
    fn fd(&self) -> std::os::fd::BorrowedFd<'_>;
    fn set_read_timeout(&self, wait: Option<Duration>) -> std::io::Result<()>;
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()>;
    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl TimedRead for TcpStream {
    #[cfg(unix)]
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
    fn set_read_timeout(&self, wait: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, wait)
    }
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        TcpStream::set_nonblocking(self, on)
    }
    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read(buf)
    }
}

/// A UDP socket read with a time-out that remembers where the last datagram came from.
struct UdpReader<'a> {
    sock: &'a UdpSocket,
    from: Option<SocketAddr>,
}

impl TimedRead for UdpReader<'_> {
    #[cfg(unix)]
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self.sock)
    }
    fn set_read_timeout(&self, wait: Option<Duration>) -> std::io::Result<()> {
        UdpSocket::set_read_timeout(self.sock, wait)
    }
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        UdpSocket::set_nonblocking(self.sock, on)
    }
    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (n, from) = self.sock.recv_from(buf)?;
        self.from = Some(from);
        Ok(n)
    }
}

/// Whether `s` has input within `wait`. A socket's read time-out (`SO_RCVTIMEO`) is
/// rounded up to the kernel's scheduler tick (a 2 ms wait returns after 4 to 8 ms with
/// `HZ=250`), too coarse for KD's retransmission timers; `ppoll` sleeps on a
/// high-resolution timer. Elsewhere than Unix the read time-out does the waiting.
#[cfg(unix)]
fn readable_within<S: TimedRead>(s: &S, wait: Duration) -> std::io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, ppoll};
    use nix::sys::time::TimeSpec;
    let mut fds = [PollFd::new(s.fd(), PollFlags::POLLIN)];
    match ppoll(&mut fds, Some(TimeSpec::from_duration(wait)), None) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

#[cfg(not(unix))]
fn readable_within<S: TimedRead>(_s: &S, _wait: Duration) -> std::io::Result<bool> {
    Ok(true)
}

/// Reads once, waiting at most `wait` (`None`: until something arrives; zero: only what
/// is already there). `Ok(None)`: nothing arrived in time, or a signal interrupted the
/// read (EINTR), which the caller's loop simply retries.
fn read_within<S: TimedRead>(
    s: &mut S,
    wait: Option<Duration>,
    buf: &mut [u8],
) -> std::io::Result<Option<usize>> {
    let read = match wait {
        Some(d) if d.is_zero() => {
            s.set_nonblocking(true)?;
            let r = s.read_some(buf);
            s.set_nonblocking(false)?;
            r
        }
        Some(d) if !readable_within(s, d)? => return Ok(None),
        wait => {
            // The read time-out is a backstop: `readable_within` did the precise wait.
            s.set_read_timeout(wait)?;
            s.read_some(buf)
        }
    };
    match read {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
