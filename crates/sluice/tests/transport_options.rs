//! The Sluice-specific VFIOUSER transport options `require_sealed_dma` and
//! `dma_timeout_ms`: validated (-32602 naming the key, no state change), reported by
//! `nvmf_get_transports`, and really applied to the listeners' vfio-user servers (a DMA_MAP
//! of an unsealable file is refused with EPERM through the daemon's `cntrl` socket, and a
//! bounced DMA request waits as long as `dma_timeout_ms` says).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use common::{Daemon, Raw};
use rustix::fs::{fcntl_get_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};
use rustix::io::Errno;
use serde_json::{json, Value};
use sluice_nvme_host::cmd::{nvm, sc, sct};
use sluice_nvme_host::io::rw_command;
use sluice_nvme_host::{Controller, DataPtr, DmaBuf, QueuePair, Status};
use vfu_client::proto::{DMA_FLAG_READ, DMA_FLAG_WRITE};
use vfu_client::{Client, ClientError, ClientOptions, DmaBuffer};

const RW: u32 = DMA_FLAG_READ | DMA_FLAG_WRITE;

fn connect(dir: &Path) -> Client {
    Client::connect(dir.join("cntrl"), ClientOptions::default()).unwrap()
}

fn errno(r: Result<(), ClientError>) -> Option<Errno> {
    match r {
        Err(ClientError::Errno(e)) => Some(e),
        _ => None,
    }
}

/// A regular (disk or tmpfs) file: it cannot be sealed.
fn plain_file(size: u64) -> OwnedFd {
    let f = tempfile::tempfile().unwrap();
    f.set_len(size).unwrap();
    OwnedFd::from(f)
}

/// A memfd created without `MFD_ALLOW_SEALING`: it cannot be sealed either.
fn unsealable_memfd(size: u64) -> OwnedFd {
    let fd = memfd_create("plain", MemfdFlags::CLOEXEC).unwrap();
    ftruncate(&fd, size).unwrap();
    fd
}

