//! The real data plane: poll threads (one per `-m` CPU, pinned) running `sluice_nvme`
//! pollers, one NVMe controller per listener placed on the least-loaded poller, each served
//! by a `vfu_server` endpoint thread through `sluice_nvme::pci::nvme_endpoint`; namespaces
//! are `sluice_bdev` block devices.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_bdev::rpc as brpc;
use sluice_nvme::pci::{nvme_endpoint, NvmePciIds};
use sluice_nvme::{Controller, ControllerConfig, ControllerHandle, NoInterrupts, PollerHandle};
use vfu_server::{Server, ServerOptions, ShutdownHandle};

use crate::bdevs::{Bdev, BdevKind, QosLimits};
use crate::dataplane::{
    ControllerInfo, DataPlane, DataPlaneError, Endpoint, ListenRequest, NamespaceView,
};

/// Poll thread mode (maps to `sluice_nvme::PollMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Spin.
    Busy,
    /// Spin under load, sleep with exponential backoff when idle.
    Adaptive {
        /// Idle polls before the first sleep.
        spin_polls: u32,
        /// Longest sleep.
        max_sleep: Duration,
    },
}

/// A poll thread, started when its first controller is placed on it: a busy poller with
/// nothing to poll would only take a CPU from the startup (large malloc bdevs, `-c`).
struct PollThread {
    cpu: usize,
    handle: PollerHandle,
    /// The poller until its thread is started.
    idle: Option<(sluice_nvme::Poller, sluice_nvme::PollMode)>,
    thread: Option<JoinHandle<()>>,
}

impl PollThread {
    fn start(&mut self, index: usize) -> std::io::Result<()> {
        let Some((mut poller, mode)) = self.idle.take() else {
            return Ok(());
        };
        let cpu = self.cpu;
        let thread = std::thread::Builder::new()
            .name(format!("sluice-poll-{index}"))
            .spawn(move || {
                pin_to(cpu);
                poller.run(mode);
            })?;
        self.thread = Some(thread);
        Ok(())
    }
}

/// What a live endpoint shares with the data plane (for namespace changes and stats).
#[derive(Debug)]
struct Live {
    nqn: String,
    poller: usize,
    cntlid: u16,
    handle: ControllerHandle,
}

impl Live {
    /// Whether a host has the controller enabled (CSTS.RDY): its admin queue pair exists.
    fn enabled(&self) -> bool {
        self.handle.shared().csts() & 1 == 1
    }
}

/// The NVMe data plane.
pub struct NvmePlane {
    pollers: Vec<PollThread>,
    bdevs: HashMap<String, Arc<dyn sluice_bdev::Bdev>>,
    live: Vec<Weak<Live>>,
    next_cntlid: HashMap<String, u16>,
}

impl std::fmt::Debug for NvmePlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmePlane")
            .field("pollers", &self.pollers.len())
            .field("bdevs", &self.bdevs.len())
            .finish()
    }
}

fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        tracing::warn!(cpu, error = %e, "cannot pin poll thread");
    }
}

impl NvmePlane {
    /// Start one pinned poll thread per CPU.
    pub fn new(cpus: &[usize], mode: Mode) -> std::io::Result<Self> {
        let mut pollers = Vec::new();
        for &cpu in cpus {
            let (poller, handle) = sluice_nvme::Poller::new();
            let pm = match mode {
                Mode::Busy => sluice_nvme::PollMode::Busy,
                Mode::Adaptive {
                    spin_polls,
                    max_sleep,
                } => sluice_nvme::PollMode::Adaptive {
                    spin_polls,
                    max_sleep,
                },
            };
            pollers.push(PollThread {
                cpu,
                handle,
                idle: Some((poller, pm)),
                thread: None,
            });
        }
        Ok(Self {
            pollers,
            bdevs: HashMap::new(),
            live: Vec::new(),
            next_cntlid: HashMap::new(),
        })
    }

