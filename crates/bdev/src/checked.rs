//! A trusted submit path: check a request once, against the bdev its channel was opened on.
//!
//! Every backend validates what it gets through [`IoChannel::submit`] (range, block
//! alignment, iovec total, op support): any caller may build an [`IoRequest`]. A caller that
//! already knows the request is sane (the NVMe controller checked the LBA range against the
//! namespace, the PRP walker built the iovecs) would pay that check twice. A
//! [`BlockChannel`] makes it one check:
//!
//! 1. [`BlockChannel::check`] validates `(op, lba, blocks)` against the limits the channel
//!    read from its bdev when it was opened (block counts, so no alignment to check) and
//!    returns a [`BlockRange`] bound to this channel;
//! 2. [`BlockChannel::submit_range`] attaches the iovecs, verifies their count and total
//!    against the range, and hands the backend a [`Checked`] request through
//!    [`IoChannel::submit_checked`], which backends may execute without re-validating.
//!
//! Why it stays safe:
//! * [`Checked`] and [`BlockRange`] have private fields: only this module makes them, and
//!   only after the checks above. A range made by another channel is refused (channel id).
//! * A bdev's [`BdevInfo`] never changes after creation (no resize), and a namespace is
//!   removed only when nothing is in flight on it; the limits a channel copied at open are
//!   those of its bdev for the channel's whole life.
//! * [`IoChannel::submit_checked`] defaults to [`IoChannel::submit`] (full validation), so a
//!   backend or wrapper that knows nothing of this path re-validates as before. Wrappers
//!   forward a [`Checked`] to their inner channel only when their limits are the inner
//!   bdev's (stats/QoS, error injection).
//! * A request that fails a check is not dropped: it goes through the ordinary validating
//!   [`IoChannel::submit`], whose backend completes it with the precise [`IoError`].

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::{Bdev, BdevError, IoChannel, IoCompletion, IoError, IoOp, IoRequest, IoVecs, Rejected};

/// A request whose range, op and iovecs were checked against the bdev of the channel it is
/// submitted to. Made only by [`BlockChannel::submit_range`].
#[derive(Debug)]
pub struct Checked(IoRequest);

impl Checked {
    /// The request.
    pub fn request(&self) -> &IoRequest {
        &self.0
    }

    /// The request, for the ordinary (validating) path.
    pub fn into_request(self) -> IoRequest {
        self.0
    }

    /// Replace the caller cookie (wrappers renumber tags); the only field that may change.
    pub fn set_tag(&mut self, tag: u64) {
        self.0.tag = tag;
    }
}

/// A block range checked by one [`BlockChannel`]: op supported and allowed, `blocks > 0`
/// (except Flush), inside the bdev, within its maximum transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRange {
    chan: u64,
    op: IoOp,
    offset: u64,
    len: u64,
}

impl BlockRange {
    /// Operation.
    pub fn op(&self) -> IoOp {
        self.op
    }
    /// Byte offset on the bdev.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Length in bytes (0 for Flush).
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether the length is zero (Flush).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A plain request over this range (for the ordinary, validating path).
    pub fn into_request(
        self,
        iov: IoVecs,
        tag: u64,
        keepalive: Option<Arc<dyn Any + Send + Sync>>,
    ) -> IoRequest {
        IoRequest {
            op: self.op,
            offset: self.offset,
            len: self.len,
            iov,
            tag,
            keepalive,
        }
    }
}

/// Whether `iov` has at most [`crate::MAX_IOVECS`] entries totalling exactly `len` bytes.
#[inline(always)]
fn iov_covers(iov: &IoVecs, len: u64) -> bool {
    let v = iov.as_slice();
    if v.len() > crate::MAX_IOVECS {
        return false;
    }
    let mut total = 0usize;
    for x in v {
        match total.checked_add(x.len()) {
            Some(t) => total = t,
            None => return false,
        }
    }
    u64::try_from(total).is_ok_and(|t| t == len)
}

/// Channel ids (never 0, never reused within a process).
static NEXT_CHANNEL_ID: AtomicU64 = AtomicU64::new(1);

