//! Signatures, layouts and classification: pure data, no unsafe code.
//!
//! - [`Signature`] / [`Type`]: C signatures parsed from text or built in code,
//!   with the x86-64 C layout of structs.
//! - [`CallConv`]: SysV x86-64 or Win64.
//! - [`classify`]: a signature and a convention to a [`CallLayout`], the
//!   register or stack location of every part of every argument and result.
//! - [`Registry`]: interns signatures to [`SigId`]s, one per distinct shape.
//!
//! # The signature text
//!
//! [`Signature::parse`] (and `str::parse::<Signature>()`) reads:
//!
//! ```text
//! sig     := '(' params? ')' '->' ret
//! params  := type (',' type)* (',' '...' (',' type)*)?  |  '...' (',' type)*
//! ret     := type | 'void'
//! type    := scalar | struct
//! scalar  := 'i8' | 'u8' | 'i16' | 'u16' | 'i32' | 'u32' | 'i64' | 'u64'
//!          | 'f32' | 'f64' | 'bool' | 'ptr'
//! struct  := 'packed'? '{' field (',' field)* '}'
//! field   := type | '[' type ';' N ']'      (an array, only as a field; N >= 1)
//! ```
//!
//! - Spaces may stand around any token; printing a signature gives the
//!   canonical form without them, which parses back to an equal signature.
//! - Scalars are the fixed-width C types: `i8`…`u64` are `int8_t`…`uint64_t`,
//!   `f32`/`f64` are `float`/`double`, `bool` is `_Bool` (one byte, 0 or 1),
//!   `ptr` is any data or function pointer (8 bytes). Each scalar's size is
//!   its alignment.
//! - Structs have the x86-64 C layout: fields in order, each at the next
//!   multiple of its alignment; the struct aligned to its largest field and
//!   its size rounded up to that. `[T;N]` is N elements of T in a row.
//!   `packed{..}` is `__attribute__((packed))`: alignment 1, no padding. No
//!   empty structs, at most [`MAX_NESTING`] levels, at most
//!   [`MAX_STRUCT_SIZE`] bytes.
//! - `...` marks a variadic function and ends the declared parameters. Types
//!   after it describe one call site's variadic arguments (already promoted:
//!   no `f32`, nothing narrower than 32 bits, no `bool`: else
//!   [`AbiError::UnpromotedVararg`]), as [`Signature::with_varargs`] makes
//!   them. At most [`MAX_PARAMS`] parameters in all.
//! - Malformed text is [`AbiError::Parse`] with the byte offset and what was
//!   expected there; a well-formed but invalid type is its own error.
//!
//! ```
//! use tierbridge::abi::Signature;
//! for text in [
//!     "()->void",
//!     "(u32,i16,u8)->i64",
//!     "(ptr,...)->i32",         // printf
//!     "(ptr,...,f64,i32)->i32", // one call of it, with a double and an int
//!     "({f32,i32})->{f32,i32}",
//!     "({[u8;17]})->{[u8;17]}",
//!     "(packed{u16,u8,u32})->packed{u16,u8,u32}",
//! ] {
//!     let sig = Signature::parse(text)?;
//!     assert_eq!(sig.to_string(), text); // the canonical form round-trips
//! }
//! let spaced = Signature::parse("( i32 , { f32 , f32 } , ... ) -> f64")?;
//! assert_eq!(spaced.to_string(), "(i32,{f32,f32},...)->f64");
//! assert!(Signature::parse("(i32,)->void").is_err()); // a byte offset says where
//! # Ok::<(), tierbridge::abi::AbiError>(())
//! ```

mod callconv;
mod classify;
mod error;
mod registry;
mod signature;
mod types;

pub use callconv::CallConv;
pub use classify::{
    ArgLayout, ArgPass, CallLayout, EightbyteClass, Ext, Gpr, Loc, Part, PartKind, RetPass,
    SYSV_INT_ARGS, SYSV_SSE_ARGS, WIN64_INT_ARGS, WIN64_SHADOW_BYTES, classify, sysv_eightbytes,
    win64_in_register,
};
pub use error::{AbiError, Result};
pub use registry::{Registry, RegistryStats, SigId};
pub use signature::{MAX_PARAMS, Signature, SignatureBuilder};
pub use types::{Field, MAX_NESTING, MAX_STRUCT_SIZE, Scalar, SlotExt, StructType, Type};
