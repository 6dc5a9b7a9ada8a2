//! Issue 3 "Hostile guest": every malformed command gets its precise status, and each is
//! followed by a successful I/O on the same controller.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::{Target, TargetOptions};
use sluice_nvme_host::cmd::{admin, csc, feat, nvm, sc, sct, Command, SglDescriptor};
use sluice_nvme_host::io::{rw_command, IO_TIMEOUT};
use sluice_nvme_host::{Completion, Controller, DataPtr, DmaBuf, QueuePair, Status};

const NSID: u32 = 1;
const BLOCKS: u64 = 16384;

struct Rig {
    _t: Target,
    c: Controller,
    qp: QueuePair,
    buf: DmaBuf,
    seq: u8,
}

impl Rig {
    fn new() -> Rig {
        let t = Target::start(TargetOptions::default());
        let mut c = t.connect();
        c.set_num_queues(8, 8).unwrap();
        let qp = c.create_io_queue_pair(1, 32, None).unwrap();
        let buf = c.alloc(8192).unwrap();
        Rig {
            _t: t,
            c,
            qp,
            buf,
            seq: 0,
        }
    }

    fn io(&mut self, cmd: Command, data: DataPtr) -> Completion {
        self.qp.execute(cmd, data, IO_TIMEOUT).unwrap()
    }

    fn admin(&mut self, cmd: Command) -> Completion {
        self.c.admin_raw(cmd, DataPtr::None).unwrap()
    }

    /// A write + read-back that must succeed: the controller survived.
    fn assert_healthy(&mut self) {
        self.seq = self.seq.wrapping_add(1);
        let v = vec![self.seq; 512];
        self.buf.write_at(0, &v).unwrap();
        self.qp
            .write_blocks(NSID, 7, 1, 512, &self.buf, false)
            .unwrap();
        self.buf.fill(0).unwrap();
        self.qp.read_blocks(NSID, 7, 1, 512, &self.buf).unwrap();
        assert_eq!(self.buf.to_vec(0, 512).unwrap(), v);
    }

    fn prp(&self, len: u64) -> DataPtr {
        DataPtr::Prp {
            iova: self.buf.iova(),
            len,
        }
    }
}

fn expect(c: Completion, sct_: u8, sc_: u8) {
    assert!(
        c.status.is(sct_, sc_),
        "expected sct {sct_:#x} sc {sc_:#x}, got {}",
        c.status
    );
}

#[test]
fn invalid_opcodes() {
    let mut r = Rig::new();
    let c = r.io(Command::with_nsid(0x7e, NSID), DataPtr::None);
    expect(c, sct::GENERIC, sc::INVALID_OPCODE);
    r.assert_healthy();
    let c = r.admin(Command::new(0xc7));
    expect(c, sct::GENERIC, sc::INVALID_OPCODE);
    r.assert_healthy();
}

#[test]
fn invalid_fields() {
    let mut r = Rig::new();
    // Identify with a reserved CNS.
    let mut id = Command::new(admin::IDENTIFY);
    id.cdw[10] = 0xfe;
    let page = r.c.alloc(4096).unwrap();
    let c =
        r.c.admin_raw(
            id,
            DataPtr::Prp {
                iova: page.iova(),
                len: 4096,
            },
        )
        .unwrap();
    expect(c, sct::GENERIC, sc::INVALID_FIELD);
    r.assert_healthy();
    // Get Features of an unknown feature id.
    let mut gf = Command::new(admin::GET_FEATURES);
    gf.cdw[10] = 0x7f;
    expect(r.admin(gf), sct::GENERIC, sc::INVALID_FIELD);
    r.assert_healthy();
    // Read with a reserved PSDT value.
    let mut rd = rw_command(nvm::READ, NSID, 0, 1, false).unwrap();
    rd.set_prp(r.buf.iova(), 0);
    rd.set_psdt(3);
    expect(r.io(rd, DataPtr::None), sct::GENERIC, sc::INVALID_FIELD);
    r.assert_healthy();
}

#[test]
fn lba_out_of_range_and_invalid_namespace() {
    let mut r = Rig::new();
    let data = r.prp(1024);
    let c = r.io(rw_command(nvm::READ, NSID, BLOCKS, 1, false).unwrap(), data);
    expect(c, sct::GENERIC, sc::LBA_OUT_OF_RANGE);
    r.assert_healthy();
    // Range straddling the end.
    let data = r.prp(1024);
    let c = r.io(
        rw_command(nvm::WRITE, NSID, BLOCKS - 1, 2, false).unwrap(),
        data,
    );
    expect(c, sct::GENERIC, sc::LBA_OUT_OF_RANGE);
    r.assert_healthy();
    // 64-bit wrap of SLBA + NLB.
    let data = r.prp(1024);
    let c = r.io(
        rw_command(nvm::READ, NSID, u64::MAX, 2, false).unwrap(),
        data,
    );
    expect(c, sct::GENERIC, sc::LBA_OUT_OF_RANGE);
    r.assert_healthy();
    for bad in [0u32, 2, 99, 0xffff_fffe] {
        let data = r.prp(512);
        let c = r.io(rw_command(nvm::READ, bad, 0, 1, false).unwrap(), data);
        expect(c, sct::GENERIC, sc::INVALID_NAMESPACE);
        r.assert_healthy();
    }
}

