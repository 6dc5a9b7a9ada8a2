//! PRP and SGL building: pure functions that turn a buffer description into the data
//! pointer of a command plus the lists that must be written to DMA memory.
//!
//! A buffer is a sequence of `(iova, len)` segments. For PRPs the first segment may start
//! anywhere (dword aligned), later segments must start on a page boundary and every segment
//! but the last must end on one. PRP lists may start at an offset inside a page; when a list
//! reaches the end of its page with entries left, its last slot chains to the next list page
//! (this is how chained lists are produced with small transfers).

use crate::cmd::SglDescriptor;
use crate::error::Error;

/// A PRP list or SGL segment to write at `iova` before submitting the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListWrite<T> {
    /// Where the entries go.
    pub iova: u64,
    /// The entries, in order.
    pub entries: Vec<T>,
}

/// The PRP form of a command's data pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrpPlan {
    /// PRP entry 1.
    pub prp1: u64,
    /// PRP entry 2 (a page, a list pointer, or 0).
    pub prp2: u64,
    /// PRP lists to write.
    pub lists: Vec<ListWrite<u64>>,
}

/// The SGL form of a command's data pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SglPlan {
    /// The descriptor in the command (SGL1).
    pub sgl1: SglDescriptor,
    /// Segments to write.
    pub lists: Vec<ListWrite<SglDescriptor>>,
}

/// The PRP entries (first entry with offset, then one per page) describing `segments`.
pub fn prp_entries(segments: &[(u64, u64)], page: u64) -> Result<Vec<u64>, Error> {
    if page == 0 || !page.is_power_of_two() {
        return Err(Error::InvalidArgument("page size must be a power of two"));
    }
    let mut out = Vec::new();
    let n = segments.len();
    for (i, &(iova, len)) in segments.iter().enumerate() {
        if len == 0 {
            return Err(Error::InvalidArgument("empty PRP segment"));
        }
        if iova % 4 != 0 {
            return Err(Error::InvalidArgument("PRP entries must be dword aligned"));
        }
        if i > 0 && iova % page != 0 {
            return Err(Error::InvalidArgument(
                "only the first PRP segment may start inside a page",
            ));
        }
        let end = iova
            .checked_add(len)
            .ok_or(Error::InvalidArgument("PRP segment wraps"))?;
        if i + 1 < n && end % page != 0 {
            return Err(Error::InvalidArgument(
                "only the last PRP segment may end inside a page",
            ));
        }
        out.push(iova);
        let mut p = (iova & !(page - 1)) + page;
        while p < end {
            out.push(p);
            p += page;
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument("no data"));
    }
    Ok(out)
}

/// Lays out `entries` as PRP1/PRP2 and PRP lists placed in `list_space` (the first list may
/// start at an 8-byte aligned offset inside its page; later ones must be page aligned).
pub fn plan_prp(entries: &[u64], list_space: &[u64], page: u64) -> Result<PrpPlan, Error> {
    let (&prp1, rest) = entries
        .split_first()
        .ok_or(Error::InvalidArgument("no PRP entries"))?;
    match rest {
        [] => {
            return Ok(PrpPlan {
                prp1,
                prp2: 0,
                lists: Vec::new(),
            })
        }
        [one] => {
            return Ok(PrpPlan {
                prp1,
                prp2: *one,
                lists: Vec::new(),
            })
        }
        _ => {}
    }
    let mut lists = Vec::new();
    let mut remaining = rest;
    let mut space = list_space.iter();
    let mut at = *space
        .next()
        .ok_or(Error::InvalidArgument("no room for a PRP list"))?;
    let prp2 = at;
    loop {
        if at % 8 != 0 {
            return Err(Error::InvalidArgument("PRP list must be qword aligned"));
        }
        let slots =
            usize::try_from((page - at % page) / 8).map_err(|_| Error::InvalidArgument("page"))?;
        if remaining.len() <= slots {
            lists.push(ListWrite {
                iova: at,
                entries: remaining.to_vec(),
            });
            break;
        }
        let next = *space
            .next()
            .ok_or(Error::InvalidArgument("not enough room for the PRP lists"))?;
        if next % page != 0 {
            return Err(Error::InvalidArgument(
                "chained PRP lists must be page aligned",
            ));
        }
        let take = slots.saturating_sub(1);
        if take == 0 {
            return Err(Error::InvalidArgument("PRP list slot too small"));
        }
        let (now, later) = remaining.split_at(take);
        let mut e = now.to_vec();
        e.push(next);
        lists.push(ListWrite {
            iova: at,
            entries: e,
        });
        remaining = later;
        at = next;
    }
    Ok(PrpPlan { prp1, prp2, lists })
}

