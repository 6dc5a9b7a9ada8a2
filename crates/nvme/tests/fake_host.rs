//! In-process fake host driving the controller through registers, doorbells and guest
//! memory: bring-up, admin commands, I/O, wrap-around, shared CQs, every error status
//! followed by a successful I/O, AENs, reset/shutdown, the poll thread.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_bdev::{
    Bdev, BdevCaps, BdevError, BdevInfo, Checked, IoChannel, IoCompletion, IoOp, IoRequest,
    MallocBdev, NullBdev, Rejected,
};
use sluice_nvme::spec::{admin, feat, io, log, reg, Status};
use sluice_nvme::testkit::{rw, sqe, with_prps, FakeHost};
use sluice_nvme::{
    Controller, ControllerConfig, ControllerHandle, InterruptSink, NoInterrupts, PollMode, Poller,
    PollerHandle,
};

fn malloc(bs: u32, blocks: u64, uuid: u8) -> Arc<dyn Bdev> {
    Arc::new(MallocBdev::new("m", bs, blocks, Some(uuid::Uuid::from_bytes([uuid; 16]))).unwrap())
}

fn null(bs: u32, blocks: u64) -> Arc<dyn Bdev> {
    Arc::new(NullBdev::new("n", bs, blocks, None).unwrap())
}

#[derive(Default)]
struct CountIrqs(Mutex<Vec<u16>>);
impl InterruptSink for CountIrqs {
    fn trigger(&self, v: u16) {
        self.0.lock().unwrap().push(v);
    }
}

fn setup(cfg: ControllerConfig) -> (Controller, FakeHost) {
    let mut c = Controller::new(cfg, Arc::new(NoInterrupts)).unwrap();
    c.add_namespace(Some(1), malloc(512, 4096, 1)).unwrap();
    c.add_namespace(Some(2), malloc(4096, 256, 2)).unwrap();
    let mut h = FakeHost::new(16 << 20);
    assert_eq!(h.enable(&mut c, 32) & 3, 1, "RDY without CFS");
    (c, h)
}

fn ready() -> (Controller, FakeHost) {
    let (mut c, mut h) = setup(ControllerConfig::default());
    assert!(h.create_pair(&mut c, 1, 64));
    (c, h)
}

fn ok(c: Option<sluice_nvme::spec::Cqe>) -> sluice_nvme::spec::Cqe {
    let c = c.expect("completion");
    assert_eq!(c.status, Status::SUCCESS, "status {}", c.status);
    c
}

fn st(c: Option<sluice_nvme::spec::Cqe>) -> Status {
    c.expect("completion").status
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// An adaptive poll thread with one trapped-doorbell controller attached, a 512-byte
/// malloc namespace 1, and a fake host with one I/O queue pair (depth 32) ready.
fn adaptive_poller_with_pair(
    spin_polls: u32,
    max_sleep: Duration,
    host_timeout: Option<Duration>,
) -> (
    std::thread::JoinHandle<()>,
    PollerHandle,
    ControllerHandle,
    FakeHost,
) {
    let (mut poller, handle) = Poller::new();
    let t = std::thread::spawn(move || {
        poller.run(PollMode::Adaptive {
            spin_polls,
            max_sleep,
        })
    });
    let c = Controller::new(
        ControllerConfig {
            mappable_bar0: false,
            ..Default::default()
        },
        Arc::new(NoInterrupts),
    )
    .unwrap();
    let mut ch = handle.attach(c).unwrap();
    ch.add_namespace(Some(1), malloc(512, 1024, 7)).unwrap();
    let mut h = FakeHost::new(4 << 20);
    if let Some(timeout) = host_timeout {
        h.timeout = timeout;
    }
    assert_eq!(h.enable(&mut ch, 16) & 1, 1);
    assert!(h.create_pair(&mut ch, 1, 32));
    (t, handle, ch, h)
}

#[test]
fn registers_after_reset() {
    let mut c = Controller::new(ControllerConfig::default(), Arc::new(NoInterrupts)).unwrap();
    let mut b = [0u8; 8];
    c.bar0_read(reg::CAP, &mut b).unwrap();
    let cap = u64::from_le_bytes(b);
    assert_eq!(cap & 0xffff, 255, "MQES");
    assert_eq!(cap >> 16 & 1, 1, "CQR");
    assert_eq!(cap >> 24 & 0xff, 30, "TO");
    assert_eq!(cap >> 32 & 0xf, 0, "DSTRD");
    assert_eq!(cap >> 37 & 1, 1, "CSS NVM");
    assert_eq!(cap >> 48 & 0xff, 0, "MPSMIN/MAX 4K");
    let mut v = [0u8; 4];
    c.bar0_read(reg::VS, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), 0x0002_0000);
    c.bar0_read(reg::CSTS, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), 0);
    // Bad accesses.
    assert!(c.bar0_read(reg::CC, &mut [0u8; 2]).is_err());
    assert!(c.bar0_read(0x1002, &mut v).is_err());
    assert!(
        c.bar0_read(0x1000, &mut v).is_err(),
        "doorbells are write-only"
    );
    assert!(c.bar0_write(0x2000, &[0; 4]).is_err());
    assert!(c.bar0_write(0x1000, &[0; 8]).is_err());
}

#[test]
fn enable_with_bad_admin_queue_sets_cfs() {
    let mut c = Controller::new(ControllerConfig::default(), Arc::new(NoInterrupts)).unwrap();
    let h = FakeHost::new(1 << 20);
    c.set_memory(Some(h.mem.clone()));
    // ASQ outside guest memory.
    c.bar0_write(reg::AQA, &0x000f_000fu32.to_le_bytes())
        .unwrap();
    c.bar0_write(reg::ASQ, &(1u64 << 40).to_le_bytes()).unwrap();
    c.bar0_write(reg::ACQ, &0x2000u64.to_le_bytes()).unwrap();
    c.bar0_write(reg::CC, &(1u32 | 6 << 16 | 4 << 20).to_le_bytes())
        .unwrap();
    let mut v = [0u8; 4];
    c.bar0_read(reg::CSTS, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v) & 3, 2, "CFS, not RDY");
    // Disable clears CFS; a correct setup then works.
    c.bar0_write(reg::CC, &0u32.to_le_bytes()).unwrap();
    c.bar0_write(reg::ASQ, &0x1000u64.to_le_bytes()).unwrap();
    c.bar0_write(reg::CC, &(1u32 | 6 << 16 | 4 << 20).to_le_bytes())
        .unwrap();
    c.bar0_read(reg::CSTS, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v) & 3, 1);
    // Unsupported MPS sets CFS too.
    c.bar0_write(reg::CC, &0u32.to_le_bytes()).unwrap();
    c.bar0_write(reg::CC, &(1u32 | 1 << 7).to_le_bytes())
        .unwrap();
    c.bar0_read(reg::CSTS, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v) & 3, 2);
}

