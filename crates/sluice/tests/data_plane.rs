//! The daemon's data plane end to end with the real NVMe host driver (sluice-nvme-host):
//! acceptance 4 (a controller works after save_config -> restart with -c) and 5 (SIGTERM
//! during I/O loses no acknowledged, flushed write on a file backend).

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{connect_nvme as connect, wait_until, Daemon, NQN};
use serde_json::Value;

const BS: u64 = 512;
/// Blocks per write.
const NLB: u32 = 8;

fn block_pattern(lba: u64) -> Vec<u8> {
    let mut v = vec![0u8; (BS * u64::from(NLB)) as usize];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (lba as u8).wrapping_mul(31).wrapping_add(i as u8) ^ 0x5a;
    }
    v
}

/// A file bdev `Aio0` of `blocks` 512 B blocks served on `<tmp>/vfu`: (listener dir, file).
fn configure_file_target(d: &Daemon, blocks: u64) -> (PathBuf, PathBuf) {
    let file = d.file("disk.img", blocks * BS);
    d.rpc_ok(&["bdev_aio_create", &file.to_string_lossy(), "Aio0", "512"]);
    (d.serve_bdev("Aio0", Some("SN0"), &[]), file)
}

#[test]
fn controller_works_after_save_config_restart() {
    let mut d = Daemon::start(&[]);
    let (dir, _file) = configure_file_target(&d, 4096);
    let sock = dir.join("cntrl");
    {
        let mut c = connect(&sock);
        let idc = c.identify_controller().unwrap();
        assert!(
            format!("{idc:?}").contains("SN0"),
            "serial from the subsystem"
        );
        c.set_num_queues(1, 1).unwrap();
        let mut qp = c.create_io_queue_pair(1, 32, None).unwrap();
        let buf = c.alloc(BS * u64::from(NLB)).unwrap();
        buf.write_at(0, &block_pattern(16)).unwrap();
        qp.write_blocks(1, 16, NLB, BS, &buf, false).unwrap();
        qp.flush(1).unwrap();
        let ctrls = d.rpc_json(&["nvmf_subsystem_get_controllers", NQN]);
        assert_eq!(ctrls[0]["cntlid"], 1, "{ctrls}");
        let stats = d.rpc_json(&["nvmf_get_stats"]);
        let g = &stats["poll_groups"][0];
        assert_eq!(g["current_admin_qpairs"], 1, "{stats}");
        assert!(g["completed_nvme_io"].as_u64().unwrap() >= 2, "{stats}");
        // A bdev channel publishes its counters after the poll that completed the I/O,
        // so the last completion can be visible to the host a moment before its count.
        let iostat = wait_until("bdev_get_iostat counts the write", || {
            let v = d.rpc_json(&["bdev_get_iostat", "-b", "Aio0"]);
            let n = v.pointer("/bdevs/0/num_write_ops").and_then(Value::as_u64);
            (n >= Some(1)).then_some(v)
        });
        assert_eq!(iostat["bdevs"][0]["num_write_ops"], 1, "{iostat}");
    }
    let cfg = d.path("config.json");
    std::fs::write(&cfg, d.rpc_ok(&["save_config"])).unwrap();
    let (status, _) = d.terminate();
    assert!(status.success());

    d.spawn(&["-c", cfg.to_str().unwrap()]);
    let mut c = connect(&sock);
    c.set_num_queues(1, 1).unwrap();
    let mut qp = c.create_io_queue_pair(1, 32, None).unwrap();
    let buf = c.alloc(BS * u64::from(NLB)).unwrap();
    qp.read_blocks(1, 16, NLB, BS, &buf).unwrap();
    assert_eq!(
        buf.to_vec(0, (BS * u64::from(NLB)) as usize).unwrap(),
        block_pattern(16)
    );
    // And new I/O works.
    buf.write_at(0, &block_pattern(32)).unwrap();
    qp.write_blocks(1, 32, NLB, BS, &buf, false).unwrap();
    let back = c.alloc(BS * u64::from(NLB)).unwrap();
    qp.read_blocks(1, 32, NLB, BS, &back).unwrap();
    assert_eq!(
        back.to_vec(0, (BS * u64::from(NLB)) as usize).unwrap(),
        block_pattern(32)
    );
}

