//! Server-to-client DMA requests that the client does not answer, over real sockets (main
//! and twin): the device's DMA call fails with ETIMEDOUT within `dma_timeout`, the
//! connection keeps serving commands, the late reply is consumed without an answer, and a
//! session shutdown with a request outstanding is prompt.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use vfu_server::proto::*;
use vfu_server::{Errno, ServerOptions};

/// Generous bound for "returns promptly" on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(2);

/// A client: the main socket, and the twin socket when one was negotiated.
struct Peer {
    main: Raw,
    twin: Option<Raw>,
}

impl Peer {
    fn connect(srv: &Running, twin: bool) -> Peer {
        let mut main = Raw::connect(&srv.path);
        let json: &[u8] = if twin {
            b"{\"capabilities\":{\"twin_socket\":{\"supported\":true}}}\0"
        } else {
            b"{\"capabilities\":{}}\0"
        };
        let rep = main.version(json);
        assert!(!rep.hdr.is_error());
        let twin = rep.fds.into_iter().next().map(|fd| {
            let s = UnixStream::from(fd);
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Raw { s, id: 0 }
        });
        let mut p = Peer { main, twin };
        map_fdless(&mut p.main, 0x1000, 0x1000);
        sync_reg(&mut p.main, 0x10, 0x1000);
        sync_reg(&mut p.main, 0x18, 16);
        p
    }

    /// Where the server's DMA requests arrive.
    fn dma(&mut self) -> &mut Raw {
        match &mut self.twin {
            Some(t) => t,
            None => &mut self.main,
        }
    }

    /// Starts one background DMA read (16 bytes at 0x1000) and returns the request the
    /// client receives. On the main socket it may come before or after the REGION_WRITE
    /// reply (the device's thread races the endpoint thread).
    fn start_read(&mut self) -> Reply {
        let id = write_reg(&mut self.main, 0xe8, 1);
        let m = match &mut self.twin {
            Some(t) => {
                let rep = self.main.recv().expect("no REGION_WRITE reply");
                assert!(rep.hdr.is_reply() && !rep.hdr.is_error() && rep.hdr.msg_id == id);
                t.recv().expect("no DMA_READ request")
            }
            None => {
                let (a, b) = (self.main.recv().unwrap(), self.main.recv().unwrap());
                let (rep, m) = if a.hdr.is_reply() { (a, b) } else { (b, a) };
                assert!(rep.hdr.is_reply() && !rep.hdr.is_error() && rep.hdr.msg_id == id);
                m
            }
        };
        assert!(m.hdr.is_command());
        assert_eq!(m.hdr.cmd(), Some(Command::DmaRead));
        assert!(m.hdr.msg_id >= 0x8000, "server request ids are >= 0x8000");
        m
    }

    /// Answers a DMA_READ request with `fill`.
    fn answer_read(&mut self, m: &Reply, fill: u8) {
        let rw = DmaRw::decode(&m.body).unwrap();
        let mut p = rw.bytes().to_vec();
        p.extend(std::iter::repeat_n(fill, rw.count as usize));
        self.dma()
            .s
            .write_all_msg(&Header::reply(&m.hdr, p.len()), &p);
    }
}

fn start(dma_timeout: Duration) -> Running {
    Running::start_with(ServerOptions {
        dma_timeout,
        ..Default::default()
    })
}

/// Reads the 8-byte BAR1 register at `off`.
fn read_reg(r: &mut Raw, off: u64) -> u64 {
    let a = RegionAccess {
        offset: off,
        region: 1,
        count: 8,
    };
    let rep = r.call(Command::RegionRead as u16, a.bytes(), &[]);
    assert!(!rep.hdr.is_error());
    assert_eq!(rep.body.len(), RegionAccess::SIZE + 8);
    u64::from_le_bytes(rep.body[RegionAccess::SIZE..].try_into().unwrap())
}

fn unanswered_read_times_out_and_late_reply_is_dropped(twin: bool) {
    let tmo = Duration::from_millis(400);
    let srv = start(tmo);
    let mut p = Peer::connect(&srv, twin);
    assert_eq!(p.twin.is_some(), twin);
    let m = p.start_read();
    // the connection serves commands while the request waits for its reply
    assert_eq!(read_reg(&mut p.main, 0x10), 0x1000);
    let (res, took) = Log::wait_bg_read(&srv.log, tmo + SLACK).expect("DMA read hung");
    assert_eq!(res, Err(Errno::TIMEDOUT), "twin={twin}");
    assert!(took >= tmo, "twin={twin}: gave up after {took:?}");
    assert!(took < tmo + SLACK, "twin={twin}: took {took:?}");
    // the same connection still serves REGION_READ correctly
    assert_eq!(read_reg(&mut p.main, 0x18), 16);
    // until the late reply comes, a new request fails at once and sends nothing
    sync_reg(&mut p.main, 0xe8, 1);
    let (res, took) = Log::wait_bg_read(&srv.log, SLACK).expect("DMA read hung");
    assert_eq!(res, Err(Errno::TIMEDOUT), "twin={twin}");
    assert!(
        took < tmo,
        "twin={twin}: waited {took:?} instead of failing at once"
    );
    p.main.assert_usable();
    // the late reply is consumed without an answer: the next pair stays in sync
    p.answer_read(&m, 9);
    p.main.assert_usable();
    // and the DMA channel works again (with a fresh id)
    let m2 = p.start_read();
    assert_ne!(m2.hdr.msg_id, m.hdr.msg_id);
    p.answer_read(&m2, 5);
    let (res, _) = Log::wait_bg_read(&srv.log, SLACK).expect("DMA read hung");
    assert_eq!(res, Ok(vec![5; 16]), "twin={twin}");
    p.main.assert_usable();
    if let Some(t) = &mut p.twin {
        // nothing was sent back on the twin socket for the late reply
        t.s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        assert!(std::io::Read::read(&mut t.s, &mut b).is_err());
    }
}

