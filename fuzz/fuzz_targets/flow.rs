//! Fuzzes the flow-control accounting directly: no runtime per input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| grpctunnel::fuzzing::flow(data));
