//! The tools give up on a target that stops answering: a peer that accepts but never replies
//! fails the connect after `reply_timeout`; `perf` fails (instead of spinning forever) when
//! the target dies or stops completing I/Os mid-run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::{Target, TargetOptions};
use sluice_nvme_host::perf::run;
use sluice_nvme_host::{Controller, ControllerOptions, Error, PerfArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    perf: PerfArgs,
}

fn perf_args(trid: &str, extra: &[&str]) -> PerfArgs {
    let mut v = vec!["perf", "-r", trid, "--no-progress", "-w", "randread"];
    v.extend_from_slice(extra);
    Cli::parse_from(v).perf
}

/// Runs perf on its own thread; the result (or nothing, if it hangs) comes back on `rx`.
fn spawn_perf(mut c: Controller, args: PerfArgs) -> mpsc::Receiver<Result<(), Error>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = run(&mut c, &args, "test").map(|_| ());
        let _ = tx.send(r);
    });
    rx
}

#[test]
fn silent_peer_fails_connect_after_reply_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("cntrl");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // Accept and hold the connection open without ever answering.
    let holder = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let opts = ControllerOptions {
        dma_size: 1 << 20,
        reply_timeout: Some(Duration::from_secs(1)),
        ..ControllerOptions::default()
    };
    let start = Instant::now();
    let err = Controller::connect(&sock, opts).unwrap_err();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "connect took {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "gave up early: {took:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("no reply from the peer within 1s") && msg.contains("cntrl"),
        "{msg}"
    );
    drop(holder.join().unwrap());
}

#[test]
fn default_reply_timeout_is_bounded() {
    assert_eq!(
        ControllerOptions::default().reply_timeout,
        Some(Duration::from_secs(10))
    );
}

#[test]
fn perf_fails_when_target_dies_mid_run() {
    let t = Target::start(TargetOptions::default());
    let c = t.connect();
    // -t 30: without the liveness check the run would last far longer than the bound.
    let rx = spawn_perf(c, perf_args(&t.trid(), &["-t", "30", "-q", "8"]));
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    drop(t);
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("perf still running 10 s after the target died");
    assert!(start.elapsed() < Duration::from_secs(10));
    match r {
        Err(Error::IoTimeout { reason, .. }) => {
            assert!(reason.contains("connection to the target lost"), "{reason}")
        }
        other => panic!("expected IoTimeout, got {other:?}"),
    }
}

#[test]
fn perf_fails_when_target_stops_completing() {
    let mut t = Target::start(TargetOptions::default());
    let c = t.connect();
    let rx = spawn_perf(
        c,
        perf_args(&t.trid(), &["-t", "1", "--io-timeout", "1", "-q", "8"]),
    );
    std::thread::sleep(Duration::from_millis(300));
    // The connection stays up, but nothing completes any more.
    t.stop_poller();
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("perf still running well past -t + --io-timeout");
    match r {
        Err(e @ Error::IoTimeout { timed_out, .. }) => {
            assert!(timed_out > 0, "{e}");
            assert!(e.to_string().contains("deadline"), "{e}");
        }
        other => panic!("expected IoTimeout, got {other:?}"),
    }
}

#[test]
fn perf_still_succeeds_with_a_live_target() {
    let t = Target::start(TargetOptions::default());
    let c = t.connect();
    let rx = spawn_perf(c, perf_args(&t.trid(), &["-t", "1", "--io-timeout", "1"]));
    let r = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(r.is_ok(), "{r:?}");
}
