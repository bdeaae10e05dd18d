//! cargo-fuzz target `sig_text`: see `common::sig_text`.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::sig_text(data));
