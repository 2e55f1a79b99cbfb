//! Ring buffer records, decoded from the `#[repr(C)]` layouts of ebpf/common.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use stockade_ebpf_common as k;

/// One record of the ring buffer.
#[derive(Debug, Clone)]
pub enum RawEvent {
    NetDeny(k::NetDenyEvent),
    Syscall(Box<k::SyscallEvent>),
    Fork(k::EventHeader, u32),
    Exec(k::EventHeader, String),
    Exit(k::EventHeader),
    LsmDeny(k::LsmDenyEvent),
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked; T is a #[repr(C)] plain-old-data type of ebpf/common for
    // which every bit pattern is valid, and read_unaligned needs no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

impl RawEvent {
    pub fn decode(bytes: &[u8]) -> Option<RawEvent> {
        let header: k::EventHeader = read(bytes)?;
        Some(match header.kind {
            k::EVENT_NET_DENY => RawEvent::NetDeny(read(bytes)?),
            k::EVENT_SYSCALL => RawEvent::Syscall(Box::new(read(bytes)?)),
            k::EVENT_FORK | k::EVENT_EXEC | k::EVENT_EXIT => {
                let p: k::ProcEvent = read(bytes)?;
                match header.kind {
                    k::EVENT_FORK => RawEvent::Fork(p.header, p.other),
                    k::EVENT_EXEC => RawEvent::Exec(p.header, c_string(&p.filename)),
                    _ => RawEvent::Exit(p.header),
                }
            }
            k::EVENT_LSM_DENY => RawEvent::LsmDeny(read(bytes)?),
            _ => return None,
        })
    }

    pub fn header(&self) -> &k::EventHeader {
        match self {
            RawEvent::NetDeny(e) => &e.header,
            RawEvent::Syscall(e) => &e.header,
            RawEvent::Fork(h, _) | RawEvent::Exec(h, _) | RawEvent::Exit(h) => h,
            RawEvent::LsmDeny(e) => &e.header,
        }
    }
}

/// The bytes up to the first NUL, lossily as UTF-8.
pub fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The address of a network denial.
pub fn net_address(e: &k::NetDenyEvent) -> SocketAddr {
    let ip = if e.family == k::AF_INET {
        IpAddr::V4(Ipv4Addr::from(e.addr[0].to_ne_bytes()))
    } else {
        let mut b = [0u8; 16];
        for (i, w) in e.addr.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    };
    SocketAddr::new(ip, e.port)
}

/// A `struct sockaddr_in` / `sockaddr_in6` copied from the caller's memory.
pub fn sockaddr(bytes: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(bytes.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?);
    match family as i32 {
        libc::AF_INET => {
            let a: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(a.into()), port))
        }
        libc::AF_INET6 => {
            let a: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V6(a.into()), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddrs_decode() {
        let mut v4 = [0u8; 28];
        v4[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&8080u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 2]);
        assert_eq!(sockaddr(&v4), Some("127.0.0.2:8080".parse().unwrap()));
        let mut v6 = [0u8; 28];
        v6[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&443u16.to_be_bytes());
        v6[23] = 1;
        assert_eq!(sockaddr(&v6), Some("[::1]:443".parse().unwrap()));
        assert_eq!(sockaddr(&[1, 0]), None);
    }

    #[test]
    fn records_decode_by_kind() {
        let e = k::NetDenyEvent {
            header: k::EventHeader {
                kind: k::EVENT_NET_DENY,
                pid: 7,
                ..Default::default()
            },
            addr: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
            port: 53,
            family: k::AF_INET,
            ..Default::default()
        };
        // SAFETY: viewing a plain-old-data value as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const k::NetDenyEvent).cast::<u8>(),
                std::mem::size_of_val(&e),
            )
        };
        match RawEvent::decode(bytes) {
            Some(RawEvent::NetDeny(d)) => {
                assert_eq!(d.header.pid, 7);
                assert_eq!(net_address(&d), "10.0.0.1:53".parse().unwrap());
            }
            other => panic!("{other:?}"),
        }
        assert!(RawEvent::decode(&bytes[..10]).is_none());
    }
}
