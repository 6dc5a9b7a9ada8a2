//! PRP / SGL walker over a fake guest memory, cross-checked against the reference walker.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_nvme::fuzzing::fuzz_walker(data);
});
