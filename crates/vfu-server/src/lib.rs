//! vfio-user server library: the listening endpoint, the per-connection session state
//! machine, the DMA table and the irq eventfd table, and the [`Device`] trait that every
//! emulated device implements.
//!
//! ```no_run
//! # fn dev() -> Box<dyn vfu_server::Device> { unimplemented!() }
//! use vfu_server::{Server, ServerOptions};
//! let server = Server::bind("/tmp/dev.sock", ServerOptions::default())?;
//! let stop = server.shutdown_handle();
//! let mut device = dev();
//! std::thread::spawn(move || server.serve(device.as_mut()));
//! // ... later
//! stop.shutdown();
//! # Ok::<(), vfu_server::ServerError>(())
//! ```

mod conn;
pub mod device;
pub mod dma;
pub mod endpoint;
pub mod irqs;
pub mod session;

pub use device::*;
pub use dma::{DmaHandle, DmaMemory};
pub use endpoint::{Server, ServerError, ServerOptions, ShutdownHandle, MAX_SOCKET_PATH};
pub use irqs::Irqs;
pub use session::{serve_connection, SessionEnd};
pub use vfu_proto as proto;
pub use vfu_proto::Capabilities;
