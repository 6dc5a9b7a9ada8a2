//! The bdev registry: what `bdev_*_create` built, in creation order, with the exact
//! parameters needed to write them back in `framework_get_config`.

use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::jsonrpc::RpcError;

/// Kind of backend and its kind-specific settings.
#[derive(Debug, Clone, PartialEq)]
pub enum BdevKind {
    /// Discards writes, reads zeroes.
    Null,
    /// RAM.
    Malloc {
        /// SPDK `optimal_io_boundary` (blocks; 0 = none).
        optimal_io_boundary: u32,
    },
    /// File or block device (SPDK `bdev_aio`).
    Aio {
        /// Path of the backing file.
        filename: String,
        /// Block size given at creation (None = detected).
        block_size_param: Option<u32>,
        /// Read-only.
        readonly: bool,
        /// Use fallocate for write zeroes.
        fallocate: bool,
    },
    /// NBD client (Sluice-specific `bdev_nbd_client_create`).
    Nbd {
        /// Unix socket of the NBD server (exclusive with `address`).
        socket_path: Option<String>,
        /// TCP `host:port` of the NBD server.
        address: Option<String>,
        /// Export name.
        export_name: String,
        /// Block size given at creation.
        block_size_param: Option<u32>,
        /// I/O timeout (ms).
        timeout_ms: Option<u64>,
    },
    /// File or block device through io_uring (SPDK `bdev_uring`).
    Uring {
        /// Path of the backing file.
        filename: String,
        /// Block size given at creation (None = detected).
        block_size_param: Option<u32>,
    },
}

/// QoS limits (`bdev_set_qos_limit`), 0 = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QosLimits {
    /// IOPS (reads + writes).
    pub rw_ios_per_sec: u64,
    /// MiB/s (reads + writes).
    pub rw_mbytes_per_sec: u64,
    /// MiB/s reads.
    pub r_mbytes_per_sec: u64,
    /// MiB/s writes.
    pub w_mbytes_per_sec: u64,
}

impl QosLimits {
    fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }
}

/// One registered bdev.
#[derive(Debug, Clone, PartialEq)]
pub struct Bdev {
    /// Unique name.
    pub name: String,
    /// UUID (given or generated).
    pub uuid: Uuid,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Physical block size in bytes.
    pub physical_block_size: u32,
    /// Number of logical blocks.
    pub num_blocks: u64,
    /// Backend.
    pub kind: BdevKind,
    /// QoS limits.
    pub qos: QosLimits,
}

