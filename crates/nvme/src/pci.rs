//! The NVMe controller as a `sluice_pci::PciFunction`.
//!
//! Layout (like SPDK): class 01/08/02; BAR0 32-bit 16 KiB: registers in 0..0x1000 by
//! region access, the doorbell page at 0x1000 backed by a memfd and offered as the only
//! sparse-mmap area (unless BAR0 is configured not mappable: then doorbell writes trap and
//! are stored into the same page); MSI-X with 512 vectors (one per possible queue pair,
//! as SPDK) with the table in BAR4 and the PBA in BAR5; INTA.
//!
//! The function runs on the endpoint thread and talks to its controller, which lives on a
//! poll thread, through a [`ControllerHandle`].

use std::sync::Arc;

use rustix::io::Errno;
use sluice_pci::{BarConfig, ConfigError, MsixConfig, PciConfig, PciEndpoint, PciFunction};
use vfu_server::proto::SparseArea;
use vfu_server::{DeviceContext, DmaEvent, DmaHandle, DmaMemory, RegionMmap, ResetKind};

use crate::ctrl::{BarError, Controller, InterruptSink, MSIX_VECTORS};
use crate::poller::{ControllerHandle, PollerGone, PollerHandle};
use crate::sys::DOORBELL_PAGE_SIZE;

/// BAR0 size (SPDK v26.05+: 16 KiB).
pub const BAR0_SIZE: u64 = 0x4000;

/// PCI identity of the NVMe function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmePciIds {
    /// Vendor id (default 0x4e58 like SPDK).
    pub vendor_id: u16,
    /// Device id (default 0x0001).
    pub device_id: u16,
    /// Subsystem vendor id.
    pub subsystem_vendor_id: u16,
    /// Subsystem id.
    pub subsystem_id: u16,
}

impl Default for NvmePciIds {
    fn default() -> Self {
        NvmePciIds {
            vendor_id: 0x4e58,
            device_id: 0x0001,
            subsystem_vendor_id: 0x4e58,
            subsystem_id: 0,
        }
    }
}

/// The PCI description of an NVMe function.
pub fn pci_config(ids: NvmePciIds) -> Result<PciConfig, ConfigError> {
    PciConfig::builder()
        .ids(ids.vendor_id, ids.device_id)
        .subsystem(ids.subsystem_vendor_id, ids.subsystem_id)
        .class(0x01, 0x08, 0x02)
        .bar(0, BarConfig::memory32(BAR0_SIZE))
        .msix(MsixConfig {
            vectors: MSIX_VECTORS,
            table_bar: 4,
            pba_bar: 5,
        })
        .build()
}

