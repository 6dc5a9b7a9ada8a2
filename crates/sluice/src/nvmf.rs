//! NVMe-oF (VFIOUSER) objects of the target: transport options, subsystems, namespaces,
//! listeners, with their RPC params and JSON forms.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::jsonrpc::RpcError;

/// The only transport type.
pub const VFIOUSER: &str = "VFIOUSER";
/// The discovery subsystem NQN, always listed first.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Largest controller id (NVMF_MAX_CNTLID).
pub const MAX_CNTLID: u16 = 0xFFEF;
/// Name of the only target (SPDK's default `tgt_name`).
pub const TGT_NAME: &str = "nvmf_tgt";
/// Maximum `sun_path` length including the NUL.
pub const SUN_PATH_MAX: usize = 108;

fn bad(msg: impl Into<String>) -> RpcError {
    RpcError::invalid_params(msg)
}

/// Check an optional `tgt_name`.
pub fn check_tgt(tgt_name: Option<&str>) -> Result<(), RpcError> {
    match tgt_name {
        None => Ok(()),
        Some(TGT_NAME) => Ok(()),
        Some(other) => Err(bad(format!("tgt_name: unable to find target '{other}'"))),
    }
}

/// Default `dma_timeout_ms`: the server's default (`vfu_server::session::DMA_TIMEOUT`).
pub const DEFAULT_DMA_TIMEOUT_MS: u32 = 2_000;
/// Largest `dma_timeout_ms`: a poll thread waiting for a DMA reply stalls every controller
/// it owns, so a minute is already far past any useful value.
pub const MAX_DMA_TIMEOUT_MS: u32 = 60_000;

/// VFIOUSER transport options. Every field is written back by `save_config` (lossless).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct TransportOpts {
    /// Always VFIOUSER (normalized).
    pub trtype: String,
    /// Max queue entries (CAP.MQES + 1).
    pub max_queue_depth: u16,
    /// Max I/O queue pairs per controller.
    pub max_io_qpairs_per_ctrlr: u16,
    /// Unused by vfio-user (kept for shape).
    pub in_capsule_data_size: u32,
    /// Max data transfer per command (MDTS).
    pub max_io_size: u32,
    /// Deprecated, unused.
    pub io_unit_size: u32,
    /// Max admin queue entries.
    pub max_aq_depth: u32,
    /// Deprecated, unused.
    pub num_shared_buffers: u32,
    /// Deprecated, unused.
    pub buf_cache_size: u32,
    /// Unused.
    pub iobuf_small_cache_size: u32,
    /// Unused.
    pub iobuf_large_cache_size: u32,
    /// Unused.
    pub dif_insert_or_strip: bool,
    /// Unused.
    pub zcopy: bool,
    /// Abort timeout.
    pub abort_timeout_sec: u32,
    /// Unused.
    pub ack_timeout: u32,
    /// Unused.
    pub data_wr_pool_size: u32,
    /// Disable passthrough admin commands.
    pub disable_command_passthru: bool,
    /// Keep-alive granularity (100 ms units).
    pub kas: u16,
    /// Minimum KATO (ms).
    pub min_kato: u32,
    /// Accept poll period (µs); informational (endpoints block in accept).
    pub acceptor_poll_rate: u32,
    /// Trap BAR0 doorbells instead of mapping them.
    pub disable_mappable_bar0: bool,
    /// Interrupt on every completion batch.
    pub disable_adaptive_irq: bool,
    /// Do not advertise Doorbell Buffer Config.
    pub disable_shadow_doorbells: bool,
    /// Spread SQs in interrupt mode.
    pub enable_intr_mode_sq_spreading: bool,
    /// Sluice: refuse (EPERM) a DMA_MAP whose file cannot be sealed against shrinking
    /// (`vfu_server::ServerOptions::require_sealed_dma`).
    pub require_sealed_dma: bool,
    /// Sluice: how long (ms) a DMA_READ/DMA_WRITE request to the client waits for its reply
    /// before the command fails (`vfu_server::ServerOptions::dma_timeout`); 0: no limit.
    pub dma_timeout_ms: u32,
    /// Must be the default target if given.
    #[serde(skip_serializing)]
    pub tgt_name: Option<String>,
    /// Unknown (RDMA/TCP) keys, tolerated and ignored like SPDK's relaxed decoding.
    #[serde(flatten)]
    pub ignored: Map<String, Value>,
}

