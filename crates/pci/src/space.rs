//! The 4 KiB configuration space: register bytes plus two per-byte masks, crosvm style.
//!
//! * `wmask`: bits the client may change. A write merges `(old & !wmask) | (new & wmask)`,
//!   so read-only fields (ids, class, capability headers, BAR type bits) silently keep their
//!   value, exactly like hardware.
//! * `w1c`: write-1-to-clear status bits (status register errors, PCIe device status).
//!
//! BAR sizing falls out of the masks: a BAR's writable bits are its address bits above the
//! size, so writing `0xffff_ffff` reads back `!(size - 1) | type bits`.
//!
//! Capabilities are placed like libvfio-user's `cap_place()` (first at 0x40, each next at
//! `round_up(prev + size, 4)`), giving SPDK's PM@0x40 -> PCIe@0x48 -> MSI-X@0x84.
//!
//! Side effects of writes (command register, MSI-X control, initiate-FLR) are reported as
//! [`WriteEffects`]; this module never calls out.

use rustix::io::Errno;

use crate::config::{BarRole, PciConfig, CONFIG_SPACE_SIZE};

/// Command register offset.
pub const PCI_COMMAND: usize = 0x04;
/// Status register offset.
pub const PCI_STATUS: usize = 0x06;
/// First BAR register offset.
pub const PCI_BAR0: usize = 0x10;
/// Expansion ROM BAR offset.
pub const PCI_ROM: usize = 0x30;
/// Capability pointer offset.
pub const PCI_CAP_PTR: usize = 0x34;
/// Interrupt line offset.
pub const PCI_INTERRUPT_LINE: usize = 0x3c;
/// Interrupt pin offset.
pub const PCI_INTERRUPT_PIN: usize = 0x3d;

/// Command: memory space enable.
pub const CMD_MEMORY: u16 = 1 << 1;
/// Command: bus master enable.
pub const CMD_BUS_MASTER: u16 = 1 << 2;
/// Command: parity error response.
pub const CMD_PARITY: u16 = 1 << 6;
/// Command: SERR# enable.
pub const CMD_SERR: u16 = 1 << 8;
/// Command: INTx disable.
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
/// Status: interrupt status (INTx asserted).
pub const STATUS_INTX: u16 = 1 << 3;
/// Status: capability list present.
pub const STATUS_CAP_LIST: u16 = 1 << 4;

/// Capability id: Power Management.
pub const CAP_ID_PM: u8 = 0x01;
/// Capability id: PCI Express.
pub const CAP_ID_PCIE: u8 = 0x10;
/// Capability id: MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Size of the PM capability.
pub const CAP_PM_SIZE: usize = 8;
/// Size of the PCIe capability (v2, endpoint).
pub const CAP_PCIE_SIZE: usize = 0x3c;
/// Size of the MSI-X capability.
pub const CAP_MSIX_SIZE: usize = 12;

/// PCIe device capabilities: role-based error reporting.
pub const PCIE_DEVCAP_RER: u32 = 1 << 15;
/// PCIe device capabilities: function level reset capable.
pub const PCIE_DEVCAP_FLR: u32 = 1 << 28;
/// PCIe device control: initiate function level reset (always reads 0).
pub const PCIE_DEVCTL_FLR: u16 = 1 << 15;
/// PCIe device capabilities 2: completion timeout disable supported.
pub const PCIE_DEVCAP2_CTDS: u32 = 1 << 4;
/// MSI-X message control: function mask.
pub const MSIX_CTL_MASKALL: u16 = 1 << 14;
/// MSI-X message control: enable.
pub const MSIX_CTL_ENABLE: u16 = 1 << 15;

// Offsets inside the PCIe capability.
const PCIE_FLAGS: usize = 2;
const PCIE_DEVCAP: usize = 4;
const PCIE_DEVCTL: usize = 8;
const PCIE_DEVSTA: usize = 0xa;
const PCIE_LNKCAP: usize = 0xc;
const PCIE_LNKCTL: usize = 0x10;
const PCIE_LNKSTA: usize = 0x12;
const PCIE_DEVCAP2: usize = 0x24;
const PCIE_DEVCTL2: usize = 0x28;
const PCIE_LNKCAP2: usize = 0x2c;
const PCIE_LNKCTL2: usize = 0x30;

/// Where the capabilities ended up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapLayout {
    /// Offset of the PM capability.
    pub pm: Option<usize>,
    /// Offset of the PCIe capability.
    pub pcie: Option<usize>,
    /// Offset of the MSI-X capability.
    pub msix: Option<usize>,
}

