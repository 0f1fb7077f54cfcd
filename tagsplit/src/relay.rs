//! A relay that puts an impaired link between two real peers (feature `impair`): what
//! `tagsplit relay` runs, and what tests run in-process to split over a bad link.
//!
//! TCP: every accepted connection is connected on to the far address, and each direction
//! crosses its own [`StreamLink`]. UDP: datagrams from the first client seen go to the far
//! address, and datagrams from the far address go back to that client, each direction
//! through its own [`DatagramLink`]. Blocking std I/O, a thread per direction, reads that
//! time out when the link next delivers.

use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tagsplit_protocol::impair::{DatagramLink, Impairment, LinkStats, StreamLink};

/// How often a relay thread waiting on nothing looks at the stop flag.
const IDLE: Duration = Duration::from_millis(20);
/// The largest datagram relayed.
const MAX_DATAGRAM: usize = 65_536;

/// What to relay, and how badly.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where to listen (port 0: any free port, see [`Relay::local_addr`]).
    pub listen: SocketAddr,
    /// Where to relay to.
    pub to: SocketAddr,
    /// Relay UDP datagrams rather than TCP streams.
    pub udp: bool,
    /// The impairment of each direction (each with its own seed derived from `seed`).
    pub impairment: Impairment,
    /// The seed: the same seed and the same traffic give the same impairments.
    pub seed: u64,
}

/// What a relay's links did, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// From the listening side's client to the far address, summed over connections.
    pub forward: LinkStats,
    /// From the far address back to the client, summed over connections.
    pub backward: LinkStats,
}

/// A running relay; [`shutdown`](Relay::shutdown) (or drop) stops its threads.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    stats: Mutex<RelayStats>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn spawn(&self, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let h = std::thread::Builder::new()
            .name("tagsplit-relay".into())
            .spawn(f)?;
        self.threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(h);
        Ok(())
    }

    /// Adds what a link did since `before` to one direction's totals.
    fn account(&self, forward: bool, before: LinkStats, after: LinkStats) {
        let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let total = if forward {
            &mut s.forward
        } else {
            &mut s.backward
        };
        add_stats(total, before, after);
    }
}

fn add_stats(total: &mut LinkStats, before: LinkStats, after: LinkStats) {
    let d = |a: u64, b: u64| a.saturating_sub(b);
    total.bytes_in += d(after.bytes_in, before.bytes_in);
    total.bytes_out += d(after.bytes_out, before.bytes_out);
    total.datagrams_in += d(after.datagrams_in, before.datagrams_in);
    total.datagrams_out += d(after.datagrams_out, before.datagrams_out);
    total.lost += d(after.lost, before.lost);
    total.overflowed += d(after.overflowed, before.overflowed);
    total.duplicated += d(after.duplicated, before.duplicated);
    total.reordered += d(after.reordered, before.reordered);
    total.truncated += d(after.truncated, before.truncated);
    total.flipped += d(after.flipped, before.flipped);
    total.dropped_bytes += d(after.dropped_bytes, before.dropped_bytes);
}

/// The seed of direction `dir` (0 forward, 1 backward) of connection `conn`.
fn seed_of(seed: u64, conn: u64, dir: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(conn.wrapping_mul(2).wrapping_add(dir))
}

/// How long to wait for input: until the link next delivers, at most [`IDLE`]. The wait
/// is a `ppoll` (a socket's read time-out is rounded up to the kernel tick, 4 ms at
/// `HZ=250`: a relay adding 0.5 ms each way added 4-8 ms); the read time-out, [`IDLE`],
/// is only a backstop.
fn wait_for(next: Option<Duration>, now: Duration) -> Duration {
    next.map_or(IDLE, |at| at.saturating_sub(now)).min(IDLE)
}

/// Whether `from` has input within `wait` (a signal or a poll error: not yet).
#[cfg(unix)]
fn input_within<T: std::os::fd::AsFd>(from: &T, wait: Duration) -> bool {
    crate::target::wait::readable_within(from.as_fd(), wait).unwrap_or(false)
}

