#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| drainwatch::fuzz::tcp_info(data));