    fn live(&self) -> Vec<Arc<Live>> {
        self.live.iter().filter_map(Weak::upgrade).collect()
    }

    fn least_loaded(&self) -> Option<(usize, &PollerHandle)> {
        self.pollers
            .iter()
            .enumerate()
            .min_by_key(|(_, p)| p.handle.controller_count())
            .map(|(i, p)| (i, &p.handle))
    }

    fn bdev(&self, name: &str) -> Result<Arc<dyn sluice_bdev::Bdev>, String> {
        self.bdevs
            .get(name)
            .cloned()
            .ok_or_else(|| format!("bdev '{name}' has no backend"))
    }
}

fn controller_config(req: &ListenRequest<'_>, cntlid: u16) -> ControllerConfig {
    let t = req.transport;
    // max_io_size is a validated power of two >= 4096.
    let mdts = u8::try_from(t.max_io_size.trailing_zeros().saturating_sub(12)).unwrap_or(5);
    ControllerConfig {
        serial: req.subsystem.serial_number.clone(),
        model: req.subsystem.model_number.clone(),
        subnqn: req.subsystem.nqn.clone(),
        cntlid,
        max_io_queues: t.max_io_qpairs_per_ctrlr,
        max_queue_depth: u32::from(t.max_queue_depth),
        mdts,
        max_namespaces: req.subsystem.max_namespaces,
        mappable_bar0: !t.disable_mappable_bar0,
        shadow_doorbells: !t.disable_shadow_doorbells,
        adaptive_irq: !t.disable_adaptive_irq,
        ..ControllerConfig::default()
    }
}

/// The vfio-user server options of a listener: the server's defaults plus the transport's
/// DMA safety options.
fn server_options(t: &crate::nvmf::TransportOpts) -> ServerOptions {
    ServerOptions {
        require_sealed_dma: t.require_sealed_dma,
        dma_timeout: std::time::Duration::from_millis(u64::from(t.dma_timeout_ms)),
        ..ServerOptions::default()
    }
}

impl DataPlane for NvmePlane {
    fn create_bdev(&mut self, b: &Bdev) -> Result<(u32, u64), String> {
        let uuid = Some(b.uuid.hyphenated().to_string());
        let made = match &b.kind {
            BdevKind::Null => brpc::bdev_null_create(&brpc::NullCreateParams {
                name: b.name.clone(),
                block_size: b.block_size,
                num_blocks: b.num_blocks,
                uuid,
                physical_block_size: None,
                md_size: None,
                dif_type: None,
            }),
            BdevKind::Malloc { .. } => brpc::bdev_malloc_create(
                &brpc::MallocCreateParams {
                    name: Some(b.name.clone()),
                    block_size: b.block_size,
                    num_blocks: b.num_blocks,
                    uuid,
                    md_size: None,
                    dif_type: None,
                },
                || b.name.clone(),
            ),
            BdevKind::Aio {
                filename,
                block_size_param,
                readonly,
                fallocate,
            } => brpc::bdev_aio_create(&brpc::AioCreateParams {
                name: b.name.clone(),
                filename: filename.clone(),
                block_size: *block_size_param,
                readonly: *readonly,
                fallocate: *fallocate,
                uuid,
                nowait: false,
            }),
            BdevKind::Uring {
                filename,
                block_size_param,
            } => brpc::bdev_uring_create(&brpc::UringCreateParams {
                name: b.name.clone(),
                filename: filename.clone(),
                block_size: *block_size_param,
                uuid,
            }),
            BdevKind::Nbd {
                socket_path,
                address,
                export_name,
                block_size_param,
                timeout_ms,
            } => brpc::bdev_nbd_client_create(&brpc::NbdCreateParams {
                name: b.name.clone(),
                socket_path: socket_path.clone(),
                address: address.clone(),
                export_name: export_name.clone(),
                block_size: *block_size_param,
                timeout_ms: *timeout_ms,
                uuid,
            }),
        }
        .map_err(|e| e.to_string())?;
        let geometry = (made.info().block_size, made.info().num_blocks);
        if b.qos != QosLimits::default() {
            apply_qos(made.as_ref(), &b.qos)?;
        }
        self.bdevs.insert(b.name.clone(), made);
        Ok(geometry)
    }

