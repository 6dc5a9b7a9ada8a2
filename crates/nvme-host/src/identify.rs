//! Identify Controller / Namespace data structures (parsed from the 4 KiB pages).

fn u8_at(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from(u8_at(b, off)) | (u16::from(u8_at(b, off + 1)) << 8)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from(u16_at(b, off)) | (u32::from(u16_at(b, off + 2)) << 16)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | (u64::from(u32_at(b, off + 4)) << 32)
}

fn text_at(b: &[u8], off: usize, len: usize) -> String {
    let s = b.get(off..off + len).unwrap_or(&[]);
    let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
    String::from_utf8_lossy(s.get(..end).unwrap_or(&[]))
        .trim_end()
        .to_string()
}

fn bytes_at<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = b.get(off..off + N) {
        out.copy_from_slice(s);
    }
    out
}

/// One power state descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerState {
    /// Maximum power (units of 0.01 W or 0.0001 W when `mxps`).
    pub mp: u16,
    /// Max power scale.
    pub mxps: bool,
    /// Non-operational state.
    pub nops: bool,
    /// Entry latency (us).
    pub enlat: u32,
    /// Exit latency (us).
    pub exlat: u32,
    /// Relative read throughput.
    pub rrt: u8,
    /// Relative read latency.
    pub rrl: u8,
    /// Relative write throughput.
    pub rwt: u8,
    /// Relative write latency.
    pub rwl: u8,
    /// Idle power.
    pub idlp: u16,
    /// Active power.
    pub actp: u16,
}

/// Identify Controller data (CNS 01h).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentifyController {
    /// PCI vendor id.
    pub vid: u16,
    /// PCI subsystem vendor id.
    pub ssvid: u16,
    /// Serial number.
    pub sn: String,
    /// Model number.
    pub mn: String,
    /// Firmware revision.
    pub fr: String,
    /// Recommended arbitration burst.
    pub rab: u8,
    /// IEEE OUI (as stored, least significant byte first).
    pub ieee: [u8; 3],
    /// Multi-path I/O and namespace sharing capabilities.
    pub cmic: u8,
    /// Maximum data transfer size (power of two of MPSMIN units; 0 = no limit).
    pub mdts: u8,
    /// Controller id.
    pub cntlid: u16,
    /// Version.
    pub ver: u32,
    /// Optional asynchronous events supported.
    pub oaes: u32,
    /// Controller attributes.
    pub ctratt: u32,
    /// Optional admin command support.
    pub oacs: u16,
    /// Abort command limit (0-based).
    pub acl: u8,
    /// Asynchronous event request limit (0-based).
    pub aerl: u8,
    /// Firmware updates.
    pub frmw: u8,
    /// Log page attributes.
    pub lpa: u8,
    /// Error log page entries (0-based).
    pub elpe: u8,
    /// Number of power states (0-based).
    pub npss: u8,
    /// Keep alive support (100 ms units).
    pub kas: u16,
    /// SQ entry size (min in low nibble, max in high nibble).
    pub sqes: u8,
    /// CQ entry size.
    pub cqes: u8,
    /// Maximum outstanding commands.
    pub maxcmd: u16,
    /// Number of namespaces.
    pub nn: u32,
    /// Optional NVM command support.
    pub oncs: u16,
    /// Fused operation support.
    pub fuses: u16,
    /// Format NVM attributes.
    pub fna: u8,
    /// Volatile write cache.
    pub vwc: u8,
    /// Atomic write unit normal.
    pub awun: u16,
    /// Atomic write unit power fail.
    pub awupf: u16,
    /// Atomic compare and write unit.
    pub acwu: u16,
    /// SGL support.
    pub sgls: u32,
    /// NVM subsystem NQN.
    pub subnqn: String,
    /// Power state descriptors (`npss + 1` of them).
    pub power_states: Vec<PowerState>,
}

