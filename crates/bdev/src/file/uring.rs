//! io_uring engine: one ring per channel (owned by one poll thread, no locks).
//!
//! Requests live in a fixed-size slot array (never reallocated) from submission until
//! their completion is reaped, so the iovec arrays and buffers the kernel reads stay at a
//! stable address, and the request's `keepalive` holds the guest memory mapped until then.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use super::{errno_to_error, fallocate_mode, FileShared};
use crate::{
    sys, validate, IoChannel, IoCompletion, IoError, IoOp, IoRequest, RejectReason, Rejected,
};

/// Whether io_uring can be set up here.
pub(crate) fn probe() -> std::io::Result<()> {
    IoUring::new(2).map(drop)
}

/// Fixed-file index of the `O_DIRECT` descriptor (the buffered one when there is none).
const FD_DIRECT: u32 = 0;
/// Fixed-file index of the buffered descriptor.
const FD_BUFFERED: u32 = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The request's main operation.
    Main,
    /// Write zeroes retried as punch hole after `EOPNOTSUPP`.
    PunchRetry,
    /// Data op retried on the buffered descriptor after `O_DIRECT` refused it (`EINVAL`).
    BufferedRetry,
}

struct Slot {
    io: IoRequest,
    /// Compare: data read from the file.
    bounce: Vec<u8>,
    stage: Stage,
}

pub(crate) struct UringChannel {
    shared: Arc<FileShared>,
    ring: IoUring,
    /// Fixed length = queue depth; `None` = free. Never resized after construction.
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Completions produced without the kernel (validation errors, push failures).
    local: VecDeque<IoCompletion>,
    /// Entries pushed but not yet submitted.
    unsubmitted: usize,
    busy: usize,
    cqes: Vec<(u64, i32)>,
}

impl UringChannel {
    pub(crate) fn new(shared: Arc<FileShared>) -> std::io::Result<Self> {
        let qd = shared.info.max_queue_depth.max(1);
        // COOP_TASKRUN (Linux 5.19): completions are not pushed to this thread with an
        // interrupt (IPI + signal-style task-work run) while it busy-polls; they are
        // posted at its next io_uring_enter. TASKRUN_FLAG makes the kernel raise
        // IORING_SQ_TASKRUN when such work waits, so `poll` enters only when it must.
        // Older kernels refuse the flags (EINVAL): fall back to a plain ring.
        let ring = match IoUring::builder()
            .setup_cqsize(qd.saturating_mul(2))
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(qd)
        {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
                .setup_cqsize(qd.saturating_mul(2))
                .build(qd)?,
            Err(e) => return Err(e),
        };
        let direct = shared
            .direct
            .as_ref()
            .map_or(shared.buffered.as_raw_fd(), |d| d.as_raw_fd());
        ring.submitter()
            .register_files(&[direct, shared.buffered.as_raw_fd()])?;
        let n = qd as usize;
        Ok(UringChannel {
            shared,
            ring,
            slots: (0..n).map(|_| None).collect(),
            free: (0..n).rev().collect(),
            local: VecDeque::new(),
            unsubmitted: 0,
            busy: 0,
            cqes: Vec::with_capacity(n),
        })
    }

