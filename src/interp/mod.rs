//! A reference interpreter that uses the bridge end to end: a small typed
//! stack bytecode over 8-byte slots, written in a readable text form.
//!
//! ```text
//! extern abs "(i32)->i32"            # a native function, resolved by its symbol
//!
//! fn sum_abs(n: i64) -> i64          # parameters and locals are slots
//!   local i: i64
//!   local acc: i64
//! top:
//!   local.get i
//!   local.get n
//!   i64.ge_s
//!   br_if done
//!   local.get acc
//!   local.get i
//!   call abs
//!   i64.add
//!   local.set acc
//!   local.get i
//!   i64.const 1
//!   i64.add
//!   local.set i
//!   br top
//! done:
//!   local.get acc
//!   return
//! end
//! ```
//!
//! Values are `i64` (every integer and pointer type, extended to 64 bits as
//! its declared type says, exactly as slots hold them) or `f64`. Functions
//! are verified before they run: every instruction has known operand types
//! and a known stack depth, so a malformed program is an [`InterpError`] with
//! a line and column, never a panic. Programs may load and store through
//! pointers (to work with C data): like C code, they are trusted.
//!
//! [`Runtime`] runs programs: calls between interpreted functions, calls to
//! native functions through exit stubs, and interpreted functions handed to C
//! as plain function pointers through entry points.

mod exec;
#[cfg(tierbridge_codegen)]
mod jit;
mod text;
mod verify;

pub use exec::Runtime;
pub use text::parse_program;

use thiserror::Error;

use crate::abi::{Scalar, Signature};

/// Errors of the interpreter layer.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum InterpError {
    /// Malformed program text or a program that does not verify.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A run-time trap (division by zero, a null pointer, a failed native call).
    #[error("trap in {func} at instruction {pc}: {message}")]
    Trap {
        /// The function.
        func: String,
        /// Its instruction index.
        pc: usize,
        /// What happened.
        message: String,
    },
    /// A call with the wrong arguments, or to an unknown function.
    #[error("{0}")]
    Call(String),
    /// A native function that is not bound.
    #[error(
        "native function {0} has no address (bind it with Runtime::bind_native or look it up with Runtime::bind_natives_from)"
    )]
    Unbound(String),
    /// A native function's symbol was not found (the error names it and
    /// every library searched).
    #[error(transparent)]
    Native(#[from] crate::native::NativeError),
    /// The bridge refused something.
    #[error(transparent)]
    Thunk(#[from] crate::thunks::ThunkError),
    /// The tier layer refused something.
    #[error(transparent)]
    Tier(#[from] crate::tier::TierError),
}

/// The class of an interpreter value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Integers and pointers: an `i64` slot.
    Int,
    /// `f64`.
    Float,
}

impl Kind {
    /// The class a C scalar travels in.
    pub fn of(s: Scalar) -> Option<Kind> {
        match s {
            Scalar::F64 => Some(Kind::Float),
            Scalar::F32 => None,
            _ => Some(Kind::Int),
        }
    }
}

/// One instruction. Branch targets and local, function and native indices
/// are resolved when the text is parsed.
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Op {
    ConstI(i64),
    ConstF(u64),
    Get(u32),
    Set(u32),
    Tee(u32),
    Drop,
    IAdd,
    ISub,
    IMul,
    IDivS,
    IRemS,
    IAnd,
    IOr,
    IXor,
    IShl,
    IShrS,
    IShrU,
    IEq,
    INe,
    ILtS,
    ILeS,
    IGtS,
    IGeS,
    IEqz,
    FAdd,
    FSub,
    FMul,
    FDiv,
    FEq,
    FNe,
    FLt,
    FLe,
    FGt,
    FGe,
    IToF,
    FToI,
    /// Pop an address, push the sign-extended `i32` there.
    Load32S,
    /// Pop an address, push the `i64` there.
    Load64,
    /// Pop an address, push the `f64` there.
    LoadF64,
    /// Pop a value and an address (value on top), store the low 32 bits.
    Store32,
    /// Pop a value and an address (value on top), store 64 bits.
    Store64,
    Br(u32),
    BrIf(u32),
    BrUnless(u32),
    Call(u32),
    CallNative(u32),
    /// Push the native entry pointer of an interpreted function (`ref.func`).
    FuncAddr(u32),
    Return,
}

/// A function of a program.
#[derive(Clone, Debug)]
pub struct Function {
    /// Its name.
    pub name: String,
    /// Its C signature (parameter and result types as declared).
    pub sig: Signature,
    /// Kinds of all locals: parameters first, then declared locals.
    pub locals: Vec<Kind>,
    /// Names of the locals, for messages.
    pub local_names: Vec<String>,
    /// The code.
    pub code: Vec<Op>,
    /// Source position (line, column) of each instruction.
    pub positions: Vec<(usize, usize)>,
    /// Operand-stack depth before each instruction (from the verifier).
    pub depth: Vec<u32>,
    /// The deepest the operand stack gets.
    pub max_stack: u32,
    /// Instruction indices that are targets of a backward branch (loop headers).
    pub loop_headers: Vec<u32>,
}

/// A native function a program calls.
#[derive(Clone, Debug)]
pub struct Native {
    /// The symbol.
    pub name: String,
    /// Its C signature.
    pub sig: Signature,
}

/// A parsed and verified program. Only [`parse_program`] makes one (the
/// verifier's facts — operand depths, kinds — are what the interpreter and
/// the JIT rely on, so a program cannot be built or changed by hand).
#[derive(Clone, Debug, Default)]
pub struct Program {
    pub(crate) functions: Vec<Function>,
    pub(crate) natives: Vec<Native>,
}

impl Program {
    /// Interpreted functions, by index.
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// Native functions, by index.
    pub fn natives(&self) -> &[Native] {
        &self.natives
    }

    /// The index of an interpreted function.
    pub fn function(&self, name: &str) -> Option<u32> {
        self.functions
            .iter()
            .position(|f| f.name == name)
            .map(|i| i as u32)
    }
}
