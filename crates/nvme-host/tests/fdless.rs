//! Data buffers in DMA windows mapped WITHOUT an fd (QEMU guest RAM without `share=on`):
//! the target bounces them through DMA_READ/DMA_WRITE messages that the client serves.
//! PRP1, PRP1+PRP2, PRP lists (in fd-backed memory) pointing into the window, SGL data
//! blocks, Compare, mixed fd/fd-less PRPs, admin data, read-only windows, a client that
//! fails the requests; over a twin socket and over the main socket. Real socket,
//! in-process target.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::fs::File;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use common::{pattern, Target, TargetOptions};
use sluice_nvme_host::cmd::{admin, msc, nvm, sc, sct};
use sluice_nvme_host::error::TransportError;
use sluice_nvme_host::io::{rw_command, IO_TIMEOUT};
use sluice_nvme_host::transport::{RegionMmap, Transport, VfuTransport};
use sluice_nvme_host::{
    Command, Controller, ControllerOptions, DataPtr, DmaArena, DmaBuf, QueuePair, Status,
};

const NSID: u32 = 1;
const BS: u64 = 512;
/// IOVA of the fd-less windows (the fd-backed arena sits at 4 GiB).
const WIN: u64 = 0x2_0000_0000;
const RO_WIN: u64 = 0x3_0000_0000;

fn setup(twin: bool) -> (Target, Controller, QueuePair, Arc<DmaArena>) {
    let t = Target::start(TargetOptions::default());
    let mut c = t.connect_opts(ControllerOptions {
        twin_socket: twin,
        ..Target::options()
    });
    c.set_num_queues(2, 2).unwrap();
    let qp = c.create_io_queue_pair(1, 32, None).unwrap();
    let win = c.map_fdless(WIN, 1 << 20, true).unwrap();
    (t, c, qp, win)
}

fn status(qp: &mut QueuePair, opcode: u8, lba: u64, nlb: u32, ptr: DataPtr) -> Status {
    let cmd = rw_command(opcode, NSID, lba, nlb, false).unwrap();
    qp.execute(cmd, ptr, IO_TIMEOUT).unwrap().status
}

fn prp(buf: &DmaBuf, off: u64, len: u64) -> DataPtr {
    DataPtr::Prp {
        iova: buf.iova() + off,
        len,
    }
}

/// Writes `data` from the fd-less buffer at `off`, reads it back into a fresh fd-less
/// buffer through the same kind of pointer and into fd-backed memory; all must match.
fn round_trip(
    c: &Controller,
    qp: &mut QueuePair,
    win: &Arc<DmaArena>,
    lba: u64,
    off: u64,
    data: &[u8],
    sgl: bool,
) {
    let len = data.len() as u64;
    let nlb = (len / BS) as u32;
    let src = win.alloc(off + len).unwrap();
    src.write_at(off, data).unwrap();
    let ptr = |b: &DmaBuf| {
        if sgl {
            DataPtr::Sgl {
                iova: b.iova() + off,
                len: len as u32,
            }
        } else {
            prp(b, off, len)
        }
    };
    assert!(status(qp, nvm::WRITE, lba, nlb, ptr(&src)).is_success());
    let dst = win.alloc(off + len).unwrap();
    assert!(status(qp, nvm::READ, lba, nlb, ptr(&dst)).is_success());
    assert_eq!(
        dst.to_vec(off, data.len()).unwrap(),
        data,
        "fd-less read back"
    );
    let plain = c.alloc(len).unwrap();
    qp.read_blocks(NSID, lba, nlb, BS, &plain).unwrap();
    assert_eq!(
        plain.to_vec(0, data.len()).unwrap(),
        data,
        "fd-backed read back"
    );
}

