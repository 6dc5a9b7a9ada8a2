//! Client-owned memory: memfd-backed DMA buffers and mmapped sparse region areas, both
//! accessed only through `vm-memory`'s volatile accessors.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};
use rustix::io::Errno;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion, VolatileMemory,
    VolatileSlice,
};

use crate::{ClientError, RegionDesc, Result};

fn vm_err<E>(_: E) -> ClientError {
    ClientError::Errno(Errno::INVAL)
}

/// memfd-backed memory placed at an IOVA, to be DMA-mapped to the server.
#[derive(Debug)]
pub struct DmaBuffer {
    fd: OwnedFd,
    iova: u64,
    size: u64,
    mem: GuestMemoryMmap,
}

impl DmaBuffer {
    /// Allocates `size` bytes (zeroed) of shared memory at `iova`. The memfd is sealed
    /// against resizing (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`, as QEMU's memfd
    /// backend does), so a server that maps it can never fault on a truncated file.
    pub fn new(iova: u64, size: u64) -> Result<DmaBuffer> {
        let len = usize::try_from(size).map_err(vm_err)?;
        if size == 0 || iova.checked_add(size).is_none() {
            return Err(ClientError::Errno(Errno::INVAL));
        }
        let fd = memfd_create("vfu-dma", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        ftruncate(&fd, size)?;
        fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let file = File::from(rustix::io::dup(&fd)?);
        let region = MmapRegion::build(
            Some(FileOffset::new(file, 0)),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(vm_err)?;
        let r = GuestRegionMmap::new(region, GuestAddress(iova)).ok_or(Errno::INVAL)?;
        let mem = GuestMemoryMmap::from_regions(vec![r]).map_err(vm_err)?;
        Ok(DmaBuffer {
            fd,
            iova,
            size,
            mem,
        })
    }

    /// IOVA of the first byte.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The buffer as guest memory addressed by IOVA (volatile access via `vm_memory::Bytes`).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Copies `buf.len()` bytes at `iova` out of the buffer.
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<()> {
        self.mem.read_slice(buf, GuestAddress(iova)).map_err(vm_err)
    }

    /// Copies `data` into the buffer at `iova`.
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<()> {
        self.mem
            .write_slice(data, GuestAddress(iova))
            .map_err(vm_err)
    }
}

/// One mmapped sparse area of a server region.
#[derive(Debug)]
pub struct MappedArea {
    /// Offset of the area inside the region.
    pub offset: u64,
    region: MmapRegion,
}

impl MappedArea {
    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.region.size()
    }

    /// A volatile view of `len` bytes at area offset `off`.
    pub fn slice(&self, off: usize, len: usize) -> Result<VolatileSlice<'_, ()>> {
        self.region.get_slice(off, len).map_err(vm_err)
    }

    /// Volatile 32-bit load at area offset `off` (for doorbells and registers).
    pub fn load_u32(&self, off: usize) -> Result<u32> {
        Ok(self.region.get_ref::<u32>(off).map_err(vm_err)?.load())
    }

    /// Volatile 32-bit store at area offset `off`.
    pub fn store_u32(&self, off: usize, v: u32) -> Result<()> {
        self.region.get_ref::<u32>(off).map_err(vm_err)?.store(v);
        Ok(())
    }

    /// Copies bytes out of the area.
    pub fn read(&self, off: usize, buf: &mut [u8]) -> Result<()> {
        self.slice(off, buf.len())?
            .read_slice(buf, 0)
            .map_err(vm_err)
    }

    /// Copies bytes into the area.
    pub fn write(&self, off: usize, data: &[u8]) -> Result<()> {
        self.slice(off, data.len())?
            .write_slice(data, 0)
            .map_err(vm_err)
    }
}

/// mmaps every sparse area of `desc` from its fd at `info.offset + area.offset`.
pub(crate) fn mmap_region(desc: &RegionDesc) -> Result<Vec<MappedArea>> {
    let fd = desc.fd.as_ref().ok_or(ClientError::Errno(Errno::NODEV))?;
    let mut out = Vec::with_capacity(desc.areas.len());
    for a in &desc.areas {
        let end = a.offset.checked_add(a.size).ok_or(Errno::INVAL)?;
        if a.size == 0 || end > desc.info.size {
            return Err(ClientError::Protocol("sparse area outside the region"));
        }
        let file_off = desc.info.offset.checked_add(a.offset).ok_or(Errno::INVAL)?;
        let file = File::from(rustix::io::dup(fd)?);
        let len = usize::try_from(a.size).map_err(vm_err)?;
        let region = MmapRegion::build(
            Some(FileOffset::new(file, file_off)),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(vm_err)?;
        out.push(MappedArea {
            offset: a.offset,
            region,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfu_proto::{RegionInfoMsg, SparseArea, REGION_FLAG_MMAP};

    #[test]
    fn dma_buffer_volatile_access() {
        assert!(DmaBuffer::new(0, 0).is_err());
        assert!(DmaBuffer::new(u64::MAX - 10, 4096).is_err());
        let b = DmaBuffer::new(0x10000, 0x2000).unwrap();
        b.write(0x10ff0, b"abc").unwrap();
        let mut out = [0u8; 3];
        b.read(0x10ff0, &mut out).unwrap();
        assert_eq!(&out, b"abc");
        // the memfd really backs it
        let mut via = [0u8; 3];
        rustix::io::pread(b.fd(), &mut via, 0xff0).unwrap();
        assert_eq!(&via, b"abc");
        // outside the buffer
        assert!(b.read(0x12000, &mut out).is_err());
        assert!(b.write(0xffff, b"x").is_err());
    }

    #[test]
    fn dma_buffer_memfd_is_sealed_against_resizing() {
        let b = DmaBuffer::new(0, 0x2000).unwrap();
        let seals = rustix::fs::fcntl_get_seals(b.fd()).unwrap();
        assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
        assert_eq!(ftruncate(b.fd(), 0x1000), Err(Errno::PERM));
        assert_eq!(ftruncate(b.fd(), 0x4000), Err(Errno::PERM));
        assert_eq!(rustix::fs::fstat(b.fd()).unwrap().st_size, 0x2000);
    }

    #[test]
    fn mmap_region_checks_areas() {
        let fd = memfd_create("r", MemfdFlags::CLOEXEC).unwrap();
        ftruncate(&fd, 0x4000).unwrap();
        rustix::io::pwrite(&fd, &7u32.to_ne_bytes(), 0x1004).unwrap();
        let info = RegionInfoMsg {
            argsz: 32,
            flags: REGION_FLAG_MMAP,
            index: 0,
            cap_offset: 0,
            size: 0x4000,
            offset: 0,
        };
        let good = RegionDesc {
            info,
            areas: vec![SparseArea {
                offset: 0x1000,
                size: 0x1000,
            }],
            fd: Some(fd),
        };
        let m = mmap_region(&good).unwrap();
        assert_eq!(m[0].load_u32(4).unwrap(), 7);
        assert!(m[0].load_u32(0x1000).is_err());
        m[0].store_u32(8, 9).unwrap();
        let mut b = [0u8; 4];
        m[0].read(8, &mut b).unwrap();
        assert_eq!(u32::from_ne_bytes(b), 9);
        let outside = RegionDesc {
            info,
            areas: vec![SparseArea {
                offset: 0x3000,
                size: 0x2000,
            }],
            fd: good.fd,
        };
        assert!(mmap_region(&outside).is_err());
        let nofd = RegionDesc {
            info,
            areas: vec![SparseArea {
                offset: 0,
                size: 0x1000,
            }],
            fd: None,
        };
        assert!(mmap_region(&nofd).is_err());
    }
}