#[test]
fn identify_controller_and_namespaces() {
    let (mut c, mut h) = ready();
    let buf = h.alloc(4096);
    let mut s = with_prps(sqe(admin::IDENTIFY, 0), buf, 0);
    s.dw[10] = 1;
    ok(h.admin(&mut c, s));
    let id = h.read(buf, 4096);
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), 0x4e58);
    assert_eq!(id[77], 5, "MDTS 128 KiB");
    assert_eq!(u32::from_le_bytes(id[80..84].try_into().unwrap()), 0x20000);
    assert_eq!(id[512], 0x66);
    assert_eq!(id[513], 0x44);
    assert_eq!(
        u32::from_le_bytes(id[516..520].try_into().unwrap()),
        32,
        "NN"
    );
    let oncs = u16::from_le_bytes([id[520], id[521]]);
    assert_eq!(oncs & 0b1101, 0b1101, "compare, DSM, write zeroes");
    assert_eq!(
        u32::from_le_bytes(id[536..540].try_into().unwrap()) & 3,
        1,
        "SGL supported"
    );

    // Namespace 2: 4096-byte LBAs.
    let mut s = with_prps(sqe(admin::IDENTIFY, 2), buf, 0);
    s.dw[10] = 0;
    ok(h.admin(&mut c, s));
    let ns = h.read(buf, 4096);
    assert_eq!(u64::from_le_bytes(ns[0..8].try_into().unwrap()), 256);
    assert_eq!(ns[128 + 2], 12, "LBADS");
    // Active namespace list.
    let mut s = with_prps(sqe(admin::IDENTIFY, 0), buf, 0);
    s.dw[10] = 2;
    ok(h.admin(&mut c, s));
    let l = h.read(buf, 12);
    assert_eq!(l, [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    // Descriptor list.
    let mut s = with_prps(sqe(admin::IDENTIFY, 1), buf, 0);
    s.dw[10] = 3;
    ok(h.admin(&mut c, s));
    let d = h.read(buf, 44);
    assert_eq!(&d[0..2], &[2, 16]);
    assert_eq!(&d[4..20], &[1; 16]);
    // Inactive namespace: zeroes; NSID 0: invalid namespace; bad CNS: invalid field.
    let mut s = with_prps(sqe(admin::IDENTIFY, 7), buf, 0);
    s.dw[10] = 0;
    ok(h.admin(&mut c, s));
    assert!(h.read(buf, 4096).iter().all(|&b| b == 0));
    let mut s = with_prps(sqe(admin::IDENTIFY, 0), buf, 0);
    s.dw[10] = 0;
    assert_eq!(st(h.admin(&mut c, s)), Status::INVALID_NAMESPACE);
    let mut s = with_prps(sqe(admin::IDENTIFY, 0), buf, 0);
    s.dw[10] = 0x42;
    assert_eq!(st(h.admin(&mut c, s)), Status::INVALID_FIELD);
    // Unmapped buffer: data transfer error; SGL on admin: invalid field.
    let mut s = with_prps(sqe(admin::IDENTIFY, 0), 1 << 40, 0);
    s.dw[10] = 1;
    assert_eq!(st(h.admin(&mut c, s)), Status::DATA_TRANSFER_ERROR);
    let mut s = with_prps(sqe(admin::IDENTIFY, 0), buf, 0);
    s.dw[0] |= 1 << 14;
    s.dw[10] = 1;
    assert_eq!(st(h.admin(&mut c, s)), Status::INVALID_FIELD);
    // Unknown opcode, fused admin command.
    assert_eq!(st(h.admin(&mut c, sqe(0x80, 0))), Status::INVALID_OPCODE);
    let mut s = sqe(admin::KEEP_ALIVE, 0);
    s.dw[0] |= 1 << 8;
    assert_eq!(st(h.admin(&mut c, s)), Status::INVALID_FIELD);
    ok(h.admin(&mut c, sqe(admin::KEEP_ALIVE, 0)));
}

#[test]
fn queue_management_status_table() {
    let (mut c, mut h) = setup(ControllerConfig::default());
    let mem = h.alloc(64 * 1024);
    let mk = |opc: u8, dw10: u32, dw11: u32, prp: u64| {
        let mut s = with_prps(sqe(opc, 0), prp, 0);
        s.dw[10] = dw10;
        s.dw[11] = dw11;
        s
    };
    let cq = |qid: u32, size: u32, flags: u32, iv: u32| {
        mk(
            admin::CREATE_CQ,
            qid | (size - 1) << 16,
            flags | iv << 16,
            mem,
        )
    };
    assert_eq!(st(h.admin(&mut c, cq(0, 16, 3, 1))), Status::INVALID_QID);
    assert_eq!(st(h.admin(&mut c, cq(128, 16, 3, 1))), Status::INVALID_QID);
    assert_eq!(
        st(h.admin(&mut c, cq(1, 1, 3, 1))),
        Status::INVALID_QUEUE_SIZE
    );
    assert_eq!(
        st(h.admin(&mut c, cq(1, 257, 3, 1))),
        Status::INVALID_QUEUE_SIZE
    );
    assert_eq!(
        st(h.admin(&mut c, cq(1, 16, 2, 1))),
        Status::INVALID_FIELD,
        "PC=0"
    );
    assert_eq!(
        st(h.admin(&mut c, cq(1, 16, 3, 512))),
        Status::INVALID_INTERRUPT_VECTOR
    );
    let far = mk(admin::CREATE_CQ, 1 | 15 << 16, 3, 1 << 40);
    assert_eq!(st(h.admin(&mut c, far)), Status::DATA_TRANSFER_ERROR);
    ok(h.admin(&mut c, cq(1, 16, 3, 1)));
    assert_eq!(
        st(h.admin(&mut c, cq(1, 16, 3, 1))),
        Status::INVALID_QID,
        "exists"
    );
    let sq = |qid: u32, size: u32, flags: u32, cqid: u32| {
        mk(
            admin::CREATE_SQ,
            qid | (size - 1) << 16,
            flags | cqid << 16,
            mem + 0x4000,
        )
    };
    assert_eq!(st(h.admin(&mut c, sq(0, 16, 1, 1))), Status::INVALID_QID);
    assert_eq!(
        st(h.admin(&mut c, sq(1, 1, 1, 1))),
        Status::INVALID_QUEUE_SIZE
    );
    assert_eq!(st(h.admin(&mut c, sq(1, 16, 0, 1))), Status::INVALID_FIELD);
    assert_eq!(st(h.admin(&mut c, sq(1, 16, 1, 0))), Status::INVALID_QID);
    assert_eq!(st(h.admin(&mut c, sq(1, 16, 1, 2))), Status::CQ_INVALID);
    ok(h.admin(&mut c, sq(1, 16, 1, 1)));
    // Number of Queues after queues exist: command sequence error.
    let mut nq = sqe(admin::SET_FEATURES, 0);
    nq.dw[10] = u32::from(feat::NUM_QUEUES);
    nq.dw[11] = 0x0003_0003;
    assert_eq!(st(h.admin(&mut c, nq)), Status::COMMAND_SEQUENCE_ERROR);
    // Deletions.
    let del = |opc: u8, qid: u32| mk(opc, qid, 0, 0);
    assert_eq!(
        st(h.admin(&mut c, del(admin::DELETE_CQ, 1))),
        Status::INVALID_QUEUE_DELETION
    );
    assert_eq!(
        st(h.admin(&mut c, del(admin::DELETE_SQ, 0))),
        Status::INVALID_QID
    );
    assert_eq!(
        st(h.admin(&mut c, del(admin::DELETE_SQ, 9))),
        Status::INVALID_QID
    );
    assert_eq!(
        st(h.admin(&mut c, del(admin::DELETE_CQ, 0))),
        Status::INVALID_QID
    );
    ok(h.admin(&mut c, del(admin::DELETE_SQ, 1)));
    ok(h.admin(&mut c, del(admin::DELETE_CQ, 1)));
    assert_eq!(
        st(h.admin(&mut c, del(admin::DELETE_CQ, 1))),
        Status::INVALID_QID
    );
}

#[test]
fn number_of_queues_once_only() {
    let (mut c, mut h) = setup(ControllerConfig::default());
    let mut s = sqe(admin::SET_FEATURES, 0);
    s.dw[10] = u32::from(feat::NUM_QUEUES);
    s.dw[11] = 0xffff_0003;
    assert_eq!(st(h.admin(&mut c, s)), Status::INVALID_FIELD);
    s.dw[11] = 0x0003_0007;
    assert_eq!(ok(h.admin(&mut c, s)).dw0, 0x0003_0007);
    s.dw[11] = 0x0010_0010;
    assert_eq!(
        ok(h.admin(&mut c, s)).dw0,
        0x0003_0007,
        "allocation does not change"
    );
    let mut g = sqe(admin::GET_FEATURES, 0);
    g.dw[10] = u32::from(feat::NUM_QUEUES);
    assert_eq!(ok(h.admin(&mut c, g)).dw0, 0x0003_0007);
    // qid beyond the allocation.
    assert_eq!(st(h.create_cq(&mut c, 5, 16, 1)), Status::INVALID_QID);
    assert!(h.create_pair(&mut c, 4, 16));
}

#[test]
fn features_round_trip_and_errors() {
    let (mut c, mut h) = ready();
    let set = |fid: u8, v: u32| {
        let mut s = sqe(admin::SET_FEATURES, 0);
        s.dw[10] = u32::from(fid);
        s.dw[11] = v;
        s
    };
    let get = |fid: u8, v: u32| {
        let mut s = sqe(admin::GET_FEATURES, 0);
        s.dw[10] = u32::from(fid);
        s.dw[11] = v;
        s
    };
    for (fid, v) in [
        (feat::ARBITRATION, 0x0102_0301u32),
        (feat::ERROR_RECOVERY, 7),
        (feat::INT_COALESCING, 0x0a04),
        (feat::WRITE_ATOMICITY, 1),
        (feat::ASYNC_EVENT_CONFIG, 0x100),
        (feat::KEEP_ALIVE_TIMER, 20_000),
        (feat::VOLATILE_WC, 0),
    ] {
        ok(h.admin(&mut c, set(fid, v)));
        assert_eq!(ok(h.admin(&mut c, get(fid, 0))).dw0, v, "fid {fid:#x}");
    }
    ok(h.admin(&mut c, set(feat::TEMP_THRESHOLD, 0x0010_0100)));
    assert_eq!(
        ok(h.admin(&mut c, get(feat::TEMP_THRESHOLD, 0x0010_0000))).dw0 & 0xffff,
        0x100
    );
    assert_eq!(
        st(h.admin(&mut c, set(feat::TEMP_THRESHOLD, 0x0001_0100))),
        Status::INVALID_FIELD
    );
    assert_eq!(
        st(h.admin(&mut c, set(feat::POWER_MGMT, 1))),
        Status::INVALID_FIELD
    );
    assert_eq!(
        st(h.admin(&mut c, set(0x03, 0))),
        Status::INVALID_FIELD,
        "LBA range type"
    );
    let mut save = set(feat::ARBITRATION, 0);
    save.dw[10] |= 1 << 31;
    assert_eq!(st(h.admin(&mut c, save)), Status::FEATURE_NOT_SAVEABLE);
    ok(h.admin(&mut c, set(feat::INT_VECTOR_CONFIG, 1 | 1 << 16)));
    assert_eq!(
        ok(h.admin(&mut c, get(feat::INT_VECTOR_CONFIG, 1))).dw0,
        1 | 1 << 16
    );
    assert_eq!(
        st(h.admin(&mut c, set(feat::INT_VECTOR_CONFIG, 0))),
        Status::INVALID_FIELD
    );
    let mut sel = get(feat::ARBITRATION, 0);
    sel.dw[10] |= 3 << 8;
    assert_eq!(ok(h.admin(&mut c, sel)).dw0, 4, "changeable");
    // Host identifier: 128-bit only.
    let buf = h.alloc(4096);
    h.write(buf, &[9; 16]);
    let hid = with_prps(set(feat::HOST_ID, 1), buf, 0);
    ok(h.admin(&mut c, hid));
    assert_eq!(
        st(h.admin(&mut c, with_prps(set(feat::HOST_ID, 0), buf, 0))),
        Status::INVALID_FIELD
    );
    h.write(buf, &[0; 16]);
    ok(h.admin(&mut c, with_prps(get(feat::HOST_ID, 1), buf, 0)));
    assert_eq!(h.read(buf, 16), vec![9; 16]);
}

fn get_log(h: &mut FakeHost, c: &mut Controller, lid: u8, len: u32, buf: u64) -> Status {
    let mut s = with_prps(sqe(admin::GET_LOG_PAGE, 0xffff_ffff), buf, 0);
    s.dw[10] = u32::from(lid) | ((len / 4 - 1) << 16);
    h.admin(c, s).unwrap().status
}

#[test]
fn log_pages_and_smart_counters() {
    let (mut c, mut h) = ready();
    let data = h.alloc(8192);
    h.write(data, &pattern(4096, 3));
    ok(h.io(&mut c, 1, rw(io::WRITE, 1, 0, 8, data, 0)));
    ok(h.io(&mut c, 1, rw(io::READ, 1, 0, 8, data, 0)));
    ok(h.io(&mut c, 1, rw(io::READ, 1, 0, 8, data, 0)));
    let buf = h.alloc(4096);
    assert_eq!(
        get_log(&mut h, &mut c, log::SMART, 512, buf),
        Status::SUCCESS
    );
    let s = h.read(buf, 512);
    let u = |o: usize| u64::from_le_bytes(s[o..o + 8].try_into().unwrap());
    assert_eq!(u(32), 1, "data units read");
    assert_eq!(u(48), 1, "data units written");
    assert_eq!(u(64), 2, "host reads");
    assert_eq!(u(80), 1, "host writes");
    assert_eq!(u(112), 1, "power cycles");
    assert_eq!(
        get_log(&mut h, &mut c, log::FW_SLOT, 512, buf),
        Status::SUCCESS
    );
    assert_eq!(h.read(buf, 1), vec![1]);
    assert_eq!(
        get_log(&mut h, &mut c, log::CMD_EFFECTS, 4096, buf),
        Status::SUCCESS
    );
    let e = h.read(buf, 4096);
    assert_eq!(e[6 * 4], 1, "identify supported");
    assert_eq!(e[1024 + 4] & 3, 3, "write: supported + LBA change");
    assert_eq!(
        get_log(&mut h, &mut c, log::SUPPORTED, 1024, buf),
        Status::SUCCESS
    );
    assert_eq!(
        get_log(&mut h, &mut c, 0xc1, 512, buf),
        Status::INVALID_LOG_PAGE
    );
    // Offset must be dword aligned and inside the page.
    let mut s = with_prps(sqe(admin::GET_LOG_PAGE, 0xffff_ffff), buf, 0);
    s.dw[10] = u32::from(log::SMART) | (127 << 16);
    s.dw[12] = 2;
    assert_eq!(st(h.admin(&mut c, s)), Status::INVALID_FIELD);
    s.dw[12] = 1024;
    assert_eq!(st(h.admin(&mut c, s)), Status::INVALID_FIELD);
    s.dw[12] = 64;
    ok(h.admin(&mut c, s));
    assert_eq!(
        u64::from_le_bytes(h.read(buf, 8).try_into().unwrap()),
        2,
        "offset 64 = host reads"
    );
    // Errors land in the error log.
    assert_eq!(
        st(h.io(&mut c, 1, rw(io::READ, 9, 0, 1, data, 0))),
        Status::INVALID_NAMESPACE
    );
    assert_eq!(
        get_log(&mut h, &mut c, log::ERROR, 64, buf),
        Status::SUCCESS
    );
    let e = h.read(buf, 64);
    assert!(u64::from_le_bytes(e[0..8].try_into().unwrap()) >= 1);
    assert_eq!(u16::from_le_bytes([e[8], e[9]]), 1, "sqid");
    assert_eq!(
        u16::from_le_bytes([e[12], e[13]]) >> 1,
        Status::INVALID_NAMESPACE.0
    );
}

#[test]
fn io_read_write_prp_variants_and_sgl() {
    let (mut c, mut h) = ready();
    let buf = h.alloc(64 * 1024);
    let back = h.alloc(64 * 1024);
    // PRP1 only, unaligned start inside a page.
    let p = pattern(1024, 1);
    h.write(buf + 512, &p);
    ok(h.io(&mut c, 1, rw(io::WRITE, 1, 10, 2, buf + 512, 0)));
    ok(h.io(&mut c, 1, rw(io::READ, 1, 10, 2, back + 512, 0)));
    assert_eq!(h.read(back + 512, 1024), p);
    // PRP1 + PRP2 with an unaligned start (crosses one page boundary).
    let p = pattern(4096, 2);
    h.write(buf + 0x800, &p[..0x800]);
    h.write(buf + 0x3000, &p[0x800..]);
    ok(h.io(
        &mut c,
        1,
        rw(io::WRITE, 1, 100, 8, buf + 0x800, buf + 0x3000),
    ));
    ok(h.io(&mut c, 1, rw(io::READ, 1, 100, 8, back, back + 0x1000)));
    assert_eq!(h.read(back, 4096), p);
    // PRP list (4 pages, scattered), 4096-byte namespace.
    let list = h.alloc(4096);
    let pages = [buf + 0x5000, buf + 0x9000, buf + 0x7000];
    for (i, pg) in pages.iter().enumerate() {
        h.write(list + i as u64 * 8, &pg.to_le_bytes());
    }
    let p = pattern(16384, 3);
    h.write(buf + 0x4000, &p[..4096]);
    for (i, pg) in pages.iter().enumerate() {
        h.write(*pg, &p[(i + 1) * 4096..(i + 2) * 4096]);
    }
    ok(h.io(&mut c, 1, rw(io::WRITE, 2, 3, 4, buf + 0x4000, list)));
    ok(h.io(&mut c, 1, rw(io::READ, 1, 0, 1, back, 0))); // unrelated namespace untouched
    let mut rd = rw(io::READ, 2, 3, 4, back, back + 0x1000);
    let rlist = h.alloc(4096);
    for i in 0..3u64 {
        h.write(rlist + i * 8, &(back + 0x1000 * (i + 1)).to_le_bytes());
    }
    rd = with_prps(rd, back, rlist);
    ok(h.io(&mut c, 1, rd));
    assert_eq!(h.read(back, 16384), p);
    // Chained PRP list: the first list holds one entry and a pointer.
    let l1 = h.alloc(4096) + 4096 - 16;
    let l2 = h.alloc(4096);
    h.write(l1, &(back + 0x1000).to_le_bytes());
    h.write(l1 + 8, &l2.to_le_bytes());
    h.write(l2, &(back + 0x2000).to_le_bytes());
    h.write(l2 + 8, &(back + 0x3000).to_le_bytes());
    h.write(back, &[0u8; 16384]);
    ok(h.io(&mut c, 1, rw(io::READ, 2, 3, 4, back, l1)));
    assert_eq!(h.read(back, 16384), p);
    // SGL: segment with two data blocks into a last segment with one.
    let seg = h.alloc(4096);
    let desc = |a: u64, l: u32, t: u8| {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&a.to_le_bytes());
        d[8..12].copy_from_slice(&l.to_le_bytes());
        d[15] = t << 4;
        d
    };
    h.write(seg, &desc(back + 0x8000, 0x1000, 0));
    h.write(seg + 16, &desc(back + 0xa000, 0x2000, 0));
    h.write(seg + 32, &desc(seg + 0x100, 16, 3));
    h.write(seg + 0x100, &desc(back + 0xd000, 0x1000, 0));
    let mut s = rw(io::READ, 2, 3, 4, 0, 0);
    s.dw[0] |= 1 << 14;
    let d = desc(seg, 48, 2);
    for i in 0..4 {
        s.dw[6 + i] = u32::from_le_bytes(d[i * 4..i * 4 + 4].try_into().unwrap());
    }
    ok(h.io(&mut c, 1, s));
    assert_eq!(h.read(back + 0x8000, 0x1000), p[..0x1000]);
    assert_eq!(h.read(back + 0xa000, 0x2000), p[0x1000..0x3000]);
    assert_eq!(h.read(back + 0xd000, 0x1000), p[0x3000..]);
    // SGL data block with the wrong length.
    let d = desc(back, 100, 0);
    for i in 0..4 {
        s.dw[6 + i] = u32::from_le_bytes(d[i * 4..i * 4 + 4].try_into().unwrap());
    }
    assert_eq!(st(h.io(&mut c, 1, s)), Status::SGL_LENGTH_INVALID);
    ok(h.io(&mut c, 1, rw(io::READ, 1, 0, 1, back, 0)));
}

