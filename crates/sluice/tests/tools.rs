//! `sluice perf` and `sluice identify` through the real binary against `sluice serve`
//! (issue 7 acceptance 1): bad transport ids and unreachable sockets fail with a clear
//! message and a non-zero status; good runs print spdk_nvme_perf's table and
//! spdk_nvme_identify's layout. Also `sluice rpc -s <ip> -p <port>` (TCP is not served).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{run_bounded, Daemon, BIN, NQN};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A daemon serving a null bdev (RPC-configured) on listener `<tmp>/vfu`.
fn null_target() -> (Daemon, PathBuf) {
    let d = Daemon::start(&[]);
    let dir = d.serve_null("64", "SPDK0", &[]);
    (d, dir)
}

fn trid(dir: &Path) -> String {
    format!("trtype:VFIOUSER traddr:{} subnqn:{NQN}", dir.display())
}

fn perf_args(trid: &str) -> Vec<&str> {
    vec![
        "perf",
        "-r",
        trid,
        "-q",
        "8",
        "-o",
        "4096",
        "-w",
        "randread",
        "-t",
        "1",
        "--no-progress",
    ]
}

/// Every bad transport id: non-zero status, `invalid transport id` with the reason, and
/// nothing but the error on stderr (no panic, no backtrace).
#[test]
fn bad_transport_ids_fail_clearly() {
    let cases: &[(&str, &str)] = &[
        ("traddr:/tmp", "missing trtype"),
        ("trtype:VFIOUSER", "missing traddr"),
        ("trtype:VFIOUSER traddr:", "traddr"),
        (
            "trtype:PCIE traddr:0000:01:00.0",
            "unsupported trtype 'PCIE'",
        ),
        ("trtype:RDMA traddr:10.0.0.1", "unsupported trtype 'RDMA'"),
        ("garbage", "'garbage' is not key:value"),
        ("", "missing trtype"),
        ("trtype:VFIOUSER traddr:/tmp bogus:1", "bogus"),
    ];
    for (t, reason) in cases {
        for tool in ["perf", "identify"] {
            let mut args = vec![tool, "-r", t];
            if tool == "perf" {
                args.extend(["-w", "randread", "-t", "1", "--no-progress"]);
            }
            let out = run_bounded(&args, Duration::from_secs(10));
            let err = text(&out.stderr);
            assert!(!out.status.success(), "{tool} -r '{t}' succeeded");
            assert_eq!(out.status.code(), Some(1), "{tool} -r '{t}': {err}");
            assert!(
                err.contains(&format!("sluice {tool}: invalid transport id"))
                    && err.contains(reason),
                "{tool} -r '{t}': expected '{reason}' in: {err}"
            );
            assert!(!err.contains("panicked"), "{tool} -r '{t}': {err}");
        }
    }
}

