//! The MSI-X table and PBA as the endpoint serves them in their BARs.
//!
//! The table lives here (only the endpoint thread touches it); the per-vector mask bits
//! the *client writes* are mirrored into [`IrqShared`] so poll threads see them. The PBA is
//! read straight from the shared pending bitmap. Table entries reset to "masked" as the
//! spec demands, but that reset value does not mask delivery: only a client write of the
//! mask bit does (QEMU and Cloud Hypervisor never touch this table).

use rustix::io::Errno;

use crate::config::MsixLayout;
use crate::irq::{IrqShared, MaskSource};

/// Vector control: mask bit.
pub const MSIX_VECTOR_MASKED: u32 = 1;

/// MSI-X table state.
#[derive(Clone, Debug)]
pub struct MsixTable {
    layout: MsixLayout,
    /// 4 dwords per entry: address low, address high, data, vector control.
    entries: Vec<u32>,
}

impl MsixTable {
    /// A table in reset state (every vector masked, addresses and data zero).
    pub fn new(layout: MsixLayout) -> Self {
        let mut t = Self {
            layout,
            entries: vec![0; usize::from(layout.vectors) * 4],
        };
        t.reset();
        t
    }

    /// Layout of the table and PBA.
    pub fn layout(&self) -> &MsixLayout {
        &self.layout
    }

    /// Back to reset values.
    pub fn reset(&mut self) {
        for (i, d) in self.entries.iter_mut().enumerate() {
            *d = if i % 4 == 3 { MSIX_VECTOR_MASKED } else { 0 };
        }
    }

    /// Entry `v` as `(address, data, vector control)`.
    #[cfg(test)]
    pub fn entry(&self, v: u16) -> Option<(u64, u32, u32)> {
        let base = usize::from(v) * 4;
        let e = self.entries.get(base..base + 4)?;
        match e {
            [lo, hi, data, ctl] => Some(((u64::from(*hi) << 32) | u64::from(*lo), *data, *ctl)),
            _ => None,
        }
    }

