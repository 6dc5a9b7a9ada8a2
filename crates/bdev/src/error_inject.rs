//! Error injection wrapper (like SPDK `bdev_error`): make the next N requests of an op type
//! fail with a chosen [`IoError`], without reaching the inner bdev.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{
    Bdev, BdevError, BdevInfo, Checked, IoChannel, IoCompletion, IoError, IoOp, IoRequest,
    RejectReason, Rejected,
};

/// Which requests an injection applies to (SPDK `io_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectOpType {
    /// Every op.
    All,
    /// Reads.
    Read,
    /// Writes.
    Write,
    /// Flushes.
    Flush,
    /// Unmaps.
    Unmap,
    /// Write zeroes.
    WriteZeroes,
    /// Compares.
    Compare,
}

impl InjectOpType {
    fn matches(self, op: IoOp) -> bool {
        match self {
            InjectOpType::All => true,
            InjectOpType::Read => op == IoOp::Read,
            InjectOpType::Write => matches!(op, IoOp::Write { .. }),
            InjectOpType::Flush => op == IoOp::Flush,
            InjectOpType::Unmap => op == IoOp::Unmap,
            InjectOpType::WriteZeroes => op == IoOp::WriteZeroes,
            InjectOpType::Compare => op == IoOp::Compare,
        }
    }

    /// Parse SPDK's `io_type` strings ("all", "read", "write", "flush", "unmap",
    /// "write_zeroes", "compare").
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "all" => InjectOpType::All,
            "read" => InjectOpType::Read,
            "write" => InjectOpType::Write,
            "flush" => InjectOpType::Flush,
            "unmap" => InjectOpType::Unmap,
            "write_zeroes" => InjectOpType::WriteZeroes,
            "compare" => InjectOpType::Compare,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Injection {
    ops: InjectOpType,
    error: IoError,
    remaining: u64,
}

#[derive(Debug, Default)]
struct Injections {
    /// Fast-path check: total remaining injections.
    pending: AtomicU64,
    list: Mutex<Vec<Injection>>,
}

impl Injections {
    fn take(&self, op: IoOp) -> Option<IoError> {
        if self.pending.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut l = self.list.lock().ok()?;
        let inj = l
            .iter_mut()
            .find(|i| i.remaining > 0 && i.ops.matches(op))?;
        inj.remaining -= 1;
        let e = inj.error;
        self.pending.fetch_sub(1, Ordering::Relaxed);
        l.retain(|i| i.remaining > 0);
        Some(e)
    }
}

/// A bdev that fails chosen requests before they reach `inner`.
pub struct ErrorInjectBdev {
    inner: Arc<dyn Bdev>,
    info: BdevInfo,
    inj: Arc<Injections>,
}

impl ErrorInjectBdev {
    /// Wrap `inner` under a new name (SPDK names it `EE_<inner>`).
    pub fn new(name: &str, inner: Arc<dyn Bdev>) -> Self {
        let mut info = inner.info().clone();
        info.name = name.to_owned();
        info.product_name = "Error disk".into();
        ErrorInjectBdev {
            inner,
            info,
            inj: Arc::new(Injections::default()),
        }
    }

    /// Fail the next `num` requests matching `ops` with `error`.
    pub fn inject(&self, ops: InjectOpType, error: IoError, num: u64) {
        if num == 0 {
            return;
        }
        if let Ok(mut l) = self.inj.list.lock() {
            l.push(Injection {
                ops,
                error,
                remaining: num,
            });
            self.inj.pending.fetch_add(num, Ordering::Relaxed);
        }
    }

    /// Drop every pending injection.
    pub fn clear(&self) {
        if let Ok(mut l) = self.inj.list.lock() {
            l.clear();
            self.inj.pending.store(0, Ordering::Relaxed);
        }
    }

    /// Injections not yet consumed.
    pub fn pending(&self) -> u64 {
        self.inj.pending.load(Ordering::Relaxed)
    }
}

impl Bdev for ErrorInjectBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(ErrorChannel {
            inner: self.inner.open_channel()?,
            inj: Arc::clone(&self.inj),
            failed: VecDeque::new(),
            max_qd: self.info.max_queue_depth.max(1) as usize,
        }))
    }

    fn driver_specific(&self) -> serde_json::Value {
        serde_json::json!({"error": {"base_bdev": self.inner.info().name}})
    }

    fn shutdown(&self) {
        self.inner.shutdown();
    }
}

struct ErrorChannel {
    inner: Box<dyn IoChannel>,
    inj: Arc<Injections>,
    failed: VecDeque<IoCompletion>,
    max_qd: usize,
}

impl IoChannel for ErrorChannel {
    fn submit(&mut self, io: IoRequest) -> Result<(), Rejected> {
        if self.in_flight() >= self.max_qd {
            return Err(Rejected {
                io,
                reason: RejectReason::QueueFull,
            });
        }
        if let Some(e) = self.inj.take(io.op) {
            tracing::debug!(tag = io.tag, op = ?io.op, error = %e, "injected I/O error");
            self.failed.push_back(IoCompletion {
                tag: io.tag,
                result: Err(e),
            });
            return Ok(());
        }
        self.inner.submit(io)
    }

    fn submit_checked(&mut self, io: Checked) -> Result<(), Rejected> {
        // Same limits as the inner bdev (only the names differ): forward as checked.
        if self.in_flight() >= self.max_qd || self.inj.pending.load(Ordering::Relaxed) != 0 {
            return self.submit(io.into_request());
        }
        self.inner.submit_checked(io)
    }

    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        crate::ready::drain(&mut self.failed, done) + self.inner.poll(done)
    }

    fn in_flight(&self) -> usize {
        self.failed.len() + self.inner.in_flight()
    }

    fn wait(&mut self, timeout: std::time::Duration) {
        if self.failed.is_empty() {
            self.inner.wait(timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::null::NullBdev;

    #[test]
    fn injects_exactly_n_of_the_type() {
        let inner: Arc<dyn Bdev> = Arc::new(NullBdev::new("n", 512, 64, None).unwrap());
        let e = ErrorInjectBdev::new("EE_n", inner);
        e.inject(InjectOpType::Flush, IoError::MediaWrite, 2);
        assert_eq!(e.pending(), 2);
        let mut ch = e.open_channel().unwrap();
        ch.submit(IoRequest::new(IoOp::Unmap, 0, 512, 1)).unwrap();
        for t in 2..5 {
            ch.submit(IoRequest::new(IoOp::Flush, 0, 0, t)).unwrap();
        }
        let mut got = Vec::new();
        ch.poll(&mut |c| got.push(c));
        got.sort_by_key(|c| c.tag);
        let results: Vec<_> = got.iter().map(|c| c.result).collect();
        assert_eq!(
            results,
            vec![
                Ok(()),
                Err(IoError::MediaWrite),
                Err(IoError::MediaWrite),
                Ok(())
            ]
        );
        assert_eq!(e.pending(), 0);
        assert_eq!(
            InjectOpType::parse("write_zeroes"),
            Some(InjectOpType::WriteZeroes)
        );
        assert_eq!(InjectOpType::parse("bogus"), None);
    }
}
