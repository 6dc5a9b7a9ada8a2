//! Random-read load generator for a file bdev (compare with `fio`, see
//! `bench/fio_compare.sh`).
//!
//! `cargo run --release -p sluice-bdev --example randread -- FILE [SECS] [QD] [BS] [uring|pool] [direct|buffered] [spin|wait]`
//!
//! `spin` busy-polls (how a Sluice poll thread runs); `wait` blocks in
//! `IoChannel::wait` when nothing completed (how fio's io_uring engine waits).
//! prints one line: `iops=<n> mib_s=<n>`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use sluice_bdev::sys::iovec_of;
use sluice_bdev::{Bdev, FileBdev, FileEngine, FileOptions, IoOp, IoRequest, IoVecs};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .expect("usage: randread FILE [SECS] [QD] [BS] [uring|pool] [direct|buffered]");
    let secs: f64 = args.get(2).map_or(5.0, |s| s.parse().unwrap());
    let qd: usize = args.get(3).map_or(32, |s| s.parse().unwrap());
    let bs: usize = args.get(4).map_or(4096, |s| s.parse().unwrap());
    let engine = match args.get(5).map(String::as_str) {
        Some("pool") => FileEngine::ThreadPool,
        _ => FileEngine::Uring,
    };
    let mut o = FileOptions::new("bench", path);
    o.engine = engine;
    o.direct = args.get(6).map(String::as_str) != Some("buffered");
    o.read_only = true;
    o.queue_depth = qd as u32;
    let wait = args.get(7).map(String::as_str) == Some("wait");
    let bdev = FileBdev::open(&o).unwrap();
    assert!(
        !o.direct || bdev.is_direct(),
        "O_DIRECT not available on this file system"
    );
    let blocks = bdev.info().size_bytes() / bs as u64;
    let mut ch = bdev.open_channel().unwrap();

    // One 4 KiB-aligned buffer per slot.
    let mut raw = vec![0u8; qd * bs + 4096];
    let shift = (4096 - raw.as_ptr() as usize % 4096) % 4096;
    let bufs: Vec<IoVecs> = raw[shift..shift + qd * bs]
        .chunks_mut(bs)
        .map(|c| IoVecs::one(iovec_of(c)))
        .collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_off = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % blocks) * bs as u64
    };
    let submit = |ch: &mut Box<dyn sluice_bdev::IoChannel>, slot: usize, off: u64| {
        let io = IoRequest::with_iov(IoOp::Read, off, bufs[slot].clone(), slot as u64);
        ch.submit(io).unwrap();
    };
    for slot in 0..qd {
        submit(&mut ch, slot, next_off());
    }
    let dur = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut done = 0u64;
    let mut errors = 0u64;
    let mut ready: Vec<usize> = Vec::with_capacity(qd);
    while start.elapsed() < dur {
        ch.poll(&mut |c| {
            if c.result.is_err() {
                errors += 1;
            }
            ready.push(c.tag as usize);
        });
        done += ready.len() as u64;
        if ready.is_empty() && wait {
            ch.wait(Duration::from_millis(10));
        }
        for slot in ready.drain(..) {
            submit(&mut ch, slot, next_off());
        }
    }
    let el = start.elapsed().as_secs_f64();
    while ch.in_flight() > 0 {
        ch.poll(&mut |_| {});
    }
    assert_eq!(errors, 0, "I/O errors during the run");
    drop(raw);
    let iops = done as f64 / el;
    println!("iops={:.0} mib_s={:.1}", iops, iops * bs as f64 / 1048576.0);
}
