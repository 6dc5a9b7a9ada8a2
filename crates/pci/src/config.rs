//! Static description of an emulated PCI function: identifiers, BARs, MSI-X, INTx and the
//! PCI Express capability. Built with [`PciConfig::builder`] and validated once in
//! [`PciConfigBuilder::build`]; everything downstream (config space layout, region table)
//! relies on the invariants checked there.

use thiserror::Error;

/// Size of the emulated configuration space (PCIe extended config space), in bytes.
pub const CONFIG_SPACE_SIZE: usize = 0x1000;
/// Number of base address registers of a type-0 header.
pub const NUM_BARS: usize = 6;
/// Region index of the expansion ROM BAR (VFIO numbering).
pub const ROM_REGION: u32 = 6;
/// Region index of the configuration space (VFIO numbering).
pub const CONFIG_REGION: u32 = 7;
/// Maximum number of MSI-X vectors a function may have (PCI spec limit).
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Bytes of one MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Smallest memory BAR the endpoint accepts (the PCI minimum).
pub const MIN_BAR_SIZE: u64 = 16;
/// Smallest expansion ROM the endpoint accepts (the PCI minimum).
pub const MIN_ROM_SIZE: u64 = 2048;

const PAGE: u64 = 4096;

/// Invalid [`PciConfig`] description.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// Two users claim the same BAR slot (or the upper half of a 64-bit BAR).
    #[error("BAR {0} is used twice")]
    BarConflict(u8),
    /// A BAR index is above 5, or a 64-bit BAR starts at index 5.
    #[error("BAR index {0} is out of range")]
    BarIndex(u8),
    /// A BAR size is not a power of two, below the PCI minimum, or too big for a 32-bit BAR.
    #[error("BAR {index} size {size:#x} is invalid")]
    BarSize {
        /// BAR index.
        index: u8,
        /// Rejected size.
        size: u64,
    },
    /// The MSI-X vector count is 0 or above 2048.
    #[error("MSI-X vector count {0} is invalid")]
    MsixVectors(u16),
    /// The expansion ROM size is not a power of two, below 2 KiB or above 2 GiB.
    #[error("ROM size {0:#x} is invalid")]
    RomSize(u64),
    /// Vendor id 0xffff means "no device" to every OS.
    #[error("vendor id 0xffff is reserved (no device)")]
    VendorId,
}

/// One memory BAR provided by the [`PciFunction`](crate::PciFunction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarConfig {
    /// Size in bytes; a power of two, at least 16 (4 KiB or more if it has mmap areas).
    pub size: u64,
    /// 64-bit memory BAR (occupies this index and the next one).
    pub is_64bit: bool,
    /// Prefetchable bit of the BAR register.
    pub prefetchable: bool,
    /// `true`: region reads and writes go to [`PciFunction::bar_read`]/[`bar_write`].
    /// `false`: the BAR only exists for layout; reads return zeros and writes are dropped.
    ///
    /// [`PciFunction::bar_read`]: crate::PciFunction::bar_read
    /// [`bar_write`]: crate::PciFunction::bar_write
    pub served: bool,
}

impl BarConfig {
    /// A 32-bit, non-prefetchable memory BAR served by the function.
    pub fn memory32(size: u64) -> Self {
        Self {
            size,
            is_64bit: false,
            prefetchable: false,
            served: true,
        }
    }

    /// A 64-bit memory BAR served by the function.
    pub fn memory64(size: u64) -> Self {
        Self {
            is_64bit: true,
            ..Self::memory32(size)
        }
    }

    /// Sets the prefetchable bit.
    pub fn prefetchable(mut self, yes: bool) -> Self {
        self.prefetchable = yes;
        self
    }

    /// Sets whether the function serves region accesses to this BAR.
    pub fn served(mut self, yes: bool) -> Self {
        self.served = yes;
        self
    }
}

