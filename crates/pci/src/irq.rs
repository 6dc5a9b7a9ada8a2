//! Interrupt state shared between the endpoint thread and poll threads, and the
//! [`InterruptSink`] handle devices fire interrupts with.
//!
//! All state a poll thread needs is atomic: MSI-X enable and function mask (mirrored from
//! config writes), two per-vector "masked by the client" bitmaps (the client's own MSI-X
//! table writes, which are device state, and SET_IRQS MASK, which is per client and cleared
//! on attach/detach), the pending bit array, and the INTx state. The
//! eventfds live in the server's irq table, reached through an [`IrqSignal`] installed at
//! attach time (an `arc_swap` load on the fast path, no lock).
//!
//! Rules (see `vm-rig.md`):
//! * MSI-X enabled, vector not masked by the client: write the vector's eventfd, even though
//!   the table's reset value says "masked" -- QEMU and Cloud Hypervisor emulate the table
//!   themselves and never unmask in ours.
//! * Masked by the client (table write, SET_IRQS MASK, or function mask): set the PBA bit;
//!   it is delivered when the client unmasks.
//! * Enabled but no eventfd installed (yet) or no client attached: the PBA bit is set and the
//!   interrupt is delivered as soon as an eventfd for the vector is installed.
//! * MSI-X disabled: INTx (if the function has a pin). INTx is auto-masked on delivery, like
//!   VFIO's level-triggered INTx: the client's UNMASK re-arms it and delivers a pulse that
//!   arrived meanwhile. The command register's INTx-disable bit holds the pulse as pending.
//!
//! Lost-wakeup freedom: a firer sets the pending bit and then re-checks the mask; an unmasker
//! clears the mask and then takes the pending bit. With SeqCst ordering one of the two sees
//! the other, and only the one that wins `take_pending` delivers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustix::io::Errno;

/// VFIO irq index of INTx.
pub const IRQ_INTX: u32 = 0;
/// VFIO irq index of MSI.
pub const IRQ_MSI: u32 = 1;
/// VFIO irq index of MSI-X.
pub const IRQ_MSIX: u32 = 2;
/// VFIO irq index of the error notifier.
pub const IRQ_ERR: u32 = 3;
/// VFIO irq index of the request notifier.
pub const IRQ_REQ: u32 = 4;

/// Where interrupts physically go: the server's irq eventfd table for the attached client.
///
/// Implemented for `vfu_server::Irqs` by this crate; tests implement it over plain eventfds.
pub trait IrqSignal: Send + Sync + 'static {
    /// Writes the eventfd of (`index`, `vector`). `Ok(true)`: written; `Ok(false)`: no
    /// eventfd installed for it; `Err`: the write failed.
    fn signal(&self, index: u32, vector: u32) -> Result<bool, Errno>;
}

/// Which client action masked a vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MaskSource {
    /// Vector control bit in the MSI-X table (device state, survives reconnects).
    Table,
    /// SET_IRQS ACTION_MASK (per client).
    SetIrqs,
}

/// Result of [`InterruptSink::fire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FireOutcome {
    /// An eventfd was written.
    Delivered,
    /// Latched (PBA bit or INTx pending); delivered later on unmask / eventfd install /
    /// enable.
    Pending,
    /// Nowhere to deliver: bad vector, MSI-X disabled and no INTx pin, or the eventfd write
    /// failed.
    Dropped,
}

struct Route(Box<dyn IrqSignal>);

/// Atomic interrupt state of one function.
pub(crate) struct IrqShared {
    vectors: u32,
    has_intx: bool,
    msix_enabled: AtomicBool,
    msix_fn_masked: AtomicBool,
    /// Mask bits the client wrote into the MSI-X table (device state).
    table_masked: Box<[AtomicU64]>,
    /// Masks set with SET_IRQS MASK (per client: cleared on attach/detach).
    irq_masked: Box<[AtomicU64]>,
    pending: Box<[AtomicU64]>,
    intx_disabled: AtomicBool,
    intx_masked: AtomicBool,
    intx_pending: AtomicBool,
    /// Delivered and not yet acknowledged by the client's UNMASK (the line is "asserted").
    intx_inflight: AtomicBool,
    route: ArcSwapOption<Route>,
}

