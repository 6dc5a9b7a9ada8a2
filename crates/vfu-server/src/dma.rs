//! The DMA table: client windows, fd-backed ones mmapped as `vm-memory` regions and published
//! as immutable snapshots; fd-less ones reached through DMA_READ/DMA_WRITE messages.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustix::io::Errno;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::device::{DmaEvent, DmaProt};

/// The guest memory snapshot handed to devices: fd-backed DMA windows at their IOVAs.
/// A mapping is unmapped only when the last snapshot holding it drops.
pub type DmaMemory = GuestMemoryMmap;

/// Sends DMA_READ/DMA_WRITE messages to the client (implemented by the session transport).
pub(crate) trait DmaChannel: Send + Sync + std::fmt::Debug {
    /// Reads `buf.len()` bytes at `iova` from the client.
    fn dma_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Writes `data` at `iova` to the client.
    fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), Errno>;
}

#[derive(Debug, Clone, Copy)]
struct MsgWindow {
    iova: u64,
    size: u64,
    prot: DmaProt,
}

#[derive(Debug, Default)]
struct Shared {
    mem: ArcSwap<DmaMemory>,
    msg_windows: ArcSwap<Vec<MsgWindow>>,
    channel: ArcSwapOption<Box<dyn DmaChannel>>,
}

/// Device-side DMA access: the current snapshot, plus read/write by IOVA that falls back
/// to DMA_READ/DMA_WRITE messages for windows without an fd. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone, Default)]
pub struct DmaHandle {
    shared: Arc<Shared>,
}

fn in_window(w: &MsgWindow, iova: u64, len: u64) -> bool {
    match (
        iova.checked_sub(w.iova),
        iova.checked_add(len),
        w.iova.checked_add(w.size),
    ) {
        (Some(_), Some(end), Some(wend)) => end <= wend,
        _ => false,
    }
}

impl DmaHandle {
    /// The current memory snapshot (fd-backed windows only).
    pub fn memory(&self) -> Arc<DmaMemory> {
        self.shared.mem.load_full()
    }

    fn msg_window(&self, iova: u64, len: usize, write: bool) -> Result<(), Errno> {
        let len = u64::try_from(len).map_err(|_| Errno::FAULT)?;
        let ws = self.shared.msg_windows.load();
        let w = ws
            .iter()
            .find(|w| in_window(w, iova, len))
            .ok_or(Errno::FAULT)?;
        if (write && !w.prot.write) || (!write && !w.prot.read) {
            return Err(Errno::PERM);
        }
        Ok(())
    }

    /// Reads guest memory at `iova` into `buf` (volatile copy or DMA_READ messages).
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let mem = self.memory();
        if mem.read_slice(buf, GuestAddress(iova)).is_ok() {
            return Ok(());
        }
        self.msg_window(iova, buf.len(), false)?;
        let ch = self.shared.channel.load();
        ch.as_ref().ok_or(Errno::NOTCONN)?.dma_read(iova, buf)
    }

    /// Writes `data` to guest memory at `iova` (volatile copy or DMA_WRITE messages).
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<(), Errno> {
        let mem = self.memory();
        if mem.write_slice(data, GuestAddress(iova)).is_ok() {
            return Ok(());
        }
        self.msg_window(iova, data.len(), true)?;
        let ch = self.shared.channel.load();
        ch.as_ref().ok_or(Errno::NOTCONN)?.dma_write(iova, data)
    }

    pub(crate) fn set_channel(&self, ch: Option<Box<dyn DmaChannel>>) {
        self.shared.channel.store(ch.map(Arc::new));
    }
}

#[derive(Debug)]
struct Entry {
    iova: u64,
    size: u64,
    prot: DmaProt,
    file_offset: u64,
    region: Option<Arc<GuestRegionMmap>>,
    dev: Option<(u64, u64)>,
}

impl Entry {
    fn event(&self) -> DmaEvent {
        DmaEvent {
            iova: self.iova,
            size: self.size,
            prot: self.prot,
            mapped: self.region.is_some(),
        }
    }
}

/// Server-side DMA table (one per client connection).
#[derive(Debug)]
pub(crate) struct DmaTable {
    entries: Vec<Entry>,
    max_maps: usize,
    handle: DmaHandle,
}

/// Result of a DMA_MAP: the event and the new snapshot, or "identical re-map, nothing to do".
pub(crate) enum MapOutcome {
    Added(DmaEvent, Arc<DmaMemory>),
    Unchanged,
}

fn file_id(f: &File) -> Option<(u64, u64)> {
    let st = rustix::fs::fstat(f).ok()?;
    Some((st.st_dev, st.st_ino))
}

