//! NVMe submission/completion queue entries, opcodes and status codes.

use std::fmt;

/// Admin command opcodes.
pub mod admin {
    /// Delete I/O Submission Queue.
    pub const DELETE_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0a;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Doorbell Buffer Config.
    pub const DOORBELL_BUFFER_CONFIG: u8 = 0x7c;
}

/// NVM command set opcodes.
pub mod nvm {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DSM: u8 = 0x09;
}

/// Feature identifiers.
pub mod feat {
    /// Arbitration.
    pub const ARBITRATION: u8 = 0x01;
    /// Power Management.
    pub const POWER_MANAGEMENT: u8 = 0x02;
    /// Temperature Threshold.
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    /// Error Recovery.
    pub const ERROR_RECOVERY: u8 = 0x05;
    /// Volatile Write Cache.
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    /// Interrupt Coalescing.
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    /// Interrupt Vector Configuration.
    pub const INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
    /// Write Atomicity Normal.
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    /// Keep Alive Timer.
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
    /// Host Identifier.
    pub const HOST_IDENTIFIER: u8 = 0x81;
}

/// Log page identifiers.
pub mod log {
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const HEALTH: u8 = 0x02;
    /// Firmware Slot Information.
    pub const FIRMWARE_SLOT: u8 = 0x03;
    /// Changed Namespace List.
    pub const CHANGED_NS_LIST: u8 = 0x04;
    /// Commands Supported and Effects.
    pub const COMMAND_EFFECTS: u8 = 0x05;
}

/// Generic command status codes (SCT 0).
pub mod sc {
    /// Successful Completion.
    pub const SUCCESS: u8 = 0x00;
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: u8 = 0x01;
    /// Invalid Field in Command.
    pub const INVALID_FIELD: u8 = 0x02;
    /// Command ID Conflict.
    pub const CID_CONFLICT: u8 = 0x03;
    /// Data Transfer Error.
    pub const DATA_TRANSFER_ERROR: u8 = 0x04;
    /// Internal Error.
    pub const INTERNAL_ERROR: u8 = 0x06;
    /// Command Abort Requested.
    pub const ABORT_REQUESTED: u8 = 0x07;
    /// Command Aborted due to SQ Deletion.
    pub const ABORTED_SQ_DELETION: u8 = 0x08;
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: u8 = 0x0b;
    /// Command Sequence Error.
    pub const COMMAND_SEQUENCE_ERROR: u8 = 0x0c;
    /// Invalid SGL Segment Descriptor.
    pub const INVALID_SGL_SEGMENT: u8 = 0x0d;
    /// Invalid Number of SGL Descriptors.
    pub const INVALID_SGL_COUNT: u8 = 0x0e;
    /// Data SGL Length Invalid.
    pub const SGL_LENGTH_INVALID: u8 = 0x0f;
    /// SGL Descriptor Type Invalid.
    pub const SGL_TYPE_INVALID: u8 = 0x11;
    /// Invalid PRP Offset.
    pub const INVALID_PRP_OFFSET: u8 = 0x13;
    /// LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
    /// Capacity Exceeded.
    pub const CAPACITY_EXCEEDED: u8 = 0x81;
    /// Namespace Not Ready.
    pub const NAMESPACE_NOT_READY: u8 = 0x82;
}

/// Command specific status codes (SCT 1).
pub mod csc {
    /// Completion Queue Invalid.
    pub const CQ_INVALID: u8 = 0x00;
    /// Invalid Queue Identifier.
    pub const INVALID_QUEUE_ID: u8 = 0x01;
    /// Invalid Queue Size.
    pub const INVALID_QUEUE_SIZE: u8 = 0x02;
    /// Abort Command Limit Exceeded.
    pub const ABORT_LIMIT_EXCEEDED: u8 = 0x03;
    /// Asynchronous Event Request Limit Exceeded.
    pub const AER_LIMIT_EXCEEDED: u8 = 0x05;
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: u8 = 0x09;
    /// Invalid Interrupt Vector.
    pub const INVALID_INTERRUPT_VECTOR: u8 = 0x08;
    /// Invalid Queue Deletion.
    pub const INVALID_QUEUE_DELETION: u8 = 0x0c;
    /// Feature Identifier Not Saveable.
    pub const FEATURE_NOT_SAVEABLE: u8 = 0x0d;
    /// Feature Not Changeable.
    pub const FEATURE_NOT_CHANGEABLE: u8 = 0x0e;
}

/// Media and data integrity status codes (SCT 2).
pub mod msc {
    /// Compare Failure.
    pub const COMPARE_FAILURE: u8 = 0x85;
    /// Unrecovered Read Error.
    pub const UNRECOVERED_READ_ERROR: u8 = 0x81;
}

/// Status code types.
pub mod sct {
    /// Generic command status.
    pub const GENERIC: u8 = 0;
    /// Command specific status.
    pub const COMMAND_SPECIFIC: u8 = 1;
    /// Media and data integrity errors.
    pub const MEDIA: u8 = 2;
}

