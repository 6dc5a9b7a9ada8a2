//! Sample device and raw-socket helpers shared by the integration tests.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use vfu_server::proto::*;
use vfu_server::*;

pub const BAR0_SIZE: u64 = 0x4000;
pub const BAR1_SIZE: u64 = 0x100;
pub const CFG_SIZE: u64 = 0x1000;
pub const MSIX_COUNT: u32 = 8;

/// What the sample device saw.
#[derive(Debug, Default)]
pub struct Log {
    pub attaches: usize,
    pub detaches: usize,
    pub resets: usize,
    pub maps: Vec<DmaEvent>,
    pub unmaps: Vec<DmaEvent>,
    pub irq_sets: Vec<IrqSetEvent>,
    pub writes: Vec<(u32, u64, Vec<u8>)>,
    pub dma_result: Option<Result<Vec<u8>, Errno>>,
    pub features: Vec<(u16, FeatureOp)>,
    pub mig_in: Vec<u8>,
    pub bg_done: Option<Vec<Result<Vec<u8>, Errno>>>,
    /// Result and duration of one DMA read made on a background thread (register 0xe8).
    pub bg_read: Option<(Result<Vec<u8>, Errno>, Duration)>,
}

/// BAR0: 16 KiB memfd, sparse area [0x1000, 0x2000); BAR1: 256-byte callback registers
/// (writes at 0x10/0x18/0x20 drive DMA, 0x30 fires an MSI-X vector, 0xe8 makes one DMA read
/// of 0x18 bytes at 0x10 on a background "poll thread", 0xf0 fifty of them); config: 4 KiB.
pub struct SampleDevice {
    pub bar0_fd: Arc<OwnedFd>,
    pub bar1: [u8; BAR1_SIZE as usize],
    pub cfg: Vec<u8>,
    pub ctx: Option<DeviceContext>,
    pub log: Arc<Mutex<Log>>,
    pub dma_addr: u64,
    pub dma_len: u64,
}

impl SampleDevice {
    pub fn new() -> SampleDevice {
        let fd = memfd_create("bar0", MemfdFlags::CLOEXEC).unwrap();
        ftruncate(&fd, BAR0_SIZE).unwrap();
        let mut cfg = vec![0u8; CFG_SIZE as usize];
        cfg[0..2].copy_from_slice(&0x4e58u16.to_le_bytes());
        cfg[2..4].copy_from_slice(&0x0001u16.to_le_bytes());
        SampleDevice {
            bar0_fd: Arc::new(fd),
            bar1: [0; BAR1_SIZE as usize],
            cfg,
            ctx: None,
            log: Arc::default(),
            dma_addr: 0,
            dma_len: 0,
        }
    }
}

