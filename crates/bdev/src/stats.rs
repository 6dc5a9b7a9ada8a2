//! Per-bdev I/O statistics in SPDK's `bdev_get_iostat` shape, plus latency histograms.
//!
//! Channels accumulate locally and publish once per poll batch (a handful of relaxed
//! atomic adds and one uncontended lock), so the per-I/O cost is a timestamp and a few
//! plain additions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::{IoError, IoOp};

/// Operation classes counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// Reads.
    Read = 0,
    /// Writes.
    Write = 1,
    /// Unmaps.
    Unmap = 2,
    /// Flushes.
    Flush = 3,
    /// Write zeroes.
    WriteZeroes = 4,
    /// Compares.
    Compare = 5,
}

/// Number of [`OpClass`]es.
pub const N_CLASSES: usize = 6;

impl OpClass {
    /// The class of an op.
    pub fn of(op: IoOp) -> Self {
        match op {
            IoOp::Read => OpClass::Read,
            IoOp::Write { .. } => OpClass::Write,
            IoOp::Unmap => OpClass::Unmap,
            IoOp::Flush => OpClass::Flush,
            IoOp::WriteZeroes => OpClass::WriteZeroes,
            IoOp::Compare => OpClass::Compare,
        }
    }
}

const ERROR_KINDS: [IoError; 12] = [
    IoError::MediaRead,
    IoError::MediaWrite,
    IoError::CompareMismatch,
    IoError::Invalid,
    IoError::Unsupported,
    IoError::OutOfRange,
    IoError::ReadOnly,
    IoError::NoSpace,
    IoError::Internal,
    IoError::Timeout,
    IoError::Transport,
    IoError::Aborted,
];

fn error_index(e: IoError) -> usize {
    ERROR_KINDS.iter().position(|k| *k == e).unwrap_or(0)
}

fn error_name(e: IoError) -> &'static str {
    match e {
        IoError::MediaRead => "media_read",
        IoError::MediaWrite => "media_write",
        IoError::CompareMismatch => "compare_mismatch",
        IoError::Invalid => "invalid",
        IoError::Unsupported => "unsupported",
        IoError::OutOfRange => "out_of_range",
        IoError::ReadOnly => "read_only",
        IoError::NoSpace => "no_space",
        IoError::Internal => "internal",
        IoError::Timeout => "timeout",
        IoError::Transport => "transport",
        IoError::Aborted => "aborted",
    }
}

#[derive(Debug)]
struct ClassCounters {
    ops: AtomicU64,
    bytes: AtomicU64,
    lat_sum: AtomicU64,
    lat_min: AtomicU64,
    lat_max: AtomicU64,
}

impl ClassCounters {
    fn new() -> Self {
        ClassCounters {
            ops: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            lat_sum: AtomicU64::new(0),
            lat_min: AtomicU64::new(u64::MAX),
            lat_max: AtomicU64::new(0),
        }
    }
}

/// Shared statistics of one bdev.
#[derive(Debug)]
pub struct BdevStats {
    classes: [ClassCounters; N_CLASSES],
    errors: [AtomicU64; ERROR_KINDS.len()],
    read_hist: Mutex<Option<Histogram<u64>>>,
    write_hist: Mutex<Option<Histogram<u64>>>,
}

/// One class's counters in a snapshot (latencies in nanoseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassSnapshot {
    /// Successful operations.
    pub ops: u64,
    /// Bytes moved by successful operations.
    pub bytes: u64,
    /// Sum of latencies.
    pub lat_sum_ns: u64,
    /// Minimum latency (0 when no op).
    pub lat_min_ns: u64,
    /// Maximum latency.
    pub lat_max_ns: u64,
}

/// A point-in-time copy of a bdev's statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IoStatSnapshot {
    /// Per class, indexed by `OpClass as usize`.
    pub classes: [ClassSnapshot; N_CLASSES],
    /// Failed requests per error kind (name, count), only non-zero kinds.
    pub errors: Vec<(&'static str, u64)>,
    /// Read latency percentiles in ns: p50, p90, p99, p99.9.
    pub read_pct_ns: [u64; 4],
    /// Write latency percentiles in ns.
    pub write_pct_ns: [u64; 4],
}

impl IoStatSnapshot {
    /// Counters of one class.
    pub fn class(&self, c: OpClass) -> ClassSnapshot {
        self.classes.get(c as usize).copied().unwrap_or_default()
    }

    /// Total failed requests.
    pub fn total_errors(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum()
    }

