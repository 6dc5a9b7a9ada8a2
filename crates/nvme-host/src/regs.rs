//! NVMe controller register offsets and field decoding.

/// Controller Capabilities.
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
/// Admin Queue Attributes.
pub const AQA: u64 = 0x24;
/// Admin Submission Queue Base Address.
pub const ASQ: u64 = 0x28;
/// Admin Completion Queue Base Address.
pub const ACQ: u64 = 0x30;

/// CC.EN.
pub const CC_EN: u32 = 1;
/// CC.SHN normal shutdown.
pub const CC_SHN_NORMAL: u32 = 1 << 14;
/// CC.SHN abrupt shutdown.
pub const CC_SHN_ABRUPT: u32 = 2 << 14;
/// CC.SHN mask.
pub const CC_SHN_MASK: u32 = 3 << 14;
/// CC.IOSQES = 6 (64 bytes) and CC.IOCQES = 4 (16 bytes).
pub const CC_ENTRY_SIZES: u32 = (6 << 16) | (4 << 20);
/// CSTS.RDY.
pub const CSTS_RDY: u32 = 1;
/// CSTS.CFS.
pub const CSTS_CFS: u32 = 1 << 1;
/// CSTS.SHST mask.
pub const CSTS_SHST_MASK: u32 = 3 << 2;
/// CSTS.SHST = shutdown processing complete.
pub const CSTS_SHST_COMPLETE: u32 = 2 << 2;

/// Decoded CAP register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cap {
    /// Raw value.
    pub raw: u64,
}

impl Cap {
    /// Maximum queue entries supported (1-based).
    pub fn mqes(&self) -> u32 {
        (self.raw & 0xffff) as u32 + 1
    }
    /// Contiguous queues required.
    pub fn cqr(&self) -> bool {
        self.raw & (1 << 16) != 0
    }
    /// Arbitration mechanisms supported (bits 18:17).
    pub fn ams(&self) -> u8 {
        ((self.raw >> 17) & 3) as u8
    }
    /// Timeout in 500 ms units.
    pub fn to(&self) -> u8 {
        ((self.raw >> 24) & 0xff) as u8
    }
    /// Doorbell stride exponent (stride = 4 << dstrd bytes).
    pub fn dstrd(&self) -> u8 {
        ((self.raw >> 32) & 0xf) as u8
    }
    /// NVM subsystem reset supported.
    pub fn nssrs(&self) -> bool {
        self.raw & (1 << 36) != 0
    }
    /// Command sets supported.
    pub fn css(&self) -> u8 {
        ((self.raw >> 37) & 0xff) as u8
    }
    /// Boot partition support.
    pub fn bps(&self) -> bool {
        self.raw & (1 << 45) != 0
    }
    /// Memory page size minimum, in bytes.
    pub fn mpsmin(&self) -> u64 {
        1u64 << (12 + ((self.raw >> 48) & 0xf))
    }
    /// Memory page size maximum, in bytes.
    pub fn mpsmax(&self) -> u64 {
        1u64 << (12 + ((self.raw >> 52) & 0xf))
    }
    /// Persistent memory region supported.
    pub fn pmrs(&self) -> bool {
        self.raw & (1 << 56) != 0
    }
    /// Controller memory buffer supported.
    pub fn cmbs(&self) -> bool {
        self.raw & (1 << 57) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields_decode() {
        // MQES 255, CQR, TO 30, DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 0.
        let cap = Cap {
            raw: 0xff | (1 << 16) | (30 << 24) | (1 << 37),
        };
        assert_eq!(cap.mqes(), 256);
        assert!(cap.cqr());
        assert_eq!(cap.to(), 30);
        assert_eq!(cap.dstrd(), 0);
        assert_eq!(cap.css(), 1);
        assert_eq!(cap.mpsmin(), 4096);
        assert_eq!(cap.mpsmax(), 4096);
        assert!(!cap.nssrs());
    }
}
