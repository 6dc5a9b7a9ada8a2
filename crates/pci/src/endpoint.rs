//! [`PciEndpoint`]: a [`vfu_server::Device`] made of the generic PCI parts of this crate plus
//! a device-specific [`PciFunction`].
//!
//! Region map (VFIO numbering):
//!
//! | region | served by |
//! |---|---|
//! | 0-5 (BARs) | the function ([`PciFunction::bar_read`]/[`bar_write`]), or the endpoint for the MSI-X table/PBA BARs |
//! | 6 (ROM) | the function (`bar == 6`), read-only |
//! | 7 (config) | the endpoint: [`ConfigSpace`] |
//! | 8 (VGA) | absent |
//!
//! BAR accesses while the command register's memory-enable bit is clear fail with `EIO`,
//! as with the kernel's vfio-pci: a client must set it (QEMU and Cloud Hypervisor pass the
//! guest's config writes through; a test host writes `CMD_MEMORY` itself).
//!
//! [`bar_write`]: PciFunction::bar_write

use std::sync::Arc;

use rustix::io::Errno;
use vfu_server::{
    DeviceContext, DeviceInfo, DmaEvent, DmaMemory, IrqAction, IrqInfo, IrqSetData, IrqSetEvent,
    Irqs, RegionInfo, RegionMmap, ResetKind,
};

use crate::config::{BarRole, PciConfig, CONFIG_REGION, CONFIG_SPACE_SIZE, ROM_REGION};
use crate::irq::{
    InterruptSink, IrqShared, IrqSignal, MaskSource, IRQ_ERR, IRQ_INTX, IRQ_MSIX, IRQ_REQ,
};
use crate::msix::MsixTable;
use crate::space::{
    ConfigSpace, WriteEffects, CMD_INTX_DISABLE, CMD_MEMORY, MSIX_CTL_ENABLE, MSIX_CTL_MASKALL,
    PCI_STATUS, STATUS_INTX,
};

