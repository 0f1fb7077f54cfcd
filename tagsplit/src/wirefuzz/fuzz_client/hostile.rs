//! Hostile replies: what the mutating stub sends instead of a real reply.
//!
//! Every reply is a well-framed packet (good checksum, escapes right) so the client's
//! parser behind the framing sees it, and at most [`MAX_REPLY`] bytes.

use tagsplit_protocol::fuzz::arbitrary::{Arbitrary as _, Unstructured};
use tagsplit_protocol::fuzz::{GdbReply, mutate};
use tagsplit_protocol::gdb::Command;
use tagsplit_protocol::gdb::frame;
use tagsplit_protocol::gdb::reply::ReplyKind;

use crate::wirefuzz::Rng;

/// Most bytes of one mutated reply (frames included).
pub const MAX_REPLY: usize = 0x1_0000;
/// Replies mutated, per mille: most go out untouched so the client gets far enough to
/// parse the interesting ones.
pub const MUTATE_PER_MILLE: u32 = 120;

/// What the stub sends for `reply` (one `$…#cs` frame), the answer to the client's
/// `command` (payload), given this iteration's `rng`: usually `reply` itself, else a
/// hostile replacement. `QStartNoAckMode`'s `OK` is never changed (a client and a stub
/// that disagree on acks only wait on each other: a hang of our making, not the
/// client's).
pub fn reply_for(rng: &mut Rng, reply: &[u8], command: Option<&[u8]>) -> Vec<u8> {
    if reply.first() != Some(&b'$') {
        return reply.to_vec();
    }
    if command.is_some_and(|c| c.starts_with(b"QStartNoAckMode")) {
        return reply.to_vec();
    }
    if !rng.chance(MUTATE_PER_MILLE) {
        return reply.to_vec();
    }
    let cmd = command.unwrap_or_default();
    let kind = Command::parse(cmd).reply_kind();
    let out = match rng.below(4) {
        0 => mutated(rng, reply),
        1 => generated(rng, kind).unwrap_or_else(|| mutated(rng, reply)),
        _ => match kind {
            ReplyKind::Xfer => frame::encode_packet(&hostile_xml(rng, reply), false),
            ReplyKind::Stop => odd_stop(rng, reply),
            _ => mutated(rng, reply),
        },
    };
    if out.len() > MAX_REPLY {
        return reply.to_vec();
    }
    out
}

/// [`mutate::gdb_frame`] of `reply`, keeping only mutations that frame.
fn mutated(rng: &mut Rng, reply: &[u8]) -> Vec<u8> {
    for _ in 0..8 {
        let seed = rng.bytes(256);
        let mut u = Unstructured::new(&seed);
        if let Ok(m) = mutate::gdb_frame(reply, &mut u)
            && m.frames
            && gdb_frames(&m.bytes)
        {
            return m.bytes;
        }
    }
    reply.to_vec()
}

/// Whether gdb reads `bytes` as the frame our decoder reads. gdb's framing knows
/// run lengths but not escapes (it unescapes later, for binary packets only), so an
/// escape whose second byte is `*`, `#` or `$` (an escaped 0x0a, 0x03 or 0x04) is a run
/// length or a frame's end to gdb: it answers `-` and waits `remotetimeout` for a
/// retransmission, a stall of our making, not a finding.
fn gdb_frames(bytes: &[u8]) -> bool {
    let body = bytes
        .strip_prefix(b"$")
        .and_then(|b| b.get(..b.len().saturating_sub(3)))
        .unwrap_or_default();
    let mut escaped = false;
    for &b in body {
        if escaped {
            if matches!(b, b'*' | b'#' | b'$') {
                return false;
            }
            escaped = false;
        } else if b == b'}' {
            escaped = true;
        }
    }
    true
}

/// A generated reply of the kind `kind` ([`GdbReply`]), if one comes up in a few tries.
fn generated(rng: &mut Rng, kind: ReplyKind) -> Option<Vec<u8>> {
    for _ in 0..64 {
        let seed = rng.bytes(1024);
        let mut u = Unstructured::new(&seed);
        if let Ok(r) = GdbReply::arbitrary(&mut u)
            && (r.kind == kind || kind == ReplyKind::Raw)
        {
            return Some(r.frame(rng.chance(500)));
        }
    }
    None
}

