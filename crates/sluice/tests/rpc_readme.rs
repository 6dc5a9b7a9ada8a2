//! Acceptance 1: the README command sequence against the real daemon, with result shapes
//! compared to SPDK's real outputs (tests/data, copied from spdk-output/).

mod common;

use std::io::{BufRead, BufReader};

use common::{assert_same_shape, reference, Daemon, NQN};
use serde_json::{json, Value};

#[test]
fn readme_sequence_matches_spdk_shapes() {
    let d = Daemon::start(&[]);
    let dir = d.mkdir("nvme0");
    let dir_s = dir.to_str().unwrap();

    assert_eq!(d.rpc_ok(&["nvmf_create_transport", "-t", "VFIOUSER"]), "");
    assert_eq!(
        d.rpc_ok(&["nvmf_create_subsystem", "-a", "-s", "SN0", "-m", "64", NQN]),
        ""
    );
    assert_eq!(
        d.rpc_ok(&["bdev_null_create", "Null0", "102400", "512"]),
        "Null0\n"
    );
    assert_eq!(d.rpc_ok(&["nvmf_subsystem_add_ns", NQN, "Null0"]), "1\n");
    assert_eq!(
        d.rpc_ok(&[
            "nvmf_subsystem_add_listener",
            "-t",
            "VFIOUSER",
            "-a",
            dir_s,
            "-s",
            "0",
            NQN
        ]),
        ""
    );
    assert!(dir.join("cntrl").exists(), "listener socket <traddr>/cntrl");

    let subs = d.rpc_json(&["nvmf_get_subsystems"]);
    assert_same_shape(&reference("spdk-nvmf_get_subsystems.json"), &subs);
    let s = &subs[1];
    assert_eq!(s["nqn"], NQN);
    assert_eq!(s["serial_number"], "SN0");
    assert_eq!(s["max_namespaces"], 64);
    assert_eq!(s["allow_any_host"], true);
    assert_eq!(s["listen_addresses"][0]["traddr"], dir_s);
    assert_eq!(s["listen_addresses"][0]["adrfam"], "unknown");
    assert_eq!(s["namespaces"][0]["bdev_name"], "Null0");
    let uuid = s["namespaces"][0]["uuid"].as_str().unwrap().to_owned();
    assert_eq!(
        s["namespaces"][0]["nguid"].as_str().unwrap(),
        uuid.replace('-', "").to_uppercase()
    );

    let transports = d.rpc_json(&["nvmf_get_transports"]);
    assert_same_shape(&reference("spdk-nvmf_get_transports.json"), &transports);

    let bdevs = d.rpc_json(&["bdev_get_bdevs", "-b", "Null0"]);
    assert_eq!(bdevs[0]["num_blocks"], 102400u64 * 2048);
    assert_eq!(bdevs[0]["block_size"], 512);
    assert_eq!(bdevs[0]["uuid"], uuid);
    assert_eq!(bdevs[0]["claimed"], true);

    // save_config: same top-level shape; each nvmf/bdev entry matches SPDK's entry shape.
    let saved = d.rpc_json(&["save_config"]);
    let spdk = reference("spdk-save_config.json");
    let find = |cfg: &Value, sub: &str, method: &str| -> Option<Value> {
        cfg["subsystems"]
            .as_array()?
            .iter()
            .find(|s| s["subsystem"] == sub)?["config"]
            .as_array()?
            .iter()
            .find(|e| e["method"] == method)
            .cloned()
    };
    for (sub, method) in [
        ("bdev", "bdev_null_create"),
        ("bdev", "bdev_wait_for_examine"),
        ("nvmf", "nvmf_create_transport"),
        ("nvmf", "nvmf_create_subsystem"),
        ("nvmf", "nvmf_subsystem_add_ns"),
        ("nvmf", "nvmf_subsystem_add_listener"),
    ] {
        let r = find(&spdk, sub, method).unwrap_or_else(|| panic!("ref lacks {method}"));
        let a = find(&saved, sub, method).unwrap_or_else(|| panic!("save_config lacks {method}"));
        assert_same_shape(&r, &a);
    }
    // Lossless: the vfio-user options are saved too.
    let t = find(&saved, "nvmf", "nvmf_create_transport").unwrap();
    assert_eq!(t["params"]["disable_mappable_bar0"], false);

    let version = d.rpc_json(&["spdk_get_version"]);
    assert!(version["version"].is_string());
    assert!(version["fields"]["major"].is_number());
    let methods = d.rpc_json(&["rpc_get_methods"]);
    for m in [
        "nvmf_create_transport",
        "bdev_null_create",
        "framework_get_config",
    ] {
        assert!(methods.as_array().unwrap().contains(&json!(m)));
    }
}