impl Default for TransportOpts {
    fn default() -> Self {
        Self {
            trtype: VFIOUSER.into(),
            max_queue_depth: 256,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 0,
            max_io_size: 131_072,
            io_unit_size: 131_072,
            max_aq_depth: 32,
            num_shared_buffers: 0,
            buf_cache_size: 0,
            iobuf_small_cache_size: 0,
            iobuf_large_cache_size: 0,
            dif_insert_or_strip: false,
            zcopy: false,
            abort_timeout_sec: 0,
            ack_timeout: 0,
            data_wr_pool_size: 0,
            disable_command_passthru: false,
            kas: 100,
            min_kato: 10_000,
            acceptor_poll_rate: 10_000,
            disable_mappable_bar0: false,
            disable_adaptive_irq: false,
            disable_shadow_doorbells: false,
            enable_intr_mode_sq_spreading: false,
            require_sealed_dma: false,
            dma_timeout_ms: DEFAULT_DMA_TIMEOUT_MS,
            tgt_name: None,
            ignored: Map::new(),
        }
    }
}

impl TransportOpts {
    /// Validate after decoding.
    pub fn validate(mut self) -> Result<Self, RpcError> {
        check_tgt(self.tgt_name.as_deref())?;
        if !self.trtype.eq_ignore_ascii_case(VFIOUSER) {
            return Err(bad(format!(
                "trtype: Invalid transport type '{}' (only VFIOUSER)",
                self.trtype
            )));
        }
        self.trtype = VFIOUSER.into();
        if !(2..=4096).contains(&self.max_queue_depth) {
            return Err(bad(format!(
                "max_queue_depth: {} out of range 2..=4096",
                self.max_queue_depth
            )));
        }
        if !(1..=511).contains(&self.max_io_qpairs_per_ctrlr) {
            return Err(bad(format!(
                "max_io_qpairs_per_ctrlr: {} out of range 1..=511",
                self.max_io_qpairs_per_ctrlr
            )));
        }
        if !(2..=4096).contains(&self.max_aq_depth) {
            return Err(bad(format!(
                "max_aq_depth: {} out of range 2..=4096",
                self.max_aq_depth
            )));
        }
        if self.max_io_size < 4096
            || self.max_io_size % 4096 != 0
            || !self.max_io_size.is_power_of_two()
        {
            return Err(bad(format!(
                "max_io_size: {} must be a power of two >= 4096",
                self.max_io_size
            )));
        }
        if self.dma_timeout_ms > MAX_DMA_TIMEOUT_MS {
            return Err(bad(format!(
                "dma_timeout_ms: {} out of range 0..={MAX_DMA_TIMEOUT_MS} (0: no limit)",
                self.dma_timeout_ms
            )));
        }
        if !self.ignored.is_empty() {
            let keys: Vec<&String> = self.ignored.keys().collect();
            tracing::debug!(
                ?keys,
                "nvmf_create_transport: ignoring keys not used by VFIOUSER"
            );
        }
        Ok(self)
    }

    /// `nvmf_get_transports` element (SPDK's fields plus the vfio-user options).
    pub fn to_json(&self) -> Value {
        json!({
            "trtype": self.trtype,
            "max_queue_depth": self.max_queue_depth,
            "max_io_qpairs_per_ctrlr": self.max_io_qpairs_per_ctrlr,
            "in_capsule_data_size": self.in_capsule_data_size,
            "max_io_size": self.max_io_size,
            "max_aq_depth": self.max_aq_depth,
            "iobuf_small_cache_size": self.iobuf_small_cache_size,
            "iobuf_large_cache_size": self.iobuf_large_cache_size,
            "dif_insert_or_strip": self.dif_insert_or_strip,
            "zcopy": self.zcopy,
            "abort_timeout_sec": self.abort_timeout_sec,
            "ack_timeout": self.ack_timeout,
            "data_wr_pool_size": self.data_wr_pool_size,
            "disable_command_passthru": self.disable_command_passthru,
            "kas": self.kas,
            "min_kato": self.min_kato,
            "acceptor_poll_rate": self.acceptor_poll_rate,
            "disable_mappable_bar0": self.disable_mappable_bar0,
            "disable_adaptive_irq": self.disable_adaptive_irq,
            "disable_shadow_doorbells": self.disable_shadow_doorbells,
            "enable_intr_mode_sq_spreading": self.enable_intr_mode_sq_spreading,
            "require_sealed_dma": self.require_sealed_dma,
            "dma_timeout_ms": self.dma_timeout_ms
        })
    }
}

