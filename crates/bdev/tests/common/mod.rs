//! Shared helpers for the bdev integration tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use sluice_bdev::sys::iovec_of;
use sluice_bdev::{Bdev, IoChannel, IoCompletion, IoError, IoOp, IoRequest, IoVecs};

/// Tiny deterministic PRNG (xorshift64*).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A 4 KiB-aligned heap buffer.
pub struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}
impl AlignedBuf {
    pub fn new(len: usize, misalign: usize) -> Self {
        let raw = vec![0u8; len + 8192];
        let addr = raw.as_ptr() as usize;
        let off = (4096 - addr % 4096) % 4096 + misalign;
        AlignedBuf { raw, off, len }
    }
    pub fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
    pub fn as_ref(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }
    /// Split into up to `pieces` iovecs at 512-byte boundaries.
    pub fn iovecs(&mut self, pieces: usize) -> IoVecs {
        let len = self.len;
        let s = self.as_mut();
        let mut v = IoVecs::new();
        let step = (len / pieces.max(1)) / 512 * 512;
        let mut start = 0;
        for i in 0..pieces {
            let end = if i + 1 == pieces || step == 0 {
                len
            } else {
                start + step
            };
            v.push(iovec_of(&mut s[start..end]));
            start = end;
            if start == len {
                break;
            }
        }
        v
    }
}

/// Submit (retrying on queue full) and wait for one request.
pub fn run_one(ch: &mut dyn IoChannel, io: IoRequest) -> Result<(), IoError> {
    let tag = io.tag;
    let mut io = io;
    loop {
        match ch.submit(io) {
            Ok(()) => break,
            Err(r) => {
                io = r.io;
                ch.poll(&mut |_| {});
            }
        }
    }
    wait_tags(ch, &[tag], Duration::from_secs(30))[0].1
}

/// Poll until every tag completed; returns (tag, result) in `tags` order.
pub fn wait_tags(
    ch: &mut dyn IoChannel,
    tags: &[u64],
    limit: Duration,
) -> Vec<(u64, Result<(), IoError>)> {
    let start = Instant::now();
    let mut got: Vec<IoCompletion> = Vec::new();
    while got.len() < tags.len() {
        if ch.poll(&mut |c| got.push(c)) == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
        assert!(
            start.elapsed() < limit,
            "I/O did not complete within {limit:?}"
        );
    }
    tags.iter()
        .map(|t| {
            let c = got.iter().find(|c| c.tag == *t).expect("tag completed");
            (c.tag, c.result)
        })
        .collect()
}

/// Write `data` at `off` (one iovec).
pub fn write_at(ch: &mut dyn IoChannel, off: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
    let mut b = AlignedBuf::new(data.len(), 0);
    b.as_mut().copy_from_slice(data);
    let iov = b.iovecs(1);
    run_one(ch, IoRequest::with_iov(IoOp::Write { fua }, off, iov, 1))
}

/// Read `len` bytes at `off`.
pub fn read_at(ch: &mut dyn IoChannel, off: u64, len: usize) -> Result<Vec<u8>, IoError> {
    let mut b = AlignedBuf::new(len, 0);
    let iov = b.iovecs(1);
    run_one(ch, IoRequest::with_iov(IoOp::Read, off, iov, 2))?;
    Ok(b.as_ref().to_vec())
}

