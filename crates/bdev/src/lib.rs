//! Block device layer: null, RAM, file (io_uring), NBD backends, QoS, stats.
//!
//! # Model
//!
//! A [`Bdev`] is a block device shared by every poll thread (`Send + Sync`). Each poll thread
//! opens its own [`IoChannel`] (`Send`, owned by one thread) and drives it without locks:
//! [`IoChannel::submit`] never blocks and [`IoChannel::poll`] reaps completions.
//!
//! Requests carry raw guest iovecs ([`IoVec`]); data moves into/out of guest memory only in
//! the [`sys`] module (raw-pointer copies) or through the kernel (io_uring / `preadv`). A
//! request may carry a `keepalive` (the DMA snapshot): the backend drops it only after it
//! stopped touching the iovecs, i.e. when the completion is handed to `poll`'s callback.
//!
//! # Errors
//!
//! * Queue full: [`IoChannel::submit`] returns [`Rejected`] with the request back.
//! * Everything else (bad range, unsupported op, media error...) completes the request with
//!   an [`IoError`] delivered by `poll`; the caller maps it to an NVMe status.
//!
//! # Quick start
//!
//! ```
//! use sluice_bdev::{null_bdev, IoRequest, IoOp};
//! let bdev = null_bdev("Null0", 1 << 20, 512);
//! let mut ch = bdev.open_channel().unwrap();
//! ch.submit(IoRequest::new(IoOp::Flush, 0, 0, 7)).unwrap();
//! let mut tags = Vec::new();
//! while tags.is_empty() { ch.poll(&mut |c| tags.push((c.tag, c.result))); }
//! assert_eq!(tags, vec![(7, Ok(()))]);
//! ```

use std::any::Any;
use std::fmt;
use std::sync::Arc;

pub mod checked;
pub mod error_inject;
pub mod file;
pub mod layered;
pub mod malloc;
pub mod nbd;
pub mod null;
pub mod qos;
mod ready;
pub mod rpc;
pub mod stats;
pub mod sys;
mod validate;

pub use checked::{BlockChannel, BlockRange, Checked};
pub use error_inject::{ErrorInjectBdev, InjectOpType};
pub use file::{FileBdev, FileEngine, FileOptions};
pub use layered::Layered;
pub use malloc::MallocBdev;
pub use nbd::{NbdAddr, NbdBdev, NbdOptions};
pub use null::NullBdev;
pub use qos::QosLimits;
pub use stats::{BdevStats, IoStatSnapshot};

/// Static description of a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BdevInfo {
    /// Unique bdev name (SPDK `name`).
    pub name: String,
    /// Product name shown by `bdev_get_bdevs` ("Null disk", "Malloc disk", "AIO disk"...).
    pub product_name: String,
    /// Logical block size in bytes (512 or 4096 typically; a power of two >= 512).
    pub block_size: u32,
    /// Number of logical blocks.
    pub num_blocks: u64,
    /// Stable UUID.
    pub uuid: uuid::Uuid,
    /// Supported operations.
    pub caps: BdevCaps,
    /// The device has a volatile write cache: Flush is needed for durability (NVMe VWC).
    pub volatile_write_cache: bool,
    /// Maximum number of requests in flight per channel; `submit` rejects beyond this.
    pub max_queue_depth: u32,
    /// Required alignment (bytes) of iovec addresses and lengths for zero-copy I/O.
    /// Unaligned requests still work (buffered path / bounce), just slower.
    pub required_alignment: u32,
    /// Maximum bytes of one request (0 = unlimited).
    pub max_io_bytes: u64,
    /// Read-only device: writes complete with [`IoError::ReadOnly`].
    pub read_only: bool,
}

impl BdevInfo {
    /// Size in bytes (saturating).
    pub fn size_bytes(&self) -> u64 {
        self.num_blocks.saturating_mul(u64::from(self.block_size))
    }
}

