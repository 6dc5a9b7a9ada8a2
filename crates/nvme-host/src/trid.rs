//! SPDK transport id strings: `trtype:VFIOUSER traddr:DIR subnqn:NQN`.

use std::path::PathBuf;

use crate::error::Error;

/// A parsed vfio-user transport id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportId {
    /// The `traddr` value: the listener directory (or the socket itself).
    pub traddr: PathBuf,
    /// The `subnqn` value, if given.
    pub subnqn: Option<String>,
}

impl TransportId {
    /// Parses an SPDK-style transport id. Keys are case-insensitive; `trtype` must be
    /// `VFIOUSER` and `traddr` is required.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = |m: String| Error::InvalidTransportId(m);
        let mut trtype = None;
        let mut traddr = None;
        let mut subnqn = None;
        for tok in s.split_whitespace() {
            let (k, v) = tok
                .split_once(':')
                .or_else(|| tok.split_once('='))
                .ok_or_else(|| bad(format!("'{tok}' is not key:value")))?;
            if v.is_empty() {
                return Err(bad(format!("empty value for '{k}'")));
            }
            match k.to_ascii_lowercase().as_str() {
                "trtype" => trtype = Some(v.to_string()),
                "traddr" => traddr = Some(PathBuf::from(v)),
                "subnqn" => subnqn = Some(v.to_string()),
                // Accepted and ignored, as SPDK does for vfio-user.
                "adrfam" | "trsvcid" | "hostnqn" | "ns" => {}
                other => return Err(bad(format!("unknown key '{other}'"))),
            }
        }
        match trtype.as_deref() {
            Some(t) if t.eq_ignore_ascii_case("vfiouser") => {}
            Some(t) => return Err(bad(format!("unsupported trtype '{t}' (only VFIOUSER)"))),
            None => return Err(bad("missing trtype".into())),
        }
        let traddr = traddr.ok_or_else(|| bad("missing traddr".into()))?;
        Ok(Self { traddr, subnqn })
    }

    /// The socket to connect to: `traddr/cntrl`, or `traddr` itself if it is not a directory.
    pub fn socket_path(&self) -> PathBuf {
        if self.traddr.is_dir() {
            self.traddr.join("cntrl")
        } else {
            self.traddr.clone()
        }
    }

    /// The `VFIOUSER (traddr)` label used in tool output.
    pub fn label(&self) -> String {
        format!("VFIOUSER ({})", self.traddr.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spdk_spelling() {
        let t = TransportId::parse(
            "trtype:VFIOUSER traddr:/var/run/x subnqn:nqn.2019-07.io.spdk:cnode0",
        )
        .unwrap();
        assert_eq!(t.traddr, PathBuf::from("/var/run/x"));
        assert_eq!(t.subnqn.as_deref(), Some("nqn.2019-07.io.spdk:cnode0"));
        assert_eq!(t.socket_path(), PathBuf::from("/var/run/x"));
        let t = TransportId::parse("  TRTYPE=vfiouser   TrAddr:/tmp  ").unwrap();
        assert_eq!(t.socket_path(), PathBuf::from("/tmp/cntrl"));
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "",
            "traddr:/tmp",
            "trtype:PCIE traddr:0000:01:00.0",
            "trtype:VFIOUSER",
            "trtype:VFIOUSER traddr:",
            "trtype:VFIOUSER traddr:/tmp bogus:1",
            "trtype:VFIOUSER /tmp",
        ] {
            assert!(
                matches!(TransportId::parse(bad), Err(Error::InvalidTransportId(_))),
                "{bad:?} must be rejected"
            );
        }
    }
}