    fn delete_bdev(&mut self, name: &str) {
        self.bdevs.remove(name);
    }

    fn set_qos(&mut self, name: &str, qos: &QosLimits) -> Result<(), String> {
        let b = self.bdev(name)?;
        apply_qos(b.as_ref(), qos)
    }

    fn iostat(&self, names: &[String]) -> Option<Value> {
        let list: Vec<Arc<dyn sluice_bdev::Bdev>> = names
            .iter()
            .filter_map(|n| self.bdevs.get(n).cloned())
            .collect();
        Some(brpc::iostat_json(&list))
    }

    fn listen(&mut self, req: &ListenRequest<'_>) -> Result<Box<dyn Endpoint>, DataPlaneError> {
        let other = |m: String| DataPlaneError::Other(m);
        // Bind first: a bad or busy path fails before anything else is built.
        let server =
            Server::bind(req.socket, server_options(req.transport)).map_err(|e| match e {
                vfu_server::ServerError::InUse(p) => DataPlaneError::SocketInUse(p),
                e => other(e.to_string()),
            })?;
        let nqn = &req.subsystem.nqn;
        let counter = self
            .next_cntlid
            .entry(nqn.clone())
            .or_insert(req.subsystem.min_cntlid);
        let cntlid = *counter;
        *counter = if cntlid >= req.subsystem.max_cntlid {
            req.subsystem.min_cntlid
        } else {
            cntlid.saturating_add(1)
        };
        let cfg = controller_config(req, cntlid);
        let mut ctrl = Controller::new(cfg, Arc::new(NoInterrupts))
            .map_err(|e| other(format!("controller: {e}")))?;
        for ns in req.namespaces {
            let b = self.bdev(&ns.bdev_name).map_err(other)?;
            ctrl.add_namespace(Some(ns.nsid), b)
                .map_err(|e| other(format!("namespace {}: {e}", ns.nsid)))?;
        }
        let idx = self
            .least_loaded()
            .map(|(i, _)| i)
            .ok_or_else(|| other("no poll thread".into()))?;
        let pt = self
            .pollers
            .get_mut(idx)
            .ok_or_else(|| other("no poll thread".into()))?;
        pt.start(idx)
            .map_err(|e| other(format!("cannot start poll thread: {e}")))?;
        let poller = &pt.handle;
        let (mut ep, handle) =
            nvme_endpoint(ctrl, NvmePciIds::default(), poller).map_err(|e| other(e.to_string()))?;
        let stop = server.shutdown_handle();
        let path = req.socket.to_path_buf();
        let thread_nqn = nqn.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-endpoint".into())
            .spawn(move || {
                if let Err(e) = server.serve(&mut ep) {
                    tracing::warn!(nqn = thread_nqn, error = %e, "endpoint stopped");
                }
                // `ep` and `server` drop here: the socket file is removed.
            })
            .map_err(|e| other(format!("endpoint thread: {e}")))?;
        let live = Arc::new(Live {
            nqn: nqn.clone(),
            poller: idx,
            cntlid,
            handle,
        });
        self.live.retain(|w| w.strong_count() > 0);
        self.live.push(Arc::downgrade(&live));
        tracing::info!(nqn, socket = %path.display(), cntlid, poller = idx, "listening");
        Ok(Box::new(NvmeEndpoint {
            path,
            stop,
            thread: Some(thread),
            live: Some(live),
        }))
    }

