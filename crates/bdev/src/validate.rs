//! Request validation shared by every backend (parse, then execute).

use crate::{BdevInfo, IoError, IoOp, IoRequest};

/// Check `io` against `info`: supported op, block alignment, range, iovec length.
pub(crate) fn check(info: &BdevInfo, io: &IoRequest) -> Result<(), IoError> {
    if !info.caps.supports(io.op) {
        return Err(IoError::Unsupported);
    }
    if info.read_only && matches!(io.op, IoOp::Write { .. } | IoOp::WriteZeroes | IoOp::Unmap) {
        return Err(IoError::ReadOnly);
    }
    if io.op == IoOp::Flush {
        return Ok(());
    }
    let bs = u64::from(info.block_size);
    if bs == 0 || io.len == 0 || io.offset % bs != 0 || io.len % bs != 0 {
        return Err(IoError::Invalid);
    }
    let end = io.offset.checked_add(io.len).ok_or(IoError::OutOfRange)?;
    if end > info.size_bytes() {
        return Err(IoError::OutOfRange);
    }
    if io.op.has_data() {
        if info.max_io_bytes != 0 && io.len > info.max_io_bytes {
            return Err(IoError::Invalid);
        }
        if io.iov.len() > crate::MAX_IOVECS || io.iov.total_len() != Some(io.len) {
            return Err(IoError::Invalid);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BdevCaps, IoVec, IoVecs};

    fn info() -> BdevInfo {
        BdevInfo {
            name: "t".into(),
            product_name: "t".into(),
            block_size: 512,
            num_blocks: 8,
            uuid: uuid::Uuid::nil(),
            caps: BdevCaps {
                read: true,
                write: true,
                flush: true,
                unmap: false,
                write_zeroes: true,
                compare: false,
                fua: true,
            },
            volatile_write_cache: false,
            max_queue_depth: 4,
            required_alignment: 1,
            max_io_bytes: 0,
            read_only: false,
        }
    }

    fn req(op: IoOp, offset: u64, buf: &mut [u8]) -> IoRequest {
        // SAFETY: test buffer outlives the request, which is only validated here.
        let v = unsafe { IoVec::from_raw(buf.as_mut_ptr(), buf.len()) };
        IoRequest::with_iov(op, offset, IoVecs::one(v), 1)
    }

    #[test]
    fn accepts_in_range() {
        let mut b = vec![0u8; 1024];
        assert_eq!(check(&info(), &req(IoOp::Read, 3072, &mut b)), Ok(()));
    }

    #[test]
    fn rejects_out_of_range_and_overflow() {
        let mut b = vec![0u8; 1024];
        assert_eq!(
            check(&info(), &req(IoOp::Read, 3584, &mut b)),
            Err(IoError::OutOfRange)
        );
        let r = IoRequest::new(IoOp::WriteZeroes, u64::MAX - 511, 512, 0);
        assert_eq!(check(&info(), &r), Err(IoError::OutOfRange));
    }

    #[test]
    fn rejects_unaligned_and_mismatched() {
        let mut b = vec![0u8; 1000];
        assert_eq!(
            check(&info(), &req(IoOp::Read, 0, &mut b)),
            Err(IoError::Invalid)
        );
        let mut b = vec![0u8; 512];
        assert_eq!(
            check(&info(), &req(IoOp::Read, 1, &mut b)),
            Err(IoError::Invalid)
        );
        let mut r = req(IoOp::Read, 0, &mut b);
        r.len = 1024;
        assert_eq!(check(&info(), &r), Err(IoError::Invalid));
        let r = IoRequest::new(IoOp::WriteZeroes, 0, 0, 0);
        assert_eq!(check(&info(), &r), Err(IoError::Invalid));
    }

    #[test]
    fn rejects_unsupported_and_read_only() {
        let r = IoRequest::new(IoOp::Unmap, 0, 512, 0);
        assert_eq!(check(&info(), &r), Err(IoError::Unsupported));
        let mut i = info();
        i.read_only = true;
        let r = IoRequest::new(IoOp::WriteZeroes, 0, 512, 0);
        assert_eq!(check(&i, &r), Err(IoError::ReadOnly));
        assert_eq!(check(&i, &IoRequest::new(IoOp::Flush, 0, 0, 0)), Ok(()));
    }
}