/// What a config write changed, for the endpoint to act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteEffects {
    /// Command register `(old, new)` when it changed.
    pub command: Option<(u16, u16)>,
    /// MSI-X message control `(old, new)` when it changed.
    pub msix_control: Option<(u16, u16)>,
    /// The client wrote 1 to PCIe Device Control "Initiate FLR" (FLR capable functions only).
    pub flr: bool,
}

/// Emulated configuration space.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    regs: Vec<u8>,
    init: Vec<u8>,
    wmask: Vec<u8>,
    w1c: Vec<u8>,
    caps: CapLayout,
    flr_capable: bool,
}

impl ConfigSpace {
    /// Lays out the config space for `cfg` (reset values, masks, capability chain).
    pub fn new(cfg: &PciConfig) -> Self {
        let mut b = Builder {
            regs: vec![0; CONFIG_SPACE_SIZE],
            wmask: vec![0; CONFIG_SPACE_SIZE],
            w1c: vec![0; CONFIG_SPACE_SIZE],
        };
        b.set16(0x00, cfg.vendor_id);
        b.set16(0x02, cfg.device_id);
        b.wm16(
            PCI_COMMAND,
            CMD_MEMORY | CMD_BUS_MASTER | CMD_PARITY | CMD_SERR | CMD_INTX_DISABLE,
        );
        // Status: detected parity, signalled SERR, master/target aborts, data parity are W1C.
        b.w1c16(PCI_STATUS, 0xf900);
        b.set8(0x08, cfg.revision);
        b.set8(0x09, cfg.prog_if);
        b.set8(0x0a, cfg.subclass);
        b.set8(0x0b, cfg.class);
        b.wm8(0x0c, 0xff); // cache line size
        b.set16(0x2c, cfg.subsystem_vendor_id);
        b.set16(0x2e, cfg.subsystem_id);
        b.wm8(PCI_INTERRUPT_LINE, 0xff);
        b.set8(PCI_INTERRUPT_PIN, cfg.intx_pin.register());

        for (i, bar) in cfg.bars.iter().enumerate() {
            let Some(bar) = bar else { continue };
            let off = PCI_BAR0 + 4 * i;
            // size is a power of two >= 16 (validated by the builder).
            let addr_mask = !(bar.size.wrapping_sub(1));
            match bar.role {
                BarRole::Upper64 => b.wm32(off, (addr_mask >> 32) as u32),
                _ => {
                    let mut flags = 0u32;
                    if bar.is_64bit {
                        flags |= 0b100;
                    }
                    if bar.prefetchable {
                        flags |= 0b1000;
                    }
                    b.set32(off, flags);
                    b.wm32(off, (addr_mask as u32) & 0xffff_fff0);
                }
            }
        }
        if let Some(size) = cfg.rom_size {
            // Address bits above the size, plus the enable bit.
            let mask = (!(size.wrapping_sub(1)) as u32) & 0xffff_f800;
            b.wm32(PCI_ROM, mask | 1);
        }

        let mut caps = CapLayout::default();
        let mut next = 0x40usize;
        let mut prev: Option<usize> = None;
        let link = |b: &mut Builder, at: usize, id: u8, prev: &mut Option<usize>| {
            b.set8(at, id);
            match *prev {
                None => b.set8(PCI_CAP_PTR, at as u8),
                Some(p) => b.set8(p + 1, at as u8),
            }
            *prev = Some(at);
        };
        if cfg.pm {
            let at = next;
            link(&mut b, at, CAP_ID_PM, &mut prev);
            b.set16(at + 2, 0x0003); // PMC: version 3, no D1/D2, no PME
            b.set16(at + 4, 1 << 3); // PMCSR: D0, No_Soft_Reset
            b.wm16(at + 4, 0x0003); // power state
            caps.pm = Some(at);
            next = (at + CAP_PM_SIZE).next_multiple_of(4);
        }
        let flr_capable = matches!(cfg.pcie_flr, Some(true));
        if let Some(flr) = cfg.pcie_flr {
            let at = next;
            link(&mut b, at, CAP_ID_PCIE, &mut prev);
            b.set16(at + PCIE_FLAGS, 0x0002); // version 2, PCI Express endpoint
            let mut devcap = PCIE_DEVCAP_RER; // max payload 128 B
            if flr {
                devcap |= PCIE_DEVCAP_FLR;
            }
            b.set32(at + PCIE_DEVCAP, devcap);
            // Relaxed ordering, no snoop, max read request 512 B.
            b.set16(at + PCIE_DEVCTL, 0x2810);
            // Error reporting enables, relaxed ordering, max payload, no snoop, max read req.
            b.wm16(at + PCIE_DEVCTL, 0x78ff);
            b.w1c16(at + PCIE_DEVSTA, 0x000f);
            b.set32(at + PCIE_LNKCAP, 0x0000_0011); // 2.5 GT/s, x1
            b.wm16(at + PCIE_LNKCTL, 0x00c3); // ASPM control, common clock, extended sync
            b.set16(at + PCIE_LNKSTA, 0x0011); // 2.5 GT/s, x1
            b.set32(at + PCIE_DEVCAP2, PCIE_DEVCAP2_CTDS);
            b.wm16(at + PCIE_DEVCTL2, 0x0010); // completion timeout disable
            b.set32(at + PCIE_LNKCAP2, 0x0000_0002); // supports 2.5 GT/s
            b.set16(at + PCIE_LNKCTL2, 0x0001); // target link speed 2.5 GT/s
            caps.pcie = Some(at);
            next = (at + CAP_PCIE_SIZE).next_multiple_of(4);
        }
        if let Some(m) = cfg.msix {
            let at = next;
            link(&mut b, at, CAP_ID_MSIX, &mut prev);
            b.set16(at + 2, m.vectors.saturating_sub(1));
            b.wm16(at + 2, MSIX_CTL_MASKALL | MSIX_CTL_ENABLE);
            // Offsets are page aligned, so the BIR bits are free.
            b.set32(at + 4, (m.table_offset as u32) | u32::from(m.table_bar));
            b.set32(at + 8, (m.pba_offset as u32) | u32::from(m.pba_bar));
            caps.msix = Some(at);
        }
        if prev.is_some() {
            b.set16(PCI_STATUS, STATUS_CAP_LIST);
        }
        Self {
            init: b.regs.clone(),
            regs: b.regs,
            wmask: b.wmask,
            w1c: b.w1c,
            caps,
            flr_capable,
        }
    }