/// Errors building an NVMe endpoint.
#[derive(Debug, thiserror::Error)]
pub enum NvmePciError {
    /// Bad PCI configuration.
    #[error("PCI configuration: {0}")]
    Config(#[from] ConfigError),
    /// The poll thread is gone.
    #[error(transparent)]
    Poller(#[from] PollerGone),
}

struct PciIrq(sluice_pci::InterruptSink);

impl InterruptSink for PciIrq {
    fn trigger(&self, vector: u16) {
        let _ = self.0.fire(vector);
    }
}

/// The NVMe `PciFunction`.
#[derive(Debug)]
pub struct NvmeFunction {
    handle: ControllerHandle,
    mappable_bar0: bool,
    bus_master: bool,
    memory: Option<Arc<DmaMemory>>,
    /// The session's DMA handle: DMA_READ/WRITE for fd-less windows (bounce buffers).
    dma: Option<DmaHandle>,
}

/// Build a PCI endpoint around `ctrl`, placing the controller on `poller`. Returns the
/// endpoint (give it to `vfu_server::Server::serve`) and a controller handle for the
/// control plane (namespaces, stats).
pub fn nvme_endpoint(
    mut ctrl: Controller,
    ids: NvmePciIds,
    poller: &PollerHandle,
) -> Result<(PciEndpoint<NvmeFunction>, ControllerHandle), NvmePciError> {
    let cfg = pci_config(ids)?;
    let mappable_bar0 = ctrl.config().mappable_bar0;
    let mut control = None;
    let ep = PciEndpoint::build(cfg, |sink| {
        ctrl.set_interrupt_sink(Arc::new(PciIrq(sink)));
        let handle = poller.attach(ctrl)?;
        control = Some(handle.clone());
        Ok::<_, NvmePciError>(NvmeFunction {
            handle,
            mappable_bar0,
            bus_master: false,
            memory: None,
            dma: None,
        })
    })?;
    let control = control.ok_or(NvmePciError::Poller(PollerGone))?;
    Ok((ep, control))
}

fn errno(e: BarError) -> Errno {
    match e {
        BarError::WriteOnly => Errno::PERM,
        BarError::InvalidAccess | BarError::OutOfRange => Errno::INVAL,
    }
}

impl NvmeFunction {
    /// The controller handle.
    pub fn handle(&self) -> &ControllerHandle {
        &self.handle
    }

    fn push_memory(&self) -> Result<(), Errno> {
        let (mem, dma) = if self.bus_master {
            let dma = self
                .dma
                .clone()
                .map(|d| Arc::new(d) as Arc<dyn crate::bounce::MsgDma>);
            (self.memory.clone(), dma)
        } else {
            (None, None)
        };
        self.handle
            .call(true, move |c| {
                c.set_memory(mem);
                c.set_msg_dma(dma);
            })
            .map_err(|_| Errno::IO)
    }
}

impl PciFunction for NvmeFunction {
    fn bar_read(&mut self, bar: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        if bar != 0 {
            return Err(Errno::INVAL);
        }
        self.handle.bar0_read(offset, data).map_err(errno)
    }

    fn bar_write(&mut self, bar: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        if bar != 0 {
            return Err(Errno::INVAL);
        }
        self.handle.bar0_write(offset, data).map_err(errno)
    }

    fn bar_mmap(&self, bar: u32) -> Option<RegionMmap> {
        (bar == 0 && self.mappable_bar0).then(|| RegionMmap {
            fd: self.handle.shared().doorbells.fd_arc(),
            file_offset: 0,
            areas: vec![SparseArea {
                offset: 0x1000,
                size: DOORBELL_PAGE_SIZE as u64,
            }],
        })
    }

    fn reset(&mut self, _kind: ResetKind) -> Result<(), Errno> {
        // Both FLR and DEVICE_RESET reset the NVMe controller (SPDK leaves a FIXME). The
        // endpoint then clears the command register without a `command_changed`: no DMA
        // until the client sets bus master again.
        self.bus_master = false;
        self.handle
            .call(true, |c| {
                c.function_reset();
                c.set_memory(None);
                c.set_msg_dma(None);
            })
            .map_err(|_| Errno::IO)
    }

    fn attach(&mut self, ctx: &DeviceContext) {
        self.memory = Some(ctx.dma.memory());
        self.dma = Some(ctx.dma.clone());
        let _ = self.push_memory();
    }

    fn detach(&mut self) {
        self.memory = None;
        self.dma = None;
        let _ = self.handle.call(true, |c| {
            c.set_memory(None);
            c.set_msg_dma(None);
        });
    }

    fn dma_map(&mut self, _ev: &DmaEvent, mem: &Arc<DmaMemory>) -> Result<(), Errno> {
        self.memory = Some(Arc::clone(mem));
        self.push_memory()
    }

    fn dma_unmap(&mut self, _ev: &DmaEvent, mem: &Arc<DmaMemory>) -> Result<(), Errno> {
        // The poll thread quiesces before installing the smaller snapshot.
        self.memory = Some(Arc::clone(mem));
        self.push_memory()
    }

    fn intx_level(&mut self) -> Option<bool> {
        // Level semantics: asserted while an interrupt-enabled CQ holds unconsumed entries.
        Some(self.handle.shared().intx_pending(self.memory.as_deref()))
    }

    fn command_changed(&mut self, command: u16) {
        let bm = command & 0x4 != 0;
        if bm != self.bus_master {
            self.bus_master = bm;
            let _ = self.push_memory();
        }
    }
}
