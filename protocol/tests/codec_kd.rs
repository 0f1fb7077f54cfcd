#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! A tokio KD debugger and target, both on `Framed` with the session codec, over loopback
//! TCP (KDCOM framing, as a VM's serial port carries it) through a relay that damages one
//! payload byte each way: each damaged packet is answered with RESEND and sent again.

mod common;

use futures::{SinkExt, StreamExt};
use tagsplit_protocol::codec::kd::{KdItem, KdSend, KdSessionCodec};
use tagsplit_protocol::kd::{
    GetVersion64, Manipulate, ManipulateApi, PacketType, Role, SessionConfig, SessionEvent,
    SessionStats,
};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

const KERN_BASE: u64 = 0xFFFF_F800_0060_0000;

/// A target that answers GetVersion; returns the events it saw and its counters.
async fn target(listener: TcpListener) -> (Vec<SessionEvent>, SessionStats) {
    let (socket, _) = listener.accept().await.unwrap();
    let mut framed = Framed::new(
        socket,
        KdSessionCodec::new(SessionConfig::kdcom(Role::Target)),
    );
    let mut seen = Vec::new();
    while let Some(item) = framed.next().await {
        match item.unwrap() {
            KdItem::Event(SessionEvent::Packet {
                packet_type: PacketType::StateManipulate,
                payload,
                ..
            }) => {
                let req = Manipulate::parse(&payload).unwrap();
                let version = GetVersion64 {
                    kern_base: KERN_BASE,
                    machine_type: 0x8664,
                    ..GetVersion64::default()
                };
                let reply = req.reply(0, &ManipulateApi::GetVersion(version), vec![]);
                framed
                    .send(KdSend::Packet {
                        packet_type: PacketType::StateManipulate,
                        payload: reply.to_bytes(),
                    })
                    .await
                    .unwrap();
            }
            KdItem::Event(ev) => seen.push(ev),
            KdItem::Transmit => framed.send(KdSend::Pending).await.unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }
    (seen, framed.codec().session().stats())
}

#[tokio::test]
async fn framed_debugger_and_target_recover_damaged_packets() {
    // Debugger stream: the request's 16-byte header, then its payload: byte 16 is the
    // first payload byte. Target stream: RESEND (16), ACK (16), then the reply's header
    // (16): byte 48 is the reply's first payload byte.
    let (socket, target) = common::connect_through_relay(target, Some(16), Some(48)).await;
    let mut framed = Framed::new(
        socket,
        KdSessionCodec::new(SessionConfig::kdcom(Role::Debugger)),
    );
    let request = Manipulate::request(&ManipulateApi::GetVersion(GetVersion64::default()), vec![]);
    framed
        .send(KdSend::Packet {
            packet_type: PacketType::StateManipulate,
            payload: request.to_bytes(),
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    let reply = loop {
        match framed.next().await.expect("target hung up").unwrap() {
            KdItem::Event(SessionEvent::Packet { payload, .. }) => break payload,
            KdItem::Event(ev) => seen.push(ev),
            KdItem::Transmit => framed.send(KdSend::Pending).await.unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    };
    // Acknowledge the reply before hanging up.
    framed.send(KdSend::Pending).await.unwrap();
    let m = Manipulate::parse(&reply).unwrap();
    match m.api() {
        ManipulateApi::GetVersion(v) => assert_eq!(v.kern_base, KERN_BASE),
        other => panic!("not a version reply: {other:?}"),
    }
    assert!(
        framed.codec().session().is_idle(),
        "the request was acknowledged"
    );
    let debugger_stats = framed.codec().session().stats();
    drop(framed);

    let (target_seen, target_stats) = target.await.unwrap();
    let corrupt = |evs: &[SessionEvent]| {
        evs.iter()
            .filter(|e| matches!(e, SessionEvent::Corrupt(_)))
            .count()
    };
    assert_eq!(corrupt(&seen), 1, "debugger events: {seen:?}");
    assert_eq!(corrupt(&target_seen), 1, "target events: {target_seen:?}");
    assert!(
        target_seen
            .iter()
            .any(|e| matches!(e, SessionEvent::Acknowledged { .. })),
        "the reply was acknowledged: {target_seen:?}"
    );
    assert_eq!(debugger_stats.retransmissions, 1);
    assert_eq!(target_stats.retransmissions, 1);
}
