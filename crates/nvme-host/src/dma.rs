//! DMA memory shared with the target: one memfd, mapped here with `vm-memory` and handed to
//! the target with DMA_MAP, carved into page-aligned buffers.
//!
//! The target can write this memory at any time, so it is only ever touched through
//! `vm-memory`'s volatile accessors; no `&[u8]` is formed over it.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, MmapRegion};

use crate::error::DmaError;

/// Page size used for DMA buffers and PRPs.
pub const PAGE_SIZE: u64 = 4096;

fn out_of_bounds(iova: u64, len: usize) -> DmaError {
    DmaError::OutOfBounds {
        iova,
        len: len as u64,
    }
}

/// A memfd-backed arena of DMA memory at a fixed IOVA range.
#[derive(Debug)]
pub struct DmaArena {
    mem: GuestMemoryMmap,
    file: Arc<File>,
    base: u64,
    size: u64,
    pages: Mutex<Vec<bool>>,
}

impl DmaArena {
    /// Creates an arena of `size` bytes (rounded up to pages) at IOVA `base` (page aligned).
    pub fn new(base: u64, size: u64) -> Result<Arc<Self>, DmaError> {
        if base % PAGE_SIZE != 0 || size == 0 {
            return Err(DmaError::OutOfBounds {
                iova: base,
                len: size,
            });
        }
        let size = size
            .div_ceil(PAGE_SIZE)
            .checked_mul(PAGE_SIZE)
            .ok_or(DmaError::OutOfMemory(size))?;
        let fd = rustix::fs::memfd_create("sluice-nvme-host-dma", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| DmaError::Create(e.into()))?;
        let file = File::from(fd);
        file.set_len(size).map_err(DmaError::Create)?;
        Self::from_file(base, size, file)
    }

    /// An arena over an existing file of at least `size` bytes (offset 0 = IOVA `base`),
    /// for example the memory a transport serves for a DMA window mapped without an fd.
    pub fn from_file(base: u64, size: u64, file: File) -> Result<Arc<Self>, DmaError> {
        if base % PAGE_SIZE != 0 || size == 0 || size % PAGE_SIZE != 0 {
            return Err(DmaError::OutOfBounds {
                iova: base,
                len: size,
            });
        }
        let have = file.metadata().map_err(DmaError::Create)?.len();
        if have < size {
            return Err(DmaError::OutOfBounds {
                iova: base,
                len: size,
            });
        }
        let file = Arc::new(file);
        let len = usize::try_from(size).map_err(|_| DmaError::OutOfMemory(size))?;
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(base),
            len,
            Some(FileOffset::from_arc(file.clone(), 0)),
        )])
        .map_err(|e| DmaError::Mmap(Box::new(e)))?;
        let npages = usize::try_from(size / PAGE_SIZE).map_err(|_| DmaError::OutOfMemory(size))?;
        Ok(Arc::new(Self {
            mem,
            file,
            base,
            size,
            pages: Mutex::new(vec![false; npages]),
        }))
    }

    /// The memfd backing the arena (offset 0 = IOVA `base`).
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// First IOVA of the arena.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Allocates a zeroed, page-aligned buffer of at least `len` bytes.
    pub fn alloc(self: &Arc<Self>, len: u64) -> Result<DmaBuf, DmaError> {
        let want = usize::try_from(len.max(1).div_ceil(PAGE_SIZE))
            .map_err(|_| DmaError::OutOfMemory(len))?;
        let first = {
            let mut pages = self.pages.lock().map_err(|_| DmaError::OutOfMemory(len))?;
            let mut run = 0usize;
            let mut found = None;
            for (i, used) in pages.iter().enumerate() {
                if *used {
                    run = 0;
                } else {
                    run += 1;
                    if run == want {
                        found = Some(i + 1 - want);
                        break;
                    }
                }
            }
            let first = found.ok_or(DmaError::OutOfMemory(len))?;
            for p in pages.iter_mut().skip(first).take(want) {
                *p = true;
            }
            first
        };
        let iova = self.base + first as u64 * PAGE_SIZE;
        let bytes = want as u64 * PAGE_SIZE;
        let buf = DmaBuf {
            arena: self.clone(),
            iova,
            len: bytes,
        };
        buf.fill(0)?;
        Ok(buf)
    }

    fn free(&self, iova: u64, len: u64) {
        let first = usize::try_from((iova - self.base) / PAGE_SIZE).unwrap_or(usize::MAX);
        let n = usize::try_from(len / PAGE_SIZE).unwrap_or(0);
        if let Ok(mut pages) = self.pages.lock() {
            for p in pages.iter_mut().skip(first).take(n) {
                *p = false;
            }
        }
    }

    fn check(&self, iova: u64, len: u64) -> Result<GuestAddress, DmaError> {
        let end = iova
            .checked_add(len)
            .ok_or(DmaError::OutOfBounds { iova, len })?;
        if iova < self.base || end > self.base + self.size {
            return Err(DmaError::OutOfBounds { iova, len });
        }
        Ok(GuestAddress(iova))
    }

    /// Copies `data` into the arena at `iova`.
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let a = self.check(iova, data.len() as u64)?;
        self.mem
            .write_slice(data, a)
            .map_err(|_| out_of_bounds(iova, data.len()))
    }

    /// Copies from the arena at `iova` into `data`.
    pub fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
        let a = self.check(iova, data.len() as u64)?;
        self.mem
            .read_slice(data, a)
            .map_err(|_| out_of_bounds(iova, data.len()))
    }

    /// A second, shared mapping of `len` bytes at `iova` (same pages, coherent): hot loops
    /// (queue rings) access it without the per-access region lookup of the arena.
    pub fn alias(&self, iova: u64, len: u64) -> Result<MmapRegion, DmaError> {
        self.check(iova, len)?;
        let len = usize::try_from(len).map_err(|_| DmaError::OutOfBounds { iova, len })?;
        MmapRegion::from_file(
            FileOffset::from_arc(self.file.clone(), iova - self.base),
            len,
        )
        .map_err(|e| DmaError::Mmap(Box::new(e)))
    }

    /// Atomically stores a u32 (release ordering).
    pub fn store_u32(&self, iova: u64, v: u32) -> Result<(), DmaError> {
        let a = self.check(iova, 4)?;
        self.mem
            .store(v, a, Ordering::Release)
            .map_err(|_| DmaError::OutOfBounds { iova, len: 4 })
    }

    /// Atomically loads a u32 (acquire ordering).
    pub fn load_u32(&self, iova: u64) -> Result<u32, DmaError> {
        let a = self.check(iova, 4)?;
        self.mem
            .load(a, Ordering::Acquire)
            .map_err(|_| DmaError::OutOfBounds { iova, len: 4 })
    }

    /// Stores a little-endian u64.
    pub fn write_u64(&self, iova: u64, v: u64) -> Result<(), DmaError> {
        self.write(iova, &v.to_le_bytes())
    }
}