    /// Where the capabilities are.
    pub fn caps(&self) -> CapLayout {
        self.caps
    }

    /// Restores every register to its reset value (FLR, device reset).
    pub fn reset(&mut self) {
        self.regs.copy_from_slice(&self.init);
    }

    /// Reads `data.len()` bytes at `offset`. Any size and alignment inside the 4 KiB is
    /// allowed (QEMU reads 256 bytes at once). Out of range: `EINVAL`.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        let range = checked_range(offset, data.len())?;
        let src = self.regs.get(range).ok_or(Errno::INVAL)?;
        data.copy_from_slice(src);
        Ok(())
    }

    /// Applies a client write. Writes must be 1, 2 or 4 bytes and must not cross a dword
    /// boundary (`EINVAL`), and lie inside the 4 KiB (`EINVAL`). Read-only bits keep their
    /// value; W1C bits clear where the client writes 1.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<WriteEffects, Errno> {
        if !matches!(data.len(), 1 | 2 | 4) {
            return Err(Errno::INVAL);
        }
        let range = checked_range(offset, data.len())?;
        let start = range.start;
        if start % 4 + data.len() > 4 {
            return Err(Errno::INVAL);
        }
        let old_cmd = self.read16(PCI_COMMAND);
        let msix_ctl_off = self.caps.msix.map(|m| m + 2);
        let old_msix = msix_ctl_off.map(|o| self.read16(o));

        let mut flr = false;
        if let (Some(pcie), true) = (self.caps.pcie, self.flr_capable) {
            let flr_byte = pcie + PCIE_DEVCTL + 1;
            if let Some(v) = flr_byte
                .checked_sub(start)
                .and_then(|i| data.get(i))
                .copied()
            {
                flr = v & 0x80 != 0;
            }
        }
        for (i, &v) in data.iter().enumerate() {
            let at = start + i; // < CONFIG_SPACE_SIZE: checked_range above
            let (Some(r), Some(&wm), Some(&wc)) =
                (self.regs.get_mut(at), self.wmask.get(at), self.w1c.get(at))
            else {
                return Err(Errno::INVAL);
            };
            *r = ((*r & !wm) | (v & wm)) & !(v & wc);
        }
        let new_cmd = self.read16(PCI_COMMAND);
        let mut fx = WriteEffects {
            flr,
            ..WriteEffects::default()
        };
        if new_cmd != old_cmd {
            fx.command = Some((old_cmd, new_cmd));
        }
        if let (Some(off), Some(old)) = (msix_ctl_off, old_msix) {
            let new = self.read16(off);
            if new != old {
                fx.msix_control = Some((old, new));
            }
        }
        Ok(fx)
    }

    /// Command register.
    pub fn command(&self) -> u16 {
        self.read16(PCI_COMMAND)
    }

    /// MSI-X message control (0 without MSI-X).
    pub fn msix_control(&self) -> u16 {
        self.caps.msix.map_or(0, |m| self.read16(m + 2))
    }

    /// Little-endian 16-bit register read (0 when out of range).
    pub fn read16(&self, off: usize) -> u16 {
        let mut b = [0u8; 2];
        if let Some(s) = self.regs.get(off..off.saturating_add(2)) {
            b.copy_from_slice(s);
        }
        u16::from_le_bytes(b)
    }

    /// Little-endian 32-bit register read (0 when out of range).
    pub fn read32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        if let Some(s) = self.regs.get(off..off.saturating_add(4)) {
            b.copy_from_slice(s);
        }
        u32::from_le_bytes(b)
    }
}

