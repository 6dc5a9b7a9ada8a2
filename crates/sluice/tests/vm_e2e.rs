//! End to end with a real Linux guest (issue 6): QEMU 11's `vfio-user-pci` client on a Sluice
//! NVMe controller, run by the rig that `scripts/vm-rig/setup.sh` builds.
//!
//! Run with `scripts/vm-test.sh` (or `cargo test -p sluice --release --test vm_e2e --
//! --include-ignored --test-threads=1`), as root, after `scripts/vm-rig/setup.sh`. The VM
//! cases are `#[ignore]`d with that reason so that a plain `cargo test --workspace` (which
//! runs before the rig is built) lists them as ignored instead of booting guests; once asked
//! for, a missing rig is a test FAILURE with the command to build it, never a silent skip.
//!
//! Each case starts `sluice serve --empty`, configures it with `sluice rpc ...` (the README
//! sequence), boots guests through `scripts/vm-rig/qemu.sh` with a script from
//! `scripts/vm-rig/guest/`, and reads the guest console: the guest prints `SLUICE_FAIL: why`
//! on a failed check and `SLUICE_RC=<n>` before it powers off. Everything started here is
//! killed by PID (QEMU by process group) from Drop guards, also on timeout and panic.
//! Consoles and daemon logs are kept in `$CARGO_TARGET_TMPDIR/vm-logs/`.
//!
//! Environment: `SLUICE_VM_RIG` (rig directory, default /var/cache/sluice-vm-rig),
//! `SLUICE_VM_ACCEL` (kvm|tcg, default: detected by qemu.sh), `SLUICE_VM_KEEP=1` keeps the
//! scratch directories.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The daemon under test.
const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
/// Option of `sluice serve` naming its JSON-RPC socket (as SPDK's `nvmf_tgt -r`).
const SERVE_RPC_SOCKET_OPT: &str = "-r";
/// Option of `sluice rpc` naming the JSON-RPC socket (as SPDK's `rpc.py -s`).
const RPC_SOCKET_OPT: &str = "-s";
/// `sluice serve --log-level`: info, plus the endpoint's connect/disconnect lines.
const DAEMON_LOG_FILTER: &str = "info,vfu_server=debug";
/// Model number given to every subsystem (`nvmf_create_subsystem -d`).
const MODEL: &str = "Sluice VM Test Ctrl";
/// Hard limit for one guest run (boot + script); QEMU's own `timeout` is a bit longer.
const VM_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a guest may take to power off after it printed `SLUICE_RC` before it is killed
/// (a wedged controller can hold the kernel's shutdown path for a minute).
const POWEROFF_GRACE: Duration = Duration::from_secs(15);
/// Guest kernel arguments: a broken controller fails in seconds, not in the default minute.
const GUEST_APPEND: &str = "nvme_core.admin_timeout=20 nvme_core.io_timeout=20";

// ------------------------------------------------------------------------------------------
// Rig and scratch space
// ------------------------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn rig_dir() -> PathBuf {
    std::env::var_os("SLUICE_VM_RIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/sluice-vm-rig"))
}

/// Fails the test (with the command that fixes it) when the rig is not built or usable.
fn require_rig() {
    require_rig_at(&rig_dir());
}

fn require_rig_at(rig: &Path) {
    for rel in [
        "guest/vmlinuz",
        "guest/initramfs.cpio",
        "chroot/usr/bin/qemu-system-x86_64",
    ] {
        let p = rig.join(rel);
        assert!(
            p.is_file(),
            "VM rig missing: {} does not exist. Build the rig with `scripts/vm-rig/setup.sh` \
             (root, Debian mirror; about 3 minutes) or point SLUICE_VM_RIG at a built one.",
            p.display()
        );
    }
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"));
    assert!(
        root,
        "the VM tests must run as root (the rig chroots and bind-mounts)"
    );
}

fn log_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-logs");
    fs::create_dir_all(&d).unwrap();
    d
}

