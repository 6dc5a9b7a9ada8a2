//! Submission/completion queue pairs: SQE writes, doorbells (mmapped page, trapped region
//! writes, or shadow doorbells with EventIdx), phase-bit polling, command ids.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, MmapRegion, VolatileMemory};

use crate::cmd::{Command, Completion};
use crate::dma::{DmaArena, DmaBuf, PAGE_SIZE};
use crate::error::{Error, TransportError};
use crate::prp::{plan_prp, plan_sgl, prp_entries, PrpPlan, SglPlan};
use crate::transport::{Transport, BAR0_REGION};

/// A transport shared between the admin path and trapped doorbells.
pub type SharedTransport = Arc<Mutex<Box<dyn Transport>>>;

/// Serves the target's DMA_READ/DMA_WRITE requests while a queue waits, when `needed`
/// says so (fd-less DMA windows over a connection without a twin socket): the target
/// blocks on those requests and would never complete the command otherwise.
///
/// It holds the transport weakly: a queue pair never keeps the connection open after its
/// [`crate::Controller`] is dropped.
#[derive(Clone)]
pub struct RequestServer {
    /// The transport that receives the requests.
    pub transport: std::sync::Weak<Mutex<Box<dyn Transport>>>,
    /// Set while serving is needed (checked with one relaxed load per wait step).
    pub needed: Arc<AtomicBool>,
}

impl RequestServer {
    /// Serves whatever is pending, if serving is needed.
    pub fn serve(&self) -> Result<usize, Error> {
        if !self.needed.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let Some(transport) = self.transport.upgrade() else {
            return Ok(0);
        };
        let mut t = transport.lock().map_err(|_| {
            Error::Transport(TransportError::Unsupported("transport lock poisoned"))
        })?;
        Ok(t.serve_requests()?)
    }
}

impl std::fmt::Debug for RequestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestServer")
            .field("needed", &self.needed)
            .finish_non_exhaustive()
    }
}

/// Offset of the first doorbell in BAR0.
pub const DOORBELL_BASE: u64 = 0x1000;

#[derive(Clone)]
enum DoorbellPage {
    Mapped {
        map: Arc<MmapRegion>,
        /// BAR0 offset of the first mapped byte.
        start: u64,
    },
    Trapped(SharedTransport),
}

/// Where doorbell writes go: the shared doorbell page or trapped REGION_WRITEs.
#[derive(Clone)]
pub struct Doorbells {
    page: DoorbellPage,
    stride: u64,
}

impl std::fmt::Debug for Doorbells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorbells")
            .field("mapped", &self.is_mapped())
            .field("stride", &self.stride)
            .finish()
    }
}

impl Doorbells {
    /// Doorbells through REGION_WRITE.
    pub fn trapped(transport: SharedTransport, dstrd: u8) -> Self {
        Self {
            page: DoorbellPage::Trapped(transport),
            stride: 4u64 << dstrd,
        }
    }

    /// Doorbells in an mmapped part of BAR0 starting at BAR0 offset `start`.
    pub fn mapped(map: Arc<MmapRegion>, start: u64, dstrd: u8) -> Self {
        Self {
            page: DoorbellPage::Mapped { map, start },
            stride: 4u64 << dstrd,
        }
    }

    /// Whether doorbell writes go to shared memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self.page, DoorbellPage::Mapped { .. })
    }

    /// Byte offset of a doorbell relative to [`DOORBELL_BASE`].
    pub fn index_offset(&self, qid: u16, cq: bool) -> u64 {
        (2 * u64::from(qid) + u64::from(cq)) * self.stride
    }

    /// Writes `value` to the SQ tail (`cq == false`) or CQ head doorbell of `qid`.
    pub fn write(&self, qid: u16, cq: bool, value: u32) -> Result<(), Error> {
        let off = DOORBELL_BASE + self.index_offset(qid, cq);
        match &self.page {
            DoorbellPage::Mapped { map, start } => {
                let rel = off
                    .checked_sub(*start)
                    .and_then(|r| usize::try_from(r).ok())
                    .ok_or_else(|| Error::InvalidArgument("doorbell outside the mapped area"))?;
                map.as_volatile_slice()
                    .store(value, rel, Ordering::Release)
                    .map_err(|_| Error::InvalidArgument("doorbell outside the mapped area"))
            }
            DoorbellPage::Trapped(t) => {
                let mut t = t.lock().map_err(|_| {
                    Error::Transport(TransportError::Unsupported("transport lock poisoned"))
                })?;
                t.region_write(BAR0_REGION, off, &value.to_le_bytes())?;
                Ok(())
            }
        }
    }
}

