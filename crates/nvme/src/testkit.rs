//! An in-process fake NVMe host: guest memory is an anonymous `GuestMemoryMmap`, and
//! registers/doorbells are driven directly on a [`Controller`] (single-threaded, calling
//! `poll`) or through a [`ControllerHandle`] (poll thread running elsewhere).
//!
//! Used by this crate's tests, benchmark and fuzz targets; handy for other crates' tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use crate::ctrl::{Controller, Shared};
use crate::poller::ControllerHandle;
use crate::spec::{admin, reg, Cqe, Sqe, Status};
use crate::GuestMem;

/// What the fake host talks to.
pub trait Target {
    /// BAR0 write.
    fn write_bar0(&mut self, off: u64, data: &[u8]);
    /// The register mirrors (BAR0 reads are served from them).
    fn regs(&self) -> &Shared;
    /// BAR0 read (a dword from the register mirrors; 0 for refused offsets).
    fn read_bar0(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        let _ = crate::ctrl::bar0_read(self.regs(), off, &mut b);
        u32::from_le_bytes(b)
    }
    /// Install the DMA snapshot.
    fn set_mem(&mut self, mem: Arc<GuestMem>);
    /// Let the controller make progress.
    fn step(&mut self);
}

impl Target for Controller {
    fn write_bar0(&mut self, off: u64, data: &[u8]) {
        let _ = self.bar0_write(off, data);
    }
    fn regs(&self) -> &Shared {
        self.shared()
    }
    fn set_mem(&mut self, mem: Arc<GuestMem>) {
        self.set_memory(Some(mem));
    }
    fn step(&mut self) {
        self.poll();
    }
}

impl Target for ControllerHandle {
    fn write_bar0(&mut self, off: u64, data: &[u8]) {
        let _ = self.bar0_write(off, data);
    }
    fn regs(&self) -> &Shared {
        self.shared()
    }
    fn set_mem(&mut self, mem: Arc<GuestMem>) {
        let _ = self.set_memory(Some(mem));
    }
    fn step(&mut self) {
        std::thread::yield_now();
    }
}

/// Host-side view of one queue pair.
#[derive(Clone, Debug)]
pub struct HostQueue {
    /// Queue id.
    pub qid: u16,
    /// SQ guest address.
    pub sq: u64,
    /// CQ guest address.
    pub cq: u64,
    /// SQ entries.
    pub size: u16,
    /// CQ entries.
    pub cq_size: u16,
    /// Next SQ slot to fill.
    pub sq_tail: u16,
    /// Next CQ slot to consume.
    pub cq_head: u16,
    /// Expected phase.
    pub phase: bool,
    /// CQ id this SQ completes into.
    pub cqid: u16,
}

/// The fake host.
pub struct FakeHost {
    /// Guest memory.
    pub mem: Arc<GuestMem>,
    next: u64,
    end: u64,
    /// Queue pairs by qid (index 0 = admin).
    pub queues: Vec<Option<HostQueue>>,
    next_cid: u16,
    /// Poll budget for `wait`.
    pub timeout: Duration,
}

impl std::fmt::Debug for FakeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHost")
            .field("next", &self.next)
            .finish()
    }
}

/// Build an SQE.
pub fn sqe(opcode: u8, nsid: u32) -> Sqe {
    let mut s = Sqe::default();
    s.dw[0] = u32::from(opcode);
    s.dw[1] = nsid;
    s
}

/// Set PRP1/PRP2 of an SQE.
pub fn with_prps(mut s: Sqe, prp1: u64, prp2: u64) -> Sqe {
    s.dw[6] = prp1 as u32;
    s.dw[7] = (prp1 >> 32) as u32;
    s.dw[8] = prp2 as u32;
    s.dw[9] = (prp2 >> 32) as u32;
    s
}

/// A Read/Write/Compare SQE for `nlb` blocks (1-based) at `slba`.
pub fn rw(opcode: u8, nsid: u32, slba: u64, nlb: u32, prp1: u64, prp2: u64) -> Sqe {
    let mut s = with_prps(sqe(opcode, nsid), prp1, prp2);
    s.dw[10] = slba as u32;
    s.dw[11] = (slba >> 32) as u32;
    s.dw[12] = nlb.saturating_sub(1) & 0xffff;
    s
}

