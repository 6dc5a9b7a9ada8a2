//! The device-facing API: what every emulated device implements ([`Device`]) and the types
//! the server hands it.

use std::os::fd::OwnedFd;
use std::sync::Arc;

pub use rustix::io::Errno;
pub use vfu_proto::SparseArea;

use crate::dma::{DmaHandle, DmaMemory};
use crate::irqs::Irqs;

/// Device-wide information (DEVICE_GET_INFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `vfu_proto::DEVICE_FLAG_*` (PCI | RESET).
    pub flags: u32,
    /// Number of regions (>= 9 for PCI).
    pub num_regions: u32,
    /// Number of IRQ indices (5 for PCI).
    pub num_irqs: u32,
}

impl Default for DeviceInfo {
    fn default() -> Self {
        DeviceInfo {
            flags: vfu_proto::DEVICE_FLAG_PCI | vfu_proto::DEVICE_FLAG_RESET,
            num_regions: 9,
            num_irqs: 5,
        }
    }
}

/// An fd-backed, mmap-able part of a region.
#[derive(Debug, Clone)]
pub struct RegionMmap {
    /// File backing the region (sent once per REGION_INFO reply).
    pub fd: Arc<OwnedFd>,
    /// Offset in `fd` where region offset 0 lives.
    pub file_offset: u64,
    /// Sparse mmap-able areas (region-relative). Empty means the whole region.
    /// Keep at most one area per region for SPDK hosts, and never put the MSI-X table/PBA here.
    pub areas: Vec<SparseArea>,
}

/// One region (REGION_INFO).
#[derive(Debug, Clone)]
pub struct RegionInfo {
    /// Size in bytes (0 = region not implemented).
    pub size: u64,
    /// `vfu_proto::REGION_FLAG_READ | REGION_FLAG_WRITE`; MMAP and CAPS are added by the server.
    pub flags: u32,
    /// fd-backed mapping, if any. Region reads/writes still go to the device callbacks.
    pub mmap: Option<RegionMmap>,
}

/// One IRQ index (IRQ_INFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    /// Number of vectors.
    pub count: u32,
    /// `vfu_proto::IRQ_INFO_*` flags (EVENTFD | MASKABLE ...).
    pub flags: u32,
}

/// Per-client context given to [`Device::attach`].
#[derive(Debug, Clone)]
pub struct DeviceContext {
    /// The eventfd table for this client (lock-free trigger from any thread).
    pub irqs: Arc<Irqs>,
    /// DMA access handle (mapped memory and message-based access for fd-less regions).
    pub dma: DmaHandle,
    /// Capabilities the client announced.
    pub client_caps: vfu_proto::Capabilities,
}

/// DMA access rights of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaProt {
    /// Device may read.
    pub read: bool,
    /// Device may write.
    pub write: bool,
}

/// A DMA_MAP / DMA_UNMAP notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaEvent {
    /// IOVA of the window.
    pub iova: u64,
    /// Size of the window.
    pub size: u64,
    /// Access rights.
    pub prot: DmaProt,
    /// True when the window is mmapped (in the snapshot); false when it is reachable only
    /// through DMA_READ/DMA_WRITE messages.
    pub mapped: bool,
}

/// Why a device is reset.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    /// DEVICE_RESET message.
    Device,
    /// PCI function-level reset (raised by the PCI layer itself).
    Flr,
}

/// SET_IRQS action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqAction {
    /// ACTION_MASK.
    Mask,
    /// ACTION_UNMASK.
    Unmask,
    /// ACTION_TRIGGER.
    Trigger,
}

/// SET_IRQS data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IrqSetData {
    /// DATA_NONE.
    None,
    /// DATA_BOOL: one byte per vector.
    Bool(Vec<bool>),
    /// DATA_EVENTFD: `assigned` is false when fds were de-assigned (no fds sent).
    Eventfd {
        /// Whether fds were installed (true) or removed (false).
        assigned: bool,
    },
}

/// A validated SET_IRQS request, passed to [`Device::set_irqs`] after the server updated [`Irqs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqSetEvent {
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Vector count (0 = whole index, only with Trigger + None: disable all).
    pub count: u32,
    /// Action.
    pub action: IrqAction,
    /// Data.
    pub data: IrqSetData,
}

/// DEVICE_FEATURE operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureOp {
    /// GET: reply data appended.
    Get,
    /// SET: request data consumed.
    Set,
    /// PROBE (possibly with GET/SET bits: probe that op).
    Probe {
        /// GET bit was set.
        get: bool,
        /// SET bit was set.
        set: bool,
    },
}

/// A DEVICE_FEATURE request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureRequest<'a> {
    /// Feature index (bits 0-15).
    pub feature: u16,
    /// Operation.
    pub op: FeatureOp,
    /// Data after the 8-byte header.
    pub data: &'a [u8],
    /// Most reply-data bytes the client accepts (argsz - 8).
    pub max_reply: usize,
}

/// What every emulated device implements. Called on the endpoint thread only.
///
/// All peer input has been validated before a callback runs: `index` exists, and
/// `offset + data.len()` lies inside the region.
pub trait Device: Send + 'static {
    /// Device flags and counts.
    fn device_info(&self) -> DeviceInfo;
    /// Region `index`, or `None` when absent (size 0).
    fn region_info(&self, index: u32) -> Option<RegionInfo>;
    /// IRQ index `index`, or `None` when absent (count 0).
    fn irq_info(&self, index: u32) -> Option<IrqInfo>;
    /// Reads `data.len()` bytes at `offset` of region `index`.
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno>;
    /// Writes `data` at `offset` of region `index`.
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;
    /// A client connected and negotiated.
    fn attach(&mut self, ctx: DeviceContext);
    /// The client is gone: drop DMA snapshots and irq handles, keep device state.
    fn detach(&mut self);
    /// A DMA window was added; `mem` is the new snapshot.
    fn dma_map(&mut self, ev: &DmaEvent, mem: &Arc<DmaMemory>) -> Result<(), Errno> {
        let _ = (ev, mem);
        Ok(())
    }
    /// A DMA window is being removed; `mem` is the snapshot without it. Return only once
    /// nothing uses the old window any more (quiesce). An error is reported to the client,
    /// but the window is removed anyway.
    fn dma_unmap(&mut self, ev: &DmaEvent, mem: &Arc<DmaMemory>) -> Result<(), Errno> {
        let _ = (ev, mem);
        Ok(())
    }
    /// SET_IRQS, after the server updated the [`Irqs`] table.
    fn set_irqs(&mut self, req: &IrqSetEvent) -> Result<(), Errno> {
        let _ = req;
        Ok(())
    }
    /// Reset the device.
    fn reset(&mut self, kind: ResetKind) -> Result<(), Errno>;
    /// DEVICE_FEATURE (migration v2, DMA logging). Append GET data to `reply`.
    fn device_feature(
        &mut self,
        req: &FeatureRequest<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<(), Errno> {
        let _ = (req, reply);
        Err(Errno::NOTSUP)
    }
    /// MIG_DATA_READ: fill `buf`, return bytes produced (< len means end of stream).
    fn mig_data_read(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
        let _ = buf;
        Err(Errno::NOTSUP)
    }
    /// MIG_DATA_WRITE.
    fn mig_data_write(&mut self, data: &[u8]) -> Result<(), Errno> {
        let _ = data;
        Err(Errno::NOTSUP)
    }
}
