//! Userspace NVMe host driver over a vfio-user client (tests, perf, identify).
//!
//! ```text
//! Controller ── admin QueuePair ──┐
//!     │                           ├── Doorbells (mmapped BAR0 page | REGION_WRITE | shadow)
//!     └── create_io_queue_pair ── QueuePair (polled, or MSI-X eventfd)
//!                 │
//!            DmaArena (memfd, DMA_MAP) ── DmaBuf ── PRP / SGL plans (prp.rs)
//! Transport trait: region access, DMA map, irqs (rust-vmm `vfio_user` client today)
//! ```

pub mod cmd;
pub mod controller;
pub mod dma;
pub mod error;
pub mod identify;
pub mod identify_tool;
pub mod io;
pub mod perf;
pub mod probe;
pub mod prp;
pub mod queue;
pub mod regs;
pub mod transport;
pub mod trid;

pub use cmd::{Command, Completion, SglDescriptor, Status};
pub use controller::{Controller, ControllerOptions, DoorbellMode};
pub use dma::{DmaArena, DmaBuf, PAGE_SIZE};
pub use error::{DmaError, Error, TransportError};
pub use identify::{IdentifyController, IdentifyNamespace};
pub use identify_tool::{identify_main, IdentifyArgs};
pub use perf::{perf_main, PerfArgs};
pub use queue::{DataPtr, QueuePair};
pub use transport::{RustVmmTransport, Transport, VfuTransport};
pub use trid::TransportId;