impl Bdev {
    /// SPDK `product_name`.
    pub fn product_name(&self) -> &'static str {
        match self.kind {
            BdevKind::Null => "Null disk",
            BdevKind::Malloc { .. } => "Malloc disk",
            BdevKind::Aio { .. } => "AIO disk",
            BdevKind::Uring { .. } => "URING bdev",
            BdevKind::Nbd { .. } => "NBD disk",
        }
    }

    fn supports(&self) -> (bool, bool) {
        // (flush, unmap)
        match self.kind {
            BdevKind::Null => (false, false),
            BdevKind::Malloc { .. } => (true, true),
            BdevKind::Aio { .. } | BdevKind::Uring { .. } | BdevKind::Nbd { .. } => (true, true),
        }
    }

    /// One element of `bdev_get_bdevs`.
    pub fn to_json(&self, claimed: bool) -> Value {
        let (flush, unmap) = self.supports();
        let malloc = matches!(self.kind, BdevKind::Malloc { .. });
        let mut v = json!({
            "name": self.name,
            "aliases": [],
            "product_name": self.product_name(),
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "preferred_write_alignment": 0,
            "preferred_write_granularity": 0,
            "optimal_write_size": 0,
            "preferred_unmap_alignment": 0,
            "preferred_unmap_granularity": 0,
            "uuid": self.uuid.hyphenated().to_string(),
            "assigned_rate_limits": {
                "rw_ios_per_sec": self.qos.rw_ios_per_sec,
                "rw_mbytes_per_sec": self.qos.rw_mbytes_per_sec,
                "r_mbytes_per_sec": self.qos.r_mbytes_per_sec,
                "w_mbytes_per_sec": self.qos.w_mbytes_per_sec
            },
            "claimed": claimed,
            "zoned": false,
            "supported_io_types": {
                "read": true,
                "write": true,
                "unmap": unmap,
                "flush": flush,
                "reset": true,
                "nvme_admin": false,
                "nvme_io": false,
                "nvme_io_md": false,
                "write_zeroes": true,
                "zcopy": false,
                "get_zone_info": false,
                "zone_management": false,
                "zone_append": false,
                "compare": malloc,
                "compare_and_write": false,
                "abort": true,
                "seek_hole": false,
                "seek_data": false,
                "copy": malloc,
                "nvme_iov_md": false
            },
            "driver_specific": {}
        });
        if claimed {
            if let Some(o) = v.as_object_mut() {
                o.insert("claim_type".into(), json!("exclusive_write"));
            }
        }
        if let (Some(o), BdevKind::Aio { filename, .. } | BdevKind::Uring { filename, .. }) =
            (v.as_object_mut(), &self.kind)
        {
            let key = if matches!(self.kind, BdevKind::Aio { .. }) {
                "aio"
            } else {
                "uring"
            };
            o.insert(
                "driver_specific".into(),
                json!({ key: {"filename": filename} }),
            );
        }
        v
    }

    /// The config entry that recreates this bdev (`framework_get_config bdev`).
    pub fn config_entry(&self) -> Value {
        let uuid = self.uuid.hyphenated().to_string();
        match &self.kind {
            BdevKind::Null => json!({"method": "bdev_null_create", "params": {
                "name": self.name, "num_blocks": self.num_blocks, "block_size": self.block_size,
                "physical_block_size": self.physical_block_size, "md_size": 0, "dif_type": 0,
                "dif_is_head_of_md": false, "dif_pi_format": 0, "uuid": uuid,
                "preferred_write_granularity": 0, "preferred_write_alignment": 0,
                "optimal_write_size": 0, "preferred_unmap_granularity": 0,
                "preferred_unmap_alignment": 0
            }}),
            BdevKind::Malloc {
                optimal_io_boundary,
            } => json!({"method": "bdev_malloc_create", "params": {
                "name": self.name, "num_blocks": self.num_blocks, "block_size": self.block_size,
                "physical_block_size": self.physical_block_size, "uuid": uuid,
                "optimal_io_boundary": optimal_io_boundary, "md_size": 0, "md_interleave": false,
                "dif_type": 0, "dif_is_head_of_md": false, "dif_pi_format": 0
            }}),
            BdevKind::Aio {
                filename,
                block_size_param,
                readonly,
                fallocate,
            } => {
                let mut p = json!({"name": self.name, "filename": filename,
                    "readonly": readonly, "fallocate": fallocate, "uuid": uuid});
                append_some(&mut p, "block_size", block_size_param);
                json!({"method": "bdev_aio_create", "params": p})
            }
            BdevKind::Uring {
                filename,
                block_size_param,
            } => {
                let mut p = json!({"name": self.name, "filename": filename, "uuid": uuid});
                append_some(&mut p, "block_size", block_size_param);
                json!({"method": "bdev_uring_create", "params": p})
            }
            BdevKind::Nbd {
                socket_path,
                address,
                export_name,
                block_size_param,
                timeout_ms,
            } => {
                let mut p = json!({"name": self.name, "export_name": export_name, "uuid": uuid});
                append_some(&mut p, "socket_path", socket_path);
                append_some(&mut p, "address", address);
                append_some(&mut p, "block_size", block_size_param);
                append_some(&mut p, "timeout_ms", timeout_ms);
                json!({"method": "bdev_nbd_client_create", "params": p})
            }
        }
    }

    /// The `bdev_set_qos_limit` entry, if any limit is set.
    pub fn qos_entry(&self) -> Option<Value> {
        if self.qos.is_unlimited() {
            return None;
        }
        Some(json!({"method": "bdev_set_qos_limit", "params": {
            "name": self.name,
            "rw_ios_per_sec": self.qos.rw_ios_per_sec,
            "rw_mbytes_per_sec": self.qos.rw_mbytes_per_sec,
            "r_mbytes_per_sec": self.qos.r_mbytes_per_sec,
            "w_mbytes_per_sec": self.qos.w_mbytes_per_sec
        }}))
    }
}

