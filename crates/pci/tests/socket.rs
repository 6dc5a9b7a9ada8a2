//! A tiny sample function behind `PciEndpoint`, served by `vfu_server::Server` over a real
//! Unix socket and driven by `vfu_client::Client`: config reads of ids and caps, BAR sizing,
//! an fd-backed BAR with a sparse area next to callback registers, MSI-X delivered to the
//! client's eventfd without any UNMASK message, mask/PBA, INTx UNMASK, FLR, DEVICE_RESET.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::os::fd::{AsFd, OwnedFd};

use common::{count, ServerRig, CONFIG, INTX, MSIX};
use rustix::event::{eventfd, EventfdFlags};
use rustix::io::Errno;
use sluice_pci::FireOutcome;
use vfu_client::{Client, ClientError, ClientOptions};
use vfu_server::proto::{SparseArea, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_NONE, REGION_FLAG_MMAP};
use vfu_server::ResetKind;

/// Server plus a connected `vfu_client::Client` (dropped before the server stops).
struct Rig {
    client: Client,
    srv: ServerRig,
}

impl std::ops::Deref for Rig {
    type Target = ServerRig;
    fn deref(&self) -> &ServerRig {
        &self.srv
    }
}

fn rig() -> Rig {
    let srv = common::server();
    let client = Client::connect(&srv.path, ClientOptions::default()).unwrap();
    Rig { client, srv }
}

fn errno(r: Result<(), ClientError>) -> Errno {
    match r {
        Err(ClientError::Errno(e)) => e,
        other => panic!("expected an errno, got {other:?}"),
    }
}

impl Rig {
    fn cfg_read32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.client.region_read(CONFIG, off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }
    fn cfg_write32(&self, off: u64, v: u32) {
        self.client
            .region_write(CONFIG, off, &v.to_le_bytes())
            .unwrap();
    }
    fn cfg_write16(&self, off: u64, v: u16) {
        self.client
            .region_write(CONFIG, off, &v.to_le_bytes())
            .unwrap();
    }
    fn enable_memory(&self) {
        self.cfg_write16(4, 0x0006);
    }
    fn bar0_fire(&self, vector: u32) -> u32 {
        self.client
            .region_write(0, 0, &vector.to_le_bytes())
            .unwrap();
        let mut b = [0u8; 4];
        self.client.region_read(0, 4, &mut b).unwrap();
        u32::from_le_bytes(b)
    }
    fn eventfds(&self, index: u32, n: usize) -> Vec<OwnedFd> {
        let fds: Vec<OwnedFd> = (0..n)
            .map(|_| eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap())
            .collect();
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        self.client.set_irq_eventfds(index, 0, &borrowed).unwrap();
        fds
    }
}

