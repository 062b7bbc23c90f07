#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lookergate_fuzz::jwks_parse(data));
