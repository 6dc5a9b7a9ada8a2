//! Wrapper adding statistics and QoS to any backend. Every constructor in [`crate::rpc`]
//! returns backends wrapped in it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::qos::QosLimits;
use crate::stats::{BdevStats, LocalStats};
use crate::{
    Bdev, BdevError, BdevInfo, Checked, IoChannel, IoCompletion, IoOp, IoRequest, RejectReason,
    Rejected,
};

/// A bdev with stats and QoS in front of an inner backend.
pub struct Layered {
    inner: Arc<dyn Bdev>,
    shared: Arc<Shared>,
}

struct Shared {
    stats: BdevStats,
    qos: QosLimits,
}

impl Layered {
    /// Wrap `inner`.
    pub fn wrap(inner: Arc<dyn Bdev>) -> Arc<dyn Bdev> {
        Arc::new(Layered {
            inner,
            shared: Arc::new(Shared {
                stats: BdevStats::new(),
                qos: QosLimits::new(),
            }),
        })
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn Bdev> {
        &self.inner
    }
}

impl Bdev for Layered {
    fn info(&self) -> &BdevInfo {
        self.inner.info()
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        let inner = self.inner.open_channel()?;
        let qd = self.inner.info().max_queue_depth.max(1) as usize;
        Ok(Box::new(LayeredChannel {
            inner,
            shared: Arc::clone(&self.shared),
            slots: Vec::with_capacity(qd),
            free: Vec::with_capacity(qd),
            held: VecDeque::new(),
            local: LocalStats::default(),
            max_qd: qd,
            in_inner: 0,
            unpublished: 0,
            clock: Instant::now(),
            idle_polls: 0,
        }))
    }

    fn stats(&self) -> Option<&BdevStats> {
        Some(&self.shared.stats)
    }

    fn qos(&self) -> Option<&QosLimits> {
        Some(&self.shared.qos)
    }

    fn driver_specific(&self) -> serde_json::Value {
        self.inner.driver_specific()
    }

    fn shutdown(&self) {
        self.inner.shutdown();
    }
}

struct Slot {
    tag: u64,
    op: IoOp,
    len: u64,
    start: Instant,
}

/// Completions accumulated locally before publishing to the shared counters.
const PUBLISH_EVERY: usize = 128;

struct LayeredChannel {
    /// Time of the latest `poll` (submission timestamps reuse it: a clock read costs
    /// ~20-70 ns, more than the rest of the null path; latencies are thus measured from the
    /// poll before submission, an over-estimate by at most one poll-loop iteration).
    clock: Instant,
    idle_polls: u32,
    unpublished: usize,
    inner: Box<dyn IoChannel>,
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    held: VecDeque<IoRequest>,
    local: LocalStats,
    max_qd: usize,
    in_inner: usize,
}

/// A request the layered channel can pass on: plain (validated by the inner backend) or
/// [`Checked`] (forwarded as such: a `Layered` has its inner bdev's limits).
trait Pass: Sized {
    fn req(&self) -> &IoRequest;
    fn set_tag(&mut self, tag: u64);
    fn into_req(self) -> IoRequest;
    #[allow(clippy::result_large_err)]
    fn pass(self, inner: &mut dyn IoChannel) -> Result<(), Rejected>;
}

impl Pass for IoRequest {
    fn req(&self) -> &IoRequest {
        self
    }
    fn set_tag(&mut self, tag: u64) {
        self.tag = tag;
    }
    fn into_req(self) -> IoRequest {
        self
    }
    fn pass(self, inner: &mut dyn IoChannel) -> Result<(), Rejected> {
        inner.submit(self)
    }
}

impl Pass for Checked {
    fn req(&self) -> &IoRequest {
        self.request()
    }
    fn set_tag(&mut self, tag: u64) {
        Checked::set_tag(self, tag);
    }
    fn into_req(self) -> IoRequest {
        self.into_request()
    }
    fn pass(self, inner: &mut dyn IoChannel) -> Result<(), Rejected> {
        inner.submit_checked(self)
    }
}

impl LayeredChannel {
    /// Send to the inner channel with the tag replaced by a slot index.
    #[allow(clippy::result_large_err)] // by value: no allocation on the queue-full path
    fn dispatch<P: Pass>(&mut self, mut io: P) -> Result<(), Rejected> {
        let r = io.req();
        let slot = Slot {
            tag: r.tag,
            op: r.op,
            len: r.len,
            start: self.clock,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i) {
                    *s = slot;
                }
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        io.set_tag(idx as u64);
        match io.pass(self.inner.as_mut()) {
            Ok(()) => {
                self.in_inner += 1;
                Ok(())
            }
            Err(mut r) => {
                if let Some(s) = self.slots.get(idx) {
                    r.io.tag = s.tag;
                }
                self.free.push(idx);
                Err(r)
            }
        }
    }

