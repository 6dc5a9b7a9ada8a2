//! The same sample endpoint driven by a second, independent client: rust-vmm's `vfio_user`
//! crate (what Cloud Hypervisor uses). Checks region discovery with the sparse area and fd,
//! config space, and MSI-X delivery to an eventfd installed with SET_IRQS flags 0x24 and no
//! UNMASK.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use common::{count, CONFIG, MSIX};
use rustix::event::{eventfd, EventfdFlags};

#[test]
fn rust_vmm_client_discovers_regions_and_gets_msix() {
    let srv = common::server();
    let mut c = vfio_user::Client::new(&srv.path).unwrap();

    let bar0 = c.region(0).unwrap();
    assert_eq!(bar0.size, 0x4000);
    assert_eq!(bar0.sparse_areas.len(), 1);
    assert_eq!(
        (bar0.sparse_areas[0].offset, bar0.sparse_areas[0].size),
        (0x1000, 0x1000)
    );
    let fo = bar0.file_offset.clone().expect("BAR0 fd");
    let table = c.region(4).unwrap();
    assert_eq!(table.size, 0x2000);
    assert!(table.file_offset.is_none() && table.sparse_areas.is_empty());

    let mut cfg = [0u8; 64];
    c.region_read(CONFIG, 0, &mut cfg).unwrap();
    assert_eq!(&cfg[0..4], &[0x58, 0x4e, 0x01, 0x00]);
    assert_eq!(cfg[0x34], 0x40);

    // Memory decode + bus master, as Cloud Hypervisor's guest would set.
    c.region_write(CONFIG, 4, &0x0006u16.to_le_bytes()).unwrap();

    // A store through the region fd (what the guest's mmap does) is what the function sees.
    fo.file()
        .write_at(&0x5a5a_0001u32.to_le_bytes(), fo.start() + 0x1010)
        .unwrap();
    let mut b = [0u8; 4];
    c.region_read(0, 0x1010, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x5a5a_0001);

    let fds: Vec<OwnedFd> = (0..2)
        .map(|_| eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap())
        .collect();
    let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
    c.set_irqs(MSIX, 0x24, 0, 2, &raw).unwrap();
    c.region_write(CONFIG, 0x86, &0x8000u16.to_le_bytes())
        .unwrap();
    c.region_write(0, 0, &1u32.to_le_bytes()).unwrap();
    c.region_read(0, 4, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 1, "delivered");
    assert_eq!(count(&fds[1]), 1);
    assert_eq!(count(&fds[0]), 0);
    c.shutdown().unwrap();
}
