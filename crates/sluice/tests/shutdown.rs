//! SIGTERM is prompt with a busy poll thread (issue 5 daemon, follow-up): with a client
//! doing I/O, with an idle connected client and with none, `sluice serve --poll-mode busy`
//! exits with status 0 within a bound and removes the `cntrl`, RPC and lock files.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, BIN};
use sluice_nvme_host::{Controller, ControllerOptions};

const NQN: &str = "nqn.2019-07.io.spdk:cnode0";
/// The bound on SIGTERM -> exit (the daemon needs well under 200 ms on an idle machine;
/// the margin is for the loaded 2-core CI box).
const EXIT_BOUND: Duration = Duration::from_secs(2);

fn null_target(d: &Daemon) -> PathBuf {
    let dir = d.mkdir("vfu");
    d.rpc_ok(&["nvmf_create_transport", "-t", "VFIOUSER"]);
    d.rpc_ok(&["bdev_null_create", "Null0", "64", "512"]);
    d.rpc_ok(&["nvmf_create_subsystem", "-a", "-s", "SN0", NQN]);
    d.rpc_ok(&["nvmf_subsystem_add_ns", NQN, "Null0"]);
    d.rpc_ok(&[
        "nvmf_subsystem_add_listener",
        NQN,
        "-t",
        "VFIOUSER",
        "-a",
        dir.to_str().unwrap(),
    ]);
    dir
}

/// SIGTERM, then require a prompt exit 0 with every socket file removed.
fn terminate_promptly(d: &mut Daemon, dir: &std::path::Path, what: &str) {
    let start = Instant::now();
    let (status, err) = d.terminate();
    let took = start.elapsed();
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
fn start_perf(dir: &std::path::Path) -> Child {
    let trid = format!("trtype:VFIOUSER traddr:{} subnqn:{NQN}", dir.display());
    Command::new(BIN)
        .args([
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
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn io_count(d: &Daemon) -> u64 {
    let s = d.rpc_json(&["nvmf_get_stats"]);
    s["poll_groups"][0]["completed_nvme_io"].as_u64().unwrap()
}

fn sigterm_with_io(mode: &str, rounds: usize) {
    for round in 0..rounds {
        let mut d = Daemon::start(&["--poll-mode", mode]);
        let dir = null_target(&d);
        let mut perf = start_perf(&dir);
        // Wait until I/O is flowing (bounded).
        let start = Instant::now();
        let mut last = 0;
        while last < 1000 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no I/O from perf ({last} I/Os)"
            );
            std::thread::sleep(Duration::from_millis(20));
            last = io_count(&d);
        }
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
        let dir = null_target(&d);
        let opts = ControllerOptions {
            dma_size: 4 << 20,
            admin_timeout: Duration::from_secs(5),
            ..ControllerOptions::default()
        };
        let mut c = Controller::connect(&dir.join("cntrl"), opts).unwrap();
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
    let dir = null_target(&d);
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
    let mut d = Daemon::start_listening(dir, &["--poll-mode", "busy", "-c", &path_s]);
    std::thread::sleep(Duration::from_millis(300));
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