/// Shadow doorbell and EventIdx buffers (Doorbell Buffer Config).
#[derive(Clone, Debug)]
pub struct Shadow {
    /// IOVA of the shadow doorbell page.
    pub shadow: u64,
    /// IOVA of the EventIdx page.
    pub eventidx: u64,
}

/// Whether a doorbell write is needed given the EventIdx (NVMe spec / virtio rule).
pub fn need_event(event_idx: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
}

/// How a command's data buffer is described.
#[derive(Clone, Copy, Debug)]
pub enum DataPtr {
    /// No data.
    None,
    /// A contiguous buffer described with PRPs (lists built in the command's list page).
    Prp {
        /// First byte (dword aligned, may be inside a page).
        iova: u64,
        /// Bytes.
        len: u64,
    },
    /// A contiguous buffer described with one SGL data block descriptor.
    Sgl {
        /// First byte.
        iova: u64,
        /// Bytes.
        len: u32,
    },
}

/// One submission/completion queue pair (qid 0 is the admin pair).
pub struct QueuePair {
    qid: u16,
    depth: u16,
    sq: DmaBuf,
    cq: DmaBuf,
    sq_map: MmapRegion,
    cq_map: MmapRegion,
    sq_tail: u16,
    sq_head: u16,
    cq_head: u16,
    phase: bool,
    free_cids: Vec<u16>,
    busy: Vec<bool>,
    list_pages: Vec<Option<DmaBuf>>,
    arena: Arc<DmaArena>,
    db: Doorbells,
    shadow: Option<Shadow>,
    pending: VecDeque<Completion>,
    vector: Option<u16>,
    server: Option<RequestServer>,
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("qid", &self.qid)
            .field("depth", &self.depth)
            .field("sq_tail", &self.sq_tail)
            .field("cq_head", &self.cq_head)
            .finish_non_exhaustive()
    }
}

impl QueuePair {
    /// Allocates queue memory for a pair of `depth` entries.
    pub fn new(
        qid: u16,
        depth: u16,
        arena: &Arc<DmaArena>,
        db: Doorbells,
        vector: Option<u16>,
    ) -> Result<Self, Error> {
        if depth < 2 {
            return Err(Error::InvalidArgument("queue depth must be at least 2"));
        }
        let sq = arena.alloc(u64::from(depth) * 64)?;
        let cq = arena.alloc(u64::from(depth) * 16)?;
        let sq_map = arena.alias(sq.iova(), u64::from(depth) * 64)?;
        let cq_map = arena.alias(cq.iova(), u64::from(depth) * 16)?;
        // One command slot is lost to the full/empty rule.
        let usable = depth - 1;
        Ok(Self {
            qid,
            depth,
            sq,
            cq,
            sq_map,
            cq_map,
            sq_tail: 0,
            sq_head: 0,
            cq_head: 0,
            phase: true,
            free_cids: (0..usable).rev().collect(),
            busy: vec![false; usize::from(usable)],
            list_pages: (0..usable).map(|_| None).collect(),
            arena: arena.clone(),
            db,
            shadow: None,
            pending: VecDeque::new(),
            vector,
            server: None,
        })
    }

    /// Queue id.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Number of entries.
    pub fn depth(&self) -> u16 {
        self.depth
    }

    /// IOVA of the submission queue.
    pub fn sq_iova(&self) -> u64 {
        self.sq.iova()
    }

