//! The audited unsafe core: the shared doorbell page and raw access to guest queue rings
//! and data iovecs.
//!
//! Every pointer handled here was either produced by our own `mmap` (doorbell page) or
//! obtained from a `vm_memory` `VolatileSlice` whose bounds were checked by `vm-memory`,
//! and is kept valid by an `Arc<GuestMem>` held alongside it. Guest memory is only
//! accessed with volatile loads/stores or raw copies: no Rust reference is ever formed
//! over memory the guest can change.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryBackend};

use sluice_bdev::IoVec;

use crate::spec::{Cqe, Sqe};
use crate::GuestMem;

/// Number of 32-bit doorbell registers in the doorbell page (512 queue pairs, DSTRD 0).
pub const DOORBELL_COUNT: usize = 1024;
/// Size in bytes of the doorbell page.
pub const DOORBELL_PAGE_SIZE: usize = DOORBELL_COUNT * 4;

/// A 4 KiB memfd-backed page of doorbell registers, mapped shared into this process.
///
/// The same memfd is exposed to the client as the sparse-mmap area of BAR0 at 0x1000, so
/// guest doorbell writes land here without a VM exit; trapped writes are stored here too.
#[derive(Debug)]
pub struct DoorbellPage {
    fd: Arc<OwnedFd>,
    base: NonNull<AtomicU32>,
}

// SAFETY: the page is only accessed through `AtomicU32` operations, which are safe to use
// from any thread; the mapping lives as long as the struct.
unsafe impl Send for DoorbellPage {}
// SAFETY: as above: all accesses are atomic.
unsafe impl Sync for DoorbellPage {}

impl DoorbellPage {
    /// Create the memfd, size it and map it shared.
    pub fn new() -> std::io::Result<DoorbellPage> {
        let fd = rustix::fs::memfd_create(
            "sluice-nvme-doorbells",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )?;
        // File layout mirrors BAR0: page 0 unused (registers are trapped), page 1 holds
        // the doorbells, so the BAR0 sparse area 0x1000..0x2000 maps file offset 0x1000.
        rustix::fs::ftruncate(&fd, 2 * DOORBELL_PAGE_SIZE as u64)?;
        // SAFETY: we map a fresh fd of exactly DOORBELL_PAGE_SIZE bytes at a kernel-chosen
        // address; nothing else in this process aliases the new mapping.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                DOORBELL_PAGE_SIZE,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &fd,
                DOORBELL_PAGE_SIZE as u64,
            )?
        };
        let base = NonNull::new(ptr.cast::<AtomicU32>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        // Forbid shrinking the file so the client's mapping can never SIGBUS us.
        let _ = rustix::fs::fcntl_add_seals(
            &fd,
            rustix::fs::SealFlags::SHRINK
                | rustix::fs::SealFlags::GROW
                | rustix::fs::SealFlags::SEAL,
        );
        Ok(DoorbellPage {
            fd: Arc::new(fd),
            base,
        })
    }

    /// The memfd backing the page (file offset 0x1000 is doorbell 0, like BAR0).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A shared owner of the memfd (for `vfu_server::RegionMmap`).
    pub fn fd_arc(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.fd)
    }

    fn cell(&self, index: usize) -> Option<&AtomicU32> {
        if index >= DOORBELL_COUNT {
            return None;
        }
        // SAFETY: index < DOORBELL_COUNT so the pointer is inside our live, page-aligned
        // mapping; AtomicU32 has the alignment of u32 and concurrent access from the
        // client process is through atomic (or plain MMIO-style) 32-bit accesses.
        Some(unsafe { &*self.base.as_ptr().add(index) })
    }

    /// Load doorbell `index` (0 = SQ0 tail, 1 = CQ0 head, ...).
    pub fn load(&self, index: usize) -> u32 {
        self.cell(index).map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Store doorbell `index` (trapped doorbell writes and resets).
    pub fn store(&self, index: usize, value: u32) {
        if let Some(c) = self.cell(index) {
            c.store(value, Ordering::Release);
        }
    }

    /// Zero every doorbell.
    pub fn clear(&self) {
        for i in 0..DOORBELL_COUNT {
            self.store(i, 0);
        }
    }
}

impl Drop for DoorbellPage {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned in `new`; no reference obtained
        // from `cell` can outlive `&self`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), DOORBELL_PAGE_SIZE) };
    }
}

/// A contiguous queue ring (SQ or CQ) inside one mapped guest region.
#[derive(Debug)]
pub struct Ring {
    ptr: NonNull<u8>,
    bytes: usize,
    _keep: Arc<GuestMem>,
}

// SAFETY: the ring is only accessed through volatile operations from the owning poll
// thread; the pointed-to mapping is kept alive by `_keep`.
unsafe impl Send for Ring {}

