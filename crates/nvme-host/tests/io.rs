//! Issue 3 acceptance 1, data path: read/write/verify with PRP1, PRP1+PRP2, PRP lists
//! (unaligned start, chained), SGLs; flush, write zeroes, deallocate, compare; many deep
//! queues with wrap-around; maximum queue count. Real socket, in-process target.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::{pattern, Target, TargetOptions};
use sluice_nvme_host::cmd::{msc, nvm, sct};
use sluice_nvme_host::io::{rw_command, IO_TIMEOUT};
use sluice_nvme_host::prp::{plan_prp, plan_sgl, prp_entries};
use sluice_nvme_host::{Controller, DataPtr, DmaBuf, QueuePair, PAGE_SIZE};

const NSID: u32 = 1;
const BS: u64 = 512;

fn setup() -> (Target, Controller, QueuePair) {
    let t = Target::start(TargetOptions::default());
    let mut c = t.connect();
    c.set_num_queues(4, 4).unwrap();
    let qp = c.create_io_queue_pair(1, 64, None).unwrap();
    (t, c, qp)
}

/// Writes `data` at `lba` through `data_ptr`, reads it back through a plain PRP buffer.
fn write_then_read_back(qp: &mut QueuePair, c: &Controller, lba: u64, data: &[u8], ptr: DataPtr) {
    let nlb = (data.len() as u64 / BS) as u32;
    let cmd = rw_command(nvm::WRITE, NSID, lba, nlb, false).unwrap();
    let done = qp.execute(cmd, ptr, IO_TIMEOUT).unwrap();
    assert!(done.status.is_success(), "write failed: {}", done.status);
    let back = c.alloc(data.len() as u64).unwrap();
    qp.read_blocks(NSID, lba, nlb, BS, &back).unwrap();
    assert_eq!(
        back.to_vec(0, data.len()).unwrap(),
        data,
        "data read back differs"
    );
}

fn read_into(qp: &mut QueuePair, lba: u64, nlb: u32, ptr: DataPtr) {
    let cmd = rw_command(nvm::READ, NSID, lba, nlb, false).unwrap();
    let done = qp.execute(cmd, ptr, IO_TIMEOUT).unwrap();
    assert!(done.status.is_success(), "read failed: {}", done.status);
}

#[test]
fn prp1_only() {
    let (_t, c, mut qp) = setup();
    let buf = c.alloc(PAGE_SIZE).unwrap();
    let data = pattern(1, 4096);
    buf.write_at(0, &data).unwrap();
    write_then_read_back(
        &mut qp,
        &c,
        8,
        &data,
        DataPtr::Prp {
            iova: buf.iova(),
            len: 4096,
        },
    );
    // Sub-page transfer at an offset inside the page (still PRP1 only).
    let small = pattern(2, 512);
    buf.write_at(0x600, &small).unwrap();
    write_then_read_back(
        &mut qp,
        &c,
        100,
        &small,
        DataPtr::Prp {
            iova: buf.iova() + 0x600,
            len: 512,
        },
    );
}

#[test]
fn prp1_and_prp2_unaligned() {
    let (_t, c, mut qp) = setup();
    let buf = c.alloc(2 * PAGE_SIZE).unwrap();
    let data = pattern(3, 4096);
    buf.write_at(0x800, &data).unwrap();
    let e = prp_entries(&[(buf.iova() + 0x800, 4096)], PAGE_SIZE).unwrap();
    assert_eq!(e.len(), 2, "must need exactly PRP1 + PRP2");
    write_then_read_back(
        &mut qp,
        &c,
        16,
        &data,
        DataPtr::Prp {
            iova: buf.iova() + 0x800,
            len: 4096,
        },
    );
    // And read into an unaligned PRP1+PRP2 destination.
    let dst = c.alloc(2 * PAGE_SIZE).unwrap();
    read_into(
        &mut qp,
        16,
        8,
        DataPtr::Prp {
            iova: dst.iova() + 0x200,
            len: 4096,
        },
    );
    assert_eq!(dst.to_vec(0x200, 4096).unwrap(), data);
}

