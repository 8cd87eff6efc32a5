#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drainwatch::fuzz::web_config(data));
