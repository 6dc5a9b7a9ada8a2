//! vfio-user wire protocol (spec 0.9.2): message types, validation, capability JSON and
//! socket framing with SCM_RIGHTS fd passing. No device logic lives here.
//!
//! All fields are host-endian (`repr(C)` structs with `zerocopy` derives). Decoding never
//! panics: every `decode` checks lengths first and returns [`ProtoError`].

pub mod caps;
pub mod framing;
pub mod msg;

pub use caps::{Capabilities, TwinSocket};
pub use framing::{Socket, MAX_RECV_FDS};
pub use msg::*;

/// Errors produced while decoding or validating wire data.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// The buffer is shorter than the structure being decoded.
    #[error("message too short: need {need} bytes, have {have}")]
    Short {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A size field does not match the actual payload.
    #[error("bad size: {0}")]
    BadSize(&'static str),
    /// Version capability JSON is malformed.
    #[error("bad capabilities: {0}")]
    BadCaps(&'static str),
    /// Unknown command number.
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    /// Invalid header field.
    #[error("bad header: {0}")]
    BadHeader(&'static str),
}

impl ProtoError {
    /// The errno a server answers with for this error (always EINVAL today).
    pub fn errno(&self) -> rustix::io::Errno {
        rustix::io::Errno::INVAL
    }
}