impl Device for SampleDevice {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo::default()
    }
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        match index {
            0 => Some(RegionInfo {
                size: BAR0_SIZE,
                flags: REGION_FLAG_READ | REGION_FLAG_WRITE,
                mmap: Some(RegionMmap {
                    fd: self.bar0_fd.clone(),
                    file_offset: 0,
                    areas: vec![SparseArea {
                        offset: 0x1000,
                        size: 0x1000,
                    }],
                }),
            }),
            1 => Some(RegionInfo {
                size: BAR1_SIZE,
                flags: REGION_FLAG_READ | REGION_FLAG_WRITE,
                mmap: None,
            }),
            7 => Some(RegionInfo {
                size: CFG_SIZE,
                flags: REGION_FLAG_READ | REGION_FLAG_WRITE,
                mmap: None,
            }),
            _ => None,
        }
    }
    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        let flags = IRQ_INFO_EVENTFD;
        match index {
            IRQ_INDEX_INTX => Some(IrqInfo {
                count: 1,
                flags: flags | IRQ_INFO_MASKABLE,
            }),
            IRQ_INDEX_MSIX => Some(IrqInfo {
                count: MSIX_COUNT,
                flags: flags | IRQ_INFO_NORESIZE,
            }),
            IRQ_INDEX_ERR | IRQ_INDEX_REQ => Some(IrqInfo { count: 1, flags }),
            _ => None,
        }
    }
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        let off = offset as usize;
        match index {
            0 => {
                let n = rustix::io::pread(self.bar0_fd.as_fd(), &mut *data, offset)?;
                if n != data.len() {
                    return Err(Errno::IO);
                }
            }
            1 => data.copy_from_slice(&self.bar1[off..off + data.len()]),
            7 => data.copy_from_slice(&self.cfg[off..off + data.len()]),
            _ => return Err(Errno::INVAL),
        }
        Ok(())
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let off = offset as usize;
        self.log
            .lock()
            .unwrap()
            .writes
            .push((index, offset, data.to_vec()));
        match index {
            0 => {
                rustix::io::pwrite(self.bar0_fd.as_fd(), data, offset)?;
            }
            1 => {
                self.bar1[off..off + data.len()].copy_from_slice(data);
                let reg =
                    |b: &[u8; 256], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
                match off {
                    0x20 => {
                        let (addr, len, cmd) = (
                            reg(&self.bar1, 0x10),
                            reg(&self.bar1, 0x18),
                            reg(&self.bar1, 0x20),
                        );
                        let dma = &self.ctx.as_ref().ok_or(Errno::NOTCONN)?.dma;
                        let res = if cmd == 1 {
                            let mut buf = vec![0u8; len as usize];
                            dma.read(addr, &mut buf).map(|_| buf)
                        } else {
                            let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                            dma.write(addr, &pattern).map(|_| pattern)
                        };
                        self.log.lock().unwrap().dma_result = Some(res);
                    }
                    0x30 => {
                        let v = self.bar1[0x30] as u32;
                        self.ctx
                            .as_ref()
                            .ok_or(Errno::NOTCONN)?
                            .irqs
                            .trigger(IRQ_INDEX_MSIX, v)?;
                    }
                    0x38 => return Err(Errno::IO),
                    0xe8 => {
                        let dma = self.ctx.as_ref().ok_or(Errno::NOTCONN)?.dma.clone();
                        let (addr, len) = (reg(&self.bar1, 0x10), reg(&self.bar1, 0x18));
                        let log = self.log.clone();
                        log.lock().unwrap().bg_read = None;
                        std::thread::spawn(move || {
                            let t = std::time::Instant::now();
                            let mut b = vec![0u8; len as usize];
                            let res = dma.read(addr, &mut b).map(|_| b);
                            log.lock().unwrap().bg_read = Some((res, t.elapsed()));
                        });
                    }
                    0xf0 => {
                        // a "poll thread": DMA reads from another thread while the session runs
                        let dma = self.ctx.as_ref().ok_or(Errno::NOTCONN)?.dma.clone();
                        let addr = reg(&self.bar1, 0x10);
                        let log = self.log.clone();
                        std::thread::spawn(move || {
                            let res: Vec<_> = (0..50u64)
                                .map(|i| {
                                    let mut b = vec![0u8; 64];
                                    dma.read(addr + i * 64, &mut b).map(|_| b)
                                })
                                .collect();
                            log.lock().unwrap().bg_done = Some(res);
                        });
                    }
                    _ => {}
                }
            }
            7 => self.cfg[off..off + data.len()].copy_from_slice(data),
            _ => return Err(Errno::INVAL),
        }
        Ok(())
    }
    fn attach(&mut self, ctx: DeviceContext) {
        self.log.lock().unwrap().attaches += 1;
        self.ctx = Some(ctx);
    }
    fn detach(&mut self) {
        self.log.lock().unwrap().detaches += 1;
        self.ctx = None;
    }
    fn dma_map(&mut self, ev: &DmaEvent, _mem: &Arc<DmaMemory>) -> Result<(), Errno> {
        self.log.lock().unwrap().maps.push(*ev);
        Ok(())
    }
    fn dma_unmap(&mut self, ev: &DmaEvent, _mem: &Arc<DmaMemory>) -> Result<(), Errno> {
        self.log.lock().unwrap().unmaps.push(*ev);
        Ok(())
    }
    fn set_irqs(&mut self, req: &IrqSetEvent) -> Result<(), Errno> {
        self.log.lock().unwrap().irq_sets.push(req.clone());
        Ok(())
    }
    fn reset(&mut self, _kind: ResetKind) -> Result<(), Errno> {
        self.log.lock().unwrap().resets += 1;
        self.bar1 = [0; BAR1_SIZE as usize];
        Ok(())
    }
    fn device_feature(
        &mut self,
        req: &FeatureRequest<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<(), Errno> {
        self.log
            .lock()
            .unwrap()
            .features
            .push((req.feature, req.op));
        match (req.feature, req.op) {
            (1, FeatureOp::Get) => {
                reply.extend_from_slice(&1u64.to_ne_bytes());
                Ok(())
            }
            (1, FeatureOp::Probe { set: false, .. }) => Ok(()),
            _ => Err(Errno::INVAL),
        }
    }
    fn mig_data_read(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
        let n = buf.len().min(5);
        buf[..n].copy_from_slice(&b"state"[..n]);
        Ok(n)
    }
    fn mig_data_write(&mut self, data: &[u8]) -> Result<(), Errno> {
        self.log.lock().unwrap().mig_in.extend_from_slice(data);
        Ok(())
    }
}