/// Decode `nvmf_create_transport` params (relaxed: unknown keys are tolerated) and validate.
pub fn decode_transport(params: Option<&Value>) -> Result<TransportOpts, RpcError> {
    let obj = match params {
        Some(Value::Object(o)) => o,
        _ => return Err(bad("Invalid parameters: trtype is required")),
    };
    if !obj.contains_key("trtype") {
        return Err(bad("Invalid parameters: missing field `trtype`"));
    }
    crate::params::decode::<TransportOpts>(params)?.validate()
}

/// `nvmf_create_subsystem` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSubsystem {
    nqn: String,
    tgt_name: Option<String>,
    serial_number: Option<String>,
    model_number: Option<String>,
    admin_label: Option<String>,
    max_namespaces: Option<u32>,
    allow_any_host: Option<bool>,
    ana_reporting: Option<bool>,
    min_cntlid: Option<u16>,
    max_cntlid: Option<u16>,
    dmrsl: Option<u32>,
    wzsl: Option<u8>,
    passthrough: Option<bool>,
    enable_nssr: Option<bool>,
}

/// Params naming just a subsystem (`nvmf_delete_subsystem`, `..._get_controllers`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NqnParams {
    /// Subsystem NQN.
    pub nqn: String,
    /// Target name.
    pub tgt_name: Option<String>,
}

/// `nvmf_get_subsystems` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetSubsystems {
    /// Only this subsystem.
    pub nqn: Option<String>,
    /// Target name.
    pub tgt_name: Option<String>,
}

/// `listen_address` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenAddress {
    trtype: String,
    adrfam: Option<String>,
    traddr: String,
    trsvcid: Option<String>,
}

/// `nvmf_subsystem_add_listener` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddListener {
    /// Subsystem NQN.
    pub nqn: String,
    /// Target name.
    pub tgt_name: Option<String>,
    listen_address: ListenAddress,
    secure_channel: Option<bool>,
    ana_state: Option<String>,
    sock_impl: Option<String>,
    numa_id: Option<i32>,
}

/// `nvmf_subsystem_remove_listener` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveListener {
    /// Subsystem NQN.
    pub nqn: String,
    /// Target name.
    pub tgt_name: Option<String>,
    listen_address: ListenAddress,
}

/// `namespace` object of `nvmf_subsystem_add_ns`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NsParams {
    /// Backing bdev.
    pub bdev_name: String,
    nsid: Option<u32>,
    nguid: Option<String>,
    eui64: Option<String>,
    uuid: Option<String>,
    ptpl_file: Option<String>,
    anagrpid: Option<u32>,
    no_auto_visible: Option<bool>,
    hide_metadata: Option<bool>,
}

/// `nvmf_subsystem_add_ns` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNs {
    /// Subsystem NQN.
    pub nqn: String,
    /// Target name.
    pub tgt_name: Option<String>,
    /// The namespace.
    pub namespace: NsParams,
}

/// `nvmf_subsystem_remove_ns` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveNs {
    /// Subsystem NQN.
    pub nqn: String,
    /// Target name.
    pub tgt_name: Option<String>,
    /// Namespace id.
    pub nsid: u32,
}

/// A namespace of a subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace id (1-based).
    pub nsid: u32,
    /// Backing bdev.
    pub bdev_name: String,
    /// NGUID (defaults to the bdev UUID bytes).
    pub nguid: [u8; 16],
    /// UUID (defaults to the bdev UUID).
    pub uuid: Uuid,
    /// EUI-64, if given.
    pub eui64: Option<[u8; 8]>,
}

