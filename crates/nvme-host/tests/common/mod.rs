//! The whole target stack in-process: `vfu-server` endpoint + `sluice-pci` endpoint (via
//! `sluice_nvme::pci::nvme_endpoint`) + `sluice-nvme` controller on a poll thread +
//! `sluice-bdev` malloc namespaces, over a real Unix socket.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sluice_bdev::{Bdev, MallocBdev};
use sluice_nvme::pci::{nvme_endpoint, NvmePciIds};
use sluice_nvme::{
    ControllerConfig, ControllerHandle, NoInterrupts, PollMode, Poller, PollerHandle,
};
use vfu_server::{Server, ServerOptions};

use sluice_nvme_host::{Controller, ControllerOptions, DoorbellMode};

/// A malloc bdev for a namespace.
pub fn malloc(name: &str, block_size: u32, blocks: u64) -> Arc<dyn Bdev> {
    Arc::new(MallocBdev::new(name, block_size, blocks, None).unwrap())
}

/// Deterministic pseudo-random bytes (xorshift) for data checks.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
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
}

impl Default for TargetOptions {
    fn default() -> Self {
        Self {
            mappable_bar0: true,
            shadow_doorbells: true,
            namespaces: vec![(1, 512, 16384)],
            max_io_queues: 31,
            max_queue_depth: 256,
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
        let cfg = ControllerConfig {
            mappable_bar0: opts.mappable_bar0,
            shadow_doorbells: opts.shadow_doorbells,
            max_io_queues: opts.max_io_queues,
            max_queue_depth: opts.max_queue_depth,
            ..ControllerConfig::default()
        };
        let mut ctrl = sluice_nvme::Controller::new(cfg, Arc::new(NoInterrupts)).unwrap();
        for &(nsid, bs, blocks) in &opts.namespaces {
            ctrl.add_namespace(Some(nsid), malloc(&format!("Malloc{nsid}"), bs, blocks))
                .unwrap();
        }
        let (endpoint, handle) =
            nvme_endpoint(ctrl, NvmePciIds::default(), &poller_handle).unwrap();
        let server = Server::bind(&sock, ServerOptions::default()).unwrap();
        let shutdown = server.shutdown_handle();
        let server_thread = std::thread::spawn(move || {
            let mut ep = endpoint;
            let _ = server.serve(&mut ep);
        });
        Target {
            dir,
            sock,
            ctrl: Arc::new(handle),
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
        self.connect_opts(ControllerOptions {
            doorbells,
            ..Self::options()
        })
    }

    /// The driver options of [`Target::connect`].
    pub fn options() -> ControllerOptions {
        ControllerOptions {
            dma_size: 16 << 20,
            admin_timeout: Duration::from_secs(5),
            ..ControllerOptions::default()
        }
    }

    /// Connects the driver with explicit options.
    pub fn connect_opts(&self, opts: ControllerOptions) -> Controller {
        Controller::connect(&self.sock, opts).expect("controller bring-up")
    }

    /// Stops the controller's poll thread (the target then never completes a command, but
    /// the vfio-user connection stays up).
    pub fn stop_poller(&mut self) {
        self.poller.stop();
        if let Some(t) = self.poll_thread.take() {
            let _ = t.join();
        }
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
