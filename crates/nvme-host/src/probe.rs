//! The machine-limit probe: the minimum work of any NVMe-over-shared-memory target.
//!
//! A "host" thread writes 64-byte entries into a submission ring and publishes its tail
//! (the doorbell); a "target" thread polls the tail, copies each entry out and writes a
//! 16-byte completion with a phase bit; the host polls the phase bit and keeps `depth`
//! entries in flight. Round trips per second at depth 1 and 32 bound what Sluice (target
//! side plus `sluice perf`) can reach on this machine; Sluice's figures are reported as a
//! ratio to this limit measured in the same run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

#[repr(align(64))]
struct Padded(AtomicU64);

struct Rings {
    cap: usize,
    sq: Vec<AtomicU64>,
    cq: Vec<AtomicU64>,
    sq_tail: Padded,
    stop: AtomicBool,
}

/// Result of one probe run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProbeResult {
    /// Entries kept in flight.
    pub depth: usize,
    /// Completed round trips.
    pub round_trips: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Round trips per second.
    pub per_sec: f64,
}

fn pin(core: Option<usize>) {
    if let Some(c) = core {
        let mut set = rustix::thread::CpuSet::new();
        set.set(c);
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
}

fn target(r: &Rings, core: Option<usize>) {
    pin(core);
    let mut head = 0u64;
    let mut phase = 1u64;
    let mut cq_tail = 0usize;
    let mut entry = [0u64; 8];
    let mut idle = 0u32;
    loop {
        let tail = r.sq_tail.0.load(Ordering::Acquire);
        if head == tail {
            idle = idle.wrapping_add(1);
            if idle % 4096 == 0 && r.stop.load(Ordering::Relaxed) {
                return;
            }
            std::hint::spin_loop();
            continue;
        }
        while head != tail {
            let slot = (head as usize % r.cap) * 8;
            for (i, w) in entry.iter_mut().enumerate() {
                *w = r.sq.get(slot + i).map_or(0, |a| a.load(Ordering::Relaxed));
            }
            let c = cq_tail * 2;
            if let (Some(w0), Some(w1)) = (r.cq.get(c), r.cq.get(c + 1)) {
                w0.store(entry[0], Ordering::Relaxed);
                w1.store((entry[1] << 1) | phase, Ordering::Release);
            }
            cq_tail += 1;
            if cq_tail == r.cap {
                cq_tail = 0;
                phase ^= 1;
            }
            head += 1;
        }
    }
}

/// Runs the probe for `duration` with `depth` entries in flight; host on `cores.0`,
/// target on `cores.1` when given.
pub fn ring_probe(depth: usize, duration: Duration, cores: Option<(usize, usize)>) -> ProbeResult {
    let depth = depth.clamp(1, 1024);
    let cap = (depth * 2).next_power_of_two().max(64);
    let rings = Arc::new(Rings {
        cap,
        sq: (0..cap * 8).map(|_| AtomicU64::new(0)).collect(),
        cq: (0..cap * 2).map(|_| AtomicU64::new(0)).collect(),
        sq_tail: Padded(AtomicU64::new(0)),
        stop: AtomicBool::new(false),
    });
    let tr = rings.clone();
    let t = std::thread::spawn(move || target(&tr, cores.map(|c| c.1)));
    pin(cores.map(|c| c.0));
    let r = &*rings;
    let (mut tail, mut cq_head, mut phase, mut outstanding, mut done) =
        (0u64, 0usize, 1u64, 0usize, 0u64);
    let start = Instant::now();
    let mut iter = 0u32;
    loop {
        if outstanding < depth {
            while outstanding < depth {
                let slot = (tail as usize % cap) * 8;
                for i in 0..8 {
                    if let Some(w) = r.sq.get(slot + i) {
                        w.store(tail ^ i as u64, Ordering::Relaxed);
                    }
                }
                tail += 1;
                outstanding += 1;
            }
            r.sq_tail.0.store(tail, Ordering::Release);
        }
        while let Some(w1) = r.cq.get(cq_head * 2 + 1) {
            let v = w1.load(Ordering::Acquire);
            if v & 1 != phase {
                break;
            }
            let _cid = r.cq.get(cq_head * 2).map(|w| w.load(Ordering::Relaxed));
            cq_head += 1;
            if cq_head == cap {
                cq_head = 0;
                phase ^= 1;
            }
            outstanding -= 1;
            done += 1;
        }
        iter = iter.wrapping_add(1);
        if iter % 1024 == 0 && start.elapsed() >= duration {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    rings.stop.store(true, Ordering::Relaxed);
    let _ = t.join();
    ProbeResult {
        depth,
        round_trips: done,
        seconds,
        per_sec: done as f64 / seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_completes_round_trips_at_depth_1_and_32() {
        for depth in [1, 32] {
            let r = ring_probe(depth, Duration::from_millis(50), None);
            assert_eq!(r.depth, depth);
            assert!(r.round_trips > 0, "no round trip at depth {depth}");
            assert!(r.per_sec > 0.0);
        }
    }
}