impl Namespace {
    fn nguid_hex(&self) -> String {
        hex_upper(&self.nguid)
    }

    /// Element of `namespaces` in `nvmf_get_subsystems`.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "nsid": self.nsid,
            "bdev_name": self.bdev_name,
            "name": self.bdev_name,
            "nguid": self.nguid_hex(),
            "uuid": self.uuid.hyphenated().to_string()
        });
        if let (Some(e), Some(o)) = (self.eui64, v.as_object_mut()) {
            o.insert("eui64".into(), json!(hex_upper(&e)));
        }
        v
    }

    /// `namespace` object of the config entry.
    pub fn config_json(&self) -> Value {
        let mut v = json!({
            "nsid": self.nsid,
            "bdev_name": self.bdev_name,
            "nguid": self.nguid_hex(),
            "uuid": self.uuid.hyphenated().to_string(),
            "no_auto_visible": false
        });
        if let (Some(e), Some(o)) = (self.eui64, v.as_object_mut()) {
            o.insert("eui64".into(), json!(hex_upper(&e)));
        }
        v
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Parse hex (dashes allowed, as SPDK accepts) into exactly `N` bytes.
fn parse_hex<const N: usize>(field: &str, s: &str) -> Result<[u8; N], RpcError> {
    let digits: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    let err = || bad(format!("{field}: '{s}' is not {} hex bytes", N));
    if digits.len() != N * 2 {
        return Err(err());
    }
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).map_err(|_| err())?;
        *slot = u8::from_str_radix(text, 16).map_err(|_| err())?;
    }
    Ok(out)
}

impl NsParams {
    /// Validate into a namespace. `nsid` resolution (auto) is done by the caller.
    pub fn build(&self, bdev_uuid: Uuid) -> Result<(Option<u32>, Namespace), RpcError> {
        if self.ptpl_file.is_some() {
            return Err(bad("namespace.ptpl_file: reservations are not supported"));
        }
        if matches!(self.anagrpid, Some(g) if g != 0 && g != 1) {
            return Err(bad("namespace.anagrpid: ANA is not supported"));
        }
        if self.no_auto_visible == Some(true) {
            return Err(bad(
                "namespace.no_auto_visible: per-host visibility is not supported",
            ));
        }
        let _ = self.hide_metadata;
        let uuid = match &self.uuid {
            Some(u) => Uuid::parse_str(u)
                .map_err(|_| bad(format!("namespace.uuid: invalid UUID '{u}'")))?,
            None => bdev_uuid,
        };
        let nguid = match &self.nguid {
            Some(n) => parse_hex::<16>("namespace.nguid", n)?,
            None => *uuid.as_bytes(),
        };
        let eui64 = match &self.eui64 {
            Some(e) => Some(parse_hex::<8>("namespace.eui64", e)?),
            None => None,
        };
        let nsid = self.nsid.filter(|n| *n != 0);
        Ok((
            nsid,
            Namespace {
                nsid: nsid.unwrap_or(0),
                bdev_name: self.bdev_name.clone(),
                nguid,
                uuid,
                eui64,
            },
        ))
    }
}

/// A listener (the endpoint handle lives in the target beside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerAddr {
    /// Directory holding `cntrl`.
    pub traddr: String,
    /// Kept as given ("0" when absent).
    pub trsvcid: String,
}

impl ListenerAddr {
    /// Socket path `<traddr>/cntrl`.
    pub fn socket_path(&self) -> std::path::PathBuf {
        std::path::Path::new(&self.traddr).join("cntrl")
    }

    /// `listen_addresses` element.
    pub fn to_json(&self) -> Value {
        json!({"trtype": VFIOUSER, "adrfam": "unknown", "traddr": self.traddr, "trsvcid": self.trsvcid})
    }
}

