//! Controller bring-up and the admin command set.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::os::fd::OwnedFd;
use vm_memory::{FileOffset, MmapRegion};

use crate::cmd::{admin, feat, Command, Completion};
use crate::dma::{DmaArena, DmaBuf, PAGE_SIZE};
use crate::error::{Error, TransportError};
use crate::identify::{parse_ns_list, IdentifyController, IdentifyNamespace};
use crate::queue::{
    DataPtr, Doorbells, QueuePair, RequestServer, Shadow, SharedTransport, DOORBELL_BASE,
};
use crate::regs::{self, Cap};
use crate::transport::{
    RustVmmTransport, Transport, VfuTransport, BAR0_REGION, CONFIG_REGION, IRQ_SET_ACTION_TRIGGER,
    IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE, MSIX_IRQ,
};

/// Doorbell placement policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoorbellMode {
    /// Use the mmapped doorbell page when the server offers one, else REGION_WRITE.
    Auto,
    /// Always trap doorbell writes (REGION_WRITE), even if the page is mappable.
    Trapped,
}

/// Options of [`Controller::new`].
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Admin queue depth.
    pub admin_depth: u16,
    /// Bytes of DMA memory to share with the target.
    pub dma_size: u64,
    /// IOVA of the DMA memory.
    pub dma_base: u64,
    /// Timeout of admin commands.
    pub admin_timeout: Duration,
    /// Doorbell placement.
    pub doorbells: DoorbellMode,
    /// How long [`Controller::connect`] waits for any single vfio-user reply (version
    /// negotiation included) before failing; `None` waits forever. A peer that accepts the
    /// connection but never answers then gives a clear timeout error instead of a hang.
    pub reply_timeout: Option<Duration>,
    /// Ask the target for a twin socket ([`Controller::connect`]): its DMA_READ/DMA_WRITE
    /// requests (fd-less windows, [`Controller::map_fdless`]) are then served by a thread
    /// of the client instead of this driver's wait and poll loops.
    pub twin_socket: bool,
}

/// Default of [`ControllerOptions::reply_timeout`].
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            admin_depth: 32,
            dma_size: 64 << 20,
            dma_base: 1 << 32,
            admin_timeout: Duration::from_secs(10),
            doorbells: DoorbellMode::Auto,
            reply_timeout: Some(DEFAULT_REPLY_TIMEOUT),
            twin_socket: false,
        }
    }
}

/// A vfio-user NVMe controller driven from userspace.
pub struct Controller {
    transport: SharedTransport,
    arena: Arc<DmaArena>,
    doorbells: Doorbells,
    cap: Cap,
    admin: QueuePair,
    aer_cids: Vec<u16>,
    aens: VecDeque<Completion>,
    msix: Vec<OwnedFd>,
    shadow: Option<(DmaBuf, DmaBuf)>,
    opts: ControllerOptions,
    /// Set once fd-less windows need the driver to serve DMA requests (no twin socket).
    serving: Arc<AtomicBool>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("cap", &self.cap)
            .field("doorbells", &self.doorbells)
            .finish_non_exhaustive()
    }
}

fn lock(t: &SharedTransport) -> Result<std::sync::MutexGuard<'_, Box<dyn Transport>>, Error> {
    t.lock()
        .map_err(|_| Error::Transport(TransportError::Unsupported("transport lock poisoned")))
}

impl Controller {
    /// Connects with Sluice's `vfu-client` and brings the controller up.
    pub fn connect(path: &Path, opts: ControllerOptions) -> Result<Self, Error> {
        let copts = vfu_client::ClientOptions {
            reply_timeout: opts.reply_timeout,
            twin_socket: opts.twin_socket,
            ..vfu_client::ClientOptions::default()
        };
        let t = VfuTransport::connect_with(path, copts)?;
        Self::new(Box::new(t), opts)
    }

    /// Connects with rust-vmm's `vfio_user` client and brings the controller up.
    pub fn connect_rust_vmm(path: &Path, opts: ControllerOptions) -> Result<Self, Error> {
        let t = RustVmmTransport::connect(path)?;
        Self::new(Box::new(t), opts)
    }

