//! Constructors from SPDK JSON-RPC parameters and JSON builders for `bdev_get_bdevs` /
//! `bdev_get_iostat`. The daemon owns the registry (names, uniqueness); this module turns
//! params into bdevs with precise errors.
//!
//! Every constructor returns the bdev wrapped in [`Layered`] (stats + QoS).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error_inject::{ErrorInjectBdev, InjectOpType};
use crate::file::{FileBdev, FileEngine, FileOptions};
use crate::layered::Layered;
use crate::malloc::MallocBdev;
use crate::nbd::{NbdAddr, NbdBdev, NbdOptions};
use crate::null::NullBdev;
use crate::qos::QosSettings;
use crate::{Bdev, BdevError, IoError};

fn parse_uuid(u: Option<&str>) -> Result<Option<uuid::Uuid>, BdevError> {
    u.map(|s| {
        uuid::Uuid::parse_str(s).map_err(|e| BdevError::InvalidParam(format!("uuid '{s}': {e}")))
    })
    .transpose()
}

fn no_metadata(md_size: Option<u32>, dif_type: Option<u32>) -> Result<(), BdevError> {
    if md_size.unwrap_or(0) != 0 || dif_type.unwrap_or(0) != 0 {
        return Err(BdevError::InvalidParam(
            "metadata / DIF (md_size, dif_type) is not supported".into(),
        ));
    }
    Ok(())
}

/// `bdev_null_create` params.
#[derive(Debug, Clone, Deserialize)]
pub struct NullCreateParams {
    /// Bdev name (required).
    pub name: String,
    /// Block size (required).
    pub block_size: u32,
    /// Number of blocks (required).
    pub num_blocks: u64,
    /// UUID.
    #[serde(default)]
    pub uuid: Option<String>,
    /// Accepted; must equal `block_size` or be absent/0.
    #[serde(default)]
    pub physical_block_size: Option<u32>,
    /// Must be 0 / absent.
    #[serde(default)]
    pub md_size: Option<u32>,
    /// Must be 0 / absent.
    #[serde(default)]
    pub dif_type: Option<u32>,
}

/// `bdev_null_create`.
pub fn bdev_null_create(p: &NullCreateParams) -> Result<Arc<dyn Bdev>, BdevError> {
    no_metadata(p.md_size, p.dif_type)?;
    if let Some(pbs) = p.physical_block_size.filter(|v| *v != 0) {
        if pbs < p.block_size || !pbs.is_power_of_two() {
            return Err(BdevError::InvalidParam(format!(
                "physical_block_size {pbs} must be a power of two >= block_size"
            )));
        }
    }
    let b = NullBdev::new(
        &p.name,
        p.block_size,
        p.num_blocks,
        parse_uuid(p.uuid.as_deref())?,
    )?;
    Ok(Layered::wrap(Arc::new(b)))
}

/// `bdev_malloc_create` params.
#[derive(Debug, Clone, Deserialize)]
pub struct MallocCreateParams {
    /// Name; when absent the caller's auto name ("MallocN") is used.
    #[serde(default)]
    pub name: Option<String>,
    /// Block size (required, multiple of 512).
    pub block_size: u32,
    /// Number of blocks (required).
    pub num_blocks: u64,
    /// UUID.
    #[serde(default)]
    pub uuid: Option<String>,
    /// Must be 0 / absent.
    #[serde(default)]
    pub md_size: Option<u32>,
    /// Must be 0 / absent.
    #[serde(default)]
    pub dif_type: Option<u32>,
}

/// `bdev_malloc_create`; `auto_name` is called only when `name` is absent.
pub fn bdev_malloc_create(
    p: &MallocCreateParams,
    auto_name: impl FnOnce() -> String,
) -> Result<Arc<dyn Bdev>, BdevError> {
    no_metadata(p.md_size, p.dif_type)?;
    let name = p.name.clone().unwrap_or_else(auto_name);
    let b = MallocBdev::new(
        &name,
        p.block_size,
        p.num_blocks,
        parse_uuid(p.uuid.as_deref())?,
    )?;
    Ok(Layered::wrap(Arc::new(b)))
}

