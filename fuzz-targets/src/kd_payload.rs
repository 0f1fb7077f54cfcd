//! Manipulate and state-change payloads: parse, typed view, emit — byte for byte.

use tagsplit_protocol::kd::{Manipulate, PacketType, Payload, Repr, StateChange};

/// One fuzz input.
pub fn run(data: &[u8]) {
    if let Ok(m) = Manipulate::parse(data) {
        assert_eq!(m.to_bytes(), data);
        let mut c = m.clone();
        c.set_api(&m.api());
        assert_eq!(c, m);
    }
    if let Ok(s) = StateChange::parse(data) {
        assert_eq!(s.to_bytes(), data);
        let mut c = s.clone();
        c.set_kind(&s.kind());
        c.set_control_report(&s.control_report());
        assert_eq!(c, s);
        let _ = s.path();
    }
    let ty = PacketType::from_value(u16::from(data.first().copied().unwrap_or(0) % 13));
    if let Ok(p) = Payload::parse(ty, data) {
        assert_eq!(p.to_bytes(), data);
    }
    if let Ok(r) = Repr::parse_bytes(data) {
        assert_eq!(Some(r.to_bytes().as_ref()), data.get(..r.buffer_len()));
    }
}
