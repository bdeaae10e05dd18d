//! cargo-fuzz target `tiers_agree`: see `common::tiers_agree`.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::tiers_agree(data));
