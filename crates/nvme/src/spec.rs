//! NVMe 2.0 constants: register offsets, opcodes, status codes, feature and log ids.
//!
//! Only numbers live here; behaviour lives in the controller modules.

/// Controller register offsets in BAR0.
pub mod reg {
    /// Controller Capabilities (8 bytes).
    pub const CAP: u64 = 0x00;
    /// Version.
    pub const VS: u64 = 0x08;
    /// Interrupt Mask Set.
    pub const INTMS: u64 = 0x0c;
    /// Interrupt Mask Clear.
    pub const INTMC: u64 = 0x10;
    /// Controller Configuration.
    pub const CC: u64 = 0x14;
    /// Controller Status.
    pub const CSTS: u64 = 0x1c;
    /// NVM Subsystem Reset.
    pub const NSSR: u64 = 0x20;
    /// Admin Queue Attributes.
    pub const AQA: u64 = 0x24;
    /// Admin Submission Queue base (8 bytes).
    pub const ASQ: u64 = 0x28;
    /// Admin Completion Queue base (8 bytes).
    pub const ACQ: u64 = 0x30;
    /// Controller Ready Timeouts.
    pub const CRTO: u64 = 0x68;
    /// First doorbell register.
    pub const DOORBELL_BASE: u64 = 0x1000;
}

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
pub mod io {
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
    pub const POWER_MGMT: u8 = 0x02;
    /// Temperature Threshold.
    pub const TEMP_THRESHOLD: u8 = 0x04;
    /// Error Recovery.
    pub const ERROR_RECOVERY: u8 = 0x05;
    /// Volatile Write Cache.
    pub const VOLATILE_WC: u8 = 0x06;
    /// Number of Queues.
    pub const NUM_QUEUES: u8 = 0x07;
    /// Interrupt Coalescing.
    pub const INT_COALESCING: u8 = 0x08;
    /// Interrupt Vector Configuration.
    pub const INT_VECTOR_CONFIG: u8 = 0x09;
    /// Write Atomicity Normal.
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    /// Keep Alive Timer.
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
    /// Host Identifier.
    pub const HOST_ID: u8 = 0x81;
}

/// Log page identifiers.
pub mod log {
    /// Supported Log Pages.
    pub const SUPPORTED: u8 = 0x00;
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const SMART: u8 = 0x02;
    /// Firmware Slot Information.
    pub const FW_SLOT: u8 = 0x03;
    /// Changed Namespace List.
    pub const CHANGED_NS: u8 = 0x04;
    /// Commands Supported and Effects.
    pub const CMD_EFFECTS: u8 = 0x05;
    /// Feature Identifiers Supported and Effects.
    pub const FEATURE_EFFECTS: u8 = 0x12;
    /// NVMe-MI Commands Supported and Effects.
    pub const MI_EFFECTS: u8 = 0x13;
}

/// A 15-bit NVMe status field: SC (bits 7:0), SCT (10:8), DNR (14).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Status(pub u16);

