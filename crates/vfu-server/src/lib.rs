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

//! # Protocol decisions (where the spec and real peers disagree)
//!
//! - Framing: the header is validated first. `msg_size < 16` or more fds than fit the
//!   control buffer: EINVAL reply, then the connection is closed (no safe resync). Oversized
//!   messages (beyond `max_data_xfer_size` + 32, at least 8 KiB): EINVAL, the body is drained
//!   when it is at most 16 MiB, else the connection is closed. Unknown commands, unsolicited
//!   replies, DIRTY_PAGES and client-sent DMA_READ/WRITE: EINVAL after draining. Every error
//!   reply is header-only with a positive errno; No_reply is honoured even on error. Fds a
//!   handler does not consume are closed. The first message must be VERSION (without fds);
//!   any negotiation failure gets EINVAL and closes the connection.
//! - VERSION: no JSON (SPDK) and legacy keys are accepted; the reply always carries
//!   NUL-terminated JSON with `max_msg_fds` (16), `max_data_xfer_size`, `pgsizes`,
//!   `max_dma_maps`, `write_multiple: true`, `migration` only when the client sent it, and
//!   `twin_socket` (with the socket as fd 0) only when the client offered it.
//! - DMA_MAP: unknown flag bits EINVAL; an overlap is EEXIST (spec), an identical re-map is
//!   accepted as a no-op (libvfio-user); more than `max_dma_maps` windows EINVAL. The fd's
//!   file is first sealed against shrinking (`F_SEAL_SHRINK`, kept when already set, as on
//!   QEMU's memfds), then a regular file smaller than offset+size is refused with EINVAL, so
//!   a mapped window can never be truncated under a device access. A file that cannot be
//!   sealed (disk, tmpfs or hugetlbfs file, memfd without `MFD_ALLOW_SEALING`, read-only fd)
//!   is accepted with one info line per connection, or refused with EPERM when
//!   [`ServerOptions::require_sealed_dma`] is set. Read-only fd windows are mapped
//!   `MAP_PRIVATE` so a device that wrongly writes cannot fault or reach the guest.
//! - DMA_UNMAP: exact match or ENOENT; FLAG_ALL needs addr = size = 0; the old dirty-bitmap
//!   flavour is rejected (EINVAL); the reply echoes the 24-byte struct after the device's
//!   `dma_unmap` returned. A client disconnect drops every window and irq fd, then calls
//!   [`Device::detach`] (no per-window `dma_unmap`).
//! - REGION_READ/WRITE: count 0 gives a header-only success; region sizes are read once per
//!   session. REGION_WRITE_MULTI: every entry is validated before any is executed.
//! - REGION_INFO: one sparse-mmap capability (the whole region when the device lists no
//!   areas) and exactly one fd, only when the capability fits the request's argsz.
//! - SET_IRQS: libvfio-user's validation list; TRIGGER with NONE/BOOL fires the eventfds
//!   itself; MASK/UNMASK with NONE/BOOL updates [`Irqs::is_masked`]; the device is told after.
//! - Server-to-client DMA: chunked by the client's `max_data_xfer_size`; replies in the spec
//!   layout, QEMU's 12-byte DMA_READ prefix and QEMU's header-only DMA_WRITE reply are
//!   accepted. Request ids are `0x8000..=0xffff`. Without a twin socket the requesting
//!   thread reads the main socket itself until its reply comes; commands that arrive
//!   meanwhile are queued and served by the endpoint thread, in order, and the endpoint
//!   thread never waits for the read side (shutdown stays prompt).
//! - A DMA reply that does not come within [`ServerOptions::dma_timeout`] (2 s) fails the
//!   device's [`DmaHandle`] call with `ETIMEDOUT` (NVMe: Data Transfer Error); the
//!   connection stays up. The timed-out `(id, command)` is remembered: its late reply is
//!   consumed and dropped (debug log), never answered, and no new request reuses the id.
//!   Until it comes, further DMA requests fail at once with `ETIMEDOUT`, so a client that
//!   cannot answer costs one timeout, not one per request. A reply matching nothing
//!   outstanding or abandoned is still unsolicited (EINVAL).
//! - A partial message or a blocked send that takes longer than
//!   [`ServerOptions::io_timeout`] ends the session.
//!
//! # DMA requests and QEMU
//!
//! QEMU (`hw/vfio-user/proxy.c`) reads its socket on an iothread: replies wake the waiting
//! thread, but requests (our DMA_READ/DMA_WRITE) are queued for a main-loop bottom half
//! (`vfio_user_request`), which needs the BQL. `vfio_user_send_wait` waits for a reply
//! with `qemu_cond_timedwait` on the proxy lock only, the BQL stays held (a vCPU's trapped
//! BAR access, or a DMA_UNMAP from the memory listener). So while a BQL holder waits for
//! our reply to, say, a CC write whose handler waits for a poll thread that waits for a
//! DMA reply, QEMU cannot answer that DMA request: a real cycle, broken only by a timeout
//! (QEMU's `x-msg-timeout`, 5 s by default). The DMA timeout is therefore shorter (2 s):
//! the DMA request fails, the poll thread finishes its work (later requests fail at once),
//! the endpoint answers the CC write in time, QEMU's main loop runs again and answers the
//! DMA request late, and that reply is dropped. The cost is a Data Transfer Error on the
//! bounced command, instead of QEMU failing its register access and the server ending the
//! session. A twin socket does not help against QEMU (it never offers one).

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