/// A scratch directory under /tmp (no white space: it is bind-mounted into the chroot),
/// removed on drop unless SLUICE_VM_KEEP is set.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/tmp/sluice-vm-{}-{n}-{name}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).unwrap();
        }
        fs::create_dir_all(&path).unwrap();
        Scratch { path }
    }

    fn sub(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("SLUICE_VM_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Quotes a value for a POSIX shell.
fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// Fills a 9p share directory: lib.sh, the case's guest scripts, params.sh, and test.sh
/// which runs the scripts in order (each in the same shell, so a failing check stops it).
fn make_share(dir: &Path, scripts: &[&str], params: &[(&str, String)]) {
    let guest = repo_root().join("scripts/vm-rig/guest");
    fs::copy(guest.join("lib.sh"), dir.join("lib.sh")).unwrap();
    let mut test = String::new();
    for script in scripts {
        fs::copy(guest.join(script), dir.join(script))
            .unwrap_or_else(|e| panic!("guest script {script}: {e}"));
        writeln!(test, ". /share/{script}").unwrap();
    }
    fs::write(dir.join("test.sh"), test).unwrap();
    let mut p = String::new();
    for (k, v) in params {
        writeln!(p, "{k}={}", sh_quote(v)).unwrap();
    }
    fs::write(dir.join("params.sh"), p).unwrap();
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn daemon_log_tail(log: Option<&Path>) -> String {
    log.map(|l| {
        format!(
            "\nsluice log ({}), last lines:\n{}",
            l.display(),
            tail(&fs::read_to_string(l).unwrap_or_default(), 25)
        )
    })
    .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

// ------------------------------------------------------------------------------------------
// The daemon
// ------------------------------------------------------------------------------------------

/// `sluice serve --empty` with its own RPC socket; killed (SIGKILL) and reaped on drop.
struct Daemon {
    child: Child,
    rpc_sock: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, name: &str) -> Self {
        let rpc_sock = dir.join("rpc.sock");
        let log = log_dir().join(format!("{name}-sluice.log"));
        let out = fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(SLUICE)
            .arg("serve")
            .arg("--empty")
            .arg(SERVE_RPC_SOCKET_OPT)
            .arg(&rpc_sock)
            // vfu-server logs client connect/disconnect at debug.
            .arg("--log-level")
            .arg(DAEMON_LOG_FILTER)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SLUICE}: {e}"));
        let mut d = Daemon {
            child,
            rpc_sock,
            log,
        };
        let up = wait_until(Duration::from_secs(15), || {
            !d.exited() && UnixStream::connect(&d.rpc_sock).is_ok()
        });
        let exited = d.exited();
        assert!(
            up,
            "`sluice serve --empty {SERVE_RPC_SOCKET_OPT} {}` did not open its RPC socket within 15 s \
             (exited: {exited}). Log {}:\n{}",
            d.rpc_sock.display(),
            d.log.display(),
            tail(&d.log_text(), 30)
        );
        d
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `sluice rpc ARGS...`: Ok(stdout) or Err(description).
    fn try_rpc(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(SLUICE)
            .arg("rpc")
            .arg(RPC_SOCKET_OPT)
            .arg(&self.rpc_sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run sluice rpc: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "`sluice rpc {}` failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn rpc(&self, args: &[&str]) -> String {
        self.try_rpc(args).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One NVMe-oF subsystem exposed on a vfio-user listener.
struct Ctrl {
    nqn: String,
    serial: String,
    socket: PathBuf,
}

/// What backs a namespace.
enum Backing {
    /// `bdev_malloc_create -b NAME MIB 512`
    Malloc { mib: u64 },
    /// `bdev_aio_create FILE NAME 512` over a sparse file of MIB mebibytes
    File { path: PathBuf, mib: u64 },
}

fn create_bdev(d: &Daemon, name: &str, backing: &Backing) {
    match backing {
        Backing::Malloc { mib } => {
            d.rpc(&["bdev_malloc_create", "-b", name, &mib.to_string(), "512"]);
        }
        Backing::File { path, mib } => {
            if !path.exists() {
                let f = fs::File::create(path).unwrap();
                f.set_len(mib * 1024 * 1024).unwrap();
            }
            d.rpc(&["bdev_aio_create", path.to_str().unwrap(), name, "512"]);
        }
    }
}

/// The README sequence for controller `idx`: subsystem, bdevs, namespaces, listener in
/// `dir/ctrl<idx>`; waits for the `cntrl` socket.
fn add_ctrl(d: &Daemon, dir: &Path, idx: u32, namespaces: &[(&str, Backing)]) -> Ctrl {
    let nqn = format!("nqn.2019-07.io.spdk:cnode{idx}");
    let serial = format!("SLUICEVM{idx}");
    d.rpc(&[
        "nvmf_create_subsystem",
        "-a",
        "-s",
        &serial,
        "-d",
        MODEL,
        "-m",
        "32",
        &nqn,
    ]);
    for (name, backing) in namespaces {
        create_bdev(d, name, backing);
        d.rpc(&["nvmf_subsystem_add_ns", &nqn, name]);
    }
    let traddr = dir.join(format!("ctrl{idx}"));
    fs::create_dir_all(&traddr).unwrap();
    d.rpc(&[
        "nvmf_subsystem_add_listener",
        "-t",
        "VFIOUSER",
        "-a",
        traddr.to_str().unwrap(),
        "-s",
        "0",
        &nqn,
    ]);
    let socket = traddr.join("cntrl");
    assert!(
        wait_until(Duration::from_secs(5), || socket.exists()),
        "nvmf_subsystem_add_listener did not create {}",
        socket.display()
    );
    Ctrl {
        nqn,
        serial,
        socket,
    }
}

/// A daemon with the VFIOUSER transport created (extra transport options in `transport`).
fn daemon_with_transport(dir: &Path, name: &str, transport: &[&str]) -> Daemon {
    let d = Daemon::start(dir, name);
    let mut args = vec!["nvmf_create_transport", "-t", "VFIOUSER"];
    args.extend_from_slice(transport);
    d.rpc(&args);
    d
}

// ------------------------------------------------------------------------------------------
// Guests
// ------------------------------------------------------------------------------------------

/// How to boot one guest.
#[derive(Default)]
struct VmSpec<'a> {
    share: Option<&'a Path>,
    vfio_user: Vec<&'a Path>,
    nvme_img: Vec<&'a Path>,
    mem_mib: Option<u32>,
    /// The daemon's log, quoted in failure messages.
    daemon_log: Option<&'a Path>,
}

/// Result of a guest run.
struct VmOutcome {
    /// The `SLUICE_RC=` value, None if the guest never printed it.
    rc: Option<i32>,
    console: String,
    console_path: PathBuf,
    timed_out: bool,
    daemon_log: Option<PathBuf>,
}

impl VmOutcome {
    fn failures(&self) -> Vec<&str> {
        self.console
            .lines()
            .filter(|l| l.contains("SLUICE_FAIL:"))
            .collect()
    }

    /// Panics with the guest's own failure reasons (and the daemon's log tail, if any)
    /// unless its script exited 0.
    fn assert_ok(&self, what: &str) {
        let ctx = daemon_log_tail(self.daemon_log.as_deref());
        self.assert_ok_ctx(what, &ctx);
    }

    fn assert_ok_ctx(&self, what: &str, ctx: &str) {
        if self.rc == Some(0) {
            return;
        }
        let why = if self.timed_out {
            format!("timed out after {VM_TIMEOUT:?}")
        } else if let Some(rc) = self.rc {
            format!("guest script exited {rc}")
        } else {
            "the guest never reported SLUICE_RC (boot or device failure)".to_string()
        };
        panic!(
            "{what}: {why}\nguest failures: {:?}\nconsole ({}), last lines:\n{}{ctx}",
            self.failures(),
            self.console_path.display(),
            tail(&self.console, 40)
        );
    }

    /// Guest kernel lines that show an NVMe protocol error (a completion for a command the
    /// host never submitted, a timeout, a dead controller), including during power-off.
    fn nvme_kernel_errors(&self) -> Vec<&str> {
        const PATTERNS: &[&str] = &[
            "genctr mismatch",
            "could not locate request",
            "invalid id",
            "timeout, aborting",
            "timeout, reset controller",
            "controller is down",
            "Removing after probe failure",
            "Device not ready",
            "I/O error",
        ];
        self.console
            .lines()
            .filter(|l| PATTERNS.iter().any(|p| l.contains(p)))
            .collect()
    }

    /// Fails if the guest kernel logged NVMe protocol errors (see `nvme_kernel_errors`).
    fn assert_no_nvme_kernel_errors(&self, what: &str) {
        let errs = self.nvme_kernel_errors();
        assert!(
            errs.is_empty(),
            "{what}: the guest kernel logged {} NVMe protocol error line(s), e.g. {:?} \
             (console {}){}",
            errs.len(),
            &errs[..errs.len().min(5)],
            self.console_path.display(),
            daemon_log_tail(self.daemon_log.as_deref())
        );
    }

    /// Lines starting with `marker` (after any prefix noise).
    fn marker_lines(&self, marker: &str) -> Vec<String> {
        self.console
            .lines()
            .filter_map(|l| l.find(marker).map(|i| l[i..].to_string()))
            .collect()
    }
}

/// A running guest: `scripts/vm-rig/qemu.sh` in its own process group; killed on drop.
struct Vm {
    name: String,
    child: Child,
    rx: Receiver<String>,
    console: String,
    console_path: PathBuf,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    daemon_log: Option<PathBuf>,
}

fn spawn_reader(src: impl Read + Send + 'static, tx: Sender<String>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::new(src);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .replace('\r', "");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

impl Vm {
    fn boot(name: &str, spec: &VmSpec<'_>) -> Self {
        require_rig();
        let mut cmd = Command::new(repo_root().join("scripts/vm-rig/qemu.sh"));
        cmd.arg("--timeout")
            .arg((VM_TIMEOUT.as_secs() + 20).to_string());
        if let Some(s) = spec.share {
            cmd.arg("--share").arg(s);
        }
        for s in &spec.vfio_user {
            cmd.arg("--vfio-user").arg(s);
        }
        for i in &spec.nvme_img {
            cmd.arg("--nvme-img").arg(i);
        }
        cmd.arg("--append").arg(GUEST_APPEND);
        if let Some(m) = spec.mem_mib {
            cmd.arg("--mem").arg(m.to_string());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start scripts/vm-rig/qemu.sh: {e}"));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let readers = vec![spawn_reader(out, tx.clone()), spawn_reader(err, tx)];
        let console_path = log_dir().join(format!("{name}.console"));
        eprintln!("[vm] {name}: booting (console: {})", console_path.display());
        Vm {
            name: name.to_string(),
            child,
            rx,
            console: String::new(),
            console_path,
            readers,
            started: Instant::now(),
            daemon_log: spec.daemon_log.map(Path::to_path_buf),
        }
    }

    fn record(&mut self, line: &str) {
        self.console.push_str(line);
        self.console.push('\n');
    }

    /// Waits for a console line containing `marker`; Err if the guest failed, exited or the
    /// timeout passed first.
    fn wait_marker(&mut self, marker: &str, timeout: Duration) -> Result<String, String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.record(&line);
                    if let Some(i) = line.find(marker) {
                        return Ok(line[i..].to_string());
                    }
                    if line.contains("SLUICE_FAIL:") || line.contains("SLUICE_RC=") {
                        return Err(format!(
                            "{}: guest stopped before {marker}: {line}\nconsole tail:\n{}",
                            self.name,
                            tail(&self.console, 30)
                        ));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{}: no {marker} within {timeout:?}\nconsole tail:\n{}",
                        self.name,
                        tail(&self.console, 30)
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "{}: QEMU exited before {marker}\nconsole tail:\n{}",
                        self.name,
                        tail(&self.console, 30)
                    ))
                }
            }
        }
    }

    /// Same as `wait_marker`, panicking on error.
    fn expect_marker(&mut self, marker: &str, timeout: Duration) -> String {
        self.wait_marker(marker, timeout)
            .unwrap_or_else(|e| panic!("{e}{}", daemon_log_tail(self.daemon_log.as_deref())))
    }

    /// Reads the console until QEMU exits (or VM_TIMEOUT from boot), then reaps it.
    fn finish(mut self) -> VmOutcome {
        let mut timed_out = false;
        let mut deadline = self.started + VM_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    if line.contains("SLUICE_RC=") {
                        deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
                    }
                    self.record(&line);
                }
                Err(RecvTimeoutError::Timeout) if self.console.contains("SLUICE_RC=") => break,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    timed_out = true;
                    break;
                }
            }
        }
        self.kill();
        self.outcome(timed_out)
    }

    /// Kills QEMU now (SIGKILL to the whole process group) and collects the console.
    fn kill_now(mut self) -> VmOutcome {
        self.kill();
        while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(5)) {
            self.record(&line);
        }
        self.outcome(false)
    }

    fn outcome(&mut self, timed_out: bool) -> VmOutcome {
        let _ = fs::write(&self.console_path, &self.console);
        let rc = self
            .console
            .lines()
            .rev()
            .filter_map(|l| l.find("SLUICE_RC=").map(|i| &l[i + "SLUICE_RC=".len()..]))
            .find_map(|v| v.trim().parse::<i32>().ok());
        let kernel_errors = self
            .console
            .lines()
            .filter(|l| l.contains("genctr mismatch") || l.contains("could not locate request"))
            .count();
        if kernel_errors > 0 {
            eprintln!(
                "[vm] {}: WARNING: {kernel_errors} spurious NVMe completion(s) in the guest kernel log",
                self.name
            );
        }
        eprintln!(
            "[vm] {}: done after {:.1} s, rc {rc:?}{}",
            self.name,
            self.started.elapsed().as_secs_f64(),
            if timed_out { " (timeout)" } else { "" }
        );
        VmOutcome {
            rc,
            console: std::mem::take(&mut self.console),
            console_path: self.console_path.clone(),
            timed_out,
            daemon_log: self.daemon_log.clone(),
        }
    }

    fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pgid = self.child.id();
            // The shell's own `kill` (no procps needed) signals the whole process group:
            // qemu.sh -> unshare -> chroot -> timeout -> qemu-system-x86_64.
            let _ = Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("kill -KILL -{pgid}"))
                .stderr(Stdio::null())
                .status();
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // Readers end when the last holder of the pipes exits; never block on them here.
        self.readers.clear();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        if !self.console.is_empty() {
            let _ = fs::write(&self.console_path, &self.console);
        }
    }
}