/// MSI-X placement: the table at offset 0 of `table_bar`, the PBA at offset 0 of `pba_bar`
/// (or right after the table, page aligned, when both share a BAR). The endpoint creates
/// and serves these BARs itself (32-bit, non-prefetchable, never mmap-able).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixConfig {
    /// Number of vectors, 1..=2048.
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// BAR holding the pending bit array.
    pub pba_bar: u8,
}

/// Interrupt pin of the function (config register 0x3d).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IntxPin {
    /// No legacy interrupt.
    None,
    /// INTA#.
    #[default]
    A,
    /// INTB#.
    B,
    /// INTC#.
    C,
    /// INTD#.
    D,
}

impl IntxPin {
    /// Register value (0 = none, 1 = INTA ... 4 = INTD).
    pub fn register(self) -> u8 {
        match self {
            Self::None => 0,
            Self::A => 1,
            Self::B => 2,
            Self::C => 3,
            Self::D => 4,
        }
    }
}

/// What occupies a BAR slot after layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarRole {
    /// A BAR of the function.
    Function {
        /// Whether the function serves region accesses.
        served: bool,
    },
    /// The MSI-X table (offset 0) and, when `pba_offset` is set, also the PBA.
    MsixTable {
        /// Offset of the PBA when it shares this BAR.
        pba_offset: Option<u64>,
    },
    /// The MSI-X pending bit array at offset 0.
    MsixPba,
    /// The upper half of the 64-bit BAR at the previous index.
    Upper64,
}

/// A resolved BAR slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSpec {
    /// Size in bytes (power of two).
    pub size: u64,
    /// 64-bit BAR.
    pub is_64bit: bool,
    /// Prefetchable.
    pub prefetchable: bool,
    /// Who serves it.
    pub role: BarRole,
}

/// Placement of the MSI-X structures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    /// Number of vectors.
    pub vectors: u16,
    /// BAR index of the table.
    pub table_bar: u8,
    /// Offset of the table in its BAR.
    pub table_offset: u64,
    /// BAR index of the PBA.
    pub pba_bar: u8,
    /// Offset of the PBA in its BAR.
    pub pba_offset: u64,
}

impl MsixLayout {
    /// Bytes of the table.
    pub fn table_size(&self) -> u64 {
        u64::from(self.vectors) * MSIX_ENTRY_SIZE
    }

    /// Bytes of the PBA (whole qwords, as the spec requires).
    pub fn pba_size(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }
}

/// Validated description of a PCI function. See [`PciConfig::builder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciConfig {
    /// Vendor id (0x00).
    pub vendor_id: u16,
    /// Device id (0x02).
    pub device_id: u16,
    /// Subsystem vendor id (0x2c).
    pub subsystem_vendor_id: u16,
    /// Subsystem id (0x2e).
    pub subsystem_id: u16,
    /// Base class (0x0b).
    pub class: u8,
    /// Sub-class (0x0a).
    pub subclass: u8,
    /// Programming interface (0x09).
    pub prog_if: u8,
    /// Revision id (0x08).
    pub revision: u8,
    /// Interrupt pin.
    pub intx_pin: IntxPin,
    /// Power Management capability present.
    pub pm: bool,
    /// PCI Express capability (v2) present; `Some(flr)` tells whether FLR is advertised.
    pub pcie_flr: Option<bool>,
    /// Resolved BAR slots.
    pub bars: [Option<BarSpec>; NUM_BARS],
    /// Expansion ROM size (served by the function as region 6).
    pub rom_size: Option<u64>,
    /// MSI-X placement.
    pub msix: Option<MsixLayout>,
}

impl PciConfig {
    /// Starts a builder. Ids must be set ([`PciConfigBuilder::ids`]); defaults: INTA, PM
    /// and PCIe (with FLR) present, no BARs, no ROM, no MSI-X.
    pub fn builder() -> PciConfigBuilder {
        PciConfigBuilder::default()
    }

    /// The resolved BAR at `index` (0..=5).
    pub fn bar(&self, index: u32) -> Option<&BarSpec> {
        self.bars.get(usize::try_from(index).ok()?)?.as_ref()
    }
}