    /// Queue depth and QoS admission, then dispatch. A request QoS holds back loses its
    /// [`Checked`] mark and is validated by the inner backend when released.
    #[allow(clippy::result_large_err)] // by value: no allocation on the queue-full path
    fn submit_any<P: Pass>(&mut self, io: P) -> Result<(), Rejected> {
        if self.in_flight() >= self.max_qd {
            return Err(Rejected {
                io: io.into_req(),
                reason: RejectReason::QueueFull,
            });
        }
        if self.shared.qos.enabled()
            && (!self.held.is_empty() || !self.shared.qos.try_admit(io.req().op, io.req().len))
        {
            self.held.push_back(io.into_req());
            return Ok(());
        }
        self.dispatch(io)
    }

    fn release_held(&mut self) {
        while let Some(io) = self.held.front() {
            if !self.shared.qos.try_admit(io.op, io.len) {
                break;
            }
            let Some(io) = self.held.pop_front() else {
                break;
            };
            if let Err(r) = self.dispatch(io) {
                // Inner queue full: keep it first in line.
                self.held.push_front(r.io);
                break;
            }
        }
    }
}

impl IoChannel for LayeredChannel {
    fn submit(&mut self, io: IoRequest) -> Result<(), Rejected> {
        self.submit_any(io)
    }

    fn submit_checked(&mut self, io: Checked) -> Result<(), Rejected> {
        self.submit_any(io)
    }

    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        if !self.held.is_empty() {
            self.release_held();
        }
        let LayeredChannel {
            inner,
            slots,
            free,
            local,
            clock,
            ..
        } = self;
        let mut now: Option<Instant> = None;
        let n = inner.poll(&mut |c| {
            let idx = usize::try_from(c.tag).unwrap_or(usize::MAX);
            let Some(s) = slots.get(idx) else {
                tracing::error!(tag = c.tag, "bdev backend completed an unknown tag");
                return;
            };
            let t = *now.get_or_insert_with(Instant::now);
            let lat = u64::try_from(t.duration_since(s.start).as_nanos()).unwrap_or(u64::MAX);
            local.record(s.op, s.len, lat, c.result);
            let tag = s.tag;
            free.push(idx);
            done(IoCompletion {
                tag,
                result: c.result,
            });
        });
        // Refresh the submission clock once per poll that did work (or every 64 idle
        // polls, so an idle-then-submit latency is not inflated by a stale stamp).
        match now {
            Some(t) => *clock = t,
            None => {
                self.idle_polls = self.idle_polls.wrapping_add(1);
                if self.idle_polls % 64 == 0 || self.in_inner == 0 {
                    self.clock = Instant::now();
                }
            }
        }
        self.in_inner = self.in_inner.saturating_sub(n);
        // Publish in batches (cheap per I/O), and whenever the channel goes idle so that
        // `bdev_get_iostat` never lags behind a quiet device.
        self.unpublished += n;
        let idle = self.in_inner == 0 && self.held.is_empty();
        if self.unpublished > 0 && (self.unpublished >= PUBLISH_EVERY || n == 0 || idle) {
            self.shared.stats.publish(&mut self.local);
            self.unpublished = 0;
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.in_inner + self.held.len()
    }

    fn wait(&mut self, timeout: std::time::Duration) {
        // Held requests are released by `poll`: never sleep past them.
        if self.held.is_empty() && self.in_inner > 0 {
            self.inner.wait(timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qos::QosSettings;
    use crate::stats::OpClass;
    use crate::{null_bdev, IoError};

    #[test]
    fn tags_preserved_and_stats_counted() {
        let b = null_bdev("n", 1 << 20, 512);
        let mut ch = b.open_channel().unwrap();
        ch.submit(IoRequest::new(IoOp::Unmap, 0, 4096, 0xdead))
            .unwrap();
        ch.submit(IoRequest::new(IoOp::Unmap, 1 << 20, 512, 0xbeef))
            .unwrap();
        let mut got = Vec::new();
        ch.poll(&mut |c| got.push(c));
        assert_eq!(
            got[0],
            IoCompletion {
                tag: 0xdead,
                result: Ok(())
            }
        );
        assert_eq!(
            got[1],
            IoCompletion {
                tag: 0xbeef,
                result: Err(IoError::OutOfRange)
            }
        );
        let s = b.stats().unwrap().snapshot();
        assert_eq!(s.class(OpClass::Unmap).ops, 1);
        assert_eq!(s.class(OpClass::Unmap).bytes, 4096);
        assert_eq!(s.errors, vec![("out_of_range", 1)]);
    }

    #[test]
    fn qos_holds_instead_of_failing() {
        let b = null_bdev("n", 1 << 20, 512);
        b.qos().unwrap().set(&QosSettings {
            rw_ios_per_sec: Some(1000),
            ..Default::default()
        });
        let mut ch = b.open_channel().unwrap();
        for t in 0..50 {
            ch.submit(IoRequest::new(IoOp::Flush, 0, 0, t)).unwrap();
        }
        assert_eq!(ch.in_flight(), 50);
        let mut n = 0;
        n += ch.poll(&mut |c| assert!(c.result.is_ok()));
        assert!(n < 50);
        let start = Instant::now();
        while n < 50 {
            n += ch.poll(&mut |c| assert!(c.result.is_ok()));
        }
        // 50 I/Os at 1000/s, starting without burst: at least ~49 ms.
        assert!(start.elapsed().as_millis() >= 40);
        assert_eq!(ch.in_flight(), 0);
    }
}
