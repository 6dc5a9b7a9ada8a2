//! Message header and payload structures for every vfio-user command.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::ProtoError;

/// Size of the message header.
pub const HEADER_SIZE: usize = 16;
/// Protocol major version spoken here.
pub const VERSION_MAJOR: u16 = 0;
/// Highest protocol minor version spoken here.
pub const VERSION_MINOR: u16 = 2;
/// Default `max_data_xfer_size` (1 MiB).
pub const DEFAULT_MAX_DATA_XFER: u32 = 1 << 20;
/// Default `max_dma_maps`.
pub const DEFAULT_MAX_DMA_MAPS: u32 = 65535;
/// Default `pgsizes`.
pub const DEFAULT_PGSIZES: u64 = 4096;
/// Most entries in one REGION_WRITE_MULTI message that we accept.
pub const MAX_WRITE_MULTI: u64 = 256;
/// Data bytes per REGION_WRITE_MULTI entry.
pub const WRITE_MULTI_DATA: usize = 8;

/// Header flag: type mask (bits 0-3).
pub const FLAG_TYPE_MASK: u32 = 0xf;
/// Header type value: command.
pub const FLAG_TYPE_COMMAND: u32 = 0;
/// Header type value: reply.
pub const FLAG_TYPE_REPLY: u32 = 1;
/// Header flag: no reply wanted.
pub const FLAG_NO_REPLY: u32 = 0x10;
/// Header flag: error reply.
pub const FLAG_ERROR: u32 = 0x20;

/// vfio-user command numbers.
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// VERSION negotiation.
    Version = 1,
    /// DMA_MAP.
    DmaMap = 2,
    /// DMA_UNMAP.
    DmaUnmap = 3,
    /// DEVICE_GET_INFO.
    DeviceGetInfo = 4,
    /// DEVICE_GET_REGION_INFO.
    DeviceGetRegionInfo = 5,
    /// DEVICE_GET_REGION_IO_FDS.
    DeviceGetRegionIoFds = 6,
    /// DEVICE_GET_IRQ_INFO.
    DeviceGetIrqInfo = 7,
    /// DEVICE_SET_IRQS.
    DeviceSetIrqs = 8,
    /// REGION_READ.
    RegionRead = 9,
    /// REGION_WRITE.
    RegionWrite = 10,
    /// DMA_READ (server to client).
    DmaRead = 11,
    /// DMA_WRITE (server to client).
    DmaWrite = 12,
    /// DEVICE_RESET.
    DeviceReset = 13,
    /// DIRTY_PAGES (removed in 0.9.2; always rejected).
    DirtyPages = 14,
    /// REGION_WRITE_MULTI.
    RegionWriteMulti = 15,
    /// DEVICE_FEATURE.
    DeviceFeature = 16,
    /// MIG_DATA_READ.
    MigDataRead = 17,
    /// MIG_DATA_WRITE.
    MigDataWrite = 18,
}

impl Command {
    /// Decodes a command number.
    pub fn from_u16(v: u16) -> Option<Command> {
        use Command::*;
        Some(match v {
            1 => Version,
            2 => DmaMap,
            3 => DmaUnmap,
            4 => DeviceGetInfo,
            5 => DeviceGetRegionInfo,
            6 => DeviceGetRegionIoFds,
            7 => DeviceGetIrqInfo,
            8 => DeviceSetIrqs,
            9 => RegionRead,
            10 => RegionWrite,
            11 => DmaRead,
            12 => DmaWrite,
            13 => DeviceReset,
            14 => DirtyPages,
            15 => RegionWriteMulti,
            16 => DeviceFeature,
            17 => MigDataRead,
            18 => MigDataWrite,
            _ => return None,
        })
    }
}

/// Decode helper shared by all wire structs.
pub trait Wire: FromBytes + IntoBytes + Immutable + KnownLayout + Sized + Copy {
    /// Encoded size.
    const SIZE: usize = core::mem::size_of::<Self>();

