//! Server-to-client DMA over the main socket with a hand-written peer that answers like QEMU
//! (12-byte DMA_READ reply prefix, header-only DMA_WRITE reply) or like the spec, chunking by
//! the client's max_data_xfer_size, error replies, and a command interleaved before a reply.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use vfu_server::proto::*;
use vfu_server::Errno;

#[test]
fn qemu_reply_layouts_and_chunking() {
    let srv = Running::start();
    let mut r = negotiated_xfer(&srv.path, 64);
    map_fdless(&mut r, 0x1000, 0x1000);
    // device DMA_WRITE of 100 bytes: chunks of 64 and 36, answered header-only like QEMU
    sync_reg(&mut r, 0x10, 0x1100);
    sync_reg(&mut r, 0x18, 100);
    let id = write_reg(&mut r, 0x20, 2);
    let mut got = Vec::new();
    loop {
        let m = r.recv().unwrap();
        if m.hdr.is_reply() {
            assert_eq!(m.hdr.msg_id, id);
            assert!(!m.hdr.is_error());
            break;
        }
        assert_eq!(m.hdr.cmd(), Some(Command::DmaWrite));
        let rw = DmaRw::decode(&m.body).unwrap();
        assert!(
            rw.count <= 64,
            "chunk larger than the client's max_data_xfer_size"
        );
        assert_eq!(rw.addr, 0x1100 + got.len() as u64);
        got.extend_from_slice(&m.body[16..]);
        r.s.write_all_hdr(&Header::reply(&m.hdr, 0));
    }
    assert_eq!(
        got,
        (0..100u64).map(|i| (i % 251) as u8).collect::<Vec<_>>()
    );
    // device DMA_READ of 100 bytes answered with QEMU's {addr u64, count u32, data} layout
    sync_reg(&mut r, 0x18, 100);
    let id = write_reg(&mut r, 0x20, 1);
    loop {
        let m = r.recv().unwrap();
        if m.hdr.is_reply() {
            assert_eq!(m.hdr.msg_id, id);
            break;
        }
        assert_eq!(m.hdr.cmd(), Some(Command::DmaRead));
        let rw = DmaRw::decode_exact(&m.body).unwrap();
        let mut p = rw.addr.to_ne_bytes().to_vec();
        p.extend_from_slice(&(rw.count as u32).to_ne_bytes());
        p.extend(std::iter::repeat_n(0x42, rw.count as usize));
        r.s.write_all_msg(&Header::reply(&m.hdr, p.len()), &p);
    }
    let res = srv.log.lock().unwrap().dma_result.clone().unwrap();
    assert_eq!(res, Ok(vec![0x42; 100]));
    // spec layout with a wrong echo: EIO; an error reply: its errno
    sync_reg(&mut r, 0x18, 8);
    let id = write_reg(&mut r, 0x20, 1);
    let m = r.recv().unwrap();
    let bad = DmaRw {
        addr: 0x9999,
        count: 8,
    };
    let mut p = bad.bytes().to_vec();
    p.extend_from_slice(&[0; 8]);
    r.s.write_all_msg(&Header::reply(&m.hdr, p.len()), &p);
    assert_eq!(r.recv().unwrap().hdr.msg_id, id);
    assert_eq!(
        srv.log.lock().unwrap().dma_result.clone().unwrap(),
        Err(Errno::IO)
    );
    let id = write_reg(&mut r, 0x20, 1);
    let m = r.recv().unwrap();
    r.s.write_all_hdr(&Header::error_reply(
        &m.hdr,
        Errno::FAULT.raw_os_error() as u32,
    ));
    assert_eq!(r.recv().unwrap().hdr.msg_id, id);
    assert_eq!(
        srv.log.lock().unwrap().dma_result.clone().unwrap(),
        Err(Errno::FAULT)
    );
    r.assert_usable();
}

#[test]
fn command_interleaved_before_dma_reply_is_served_after() {
    let srv = Running::start();
    let mut r = negotiated_xfer(&srv.path, 4096);
    map_fdless(&mut r, 0x1000, 0x1000);
    sync_reg(&mut r, 0x10, 0x1000);
    sync_reg(&mut r, 0x18, 16);
    let id = write_reg(&mut r, 0x20, 1);
    let m = r.recv().unwrap();
    assert_eq!(m.hdr.cmd(), Some(Command::DmaRead));
    // the client pipelines a GET_INFO before answering the DMA_READ
    let gi = r.send(Command::DeviceGetInfo as u16, info_req(16).bytes(), &[], 0);
    let rw = DmaRw::decode(&m.body).unwrap();
    let mut p = rw.bytes().to_vec();
    p.extend_from_slice(&[7; 16]);
    r.s.write_all_msg(&Header::reply(&m.hdr, p.len()), &p);
    // replies come in order: the REGION_WRITE (whose handler did the DMA) then GET_INFO
    assert_eq!(r.recv().unwrap().hdr.msg_id, id);
    let g = r.recv().unwrap();
    assert_eq!(g.hdr.msg_id, gi);
    assert_eq!(DeviceInfoMsg::decode(&g.body).unwrap().num_regions, 9);
    assert_eq!(
        srv.log.lock().unwrap().dma_result.clone().unwrap(),
        Ok(vec![7; 16])
    );
}
