//! 10,000 random and mutated messages against a live server: no panic, no desync (a good
//! message on a fresh connection works after every batch), no fd leak.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use vfu_server::proto::*;

#[derive(Debug, Clone)]
struct Msg {
    bytes: Vec<u8>,
    nfds: usize,
}

fn with_header(cmd: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Header {
        msg_id: 7,
        command: cmd,
        msg_size: (16 + payload.len()) as u32,
        flags,
        error: 0,
    }
    .bytes()
    .to_vec();
    v.extend_from_slice(payload);
    v
}

fn templates() -> Vec<Vec<u8>> {
    let c = |c: Command| c as u16;
    let mut ver = VersionHdr { major: 0, minor: 2 }.bytes().to_vec();
    ver.extend_from_slice(
        b"{\"capabilities\":{\"max_msg_fds\":4,\"twin_socket\":{\"supported\":true}}}\0",
    );
    let mut wr = RegionAccess {
        offset: 0x40,
        region: 1,
        count: 4,
    }
    .bytes()
    .to_vec();
    wr.extend_from_slice(&[1, 2, 3, 4]);
    let mut multi = 2u64.to_ne_bytes().to_vec();
    multi.extend_from_slice(
        WriteMultiEntry {
            offset: 0,
            region: 1,
            count: 4,
            data: [1; 8],
        }
        .bytes(),
    );
    multi.extend_from_slice(
        WriteMultiEntry {
            offset: 0x1000,
            region: 0,
            count: 8,
            data: [2; 8],
        }
        .bytes(),
    );
    let mut bools = IrqSetMsg {
        argsz: 22,
        flags: IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER,
        index: 2,
        start: 0,
        count: 2,
    }
    .bytes()
    .to_vec();
    bools.extend_from_slice(&[1, 0]);
    let mut mig = MigDataMsg { argsz: 12, size: 4 }.bytes().to_vec();
    mig.extend_from_slice(b"abcd");
    vec![
        with_header(c(Command::Version), 0, &ver),
        with_header(
            c(Command::DmaMap),
            0,
            DmaMap {
                argsz: 32,
                flags: 3,
                offset: 0,
                addr: 0x10000,
                size: 0x1000,
            }
            .bytes(),
        ),
        with_header(
            c(Command::DmaUnmap),
            0,
            DmaUnmap {
                argsz: 24,
                flags: 0,
                addr: 0x10000,
                size: 0x1000,
            }
            .bytes(),
        ),
        with_header(c(Command::DeviceGetInfo), 0, info_req(16).bytes()),
        with_header(
            c(Command::DeviceGetRegionInfo),
            0,
            RegionInfoMsg {
                argsz: 128,
                index: 0,
                ..Default::default()
            }
            .bytes(),
        ),
        with_header(
            c(Command::DeviceGetRegionIoFds),
            0,
            RegionIoFdsMsg {
                argsz: 16,
                index: 0,
                ..Default::default()
            }
            .bytes(),
        ),
        with_header(
            c(Command::DeviceGetIrqInfo),
            0,
            IrqInfoMsg {
                argsz: 16,
                index: 2,
                ..Default::default()
            }
            .bytes(),
        ),
        with_header(
            c(Command::DeviceSetIrqs),
            0,
            IrqSetMsg {
                argsz: 20,
                flags: 0x24,
                index: 2,
                start: 0,
                count: 1,
            }
            .bytes(),
        ),
        with_header(c(Command::DeviceSetIrqs), 0, &bools),
        with_header(
            c(Command::RegionRead),
            0,
            RegionAccess {
                offset: 0,
                region: 7,
                count: 64,
            }
            .bytes(),
        ),
        with_header(c(Command::RegionWrite), FLAG_NO_REPLY, &wr),
        with_header(c(Command::RegionWriteMulti), 0, &multi),
        with_header(c(Command::DeviceReset), 0, &[]),
        with_header(
            c(Command::DeviceFeature),
            0,
            DeviceFeatureMsg {
                argsz: 16,
                flags: FEATURE_GET | 1,
            }
            .bytes(),
        ),
        with_header(
            c(Command::MigDataRead),
            0,
            MigDataMsg {
                argsz: 64,
                size: 16,
            }
            .bytes(),
        ),
        with_header(c(Command::MigDataWrite), 0, &mig),
    ]
}

