//! Admin command set: queue management, Identify, features, log pages, AER, Abort,
//! Keep Alive, Doorbell Buffer Config. Admin data moves with PRPs only, copied through
//! `vm-memory` volatile accessors, or DMA_READ/DMA_WRITE messages for fd-less windows
//! (admin data is tiny; only I/O is zero-copy).

use tracing::debug;

use crate::bounce::{gather, scatter};
use crate::ctrl::{Controller, ShadowDb, AER_LIMIT, ERROR_LOG_ENTRIES, MSIX_VECTORS};
use crate::prp::{walk_prp, Seg, PAGE_SIZE};
use crate::spec::{admin, feat, io, log, Sqe, Status};
use crate::sys::Ring;
use sluice_bdev::IoOp;

/// Result of an admin command: `Ok(Some(dw0))` completes now, `Ok(None)` completes later.
type AdminResult = Result<Option<u32>, Status>;

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    if let Some(d) = buf.get_mut(off..off + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}

fn put_str(buf: &mut [u8], off: usize, len: usize, s: &str) {
    if let Some(d) = buf.get_mut(off..off + len) {
        d.fill(b' ');
        for (o, c) in d
            .iter_mut()
            .zip(s.bytes().filter(|c| c.is_ascii_graphic() || *c == b' '))
        {
            *o = c;
        }
    }
}

fn put_u128(buf: &mut [u8], off: usize, v: u64) {
    put(buf, off, &u128::from(v).to_le_bytes());
}

impl Controller {
    pub(crate) fn admin_command(&mut self, sqe: &Sqe) {
        let cid = sqe.cid();
        match self.admin_dispatch(sqe) {
            Ok(Some(dw0)) => self.complete(0, cid, Status::SUCCESS, dw0),
            Ok(None) => {
                self.unreserve(0);
                self.deliver_events();
            }
            Err(st) => {
                debug!(opcode = sqe.opcode(), cid, status = %st, "nvme: admin command failed");
                self.complete(0, cid, st, 0);
            }
        }
    }

    fn admin_dispatch(&mut self, sqe: &Sqe) -> AdminResult {
        if sqe.fuse() != 0 {
            return Err(Status::INVALID_FIELD);
        }
        match sqe.opcode() {
            admin::CREATE_CQ => self.admin_create_cq(sqe),
            admin::CREATE_SQ => self.admin_create_sq(sqe),
            admin::DELETE_SQ => self.admin_delete_sq(sqe),
            admin::DELETE_CQ => self.admin_delete_cq(sqe),
            admin::IDENTIFY => self.admin_identify(sqe),
            admin::GET_LOG_PAGE => self.admin_get_log_page(sqe),
            admin::SET_FEATURES => self.admin_set_features(sqe),
            admin::GET_FEATURES => self.admin_get_features(sqe),
            admin::ASYNC_EVENT_REQUEST => {
                if self.aer.cids.len() >= AER_LIMIT {
                    return Err(Status::AER_LIMIT_EXCEEDED);
                }
                self.aer.cids.push(sqe.cid());
                Ok(None)
            }
            admin::ABORT => Ok(Some(1)), // bit 0 set: command not aborted
            admin::KEEP_ALIVE => {
                self.touch_keep_alive();
                Ok(Some(0))
            }
            admin::DOORBELL_BUFFER_CONFIG if self.cfg.dbbuf_enabled() => self.admin_dbbuf(sqe),
            _ => Err(Status::INVALID_OPCODE),
        }
    }

    // ----- data helpers -----------------------------------------------------------------

    fn admin_segs(&self, sqe: &Sqe, len: usize) -> Result<Vec<Seg>, Status> {
        if sqe.psdt() != 0 {
            return Err(Status::INVALID_FIELD);
        }
        let mem = self.mem.as_ref().ok_or(Status::DATA_TRANSFER_ERROR)?;
        let mut segs = Vec::new();
        walk_prp(mem, sqe.prp1(), sqe.prp2(), len as u64, &mut segs)?;
        Ok(segs)
    }