/// One of `items` (the first when `rng` says an index out of range, which it does not).
fn pick<T: Copy + Default>(rng: &mut Rng, items: &[T]) -> T {
    items
        .get(rng.index(items.len()))
        .copied()
        .unwrap_or_default()
}

/// `n` copies of `s`.
fn times(s: &str, n: usize) -> String {
    s.repeat(n)
}

/// A hostile `qXfer` chunk (`l` or `m` and a document): deep nesting, a huge attribute,
/// entity declarations and references, an include of itself, many or overlapping
/// elements, odd numbers, or the real document cut short.
pub fn hostile_xml(rng: &mut Rng, reply: &[u8]) -> Vec<u8> {
    let real = frame::unescape(
        reply
            .strip_prefix(b"$")
            .and_then(|r| r.get(..r.len().saturating_sub(3)))
            .unwrap_or_default(),
        MAX_REPLY,
    )
    .unwrap_or_default();
    let head = if rng.chance(700) { "l" } else { "m" };
    let big = 1 + rng.index(40_000);
    let doc = match rng.below(9) {
        0 => {
            let depth = 1 + rng.index(5000);
            format!(
                "<?xml version=\"1.0\"?><target>{}{}",
                times("<feature name=\"x\">", depth),
                if rng.chance(500) {
                    times("</feature>", depth) + "</target>"
                } else {
                    String::new()
                }
            )
        }
        1 => format!(
            "<?xml version=\"1.0\"?><target version=\"{}\"><architecture>{}</architecture></target>",
            times("9", big),
            times("i386:x86-64", 1 + big / 16)
        ),
        2 => {
            let levels = 2 + rng.index(8);
            let mut d = String::from("<?xml version=\"1.0\"?><!DOCTYPE target [<!ENTITY e0 \"lol\">");
            for i in 1..levels {
                d.push_str(&format!("<!ENTITY e{i} \"{}\">", times(&format!("&e{};", i - 1), 10)));
            }
            d.push_str(&format!(
                "]><target><architecture>&e{};</architecture></target>",
                levels - 1
            ));
            d
        }
        3 => "<?xml version=\"1.0\"?><!DOCTYPE target SYSTEM \"gdb-target.dtd\"><target><xi:include href=\"target.xml\"/></target>".to_string(),
        4 => {
            let n = rng.index(2000);
            let mut d = String::from("<?xml version=\"1.0\"?><library-list>");
            for i in 0..n {
                d.push_str(&format!(
                    "<library name=\"{}\"><segment address=\"0x{:x}\"/><section address=\"{}\"/></library>",
                    times("A", i % 300),
                    rng.next_u64(),
                    if rng.chance(500) { "-1" } else { "0x" }
                ));
            }
            d.push_str("</library-list>");
            d
        }
        5 => {
            let n = rng.index(2000);
            let mut d = String::from("<?xml version=\"1.0\"?><memory-map>");
            for _ in 0..n {
                d.push_str(&format!(
                    "<memory type=\"{}\" start=\"0x{:x}\" length=\"0x{:x}\"><property name=\"blocksize\">{}</property></memory>",
                    pick(rng, &["ram", "rom", "flash", "x"]),
                    rng.next_u64() & 0xffff_ffff_ffff_f000,
                    pick(rng, &[0u64, 1, u64::MAX, 0x1000]),
                    pick(rng, &["0", "-1", "18446744073709551615", "x"])
                ));
            }
            d.push_str("</memory-map>");
            d
        }
        6 => {
            let n = rng.index(3000);
            let mut d = String::from("<?xml version=\"1.0\"?><target><architecture>i386:x86-64</architecture><feature name=\"org.gnu.gdb.i386.core\">");
            for i in 0..n {
                d.push_str(&format!(
                    "<reg name=\"r{i}\" bitsize=\"{}\" regnum=\"{}\" type=\"{}\"/>",
                    pick(rng, &["0", "1", "7", "64", "65536", "4294967296", "-8"]),
                    pick(rng, &["0", "99999", "-1", "4294967295"]),
                    pick(rng, &["int64", "code_ptr", "vec512", "i387_ext", "nosuch"])
                ));
            }
            d.push_str("</feature></target>");
            d
        }
        7 => format!(
            "<?xml version=\"1.0\"?><target><architecture>i386:x86-64</architecture><feature name=\"{}\"><flags id=\"f\" size=\"{}\"><field name=\"a\" start=\"{}\" end=\"{}\"/></flags><reg name=\"eflags\" bitsize=\"32\" type=\"f\"/></feature></target>",
            times("x", big),
            pick(rng, &["0", "9", "4294967295", "-1"]),
            pick(rng, &["0", "63", "64", "4294967295"]),
            pick(rng, &["0", "63", "64", "-1"])
        ),
        _ => {
            let d = String::from_utf8_lossy(&real).into_owned();
            let d = d.strip_prefix(['l', 'm']).unwrap_or(&d).to_string();
            let cut = rng.index(d.len() + 1);
            d.get(..cut).unwrap_or(&d).to_string()
        }
    };
    let mut payload = head.as_bytes().to_vec();
    payload.extend_from_slice(doc.as_bytes());
    payload.truncate(MAX_REPLY / 2 - 8);
    payload
}

