//! Adaptive poll mode trade-off: idle CPU of a poll thread with one enabled, idle
//! controller versus the latency of the first command after an idle period, with the
//! doorbell written straight into the doorbell page (mappable BAR0: nothing wakes the
//! thread, it notices the write at its next poll).
//!
//! ```text
//! cargo bench -p sluice-nvme --bench poll_idle            # all settings, ~30 s
//! SLUICE_POLL_IDLE_SECS=5 cargo bench -p sluice-nvme --bench poll_idle
//! ```
//! Idle CPU is process CPU time (the main thread sleeps meanwhile) over the idle window;
//! wake latency is doorbell store -> CQE visible, after 10-30 ms of idleness (the thread
//! is then at its longest sleep), and "warm" right after a previous completion.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::time::{clock_gettime, ClockId};
use sluice_bdev::NullBdev;
use sluice_nvme::spec::io;
use sluice_nvme::testkit::{rw, FakeHost};
use sluice_nvme::{Controller, ControllerConfig, NoInterrupts, PollMode, Poller};

const QSIZE: u16 = 64;

fn cpu_now() -> Duration {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

struct Host {
    h: FakeHost,
    shared: Arc<sluice_nvme::Shared>,
    sq: u64,
    cq: u64,
    tail: u16,
    head: u16,
    phase: bool,
    buf: u64,
}

impl Host {
    /// Submit one 4 KiB read through the doorbell page and wait for its CQE.
    fn one(&mut self) -> Duration {
        let s = rw(io::READ, 1, 0, 8, self.buf, 0);
        self.h
            .write(self.sq + u64::from(self.tail) * 64, &s.to_bytes());
        self.tail = (self.tail + 1) % QSIZE;
        let start = Instant::now();
        self.shared.doorbells.store(2, u32::from(self.tail));
        loop {
            let raw = self.h.read(self.cq + u64::from(self.head) * 16, 16);
            if (raw[14] & 1 == 1) == self.phase {
                let lat = start.elapsed();
                self.head = (self.head + 1) % QSIZE;
                if self.head == 0 {
                    self.phase = !self.phase;
                }
                self.shared.doorbells.store(3, u32::from(self.head));
                return lat;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "no completion");
            std::hint::spin_loop();
        }
    }
}

fn run(name: &str, mode: PollMode, idle: Duration) {
    let mut c = Controller::new(ControllerConfig::default(), Arc::new(NoInterrupts)).unwrap();
    c.add_namespace(
        Some(1),
        Arc::new(NullBdev::new("null0", 512, 1 << 20, None).unwrap()),
    )
    .unwrap();
    let mut h = FakeHost::new(16 << 20);
    assert_eq!(h.enable(&mut c, 32) & 1, 1);
    assert!(h.create_pair(&mut c, 1, QSIZE));
    let q = h.queues[1].clone().unwrap();
    let buf = h.alloc(4096);
    let shared = c.shared().clone();
    let (mut poller, ph) = Poller::new();
    let t = std::thread::spawn(move || poller.run(mode));
    let handle = ph.attach(c).unwrap();
    let mut host = Host {
        h,
        shared,
        sq: q.sq,
        cq: q.cq,
        tail: 0,
        head: 0,
        phase: true,
        buf,
    };
    // Idle CPU (after the spin streak has ended).
    std::thread::sleep(Duration::from_millis(100));
    let (c0, w0) = (cpu_now(), Instant::now());
    std::thread::sleep(idle);
    let cpu = (cpu_now() - c0).as_secs_f64() / w0.elapsed().as_secs_f64() * 100.0;
    // Wake latency after idleness, and warm latency.
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..40u64 {
        std::thread::sleep(Duration::from_millis(10 + (i * 7) % 20));
        cold.push(host.one());
        warm.push(host.one());
    }
    cold.sort();
    warm.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = cold.iter().map(|d| us(*d)).sum::<f64>() / cold.len() as f64;
    println!(
        "{name:<34} idle CPU {cpu:6.2} %   wake latency mean {mean:7.0} us  p50 {:7.0} us  max {:7.0} us   warm p50 {:5.1} us",
        us(cold[cold.len() / 2]),
        us(*cold.last().unwrap()),
        us(warm[warm.len() / 2]),
    );
    drop(handle);
    ph.stop();
    t.join().unwrap();
}

fn main() {
    // `cargo test --benches` passes --bench-less args; run quickly there.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs: u64 = std::env::var("SLUICE_POLL_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0 } else { 3 });
    if secs == 0 {
        return;
    }
    let idle = Duration::from_secs(secs);
    let adaptive = |spin_polls: u32, us: u64| PollMode::Adaptive {
        spin_polls,
        max_sleep: Duration::from_micros(us),
    };
    run("default", PollMode::default(), idle);
    for us in [250, 1000, 2000, 4000] {
        run(
            &format!("adaptive spin 10000, max {us} us"),
            adaptive(10_000, us),
            idle,
        );
    }
    // Last: a busy thread burns the CPU quota of a shared machine and skews what follows.
    run("busy", PollMode::Busy, idle);
}
