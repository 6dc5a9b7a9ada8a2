//! Bounce buffers for data in DMA windows the client mapped without an fd.
//!
//! Such windows are not in the `vm-memory` snapshot: the controller reaches them only
//! through the session's DMA_READ / DMA_WRITE messages ([`MsgDma`], implemented by
//! `vfu_server::DmaHandle`). The I/O path stays zero-copy for fd-backed memory; only when
//! translating a command's data segments to the snapshot fails does the controller
//! re-walk the PRPs/SGL into plain segments and bounce the *whole* command:
//!
//! * Write / Compare: every segment is fetched (a volatile copy for fd-backed segments, a
//!   DMA_READ otherwise) into a host buffer before the backend is called.
//! * Read: the backend reads into the host buffer; on success the bytes are written back
//!   (volatile copy or DMA_WRITE) *before* the completion entry is posted.
//!
//! The host buffer is an anonymous mapping of exactly the transfer length (bounded by
//! MDTS); a failed allocation gives Internal Error. A message failure (window missing,
//! window without the needed permission, client error, connection gone) gives Data
//! Transfer Error and the controller carries on. PRP lists and SGL segments themselves
//! must still lie in fd-backed memory: the walkers read them from the snapshot only.
//!
//! DMA_READ / DMA_WRITE are synchronous socket round trips done on the poll thread: they
//! stall every controller of that poll thread while they run. That is accepted for this
//! rare path (QEMU without `share=on`); production guests should share their RAM.

use std::sync::Arc;

use rustix::io::Errno;
use tracing::debug;
use vm_memory::{Bytes, GuestAddress, MmapRegion, VolatileMemory};

use crate::prp::Seg;
use crate::spec::Status;
use crate::GuestMem;
use sluice_bdev::{IoVec, IoVecs};

/// Message-based access to guest memory that is not in the snapshot (fd-less windows).
pub trait MsgDma: Send + Sync {
    /// Reads `buf.len()` bytes of guest memory at `iova`.
    fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Writes `data` to guest memory at `iova`.
    fn write(&self, iova: u64, data: &[u8]) -> Result<(), Errno>;
}

impl MsgDma for vfu_server::DmaHandle {
    fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), Errno> {
        vfu_server::DmaHandle::read(self, iova, buf)
    }
    fn write(&self, iova: u64, data: &[u8]) -> Result<(), Errno> {
        vfu_server::DmaHandle::write(self, iova, data)
    }
}

fn msg_error(what: &'static str, iova: u64, len: usize, e: Errno) -> Status {
    debug!(
        what,
        iova,
        len,
        errno = e.raw_os_error(),
        "nvme: DMA message failed"
    );
    Status::DATA_TRANSFER_ERROR
}

/// How [`copy_segs`] asks for one piece to be copied.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Volatile copy through the snapshot; `Ok(false)` when the piece is not mapped.
    Snapshot,
    /// DMA_READ / DMA_WRITE messages.
    Messages,
}

/// Walks `segs` over the first `len` host bytes (stopping at the shorter), asking `copy`
/// to move each segment through the snapshot first. Segments that are not mapped go by
/// messages, guest-contiguous ones merged into one request (a PRP list over a contiguous
/// fd-less buffer costs one round trip per `max_data_xfer_size`, not one per page).
fn copy_segs(
    segs: &[Seg],
    len: usize,
    mut copy: impl FnMut(Via, u64, std::ops::Range<usize>) -> Result<bool, Status>,
) -> Result<(), Status> {
    // Pending message run: guest address and host byte range.
    let mut run: Option<(u64, std::ops::Range<usize>)> = None;
    let mut done = 0usize;
    for s in segs {
        let left = len.saturating_sub(done);
        if left == 0 {
            break;
        }
        let n = usize::try_from(s.len)
            .map_err(|_| Status::DATA_TRANSFER_ERROR)?
            .min(left);
        let r = done..done + n;
        done += n;
        if copy(Via::Snapshot, s.addr, r.clone())? {
            continue;
        }
        run = match run.take() {
            Some((a, pr))
                if pr.end == r.start && a.checked_add(pr.len() as u64) == Some(s.addr) =>
            {
                Some((a, pr.start..r.end))
            }
            Some((a, pr)) => {
                copy(Via::Messages, a, pr)?;
                Some((s.addr, r))
            }
            None => Some((s.addr, r)),
        };
    }
    if let Some((a, r)) = run {
        copy(Via::Messages, a, r)?;
    }
    Ok(())
}

