//! The vfio-user operations the driver needs, behind a small trait so the driver works over
//! any client library: Sluice's `vfu-client` ([`VfuTransport`], the default) or rust-vmm's
//! `vfio_user::Client` ([`RustVmmTransport`]).

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;

use crate::error::TransportError;

/// vfio region index of BAR0.
pub const BAR0_REGION: u32 = 0;
/// vfio region index of PCI config space.
pub const CONFIG_REGION: u32 = 7;
/// vfio irq index of MSI-X.
pub const MSIX_IRQ: u32 = 2;
/// VFIO_IRQ_SET_DATA_NONE.
pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// VFIO_IRQ_SET_DATA_EVENTFD.
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// VFIO_IRQ_SET_ACTION_TRIGGER.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

/// How a region can be mmapped: its fd, the fd offset of the region's start, and the sparse
/// areas `(offset, size)` relative to the region start.
#[derive(Clone, Debug)]
pub struct RegionMmap {
    /// File to mmap.
    pub file: Arc<File>,
    /// File offset of region offset 0.
    pub file_offset: u64,
    /// Mappable areas; empty means the whole region.
    pub areas: Vec<(u64, u64)>,
}

/// What the NVMe driver needs from a vfio-user client.
pub trait Transport: Send {
    /// REGION_READ of `data.len()` bytes.
    fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), TransportError>;
    /// REGION_WRITE (waits for the reply).
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), TransportError>;
    /// Size of a region, if it exists.
    fn region_size(&self, index: u32) -> Option<u64>;
    /// The region's mmap fd and sparse areas, if the server offered one.
    fn region_mmap(&self, index: u32) -> Option<RegionMmap>;
    /// DMA_MAP of `size` bytes of `fd` at `offset` to `iova`, read-write.
    fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        fd: BorrowedFd<'_>,
        offset: u64,
    ) -> Result<(), TransportError>;
    /// DMA_UNMAP.
    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), TransportError>;
    /// DMA_MAP of `size` bytes at `iova` *without* an fd: the transport allocates memory
    /// that it serves to the server through DMA_READ/DMA_WRITE (the target has to bounce
    /// data there) and returns a file holding that memory (offset 0 = `iova`) so that the
    /// driver can fill and check it. `writable` false maps the window read-only for the
    /// device. Undo with [`Transport::dma_unmap`].
    fn dma_map_fdless(
        &mut self,
        iova: u64,
        size: u64,
        writable: bool,
    ) -> Result<File, TransportError> {
        let _ = (iova, size, writable);
        Err(TransportError::Unsupported(
            "DMA windows without an fd (the transport cannot serve DMA_READ/DMA_WRITE)",
        ))
    }
    /// Serves the server's pending DMA_READ/DMA_WRITE requests without blocking, when they
    /// arrive on the main socket (no twin socket) while no request of ours is in flight.
    /// Returns how many were served.
    fn serve_requests(&mut self) -> Result<usize, TransportError> {
        Ok(0)
    }
    /// Whether [`Transport::serve_requests`] has to be called while waiting for
    /// completions (fd-less windows are mapped and no twin socket serves them).
    fn needs_serving(&self) -> bool {
        false
    }
    /// Number of vectors of an irq index.
    fn irq_count(&mut self, index: u32) -> Result<u32, TransportError>;
    /// SET_IRQS with `flags`, for vectors `start..start+count` (eventfds in `fds`, if any).
    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), TransportError>;
    /// DEVICE_RESET.
    fn device_reset(&mut self) -> Result<(), TransportError>;
    /// Cheap, non-blocking liveness check of the connection: `false` once the peer is known
    /// to have hung up. Transports that cannot tell say `true`.
    fn is_connected(&self) -> bool {
        true
    }
}

/// [`Transport`] over rust-vmm's `vfio_user::Client`.
///
/// That client does not check error replies (a failed REGION_READ makes it wait for data that
/// never comes), so it is the second choice for hostile targets; it is also the peer of
/// acceptance test 2 (bring-up through an independent client).
pub struct RustVmmTransport {
    client: vfio_user::Client,
}

impl std::fmt::Debug for RustVmmTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RustVmmTransport").finish_non_exhaustive()
    }
}

/// Wraps a client error as the failure of request `what`.
fn req<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> TransportError {
    move |e| TransportError::Request {
        what,
        cause: Box::new(e),
    }
}

