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
    /// Refuse fd windows whose file cannot be sealed against shrinking (EPERM).
    require_sealed: bool,
    /// DMA_MAP fds whose file could not be sealed against shrinking (accepted unless
    /// `require_sealed` or another check refused them).
    unsealed_maps: usize,
}

/// Result of a DMA_MAP: the event and the new snapshot, or "identical re-map, nothing to do".
pub(crate) enum MapOutcome {
    Added(DmaEvent, Arc<DmaMemory>),
    Unchanged,
}

/// Makes `f` impossible to shrink: `F_SEAL_SHRINK` is already set (QEMU's sealed memfds, the
/// Sluice client's buffers) or is added now. Fails with the kernel's errno when the file
/// cannot be sealed: EINVAL for files without sealing support (disk files, sockets), EPERM
/// for tmpfs/hugetlbfs files and memfds created without `MFD_ALLOW_SEALING` (they carry
/// `F_SEAL_SEAL`), for files already sealed with `F_SEAL_SEAL` but not `F_SEAL_SHRINK`, and
/// for fds opened read-only.
fn seal_against_shrink(f: &File) -> Result<(), Errno> {
    use rustix::fs::SealFlags;
    if rustix::fs::fcntl_get_seals(f)?.contains(SealFlags::SHRINK) {
        return Ok(());
    }
    rustix::fs::fcntl_add_seals(f, SealFlags::SHRINK)
}

fn file_id(f: &File) -> Option<(u64, u64)> {
    let st = rustix::fs::fstat(f).ok()?;
    Some((st.st_dev, st.st_ino))
}

impl DmaTable {
    /// An empty table of at most `max_maps` windows. With `require_sealed`, fd windows whose
    /// file cannot be sealed against shrinking are refused with EPERM.
    pub(crate) fn new(max_maps: usize, handle: DmaHandle, require_sealed: bool) -> DmaTable {
        DmaTable {
            entries: Vec::new(),
            max_maps,
            handle,
            require_sealed,
            unsealed_maps: 0,
        }
    }

    /// Seals `f` against shrinking before its size is checked and it is mapped, so a client
    /// cannot truncate it under a device access (SIGBUS). A file that cannot be sealed is
    /// refused (EPERM) when sealing is required, else accepted with one info line per
    /// connection.
    fn seal(&mut self, f: &File, iova: u64) -> Result<(), Errno> {
        let Err(e) = seal_against_shrink(f) else {
            return Ok(());
        };
        if self.require_sealed {
            tracing::debug!(
                iova,
                errno = e.raw_os_error(),
                "vfio-user: DMA_MAP refused: file cannot be sealed against shrinking"
            );
            return Err(Errno::PERM);
        }
        if self.unsealed_maps == 0 {
            tracing::info!(
                iova,
                errno = e.raw_os_error(),
                "vfio-user: DMA window file cannot be sealed against shrinking; a client that \
                 truncates it can make a device access fault (logged once per connection)"
            );
        }
        self.unsealed_maps = self.unsealed_maps.saturating_add(1);
        Ok(())
    }