/// Copies guest segments into `out` (stops at the shorter): fd-backed segments by volatile
/// copy, others through `dma` (Data Transfer Error without it).
pub fn gather(
    mem: &GuestMem,
    dma: Option<&dyn MsgDma>,
    segs: &[Seg],
    out: &mut [u8],
) -> Result<(), Status> {
    let len = out.len();
    copy_segs(segs, len, |via, addr, r| {
        let n = r.len();
        let chunk = out.get_mut(r).ok_or(Status::INTERNAL_ERROR)?;
        if via == Via::Snapshot {
            return Ok(mem.read_slice(chunk, GuestAddress(addr)).is_ok());
        }
        let dma = dma.ok_or(Status::DATA_TRANSFER_ERROR)?;
        dma.read(addr, chunk)
            .map_err(|e| msg_error("DMA_READ", addr, n, e))?;
        Ok(true)
    })
}

/// Copies `data` to guest segments (stops at the shorter): fd-backed segments by volatile
/// copy, others through `dma` (Data Transfer Error without it).
pub fn scatter(
    mem: &GuestMem,
    dma: Option<&dyn MsgDma>,
    segs: &[Seg],
    data: &[u8],
) -> Result<(), Status> {
    copy_segs(segs, data.len(), |via, addr, r| {
        let n = r.len();
        let chunk = data.get(r).ok_or(Status::INTERNAL_ERROR)?;
        if via == Via::Snapshot {
            return Ok(mem.write_slice(chunk, GuestAddress(addr)).is_ok());
        }
        let dma = dma.ok_or(Status::DATA_TRANSFER_ERROR)?;
        dma.write(addr, chunk)
            .map_err(|e| msg_error("DMA_WRITE", addr, n, e))?;
        Ok(true)
    })
}

/// A heap staging vector of `len` bytes; allocation failure is an Internal Error.
fn staging(len: usize) -> Result<Vec<u8>, Status> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        debug!(len, "nvme: bounce staging allocation failed");
        Status::INTERNAL_ERROR
    })?;
    v.resize(len, 0);
    Ok(v)
}

/// One bounced command: the host buffer handed to the backend and the guest segments it
/// stands for.
pub(crate) struct Bounce {
    buf: Arc<MmapRegion>,
    segs: Vec<Seg>,
    /// The device writes guest memory (Read): copy back at completion.
    to_guest: bool,
}

impl Bounce {
    /// Allocates the host buffer for `segs` (`len` bytes in total, already bounded by
    /// MDTS) and, unless `to_guest`, fills it from the guest.
    pub(crate) fn prepare(
        mem: &GuestMem,
        dma: &dyn MsgDma,
        segs: Vec<Seg>,
        len: u64,
        to_guest: bool,
    ) -> Result<Bounce, Status> {
        let n = usize::try_from(len).map_err(|_| Status::INTERNAL_ERROR)?;
        if n == 0 {
            return Err(Status::INTERNAL_ERROR);
        }
        let buf = MmapRegion::new(n).map_err(|e| {
            debug!(len, error = %e, "nvme: bounce buffer allocation failed");
            Status::INTERNAL_ERROR
        })?;
        if !to_guest {
            let mut tmp = staging(n)?;
            gather(mem, Some(dma), &segs, &mut tmp)?;
            buf.as_volatile_slice()
                .write_slice(&tmp, 0)
                .map_err(|_| Status::INTERNAL_ERROR)?;
        }
        Ok(Bounce {
            buf: Arc::new(buf),
            segs,
            to_guest,
        })
    }

    /// The backend's iovecs (one, over the whole host buffer).
    pub(crate) fn iovecs(&self) -> IoVecs {
        IoVecs::one(IoVec::from_volatile_slice(&self.buf.as_volatile_slice()))
    }

    /// Keeps the host buffer mapped for as long as the backend holds the request.
    pub(crate) fn keepalive(&self) -> Arc<dyn std::any::Any + Send + Sync> {
        Arc::clone(&self.buf) as Arc<dyn std::any::Any + Send + Sync>
    }

