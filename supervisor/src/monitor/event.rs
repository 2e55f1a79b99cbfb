//! Ring buffer records, decoded from the `#[repr(C)]` layouts of ebpf/common, and the [`Object`]
//! an event names.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::ser::{Serialize, SerializeMap, Serializer};

use stockade_ebpf_common as k;

/// One record of the ring buffer.
#[derive(Debug, Clone)]
pub enum RawEvent {
    NetDeny(k::NetDenyEvent),
    Syscall(Box<k::SyscallEvent>),
    Fork(k::EventHeader, u32),
    /// The file name exactly as the kernel copied it (not necessarily UTF-8).
    Exec(k::EventHeader, Vec<u8>),
    Exit(k::EventHeader),
    LsmDeny(k::LsmDenyEvent),
    Sigsys(k::SigsysEvent),
    UnixDeny(k::UnixDenyEvent),
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
                    k::EVENT_EXEC => RawEvent::Exec(p.header, c_bytes(&p.filename).to_vec()),
                    _ => RawEvent::Exit(p.header),
                }
            }
            k::EVENT_LSM_DENY => RawEvent::LsmDeny(read(bytes)?),
            k::EVENT_SIGSYS => RawEvent::Sigsys(read(bytes)?),
            k::EVENT_UNIX_DENY => RawEvent::UnixDeny(read(bytes)?),
            _ => return None,
        })
    }

    pub fn header(&self) -> &k::EventHeader {
        match self {
            RawEvent::NetDeny(e) => &e.header,
            RawEvent::Syscall(e) => &e.header,
            RawEvent::Fork(h, _) | RawEvent::Exec(h, _) | RawEvent::Exit(h) => h,
            RawEvent::LsmDeny(e) => &e.header,
            RawEvent::Sigsys(e) => &e.header,
            RawEvent::UnixDeny(e) => &e.header,
        }
    }
}

/// The bytes up to the first NUL.
pub fn c_bytes(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// The bytes up to the first NUL as a path, exactly (a Linux path is bytes, not UTF-8).
pub fn c_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(c_bytes(bytes)))
}

/// What an event names: a path or file name as the plugin gave it, an address, a pid.
///
/// Paths are the plugin's choice, so they are kept as bytes: any byte but NUL, not necessarily
/// UTF-8, control characters included. In JSON (`--events`, `--json`) the event carries
/// - `object`: the text. Exactly the bytes when they are valid UTF-8 (JSON escapes what it must);
///   otherwise each byte that is not part of valid UTF-8 is written `\xNN`. A path longer than
///   the kernel's copy ends in `…`.
/// - `object_hex`: only when the bytes are not valid UTF-8: the exact bytes, two lowercase hex
///   digits each (without the `…`). A consumer that needs the exact path decodes this field when
///   it is present, and takes `object` otherwise.
///
/// The text summary escapes it for the terminal (`summary::escape_for_terminal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    bytes: Vec<u8>,
    /// The kernel copied only the beginning of a longer path.
    truncated: bool,
}

impl Object {
    pub fn bytes(bytes: impl Into<Vec<u8>>) -> Object {
        Object {
            bytes: bytes.into(),
            truncated: false,
        }
    }

    /// A path of which the kernel may have copied only the beginning (`truncated`).
    pub fn path(bytes: impl Into<Vec<u8>>, truncated: bool) -> Object {
        Object {
            bytes: bytes.into(),
            truncated,
        }
    }

    /// The exact bytes (without the `…` of a truncated path).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The `object` field of the JSON: the bytes when they are UTF-8, else with `\xNN` for each
    /// byte that is not.
    pub fn text(&self) -> Cow<'_, str> {
        let mut text = match std::str::from_utf8(&self.bytes) {
            Ok(s) if !self.truncated => return Cow::Borrowed(s),
            Ok(s) => s.to_string(),
            Err(_) => {
                let mut out = String::with_capacity(self.bytes.len() + 8);
                for chunk in self.bytes.utf8_chunks() {
                    out.push_str(chunk.valid());
                    for b in chunk.invalid() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                out
            }
        };
        if self.truncated {
            text.push('…');
        }
        Cow::Owned(text)
    }

    /// The `object_hex` field: the exact bytes, when they are not UTF-8.
    pub fn hex(&self) -> Option<String> {
        if std::str::from_utf8(&self.bytes).is_ok() {
            return None;
        }
        let mut out = String::with_capacity(self.bytes.len() * 2);
        for b in &self.bytes {
            let _ = write!(out, "{b:02x}");
        }
        Some(out)
    }
}

impl From<String> for Object {
    fn from(text: String) -> Object {
        Object::bytes(text.into_bytes())
    }
}

/// Serialized as the fields `object` and, for bytes that are not UTF-8, `object_hex`; an event
/// flattens it into its own fields.
impl Serialize for Object {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let hex = self.hex();
        let mut map = serializer.serialize_map(Some(1 + usize::from(hex.is_some())))?;
        map.serialize_entry("object", &self.text())?;
        if let Some(hex) = hex {
            map.serialize_entry("object_hex", &hex)?;
        }
        map.end()
    }
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

/// The pathname of a `struct sockaddr_un` copied from the caller's memory (`None` for another
/// family, an abstract name, or a name the copy cut before its NUL).
pub fn unix_path(bytes: &[u8]) -> Option<PathBuf> {
    let family = u16::from_ne_bytes(bytes.get(0..2)?.try_into().ok()?);
    if family != libc::AF_UNIX as u16 {
        return None;
    }
    let name = bytes.get(2..)?;
    let end = name.iter().position(|b| *b == 0)?;
    (end > 0).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&name[..end])))
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
    fn objects_keep_their_exact_bytes_in_json() {
        let json = |o: Object| serde_json::to_value(&o).unwrap();
        let plain = Object::bytes(b"/tmp/x".to_vec());
        assert_eq!(json(plain), serde_json::json!({"object": "/tmp/x"}));
        // Control characters are valid UTF-8: JSON escapes them, nothing is lost.
        let forged = Object::bytes(b"/tmp/a\nstockade: forged\x1b[31m".to_vec());
        let v = json(forged);
        assert_eq!(v["object"], "/tmp/a\nstockade: forged\u{1b}[31m");
        assert!(v.get("object_hex").is_none());
        // Invalid UTF-8 is never replaced: `\xNN` in the text, the exact bytes in hex.
        let invalid = Object::bytes(b"/tmp/\xff\xfe-\xc3\xa9".to_vec());
        let v = json(invalid);
        assert_eq!(v["object"], "/tmp/\\xff\\xfe-é");
        assert_eq!(v["object_hex"], "2f746d702ffffe2dc3a9");
        assert!(!serde_json::to_string(&v).unwrap().contains('\u{fffd}'));
        // A path the kernel copied only the beginning of.
        let long = Object::path(b"/a/b".to_vec(), true);
        assert_eq!(json(long.clone()), serde_json::json!({"object": "/a/b…"}));
        assert_eq!(long.as_bytes(), b"/a/b");
        assert_eq!(c_bytes(b"/x\0junk"), b"/x");
        assert_eq!(c_path(b"/\xff\0junk").as_os_str().as_bytes(), b"/\xff");
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