/// Boots a guest that runs `scripts` with `params` and waits for it to finish.
fn run_guest(
    name: &str,
    share: &Path,
    scripts: &[&str],
    params: &[(&str, String)],
    spec: VmSpec<'_>,
) -> VmOutcome {
    make_share(share, scripts, params);
    let spec = VmSpec {
        share: Some(share),
        ..spec
    };
    Vm::boot(name, &spec).finish()
}

/// Parameters of discovery.sh for a namespace of `blocks` 512-byte blocks.
fn discovery_params(serial: &str, model: &str, blocks: u64) -> Vec<(&'static str, String)> {
    vec![
        ("SN", serial.to_string()),
        ("MN", model.to_string()),
        ("FR", String::new()),
        ("NSZE_BLOCKS", blocks.to_string()),
        ("LBA_SIZE", "512".to_string()),
        ("MSIX", "1".to_string()),
        ("MIN_IOQ", "2".to_string()),
    ]
}

/// Every `"key": <number>` pair of a JSON text whose key satisfies `want` (std-only scan).
fn json_numbers(text: &str, want: impl Fn(&str) -> bool) -> BTreeMap<String, f64> {
    let mut found = BTreeMap::new();
    let mut rest = text;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        let key = &after[..end];
        let tail = after[end + 1..].trim_start();
        if let Some(v) = tail.strip_prefix(':') {
            let v = v.trim_start();
            let num: String = v
                .chars()
                .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+'))
                .collect();
            if want(key) {
                if let Ok(n) = num.parse::<f64>() {
                    *found.entry(key.to_string()).or_insert(0.0) += n;
                }
            }
        }
        rest = &after[end + 1..];
    }
    found
}