fn bitmap(bits: u32) -> Box<[AtomicU64]> {
    (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect()
}

fn word_bit(v: u32) -> (usize, u64) {
    ((v / 64) as usize, 1u64 << (v % 64))
}

impl IrqShared {
    pub(crate) fn new(vectors: u16, has_intx: bool) -> Self {
        let vectors = u32::from(vectors);
        Self {
            vectors,
            has_intx,
            msix_enabled: AtomicBool::new(false),
            msix_fn_masked: AtomicBool::new(false),
            table_masked: bitmap(vectors),
            irq_masked: bitmap(vectors),
            pending: bitmap(vectors),
            intx_disabled: AtomicBool::new(false),
            intx_masked: AtomicBool::new(false),
            intx_pending: AtomicBool::new(false),
            intx_inflight: AtomicBool::new(false),
            route: ArcSwapOption::empty(),
        }
    }

    pub(crate) fn vectors(&self) -> u32 {
        self.vectors
    }

    pub(crate) fn has_intx(&self) -> bool {
        self.has_intx
    }

    /// Installs (or removes) the delivery route. Called on attach/detach.
    pub(crate) fn set_route(&self, route: Option<Box<dyn IrqSignal>>) {
        self.route.store(route.map(|r| Arc::new(Route(r))));
    }

    fn signal(&self, index: u32, vector: u32) -> Result<bool, Errno> {
        match &*self.route.load() {
            Some(r) => r.0.signal(index, vector),
            None => Ok(false),
        }
    }

    fn bit(map: &[AtomicU64], v: u32) -> bool {
        let (w, b) = word_bit(v);
        map.get(w).is_some_and(|a| a.load(SeqCst) & b != 0)
    }

    fn set_bit(map: &[AtomicU64], v: u32, on: bool) {
        let (w, b) = word_bit(v);
        if let Some(a) = map.get(w) {
            if on {
                a.fetch_or(b, SeqCst);
            } else {
                a.fetch_and(!b, SeqCst);
            }
        }
    }

    fn take_pending(&self, v: u32) -> bool {
        let (w, b) = word_bit(v);
        self.pending
            .get(w)
            .is_some_and(|a| a.fetch_and(!b, SeqCst) & b != 0)
    }

    fn msix_masked(&self, v: u32) -> bool {
        self.msix_fn_masked.load(SeqCst)
            || Self::bit(&self.table_masked, v)
            || Self::bit(&self.irq_masked, v)
    }

    pub(crate) fn msix_enabled(&self) -> bool {
        self.msix_enabled.load(SeqCst)
    }

    /// Whether vector `v` is pending (PBA bit).
    pub(crate) fn is_pending(&self, v: u32) -> bool {
        Self::bit(&self.pending, v)
    }

    /// PBA qword `i` (bits for vectors 64*i ..).
    pub(crate) fn pba_word(&self, i: usize) -> u64 {
        self.pending.get(i).map_or(0, |a| a.load(SeqCst))
    }

    pub(crate) fn fire(&self, vector: u32) -> FireOutcome {
        if self.msix_enabled.load(SeqCst) {
            self.fire_msix(vector)
        } else {
            self.fire_intx()
        }
    }

    fn fire_msix(&self, v: u32) -> FireOutcome {
        if v >= self.vectors {
            tracing::debug!(vector = v, "MSI-X vector out of range");
            return FireOutcome::Dropped;
        }
        if !self.msix_masked(v) {
            return self.deliver_msix(v);
        }
        Self::set_bit(&self.pending, v, true);
        // Re-check: an unmask may have raced with us and missed the bit.
        if !self.msix_masked(v) && self.take_pending(v) {
            return self.deliver_msix(v);
        }
        FireOutcome::Pending
    }

    fn deliver_msix(&self, v: u32) -> FireOutcome {
        match self.signal(IRQ_MSIX, v) {
            Ok(true) => FireOutcome::Delivered,
            Ok(false) => {
                Self::set_bit(&self.pending, v, true);
                FireOutcome::Pending
            }
            Err(e) => {
                tracing::debug!(vector = v, error = %e, "MSI-X eventfd write failed");
                FireOutcome::Dropped
            }
        }
    }

    /// Delivers vector `v` if it is pending and deliverable now.
    fn flush_vector(&self, v: u32) -> bool {
        if self.msix_enabled.load(SeqCst) && !self.msix_masked(v) && self.take_pending(v) {
            return self.deliver_msix(v) == FireOutcome::Delivered;
        }
        false
    }

    /// Delivers every pending, deliverable vector in `range`.
    pub(crate) fn flush_range(&self, first: u32, count: u32) -> u32 {
        let end = first.saturating_add(count).min(self.vectors);
        let mut n = 0;
        for v in first..end {
            if self.is_pending(v) && self.flush_vector(v) {
                n += 1;
            }
        }
        n
    }

    fn fire_intx(&self) -> FireOutcome {
        if !self.has_intx {
            return FireOutcome::Dropped;
        }
        self.intx_pending.store(true, SeqCst);
        if self.try_deliver_intx() {
            FireOutcome::Delivered
        } else {
            FireOutcome::Pending
        }
    }

    /// Delivers a pending INTx pulse if INTx is enabled and unmasked; auto-masks on delivery.
    fn try_deliver_intx(&self) -> bool {
        loop {
            if !self.has_intx
                || self.msix_enabled.load(SeqCst)
                || self.intx_disabled.load(SeqCst)
                || !self.intx_pending.load(SeqCst)
            {
                return false;
            }
            if self
                .intx_masked
                .compare_exchange(false, true, SeqCst, SeqCst)
                .is_err()
            {
                return false; // masked: the unmasker re-checks
            }
            if self.intx_pending.swap(false, SeqCst) {
                match self.signal(IRQ_INTX, 0) {
                    Ok(true) => {
                        self.intx_inflight.store(true, SeqCst);
                        return true;
                    }
                    Ok(false) => {
                        // No eventfd: keep it pending, undo the auto-mask.
                        self.intx_pending.store(true, SeqCst);
                        self.intx_masked.store(false, SeqCst);
                        return false;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "INTx eventfd write failed");
                        self.intx_masked.store(false, SeqCst);
                        return false;
                    }
                }
            }
            // Someone else delivered our pulse; release the claim and look again.
            self.intx_masked.store(false, SeqCst);
        }
    }

    #[cfg(test)]
    pub(crate) fn intx_pending(&self) -> bool {
        self.intx_pending.load(SeqCst)
    }

    /// The Interrupt Status bit: a pulse is pending, or was delivered and the client has
    /// not unmasked (acknowledged) it yet.
    pub(crate) fn intx_status(&self) -> bool {
        self.intx_pending.load(SeqCst) || self.intx_inflight.load(SeqCst)
    }

    #[cfg(test)]
    pub(crate) fn intx_masked(&self) -> bool {
        self.intx_masked.load(SeqCst)
    }

    /// Drops a latched INTx pulse (the device deasserted its interrupt condition).
    pub(crate) fn deassert_intx(&self) {
        self.intx_pending.store(false, SeqCst);
    }

    /// Takes the latched INTx pulse (returns whether there was one).
    pub(crate) fn take_intx_pending(&self) -> bool {
        self.intx_pending.swap(false, SeqCst)
    }

    /// Latches an INTx pulse without trying to deliver it.
    pub(crate) fn latch_intx(&self) {
        self.intx_pending.store(true, SeqCst);
    }

    /// Client SET_IRQS MASK/UNMASK on INTx.
    pub(crate) fn set_intx_masked(&self, masked: bool) {
        if !masked {
            self.intx_inflight.store(false, SeqCst);
        }
        self.intx_masked.store(masked, SeqCst);
        if !masked {
            self.try_deliver_intx();
        }
    }

    /// Command register INTx-disable bit.
    pub(crate) fn set_intx_disabled(&self, disabled: bool) {
        self.intx_disabled.store(disabled, SeqCst);
        if !disabled {
            self.try_deliver_intx();
        }
    }

    /// MSI-X enable / function mask from the message control register.
    pub(crate) fn set_msix_control(&self, enabled: bool, fn_masked: bool) {
        self.msix_fn_masked.store(fn_masked, SeqCst);
        self.msix_enabled.store(enabled, SeqCst);
        if enabled && !fn_masked {
            self.flush_range(0, self.vectors);
        } else if !enabled {
            self.try_deliver_intx();
        }
    }

    /// The client masked/unmasked vector `v` through `source`. An unmask delivers the
    /// vector if it is pending and no other mask holds it.
    pub(crate) fn set_vector_masked(&self, v: u32, source: MaskSource, masked: bool) {
        if v >= self.vectors {
            return;
        }
        let map = match source {
            MaskSource::Table => &self.table_masked,
            MaskSource::SetIrqs => &self.irq_masked,
        };
        Self::set_bit(map, v, masked);
        if !masked {
            self.flush_vector(v);
        }
    }

    /// Drops the SET_IRQS masks of a departed client (the next client starts unmasked) and
    /// delivers what they held back, if a route exists.
    pub(crate) fn clear_client_masks(&self) {
        for a in self.irq_masked.iter() {
            a.store(0, SeqCst);
        }
        if self.msix_enabled() && !self.msix_fn_masked.load(SeqCst) {
            self.flush_range(0, self.vectors);
        }
    }

    #[cfg(test)]
    pub(crate) fn vector_masked(&self, v: u32) -> bool {
        Self::bit(&self.table_masked, v) || Self::bit(&self.irq_masked, v)
    }

    /// Back to power-on state (FLR, device reset). The route is kept.
    pub(crate) fn reset(&self) {
        self.msix_enabled.store(false, SeqCst);
        self.msix_fn_masked.store(false, SeqCst);
        let maps = [&self.table_masked, &self.irq_masked, &self.pending];
        for a in maps.into_iter().flat_map(|m| m.iter()) {
            a.store(0, SeqCst);
        }
        self.intx_disabled.store(false, SeqCst);
        self.intx_masked.store(false, SeqCst);
        self.intx_pending.store(false, SeqCst);
        self.intx_inflight.store(false, SeqCst);
    }
}

