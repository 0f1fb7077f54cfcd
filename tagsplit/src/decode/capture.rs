//! Reading capture files: gzip detection, pcap and pcapng records, and the link, IP, UDP
//! and TCP layers, all with checked slicing.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgParser};

use super::DecodeError;

/// Largest (decompressed) capture we read.
pub const MAX_CAPTURE_BYTES: u64 = 1 << 30;

/// Largest pcap record or pcapng block accepted (256 KiB: the largest snapshot length
/// tools write is 262,144 bytes, plus room for a block's options). A record that claims
/// more is an error, checked before anything is copied.
pub const MAX_RECORD_BYTES: usize = 0x4_0000 + 0x1000;

/// The pcap record header length.
const PCAP_RECORD_HEADER: usize = 16;

/// What kind of file the bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// libpcap.
    Pcap,
    /// pcapng.
    Pcapng,
    /// Raw KDCOM bytes (not a capture container).
    Raw,
}

/// One captured link-layer frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// 1-based frame number.
    pub number: usize,
    /// Capture timestamp.
    pub timestamp: Duration,
    /// Link type.
    pub link: u32,
    /// Captured bytes.
    pub data: Vec<u8>,
}

/// A transport payload found in a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// UDP or TCP.
    pub transport: Transport,
    /// Source address.
    pub src: SocketAddr,
    /// Destination address.
    pub dst: SocketAddr,
    /// The payload.
    pub payload: Vec<u8>,
}

/// The transport protocol of a [`Segment`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

