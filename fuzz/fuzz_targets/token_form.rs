//! The token endpoint's form parser never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = authproxy::fuzzing::token_form(data);
});