#[test]
fn remove_listener_and_delete_paths() {
    let d = Daemon::start(&[]);
    let dir = d.mkdir("l");
    let dir_s = dir.to_str().unwrap();
    d.rpc_ok(&["nvmf_create_transport", "-t", "VFIOUSER"]);
    d.rpc_ok(&["nvmf_create_subsystem", "-a", NQN]);
    d.rpc_ok(&["bdev_malloc_create", "8", "512", "-b", "Malloc1"]);
    assert_eq!(
        d.rpc_ok(&["nvmf_subsystem_add_ns", NQN, "Malloc1", "-n", "5"]),
        "5\n"
    );
    d.rpc_ok(&[
        "nvmf_subsystem_add_listener",
        NQN,
        "-t",
        "vfiouser",
        "-a",
        dir_s,
        "-s",
        "0",
    ]);
    assert!(dir.join("cntrl").exists());
    d.rpc_ok(&[
        "nvmf_subsystem_remove_listener",
        NQN,
        "-t",
        "VFIOUSER",
        "-a",
        dir_s,
        "-s",
        "0",
    ]);
    assert!(
        !dir.join("cntrl").exists(),
        "socket removed with the listener"
    );
    d.rpc_ok(&["nvmf_subsystem_remove_ns", NQN, "5"]);
    d.rpc_ok(&["bdev_malloc_delete", "Malloc1"]);
    d.rpc_ok(&["nvmf_delete_subsystem", NQN]);
    let subs = d.rpc_json(&["nvmf_get_subsystems"]);
    assert_eq!(subs.as_array().unwrap().len(), 1, "only discovery left");
    assert_eq!(d.rpc_json(&["bdev_get_bdevs"]), json!([]));
    let out = d.rpc(&["nvmf_subsystem_get_controllers", "nqn.2019-07.io.spdk:none"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Got JSON-RPC error response") && err.contains("-32602"),
        "{err}"
    );
}

#[test]
fn quickstart_prints_qemu_and_cloud_hypervisor_lines() {
    let dir = tempfile::tempdir().unwrap();
    let qs = dir.path().join("qs");
    let qs_s = qs.to_str().unwrap().to_owned();
    let mut d = Daemon::start_in(
        dir,
        &["--quickstart-dir", &qs_s, "--quickstart-size-mib", "16"],
    );
    let sock = qs.join("cntrl");
    let stdout = d.child.as_mut().unwrap().stdout.take().unwrap();
    let mut text = String::new();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.contains("Stop with Ctrl-C");
        text.push_str(&line);
        text.push('\n');
        if done {
            break;
        }
    }
    assert!(sock.exists());
    let sock_s = sock.display().to_string();
    assert!(text.contains(&format!(
        "-device '{{\"driver\":\"vfio-user-pci\",\"socket\":{{\"path\":\"{sock_s}\",\"type\":\"unix\"}}}}'"
    )), "{text}");
    assert!(
        text.contains("memory-backend-memfd,id=mem,size=2G,share=on"),
        "{text}"
    );
    assert!(text.contains("memory-backend=mem"), "{text}");
    assert!(
        text.contains(&format!("--user-device socket={sock_s}")),
        "{text}"
    );
    assert!(text.contains("--memory size=2G,shared=on"), "{text}");
    let subs = d.rpc_json(&["nvmf_get_subsystems"]);
    assert_eq!(subs[1]["namespaces"][0]["bdev_name"], "Malloc0");
    let (status, _) = d.terminate();
    drop(lines);
    assert!(status.success());
    assert!(!sock.exists(), "quickstart socket removed on SIGTERM");
}