    /// Decodes the structure from the start of `bytes` (extra bytes are ignored).
    fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        Self::read_from_prefix(bytes)
            .map(|(v, _)| v)
            .map_err(|_| ProtoError::Short {
                need: Self::SIZE,
                have: bytes.len(),
            })
    }

    /// Decodes the structure and requires `bytes` to be exactly its size.
    fn decode_exact(bytes: &[u8]) -> Result<Self, ProtoError> {
        if bytes.len() != Self::SIZE {
            return Err(ProtoError::BadSize(
                "payload size differs from structure size",
            ));
        }
        Self::decode(bytes)
    }

    /// Encoded bytes.
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

macro_rules! wire {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        impl Wire for $name {}
    };
}

wire! {
    /// The 16-byte header of every message.
    pub struct Header {
        /// Message id, echoed in the reply.
        pub msg_id: u16,
        /// Command number.
        pub command: u16,
        /// Whole message size including the header.
        pub msg_size: u32,
        /// Type / No_reply / Error flags.
        pub flags: u32,
        /// errno of an error reply.
        pub error: u32,
    }
}

impl Header {
    /// A command header for `payload_len` bytes of payload.
    pub fn command(msg_id: u16, cmd: Command, payload_len: usize) -> Header {
        Header {
            msg_id,
            command: cmd as u16,
            msg_size: total_size(payload_len),
            flags: FLAG_TYPE_COMMAND,
            error: 0,
        }
    }

    /// A successful reply header to `req` with `payload_len` bytes of payload.
    pub fn reply(req: &Header, payload_len: usize) -> Header {
        Header {
            msg_id: req.msg_id,
            command: req.command,
            msg_size: total_size(payload_len),
            flags: FLAG_TYPE_REPLY,
            error: 0,
        }
    }

    /// A header-only error reply to `req` carrying positive errno `errno`.
    pub fn error_reply(req: &Header, errno: u32) -> Header {
        Header {
            msg_id: req.msg_id,
            command: req.command,
            msg_size: HEADER_SIZE as u32,
            flags: FLAG_TYPE_REPLY | FLAG_ERROR,
            error: errno,
        }
    }

    /// Message type (bits 0-3).
    pub fn msg_type(&self) -> u32 {
        self.flags & FLAG_TYPE_MASK
    }

    /// True for a command.
    pub fn is_command(&self) -> bool {
        self.msg_type() == FLAG_TYPE_COMMAND
    }

    /// True for a reply.
    pub fn is_reply(&self) -> bool {
        self.msg_type() == FLAG_TYPE_REPLY
    }

    /// True when No_reply is set.
    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }

    /// True when the Error flag is set.
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }

    /// Payload size (msg_size minus the header); `None` when msg_size < 16.
    pub fn payload_len(&self) -> Option<usize> {
        (self.msg_size as usize).checked_sub(HEADER_SIZE)
    }

    /// Decoded command, if known.
    pub fn cmd(&self) -> Option<Command> {
        Command::from_u16(self.command)
    }
}

fn total_size(payload_len: usize) -> u32 {
    u32::try_from(payload_len.saturating_add(HEADER_SIZE)).unwrap_or(u32::MAX)
}

wire! {
    /// VERSION payload prefix (followed by optional NUL-terminated JSON).
    pub struct VersionHdr {
        /// Major version.
        pub major: u16,
        /// Minor version.
        pub minor: u16,
    }
}

/// DMA_MAP flag: readable.
pub const DMA_FLAG_READ: u32 = 1;
/// DMA_MAP flag: writable.
pub const DMA_FLAG_WRITE: u32 = 2;
/// DMA_MAP flag (libvfio-user extension): mmap the fd.
pub const DMA_FLAG_MMAP: u32 = 4;
/// DMA_MAP flag (libvfio-user extension): pread/pwrite the fd.
pub const DMA_FLAG_FILE_IO: u32 = 8;
/// DMA_UNMAP flag: get dirty bitmap (old protocol; rejected).
pub const DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1;
/// DMA_UNMAP flag: unmap everything (addr = size = 0).
pub const DMA_UNMAP_FLAG_ALL: u32 = 2;