/// Random-I/O data-integrity exercise against a shadow copy. `span` limits the tested
/// region (bytes from 0). Checks every read against the shadow, including overwrites,
/// multi-iovec and misaligned buffers, write zeroes/unmap/compare when supported, flush.
pub fn integrity(bdev: &dyn Bdev, span: u64, rounds: usize, seed: u64) {
    let info = bdev.info().clone();
    let bs = u64::from(info.block_size);
    let span = span.min(info.size_bytes()) / bs * bs;
    let max_blocks = (256 * 1024 / bs).max(1);
    let mut shadow = vec![0u8; span as usize];
    let mut ch = bdev.open_channel().unwrap();
    let mut rng = Rng(seed | 1);
    // Start from a known state: zero the span.
    for off in (0..span).step_by(1 << 20) {
        let len = (span - off).min(1 << 20);
        let z = vec![0u8; len as usize];
        write_at(ch.as_mut(), off, &z, false).unwrap();
    }
    let mut tag = 100u64;
    for round in 0..rounds {
        // One batch of non-overlapping requests in flight together.
        let mut batch: Vec<(u64, u64, IoOp, Option<AlignedBuf>, u64)> = Vec::new();
        let n = 1 + rng.below(16) as usize;
        for _ in 0..n {
            let blocks = 1 + rng.below(max_blocks);
            let len = blocks * bs;
            if len > span {
                continue;
            }
            let off = rng.below((span - len) / bs + 1) * bs;
            if batch.iter().any(|(o, l, ..)| off < o + l && *o < off + len) {
                continue;
            }
            let kind = rng.below(10);
            let op = match kind {
                0..=3 => IoOp::Read,
                4..=7 => IoOp::Write { fua: kind == 7 },
                8 if info.caps.write_zeroes => IoOp::WriteZeroes,
                8 if info.caps.unmap => IoOp::Unmap,
                9 if info.caps.compare => IoOp::Compare,
                _ => IoOp::Read,
            };
            let misalign = if rng.below(4) == 0 { 8 } else { 0 };
            let mut buf = op
                .has_data()
                .then(|| AlignedBuf::new(len as usize, misalign));
            if let Some(b) = buf.as_mut() {
                match op {
                    IoOp::Write { .. } => {
                        for x in b.as_mut().iter_mut() {
                            *x = rng.next() as u8;
                        }
                    }
                    IoOp::Compare => b
                        .as_mut()
                        .copy_from_slice(&shadow[off as usize..(off + len) as usize]),
                    _ => b.as_mut().fill(0xee),
                }
            }
            tag += 1;
            batch.push((off, len, op, buf, tag));
        }
        let mut tags = Vec::new();
        for (off, len, op, buf, t) in batch.iter_mut() {
            let io = match buf.as_mut() {
                Some(b) => {
                    let pieces = 1 + (*t % 6) as usize;
                    IoRequest::with_iov(*op, *off, b.iovecs(pieces), *t)
                }
                None => IoRequest::new(*op, *off, *len, *t),
            };
            let mut io = io;
            loop {
                match ch.submit(io) {
                    Ok(()) => break,
                    Err(r) => {
                        io = r.io;
                        std::thread::sleep(Duration::from_micros(10));
                    }
                }
            }
            tags.push(*t);
        }
        let results = wait_tags(ch.as_mut(), &tags, Duration::from_secs(30));
        for ((off, len, op, buf, _), (_, res)) in batch.iter().zip(results) {
            assert_eq!(res, Ok(()), "round {round}: {op:?} at {off} len {len}");
            let r = *off as usize..(*off + *len) as usize;
            match op {
                IoOp::Read => {
                    let got = buf.as_ref().unwrap().as_ref();
                    assert!(
                        got == &shadow[r.clone()],
                        "round {round}: read mismatch at {off} len {len}"
                    );
                }
                IoOp::Write { .. } => shadow[r].copy_from_slice(buf.as_ref().unwrap().as_ref()),
                IoOp::WriteZeroes | IoOp::Unmap => shadow[r].fill(0),
                _ => {}
            }
        }
        if round % 16 == 15 {
            assert_eq!(
                run_one(ch.as_mut(), IoRequest::new(IoOp::Flush, 0, 0, 7)),
                Ok(())
            );
        }
    }
    // Compare mismatch is detected.
    if info.caps.compare {
        let mut b = AlignedBuf::new(bs as usize, 0);
        b.as_mut().copy_from_slice(&shadow[..bs as usize]);
        b.as_mut()[3] ^= 0xff;
        let iov = b.iovecs(1);
        assert_eq!(
            run_one(ch.as_mut(), IoRequest::with_iov(IoOp::Compare, 0, iov, 9)),
            Err(IoError::CompareMismatch)
        );
    }
    // Final full read-back.
    for off in (0..span).step_by(1 << 20) {
        let len = (span - off).min(1 << 20) as usize;
        let got = read_at(ch.as_mut(), off, len).unwrap();
        assert!(
            got == shadow[off as usize..off as usize + len],
            "final mismatch at {off}"
        );
    }
    // Out of range and invalid requests are errors, not panics.
    let end = info.size_bytes();
    assert_eq!(
        run_one(ch.as_mut(), IoRequest::new(IoOp::WriteZeroes, end, bs, 11))
            .err()
            .filter(|_| info.caps.write_zeroes),
        info.caps.write_zeroes.then_some(IoError::OutOfRange)
    );
    let mut b = AlignedBuf::new(bs as usize, 0);
    let mut io = IoRequest::with_iov(IoOp::Read, 0, b.iovecs(1), 12);
    io.len = bs * 2;
    assert_eq!(run_one(ch.as_mut(), io), Err(IoError::Invalid));
    assert_eq!(ch.in_flight(), 0);
}

/// `threads` channels on `threads` threads write distinct patterns to disjoint regions at
/// the same time, then each verifies its region (and the others' after a join).
pub fn concurrent_channels(bdev: std::sync::Arc<dyn Bdev>, threads: usize, region: u64) {
    let bs = u64::from(bdev.info().block_size);
    let chunk = (65536 / bs).max(1) * bs;
    std::thread::scope(|s| {
        for t in 0..threads {
            let bdev = std::sync::Arc::clone(&bdev);
            s.spawn(move || {
                let mut ch = bdev.open_channel().unwrap();
                let base = t as u64 * region;
                let mut bufs: Vec<AlignedBuf> = (0..region / chunk)
                    .map(|i| {
                        let mut b = AlignedBuf::new(chunk as usize, 0);
                        b.as_mut().fill((t * 31 + i as usize) as u8);
                        b
                    })
                    .collect();
                let mut tags = Vec::new();
                for (i, b) in bufs.iter_mut().enumerate() {
                    let io = IoRequest::with_iov(
                        IoOp::Write { fua: false },
                        base + i as u64 * chunk,
                        b.iovecs(1 + i % 3),
                        i as u64,
                    );
                    ch.submit(io).unwrap();
                    tags.push(i as u64);
                }
                for (_, r) in wait_tags(ch.as_mut(), &tags, Duration::from_secs(30)) {
                    assert_eq!(r, Ok(()));
                }
            });
        }
    });
    let mut ch = bdev.open_channel().unwrap();
    for t in 0..threads {
        for i in 0..region / chunk {
            let got = read_at(ch.as_mut(), t as u64 * region + i * chunk, chunk as usize).unwrap();
            let want = (t * 31 + i as usize) as u8;
            assert!(got.iter().all(|&x| x == want), "thread {t} chunk {i}");
        }
    }
}
