//! The controller core: registers, queues, the SQ -> backend -> CQ data path.
//!
//! A [`Controller`] is owned by exactly one poll thread (or by a test driving it
//! directly); nothing in here takes a lock. The endpoint thread reads registers from
//! [`Shared`] mirrors and writes doorbells into the shared doorbell page.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::bounce::{Bounce, MsgDma};
use crate::prp::{walk_prp, walk_sgl, IovSink, Seg, SegSink, PAGE_SIZE};
use crate::spec::{aen, io, reg, Cqe, Sqe, Status};
use crate::sys::{DoorbellPage, Ring, DOORBELL_COUNT};
use crate::GuestMem;
use sluice_bdev::{
    Bdev, BdevInfo, BlockChannel, BlockRange, IoCompletion, IoError, IoOp, IoRequest, IoVecs,
};

/// Largest number of I/O queue pairs a controller can offer.
pub const MAX_IO_QUEUES: u16 = 511;
/// Number of MSI-X vectors the controller expects (like SPDK: one per queue pair).
pub const MSIX_VECTORS: u16 = 512;
/// Maximum commands fetched from one SQ per poll (fairness between queues).
const SQ_BATCH: u16 = 64;
/// Outstanding AER limit (AERL + 1).
pub(crate) const AER_LIMIT: usize = 4;
/// Error log entries kept (ELPE + 1).
pub(crate) const ERROR_LOG_ENTRIES: usize = 64;

/// Fires interrupts towards the guest (implemented over `sluice-pci`'s interrupt sink).
pub trait InterruptSink: Send + Sync {
    /// Signal MSI-X vector `vector` (or INTx when MSI-X is off).
    fn trigger(&self, vector: u16);
}

/// An interrupt sink that drops every interrupt (polled hosts, benches).
#[derive(Debug, Default)]
pub struct NoInterrupts;

impl InterruptSink for NoInterrupts {
    fn trigger(&self, _vector: u16) {}
}

/// Static controller configuration.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// PCI vendor id reported in Identify (VID).
    pub vendor_id: u16,
    /// PCI subsystem vendor id (SSVID).
    pub subsystem_vendor_id: u16,
    /// Serial number (up to 20 ASCII chars).
    pub serial: String,
    /// Model number (up to 40 ASCII chars).
    pub model: String,
    /// Firmware revision (up to 8 ASCII chars).
    pub firmware: String,
    /// Subsystem NQN (up to 255 chars).
    pub subnqn: String,
    /// Controller id.
    pub cntlid: u16,
    /// I/O queue pairs offered (1..=511).
    pub max_io_queues: u16,
    /// Maximum entries per queue (2..=32768; CAP.MQES = value - 1).
    pub max_queue_depth: u32,
    /// MDTS as a power of two of 4 KiB pages (5 = 128 KiB).
    pub mdts: u8,
    /// Maximum namespace id (NN).
    pub max_namespaces: u32,
    /// Whether BAR0's doorbell page is mmappable by the client.
    pub mappable_bar0: bool,
    /// Offer Doorbell Buffer Config (only honoured when `mappable_bar0` is false).
    pub shadow_doorbells: bool,
    /// One interrupt per I/O CQ per poll batch (true) or one per completion (false).
    pub adaptive_irq: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            vendor_id: 0x4e58,
            subsystem_vendor_id: 0x4e58,
            serial: "SLUICE0".into(),
            model: "Sluice NVMe Controller".into(),
            firmware: env!("CARGO_PKG_VERSION").into(),
            subnqn: "nqn.2024-01.io.sluice:cnode0".into(),
            cntlid: 1,
            max_io_queues: 127,
            max_queue_depth: 256,
            mdts: 5,
            max_namespaces: 32,
            mappable_bar0: true,
            shadow_doorbells: true,
            adaptive_irq: true,
        }
    }
}

impl ControllerConfig {
    /// Clamp fields into their legal ranges.
    pub fn normalized(mut self) -> Self {
        self.max_io_queues = self.max_io_queues.clamp(1, MAX_IO_QUEUES);
        // Queue sizes are kept in u16: at most 32768 entries.
        self.max_queue_depth = self.max_queue_depth.clamp(2, 32768);
        self.mdts = self.mdts.clamp(1, 10);
        self.max_namespaces = self.max_namespaces.clamp(1, 1024);
        self
    }
    /// Maximum data transfer in bytes.
    pub fn mdts_bytes(&self) -> u64 {
        PAGE_SIZE << self.mdts
    }
    /// Whether Doorbell Buffer Config is offered.
    pub fn dbbuf_enabled(&self) -> bool {
        self.shadow_doorbells && !self.mappable_bar0
    }
    /// The CAP register value.
    pub fn cap(&self) -> u64 {
        let mqes = u64::from(self.max_queue_depth - 1) & 0xffff;
        mqes | 1 << 16 // CQR
            | 30 << 24 // TO: 15 s in 500 ms units
            | 1 << 37 // CSS: NVM command set
            | 1 << 59 // CRWMS
    }
}

/// Why a BAR0 access was refused (the PCI layer maps these to errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BarError {
    /// Access size other than 4 (or 8 for registers) bytes, or misaligned.
    #[error("invalid BAR0 access size or alignment")]
    InvalidAccess,
    /// Offset outside the implemented range.
    #[error("BAR0 offset out of range")]
    OutOfRange,
    /// Doorbells are write-only.
    #[error("doorbell registers are write-only")]
    WriteOnly,
}

/// Register state mirrored for lock-free reads from the endpoint thread, plus the shared
/// doorbell page.
#[derive(Debug)]
pub struct Shared {
    /// The doorbell page (memfd).
    pub doorbells: DoorbellPage,
    cap: u64,
    cc: AtomicU32,
    csts: AtomicU32,
    aqa: AtomicU32,
    asq: AtomicU64,
    acq: AtomicU64,
    intms: AtomicU32,
    /// Per CQ (index = qid): `CQ_IRQ_ACTIVE | tail` while the CQ exists with interrupts
    /// enabled, else 0. Written by the poll thread after every posted CQE (before the
    /// interrupt fires), read by the endpoint thread for [`Shared::intx_pending`].
    cq_irq: Box<[AtomicU32]>,
    /// Guest address of the shadow doorbell buffer (0: none).
    shadow_db: AtomicU64,
    /// Number of I/O submission queues that exist (poll thread writes, anyone reads).
    io_queues: AtomicU32,
}

/// Marks an interrupt-enabled CQ in the `cq_irq` mirrors.
const CQ_IRQ_ACTIVE: u32 = 1 << 16;

impl Shared {
    /// New register block for CAP `cap` and `queues` queue ids (admin included).
    pub fn new(cap: u64, queues: usize) -> std::io::Result<Shared> {
        Ok(Shared {
            doorbells: DoorbellPage::new()?,
            cap,
            cc: AtomicU32::new(0),
            csts: AtomicU32::new(0),
            aqa: AtomicU32::new(0),
            asq: AtomicU64::new(0),
            acq: AtomicU64::new(0),
            intms: AtomicU32::new(0),
            cq_irq: (0..queues).map(|_| AtomicU32::new(0)).collect(),
            shadow_db: AtomicU64::new(0),
            io_queues: AtomicU32::new(0),
        })
    }

    /// Number of I/O submission queues that currently exist (lock-free; any thread).
    pub fn io_queues(&self) -> u32 {
        self.io_queues.load(Ordering::Relaxed)
    }

    /// The INTx level: whether some interrupt-enabled CQ holds entries the host has not
    /// consumed (CQ tail != the host's CQ head doorbell). Lock-free; safe on any thread.
    ///
    /// The tails come from the poll thread's mirrors, the heads from the doorbell page or,
    /// for I/O CQs while shadow doorbells are configured, from the shadow buffer in `mem`
    /// (falling back to the doorbell page when it cannot be read). A head the host has not
    /// yet written reads as pending: the host gets one more interrupt, never one less.
    pub fn intx_pending(&self, mem: Option<&GuestMem>) -> bool {
        use vm_memory::{Bytes, GuestAddress};
        let shadow = self.shadow_db.load(Ordering::Acquire);
        self.cq_irq.iter().enumerate().any(|(qid, m)| {
            let v = m.load(Ordering::Acquire);
            if v & CQ_IRQ_ACTIVE == 0 {
                return false;
            }
            let idx = qid.saturating_mul(2).saturating_add(1);
            let from_shadow = if qid != 0 && shadow != 0 {
                mem.and_then(|m| {
                    let addr = shadow.checked_add((idx as u64).checked_mul(4)?)?;
                    m.read_obj::<u32>(GuestAddress(addr)).ok()
                })
            } else {
                None
            };
            let head = from_shadow.unwrap_or_else(|| self.doorbells.load(idx));
            head != v & 0xffff
        })
    }

    /// Publish the interrupt state of CQ `qid` (poll thread).
    #[inline]
    pub(crate) fn mirror_cq(&self, qid: u16, active: bool, tail: u16) {
        if let Some(m) = self.cq_irq.get(usize::from(qid)) {
            let v = if active {
                CQ_IRQ_ACTIVE | u32::from(tail)
            } else {
                0
            };
            m.store(v, Ordering::Release);
        }
    }

    /// Publish the shadow doorbell buffer address (0: none).
    pub(crate) fn set_shadow_db(&self, gpa: u64) {
        self.shadow_db.store(gpa, Ordering::Release);
    }

    /// Read the dword register at `off` (0..0x1000).
    pub fn read_reg32(&self, off: u64) -> u32 {
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        match off {
            0x00 => lo(self.cap),
            0x04 => hi(self.cap),
            reg::VS => 0x0002_0000,
            reg::INTMS | reg::INTMC => self.intms.load(Ordering::Acquire),
            reg::CC => self.cc.load(Ordering::Acquire),
            reg::CSTS => self.csts.load(Ordering::Acquire),
            reg::AQA => self.aqa.load(Ordering::Acquire),
            0x28 => lo(self.asq.load(Ordering::Acquire)),
            0x2c => hi(self.asq.load(Ordering::Acquire)),
            0x30 => lo(self.acq.load(Ordering::Acquire)),
            0x34 => hi(self.acq.load(Ordering::Acquire)),
            // CRTO: CRWMT = CRIMT = CAP.TO.
            reg::CRTO => {
                let to = ((self.cap >> 24) & 0xff) as u32;
                to | to << 16
            }
            _ => 0,
        }
    }

