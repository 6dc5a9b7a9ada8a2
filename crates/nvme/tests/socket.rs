//! The NVMe function behind `sluice_pci::PciEndpoint`, served by `vfu_server::Server` over a
//! real Unix socket to `vfu_client::Client`: bring-up through BAR0 region writes, admin and
//! I/O commands in client DMA memory (memfd, mapped by the server), doorbells through the
//! mmapped sparse area, MSI-X to an eventfd without any UNMASK, and trapped-doorbell mode.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{eventfd, EventfdFlags};
use sluice_bdev::MallocBdev;
use sluice_nvme::pci::{nvme_endpoint, NvmePciIds};
use sluice_nvme::poller::PollerHandle;
use sluice_nvme::spec::{admin, io, reg, Sqe};
use sluice_nvme::testkit::{rw, sqe, with_prps};
use sluice_nvme::{Controller, ControllerConfig, ControllerHandle, NoInterrupts, PollMode, Poller};
use vfu_client::{Client, ClientOptions, DmaBuffer, MappedArea};
use vfu_server::proto::{DMA_FLAG_READ, DMA_FLAG_WRITE};
use vfu_server::{Server, ServerOptions, ShutdownHandle};

const CONFIG: u32 = 7;
const MSIX: u32 = 2;
const IOVA: u64 = 0x10_0000;
const MEM: u64 = 4 << 20;

struct Rig {
    client: Client,
    buf: DmaBuffer,
    doorbells: Option<MappedArea>,
    control: ControllerHandle,
    poller: PollerHandle,
    stop: ShutdownHandle,
    threads: Vec<JoinHandle<()>>,
    sq: [u16; 2],
    cq: [u16; 2],
    phase: [bool; 2],
    cid: u16,
    shadow: Option<u64>,
    _dir: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.shutdown();
        self.poller.stop();
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}

const ASQ: u64 = IOVA;
const ACQ: u64 = IOVA + 0x1000;
const IOSQ: u64 = IOVA + 0x2000;
const IOCQ: u64 = IOVA + 0x6000;
const DATA: u64 = IOVA + 0x10_0000;
const QSIZE: u16 = 64;

fn rig(mappable: bool) -> Rig {
    let (mut poller, ph) = Poller::new();
    let pt = std::thread::spawn(move || poller.run(PollMode::default()));
    let cfg = ControllerConfig {
        mappable_bar0: mappable,
        ..Default::default()
    };
    let mut c = Controller::new(cfg, Arc::new(NoInterrupts)).unwrap();
    c.add_namespace(
        Some(1),
        Arc::new(MallocBdev::new("m0", 512, 8192, None).unwrap()),
    )
    .unwrap();
    let (mut ep, control) = nvme_endpoint(c, NvmePciIds::default(), &ph).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cntrl");
    let server = Server::bind(&path, ServerOptions::default()).unwrap();
    let stop = server.shutdown_handle();
    let st = std::thread::spawn(move || server.serve(&mut ep).unwrap());
    let client = Client::connect(&path, ClientOptions::default()).unwrap();
    // Memory space + bus master.
    client
        .region_write(CONFIG, 4, &0x0006u16.to_le_bytes())
        .unwrap();
    let buf = DmaBuffer::new(IOVA, MEM).unwrap();
    client
        .dma_map(&buf, DMA_FLAG_READ | DMA_FLAG_WRITE)
        .unwrap();
    let desc = client.region_info(0).unwrap();
    let doorbells = if mappable {
        let mut areas = client.mmap_region(&desc).unwrap();
        assert_eq!(areas.len(), 1);
        assert_eq!(areas[0].offset, 0x1000);
        areas.pop()
    } else {
        None
    };
    Rig {
        client,
        buf,
        doorbells,
        control,
        poller: ph,
        stop,
        threads: vec![pt, st],
        sq: [0; 2],
        cq: [0; 2],
        phase: [true; 2],
        cid: 0,
        shadow: None,
        _dir: dir,
    }
}