#[test]
fn io_errors_each_followed_by_success() {
    let (mut c, mut h) = ready();
    let buf = h.alloc(256 * 1024);
    let good = rw(io::READ, 1, 0, 8, buf, 0);
    let cases: Vec<(sluice_nvme::spec::Sqe, Status)> = vec![
        (rw(0x7e, 1, 0, 1, buf, 0), Status::INVALID_OPCODE),
        (rw(io::READ, 0, 0, 1, buf, 0), Status::INVALID_NAMESPACE),
        (rw(io::READ, 3, 0, 1, buf, 0), Status::INVALID_NAMESPACE),
        (rw(io::READ, 1, 4095, 2, buf, 0), Status::LBA_OUT_OF_RANGE),
        (
            rw(io::READ, 1, u64::MAX, 1, buf, 0),
            Status::LBA_OUT_OF_RANGE,
        ),
        (rw(io::READ, 2, 0, 64, buf, 0), Status::INVALID_FIELD), // 256 KiB > MDTS
        (
            rw(io::READ, 1, 0, 1, 1 << 40, 0),
            Status::DATA_TRANSFER_ERROR,
        ),
        (
            rw(io::READ, 1, 0, 8, 16 * 1024 * 1024 - 512, 16 * 1024 * 1024),
            Status::DATA_TRANSFER_ERROR,
        ),
        (
            rw(io::READ, 1, 0, 16, buf, buf + 4),
            Status::PRP_OFFSET_INVALID,
        ),
        (
            rw(io::READ, 1, 0, 24, buf, buf + 3),
            Status::PRP_OFFSET_INVALID,
        ), // misaligned list
    ];
    for (bad, want) in cases {
        assert_eq!(st(h.io(&mut c, 1, bad)), want, "opcode {:#x}", bad.opcode());
        ok(h.io(&mut c, 1, good));
    }
    let mut fused = good;
    fused.dw[0] |= 1 << 8;
    assert_eq!(st(h.io(&mut c, 1, fused)), Status::INVALID_FIELD);
    // SGL data block straddling the end of guest memory: partially mapped.
    let mut sgl = rw(io::READ, 1, 0, 1, 16 * 1024 * 1024 - 256, 0);
    sgl.dw[0] |= 1 << 14;
    sgl.dw[8] = 512;
    sgl.dw[9] = 0;
    assert_eq!(st(h.io(&mut c, 1, sgl)), Status::DATA_TRANSFER_ERROR);
    ok(h.io(&mut c, 1, good));
    let mut psdt3 = good;
    psdt3.dw[0] |= 3 << 14;
    assert_eq!(st(h.io(&mut c, 1, psdt3)), Status::INVALID_FIELD);
    ok(h.io(&mut c, 1, good));
}