/// `bdev_aio_create` params.
#[derive(Debug, Clone, Deserialize)]
pub struct AioCreateParams {
    /// Bdev name (required).
    pub name: String,
    /// File or block device (required).
    pub filename: String,
    /// Block size (0/absent: auto).
    #[serde(default)]
    pub block_size: Option<u32>,
    /// Open read-only.
    #[serde(default)]
    pub readonly: bool,
    /// Accepted (unmap/write zeroes always use fallocate).
    #[serde(default)]
    pub fallocate: bool,
    /// UUID.
    #[serde(default)]
    pub uuid: Option<String>,
    /// Accepted, ignored.
    #[serde(default)]
    pub nowait: bool,
}

/// `bdev_uring_create` params.
#[derive(Debug, Clone, Deserialize)]
pub struct UringCreateParams {
    /// Bdev name (required).
    pub name: String,
    /// File or block device (required).
    pub filename: String,
    /// Block size (0/absent: auto).
    #[serde(default)]
    pub block_size: Option<u32>,
    /// UUID.
    #[serde(default)]
    pub uuid: Option<String>,
}

fn file_create(
    name: &str,
    filename: &str,
    block_size: Option<u32>,
    readonly: bool,
    uuid: Option<&str>,
    product: &str,
    engine: FileEngine,
) -> Result<Arc<dyn Bdev>, BdevError> {
    let mut o = FileOptions::new(name, filename);
    o.block_size = block_size.filter(|b| *b != 0);
    o.read_only = readonly;
    o.uuid = parse_uuid(uuid)?;
    o.product_name = product.into();
    o.engine = engine;
    Ok(Layered::wrap(Arc::new(FileBdev::open(&o)?)))
}

/// `bdev_aio_create` (served by the io_uring engine, thread pool as fallback).
pub fn bdev_aio_create(p: &AioCreateParams) -> Result<Arc<dyn Bdev>, BdevError> {
    file_create(
        &p.name,
        &p.filename,
        p.block_size,
        p.readonly,
        p.uuid.as_deref(),
        "AIO disk",
        FileEngine::Auto,
    )
}

/// `bdev_uring_create`.
pub fn bdev_uring_create(p: &UringCreateParams) -> Result<Arc<dyn Bdev>, BdevError> {
    file_create(
        &p.name,
        &p.filename,
        p.block_size,
        false,
        p.uuid.as_deref(),
        "URING disk",
        FileEngine::Auto,
    )
}

/// `bdev_nbd_client_create` params (Sluice-specific method; SPDK has no NBD client bdev).
#[derive(Debug, Clone, Deserialize)]
pub struct NbdCreateParams {
    /// Bdev name (required).
    pub name: String,
    /// Unix socket path (either this or `address`).
    #[serde(default)]
    pub socket_path: Option<String>,
    /// TCP `host:port`.
    #[serde(default)]
    pub address: Option<String>,
    /// Export name (default "").
    #[serde(default)]
    pub export_name: String,
    /// Block size (default 512).
    #[serde(default)]
    pub block_size: Option<u32>,
    /// I/O timeout in ms (default 10000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// UUID.
    #[serde(default)]
    pub uuid: Option<String>,
}

/// Create an NBD client bdev (connects now; fails if the server is unreachable).
pub fn bdev_nbd_client_create(p: &NbdCreateParams) -> Result<Arc<dyn Bdev>, BdevError> {
    let addr = match (&p.socket_path, &p.address) {
        (Some(s), None) => NbdAddr::Unix(PathBuf::from(s)),
        (None, Some(a)) => NbdAddr::Tcp(a.clone()),
        _ => {
            return Err(BdevError::InvalidParam(
                "exactly one of socket_path or address is required".into(),
            ))
        }
    };
    let mut o = NbdOptions::new(&p.name, addr, &p.export_name);
    if let Some(bs) = p.block_size {
        o.block_size = bs;
    }
    if let Some(t) = p.timeout_ms {
        o.io_timeout = Duration::from_millis(t);
    }
    o.uuid = parse_uuid(p.uuid.as_deref())?;
    Ok(Layered::wrap(Arc::new(NbdBdev::connect(o)?)))
}

/// `bdev_error_create`: returns the new bdev (`EE_<base>`) and the injection handle.
pub fn bdev_error_create(base: Arc<dyn Bdev>) -> (Arc<dyn Bdev>, Arc<ErrorInjectBdev>) {
    let name = format!("EE_{}", base.info().name);
    let e = Arc::new(ErrorInjectBdev::new(&name, base));
    let wrapped = Layered::wrap(Arc::clone(&e) as Arc<dyn Bdev>);
    (wrapped, e)
}