/// A running server on a temporary socket.
pub struct Running {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub stop: ShutdownHandle,
    pub join: Option<JoinHandle<SampleDevice>>,
    pub log: Arc<Mutex<Log>>,
}

impl Running {
    pub fn start() -> Running {
        Self::start_with(ServerOptions::default())
    }
    pub fn start_with(opts: ServerOptions) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cntrl");
        let server = Server::bind(&path, opts).unwrap();
        let stop = server.shutdown_handle();
        let mut dev = SampleDevice::new();
        let log = dev.log.clone();
        let join = std::thread::spawn(move || {
            server.serve(&mut dev).unwrap();
            dev
        });
        Running {
            dir,
            path,
            stop,
            join: Some(join),
            log,
        }
    }
    pub fn stop(mut self) -> SampleDevice {
        self.stop.shutdown();
        self.join.take().unwrap().join().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Log {
    /// Waits (up to `limit`) for the background DMA read of register 0xe8 to finish.
    pub fn wait_bg_read(
        log: &Mutex<Log>,
        limit: Duration,
    ) -> Option<(Result<Vec<u8>, Errno>, Duration)> {
        let t = std::time::Instant::now();
        loop {
            if let Some(r) = log.lock().unwrap().bg_read.take() {
                return Some(r);
            }
            if t.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A raw-socket peer speaking hand-built messages.
pub struct Raw {
    pub s: UnixStream,
    pub id: u16,
}

pub struct Reply {
    pub hdr: Header,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Raw {
    pub fn connect(path: &Path) -> Raw {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw { s, id: 0 }
    }
    /// Connects and negotiates with JSON.
    pub fn negotiated(path: &Path) -> Raw {
        let mut r = Raw::connect(path);
        let rep = r.version(b"{\"capabilities\":{\"max_msg_fds\":16}}\0");
        assert!(!rep.hdr.is_error(), "negotiation failed");
        r
    }
    pub fn version(&mut self, json: &[u8]) -> Reply {
        let mut p = VersionHdr { major: 0, minor: 2 }.bytes().to_vec();
        p.extend_from_slice(json);
        self.call(Command::Version as u16, &p, &[])
    }
    /// Sends a bare header; the payload (if any) is up to the caller.
    pub fn send_header(&mut self, msg_id: u16, command: u16, msg_size: u32) {
        let h = Header {
            msg_id,
            command,
            msg_size,
            flags: 0,
            error: 0,
        };
        self.send_bytes(h.bytes());
    }
    /// Sends raw bytes as they are.
    pub fn send_bytes(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }
    pub fn send(
        &mut self,
        cmd: u16,
        payload: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
        flags: u32,
    ) -> u16 {
        self.id = self.id.wrapping_add(1);
        let hdr = Header {
            msg_id: self.id,
            command: cmd,
            msg_size: (16 + payload.len()) as u32,
            flags,
            error: 0,
        };
        Socket::new(self.s.try_clone().unwrap())
            .send(&hdr, &[payload], fds)
            .unwrap();
        self.id
    }
    pub fn call(&mut self, cmd: u16, payload: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> Reply {
        let id = self.send(cmd, payload, fds, 0);
        let r = self.recv().expect("no reply");
        assert_eq!(r.hdr.msg_id, id);
        assert_eq!(r.hdr.command, cmd);
        assert!(r.hdr.is_reply());
        r
    }
    pub fn recv(&mut self) -> Option<Reply> {
        let sock = Socket::new(self.s.try_clone().unwrap());
        let mut fds = Vec::new();
        let hdr = sock.recv_header(&mut fds).ok()??;
        let mut body = vec![0u8; hdr.payload_len()?];
        sock.recv_exact(&mut body).ok()?;
        Some(Reply { hdr, body, fds })
    }
    /// Expects an error reply with `errno` (header only).
    pub fn expect_err(
        &mut self,
        cmd: u16,
        payload: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
        errno: Errno,
    ) {
        let r = self.call(cmd, payload, fds);
        assert!(
            r.hdr.is_error(),
            "cmd {cmd}: expected errno {errno:?}, got success"
        );
        assert_eq!(r.hdr.error, errno.raw_os_error() as u32, "cmd {cmd}");
        assert_eq!(r.hdr.msg_size, 16);
        assert!(r.body.is_empty());
    }
    /// True when the server closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
    /// A good request works on this connection.
    pub fn assert_usable(&mut self) {
        let r = self.call(Command::DeviceGetInfo as u16, info_req(16).bytes(), &[]);
        assert!(!r.hdr.is_error());
        let i = DeviceInfoMsg::decode(&r.body).unwrap();
        assert_eq!((i.num_regions, i.num_irqs), (9, 5));
    }
}

/// A DEVICE_GET_INFO request payload with `argsz`.
pub fn info_req(argsz: u32) -> DeviceInfoMsg {
    DeviceInfoMsg {
        argsz,
        ..Default::default()
    }
}

pub fn eventfd() -> OwnedFd {
    rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
    )
    .unwrap()
}

pub fn eventfd_count(fd: &OwnedFd) -> u64 {
    let mut b = [0u8; 8];
    match rustix::io::read(fd, &mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}

pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

// Helpers for the server-to-client DMA tests (BAR1 registers of the sample device).

/// Connects and negotiates the client's `max_data_xfer_size`.
pub fn negotiated_xfer(path: &std::path::Path, xfer: u32) -> Raw {
    let mut r = Raw::connect(path);
    let j = format!("{{\"capabilities\":{{\"max_data_xfer_size\":{xfer}}}}}\0");
    let rep = r.version(j.as_bytes());
    assert!(!rep.hdr.is_error());
    r
}

pub fn write_reg(r: &mut Raw, off: u64, v: u64) -> u16 {
    let mut p = RegionAccess {
        offset: off,
        region: 1,
        count: 8,
    }
    .bytes()
    .to_vec();
    p.extend_from_slice(&v.to_le_bytes());
    r.send(Command::RegionWrite as u16, &p, &[], 0)
}

pub fn sync_reg(r: &mut Raw, off: u64, v: u64) {
    let id = write_reg(r, off, v);
    let rep = r.recv().unwrap();
    assert_eq!(rep.hdr.msg_id, id);
    assert!(!rep.hdr.is_error());
}

pub fn map_fdless(r: &mut Raw, addr: u64, size: u64) {
    let m = DmaMap {
        argsz: 32,
        flags: DMA_FLAG_READ | DMA_FLAG_WRITE,
        offset: 0,
        addr,
        size,
    };
    assert!(!r
        .call(Command::DmaMap as u16, m.bytes(), &[])
        .hdr
        .is_error());
}

/// Writes whole messages on the raw stream.
pub trait WriteMsg {
    fn write_all_hdr(&self, h: &Header);
    fn write_all_msg(&self, h: &Header, p: &[u8]);
}

impl WriteMsg for std::os::unix::net::UnixStream {
    fn write_all_hdr(&self, h: &Header) {
        self.write_all_msg(h, &[]);
    }
    fn write_all_msg(&self, h: &Header, p: &[u8]) {
        Socket::new(self.try_clone().unwrap())
            .send(h, &[p], &[])
            .unwrap();
    }
}
