#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hotmem_fuzz::migration::run_incoming(data));