    fn namespaces_changed(&mut self, nqn: &str, namespaces: &[NamespaceView]) {
        for l in self.live().into_iter().filter(|l| l.nqn == nqn) {
            let current = match l.handle.call(false, |c| c.namespaces()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(nqn, error = %e, "controller unreachable");
                    continue;
                }
            };
            for nsid in current
                .iter()
                .filter(|id| namespaces.iter().all(|n| n.nsid != **id))
            {
                if let Err(e) = l.handle.remove_namespace(*nsid) {
                    tracing::warn!(nqn, nsid, error = %e, "namespace removal failed");
                }
            }
            for ns in namespaces.iter().filter(|n| !current.contains(&n.nsid)) {
                let added = self.bdev(&ns.bdev_name).and_then(|b| {
                    l.handle
                        .add_namespace(Some(ns.nsid), b)
                        .map_err(|e| e.to_string())
                });
                if let Err(e) = added {
                    tracing::warn!(nqn, nsid = ns.nsid, error = %e, "namespace add failed");
                }
            }
        }
    }

    fn poll_group_stats(&self) -> Value {
        let live = self.live();
        let groups: Vec<Value> = self
            .pollers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut placed = 0u64;
                let mut admin = 0u64;
                let mut t = sluice_nvme::ControllerStats::default();
                for l in live.iter().filter(|l| l.poller == i) {
                    placed += 1;
                    // The admin queue pair exists while a host has the controller enabled.
                    admin += u64::from(l.enabled());
                    if let Ok(s) = l.handle.stats() {
                        t.admin_commands += s.admin_commands;
                        t.io_commands += s.io_commands;
                        t.completions += s.completions;
                        t.interrupts += s.interrupts;
                        t.cq_full += s.cq_full;
                        t.shadow_doorbell_reads += s.shadow_doorbell_reads;
                        t.invalid_doorbell_writes += s.invalid_doorbell_writes;
                        t.errors += s.errors;
                        t.backend_busy += s.backend_busy;
                        t.io_queues += s.io_queues;
                        t.io_queues_created += s.io_queues_created;
                    }
                }
                json!({
                    "name": format!("nvmf_tgt_poll_group_{i:03}"),
                    "cpu": p.cpu,
                    "controllers": placed,
                    "admin_qpairs": admin,
                    // I/O queue pairs created by the controllers placed here (cumulative
                    // over their lifetime), and those that exist now.
                    "io_qpairs": t.io_queues_created,
                    "current_admin_qpairs": admin,
                    "current_io_qpairs": t.io_queues,
                    "current_unassociated_qpairs": 0,
                    "pending_bdev_io": 0,
                    "completed_nvme_io": t.io_commands,
                    "transports": [{
                        "trtype": "VFIOUSER",
                        "admin_commands": t.admin_commands,
                        "io_commands": t.io_commands,
                        "completions": t.completions,
                        "intr": t.interrupts,
                        "cq_full": t.cq_full,
                        "shadow_doorbell_reads": t.shadow_doorbell_reads,
                        "invalid_doorbell_writes": t.invalid_doorbell_writes,
                        "errors": t.errors,
                        "backend_busy": t.backend_busy
                    }]
                })
            })
            .collect();
        Value::Array(groups)
    }

    fn shutdown(&mut self) {
        // Endpoints are gone (their controllers quiesced and detached). Stop the poll
        // threads first: a busy poller pinned to a CPU would otherwise compete with the
        // flushes below for the whole shutdown.
        for p in &self.pollers {
            p.handle.stop();
        }
        for p in &mut self.pollers {
            if let Some(t) = p.thread.take() {
                let _ = t.join();
            }
        }
        for (name, b) in &self.bdevs {
            if b.info().caps.flush {
                let start = Instant::now();
                match flush(b.as_ref()) {
                    Ok(()) => tracing::debug!(
                        bdev = name,
                        ms = start.elapsed().as_millis(),
                        "flushed at shutdown"
                    ),
                    Err(e) => tracing::warn!(bdev = name, error = %e, "flush at shutdown failed"),
                }
            }
        }
    }
}