/// Builder for [`PciConfig`].
///
/// ```
/// use sluice_pci::{BarConfig, MsixConfig, PciConfig};
/// let cfg = PciConfig::builder().ids(0x1b36, 0x0010)
///     .ids(0x4e58, 0x0001)
///     .subsystem(0x4e58, 0x0000)
///     .class(0x01, 0x08, 0x02)
///     .bar(0, BarConfig::memory32(0x4000))
///     .msix(MsixConfig { vectors: 512, table_bar: 4, pba_bar: 5 })
///     .build()
///     .unwrap();
/// assert_eq!(cfg.bar(4).unwrap().size, 0x2000);
/// ```
#[derive(Clone, Debug)]
pub struct PciConfigBuilder {
    vendor_id: u16,
    device_id: u16,
    subsystem_vendor_id: u16,
    subsystem_id: u16,
    class: (u8, u8, u8),
    revision: u8,
    intx_pin: IntxPin,
    pm: bool,
    pcie_flr: Option<bool>,
    bars: Vec<(u8, BarConfig)>,
    rom_size: Option<u64>,
    msix: Option<MsixConfig>,
}

impl Default for PciConfigBuilder {
    fn default() -> Self {
        Self {
            vendor_id: 0xffff,
            device_id: 0xffff,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            class: (0xff, 0, 0),
            revision: 0,
            intx_pin: IntxPin::A,
            pm: true,
            pcie_flr: Some(true),
            bars: Vec::new(),
            rom_size: None,
            msix: None,
        }
    }
}

impl PciConfigBuilder {
    /// Vendor and device id.
    pub fn ids(mut self, vendor: u16, device: u16) -> Self {
        self.vendor_id = vendor;
        self.device_id = device;
        self
    }

    /// Subsystem vendor and subsystem id.
    pub fn subsystem(mut self, vendor: u16, id: u16) -> Self {
        self.subsystem_vendor_id = vendor;
        self.subsystem_id = id;
        self
    }

    /// Class code: base class, sub-class, programming interface.
    pub fn class(mut self, class: u8, subclass: u8, prog_if: u8) -> Self {
        self.class = (class, subclass, prog_if);
        self
    }

    /// Revision id.
    pub fn revision(mut self, revision: u8) -> Self {
        self.revision = revision;
        self
    }

    /// Interrupt pin ([`IntxPin::None`] removes INTx).
    pub fn intx_pin(mut self, pin: IntxPin) -> Self {
        self.intx_pin = pin;
        self
    }

    /// Whether the Power Management capability is present (default yes).
    pub fn pm(mut self, present: bool) -> Self {
        self.pm = present;
        self
    }

    /// PCI Express capability: `Some(flr)` present (with or without FLR), `None` absent.
    pub fn pcie(mut self, flr: Option<bool>) -> Self {
        self.pcie_flr = flr;
        self
    }

    /// Adds a function BAR at `index` (0..=5; a 64-bit BAR also takes `index + 1`).
    pub fn bar(mut self, index: u8, bar: BarConfig) -> Self {
        self.bars.push((index, bar));
        self
    }

    /// Adds an expansion ROM of `size` bytes (served by the function as region 6).
    pub fn rom(mut self, size: u64) -> Self {
        self.rom_size = Some(size);
        self
    }

    /// Adds MSI-X with the given placement.
    pub fn msix(mut self, msix: MsixConfig) -> Self {
        self.msix = Some(msix);
        self
    }