    /// Reads table bytes at `offset` (relative to the table start). Any size inside the
    /// table; `EINVAL` outside.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::INVAL)?;
        if end > self.layout.table_size() {
            return Err(Errno::INVAL);
        }
        for (i, b) in data.iter_mut().enumerate() {
            // offset + i < table_size <= 32 KiB: no overflow.
            let at = offset + i as u64;
            let dword = self
                .entries
                .get((at / 4) as usize)
                .copied()
                .ok_or(Errno::INVAL)?;
            *b = dword
                .to_le_bytes()
                .get((at % 4) as usize)
                .copied()
                .unwrap_or(0);
        }
        Ok(())
    }

    /// Writes table bytes at `offset`: 4 or 8 bytes, naturally aligned (PCI spec), inside the
    /// table; otherwise `EINVAL`. Mask-bit changes are mirrored into `irq` (and an unmask
    /// delivers a pending vector).
    pub fn write_table(&mut self, offset: u64, data: &[u8], irq: &IrqShared) -> Result<(), Errno> {
        let len = data.len() as u64;
        if !(len == 4 || len == 8) || offset % len != 0 {
            return Err(Errno::INVAL);
        }
        let end = offset.checked_add(len).ok_or(Errno::INVAL)?;
        if end > self.layout.table_size() {
            return Err(Errno::INVAL);
        }
        for (k, chunk) in data.chunks_exact(4).enumerate() {
            let at = offset / 4 + k as u64;
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            let value = u32::from_le_bytes(b);
            let slot = self.entries.get_mut(at as usize).ok_or(Errno::INVAL)?;
            if at % 4 == 3 {
                // Vector control: only the mask bit is defined; the rest is reserved (RO 0).
                let masked = value & MSIX_VECTOR_MASKED != 0;
                *slot = value & MSIX_VECTOR_MASKED;
                let vector = (at / 4) as u32;
                irq.set_vector_masked(vector, MaskSource::Table, masked);
            } else if at % 4 == 0 {
                *slot = value & !0x3; // message address is dword aligned
            } else {
                *slot = value;
            }
        }
        Ok(())
    }

    /// Reads PBA bytes at `offset` (relative to the PBA start). Any size inside the PBA.
    pub fn read_pba(&self, offset: u64, data: &mut [u8], irq: &IrqShared) -> Result<(), Errno> {
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::INVAL)?;
        if end > self.layout.pba_size() {
            return Err(Errno::INVAL);
        }
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            let word = irq.pba_word((at / 8) as usize);
            *b = word
                .to_le_bytes()
                .get((at % 8) as usize)
                .copied()
                .unwrap_or(0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::tests::{count, Fds, SharedFds};
    use crate::irq::{FireOutcome, IRQ_MSIX};
    use std::sync::Arc;

    fn layout(vectors: u16) -> MsixLayout {
        MsixLayout {
            vectors,
            table_bar: 4,
            table_offset: 0,
            pba_bar: 5,
            pba_offset: 0,
        }
    }

    fn setup(vectors: u16) -> (MsixTable, Arc<IrqShared>, Arc<Fds>) {
        let irq = Arc::new(IrqShared::new(vectors, true));
        let fds = Arc::new(Fds::default());
        irq.set_route(Some(Box::new(SharedFds(fds.clone()))));
        (MsixTable::new(layout(vectors)), irq, fds)
    }

    #[test]
    fn reset_entries_read_masked() {
        let (t, _irq, _) = setup(4);
        let mut b = [0u8; 16];
        t.read_table(16, &mut b).unwrap();
        assert_eq!(b, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(t.entry(3), Some((0, 0, 1)));
        assert_eq!(t.entry(4), None);
    }

    #[test]
    fn table_write_programs_entry_and_masks() {
        let (mut t, irq, fds) = setup(4);
        let fd = fds.install(IRQ_MSIX, 2);
        irq.set_msix_control(true, false);
        t.write_table(32, &0xfee0_1003u32.to_le_bytes(), &irq)
            .unwrap();
        t.write_table(36, &0x1u32.to_le_bytes(), &irq).unwrap();
        t.write_table(40, &0x4041u32.to_le_bytes(), &irq).unwrap();
        t.write_table(44, &0xffff_ffffu32.to_le_bytes(), &irq)
            .unwrap();
        assert_eq!(t.entry(2), Some((0x1_fee0_1000, 0x4041, 1)));
        assert!(irq.vector_masked(2));
        assert_eq!(irq.fire(2), FireOutcome::Pending);
        let mut pba = [0u8; 8];
        t.read_pba(0, &mut pba, &irq).unwrap();
        assert_eq!(u64::from_le_bytes(pba), 0b100);
        // 8-byte write of data + vector control unmasks and delivers the pending vector.
        let mut q = [0u8; 8];
        q[..4].copy_from_slice(&0x4041u32.to_le_bytes());
        t.write_table(40, &q, &irq).unwrap();
        assert_eq!(count(&fd), 1);
        t.read_pba(0, &mut pba, &irq).unwrap();
        assert_eq!(u64::from_le_bytes(pba), 0);
        assert_eq!(irq.fire(2), FireOutcome::Delivered);
    }

    #[test]
    fn table_rejects_bad_sizes_alignment_and_range() {
        let (mut t, irq, _) = setup(4);
        assert_eq!(t.write_table(0, &[0; 2], &irq), Err(Errno::INVAL));
        assert_eq!(t.write_table(0, &[0; 1], &irq), Err(Errno::INVAL));
        assert_eq!(t.write_table(0, &[0; 16], &irq), Err(Errno::INVAL));
        assert_eq!(t.write_table(2, &[0; 4], &irq), Err(Errno::INVAL));
        assert_eq!(t.write_table(4, &[0; 8], &irq), Err(Errno::INVAL));
        assert_eq!(t.write_table(64, &[0; 4], &irq), Err(Errno::INVAL));
        assert_eq!(
            t.write_table(u64::MAX - 3, &[0; 4], &irq),
            Err(Errno::INVAL)
        );
        assert_eq!(t.read_table(60, &mut [0; 8]), Err(Errno::INVAL));
        assert_eq!(t.read_table(u64::MAX, &mut [0; 1]), Err(Errno::INVAL));
        t.read_table(60, &mut [0; 4]).unwrap();
    }

    #[test]
    fn pba_reads_bounds() {
        let (t, irq, _) = setup(70);
        irq.set_msix_control(true, true);
        irq.fire(65);
        let mut b = [0u8; 16];
        t.read_pba(0, &mut b, &irq).unwrap();
        assert_eq!(b[8], 0b10);
        let mut one = [0u8; 1];
        t.read_pba(8, &mut one, &irq).unwrap();
        assert_eq!(one[0], 0b10);
        assert_eq!(t.read_pba(16, &mut one, &irq), Err(Errno::INVAL));
        assert_eq!(t.read_pba(u64::MAX, &mut one, &irq), Err(Errno::INVAL));
    }

    #[test]
    fn reset_remasks() {
        let (mut t, irq, _) = setup(2);
        t.write_table(12, &0u32.to_le_bytes(), &irq).unwrap();
        assert_eq!(t.entry(0).unwrap().2, 0);
        t.reset();
        assert_eq!(t.entry(0).unwrap().2, 1);
    }
}