// ------------------------------------------------------------------------------------------
// Case 0: the rig itself, on QEMU's own emulated NVMe (no Sluice involved)
// ------------------------------------------------------------------------------------------

/// Proves the rig on QEMU's `-device nvme` (two of them): discovery, the negative checks of
/// the guest checks, fio verify and the baseline script. If this fails, every other case's
/// failure is about the rig, not about Sluice.
#[test]
#[ignore = "boots QEMU guests: run scripts/vm-test.sh (needs root and scripts/vm-rig/setup.sh)"]
fn vm_00_rig_with_qemu_nvme() {
    require_rig();
    let s = Scratch::new("rig");
    let imgs = [s.sub("img").join("q0.img"), s.sub("img").join("q1.img")];
    for img in &imgs {
        fs::File::create(img).unwrap().set_len(256 << 20).unwrap();
    }
    let mut params = discovery_params("qemu-nvme-0", "QEMU NVMe Ctrl", (256 << 20) / 512);
    params.push(("SIZE", "8M".to_string()));
    params.push(("NSIDS", "1".to_string()));
    params.push(("QSN", "qemu-nvme-1".to_string()));
    params.push(("SECS", "2".to_string()));
    let share = s.sub("share");
    // negative.sh runs check-blocks.sh and hotplug.sh; the share gets them too.
    for extra in ["check-blocks.sh", "hotplug.sh"] {
        fs::copy(
            repo_root().join("scripts/vm-rig/guest").join(extra),
            share.join(extra),
        )
        .unwrap();
    }
    let out = run_guest(
        "vm_00_rig",
        &share,
        &["discovery.sh", "negative.sh", "verify.sh", "baseline.sh"],
        &params,
        VmSpec {
            nvme_img: imgs.iter().map(PathBuf::as_path).collect(),
            ..VmSpec::default()
        },
    );
    out.assert_ok("rig self-test on QEMU's emulated NVMe");
    out.assert_no_nvme_kernel_errors("QEMU's emulated NVMe");
    assert_eq!(out.marker_lines("SLUICE_DISCOVERY_OK").len(), 1);
    assert_eq!(
        out.marker_lines("SLUICE_NEGATIVE_OK").len(),
        10,
        "every negative check must have been caught"
    );
    assert_eq!(out.marker_lines("SLUICE_VERIFY_OK").len(), 1);
    assert_eq!(out.marker_lines("SLUICE_IOPS ").len(), 1);
}