wire! {
    /// DMA_MAP request.
    pub struct DmaMap {
        /// Size of this struct (32).
        pub argsz: u32,
        /// READ / WRITE flags.
        pub flags: u32,
        /// Offset into the passed fd.
        pub offset: u64,
        /// IOVA.
        pub addr: u64,
        /// Size in bytes.
        pub size: u64,
    }
}

wire! {
    /// DMA_UNMAP request and reply.
    pub struct DmaUnmap {
        /// Maximum reply size (request) / size of the reply.
        pub argsz: u32,
        /// Flags (FLAG_ALL).
        pub flags: u32,
        /// IOVA.
        pub addr: u64,
        /// Size.
        pub size: u64,
    }
}

/// Device flag: supports reset.
pub const DEVICE_FLAG_RESET: u32 = 1;
/// Device flag: PCI device.
pub const DEVICE_FLAG_PCI: u32 = 2;

wire! {
    /// DEVICE_GET_INFO request and reply.
    pub struct DeviceInfoMsg {
        /// argsz.
        pub argsz: u32,
        /// RESET / PCI flags.
        pub flags: u32,
        /// Region count.
        pub num_regions: u32,
        /// IRQ index count.
        pub num_irqs: u32,
    }
}

/// Region flag: readable.
pub const REGION_FLAG_READ: u32 = 1;
/// Region flag: writable.
pub const REGION_FLAG_WRITE: u32 = 2;
/// Region flag: mmap-able.
pub const REGION_FLAG_MMAP: u32 = 4;
/// Region flag: capability chain present.
pub const REGION_FLAG_CAPS: u32 = 8;
/// Capability id: sparse mmap areas.
pub const CAP_SPARSE_MMAP: u16 = 1;
/// Capability id: region type.
pub const CAP_TYPE: u16 = 2;

wire! {
    /// DEVICE_GET_REGION_INFO request and reply (caps follow in the reply).
    pub struct RegionInfoMsg {
        /// argsz.
        pub argsz: u32,
        /// Flags.
        pub flags: u32,
        /// Region index.
        pub index: u32,
        /// Offset of the first capability (from the start of this struct).
        pub cap_offset: u32,
        /// Region size.
        pub size: u64,
        /// mmap offset into the region fd.
        pub offset: u64,
    }
}

wire! {
    /// Capability chain header.
    pub struct CapHeader {
        /// Capability id.
        pub id: u16,
        /// Capability version.
        pub version: u16,
        /// Offset of the next capability (0 ends the chain).
        pub next: u32,
    }
}

wire! {
    /// Sparse mmap capability body header.
    pub struct SparseMmapHdr {
        /// Number of areas.
        pub nr_areas: u32,
        /// Reserved.
        pub reserved: u32,
    }
}

wire! {
    /// One sparse mmap area.
    pub struct SparseArea {
        /// Offset inside the region.
        pub offset: u64,
        /// Size.
        pub size: u64,
    }
}

wire! {
    /// DEVICE_GET_REGION_IO_FDS request / reply header.
    pub struct RegionIoFdsMsg {
        /// argsz.
        pub argsz: u32,
        /// Flags (must be 0).
        pub flags: u32,
        /// Region index.
        pub index: u32,
        /// Number of sub-regions.
        pub count: u32,
    }
}

/// IRQ info flag: eventfd capable.
pub const IRQ_INFO_EVENTFD: u32 = 1;
/// IRQ info flag: maskable.
pub const IRQ_INFO_MASKABLE: u32 = 2;
/// IRQ info flag: automasked.
pub const IRQ_INFO_AUTOMASKED: u32 = 4;
/// IRQ info flag: no resize.
pub const IRQ_INFO_NORESIZE: u32 = 8;

wire! {
    /// DEVICE_GET_IRQ_INFO request and reply.
    pub struct IrqInfoMsg {
        /// argsz.
        pub argsz: u32,
        /// Flags.
        pub flags: u32,
        /// IRQ index.
        pub index: u32,
        /// Vector count.
        pub count: u32,
    }
}

