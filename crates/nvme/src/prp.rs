//! PRP and SGL walkers: turn a command's data pointer into guest segments, and guest
//! segments into raw iovecs over the DMA snapshot.
//!
//! All arithmetic is checked; every segment is validated against the mapped regions
//! before a pointer is produced; loops are bounded by the transfer length and by a
//! descriptor budget so no guest-built list (cyclic PRP chains, SGL self-references) can
//! make the walker spin.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::spec::Status;
use sluice_bdev::{IoVec, IoVecs};

use crate::sys::iovec_extend;
use crate::GuestMem;

/// Memory page size (CAP.MPSMIN = MPSMAX = 4 KiB).
pub const PAGE_SIZE: u64 = 4096;
/// Most SGL descriptors (across all segments) one command may use.
pub const MAX_SGL_DESCRIPTORS: usize = 1024;
const CHUNK: usize = 32;

/// One guest-physical segment of a data transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    /// Guest (IOVA) address.
    pub addr: u64,
    /// Length in bytes (non-zero).
    pub len: u64,
}

/// Receives the segments a walker produces, in order.
pub trait SegSink {
    /// Accept one non-empty segment.
    fn seg(&mut self, addr: u64, len: u64) -> Result<(), Status>;
}

impl SegSink for Vec<Seg> {
    fn seg(&mut self, addr: u64, len: u64) -> Result<(), Status> {
        self.push(Seg { addr, len });
        Ok(())
    }
}

fn read_u64s(mem: &GuestMem, addr: u64, out: &mut [u64]) -> Result<(), Status> {
    let mut raw = [0u8; CHUNK * 8];
    let n = out
        .len()
        .checked_mul(8)
        .ok_or(Status::DATA_TRANSFER_ERROR)?;
    let buf = raw.get_mut(..n).ok_or(Status::INTERNAL_ERROR)?;
    mem.read_slice(buf, GuestAddress(addr))
        .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
    for (o, c) in out.iter_mut().zip(buf.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        *o = u64::from_le_bytes(b);
    }
    Ok(())
}

/// Walk PRP1/PRP2 (and PRP lists, chained) for a transfer of `len` bytes.
pub fn walk_prp(
    mem: &GuestMem,
    prp1: u64,
    prp2: u64,
    len: u64,
    sink: &mut impl SegSink,
) -> Result<(), Status> {
    if len == 0 {
        return Ok(());
    }
    let mask = PAGE_SIZE - 1;
    let first = len.min(PAGE_SIZE - (prp1 & mask));
    sink.seg(prp1, first)?;
    let mut remaining = len - first;
    if remaining == 0 {
        return Ok(());
    }
    if remaining <= PAGE_SIZE {
        if prp2 & mask != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        return sink.seg(prp2, remaining);
    }
    let mut list = prp2;
    // Every list page yields at least one data entry or we stop: bound the hops.
    let mut hops = remaining.div_ceil(PAGE_SIZE).saturating_add(1);
    let mut entries = [0u64; CHUNK];
    loop {
        if list & 7 != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        hops = hops.checked_sub(1).ok_or(Status::PRP_OFFSET_INVALID)?;
        let in_page = (PAGE_SIZE - (list & mask)) / 8;
        let pages_left = remaining.div_ceil(PAGE_SIZE);
        let (data_entries, chained) = if pages_left <= in_page {
            (pages_left, false)
        } else {
            (in_page - 1, true)
        };
        if chained && data_entries == 0 {
            // A list that holds only a pointer to the next list makes no progress. (The
            // entry is still read first so an unmapped list reports a transfer error.)
            let mut e = [0u64; 1];
            read_u64s(mem, list, &mut e)?;
            return Err(Status::PRP_OFFSET_INVALID);
        }
        let mut done = 0u64;
        while done < data_entries {
            let n = (data_entries - done).min(CHUNK as u64);
            let at = list
                .checked_add(done * 8)
                .ok_or(Status::DATA_TRANSFER_ERROR)?;
            let slot = entries
                .get_mut(..n as usize)
                .ok_or(Status::INTERNAL_ERROR)?;
            read_u64s(mem, at, slot)?;
            for &e in slot.iter() {
                if e & mask != 0 {
                    return Err(Status::PRP_OFFSET_INVALID);
                }
                let l = remaining.min(PAGE_SIZE);
                sink.seg(e, l)?;
                remaining -= l;
            }
            done += n;
        }
        if remaining == 0 {
            return Ok(());
        }
        let at = list
            .checked_add((in_page - 1) * 8)
            .ok_or(Status::DATA_TRANSFER_ERROR)?;
        let mut next = [0u64; 1];
        read_u64s(mem, at, &mut next)?;
        list = next[0];
    }
}