    /// Build the SQE for slot `idx`.
    fn entry(&mut self, idx: usize) -> Option<squeue::Entry> {
        let sh = &self.shared;
        let slot = self.slots.get_mut(idx)?.as_mut()?;
        let io = &slot.io;
        let direct = slot.stage == Stage::Main
            && io.op.has_data()
            && io.op != IoOp::Compare
            && sh.use_direct(io);
        let fd = types::Fixed(if direct { FD_DIRECT } else { FD_BUFFERED });
        let iov = io.iov.as_slice();
        let e = match (io.op, slot.stage) {
            (IoOp::Read, _) => match iov {
                [one] => opcode::Read::new(fd, one.base(), u32::try_from(one.len()).ok()?)
                    .offset(io.offset)
                    .build(),
                _ => opcode::Readv::new(fd, iov.as_ptr().cast(), u32::try_from(iov.len()).ok()?)
                    .offset(io.offset)
                    .build(),
            },
            (IoOp::Write { fua }, _) => {
                let flags = if fua { libc::RWF_DSYNC } else { 0 };
                match iov {
                    [one] => opcode::Write::new(fd, one.base(), u32::try_from(one.len()).ok()?)
                        .offset(io.offset)
                        .rw_flags(flags)
                        .build(),
                    _ => {
                        opcode::Writev::new(fd, iov.as_ptr().cast(), u32::try_from(iov.len()).ok()?)
                            .offset(io.offset)
                            .rw_flags(flags)
                            .build()
                    }
                }
            }
            (IoOp::Flush, _) => opcode::Fsync::new(types::Fixed(FD_BUFFERED))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            (IoOp::Unmap | IoOp::WriteZeroes, stage) => {
                opcode::Fallocate::new(types::Fixed(FD_BUFFERED), io.len)
                    .offset(io.offset)
                    .mode(fallocate_mode(io.op, stage == Stage::PunchRetry))
                    .build()
            }
            (IoOp::Compare, _) => {
                let len = u32::try_from(slot.bounce.len()).ok()?;
                opcode::Read::new(types::Fixed(FD_BUFFERED), slot.bounce.as_mut_ptr(), len)
                    .offset(io.offset)
                    .build()
            }
        };
        Some(e.user_data(idx as u64))
    }

    /// Push slot `idx` to the SQ; on failure complete it with `Internal`.
    fn push(&mut self, idx: usize) {
        let pushed = match self.entry(idx) {
            Some(e) => {
                // SAFETY: the entry's buffers (iovec array inside the slot's `IoVecs`, the
                // iovec targets, the bounce buffer) live in `self.slots[idx]`, which is not
                // moved (fixed-size Vec, never resized) or freed until this entry's CQE is
                // reaped in `poll` (or `Drop` waited for it). The iovec targets are kept
                // mapped by `IoVec::from_raw`'s contract / the request's keepalive. The fixed
                // file indices were registered in `new` and the fds outlive the ring
                // (`shared` is held by `self`).
                unsafe { self.ring.submission().push(&e) }.is_ok()
            }
            None => false,
        };
        if pushed {
            self.unsubmitted += 1;
        } else {
            self.finish(idx, Err(IoError::Internal));
        }
    }

    fn finish(&mut self, idx: usize, result: Result<(), IoError>) {
        if let Some(slot) = self.slots.get_mut(idx).and_then(Option::take) {
            self.busy = self.busy.saturating_sub(1);
            self.free.push(idx);
            self.local.push_back(IoCompletion {
                tag: slot.io.tag,
                result,
            });
        }
    }

    /// Handle one CQE.
    fn complete(&mut self, idx: usize, res: i32) {
        let Some(slot) = self.slots.get(idx).and_then(Option::as_ref) else {
            tracing::error!(idx, "io_uring completion for a free slot");
            return;
        };
        let op = slot.io.op;
        if res < 0 {
            let errno = -res;
            if errno == libc::EINVAL
                && slot.stage == Stage::Main
                && matches!(op, IoOp::Read | IoOp::Write { .. })
                && self.shared.use_direct(&slot.io)
            {
                tracing::debug!(op = ?op, "O_DIRECT refused the request, retrying buffered");
                if let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) {
                    s.stage = Stage::BufferedRetry;
                }
                self.push(idx);
                return;
            }
            if op == IoOp::WriteZeroes && errno == libc::EOPNOTSUPP && slot.stage == Stage::Main {
                if let Some(s) = self.slots.get_mut(idx).and_then(Option::as_mut) {
                    s.stage = Stage::PunchRetry;
                }
                self.push(idx);
                return;
            }
            tracing::debug!(op = ?op, errno, "file I/O error");
            self.finish(idx, Err(errno_to_error(errno, op)));
            return;
        }
        let result = match op {
            IoOp::Read | IoOp::Write { .. } | IoOp::Compare => {
                if u64::try_from(res).ok() != Some(slot.io.len) {
                    tracing::debug!(op = ?op, res, len = slot.io.len, "short file I/O");
                    Err(if matches!(op, IoOp::Write { .. }) {
                        IoError::MediaWrite
                    } else {
                        IoError::MediaRead
                    })
                } else if op == IoOp::Compare && !sys::iovecs_equal(&slot.io.iov, 0, &slot.bounce) {
                    Err(IoError::CompareMismatch)
                } else {
                    Ok(())
                }
            }
            IoOp::Flush | IoOp::Unmap | IoOp::WriteZeroes => Ok(()),
        };
        self.finish(idx, result);
    }

    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(ud, res) in &cqes {
            self.complete(usize::try_from(ud).unwrap_or(usize::MAX), res);
        }
        self.cqes = cqes;
    }

    fn flush_sq(&mut self) {
        if self.unsubmitted == 0 {
            return;
        }
        match self.ring.submit() {
            Ok(n) => self.unsubmitted = self.unsubmitted.saturating_sub(n),
            Err(e) => tracing::debug!(error = %e, "io_uring submit deferred"),
        }
    }
}

