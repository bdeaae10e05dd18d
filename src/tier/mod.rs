//! Tiers for any interpreter and any JIT: executable memory, entry cells,
//! hotness with a compiler the user plugs in, on-stack replacement (OSR) and
//! deoptimization.
//!
//! This layer knows signatures, cells, code memory and frames of slots, and
//! nothing of any bytecode. The reference interpreter
//! (`interp::Runtime`) and its baseline JIT are one
//! client; an interpreter of yours is another, with nothing private.
//!
//! - [`CodeMemory`] places anyone's machine code (dynasm, Cranelift, bytes
//!   written by hand) W^X with the bridge's strategy, as a named [`Code`];
//!   [`CodeMemory::install_with`] hands out the final address first, for
//!   position-dependent code.
//! - A [`TierTable`] holds one **entry cell** per function: an atomic code
//!   pointer, first the function's interpreter entry point (an
//!   [`EntryPoint`](crate::thunks::EntryPoint) into your [`Interpreter`]),
//!   later its compiled code. C gets a stable native pointer
//!   ([`TierTable::native_ptr`], a `jmp [cell]` stub), compiled code calls
//!   through [`TierTable::cell_addr`], and the interpreter calls
//!   [`TierTable::call`], which runs compiled code through the signature's
//!   exit stub or tells it to interpret. After [`TierTable::publish`] every
//!   new call reaches the new code; [`TierTable::revert`] returns the
//!   function to the interpreter.
//! - **Hotness**: calls count wherever they come from (the interpreter, C
//!   through the native pointer, compiled code through the cell), back edges
//!   per declared loop header ([`TierTable::back_edge`]). Past the
//!   thresholds of [`TierConfig`] your [`Compiler`] is asked for code; a
//!   failure leaves the function interpreted and is counted.
//! - **OSR**: at a hot back edge the interpreter hands its frame (position,
//!   locals, operand stack) to [`TierTable::osr`]; the OSR entry runs the
//!   call to its end ([`OsrOutcome::Completed`]) or deoptimizes and hands a
//!   position and a frame back ([`OsrOutcome::Deopt`]). The frame buffers
//!   are the library's: on its stack for small frames, else reused from a
//!   per-thread pool.
//! - **Deoptimization**: compiled code leaves by describing its live state
//!   as slots in a [`RawFrame`] and calling the table's helper
//!   ([`TierTable::deopt_helper`]): your [`Interpreter::resume`] continues
//!   there and its result becomes the compiled code's result. No stack
//!   surgery, so it fits any code generator. Functions that deoptimize too
//!   often are reverted.
//!
//! The protocols (who owns which memory, which thread may do what, when code
//! may be freed) are written in ABI.md, "Tiers".

mod code;
mod frame;
mod table;

pub use code::{Code, CodeMemory};
pub use frame::{FrameState, OSR_COMPLETED, OSR_DEOPT, OsrEntryFn, RawFrame};
pub use table::{
    CompileReason, CompileRequest, Compiled, Compiler, DeoptFn, FnDecl, FnStats, Interpreter,
    OsrOutcome, TierCall, TierTable,
};

use thiserror::Error;

use crate::host::EntryError;
use crate::thunks::ThunkError;

/// Result alias of the tier layer.
pub type Result<T, E = TierError> = std::result::Result<T, E>;

/// What a [`Compiler`] returns when it cannot compile: any error. The table
/// counts it and keeps the function interpreted.
pub type CompileError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the tier layer.
///
/// Only [`TierError::Internal`] can mean a bug in tierbridge.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TierError {
    /// No executable memory here (a libffi bridge: another CPU, a build with
    /// `--cfg tierbridge_no_codegen`, or no strategy works).
    #[error("no executable memory: {reason}")]
    NoCodeMemory {
        /// Why.
        reason: String,
    },
    /// Placing code failed, or an offset is outside the code.
    #[error("code memory: {0}")]
    Code(String),
    /// A function id this table never gave out.
    #[error("no function {0} in this tier table")]
    UnknownFunction(u64),
    /// A declaration the table cannot take.
    #[error("function {name}: {reason}")]
    BadDecl {
        /// The function's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A frame that does not fit the function.
    #[error("function {func}: {reason}")]
    BadFrame {
        /// The function's id.
        func: u64,
        /// What is wrong.
        reason: String,
    },
    /// The compiler failed (the function stays interpreted).
    #[error("compiling {name}: {message}")]
    Compile {
        /// The function's name.
        name: String,
        /// The compiler's error.
        message: String,
    },
    /// Compiled code, or the interpreter it deoptimized into, failed while
    /// running a call (the error the interpreter reported, or a panic).
    #[error("a call into tiered code failed: {0}")]
    Failed(EntryError),
    /// The bridge refused something (a signature, a stub, an entry point).
    #[error(transparent)]
    Thunk(ThunkError),
    /// A broken invariant: a bug in tierbridge.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ThunkError> for TierError {
    fn from(e: ThunkError) -> TierError {
        match e {
            ThunkError::Callback(e) => TierError::Failed(e),
            e => TierError::Thunk(e),
        }
    }
}

impl From<std::convert::Infallible> for TierError {
    fn from(e: std::convert::Infallible) -> TierError {
        match e {}
    }
}

/// When functions tier up, and when they come back down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierConfig {
    /// Calls of a function before it is compiled (`u32::MAX`: never).
    pub call_threshold: u32,
    /// Back edges taken to one loop header before the running frame asks
    /// for an OSR entry there (`u32::MAX`: never).
    pub loop_threshold: u32,
    /// Asks compilers to make every guard fail, so that each one
    /// deoptimizes back to the interpreter (for testing that both agree).
    /// A hint: the table only passes it on ([`CompileRequest::config`]).
    pub force_deopt: bool,
    /// Deoptimizations of one function's code before the table reverts the
    /// function to the interpreter (its counters start again; it may be
    /// compiled again). `u32::MAX`: never revert.
    pub deopt_threshold: u32,
    /// Compilations of one function at most (successful or not); past it
    /// the function stays where it is.
    pub max_compiles: u32,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            call_threshold: 1000,
            loop_threshold: 1000,
            force_deopt: false,
            deopt_threshold: 100,
            max_compiles: 4,
        }
    }
}

impl TierConfig {
    /// Never tier up: the pure interpreter.
    pub fn interpreter_only() -> TierConfig {
        TierConfig {
            call_threshold: u32::MAX,
            loop_threshold: u32::MAX,
            ..TierConfig::default()
        }
    }

    /// Compile at the first call and OSR at the first back edge (for tests
    /// that every tier agrees).
    pub fn eager() -> TierConfig {
        TierConfig {
            call_threshold: 1,
            loop_threshold: 1,
            ..TierConfig::default()
        }
    }
}

/// What the tiers did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Successful compilations.
    pub compiled: u64,
    /// Compilations that failed (the function stayed interpreted).
    pub compile_failures: u64,
    /// Running interpreter frames moved into compiled code.
    pub osr_entries: u64,
    /// Compiled code that left for the interpreter (guard failures), from
    /// function entries and OSR entries alike.
    pub deopts: u64,
    /// Functions returned to the interpreter ([`TierTable::revert`], or too
    /// many deoptimizations).
    pub reverts: u64,
}
