//! Acceptance 4: save_config -> restart with -c -> save_config gives an identical file;
//! load_config over RPC too; signals remove sockets; stale sockets are cleaned.

mod common;

use common::{Daemon, Raw, NQN};
use std::io::{Read, Write};
use std::process::{Command, Stdio};

fn configure(d: &Daemon) -> std::path::PathBuf {
    let dir = d.mkdir("vfu0");
    let file = d.file("disk.img", 1 << 20);
    d.rpc_ok(&[
        "nvmf_create_transport",
        "-t",
        "VFIOUSER",
        "-M",
        "-q",
        "128",
        "-m",
        "8",
        "--require-sealed-dma",
        "--dma-timeout-ms",
        "750",
    ]);
    d.rpc_ok(&["bdev_null_create", "Null0", "32", "4096"]);
    d.rpc_ok(&["bdev_malloc_create", "8", "512", "-b", "Malloc0"]);
    d.rpc_ok(&["bdev_aio_create", &file.to_string_lossy(), "Aio0"]);
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
    d.listen(NQN, &dir);
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
    assert_eq!(
        t[0]["require_sealed_dma"], true,
        "Sluice DMA options survive"
    );
    assert_eq!(t[0]["dma_timeout_ms"], 750);
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
    let listener_dir = find_param(
        &old_dir,
        "nvmf_subsystem_add_listener",
        "/listen_address/traddr",
    );
    let aio_file = find_param(&old_dir, "bdev_aio_create", "/filename");
    let text = saved.replace(&listener_dir.unwrap(), d2.path("vfu0").to_str().unwrap());
    let new_file = d2.file("disk.img", 1 << 20);
    let text = text.replace(&aio_file.unwrap(), new_file.to_str().unwrap());
    let mut child = Command::new(common::BIN)
        .args(["rpc", "-s", d2.sock.to_str().unwrap(), "load_config"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    let t = d2.rpc_json(&["nvmf_get_transports"]);
    assert_eq!(t[0]["require_sealed_dma"], true, "load_config applies them");
    assert_eq!(t[0]["dma_timeout_ms"], 750);
    assert!(d2.path("vfu0").join("cntrl").exists());
}

/// The string at `pointer` in the params of the first `method` entry of a config.
fn find_param(cfg: &serde_json::Value, method: &str, pointer: &str) -> Option<String> {
    cfg.get("subsystems")?
        .as_array()?
        .iter()
        .filter_map(|s| s.get("config")?.as_array())
        .flatten()
        .find(|e| e.get("method").and_then(serde_json::Value::as_str) == Some(method))?
        .get("params")?
        .pointer(pointer)?
        .as_str()
        .map(str::to_owned)
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
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("sluice serve: config {}", cfg.display()))
            && err.contains("bdev_null_create")
            && err.contains("block_size"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!sock.exists(), "RPC socket left behind");
    assert!(!dir.path().join("rpc.sock.lock").exists(), "RPC lock left");
}

/// A quickstart that cannot be built (directory not creatable, size 0): exit 1 with the
/// reason, RPC socket and lock removed.
#[test]
fn failing_quickstart_exits_1_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rpc.sock");
    let sock_s = sock.display().to_string();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    // A directory below a regular file cannot be created.
    let under_file = file.join("sub").display().to_string();
    let ok_dir = dir.path().join("qs").display().to_string();
    for (args, word) in [
        (
            vec!["--quickstart-dir", &under_file],
            "quickstart: cannot create",
        ),
        (
            vec!["--quickstart-dir", &ok_dir, "--quickstart-size-mib", "0"],
            "--quickstart-size-mib",
        ),
    ] {
        let mut all = vec!["serve", "-r", &sock_s];
        all.extend(&args);
        let out = common::run_bounded(&all, std::time::Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(word), "{args:?}: {err}");
        assert!(!sock.exists(), "{args:?}: RPC socket left behind");
        assert!(
            !dir.path().join("rpc.sock.lock").exists(),
            "{args:?}: lock left"
        );
    }
}

