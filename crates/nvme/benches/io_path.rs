//! Single-threaded I/O path benchmark: the host writes a batch of 4 KiB Read SQEs into
//! shared guest memory and rings one doorbell; `Controller::poll` fetches, parses, walks
//! PRPs, submits to a null bdev, reaps and posts CQEs; the host consumes the CQEs and rings
//! the CQ head doorbell. Reports IOPS (criterion throughput).
//!
//! Instruction count per I/O (target side only):
//! ```text
//! SLUICE_NVME_BENCH_IOS=1000000 valgrind --tool=callgrind \
//!     --toggle-collect='*Controller::poll_with*' target-*/release/deps/io_path-<hash>
//! ```
//! then divide the reported `Collected` Ir by the number of I/Os.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::sync::Arc;

use criterion::{criterion_group, Criterion, Throughput};
use sluice_bdev::NullBdev;
use sluice_nvme::spec::io;
use sluice_nvme::testkit::{rw, FakeHost};
use sluice_nvme::{Controller, ControllerConfig, NoInterrupts};
use vm_memory::{Bytes, GuestAddress};

const QSIZE: u16 = 256;
const BATCH: u16 = 32;

struct Rig {
    c: Controller,
    h: FakeHost,
    sq: u64,
    cq: u64,
    tail: u16,
    head: u16,
    phase: bool,
    buf: u64,
}

impl Rig {
    fn new() -> Rig {
        let cfg = ControllerConfig {
            max_queue_depth: u32::from(QSIZE),
            ..Default::default()
        };
        let mut c = Controller::new(cfg, Arc::new(NoInterrupts)).expect("controller");
        let bdev = NullBdev::new("null0", 512, 1 << 24, None).expect("null bdev");
        c.add_namespace(Some(1), Arc::new(bdev)).expect("namespace");
        let mut h = FakeHost::new(64 << 20);
        assert_eq!(h.enable(&mut c, 32) & 1, 1);
        assert!(h.create_pair(&mut c, 1, QSIZE));
        let q = h.queues[1].clone().expect("queue");
        let buf = h.alloc(4096 * u64::from(QSIZE));
        Rig {
            c,
            h,
            sq: q.sq,
            cq: q.cq,
            tail: 0,
            head: 0,
            phase: true,
            buf,
        }
    }

    /// Submit `n` 4 KiB reads, ring once, poll until all complete, consume the CQEs.
    fn batch(&mut self, n: u16) {
        for i in 0..n {
            let slot = self.tail;
            let mut s = rw(
                io::READ,
                1,
                u64::from(slot) * 8,
                8,
                self.buf + u64::from(slot) * 4096,
                0,
            );
            s.dw[0] |= u32::from(i) << 16;
            self.h
                .mem
                .write_slice(&s.to_bytes(), GuestAddress(self.sq + u64::from(slot) * 64))
                .expect("sqe");
            self.tail = (self.tail + 1) % QSIZE;
        }
        self.c.shared().doorbells.store(2, u32::from(self.tail));
        let mut done = 0;
        while done < n {
            self.c.poll();
            loop {
                let at = self.cq + u64::from(self.head) * 16 + 12;
                let dw3: u32 = self.h.mem.read_obj(GuestAddress(at)).expect("cqe");
                if (dw3 >> 16) & 1 != u32::from(self.phase) {
                    break;
                }
                self.head += 1;
                if self.head == QSIZE {
                    self.head = 0;
                    self.phase = !self.phase;
                }
                done += 1;
            }
            self.c.shared().doorbells.store(3, u32::from(self.head));
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut rig = Rig::new();
    let mut g = c.benchmark_group("nvme_io_path");
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    g.bench_function("read_4k_null_batch32", |b| b.iter(|| rig.batch(BATCH)));
    g.throughput(Throughput::Elements(1));
    g.bench_function("read_4k_null_qd1", |b| b.iter(|| rig.batch(1)));
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    if let Some(n) = std::env::var("SLUICE_NVME_BENCH_IOS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        // Fixed work for callgrind / perf stat.
        let mut rig = Rig::new();
        let mut left = n;
        while left > 0 {
            let k = left.min(u64::from(BATCH)) as u16;
            rig.batch(k);
            left -= u64::from(k);
        }
        println!("{n} I/Os done");
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
