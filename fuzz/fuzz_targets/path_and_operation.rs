#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lookergate_fuzz::path_and_operation(data));
