//! Acceptance 3: every bad input gets its error, and `nvmf_get_subsystems` (and the bdev
//! list) is unchanged after it: no partial state.

mod common;

use common::{Daemon, Raw, NQN};
use serde_json::{json, Value};

fn setup(d: &Daemon) -> std::path::PathBuf {
    let dir = d.mkdir("ctrl0");
    d.rpc_ok(&["nvmf_create_transport", "-t", "VFIOUSER"]);
    d.rpc_ok(&["nvmf_create_subsystem", "-a", "-s", "SN0", "-m", "4", NQN]);
    d.rpc_ok(&["bdev_null_create", "Null0", "16", "512"]);
    d.rpc_ok(&["bdev_null_create", "Null1", "16", "512"]);
    d.rpc_ok(&["nvmf_subsystem_add_ns", NQN, "Null0"]);
    d.listen(NQN, &dir);
    dir
}

/// A response's `result` (null if it has none).
fn result(response: Value) -> Value {
    response.get("result").cloned().unwrap_or_default()
}

fn snapshot(c: &mut Raw) -> (Value, Value, Value) {
    (
        result(c.call(100, "nvmf_get_subsystems", None)),
        result(c.call(101, "bdev_get_bdevs", None)),
        result(c.call(102, "nvmf_get_transports", None)),
    )
}

/// (method, params, expected code, a word the message must contain)
fn cases(dir: &str, long_dir: &str) -> Vec<(&'static str, Value, i64, String)> {
    vec![
        // Strict params: unknown, missing, wrong type -> -32602 naming the param.
        (
            "nvmf_create_subsystem",
            json!({"nqn":"nqn.2019-07.io.spdk:x","bogus":1}),
            -32602,
            "bogus".into(),
        ),
        ("nvmf_create_subsystem", json!({}), -32602, "nqn".into()),
        (
            "nvmf_create_subsystem",
            json!({"nqn":"nqn.2019-07.io.spdk:x","max_namespaces":"many"}),
            -32602,
            "max_namespaces".into(),
        ),
        (
            "nvmf_create_subsystem",
            json!({"nqn":"not-an-nqn"}),
            -32602,
            "nqn".into(),
        ),
        (
            "nvmf_create_subsystem",
            json!({"nqn":"nqn.2019-07.io.spdk:x","serial_number":"123456789012345678901"}),
            -32602,
            "serial_number".into(),
        ),
        (
            "nvmf_create_subsystem",
            json!({"nqn":NQN}),
            -32603,
            "exists".into(),
        ),
        (
            "bdev_null_create",
            json!({"name":"N","block_size":512}),
            -32602,
            "num_blocks".into(),
        ),
        (
            "bdev_null_create",
            json!({"name":"N","block_size":513,"num_blocks":8}),
            -32602,
            "block_size".into(),
        ),
        (
            "bdev_null_create",
            json!({"name":"N","block_size":512,"num_blocks":-1}),
            -32602,
            "num_blocks".into(),
        ),
        (
            "bdev_null_create",
            json!({"name":"Null0","block_size":512,"num_blocks":8}),
            -17,
            "exists".into(),
        ),
        (
            "bdev_malloc_create",
            json!({"name":"M","block_size":4096,"num_blocks":1u64<<40}),
            -32602,
            "memory".into(),
        ),
        (
            "bdev_aio_create",
            json!({"name":"A","filename":"/nonexistent/file"}),
            -32602,
            "filename".into(),
        ),
        (
            "bdev_null_delete",
            json!({"name":"Null0"}),
            -32602,
            "in use".into(),
        ),
        (
            "bdev_null_delete",
            json!({"name":"Nope"}),
            -19,
            "Nope".into(),
        ),
        (
            "bdev_set_qos_limit",
            json!({"name":"Null1","rw_ios_per_sec":1500}),
            -32602,
            "rw_ios_per_sec".into(),
        ),
        (
            "nvmf_create_transport",
            json!({"trtype":"VFIOUSER"}),
            -32603,
            "already exists".into(),
        ),
        (
            "nvmf_create_transport",
            json!({"trtype":"RDMA"}),
            -32602,
            "trtype".into(),
        ),
        (
            "nvmf_create_transport",
            json!({"trtype":"VFIOUSER","dma_timeout_ms":60_001}),
            -32602,
            "dma_timeout_ms".into(),
        ),
        (
            "nvmf_create_transport",
            json!({"trtype":"VFIOUSER","require_sealed_dma":"yes"}),
            -32602,
            "require_sealed_dma".into(),
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn":NQN,"namespace":{"bdev_name":"Missing"}}),
            -32602,
            "bdev_name".into(),
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn":NQN,"namespace":{"bdev_name":"Null0"}}),
            -32602,
            "claimed".into(),
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn":NQN,"namespace":{"bdev_name":"Null1","nsid":1}}),
            -32602,
            "nsid".into(),
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn":NQN,"namespace":{"bdev_name":"Null1","nsid":5}}),
            -32602,
            "nsid".into(),
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn":NQN,"namespace":{"bdev_name":"Null1","nguid":"xyz"}}),
            -32602,
            "nguid".into(),
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn":"nqn.2019-07.io.spdk:none","namespace":{"bdev_name":"Null1"}}),
            -32602,
            "nqn".into(),
        ),
        (
            "nvmf_subsystem_remove_ns",
            json!({"nqn":NQN,"nsid":9}),
            -32602,
            "nsid".into(),
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn":NQN,"listen_address":{"trtype":"VFIOUSER","traddr":"/nonexistent/dir","trsvcid":"0"}}),
            -32602,
            "does not exist".into(),
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn":NQN,"listen_address":{"trtype":"VFIOUSER","traddr":dir,"trsvcid":"0"}}),
            -32602,
            "already exists".into(),
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn":NQN,"listen_address":{"trtype":"VFIOUSER","traddr":long_dir,"trsvcid":"0"}}),
            -32602,
            "longer".into(),
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn":NQN,"listen_address":{"trtype":"TCP","traddr":"127.0.0.1","trsvcid":"4420"}}),
            -32602,
            "trtype".into(),
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn":NQN,"listen_address":{"trtype":"VFIOUSER"}}),
            -32602,
            "traddr".into(),
        ),
        (
            "nvmf_subsystem_remove_listener",
            json!({"nqn":NQN,"listen_address":{"trtype":"VFIOUSER","traddr":"/other"}}),
            -32602,
            "traddr".into(),
        ),
        (
            "nvmf_delete_subsystem",
            json!({"nqn":"nqn.2019-07.io.spdk:none"}),
            -32602,
            "not found".into(),
        ),
        (
            "nvmf_get_subsystems",
            json!({"tgt_name":"other"}),
            -32602,
            "tgt_name".into(),
        ),
        (
            "spdk_get_version",
            json!({}),
            -32602,
            "no parameters".into(),
        ),
        ("framework_start_init", Value::Null, -1, "framework".into()),
        (
            "framework_get_config",
            json!({"name":"nope"}),
            -32602,
            "nope".into(),
        ),
        (
            "spdk_kill_instance",
            json!({"sig_name":"SIGFOO"}),
            -32602,
            "sig_name".into(),
        ),
        (
            "no_such_method",
            Value::Null,
            -32601,
            "no_such_method".into(),
        ),
    ]
}

