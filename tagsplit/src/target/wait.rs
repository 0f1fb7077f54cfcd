//! Waiting for a link's input with the precision its retransmission timers need.
//!
//! A socket's read time-out (`SO_RCVTIMEO`) is rounded up to the kernel's scheduler tick:
//! with `HZ=250` a 2 ms time-out returns after 4 to 8 ms. KD's retransmission timers go down
//! to 1 ms (GDB's reply timer to 2 ms), so every lost packet cost up to four times its timer. `ppoll` sleeps on a
//! high-resolution timer instead; the read time-out stays set as a backstop.

use std::io;
use std::time::Duration;

/// Whether `fd` has input within `wait` (on Unix, by `ppoll`; elsewhere always `true`,
/// leaving the wait to the socket's read time-out).
#[cfg(unix)]
pub(crate) fn readable_within(fd: std::os::fd::BorrowedFd<'_>, wait: Duration) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, ppoll};
    use nix::sys::time::TimeSpec;
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match ppoll(&mut fds, Some(TimeSpec::from_duration(wait)), None) {
        Ok(n) => Ok(n > 0),
        // A signal (Ctrl-C): the caller's loop looks at its interrupt and waits again.
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Whether `fd` has input within `wait`: always `true` here; the socket's read time-out
/// does the waiting.
#[cfg(not(unix))]
pub(crate) fn readable_within<T>(_fd: T, _wait: Duration) -> io::Result<bool> {
    Ok(true)
}

/// The descriptor to wait on ([`readable_within`]).
#[cfg(unix)]
pub(crate) fn as_fd<T: std::os::fd::AsFd>(io: &T) -> std::os::fd::BorrowedFd<'_> {
    io.as_fd()
}

/// Nothing to wait on: the read time-out waits.
#[cfg(not(unix))]
pub(crate) fn as_fd<T>(_io: &T) {}
