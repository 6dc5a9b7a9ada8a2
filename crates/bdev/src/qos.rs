//! Per-bdev QoS: token buckets for IOPS and bandwidth (SPDK `bdev_set_qos_limit`).
//!
//! Limits are shared by all channels of a bdev. A request that finds no tokens is held by
//! its channel (not failed) and submitted later from `poll()`. Buckets allow a small
//! burst (10 ms worth) and let one request overdraw (debt), so large I/Os are never
//! starved and the long-run rate is exact.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::IoOp;

/// Limits in SPDK's `bdev_set_qos_limit` units. `None`: leave unchanged; `Some(0)`: no
/// limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QosSettings {
    /// Read + write I/Os per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rw_ios_per_sec: Option<u64>,
    /// Read + write MiB per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rw_mbytes_per_sec: Option<u64>,
    /// Read MiB per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r_mbytes_per_sec: Option<u64>,
    /// Write MiB per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w_mbytes_per_sec: Option<u64>,
}

/// Effective limits (0 = unlimited), bytes per second for bandwidth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QosRates {
    /// I/Os per second (reads + writes).
    pub rw_ios: u64,
    /// Bytes per second (reads + writes).
    pub rw_bytes: u64,
    /// Read bytes per second.
    pub r_bytes: u64,
    /// Write bytes per second.
    pub w_bytes: u64,
}

const MIB: u64 = 1024 * 1024;
/// Burst allowance in seconds: tokens accumulate while idle up to this much, which also
/// absorbs a poll thread being descheduled for a while (no lost budget on busy hosts).
const BURST_SECS: f64 = 0.1;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    rate: f64,
    tokens: f64,
}

impl Bucket {
    fn set(&mut self, rate: u64) {
        self.rate = rate as f64;
        // Start empty (plus one request) so a new limit applies at once, without a burst.
        self.tokens = 1.0;
    }
    fn cap(&self) -> f64 {
        (self.rate * BURST_SECS).max(1.0)
    }
    fn refill(&mut self, dt: f64) {
        if self.rate > 0.0 {
            self.tokens = (self.tokens + self.rate * dt).min(self.cap());
        }
    }
    fn ready(&self) -> bool {
        self.rate <= 0.0 || self.tokens > 0.0
    }
    fn take(&mut self, n: f64) {
        if self.rate > 0.0 {
            self.tokens -= n;
        }
    }
}

#[derive(Debug)]
struct State {
    rates: QosRates,
    ios: Bucket,
    rw: Bucket,
    r: Bucket,
    w: Bucket,
    last: Instant,
}

/// The QoS state of one bdev.
#[derive(Debug)]
pub struct QosLimits {
    enabled: AtomicBool,
    state: Mutex<State>,
}

impl Default for QosLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl QosLimits {
    /// No limits.
    pub fn new() -> Self {
        QosLimits {
            enabled: AtomicBool::new(false),
            state: Mutex::new(State {
                rates: QosRates::default(),
                ios: Bucket::default(),
                rw: Bucket::default(),
                r: Bucket::default(),
                w: Bucket::default(),
                last: Instant::now(),
            }),
        }
    }