#[test]
fn every_bad_input_is_rejected_without_partial_state() {
    let d = Daemon::start(&[]);
    let dir = setup(&d);
    // A directory that exists but whose <dir>/cntrl does not fit sun_path.
    let mut long = d.path("");
    while long.as_os_str().len() < 110 {
        long = long.join("d".repeat(40));
    }
    std::fs::create_dir_all(&long).unwrap();
    let mut c = Raw::connect(&d.sock);
    let before = snapshot(&mut c);
    for (i, (method, params, code, word)) in cases(dir.to_str().unwrap(), long.to_str().unwrap())
        .into_iter()
        .enumerate()
    {
        let p = if params.is_null() {
            None
        } else {
            Some(params.clone())
        };
        let r = c.call(i as u64 + 1, method, p);
        let err = &r["error"];
        assert_eq!(err["code"], code, "{method} {params}: {r}");
        let msg = err["message"].as_str().unwrap();
        assert!(
            msg.contains(word.as_str()),
            "{method} {params}: message '{msg}' lacks '{word}'"
        );
        assert_eq!(
            snapshot(&mut c),
            before,
            "state changed after {method} {params}"
        );
    }
    // The listener is still served.
    assert!(dir.join("cntrl").exists());
}

#[test]
fn cli_reports_errors_with_exit_1() {
    let d = Daemon::start(&[]);
    let out = d.rpc(&["bdev_null_create", "Null0", "notanumber", "512"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid"));
    let out = d.rpc(&["nvmf_subsystem_add_listener", NQN, "-a", "/tmp"]);
    assert_eq!(out.status.code(), Some(1), "missing required -t");
    let out = d.rpc(&["bdev_null_delete", "Nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"code\": -19"));
    let out = std::process::Command::new(common::BIN)
        .args([
            "rpc",
            "-s",
            d.path("nosock").to_str().unwrap(),
            "spdk_get_version",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[test]
fn wait_for_rpc_state_machine() {
    let d = Daemon::start(&["--wait-for-rpc"]);
    let out = d.rpc(&["bdev_get_bdevs"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"code\": -1"));
    let current = d.rpc_json(&["rpc_get_methods", "--current"]);
    assert!(current
        .as_array()
        .unwrap()
        .contains(&json!("framework_start_init")));
    d.rpc_ok(&["framework_start_init"]);
    d.rpc_ok(&["framework_wait_init"]);
    assert_eq!(d.rpc_json(&["bdev_get_bdevs"]), json!([]));
}

#[test]
fn bad_daemon_flags_exit_1_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rpc.sock");
    for (args, word) in [
        (vec!["-m", "zz"], "cpumask"),
        (vec!["-m", "[4000]"], "cpumask"),
        (vec!["--poll-max-sleep-us", "0"], "poll-max-sleep-us"),
        (vec!["--log-level", "no=such=filter"], "log-level"),
    ] {
        let out = std::process::Command::new(common::BIN)
            .args(["serve", "--empty", "-r", sock.to_str().unwrap()])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(word), "{args:?}: {err}");
        assert!(!sock.exists(), "{args:?} left the RPC socket behind");
    }
}
