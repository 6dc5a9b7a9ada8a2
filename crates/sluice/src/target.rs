//! The target's registries (bdevs, transport, subsystems, listeners) and the RPC methods
//! that change them. Every method validates everything first and mutates last, so a failed
//! call leaves no partial state.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::bdevs::{self, Bdev};
use crate::dataplane::{DataPlane, Endpoint, NamespaceView};
use crate::jsonrpc::RpcError;
use crate::nvmf::{self, Subsystem, TransportOpts};
use crate::params::decode;

fn bad(msg: impl Into<String>) -> RpcError {
    RpcError::invalid_params(msg)
}

/// All registries plus the data plane.
pub struct Target {
    bdevs: Vec<Bdev>,
    transport: Option<TransportOpts>,
    subsystems: Vec<Subsystem>,
    /// Live endpoints keyed by traddr.
    endpoints: HashMap<String, Box<dyn Endpoint>>,
    dataplane: Box<dyn DataPlane>,
    malloc_counter: u32,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("bdevs", &self.bdevs.len())
            .field("subsystems", &self.subsystems.len())
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBdevs {
    name: Option<String>,
    timeout: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetIostat {
    name: Option<String>,
    per_channel: Option<bool>,
    reset_mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetTransports {
    trtype: Option<String>,
    tgt_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TgtOnly {
    tgt_name: Option<String>,
}

impl Target {
    /// Empty target over `dataplane`.
    pub fn new(dataplane: Box<dyn DataPlane>) -> Self {
        Self {
            bdevs: Vec::new(),
            transport: None,
            subsystems: Vec::new(),
            endpoints: HashMap::new(),
            dataplane,
            malloc_counter: 0,
        }
    }

    fn bdev(&self, name: &str) -> Option<&Bdev> {
        self.bdevs.iter().find(|b| b.name == name)
    }

    fn claimed_by(&self, bdev: &str) -> Option<(&str, u32)> {
        self.subsystems.iter().find_map(|s| {
            s.namespaces
                .iter()
                .find(|n| n.bdev_name == bdev)
                .map(|n| (s.nqn.as_str(), n.nsid))
        })
    }

    fn subsystem_idx(&self, nqn: &str) -> Result<usize, RpcError> {
        self.subsystems
            .iter()
            .position(|s| s.nqn == nqn)
            .ok_or_else(|| bad(format!("nqn: subsystem '{nqn}' not found")))
    }

    fn subsystem_mut(&mut self, nqn: &str) -> Result<&mut Subsystem, RpcError> {
        self.subsystems
            .iter_mut()
            .find(|s| s.nqn == nqn)
            .ok_or_else(|| bad(format!("nqn: subsystem '{nqn}' not found")))
    }

    fn register_bdev(&mut self, mut b: Bdev) -> Result<Value, RpcError> {
        if self.bdev(&b.name).is_some() {
            return Err(RpcError::new(
                -17,
                format!("File exists: bdev '{}' already exists", b.name),
            ));
        }
        if b.name.is_empty() {
            return Err(bad("name: must not be empty"));
        }
        if self.bdevs.iter().any(|o| o.uuid == b.uuid) {
            return Err(RpcError::new(
                -17,
                format!("File exists: a bdev with uuid {} already exists", b.uuid),
            ));
        }
        let (block_size, num_blocks) = self
            .dataplane
            .create_bdev(&b)
            .map_err(|e| bad(format!("cannot create bdev '{}': {e}", b.name)))?;
        b.block_size = block_size;
        b.num_blocks = num_blocks;
        let name = b.name.clone();
        self.bdevs.push(b);
        Ok(json!(name))
    }

    fn delete_bdev(
        &mut self,
        params: Option<&Value>,
        kind: fn(&Bdev) -> bool,
    ) -> Result<Value, RpcError> {
        let p: bdevs::Delete = decode(params)?;
        let idx = self
            .bdevs
            .iter()
            .position(|b| b.name == p.name && kind(b))
            .ok_or_else(|| RpcError::new(-19, format!("No such device: bdev '{}'", p.name)))?;
        if let Some((nqn, nsid)) = self.claimed_by(&p.name) {
            return Err(bad(format!(
                "name: bdev '{}' is in use by namespace {nsid} of {nqn}; remove the namespace first",
                p.name
            )));
        }
        self.bdevs.remove(idx);
        self.dataplane.delete_bdev(&p.name);
        Ok(json!(true))
    }

    fn ns_views(s: &Subsystem) -> Vec<NamespaceView> {
        s.namespaces
            .iter()
            .map(|n| NamespaceView {
                nsid: n.nsid,
                bdev_name: n.bdev_name.clone(),
            })
            .collect()
    }

    /// Run a registry method; `None` if `method` is not one of them.
    pub fn call(
        &mut self,
        method: &str,
        params: Option<&Value>,
    ) -> Option<Result<Value, RpcError>> {
        Some(match method {
            "bdev_null_create" => decode::<bdevs::NullCreate>(params)
                .and_then(|p| p.build())
                .and_then(|b| self.register_bdev(b)),
            "bdev_malloc_create" => decode::<bdevs::MallocCreate>(params).and_then(|p| {
                let auto = self.next_malloc_name();
                let b = p.build(auto)?;
                self.register_bdev(b)
            }),
            "bdev_aio_create" => decode::<bdevs::AioCreate>(params)
                .and_then(|p| p.build())
                .and_then(|b| self.register_bdev(b)),
            "bdev_uring_create" => decode::<bdevs::UringCreate>(params)
                .and_then(|p| p.build())
                .and_then(|b| self.register_bdev(b)),
            "bdev_nbd_client_create" => decode::<bdevs::NbdCreate>(params)
                .and_then(|p| p.build())
                .and_then(|b| self.register_bdev(b)),
            "bdev_nbd_client_delete" => {
                self.delete_bdev(params, |b| matches!(b.kind, bdevs::BdevKind::Nbd { .. }))
            }
            "bdev_null_delete" => {
                self.delete_bdev(params, |b| matches!(b.kind, bdevs::BdevKind::Null))
            }
            "bdev_malloc_delete" => {
                self.delete_bdev(params, |b| matches!(b.kind, bdevs::BdevKind::Malloc { .. }))
            }
            "bdev_aio_delete" => {
                self.delete_bdev(params, |b| matches!(b.kind, bdevs::BdevKind::Aio { .. }))
            }
            "bdev_uring_delete" => {
                self.delete_bdev(params, |b| matches!(b.kind, bdevs::BdevKind::Uring { .. }))
            }
            "bdev_get_bdevs" => self.get_bdevs(params),
            "bdev_get_iostat" => self.get_iostat(params),
            "bdev_set_qos_limit" => self.set_qos(params),
            "bdev_wait_for_examine" => crate::params::none(method, params).map(|()| json!(true)),
            "nvmf_create_transport" => self.create_transport(params),
            "nvmf_get_transports" => self.get_transports(params),
            "nvmf_create_subsystem" => self.create_subsystem(params),
            "nvmf_delete_subsystem" => self.delete_subsystem(params),
            "nvmf_get_subsystems" => self.get_subsystems(params),
            "nvmf_subsystem_add_ns" => self.add_ns(params),
            "nvmf_subsystem_remove_ns" => self.remove_ns(params),
            "nvmf_subsystem_add_listener" => self.add_listener(params),
            "nvmf_subsystem_remove_listener" => self.remove_listener(params),
            "nvmf_subsystem_get_controllers" => self.get_controllers(params),
            "nvmf_get_stats" => self.get_stats(params),
            _ => return None,
        })
    }

    fn next_malloc_name(&mut self) -> String {
        loop {
            let name = format!("Malloc{}", self.malloc_counter);
            self.malloc_counter = self.malloc_counter.wrapping_add(1);
            if self.bdev(&name).is_none() {
                return name;
            }
        }
    }

    fn get_bdevs(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: GetBdevs = decode(params)?;
        let _ = p.timeout;
        let list: Vec<Value> = match &p.name {
            Some(n) => {
                let b = self
                    .bdevs
                    .iter()
                    .find(|b| &b.name == n || &b.uuid.hyphenated().to_string() == n)
                    .ok_or_else(|| RpcError::new(-19, format!("No such device: bdev '{n}'")))?;
                vec![b.to_json(self.claimed_by(&b.name).is_some())]
            }
            None => self
                .bdevs
                .iter()
                .map(|b| b.to_json(self.claimed_by(&b.name).is_some()))
                .collect(),
        };
        Ok(Value::Array(list))
    }

    fn get_iostat(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: GetIostat = decode(params)?;
        if p.per_channel == Some(true) {
            return Err(bad("per_channel: not supported"));
        }
        if let Some(m) = &p.reset_mode {
            if !["all", "maxmin", "none"].contains(&m.as_str()) {
                return Err(bad(format!("reset_mode: invalid value '{m}'")));
            }
        }
        let selected: Vec<&Bdev> = match &p.name {
            Some(n) => vec![self
                .bdev(n)
                .ok_or_else(|| RpcError::new(-19, format!("No such device: bdev '{n}'")))?],
            None => self.bdevs.iter().collect(),
        };
        let names: Vec<String> = selected.iter().map(|b| b.name.clone()).collect();
        if let Some(v) = self.dataplane.iostat(&names) {
            return Ok(v);
        }
        let bdevs: Vec<Value> = selected
            .iter()
            .map(|b| {
                json!({
                    "name": b.name,
                    "bytes_read": 0, "num_read_ops": 0,
                    "bytes_written": 0, "num_write_ops": 0,
                    "bytes_unmapped": 0, "num_unmap_ops": 0,
                    "bytes_copied": 0, "num_copy_ops": 0,
                    "read_latency_ticks": 0, "max_read_latency_ticks": 0, "min_read_latency_ticks": 0,
                    "write_latency_ticks": 0, "max_write_latency_ticks": 0, "min_write_latency_ticks": 0,
                    "unmap_latency_ticks": 0, "max_unmap_latency_ticks": 0, "min_unmap_latency_ticks": 0,
                    "copy_latency_ticks": 0, "max_copy_latency_ticks": 0, "min_copy_latency_ticks": 0,
                    "io_error": {}
                })
            })
            .collect();
        Ok(json!({"tick_rate": 1_000_000_000u64, "ticks": crate::ticks(), "bdevs": bdevs}))
    }

    fn set_qos(&mut self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: bdevs::QosParams = decode(params)?;
        let idx = self
            .bdevs
            .iter()
            .position(|b| b.name == p.name)
            .ok_or_else(|| RpcError::new(-19, format!("No such device: bdev '{}'", p.name)))?;
        let old = self.bdevs.get(idx).map(|b| b.qos).unwrap_or_default();
        let new = p.apply(old)?;
        self.dataplane
            .set_qos(&p.name, &new)
            .map_err(|e| bad(format!("name: cannot set QoS on '{}': {e}", p.name)))?;
        if let Some(b) = self.bdevs.get_mut(idx) {
            b.qos = new;
        }
        Ok(json!(true))
    }

    fn create_transport(&mut self, params: Option<&Value>) -> Result<Value, RpcError> {
        let t = nvmf::decode_transport(params)?;
        if self.transport.is_some() {
            return Err(RpcError::internal(
                "Transport type 'VFIOUSER' already exists",
            ));
        }
        self.transport = Some(t);
        Ok(json!(true))
    }

    fn get_transports(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: GetTransports = decode(params)?;
        nvmf::check_tgt(p.tgt_name.as_deref())?;
        if let Some(tt) = &p.trtype {
            if !tt.eq_ignore_ascii_case(nvmf::VFIOUSER) || self.transport.is_none() {
                return Err(RpcError::new(
                    -19,
                    format!("No such device: transport '{tt}'"),
                ));
            }
        }
        Ok(Value::Array(
            self.transport.iter().map(TransportOpts::to_json).collect(),
        ))
    }

    /// The transport options in force (defaults if none was created).
    pub fn transport(&self) -> Option<&TransportOpts> {
        self.transport.as_ref()
    }

    fn create_subsystem(&mut self, params: Option<&Value>) -> Result<Value, RpcError> {
        let s = decode::<nvmf::CreateSubsystem>(params)?.build()?;
        if self.subsystems.iter().any(|o| o.nqn == s.nqn) {
            return Err(RpcError::internal(format!(
                "Unable to create subsystem {}: already exists",
                s.nqn
            )));
        }
        self.subsystems.push(s);
        Ok(json!(true))
    }

    fn delete_subsystem(&mut self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: nvmf::NqnParams = decode(params)?;
        nvmf::check_tgt(p.tgt_name.as_deref())?;
        let idx = self.subsystem_idx(&p.nqn)?;
        let s = self.subsystems.remove(idx);
        for l in &s.listeners {
            self.endpoints.remove(&l.traddr);
        }
        Ok(json!(true))
    }

    fn get_subsystems(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: nvmf::GetSubsystems = decode(params)?;
        nvmf::check_tgt(p.tgt_name.as_deref())?;
        match p.nqn {
            Some(n) if n == nvmf::DISCOVERY_NQN => Ok(json!([nvmf::discovery_json()])),
            Some(n) => {
                let idx = self.subsystem_idx(&n)?;
                Ok(json!([self.subsystems.get(idx).map(Subsystem::to_json)]))
            }
            None => {
                let mut all = vec![nvmf::discovery_json()];
                all.extend(self.subsystems.iter().map(Subsystem::to_json));
                Ok(Value::Array(all))
            }
        }
    }

    fn add_ns(&mut self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: nvmf::AddNs = decode(params)?;
        nvmf::check_tgt(p.tgt_name.as_deref())?;
        let idx = self.subsystem_idx(&p.nqn)?;
        let bdev = self.bdev(&p.namespace.bdev_name).ok_or_else(|| {
            bad(format!(
                "namespace.bdev_name: bdev '{}' not found",
                p.namespace.bdev_name
            ))
        })?;
        let (want, mut ns) = p.namespace.build(bdev.uuid)?;
        if let Some((nqn, nsid)) = self.claimed_by(&p.namespace.bdev_name) {
            return Err(bad(format!(
                "namespace.bdev_name: bdev '{}' is already claimed by namespace {nsid} of {nqn}",
                p.namespace.bdev_name
            )));
        }
        let sub = self
            .subsystems
            .get(idx)
            .ok_or_else(|| RpcError::internal("subsystem vanished"))?;
        let nsid = match want {
            Some(n) => {
                if n > sub.max_namespaces || n == u32::MAX {
                    return Err(bad(format!(
                        "namespace.nsid: {n} out of range 1..={}",
                        sub.max_namespaces
                    )));
                }
                if sub.namespaces.iter().any(|x| x.nsid == n) {
                    return Err(bad(format!("namespace.nsid: {n} is already in use")));
                }
                n
            }
            None => sub.free_nsid().ok_or_else(|| {
                bad(format!(
                    "namespace: subsystem {} already has max_namespaces ({}) namespaces",
                    sub.nqn, sub.max_namespaces
                ))
            })?,
        };
        if sub
            .namespaces
            .iter()
            .any(|x| x.uuid == ns.uuid || x.nguid == ns.nguid)
        {
            return Err(bad(
                "namespace.uuid: another namespace of the subsystem has the same uuid/nguid",
            ));
        }
        ns.nsid = nsid;
        let sub = self
            .subsystems
            .get_mut(idx)
            .ok_or_else(|| RpcError::internal("subsystem vanished"))?;
        sub.namespaces.push(ns);
        sub.namespaces.sort_by_key(|n| n.nsid);
        let views = Self::ns_views(sub);
        let nqn = sub.nqn.clone();
        self.dataplane.namespaces_changed(&nqn, &views);
        Ok(json!(nsid))
    }

    fn remove_ns(&mut self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: nvmf::RemoveNs = decode(params)?;
        nvmf::check_tgt(p.tgt_name.as_deref())?;
        let sub = self.subsystem_mut(&p.nqn)?;
        let pos = sub
            .namespaces
            .iter()
            .position(|n| n.nsid == p.nsid)
            .ok_or_else(|| bad(format!("nsid: namespace {} not found in {}", p.nsid, p.nqn)))?;
        sub.namespaces.remove(pos);
        let views = Self::ns_views(sub);
        self.dataplane.namespaces_changed(&p.nqn, &views);
        Ok(json!(true))
    }

    fn add_listener(&mut self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: nvmf::AddListener = decode(params)?;
        let addr = p.address()?;
        let idx = self.subsystem_idx(&p.nqn)?;
        if self.transport.is_none() {
            return Err(bad(
                "listen_address.trtype: transport VFIOUSER not created (call nvmf_create_transport first)",
            ));
        }
        if let Some(owner) = self
            .subsystems
            .iter()
            .find(|s| s.listeners.iter().any(|l| l.traddr == addr.traddr))
        {
            return Err(bad(format!(
                "listen_address.traddr: listener '{}' already exists (subsystem {})",
                addr.traddr, owner.nqn
            )));
        }
        let sub = self
            .subsystems
            .get(idx)
            .ok_or_else(|| RpcError::internal("subsystem vanished"))?;
        let views = Self::ns_views(sub);
        let transport = self
            .transport
            .as_ref()
            .ok_or_else(|| RpcError::internal("transport vanished"))?;
        let socket = addr.socket_path();
        let ep = self
            .dataplane
            .listen(&crate::dataplane::ListenRequest {
                subsystem: sub,
                transport,
                socket: &socket,
                namespaces: &views,
            })
            .map_err(|e| bad(format!("listen_address.traddr: {e}")))?;
        self.endpoints.insert(addr.traddr.clone(), ep);
        if let Some(sub) = self.subsystems.get_mut(idx) {
            sub.listeners.push(addr);
        }
        Ok(json!(true))
    }

    fn remove_listener(&mut self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: nvmf::RemoveListener = decode(params)?;
        let addr = p.address()?;
        let sub = self.subsystem_mut(&p.nqn)?;
        let pos = sub
            .listeners
            .iter()
            .position(|l| l.traddr == addr.traddr)
            .ok_or_else(|| {
                bad(format!(
                    "listen_address.traddr: no listener '{}' on {}",
                    addr.traddr, p.nqn
                ))
            })?;
        sub.listeners.remove(pos);
        // Dropping the endpoint detaches a connected client and removes the socket.
        self.endpoints.remove(&addr.traddr);
        Ok(json!(true))
    }

    fn get_controllers(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: nvmf::NqnParams = decode(params)?;
        nvmf::check_tgt(p.tgt_name.as_deref())?;
        let idx = self.subsystem_idx(&p.nqn)?;
        let mut out = Vec::new();
        if let Some(sub) = self.subsystems.get(idx) {
            for l in &sub.listeners {
                if let Some(c) = self.endpoints.get(&l.traddr).and_then(|e| e.controller()) {
                    out.push(json!({
                        "cntlid": c.cntlid,
                        "cntrltype": "io",
                        "hostnqn": "",
                        "hostid": "00000000-0000-0000-0000-000000000000",
                        "num_io_qpairs": c.num_io_qpairs
                    }));
                }
            }
        }
        Ok(Value::Array(out))
    }

    fn get_stats(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: TgtOnly = decode(params)?;
        nvmf::check_tgt(p.tgt_name.as_deref())?;
        Ok(json!({"tick_rate": 1_000_000_000u64, "poll_groups": self.dataplane.poll_group_stats()}))
    }

    /// `framework_get_config` for `bdev`.
    pub fn bdev_config(&self) -> Value {
        let mut out: Vec<Value> = self.bdevs.iter().map(Bdev::config_entry).collect();
        out.extend(self.bdevs.iter().filter_map(Bdev::qos_entry));
        out.push(json!({"method": "bdev_wait_for_examine"}));
        Value::Array(out)
    }

    /// `framework_get_config` for `nvmf`.
    pub fn nvmf_config(&self) -> Value {
        let mut out = Vec::new();
        if let Some(t) = &self.transport {
            let mut params = t.to_json();
            if let Some(o) = params.as_object_mut() {
                // Keep the deprecated-but-settable knobs too, for a lossless reload.
                o.insert("io_unit_size".into(), json!(t.io_unit_size));
            }
            out.push(json!({"method": "nvmf_create_transport", "params": params}));
        }
        let mut ns = Vec::new();
        let mut listeners = Vec::new();
        for s in &self.subsystems {
            let (create, n, l) = s.config_entries();
            out.push(create);
            ns.extend(n);
            listeners.extend(l);
        }
        out.extend(ns);
        out.extend(listeners);
        Value::Array(out)
    }

    /// Tear down every endpoint (socket removal included), in order.
    pub fn shutdown(&mut self) {
        let start = std::time::Instant::now();
        // Signal every endpoint first so their clients detach in parallel, then wait.
        for ep in self.endpoints.values() {
            ep.begin_stop();
        }
        let endpoints = self.endpoints.len();
        self.endpoints.clear();
        let detached = start.elapsed();
        self.dataplane.shutdown();
        tracing::info!(
            endpoints,
            detach_ms = detached.as_millis(),
            total_ms = start.elapsed().as_millis(),
            "data plane stopped"
        );
    }
}
