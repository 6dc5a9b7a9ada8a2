//! `bdev_malloc`: a RAM disk kept for the process lifetime. Supports unmap (reads back
//! zeroes), write zeroes and compare. I/O completes on the next `poll` (the copy happens
//! in `submit`, bounded by `max_io_bytes`).
//!
//! The storage is populated up front and backed by transparent huge pages where the
//! kernel allows it ([`RawBuf::new`]): no page fault on the poll thread, and random 4 KiB
//! reads over a large disk cost about half as much as with 4 KiB pages (fewer TLB misses;
//! see `examples/malloc_randread.rs` and `bench/RESULTS.md`).

use std::sync::Arc;

use crate::ready::ImmediateChannel;
use crate::sys::RawBuf;
use crate::{validate, Bdev, BdevCaps, BdevError, BdevInfo, IoChannel, IoError, IoOp, IoRequest};

/// Per-channel queue depth of the malloc bdev.
pub const MALLOC_QUEUE_DEPTH: u32 = 1024;
/// Largest single request (bounds the time one `submit` spends copying).
pub const MALLOC_MAX_IO: u64 = 4 << 20;

/// A RAM-backed block device.
pub struct MallocBdev {
    info: BdevInfo,
    buf: Arc<RawBuf>,
}

/// Bytes the kernel reports as available (`MemAvailable`), if readable.
pub fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

impl MallocBdev {
    /// A RAM disk of `num_blocks` x `block_size` bytes (block size a multiple of 512, at
    /// most 64 KiB). Fails when the size exceeds the memory the kernel reports available.
    pub fn new(
        name: &str,
        block_size: u32,
        num_blocks: u64,
        uuid: Option<uuid::Uuid>,
    ) -> Result<Self, BdevError> {
        if name.is_empty() {
            return Err(BdevError::InvalidParam("name must not be empty".into()));
        }
        if block_size < 512 || block_size % 512 != 0 || block_size > 65536 {
            return Err(BdevError::InvalidParam(format!(
                "block_size {block_size} must be a multiple of 512 between 512 and 65536"
            )));
        }
        let size = num_blocks
            .checked_mul(u64::from(block_size))
            .filter(|s| *s > 0)
            .ok_or_else(|| {
                BdevError::InvalidParam(format!("num_blocks {num_blocks} gives an invalid size"))
            })?;
        if let Some(avail) = mem_available() {
            if size > avail {
                return Err(BdevError::NoMemory {
                    requested: size,
                    available: avail,
                });
            }
        }
        let len = usize::try_from(size).map_err(|_| BdevError::NoMemory {
            requested: size,
            available: usize::MAX as u64,
        })?;
        let buf = RawBuf::new(len).map_err(|e| BdevError::io("mmap RAM disk", e))?;
        Ok(MallocBdev {
            info: BdevInfo {
                name: name.to_owned(),
                product_name: "Malloc disk".into(),
                block_size,
                num_blocks,
                uuid: uuid.unwrap_or_else(uuid::Uuid::new_v4),
                caps: BdevCaps::ALL,
                volatile_write_cache: false,
                max_queue_depth: MALLOC_QUEUE_DEPTH,
                required_alignment: 1,
                max_io_bytes: MALLOC_MAX_IO,
                read_only: false,
            },
            buf: Arc::new(buf),
        })
    }
}

impl Bdev for MallocBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        // The copy happens in `submit`; the guest memory (keepalive) is released before the
        // completion is queued for the next poll.
        let info = self.info.clone();
        let buf = Arc::clone(&self.buf);
        Ok(Box::new(ImmediateChannel::new(
            self.info.max_queue_depth,
            move |io: &IoRequest, checked: bool| execute(&info, &buf, io, checked),
        )))
    }
}

