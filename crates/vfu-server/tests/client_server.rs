//! Sluice's client against Sluice's server: every command, posted writes, WRITE_MULTI,
//! server-to-client DMA (main and twin socket), mmap of sparse areas, reconnect.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::os::fd::AsFd;

use common::*;
use vfu_client::{Client, ClientError, ClientOptions, DmaBuffer, WriteOp};
use vfu_server::proto::*;
use vfu_server::{Errno, FeatureOp};

fn bar1_dma(c: &Client, cmd: u64, addr: u64, len: u64) {
    c.region_write(1, 0x10, &addr.to_le_bytes()).unwrap();
    c.region_write(1, 0x18, &len.to_le_bytes()).unwrap();
    c.region_write(1, 0x20, &cmd.to_le_bytes()).unwrap();
}

#[test]
fn every_command() {
    let srv = Running::start();
    let c = Client::connect(&srv.path, ClientOptions::default()).unwrap();
    assert_eq!(c.server_minor(), VERSION_MINOR);
    assert!(c.server_caps().max_msg_fds >= 16);
    let info = c.device_info().unwrap();
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));
    // region info with argsz retry, mmap of the sparse area, shared with the device
    let bar0 = c.region_info(0).unwrap();
    assert_eq!(bar0.info.size, BAR0_SIZE);
    assert_eq!(
        bar0.areas,
        vec![SparseArea {
            offset: 0x1000,
            size: 0x1000
        }]
    );
    let areas = c.mmap_region(&bar0).unwrap();
    assert_eq!(areas.len(), 1);
    areas[0].store_u32(8, 0xdead_beef).unwrap();
    let mut b = [0u8; 4];
    c.region_read(0, 0x1008, &mut b).unwrap();
    assert_eq!(u32::from_ne_bytes(b), 0xdead_beef);
    c.region_write(0, 0x1010, &7u32.to_ne_bytes()).unwrap();
    assert_eq!(areas[0].load_u32(0x10).unwrap(), 7);
    let bar1 = c.region_info(1).unwrap();
    assert!(bar1.fd.is_none() && bar1.areas.is_empty());
    assert!(c.mmap_region(&bar1).is_err());
    // config space
    let mut id = [0u8; 4];
    c.region_read(7, 0, &mut id).unwrap();
    assert_eq!(id, [0x58, 0x4e, 0x01, 0x00]);
    // irqs
    let msix = c.irq_info(IRQ_INDEX_MSIX).unwrap();
    assert_eq!(msix.count, MSIX_COUNT);
    let fds: Vec<_> = (0..MSIX_COUNT).map(|_| eventfd()).collect();
    let b: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    c.set_irq_eventfds(IRQ_INDEX_MSIX, 0, &b).unwrap();
    c.region_write(1, 0x30, &[5]).unwrap();
    assert_eq!(eventfd_count(&fds[5]), 1);
    c.set_irqs_bool(IRQ_INDEX_MSIX, IRQ_SET_ACTION_TRIGGER, 2, &[true, false])
        .unwrap();
    assert_eq!((eventfd_count(&fds[2]), eventfd_count(&fds[3])), (1, 0));
    c.set_irqs(
        IRQ_INDEX_MSIX,
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
        0,
        0,
        &[],
    )
    .unwrap();
    assert!(matches!(
        c.region_write(1, 0x30, &[5]),
        Err(ClientError::Errno(Errno::NOENT))
    ));
    // errors come back as errno
    assert!(matches!(
        c.region_read(5, 0, &mut b_arr()),
        Err(ClientError::Errno(Errno::INVAL))
    ));
    // posted writes: ordered before the next synchronous request
    for i in 0..64u8 {
        c.region_write_posted(1, 0x40 + u64::from(i), &[i]).unwrap();
    }
    let mut back = [0u8; 64];
    c.region_read(1, 0x40, &mut back).unwrap();
    assert_eq!(back.to_vec(), (0..64u8).collect::<Vec<_>>());
    // WRITE_MULTI, posted and not
    let d1 = 0x1122_3344u32.to_ne_bytes();
    let d2 = [0xaau8; 8];
    let ops = [
        WriteOp {
            region: 1,
            offset: 0x80,
            data: &d1,
        },
        WriteOp {
            region: 1,
            offset: 0x88,
            data: &d2,
        },
    ];
    c.region_write_multi(&ops, false).unwrap();
    c.region_write_multi(
        &[WriteOp {
            region: 1,
            offset: 0x90,
            data: &[1, 2],
        }],
        true,
    )
    .unwrap();
    let mut m = [0u8; 18];
    c.region_read(1, 0x80, &mut m).unwrap();
    assert_eq!(&m[..4], &d1);
    assert_eq!(&m[8..16], &d2);
    assert_eq!(&m[16..], &[1, 2]);
    // an out-of-bounds entry rejects the whole batch before any write
    let bad = [
        WriteOp {
            region: 1,
            offset: 0xa0,
            data: &[9],
        },
        WriteOp {
            region: 1,
            offset: 0xff,
            data: &[1, 2],
        },
    ];
    assert!(matches!(
        c.region_write_multi(&bad, false),
        Err(ClientError::Errno(Errno::INVAL))
    ));
    let mut z = [0u8; 1];
    c.region_read(1, 0xa0, &mut z).unwrap();
    assert_eq!(z, [0]);
    // DMA map/unmap with fd, device sees the snapshot
    let buf = DmaBuffer::new(0x10_0000, 0x10000).unwrap();
    c.dma_map(&buf, DMA_FLAG_READ | DMA_FLAG_WRITE).unwrap();
    buf.write(0x10_0100, b"from the client").unwrap();
    bar1_dma(&c, 1, 0x10_0100, 15);
    bar1_dma(&c, 2, 0x10_0200, 300);
    let mut got = vec![0u8; 300];
    buf.read(0x10_0200, &mut got).unwrap();
    assert_eq!(
        got,
        (0..300u64).map(|i| (i % 251) as u8).collect::<Vec<_>>()
    );
    let echo = c.dma_unmap(0x10_0000, 0x10000).unwrap();
    // quiesce ordering: the device's dma_unmap ran before the reply reached us
    assert!(srv
        .log
        .lock()
        .unwrap()
        .unmaps
        .iter()
        .any(|e| e.iova == 0x10_0000 && e.size == 0x10000));
    assert_eq!(
        echo,
        DmaUnmap {
            argsz: 24,
            flags: 0,
            addr: 0x10_0000,
            size: 0x10000
        }
    );
    assert!(matches!(
        c.dma_unmap(0x10_0000, 0x10000),
        Err(ClientError::Errno(Errno::NOENT))
    ));
    c.dma_map(&buf, DMA_FLAG_READ | DMA_FLAG_WRITE).unwrap();
    c.dma_unmap_all().unwrap();
    // reset, feature, migration data
    c.region_write(1, 0, &[1]).unwrap();
    c.reset().unwrap();
    c.region_read(1, 0, &mut z).unwrap();
    assert_eq!(z, [0]);
    let (h, data) = c.device_feature(FEATURE_GET | 1, 16, &[]).unwrap();
    assert_eq!((h.argsz, data), (16, 1u64.to_ne_bytes().to_vec()));
    let (h, _) = c
        .device_feature(FEATURE_PROBE | FEATURE_GET | 1, 8, &[])
        .unwrap();
    assert_eq!(h.flags, FEATURE_PROBE | FEATURE_GET | 1);
    assert!(matches!(
        c.device_feature(FEATURE_GET | FEATURE_SET | 1, 16, &[]),
        Err(ClientError::Errno(Errno::INVAL))
    ));
    assert!(matches!(
        c.device_feature(FEATURE_GET | 1, 8, &[]),
        Err(ClientError::Errno(Errno::INVAL))
    ));
    assert!(matches!(
        c.device_feature(FEATURE_GET | 2, 64, &[]),
        Err(ClientError::Errno(Errno::INVAL))
    ));
    assert_eq!(c.mig_data_read(3).unwrap(), b"sta");
    assert_eq!(c.mig_data_read(100).unwrap(), b"state");
    c.mig_data_write(b"abc").unwrap();
    c.disconnect();
    let dev = srv.stop();
    let log = dev.log.lock().unwrap();
    assert_eq!(log.resets, 1);
    assert_eq!(log.mig_in, b"abc");
    assert!(log.features.contains(&(1, FeatureOp::Get)));
    let r = log.dma_result.as_ref().unwrap().as_ref().unwrap();
    assert_eq!(r.len(), 300);
}