    /// Validates and resolves the layout.
    pub fn build(self) -> Result<PciConfig, ConfigError> {
        if self.vendor_id == 0xffff {
            return Err(ConfigError::VendorId);
        }
        let mut bars: [Option<BarSpec>; NUM_BARS] = [None; NUM_BARS];
        for &(index, bar) in &self.bars {
            let max_size = if bar.is_64bit { 1u64 << 63 } else { 1u64 << 31 };
            if !bar.size.is_power_of_two() || bar.size < MIN_BAR_SIZE || bar.size > max_size {
                return Err(ConfigError::BarSize {
                    index,
                    size: bar.size,
                });
            }
            place(
                &mut bars,
                index,
                BarSpec {
                    size: bar.size,
                    is_64bit: bar.is_64bit,
                    prefetchable: bar.prefetchable,
                    role: BarRole::Function { served: bar.served },
                },
            )?;
            if bar.is_64bit {
                let upper = index.checked_add(1).ok_or(ConfigError::BarIndex(index))?;
                place(
                    &mut bars,
                    upper,
                    BarSpec {
                        size: bar.size,
                        is_64bit: true,
                        prefetchable: bar.prefetchable,
                        role: BarRole::Upper64,
                    },
                )
                .map_err(|_| ConfigError::BarIndex(index))?;
            }
        }
        let msix = match self.msix {
            None => None,
            Some(m) => Some(layout_msix(&mut bars, m)?),
        };
        if let Some(size) = self.rom_size {
            if !size.is_power_of_two() || !(MIN_ROM_SIZE..=1 << 31).contains(&size) {
                return Err(ConfigError::RomSize(size));
            }
        }
        Ok(PciConfig {
            vendor_id: self.vendor_id,
            device_id: self.device_id,
            subsystem_vendor_id: self.subsystem_vendor_id,
            subsystem_id: self.subsystem_id,
            class: self.class.0,
            subclass: self.class.1,
            prog_if: self.class.2,
            revision: self.revision,
            intx_pin: self.intx_pin,
            pm: self.pm,
            pcie_flr: self.pcie_flr,
            bars,
            rom_size: self.rom_size,
            msix,
        })
    }
}

fn place(
    bars: &mut [Option<BarSpec>; NUM_BARS],
    index: u8,
    spec: BarSpec,
) -> Result<(), ConfigError> {
    let slot = bars
        .get_mut(usize::from(index))
        .ok_or(ConfigError::BarIndex(index))?;
    if slot.is_some() {
        return Err(ConfigError::BarConflict(index));
    }
    *slot = Some(spec);
    Ok(())
}

fn align_page(v: u64) -> u64 {
    v.div_ceil(PAGE) * PAGE
}

