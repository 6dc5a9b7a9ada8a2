//! NVMe command decoding and execution: a stream of SQEs (and raw register/doorbell
//! accesses) against a live controller over fake guest memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_nvme::fuzzing::fuzz_commands(data);
});
