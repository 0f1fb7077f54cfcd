#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Regression (wire fuzzer, issue 12, `fuzz-client --kdcom` against our own console): our
//! KDCOM debugger ([`KdTarget`]) against our simulator's KD stub through a relay that
//! changes the packet id of exactly one of the stub's replies, the way the fuzzer's mutator
//! does (`Field::Sequence`, "one back": 0x80800000 becomes 0x807fffff, which carries the
//! SYNC bit). The debugger took it as a resync to an id no target sends, dropped every later
//! reply as a duplicate and gave up on its requests after a minute. Now every read
//! succeeds with the bytes a clean link reads. Time-outs are safety nets only.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tagsplit::target::DebugTarget;
use tagsplit::target::kd::KdTarget;
use tagsplit_protocol::kd::{INITIAL_PACKET_ID, Leader, StreamDecoder, StreamEvent};
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::kd::{KdStub, KdStubOptions};

const PATIENCE: Duration = Duration::from_secs(60);

/// A relay between one debugger and the stub that changes the id of the stub's `nth`
/// (counting from 1) data packet with id 0x80800000 to one less; `mutated` counts the
/// packets it changed.
struct Relay {
    addr: std::net::SocketAddr,
    mutated: Arc<AtomicU32>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    fn spawn(stub: std::net::SocketAddr, nth: u32) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mutated = Arc::new(AtomicU32::new(0));
        let count = Arc::clone(&mutated);
        let thread = std::thread::spawn(move || {
            let (debugger, _) = listener.accept().unwrap();
            let target = TcpStream::connect(stub).unwrap();
            for s in [&debugger, &target] {
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(PATIENCE)).unwrap();
            }
            let (mut d_in, mut t_out) =
                (debugger.try_clone().unwrap(), target.try_clone().unwrap());
            // Debugger to target: as it is.
            let up = std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = d_in.read(&mut buf) {
                    if t_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = t_out.shutdown(Shutdown::Both);
            });
            // Target to debugger: packet by packet, one id changed.
            let (mut t_in, mut d_out) = (target, debugger);
            let mut decoder = StreamDecoder::new();
            let mut seen = 0u32;
            let mut buf = [0u8; 4096];
            'relay: while let Ok(n @ 1..) = t_in.read(&mut buf) {
                decoder.push(&buf[..n]);
                while let Some(ev) = decoder.next_event() {
                    let bytes = match ev {
                        StreamEvent::Packet(mut repr) => {
                            if repr.leader == Leader::Data && repr.id == INITIAL_PACKET_ID {
                                seen += 1;
                                if seen == nth {
                                    repr.id = repr.id.wrapping_sub(1);
                                    count.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            repr.to_kdcom_bytes()
                        }
                        StreamEvent::BreakIn => vec![tagsplit_protocol::kd::BREAKIN_PACKET_BYTE],
                        other => panic!("the stub sent a damaged stream: {other:?}"),
                    };
                    if d_out.write_all(&bytes).is_err() {
                        break 'relay;
                    }
                }
            }
            let _ = d_out.shutdown(Shutdown::Both);
            let _ = up.join();
        });
        Relay {
            addr,
            mutated,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The kernel's first pages, 1 KiB from each, read one after another (each a request).
fn reads(t: &mut KdTarget) -> Vec<Vec<u8>> {
    let base = t.kernel_info().expect("kernel info").kern_base;
    (0..8u64)
        .map(|k| {
            let mut buf = vec![0u8; 1024];
            let n = t
                .read_fresh(base.saturating_add(k * 0x1000), &mut buf)
                .unwrap_or_else(|e| panic!("read {k}: {e}"));
            buf.truncate(n);
            buf
        })
        .collect()
}

fn machine() -> Machine {
    Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap()
}

#[test]
fn one_reply_with_a_mutated_id_and_the_reads_still_succeed() {
    let clean = {
        let stub = KdStub::spawn_kdcom(machine(), KdStubOptions::default()).unwrap();
        let mut t = KdTarget::connect_kdcom(stub.addr(), PATIENCE).unwrap();
        reads(&mut t)
    };
    assert!(
        clean.iter().all(|r| r.len() == 1024),
        "the clean reads are whole"
    );
    // The first 0x80800000 comes during the connect; later ones during the reads.
    for nth in [1, 3, 6] {
        let stub = KdStub::spawn_kdcom(machine(), KdStubOptions::default()).unwrap();
        let relay = Relay::spawn(stub.addr(), nth);
        let mut t = KdTarget::connect_kdcom(relay.addr, PATIENCE)
            .unwrap_or_else(|e| panic!("packet {nth}: connect: {e}"));
        let got = reads(&mut t);
        assert_eq!(
            relay.mutated.load(Ordering::SeqCst),
            1,
            "packet {nth}: one id was changed"
        );
        assert_eq!(got, clean, "packet {nth}: the reads match a clean link's");
        drop(t);
        drop(relay);
    }
}