/// A page-aligned buffer in a [`DmaArena`]; freed on drop.
#[derive(Debug)]
pub struct DmaBuf {
    arena: Arc<DmaArena>,
    iova: u64,
    len: u64,
}

impl DmaBuf {
    /// IOVA of the first byte.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Length in bytes (a whole number of pages).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: buffers have at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The arena this buffer lives in.
    pub fn arena(&self) -> &Arc<DmaArena> {
        &self.arena
    }

    fn range(&self, off: u64, len: u64) -> Result<u64, DmaError> {
        let end = off.checked_add(len).ok_or(DmaError::OutOfBounds {
            iova: self.iova,
            len,
        })?;
        if end > self.len {
            return Err(DmaError::OutOfBounds {
                iova: self.iova.saturating_add(off),
                len,
            });
        }
        Ok(self.iova + off)
    }

    /// Writes `data` at byte offset `off`.
    pub fn write_at(&self, off: u64, data: &[u8]) -> Result<(), DmaError> {
        let a = self.range(off, data.len() as u64)?;
        self.arena.write(a, data)
    }

    /// Reads into `data` from byte offset `off`.
    pub fn read_at(&self, off: u64, data: &mut [u8]) -> Result<(), DmaError> {
        let a = self.range(off, data.len() as u64)?;
        self.arena.read(a, data)
    }

    /// Reads `len` bytes at `off` into a new vector.
    pub fn to_vec(&self, off: u64, len: usize) -> Result<Vec<u8>, DmaError> {
        let mut v = vec![0u8; len];
        self.read_at(off, &mut v)?;
        Ok(v)
    }

    /// Fills the whole buffer with `byte`.
    pub fn fill(&self, byte: u8) -> Result<(), DmaError> {
        let chunk = [byte; 4096];
        let mut off = 0;
        while off < self.len {
            let n = (self.len - off).min(4096);
            let part = chunk.get(..n as usize).unwrap_or(&chunk);
            self.write_at(off, part)?;
            off += n;
        }
        Ok(())
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        self.arena.free(self.iova, self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_is_page_aligned_zeroed_and_reused_after_drop() {
        let arena = DmaArena::new(0x10_0000, 4 * PAGE_SIZE).unwrap();
        let a = arena.alloc(100).unwrap();
        assert_eq!(a.iova() % PAGE_SIZE, 0);
        assert_eq!(a.len(), PAGE_SIZE);
        a.write_at(10, b"hello").unwrap();
        assert_eq!(a.to_vec(10, 5).unwrap(), b"hello");
        let b = arena.alloc(3 * PAGE_SIZE).unwrap();
        assert!(arena.alloc(1).is_err(), "arena must be full");
        let a_iova = a.iova();
        drop(a);
        let c = arena.alloc(1).unwrap();
        assert_eq!(c.iova(), a_iova);
        assert_eq!(
            c.to_vec(10, 5).unwrap(),
            vec![0; 5],
            "fresh buffers are zeroed"
        );
        drop(b);
    }

    #[test]
    fn out_of_bounds_access_is_refused() {
        let arena = DmaArena::new(0x10_0000, PAGE_SIZE).unwrap();
        let a = arena.alloc(1).unwrap();
        assert!(a.write_at(PAGE_SIZE - 2, b"abc").is_err());
        assert!(a.read_at(u64::MAX, &mut [0u8; 2]).is_err());
        assert!(arena.write(0x10_0000 - 1, b"x").is_err());
        assert!(arena.load_u32(0x10_0000 + PAGE_SIZE).is_err());
        arena.store_u32(0x10_0000 + 8, 0xabcd).unwrap();
        assert_eq!(arena.load_u32(0x10_0000 + 8).unwrap(), 0xabcd);
    }

    #[test]
    fn unaligned_base_is_rejected() {
        assert!(DmaArena::new(0x10_0001, PAGE_SIZE).is_err());
    }
}