/// Capability flags (drive NVMe ONCS / VWC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BdevCaps {
    /// Read supported.
    pub read: bool,
    /// Write supported.
    pub write: bool,
    /// Flush supported (meaningful with a volatile write cache).
    pub flush: bool,
    /// Unmap / deallocate supported.
    pub unmap: bool,
    /// Write zeroes supported.
    pub write_zeroes: bool,
    /// Compare supported.
    pub compare: bool,
    /// Force unit access on writes honoured.
    pub fua: bool,
}

impl BdevCaps {
    /// Every operation supported (FUA honoured).
    pub const ALL: BdevCaps = BdevCaps {
        read: true,
        write: true,
        flush: true,
        unmap: true,
        write_zeroes: true,
        compare: true,
        fua: true,
    };

    /// Whether `op` is supported.
    pub fn supports(&self, op: IoOp) -> bool {
        match op {
            IoOp::Read => self.read,
            IoOp::Write { fua } => self.write && (!fua || self.fua || self.flush),
            IoOp::Flush => self.flush,
            IoOp::WriteZeroes => self.write_zeroes,
            IoOp::Unmap => self.unmap,
            IoOp::Compare => self.compare,
        }
    }
}

/// Operation of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Read `len` bytes at `offset` into the iovecs.
    Read,
    /// Write the iovecs at `offset`; `fua`: durable before completion.
    Write {
        /// Force unit access.
        fua: bool,
    },
    /// Make every completed write durable. `offset`/`len` are ignored (use 0).
    Flush,
    /// Zero `len` bytes at `offset` (no iovecs).
    WriteZeroes,
    /// Deallocate `len` bytes at `offset` (no iovecs); later reads return zeroes
    /// for malloc/file, unspecified for null.
    Unmap,
    /// Compare the iovecs with the data at `offset`; mismatch gives
    /// [`IoError::CompareMismatch`].
    Compare,
}

impl IoOp {
    /// Whether the op moves data through iovecs.
    pub fn has_data(&self) -> bool {
        matches!(self, IoOp::Read | IoOp::Write { .. } | IoOp::Compare)
    }
    /// Whether the op modifies the device.
    pub fn is_write_like(&self) -> bool {
        matches!(
            self,
            IoOp::Write { .. } | IoOp::WriteZeroes | IoOp::Unmap | IoOp::Flush
        )
    }
}

/// One contiguous guest buffer, layout-compatible with `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IoVec {
    base: *mut u8,
    len: usize,
}

// `IoVecs::as_slice` is handed to the kernel as `struct iovec *`: same size, alignment and
// field order (`iov_base`, `iov_len`).
const _: () = {
    assert!(std::mem::size_of::<IoVec>() == std::mem::size_of::<libc::iovec>());
    assert!(std::mem::align_of::<IoVec>() == std::mem::align_of::<libc::iovec>());
    assert!(std::mem::offset_of!(IoVec, base) == std::mem::offset_of!(libc::iovec, iov_base));
    assert!(std::mem::offset_of!(IoVec, len) == std::mem::offset_of!(libc::iovec, iov_len));
};

impl fmt::Debug for IoVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoVec({:p}, {})", self.base, self.len)
    }
}

// SAFETY: an IoVec is a plain address/length pair; the memory it names is only accessed
// through the audited `sys` module or the kernel, and the creator guaranteed (in
// `IoVec::from_raw`) that it stays valid for the request's lifetime on any thread.
unsafe impl Send for IoVec {}
// SAFETY: see `Send`; `&IoVec` gives no access to the memory by itself.
unsafe impl Sync for IoVec {}

impl IoVec {
    /// An iovec over `len` bytes at `base`.
    ///
    /// # Safety
    ///
    /// `base..base+len` must be mapped, readable and writable memory that stays mapped until
    /// the request holding this iovec completes (usually guaranteed by the request's
    /// `keepalive` holding the DMA snapshot). The memory may be concurrently modified by a
    /// guest; the backend never forms Rust references over it.
    pub unsafe fn from_raw(base: *mut u8, len: usize) -> Self {
        IoVec { base, len }
    }