/// `bdev_null_create` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullCreate {
    name: String,
    block_size: u32,
    num_blocks: u64,
    uuid: Option<String>,
    physical_block_size: Option<u32>,
    md_size: Option<u32>,
    dif_type: Option<u32>,
    dif_pi_format: Option<u32>,
    dif_is_head_of_md: Option<bool>,
    preferred_write_granularity: Option<u32>,
    preferred_write_alignment: Option<u32>,
    optimal_write_size: Option<u32>,
    preferred_unmap_granularity: Option<u32>,
    preferred_unmap_alignment: Option<u32>,
}

/// `bdev_malloc_create` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MallocCreate {
    name: Option<String>,
    block_size: u32,
    num_blocks: u64,
    uuid: Option<String>,
    optimal_io_boundary: Option<u32>,
    md_size: Option<u32>,
    md_interleave: Option<bool>,
    dif_type: Option<u32>,
    dif_is_head_of_md: Option<bool>,
    physical_block_size: Option<u32>,
    dif_pi_format: Option<u32>,
    numa_id: Option<i32>,
}

/// `bdev_aio_create` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AioCreate {
    name: String,
    filename: String,
    block_size: Option<u32>,
    readonly: Option<bool>,
    fallocate: Option<bool>,
    uuid: Option<String>,
    nowait: Option<bool>,
}

/// `bdev_uring_create` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UringCreate {
    name: String,
    filename: String,
    block_size: Option<u32>,
    uuid: Option<String>,
}

/// `bdev_nbd_client_create` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NbdCreate {
    name: String,
    socket_path: Option<String>,
    address: Option<String>,
    #[serde(default)]
    export_name: String,
    block_size: Option<u32>,
    timeout_ms: Option<u64>,
    uuid: Option<String>,
}

impl NbdCreate {
    /// Validate; the geometry comes from the server when the data plane connects.
    pub fn build(self) -> Result<Bdev, RpcError> {
        match (&self.socket_path, &self.address) {
            (Some(s), None) if !s.is_empty() => {}
            (None, Some(a))
                if a.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) => {}
            (None, Some(a)) => return Err(bad(format!("address: '{a}' is not host:port"))),
            _ => return Err(bad("socket_path/address: exactly one is required")),
        }
        let block_size = self.block_size.unwrap_or(512);
        check_block_size("block_size", block_size)?;
        if self.timeout_ms == Some(0) {
            return Err(bad("timeout_ms: must be greater than 0"));
        }
        if self.export_name.len() > 4096 {
            return Err(bad("export_name: longer than 4096 bytes"));
        }
        Ok(Bdev {
            uuid: parse_uuid("uuid", self.uuid.as_deref())?,
            name: self.name,
            block_size,
            physical_block_size: block_size,
            num_blocks: 0,
            kind: BdevKind::Nbd {
                socket_path: self.socket_path,
                address: self.address,
                export_name: self.export_name,
                block_size_param: self.block_size,
                timeout_ms: self.timeout_ms,
            },
            qos: QosLimits::default(),
        })
    }
}

/// `bdev_*_delete` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delete {
    /// Bdev name.
    pub name: String,
}

/// `bdev_set_qos_limit` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosParams {
    /// Bdev name.
    pub name: String,
    rw_ios_per_sec: Option<u64>,
    rw_mbytes_per_sec: Option<u64>,
    r_mbytes_per_sec: Option<u64>,
    w_mbytes_per_sec: Option<u64>,
}

fn bad(msg: impl Into<String>) -> RpcError {
    RpcError::invalid_params(msg)
}