    /// After a successful backend request: copies a Read's bytes to the guest.
    pub(crate) fn finish(&self, mem: &GuestMem, dma: Option<&dyn MsgDma>) -> Result<(), Status> {
        if !self.to_guest {
            return Ok(());
        }
        let mut tmp = staging(self.buf.size())?;
        self.buf
            .as_volatile_slice()
            .read_slice(&mut tmp, 0)
            .map_err(|_| Status::INTERNAL_ERROR)?;
        scatter(mem, dma, &self.segs, &tmp)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// An in-memory fd-less window `[base, base + size)` served like a client would, with
    /// permissions and a switch that makes every message fail.
    pub(crate) struct FakeMsgDma {
        pub(crate) base: u64,
        pub(crate) size: u64,
        pub(crate) readable: bool,
        pub(crate) writable: bool,
        pub(crate) broken: std::sync::atomic::AtomicBool,
        bytes: Mutex<BTreeMap<u64, u8>>,
        pub(crate) messages: std::sync::atomic::AtomicU64,
    }

    impl FakeMsgDma {
        pub(crate) fn new(base: u64, size: u64, readable: bool, writable: bool) -> Self {
            FakeMsgDma {
                base,
                size,
                readable,
                writable,
                broken: Default::default(),
                bytes: Mutex::new(BTreeMap::new()),
                messages: Default::default(),
            }
        }

        fn check(&self, iova: u64, len: usize, perm: bool) -> Result<(), Errno> {
            use std::sync::atomic::Ordering;
            self.messages.fetch_add(1, Ordering::Relaxed);
            if self.broken.load(Ordering::Relaxed) {
                return Err(Errno::NOTCONN);
            }
            let end = iova.checked_add(len as u64).ok_or(Errno::FAULT)?;
            if iova < self.base || end > self.base + self.size {
                return Err(Errno::FAULT);
            }
            if !perm {
                return Err(Errno::PERM);
            }
            Ok(())
        }

        /// Test-side access (the "client" filling / checking its memory).
        pub(crate) fn poke(&self, iova: u64, data: &[u8]) {
            let mut m = self.bytes.lock().unwrap();
            for (i, b) in data.iter().enumerate() {
                m.insert(iova + i as u64, *b);
            }
        }

        pub(crate) fn peek(&self, iova: u64, len: usize) -> Vec<u8> {
            let m = self.bytes.lock().unwrap();
            (0..len as u64)
                .map(|i| m.get(&(iova + i)).copied().unwrap_or(0))
                .collect()
        }
    }

    impl MsgDma for FakeMsgDma {
        fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), Errno> {
            self.check(iova, buf.len(), self.readable)?;
            buf.copy_from_slice(&self.peek(iova, buf.len()));
            Ok(())
        }
        fn write(&self, iova: u64, data: &[u8]) -> Result<(), Errno> {
            self.check(iova, data.len(), self.writable)?;
            self.poke(iova, data);
            Ok(())
        }
    }

    fn mem() -> GuestMem {
        GuestMem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    const W: u64 = 0x100_0000;

    #[test]
    fn gather_and_scatter_mix_snapshot_and_messages() {
        let m = mem();
        let d = FakeMsgDma::new(W, 0x10000, true, true);
        m.write_slice(b"abcd", GuestAddress(0x1000)).unwrap();
        d.poke(W + 0x10, b"efgh");
        let segs = [
            Seg {
                addr: 0x1000,
                len: 4,
            },
            Seg {
                addr: W + 0x10,
                len: 4,
            },
        ];
        let mut out = [0u8; 8];
        gather(&m, Some(&d), &segs, &mut out).unwrap();
        assert_eq!(&out, b"abcdefgh");
        assert_eq!(
            gather(&m, None, &segs, &mut out),
            Err(Status::DATA_TRANSFER_ERROR),
            "no message channel"
        );
        scatter(&m, Some(&d), &segs, b"12345678").unwrap();
        assert_eq!(d.peek(W + 0x10, 4), b"5678");
        let mut b = [0u8; 4];
        m.read_slice(&mut b, GuestAddress(0x1000)).unwrap();
        assert_eq!(&b, b"1234");
        // Outside every window, or the client failing: Data Transfer Error.
        let far = [Seg {
            addr: W + 0x20000,
            len: 4,
        }];
        assert_eq!(
            gather(&m, Some(&d), &far, &mut out),
            Err(Status::DATA_TRANSFER_ERROR)
        );
        d.broken.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            scatter(&m, Some(&d), &segs, b"12345678"),
            Err(Status::DATA_TRANSFER_ERROR)
        );
    }

