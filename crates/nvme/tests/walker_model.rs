//! Property tests: the PRP walker against the simple reference walker on random guest
//! memory and random list layouts, and the SGL walker against the segment list a
//! random (valid) SGL was built from.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use proptest::prelude::*;
use sluice_nvme::prp::{reference_prp, walk_prp, walk_sgl, Seg, PAGE_SIZE};
use sluice_nvme::GuestMem;
use vm_memory::{Bytes, GuestAddress};

const MEM: u64 = 1 << 20;

fn mem_with(words: &[u64]) -> GuestMem {
    let m = GuestMem::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    for (i, w) in words.iter().enumerate() {
        m.write_obj(*w, GuestAddress(i as u64 * 8)).unwrap();
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random memory contents (mostly page-aligned pointers, some junk) and random
    /// PRP1/PRP2/length: both walkers agree on the segments or on the error.
    #[test]
    fn prp_walker_matches_reference(
        words in prop::collection::vec(
            prop_oneof![
                (0..MEM / PAGE_SIZE).prop_map(|p| p * PAGE_SIZE),
                (0..MEM / 8).prop_map(|q| q * 8),
                any::<u64>(),
            ],
            0..4096,
        ),
        prp1 in 0..MEM + 0x2000,
        prp2 in prop_oneof![(0..MEM / 8).prop_map(|q| q * 8), (0..MEM / PAGE_SIZE).prop_map(|p| p * PAGE_SIZE), any::<u64>()],
        len in 1..(256 * 1024u64),
    ) {
        let m = mem_with(&words);
        let mut got = Vec::new();
        let a = walk_prp(&m, prp1, prp2, len, &mut got).map(|_| got);
        let b = reference_prp(&m, prp1, prp2, len);
        prop_assert_eq!(&a, &b);
        if let Ok(segs) = a {
            prop_assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), len);
        }
    }

    /// A valid SGL built from random data blocks split over random segments is walked back
    /// into exactly those blocks; a wrong total length is always refused.
    #[test]
    fn sgl_walker_matches_model(
        blocks in prop::collection::vec((0..MEM / 2, 1..8192u32), 1..40),
        per_seg in 1..6usize,
    ) {
        let m = GuestMem::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let desc = |a: u64, l: u32, t: u8| {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&a.to_le_bytes());
            d[8..12].copy_from_slice(&l.to_le_bytes());
            d[15] = t << 4;
            d
        };
        // Segments live at MEM/2 + k * 0x1000.
        let chunks: Vec<&[(u64, u32)]> = blocks.chunks(per_seg).collect();
        for (k, chunk) in chunks.iter().enumerate() {
            let at = MEM / 2 + k as u64 * 0x1000;
            for (i, (a, l)) in chunk.iter().enumerate() {
                m.write_slice(&desc(*a, *l, 0), GuestAddress(at + i as u64 * 16)).unwrap();
            }
            if k + 1 < chunks.len() {
                let next = chunks[k + 1].len() as u32 * 16 + if k + 2 < chunks.len() { 16 } else { 0 };
                let t = if k + 2 == chunks.len() { 3 } else { 2 };
                m.write_slice(&desc(at + 0x1000, next, t), GuestAddress(at + chunk.len() as u64 * 16)).unwrap();
            }
        }
        let first_len = chunks[0].len() as u32 * 16 + if chunks.len() > 1 { 16 } else { 0 };
        let first = desc(MEM / 2, first_len, if chunks.len() > 1 { 2 } else { 3 });
        let total: u64 = blocks.iter().map(|b| u64::from(b.1)).sum();
        let mut got = Vec::new();
        walk_sgl(&m, &first, total, &mut got).unwrap();
        let want: Vec<Seg> = blocks.iter().map(|&(addr, l)| Seg { addr, len: u64::from(l) }).collect();
        prop_assert_eq!(got, want);
        let mut v = Vec::new();
        prop_assert!(walk_sgl(&m, &first, total + 1, &mut v).is_err());
        let mut v = Vec::new();
        prop_assert!(walk_sgl(&m, &first, total - 1, &mut v).is_err());
    }
}
