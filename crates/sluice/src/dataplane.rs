//! The seam between the control plane (RPC registries) and the data plane (vfio-user
//! endpoints, NVMe controllers, poll threads, bdev backends).
//!
//! The registries in [`crate::target`] only talk to a [`DataPlane`]. The implementation used
//! today, [`SocketDataPlane`], owns the listener sockets (`<traddr>/cntrl`, stale-socket
//! cleanup, removal on drop) but does not yet serve vfio-user on them: the endpoint, PCI,
//! NVMe and bdev crates are wired in behind this trait as they land.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde_json::{json, Value};

/// Errors from the data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    /// A live process already serves this socket.
    #[error("socket {0} is in use by a running process")]
    SocketInUse(PathBuf),
    /// Anything else (backend, controller, thread creation).
    #[error("{0}")]
    Other(String),
    /// Socket creation failed.
    #[error("cannot create socket {path}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// A namespace as seen by the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceView {
    /// Namespace id.
    pub nsid: u32,
    /// Backing bdev name.
    pub bdev_name: String,
}

/// A controller attached through a listener (for `nvmf_subsystem_get_controllers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerInfo {
    /// Controller id.
    pub cntlid: u16,
    /// Number of I/O queue pairs.
    pub num_io_qpairs: u32,
}

/// One listening vfio-user endpoint. Dropping it stops accepting, detaches any client and
/// removes the socket it created.
pub trait Endpoint: Send {
    /// The socket path served.
    fn socket_path(&self) -> &Path;
    /// The controller of the attached client, if any.
    fn controller(&self) -> Option<ControllerInfo>;
    /// Ask the endpoint to stop accepting and detach its client without waiting; the
    /// drop that follows waits. Lets a shutdown stop every endpoint in parallel.
    fn begin_stop(&self) {}
}

/// Everything needed to start serving a listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenRequest<'a> {
    /// The subsystem (identity, limits).
    pub subsystem: &'a crate::nvmf::Subsystem,
    /// Transport options (queue limits, BAR0 / doorbell / irq modes).
    pub transport: &'a crate::nvmf::TransportOpts,
    /// `<traddr>/cntrl`, already validated.
    pub socket: &'a Path,
    /// Namespaces to expose.
    pub namespaces: &'a [NamespaceView],
}

/// What the registries need from the data plane.
pub trait DataPlane: Send {
    /// Build the backend of a validated registry entry; returns the real
    /// (block_size, num_blocks) (file backends may detect other values).
    fn create_bdev(&mut self, bdev: &crate::bdevs::Bdev) -> Result<(u32, u64), String>;
    /// Drop the backend of a bdev that is no longer registered.
    fn delete_bdev(&mut self, name: &str);
    /// Apply QoS limits.
    fn set_qos(&mut self, name: &str, qos: &crate::bdevs::QosLimits) -> Result<(), String>;
    /// `bdev_get_iostat` for these bdevs (None: no statistics kept).
    fn iostat(&self, names: &[String]) -> Option<Value>;
    /// Start serving a listener.
    fn listen(&mut self, req: &ListenRequest<'_>) -> Result<Box<dyn Endpoint>, DataPlaneError>;
    /// The namespace set of `nqn` changed (live add/remove: controllers raise the AEN).
    fn namespaces_changed(&mut self, nqn: &str, namespaces: &[NamespaceView]);
    /// `nvmf_get_stats` `poll_groups` array.
    fn poll_group_stats(&self) -> Value;
    /// Called once at shutdown after every endpoint was dropped: flush, stop threads.
    fn shutdown(&mut self) {}
}

/// Remove `path` if it is a socket nobody listens on (left by a crash or kill -9).
/// Fails with [`DataPlaneError::SocketInUse`] if a process still accepts on it.
pub fn clean_stale_socket(path: &Path) -> Result<(), DataPlaneError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(DataPlaneError::Socket {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(DataPlaneError::SocketInUse(path.to_path_buf())),
        Err(_) => {
            tracing::info!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(|source| DataPlaneError::Socket {
                path: path.to_path_buf(),
                source,
            })
        }
    }
}

/// Control-plane-only data plane: owns listener sockets (closing every connection) and no
/// backends. Used by unit tests of the registries; the daemon uses
/// [`crate::nvme_plane::NvmePlane`].
#[derive(Debug)]
pub struct SocketDataPlane {
    poll_threads: Vec<usize>,
}

impl SocketDataPlane {
    /// New data plane with one poll group per CPU in `cpus`.
    pub fn new(cpus: Vec<usize>) -> Self {
        Self { poll_threads: cpus }
    }
}

impl DataPlane for SocketDataPlane {
    fn create_bdev(&mut self, bdev: &crate::bdevs::Bdev) -> Result<(u32, u64), String> {
        Ok((bdev.block_size, bdev.num_blocks))
    }