/// `bdev_error_inject_error` params.
#[derive(Debug, Clone, Deserialize)]
pub struct InjectErrorParams {
    /// Error bdev name.
    pub name: String,
    /// "all", "read", "write", "flush", "unmap", "write_zeroes", "compare".
    pub io_type: String,
    /// "failure" (media error) or "nomem" (internal); others are rejected.
    pub error_type: String,
    /// How many requests to fail (default 1).
    #[serde(default)]
    pub num: Option<u64>,
}

/// Apply `bdev_error_inject_error` to an error bdev.
pub fn bdev_error_inject(e: &ErrorInjectBdev, p: &InjectErrorParams) -> Result<(), BdevError> {
    let ops = InjectOpType::parse(&p.io_type)
        .ok_or_else(|| BdevError::InvalidParam(format!("io_type '{}'", p.io_type)))?;
    let error = match (p.error_type.as_str(), ops) {
        ("failure", InjectOpType::Read | InjectOpType::Compare) => IoError::MediaRead,
        ("failure", _) => IoError::MediaWrite,
        ("nomem", _) => IoError::Internal,
        (other, _) => {
            return Err(BdevError::InvalidParam(format!(
                "error_type '{other}' (supported: failure, nomem)"
            )))
        }
    };
    e.inject(ops, error, p.num.unwrap_or(1));
    Ok(())
}

/// `bdev_set_qos_limit` params.
#[derive(Debug, Clone, Deserialize)]
pub struct SetQosLimitParams {
    /// Bdev name.
    pub name: String,
    /// Limits (absent: unchanged, 0: unlimited).
    #[serde(flatten)]
    pub limits: QosSettings,
}

/// Apply `bdev_set_qos_limit` to a bdev.
pub fn bdev_set_qos_limit(b: &dyn Bdev, s: &QosSettings) -> Result<(), BdevError> {
    let q = b
        .qos()
        .ok_or_else(|| BdevError::InvalidParam("bdev does not support QoS".into()))?;
    if s == &QosSettings::default() {
        return Err(BdevError::InvalidParam("no rate limit specified".into()));
    }
    q.set(s);
    Ok(())
}

