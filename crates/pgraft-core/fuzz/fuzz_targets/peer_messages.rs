#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pgraft_core::fuzzing::peer_messages(data));