/// One bit per distinct `IoOp` (Write with and without FUA apart: support differs).
#[inline(always)]
fn op_bit(op: IoOp) -> u8 {
    match op {
        IoOp::Read => 1,
        IoOp::Write { fua: false } => 1 << 1,
        IoOp::Write { fua: true } => 1 << 2,
        IoOp::Flush => 1 << 3,
        IoOp::WriteZeroes => 1 << 4,
        IoOp::Unmap => 1 << 5,
        IoOp::Compare => 1 << 6,
    }
}

const ALL_OPS: [IoOp; 7] = [
    IoOp::Read,
    IoOp::Write { fua: false },
    IoOp::Write { fua: true },
    IoOp::Flush,
    IoOp::WriteZeroes,
    IoOp::Unmap,
    IoOp::Compare,
];

/// An [`IoChannel`] with the limits of the bdev it was opened on, offering the checked
/// submit path (module docs) next to the ordinary one.
pub struct BlockChannel {
    chan: Box<dyn IoChannel>,
    id: u64,
    /// `log2(block_size)`.
    shift: u32,
    /// Blocks addressable (the bdev's, clamped so that `blocks << shift` fits in `u64`).
    num_blocks: u64,
    /// Most blocks of one data request.
    max_blocks: u64,
    /// `op_bit`s the bdev supports and allows (read-only drops the writes).
    allowed: u8,
    /// `op_bit`s the bdev supports.
    supported: u8,
}

impl std::fmt::Debug for BlockChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockChannel")
            .field("id", &self.id)
            .field("shift", &self.shift)
            .field("num_blocks", &self.num_blocks)
            .finish_non_exhaustive()
    }
}

impl BlockChannel {
    /// Open a channel on `bdev` and take its limits. The block size must be a power of two
    /// (every backend here enforces it); anything else is refused.
    pub fn open(bdev: &dyn Bdev) -> Result<Self, BdevError> {
        let info = bdev.info();
        if !info.block_size.is_power_of_two() {
            return Err(BdevError::InvalidParam(format!(
                "block_size {} is not a power of two",
                info.block_size
            )));
        }
        let shift = info.block_size.trailing_zeros();
        let num_blocks = info.num_blocks.min(u64::MAX >> shift);
        let max_blocks = match info.max_io_bytes {
            0 => u64::MAX,
            m => m >> shift,
        };
        let (mut allowed, mut supported) = (0u8, 0u8);
        for op in ALL_OPS {
            if !info.caps.supports(op) {
                continue;
            }
            supported |= op_bit(op);
            let denied = info.read_only
                && matches!(op, IoOp::Write { .. } | IoOp::WriteZeroes | IoOp::Unmap);
            if !denied {
                allowed |= op_bit(op);
            }
        }
        Ok(BlockChannel {
            chan: bdev.open_channel()?,
            id: NEXT_CHANNEL_ID.fetch_add(1, Ordering::Relaxed),
            shift,
            num_blocks,
            max_blocks,
            allowed,
            supported,
        })
    }

    /// Check `blocks` blocks at `lba` for `op` (Flush: `lba` and `blocks` ignored). The error
    /// is what the backend would complete the request with. Inlined: a handful of
    /// compares that the caller's own decoding often folds.
    #[inline(always)]
    pub fn check(&self, op: IoOp, lba: u64, blocks: u64) -> Result<BlockRange, IoError> {
        if self.allowed & op_bit(op) == 0 {
            return Err(self.refusal(op));
        }
        if op == IoOp::Flush {
            return Ok(BlockRange {
                chan: self.id,
                op,
                offset: 0,
                len: 0,
            });
        }
        if blocks == 0 {
            return Err(IoError::Invalid);
        }
        if lba
            .checked_add(blocks)
            .is_none_or(|end| end > self.num_blocks)
        {
            return Err(IoError::OutOfRange);
        }
        if op.has_data() && blocks > self.max_blocks {
            return Err(IoError::Invalid);
        }
        // No overflow: lba + blocks <= num_blocks <= u64::MAX >> shift.
        Ok(BlockRange {
            chan: self.id,
            op,
            offset: lba << self.shift,
            len: blocks << self.shift,
        })
    }

    /// Why `op` is not allowed: unsupported, or a write to a read-only bdev.
    #[cold]
    fn refusal(&self, op: IoOp) -> IoError {
        if self.supported & op_bit(op) == 0 {
            IoError::Unsupported
        } else {
            IoError::ReadOnly
        }
    }