fn check_listen_address(la: &ListenAddress) -> Result<ListenerAddr, RpcError> {
    if !la.trtype.eq_ignore_ascii_case(VFIOUSER) {
        return Err(bad(format!(
            "listen_address.trtype: unsupported transport '{}' (only VFIOUSER)",
            la.trtype
        )));
    }
    if let Some(a) = &la.adrfam {
        let ok = ["unknown", "ipv4", "ipv6", "ib", "fc", "intra_host"]
            .iter()
            .any(|k| a.eq_ignore_ascii_case(k));
        if !ok {
            return Err(bad(format!("listen_address.adrfam: invalid value '{a}'")));
        }
    }
    if la.traddr.is_empty() {
        return Err(bad("listen_address.traddr: must not be empty"));
    }
    let addr = ListenerAddr {
        traddr: la.traddr.clone(),
        trsvcid: la.trsvcid.clone().unwrap_or_else(|| "0".into()),
    };
    Ok(addr)
}

impl AddListener {
    /// Validate the request (not the directory: that is checked when binding).
    pub fn address(&self) -> Result<ListenerAddr, RpcError> {
        check_tgt(self.tgt_name.as_deref())?;
        if self.secure_channel == Some(true) {
            return Err(bad("secure_channel: not supported by VFIOUSER"));
        }
        if let Some(s) = &self.ana_state {
            if !["optimized", "non_optimized", "inaccessible"].contains(&s.as_str()) {
                return Err(bad(format!("ana_state: invalid value '{s}'")));
            }
        }
        let _ = &self.sock_impl;
        if let Some(n) = self.numa_id {
            if n < -1 {
                return Err(bad(format!("numa_id: invalid value {n}")));
            }
        }
        let addr = check_listen_address(&self.listen_address)?;
        let dir = std::path::Path::new(&addr.traddr);
        if !dir.is_dir() {
            return Err(bad(format!(
                "listen_address.traddr: directory '{}' does not exist",
                addr.traddr
            )));
        }
        let sock_len = addr.socket_path().as_os_str().len();
        if sock_len >= SUN_PATH_MAX {
            return Err(bad(format!(
                "listen_address.traddr: socket path '{}/cntrl' is {sock_len} bytes, longer than the {} allowed",
                addr.traddr,
                SUN_PATH_MAX - 1
            )));
        }
        Ok(addr)
    }
}

impl RemoveListener {
    /// Validate.
    pub fn address(&self) -> Result<ListenerAddr, RpcError> {
        check_tgt(self.tgt_name.as_deref())?;
        check_listen_address(&self.listen_address)
    }
}

/// A subsystem (without its live endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subsystem {
    /// NQN.
    pub nqn: String,
    /// Serial number (≤ 20 ASCII).
    pub serial_number: String,
    /// Model number (≤ 40 ASCII).
    pub model_number: String,
    /// Admin label (may be empty).
    pub admin_label: String,
    /// Max namespaces (NN).
    pub max_namespaces: u32,
    /// Any host may connect.
    pub allow_any_host: bool,
    /// Min controller id.
    pub min_cntlid: u16,
    /// Max controller id.
    pub max_cntlid: u16,
    /// Dataset management range size limit.
    pub dmrsl: u32,
    /// Write zeroes size limit.
    pub wzsl: u8,
    /// Namespaces, sorted by nsid.
    pub namespaces: Vec<Namespace>,
    /// Listeners in creation order.
    pub listeners: Vec<ListenerAddr>,
}

/// Validate an NQN (NVMe base spec 4.5: "nqn.yyyy-mm.reverse.domain:..." or the UUID form).
pub fn validate_nqn(nqn: &str) -> Result<(), RpcError> {
    let err = |why: &str| bad(format!("nqn: invalid NQN '{nqn}': {why}"));
    if nqn.len() < 11 || nqn.len() > 223 {
        return Err(err("length must be 11..=223"));
    }
    if !nqn.is_ascii() || nqn.bytes().any(|b| b.is_ascii_control()) {
        return Err(err("must be printable ASCII"));
    }
    if let Some(u) = nqn.strip_prefix("nqn.2014-08.org.nvmexpress:uuid:") {
        return Uuid::parse_str(u).map(|_| ()).map_err(|_| err("bad UUID"));
    }
    let rest = nqn
        .strip_prefix("nqn.")
        .ok_or_else(|| err("must start with 'nqn.'"))?;
    let date = rest.get(..7).ok_or_else(|| err("missing date"))?;
    let db = date.as_bytes();
    let date_ok = db.iter().enumerate().all(|(i, c)| {
        if i == 4 {
            *c == b'-'
        } else {
            c.is_ascii_digit()
        }
    });
    if !date_ok || rest.as_bytes().get(7) != Some(&b'.') {
        return Err(err("expected 'nqn.yyyy-mm.'"));
    }
    let domain = rest.get(8..).unwrap_or("");
    let dom = domain.split(':').next().unwrap_or("");
    if dom.is_empty() {
        return Err(err("missing reverse domain name"));
    }
    Ok(())
}

