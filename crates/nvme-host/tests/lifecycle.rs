//! Issue 3 acceptance 1, controller life cycle: AER on namespace add/remove, reset,
//! shutdown and re-init, disconnect with I/O outstanding and reconnect with data intact,
//! MSI-X without any UNMASK message, trapped-doorbell mode, shadow doorbells, abort,
//! features and log pages.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::{Target, TargetOptions};
use sluice_nvme_host::cmd::{feat, log, nvm, sc, sct};
use sluice_nvme_host::identify::parse_ns_list;
use sluice_nvme_host::io::rw_command;
use sluice_nvme_host::{Controller, DataPtr, DoorbellMode, QueuePair};

const NSID: u32 = 1;

fn rw_ok(c: &Controller, qp: &mut QueuePair, lba: u64, byte: u8) {
    let buf = c.alloc(4096).unwrap();
    buf.write_at(0, &[byte; 4096]).unwrap();
    qp.write_blocks(NSID, lba, 8, 512, &buf, false).unwrap();
    buf.fill(0).unwrap();
    qp.read_blocks(NSID, lba, 8, 512, &buf).unwrap();
    assert_eq!(buf.to_vec(0, 4096).unwrap(), vec![byte; 4096]);
}

#[test]
fn aen_on_namespace_add_and_remove() {
    let t = Target::start(TargetOptions::default());
    let mut c = t.connect();
    // Namespace attribute notices must be enabled (Async Event Configuration bit 8).
    c.set_features(feat::ASYNC_EVENT_CONFIG, 1 << 8).unwrap();
    c.submit_aer().unwrap();
    let added = t
        .ctrl
        .add_namespace(Some(2), common::malloc("Malloc2", 4096, 256))
        .unwrap();
    assert_eq!(added, 2);
    let aen = c
        .wait_aen(Duration::from_secs(5))
        .unwrap()
        .expect("namespace attribute changed AEN");
    assert_eq!(aen.dw0 & 7, 2, "notice");
    assert_eq!((aen.dw0 >> 8) & 0xff, 0, "namespace attribute changed");
    assert_eq!((aen.dw0 >> 16) & 0xff, u32::from(log::CHANGED_NS_LIST));
    let changed = parse_ns_list(&c.get_log_page(log::CHANGED_NS_LIST, 0, 4096).unwrap());
    assert!(
        changed.contains(&2),
        "changed list {changed:?} must name namespace 2"
    );
    let ns2 = c.identify_namespace(2).unwrap();
    assert_eq!(ns2.nsze, 256);
    assert_eq!(ns2.block_size(), 4096);
    assert_eq!(c.active_namespaces().unwrap(), vec![1, 2]);
    c.set_num_queues(2, 2).unwrap();
    let mut qp = c.create_io_queue_pair(1, 16, None).unwrap();
    let buf = c.alloc(4096).unwrap();
    buf.write_at(0, &[9; 4096]).unwrap();
    qp.write_blocks(2, 3, 1, 4096, &buf, false).unwrap();

    c.submit_aer().unwrap();
    t.ctrl.remove_namespace(2).unwrap();
    let aen = c
        .wait_aen(Duration::from_secs(5))
        .unwrap()
        .expect("AEN on removal");
    assert_eq!(aen.dw0 & 7, 2);
    let changed = parse_ns_list(&c.get_log_page(log::CHANGED_NS_LIST, 0, 4096).unwrap());
    assert_eq!(changed, vec![2]);
    assert_eq!(c.active_namespaces().unwrap(), vec![1]);
    let r = qp
        .execute(
            rw_command(nvm::READ, 2, 0, 1, false).unwrap(),
            DataPtr::Prp {
                iova: buf.iova(),
                len: 4096,
            },
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(
        r.status.is(sct::GENERIC, sc::INVALID_NAMESPACE),
        "{}",
        r.status
    );
    rw_ok(&c, &mut qp, 0, 1);
}

#[test]
fn reset_shutdown_and_reinit_keep_data() {
    let t = Target::start(TargetOptions::default());
    let mut c = t.connect();
    c.set_num_queues(2, 2).unwrap();
    let mut qp = c.create_io_queue_pair(1, 16, None).unwrap();
    rw_ok(&c, &mut qp, 10, 0x11);
    // Controller reset: queues are gone, re-init works, data is still there.
    c.reset().unwrap();
    c.set_num_queues(2, 2).unwrap();
    let mut qp = c.create_io_queue_pair(1, 16, None).unwrap();
    let buf = c.alloc(4096).unwrap();
    qp.read_blocks(NSID, 10, 8, 512, &buf).unwrap();
    assert_eq!(buf.to_vec(0, 4096).unwrap(), vec![0x11; 4096]);
    rw_ok(&c, &mut qp, 20, 0x22);
    // Normal shutdown reports SHST complete; then a full re-init.
    c.shutdown(false).unwrap();
    c.reset().unwrap();
    c.set_num_queues(2, 2).unwrap();
    let mut qp = c.create_io_queue_pair(1, 16, None).unwrap();
    qp.read_blocks(NSID, 20, 8, 512, &buf).unwrap();
    assert_eq!(buf.to_vec(0, 4096).unwrap(), vec![0x22; 4096]);
    // Abrupt shutdown too.
    c.shutdown(true).unwrap();
    c.reset().unwrap();
    assert!(c.identify_controller().is_ok());
}

#[test]
fn disconnect_with_io_outstanding_then_reconnect_with_data_intact() {
    let t = Target::start(TargetOptions::default());
    {
        let mut c = t.connect();
        c.set_num_queues(2, 2).unwrap();
        let mut qp = c.create_io_queue_pair(1, 64, None).unwrap();
        rw_ok(&c, &mut qp, 100, 0x5a);
        // Fill the queue with writes elsewhere and go away without reaping them.
        let big = c.alloc(63 * 4096).unwrap();
        for i in 0..63u64 {
            let cmd = rw_command(nvm::WRITE, NSID, 1000 + 8 * i, 8, false).unwrap();
            qp.push(
                cmd,
                DataPtr::Prp {
                    iova: big.iova() + i * 4096,
                    len: 4096,
                },
            )
            .unwrap();
        }
        qp.ring_sq().unwrap();
        // Controller (socket, DMA memory) dropped here with I/O in flight.
    }
    let mut c = t.connect();
    c.set_num_queues(2, 2).unwrap();
    let mut qp = c.create_io_queue_pair(1, 16, None).unwrap();
    let buf = c.alloc(4096).unwrap();
    qp.read_blocks(NSID, 100, 8, 512, &buf).unwrap();
    assert_eq!(buf.to_vec(0, 4096).unwrap(), vec![0x5a; 4096]);
    rw_ok(&c, &mut qp, 200, 0x33);
}

#[test]
fn msix_delivered_without_unmask() {
    let t = Target::start(TargetOptions::default());
    let mut c = t.connect();
    c.enable_msix(4).unwrap();
    c.set_num_queues(2, 2).unwrap();
    let mut qp = c.create_io_queue_pair(1, 16, Some(3)).unwrap();
    let buf = c.alloc(4096).unwrap();
    let cid = qp
        .submit(
            rw_command(nvm::READ, NSID, 0, 8, false).unwrap(),
            DataPtr::Prp {
                iova: buf.iova(),
                len: 4096,
            },
        )
        .unwrap();
    let n = c.wait_irq(3, Duration::from_secs(5)).unwrap();
    assert!(n >= 1, "MSI-X vector 3 must fire without any UNMASK");
    let done = qp.wait(cid, Duration::from_secs(1)).unwrap();
    assert!(done.status.is_success());
    // Admin completions interrupt on vector 0.
    c.get_features(feat::ARBITRATION, 0).unwrap();
    assert!(c.wait_irq(0, Duration::from_secs(5)).unwrap() >= 1);
    // A CQ without interrupts does not fire its vector.
    let mut polled = c.create_io_queue_pair(2, 16, None).unwrap();
    rw_ok(&c, &mut polled, 0, 4);
    assert_eq!(c.wait_irq(3, Duration::from_millis(50)).unwrap(), 0);
}

#[test]
fn trapped_doorbells_when_bar0_is_not_mappable() {
    let t = Target::start(TargetOptions {
        mappable_bar0: false,
        shadow_doorbells: false,
        ..TargetOptions::default()
    });
    let mut c = t.connect();
    assert!(!c.doorbells_mapped());
    c.set_num_queues(2, 2).unwrap();
    let mut qp = c.create_io_queue_pair(1, 8, None).unwrap();
    for i in 0..20u8 {
        rw_ok(&c, &mut qp, u64::from(i) * 8, i);
    }
}

#[test]
fn trapped_doorbells_by_choice_on_a_mappable_bar() {
    let t = Target::start(TargetOptions::default());
    let mut c = t.connect_with(DoorbellMode::Trapped);
    assert!(!c.doorbells_mapped());
    c.set_num_queues(2, 2).unwrap();
    let mut qp = c.create_io_queue_pair(1, 8, None).unwrap();
    rw_ok(&c, &mut qp, 0, 7);
}

#[test]
fn shadow_doorbells_with_eventidx() {
    let t = Target::start(TargetOptions {
        mappable_bar0: false,
        shadow_doorbells: true,
        ..TargetOptions::default()
    });
    let mut c = t.connect();
    let id = c.identify_controller().unwrap();
    assert!(id.oacs & (1 << 8) != 0, "Doorbell Buffer Config advertised");
    c.enable_shadow_doorbells().unwrap();
    c.set_num_queues(2, 2).unwrap();
    let mut qp = c.create_io_queue_pair(1, 8, None).unwrap();
    for i in 0..20u8 {
        rw_ok(&c, &mut qp, u64::from(i) * 8, i.wrapping_mul(3));
    }
    assert!(c.identify_controller().is_ok());
}

#[test]
fn abort_features_and_log_pages() {
    let t = Target::start(TargetOptions::default());
    let mut c = t.connect();
    // Abort of a command that is not outstanding completes with "not aborted".
    let a = c.abort(0, 0x1234).unwrap();
    assert!(a.status.is_success(), "{}", a.status);
    assert_eq!(a.dw0 & 1, 1);
    c.keep_alive().unwrap();
    // Volatile write cache round trip (if present), temperature threshold, arbitration.
    let vwc = c.identify_controller().unwrap().vwc & 1 != 0;
    if vwc {
        c.set_features(feat::VOLATILE_WRITE_CACHE, 0).unwrap();
        assert_eq!(
            c.get_features(feat::VOLATILE_WRITE_CACHE, 0).unwrap() & 1,
            0
        );
        c.set_features(feat::VOLATILE_WRITE_CACHE, 1).unwrap();
        assert_eq!(
            c.get_features(feat::VOLATILE_WRITE_CACHE, 0).unwrap() & 1,
            1
        );
    }
    c.set_features(feat::ARBITRATION, 3).unwrap();
    assert_eq!(c.get_features(feat::ARBITRATION, 0).unwrap() & 7, 3);
    // SMART log counts host commands.
    c.set_num_queues(1, 1).unwrap();
    let mut qp = c.create_io_queue_pair(1, 8, None).unwrap();
    let before = c.get_log_page(log::HEALTH, 0xffff_ffff, 512).unwrap();
    rw_ok(&c, &mut qp, 0, 1);
    let after = c.get_log_page(log::HEALTH, 0xffff_ffff, 512).unwrap();
    let reads = |b: &[u8]| u64::from_le_bytes(b[64..72].try_into().unwrap());
    let writes = |b: &[u8]| u64::from_le_bytes(b[80..88].try_into().unwrap());
    assert_eq!(reads(&after), reads(&before) + 1);
    assert_eq!(writes(&after), writes(&before) + 1);
    let effects = c.get_log_page(log::COMMAND_EFFECTS, 0, 4096).unwrap();
    let read_effect = u32::from_le_bytes(effects[(256 + 2) * 4..(256 + 3) * 4].try_into().unwrap());
    assert_eq!(read_effect & 1, 1, "Read is supported");
}
