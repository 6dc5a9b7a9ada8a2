//! DMA_MAP against a client that would shrink its memory file: the server seals sealable
//! files against shrinking, refuses windows that do not fit in the file, and follows the
//! documented policy for files that cannot be sealed. Real socket, Sluice's client as peer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::os::fd::{AsFd, OwnedFd};

use common::*;
use rustix::fs::{
    fcntl_add_seals, fcntl_get_seals, ftruncate, memfd_create, MemfdFlags, SealFlags,
};
use vfu_client::{Client, ClientError, ClientOptions};
use vfu_server::proto::*;
use vfu_server::{Errno, ServerOptions};

const RW: u32 = DMA_FLAG_READ | DMA_FLAG_WRITE;

fn start_requiring_seals() -> Running {
    Running::start_with(ServerOptions {
        require_sealed_dma: true,
        ..Default::default()
    })
}

fn connect(srv: &Running) -> Client {
    Client::connect(&srv.path, ClientOptions::default()).unwrap()
}

/// A memfd the server may seal, filled with a pattern.
fn sealable_memfd(size: u64) -> OwnedFd {
    let fd = memfd_create("guest", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    ftruncate(&fd, size).unwrap();
    rustix::io::pwrite(&fd, &pattern(size), 0).unwrap();
    fd
}

/// A regular file on disk (or tmpfs): no sealing possible.
fn unsealable_file(size: u64) -> OwnedFd {
    let f = tempfile::tempfile().unwrap();
    f.set_len(size).unwrap();
    let fd = OwnedFd::from(f);
    rustix::io::pwrite(&fd, &pattern(size), 0).unwrap();
    fd
}

fn pattern(size: u64) -> Vec<u8> {
    (0..size).map(|i| (i % 253) as u8).collect()
}

/// Makes the sample device DMA-read `len` bytes at `addr`; returns what it read.
fn device_read(c: &Client, srv: &Running, addr: u64, len: u64) -> Result<Vec<u8>, Errno> {
    c.region_write(1, 0x10, &addr.to_le_bytes()).unwrap();
    c.region_write(1, 0x18, &len.to_le_bytes()).unwrap();
    c.region_write(1, 0x20, &1u64.to_le_bytes()).unwrap();
    srv.log.lock().unwrap().dma_result.take().unwrap()
}

fn errno(r: Result<(), ClientError>) -> Option<Errno> {
    match r {
        Err(ClientError::Errno(e)) => Some(e),
        _ => None,
    }
}

#[test]
fn server_seals_the_memfd_and_a_later_shrink_fails() {
    let srv = Running::start();
    let c = connect(&srv);
    let size = 0x10000;
    let fd = sealable_memfd(size);
    assert!(fcntl_get_seals(&fd).unwrap().is_empty());
    c.dma_map_raw(RW, 0, 0x100000, size, Some(fd.as_fd()))
        .unwrap();
    assert!(fcntl_get_seals(&fd).unwrap().contains(SealFlags::SHRINK));
    // the hostile shrink is refused by the kernel, whatever size is asked for
    assert_eq!(ftruncate(&fd, size / 2), Err(Errno::PERM));
    assert_eq!(ftruncate(&fd, 0), Err(Errno::PERM));
    assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size, size as i64);
    // the device still reads the whole window, last byte included
    assert_eq!(device_read(&c, &srv, 0x100000, size), Ok(pattern(size)));
    assert_eq!(
        device_read(&c, &srv, 0x100000 + size - 1, 1),
        Ok(vec![((size - 1) % 253) as u8])
    );
    // and the mapping window of an offset into the file works too
    let fd2 = sealable_memfd(0x3000);
    c.dma_map_raw(RW, 0x1000, 0x200000, 0x2000, Some(fd2.as_fd()))
        .unwrap();
    assert_eq!(ftruncate(&fd2, 0x2000), Err(Errno::PERM));
    assert_eq!(
        device_read(&c, &srv, 0x200000, 0x2000),
        Ok(pattern(0x3000)[0x1000..].to_vec())
    );
}