/// The device-specific half of a PCI function (an NVMe controller, a virtio device ...).
///
/// All methods run on the endpoint thread. Region callbacks get in-range accesses only: the
/// endpoint checked `offset + data.len() <= bar size` before calling.
pub trait PciFunction: Send + 'static {
    /// Reads `data.len()` bytes at `offset` of BAR `bar` (0-5, or 6 for the ROM).
    fn bar_read(&mut self, bar: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno>;

    /// Writes `data` at `offset` of BAR `bar` (0-5).
    fn bar_write(&mut self, bar: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;

    /// The fd-backed, mmap-able part of BAR `bar`, if any (e.g. the NVMe doorbell page as one
    /// sparse area). Never asked for the MSI-X BARs.
    fn bar_mmap(&self, bar: u32) -> Option<RegionMmap> {
        let _ = bar;
        None
    }

    /// Reset the function: [`ResetKind::Flr`] (guest initiated FLR) or
    /// [`ResetKind::Device`] (DEVICE_RESET). Config space and MSI-X state are reset by the
    /// endpoint afterwards; the function resets its own registers and queues (quiesced).
    fn reset(&mut self, kind: ResetKind) -> Result<(), Errno>;

    /// A client attached; `ctx` carries its DMA handle (clone what you keep).
    fn attach(&mut self, ctx: &DeviceContext) {
        let _ = ctx;
    }

    /// The client went away: drop DMA snapshots, keep device state.
    fn detach(&mut self) {}

    /// A DMA window was added; `mem` is the new snapshot.
    fn dma_map(&mut self, ev: &DmaEvent, mem: &Arc<DmaMemory>) -> Result<(), Errno> {
        let _ = (ev, mem);
        Ok(())
    }

    /// A DMA window is being removed: return only once nothing uses it (quiesce).
    fn dma_unmap(&mut self, ev: &DmaEvent, mem: &Arc<DmaMemory>) -> Result<(), Errno> {
        let _ = (ev, mem);
        Ok(())
    }

    /// The command register changed (see `space::CMD_*`: memory enable, bus master, INTx
    /// disable). A device must not DMA without bus master.
    fn command_changed(&mut self, command: u16) {
        let _ = command;
    }

    /// MSI-X enable or function mask changed. Delivery itself is handled by the
    /// [`InterruptSink`]; this is informational.
    fn msix_changed(&mut self, enabled: bool, function_masked: bool) {
        let _ = (enabled, function_masked);
    }

    /// Level of the function's INTx condition (NVMe: some completion queue holds entries
    /// the host has not consumed). Asked on the endpoint thread when the client acknowledges
    /// an INTx (SET_IRQS UNMASK; QEMU sends it after the guest's next BAR access) and when
    /// INTx becomes deliverable again (INTx-disable cleared, MSI-X disabled).
    ///
    /// `Some(level)`: an interrupt is (re)delivered iff `level`. `None` (default): the
    /// endpoint delivers the pulse [`InterruptSink::fire`] latched since the last delivery,
    /// which can be spurious when the guest already consumed that work. Under QEMU without
    /// KVM a spurious INTx keeps the guest's line asserted until its next BAR access (an
    /// interrupt storm, "irq nobody cared"), so a device used with INTx under load should
    /// answer here.
    fn intx_level(&mut self) -> Option<bool> {
        None
    }
}

/// Delivery through the server's per-client irq table.
struct ServerIrqs(Arc<Irqs>);

impl IrqSignal for ServerIrqs {
    fn signal(&self, index: u32, vector: u32) -> Result<bool, Errno> {
        match self.0.trigger(index, vector) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A PCI endpoint: config space, capabilities, BAR sizing, MSI-X, INTx, FLR, around a
/// [`PciFunction`]. Implements [`vfu_server::Device`].
pub struct PciEndpoint<F: PciFunction> {
    config: PciConfig,
    space: ConfigSpace,
    msix: Option<MsixTable>,
    irq: Arc<IrqShared>,
    function: F,
}

impl<F: PciFunction> std::fmt::Debug for PciEndpoint<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciEndpoint")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<F: PciFunction> PciEndpoint<F> {
    /// An endpoint around `function`. Get the function its [`InterruptSink`] with
    /// [`PciEndpoint::build`] or [`PciEndpoint::interrupt_sink`].
    pub fn new(config: PciConfig, function: F) -> Self {
        let vectors = config.msix.map_or(0, |m| m.vectors);
        let has_intx = config.intx_pin.register() != 0;
        Self {
            space: ConfigSpace::new(&config),
            msix: config.msix.map(MsixTable::new),
            irq: Arc::new(IrqShared::new(vectors, has_intx)),
            config,
            function,
        }
    }

    /// Builds the function with the endpoint's [`InterruptSink`] in hand.
    pub fn build<E>(
        config: PciConfig,
        make: impl FnOnce(InterruptSink) -> Result<F, E>,
    ) -> Result<Self, E> {
        let vectors = config.msix.map_or(0, |m| m.vectors);
        let has_intx = config.intx_pin.register() != 0;
        let irq = Arc::new(IrqShared::new(vectors, has_intx));
        let function = make(InterruptSink::new(irq.clone()))?;
        Ok(Self {
            space: ConfigSpace::new(&config),
            msix: config.msix.map(MsixTable::new),
            irq,
            config,
            function,
        })
    }

    /// A new handle for raising interrupts (cheap clone; give it to poll threads).
    pub fn interrupt_sink(&self) -> InterruptSink {
        InterruptSink::new(self.irq.clone())
    }

    /// Replaces where interrupts are delivered. [`vfu_server::Device::attach`] installs the
    /// server's irq table and `detach` removes it; call this only to drive the endpoint
    /// without a server (unit tests of a function, custom transports).
    pub fn set_irq_signal(&self, signal: Option<Box<dyn IrqSignal>>) {
        self.irq.set_route(signal);
    }

    /// The function.
    pub fn function(&self) -> &F {
        &self.function
    }

    /// The function, mutably.
    pub fn function_mut(&mut self) -> &mut F {
        &mut self.function
    }

    /// The static description.
    pub fn config(&self) -> &PciConfig {
        &self.config
    }

    /// The config space (for inspection).
    pub fn config_space(&self) -> &ConfigSpace {
        &self.space
    }

    /// Whether the client set memory-space enable.
    pub fn memory_enabled(&self) -> bool {
        self.space.command() & CMD_MEMORY != 0
    }

    fn reset_pci_state(&mut self) {
        self.space.reset();
        if let Some(t) = self.msix.as_mut() {
            t.reset();
        }
        self.irq.reset();
    }

    /// Resets the function and then the PCI state (config space, MSI-X, INTx).
    fn do_reset(&mut self, kind: ResetKind) -> Result<(), Errno> {
        let r = self.function.reset(kind);
        if let Err(e) = r {
            tracing::debug!(?kind, error = %e, "function reset failed");
        }
        self.reset_pci_state();
        r
    }

    fn apply_effects(&mut self, fx: WriteEffects) -> Result<(), Errno> {
        if fx.flr {
            tracing::debug!("function level reset");
            return self.do_reset(ResetKind::Flr);
        }
        if let Some((old, cmd)) = fx.command {
            let disabled = cmd & CMD_INTX_DISABLE != 0;
            if !disabled && old & CMD_INTX_DISABLE != 0 {
                self.intx_reconcile();
            }
            self.irq.set_intx_disabled(disabled);
            self.function.command_changed(cmd);
        }
        if let Some((old, ctl)) = fx.msix_control {
            let enabled = ctl & MSIX_CTL_ENABLE != 0;
            let masked = ctl & MSIX_CTL_MASKALL != 0;
            if !enabled && old & MSIX_CTL_ENABLE != 0 {
                self.intx_reconcile();
            }
            self.irq.set_msix_control(enabled, masked);
            self.function.msix_changed(enabled, masked);
        }
        Ok(())
    }

    /// Before INTx becomes deliverable again: replace the latched pulse by the function's
    /// level when it reports one. The pulse is taken *before* asking, so a `fire` racing
    /// with the question latches anew and is not lost.
    fn intx_reconcile(&mut self) {
        if !self.irq.has_intx() {
            return;
        }
        let held = self.irq.take_intx_pending();
        if self.function.intx_level().unwrap_or(held) {
            self.irq.latch_intx();
        }
    }

    fn config_read(&self, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        self.space.read(offset, data)?;
        // Overlay the live interrupt-status bit (status register bit 3, byte 6).
        let status_byte = PCI_STATUS as u64;
        if let Some(i) = status_byte.checked_sub(offset) {
            if let Some(b) = usize::try_from(i).ok().and_then(|i| data.get_mut(i)) {
                if self.irq.intx_status() {
                    *b |= STATUS_INTX as u8;
                }
            }
        }
        Ok(())
    }

    fn bar_access_check(&self, index: u32, offset: u64, len: usize) -> Result<BarRole, Errno> {
        let spec = self.config.bar(index).ok_or(Errno::INVAL)?;
        if matches!(spec.role, BarRole::Upper64) {
            return Err(Errno::INVAL);
        }
        let end = offset.checked_add(len as u64).ok_or(Errno::INVAL)?;
        if end > spec.size {
            return Err(Errno::INVAL);
        }
        if !self.memory_enabled() {
            tracing::debug!(bar = index, "BAR access with memory decode disabled");
            return Err(Errno::IO);
        }
        Ok(spec.role)
    }

    fn rom_check(&self, offset: u64, len: usize) -> Result<(), Errno> {
        let size = self.config.rom_size.ok_or(Errno::INVAL)?;
        let end = offset.checked_add(len as u64).ok_or(Errno::INVAL)?;
        if end > size {
            return Err(Errno::INVAL);
        }
        Ok(())
    }

    fn msix_read(
        &self,
        pba_offset: Option<u64>,
        is_pba_bar: bool,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        let t = self.msix.as_ref().ok_or(Errno::INVAL)?;
        let (in_pba, rel) = msix_target(t, pba_offset, is_pba_bar, offset);
        match (in_pba, rel) {
            (true, Some(rel)) => t.read_pba(rel, data, &self.irq),
            (false, Some(rel)) if rel < t.layout().table_size() => t.read_table(rel, data),
            _ => {
                data.fill(0); // padding reads as zero
                Ok(())
            }
        }
    }

    fn msix_write(
        &mut self,
        pba_offset: Option<u64>,
        is_pba_bar: bool,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        let irq = self.irq.clone();
        let t = self.msix.as_mut().ok_or(Errno::INVAL)?;
        let (in_pba, rel) = msix_target(t, pba_offset, is_pba_bar, offset);
        match (in_pba, rel) {
            (false, Some(rel)) if rel < t.layout().table_size() => t.write_table(rel, data, &irq),
            _ => {
                // PBA and padding are read-only; the spec says writes are ignored.
                tracing::debug!(
                    offset,
                    len = data.len(),
                    "write to MSI-X PBA/padding ignored"
                );
                Ok(())
            }
        }
    }

    fn set_irqs_inner(&mut self, req: &IrqSetEvent) -> Result<(), Errno> {
        let per_vector = |i: u32| match &req.data {
            IrqSetData::Bool(b) => b.get(i as usize).copied().unwrap_or(false),
            IrqSetData::None => true,
            // MASK/UNMASK with eventfds install notification fds (KVM's INTx resample);
            // they do not mask or unmask anything by themselves.
            IrqSetData::Eventfd { .. } => false,
        };
        if req.action != IrqAction::Trigger && matches!(req.data, IrqSetData::Eventfd { .. }) {
            tracing::debug!(
                index = req.index,
                "SET_IRQS mask/unmask eventfds not supported"
            );
            return Err(Errno::NOTSUP);
        }
        match (req.index, req.action) {
            (IRQ_INTX, IrqAction::Mask) if per_vector(0) && req.count > 0 => {
                self.irq.set_intx_masked(true);
            }
            (IRQ_INTX, IrqAction::Unmask) if per_vector(0) && req.count > 0 => {
                self.intx_reconcile();
                self.irq.set_intx_masked(false);
            }
            (IRQ_INTX, IrqAction::Trigger) => {
                if let IrqSetData::Eventfd { assigned: true } = req.data {
                    // Fresh eventfd: start unmasked and deliver a held pulse.
                    self.irq.set_intx_masked(false);
                }
            }
            (IRQ_MSIX, IrqAction::Mask | IrqAction::Unmask) => {
                let mask = req.action == IrqAction::Mask;
                for i in 0..req.count.min(self.irq.vectors()) {
                    let Some(v) = req.start.checked_add(i) else {
                        break;
                    };
                    if per_vector(i) {
                        self.irq.set_vector_masked(v, MaskSource::SetIrqs, mask);
                    }
                }
            }
            (IRQ_MSIX, IrqAction::Trigger) => {
                if let IrqSetData::Eventfd { assigned: true } = req.data {
                    // Interrupts raised before the eventfd existed are delivered now.
                    self.irq.flush_range(req.start, req.count);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Where an MSI-X BAR offset points: `(is PBA, offset relative to the structure)`.
fn msix_target(
    t: &MsixTable,
    pba_offset: Option<u64>,
    is_pba_bar: bool,
    offset: u64,
) -> (bool, Option<u64>) {
    if is_pba_bar {
        return (true, offset.checked_sub(t.layout().pba_offset));
    }
    match pba_offset {
        Some(p) if offset >= p => (true, offset.checked_sub(p)),
        _ => (false, offset.checked_sub(t.layout().table_offset)),
    }
}

impl<F: PciFunction> vfu_server::Device for PciEndpoint<F> {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo::default()
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        use vfu_proto::{REGION_FLAG_READ, REGION_FLAG_WRITE};
        match index {
            0..=5 => {
                let spec = self.config.bar(index)?;
                let mmap = match spec.role {
                    BarRole::Upper64 => return None,
                    BarRole::Function { .. } => self.function.bar_mmap(index),
                    BarRole::MsixTable { .. } | BarRole::MsixPba => None,
                };
                Some(RegionInfo {
                    size: spec.size,
                    flags: REGION_FLAG_READ | REGION_FLAG_WRITE,
                    mmap,
                })
            }
            ROM_REGION => Some(RegionInfo {
                size: self.config.rom_size?,
                flags: REGION_FLAG_READ,
                mmap: None,
            }),
            CONFIG_REGION => Some(RegionInfo {
                size: CONFIG_SPACE_SIZE as u64,
                flags: REGION_FLAG_READ | REGION_FLAG_WRITE,
                mmap: None,
            }),
            _ => None,
        }
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        use vfu_proto::{IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE};
        match index {
            IRQ_INTX if self.irq.has_intx() => Some(IrqInfo {
                count: 1,
                flags: IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED,
            }),
            IRQ_MSIX if self.irq.vectors() > 0 => Some(IrqInfo {
                count: self.irq.vectors(),
                // No NORESIZE: vectors can be (de)assigned one at a time, so QEMU does not
                // tear the whole index down to add a vector.
                flags: IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE,
            }),
            IRQ_ERR | IRQ_REQ => Some(IrqInfo {
                count: 1,
                flags: IRQ_INFO_EVENTFD,
            }),
            _ => None,
        }
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        match index {
            CONFIG_REGION => self.config_read(offset, data),
            ROM_REGION => {
                self.rom_check(offset, data.len())?;
                self.function.bar_read(ROM_REGION, offset, data)
            }
            0..=5 => match self.bar_access_check(index, offset, data.len())? {
                BarRole::Function { served: true } => self.function.bar_read(index, offset, data),
                BarRole::Function { served: false } => {
                    data.fill(0);
                    Ok(())
                }
                BarRole::MsixTable { pba_offset } => {
                    self.msix_read(pba_offset, false, offset, data)
                }
                BarRole::MsixPba => self.msix_read(None, true, offset, data),
                BarRole::Upper64 => Err(Errno::INVAL),
            },
            _ => Err(Errno::INVAL),
        }
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        match index {
            CONFIG_REGION => {
                let fx = self.space.write(offset, data)?;
                self.apply_effects(fx)
            }
            0..=5 => match self.bar_access_check(index, offset, data.len())? {
                BarRole::Function { served: true } => self.function.bar_write(index, offset, data),
                BarRole::Function { served: false } => Ok(()),
                BarRole::MsixTable { pba_offset } => {
                    self.msix_write(pba_offset, false, offset, data)
                }
                BarRole::MsixPba => self.msix_write(None, true, offset, data),
                BarRole::Upper64 => Err(Errno::INVAL),
            },
            _ => Err(Errno::INVAL),
        }
    }

    fn attach(&mut self, ctx: DeviceContext) {
        self.irq
            .set_route(Some(Box::new(ServerIrqs(ctx.irqs.clone()))));
        self.irq.clear_client_masks();
        self.function.attach(&ctx);
    }

    fn detach(&mut self) {
        self.irq.set_route(None);
        self.irq.clear_client_masks();
        self.function.detach();
    }

    fn dma_map(&mut self, ev: &DmaEvent, mem: &Arc<DmaMemory>) -> Result<(), Errno> {
        self.function.dma_map(ev, mem)
    }

    fn dma_unmap(&mut self, ev: &DmaEvent, mem: &Arc<DmaMemory>) -> Result<(), Errno> {
        self.function.dma_unmap(ev, mem)
    }

    fn set_irqs(&mut self, req: &IrqSetEvent) -> Result<(), Errno> {
        self.set_irqs_inner(req)
    }

    fn reset(&mut self, kind: ResetKind) -> Result<(), Errno> {
        self.do_reset(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BarConfig, MsixConfig};
    use crate::irq::tests::{count, Fds, SharedFds};
    use crate::irq::FireOutcome;
    use crate::space::CMD_BUS_MASTER;
    use vfu_server::Device;

    #[derive(Default)]
    struct Recorder {
        bar0: Vec<u8>,
        resets: Vec<ResetKind>,
        commands: Vec<u16>,
        msix: Vec<(bool, bool)>,
        rom_reads: usize,
        level: Option<bool>,
        level_asked: usize,
    }

    impl PciFunction for Recorder {
        fn bar_read(&mut self, bar: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
            if bar == ROM_REGION {
                self.rom_reads += 1;
                data.fill(0x55);
                return Ok(());
            }
            assert_eq!(bar, 0);
            let o = offset as usize;
            data.copy_from_slice(&self.bar0[o..o + data.len()]);
            Ok(())
        }
        fn bar_write(&mut self, bar: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
            assert_eq!(bar, 0);
            let o = offset as usize;
            self.bar0[o..o + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn reset(&mut self, kind: ResetKind) -> Result<(), Errno> {
            self.resets.push(kind);
            Ok(())
        }
        fn command_changed(&mut self, command: u16) {
            self.commands.push(command);
        }
        fn msix_changed(&mut self, enabled: bool, function_masked: bool) {
            self.msix.push((enabled, function_masked));
        }
        fn intx_level(&mut self) -> Option<bool> {
            self.level_asked += 1;
            self.level
        }
    }

    fn config() -> PciConfig {
        PciConfig::builder()
            .ids(0x4e58, 0x0001)
            .class(0x01, 0x08, 0x02)
            .bar(0, BarConfig::memory32(0x4000))
            .bar(2, BarConfig::memory64(0x1000).served(false))
            .rom(0x800)
            .msix(MsixConfig {
                vectors: 16,
                table_bar: 4,
                pba_bar: 5,
            })
            .build()
            .unwrap()
    }

    fn endpoint() -> (PciEndpoint<Recorder>, Arc<Fds>) {
        let ep = PciEndpoint::new(
            config(),
            Recorder {
                bar0: vec![0; 0x4000],
                ..Recorder::default()
            },
        );
        let fds = Arc::new(Fds::default());
        ep.set_irq_signal(Some(Box::new(SharedFds(fds.clone()))));
        (ep, fds)
    }

    fn cfg_w16(ep: &mut PciEndpoint<Recorder>, off: u64, v: u16) {
        ep.region_write(CONFIG_REGION, off, &v.to_le_bytes())
            .unwrap();
    }

    fn cfg_r16(ep: &mut PciEndpoint<Recorder>, off: u64) -> u16 {
        let mut b = [0u8; 2];
        ep.region_read(CONFIG_REGION, off, &mut b).unwrap();
        u16::from_le_bytes(b)
    }

    fn enable_memory(ep: &mut PciEndpoint<Recorder>) {
        cfg_w16(ep, 4, CMD_MEMORY | CMD_BUS_MASTER);
    }

    fn msix_on(ep: &mut PciEndpoint<Recorder>, maskall: bool) {
        let mut v = MSIX_CTL_ENABLE;
        if maskall {
            v |= MSIX_CTL_MASKALL;
        }
        cfg_w16(ep, 0x86, v);
    }

    #[test]
    fn region_and_irq_info() {
        let (ep, _) = endpoint();
        assert_eq!(ep.device_info().num_regions, 9);
        assert_eq!(ep.region_info(0).unwrap().size, 0x4000);
        assert!(ep.region_info(0).unwrap().mmap.is_none());
        assert_eq!(ep.region_info(2).unwrap().size, 0x1000);
        assert!(ep.region_info(3).is_none(), "upper half of a 64-bit BAR");
        assert!(ep.region_info(1).is_none());
        assert_eq!(ep.region_info(4).unwrap().size, 0x1000);
        assert_eq!(ep.region_info(5).unwrap().size, 0x1000);
        let rom = ep.region_info(ROM_REGION).unwrap();
        assert_eq!((rom.size, rom.flags), (0x800, vfu_proto::REGION_FLAG_READ));
        assert_eq!(ep.region_info(CONFIG_REGION).unwrap().size, 0x1000);
        assert!(ep.region_info(8).is_none());
        assert!(ep.region_info(9).is_none());
        assert_eq!(ep.irq_info(IRQ_INTX).unwrap().count, 1);
        assert!(ep.irq_info(1).is_none(), "no MSI");
        assert_eq!(ep.irq_info(IRQ_MSIX).unwrap().count, 16);
        assert_eq!(ep.irq_info(IRQ_ERR).unwrap().count, 1);
        assert!(ep.irq_info(5).is_none());
    }

    #[test]
    fn bar_access_needs_memory_enable_then_reaches_function() {
        let (mut ep, _) = endpoint();
        let mut b = [0u8; 4];
        assert_eq!(ep.region_read(0, 0, &mut b), Err(Errno::IO));
        assert_eq!(ep.region_write(0, 0, &b), Err(Errno::IO));
        assert_eq!(ep.region_read(4, 0, &mut b), Err(Errno::IO));
        enable_memory(&mut ep);
        assert_eq!(ep.function().commands, vec![CMD_MEMORY | CMD_BUS_MASTER]);
        ep.region_write(0, 0x14, &[1, 2, 3, 4]).unwrap();
        ep.region_read(0, 0x14, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        // Unserved BAR: zeros, writes dropped.
        ep.region_write(2, 0, &[9; 4]).unwrap();
        ep.region_read(2, 0, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn bar_access_out_of_range_fails() {
        let (mut ep, _) = endpoint();
        enable_memory(&mut ep);
        let mut b = [0u8; 4];
        assert_eq!(ep.region_read(0, 0x3ffe, &mut b), Err(Errno::INVAL));
        assert_eq!(ep.region_write(0, u64::MAX - 1, &b), Err(Errno::INVAL));
        assert_eq!(ep.region_read(1, 0, &mut b), Err(Errno::INVAL));
        assert_eq!(ep.region_read(3, 0, &mut b), Err(Errno::INVAL));
        assert_eq!(ep.region_read(8, 0, &mut b), Err(Errno::INVAL));
        assert_eq!(ep.region_write(ROM_REGION, 0, &b), Err(Errno::INVAL));
        assert_eq!(ep.region_read(ROM_REGION, 0x7fe, &mut b), Err(Errno::INVAL));
        assert_eq!(
            ep.region_read(CONFIG_REGION, 0xffe, &mut b),
            Err(Errno::INVAL)
        );
        assert_eq!(
            ep.region_write(CONFIG_REGION, 0x11, &[0; 4]),
            Err(Errno::INVAL)
        );
        assert_eq!(ep.region_read(5, 0x1000, &mut b), Err(Errno::INVAL));
    }

    #[test]
    fn rom_reads_reach_function_without_enable() {
        let (mut ep, _) = endpoint();
        let mut b = [0u8; 16];
        ep.region_read(ROM_REGION, 0, &mut b).unwrap();
        assert_eq!(b, [0x55; 16]);
        assert_eq!(ep.function().rom_reads, 1);
    }

    #[test]
    fn msix_fire_without_unmask_message_delivers() {
        let (mut ep, fds) = endpoint();
        let fd = fds.install(IRQ_MSIX, 5);
        let sink = ep.interrupt_sink();
        assert_eq!(sink.fire(5), FireOutcome::Pending, "INTx without eventfd");
        msix_on(&mut ep, false);
        assert_eq!(ep.function().msix, vec![(true, false)]);
        assert_eq!(sink.fire(5), FireOutcome::Delivered);
        assert_eq!(count(&fd), 1);
    }

    #[test]
    fn msix_table_mask_through_bar_and_pba_read() {
        let (mut ep, fds) = endpoint();
        let fd = fds.install(IRQ_MSIX, 3);
        enable_memory(&mut ep);
        msix_on(&mut ep, false);
        let sink = ep.interrupt_sink();
        // Client masks vector 3 in the table (BAR4, entry 3, vector control).
        ep.region_write(4, 3 * 16 + 12, &1u32.to_le_bytes())
            .unwrap();
        assert_eq!(sink.fire(3), FireOutcome::Pending);
        let mut pba = [0u8; 8];
        ep.region_read(5, 0, &mut pba).unwrap();
        assert_eq!(u64::from_le_bytes(pba), 1 << 3);
        // PBA is read-only.
        ep.region_write(5, 0, &[0; 8]).unwrap();
        ep.region_read(5, 0, &mut pba).unwrap();
        assert_eq!(u64::from_le_bytes(pba), 1 << 3);
        assert_eq!(count(&fd), 0);
        ep.region_write(4, 3 * 16 + 12, &0u32.to_le_bytes())
            .unwrap();
        assert_eq!(count(&fd), 1);
        ep.region_read(5, 0, &mut pba).unwrap();
        assert_eq!(u64::from_le_bytes(pba), 0);
        // Table padding beyond 16 entries reads zero; bad table write size fails.
        let mut b = [0xffu8; 4];
        ep.region_read(4, 0x800, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
        assert_eq!(ep.region_write(4, 0, &[0; 2]), Err(Errno::INVAL));
    }

    #[test]
    fn function_mask_then_unmask_delivers_pending() {
        let (mut ep, fds) = endpoint();
        let fd = fds.install(IRQ_MSIX, 0);
        msix_on(&mut ep, true);
        assert_eq!(ep.interrupt_sink().fire(0), FireOutcome::Pending);
        msix_on(&mut ep, false);
        assert_eq!(count(&fd), 1);
    }

    #[test]
    fn set_irqs_msix_mask_unmask_and_install() {
        let (mut ep, fds) = endpoint();
        msix_on(&mut ep, false);
        let sink = ep.interrupt_sink();
        assert_eq!(sink.fire(7), FireOutcome::Pending, "no eventfd yet");
        let fd = fds.install(IRQ_MSIX, 7);
        ep.set_irqs(&IrqSetEvent {
            index: IRQ_MSIX,
            start: 0,
            count: 16,
            action: IrqAction::Trigger,
            data: IrqSetData::Eventfd { assigned: true },
        })
        .unwrap();
        assert_eq!(count(&fd), 1, "pending vector delivered on install");
        let mask = |action, data| IrqSetEvent {
            index: IRQ_MSIX,
            start: 6,
            count: 2,
            action,
            data,
        };
        ep.set_irqs(&mask(IrqAction::Mask, IrqSetData::Bool(vec![false, true])))
            .unwrap();
        assert!(ep.irq.vector_masked(7));
        assert!(!ep.irq.vector_masked(6));
        assert_eq!(sink.fire(7), FireOutcome::Pending);
        ep.set_irqs(&mask(IrqAction::Unmask, IrqSetData::None))
            .unwrap();
        assert_eq!(count(&fd), 1);
        // Unmask-notification eventfds (KVM resample) are refused, and unmask nothing.
        ep.set_irqs(&mask(IrqAction::Mask, IrqSetData::None))
            .unwrap();
        assert_eq!(
            ep.set_irqs(&mask(
                IrqAction::Unmask,
                IrqSetData::Eventfd { assigned: true }
            )),
            Err(Errno::NOTSUP)
        );
        assert!(ep.irq.vector_masked(7));
        ep.set_irqs(&mask(IrqAction::Unmask, IrqSetData::None))
            .unwrap();
        // Out-of-range start is ignored, not a panic.
        ep.set_irqs(&IrqSetEvent {
            index: IRQ_MSIX,
            start: u32::MAX,
            count: 16,
            action: IrqAction::Mask,
            data: IrqSetData::None,
        })
        .unwrap();
    }

    /// The client's INTx UNMASK (QEMU sends it after each INTx interrupt).
    fn intx_unmask() -> IrqSetEvent {
        IrqSetEvent {
            index: IRQ_INTX,
            start: 0,
            count: 1,
            action: IrqAction::Unmask,
            data: IrqSetData::None,
        }
    }

    #[test]
    fn intx_unmask_protocol_and_disable_bit() {
        let (mut ep, fds) = endpoint();
        let fd = fds.install(IRQ_INTX, 0);
        let sink = ep.interrupt_sink();
        let unmask = intx_unmask();
        assert_eq!(sink.fire(0), FireOutcome::Delivered);
        assert_eq!(sink.fire(0), FireOutcome::Pending, "auto-masked");
        assert_ne!(cfg_r16(&mut ep, 6) & STATUS_INTX, 0, "interrupt status");
        ep.set_irqs(&unmask).unwrap();
        assert_eq!(count(&fd), 2);
        assert_ne!(
            cfg_r16(&mut ep, 6) & STATUS_INTX,
            0,
            "held pulse now in flight"
        );
        ep.set_irqs(&unmask).unwrap();
        assert_eq!(cfg_r16(&mut ep, 6) & STATUS_INTX, 0, "acknowledged");
        cfg_w16(&mut ep, 4, CMD_INTX_DISABLE);
        assert_eq!(sink.fire(0), FireOutcome::Pending);
        assert_eq!(count(&fd), 0);
        cfg_w16(&mut ep, 4, 0);
        assert_eq!(count(&fd), 1);
    }

    #[test]
    fn intx_level_decides_redelivery_on_unmask() {
        let (mut ep, fds) = endpoint();
        let fd = fds.install(IRQ_INTX, 0);
        let sink = ep.interrupt_sink();
        let unmask = intx_unmask();
        // The guest consumed the work of the held pulse: level low, nothing redelivered.
        ep.function_mut().level = Some(false);
        assert_eq!(sink.fire(0), FireOutcome::Delivered);
        assert_eq!(sink.fire(0), FireOutcome::Pending);
        ep.set_irqs(&unmask).unwrap();
        assert_eq!(ep.function().level_asked, 1);
        assert_eq!(count(&fd), 1, "no spurious second interrupt");
        assert_eq!(cfg_r16(&mut ep, 6) & STATUS_INTX, 0);
        // Work still outstanding: redelivered even without a held pulse (level semantics).
        ep.function_mut().level = Some(true);
        assert_eq!(sink.fire(0), FireOutcome::Delivered);
        ep.set_irqs(&unmask).unwrap();
        assert_eq!(count(&fd), 2);
        // INTx-disable cleared: asked again.
        ep.function_mut().level = Some(false);
        ep.set_irqs(&unmask).unwrap();
        cfg_w16(&mut ep, 4, CMD_INTX_DISABLE);
        assert_eq!(sink.fire(0), FireOutcome::Pending);
        cfg_w16(&mut ep, 4, 0);
        assert_eq!(count(&fd), 0);
        assert_eq!(ep.function().level_asked, 4);
    }

    #[test]
    fn flr_resets_function_and_pci_state() {
        let (mut ep, fds) = endpoint();
        let fd = fds.install(IRQ_MSIX, 0);
        enable_memory(&mut ep);
        msix_on(&mut ep, false);
        ep.region_write(4, 12, &1u32.to_le_bytes()).unwrap();
        ep.region_write(CONFIG_REGION, 0x10, &0xfebf_0000u32.to_le_bytes())
            .unwrap();
        ep.interrupt_sink().fire(0);
        // Initiate FLR: PCIe device control at 0x48 + 8, bit 15.
        cfg_w16(&mut ep, 0x50, 0x8000);
        assert_eq!(ep.function().resets, vec![ResetKind::Flr]);
        assert_eq!(cfg_r16(&mut ep, 4), 0, "command cleared");
        assert_eq!(cfg_r16(&mut ep, 0x10), 0, "BAR cleared");
        assert_eq!(cfg_r16(&mut ep, 0x86), 15, "MSI-X disabled");
        assert_eq!(
            cfg_r16(&mut ep, 0x50),
            0x2810,
            "devctl default, FLR bit reads 0"
        );
        assert!(!ep.irq.msix_enabled());
        assert!(!ep.irq.is_pending(0));
        assert!(!ep.irq.vector_masked(0));
        let mut b = [0u8; 4];
        assert_eq!(
            ep.region_read(0, 0, &mut b),
            Err(Errno::IO),
            "decode off after FLR"
        );
        enable_memory(&mut ep);
        ep.region_read(4, 12, &mut b).unwrap();
        assert_eq!(
            u32::from_le_bytes(b),
            1,
            "table entry back to masked reset value"
        );
        msix_on(&mut ep, false);
        assert_eq!(ep.interrupt_sink().fire(0), FireOutcome::Delivered);
        assert_eq!(count(&fd), 1);
    }

    #[test]
    fn device_reset_resets_function_and_config() {
        let (mut ep, _) = endpoint();
        enable_memory(&mut ep);
        ep.reset(ResetKind::Device).unwrap();
        assert_eq!(ep.function().resets, vec![ResetKind::Device]);
        assert_eq!(cfg_r16(&mut ep, 4), 0);
    }

    #[test]
    fn detach_drops_route_and_keeps_state() {
        let (mut ep, fds) = endpoint();
        let fd = fds.install(IRQ_MSIX, 1);
        msix_on(&mut ep, false);
        ep.detach();
        assert_eq!(ep.interrupt_sink().fire(1), FireOutcome::Pending);
        assert_eq!(count(&fd), 0);
        assert!(ep.irq.msix_enabled(), "device state kept");
    }

    #[test]
    fn build_hands_the_sink_to_the_function() {
        struct WithSink(InterruptSink);
        impl PciFunction for WithSink {
            fn bar_read(&mut self, _: u32, _: u64, _: &mut [u8]) -> Result<(), Errno> {
                Ok(())
            }
            fn bar_write(&mut self, _: u32, _: u64, _: &[u8]) -> Result<(), Errno> {
                Ok(())
            }
            fn reset(&mut self, _: ResetKind) -> Result<(), Errno> {
                Ok(())
            }
        }
        let ep = PciEndpoint::build(config(), |s| Ok::<_, ()>(WithSink(s))).unwrap();
        assert_eq!(ep.function().0.vectors(), 16);
        assert!(!ep.function().0.msix_enabled());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Read(u32, u64, usize),
            Write(u32, u64, usize, u64),
            SetIrqs(u32, u32, u32, u8, u8),
            Fire(u16),
            Reset,
            Detach,
        }

        fn op() -> impl Strategy<Value = Op> {
            let region = prop_oneof![0u32..10, Just(7u32), Just(4u32), Just(5u32)];
            let offset = prop_oneof![0u64..0x5000, Just(u64::MAX - 2), 0x40u64..0x100];
            prop_oneof![
                (region.clone(), offset.clone(), 0usize..20)
                    .prop_map(|(r, o, l)| Op::Read(r, o, l)),
                (region, offset, 0usize..9, any::<u64>())
                    .prop_map(|(r, o, l, v)| Op::Write(r, o, l, v)),
                (0u32..6, 0u32..20, 0u32..20, 0u8..3, 0u8..3)
                    .prop_map(|(i, s, c, a, d)| Op::SetIrqs(i, s, c, a, d)),
                (0u16..20).prop_map(Op::Fire),
                Just(Op::Reset),
                Just(Op::Detach),
            ]
        }

        proptest! {
            /// Arbitrary client traffic never panics (the recorder function indexes its
            /// BAR0 vector directly, so an out-of-range callback would panic), errors are
            /// only the documented errnos, and the identity registers never change.
            #[test]
            fn arbitrary_traffic_is_contained(ops in proptest::collection::vec(op(), 1..150)) {
                let (mut ep, fds) = endpoint();
                let _fd = fds.install(IRQ_MSIX, 3);
                for op in ops {
                    let r = match op {
                        Op::Read(region, off, len) => {
                            let mut b = vec![0u8; len];
                            ep.region_read(region, off, &mut b)
                        }
                        Op::Write(region, off, len, v) => {
                            let b = v.to_le_bytes();
                            ep.region_write(region, off, &b[..len])
                        }
                        Op::SetIrqs(index, start, count, action, data) => {
                            let action = [IrqAction::Mask, IrqAction::Unmask, IrqAction::Trigger]
                                [action as usize];
                            let data = match data {
                                0 => IrqSetData::None,
                                1 => IrqSetData::Bool(vec![true; count as usize]),
                                _ => IrqSetData::Eventfd { assigned: true },
                            };
                            ep.set_irqs(&IrqSetEvent { index, start, count, action, data })
                        }
                        Op::Fire(v) => {
                            ep.interrupt_sink().fire(v);
                            Ok(())
                        }
                        Op::Reset => ep.reset(ResetKind::Device),
                        Op::Detach => {
                            ep.detach();
                            Ok(())
                        }
                    };
                    if let Err(e) = r {
                        prop_assert!(
                            [Errno::INVAL, Errno::IO, Errno::NOTSUP].contains(&e),
                            "unexpected errno {:?}", e
                        );
                    }
                    let mut id = [0u8; 4];
                    ep.region_read(CONFIG_REGION, 0, &mut id).unwrap();
                    prop_assert_eq!(id, [0x58, 0x4e, 0x01, 0x00]);
                }
            }
        }
    }
}