#[test]
fn flush_write_zeroes_dsm_compare() {
    let (mut c, mut h) = ready();
    let buf = h.alloc(16384);
    let p = pattern(4096, 9);
    h.write(buf, &p);
    ok(h.io(&mut c, 1, rw(io::WRITE, 1, 40, 8, buf, 0)));
    ok(h.io(&mut c, 1, rw(io::FLUSH, 1, 0, 1, 0, 0)));
    ok(h.io(&mut c, 1, rw(io::FLUSH, 0xffff_ffff, 0, 1, 0, 0)));
    // Compare equal, then different.
    ok(h.io(&mut c, 1, rw(io::COMPARE, 1, 40, 8, buf, 0)));
    h.write(buf + 100, &[0xee]);
    assert_eq!(
        st(h.io(&mut c, 1, rw(io::COMPARE, 1, 40, 8, buf, 0))),
        Status::COMPARE_FAILURE
    );
    // Write zeroes over the first two blocks.
    ok(h.io(&mut c, 1, rw(io::WRITE_ZEROES, 1, 40, 2, 0, 0)));
    ok(h.io(&mut c, 1, rw(io::READ, 1, 40, 8, buf + 4096, 0)));
    let r = h.read(buf + 4096, 4096);
    assert!(r[..1024].iter().all(|&b| b == 0));
    assert_eq!(&r[1024..], &p[1024..]);
    assert_eq!(
        st(h.io(&mut c, 1, rw(io::WRITE_ZEROES, 1, 4095, 2, 0, 0))),
        Status::LBA_OUT_OF_RANGE
    );
    // DSM deallocate two ranges.
    let ranges = h.alloc(4096);
    let range = |nlb: u32, slba: u64| {
        let mut r = [0u8; 16];
        r[4..8].copy_from_slice(&nlb.to_le_bytes());
        r[8..16].copy_from_slice(&slba.to_le_bytes());
        r
    };
    h.write(ranges, &range(2, 42));
    h.write(ranges + 16, &range(1, 47));
    let mut d = with_prps(sqe(io::DSM, 1), ranges, 0);
    d.dw[10] = 1;
    d.dw[11] = 1 << 2;
    ok(h.io(&mut c, 1, d));
    ok(h.io(&mut c, 1, rw(io::READ, 1, 40, 8, buf + 8192, 0)));
    let r = h.read(buf + 8192, 4096);
    assert!(r[1024..2048].iter().all(|&b| b == 0));
    assert_eq!(&r[2048..3584], &p[2048..3584]);
    assert!(r[3584..].iter().all(|&b| b == 0));
    h.write(ranges, &range(8, 4090));
    assert_eq!(st(h.io(&mut c, 1, d)), Status::LBA_OUT_OF_RANGE);
}

#[test]
fn wrap_around_and_deep_queue() {
    let (mut c, mut h) = setup(ControllerConfig::default());
    assert!(h.create_pair(&mut c, 1, 8));
    let buf = h.alloc(4096);
    // 100 commands through an 8-entry queue: head, tail and phase wrap many times.
    for i in 0..100u64 {
        h.write(buf, &i.to_le_bytes());
        ok(h.io(&mut c, 1, rw(io::WRITE, 1, i, 1, buf, 0)));
    }
    for i in (0..100u64).rev() {
        let cqe = ok(h.io(&mut c, 1, rw(io::READ, 1, i, 1, buf, 0)));
        assert_eq!(cqe.sqid, 1);
        assert_eq!(u64::from_le_bytes(h.read(buf, 8).try_into().unwrap()), i);
    }
    // Batch: 7 outstanding at once (queue size 8).
    for i in 0..7 {
        h.submit(&mut c, 1, rw(io::READ, 1, i, 1, buf, 0), false);
    }
    let mut seen = 0;
    for _ in 0..7 {
        let cqe = ok(h.wait(&mut c, 1));
        assert!(cqe.sqhd < 8);
        seen += 1;
    }
    assert_eq!(seen, 7);
}