/// An Identify string field (SN, MN): 1..=`max` printable ASCII characters.
fn check_ascii_id(field: &str, value: &str, max: usize) -> Result<(), RpcError> {
    if value.is_empty() || value.len() > max || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(bad(format!(
            "{field}: '{value}' must be 1..={max} printable ASCII characters"
        )));
    }
    Ok(())
}

impl CreateSubsystem {
    /// Validate into a new, empty subsystem.
    pub fn build(self) -> Result<Subsystem, RpcError> {
        check_tgt(self.tgt_name.as_deref())?;
        validate_nqn(&self.nqn)?;
        if self.nqn == DISCOVERY_NQN {
            return Err(bad("nqn: the discovery subsystem cannot be created"));
        }
        let serial_number = self
            .serial_number
            .unwrap_or_else(|| "00000000000000000000".into());
        check_ascii_id("serial_number", &serial_number, 20)?;
        let model_number = self
            .model_number
            .unwrap_or_else(|| "SPDK bdev Controller".into());
        check_ascii_id("model_number", &model_number, 40)?;
        let admin_label = self.admin_label.unwrap_or_default();
        if admin_label.len() > 255 {
            return Err(bad("admin_label: longer than 255 bytes"));
        }
        let max_namespaces = match self.max_namespaces {
            None | Some(0) => 32,
            Some(n) if n <= 1024 => n,
            Some(n) => return Err(bad(format!("max_namespaces: {n} out of range 1..=1024"))),
        };
        let min_cntlid = self.min_cntlid.unwrap_or(1);
        let max_cntlid = self.max_cntlid.unwrap_or(MAX_CNTLID);
        if min_cntlid == 0 || min_cntlid > MAX_CNTLID {
            return Err(bad(format!(
                "min_cntlid: {min_cntlid} out of range 1..=65519"
            )));
        }
        if max_cntlid == 0 || max_cntlid > MAX_CNTLID {
            return Err(bad(format!(
                "max_cntlid: {max_cntlid} out of range 1..=65519"
            )));
        }
        if min_cntlid > max_cntlid {
            return Err(bad("min_cntlid: greater than max_cntlid"));
        }
        if self.ana_reporting == Some(true) {
            return Err(bad("ana_reporting: ANA is not supported"));
        }
        if self.passthrough == Some(true) {
            return Err(bad("passthrough: not supported"));
        }
        if self.enable_nssr == Some(true) {
            return Err(bad("enable_nssr: NVM subsystem reset is not supported"));
        }
        Ok(Subsystem {
            nqn: self.nqn,
            serial_number,
            model_number,
            admin_label,
            max_namespaces,
            allow_any_host: self.allow_any_host.unwrap_or(false),
            min_cntlid,
            max_cntlid,
            dmrsl: self.dmrsl.unwrap_or(2_097_152),
            wzsl: self.wzsl.unwrap_or(12),
            namespaces: Vec::new(),
            listeners: Vec::new(),
        })
    }
}