/// Cheap, cloneable handle with which device code (poll threads) raises interrupts.
///
/// `Send + Sync`; `fire` takes no lock: a few atomic loads, one `arc_swap` load and one
/// eventfd write.
#[derive(Clone)]
pub struct InterruptSink {
    shared: Arc<IrqShared>,
}

impl std::fmt::Debug for InterruptSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterruptSink")
            .field("vectors", &self.shared.vectors)
            .field("msix_enabled", &self.shared.msix_enabled())
            .finish()
    }
}

impl InterruptSink {
    pub(crate) fn new(shared: Arc<IrqShared>) -> Self {
        Self { shared }
    }

    /// Raises MSI-X vector `vector` (or, with MSI-X disabled, an INTx pulse; `vector` is then
    /// ignored). See the module docs for the masking rules.
    pub fn fire(&self, vector: u16) -> FireOutcome {
        self.shared.fire(u32::from(vector))
    }

    /// Whether the client enabled MSI-X (message control bit 15).
    pub fn msix_enabled(&self) -> bool {
        self.shared.msix_enabled()
    }

    /// Number of MSI-X vectors of the function (0 without MSI-X).
    pub fn vectors(&self) -> u16 {
        u16::try_from(self.shared.vectors).unwrap_or(u16::MAX)
    }