/// SET_IRQS: no data.
pub const IRQ_SET_DATA_NONE: u32 = 1;
/// SET_IRQS: bool array.
pub const IRQ_SET_DATA_BOOL: u32 = 2;
/// SET_IRQS: eventfds.
pub const IRQ_SET_DATA_EVENTFD: u32 = 4;
/// SET_IRQS: mask.
pub const IRQ_SET_ACTION_MASK: u32 = 8;
/// SET_IRQS: unmask.
pub const IRQ_SET_ACTION_UNMASK: u32 = 16;
/// SET_IRQS: trigger.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 32;
/// SET_IRQS: all data-type bits.
pub const IRQ_SET_DATA_MASK: u32 = 7;
/// SET_IRQS: all action bits.
pub const IRQ_SET_ACTION_MASK_ALL: u32 = 56;

/// IRQ index INTx.
pub const IRQ_INDEX_INTX: u32 = 0;
/// IRQ index MSI.
pub const IRQ_INDEX_MSI: u32 = 1;
/// IRQ index MSI-X.
pub const IRQ_INDEX_MSIX: u32 = 2;
/// IRQ index ERR.
pub const IRQ_INDEX_ERR: u32 = 3;
/// IRQ index REQ.
pub const IRQ_INDEX_REQ: u32 = 4;
/// Number of IRQ indices.
pub const NUM_IRQ_INDICES: u32 = 5;

wire! {
    /// DEVICE_SET_IRQS request header (bool data may follow).
    pub struct IrqSetMsg {
        /// argsz.
        pub argsz: u32,
        /// DATA_* | ACTION_* flags.
        pub flags: u32,
        /// IRQ index.
        pub index: u32,
        /// First vector.
        pub start: u32,
        /// Vector count.
        pub count: u32,
    }
}

wire! {
    /// REGION_READ / REGION_WRITE request and reply header.
    pub struct RegionAccess {
        /// Offset in the region.
        pub offset: u64,
        /// Region index.
        pub region: u32,
        /// Byte count.
        pub count: u32,
    }
}

wire! {
    /// DMA_READ / DMA_WRITE request and reply header.
    pub struct DmaRw {
        /// IOVA.
        pub addr: u64,
        /// Byte count.
        pub count: u64,
    }
}

wire! {
    /// One REGION_WRITE_MULTI entry.
    pub struct WriteMultiEntry {
        /// Offset.
        pub offset: u64,
        /// Region index.
        pub region: u32,
        /// Bytes used in `data` (<= 8).
        pub count: u32,
        /// Data.
        pub data: [u8; 8],
    }
}

wire! {
    /// DEVICE_FEATURE request header.
    pub struct DeviceFeatureMsg {
        /// argsz.
        pub argsz: u32,
        /// Feature index (bits 0-15) and GET/SET/PROBE bits.
        pub flags: u32,
    }
}

/// DEVICE_FEATURE: feature index mask.
pub const FEATURE_MASK: u32 = 0xffff;
/// DEVICE_FEATURE: GET.
pub const FEATURE_GET: u32 = 1 << 16;
/// DEVICE_FEATURE: SET.
pub const FEATURE_SET: u32 = 1 << 17;
/// DEVICE_FEATURE: PROBE.
pub const FEATURE_PROBE: u32 = 1 << 18;

wire! {
    /// MIG_DATA_READ / MIG_DATA_WRITE header.
    pub struct MigDataMsg {
        /// argsz.
        pub argsz: u32,
        /// Data size.
        pub size: u32,
    }
}

/// Encodes a REGION_INFO sparse-mmap capability chain placed right after the 32-byte struct.
pub fn encode_sparse_cap(areas: &[SparseArea], out: &mut Vec<u8>) {
    let hdr = CapHeader {
        id: CAP_SPARSE_MMAP,
        version: 1,
        next: 0,
    };
    out.extend_from_slice(hdr.as_bytes());
    let sh = SparseMmapHdr {
        nr_areas: u32::try_from(areas.len()).unwrap_or(u32::MAX),
        reserved: 0,
    };
    out.extend_from_slice(sh.as_bytes());
    for a in areas {
        out.extend_from_slice(a.as_bytes());
    }
}

