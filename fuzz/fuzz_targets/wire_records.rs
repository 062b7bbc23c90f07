#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lookergate_fuzz::wire_records(data));
