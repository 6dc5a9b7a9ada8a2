//! `sluice serve`: the daemon's main loop (SPDK `nvmf_tgt` spirit).
//!
//! Start-up order: block SIGTERM/SIGINT (all threads inherit the mask; one thread waits for
//! them with `sigwait`), lock and bind the RPC socket, build the target, apply `-c` or the
//! quickstart, then serve RPC. On SIGTERM/SIGINT (or `spdk_kill_instance`): endpoints are
//! dropped (stop accepting, detach clients, remove their sockets), the RPC socket and its
//! lock are removed, exit 0.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::signal::{SigSet, Signal};
use serde_json::{json, Value};

use crate::daemon::Daemon;
use crate::jsonrpc::Dispatch;
use crate::nvme_plane::NvmePlane;
use crate::server::RpcSocket;
use crate::target::Target;

/// Poll thread behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PollMode {
    /// Spin all the time.
    Busy,
    /// Spin under load, back off when idle.
    Adaptive,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// `sluice serve` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// CPU mask of poll threads (hex like 0x3, or a list like [0,1,2-3]).
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    pub cpumask: String,
    /// RPC socket path (SPDK's /var/tmp/spdk.sock also works).
    #[arg(short = 'r', long = "rpc-socket", default_value = crate::client::DEFAULT_SOCKET)]
    pub rpc_socket: PathBuf,
    /// JSON config file (save_config format) applied at start.
    #[arg(short = 'c', long = "json")]
    pub json: Option<PathBuf>,
    /// Start in the startup state; configure over RPC, then framework_start_init.
    #[arg(long)]
    pub wait_for_rpc: bool,
    /// Start with no configuration (no quickstart).
    #[arg(long)]
    pub empty: bool,
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Poll thread mode.
    #[arg(long, value_enum, default_value_t = PollMode::Adaptive)]
    pub poll_mode: PollMode,
    /// Adaptive mode: idle polls before a poll thread starts sleeping.
    #[arg(long, default_value_t = 10_000)]
    pub poll_spin: u32,
    /// Adaptive mode: longest sleep of an idle poll thread, in microseconds (the worst-case
    /// added latency of the first doorbell after an idle period with a mapped BAR0).
    /// 4000 keeps an idle daemon near 1% of a core (bench/poll_modes.sh); 1000 measured
    /// 2.2-3% on the shared dev machine.
    #[arg(long, default_value_t = 4000)]
    pub poll_max_sleep_us: u64,
    /// Quickstart listener directory (created if missing).
    #[arg(long, default_value = "/var/tmp/sluice/cnode0")]
    pub quickstart_dir: PathBuf,
    /// Quickstart RAM namespace size in MiB.
    #[arg(long, default_value_t = 256)]
    pub quickstart_size_mib: u64,
}

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad command line value.
    #[error("{0}")]
    Usage(String),
    /// RPC socket setup.
    #[error(transparent)]
    Rpc(#[from] crate::server::ServerError),
    /// Config file could not be read or applied.
    #[error("config {path}: {message}")]
    Config {
        /// File.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Quickstart failed.
    #[error("quickstart: {0}")]
    Quickstart(String),
    /// Signal setup.
    #[error("signal setup: {0}")]
    Signal(#[from] nix::Error),
}

/// Parse an SPDK-style cpumask (`0x3`, `3` (hex), or `[0,2-3]`) and check the CPUs exist.
pub fn parse_cpumask(mask: &str) -> Result<Vec<usize>, ServeError> {
    let cpus = parse_cpumask_bits(mask)?;
    let online = std::thread::available_parallelism().map_or(1, usize::from);
    if let Some(c) = cpus.iter().find(|c| **c >= online) {
        return Err(ServeError::Usage(format!(
            "cpumask: CPU {c} is not available"
        )));
    }
    Ok(cpus)
}

/// Parse an SPDK-style cpumask into sorted CPU indices (no existence check).
pub fn parse_cpumask_bits(mask: &str) -> Result<Vec<usize>, ServeError> {
    let bad = || ServeError::Usage(format!("invalid cpumask '{mask}'"));
    let m = mask.trim();
    let mut cpus = Vec::new();
    if let Some(list) = m.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim().parse::<usize>(), b.trim().parse::<usize>()),
                None => (part.parse::<usize>(), part.parse::<usize>()),
            };
            let (lo, hi) = (lo.map_err(|_| bad())?, hi.map_err(|_| bad())?);
            if lo > hi || hi >= 1024 {
                return Err(bad());
            }
            cpus.extend(lo..=hi);
        }
    } else {
        let hex = m
            .strip_prefix("0x")
            .or_else(|| m.strip_prefix("0X"))
            .unwrap_or(m);
        if hex.is_empty() || hex.len() > 256 {
            return Err(bad());
        }
        for (nibble_idx, c) in hex.chars().rev().enumerate() {
            let v = c.to_digit(16).ok_or_else(bad)?;
            for bit in 0..4usize {
                if v & (1 << bit) != 0 {
                    cpus.push(nibble_idx * 4 + bit);
                }
            }
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        return Err(bad());
    }
    Ok(cpus)
}