    /// Brings up the controller behind `transport`: enables bus mastering, shares DMA memory,
    /// sets up the admin queue and enables the controller.
    pub fn new(transport: Box<dyn Transport>, opts: ControllerOptions) -> Result<Self, Error> {
        let transport: SharedTransport = Arc::new(Mutex::new(transport));
        let arena = DmaArena::new(opts.dma_base, opts.dma_size)?;
        let cap;
        let doorbells;
        {
            let mut t = lock(&transport)?;
            // Memory space, bus master, INTx disable.
            let mut cmd = [0u8; 2];
            t.region_read(CONFIG_REGION, 4, &mut cmd)?;
            let v = u16::from_le_bytes(cmd) | 0x0406;
            t.region_write(CONFIG_REGION, 4, &v.to_le_bytes())?;
            t.dma_map(arena.base(), arena.size(), arena.file().as_fd(), 0)?;
            let mut b = [0u8; 8];
            t.region_read(BAR0_REGION, regs::CAP, &mut b)?;
            cap = Cap {
                raw: u64::from_le_bytes(b),
            };
            let mapped = match opts.doorbells {
                DoorbellMode::Auto => Self::map_doorbells(t.as_ref(), cap.dstrd())?,
                DoorbellMode::Trapped => None,
            };
            drop(t);
            doorbells = match mapped {
                Some((map, start)) => Doorbells::mapped(map, start, cap.dstrd()),
                None => Doorbells::trapped(transport.clone(), cap.dstrd()),
            };
        }
        let depth = opts
            .admin_depth
            .clamp(2, 4096)
            .min(cap.mqes().min(4096) as u16);
        let admin = QueuePair::new(0, depth, &arena, doorbells.clone(), Some(0))?;
        let mut c = Self {
            transport,
            arena,
            doorbells,
            cap,
            admin,
            aer_cids: Vec::new(),
            aens: VecDeque::new(),
            msix: Vec::new(),
            shadow: None,
            opts,
            serving: Arc::new(AtomicBool::new(false)),
        };
        let server = c.request_server();
        c.admin.set_request_server(Some(server));
        c.enable()?;
        Ok(c)
    }

    fn map_doorbells(
        t: &dyn Transport,
        dstrd: u8,
    ) -> Result<Option<(Arc<MmapRegion>, u64)>, Error> {
        let Some(m) = t.region_mmap(BAR0_REGION) else {
            return Ok(None);
        };
        let areas = if m.areas.is_empty() {
            vec![(0, t.region_size(BAR0_REGION).unwrap_or(0))]
        } else {
            m.areas.clone()
        };
        // The admin doorbells at least; I/O doorbells are checked on use.
        let need_end = DOORBELL_BASE + 2 * (4u64 << dstrd);
        for (off, size) in areas {
            let Some(end) = off.checked_add(size) else {
                continue;
            };
            if off <= DOORBELL_BASE && end >= need_end {
                let len = usize::try_from(size)
                    .map_err(|_| Error::InvalidArgument("sparse area size"))?;
                // Like C clients, the mmap offset is region.offset + area.offset modulo
                // 2^64 (a server may place region offset 0 "before" the file start).
                let start = m.file_offset.wrapping_add(off);
                let map = MmapRegion::from_file(FileOffset::from_arc(m.file.clone(), start), len)
                    .map_err(|e| {
                    Error::Transport(TransportError::Request {
                        what: "mmap of BAR0 doorbells",
                        cause: Box::new(e),
                    })
                })?;
                tracing::debug!(off, size, "doorbells mapped");
                return Ok(Some((Arc::new(map), off)));
            }
        }
        Ok(None)
    }

    /// The shared transport (for raw region access in tests).
    pub fn transport(&self) -> &SharedTransport {
        &self.transport
    }

    /// Cheap liveness check of the transport connection (`false` once the target hung up).
    pub fn is_connected(&self) -> bool {
        lock(&self.transport).is_ok_and(|t| t.is_connected())
    }

    /// The DMA arena shared with the target.
    pub fn arena(&self) -> &Arc<DmaArena> {
        &self.arena
    }

    /// Allocates a DMA buffer.
    pub fn alloc(&self, len: u64) -> Result<DmaBuf, Error> {
        Ok(self.arena.alloc(len)?)
    }

    /// The CAP register read at bring-up.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// Whether doorbells go to the shared page.
    pub fn doorbells_mapped(&self) -> bool {
        self.doorbells.is_mapped()
    }

    /// The admin queue pair (for raw submission in tests).
    pub fn admin_queue(&mut self) -> &mut QueuePair {
        &mut self.admin
    }