#[test]
fn prp_list_with_unaligned_start() {
    let (_t, c, mut qp) = setup();
    let buf = c.alloc(6 * PAGE_SIZE).unwrap();
    let len = 4 * 4096 + 1024;
    let data = pattern(4, len);
    buf.write_at(0x400, &data).unwrap();
    write_then_read_back(
        &mut qp,
        &c,
        64,
        &data,
        DataPtr::Prp {
            iova: buf.iova() + 0x400,
            len: len as u64,
        },
    );
    // Maximum transfer (MDTS = 128 KiB) through a PRP list.
    let big = c.alloc(128 * 1024).unwrap();
    let data = pattern(5, 128 * 1024);
    big.write_at(0, &data).unwrap();
    write_then_read_back(
        &mut qp,
        &c,
        1024,
        &data,
        DataPtr::Prp {
            iova: big.iova(),
            len: 128 * 1024,
        },
    );
}

#[test]
fn chained_prp_lists_and_scattered_pages() {
    let (_t, c, mut qp) = setup();
    // Eight scattered data pages (every other page of a 16-page buffer), reversed order.
    let pool = c.alloc(16 * PAGE_SIZE).unwrap();
    let pages: Vec<u64> = (0..8)
        .rev()
        .map(|i| pool.iova() + 2 * i * PAGE_SIZE)
        .collect();
    let data = pattern(6, 8 * 4096);
    for (i, p) in pages.iter().enumerate() {
        c.arena()
            .write(*p, &data[i * 4096..(i + 1) * 4096])
            .unwrap();
    }
    let segs: Vec<(u64, u64)> = pages.iter().map(|&p| (p, PAGE_SIZE)).collect();
    let entries = prp_entries(&segs, PAGE_SIZE).unwrap();
    // First list page has room for 2 entries (1 data + chain), then 3 + chain, then the rest.
    let l1 = c.alloc(PAGE_SIZE).unwrap();
    let l2 = c.alloc(PAGE_SIZE).unwrap();
    let l3 = c.alloc(PAGE_SIZE).unwrap();
    let plan = plan_prp(
        &entries,
        &[l1.iova() + 0xff0, l2.iova(), l3.iova()],
        PAGE_SIZE,
    )
    .unwrap();
    assert_eq!(
        plan.lists.len(),
        2,
        "7 entries after PRP1: 1 + chain, then 6"
    );
    let mut cmd = rw_command(nvm::WRITE, NSID, 200, 64, false).unwrap();
    QueuePair::apply_prp(c.arena(), &mut cmd, &plan).unwrap();
    let done = qp.execute(cmd, DataPtr::None, IO_TIMEOUT).unwrap();
    assert!(done.status.is_success(), "{}", done.status);
    let back = c.alloc(8 * PAGE_SIZE).unwrap();
    qp.read_blocks(NSID, 200, 64, BS, &back).unwrap();
    assert_eq!(back.to_vec(0, data.len()).unwrap(), data);

    // Read into the scattered pages through a chain that starts with 3 slots (2 + chain).
    for p in &pages {
        c.arena().write(*p, &[0u8; 4096]).unwrap();
    }
    let plan = plan_prp(&entries, &[l3.iova() + 0xfe8, l2.iova()], PAGE_SIZE).unwrap();
    assert_eq!(plan.lists.len(), 2);
    assert_eq!(plan.lists[0].entries.len(), 3);
    let mut cmd = rw_command(nvm::READ, NSID, 200, 64, false).unwrap();
    QueuePair::apply_prp(c.arena(), &mut cmd, &plan).unwrap();
    assert!(qp
        .execute(cmd, DataPtr::None, IO_TIMEOUT)
        .unwrap()
        .status
        .is_success());
    for (i, p) in pages.iter().enumerate() {
        let mut got = vec![0u8; 4096];
        c.arena().read(*p, &mut got).unwrap();
        assert_eq!(got, &data[i * 4096..(i + 1) * 4096], "page {i}");
    }
}

