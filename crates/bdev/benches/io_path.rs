//! Per-I/O cost of the submit + poll path (null baseline, stats/QoS wrapper, malloc copy).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_bdev::sys::iovec_of;
use sluice_bdev::{layered::Layered, Bdev, IoOp, IoRequest, IoVecs, MallocBdev, NullBdev};

fn one_io(c: &mut Criterion, name: &str, bdev: Arc<dyn Bdev>) {
    let mut ch = bdev.open_channel().unwrap();
    let mut buf = vec![0u8; 4096];
    let iov = IoVecs::one(iovec_of(&mut buf));
    let mut g = c.benchmark_group("io_path");
    const N: u64 = 256;
    g.throughput(Throughput::Elements(N));
    g.bench_function(name, |b| {
        b.iter(|| {
            for t in 0..N {
                let io = IoRequest::with_iov(IoOp::Read, 8192, iov.clone(), t);
                ch.submit(io).unwrap();
                let mut n = 0;
                while n == 0 {
                    n = ch.poll(&mut |c| {
                        std::hint::black_box(c);
                    });
                }
            }
        })
    });
    // Batched: 32 submits, then poll until all are back (how a busy poll thread runs).
    g.bench_function(format!("{name}_qd32"), |b| {
        b.iter(|| {
            for round in 0..N / 32 {
                for t in 0..32 {
                    let io = IoRequest::with_iov(IoOp::Read, 8192, iov.clone(), round * 32 + t);
                    ch.submit(io).unwrap();
                }
                let mut n = 0;
                while n < 32 {
                    n += ch.poll(&mut |c| {
                        std::hint::black_box(c);
                    });
                }
            }
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    one_io(
        c,
        "null_raw_4k_read",
        Arc::new(NullBdev::new("n", 512, 1 << 20, None).unwrap()),
    );
    one_io(
        c,
        "null_layered_4k_read",
        sluice_bdev::null_bdev("n", 1 << 30, 512),
    );
    one_io(
        c,
        "malloc_layered_4k_read",
        Layered::wrap(Arc::new(MallocBdev::new("m", 512, 8192, None).unwrap())),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