/// Lays out `segments` as SGL data blocks. One segment goes into SGL1 directly; more go into
/// segment lists placed in `list_space` (`(iova, capacity in descriptors)` each), chained with
/// Segment descriptors and ending with a Last Segment.
pub fn plan_sgl(segments: &[(u64, u32)], list_space: &[(u64, usize)]) -> Result<SglPlan, Error> {
    let data: Vec<SglDescriptor> = segments
        .iter()
        .map(|&(a, l)| SglDescriptor::data(a, l))
        .collect();
    match data.as_slice() {
        [] => return Err(Error::InvalidArgument("no SGL segments")),
        [one] => {
            return Ok(SglPlan {
                sgl1: *one,
                lists: Vec::new(),
            })
        }
        _ => {}
    }
    // Decide how many descriptors go into each list.
    let mut chunks: Vec<(u64, usize)> = Vec::new();
    let mut left = data.len();
    for (i, &(iova, cap)) in list_space.iter().enumerate() {
        if left == 0 {
            break;
        }
        if iova % 16 != 0 {
            return Err(Error::InvalidArgument(
                "SGL segments must be 16-byte aligned",
            ));
        }
        let has_next = i + 1 < list_space.len();
        if left <= cap {
            chunks.push((iova, left));
            left = 0;
        } else if has_next && cap >= 2 {
            chunks.push((iova, cap - 1));
            left -= cap - 1;
        } else {
            return Err(Error::InvalidArgument(
                "not enough room for the SGL segments",
            ));
        }
    }
    if left != 0 {
        return Err(Error::InvalidArgument(
            "not enough room for the SGL segments",
        ));
    }
    let pointer = |idx: usize| -> Result<SglDescriptor, Error> {
        let &(iova, count) = chunks.get(idx).ok_or(Error::InvalidArgument("SGL chunk"))?;
        let last = idx + 1 == chunks.len();
        let extra = u32::from(!last);
        let count = u32::try_from(count).map_err(|_| Error::InvalidArgument("SGL too long"))?;
        Ok(SglDescriptor::segment(iova, count + extra, last))
    };
    let mut lists = Vec::new();
    let mut it = data.into_iter();
    for (idx, &(iova, count)) in chunks.iter().enumerate() {
        let mut entries: Vec<SglDescriptor> = it.by_ref().take(count).collect();
        if idx + 1 < chunks.len() {
            entries.push(pointer(idx + 1)?);
        }
        lists.push(ListWrite { iova, entries });
    }
    Ok(SglPlan {
        sgl1: pointer(0)?,
        lists,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::sgl_type;

    const P: u64 = 4096;

    #[test]
    fn single_page_uses_prp1_only() {
        let e = prp_entries(&[(0x10_0000, 4096)], P).unwrap();
        let plan = plan_prp(&e, &[], P).unwrap();
        assert_eq!(plan.prp1, 0x10_0000);
        assert_eq!(plan.prp2, 0);
        assert!(plan.lists.is_empty());
    }

    #[test]
    fn two_pages_use_prp2_as_page() {
        let e = prp_entries(&[(0x10_0200, 4096)], P).unwrap();
        assert_eq!(e, vec![0x10_0200, 0x10_1000]);
        let plan = plan_prp(&e, &[], P).unwrap();
        assert_eq!(plan.prp2, 0x10_1000);
    }

    #[test]
    fn unaligned_start_with_list() {
        let e = prp_entries(&[(0x10_0800, 3 * 4096)], P).unwrap();
        assert_eq!(e, vec![0x10_0800, 0x10_1000, 0x10_2000, 0x10_3000]);
        let plan = plan_prp(&e, &[0x20_0000], P).unwrap();
        assert_eq!(plan.prp2, 0x20_0000);
        assert_eq!(plan.lists.len(), 1);
        assert_eq!(plan.lists[0].entries, vec![0x10_1000, 0x10_2000, 0x10_3000]);
    }

    #[test]
    fn list_at_end_of_page_chains() {
        let e = prp_entries(&[(0x10_0000, 5 * 4096)], P).unwrap();
        // Two slots left in the first list page: one entry plus the chain pointer.
        let plan = plan_prp(&e, &[0x20_0ff0, 0x30_0000], P).unwrap();
        assert_eq!(plan.prp2, 0x20_0ff0);
        assert_eq!(plan.lists.len(), 2);
        assert_eq!(plan.lists[0].entries, vec![0x10_1000, 0x30_0000]);
        assert_eq!(plan.lists[1].iova, 0x30_0000);
        assert_eq!(plan.lists[1].entries, vec![0x10_2000, 0x10_3000, 0x10_4000]);
    }

    #[test]
    fn not_enough_list_space_is_an_error() {
        let e = prp_entries(&[(0x10_0000, 5 * 4096)], P).unwrap();
        assert!(plan_prp(&e, &[0x20_0ff0], P).is_err());
        assert!(plan_prp(&e, &[], P).is_err());
        assert!(plan_prp(&e, &[0x20_0ff0, 0x30_0008], P).is_err());
    }

    #[test]
    fn scattered_segments_follow_prp_rules() {
        let e = prp_entries(
            &[(0x10_0e00, 0x200), (0x50_0000, 0x1000), (0x70_0000, 10)],
            P,
        )
        .unwrap();
        assert_eq!(e, vec![0x10_0e00, 0x50_0000, 0x70_0000]);
        assert!(prp_entries(&[(0x10_0000, 0x100), (0x50_0000, 0x100)], P).is_err());
        assert!(prp_entries(&[(0x10_0000, 0x1000), (0x50_0010, 0x100)], P).is_err());
        assert!(prp_entries(&[(0x10_0002, 0x10)], P).is_err());
        assert!(prp_entries(&[], P).is_err());
        assert!(prp_entries(&[(u64::MAX - 3, 0x10)], P).is_err());
    }

    #[test]
    fn one_sgl_segment_is_inline_data_block() {
        let plan = plan_sgl(&[(0x1000, 512)], &[]).unwrap();
        assert_eq!(plan.sgl1, SglDescriptor::data(0x1000, 512));
        assert!(plan.lists.is_empty());
    }

    #[test]
    fn sgl_last_segment_and_chaining() {
        let segs = [(0x1000, 512), (0x3000, 1024), (0x5000, 2560)];
        let plan = plan_sgl(&segs, &[(0x9000, 256)]).unwrap();
        assert_eq!(plan.sgl1.kind, sgl_type::LAST_SEGMENT);
        assert_eq!(plan.sgl1.len, 48);
        assert_eq!(plan.lists[0].entries.len(), 3);

        let plan = plan_sgl(&segs, &[(0x9000, 2), (0xa000, 2)]).unwrap();
        assert_eq!(plan.sgl1.kind, sgl_type::SEGMENT);
        assert_eq!(plan.sgl1.len, 32);
        assert_eq!(plan.lists[0].entries[0], SglDescriptor::data(0x1000, 512));
        assert_eq!(
            plan.lists[0].entries[1],
            SglDescriptor::segment(0xa000, 2, true)
        );
        assert_eq!(plan.lists[1].entries.len(), 2);
        assert!(plan_sgl(&segs, &[(0x9000, 2)]).is_err());
        assert!(plan_sgl(&segs, &[(0x9008, 8)]).is_err());
    }
}