/// A memfd the server may seal, with no seal yet.
fn sealable_memfd(size: u64) -> OwnedFd {
    let fd = memfd_create("guest", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    ftruncate(&fd, size).unwrap();
    fd
}

#[test]
fn require_sealed_dma_refuses_unsealable_files_with_eperm() {
    let d = Daemon::start(&[]);
    let dir = d.serve_null("1", "SEALED0", &["--require-sealed-dma"]);
    let t = d.rpc_json(&["nvmf_get_transports"]);
    assert_eq!(t[0]["require_sealed_dma"], true);

    let c = connect(&dir);
    let file = plain_file(0x2000);
    assert_eq!(
        errno(c.dma_map_raw(RW, 0, 0x10_0000, 0x2000, Some(file.as_fd()))),
        Some(Errno::PERM)
    );
    let plain = unsealable_memfd(0x1000);
    assert_eq!(
        errno(c.dma_map_raw(RW, 0, 0x10_0000, 0x1000, Some(plain.as_fd()))),
        Some(Errno::PERM)
    );
    // A sealable memfd is sealed against shrinking by the daemon, then mapped; the refusals
    // left nothing behind at that IOVA.
    let sealable = sealable_memfd(0x2000);
    c.dma_map_raw(RW, 0, 0x10_0000, 0x2000, Some(sealable.as_fd()))
        .unwrap();
    assert!(fcntl_get_seals(&sealable)
        .unwrap()
        .contains(SealFlags::SHRINK));
    // An already sealed memfd (QEMU's memory-backend-memfd, Sluice's client) too.
    let buf = DmaBuffer::new(0x20_0000, 0x4000).unwrap();
    c.dma_map(&buf, RW).unwrap();
    // The session survived the refusals.
    assert_eq!(c.dma_unmap(0x10_0000, 0x2000).unwrap().size, 0x2000);
    assert!(c.device_info().unwrap().num_regions >= 9);
}

#[test]
fn unsealable_files_are_accepted_by_default() {
    let d = Daemon::start(&[]);
    let dir = d.serve_null("1", "PLAIN0", &[]);
    let t = d.rpc_json(&["nvmf_get_transports"]);
    assert_eq!(t[0]["require_sealed_dma"], false);
    assert_eq!(t[0]["dma_timeout_ms"], 2000);

    let c = connect(&dir);
    let file = plain_file(0x2000);
    c.dma_map_raw(RW, 0, 0x10_0000, 0x2000, Some(file.as_fd()))
        .unwrap();
    let plain = unsealable_memfd(0x1000);
    c.dma_map_raw(RW, 0, 0x20_0000, 0x1000, Some(plain.as_fd()))
        .unwrap();
}

#[test]
fn dma_options_from_the_cli_are_reported() {
    let d = Daemon::start(&[]);
    d.rpc_ok(&[
        "nvmf_create_transport",
        "-t",
        "VFIOUSER",
        "--require-sealed-dma",
        "--dma-timeout-ms",
        "0",
    ]);
    let t = d.rpc_json(&["nvmf_get_transports"]);
    assert_eq!(t[0]["require_sealed_dma"], true);
    assert_eq!(t[0]["dma_timeout_ms"], 0);
}

#[test]
fn bad_dma_options_are_rejected_without_creating_the_transport() {
    let d = Daemon::start(&[]);
    let mut c = Raw::connect(&d.sock);
    let no_transport = c.call(1, "nvmf_get_transports", None);
    assert_eq!(no_transport["result"], json!([]), "{no_transport}");
    let cases: &[(Value, &str)] = &[
        (json!({"dma_timeout_ms": 60_001}), "dma_timeout_ms"),
        (json!({"dma_timeout_ms": -1}), "dma_timeout_ms"),
        (
            json!({"dma_timeout_ms": 4_294_967_296u64}),
            "dma_timeout_ms",
        ),
        (json!({"dma_timeout_ms": "2000"}), "dma_timeout_ms"),
        (json!({"dma_timeout_ms": 0.5}), "dma_timeout_ms"),
        (json!({"require_sealed_dma": 1}), "require_sealed_dma"),
        (json!({"require_sealed_dma": "yes"}), "require_sealed_dma"),
        (json!({"require_sealed_dma": null}), "require_sealed_dma"),
    ];
    for (i, (bad, key)) in cases.iter().enumerate() {
        let mut params = bad.clone();
        params["trtype"] = json!("VFIOUSER");
        let r = c.call(i as u64 + 10, "nvmf_create_transport", Some(params));
        assert_eq!(r["error"]["code"], -32602, "{bad}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(key), "{bad}: message '{msg}' lacks '{key}'");
        let after = c.call(i as u64 + 100, "nvmf_get_transports", None);
        assert_eq!(after, no_transport_with_id(&no_transport, i as u64 + 100));
    }
    // The transport can still be created, with the bounds themselves accepted.
    let ok = c.call(
        1000,
        "nvmf_create_transport",
        Some(json!({"trtype":"VFIOUSER","dma_timeout_ms":60_000,"require_sealed_dma":false})),
    );
    assert_eq!(ok["result"], true, "{ok}");
    let t = c.call(1001, "nvmf_get_transports", None);
    assert_eq!(t["result"][0]["dma_timeout_ms"], 60_000);
    assert_eq!(t["result"][0]["require_sealed_dma"], false);
}

/// `reference` with its id replaced (the response to a later, identical request).
fn no_transport_with_id(reference: &Value, id: u64) -> Value {
    let mut v = reference.clone();
    v["id"] = json!(id);
    v
}

/// A target serving `Malloc0` with `transport_flags`, and a host with one I/O queue and a
/// 4 KiB data buffer in an fd-less window (bounced by the target through DMA_READ/WRITE).
/// Without a twin socket the host serves those requests only inside its wait and poll
/// loops: between `submit_write` and `wait` the target's request stays unanswered.
struct Bounce {
    daemon: Daemon,
    ctrl: Controller,
    qp: QueuePair,
    buf: DmaBuf,
}

impl Bounce {
    fn start(transport_flags: &[&str]) -> Bounce {
        let daemon = Daemon::start(&[]);
        daemon.rpc_ok(&["bdev_malloc_create", "1", "512", "-b", "Malloc0"]);
        let dir = daemon.serve_bdev("Malloc0", Some("BOUNCE0"), transport_flags);
        let mut ctrl = common::connect_nvme(&dir.join("cntrl"));
        ctrl.set_num_queues(1, 1).unwrap();
        let qp = ctrl.create_io_queue_pair(1, 16, None).unwrap();
        let win = ctrl.map_fdless(0x2_0000_0000, 64 << 10, true).unwrap();
        let buf = win.alloc(4096).unwrap();
        Bounce {
            daemon,
            ctrl,
            qp,
            buf,
        }
    }

    /// Submits a 4 KiB Write of the fd-less buffer to LBA 0 (the target DMA_READs it).
    fn submit_write(&mut self) -> u16 {
        let cmd = rw_command(nvm::WRITE, 1, 0, 8, false).unwrap();
        let ptr = DataPtr::Prp {
            iova: self.buf.iova(),
            len: 4096,
        };
        self.qp.submit(cmd, ptr).unwrap()
    }

    /// Waits for `cid`, serving the target's DMA requests meanwhile.
    fn wait(&mut self, cid: u16) -> Status {
        self.qp.wait(cid, common::SETTLE).unwrap().status
    }

    /// Reads LBA 0..8 into fd-backed memory.
    fn read_back(&mut self) -> Vec<u8> {
        let plain = self.ctrl.alloc(4096).unwrap();
        self.qp.read_blocks(1, 0, 8, 512, &plain).unwrap();
        plain.to_vec(0, 4096).unwrap()
    }

    /// Commands the target completed with an error status (`nvmf_get_stats`).
    fn target_errors(&self) -> u64 {
        let stats = self.daemon.rpc_json(&["nvmf_get_stats"]);
        stats["poll_groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["transports"][0]["errors"].as_u64().unwrap())
            .sum()
    }
}

#[test]
fn dma_timeout_ms_zero_waits_past_the_default_timeout() {
    let mut b = Bounce::start(&["--dma-timeout-ms", "0"]);
    b.buf.fill(0x5a).unwrap();
    let cid = b.submit_write();
    // Silent for longer than the server's default DMA timeout (2 s): with that default
    // the Write would fail with Data Transfer Error; with 0 (no limit) it waits.
    std::thread::sleep(Duration::from_millis(2_500));
    let st = b.wait(cid);
    assert!(st.is_success(), "{st:?}");
    assert_eq!(b.read_back(), vec![0x5a; 4096]);
}

#[test]
fn short_dma_timeout_fails_the_command_and_the_session_survives() {
    let mut b = Bounce::start(&["--dma-timeout-ms", "100"]);
    b.buf.fill(0x11).unwrap();
    let before = b.target_errors();
    let cid = b.submit_write();
    // The host does not answer until it waits: only the timeout can complete the Write.
    common::wait_until("the bounced Write fails by timeout", || {
        (b.target_errors() > before).then_some(())
    });
    let st = b.wait(cid);
    assert_eq!((st.sct, st.sc), (sct::GENERIC, sc::DATA_TRANSFER_ERROR));
    // The late reply was sent by that wait; bounced I/O works again once it is in.
    b.buf.fill(0x22).unwrap();
    common::wait_until("a bounced Write succeeds after the late reply", || {
        let cid = b.submit_write();
        b.wait(cid).is_success().then_some(())
    });
    assert_eq!(b.read_back(), vec![0x22; 4096]);
}
