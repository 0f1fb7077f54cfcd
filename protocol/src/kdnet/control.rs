//! The KDNET control channel: the target's poke, the debugger's response and the
//! data-key derivation.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::{KdnetError, sha256};

/// First byte of every control payload.
pub const CONTROL_MARK: u8 = 0x01;
/// Control type of the target's poke.
pub const TYPE_POKE: u8 = 0x01;
/// Control type of the debugger's response.
pub const TYPE_RESPONSE: u8 = 0x02;
/// Payload length of a poke (352-byte plaintext minus the 8-byte prefix).
pub const POKE_LEN: usize = 344;
/// Payload length of a response (the body the data key is derived from).
pub const RESPONSE_LEN: usize = 322;

/// The target's poke: "I am here, this is my nonce".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Poke {
    /// The 32-byte target nonce ("client key").
    pub nonce: [u8; 32],
    /// The target's address.
    pub target: SocketAddr,
    /// The debugger host address the target was configured with.
    pub host: SocketAddr,
    /// The last host that connected (`[::ffff:0.0.0.0]:0` on first boot).
    pub last_host: SocketAddr,
    /// The raw payload (kept so re-emitting is exact).
    raw: Vec<u8>,
}

fn addr_at(b: &[u8], off: usize) -> SocketAddr {
    let mut ip = [0u8; 16];
    if let Some(src) = b.get(off..off + 16) {
        ip.copy_from_slice(src);
    }
    let port = b.get(off + 16..off + 18).map_or(0, |p| {
        u16::from_be_bytes([
            p.first().copied().unwrap_or(0),
            p.get(1).copied().unwrap_or(0),
        ])
    });
    let v6 = Ipv6Addr::from(ip);
    let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
    SocketAddr::new(ip, port)
}

fn put_addr(b: &mut [u8], off: usize, a: SocketAddr) {
    let v6 = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    if let Some(dst) = b.get_mut(off..off + 16) {
        dst.copy_from_slice(&v6.octets());
    }
    if let Some(dst) = b.get_mut(off + 16..off + 18) {
        dst.copy_from_slice(&a.port().to_be_bytes());
    }
}

impl Poke {
    /// A poke from `target` for `host`.
    pub fn new(
        nonce: [u8; 32],
        target: SocketAddr,
        host: SocketAddr,
        last_host: SocketAddr,
    ) -> Poke {
        let mut raw = vec![CONTROL_MARK, TYPE_POKE];
        raw.extend_from_slice(&nonce);
        raw.resize(POKE_LEN, 0);
        put_addr(&mut raw, 34, target);
        put_addr(&mut raw, 52, host);
        put_addr(&mut raw, 70, last_host);
        Poke {
            nonce,
            target,
            host,
            last_host,
            raw,
        }
    }

    /// Parses a control payload as a poke.
    pub fn parse(payload: &[u8]) -> Result<Poke, KdnetError> {
        if payload.len() < 88
            || payload.first() != Some(&CONTROL_MARK)
            || payload.get(1) != Some(&TYPE_POKE)
        {
            return Err(KdnetError::BadControl);
        }
        let mut nonce = [0u8; 32];
        nonce.copy_from_slice(payload.get(2..34).ok_or(KdnetError::BadControl)?);
        Ok(Poke {
            nonce,
            target: addr_at(payload, 34),
            host: addr_at(payload, 52),
            last_host: addr_at(payload, 70),
            raw: payload.to_vec(),
        })
    }

    /// The payload bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.raw.clone()
    }
}

/// The debugger's response: the poke's nonce and the host's random bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The nonce copied from the poke.
    pub nonce: [u8; 32],
    /// The host's 32 random bytes.
    pub host_random: [u8; 32],
    raw: Vec<u8>,
}

impl Response {
    /// A response to a poke's nonce.
    pub fn new(nonce: [u8; 32], host_random: [u8; 32]) -> Response {
        let mut raw = vec![CONTROL_MARK, TYPE_RESPONSE];
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&host_random);
        raw.resize(RESPONSE_LEN, 0);
        Response {
            nonce,
            host_random,
            raw,
        }
    }

    /// Parses a control payload as a response.
    pub fn parse(payload: &[u8]) -> Result<Response, KdnetError> {
        if payload.len() != RESPONSE_LEN
            || payload.first() != Some(&CONTROL_MARK)
            || payload.get(1) != Some(&TYPE_RESPONSE)
        {
            return Err(KdnetError::BadControl);
        }
        let mut nonce = [0u8; 32];
        nonce.copy_from_slice(payload.get(2..34).ok_or(KdnetError::BadControl)?);
        let mut host_random = [0u8; 32];
        host_random.copy_from_slice(payload.get(34..66).ok_or(KdnetError::BadControl)?);
        Ok(Response {
            nonce,
            host_random,
            raw: payload.to_vec(),
        })
    }

    /// The 322-byte body.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.raw.clone()
    }

    /// The data key both sides derive from this response.
    pub fn data_key(&self, initial: &[u8; 32]) -> [u8; 32] {
        derive_data_key(initial, &self.raw)
    }
}

/// The data key: SHA-256(initial key ‖ response body).
pub fn derive_data_key(initial: &[u8; 32], response_body: &[u8]) -> [u8; 32] {
    sha256(&[initial, response_body])
}

/// A parsed control-channel payload.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlMessage {
    /// Target → debugger.
    Poke(Poke),
    /// Debugger → target.
    Response(Response),
    /// Anything else (raw payload).
    Other(Vec<u8>),
}

impl ControlMessage {
    /// Classifies a control payload.
    pub fn parse(payload: &[u8]) -> ControlMessage {
        match payload.get(1) {
            Some(&TYPE_POKE) => Poke::parse(payload).map_or_else(
                |_| ControlMessage::Other(payload.to_vec()),
                ControlMessage::Poke,
            ),
            Some(&TYPE_RESPONSE) => Response::parse(payload).map_or_else(
                |_| ControlMessage::Other(payload.to_vec()),
                ControlMessage::Response,
            ),
            _ => ControlMessage::Other(payload.to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poke_round_trip() {
        let p = Poke::new(
            [3u8; 32],
            "192.168.2.72:51111".parse().unwrap(),
            "192.168.2.1:51111".parse().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
        );
        let bytes = p.to_bytes();
        assert_eq!(bytes.len(), POKE_LEN);
        assert_eq!(&bytes[34..46], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]);
        let q = Poke::parse(&bytes).unwrap();
        assert_eq!(q, p);
        assert_eq!(q.target.port(), 51111);
    }

    #[test]
    fn response_round_trip() {
        let r = Response::new([1u8; 32], [2u8; 32]);
        assert_eq!(Response::parse(&r.to_bytes()).unwrap(), r);
        assert!(Response::parse(&r.to_bytes()[..100]).is_err());
    }
}
