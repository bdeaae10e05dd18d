//! Tiers: patchable entry cells, tier-up to the baseline JIT, on-stack
//! replacement and deoptimization (used by [`interp::Runtime`](crate::interp::Runtime)).
//!
//! Every interpreted function has an **entry cell**: an atomic code pointer,
//! first the function's interpreter entry point, then its JIT code once it is
//! hot. Native code gets a 16-byte stub that jumps through the cell, JIT code
//! calls through the cell, and the interpreter checks it at every call, so
//! after tier-up every new call from anywhere reaches the JIT code; a call
//! already running finishes in the code it started in.

#[cfg(target_arch = "x86_64")]
pub(crate) mod jit;

/// When functions tier up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierConfig {
    /// Calls of a function before it is compiled (`u32::MAX`: never).
    pub call_threshold: u32,
    /// Backward branches taken in one function before it is compiled and the
    /// running frame moves into the compiled code (OSR).
    pub loop_threshold: u32,
    /// Make every guard in compiled code fail, so that each one deoptimizes
    /// back to the interpreter (for testing that both agree).
    pub force_deopt: bool,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            call_threshold: 1000,
            loop_threshold: 1000,
            force_deopt: false,
        }
    }
}

impl TierConfig {
    /// Never tier up: the pure interpreter.
    pub fn interpreter_only() -> TierConfig {
        TierConfig {
            call_threshold: u32::MAX,
            loop_threshold: u32::MAX,
            force_deopt: false,
        }
    }
}

/// What the tiers did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Functions compiled.
    pub compiled: u64,
    /// Running interpreter frames moved into compiled code.
    pub osr_entries: u64,
    /// Guard failures that resumed in the interpreter.
    pub deopts: u64,
}