/// REGION_READ / REGION_WRITE through `self.client` (both clients spell them alike).
macro_rules! region_access {
    () => {
        fn region_read(
            &mut self,
            index: u32,
            offset: u64,
            data: &mut [u8],
        ) -> Result<(), TransportError> {
            self.client
                .region_read(index, offset, data)
                .map_err(req("REGION_READ"))
        }

        fn region_write(
            &mut self,
            index: u32,
            offset: u64,
            data: &[u8],
        ) -> Result<(), TransportError> {
            self.client
                .region_write(index, offset, data)
                .map_err(req("REGION_WRITE"))
        }
    };
}

impl RustVmmTransport {
    /// Connects to the socket at `path` and negotiates.
    pub fn connect(path: &Path) -> Result<Self, TransportError> {
        let client = vfio_user::Client::new(path).map_err(|e| TransportError::Connect {
            path: path.to_path_buf(),
            cause: Box::new(e),
        })?;
        Ok(Self { client })
    }
}

impl Transport for RustVmmTransport {
    region_access!();

    fn region_size(&self, index: u32) -> Option<u64> {
        self.client.region(index).map(|r| r.size)
    }

    fn region_mmap(&self, index: u32) -> Option<RegionMmap> {
        let r = self.client.region(index)?;
        let fo = r.file_offset.as_ref()?;
        Some(RegionMmap {
            file: fo.arc().clone(),
            file_offset: fo.start(),
            areas: r.sparse_areas.iter().map(|a| (a.offset, a.size)).collect(),
        })
    }

    fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        fd: BorrowedFd<'_>,
        offset: u64,
    ) -> Result<(), TransportError> {
        self.client
            .dma_map(offset, iova, size, fd.as_raw_fd())
            .map_err(req("DMA_MAP"))
    }

    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), TransportError> {
        self.client.dma_unmap(iova, size).map_err(req("DMA_UNMAP"))
    }

    fn irq_count(&mut self, index: u32) -> Result<u32, TransportError> {
        self.client
            .get_irq_info(index)
            .map(|i| i.count)
            .map_err(req("GET_IRQ_INFO"))
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), TransportError> {
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.client
            .set_irqs(index, flags, start, count, &raw)
            .map_err(req("SET_IRQS"))
    }

    fn device_reset(&mut self) -> Result<(), TransportError> {
        self.client.reset().map_err(req("DEVICE_RESET"))
    }
}

impl Drop for RustVmmTransport {
    fn drop(&mut self) {
        let _ = self.client.shutdown();
    }
}

/// [`Transport`] over Sluice's `vfu_client::Client` (checks every reply, errno-precise).
pub struct VfuTransport {
    client: vfu_client::Client,
    regions: Vec<(u64, Option<RegionMmap>)>,
    /// Windows mapped without an fd, served by the client: (iova, size, memory).
    fdless: Vec<(u64, u64, vfu_client::DmaBuffer)>,
}

impl std::fmt::Debug for VfuTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfuTransport")
            .field("regions", &self.regions.len())
            .finish_non_exhaustive()
    }
}

/// A read timeout surfaces as `EAGAIN`/`ETIMEDOUT`; say what it means instead.
fn explain_timeout(
    e: vfu_client::ClientError,
    timeout: Option<std::time::Duration>,
) -> Box<dyn std::error::Error + Send + Sync> {
    match (&e, timeout) {
        (vfu_client::ClientError::Io(io), Some(t))
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            format!("no reply from the peer within {t:?} (is it a vfio-user server?)").into()
        }
        _ => Box::new(e),
    }
}

impl VfuTransport {
    /// Connects to the socket at `path`, negotiates and reads every region's info.
    pub fn connect(path: &Path) -> Result<Self, TransportError> {
        Self::connect_with(path, vfu_client::ClientOptions::default())
    }

    /// Like [`VfuTransport::connect`], with explicit client options (for example a
    /// `reply_timeout`, so that a silent peer cannot hang the caller).
    pub fn connect_with(
        path: &Path,
        opts: vfu_client::ClientOptions,
    ) -> Result<Self, TransportError> {
        let timeout = opts.reply_timeout;
        let client =
            vfu_client::Client::connect(path, opts).map_err(|e| TransportError::Connect {
                path: path.to_path_buf(),
                cause: explain_timeout(e, timeout),
            })?;
        Self::from_client(client)
    }

