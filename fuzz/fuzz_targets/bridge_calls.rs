//! cargo-fuzz target `bridge_calls`: see `common::bridge_calls`.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::bridge_calls(data));