    /// An iovec over a `vm_memory` volatile slice.
    ///
    /// The slice's memory must stay mapped until the request completes: keep the owning
    /// `GuestMemoryMmap` (or other owner) alive through the request's `keepalive`.
    pub fn from_volatile_slice<B: vm_memory::bitmap::BitmapSlice>(
        s: &vm_memory::VolatileSlice<'_, B>,
    ) -> Self {
        let g = s.ptr_guard_mut();
        IoVec {
            base: g.as_ptr(),
            len: s.len(),
        }
    }

    /// Start address.
    pub fn base(&self) -> *mut u8 {
        self.base
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Most iovecs one request may carry (`IOV_MAX`); more complete with [`IoError::Invalid`].
pub const MAX_IOVECS: usize = 1024;

/// Number of iovecs stored inline (no allocation) in [`IoVecs`].
pub const IOVECS_INLINE: usize = 4;

/// The iovec list of one request: up to [`IOVECS_INLINE`] inline, more on the heap.
/// Always contiguous (`as_slice`), so it can be handed to `preadv`/io_uring as is.
#[derive(Clone)]
pub struct IoVecs {
    inline: [IoVec; IOVECS_INLINE],
    n_inline: usize,
    spill: Vec<IoVec>,
}

const EMPTY_IOVEC: IoVec = IoVec {
    base: std::ptr::null_mut(),
    len: 0,
};

impl Default for IoVecs {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for IoVecs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl IoVecs {
    /// An empty list.
    pub const fn new() -> Self {
        IoVecs {
            inline: [EMPTY_IOVEC; IOVECS_INLINE],
            n_inline: 0,
            spill: Vec::new(),
        }
    }

    /// A list with one iovec.
    pub fn one(v: IoVec) -> Self {
        let mut s = Self::new();
        s.push(v);
        s
    }

    /// Append an iovec (allocates only past [`IOVECS_INLINE`] entries).
    pub fn push(&mut self, v: IoVec) {
        if self.spill.is_empty() {
            if let Some(slot) = self.inline.get_mut(self.n_inline) {
                *slot = v;
                self.n_inline += 1;
                return;
            }
            self.spill.reserve(IOVECS_INLINE * 2);
            self.spill
                .extend_from_slice(self.inline.get(..self.n_inline).unwrap_or(&[]));
        }
        self.spill.push(v);
    }

    /// Remove every iovec (keeps any heap capacity).
    pub fn clear(&mut self) {
        self.n_inline = 0;
        self.spill.clear();
    }

    /// The iovecs as one contiguous array (layout of `struct iovec`).
    pub fn as_slice(&self) -> &[IoVec] {
        if self.spill.is_empty() {
            self.inline.get(..self.n_inline).unwrap_or(&[])
        } else {
            &self.spill
        }
    }

    /// Number of iovecs.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there is no iovec.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Iterate the iovecs in order.
    pub fn iter(&self) -> std::slice::Iter<'_, IoVec> {
        self.as_slice().iter()
    }

    /// Total bytes, `None` on overflow.
    pub fn total_len(&self) -> Option<u64> {
        self.iter()
            .try_fold(0u64, |acc, v| acc.checked_add(u64::try_from(v.len).ok()?))
    }

    /// Whether every base address and length is a multiple of `align` (a power of two).
    pub fn is_aligned(&self, align: usize) -> bool {
        let m = align.saturating_sub(1);
        self.iter()
            .all(|v| (v.base as usize) & m == 0 && v.len & m == 0)
    }
}

/// One I/O request.
pub struct IoRequest {
    /// Operation.
    pub op: IoOp,
    /// Byte offset on the device (must be block aligned).
    pub offset: u64,
    /// Length in bytes (block multiple; 0 only for Flush). For data ops it must equal the
    /// iovecs' total length.
    pub len: u64,
    /// Guest buffers (empty for Flush / WriteZeroes / Unmap).
    pub iov: IoVecs,
    /// Caller cookie returned in the completion.
    pub tag: u64,
    /// Kept alive (e.g. the DMA memory snapshot) until the request completes.
    pub keepalive: Option<Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for IoRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoRequest")
            .field("op", &self.op)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("iov", &self.iov)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

impl IoRequest {
    /// A request without iovecs or keepalive (Flush / WriteZeroes / Unmap, or fill `iov`
    /// afterwards).
    pub fn new(op: IoOp, offset: u64, len: u64, tag: u64) -> Self {
        IoRequest {
            op,
            offset,
            len,
            iov: IoVecs::new(),
            tag,
            keepalive: None,
        }
    }

    /// A data request over `iov`; `len` is the iovecs' total length (0 on overflow, which
    /// the backend rejects).
    pub fn with_iov(op: IoOp, offset: u64, iov: IoVecs, tag: u64) -> Self {
        let len = iov.total_len().unwrap_or(0);
        IoRequest {
            op,
            offset,
            len,
            iov,
            tag,
            keepalive: None,
        }
    }
}

/// Error kinds of a completed request (map to NVMe statuses in `sluice-nvme`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    /// Unrecovered read error (NVMe media: Unrecovered Read Error).
    #[error("media read error")]
    MediaRead,
    /// Write fault (NVMe media: Write Fault).
    #[error("media write error")]
    MediaWrite,
    /// Compare mismatch (NVMe media: Compare Failure).
    #[error("compare mismatch")]
    CompareMismatch,
    /// Malformed request: unaligned offset/length, iovec length mismatch (NVMe generic:
    /// Invalid Field).
    #[error("invalid request")]
    Invalid,
    /// Operation not supported by this bdev (NVMe generic: Invalid Opcode).
    #[error("operation not supported")]
    Unsupported,
    /// Offset/length beyond the device end (NVMe generic: LBA Out of Range).
    #[error("out of range")]
    OutOfRange,
    /// Write to a read-only device (NVMe: Attempted Write to Read Only Range).
    #[error("device is read-only")]
    ReadOnly,
    /// No space left on the backing store (NVMe: Capacity Exceeded).
    #[error("no space left on backing store")]
    NoSpace,
    /// Internal backend failure (NVMe generic: Internal Error).
    #[error("internal error")]
    Internal,
    /// The backend did not answer within its bound (NVMe path: Transient Transport Error /
    /// generic Command Aborted).
    #[error("timed out")]
    Timeout,
    /// The backend's transport is down (NBD server gone) (NVMe: Transient Transport Error).
    #[error("transport error")]
    Transport,
    /// The request was aborted (channel closed / reset).
    #[error("aborted")]
    Aborted,
}

impl IoError {
    /// The NVMe status this error should complete with: `(status code type, status code)`
    /// (NVMe base spec 2.0, Figures 100-105). `sluice-nvme` owns the final choice; this is
    /// the suggested mapping.
    pub fn nvme_status(&self) -> (u8, u8) {
        const GENERIC: u8 = 0;
        const MEDIA: u8 = 2;
        match self {
            IoError::MediaRead => (MEDIA, 0x81),  // Unrecovered Read Error
            IoError::MediaWrite => (MEDIA, 0x80), // Write Fault
            IoError::CompareMismatch => (MEDIA, 0x85), // Compare Failure
            IoError::ReadOnly => (MEDIA, 0x82),   // Attempted Write to Read Only Range
            IoError::Invalid => (GENERIC, 0x02),  // Invalid Field in Command
            IoError::Unsupported => (GENERIC, 0x01), // Invalid Command Opcode
            IoError::OutOfRange => (GENERIC, 0x80), // LBA Out of Range
            IoError::NoSpace => (GENERIC, 0x81),  // Capacity Exceeded
            IoError::Internal => (GENERIC, 0x06), // Internal Error
            IoError::Timeout | IoError::Transport => (GENERIC, 0x22), // Transient Transport Error
            IoError::Aborted => (GENERIC, 0x07),  // Command Abort Requested
        }
    }

    /// Map an OS errno from a read/write into a kind.
    pub fn from_errno(errno: i32, op: IoOp) -> Self {
        match errno {
            libc::ENOSPC | libc::EDQUOT => IoError::NoSpace,
            libc::EROFS | libc::EPERM | libc::EACCES => IoError::ReadOnly,
            libc::EOPNOTSUPP | libc::ENOSYS => IoError::Unsupported,
            libc::EINVAL => IoError::Invalid,
            libc::ETIMEDOUT => IoError::Timeout,
            libc::ENOMEM | libc::EAGAIN | libc::EFAULT => IoError::Internal,
            _ => match op {
                IoOp::Read | IoOp::Compare => IoError::MediaRead,
                _ => IoError::MediaWrite,
            },
        }
    }
}

/// Completion of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoCompletion {
    /// The request's tag.
    pub tag: u64,
    /// Outcome.
    pub result: Result<(), IoError>,
}

/// Why `submit` refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// `max_queue_depth` requests already in flight on this channel: poll, then retry.
    QueueFull,
}