    /// CSTS value.
    pub fn csts(&self) -> u32 {
        self.csts.load(Ordering::Acquire)
    }
    /// CC value.
    pub fn cc(&self) -> u32 {
        self.cc.load(Ordering::Acquire)
    }
}

/// Validate a BAR0 access and return `(offset, dwords)`.
pub fn check_bar0_access(off: u64, len: usize) -> Result<(), BarError> {
    if off >= reg::DOORBELL_BASE {
        if off >= reg::DOORBELL_BASE + (DOORBELL_COUNT as u64) * 4 {
            return Err(BarError::OutOfRange);
        }
        if len != 4 || off % 4 != 0 {
            return Err(BarError::InvalidAccess);
        }
        return Ok(());
    }
    if !(len == 4 || len == 8) || off % (len as u64) != 0 {
        return Err(BarError::InvalidAccess);
    }
    Ok(())
}

/// A namespace attached to the controller.
pub(crate) struct Namespace {
    pub(crate) info: BdevInfo,
    pub(crate) backend: Arc<dyn Bdev>,
    /// Channel with the bdev's limits: I/O commands are checked once, through it.
    chan: BlockChannel,
    pub(crate) lba_shift: u32,
    inflight: u32,
    retry: VecDeque<IoRequest>,
}

/// Namespace management errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NsError {
    /// NSID 0, out of range, or already in use.
    #[error("invalid or busy namespace id {0}")]
    InvalidNsid(u32),
    /// No free namespace id.
    #[error("no free namespace id")]
    Full,
    /// Unsupported block size.
    #[error("unsupported block size {0}")]
    BlockSize(u32),
    /// The namespace does not exist.
    #[error("namespace {0} not found")]
    NotFound(u32),
    /// The namespace still has commands in flight.
    #[error("namespace {0} has I/O in flight")]
    Busy(u32),
    /// The backend failed to open a channel.
    #[error("backend: {0}")]
    Backend(String),
}

pub(crate) struct Sq {
    pub(crate) cqid: u16,
    pub(crate) size: u16,
    gpa: u64,
    ring: Option<Ring>,
    pub(crate) head: u16,
    pub(crate) inflight: u32,
    /// Admin CID of a pending Delete I/O SQ.
    pub(crate) deleting: Option<u16>,
    db_error: bool,
    /// SQ head reported in the newest CQE posted for this SQ: the most the host can know
    /// about freed slots. A tail claiming more entries than that allows is an overflow
    /// or a stale (backwards) doorbell value, never a submission.
    published: u16,
}

pub(crate) struct Cq {
    pub(crate) size: u16,
    gpa: u64,
    ring: Option<Ring>,
    tail: u16,
    head: u16,
    phase: bool,
    pub(crate) ien: bool,
    pub(crate) iv: u16,
    /// Commands fetched for this CQ whose completion is not yet posted.
    reserved: u32,
    pub(crate) sq_refs: u16,
    irq_pending: bool,
    unsignalled: u32,
    first_unsignalled: Option<Instant>,
    db_error: bool,
}

impl Cq {
    fn used(&self) -> u32 {
        let t = u32::from(self.tail);
        let h = u32::from(self.head);
        if t >= h {
            t - h
        } else {
            t + u32::from(self.size) - h
        }
    }
    fn room(&self) -> u32 {
        (u32::from(self.size) - 1)
            .saturating_sub(self.used())
            .saturating_sub(self.reserved)
    }
}

#[derive(Default)]
struct Slot {
    sqid: u16,
    cid: u16,
    nsidx: u32,
    pending: u16,
    status: Status,
    is_read: bool,
    is_write: bool,
    bytes: u64,
    live: bool,
    /// Belongs to a queue set that was reset: complete silently.
    orphan: bool,
    /// Data bounced through a host buffer (kept in `Controller::bounces`).
    bounced: bool,
}

/// Where a data command goes once its slot is allocated.
#[derive(Clone, Copy)]
struct StartIo {
    slot: u32,
    sqid: u16,
    cid: u16,
    nsidx: usize,
    op: IoOp,
    offset: u64,
    len: u64,
}

/// Values of the Set/Get Features the controller keeps.
#[derive(Clone, Debug)]
pub(crate) struct Features {
    pub(crate) arbitration: u32,
    pub(crate) power_mgmt: u32,
    pub(crate) temp_over: u16,
    pub(crate) temp_under: u16,
    pub(crate) error_recovery: u32,
    pub(crate) vwc: bool,
    /// Allocated (NSQA, NCQA), 0-based, once set.
    pub(crate) num_queues: Option<(u16, u16)>,
    pub(crate) coalesce_thr: u8,
    pub(crate) coalesce_time: u8,
    pub(crate) write_atomicity: u32,
    pub(crate) async_event_config: u32,
    pub(crate) kato: u32,
    pub(crate) host_id: [u8; 16],
}

impl Default for Features {
    fn default() -> Self {
        Features {
            arbitration: 0,
            power_mgmt: 0,
            temp_over: 0x157,
            temp_under: 0,
            error_recovery: 0,
            vwc: true,
            num_queues: None,
            coalesce_thr: 0,
            coalesce_time: 0,
            write_atomicity: 0,
            async_event_config: 0,
            kato: 0,
            host_id: [0; 16],
        }
    }
}

/// SMART / health counters.
#[derive(Clone, Debug, Default)]
pub(crate) struct Smart {
    pub(crate) bytes_read: u64,
    pub(crate) bytes_written: u64,
    pub(crate) read_cmds: u64,
    pub(crate) write_cmds: u64,
    pub(crate) media_errors: u64,
    pub(crate) power_cycles: u64,
    pub(crate) unsafe_shutdowns: u64,
    pub(crate) error_count: u64,
}

/// Counters reported through `nvmf_get_stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControllerStats {
    /// Admin commands processed.
    pub admin_commands: u64,
    /// I/O commands fetched.
    pub io_commands: u64,
    /// Completions posted.
    pub completions: u64,
    /// Interrupts fired.
    pub interrupts: u64,
    /// Times an SQ was not drained because its CQ was full.
    pub cq_full: u64,
    /// Doorbell reads served from the shadow doorbell buffer.
    pub shadow_doorbell_reads: u64,
    /// Invalid doorbell writes detected.
    pub invalid_doorbell_writes: u64,
    /// Commands completed with an error status.
    pub errors: u64,
    /// Backend submissions that found the channel full.
    pub backend_busy: u64,
    /// I/O submission queues that exist now (a gauge, filled in by `stats()`).
    pub io_queues: u64,
    /// I/O submission queues created since the controller was made (cumulative).
    pub io_queues_created: u64,
}

pub(crate) struct Aer {
    pub(crate) cids: Vec<u16>,
    pub(crate) pending: VecDeque<u32>,
    pub(crate) notice_masked: bool,
    pub(crate) error_masked: bool,
}

/// Shadow doorbell buffers (Doorbell Buffer Config).
pub(crate) struct ShadowDb {
    pub(crate) db_gpa: u64,
    pub(crate) ei_gpa: u64,
    pub(crate) db: Ring,
    pub(crate) ei: Ring,
}

/// The NVMe controller state owned by one poll thread.
pub struct Controller {
    pub(crate) cfg: ControllerConfig,
    pub(crate) shared: Arc<Shared>,
    irq: Arc<dyn InterruptSink>,
    pub(crate) mem: Option<Arc<GuestMem>>,
    /// DMA_READ/DMA_WRITE access to fd-less windows (bounce path), while bus master is on.
    pub(crate) msg_dma: Option<Arc<dyn MsgDma>>,
    /// Host buffers of bounced commands in flight, by slot (rare: off the hot path).
    bounces: Vec<(u32, Bounce)>,
    pub(crate) ns: Vec<Option<Namespace>>,
    pub(crate) sqs: Vec<Option<Sq>>,
    pub(crate) cqs: Vec<Option<Cq>>,
    active_sqs: Vec<u16>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    irq_list: Vec<u16>,
    pub(crate) feat: Features,
    pub(crate) smart: Smart,
    pub(crate) stats: ControllerStats,
    pub(crate) aer: Aer,
    pub(crate) changed_ns: Vec<u32>,
    pub(crate) error_log: VecDeque<[u8; 64]>,
    pub(crate) shadow: Option<ShadowDb>,
    /// Interrupt Vector Configuration: coalescing disabled per vector.
    pub(crate) iv_cd: Vec<bool>,
    /// Delete I/O SQ commands waiting for in-flight commands.
    pub(crate) pending_deletes: u32,
    admin_backlog: VecDeque<(Cqe, u16)>,
    pub(crate) created: Instant,
    ready: bool,
    completions_buf: Vec<IoCompletion>,
    /// Keep Alive Timer: (timeout, deadline) while KATO is non-zero.
    pub(crate) keep_alive: Option<(Duration, Instant)>,
    /// Polls since the keep-alive deadline was last compared with the clock.
    ka_polls: u32,
}

/// Keep Alive granularity (Identify KAS = 100: 100 x 100 ms, like SPDK).
pub const KEEP_ALIVE_GRANULARITY_MS: u32 = 10_000;

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("cntlid", &self.cfg.cntlid)
            .field("ready", &self.ready)
            .finish()
    }
}

fn lba_shift(block_size: u32) -> Option<u32> {
    if block_size.is_power_of_two() && (512..=4096).contains(&block_size) {
        Some(block_size.trailing_zeros())
    } else {
        None
    }
}

