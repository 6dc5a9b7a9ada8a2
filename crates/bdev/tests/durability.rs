//! Durability: a write acknowledged after Flush (or with FUA) survives SIGKILL of the
//! process. The test re-executes its own binary as the writer (env SLUICE_DURABILITY_FILE),
//! waits for the "FLUSHED" line, SIGKILLs it and reopens the file.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::sync::Arc;

use sluice_bdev::{layered::Layered, Bdev, FileBdev, FileEngine, FileOptions, IoOp, IoRequest};

const ENV: &str = "SLUICE_DURABILITY_FILE";

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Child half (ignored unless re-executed with the env var set).
#[test]
#[ignore = "helper: run by durability_after_sigkill in a child process"]
fn durability_child() {
    let Ok(path) = std::env::var(ENV) else { return };
    let engine = match std::env::var("SLUICE_DURABILITY_ENGINE").as_deref() {
        Ok("pool") => FileEngine::ThreadPool,
        _ => FileEngine::Uring,
    };
    let mut o = FileOptions::new("d", &path);
    o.engine = engine;
    let b: Arc<dyn Bdev> = Layered::wrap(Arc::new(FileBdev::open(&o).unwrap()));
    let mut ch = b.open_channel().unwrap();
    common::write_at(ch.as_mut(), 0, &pattern(1, 65536), false).unwrap();
    common::write_at(ch.as_mut(), 1 << 20, &pattern(2, 4096), false).unwrap();
    assert_eq!(
        common::run_one(ch.as_mut(), IoRequest::new(IoOp::Flush, 0, 0, 3)),
        Ok(())
    );
    common::write_at(ch.as_mut(), 2 << 20, &pattern(3, 8192), true).unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "FLUSHED").unwrap();
    out.flush().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn run(engine: &str) {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(4 << 20).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "durability_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV, f.path())
        .env("SLUICE_DURABILITY_ENGINE", engine)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut flushed = false;
    for l in lines.by_ref() {
        if l.unwrap().trim_end().ends_with("FLUSHED") {
            flushed = true;
            break;
        }
    }
    assert!(flushed, "child did not report FLUSHED");
    child.kill().unwrap(); // SIGKILL
    let st = child.wait().unwrap();
    assert!(!st.success());
    let file = std::fs::File::open(f.path()).unwrap();
    let mut a = vec![0u8; 65536];
    file.read_exact_at(&mut a, 0).unwrap();
    assert!(a == pattern(1, 65536), "flushed write lost");
    let mut b = vec![0u8; 4096];
    file.read_exact_at(&mut b, 1 << 20).unwrap();
    assert!(b == pattern(2, 4096), "flushed write lost");
    let mut c = vec![0u8; 8192];
    file.read_exact_at(&mut c, 2 << 20).unwrap();
    assert!(c == pattern(3, 8192), "FUA write lost");
}

#[test]
fn durability_after_sigkill_uring() {
    run("uring");
}

#[test]
fn durability_after_sigkill_thread_pool() {
    run("pool");
}
