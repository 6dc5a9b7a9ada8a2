//! The only place where guest memory (raw iovecs) and raw RAM-disk memory are touched.
//!
//! Guest memory may change under us at any time (another vCPU), so no `&[u8]` or
//! `&mut [u8]` is ever formed over it: data moves with raw-pointer copies
//! (`ptr::copy_nonoverlapping`, i.e. `memcpy`, the same primitive `vm-memory` uses for
//! bulk volatile copies) and comparisons read through volatile byte/word loads.
//!
//! Every function takes validated lengths: callers checked (in `validate`) that the iovecs'
//! total length equals the request length and that the device range is inside the device.
//! The functions re-check what they index so that a bug elsewhere cannot turn into an
//! out-of-bounds access.

use std::ptr::NonNull;

use crate::{IoVec, IoVecs};

/// Copy `src` into the iovecs, starting `skip` bytes into the iovec list. Returns bytes
/// copied (stops at the end of the iovecs).
pub fn copy_to_iovecs(iov: &IoVecs, skip: usize, src: &[u8]) -> usize {
    let mut done = 0usize;
    for_each_chunk(iov, skip, src.len(), |v_ptr, src_off, n| {
        if let Some(s) = src.get(src_off..src_off.saturating_add(n)) {
            // SAFETY: `v_ptr..v_ptr+n` lies inside one iovec (for_each_chunk clips to the
            // iovec's length), which `IoVec::from_raw`'s contract keeps mapped and writable
            // until the request completes; `s` is a distinct Rust-owned buffer (never guest
            // memory), so the ranges cannot overlap.
            unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), v_ptr, n) };
            done = done.saturating_add(n);
        }
    });
    done
}

/// Copy from the iovecs (starting `skip` bytes in) into `dst`. Returns bytes copied.
pub fn copy_from_iovecs(iov: &IoVecs, skip: usize, dst: &mut [u8]) -> usize {
    let mut done = 0usize;
    let want = dst.len();
    for_each_chunk(iov, skip, want, |v_ptr, dst_off, n| {
        if let Some(d) = dst.get_mut(dst_off..dst_off.saturating_add(n)) {
            // SAFETY: the source lies inside one live iovec (see `copy_to_iovecs`); `d` is
            // a Rust-owned buffer of exactly `n` bytes that cannot alias guest memory.
            unsafe { std::ptr::copy_nonoverlapping(v_ptr.cast_const(), d.as_mut_ptr(), n) };
            done = done.saturating_add(n);
        }
    });
    done
}

/// Whether the iovec data (from `skip`) equals `data`. Reads guest bytes with volatile
/// loads so a concurrently changing guest buffer gives some answer, never UB.
pub fn iovecs_equal(iov: &IoVecs, skip: usize, data: &[u8]) -> bool {
    let mut equal = true;
    let mut seen = 0usize;
    for_each_chunk(iov, skip, data.len(), |v_ptr, off, n| {
        seen = seen.saturating_add(n);
        if !equal {
            return;
        }
        for i in 0..n {
            // SAFETY: `i < n` and `v_ptr..v_ptr+n` is inside one live iovec.
            let g = unsafe { std::ptr::read_volatile(v_ptr.add(i)) };
            if data.get(off.saturating_add(i)) != Some(&g) {
                equal = false;
                return;
            }
        }
    });
    equal && seen == data.len()
}

/// Walk the iovecs from byte `skip`, for at most `len` bytes, calling
/// `f(ptr_in_iovec, offset_in_walk, n)` per contiguous piece.
fn for_each_chunk(iov: &IoVecs, skip: usize, len: usize, mut f: impl FnMut(*mut u8, usize, usize)) {
    let mut skip = skip;
    let mut off = 0usize;
    for v in iov.iter() {
        if off >= len {
            break;
        }
        if skip >= v.len() {
            skip -= v.len();
            continue;
        }
        let avail = v.len() - skip;
        let n = avail.min(len - off);
        // `skip < v.len()` so the pointer stays inside the iovec (wrapping_add: no UB
        // even if it did not; it is only dereferenced by callers for `n` bytes).
        f(v.base().wrapping_add(skip), off, n);
        off += n;
        skip = 0;
    }
}

/// An anonymous private memory mapping used as RAM-disk storage (`bdev_malloc`).
///
/// Shared by all channels of a bdev; concurrent I/O to overlapping ranges is a guest
/// error whose result is unspecified data (like a real disk), so the memory is accessed
/// only through raw-pointer copies, never through references.
pub struct RawBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: RawBuf owns its mapping; all access goes through raw-pointer copies inside this
// module with bounds checks, so sharing the pointer between threads cannot create
// aliasing references.
unsafe impl Send for RawBuf {}
// SAFETY: see `Send`.
unsafe impl Sync for RawBuf {}