impl IdentifyController {
    /// Parses a 4096-byte Identify Controller page.
    pub fn parse(b: &[u8]) -> Self {
        let npss = u8_at(b, 263);
        let power_states = (0..=usize::from(npss))
            .map(|i| {
                let o = 2048 + 32 * i;
                let flags = u8_at(b, o + 3);
                PowerState {
                    mp: u16_at(b, o),
                    mxps: flags & 1 != 0,
                    nops: flags & 2 != 0,
                    enlat: u32_at(b, o + 4),
                    exlat: u32_at(b, o + 8),
                    rrt: u8_at(b, o + 12) & 0x1f,
                    rrl: u8_at(b, o + 13) & 0x1f,
                    rwt: u8_at(b, o + 14) & 0x1f,
                    rwl: u8_at(b, o + 15) & 0x1f,
                    idlp: u16_at(b, o + 16),
                    actp: u16_at(b, o + 20),
                }
            })
            .collect();
        Self {
            vid: u16_at(b, 0),
            ssvid: u16_at(b, 2),
            sn: text_at(b, 4, 20),
            mn: text_at(b, 24, 40),
            fr: text_at(b, 64, 8),
            rab: u8_at(b, 72),
            ieee: bytes_at::<3>(b, 73),
            cmic: u8_at(b, 76),
            mdts: u8_at(b, 77),
            cntlid: u16_at(b, 78),
            ver: u32_at(b, 80),
            oaes: u32_at(b, 92),
            ctratt: u32_at(b, 96),
            oacs: u16_at(b, 256),
            acl: u8_at(b, 258),
            aerl: u8_at(b, 259),
            frmw: u8_at(b, 260),
            lpa: u8_at(b, 261),
            elpe: u8_at(b, 262),
            npss,
            kas: u16_at(b, 320),
            sqes: u8_at(b, 512),
            cqes: u8_at(b, 513),
            maxcmd: u16_at(b, 514),
            nn: u32_at(b, 516),
            oncs: u16_at(b, 520),
            fuses: u16_at(b, 522),
            fna: u8_at(b, 524),
            vwc: u8_at(b, 525),
            awun: u16_at(b, 526),
            awupf: u16_at(b, 528),
            acwu: u16_at(b, 532),
            sgls: u32_at(b, 536),
            subnqn: text_at(b, 768, 256),
            power_states,
        }
    }

    /// Maximum data transfer size in bytes for a minimum page size, or `None` if unlimited.
    pub fn max_transfer(&self, mpsmin: u64) -> Option<u64> {
        if self.mdts == 0 {
            None
        } else {
            mpsmin.checked_shl(u32::from(self.mdts))
        }
    }

    /// Whether SGLs are supported for NVM commands.
    pub fn supports_sgl(&self) -> bool {
        self.sgls & 3 != 0
    }
}

/// One LBA format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbaFormat {
    /// Metadata size.
    pub ms: u16,
    /// LBA data size as a power of two.
    pub lbads: u8,
    /// Relative performance.
    pub rp: u8,
}

/// Identify Namespace data (CNS 00h).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace size in LBAs.
    pub nsze: u64,
    /// Namespace capacity.
    pub ncap: u64,
    /// Namespace utilization.
    pub nuse: u64,
    /// Namespace features.
    pub nsfeat: u8,
    /// Number of LBA formats (0-based).
    pub nlbaf: u8,
    /// Formatted LBA size.
    pub flbas: u8,
    /// Namespace multi-path I/O and sharing.
    pub nmic: u8,
    /// Reservation capabilities.
    pub rescap: u8,
    /// Deallocate logical block features.
    pub dlfeat: u8,
    /// Namespace atomic write unit normal.
    pub nawun: u16,
    /// Namespace atomic boundary size normal.
    pub nabsn: u16,
    /// Namespace atomic boundary offset.
    pub nabo: u16,
    /// Namespace atomic boundary size power fail.
    pub nabspf: u16,
    /// Maximum single source range length.
    pub mssrl: u16,
    /// Maximum copy length.
    pub mcl: u32,
    /// Maximum source range count (0-based).
    pub msrc: u8,
    /// Namespace globally unique identifier.
    pub nguid: [u8; 16],
    /// IEEE extended unique identifier.
    pub eui64: [u8; 8],
    /// LBA formats.
    pub lbaf: Vec<LbaFormat>,
}