fn msg_strategy() -> impl Strategy<Value = Msg> {
    let t = templates();
    let n = t.len();
    prop_oneof![
        // random bytes (rare: they break framing for the rest of the batch)
        1 => vec(any::<u8>(), 0..48).prop_map(|bytes| Msg { bytes, nfds: 0 }),
        // well-framed header, random command/flags/payload
        6 => (0u16..24, prop::sample::select(vec![0u32, 1, 0x10, 0x20, 0x11, 2, 0xff]), vec(any::<u8>(), 0..72), 0usize..3)
            .prop_map(|(cmd, flags, p, nfds)| Msg { bytes: with_header(cmd, flags, &p), nfds }),
        // mutated valid messages: byte flips, truncation, extension
        10 => (0..n, vec((any::<prop::sample::Index>(), any::<u8>()), 0..3), any::<prop::sample::Index>(), 0u8..10, 0usize..3)
            .prop_map(move |(i, flips, cut, mode, nfds)| {
                let mut b = t[i].clone();
                for (pos, x) in flips {
                    let p = pos.index(b.len());
                    b[p] ^= x;
                }
                match mode {
                    0 => b.truncate(cut.index(b.len() + 1)),
                    1 => b.extend_from_slice(&[0x5a; 9]),
                    _ => {}
                }
                Msg { bytes: b, nfds }
            }),
    ]
}

fn negotiate(s: &UnixStream) {
    let mut ver = VersionHdr { major: 0, minor: 2 }.bytes().to_vec();
    ver.extend_from_slice(b"{}\0");
    Socket::new(s.try_clone().unwrap())
        .send(
            &Header::command(1, Command::Version, ver.len()),
            &[&ver],
            &[],
        )
        .unwrap();
}

fn run_batch(path: &Path, msgs: &[Msg], negotiate_first: bool) {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = s.try_clone().unwrap();
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    });
    if negotiate_first {
        negotiate(&s);
    }
    let sock = Socket::new(s.try_clone().unwrap());
    for m in msgs {
        let fds: Vec<_> = (0..m.nfds).map(|_| eventfd()).collect();
        let b: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        if m.bytes.len() < 16 {
            use std::io::Write;
            if (&s).write_all(&m.bytes).is_err() {
                break;
            }
            continue;
        }
        let hdr = Header::decode(&m.bytes).unwrap();
        if sock.send(&hdr, &[&m.bytes[16..]], &b).is_err() {
            break; // the server closed this connection; that is allowed
        }
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        drain.join().unwrap(),
        "server did not close the connection after EOF"
    );
}

fn fresh_connection_works(path: &Path) {
    let mut r = Raw::negotiated(path);
    r.assert_usable();
}

#[test]
fn ten_thousand_random_and_mutated_messages() {
    let srv = Running::start();
    fresh_connection_works(&srv.path);
    // let the server finish tearing down that session before counting
    std::thread::sleep(Duration::from_millis(100));
    let before = open_fds();
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let path = srv.path.clone();
    runner
        .run(
            &(vec(msg_strategy(), 25), prop::bool::weighted(0.9)),
            |(msgs, neg)| {
                run_batch(&path, &msgs, neg);
                fresh_connection_works(&path);
                Ok(())
            },
        )
        .unwrap();
    // the server thread is alive and serving, and nothing leaked
    fresh_connection_works(&srv.path);
    std::thread::sleep(Duration::from_millis(100));
    let after = open_fds();
    assert_eq!(before, after, "fd leak: {before} fds before, {after} after");
    let dev = srv.stop();
    let log = dev.log.lock().unwrap();
    assert_eq!(log.attaches, log.detaches);
    // the batches really reached the device (negotiated sessions, executed writes)
    assert!(
        log.attaches > 400,
        "only {} sessions attached",
        log.attaches
    );
    assert!(!log.writes.is_empty());
    eprintln!(
        "sessions {}, writes {}, resets {}, irq sets {}",
        log.attaches,
        log.writes.len(),
        log.resets,
        log.irq_sets.len()
    );
}
