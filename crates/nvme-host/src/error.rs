//! Error types of the host driver.

use std::path::PathBuf;

use crate::cmd::Status;

/// Errors of the vfio-user transport underneath the driver.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Connecting to the target's socket failed. The cause is part of the message (tools
    /// print only the top-level message).
    #[error("cannot connect to vfio-user socket {path}: {cause}")]
    Connect {
        /// Socket path that was tried.
        path: PathBuf,
        /// Underlying cause.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A vfio-user request failed (socket error or an error reply).
    #[error("vfio-user request {what} failed: {cause}")]
    Request {
        /// Which request.
        what: &'static str,
        /// Underlying cause.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The device has no such region.
    #[error("device has no region {0}")]
    NoRegion(u32),
    /// The device does not offer what the driver needs.
    #[error("unsupported device: {0}")]
    Unsupported(&'static str),
}

/// Errors of the DMA memory arena.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// Creating or sizing the memfd failed.
    #[error("cannot create DMA memory: {0}")]
    Create(std::io::Error),
    /// Mapping the memfd into this process failed.
    #[error("cannot mmap DMA memory: {0}")]
    Mmap(Box<dyn std::error::Error + Send + Sync>),
    /// The arena has no free run of pages big enough.
    #[error("out of DMA memory ({0} bytes requested)")]
    OutOfMemory(u64),
    /// An access fell outside the arena.
    #[error("DMA access outside the arena at {iova:#x}+{len}")]
    OutOfBounds {
        /// Start address.
        iova: u64,
        /// Length of the access.
        len: u64,
    },
}

/// Errors of the NVMe host driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command completed with a non-success status.
    #[error("command {opcode:#04x} failed with status {status}")]
    Command {
        /// Opcode of the failed command.
        opcode: u8,
        /// The completion status.
        status: Status,
    },
    /// The controller reported a fatal status (CSTS.CFS).
    #[error("controller fatal status (CSTS.CFS set)")]
    ControllerFatal,
    /// DMA memory failure.
    #[error(transparent)]
    Dma(#[from] DmaError),
    /// A caller-supplied argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A transport id string (`-r`) could not be parsed.
    #[error("invalid transport id: {0}")]
    InvalidTransportId(String),
    /// The submission queue is full.
    #[error("submission queue {0} is full")]
    QueueFull(u16),
    /// The controller did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// Transport failure.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// An I/O error outside the transport (eventfds, output).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// `perf` gave up on the target (it hung up or stopped completing I/Os).
    #[error("I/O aborted: {reason}; {timed_out} outstanding I/Os timed out")]
    IoTimeout {
        /// Why the run was aborted.
        reason: &'static str,
        /// I/Os that were outstanding when the run was aborted.
        timed_out: u64,
    },
    /// Data read back differs from what was written (`--verify`).
    #[error("data miscompare at lba {lba}")]
    Miscompare {
        /// First LBA of the failed I/O.
        lba: u64,
    },
}