    /// Whether vector `vector`'s PBA bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        self.shared.is_pending(u32::from(vector))
    }

    /// Drops a latched INTx pulse that has not been delivered yet (the device's interrupt
    /// condition went away, e.g. the guest consumed the completions).
    pub fn deassert_intx(&self) {
        self.shared.deassert_intx();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// Test irq table: real eventfds per (index, vector).
    #[derive(Default)]
    pub(crate) struct Fds(pub Mutex<Vec<(u32, u32, EventFd)>>);

    pub(crate) struct SharedFds(pub Arc<Fds>);

    impl IrqSignal for SharedFds {
        fn signal(&self, index: u32, vector: u32) -> Result<bool, Errno> {
            let fds = self.0 .0.lock().unwrap();
            match fds.iter().find(|(i, v, _)| *i == index && *v == vector) {
                Some((_, _, fd)) => fd
                    .write(1)
                    .map(|()| true)
                    .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO)),
                None => Ok(false),
            }
        }
    }

    impl Fds {
        pub(crate) fn install(&self, index: u32, vector: u32) -> EventFd {
            let fd = EventFd::new(EFD_NONBLOCK).unwrap();
            let dup = fd.try_clone().unwrap();
            self.0.lock().unwrap().push((index, vector, fd));
            dup
        }
    }

    pub(crate) fn count(fd: &EventFd) -> u64 {
        fd.read().unwrap_or(0)
    }

    fn setup(vectors: u16, intx: bool) -> (Arc<IrqShared>, Arc<Fds>) {
        let shared = Arc::new(IrqShared::new(vectors, intx));
        let fds = Arc::new(Fds::default());
        shared.set_route(Some(Box::new(SharedFds(fds.clone()))));
        (shared, fds)
    }

    #[test]
    fn msix_fires_installed_eventfd_without_any_unmask() {
        let (s, fds) = setup(8, true);
        let fd = fds.install(IRQ_MSIX, 3);
        s.set_msix_control(true, false);
        let sink = InterruptSink::new(s.clone());
        assert_eq!(sink.fire(3), FireOutcome::Delivered);
        assert_eq!(sink.fire(3), FireOutcome::Delivered);
        assert_eq!(count(&fd), 2);
    }

    #[test]
    fn msix_vector_mask_latches_pending_and_unmask_delivers() {
        let (s, fds) = setup(8, true);
        let fd = fds.install(IRQ_MSIX, 1);
        s.set_msix_control(true, false);
        s.set_vector_masked(1, MaskSource::Table, true);
        assert_eq!(s.fire(1), FireOutcome::Pending);
        assert_eq!(s.fire(1), FireOutcome::Pending);
        assert!(s.is_pending(1));
        assert_eq!(s.pba_word(0), 0b10);
        assert_eq!(count(&fd), 0);
        s.set_vector_masked(1, MaskSource::Table, false);
        assert_eq!(count(&fd), 1, "one delivery for the coalesced pending bit");
        assert!(!s.is_pending(1));
        assert_eq!(s.pba_word(0), 0);
    }

    #[test]
    fn msix_function_mask_latches_all_and_clear_delivers() {
        let (s, fds) = setup(70, true);
        let fd0 = fds.install(IRQ_MSIX, 0);
        let fd69 = fds.install(IRQ_MSIX, 69);
        s.set_msix_control(true, true);
        assert_eq!(s.fire(0), FireOutcome::Pending);
        assert_eq!(s.fire(69), FireOutcome::Pending);
        assert_eq!(s.pba_word(1), 1 << 5);
        s.set_msix_control(true, false);
        assert_eq!((count(&fd0), count(&fd69)), (1, 1));
        assert_eq!((s.pba_word(0), s.pba_word(1)), (0, 0));
    }

    #[test]
    fn msix_without_eventfd_is_pending_until_install() {
        let (s, fds) = setup(4, true);
        s.set_msix_control(true, false);
        assert_eq!(s.fire(2), FireOutcome::Pending);
        let fd = fds.install(IRQ_MSIX, 2);
        assert_eq!(s.flush_range(0, 4), 1);
        assert_eq!(count(&fd), 1);
        assert_eq!(s.flush_range(0, 4), 0);
    }

    #[test]
    fn msix_without_route_is_pending() {
        let s = Arc::new(IrqShared::new(4, false));
        s.set_msix_control(true, false);
        assert_eq!(s.fire(0), FireOutcome::Pending);
        assert!(s.is_pending(0));
    }

    #[test]
    fn msix_table_and_setirqs_masks_are_independent() {
        let (s, fds) = setup(2, false);
        let fd = fds.install(IRQ_MSIX, 0);
        s.set_msix_control(true, false);
        s.set_vector_masked(0, MaskSource::Table, true);
        s.set_vector_masked(0, MaskSource::SetIrqs, true);
        assert_eq!(s.fire(0), FireOutcome::Pending);
        s.set_vector_masked(0, MaskSource::Table, false);
        assert_eq!(count(&fd), 0, "still masked by SET_IRQS");
        s.clear_client_masks(); // client gone / new client
        assert_eq!(count(&fd), 1);
        s.set_vector_masked(0, MaskSource::Table, true);
        s.clear_client_masks();
        assert!(s.vector_masked(0), "table mask is device state");
        assert_eq!(s.fire(0), FireOutcome::Pending);
    }

    #[test]
    fn msix_bad_vector_is_dropped() {
        let (s, _fds) = setup(4, true);
        s.set_msix_control(true, false);
        assert_eq!(s.fire(4), FireOutcome::Dropped);
        assert_eq!(s.fire(u32::MAX), FireOutcome::Dropped);
        s.set_vector_masked(4, MaskSource::Table, true); // ignored, no panic
        assert!(!s.vector_masked(4));
    }

    #[test]
    fn intx_used_when_msix_disabled_and_automasks() {
        let (s, fds) = setup(4, true);
        let fd = fds.install(IRQ_INTX, 0);
        assert!(!s.intx_status());
        assert_eq!(s.fire(0), FireOutcome::Delivered);
        assert!(s.intx_masked(), "auto-masked after delivery");
        assert!(s.intx_status(), "asserted until the client acknowledges");
        assert_eq!(s.fire(0), FireOutcome::Pending);
        assert_eq!(count(&fd), 1);
        s.set_intx_masked(false); // client UNMASK
        assert_eq!(count(&fd), 1, "pending pulse delivered on unmask");
        assert!(s.intx_masked());
        s.set_intx_masked(false);
        assert_eq!(count(&fd), 0, "nothing pending: no spurious interrupt");
        assert!(!s.intx_status());
        assert!(!s.intx_masked());
    }

    #[test]
    fn intx_disable_bit_holds_pulse() {
        let (s, fds) = setup(0, true);
        let fd = fds.install(IRQ_INTX, 0);
        s.set_intx_disabled(true);
        assert_eq!(s.fire(0), FireOutcome::Pending);
        assert!(s.intx_pending());
        assert_eq!(count(&fd), 0);
        s.set_intx_disabled(false);
        assert_eq!(count(&fd), 1);
        assert!(!s.intx_pending());
    }

    #[test]
    fn intx_deassert_cancels_pending_pulse() {
        let (s, fds) = setup(0, true);
        let fd = fds.install(IRQ_INTX, 0);
        s.set_intx_masked(true);
        assert_eq!(s.fire(0), FireOutcome::Pending);
        InterruptSink::new(s.clone()).deassert_intx();
        s.set_intx_masked(false);
        assert_eq!(count(&fd), 0);
    }

    #[test]
    fn no_pin_and_no_msix_drops() {
        let (s, _fds) = setup(4, false);
        assert_eq!(s.fire(0), FireOutcome::Dropped);
    }

    #[test]
    fn reset_clears_state_keeps_route() {
        let (s, fds) = setup(4, true);
        let fd = fds.install(IRQ_MSIX, 0);
        s.set_msix_control(true, true);
        s.set_vector_masked(0, MaskSource::Table, true);
        s.fire(0);
        s.reset();
        assert!(!s.msix_enabled());
        assert!(!s.is_pending(0));
        assert!(!s.vector_masked(0));
        s.set_msix_control(true, false);
        assert_eq!(s.fire(0), FireOutcome::Delivered);
        assert_eq!(count(&fd), 1);
    }

    #[test]
    fn concurrent_fire_and_unmask_never_lose_an_interrupt() {
        for _ in 0..50 {
            let (s, fds) = setup(1, false);
            let fd = fds.install(IRQ_MSIX, 0);
            s.set_msix_control(true, false);
            s.set_vector_masked(0, MaskSource::Table, true);
            let s2 = s.clone();
            let t = std::thread::spawn(move || s2.fire(0));
            s.set_vector_masked(0, MaskSource::Table, false);
            let outcome = t.join().unwrap();
            // Whatever the interleaving, the one interrupt arrived exactly once.
            assert_eq!(count(&fd), 1, "outcome {outcome:?}");
            assert!(!s.is_pending(0));
        }
    }
}
