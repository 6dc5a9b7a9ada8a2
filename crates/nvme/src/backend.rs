//! The block backend seam: the shape of `sluice_bdev`'s `Bdev`/`IoChannel` contract
//! (ARCHITECTURE.md), defined locally so the controller compiles and is tested on its own.
//! The daemon adapts `sluice_bdev` devices to these traits (see [`crate::backend`] docs
//! in the final report); in-crate `NullBackend` and `RamBackend` serve tests and benches.

use std::any::Any;
use std::sync::{Arc, Mutex};

use crate::sys::{copy_from_iovecs, copy_to_iovecs, IoVec};

/// Operation of one backend request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    /// Read into the iovecs.
    Read,
    /// Write from the iovecs; `fua` asks for durability before completion.
    Write {
        /// Force Unit Access.
        fua: bool,
    },
    /// Flush the volatile cache.
    Flush,
    /// Zero the range (no iovecs).
    WriteZeroes,
    /// Deallocate the range (no iovecs).
    Unmap,
    /// Compare the range with the iovecs; mismatch completes with `CompareMismatch`.
    Compare,
}

/// One request handed to an [`IoChannel`]. `iov` points into guest memory kept alive by
/// `keepalive`; the channel gives the request back in its completion so the controller
/// can reuse the iovec storage (no allocation per I/O).
pub struct IoRequest {
    /// What to do.
    pub op: IoOp,
    /// Byte offset on the device.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
    /// Guest data buffers (empty for flush / zeroes / unmap).
    pub iov: Vec<IoVec>,
    /// Opaque controller tag.
    pub tag: u64,
    /// DMA snapshot keeping `iov` mapped until the request is dropped.
    pub keepalive: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for IoRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoRequest")
            .field("op", &self.op)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("iovs", &self.iov.len())
            .field("tag", &self.tag)
            .finish()
    }
}

/// Outcome of a backend request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoResult {
    /// Success.
    Ok,
    /// Media error on read.
    ReadError,
    /// Media error on write.
    WriteError,
    /// Compare mismatch.
    CompareMismatch,
    /// Operation not supported by this device.
    Unsupported,
    /// Any other failure.
    Internal,
}

/// A finished request (given back with its buffers).
#[derive(Debug)]
pub struct IoCompletion {
    /// The request as submitted.
    pub req: IoRequest,
    /// What happened.
    pub result: IoResult,
}

/// Static properties of a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    /// Logical block size in bytes (512 or 4096).
    pub block_size: u32,
    /// Number of blocks.
    pub num_blocks: u64,
    /// Supports Flush.
    pub flush: bool,
    /// Supports Unmap (Dataset Management deallocate).
    pub unmap: bool,
    /// Supports Write Zeroes.
    pub write_zeroes: bool,
    /// Supports Compare.
    pub compare: bool,
    /// Has a volatile write cache.
    pub volatile_cache: bool,
    /// 16-byte unique id (NGUID / UUID).
    pub uuid: [u8; 16],
}

/// A block device.
pub trait Backend: Send + Sync {
    /// Properties.
    fn info(&self) -> BackendInfo;
    /// Open a per-poll-thread channel.
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BackendError>;
}

/// Per-thread I/O channel; never blocks.
pub trait IoChannel: Send {
    /// Queue a request; gives it back when the channel is full.
    fn submit(&mut self, io: IoRequest) -> Result<(), IoRequest>;
    /// Report finished requests; returns how many were reported.
    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize;
}

/// Backend failure when opening a channel.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot open a channel.
    #[error("backend channel unavailable: {0}")]
    Unavailable(String),
}

/// A backend that completes every request successfully without touching data.
#[derive(Debug, Clone)]
pub struct NullBackend {
    info: BackendInfo,
}

impl NullBackend {
    /// A null device of `num_blocks` blocks of `block_size` bytes.
    pub fn new(block_size: u32, num_blocks: u64) -> Self {
        NullBackend {
            info: BackendInfo {
                block_size,
                num_blocks,
                flush: true,
                unmap: true,
                write_zeroes: true,
                compare: false,
                volatile_cache: false,
                uuid: [0x5a; 16],
            },
        }
    }
}