#[test]
fn shared_cq_and_cq_full_flow_control() {
    let (mut c, mut h) = setup(ControllerConfig::default());
    ok(h.create_cq(&mut c, 1, 4, 1));
    ok(h.create_sq(&mut c, 1, 16, 1));
    ok(h.create_sq(&mut c, 2, 16, 1));
    let buf = h.alloc(4096);
    // Six commands into a 4-entry CQ: only 3 fit; the rest wait for head updates.
    for i in 0..3 {
        h.submit(&mut c, 1, rw(io::READ, 1, i, 1, buf, 0), false);
        h.submit(&mut c, 2, rw(io::READ, 1, i, 1, buf, 0), false);
    }
    for _ in 0..5 {
        c.poll();
    }
    assert!(c.stats().cq_full > 0, "flow control engaged");
    let mut by_sq = [0, 0, 0];
    for _ in 0..6 {
        let cqe = ok(h.wait(&mut c, 1));
        by_sq[usize::from(cqe.sqid)] += 1;
    }
    assert_eq!(by_sq, [0, 3, 3]);
    assert!(h.try_reap(&mut c, 1).is_none());
}

#[test]
fn invalid_doorbell_raises_aer_and_queue_is_skipped() {
    let (mut c, mut h) = ready();
    let aer = h.submit(&mut c, 0, sqe(admin::ASYNC_EVENT_REQUEST, 0), false);
    c.poll();
    assert!(h.try_reap(&mut c, 0).is_none(), "AER stays outstanding");
    // Tail 100 on a 64-entry SQ.
    c.bar0_write(reg::DOORBELL_BASE + 8, &100u32.to_le_bytes())
        .unwrap();
    let cqe = ok(h.wait(&mut c, 0));
    assert_eq!(cqe.cid, aer);
    assert_eq!(cqe.dw0 & 7, 0, "error event");
    assert_eq!((cqe.dw0 >> 8) & 0xff, 1, "invalid doorbell write value");
    assert_eq!((cqe.dw0 >> 16) & 0xff, 1, "error log");
    assert_eq!(c.stats().invalid_doorbell_writes, 1);
    // Restore the real tail; the queue works again.
    c.bar0_write(reg::DOORBELL_BASE + 8, &0u32.to_le_bytes())
        .unwrap();
    let buf = h.alloc(4096);
    ok(h.io(&mut c, 1, rw(io::READ, 1, 0, 1, buf, 0)));
    // AER limit: four outstanding, the fifth fails.
    for _ in 0..4 {
        h.submit(&mut c, 0, sqe(admin::ASYNC_EVENT_REQUEST, 0), false);
    }
    assert_eq!(
        st(h.admin(&mut c, sqe(admin::ASYNC_EVENT_REQUEST, 0))),
        Status::AER_LIMIT_EXCEEDED
    );
}

#[test]
fn namespace_hotplug_aen_and_changed_list() {
    let (mut c, mut h) = ready();
    let mut aec = sqe(admin::SET_FEATURES, 0);
    aec.dw[10] = u32::from(feat::ASYNC_EVENT_CONFIG);
    aec.dw[11] = 1 << 8;
    ok(h.admin(&mut c, aec));
    let buf = h.alloc(4096);
    assert_eq!(
        get_log(&mut h, &mut c, log::CHANGED_NS, 4096, buf),
        Status::SUCCESS
    ); // clear
    h.submit(&mut c, 0, sqe(admin::ASYNC_EVENT_REQUEST, 0), false);
    c.poll();
    let nsid = c.add_namespace(None, null(512, 1024)).unwrap();
    assert_eq!(nsid, 3);
    let cqe = ok(h.wait(&mut c, 0));
    assert_eq!(
        cqe.dw0,
        2 | 4 << 16,
        "notice, ns attribute changed, log 04h"
    );
    assert_eq!(
        get_log(&mut h, &mut c, log::CHANGED_NS, 4096, buf),
        Status::SUCCESS
    );
    assert_eq!(h.read(buf, 8), [3, 0, 0, 0, 0, 0, 0, 0]);
    ok(h.io(&mut c, 1, rw(io::READ, 3, 0, 1, buf, 0)));
    h.submit(&mut c, 0, sqe(admin::ASYNC_EVENT_REQUEST, 0), false);
    c.remove_namespace(3).unwrap();
    let cqe = ok(h.wait(&mut c, 0));
    assert_eq!(cqe.dw0 & 7, 2);
    assert_eq!(
        st(h.io(&mut c, 1, rw(io::READ, 3, 0, 1, buf, 0))),
        Status::INVALID_NAMESPACE
    );
    assert!(matches!(
        c.remove_namespace(3),
        Err(sluice_nvme::NsError::NotFound(3))
    ));
    assert!(c.add_namespace(Some(1), null(512, 8)).is_err(), "in use");
    let mut odd = null(512, 8).info().clone();
    odd.block_size = 520;
    let odd: Arc<dyn Bdev> = Arc::new(Gate(Arc::new(AtomicU64::new(0)), odd));
    assert!(matches!(
        c.add_namespace(None, odd),
        Err(sluice_nvme::NsError::BlockSize(520))
    ));
}

#[test]
fn shutdown_reset_and_reinit() {
    let (mut c, mut h) = ready();
    let buf = h.alloc(4096);
    h.write(buf, &pattern(512, 5));
    ok(h.io(&mut c, 1, rw(io::WRITE, 1, 7, 1, buf, 0)));
    // Normal shutdown.
    let cc = 1u32 | 6 << 16 | 4 << 20 | 1 << 14;
    c.bar0_write(reg::CC, &cc.to_le_bytes()).unwrap();
    let mut v = [0u8; 4];
    c.bar0_read(reg::CSTS, &mut v).unwrap();
    assert_eq!((u32::from_le_bytes(v) >> 2) & 3, 2, "SHST complete");
    // The admin queue still answers after shutdown; stale entries are not replayed.
    c.poll();
    assert!(
        h.try_reap(&mut c, 0).is_none(),
        "no stale admin command replayed"
    );
    ok(h.admin(&mut c, sqe(admin::KEEP_ALIVE, 0)));
    assert!(h.try_reap(&mut c, 0).is_none());
    // I/O queues were deleted by the shutdown: nothing is fetched from SQ 1.
    h.submit(&mut c, 1, rw(io::READ, 1, 7, 1, buf, 0), false);
    for _ in 0..5 {
        c.poll();
    }
    assert!(h.try_reap(&mut c, 1).is_none());
    // Disable, re-enable from scratch.
    c.bar0_write(reg::CC, &0u32.to_le_bytes()).unwrap();
    c.bar0_read(reg::CSTS, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v) & 1, 0);
    let mut h2 = FakeHost::with_memory(h.mem.clone(), 8 << 20, 16 << 20);
    assert_eq!(h2.enable(&mut c, 16) & 0xf, 1, "RDY, SHST cleared");
    assert!(h2.create_pair(&mut c, 1, 32));
    let buf2 = h2.alloc(4096);
    ok(h2.io(&mut c, 1, rw(io::READ, 1, 7, 1, buf2, 0)));
    assert_eq!(h2.read(buf2, 512), pattern(512, 5), "data survives reset");
    // Function reset clears the registers.
    c.function_reset();
    c.bar0_read(reg::CC, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), 0);
}

/// Backend whose completions are released by the test.
struct Gate(Arc<AtomicU64>, BdevInfo);
struct GateChan(Arc<AtomicU64>, Vec<IoRequest>);
impl Bdev for Gate {
    fn info(&self) -> &BdevInfo {
        &self.1
    }
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(GateChan(self.0.clone(), Vec::new())))
    }
}
impl IoChannel for GateChan {
    fn submit(&mut self, io: IoRequest) -> Result<(), Rejected> {
        self.1.push(io);
        Ok(())
    }
    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        let n = (self.0.load(Ordering::SeqCst) as usize).min(self.1.len());
        self.0.fetch_sub(n as u64, Ordering::SeqCst);
        for req in self.1.drain(..n) {
            done(IoCompletion {
                tag: req.tag,
                result: Ok(()),
            });
        }
        n
    }
    fn in_flight(&self) -> usize {
        self.1.len()
    }
}

