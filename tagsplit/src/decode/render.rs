//! Text and JSON rendering of a [`CaptureReport`].

use std::fmt::Write;

use super::{CaptureReport, Content, DatagramRecord, PacketRecord};

fn packet_line(p: &PacketRecord, with_direction: bool) -> String {
    let ok = if p.checksum_ok { "" } else { " BAD-CHECKSUM" };
    if with_direction {
        let dir = p.direction.map_or("?", |d| d.arrow());
        format!("[{}] {dir} {}{ok}", p.number, p.summary)
    } else {
        format!("[{}] {}{ok}", p.number, p.summary)
    }
}

fn datagram_line(report: &CaptureReport, d: &DatagramRecord) -> String {
    let channel = match d.channel {
        Some(c) => format!("{c:?}").to_lowercase(),
        None => "?".to_string(),
    };
    let mut line = format!(
        "#{:<5} {:>10.6} {} -> {} kdnet v{} {channel} len={}",
        d.frame, d.time, d.src, d.dst, d.version, d.length
    );
    if let (Some(seq), Some(dir)) = (d.seq, d.direction) {
        let _ = write!(line, " seq={seq} {}", dir.arrow());
    }
    let what = match &d.content {
        Content::Poke {
            nonce,
            target,
            host,
        } => format!(
            "poke nonce={}… target={target} host={host}",
            nonce.get(..16).unwrap_or(nonce)
        ),
        Content::Response { data_key } => format!("response -> data key {data_key}"),
        Content::ControlOther { len } => format!("control payload of {len} bytes"),
        Content::Kd { packet } => report
            .packets
            .get(*packet)
            .map_or_else(String::new, |p| packet_line(p, false)),
        Content::BreakIn => "break-in".to_string(),
        Content::Hello { bytes } => format!("hello {bytes}"),
        Content::BadKd { error } => format!("not a kd packet: {error}"),
        Content::NoDataKey => {
            "not decrypted: no data key (the handshake is not in the capture)".to_string()
        }
        Content::Unauthenticated { reason } => format!("NOT AUTHENTICATED ({reason})"),
    };
    let _ = write!(line, " {what}");
    line
}

/// The dissector-style text: one line per datagram (or per packet for KDCOM), totals.
pub fn render_text(report: &CaptureReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: {:?}, {} frames",
        report.file, report.format, report.totals.frames
    );
    for d in &report.datagrams {
        let _ = writeln!(s, "{}", datagram_line(report, d));
    }
    for p in report.packets.iter().filter(|p| p.transport != "kdnet") {
        let frame = p.frame.map_or_else(String::new, |f| format!("#{f} "));
        let _ = writeln!(s, "{frame}{} {}", p.transport, packet_line(p, true));
    }
    let t = &report.totals;
    let _ = writeln!(s, "totals:");
    if t.datagrams > 0 {
        let _ = writeln!(
            s,
            "  kdnet datagrams: {} ({} control, {} data); authenticated {}, not {}",
            t.datagrams, t.control_datagrams, t.data_datagrams, t.authenticated, t.unauthenticated
        );
        let _ = writeln!(
            s,
            "  control: {} pokes, {} responses; data: {} hellos, {} break-ins",
            t.pokes, t.responses, t.hellos, t.break_ins
        );
    }
    if let Some(k) = &report.data_key {
        let _ = writeln!(s, "  data key: {k}");
    }
    let _ = writeln!(
        s,
        "  kd packets: {} ({} bad checksums)",
        t.kd_packets, t.bad_checksums
    );
    for (ty, n) in &t.by_type {
        let _ = writeln!(s, "    {ty}: {n}");
    }
    if !t.by_api.is_empty() {
        let apis: Vec<String> = t.by_api.iter().map(|(a, n)| format!("{a} {n}")).collect();
        let _ = writeln!(s, "  manipulate APIs: {}", apis.join(", "));
    }
    if t.noise_bytes > 0 {
        let _ = writeln!(s, "  noise bytes: {}", t.noise_bytes);
    }
    for n in &report.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

/// The report as pretty JSON.
pub fn render_json(report: &CaptureReport) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
