#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! A tokio GDB client and stub, both on `Framed`, over loopback TCP through a relay that
//! damages one byte each way: both damaged frames are NAKed and sent again, then the
//! session switches to no-ack mode.

mod common;

use futures::{SinkExt, StreamExt};
use tagsplit_protocol::codec::gdb::{
    ClientItem, ClientSend, GdbClientCodec, GdbServerCodec, LinkTrouble, ServerItem, ServerSend,
};
use tagsplit_protocol::gdb::{ClientEvent, Command, Reply, ServerEvent, SessionStats};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

/// A stub for three commands; returns its trouble items, final ack mode and counters.
async fn stub(listener: TcpListener) -> (Vec<LinkTrouble>, bool, SessionStats) {
    let (socket, _) = listener.accept().await.unwrap();
    let mut framed = Framed::new(socket, GdbServerCodec::default());
    let mut trouble = Vec::new();
    while let Some(item) = framed.next().await {
        let reply = match item.unwrap() {
            ServerItem::Event(ServerEvent::Command(packet)) => match packet.command() {
                Command::Attached(_) => Reply::Attached(true),
                Command::StartNoAckMode => Reply::Ok,
                Command::ReadMemory { addr, len } => {
                    Reply::Hex((0..len).map(|i| (addr + i) as u8).collect())
                }
                _ => Reply::Empty,
            },
            ServerItem::Trouble(t) => {
                trouble.push(t);
                continue;
            }
            ServerItem::Transmit => {
                framed.send(ServerSend::Pending).await.unwrap();
                continue;
            }
            other => panic!("unexpected {other:?}"),
        };
        framed.send(ServerSend::Reply(reply)).await.unwrap();
    }
    let session = framed.codec().session();
    (trouble, session.ack_mode(), session.stats())
}

/// Sends `cmd` and drives the link until its reply arrives.
async fn ask(
    framed: &mut Framed<TcpStream, GdbClientCodec>,
    cmd: Command<'_>,
    trouble: &mut Vec<LinkTrouble>,
) -> Reply {
    framed.send(ClientSend::Command(cmd)).await.unwrap();
    loop {
        match framed.next().await.expect("stub hung up").unwrap() {
            ClientItem::Event(ClientEvent::Reply(r)) => {
                // Acknowledge it now, not with the next command.
                framed.send(ClientSend::Pending).await.unwrap();
                return r;
            }
            ClientItem::Trouble(t) => trouble.push(t),
            ClientItem::Transmit => framed.send(ClientSend::Pending).await.unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn framed_client_and_stub_recover_damaged_bytes_then_drop_acks() {
    // Client stream: `$qAttached#8f`: byte 1 is inside the first packet. Stub stream: `-`
    // (the NAK), then `+$1#31`: byte 3 is inside the first reply.
    let (socket, server) = common::connect_through_relay(stub, Some(1), Some(3)).await;
    let mut framed = Framed::new(socket, GdbClientCodec::default());
    let mut trouble = Vec::new();
    assert_eq!(
        ask(&mut framed, Command::Attached(None), &mut trouble).await,
        Reply::Attached(true)
    );
    assert_eq!(
        ask(&mut framed, Command::StartNoAckMode, &mut trouble).await,
        Reply::Ok
    );
    assert!(!framed.codec().session().ack_mode());
    assert_eq!(
        ask(
            &mut framed,
            Command::ReadMemory { addr: 0x40, len: 4 },
            &mut trouble
        )
        .await,
        Reply::Hex(vec![0x40, 0x41, 0x42, 0x43])
    );
    let client_stats = framed.codec().session().stats();
    drop(framed);

    let (server_trouble, server_ack_mode, server_stats) = server.await.unwrap();
    assert_eq!(trouble, [LinkTrouble::BadChecksum { count: 1 }]);
    assert_eq!(server_trouble, [LinkTrouble::BadChecksum { count: 1 }]);
    assert!(!server_ack_mode);
    assert_eq!(
        client_stats.retransmissions, 1,
        "the damaged command went again"
    );
    assert_eq!(
        server_stats.retransmissions, 1,
        "the damaged reply went again"
    );
    assert_eq!(server_stats.packets_received, 3);
    assert_eq!(client_stats.packets_received, 3);
}