impl Rig {
    fn r32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.client.region_read(0, off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }
    fn w32(&self, off: u64, v: u32) {
        self.client.region_write(0, off, &v.to_le_bytes()).unwrap();
    }
    fn w64(&self, off: u64, v: u64) {
        self.client.region_write(0, off, &v.to_le_bytes()).unwrap();
    }
    fn doorbell(&self, idx: u64, v: u32) {
        if let (Some(sh), true) = (self.shadow, idx >= 2) {
            self.buf.write(sh + idx * 4, &v.to_le_bytes()).unwrap();
        }
        match &self.doorbells {
            Some(a) => a.store_u32(idx as usize * 4, v).unwrap(),
            None => self.w32(0x1000 + idx * 4, v),
        }
    }
    fn enable(&mut self) {
        self.w32(reg::AQA, u32::from(QSIZE - 1) | u32::from(QSIZE - 1) << 16);
        self.w64(reg::ASQ, ASQ);
        self.w64(reg::ACQ, ACQ);
        self.w32(reg::CC, 1 | 6 << 16 | 4 << 20);
        let start = Instant::now();
        while self.r32(reg::CSTS) & 1 == 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "RDY timeout");
        }
        self.sq = [0; 2];
        self.cq = [0; 2];
        self.phase = [true; 2];
    }
    fn submit(&mut self, q: usize, mut s: Sqe) -> (u32, u16) {
        self.cid = self.cid.wrapping_add(1);
        s.dw[0] = (s.dw[0] & 0xffff) | u32::from(self.cid) << 16;
        let base = if q == 0 { ASQ } else { IOSQ };
        self.buf
            .write(base + u64::from(self.sq[q]) * 64, &s.to_bytes())
            .unwrap();
        self.sq[q] = (self.sq[q] + 1) % QSIZE;
        self.doorbell(q as u64 * 2, u32::from(self.sq[q]));
        let base = if q == 0 { ACQ } else { IOCQ };
        let start = Instant::now();
        loop {
            let mut raw = [0u8; 16];
            self.buf
                .read(base + u64::from(self.cq[q]) * 16, &mut raw)
                .unwrap();
            let dw3 = u32::from_le_bytes(raw[12..16].try_into().unwrap());
            if (dw3 >> 16) & 1 == u32::from(self.phase[q]) {
                self.cq[q] = (self.cq[q] + 1) % QSIZE;
                if self.cq[q] == 0 {
                    self.phase[q] = !self.phase[q];
                }
                self.doorbell(q as u64 * 2 + 1, u32::from(self.cq[q]));
                assert_eq!(dw3 as u16, self.cid);
                return (
                    u32::from_le_bytes(raw[0..4].try_into().unwrap()),
                    (dw3 >> 17) as u16,
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "completion timeout"
            );
            std::thread::yield_now();
        }
    }
    fn create_queues(&mut self) {
        let mut s = with_prps(sqe(admin::CREATE_CQ, 0), IOCQ, 0);
        s.dw[10] = 1 | u32::from(QSIZE - 1) << 16;
        s.dw[11] = 3 | 1 << 16;
        assert_eq!(self.submit(0, s).1, 0);
        let mut s = with_prps(sqe(admin::CREATE_SQ, 0), IOSQ, 0);
        s.dw[10] = 1 | u32::from(QSIZE - 1) << 16;
        s.dw[11] = 1 | 1 << 16;
        assert_eq!(self.submit(0, s).1, 0);
    }
    fn msix_cap(&self) -> u64 {
        let mut b = [0u8; 4];
        self.client.region_read(CONFIG, 0x34, &mut b[..1]).unwrap();
        let mut p = u64::from(b[0]);
        while p != 0 {
            self.client.region_read(CONFIG, p, &mut b[..2]).unwrap();
            if b[0] == 0x11 {
                return p;
            }
            p = u64::from(b[1]);
        }
        panic!("no MSI-X capability");
    }
}