/// SGL descriptor types.
const SGL_DATA_BLOCK: u8 = 0x0;
const SGL_SEGMENT: u8 = 0x2;
const SGL_LAST_SEGMENT: u8 = 0x3;

/// A decoded 16-byte SGL descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SglDesc {
    /// Address field.
    pub addr: u64,
    /// Length field.
    pub len: u32,
    /// Descriptor type (bits 7:4 of byte 15).
    pub kind: u8,
    /// Descriptor subtype (bits 3:0 of byte 15).
    pub subtype: u8,
}

impl SglDesc {
    /// Decode raw bytes.
    pub fn from_bytes(b: &[u8; 16]) -> SglDesc {
        let mut a = [0u8; 8];
        a.copy_from_slice(b.get(..8).unwrap_or(&[0; 8]));
        let mut l = [0u8; 4];
        l.copy_from_slice(b.get(8..12).unwrap_or(&[0; 4]));
        let t = b.get(15).copied().unwrap_or(0);
        SglDesc {
            addr: u64::from_le_bytes(a),
            len: u32::from_le_bytes(l),
            kind: t >> 4,
            subtype: t & 0xf,
        }
    }
}

/// Walk an SGL (data block, or segment / last segment chains) for `len` bytes.
/// The descriptors' data lengths must add up to exactly `len`.
pub fn walk_sgl(
    mem: &GuestMem,
    first: &[u8; 16],
    len: u64,
    sink: &mut impl SegSink,
) -> Result<(), Status> {
    let d = SglDesc::from_bytes(first);
    if d.subtype != 0 {
        return Err(Status::SGL_TYPE_INVALID);
    }
    let mut total = 0u64;
    let mut emit =
        |sink: &mut dyn FnMut(u64, u64) -> Result<(), Status>, d: &SglDesc| -> Result<(), Status> {
            total = total
                .checked_add(u64::from(d.len))
                .ok_or(Status::SGL_LENGTH_INVALID)?;
            if total > len {
                return Err(Status::SGL_LENGTH_INVALID);
            }
            if d.len > 0 {
                sink(d.addr, u64::from(d.len))?;
            }
            Ok(())
        };
    let mut out = |a: u64, l: u64| sink.seg(a, l);
    let (mut seg, mut last) = match d.kind {
        SGL_DATA_BLOCK => {
            emit(&mut out, &d)?;
            return if u64::from(d.len) == len {
                Ok(())
            } else {
                Err(Status::SGL_LENGTH_INVALID)
            };
        }
        SGL_SEGMENT => (d, false),
        SGL_LAST_SEGMENT => (d, true),
        _ => return Err(Status::SGL_TYPE_INVALID),
    };
    let mut budget = MAX_SGL_DESCRIPTORS;
    let mut raw = [0u8; 16 * 16];
    loop {
        if seg.len == 0 || seg.len % 16 != 0 {
            return Err(Status::INVALID_SGL_SEGMENT);
        }
        let n = (seg.len / 16) as usize;
        budget = budget.checked_sub(n).ok_or(Status::INVALID_SGL_COUNT)?;
        let mut next = None;
        let mut i = 0usize;
        while i < n {
            let k = (n - i).min(16);
            let at = seg
                .addr
                .checked_add((i as u64) * 16)
                .ok_or(Status::DATA_TRANSFER_ERROR)?;
            let buf = raw.get_mut(..k * 16).ok_or(Status::INTERNAL_ERROR)?;
            mem.read_slice(buf, GuestAddress(at))
                .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
            for (j, c) in buf.chunks_exact(16).enumerate() {
                let mut b = [0u8; 16];
                b.copy_from_slice(c);
                let e = SglDesc::from_bytes(&b);
                if e.subtype != 0 {
                    return Err(Status::SGL_TYPE_INVALID);
                }
                let is_last_desc = i + j + 1 == n;
                match e.kind {
                    SGL_DATA_BLOCK => emit(&mut out, &e)?,
                    SGL_SEGMENT | SGL_LAST_SEGMENT => {
                        if last || !is_last_desc {
                            return Err(Status::INVALID_SGL_SEGMENT);
                        }
                        next = Some(e);
                    }
                    _ => return Err(Status::SGL_TYPE_INVALID),
                }
            }
            i += k;
        }
        match next {
            Some(e) => {
                last = e.kind == SGL_LAST_SEGMENT;
                seg = e;
            }
            None => break,
        }
    }
    if !last {
        // A Segment descriptor must eventually lead to a Last Segment.
        return Err(Status::INVALID_SGL_SEGMENT);
    }
    if total != len {
        return Err(Status::SGL_LENGTH_INVALID);
    }
    Ok(())
}

