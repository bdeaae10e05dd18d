//! The fuzz targets' logic, as plain functions of the input bytes: the
//! cargo-fuzz targets (fuzz_targets/) call them on what libFuzzer makes, and
//! the crate's ordinary tests (tests/fuzz_corpus.rs) call them on every file
//! of the checked-in corpus (corpus/<target>/). Each one panics exactly when
//! it finds something wrong; any input that is merely invalid returns.
//!
//! - [`sig_text`]: signature text parsed, printed and parsed again; the
//!   classification of every parsed signature checked in both conventions.
//! - [`program_text`]: program text through `parse_program` (never a panic);
//!   a parsed program printed by this module and parsed again gives the same
//!   program.
//! - [`bridge_calls`]: a signature parsed, classified, and called from every
//!   exit stub into every entry point of both backends, in both conventions:
//!   what the host receives and what the caller gets back must be the values
//!   sent.
//! - [`tiers_agree`]: the bytes drive a generator of valid, terminating
//!   programs, run interpreted, tiered at thresholds 1 to 4 and with every
//!   guard forced to deoptimize: every run gives the same results, traps and
//!   memory.
#![allow(dead_code, unused_imports)]

pub(crate) mod calls;
pub(crate) mod program;
pub(crate) mod sig;
pub(crate) mod tiers;

pub use calls::bridge_calls;
pub use program::program_text;
pub use sig::sig_text;
pub use tiers::{tiers_agree, tiers_program};

/// Reads fuzzer bytes as choices; past the end every read is 0, so any
/// input, however short, describes one whole case.
pub(crate) struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data, at: 0 }
    }

    pub(crate) fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    /// A number in `0..n` (`n` at most 256 for an even spread).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        usize::from(self.u8()) % n.max(1)
    }

    /// True `pct` times in 100 (roughly: one byte decides).
    pub(crate) fn chance(&mut self, pct: u32) -> bool {
        u32::from(self.u8()) * 100 < pct * 256
    }

    pub(crate) fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.at >= self.data.len()
    }
}