impl FakeHost {
    /// A host with `size` bytes of guest memory at GPA 0.
    pub fn new(size: usize) -> FakeHost {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), size)])
            .map(Arc::new)
            .unwrap_or_else(|_| {
                Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap_or_default())
            });
        FakeHost::with_memory(mem, 0x1_0000, size as u64)
    }

    /// A host over existing memory, allocating from `[start, end)`.
    pub fn with_memory(mem: Arc<GuestMem>, start: u64, end: u64) -> FakeHost {
        FakeHost {
            mem,
            next: start,
            end,
            queues: vec![None; 512],
            next_cid: 0,
            timeout: Duration::from_secs(5),
        }
    }

    /// Bump-allocate `bytes` (4 KiB aligned). Returns 0 when exhausted.
    pub fn alloc(&mut self, bytes: u64) -> u64 {
        let a = self.next;
        let n = bytes.div_ceil(4096) * 4096;
        if a + n > self.end {
            return 0;
        }
        self.next += n;
        let zeros = vec![0u8; n as usize];
        let _ = self.mem.write_slice(&zeros, GuestAddress(a));
        a
    }

    /// Write bytes to guest memory.
    pub fn write(&self, gpa: u64, data: &[u8]) {
        let _ = self.mem.write_slice(data, GuestAddress(gpa));
    }

    /// Read bytes from guest memory.
    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let _ = self.mem.read_slice(&mut v, GuestAddress(gpa));
        v
    }

    /// Install memory, program the admin queues and enable; returns CSTS.
    pub fn enable(&mut self, t: &mut dyn Target, aq_size: u16) -> u32 {
        t.set_mem(Arc::clone(&self.mem));
        let sq = self.alloc(u64::from(aq_size) * 64);
        let cq = self.alloc(u64::from(aq_size) * 16);
        let aqa = u32::from(aq_size - 1) | u32::from(aq_size - 1) << 16;
        t.write_bar0(reg::AQA, &aqa.to_le_bytes());
        t.write_bar0(reg::ASQ, &sq.to_le_bytes());
        t.write_bar0(reg::ACQ, &cq.to_le_bytes());
        let cc: u32 = 1 | 6 << 16 | 4 << 20;
        t.write_bar0(reg::CC, &cc.to_le_bytes());
        t.step();
        if let Some(q) = self.queues.get_mut(0) {
            *q = Some(HostQueue {
                qid: 0,
                sq,
                cq,
                size: aq_size,
                cq_size: aq_size,
                sq_tail: 0,
                cq_head: 0,
                phase: true,
                cqid: 0,
            });
        }
        t.read_bar0(reg::CSTS)
    }

    /// Submit `s` on `qid` (CID assigned unless `keep_cid`); returns the CID.
    pub fn submit(&mut self, t: &mut dyn Target, qid: u16, mut s: Sqe, keep_cid: bool) -> u16 {
        let cid = if keep_cid {
            s.cid()
        } else {
            self.next_cid = self.next_cid.wrapping_add(1);
            s.dw[0] = (s.dw[0] & 0xffff) | u32::from(self.next_cid) << 16;
            self.next_cid
        };
        let Some(q) = self
            .queues
            .get_mut(usize::from(qid))
            .and_then(Option::as_mut)
        else {
            return cid;
        };
        let _ = self.mem.write_slice(
            &s.to_bytes(),
            GuestAddress(q.sq + u64::from(q.sq_tail) * 64),
        );
        q.sq_tail = (q.sq_tail + 1) % q.size;
        let tail = q.sq_tail;
        t.write_bar0(
            reg::DOORBELL_BASE + u64::from(qid) * 8,
            &u32::from(tail).to_le_bytes(),
        );
        cid
    }

    /// Take the next CQE from CQ `cqid` if one is posted; rings the CQ head doorbell.
    pub fn try_reap(&mut self, t: &mut dyn Target, cqid: u16) -> Option<Cqe> {
        let q = self
            .queues
            .iter_mut()
            .flatten()
            .find(|q| q.cqid == cqid && (q.qid == cqid || cqid != 0))?;
        let at = q.cq + u64::from(q.cq_head) * 16;
        let mut raw = [0u8; 16];
        self.mem.read_slice(&mut raw, GuestAddress(at)).ok()?;
        let dw = |i: usize| {
            u32::from_le_bytes(
                raw.get(i * 4..i * 4 + 4)
                    .and_then(|c| c.try_into().ok())
                    .unwrap_or([0; 4]),
            )
        };
        let dw3 = dw(3);
        if (dw3 >> 16) & 1 != u32::from(q.phase) {
            return None;
        }
        let cqe = Cqe {
            dw0: dw(0),
            dw1: dw(1),
            sqhd: dw(2) as u16,
            sqid: (dw(2) >> 16) as u16,
            cid: dw3 as u16,
            status: Status::from_cqe_dw3(dw3),
        };
        let size = q.cq_size;
        let (mut head, mut phase) = (q.cq_head + 1, q.phase);
        if head == size {
            head = 0;
            phase = !phase;
        }
        // Every host queue sharing this CQ tracks the same head/phase.
        for h in self.queues.iter_mut().flatten().filter(|h| h.cqid == cqid) {
            h.cq_head = head;
            h.phase = phase;
        }
        t.write_bar0(
            reg::DOORBELL_BASE + u64::from(cqid) * 8 + 4,
            &u32::from(head).to_le_bytes(),
        );
        Some(cqe)
    }

    /// Poll until a CQE arrives on `cqid` (None on timeout).
    pub fn wait(&mut self, t: &mut dyn Target, cqid: u16) -> Option<Cqe> {
        let start = Instant::now();
        loop {
            t.step();
            if let Some(c) = self.try_reap(t, cqid) {
                return Some(c);
            }
            if start.elapsed() > self.timeout {
                return None;
            }
        }
    }

    /// Submit an admin command and wait for its completion.
    pub fn admin(&mut self, t: &mut dyn Target, s: Sqe) -> Option<Cqe> {
        self.submit(t, 0, s, false);
        self.wait(t, 0)
    }

    /// Create an I/O CQ `qid` of `size` entries with interrupt vector `iv`.
    pub fn create_cq(&mut self, t: &mut dyn Target, qid: u16, size: u16, iv: u16) -> Option<Cqe> {
        let cq = self.alloc(u64::from(size) * 16);
        let mut s = with_prps(sqe(admin::CREATE_CQ, 0), cq, 0);
        s.dw[10] = u32::from(qid) | u32::from(size - 1) << 16;
        s.dw[11] = 1 | 2 | u32::from(iv) << 16;
        let c = self.admin(t, s)?;
        if c.status.is_success() {
            if let Some(q) = self.queues.get_mut(usize::from(qid)) {
                *q = Some(HostQueue {
                    qid,
                    sq: 0,
                    cq,
                    size,
                    cq_size: size,
                    sq_tail: 0,
                    cq_head: 0,
                    phase: true,
                    cqid: qid,
                });
            }
        }
        Some(c)
    }

    /// Create an I/O SQ `qid` of `size` entries completing into `cqid` (which must have
    /// been created with [`create_cq`](Self::create_cq)).
    pub fn create_sq(&mut self, t: &mut dyn Target, qid: u16, size: u16, cqid: u16) -> Option<Cqe> {
        let sq = self.alloc(u64::from(size) * 64);
        let mut s = with_prps(sqe(admin::CREATE_SQ, 0), sq, 0);
        s.dw[10] = u32::from(qid) | u32::from(size - 1) << 16;
        s.dw[11] = 1 | u32::from(cqid) << 16;
        let c = self.admin(t, s)?;
        if c.status.is_success() {
            let cqinfo = self
                .queues
                .iter()
                .flatten()
                .find(|o| o.cqid == cqid)
                .map(|o| (o.cq, o.cq_size, o.cq_head, o.phase));
            if let Some((cq, cq_size, head, phase)) = cqinfo {
                if let Some(q) = self.queues.get_mut(usize::from(qid)) {
                    *q = Some(HostQueue {
                        qid,
                        sq,
                        cq,
                        size,
                        cq_size,
                        sq_tail: 0,
                        cq_head: head,
                        phase,
                        cqid,
                    });
                }
            }
        }
        Some(c)
    }

    /// Create I/O queue pair `qid` (CQ and SQ share the id) of `size` entries.
    pub fn create_pair(&mut self, t: &mut dyn Target, qid: u16, size: u16) -> bool {
        let ok = |c: Option<Cqe>| c.is_some_and(|c| c.status.is_success());
        ok(self.create_cq(t, qid, size, qid)) && ok(self.create_sq(t, qid, size, qid))
    }

    /// Submit an I/O command on `qid` and wait for its completion.
    pub fn io(&mut self, t: &mut dyn Target, qid: u16, s: Sqe) -> Option<Cqe> {
        let cqid = self
            .queues
            .get(usize::from(qid))
            .and_then(Option::as_ref)
            .map_or(qid, |q| q.cqid);
        self.submit(t, qid, s, false);
        self.wait(t, cqid)
    }
}
