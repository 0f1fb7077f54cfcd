#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! `DebugTarget::registers` on every backend: the simulator's thread context in process,
//! over GDB (`g`) and over KD (`DbgKdGetContextApi`), register for register; and a target
//! without a processor says it has none.

mod gdb_support;

use std::net::SocketAddr;

use tagsplit::target::flat::FlatTarget;
use tagsplit::target::gdb::GdbTarget;
use tagsplit::target::kd::{KdTarget, KdTransport};
use tagsplit::target::sim::SimTarget;
use tagsplit::target::{DebugTarget, TargetError, X64Registers};
use tagsplit_target_sim::machine::{AllocPoint, Machine};
use tagsplit_target_sim::server::gdb::{GdbStub, GdbStubOptions};

/// Every register different, none zero, so a field read from the wrong place shows.
fn distinct() -> X64Registers {
    X64Registers {
        rax: 0x1111_0000_0000_0001,
        rbx: 0x2222_0000_0000_0002,
        rcx: 0x3333_0000_0000_0003,
        rdx: 0x4444_0000_0000_0004,
        rsi: 0x5555_0000_0000_0005,
        rdi: 0x6666_0000_0000_0006,
        rbp: 0x7777_0000_0000_0007,
        rsp: 0xffff_f880_0000_0008,
        r8: 0x8888_0000_0000_0008,
        r9: 0x9999_0000_0000_0009,
        r10: 0xaaaa_0000_0000_000a,
        r11: 0xbbbb_0000_0000_000b,
        r12: 0xcccc_0000_0000_000c,
        r13: 0xdddd_0000_0000_000d,
        r14: 0xeeee_0000_0000_000e,
        r15: 0xffff_0000_0000_000f,
        rip: 0xffff_f800_02a0_1234,
        rflags: 0x0000_0a97,
        cs: 0x10,
        ss: 0x18,
        ds: 0x2b,
        es: 0x2c,
        fs: 0x53,
        gs: 0x2d,
    }
}

fn machine() -> Machine {
    let mut m = gdb_support::part4();
    *m.context_mut() = distinct();
    m
}

#[test]
fn sim_backend_reads_the_machines_context() {
    let mut t = SimTarget::from_machine(machine(), 100);
    assert_eq!(t.registers().unwrap(), distinct());
    // At a stack the machine laid out, the registers are that state.
    let site = t
        .machine()
        .sites()
        .iter()
        .position(|s| s.leaks && s.module == "myfault.sys")
        .unwrap();
    let size = t.machine().sites()[site].size;
    let ctx = t
        .machine_mut()
        .context_at_allocation(site, size, AllocPoint::HitTagBreak)
        .unwrap();
    *t.machine_mut().context_mut() = ctx;
    assert_eq!(t.registers().unwrap(), ctx);
    assert_eq!(t.registers().unwrap().rbx, u64::from(ctx.r8 as u32));
}

#[test]
fn gdb_backend_reads_the_g_block() {
    let stub = GdbStub::spawn_at(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        machine(),
        GdbStubOptions::default(),
    )
    .unwrap();
    let mut t = GdbTarget::connect(&stub.addr().to_string()).unwrap();
    let before = t.stats().unwrap().round_trips;
    assert_eq!(t.registers().unwrap(), distinct());
    assert_eq!(t.stats().unwrap().round_trips - before, 1, "one 'g'");
    // A change made behind the client's back is seen (nothing is cached).
    stub.with_machine(|m| m.context_mut().rip = 0xffff_f800_02a0_5678);
    assert_eq!(t.registers().unwrap().rip, 0xffff_f800_02a0_5678);
}

#[test]
fn kd_backend_reads_the_context_over_kdnet_and_kdcom() {
    for transport in [
        KdTransport::Kdnet("1.2.3.4".parse().unwrap()),
        KdTransport::Kdcom,
    ] {
        let mut t = KdTarget::loopback(machine(), transport, gdb_support::kd_options()).unwrap();
        let before = t.stats().unwrap().round_trips;
        let regs = t.registers().unwrap();
        assert_eq!(regs, distinct(), "{transport:?}");
        assert_eq!(t.stats().unwrap().round_trips - before, 1, "one GetContext");
    }
}

#[test]
fn a_memory_image_has_no_registers() {
    let mut t = FlatTarget::new();
    assert!(matches!(
        t.registers(),
        Err(TargetError::Unsupported("registers"))
    ));
}

/// A stub whose `g` reply is too short for x86-64's integer registers (or not hex at
/// all): a protocol error naming the length, no panic, no made-up registers.
#[test]
fn a_short_or_malformed_g_reply_is_a_protocol_error() {
    use std::io::{Read, Write};
    use tagsplit_protocol::gdb::frame::{Decoder, Event, encode_packet};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut decoder = Decoder::default();
        let mut gs = 0;
        let mut buf = [0u8; 4096];
        loop {
            let n = match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            for ev in decoder.decode(&buf[..n]) {
                let Event::Packet(p) = ev else { continue };
                let text = String::from_utf8_lossy(&p).into_owned();
                let reply: Vec<u8> = if text.starts_with("qSupported") {
                    b"PacketSize=4000".to_vec()
                } else if text == "?" {
                    b"T05thread:01;".to_vec()
                } else if text == "g" {
                    gs += 1;
                    if gs == 1 {
                        // 16 registers' worth: no rip, no eflags, no selectors.
                        b"00".repeat(128)
                    } else {
                        b"zz".to_vec()
                    }
                } else {
                    Vec::new()
                };
                let mut out = b"+".to_vec();
                out.extend(encode_packet(&reply, false));
                if conn.write_all(&out).is_err() {
                    return;
                }
            }
        }
    });
    let mut t = GdbTarget::connect(&addr.to_string()).unwrap();
    let e = t.registers().unwrap_err();
    assert!(
        matches!(&e, TargetError::Protocol(m) if m.contains("128 bytes")),
        "{e}"
    );
    assert!(t.registers().is_err(), "not hex: an error");
    drop(t);
    server.join().unwrap();
}