fn init_logging(args: &ServeArgs) -> Result<(), ServeError> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .map_err(|e| ServeError::Usage(format!("invalid --log-level '{}': {e}", args.log_level)))?;
    // Colours only on a terminal: logs captured to files or journald stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let res = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Already initialised (tests): keep the existing subscriber.
    let _ = res;
    Ok(())
}

fn call(daemon: &Daemon, method: &str, params: Value) -> Result<Value, ServeError> {
    if daemon.stopping() {
        return Err(ServeError::Quickstart(format!(
            "interrupted by shutdown before {method}"
        )));
    }
    daemon
        .call(method, Some(&params))
        .map_err(|e| ServeError::Quickstart(format!("{method}: {}", e.message)))
}

/// Build the quickstart configuration and return the text to print.
pub fn quickstart(daemon: &Daemon, args: &ServeArgs) -> Result<String, ServeError> {
    let dir = &args.quickstart_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| ServeError::Quickstart(format!("cannot create {}: {e}", dir.display())))?;
    let nqn = "nqn.2019-07.io.spdk:cnode0";
    let num_blocks = args
        .quickstart_size_mib
        .checked_mul(2048)
        .filter(|n| *n > 0)
        .ok_or_else(|| ServeError::Usage("--quickstart-size-mib out of range".into()))?;
    call(
        daemon,
        "nvmf_create_transport",
        json!({"trtype": "VFIOUSER"}),
    )?;
    call(
        daemon,
        "bdev_malloc_create",
        json!({"name": "Malloc0", "block_size": 512, "num_blocks": num_blocks}),
    )?;
    call(
        daemon,
        "nvmf_create_subsystem",
        json!({"nqn": nqn, "allow_any_host": true, "serial_number": "SLUICE0", "max_namespaces": 32}),
    )?;
    call(
        daemon,
        "nvmf_subsystem_add_ns",
        json!({"nqn": nqn, "namespace": {"bdev_name": "Malloc0"}}),
    )?;
    call(
        daemon,
        "nvmf_subsystem_add_listener",
        json!({"nqn": nqn, "listen_address": {"trtype": "VFIOUSER", "traddr": dir, "trsvcid": "0"}}),
    )?;
    Ok(quickstart_text(nqn, dir, args))
}

fn quickstart_text(nqn: &str, dir: &Path, args: &ServeArgs) -> String {
    let sock = dir.join("cntrl");
    let sock = sock.display();
    let rpc = args.rpc_socket.display();
    format!(
        "Sluice is serving {nqn}: namespace 1 = Malloc0 ({size} MiB of RAM)\n\
         \x20 vfio-user socket: {sock}\n\
         \x20 RPC socket:       {rpc}   (try: sluice rpc -s {rpc} nvmf_get_subsystems)\n\
         \n\
         Attach a VM (its RAM must be shared and fd-backed):\n\
         \n\
         QEMU >= 10.1:\n\
         \x20 qemu-system-x86_64 -machine q35,accel=kvm,memory-backend=mem -cpu host -smp 2 -m 2G \\\n\
         \x20   -object memory-backend-memfd,id=mem,size=2G,share=on \\\n\
         \x20   -device '{{\"driver\":\"vfio-user-pci\",\"socket\":{{\"path\":\"{sock}\",\"type\":\"unix\"}}}}' \\\n\
         \x20   -drive file=guest.qcow2,if=virtio -nographic\n\
         \n\
         Cloud Hypervisor:\n\
         \x20 cloud-hypervisor --kernel vmlinux --disk path=guest.raw --cpus boot=2 \\\n\
         \x20   --memory size=2G,shared=on --user-device socket={sock}\n\
         \n\
         The guest sees an NVMe controller (/dev/nvme0n1). Stop with Ctrl-C (sockets are removed).\n",
        size = args.quickstart_size_mib,
    )
}

