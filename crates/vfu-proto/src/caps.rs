//! VERSION capability JSON: parsing with libvfio-user's validation rules and encoding.

use serde_json::{Map, Value};

use crate::ProtoError;
use crate::{DEFAULT_MAX_DATA_XFER, DEFAULT_MAX_DMA_MAPS, DEFAULT_PGSIZES};

/// Largest `max_msg_fds` accepted from a peer.
pub const MAX_PEER_MSG_FDS: u64 = 1024;

/// Twin socket capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TwinSocket {
    /// Whether the sender supports a twin socket.
    pub supported: bool,
    /// Index of the twin socket fd in the VERSION reply (reply only).
    pub fd_index: Option<u32>,
}

/// Negotiated or proposed capabilities (spec defaults when a key is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Most fds the sender can receive in one message.
    pub max_msg_fds: u32,
    /// Largest data transfer the sender accepts.
    pub max_data_xfer_size: u32,
    /// Most concurrent DMA windows.
    pub max_dma_maps: u32,
    /// Supported DMA page sizes (OR-ed).
    pub pgsizes: u64,
    /// Twin socket capability, if present.
    pub twin_socket: Option<TwinSocket>,
    /// REGION_WRITE_MULTI support, if stated.
    pub write_multiple: Option<bool>,
    /// Legacy `migration.pgsize`, if present.
    pub migration_pgsize: Option<u64>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            max_msg_fds: 1,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            pgsizes: DEFAULT_PGSIZES,
            twin_socket: None,
            write_multiple: None,
            migration_pgsize: None,
        }
    }
}

fn get_u64(map: &Map<String, Value>, key: &str) -> Result<Option<u64>, ProtoError> {
    match map.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or(ProtoError::BadCaps("expected a non-negative integer")),
    }
}

fn u32_cap(v: Option<u64>, default: u32, what: &'static str) -> Result<u32, ProtoError> {
    match v {
        None => Ok(default),
        Some(n) => u32::try_from(n).map_err(|_| ProtoError::BadCaps(what)),
    }
}

impl Capabilities {
    /// Parses the JSON part of a VERSION payload (everything after major/minor).
    ///
    /// An empty slice means "no JSON" (SPDK's host) and yields the defaults. Otherwise the
    /// bytes must be NUL-terminated UTF-8 JSON whose `capabilities` (if present) is an object.
    /// Unknown keys are ignored; known keys are type-checked.
    pub fn parse(json: &[u8]) -> Result<Capabilities, ProtoError> {
        if json.is_empty() {
            return Ok(Capabilities::default());
        }
        let (last, body) = json.split_last().ok_or(ProtoError::BadCaps("empty JSON"))?;
        if *last != 0 {
            return Err(ProtoError::BadCaps("JSON not NUL-terminated"));
        }
        let v: Value =
            serde_json::from_slice(body).map_err(|_| ProtoError::BadCaps("invalid JSON"))?;
        let obj = v
            .as_object()
            .ok_or(ProtoError::BadCaps("JSON is not an object"))?;
        let mut caps = Capabilities::default();
        let Some(c) = obj.get("capabilities") else {
            return Ok(caps);
        };
        let c = c
            .as_object()
            .ok_or(ProtoError::BadCaps("capabilities is not an object"))?;
        let fds = get_u64(c, "max_msg_fds")?;
        if let Some(n) = fds {
            if n > MAX_PEER_MSG_FDS {
                return Err(ProtoError::BadCaps("max_msg_fds out of range"));
            }
        }
        caps.max_msg_fds = u32_cap(fds, 1, "max_msg_fds")?;
        caps.max_data_xfer_size = u32_cap(
            get_u64(c, "max_data_xfer_size")?,
            DEFAULT_MAX_DATA_XFER,
            "max_data_xfer_size",
        )?;
        caps.max_dma_maps = u32_cap(
            get_u64(c, "max_dma_maps")?,
            DEFAULT_MAX_DMA_MAPS,
            "max_dma_maps",
        )?;
        if let Some(p) = get_u64(c, "pgsizes")? {
            caps.pgsizes = p;
        }
        if let Some(m) = c.get("migration") {
            let m = m
                .as_object()
                .ok_or(ProtoError::BadCaps("migration is not an object"))?;
            if let Some(p) = get_u64(m, "pgsize")? {
                if p == 0 || p % 4096 != 0 {
                    return Err(ProtoError::BadCaps("migration pgsize"));
                }
                caps.migration_pgsize = Some(p);
            }
        }
        if let Some(t) = c.get("twin_socket") {
            let t = t
                .as_object()
                .ok_or(ProtoError::BadCaps("twin_socket is not an object"))?;
            let supported = match t.get("supported") {
                None => false,
                Some(b) => b
                    .as_bool()
                    .ok_or(ProtoError::BadCaps("twin_socket.supported"))?,
            };
            let fd_index = match get_u64(t, "fd_index")? {
                None => None,
                Some(i) => Some(u32::try_from(i).map_err(|_| ProtoError::BadCaps("fd_index"))?),
            };
            caps.twin_socket = Some(TwinSocket {
                supported,
                fd_index,
            });
        }
        if let Some(w) = c.get("write_multiple") {
            caps.write_multiple = Some(w.as_bool().ok_or(ProtoError::BadCaps("write_multiple"))?);
        }
        Ok(caps)
    }

