//! NVMe 2.0 controller emulation over an emulated PCI endpoint.
//!
//! * [`Controller`]: the controller state machine, owned by one poll thread; it can also
//!   be driven directly (tests, benches): `bar0_write` / `set_memory` / `poll`.
//! * [`Poller`] / [`PollerHandle`] / [`ControllerHandle`]: the poll-thread engine; the
//!   endpoint thread talks to its controller only through control messages and mirrored
//!   register atomics.
//! * [`prp`]: PRP / SGL walkers over a `vm-memory` DMA snapshot.
//! * [`pci`]: the controller as a `sluice_pci::PciFunction` (BAR0, doorbell mmap, resets, DMA).
//! * Namespaces are `sluice_bdev` block devices (re-exported as [`bdev`]).
//! * [`testkit`]: an in-process fake NVMe host used by tests, benches and fuzzers.

pub mod admin;
pub mod ctrl;
pub mod fuzzing;
pub mod pci;
pub mod poller;
pub mod prp;
pub mod spec;
pub mod sys;
pub mod testkit;

/// The guest memory snapshot type handed over by `vfu-server`.
pub type GuestMem = vm_memory::GuestMemoryMmap<()>;

pub use ctrl::{
    BarError, Controller, ControllerConfig, ControllerStats, InterruptSink, NoInterrupts, NsError,
    Shared,
};
pub use poller::{ControllerHandle, PollMode, Poller, PollerHandle};
pub use sluice_bdev as bdev;
pub use spec::Status;
