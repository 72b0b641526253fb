//! Fuzzes the pure wire layer directly (message framing, reassembly,
//! metadata, status, grpc-timeout, frame codecs): no runtime per input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| grpctunnel::fuzzing::wire(data));
