//! Socket framing: whole messages sent in one `sendmsg` with SCM_RIGHTS on the header,
//! headers received with their fds, bodies read exactly or drained.
//!
//! Built on `rustix`'s safe ancillary-data API; no `unsafe` here.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

use crate::msg::{Header, Wire, HEADER_SIZE};

/// Most fds received with one message; more is a protocol error (the extra ones are
/// dropped by the kernel, and what did arrive is closed).
pub const MAX_RECV_FDS: usize = 64;
const CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_RECV_FDS));
const MAX_SEND_FDS: usize = 64;

/// A connected vfio-user stream socket.
#[derive(Debug)]
pub struct Socket {
    stream: UnixStream,
}

fn to_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Error kind returned when a peer sends more fds than fit in the control buffer.
pub fn is_fd_overflow(e: &io::Error) -> bool {
    e.raw_os_error() == Some(Errno::MSGSIZE.raw_os_error())
}

impl Socket {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> Socket {
        Socket { stream }
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Clones the socket (a second fd on the same connection).
    pub fn try_clone(&self) -> io::Result<Socket> {
        Ok(Socket {
            stream: self.stream.try_clone()?,
        })
    }

    /// Sends one message: `hdr`, then `parts` concatenated, with `fds` attached to the
    /// first byte. Handles short writes; the fds go out exactly once.
    pub fn send(&self, hdr: &Header, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.len() > MAX_SEND_FDS || parts.len() > 7 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let mut bufs: [&[u8]; 8] = [&[]; 8];
        bufs[0] = hdr.bytes();
        for (slot, p) in bufs.iter_mut().skip(1).zip(parts) {
            *slot = p;
        }
        let n_bufs = parts.len() + 1;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut sent = 0usize;
        let mut first = true;
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_SEND_FDS))];
        while sent < total {
            let mut skip = sent;
            let mut iov: [IoSlice<'_>; 8] = [IoSlice::new(&[]); 8];
            let mut n = 0usize;
            for b in bufs.iter().take(n_bufs) {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                if let (Some(slot), Some(rest)) = (iov.get_mut(n), b.get(skip..)) {
                    *slot = IoSlice::new(rest);
                    n += 1;
                }
                skip = 0;
            }
            let mut ctrl = SendAncillaryBuffer::new(&mut space);
            if first && !fds.is_empty() && !ctrl.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(io::Error::from(io::ErrorKind::InvalidInput));
            }
            let res = sendmsg(
                &self.stream,
                iov.get(..n).unwrap_or(&[]),
                &mut ctrl,
                SendFlags::NOSIGNAL,
            );
            match res {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(k) => {
                    sent = sent.saturating_add(k);
                    first = false;
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(to_io(e)),
            }
        }
        Ok(())
    }

    /// Receives a header and the fds attached to it. Returns `Ok(None)` on a clean EOF
    /// before the first byte. A partial header followed by EOF is `UnexpectedEof`.
    /// More fds than [`MAX_RECV_FDS`] (control truncation) gives an `EMSGSIZE` error after
    /// the header is fully read (so the caller can still drain the body); received fds are
    /// closed in that case.
    pub fn recv_header(&self, fds: &mut Vec<OwnedFd>) -> io::Result<Option<Header>> {
        let mut buf = [0u8; HEADER_SIZE];
        let mut got = 0usize;
        let mut overflow = false;
        let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
        while got < HEADER_SIZE {
            let rest = buf.get_mut(got..).unwrap_or(&mut []);
            let mut iov = [IoSliceMut::new(rest)];
            let mut ctrl = RecvAncillaryBuffer::new(&mut space);
            let r = recvmsg(&self.stream, &mut iov, &mut ctrl, RecvFlags::CMSG_CLOEXEC);
            match r {
                Ok(m) => {
                    for msg in ctrl.drain() {
                        if let RecvAncillaryMessage::ScmRights(it) = msg {
                            fds.extend(it);
                        }
                    }
                    if m.flags.contains(ReturnFlags::CTRUNC) {
                        overflow = true;
                    }
                    if m.bytes == 0 {
                        if got == 0 {
                            return Ok(None);
                        }
                        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                    }
                    got = got.saturating_add(m.bytes);
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(to_io(e)),
            }
        }
        let hdr = Header::decode(&buf).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        if overflow {
            fds.clear();
            return Err(to_io(Errno::MSGSIZE));
        }
        Ok(Some(hdr))
    }

    /// Reads exactly `buf.len()` bytes (fds arriving here are closed).
    pub fn recv_exact(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut got = 0usize;
        while got < buf.len() {
            let rest = buf.get_mut(got..).unwrap_or(&mut []);
            match rustix::io::read(&self.stream, rest) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(k) => got = got.saturating_add(k),
                Err(Errno::INTR) => {}
                Err(e) => return Err(to_io(e)),
            }
        }
        Ok(())
    }

    /// Reads and discards `n` bytes.
    pub fn discard(&self, mut n: usize) -> io::Result<()> {
        let mut scratch = [0u8; 4096];
        while n > 0 {
            let k = n.min(scratch.len());
            self.recv_exact(scratch.get_mut(..k).unwrap_or(&mut []))?;
            n -= k;
        }
        Ok(())
    }

    /// Shuts the connection down in both directions.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Command;
    use std::os::fd::AsRawFd;

    #[test]
    fn send_recv_with_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Socket::new(a), Socket::new(b));
        let (x, _y) = UnixStream::pair().unwrap();
        let h = Header::command(3, Command::DmaMap, 6);
        a.send(&h, &[b"abc", b"def"], &[x.as_fd(), x.as_fd()])
            .unwrap();
        let mut fds = Vec::new();
        let got = b.recv_header(&mut fds).unwrap().unwrap();
        assert_eq!(got, h);
        assert_eq!(fds.len(), 2);
        assert_ne!(fds[0].as_raw_fd(), x.as_raw_fd());
        let mut body = [0u8; 6];
        b.recv_exact(&mut body).unwrap();
        assert_eq!(&body, b"abcdef");
        drop(a);
        assert!(b.recv_header(&mut fds).unwrap().is_none());
    }

    #[test]
    fn partial_header_then_eof_is_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let b = Socket::new(b);
        use std::io::Write;
        (&a).write_all(&[1, 2, 3]).unwrap();
        drop(a);
        let mut fds = Vec::new();
        assert!(b.recv_header(&mut fds).is_err());
    }

    #[test]
    fn too_many_fds_is_reported_and_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Socket::new(a), Socket::new(b));
        let (x, _y) = UnixStream::pair().unwrap();
        let many: Vec<BorrowedFd<'_>> = (0..MAX_SEND_FDS).map(|_| x.as_fd()).collect();
        // MAX_SEND_FDS == MAX_RECV_FDS fits; build an oversized send by hand is not possible
        // with the same limit, so check the boundary case is accepted.
        let h = Header::command(1, Command::DeviceSetIrqs, 0);
        a.send(&h, &[], &many).unwrap();
        let mut fds = Vec::new();
        assert!(b.recv_header(&mut fds).unwrap().is_some());
        assert_eq!(fds.len(), MAX_RECV_FDS);
    }
}
