//! One client connection: framed reads shared between the session and DMA requesters,
//! serialized sends, and the server-to-client DMA channel (main or twin socket).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};
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

/// Most timed-out request ids remembered per connection (their late replies are dropped).
const MAX_ABANDONED: usize = 16;

/// Result of [`Conn::try_read`].
#[derive(Debug)]
pub(crate) enum TryRead {
    /// Nothing was ready.
    Idle,
    /// A DMA requester owns the read side; it notifies the wake fd when it lets go.
    Busy,
    /// A message (or EOF, or a rejected header).
    Got(ReadOutcome),
}

/// The twin socket: server-to-client requests only, one requester at a time.
#[derive(Debug)]
struct Twin {
    lock: Mutex<()>,
    sock: Socket,
}

/// Shared state of one client connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) sock: Socket,
    send_lock: Mutex<()>,
    reader: Mutex<()>,
    pending: Mutex<VecDeque<Pending>>,
    wake: OwnedFd,
    twin: OnceLock<Twin>,
    next_id: AtomicU16,
    client_xfer: AtomicUsize,
    pub(crate) max_msg: usize,
    broken: AtomicBool,
    /// How long a server-to-client request waits for its reply (`None`: until the
    /// connection ends).
    dma_timeout: Option<Duration>,
    /// `(msg_id, command)` of requests that timed out and whose reply has not come yet.
    abandoned: Mutex<VecDeque<(u16, u16)>>,
}

/// Server-to-client request ids are `0x8000..=0xffff` (easy to spot in traces). A reply
/// is matched by id and command; the client's own ids may overlap, the header type tells
/// requests from replies.
const ID_BASE: u16 = 0x8000;

