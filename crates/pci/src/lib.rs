//! Generic emulated PCI(e) endpoint on top of vfu-server: config space, capabilities, MSI-X,
//! BARs.
//!
//! * [`PciConfig`] describes a function (ids, class, BARs, MSI-X, INTx, PM/PCIe caps).
//! * [`ConfigSpace`] is the 4 KiB config space with per-byte writable and W1C masks, the
//!   PM -> PCIe -> MSI-X chain at SPDK's offsets and the BAR sizing protocol.
//! * [`PciEndpoint`] implements `vfu_server::Device`: region 7, the MSI-X table and PBA
//!   BARs, BAR gating, SET_IRQS bookkeeping, FLR and DEVICE_RESET; device BARs go to a
//!   [`PciFunction`].
//! * [`InterruptSink`] is the lock-free handle poll threads raise interrupts with.
#![forbid(unsafe_code)]

pub mod config;
pub mod endpoint;
pub mod irq;
pub(crate) mod msix;
pub mod space;

pub use config::{
    BarConfig, BarRole, BarSpec, ConfigError, IntxPin, MsixConfig, MsixLayout, PciConfig,
    PciConfigBuilder,
};
pub use endpoint::{PciEndpoint, PciFunction};
pub use irq::{FireOutcome, InterruptSink, IrqSignal};
pub use space::{ConfigSpace, WriteEffects};

/// Server types a [`PciFunction`] implementation needs, re-exported for convenience.
pub use vfu_server::{
    DeviceContext, DmaEvent, DmaHandle, DmaMemory, RegionMmap, ResetKind, SparseArea,
};