/// Parse an optional UUID param (or generate one).
pub fn parse_uuid(field: &str, s: Option<&str>) -> Result<Uuid, RpcError> {
    match s {
        None => Ok(Uuid::new_v4()),
        Some(s) => Uuid::parse_str(s).map_err(|_| bad(format!("{field}: invalid UUID '{s}'"))),
    }
}

fn check_block_size(field: &str, bs: u32) -> Result<(), RpcError> {
    if bs < 512 || bs % 512 != 0 || bs > 65536 {
        return Err(bad(format!(
            "{field}: block size {bs} must be a multiple of 512 in 512..=65536"
        )));
    }
    Ok(())
}

/// Checks shared by null and malloc bdevs: the block size, a non-zero size, and no
/// metadata or protection information (`md_size`, `dif_type`, `dif_pi_format`).
fn check_format(block_size: u32, num_blocks: u64, md: [Option<u32>; 3]) -> Result<(), RpcError> {
    check_block_size("block_size", block_size)?;
    if num_blocks == 0 {
        return Err(bad("num_blocks: must be greater than 0"));
    }
    for (field, value) in ["md_size", "dif_type", "dif_pi_format"].into_iter().zip(md) {
        check_unsupported(field, value)?;
    }
    Ok(())
}

fn check_unsupported(field: &str, value: Option<u32>) -> Result<(), RpcError> {
    match value {
        None | Some(0) => Ok(()),
        Some(v) => Err(bad(format!("{field}: {v} not supported (only 0)"))),
    }
}

fn check_physical(block_size: u32, pbs: Option<u32>) -> Result<u32, RpcError> {
    match pbs {
        None | Some(0) => Ok(block_size),
        Some(p) if p >= block_size && p % block_size == 0 && p.is_power_of_two() => Ok(p),
        Some(p) => Err(bad(format!(
            "physical_block_size: {p} must be a power-of-two multiple of block_size {block_size}"
        ))),
    }
}

/// Bytes of memory the kernel says are available (`MemAvailable`).
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

impl NullCreate {
    /// Validate and build.
    pub fn build(self) -> Result<Bdev, RpcError> {
        check_format(
            self.block_size,
            self.num_blocks,
            [self.md_size, self.dif_type, self.dif_pi_format],
        )?;
        if self.dif_is_head_of_md == Some(true) {
            return Err(bad("dif_is_head_of_md: not supported"));
        }
        for (f, v) in [
            (
                "preferred_write_granularity",
                self.preferred_write_granularity,
            ),
            ("preferred_write_alignment", self.preferred_write_alignment),
            ("optimal_write_size", self.optimal_write_size),
            (
                "preferred_unmap_granularity",
                self.preferred_unmap_granularity,
            ),
            ("preferred_unmap_alignment", self.preferred_unmap_alignment),
        ] {
            check_unsupported(f, v)?;
        }
        let physical_block_size = check_physical(self.block_size, self.physical_block_size)?;
        self.num_blocks
            .checked_mul(u64::from(self.block_size))
            .ok_or_else(|| bad("num_blocks: size overflows"))?;
        Ok(Bdev {
            uuid: parse_uuid("uuid", self.uuid.as_deref())?,
            name: self.name,
            block_size: self.block_size,
            physical_block_size,
            num_blocks: self.num_blocks,
            kind: BdevKind::Null,
            qos: QosLimits::default(),
        })
    }
}

impl MallocCreate {
    /// Validate and build; `auto_name` is used when no name is given.
    pub fn build(self, auto_name: String) -> Result<Bdev, RpcError> {
        check_format(
            self.block_size,
            self.num_blocks,
            [self.md_size, self.dif_type, self.dif_pi_format],
        )?;
        if self.md_interleave == Some(true) || self.dif_is_head_of_md == Some(true) {
            return Err(bad(
                "md_interleave/dif_is_head_of_md: metadata not supported",
            ));
        }
        if let Some(n) = self.numa_id {
            if n < -1 {
                return Err(bad(format!("numa_id: invalid value {n}")));
            }
        }
        let physical_block_size = check_physical(self.block_size, self.physical_block_size)?;
        let bytes = self
            .num_blocks
            .checked_mul(u64::from(self.block_size))
            .ok_or_else(|| bad("num_blocks: size overflows"))?;
        if let Some(avail) = mem_available() {
            if bytes > avail {
                return Err(bad(format!(
                    "num_blocks: malloc bdev of {bytes} bytes exceeds available memory ({avail} bytes)"
                )));
            }
        }
        let name = match self.name {
            Some(n) if !n.is_empty() => n,
            _ => auto_name,
        };
        Ok(Bdev {
            uuid: parse_uuid("uuid", self.uuid.as_deref())?,
            name,
            block_size: self.block_size,
            physical_block_size,
            num_blocks: self.num_blocks,
            kind: BdevKind::Malloc {
                optimal_io_boundary: self.optimal_io_boundary.unwrap_or(0),
            },
            qos: QosLimits::default(),
        })
    }
}