fn apply_qos(b: &dyn sluice_bdev::Bdev, q: &QosLimits) -> Result<(), String> {
    let s = sluice_bdev::qos::QosSettings {
        rw_ios_per_sec: Some(q.rw_ios_per_sec),
        rw_mbytes_per_sec: Some(q.rw_mbytes_per_sec),
        r_mbytes_per_sec: Some(q.r_mbytes_per_sec),
        w_mbytes_per_sec: Some(q.w_mbytes_per_sec),
    };
    brpc::bdev_set_qos_limit(b, &s).map_err(|e| e.to_string())
}

/// Flush one bdev through a fresh channel, waiting at most 10 s.
fn flush(b: &dyn sluice_bdev::Bdev) -> Result<(), String> {
    let mut ch = b.open_channel().map_err(|e| e.to_string())?;
    ch.submit(sluice_bdev::IoRequest::new(
        sluice_bdev::IoOp::Flush,
        0,
        0,
        1,
    ))
    .map_err(|_| "flush rejected".to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut result = None;
    while result.is_none() {
        ch.poll(&mut |c| result = Some(c.result));
        if Instant::now() > deadline {
            return Err("flush timed out".into());
        }
        if result.is_none() {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    match result {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("no completion".into()),
    }
}

/// A listener: endpoint thread + controller on a poller.
struct NvmeEndpoint {
    path: PathBuf,
    stop: ShutdownHandle,
    thread: Option<JoinHandle<()>>,
    live: Option<Arc<Live>>,
}

impl Endpoint for NvmeEndpoint {
    fn socket_path(&self) -> &Path {
        &self.path
    }

    fn begin_stop(&self) {
        self.stop.shutdown();
    }

    fn controller(&self) -> Option<ControllerInfo> {
        let live = self.live.as_ref()?;
        live.enabled().then_some(ControllerInfo {
            cntlid: live.cntlid,
            // Lock-free mirror kept by the poll thread.
            num_io_qpairs: live.handle.shared().io_queues(),
        })
    }
}

impl Drop for NvmeEndpoint {
    fn drop(&mut self) {
        // Stop accepting, detach the client (drops its DMA maps), remove the socket.
        self.stop.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Let in-flight I/O finish (quiesce), then take the controller off its poller.
        if let Some(live) = self.live.take() {
            let _ = live.handle.call(true, |_| ());
            match Arc::try_unwrap(live) {
                Ok(l) => {
                    if let Err(e) = l.handle.detach() {
                        tracing::debug!(error = %e, "controller detach");
                    }
                }
                Err(_) => tracing::debug!("controller still referenced; left on poller"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::{TransportOpts, DEFAULT_DMA_TIMEOUT_MS};
    use std::time::Duration;

    #[test]
    fn default_transport_keeps_the_server_defaults() {
        let o = server_options(&TransportOpts::default());
        let d = ServerOptions::default();
        assert_eq!(o.dma_timeout, d.dma_timeout);
        assert_eq!(o.dma_timeout, vfu_server::session::DMA_TIMEOUT);
        assert_eq!(
            Duration::from_millis(u64::from(DEFAULT_DMA_TIMEOUT_MS)),
            vfu_server::session::DMA_TIMEOUT
        );
        assert_eq!(o.require_sealed_dma, d.require_sealed_dma);
        assert_eq!(o.io_timeout, d.io_timeout);
        assert_eq!(o.mode, d.mode);
    }

    #[test]
    fn transport_dma_options_reach_the_server() {
        let t = TransportOpts {
            require_sealed_dma: true,
            dma_timeout_ms: 750,
            ..TransportOpts::default()
        };
        let o = server_options(&t);
        assert!(o.require_sealed_dma);
        assert_eq!(o.dma_timeout, Duration::from_millis(750));
        let unlimited = server_options(&TransportOpts {
            dma_timeout_ms: 0,
            ..TransportOpts::default()
        });
        assert!(unlimited.dma_timeout.is_zero(), "0 means no limit");
        assert!(!unlimited.require_sealed_dma);
    }
}