#[test]
fn config_space_ids_caps_and_bar_sizing_over_socket() {
    let r = rig();
    let info = r.client.device_info().unwrap();
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));

    // QEMU reads the first 256 bytes in one go.
    let mut cfg = [0u8; 256];
    r.client.region_read(CONFIG, 0, &mut cfg).unwrap();
    assert_eq!(&cfg[0..4], &[0x58, 0x4e, 0x01, 0x00]);
    assert_eq!(&cfg[9..12], &[0x02, 0x08, 0x01]);
    assert_eq!(&cfg[0x2c..0x30], &[0x58, 0x4e, 0, 0]);
    assert_eq!(cfg[0x3d], 1, "INTA");
    let mut chain = Vec::new();
    let mut at = cfg[0x34] as usize;
    while at != 0 && chain.len() < 16 {
        chain.push((at, cfg[at]));
        at = cfg[at + 1] as usize;
    }
    assert_eq!(chain, vec![(0x40, 0x01), (0x48, 0x10), (0x84, 0x11)]);
    assert_eq!(u16::from_le_bytes([cfg[0x86], cfg[0x87]]), 511);

    // BAR sizing the Cloud Hypervisor way.
    r.cfg_write32(0x10, 0xffff_ffff);
    assert_eq!(r.cfg_read32(0x10), 0xffff_c000);
    r.cfg_write32(0x18, 0xffff_ffff);
    r.cfg_write32(0x1c, 0xffff_ffff);
    assert_eq!(r.cfg_read32(0x18), 0xffff_f004, "64-bit, 4 KiB");
    assert_eq!(r.cfg_read32(0x1c), 0xffff_ffff);
    r.cfg_write32(0x20, 0xffff_ffff);
    assert_eq!(r.cfg_read32(0x20), 0xffff_e000, "MSI-X table BAR 8 KiB");
    r.cfg_write32(0x30, 0xffff_ffff);
    assert_eq!(r.cfg_read32(0x30), 0, "no ROM");
    r.cfg_write32(0x10, 0xfebf_0000);
    assert_eq!(r.cfg_read32(0x10), 0xfebf_0000);

    // Read-only fields survive writes.
    r.cfg_write32(0, 0xdead_beef);
    r.cfg_write32(0x84, 0);
    assert_eq!(r.cfg_read32(0), 0x0001_4e58);
    assert_eq!(r.cfg_read32(0x84) & 0x07ff_ffff, 0x01ff_0011);

    // Negative: out of range, misshapen writes.
    let mut b4 = [0u8; 4];
    assert_eq!(
        errno(r.client.region_read(CONFIG, 0xffe, &mut b4).map(|_| ())),
        Errno::INVAL
    );
    assert_eq!(
        errno(r.client.region_write(CONFIG, 0x10, &[0; 3])),
        Errno::INVAL
    );
    assert_eq!(
        errno(r.client.region_write(CONFIG, 0x13, &[0; 2])),
        Errno::INVAL
    );
    // The connection survives the errors.
    assert_eq!(r.cfg_read32(0), 0x0001_4e58);
}