    #[test]
    fn contiguous_unmapped_segments_share_one_message() {
        use std::sync::atomic::Ordering;
        let m = mem();
        let d = FakeMsgDma::new(W, 0x10000, true, true);
        d.poke(W, &[3u8; 0x3000]);
        let page = |a: u64| Seg {
            addr: a,
            len: 0x1000,
        };
        // Three contiguous window pages, a mapped page, then a non-contiguous window page.
        let segs = [
            page(W),
            page(W + 0x1000),
            page(W + 0x2000),
            page(0x1000),
            page(W + 0x8000),
        ];
        let mut out = vec![0u8; 0x5000];
        gather(&m, Some(&d), &segs, &mut out).unwrap();
        assert_eq!(d.messages.load(Ordering::Relaxed), 2, "one run + one page");
        assert_eq!(&out[..0x3000], &[3u8; 0x3000][..]);
        scatter(&m, Some(&d), &segs, &vec![4u8; 0x5000]).unwrap();
        assert_eq!(d.messages.load(Ordering::Relaxed), 4);
        assert_eq!(d.peek(W + 0x8000, 0x1000), vec![4u8; 0x1000]);
        // Host-contiguous but guest-discontiguous pages are not merged.
        let segs = [page(W + 0x2000), page(W)];
        gather(&m, Some(&d), &segs, &mut out[..0x2000]).unwrap();
        assert_eq!(d.messages.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn permissions_are_respected() {
        let m = mem();
        let ro = FakeMsgDma::new(W, 0x1000, true, false);
        let wo = FakeMsgDma::new(W, 0x1000, false, true);
        let segs = [Seg { addr: W, len: 16 }];
        assert_eq!(
            scatter(&m, Some(&ro), &segs, &[1; 16]),
            Err(Status::DATA_TRANSFER_ERROR)
        );
        let mut out = [0u8; 16];
        assert_eq!(
            gather(&m, Some(&wo), &segs, &mut out),
            Err(Status::DATA_TRANSFER_ERROR)
        );
        assert!(gather(&m, Some(&ro), &segs, &mut out).is_ok());
        assert!(scatter(&m, Some(&wo), &segs, &out).is_ok());
    }

    #[test]
    fn bounce_round_trip() {
        let m = mem();
        let d = FakeMsgDma::new(W, 0x10000, true, true);
        d.poke(W + 0x800, &[7u8; 0x1000]);
        let segs = vec![
            Seg {
                addr: W + 0x800,
                len: 0x800,
            },
            Seg {
                addr: 0x2000,
                len: 0x800,
            },
        ];
        m.write_slice(&[9u8; 0x800], GuestAddress(0x2000)).unwrap();
        // Write direction: the buffer holds the guest bytes, in segment order.
        let b = Bounce::prepare(&m, &d, segs.clone(), 0x1000, false).unwrap();
        let iov = b.iovecs();
        assert_eq!(iov.len(), 1);
        assert_eq!(iov.as_slice()[0].len(), 0x1000);
        let mut got = vec![0u8; 0x1000];
        b.buf.as_volatile_slice().read_slice(&mut got, 0).unwrap();
        assert_eq!(&got[..0x800], &[7u8; 0x800][..]);
        assert_eq!(&got[0x800..], &[9u8; 0x800][..]);
        b.finish(&m, Some(&d)).unwrap();
        // Read direction: nothing fetched; finish copies the buffer out.
        let n = d.messages.load(std::sync::atomic::Ordering::Relaxed);
        let b = Bounce::prepare(&m, &d, segs, 0x1000, true).unwrap();
        assert_eq!(d.messages.load(std::sync::atomic::Ordering::Relaxed), n);
        b.buf
            .as_volatile_slice()
            .write_slice(&[5u8; 0x1000], 0)
            .unwrap();
        b.finish(&m, Some(&d)).unwrap();
        assert_eq!(d.peek(W + 0x800, 0x800), vec![5u8; 0x800]);
        m.read_slice(&mut got[..0x800], GuestAddress(0x2000))
            .unwrap();
        assert_eq!(&got[..0x800], &[5u8; 0x800][..]);
        assert_eq!(
            Bounce::prepare(&m, &d, Vec::new(), 0, true).err(),
            Some(Status::INTERNAL_ERROR)
        );
    }
}
