#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hotmem_fuzz::snapshot::run_reader(data));
