//! The per-connection state machine: parse and validate each message, then dispatch it to
//! the [`Device`].

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use vfu_proto::*;

use crate::conn::{Conn, ConnDma, ReadOutcome, TryRead};
use crate::device::*;
use crate::dma::{DmaHandle, DmaTable, MapOutcome};
use crate::endpoint::ServerOptions;
use crate::irqs::Irqs;

/// Default timeout for a message body or a blocked send.
pub const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Default wait for the reply to a server-to-client DMA_READ/DMA_WRITE: below QEMU's 5 s
/// reply timeout (`x-msg-timeout`), so a command that waits on a stalled DMA request is
/// still answered before QEMU gives up on it.
pub const DMA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client disconnected (or the connection was closed after a fatal error).
    Disconnected,
    /// Shutdown was requested.
    Shutdown,
}

enum Flow {
    Continue,
    Close,
}

struct Session<'d, D: Device + ?Sized> {
    dev: &'d mut D,
    conn: Arc<Conn>,
    opts: ServerOptions,
    info: DeviceInfo,
    irqs: Arc<Irqs>,
    dma: DmaTable,
    handle: DmaHandle,
    caps: Capabilities,
    negotiated: bool,
    attached: bool,
    reply: Vec<u8>,
    /// Region sizes, read once per session so region accesses do not call `region_info`
    /// (which may clone sparse-area lists) on the hot path.
    sizes: Vec<u64>,
}

/// Regions whose sizes are cached per session.
const MAX_CACHED_REGIONS: u32 = 64;

/// Largest message the server accepts with these options.
pub(crate) fn max_msg_size(opts: &ServerOptions) -> usize {
    HEADER_SIZE + (opts.max_data_xfer_size as usize + 16).max(8192)
}

/// Runs one session over an already connected stream until the client leaves or
/// `shutdown` becomes readable. The device is attached after VERSION and detached at the end.
pub fn serve_connection<D: Device + ?Sized>(
    stream: UnixStream,
    device: &mut D,
    opts: &ServerOptions,
    shutdown: Option<BorrowedFd<'_>>,
) -> io::Result<SessionEnd> {
    let max_msg = max_msg_size(opts);
    // A peer that stalls mid-message or stops reading replies cannot wedge the endpoint
    // thread: partial reads and blocked sends time out and end the session.
    let tmo = Some(opts.io_timeout).filter(|d| !d.is_zero());
    stream.set_read_timeout(tmo)?;
    stream.set_write_timeout(tmo)?;
    let conn = Arc::new(Conn::new(Socket::new(stream), max_msg, opts.dma_timeout)?);
    let info = device.device_info();
    let counts: Vec<u32> = (0..info.num_irqs.min(NUM_IRQ_INDICES))
        .map(|i| device.irq_info(i).map_or(0, |q| q.count))
        .collect();
    let handle = DmaHandle::default();
    let sizes = (0..info.num_regions.min(MAX_CACHED_REGIONS))
        .map(|i| device.region_info(i).map_or(0, |r| r.size))
        .collect();
    let mut s = Session {
        dev: device,
        conn,
        opts: opts.clone(),
        info,
        irqs: Arc::new(Irqs::new(&counts)),
        dma: DmaTable::new(
            opts.max_dma_maps as usize,
            handle.clone(),
            opts.require_sealed_dma,
        ),
        handle,
        caps: Capabilities::default(),
        negotiated: false,
        attached: false,
        reply: Vec::with_capacity(max_msg),
        sizes,
    };
    let r = s.run(shutdown, max_msg);
    s.teardown();
    r
}