fn all_shapes(c: &mut Controller, qp: &mut QueuePair, win: &Arc<DmaArena>) {
    // PRP1 only (unaligned, inside one page).
    round_trip(c, qp, win, 0, 0x200, &pattern(1, 1024), false);
    // PRP1 + PRP2 (unaligned start crossing one page boundary).
    round_trip(c, qp, win, 16, 0x800, &pattern(2, 4096), false);
    // PRP list in fd-backed memory whose entries all point into the window (64 KiB).
    round_trip(c, qp, win, 64, 0, &pattern(3, 64 << 10), false);
    // Unaligned start with a list (spans 33 pages).
    round_trip(c, qp, win, 256, 0x600, &pattern(4, 128 << 10), false);
    // SGL data block.
    round_trip(c, qp, win, 1024, 0x10, &pattern(5, 8192), true);
}

#[test]
fn fdless_buffers_over_twin_socket() {
    let (_t, mut c, mut qp, win) = setup(true);
    all_shapes(&mut c, &mut qp, &win);
}

#[test]
fn fdless_buffers_over_main_socket() {
    // No twin socket: the target sends its DMA requests on the main socket; the driver
    // serves them from its wait loop.
    let (_t, mut c, mut qp, win) = setup(false);
    all_shapes(&mut c, &mut qp, &win);
}

#[test]
fn control_request_while_the_target_waits_for_a_dma_reply() {
    // The poll thread blocks in DMA_READ (write of an fd-less buffer) while the client sends
    // a region request; the client serves the DMA_READ while it waits for its reply, the
    // endpoint thread answers the region request: no deadlock, both complete.
    let (_t, c, mut qp, win) = setup(false);
    let data = pattern(9, 16 << 10);
    let src = win.alloc(data.len() as u64).unwrap();
    src.write_at(0, &data).unwrap();
    qp.set_request_server(None); // nothing serves the requests but the region reads below
    let cmd = rw_command(nvm::WRITE, NSID, 8, 32, false).unwrap();
    let cid = qp.submit(cmd, prp(&src, 0, data.len() as u64)).unwrap();
    // Only the client's region requests serve the target's DMA_READs here: keep issuing
    // them until the command completed.
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while !qp.completion_ready() {
        let csts = c.read_reg32(0x1c).unwrap();
        assert_eq!(csts & 3, 1, "RDY, no CFS");
        assert!(std::time::Instant::now() < deadline, "no completion");
    }
    let done = qp.wait(cid, IO_TIMEOUT).unwrap();
    assert!(done.status.is_success(), "{}", done.status);
    let back = c.alloc(data.len() as u64).unwrap();
    qp.read_blocks(NSID, 8, 32, BS, &back).unwrap();
    assert_eq!(back.to_vec(0, data.len()).unwrap(), data);
}

#[test]
fn compare_mixed_prps_and_admin_data() {
    let (_t, mut c, mut qp, win) = setup(true);
    let data = pattern(7, 8192);
    let src = win.alloc(8192).unwrap();
    src.write_at(0, &data).unwrap();
    assert!(status(&mut qp, nvm::WRITE, 40, 16, prp(&src, 0, 8192)).is_success());
    // Compare from the window: equal, then one byte off.
    assert!(status(&mut qp, nvm::COMPARE, 40, 16, prp(&src, 0, 8192)).is_success());
    src.write_at(5000, &[data[5000] ^ 1]).unwrap();
    let st = status(&mut qp, nvm::COMPARE, 40, 16, prp(&src, 0, 8192));
    assert_eq!((st.sct, st.sc), (sct::MEDIA, msc::COMPARE_FAILURE));
    // Mixed: PRP1 in the window, PRP2 in fd-backed memory (read, then write back).
    let fdless = win.alloc(4096).unwrap();
    let backed = c.alloc(4096).unwrap();
    let mut cmd = rw_command(nvm::READ, NSID, 40, 16, false).unwrap();
    cmd.set_prp(fdless.iova(), backed.iova());
    let done = qp.execute(cmd, DataPtr::None, IO_TIMEOUT).unwrap();
    assert!(done.status.is_success(), "{}", done.status);
    assert_eq!(fdless.to_vec(0, 4096).unwrap(), &data[..4096]);
    assert_eq!(backed.to_vec(0, 4096).unwrap(), &data[4096..]);
    let mut cmd = rw_command(nvm::WRITE, NSID, 80, 16, false).unwrap();
    cmd.set_prp(fdless.iova(), backed.iova());
    assert!(qp
        .execute(cmd, DataPtr::None, IO_TIMEOUT)
        .unwrap()
        .status
        .is_success());
    let back = c.alloc(8192).unwrap();
    qp.read_blocks(NSID, 80, 16, BS, &back).unwrap();
    assert_eq!(back.to_vec(0, 8192).unwrap(), data);
    // Admin data (Identify Controller) into the window.
    let id = win.alloc(4096).unwrap();
    let mut cmd = Command::new(admin::IDENTIFY);
    cmd.cdw[10] = 1;
    let done = c.admin(cmd, prp(&id, 0, 4096)).unwrap();
    assert!(done.status.is_success());
    assert_eq!(id.to_vec(0, 2).unwrap(), c.identify_raw(1, 0).unwrap()[..2]);
}