/// A `-c` file of `rounds` malloc bdev create/delete pairs (long enough that a client can
/// connect while it is applied), then a null bdev `name` with `block_size`.
fn long_config(
    dir: &std::path::Path,
    rounds: usize,
    name: &str,
    block_size: u32,
) -> std::io::Result<String> {
    let mut entries = Vec::new();
    for _ in 0..rounds {
        entries.push(serde_json::json!({"method": "bdev_malloc_create",
            "params": {"name": "M0", "block_size": 512, "num_blocks": 32768}}));
        entries.push(serde_json::json!({"method": "bdev_malloc_delete",
            "params": {"name": "M0"}}));
    }
    entries.push(serde_json::json!({"method": "bdev_null_create",
        "params": {"name": name, "block_size": block_size, "num_blocks": 8}}));
    let cfg = serde_json::json!({"subsystems": [{"subsystem": "bdev", "config": entries}]});
    let path = dir.join("long.json");
    std::fs::write(&path, cfg.to_string())?;
    Ok(path.display().to_string())
}

/// A client that connects while `-c` is being applied waits and is answered once the
/// configuration is complete (SPDK's waitforlisten relies on this).
#[test]
fn early_client_is_served_after_the_config_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = long_config(dir.path(), 100, "Last", 512).unwrap();
    let d = Daemon::start_listening(dir, &["-c", &cfg]);
    let mut c = Raw::connect(&d.sock);
    // The configuration can take seconds on a loaded machine.
    c.stream.set_read_timeout(Some(common::SETTLE)).unwrap();
    let r = c.call(1, "bdev_get_bdevs", None);
    let names: Vec<&str> = r["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["Last"],
        "answered before the config was applied: {r}"
    );
}

/// A `-c` entry that fails after a long prefix: a client connected meanwhile sees the
/// connection end (no hang), the daemon exits 1 naming the entry, files removed.
#[test]
fn failing_config_with_early_client_exits_1_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    // block_size 7 is invalid.
    let cfg = long_config(dir.path(), 100, "Bad", 7).unwrap();
    let mut d = Daemon::start_listening(dir, &["-c", &cfg]);
    let mut c = std::os::unix::net::UnixStream::connect(&d.sock).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    c.write_all(br#"{"jsonrpc":"2.0","method":"spdk_get_version","id":1}"#)
        .unwrap();
    let mut buf = Vec::new();
    // EOF or ECONNRESET: either way the connection ends without an answer.
    let got = loop {
        match c.read_to_end(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    match got {
        Ok(_) => assert!(
            buf.is_empty(),
            "answered: {}",
            String::from_utf8_lossy(&buf)
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let mut child = d.child.take().unwrap();
    let status = common::wait_timeout(&mut child, std::time::Duration::from_secs(30));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("config") && err.contains("bdev_null_create") && err.contains("block_size"),
        "{err}"
    );
    assert!(!d.sock.exists(), "RPC socket left behind");
}

#[test]
fn sigint_and_kill_instance_exit_cleanly_and_kill9_leftovers_are_cleaned() {
    let mut d = Daemon::start(&[]);
    let dir = d.mkdir("l0");
    d.rpc_ok(&["nvmf_create_transport", "-t", "VFIOUSER"]);
    d.rpc_ok(&["nvmf_create_subsystem", "-a", NQN]);
    d.listen(NQN, &dir);
    // kill -9 leaves both sockets behind.
    d.kill9();
    assert!(dir.join("cntrl").exists());
    assert!(d.sock.exists());
    // The next start replaces the stale RPC socket and the stale cntrl.
    d.spawn(&[]);
    d.rpc_ok(&["nvmf_create_transport", "-t", "VFIOUSER"]);
    d.rpc_ok(&["nvmf_create_subsystem", "-a", NQN]);
    d.listen(NQN, &dir);
    // spdk_kill_instance SIGINT: orderly exit 0, sockets removed.
    d.rpc_ok(&["spdk_kill_instance", "SIGINT"]);
    let mut child = d.child.take().unwrap();
    let status = common::wait_timeout(&mut child, std::time::Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(!dir.join("cntrl").exists());
    assert!(!d.sock.exists());
}