    /// Reads a 32-bit BAR0 register.
    pub fn read_reg32(&self, off: u64) -> Result<u32, Error> {
        let mut b = [0u8; 4];
        lock(&self.transport)?.region_read(BAR0_REGION, off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes a 32-bit BAR0 register.
    pub fn write_reg32(&self, off: u64, v: u32) -> Result<(), Error> {
        lock(&self.transport)?.region_write(BAR0_REGION, off, &v.to_le_bytes())?;
        Ok(())
    }

    /// Writes a 64-bit BAR0 register.
    pub fn write_reg64(&self, off: u64, v: u64) -> Result<(), Error> {
        lock(&self.transport)?.region_write(BAR0_REGION, off, &v.to_le_bytes())?;
        Ok(())
    }

    fn ready_timeout(&self) -> Duration {
        Duration::from_millis(500 * u64::from(self.cap.to().max(1)))
    }

    fn wait_csts(&self, mask: u32, want: u32, what: &'static str) -> Result<u32, Error> {
        let deadline = Instant::now() + self.ready_timeout();
        loop {
            let csts = self.read_reg32(regs::CSTS)?;
            if csts == u32::MAX {
                return Err(Error::ControllerFatal);
            }
            if csts & mask == want {
                return Ok(csts);
            }
            if csts & regs::CSTS_CFS != 0 && want & regs::CSTS_RDY != 0 {
                return Err(Error::ControllerFatal);
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(what));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Clears CC.EN and waits for CSTS.RDY = 0 (a controller reset).
    pub fn disable(&mut self) -> Result<(), Error> {
        let cc = self.read_reg32(regs::CC)?;
        if cc & regs::CC_EN != 0 {
            self.write_reg32(regs::CC, cc & !regs::CC_EN)?;
        }
        self.wait_csts(regs::CSTS_RDY, 0, "CSTS.RDY = 0")?;
        Ok(())
    }

    /// Disables, programs the admin queue, enables and waits for CSTS.RDY (honouring CAP.TO).
    pub fn enable(&mut self) -> Result<(), Error> {
        self.disable()?;
        self.admin.reset_state()?;
        self.aer_cids.clear();
        self.shadow = None;
        let d = u32::from(self.admin.depth() - 1);
        self.write_reg32(regs::AQA, d | (d << 16))?;
        self.write_reg64(regs::ASQ, self.admin.sq_iova())?;
        self.write_reg64(regs::ACQ, self.admin.cq_iova())?;
        self.write_reg32(regs::CC, regs::CC_ENTRY_SIZES | regs::CC_EN)?;
        self.wait_csts(regs::CSTS_RDY, regs::CSTS_RDY, "CSTS.RDY = 1")?;
        Ok(())
    }

    /// Controller reset followed by re-initialization of the admin queue.
    pub fn reset(&mut self) -> Result<(), Error> {
        self.enable()
    }

    /// Normal (or abrupt) shutdown: sets CC.SHN and waits for CSTS.SHST = complete.
    pub fn shutdown(&mut self, abrupt: bool) -> Result<(), Error> {
        let cc = self.read_reg32(regs::CC)?;
        let shn = if abrupt {
            regs::CC_SHN_ABRUPT
        } else {
            regs::CC_SHN_NORMAL
        };
        self.write_reg32(regs::CC, (cc & !regs::CC_SHN_MASK) | shn)?;
        self.wait_csts(
            regs::CSTS_SHST_MASK,
            regs::CSTS_SHST_COMPLETE,
            "CSTS.SHST = complete",
        )?;
        Ok(())
    }

    /// Submits an admin command and returns its completion whatever the status.
    pub fn admin_raw(&mut self, cmd: Command, data: DataPtr) -> Result<Completion, Error> {
        let cid = self.admin.submit(cmd, data)?;
        let c = self.admin.wait(cid, self.opts.admin_timeout)?;
        self.stash_aens();
        Ok(c)
    }

    /// Submits an admin command; a non-success status is an error.
    pub fn admin(&mut self, cmd: Command, data: DataPtr) -> Result<Completion, Error> {
        let op = cmd.opcode();
        let c = self.admin_raw(cmd, data)?;
        if c.status.is_success() {
            Ok(c)
        } else {
            Err(Error::Command {
                opcode: op,
                status: c.status,
            })
        }
    }

    fn stash_aens(&mut self) {
        for c in self.admin.take_pending() {
            if let Some(pos) = self.aer_cids.iter().position(|&x| x == c.cid) {
                self.aer_cids.swap_remove(pos);
                self.aens.push_back(c);
            } else {
                tracing::debug!(cid = c.cid, "unexpected admin completion");
            }
        }
    }

    /// Identify with the given CNS into a new 4 KiB page.
    pub fn identify_raw(&mut self, cns: u8, nsid: u32) -> Result<Vec<u8>, Error> {
        let buf = self.arena.alloc(PAGE_SIZE)?;
        let mut cmd = Command::with_nsid(admin::IDENTIFY, nsid);
        cmd.cdw[10] = u32::from(cns);
        self.admin(
            cmd,
            DataPtr::Prp {
                iova: buf.iova(),
                len: PAGE_SIZE,
            },
        )?;
        Ok(buf.to_vec(0, PAGE_SIZE as usize)?)
    }

    /// Identify Controller.
    pub fn identify_controller(&mut self) -> Result<IdentifyController, Error> {
        Ok(IdentifyController::parse(&self.identify_raw(1, 0)?))
    }

    /// Identify Namespace.
    pub fn identify_namespace(&mut self, nsid: u32) -> Result<IdentifyNamespace, Error> {
        Ok(IdentifyNamespace::parse(&self.identify_raw(0, nsid)?))
    }

    /// Active namespace ids (CNS 02h).
    pub fn active_namespaces(&mut self) -> Result<Vec<u32>, Error> {
        Ok(parse_ns_list(&self.identify_raw(2, 0)?))
    }

    /// Get Features; returns CQE DW0.
    pub fn get_features(&mut self, fid: u8, cdw11: u32) -> Result<u32, Error> {
        let mut cmd = Command::new(admin::GET_FEATURES);
        cmd.cdw[10] = u32::from(fid);
        cmd.cdw[11] = cdw11;
        Ok(self.admin(cmd, DataPtr::None)?.dw0)
    }

    /// Set Features; returns CQE DW0.
    pub fn set_features(&mut self, fid: u8, cdw11: u32) -> Result<u32, Error> {
        let mut cmd = Command::new(admin::SET_FEATURES);
        cmd.cdw[10] = u32::from(fid);
        cmd.cdw[11] = cdw11;
        Ok(self.admin(cmd, DataPtr::None)?.dw0)
    }

    /// Set Features Number of Queues; returns the granted (SQs, CQs), 1-based.
    pub fn set_num_queues(&mut self, nsq: u16, ncq: u16) -> Result<(u32, u32), Error> {
        let req = u32::from(nsq.max(1) - 1) | (u32::from(ncq.max(1) - 1) << 16);
        let dw0 = self.set_features(feat::NUMBER_OF_QUEUES, req)?;
        Ok(((dw0 & 0xffff) + 1, (dw0 >> 16) + 1))
    }

    /// Get Log Page of `len` bytes (`len` a multiple of 4, at most one page list).
    pub fn get_log_page(&mut self, lid: u8, nsid: u32, len: u32) -> Result<Vec<u8>, Error> {
        if len == 0 || len % 4 != 0 {
            return Err(Error::InvalidArgument("log page length"));
        }
        let buf = self.arena.alloc(u64::from(len))?;
        let numd = len / 4 - 1;
        let mut cmd = Command::with_nsid(admin::GET_LOG_PAGE, nsid);
        cmd.cdw[10] = u32::from(lid) | ((numd & 0xffff) << 16);
        cmd.cdw[11] = numd >> 16;
        self.admin(
            cmd,
            DataPtr::Prp {
                iova: buf.iova(),
                len: u64::from(len),
            },
        )?;
        Ok(buf.to_vec(0, len as usize)?)
    }

    /// Creates an I/O CQ/SQ pair with id `qid` (CQ id = SQ id), optionally interrupt driven.
    pub fn create_io_queue_pair(
        &mut self,
        qid: u16,
        depth: u16,
        vector: Option<u16>,
    ) -> Result<QueuePair, Error> {
        if qid == 0 {
            return Err(Error::InvalidArgument("qid 0 is the admin queue"));
        }
        let mut qp = QueuePair::new(qid, depth, &self.arena, self.doorbells.clone(), vector)?;
        qp.set_request_server(Some(self.request_server()));
        let mut cq = Command::new(admin::CREATE_CQ);
        cq.set_prp(qp.cq_iova(), 0);
        cq.cdw[10] = u32::from(qid) | (u32::from(depth - 1) << 16);
        cq.cdw[11] = 1 | vector.map_or(0, |v| 2 | (u32::from(v) << 16));
        self.admin(cq, DataPtr::None)?;
        let mut sq = Command::new(admin::CREATE_SQ);
        sq.set_prp(qp.sq_iova(), 0);
        sq.cdw[10] = u32::from(qid) | (u32::from(depth - 1) << 16);
        sq.cdw[11] = 1 | (u32::from(qid) << 16);
        if let Err(e) = self.admin(sq, DataPtr::None) {
            let _ = self.delete_cq(qid);
            return Err(e);
        }
        if let Some((s, e)) = &self.shadow {
            qp.set_shadow(Some(Shadow {
                shadow: s.iova(),
                eventidx: e.iova(),
            }));
        }
        Ok(qp)
    }

    /// Deletes an I/O SQ.
    pub fn delete_sq(&mut self, qid: u16) -> Result<(), Error> {
        let mut c = Command::new(admin::DELETE_SQ);
        c.cdw[10] = u32::from(qid);
        self.admin(c, DataPtr::None).map(|_| ())
    }

    /// Deletes an I/O CQ.
    pub fn delete_cq(&mut self, qid: u16) -> Result<(), Error> {
        let mut c = Command::new(admin::DELETE_CQ);
        c.cdw[10] = u32::from(qid);
        self.admin(c, DataPtr::None).map(|_| ())
    }

    /// Deletes an I/O queue pair (SQ first, then CQ).
    pub fn delete_io_queue_pair(&mut self, qp: QueuePair) -> Result<(), Error> {
        self.delete_sq(qp.qid())?;
        self.delete_cq(qp.qid())
    }

    /// Abort command `cid` on SQ `sqid`; returns the completion (DW0 bit 0 = not aborted).
    pub fn abort(&mut self, sqid: u16, cid: u16) -> Result<Completion, Error> {
        let mut c = Command::new(admin::ABORT);
        c.cdw[10] = u32::from(sqid) | (u32::from(cid) << 16);
        self.admin_raw(c, DataPtr::None)
    }

    /// Keep Alive.
    pub fn keep_alive(&mut self) -> Result<(), Error> {
        self.admin(Command::new(admin::KEEP_ALIVE), DataPtr::None)
            .map(|_| ())
    }

    /// Submits an Asynchronous Event Request (it stays outstanding until an event).
    pub fn submit_aer(&mut self) -> Result<u16, Error> {
        let cid = self
            .admin
            .submit(Command::new(admin::ASYNC_EVENT_REQUEST), DataPtr::None)?;
        self.aer_cids.push(cid);
        Ok(cid)
    }

    /// Number of AERs outstanding.
    pub fn outstanding_aers(&self) -> usize {
        self.aer_cids.len()
    }

    /// Waits for an asynchronous event completion.
    pub fn wait_aen(&mut self, timeout: Duration) -> Result<Option<Completion>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.aens.pop_front() {
                return Ok(Some(c));
            }
            let mut got = Vec::new();
            self.admin.poll(usize::MAX, |c| got.push(c))?;
            for c in got {
                if let Some(pos) = self.aer_cids.iter().position(|&x| x == c.cid) {
                    self.aer_cids.swap_remove(pos);
                    self.aens.push_back(c);
                } else {
                    tracing::debug!(cid = c.cid, "unexpected admin completion");
                }
            }
            if !self.aens.is_empty() {
                continue;
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Doorbell Buffer Config: I/O queues created afterwards use shadow doorbells with
    /// EventIdx (a doorbell write traps only when the controller asked for one).
    pub fn enable_shadow_doorbells(&mut self) -> Result<(), Error> {
        let shadow = self.arena.alloc(PAGE_SIZE)?;
        let eventidx = self.arena.alloc(PAGE_SIZE)?;
        let mut c = Command::new(admin::DOORBELL_BUFFER_CONFIG);
        c.set_prp(shadow.iova(), eventidx.iova());
        self.admin(c, DataPtr::None)?;
        // Like Linux, only I/O queues use the shadow buffers; the admin queue keeps its
        // MMIO doorbells.
        self.shadow = Some((shadow, eventidx));
        Ok(())
    }

    /// Sets up `count` MSI-X eventfds (vectors `0..count`) and enables MSI-X in config space.
    pub fn enable_msix(&mut self, count: u32) -> Result<(), Error> {
        let avail = lock(&self.transport)?.irq_count(MSIX_IRQ)?;
        if count == 0 || count > avail {
            return Err(Error::InvalidArgument("MSI-X vector count"));
        }
        let fds = (0..count)
            .map(|_| {
                rustix::event::eventfd(
                    0,
                    rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(std::io::Error::from)?;
        {
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            let mut t = lock(&self.transport)?;
            t.set_irqs(
                MSIX_IRQ,
                IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
                0,
                count,
                &borrowed,
            )?;
            if let Some(cap) = find_capability(t.as_mut(), 0x11)? {
                let mut mc = [0u8; 2];
                t.region_read(CONFIG_REGION, cap + 2, &mut mc)?;
                let v = (u16::from_le_bytes(mc) | 0x8000) & !0x4000;
                t.region_write(CONFIG_REGION, cap + 2, &v.to_le_bytes())?;
            }
        }
        self.msix = fds;
        Ok(())
    }

    /// Tears down the MSI-X eventfds.
    pub fn disable_msix(&mut self) -> Result<(), Error> {
        lock(&self.transport)?.set_irqs(
            MSIX_IRQ,
            IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
            0,
            0,
            &[],
        )?;
        self.msix.clear();
        Ok(())
    }

    /// Waits for MSI-X `vector` to fire; returns the number of signals (0 on timeout).
    pub fn wait_irq(&self, vector: u16, timeout: Duration) -> Result<u64, Error> {
        let fd = self
            .msix
            .get(usize::from(vector))
            .ok_or_else(|| Error::InvalidArgument("MSI-X vector not set up"))?;
        let mut pfd = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        let ts = rustix::event::Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let n = rustix::event::poll(&mut pfd, Some(&ts)).map_err(std::io::Error::from)?;
        if n == 0 {
            return Ok(0);
        }
        let mut b = [0u8; 8];
        match rustix::io::read(fd, &mut b) {
            Ok(8) => Ok(u64::from_ne_bytes(b)),
            Ok(_) => Ok(0),
            Err(rustix::io::Errno::AGAIN) => Ok(0),
            Err(e) => Err(std::io::Error::from(e).into()),
        }
    }

    fn request_server(&self) -> RequestServer {
        RequestServer {
            transport: Arc::downgrade(&self.transport),
            needed: self.serving.clone(),
        }
    }

    /// Maps `size` bytes at IOVA `base` to the target *without* an fd (like QEMU guest RAM
    /// without `share=on`): the target reaches it only through DMA_READ/DMA_WRITE, which the
    /// transport serves (on its twin socket, or from this driver's wait/poll loops). Returns
    /// an arena to allocate data buffers from; its buffers work with every [`DataPtr`].
    /// `writable` false makes the window read-only for the device.
    pub fn map_fdless(
        &mut self,
        base: u64,
        size: u64,
        writable: bool,
    ) -> Result<Arc<DmaArena>, Error> {
        let mut t = lock(&self.transport)?;
        let file = t.dma_map_fdless(base, size, writable)?;
        if t.needs_serving() {
            self.serving.store(true, Ordering::Relaxed);
        }
        drop(t);
        match DmaArena::from_file(base, size, file) {
            Ok(a) => Ok(a),
            Err(e) => {
                let _ = lock(&self.transport)?.dma_unmap(base, size);
                Err(e.into())
            }
        }
    }

    /// Unmaps a window made by [`Controller::map_fdless`].
    pub fn unmap_fdless(&mut self, arena: &DmaArena) -> Result<(), Error> {
        let mut t = lock(&self.transport)?;
        t.dma_unmap(arena.base(), arena.size())?;
        if !t.needs_serving() {
            self.serving.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Unmaps the DMA memory from the target (e.g. before disconnecting).
    pub fn dma_unmap(&self) -> Result<(), Error> {
        lock(&self.transport)?.dma_unmap(self.arena.base(), self.arena.size())?;
        Ok(())
    }
}

/// Finds a PCI capability by id in config space; returns its offset.
pub fn find_capability(t: &mut dyn Transport, id: u8) -> Result<Option<u64>, Error> {
    let mut b = [0u8; 1];
    t.region_read(CONFIG_REGION, 0x34, &mut b)?;
    let mut ptr = u64::from(b[0] & 0xfc);
    let mut hops = 0;
    while ptr != 0 && hops < 48 {
        let mut h = [0u8; 2];
        t.region_read(CONFIG_REGION, ptr, &mut h)?;
        if h[0] == id {
            return Ok(Some(ptr));
        }
        ptr = u64::from(h[1] & 0xfc);
        hops += 1;
    }
    Ok(None)
}