impl Status {
    /// Successful completion.
    pub const SUCCESS: Status = Status(0);
    /// Generic status with DNR set.
    const fn generic(sc: u8) -> Status {
        Status(sc as u16 | 1 << 14)
    }
    /// Command specific status with DNR set.
    const fn specific(sc: u8) -> Status {
        Status(sc as u16 | 1 << 8 | 1 << 14)
    }
    /// Media / data integrity status with DNR set.
    const fn media(sc: u8) -> Status {
        Status(sc as u16 | 2 << 8 | 1 << 14)
    }
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: Status = Status::generic(0x01);
    /// Invalid Field in Command.
    pub const INVALID_FIELD: Status = Status::generic(0x02);
    /// Data Transfer Error (unmapped or partial guest memory).
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
    /// Internal Error.
    pub const INTERNAL_ERROR: Status = Status::generic(0x06);
    /// Command Abort Requested.
    pub const ABORT_REQUESTED: Status = Status(0x07);
    /// Command Aborted due to SQ Deletion.
    pub const ABORTED_SQ_DELETION: Status = Status(0x08);
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: Status = Status::generic(0x0b);
    /// Command Sequence Error.
    pub const COMMAND_SEQUENCE_ERROR: Status = Status::generic(0x0c);
    /// Invalid SGL Segment Descriptor.
    pub const INVALID_SGL_SEGMENT: Status = Status::generic(0x0d);
    /// Invalid Number of SGL Descriptors.
    pub const INVALID_SGL_COUNT: Status = Status::generic(0x0e);
    /// Data SGL Length Invalid.
    pub const SGL_LENGTH_INVALID: Status = Status::generic(0x0f);
    /// SGL Descriptor Type Invalid.
    pub const SGL_TYPE_INVALID: Status = Status::generic(0x11);
    /// PRP Offset Invalid.
    pub const PRP_OFFSET_INVALID: Status = Status::generic(0x13);
    /// Transient Transport Error (retryable).
    pub const TRANSIENT_TRANSPORT_ERROR: Status = Status(0x22);
    /// Capacity Exceeded.
    pub const CAPACITY_EXCEEDED: Status = Status::generic(0x81);
    /// Attempted Write to Read Only Range.
    pub const WRITE_TO_READ_ONLY: Status = Status::specific(0x82);
    /// LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80);
    /// Completion Queue Invalid.
    pub const CQ_INVALID: Status = Status::specific(0x00);
    /// Invalid Queue Identifier.
    pub const INVALID_QID: Status = Status::specific(0x01);
    /// Invalid Queue Size.
    pub const INVALID_QUEUE_SIZE: Status = Status::specific(0x02);
    /// Asynchronous Event Request Limit Exceeded.
    pub const AER_LIMIT_EXCEEDED: Status = Status::specific(0x05);
    /// Invalid Interrupt Vector.
    pub const INVALID_INTERRUPT_VECTOR: Status = Status::specific(0x08);
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: Status = Status::specific(0x09);
    /// Invalid Queue Deletion.
    pub const INVALID_QUEUE_DELETION: Status = Status::specific(0x0c);
    /// Feature Identifier Not Saveable.
    pub const FEATURE_NOT_SAVEABLE: Status = Status::specific(0x0d);
    /// Feature Not Changeable.
    pub const FEATURE_NOT_CHANGEABLE: Status = Status::specific(0x0e);
    /// Write Fault.
    pub const WRITE_FAULT: Status = Status::media(0x80);
    /// Unrecovered Read Error.
    pub const UNRECOVERED_READ_ERROR: Status = Status::media(0x81);
    /// Compare Failure.
    pub const COMPARE_FAILURE: Status = Status::media(0x85);

    /// Status Code.
    pub fn sc(self) -> u8 {
        (self.0 & 0xff) as u8
    }
    /// Status Code Type.
    pub fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }
    /// Do Not Retry.
    pub fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// Whether this is a success status.
    pub fn is_success(self) -> bool {
        self.0 & 0x7ff == 0
    }
    /// Decode from completion dword 3 (bits 31:17).
    pub fn from_cqe_dw3(dw3: u32) -> Status {
        Status((dw3 >> 17) as u16)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sct {:#x} sc {:#04x}{}",
            self.sct(),
            self.sc(),
            if self.dnr() { " dnr" } else { "" }
        )
    }
}

/// A 64-byte submission queue entry as 16 little-endian dwords.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Sqe {
    /// The raw dwords.
    pub dw: [u32; 16],
}