#[test]
fn delete_sq_waits_for_inflight() {
    let (mut c, mut h) = ready();
    let gate = Arc::new(AtomicU64::new(0));
    let info = null(512, 1 << 20).info().clone();
    let nsid = c
        .add_namespace(None, Arc::new(Gate(gate.clone(), info)))
        .unwrap();
    let buf = h.alloc(4096);
    h.submit(&mut c, 1, rw(io::READ, nsid, 0, 1, buf, 0), false);
    c.poll();
    assert_eq!(c.inflight(), 1);
    let mut del = sqe(admin::DELETE_SQ, 0);
    del.dw[10] = 1;
    h.submit(&mut c, 0, del, false);
    for _ in 0..10 {
        c.poll();
    }
    assert!(h.try_reap(&mut c, 0).is_none(), "delete waits");
    assert!(
        matches!(c.remove_namespace(nsid), Err(sluice_nvme::NsError::Busy(_))),
        "busy namespace"
    );
    gate.store(1, Ordering::SeqCst);
    ok(h.wait(&mut c, 0));
    assert_eq!(c.inflight(), 0);
    assert!(
        h.try_reap(&mut c, 1).is_none(),
        "aborted command not posted"
    );
}

#[test]
fn adaptive_irq_coalesces_per_batch() {
    let irqs = Arc::new(CountIrqs::default());
    let mut c = Controller::new(ControllerConfig::default(), irqs.clone()).unwrap();
    c.add_namespace(Some(1), null(512, 1 << 20)).unwrap();
    let mut h = FakeHost::new(4 << 20);
    h.enable(&mut c, 16);
    assert!(h.create_pair(&mut c, 1, 64));
    irqs.0.lock().unwrap().clear();
    let buf = h.alloc(4096);
    for i in 0..16 {
        h.submit(&mut c, 1, rw(io::READ, 1, i, 1, buf, 0), false);
    }
    c.poll();
    assert_eq!(
        irqs.0.lock().unwrap().as_slice(),
        &[1],
        "one interrupt for 16 completions"
    );
    // Interrupt coalescing threshold: 4 completions per interrupt.
    let mut s = sqe(admin::SET_FEATURES, 0);
    s.dw[10] = u32::from(feat::INT_COALESCING);
    s.dw[11] = 3 | 255 << 8;
    ok(h.admin(&mut c, s));
    for _ in 0..16 {
        h.try_reap(&mut c, 1);
    }
    irqs.0.lock().unwrap().clear();
    for i in 0..2 {
        h.submit(&mut c, 1, rw(io::READ, 1, i, 1, buf, 0), false);
    }
    c.poll();
    assert!(
        irqs.0.lock().unwrap().is_empty(),
        "below threshold: held back"
    );
    for i in 0..2 {
        h.submit(&mut c, 1, rw(io::READ, 1, i, 1, buf, 0), false);
    }
    c.poll();
    assert_eq!(irqs.0.lock().unwrap().as_slice(), &[1]);
}

#[test]
fn poller_thread_quiesces_memory_updates() {
    let (t, handle, mut ch, mut h) = adaptive_poller_with_pair(100, Duration::from_millis(1), None);
    let buf = h.alloc(4096);
    h.write(buf, &pattern(512, 4));
    ok(h.io(&mut ch, 1, rw(io::WRITE, 1, 1, 1, buf, 0)));
    // Let the poller fall asleep, then a trapped doorbell must wake it.
    std::thread::sleep(Duration::from_millis(20));
    ok(h.io(&mut ch, 1, rw(io::READ, 1, 1, 1, buf + 2048, 0)));
    assert_eq!(h.read(buf + 2048, 512), pattern(512, 4));
    // Memory update round trip, stats.
    ch.set_memory(Some(h.mem.clone())).unwrap();
    ok(h.io(&mut ch, 1, rw(io::READ, 1, 1, 1, buf, 0)));
    let stats = ch.stats().unwrap();
    assert!(stats.io_commands >= 3);
    let mut v = [0u8; 4];
    ch.bar0_read(reg::CSTS, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v) & 1, 1);
    let c = ch.detach().unwrap();
    assert!(c.is_ready());
    handle.stop();
    t.join().unwrap();
}

#[test]
fn shadow_doorbells_in_trapped_mode() {
    let cfg = ControllerConfig {
        mappable_bar0: false,
        ..Default::default()
    };
    let (mut c, mut h) = setup(cfg);
    assert!(h.create_pair(&mut c, 1, 16));
    let db = h.alloc(4096);
    let ei = h.alloc(4096);
    let s = with_prps(sqe(admin::DOORBELL_BUFFER_CONFIG, 0), db, ei);
    ok(h.admin(&mut c, s));
    assert_eq!(
        st(h.admin(
            &mut c,
            with_prps(sqe(admin::DOORBELL_BUFFER_CONFIG, 0), db, db)
        )),
        Status::INVALID_FIELD
    );
    // Publish the SQ tail in the shadow buffer only.
    let buf = h.alloc(4096);
    let q = h.queues[1].clone().unwrap();
    h.write(q.sq, &rw(io::READ, 1, 0, 1, buf, 0).to_bytes());
    h.write(db + 8, &1u32.to_le_bytes());
    c.poll();
    let mut raw = h.read(q.cq, 16);
    assert_eq!(raw[14] & 1, 1, "completion posted from the shadow tail");
    assert_eq!(
        u32::from_le_bytes(h.read(ei + 8, 4).try_into().unwrap()),
        1,
        "EventIdx follows the tail"
    );
    assert!(c.stats().shadow_doorbell_reads > 0);
    raw.clear();
    // Mappable BAR0: Doorbell Buffer Config is not offered.
    let (mut c2, mut h2) = setup(ControllerConfig::default());
    let (d2, e2) = (h2.alloc(4096), h2.alloc(4096));
    assert_eq!(
        st(h2.admin(
            &mut c2,
            with_prps(sqe(admin::DOORBELL_BUFFER_CONFIG, 0), d2, e2)
        )),
        Status::INVALID_OPCODE
    );
}

#[test]
fn queue_depth_is_clamped_and_huge_queues_are_refused() {
    let cfg = ControllerConfig {
        max_queue_depth: 1 << 20,
        ..Default::default()
    };
    let (mut c, mut h) = setup(cfg);
    let mut b = [0u8; 8];
    c.bar0_read(reg::CAP, &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b) & 0xffff, 32767);
    // 65536 entries: refused, no arithmetic on a zero-sized queue.
    let mut s = with_prps(sqe(admin::CREATE_CQ, 0), 0x10_0000, 0);
    s.dw[10] = 1 | 0xffff << 16;
    s.dw[11] = 3;
    assert_eq!(st(h.admin(&mut c, s)), Status::INVALID_QUEUE_SIZE);
    assert!(h.create_pair(&mut c, 1, 4096));
}

#[test]
fn max_queue_pairs_all_usable() {
    let cfg = ControllerConfig {
        max_io_queues: 511,
        ..Default::default()
    };
    let mut c = Controller::new(cfg, Arc::new(NoInterrupts)).unwrap();
    c.add_namespace(Some(1), null(512, 1 << 20)).unwrap();
    let mut h = FakeHost::new(16 << 20);
    h.enable(&mut c, 16);
    let mut g = sqe(admin::GET_FEATURES, 0);
    g.dw[10] = u32::from(feat::NUM_QUEUES);
    assert_eq!(
        ok(h.admin(&mut c, g)).dw0,
        510 | 510 << 16,
        "511 queues, 0-based"
    );
    for q in 1..=511u16 {
        assert!(h.create_pair(&mut c, q, 2), "queue {q}");
    }
    assert_eq!(st(h.create_cq(&mut c, 512, 2, 1)), Status::INVALID_QID);
    let buf = h.alloc(4096);
    for q in (1..=511u16).step_by(17).chain([511]) {
        let cqe = ok(h.io(&mut c, q, rw(io::READ, 1, u64::from(q), 1, buf, 0)));
        assert_eq!(cqe.sqid, q);
    }
}

