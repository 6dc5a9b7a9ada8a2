//! Error paths: injected errors surface as the right `IoError` (and NVMe status), only for
//! the chosen op type and count; stats count them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::Arc;

use sluice_bdev::rpc::{bdev_error_create, bdev_error_inject, InjectErrorParams};
use sluice_bdev::{layered::Layered, Bdev, IoError, IoOp, IoRequest, MallocBdev};

#[test]
fn injected_read_failures_surface_as_media_read() {
    let base: Arc<dyn Bdev> =
        Layered::wrap(Arc::new(MallocBdev::new("M", 512, 2048, None).unwrap()));
    let (ee, handle) = bdev_error_create(base);
    let mut ch = ee.open_channel().unwrap();
    common::write_at(ch.as_mut(), 0, &[0x5a; 4096], false).unwrap();

    let p: InjectErrorParams = serde_json::from_value(
        serde_json::json!({"name": "EE_M", "io_type": "read", "error_type": "failure", "num": 2}),
    )
    .unwrap();
    bdev_error_inject(&handle, &p).unwrap();
    // Writes are not affected.
    common::write_at(ch.as_mut(), 4096, &[1; 512], false).unwrap();
    for _ in 0..2 {
        let e = common::read_at(ch.as_mut(), 0, 4096).unwrap_err();
        assert_eq!(e, IoError::MediaRead);
        assert_eq!(e.nvme_status(), (2, 0x81));
    }
    assert_eq!(
        common::read_at(ch.as_mut(), 0, 4096).unwrap(),
        vec![0x5a; 4096]
    );

    handle.inject(sluice_bdev::InjectOpType::Write, IoError::MediaWrite, 1);
    let e = common::write_at(ch.as_mut(), 0, &[9; 512], true).unwrap_err();
    assert_eq!(e.nvme_status(), (2, 0x80));
    // The failed write did not reach the media.
    assert_eq!(
        common::read_at(ch.as_mut(), 0, 512).unwrap(),
        vec![0x5a; 512]
    );

    let p: InjectErrorParams = serde_json::from_value(
        serde_json::json!({"name": "EE_M", "io_type": "flush", "error_type": "nomem"}),
    )
    .unwrap();
    bdev_error_inject(&handle, &p).unwrap();
    let r = common::run_one(ch.as_mut(), IoRequest::new(IoOp::Flush, 0, 0, 5));
    assert_eq!(r, Err(IoError::Internal));
    assert_eq!(r.unwrap_err().nvme_status(), (0, 0x06));

    let snap = ee.stats().unwrap().snapshot();
    assert_eq!(snap.total_errors(), 4);
    assert!(snap.errors.contains(&("media_read", 2)));
}

#[test]
fn bad_requests_get_precise_errors() {
    let b: Arc<dyn Bdev> = Layered::wrap(Arc::new(MallocBdev::new("M", 4096, 16, None).unwrap()));
    let mut ch = b.open_channel().unwrap();
    // Unaligned offset.
    let mut buf = common::AlignedBuf::new(4096, 0);
    let r = common::run_one(
        ch.as_mut(),
        IoRequest::with_iov(IoOp::Read, 512, buf.iovecs(1), 1),
    );
    assert_eq!(r, Err(IoError::Invalid));
    // Beyond the end.
    let r = common::run_one(
        ch.as_mut(),
        IoRequest::with_iov(IoOp::Read, 16 * 4096, buf.iovecs(1), 2),
    );
    assert_eq!(r, Err(IoError::OutOfRange));
    assert_eq!(IoError::OutOfRange.nvme_status(), (0, 0x80));
    // Offset + len overflows u64.
    let r = common::run_one(
        ch.as_mut(),
        IoRequest::new(IoOp::WriteZeroes, u64::MAX - 4095, 4096, 3),
    );
    assert_eq!(r, Err(IoError::OutOfRange));
    // Null unsupported compare.
    let n = sluice_bdev::null_bdev("N", 1 << 20, 512);
    let mut nch = n.open_channel().unwrap();
    let mut b2 = common::AlignedBuf::new(512, 0);
    let r = common::run_one(
        nch.as_mut(),
        IoRequest::with_iov(IoOp::Compare, 0, b2.iovecs(1), 4),
    );
    assert_eq!(r, Err(IoError::Unsupported));
}
