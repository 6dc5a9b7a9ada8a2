//! One client connection: framed reads shared between the session and DMA requesters,
//! serialized sends, and the server-to-client DMA channel (main or twin socket).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::io::Errno;
use vfu_proto::{Command, DmaRw, Header, Socket, Wire, HEADER_SIZE};

use crate::dma::DmaChannel;

/// Bodies larger than this (beyond the negotiated limit) are not drained: the connection closes.
const DRAIN_LIMIT: usize = 16 << 20;
/// Most commands queued while a DMA requester owns the read side.
const MAX_PENDING: usize = 4096;

/// How a framed read ended.
#[derive(Debug)]
pub(crate) enum ReadOutcome {
    /// Peer closed the connection at a message boundary.
    Eof,
    /// A whole message; its payload is in the caller's buffer.
    Msg(Header),
    /// A message rejected at the header (body drained unless `fatal`).
    Bad {
        /// The header as received.
        hdr: Header,
        /// Whether the stream can no longer be trusted.
        fatal: bool,
    },
}

/// A message read by a DMA requester on behalf of the session.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) outcome: ReadOutcome,
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) body: Vec<u8>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_errno(e: &io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::IO, Errno::from_raw_os_error)
}

/// Reads one framed message from `sock`.
pub(crate) fn read_message(
    sock: &Socket,
    max_msg: usize,
    fds: &mut Vec<OwnedFd>,
    body: &mut Vec<u8>,
) -> io::Result<ReadOutcome> {
    fds.clear();
    let hdr = match sock.recv_header(fds) {
        Ok(None) => return Ok(ReadOutcome::Eof),
        Ok(Some(h)) => h,
        Err(e) if vfu_proto::framing::is_fd_overflow(&e) => {
            // The header itself was read; treat like an oversized message we cannot trust.
            return Ok(ReadOutcome::Bad {
                hdr: Header::default(),
                fatal: true,
            });
        }
        Err(e) => return Err(e),
    };
    let Some(payload) = hdr.payload_len() else {
        return Ok(ReadOutcome::Bad { hdr, fatal: true });
    };
    if payload.saturating_add(HEADER_SIZE) > max_msg {
        if payload <= DRAIN_LIMIT {
            sock.discard(payload)?;
            return Ok(ReadOutcome::Bad { hdr, fatal: false });
        }
        return Ok(ReadOutcome::Bad { hdr, fatal: true });
    }
    body.clear();
    body.resize(payload, 0);
    sock.recv_exact(body)?;
    Ok(ReadOutcome::Msg(hdr))
}

/// Shared state of one client connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) sock: Socket,
    send_lock: Mutex<()>,
    reader: Mutex<()>,
    pending: Mutex<VecDeque<Pending>>,
    wake: OwnedFd,
    twin: OnceLock<Mutex<Socket>>,
    next_id: AtomicU16,
    client_xfer: AtomicUsize,
    pub(crate) max_msg: usize,
    broken: AtomicBool,
}

