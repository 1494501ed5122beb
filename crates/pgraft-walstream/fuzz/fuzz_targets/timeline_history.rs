#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pgraft_walstream::fuzzing::timeline_history(data));