impl DmaTable {
    pub(crate) fn new(max_maps: usize, handle: DmaHandle) -> DmaTable {
        DmaTable {
            entries: Vec::new(),
            max_maps,
            handle,
        }
    }

    /// Number of windows.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn publish(&self) -> Result<Arc<DmaMemory>, Errno> {
        let mut regions: Vec<Arc<GuestRegionMmap>> = self
            .entries
            .iter()
            .filter_map(|e| e.region.clone())
            .collect();
        regions.sort_by_key(|r| vm_memory::GuestMemoryRegion::start_addr(r.as_ref()));
        let mem = if regions.is_empty() {
            GuestMemoryMmap::default()
        } else {
            GuestMemoryMmap::from_arc_regions(regions).map_err(|_| Errno::INVAL)?
        };
        let mem = Arc::new(mem);
        self.handle.shared.mem.store(mem.clone());
        let ws: Vec<MsgWindow> = self
            .entries
            .iter()
            .filter(|e| e.region.is_none())
            .map(|e| MsgWindow {
                iova: e.iova,
                size: e.size,
                prot: e.prot,
            })
            .collect();
        self.handle.shared.msg_windows.store(Arc::new(ws));
        Ok(mem)
    }

    /// Validates and adds a window. `flags` are the raw DMA_MAP flags.
    pub(crate) fn map(
        &mut self,
        flags: u32,
        file_offset: u64,
        iova: u64,
        size: u64,
        fd: Option<OwnedFd>,
    ) -> Result<MapOutcome, Errno> {
        use vfu_proto::{DMA_FLAG_FILE_IO, DMA_FLAG_MMAP, DMA_FLAG_READ, DMA_FLAG_WRITE};
        let known = DMA_FLAG_READ | DMA_FLAG_WRITE | DMA_FLAG_MMAP | DMA_FLAG_FILE_IO;
        if flags & !known != 0 {
            return Err(Errno::INVAL);
        }
        if flags & (DMA_FLAG_MMAP | DMA_FLAG_FILE_IO) != 0 && fd.is_none() {
            return Err(Errno::INVAL);
        }
        if size == 0 {
            return Err(Errno::INVAL);
        }
        let end = iova.checked_add(size).ok_or(Errno::INVAL)?;
        let prot = DmaProt {
            read: flags & DMA_FLAG_READ != 0,
            write: flags & DMA_FLAG_WRITE != 0,
        };
        let file = fd.map(File::from);
        let dev = file.as_ref().and_then(file_id);
        for e in &self.entries {
            let e_end = e.iova.saturating_add(e.size);
            if iova < e_end && e.iova < end {
                if e.iova == iova
                    && e.size == size
                    && e.prot == prot
                    && e.dev == dev
                    && (dev.is_none() || e.file_offset == file_offset)
                {
                    return Ok(MapOutcome::Unchanged);
                }
                return Err(Errno::EXIST);
            }
        }
        if self.entries.len() >= self.max_maps {
            return Err(Errno::INVAL);
        }
        let region = match file {
            None => None,
            Some(f) => Some(Arc::new(map_file(f, file_offset, iova, size, prot)?)),
        };
        self.entries.push(Entry {
            iova,
            size,
            prot,
            file_offset,
            region,
            dev,
        });
        let ev = self.entries.last().map(Entry::event).ok_or(Errno::INVAL)?;
        match self.publish() {
            Ok(mem) => Ok(MapOutcome::Added(ev, mem)),
            Err(e) => {
                self.entries.pop();
                let _ = self.publish();
                Err(e)
            }
        }
    }

    /// Removes the window that matches exactly; returns its event and the new snapshot.
    pub(crate) fn unmap(
        &mut self,
        iova: u64,
        size: u64,
    ) -> Result<(DmaEvent, Arc<DmaMemory>), Errno> {
        let pos = self
            .entries
            .iter()
            .position(|e| e.iova == iova && e.size == size)
            .ok_or(Errno::NOENT)?;
        let e = self.entries.remove(pos);
        let mem = self.publish()?;
        Ok((e.event(), mem))
    }

    /// Removes every window; returns their events and the (empty) snapshot.
    pub(crate) fn unmap_all(&mut self) -> (Vec<DmaEvent>, Arc<DmaMemory>) {
        let evs = self.entries.drain(..).map(|e| e.event()).collect();
        let mem = self.publish().unwrap_or_default();
        (evs, mem)
    }
}

