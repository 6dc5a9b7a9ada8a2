//! The JSON-RPC Unix socket server: 0600 socket guarded by a `<socket>.lock` flock (a stale
//! socket of a dead daemon is replaced, a live daemon's is refused), one thread per
//! connection (at most [`MAX_CONNECTIONS`]), SPDK framing.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};

use crate::jsonrpc::{self, Decoded, Dispatch, StreamDecoder};

/// Most simultaneous RPC connections (SPDK: 64).
pub const MAX_CONNECTIONS: usize = 64;

/// Errors setting up the RPC socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process holds the socket's lock.
    #[error("RPC socket {0} is in use by another process (lock held)")]
    InUse(PathBuf),
    /// I/O error on the socket or lock file.
    #[error("RPC socket {path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// A bound RPC socket. Dropping it removes the socket and the lock file.
#[derive(Debug)]
pub struct RpcSocket {
    listener: UnixListener,
    path: PathBuf,
    lock_path: PathBuf,
    _lock: Flock<File>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl RpcSocket {
    /// Lock and bind `path` with mode 0600.
    pub fn bind(path: &Path) -> Result<Self, ServerError> {
        let mut lock_os = path.as_os_str().to_owned();
        lock_os.push(".lock");
        let lock_path = PathBuf::from(lock_os);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| ServerError::InUse(path.to_path_buf()))?;
        // We hold the lock: whatever socket is there belongs to a dead instance.
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed stale RPC socket"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path)(e)),
        }
        // Create the socket with no group/other bits from the start (no chmod window).
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(io_err(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            lock_path,
            _lock: lock,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accept connections forever, one thread each. Returns only on a fatal accept error.
    pub fn serve<D: Dispatch + Send + Sync + 'static>(&self, dispatch: Arc<D>) -> io::Error {
        let active = Arc::new(AtomicUsize::new(0));
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "RPC accept failed");
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        continue;
                    }
                    return e;
                }
            };
            if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::AcqRel);
                tracing::debug!("RPC connection refused: too many connections");
                drop(stream);
                continue;
            }
            let d = Arc::clone(&dispatch);
            let a = Arc::clone(&active);
            let spawned = std::thread::Builder::new()
                .name("sluice-rpc-conn".into())
                .spawn(move || {
                    if let Err(e) = serve_connection(stream, &*d) {
                        tracing::debug!(error = %e, "RPC connection ended with error");
                    }
                    a.fetch_sub(1, Ordering::AcqRel);
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot spawn RPC connection thread");
                active.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Drop for RpcSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Serve one connection until EOF or a parse error.
pub fn serve_connection(mut stream: UnixStream, dispatch: &dyn Dispatch) -> io::Result<()> {
    let mut decoder = StreamDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = buf.get(..n).unwrap_or(&[]);
        for item in decoder.feed(chunk) {
            match item {
                Decoded::Value(v) => {
                    let written = match jsonrpc::handle_value(v, dispatch) {
                        Some(resp) => stream.write_all(&jsonrpc::frame(&resp)),
                        None => Ok(()),
                    };
                    dispatch.responded();
                    written?;
                }
                Decoded::ParseError => {
                    stream.write_all(&jsonrpc::frame(&jsonrpc::parse_error_response()))?;
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::RpcError;
    use serde_json::{json, Value};
    use std::io::{BufRead, BufReader};

    struct Echo;
    impl Dispatch for Echo {
        fn call(&self, _m: &str, p: Option<&Value>) -> Result<Value, RpcError> {
            Ok(p.cloned().unwrap_or(Value::Null))
        }
    }

    #[test]
    fn socket_is_0600_locked_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rpc.sock");
        let s = RpcSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(RpcSocket::bind(&path), Err(ServerError::InUse(_))));
        drop(s);
        assert!(!path.exists());
    }

    #[test]
    fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rpc.sock");
        drop(UnixListener::bind(&path).unwrap());
        let _s = RpcSocket::bind(&path).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
    }

    #[test]
    fn connection_answers_split_requests_and_closes_on_parse_error() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve_connection(a, &Echo));
        b.write_all(b"{\"id\":1,\"method\":\"m\",").unwrap();
        b.write_all(b"\"params\":{\"x\":1}}{\"id\":2,\"method\":\"m\"}")
            .unwrap();
        let mut r = BufReader::new(b.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap()["result"],
            json!({"x":1})
        );
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap()["id"],
            json!(2)
        );
        b.write_all(b"}}garbage").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap()["error"]["code"],
            json!(-32700)
        );
        line.clear();
        assert_eq!(r.read_line(&mut line).unwrap(), 0, "connection must close");
        t.join().unwrap().unwrap();
    }
}