/// Run the daemon until SIGTERM/SIGINT. Returns Ok on an orderly shutdown.
pub fn run(args: ServeArgs) -> Result<(), ServeError> {
    init_logging(&args)?;
    // Block the shutdown signals before any thread exists, so only `sigwait` sees them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block()?;

    let cpus = parse_cpumask(&args.cpumask)?;
    tracing::info!(?cpus, poll_mode = ?args.poll_mode, "starting sluice");
    let rpc = RpcSocket::bind(&args.rpc_socket)?;

    // Called once the spdk_kill_instance response has been written (or by -c directly);
    // the signal thread below receives it like an external one.
    let kill: crate::daemon::KillHook = Box::new(|sig| {
        if let Ok(s) = Signal::try_from(sig) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), s);
        }
    });
    if !(1..=1_000_000).contains(&args.poll_max_sleep_us) {
        return Err(ServeError::Usage(
            "--poll-max-sleep-us must be in 1..=1000000".into(),
        ));
    }
    let mode = match args.poll_mode {
        PollMode::Busy => crate::nvme_plane::Mode::Busy,
        PollMode::Adaptive => crate::nvme_plane::Mode::Adaptive {
            spin_polls: args.poll_spin,
            max_sleep: std::time::Duration::from_micros(args.poll_max_sleep_us),
        },
    };
    let plane = NvmePlane::new(&cpus, mode)
        .map_err(|e| ServeError::Usage(format!("cannot start poll threads: {e}")))?;
    let target = Target::new(Box::new(plane));
    let daemon = Arc::new(Daemon::new(target, !args.wait_for_rpc, kill));

    // Wait for the signals on a thread of their own from here on, so that a SIGTERM
    // during a long startup (a large malloc bdev on a loaded machine, a busy poller taking
    // a CPU) stops the configuration at the next entry instead of after all of it.
    let (sig_tx, sig_rx) = std::sync::mpsc::channel::<Result<Signal, nix::Error>>();
    let d_sig = Arc::clone(&daemon);
    std::thread::Builder::new()
        .name("sluice-signals".into())
        .spawn(move || {
            let got = loop {
                match signals.wait() {
                    Ok(s) => break Ok(s),
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => break Err(e),
                }
            };
            if let Ok(sig) = got {
                tracing::info!(signal = ?sig, "shutdown requested");
                d_sig.request_stop();
            }
            let _ = sig_tx.send(got);
        })
        .map_err(|e| ServeError::Usage(format!("cannot start signal thread: {e}")))?;

    let startup = || -> Result<(), ServeError> {
        if let Some(path) = &args.json {
            let cfg_err = |message: String| ServeError::Config {
                path: path.clone(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| cfg_err(e.to_string()))?;
            let cfg: Value =
                serde_json::from_str(&text).map_err(|e| cfg_err(format!("invalid JSON: {e}")))?;
            daemon.apply_config(&cfg).map_err(|e| cfg_err(e.message))?;
            tracing::info!(path = %path.display(), "configuration applied");
        } else if !args.wait_for_rpc && !args.empty {
            let text = quickstart(&daemon, &args)?;
            // Never die on a closed stdout (EPIPE): the daemon keeps serving.
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}").and_then(|()| out.flush());
        }
        Ok(())
    };
    if let Err(e) = startup() {
        daemon.target().shutdown();
        if daemon.stopping() {
            // SIGTERM/SIGINT during startup: a requested stop, not a failure.
            tracing::info!(error = %e, "startup interrupted by shutdown");
            remove_rpc_files(&rpc);
            tracing::info!("stopped");
            return Ok(());
        }
        return Err(e);
    }

    let d = Arc::clone(&daemon);
    let rpc = Arc::new(rpc);
    let rpc2 = Arc::clone(&rpc);
    std::thread::Builder::new()
        .name("sluice-rpc".into())
        .spawn(move || {
            let e = rpc2.serve(d);
            tracing::error!(error = %e, "RPC server stopped");
        })
        .map_err(|e| ServeError::Usage(format!("cannot start RPC thread: {e}")))?;
    tracing::info!(socket = %rpc.path().display(), "RPC server listening");

    let sig = match sig_rx.recv() {
        Ok(got) => got?,
        Err(_) => return Err(ServeError::Usage("signal thread stopped".into())),
    };
    tracing::info!(signal = ?sig, "shutting down");
    daemon.target().shutdown();
    remove_rpc_files(&rpc);
    tracing::info!("stopped");
    Ok(())
}

/// Remove the RPC socket and lock; the accept thread dies with the process.
fn remove_rpc_files(rpc: &RpcSocket) {
    let path = rpc.path().to_path_buf();
    let _ = std::fs::remove_file(&path);
    let mut lock = path.into_os_string();
    lock.push(".lock");
    let _ = std::fs::remove_file(lock);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpumask_forms() {
        assert_eq!(parse_cpumask("0x1").unwrap(), vec![0]);
        assert_eq!(parse_cpumask_bits("0x5").unwrap(), vec![0, 2]);
        assert_eq!(parse_cpumask_bits("[0,2-3]").unwrap(), vec![0, 2, 3]);
        assert!(parse_cpumask_bits("0x0").is_err());
        assert!(parse_cpumask_bits("zz").is_err());
        assert!(parse_cpumask_bits("[3-1]").is_err());
        assert!(parse_cpumask("[1023]").is_err());
    }
}
