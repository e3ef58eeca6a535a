//! cargo-fuzz entry point; the target itself is `targets/prelogin.rs`, shared with the stable
//! seed replay in `crates/proto/tests/fuzz_seeds.rs`.
#![no_main]

#[path = "../targets/prelogin.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::fuzz_one(data));