impl Conn {
    pub(crate) fn new(sock: Socket, max_msg: usize) -> io::Result<Conn> {
        let wake = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)
            .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?;
        Ok(Conn {
            sock,
            send_lock: Mutex::new(()),
            reader: Mutex::new(()),
            pending: Mutex::new(VecDeque::new()),
            wake,
            twin: OnceLock::new(),
            next_id: AtomicU16::new(0x8000),
            client_xfer: AtomicUsize::new(vfu_proto::DEFAULT_MAX_DATA_XFER as usize),
            max_msg,
            broken: AtomicBool::new(false),
        })
    }

    /// Sets the client's negotiated transfer size and twin socket.
    pub(crate) fn negotiated(&self, client_xfer: usize, twin: Option<Socket>) {
        self.client_xfer
            .store(client_xfer.max(1), Ordering::Release);
        if let Some(t) = twin {
            let _ = self.twin.set(Mutex::new(t));
        }
    }

    fn xfer(&self) -> usize {
        self.client_xfer.load(Ordering::Acquire).max(1)
    }

    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    fn mark_broken(&self) {
        self.broken.store(true, Ordering::Release);
        self.sock.shutdown();
        self.notify();
    }

    fn notify(&self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    pub(crate) fn clear_wake(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut b);
    }

    pub(crate) fn pop_pending(&self) -> Option<Pending> {
        lock(&self.pending).pop_front()
    }

    /// Sends a message on the main socket.
    pub(crate) fn send(
        &self,
        hdr: &Header,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        let _g = lock(&self.send_lock);
        self.sock.send(hdr, parts, fds)
    }

    /// Reads one message if one is ready, holding the read side only while reading.
    /// Returns `Ok(None)` when nothing was ready (another reader took it).
    pub(crate) fn try_read(
        &self,
        fds: &mut Vec<OwnedFd>,
        body: &mut Vec<u8>,
    ) -> io::Result<Option<ReadOutcome>> {
        let _r = lock(&self.reader);
        let mut pfd = [PollFd::new(&self.sock, PollFlags::IN)];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match poll(&mut pfd, Some(&zero)) {
            Ok(_) => {}
            Err(Errno::INTR) => return Ok(None),
            Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
        }
        if pfd.first().is_none_or(|p| p.revents().is_empty()) {
            return Ok(None);
        }
        read_message(&self.sock, self.max_msg, fds, body).map(Some)
    }

    fn alloc_id(&self) -> u16 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a server-to-client request and returns the reply header and payload.
    fn request(&self, cmd: Command, parts: &[&[u8]], reply: &mut Vec<u8>) -> Result<Header, Errno> {
        if self.is_broken() {
            return Err(Errno::NOTCONN);
        }
        let id = self.alloc_id();
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let hdr = Header::command(id, cmd, len);
        let mut fds = Vec::new();
        if let Some(twin) = self.twin.get() {
            let t = lock(twin);
            t.send(&hdr, parts, &[]).map_err(|e| io_errno(&e))?;
            loop {
                match read_message(&t, self.max_msg, &mut fds, reply) {
                    Ok(ReadOutcome::Msg(h))
                        if h.is_reply() && h.msg_id == id && h.command == cmd as u16 =>
                    {
                        return Ok(h)
                    }
                    Ok(ReadOutcome::Msg(_)) | Ok(ReadOutcome::Bad { fatal: false, .. }) => {
                        tracing::debug!("vfio-user: unexpected message on twin socket dropped");
                    }
                    Ok(_) | Err(_) => {
                        t.shutdown();
                        return Err(Errno::NOTCONN);
                    }
                }
            }
        }
        let _r = lock(&self.reader);
        self.send(&hdr, parts, &[]).map_err(|e| io_errno(&e))?;
        loop {
            let mut body = Vec::new();
            match read_message(&self.sock, self.max_msg, &mut fds, &mut body) {
                Ok(ReadOutcome::Msg(h)) if h.is_reply() => {
                    if h.msg_id == id && h.command == cmd as u16 {
                        *reply = body;
                        return Ok(h);
                    }
                    tracing::debug!(id = h.msg_id, "vfio-user: stale reply dropped");
                }
                Ok(outcome @ (ReadOutcome::Msg(_) | ReadOutcome::Bad { .. })) => {
                    let fatal = matches!(outcome, ReadOutcome::Bad { fatal: true, .. });
                    let mut q = lock(&self.pending);
                    if q.len() >= MAX_PENDING {
                        drop(q);
                        self.mark_broken();
                        return Err(Errno::NOTCONN);
                    }
                    q.push_back(Pending {
                        outcome,
                        fds: std::mem::take(&mut fds),
                        body,
                    });
                    drop(q);
                    self.notify();
                    if fatal {
                        return Err(Errno::NOTCONN);
                    }
                }
                Ok(ReadOutcome::Eof) | Err(_) => {
                    self.mark_broken();
                    return Err(Errno::NOTCONN);
                }
            }
        }
    }
}

fn reply_errno(h: &Header) -> Errno {
    if (1..=4096).contains(&h.error) {
        Errno::from_raw_os_error(h.error as i32)
    } else {
        Errno::IO
    }
}

/// DMA channel over a connection (main or twin socket).
#[derive(Debug)]
pub(crate) struct ConnDma(pub(crate) std::sync::Arc<Conn>);

impl DmaChannel for ConnDma {
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let chunk = self.0.xfer();
        let mut reply = Vec::new();
        let mut addr = iova;
        for part in buf.chunks_mut(chunk) {
            let count = part.len() as u64;
            let req = DmaRw { addr, count };
            let h = self
                .0
                .request(Command::DmaRead, &[req.bytes()], &mut reply)?;
            if h.is_error() {
                return Err(reply_errno(&h));
            }
            // Spec layout: {addr u64, count u64, data}; QEMU: {addr u64, count u32, data}.
            let data_off = if reply.len() == part.len().saturating_add(16) {
                let r = DmaRw::decode(&reply).map_err(|_| Errno::IO)?;
                if r.addr != addr || r.count != count {
                    return Err(Errno::IO);
                }
                16
            } else if reply.len() == part.len().saturating_add(12) {
                12
            } else {
                return Err(Errno::IO);
            };
            part.copy_from_slice(reply.get(data_off..).ok_or(Errno::IO)?);
            addr = addr.checked_add(count).ok_or(Errno::FAULT)?;
        }
        Ok(())
    }

    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), Errno> {
        let chunk = self.0.xfer();
        let mut reply = Vec::new();
        let mut addr = iova;
        for part in data.chunks(chunk) {
            let count = part.len() as u64;
            let req = DmaRw { addr, count };
            let h = self
                .0
                .request(Command::DmaWrite, &[req.bytes(), part], &mut reply)?;
            if h.is_error() {
                return Err(reply_errno(&h));
            }
            // Accept header-only (QEMU), {addr, u32 count} or the spec's {addr, u64 count}.
            match reply.len() {
                0 | 12 => {}
                16 => {
                    let r = DmaRw::decode(&reply).map_err(|_| Errno::IO)?;
                    if r.addr != addr || r.count != count {
                        return Err(Errno::IO);
                    }
                }
                _ => return Err(Errno::IO),
            }
            addr = addr.checked_add(count).ok_or(Errno::FAULT)?;
        }
        Ok(())
    }
}