/// A request `submit` did not accept; the caller gets it back intact.
#[derive(Debug)]
pub struct Rejected {
    /// The request, untouched.
    pub io: IoRequest,
    /// Why.
    pub reason: RejectReason,
}

/// Errors creating or opening a bdev (control path).
#[derive(Debug, thiserror::Error)]
pub enum BdevError {
    /// Bad parameter (message says which).
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    /// Not enough memory for a RAM bdev.
    #[error("not enough memory: requested {requested} bytes, {available} available")]
    NoMemory {
        /// Bytes asked for.
        requested: u64,
        /// Bytes available.
        available: u64,
    },
    /// An I/O or system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was attempted.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// NBD negotiation failure.
    #[error("NBD: {0}")]
    Nbd(String),
    /// The bdev is being removed.
    #[error("bdev is closed")]
    Closed,
}

impl BdevError {
    /// Wrap an `io::Error` with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BdevError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A block device, shared by all poll threads.
pub trait Bdev: Send + Sync {
    /// Static description.
    fn info(&self) -> &BdevInfo;
    /// Open a per-thread channel.
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError>;
    /// I/O statistics, when the bdev keeps them (the [`Layered`] wrapper does).
    fn stats(&self) -> Option<&BdevStats> {
        None
    }
    /// QoS limits, when the bdev enforces them (the [`Layered`] wrapper does).
    fn qos(&self) -> Option<&QosLimits> {
        None
    }
    /// Backend-specific JSON for `bdev_get_bdevs` `driver_specific`.
    fn driver_specific(&self) -> serde_json::Value {
        serde_json::Value::Object(serde_json::Map::new())
    }
    /// Release resources (helper threads, sockets) before removal. Channels opened before
    /// fail their later requests with [`IoError::Aborted`]. Default: nothing to do.
    fn shutdown(&self) {}
}

impl fmt::Debug for dyn Bdev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = self.info();
        f.debug_struct("Bdev")
            .field("name", &i.name)
            .field("product_name", &i.product_name)
            .field("block_size", &i.block_size)
            .field("num_blocks", &i.num_blocks)
            .finish_non_exhaustive()
    }
}