impl IoChannel for UringChannel {
    fn submit(&mut self, io: IoRequest) -> Result<(), Rejected> {
        let Some(idx) = self.free.pop() else {
            return Err(Rejected {
                io,
                reason: RejectReason::QueueFull,
            });
        };
        if let Err(e) = validate::check(&self.shared.info, &io) {
            self.free.push(idx);
            self.local.push_back(IoCompletion {
                tag: io.tag,
                result: Err(e),
            });
            return Ok(());
        }
        let bounce = if io.op == IoOp::Compare {
            vec![0u8; usize::try_from(io.len).unwrap_or(0)]
        } else {
            Vec::new()
        };
        if let Some(s) = self.slots.get_mut(idx) {
            *s = Some(Slot {
                io,
                bounce,
                stage: Stage::Main,
            });
            self.busy += 1;
            self.push(idx);
        }
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        if self.unsubmitted == 0
            && self.busy > 0
            && self.ring.completion().is_empty()
            && self.ring.submission().taskrun()
        {
            // Completions wait as task work (COOP_TASKRUN): one enter posts them.
            if let Err(e) = self.ring.submit() {
                tracing::debug!(error = %e, "io_uring enter for task work");
            }
        }
        self.flush_sq();
        self.reap();
        // A retry (punch after zero-range) may have been pushed while reaping.
        self.flush_sq();
        crate::ready::drain(&mut self.local, done)
    }

    fn in_flight(&self) -> usize {
        self.busy + self.local.len()
    }

    fn wait(&mut self, timeout: Duration) {
        if !self.local.is_empty() || self.busy == 0 || !self.ring.completion().is_empty() {
            return;
        }
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        // Submits anything pending and sleeps until one CQE or the timeout (ETIME).
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(n) => self.unsubmitted = self.unsubmitted.saturating_sub(n),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
            Err(e) => tracing::debug!(error = %e, "io_uring wait"),
        }
    }
}

impl Drop for UringChannel {
    fn drop(&mut self) {
        // The kernel may still access slot buffers and guest memory: wait for every
        // in-flight request (bounded), else leak the ring and slots to stay memory safe.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.busy > 0 && Instant::now() < deadline {
            self.flush_sq();
            let _ = self.ring.submitter().submit_with_args(
                1,
                &types::SubmitArgs::new().timespec(&types::Timespec::new().nsec(100_000_000)),
            );
            self.reap();
        }
        if self.busy > 0 {
            tracing::error!(
                busy = self.busy,
                "io_uring channel dropped with I/O in flight; leaking it"
            );
            let slots = std::mem::take(&mut self.slots);
            std::mem::forget(slots);
            // Leak the ring too: closing it would not cancel the I/O either.
            let ring = std::mem::replace(
                &mut self.ring,
                match IoUring::new(1) {
                    Ok(r) => r,
                    Err(_) => return,
                },
            );
            std::mem::forget(ring);
        }
    }
}