    fn write_data(&self, sqe: &Sqe, data: &[u8]) -> Result<(), Status> {
        let segs = self.admin_segs(sqe, data.len())?;
        let mem = self.mem.as_ref().ok_or(Status::DATA_TRANSFER_ERROR)?;
        scatter(mem, self.msg_dma.as_deref(), &segs, data)
    }

    fn read_data(&self, sqe: &Sqe, len: usize) -> Result<Vec<u8>, Status> {
        let segs = self.admin_segs(sqe, len)?;
        let mem = self.mem.as_ref().ok_or(Status::DATA_TRANSFER_ERROR)?;
        let mut v = vec![0u8; len];
        gather(mem, self.msg_dma.as_deref(), &segs, &mut v)?;
        Ok(v)
    }

    // ----- queue management ---------------------------------------------------------------

    fn io_qid_limit(&self, sq: bool) -> u16 {
        match self.feat.num_queues {
            Some((nsqa, ncqa)) => (if sq { nsqa } else { ncqa }).saturating_add(1),
            None => self.cfg.max_io_queues,
        }
    }

    fn admin_create_cq(&mut self, sqe: &Sqe) -> AdminResult {
        let qid = (sqe.dw[10] & 0xffff) as u16;
        let qsize = (sqe.dw[10] >> 16) + 1;
        let pc = sqe.dw[11] & 1 != 0;
        let ien = sqe.dw[11] & 2 != 0;
        let iv = (sqe.dw[11] >> 16) as u16;
        if qid == 0 || qid > self.io_qid_limit(false) {
            return Err(Status::INVALID_QID);
        }
        if self.cqs.get(usize::from(qid)).is_none_or(Option::is_some) {
            return Err(Status::INVALID_QID);
        }
        if qsize < 2 || qsize > self.cfg.max_queue_depth {
            return Err(Status::INVALID_QUEUE_SIZE);
        }
        if !pc {
            return Err(Status::INVALID_FIELD);
        }
        if iv >= MSIX_VECTORS {
            return Err(Status::INVALID_INTERRUPT_VECTOR);
        }
        if (self.shared.cc() >> 20) & 0xf != 4 {
            return Err(Status::INVALID_FIELD);
        }
        let gpa = sqe.prp1();
        if gpa % PAGE_SIZE != 0 {
            return Err(Status::INVALID_FIELD);
        }
        self.create_cq(qid, qsize as u16, gpa, ien, iv)?;
        Ok(Some(0))
    }

    fn admin_create_sq(&mut self, sqe: &Sqe) -> AdminResult {
        let qid = (sqe.dw[10] & 0xffff) as u16;
        let qsize = (sqe.dw[10] >> 16) + 1;
        let pc = sqe.dw[11] & 1 != 0;
        let cqid = (sqe.dw[11] >> 16) as u16;
        if qid == 0 || qid > self.io_qid_limit(true) {
            return Err(Status::INVALID_QID);
        }
        if self.sqs.get(usize::from(qid)).is_none_or(Option::is_some) {
            return Err(Status::INVALID_QID);
        }
        if qsize < 2 || qsize > self.cfg.max_queue_depth {
            return Err(Status::INVALID_QUEUE_SIZE);
        }
        if !pc {
            return Err(Status::INVALID_FIELD);
        }
        if cqid == 0 || usize::from(cqid) >= self.cqs.len() {
            return Err(Status::INVALID_QID);
        }
        if self.cqs.get(usize::from(cqid)).is_none_or(Option::is_none) {
            return Err(Status::CQ_INVALID);
        }
        if (self.shared.cc() >> 16) & 0xf != 6 {
            return Err(Status::INVALID_FIELD);
        }
        let gpa = sqe.prp1();
        if gpa % PAGE_SIZE != 0 {
            return Err(Status::INVALID_FIELD);
        }
        self.create_sq(qid, qsize as u16, gpa, cqid)?;
        Ok(Some(0))
    }