impl Subsystem {
    /// Element of `nvmf_get_subsystems`.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "nqn": self.nqn,
            "subtype": "NVMe",
            "listen_addresses": self.listeners.iter().map(ListenerAddr::to_json).collect::<Vec<_>>(),
            "allow_any_host": self.allow_any_host,
            "hosts": [],
            "serial_number": self.serial_number,
            "model_number": self.model_number,
            "max_namespaces": self.max_namespaces,
            "passthrough": false,
            "min_cntlid": self.min_cntlid,
            "max_cntlid": self.max_cntlid,
            "dmrsl": self.dmrsl,
            "wzsl": self.wzsl,
            "namespaces": self.namespaces.iter().map(Namespace::to_json).collect::<Vec<_>>()
        });
        if !self.admin_label.is_empty() {
            if let Some(o) = v.as_object_mut() {
                o.insert("admin_label".into(), json!(self.admin_label));
            }
        }
        v
    }

    /// Config entries: create, then namespaces, then listeners (SPDK order).
    pub fn config_entries(&self) -> (Value, Vec<Value>, Vec<Value>) {
        let mut create = json!({
            "nqn": self.nqn,
            "allow_any_host": self.allow_any_host,
            "serial_number": self.serial_number,
            "model_number": self.model_number,
            "max_namespaces": self.max_namespaces,
            "min_cntlid": self.min_cntlid,
            "max_cntlid": self.max_cntlid,
            "ana_reporting": false,
            "dmrsl": self.dmrsl,
            "wzsl": self.wzsl,
            "passthrough": false,
            "enable_nssr": false
        });
        if !self.admin_label.is_empty() {
            if let Some(o) = create.as_object_mut() {
                o.insert("admin_label".into(), json!(self.admin_label));
            }
        }
        let ns = self
            .namespaces
            .iter()
            .map(|n| {
                json!({"method": "nvmf_subsystem_add_ns", "params": {
                    "nqn": self.nqn, "namespace": n.config_json()}})
            })
            .collect();
        let listeners = self
            .listeners
            .iter()
            .map(|l| {
                json!({"method": "nvmf_subsystem_add_listener", "params": {
                    "nqn": self.nqn, "listen_address": l.to_json(),
                    "numa_id": -1, "secure_channel": false}})
            })
            .collect();
        (
            json!({"method": "nvmf_create_subsystem", "params": create}),
            ns,
            listeners,
        )
    }

    /// Lowest free nsid.
    pub fn free_nsid(&self) -> Option<u32> {
        (1..=self.max_namespaces).find(|id| self.namespaces.iter().all(|n| n.nsid != *id))
    }
}

