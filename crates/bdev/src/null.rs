//! `bdev_null`: no data movement. Reads leave the guest buffer untouched (documented
//! behaviour, cheapest: no byte is touched); writes are discarded. Every request is still
//! validated (range, alignment, iovec length) so error paths behave like a real device.

use crate::ready::ImmediateChannel;
use crate::{validate, Bdev, BdevCaps, BdevError, BdevInfo, IoChannel, IoRequest};

/// Default per-channel queue depth of the null bdev.
pub const NULL_QUEUE_DEPTH: u32 = 1024;

/// A null block device.
#[derive(Debug)]
pub struct NullBdev {
    info: BdevInfo,
}

impl NullBdev {
    /// A null bdev of `num_blocks` blocks of `block_size` bytes (power of two, 512..=65536).
    pub fn new(
        name: &str,
        block_size: u32,
        num_blocks: u64,
        uuid: Option<uuid::Uuid>,
    ) -> Result<Self, BdevError> {
        if name.is_empty() {
            return Err(BdevError::InvalidParam("name must not be empty".into()));
        }
        if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(BdevError::InvalidParam(format!(
                "block_size {block_size} must be a power of two between 512 and 65536"
            )));
        }
        if num_blocks == 0 || num_blocks.checked_mul(u64::from(block_size)).is_none() {
            return Err(BdevError::InvalidParam(format!(
                "num_blocks {num_blocks} must be non-zero and fit in 64-bit bytes"
            )));
        }
        Ok(NullBdev {
            info: null_info(name, block_size, num_blocks, uuid),
        })
    }

    /// A minimal valid null bdev (1 MiB, 512 B blocks), for infallible helpers.
    pub fn fallback(name: &str) -> Self {
        let name = if name.is_empty() { "Null" } else { name };
        NullBdev {
            info: null_info(name, 512, 2048, None),
        }
    }
}

fn null_info(name: &str, block_size: u32, num_blocks: u64, uuid: Option<uuid::Uuid>) -> BdevInfo {
    BdevInfo {
        name: name.to_owned(),
        product_name: "Null disk".into(),
        block_size,
        num_blocks,
        uuid: uuid.unwrap_or_else(uuid::Uuid::new_v4),
        caps: BdevCaps {
            compare: false,
            ..BdevCaps::ALL
        },
        volatile_write_cache: false,
        max_queue_depth: NULL_QUEUE_DEPTH,
        required_alignment: 1,
        max_io_bytes: 0,
        read_only: false,
    }
}

impl Bdev for NullBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        // Completes everything on the next poll; no allocation per I/O.
        let info = self.info.clone();
        Ok(Box::new(ImmediateChannel::new(
            self.info.max_queue_depth,
            // A `Checked` request was validated against this bdev's limits already.
            move |io: &IoRequest, checked: bool| {
                if checked {
                    Ok(())
                } else {
                    validate::check(&info, io)
                }
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{sys::iovec_of, IoCompletion, IoError, IoOp, IoVecs, RejectReason};

    #[test]
    fn rejects_bad_params() {
        assert!(NullBdev::new("n", 1000, 8, None).is_err());
        assert!(NullBdev::new("n", 512, 0, None).is_err());
        assert!(NullBdev::new("", 512, 8, None).is_err());
        assert!(NullBdev::new("n", 4096, u64::MAX, None).is_err());
        assert!(NullBdev::new("n", 4096, 8, None).is_ok());
    }

    #[test]
    fn read_leaves_buffer_and_queue_full_rejects() {
        let b = NullBdev::new("n", 512, 8, None).unwrap();
        let mut ch = b.open_channel().unwrap();
        let mut buf = vec![0xabu8; 512];
        let io = IoRequest::with_iov(IoOp::Read, 0, IoVecs::one(iovec_of(&mut buf)), 5);
        ch.submit(io).unwrap();
        ch.submit(IoRequest::new(IoOp::Unmap, 4096, 512, 6))
            .unwrap();
        for t in 0..u64::from(NULL_QUEUE_DEPTH) - 2 {
            ch.submit(IoRequest::new(IoOp::Flush, 0, 0, 100 + t))
                .unwrap();
        }
        let r = ch.submit(IoRequest::new(IoOp::Flush, 0, 0, 9)).unwrap_err();
        assert_eq!(r.reason, RejectReason::QueueFull);
        assert_eq!(r.io.tag, 9);
        let mut got = Vec::new();
        assert_eq!(ch.poll(&mut |c| got.push(c)), NULL_QUEUE_DEPTH as usize);
        assert_eq!(
            got[0],
            IoCompletion {
                tag: 5,
                result: Ok(())
            }
        );
        assert_eq!(
            got[1],
            IoCompletion {
                tag: 6,
                result: Err(IoError::OutOfRange)
            }
        );
        assert_eq!(ch.in_flight(), 0);
        assert!(buf.iter().all(|&x| x == 0xab));
    }
}