    /// How many DMA_MAP fds on this connection could not be sealed against shrinking.
    #[cfg(test)]
    pub(crate) fn unsealed_maps(&self) -> usize {
        self.unsealed_maps
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
            Some(f) => {
                // Seal first, then check the size: a shrink between the two is impossible.
                self.seal(&f, iova)?;
                Some(Arc::new(map_file(f, file_offset, iova, size, prot)?))
            }
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
        let mut t = DmaTable::new(4, h.clone(), false);
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

    fn sealable_memfd(size: u64, seals: rustix::fs::SealFlags) -> OwnedFd {
        let fd = memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        ftruncate(&fd, size).unwrap();
        if !seals.is_empty() {
            rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
        }
        fd
    }

    #[test]
    fn map_seals_the_file_against_shrinking() {
        use rustix::fs::{fcntl_get_seals, SealFlags};
        let h = DmaHandle::default();
        let mut t = DmaTable::new(8, h.clone(), true);
        let fd = sealable_memfd(0x4000, SealFlags::empty());
        let client = rustix::io::dup(&fd).unwrap();
        assert!(matches!(
            t.map(3, 0, 0x10000, 0x4000, Some(fd)),
            Ok(MapOutcome::Added(..))
        ));
        assert!(fcntl_get_seals(&client)
            .unwrap()
            .contains(SealFlags::SHRINK));
        assert_eq!(ftruncate(&client, 0x1000), Err(Errno::PERM));
        // growing stays allowed; the whole window is still readable
        ftruncate(&client, 0x8000).unwrap();
        let mut b = [1u8; 0x4000];
        h.read(0x10000, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        // already sealed like QEMU's memfd backend (F_SEAL_SEAL included): accepted as is
        let qemu = sealable_memfd(
            0x1000,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        );
        assert!(t.map(3, 0, 0x20000, 0x1000, Some(qemu)).is_ok());
        assert_eq!(t.unsealed_maps(), 0);
        // sealing required: a memfd without MFD_ALLOW_SEALING, a file sealed without
        // SHRINK, and a disk file are refused with EPERM and leave the table unchanged
        let closed = sealable_memfd(0x1000, SealFlags::SEAL);
        assert_eq!(
            t.map(3, 0, 0x30000, 0x1000, Some(memfd(0x1000))).err(),
            Some(Errno::PERM)
        );
        assert_eq!(
            t.map(3, 0, 0x30000, 0x1000, Some(closed)).err(),
            Some(Errno::PERM)
        );
        let disk = tempfile_fd(0x1000);
        assert_eq!(
            t.map(3, 0, 0x30000, 0x1000, Some(disk)).err(),
            Some(Errno::PERM)
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.unsealed_maps(), 0);
    }

    fn tempfile_fd(size: u64) -> OwnedFd {
        let f = tempfile::tempfile().unwrap();
        f.set_len(size).unwrap();
        OwnedFd::from(f)
    }

    #[test]
    fn unsealable_files_are_accepted_by_default() {
        let h = DmaHandle::default();
        let mut t = DmaTable::new(8, h.clone(), false);
        assert!(t.map(3, 0, 0x10000, 0x1000, Some(memfd(0x1000))).is_ok());
        assert!(t
            .map(3, 0x1000, 0x20000, 0x1000, Some(tempfile_fd(0x2000)))
            .is_ok());
        assert_eq!(t.unsealed_maps(), 2);
        h.write(0x20ff0, b"tail").unwrap();
        let mut b = [0u8; 4];
        h.read(0x20ff0, &mut b).unwrap();
        assert_eq!(&b, b"tail");
    }

    #[test]
    fn window_must_fit_in_the_file() {
        use rustix::fs::SealFlags;
        let h = DmaHandle::default();
        let mut t = DmaTable::new(8, h, false);
        let fd = || sealable_memfd(0x4000, SealFlags::empty());
        // offset + size one page past the end, offset past the end, offset + size overflow
        assert_eq!(
            t.map(3, 0x1000, 0x10000, 0x4000, Some(fd())).err(),
            Some(Errno::INVAL)
        );
        assert_eq!(
            t.map(3, 0x5000, 0x10000, 0x1000, Some(fd())).err(),
            Some(Errno::INVAL)
        );
        assert_eq!(
            t.map(3, u64::MAX - 0xfff, 0x10000, 0x2000, Some(fd()))
                .err(),
            Some(Errno::INVAL)
        );
        assert_eq!(t.len(), 0);
        // the exact fit at an offset is accepted
        assert!(t.map(3, 0x1000, 0x10000, 0x3000, Some(fd())).is_ok());
    }

    #[test]
    fn fdless_windows_and_limits() {
        let h = DmaHandle::default();
        let mut t = DmaTable::new(2, h.clone(), false);
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