    fn delete_bdev(&mut self, _name: &str) {}

    fn set_qos(&mut self, _name: &str, _qos: &crate::bdevs::QosLimits) -> Result<(), String> {
        Ok(())
    }

    fn iostat(&self, _names: &[String]) -> Option<Value> {
        None
    }

    fn listen(&mut self, req: &ListenRequest<'_>) -> Result<Box<dyn Endpoint>, DataPlaneError> {
        Ok(Box::new(SocketEndpoint::bind(
            &req.subsystem.nqn,
            req.socket,
        )?))
    }

    fn namespaces_changed(&mut self, nqn: &str, namespaces: &[NamespaceView]) {
        tracing::debug!(nqn, count = namespaces.len(), "namespaces changed");
    }

    fn poll_group_stats(&self) -> Value {
        let groups: Vec<Value> = self
            .poll_threads
            .iter()
            .enumerate()
            .map(|(i, cpu)| {
                json!({
                    "name": format!("nvmf_tgt_poll_group_{i:03}"),
                    "cpu": cpu,
                    "admin_qpairs": 0,
                    "io_qpairs": 0,
                    "current_admin_qpairs": 0,
                    "current_io_qpairs": 0,
                    "current_unassociated_qpairs": 0,
                    "pending_bdev_io": 0,
                    "completed_nvme_io": 0,
                    "transports": [{"trtype": "VFIOUSER"}]
                })
            })
            .collect();
        Value::Array(groups)
    }
}

/// A bound listener socket whose accept thread closes every connection (no device yet).
#[derive(Debug)]
struct SocketEndpoint {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SocketEndpoint {
    fn bind(nqn: &str, path: &Path) -> Result<Self, DataPlaneError> {
        clean_stale_socket(path)?;
        let listener = UnixListener::bind(path).map_err(|source| DataPlaneError::Socket {
            path: path.to_path_buf(),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let nqn = nqn.to_owned();
        let thread = std::thread::Builder::new()
            .name("sluice-endpoint".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Acquire) {
                        break;
                    }
                    if conn.is_ok() {
                        tracing::warn!(
                            nqn,
                            "vfio-user client refused: data plane not available in this build"
                        );
                    }
                }
            })
            .map_err(|source| DataPlaneError::Socket {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Endpoint for SocketEndpoint {
    fn socket_path(&self) -> &Path {
        &self.path
    }
    fn controller(&self) -> Option<ControllerInfo> {
        None
    }
}

impl Drop for SocketEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept with a connection of our own.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::debug!(path = %self.path.display(), error = %e, "socket removal failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_binds_and_removes_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cntrl");
        let ep = SocketEndpoint::bind("nqn.x", &sock).unwrap();
        assert!(sock.exists());
        // A second live listener on the same path is refused.
        assert!(matches!(
            SocketEndpoint::bind("nqn.x", &sock),
            Err(DataPlaneError::SocketInUse(_))
        ));
        drop(ep);
        assert!(!sock.exists());
    }

    #[test]
    fn stale_socket_is_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cntrl");
        drop(UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        clean_stale_socket(&sock).unwrap();
        assert!(!sock.exists());
    }

    #[test]
    fn regular_file_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cntrl");
        std::fs::write(&f, b"x").unwrap();
        assert!(clean_stale_socket(&f).is_err());
        assert!(f.exists());
    }
}