#[test]
fn data_transfer_errors_for_unmapped_and_partial_prps() {
    let mut r = Rig::new();
    // Entirely unmapped buffer.
    let mut rd = rw_command(nvm::READ, NSID, 0, 1, false).unwrap();
    rd.set_prp(0xdead_0000, 0);
    expect(
        r.io(rd, DataPtr::None),
        sct::GENERIC,
        sc::DATA_TRANSFER_ERROR,
    );
    r.assert_healthy();
    // Partial: PRP1 is the arena's last page, PRP2 is past the end of the mapping.
    let arena = r.c.arena().clone();
    let end = arena.base() + arena.size();
    let mut wr = rw_command(nvm::WRITE, NSID, 0, 16, false).unwrap();
    wr.set_prp(end - 4096, end);
    expect(
        r.io(wr, DataPtr::None),
        sct::GENERIC,
        sc::DATA_TRANSFER_ERROR,
    );
    r.assert_healthy();
    // PRP list pointer outside the mapping.
    let mut wr = rw_command(nvm::WRITE, NSID, 0, 24, false).unwrap();
    wr.set_prp(r.buf.iova(), 0x7777_0000);
    expect(
        r.io(wr, DataPtr::None),
        sct::GENERIC,
        sc::DATA_TRANSFER_ERROR,
    );
    r.assert_healthy();
    // PRP2 with a non-zero page offset.
    let mut rd = rw_command(nvm::READ, NSID, 0, 16, false).unwrap();
    rd.set_prp(r.buf.iova(), r.buf.iova() + 4096 + 0x200);
    let c = r.io(rd, DataPtr::None);
    assert!(
        c.status.is(sct::GENERIC, sc::INVALID_PRP_OFFSET)
            || c.status.is(sct::GENERIC, sc::DATA_TRANSFER_ERROR),
        "{}",
        c.status
    );
    r.assert_healthy();
}

#[test]
fn sgl_errors() {
    let mut r = Rig::new();
    // Descriptor type 0xf (reserved).
    let mut rd = rw_command(nvm::READ, NSID, 0, 1, false).unwrap();
    rd.set_sgl(SglDescriptor {
        addr: r.buf.iova(),
        len: 512,
        kind: 0xf,
        subtype: 0,
    });
    expect(r.io(rd, DataPtr::None), sct::GENERIC, sc::SGL_TYPE_INVALID);
    r.assert_healthy();
    // Data block shorter than the transfer.
    let mut rd = rw_command(nvm::READ, NSID, 0, 2, false).unwrap();
    rd.set_sgl(SglDescriptor::data(r.buf.iova(), 512));
    expect(
        r.io(rd, DataPtr::None),
        sct::GENERIC,
        sc::SGL_LENGTH_INVALID,
    );
    r.assert_healthy();
    // Unmapped data block.
    let mut rd = rw_command(nvm::READ, NSID, 0, 1, false).unwrap();
    rd.set_sgl(SglDescriptor::data(0xdead_0000, 512));
    expect(
        r.io(rd, DataPtr::None),
        sct::GENERIC,
        sc::DATA_TRANSFER_ERROR,
    );
    r.assert_healthy();
}

fn create_cq(qid: u16, size: u16, iova: u64, vector: Option<u16>) -> Command {
    let mut c = Command::new(admin::CREATE_CQ);
    c.set_prp(iova, 0);
    c.cdw[10] = u32::from(qid) | (u32::from(size - 1) << 16);
    c.cdw[11] = 1 | vector.map_or(0, |v| 2 | (u32::from(v) << 16));
    c
}

fn create_sq(qid: u16, size: u16, iova: u64, cqid: u16) -> Command {
    let mut c = Command::new(admin::CREATE_SQ);
    c.set_prp(iova, 0);
    c.cdw[10] = u32::from(qid) | (u32::from(size - 1) << 16);
    c.cdw[11] = 1 | (u32::from(cqid) << 16);
    c
}