/// Size in bytes of a regular file or block device, checking it can be opened as asked.
fn backing_size(filename: &str, readonly: bool) -> Result<u64, RpcError> {
    use std::os::unix::fs::FileTypeExt;
    if filename.is_empty() {
        return Err(bad("filename: must not be empty"));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(filename)
        .map_err(|e| bad(format!("filename: cannot open '{filename}': {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| bad(format!("filename: cannot stat '{filename}': {e}")))?;
    if meta.file_type().is_block_device() {
        use std::io::{Seek, SeekFrom};
        let mut f = file;
        return f
            .seek(SeekFrom::End(0))
            .map_err(|e| bad(format!("filename: cannot size '{filename}': {e}")));
    }
    if !meta.is_file() {
        return Err(bad(format!(
            "filename: '{filename}' is not a regular file or block device"
        )));
    }
    Ok(meta.len())
}

fn file_geometry(filename: &str, bs: Option<u32>, readonly: bool) -> Result<(u32, u64), RpcError> {
    let size = backing_size(filename, readonly)?;
    let block_size = bs.filter(|b| *b != 0).unwrap_or(512);
    check_block_size("block_size", block_size)?;
    let num_blocks = size / u64::from(block_size);
    if num_blocks == 0 {
        return Err(bad(format!(
            "filename: '{filename}' is smaller than one block ({block_size} bytes)"
        )));
    }
    Ok((block_size, num_blocks))
}

/// A file-backed bdev (`kind` aio or uring): geometry from the file, or `block_size` if
/// given and not 0.
fn file_bdev(
    name: String,
    uuid: Option<String>,
    block_size: Option<u32>,
    readonly: bool,
    kind: BdevKind,
) -> Result<Bdev, RpcError> {
    let (BdevKind::Aio { filename, .. } | BdevKind::Uring { filename, .. }) = &kind else {
        return Err(RpcError::internal("not a file bdev"));
    };
    let (block_size, num_blocks) = file_geometry(filename, block_size, readonly)?;
    Ok(Bdev {
        uuid: parse_uuid("uuid", uuid.as_deref())?,
        name,
        block_size,
        physical_block_size: block_size,
        num_blocks,
        kind,
        qos: QosLimits::default(),
    })
}

impl AioCreate {
    /// Validate and build.
    pub fn build(self) -> Result<Bdev, RpcError> {
        let readonly = self.readonly.unwrap_or(false);
        let _ = self.nowait;
        let kind = BdevKind::Aio {
            filename: self.filename,
            // 0 means "from the file": saved as absent.
            block_size_param: self.block_size.filter(|b| *b != 0),
            readonly,
            fallocate: self.fallocate.unwrap_or(false),
        };
        file_bdev(self.name, self.uuid, self.block_size, readonly, kind)
    }
}

impl UringCreate {
    /// Validate and build.
    pub fn build(self) -> Result<Bdev, RpcError> {
        let kind = BdevKind::Uring {
            filename: self.filename,
            block_size_param: self.block_size.filter(|b| *b != 0),
        };
        file_bdev(self.name, self.uuid, self.block_size, false, kind)
    }
}

impl QosParams {
    /// Apply to existing limits (unspecified limits are kept, as in SPDK).
    pub fn apply(&self, old: QosLimits) -> Result<QosLimits, RpcError> {
        if self.rw_ios_per_sec.is_none()
            && self.rw_mbytes_per_sec.is_none()
            && self.r_mbytes_per_sec.is_none()
            && self.w_mbytes_per_sec.is_none()
        {
            return Err(bad("Invalid parameters: no rate limit specified"));
        }
        let mut new = old;
        if let Some(v) = self.rw_ios_per_sec {
            if v % 1000 != 0 {
                return Err(bad(format!(
                    "rw_ios_per_sec: {v} is not a multiple of 1000"
                )));
            }
            new.rw_ios_per_sec = v;
        }
        if let Some(v) = self.rw_mbytes_per_sec {
            new.rw_mbytes_per_sec = v;
        }
        if let Some(v) = self.r_mbytes_per_sec {
            new.r_mbytes_per_sec = v;
        }
        if let Some(v) = self.w_mbytes_per_sec {
            new.w_mbytes_per_sec = v;
        }
        Ok(new)
    }
}

/// Append `key: value` to the params object `p` when `value` is set (optional params are
/// omitted from a saved config, as rpc.py omits them).
fn append_some(p: &mut Value, key: &str, value: &Option<impl serde::Serialize>) {
    if let (Some(v), Some(o)) = (value, p.as_object_mut()) {
        o.insert(key.to_owned(), json!(v));
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::decode;

    #[test]
    fn null_create_validates() {
        let ok: NullCreate =
            decode(Some(&json!({"name":"N","block_size":512,"num_blocks":8}))).unwrap();
        let b = ok.build().unwrap();
        assert_eq!(b.physical_block_size, 512);
        for bad in [
            json!({"name":"N","block_size":100,"num_blocks":8}),
            json!({"name":"N","block_size":512,"num_blocks":0}),
            json!({"name":"N","block_size":512,"num_blocks":8,"md_size":8}),
            json!({"name":"N","block_size":512,"num_blocks":8,"uuid":"zz"}),
            json!({"name":"N","block_size":4096,"num_blocks":u64::MAX}),
        ] {
            let p: NullCreate = decode(Some(&bad)).unwrap();
            assert!(p.build().is_err(), "{bad}");
        }
    }

    #[test]
    fn malloc_beyond_memory_fails() {
        let p: MallocCreate = decode(Some(
            &json!({"name":"M","block_size":4096,"num_blocks":1u64<<40}),
        ))
        .unwrap();
        let e = p.build("Malloc0".into()).unwrap_err();
        assert!(e.message.contains("available memory"), "{}", e.message);
    }

    #[test]
    fn config_entry_roundtrips_through_decoder() {
        let p: NullCreate =
            decode(Some(&json!({"name":"N","block_size":512,"num_blocks":8}))).unwrap();
        let b = p.build().unwrap();
        let entry = b.config_entry();
        let p2: NullCreate = decode(Some(&entry["params"])).unwrap();
        assert_eq!(p2.build().unwrap(), b);
    }

    #[test]
    fn aio_requires_existing_file() {
        let p: AioCreate = decode(Some(&json!({"name":"A","filename":"/nonexistent/x"}))).unwrap();
        assert!(p.build().is_err());
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let p: AioCreate = decode(Some(
            &json!({"name":"A","filename":f.path().to_str().unwrap()}),
        ))
        .unwrap();
        assert_eq!(p.build().unwrap().num_blocks, 2048);
    }

    #[test]
    fn qos_requires_a_limit_and_ios_multiple() {
        let p: QosParams = decode(Some(&json!({"name":"N"}))).unwrap();
        assert!(p.apply(QosLimits::default()).is_err());
        let p: QosParams = decode(Some(&json!({"name":"N","rw_ios_per_sec":1500}))).unwrap();
        assert!(p.apply(QosLimits::default()).is_err());
        let p: QosParams = decode(Some(&json!({"name":"N","rw_ios_per_sec":2000}))).unwrap();
        assert_eq!(p.apply(QosLimits::default()).unwrap().rw_ios_per_sec, 2000);
    }
}
