//! Acceptance 4: save_config -> restart with -c -> save_config gives an identical file;
//! load_config over RPC too; signals remove sockets; stale sockets are cleaned.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::Daemon;
use std::process::{Command, Stdio};

const NQN: &str = "nqn.2019-07.io.spdk:cnode0";

fn configure(d: &Daemon) -> std::path::PathBuf {
    let dir = d.mkdir("vfu0");
    let file = d.path("disk.img");
    std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
    d.rpc_ok(&[
        "nvmf_create_transport",
        "-t",
        "VFIOUSER",
        "-M",
        "-q",
        "128",
        "-m",
        "8",
    ]);
    d.rpc_ok(&["bdev_null_create", "Null0", "32", "4096"]);
    d.rpc_ok(&["bdev_malloc_create", "8", "512", "-b", "Malloc0"]);
    d.rpc_ok(&["bdev_aio_create", file.to_str().unwrap(), "Aio0"]);
    d.rpc_ok(&["bdev_set_qos_limit", "Malloc0", "--rw-ios-per-sec", "20000"]);
    d.rpc_ok(&[
        "nvmf_create_subsystem",
        "-a",
        "-s",
        "SN0",
        "-m",
        "16",
        "-d",
        "Model X",
        NQN,
    ]);
    d.rpc_ok(&["nvmf_subsystem_add_ns", NQN, "Null0"]);
    d.rpc_ok(&["nvmf_subsystem_add_ns", NQN, "Aio0", "-n", "7"]);
    d.rpc_ok(&["nvmf_create_subsystem", "nqn.2019-07.io.spdk:cnode1"]);
    d.rpc_ok(&[
        "nvmf_subsystem_add_ns",
        "nqn.2019-07.io.spdk:cnode1",
        "Malloc0",
    ]);
    d.rpc_ok(&[
        "nvmf_subsystem_add_listener",
        NQN,
        "-t",
        "VFIOUSER",
        "-a",
        dir.to_str().unwrap(),
        "-s",
        "0",
    ]);
    dir
}

#[test]
fn save_restart_with_c_save_is_identical() {
    let mut d = Daemon::start(&[]);
    let dir = configure(&d);
    let first = d.rpc_ok(&["save_config"]);
    let cfg = d.path("config.json");
    std::fs::write(&cfg, &first).unwrap();
    let (status, _) = d.terminate();
    assert!(status.success());
    assert!(!dir.join("cntrl").exists());
    assert!(!d.sock.exists());

    d.spawn(&["-c", cfg.to_str().unwrap()]);
    let second = d.rpc_ok(&["save_config"]);
    assert_eq!(first, second, "save_config after restart differs");
    assert!(dir.join("cntrl").exists(), "listener restored");
    let t = d.rpc_json(&["nvmf_get_transports"]);
    assert_eq!(
        t[0]["disable_mappable_bar0"], true,
        "vfio-user options survive (lossless)"
    );
    assert_eq!(t[0]["max_queue_depth"], 128);
}

#[test]
fn load_config_over_rpc_after_wait_for_rpc() {
    let d = Daemon::start(&[]);
    configure(&d);
    let saved = d.rpc_ok(&["save_config"]);
    drop(d);

    let d2 = Daemon::start(&["--wait-for-rpc"]);
    std::fs::create_dir_all(d2.path("vfu0")).unwrap();
    // Same paths: rewrite the old temp dir to the new one.
    let old_dir = serde_json::from_str::<serde_json::Value>(&saved).unwrap();
    let text = saved.replace(
        &find_listener_dir(&old_dir),
        d2.path("vfu0").to_str().unwrap(),
    );
    let text = text.replace(&find_aio_file(&old_dir), {
        let f = d2.path("disk.img");
        std::fs::write(&f, vec![0u8; 1 << 20]).unwrap();
        Box::leak(f.to_str().unwrap().to_owned().into_boxed_str())
    });
    let mut child = Command::new(common::BIN)
        .args(["rpc", "-s", d2.sock.to_str().unwrap(), "load_config"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = d2.rpc_ok(&["save_config"]);
    assert_eq!(again, text);
    assert!(d2.path("vfu0").join("cntrl").exists());
}

fn find_listener_dir(cfg: &serde_json::Value) -> String {
    for s in cfg["subsystems"].as_array().unwrap() {
        for e in s["config"].as_array().unwrap() {
            if e["method"] == "nvmf_subsystem_add_listener" {
                return e["params"]["listen_address"]["traddr"]
                    .as_str()
                    .unwrap()
                    .to_owned();
            }
        }
    }
    panic!("no listener");
}

fn find_aio_file(cfg: &serde_json::Value) -> String {
    for s in cfg["subsystems"].as_array().unwrap() {
        for e in s["config"].as_array().unwrap() {
            if e["method"] == "bdev_aio_create" {
                return e["params"]["filename"].as_str().unwrap().to_owned();
            }
        }
    }
    panic!("no aio bdev");
}

#[test]
fn bad_config_file_fails_start_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.json");
    std::fs::write(&cfg, r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_null_create","params":{"name":"N","block_size":7,"num_blocks":1}}]}]}"#).unwrap();
    let sock = dir.path().join("rpc.sock");
    let out = Command::new(common::BIN)
        .args([
            "serve",
            "-r",
            sock.to_str().unwrap(),
            "-c",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("block_size"));
}

#[test]
fn sigint_and_kill_instance_exit_cleanly_and_kill9_leftovers_are_cleaned() {
    let mut d = Daemon::start(&[]);
    let dir = d.mkdir("l0");
    d.rpc_ok(&["nvmf_create_transport", "-t", "VFIOUSER"]);
    d.rpc_ok(&["nvmf_create_subsystem", "-a", NQN]);
    d.rpc_ok(&[
        "nvmf_subsystem_add_listener",
        NQN,
        "-t",
        "VFIOUSER",
        "-a",
        dir.to_str().unwrap(),
    ]);
    // kill -9 leaves both sockets behind.
    d.kill9();
    assert!(dir.join("cntrl").exists());
    assert!(d.sock.exists());
    // The next start replaces the stale RPC socket and the stale cntrl.
    d.spawn(&[]);
    d.rpc_ok(&["nvmf_create_transport", "-t", "VFIOUSER"]);
    d.rpc_ok(&["nvmf_create_subsystem", "-a", NQN]);
    d.rpc_ok(&[
        "nvmf_subsystem_add_listener",
        NQN,
        "-t",
        "VFIOUSER",
        "-a",
        dir.to_str().unwrap(),
    ]);
    // spdk_kill_instance SIGINT: orderly exit 0, sockets removed.
    d.rpc_ok(&["spdk_kill_instance", "SIGINT"]);
    let mut child = d.child.take().unwrap();
    let status = common::wait_timeout(&mut child, std::time::Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(!dir.join("cntrl").exists());
    assert!(!d.sock.exists());
}