    /// Submit `range` (from [`BlockChannel::check`] on this channel) with its iovecs
    /// (covering exactly its length for data ops, none otherwise). When they match, the
    /// backend gets a [`Checked`] request; otherwise the request goes through the
    /// validating path and completes with the backend's error. `Err` only when the channel
    /// is full (request given back).
    ///
    /// Inlined so that the request is built once, in place, as the backend's argument.
    #[allow(clippy::result_large_err)] // by value: no allocation on the queue-full path
    #[inline(always)]
    pub fn submit_range(
        &mut self,
        range: &BlockRange,
        iov: IoVecs,
        tag: u64,
        keepalive: Option<Arc<dyn Any + Send + Sync>>,
    ) -> Result<(), Rejected> {
        let ok = range.chan == self.id
            && if range.op.has_data() {
                iov_covers(&iov, range.len)
            } else {
                iov.is_empty()
            };
        if ok {
            self.chan.submit_checked(Checked(IoRequest {
                op: range.op,
                offset: range.offset,
                len: range.len,
                iov,
                tag,
                keepalive,
            }))
        } else {
            self.refused(range.into_request(iov, tag, keepalive))
        }
    }

    #[cold]
    #[inline(never)]
    #[allow(clippy::result_large_err)]
    fn refused(&mut self, io: IoRequest) -> Result<(), Rejected> {
        tracing::debug!(tag = io.tag, op = ?io.op, "bdev: checked submit mismatch, validating path");
        self.chan.submit(io)
    }

    /// Ordinary (validating) submit.
    #[allow(clippy::result_large_err)] // by value: no allocation on the queue-full path
    pub fn submit(&mut self, io: IoRequest) -> Result<(), Rejected> {
        self.chan.submit(io)
    }

