//! Per-I/O cost of random 4 KiB reads from a RAM disk of a given size, through the same
//! submit + poll path a poll thread uses (stats/QoS wrapper included).
//!
//! `cargo run --release -p sluice-bdev --example malloc_randread -- [MIB] [SECS] [fill|nofill]`
//!
//! Prints `ns_per_io=<n> max_us=<n>` (max: slowest batch of 32) after an optional fill.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_bdev::layered::Layered;
use sluice_bdev::sys::iovec_of;
use sluice_bdev::{IoOp, IoRequest, IoVecs, MallocBdev};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).map_or(1024, |s| s.parse().unwrap());
    let secs: f64 = args.get(2).map_or(2.0, |s| s.parse().unwrap());
    let fill = args.get(3).map(String::as_str) != Some("nofill");
    let bdev = Layered::wrap(Arc::new(
        MallocBdev::new("m", 512, mib * 2048, None).unwrap(),
    ));
    let mut ch = bdev.open_channel().unwrap();
    let mut buf = vec![0u8; 128 << 10];
    let iov = IoVecs::one(iovec_of(&mut buf));
    let bytes = mib << 20;
    let t0 = Instant::now();
    if fill {
        for off in (0..bytes).step_by(128 << 10) {
            let io = IoRequest::with_iov(IoOp::Write { fua: false }, off, iov.clone(), 0);
            ch.submit(io).unwrap();
            while ch.poll(&mut |_| {}) == 0 {}
        }
        eprintln!("fill {:?}", t0.elapsed());
    }
    // 32 buffers, submitted as one batch and then polled, like a poll thread at QD32.
    let mut small = vec![0u8; 32 * 4096];
    let iovs: Vec<IoVecs> = small
        .chunks_mut(4096)
        .map(|c| IoVecs::one(iovec_of(c)))
        .collect();
    let pages = bytes / 4096;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let (mut n, mut max) = (0u64, Duration::ZERO);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        for iov in &iovs {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let io = IoRequest::with_iov(IoOp::Read, (x % pages) * 4096, iov.clone(), n);
            ch.submit(io).unwrap();
            n += 1;
        }
        let mut got = 0;
        while got < iovs.len() {
            got += ch.poll(&mut |c| assert!(c.result.is_ok()));
        }
        max = max.max(t.elapsed());
    }
    let el = start.elapsed();
    println!(
        "ns_per_io={} max_us={}",
        el.as_nanos() / u128::from(n),
        max.as_micros()
    );
}
