//! `tagsplit serve`: a simulated machine as a GDB remote target and/or a Windows KD
//! target (KDNET or KDCOM framing over TCP).

use std::net::SocketAddr;

use anyhow::Context as _;
use tagsplit::target::gdb::serve_scenario_logged;
use tagsplit_protocol::kdnet::Key;
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::gdb::StubFeatures;
use tagsplit_target_sim::server::kd::{KdStub, KdStubOptions};

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scenario: a built-in name (`part4`) or a .toml file.
    #[arg(long, default_value = "part4")]
    pub scenario: String,
    /// Serve GDB RSP on this address (`target remote HOST:PORT`); the default when no
    /// transport is named is 127.0.0.1:1234.
    #[arg(long)]
    pub gdb: Option<SocketAddr>,
    /// Be a KDNET target that pokes the debugger listening at HOST:PORT (as
    /// `bcdedit /dbgsettings net hostip:HOST port:PORT` configures; needs --key).
    #[arg(long, requires = "key")]
    pub kdnet: Option<SocketAddr>,
    /// The KDNET key (`a.b.c.d`, four base-36 numbers).
    #[arg(long)]
    pub key: Option<String>,
    /// Serve KD with KDCOM framing over TCP on this address (a VM's serial port).
    #[arg(long)]
    pub kdcom: Option<SocketAddr>,
    /// Stop every continue after this many ticks (deterministic sessions).
    #[arg(long)]
    pub stop_after_ticks: Option<u64>,
    /// Offer only the basic packets (no qXfer libraries/memory map, qSearch, X, no-ack).
    #[arg(long)]
    pub basic: bool,
    /// Recording the traffic: --log-packets logs every GDB client's session (from the
    /// client's point of view, as gdb's own log: `w` = what the client sent), --pcap
    /// records the KDNET and KDCOM traffic.
    #[command(flatten)]
    pub record: super::RecordArgs,
}

fn load(name: &str) -> anyhow::Result<Scenario> {
    if let Some(s) = Scenario::builtin(name) {
        return Ok(s);
    }
    let text = std::fs::read_to_string(name)
        .with_context(|| format!("{name:?} is no built-in scenario and cannot be read"))?;
    Ok(Scenario::from_toml(&text)?)
}

/// Serves until SIGINT, SIGTERM or SIGHUP.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let scenario = load(&a.scenario)?;
    let features = if a.basic {
        StubFeatures::BASIC
    } else {
        StubFeatures::FULL
    };
    let mut gdb_addr = a.gdb;
    if gdb_addr.is_none() && a.kdnet.is_none() && a.kdcom.is_none() {
        gdb_addr = Some(SocketAddr::from(([127, 0, 0, 1], 1234)));
    }
    if gdb_addr.is_none() && a.record.log_packets.is_some() {
        anyhow::bail!(
            "--log-packets logs GDB remote-protocol traffic, and this serves no GDB stub: add --gdb ADDR (record KDNET and KDCOM traffic with --pcap FILE)"
        );
    }
    if a.kdnet.is_none() && a.kdcom.is_none() && a.record.pcap.is_some() {
        anyhow::bail!(
            "--pcap records KDNET and KDCOM traffic, and this serves neither: add --kdnet ADDR --key K or --kdcom ADDR (log GDB traffic with --log-packets FILE)"
        );
    }
    let record = a.record.options();
    let pcap = record.open_pcap()?;
    let packet_log: Option<Box<dyn std::io::Write + Send>> = match &a.record.log_packets {
        Some(path) => Some(Box::new(
            tagsplit::target::record::create_file(path, false)
                .with_context(|| format!("--log-packets {}", path.display()))?,
        )),
        None => None,
    };
    let mut gdb_stub = None;
    if let Some(addr) = gdb_addr {
        let stub = serve_scenario_logged(&scenario, addr, a.stop_after_ticks, features, packet_log)
            .with_context(|| format!("serving on {addr}"))?;
        println!(
            "serving scenario {} over GDB RSP on {} — attach with: gdb -ex 'target remote {}'",
            scenario.name(),
            stub.addr(),
            stub.addr()
        );
        gdb_stub = Some(stub);
    }
    let kd_options = || KdStubOptions {
        stop_after_ticks: a.stop_after_ticks,
        default_run_ticks: Some(scenario.default_run_ticks()),
        pcap: pcap.clone(),
        ..KdStubOptions::default()
    };
    let boot = || Machine::boot(&scenario).context("booting the simulator");
    let mut kd_stubs = Vec::new();
    if let Some(host) = a.kdnet {
        let key_text = a.key.clone().unwrap_or_default();
        let key: Key = key_text
            .parse()
            .with_context(|| format!("bad key {key_text:?}"))?;
        let stub = KdStub::spawn_kdnet(boot()?, host, key, kd_options())
            .with_context(|| format!("serving kdnet to {host}"))?;
        println!(
            "serving scenario {} over KDNET from {}, poking the debugger at {host} — attach with: tagsplit console --target kdnet:port={},key={key_text},host={}",
            scenario.name(),
            stub.addr(),
            host.port(),
            host.ip()
        );
        kd_stubs.push(stub);
    }
    if let Some(addr) = a.kdcom {
        let stub = KdStub::spawn_kdcom_at(addr, boot()?, kd_options())
            .with_context(|| format!("serving kdcom on {addr}"))?;
        println!(
            "serving scenario {} over KDCOM (TCP) on {} — attach with: tagsplit console --target kdcom:{}",
            scenario.name(),
            stub.addr(),
            stub.addr()
        );
        kd_stubs.push(stub);
    }
    super::signals::install();
    super::signals::stop_on_signal();
    super::signals::wait_for(1);
    if let Some(stub) = gdb_stub {
        drop(stub.shutdown());
    }
    for stub in kd_stubs {
        drop(stub.shutdown());
    }
    Ok(())
}