fn read_eventfd(fd: &OwnedFd) -> u64 {
    let mut b = [0u8; 8];
    match rustix::io::read(fd, &mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}

#[test]
fn bring_up_identify_io_and_msix_over_socket() {
    let mut r = rig(true);
    // PCI identity.
    let mut id = [0u8; 4];
    r.client.region_read(CONFIG, 0, &mut id).unwrap();
    assert_eq!(u32::from_le_bytes(id), 0x0001_4e58);
    r.client.region_read(CONFIG, 8, &mut id).unwrap();
    assert_eq!(u32::from_le_bytes(id) >> 8, 0x01_08_02);
    // MSI-X: enable, install eventfds for vectors 0 and 1; no UNMASK is ever sent.
    let cap = r.msix_cap();
    r.client
        .region_write(CONFIG, cap + 2, &0x8000u16.to_le_bytes())
        .unwrap();
    let efds: Vec<OwnedFd> = (0..2)
        .map(|_| eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap())
        .collect();
    let borrowed: Vec<_> = efds.iter().map(|f| f.as_fd()).collect();
    r.client.set_irq_eventfds(MSIX, 0, &borrowed).unwrap();

    r.enable();
    let mut cap64 = [0u8; 8];
    r.client.region_read(0, 0, &mut cap64).unwrap();
    assert_eq!(u64::from_le_bytes(cap64) & 0xffff, 255);
    // Identify controller.
    let mut s = with_prps(sqe(admin::IDENTIFY, 0), DATA, 0);
    s.dw[10] = 1;
    assert_eq!(r.submit(0, s).1, 0);
    let mut idc = [0u8; 80];
    r.buf.read(DATA, &mut idc).unwrap();
    assert_eq!(u16::from_le_bytes([idc[0], idc[1]]), 0x4e58);
    assert_eq!(idc[77], 5);
    // The CQE is visible before the poll thread fires the vector; a control round trip
    // runs after that poll iteration.
    r.control.stats().unwrap();
    assert!(
        read_eventfd(&efds[0]) >= 1,
        "admin completion interrupt on vector 0"
    );
    // I/O queue pair on vector 1, write then read back.
    r.create_queues();
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    r.buf.write(DATA, &pattern).unwrap();
    assert_eq!(
        r.submit(1, rw(io::WRITE, 1, 16, 16, DATA, DATA + 0x1000)).1,
        0
    );
    r.buf.write(DATA + 0x4000, &[0u8; 8192]).unwrap();
    assert_eq!(
        r.submit(1, rw(io::READ, 1, 16, 16, DATA + 0x4000, DATA + 0x5000))
            .1,
        0
    );
    let mut back = vec![0u8; 8192];
    r.buf.read(DATA + 0x4000, &mut back).unwrap();
    assert_eq!(back, pattern);
    r.control.stats().unwrap();
    assert!(
        read_eventfd(&efds[1]) >= 1,
        "I/O completion interrupt on vector 1"
    );
    // An error then a successful I/O.
    let (_, status) = r.submit(1, rw(io::READ, 1, 8190, 4, DATA, 0));
    assert_eq!(status & 0xff, 0x80, "LBA out of range");
    assert_eq!(r.submit(1, rw(io::READ, 1, 0, 1, DATA, 0)).1, 0);
    let stats = r.control.stats().unwrap();
    assert!(stats.io_commands >= 4);
    // DMA unmap quiesces and the controller survives; remap and I/O works again.
    r.client.dma_unmap(IOVA, MEM).unwrap();
    r.client
        .dma_map(&r.buf, DMA_FLAG_READ | DMA_FLAG_WRITE)
        .unwrap();
    assert_eq!(r.submit(1, rw(io::READ, 1, 0, 1, DATA, 0)).1, 0);
    // Device reset brings CSTS back to 0; the controller comes up again.
    r.client.reset().unwrap();
    r.client
        .region_write(CONFIG, 4, &0x0006u16.to_le_bytes())
        .unwrap();
    assert_eq!(r.r32(reg::CSTS), 0);
    r.enable();
    let mut s = with_prps(sqe(admin::IDENTIFY, 0), DATA, 0);
    s.dw[10] = 1;
    assert_eq!(r.submit(0, s).1, 0);
}

#[test]
fn trapped_doorbells_and_bad_bar_accesses() {
    let mut r = rig(false);
    let desc = r.client.region_info(0).unwrap();
    assert!(
        r.client
            .mmap_region(&desc)
            .map(|a| a.is_empty())
            .unwrap_or(true),
        "no sparse area"
    );
    r.enable();
    r.create_queues();
    assert_eq!(r.submit(1, rw(io::READ, 1, 0, 8, DATA, 0)).1, 0);
    // Doorbell reads, odd sizes and the padding page are refused.
    let mut b = [0u8; 4];
    assert!(r.client.region_read(0, 0x1000, &mut b).is_err());
    assert!(r.client.region_write(0, 0x1002, &[0u8; 2]).is_err());
    assert!(r.client.region_write(0, 0x2000, &[0u8; 4]).is_err());
    assert!(r.client.region_read(0, reg::CSTS, &mut [0u8; 2]).is_err());
    // Doorbell Buffer Config is offered in trapped mode.
    assert_eq!(
        r.submit(
            0,
            with_prps(
                sqe(admin::DOORBELL_BUFFER_CONFIG, 0),
                DATA + 0x10000,
                DATA + 0x11000
            )
        )
        .1,
        0
    );
    r.shadow = Some(DATA + 0x10000);
    assert_eq!(r.submit(1, rw(io::READ, 1, 0, 8, DATA, 0)).1, 0);
}

impl Rig {
    fn cap_offset(&self, id: u8) -> u64 {
        let mut b = [0u8; 2];
        self.client.region_read(CONFIG, 0x34, &mut b[..1]).unwrap();
        let mut p = u64::from(b[0]);
        while p != 0 {
            self.client.region_read(CONFIG, p, &mut b).unwrap();
            if b[0] == id {
                return p;
            }
            p = u64::from(b[1]);
        }
        panic!("no capability {id:#x}");
    }
    /// No CQE beyond the ones the host consumed is visible in the admin CQ.
    fn assert_no_stray_admin_cqe(&self, when: &str) {
        let mut raw = [0u8; 16];
        self.buf
            .read(ACQ + u64::from(self.cq[0]) * 16, &mut raw)
            .unwrap();
        let dw3 = u32::from_le_bytes(raw[12..16].try_into().unwrap());
        assert_ne!(
            (dw3 >> 16) & 1,
            u32::from(self.phase[0]),
            "stray admin completion {when}: cid {:#x} status {:#x}",
            dw3 as u16,
            dw3 >> 17
        );
    }
    fn delete_queues(&mut self) {
        let mut s = sqe(admin::DELETE_SQ, 0);
        s.dw[10] = 1;
        assert_eq!(self.submit(0, s).1, 0);
        let mut s = sqe(admin::DELETE_CQ, 0);
        s.dw[10] = 1;
        assert_eq!(self.submit(0, s).1, 0);
    }
    fn wait_csts(&self, mask: u32, want: u32) {
        let start = Instant::now();
        while self.r32(reg::CSTS) & mask != want {
            assert!(start.elapsed() < Duration::from_secs(5), "CSTS timeout");
            std::thread::yield_now();
        }
    }
}

/// Linux's sysfs reset sequence (`echo 1 > .../reset`) then power-off: disable the
/// controller, save config and clear the command register, FLR, restore, re-enable, I/O;
/// at power-off delete the I/O queues and shut down. The controller must process exactly
/// the commands the host submitted and post no completion for anything else (a guest
/// once logged "request 0x0 genctr mismatch" after such a run).
fn flr_then_power_off(mappable: bool) {
    let mut r = rig(mappable);
    r.enable();
    r.create_queues();
    let mut host_admin = 2u64;
    for lba in 0..80u64 {
        // Wraps the 64-entry queues.
        assert_eq!(r.submit(1, rw(io::READ, 1, lba, 1, DATA, 0)).1, 0);
    }
    for _ in 0..70 {
        // Wrap the admin queue too, so SQ0 tail != 0 at reset time.
        assert_eq!(r.submit(0, sqe(admin::KEEP_ALIVE, 0)).1, 0);
        host_admin += 1;
    }
    // reset_prepare: delete I/O queues, CC.EN = 0, wait RDY = 0.
    r.delete_queues();
    host_admin += 2;
    r.w32(reg::CC, 6 << 16 | 4 << 20);
    r.wait_csts(1, 0);
    // pci_dev_save_and_disable + FLR.
    r.client
        .region_write(CONFIG, 4, &0x0400u16.to_le_bytes())
        .unwrap();
    let exp = r.cap_offset(0x10);
    let mut devctl = [0u8; 2];
    r.client.region_read(CONFIG, exp + 8, &mut devctl).unwrap();
    let flr = u16::from_le_bytes(devctl) | 1 << 15;
    r.client
        .region_write(CONFIG, exp + 8, &flr.to_le_bytes())
        .unwrap();
    // The FLR cleared every doorbell (SQ0 tail included) and the registers.
    if let Some(a) = &r.doorbells {
        for i in 0..4 {
            assert_eq!(a.load_u32(i * 4).unwrap(), 0, "doorbell {i} after FLR");
        }
    }
    // The FLR cleared bus master: memory decode alone does not let the controller DMA,
    // so enabling fails (CSTS.CFS) until bus master is set again.
    r.client
        .region_write(CONFIG, 4, &0x0002u16.to_le_bytes())
        .unwrap();
    assert_eq!(r.r32(reg::CC), 0);
    assert_eq!(r.r32(reg::CSTS), 0);
    r.w32(reg::AQA, u32::from(QSIZE - 1) | u32::from(QSIZE - 1) << 16);
    r.w64(reg::ASQ, ASQ);
    r.w64(reg::ACQ, ACQ);
    r.w32(reg::CC, 1 | 6 << 16 | 4 << 20);
    assert_eq!(r.r32(reg::CSTS) & 3, 2, "CFS without bus master");
    r.w32(reg::CC, 0);
    // pci_dev_restore, then reset_work re-enables (host queue state restarts at 0).
    r.client
        .region_write(CONFIG, 4, &0x0006u16.to_le_bytes())
        .unwrap();
    r.enable();
    r.assert_no_stray_admin_cqe("after re-enable");
    let mut s = with_prps(sqe(admin::IDENTIFY, 0), DATA, 0);
    s.dw[10] = 1;
    assert_eq!(r.submit(0, s).1, 0);
    host_admin += 1;
    r.create_queues();
    host_admin += 2;
    for lba in 0..10u64 {
        assert_eq!(r.submit(1, rw(io::READ, 1, lba, 1, DATA, 0)).1, 0);
    }
    r.assert_no_stray_admin_cqe("after I/O");
    // Power-off: delete the I/O queues, CC.SHN = normal, wait SHST complete.
    r.delete_queues();
    host_admin += 2;
    r.w32(reg::CC, 1 | 6 << 16 | 4 << 20 | 1 << 14);
    r.wait_csts(0xc, 0x8);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(1));
        r.assert_no_stray_admin_cqe("after shutdown");
    }
    let stats = r.control.stats().unwrap();
    assert_eq!(
        stats.admin_commands, host_admin,
        "the controller fetched exactly the admin commands the host submitted"
    );
    assert_eq!(stats.errors, 0, "no command failed");
}