    /// One entry of SPDK's `bdev_get_iostat` `bdevs` array (ticks are nanoseconds;
    /// use `tick_rate` 1e9 at the top level). Sluice adds `num_flush_ops`,
    /// `num_write_zeroes_ops`, `num_compare_ops` and `latency_percentiles_ns`.
    pub fn to_spdk_json(&self, name: &str) -> Value {
        let r = self.class(OpClass::Read);
        let w = self.class(OpClass::Write);
        let u = self.class(OpClass::Unmap);
        let mut io_error = serde_json::Map::new();
        for (k, n) in &self.errors {
            io_error.insert((*k).to_owned(), json!(n));
        }
        let pct = |p: &[u64; 4]| json!({"p50": p[0], "p90": p[1], "p99": p[2], "p99_9": p[3]});
        json!({
            "name": name,
            "bytes_read": r.bytes,
            "num_read_ops": r.ops,
            "bytes_written": w.bytes,
            "num_write_ops": w.ops,
            "bytes_unmapped": u.bytes,
            "num_unmap_ops": u.ops,
            "bytes_copied": 0,
            "num_copy_ops": 0,
            "read_latency_ticks": r.lat_sum_ns,
            "max_read_latency_ticks": r.lat_max_ns,
            "min_read_latency_ticks": r.lat_min_ns,
            "write_latency_ticks": w.lat_sum_ns,
            "max_write_latency_ticks": w.lat_max_ns,
            "min_write_latency_ticks": w.lat_min_ns,
            "unmap_latency_ticks": u.lat_sum_ns,
            "max_unmap_latency_ticks": u.lat_max_ns,
            "min_unmap_latency_ticks": u.lat_min_ns,
            "copy_latency_ticks": 0,
            "max_copy_latency_ticks": 0,
            "min_copy_latency_ticks": 0,
            "io_error": Value::Object(io_error),
            "queue_depth_polling_period": 0,
            "queue_depth": 0,
            "io_time": 0,
            "weighted_io_time": 0,
            "num_flush_ops": self.class(OpClass::Flush).ops,
            "num_write_zeroes_ops": self.class(OpClass::WriteZeroes).ops,
            "num_compare_ops": self.class(OpClass::Compare).ops,
            "latency_percentiles_ns": {"read": pct(&self.read_pct_ns), "write": pct(&self.write_pct_ns)},
        })
    }
}

fn new_hist() -> Option<Histogram<u64>> {
    // 1 ns .. 100 s, 3 significant digits (constant valid bounds: never `None`).
    Histogram::new_with_bounds(1, 100_000_000_000, 3).ok()
}

impl Default for BdevStats {
    fn default() -> Self {
        Self::new()
    }
}

impl BdevStats {
    /// Empty statistics.
    pub fn new() -> Self {
        BdevStats {
            classes: std::array::from_fn(|_| ClassCounters::new()),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            read_hist: Mutex::new(new_hist()),
            write_hist: Mutex::new(new_hist()),
        }
    }

    /// Publish a channel's local accumulation and reset it.
    pub(crate) fn publish(&self, local: &mut LocalStats) {
        if local.is_empty() {
            return;
        }
        for (c, l) in self.classes.iter().zip(local.classes.iter()) {
            if l.ops == 0 {
                continue;
            }
            c.ops.fetch_add(l.ops, Ordering::Relaxed);
            c.bytes.fetch_add(l.bytes, Ordering::Relaxed);
            c.lat_sum.fetch_add(l.lat_sum_ns, Ordering::Relaxed);
            c.lat_min.fetch_min(l.lat_min_ns, Ordering::Relaxed);
            c.lat_max.fetch_max(l.lat_max_ns, Ordering::Relaxed);
        }
        for (c, l) in self.errors.iter().zip(local.errors.iter()) {
            if *l != 0 {
                c.fetch_add(*l, Ordering::Relaxed);
            }
        }
        for (hist, lat) in [
            (&self.read_hist, &local.read_lat),
            (&self.write_hist, &local.write_lat),
        ] {
            if lat.is_empty() {
                continue;
            }
            if let Ok(mut g) = hist.lock() {
                if let Some(h) = g.as_mut() {
                    for v in lat {
                        h.saturating_record(*v);
                    }
                }
            }
        }
        local.reset();
    }