impl Controller {
    /// A controller with the given configuration and interrupt sink.
    pub fn new(cfg: ControllerConfig, irq: Arc<dyn InterruptSink>) -> std::io::Result<Controller> {
        let cfg = cfg.normalized();
        let nq = usize::from(cfg.max_io_queues) + 1;
        let shared = Arc::new(Shared::new(cfg.cap(), nq)?);
        let nn = cfg.max_namespaces as usize;
        Ok(Controller {
            shared,
            irq,
            mem: None,
            msg_dma: None,
            bounces: Vec::new(),
            ns: (0..nn).map(|_| None).collect(),
            sqs: (0..nq).map(|_| None).collect(),
            cqs: (0..nq).map(|_| None).collect(),
            active_sqs: Vec::with_capacity(nq),
            slots: Vec::new(),
            free_slots: Vec::new(),
            irq_list: Vec::with_capacity(nq),
            feat: Features {
                vwc: true,
                ..Features::default()
            },
            smart: Smart {
                power_cycles: 1,
                ..Smart::default()
            },
            stats: ControllerStats::default(),
            aer: Aer {
                cids: Vec::new(),
                pending: VecDeque::new(),
                notice_masked: false,
                error_masked: false,
            },
            changed_ns: Vec::new(),
            error_log: VecDeque::new(),
            shadow: None,
            iv_cd: vec![false; usize::from(MSIX_VECTORS)],
            pending_deletes: 0,
            admin_backlog: VecDeque::new(),
            created: Instant::now(),
            ready: false,
            completions_buf: Vec::with_capacity(256),
            keep_alive: None,
            ka_polls: 0,
            cfg,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &ControllerConfig {
        &self.cfg
    }

    /// The register mirror and doorbell page shared with the endpoint thread.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Whether CSTS.RDY is set.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Counters.
    pub fn stats(&self) -> ControllerStats {
        let mut s = self.stats.clone();
        s.io_queues = self.count_io_sqs();
        s
    }

    /// Live I/O SQs (SQ 0 is the admin queue).
    fn count_io_sqs(&self) -> u64 {
        self.sqs.iter().skip(1).filter(|q| q.is_some()).count() as u64
    }

    /// Publishes the I/O SQ count to [`Shared::io_queues`] (after every change).
    fn publish_io_queues(&self) {
        let n = u32::try_from(self.count_io_sqs()).unwrap_or(u32::MAX);
        self.shared.io_queues.store(n, Ordering::Relaxed);
    }

    /// Commands handed to backends and not yet completed.
    pub fn inflight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// Replace the interrupt sink (new client).
    pub fn set_interrupt_sink(&mut self, irq: Arc<dyn InterruptSink>) {
        self.irq = irq;
    }

    // ----- namespaces ---------------------------------------------------------------

    /// Attach a namespace; `nsid` None picks the lowest free id. Raises the Changed
    /// Namespace List event.
    pub fn add_namespace(
        &mut self,
        nsid: Option<u32>,
        backend: Arc<dyn Bdev>,
    ) -> Result<u32, NsError> {
        let info = backend.info().clone();
        let shift = lba_shift(info.block_size).ok_or(NsError::BlockSize(info.block_size))?;
        let idx = match nsid {
            Some(n) => {
                let i = n.checked_sub(1).ok_or(NsError::InvalidNsid(n))? as usize;
                match self.ns.get(i) {
                    Some(None) => i,
                    _ => return Err(NsError::InvalidNsid(n)),
                }
            }
            None => self
                .ns
                .iter()
                .position(Option::is_none)
                .ok_or(NsError::Full)?,
        };
        let chan =
            BlockChannel::open(backend.as_ref()).map_err(|e| NsError::Backend(e.to_string()))?;
        let id = idx as u32 + 1;
        if let Some(slot) = self.ns.get_mut(idx) {
            *slot = Some(Namespace {
                info,
                backend,
                chan,
                lba_shift: shift,
                inflight: 0,
                retry: VecDeque::new(),
            });
        }
        self.ns_changed(id);
        Ok(id)
    }

    /// Detach a namespace (no command may be in flight on it).
    pub fn remove_namespace(&mut self, nsid: u32) -> Result<Arc<dyn Bdev>, NsError> {
        let idx = nsid.checked_sub(1).ok_or(NsError::NotFound(nsid))? as usize;
        let slot = self.ns.get_mut(idx).ok_or(NsError::NotFound(nsid))?;
        match slot {
            None => return Err(NsError::NotFound(nsid)),
            Some(ns) if ns.inflight > 0 => return Err(NsError::Busy(nsid)),
            Some(_) => {}
        }
        let ns = slot.take().ok_or(NsError::NotFound(nsid))?;
        self.ns_changed(nsid);
        Ok(ns.backend)
    }

    /// Active namespace ids.
    pub fn namespaces(&self) -> Vec<u32> {
        self.ns
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_some())
            .map(|(i, _)| i as u32 + 1)
            .collect()
    }

    fn ns_changed(&mut self, nsid: u32) {
        if self.changed_ns.len() >= 1024 {
            self.changed_ns.clear();
            self.changed_ns.push(0xffff_ffff);
        } else if !self.changed_ns.contains(&nsid) && self.changed_ns.first() != Some(&0xffff_ffff)
        {
            self.changed_ns.push(nsid);
        }
        if self.ready && self.feat.async_event_config & (1 << 8) != 0 {
            self.raise_event(
                aen::TYPE_NOTICE,
                aen::NOTICE_NS_ATTRIBUTE_CHANGED,
                crate::spec::log::CHANGED_NS,
            );
        }
    }

    // ----- memory and reset ---------------------------------------------------------

    /// Install a new DMA snapshot (after DMA map/unmap). Queues whose memory is no longer
    /// mapped become inactive until a later map covers them again. The caller (poll
    /// thread control path) must have quiesced in-flight commands first.
    pub fn set_memory(&mut self, mem: Option<Arc<GuestMem>>) {
        self.mem = mem;
        let m = self.mem.clone();
        for sq in self.sqs.iter_mut().flatten() {
            sq.ring = m
                .as_ref()
                .and_then(|m| Ring::new(m, sq.gpa, usize::from(sq.size) * 64));
        }
        for cq in self.cqs.iter_mut().flatten() {
            cq.ring = m
                .as_ref()
                .and_then(|m| Ring::new(m, cq.gpa, usize::from(cq.size) * 16));
        }
        if let Some(sh) = self.shadow.take() {
            let db = m
                .as_ref()
                .and_then(|m| Ring::new(m, sh.db_gpa, PAGE_SIZE as usize));
            let ei = m
                .as_ref()
                .and_then(|m| Ring::new(m, sh.ei_gpa, PAGE_SIZE as usize));
            match (db, ei) {
                (Some(db), Some(ei)) => self.shadow = Some(ShadowDb { db, ei, ..sh }),
                _ => {
                    self.shared.set_shadow_db(0);
                    // Shadow buffers unmapped: fall back to the BAR doorbells with the last
                    // values the host published.
                    for i in 2..DOORBELL_COUNT {
                        if let Some(v) = sh.db.read_u32(i * 4) {
                            self.shared.doorbells.store(i, v);
                        }
                    }
                }
            }
        }
    }

    /// Install (or remove) message-based access to DMA windows without an fd: data
    /// buffers there are bounced through it (see [`crate::bounce`]); without it they
    /// complete with Data Transfer Error.
    pub fn set_msg_dma(&mut self, dma: Option<Arc<dyn MsgDma>>) {
        self.msg_dma = dma;
    }

    /// The current DMA snapshot.
    pub fn memory(&self) -> Option<&Arc<GuestMem>> {
        self.mem.as_ref()
    }

    /// Controller-level reset (CC.EN 1 -> 0, FLR, device reset): deletes all queues,
    /// drops outstanding AERs and shadow doorbells, restores feature defaults.
    pub fn reset(&mut self) {
        for sq in self.sqs.iter_mut() {
            *sq = None;
        }
        for cq in self.cqs.iter_mut() {
            *cq = None;
        }
        self.publish_io_queues();
        self.active_sqs.clear();
        self.irq_list.clear();
        self.pending_deletes = 0;
        for s in self.slots.iter_mut().filter(|s| s.live) {
            s.orphan = true;
        }
        self.aer.cids.clear();
        self.aer.pending.clear();
        self.aer.notice_masked = false;
        self.aer.error_masked = false;
        self.admin_backlog.clear();
        self.keep_alive = None;
        self.shadow = None;
        self.shared.set_shadow_db(0);
        for qid in 0..self.cqs.len() {
            self.shared.mirror_cq(qid as u16, false, 0);
        }
        self.iv_cd.iter_mut().for_each(|v| *v = false);
        let vwc = self.feat.vwc;
        self.feat = Features {
            vwc,
            ..Features::default()
        };
        self.shared.doorbells.clear();
        self.ready = false;
        self.shared.csts.fetch_and(!0x3, Ordering::AcqRel);
    }

    /// Function-level reset: controller reset plus all registers back to zero.
    pub fn function_reset(&mut self) {
        if self.ready {
            self.smart.unsafe_shutdowns += 1;
        }
        self.reset();
        self.shared.cc.store(0, Ordering::Release);
        self.shared.csts.store(0, Ordering::Release);
        self.shared.aqa.store(0, Ordering::Release);
        self.shared.asq.store(0, Ordering::Release);
        self.shared.acq.store(0, Ordering::Release);
    }

    // ----- registers ----------------------------------------------------------------

    /// A BAR0 read (registers and, refused, doorbells).
    pub fn bar0_read(&self, off: u64, data: &mut [u8]) -> Result<(), BarError> {
        bar0_read(&self.shared, off, data)
    }

    /// A BAR0 write: register writes are applied here; doorbell writes are stored in the
    /// doorbell page (trapped-doorbell mode).
    pub fn bar0_write(&mut self, off: u64, data: &[u8]) -> Result<(), BarError> {
        check_bar0_access(off, data.len())?;
        if off >= reg::DOORBELL_BASE {
            store_doorbell(&self.shared, off, data);
            return Ok(());
        }
        for (i, c) in data.chunks_exact(4).enumerate() {
            let v = u32::from_le_bytes(c.try_into().unwrap_or([0; 4]));
            self.write_reg32(off + (i as u64) * 4, v);
        }
        Ok(())
    }

    /// Write one dword register.
    pub fn write_reg32(&mut self, off: u64, v: u32) {
        let enabled = self.shared.cc() & 1 != 0;
        let set_lo = |a: &AtomicU64, v: u32| {
            let old = a.load(Ordering::Acquire);
            a.store(
                (old & !0xffff_ffff) | u64::from(v & !0xfff),
                Ordering::Release,
            );
        };
        let set_hi = |a: &AtomicU64, v: u32| {
            let old = a.load(Ordering::Acquire);
            a.store((old & 0xffff_ffff) | u64::from(v) << 32, Ordering::Release);
        };
        match off {
            reg::CC => self.write_cc(v),
            reg::INTMS => {
                self.shared.intms.fetch_or(v, Ordering::AcqRel);
            }
            reg::INTMC => {
                self.shared.intms.fetch_and(!v, Ordering::AcqRel);
            }
            reg::AQA if !enabled => self.shared.aqa.store(v & 0x0fff_0fff, Ordering::Release),
            0x28 if !enabled => set_lo(&self.shared.asq, v),
            0x2c if !enabled => set_hi(&self.shared.asq, v),
            0x30 if !enabled => set_lo(&self.shared.acq, v),
            0x34 if !enabled => set_hi(&self.shared.acq, v),
            _ => debug!(
                off,
                v, "nvme: write to read-only or unimplemented register ignored"
            ),
        }
    }

    fn write_cc(&mut self, new: u32) {
        let old = self.shared.cc();
        let was = old & 1 != 0;
        let now = new & 1 != 0;
        // Only EN and SHN may change while enabled.
        let stored = if was && now {
            (old & !0xc000) | (new & 0xc000)
        } else {
            new & 0x00ff_fff1
        };
        self.shared.cc.store(stored, Ordering::Release);
        if !was && now {
            self.enable();
        } else if was && !now {
            self.reset();
            self.shared.csts.fetch_and(!0xd, Ordering::AcqRel);
        } else if was && now {
            let shn = (new >> 14) & 3;
            let old_shn = (old >> 14) & 3;
            if shn != 0 && old_shn == 0 {
                self.shutdown();
            }
        }
    }

    fn shutdown(&mut self) {
        // Outstanding I/O was quiesced by the control path; delete I/O queues and report
        // shutdown complete. The admin queue stays usable for diagnostics.
        let (sq0, cq0) = (
            self.sqs.first_mut().and_then(Option::take),
            self.cqs.first_mut().and_then(Option::take),
        );
        let (db0, db1) = (self.shared.doorbells.load(0), self.shared.doorbells.load(1));
        self.reset();
        // The admin queue keeps its doorbells (reset() cleared the page).
        self.shared.doorbells.store(0, db0);
        self.shared.doorbells.store(1, db1);
        self.ready = true;
        if let Some(s) = self.sqs.first_mut() {
            *s = sq0;
        }
        if let Some(c) = self.cqs.first_mut() {
            *c = cq0;
        }
        if let Some(cq) = self.cqs.first().and_then(Option::as_ref) {
            self.shared.mirror_cq(0, cq.ien, cq.tail);
        }
        self.active_sqs.push(0);
        self.shared.csts.store(1 | 2 << 2, Ordering::Release);
    }

    fn fail(&mut self, why: &str) {
        debug!(why, "nvme: controller fatal status");
        self.shared.csts.fetch_or(2, Ordering::AcqRel);
    }

    fn enable(&mut self) {
        let cc = self.shared.cc();
        let css = (cc >> 4) & 7;
        let mps = (cc >> 7) & 0xf;
        let ams = (cc >> 11) & 7;
        let iosqes = (cc >> 16) & 0xf;
        let iocqes = (cc >> 20) & 0xf;
        let aqa = self.shared.aqa.load(Ordering::Acquire);
        let asqs = (aqa & 0xfff) + 1;
        let acqs = ((aqa >> 16) & 0xfff) + 1;
        let asq = self.shared.asq.load(Ordering::Acquire);
        let acq = self.shared.acq.load(Ordering::Acquire);
        if css != 0 || mps != 0 || ams != 0 {
            return self.fail("unsupported CC.CSS/MPS/AMS");
        }
        if (iosqes != 0 && iosqes != 6) || (iocqes != 0 && iocqes != 4) {
            return self.fail("unsupported CC.IOSQES/IOCQES");
        }
        if asqs < 2 || acqs < 2 {
            return self.fail("admin queue size below 2");
        }
        let Some(mem) = self.mem.clone() else {
            return self.fail("no DMA memory at enable");
        };
        let (Some(sring), Some(cring)) = (
            Ring::new(&mem, asq, asqs as usize * 64),
            Ring::new(&mem, acq, acqs as usize * 16),
        ) else {
            return self.fail("admin queues not in mapped memory");
        };
        sring.zero();
        cring.zero();
        if let Some(s) = self.sqs.first_mut() {
            *s = Some(Sq {
                cqid: 0,
                size: asqs as u16,
                gpa: asq,
                ring: Some(sring),
                head: 0,
                inflight: 0,
                deleting: None,
                db_error: false,
                published: 0,
            });
        }
        if let Some(c) = self.cqs.first_mut() {
            *c = Some(new_cq(acqs as u16, acq, Some(cring), true, 0));
            if let Some(cq) = c.as_mut() {
                cq.sq_refs = 1;
            }
        }
        self.shared.mirror_cq(0, true, 0);
        self.active_sqs.clear();
        self.active_sqs.push(0);
        self.shared.doorbells.store(0, 0);
        self.shared.doorbells.store(1, 0);
        self.ready = true;
        self.shared.csts.store(1, Ordering::Release);
    }

    // ----- queue creation helpers used by admin.rs -------------------------------------

    pub(crate) fn create_cq(
        &mut self,
        qid: u16,
        size: u16,
        gpa: u64,
        ien: bool,
        iv: u16,
    ) -> Result<(), Status> {
        let ring = self.queue_ring(gpa, usize::from(size) * 16)?;
        let slot = self
            .cqs
            .get_mut(usize::from(qid))
            .ok_or(Status::INVALID_QID)?;
        *slot = Some(new_cq(size, gpa, Some(ring), ien, iv));
        self.clear_doorbell(usize::from(qid) * 2 + 1);
        self.shared.mirror_cq(qid, ien, 0);
        Ok(())
    }

    /// A zeroed ring of `bytes` at `gpa` in mapped memory (Data Transfer Error if not).
    fn queue_ring(&self, gpa: u64, bytes: usize) -> Result<Ring, Status> {
        let mem = self.mem.as_ref().ok_or(Status::DATA_TRANSFER_ERROR)?;
        let ring = Ring::new(mem, gpa, bytes).ok_or(Status::DATA_TRANSFER_ERROR)?;
        ring.zero();
        Ok(ring)
    }

    /// Zeroes doorbell `idx` in the doorbell page and, if configured, the shadow buffer.
    fn clear_doorbell(&self, idx: usize) {
        self.shared.doorbells.store(idx, 0);
        if let Some(sh) = &self.shadow {
            let _ = sh.db.write_u32(idx * 4, 0);
        }
    }

    pub(crate) fn create_sq(
        &mut self,
        qid: u16,
        size: u16,
        gpa: u64,
        cqid: u16,
    ) -> Result<(), Status> {
        let ring = self.queue_ring(gpa, usize::from(size) * 64)?;
        let cq = self
            .cqs
            .get_mut(usize::from(cqid))
            .and_then(Option::as_mut)
            .ok_or(Status::CQ_INVALID)?;
        cq.sq_refs += 1;
        let slot = self
            .sqs
            .get_mut(usize::from(qid))
            .ok_or(Status::INVALID_QID)?;
        *slot = Some(Sq {
            cqid,
            size,
            gpa,
            ring: Some(ring),
            head: 0,
            inflight: 0,
            deleting: None,
            db_error: false,
            published: 0,
        });
        self.clear_doorbell(usize::from(qid) * 2);
        self.active_sqs.push(qid);
        if qid != 0 {
            self.stats.io_queues_created += 1;
        }
        self.publish_io_queues();
        Ok(())
    }

    /// Remove SQ `qid` now (no command in flight).
    pub(crate) fn remove_sq(&mut self, qid: u16) {
        if let Some(sq) = self.sqs.get_mut(usize::from(qid)).and_then(Option::take) {
            if let Some(cq) = self
                .cqs
                .get_mut(usize::from(sq.cqid))
                .and_then(Option::as_mut)
            {
                cq.sq_refs = cq.sq_refs.saturating_sub(1);
            }
        }
        self.active_sqs.retain(|&q| q != qid);
        self.publish_io_queues();
    }

    pub(crate) fn io_queues_exist(&self) -> bool {
        self.sqs.iter().skip(1).any(Option::is_some) || self.cqs.iter().skip(1).any(Option::is_some)
    }

    // ----- doorbells --------------------------------------------------------------

    #[inline]
    fn sq_tail(&mut self, qid: u16) -> u32 {
        let idx = usize::from(qid) * 2;
        if qid != 0 {
            if let Some(sh) = &self.shadow {
                self.stats.shadow_doorbell_reads += 1;
                let v = sh.db.read_u32(idx * 4).unwrap_or(0);
                // EventIdx = what we have seen: the host rings (and wakes a sleeping
                // poller through the trapped write) only for entries past it.
                let _ = sh.ei.write_u32(idx * 4, v);
                return v;
            }
        }
        self.shared.doorbells.load(idx)
    }

    #[inline]
    fn cq_head(&mut self, qid: u16) -> u32 {
        let idx = usize::from(qid) * 2 + 1;
        if qid != 0 {
            if let Some(sh) = &self.shadow {
                self.stats.shadow_doorbell_reads += 1;
                return sh.db.read_u32(idx * 4).unwrap_or(0);
            }
        }
        self.shared.doorbells.load(idx)
    }

    fn refresh_cq_head(&mut self, cqid: u16) {
        let head = self.cq_head(cqid);
        let mut bad = false;
        if let Some(cq) = self.cqs.get_mut(usize::from(cqid)).and_then(Option::as_mut) {
            if head < u32::from(cq.size) {
                cq.head = head as u16;
                cq.db_error = false;
            } else if !cq.db_error {
                cq.db_error = true;
                bad = true;
            }
        }
        if bad {
            self.invalid_doorbell(cqid, "CQ head beyond queue size");
        }
    }

    fn sq_published(&self, qid: u16) -> u16 {
        self.sqs
            .get(usize::from(qid))
            .and_then(Option::as_ref)
            .map_or(0, |sq| sq.published)
    }

    /// Set Features Keep Alive Timer: `kato` ms rounded up to the granularity (0: off).
    /// Returns the value in use.
    pub(crate) fn set_keep_alive(&mut self, kato: u32) -> u32 {
        let g = KEEP_ALIVE_GRANULARITY_MS;
        let used = kato.div_ceil(g).saturating_mul(g);
        self.keep_alive = (used != 0).then(|| {
            let t = Duration::from_millis(u64::from(used));
            (t, Instant::now() + t)
        });
        used
    }

    /// A Keep Alive command restarts the timer.
    pub(crate) fn touch_keep_alive(&mut self) {
        if let Some((t, d)) = self.keep_alive.as_mut() {
            *d = Instant::now() + *t;
        }
    }

    #[cold]
    fn check_keep_alive(&mut self) {
        self.ka_polls = self.ka_polls.wrapping_add(1);
        if self.ka_polls % 1024 != 0 {
            return;
        }
        if let Some((_, deadline)) = self.keep_alive {
            if Instant::now() >= deadline && self.ready {
                // NVMe 2.0 3.9: the controller stops processing commands and reports a
                // fatal status; the host resets it.
                self.keep_alive = None;
                self.ready = false;
                self.fail("keep alive timer expired");
            }
        }
    }

    fn invalid_doorbell(&mut self, qid: u16, what: &'static str) {
        debug!(qid, what, "nvme: invalid doorbell write");
        self.stats.invalid_doorbell_writes += 1;
        self.raise_event(
            aen::TYPE_ERROR,
            aen::ERROR_INVALID_DOORBELL_VALUE,
            crate::spec::log::ERROR,
        );
    }

    // ----- the poll loop ----------------------------------------------------------------

    /// One polling step: fetch new commands from every SQ, reap backend completions,
    /// post CQEs, fire coalesced interrupts. Returns the amount of work done.
    pub fn poll(&mut self) -> usize {
        self.poll_with(false)
    }

    /// Like [`poll`](Self::poll) but, with `quiescing`, fetches no new commands.
    pub fn poll_with(&mut self, quiescing: bool) -> usize {
        let mut work = 0;
        if self.keep_alive.is_some() {
            self.check_keep_alive();
        }
        if self.ready && !quiescing {
            let n = self.active_sqs.len();
            let mut i = 0;
            while i < n {
                let qid = self.active_sqs.get(i).copied().unwrap_or(0);
                work += self.process_sq(qid);
                i += 1;
            }
        }
        work += self.reap();
        if !self.admin_backlog.is_empty() {
            self.flush_admin_backlog();
        }
        if self.pending_deletes > 0 {
            self.finish_deletes();
        }
        self.flush_irqs();
        work
    }

    fn process_sq(&mut self, qid: u16) -> usize {
        let tail = self.sq_tail(qid);
        let (size, cqid, head0, deleting) =
            match self.sqs.get(usize::from(qid)).and_then(Option::as_ref) {
                Some(sq) if sq.ring.is_some() => (sq.size, sq.cqid, sq.head, sq.deleting.is_some()),
                _ => return 0,
            };
        if deleting {
            return 0;
        }
        let bad = if tail >= u32::from(size) {
            Some("SQ tail beyond queue size")
        } else if tail as u16 == head0 {
            return 0;
        } else if sq_overflow(tail as u16, head0, self.sq_published(qid), size) {
            Some("SQ tail overflows the queue (or moved backwards)")
        } else {
            None
        };
        if let Some(what) = bad {
            let first = self
                .sqs
                .get_mut(usize::from(qid))
                .and_then(Option::as_mut)
                .is_some_and(|sq| {
                    let f = !sq.db_error;
                    sq.db_error = true;
                    f
                });
            if first {
                self.invalid_doorbell(qid, what);
            }
            return 0;
        }
        let tail = tail as u16;
        if let Some(sq) = self.sqs.get_mut(usize::from(qid)).and_then(Option::as_mut) {
            sq.db_error = false;
        }
        self.refresh_cq_head(cqid);
        let mut done = 0usize;
        let mut head = head0;
        while head != tail && done < usize::from(SQ_BATCH) {
            let room = match self.cqs.get(usize::from(cqid)).and_then(Option::as_ref) {
                Some(cq) if cq.ring.is_some() => cq.room(),
                _ => 0,
            };
            if room == 0 {
                self.stats.cq_full += 1;
                break;
            }
            let Some(sq) = self.sqs.get_mut(usize::from(qid)).and_then(Option::as_mut) else {
                break;
            };
            let Some(sqe) = sq.ring.as_ref().and_then(|r| r.read_sqe(head)) else {
                break;
            };
            head = if head + 1 == size { 0 } else { head + 1 };
            sq.head = head;
            if let Some(cq) = self.cqs.get_mut(usize::from(cqid)).and_then(Option::as_mut) {
                cq.reserved += 1;
            }
            if qid == 0 {
                self.stats.admin_commands += 1;
                self.admin_command(&sqe);
            } else {
                self.stats.io_commands += 1;
                self.io_command(qid, cqid, &sqe);
            }
            done += 1;
        }
        done
    }

    // ----- completions -----------------------------------------------------------------

    /// Post a completion for a command fetched from `sqid` (its CQ slot was reserved).
    pub(crate) fn complete(&mut self, sqid: u16, cid: u16, status: Status, dw0: u32) {
        let (cqid, sqhd) = match self.sqs.get_mut(usize::from(sqid)).and_then(Option::as_mut) {
            Some(sq) => {
                sq.published = sq.head;
                (sq.cqid, sq.head)
            }
            None => return,
        };
        if !status.is_success() {
            self.stats.errors += 1;
            self.log_error(sqid, cid, status);
        }
        let cqe = Cqe {
            dw0,
            dw1: 0,
            sqhd,
            sqid,
            cid,
            status,
        };
        self.post(cqid, &cqe, true);
    }

    /// Post a completion that holds no reservation (AER, deferred admin completions).
    pub(crate) fn complete_unreserved(&mut self, sqid: u16, cid: u16, status: Status, dw0: u32) {
        let sqhd = self
            .sqs
            .get_mut(usize::from(sqid))
            .and_then(Option::as_mut)
            .map_or(0, |s| {
                s.published = s.head;
                s.head
            });
        let cqe = Cqe {
            dw0,
            dw1: 0,
            sqhd,
            sqid,
            cid,
            status,
        };
        self.refresh_cq_head(0);
        let room = self
            .cqs
            .first()
            .and_then(Option::as_ref)
            .map_or(0, Cq::room);
        if room == 0 || !self.admin_backlog.is_empty() {
            self.admin_backlog.push_back((cqe, 0));
            return;
        }
        self.post(0, &cqe, false);
    }

    fn flush_admin_backlog(&mut self) {
        self.refresh_cq_head(0);
        while let Some((cqe, _)) = self.admin_backlog.front().copied() {
            let room = self
                .cqs
                .first()
                .and_then(Option::as_ref)
                .map_or(0, Cq::room);
            if room == 0 {
                break;
            }
            self.admin_backlog.pop_front();
            self.post(0, &cqe, false);
        }
    }

    /// Release the CQ reservation of a fetched command that will complete later
    /// without a reservation (AER).
    pub(crate) fn unreserve(&mut self, sqid: u16) {
        let cqid = self
            .sqs
            .get(usize::from(sqid))
            .and_then(Option::as_ref)
            .map_or(0, |s| s.cqid);
        if let Some(cq) = self.cqs.get_mut(usize::from(cqid)).and_then(Option::as_mut) {
            cq.reserved = cq.reserved.saturating_sub(1);
        }
    }

    fn post(&mut self, cqid: u16, cqe: &Cqe, reserved: bool) {
        let adaptive = self.cfg.adaptive_irq;
        let Some(cq) = self.cqs.get_mut(usize::from(cqid)).and_then(Option::as_mut) else {
            return;
        };
        if reserved {
            cq.reserved = cq.reserved.saturating_sub(1);
        }
        let Some(ring) = cq.ring.as_ref() else { return };
        if ring.write_cqe(cq.tail, cqe, cq.phase).is_none() {
            return;
        }
        cq.tail += 1;
        if cq.tail == cq.size {
            cq.tail = 0;
            cq.phase = !cq.phase;
        }
        self.stats.completions += 1;
        if cq.ien {
            // Before the interrupt: the INTx level must see this entry.
            self.shared.mirror_cq(cqid, true, cq.tail);
            if cqid == 0 || !adaptive {
                let iv = cq.iv;
                self.irq.trigger(iv);
                self.stats.interrupts += 1;
            } else {
                cq.unsignalled += 1;
                if !cq.irq_pending {
                    cq.irq_pending = true;
                    self.irq_list.push(cqid);
                }
            }
        }
    }

    fn flush_irqs(&mut self) {
        if self.irq_list.is_empty() {
            return;
        }
        let (thr, time) = (
            u32::from(self.feat.coalesce_thr),
            u64::from(self.feat.coalesce_time),
        );
        let mut now = None;
        let mut i = 0;
        while i < self.irq_list.len() {
            let cqid = self.irq_list.get(i).copied().unwrap_or(0);
            let coalesce = (thr > 0 || time > 0) && !self.iv_coalescing_disabled(cqid);
            let Some(cq) = self.cqs.get_mut(usize::from(cqid)).and_then(Option::as_mut) else {
                self.irq_list.swap_remove(i);
                continue;
            };
            let fire = if !coalesce {
                true
            } else {
                let start = *cq.first_unsignalled.get_or_insert_with(Instant::now);
                let t = *now.get_or_insert_with(Instant::now);
                cq.unsignalled > thr || t.duration_since(start).as_micros() as u64 >= time * 100
            };
            if fire {
                cq.irq_pending = false;
                cq.unsignalled = 0;
                cq.first_unsignalled = None;
                let iv = cq.iv;
                self.irq.trigger(iv);
                self.stats.interrupts += 1;
                self.irq_list.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn iv_coalescing_disabled(&self, cqid: u16) -> bool {
        let iv = self
            .cqs
            .get(usize::from(cqid))
            .and_then(Option::as_ref)
            .map_or(0, |c| c.iv);
        self.iv_cd.get(usize::from(iv)).copied().unwrap_or(false)
    }

    // ----- I/O commands --------------------------------------------------------------

    fn alloc_slot(&mut self) -> u32 {
        if let Some(i) = self.free_slots.pop() {
            return i;
        }
        self.slots.push(Slot::default());
        (self.slots.len() - 1) as u32
    }

    fn free_slot(&mut self, i: u32) {
        if let Some(s) = self.slots.get_mut(i as usize) {
            s.live = false;
            s.orphan = false;
            self.free_slots.push(i);
        }
    }

    fn io_command(&mut self, sqid: u16, _cqid: u16, sqe: &Sqe) {
        if let Err(st) = self.io_submit(sqid, sqe) {
            debug!(sqid, cid = sqe.cid(), opcode = sqe.opcode(), status = %st, "nvme: I/O command rejected");
            self.complete(sqid, sqe.cid(), st, 0);
        }
    }

    fn io_submit(&mut self, sqid: u16, sqe: &Sqe) -> Result<(), Status> {
        let opc = sqe.opcode();
        if sqe.fuse() != 0 {
            return Err(Status::INVALID_FIELD);
        }
        let nsid = sqe.nsid();
        if opc == io::FLUSH && nsid == 0xffff_ffff {
            return self.flush_all(sqid, sqe.cid());
        }
        let nsidx = nsid.wrapping_sub(1) as usize;
        let ns = self
            .ns
            .get(nsidx)
            .and_then(Option::as_ref)
            .ok_or(Status::INVALID_NAMESPACE)?;
        let (op, slba, nlb) = match opc {
            io::READ | io::WRITE | io::COMPARE | io::WRITE_ZEROES => {
                let slba = u64::from(sqe.dw[10]) | u64::from(sqe.dw[11]) << 32;
                let nlb = u64::from(sqe.dw[12] & 0xffff) + 1;
                let op = match opc {
                    io::READ => IoOp::Read,
                    io::WRITE => IoOp::Write {
                        fua: sqe.dw[12] & (1 << 30) != 0,
                    },
                    io::COMPARE if ns.info.caps.compare => IoOp::Compare,
                    io::WRITE_ZEROES if ns.info.caps.write_zeroes => IoOp::WriteZeroes,
                    _ => return Err(Status::INVALID_OPCODE),
                };
                (op, slba, nlb)
            }
            io::FLUSH => (IoOp::Flush, 0, 0),
            io::DSM => return self.dsm(sqid, sqe, nsidx),
            _ => return Err(Status::INVALID_OPCODE),
        };
        if op == IoOp::Flush && !ns_flushes(ns) {
            self.complete(sqid, sqe.cid(), Status::SUCCESS, 0);
            return Ok(());
        }
        // The one range check of this command (the backend trusts it): op allowed, LBA
        // range inside the bdev, within its maximum transfer.
        let range = ns.chan.check(op, slba, nlb).map_err(io_error_status)?;
        let len = range.len();
        let mdts = self.cfg.mdts_bytes();
        let needs_data = op.has_data();
        if needs_data && len > mdts {
            return Err(Status::INVALID_FIELD);
        }
        let slot = self.alloc_slot();
        let io = StartIo {
            slot,
            sqid,
            cid: sqe.cid(),
            nsidx,
            op,
            offset: range.offset(),
            len,
        };
        let mut iov = IoVecs::new();
        if needs_data {
            let Some(mem) = self.mem.as_ref() else {
                self.free_slot(slot);
                return Err(Status::DATA_TRANSFER_ERROR);
            };
            let max = (mdts / PAGE_SIZE) as usize + 2;
            let mut sink = IovSink::new(mem, &mut iov, max.max(crate::prp::MAX_SGL_DESCRIPTORS));
            let r = match sqe.psdt() {
                // Fast path: the whole transfer sits in PRP1's page.
                0 if len <= PAGE_SIZE - (sqe.prp1() & (PAGE_SIZE - 1)) => sink.seg(sqe.prp1(), len),
                0 => walk_prp(mem, sqe.prp1(), sqe.prp2(), len, &mut sink),
                1 | 2 => walk_sgl(mem, &sqe.sgl_bytes(), len, &mut sink),
                _ => Err(Status::INVALID_FIELD),
            };
            if let Err(st) = r {
                return self.walk_failed(st, sqe, io);
            }
            sink.finish();
        }
        let keep = self
            .mem
            .as_ref()
            .map(|m| Arc::clone(m) as Arc<dyn std::any::Any + Send + Sync>);
        self.fill_slot(&io, false);
        self.submit_range(nsidx, &range, iov, u64::from(slot), keep);
        if let Some(sq) = self.sqs.get_mut(usize::from(sqid)).and_then(Option::as_mut) {
            sq.inflight += 1;
        }
        Ok(())
    }

    /// Fills the slot of a data command about to be submitted.
    #[inline(always)]
    fn fill_slot(&mut self, io: &StartIo, bounced: bool) {
        if let Some(s) = self.slots.get_mut(io.slot as usize) {
            s.sqid = io.sqid;
            s.cid = io.cid;
            s.nsidx = io.nsidx as u32;
            s.pending = 1;
            s.status = Status::SUCCESS;
            s.is_read = io.op == IoOp::Read;
            s.is_write = matches!(io.op, IoOp::Write { .. });
            s.bytes = io.len;
            s.live = true;
            s.orphan = false;
            s.bounced = bounced;
        }
    }

    /// Hands a request to its namespace and counts it in flight on its SQ.
    #[inline(always)]
    fn launch(&mut self, nsidx: usize, sqid: u16, req: IoRequest) {
        self.submit_to_ns(nsidx, req);
        if let Some(sq) = self.sqs.get_mut(usize::from(sqid)).and_then(Option::as_mut) {
            sq.inflight += 1;
        }
    }

    /// The data pointer did not translate to mapped memory: a Data Transfer Error there
    /// is the only place a bounce is tried (data in fd-less windows, see
    /// [`crate::bounce`]); any other status fails the command.
    #[cold]
    #[inline(never)]
    fn walk_failed(&mut self, st: Status, sqe: &Sqe, io: StartIo) -> Result<(), Status> {
        if st != Status::DATA_TRANSFER_ERROR || self.msg_dma.is_none() {
            self.free_slot(io.slot);
            return Err(st);
        }
        let b = match self.bounce_prepare(sqe, io.len, io.op == IoOp::Read) {
            Ok(b) => b,
            Err(st) => {
                self.free_slot(io.slot);
                return Err(st);
            }
        };
        let req = IoRequest {
            op: io.op,
            offset: io.offset,
            len: io.len,
            iov: b.iovecs(),
            tag: u64::from(io.slot),
            keepalive: Some(b.keepalive()),
        };
        self.bounces.push((io.slot, b));
        self.fill_slot(&io, true);
        self.launch(io.nsidx, io.sqid, req);
        Ok(())
    }

    /// A bounced command's backend request finished with `status`: drop its buffer
    /// after copying a successful Read to the guest (before the CQE: the host must find
    /// the data in place when it sees success). Returns the command's status.
    #[cold]
    #[inline(never)]
    fn bounce_done(&mut self, slot: u32, orphan: bool, status: Status) -> Status {
        let Some(i) = self.bounces.iter().position(|(s, _)| *s == slot) else {
            return status;
        };
        let (_, b) = self.bounces.swap_remove(i);
        if orphan || !status.is_success() {
            return status;
        }
        let Some(mem) = self.mem.as_ref() else {
            return Status::DATA_TRANSFER_ERROR;
        };
        match b.finish(mem, self.msg_dma.as_deref()) {
            Ok(()) => Status::SUCCESS,
            Err(st) => st,
        }
    }

    /// Hands a checked range and its iovecs to its namespace: the backend request is built
    /// in place and not re-validated (behind earlier retries it waits as a plain request).
    #[inline(always)]
    fn submit_range(
        &mut self,
        nsidx: usize,
        range: &BlockRange,
        iov: IoVecs,
        tag: u64,
        keep: Option<Arc<dyn std::any::Any + Send + Sync>>,
    ) {
        if let Some(ns) = self.ns.get_mut(nsidx).and_then(Option::as_mut) {
            ns.inflight += 1;
            if !ns.retry.is_empty() {
                ns.retry.push_back(range.into_request(iov, tag, keep));
                return;
            }
            if let Err(rej) = ns.chan.submit_range(range, iov, tag, keep) {
                self.stats.backend_busy += 1;
                ns.retry.push_back(rej.io);
            }
        }
    }

    fn submit_to_ns(&mut self, nsidx: usize, req: IoRequest) {
        if let Some(ns) = self.ns.get_mut(nsidx).and_then(Option::as_mut) {
            ns.inflight += 1;
            if !ns.retry.is_empty() {
                ns.retry.push_back(req);
                return;
            }
            if let Err(rej) = ns.chan.submit(req) {
                self.stats.backend_busy += 1;
                ns.retry.push_back(rej.io);
            }
        }
    }

    /// Re-walks a command whose data did not translate to mapped memory into plain
    /// segments and stages it in a host buffer (PRP lists / SGL segments must still be
    /// mapped). Off the fd-backed hot path by construction.
    #[cold]
    #[inline(never)]
    fn bounce_prepare(&self, sqe: &Sqe, len: u64, to_guest: bool) -> Result<Bounce, Status> {
        let mem = self.mem.as_ref().ok_or(Status::DATA_TRANSFER_ERROR)?;
        let dma = self.msg_dma.as_deref().ok_or(Status::DATA_TRANSFER_ERROR)?;
        let mut segs: Vec<Seg> = Vec::new();
        match sqe.psdt() {
            0 => walk_prp(mem, sqe.prp1(), sqe.prp2(), len, &mut segs)?,
            1 | 2 => walk_sgl(mem, &sqe.sgl_bytes(), len, &mut segs)?,
            _ => return Err(Status::INVALID_FIELD),
        }
        Bounce::prepare(mem, dma, segs, len, to_guest)
    }

    fn flush_all(&mut self, sqid: u16, cid: u16) -> Result<(), Status> {
        let targets: Vec<usize> = self
            .ns
            .iter()
            .enumerate()
            .filter(|(_, n)| n.as_ref().is_some_and(ns_flushes))
            .map(|(i, _)| i)
            .collect();
        self.multi_submit(
            sqid,
            cid,
            targets
                .into_iter()
                .map(|i| (i, IoOp::Flush, 0, 0))
                .collect(),
        )
    }

    /// Submit several backend requests for one command (flush-all, DSM ranges).
    pub(crate) fn multi_submit(
        &mut self,
        sqid: u16,
        cid: u16,
        reqs: Vec<(usize, IoOp, u64, u64)>,
    ) -> Result<(), Status> {
        if reqs.is_empty() {
            self.complete(sqid, cid, Status::SUCCESS, 0);
            return Ok(());
        }
        let slot = self.alloc_slot();
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.sqid = sqid;
            s.cid = cid;
            s.nsidx = u32::MAX;
            s.pending = reqs.len() as u16;
            s.status = Status::SUCCESS;
            s.is_read = false;
            s.is_write = false;
            s.bytes = 0;
            s.live = true;
            s.orphan = false;
            s.bounced = false;
        }
        if let Some(sq) = self.sqs.get_mut(usize::from(sqid)).and_then(Option::as_mut) {
            sq.inflight += 1;
        }
        for (nsidx, op, offset, len) in reqs {
            let req = IoRequest {
                op,
                offset,
                len,
                iov: IoVecs::new(),
                tag: u64::from(slot),
                keepalive: None,
            };
            self.submit_to_ns(nsidx, req);
        }
        Ok(())
    }

    fn reap(&mut self) -> usize {
        let mut n = 0;
        let mut buf = std::mem::take(&mut self.completions_buf);
        for ns in self.ns.iter_mut().flatten() {
            while let Some(req) = ns.retry.pop_front() {
                if let Err(rej) = ns.chan.submit(req) {
                    ns.retry.push_front(rej.io);
                    break;
                }
            }
            if ns.inflight == 0 {
                continue;
            }
            ns.chan.poll(&mut |c| buf.push(c));
            ns.inflight = ns.inflight.saturating_sub(buf.len() as u32 - n as u32);
            n = buf.len();
        }
        for c in buf.drain(..) {
            self.io_done(c);
        }
        self.completions_buf = buf;
        n
    }

    fn io_done(&mut self, c: IoCompletion) {
        let idx = c.tag as u32;
        let Some(s) = self.slots.get_mut(idx as usize) else {
            return;
        };
        if !s.live {
            return;
        }
        let st = match c.result {
            Ok(()) => Status::SUCCESS,
            Err(e) => io_error_status(e),
        };
        if !st.is_success() && s.status.is_success() {
            s.status = st;
        }
        s.pending = s.pending.saturating_sub(1);
        if s.pending > 0 {
            return;
        }
        let (sqid, cid, mut status, orphan) = (s.sqid, s.cid, s.status, s.orphan);
        let (is_read, is_write, bytes, bounced) = (s.is_read, s.is_write, s.bytes, s.bounced);
        self.free_slot(idx);
        if orphan | bounced {
            if bounced {
                status = self.bounce_done(idx, orphan, status);
            }
            if orphan {
                return;
            }
        }
        if status.is_success() {
            if is_read {
                self.smart.read_cmds += 1;
                self.smart.bytes_read += bytes;
            } else if is_write {
                self.smart.write_cmds += 1;
                self.smart.bytes_written += bytes;
            }
        } else if status.sct() == 2 {
            self.smart.media_errors += 1;
        }
        let deleting = match self.sqs.get_mut(usize::from(sqid)).and_then(Option::as_mut) {
            Some(sq) => {
                sq.inflight = sq.inflight.saturating_sub(1);
                sq.deleting.is_some()
            }
            None => return,
        };
        if deleting {
            // Commands of an SQ being deleted complete silently (spec: may not be posted).
            self.unreserve(sqid);
            return;
        }
        self.complete(sqid, cid, status, 0);
    }

    fn finish_deletes(&mut self) {
        let mut done = Vec::new();
        for (qid, sq) in self.sqs.iter().enumerate() {
            if let Some(sq) = sq {
                if let (Some(cid), 0) = (sq.deleting, sq.inflight) {
                    done.push((qid as u16, cid));
                }
            }
        }
        for (qid, cid) in done {
            self.pending_deletes = self.pending_deletes.saturating_sub(1);
            self.remove_sq(qid);
            self.complete_unreserved(0, cid, Status::SUCCESS, 0);
        }
    }

    // ----- async events & error log -----------------------------------------------------

    pub(crate) fn raise_event(&mut self, kind: u8, info: u8, lid: u8) {
        let masked = match kind {
            aen::TYPE_NOTICE => self.aer.notice_masked,
            aen::TYPE_ERROR => self.aer.error_masked,
            _ => false,
        };
        if masked {
            return;
        }
        let dw0 = u32::from(kind) | u32::from(info) << 8 | u32::from(lid) << 16;
        if !self.aer.pending.contains(&dw0) {
            self.aer.pending.push_back(dw0);
        }
        self.deliver_events();
    }

    pub(crate) fn deliver_events(&mut self) {
        while !self.aer.cids.is_empty() && !self.aer.pending.is_empty() {
            let (Some(cid), Some(dw0)) = (self.aer.cids.pop(), self.aer.pending.pop_front()) else {
                break;
            };
            match (dw0 & 7) as u8 {
                aen::TYPE_NOTICE => self.aer.notice_masked = true,
                aen::TYPE_ERROR => self.aer.error_masked = true,
                _ => {}
            }
            self.complete_unreserved(0, cid, Status::SUCCESS, dw0);
        }
    }

    fn log_error(&mut self, sqid: u16, cid: u16, status: Status) {
        self.smart.error_count += 1;
        let mut e = [0u8; 64];
        e[0..8].copy_from_slice(&self.smart.error_count.to_le_bytes());
        e[8..10].copy_from_slice(&sqid.to_le_bytes());
        e[10..12].copy_from_slice(&cid.to_le_bytes());
        e[12..14].copy_from_slice(&(status.0 << 1).to_le_bytes());
        e[14..16].copy_from_slice(&0xffffu16.to_le_bytes());
        if self.error_log.len() >= ERROR_LOG_ENTRIES {
            self.error_log.pop_back();
        }
        self.error_log.push_front(e);
    }
}

fn ns_flushes(ns: &Namespace) -> bool {
    ns.info.caps.flush
}

/// Map a backend error to the NVMe status the host sees.
pub fn io_error_status(e: IoError) -> Status {
    match e {
        IoError::MediaRead => Status::UNRECOVERED_READ_ERROR,
        IoError::MediaWrite => Status::WRITE_FAULT,
        IoError::CompareMismatch => Status::COMPARE_FAILURE,
        IoError::Invalid => Status::INVALID_FIELD,
        IoError::Unsupported => Status::INVALID_OPCODE,
        IoError::OutOfRange => Status::LBA_OUT_OF_RANGE,
        IoError::ReadOnly => Status::WRITE_TO_READ_ONLY,
        IoError::NoSpace => Status::CAPACITY_EXCEEDED,
        IoError::Internal => Status::INTERNAL_ERROR,
        IoError::Timeout | IoError::Aborted => Status::ABORT_REQUESTED,
        IoError::Transport => Status::TRANSIENT_TRANSPORT_ERROR,
    }
}

/// Whether SQ tail `tail` claims more new entries past our head `head` than the host can
/// know to be free: the host learns about freed slots only from the SQ head of the CQEs
/// it reads (at most `published`, the newest one posted), and may fill the queue up to one
/// slot before that head. All values are `< size`.
pub(crate) fn sq_overflow(tail: u16, head: u16, published: u16, size: u16) -> bool {
    let (t, h, p, n) = (
        u32::from(tail),
        u32::from(head),
        u32::from(published),
        u32::from(size),
    );
    let new = (t + n - h) % n;
    let room = (p + 2 * n - 1 - h) % n;
    new > room
}

fn new_cq(size: u16, gpa: u64, ring: Option<Ring>, ien: bool, iv: u16) -> Cq {
    Cq {
        size,
        gpa,
        ring,
        tail: 0,
        head: 0,
        phase: true,
        ien,
        iv,
        reserved: 0,
        sq_refs: 0,
        irq_pending: false,
        unsignalled: 0,
        first_unsignalled: None,
        db_error: false,
    }
}

/// Serve a BAR0 read from the mirrors (endpoint thread, no round trip).
pub fn bar0_read(shared: &Shared, off: u64, data: &mut [u8]) -> Result<(), BarError> {
    check_bar0_access(off, data.len())?;
    if off >= reg::DOORBELL_BASE {
        return Err(BarError::WriteOnly);
    }
    for (i, c) in data.chunks_exact_mut(4).enumerate() {
        c.copy_from_slice(&shared.read_reg32(off + (i as u64) * 4).to_le_bytes());
    }
    Ok(())
}

/// Store a trapped doorbell write into the doorbell page (access already validated).
pub fn store_doorbell(shared: &Shared, off: u64, data: &[u8]) {
    let idx = ((off - reg::DOORBELL_BASE) / 4) as usize;
    let mut b = [0u8; 4];
    b.copy_from_slice(data.get(..4).unwrap_or(&[0; 4]));
    shared.doorbells.store(idx, u32::from_le_bytes(b));
}

#[cfg(test)]
mod tests {
    use super::{sq_overflow, Controller, ControllerConfig, NoInterrupts};
    use crate::spec::{admin, feat, reg};
    use crate::testkit::{sqe, FakeHost};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn kato(h: &mut FakeHost, c: &mut Controller, set: Option<u32>) -> u32 {
        let mut s = sqe(
            if set.is_some() {
                admin::SET_FEATURES
            } else {
                admin::GET_FEATURES
            },
            0,
        );
        s.dw[10] = u32::from(feat::KEEP_ALIVE_TIMER);
        s.dw[11] = set.unwrap_or(0);
        let c = h.admin(c, s).unwrap();
        assert!(c.status.is_success());
        c.dw0
    }

    /// Forces the deadline into the past (the real timeout is 10 s or more).
    fn expire(c: &mut Controller) {
        let past = Instant::now()
            .checked_sub(Duration::from_millis(1))
            .unwrap();
        c.keep_alive.as_mut().unwrap().1 = past;
    }

    fn polls(c: &mut Controller) {
        for _ in 0..2048 {
            c.poll();
        }
    }

    #[test]
    fn keep_alive_timer() {
        let mut c = Controller::new(ControllerConfig::default(), Arc::new(NoInterrupts)).unwrap();
        let mut h = FakeHost::new(4 << 20);
        assert_eq!(h.enable(&mut c, 16) & 3, 1);
        let csts = |c: &Controller| c.shared().read_reg32(reg::CSTS);
        // Off by default: nothing expires.
        assert!(c.keep_alive.is_none());
        polls(&mut c);
        // Rounded up to the 10 s granularity, reported as used.
        kato(&mut h, &mut c, Some(1500));
        assert_eq!(kato(&mut h, &mut c, None), 10_000);
        let (t, d) = c.keep_alive.unwrap();
        assert_eq!(t, Duration::from_secs(10));
        assert!(d > Instant::now() + Duration::from_secs(9));
        // A Keep Alive command restarts an (about to expire) timer.
        expire(&mut c);
        let ka = h.admin(&mut c, sqe(admin::KEEP_ALIVE, 0)).unwrap();
        assert!(ka.status.is_success());
        polls(&mut c);
        assert_eq!(csts(&c) & 2, 0, "no CFS after Keep Alive");
        // KATO 0 disables it.
        kato(&mut h, &mut c, Some(0));
        assert!(c.keep_alive.is_none());
        // Expiry: fatal status, commands no longer processed.
        kato(&mut h, &mut c, Some(10_000));
        expire(&mut c);
        polls(&mut c);
        assert_eq!(csts(&c) & 3, 3, "RDY and CFS");
        h.submit(&mut c, 0, sqe(admin::KEEP_ALIVE, 0), false);
        polls(&mut c);
        assert!(h.try_reap(&mut c, 0).is_none(), "stopped processing");
        // A controller reset clears it.
        c.bar0_write(reg::CC, &0u32.to_le_bytes()).unwrap();
        assert!(c.keep_alive.is_none());
        let mut h2 = FakeHost::with_memory(h.mem.clone(), 2 << 20, 4 << 20);
        assert_eq!(h2.enable(&mut c, 16) & 3, 1, "RDY without CFS after reset");
    }

    /// Data buffers in an fd-less window are bounced through `MsgDma`; lists stay in
    /// mapped memory; failures are Data Transfer Errors and the controller carries on.
    #[test]
    fn bounce_through_messages() {
        use crate::bounce::tests::FakeMsgDma;
        use crate::spec::{io, Status};
        use crate::testkit::rw;
        use std::sync::atomic::Ordering;
        const W: u64 = 0x1000_0000;
        let mut c = Controller::new(ControllerConfig::default(), Arc::new(NoInterrupts)).unwrap();
        let bdev = sluice_bdev::MallocBdev::new("m", 512, 4096, None).unwrap();
        c.add_namespace(Some(1), Arc::new(bdev)).unwrap();
        let mut h = FakeHost::new(4 << 20);
        assert_eq!(h.enable(&mut c, 16) & 3, 1);
        assert!(h.create_pair(&mut c, 1, 16));
        let d = Arc::new(FakeMsgDma::new(W, 0x10_0000, true, true));
        let data: Vec<u8> = (0..0x3000u32).map(|i| (i * 7 % 251) as u8).collect();
        d.poke(W + 0x800, &data);
        // Without the message channel: Data Transfer Error, as before.
        let st = |h: &mut FakeHost, c: &mut Controller, s| h.io(c, 1, s).unwrap().status;
        assert_eq!(
            st(
                &mut h,
                &mut c,
                rw(io::WRITE, 1, 0, 8, W + 0x800, W + 0x1000)
            ),
            Status::DATA_TRANSFER_ERROR
        );
        c.set_msg_dma(Some(d.clone()));
        // Write from PRP1 + PRP2 in the window, read back into mapped memory.
        let w = rw(io::WRITE, 1, 0, 8, W + 0x800, W + 0x1000);
        assert_eq!(st(&mut h, &mut c, w), Status::SUCCESS);
        let buf = h.alloc(0x1000);
        assert_eq!(
            st(&mut h, &mut c, rw(io::READ, 1, 0, 8, buf, 0)),
            Status::SUCCESS
        );
        assert_eq!(h.read(buf, 0x1000), &data[..0x1000]);
        // Read into the window through a PRP list (in mapped memory), mixed with a mapped
        // page: the whole command is bounced.
        let list = h.alloc(0x1000);
        let mapped = h.alloc(0x1000);
        h.write(list, &(W + 0x4000u64).to_le_bytes());
        h.write(list + 8, &mapped.to_le_bytes());
        let r = rw(io::READ, 1, 0, 24, W + 0x3000, list);
        // 24 blocks = 12 KiB: sectors 8..24 hold zeros (never written).
        assert_eq!(st(&mut h, &mut c, r), Status::SUCCESS);
        assert_eq!(d.peek(W + 0x3000, 0x1000), &data[..0x1000]);
        assert_eq!(d.peek(W + 0x4000, 0x1000), vec![0u8; 0x1000]);
        // A PRP list inside the window is not supported: Data Transfer Error.
        d.poke(W + 0x8000, &(W + 0x9000u64).to_le_bytes());
        let r = rw(io::READ, 1, 0, 24, W + 0x3000, W + 0x8000);
        assert_eq!(st(&mut h, &mut c, r), Status::DATA_TRANSFER_ERROR);
        // The client failing: Data Transfer Error, then a good I/O succeeds.
        d.broken.store(true, Ordering::Relaxed);
        let r = rw(io::READ, 1, 0, 1, W, 0);
        assert_eq!(st(&mut h, &mut c, r), Status::DATA_TRANSFER_ERROR);
        let w = rw(io::WRITE, 1, 0, 1, W, 0);
        assert_eq!(st(&mut h, &mut c, w), Status::DATA_TRANSFER_ERROR);
        d.broken.store(false, Ordering::Relaxed);
        assert_eq!(
            st(&mut h, &mut c, rw(io::READ, 1, 0, 1, W, 0)),
            Status::SUCCESS
        );
        // A read-only window as a read destination.
        let ro = Arc::new(FakeMsgDma::new(W, 0x10_0000, true, false));
        c.set_msg_dma(Some(ro));
        assert_eq!(
            st(&mut h, &mut c, rw(io::READ, 1, 0, 1, W, 0)),
            Status::DATA_TRANSFER_ERROR
        );
        assert_eq!(
            st(&mut h, &mut c, rw(io::WRITE, 1, 0, 1, W, 0)),
            Status::SUCCESS,
            "a read-only window is a fine write source"
        );
        assert_eq!(c.inflight(), 0);
    }

    /// A backend that completes requests only when `open` is set.
    struct Gate(Arc<std::sync::atomic::AtomicBool>, sluice_bdev::BdevInfo);
    struct GateChan(
        Arc<std::sync::atomic::AtomicBool>,
        Vec<sluice_bdev::IoRequest>,
    );
    impl sluice_bdev::Bdev for Gate {
        fn info(&self) -> &sluice_bdev::BdevInfo {
            &self.1
        }
        fn open_channel(&self) -> Result<Box<dyn sluice_bdev::IoChannel>, sluice_bdev::BdevError> {
            Ok(Box::new(GateChan(self.0.clone(), Vec::new())))
        }
    }
    impl sluice_bdev::IoChannel for GateChan {
        fn submit(&mut self, io: sluice_bdev::IoRequest) -> Result<(), sluice_bdev::Rejected> {
            self.1.push(io);
            Ok(())
        }
        fn poll(&mut self, done: &mut dyn FnMut(sluice_bdev::IoCompletion)) -> usize {
            if !self.0.load(std::sync::atomic::Ordering::SeqCst) {
                return 0;
            }
            let n = self.1.len();
            for req in self.1.drain(..) {
                done(sluice_bdev::IoCompletion {
                    tag: req.tag,
                    result: Ok(()),
                });
            }
            n
        }
        fn in_flight(&self) -> usize {
            self.1.len()
        }
    }

    /// A bounced Read orphaned by a controller reset is dropped without touching the
    /// guest; one still live copies out before its CQE.
    #[test]
    fn bounced_read_in_flight_across_reset() {
        use crate::bounce::tests::FakeMsgDma;
        use crate::spec::{io, Status};
        use crate::testkit::rw;
        use std::sync::atomic::{AtomicBool, Ordering};
        const W: u64 = 0x1000_0000;
        let mut c = Controller::new(ControllerConfig::default(), Arc::new(NoInterrupts)).unwrap();
        let info = sluice_bdev::null_bdev("n", 1 << 20, 512).info().clone();
        let open = Arc::new(AtomicBool::new(false));
        c.add_namespace(Some(1), Arc::new(Gate(open.clone(), info)))
            .unwrap();
        let mut h = FakeHost::new(4 << 20);
        assert_eq!(h.enable(&mut c, 16) & 3, 1);
        assert!(h.create_pair(&mut c, 1, 16));
        let d = Arc::new(FakeMsgDma::new(W, 0x10_0000, true, true));
        d.poke(W, &[0xee; 512]);
        c.set_msg_dma(Some(d.clone()));
        h.submit(&mut c, 1, rw(io::READ, 1, 0, 1, W, 0), false);
        c.poll();
        assert_eq!((c.inflight(), c.bounces.len()), (1, 1));
        c.reset();
        open.store(true, Ordering::SeqCst);
        let sent = d.messages.load(Ordering::Relaxed);
        c.poll();
        assert_eq!((c.inflight(), c.bounces.len()), (0, 0));
        assert_eq!(
            d.messages.load(Ordering::Relaxed),
            sent,
            "nothing copied out"
        );
        assert_eq!(d.peek(W, 512), vec![0xee; 512]);
        // After re-enabling: a live bounced read copies out (the gate backend leaves the
        // fresh, zeroed host buffer as it is).
        c.bar0_write(crate::spec::reg::CC, &0u32.to_le_bytes())
            .unwrap();
        let mut h = FakeHost::with_memory(h.mem.clone(), 2 << 20, 4 << 20);
        assert_eq!(h.enable(&mut c, 16) & 3, 1);
        assert!(h.create_pair(&mut c, 1, 16));
        let done = h.io(&mut c, 1, rw(io::READ, 1, 0, 1, W, 0)).unwrap();
        assert_eq!(done.status, Status::SUCCESS);
        assert_eq!(d.peek(W, 512), vec![0; 512]);
        assert!(c.bounces.is_empty());
    }

    /// Admin data (Identify) reaches an fd-less window too.
    #[test]
    fn admin_data_through_messages() {
        use crate::bounce::tests::FakeMsgDma;
        use crate::testkit::with_prps;
        const W: u64 = 0x1000_0000;
        let mut c = Controller::new(ControllerConfig::default(), Arc::new(NoInterrupts)).unwrap();
        let mut h = FakeHost::new(4 << 20);
        assert_eq!(h.enable(&mut c, 16) & 3, 1);
        let mut id = with_prps(sqe(admin::IDENTIFY, 0), W, 0);
        id.dw[10] = 1;
        assert!(!h.admin(&mut c, id).unwrap().status.is_success());
        let d = Arc::new(FakeMsgDma::new(W, 0x1000, true, true));
        c.set_msg_dma(Some(d.clone()));
        assert!(h.admin(&mut c, id).unwrap().status.is_success());
        assert_eq!(&d.peek(W, 2), &0x4e58u16.to_le_bytes(), "VID");
    }

    #[test]
    fn sq_overflow_bounds() {
        // Everything published: up to size - 1 new entries.
        assert!(!sq_overflow(31, 0, 0, 32));
        assert!(!sq_overflow(4, 5, 5, 32), "wrapping to one before the head");
        assert!(
            sq_overflow(5, 6, 5, 32),
            "the host cannot know slot 5 is free"
        );
        // Fetched 10 entries, none completed yet: the host may add 21 more, not 22.
        assert!(!sq_overflow(31, 10, 0, 32));
        assert!(sq_overflow(0, 10, 0, 32));
        // A stale tail behind the head while fetched commands are unanswered.
        assert!(sq_overflow(12, 17, 10, 32));
        assert!(
            !sq_overflow(9, 17, 10, 32),
            "up to one before the published head"
        );
        assert!(sq_overflow(16, 17, 16, 32));
        // Everything answered: a tail behind the head is a valid (wrapping) submission.
        assert!(!sq_overflow(16, 17, 17, 32));
    }
}
