#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Reads checked end to end over KDCOM. KDCOM's checksum is a sum of the payload's bytes,
//! so two flips of the same bit in opposite directions pass it. A proxy between the
//! debugger and the simulator's KD stub does exactly that to the data of the first few
//! memory-read replies: without checks the debugger reads wrong bytes and cannot tell;
//! with `VerifyReads::Always` every read is made twice and read again until two copies
//! agree, and the bytes are right.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use tagsplit::VirtAddr;
use tagsplit::target::DebugTarget;
use tagsplit::target::kd::{KdTarget, VerifyReads};
use tagsplit::target::sim::SimTarget;
use tagsplit_protocol::kd::payload::MANIPULATE_LEN;
use tagsplit_protocol::kd::{Leader, PacketType, StreamDecoder, StreamEvent};
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::kd::{KdStub, KdStubOptions};

const PATIENCE: Duration = Duration::from_secs(30);
/// `DbgKdReadVirtualMemoryApi`.
const READ_VIRTUAL_MEMORY: u32 = 0x3130;

/// Sets bit 0 of the `nth` data byte that has it clear and clears it in the `nth` that
/// has it set: the byte sum, KDCOM's checksum, stays the same (and each copy is damaged
/// somewhere else, as random damage is). Returns whether it could.
fn damage_silently(payload: &mut [u8], nth: usize) -> bool {
    let data = MANIPULATE_LEN..payload.len();
    let up = data.clone().filter(|&i| payload[i] & 1 == 0).nth(nth);
    let down = data.clone().filter(|&i| payload[i] & 1 == 1).nth(nth);
    match (up, down) {
        (Some(u), Some(d)) => {
            payload[u] |= 1;
            payload[d] &= !1;
            true
        }
        _ => false,
    }
}

/// Relays one KDCOM connection; the first `damage` memory-read replies from the stub
/// get their data damaged so that the checksum still passes.
fn proxy(stub: SocketAddr, damage: usize) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (debugger, _) = listener.accept().unwrap();
        debugger.set_nodelay(true).unwrap();
        let to_stub = TcpStream::connect(stub).unwrap();
        to_stub.set_nodelay(true).unwrap();
        // Debugger to stub: as is.
        let (mut from_dbg, mut into_stub) =
            (debugger.try_clone().unwrap(), to_stub.try_clone().unwrap());
        let up = std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_dbg, &mut into_stub);
            let _ = into_stub.shutdown(Shutdown::Write);
        });
        // Stub to debugger: packet by packet, re-framed.
        let (mut from_stub, mut into_dbg) = (to_stub, debugger);
        let mut decoder = StreamDecoder::new();
        let mut damaged = 0usize;
        let mut buf = [0u8; 8192];
        loop {
            let n = match from_stub.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            decoder.push(&buf[..n]);
            while let Some(ev) = decoder.next_event() {
                let bytes = match ev {
                    StreamEvent::Packet(mut repr) => {
                        let is_read = repr.leader == Leader::Data
                            && repr.packet_type == PacketType::StateManipulate
                            && repr.payload.len() > MANIPULATE_LEN
                            && repr.payload[..4] == READ_VIRTUAL_MEMORY.to_le_bytes();
                        if is_read
                            && damaged < damage
                            && damage_silently(&mut repr.payload, damaged)
                        {
                            damaged += 1;
                        }
                        repr.to_kdcom_bytes()
                    }
                    StreamEvent::BreakIn => vec![0x62],
                    _ => Vec::new(),
                };
                if into_dbg.write_all(&bytes).is_err() {
                    break;
                }
            }
        }
        let _ = into_dbg.shutdown(Shutdown::Both);
        let _ = up.join();
    });
    (addr, handle)
}

/// Reads 8 KiB at the kernel's base through a proxy that damages the first two read
/// replies silently; returns what was read, what is there, and the mismatches counted.
fn read_through_proxy(verify: VerifyReads) -> (Vec<u8>, Vec<u8>, u64) {
    let scenario = Scenario::builtin("part4").unwrap();
    let machine = Machine::boot(&scenario).unwrap();
    let stub = KdStub::spawn_kdcom(machine, KdStubOptions::default()).unwrap();
    let mut sim = SimTarget::builtin("part4").unwrap();
    let base = sim.kernel_info().unwrap().kern_base;
    let mut want = vec![0u8; 8 << 10];
    assert_eq!(sim.read_memory(base, &mut want).unwrap(), want.len());
    let (addr, relay) = proxy(stub.addr(), 2);
    let mut target = KdTarget::connect_kdcom(addr, PATIENCE).unwrap();
    target.set_verify_reads(verify);
    let mut got = vec![0u8; want.len()];
    let n = target.read_memory(VirtAddr(base.get()), &mut got).unwrap();
    assert_eq!(n, got.len());
    let mismatches = target.read_mismatches();
    drop(target);
    drop(stub.shutdown());
    let _ = relay.join();
    (got, want, mismatches)
}

#[test]
fn damage_the_checksum_misses_is_caught_by_reading_twice() {
    // Without checks the damage goes through: the test's proxy does what it should.
    let (got, want, mismatches) = read_through_proxy(VerifyReads::Never);
    let wrong = got.iter().zip(&want).filter(|(g, w)| g != w).count();
    assert!(wrong > 0, "the proxy damaged nothing");
    assert_eq!(mismatches, 0);
    // Read twice, the copies disagree, and reading on gives the right bytes.
    let (got, want, mismatches) = read_through_proxy(VerifyReads::Always);
    let wrong = got.iter().zip(&want).filter(|(g, w)| g != w).count();
    assert_eq!(wrong, 0, "{wrong} bytes wrong after checked reads");
    assert!(mismatches >= 1, "{mismatches}");
}
