//! cargo-fuzz target `program_text`: see `common::program_text`.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::program_text(data));