/// The rig's persistence scripts on QEMU's NVMe over an image file: ext4 across a VM restart
/// (and a tampered checksum list caught), and QEMU killed mid-fio with flushed blocks intact.
#[test]
#[ignore = "boots QEMU guests: run scripts/vm-test.sh (needs root and scripts/vm-rig/setup.sh)"]
fn vm_00_rig_persistence_with_qemu_nvme() {
    require_rig();
    let s = Scratch::new("rigfs");
    let img = s.sub("img").join("q.img");
    fs::File::create(&img).unwrap().set_len(128 << 20).unwrap();
    let params = [("SN", "qemu-nvme-0".to_string())];
    let spec = || VmSpec {
        nvme_img: vec![img.as_path()],
        ..VmSpec::default()
    };
    let sums = ext4_write("vm_00_fs_write", &s.sub("share1"), &params, spec());
    let share2 = s.sub("share2");
    fs::write(share2.join("sums"), &sums).unwrap();
    let out = run_guest(
        "vm_00_fs_check",
        &share2,
        &["fs-check.sh", "fs-negative.sh"],
        &params,
        spec(),
    );
    out.assert_ok("ext4 check (and its negative) on QEMU's NVMe");
    assert_eq!(out.marker_lines("SLUICE_FS_VERIFIED").len(), 1);
    assert_eq!(out.marker_lines("SLUICE_NEGATIVE_OK").len(), 1);

    let blocks = kill_mid_write("vm_00_killed", &s.sub("share3"), &params, spec());
    let out = run_guest(
        "vm_00_reattach",
        &s.sub("share4"),
        &["check-blocks.sh"],
        &[
            ("SN", "qemu-nvme-0".to_string()),
            ("BLOCKS", blocks.join(" ")),
        ],
        spec(),
    );
    out.assert_ok("flushed blocks after killing QEMU (QEMU's NVMe)");
    assert_eq!(out.marker_lines("SLUICE_BLOCKS_OK").len(), 1);
}

/// Runs fs-write.sh and returns the checksum list it recorded.
fn ext4_write(name: &str, share: &Path, params: &[(&str, String)], spec: VmSpec<'_>) -> String {
    run_guest(name, share, &["fs-write.sh"], params, spec)
        .assert_ok("first VM: mkfs.ext4 and writing files");
    let sums = fs::read_to_string(share.join("out/sums")).unwrap_or_default();
    assert!(
        sums.lines().count() >= 6,
        "the first VM recorded no checksums: {sums:?}"
    );
    sums
}

/// Boots kill-write.sh, waits until fio runs and 8 blocks were flushed, kills QEMU (SIGKILL
/// to its process group) and returns the flushed blocks as "index:md5".
fn kill_mid_write(
    name: &str,
    share: &Path,
    params: &[(&str, String)],
    spec: VmSpec<'_>,
) -> Vec<String> {
    make_share(share, &["kill-write.sh"], params);
    let spec = VmSpec {
        share: Some(share),
        ..spec
    };
    let mut vm = Vm::boot(name, &spec);
    vm.expect_marker("SLUICE_FIO_RUNNING", Duration::from_secs(90));
    for _ in 0..8 {
        vm.expect_marker("SLUICE_FLUSHED", Duration::from_secs(60));
    }
    let killed = vm.kill_now();
    assert!(
        killed.rc.is_none(),
        "the guest finished on its own; it had to be killed"
    );
    let blocks: Vec<String> = killed
        .marker_lines("SLUICE_FLUSHED ")
        .iter()
        .filter_map(|l| {
            let mut f = l.split_whitespace().skip(1);
            match (f.next(), f.next()) {
                (Some(i), Some(m)) if m.len() == 32 => Some(format!("{i}:{m}")),
                _ => None,
            }
        })
        .collect();
    assert!(blocks.len() >= 8, "flushed blocks: {blocks:?}");
    blocks
}

// ------------------------------------------------------------------------------------------
// Cases 1-8 (issue 6), on Sluice
// ------------------------------------------------------------------------------------------