/// Channel of [`NullBackend`]: completes in submission order on the next poll.
#[derive(Debug, Default)]
pub struct NullChannel {
    done: Vec<IoRequest>,
    spare: Vec<IoRequest>,
}

impl Backend for NullBackend {
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BackendError> {
        Ok(Box::new(NullChannel {
            done: Vec::with_capacity(1024),
            spare: Vec::with_capacity(1024),
        }))
    }
}

impl IoChannel for NullChannel {
    fn submit(&mut self, io: IoRequest) -> Result<(), IoRequest> {
        self.done.push(io);
        Ok(())
    }
    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        std::mem::swap(&mut self.done, &mut self.spare);
        let n = self.spare.len();
        for req in self.spare.drain(..) {
            done(IoCompletion {
                req,
                result: IoResult::Ok,
            });
        }
        n
    }
}

/// A RAM disk: data is copied between the guest iovecs and a host buffer.
#[derive(Debug, Clone)]
pub struct RamBackend {
    info: BackendInfo,
    data: Arc<Mutex<Vec<u8>>>,
}

impl RamBackend {
    /// A RAM disk of `num_blocks` blocks of `block_size` bytes.
    pub fn new(block_size: u32, num_blocks: u64, uuid: [u8; 16]) -> Self {
        let bytes = usize::try_from(num_blocks.saturating_mul(u64::from(block_size))).unwrap_or(0);
        RamBackend {
            info: BackendInfo {
                block_size,
                num_blocks,
                flush: true,
                unmap: true,
                write_zeroes: true,
                compare: true,
                volatile_cache: true,
                uuid,
            },
            data: Arc::new(Mutex::new(vec![0u8; bytes])),
        }
    }
}

/// Channel of [`RamBackend`].
#[derive(Debug)]
pub struct RamChannel {
    data: Arc<Mutex<Vec<u8>>>,
    done: Vec<IoCompletion>,
}

impl Backend for RamBackend {
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BackendError> {
        Ok(Box::new(RamChannel {
            data: Arc::clone(&self.data),
            done: Vec::new(),
        }))
    }
}

impl RamChannel {
    fn execute(&self, io: &IoRequest) -> IoResult {
        let Ok(mut data) = self.data.lock() else {
            return IoResult::Internal;
        };
        let (Ok(off), Ok(len)) = (usize::try_from(io.offset), usize::try_from(io.len)) else {
            return IoResult::Internal;
        };
        let Some(end) = off.checked_add(len) else {
            return IoResult::Internal;
        };
        let Some(range) = data.get_mut(off..end) else {
            return IoResult::Internal;
        };
        match io.op {
            // SAFETY (all three arms): the controller built `iov` over the DMA snapshot in
            // `keepalive`, which this request holds for the whole call.
            IoOp::Read => {
                // SAFETY: see above.
                unsafe { copy_to_iovecs(&io.iov, range) };
            }
            IoOp::Write { .. } => {
                // SAFETY: see above.
                unsafe { copy_from_iovecs(&io.iov, range) };
            }
            IoOp::Compare => {
                let mut tmp = vec![0u8; len];
                // SAFETY: see above.
                unsafe { copy_from_iovecs(&io.iov, &mut tmp) };
                if tmp.as_slice() != &*range {
                    return IoResult::CompareMismatch;
                }
            }
            IoOp::WriteZeroes | IoOp::Unmap => range.fill(0),
            IoOp::Flush => {}
        }
        IoResult::Ok
    }
}

impl IoChannel for RamChannel {
    fn submit(&mut self, io: IoRequest) -> Result<(), IoRequest> {
        let result = if io.op == IoOp::Flush {
            IoResult::Ok
        } else {
            self.execute(&io)
        };
        self.done.push(IoCompletion { req: io, result });
        Ok(())
    }
    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        let n = self.done.len();
        for c in self.done.drain(..) {
            done(c);
        }
        n
    }
}
