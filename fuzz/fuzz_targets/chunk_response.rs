#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| baton_fuzz::protocol::fuzz_chunk_response(data));