/// Validates (unless `checked`: a [`crate::Checked`] request) and executes one request
/// against the RAM disk (the copy happens here; the copies bound-check on their own).
fn execute(info: &BdevInfo, buf: &RawBuf, io: &IoRequest, checked: bool) -> Result<(), IoError> {
    if !checked {
        validate::check(info, io)?;
    }
    let len = usize::try_from(io.len).map_err(|_| IoError::Invalid)?;
    let ok = match io.op {
        IoOp::Flush => true,
        IoOp::Read => buf.read_to_iovecs(io.offset, len, &io.iov),
        IoOp::Write { .. } => buf.write_from_iovecs(io.offset, len, &io.iov),
        IoOp::WriteZeroes | IoOp::Unmap => buf.zero(io.offset, len),
        IoOp::Compare => {
            return match buf.compare_iovecs(io.offset, len, &io.iov) {
                Some(true) => Ok(()),
                Some(false) => Err(IoError::CompareMismatch),
                None => Err(IoError::OutOfRange),
            }
        }
    };
    if ok {
        Ok(())
    } else {
        Err(IoError::OutOfRange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IoCompletion, RejectReason};

    #[test]
    fn rejects_bad_params() {
        assert!(matches!(
            MallocBdev::new("m", 520, 8, None),
            Err(BdevError::InvalidParam(_))
        ));
        assert!(MallocBdev::new("m", 512, 0, None).is_err());
        assert!(matches!(
            MallocBdev::new("m", 4096, 1 << 50, None),
            Err(BdevError::NoMemory { .. })
        ));
    }

    fn io(op: IoOp, offset: u64, buf: &mut [u8], tag: u64) -> IoRequest {
        IoRequest::with_iov(
            op,
            offset,
            crate::IoVecs::one(crate::sys::iovec_of(buf)),
            tag,
        )
    }

    fn poll_all(ch: &mut dyn IoChannel) -> Vec<IoCompletion> {
        let mut v = Vec::new();
        ch.poll(&mut |c| v.push(c));
        v
    }

    #[test]
    fn reads_complete_on_poll_with_the_data() {
        let b = MallocBdev::new("m", 512, 64, None).unwrap();
        let mut ch = b.open_channel().unwrap();
        let mut w: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i + 1; 512]).collect();
        for (i, buf) in w.iter_mut().enumerate() {
            let op = IoOp::Write { fua: false };
            ch.submit(io(op, i as u64 * 512, buf, i as u64)).unwrap();
        }
        assert_eq!(poll_all(ch.as_mut()).len(), 4);
        let mut r: Vec<Vec<u8>> = (0..4).map(|_| vec![0u8; 512]).collect();
        for (i, buf) in r.iter_mut().enumerate() {
            ch.submit(io(IoOp::Read, i as u64 * 512, buf, 10 + i as u64))
                .unwrap();
        }
        // Completed reads count as in flight until polled.
        assert_eq!(ch.in_flight(), 4);
        let mut got = poll_all(ch.as_mut());
        got.sort_by_key(|c| c.tag);
        assert_eq!(
            got.iter().map(|c| c.tag).collect::<Vec<_>>(),
            [10, 11, 12, 13]
        );
        assert!(got.iter().all(|c| c.result.is_ok()));
        assert_eq!(ch.in_flight(), 0);
        drop(ch);
        for (i, buf) in r.iter().enumerate() {
            assert!(buf.iter().all(|&x| x == i as u8 + 1), "block {i}");
        }
    }

    #[test]
    fn bad_reads_fail_and_queue_depth_counts_unpolled_completions() {
        let mut b = MallocBdev::new("m", 512, 8, None).unwrap();
        b.info.max_queue_depth = 2;
        let mut ch = b.open_channel().unwrap();
        let mut a = vec![0u8; 512];
        let mut c = vec![0u8; 512];
        let mut d = vec![0u8; 512];
        // Past the end: refused with an error completion, not copied.
        ch.submit(io(IoOp::Read, 8 * 512, &mut a, 1)).unwrap();
        ch.submit(io(IoOp::Read, 0, &mut c, 2)).unwrap();
        let rej = ch.submit(io(IoOp::Read, 512, &mut d, 3)).unwrap_err();
        assert_eq!(rej.reason, RejectReason::QueueFull);
        let mut got = poll_all(ch.as_mut());
        got.sort_by_key(|c| c.tag);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].result, Err(IoError::OutOfRange));
        assert_eq!(got[1].result, Ok(()));
    }
}
