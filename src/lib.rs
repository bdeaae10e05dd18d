//! # tierbridge
//!
//! A mixed-mode calling-convention bridge: interpreters and native code
//! calling each other through the native C conventions, in both directions.
//!
//! ## Organization
//!
//! The crate is layered; each layer only uses the ones above it (`tier`
//! stands below `thunks` and `host`, and above `interp`, which it never
//! imports).
//!
//! - [`abi`] — **pure data, no unsafe code.** C signatures (parsed from text
//!   or built in code), their x86-64 C layout, the closed [`abi::CallConv`]
//!   enum, and [`abi::classify`]: which register or stack slot every part of
//!   every argument travels in. Interned in an [`abi::Registry`].
//! - [`host`] — the interpreter side of the boundary: the slot convention,
//!   the [`host::Host`] trait and raw dispatcher an entry point calls, and the
//!   policy that keeps failures and panics from ever unwinding through native
//!   frames.
//! - [`native`] — native libraries and their symbols (`dlopen`/`dlsym`),
//!   with errors that name the library and the symbol: how the crate and
//!   its users find the C functions they call.
//! - [`stack`] — the native stack every tier shares: each thread's limit,
//!   checked by entries from C, by the reference interpreter, by compiled
//!   code's call guards and by exit calls with large arguments, so running
//!   out is a typed error instead of a crash.
//! - [`thunks`] — **where the unsafe code lives.** A [`thunks::Bridge`] makes
//!   exit stubs (interpreter → native) and entry points (native →
//!   interpreter) through one of two backends behind one API: x86-64 code
//!   generated from the classification (dynasm, W^X executable memory; one
//!   copy of the code per machine shape, shared by every signature of that
//!   shape), or libffi where code cannot be generated.
//! - [`tier`] — tiers for any interpreter and any JIT, knowing no bytecode:
//!   executable memory for anyone's code ([`tier::CodeMemory`]), entry cells
//!   with stable native pointers, hotness counted from the interpreter and
//!   from C, a [`tier::Compiler`] the user plugs in, and the OSR and
//!   deoptimization protocols ([`tier::TierTable`]).
//! - [`visibility`] — what tools see of generated code: a name and unwind
//!   rows for every region, an `.eh_frame` registered with the unwinder
//!   while the code lives, perf map and jitdump output, the GDB JIT
//!   interface.
//! - [`interp`] — a reference interpreter over slots that uses the bridge
//!   end to end (natives through exit stubs, interpreted functions as C
//!   function pointers), with a baseline JIT: one client of [`tier`].
//! - `cranelift` (feature `cranelift`) — Cranelift code calling C: the
//!   Cranelift signature of a C signature (struct eightbytes, sret,
//!   extension) and a call lowered from slots, from the classification.
//! - `wasm` (feature `wasmi`) — the embedding in the wasmi interpreter:
//!   native imports through exit stubs, exports as C function pointers.
//! - Internal modules, each with unsafe code of its own: `table` (the
//!   append-only tables by signature id that the registry and the backends
//!   keep their entries in, read without locks), `code` (the one place a code
//!   address becomes something callable) and `sys` (errno and the operating
//!   system's memory primitives).
//!
//! Conventions relied upon are written in `ABI.md` at the repository root.
//!
//! ## Example: calling C from slots
//!
//! ```
//! use tierbridge::abi::{CallConv, Signature};
//! use tierbridge::thunks::Bridge;
//!
//! extern "C" fn add(a: i32, b: i8) -> i64 { a as i64 + b as i64 }
//!
//! let bridge = Bridge::libffi();
//! let stub = bridge.exit_stub(&Signature::parse("(i32,i8)->i64")?, CallConv::SysV)?;
//! let args = [40u64, (-2i64) as u64];
//! let mut ret = [0u64];
//! // SAFETY: `add` has exactly this signature.
//! unsafe { stub.call(add as *const _, &args, &mut ret)? };
//! assert_eq!(ret[0] as i64, 38);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod abi;
mod code;
#[cfg(feature = "cranelift")]
pub mod cranelift;
pub mod host;
pub mod interp;
pub mod native;
pub mod stack;
mod sys;
mod table;
pub mod thunks;
pub mod tier;
pub mod visibility;
#[cfg(feature = "wasmi")]
pub mod wasm;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