/// Sink that translates guest segments into raw iovecs over one DMA snapshot, merging
/// host-contiguous neighbours. Fails with Data Transfer Error for any unmapped byte.
/// Call [`finish`](Self::finish) to flush the last iovec.
pub struct IovSink<'a> {
    mem: &'a GuestMem,
    out: &'a mut IoVecs,
    max: usize,
    count: usize,
    pending: Option<IoVec>,
}

impl<'a> IovSink<'a> {
    /// A sink appending to `out` (cleared first), at most `max` iovecs.
    pub fn new(mem: &'a GuestMem, out: &'a mut IoVecs, max: usize) -> Self {
        out.clear();
        IovSink {
            mem,
            out,
            max,
            count: 0,
            pending: None,
        }
    }

    /// Flush the last iovec into the output.
    pub fn finish(mut self) {
        if let Some(v) = self.pending.take() {
            self.out.push(v);
        }
    }
}

impl SegSink for IovSink<'_> {
    fn seg(&mut self, addr: u64, len: u64) -> Result<(), Status> {
        let mut a = addr;
        let mut left = len;
        while left > 0 {
            let region = self
                .mem
                .find_region(GuestAddress(a))
                .ok_or(Status::DATA_TRANSFER_ERROR)?;
            let off = a
                .checked_sub(region.start_addr().0)
                .ok_or(Status::DATA_TRANSFER_ERROR)?;
            let avail = region
                .len()
                .checked_sub(off)
                .ok_or(Status::DATA_TRANSFER_ERROR)?;
            let n = left.min(avail);
            let n_us = usize::try_from(n).map_err(|_| Status::DATA_TRANSFER_ERROR)?;
            let slice = region
                .get_slice(MemoryRegionAddress(off), n_us)
                .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
            let v = IoVec::from_volatile_slice(&slice);
            self.pending = match self.pending.take() {
                Some(p) if p.base().wrapping_add(p.len()) == v.base() => {
                    Some(iovec_extend(p, n_us).ok_or(Status::DATA_TRANSFER_ERROR)?)
                }
                Some(p) => {
                    // p is pushed and v becomes a new pending iovec: count + 2 in total.
                    if self.count + 2 > self.max {
                        return Err(Status::DATA_TRANSFER_ERROR);
                    }
                    self.out.push(p);
                    self.count += 1;
                    Some(v)
                }
                None => Some(v),
            };
            a = a.checked_add(n).ok_or(Status::DATA_TRANSFER_ERROR)?;
            left -= n;
        }
        Ok(())
    }
}