    /// Encodes as NUL-terminated `{"capabilities":{...}}` JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut c = Map::new();
        c.insert("max_msg_fds".into(), self.max_msg_fds.into());
        c.insert("max_data_xfer_size".into(), self.max_data_xfer_size.into());
        c.insert("max_dma_maps".into(), self.max_dma_maps.into());
        c.insert("pgsizes".into(), self.pgsizes.into());
        if let Some(p) = self.migration_pgsize {
            let mut m = Map::new();
            m.insert("pgsize".into(), p.into());
            c.insert("migration".into(), Value::Object(m));
        }
        if let Some(w) = self.write_multiple {
            c.insert("write_multiple".into(), w.into());
        }
        if let Some(t) = self.twin_socket {
            let mut m = Map::new();
            m.insert("supported".into(), t.supported.into());
            if let Some(i) = t.fd_index {
                m.insert("fd_index".into(), i.into());
            }
            c.insert("twin_socket".into(), Value::Object(m));
        }
        let mut top = Map::new();
        top.insert("capabilities".into(), Value::Object(c));
        let mut out = Value::Object(top).to_string().into_bytes();
        out.push(0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Capabilities, ProtoError> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        Capabilities::parse(&v)
    }

    #[test]
    fn accepts_real_peers() {
        assert_eq!(Capabilities::parse(b"").unwrap(), Capabilities::default());
        assert_eq!(p("{}").unwrap(), Capabilities::default());
        let q = p(r#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#).unwrap();
        assert_eq!(q.max_msg_fds, 16);
        assert_eq!(q.write_multiple, Some(true));
        assert_eq!(q.migration_pgsize, Some(4096));
        let r = p(r#"{"capabilities":{"max_msg_fds":1,"max_data_xfer_size":1048576,"migration":{"pgsize":4096}},"unknown":1}"#).unwrap();
        assert_eq!(r.max_msg_fds, 1);
        let t = p(r#"{"capabilities":{"twin_socket":{"supported":true}}}"#).unwrap();
        assert_eq!(
            t.twin_socket,
            Some(TwinSocket {
                supported: true,
                fd_index: None
            })
        );
    }

    #[test]
    fn rejects_libvfio_user_negatives() {
        assert!(Capabilities::parse(b"{}").is_err(), "missing NUL");
        for bad in [
            "{",
            "\"",
            r#"{"capabilities":"23"}"#,
            r#"{"capabilities":{"max_msg_fds":"foo"}}"#,
            r#"{"capabilities":{"max_msg_fds":-1}}"#,
            r#"{"capabilities":{"max_msg_fds":1025}}"#,
            r#"{"capabilities":{"migration":"23"}}"#,
            r#"{"capabilities":{"migration":{"pgsize":"foo"}}}"#,
            r#"{"capabilities":{"migration":{"pgsize":4095}}}"#,
            r#"{"capabilities":{"twin_socket":{"supported":1}}}"#,
            r#"{"capabilities":{"write_multiple":"yes"}}"#,
            r#"{"capabilities":{"max_data_xfer_size":1.5}}"#,
            "[]",
        ] {
            assert!(p(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn encode_roundtrip() {
        let c = Capabilities {
            max_msg_fds: 16,
            twin_socket: Some(TwinSocket {
                supported: true,
                fd_index: Some(0),
            }),
            write_multiple: Some(true),
            migration_pgsize: Some(4096),
            ..Capabilities::default()
        };
        let j = c.to_json();
        assert_eq!(j.last(), Some(&0));
        assert_eq!(Capabilities::parse(&j).unwrap(), c);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_roundtrips(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            if let Ok(c) = Capabilities::parse(&bytes) {
                proptest::prop_assert_eq!(Capabilities::parse(&c.to_json()), Ok(c));
            }
        }

        #[test]
        fn numeric_caps_roundtrip(fds in 0u32..=1024, xfer in proptest::prelude::any::<u32>(), maps in proptest::prelude::any::<u32>(), pg in proptest::prelude::any::<u64>()) {
            let c = Capabilities { max_msg_fds: fds, max_data_xfer_size: xfer, max_dma_maps: maps, pgsizes: pg, ..Capabilities::default() };
            proptest::prop_assert_eq!(Capabilities::parse(&c.to_json()), Ok(c));
        }
    }
}
