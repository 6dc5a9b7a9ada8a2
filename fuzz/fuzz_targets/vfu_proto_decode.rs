//! Fuzzes every vfio-user decoder: header, payload structs, capability JSON, REGION_INFO
//! capability chains. Nothing may panic; decoded values must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfu_proto::*;

fn check<T: Wire + PartialEq + core::fmt::Debug>(data: &[u8]) {
    if let Ok(v) = T::decode(data) {
        assert_eq!(v.bytes(), &data[..T::SIZE]);
        assert_eq!(T::decode_exact(v.bytes()), Ok(v));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::decode(data) {
        let _ = (h.cmd(), h.payload_len(), h.is_reply(), h.no_reply());
        let e = Header::error_reply(&h, 22);
        assert!(e.is_error() && e.payload_len() == Some(0));
    }
    check::<Header>(data);
    check::<VersionHdr>(data);
    check::<DmaMap>(data);
    check::<DmaUnmap>(data);
    check::<DeviceInfoMsg>(data);
    check::<RegionInfoMsg>(data);
    check::<RegionIoFdsMsg>(data);
    check::<IrqInfoMsg>(data);
    check::<IrqSetMsg>(data);
    check::<RegionAccess>(data);
    check::<DmaRw>(data);
    check::<WriteMultiEntry>(data);
    check::<DeviceFeatureMsg>(data);
    check::<MigDataMsg>(data);
    if let Ok(c) = Capabilities::parse(data) {
        // whatever parses must survive an encode/parse round trip
        assert_eq!(Capabilities::parse(&c.to_json()), Ok(c));
    }
    if let Ok(Some(areas)) = parse_sparse_areas(data) {
        assert!(areas.len() * SparseArea::SIZE <= data.len());
    }
});