#[test]
fn sigterm_during_io_keeps_every_flushed_write() {
    let blocks = 1 << 14;
    let mut d = Daemon::start(&[]);
    let (dir, file) = configure_file_target(&d, blocks);
    let sock = dir.join("cntrl");
    // Highest LBA (exclusive) whose write was acknowledged and then covered by a flush.
    let flushed = Arc::new(AtomicU64::new(0));
    let f2 = Arc::clone(&flushed);
    let writer = std::thread::spawn(move || {
        let mut c = connect(&sock);
        c.set_num_queues(1, 1).unwrap();
        let mut qp = c.create_io_queue_pair(1, 32, None).unwrap();
        let buf = c.alloc(BS * u64::from(NLB)).unwrap();
        let mut lba = 0u64;
        while lba + u64::from(NLB) <= blocks {
            buf.write_at(0, &block_pattern(lba)).unwrap();
            if qp.write_blocks(1, lba, NLB, BS, &buf, false).is_err() {
                break;
            }
            lba += u64::from(NLB);
            if (lba / u64::from(NLB)) % 4 == 0 {
                if qp.flush(1).is_err() {
                    break;
                }
                f2.store(lba, Ordering::SeqCst);
            }
        }
        lba
    });
    // Let some I/O happen, then stop the daemon under load.
    let start = std::time::Instant::now();
    while flushed.load(Ordering::SeqCst) < 64 * u64::from(NLB)
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, err) = d.terminate();
    assert!(status.success(), "daemon exit: {status} {err}");
    // The writer may now wait for a completion that will never come (mmapped doorbells do
    // not notice the closed socket); the value below was published before the exit.
    drop(writer);
    let upto = flushed.load(Ordering::SeqCst);
    assert!(upto > 0, "no flushed write before SIGTERM");
    assert!(!dir.join("cntrl").exists(), "socket removed");
    let data = std::fs::read(&file).unwrap();
    let mut lba = 0u64;
    while lba < upto {
        let off = (lba * BS) as usize;
        let len = (BS * u64::from(NLB)) as usize;
        assert_eq!(
            &data[off..off + len],
            &block_pattern(lba)[..],
            "flushed write at LBA {lba} lost"
        );
        lba += u64::from(NLB);
    }
}

#[test]
fn live_namespace_add_raises_aen_and_listener_removal_detaches_client() {
    let d = Daemon::start(&[]);
    let (dir, _file) = configure_file_target(&d, 1024);
    let sock = dir.join("cntrl");
    let mut c = connect(&sock);
    assert_eq!(c.active_namespaces().unwrap(), vec![1]);
    // Enable Namespace Attribute Notices (Async Event Configuration bit 8), as Linux does.
    c.set_features(0x0b, 1 << 8).unwrap();
    c.submit_aer().unwrap();
    d.rpc_ok(&["bdev_malloc_create", "4", "512", "-b", "Malloc9"]);
    assert_eq!(
        d.rpc_ok(&["nvmf_subsystem_add_ns", NQN, "Malloc9", "-n", "3"]),
        "3\n"
    );
    let aen = c
        .wait_aen(Duration::from_secs(10))
        .unwrap()
        .expect("namespace AEN");
    // Notice type (2), Namespace Attribute Changed (0x00), log page 0x04.
    assert_eq!(aen.dw0 & 0x7, 2, "AEN type notice: {:#x}", aen.dw0);
    assert_eq!(
        (aen.dw0 >> 16) & 0xff,
        0x04,
        "changed namespace list log: {:#x}",
        aen.dw0
    );
    assert_eq!(c.active_namespaces().unwrap(), vec![1, 3]);
    d.rpc_ok(&["nvmf_subsystem_remove_ns", NQN, "3"]);
    assert_eq!(c.active_namespaces().unwrap(), vec![1]);
    d.rpc_ok(&["bdev_malloc_delete", "Malloc9"]);

    // Removing the listener while the client is attached returns promptly and removes
    // the socket; the daemon keeps serving RPC.
    let t = std::time::Instant::now();
    d.rpc_ok(&[
        "nvmf_subsystem_remove_listener",
        NQN,
        "-t",
        "VFIOUSER",
        "-a",
        dir.to_str().unwrap(),
    ]);
    // Bound: a hang (waiting for the client to leave) would take the RPC timeout (60 s).
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(!sock.exists());
    assert_eq!(
        d.rpc_json(&["nvmf_subsystem_get_controllers", NQN]),
        serde_json::json!([])
    );
    // The same directory can be listened on again and a new client works.
    drop(c);
    d.listen(NQN, &dir);
    let mut c2 = connect(&sock);
    assert_eq!(c2.active_namespaces().unwrap(), vec![1]);
}