/// 1. Discovery: nvme driver bound; id-ctrl serial/model/firmware; nvme list size and LBA
///    format; more than one blk-mq queue; MSI-X in use.
#[test]
#[ignore = "boots QEMU guests: run scripts/vm-test.sh (needs root and scripts/vm-rig/setup.sh)"]
fn vm_01_discovery() {
    require_rig();
    let s = Scratch::new("disc");
    let d = daemon_with_transport(&s.path, "vm_01", &[]);
    let c = add_ctrl(&d, &s.path, 0, &[("Malloc0", Backing::Malloc { mib: 64 })]);
    let out = run_guest(
        "vm_01_discovery",
        &s.sub("share"),
        &["discovery.sh"],
        &discovery_params(&c.serial, MODEL, (64 << 20) / 512),
        VmSpec {
            vfio_user: vec![&c.socket],
            daemon_log: Some(&d.log),
            ..VmSpec::default()
        },
    );
    out.assert_ok("discovery of the Sluice controller");
    assert_eq!(out.marker_lines("SLUICE_DISCOVERY_OK").len(), 1);
    out.assert_no_nvme_kernel_errors("discovery, boot and power-off of the Sluice controller");
}

/// 2. Data integrity: fio randwrite + crc32c verify (4k-128k, QD32, 2 jobs) on a RAM
///    namespace and a file namespace of one controller.
#[test]
#[ignore = "boots QEMU guests: run scripts/vm-test.sh (needs root and scripts/vm-rig/setup.sh)"]
fn vm_02_fio_verify_ram_and_file() {
    require_rig();
    let s = Scratch::new("verify");
    let d = daemon_with_transport(&s.path, "vm_02", &[]);
    let file = s.sub("data").join("ns2.img");
    let c = add_ctrl(
        &d,
        &s.path,
        0,
        &[
            ("Malloc0", Backing::Malloc { mib: 64 }),
            (
                "File0",
                Backing::File {
                    path: file,
                    mib: 64,
                },
            ),
        ],
    );
    let out = run_guest(
        "vm_02_verify",
        &s.sub("share"),
        &["verify.sh"],
        &[
            ("SN", c.serial.clone()),
            ("NSIDS", "1 2".to_string()),
            ("SIZE", "16M".to_string()),
        ],
        VmSpec {
            vfio_user: vec![&c.socket],
            daemon_log: Some(&d.log),
            ..VmSpec::default()
        },
    );
    out.assert_ok("fio verify over RAM (nsid 1) and file (nsid 2) namespaces");
    assert_eq!(
        out.marker_lines("SLUICE_VERIFY_OK").len(),
        2,
        "both namespaces must be verified"
    );
}

/// 3. Filesystem: mkfs.ext4 + files + sync in one VM; a new VM on the same controller
///    (file backend) finds the same checksums.
#[test]
#[ignore = "boots QEMU guests: run scripts/vm-test.sh (needs root and scripts/vm-rig/setup.sh)"]
fn vm_03_ext4_persists_across_vm_restart() {
    require_rig();
    let s = Scratch::new("ext4");
    let d = daemon_with_transport(&s.path, "vm_03", &[]);
    let file = s.sub("data").join("fs.img");
    let c = add_ctrl(
        &d,
        &s.path,
        0,
        &[(
            "File0",
            Backing::File {
                path: file,
                mib: 128,
            },
        )],
    );
    let params = [("SN", c.serial.clone())];
    let vfio = VmSpec {
        vfio_user: vec![&c.socket],
        daemon_log: Some(&d.log),
        ..VmSpec::default()
    };
    let sums = ext4_write("vm_03_write", &s.sub("share1"), &params, vfio);
    let share2 = s.sub("share2");
    fs::write(share2.join("sums"), &sums).unwrap();
    let out = run_guest(
        "vm_03_check",
        &share2,
        &["fs-check.sh"],
        &params,
        VmSpec {
            vfio_user: vec![&c.socket],
            daemon_log: Some(&d.log),
            ..VmSpec::default()
        },
    );
    out.assert_ok("second VM: the ext4 files must survive the VM restart");
    assert_eq!(out.marker_lines("SLUICE_FS_VERIFIED").len(), 1);
}

/// 4. Hot plug: nvmf_subsystem_add_ns while the guest runs fio on namespace 1 makes namespace
///    2 appear (AEN + rescan); nvmf_subsystem_remove_ns makes it disappear; fio continues.
#[test]
#[ignore = "boots QEMU guests: run scripts/vm-test.sh (needs root and scripts/vm-rig/setup.sh)"]
fn vm_04_hotplug_namespace() {
    require_rig();
    let s = Scratch::new("hotplug");
    let d = daemon_with_transport(&s.path, "vm_04", &[]);
    let c = add_ctrl(&d, &s.path, 0, &[("Malloc0", Backing::Malloc { mib: 64 })]);
    create_bdev(&d, "Malloc1", &Backing::Malloc { mib: 32 });
    let share = s.sub("share");
    make_share(
        &share,
        &["hotplug.sh"],
        &[("SN", c.serial.clone()), ("WAIT", "30".to_string())],
    );
    let mut vm = Vm::boot(
        "vm_04_hotplug",
        &VmSpec {
            share: Some(&share),
            vfio_user: vec![&c.socket],
            daemon_log: Some(&d.log),
            ..VmSpec::default()
        },
    );
    vm.expect_marker("SLUICE_HOTPLUG_READY", Duration::from_secs(90));
    let nsid = d.rpc(&["nvmf_subsystem_add_ns", &c.nqn, "Malloc1"]);
    assert_eq!(nsid.trim(), "2", "hot-added namespace id");
    vm.expect_marker("SLUICE_NS_ADDED", Duration::from_secs(45));
    d.rpc(&["nvmf_subsystem_remove_ns", &c.nqn, "2"]);
    vm.expect_marker("SLUICE_NS_REMOVED", Duration::from_secs(45));
    let out = vm.finish();
    out.assert_ok("hot plug with I/O continuing on namespace 1");
    assert_eq!(out.marker_lines("SLUICE_HOTPLUG_OK").len(), 1);
}