fn layout_msix(
    bars: &mut [Option<BarSpec>; NUM_BARS],
    m: MsixConfig,
) -> Result<MsixLayout, ConfigError> {
    if m.vectors == 0 || m.vectors > MSIX_MAX_VECTORS {
        return Err(ConfigError::MsixVectors(m.vectors));
    }
    let mut layout = MsixLayout {
        vectors: m.vectors,
        table_bar: m.table_bar,
        table_offset: 0,
        pba_bar: m.pba_bar,
        pba_offset: 0,
    };
    // Sizes are tiny (vectors <= 2048): no overflow possible.
    let table = align_page(layout.table_size());
    let pba = align_page(layout.pba_size());
    let spec = |size: u64, role| BarSpec {
        size: size.next_power_of_two(),
        is_64bit: false,
        prefetchable: false,
        role,
    };
    if m.table_bar == m.pba_bar {
        layout.pba_offset = table;
        place(
            bars,
            m.table_bar,
            spec(
                table + pba,
                BarRole::MsixTable {
                    pba_offset: Some(table),
                },
            ),
        )?;
    } else {
        place(
            bars,
            m.table_bar,
            spec(table, BarRole::MsixTable { pba_offset: None }),
        )?;
        place(bars, m.pba_bar, spec(pba, BarRole::MsixPba))?;
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spdk_like() -> PciConfigBuilder {
        PciConfig::builder()
            .ids(0x4e58, 1)
            .bar(0, BarConfig::memory32(0x4000))
            .msix(MsixConfig {
                vectors: 512,
                table_bar: 4,
                pba_bar: 5,
            })
    }

    #[test]
    fn spdk_layout_resolves_msix_bars() {
        let cfg = spdk_like().build().unwrap();
        assert_eq!(cfg.bar(0).unwrap().size, 0x4000);
        assert_eq!(cfg.bar(4).unwrap().size, 0x2000);
        assert_eq!(cfg.bar(5).unwrap().size, 0x1000);
        assert_eq!(cfg.bar(5).unwrap().role, BarRole::MsixPba);
        assert!(cfg.bar(1).is_none());
        assert!(cfg.bar(6).is_none());
        let m = cfg.msix.unwrap();
        assert_eq!(m.table_size(), 8192);
        assert_eq!(m.pba_size(), 64);
    }

    #[test]
    fn shared_msix_bar_places_pba_after_table() {
        let cfg = PciConfig::builder()
            .ids(0x1b36, 0x0010)
            .msix(MsixConfig {
                vectors: 300,
                table_bar: 2,
                pba_bar: 2,
            })
            .build()
            .unwrap();
        let m = cfg.msix.unwrap();
        assert_eq!(m.pba_offset, 0x2000); // 300*16 = 4800 -> 8 KiB
        assert_eq!(cfg.bar(2).unwrap().size, 0x4000);
    }

    #[test]
    fn bar_size_must_be_power_of_two_and_at_least_16() {
        for size in [0, 8, 0x3000, 1 << 32] {
            let err = PciConfig::builder()
                .ids(0x1b36, 0x0010)
                .bar(1, BarConfig::memory32(size))
                .build()
                .unwrap_err();
            assert_eq!(err, ConfigError::BarSize { index: 1, size });
        }
        assert!(PciConfig::builder()
            .ids(0x1b36, 0x0010)
            .bar(1, BarConfig::memory64(1 << 32))
            .build()
            .is_ok());
    }

    #[test]
    fn sixty_four_bit_bar_takes_two_slots() {
        assert_eq!(
            PciConfig::builder()
                .ids(0x1b36, 0x0010)
                .bar(0, BarConfig::memory64(0x1000))
                .bar(1, BarConfig::memory32(0x1000))
                .build()
                .unwrap_err(),
            ConfigError::BarConflict(1)
        );
        assert_eq!(
            PciConfig::builder()
                .ids(0x1b36, 0x0010)
                .bar(5, BarConfig::memory64(0x1000))
                .build()
                .unwrap_err(),
            ConfigError::BarIndex(5)
        );
    }

    #[test]
    fn msix_conflicts_and_counts_are_rejected() {
        assert_eq!(
            spdk_like()
                .bar(4, BarConfig::memory32(0x1000))
                .build()
                .unwrap_err(),
            ConfigError::BarConflict(4)
        );
        for vectors in [0, 2049] {
            assert_eq!(
                PciConfig::builder()
                    .ids(0x1b36, 0x0010)
                    .msix(MsixConfig {
                        vectors,
                        table_bar: 4,
                        pba_bar: 5
                    })
                    .build()
                    .unwrap_err(),
                ConfigError::MsixVectors(vectors)
            );
        }
        assert_eq!(
            PciConfig::builder()
                .ids(0x1b36, 0x0010)
                .msix(MsixConfig {
                    vectors: 1,
                    table_bar: 6,
                    pba_bar: 5
                })
                .build()
                .unwrap_err(),
            ConfigError::BarIndex(6)
        );
    }

    #[test]
    fn vendor_id_must_be_set() {
        assert_eq!(
            PciConfigBuilder::default().build().unwrap_err(),
            ConfigError::VendorId
        );
        assert_eq!(
            PciConfig::builder().ids(0xffff, 1).build().unwrap_err(),
            ConfigError::VendorId
        );
    }

    #[test]
    fn rom_size_is_validated() {
        for size in [1024, 3000, 1 << 32] {
            assert_eq!(
                PciConfig::builder()
                    .ids(0x1b36, 0x0010)
                    .rom(size)
                    .build()
                    .unwrap_err(),
                ConfigError::RomSize(size)
            );
        }
        assert_eq!(
            PciConfig::builder()
                .ids(0x1b36, 0x0010)
                .rom(0x8000)
                .build()
                .unwrap()
                .rom_size,
            Some(0x8000)
        );
    }
}
