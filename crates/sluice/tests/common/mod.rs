//! Shared helpers: spawn the real `sluice` binary, call it over RPC, compare JSON shapes.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_nvme_host::{Controller, ControllerOptions};

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// The subsystem most tests create.
pub const NQN: &str = "nqn.2019-07.io.spdk:cnode0";

/// How long a condition that depends on other threads or processes may take to become true
/// on a loaded CI machine (2 cores, load 2+) before a test gives up.
pub const SETTLE: Duration = Duration::from_secs(20);

/// Poll `f` until it returns `Some`, every 10 ms, for at most [`SETTLE`]; panics naming
/// `what` (and the last value seen by `f`, through its own message) on timeout.
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < SETTLE,
            "timed out after {SETTLE:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Bring up an NVMe controller over vfio-user with the userspace host driver.
pub fn connect_nvme(sock: &Path) -> Controller {
    let opts = ControllerOptions {
        dma_size: 8 << 20,
        admin_timeout: Duration::from_secs(5),
        ..ControllerOptions::default()
    };
    Controller::connect(sock, opts).expect("controller bring-up")
}

/// Start `sluice <args>` with stdout and stderr discarded.
pub fn spawn_quiet(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Run `sluice <args>` with a hard bound on its run time (a hang is a failure, not a
/// stuck test run).
pub fn run_bounded(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "sluice {args:?} still running after {limit:?}: stdout {} stderr {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A running daemon in a private temp dir; killed on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
}

impl Daemon {
    /// `sluice serve --empty` (plus `extra` args) with a private RPC socket.
    pub fn start(extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra)
    }

    /// Start in `dir` (RPC socket `dir/rpc.sock`); returns once the daemon answers RPCs.
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Daemon {
        let mut d = Self::unstarted(dir);
        d.spawn(extra);
        d
    }

    /// Start and return as soon as the RPC socket accepts connections, possibly before a
    /// `-c` configuration has been applied.
    pub fn start_listening(dir: tempfile::TempDir, extra: &[&str]) -> Daemon {
        let mut d = Self::unstarted(dir);
        d.spawn_inner(extra, false);
        d
    }

    fn unstarted(dir: tempfile::TempDir) -> Daemon {
        Daemon {
            child: None,
            sock: dir.path().join("rpc.sock"),
            dir,
        }
    }

    /// (Re)spawn with the same socket; returns once the daemon answers RPCs.
    pub fn spawn(&mut self, extra: &[&str]) {
        self.spawn_inner(extra, true);
    }

    fn spawn_inner(&mut self, extra: &[&str], ready: bool) {
        let mut args: Vec<String> =
            vec!["serve".into(), "-r".into(), self.sock.display().to_string()];
        let has_mode = extra
            .iter()
            .any(|a| *a == "-c" || *a == "--wait-for-rpc" || a.starts_with("--quickstart"));
        if !has_mode {
            args.push("--empty".into());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.child = Some(child);
        if ready {
            wait_ready(&self.sock, self.child.as_mut().unwrap());
        } else {
            wait_for_socket(&self.sock, self.child.as_mut().unwrap());
        }
    }

    /// Path inside the private dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Make a listener directory.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// A zero-filled (sparse) file of `len` bytes inside the private dir.
    pub fn file(&self, name: &str, len: u64) -> PathBuf {
        let p = self.path(name);
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        p
    }

    /// Run `sluice rpc -s SOCK args...`.
    pub fn rpc(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("rpc")
            .arg("-s")
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap()
    }

    /// Run and require success; returns stdout.
    pub fn rpc_ok(&self, args: &[&str]) -> String {
        let out = self.rpc(args);
        assert!(
            out.status.success(),
            "rpc {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run and parse stdout as JSON.
    pub fn rpc_json(&self, args: &[&str]) -> Value {
        let s = self.rpc_ok(args);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{args:?}: bad JSON {e}: {s}"))
    }

    /// `nvmf_subsystem_add_listener NQN -t VFIOUSER -a DIR -s 0`.
    pub fn listen(&self, nqn: &str, dir: &Path) {
        self.rpc_ok(&[
            "nvmf_subsystem_add_listener",
            nqn,
            "-t",
            "VFIOUSER",
            "-a",
            dir.to_str().unwrap(),
            "-s",
            "0",
        ]);
    }

    /// Serve the existing bdev `bdev` as namespace 1 of [`NQN`] (any host, serial
    /// `serial` if given) on the listener directory `<tmp>/vfu`, creating the VFIOUSER
    /// transport with `transport_flags` first. Returns the listener directory.
    pub fn serve_bdev(
        &self,
        bdev: &str,
        serial: Option<&str>,
        transport_flags: &[&str],
    ) -> PathBuf {
        let dir = self.mkdir("vfu");
        let mut t = vec!["nvmf_create_transport", "-t", "VFIOUSER"];
        t.extend_from_slice(transport_flags);
        self.rpc_ok(&t);
        let mut sub = vec!["nvmf_create_subsystem", "-a"];
        if let Some(sn) = serial {
            sub.extend(["-s", sn]);
        }
        sub.push(NQN);
        self.rpc_ok(&sub);
        self.rpc_ok(&["nvmf_subsystem_add_ns", NQN, bdev]);
        self.listen(NQN, &dir);
        dir
    }

    /// A null bdev `Null0` of `size_mib` MiB (512 B blocks) served by [`Daemon::serve_bdev`].
    pub fn serve_null(&self, size_mib: &str, serial: &str, transport_flags: &[&str]) -> PathBuf {
        self.rpc_ok(&["bdev_null_create", "Null0", size_mib, "512"]);
        self.serve_bdev("Null0", Some(serial), transport_flags)
    }

    /// Send SIGTERM and wait; returns the exit status and captured stderr.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = wait_timeout(&mut child, Duration::from_secs(10));
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn wait_timeout(child: &mut Child, t: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > t {
            let _ = child.kill();
            panic!("daemon did not exit within {t:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_for_socket(sock: &Path, child: &mut Child) {
    let start = Instant::now();
    while UnixStream::connect(sock).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("daemon exited early ({status}): {err}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "RPC socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until the daemon answers an RPC. The socket listens before a `-c` config is
/// applied, but requests are answered only after it (as SPDK's `waitforlisten` relies on):
/// one answered RPC means the target, listeners included, is configured.
pub fn wait_ready(sock: &Path, child: &mut Child) {
    wait_for_socket(sock, child);
    let mut raw = Raw::connect(sock);
    // Applying a -c configuration can take seconds on a loaded machine.
    raw.stream.set_read_timeout(Some(SETTLE)).unwrap();
    raw.send(&serde_json::json!({"jsonrpc": "2.0", "method": "spdk_get_version", "id": 1}));
    let reply = raw.recv();
    assert!(
        reply.as_ref().is_some_and(|v| v.get("result").is_some()),
        "daemon did not answer spdk_get_version: {reply:?}"
    );
}

/// A raw connection that frames requests like rpc.py (pretty-printed, ids 1..n).
pub struct Raw {
    pub stream: UnixStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(sock: &Path) -> Raw {
        let stream = UnixStream::connect(sock).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, v: &Value) {
        let text = serde_json::to_string_pretty(v).unwrap();
        self.send_raw(text.as_bytes());
    }

    /// Read one newline-terminated response; None on EOF.
    pub fn recv(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let mut chunk = [0u8; 65536];
            // A read with SO_RCVTIMEO set returns EINTR (not a transparent restart) when the
            // process is stopped and continued or frozen, as a loaded CI box can do.
            let n = loop {
                match self.stream.read(&mut chunk) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r.unwrap(),
                }
            };
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One request (`id` a number or a string) and its response.
    pub fn call(&mut self, id: impl Into<Value>, method: &str, params: Option<Value>) -> Value {
        let mut req = serde_json::json!({"jsonrpc":"2.0","method":method,"id":id.into()});
        if let Some(p) = params {
            req["params"] = p;
        }
        self.send(&req);
        self.recv().expect("connection closed")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every field of `reference` exists in `actual` with the same JSON type, recursively
/// (arrays: element shapes of the first elements). Returns the mismatching paths.
pub fn shape_diff(reference: &Value, actual: &Value, path: &str, out: &mut Vec<String>) {
    if kind(reference) != kind(actual) {
        out.push(format!(
            "{path}: expected {} got {}",
            kind(reference),
            kind(actual)
        ));
        return;
    }
    match (reference, actual) {
        (Value::Object(r), Value::Object(a)) => {
            for (k, rv) in r {
                match a.get(k) {
                    Some(av) => shape_diff(rv, av, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}: missing")),
                }
            }
        }
        (Value::Array(r), Value::Array(a)) => {
            if let (Some(rf), Some(af)) = (r.first(), a.first()) {
                shape_diff(rf, af, &format!("{path}[0]"), out);
            }
            if let (Some(rl), Some(al)) = (r.last(), a.last()) {
                if r.len() > 1 {
                    shape_diff(rl, al, &format!("{path}[-1]"), out);
                }
            }
        }
        _ => {}
    }
}

pub fn assert_same_shape(reference: &Value, actual: &Value) {
    let mut diffs = Vec::new();
    shape_diff(reference, actual, "$", &mut diffs);
    assert!(
        diffs.is_empty(),
        "shape differences: {diffs:#?}\nactual: {actual:#}"
    );
}

pub fn reference(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}