/// 5. Faults: QEMU killed in the middle of fio; a new VM on the same controller reads back
///    every block the first one had flushed; the daemon logged the disconnect and still runs.
#[test]
#[ignore = "boots QEMU guests: run scripts/vm-test.sh (needs root and scripts/vm-rig/setup.sh)"]
fn vm_05_kill_qemu_mid_fio_then_reattach() {
    require_rig();
    let s = Scratch::new("kill");
    let mut d = daemon_with_transport(&s.path, "vm_05", &[]);
    let file = s.sub("data").join("kill.img");
    let c = add_ctrl(
        &d,
        &s.path,
        0,
        &[(
            "File0",
            Backing::File {
                path: file,
                mib: 64,
            },
        )],
    );
    let blocks = kill_mid_write(
        "vm_05_killed",
        &s.sub("share1"),
        &[("SN", c.serial.clone())],
        VmSpec {
            vfio_user: vec![&c.socket],
            daemon_log: Some(&d.log),
            ..VmSpec::default()
        },
    );

    assert!(!d.exited(), "the daemon died when QEMU was killed");
    d.try_rpc(&["nvmf_get_subsystems"])
        .unwrap_or_else(|e| panic!("the daemon does not answer RPC after QEMU was killed: {e}"));
    let logged = wait_until(Duration::from_secs(5), || {
        d.log_text().to_ascii_lowercase().contains("disconnect")
    });
    assert!(
        logged,
        "the daemon log ({}) has no 'disconnect' line after QEMU was killed:\n{}",
        d.log.display(),
        tail(&d.log_text(), 20)
    );

    let out = run_guest(
        "vm_05_reattach",
        &s.sub("share2"),
        &["check-blocks.sh"],
        &[("SN", c.serial.clone()), ("BLOCKS", blocks.join(" "))],
        VmSpec {
            vfio_user: vec![&c.socket],
            daemon_log: Some(&d.log),
            ..VmSpec::default()
        },
    );
    out.assert_ok("a new VM must find every flushed block intact");
    assert_eq!(out.marker_lines("SLUICE_BLOCKS_OK").len(), 1);
}

/// 6. Two VMs on two controllers at once, fio verify on both.
#[test]
#[ignore = "boots QEMU guests: run scripts/vm-test.sh (needs root and scripts/vm-rig/setup.sh)"]
fn vm_06_two_vms_two_controllers() {
    require_rig();
    let s = Scratch::new("two");
    let d = daemon_with_transport(&s.path, "vm_06", &[]);
    let c0 = add_ctrl(&d, &s.path, 0, &[("Malloc0", Backing::Malloc { mib: 64 })]);
    let c1 = add_ctrl(&d, &s.path, 1, &[("Malloc1", Backing::Malloc { mib: 64 })]);
    let mut vms = Vec::new();
    for (i, c) in [&c0, &c1].into_iter().enumerate() {
        let share = s.sub(&format!("share{i}"));
        make_share(
            &share,
            &["verify.sh"],
            &[
                ("SN", c.serial.clone()),
                ("NSIDS", "1".to_string()),
                ("SIZE", "16M".to_string()),
            ],
        );
        vms.push(Vm::boot(
            &format!("vm_06_vm{i}"),
            &VmSpec {
                share: Some(&share),
                vfio_user: vec![&c.socket],
                mem_mib: Some(768),
                daemon_log: Some(&d.log),
                ..VmSpec::default()
            },
        ));
    }
    let outs: Vec<VmOutcome> = vms.into_iter().map(Vm::finish).collect();
    for (i, out) in outs.iter().enumerate() {
        out.assert_ok(&format!("VM {i} of two running at once"));
        assert_eq!(out.marker_lines("SLUICE_VERIFY_OK").len(), 1);
    }
}

