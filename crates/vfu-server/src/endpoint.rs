//! The listening endpoint: socket creation rules, one client at a time, shutdown handle.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::io::Errno;

use crate::device::Device;
use crate::session::{serve_connection, SessionEnd};

/// Longest socket path (bytes, without the NUL) that fits `sun_path`.
pub const MAX_SOCKET_PATH: usize = 107;

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Socket file mode (default 0600).
    pub mode: u32,
    /// Advertised `max_msg_fds` (>= 16).
    pub max_msg_fds: u32,
    /// Advertised `max_data_xfer_size`, also the largest REGION_READ/WRITE accepted.
    pub max_data_xfer_size: u32,
    /// Advertised `max_dma_maps`, also the DMA table limit.
    pub max_dma_maps: u32,
    /// Advertised `pgsizes`.
    pub pgsizes: u64,
    /// Offer a twin socket to clients that support one.
    pub twin_socket: bool,
    /// How long a partial message or a blocked send may take before the session is
    /// dropped (default [`crate::session::IO_TIMEOUT`]; zero: no limit).
    pub io_timeout: std::time::Duration,
    /// How long a server-to-client DMA_READ/DMA_WRITE waits for its reply before the
    /// device's [`crate::DmaHandle`] call fails with `ETIMEDOUT` (default
    /// [`crate::session::DMA_TIMEOUT`], below QEMU's 5 s reply timeout; zero: no limit).
    /// The connection stays up; the late reply is dropped when it comes, and until then
    /// further DMA requests fail at once with `ETIMEDOUT`.
    pub dma_timeout: std::time::Duration,
    /// Refuse (EPERM) a DMA_MAP whose fd cannot be sealed against shrinking
    /// (`F_SEAL_SHRINK`). Off by default: QEMU's `memory-backend-file` on /dev/shm or
    /// hugetlbfs and memfds created without `MFD_ALLOW_SEALING` cannot be sealed, and are
    /// then accepted with one info line per connection (a client that truncates such a file
    /// can make a device access fault). Sealable files are always sealed.
    pub require_sealed_dma: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            mode: 0o600,
            max_msg_fds: 16,
            max_data_xfer_size: vfu_proto::DEFAULT_MAX_DATA_XFER,
            max_dma_maps: vfu_proto::DEFAULT_MAX_DMA_MAPS,
            pgsizes: vfu_proto::DEFAULT_PGSIZES,
            twin_socket: true,
            io_timeout: crate::session::IO_TIMEOUT,
            dma_timeout: crate::session::DMA_TIMEOUT,
            require_sealed_dma: false,
        }
    }
}

/// Endpoint errors.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket's parent directory does not exist.
    #[error("parent directory of {0} does not exist")]
    ParentMissing(PathBuf),
    /// The path does not fit in `sun_path`.
    #[error("socket path {0} is longer than {MAX_SOCKET_PATH} bytes")]
    PathTooLong(PathBuf),
    /// Another live process listens on the socket.
    #[error("socket {0} is in use by a live server")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// I/O error.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// Path concerned.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Stops a running [`Server::serve`] from another thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    fd: Arc<OwnedFd>,
}

impl ShutdownHandle {
    /// Requests shutdown: `serve` detaches the current client and returns. Shutdown is
    /// permanent for this [`Server`]: a later `serve` call returns at once.
    pub fn shutdown(&self) {
        let _ = rustix::io::write(self.fd.as_ref(), &1u64.to_ne_bytes());
    }
}

/// A listening vfio-user endpoint. The socket file is removed on drop.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    ino: u64,
    opts: ServerOptions,
    stop: ShutdownHandle,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Server {
    /// Creates the socket at `path` (mode `options.mode`). A stale socket is removed;
    /// a live one (something accepts connections) is refused.
    pub fn bind(path: impl AsRef<Path>, options: ServerOptions) -> Result<Server, ServerError> {
        let path = path.as_ref().to_path_buf();
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ServerError::PathTooLong(path));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(ServerError::ParentMissing(path));
        }
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(ServerError::NotASocket(path));
            }
            match UnixStream::connect(&path) {
                Ok(_) => return Err(ServerError::InUse(path)),
                // Only a refused connection proves nobody listens; anything else (EACCES,
                // ...) is reported instead of deleting a socket we cannot judge.
                Err(e) if e.kind() != io::ErrorKind::ConnectionRefused => {
                    return Err(io_err(&path)(e));
                }
                Err(_) => {
                    tracing::info!(path = %path.display(), "removing stale vfio-user socket");
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                }
            }
        }
        // Bind under a temporary name, set the mode, then rename into place so no client
        // can connect before the permissions are final.
        let tmp = parent.join(format!(".vfu-{}-{}.tmp", std::process::id(), unique()));
        let bind_path = if tmp.as_os_str().len() <= MAX_SOCKET_PATH {
            tmp.clone()
        } else {
            path.clone()
        };
        let listener = UnixListener::bind(&bind_path).map_err(io_err(&path))?;
        let fix =
            std::fs::set_permissions(&bind_path, std::fs::Permissions::from_mode(options.mode))
                .and_then(|_| {
                    if bind_path != path {
                        std::fs::rename(&bind_path, &path)
                    } else {
                        Ok(())
                    }
                });
        if let Err(e) = fix {
            let _ = std::fs::remove_file(&bind_path);
            return Err(io_err(&path)(e));
        }
        let ino = std::fs::symlink_metadata(&path)
            .map(|m| m.ino())
            .map_err(io_err(&path))?;
        let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| io_err(&path)(io::Error::from_raw_os_error(e.raw_os_error())))?;
        Ok(Server {
            listener,
            path,
            ino,
            opts: options,
            stop: ShutdownHandle { fd: Arc::new(efd) },
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options in force.
    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    /// A handle that stops [`Server::serve`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }

    /// Serves clients one at a time until shutdown is requested. Blocks; run it on the
    /// endpoint thread. When a client disconnects its DMA maps and irq fds are dropped
    /// (the device is detached) and the next client is accepted.
    pub fn serve<D: Device + ?Sized>(&self, device: &mut D) -> Result<(), ServerError> {
        loop {
            let mut pfds = [
                PollFd::new(&self.listener, PollFlags::IN),
                PollFd::from_borrowed_fd(self.stop.fd.as_fd(), PollFlags::IN),
            ];
            match poll(&mut pfds, None) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => {
                    return Err(io_err(&self.path)(io::Error::from_raw_os_error(
                        e.raw_os_error(),
                    )))
                }
            }
            let [l, s] = &pfds;
            if !s.revents().is_empty() {
                return Ok(());
            }
            if l.revents().is_empty() {
                continue;
            }
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "vfio-user: accept failed");
                    continue;
                }
            };
            // Connects and disconnects are infrequent state changes an operator wants to see (a VM
            // started, rebooted or died): info, once per connection, so they cannot flood.
            tracing::info!(path = %self.path.display(), "vfio-user client connected");
            match serve_connection(stream, device, &self.opts, Some(self.stop.fd.as_fd())) {
                Ok(SessionEnd::Shutdown) => return Ok(()),
                Ok(SessionEnd::Disconnected) => {
                    tracing::info!(path = %self.path.display(), "vfio-user client disconnected");
                }
                Err(e) => {
                    tracing::info!(path = %self.path.display(), error = %e, "vfio-user client dropped after a session error");
                }
            }
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