fn map_file(
    f: File,
    offset: u64,
    iova: u64,
    size: u64,
    prot: DmaProt,
) -> Result<GuestRegionMmap, Errno> {
    let len = usize::try_from(size).map_err(|_| Errno::NOSPC)?;
    let end = offset.checked_add(size).ok_or(Errno::INVAL)?;
    let st = rustix::fs::fstat(&f)?;
    let is_reg =
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile;
    // A regular file (memfd, tmpfs, hugetlbfs) must cover the window, or access would SIGBUS.
    if is_reg && u64::try_from(st.st_size).unwrap_or(0) < end {
        return Err(Errno::INVAL);
    }
    // Read-only windows are mapped private and writable: a device that wrongly writes to one
    // changes a private copy instead of faulting, and the guest never sees the write.
    let (mprot, mflags) = if prot.write {
        (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED)
    } else {
        (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE)
    };
    let fo = FileOffset::new(f, offset);
    let mmap = MmapRegion::build(Some(fo), len, mprot, mflags | libc::MAP_NORESERVE)
        .map_err(|_| Errno::INVAL)?;
    GuestRegionMmap::new(mmap, GuestAddress(iova)).ok_or(Errno::INVAL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{ftruncate, memfd_create, MemfdFlags};

    fn memfd(size: u64) -> OwnedFd {
        let fd = memfd_create("t", MemfdFlags::CLOEXEC).unwrap();
        ftruncate(&fd, size).unwrap();
        fd
    }

    #[test]
    fn map_unmap_exact_and_snapshots() {
        let h = DmaHandle::default();
        let mut t = DmaTable::new(4, h.clone());
        let fd = memfd(0x4000);
        let dup = rustix::io::dup(&fd).unwrap();
        let MapOutcome::Added(ev, mem) = t.map(3, 0, 0x10000, 0x4000, Some(fd)).unwrap() else {
            panic!("not added")
        };
        assert!(ev.mapped && ev.prot.write);
        h.write(0x10008, b"hello").unwrap();
        let mut b = [0u8; 5];
        mem.read_slice(&mut b, GuestAddress(0x10008)).unwrap();
        assert_eq!(&b, b"hello");
        // identical re-map is accepted, overlap is EEXIST
        assert!(matches!(
            t.map(3, 0, 0x10000, 0x4000, Some(dup)),
            Ok(MapOutcome::Unchanged)
        ));
        assert_eq!(
            t.map(3, 0, 0x12000, 0x4000, Some(memfd(0x4000))).err(),
            Some(Errno::EXIST)
        );
        // unknown flag, zero size, overflow, file too small
        assert_eq!(t.map(0x10, 0, 0, 0x1000, None).err(), Some(Errno::INVAL));
        assert_eq!(t.map(3, 0, 0, 0, None).err(), Some(Errno::INVAL));
        assert_eq!(t.map(3, 0, u64::MAX, 2, None).err(), Some(Errno::INVAL));
        assert_eq!(
            t.map(3, 0, 0x100000, 0x8000, Some(memfd(0x1000))).err(),
            Some(Errno::INVAL)
        );
        assert_eq!(
            t.map(4, 0, 0x100000, 0x1000, None).err(),
            Some(Errno::INVAL)
        );
        // unmap needs an exact match
        assert_eq!(t.unmap(0x10000, 0x1000).err(), Some(Errno::NOENT));
        let (_, after) = t.unmap(0x10000, 0x4000).unwrap();
        let mut z = [0u8; 1];
        assert!(after.read_slice(&mut z, GuestAddress(0x10000)).is_err());
        // the old snapshot is still usable after the unmap
        mem.read_slice(&mut b, GuestAddress(0x10008)).unwrap();
        assert_eq!(&b, b"hello");
        assert!(h.read(0x10008, &mut b).is_err());
    }

    #[test]
    fn fdless_windows_and_limits() {
        let h = DmaHandle::default();
        let mut t = DmaTable::new(2, h.clone());
        assert!(
            matches!(t.map(1, 0, 0xfffc0000, 0x40000, None), Ok(MapOutcome::Added(ev, _)) if !ev.mapped)
        );
        assert!(matches!(
            t.map(3, 0, 0, 0x1000, None),
            Ok(MapOutcome::Added(..))
        ));
        assert_eq!(t.map(3, 0, 0x2000, 0x1000, None).err(), Some(Errno::INVAL));
        let mut b = [0u8; 4];
        // no channel: ENOTCONN; outside any window: EFAULT; write to read-only: EPERM
        assert_eq!(h.read(0xfffc0000, &mut b), Err(Errno::NOTCONN));
        assert_eq!(h.read(0x5000, &mut b), Err(Errno::FAULT));
        assert_eq!(h.write(0xfffc0000, &b), Err(Errno::PERM));
        let (evs, _) = t.unmap_all();
        assert_eq!(evs.len(), 2);
        assert_eq!(t.len(), 0);
    }
}
