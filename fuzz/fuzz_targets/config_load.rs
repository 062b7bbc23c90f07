#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lookergate_fuzz::config_load(data));