#[test]
fn regions_sparse_mmap_and_callback_bars_over_socket() {
    let r = rig();
    let bar0 = r.client.region_info(0).unwrap();
    assert_eq!(bar0.info.size, 0x4000);
    assert_ne!(bar0.info.flags & REGION_FLAG_MMAP, 0);
    assert_eq!(
        bar0.areas,
        vec![SparseArea {
            offset: 0x1000,
            size: 0x1000
        }]
    );
    assert!(bar0.fd.is_some());
    for (index, size) in [(4u32, 0x2000u64), (5, 0x1000)] {
        let d = r.client.region_info(index).unwrap();
        assert_eq!(d.info.size, size);
        assert_eq!(
            d.info.flags & REGION_FLAG_MMAP,
            0,
            "MSI-X BARs never mmap-able"
        );
        assert!(d.fd.is_none());
    }
    assert_eq!(
        r.client.region_info(3).unwrap().info.size,
        0,
        "upper half of BAR2"
    );
    assert_eq!(r.client.region_info(7).unwrap().info.size, 0x1000);

    // Memory decode off: EIO, as with kernel vfio-pci.
    let mut b = [0u8; 4];
    assert_eq!(
        errno(r.client.region_read(0, 0, &mut b).map(|_| ())),
        Errno::IO
    );
    r.enable_memory();

    // The guest-side store to the mmapped page is visible to the function's fd.
    let areas = r.client.mmap_region(&bar0).unwrap();
    areas[0].store_u32(8, 0xabcd_1234).unwrap();
    r.client.region_read(0, 0x1008, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0xabcd_1234);

    // Callback BAR round trip, and its bounds.
    r.client
        .region_write(2, 0xff8, &[1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    let mut b8 = [0u8; 8];
    r.client.region_read(2, 0xff8, &mut b8).unwrap();
    assert_eq!(b8, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        errno(r.client.region_write(2, 0xffc, &[0; 8])),
        Errno::INVAL
    );
}

#[test]
fn msix_fires_client_eventfd_without_unmask() {
    let r = rig();
    r.enable_memory();
    // QEMU's sequence: SET_IRQS index 2 flags 0x24 with eventfds, MSI-X enable in config.
    let fds = r.eventfds(MSIX, 4);
    r.cfg_write16(0x86, 0x8000);
    assert_eq!(r.bar0_fire(3), 1, "delivered");
    assert_eq!(count(&fds[3]), 1);
    // A poll thread fires through its own sink clone.
    let sink = r.sink.clone();
    std::thread::spawn(move || assert_eq!(sink.fire(1), FireOutcome::Delivered))
        .join()
        .unwrap();
    assert_eq!(count(&fds[1]), 1);
    // No eventfd for vector 100: latched in the PBA.
    assert_eq!(r.bar0_fire(100), 2);
    let mut pba = [0u8; 8];
    r.client.region_read(5, 8, &mut pba).unwrap();
    assert_eq!(u64::from_le_bytes(pba), 1 << (100 - 64));
    assert_eq!(r.bar0_fire(512), 3, "vector out of range dropped");
}

#[test]
fn msix_table_mask_pba_and_unmask_over_socket() {
    let r = rig();
    r.enable_memory();
    let fds = r.eventfds(MSIX, 4);
    r.cfg_write16(0x86, 0x8000);
    // The client masks vector 2 in the table (vector control of entry 2).
    r.client
        .region_write(4, 2 * 16 + 12, &1u32.to_le_bytes())
        .unwrap();
    assert_eq!(r.bar0_fire(2), 2, "pending");
    assert_eq!(count(&fds[2]), 0);
    let mut pba = [0u8; 8];
    r.client.region_read(5, 0, &mut pba).unwrap();
    assert_eq!(u64::from_le_bytes(pba), 1 << 2);
    r.client
        .region_write(4, 2 * 16 + 12, &0u32.to_le_bytes())
        .unwrap();
    assert_eq!(count(&fds[2]), 1, "delivered on unmask");
    r.client.region_read(5, 0, &mut pba).unwrap();
    assert_eq!(u64::from_le_bytes(pba), 0);
    // Function mask.
    r.cfg_write16(0x86, 0xc000);
    assert_eq!(r.bar0_fire(0), 2);
    r.cfg_write16(0x86, 0x8000);
    assert_eq!(count(&fds[0]), 1);
    // Misaligned table write is refused.
    assert_eq!(errno(r.client.region_write(4, 2, &[0; 4])), Errno::INVAL);
}

#[test]
fn intx_with_unmask_protocol_over_socket() {
    let r = rig();
    r.enable_memory();
    let fds = r.eventfds(INTX, 1);
    assert_eq!(r.bar0_fire(0), 1);
    assert_eq!(r.bar0_fire(0), 2, "auto-masked until UNMASK");
    assert_eq!(r.cfg_read32(4) >> 16 & 0x8, 0x8, "interrupt status");
    r.client
        .set_irqs(INTX, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK, 0, 1, &[])
        .unwrap();
    assert_eq!(count(&fds[0]), 2);
}

#[test]
fn flr_and_device_reset_over_socket() {
    let r = rig();
    r.enable_memory();
    let _fds = r.eventfds(MSIX, 1);
    r.cfg_write16(0x86, 0x8000);
    r.cfg_write32(0x10, 0xfebf_0000);
    // Initiate FLR (PCIe device control, bit 15).
    r.cfg_write16(0x50, 0x8000);
    assert_eq!(*r.resets.lock().unwrap(), vec![ResetKind::Flr]);
    assert_eq!(r.cfg_read32(4) & 0xffff, 0, "command cleared");
    assert_eq!(r.cfg_read32(0x10), 0);
    assert_eq!(r.cfg_read32(0x84) >> 16, 511, "MSI-X disabled");
    assert!(!r.sink.msix_enabled());
    r.client.reset().unwrap();
    assert_eq!(
        *r.resets.lock().unwrap(),
        vec![ResetKind::Flr, ResetKind::Device]
    );
}