impl RawBuf {
    /// Map `len` zeroed bytes, populated now (see `prepare`).
    pub fn new(len: usize) -> std::io::Result<Self> {
        if len == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        // SAFETY: a fresh anonymous private mapping at a kernel-chosen address cannot
        // overlap any existing Rust object.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::NORESERVE,
            )
        }
        .map_err(std::io::Error::from)?;
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
        let buf = RawBuf { ptr, len };
        buf.prepare();
        Ok(buf)
    }

    /// Back the whole mapping with (preferably huge) pages now, on the creating thread,
    /// instead of on first touch on the poll thread.
    ///
    /// Measured on the project VM (QD32 4 KiB randread on a 1 GiB disk): with lazily
    /// faulted 4 KiB pages every I/O to a cold block paid a page fault (zero-page fault
    /// on read, zero-fill on write) and random reads over the whole disk missed the TLB
    /// on 4 KiB pages. `MADV_HUGEPAGE` (honoured when THP is `madvise` or `always`) cuts
    /// the TLB misses; `MADV_POPULATE_WRITE` (Linux 5.14) allocates every page up front,
    /// like SPDK's malloc bdev, which takes pinned, zeroed hugepage memory. Both are
    /// best effort: on failure the pages are still faulted lazily (same data: zeroes).
    fn prepare(&self) {
        let p = self.ptr.as_ptr().cast::<std::ffi::c_void>();
        // SAFETY: `p/len` is exactly our own mapping; these advices change only how the
        // kernel backs it, not its contents (anonymous memory reads as zeroes either way).
        let _ = unsafe { rustix::mm::madvise(p, self.len, rustix::mm::Advice::LinuxHugepage) };
        // SAFETY: as above; populating writes no data (pages are zero-filled).
        let populated =
            unsafe { rustix::mm::madvise(p, self.len, rustix::mm::Advice::LinuxPopulateWrite) };
        if let Err(e) = populated {
            tracing::debug!(error = %e, len = self.len, "MADV_POPULATE_WRITE failed; pages fault on first use");
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty (never: `new` refuses 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn range(&self, off: u64, n: usize) -> Option<*mut u8> {
        let off = usize::try_from(off).ok()?;
        let end = off.checked_add(n)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `off <= end <= len`, so the result is inside (or one past) the mapping.
        Some(unsafe { self.ptr.as_ptr().add(off) })
    }

    /// Copy `len` bytes at `off` into the iovecs. `false` if out of range.
    pub fn read_to_iovecs(&self, off: u64, len: usize, iov: &IoVecs) -> bool {
        self.copy_iovecs(off, len, iov, true)
    }

    /// Copy `len` bytes from the iovecs to `off`. `false` if out of range.
    pub fn write_from_iovecs(&self, off: u64, len: usize, iov: &IoVecs) -> bool {
        self.copy_iovecs(off, len, iov, false)
    }

    /// Copies `len` bytes between `off` and the iovecs: into them when `to_iovecs`, out of
    /// them otherwise. `false` if out of range.
    #[inline]
    fn copy_iovecs(&self, off: u64, len: usize, iov: &IoVecs, to_iovecs: bool) -> bool {
        let Some(base) = self.range(off, len) else {
            return false;
        };
        let mut ok = true;
        for_each_chunk(iov, 0, len, |v_ptr, o, n| {
            if o.checked_add(n).is_none_or(|e| e > len) {
                ok = false;
                return;
            }
            // SAFETY: `o + n <= len` and `base..base+len` is inside the mapping (checked by
            // `range`); `v_ptr..v_ptr+n` is inside one live iovec. Guest memory and our
            // private mapping never overlap.
            unsafe {
                let ours = base.add(o);
                if to_iovecs {
                    std::ptr::copy_nonoverlapping(ours.cast_const(), v_ptr, n);
                } else {
                    std::ptr::copy_nonoverlapping(v_ptr.cast_const(), ours, n);
                }
            }
        });
        ok
    }

    /// Zero `len` bytes at `off`. `false` if out of range.
    pub fn zero(&self, off: u64, len: usize) -> bool {
        let Some(base) = self.range(off, len) else {
            return false;
        };
        // SAFETY: `base..base+len` is inside the mapping (checked by `range`).
        unsafe { std::ptr::write_bytes(base, 0, len) };
        true
    }

    /// Compare `len` bytes at `off` with the iovecs. `None` if out of range.
    pub fn compare_iovecs(&self, off: u64, len: usize, iov: &IoVecs) -> Option<bool> {
        let base = self.range(off, len)?;
        let mut equal = true;
        for_each_chunk(iov, 0, len, |v_ptr, o, n| {
            if !equal || o.checked_add(n).is_none_or(|e| e > len) {
                equal = false;
                return;
            }
            for i in 0..n {
                // SAFETY: `o + i < len` inside our mapping; `i < n` inside one live iovec.
                let (a, b) = unsafe {
                    (
                        std::ptr::read_volatile(base.add(o + i)),
                        std::ptr::read_volatile(v_ptr.add(i)),
                    )
                };
                if a != b {
                    equal = false;
                    return;
                }
            }
        });
        Some(equal)
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr/len` is exactly the mapping created in `new`, unmapped once here;
        // no reference into it can outlive `self` (none is ever created).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// `preadv2`/`pwritev2` of the whole iovec list at `offset` on `fd` (thread-pool engine).
/// Loops over short transfers; returns the first error's errno, or `EIO` when the file
/// ended early.
pub fn rw_iovecs(
    fd: std::os::fd::BorrowedFd<'_>,
    iov: &IoVecs,
    offset: u64,
    write: bool,
    flags: i32,
) -> Result<(), i32> {
    use std::os::fd::AsRawFd;
    let total = iov.total_len().ok_or(libc::EINVAL)?;
    let mut done: u64 = 0;
    let vs = iov.as_slice();
    // Index of the first not-fully-transferred iovec and bytes already done in it.
    let (mut idx, mut in_first) = (0usize, 0usize);
    let mut scratch: Vec<IoVec> = Vec::new();
    while done < total {
        let rest = vs.get(idx..).ok_or(libc::EINVAL)?;
        let ptr: *const IoVec = if in_first == 0 {
            rest.as_ptr()
        } else {
            scratch.clear();
            scratch.extend_from_slice(rest);
            if let Some(f) = scratch.first_mut() {
                // Advance the first iovec past the bytes already transferred; in_first is
                // smaller than its length (maintained below).
                *f = IoVec {
                    base: f.base.wrapping_add(in_first),
                    len: f.len - in_first,
                };
            }
            scratch.as_ptr()
        };
        let cnt = i32::try_from(rest.len().min(1024)).map_err(|_| libc::EINVAL)?;
        let off = i64::try_from(offset.checked_add(done).ok_or(libc::EINVAL)?)
            .map_err(|_| libc::EINVAL)?;
        // SAFETY: `ptr` points to `cnt` initialized `IoVec`s (layout-identical to
        // `struct iovec`, `#[repr(C)]`) that live until the call returns (`vs` or
        // `scratch`). Each names guest/buffer memory that `IoVec::from_raw`'s contract keeps
        // mapped while the request is in flight; the kernel validates the addresses itself.
        let r = unsafe {
            if write {
                libc::pwritev2(fd.as_raw_fd(), ptr.cast(), cnt, off, flags)
            } else {
                libc::preadv2(fd.as_raw_fd(), ptr.cast(), cnt, off, flags)
            }
        };
        if r < 0 {
            let e = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(libc::EIO);
        }
        let mut n = usize::try_from(r).map_err(|_| libc::EIO)?;
        done = done.saturating_add(n as u64);
        // Advance (idx, in_first) by n bytes.
        while n > 0 {
            let Some(v) = vs.get(idx) else { break };
            let left = v.len - in_first;
            if n >= left {
                n -= left;
                idx += 1;
                in_first = 0;
            } else {
                in_first += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Build an iovec over a Rust buffer (tests, benchmarks, bounce buffers).
///
/// The returned iovec must not outlive `buf`, and `buf` must not be accessed through
/// Rust references while a request using it is in flight.
pub fn iovec_of(buf: &mut [u8]) -> IoVec {
    // SAFETY: `buf` is valid for its length; the documented usage rule makes the caller
    // keep it alive and unaliased while in flight.
    unsafe { IoVec::from_raw(buf.as_mut_ptr(), buf.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_iov(a: &mut [u8], b: &mut [u8]) -> IoVecs {
        let mut v = IoVecs::new();
        v.push(iovec_of(a));
        v.push(iovec_of(b));
        v
    }

    #[test]
    fn copies_across_iovecs() {
        let mut a = vec![0u8; 3];
        let mut b = vec![0u8; 5];
        let iov = split_iov(&mut a, &mut b);
        let n = copy_to_iovecs(&iov, 1, &[1, 2, 3, 4, 5]);
        assert_eq!(n, 5);
        let mut back = [0u8; 7];
        assert_eq!(copy_from_iovecs(&iov, 0, &mut back), 7);
        assert_eq!(back, [0, 1, 2, 3, 4, 5, 0]);
        assert!(iovecs_equal(&iov, 1, &[1, 2, 3, 4, 5]));
        assert!(!iovecs_equal(&iov, 1, &[1, 2, 3, 9, 5]));
        // Longer than the iovecs: not equal.
        assert!(!iovecs_equal(&iov, 0, &[0u8; 9]));
        drop(iov);
        assert_eq!(a, [0, 1, 2]);
    }

    #[test]
    fn rawbuf_bounds() {
        let rb = RawBuf::new(4096).unwrap();
        let mut a = vec![7u8; 512];
        let iov = IoVecs::one(iovec_of(&mut a));
        assert!(rb.write_from_iovecs(512, 512, &iov));
        assert_eq!(rb.compare_iovecs(512, 512, &iov), Some(true));
        assert_eq!(rb.compare_iovecs(0, 512, &iov), Some(false));
        assert!(!rb.write_from_iovecs(3800, 512, &iov));
        assert!(!rb.zero(u64::MAX, 1));
        assert_eq!(rb.compare_iovecs(4096, 1, &iov), None);
        assert!(rb.zero(512, 512));
        let mut out = vec![1u8; 512];
        let iov2 = IoVecs::one(iovec_of(&mut out));
        assert!(rb.read_to_iovecs(512, 512, &iov2));
        drop(iov2);
        assert!(out.iter().all(|&x| x == 0));
        assert!(RawBuf::new(0).is_err());
    }
}