#[test]
fn identify_cheap_cns_values() {
    let (mut c, mut h) = ready();
    let buf = h.alloc(4096);
    let id = |h: &mut FakeHost, c: &mut Controller, cns: u32, nsid: u32, csi: u32| {
        let mut s = with_prps(sqe(admin::IDENTIFY, nsid), buf, 0);
        s.dw[10] = cns;
        s.dw[11] = csi << 24;
        h.admin(c, s).unwrap().status
    };
    assert_eq!(id(&mut h, &mut c, 0x05, 1, 0), Status::SUCCESS);
    assert_eq!(
        id(&mut h, &mut c, 0x05, 1, 2),
        Status::INVALID_FIELD,
        "zoned CSI"
    );
    assert_eq!(id(&mut h, &mut c, 0x06, 0, 0), Status::SUCCESS);
    assert_eq!(id(&mut h, &mut c, 0x07, 1, 0), Status::SUCCESS);
    assert_eq!(h.read(buf, 4), [2, 0, 0, 0], "namespaces above 1");
    assert_eq!(id(&mut h, &mut c, 0x08, 2, 0), Status::SUCCESS);
    assert_eq!(h.read(buf + 14, 1), [1], "NSTAT ready");
    assert_eq!(id(&mut h, &mut c, 0x08, 0, 0), Status::INVALID_NAMESPACE);
    assert_eq!(id(&mut h, &mut c, 0x1c, 0, 0), Status::SUCCESS);
    assert_eq!(
        h.read(buf, 8),
        [1, 0, 0, 0, 0, 0, 0, 0],
        "NVM command set vector"
    );
    assert_eq!(id(&mut h, &mut c, 0x00, 0xffff_ffff, 0), Status::SUCCESS);
    assert_eq!(h.read(buf + 130, 1), [9], "common format: 512-byte LBAs");
}

#[test]
fn dma_update_waits_for_inflight_io() {
    let (poller, handle) = Poller::new();
    let mut poller = poller;
    let t = std::thread::spawn(move || poller.run(PollMode::Busy));
    let c = Controller::new(ControllerConfig::default(), Arc::new(NoInterrupts)).unwrap();
    let mut ch = handle.attach(c).unwrap();
    let gate = Arc::new(AtomicU64::new(0));
    let info = null(512, 1 << 20).info().clone();
    ch.add_namespace(Some(1), Arc::new(Gate(gate.clone(), info)))
        .unwrap();
    let mut h = FakeHost::new(4 << 20);
    h.enable(&mut ch, 16);
    assert!(h.create_pair(&mut ch, 1, 16));
    let buf = h.alloc(4096);
    h.submit(&mut ch, 1, rw(io::READ, 1, 0, 1, buf, 0), false);
    while ch.call(false, |c| c.inflight()).unwrap() == 0 {
        std::thread::yield_now();
    }
    // The "DMA unmap" must not return while the read is in flight.
    let ch2 = ch.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let unmap = std::thread::spawn(move || {
        ch2.set_memory(None).unwrap();
        tx.send(()).unwrap();
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "unmap returned with I/O in flight"
    );
    gate.store(1, Ordering::SeqCst);
    rx.recv_timeout(Duration::from_secs(5))
        .expect("unmap completes after the I/O");
    unmap.join().unwrap();
    assert_eq!(ch.call(false, |c| c.inflight()).unwrap(), 0);
    assert!(ch.call(false, |c| c.memory().is_none()).unwrap());
    handle.stop();
    t.join().unwrap();
}

/// The INTx level (sluice-pci asks it at UNMASK): asserted exactly while an
/// interrupt-enabled CQ holds entries the host has not consumed.
#[test]
fn intx_level_follows_unconsumed_completions() {
    let (mut c, mut h) = ready();
    let shared = c.shared().clone();
    assert!(
        !shared.intx_pending(None),
        "everything consumed after bring-up"
    );
    // Admin CQ.
    h.submit(&mut c, 0, sqe(admin::KEEP_ALIVE, 0), false);
    c.poll();
    assert!(shared.intx_pending(None), "admin CQE not yet consumed");
    ok(h.try_reap(&mut c, 0));
    assert!(!shared.intx_pending(None), "admin CQ head caught up");
    // I/O CQ.
    let buf = h.alloc(4096);
    h.submit(&mut c, 1, rw(io::READ, 1, 0, 1, buf, 0), false);
    for _ in 0..3 {
        c.poll();
    }
    assert!(shared.intx_pending(None), "I/O CQE not yet consumed");
    ok(h.try_reap(&mut c, 1));
    assert!(!shared.intx_pending(None));
    // A CQ created with interrupts disabled never asserts the level.
    let cq2 = h.alloc(16 * 16);
    let mut s = with_prps(sqe(admin::CREATE_CQ, 0), cq2, 0);
    s.dw[10] = 2 | 15 << 16;
    s.dw[11] = 1; // PC, IEN = 0
    ok(h.admin(&mut c, s));
    h.queues[2] = Some(sluice_nvme::testkit::HostQueue {
        qid: 2,
        sq: 0,
        cq: cq2,
        size: 16,
        cq_size: 16,
        sq_tail: 0,
        cq_head: 0,
        phase: true,
        cqid: 2,
    });
    ok(h.create_sq(&mut c, 2, 16, 2));
    h.submit(&mut c, 2, rw(io::READ, 1, 0, 1, buf, 0), false);
    for _ in 0..3 {
        c.poll();
    }
    assert_eq!(h.read(cq2 + 14, 1)[0] & 1, 1, "completion posted on CQ 2");
    assert!(!shared.intx_pending(None), "IEN=0 CQ does not count");
    ok(h.try_reap(&mut c, 2));
    // Unconsumed entry, then controller reset: the level drops with the queues.
    h.submit(&mut c, 1, rw(io::READ, 1, 0, 1, buf, 0), false);
    for _ in 0..3 {
        c.poll();
    }
    assert!(shared.intx_pending(None));
    c.bar0_write(reg::CC, &0u32.to_le_bytes()).unwrap();
    assert!(!shared.intx_pending(None), "no level after CC.EN 1 -> 0");
}

/// With shadow doorbells the host publishes I/O CQ heads in guest memory only; the INTx
/// level reads them there.
#[test]
fn intx_level_reads_shadow_cq_heads() {
    let cfg = ControllerConfig {
        mappable_bar0: false,
        ..Default::default()
    };
    let (mut c, mut h) = setup(cfg);
    assert!(h.create_pair(&mut c, 1, 16));
    let (db, ei) = (h.alloc(4096), h.alloc(4096));
    ok(h.admin(
        &mut c,
        with_prps(sqe(admin::DOORBELL_BUFFER_CONFIG, 0), db, ei),
    ));
    let shared = c.shared().clone();
    let mem = h.mem.clone();
    assert!(!shared.intx_pending(Some(&mem)));
    let buf = h.alloc(4096);
    let q = h.queues[1].clone().unwrap();
    h.write(q.sq, &rw(io::READ, 1, 0, 1, buf, 0).to_bytes());
    h.write(db + 8, &1u32.to_le_bytes());
    for _ in 0..3 {
        c.poll();
    }
    assert_eq!(h.read(q.cq + 14, 1)[0] & 1, 1, "completion posted");
    assert!(shared.intx_pending(Some(&mem)), "shadow CQ head still 0");
    // CQ 1 head in the shadow buffer (doorbell index 3) only.
    h.write(db + 12, &1u32.to_le_bytes());
    assert!(!shared.intx_pending(Some(&mem)), "shadow head consumed it");
    // Without memory the BAR doorbell page (still 0) decides: one interrupt too many
    // rather than one too few.
    assert!(shared.intx_pending(None));
    // A reset drops the shadow buffer and the level.
    c.function_reset();
    assert!(!shared.intx_pending(Some(&mem)));
}

/// SQ overflow check: a tail claiming more entries than the host can know to be free
/// (it learns freed slots only from the SQ head in CQEs) is an Invalid Doorbell Write, and
/// the entries are not fetched. A stale tail that moved backwards while fetched commands
/// are still unanswered is such a value: executing it would replay old or zeroed entries.
#[test]
fn sq_tail_overflow_is_refused_not_replayed() {
    let (mut c, mut h) = ready();
    let gate = Arc::new(AtomicU64::new(0));
    let info = null(512, 1 << 20).info().clone();
    let nsid = c
        .add_namespace(None, Arc::new(Gate(gate.clone(), info)))
        .unwrap();
    let buf = h.alloc(4096);
    for _ in 0..3 {
        h.submit(&mut c, 1, rw(io::READ, nsid, 0, 1, buf, 0), false);
    }
    c.poll();
    assert_eq!(c.inflight(), 3, "3 fetched, none answered");
    let before = c.stats();
    // Tail back to 1: that claims 62 new entries, the host can know of at most 60 free.
    c.bar0_write(reg::DOORBELL_BASE + 8, &1u32.to_le_bytes())
        .unwrap();
    for _ in 0..5 {
        c.poll();
    }
    let after = c.stats();
    assert_eq!(after.io_commands, before.io_commands, "nothing replayed");
    assert_eq!(
        after.invalid_doorbell_writes,
        before.invalid_doorbell_writes + 1
    );
    // The real tail again: the queue resumes and the three reads complete.
    c.bar0_write(reg::DOORBELL_BASE + 8, &3u32.to_le_bytes())
        .unwrap();
    gate.store(3, Ordering::SeqCst);
    for _ in 0..3 {
        ok(h.wait(&mut c, 1));
    }
    // Everything answered: a full queue minus one is a valid submission.
    let q = h.queues[1].clone().unwrap();
    for i in 0..63u64 {
        let slot = (3 + i) % 64;
        h.write(q.sq + slot * 64, &rw(io::READ, 1, 0, 1, buf, 0).to_bytes());
    }
    c.bar0_write(reg::DOORBELL_BASE + 8, &2u32.to_le_bytes())
        .unwrap();
    for _ in 0..20 {
        c.poll();
    }
    assert_eq!(c.stats().io_commands, after.io_commands + 63);
    assert_eq!(
        c.stats().invalid_doorbell_writes,
        before.invalid_doorbell_writes + 1
    );
}

/// A parked poller (here with a 30 s longest sleep) is unparked at once by control
/// messages, trapped doorbell writes and `stop`; a doorbell written only into the page
/// is picked up by the next timed wake-up.
#[test]
fn parked_poller_wakes_on_messages_and_trapped_doorbells() {
    let (t, handle, mut ch, mut h) =
        adaptive_poller_with_pair(10, Duration::from_secs(30), Some(Duration::from_secs(10)));
    let buf = h.alloc(4096);
    // Parks last 1, 2, 4 ... us: after 1.2 s idle the thread is in a park that started
    // at ~1.05 s and would last until ~2.1 s.
    std::thread::sleep(Duration::from_millis(1200));
    let t0 = std::time::Instant::now();
    ch.stats().unwrap();
    assert!(t0.elapsed() < Duration::from_millis(600), "message unparks");
    std::thread::sleep(Duration::from_millis(1200));
    let t0 = std::time::Instant::now();
    ok(h.io(&mut ch, 1, rw(io::READ, 1, 1, 1, buf, 0)));
    assert!(
        t0.elapsed() < Duration::from_millis(600),
        "trapped doorbell unparks"
    );
    std::thread::sleep(Duration::from_millis(100));
    let t0 = std::time::Instant::now();
    handle.stop();
    t.join().unwrap();
    assert!(t0.elapsed() < Duration::from_millis(600), "stop unparks");
}

#[test]
fn io_queue_count_follows_create_delete_and_reset() {
    let (mut c, mut h) = setup(ControllerConfig::default());
    assert_eq!(c.stats().io_queues, 0, "admin queue is not counted");
    assert_eq!(c.shared().io_queues(), 0);
    assert!(h.create_pair(&mut c, 1, 16));
    assert!(h.create_pair(&mut c, 2, 16));
    assert_eq!(c.stats().io_queues, 2);
    assert_eq!(c.stats().io_queues_created, 2);
    assert_eq!(c.shared().io_queues(), 2);
    // A rejected create (queue id already in use) counts nothing.
    assert_ne!(st(h.create_sq(&mut c, 2, 16, 2)), Status::SUCCESS);
    assert_eq!(c.shared().io_queues(), 2);
    assert_eq!(c.stats().io_queues_created, 2);
    let mut del = sqe(admin::DELETE_SQ, 0);
    del.dw[10] = 1;
    ok(h.admin(&mut c, del));
    assert_eq!(c.stats().io_queues, 1);
    assert_eq!(c.shared().io_queues(), 1);
    // Controller reset deletes every I/O queue; the cumulative count stays.
    c.bar0_write(reg::CC, &0u32.to_le_bytes()).unwrap();
    assert_eq!(c.shared().io_queues(), 0);
    assert_eq!(c.stats().io_queues, 0);
    assert_eq!(c.stats().io_queues_created, 2);
}

/// Backend recording how each request arrived: `submit` (validating) or `submit_checked`.
/// `(arrived checked, op, offset, len)` per request.
type SpyLog = Arc<Mutex<Vec<(bool, IoOp, u64, u64)>>>;
struct Spy(BdevInfo, SpyLog);
struct SpyChan(SpyLog, Vec<u64>);
impl Bdev for Spy {
    fn info(&self) -> &BdevInfo {
        &self.0
    }
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(SpyChan(self.1.clone(), Vec::new())))
    }
}
impl SpyChan {
    fn record(&mut self, checked: bool, io: &IoRequest) {
        self.0
            .lock()
            .unwrap()
            .push((checked, io.op, io.offset, io.len));
        self.1.push(io.tag);
    }
}
impl IoChannel for SpyChan {
    fn submit(&mut self, io: IoRequest) -> Result<(), Rejected> {
        self.record(false, &io);
        Ok(())
    }
    fn submit_checked(&mut self, io: Checked) -> Result<(), Rejected> {
        self.record(true, io.request());
        Ok(())
    }
    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        let n = self.1.len();
        for tag in self.1.drain(..) {
            done(IoCompletion {
                tag,
                result: Ok(()),
            });
        }
        n
    }
    fn in_flight(&self) -> usize {
        self.1.len()
    }
}