#[test]
fn nbd_client_bdev_against_qemu_nbd() {
    if std::process::Command::new("qemu-nbd")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("qemu-nbd not installed: skipping");
        return;
    }
    let d = Daemon::start(&[]);
    let img = d.path("nbd.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let nbd_sock = d.path("nbd.sock");
    let mut server = std::process::Command::new("qemu-nbd")
        .args(["--format=raw", "--persistent", "--shared=4", "--socket"])
        .arg(&nbd_sock)
        .arg(&img)
        .spawn()
        .unwrap();
    // Listening, not just bound (the socket file exists between bind and listen).
    wait_until("qemu-nbd listening", || {
        std::os::unix::net::UnixStream::connect(&nbd_sock).ok()
    });
    let out = d.rpc_ok(&[
        "bdev_nbd_client_create",
        "Nbd0",
        "-s",
        nbd_sock.to_str().unwrap(),
    ]);
    assert_eq!(out, "Nbd0\n");
    let b = d.rpc_json(&["bdev_get_bdevs", "-b", "Nbd0"]);
    assert_eq!(
        b[0]["num_blocks"], 2048,
        "geometry from the NBD server: {b}"
    );
    let saved = d.rpc_ok(&["save_config"]);
    assert!(saved.contains("bdev_nbd_client_create"));
    d.rpc_ok(&["bdev_nbd_client_delete", "Nbd0"]);
    assert_eq!(d.rpc_json(&["bdev_get_bdevs"]), serde_json::json!([]));
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn controllers_are_placed_on_the_least_loaded_poll_thread() {
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        eprintln!("needs 2 CPUs: skipping");
        return;
    }
    let d = Daemon::start(&["-m", "0x3"]);
    d.rpc_ok(&["nvmf_create_transport", "-t", "VFIOUSER"]);
    for i in 0..2 {
        let nqn = format!("nqn.2019-07.io.spdk:cnode{i}");
        let dir = d.mkdir(&format!("l{i}"));
        d.rpc_ok(&["nvmf_create_subsystem", "-a", &nqn]);
        d.listen(&nqn, &dir);
    }
    let stats = d.rpc_json(&["nvmf_get_stats"]);
    let groups = stats["poll_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{stats}");
    for g in groups {
        assert_eq!(
            g["controllers"], 1,
            "one controller per poll thread: {stats}"
        );
        assert_eq!(g["current_admin_qpairs"], 0, "no host attached: {stats}");
    }
    assert_eq!(groups[0]["cpu"], 0);
    assert_eq!(groups[1]["cpu"], 1);
}

/// A null-bdev target on its own listener, created with extra `nvmf_create_transport`
/// flags; returns the socket.
fn null_target(d: &Daemon, transport_flags: &[&str]) -> PathBuf {
    d.serve_null("16", "SN0", transport_flags).join("cntrl")
}

/// A counter of the first poll group's transport (`None` if missing).
fn transport_stat(stats: &Value, key: &str) -> Option<u64> {
    stats
        .pointer("/poll_groups/0/transports/0")
        .and_then(|t| t.get(key))
        .and_then(Value::as_u64)
}