/// A 64-byte submission queue entry, as sixteen little-endian dwords.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// The sixteen command dwords.
    pub cdw: [u32; 16],
}

impl Command {
    /// A command with only the opcode set.
    pub fn new(opcode: u8) -> Self {
        let mut c = Self::default();
        c.cdw[0] = u32::from(opcode);
        c
    }

    /// A command for namespace `nsid`.
    pub fn with_nsid(opcode: u8, nsid: u32) -> Self {
        let mut c = Self::new(opcode);
        c.cdw[1] = nsid;
        c
    }

    /// The opcode.
    pub fn opcode(&self) -> u8 {
        (self.cdw[0] & 0xff) as u8
    }

    /// The command identifier.
    pub fn cid(&self) -> u16 {
        (self.cdw[0] >> 16) as u16
    }

    /// Sets the command identifier.
    pub fn set_cid(&mut self, cid: u16) {
        self.cdw[0] = (self.cdw[0] & 0xffff) | (u32::from(cid) << 16);
    }

    /// Sets the PRP or SGL selection (CDW0 bits 15:14): 0 = PRP, 1 = SGL.
    pub fn set_psdt(&mut self, psdt: u8) {
        self.cdw[0] = (self.cdw[0] & !0xc000) | (u32::from(psdt & 3) << 14);
    }

    /// Sets the fused operation bits (CDW0 bits 9:8).
    pub fn set_fuse(&mut self, fuse: u8) {
        self.cdw[0] = (self.cdw[0] & !0x300) | (u32::from(fuse & 3) << 8);
    }

    /// Namespace id.
    pub fn nsid(&self) -> u32 {
        self.cdw[1]
    }

    /// Sets the metadata pointer.
    pub fn set_mptr(&mut self, mptr: u64) {
        self.cdw[4] = mptr as u32;
        self.cdw[5] = (mptr >> 32) as u32;
    }

    /// Sets DPTR as PRP1/PRP2.
    pub fn set_prp(&mut self, prp1: u64, prp2: u64) {
        self.cdw[6] = prp1 as u32;
        self.cdw[7] = (prp1 >> 32) as u32;
        self.cdw[8] = prp2 as u32;
        self.cdw[9] = (prp2 >> 32) as u32;
    }

    /// PRP1.
    pub fn prp1(&self) -> u64 {
        u64::from(self.cdw[6]) | (u64::from(self.cdw[7]) << 32)
    }

    /// PRP2.
    pub fn prp2(&self) -> u64 {
        u64::from(self.cdw[8]) | (u64::from(self.cdw[9]) << 32)
    }

    /// Sets DPTR to one 16-byte SGL descriptor and selects SGLs.
    pub fn set_sgl(&mut self, desc: SglDescriptor) {
        let b = desc.to_bytes();
        for (i, chunk) in b.chunks_exact(4).enumerate() {
            if let (Some(slot), Ok(bytes)) = (self.cdw.get_mut(6 + i), <[u8; 4]>::try_from(chunk)) {
                *slot = u32::from_le_bytes(bytes);
            }
        }
        self.set_psdt(1);
    }

    /// Sets a 64-bit starting LBA (CDW10/11).
    pub fn set_slba(&mut self, slba: u64) {
        self.cdw[10] = slba as u32;
        self.cdw[11] = (slba >> 32) as u32;
    }

    /// Serializes to the 64-byte wire format.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        for (chunk, dw) in out.chunks_exact_mut(4).zip(self.cdw.iter()) {
            chunk.copy_from_slice(&dw.to_le_bytes());
        }
        out
    }

    /// Parses the 64-byte wire format.
    pub fn from_bytes(b: &[u8; 64]) -> Self {
        let mut c = Self::default();
        for (dw, chunk) in c.cdw.iter_mut().zip(b.chunks_exact(4)) {
            if let Ok(bytes) = <[u8; 4]>::try_from(chunk) {
                *dw = u32::from_le_bytes(bytes);
            }
        }
        c
    }
}

/// A completion status (DW3 bits 31:17).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Status code type.
    pub sct: u8,
    /// Status code.
    pub sc: u8,
    /// More information in the error log.
    pub more: bool,
    /// Do not retry.
    pub dnr: bool,
}

impl Status {
    /// Decodes the 15-bit status field (without the phase bit).
    pub fn from_field(field: u16) -> Self {
        Self {
            sc: (field & 0xff) as u8,
            sct: ((field >> 8) & 0x7) as u8,
            more: field & (1 << 13) != 0,
            dnr: field & (1 << 14) != 0,
        }
    }

    /// A generic (SCT 0) status.
    pub const fn generic(sc: u8) -> Self {
        Self {
            sct: sct::GENERIC,
            sc,
            more: false,
            dnr: false,
        }
    }

