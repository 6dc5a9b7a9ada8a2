//! SIGTERM is prompt with a busy poll thread (issue 5 daemon, follow-up): with a client
//! doing I/O, with an idle connected client and with none, `sluice serve --poll-mode busy`
//! exits with status 0 within a bound and removes the `cntrl`, RPC and lock files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::{connect_nvme, spawn_quiet, wait_until, Daemon, NQN};

/// The bound on SIGTERM -> exit (the daemon needs well under 200 ms on an idle machine;
/// the margin is for the loaded 2-core CI box).
const EXIT_BOUND: Duration = Duration::from_secs(2);

/// SIGTERM, then require a prompt exit 0 with every socket file removed.
fn terminate_promptly(d: &mut Daemon, dir: &Path, what: &str) {
    let start = Instant::now();
    let (status, err) = d.terminate();
    let took = start.elapsed();
    eprintln!("{what}: SIGTERM -> exit took {took:?}");
    assert!(status.success(), "{what}: exit {status}: {err}");
    assert!(
        took < EXIT_BOUND,
        "{what}: exit took {took:?} (bound {EXIT_BOUND:?}): {err}"
    );
    assert!(!dir.join("cntrl").exists(), "{what}: cntrl socket left");
    assert!(!d.sock.exists(), "{what}: RPC socket left");
    let mut lock = d.sock.clone().into_os_string();
    lock.push(".lock");
    assert!(!PathBuf::from(lock).exists(), "{what}: RPC lock left");
}

/// `sluice perf` as an external I/O client (it keeps the queues full until killed).
fn start_perf(dir: &Path) -> Child {
    let trid = format!("trtype:VFIOUSER traddr:{} subnqn:{NQN}", dir.display());
    spawn_quiet(&[
        "perf",
        "-r",
        &trid,
        "-q",
        "32",
        "-o",
        "4096",
        "-w",
        "randrw",
        "-t",
        "60",
        "--no-progress",
    ])
}

fn io_count(d: &Daemon) -> Option<u64> {
    let s = d.rpc_json(&["nvmf_get_stats"]);
    s.pointer("/poll_groups/0/completed_nvme_io")
        .and_then(serde_json::Value::as_u64)
}

fn sigterm_with_io(mode: &str, rounds: usize) {
    for round in 0..rounds {
        let mut d = Daemon::start(&["--poll-mode", mode]);
        let dir = d.serve_null("64", "SN0", &[]);
        let mut perf = start_perf(&dir);
        wait_until("I/O from perf (1000 completed commands)", || {
            io_count(&d).filter(|n| *n >= 1000)
        });
        terminate_promptly(&mut d, &dir, &format!("{mode} with I/O, round {round}"));
        // The client cannot tell a dead target from a slow one (mapped doorbells): kill it.
        let _ = perf.kill();
        let _ = perf.wait();
    }
}

#[test]
fn sigterm_busy_poller_with_io_is_prompt() {
    sigterm_with_io("busy", 3);
}

#[test]
fn sigterm_adaptive_poller_with_io_is_prompt() {
    sigterm_with_io("adaptive", 1);
}

#[test]
fn sigterm_busy_poller_with_idle_client_is_prompt() {
    for round in 0..3 {
        let mut d = Daemon::start(&["--poll-mode", "busy"]);
        let dir = d.serve_null("64", "SN0", &[]);
        let mut c = connect_nvme(&dir.join("cntrl"));
        c.set_num_queues(1, 1).unwrap();
        let qp = c.create_io_queue_pair(1, 32, None).unwrap();
        let ctrls = d.rpc_json(&["nvmf_subsystem_get_controllers", NQN]);
        assert_eq!(
            ctrls.as_array().unwrap().len(),
            1,
            "client attached: {ctrls}"
        );
        terminate_promptly(&mut d, &dir, &format!("busy, idle client, round {round}"));
        drop(qp);
        drop(c);
    }
}

#[test]
fn sigterm_busy_poller_without_client_is_prompt() {
    let mut d = Daemon::start(&["--poll-mode", "busy", "-m", "0x1"]);
    let dir = d.serve_null("64", "SN0", &[]);
    terminate_promptly(&mut d, &dir, "busy, no client");
}

/// SIGTERM while a long `-c` configuration is still being applied (here 300 rounds of a
/// 64 MiB malloc bdev created and deleted, several seconds, busy poller taking a CPU):
/// the replay stops at the next entry and the daemon exits 0 promptly, files removed.
#[test]
fn sigterm_during_long_startup_is_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    for _ in 0..300 {
        entries.push(serde_json::json!({"method": "bdev_malloc_create",
            "params": {"name": "M0", "block_size": 512, "num_blocks": 131072}}));
        entries.push(serde_json::json!({"method": "bdev_malloc_delete",
            "params": {"name": "M0"}}));
    }
    let cfg = serde_json::json!({"subsystems": [{"subsystem": "bdev", "config": entries}]});
    let path = dir.path().join("long.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let path_s = path.display().to_string();
    // SIGTERM as soon as the RPC socket exists: the configuration (several seconds) is
    // then either about to start or running; both must stop at the next entry. (No sleep
    // to "land inside" it: how long the replay takes depends on the machine's load.)
    let mut d = Daemon::start_listening(dir, &["--poll-mode", "busy", "-c", &path_s]);
    let start = Instant::now();
    let (status, err) = d.terminate();
    let took = start.elapsed();
    assert!(status.success(), "exit {status}: {err}");
    assert!(took < EXIT_BOUND, "exit took {took:?}: {err}");
    assert!(
        err.contains("startup interrupted by shutdown"),
        "SIGTERM did not arrive during the startup (config too short?): {err}"
    );
    assert!(!d.sock.exists(), "RPC socket left");
}