    /// IOVA of the completion queue.
    pub fn cq_iova(&self) -> u64 {
        self.cq.iova()
    }

    /// Interrupt vector, if the CQ was created with interrupts enabled.
    pub fn vector(&self) -> Option<u16> {
        self.vector
    }

    /// Commands submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        usize::from(self.depth - 1) - self.free_cids.len()
    }

    /// The DMA arena.
    pub fn arena(&self) -> &Arc<DmaArena> {
        &self.arena
    }

    /// Current SQ tail (next slot to fill).
    pub fn sq_tail(&self) -> u16 {
        self.sq_tail
    }

    /// Doorbells of this pair.
    pub fn doorbells(&self) -> &Doorbells {
        &self.db
    }

    /// Serve the target's DMA requests while this pair waits or polls (see
    /// [`RequestServer`]).
    pub fn set_request_server(&mut self, server: Option<RequestServer>) {
        self.server = server;
    }

    /// Switches this pair to shadow doorbells.
    pub fn set_shadow(&mut self, shadow: Option<Shadow>) {
        self.shadow = shadow;
    }

    /// Resets ring state after the controller reset its queues (admin queue re-init).
    pub fn reset_state(&mut self) -> Result<(), Error> {
        self.sq_tail = 0;
        self.sq_head = 0;
        self.cq_head = 0;
        self.phase = true;
        let usable = self.depth - 1;
        self.free_cids = (0..usable).rev().collect();
        self.busy = vec![false; usize::from(usable)];
        self.pending.clear();
        self.shadow = None;
        self.cq.fill(0)?;
        Ok(())
    }

    fn ring(&self, cq: bool, value: u16) -> Result<(), Error> {
        if let Some(s) = &self.shadow {
            let off = self.db.index_offset(self.qid, cq);
            let old = self.arena.load_u32(s.shadow + off)? as u16;
            self.arena.store_u32(s.shadow + off, u32::from(value))?;
            std::sync::atomic::fence(Ordering::SeqCst);
            let ev = self.arena.load_u32(s.eventidx + off)? as u16;
            if !need_event(ev, value, old) {
                return Ok(());
            }
        }
        self.db.write(self.qid, cq, u32::from(value))
    }

    /// Writes `value` straight into this queue's SQ tail doorbell (bypassing the ring state;
    /// for tests of invalid doorbell writes).
    pub fn ring_raw_sq(&self, value: u32) -> Result<(), Error> {
        self.db.write(self.qid, false, value)
    }

    /// Writes `value` straight into this queue's CQ head doorbell (for tests).
    pub fn ring_raw_cq(&self, value: u32) -> Result<(), Error> {
        self.db.write(self.qid, true, value)
    }

    /// Whether another command can be submitted.
    pub fn has_room(&self) -> bool {
        !self.free_cids.is_empty() && (self.sq_tail + 1) % self.depth != self.sq_head
    }

    fn list_page(&mut self, cid: u16) -> Result<u64, Error> {
        let slot = self
            .list_pages
            .get_mut(usize::from(cid))
            .ok_or_else(|| Error::InvalidArgument("command id"))?;
        if slot.is_none() {
            *slot = Some(self.arena.alloc(PAGE_SIZE)?);
        }
        slot.as_ref()
            .map(|b| b.iova())
            .ok_or_else(|| Error::InvalidArgument("command id"))
    }

    /// Writes the lists of a PRP plan and sets the command's data pointer.
    pub fn apply_prp(arena: &DmaArena, cmd: &mut Command, plan: &PrpPlan) -> Result<(), Error> {
        for l in &plan.lists {
            for (i, e) in l.entries.iter().enumerate() {
                arena.write_u64(l.iova + 8 * i as u64, *e)?;
            }
        }
        cmd.set_psdt(0);
        cmd.set_prp(plan.prp1, plan.prp2);
        Ok(())
    }

    /// Writes the segments of an SGL plan and sets the command's data pointer.
    pub fn apply_sgl(arena: &DmaArena, cmd: &mut Command, plan: &SglPlan) -> Result<(), Error> {
        for l in &plan.lists {
            for (i, e) in l.entries.iter().enumerate() {
                arena.write(l.iova + 16 * i as u64, &e.to_bytes())?;
            }
        }
        cmd.set_sgl(plan.sgl1);
        Ok(())
    }

    /// Queues `cmd` (after filling its CID and data pointer) without ringing the doorbell.
    pub fn push(&mut self, mut cmd: Command, data: DataPtr) -> Result<u16, Error> {
        if (self.sq_tail + 1) % self.depth == self.sq_head {
            return Err(Error::QueueFull(self.qid));
        }
        let cid = self
            .free_cids
            .pop()
            .ok_or_else(|| Error::QueueFull(self.qid))?;
        let r = self.fill(&mut cmd, cid, data);
        if let Err(e) = r {
            self.free_cids.push(cid);
            return Err(e);
        }
        cmd.set_cid(cid);
        let slot = usize::from(self.sq_tail) * 64;
        if self
            .sq_map
            .as_volatile_slice()
            .write_slice(&cmd.to_bytes(), slot)
            .is_err()
        {
            self.free_cids.push(cid);
            return Err(Error::InvalidArgument("SQ slot outside the ring"));
        }
        if let Some(b) = self.busy.get_mut(usize::from(cid)) {
            *b = true;
        }
        self.sq_tail = (self.sq_tail + 1) % self.depth;
        Ok(cid)
    }

    fn fill(&mut self, cmd: &mut Command, cid: u16, data: DataPtr) -> Result<(), Error> {
        match data {
            DataPtr::None => Ok(()),
            DataPtr::Prp { iova, len } => {
                // Fast path without allocation: one contiguous buffer, at most one list page.
                if len == 0 || iova % 4 != 0 {
                    return Err(Error::InvalidArgument("PRP buffer must be dword aligned"));
                }
                let end = iova
                    .checked_add(len)
                    .ok_or_else(|| Error::InvalidArgument("PRP buffer wraps"))?;
                let first_page_end = (iova & !(PAGE_SIZE - 1)) + PAGE_SIZE;
                cmd.set_psdt(0);
                if end <= first_page_end {
                    cmd.set_prp(iova, 0);
                } else if end <= first_page_end + PAGE_SIZE {
                    cmd.set_prp(iova, first_page_end);
                } else {
                    let rest = (end - first_page_end).div_ceil(PAGE_SIZE);
                    if rest > PAGE_SIZE / 8 {
                        // Needs chained lists: take the general path.
                        let entries = prp_entries(&[(iova, len)], PAGE_SIZE)?;
                        let plan = plan_prp(&entries, &[self.list_page(cid)?], PAGE_SIZE)?;
                        return Self::apply_prp(&self.arena, cmd, &plan);
                    }
                    let list = self.list_page(cid)?;
                    let mut page = [0u8; PAGE_SIZE as usize];
                    let n = rest as usize;
                    for (i, chunk) in page.chunks_exact_mut(8).take(n).enumerate() {
                        chunk.copy_from_slice(
                            &(first_page_end + i as u64 * PAGE_SIZE).to_le_bytes(),
                        );
                    }
                    self.arena.write(list, page.get(..n * 8).unwrap_or(&[]))?;
                    cmd.set_prp(iova, list);
                }
                Ok(())
            }
            DataPtr::Sgl { iova, len } => {
                let plan = plan_sgl(&[(iova, len)], &[])?;
                Self::apply_sgl(&self.arena, cmd, &plan)
            }
        }
    }

    /// Rings the SQ tail doorbell with the current tail.
    pub fn ring_sq(&self) -> Result<(), Error> {
        self.ring(false, self.sq_tail)
    }

    /// Queues `cmd` and rings the doorbell; returns its CID.
    pub fn submit(&mut self, cmd: Command, data: DataPtr) -> Result<u16, Error> {
        let cid = self.push(cmd, data)?;
        self.ring_sq()?;
        Ok(cid)
    }

    /// Reaps up to `max` completions, calling `f` for each, then rings the CQ head doorbell.
    pub fn poll(&mut self, max: usize, mut f: impl FnMut(Completion)) -> Result<usize, Error> {
        if let Some(s) = &self.server {
            s.serve()?;
        }
        let mut n = 0;
        let mut reaped = false;
        while n < max {
            if let Some(c) = self.pending.pop_front() {
                f(c);
                n += 1;
                continue;
            }
            match self.reap_one()? {
                Some(c) => {
                    reaped = true;
                    f(c);
                    n += 1;
                }
                None => break,
            }
        }
        if reaped {
            self.ring(true, self.cq_head)?;
        }
        Ok(n)
    }

    fn reap_one(&mut self) -> Result<Option<Completion>, Error> {
        let at = usize::from(self.cq_head) * 16;
        let ring = self.cq_map.as_volatile_slice();
        let bad = |_| Error::InvalidArgument("CQ slot outside the ring");
        // The status dword is written last by the controller: acquire it first.
        let dw3: u32 = ring.load(at + 12, Ordering::Acquire).map_err(bad)?;
        let phase = (dw3 >> 16) & 1 != 0;
        if phase != self.phase {
            return Ok(None);
        }
        let mut raw = [0u8; 16];
        for (i, chunk) in raw.chunks_exact_mut(4).enumerate().take(3) {
            let v: u32 = ring.load(at + 4 * i, Ordering::Relaxed).map_err(bad)?;
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        if let Some(t) = raw.get_mut(12..16) {
            t.copy_from_slice(&dw3.to_le_bytes());
        }
        let c = Completion::from_bytes(&raw);
        self.cq_head += 1;
        if self.cq_head == self.depth {
            self.cq_head = 0;
            self.phase = !self.phase;
        }
        if c.sq_head < self.depth {
            self.sq_head = c.sq_head;
        } else {
            tracing::debug!(
                qid = self.qid,
                sq_head = c.sq_head,
                "completion with bad SQ head"
            );
        }
        match self.busy.get_mut(usize::from(c.cid)) {
            Some(b) if *b => {
                *b = false;
                self.free_cids.push(c.cid);
            }
            _ => tracing::debug!(
                qid = self.qid,
                cid = c.cid,
                "completion for unknown command id"
            ),
        }
        Ok(Some(c))
    }

    /// Whether a completion is waiting (a peek at the phase bit of the CQ head).
    pub fn completion_ready(&self) -> bool {
        if !self.pending.is_empty() {
            return true;
        }
        let at = usize::from(self.cq_head) * 16 + 12;
        self.cq_map
            .as_volatile_slice()
            .load::<u32>(at, Ordering::Acquire)
            .is_ok_and(|dw3| ((dw3 >> 16) & 1 != 0) == self.phase)
    }

    /// Waits for the completion of `cid`; other completions stay queued for [`Self::poll`].
    pub fn wait(&mut self, cid: u16, timeout: Duration) -> Result<Completion, Error> {
        if let Some(pos) = self.pending.iter().position(|c| c.cid == cid) {
            if let Some(c) = self.pending.remove(pos) {
                return Ok(c);
            }
        }
        let deadline = Instant::now() + timeout;
        let mut spins = 0u32;
        loop {
            let mut reaped = false;
            while let Some(c) = self.reap_one()? {
                reaped = true;
                if c.cid == cid {
                    self.ring(true, self.cq_head)?;
                    return Ok(c);
                }
                self.pending.push_back(c);
            }
            if reaped {
                self.ring(true, self.cq_head)?;
            } else if let Some(s) = &self.server {
                if s.serve()? > 0 {
                    continue;
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout("command completion"));
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else if spins < 256 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Submits `cmd` and waits for its completion.
    pub fn execute(
        &mut self,
        cmd: Command,
        data: DataPtr,
        timeout: Duration,
    ) -> Result<Completion, Error> {
        let cid = self.submit(cmd, data)?;
        self.wait(cid, timeout)
    }

    /// Takes completions that arrived while waiting for another command.
    pub fn take_pending(&mut self) -> Vec<Completion> {
        self.pending.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_pair(depth: u16) -> QueuePair {
        let arena = DmaArena::new(0x100_0000, 4 << 20).unwrap();
        let map = Arc::new(MmapRegion::new(0x1000).unwrap());
        let db = Doorbells::mapped(map, DOORBELL_BASE, 0);
        QueuePair::new(1, depth, &arena, db, None).unwrap()
    }

    #[test]
    fn fast_prp_path_matches_the_planner() {
        let mut qp = test_pair(8);
        let buf = qp.arena().alloc(200 * PAGE_SIZE).unwrap();
        for &(off, len) in &[
            (0u64, 512u64),
            (0x600, 0xa00),
            (0x600, 0xa04),
            (0, 8192),
            (0x200, 8192),
            (0, 3 * 4096),
            (0x800, 32 * 4096),
            (4, 128 * 1024 + 4),
            (0, 190 * 4096),
        ] {
            let iova = buf.iova() + off;
            let mut cmd = Command::new(crate::cmd::nvm::READ);
            let cid = qp.push(cmd, DataPtr::Prp { iova, len }).unwrap();
            let mut raw = [0u8; 64];
            qp.sq
                .read_at(
                    u64::from(qp.sq_tail.wrapping_sub(1) % qp.depth) * 64,
                    &mut raw,
                )
                .unwrap();
            cmd = Command::from_bytes(&raw);
            let entries = prp_entries(&[(iova, len)], PAGE_SIZE).unwrap();
            let list = qp.list_page(cid).unwrap();
            let plan = plan_prp(&entries, &[list], PAGE_SIZE).unwrap();
            assert_eq!(
                (cmd.prp1(), cmd.prp2()),
                (plan.prp1, plan.prp2),
                "{off:#x}+{len:#x}"
            );
            for l in &plan.lists {
                for (i, e) in l.entries.iter().enumerate() {
                    let mut b = [0u8; 8];
                    qp.arena().read(l.iova + 8 * i as u64, &mut b).unwrap();
                    assert_eq!(u64::from_le_bytes(b), *e, "{off:#x}+{len:#x} entry {i}");
                }
            }
            // Complete it by hand so the slot is reusable.
            qp.busy[usize::from(cid)] = false;
            qp.free_cids.push(cid);
            qp.sq_head = qp.sq_tail;
        }
        assert!(qp
            .push(
                Command::new(0),
                DataPtr::Prp {
                    iova: buf.iova() + 2,
                    len: 8
                }
            )
            .is_err());
    }

    #[test]
    fn queue_full_is_reported_and_unknown_cids_are_ignored() {
        let mut qp = test_pair(4);
        for _ in 0..3 {
            qp.push(Command::new(0), DataPtr::None).unwrap();
        }
        assert!(!qp.has_room());
        assert!(matches!(
            qp.push(Command::new(0), DataPtr::None),
            Err(Error::QueueFull(1))
        ));
        assert_eq!(qp.outstanding(), 3);
        // A forged completion for a never-issued cid must not grow the free list.
        let mut cqe = [0u8; 16];
        cqe[12..14].copy_from_slice(&77u16.to_le_bytes());
        cqe[14..16].copy_from_slice(&1u16.to_le_bytes());
        qp.arena().write(qp.cq_iova(), &cqe).unwrap();
        let mut seen = Vec::new();
        qp.poll(usize::MAX, |c| seen.push(c.cid)).unwrap();
        assert_eq!(seen, vec![77]);
        assert_eq!(qp.outstanding(), 3);
    }

    #[test]
    fn need_event_matches_spec_examples() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(5, 3, 2));
        assert!(need_event(2, 3, 2));
        assert!(need_event(0xffff, 1, 0xfffe));
        assert!(!need_event(10, 10, 10));
    }
}