/// A deliberately simple reference PRP walker (recursive description of the spec) used by
/// the property tests and fuzzers to cross-check [`walk_prp`].
pub fn reference_prp(mem: &GuestMem, prp1: u64, prp2: u64, len: u64) -> Result<Vec<Seg>, Status> {
    let mut out = Vec::new();
    if len == 0 {
        return Ok(out);
    }
    let first = len.min(PAGE_SIZE - prp1 % PAGE_SIZE);
    out.push(Seg {
        addr: prp1,
        len: first,
    });
    let mut rem = len - first;
    if rem == 0 {
        return Ok(out);
    }
    if rem <= PAGE_SIZE {
        if prp2 % PAGE_SIZE != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        out.push(Seg {
            addr: prp2,
            len: rem,
        });
        return Ok(out);
    }
    let mut list = prp2;
    let mut guard = 0u64;
    while rem > 0 {
        guard += 1;
        if guard > len / PAGE_SIZE + 2 || list % 8 != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        let slots = (PAGE_SIZE - list % PAGE_SIZE) / 8;
        for i in 0..slots {
            let e: u64 = mem
                .read_obj(GuestAddress(list + i * 8))
                .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
            let is_last_slot = i == slots - 1;
            if is_last_slot && rem > PAGE_SIZE {
                if slots == 1 {
                    return Err(Status::PRP_OFFSET_INVALID);
                }
                list = e;
                break;
            }
            if e % PAGE_SIZE != 0 {
                return Err(Status::PRP_OFFSET_INVALID);
            }
            let l = rem.min(PAGE_SIZE);
            out.push(Seg { addr: e, len: l });
            rem -= l;
            if rem == 0 {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn mem() -> Arc<GuestMem> {
        // Two regions with a hole between them: [0, 1 MiB) and [2 MiB, 3 MiB).
        Arc::new(
            GuestMem::from_ranges(&[
                (GuestAddress(0), 0x10_0000),
                (GuestAddress(0x20_0000), 0x10_0000),
            ])
            .unwrap(),
        )
    }

    fn put_u64s(m: &GuestMem, at: u64, v: &[u64]) {
        for (i, x) in v.iter().enumerate() {
            m.write_obj(*x, GuestAddress(at + i as u64 * 8)).unwrap();
        }
    }

    fn walk(m: &GuestMem, p1: u64, p2: u64, len: u64) -> Result<Vec<Seg>, Status> {
        let mut v = Vec::new();
        walk_prp(m, p1, p2, len, &mut v).map(|_| v)
    }

    #[test]
    fn prp1_only_unaligned() {
        let m = mem();
        assert_eq!(
            walk(&m, 0x1200, 0, 0x200).unwrap(),
            vec![Seg {
                addr: 0x1200,
                len: 0x200
            }]
        );
    }

    #[test]
    fn prp1_prp2() {
        let m = mem();
        let v = walk(&m, 0x1800, 0x5000, 0x1000).unwrap();
        assert_eq!(
            v,
            vec![
                Seg {
                    addr: 0x1800,
                    len: 0x800
                },
                Seg {
                    addr: 0x5000,
                    len: 0x800
                }
            ]
        );
        assert_eq!(
            walk(&m, 0x1800, 0x5008, 0x1000),
            Err(Status::PRP_OFFSET_INVALID)
        );
    }

    #[test]
    fn prp_list_and_bad_entry() {
        let m = mem();
        put_u64s(&m, 0x8000, &[0x10000, 0x11000, 0x12000]);
        let v = walk(&m, 0x1000, 0x8000, 0x4000).unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(
            v[3],
            Seg {
                addr: 0x12000,
                len: 0x1000
            }
        );
        put_u64s(&m, 0x8008, &[0x11004]);
        assert_eq!(
            walk(&m, 0x1000, 0x8000, 0x4000),
            Err(Status::PRP_OFFSET_INVALID)
        );
        // misaligned list pointer
        assert_eq!(
            walk(&m, 0x1000, 0x8004, 0x4000),
            Err(Status::PRP_OFFSET_INVALID)
        );
        // unmapped list
        assert_eq!(
            walk(&m, 0x1000, 0x18_0000, 0x4000),
            Err(Status::DATA_TRANSFER_ERROR)
        );
    }

    #[test]
    fn chained_prp_list() {
        let m = mem();
        // List starts 16 bytes before the end of its page: one data entry then a pointer.
        put_u64s(&m, 0x8ff0, &[0x20000, 0x9000]);
        put_u64s(&m, 0x9000, &[0x21000, 0x22000]);
        let v = walk(&m, 0x1000, 0x8ff0, 0x4000).unwrap();
        assert_eq!(
            v.iter().map(|s| s.addr).collect::<Vec<_>>(),
            vec![0x1000, 0x20000, 0x21000, 0x22000]
        );
        assert_eq!(reference_prp(&m, 0x1000, 0x8ff0, 0x4000).unwrap(), v);
    }

    #[test]
    fn unmapped_pointer_only_list_reports_transfer_error() {
        // Found by the nvme_prp_sgl fuzz target: same error as the reference walker.
        let m = mem();
        assert_eq!(
            walk(&m, 0x1000, 0x18_0ff8, 0x3000),
            Err(Status::DATA_TRANSFER_ERROR)
        );
        assert_eq!(
            reference_prp(&m, 0x1000, 0x18_0ff8, 0x3000),
            Err(Status::DATA_TRANSFER_ERROR)
        );
    }

    #[test]
    fn cyclic_prp_list_terminates() {
        let m = mem();
        // Only-pointer list page pointing at itself.
        put_u64s(&m, 0x8ff8, &[0x8ff8]);
        assert!(walk(&m, 0x1000, 0x8ff8, 0x10000).is_err());
        // Two entries: data + pointer back to itself. It walks 30 hops, then the final
        // two-page list reads the (misaligned) pointer as a data entry.
        put_u64s(&m, 0x9ff0, &[0x3000, 0x9ff0]);
        assert_eq!(
            walk(&m, 0x1000, 0x9ff0, 0x20000),
            Err(Status::PRP_OFFSET_INVALID)
        );
        assert_eq!(
            reference_prp(&m, 0x1000, 0x9ff0, 0x20000),
            Err(Status::PRP_OFFSET_INVALID)
        );
        // Same shape with a page-aligned self pointer terminates successfully.
        put_u64s(&m, 0xaff0, &[0x3000, 0xa000]);
        put_u64s(&m, 0xa000, &[0x4000; 510]);
        put_u64s(&m, 0xaff0 - 0x10, &[0x4000, 0x4000]);
        let r = walk(&m, 0x1000, 0xaff0, 0x20000).unwrap();
        assert_eq!(r.len(), 32);
        assert_eq!(reference_prp(&m, 0x1000, 0xaff0, 0x20000).unwrap(), r);
    }

    #[test]
    fn iov_sink_splits_and_rejects_holes() {
        let m = mem();
        let mut iov = IoVecs::new();
        let mut s = IovSink::new(&m, &mut iov, 8);
        s.seg(0x1000, 0x2000).unwrap();
        s.seg(0x3000, 0x1000).unwrap();
        s.finish();
        assert_eq!(iov.len(), 1, "contiguous segments merge");
        assert_eq!(iov.as_slice()[0].len(), 0x3000);
        let mut s = IovSink::new(&m, &mut iov, 8);
        assert_eq!(
            s.seg(0xff000, 0x2000),
            Err(Status::DATA_TRANSFER_ERROR),
            "partially mapped"
        );
        let mut s = IovSink::new(&m, &mut iov, 8);
        assert_eq!(
            s.seg(0x18_0000, 0x10),
            Err(Status::DATA_TRANSFER_ERROR),
            "unmapped"
        );
        let mut s = IovSink::new(&m, &mut iov, 1);
        s.seg(0x1000, 0x10).unwrap();
        assert_eq!(
            s.seg(0x5000, 0x10),
            Err(Status::DATA_TRANSFER_ERROR),
            "too many iovecs"
        );
    }

    fn desc(addr: u64, len: u32, kind: u8) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[15] = kind << 4;
        b
    }

    fn sgl(m: &GuestMem, d: [u8; 16], len: u64) -> Result<Vec<Seg>, Status> {
        let mut v = Vec::new();
        walk_sgl(m, &d, len, &mut v).map(|_| v)
    }

    #[test]
    fn sgl_data_block() {
        let m = mem();
        assert_eq!(
            sgl(&m, desc(0x1000, 0x200, 0), 0x200).unwrap(),
            vec![Seg {
                addr: 0x1000,
                len: 0x200
            }]
        );
        assert_eq!(
            sgl(&m, desc(0x1000, 0x100, 0), 0x200),
            Err(Status::SGL_LENGTH_INVALID)
        );
        assert_eq!(
            sgl(&m, desc(0x1000, 0x200, 1), 0x200),
            Err(Status::SGL_TYPE_INVALID)
        );
        let mut d = desc(0x1000, 0x200, 0);
        d[15] |= 1;
        assert_eq!(sgl(&m, d, 0x200), Err(Status::SGL_TYPE_INVALID));
    }

    #[test]
    fn sgl_segments() {
        let m = mem();
        // Segment at 0x8000: two data blocks + last segment pointer to 0x9000.
        m.write_slice(&desc(0x10000, 0x100, 0), GuestAddress(0x8000))
            .unwrap();
        m.write_slice(&desc(0x11000, 0x100, 0), GuestAddress(0x8010))
            .unwrap();
        m.write_slice(&desc(0x9000, 0x10, 3), GuestAddress(0x8020))
            .unwrap();
        m.write_slice(&desc(0x12000, 0x200, 0), GuestAddress(0x9000))
            .unwrap();
        let v = sgl(&m, desc(0x8000, 0x30, 2), 0x400).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(
            sgl(&m, desc(0x8000, 0x30, 2), 0x500),
            Err(Status::SGL_LENGTH_INVALID)
        );
        assert_eq!(
            sgl(&m, desc(0x8000, 0x28, 2), 0x400),
            Err(Status::INVALID_SGL_SEGMENT)
        );
        // Segment pointer that is not the last descriptor.
        m.write_slice(&desc(0x9000, 0x10, 3), GuestAddress(0xa000))
            .unwrap();
        m.write_slice(&desc(0x12000, 0x200, 0), GuestAddress(0xa010))
            .unwrap();
        assert_eq!(
            sgl(&m, desc(0xa000, 0x20, 2), 0x200),
            Err(Status::INVALID_SGL_SEGMENT)
        );
        // Self-referencing segment chain terminates with a count error.
        m.write_slice(&desc(0xb000, 0x10, 2), GuestAddress(0xb000))
            .unwrap();
        assert_eq!(
            sgl(&m, desc(0xb000, 0x10, 2), 0x200),
            Err(Status::INVALID_SGL_COUNT)
        );
        // Unmapped segment.
        assert_eq!(
            sgl(&m, desc(0x18_0000, 0x10, 3), 0x200),
            Err(Status::DATA_TRANSFER_ERROR)
        );
    }

    #[test]
    fn copy_helpers_round_trip() {
        let m = mem();
        let segs = vec![
            Seg {
                addr: 0x1ff0,
                len: 0x10,
            },
            Seg {
                addr: 0x20_0000,
                len: 0x10,
            },
        ];
        let data: Vec<u8> = (0..32u8).collect();
        crate::bounce::scatter(&m, None, &segs, &data).unwrap();
        let mut back = [0u8; 32];
        crate::bounce::gather(&m, None, &segs, &mut back).unwrap();
        assert_eq!(&back[..], &data[..]);
        let bad = vec![Seg {
            addr: 0x18_0000,
            len: 0x10,
        }];
        assert_eq!(
            crate::bounce::scatter(&m, None, &bad, &data),
            Err(Status::DATA_TRANSFER_ERROR)
        );
    }
}
