//! Thread-pool engine: blocking `preadv2`/`pwritev2`/`fdatasync`/`fallocate` on helper
//! threads; the poll thread only sends jobs and drains a completion channel.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::{errno_to_error, fallocate_mode, fd_for, FileShared};
use crate::{
    sys, validate, IoChannel, IoCompletion, IoError, IoOp, IoRequest, RejectReason, Rejected,
};

/// Worker threads per file bdev.
const POOL_THREADS: usize = 4;

struct Job {
    shared: Arc<FileShared>,
    io: IoRequest,
    reply: Sender<IoCompletion>,
}

/// The worker pool of one file bdev (threads exit when the pool is dropped).
pub(crate) struct Pool {
    tx: Sender<Job>,
}

impl Pool {
    pub(crate) fn new() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..POOL_THREADS {
            let rx = rx.clone();
            let r = std::thread::Builder::new()
                .name(format!("bdev-file-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        let tag = job.io.tag;
                        let result = execute(&job.shared, &job.io);
                        // Done touching the iovecs: release the memory snapshot first.
                        drop(job.io);
                        let _ = job.reply.send(IoCompletion { tag, result });
                    }
                });
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot spawn file I/O worker");
            }
        }
        Pool { tx }
    }
}

fn errno_of(e: rustix::io::Errno) -> i32 {
    e.raw_os_error()
}

/// Run one validated request synchronously.
pub(crate) fn execute(sh: &FileShared, io: &IoRequest) -> Result<(), IoError> {
    let fd = fd_for(sh, io);
    let rw = |write: bool, flags: i32| {
        let r = sys::rw_iovecs(fd, &io.iov, io.offset, write, flags);
        if r == Err(libc::EINVAL) && sh.direct.is_some() && sh.use_direct(io) {
            // O_DIRECT refused it (alignment rules stricter than advertised): buffered.
            tracing::debug!(op = ?io.op, "O_DIRECT refused the request, retrying buffered");
            return sys::rw_iovecs(sh.buffered.as_fd(), &io.iov, io.offset, write, flags);
        }
        r
    };
    match io.op {
        IoOp::Read => rw(false, 0).map_err(|e| errno_to_error(e, io.op)),
        IoOp::Write { fua } => {
            let flags = if fua { libc::RWF_DSYNC } else { 0 };
            rw(true, flags).map_err(|e| errno_to_error(e, io.op))
        }
        IoOp::Flush => rustix::fs::fdatasync(sh.buffered.as_fd())
            .map_err(|e| errno_to_error(errno_of(e), io.op)),
        IoOp::Unmap | IoOp::WriteZeroes => {
            let mut r = fallocate(sh, io, false);
            if io.op == IoOp::WriteZeroes && r == Err(libc::EOPNOTSUPP) {
                r = fallocate(sh, io, true);
            }
            r.map_err(|e| errno_to_error(e, io.op))
        }
        IoOp::Compare => {
            let len = usize::try_from(io.len).map_err(|_| IoError::Invalid)?;
            let mut buf = vec![0u8; len];
            let mut done = 0usize;
            while done < len {
                let rest = buf.get_mut(done..).ok_or(IoError::Internal)?;
                let off = io
                    .offset
                    .checked_add(done as u64)
                    .ok_or(IoError::OutOfRange)?;
                match rustix::io::pread(sh.buffered.as_fd(), rest, off) {
                    Ok(0) => return Err(IoError::MediaRead),
                    Ok(n) => done += n,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(errno_to_error(errno_of(e), io.op)),
                }
            }
            if sys::iovecs_equal(&io.iov, 0, &buf) {
                Ok(())
            } else {
                Err(IoError::CompareMismatch)
            }
        }
    }
}

fn fallocate(sh: &FileShared, io: &IoRequest, punch: bool) -> Result<(), i32> {
    let mode = rustix::fs::FallocateFlags::from_bits_retain(
        u32::try_from(fallocate_mode(io.op, punch)).unwrap_or(0),
    );
    rustix::fs::fallocate(sh.buffered.as_fd(), mode, io.offset, io.len).map_err(errno_of)
}

/// A channel using the pool.
pub(crate) struct PoolChannel {
    shared: Arc<FileShared>,
    tx_done: Sender<IoCompletion>,
    rx_done: Receiver<IoCompletion>,
    local: VecDeque<IoCompletion>,
    in_flight: usize,
    max_qd: usize,
}

impl PoolChannel {
    pub(crate) fn new(shared: Arc<FileShared>) -> Self {
        let (tx_done, rx_done) = crossbeam_channel::unbounded();
        let max_qd = shared.info.max_queue_depth.max(1) as usize;
        PoolChannel {
            shared,
            tx_done,
            rx_done,
            local: VecDeque::new(),
            in_flight: 0,
            max_qd,
        }
    }
}

impl IoChannel for PoolChannel {
    fn submit(&mut self, io: IoRequest) -> Result<(), Rejected> {
        if self.in_flight >= self.max_qd {
            return Err(Rejected {
                io,
                reason: RejectReason::QueueFull,
            });
        }
        self.in_flight += 1;
        if let Err(e) = validate::check(&self.shared.info, &io) {
            self.local.push_back(IoCompletion {
                tag: io.tag,
                result: Err(e),
            });
            return Ok(());
        }
        let tag = io.tag;
        let job = Job {
            shared: Arc::clone(&self.shared),
            io,
            reply: self.tx_done.clone(),
        };
        if self.shared.pool().tx.send(job).is_err() {
            self.local.push_back(IoCompletion {
                tag,
                result: Err(IoError::Internal),
            });
        }
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        let mut n = 0;
        while let Some(c) = self.local.pop_front() {
            done(c);
            n += 1;
        }
        while let Ok(c) = self.rx_done.try_recv() {
            done(c);
            n += 1;
        }
        self.in_flight = self.in_flight.saturating_sub(n);
        n
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn wait(&mut self, timeout: std::time::Duration) {
        if !self.local.is_empty() || self.in_flight == 0 || !self.rx_done.is_empty() {
            return;
        }
        if let Ok(c) = self.rx_done.recv_timeout(timeout) {
            self.local.push_back(c);
        }
    }
}

impl Drop for PoolChannel {
    fn drop(&mut self) {
        // Workers may still be copying into the request buffers: wait for them (bounded),
        // so dropping a channel never leaves the kernel/workers writing to freed memory
        // even for callers that rely on channel lifetime instead of `keepalive`.
        let outstanding = self.in_flight.saturating_sub(self.local.len());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        for _ in 0..outstanding {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if self.rx_done.recv_timeout(left).is_err() {
                tracing::error!("file channel dropped with I/O still running in workers");
                break;
            }
        }
    }
}
