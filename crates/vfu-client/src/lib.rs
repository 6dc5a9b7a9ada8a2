//! vfio-user client library: negotiate, query, region access (sync, posted, WRITE_MULTI),
//! sparse mmap, DMA map of memfd memory it owns, SET_IRQS, reset, migration data, and
//! serving the server's DMA_READ/DMA_WRITE requests (inline or on a twin socket).
//!
//! All methods take `&self`: requests are serialized internally, so a `Client` can be
//! shared between threads (`Arc<Client>`).

mod memory;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rustix::io::Errno;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use memory::{DmaBuffer, MappedArea};
pub use vfu_proto as proto;
use vfu_proto::*;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket I/O failed or the server closed the connection.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The server answered with an error reply (positive errno; 0 is reported as EIO).
    #[error("server returned errno {0}")]
    Errno(Errno),
    /// The server's reply broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

impl From<Errno> for ClientError {
    fn from(e: Errno) -> Self {
        ClientError::Errno(e)
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, ClientError>;

/// Client configuration.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Send capability JSON in VERSION (false: SPDK-style bare version).
    pub send_json: bool,
    /// Proposed minor version.
    pub minor: u16,
    /// Our `max_msg_fds`.
    pub max_msg_fds: u32,
    /// Our `max_data_xfer_size` (largest DMA_READ/WRITE we accept).
    pub max_data_xfer_size: u32,
    /// Ask for a twin socket.
    pub twin_socket: bool,
    /// Announce `write_multiple`.
    pub write_multiple: bool,
    /// Give up on a reply (or a partial message) after this long; `None` waits forever
    /// (DEVICE_RESET may legitimately take long).
    pub reply_timeout: Option<std::time::Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            send_json: true,
            minor: VERSION_MINOR,
            max_msg_fds: 16,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER,
            twin_socket: false,
            write_multiple: true,
            reply_timeout: None,
        }
    }
}

/// A region as described by REGION_INFO.
#[derive(Debug)]
pub struct RegionDesc {
    /// The region-info struct of the final reply.
    pub info: RegionInfoMsg,
    /// Sparse mmap areas (empty when the region is not mappable).
    pub areas: Vec<SparseArea>,
    /// The region fd (when the region is mappable).
    pub fd: Option<OwnedFd>,
}

/// One write of a REGION_WRITE_MULTI batch (at most 8 bytes).
#[derive(Debug, Clone, Copy)]
pub struct WriteOp<'a> {
    /// Region index.
    pub region: u32,
    /// Offset in the region.
    pub offset: u64,
    /// Data (<= 8 bytes).
    pub data: &'a [u8],
}

/// A DMA window the client serves to the server.
#[derive(Debug, Clone)]
struct Window {
    iova: u64,
    size: u64,
    mem: GuestMemoryMmap,
    write: bool,
}

#[derive(Debug, Default)]
struct Windows(RwLock<Vec<Window>>);

