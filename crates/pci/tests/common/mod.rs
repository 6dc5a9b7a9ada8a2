//! Shared rig for the socket tests: a tiny sample function behind `PciEndpoint`, served by
//! `vfu_server::Server` on a Unix socket in a temporary directory.
#![allow(dead_code)]

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::io::Errno;
use sluice_pci::{
    BarConfig, FireOutcome, InterruptSink, MsixConfig, PciConfig, PciEndpoint, PciFunction,
};
use vfu_server::proto::SparseArea;
use vfu_server::{RegionMmap, ResetKind, Server, ServerOptions, ShutdownHandle};

/// Reads and resets an eventfd counter (0 when nothing was signalled).
pub fn count(fd: &OwnedFd) -> u64 {
    let mut b = [0u8; 8];
    match rustix::io::read(fd, &mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        Ok(_) | Err(Errno::AGAIN) => 0,
        Err(e) => panic!("eventfd read: {e}"),
    }
}

/// Config region index.
pub const CONFIG: u32 = 7;
/// MSI-X irq index.
pub const MSIX: u32 = 2;
/// INTx irq index.
pub const INTX: u32 = 0;

/// BAR0 (16 KiB): callback registers in 0..0x1000 (offset 0 = "fire vector N", offset 4
/// = last outcome), a memfd-backed page at 0x1000 exposed as a sparse area. BAR2 (64-bit,
/// 4 KiB): plain callback scratch memory.
pub struct Sample {
    sink: InterruptSink,
    mem: Arc<OwnedFd>,
    last_outcome: u32,
    scratch: Vec<u8>,
    resets: Arc<Mutex<Vec<ResetKind>>>,
}

impl PciFunction for Sample {
    fn bar_read(&mut self, bar: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        match (bar, offset) {
            (0, 4) if data.len() == 4 => data.copy_from_slice(&self.last_outcome.to_le_bytes()),
            (0, 0x1000..) => {
                let n = rustix::io::pread(&self.mem, &mut *data, offset)?;
                if n != data.len() {
                    return Err(Errno::IO);
                }
            }
            (0, _) => data.fill(0),
            (2, _) => {
                let o = offset as usize;
                data.copy_from_slice(&self.scratch[o..o + data.len()]);
            }
            _ => return Err(Errno::INVAL),
        }
        Ok(())
    }

    fn bar_write(&mut self, bar: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        match (bar, offset) {
            (0, 0) if data.len() == 4 => {
                let v = u32::from_le_bytes(data.try_into().unwrap());
                let vector = u16::try_from(v).map_err(|_| Errno::INVAL)?;
                self.last_outcome = match self.sink.fire(vector) {
                    FireOutcome::Delivered => 1,
                    FireOutcome::Pending => 2,
                    FireOutcome::Dropped => 3,
                };
                Ok(())
            }
            (0, _) => Err(Errno::INVAL),
            (2, _) => {
                let o = offset as usize;
                self.scratch[o..o + data.len()].copy_from_slice(data);
                Ok(())
            }
            _ => Err(Errno::INVAL),
        }
    }

    fn bar_mmap(&self, bar: u32) -> Option<RegionMmap> {
        (bar == 0).then(|| RegionMmap {
            fd: self.mem.clone(),
            file_offset: 0,
            areas: vec![SparseArea {
                offset: 0x1000,
                size: 0x1000,
            }],
        })
    }

    fn reset(&mut self, kind: ResetKind) -> Result<(), Errno> {
        self.resets.lock().unwrap().push(kind);
        Ok(())
    }
}

/// A running server with the sample function.
pub struct ServerRig {
    /// Socket path.
    pub path: PathBuf,
    /// The endpoint's interrupt sink (what a poll thread would hold).
    pub sink: InterruptSink,
    /// Resets the function saw.
    pub resets: Arc<Mutex<Vec<ResetKind>>>,
    stop: ShutdownHandle,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for ServerRig {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Starts the server (SPDK-like layout: BAR0 16 KiB with a sparse page, BAR2 64-bit,
/// 512 MSI-X vectors in BAR4/BAR5, INTA).
pub fn server() -> ServerRig {
    let cfg = PciConfig::builder()
        .ids(0x4e58, 0x0001)
        .subsystem(0x4e58, 0x0000)
        .class(0x01, 0x08, 0x02)
        .bar(0, BarConfig::memory32(0x4000))
        .bar(2, BarConfig::memory64(0x1000))
        .msix(MsixConfig {
            vectors: 512,
            table_bar: 4,
            pba_bar: 5,
        })
        .build()
        .unwrap();
    let mem = memfd_create("sample-bar0", MemfdFlags::CLOEXEC).unwrap();
    ftruncate(&mem, 0x4000).unwrap();
    let mem = Arc::new(mem);
    let resets = Arc::new(Mutex::new(Vec::new()));
    let r2 = resets.clone();
    let mut ep = PciEndpoint::build(cfg, |sink| {
        Ok::<_, ()>(Sample {
            sink,
            mem,
            last_outcome: 0,
            scratch: vec![0; 0x1000],
            resets: r2,
        })
    })
    .unwrap();
    let sink = ep.interrupt_sink();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cntrl");
    let server = Server::bind(&path, ServerOptions::default()).unwrap();
    let stop = server.shutdown_handle();
    let thread = std::thread::spawn(move || server.serve(&mut ep).unwrap());
    ServerRig {
        path,
        sink,
        resets,
        stop,
        thread: Some(thread),
        _dir: dir,
    }
}