impl Ring {
    /// Map `bytes` at guest address `gpa`; `None` unless the whole range lies in one
    /// mapped region.
    pub fn new(mem: &Arc<GuestMem>, gpa: u64, bytes: usize) -> Option<Ring> {
        let slice = mem.get_slice(GuestAddress(gpa), bytes).ok()?;
        if slice.len() != bytes {
            return None;
        }
        let ptr = NonNull::new(slice.ptr_guard_mut().as_ptr())?;
        Some(Ring {
            ptr,
            bytes,
            _keep: Arc::clone(mem),
        })
    }

    /// Read the 64-byte SQE at `index`; `None` if out of the ring.
    pub fn read_sqe(&self, index: u16) -> Option<Sqe> {
        let off = usize::from(index).checked_mul(64)?;
        if off.checked_add(64)? > self.bytes {
            return None;
        }
        let mut sqe = Sqe::default();
        // SAFETY: off + 64 <= bytes, checked above, so the 16 dword reads stay inside the
        // mapped ring; the queue base is page aligned so u32 reads are aligned. Volatile
        // reads never create a reference to guest memory.
        unsafe {
            let p = self.ptr.as_ptr().add(off).cast::<u32>();
            for (i, d) in sqe.dw.iter_mut().enumerate() {
                *d = u32::from_le(std::ptr::read_volatile(p.add(i)));
            }
        }
        Some(sqe)
    }

    /// Write the CQE at `index`: dwords 0-2 first, then dword 3 (status and phase) after
    /// a release fence so the host never sees a new phase with stale contents.
    pub fn write_cqe(&self, index: u16, cqe: &Cqe, phase: bool) -> Option<()> {
        let off = usize::from(index).checked_mul(16)?;
        if off.checked_add(16)? > self.bytes {
            return None;
        }
        // SAFETY: off + 16 <= bytes (checked), aligned as the ring base is page aligned.
        unsafe {
            let p = self.ptr.as_ptr().add(off).cast::<u32>();
            std::ptr::write_volatile(p, cqe.dw0.to_le());
            std::ptr::write_volatile(p.add(1), cqe.dw1.to_le());
            std::ptr::write_volatile(p.add(2), cqe.dw2().to_le());
            fence(Ordering::Release);
            std::ptr::write_volatile(p.add(3), cqe.dw3(phase).to_le());
        }
        Some(())
    }

    /// Read a u32 at `byte_off` (shadow doorbells, in-crate hosts and tests).
    pub fn read_u32(&self, byte_off: usize) -> Option<u32> {
        if byte_off % 4 != 0 || byte_off.checked_add(4)? > self.bytes {
            return None;
        }
        // SAFETY: bounds and alignment checked above.
        Some(unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(byte_off).cast::<u32>()) })
    }

    /// Write a u32 at `byte_off` (shadow doorbell EventIdx entries).
    pub fn write_u32(&self, byte_off: usize, v: u32) -> Option<()> {
        if byte_off % 4 != 0 || byte_off.checked_add(4)? > self.bytes {
            return None;
        }
        // SAFETY: bounds and alignment checked above.
        unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(byte_off).cast::<u32>(), v) };
        Some(())
    }

    /// Zero the whole ring.
    pub fn zero(&self) {
        // SAFETY: ptr..ptr+bytes is inside one mapped region (checked in `new`).
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), 0, self.bytes) };
    }
}

/// Extend `v` by `extra` bytes that directly follow it in host memory.
///
/// The caller passes a neighbour obtained from a `vm-memory` `VolatileSlice` of the same
/// DMA snapshot: both ranges are mapped and kept alive by the request's keepalive.
pub fn iovec_extend(v: IoVec, extra: usize) -> Option<IoVec> {
    let len = v.len().checked_add(extra)?;
    // SAFETY: v covered mapped memory [base, base+len) and the caller validated (through
    // vm-memory) that [base+len, base+len+extra) is mapped in the same snapshot; the
    // snapshot is held by the request until completion.
    Some(unsafe { IoVec::from_raw(v.base(), len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbell_page_load_store() {
        let p = DoorbellPage::new().unwrap();
        p.store(3, 7);
        assert_eq!(p.load(3), 7);
        assert_eq!(p.load(DOORBELL_COUNT), 0);
        p.store(DOORBELL_COUNT + 5, 1); // ignored, no crash
        p.clear();
        assert_eq!(p.load(3), 0);
    }

    #[test]
    fn ring_rejects_out_of_region() {
        let mem = Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap());
        assert!(Ring::new(&mem, 0x3000, 0x2000).is_none());
        let r = Ring::new(&mem, 0x3000, 0x1000).unwrap();
        assert!(r.read_sqe(64).is_none());
        assert!(r.read_sqe(63).is_some());
        assert!(r.write_cqe(256, &Cqe::default(), true).is_none());
    }
}