    /// Snapshot the counters.
    pub fn snapshot(&self) -> IoStatSnapshot {
        let mut s = IoStatSnapshot::default();
        for (d, c) in s.classes.iter_mut().zip(self.classes.iter()) {
            let min = c.lat_min.load(Ordering::Relaxed);
            *d = ClassSnapshot {
                ops: c.ops.load(Ordering::Relaxed),
                bytes: c.bytes.load(Ordering::Relaxed),
                lat_sum_ns: c.lat_sum.load(Ordering::Relaxed),
                lat_min_ns: if min == u64::MAX { 0 } else { min },
                lat_max_ns: c.lat_max.load(Ordering::Relaxed),
            };
        }
        for (k, c) in ERROR_KINDS.iter().zip(self.errors.iter()) {
            let n = c.load(Ordering::Relaxed);
            if n != 0 {
                s.errors.push((error_name(*k), n));
            }
        }
        let pct = |h: &Mutex<Option<Histogram<u64>>>| -> [u64; 4] {
            match h.lock() {
                Ok(g) => match g.as_ref() {
                    Some(h) if !h.is_empty() => {
                        [50.0, 90.0, 99.0, 99.9].map(|q| h.value_at_quantile(q / 100.0))
                    }
                    _ => [0; 4],
                },
                Err(_) => [0; 4],
            }
        };
        s.read_pct_ns = pct(&self.read_hist);
        s.write_pct_ns = pct(&self.write_hist);
        s
    }

    /// Reset every counter (SPDK `bdev_reset_iostat`).
    pub fn reset(&self) {
        for c in &self.classes {
            c.ops.store(0, Ordering::Relaxed);
            c.bytes.store(0, Ordering::Relaxed);
            c.lat_sum.store(0, Ordering::Relaxed);
            c.lat_min.store(u64::MAX, Ordering::Relaxed);
            c.lat_max.store(0, Ordering::Relaxed);
        }
        for e in &self.errors {
            e.store(0, Ordering::Relaxed);
        }
        for h in [&self.read_hist, &self.write_hist] {
            if let Ok(mut g) = h.lock() {
                if let Some(h) = g.as_mut() {
                    h.reset();
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalClass {
    ops: u64,
    bytes: u64,
    lat_sum_ns: u64,
    lat_min_ns: u64,
    lat_max_ns: u64,
}

impl Default for LocalClass {
    fn default() -> Self {
        LocalClass {
            ops: 0,
            bytes: 0,
            lat_sum_ns: 0,
            lat_min_ns: u64::MAX,
            lat_max_ns: 0,
        }
    }
}

/// A channel's not-yet-published counters.
#[derive(Debug, Default)]
pub(crate) struct LocalStats {
    classes: [LocalClass; N_CLASSES],
    errors: [u64; ERROR_KINDS.len()],
    read_lat: Vec<u64>,
    write_lat: Vec<u64>,
    dirty: bool,
}

impl LocalStats {
    pub(crate) fn record(&mut self, op: IoOp, len: u64, lat_ns: u64, result: Result<(), IoError>) {
        self.dirty = true;
        match result {
            Ok(()) => {
                let class = OpClass::of(op);
                if let Some(c) = self.classes.get_mut(class as usize) {
                    c.ops += 1;
                    c.bytes = c.bytes.wrapping_add(len);
                    c.lat_sum_ns = c.lat_sum_ns.wrapping_add(lat_ns);
                    c.lat_min_ns = c.lat_min_ns.min(lat_ns);
                    c.lat_max_ns = c.lat_max_ns.max(lat_ns);
                }
                match class {
                    OpClass::Read => self.read_lat.push(lat_ns),
                    OpClass::Write => self.write_lat.push(lat_ns),
                    _ => {}
                }
            }
            Err(e) => {
                if let Some(c) = self.errors.get_mut(error_index(e)) {
                    *c += 1;
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        !self.dirty
    }

    fn reset(&mut self) {
        self.classes = [LocalClass::default(); N_CLASSES];
        self.errors = [0; ERROR_KINDS.len()];
        self.read_lat.clear();
        self.write_lat.clear();
        self.dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_and_snapshot() {
        let s = BdevStats::new();
        let mut l = LocalStats::default();
        l.record(IoOp::Read, 4096, 1000, Ok(()));
        l.record(IoOp::Read, 4096, 3000, Ok(()));
        l.record(IoOp::Write { fua: false }, 512, 2000, Ok(()));
        l.record(
            IoOp::Write { fua: false },
            512,
            2000,
            Err(IoError::MediaWrite),
        );
        s.publish(&mut l);
        assert!(l.is_empty());
        let snap = s.snapshot();
        let r = snap.class(OpClass::Read);
        assert_eq!(
            (r.ops, r.bytes, r.lat_sum_ns, r.lat_min_ns, r.lat_max_ns),
            (2, 8192, 4000, 1000, 3000)
        );
        assert_eq!(snap.class(OpClass::Write).ops, 1);
        assert_eq!(snap.errors, vec![("media_write", 1)]);
        assert!(snap.read_pct_ns[0] >= 999 && snap.read_pct_ns[3] >= 2990);
        let j = snap.to_spdk_json("M0");
        assert_eq!(j["num_read_ops"], 2);
        assert_eq!(j["bytes_written"], 512);
        assert_eq!(j["io_error"]["media_write"], 1);
        s.reset();
        assert_eq!(s.snapshot(), IoStatSnapshot::default());
    }
}
