//! Criterion benchmarks over a real Unix socket against Sluice's server:
//! 4-byte REGION_READ round trips, 4-byte REGION_WRITE (synchronous and posted), and
//! DMA_MAP + DMA_UNMAP of a 2 MiB memfd window (the server mmaps and unmaps it).
//!
//! Run: `cargo bench -p vfu-client --bench roundtrip`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use vfu_client::{Client, ClientOptions, DmaBuffer};
use vfu_proto::*;
use vfu_server::*;

struct Regs {
    regs: [u8; 4096],
}

impl Device for Regs {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo::default()
    }
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        (index == 0 || index == 7).then_some(RegionInfo {
            size: 4096,
            flags: REGION_FLAG_READ | REGION_FLAG_WRITE,
            mmap: None,
        })
    }
    fn irq_info(&self, _index: u32) -> Option<IrqInfo> {
        None
    }
    fn region_read(&mut self, _index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        let o = offset as usize;
        data.copy_from_slice(self.regs.get(o..o + data.len()).ok_or(Errno::INVAL)?);
        Ok(())
    }
    fn region_write(&mut self, _index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let o = offset as usize;
        self.regs
            .get_mut(o..o + data.len())
            .ok_or(Errno::INVAL)?
            .copy_from_slice(data);
        Ok(())
    }
    fn attach(&mut self, _ctx: DeviceContext) {}
    fn detach(&mut self) {}
    fn dma_map(&mut self, _ev: &DmaEvent, _mem: &Arc<DmaMemory>) -> Result<(), Errno> {
        Ok(())
    }
    fn reset(&mut self, _kind: ResetKind) -> Result<(), Errno> {
        Ok(())
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.sock");
    let server = Server::bind(&path, ServerOptions::default()).unwrap();
    let stop = server.shutdown_handle();
    let t = std::thread::spawn(move || {
        let mut dev = Regs { regs: [0; 4096] };
        server.serve(&mut dev).unwrap();
    });
    let client = Client::connect(&path, ClientOptions::default()).unwrap();
    let mut g = c.benchmark_group("vfio-user");
    g.bench_function("region_read_4B", |b| {
        let mut buf = [0u8; 4];
        b.iter(|| client.region_read(0, 0x10, &mut buf).unwrap())
    });
    g.bench_function("region_write_4B", |b| {
        b.iter(|| client.region_write(0, 0x10, &[1, 2, 3, 4]).unwrap())
    });
    g.bench_function("region_write_4B_posted", |b| {
        let mut n = 0u32;
        b.iter(|| {
            client.region_write_posted(0, 0x10, &[1, 2, 3, 4]).unwrap();
            n += 1;
            // keep the pipe from filling: a synchronous read every 256 posted writes
            if n % 256 == 0 {
                let mut buf = [0u8; 4];
                client.region_read(0, 0x10, &mut buf).unwrap();
            }
        })
    });
    let dma = DmaBuffer::new(0x1_0000_0000, 2 << 20).unwrap();
    g.bench_function("dma_map_unmap_2MiB", |b| {
        b.iter(|| {
            client
                .dma_map(&dma, DMA_FLAG_READ | DMA_FLAG_WRITE)
                .unwrap();
            client.dma_unmap(dma.iova(), dma.size()).unwrap();
        })
    });
    g.finish();
    drop(client);
    stop.shutdown();
    t.join().unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