#[test]
fn qemu_style_presealed_memfd_is_accepted_even_when_sealing_is_required() {
    let srv = start_requiring_seals();
    let c = connect(&srv);
    // memory-backend-memfd: F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL before the map
    let fd = sealable_memfd(0x4000);
    fcntl_add_seals(&fd, SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL).unwrap();
    c.dma_map_raw(RW, 0, 0x100000, 0x4000, Some(fd.as_fd()))
        .unwrap();
    assert_eq!(device_read(&c, &srv, 0x100000, 0x4000), Ok(pattern(0x4000)));
    // Sluice's own client seals its buffers the same way
    let buf = vfu_client::DmaBuffer::new(0x200000, 0x1000).unwrap();
    c.dma_map(&buf, RW).unwrap();
    assert_eq!(srv.log.lock().unwrap().maps.len(), 2);
}

#[test]
fn window_past_the_end_of_the_file_is_refused_and_connection_survives() {
    let srv = Running::start();
    let c = connect(&srv);
    let fd = sealable_memfd(0x4000);
    // size alone too big, offset + size one page too big, offset beyond the end, overflow
    for (offset, size) in [
        (0, 0x5000),
        (0x1000, 0x4000),
        (0x4000, 0x1000),
        (u64::MAX - 0xfff, 0x2000),
    ] {
        assert_eq!(
            errno(c.dma_map_raw(RW, offset, 0x100000, size, Some(fd.as_fd()))),
            Some(Errno::INVAL),
            "offset {offset:#x} size {size:#x}"
        );
    }
    assert!(srv.log.lock().unwrap().maps.is_empty());
    // the same connection maps the exact fit and the device reads it
    c.dma_map_raw(RW, 0x1000, 0x100000, 0x3000, Some(fd.as_fd()))
        .unwrap();
    assert_eq!(
        device_read(&c, &srv, 0x100000, 0x3000),
        Ok(pattern(0x4000)[0x1000..].to_vec())
    );
    assert_eq!(c.device_info().unwrap().num_regions, 9);
}

#[test]
fn unsealable_file_is_accepted_by_default() {
    let srv = Running::start();
    let c = connect(&srv);
    // a disk/tmpfs file (QEMU memory-backend-file share=on) and a memfd without
    // MFD_ALLOW_SEALING: both mapped, the device reads them
    let file = unsealable_file(0x2000);
    c.dma_map_raw(RW, 0, 0x100000, 0x2000, Some(file.as_fd()))
        .unwrap();
    let plain = memfd_create("plain", MemfdFlags::CLOEXEC).unwrap();
    ftruncate(&plain, 0x1000).unwrap();
    c.dma_map_raw(RW, 0, 0x200000, 0x1000, Some(plain.as_fd()))
        .unwrap();
    assert_eq!(device_read(&c, &srv, 0x100000, 0x2000), Ok(pattern(0x2000)));
    assert_eq!(device_read(&c, &srv, 0x200000, 0x1000), Ok(vec![0; 0x1000]));
    assert_eq!(srv.log.lock().unwrap().maps.len(), 2);
}

#[test]
fn unsealable_file_is_refused_with_eperm_when_sealing_is_required() {
    let srv = start_requiring_seals();
    let c = connect(&srv);
    let file = unsealable_file(0x2000);
    assert_eq!(
        errno(c.dma_map_raw(RW, 0, 0x100000, 0x2000, Some(file.as_fd()))),
        Some(Errno::PERM)
    );
    let plain = memfd_create("plain", MemfdFlags::CLOEXEC).unwrap();
    ftruncate(&plain, 0x1000).unwrap();
    assert_eq!(
        errno(c.dma_map_raw(RW, 0, 0x100000, 0x1000, Some(plain.as_fd()))),
        Some(Errno::PERM)
    );
    // sealed with F_SEAL_SEAL but not against shrinking: cannot be fixed, refused
    let locked = sealable_memfd(0x1000);
    fcntl_add_seals(&locked, SealFlags::SEAL).unwrap();
    assert_eq!(
        errno(c.dma_map_raw(RW, 0, 0x100000, 0x1000, Some(locked.as_fd()))),
        Some(Errno::PERM)
    );
    assert!(srv.log.lock().unwrap().maps.is_empty());
    // the connection is still usable: a sealable memfd at the same IOVA is accepted
    let good = sealable_memfd(0x1000);
    c.dma_map_raw(RW, 0, 0x100000, 0x1000, Some(good.as_fd()))
        .unwrap();
    assert_eq!(device_read(&c, &srv, 0x100000, 0x1000), Ok(pattern(0x1000)));
}