/// One element of `bdev_get_bdevs`.
pub fn bdev_json(b: &dyn Bdev) -> Value {
    let i = b.info();
    let c = i.caps;
    let limits = b.qos().map_or_else(
        || json!({"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0}),
        |q| q.assigned_rate_limits_json(),
    );
    json!({
        "name": i.name,
        "aliases": [],
        "product_name": i.product_name,
        "block_size": i.block_size,
        "num_blocks": i.num_blocks,
        "uuid": i.uuid.to_string(),
        "preferred_write_alignment": 0,
        "preferred_write_granularity": 1,
        "optimal_write_size": 1,
        "preferred_unmap_alignment": 0,
        "preferred_unmap_granularity": 1,
        "assigned_rate_limits": limits,
        "claimed": false,
        "zoned": false,
        "supported_io_types": {
            "read": c.read,
            "write": c.write,
            "unmap": c.unmap,
            "flush": c.flush,
            "reset": true,
            "nvme_admin": false,
            "nvme_io": false,
            "nvme_io_md": false,
            "write_zeroes": c.write_zeroes,
            "zcopy": false,
            "get_zone_info": false,
            "zone_management": false,
            "zone_append": false,
            "compare": c.compare,
            "compare_and_write": false,
            "abort": false,
            "seek_hole": false,
            "seek_data": false,
            "copy": false,
            "nvme_iov_md": false,
        },
        "driver_specific": b.driver_specific(),
    })
}

/// `bdev_get_iostat` result for `bdevs` (ticks are nanoseconds: `tick_rate` 1e9).
pub fn iostat_json(bdevs: &[Arc<dyn Bdev>]) -> Value {
    let ticks = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let list: Vec<Value> = bdevs
        .iter()
        .map(|b| {
            let snap = b.stats().map(|s| s.snapshot()).unwrap_or_default();
            snap.to_spdk_json(&b.info().name)
        })
        .collect();
    json!({"tick_rate": 1_000_000_000u64, "ticks": ticks, "bdevs": list})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_from_spdk_params() {
        let p: NullCreateParams = serde_json::from_value(
            json!({"name": "Null0", "block_size": 4096, "num_blocks": 256, "uuid": "6e1a5ad4-7a3f-4f2b-9d0f-1b2c3d4e5f60"}),
        )
        .unwrap();
        let b = bdev_null_create(&p).unwrap();
        let j = bdev_json(b.as_ref());
        assert_eq!(j["name"], "Null0");
        assert_eq!(j["block_size"], 4096);
        assert_eq!(j["uuid"], "6e1a5ad4-7a3f-4f2b-9d0f-1b2c3d4e5f60");
        assert_eq!(j["supported_io_types"]["write_zeroes"], true);
        let bad: NullCreateParams = serde_json::from_value(
            json!({"name": "N", "block_size": 4096, "num_blocks": 1, "md_size": 8}),
        )
        .unwrap();
        assert!(bdev_null_create(&bad).is_err());
        let bad: NullCreateParams = serde_json::from_value(
            json!({"name": "N", "block_size": 512, "num_blocks": 1, "uuid": "zz"}),
        )
        .unwrap();
        assert!(bdev_null_create(&bad)
            .unwrap_err()
            .to_string()
            .contains("uuid"));
    }

    #[test]
    fn malloc_auto_name_and_errors() {
        let p: MallocCreateParams =
            serde_json::from_value(json!({"block_size": 512, "num_blocks": 128})).unwrap();
        let b = bdev_malloc_create(&p, || "Malloc0".into()).unwrap();
        assert_eq!(b.info().name, "Malloc0");
        assert_eq!(bdev_json(b.as_ref())["product_name"], "Malloc disk");
        let p: MallocCreateParams =
            serde_json::from_value(json!({"block_size": 500, "num_blocks": 128})).unwrap();
        assert!(bdev_malloc_create(&p, || "M".into()).is_err());
    }

    #[test]
    fn aio_missing_file_is_clear() {
        let p: AioCreateParams =
            serde_json::from_value(json!({"name": "A", "filename": "/no/such/file"})).unwrap();
        let e = bdev_aio_create(&p).unwrap_err().to_string();
        assert!(e.contains("/no/such/file"), "{e}");
    }

    #[test]
    fn nbd_params_need_one_address() {
        let p: NbdCreateParams = serde_json::from_value(json!({"name": "n"})).unwrap();
        assert!(bdev_nbd_client_create(&p).is_err());
    }

    #[test]
    fn qos_and_iostat_shapes() {
        let b = crate::null_bdev("N", 1 << 20, 512);
        let p: SetQosLimitParams = serde_json::from_value(
            json!({"name": "N", "rw_ios_per_sec": 20000, "r_mbytes_per_sec": 10}),
        )
        .unwrap();
        bdev_set_qos_limit(b.as_ref(), &p.limits).unwrap();
        let j = bdev_json(b.as_ref());
        assert_eq!(j["assigned_rate_limits"]["rw_ios_per_sec"], 20000);
        assert_eq!(j["assigned_rate_limits"]["r_mbytes_per_sec"], 10);
        assert!(bdev_set_qos_limit(b.as_ref(), &QosSettings::default()).is_err());
        let s = iostat_json(&[b]);
        assert_eq!(s["tick_rate"], 1_000_000_000u64);
        assert_eq!(s["bdevs"][0]["name"], "N");
        assert_eq!(s["bdevs"][0]["num_read_ops"], 0);
    }

    #[test]
    fn inject_params() {
        let (b, e) = bdev_error_create(crate::null_bdev("N", 1 << 20, 512));
        assert_eq!(b.info().name, "EE_N");
        let p: InjectErrorParams = serde_json::from_value(
            json!({"name": "EE_N", "io_type": "read", "error_type": "failure", "num": 3}),
        )
        .unwrap();
        bdev_error_inject(&e, &p).unwrap();
        assert_eq!(e.pending(), 3);
        let p: InjectErrorParams = serde_json::from_value(
            json!({"name": "EE_N", "io_type": "read", "error_type": "corrupt_data"}),
        )
        .unwrap();
        assert!(bdev_error_inject(&e, &p).is_err());
    }
}
