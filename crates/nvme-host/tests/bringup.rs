//! Bring-up and identify over a real socket against the in-process Sluice stack.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{Target, TargetOptions};

#[test]
fn bring_up_and_identify() {
    let t = Target::start(TargetOptions::default());
    let mut c = t.connect();
    assert!(c.doorbells_mapped(), "BAR0 doorbell page must be mmapped");
    let id = c.identify_controller().unwrap();
    assert_eq!(id.vid, 0x4e58);
    assert_eq!(id.ssvid, 0x4e58);
    assert_eq!(id.sn, "SLUICE0");
    assert_eq!(id.subnqn, "nqn.2024-01.io.sluice:cnode0");
    assert_eq!(id.sqes, 0x66);
    assert_eq!(id.cqes, 0x44);
    assert!(id.nn >= 1);
    assert_eq!(id.max_transfer(c.cap().mpsmin()), Some(128 * 1024));
    assert_eq!(c.cap().mqes(), 256);
    assert!(c.cap().cqr());
    let ns = c.identify_namespace(1).unwrap();
    assert_eq!(ns.nsze, 16384);
    assert_eq!(ns.block_size(), 512);
    assert_eq!(c.active_namespaces().unwrap(), vec![1]);
}