/// 7. Shadow doorbells: with `disable_mappable_bar0` (`-M`, trapped BAR0) the controller
///    offers Doorbell Buffer Config, the Linux driver configures it (a counter in
///    nvmf_get_stats) and I/O works; then `-M -S` (trapped doorbells, no shadow) must not offer
///    it and I/O works too. (Mappable BAR0, the default, is what every other case runs.)
#[test]
#[ignore = "boots QEMU guests: run scripts/vm-test.sh (needs root and scripts/vm-rig/setup.sh)"]
fn vm_07_shadow_doorbells_and_trapped_bar0() {
    require_rig();
    let params = |c: &Ctrl, dbbuf: &str| {
        let mut p = discovery_params(&c.serial, MODEL, (64 << 20) / 512);
        p.push(("DBBUF", dbbuf.to_string()));
        p.push(("NSIDS", "1".to_string()));
        p.push(("SIZE", "8M".to_string()));
        p
    };
    let shadow_counters = |stats: &str| {
        json_numbers(stats, |k| {
            let k = k.to_ascii_lowercase();
            k.contains("shadow") || k.contains("dbbuf") || k.contains("doorbell_buffer")
        })
    };
    {
        let s = Scratch::new("shadow");
        let d = daemon_with_transport(&s.path, "vm_07_shadow", &["-M"]);
        let transports = d.rpc(&["nvmf_get_transports"]);
        let compact: String = transports.split_whitespace().collect();
        assert!(
            compact.contains("\"disable_mappable_bar0\":true"),
            "nvmf_get_transports does not show disable_mappable_bar0 true: {transports}"
        );
        let c = add_ctrl(&d, &s.path, 0, &[("Malloc0", Backing::Malloc { mib: 64 })]);
        run_guest(
            "vm_07_shadow",
            &s.sub("share"),
            &["discovery.sh", "verify.sh"],
            &params(&c, "1"),
            VmSpec {
                vfio_user: vec![&c.socket],
                daemon_log: Some(&d.log),
                ..VmSpec::default()
            },
        )
        .assert_ok("trapped BAR0 with shadow doorbells offered");
        let stats = d.rpc(&["nvmf_get_stats"]);
        let counters = shadow_counters(&stats);
        assert!(
            counters.values().any(|v| *v > 0.0),
            "nvmf_get_stats shows no shadow doorbell (Doorbell Buffer Config) counter > 0 \
             after a Linux guest ran with it offered: counters {counters:?}\n{stats}"
        );
    }
    let s = Scratch::new("trapped");
    let d = daemon_with_transport(&s.path, "vm_07_trapped", &["-M", "-S"]);
    let c = add_ctrl(&d, &s.path, 0, &[("Malloc0", Backing::Malloc { mib: 64 })]);
    run_guest(
        "vm_07_trapped",
        &s.sub("share"),
        &["discovery.sh", "verify.sh"],
        &params(&c, "0"),
        VmSpec {
            vfio_user: vec![&c.socket],
            daemon_log: Some(&d.log),
            ..VmSpec::default()
        },
    )
    .assert_ok("trapped doorbells without shadow doorbells (-M -S)");
    let stats = d.rpc(&["nvmf_get_stats"]);
    let counters = shadow_counters(&stats);
    assert!(
        counters.values().all(|v| *v == 0.0),
        "shadow doorbell counters moved although shadow doorbells were disabled: {counters:?}"
    );
}

/// 8. Baseline: guest fio 4k randread QD32 on Sluice and on QEMU's own emulated NVMe in the
///    same VM; prints the ratio (TCG: functional, not a performance figure) and records it in
///    `$CARGO_TARGET_TMPDIR/vm-logs/baseline.txt`.
#[test]
#[ignore = "boots QEMU guests: run scripts/vm-test.sh (needs root and scripts/vm-rig/setup.sh)"]
fn vm_08_baseline_against_qemu_nvme() {
    require_rig();
    let s = Scratch::new("baseline");
    let d = daemon_with_transport(&s.path, "vm_08", &[]);
    let c = add_ctrl(&d, &s.path, 0, &[("Malloc0", Backing::Malloc { mib: 128 })]);
    let img = s.sub("img").join("q.img");
    fs::File::create(&img).unwrap().set_len(128 << 20).unwrap();
    let out = run_guest(
        "vm_08_baseline",
        &s.sub("share"),
        &["baseline.sh"],
        &[
            ("SN", c.serial.clone()),
            ("QSN", "qemu-nvme-0".to_string()),
            ("SECS", "4".to_string()),
        ],
        VmSpec {
            vfio_user: vec![&c.socket],
            nvme_img: vec![&img],
            daemon_log: Some(&d.log),
            ..VmSpec::default()
        },
    );
    out.assert_ok("baseline fio on Sluice and on QEMU's NVMe");
    let line = out
        .marker_lines("SLUICE_IOPS ")
        .pop()
        .expect("guest printed SLUICE_IOPS");
    let get = |k: &str| -> f64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line}"))
    };
    let (sl, qe) = (get("sluice="), get("qemu="));
    assert!(sl > 0.0 && qe > 0.0, "{line}");
    let accel = Command::new(repo_root().join("scripts/vm-rig/qemu.sh"))
        .arg("--print-accel")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let report = format!(
        "guest fio 4k randread QD32, 2 x 4 s interleaved, accel={accel}: sluice {sl:.0} IOPS, qemu-nvme {qe:.0} IOPS, ratio sluice/qemu {:.2}\n",
        sl / qe
    );
    eprint!("[vm] {report}");
    fs::write(log_dir().join("baseline.txt"), &report).unwrap();
}

// ------------------------------------------------------------------------------------------
// Harness self-checks (no VM)
// ------------------------------------------------------------------------------------------

#[test]
fn harness_sh_quote_and_json_scan() {
    assert_eq!(sh_quote("a b"), "'a b'");
    assert_eq!(sh_quote("it's"), r"'it'\''s'");
    let j = r#"{"poll_groups":[{"name":"g0","shadow_doorbell_configs": 2},{"shadow_doorbell_configs":1,"x":3}]}"#;
    let m = json_numbers(j, |k| k.contains("shadow"));
    assert_eq!(m.get("shadow_doorbell_configs"), Some(&3.0));
    assert!(json_numbers(j, |k| k == "missing").is_empty());
    assert!(json_numbers(r#"{"name": "shadow"}"#, |k| k == "name").is_empty());
}

#[test]
fn harness_missing_rig_fails_with_the_fix() {
    let err = std::panic::catch_unwind(|| require_rig_at(Path::new("/nonexistent/sluice-rig")))
        .expect_err("a missing rig must fail the test");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("VM rig missing") && msg.contains("scripts/vm-rig/setup.sh"),
        "{msg}"
    );
}
