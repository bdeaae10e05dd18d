//! Errors of the `abi` layer.

use thiserror::Error;

/// Result alias of the `abi` layer.
pub type Result<T, E = AbiError> = std::result::Result<T, E>;

/// Everything that can be wrong with a signature or its classification.
///
/// Every variant describes bad input; none can only mean a bug in the library.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AbiError {
    /// Signature text that does not follow the grammar.
    #[error("malformed signature at byte {offset}: expected {expected}, found {found}")]
    Parse {
        /// Byte offset into the text where the problem starts.
        offset: usize,
        /// What the grammar allows at that point.
        expected: &'static str,
        /// What was there instead (`end of input` at the end).
        found: String,
    },
    /// `void` used as a parameter type.
    #[error("void is not a parameter type (only a return type)")]
    VoidParam,
    /// A struct with no fields (not C).
    #[error("a struct needs at least one field")]
    EmptyStruct,
    /// An array field `[T;0]`.
    #[error("an array field needs at least one element")]
    EmptyArray,
    /// Structs nested deeper than the limit.
    #[error("structs nested deeper than {max} levels")]
    NestingTooDeep {
        /// The limit.
        max: usize,
    },
    /// A struct larger than the limit.
    #[error("struct larger than {max} bytes")]
    StructTooLarge {
        /// The limit in bytes.
        max: u32,
    },
    /// More parameters than the limit.
    #[error("{count} parameters; at most {max} are supported")]
    TooManyParams {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Variadic arguments given for a signature that has no `...`.
    #[error("signature {0} is not variadic")]
    NotVariadic(String),
    /// Variadic arguments given twice.
    #[error("signature {0} already has its variadic arguments")]
    VarargsAlreadyGiven(String),
    /// A variadic argument of a type C's default promotions never produce.
    #[error(
        "variadic argument {index} has type {ty}; C promotes it (f32 to f64, narrow integers and bool to i32)"
    )]
    UnpromotedVararg {
        /// Position of the argument in the full parameter list.
        index: usize,
        /// Its type.
        ty: String,
    },
    /// A calling convention name that is not known.
    #[error("unknown calling convention {0:?} (expected \"sysv\" or \"win64\")")]
    UnknownCallConv(String),
    /// The host is not one the x86-64 conventions describe.
    #[error("no x86-64 calling convention describes host {0}")]
    UnsupportedHost(String),
    /// A signature id that this registry never issued.
    #[error("unknown signature id {0}")]
    UnknownSigId(u32),
}