impl<D: Device + ?Sized> Session<'_, D> {
    fn run(&mut self, shutdown: Option<BorrowedFd<'_>>, max_msg: usize) -> io::Result<SessionEnd> {
        let mut body: Vec<u8> = Vec::with_capacity(max_msg);
        let mut fds: Vec<OwnedFd> = Vec::with_capacity(4);
        loop {
            if let Some(p) = self.conn.pop_pending() {
                let mut pfds = p.fds;
                if let Flow::Close = self.process(p.outcome, &mut pfds, &p.body) {
                    return Ok(SessionEnd::Disconnected);
                }
                continue;
            }
            if self.conn.is_broken() {
                return Ok(SessionEnd::Disconnected);
            }
            let conn = self.conn.clone();
            let (sock_ready, wake_ready, stop) = {
                // No allocation on this path: the third slot repeats the wake fd when
                // there is no shutdown fd.
                let mut pfds = [
                    PollFd::new(&conn.sock, PollFlags::IN),
                    PollFd::from_borrowed_fd(conn.wake_fd(), PollFlags::IN),
                    PollFd::from_borrowed_fd(shutdown.unwrap_or(conn.wake_fd()), PollFlags::IN),
                ];
                match poll(&mut pfds, None) {
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
                }
                let ready = |i: usize| pfds.get(i).is_some_and(|p| !p.revents().is_empty());
                (ready(0), ready(1), shutdown.is_some() && ready(2))
            };
            if stop {
                return Ok(SessionEnd::Shutdown);
            }
            if wake_ready {
                conn.clear_wake();
            }
            if !sock_ready {
                continue;
            }
            let outcome = match conn.try_read(&mut fds, &mut body) {
                Ok(TryRead::Got(o)) => o,
                Ok(TryRead::Idle) => continue,
                Ok(TryRead::Busy) => {
                    // A DMA requester reads the socket until its reply comes (or its
                    // deadline passes); wait for it to let go, or for shutdown.
                    if wait_wake(conn.wake_fd(), shutdown)? {
                        return Ok(SessionEnd::Shutdown);
                    }
                    conn.clear_wake();
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "vfio-user: connection read failed");
                    return Ok(SessionEnd::Disconnected);
                }
            };
            if let Flow::Close = self.process(outcome, &mut fds, &body) {
                return Ok(SessionEnd::Disconnected);
            }
            fds.clear();
        }
    }

    fn teardown(&mut self) {
        // Also ends a DMA requester's wait on either socket at once.
        self.conn.close();
        self.handle.set_channel(None);
        let _ = self.dma.unmap_all();
        self.irqs.clear_all();
        if self.attached {
            self.dev.detach();
            self.attached = false;
        }
    }

    fn send_error(&self, req: &Header, errno: Errno) {
        if req.no_reply() {
            return;
        }
        let e = u32::try_from(errno.raw_os_error()).unwrap_or(libc_einval());
        let _ = self.conn.send(&Header::error_reply(req, e), &[], &[]);
    }

    fn send_reply(&self, req: &Header, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) {
        if req.no_reply() {
            return;
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if let Err(e) = self.conn.send(&Header::reply(req, len), parts, fds) {
            tracing::debug!(error = %e, "vfio-user: reply send failed");
        }
    }

    fn process(&mut self, outcome: ReadOutcome, fds: &mut Vec<OwnedFd>, body: &[u8]) -> Flow {
        match outcome {
            ReadOutcome::Eof => Flow::Close,
            ReadOutcome::Msg(hdr) | ReadOutcome::Bad { hdr, fatal: false }
                if self.conn.take_late_reply(&hdr) =>
            {
                // The reply to a DMA request that timed out: consumed, never answered.
                tracing::debug!(id = hdr.msg_id, "vfio-user: late DMA reply dropped");
                fds.clear();
                Flow::Continue
            }
            ReadOutcome::Bad { hdr, fatal } => {
                tracing::debug!(
                    size = hdr.msg_size,
                    cmd = hdr.command,
                    "vfio-user: bad message header"
                );
                self.send_error(&hdr, Errno::INVAL);
                if fatal || !self.negotiated {
                    Flow::Close
                } else {
                    Flow::Continue
                }
            }
            ReadOutcome::Msg(hdr) => {
                let res = self.dispatch(&hdr, fds, body);
                fds.clear(); // closes every fd the handler did not take
                match res {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::debug!(
                            cmd = hdr.command,
                            errno = e.raw_os_error(),
                            "vfio-user: request failed"
                        );
                        self.send_error(&hdr, e);
                        if self.negotiated {
                            Flow::Continue
                        } else {
                            Flow::Close
                        }
                    }
                }
            }
        }
    }

    fn dispatch(
        &mut self,
        hdr: &Header,
        fds: &mut Vec<OwnedFd>,
        body: &[u8],
    ) -> Result<Flow, Errno> {
        if !hdr.is_command() {
            return Err(Errno::INVAL);
        }
        let cmd = hdr.cmd().ok_or(Errno::INVAL)?;
        if !self.negotiated {
            if cmd != Command::Version {
                return Err(Errno::INVAL);
            }
            return self.version(hdr, fds, body);
        }
        if body.is_empty() && cmd != Command::DeviceReset {
            return Err(Errno::INVAL);
        }
        match cmd {
            Command::Version => Err(Errno::INVAL),
            Command::DmaMap => self.dma_map(hdr, fds, body),
            Command::DmaUnmap => self.dma_unmap(hdr, body),
            Command::DeviceGetInfo => self.get_info(hdr, body),
            Command::DeviceGetRegionInfo => self.region_info(hdr, body),
            Command::DeviceGetRegionIoFds => self.region_io_fds(hdr, body),
            Command::DeviceGetIrqInfo => self.irq_info(hdr, body),
            Command::DeviceSetIrqs => self.set_irqs(hdr, fds, body),
            Command::RegionRead => self.region_read(hdr, body),
            Command::RegionWrite => self.region_write(hdr, body),
            Command::RegionWriteMulti => self.write_multi(hdr, body),
            Command::DeviceReset => {
                if !body.is_empty() {
                    return Err(Errno::INVAL);
                }
                self.dev.reset(ResetKind::Device)?;
                self.send_reply(hdr, &[], &[]);
                Ok(Flow::Continue)
            }
            Command::DeviceFeature => self.feature(hdr, body),
            Command::MigDataRead => self.mig_read(hdr, body),
            Command::MigDataWrite => self.mig_write(hdr, body),
            Command::DmaRead | Command::DmaWrite | Command::DirtyPages => Err(Errno::INVAL),
        }
    }

    fn version(&mut self, hdr: &Header, fds: &[OwnedFd], body: &[u8]) -> Result<Flow, Errno> {
        if !fds.is_empty() {
            return Err(Errno::INVAL);
        }
        let v = VersionHdr::decode(body).map_err(|_| Errno::INVAL)?;
        if v.major != VERSION_MAJOR {
            return Err(Errno::INVAL);
        }
        let json = body.get(VersionHdr::SIZE..).unwrap_or(&[]);
        let caps = Capabilities::parse(json).map_err(|_| Errno::INVAL)?;
        let want_twin = self.opts.twin_socket && caps.twin_socket.is_some_and(|t| t.supported);
        let mut ours = Capabilities {
            max_msg_fds: self.opts.max_msg_fds,
            max_data_xfer_size: self.opts.max_data_xfer_size,
            max_dma_maps: self.opts.max_dma_maps,
            pgsizes: self.opts.pgsizes,
            twin_socket: None,
            write_multiple: Some(true),
            migration_pgsize: caps.migration_pgsize.map(|_| 4096),
        };
        let mut twin_pair = None;
        if want_twin {
            let (ours_end, theirs) = UnixStream::pair().map_err(|_| Errno::NOMEM)?;
            let tmo = Some(self.opts.io_timeout).filter(|d| !d.is_zero());
            ours_end.set_read_timeout(tmo).map_err(|_| Errno::NOMEM)?;
            ours_end.set_write_timeout(tmo).map_err(|_| Errno::NOMEM)?;
            ours.twin_socket = Some(TwinSocket {
                supported: true,
                fd_index: Some(0),
            });
            twin_pair = Some((Socket::new(ours_end), theirs));
        }
        let reply_v = VersionHdr {
            major: VERSION_MAJOR,
            minor: v.minor.min(VERSION_MINOR),
        };
        let j = ours.to_json();
        let (twin_ours, twin_fd) = match twin_pair {
            Some((o, t)) => (Some(o), Some(t)),
            None => (None, None),
        };
        match &twin_fd {
            Some(t) => self.send_reply(hdr, &[reply_v.bytes(), &j], &[t.as_fd()]),
            None => self.send_reply(hdr, &[reply_v.bytes(), &j], &[]),
        }
        drop(twin_fd);
        let xfer = caps.max_data_xfer_size.min(self.opts.max_data_xfer_size) as usize;
        self.conn.negotiated(xfer, twin_ours);
        self.caps = caps;
        self.negotiated = true;
        self.handle
            .set_channel(Some(Box::new(ConnDma(self.conn.clone()))));
        self.dev.attach(DeviceContext {
            irqs: self.irqs.clone(),
            dma: self.handle.clone(),
            client_caps: self.caps.clone(),
        });
        self.attached = true;
        Ok(Flow::Continue)
    }

    fn dma_map(
        &mut self,
        hdr: &Header,
        fds: &mut Vec<OwnedFd>,
        body: &[u8],
    ) -> Result<Flow, Errno> {
        let m = DmaMap::decode_exact(body).map_err(|_| Errno::INVAL)?;
        if (m.argsz as usize) < DmaMap::SIZE || fds.len() > 1 {
            return Err(Errno::INVAL);
        }
        let fd = fds.pop();
        match self.dma.map(m.flags, m.offset, m.addr, m.size, fd)? {
            MapOutcome::Added(ev, mem) => {
                if let Err(e) = self.dev.dma_map(&ev, &mem) {
                    let _ = self.dma.unmap(ev.iova, ev.size);
                    return Err(e);
                }
            }
            MapOutcome::Unchanged => {}
        }
        self.send_reply(hdr, &[], &[]);
        Ok(Flow::Continue)
    }

    fn dma_unmap(&mut self, hdr: &Header, body: &[u8]) -> Result<Flow, Errno> {
        let u = DmaUnmap::decode(body).map_err(|_| Errno::INVAL)?;
        if (u.argsz as usize) < DmaUnmap::SIZE || u.argsz > (1 << 20) {
            return Err(Errno::INVAL);
        }
        if u.flags & !(DMA_UNMAP_FLAG_ALL | DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) != 0
            || u.flags & DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0
            || body.len() != DmaUnmap::SIZE
        {
            // No dirty logging through the old bitmap interface.
            return Err(Errno::INVAL);
        }
        let mut first_err = None;
        if u.flags & DMA_UNMAP_FLAG_ALL != 0 {
            if u.addr != 0 || u.size != 0 {
                return Err(Errno::INVAL);
            }
            let (evs, mem) = self.dma.unmap_all();
            for ev in &evs {
                if let Err(e) = self.dev.dma_unmap(ev, &mem) {
                    first_err.get_or_insert(e);
                }
            }
        } else {
            let (ev, mem) = self.dma.unmap(u.addr, u.size)?;
            if let Err(e) = self.dev.dma_unmap(&ev, &mem) {
                first_err = Some(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let echo = DmaUnmap {
            argsz: DmaUnmap::SIZE as u32,
            ..u
        };
        self.send_reply(hdr, &[echo.bytes()], &[]);
        Ok(Flow::Continue)
    }

    fn get_info(&mut self, hdr: &Header, body: &[u8]) -> Result<Flow, Errno> {
        let req = DeviceInfoMsg::decode_exact(body).map_err(|_| Errno::INVAL)?;
        if (req.argsz as usize) < DeviceInfoMsg::SIZE {
            return Err(Errno::INVAL);
        }
        let r = DeviceInfoMsg {
            argsz: DeviceInfoMsg::SIZE as u32,
            flags: self.info.flags,
            num_regions: self.info.num_regions,
            num_irqs: self.info.num_irqs,
        };
        self.send_reply(hdr, &[r.bytes()], &[]);
        Ok(Flow::Continue)
    }

    fn region(&self, index: u32) -> Result<Option<RegionInfo>, Errno> {
        if index >= self.info.num_regions {
            return Err(Errno::INVAL);
        }
        Ok(self.dev.region_info(index).filter(|r| r.size > 0))
    }

    fn region_info(&mut self, hdr: &Header, body: &[u8]) -> Result<Flow, Errno> {
        // SPDK sends a 4064-byte request payload: extra bytes are ignored.
        let req = RegionInfoMsg::decode(body).map_err(|_| Errno::INVAL)?;
        if (req.argsz as usize) < RegionInfoMsg::SIZE {
            return Err(Errno::INVAL);
        }
        let Some(reg) = self.region(req.index)? else {
            let r = RegionInfoMsg {
                argsz: RegionInfoMsg::SIZE as u32,
                index: req.index,
                ..RegionInfoMsg::default()
            };
            self.send_reply(hdr, &[r.bytes()], &[]);
            return Ok(Flow::Continue);
        };
        let mut r = RegionInfoMsg {
            argsz: RegionInfoMsg::SIZE as u32,
            flags: reg.flags & (REGION_FLAG_READ | REGION_FLAG_WRITE),
            index: req.index,
            cap_offset: 0,
            size: reg.size,
            offset: 0,
        };
        let Some(mm) = reg.mmap else {
            self.send_reply(hdr, &[r.bytes()], &[]);
            return Ok(Flow::Continue);
        };
        let whole = [SparseArea {
            offset: 0,
            size: reg.size,
        }];
        let areas: &[SparseArea] = if mm.areas.is_empty() {
            &whole
        } else {
            &mm.areas
        };
        let need = RegionInfoMsg::SIZE + sparse_cap_len(areas.len());
        r.flags |= REGION_FLAG_MMAP;
        r.offset = mm.file_offset;
        r.argsz = u32::try_from(need).map_err(|_| Errno::INVAL)?;
        if (req.argsz as usize) < need {
            // Caps do not fit: no caps, no fd; the client retries with argsz = need.
            self.send_reply(hdr, &[r.bytes()], &[]);
            return Ok(Flow::Continue);
        }
        r.flags |= REGION_FLAG_CAPS;
        r.cap_offset = RegionInfoMsg::SIZE as u32;
        let mut caps = Vec::with_capacity(sparse_cap_len(areas.len()));
        encode_sparse_cap(areas, &mut caps);
        self.send_reply(hdr, &[r.bytes(), &caps], &[mm.fd.as_fd()]);
        Ok(Flow::Continue)
    }

    fn region_io_fds(&mut self, hdr: &Header, body: &[u8]) -> Result<Flow, Errno> {
        let req = RegionIoFdsMsg::decode(body).map_err(|_| Errno::INVAL)?;
        if req.flags != 0
            || req.count != 0
            || (req.argsz as usize) < RegionIoFdsMsg::SIZE
            || req.argsz > (1 << 20)
        {
            return Err(Errno::INVAL);
        }
        if self.region(req.index)?.is_none() {
            return Err(Errno::INVAL);
        }
        // No ioeventfds are offered: an empty list.
        let r = RegionIoFdsMsg {
            argsz: RegionIoFdsMsg::SIZE as u32,
            flags: 0,
            index: req.index,
            count: 0,
        };
        self.send_reply(hdr, &[r.bytes()], &[]);
        Ok(Flow::Continue)
    }

    fn irq_info(&mut self, hdr: &Header, body: &[u8]) -> Result<Flow, Errno> {
        let req = IrqInfoMsg::decode(body).map_err(|_| Errno::INVAL)?;
        if (req.argsz as usize) < IrqInfoMsg::SIZE || req.index >= self.info.num_irqs {
            return Err(Errno::INVAL);
        }
        let i = self
            .dev
            .irq_info(req.index)
            .unwrap_or(IrqInfo { count: 0, flags: 0 });
        let r = IrqInfoMsg {
            argsz: IrqInfoMsg::SIZE as u32,
            flags: i.flags,
            index: req.index,
            count: self.irqs.count(req.index).min(i.count),
        };
        self.send_reply(hdr, &[r.bytes()], &[]);
        Ok(Flow::Continue)
    }

    fn set_irqs(
        &mut self,
        hdr: &Header,
        fds: &mut Vec<OwnedFd>,
        body: &[u8],
    ) -> Result<Flow, Errno> {
        let req = IrqSetMsg::decode(body).map_err(|_| Errno::INVAL)?;
        if (req.argsz as usize) < IrqSetMsg::SIZE
            || req.index >= NUM_IRQ_INDICES
            || req.index >= self.info.num_irqs
        {
            return Err(Errno::INVAL);
        }
        let data_bits = req.flags & IRQ_SET_DATA_MASK;
        let action_bits = req.flags & IRQ_SET_ACTION_MASK_ALL;
        if req.flags & !(IRQ_SET_DATA_MASK | IRQ_SET_ACTION_MASK_ALL) != 0
            || data_bits.count_ones() != 1
            || action_bits.count_ones() != 1
        {
            return Err(Errno::INVAL);
        }
        let total = self.irqs.count(req.index);
        let extra = body.len() - IrqSetMsg::SIZE;
        let action = match action_bits {
            IRQ_SET_ACTION_MASK => IrqAction::Mask,
            IRQ_SET_ACTION_UNMASK => IrqAction::Unmask,
            _ => IrqAction::Trigger,
        };
        if req.count == 0 {
            if req.start != 0 || action != IrqAction::Trigger || data_bits != IRQ_SET_DATA_NONE {
                return Err(Errno::INVAL);
            }
        } else if req.start >= total || req.start.saturating_add(req.count) > total {
            return Err(Errno::INVAL);
        }
        if (req.index == IRQ_INDEX_ERR || req.index == IRQ_INDEX_REQ)
            && (action != IrqAction::Trigger || req.count > 1)
        {
            return Err(Errno::INVAL);
        }
        if !fds.is_empty() && data_bits != IRQ_SET_DATA_EVENTFD {
            return Err(Errno::INVAL);
        }
        let data = match data_bits {
            IRQ_SET_DATA_NONE => {
                if extra != 0 {
                    return Err(Errno::INVAL);
                }
                IrqSetData::None
            }
            IRQ_SET_DATA_BOOL => {
                if extra != req.count as usize {
                    return Err(Errno::INVAL);
                }
                IrqSetData::Bool(body.iter().skip(IrqSetMsg::SIZE).map(|&b| b != 0).collect())
            }
            _ => {
                if extra != 0 || (!fds.is_empty() && fds.len() != req.count as usize) {
                    return Err(Errno::INVAL);
                }
                IrqSetData::Eventfd {
                    assigned: !fds.is_empty(),
                }
            }
        };
        // Execute.
        match (&action, &data) {
            (IrqAction::Trigger, IrqSetData::None) if req.count == 0 => {
                self.irqs.clear_index(req.index)
            }
            (IrqAction::Trigger, IrqSetData::Eventfd { .. }) => {
                let mut it = fds.drain(..);
                for v in req.start..req.start.saturating_add(req.count) {
                    self.irqs.set_fd(req.index, v, it.next())?;
                }
            }
            (IrqAction::Trigger, IrqSetData::None) => {
                for v in req.start..req.start.saturating_add(req.count) {
                    let _ = self.irqs.trigger(req.index, v);
                }
            }
            (IrqAction::Trigger, IrqSetData::Bool(b)) => {
                for (v, on) in (req.start..).zip(b.iter()) {
                    if *on {
                        let _ = self.irqs.trigger(req.index, v);
                    }
                }
            }
            // Mask/unmask notification eventfds: passed to the device only (fds dropped).
            (IrqAction::Mask | IrqAction::Unmask, IrqSetData::Eventfd { .. }) => {}
            (IrqAction::Mask | IrqAction::Unmask, d) => {
                let mask = action == IrqAction::Mask;
                for (i, v) in (req.start..req.start.saturating_add(req.count)).enumerate() {
                    let on = match d {
                        IrqSetData::Bool(b) => b.get(i).copied().unwrap_or(false),
                        _ => true,
                    };
                    if on {
                        self.irqs.set_masked(req.index, v, mask)?;
                    }
                }
            }
        }
        let ev = IrqSetEvent {
            index: req.index,
            start: req.start,
            count: req.count,
            action,
            data,
        };
        self.dev.set_irqs(&ev)?;
        self.send_reply(hdr, &[], &[]);
        Ok(Flow::Continue)
    }

    fn check_access(&self, region: u32, offset: u64, count: u32) -> Result<(), Errno> {
        if count > self.opts.max_data_xfer_size || region >= self.info.num_regions {
            return Err(Errno::INVAL);
        }
        let size = match self.sizes.get(region as usize) {
            Some(&s) => s,
            None => self.region(region)?.map_or(0, |r| r.size),
        };
        if size == 0 {
            return Err(Errno::INVAL);
        }
        let end = offset.checked_add(u64::from(count)).ok_or(Errno::INVAL)?;
        if end > size {
            return Err(Errno::INVAL);
        }
        Ok(())
    }

    fn region_read(&mut self, hdr: &Header, body: &[u8]) -> Result<Flow, Errno> {
        let a = RegionAccess::decode_exact(body).map_err(|_| Errno::INVAL)?;
        self.check_access(a.region, a.offset, a.count)?;
        if a.count == 0 {
            self.send_reply(hdr, &[], &[]);
            return Ok(Flow::Continue);
        }
        let n = a.count as usize;
        let mut buf = std::mem::take(&mut self.reply);
        buf.clear();
        buf.resize(n, 0);
        let r = self.dev.region_read(a.region, a.offset, &mut buf);
        if r.is_ok() {
            self.send_reply(hdr, &[a.bytes(), &buf], &[]);
        }
        self.reply = buf;
        r.map(|_| Flow::Continue)
    }

    fn region_write(&mut self, hdr: &Header, body: &[u8]) -> Result<Flow, Errno> {
        let a = RegionAccess::decode(body).map_err(|_| Errno::INVAL)?;
        let data = body.get(RegionAccess::SIZE..).unwrap_or(&[]);
        if data.len() != a.count as usize {
            return Err(Errno::INVAL);
        }
        self.check_access(a.region, a.offset, a.count)?;
        if a.count == 0 {
            self.send_reply(hdr, &[], &[]);
            return Ok(Flow::Continue);
        }
        self.dev.region_write(a.region, a.offset, data)?;
        self.send_reply(hdr, &[a.bytes()], &[]);
        Ok(Flow::Continue)
    }

    fn write_multi(&mut self, hdr: &Header, body: &[u8]) -> Result<Flow, Errno> {
        let cnt_bytes: [u8; 8] = body
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or(Errno::INVAL)?;
        let cnt = u64::from_ne_bytes(cnt_bytes);
        if cnt == 0 || cnt > MAX_WRITE_MULTI {
            return Err(Errno::INVAL);
        }
        let entries = body.get(8..).unwrap_or(&[]);
        if entries.len() as u64 != cnt * WriteMultiEntry::SIZE as u64 {
            return Err(Errno::INVAL);
        }
        // Parse and validate every entry first, then execute.
        for e in entries.chunks_exact(WriteMultiEntry::SIZE) {
            let w = WriteMultiEntry::decode(e).map_err(|_| Errno::INVAL)?;
            if w.count as usize > WRITE_MULTI_DATA {
                return Err(Errno::INVAL);
            }
            self.check_access(w.region, w.offset, w.count)?;
        }
        for e in entries.chunks_exact(WriteMultiEntry::SIZE) {
            let w = WriteMultiEntry::decode(e).map_err(|_| Errno::INVAL)?;
            let d = w.data.get(..w.count as usize).ok_or(Errno::INVAL)?;
            if !d.is_empty() {
                self.dev.region_write(w.region, w.offset, d)?;
            }
        }
        self.send_reply(hdr, &[&cnt_bytes], &[]);
        Ok(Flow::Continue)
    }

    fn feature(&mut self, hdr: &Header, body: &[u8]) -> Result<Flow, Errno> {
        let f = DeviceFeatureMsg::decode(body).map_err(|_| Errno::INVAL)?;
        let data = body.get(DeviceFeatureMsg::SIZE..).unwrap_or(&[]);
        if f.flags & !(FEATURE_MASK | FEATURE_GET | FEATURE_SET | FEATURE_PROBE) != 0 {
            return Err(Errno::INVAL);
        }
        let (get, set, probe) = (
            f.flags & FEATURE_GET != 0,
            f.flags & FEATURE_SET != 0,
            f.flags & FEATURE_PROBE != 0,
        );
        let op = match (get, set, probe) {
            (_, _, true) => FeatureOp::Probe { get, set },
            (true, false, false) => FeatureOp::Get,
            (false, true, false) => FeatureOp::Set,
            _ => return Err(Errno::INVAL),
        };
        if !matches!(op, FeatureOp::Get) && (f.argsz as usize) < body.len() {
            return Err(Errno::INVAL);
        }
        let max_reply = (f.argsz as usize).saturating_sub(DeviceFeatureMsg::SIZE);
        let req = FeatureRequest {
            feature: (f.flags & FEATURE_MASK) as u16,
            op,
            data,
            max_reply,
        };
        let mut out = Vec::new();
        self.dev.device_feature(&req, &mut out)?;
        match op {
            FeatureOp::Get => {
                if out.len() > max_reply {
                    return Err(Errno::INVAL);
                }
                let r = DeviceFeatureMsg {
                    argsz: u32::try_from(DeviceFeatureMsg::SIZE + out.len())
                        .map_err(|_| Errno::INVAL)?,
                    flags: f.flags,
                };
                self.send_reply(hdr, &[r.bytes(), &out], &[]);
            }
            _ => self.send_reply(hdr, &[f.bytes(), data], &[]),
        }
        Ok(Flow::Continue)
    }

    fn mig_read(&mut self, hdr: &Header, body: &[u8]) -> Result<Flow, Errno> {
        let m = MigDataMsg::decode_exact(body).map_err(|_| Errno::INVAL)?;
        let limit = self
            .caps
            .max_data_xfer_size
            .min(self.opts.max_data_xfer_size);
        if m.size > limit || (m.argsz as u64) < MigDataMsg::SIZE as u64 + u64::from(m.size) {
            return Err(Errno::INVAL);
        }
        let mut buf = vec![0u8; m.size as usize];
        let n = self.dev.mig_data_read(&mut buf)?.min(buf.len());
        buf.truncate(n);
        let r = MigDataMsg {
            argsz: (MigDataMsg::SIZE + n) as u32,
            size: n as u32,
        };
        self.send_reply(hdr, &[r.bytes(), &buf], &[]);
        Ok(Flow::Continue)
    }

    fn mig_write(&mut self, hdr: &Header, body: &[u8]) -> Result<Flow, Errno> {
        let m = MigDataMsg::decode(body).map_err(|_| Errno::INVAL)?;
        let data = body.get(MigDataMsg::SIZE..).unwrap_or(&[]);
        if data.len() != m.size as usize
            || m.size > self.opts.max_data_xfer_size
            || (m.argsz as usize) < body.len()
        {
            return Err(Errno::INVAL);
        }
        self.dev.mig_data_write(data)?;
        self.send_reply(hdr, &[], &[]);
        Ok(Flow::Continue)
    }
}

/// Waits until the wake fd or the shutdown fd is readable; true on shutdown.
fn wait_wake(wake: BorrowedFd<'_>, shutdown: Option<BorrowedFd<'_>>) -> io::Result<bool> {
    let mut pfds = [
        PollFd::from_borrowed_fd(wake, PollFlags::IN),
        PollFd::from_borrowed_fd(shutdown.unwrap_or(wake), PollFlags::IN),
    ];
    match poll(&mut pfds, None) {
        Ok(_) | Err(Errno::INTR) => {}
        Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
    }
    Ok(shutdown.is_some() && pfds.get(1).is_some_and(|p| !p.revents().is_empty()))
}

fn libc_einval() -> u32 {
    Errno::INVAL.raw_os_error() as u32
}