#[test]
fn controller_checks_once_and_refuses_what_the_backend_must_not_see() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let info = |read_only: bool| BdevInfo {
        name: "spy".into(),
        product_name: "spy".into(),
        block_size: 512,
        num_blocks: 64,
        uuid: uuid::Uuid::nil(),
        caps: BdevCaps {
            fua: false,
            flush: true,
            ..BdevCaps::ALL
        },
        volatile_write_cache: true,
        max_queue_depth: 64,
        required_alignment: 1,
        max_io_bytes: 8 * 512,
        read_only,
    };
    let mut c = Controller::new(ControllerConfig::default(), Arc::new(NoInterrupts)).unwrap();
    c.add_namespace(Some(1), Arc::new(Spy(info(false), log.clone())))
        .unwrap();
    c.add_namespace(Some(2), Arc::new(Spy(info(true), log.clone())))
        .unwrap();
    let mut h = FakeHost::new(16 << 20);
    assert_eq!(h.enable(&mut c, 32) & 3, 1);
    assert!(h.create_pair(&mut c, 1, 64));
    let buf = h.alloc(64 * 1024);
    let take = || std::mem::take(&mut *log.lock().unwrap());

    // Accepted commands reach the backend once, on the checked path, as built.
    ok(h.io(&mut c, 1, rw(io::READ, 1, 63, 1, buf, 0)));
    ok(h.io(&mut c, 1, rw(io::WRITE, 1, 56, 8, buf, buf + 4096)));
    ok(h.io(&mut c, 1, rw(io::WRITE_ZEROES, 1, 0, 64, 0, 0)));
    ok(h.io(&mut c, 1, sqe(io::FLUSH, 1)));
    ok(h.io(&mut c, 1, rw(io::READ, 2, 0, 1, buf, 0)));
    assert_eq!(
        take(),
        [
            (true, IoOp::Read, 63 * 512, 512),
            (true, IoOp::Write { fua: false }, 56 * 512, 4096),
            (true, IoOp::WriteZeroes, 0, 64 * 512),
            (true, IoOp::Flush, 0, 0),
            (true, IoOp::Read, 0, 512),
        ]
    );

    // Refused before the backend: one block past the end, overflow, past the bdev's
    // max transfer...
    let mut fua = rw(io::WRITE, 1, 0, 1, buf, 0);
    fua.dw[12] |= 1 << 30;
    let cases = [
        (rw(io::READ, 1, 64, 1, buf, 0), Status::LBA_OUT_OF_RANGE),
        (rw(io::READ, 1, 63, 2, buf, 0), Status::LBA_OUT_OF_RANGE),
        (
            rw(io::WRITE_ZEROES, 1, u64::MAX, 1, 0, 0),
            Status::LBA_OUT_OF_RANGE,
        ),
        (
            rw(io::READ, 1, 0, 9, buf, buf + 4096),
            Status::INVALID_FIELD,
        ),
        // ... and every write-like command on the read-only namespace.
        (rw(io::WRITE, 2, 0, 1, buf, 0), Status::WRITE_TO_READ_ONLY),
        (
            rw(io::WRITE_ZEROES, 2, 0, 1, 0, 0),
            Status::WRITE_TO_READ_ONLY,
        ),
    ];
    for (bad, want) in cases {
        assert_eq!(st(h.io(&mut c, 1, bad)), want, "{:?}", bad.dw);
    }
    assert_eq!(take(), []);
    // FUA is emulated with flush on this bdev: accepted, on the checked path.
    ok(h.io(&mut c, 1, fua));
    assert_eq!(take(), [(true, IoOp::Write { fua: true }, 0, 512)]);
}
