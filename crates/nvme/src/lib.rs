//! NVMe 2.0 controller emulation over an emulated PCI endpoint.
//!
//! * [`Controller`]: the controller state machine, owned by one poll thread; it can also
//!   be driven directly (tests, benches): `bar0_write` / `set_memory` / `poll`.
//! * [`Poller`] / [`PollerHandle`] / [`ControllerHandle`]: the poll-thread engine; the
//!   endpoint thread talks to its controller only through control messages and mirrored
//!   register atomics.
//! * [`prp`]: PRP / SGL walkers over a `vm-memory` DMA snapshot.
//! * [`backend`]: the block backend seam (shape of `sluice-bdev`'s contract).
//! * [`testkit`]: an in-process fake NVMe host used by tests, benches and fuzzers.

pub mod admin;
pub mod backend;
pub mod ctrl;
pub mod fuzzing;
pub mod poller;
pub mod prp;
pub mod spec;
pub mod sys;
pub mod testkit;

/// The guest memory snapshot type handed over by `vfu-server`.
pub type GuestMem = vm_memory::GuestMemoryMmap<()>;

pub use backend::{
    Backend, BackendInfo, IoChannel, IoCompletion, IoOp, IoRequest, IoResult, NullBackend,
    RamBackend,
};
pub use ctrl::{
    BarError, Controller, ControllerConfig, ControllerStats, InterruptSink, NoInterrupts, NsError,
    Shared,
};
pub use poller::{ControllerHandle, PollMode, Poller, PollerHandle};
pub use spec::Status;