fn checked_range(offset: u64, len: usize) -> Result<std::ops::Range<usize>, Errno> {
    let start = usize::try_from(offset).map_err(|_| Errno::INVAL)?;
    let end = start.checked_add(len).ok_or(Errno::INVAL)?;
    if end > CONFIG_SPACE_SIZE {
        return Err(Errno::INVAL);
    }
    Ok(start..end)
}

/// Layout helper: all offsets are compile-time constants or capability offsets below 0x100,
/// so the `get_mut` misses below cannot happen; they are ignored rather than unwrapped.
struct Builder {
    regs: Vec<u8>,
    wmask: Vec<u8>,
    w1c: Vec<u8>,
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(off..off.saturating_add(bytes.len())) {
        dst.copy_from_slice(bytes);
    }
}

impl Builder {
    fn set8(&mut self, off: usize, v: u8) {
        put(&mut self.regs, off, &[v]);
    }
    fn set16(&mut self, off: usize, v: u16) {
        put(&mut self.regs, off, &v.to_le_bytes());
    }
    fn set32(&mut self, off: usize, v: u32) {
        put(&mut self.regs, off, &v.to_le_bytes());
    }
    fn wm8(&mut self, off: usize, v: u8) {
        put(&mut self.wmask, off, &[v]);
    }
    fn wm16(&mut self, off: usize, v: u16) {
        put(&mut self.wmask, off, &v.to_le_bytes());
    }
    fn wm32(&mut self, off: usize, v: u32) {
        put(&mut self.wmask, off, &v.to_le_bytes());
    }
    fn w1c16(&mut self, off: usize, v: u16) {
        put(&mut self.w1c, off, &v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BarConfig, IntxPin, MsixConfig};

    fn spdk() -> PciConfig {
        PciConfig::builder()
            .ids(0x4e58, 0x0001)
            .subsystem(0x4e58, 0)
            .class(0x01, 0x08, 0x02)
            .bar(0, BarConfig::memory32(0x4000))
            .msix(MsixConfig {
                vectors: 512,
                table_bar: 4,
                pba_bar: 5,
            })
            .build()
            .unwrap()
    }

    fn w32(s: &mut ConfigSpace, off: u64, v: u32) -> WriteEffects {
        s.write(off, &v.to_le_bytes()).unwrap()
    }

    fn r32(s: &ConfigSpace, off: u64) -> u32 {
        let mut b = [0u8; 4];
        s.read(off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    fn w16(s: &mut ConfigSpace, off: u64, v: u16) -> WriteEffects {
        s.write(off, &v.to_le_bytes()).unwrap()
    }

    #[test]
    fn header_identity_matches_spdk() {
        let s = ConfigSpace::new(&spdk());
        assert_eq!(r32(&s, 0), 0x0001_4e58);
        assert_eq!(r32(&s, 8), 0x0108_0200);
        assert_eq!(r32(&s, 0x2c), 0x0000_4e58);
        assert_eq!(s.read16(PCI_STATUS) & STATUS_CAP_LIST, STATUS_CAP_LIST);
        assert_eq!(s.regs[PCI_INTERRUPT_PIN], 1);
        assert_eq!(s.regs[0x0e], 0, "type 0 header");
    }

    #[test]
    fn capability_chain_is_pm_pcie_msix_at_spdk_offsets() {
        let s = ConfigSpace::new(&spdk());
        // The values the libvfio-user issue #354 QEMU trace shows.
        assert_eq!(s.regs[PCI_CAP_PTR], 0x40);
        assert_eq!(s.read16(0x40), 0x4801);
        assert_eq!(s.read16(0x48), 0x8410);
        assert_eq!(s.read16(0x84), 0x0011);
        // Walk the chain generically.
        let mut seen = Vec::new();
        let mut at = usize::from(s.regs[PCI_CAP_PTR]);
        while at != 0 {
            assert!(seen.len() < 48, "loop in capability chain");
            seen.push((s.regs[at], at));
            at = usize::from(s.regs[at + 1]);
        }
        assert_eq!(
            seen,
            vec![(CAP_ID_PM, 0x40), (CAP_ID_PCIE, 0x48), (CAP_ID_MSIX, 0x84)]
        );
        assert_eq!(s.read16(0x4a), 0x0002, "PCIe v2 endpoint");
        let devcap = s.read32(0x4c);
        assert_ne!(devcap & PCIE_DEVCAP_FLR, 0);
        assert_ne!(devcap & PCIE_DEVCAP_RER, 0);
        assert_eq!(
            s.read32(0x48 + PCIE_DEVCAP2) & PCIE_DEVCAP2_CTDS,
            PCIE_DEVCAP2_CTDS
        );
        assert_eq!(s.read16(0x86), 511, "table size N-1");
        assert_eq!(s.read32(0x88), 4, "table BIR 4 offset 0");
        assert_eq!(s.read32(0x8c), 5, "PBA BIR 5 offset 0");
        assert_eq!(s.read16(0x44) & (1 << 3), 1 << 3, "No_Soft_Reset");
        // No extended capabilities.
        assert_eq!(r32(&s, 0x100), 0);
    }

    #[test]
    fn chain_without_pm_and_pcie_starts_with_msix() {
        let cfg = PciConfig::builder()
            .ids(0x1b36, 0x0010)
            .pm(false)
            .pcie(None)
            .msix(MsixConfig {
                vectors: 4,
                table_bar: 2,
                pba_bar: 3,
            })
            .build()
            .unwrap();
        let s = ConfigSpace::new(&cfg);
        assert_eq!(s.regs[PCI_CAP_PTR], 0x40);
        assert_eq!(s.read16(0x40), 0x0011);
        let none = ConfigSpace::new(
            &PciConfig::builder()
                .ids(0x1b36, 0x0010)
                .pm(false)
                .pcie(None)
                .build()
                .unwrap(),
        );
        assert_eq!(none.regs[PCI_CAP_PTR], 0);
        assert_eq!(none.read16(PCI_STATUS) & STATUS_CAP_LIST, 0);
    }

    #[test]
    fn read_only_header_fields_ignore_writes() {
        let mut s = ConfigSpace::new(&spdk());
        let before = s.regs.clone();
        for off in [0u64, 8, 0x2c, 0x34, 0x0c & !3] {
            w32(&mut s, off, 0xdead_beef);
        }
        w16(&mut s, 0x0e, 0xffff); // header type, BIST
        assert_eq!(r32(&s, 0), 0x0001_4e58);
        assert_eq!(r32(&s, 8), 0x0108_0200);
        assert_eq!(r32(&s, 0x2c), 0x0000_4e58);
        assert_eq!(s.regs[PCI_CAP_PTR], 0x40);
        assert_eq!(s.regs[0x0c], 0xef, "cache line size is RW");
        assert_eq!(s.regs[0x0d], 0, "latency timer RO on PCIe");
        assert_eq!(s.regs[0x0e], before[0x0e]);
        assert_eq!(s.regs[0x0f], before[0x0f]);
    }

    #[test]
    fn read_only_capability_fields_ignore_writes() {
        let mut s = ConfigSpace::new(&spdk());
        let before = s.regs.clone();
        w32(&mut s, 0x40, 0xffff_ffff); // PM id/next/PMC
        w32(&mut s, 0x48, 0xffff_ffff); // PCIe id/next/flags
        w32(&mut s, 0x4c, 0); // device capabilities
        w32(&mut s, 0x48 + PCIE_LNKCAP as u64, 0);
        w32(&mut s, 0x84, 0x0000_ffff); // MSI-X id/next, table size (RO) + ctl bits zero
        w32(&mut s, 0x88, 0xffff_ffff); // table offset/BIR
        w32(&mut s, 0x8c, 0xffff_ffff); // PBA offset/BIR
        w32(&mut s, 0x100, 0xffff_ffff); // extended space
        w32(&mut s, 0xffc, 0xffff_ffff);
        for off in [
            0x40..0x44,
            0x48..0x50,
            0x54..0x58,
            0x84..0x90,
            0x100..0x104,
            0xffc..0x1000,
        ] {
            assert_eq!(&s.regs[off.clone()], &before[off], "RO range changed");
        }
        assert_eq!(s.read16(0x86), 511);
    }

    #[test]
    fn command_register_mask_and_effects() {
        let mut s = ConfigSpace::new(&spdk());
        let fx = w16(&mut s, PCI_COMMAND as u64, 0xffff);
        let want = CMD_MEMORY | CMD_BUS_MASTER | CMD_PARITY | CMD_SERR | CMD_INTX_DISABLE;
        assert_eq!(s.command(), want);
        assert_eq!(fx.command, Some((0, want)));
        let fx = w16(&mut s, PCI_COMMAND as u64, want);
        assert_eq!(fx.command, None, "no change, no effect");
        let fx = s.write(PCI_COMMAND as u64, &[0]).unwrap();
        assert_eq!(fx.command, Some((want, want & 0xff00)));
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut s = ConfigSpace::new(&spdk());
        s.regs[PCI_STATUS + 1] = 0xf9; // errors latched
        w16(&mut s, PCI_STATUS as u64, 0x2000); // clear master abort only
        assert_eq!(s.read16(PCI_STATUS), 0xd900 | STATUS_CAP_LIST);
        w16(&mut s, PCI_STATUS as u64, 0xffff);
        assert_eq!(s.read16(PCI_STATUS), STATUS_CAP_LIST, "cap-list bit is RO");
        // PCIe device status W1C.
        s.regs[0x48 + PCIE_DEVSTA] = 0x2f; // transactions pending (RO) + 4 error bits
        w16(&mut s, (0x48 + PCIE_DEVSTA) as u64, 0x0005);
        assert_eq!(s.regs[0x48 + PCIE_DEVSTA], 0x2a);
        w16(&mut s, (0x48 + PCIE_DEVSTA) as u64, 0xffff);
        assert_eq!(s.regs[0x48 + PCIE_DEVSTA], 0x20);
    }

    #[test]
    fn bar_sizing_32bit() {
        let mut s = ConfigSpace::new(&spdk());
        w32(&mut s, 0x10, 0xffff_ffff);
        assert_eq!(
            r32(&s, 0x10),
            0xffff_c000,
            "16 KiB, 32-bit, non-prefetchable"
        );
        w32(&mut s, 0x10, 0xfebf_0000);
        assert_eq!(r32(&s, 0x10), 0xfebf_0000);
        w32(&mut s, 0x10, 0x1234_5678);
        assert_eq!(r32(&s, 0x10), 0x1234_4000, "low bits below the size are RO");
        // Unimplemented BARs stay 0.
        for bar in [1u64, 2, 3] {
            w32(&mut s, 0x10 + 4 * bar, 0xffff_ffff);
            assert_eq!(r32(&s, 0x10 + 4 * bar), 0);
        }
        // MSI-X BARs size like any other.
        w32(&mut s, 0x20, 0xffff_ffff);
        assert_eq!(r32(&s, 0x20), 0xffff_e000);
        w32(&mut s, 0x24, 0xffff_ffff);
        assert_eq!(r32(&s, 0x24), 0xffff_f000);
    }

    #[test]
    fn bar_sizing_64bit_prefetchable() {
        let cfg = PciConfig::builder()
            .ids(0x1b36, 0x0010)
            .bar(2, BarConfig::memory64(1 << 33).prefetchable(true))
            .build()
            .unwrap();
        let mut s = ConfigSpace::new(&cfg);
        assert_eq!(r32(&s, 0x18), 0b1100);
        w32(&mut s, 0x18, 0xffff_ffff);
        w32(&mut s, 0x1c, 0xffff_ffff);
        assert_eq!(r32(&s, 0x18), 0x0000_000c, "below 8 GiB all RO");
        assert_eq!(r32(&s, 0x1c), 0xffff_fffe);
        let size = !((u64::from(r32(&s, 0x1c)) << 32) | u64::from(r32(&s, 0x18) & !0xf)) + 1;
        assert_eq!(size, 1 << 33);

        let cfg = PciConfig::builder()
            .ids(0x1b36, 0x0010)
            .bar(0, BarConfig::memory64(0x1000))
            .build()
            .unwrap();
        let mut s = ConfigSpace::new(&cfg);
        w32(&mut s, 0x10, 0xffff_ffff);
        w32(&mut s, 0x14, 0xffff_ffff);
        assert_eq!(r32(&s, 0x10), 0xffff_f004);
        assert_eq!(r32(&s, 0x14), 0xffff_ffff);
    }

    #[test]
    fn rom_bar_sizing_and_enable() {
        let cfg = PciConfig::builder()
            .ids(0x1b36, 0x0010)
            .rom(0x10000)
            .build()
            .unwrap();
        let mut s = ConfigSpace::new(&cfg);
        w32(&mut s, 0x30, 0xffff_fffe);
        assert_eq!(r32(&s, 0x30), 0xffff_0000);
        w32(&mut s, 0x30, 0xfeb0_0001);
        assert_eq!(r32(&s, 0x30), 0xfeb0_0001);
        // Without a ROM the register is hard-wired to zero.
        let mut s = ConfigSpace::new(&spdk());
        w32(&mut s, 0x30, 0xffff_ffff);
        assert_eq!(r32(&s, 0x30), 0);
    }

    #[test]
    fn msix_control_only_enable_and_maskall_are_writable() {
        let mut s = ConfigSpace::new(&spdk());
        let fx = w16(&mut s, 0x86, 0xffff);
        assert_eq!(s.msix_control(), 511 | MSIX_CTL_ENABLE | MSIX_CTL_MASKALL);
        assert_eq!(
            fx.msix_control,
            Some((511, 511 | MSIX_CTL_ENABLE | MSIX_CTL_MASKALL))
        );
        // Byte write to the upper half only.
        let fx = s.write(0x87, &[0x80]).unwrap();
        assert_eq!(s.msix_control(), 511 | MSIX_CTL_ENABLE);
        assert!(fx.msix_control.is_some());
    }

    #[test]
    fn pcie_devctl_mask_and_flr_bit() {
        let mut s = ConfigSpace::new(&spdk());
        let devctl = (0x48 + PCIE_DEVCTL) as u64;
        assert_eq!(s.read16(0x50), 0x2810);
        let fx = w16(&mut s, devctl, 0x7fff);
        assert!(!fx.flr);
        assert_eq!(s.read16(0x50), 0x78ff, "phantom/aux/ext-tag are RO 0");
        let fx = w16(&mut s, devctl, 0x8000 | 0x2810);
        assert!(fx.flr);
        assert_eq!(s.read16(0x50) & PCIE_DEVCTL_FLR, 0, "initiate FLR reads 0");
        // Byte write of the high byte triggers too; a dword write at the cap base does not.
        assert!(s.write(devctl + 1, &[0x80]).unwrap().flr);
        assert!(!w32(&mut s, 0x48, 0xffff_ffff).flr);
        assert!(w32(&mut s, devctl, 0x0000_8000).flr);
    }

    #[test]
    fn flr_bit_ignored_without_flr_capability() {
        let cfg = PciConfig::builder()
            .ids(0x1b36, 0x0010)
            .pcie(Some(false))
            .build()
            .unwrap();
        let mut s = ConfigSpace::new(&cfg);
        assert_eq!(s.read32(0x4c) & PCIE_DEVCAP_FLR, 0);
        assert!(!w16(&mut s, 0x50, 0x8000).flr);
    }

    #[test]
    fn reset_restores_defaults() {
        let mut s = ConfigSpace::new(&spdk());
        let pristine = s.regs.clone();
        w16(&mut s, PCI_COMMAND as u64, 0x0406);
        w32(&mut s, 0x10, 0xfebf_0000);
        w16(&mut s, 0x86, 0xc000);
        s.write(PCI_INTERRUPT_LINE as u64, &[11]).unwrap();
        assert_ne!(s.regs, pristine);
        s.reset();
        assert_eq!(s.regs, pristine);
    }

    #[test]
    fn out_of_range_and_misshapen_accesses_fail_with_einval() {
        let mut s = ConfigSpace::new(&spdk());
        let mut b4 = [0u8; 4];
        assert_eq!(s.read(0x1000, &mut b4), Err(Errno::INVAL));
        assert_eq!(s.read(0xffe, &mut b4), Err(Errno::INVAL));
        assert_eq!(s.read(u64::MAX, &mut b4), Err(Errno::INVAL));
        assert_eq!(s.read(u64::MAX - 1, &mut [0u8; 1]), Err(Errno::INVAL));
        assert_eq!(s.write(0x1000, &[0]), Err(Errno::INVAL));
        assert_eq!(s.write(0xffe, &[0; 4]), Err(Errno::INVAL));
        assert_eq!(s.write(u64::MAX, &[0]), Err(Errno::INVAL));
        // sizes other than 1/2/4 and dword-crossing writes
        assert_eq!(s.write(0x10, &[0; 3]), Err(Errno::INVAL));
        assert_eq!(s.write(0x10, &[0; 8]), Err(Errno::INVAL));
        assert_eq!(s.write(0x10, &[]), Err(Errno::INVAL));
        assert_eq!(s.write(0x13, &[0; 2]), Err(Errno::INVAL));
        assert_eq!(s.write(0x12, &[0; 4]), Err(Errno::INVAL));
        // Unaligned but dword-contained writes and big reads are fine.
        s.write(0x11, &[0xff]).unwrap();
        s.write(0x12, &[0xff, 0xff]).unwrap();
        let mut all = [0u8; 256];
        s.read(0, &mut all).unwrap();
        assert_eq!(&all[0..4], &[0x58, 0x4e, 0x01, 0x00]);
        let mut whole = vec![0u8; CONFIG_SPACE_SIZE];
        s.read(0, &mut whole).unwrap();
        s.read(0xfff, &mut [0u8; 1]).unwrap();
    }

    #[test]
    fn pm_power_state_writable_rest_ro() {
        let mut s = ConfigSpace::new(&spdk());
        w16(&mut s, 0x44, 0xffff);
        assert_eq!(s.read16(0x44), 0x0003 | (1 << 3));
        w16(&mut s, 0x44, 0);
        assert_eq!(s.read16(0x44), 1 << 3);
    }

    #[test]
    fn interrupt_line_rw_pin_ro() {
        let cfg = PciConfig::builder()
            .ids(0x1b36, 0x0010)
            .intx_pin(IntxPin::None)
            .build()
            .unwrap();
        let mut s = ConfigSpace::new(&cfg);
        w16(&mut s, 0x3c, 0xffff);
        assert_eq!(s.regs[0x3c], 0xff);
        assert_eq!(s.regs[0x3d], 0);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn configs() -> Vec<PciConfig> {
            vec![
                spdk(),
                PciConfig::builder()
                    .ids(0x1b36, 0x0010)
                    .pm(false)
                    .bar(0, BarConfig::memory64(1 << 20).prefetchable(true))
                    .bar(3, BarConfig::memory32(16))
                    .rom(0x4000)
                    .msix(MsixConfig {
                        vectors: 3,
                        table_bar: 2,
                        pba_bar: 2,
                    })
                    .build()
                    .unwrap(),
            ]
        }

        proptest! {
            /// Whatever a client writes, read-only bits keep their reset value, the FLR bit
            /// reads 0, written writable bits take the written value, and misshapen writes
            /// change nothing.
            #[test]
            fn writes_respect_masks(
                which in 0usize..2,
                ops in proptest::collection::vec((0u64..0x1010, 0usize..9, any::<u32>()), 1..200),
            ) {
                let cfg = &configs()[which];
                let mut s = ConfigSpace::new(cfg);
                for (off, len, val) in ops {
                    let bytes = &val.to_le_bytes().repeat(2)[..len];
                    let before = s.regs.clone();
                    match s.write(off, bytes) {
                        Ok(_) => {
                            for (i, &v) in bytes.iter().enumerate() {
                                let at = off as usize + i;
                                prop_assert_eq!(s.regs[at] & s.wmask[at], v & s.wmask[at]);
                            }
                        }
                        Err(e) => {
                            prop_assert_eq!(e, Errno::INVAL);
                            prop_assert_eq!(&s.regs, &before);
                        }
                    }
                    for i in 0..CONFIG_SPACE_SIZE {
                        prop_assert_eq!(s.regs[i] & !s.wmask[i], s.init[i] & !s.wmask[i], "RO byte {:#x}", i);
                    }
                    if let Some(p) = s.caps.pcie {
                        prop_assert_eq!(s.read16(p + PCIE_DEVCTL) & PCIE_DEVCTL_FLR, 0);
                    }
                }
            }
        }
    }
}
