//! Signatures, layouts and classification: pure data, no unsafe code.
//!
//! - [`Signature`] / [`Type`]: C signatures parsed from text or built in code,
//!   with the x86-64 C layout of structs.
//! - [`CallConv`]: SysV x86-64 or Win64.
//! - [`classify`]: a signature and a convention to a [`CallLayout`], the
//!   register or stack location of every part of every argument and result.
//! - [`Registry`]: interns signatures to [`SigId`]s, one per distinct shape.

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
pub use registry::{Registry, SigId};
pub use signature::{MAX_PARAMS, Signature, SignatureBuilder};
pub use types::{Field, MAX_NESTING, MAX_STRUCT_SIZE, Scalar, SlotExt, StructType, Type};
