//! Property tests: request validation never panics and accepts exactly the well-formed
//! requests; iovec copies match a flat reference for any split.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use proptest::prelude::*;
use sluice_bdev::sys::{copy_from_iovecs, copy_to_iovecs, iovec_of, iovecs_equal};
use sluice_bdev::{null_bdev, IoError, IoOp, IoRequest, IoVec, IoVecs};

fn op_strategy() -> impl Strategy<Value = IoOp> {
    prop_oneof![
        Just(IoOp::Read),
        any::<bool>().prop_map(|fua| IoOp::Write { fua }),
        Just(IoOp::Flush),
        Just(IoOp::WriteZeroes),
        Just(IoOp::Unmap),
        Just(IoOp::Compare),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn validation_matches_the_rules(
        op in op_strategy(),
        offset in prop_oneof![0u64..1 << 21, any::<u64>()],
        len in prop_oneof![0u64..1 << 16, any::<u64>()],
        iov_lens in proptest::collection::vec(0usize..9000, 0..6),
    ) {
        const SIZE: u64 = 1 << 20;
        let bdev = null_bdev("p", SIZE, 512);
        let mut ch = bdev.open_channel().unwrap();
        let mut backing = vec![0u8; iov_lens.iter().sum::<usize>()];
        let mut iov = IoVecs::new();
        let mut rest = backing.as_mut_slice();
        for l in &iov_lens {
            let (a, b) = rest.split_at_mut(*l);
            iov.push(iovec_of(a));
            rest = b;
        }
        let total: u64 = iov_lens.iter().map(|l| *l as u64).sum();
        let req = IoRequest { op, offset, len, iov, tag: 9, keepalive: None };
        ch.submit(req).unwrap();
        let mut got = None;
        ch.poll(&mut |c| got = Some(c.result));
        let got = got.unwrap();
        let expect = if op == IoOp::Compare {
            Err(IoError::Unsupported)
        } else if op == IoOp::Flush {
            Ok(())
        } else if len == 0 || offset % 512 != 0 || len % 512 != 0 {
            Err(IoError::Invalid)
        } else if offset.checked_add(len).is_none_or(|e| e > SIZE) {
            Err(IoError::OutOfRange)
        } else if op.has_data() && total != len {
            Err(IoError::Invalid)
        } else {
            Ok(())
        };
        prop_assert_eq!(got, expect);
    }

    #[test]
    fn iovec_copies_match_flat_reference(
        lens in proptest::collection::vec(1usize..64, 1..10),
        skip in 0usize..100,
        seed in any::<u8>(),
    ) {
        let total: usize = lens.iter().sum();
        let mut backing = vec![0u8; total];
        let mut iov = IoVecs::new();
        {
            let mut rest = backing.as_mut_slice();
            for l in &lens {
                let (a, b) = rest.split_at_mut(*l);
                iov.push(iovec_of(a));
                rest = b;
            }
        }
        let src: Vec<u8> = (0..total + 50).map(|i| (i as u8).wrapping_add(seed)).collect();
        let n = copy_to_iovecs(&iov, skip, &src);
        let expect_n = total.saturating_sub(skip).min(src.len());
        prop_assert_eq!(n, expect_n);
        let mut out = vec![0u8; expect_n];
        prop_assert_eq!(copy_from_iovecs(&iov, skip, &mut out), expect_n);
        prop_assert_eq!(&out[..], &src[..expect_n]);
        prop_assert!(iovecs_equal(&iov, skip, &src[..expect_n]));
        let _: &[IoVec] = iov.as_slice();
        drop(iov);
        prop_assert_eq!(&backing[skip.min(total)..], &src[..expect_n]);
    }
}
