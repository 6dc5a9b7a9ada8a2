//! libvfio-user's wire-level negative tests, ported to Sluice's server over a real socket.
//! Every case checks the connection is still usable afterwards (or a new one is accepted).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::os::fd::AsFd;

use common::*;
use vfu_server::proto::*;
use vfu_server::Errno;

const EINVAL: Errno = Errno::INVAL;

fn cmd(c: Command) -> u16 {
    c as u16
}

fn json(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

// ---- test_negotiate ----

#[test]
fn negotiate_rejects_and_closes_then_accepts_next() {
    let srv = Running::start();
    let bad_payloads: Vec<Vec<u8>> = {
        let mut v = vec![Vec::new(), vec![0, 0]];
        let ver = |major: u16, j: &[u8]| {
            let mut p = VersionHdr { major, minor: 0 }.bytes().to_vec();
            p.extend_from_slice(j);
            p
        };
        v.push(ver(999, b""));
        v.push(ver(0, b"{}")); // missing NUL
        for j in [
            "{",
            "\"",
            r#"{"capabilities":"23"}"#,
            r#"{"capabilities":{"max_msg_fds":"foo"}}"#,
            r#"{"capabilities":{"max_msg_fds":-1}}"#,
            r#"{"capabilities":{"max_msg_fds":1025}}"#,
            r#"{"capabilities":{"migration":"23"}}"#,
            r#"{"capabilities":{"migration":{"pgsize":"foo"}}}"#,
            r#"{"capabilities":{"migration":{"pgsize":4095}}}"#,
            r#"{"capabilities":{"twin_socket":"x"}}"#,
        ] {
            v.push(ver(0, &json(j)));
        }
        v
    };
    for p in bad_payloads {
        let mut r = Raw::connect(&srv.path);
        r.expect_err(cmd(Command::Version), &p, &[], EINVAL);
        assert!(r.closed(), "connection kept after failed negotiation");
    }
    // a non-VERSION first command, and VERSION with an fd
    let mut r = Raw::connect(&srv.path);
    r.expect_err(999, &[], &[], EINVAL);
    assert!(r.closed());
    let mut r = Raw::connect(&srv.path);
    r.expect_err(
        cmd(Command::DeviceGetInfo),
        info_req(16).bytes(),
        &[],
        EINVAL,
    );
    let mut r = Raw::connect(&srv.path);
    let efd = eventfd();
    let p = VersionHdr { major: 0, minor: 0 }.bytes().to_vec();
    r.expect_err(cmd(Command::Version), &p, &[efd.as_fd()], EINVAL);
    // a good client is accepted after all of that
    let mut r = Raw::negotiated(&srv.path);
    r.assert_usable();
}

#[test]
fn negotiate_accepts_every_real_variant() {
    let srv = Running::start();
    let qemu = json(
        r#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#,
    );
    for (minor, j) in [
        (1u16, Vec::new()),
        (2, json("{}")),
        (0, qemu),
        (
            5,
            json(r#"{"capabilities":{"max_msg_fds":1,"unknown":{"x":1}}}"#),
        ),
    ] {
        let mut r = Raw::connect(&srv.path);
        let mut p = VersionHdr { major: 0, minor }.bytes().to_vec();
        p.extend_from_slice(&j);
        let rep = r.call(cmd(Command::Version), &p, &[]);
        assert!(!rep.hdr.is_error());
        let v = VersionHdr::decode(&rep.body).unwrap();
        assert_eq!((v.major, v.minor), (0, minor.min(VERSION_MINOR)));
        let jb = &rep.body[4..];
        assert_eq!(jb.last(), Some(&0), "reply JSON must be NUL-terminated");
        let caps = Capabilities::parse(jb).unwrap();
        assert!(caps.max_msg_fds >= 16);
        assert_eq!(caps.max_data_xfer_size, 1 << 20);
        assert_eq!(caps.pgsizes, 4096);
        assert_eq!(caps.max_dma_maps, 65535);
        assert_eq!(caps.write_multiple, Some(true));
        assert_eq!(caps.twin_socket, None, "twin socket offered unasked");
        assert!(rep.fds.is_empty());
        r.assert_usable();
    }
    // twin socket when the client offers it: one fd at fd_index
    let mut r = Raw::connect(&srv.path);
    let rep = r.version(&json(
        r#"{"capabilities":{"twin_socket":{"supported":true}}}"#,
    ));
    let caps = Capabilities::parse(&rep.body[4..]).unwrap();
    assert_eq!(
        caps.twin_socket,
        Some(TwinSocket {
            supported: true,
            fd_index: Some(0)
        })
    );
    assert_eq!(rep.fds.len(), 1);
    r.assert_usable();
}

// ---- test_request_errors ----

#[test]
fn request_framing_errors() {
    let srv = Running::start();
    // msg_size 15: EINVAL and the stream is closed (cannot resync)
    let mut r = Raw::negotiated(&srv.path);
    r.send_header(9, 4, 15);
    let rep = r.recv().unwrap();
    assert!(rep.hdr.is_error() && rep.hdr.error == EINVAL.raw_os_error() as u32);
    assert!(r.closed());
    // oversized but drainable: EINVAL, the body is skipped, the connection stays usable
    let mut r = Raw::negotiated(&srv.path);
    let big = vec![0xabu8; (1 << 20) + 8192];
    r.expect_err(cmd(Command::RegionWrite), &big, &[], EINVAL);
    r.assert_usable();
    drop(r);
    // absurd size: EINVAL then close; a new connection works
    let mut r = Raw::negotiated(&srv.path);
    r.send_header(1, 10, u32::MAX);
    let rep = r.recv().unwrap();
    assert!(rep.hdr.is_error());
    assert!(r.closed());
    // unsolicited reply, unknown commands, DIRTY_PAGES, server-to-client commands
    let mut r = Raw::negotiated(&srv.path);
    r.send(
        cmd(Command::DeviceGetInfo),
        info_req(16).bytes(),
        &[],
        FLAG_TYPE_REPLY,
    );
    let rep = r.recv().unwrap();
    assert!(rep.hdr.is_error() && rep.hdr.error == EINVAL.raw_os_error() as u32);
    for c in [
        0u16,
        14,
        19,
        999,
        0xffff,
        cmd(Command::DmaRead),
        cmd(Command::DmaWrite),
    ] {
        r.expect_err(
            c,
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
            &[],
            EINVAL,
        );
    }
    // SET_IRQS without payload; a second VERSION
    r.expect_err(cmd(Command::DeviceSetIrqs), &[], &[], EINVAL);
    r.expect_err(
        cmd(Command::Version),
        VersionHdr { major: 0, minor: 0 }.bytes(),
        &[],
        EINVAL,
    );
    r.assert_usable();
}

#[test]
fn no_reply_is_honoured_even_on_error() {
    let srv = Running::start();
    let mut r = Raw::negotiated(&srv.path);
    r.send(999, &[0; 8], &[], FLAG_NO_REPLY);
    r.send(
        cmd(Command::RegionRead),
        RegionAccess {
            offset: 0,
            region: 42,
            count: 4,
        }
        .bytes(),
        &[],
        FLAG_NO_REPLY,
    );
    // the next reply must be the GET_INFO one
    r.assert_usable();
}

#[test]
fn bad_request_closes_its_fds() {
    let srv = Running::start();
    let mut r = Raw::negotiated(&srv.path);
    let (rd, wr) = rustix::pipe::pipe().unwrap();
    let wr2 = rustix::io::dup(&wr).unwrap();
    r.expect_err(999, &[0; 16], &[wr.as_fd(), wr2.as_fd()], EINVAL);
    drop((wr, wr2));
    // every write end is closed once the server dropped its copies: read sees EOF
    let mut b = [0u8; 1];
    assert_eq!(rustix::io::read(&rd, &mut b).unwrap(), 0);
    // and fds on a command that takes none (GET_INFO) are closed too
    let (rd, wr) = rustix::pipe::pipe().unwrap();
    let rep = r.call(
        cmd(Command::DeviceGetInfo),
        info_req(16).bytes(),
        &[wr.as_fd()],
    );
    assert!(!rep.hdr.is_error());
    drop(wr);
    assert_eq!(rustix::io::read(&rd, &mut b).unwrap(), 0);
    r.assert_usable();
}

#[test]
fn disconnect_detaches_and_next_client_attaches() {
    let srv = Running::start();
    let mut r = Raw::negotiated(&srv.path);
    r.assert_usable();
    drop(r);
    let mut r = Raw::negotiated(&srv.path);
    r.assert_usable();
    drop(r);
    let dev = srv.stop();
    let log = dev.log.lock().unwrap();
    assert_eq!(log.attaches, 2);
    assert_eq!(log.detaches, 2);
}

// ---- test_device_get_info ----

#[test]
fn device_get_info() {
    let srv = Running::start();
    let mut r = Raw::negotiated(&srv.path);
    r.expect_err(
        cmd(Command::DeviceGetInfo),
        &[16, 0, 0, 0, 0, 0, 0, 0],
        &[],
        EINVAL,
    );
    r.expect_err(
        cmd(Command::DeviceGetInfo),
        info_req(8).bytes(),
        &[],
        EINVAL,
    );
    let rep = r.call(cmd(Command::DeviceGetInfo), info_req(32).bytes(), &[]);
    let i = DeviceInfoMsg::decode_exact(&rep.body).unwrap();
    assert_eq!(
        i,
        DeviceInfoMsg {
            argsz: 16,
            flags: DEVICE_FLAG_PCI | DEVICE_FLAG_RESET,
            num_regions: 9,
            num_irqs: 5
        }
    );
    r.assert_usable();
}

// ---- test_device_get_irq_info ----

#[test]
fn device_get_irq_info() {
    let srv = Running::start();
    let mut r = Raw::negotiated(&srv.path);
    let c = cmd(Command::DeviceGetIrqInfo);
    r.expect_err(c, &[16, 0, 0, 0, 0, 0, 0, 0], &[], EINVAL);
    r.expect_err(
        c,
        IrqInfoMsg {
            argsz: 8,
            index: 0,
            ..Default::default()
        }
        .bytes(),
        &[],
        EINVAL,
    );
    r.expect_err(
        c,
        IrqInfoMsg {
            argsz: 16,
            index: 5,
            ..Default::default()
        }
        .bytes(),
        &[],
        EINVAL,
    );
    for (index, count) in [(0, 1), (1, 0), (2, MSIX_COUNT), (3, 1), (4, 1)] {
        let rep = r.call(
            c,
            IrqInfoMsg {
                argsz: 64,
                index,
                ..Default::default()
            }
            .bytes(),
            &[],
        );
        let i = IrqInfoMsg::decode_exact(&rep.body).unwrap();
        assert_eq!((i.argsz, i.index, i.count), (16, index, count));
        if count > 0 {
            assert!(i.flags & IRQ_INFO_EVENTFD != 0);
        }
    }
    r.assert_usable();
}

// ---- test_device_get_region_info ----

#[test]
fn device_get_region_info() {
    let srv = Running::start();
    let mut r = Raw::negotiated(&srv.path);
    let c = cmd(Command::DeviceGetRegionInfo);
    let ri = |argsz: u32, index: u32| RegionInfoMsg {
        argsz,
        index,
        ..Default::default()
    };
    r.expect_err(c, &ri(32, 0).bytes()[..16], &[], EINVAL);
    r.expect_err(c, ri(8, 0).bytes(), &[], EINVAL);
    r.expect_err(c, ri(32, 9).bytes(), &[], EINVAL);
    // larger argsz on a region without caps: exactly 32 bytes back
    let rep = r.call(c, ri(1024, 1).bytes(), &[]);
    assert_eq!(rep.body.len(), 32);
    let i = RegionInfoMsg::decode(&rep.body).unwrap();
    assert_eq!(
        (i.argsz, i.size, i.flags),
        (32, BAR1_SIZE, REGION_FLAG_READ | REGION_FLAG_WRITE)
    );
    assert!(rep.fds.is_empty());
    // argsz 32 on a capped region: MMAP without CAPS, no fd, argsz = needed
    let rep = r.call(c, ri(32, 0).bytes(), &[]);
    let i = RegionInfoMsg::decode(&rep.body).unwrap();
    let need = 32 + sparse_cap_len(1) as u32;
    assert_eq!(i.argsz, need);
    assert_eq!(
        i.flags,
        REGION_FLAG_READ | REGION_FLAG_WRITE | REGION_FLAG_MMAP
    );
    assert_eq!(rep.body.len(), 32);
    assert!(rep.fds.is_empty());
    // retry with the needed argsz: sparse cap and exactly one fd
    let rep = r.call(c, ri(need, 0).bytes(), &[]);
    let i = RegionInfoMsg::decode(&rep.body).unwrap();
    assert_eq!(i.flags & REGION_FLAG_CAPS, REGION_FLAG_CAPS);
    assert_eq!(i.cap_offset, 32);
    assert_eq!(rep.fds.len(), 1);
    let areas = parse_sparse_areas(&rep.body).unwrap().unwrap();
    assert_eq!(
        areas,
        vec![SparseArea {
            offset: 0x1000,
            size: 0x1000
        }]
    );
    // SPDK: 4064-byte request payload
    let mut spdk = ri(4064, 0).bytes().to_vec();
    spdk.resize(4064, 0);
    let rep = r.call(c, &spdk, &[]);
    assert_eq!(rep.fds.len(), 1);
    // zero-size region: no caps, size 0
    let rep = r.call(c, ri(64, 2).bytes(), &[]);
    let i = RegionInfoMsg::decode(&rep.body).unwrap();
    assert_eq!((i.size, i.flags, i.cap_offset), (0, 0, 0));
    // config region
    let rep = r.call(c, ri(32, 7).bytes(), &[]);
    assert_eq!(RegionInfoMsg::decode(&rep.body).unwrap().size, CFG_SIZE);
    r.assert_usable();
}

// ---- test_device_set_irqs ----

fn irq_set(flags: u32, index: u32, start: u32, count: u32) -> IrqSetMsg {
    IrqSetMsg {
        argsz: 20,
        flags,
        index,
        start,
        count,
    }
}

#[test]
fn device_set_irqs_negative() {
    let srv = Running::start();
    let mut r = Raw::negotiated(&srv.path);
    let c = cmd(Command::DeviceSetIrqs);
    let trig_none = IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_NONE;
    let trig_efd = IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_EVENTFD;
    r.expect_err(c, &irq_set(trig_none, 2, 0, 1).bytes()[..16], &[], EINVAL);
    r.expect_err(
        c,
        IrqSetMsg {
            argsz: 3,
            ..irq_set(trig_none, 2, 0, 1)
        }
        .bytes(),
        &[],
        EINVAL,
    );
    for m in [
        irq_set(trig_none, 5, 0, 1),
        irq_set(
            IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_DATA_NONE,
            2,
            0,
            1,
        ),
        irq_set(
            IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL,
            2,
            0,
            1,
        ),
        irq_set(IRQ_SET_ACTION_TRIGGER, 2, 0, 1),
        irq_set(IRQ_SET_DATA_NONE, 2, 0, 1),
        irq_set(trig_none | 0x100, 2, 0, 1),
        irq_set(trig_none, 2, MSIX_COUNT, 1),
        irq_set(trig_none, 2, 1, MSIX_COUNT),
        irq_set(trig_none, 2, 1, u32::MAX),
        irq_set(IRQ_SET_ACTION_MASK | IRQ_SET_DATA_NONE, IRQ_INDEX_ERR, 0, 1),
        irq_set(IRQ_SET_ACTION_MASK | IRQ_SET_DATA_NONE, IRQ_INDEX_REQ, 0, 1),
        irq_set(trig_none, IRQ_INDEX_ERR, 0, 2),
        irq_set(trig_none, IRQ_INDEX_REQ, 0, 2),
        irq_set(trig_none, 2, 1, 0),
        irq_set(IRQ_SET_ACTION_MASK | IRQ_SET_DATA_NONE, 2, 0, 0),
        irq_set(IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_BOOL, 2, 0, 0),
    ] {
        r.expect_err(c, m.bytes(), &[], EINVAL);
    }
    let e1 = eventfd();
    let e2 = eventfd();
    // fds with BOOL or NONE; one fd for count 2
    let mut with_bool = irq_set(IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_BOOL, 2, 0, 1)
        .bytes()
        .to_vec();
    with_bool.push(1);
    r.expect_err(c, &with_bool, &[e1.as_fd()], EINVAL);
    r.expect_err(
        c,
        irq_set(trig_none, 2, 0, 1).bytes(),
        &[e1.as_fd()],
        EINVAL,
    );
    r.expect_err(c, irq_set(trig_efd, 2, 0, 2).bytes(), &[e1.as_fd()], EINVAL);
    // bool array too small / too large
    let mut small = irq_set(IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_BOOL, 2, 0, 2)
        .bytes()
        .to_vec();
    small.push(1);
    r.expect_err(c, &small, &[], EINVAL);
    let mut large = irq_set(IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_BOOL, 2, 0, 1)
        .bytes()
        .to_vec();
    large.extend_from_slice(&[1, 1]);
    r.expect_err(c, &large, &[], EINVAL);
    let _ = e2;
    r.assert_usable();
}

#[test]
fn device_set_irqs_positive() {
    let srv = Running::start();
    let mut r = Raw::negotiated(&srv.path);
    let c = cmd(Command::DeviceSetIrqs);
    let ok = |r: &mut Raw, m: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]| {
        let rep = r.call(c, m, fds);
        assert!(!rep.hdr.is_error(), "errno {}", rep.hdr.error);
        assert!(rep.body.is_empty());
    };
    ok(
        &mut r,
        irq_set(IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_NONE, 2, 0, 0).bytes(),
        &[],
    );
    let (e1, e2) = (eventfd(), eventfd());
    ok(
        &mut r,
        irq_set(IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_EVENTFD, 2, 0, 2).bytes(),
        &[e1.as_fd(), e2.as_fd()],
    );
    // client-side trigger of vector 1 only increments fd2
    ok(
        &mut r,
        irq_set(IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_NONE, 2, 1, 1).bytes(),
        &[],
    );
    assert_eq!((eventfd_count(&e1), eventfd_count(&e2)), (0, 1));
    // bool trigger
    let mut b = irq_set(IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_BOOL, 2, 0, 2)
        .bytes()
        .to_vec();
    b.extend_from_slice(&[1, 0]);
    ok(&mut r, &b, &[]);
    assert_eq!((eventfd_count(&e1), eventfd_count(&e2)), (1, 0));
    // the device fires a vector (no UNMASK ever sent) through BAR1 register 0x30
    let mut w = RegionAccess {
        offset: 0x30,
        region: 1,
        count: 1,
    }
    .bytes()
    .to_vec();
    w.push(1);
    assert!(!r.call(cmd(Command::RegionWrite), &w, &[]).hdr.is_error());
    assert_eq!(eventfd_count(&e2), 1);
    // mask -> state callback; de-assign with an fd-less EVENTFD
    ok(
        &mut r,
        irq_set(IRQ_SET_ACTION_MASK | IRQ_SET_DATA_NONE, 0, 0, 1).bytes(),
        &[],
    );
    ok(
        &mut r,
        irq_set(IRQ_SET_ACTION_UNMASK | IRQ_SET_DATA_NONE, 0, 0, 1).bytes(),
        &[],
    );
    ok(
        &mut r,
        irq_set(IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_EVENTFD, 2, 1, 1).bytes(),
        &[],
    );
    let rep = r.call(cmd(Command::RegionWrite), &w, &[]);
    assert_eq!(
        rep.hdr.error,
        Errno::NOENT.raw_os_error() as u32,
        "vector 1 has no fd any more"
    );
    ok(
        &mut r,
        irq_set(
            IRQ_SET_ACTION_TRIGGER | IRQ_SET_DATA_EVENTFD,
            IRQ_INDEX_ERR,
            0,
            1,
        )
        .bytes(),
        &[e1.as_fd()],
    );
    // mask notification eventfds are accepted (and only reported to the device)
    ok(
        &mut r,
        irq_set(IRQ_SET_ACTION_MASK | IRQ_SET_DATA_EVENTFD, 0, 0, 1).bytes(),
        &[e2.as_fd()],
    );
    r.assert_usable();
    drop(r);
    let dev = srv.stop();
    let log = dev.log.lock().unwrap();
    assert!(log
        .irq_sets
        .iter()
        .any(|e| e.action == vfu_server::IrqAction::Mask && e.index == 0));
}

// ---- test_dma_map / test_dma_unmap ----

fn memfd(size: u64) -> std::os::fd::OwnedFd {
    let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    fd
}

fn map(flags: u32, addr: u64, size: u64) -> DmaMap {
    DmaMap {
        argsz: 32,
        flags,
        offset: 0,
        addr,
        size,
    }
}

#[test]
fn dma_map_rules() {
    let srv = Running::start_with(vfu_server::ServerOptions {
        max_dma_maps: 3,
        ..Default::default()
    });
    let mut r = Raw::negotiated(&srv.path);
    let c = cmd(Command::DmaMap);
    let fd = memfd(0x10000);
    r.expect_err(c, &map(3, 0, 0x1000).bytes()[..24], &[], EINVAL);
    r.expect_err(c, map(0x30, 0, 0x1000).bytes(), &[], EINVAL);
    r.expect_err(c, map(3, 0, 0).bytes(), &[], EINVAL);
    r.expect_err(c, map(3, u64::MAX - 10, 0x1000).bytes(), &[], EINVAL);
    r.expect_err(c, map(3 | DMA_FLAG_MMAP, 0, 0x1000).bytes(), &[], EINVAL);
    r.expect_err(c, map(3, 0, 0x20000).bytes(), &[fd.as_fd()], EINVAL); // file too small
    r.expect_err(
        c,
        map(3, 0, 0x1000).bytes(),
        &[fd.as_fd(), fd.as_fd()],
        EINVAL,
    );
    assert!(!r
        .call(c, map(3, 0x100000, 0x10000).bytes(), &[fd.as_fd()])
        .hdr
        .is_error());
    // identical re-map accepted, overlap EEXIST
    assert!(!r
        .call(c, map(3, 0x100000, 0x10000).bytes(), &[fd.as_fd()])
        .hdr
        .is_error());
    r.expect_err(
        c,
        map(3, 0x108000, 0x10000).bytes(),
        &[fd.as_fd()],
        Errno::EXIST,
    );
    // fd-less (QEMU's BIOS ROM) accepted
    assert!(!r
        .call(c, map(1, 0xfffc0000, 0x40000).bytes(), &[])
        .hdr
        .is_error());
    assert!(!r.call(c, map(3, 0, 0x1000).bytes(), &[]).hdr.is_error());
    // table full
    r.expect_err(c, map(3, 0x200000, 0x1000).bytes(), &[], EINVAL);
    r.assert_usable();
    drop(r);
    let dev = srv.stop();
    let log = dev.log.lock().unwrap();
    assert_eq!(log.maps.len(), 3);
    assert!(log.maps[0].mapped && !log.maps[1].mapped);
}

#[test]
fn dma_unmap_rules() {
    let srv = Running::start();
    let mut r = Raw::negotiated(&srv.path);
    let fd = memfd(0x10000);
    assert!(!r
        .call(
            cmd(Command::DmaMap),
            map(3, 0x100000, 0x10000).bytes(),
            &[fd.as_fd()]
        )
        .hdr
        .is_error());
    let c = cmd(Command::DmaUnmap);
    let um = |argsz: u32, flags: u32, addr: u64, size: u64| DmaUnmap {
        argsz,
        flags,
        addr,
        size,
    };
    r.expect_err(c, &um(24, 0, 0x100000, 0x10000).bytes()[..16], &[], EINVAL);
    r.expect_err(c, um(8, 0, 0x100000, 0x10000).bytes(), &[], EINVAL);
    r.expect_err(
        c,
        um((1 << 20) + 1, 0, 0x100000, 0x10000).bytes(),
        &[],
        EINVAL,
    );
    r.expect_err(c, um(24, 4, 0x100000, 0x10000).bytes(), &[], EINVAL);
    r.expect_err(
        c,
        um(24, DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, 0x100000, 0x10000).bytes(),
        &[],
        EINVAL,
    );
    let mut with_bitmap = um(40, DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, 0x100000, 0x10000)
        .bytes()
        .to_vec();
    with_bitmap.extend_from_slice(&[0xff; 16]);
    r.expect_err(c, &with_bitmap, &[], EINVAL);
    r.expect_err(c, um(24, 0, 0x100000, 0x1000).bytes(), &[], Errno::NOENT);
    r.expect_err(c, um(24, 0, 0x200000, 0x10000).bytes(), &[], Errno::NOENT);
    r.expect_err(
        c,
        um(24, DMA_UNMAP_FLAG_ALL, 0x100000, 0).bytes(),
        &[],
        EINVAL,
    );
    r.expect_err(
        c,
        um(
            24,
            DMA_UNMAP_FLAG_ALL | DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
            0,
            0,
        )
        .bytes(),
        &[],
        EINVAL,
    );
    // exact unmap echoes the 24-byte struct; SPDK's stray fd is closed
    let (rd, wr) = rustix::pipe::pipe().unwrap();
    let rep = r.call(c, um(24, 0, 0x100000, 0x10000).bytes(), &[wr.as_fd()]);
    assert_eq!(
        DmaUnmap::decode_exact(&rep.body).unwrap(),
        um(24, 0, 0x100000, 0x10000)
    );
    drop(wr);
    let mut b = [0u8; 1];
    assert_eq!(rustix::io::read(&rd, &mut b).unwrap(), 0);
    // ALL
    assert!(!r
        .call(cmd(Command::DmaMap), map(3, 0, 0x1000).bytes(), &[])
        .hdr
        .is_error());
    assert!(!r
        .call(cmd(Command::DmaMap), map(3, 0x1000, 0x1000).bytes(), &[])
        .hdr
        .is_error());
    let rep = r.call(c, um(24, DMA_UNMAP_FLAG_ALL, 0, 0).bytes(), &[]);
    assert_eq!(rep.body.len(), 24);
    r.expect_err(c, um(24, 0, 0, 0x1000).bytes(), &[], Errno::NOENT);
    r.assert_usable();
    drop(r);
    let dev = srv.stop();
    assert_eq!(dev.log.lock().unwrap().unmaps.len(), 3);
}

// ---- test_setup_region (wire part) ----

#[test]
fn region_access_rules() {
    let srv = Running::start();
    let mut r = Raw::negotiated(&srv.path);
    let rd = cmd(Command::RegionRead);
    let wr = cmd(Command::RegionWrite);
    let acc = |region: u32, offset: u64, count: u32| RegionAccess {
        offset,
        region,
        count,
    };
    r.expect_err(rd, acc(1, u64::MAX, 4).bytes(), &[], EINVAL);
    r.expect_err(rd, acc(1, BAR1_SIZE - 2, 4).bytes(), &[], EINVAL);
    r.expect_err(rd, acc(1, 0, (1 << 20) + 1).bytes(), &[], EINVAL);
    r.expect_err(rd, acc(9, 0, 4).bytes(), &[], EINVAL);
    r.expect_err(rd, acc(3, 0, 4).bytes(), &[], EINVAL); // absent region
    r.expect_err(rd, &acc(1, 0, 4).bytes()[..8], &[], EINVAL);
    r.expect_err(wr, &acc(1, 0, 4).bytes()[..8], &[], EINVAL);
    let mut w = acc(1, 0, 4).bytes().to_vec();
    w.extend_from_slice(&[1, 2, 3]);
    r.expect_err(wr, &w, &[], EINVAL);
    // device error propagates
    let mut w = acc(1, 0x38, 1).bytes().to_vec();
    w.push(1);
    r.expect_err(wr, &w, &[], Errno::IO);
    // count 0: header-only success
    let rep = r.call(rd, acc(1, 0, 0).bytes(), &[]);
    assert!(!rep.hdr.is_error() && rep.body.is_empty());
    let rep = r.call(wr, acc(1, 0, 0).bytes(), &[]);
    assert!(!rep.hdr.is_error() && rep.body.is_empty());
    // a real write/read: write reply is the 16-byte echo, read reply echo + data
    let mut w = acc(1, 8, 4).bytes().to_vec();
    w.extend_from_slice(&[9, 8, 7, 6]);
    let rep = r.call(wr, &w, &[]);
    assert_eq!(RegionAccess::decode_exact(&rep.body).unwrap(), acc(1, 8, 4));
    let rep = r.call(rd, acc(1, 8, 4).bytes(), &[]);
    assert_eq!(&rep.body[..16], acc(1, 8, 4).bytes());
    assert_eq!(&rep.body[16..], &[9, 8, 7, 6]);
    // reads and writes are allowed on mappable regions too
    let rep = r.call(rd, acc(0, 0x1000, 8).bytes(), &[]);
    assert_eq!(rep.body.len(), 24);
    // REGION_IO_FDS: rules and an empty list
    let io = cmd(Command::DeviceGetRegionIoFds);
    let m = |argsz: u32, flags: u32, index: u32, count: u32| RegionIoFdsMsg {
        argsz,
        flags,
        index,
        count,
    };
    for bad in [
        m(16, 1, 0, 0),
        m(16, 0, 0, 1),
        m(8, 0, 0, 0),
        m((1 << 20) + 1, 0, 0, 0),
        m(16, 0, 3, 0),
        m(16, 0, 512, 0),
    ] {
        r.expect_err(io, bad.bytes(), &[], EINVAL);
    }
    let rep = r.call(io, m(64, 0, 0, 0).bytes(), &[]);
    assert_eq!(RegionIoFdsMsg::decode_exact(&rep.body).unwrap().count, 0);
    r.assert_usable();
}

// ---- endpoint rules ----

#[test]
fn endpoint_socket_rules() {
    use std::os::unix::fs::PermissionsExt;
    use vfu_server::{Server, ServerError, ServerOptions};
    let srv = Running::start();
    let mode = std::fs::metadata(&srv.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // a live socket is refused
    assert!(matches!(
        Server::bind(&srv.path, ServerOptions::default()),
        Err(ServerError::InUse(_))
    ));
    // a stale one is replaced
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("stale");
    drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
    let s = Server::bind(
        &p,
        ServerOptions {
            mode: 0o660,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o660
    );
    drop(s);
    assert!(!p.exists(), "socket removed on drop");
    // clear errors
    assert!(matches!(
        Server::bind(dir.path().join("nope/x"), ServerOptions::default()),
        Err(ServerError::ParentMissing(_))
    ));
    let long = dir.path().join("x".repeat(120));
    assert!(matches!(
        Server::bind(&long, ServerOptions::default()),
        Err(ServerError::PathTooLong(_))
    ));
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        Server::bind(&file, ServerOptions::default()),
        Err(ServerError::NotASocket(_))
    ));
}

#[test]
fn stalled_partial_message_times_out_and_next_client_is_served() {
    let srv = Running::start_with(vfu_server::ServerOptions {
        io_timeout: std::time::Duration::from_millis(200),
        ..Default::default()
    });
    let mut r = Raw::negotiated(&srv.path);
    // a header announcing 8 payload bytes, then only 3 of them
    r.send_header(1, 4, 24);
    r.send_bytes(&[1, 2, 3]);
    assert!(r.closed(), "the session must be dropped after the timeout");
    let mut r2 = Raw::negotiated(&srv.path);
    r2.assert_usable();
}

#[test]
fn more_fds_than_the_control_buffer_closes_and_leaks_nothing() {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::io::IoSlice;
    use std::mem::MaybeUninit;
    let srv = Running::start();
    let mut r = Raw::negotiated(&srv.path);
    let (rd, wr) = rustix::pipe::pipe().unwrap();
    let many: Vec<_> = (0..100).map(|_| wr.as_fd()).collect();
    let hdr = Header::command(3, Command::DeviceGetInfo, 16);
    let body = info_req(16);
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(100))];
    let mut ctrl = SendAncillaryBuffer::new(&mut space);
    assert!(ctrl.push(SendAncillaryMessage::ScmRights(&many)));
    sendmsg(
        &r.s,
        &[IoSlice::new(hdr.bytes()), IoSlice::new(body.bytes())],
        &mut ctrl,
        SendFlags::empty(),
    )
    .unwrap();
    drop(wr);
    let rep = r.recv().unwrap();
    assert!(rep.hdr.is_error());
    assert!(r.closed());
    // every copy of the write end is gone (delivered ones closed, the rest dropped)
    let mut b = [0u8; 1];
    assert_eq!(rustix::io::read(&rd, &mut b).unwrap(), 0);
    drop(r);
    let mut r2 = Raw::negotiated(&srv.path);
    r2.assert_usable();
}