    /// Apply SPDK-style settings (unset fields unchanged). Takes effect at once, also for
    /// requests already held.
    pub fn set(&self, s: &QosSettings) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let mut r = st.rates;
        if let Some(v) = s.rw_ios_per_sec {
            r.rw_ios = v;
        }
        if let Some(v) = s.rw_mbytes_per_sec {
            r.rw_bytes = v.saturating_mul(MIB);
        }
        if let Some(v) = s.r_mbytes_per_sec {
            r.r_bytes = v.saturating_mul(MIB);
        }
        if let Some(v) = s.w_mbytes_per_sec {
            r.w_bytes = v.saturating_mul(MIB);
        }
        Self::apply(&mut st, r);
        self.enabled
            .store(r != QosRates::default(), Ordering::Release);
    }

    /// Set the exact rates (bytes/s), for finer control than whole MiB.
    pub fn set_rates(&self, r: QosRates) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        Self::apply(&mut st, r);
        self.enabled
            .store(r != QosRates::default(), Ordering::Release);
    }

    fn apply(st: &mut State, r: QosRates) {
        st.rates = r;
        st.ios.set(r.rw_ios);
        st.rw.set(r.rw_bytes);
        st.r.set(r.r_bytes);
        st.w.set(r.w_bytes);
        st.last = Instant::now();
    }

    /// Current rates.
    pub fn rates(&self) -> QosRates {
        self.state.lock().map(|s| s.rates).unwrap_or_default()
    }

    /// SPDK `assigned_rate_limits` object for `bdev_get_bdevs`.
    pub fn assigned_rate_limits_json(&self) -> serde_json::Value {
        let r = self.rates();
        serde_json::json!({
            "rw_ios_per_sec": r.rw_ios,
            "rw_mbytes_per_sec": r.rw_bytes / MIB,
            "r_mbytes_per_sec": r.r_bytes / MIB,
            "w_mbytes_per_sec": r.w_bytes / MIB,
        })
    }

    /// Whether any limit is set (cheap check on the I/O path).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Try to take tokens for one request; `false`: hold it and retry later.
    pub fn try_admit(&self, op: IoOp, len: u64) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return true;
        };
        let now = Instant::now();
        let dt = now.duration_since(st.last).as_secs_f64();
        st.last = now;
        st.ios.refill(dt);
        st.rw.refill(dt);
        st.r.refill(dt);
        st.w.refill(dt);
        let (counts_io, is_read, is_write) = match op {
            IoOp::Read | IoOp::Compare => (true, true, false),
            IoOp::Write { .. } => (true, false, true),
            // Flush / unmap / write zeroes move no data: they count as I/Os only.
            IoOp::Flush | IoOp::Unmap | IoOp::WriteZeroes => (true, false, false),
        };
        let bytes = if is_read || is_write { len as f64 } else { 0.0 };
        let ready = (!counts_io || st.ios.ready())
            && (bytes == 0.0 || st.rw.ready())
            && (!is_read || st.r.ready())
            && (!is_write || st.w.ready());
        if !ready {
            return false;
        }
        if counts_io {
            st.ios.take(1.0);
        }
        if bytes > 0.0 {
            st.rw.take(bytes);
            if is_read {
                st.r.take(bytes);
            } else {
                st.w.take(bytes);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_by_default_and_zero_disables() {
        let q = QosLimits::new();
        assert!(!q.enabled());
        q.set(&QosSettings {
            rw_ios_per_sec: Some(1000),
            ..Default::default()
        });
        assert!(q.enabled());
        q.set(&QosSettings {
            rw_ios_per_sec: Some(0),
            ..Default::default()
        });
        assert!(!q.enabled());
    }

    #[test]
    fn burst_then_hold() {
        let q = QosLimits::new();
        q.set(&QosSettings {
            rw_ios_per_sec: Some(1000),
            ..Default::default()
        });
        // Starts (nearly) empty: one I/O, then holds.
        let admitted = (0..100).filter(|_| q.try_admit(IoOp::Read, 512)).count();
        assert!((1..=3).contains(&admitted), "{admitted}");
        // Idle time refills up to the 100 ms burst = 100 I/Os.
        std::thread::sleep(std::time::Duration::from_millis(250));
        let admitted = (0..100).filter(|_| q.try_admit(IoOp::Read, 512)).count();
        assert!((100..=103).contains(&admitted), "{admitted}");
    }

    #[test]
    fn read_limit_does_not_hold_writes() {
        let q = QosLimits::new();
        q.set(&QosSettings {
            r_mbytes_per_sec: Some(1),
            ..Default::default()
        });
        // One big read overdraws the read bucket...
        assert!(q.try_admit(IoOp::Read, 1 << 20));
        assert!(!q.try_admit(IoOp::Read, 4096));
        // ...writes are unaffected.
        assert!(q.try_admit(IoOp::Write { fua: false }, 1 << 20));
        assert_eq!(q.assigned_rate_limits_json()["r_mbytes_per_sec"], 1);
    }
}