    /// Whether the command succeeded.
    pub fn is_success(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// Same SCT and SC (ignoring DNR/More).
    pub fn is(&self, sct: u8, sc: u8) -> bool {
        self.sct == sct && self.sc == sc
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sct {:#x} sc {:#04x}", self.sct, self.sc)?;
        if self.dnr {
            write!(f, " dnr")?;
        }
        Ok(())
    }
}

/// A 16-byte completion queue entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// Command specific DW0.
    pub dw0: u32,
    /// Command specific DW1.
    pub dw1: u32,
    /// SQ head pointer.
    pub sq_head: u16,
    /// SQ identifier.
    pub sq_id: u16,
    /// Command identifier.
    pub cid: u16,
    /// Phase tag.
    pub phase: bool,
    /// Status.
    pub status: Status,
}

impl Completion {
    /// Parses the 16-byte wire format.
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        let dw = |i: usize| {
            let mut x = [0u8; 4];
            if let Some(s) = b.get(i * 4..i * 4 + 4) {
                x.copy_from_slice(s);
            }
            u32::from_le_bytes(x)
        };
        let dw2 = dw(2);
        let dw3 = dw(3);
        let status_field = (dw3 >> 16) as u16;
        Self {
            dw0: dw(0),
            dw1: dw(1),
            sq_head: dw2 as u16,
            sq_id: (dw2 >> 16) as u16,
            cid: dw3 as u16,
            phase: status_field & 1 != 0,
            status: Status::from_field(status_field >> 1),
        }
    }
}

/// SGL descriptor types (upper nibble of byte 15).
pub mod sgl_type {
    /// Data Block descriptor.
    pub const DATA_BLOCK: u8 = 0x0;
    /// Bit Bucket descriptor.
    pub const BIT_BUCKET: u8 = 0x1;
    /// Segment descriptor.
    pub const SEGMENT: u8 = 0x2;
    /// Last Segment descriptor.
    pub const LAST_SEGMENT: u8 = 0x3;
}

/// A 16-byte SGL descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SglDescriptor {
    /// Address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Descriptor type (see [`sgl_type`]).
    pub kind: u8,
    /// Descriptor sub type (low nibble of byte 15).
    pub subtype: u8,
}

impl SglDescriptor {
    /// A data block descriptor.
    pub const fn data(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            kind: sgl_type::DATA_BLOCK,
            subtype: 0,
        }
    }

    /// A segment (`last == false`) or last segment descriptor pointing at `count` descriptors.
    pub const fn segment(addr: u64, count: u32, last: bool) -> Self {
        Self {
            addr,
            len: count.saturating_mul(16),
            kind: if last {
                sgl_type::LAST_SEGMENT
            } else {
                sgl_type::SEGMENT
            },
            subtype: 0,
        }
    }

    /// Serializes to the wire format.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[15] = (self.kind << 4) | (self.subtype & 0xf);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trips_through_bytes() {
        let mut c = Command::with_nsid(nvm::READ, 7);
        c.set_cid(0xbeef);
        c.set_prp(0x1234_5678_9000, 0xdead_b000);
        c.set_slba(0x1_0000_0002);
        let b = c.to_bytes();
        assert_eq!(b[0], nvm::READ);
        assert_eq!(&b[2..4], &0xbeefu16.to_le_bytes());
        let back = Command::from_bytes(&b);
        assert_eq!(back, c);
        assert_eq!(back.prp1(), 0x1234_5678_9000);
        assert_eq!(back.prp2(), 0xdead_b000);
        assert_eq!(back.cid(), 0xbeef);
        assert_eq!(back.nsid(), 7);
    }

    #[test]
    fn sgl_descriptor_sets_psdt_and_type() {
        let mut c = Command::new(nvm::WRITE);
        c.set_sgl(SglDescriptor::segment(0x4000, 3, true));
        assert_eq!((c.cdw[0] >> 14) & 3, 1);
        assert_eq!(c.cdw[6], 0x4000);
        assert_eq!(c.cdw[8], 48);
        assert_eq!(c.cdw[9] >> 24, 0x30);
    }

    #[test]
    fn completion_decodes_phase_and_status() {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&5u32.to_le_bytes());
        b[8..10].copy_from_slice(&3u16.to_le_bytes());
        b[10..12].copy_from_slice(&1u16.to_le_bytes());
        b[12..14].copy_from_slice(&9u16.to_le_bytes());
        // phase 1, sc 0x80, sct 0, dnr
        let field: u16 = 1 | (0x80 << 1) | (1 << 15);
        b[14..16].copy_from_slice(&field.to_le_bytes());
        let c = Completion::from_bytes(&b);
        assert_eq!(c.dw0, 5);
        assert_eq!(c.sq_head, 3);
        assert_eq!(c.sq_id, 1);
        assert_eq!(c.cid, 9);
        assert!(c.phase);
        assert!(c.status.is(sct::GENERIC, sc::LBA_OUT_OF_RANGE));
        assert!(c.status.dnr);
        assert!(!c.status.is_success());
    }
}