/// Shadow doorbells (Doorbell Buffer Config) in use show in `nvmf_get_stats`
/// (`shadow_doorbell_reads`, what the VM test reads); I/O and admin counters move and the
/// admin queue pair counts only while a host has the controller enabled.
#[test]
fn get_stats_counts_io_and_shadow_doorbells() {
    let d = Daemon::start(&[]);
    // As SPDK: shadow doorbells are offered only with a trapped BAR0 (-M).
    let sock = null_target(&d, &["-M"]);
    let before = d.rpc_json(&["nvmf_get_stats"]);
    assert_eq!(
        before["poll_groups"][0]["current_admin_qpairs"], 0,
        "{before}"
    );
    assert_eq!(transport_stat(&before, "shadow_doorbell_reads"), Some(0));
    assert_eq!(before["poll_groups"][0]["current_io_qpairs"], 0, "{before}");
    assert_eq!(before["poll_groups"][0]["io_qpairs"], 0, "{before}");
    let mut c = connect(&sock);
    c.set_num_queues(1, 1).unwrap();
    c.enable_shadow_doorbells().unwrap();
    let mut qp = c.create_io_queue_pair(1, 32, None).unwrap();
    let buf = c.alloc(BS * u64::from(NLB)).unwrap();
    for lba in 0..4u64 {
        qp.read_blocks(1, lba * 8, NLB, BS, &buf).unwrap();
    }
    let stats = d.rpc_json(&["nvmf_get_stats"]);
    let g = &stats["poll_groups"][0];
    assert_eq!(g["current_admin_qpairs"], 1, "{stats}");
    assert!(g["completed_nvme_io"].as_u64().unwrap() >= 4, "{stats}");
    assert!(transport_stat(&stats, "io_commands") >= Some(4), "{stats}");
    // Identify, Set Features, DBBUF config, Create CQ/SQ at least.
    assert!(
        transport_stat(&stats, "admin_commands") >= Some(4),
        "{stats}"
    );
    assert!(
        transport_stat(&stats, "shadow_doorbell_reads") > Some(0),
        "shadow doorbells in use but not counted: {stats}"
    );
    let ctrls = d.rpc_json(&["nvmf_subsystem_get_controllers", NQN]);
    assert_eq!(ctrls.as_array().unwrap().len(), 1, "{ctrls}");
    // The I/O queue pair the host created is counted.
    assert_eq!(ctrls[0]["num_io_qpairs"], 1, "{ctrls}");
    assert_eq!(g["current_io_qpairs"], 1, "{stats}");
    assert_eq!(g["io_qpairs"], 1, "{stats}");
    // Deleted: gone from the gauges, still in the cumulative count.
    c.delete_io_queue_pair(qp).unwrap();
    let ctrls = d.rpc_json(&["nvmf_subsystem_get_controllers", NQN]);
    assert_eq!(ctrls[0]["num_io_qpairs"], 0, "{ctrls}");
    let stats = d.rpc_json(&["nvmf_get_stats"]);
    let g = &stats["poll_groups"][0];
    assert_eq!(g["current_io_qpairs"], 0, "{stats}");
    assert_eq!(g["io_qpairs"], 1, "{stats}");
    let _ = c.shutdown(false);
}

/// Negative: with `-M -S` (trapped BAR0, disable_shadow_doorbells) the host cannot configure them and the
/// counter stays 0 while I/O still works and is counted.
#[test]
fn get_stats_shadow_counter_stays_zero_without_shadow_doorbells() {
    let d = Daemon::start(&[]);
    let sock = null_target(&d, &["-M", "-S"]);
    let mut c = connect(&sock);
    c.set_num_queues(1, 1).unwrap();
    assert!(
        c.enable_shadow_doorbells().is_err(),
        "Doorbell Buffer Config accepted with -S"
    );
    let mut qp = c.create_io_queue_pair(1, 32, None).unwrap();
    let buf = c.alloc(BS * u64::from(NLB)).unwrap();
    qp.read_blocks(1, 0, NLB, BS, &buf).unwrap();
    let stats = d.rpc_json(&["nvmf_get_stats"]);
    assert!(transport_stat(&stats, "io_commands") >= Some(1), "{stats}");
    assert_eq!(
        transport_stat(&stats, "shadow_doorbell_reads"),
        Some(0),
        "{stats}"
    );
    drop(qp);
    let _ = c.shutdown(false);
}

fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect()
}

fn poll_threads(names: &[String]) -> usize {
    names
        .iter()
        .filter(|n| n.starts_with("sluice-poll"))
        .count()
}

/// A busy poll thread starts only when a controller is placed on it: it does not take a
/// CPU from the startup (bdev creation) while there is nothing to poll.
#[test]
fn busy_poll_thread_starts_with_its_first_controller() {
    let d = Daemon::start(&["--poll-mode", "busy"]);
    let pid = d.child.as_ref().unwrap().id();
    d.rpc_ok(&["bdev_null_create", "Null0", "16", "512"]);
    let names = thread_names(pid);
    assert!(!names.is_empty(), "no threads of {pid}");
    assert_eq!(poll_threads(&names), 0, "{names:?}");
    let _dir = d.serve_bdev("Null0", None, &[]);
    // The poll thread exists when the listener RPC returns, but it names itself only once
    // it runs (until then it carries its parent's name): wait for the name.
    let names = wait_until("a sluice-poll thread", || {
        let names = thread_names(pid);
        (poll_threads(&names) > 0).then_some(names)
    });
    assert_eq!(poll_threads(&names), 1, "{names:?}");
}