impl Sqe {
    /// Opcode (CDW0 bits 7:0).
    pub fn opcode(&self) -> u8 {
        (self.dw[0] & 0xff) as u8
    }
    /// Fused operation (CDW0 bits 9:8).
    pub fn fuse(&self) -> u8 {
        ((self.dw[0] >> 8) & 0x3) as u8
    }
    /// PRP or SGL for Data Transfer (CDW0 bits 15:14).
    pub fn psdt(&self) -> u8 {
        ((self.dw[0] >> 14) & 0x3) as u8
    }
    /// Command identifier (CDW0 bits 31:16).
    pub fn cid(&self) -> u16 {
        (self.dw[0] >> 16) as u16
    }
    /// Namespace identifier.
    pub fn nsid(&self) -> u32 {
        self.dw[1]
    }
    /// Data pointer entry 1 (PRP1 or the first half of the SGL descriptor).
    pub fn prp1(&self) -> u64 {
        u64::from(self.dw[6]) | u64::from(self.dw[7]) << 32
    }
    /// Data pointer entry 2.
    pub fn prp2(&self) -> u64 {
        u64::from(self.dw[8]) | u64::from(self.dw[9]) << 32
    }
    /// The SGL descriptor in DPTR as 16 raw bytes.
    pub fn sgl_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        for (chunk, dw) in b.chunks_exact_mut(4).zip(self.dw.iter().skip(6)) {
            chunk.copy_from_slice(&dw.to_le_bytes());
        }
        b
    }
    /// Command dword 10..15 by number (10 = CDW10); 0 for out-of-range numbers.
    pub fn cdw(&self, n: usize) -> u32 {
        self.dw.get(n).copied().unwrap_or(0)
    }
    /// Build from 64 raw bytes.
    pub fn from_bytes(b: &[u8; 64]) -> Sqe {
        let mut dw = [0u32; 16];
        for (d, c) in dw.iter_mut().zip(b.chunks_exact(4)) {
            *d = u32::from_le_bytes([
                c.first().copied().unwrap_or(0),
                c.get(1).copied().unwrap_or(0),
                c.get(2).copied().unwrap_or(0),
                c.get(3).copied().unwrap_or(0),
            ]);
        }
        Sqe { dw }
    }
    /// Serialize to 64 raw bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        for (c, d) in b.chunks_exact_mut(4).zip(self.dw.iter()) {
            c.copy_from_slice(&d.to_le_bytes());
        }
        b
    }
}

/// A 16-byte completion queue entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Cqe {
    /// Command specific dword 0.
    pub dw0: u32,
    /// Command specific dword 1.
    pub dw1: u32,
    /// SQ head pointer.
    pub sqhd: u16,
    /// SQ identifier.
    pub sqid: u16,
    /// Command identifier.
    pub cid: u16,
    /// Status (without the phase bit).
    pub status: Status,
}

impl Cqe {
    /// Dword 2 (SQHD | SQID << 16).
    pub fn dw2(&self) -> u32 {
        u32::from(self.sqhd) | u32::from(self.sqid) << 16
    }
    /// Dword 3 with the given phase tag.
    pub fn dw3(&self, phase: bool) -> u32 {
        u32::from(self.cid) | u32::from(phase) << 16 | u32::from(self.status.0 & 0x7fff) << 17
    }
}

/// Asynchronous event types and information used by the controller.
pub mod aen {
    /// Error status event type.
    pub const TYPE_ERROR: u8 = 0;
    /// Notice event type.
    pub const TYPE_NOTICE: u8 = 2;
    /// Error info: Invalid Doorbell Write Value.
    pub const ERROR_INVALID_DOORBELL_VALUE: u8 = 1;
    /// Notice info: Namespace Attribute Changed.
    pub const NOTICE_NS_ATTRIBUTE_CHANGED: u8 = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        assert_eq!(Status::INVALID_QID.sct(), 1);
        assert_eq!(Status::INVALID_QID.sc(), 1);
        assert!(Status::INVALID_QID.dnr());
        assert!(!Status::INVALID_QID.is_success());
        assert!(Status::SUCCESS.is_success());
        assert_eq!(Status::COMPARE_FAILURE.sct(), 2);
        assert_eq!(Status::COMPARE_FAILURE.sc(), 0x85);
    }

    #[test]
    fn cqe_dw3_round_trip() {
        let c = Cqe {
            cid: 0x1234,
            status: Status::LBA_OUT_OF_RANGE,
            ..Default::default()
        };
        let dw3 = c.dw3(true);
        assert_eq!(dw3 & 0xffff, 0x1234);
        assert_eq!(dw3 >> 16 & 1, 1);
        assert_eq!(Status::from_cqe_dw3(dw3), Status::LBA_OUT_OF_RANGE);
    }

    #[test]
    fn sqe_bytes_round_trip() {
        let mut s = Sqe::default();
        s.dw[0] = 0xabcd_4002;
        s.dw[6] = 0x1000;
        s.dw[7] = 0x2;
        let b = s.to_bytes();
        let t = Sqe::from_bytes(&b);
        assert_eq!(s, t);
        assert_eq!(t.opcode(), 2);
        assert_eq!(t.psdt(), 1);
        assert_eq!(t.cid(), 0xabcd);
        assert_eq!(t.prp1(), 0x2_0000_1000);
    }
}