/// No socket, a directory without `cntrl`, and a stale socket nobody accepts on: a clear
/// `cannot connect` error naming the socket, status 1, promptly.
#[test]
fn unreachable_socket_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let empty_dir = tmp.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let stale_dir = tmp.path().join("stale");
    std::fs::create_dir(&stale_dir).unwrap();
    // A socket file whose listener is gone (what kill -9 leaves): ECONNREFUSED.
    drop(std::os::unix::net::UnixListener::bind(stale_dir.join("cntrl")).unwrap());
    let missing = tmp.path().join("missing");
    let cases = [
        (missing.clone(), missing.display().to_string()),
        (
            empty_dir.clone(),
            empty_dir.join("cntrl").display().to_string(),
        ),
        (
            stale_dir.clone(),
            stale_dir.join("cntrl").display().to_string(),
        ),
    ];
    for (dir, sock) in &cases {
        let t = trid(dir);
        for tool in ["perf", "identify"] {
            let args = if tool == "perf" {
                perf_args(&t)
            } else {
                vec!["identify", "-r", &t]
            };
            let out = run_bounded(&args, Duration::from_secs(10));
            let err = text(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{tool} {}: {err}",
                dir.display()
            );
            assert!(
                err.contains("cannot connect to vfio-user socket") && err.contains(sock.as_str()),
                "{tool} {}: {err}",
                dir.display()
            );
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

/// A good run against an RPC-configured null bdev: spdk_nvme_perf's preamble and table.
#[test]
fn perf_prints_spdk_table_against_null_bdev() {
    let (d, dir) = null_target();
    let t = trid(&dir);
    let out = run_bounded(&perf_args(&t), Duration::from_secs(60));
    let so = text(&out.stdout);
    assert!(out.status.success(), "{so}\n{}", text(&out.stderr));
    let label = format!("VFIOUSER ({})", dir.display());
    for want in [
        "Initializing NVMe Controllers".to_owned(),
        format!(
            "Attached to NVMe over vfio-user controller at {}: {NQN}",
            dir.display()
        ),
        format!("Associating {label} NSID 1 with lcore 0"),
        "Initialization complete. Launching workers.".to_owned(),
        "Latency(us)".to_owned(),
    ] {
        assert!(so.contains(&want), "missing '{want}' in:\n{so}");
    }
    let header = so
        .lines()
        .find(|l| l.starts_with("Device Information"))
        .unwrap_or_else(|| panic!("no header:\n{so}"));
    let cols: Vec<&str> = header
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(cols, ["IOPS", "MiB/s", "Average", "min", "max"], "{header}");
    let row_prefix = format!("{label} NSID 1 from core  0");
    let numbers = |prefix: &str| -> Vec<f64> {
        let line = so
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no '{prefix}' row:\n{so}"));
        let v: Vec<f64> = line
            .rsplit(':')
            .next()
            .unwrap()
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(v.len(), 5, "{line}");
        v
    };
    let row = numbers(&row_prefix);
    let total = numbers("Total");
    assert!(total[0] > 0.0, "no I/O completed:\n{so}");
    assert_eq!(row[0], total[0], "one worker: its row is the total");
    // MiB/s = IOPS * 4 KiB.
    assert!(
        (total[1] - total[0] * 4096.0 / 1048576.0).abs() < 0.02,
        "{so}"
    );
    assert!(
        total[3] <= total[2] && total[2] <= total[4],
        "min <= avg <= max:\n{so}"
    );
    // The target saw the I/O.
    let stats = d.rpc_json(&["nvmf_get_stats"]);
    assert!(
        stats["poll_groups"][0]["completed_nvme_io"]
            .as_u64()
            .unwrap()
            > 0,
        "{stats}"
    );
}

/// `--json` gives a machine-readable report with the same figures.
#[test]
fn perf_json_against_quickstart() {
    let tmp = tempfile::tempdir().unwrap();
    let qs = tmp.path().join("qs");
    let qs_s = qs.display().to_string();
    let mut d = Daemon::start_in(
        tmp,
        &["--quickstart-dir", &qs_s, "--quickstart-size-mib", "16"],
    );
    // The daemon answers RPCs only once the quickstart is configured.
    assert!(qs.join("cntrl").exists(), "no quickstart listener");
    let t = trid(&qs);
    let mut args = perf_args(&t);
    let w = args.iter().position(|a| *a == "randread").unwrap();
    args[w] = "randwrite";
    args.push("--json");
    let out = run_bounded(&args, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    assert!(v["total"]["ios"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["total"]["errors"], 0, "{v}");
    let (status, _) = d.terminate();
    assert!(status.success());
}

/// Labels of spdk_nvme_identify's report that Sluice's must carry (from the reference
/// output), plus values that come from the subsystem configuration.
#[test]
fn identify_prints_spdk_layout() {
    let (_d, dir) = null_target();
    let t = trid(&dir);
    let out = run_bounded(&["identify", "-r", &t], Duration::from_secs(30));
    let so = text(&out.stdout);
    assert!(out.status.success(), "{so}\n{}", text(&out.stderr));
    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/reference/spdk-output/spdk-identify.txt"
    ))
    .ok();
    let fixed = [
        "Controller Capabilities/Features",
        "Vendor ID:",
        "Serial Number:",
        "Model Number:",
        "Max Data Transfer Size:",
        "Max Number of Namespaces:",
        "NVMe Specification Version (VS):",
        "Admin Command Set Attributes",
        "Active Namespaces",
        "Namespace ID:1",
    ];
    for label in fixed {
        assert!(so.contains(label), "missing '{label}' in:\n{so}");
    }
    if let Some(r) = reference {
        // Every section title of the reference (a line followed by a '=' rule).
        let lines: Vec<&str> = r.lines().collect();
        for w in lines.windows(2) {
            let (title, rule) = (w[0].trim(), w[1].trim());
            if !title.is_empty()
                && rule.len() >= 4
                && rule.chars().all(|c| c == '=')
                && !title.starts_with("NVMeoF Controller at")
            {
                assert!(so.contains(title), "section '{title}' missing in:\n{so}");
            }
        }
    }
    assert!(
        so.contains(&format!(
            "NVMeoF Controller at VFIOUSER ({})",
            dir.display()
        )),
        "{so}"
    );
    let value = |label: &str| -> String {
        so.lines()
            .find(|l| l.starts_with(label))
            .map(|l| l[label.len()..].trim().to_owned())
            .unwrap_or_else(|| panic!("no '{label}':\n{so}"))
    };
    assert_eq!(value("Serial Number:"), "SPDK0");
    assert_eq!(value("Vendor ID:"), "4e58");
}

/// rpc.py's `-s <ip> -p <port>`: Sluice's RPC is Unix-only; say so instead of taking
/// `-p` as the method name or trying to connect somewhere.
#[test]
fn rpc_tcp_address_is_refused_clearly() {
    for args in [
        vec!["rpc", "-s", "127.0.0.1", "-p", "5260", "spdk_get_version"],
        vec!["rpc", "-s", "::1", "spdk_get_version"],
        vec!["rpc", "-p", "5260", "-s", "localhost", "rpc_get_methods"],
    ] {
        let out = run_bounded(&args, Duration::from_secs(10));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("not supported: Unix socket path expected"),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
    let out = run_bounded(&["rpc", "-p"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("-p expects a port number"));
    // `-p` with a Unix path is ignored (rpc.py uses the port only for IP addresses).
    let d = Daemon::start(&[]);
    let out = run_bounded(
        &[
            "rpc",
            "-s",
            d.sock.to_str().unwrap(),
            "-p",
            "5260",
            "spdk_get_version",
        ],
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("version"));
}

/// A peer that accepts and hangs up at once (not a vfio-user server): a clear error naming
/// the socket and status 1, promptly.
#[test]
fn peer_hanging_up_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = std::os::unix::net::UnixListener::bind(tmp.path().join("cntrl")).unwrap();
    let acceptor = std::thread::spawn(move || {
        for _ in 0..2 {
            let (s, _) = listener.accept().unwrap();
            drop(s);
        }
    });
    let t = trid(tmp.path());
    for args in [perf_args(&t), vec!["identify", "-r", &t]] {
        let out = run_bounded(&args, Duration::from_secs(10));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("cannot connect to vfio-user socket")
                && err.contains(&tmp.path().join("cntrl").display().to_string()),
            "{args:?}: {err}"
        );
    }
    acceptor.join().unwrap();
}

/// The target dies mid-run (SIGKILL): `perf -t 30` notices the lost connection, counts the
/// outstanding I/Os as timed out and exits with status 1 long before `-t` is over.
#[test]
fn perf_fails_promptly_when_the_target_dies() {
    use std::io::BufRead;
    let (mut d, dir) = null_target();
    let t = trid(&dir);
    let mut args = perf_args(&t);
    let tpos = args.iter().position(|a| *a == "-t").unwrap();
    args[tpos + 1] = "30";
    let mut child = Command::new(BIN)
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("Launching workers") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "perf ended early");
    }
    // I/O is flowing (so some is outstanding when the target dies).
    common::wait_until("I/O from perf", || {
        let s = d.rpc_json(&["nvmf_get_stats"]);
        let n = s.pointer("/poll_groups/0/completed_nvme_io")?.as_u64()?;
        (n >= 100).then_some(())
    });
    d.kill9();
    let start = Instant::now();
    let status = common::wait_timeout(&mut child, Duration::from_secs(10));
    assert!(start.elapsed() < Duration::from_secs(10));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("connection to the target lost") && err.contains("timed out"),
        "{err}"
    );
}