impl Windows {
    fn find(&self, addr: u64, count: u64) -> Option<Window> {
        let end = addr.checked_add(count)?;
        let ws = self.0.read().unwrap_or_else(|p| p.into_inner());
        ws.iter()
            .find(|w| addr >= w.iova && end <= w.iova.saturating_add(w.size))
            .cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves one server-to-client command (DMA_READ / DMA_WRITE). Never panics on input.
fn serve_dma(
    sock: &Socket,
    windows: &Windows,
    max_xfer: u32,
    hdr: &Header,
    body: &[u8],
    nfds: usize,
) -> io::Result<()> {
    let reply_err = |e: Errno| -> io::Result<()> {
        if hdr.no_reply() {
            return Ok(());
        }
        sock.send(&Header::error_reply(hdr, e.raw_os_error() as u32), &[], &[])
    };
    if nfds != 0 {
        return reply_err(Errno::INVAL);
    }
    let Ok(rw) = DmaRw::decode(body) else {
        return reply_err(Errno::INVAL);
    };
    if rw.count > u64::from(max_xfer) {
        return reply_err(Errno::TOOBIG);
    }
    let Some(w) = windows.find(rw.addr, rw.count) else {
        return reply_err(Errno::FAULT);
    };
    match hdr.cmd() {
        Some(Command::DmaRead) if body.len() == DmaRw::SIZE => {
            let mut data = vec![0u8; rw.count as usize];
            if w.mem.read_slice(&mut data, GuestAddress(rw.addr)).is_err() {
                return reply_err(Errno::FAULT);
            }
            sock.send(
                &Header::reply(hdr, DmaRw::SIZE + data.len()),
                &[rw.as_bytes_ref(), &data],
                &[],
            )
        }
        Some(Command::DmaWrite) => {
            let data = body.get(DmaRw::SIZE..).unwrap_or(&[]);
            if data.len() as u64 != rw.count {
                return reply_err(Errno::INVAL);
            }
            if !w.write {
                return reply_err(Errno::PERM);
            }
            if w.mem.write_slice(data, GuestAddress(rw.addr)).is_err() {
                return reply_err(Errno::FAULT);
            }
            if hdr.no_reply() {
                return Ok(());
            }
            sock.send(&Header::reply(hdr, DmaRw::SIZE), &[rw.as_bytes_ref()], &[])
        }
        _ => reply_err(Errno::INVAL),
    }
}

trait AsBytesRef {
    fn as_bytes_ref(&self) -> &[u8];
}
impl<T: Wire> AsBytesRef for T {
    fn as_bytes_ref(&self) -> &[u8] {
        self.bytes()
    }
}

/// A connected vfio-user client.
#[derive(Debug)]
pub struct Client {
    sock: Socket,
    io: Mutex<Vec<u8>>,
    next_id: AtomicU16,
    server_caps: Capabilities,
    server_minor: u16,
    opts: ClientOptions,
    windows: Arc<Windows>,
    twin: Option<(Socket, std::thread::JoinHandle<()>)>,
}

const MAX_REPLY: usize = 64 << 20;

impl Client {
    /// Connects to `path` and negotiates.
    pub fn connect(path: impl AsRef<Path>, opts: ClientOptions) -> Result<Client> {
        Self::from_stream(UnixStream::connect(path)?, opts)
    }

    /// Negotiates over an already connected stream.
    pub fn from_stream(stream: UnixStream, opts: ClientOptions) -> Result<Client> {
        stream.set_read_timeout(opts.reply_timeout)?;
        let mut c = Client {
            sock: Socket::new(stream),
            io: Mutex::new(Vec::new()),
            next_id: AtomicU16::new(1),
            server_caps: Capabilities::default(),
            server_minor: 0,
            opts,
            windows: Arc::new(Windows::default()),
            twin: None,
        };
        c.negotiate()?;
        Ok(c)
    }

    fn negotiate(&mut self) -> Result<()> {
        let ours = Capabilities {
            max_msg_fds: self.opts.max_msg_fds,
            max_data_xfer_size: self.opts.max_data_xfer_size,
            twin_socket: self.opts.twin_socket.then_some(TwinSocket {
                supported: true,
                fd_index: None,
            }),
            write_multiple: self.opts.write_multiple.then_some(true),
            ..Capabilities::default()
        };
        let v = VersionHdr {
            major: VERSION_MAJOR,
            minor: self.opts.minor,
        };
        let json = if self.opts.send_json {
            ours.to_json()
        } else {
            Vec::new()
        };
        let (_, body, mut fds) = self.request_full(Command::Version, &[v.bytes(), &json], &[])?;
        let rv =
            VersionHdr::decode(&body).map_err(|_| ClientError::Protocol("short VERSION reply"))?;
        if rv.major != VERSION_MAJOR || rv.minor > self.opts.minor {
            return Err(ClientError::Protocol("server version not acceptable"));
        }
        self.server_minor = rv.minor;
        self.server_caps = Capabilities::parse(body.get(VersionHdr::SIZE..).unwrap_or(&[]))
            .map_err(|_| ClientError::Protocol("bad server capabilities"))?;
        if let Some(TwinSocket {
            supported: true,
            fd_index: Some(i),
        }) = self.server_caps.twin_socket
        {
            if !self.opts.twin_socket {
                return Err(ClientError::Protocol("unrequested twin socket"));
            }
            let idx = i as usize;
            if idx >= fds.len() {
                return Err(ClientError::Protocol("twin socket fd missing"));
            }
            let fd = fds.swap_remove(idx);
            let twin = Socket::new(UnixStream::from(fd));
            let serve = twin.try_clone()?;
            let windows = self.windows.clone();
            let max = self.opts.max_data_xfer_size;
            let h = std::thread::Builder::new()
                .name("vfu-client-twin".into())
                .spawn(move || twin_loop(serve, windows, max))?;
            self.twin = Some((twin, h));
        }
        Ok(())
    }

    /// Capabilities the server announced.
    pub fn server_caps(&self) -> &Capabilities {
        &self.server_caps
    }

    /// Minor version the server chose.
    pub fn server_minor(&self) -> u16 {
        self.server_minor
    }

    /// Whether a twin socket is in use.
    pub fn has_twin_socket(&self) -> bool {
        self.twin.is_some()
    }

    fn alloc_id(&self) -> u16 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn check_fds(&self, fds: &[BorrowedFd<'_>]) -> Result<()> {
        let limit = self.server_caps.max_msg_fds.max(1) as usize;
        if fds.len() > limit {
            return Err(ClientError::Errno(Errno::TOOBIG));
        }
        Ok(())
    }

    /// Sends a raw command and waits for its reply, serving DMA requests meanwhile.
    /// Returns the reply header, payload and fds. An error reply becomes `ClientError::Errno`.
    pub fn request_full(
        &self,
        cmd: Command,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Header, Vec<u8>, Vec<OwnedFd>)> {
        let mut body = Vec::new();
        let (h, rfds) = self.request_into(cmd, parts, fds, &mut body)?;
        Ok((h, body, rfds))
    }

    fn request_into(
        &self,
        cmd: Command,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
        body: &mut Vec<u8>,
    ) -> Result<(Header, Vec<OwnedFd>)> {
        if cmd != Command::Version {
            self.check_fds(fds)?;
        }
        let _g = lock(&self.io);
        let id = self.alloc_id();
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let hdr = Header::command(id, cmd, len);
        self.sock.send(&hdr, parts, fds)?;
        let mut rfds = Vec::new();
        loop {
            let h = self.recv_msg(&mut rfds, body)?;
            if h.is_command() {
                self.serve_peer(&h, body, rfds.len())?;
                continue;
            }
            if h.msg_id != id || h.command != cmd as u16 {
                tracing::debug!(id = h.msg_id, "vfio-user client: unexpected reply dropped");
                continue;
            }
            if h.is_error() {
                let e = if (1..=4096).contains(&h.error) {
                    Errno::from_raw_os_error(h.error as i32)
                } else {
                    Errno::IO
                };
                return Err(ClientError::Errno(e));
            }
            return Ok((h, std::mem::take(&mut rfds)));
        }
    }

    /// Receives one whole message from the main socket: `fds` and `body` are replaced by
    /// the message's fds and payload. The caller holds the `io` lock.
    fn recv_msg(&self, fds: &mut Vec<OwnedFd>, body: &mut Vec<u8>) -> Result<Header> {
        fds.clear();
        let h = self
            .sock
            .recv_header(fds)?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let n = h
            .payload_len()
            .ok_or(ClientError::Protocol("msg_size < 16"))?;
        if n > MAX_REPLY {
            return Err(ClientError::Protocol("message too large"));
        }
        body.clear();
        body.resize(n, 0);
        self.sock.recv_exact(body)?;
        Ok(h)
    }

    /// Answers a server-to-client request (DMA_READ/DMA_WRITE) received on the main socket.
    fn serve_peer(&self, h: &Header, body: &[u8], nfds: usize) -> Result<()> {
        Ok(serve_dma(
            &self.sock,
            &self.windows,
            self.opts.max_data_xfer_size,
            h,
            body,
            nfds,
        )?)
    }

    fn request(&self, cmd: Command, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<Vec<u8>> {
        Ok(self.request_full(cmd, parts, fds)?.1)
    }

    /// Sends a command with No_reply set (posted). Errors are not reported by the server.
    pub fn post(&self, cmd: Command, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<()> {
        self.check_fds(fds)?;
        let _g = lock(&self.io);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut hdr = Header::command(self.alloc_id(), cmd, len);
        hdr.flags |= FLAG_NO_REPLY;
        self.sock.send(&hdr, parts, fds)?;
        Ok(())
    }

    /// Serves server-to-client requests (DMA_READ/DMA_WRITE) that arrive on the main socket
    /// while no request of ours is in flight, for up to `timeout` of quiet. Requests are also
    /// served automatically while we wait for any reply, and on the twin socket by a thread.
    /// Returns how many requests were served.
    pub fn serve_pending(&self, timeout: std::time::Duration) -> Result<usize> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let _g = lock(&self.io);
        let ts = Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut served = 0usize;
        let mut body = Vec::new();
        let mut fds = Vec::new();
        loop {
            let mut pfd = [PollFd::new(&self.sock, PollFlags::IN)];
            match poll(&mut pfd, Some(&ts)) {
                Ok(0) => return Ok(served),
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(ClientError::Errno(e)),
            }
            let h = self.recv_msg(&mut fds, &mut body)?;
            if h.is_command() {
                self.serve_peer(&h, &body, fds.len())?;
                served = served.saturating_add(1);
            } else {
                tracing::debug!(id = h.msg_id, "vfio-user client: unexpected reply dropped");
            }
        }
    }

    /// DEVICE_GET_INFO.
    pub fn device_info(&self) -> Result<DeviceInfoMsg> {
        let req = DeviceInfoMsg {
            argsz: DeviceInfoMsg::SIZE as u32,
            ..Default::default()
        };
        let b = self.request(Command::DeviceGetInfo, &[req.bytes()], &[])?;
        DeviceInfoMsg::decode(&b).map_err(|_| ClientError::Protocol("short DEVICE_GET_INFO reply"))
    }

    /// DEVICE_GET_REGION_INFO with argsz retry for the capability chain.
    pub fn region_info(&self, index: u32) -> Result<RegionDesc> {
        let mut argsz = RegionInfoMsg::SIZE as u32;
        for _ in 0..3 {
            let req = RegionInfoMsg {
                argsz,
                index,
                ..Default::default()
            };
            let (_, b, mut fds) =
                self.request_full(Command::DeviceGetRegionInfo, &[req.bytes()], &[])?;
            let info = RegionInfoMsg::decode(&b)
                .map_err(|_| ClientError::Protocol("short REGION_INFO reply"))?;
            if info.argsz > argsz {
                if info.argsz > 1 << 16 {
                    return Err(ClientError::Protocol("REGION_INFO argsz too large"));
                }
                argsz = info.argsz;
                continue;
            }
            let areas = if info.flags & REGION_FLAG_MMAP != 0 {
                match parse_sparse_areas(&b)
                    .map_err(|_| ClientError::Protocol("bad capability chain"))?
                {
                    Some(a) => a,
                    None => vec![SparseArea {
                        offset: 0,
                        size: info.size,
                    }],
                }
            } else {
                Vec::new()
            };
            if fds.len() > 1 {
                return Err(ClientError::Protocol("more than one fd in REGION_INFO"));
            }
            return Ok(RegionDesc {
                info,
                areas,
                fd: fds.pop(),
            });
        }
        Err(ClientError::Protocol("REGION_INFO argsz keeps growing"))
    }

    /// DEVICE_GET_IRQ_INFO.
    pub fn irq_info(&self, index: u32) -> Result<IrqInfoMsg> {
        let req = IrqInfoMsg {
            argsz: IrqInfoMsg::SIZE as u32,
            index,
            ..Default::default()
        };
        let b = self.request(Command::DeviceGetIrqInfo, &[req.bytes()], &[])?;
        IrqInfoMsg::decode(&b).map_err(|_| ClientError::Protocol("short IRQ_INFO reply"))
    }

    fn xfer(&self) -> usize {
        (self.server_caps.max_data_xfer_size as usize).max(1)
    }

    /// REGION_READ (chunked by the server's max_data_xfer_size).
    pub fn region_read(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut off = offset;
        let mut body = Vec::new();
        for part in buf.chunks_mut(self.xfer()) {
            let a = RegionAccess {
                offset: off,
                region,
                count: part.len() as u32,
            };
            self.request_into(Command::RegionRead, &[a.bytes()], &[], &mut body)?;
            let data = body
                .get(RegionAccess::SIZE..)
                .ok_or(ClientError::Protocol("short REGION_READ reply"))?;
            if data.len() != part.len() {
                return Err(ClientError::Protocol("REGION_READ size mismatch"));
            }
            part.copy_from_slice(data);
            off = off
                .checked_add(part.len() as u64)
                .ok_or(ClientError::Errno(Errno::INVAL))?;
        }
        Ok(())
    }

    /// REGION_WRITE, waiting for the reply.
    pub fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.write_impl(region, offset, data, false)
    }

    /// REGION_WRITE with No_reply (posted): returns once sent.
    pub fn region_write_posted(&self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.write_impl(region, offset, data, true)
    }

    fn write_impl(&self, region: u32, offset: u64, data: &[u8], posted: bool) -> Result<()> {
        let mut off = offset;
        let mut body = Vec::new();
        for part in data.chunks(self.xfer()) {
            let a = RegionAccess {
                offset: off,
                region,
                count: part.len() as u32,
            };
            if posted {
                self.post(Command::RegionWrite, &[a.bytes(), part], &[])?;
            } else {
                self.request_into(Command::RegionWrite, &[a.bytes(), part], &[], &mut body)?;
            }
            off = off
                .checked_add(part.len() as u64)
                .ok_or(ClientError::Errno(Errno::INVAL))?;
        }
        Ok(())
    }

    /// REGION_WRITE_MULTI (each write <= 8 bytes); falls back to REGION_WRITEs when the
    /// server did not announce `write_multiple`.
    pub fn region_write_multi(&self, writes: &[WriteOp<'_>], posted: bool) -> Result<()> {
        if self.server_caps.write_multiple != Some(true) {
            for w in writes {
                self.write_impl(w.region, w.offset, w.data, posted)?;
            }
            return Ok(());
        }
        for batch in writes.chunks(MAX_WRITE_MULTI as usize) {
            let mut body = Vec::with_capacity(8 + batch.len() * WriteMultiEntry::SIZE);
            body.extend_from_slice(&(batch.len() as u64).to_ne_bytes());
            for w in batch {
                if w.data.len() > WRITE_MULTI_DATA {
                    return Err(ClientError::Errno(Errno::INVAL));
                }
                let mut e = WriteMultiEntry {
                    offset: w.offset,
                    region: w.region,
                    count: w.data.len() as u32,
                    data: [0; 8],
                };
                if let Some(d) = e.data.get_mut(..w.data.len()) {
                    d.copy_from_slice(w.data);
                }
                body.extend_from_slice(e.bytes());
            }
            if posted {
                self.post(Command::RegionWriteMulti, &[&body], &[])?;
            } else {
                self.request(Command::RegionWriteMulti, &[&body], &[])?;
            }
        }
        Ok(())
    }

    /// mmaps every sparse area of a mappable region (consumes the region's fd).
    pub fn mmap_region(&self, desc: &RegionDesc) -> Result<Vec<MappedArea>> {
        memory::mmap_region(desc)
    }

    fn add_window(&self, iova: u64, size: u64, mem: GuestMemoryMmap, write: bool) {
        let mut ws = self.windows.0.write().unwrap_or_else(|p| p.into_inner());
        ws.push(Window {
            iova,
            size,
            mem,
            write,
        });
    }

    /// DMA_MAP of a buffer, passing its fd (the server mmaps it).
    pub fn dma_map(&self, buf: &DmaBuffer, flags: u32) -> Result<()> {
        self.dma_map_raw(flags, 0, buf.iova(), buf.size(), Some(buf.fd()))?;
        self.add_window(
            buf.iova(),
            buf.size(),
            buf.memory().clone(),
            flags & DMA_FLAG_WRITE != 0,
        );
        Ok(())
    }

    /// DMA_MAP of a buffer without an fd: the server reaches it through DMA_READ/WRITE
    /// messages that this client serves.
    pub fn dma_map_fdless(&self, buf: &DmaBuffer, flags: u32) -> Result<()> {
        self.add_window(
            buf.iova(),
            buf.size(),
            buf.memory().clone(),
            flags & DMA_FLAG_WRITE != 0,
        );
        if let Err(e) = self.dma_map_raw(flags, 0, buf.iova(), buf.size(), None) {
            self.forget_windows(buf.iova(), buf.size());
            return Err(e);
        }
        Ok(())
    }

    /// Raw DMA_MAP.
    pub fn dma_map_raw(
        &self,
        flags: u32,
        offset: u64,
        addr: u64,
        size: u64,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<()> {
        let m = DmaMap {
            argsz: DmaMap::SIZE as u32,
            flags,
            offset,
            addr,
            size,
        };
        match fd {
            Some(f) => self.request(Command::DmaMap, &[m.bytes()], &[f])?,
            None => self.request(Command::DmaMap, &[m.bytes()], &[])?,
        };
        Ok(())
    }

    fn forget_windows(&self, addr: u64, size: u64) {
        let mut ws = self.windows.0.write().unwrap_or_else(|p| p.into_inner());
        ws.retain(|w| !(w.iova == addr && w.size == size));
    }

    /// DMA_UNMAP of an exact window; returns the server's 24-byte echo.
    pub fn dma_unmap(&self, addr: u64, size: u64) -> Result<DmaUnmap> {
        let u = DmaUnmap {
            argsz: DmaUnmap::SIZE as u32,
            flags: 0,
            addr,
            size,
        };
        let b = self.request(Command::DmaUnmap, &[u.bytes()], &[])?;
        self.forget_windows(addr, size);
        DmaUnmap::decode(&b).map_err(|_| ClientError::Protocol("short DMA_UNMAP reply"))
    }

    /// DMA_UNMAP with FLAG_ALL.
    pub fn dma_unmap_all(&self) -> Result<()> {
        let u = DmaUnmap {
            argsz: DmaUnmap::SIZE as u32,
            flags: DMA_UNMAP_FLAG_ALL,
            addr: 0,
            size: 0,
        };
        self.request(Command::DmaUnmap, &[u.bytes()], &[])?;
        self.windows
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    /// DEVICE_SET_IRQS with optional eventfds (DATA_EVENTFD) or no data.
    pub fn set_irqs(
        &self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<()> {
        let m = IrqSetMsg {
            argsz: IrqSetMsg::SIZE as u32,
            flags,
            index,
            start,
            count,
        };
        self.request(Command::DeviceSetIrqs, &[m.bytes()], fds)?;
        Ok(())
    }

    /// Installs `fds` as eventfds for vectors `start..` of `index` (chunked by the server's
    /// max_msg_fds).
    pub fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[BorrowedFd<'_>]) -> Result<()> {
        let per = self.server_caps.max_msg_fds.max(1) as usize;
        let mut s = start;
        for chunk in fds.chunks(per) {
            self.set_irqs(
                index,
                IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
                s,
                chunk.len() as u32,
                chunk,
            )?;
            s = s.saturating_add(chunk.len() as u32);
        }
        Ok(())
    }

    /// DEVICE_SET_IRQS with a bool array.
    pub fn set_irqs_bool(&self, index: u32, action: u32, start: u32, data: &[bool]) -> Result<()> {
        let m = IrqSetMsg {
            argsz: (IrqSetMsg::SIZE + data.len()) as u32,
            flags: IRQ_SET_DATA_BOOL | action,
            index,
            start,
            count: data.len() as u32,
        };
        let bytes: Vec<u8> = data.iter().map(|&b| u8::from(b)).collect();
        self.request(Command::DeviceSetIrqs, &[m.bytes(), &bytes], &[])?;
        Ok(())
    }

    /// DEVICE_RESET.
    pub fn reset(&self) -> Result<()> {
        self.request(Command::DeviceReset, &[], &[])?;
        Ok(())
    }

    /// DEVICE_FEATURE; returns the reply header struct and data.
    pub fn device_feature(
        &self,
        flags: u32,
        argsz: u32,
        data: &[u8],
    ) -> Result<(DeviceFeatureMsg, Vec<u8>)> {
        let f = DeviceFeatureMsg { argsz, flags };
        let b = self.request(Command::DeviceFeature, &[f.bytes(), data], &[])?;
        let r = DeviceFeatureMsg::decode(&b)
            .map_err(|_| ClientError::Protocol("short DEVICE_FEATURE reply"))?;
        Ok((r, b.get(DeviceFeatureMsg::SIZE..).unwrap_or(&[]).to_vec()))
    }

    /// MIG_DATA_READ of up to `size` bytes.
    pub fn mig_data_read(&self, size: u32) -> Result<Vec<u8>> {
        let m = MigDataMsg {
            argsz: MigDataMsg::SIZE as u32 + size,
            size,
        };
        let b = self.request(Command::MigDataRead, &[m.bytes()], &[])?;
        let r = MigDataMsg::decode(&b)
            .map_err(|_| ClientError::Protocol("short MIG_DATA_READ reply"))?;
        let data = b.get(MigDataMsg::SIZE..).unwrap_or(&[]);
        if r.size as usize != data.len() || r.size > size {
            return Err(ClientError::Protocol("MIG_DATA_READ size mismatch"));
        }
        Ok(data.to_vec())
    }

    /// MIG_DATA_WRITE.
    pub fn mig_data_write(&self, data: &[u8]) -> Result<()> {
        let m = MigDataMsg {
            argsz: (MigDataMsg::SIZE + data.len()) as u32,
            size: data.len() as u32,
        };
        self.request(Command::MigDataWrite, &[m.bytes(), data], &[])?;
        Ok(())
    }

    /// The main socket (for tests that speak raw messages alongside).
    pub fn socket(&self) -> &Socket {
        &self.sock
    }

    /// Closes the connection (and the twin socket).
    pub fn disconnect(mut self) {
        self.close();
    }

    fn close(&mut self) {
        self.sock.shutdown();
        if let Some((t, h)) = self.twin.take() {
            t.shutdown();
            let _ = h.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

impl AsFd for Client {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

fn twin_loop(sock: Socket, windows: Arc<Windows>, max: u32) {
    let mut fds = Vec::new();
    let mut body = Vec::new();
    loop {
        fds.clear();
        let h = match sock.recv_header(&mut fds) {
            Ok(Some(h)) => h,
            _ => return,
        };
        let Some(n) = h.payload_len().filter(|&n| n <= max as usize + 64) else {
            return;
        };
        body.clear();
        body.resize(n, 0);
        if sock.recv_exact(&mut body).is_err() {
            return;
        }
        if h.is_command() && serve_dma(&sock, &windows, max, &h, &body, fds.len()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(windows: &Windows, hdr: Header, body: &[u8], nfds: usize) -> (Header, Vec<u8>) {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Socket::new(a), Socket::new(b));
        serve_dma(&a, windows, 4096, &hdr, body, nfds).unwrap();
        let mut fds = Vec::new();
        let h = b.recv_header(&mut fds).unwrap().unwrap();
        let mut p = vec![0u8; h.payload_len().unwrap()];
        b.recv_exact(&mut p).unwrap();
        (h, p)
    }

    #[test]
    fn serves_dma_requests_and_rejects_bad_ones() {
        let buf = DmaBuffer::new(0x1000, 0x1000).unwrap();
        let w = Windows::default();
        w.0.write().unwrap().push(Window {
            iova: 0x1000,
            size: 0x1000,
            mem: buf.memory().clone(),
            write: true,
        });
        buf.write(0x1010, b"xyz").unwrap();
        let rd = DmaRw {
            addr: 0x1010,
            count: 3,
        };
        let (h, p) = serve(&w, Header::command(5, Command::DmaRead, 16), rd.bytes(), 0);
        assert!(!h.is_error());
        assert_eq!(&p[16..], b"xyz");
        let mut wr = DmaRw {
            addr: 0x1020,
            count: 2,
        }
        .bytes()
        .to_vec();
        wr.extend_from_slice(b"ok");
        let (h, p) = serve(&w, Header::command(6, Command::DmaWrite, wr.len()), &wr, 0);
        assert!(!h.is_error() && p.len() == 16);
        let mut o = [0u8; 2];
        buf.read(0x1020, &mut o).unwrap();
        assert_eq!(&o, b"ok");
        let err = |h: Header| h.error as i32;
        let (h, _) = serve(
            &w,
            Header::command(7, Command::DmaRead, 16),
            DmaRw {
                addr: 0x1ffe,
                count: 4,
            }
            .bytes(),
            0,
        );
        assert_eq!(err(h), Errno::FAULT.raw_os_error());
        let (h, _) = serve(
            &w,
            Header::command(7, Command::DmaRead, 16),
            DmaRw {
                addr: 0x1000,
                count: 8192,
            }
            .bytes(),
            0,
        );
        assert_eq!(err(h), Errno::TOOBIG.raw_os_error());
        let (h, _) = serve(&w, Header::command(7, Command::DmaRead, 16), rd.bytes(), 1);
        assert_eq!(err(h), Errno::INVAL.raw_os_error());
        let (h, _) = serve(
            &w,
            Header::command(7, Command::DmaWrite, 16),
            DmaRw {
                addr: 0x1000,
                count: 4,
            }
            .bytes(),
            0,
        );
        assert_eq!(
            err(h),
            Errno::INVAL.raw_os_error(),
            "data shorter than count"
        );
        let (h, _) = serve(
            &w,
            Header::command(7, Command::DeviceReset, 16),
            rd.bytes(),
            0,
        );
        assert_eq!(err(h), Errno::INVAL.raw_os_error());
        let (h, _) = serve(&w, Header::command(7, Command::DmaRead, 4), &[0; 4], 0);
        assert_eq!(err(h), Errno::INVAL.raw_os_error());
        w.0.write().unwrap()[0].write = false;
        let (h, _) = serve(&w, Header::command(8, Command::DmaWrite, wr.len()), &wr, 0);
        assert_eq!(err(h), Errno::PERM.raw_os_error());
    }

    #[test]
    fn rejects_bad_server_version_replies() {
        // a fake server answering VERSION with a bad major, then with JSON lacking the NUL
        for reply in [VersionHdr { major: 1, minor: 0 }.bytes().to_vec(), {
            let mut v = VersionHdr { major: 0, minor: 0 }.bytes().to_vec();
            v.extend_from_slice(b"{}");
            v
        }] {
            let (a, b) = UnixStream::pair().unwrap();
            let t = std::thread::spawn(move || {
                let s = Socket::new(b);
                let mut fds = Vec::new();
                let h = s.recv_header(&mut fds).unwrap().unwrap();
                let mut p = vec![0u8; h.payload_len().unwrap()];
                s.recv_exact(&mut p).unwrap();
                s.send(&Header::reply(&h, reply.len()), &[&reply], &[])
                    .unwrap();
            });
            assert!(matches!(
                Client::from_stream(a, ClientOptions::default()),
                Err(ClientError::Protocol(_))
            ));
            t.join().unwrap();
        }
    }
}
