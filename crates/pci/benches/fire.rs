//! Cost of `InterruptSink::fire` on a poll thread: the bookkeeping alone (a signal that does
//! nothing), a real eventfd write, and the masked path that only sets the PBA bit.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::fd::OwnedFd;

use criterion::{criterion_group, criterion_main, Criterion};
use rustix::event::{eventfd, EventfdFlags};
use rustix::io::Errno;
use sluice_pci::{IrqSignal, MsixConfig, PciConfig, PciEndpoint, PciFunction};
use vfu_server::{Device, ResetKind};

struct Nop;

impl PciFunction for Nop {
    fn bar_read(&mut self, _: u32, _: u64, _: &mut [u8]) -> Result<(), Errno> {
        Ok(())
    }
    fn bar_write(&mut self, _: u32, _: u64, _: &[u8]) -> Result<(), Errno> {
        Ok(())
    }
    fn reset(&mut self, _: ResetKind) -> Result<(), Errno> {
        Ok(())
    }
}

struct Null;

impl IrqSignal for Null {
    fn signal(&self, _: u32, _: u32) -> Result<bool, Errno> {
        Ok(true)
    }
}

struct Efd(OwnedFd);

impl IrqSignal for Efd {
    fn signal(&self, _: u32, _: u32) -> Result<bool, Errno> {
        rustix::io::write(&self.0, &1u64.to_ne_bytes())?;
        Ok(true)
    }
}

fn endpoint() -> PciEndpoint<Nop> {
    let cfg = PciConfig::builder()
        .ids(0x1b36, 0x0010)
        .msix(MsixConfig {
            vectors: 64,
            table_bar: 4,
            pba_bar: 5,
        })
        .build()
        .unwrap();
    let mut ep = PciEndpoint::new(cfg, Nop);
    // Memory decode on, MSI-X on; mask vector 1 through the table.
    ep.region_write(7, 4, &0x0006u16.to_le_bytes()).unwrap();
    ep.region_write(7, 0x86, &0x8000u16.to_le_bytes()).unwrap();
    ep.region_write(4, 16 + 12, &1u32.to_le_bytes()).unwrap();
    ep
}

fn bench(c: &mut Criterion) {
    let ep = endpoint();
    let sink = ep.interrupt_sink();

    ep.set_irq_signal(Some(Box::new(Null)));
    c.bench_function("fire/bookkeeping_only", |b| b.iter(|| sink.fire(0)));
    c.bench_function("fire/masked_sets_pba", |b| b.iter(|| sink.fire(1)));

    let fd = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap();
    let reader = fd.try_clone().unwrap();
    ep.set_irq_signal(Some(Box::new(Efd(fd))));
    c.bench_function("fire/eventfd_write", |b| {
        b.iter(|| sink.fire(0));
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&reader, &mut buf);
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