/// A per-poll-thread I/O channel. Never blocks.
pub trait IoChannel: Send {
    /// Queue a request. `Err(Rejected)` only when the channel is full; every other problem
    /// completes the request with an [`IoError`] through `poll`.
    // The request comes back by value so the queue-full path never allocates.
    #[allow(clippy::result_large_err)]
    fn submit(&mut self, io: IoRequest) -> Result<(), Rejected>;
    /// Queue a request already checked against this channel's bdev by a
    /// [`BlockChannel`]: a backend may execute it without re-validating. The default
    /// validates anyway ([`IoChannel::submit`]). A wrapper may forward it to its inner
    /// channel's `submit_checked` only when the inner bdev has the same size, block size,
    /// capabilities and read-only flag as the wrapper (otherwise: its inner `submit`).
    #[allow(clippy::result_large_err)]
    fn submit_checked(&mut self, io: Checked) -> Result<(), Rejected> {
        self.submit(io.into_request())
    }
    /// Reap completions, calling `done` for each; returns how many.
    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize;
    /// Requests submitted and not yet completed through `poll`.
    fn in_flight(&self) -> usize;

    /// Optionally block up to `timeout` until at least one completion is ready (for
    /// interrupt-style / adaptive pollers that would otherwise sleep blindly). Returns
    /// immediately when nothing is in flight. Backends without a way to wait return at
    /// once (default); callers must not rely on it having waited.
    fn wait(&mut self, timeout: std::time::Duration) {
        let _ = timeout;
    }
}

