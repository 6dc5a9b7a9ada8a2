//! `perf` and `identify` against the in-process target: spdk_nvme_perf / spdk_nvme_identify
//! layouts, verify mode, bad transport ids and unreachable sockets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use clap::Parser;
use common::{Target, TargetOptions};
use sluice_nvme_host::identify_tool::identify;
use sluice_nvme_host::perf::{perf_main, run, Workload};
use sluice_nvme_host::{Error, PerfArgs, TransportId};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    perf: PerfArgs,
}

fn args(trid: &str, extra: &[&str]) -> PerfArgs {
    let mut v = vec!["perf", "-r", trid, "--no-progress"];
    v.extend_from_slice(extra);
    Cli::parse_from(v).perf
}

#[test]
fn identify_report_in_spdk_layout() {
    let t = Target::start(TargetOptions::default());
    let trid = TransportId::parse(&t.trid()).unwrap();
    let report = identify(&trid).unwrap();
    let s = report.render();
    for want in [
        "Vendor ID:                             4e58",
        "Serial Number:                         SLUICE0",
        "Model Number:                          Sluice NVMe Controller",
        "Max Data Transfer Size:                131072",
        "NVMe Specification Version (VS):       2.0",
        "Maximum Queue Entries:                 256",
        "Subsystem NQN:                         nqn.2024-01.io.sluice:cnode0",
        "Namespace ID:1",
        "Size (in LBAs):                        16384 (8MiB)",
        "LBA Format #00: Data Size:   512  Metadata Size:     0",
        "Admin Commands",
        "Read (02h): Supported",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
}

#[test]
fn perf_randrw_with_verify_two_threads() {
    let t = Target::start(TargetOptions::default());
    let mut c = t.connect();
    let a = args(
        &t.trid(),
        &[
            "-q", "8", "-o", "4096", "-w", "randrw", "-M", "50", "-t", "1", "-c", "0x3", "--verify",
        ],
    );
    let r = run(&mut c, &a, "VFIOUSER (test)").unwrap();
    assert_eq!(r.workers.len(), 2);
    assert!(r.total.ios > 100, "only {} I/Os", r.total.ios);
    assert_eq!(r.total.errors, 0);
    assert_eq!(r.total.miscompares, 0);
    assert!(r.total.p50_us > 0.0 && r.total.p50_us <= r.total.p99_us);
    assert!(r.total.p99_us <= r.total.max_us + 0.001);
    let table = r.render(1);
    assert!(table.contains("VFIOUSER (test) NSID 1 from core  1"));
    assert!(table.contains("Summary latency data"));
}

#[test]
fn perf_fixed_io_count_sequential_write_then_read() {
    let t = Target::start(TargetOptions::default());
    let mut c = t.connect();
    let a = args(
        &t.trid(),
        &[
            "-q",
            "4",
            "-o",
            "8192",
            "-w",
            "write",
            "--number-ios",
            "200",
            "--verify",
        ],
    );
    let r = run(&mut c, &a, "x").unwrap();
    assert_eq!(r.total.ios, 200);
    assert_eq!(r.workload, Workload::Write);
    // A second run on the same controller: Number of Queues was already set.
    let a = args(
        &t.trid(),
        &[
            "-q",
            "4",
            "-o",
            "8192",
            "-w",
            "read",
            "--number-ios",
            "200",
            "--verify",
        ],
    );
    let r = run(&mut c, &a, "x").unwrap();
    assert_eq!(r.total.ios, 200);
    assert_eq!(r.total.miscompares, 0);
}

#[test]
fn perf_rejects_bad_parameters() {
    let t = Target::start(TargetOptions::default());
    let mut c = t.connect();
    for extra in [
        &["-w", "read", "-o", "1000"][..],
        &["-w", "read", "-o", "262144"],
        &["-w", "read", "-q", "0"],
        &["-w", "rw", "-M", "101"],
        &["-w", "read", "-n", "9"],
    ] {
        let a = args(&t.trid(), extra);
        assert!(run(&mut c, &a, "x").is_err(), "{extra:?} must be rejected");
    }
}

#[test]
fn bad_trid_and_unreachable_socket_are_errors() {
    let a = args("trtype:TCP traddr:127.0.0.1", &["-w", "read"]);
    let e = perf_main(a).unwrap_err();
    assert!(matches!(e, Error::InvalidTransportId(_)));
    assert!(e.to_string().contains("unsupported trtype 'TCP'"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let a = args(
        &format!("trtype:VFIOUSER traddr:{}", dir.path().display()),
        &["-w", "read"],
    );
    let e = perf_main(a).unwrap_err();
    assert!(matches!(e, Error::Transport(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("cannot connect to vfio-user socket") && msg.contains("cntrl"),
        "unclear error: {msg}"
    );
    let trid =
        TransportId::parse(&format!("trtype:VFIOUSER traddr:{}", dir.path().display())).unwrap();
    assert!(identify(&trid).is_err());
}

#[test]
fn perf_several_queue_pairs_per_thread() {
    let t = Target::start(TargetOptions::default());
    let mut c = t.connect();
    let a = args(
        &t.trid(),
        &[
            "-q",
            "4",
            "-o",
            "4096",
            "-w",
            "randread",
            "-P",
            "3",
            "--number-ios",
            "300",
        ],
    );
    let r = run(&mut c, &a, "x").unwrap();
    assert_eq!(r.workers.len(), 1);
    assert_eq!(r.total.ios, 300);
    assert_eq!(r.total.errors, 0);
}