impl IdentifyNamespace {
    /// Parses a 4096-byte Identify Namespace page.
    pub fn parse(b: &[u8]) -> Self {
        let nlbaf = u8_at(b, 25);
        let lbaf = (0..=usize::from(nlbaf.min(63)))
            .map(|i| {
                let o = 128 + 4 * i;
                LbaFormat {
                    ms: u16_at(b, o),
                    lbads: u8_at(b, o + 2),
                    rp: u8_at(b, o + 3) & 3,
                }
            })
            .collect();
        Self {
            nsze: u64_at(b, 0),
            ncap: u64_at(b, 8),
            nuse: u64_at(b, 16),
            nsfeat: u8_at(b, 24),
            nlbaf,
            flbas: u8_at(b, 26),
            nmic: u8_at(b, 30),
            rescap: u8_at(b, 31),
            dlfeat: u8_at(b, 33),
            nawun: u16_at(b, 34),
            nabsn: u16_at(b, 40),
            nabo: u16_at(b, 42),
            nabspf: u16_at(b, 44),
            mssrl: u16_at(b, 74),
            mcl: u32_at(b, 76),
            msrc: u8_at(b, 80),
            nguid: bytes_at::<16>(b, 104),
            eui64: bytes_at::<8>(b, 120),
            lbaf,
        }
    }

    /// Index of the LBA format in use.
    pub fn current_format(&self) -> usize {
        usize::from(self.flbas & 0xf) | (usize::from((self.flbas >> 5) & 3) << 4)
    }

    /// Bytes per LBA of the current format (512 if the format is unreadable).
    pub fn block_size(&self) -> u64 {
        self.lbaf
            .get(self.current_format())
            .and_then(|f| 1u64.checked_shl(u32::from(f.lbads)))
            .filter(|&s| s >= 512)
            .unwrap_or(512)
    }

    /// Whether this namespace is active (non-zero size).
    pub fn is_active(&self) -> bool {
        self.nsze != 0
    }
}

/// Parses a namespace list page (CNS 02h / Changed Namespace List log).
pub fn parse_ns_list(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32_at(c, 0))
        .take_while(|&n| n != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_fields_at_spec_offsets() {
        let mut b = vec![0u8; 4096];
        b[0..2].copy_from_slice(&0x4e58u16.to_le_bytes());
        b[4..9].copy_from_slice(b"SN123");
        b[9..24].fill(b' ');
        b[24..29].copy_from_slice(b"Model");
        b[77] = 5;
        b[80..84].copy_from_slice(&0x0002_0000u32.to_le_bytes());
        b[263] = 1;
        b[516..520].copy_from_slice(&64u32.to_le_bytes());
        b[536] = 1;
        b[768..776].copy_from_slice(b"nqn.test");
        b[2048 + 32..2048 + 34].copy_from_slice(&2500u16.to_le_bytes());
        let c = IdentifyController::parse(&b);
        assert_eq!(c.vid, 0x4e58);
        assert_eq!(c.sn, "SN123");
        assert_eq!(c.mn, "Model");
        assert_eq!(c.ver, 0x0002_0000);
        assert_eq!(c.nn, 64);
        assert!(c.supports_sgl());
        assert_eq!(c.subnqn, "nqn.test");
        assert_eq!(c.max_transfer(4096), Some(131_072));
        assert_eq!(c.power_states.len(), 2);
        assert_eq!(c.power_states[1].mp, 2500);
    }

    #[test]
    fn namespace_block_size_and_short_page() {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(&1024u64.to_le_bytes());
        b[25] = 1;
        b[26] = 1;
        b[128 + 2] = 9;
        b[132 + 2] = 12;
        let n = IdentifyNamespace::parse(&b);
        assert_eq!(n.nsze, 1024);
        assert_eq!(n.block_size(), 4096);
        assert!(n.is_active());
        let short = IdentifyNamespace::parse(&[1, 2, 3]);
        assert_eq!(short.block_size(), 512);
    }

    #[test]
    fn ns_list_stops_at_zero() {
        let mut b = vec![0u8; 32];
        b[0] = 1;
        b[4] = 3;
        b[12] = 9;
        assert_eq!(parse_ns_list(&b), vec![1, 3]);
    }
}
