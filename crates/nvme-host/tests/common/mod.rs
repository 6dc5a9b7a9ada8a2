//! The whole target stack in-process: `vfu-server` endpoint + `sluice-pci` endpoint +
//! `sluice-nvme` controller on a poll thread, over a real Unix socket.
//!
//! `NvmeFunction` is a local adapter (NVMe controller as a `PciFunction`): the NVMe crate
//! does not ship one yet. Replace it with the crate's own once it lands.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sluice_nvme::{ControllerConfig, ControllerHandle, PollMode, Poller, PollerHandle, RamBackend};
use sluice_pci::{BarConfig, MsixConfig, PciConfig, PciEndpoint, PciFunction};
use vfu_server::{
    DeviceContext, DmaEvent, DmaMemory, Errno, RegionMmap, ResetKind, Server, ServerOptions,
};

use sluice_nvme_host::{Controller, ControllerOptions, DoorbellMode};

struct PciIrq(sluice_pci::InterruptSink);

impl sluice_nvme::InterruptSink for PciIrq {
    fn trigger(&self, vector: u16) {
        let _ = self.0.fire(vector);
    }
}

/// NVMe controller (on a poll thread) as a PCI function.
pub struct NvmeFunction {
    handle: Arc<ControllerHandle>,
    doorbell_fd: Option<Arc<OwnedFd>>,
}

impl PciFunction for NvmeFunction {
    fn bar_read(&mut self, bar: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        if bar != 0 {
            return Err(Errno::INVAL);
        }
        self.handle
            .bar0_read(offset, data)
            .map_err(|_| Errno::INVAL)
    }

    fn bar_write(&mut self, bar: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        if bar != 0 {
            return Err(Errno::INVAL);
        }
        self.handle
            .bar0_write(offset, data)
            .map_err(|_| Errno::INVAL)
    }

    fn bar_mmap(&self, bar: u32) -> Option<RegionMmap> {
        if bar != 0 {
            return None;
        }
        let fd = self.doorbell_fd.clone()?;
        Some(RegionMmap {
            fd,
            // The memfd holds only the doorbell page (file offset 0 = BAR0 0x1000).
            file_offset: 0u64.wrapping_sub(0x1000),
            areas: vec![vfu_server::SparseArea {
                offset: 0x1000,
                size: 0x1000,
            }],
        })
    }

    fn reset(&mut self, _kind: ResetKind) -> Result<(), Errno> {
        self.handle.reset().map_err(|_| Errno::IO)
    }

    fn attach(&mut self, _ctx: &DeviceContext) {}

    fn detach(&mut self) {
        let _ = self.handle.set_memory(None);
    }

    fn dma_map(&mut self, _ev: &DmaEvent, mem: &Arc<DmaMemory>) -> Result<(), Errno> {
        self.handle
            .set_memory(Some(mem.clone()))
            .map_err(|_| Errno::IO)
    }

    fn dma_unmap(&mut self, _ev: &DmaEvent, mem: &Arc<DmaMemory>) -> Result<(), Errno> {
        self.handle
            .set_memory(Some(mem.clone()))
            .map_err(|_| Errno::IO)
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct TargetOptions {
    /// Doorbell page mappable.
    pub mappable_bar0: bool,
    /// Offer Doorbell Buffer Config.
    pub shadow_doorbells: bool,
    /// Namespaces: (nsid, block size, blocks).
    pub namespaces: Vec<(u32, u32, u64)>,
    /// Max I/O queue pairs.
    pub max_io_queues: u16,
    /// Max queue entries.
    pub max_queue_depth: u32,
    /// MSI-X vectors.
    pub vectors: u16,
}

impl Default for TargetOptions {
    fn default() -> Self {
        Self {
            mappable_bar0: true,
            shadow_doorbells: true,
            namespaces: vec![(1, 512, 16384)],
            max_io_queues: 31,
            max_queue_depth: 256,
            vectors: 32,
        }
    }
}

/// A running in-process target.
pub struct Target {
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub ctrl: Arc<ControllerHandle>,
    shutdown: vfu_server::ShutdownHandle,
    server: Option<JoinHandle<()>>,
    poller: PollerHandle,
    poll_thread: Option<JoinHandle<()>>,
}

impl Target {
    pub fn start(opts: TargetOptions) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cntrl");
        let (mut poller, poller_handle) = Poller::new();
        let poll_thread = std::thread::spawn(move || {
            poller.run(PollMode::Adaptive {
                spin_polls: 200,
                max_sleep: Duration::from_micros(200),
            })
        });
        let pci = PciConfig::builder()
            .ids(0x4e58, 0x0001)
            .subsystem(0x4e58, 0x0000)
            .class(0x01, 0x08, 0x02)
            .bar(0, BarConfig::memory32(0x4000))
            .msix(MsixConfig {
                vectors: opts.vectors,
                table_bar: 4,
                pba_bar: 5,
            })
            .build()
            .unwrap();
        let cfg = ControllerConfig {
            mappable_bar0: opts.mappable_bar0,
            shadow_doorbells: opts.shadow_doorbells,
            max_io_queues: opts.max_io_queues,
            max_queue_depth: opts.max_queue_depth,
            ..ControllerConfig::default()
        };
        let mut handle_out = None;
        let endpoint = PciEndpoint::build(pci, |sink| {
            let mut c = sluice_nvme::Controller::new(cfg.clone(), Arc::new(PciIrq(sink)))?;
            for &(nsid, bs, blocks) in &opts.namespaces {
                let mut uuid = [0u8; 16];
                uuid[0] = nsid as u8;
                uuid[15] = 0x5a;
                c.add_namespace(Some(nsid), Arc::new(RamBackend::new(bs, blocks, uuid)))
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            }
            let h = Arc::new(
                poller_handle
                    .attach(c)
                    .map_err(|_| std::io::Error::other("poller gone"))?,
            );
            let doorbell_fd = if cfg.mappable_bar0 {
                Some(Arc::new(h.doorbell_fd().as_fd().try_clone_to_owned()?))
            } else {
                None
            };
            handle_out = Some(h.clone());
            Ok::<_, std::io::Error>(NvmeFunction {
                handle: h,
                doorbell_fd,
            })
        })
        .unwrap();
        let server = Server::bind(&sock, ServerOptions::default()).unwrap();
        let shutdown = server.shutdown_handle();
        let server_thread = std::thread::spawn(move || {
            let mut ep = endpoint;
            let _ = server.serve(&mut ep);
        });
        Target {
            dir,
            sock,
            ctrl: handle_out.unwrap(),
            shutdown,
            server: Some(server_thread),
            poller: poller_handle,
            poll_thread: Some(poll_thread),
        }
    }

    /// Connects the driver (vfu-client transport).
    pub fn connect(&self) -> Controller {
        self.connect_with(DoorbellMode::Auto)
    }

    /// Connects the driver with a doorbell policy.
    pub fn connect_with(&self, doorbells: DoorbellMode) -> Controller {
        let opts = ControllerOptions {
            dma_size: 16 << 20,
            admin_timeout: Duration::from_secs(5),
            doorbells,
            ..ControllerOptions::default()
        };
        Controller::connect(&self.sock, opts).expect("controller bring-up")
    }

    /// The `-r` string for this target.
    pub fn trid(&self) -> String {
        format!(
            "trtype:VFIOUSER traddr:{} subnqn:nqn.2024-01.io.sluice:cnode0",
            self.dir.path().display()
        )
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.shutdown.shutdown();
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
        self.poller.stop();
        if let Some(t) = self.poll_thread.take() {
            let _ = t.join();
        }
    }
}
