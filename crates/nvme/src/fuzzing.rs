//! Fuzz entry points (the cargo-fuzz targets in `fuzz/` are thin wrappers around these).
//! Each function must never panic for any input.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use crate::ctrl::{Controller, ControllerConfig, NoInterrupts};
use crate::prp::{reference_prp, walk_prp, walk_sgl, IovSink, Seg};
use crate::spec::Sqe;
use crate::testkit::FakeHost;
use crate::GuestMem;
use sluice_bdev::MallocBdev;

const MEM: usize = 1 << 20;

fn u64_at(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, x) in b.iter_mut().enumerate() {
        *x = d.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

/// Walk PRPs and SGLs built from `data` over a 1 MiB guest memory whose contents are the
/// rest of `data`; cross-checks the PRP walker against [`reference_prp`].
///
/// Panics (deliberately: it is the fuzz oracle) when the two walkers disagree.
#[allow(clippy::panic)]
pub fn fuzz_walker(data: &[u8]) {
    let Ok(mem) = GuestMem::from_ranges(&[
        (GuestAddress(0), MEM / 2),
        (GuestAddress(MEM as u64), MEM / 2),
    ]) else {
        return;
    };
    let body = data.get(32..).unwrap_or(&[]);
    let _ = mem.write_slice(
        body.get(..body.len().min(MEM / 2)).unwrap_or(&[]),
        GuestAddress(0),
    );
    // Addresses are folded into a small window so they often hit mapped memory.
    let fold = |v: u64| v % (2 * MEM as u64);
    let prp1 = fold(u64_at(data, 0));
    let prp2 = fold(u64_at(data, 8))
        & !if data.get(24).copied().unwrap_or(0) & 1 == 0 {
            0
        } else {
            0xfff
        };
    let len = u64_at(data, 16) % (256 * 1024);
    let mut a: Vec<Seg> = Vec::new();
    let ra = walk_prp(&mem, prp1, prp2, len, &mut a);
    let rb = reference_prp(&mem, prp1, prp2, len);
    match (&ra, &rb) {
        (Ok(()), Ok(b)) => assert_eq!(&a, b, "walker and reference disagree"),
        (Err(x), Err(y)) => assert_eq!(x, y, "different errors"),
        _ => panic!("walker {ra:?} vs reference {rb:?}"),
    }
    let mut iov = sluice_bdev::IoVecs::new();
    let mut sink = IovSink::new(&mem, &mut iov, 64);
    if walk_prp(&mem, prp1, prp2, len, &mut sink).is_ok() {
        sink.finish();
    }
    let mut desc = [0u8; 16];
    for (i, d) in desc.iter_mut().enumerate() {
        *d = data.get(i).copied().unwrap_or(0);
    }
    let mut segs: Vec<Seg> = Vec::new();
    if walk_sgl(&mem, &desc, len, &mut segs).is_ok() {
        assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), len);
    }
    let mut sink = IovSink::new(&mem, &mut iov, 64);
    if walk_sgl(&mem, &desc, len, &mut sink).is_ok() {
        sink.finish();
    }
}

/// Feed `data` as a stream of commands to a live controller: byte 0 of each 65-byte
/// record picks the queue (admin or I/O 1), the next 64 bytes are the SQE. Registers and
/// doorbells are poked too when the selector asks for it.
pub fn fuzz_commands(data: &[u8]) {
    let cfg = ControllerConfig {
        max_io_queues: 4,
        max_queue_depth: 64,
        max_namespaces: 4,
        ..Default::default()
    };
    let Ok(mut c) = Controller::new(cfg, Arc::new(NoInterrupts)) else {
        return;
    };
    if let Ok(b) = MallocBdev::new("fuzz0", 512, 2048, None) {
        let _ = c.add_namespace(Some(1), Arc::new(b));
    }
    if let Ok(b) = MallocBdev::new("fuzz1", 4096, 64, None) {
        let _ = c.add_namespace(Some(2), Arc::new(b));
    }
    let mut h = FakeHost::new(MEM);
    if h.enable(&mut c, 16) & 1 == 0 || !h.create_pair(&mut c, 1, 16) {
        return;
    }
    for rec in data.chunks(65) {
        let sel = rec.first().copied().unwrap_or(0);
        let mut raw = [0u8; 64];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = rec.get(i + 1).copied().unwrap_or(0);
        }
        let mut s = Sqe::from_bytes(&raw);
        // Keep pointers inside or near guest memory so deeper paths are reached.
        for i in [6usize, 8] {
            if let Some(d) = s.dw.get_mut(i + 1) {
                *d &= 0x1f;
            }
        }
        match sel % 8 {
            0..=2 => {
                h.submit(&mut c, 0, s, true);
            }
            3..=5 => {
                h.submit(&mut c, 1, s, true);
            }
            6 => {
                // Raw doorbell / register write.
                let off = u64::from(s.dw[0] % 0x2000) & !3;
                let _ = c.bar0_write(off, &s.dw[1].to_le_bytes());
            }
            _ => {
                let off = u64::from(s.dw[0] % 0x1000) & !3;
                let mut b = [0u8; 4];
                let _ = c.bar0_read(off, &mut b);
            }
        }
        for _ in 0..2 {
            c.poll();
        }
        while h.try_reap(&mut c, 0).is_some() {}
        while h.try_reap(&mut c, 1).is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_entry_points_accept_garbage() {
        let mut seed = 0x1234_5678_u64;
        let mut buf = vec![0u8; 4096];
        for _ in 0..20 {
            for b in buf.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            fuzz_walker(&buf);
            fuzz_commands(&buf[..65 * 8]);
        }
        fuzz_walker(&[]);
        fuzz_commands(&[]);
    }
}
