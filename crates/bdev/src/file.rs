//! File / block-device backend (`bdev_aio_create`, `bdev_uring_create`).
//!
//! * Engine: io_uring (one ring per channel, submissions batched into one `io_uring_enter`
//!   per `poll`), or a thread pool doing `preadv2`/`pwritev2` when io_uring is unavailable.
//!   [`FileEngine::Auto`] probes io_uring at open and logs which engine it chose.
//! * `O_DIRECT` is used when the file system accepts it and the request's buffers are
//!   aligned to the direct-I/O memory alignment; other requests go through a second,
//!   buffered descriptor (Linux keeps the two coherent: direct I/O flushes and invalidates
//!   the page-cache range it touches).
//! * Flush = `fdatasync` (io_uring `FSYNC` with `DATASYNC`), FUA = `RWF_DSYNC`,
//!   Unmap = punch hole, Write Zeroes = zero range (falling back to punch hole).

mod pool;
mod uring;

use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::{Bdev, BdevCaps, BdevError, BdevInfo, IoChannel, IoError, IoOp, IoRequest};

/// Default per-channel queue depth of the file backend.
pub const FILE_QUEUE_DEPTH: u32 = 128;
/// Largest single request.
pub const FILE_MAX_IO: u64 = 8 << 20;

/// Which I/O engine a file bdev uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileEngine {
    /// io_uring if it can be set up, else the thread pool (logged).
    #[default]
    Auto,
    /// io_uring only (opening fails if unavailable).
    Uring,
    /// The thread-pool engine.
    ThreadPool,
}

/// Options of a file bdev.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// Bdev name.
    pub name: String,
    /// Regular file or block device.
    pub path: PathBuf,
    /// Logical block size; `None`: the device's logical block size, 512 for files.
    pub block_size: Option<u32>,
    /// Open read-only.
    pub read_only: bool,
    /// Engine choice.
    pub engine: FileEngine,
    /// Try `O_DIRECT` (default true).
    pub direct: bool,
    /// UUID (random if `None`).
    pub uuid: Option<uuid::Uuid>,
    /// Product name ("AIO disk" / "URING disk").
    pub product_name: String,
    /// Per-channel queue depth.
    pub queue_depth: u32,
}

impl FileOptions {
    /// Defaults for `path`.
    pub fn new(name: &str, path: impl AsRef<Path>) -> Self {
        FileOptions {
            name: name.to_owned(),
            path: path.as_ref().to_owned(),
            block_size: None,
            read_only: false,
            engine: FileEngine::Auto,
            direct: true,
            uuid: None,
            product_name: "URING disk".into(),
            queue_depth: FILE_QUEUE_DEPTH,
        }
    }
}

/// State shared by every channel of a file bdev.
pub(crate) struct FileShared {
    pub(crate) info: BdevInfo,
    /// `O_DIRECT` descriptor, when the file system accepted it.
    pub(crate) direct: Option<OwnedFd>,
    /// Buffered descriptor (always present).
    pub(crate) buffered: OwnedFd,
    /// Memory alignment for `O_DIRECT` buffers.
    pub(crate) mem_align: usize,
    /// File offset / length alignment for `O_DIRECT` (`stx_dio_offset_align`).
    pub(crate) offset_align: usize,
    /// Lazily started thread pool (fallback engine).
    pool: OnceLock<pool::Pool>,
}

impl FileShared {
    /// Whether a data request may use the direct descriptor.
    pub(crate) fn use_direct(&self, io: &IoRequest) -> bool {
        let oa = self.offset_align.max(1);
        self.direct.is_some()
            && io.offset % oa as u64 == 0
            && io.len % oa as u64 == 0
            && io
                .iov
                .iter()
                .all(|v| (v.base() as usize) % self.mem_align.max(1) == 0 && v.len() % oa == 0)
    }

    pub(crate) fn pool(&self) -> &pool::Pool {
        self.pool.get_or_init(pool::Pool::new)
    }
}

/// A file or block-device backed bdev.
pub struct FileBdev {
    shared: Arc<FileShared>,
    engine: FileEngine,
    path: PathBuf,
}

impl std::fmt::Debug for FileBdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBdev")
            .field("name", &self.shared.info.name)
            .field("path", &self.path)
            .field("engine", &self.engine)
            .field("direct", &self.shared.direct.is_some())
            .finish()
    }
}

fn open(path: &Path, read_only: bool, direct: bool) -> std::io::Result<OwnedFd> {
    let mut o = OpenOptions::new();
    o.read(true).write(!read_only);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path).map(OwnedFd::from)
}