/// Always: the read time-out waits.
#[cfg(not(unix))]
fn input_within<T>(_from: &T, _wait: Duration) -> bool {
    true
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

impl Relay {
    /// Binds `config.listen` and starts relaying in background threads.
    pub fn spawn(config: RelayConfig) -> io::Result<Relay> {
        let shared = Arc::new(Shared::default());
        let clock = Instant::now();
        let (addr, accept) = if config.udp {
            let sock = UdpSocket::bind(config.listen)?;
            let addr = sock.local_addr()?;
            spawn_udp(sock, &config, &shared, clock)?;
            (addr, None)
        } else {
            let listener = TcpListener::bind(config.listen)?;
            listener.set_nonblocking(true)?;
            let addr = listener.local_addr()?;
            let sh = Arc::clone(&shared);
            let h = std::thread::Builder::new()
                .name("tagsplit-relay-accept".into())
                .spawn(move || accept_loop(&listener, &config, &sh, clock))?;
            (addr, Some(h))
        };
        Ok(Relay {
            addr,
            shared,
            accept,
        })
    }

    /// The address the relay listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the links did so far.
    pub fn stats(&self) -> RelayStats {
        *self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops relaying, joins the threads and returns the final statistics.
    pub fn shutdown(mut self) -> RelayStats {
        self.stop();
        self.stats()
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            drop(h.join());
        }
        let threads = std::mem::take(
            &mut *self
                .shared
                .threads
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for h in threads {
            drop(h.join());
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: &TcpListener, config: &RelayConfig, shared: &Arc<Shared>, clock: Instant) {
    let mut conn = 0u64;
    while !shared.stopped() {
        match listener.accept() {
            Ok((client, peer)) => {
                if let Err(e) = relay_connection(client, config, shared, clock, conn) {
                    tracing::warn!("relay: connection from {peer}: {e}");
                }
                conn += 1;
            }
            Err(e) if is_timeout(&e) => std::thread::sleep(IDLE),
            Err(e) => {
                tracing::warn!("relay: accept: {e}");
                std::thread::sleep(IDLE);
            }
        }
    }
}

fn relay_connection(
    client: TcpStream,
    config: &RelayConfig,
    shared: &Arc<Shared>,
    clock: Instant,
    conn: u64,
) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(config.to)?;
    for s in [&client, &server] {
        s.set_nodelay(true)?;
    }
    let pairs = [
        (client.try_clone()?, server.try_clone()?, true, 0),
        (server, client, false, 1),
    ];
    for (from, to, forward, dir) in pairs {
        let link = StreamLink::new(config.impairment.clone(), seed_of(config.seed, conn, dir));
        let sh = Arc::clone(shared);
        shared.spawn(move || pump_stream(from, to, link, &sh, clock, forward))?;
    }
    Ok(())
}

/// Moves bytes from `from` through `link` to `to` until either side closes or the relay
/// stops; then closes `to` for writing so the far side sees the end.
fn pump_stream(
    mut from: TcpStream,
    mut to: TcpStream,
    mut link: StreamLink,
    shared: &Shared,
    clock: Instant,
    forward: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut eof = from.set_read_timeout(Some(IDLE)).is_err();
    let mut accounted = LinkStats::default();
    while !shared.stopped() {
        let now = clock.elapsed();
        let mut failed = false;
        if let Some(bytes) = link.poll_deliver(now) {
            failed = to.write_all(&bytes).is_err();
        }
        let after = link.stats();
        shared.account(forward, accounted, after);
        accounted = after;
        if failed || (eof && link.next_delivery().is_none()) {
            break;
        }
        let wait = wait_for(link.next_delivery(), now);
        if eof || !link.has_room() {
            std::thread::sleep(wait);
            continue;
        }
        if !input_within(&from, wait) {
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => eof = true,
            Ok(n) => link.send(clock.elapsed(), buf.get(..n).unwrap_or_default()),
            Err(e) if is_timeout(&e) => {}
            Err(_) => eof = true,
        }
    }
    drop(to.shutdown(Shutdown::Write));
    drop(from.shutdown(Shutdown::Read));
}

fn spawn_udp(
    listen: UdpSocket,
    config: &RelayConfig,
    shared: &Arc<Shared>,
    clock: Instant,
) -> io::Result<()> {
    let any: SocketAddr = if config.to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let upstream = UdpSocket::bind(any)?;
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let to = config.to;
    let dirs = [
        (listen.try_clone()?, upstream.try_clone()?, true, 0),
        (upstream, listen, false, 1),
    ];
    for (from, out, forward, dir) in dirs {
        let link = DatagramLink::new(config.impairment.clone(), seed_of(config.seed, 0, dir));
        let sh = Arc::clone(shared);
        let client = Arc::clone(&client);
        shared.spawn(move || {
            pump_datagrams(&from, &out, link, &sh, clock, forward, &client, to);
        })?;
    }
    Ok(())
}

/// Forward: datagrams from the first client seen go to `to`. Backward: datagrams from
/// `to` go to that client. Anything from elsewhere is dropped.
#[allow(clippy::too_many_arguments)]
fn pump_datagrams(
    from: &UdpSocket,
    out: &UdpSocket,
    mut link: DatagramLink,
    shared: &Shared,
    clock: Instant,
    forward: bool,
    client: &Mutex<Option<SocketAddr>>,
    to: SocketAddr,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut accounted = LinkStats::default();
    let client_now = || *client.lock().unwrap_or_else(PoisonError::into_inner);
    if from.set_read_timeout(Some(IDLE)).is_err() {
        return;
    }
    while !shared.stopped() {
        let now = clock.elapsed();
        while let Some(d) = link.poll_deliver(now) {
            let dest = if forward { Some(to) } else { client_now() };
            if let Some(dest) = dest {
                drop(out.send_to(&d, dest));
            }
        }
        let after = link.stats();
        shared.account(forward, accounted, after);
        accounted = after;
        if !input_within(from, wait_for(link.next_delivery(), now)) {
            continue;
        }
        match from.recv_from(&mut buf) {
            Ok((n, src)) => {
                let accept = if forward {
                    let mut c = client.lock().unwrap_or_else(PoisonError::into_inner);
                    *c.get_or_insert(src) == src
                } else {
                    src == to
                };
                if accept {
                    link.send(clock.elapsed(), buf.get(..n).unwrap_or_default());
                } else {
                    tracing::debug!("relay: dropped a datagram from {src}");
                }
            }
            Err(e) if is_timeout(&e) => {}
            // ICMP port unreachable and the like: keep relaying.
            Err(e) => tracing::debug!("relay: receive: {e}"),
        }
    }
}