    fn admin_delete_sq(&mut self, sqe: &Sqe) -> AdminResult {
        let qid = (sqe.dw[10] & 0xffff) as u16;
        if qid == 0 {
            return Err(Status::INVALID_QID);
        }
        let sq = self
            .sqs
            .get_mut(usize::from(qid))
            .and_then(Option::as_mut)
            .ok_or(Status::INVALID_QID)?;
        if sq.deleting.is_some() {
            return Err(Status::INVALID_QID);
        }
        if sq.inflight > 0 {
            // Completes once the backend returned every command of this SQ.
            sq.deleting = Some(sqe.cid());
            self.pending_deletes += 1;
            return Ok(None);
        }
        self.remove_sq(qid);
        Ok(Some(0))
    }

    fn admin_delete_cq(&mut self, sqe: &Sqe) -> AdminResult {
        let qid = (sqe.dw[10] & 0xffff) as u16;
        if qid == 0 {
            return Err(Status::INVALID_QID);
        }
        let cq = self
            .cqs
            .get(usize::from(qid))
            .and_then(Option::as_ref)
            .ok_or(Status::INVALID_QID)?;
        if cq.sq_refs > 0 {
            return Err(Status::INVALID_QUEUE_DELETION);
        }
        if let Some(c) = self.cqs.get_mut(usize::from(qid)) {
            *c = None;
        }
        self.shared.mirror_cq(qid, false, 0);
        Ok(Some(0))
    }

    // ----- identify --------------------------------------------------------------------

    fn oncs(&self) -> u16 {
        let all =
            |f: fn(&sluice_bdev::BdevInfo) -> bool| self.ns.iter().flatten().all(|n| f(&n.info));
        let mut v = 0u16;
        if all(|i| i.caps.compare) {
            v |= 1;
        }
        if all(|i| i.caps.unmap) {
            v |= 1 << 2;
        }
        if all(|i| i.caps.write_zeroes) {
            v |= 1 << 3;
        }
        v
    }

    /// The 4 KiB Identify Controller structure.
    pub fn identify_controller(&self) -> Vec<u8> {
        let c = &self.cfg;
        let mut b = vec![0u8; 4096];
        put(&mut b, 0, &c.vendor_id.to_le_bytes());
        put(&mut b, 2, &c.subsystem_vendor_id.to_le_bytes());
        put_str(&mut b, 4, 20, &c.serial);
        put_str(&mut b, 24, 40, &c.model);
        put_str(&mut b, 64, 8, &c.firmware);
        put(&mut b, 72, &[6]); // RAB
        put(&mut b, 77, &[c.mdts]);
        put(&mut b, 78, &c.cntlid.to_le_bytes());
        put(&mut b, 80, &0x0002_0000u32.to_le_bytes()); // VER 2.0
        put(&mut b, 92, &(1u32 << 8).to_le_bytes()); // OAES: namespace attribute notices
        put(&mut b, 96, &1u32.to_le_bytes()); // CTRATT: 128-bit host identifier
        put(&mut b, 111, &[1]); // CNTRLTYPE: I/O controller
        let oacs: u16 = if c.dbbuf_enabled() { 1 << 8 } else { 0 };
        put(&mut b, 256, &oacs.to_le_bytes());
        put(&mut b, 258, &[3]); // ACL
        put(&mut b, 259, &[(AER_LIMIT - 1) as u8]); // AERL
        put(&mut b, 260, &[0x3]); // FRMW: slot 1 read-only, 1 slot
        put(&mut b, 261, &[0x26]); // LPA: effects log, extended data, supported-logs pages
        put(&mut b, 262, &[(ERROR_LOG_ENTRIES - 1) as u8]); // ELPE
        put(&mut b, 266, &0x157u16.to_le_bytes()); // WCTEMP
        put(&mut b, 268, &0x175u16.to_le_bytes()); // CCTEMP
        put(&mut b, 320, &100u16.to_le_bytes()); // KAS: 10 s granularity
        put(&mut b, 512, &[0x66]); // SQES
        put(&mut b, 513, &[0x44]); // CQES
        put(
            &mut b,
            514,
            &(c.max_queue_depth.min(0xffff) as u16).to_le_bytes(),
        ); // MAXCMD
        put(&mut b, 516, &c.max_namespaces.to_le_bytes()); // NN
        put(&mut b, 520, &self.oncs().to_le_bytes());
        put(&mut b, 525, &[0x7]); // VWC present, flush of all namespaces supported
        put(&mut b, 536, &1u32.to_le_bytes()); // SGLS: supported, no alignment requirement
        put(&mut b, 540, &c.max_namespaces.to_le_bytes()); // MNAN
        put_str(&mut b, 768, c.subnqn.len().min(255), &c.subnqn);
        put(&mut b, 2048, &2500u16.to_le_bytes()); // PSD0 MP = 25 W
        b
    }