    /// Reap completions ([`IoChannel::poll`]).
    pub fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        self.chan.poll(done)
    }

    /// Requests in flight ([`IoChannel::in_flight`]).
    pub fn in_flight(&self) -> usize {
        self.chan.in_flight()
    }

    /// Wait for a completion ([`IoChannel::wait`]).
    pub fn wait(&mut self, timeout: std::time::Duration) {
        self.chan.wait(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_inject::{ErrorInjectBdev, InjectOpType};
    use crate::malloc::MallocBdev;
    use crate::null::NullBdev;
    use crate::sys::iovec_of;
    use crate::{null_bdev, BdevCaps, BdevInfo, Layered};

    /// Which path (`"submit"` / `"checked"`) each request came through, with its offset.
    type Log = Arc<std::sync::Mutex<Vec<(&'static str, u64)>>>;

    /// A bdev whose channel records which path each request came through.
    struct Spy {
        info: BdevInfo,
        log: Log,
    }

    struct SpyChan {
        log: Log,
        done: Vec<IoCompletion>,
        checked_too: bool,
    }

    impl Bdev for Spy {
        fn info(&self) -> &BdevInfo {
            &self.info
        }
        fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
            Ok(Box::new(SpyChan {
                log: Arc::clone(&self.log),
                done: Vec::new(),
                checked_too: self.info.name == "spy-checked",
            }))
        }
    }

    impl IoChannel for SpyChan {
        fn submit(&mut self, io: IoRequest) -> Result<(), Rejected> {
            let r = crate::validate::check(&info(512, 8, false), &io);
            self.log.lock().unwrap().push(("submit", io.offset));
            self.done.push(IoCompletion {
                tag: io.tag,
                result: r,
            });
            Ok(())
        }
        fn submit_checked(&mut self, io: Checked) -> Result<(), Rejected> {
            if !self.checked_too {
                return self.submit(io.into_request());
            }
            self.log
                .lock()
                .unwrap()
                .push(("checked", io.request().offset));
            self.done.push(IoCompletion {
                tag: io.request().tag,
                result: Ok(()),
            });
            Ok(())
        }
        fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
            let n = self.done.len();
            self.done.drain(..).for_each(done);
            n
        }
        fn in_flight(&self) -> usize {
            self.done.len()
        }
    }

    fn info(bs: u32, blocks: u64, read_only: bool) -> BdevInfo {
        BdevInfo {
            name: "spy-checked".into(),
            product_name: "t".into(),
            block_size: bs,
            num_blocks: blocks,
            uuid: uuid::Uuid::nil(),
            caps: BdevCaps {
                compare: false,
                fua: false,
                flush: false,
                ..BdevCaps::ALL
            },
            volatile_write_cache: false,
            max_queue_depth: 8,
            required_alignment: 1,
            max_io_bytes: 4 * u64::from(bs) + 100,
            read_only,
        }
    }

    fn spy(info: BdevInfo) -> (Spy, Log) {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        (
            Spy {
                info,
                log: Arc::clone(&log),
            },
            log,
        )
    }

    fn poll_all(ch: &mut BlockChannel) -> Vec<IoCompletion> {
        let mut v = Vec::new();
        ch.poll(&mut |c| v.push(c));
        v.sort_by_key(|c| c.tag);
        v
    }

    #[test]
    fn check_accepts_the_last_block_and_refuses_one_past_the_end() {
        let (b, _) = spy(info(512, 8, false));
        let ch = BlockChannel::open(&b).unwrap();
        let r = ch.check(IoOp::Read, 7, 1).unwrap();
        assert_eq!((r.op(), r.offset(), r.len()), (IoOp::Read, 3584, 512));
        assert_eq!(ch.check(IoOp::Read, 8, 1), Err(IoError::OutOfRange));
        assert_eq!(ch.check(IoOp::Read, 7, 2), Err(IoError::OutOfRange));
        assert_eq!(ch.check(IoOp::Read, u64::MAX, 2), Err(IoError::OutOfRange));
        assert_eq!(ch.check(IoOp::WriteZeroes, 0, 0), Err(IoError::Invalid));
        // max_io_bytes = 4 blocks + 100: 4 blocks pass, 5 do not (data ops only).
        assert!(ch.check(IoOp::Read, 0, 4).is_ok());
        assert_eq!(ch.check(IoOp::Read, 0, 5), Err(IoError::Invalid));
        assert!(ch.check(IoOp::Unmap, 0, 8).is_ok());
    }

    #[test]
    fn check_refuses_unsupported_and_read_only_ops_like_the_backend() {
        let (b, _) = spy(info(4096, 8, true));
        let ch = BlockChannel::open(&b).unwrap();
        assert_eq!(ch.check(IoOp::Compare, 0, 1), Err(IoError::Unsupported));
        // FUA without fua or flush support.
        let (w, _) = spy(info(4096, 8, false));
        let wch = BlockChannel::open(&w).unwrap();
        assert_eq!(
            wch.check(IoOp::Write { fua: true }, 0, 1),
            Err(IoError::Unsupported)
        );
        assert!(wch.check(IoOp::Write { fua: false }, 0, 1).is_ok());
        for op in [IoOp::Write { fua: false }, IoOp::WriteZeroes, IoOp::Unmap] {
            assert_eq!(ch.check(op, 0, 1), Err(IoError::ReadOnly), "{op:?}");
        }
        assert_eq!(ch.check(IoOp::Flush, 0, 0), Err(IoError::Unsupported));
        assert_eq!(ch.check(IoOp::Read, 0, 1).map(|r| r.len()), Ok(4096));
        // The same answers as the validating path.
        let ri = info(4096, 8, true);
        for op in [IoOp::Compare, IoOp::WriteZeroes, IoOp::Unmap, IoOp::Flush] {
            let len = if op == IoOp::Flush { 0 } else { 4096 };
            let v = crate::validate::check(&ri, &IoRequest::new(op, 0, len, 0));
            assert_eq!(ch.check(op, 0, 1).map(|_| ()), v, "{op:?}");
        }
    }

    #[test]
    fn refuses_a_block_size_that_is_not_a_power_of_two() {
        let (b, _) = spy(info(520, 8, false));
        assert!(matches!(
            BlockChannel::open(&b),
            Err(BdevError::InvalidParam(_))
        ));
    }

    #[test]
    fn checked_requests_reach_submit_checked_and_mismatches_the_validating_path() {
        let (b, log) = spy(info(512, 8, false));
        let mut ch = BlockChannel::open(&b).unwrap();
        let mut buf = vec![0u8; 1024];
        let r = ch.check(IoOp::Read, 6, 2).unwrap();
        ch.submit_range(&r, IoVecs::one(iovec_of(&mut buf)), 1, None)
            .unwrap();
        // iovecs shorter than the range: validated, refused by the backend.
        let mut short = vec![0u8; 512];
        ch.submit_range(&r, IoVecs::one(iovec_of(&mut short)), 2, None)
            .unwrap();
        // No iovecs on a data op.
        ch.submit_range(&r, IoVecs::new(), 3, None).unwrap();
        // iovecs on an op that moves no data.
        let z = ch.check(IoOp::WriteZeroes, 0, 1).unwrap();
        ch.submit_range(&z, IoVecs::one(iovec_of(&mut short)), 4, None)
            .unwrap();
        let got = poll_all(&mut ch);
        let results: Vec<_> = got.iter().map(|c| (c.tag, c.result)).collect();
        assert_eq!(
            results,
            [
                (1, Ok(())),
                (2, Err(IoError::Invalid)),
                (3, Err(IoError::Invalid)),
                (4, Ok(()))
            ]
        );
        let paths: Vec<_> = log.lock().unwrap().iter().map(|p| p.0).collect();
        assert_eq!(paths, ["checked", "submit", "submit", "submit"]);
    }

    #[test]
    fn a_range_checked_by_another_channel_is_validated_again() {
        // Checked on a 64-block bdev, submitted to an 8-block one: the backend sees it on
        // the validating path and refuses it (it lies past the end).
        let (big, _) = spy(info(512, 64, false));
        let big_ch = BlockChannel::open(&big).unwrap();
        let (small, log) = spy(info(512, 8, false));
        let mut ch = BlockChannel::open(&small).unwrap();
        let mut buf = vec![0u8; 512];
        let r = big_ch.check(IoOp::Read, 8, 1).unwrap();
        ch.submit_range(&r, IoVecs::one(iovec_of(&mut buf)), 9, None)
            .unwrap();
        assert_eq!(
            poll_all(&mut ch),
            [IoCompletion {
                tag: 9,
                result: Err(IoError::OutOfRange)
            }]
        );
        assert_eq!(log.lock().unwrap().as_slice(), [("submit", 4096)]);
        // Even a second channel on the same bdev does not share ranges.
        let mut ch2 = BlockChannel::open(&small).unwrap();
        let r = ch.check(IoOp::Read, 0, 1).unwrap();
        ch2.submit_range(&r, IoVecs::one(iovec_of(&mut buf)), 10, None)
            .unwrap();
        assert_eq!(poll_all(&mut ch2)[0].result, Ok(()));
        assert_eq!(log.lock().unwrap().last(), Some(&("submit", 0)));
    }

    #[test]
    fn the_default_submit_checked_validates() {
        let mut i = info(512, 8, false);
        i.name = "spy-plain".into();
        let (b, log) = spy(i);
        let mut ch = BlockChannel::open(&b).unwrap();
        let r = ch.check(IoOp::Unmap, 0, 8).unwrap();
        ch.submit_range(&r, IoVecs::new(), 1, None).unwrap();
        assert_eq!(poll_all(&mut ch)[0].result, Ok(()));
        assert_eq!(log.lock().unwrap().as_slice(), [("submit", 0)]);
    }

    #[test]
    fn untrusted_submit_past_the_end_is_still_refused() {
        for b in [
            null_bdev("n", 8 * 512, 512),
            Arc::new(NullBdev::new("n", 512, 8, None).unwrap()) as Arc<dyn Bdev>,
            Layered::wrap(Arc::new(MallocBdev::new("m", 512, 8, None).unwrap())),
        ] {
            let mut ch = BlockChannel::open(b.as_ref()).unwrap();
            let mut buf = vec![0u8; 512];
            let io = IoRequest::with_iov(IoOp::Read, 8 * 512, IoVecs::one(iovec_of(&mut buf)), 3);
            ch.submit(io).unwrap();
            assert_eq!(poll_all(&mut ch)[0].result, Err(IoError::OutOfRange));
            assert_eq!(ch.check(IoOp::Read, 8, 1), Err(IoError::OutOfRange));
        }
    }

    #[test]
    fn checked_path_moves_data_through_layered_malloc_and_counts_stats() {
        let b = Layered::wrap(Arc::new(MallocBdev::new("m", 512, 8, None).unwrap()));
        let mut ch = BlockChannel::open(b.as_ref()).unwrap();
        let mut w = vec![0x5au8; 1024];
        let r = ch.check(IoOp::Write { fua: false }, 6, 2).unwrap();
        ch.submit_range(&r, IoVecs::one(iovec_of(&mut w)), 0xaa, None)
            .unwrap();
        let mut rd = vec![0u8; 1024];
        let r = ch.check(IoOp::Read, 6, 2).unwrap();
        ch.submit_range(&r, IoVecs::one(iovec_of(&mut rd)), 0xbb, None)
            .unwrap();
        let got = poll_all(&mut ch);
        assert_eq!(
            got.iter().map(|c| (c.tag, c.result)).collect::<Vec<_>>(),
            [(0xaa, Ok(())), (0xbb, Ok(()))]
        );
        drop(ch);
        assert_eq!(rd, w);
        let s = b.stats().unwrap().snapshot();
        assert_eq!(s.class(crate::stats::OpClass::Read).bytes, 1024);
        assert_eq!(s.class(crate::stats::OpClass::Write).bytes, 1024);
    }

    #[test]
    fn error_injection_still_applies_on_the_checked_path() {
        let inner: Arc<dyn Bdev> = Arc::new(NullBdev::new("n", 512, 8, None).unwrap());
        let e = ErrorInjectBdev::new("EE_n", inner);
        let mut ch = BlockChannel::open(&e).unwrap();
        e.inject(InjectOpType::Read, IoError::MediaRead, 1);
        let mut buf = vec![0u8; 512];
        for tag in 1..=2 {
            let r = ch.check(IoOp::Read, 0, 1).unwrap();
            ch.submit_range(&r, IoVecs::one(iovec_of(&mut buf)), tag, None)
                .unwrap();
        }
        let got = poll_all(&mut ch);
        assert_eq!(
            got.iter().map(|c| c.result).collect::<Vec<_>>(),
            [Err(IoError::MediaRead), Ok(())]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2048))]
        /// The trusted path accepts exactly what the backend's own validation accepts,
        /// with the same error otherwise (so skipping the latter changes nothing).
        #[test]
        fn check_agrees_with_the_backend_validation(
            shift in 9u32..=16,
            num_blocks in 1u64..=64,
            read_only: bool,
            caps in proptest::array::uniform7(proptest::bool::ANY),
            max_io in proptest::option::of(0u64..=70_000),
            op_i in 0usize..7,
            lba in proptest::prop_oneof![0u64..=80, proptest::num::u64::ANY],
            blocks in proptest::prop_oneof![0u64..=80, proptest::num::u64::ANY],
            near_end in 0u64..4,
        ) {
            // Half the cases end one block before, at, or one block past the end.
            let lba = match near_end {
                0 => lba,
                d => num_blocks.saturating_sub(blocks) + d - 1,
            };
            let bs = 1u32 << shift;
            let info = BdevInfo {
                name: "p".into(),
                product_name: "p".into(),
                block_size: bs,
                num_blocks,
                uuid: uuid::Uuid::nil(),
                caps: BdevCaps {
                    read: caps[0],
                    write: caps[1],
                    flush: caps[2],
                    unmap: caps[3],
                    write_zeroes: caps[4],
                    compare: caps[5],
                    fua: caps[6],
                },
                volatile_write_cache: false,
                max_queue_depth: 4,
                required_alignment: 1,
                max_io_bytes: max_io.unwrap_or(0),
                read_only,
            };
            let (b, _) = spy(info.clone());
            let ch = BlockChannel::open(&b).unwrap();
            let op = ALL_OPS[op_i];
            let got = ch.check(op, lba, blocks);
            if let Ok(r) = got {
                // Never outside the bdev.
                proptest::prop_assert!(r.offset() + r.len() <= info.size_bytes());
            }
            let (Some(offset), Some(len)) =
                (lba.checked_mul(u64::from(bs)), blocks.checked_mul(u64::from(bs)))
            else {
                proptest::prop_assert!(got.is_err() || op == IoOp::Flush);
                return Ok(());
            };
            let (offset, len) = if op == IoOp::Flush { (0, 0) } else { (offset, len) };
            let mut io = IoRequest::new(op, offset, len, 0);
            if op.has_data() {
                // Never dereferenced: validation only reads lengths.
                // SAFETY: the iovec is only inspected, never accessed.
                let v = unsafe { crate::IoVec::from_raw(std::ptr::null_mut(), len as usize) };
                io.iov = IoVecs::one(v);
            }
            let want = crate::validate::check(&info, &io);
            proptest::prop_assert_eq!(got.map(|r| (r.offset(), r.len())), want.map(|()| (offset, len)));
        }
    }
}
