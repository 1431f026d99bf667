#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern::fuzz_targets::handoff(data));