/// Size of a sparse capability with `n` areas.
pub fn sparse_cap_len(n: usize) -> usize {
    CapHeader::SIZE + SparseMmapHdr::SIZE + n.saturating_mul(SparseArea::SIZE)
}

/// Parses the sparse areas out of a REGION_INFO reply (`buf` starts at the region-info struct).
///
/// Walks the capability chain with bounds checks and a hop limit; returns `None` when no
/// sparse capability is present.
pub fn parse_sparse_areas(buf: &[u8]) -> Result<Option<Vec<SparseArea>>, ProtoError> {
    let info = RegionInfoMsg::decode(buf)?;
    if info.flags & REGION_FLAG_CAPS == 0 || info.cap_offset == 0 {
        return Ok(None);
    }
    let mut off = info.cap_offset as usize;
    for _ in 0..16 {
        if off < RegionInfoMsg::SIZE {
            return Err(ProtoError::BadCaps("cap offset inside region info"));
        }
        let cap = CapHeader::decode(buf.get(off..).ok_or(ProtoError::BadCaps("cap offset"))?)?;
        if cap.id == CAP_SPARSE_MMAP {
            let body_off = off
                .checked_add(CapHeader::SIZE)
                .ok_or(ProtoError::BadCaps("offset overflow"))?;
            let body = buf.get(body_off..).ok_or(ProtoError::BadCaps("cap body"))?;
            let sh = SparseMmapHdr::decode(body)?;
            let n = sh.nr_areas as usize;
            let need = sparse_cap_len(n).saturating_sub(CapHeader::SIZE);
            if body.len() < need {
                return Err(ProtoError::Short {
                    need,
                    have: body.len(),
                });
            }
            let mut areas = Vec::with_capacity(n.min(64));
            for i in 0..n {
                let start = SparseMmapHdr::SIZE + i * SparseArea::SIZE;
                let a = SparseArea::decode(body.get(start..).ok_or(ProtoError::BadCaps("area"))?)?;
                areas.push(a);
            }
            return Ok(Some(areas));
        }
        if cap.next == 0 {
            return Ok(None);
        }
        off = cap.next as usize;
    }
    Err(ProtoError::BadCaps("capability chain too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_spec() {
        assert_eq!(Header::SIZE, 16);
        assert_eq!(VersionHdr::SIZE, 4);
        assert_eq!(DmaMap::SIZE, 32);
        assert_eq!(DmaUnmap::SIZE, 24);
        assert_eq!(DeviceInfoMsg::SIZE, 16);
        assert_eq!(RegionInfoMsg::SIZE, 32);
        assert_eq!(CapHeader::SIZE, 8);
        assert_eq!(RegionIoFdsMsg::SIZE, 16);
        assert_eq!(IrqInfoMsg::SIZE, 16);
        assert_eq!(IrqSetMsg::SIZE, 20);
        assert_eq!(RegionAccess::SIZE, 16);
        assert_eq!(DmaRw::SIZE, 16);
        assert_eq!(WriteMultiEntry::SIZE, 24);
        assert_eq!(DeviceFeatureMsg::SIZE, 8);
        assert_eq!(MigDataMsg::SIZE, 8);
    }

    #[test]
    fn header_roundtrip_and_flags() {
        let h = Header::command(7, Command::RegionWrite, 20);
        let b = h.bytes().to_vec();
        assert_eq!(b.len(), 16);
        let d = Header::decode(&b).unwrap();
        assert_eq!(d, h);
        assert_eq!(d.msg_size, 36);
        assert!(d.is_command() && !d.no_reply() && !d.is_error());
        assert_eq!(d.cmd(), Some(Command::RegionWrite));
        let e = Header::error_reply(&d, 22);
        assert!(e.is_reply() && e.is_error());
        assert_eq!((e.msg_id, e.command, e.msg_size, e.error), (7, 10, 16, 22));
        assert_eq!(
            Header::decode(&b[..15]),
            Err(ProtoError::Short { need: 16, have: 15 })
        );
        let bad = Header { msg_size: 3, ..h };
        assert_eq!(bad.payload_len(), None);
    }

    #[test]
    fn every_command_number_roundtrips() {
        for n in 0u16..40 {
            match Command::from_u16(n) {
                Some(c) => assert_eq!(c as u16, n),
                None => assert!(n == 0 || n > 18),
            }
        }
    }

    fn rt<T: Wire + PartialEq + core::fmt::Debug>(v: T) {
        let b = v.bytes().to_vec();
        assert_eq!(T::decode_exact(&b).unwrap(), v);
        assert!(T::decode(&b[..b.len() - 1]).is_err());
        let mut longer = b.clone();
        longer.push(0);
        assert!(T::decode_exact(&longer).is_err());
        assert_eq!(T::decode(&longer).unwrap(), v);
    }

    #[test]
    fn payloads_roundtrip() {
        rt(VersionHdr { major: 0, minor: 2 });
        rt(DmaMap {
            argsz: 32,
            flags: 3,
            offset: 4096,
            addr: 1 << 30,
            size: 8192,
        });
        rt(DmaUnmap {
            argsz: 24,
            flags: DMA_UNMAP_FLAG_ALL,
            addr: 0,
            size: 0,
        });
        rt(DeviceInfoMsg {
            argsz: 16,
            flags: 3,
            num_regions: 9,
            num_irqs: 5,
        });
        rt(RegionInfoMsg {
            argsz: 80,
            flags: 15,
            index: 0,
            cap_offset: 32,
            size: 1 << 14,
            offset: 0,
        });
        rt(RegionIoFdsMsg {
            argsz: 16,
            flags: 0,
            index: 1,
            count: 0,
        });
        rt(IrqInfoMsg {
            argsz: 16,
            flags: 1,
            index: 2,
            count: 8,
        });
        rt(IrqSetMsg {
            argsz: 20,
            flags: 0x24,
            index: 2,
            start: 0,
            count: 4,
        });
        rt(RegionAccess {
            offset: 0x1000,
            region: 0,
            count: 4,
        });
        rt(DmaRw {
            addr: 0x2000,
            count: 512,
        });
        rt(WriteMultiEntry {
            offset: 8,
            region: 0,
            count: 4,
            data: [1, 2, 3, 4, 0, 0, 0, 0],
        });
        rt(DeviceFeatureMsg {
            argsz: 16,
            flags: FEATURE_GET | 1,
        });
        rt(MigDataMsg {
            argsz: 8,
            size: 100,
        });
    }

    #[test]
    fn sparse_cap_roundtrip() {
        let areas = [
            SparseArea {
                offset: 0x1000,
                size: 0x1000,
            },
            SparseArea {
                offset: 0x3000,
                size: 0x1000,
            },
        ];
        let info = RegionInfoMsg {
            argsz: (RegionInfoMsg::SIZE + sparse_cap_len(2)) as u32,
            flags: REGION_FLAG_CAPS | REGION_FLAG_MMAP,
            index: 0,
            cap_offset: 32,
            size: 0x4000,
            offset: 0,
        };
        let mut buf = info.bytes().to_vec();
        encode_sparse_cap(&areas, &mut buf);
        assert_eq!(buf.len(), 32 + 8 + 8 + 32);
        assert_eq!(parse_sparse_areas(&buf).unwrap().unwrap(), areas.to_vec());
        // truncated chain is an error, not a panic
        assert!(parse_sparse_areas(&buf[..buf.len() - 1]).is_err());
        // cap offset pointing into the struct is rejected
        let mut bad = buf.clone();
        bad[12] = 4;
        assert!(parse_sparse_areas(&bad).is_err());
        // a self-referencing chain terminates
        let mut cyc = buf.clone();
        cyc[32] = 9; // unknown id
        cyc[36..40].copy_from_slice(&32u32.to_ne_bytes());
        assert!(parse_sparse_areas(&cyc).is_err());
        // no caps flag
        let plain = RegionInfoMsg {
            flags: REGION_FLAG_MMAP,
            ..info
        };
        assert_eq!(parse_sparse_areas(plain.bytes()).unwrap(), None);
    }
}