fn b_arr() -> [u8; 4] {
    [0; 4]
}

fn fdless_dma(twin: bool) {
    let srv = Running::start();
    let c = Client::connect(
        &srv.path,
        ClientOptions {
            twin_socket: twin,
            max_data_xfer_size: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(c.has_twin_socket(), twin);
    let buf = DmaBuffer::new(0x20_0000, 0x10000).unwrap();
    c.dma_map_fdless(&buf, DMA_FLAG_READ | DMA_FLAG_WRITE)
        .unwrap();
    // DMA_WRITE of 10000 bytes: three chunks of at most 4096 (the client's limit)
    bar1_dma(&c, 2, 0x20_0010, 10000);
    let mut got = vec![0u8; 10000];
    buf.read(0x20_0010, &mut got).unwrap();
    assert_eq!(
        got,
        (0..10000u64).map(|i| (i % 251) as u8).collect::<Vec<_>>()
    );
    // DMA_READ back
    buf.write(0x20_0000, &[0x5a; 9000]).unwrap();
    bar1_dma(&c, 1, 0x20_0000, 9000);
    let log = srv.log.clone();
    let r = log.lock().unwrap().dma_result.clone().unwrap().unwrap();
    assert_eq!(r, vec![0x5a; 9000]);
    // outside the window: EFAULT from the server's table, no message sent
    bar1_dma(&c, 1, 0x30_0000, 16);
    assert_eq!(
        log.lock().unwrap().dma_result.clone().unwrap(),
        Err(Errno::FAULT)
    );
    c.dma_unmap(0x20_0000, 0x10000).unwrap();
    c.disconnect();
}

#[test]
fn server_to_client_dma_on_main_socket() {
    fdless_dma(false);
}

#[test]
fn server_to_client_dma_on_twin_socket() {
    fdless_dma(true);
}

#[test]
fn bare_version_like_spdk() {
    let srv = Running::start();
    let c = Client::connect(
        &srv.path,
        ClientOptions {
            send_json: false,
            minor: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(c.server_minor(), 1);
    assert_eq!(c.device_info().unwrap().num_regions, 9);
}

#[test]
fn reconnect_after_disconnect_keeps_device_state_drops_maps() {
    let srv = Running::start();
    let buf = DmaBuffer::new(0x1000, 0x1000).unwrap();
    let efd = eventfd();
    {
        let c = Client::connect(&srv.path, ClientOptions::default()).unwrap();
        c.dma_map(&buf, DMA_FLAG_READ | DMA_FLAG_WRITE).unwrap();
        c.set_irq_eventfds(IRQ_INDEX_MSIX, 0, &[efd.as_fd()])
            .unwrap();
        c.region_write(1, 0x50, &[42]).unwrap();
        // dropped without unmapping
    }
    for _ in 0..3 {
        let c = Client::connect(&srv.path, ClientOptions::default()).unwrap();
        let mut b = [0u8; 1];
        c.region_read(1, 0x50, &mut b).unwrap();
        assert_eq!(b, [42], "device state survives a reconnect");
        // the old DMA map and irq fds are gone
        assert!(matches!(
            c.dma_unmap(0x1000, 0x1000),
            Err(ClientError::Errno(Errno::NOENT))
        ));
        assert!(matches!(
            c.region_write(1, 0x30, &[0]),
            Err(ClientError::Errno(Errno::NOENT))
        ));
        c.dma_map(&buf, DMA_FLAG_READ).unwrap();
    }
    let dev = srv.stop();
    let log = dev.log.lock().unwrap();
    assert_eq!((log.attaches, log.detaches), (4, 4));
}

#[test]
fn shutdown_while_client_connected() {
    let srv = Running::start();
    let c = Client::connect(&srv.path, ClientOptions::default()).unwrap();
    c.device_info().unwrap();
    let dev = srv.stop();
    assert_eq!(dev.log.lock().unwrap().detaches, 1);
    assert!(c.device_info().is_err());
}

#[test]
fn idle_client_serves_dma_requests() {
    let srv = Running::start();
    let c = Client::connect(&srv.path, ClientOptions::default()).unwrap();
    let buf = DmaBuffer::new(0x5000, 0x1000).unwrap();
    buf.write(0x5000, &[0x33; 32]).unwrap();
    c.dma_map_fdless(&buf, DMA_FLAG_READ | DMA_FLAG_WRITE)
        .unwrap();
    c.region_write(1, 0x10, &0x5000u64.to_le_bytes()).unwrap();
    c.region_write(1, 0x18, &32u64.to_le_bytes()).unwrap();
    // a posted write triggers the device's DMA_READ while we wait for nothing
    c.region_write_posted(1, 0x20, &1u64.to_le_bytes()).unwrap();
    let n = c
        .serve_pending(std::time::Duration::from_millis(200))
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        srv.log.lock().unwrap().dma_result.clone().unwrap(),
        Ok(vec![0x33; 32])
    );
    assert_eq!(
        c.serve_pending(std::time::Duration::from_millis(10))
            .unwrap(),
        0
    );
}

#[test]
fn dma_from_another_thread_while_client_sends_commands() {
    for twin in [false, true] {
        let srv = Running::start();
        let c = Client::connect(
            &srv.path,
            ClientOptions {
                twin_socket: twin,
                ..Default::default()
            },
        )
        .unwrap();
        let buf = DmaBuffer::new(0x8000, 0x1000).unwrap();
        let pattern: Vec<u8> = (0..0x1000u32).map(|i| (i * 7) as u8).collect();
        buf.write(0x8000, &pattern).unwrap();
        c.dma_map_fdless(&buf, DMA_FLAG_READ).unwrap();
        c.region_write(1, 0x10, &0x8000u64.to_le_bytes()).unwrap();
        c.region_write(1, 0xf0, &[1]).unwrap();
        // keep the session busy with commands; DMA requests interleave with them
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            assert_eq!(c.device_info().unwrap().num_regions, 9);
            let mut b = [0u8; 4];
            c.region_read(7, 0, &mut b).unwrap();
            assert_eq!(b, [0x58, 0x4e, 0x01, 0x00]);
            if srv.log.lock().unwrap().bg_done.is_some() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "background DMA did not finish"
            );
        }
        let res = srv.log.lock().unwrap().bg_done.take().unwrap();
        for (i, r) in res.into_iter().enumerate() {
            assert_eq!(
                r.unwrap(),
                pattern[i * 64..i * 64 + 64].to_vec(),
                "twin={twin} chunk {i}"
            );
        }
    }
}
