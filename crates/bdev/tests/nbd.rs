//! NBD backend against real servers: `qemu-nbd` (file-backed) and `nbdkit` (memory),
//! over Unix sockets and TCP loopback; server killed mid-I/O and restarted.
//! A missing tool FAILS the test (install `qemu-utils` and `nbdkit`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_bdev::{layered::Layered, Bdev, IoError, IoOp, IoRequest, NbdAddr, NbdBdev, NbdOptions};

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "required tool `{name}` is not installed (apt-get install -y qemu-utils nbdkit)"
    );
    name.to_owned()
}

fn wait_for(cond: impl Fn() -> bool, what: &str) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn qemu_nbd_unix(image: &Path, sock: &Path) -> Server {
    let _ = std::fs::remove_file(sock);
    let child = Command::new(tool("qemu-nbd"))
        .args(["-f", "raw", "--persistent", "--shared=4", "-x", "exp", "-k"])
        .arg(sock)
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn qemu-nbd");
    wait_for(|| sock.exists(), "qemu-nbd socket");
    Server(child)
}

/// A `size`-byte image in `dir` served by qemu-nbd on `dir/nbd.sock` (export "exp").
fn qemu_nbd_image(dir: &Path, size: u64) -> (Server, PathBuf, PathBuf) {
    let img = image(dir, size);
    let sock = dir.join("nbd.sock");
    let srv = qemu_nbd_unix(&img, &sock);
    (srv, img, sock)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn image(dir: &Path, size: u64) -> PathBuf {
    let p = dir.join("disk.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

fn nbd(addr: NbdAddr, export: &str, timeout: Duration) -> (Arc<NbdBdev>, Arc<dyn Bdev>) {
    let mut o = NbdOptions::new("nbd0", addr, export);
    o.io_timeout = timeout;
    let raw = Arc::new(NbdBdev::connect(o).unwrap());
    let wrapped = Layered::wrap(Arc::clone(&raw) as Arc<dyn Bdev>);
    (raw, wrapped)
}

#[test]
fn qemu_nbd_unix_integrity() {
    let dir = tempfile::tempdir().unwrap();
    let (_srv, _img, sock) = qemu_nbd_image(dir.path(), 16 << 20);
    let (raw, b) = nbd(NbdAddr::Unix(sock), "exp", Duration::from_secs(10));
    let caps = b.info().caps;
    assert!(
        caps.flush && caps.fua && caps.write_zeroes && caps.unmap,
        "{caps:?}"
    );
    assert_eq!(b.info().size_bytes(), 16 << 20);
    common::integrity(b.as_ref(), 8 << 20, 150, 11);
    assert!(raw.is_connected());
}

#[test]
fn qemu_nbd_tcp_integrity() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 8 << 20);
    let port = free_port();
    let child = Command::new(tool("qemu-nbd"))
        .args([
            "-f",
            "raw",
            "--persistent",
            "-x",
            "exp",
            "-b",
            "127.0.0.1",
            "-p",
        ])
        .arg(port.to_string())
        .arg(&img)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn qemu-nbd");
    let _srv = Server(child);
    wait_for(
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "qemu-nbd TCP port",
    );
    // qemu-nbd without --shared accepts one client at a time: give the probe time to go.
    std::thread::sleep(Duration::from_millis(200));
    let (_raw, b) = nbd(
        NbdAddr::Tcp(format!("127.0.0.1:{port}")),
        "exp",
        Duration::from_secs(10),
    );
    common::integrity(b.as_ref(), 4 << 20, 80, 12);
}

#[test]
fn nbdkit_memory_integrity() {
    let dir = tempfile::tempdir().unwrap();
    let (_srv, _raw, b) = nbdkit_bdev(dir.path(), &["memory", "size=16M"], Duration::from_secs(10));
    assert!(b.info().caps.flush && b.info().caps.unmap);
    common::integrity(b.as_ref(), 8 << 20, 150, 13);
}

#[test]
fn nbd_server_killed_mid_io_fails_in_bound_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, img, sock) = qemu_nbd_image(dir.path(), 8 << 20);
    let timeout = Duration::from_millis(1500);
    let (raw, b) = nbd(NbdAddr::Unix(sock.clone()), "exp", timeout);
    let mut ch = b.open_channel().unwrap();
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    common::write_at(ch.as_mut(), 0, &data, true).unwrap();

    // Many reads in flight, then the server dies.
    let mut bufs: Vec<common::AlignedBuf> =
        (0..32).map(|_| common::AlignedBuf::new(65536, 0)).collect();
    let mut tags = Vec::new();
    for (i, buf) in bufs.iter_mut().enumerate() {
        let t = 1000 + i as u64;
        ch.submit(IoRequest::with_iov(IoOp::Read, 0, buf.iovecs(1), t))
            .unwrap();
        tags.push(t);
    }
    drop(srv); // SIGKILL + reap
    let start = Instant::now();
    let res = common::wait_tags(ch.as_mut(), &tags, timeout + Duration::from_secs(1));
    assert!(start.elapsed() <= timeout + Duration::from_millis(500));
    for (_, r) in &res {
        assert!(
            matches!(r, Ok(()) | Err(IoError::Transport) | Err(IoError::Timeout)),
            "{r:?}"
        );
    }

    // While down: a new request fails with a clear error within the bound.
    wait_for(|| !raw.is_connected(), "disconnect noticed");
    let start = Instant::now();
    let r = common::read_at(ch.as_mut(), 0, 4096);
    let took = start.elapsed();
    assert_eq!(r.err(), Some(IoError::Timeout));
    assert!(
        took <= timeout + Duration::from_millis(500),
        "took {took:?}"
    );

    // Server comes back: the bdev reconnects and the data is intact.
    let _srv2 = qemu_nbd_unix(&img, &sock);
    wait_for(|| raw.is_connected(), "reconnect");
    let got = common::read_at(ch.as_mut(), 0, 65536).unwrap();
    assert!(got == data, "data lost across reconnect");
    common::write_at(ch.as_mut(), 4096, &[7u8; 512], false).unwrap();
    assert_eq!(
        common::read_at(ch.as_mut(), 4096, 512).unwrap(),
        vec![7u8; 512]
    );
}

