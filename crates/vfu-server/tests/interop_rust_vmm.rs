//! Interop with the rust-vmm `vfio_user` crate (0.1.7) in both directions, over real sockets.
//!
//! Work-arounds for that crate's known bugs (reference §3), all on the test side:
//! - its `Client` ignores error replies, so only requests that succeed are sent;
//! - its `resettable()` is inverted (true when the server does NOT set FLAGS_RESET);
//! - its `Server` advertises `max_msg_fds: 1`, so our client sends one eventfd per SET_IRQS;
//! - its `Server` replies errno 0 for most errors, which our client reports as EIO.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use common::*;
use vfio_bindings::bindings::vfio::{vfio_region_info, vfio_region_sparse_mmap_area};
use vfu_client::{Client, ClientOptions, DmaBuffer};
use vfu_server::proto::*;

#[test]
fn rust_vmm_client_against_sluice_server() {
    let srv = Running::start();
    let mut c = vfio_user::Client::new(&srv.path).unwrap();
    // regions: fd-backed BAR0 with its sparse area, callback BAR1, config space
    let r0 = c.region(0).unwrap();
    assert_eq!(r0.size, BAR0_SIZE);
    assert!(r0.file_offset.is_some(), "BAR0 fd not received");
    assert_eq!(r0.sparse_areas.len(), 1);
    assert_eq!(
        (r0.sparse_areas[0].offset, r0.sparse_areas[0].size),
        (0x1000, 0x1000)
    );
    assert!(r0.flags & REGION_FLAG_MMAP != 0);
    let r1 = c.region(1).unwrap();
    assert!(r1.file_offset.is_none() && r1.sparse_areas.is_empty());
    assert_eq!(c.region(7).unwrap().size, CFG_SIZE);
    // its resettable() is inverted: our server sets FLAGS_RESET, so it says false
    assert!(!c.resettable());
    // callback BAR and config space
    c.region_write(1, 0x20 - 8, &0u64.to_le_bytes()).unwrap();
    c.region_write(1, 0x60, &[1, 2, 3, 4]).unwrap();
    let mut b = [0u8; 4];
    c.region_read(1, 0x60, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4]);
    c.region_read(7, 0, &mut b).unwrap();
    assert_eq!(b, [0x58, 0x4e, 0x01, 0x00]);
    // the fd-backed BAR through messages and through the mapping it received
    c.region_write(0, 0x1004, &[0xaa; 4]).unwrap();
    let fo = r_file(&c);
    let mut via_fd = [0u8; 4];
    rustix::io::pread(&fo, &mut via_fd, 0x1004).unwrap();
    assert_eq!(via_fd, [0xaa; 4]);
    // INTx and MSI-X
    let intx = c.get_irq_info(IRQ_INDEX_INTX).unwrap();
    assert_eq!(intx.count, 1);
    let msix = c.get_irq_info(IRQ_INDEX_MSIX).unwrap();
    assert_eq!(msix.count, MSIX_COUNT);
    let fds: Vec<OwnedFd> = (0..4).map(|_| eventfd()).collect();
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    c.set_irqs(
        IRQ_INDEX_MSIX,
        IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
        0,
        4,
        &raw,
    )
    .unwrap();
    c.set_irqs(
        IRQ_INDEX_INTX,
        IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
        0,
        1,
        &raw[..1],
    )
    .unwrap();
    c.set_irqs(
        IRQ_INDEX_INTX,
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK,
        0,
        1,
        &[],
    )
    .unwrap();
    c.region_write(1, 0x30, &[3]).unwrap();
    assert_eq!(eventfd_count(&fds[3]), 1);
    // DMA map (always with an fd), a device DMA write into it, unmap (24-byte echo read back)
    let buf = DmaBuffer::new(0x40_0000, 0x2000).unwrap();
    c.dma_map(0, 0x40_0000, 0x2000, buf.fd().as_raw_fd())
        .unwrap();
    c.region_write(1, 0x10, &0x40_0100u64.to_le_bytes())
        .unwrap();
    c.region_write(1, 0x18, &64u64.to_le_bytes()).unwrap();
    c.region_write(1, 0x20, &2u64.to_le_bytes()).unwrap();
    let mut got = [0u8; 64];
    buf.read(0x40_0100, &mut got).unwrap();
    assert_eq!(got.to_vec(), (0..64u8).collect::<Vec<_>>());
    c.dma_unmap(0x40_0000, 0x2000).unwrap();
    c.reset().unwrap();
    // still in sync after all of that
    c.region_read(7, 2, &mut b[..2]).unwrap();
    assert_eq!(&b[..2], &[0x01, 0x00]);
    c.shutdown().unwrap();
    drop(c);
    let dev = srv.stop();
    let log = dev.log.lock().unwrap();
    assert_eq!((log.maps.len(), log.unmaps.len(), log.resets), (1, 1, 1));
}