/// The discovery subsystem element.
pub fn discovery_json() -> Value {
    json!({"nqn": DISCOVERY_NQN, "subtype": "Discovery", "listen_addresses": [],
           "allow_any_host": true, "hosts": []})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::decode;

    #[test]
    fn nqn_validation() {
        assert!(validate_nqn("nqn.2019-07.io.spdk:cnode0").is_ok());
        assert!(validate_nqn(
            "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"
        )
        .is_ok());
        for bad in [
            "",
            "nqn.x",
            "foo.2019-07.io.spdk:c",
            "nqn.2019x07.io.spdk:c",
            "nqn.2019-07.:abc",
        ] {
            assert!(validate_nqn(bad).is_err(), "{bad}");
        }
        assert!(validate_nqn(&format!("nqn.2019-07.io.spdk:{}", "a".repeat(220))).is_err());
    }

    #[test]
    fn transport_relaxed_but_typed() {
        let t = decode_transport(Some(
            &json!({"trtype":"vfiouser","c2h_success":true,"no_srq":false}),
        ))
        .unwrap();
        assert_eq!(t.trtype, "VFIOUSER");
        assert_eq!(t.max_queue_depth, 256);
        let e = decode_transport(Some(&json!({"trtype":"VFIOUSER","max_queue_depth":"x"})))
            .unwrap_err();
        assert!(e.message.contains("max_queue_depth"), "{}", e.message);
        assert!(decode_transport(Some(&json!({"trtype":"TCP"}))).is_err());
        assert!(decode_transport(Some(&json!({}))).is_err());
        assert!(decode_transport(Some(
            &json!({"trtype":"VFIOUSER","max_io_qpairs_per_ctrlr":600})
        ))
        .is_err());
        assert!(decode_transport(Some(&json!({"trtype":"VFIOUSER","max_io_size":5000}))).is_err());
    }

    #[test]
    fn transport_dma_safety_options() {
        let t = decode_transport(Some(&json!({"trtype":"VFIOUSER"}))).unwrap();
        assert!(!t.require_sealed_dma);
        assert_eq!(t.dma_timeout_ms, DEFAULT_DMA_TIMEOUT_MS);
        let t = decode_transport(Some(
            &json!({"trtype":"VFIOUSER","require_sealed_dma":true,"dma_timeout_ms":0}),
        ))
        .unwrap();
        assert!(t.require_sealed_dma);
        assert_eq!(t.dma_timeout_ms, 0);
        let j = t.to_json();
        assert_eq!(j["require_sealed_dma"], true);
        assert_eq!(j["dma_timeout_ms"], 0);
        let max = decode_transport(Some(
            &json!({"trtype":"VFIOUSER","dma_timeout_ms":MAX_DMA_TIMEOUT_MS}),
        ))
        .unwrap();
        assert_eq!(max.dma_timeout_ms, MAX_DMA_TIMEOUT_MS);
        for (bad, key) in [
            (
                json!({"dma_timeout_ms": MAX_DMA_TIMEOUT_MS + 1}),
                "dma_timeout_ms",
            ),
            (json!({"dma_timeout_ms": -1}), "dma_timeout_ms"),
            (json!({"dma_timeout_ms": 1.5}), "dma_timeout_ms"),
            (json!({"dma_timeout_ms": "100"}), "dma_timeout_ms"),
            (json!({"dma_timeout_ms": 1u64 << 32}), "dma_timeout_ms"),
            (json!({"require_sealed_dma": 1}), "require_sealed_dma"),
            (json!({"require_sealed_dma": "true"}), "require_sealed_dma"),
        ] {
            let mut p = bad.clone();
            p["trtype"] = json!("VFIOUSER");
            let e = decode_transport(Some(&p)).unwrap_err();
            assert_eq!(e.code, -32602, "{bad}");
            assert!(e.message.contains(key), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn subsystem_defaults_and_limits() {
        let p: CreateSubsystem =
            decode(Some(&json!({"nqn":"nqn.2019-07.io.spdk:cnode1"}))).unwrap();
        let s = p.build().unwrap();
        assert_eq!(s.max_namespaces, 32);
        assert_eq!(s.serial_number, "00000000000000000000");
        for bad in [
            json!({"nqn":"nqn.2019-07.io.spdk:c","serial_number":"x".repeat(21)}),
            json!({"nqn":"nqn.2019-07.io.spdk:c","min_cntlid":10,"max_cntlid":5}),
            json!({"nqn":"nqn.2019-07.io.spdk:c","max_cntlid":65520}),
            json!({"nqn":DISCOVERY_NQN}),
            json!({"nqn":"nqn.2019-07.io.spdk:c","tgt_name":"other"}),
        ] {
            let p: CreateSubsystem = decode(Some(&bad)).unwrap();
            assert!(p.build().is_err(), "{bad}");
        }
    }

    #[test]
    fn ns_ids_parse() {
        let p: NsParams = decode(Some(&json!({"bdev_name":"a","nguid":"00112233-44556677-8899AABB-CCDDEEFF","eui64":"0011223344556677"}))).unwrap();
        let (_, ns) = p.build(Uuid::nil()).unwrap();
        assert_eq!(ns.nguid[15], 0xFF);
        let p: NsParams = decode(Some(&json!({"bdev_name":"a","nguid":"0011"}))).unwrap();
        assert!(p.build(Uuid::nil()).is_err());
    }

    #[test]
    fn listener_path_checks() {
        let dir = tempfile::tempdir().unwrap();
        let ok: AddListener = decode(Some(
            &json!({"nqn":"n","listen_address":{"trtype":"vfiouser","traddr":dir.path()}}),
        ))
        .unwrap();
        assert_eq!(ok.address().unwrap().trsvcid, "0");
        let missing: AddListener = decode(Some(
            &json!({"nqn":"n","listen_address":{"trtype":"VFIOUSER","traddr":"/nonexistent/dir"}}),
        ))
        .unwrap();
        assert!(missing
            .address()
            .unwrap_err()
            .message
            .contains("does not exist"));
        let long = dir.path().join("d".repeat(110));
        let long_p: AddListener = decode(Some(
            &json!({"nqn":"n","listen_address":{"trtype":"VFIOUSER","traddr":long}}),
        ))
        .unwrap();
        assert!(long_p.address().is_err());
        let tcp: AddListener = decode(Some(
            &json!({"nqn":"n","listen_address":{"trtype":"TCP","traddr":dir.path()}}),
        ))
        .unwrap();
        assert!(tcp.address().is_err());
    }
}
