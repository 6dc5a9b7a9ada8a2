//! Feeds arbitrary bytes to a server session over a socketpair, after a valid VERSION
//! when the first input byte is even. The session must never panic and must end cleanly
//! at EOF.
#![no_main]

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vfu_proto::*;
use vfu_server::*;

struct FuzzDevice {
    bar0: Arc<OwnedFd>,
    regs: [u8; 256],
}

impl Device for FuzzDevice {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo::default()
    }
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let rw = REGION_FLAG_READ | REGION_FLAG_WRITE;
        match index {
            0 => Some(RegionInfo {
                size: 0x2000,
                flags: rw,
                mmap: Some(RegionMmap {
                    fd: self.bar0.clone(),
                    file_offset: 0,
                    areas: vec![SparseArea {
                        offset: 0x1000,
                        size: 0x1000,
                    }],
                }),
            }),
            1 | 7 => Some(RegionInfo {
                size: 256,
                flags: rw,
                mmap: None,
            }),
            _ => None,
        }
    }
    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        match index {
            0 | 3 | 4 => Some(IrqInfo {
                count: 1,
                flags: IRQ_INFO_EVENTFD,
            }),
            2 => Some(IrqInfo {
                count: 4,
                flags: IRQ_INFO_EVENTFD,
            }),
            _ => None,
        }
    }
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        let o = offset as usize;
        if index == 0 {
            data.fill(0);
            return Ok(());
        }
        data.copy_from_slice(self.regs.get(o..o + data.len()).ok_or(Errno::INVAL)?);
        Ok(())
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let o = offset as usize;
        if index != 0 {
            self.regs
                .get_mut(o..o + data.len())
                .ok_or(Errno::INVAL)?
                .copy_from_slice(data);
        }
        Ok(())
    }
    fn attach(&mut self, _ctx: DeviceContext) {}
    fn detach(&mut self) {}
    fn reset(&mut self, _kind: ResetKind) -> Result<(), Errno> {
        self.regs = [0; 256];
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok((ours, theirs)) = UnixStream::pair() else {
        return;
    };
    let bar0 = rustix::fs::memfd_create("bar0", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&bar0, 0x2000).unwrap();
    let mut dev = FuzzDevice {
        bar0: Arc::new(bar0),
        regs: [0; 256],
    };
    let mut w = theirs.try_clone().unwrap();
    if data.first().is_some_and(|b| b % 2 == 0) {
        let mut v = VersionHdr { major: 0, minor: 2 }.bytes().to_vec();
        v.extend_from_slice(b"{}\0");
        let h = Header::command(0, Command::Version, v.len());
        let _ = w.write_all(h.bytes());
        let _ = w.write_all(&v);
    }
    let _ = w.write_all(data.get(1..).unwrap_or(&[]));
    let _ = theirs.shutdown(std::net::Shutdown::Write);
    let mut r = theirs;
    let drain = std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while matches!(r.read(&mut b), Ok(n) if n > 0) {}
    });
    let opts = ServerOptions::default();
    let end = serve_connection(ours, &mut dev, &opts, None);
    assert!(matches!(end, Ok(SessionEnd::Disconnected) | Err(_)));
    drain.join().unwrap();
});
