#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mp_fuzz::checked(mp_fuzz::message, data));