impl FileBdev {
    /// Open the file or block device.
    pub fn open(opts: &FileOptions) -> Result<Self, BdevError> {
        if opts.name.is_empty() {
            return Err(BdevError::InvalidParam("name must not be empty".into()));
        }
        let meta = std::fs::metadata(&opts.path)
            .map_err(|e| BdevError::io(format!("cannot open {}", opts.path.display()), e))?;
        let is_blk = meta.file_type().is_block_device();
        if !is_blk && !meta.is_file() {
            return Err(BdevError::InvalidParam(format!(
                "{} is neither a regular file nor a block device",
                opts.path.display()
            )));
        }
        let buffered = open(&opts.path, opts.read_only, false)
            .map_err(|e| BdevError::io(format!("cannot open {}", opts.path.display()), e))?;
        let direct = if opts.direct {
            match open(&opts.path, opts.read_only, true) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::info!(path = %opts.path.display(), error = %e,
                        "O_DIRECT not available, using buffered I/O");
                    None
                }
            }
        } else {
            None
        };
        let dev_block = if is_blk {
            rustix::fs::ioctl_blksszget(&buffered)
                .map_err(|e| BdevError::io("BLKSSZGET", e.into()))?
        } else {
            512
        };
        let dio = rustix::fs::statx(
            &buffered,
            "",
            rustix::fs::AtFlags::EMPTY_PATH,
            rustix::fs::StatxFlags::DIOALIGN,
        )
        .ok()
        .filter(|s| {
            s.stx_dio_mem_align.is_power_of_two() && s.stx_dio_offset_align.is_power_of_two()
        });
        // Without STATX_DIOALIGN (old kernels): conservative 4 KiB.
        let mem_align = dio.map_or(4096, |s| s.stx_dio_mem_align as usize);
        let offset_align = dio.map_or(4096, |s| s.stx_dio_offset_align as usize);
        let block_size = opts.block_size.unwrap_or(dev_block);
        if block_size < 512 || !block_size.is_power_of_two() || block_size > 65536 {
            return Err(BdevError::InvalidParam(format!(
                "block_size {block_size} must be a power of two between 512 and 65536"
            )));
        }
        if block_size < dev_block {
            return Err(BdevError::InvalidParam(format!(
                "block_size {block_size} is smaller than the device's logical block size {dev_block}"
            )));
        }
        let size = rustix::fs::seek(&buffered, rustix::fs::SeekFrom::End(0))
            .map_err(|e| BdevError::io("seek to end", e.into()))?;
        let num_blocks = size / u64::from(block_size);
        if num_blocks == 0 {
            return Err(BdevError::InvalidParam(format!(
                "{} is smaller than one {block_size}-byte block",
                opts.path.display()
            )));
        }
        let engine = match opts.engine {
            FileEngine::ThreadPool => FileEngine::ThreadPool,
            FileEngine::Uring => {
                uring::probe().map_err(|e| BdevError::io("io_uring setup", e))?;
                FileEngine::Uring
            }
            FileEngine::Auto => match uring::probe() {
                Ok(()) => FileEngine::Uring,
                Err(e) => {
                    tracing::warn!(bdev = %opts.name, error = %e,
                        "io_uring unavailable, using the thread-pool engine");
                    FileEngine::ThreadPool
                }
            },
        };
        tracing::info!(bdev = %opts.name, path = %opts.path.display(), ?engine,
            direct = direct.is_some(), block_size, num_blocks, "file bdev opened");
        let info = BdevInfo {
            name: opts.name.clone(),
            product_name: opts.product_name.clone(),
            block_size,
            num_blocks,
            uuid: opts.uuid.unwrap_or_else(uuid::Uuid::new_v4),
            caps: BdevCaps::ALL,
            volatile_write_cache: true,
            max_queue_depth: opts.queue_depth.clamp(1, 4096),
            required_alignment: if direct.is_some() {
                u32::try_from(mem_align).unwrap_or(4096)
            } else {
                1
            },
            max_io_bytes: FILE_MAX_IO,
            read_only: opts.read_only,
        };
        Ok(FileBdev {
            shared: Arc::new(FileShared {
                info,
                direct,
                buffered,
                mem_align,
                offset_align,
                pool: OnceLock::new(),
            }),
            engine,
            path: opts.path.clone(),
        })
    }

    /// The engine in use.
    pub fn engine(&self) -> FileEngine {
        self.engine
    }

    /// Whether `O_DIRECT` is in use for aligned requests.
    pub fn is_direct(&self) -> bool {
        self.shared.direct.is_some()
    }
}

impl Bdev for FileBdev {
    fn info(&self) -> &BdevInfo {
        &self.shared.info
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        if self.engine == FileEngine::Uring {
            match uring::UringChannel::new(Arc::clone(&self.shared)) {
                Ok(c) => return Ok(Box::new(c)),
                Err(e) => {
                    tracing::warn!(bdev = %self.shared.info.name, error = %e,
                        "io_uring ring setup failed, channel uses the thread-pool engine");
                }
            }
        }
        Ok(Box::new(pool::PoolChannel::new(Arc::clone(&self.shared))))
    }

    fn driver_specific(&self) -> serde_json::Value {
        serde_json::json!({
            "aio": {
                "filename": self.path.display().to_string(),
                "block_size_override": false,
                "readonly": self.shared.info.read_only,
                "fallocate": true,
            },
            "engine": match self.engine {
                FileEngine::Uring | FileEngine::Auto => "io_uring",
                FileEngine::ThreadPool => "thread_pool",
            },
            "direct": self.shared.direct.is_some(),
        })
    }
}

/// Map an errno from a file operation to an [`IoError`].
pub(crate) fn errno_to_error(errno: i32, op: IoOp) -> IoError {
    IoError::from_errno(errno, op)
}

/// `FALLOC_FL_*` mode for an op.
pub(crate) fn fallocate_mode(op: IoOp, punch: bool) -> i32 {
    if op == IoOp::Unmap || punch {
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
    } else {
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
    }
}

/// Descriptor for a request.
pub(crate) fn fd_for<'a>(sh: &'a FileShared, io: &IoRequest) -> std::os::fd::BorrowedFd<'a> {
    match (&sh.direct, io.op.has_data() && sh.use_direct(io)) {
        (Some(d), true) => d.as_fd(),
        _ => sh.buffered.as_fd(),
    }
}
