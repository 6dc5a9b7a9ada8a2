//! Data-integrity tests for the local backends (malloc, file with both engines, buffered
//! and O_DIRECT, error wrapper pass-through).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::Arc;

use sluice_bdev::{
    layered::Layered, Bdev, ErrorInjectBdev, FileBdev, FileEngine, FileOptions, MallocBdev,
};

fn file_bdev(
    engine: FileEngine,
    direct: bool,
    size: u64,
) -> (tempfile::NamedTempFile, Arc<dyn Bdev>) {
    let f = tempfile::NamedTempFile::new_in(std::env::temp_dir()).unwrap();
    f.as_file().set_len(size).unwrap();
    let mut o = FileOptions::new("f0", f.path());
    o.engine = engine;
    o.direct = direct;
    let b = FileBdev::open(&o).unwrap();
    // The temp dir is on a file system with O_DIRECT (ext4/xfs/tmpfs >= 6.6).
    assert_eq!(b.is_direct(), direct, "O_DIRECT availability");
    assert_eq!(
        b.engine(),
        if engine == FileEngine::ThreadPool {
            FileEngine::ThreadPool
        } else {
            FileEngine::Uring
        }
    );
    (f, Layered::wrap(Arc::new(b)))
}

#[test]
fn malloc_integrity() {
    let b = Layered::wrap(Arc::new(MallocBdev::new("m0", 512, 16384, None).unwrap()));
    common::integrity(b.as_ref(), 8 << 20, 200, 1);
    let b4k = Layered::wrap(Arc::new(MallocBdev::new("m1", 4096, 2048, None).unwrap()));
    common::integrity(b4k.as_ref(), 8 << 20, 100, 2);
}

#[test]
fn file_uring_direct_integrity() {
    let (_f, b) = file_bdev(FileEngine::Uring, true, 16 << 20);
    common::integrity(b.as_ref(), 8 << 20, 200, 3);
}

#[test]
fn file_uring_buffered_integrity() {
    let (_f, b) = file_bdev(FileEngine::Auto, false, 16 << 20);
    common::integrity(b.as_ref(), 8 << 20, 120, 4);
}

#[test]
fn file_pool_integrity() {
    let (_f, b) = file_bdev(FileEngine::ThreadPool, true, 16 << 20);
    common::integrity(b.as_ref(), 8 << 20, 150, 5);
}

#[test]
fn error_wrapper_passes_through() {
    let inner: Arc<dyn Bdev> = Arc::new(MallocBdev::new("m2", 512, 8192, None).unwrap());
    let e = Layered::wrap(Arc::new(ErrorInjectBdev::new("EE_m2", inner)));
    common::integrity(e.as_ref(), 4 << 20, 60, 6);
}

#[test]
fn file_open_errors_are_clear() {
    let e = FileBdev::open(&FileOptions::new("x", "/nonexistent/disk.img")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/disk.img"), "{e}");
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(100).unwrap();
    let e = FileBdev::open(&FileOptions::new("x", f.path())).unwrap_err();
    assert!(e.to_string().contains("smaller than one"), "{e}");
    f.as_file().set_len(1 << 20).unwrap();
    let mut o = FileOptions::new("x", f.path());
    o.block_size = Some(1000);
    assert!(FileBdev::open(&o).is_err());
    let e = FileBdev::open(&FileOptions::new("x", "/dev")).unwrap_err();
    assert!(e.to_string().contains("neither"), "{e}");
}

#[test]
fn wait_returns_once_a_completion_is_ready() {
    for engine in [FileEngine::Uring, FileEngine::ThreadPool] {
        let (_f, b) = file_bdev(engine, true, 1 << 20);
        let mut ch = b.open_channel().unwrap();
        // Nothing in flight: returns at once.
        let t = std::time::Instant::now();
        ch.wait(std::time::Duration::from_secs(5));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        let mut buf = common::AlignedBuf::new(4096, 0);
        ch.submit(sluice_bdev::IoRequest::with_iov(
            sluice_bdev::IoOp::Read,
            0,
            buf.iovecs(1),
            1,
        ))
        .unwrap();
        let t = std::time::Instant::now();
        let mut n = 0;
        while n == 0 {
            ch.wait(std::time::Duration::from_secs(5));
            n = ch.poll(&mut |c| assert_eq!(c.result, Ok(())));
            assert!(
                t.elapsed() < std::time::Duration::from_secs(5),
                "{engine:?}"
            );
        }
        assert_eq!(ch.in_flight(), 0);
    }
}

#[test]
fn concurrent_channels_malloc_and_file() {
    let m = Layered::wrap(Arc::new(MallocBdev::new("mc", 512, 8192, None).unwrap()));
    common::concurrent_channels(m, 4, 1 << 20);
    let (_f, b) = file_bdev(FileEngine::Uring, true, 8 << 20);
    common::concurrent_channels(b, 4, 1 << 20);
    let (_f, b) = file_bdev(FileEngine::ThreadPool, true, 8 << 20);
    common::concurrent_channels(b, 4, 1 << 20);
}

#[test]
fn dropping_a_channel_with_io_in_flight_waits_for_the_kernel() {
    for engine in [FileEngine::Uring, FileEngine::ThreadPool] {
        let (_f, b) = file_bdev(engine, true, 4 << 20);
        let mut bufs: Vec<common::AlignedBuf> =
            (0..32).map(|_| common::AlignedBuf::new(65536, 0)).collect();
        let mut ch = b.open_channel().unwrap();
        for (i, buf) in bufs.iter_mut().enumerate() {
            let op = if i % 2 == 0 {
                sluice_bdev::IoOp::Read
            } else {
                sluice_bdev::IoOp::Write { fua: false }
            };
            let io =
                sluice_bdev::IoRequest::with_iov(op, (i as u64) * 65536, buf.iovecs(2), i as u64);
            ch.submit(io).unwrap();
        }
        let t = std::time::Instant::now();
        drop(ch);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{engine:?}"
        );
        // The buffers are still ours and usable; the bdev still works.
        bufs.clear();
        let mut ch = b.open_channel().unwrap();
        common::write_at(ch.as_mut(), 0, &[1; 4096], false).unwrap();
        assert_eq!(
            common::read_at(ch.as_mut(), 0, 4096).unwrap(),
            vec![1; 4096]
        );
    }
}