#[test]
fn sgl_data_block_segments_and_chains() {
    let (_t, c, mut qp) = setup();
    let id = {
        let mut c2 = c;
        let id = c2.identify_controller().unwrap();
        (c2, id)
    };
    let (c, id) = id;
    assert!(id.supports_sgl(), "controller must advertise SGL support");
    // One data block, inline.
    let buf = c.alloc(PAGE_SIZE).unwrap();
    let data = pattern(7, 2048);
    buf.write_at(0x100, &data).unwrap();
    write_then_read_back(
        &mut qp,
        &c,
        300,
        &data,
        DataPtr::Sgl {
            iova: buf.iova() + 0x100,
            len: 2048,
        },
    );

    // Three data blocks of odd sizes (sum 3 KiB) in one Last Segment.
    let a = c.alloc(PAGE_SIZE).unwrap();
    let b = c.alloc(PAGE_SIZE).unwrap();
    let d = c.alloc(PAGE_SIZE).unwrap();
    let data = pattern(8, 3072);
    a.write_at(0x10, &data[..1000]).unwrap();
    b.write_at(0x333, &data[1000..1100]).unwrap();
    d.write_at(0x7, &data[1100..]).unwrap();
    let segs = [
        (a.iova() + 0x10, 1000),
        (b.iova() + 0x333, 100),
        (d.iova() + 0x7, 1972),
    ];
    let list = c.alloc(PAGE_SIZE).unwrap();
    let plan = plan_sgl(&segs, &[(list.iova(), 256)]).unwrap();
    let mut cmd = rw_command(nvm::WRITE, NSID, 400, 6, false).unwrap();
    QueuePair::apply_sgl(c.arena(), &mut cmd, &plan).unwrap();
    let done = qp.execute(cmd, DataPtr::None, IO_TIMEOUT).unwrap();
    assert!(done.status.is_success(), "{}", done.status);
    let back = c.alloc(PAGE_SIZE).unwrap();
    qp.read_blocks(NSID, 400, 6, BS, &back).unwrap();
    assert_eq!(back.to_vec(0, 3072).unwrap(), data);

    // Read back through chained segments (2 descriptors per segment).
    for x in [&a, &b, &d] {
        x.fill(0).unwrap();
    }
    let l2 = c.alloc(PAGE_SIZE).unwrap();
    let plan = plan_sgl(&segs, &[(list.iova(), 2), (l2.iova(), 2)]).unwrap();
    let mut cmd = rw_command(nvm::READ, NSID, 400, 6, false).unwrap();
    QueuePair::apply_sgl(c.arena(), &mut cmd, &plan).unwrap();
    let done = qp.execute(cmd, DataPtr::None, IO_TIMEOUT).unwrap();
    assert!(done.status.is_success(), "{}", done.status);
    assert_eq!(a.to_vec(0x10, 1000).unwrap(), &data[..1000]);
    assert_eq!(b.to_vec(0x333, 100).unwrap(), &data[1000..1100]);
    assert_eq!(d.to_vec(0x7, 1972).unwrap(), &data[1100..]);
}

fn write_pattern(
    qp: &mut QueuePair,
    c: &Controller,
    lba: u64,
    nlb: u32,
    seed: u64,
) -> (DmaBuf, Vec<u8>) {
    let len = nlb as usize * BS as usize;
    let buf = c.alloc(len as u64).unwrap();
    let data = pattern(seed, len);
    buf.write_at(0, &data).unwrap();
    qp.write_blocks(NSID, lba, nlb, BS, &buf, false).unwrap();
    (buf, data)
}