fn nbdkit_unix(dir: &Path, args: &[&str]) -> (Server, PathBuf) {
    let sock = dir.join("kit.sock");
    let child = Command::new(tool("nbdkit"))
        .args(["-f", "-U"])
        .arg(&sock)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nbdkit");
    let srv = Server(child);
    wait_for(|| sock.exists(), "nbdkit socket");
    (srv, sock)
}

/// nbdkit with `args` and an NBD bdev connected to it with I/O timeout `timeout`.
fn nbdkit_bdev(
    dir: &Path,
    args: &[&str],
    timeout: Duration,
) -> (Server, Arc<NbdBdev>, Arc<dyn Bdev>) {
    let (srv, sock) = nbdkit_unix(dir, args);
    let (raw, b) = nbd(NbdAddr::Unix(sock), "", timeout);
    (srv, raw, b)
}

#[test]
fn fua_is_emulated_with_flush_when_server_lacks_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_srv, _raw, b) = nbdkit_bdev(
        dir.path(),
        // The fua filter's default mode is "none": FUA is not advertised.
        &["--filter=fua", "memory", "size=4M"],
        Duration::from_secs(10),
    );
    let caps = b.info().caps;
    assert!(!caps.fua && caps.flush, "{caps:?}");
    let mut ch = b.open_channel().unwrap();
    common::write_at(ch.as_mut(), 8192, &[0x42; 4096], true).unwrap();
    assert_eq!(
        common::read_at(ch.as_mut(), 8192, 4096).unwrap(),
        vec![0x42; 4096]
    );
    assert_eq!(ch.in_flight(), 0);
    let s = b.stats().unwrap().snapshot();
    assert_eq!(s.class(sluice_bdev::stats::OpClass::Write).ops, 1);
}

#[test]
fn server_side_errors_map_to_media_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_srv, raw, b) = nbdkit_bdev(
        dir.path(),
        &[
            "--filter=error",
            "memory",
            "size=4M",
            "error=EIO",
            "error-pread-rate=100%",
        ],
        Duration::from_secs(10),
    );
    let mut ch = b.open_channel().unwrap();
    common::write_at(ch.as_mut(), 0, &[1; 512], false).unwrap();
    assert_eq!(
        common::read_at(ch.as_mut(), 0, 512).unwrap_err(),
        IoError::MediaRead
    );
    // An error reply does not break the connection.
    assert!(raw.is_connected());
    common::write_at(ch.as_mut(), 512, &[2; 512], false).unwrap();
}

#[test]
fn hung_server_times_out_within_bound() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_millis(800);
    let (_srv, _raw, b) = nbdkit_bdev(
        dir.path(),
        &["--filter=delay", "memory", "size=4M", "delay-read=30"],
        timeout,
    );
    let mut ch = b.open_channel().unwrap();
    let start = Instant::now();
    assert_eq!(
        common::read_at(ch.as_mut(), 0, 512).unwrap_err(),
        IoError::Timeout
    );
    let took = start.elapsed();
    assert!(
        took >= timeout && took <= timeout + Duration::from_millis(500),
        "{took:?}"
    );
    // Writes are not delayed: the bdev reconnects and keeps serving them.
    common::write_at(ch.as_mut(), 0, &[3; 512], false).unwrap();
}

#[test]
fn nbd_concurrent_channels_share_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_srv, _raw, b) = nbdkit_bdev(dir.path(), &["memory", "size=8M"], Duration::from_secs(10));
    common::concurrent_channels(b, 4, 1 << 20);
}

#[test]
fn silent_server_during_reconnect_does_not_stretch_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, _img, sock) = qemu_nbd_image(dir.path(), 4 << 20);
    let timeout = Duration::from_millis(1000);
    let (raw, b) = nbd(NbdAddr::Unix(sock.clone()), "exp", timeout);
    let mut ch = b.open_channel().unwrap();
    common::write_at(ch.as_mut(), 0, &[5; 512], false).unwrap();
    drop(srv);
    wait_for(|| !raw.is_connected(), "disconnect noticed");
    // An impostor accepts connections but never speaks: reconnects hang in the handshake.
    let _ = std::fs::remove_file(&sock);
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in l.incoming().take(3) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(3));
    });
    for _ in 0..3 {
        let start = Instant::now();
        assert_eq!(
            common::read_at(ch.as_mut(), 0, 512).unwrap_err(),
            IoError::Timeout
        );
        let took = start.elapsed();
        assert!(
            took <= timeout + Duration::from_millis(500),
            "took {took:?}"
        );
    }
    drop(held);
}