    fn identify_namespace(&self, nsid: u32) -> Result<Vec<u8>, Status> {
        let mut b = vec![0u8; 4096];
        if nsid == 0 || (nsid > self.cfg.max_namespaces && nsid != 0xffff_ffff) {
            return Err(Status::INVALID_NAMESPACE);
        }
        if nsid == 0xffff_ffff {
            put(&mut b, 128, &(9u32 << 16).to_le_bytes());
            return Ok(b);
        }
        let Some(ns) = self.ns.get(nsid as usize - 1).and_then(Option::as_ref) else {
            return Ok(b);
        };
        let n = ns.info.num_blocks;
        put(&mut b, 0, &n.to_le_bytes());
        put(&mut b, 8, &n.to_le_bytes());
        put(&mut b, 16, &n.to_le_bytes());
        put(&mut b, 25, &[0]); // NLBAF: one format
        put(&mut b, 26, &[0]); // FLBAS
        put(&mut b, 104, ns.info.uuid.as_bytes()); // NGUID
        put(&mut b, 128, &(ns.lba_shift << 16).to_le_bytes()); // LBAF0
        Ok(b)
    }

    fn active_ns_list(&self, after: u32) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        let ids = self
            .namespaces()
            .into_iter()
            .filter(|&n| n > after)
            .take(1024);
        for (i, id) in ids.enumerate() {
            put(&mut b, i * 4, &id.to_le_bytes());
        }
        b
    }

    fn admin_identify(&mut self, sqe: &Sqe) -> AdminResult {
        let cns = (sqe.dw[10] & 0xff) as u8;
        let csi = (sqe.dw[11] >> 24) as u8;
        let nsid = sqe.nsid();
        let data = match cns {
            0x00 => self.identify_namespace(nsid)?,
            0x01 => self.identify_controller(),
            0x02 => {
                if nsid >= 0xffff_fffe {
                    return Err(Status::INVALID_NAMESPACE);
                }
                self.active_ns_list(nsid)
            }
            0x03 => {
                let mut b = vec![0u8; 4096];
                if nsid == 0 || nsid > self.cfg.max_namespaces {
                    return Err(Status::INVALID_NAMESPACE);
                }
                if let Some(ns) = self.ns.get(nsid as usize - 1).and_then(Option::as_ref) {
                    put(&mut b, 0, &[2, 16]); // NGUID
                    put(&mut b, 4, ns.info.uuid.as_bytes());
                    put(&mut b, 20, &[3, 16]); // UUID
                    put(&mut b, 24, ns.info.uuid.as_bytes());
                    put(&mut b, 40, &[4, 1]); // CSI = NVM
                }
                b
            }
            0x05 | 0x06 => {
                if csi != 0 {
                    return Err(Status::INVALID_FIELD);
                }
                if cns == 0x05 {
                    self.identify_namespace(nsid)?; // validates nsid
                }
                vec![0u8; 4096]
            }
            0x07 => {
                if csi != 0 {
                    return Err(Status::INVALID_FIELD);
                }
                if nsid >= 0xffff_fffe {
                    return Err(Status::INVALID_NAMESPACE);
                }
                self.active_ns_list(nsid)
            }
            0x08 => {
                let mut b = vec![0u8; 4096];
                if nsid == 0 || nsid > self.cfg.max_namespaces {
                    return Err(Status::INVALID_NAMESPACE);
                }
                if self.ns.get(nsid as usize - 1).is_some_and(Option::is_some) {
                    put(&mut b, 14, &[1]); // NSTAT: ready
                }
                b
            }
            0x1c => {
                let mut b = vec![0u8; 4096];
                put(&mut b, 0, &1u64.to_le_bytes()); // vector 0: NVM command set
                b
            }
            _ => return Err(Status::INVALID_FIELD),
        };
        self.write_data(sqe, &data)?;
        Ok(Some(0))
    }

    // ----- features ---------------------------------------------------------------------

    fn admin_set_features(&mut self, sqe: &Sqe) -> AdminResult {
        let fid = (sqe.dw[10] & 0xff) as u8;
        let save = sqe.dw[10] & (1 << 31) != 0;
        let v = sqe.dw[11];
        if save {
            return Err(Status::FEATURE_NOT_SAVEABLE);
        }
        match fid {
            feat::ARBITRATION => self.feat.arbitration = v & 0xffff_ff07,
            feat::POWER_MGMT => {
                if v & 0x1f != 0 {
                    return Err(Status::INVALID_FIELD);
                }
                self.feat.power_mgmt = v & 0xff;
            }
            feat::TEMP_THRESHOLD => {
                let (tmpsel, thsel) = ((v >> 16) & 0xf, (v >> 20) & 0x3);
                if tmpsel != 0 || thsel > 1 {
                    return Err(Status::INVALID_FIELD);
                }
                if thsel == 0 {
                    self.feat.temp_over = v as u16;
                } else {
                    self.feat.temp_under = v as u16;
                }
            }
            feat::ERROR_RECOVERY => {
                if v & (1 << 16) != 0 {
                    return Err(Status::INVALID_FIELD); // DULBE unsupported
                }
                self.feat.error_recovery = v & 0xffff;
            }
            feat::VOLATILE_WC => self.feat.vwc = v & 1 != 0,
            feat::NUM_QUEUES => {
                let (nsqr, ncqr) = ((v & 0xffff) as u16, (v >> 16) as u16);
                if nsqr == 0xffff || ncqr == 0xffff {
                    return Err(Status::INVALID_FIELD);
                }
                if self.io_queues_exist() {
                    return Err(Status::COMMAND_SEQUENCE_ERROR);
                }
                let max = self.cfg.max_io_queues - 1;
                // Allocated once per reset; later requests report the same allocation.
                let (a, b) = *self
                    .feat
                    .num_queues
                    .get_or_insert((nsqr.min(max), ncqr.min(max)));
                return Ok(Some(u32::from(a) | u32::from(b) << 16));
            }
            feat::INT_COALESCING => {
                self.feat.coalesce_thr = v as u8;
                self.feat.coalesce_time = (v >> 8) as u8;
            }
            feat::INT_VECTOR_CONFIG => {
                let iv = (v & 0xffff) as u16;
                if iv == 0 || iv >= MSIX_VECTORS {
                    return Err(Status::INVALID_FIELD);
                }
                if let Some(cd) = self.iv_cd.get_mut(usize::from(iv)) {
                    *cd = v & (1 << 16) != 0;
                }
            }
            feat::WRITE_ATOMICITY => self.feat.write_atomicity = v & 1,
            feat::ASYNC_EVENT_CONFIG => self.feat.async_event_config = v & 0x1ff,
            feat::KEEP_ALIVE_TIMER => self.feat.kato = self.set_keep_alive(v),
            feat::HOST_ID => {
                if v & 1 == 0 {
                    return Err(Status::INVALID_FIELD); // only the 128-bit identifier
                }
                let d = self.read_data(sqe, 16)?;
                self.feat
                    .host_id
                    .copy_from_slice(d.get(..16).ok_or(Status::INTERNAL_ERROR)?);
            }
            _ => return Err(Status::INVALID_FIELD),
        }
        Ok(Some(0))
    }

    fn admin_get_features(&mut self, sqe: &Sqe) -> AdminResult {
        let fid = (sqe.dw[10] & 0xff) as u8;
        let sel = (sqe.dw[10] >> 8) & 7;
        let v = sqe.dw[11];
        let changeable = matches!(
            fid,
            feat::ARBITRATION
                | feat::POWER_MGMT
                | feat::TEMP_THRESHOLD
                | feat::ERROR_RECOVERY
                | feat::VOLATILE_WC
                | feat::NUM_QUEUES
                | feat::INT_COALESCING
                | feat::INT_VECTOR_CONFIG
                | feat::WRITE_ATOMICITY
                | feat::ASYNC_EVENT_CONFIG
                | feat::KEEP_ALIVE_TIMER
                | feat::HOST_ID
        );
        if !changeable {
            return Err(Status::INVALID_FIELD);
        }
        if sel == 3 {
            return Ok(Some(1 << 2)); // changeable, not saveable, not namespace specific
        }
        if sel > 3 {
            return Err(Status::INVALID_FIELD);
        }
        let defaults = crate::ctrl::Features {
            vwc: true,
            ..Default::default()
        };
        let f = if sel == 0 {
            self.feat.clone()
        } else {
            defaults
        };
        let max = self.cfg.max_io_queues - 1;
        let dw0 = match fid {
            feat::ARBITRATION => f.arbitration,
            feat::POWER_MGMT => f.power_mgmt,
            feat::TEMP_THRESHOLD => {
                let (tmpsel, thsel) = ((v >> 16) & 0xf, (v >> 20) & 0x3);
                if tmpsel != 0 || thsel > 1 {
                    return Err(Status::INVALID_FIELD);
                }
                u32::from(if thsel == 0 {
                    f.temp_over
                } else {
                    f.temp_under
                }) | (v & 0x003f_0000)
            }
            feat::ERROR_RECOVERY => f.error_recovery,
            feat::VOLATILE_WC => u32::from(f.vwc),
            feat::NUM_QUEUES => {
                let (a, b) = f.num_queues.unwrap_or((max, max));
                u32::from(a) | u32::from(b) << 16
            }
            feat::INT_COALESCING => u32::from(f.coalesce_thr) | u32::from(f.coalesce_time) << 8,
            feat::INT_VECTOR_CONFIG => {
                let iv = (v & 0xffff) as u16;
                if iv >= MSIX_VECTORS {
                    return Err(Status::INVALID_FIELD);
                }
                let cd = sel == 0 && self.iv_cd.get(usize::from(iv)).copied().unwrap_or(false);
                u32::from(iv) | u32::from(cd) << 16
            }
            feat::WRITE_ATOMICITY => f.write_atomicity,
            feat::ASYNC_EVENT_CONFIG => f.async_event_config,
            feat::KEEP_ALIVE_TIMER => f.kato,
            feat::HOST_ID => {
                if v & 1 == 0 {
                    return Err(Status::INVALID_FIELD);
                }
                self.write_data(sqe, &f.host_id)?;
                0
            }
            _ => return Err(Status::INVALID_FIELD),
        };
        Ok(Some(dw0))
    }

    // ----- log pages -------------------------------------------------------------------

    fn smart_log(&self) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        let temp: u16 = 313; // 40 C, constant
        let mut warn = 0u8;
        if temp > self.feat.temp_over || temp < self.feat.temp_under {
            warn |= 1 << 1;
        }
        put(&mut b, 0, &[warn]);
        put(&mut b, 1, &temp.to_le_bytes());
        put(&mut b, 3, &[100, 10, 0]); // spare, spare threshold, percentage used
        let units = |bytes: u64| (bytes / 512).div_ceil(1000);
        put_u128(&mut b, 32, units(self.smart.bytes_read));
        put_u128(&mut b, 48, units(self.smart.bytes_written));
        put_u128(&mut b, 64, self.smart.read_cmds);
        put_u128(&mut b, 80, self.smart.write_cmds);
        put_u128(&mut b, 112, self.smart.power_cycles);
        put_u128(&mut b, 128, self.created.elapsed().as_secs() / 3600);
        put_u128(&mut b, 144, self.smart.unsafe_shutdowns);
        put_u128(&mut b, 160, self.smart.media_errors);
        put_u128(&mut b, 176, self.smart.error_count);
        b
    }

    fn effects_log(&self) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        let mut admins = vec![
            admin::DELETE_SQ,
            admin::CREATE_SQ,
            admin::GET_LOG_PAGE,
            admin::DELETE_CQ,
            admin::CREATE_CQ,
            admin::IDENTIFY,
            admin::ABORT,
            admin::SET_FEATURES,
            admin::GET_FEATURES,
            admin::ASYNC_EVENT_REQUEST,
            admin::KEEP_ALIVE,
        ];
        if self.cfg.dbbuf_enabled() {
            admins.push(admin::DOORBELL_BUFFER_CONFIG);
        }
        for op in admins {
            put(&mut b, usize::from(op) * 4, &1u32.to_le_bytes());
        }
        let oncs = self.oncs();
        let mut ios = vec![(io::FLUSH, 3u32), (io::WRITE, 3), (io::READ, 1)];
        if oncs & 1 != 0 {
            ios.push((io::COMPARE, 1));
        }
        if oncs & 4 != 0 {
            ios.push((io::DSM, 3));
        }
        if oncs & 8 != 0 {
            ios.push((io::WRITE_ZEROES, 3));
        }
        for (op, v) in ios {
            put(&mut b, 1024 + usize::from(op) * 4, &v.to_le_bytes());
        }
        b
    }

    fn admin_get_log_page(&mut self, sqe: &Sqe) -> AdminResult {
        let lid = (sqe.dw[10] & 0xff) as u8;
        let rae = sqe.dw[10] & (1 << 15) != 0;
        let numd = u64::from(sqe.dw[10] >> 16 | (sqe.dw[11] & 0xffff) << 16) + 1;
        let len = numd * 4;
        let offset = u64::from(sqe.dw[12]) | u64::from(sqe.dw[13]) << 32;
        if offset % 4 != 0 || len > self.cfg.mdts_bytes() {
            return Err(Status::INVALID_FIELD);
        }
        let page = match lid {
            log::SUPPORTED => {
                let mut b = vec![0u8; 1024];
                for l in [
                    log::SUPPORTED,
                    log::ERROR,
                    log::SMART,
                    log::FW_SLOT,
                    log::CHANGED_NS,
                    log::CMD_EFFECTS,
                    log::FEATURE_EFFECTS,
                    log::MI_EFFECTS,
                ] {
                    put(&mut b, usize::from(l) * 4, &1u32.to_le_bytes());
                }
                b
            }
            log::ERROR => {
                let mut b = vec![0u8; ERROR_LOG_ENTRIES * 64];
                for (i, e) in self.error_log.iter().enumerate() {
                    put(&mut b, i * 64, e);
                }
                if !rae {
                    self.aer.error_masked = false;
                }
                b
            }
            log::SMART => self.smart_log(),
            log::FW_SLOT => {
                let mut b = vec![0u8; 512];
                put(&mut b, 0, &[1]);
                put_str(&mut b, 8, 8, &self.cfg.firmware);
                b
            }
            log::CHANGED_NS => {
                let mut b = vec![0u8; 4096];
                for (i, id) in self.changed_ns.iter().enumerate() {
                    put(&mut b, i * 4, &id.to_le_bytes());
                }
                if !rae {
                    self.changed_ns.clear();
                    self.aer.notice_masked = false;
                }
                b
            }
            log::CMD_EFFECTS => self.effects_log(),
            log::FEATURE_EFFECTS => {
                let mut b = vec![0u8; 1024];
                for f in [1u8, 2, 4, 5, 6, 7, 8, 9, 0x0a, 0x0b, 0x0f, 0x81] {
                    put(&mut b, usize::from(f) * 4, &1u32.to_le_bytes());
                }
                b
            }
            log::MI_EFFECTS => vec![0u8; 1024],
            _ => return Err(Status::INVALID_LOG_PAGE),
        };
        if offset > page.len() as u64 {
            return Err(Status::INVALID_FIELD);
        }
        let mut out = vec![0u8; len as usize];
        let src = page.get(offset as usize..).unwrap_or(&[]);
        let n = src.len().min(out.len());
        if let (Some(d), Some(s)) = (out.get_mut(..n), src.get(..n)) {
            d.copy_from_slice(s);
        }
        self.write_data(sqe, &out)?;
        Ok(Some(0))
    }

    // ----- doorbell buffer config ------------------------------------------------------------

    fn admin_dbbuf(&mut self, sqe: &Sqe) -> AdminResult {
        let (p1, p2) = (sqe.prp1(), sqe.prp2());
        if sqe.psdt() != 0
            || p1 == 0
            || p2 == 0
            || p1 == p2
            || p1 % PAGE_SIZE != 0
            || p2 % PAGE_SIZE != 0
        {
            return Err(Status::INVALID_FIELD);
        }
        let mem = self.mem.clone().ok_or(Status::INVALID_FIELD)?;
        let db = Ring::new(&mem, p1, PAGE_SIZE as usize).ok_or(Status::INVALID_FIELD)?;
        let ei = Ring::new(&mem, p2, PAGE_SIZE as usize).ok_or(Status::INVALID_FIELD)?;
        // Seed the shadow buffer with the current doorbells (old Linux drivers do not clear
        // it); EventIdx starts at the current values so the next write past them traps.
        for i in 2..crate::sys::DOORBELL_COUNT {
            let v = self.shared.doorbells.load(i);
            let _ = db.write_u32(i * 4, v);
            let _ = ei.write_u32(i * 4, v);
        }
        self.shared.set_shadow_db(p1);
        self.shadow = Some(ShadowDb {
            db_gpa: p1,
            ei_gpa: p2,
            db,
            ei,
        });
        Ok(Some(0))
    }

    /// Parse and submit a Dataset Management command (ranges copied in, then one
    /// backend request per deallocated range).
    pub(crate) fn dsm(&mut self, sqid: u16, sqe: &Sqe, nsidx: usize) -> Result<(), Status> {
        let nr = (sqe.dw[10] & 0xff) as usize + 1;
        let ad = sqe.dw[11] & (1 << 2) != 0;
        let ns = self
            .ns
            .get(nsidx)
            .and_then(Option::as_ref)
            .ok_or(Status::INVALID_NAMESPACE)?;
        let (shift, nlbas, unmap) = (ns.lba_shift, ns.info.num_blocks, ns.info.caps.unmap);
        let len = nr * 16;
        let mem = self.mem.clone().ok_or(Status::DATA_TRANSFER_ERROR)?;
        let mut segs = Vec::new();
        match sqe.psdt() {
            0 => walk_prp(&mem, sqe.prp1(), sqe.prp2(), len as u64, &mut segs)?,
            1 | 2 => crate::prp::walk_sgl(&mem, &sqe.sgl_bytes(), len as u64, &mut segs)?,
            _ => return Err(Status::INVALID_FIELD),
        }
        let mut raw = vec![0u8; len];
        gather(&mem, self.msg_dma.as_deref(), &segs, &mut raw)?;
        let mut reqs = Vec::new();
        for r in raw.chunks_exact(16) {
            let mut nlb = [0u8; 4];
            nlb.copy_from_slice(r.get(4..8).ok_or(Status::INTERNAL_ERROR)?);
            let mut slba = [0u8; 8];
            slba.copy_from_slice(r.get(8..16).ok_or(Status::INTERNAL_ERROR)?);
            let (nlb, slba) = (u64::from(u32::from_le_bytes(nlb)), u64::from_le_bytes(slba));
            if slba.checked_add(nlb).is_none_or(|e| e > nlbas) {
                return Err(Status::LBA_OUT_OF_RANGE);
            }
            if nlb > 0 && ad && unmap {
                reqs.push((nsidx, IoOp::Unmap, slba << shift, nlb << shift));
            }
        }
        self.multi_submit(sqid, sqe.cid(), reqs)
    }
}