#[test]
fn flush_write_zeroes_deallocate_compare_fua() {
    let (_t, c, mut qp) = setup();
    let (buf, data) = write_pattern(&mut qp, &c, 500, 8, 9);
    qp.flush(NSID).unwrap();

    // Compare: equal data succeeds, different data fails with Compare Failure.
    let ok = qp.compare(NSID, 500, 8, BS, &buf).unwrap();
    assert!(ok.status.is_success(), "{}", ok.status);
    buf.write_at(1000, &[data[1000] ^ 0xff]).unwrap();
    let bad = qp.compare(NSID, 500, 8, BS, &buf).unwrap();
    assert!(
        bad.status.is(sct::MEDIA, msc::COMPARE_FAILURE),
        "{}",
        bad.status
    );

    // Write zeroes: the range reads back as zeroes, neighbours untouched.
    qp.write_zeroes(NSID, 502, 2).unwrap();
    let back = c.alloc(4096).unwrap();
    qp.read_blocks(NSID, 500, 8, BS, &back).unwrap();
    let got = back.to_vec(0, 4096).unwrap();
    assert_eq!(&got[..1024], &data[..1024]);
    assert!(got[1024..2048].iter().all(|&b| b == 0));
    assert_eq!(&got[2048..], &data[2048..]);

    // Deallocate two ranges, then the namespace still serves I/O on them.
    qp.deallocate(NSID, &[(500, 2), (506, 2)]).unwrap();
    let (_b, data2) = write_pattern(&mut qp, &c, 500, 8, 10);
    qp.read_blocks(NSID, 500, 8, BS, &back).unwrap();
    assert_eq!(back.to_vec(0, 4096).unwrap(), data2);

    // FUA write.
    let fbuf = c.alloc(512).unwrap();
    fbuf.write_at(0, &[0xa5; 512]).unwrap();
    qp.write_blocks(NSID, 42, 1, BS, &fbuf, true).unwrap();
    qp.read_blocks(NSID, 42, 1, BS, &back).unwrap();
    assert_eq!(back.to_vec(0, 512).unwrap(), vec![0xa5; 512]);
}

#[test]
fn max_queues_deep_queues_and_wraparound() {
    let t = Target::start(TargetOptions {
        max_io_queues: 16,
        ..TargetOptions::default()
    });
    let mut c = t.connect();
    let (nsq, ncq) = c.set_num_queues(0xffff, 0xffff).unwrap();
    assert_eq!(
        (nsq, ncq),
        (16, 16),
        "granted queue counts must be the maximum"
    );
    let mut qps: Vec<QueuePair> = (1..=16u16)
        .map(|q| {
            c.create_io_queue_pair(q, if q % 2 == 0 { 256 } else { 8 }, None)
                .unwrap()
        })
        .collect();
    // Queue 17 does not exist.
    assert!(c.create_io_queue_pair(17, 8, None).is_err());

    // Every queue: fill to its depth repeatedly (wraps the rings many times), each I/O a
    // distinct LBA stamped with its own pattern, then verify everything.
    let per_queue = 300u64;
    for (qi, qp) in qps.iter_mut().enumerate() {
        let base = qi as u64 * per_queue;
        let mut inflight = std::collections::HashMap::new();
        let mut next = 0u64;
        let mut completed = 0u64;
        while completed < per_queue {
            while next < per_queue && qp.has_room() {
                let buf = c.alloc(512).unwrap();
                buf.write_at(0, &pattern(base + next, 512)).unwrap();
                let cmd = rw_command(nvm::WRITE, NSID, base + next, 1, false).unwrap();
                let cid = qp
                    .push(
                        cmd,
                        DataPtr::Prp {
                            iova: buf.iova(),
                            len: 512,
                        },
                    )
                    .unwrap();
                inflight.insert(cid, buf);
                next += 1;
            }
            qp.ring_sq().unwrap();
            let mut done = Vec::new();
            qp.poll(usize::MAX, |c| done.push(c)).unwrap();
            for d in done {
                assert!(d.status.is_success(), "{}", d.status);
                assert_eq!(d.sq_id, qp.qid());
                drop(inflight.remove(&d.cid).expect("known cid"));
                completed += 1;
            }
            std::thread::yield_now();
        }
        assert_eq!(qp.outstanding(), 0);
    }
    let back = c.alloc(512).unwrap();
    for qi in [0u64, 1, 7, 15] {
        for k in [0u64, 1, 150, 299] {
            let lba = qi * per_queue + k;
            qps[qi as usize]
                .read_blocks(NSID, lba, 1, BS, &back)
                .unwrap();
            assert_eq!(back.to_vec(0, 512).unwrap(), pattern(lba, 512), "lba {lba}");
        }
    }
    for qp in qps {
        c.delete_io_queue_pair(qp).unwrap();
    }
    let _ = Duration::from_secs(0);
}