/// An odd stop reply: `T` with huge or unknown fields, registers of odd numbers and
/// lengths, `W`/`X`/`S`, `N`, or `O` console output ahead of the real stop reply.
pub fn odd_stop(rng: &mut Rng, reply: &[u8]) -> Vec<u8> {
    let hex = |n: usize| times("f", n);
    let payload: String = match rng.below(10) {
        0 => format!(
            "T05thread:p{}.{};",
            hex(1 + rng.index(64)),
            hex(1 + rng.index(64))
        ),
        1 => {
            let n = 1 + rng.index(500);
            let mut s = String::from("T05");
            for i in 0..n {
                s.push_str(&format!("x{i}yz:{};", hex(rng.index(40))));
            }
            s
        }
        2 => format!(
            "T05{}:{};",
            pick(rng, &["ff", "10", "06", "39", "ffffffff", "0"]),
            hex(rng.index(400))
        ),
        3 => pick(
            rng,
            &["W00", "W", "Wff;process:1", "X09", "X0b", "X", "S00", "Sff"],
        )
        .to_string(),
        4 => format!(
            "T05{}:{};",
            pick(
                rng,
                &[
                    "library",
                    "create",
                    "fork",
                    "vfork",
                    "exec",
                    "watch",
                    "rwatch",
                    "awatch",
                    "replaylog",
                    "swbreak",
                    "hwbreak",
                    "core"
                ]
            ),
            pick(
                rng,
                &["", "p1.2", "ffffffffffffffffffff", "zz", "2f62696e2f7368"]
            )
        ),
        5 => "N".into(),
        6 => format!(
            "T{}",
            pick(
                rng,
                &["", "0", "zz", "05;;;", "05:", "05thread:;", "05thread:-1;"]
            )
        ),
        7 => format!("T05{}", times("06:0000000000000000;", 1 + rng.index(1000))),
        _ => {
            let text = times("41", 1 + rng.index(4000));
            let mut out = frame::encode_packet(format!("O{text}").as_bytes(), false);
            out.extend_from_slice(reply);
            return out;
        }
    };
    frame::encode_packet(payload.as_bytes(), rng.chance(300))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tagsplit_protocol::gdb::frame::{Decoder, Event};

    #[test]
    fn hostile_replies_frame_and_stay_bounded() {
        let real = frame::encode_packet(b"l<?xml version=\"1.0\"?><target></target>", false);
        for seed in 0..300 {
            let mut rng = Rng::new(seed);
            for out in [
                frame::encode_packet(&hostile_xml(&mut rng, &real), false),
                odd_stop(&mut rng, b"$T05#b9"),
                reply_for(
                    &mut rng,
                    &real,
                    Some(b"qXfer:features:read:target.xml:0,1000"),
                ),
            ] {
                assert!(out.len() <= MAX_REPLY, "seed {seed}: {} bytes", out.len());
                let events = Decoder::new(MAX_REPLY).decode(&out);
                assert!(!events.is_empty());
                assert!(
                    events.iter().all(|e| matches!(e, Event::Packet(_))),
                    "seed {seed}: {events:?}"
                );
            }
        }
    }

    #[test]
    fn escapes_gdb_reads_as_run_lengths_are_refused() {
        assert!(gdb_frames(b"$a}]b#00"));
        assert!(gdb_frames(b"$a}}*!#00"));
        assert!(!gdb_frames(b"$a}*b#00"));
        assert!(!gdb_frames(b"$a}#b#00"));
    }

    #[test]
    fn no_ack_mode_is_left_alone() {
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            assert_eq!(
                reply_for(&mut rng, b"$OK#9a", Some(b"QStartNoAckMode")),
                b"$OK#9a"
            );
        }
    }
}