/// Reads a file, gunzipping it when it starts with the gzip magic.
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>, DecodeError> {
    let file = std::fs::File::open(path).map_err(|e| DecodeError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    let mut raw = Vec::new();
    file.take(MAX_CAPTURE_BYTES)
        .read_to_end(&mut raw)
        .map_err(|e| DecodeError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
    gunzip_if_needed(raw)
}

/// Decompresses `raw` if it is gzip, else returns it.
pub fn gunzip_if_needed(raw: Vec<u8>) -> Result<Vec<u8>, DecodeError> {
    if raw.starts_with(&[0x1F, 0x8B]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .take(MAX_CAPTURE_BYTES)
            .read_to_end(&mut out)
            .map_err(|e| DecodeError::Gzip(e.to_string()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Recognises the container format by its magic.
pub fn detect(bytes: &[u8]) -> FileFormat {
    match bytes.get(..4) {
        Some([0x0A, 0x0D, 0x0D, 0x0A]) => FileFormat::Pcapng,
        Some([0xD4, 0xC3, 0xB2, 0xA1])
        | Some([0xA1, 0xB2, 0xC3, 0xD4])
        | Some([0x4D, 0x3C, 0xB2, 0xA1])
        | Some([0xA1, 0xB2, 0x3C, 0x4D]) => FileFormat::Pcap,
        _ => FileFormat::Raw,
    }
}

/// The frames of a pcap or pcapng file.
pub fn frames(bytes: &[u8], format: FileFormat) -> Result<Vec<Frame>, DecodeError> {
    let bad = |e: pcap_file::PcapError| DecodeError::Capture(e.to_string());
    let mut out = Vec::new();
    match format {
        FileFormat::Pcap => {
            let (mut rest, parser) = PcapParser::new(bytes).map_err(bad)?;
            let link = u32::from(parser.header().datalink);
            let big_endian = matches!(bytes.get(..4), Some([0xA1, ..]));
            while !rest.is_empty() {
                let number = out.len() + 1;
                let offset = bytes.len() - rest.len();
                let len = u32_at(rest, 8, big_endian).and_then(|n| usize::try_from(n).ok());
                check_record(number, offset, len.map(|n| n + PCAP_RECORD_HEADER), rest)?;
                let (r, packet) = parser.next_packet(rest).map_err(bad)?;
                out.push(Frame {
                    number: out.len() + 1,
                    timestamp: packet.timestamp,
                    link,
                    data: packet.data.into_owned(),
                });
                rest = r;
            }
        }
        FileFormat::Pcapng => {
            let first_len = u32_at(bytes, 4, section_big_endian(bytes));
            check_record(1, 0, first_len.and_then(|n| usize::try_from(n).ok()), bytes)?;
            let (mut rest, mut parser) = PcapNgParser::new(bytes).map_err(bad)?;
            let mut big_endian = section_big_endian(bytes);
            let mut blocks = 1;
            while !rest.is_empty() {
                blocks += 1;
                if rest.get(..4) == Some(&[0x0A, 0x0D, 0x0D, 0x0A]) {
                    big_endian = section_big_endian(rest);
                }
                let offset = bytes.len() - rest.len();
                let len = u32_at(rest, 4, big_endian).and_then(|n| usize::try_from(n).ok());
                check_record(blocks, offset, len, rest)?;
                let (r, block) = parser.next_block(rest).map_err(bad)?;
                rest = r;
                let (link, timestamp, data) = match block {
                    Block::EnhancedPacket(p) => {
                        let iface = parser.packet_interface(&p);
                        let link = iface.map_or(1, |i| u32::from(i.linktype));
                        // pcap-file reads the raw count as nanoseconds; rescale it by
                        // the interface's if_tsresol (default: microseconds).
                        let resol = iface
                            .and_then(|i| {
                                i.options.iter().find_map(|o| match o {
                                    InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
                                    _ => None,
                                })
                            })
                            .unwrap_or(6);
                        (link, rescale(p.timestamp, resol), p.data.into_owned())
                    }
                    Block::SimplePacket(p) => {
                        let link = parser
                            .interfaces()
                            .first()
                            .map_or(1, |i| u32::from(i.linktype));
                        (link, Duration::ZERO, p.data.into_owned())
                    }
                    _ => continue,
                };
                out.push(Frame {
                    number: out.len() + 1,
                    timestamp,
                    link,
                    data,
                });
            }
        }
        FileFormat::Raw => {}
    }
    Ok(out)
}

/// The `u32` at `off` in `b`, in the byte order given.
fn u32_at(b: &[u8], off: usize, big_endian: bool) -> Option<u32> {
    let raw: [u8; 4] = b.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(if big_endian {
        u32::from_be_bytes(raw)
    } else {
        u32::from_le_bytes(raw)
    })
}

/// Whether the pcapng section whose header block starts `b` is big-endian (its
/// byte-order magic reads 0x1A2B3C4D as big-endian).
fn section_big_endian(b: &[u8]) -> bool {
    b.get(8..12) == Some(&[0x1A, 0x2B, 0x3C, 0x4D])
}

/// Checks the length a record (or block) at `offset` claims, before the parser looks
/// at it: it must be readable, at most [`MAX_RECORD_BYTES`], and all there.
fn check_record(
    record: usize,
    offset: usize,
    claimed: Option<usize>,
    rest: &[u8],
) -> Result<(), DecodeError> {
    let Some(claimed) = claimed else {
        return Err(DecodeError::Truncated {
            record,
            offset,
            claimed: PCAP_RECORD_HEADER,
            available: rest.len(),
        });
    };
    if claimed > MAX_RECORD_BYTES {
        return Err(DecodeError::RecordTooLong {
            record,
            offset,
            claimed,
            max: MAX_RECORD_BYTES,
        });
    }
    if claimed > rest.len() {
        return Err(DecodeError::Truncated {
            record,
            offset,
            claimed,
            available: rest.len(),
        });
    }
    Ok(())
}

/// Turns a raw pcapng timestamp count (that pcap-file stores as nanoseconds) into real
/// time given `if_tsresol`.
fn rescale(raw: Duration, resol: u8) -> Duration {
    let count = raw.as_nanos() as f64;
    let secs = if resol & 0x80 == 0 {
        count / 10f64.powi(i32::from(resol))
    } else {
        count / 2f64.powi(i32::from(resol & 0x7F))
    };
    if secs.is_finite() && (0.0..1e15).contains(&secs) {
        Duration::from_secs_f64(secs)
    } else {
        Duration::ZERO
    }
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off + 2)?;
    Some(u16::from_be_bytes(s.try_into().ok()?))
}

/// Extracts the UDP or TCP payload of a frame, if it has one.
pub fn segment(frame: &Frame) -> Option<Segment> {
    let d = &frame.data[..];
    let link = DataLink::from(frame.link);
    let (ethertype, ip) = match link {
        DataLink::ETHERNET => {
            let mut off = 12;
            let mut ty = be16(d, off)?;
            while ty == 0x8100 || ty == 0x88A8 {
                off += 4;
                ty = be16(d, off)?;
            }
            (ty, d.get(off + 2..)?)
        }
        DataLink::LINUX_SLL => (be16(d, 14)?, d.get(16..)?),
        DataLink::NULL | DataLink::LOOP => {
            let family = d.get(..4)?;
            let v6 = family.contains(&24) || family.contains(&28) || family.contains(&30);
            (if v6 { 0x86DD } else { 0x0800 }, d.get(4..)?)
        }
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => {
            let version = d.first()? >> 4;
            (if version == 6 { 0x86DD } else { 0x0800 }, d)
        }
        _ => return None,
    };
    let (proto, src_ip, dst_ip, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0F) * 4;
            let total = usize::from(be16(ip, 2)?);
            let frag = be16(ip, 6)?;
            if ihl < 20 || frag & 0x1FFF != 0 {
                return None;
            }
            let end = total.min(ip.len());
            let src = Ipv4Addr::new(*ip.get(12)?, *ip.get(13)?, *ip.get(14)?, *ip.get(15)?);
            let dst = Ipv4Addr::new(*ip.get(16)?, *ip.get(17)?, *ip.get(18)?, *ip.get(19)?);
            (
                *ip.get(9)?,
                IpAddr::V4(src),
                IpAddr::V4(dst),
                ip.get(ihl..end)?,
            )
        }
        0x86DD => {
            let payload_len = usize::from(be16(ip, 4)?);
            let next = *ip.get(6)?;
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            let end = (40 + payload_len).min(ip.len());
            (
                next,
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                ip.get(40..end)?,
            )
        }
        _ => return None,
    };
    match proto {
        17 => {
            let sport = be16(l4, 0)?;
            let dport = be16(l4, 2)?;
            let len = usize::from(be16(l4, 4)?);
            let end = if len >= 8 {
                len.min(l4.len())
            } else {
                l4.len()
            };
            Some(Segment {
                transport: Transport::Udp,
                src: SocketAddr::new(src_ip, sport),
                dst: SocketAddr::new(dst_ip, dport),
                payload: l4.get(8..end)?.to_vec(),
            })
        }
        6 => {
            let sport = be16(l4, 0)?;
            let dport = be16(l4, 2)?;
            let off = usize::from(l4.get(12)? >> 4) * 4;
            if off < 20 {
                return None;
            }
            Some(Segment {
                transport: Transport::Tcp,
                src: SocketAddr::new(src_ip, sport),
                dst: SocketAddr::new(dst_ip, dport),
                payload: l4.get(off..)?.to_vec(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_ipv4_udp() {
        let mut f = vec![0u8; 14];
        f[12] = 0x08;
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let udp = [0xC7, 0xA7, 0xC7, 0xA7, 0, 11, 0, 0, b'a', b'b', b'c'];
        let total = (ip.len() + udp.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&udp);
        f.extend_from_slice(&[0, 0, 0]); // ethernet padding is ignored
        let frame = Frame {
            number: 1,
            timestamp: Duration::ZERO,
            link: 1,
            data: f.clone(),
        };
        let s = segment(&frame).unwrap();
        assert_eq!(s.transport, Transport::Udp);
        assert_eq!(s.src, "10.0.0.1:51111".parse().unwrap());
        assert_eq!(s.payload, b"abc");
        // Every truncation is handled without panicking.
        for n in 0..f.len() {
            let fr = Frame {
                data: f[..n].to_vec(),
                ..frame.clone()
            };
            let _ = segment(&fr);
        }
    }

    #[test]
    fn detects_formats() {
        assert_eq!(detect(&[0x0A, 0x0D, 0x0D, 0x0A, 0]), FileFormat::Pcapng);
        assert_eq!(detect(&[0xD4, 0xC3, 0xB2, 0xA1]), FileFormat::Pcap);
        assert_eq!(detect(b"0000"), FileFormat::Raw);
    }
}