#[test]
fn flr_then_power_off_mapped_doorbells() {
    flr_then_power_off(true);
}

#[test]
fn flr_then_power_off_trapped_doorbells() {
    flr_then_power_off(false);
}

/// INTx through sluice-pci's UNMASK protocol: at UNMASK the endpoint asks the NVMe
/// function's level (an interrupt-enabled CQ with entries the host has not consumed), so a
/// pulse held for work the guest already consumed is not re-delivered (the "irq nobody
/// cared" storm), and unconsumed work is re-delivered even without a held pulse.
#[test]
fn intx_follows_the_cq_level_at_unmask() {
    use vfu_server::proto::{IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_NONE};
    const INTX: u32 = 0;
    let mut r = rig(true);
    let efd = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap();
    r.client.set_irq_eventfds(INTX, 0, &[efd.as_fd()]).unwrap();
    let unmask = |r: &Rig| {
        r.client
            .set_irqs(INTX, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK, 0, 1, &[])
            .unwrap();
    };
    r.enable();
    // Two completions, both consumed: the first is delivered, the second is held while
    // INTx is auto-masked.
    let mut s = with_prps(sqe(admin::IDENTIFY, 0), DATA, 0);
    s.dw[10] = 1;
    assert_eq!(r.submit(0, s).1, 0);
    assert_eq!(r.submit(0, sqe(admin::KEEP_ALIVE, 0)).1, 0);
    // Wait until the poll thread has fired for the second CQE (it is visible first).
    assert_eq!(r.control.stats().unwrap().interrupts, 2);
    assert_eq!(read_eventfd(&efd), 1, "one INTx while masked");
    unmask(&r);
    assert_eq!(read_eventfd(&efd), 0, "consumed: the held pulse is dropped");
    // A completion the host leaves in the CQ.
    r.cid = r.cid.wrapping_add(1);
    let mut s = sqe(admin::KEEP_ALIVE, 0);
    s.dw[0] |= u32::from(r.cid) << 16;
    r.buf
        .write(ASQ + u64::from(r.sq[0]) * 64, &s.to_bytes())
        .unwrap();
    r.sq[0] = (r.sq[0] + 1) % QSIZE;
    r.doorbell(0, u32::from(r.sq[0]));
    let start = Instant::now();
    while read_eventfd(&efd) == 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "no INTx");
        std::thread::yield_now();
    }
    unmask(&r);
    assert_eq!(read_eventfd(&efd), 1, "unconsumed: re-delivered at UNMASK");
    unmask(&r);
    assert_eq!(read_eventfd(&efd), 1, "still unconsumed: again");
    // The host consumes it (CQ head doorbell); the next UNMASK delivers nothing.
    r.cq[0] = (r.cq[0] + 1) % QSIZE;
    r.doorbell(1, u32::from(r.cq[0]));
    unmask(&r);
    assert_eq!(read_eventfd(&efd), 0, "consumed: level low");
}