    /// Wraps an already negotiated client.
    pub fn from_client(client: vfu_client::Client) -> Result<Self, TransportError> {
        let info = client.device_info().map_err(req("DEVICE_GET_INFO"))?;
        let n = info.num_regions.min(64);
        let mut regions = Vec::new();
        for i in 0..n {
            let d = client
                .region_info(i)
                .map_err(req("DEVICE_GET_REGION_INFO"))?;
            let mmap = d.fd.map(|fd| RegionMmap {
                file: Arc::new(File::from(fd)),
                file_offset: d.info.offset,
                areas: d.areas.iter().map(|a| (a.offset, a.size)).collect(),
            });
            regions.push((d.info.size, mmap));
        }
        Ok(Self {
            client,
            regions,
            fdless: Vec::new(),
        })
    }

    /// The underlying client.
    pub fn client(&self) -> &vfu_client::Client {
        &self.client
    }
}

impl Transport for VfuTransport {
    fn is_connected(&self) -> bool {
        use rustix::net::RecvFlags;
        let mut b = [0u8; 1];
        // Peek without blocking: EOF (0 bytes) or a socket error means the peer is gone;
        // EAGAIN (nothing pending) or pending data means it is still there.
        match rustix::net::recv(
            std::os::fd::AsFd::as_fd(&self.client),
            &mut b[..],
            RecvFlags::PEEK | RecvFlags::DONTWAIT,
        ) {
            Ok((0, _)) => false,
            Ok(_) => true,
            Err(e) => e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INTR,
        }
    }

    region_access!();

    fn region_size(&self, index: u32) -> Option<u64> {
        self.regions.get(index as usize).map(|r| r.0)
    }

    fn region_mmap(&self, index: u32) -> Option<RegionMmap> {
        self.regions.get(index as usize).and_then(|r| r.1.clone())
    }

    fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        fd: BorrowedFd<'_>,
        offset: u64,
    ) -> Result<(), TransportError> {
        let flags = vfu_client::proto::DMA_FLAG_READ | vfu_client::proto::DMA_FLAG_WRITE;
        self.client
            .dma_map_raw(flags, offset, iova, size, Some(fd))
            .map_err(req("DMA_MAP"))
    }

    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), TransportError> {
        self.client
            .dma_unmap(iova, size)
            .map(|_| ())
            .map_err(req("DMA_UNMAP"))?;
        self.fdless.retain(|w| !(w.0 == iova && w.1 == size));
        Ok(())
    }

    fn dma_map_fdless(
        &mut self,
        iova: u64,
        size: u64,
        writable: bool,
    ) -> Result<File, TransportError> {
        use vfu_client::proto::{DMA_FLAG_READ, DMA_FLAG_WRITE};
        let buf = vfu_client::DmaBuffer::new(iova, size).map_err(req("DMA buffer"))?;
        let file =
            buf.fd()
                .try_clone_to_owned()
                .map(File::from)
                .map_err(|e| TransportError::Request {
                    what: "dup of the DMA buffer fd",
                    cause: Box::new(e),
                })?;
        let flags = DMA_FLAG_READ | if writable { DMA_FLAG_WRITE } else { 0 };
        self.client
            .dma_map_fdless(&buf, flags)
            .map_err(req("DMA_MAP (no fd)"))?;
        self.fdless.push((iova, size, buf));
        Ok(file)
    }

    fn serve_requests(&mut self) -> Result<usize, TransportError> {
        self.client
            .serve_pending(std::time::Duration::ZERO)
            .map_err(req("serving DMA_READ/DMA_WRITE"))
    }

    fn needs_serving(&self) -> bool {
        !self.fdless.is_empty() && !self.client.has_twin_socket()
    }

    fn irq_count(&mut self, index: u32) -> Result<u32, TransportError> {
        self.client
            .irq_info(index)
            .map(|i| i.count)
            .map_err(req("DEVICE_GET_IRQ_INFO"))
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), TransportError> {
        if flags & IRQ_SET_DATA_EVENTFD != 0 && !fds.is_empty() {
            return self
                .client
                .set_irq_eventfds(index, start, fds)
                .map_err(req("DEVICE_SET_IRQS"));
        }
        self.client
            .set_irqs(index, flags, start, count, fds)
            .map_err(req("DEVICE_SET_IRQS"))
    }

    fn device_reset(&mut self) -> Result<(), TransportError> {
        self.client.reset().map_err(req("DEVICE_RESET"))
    }
}