#[test]
fn queue_management_errors() {
    let mut r = Rig::new();
    let mem = r.c.alloc(64 * 1024).unwrap();
    // Invalid queue identifier: 0 and beyond the granted count.
    expect(
        r.admin(create_cq(0, 16, mem.iova(), None)),
        sct::COMMAND_SPECIFIC,
        csc::INVALID_QUEUE_ID,
    );
    r.assert_healthy();
    expect(
        r.admin(create_cq(200, 16, mem.iova(), None)),
        sct::COMMAND_SPECIFIC,
        csc::INVALID_QUEUE_ID,
    );
    r.assert_healthy();
    // Existing queue id.
    expect(
        r.admin(create_cq(1, 16, mem.iova(), None)),
        sct::COMMAND_SPECIFIC,
        csc::INVALID_QUEUE_ID,
    );
    r.assert_healthy();
    // Invalid queue size: 1 entry and more than MQES.
    expect(
        r.admin(create_cq(2, 1, mem.iova(), None)),
        sct::COMMAND_SPECIFIC,
        csc::INVALID_QUEUE_SIZE,
    );
    r.assert_healthy();
    expect(
        r.admin(create_cq(2, 1024, mem.iova(), None)),
        sct::COMMAND_SPECIFIC,
        csc::INVALID_QUEUE_SIZE,
    );
    r.assert_healthy();
    // Invalid interrupt vector.
    expect(
        r.admin(create_cq(2, 16, mem.iova(), Some(2000))),
        sct::COMMAND_SPECIFIC,
        csc::INVALID_INTERRUPT_VECTOR,
    );
    r.assert_healthy();
    // SQ on a CQ that does not exist.
    expect(
        r.admin(create_sq(2, 16, mem.iova(), 5)),
        sct::COMMAND_SPECIFIC,
        csc::CQ_INVALID,
    );
    r.assert_healthy();
    // Deleting a CQ that still has an SQ: invalid queue deletion.
    let mut del = Command::new(admin::DELETE_CQ);
    del.cdw[10] = 1;
    expect(
        r.admin(del),
        sct::COMMAND_SPECIFIC,
        csc::INVALID_QUEUE_DELETION,
    );
    r.assert_healthy();
    // Deleting the admin queue or a queue that does not exist.
    let mut del = Command::new(admin::DELETE_SQ);
    del.cdw[10] = 0;
    expect(r.admin(del), sct::COMMAND_SPECIFIC, csc::INVALID_QUEUE_ID);
    let mut del = Command::new(admin::DELETE_SQ);
    del.cdw[10] = 6;
    expect(r.admin(del), sct::COMMAND_SPECIFIC, csc::INVALID_QUEUE_ID);
    r.assert_healthy();
    // Invalid log page.
    let page = r.c.alloc(4096).unwrap();
    let mut glp = Command::new(admin::GET_LOG_PAGE);
    glp.cdw[10] = 0x7a | (127 << 16);
    let c =
        r.c.admin_raw(
            glp,
            DataPtr::Prp {
                iova: page.iova(),
                len: 512,
            },
        )
        .unwrap();
    expect(c, sct::COMMAND_SPECIFIC, csc::INVALID_LOG_PAGE);
    r.assert_healthy();
}

#[test]
fn number_of_queues_after_creation_is_a_sequence_error() {
    let mut r = Rig::new();
    let mut sf = Command::new(admin::SET_FEATURES);
    sf.cdw[10] = u32::from(feat::NUMBER_OF_QUEUES);
    sf.cdw[11] = 3 | (3 << 16);
    expect(r.admin(sf), sct::GENERIC, sc::COMMAND_SEQUENCE_ERROR);
    r.assert_healthy();
}

#[test]
fn sq_tail_beyond_queue_size_raises_invalid_doorbell_aen() {
    let mut r = Rig::new();
    r.c.submit_aer().unwrap();
    let mut bad = r.c.create_io_queue_pair(2, 16, None).unwrap();
    bad.ring_raw_sq(40).unwrap();
    let aen =
        r.c.wait_aen(Duration::from_secs(5))
            .unwrap()
            .expect("an AEN for the invalid doorbell write");
    assert!(aen.status.is_success(), "{}", aen.status);
    let (typ, info) = (aen.dw0 & 7, (aen.dw0 >> 8) & 0xff);
    assert_eq!(
        (typ, info),
        (0, 1),
        "error event, invalid doorbell write value"
    );
    // The bad queue is not processed: nothing ever completes on it.
    let mut n = 0;
    bad.poll(usize::MAX, |_| n += 1).unwrap();
    assert_eq!(n, 0);
    // Error log page is readable; the other queue still works.
    let _ =
        r.c.get_log_page(sluice_nvme_host::cmd::log::ERROR, 0, 64)
            .unwrap();
    r.assert_healthy();
    let _ = Status::default();
}

#[test]
fn cq_head_beyond_queue_size_raises_invalid_doorbell_aen() {
    let mut r = Rig::new();
    r.c.submit_aer().unwrap();
    let bad = r.c.create_io_queue_pair(3, 16, None).unwrap();
    bad.ring_raw_cq(16).unwrap();
    // The controller looks at a CQ head when it has something to post on that CQ.
    let mut bad = bad;
    let buf = r.c.alloc(512).unwrap();
    let _ = bad.submit(
        rw_command(nvm::READ, NSID, 0, 1, false).unwrap(),
        DataPtr::Prp {
            iova: buf.iova(),
            len: 512,
        },
    );
    let aen =
        r.c.wait_aen(Duration::from_secs(5))
            .unwrap()
            .expect("an AEN for the invalid CQ head write");
    assert_eq!((aen.dw0 & 7, (aen.dw0 >> 8) & 0xff), (0, 1));
    r.assert_healthy();
}