impl Conn {
    pub(crate) fn new(sock: Socket, max_msg: usize, dma_timeout: Duration) -> io::Result<Conn> {
        let wake = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)
            .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?;
        Ok(Conn {
            sock,
            send_lock: Mutex::new(()),
            reader: Mutex::new(()),
            pending: Mutex::new(VecDeque::new()),
            wake,
            twin: OnceLock::new(),
            next_id: AtomicU16::new(0),
            client_xfer: AtomicUsize::new(vfu_proto::DEFAULT_MAX_DATA_XFER as usize),
            max_msg,
            broken: AtomicBool::new(false),
            dma_timeout: Some(dma_timeout).filter(|d| !d.is_zero()),
            abandoned: Mutex::new(VecDeque::new()),
        })
    }

    /// Sets the client's negotiated transfer size and twin socket.
    pub(crate) fn negotiated(&self, client_xfer: usize, twin: Option<Socket>) {
        self.client_xfer
            .store(client_xfer.max(1), Ordering::Release);
        if let Some(sock) = twin {
            let _ = self.twin.set(Twin {
                lock: Mutex::new(()),
                sock,
            });
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

    /// Shuts the main and the twin socket down: a requester waiting for a reply on either
    /// returns at once (ENOTCONN).
    pub(crate) fn close(&self) {
        self.sock.shutdown();
        if let Some(t) = self.twin.get() {
            t.sock.shutdown();
        }
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
    /// Never waits for the read side: when a DMA requester holds it, returns
    /// [`TryRead::Busy`] (the requester notifies the wake fd when done).
    pub(crate) fn try_read(
        &self,
        fds: &mut Vec<OwnedFd>,
        body: &mut Vec<u8>,
    ) -> io::Result<TryRead> {
        let _r = match self.reader.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(TryRead::Busy),
        };
        match readable(&self.sock, Some(Duration::ZERO)) {
            Ok(true) => read_message(&self.sock, self.max_msg, fds, body).map(TryRead::Got),
            Ok(false) | Err(Errno::INTR) => Ok(TryRead::Idle),
            Err(e) => Err(io::Error::from_raw_os_error(e.raw_os_error())),
        }
    }

    /// Whether `h` is the late reply to a request that timed out; if so it is forgotten
    /// (the caller drops the message without answering it).
    pub(crate) fn take_late_reply(&self, h: &Header) -> bool {
        if !h.is_reply() {
            return false;
        }
        let mut ab = lock(&self.abandoned);
        match ab
            .iter()
            .position(|&(id, cmd)| id == h.msg_id && cmd == h.command)
        {
            Some(i) => {
                ab.remove(i);
                true
            }
            None => false,
        }
    }

    fn has_abandoned(&self) -> bool {
        !lock(&self.abandoned).is_empty()
    }

    fn abandon(&self, id: u16, cmd: u16) {
        let mut ab = lock(&self.abandoned);
        if ab.len() >= MAX_ABANDONED {
            ab.pop_front();
        }
        ab.push_back((id, cmd));
    }

    /// A fresh request id, never one whose late reply is still expected.
    fn alloc_id(&self) -> u16 {
        let ab = lock(&self.abandoned);
        loop {
            // At most MAX_ABANDONED of the 32768 ids are skipped: this ends.
            let id = ID_BASE | (self.next_id.fetch_add(1, Ordering::Relaxed) & !ID_BASE);
            if !ab.iter().any(|&(a, _)| a == id) {
                return id;
            }
        }
    }

    /// Sends a server-to-client request and returns the reply header and payload.
    /// No reply within the DMA timeout: `ETIMEDOUT`, the connection stays up and the late
    /// reply is dropped when it comes; until it comes, further requests fail at once with
    /// `ETIMEDOUT` (so a client that cannot answer costs one timeout, not one per request).
    fn request(&self, cmd: Command, parts: &[&[u8]], reply: &mut Vec<u8>) -> Result<Header, Errno> {
        if self.is_broken() {
            return Err(Errno::NOTCONN);
        }
        if let Some(t) = self.twin.get() {
            let _t = lock(&t.lock);
            return self.exchange(&t.sock, true, cmd, parts, reply);
        }
        let r = {
            let _r = lock(&self.reader);
            self.exchange(&self.sock, false, cmd, parts, reply)
        };
        // The endpoint thread may be waiting for the read side (TryRead::Busy).
        self.notify();
        r
    }

    /// The stream of a DMA requester can no longer be trusted: the twin socket is shut
    /// down (later requests fail with ENOTCONN), the main socket ends the session.
    fn fail(&self, sock: &Socket, twin: bool) {
        if twin {
            sock.shutdown();
        } else {
            self.mark_broken();
        }
    }

    /// One request/reply exchange on `sock` (the main socket with the read side held, or
    /// the twin socket with its lock held).
    fn exchange(
        &self,
        sock: &Socket,
        twin: bool,
        cmd: Command,
        parts: &[&[u8]],
        reply: &mut Vec<u8>,
    ) -> Result<Header, Errno> {
        if self.has_abandoned() {
            // Consume late replies that already arrived, without waiting.
            self.await_reply(sock, twin, None, Some(Instant::now()), reply)?;
            if self.has_abandoned() {
                tracing::debug!("vfio-user: DMA request refused, an earlier one is unanswered");
                return Err(Errno::TIMEDOUT);
            }
        }
        let id = self.alloc_id();
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let hdr = Header::command(id, cmd, len);
        let sent = if twin {
            sock.send(&hdr, parts, &[])
        } else {
            self.send(&hdr, parts, &[])
        };
        if let Err(e) = sent {
            // A partly sent request would desynchronize the stream.
            tracing::debug!(error = %e, "vfio-user: DMA request send failed");
            self.fail(sock, twin);
            return Err(io_errno(&e));
        }
        let deadline = self.dma_timeout.and_then(|d| Instant::now().checked_add(d));
        match self.await_reply(sock, twin, Some((id, cmd as u16)), deadline, reply)? {
            Some(h) => Ok(h),
            None => {
                tracing::debug!(id, cmd = cmd as u16, "vfio-user: DMA request timed out");
                self.abandon(id, cmd as u16);
                Err(Errno::TIMEDOUT)
            }
        }
    }

    /// Reads `sock` until the reply `want` arrives (`Some`) or `deadline` passes (`None`;
    /// with `want == None`, until nothing more is ready or no late reply is expected).
    /// Late replies are dropped; on the main socket other messages are queued for the
    /// session, on the twin socket they are dropped.
    fn await_reply(
        &self,
        sock: &Socket,
        twin: bool,
        want: Option<(u16, u16)>,
        deadline: Option<Instant>,
        reply: &mut Vec<u8>,
    ) -> Result<Option<Header>, Errno> {
        let mut fds = Vec::new();
        loop {
            if want.is_none() && !self.has_abandoned() {
                return Ok(None);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match readable(sock, left) {
                Ok(true) => {}
                Ok(false) | Err(Errno::INTR) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(None);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
            let mut body = Vec::new();
            let outcome = match read_message(sock, self.max_msg, &mut fds, &mut body) {
                Ok(ReadOutcome::Eof) | Err(_) => {
                    self.fail(sock, twin);
                    return Err(Errno::NOTCONN);
                }
                Ok(o) => o,
            };
            let wanted = |h: &Header| {
                want.is_some_and(|(id, c)| h.is_reply() && h.msg_id == id && h.command == c)
            };
            match &outcome {
                ReadOutcome::Msg(h) if wanted(h) => {
                    *reply = body;
                    return Ok(Some(*h));
                }
                ReadOutcome::Bad { hdr: h, fatal } if wanted(h) => {
                    // Our reply, but larger than any reply can be (drained unless fatal).
                    tracing::debug!(size = h.msg_size, "vfio-user: oversized DMA reply");
                    if *fatal {
                        self.fail(sock, twin);
                        return Err(Errno::NOTCONN);
                    }
                    return Err(Errno::IO);
                }
                ReadOutcome::Msg(h)
                | ReadOutcome::Bad {
                    hdr: h,
                    fatal: false,
                } if self.take_late_reply(h) => {
                    tracing::debug!(id = h.msg_id, "vfio-user: late DMA reply dropped");
                    continue;
                }
                _ => {}
            }
            let fatal = matches!(outcome, ReadOutcome::Bad { fatal: true, .. });
            if twin {
                if fatal {
                    self.fail(sock, twin);
                    return Err(Errno::NOTCONN);
                }
                tracing::debug!("vfio-user: unexpected message on twin socket dropped");
                continue;
            }
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
    }
}

/// Waits up to `timeout` (`None`: forever) for `sock` to be readable (or hung up).
fn readable(sock: &Socket, timeout: Option<Duration>) -> Result<bool, Errno> {
    // Durations beyond `Timespec` wait "forever" in practice.
    let ts = timeout.map(|d| {
        Timespec::try_from(d).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        })
    });
    let mut pfd = [PollFd::new(sock, PollFlags::IN)];
    poll(&mut pfd, ts.as_ref())?;
    Ok(pfd.first().is_some_and(|p| !p.revents().is_empty()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn conn() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (
            Conn::new(Socket::new(a), 8192, Duration::from_millis(50)).unwrap(),
            b,
        )
    }

    #[test]
    fn ids_stay_in_the_server_range_and_skip_abandoned_ones() {
        let (c, _peer) = conn();
        c.next_id.store(0x7ffe, Ordering::Relaxed);
        assert_eq!(c.alloc_id(), 0xfffe);
        assert_eq!(c.alloc_id(), 0xffff);
        // wraps inside 0x8000..=0xffff
        assert_eq!(c.alloc_id(), 0x8000);
        c.abandon(0x8001, Command::DmaRead as u16);
        assert_eq!(
            c.alloc_id(),
            0x8002,
            "an id whose late reply is due is skipped"
        );
    }

    #[test]
    fn only_the_abandoned_reply_is_taken_once() {
        let (c, _peer) = conn();
        let req = Header::command(0x8005, Command::DmaWrite, 0);
        c.abandon(req.msg_id, req.command);
        // a request with that id, or a reply for another command or id, is not it
        assert!(!c.take_late_reply(&req));
        let other_cmd = Header::command(0x8005, Command::DmaRead, 0);
        assert!(!c.take_late_reply(&Header::reply(&other_cmd, 0)));
        let other_id = Header::command(0x8006, Command::DmaWrite, 0);
        assert!(!c.take_late_reply(&Header::reply(&other_id, 0)));
        assert!(c.take_late_reply(&Header::error_reply(&req, 5)));
        assert!(!c.take_late_reply(&Header::reply(&req, 0)), "taken once");
        assert!(!c.has_abandoned());
    }

    #[test]
    fn abandoned_record_is_bounded() {
        let (c, _peer) = conn();
        for i in 0..(MAX_ABANDONED as u16 + 4) {
            c.abandon(0x8000 + i, Command::DmaRead as u16);
        }
        assert_eq!(lock(&c.abandoned).len(), MAX_ABANDONED);
        // the oldest were forgotten
        let oldest = Header::command(0x8000, Command::DmaRead, 0);
        assert!(!c.take_late_reply(&Header::reply(&oldest, 0)));
    }

    #[test]
    fn timed_out_request_fails_fast_until_its_late_reply_arrives() {
        let (c, peer) = conn();
        let peer = Socket::new(peer);
        let mut reply = Vec::new();
        let t = Instant::now();
        assert_eq!(
            c.request(Command::DmaWrite, &[&[0u8; 16]], &mut reply),
            Err(Errno::TIMEDOUT)
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
        let mut fds = Vec::new();
        let first = peer.recv_header(&mut fds).unwrap().unwrap();
        peer.discard(first.payload_len().unwrap()).unwrap();
        // refused without sending while the reply is due
        assert_eq!(
            c.request(Command::DmaWrite, &[&[0u8; 16]], &mut reply),
            Err(Errno::TIMEDOUT)
        );
        peer.stream().set_nonblocking(true).unwrap();
        assert!(peer.recv_header(&mut fds).is_err(), "nothing was sent");
        peer.stream().set_nonblocking(false).unwrap();
        // the late reply is consumed by the next request, which then goes out
        peer.send(&Header::reply(&first, 0), &[], &[]).unwrap();
        let server = std::thread::spawn(move || {
            let mut reply = Vec::new();
            c.request(Command::DmaWrite, &[&[0u8; 16]], &mut reply)
                .map(|h| h.msg_id)
        });
        let second = peer.recv_header(&mut fds).unwrap().unwrap();
        assert_ne!(second.msg_id, first.msg_id);
        peer.discard(second.payload_len().unwrap()).unwrap();
        peer.send(&Header::reply(&second, 0), &[], &[]).unwrap();
        assert_eq!(server.join().unwrap(), Ok(second.msg_id));
    }
}