#[test]
fn read_only_window_as_read_destination() {
    let (_t, mut c, mut qp, win) = setup(true);
    let ro = c.map_fdless(RO_WIN, 64 << 10, false).unwrap();
    let buf = ro.alloc(4096).unwrap();
    buf.fill(0xaa).unwrap();
    let st = status(&mut qp, nvm::READ, 0, 8, prp(&buf, 0, 4096));
    assert_eq!(
        (st.sct, st.sc),
        (sct::GENERIC, sc::DATA_TRANSFER_ERROR),
        "Data Transfer Error"
    );
    assert_eq!(buf.to_vec(0, 4096).unwrap(), vec![0xaa; 4096], "untouched");
    // A read-only window is a fine write source, and the controller carries on.
    assert!(status(&mut qp, nvm::WRITE, 0, 8, prp(&buf, 0, 4096)).is_success());
    round_trip(&c, &mut qp, &win, 8, 0, &pattern(11, 4096), false);
    let plain = c.alloc(4096).unwrap();
    qp.read_blocks(NSID, 0, 8, BS, &plain).unwrap();
    assert_eq!(plain.to_vec(0, 4096).unwrap(), vec![0xaa; 4096]);
    // Unmapped again: back to Data Transfer Error.
    c.unmap_fdless(&ro).unwrap();
    let st = status(&mut qp, nvm::WRITE, 0, 8, prp(&buf, 0, 4096));
    assert_eq!((st.sct, st.sc), (sct::GENERIC, sc::DATA_TRANSFER_ERROR));
}

/// A transport whose fd-less windows the client does not know: every DMA_READ/DMA_WRITE
/// the target sends gets an EFAULT error reply.
struct RefusingTransport(VfuTransport);

impl Transport for RefusingTransport {
    fn region_read(&mut self, i: u32, o: u64, d: &mut [u8]) -> Result<(), TransportError> {
        self.0.region_read(i, o, d)
    }
    fn region_write(&mut self, i: u32, o: u64, d: &[u8]) -> Result<(), TransportError> {
        self.0.region_write(i, o, d)
    }
    fn region_size(&self, i: u32) -> Option<u64> {
        self.0.region_size(i)
    }
    fn region_mmap(&self, i: u32) -> Option<RegionMmap> {
        self.0.region_mmap(i)
    }
    fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        fd: BorrowedFd<'_>,
        off: u64,
    ) -> Result<(), TransportError> {
        self.0.dma_map(iova, size, fd, off)
    }
    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), TransportError> {
        self.0.dma_unmap(iova, size)
    }
    fn dma_map_fdless(&mut self, iova: u64, size: u64, _w: bool) -> Result<File, TransportError> {
        let flags = vfu_client::proto::DMA_FLAG_READ | vfu_client::proto::DMA_FLAG_WRITE;
        self.0
            .client()
            .dma_map_raw(flags, 0, iova, size, None)
            .unwrap();
        let f = tempfile::tempfile().unwrap();
        f.set_len(size).unwrap();
        Ok(f)
    }
    fn serve_requests(&mut self) -> Result<usize, TransportError> {
        self.0.serve_requests()
    }
    fn needs_serving(&self) -> bool {
        true
    }
    fn irq_count(&mut self, i: u32) -> Result<u32, TransportError> {
        self.0.irq_count(i)
    }
    fn set_irqs(
        &mut self,
        i: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), TransportError> {
        self.0.set_irqs(i, flags, start, count, fds)
    }
    fn device_reset(&mut self) -> Result<(), TransportError> {
        self.0.device_reset()
    }
}

