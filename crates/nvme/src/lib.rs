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
//!
//! # Threads and memory
//!
//! A [`Controller`] belongs to one [`Poller`] (one poll thread); nothing on the I/O path
//! takes a lock. Endpoint-thread operations go through a [`ControllerHandle`]: register reads
//! from mirrored atomics, trapped doorbell writes straight into the memfd doorbell page,
//! everything else as a control message. DMA map/unmap, resets, CC writes and namespace
//! removal *quiesce*: they run only once no command of that controller is in flight. Guest
//! memory is only touched through `vm-memory` volatile accessors (admin data, PRP lists,
//! SGL segments), volatile SQE/CQE copies in [`sys`], or raw iovecs handed to `sluice-bdev`
//! with the DMA snapshot `Arc` as keepalive.
//!
//! # Poll modes: idle CPU versus wake latency
//!
//! With BAR0 mappable the guest's doorbell writes land in shared memory and nothing wakes
//! a sleeping poll thread, so [`PollMode::Adaptive`] trades idle CPU against the latency of
//! the first command after an idle period: it spins for `spin_polls` empty polls (10 000,
//! about 1-2 ms after the last work, so a busy queue never sleeps and QD32 runs at busy
//! speed), then parks with a timeout that doubles from 1 us up to `max_sleep`. Control
//! messages and trapped doorbell writes unpark it at once. `benches/poll_idle.rs` measures
//! both sides (one enabled idle controller, doorbells through the page; shared 2-core VM
//! with load 7, so latencies are noisy):
//!
//! | `max_sleep` | idle CPU of the poll thread | added wake latency |
//! |---|---|---|
//! | 250 us | 4.3-5.3 % | <= 250 us |
//! | 1 ms | 1.3-1.7 % | <= 1 ms |
//! | **2 ms (default)** | 0.8-1.0 % | <= 2 ms (mean ~1 ms) |
//! | 4 ms | 0.45-0.6 % | <= 4 ms |
//! | busy | 100 % of a core | none |
//!
//! The sleep is a `thread::park_timeout`: crossbeam's `recv_timeout`, used before, spins
//! and yields before blocking and cost 2.3-3.0 % at 1 ms. 2 ms keeps an idle daemon well
//! under the 2 %-of-a-core goal; lower it (`sluice serve --poll-max-sleep-us`) for
//! latency-sensitive sparse I/O, or use trapped doorbells with shadow doorbells (EventIdx
//! makes the guest trap only when the poller asked for it).
//!
//! # Where this controller deliberately differs from SPDK's vfio-user target
//!
//! * Unmapped / partially mapped data buffers complete with Data Transfer Error (SCT 0 /
//!   SC 0x04), and bad PRP entry offsets with PRP Offset Invalid (0x13); SGL problems get
//!   the specific SGL statuses (0x0D/0x0E/0x0F/0x11). SPDK answers Internal Error (0x06) for
//!   all of them. An I/O queue base that is not mapped also gives Data Transfer Error.
//! * PRP lists may be chained across pages (SPDK handles one list page); transfers are
//!   bounded by MDTS (default 128 KiB, configurable up to 4 MiB) rather than by 33 iovecs.
//! * SGLS advertises "supported, no alignment requirement" (SPDK: dword aligned).
//! * CQ head doorbell values beyond the queue size raise the Invalid Doorbell Write AER,
//!   like SQ tails (SPDK does not check CQ heads).
//! * An SQ tail doorbell that claims more new entries than the host can know to be free
//!   (it learns freed slots only from the SQ head of the CQEs posted so far) is an
//!   Invalid Doorbell Write (SQ overflow): the entries are not fetched. A stale tail that
//!   moved backwards while fetched commands are unanswered is caught this way instead of
//!   replaying old or zeroed entries.
//! * INTx is level-triggered through `PciFunction::intx_level`: asserted while an
//!   interrupt-enabled CQ holds entries the host has not consumed (per-CQ tail mirrors
//!   against the CQ head doorbells or shadow doorbells), so a pulse for already-consumed
//!   work is not re-delivered at UNMASK.
//! * Interrupt Coalescing (0x08) is changeable and honoured (threshold and time), and
//!   Interrupt Vector Configuration (0x09) is settable (coalescing disable per vector); SPDK
//!   reports 0x08 as not changeable. Get Features SEL=3 (capabilities) is implemented.
//! * Number of Queues: the first Set after a reset allocates min(requested, max); later Sets
//!   report the same allocation, and queue ids beyond it are refused (SPDK ignores the
//!   request and always reports the maximum).
//! * FLR and DEVICE_RESET reset the NVMe controller (SPDK only drops shadow doorbells),
//!   clear every doorbell, and stop DMA until the client sets bus master again.
//! * Delete I/O SQ and controller disable wait for the backend to finish in-flight commands
//!   (they cannot be cancelled); completions of a deleted SQ are not posted.
//! * The admin queue uses the depth programmed in AQA (SPDK caps its request pool at 32).
//! * SMART/Health reports real counters (data units and commands read/written, power-on
//!   hours, media and error-log counts) and a constant 313 K composite temperature.
//! * Keep Alive Timer: KATO is rounded up to the 10 s granularity (KAS = 100) and reported
//!   as used; on expiry the controller stops fetching commands and sets CSTS.CFS until a
//!   reset. (Linux does not set KATO for PCIe controllers.)
//! * Abort always answers "command not aborted" (dword 0 bit 0 = 1).
//! * Data buffers in DMA windows mapped without an fd are bounced through DMA_READ /
//!   DMA_WRITE messages (SPDK fails them); see below.
//!
//! # Data in fd-less DMA windows (bounce buffers)
//!
//! A client may DMA_MAP memory without an fd (QEMU guest RAM without `share=on`); the
//! server reaches it only with DMA_READ / DMA_WRITE messages (`vfu_server::DmaHandle`, held
//! by the controller as a [`bounce::MsgDma`] while bus mastering is on). Data buffers
//! (the targets of PRPs and SGL data blocks) there work; see [`bounce`]:
//!
//! * The decision is taken only where translating the data pointer to the snapshot failed
//!   (Data Transfer Error from the walker), in a cold function: the fd-backed hot path is
//!   unchanged (callgrind, `benches/io_path.rs`, 200 000 4 KiB reads: 949 instructions
//!   per I/O with this path vs 947 without). Anything else stays zero-copy.
//! * The whole command is bounced (mixed commands too): its segments are re-walked and a
//!   host buffer of the transfer length (bounded by MDTS, 4 MiB at most) is allocated;
//!   allocation failure gives Internal Error. Write/Compare fetch the data (volatile copy
//!   for fd-backed segments, DMA_READ otherwise) before the backend is called; Read copies
//!   it out (volatile copy or DMA_WRITE) after the backend finished and *before* the CQE
//!   is posted. Admin data (Identify, log pages, features, DSM ranges) is copied the same
//!   way.
//! * A message that fails (no window, a read-only window as a Read destination, a
//!   write-only window as a Write source, the client answering with an error, the
//!   connection gone) completes the command with Data Transfer Error; the controller goes
//!   on. A bounced Read whose copy-out fails has already read the media (no side effect).
//! * Still unsupported in fd-less memory, as in SPDK: submission / completion queues
//!   (Create I/O SQ/CQ: Data Transfer Error; admin queues: CSTS.CFS at enable), PRP
//!   lists and SGL segment descriptors (Data Transfer Error), shadow doorbell buffers
//!   (Invalid Field).
//! * DMA_READ / DMA_WRITE are synchronous socket round trips made on the poll thread:
//!   while one runs, every controller of that poll thread stalls (chunks of the client's
//!   `max_data_xfer_size`, one round trip each). Acceptable for this rare path; guests that
//!   care about performance share their RAM (memfd / `share=on`).
//! * With a twin socket the requests travel on their own socket. Without one they go on
//!   the main socket: the poll thread then reads that socket itself until its reply comes,
//!   queueing the client's commands for the endpoint thread (which may wait on the session
//!   read lock meanwhile). The endpoint thread holds no lock while it waits for the poll
//!   thread (control messages, quiesce), so the server cannot deadlock itself; progress
//!   needs a client that answers server requests while it waits for its own replies
//!   (`vfu-client` does). A client that serves them only on a thread blocked behind its own
//!   pending request (QEMU runs them in a main-loop bottom half, under the BQL) stalls
//!   until a timeout: after the server's `dma_timeout` (2 s, below QEMU's 5 s reply wait)
//!   the command completes with Data Transfer Error and the session survives; the late
//!   reply is dropped, and further DMA requests on that connection fail at once (Data
//!   Transfer Error) until it arrives.

pub mod admin;
pub mod bounce;
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
