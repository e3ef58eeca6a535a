//! cargo-fuzz entry point; the target itself is `targets/greeting.rs`, shared with the stable
//! seed replay in `crates/proto/tests/fuzz_seeds.rs`.
#![no_main]

#[path = "../targets/greeting.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::fuzz_one(data));