#[test]
fn client_failing_dma_requests_gives_data_transfer_error() {
    let t = Target::start(TargetOptions::default());
    let inner = VfuTransport::connect(&t.sock).unwrap();
    let mut c = Controller::new(Box::new(RefusingTransport(inner)), Target::options()).unwrap();
    c.set_num_queues(1, 1).unwrap();
    let mut qp = c.create_io_queue_pair(1, 16, None).unwrap();
    let win = c.map_fdless(WIN, 64 << 10, true).unwrap();
    let buf = win.alloc(4096).unwrap();
    for op in [nvm::WRITE, nvm::READ] {
        let st = status(&mut qp, op, 0, 8, prp(&buf, 0, 4096));
        assert_eq!(
            (st.sct, st.sc),
            (sct::GENERIC, sc::DATA_TRANSFER_ERROR),
            "opcode {op}"
        );
    }
    // The controller survives: fd-backed I/O still works.
    let plain = c.alloc(4096).unwrap();
    plain.write_at(0, &pattern(3, 4096)).unwrap();
    qp.write_blocks(NSID, 0, 8, BS, &plain, false).unwrap();
    let back = c.alloc(4096).unwrap();
    qp.read_blocks(NSID, 0, 8, BS, &back).unwrap();
    assert_eq!(back.to_vec(0, 4096).unwrap(), pattern(3, 4096));
}

#[test]
fn queues_and_lists_in_fdless_memory_fail_cleanly() {
    use sluice_nvme_host::cmd::SglDescriptor;
    let (_t, mut c, mut qp, win) = setup(true);
    let dte = (sct::GENERIC, sc::DATA_TRANSFER_ERROR);
    // An I/O CQ in the window: Data Transfer Error.
    let ring = win.alloc(4096).unwrap();
    let mut cq = Command::new(admin::CREATE_CQ);
    cq.set_prp(ring.iova(), 0);
    cq.cdw[10] = 2 | (15 << 16);
    cq.cdw[11] = 1;
    let st = c.admin_raw(cq, DataPtr::None).unwrap().status;
    assert_eq!((st.sct, st.sc), dte, "CQ in fd-less memory");
    // A PRP list in the window (its entries point into fd-backed memory).
    let data = c.alloc(3 * 4096).unwrap();
    let list = win.alloc(4096).unwrap();
    list.write_at(0, &(data.iova() + 4096).to_le_bytes())
        .unwrap();
    list.write_at(8, &(data.iova() + 8192).to_le_bytes())
        .unwrap();
    let mut cmd = rw_command(nvm::READ, NSID, 0, 24, false).unwrap();
    cmd.set_prp(data.iova(), list.iova());
    let st = qp.execute(cmd, DataPtr::None, IO_TIMEOUT).unwrap().status;
    assert_eq!((st.sct, st.sc), dte, "PRP list in fd-less memory");
    // An SGL segment in the window (its data block is fd-backed).
    let seg = win.alloc(4096).unwrap();
    seg.write_at(0, &SglDescriptor::data(data.iova(), 4096).to_bytes())
        .unwrap();
    let mut cmd = rw_command(nvm::READ, NSID, 0, 8, false).unwrap();
    cmd.set_sgl(SglDescriptor::segment(seg.iova(), 1, true));
    let st = qp.execute(cmd, DataPtr::None, IO_TIMEOUT).unwrap().status;
    assert_eq!((st.sct, st.sc), dte, "SGL segment in fd-less memory");
    // The same commands with everything fd-backed work: the controller carries on.
    round_trip(&c, &mut qp, &win, 0, 0, &pattern(12, 4096), false);
    let q2 = c.create_io_queue_pair(2, 16, None).unwrap();
    c.delete_io_queue_pair(q2).unwrap();
}