fn r_file(c: &vfio_user::Client) -> File {
    c.region(0)
        .unwrap()
        .file_offset
        .as_ref()
        .unwrap()
        .file()
        .try_clone()
        .unwrap()
}

#[derive(Default)]
struct Seen {
    maps: Vec<(u64, u64, bool)>,
    unmaps: Vec<(u64, u64)>,
    irqs: Vec<(u32, u32, u32, u32, usize)>,
    resets: usize,
    dma_file: Option<File>,
}

struct Backend {
    bar1: [u8; 256],
    cfg: [u8; 256],
    seen: Arc<Mutex<Seen>>,
}

impl vfio_user::ServerBackend for Backend {
    fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), std::io::Error> {
        let o = offset as usize;
        match region {
            1 => data.copy_from_slice(&self.bar1[o..o + data.len()]),
            7 => data.copy_from_slice(&self.cfg[o..o + data.len()]),
            _ => data.fill(0),
        }
        Ok(())
    }
    fn region_write(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), std::io::Error> {
        let o = offset as usize;
        if region == 1 {
            self.bar1[o..o + data.len()].copy_from_slice(data);
        }
        Ok(())
    }
    fn dma_map(
        &mut self,
        _f: vfio_user::DmaMapFlags,
        _o: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> Result<(), std::io::Error> {
        let mut s = self.seen.lock().unwrap();
        s.maps.push((address, size, fd.is_some()));
        s.dma_file = fd;
        Ok(())
    }
    fn dma_unmap(
        &mut self,
        _f: vfio_user::DmaUnmapFlags,
        address: u64,
        size: u64,
    ) -> Result<(), std::io::Error> {
        self.seen.lock().unwrap().unmaps.push((address, size));
        Ok(())
    }
    fn reset(&mut self) -> Result<(), std::io::Error> {
        self.seen.lock().unwrap().resets += 1;
        Ok(())
    }
    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> Result<(), std::io::Error> {
        for f in &fds {
            rustix::io::write(f, &1u64.to_ne_bytes())?;
        }
        self.seen
            .lock()
            .unwrap()
            .irqs
            .push((index, flags, start, count, fds.len()));
        Ok(())
    }
}

fn region(index: u32, size: u64, flags: u32, offset: u64) -> vfio_region_info {
    vfio_region_info {
        argsz: 32,
        flags,
        index,
        cap_offset: 0,
        size,
        offset,
    }
}