#[test]
fn unanswered_dma_read_times_out_main_socket() {
    unanswered_read_times_out_and_late_reply_is_dropped(false);
}

#[test]
fn unanswered_dma_read_times_out_twin_socket() {
    unanswered_read_times_out_and_late_reply_is_dropped(true);
}

#[test]
fn unanswered_dma_write_from_the_endpoint_thread_times_out() {
    // the device writes from inside its REGION_WRITE handler (endpoint thread)
    let tmo = Duration::from_millis(300);
    let srv = start(tmo);
    let mut p = Peer::connect(&srv, false);
    let t = Instant::now();
    let id = write_reg(&mut p.main, 0x20, 2);
    let m = p.main.recv().unwrap();
    assert_eq!(m.hdr.cmd(), Some(Command::DmaWrite));
    let rep = p.main.recv().unwrap();
    assert_eq!(rep.hdr.msg_id, id);
    assert!(!rep.hdr.is_error());
    assert!(t.elapsed() >= tmo);
    assert_eq!(
        srv.log.lock().unwrap().dma_result.clone().unwrap(),
        Err(Errno::TIMEDOUT)
    );
    // a late error reply (QEMU's shape: header only) is dropped too
    p.main.s.write_all_hdr(&Header::error_reply(
        &m.hdr,
        Errno::FAULT.raw_os_error() as u32,
    ));
    p.main.assert_usable();
    assert_eq!(read_reg(&mut p.main, 0x18), 16);
}

#[test]
fn reply_with_a_server_id_that_was_never_abandoned_is_still_einval() {
    let srv = start(Duration::from_millis(300));
    let mut p = Peer::connect(&srv, false);
    let fake = Header {
        msg_id: 0x8123,
        command: Command::DmaRead as u16,
        msg_size: 16,
        flags: 0,
        error: 0,
    };
    p.main.s.write_all_hdr(&Header::reply(&fake, 0));
    let rep = p.main.recv().unwrap();
    assert_eq!(rep.hdr.msg_id, 0x8123);
    assert!(rep.hdr.is_error());
    assert_eq!(rep.hdr.error, Errno::INVAL.raw_os_error() as u32);
    p.main.assert_usable();
}

fn shutdown_with_request_pending_is_prompt(twin: bool) {
    // a DMA timeout far beyond the test: only the shutdown can end the wait
    let srv = start(Duration::from_secs(60));
    let log = srv.log.clone();
    let mut p = Peer::connect(&srv, twin);
    let _m = p.start_read();
    // the endpoint never blocks on the read side while the request waits
    for _ in 0..20 {
        p.main.assert_usable();
    }
    let t = Instant::now();
    let dev = srv.stop();
    let stopped = t.elapsed();
    assert!(stopped < Duration::from_secs(1), "twin={twin}: {stopped:?}");
    assert_eq!(dev.log.lock().unwrap().detaches, 1);
    let (res, _) = Log::wait_bg_read(&log, Duration::from_secs(1)).expect("DMA read hung");
    assert_eq!(res, Err(Errno::NOTCONN), "twin={twin}");
    assert!(p.main.closed());
}

#[test]
fn shutdown_while_dma_request_pending_main_socket() {
    shutdown_with_request_pending_is_prompt(false);
}

#[test]
fn shutdown_while_dma_request_pending_twin_socket() {
    shutdown_with_request_pending_is_prompt(true);
}

#[test]
fn oversized_reply_to_a_dma_read_fails_it_with_eio_and_is_drained() {
    let srv = start(Duration::from_secs(60));
    let mut p = Peer::connect(&srv, false);
    let m = p.start_read();
    // a reply far beyond max_data_xfer_size (+ header room): drained, EIO, no wait
    let huge = vec![0u8; 2 << 20];
    p.main
        .s
        .write_all_msg(&Header::reply(&m.hdr, huge.len()), &huge);
    let (res, _) = Log::wait_bg_read(&srv.log, SLACK).expect("DMA read hung");
    assert_eq!(res, Err(Errno::IO));
    p.main.assert_usable();
    let m2 = p.start_read();
    p.answer_read(&m2, 3);
    let (res, _) = Log::wait_bg_read(&srv.log, SLACK).expect("DMA read hung");
    assert_eq!(res, Ok(vec![3; 16]));
}
