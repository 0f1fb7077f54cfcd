//! `tagsplit relay`: a seeded lossy, corrupting, slow link between two real peers.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tagsplit::relay::{Relay, RelayConfig};
use tagsplit_protocol::impair::Impairment;

/// Arguments of `relay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Listen here (port 0: any free port; the bound address is printed).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Relay to this address.
    #[arg(long)]
    pub to: SocketAddr,
    /// Relay UDP datagrams (KDNET) between the first client seen and --to, not TCP.
    #[arg(long)]
    pub udp: bool,
    /// Datagrams: probability that one is lost.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub loss: f64,
    /// Datagrams: probability that one arrives twice.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub dup: f64,
    /// Datagrams: probability that one is held back 10 ms, so later ones overtake it.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub reorder: f64,
    /// Datagrams: probability that one has a bit flipped.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub corrupt: f64,
    /// Datagrams: probability that one is cut short.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub truncate: f64,
    /// Streams: probability per byte of a flipped bit.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub ber: f64,
    /// Streams: probability per byte that it is dropped.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub drop_bytes: f64,
    /// Bandwidth per direction in bytes per second (default: unlimited).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Latency added per direction, in milliseconds (fractions allowed: 0.5 each way is a
    /// 1 ms round trip).
    #[arg(long, default_value_t = 0.0, value_parser = delay_ms)]
    pub delay_ms: f64,
    /// The seed of the impairments (the same seed and traffic give the same faults).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn delay_ms(s: &str) -> Result<f64, String> {
    within(
        s,
        0.0..=3_600_000.0,
        "a delay is between 0 and 3,600,000 ms",
    )
}

fn probability(s: &str) -> Result<f64, String> {
    within(s, 0.0..=1.0, "a probability is between 0 and 1")
}

/// `s` as a number in `range`, or an error that says `what` the range is.
fn within(s: &str, range: std::ops::RangeInclusive<f64>, what: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s}: {what}"))
    }
}

impl Args {
    fn impairment(&self) -> Impairment {
        Impairment {
            loss: self.loss,
            duplicate: self.dup,
            reorder: self.reorder,
            corrupt: self.corrupt,
            truncate: self.truncate,
            bit_flip: self.ber,
            byte_drop: self.drop_bytes,
            rate: self.rate,
            delay: Duration::from_secs_f64(self.delay_ms / 1000.0),
            ..Impairment::default()
        }
    }
}

/// Relays until SIGINT or SIGTERM, then prints what the links did.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let relay = Relay::spawn(RelayConfig {
        listen: a.listen,
        to: a.to,
        udp: a.udp,
        impairment: a.impairment(),
        seed: a.seed,
    })
    .with_context(|| format!("relaying {} to {}", a.listen, a.to))?;
    println!(
        "relaying {} on {} to {}",
        if a.udp { "UDP" } else { "TCP" },
        relay.local_addr(),
        a.to
    );
    super::signals::install();
    super::signals::stop_on_signal();
    super::signals::wait_for(1);
    let s = relay.shutdown();
    for (name, l) in [("forward", s.forward), ("backward", s.backward)] {
        println!(
            "{name}: {} bytes in, {} out; {} datagrams in, {} out; lost {}, duplicated {}, reordered {}, truncated {}, bits flipped {}, bytes dropped {}",
            l.bytes_in,
            l.bytes_out,
            l.datagrams_in,
            l.datagrams_out,
            l.lost,
            l.duplicated,
            l.reordered,
            l.truncated,
            l.flipped,
            l.dropped_bytes
        );
    }
    Ok(())
}