#[test]
fn sluice_client_against_rust_vmm_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rv.sock");
    let bar0 = rustix::fs::memfd_create("bar0", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&bar0, 0x4000).unwrap();
    rustix::io::pwrite(&bar0, &[0x77; 4], 0x1000).unwrap();
    let rw = REGION_FLAG_READ | REGION_FLAG_WRITE;
    let mut regions: Vec<vfio_user::ServerRegion> = (0..9)
        .map(|i| vfio_user::ServerRegion {
            region_info: region(i, 0, 0, 0),
            sparse_areas: vec![],
            mmap_fd: None,
        })
        .collect();
    regions[0] = vfio_user::ServerRegion {
        region_info: region(0, 0x4000, rw | REGION_FLAG_MMAP, 0),
        sparse_areas: vec![vfio_user::SparseArea {
            area: vfio_region_sparse_mmap_area {
                offset: 0x1000,
                size: 0x1000,
            },
        }],
        mmap_fd: Some(bar0.as_raw_fd()),
    };
    regions[1] = vfio_user::ServerRegion {
        region_info: region(1, 0x100, rw, 0),
        sparse_areas: vec![],
        mmap_fd: None,
    };
    regions[7] = vfio_user::ServerRegion {
        region_info: region(7, 0x100, rw, 0),
        sparse_areas: vec![],
        mmap_fd: None,
    };
    let irqs = vec![
        vfio_user::IrqInfo {
            index: 0,
            flags: IRQ_INFO_EVENTFD,
            count: 1,
        },
        vfio_user::IrqInfo {
            index: 1,
            flags: 0,
            count: 0,
        },
        vfio_user::IrqInfo {
            index: 2,
            flags: IRQ_INFO_EVENTFD,
            count: 4,
        },
    ];
    let server = vfio_user::Server::new(&path, true, irqs, regions).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut cfg = [0u8; 256];
    cfg[..4].copy_from_slice(&[0xf4, 0x1a, 0x10, 0x10]);
    let mut backend = Backend {
        bar1: [0; 256],
        cfg,
        seen: seen.clone(),
    };
    let t = std::thread::spawn(move || {
        server.run(&mut backend).unwrap();
        drop(bar0);
    });

    let c = Client::connect(&path, ClientOptions::default()).unwrap();
    assert_eq!(c.server_minor(), 0);
    assert_eq!(c.server_caps().max_msg_fds, 1);
    let info = c.device_info().unwrap();
    assert_eq!((info.num_regions, info.num_irqs), (9, 3));
    // sparse region: retry with the bigger argsz, one fd, mmap the area
    let r0 = c.region_info(0).unwrap();
    assert_eq!(
        r0.areas,
        vec![SparseArea {
            offset: 0x1000,
            size: 0x1000
        }]
    );
    let areas = c.mmap_region(&r0).unwrap();
    assert_eq!(areas[0].load_u32(0).unwrap(), 0x7777_7777);
    let r1 = c.region_info(1).unwrap();
    assert_eq!(r1.info.size, 0x100);
    assert!(r1.fd.is_none());
    // region access
    c.region_write(1, 0x10, &[5, 6, 7, 8]).unwrap();
    let mut b = [0u8; 4];
    c.region_read(1, 0x10, &mut b).unwrap();
    assert_eq!(b, [5, 6, 7, 8]);
    c.region_read(7, 0, &mut b).unwrap();
    assert_eq!(b, [0xf4, 0x1a, 0x10, 0x10]);
    // irqs: one eventfd per message since it advertises max_msg_fds 1
    assert_eq!(c.irq_info(2).unwrap().count, 4);
    let fds: Vec<OwnedFd> = (0..4).map(|_| eventfd()).collect();
    let bf: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    c.set_irq_eventfds(2, 0, &bf).unwrap();
    for f in &fds {
        assert_eq!(eventfd_count(f), 1, "backend got and fired every eventfd");
    }
    // DMA map with a memfd, unmap, reset
    let buf = DmaBuffer::new(0x8000_0000, 0x1000).unwrap();
    buf.write(0x8000_0010, b"dma!").unwrap();
    c.dma_map(&buf, DMA_FLAG_READ | DMA_FLAG_WRITE).unwrap();
    let echo = c.dma_unmap(0x8000_0000, 0x1000).unwrap();
    assert_eq!((echo.addr, echo.size), (0x8000_0000, 0x1000));
    c.reset().unwrap();
    c.disconnect();
    t.join().unwrap();
    let s = seen.lock().unwrap();
    assert_eq!(s.maps, vec![(0x8000_0000, 0x1000, true)]);
    assert_eq!(s.unmaps, vec![(0x8000_0000, 0x1000)]);
    assert_eq!(s.irqs.len(), 4);
    assert_eq!(s.resets, 1);
    let mut via = [0u8; 4];
    rustix::io::pread(s.dma_file.as_ref().unwrap(), &mut via, 0x10).unwrap();
    assert_eq!(&via, b"dma!");
}