/// A null bdev wrapped with stats and QoS, in one line (for tests and benchmarks).
///
/// `size_bytes` is rounded down to a block multiple; `block_size` must be a power of two
/// >= 512 (anything else falls back to 512). Reads leave the buffer untouched.
pub fn null_bdev(name: &str, size_bytes: u64, block_size: u32) -> Arc<dyn Bdev> {
    let bs = if block_size >= 512 && block_size.is_power_of_two() {
        block_size
    } else {
        512
    };
    let blocks = size_bytes / u64::from(bs);
    match NullBdev::new(name, bs, blocks, None) {
        Ok(b) => Layered::wrap(Arc::new(b)),
        Err(_) => Layered::wrap(Arc::new(NullBdev::fallback(name))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: usize) -> IoVec {
        // SAFETY: never dereferenced; only address/length bookkeeping is tested.
        unsafe { IoVec::from_raw(std::ptr::null_mut::<u8>().wrapping_add(4096 * n), 512 * n) }
    }

    #[test]
    fn iovecs_inline_then_spill_stay_ordered_and_contiguous() {
        let mut l = IoVecs::new();
        assert!(l.is_empty());
        for i in 1..=IOVECS_INLINE + 3 {
            l.push(v(i));
            assert_eq!(l.len(), i);
            let lens: Vec<usize> = l.as_slice().iter().map(|x| x.len()).collect();
            assert_eq!(lens, (1..=i).map(|k| 512 * k).collect::<Vec<_>>());
        }
        let n = IOVECS_INLINE + 3;
        assert_eq!(l.total_len(), Some((512 * n * (n + 1) / 2) as u64));
        assert!(l.is_aligned(512));
        assert!(!l.is_aligned(1024));
        l.clear();
        assert!(l.is_empty());
        l.push(v(2));
        assert_eq!(l.as_slice(), &[v(2)]);
    }

    #[test]
    fn iovecs_total_len_overflow_is_none() {
        let mut l = IoVecs::new();
        // SAFETY: never dereferenced.
        l.push(unsafe { IoVec::from_raw(std::ptr::null_mut(), usize::MAX) });
        // SAFETY: never dereferenced.
        l.push(unsafe { IoVec::from_raw(std::ptr::null_mut(), usize::MAX) });
        assert_eq!(l.total_len(), None);
        let r = IoRequest::with_iov(IoOp::Read, 0, l, 1);
        assert_eq!(r.len, 0);
    }

    #[test]
    fn nvme_status_mapping_is_distinct_for_media_errors() {
        assert_eq!(IoError::MediaRead.nvme_status(), (2, 0x81));
        assert_eq!(IoError::MediaWrite.nvme_status(), (2, 0x80));
        assert_eq!(IoError::CompareMismatch.nvme_status(), (2, 0x85));
        assert_eq!(
            IoError::from_errno(libc::EIO, IoOp::Read),
            IoError::MediaRead
        );
        assert_eq!(
            IoError::from_errno(libc::EIO, IoOp::Flush),
            IoError::MediaWrite
        );
        assert_eq!(
            IoError::from_errno(libc::ENOSPC, IoOp::Read),
            IoError::NoSpace
        );
    }
}
