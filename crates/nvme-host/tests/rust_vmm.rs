//! Issue 3 acceptance 2: bring-up and I/O through rust-vmm's `vfio_user::Client`, an
//! independent vfio-user client implementation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{Target, TargetOptions};
use sluice_nvme_host::{Controller, ControllerOptions, DoorbellMode};

fn rust_vmm(t: &Target, doorbells: DoorbellMode) -> Controller {
    let opts = ControllerOptions {
        dma_size: 4 << 20,
        doorbells,
        ..ControllerOptions::default()
    };
    Controller::connect_rust_vmm(&t.sock, opts).expect("bring-up through vfio_user::Client")
}

#[test]
fn bring_up_and_read_write_through_rust_vmm_client() {
    let t = Target::start(TargetOptions::default());
    let mut c = rust_vmm(&t, DoorbellMode::Auto);
    let id = c.identify_controller().unwrap();
    assert_eq!(id.vid, 0x4e58);
    assert_eq!(id.mn, "Sluice NVMe Controller");
    c.set_num_queues(1, 1).unwrap();
    let mut qp = c.create_io_queue_pair(1, 16, None).unwrap();
    let buf = c.alloc(8192).unwrap();
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    buf.write_at(0, &data).unwrap();
    qp.write_blocks(1, 64, 16, 512, &buf, false).unwrap();
    buf.fill(0).unwrap();
    qp.read_blocks(1, 64, 16, 512, &buf).unwrap();
    assert_eq!(buf.to_vec(0, 8192).unwrap(), data);
    c.shutdown(false).unwrap();
    drop(c);

    // The data survives into a session of Sluice's own client.
    let mut c = t.connect();
    c.set_num_queues(1, 1).unwrap();
    let mut qp = c.create_io_queue_pair(1, 16, None).unwrap();
    let buf = c.alloc(8192).unwrap();
    qp.read_blocks(1, 64, 16, 512, &buf).unwrap();
    assert_eq!(buf.to_vec(0, 8192).unwrap(), data);
}

#[test]
fn rust_vmm_client_with_trapped_doorbells() {
    let t = Target::start(TargetOptions {
        mappable_bar0: false,
        shadow_doorbells: false,
        ..TargetOptions::default()
    });
    let mut c = rust_vmm(&t, DoorbellMode::Auto);
    assert!(!c.doorbells_mapped());
    c.set_num_queues(1, 1).unwrap();
    let mut qp = c.create_io_queue_pair(1, 4, None).unwrap();
    let buf = c.alloc(512).unwrap();
    for i in 0..10u8 {
        buf.write_at(0, &[i; 512]).unwrap();
        qp.write_blocks(1, u64::from(i), 1, 512, &buf, true)
            .unwrap();
    }
    for i in 0..10u8 {
        qp.read_blocks(1, u64::from(i), 1, 512, &buf).unwrap();
        assert_eq!(buf.to_vec(0, 512).unwrap(), vec![i; 512]);
    }
}
