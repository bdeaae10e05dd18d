//! Cranelift code calling C (feature `cranelift`): Cranelift has no notion of
//! C structs, so lowering a call with a struct by value or a struct result is
//! left to its frontend. This module does it from tierbridge's
//! classification ([`classify`]):
//!
//! - [`signature`]: the Cranelift signature of a C signature in a convention
//!   — eightbytes of structs in registers as `i64`/`f64`/`f32` parameters,
//!   structs in memory as `StructArgument`s, a hidden `StructReturn`
//!   pointer, narrow integers with their extension;
//! - [`call_from_slots`]: a whole call emitted into a function being built,
//!   its arguments read from tierbridge slots in memory and its result
//!   written back as slots (ABI.md, "Slots") — an exit stub in Cranelift IR.
//!
//! - [`exit_function`]: that call compiled on its own, an
//!   `extern "C" fn(target, args, ret)` placed in tierbridge's executable
//!   memory — the same contract as an exit stub's slot call;
//! - [`host_isa`] and [`compile`]: Cranelift for this machine, and a function
//!   to machine code that needs no relocation (place it with
//!   [`CodeMemory::install`](crate::tier::CodeMemory::install)).
//!
//! Variadic signatures are refused (Cranelift cannot set SysV's `%al` nor
//! duplicate Win64's variadic floating-point registers).

use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::{
    self, AbiParam, ArgumentPurpose, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, types,
};
use cranelift_codegen::isa::{CallConv as ClifConv, OwnedTargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use thiserror::Error;

use crate::abi::{ArgPass, CallConv, Part, PartKind, RetPass, Scalar, Signature, classify};
use crate::tier::{Code, CodeMemory, TierError};
use crate::visibility::Unwind;

/// Errors of the Cranelift adapter.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CraneliftError {
    /// A signature Cranelift cannot call this way.
    #[error("cannot lower {sig} for Cranelift: {reason}")]
    Unsupported {
        /// The signature.
        sig: String,
        /// Why.
        reason: String,
    },
    /// Cranelift has no code generator for this machine, or refused a setting.
    #[error("cranelift: no code generator here: {0}")]
    Isa(String),
    /// Cranelift refused the function (a verifier error, an unsupported
    /// instruction), or its code needs relocations.
    #[error("cranelift: {0}")]
    Compile(String),
    /// Placing the code failed.
    #[error(transparent)]
    Code(#[from] TierError),
}

/// Cranelift for the machine this runs on, optimizing for speed.
///
/// # Errors
/// [`CraneliftError::Isa`] where Cranelift has no backend for this CPU.
pub fn host_isa() -> Result<OwnedTargetIsa, CraneliftError> {
    let mut flags = settings::builder();
    // Stack probes inline: a call with large structs in memory grows the
    // frame past a guard page, which must be touched page by page.
    for (name, value) in [
        ("opt_level", "speed"),
        ("enable_probestack", "true"),
        ("probestack_strategy", "inline"),
    ] {
        flags
            .set(name, value)
            .map_err(|e| CraneliftError::Isa(format!("{name}={value}: {e}")))?;
    }
    cranelift_native::builder()
        .map_err(|e| CraneliftError::Isa(e.to_string()))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| CraneliftError::Isa(e.to_string()))
}

/// Compiles `func` for `isa` to machine code ready for
/// [`CodeMemory::install`]: other code is called by address (as
/// [`call_from_slots`] does), and the only relocations Cranelift may leave
/// — absolute addresses of the C library's `memcpy`, `memset`, `memmove`
/// and `memcmp`, which it calls to copy structs — are resolved here.
///
/// # Errors
/// [`CraneliftError::Compile`] when Cranelift refuses the function or the
/// code needs another relocation.
pub fn compile(isa: &OwnedTargetIsa, func: ir::Function) -> Result<Vec<u8>, CraneliftError> {
    compile_with_unwind(isa, func).map(|(bytes, _)| bytes)
}

/// [`compile`], with how to unwind through the code (Cranelift's own
/// description of its frames) for
/// [`CodeMemory::install_with_unwind`](crate::tier::CodeMemory::install_with_unwind):
/// backtraces, debuggers and profilers then walk through it.
///
/// # Errors
/// As [`compile`].
pub fn compile_with_unwind(
    isa: &OwnedTargetIsa,
    func: ir::Function,
) -> Result<(Vec<u8>, Unwind), CraneliftError> {
    use cranelift_codegen::FinalizedRelocTarget;
    use cranelift_codegen::binemit::Reloc;
    use cranelift_codegen::isa::unwind::UnwindInfo;
    let mut ctx = cranelift_codegen::Context::for_function(func);
    let code = ctx
        .compile(&**isa, &mut ControlPlane::default())
        .map_err(|e| CraneliftError::Compile(format!("{:?}", e.inner)))?;
    let unwind = match code.create_unwind_info(&**isa) {
        Ok(Some(UnwindInfo::SystemV(info))) => Unwind::Cranelift(info),
        _ => Unwind::Unknown,
    };
    let mut bytes = code.code_buffer().to_vec();
    // The C library, opened at the first relocation (most code has none).
    let mut libc = None;
    for r in code.buffer.relocs() {
        let symbol = match (&r.kind, &r.target) {
            (Reloc::Abs8, FinalizedRelocTarget::ExternalName(ir::ExternalName::LibCall(lc))) => {
                match lc {
                    ir::LibCall::Memcpy => "memcpy",
                    ir::LibCall::Memset => "memset",
                    ir::LibCall::Memmove => "memmove",
                    ir::LibCall::Memcmp => "memcmp",
                    other => {
                        return Err(CraneliftError::Compile(format!(
                            "the code calls the library function {other:?}, which this adapter does not provide"
                        )));
                    }
                }
            }
            (kind, target) => {
                return Err(CraneliftError::Compile(format!(
                    "the code needs a {kind:?} relocation to {target:?}; call other code by address"
                )));
            }
        };
        let libc = match &libc {
            Some(l) => l,
            None => libc.insert(
                crate::native::NativeLibrary::this_process()
                    .map_err(|e| CraneliftError::Compile(e.to_string()))?,
            ),
        };
        let addr = libc
            .symbol(symbol)
            .map_err(|e| CraneliftError::Compile(e.to_string()))?;
        let value = (addr as i64).wrapping_add(r.addend) as u64;
        let at = r.offset as usize;
        bytes
            .get_mut(at..at + 8)
            .ok_or_else(|| CraneliftError::Compile("a relocation past the code's end".into()))?
            .copy_from_slice(&value.to_le_bytes());
    }
    Ok((bytes, unwind))
}

/// A call of a C function of `sig` in `conv`, compiled by Cranelift on its
/// own: `extern "C" fn(target: *const c_void, args: *const u64, ret: *mut
/// u64)` (the host convention), reading the arguments from slots and
/// writing the result slots as an exit stub does, placed in `memory`.
///
/// # Errors
/// As [`signature`], [`host_isa`] and [`compile`].
pub fn exit_function(
    sig: &Signature,
    conv: CallConv,
    memory: &CodeMemory,
) -> Result<Code, CraneliftError> {
    let isa = host_isa()?;
    let mut outer = ir::Signature::new(isa.default_call_conv());
    outer.params.extend([AbiParam::new(types::I64); 3]);
    let mut func = ir::Function::with_name_signature(ir::UserFuncName::user(0, 0), outer);
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut func, &mut fctx);
    let block = b.create_block();
    b.append_block_params_for_function_params(block);
    b.switch_to_block(block);
    b.seal_block(block);
    let p = b.block_params(block).to_vec();
    call_from_slots(&mut b, sig, conv, p[0], p[1], p[2])?;
    b.ins().return_(&[]);
    b.finalize(isa.frontend_config());
    let (bytes, unwind) = compile_with_unwind(&isa, func)?;
    Ok(memory.install_with_unwind(&format!("cranelift exit {sig} {conv}"), &bytes, &unwind)?)
}

/// Cranelift's name for a convention.
pub fn call_conv(conv: CallConv) -> ClifConv {
    match conv {
        CallConv::SysV => ClifConv::SystemV,
        CallConv::Win64 => ClifConv::WindowsFastcall,
    }
}

fn scalar_param(s: Scalar, ptr: ir::Type) -> AbiParam {
    match s {
        Scalar::I8 => AbiParam::new(types::I8).sext(),
        Scalar::U8 | Scalar::Bool => AbiParam::new(types::I8).uext(),
        Scalar::I16 => AbiParam::new(types::I16).sext(),
        Scalar::U16 => AbiParam::new(types::I16).uext(),
        Scalar::I32 => AbiParam::new(types::I32).sext(),
        Scalar::U32 => AbiParam::new(types::I32).uext(),
        Scalar::I64 | Scalar::U64 => AbiParam::new(types::I64),
        Scalar::Ptr => AbiParam::new(ptr),
        Scalar::F32 => AbiParam::new(types::F32),
        Scalar::F64 => AbiParam::new(types::F64),
    }
}

/// The parameter or result one register part travels as.
fn part_param(p: &Part, ptr: ir::Type) -> AbiParam {
    match p.kind {
        PartKind::Scalar(s) => scalar_param(s, ptr),
        PartKind::IntBytes => AbiParam::new(types::I64),
        PartKind::SseBytes if p.size == 4 => AbiParam::new(types::F32),
        PartKind::SseBytes => AbiParam::new(types::F64),
        // A struct in memory: Cranelift copies it from the address given.
        PartKind::Memory => AbiParam::special(
            ptr,
            ArgumentPurpose::StructArgument(p.size.next_multiple_of(8)),
        ),
    }
}

fn unsupported(sig: &Signature, reason: &str) -> CraneliftError {
    CraneliftError::Unsupported {
        sig: sig.to_string(),
        reason: reason.to_string(),
    }
}

/// The Cranelift signature of `sig` in `conv` (`ptr` is the target's
/// pointer type): what a `call_indirect` of a C function of that signature
/// takes. Struct arguments in registers become one parameter per eightbyte,
/// structs in memory a `StructArgument` (the address of their bytes), Win64
/// aggregates passed by reference a pointer (to a copy the caller makes),
/// a result in memory a leading `StructReturn` pointer.
///
/// # Errors
/// [`CraneliftError::Unsupported`] for a variadic signature.
pub fn signature(
    sig: &Signature,
    conv: CallConv,
    ptr: ir::Type,
) -> Result<ir::Signature, CraneliftError> {
    if sig.is_variadic() {
        return Err(unsupported(sig, "variadic calls are not lowered"));
    }
    let layout = classify(sig, conv);
    let mut out = ir::Signature::new(call_conv(conv));
    match &layout.ret {
        RetPass::Void => {}
        RetPass::Sret { .. } => out
            .params
            .push(AbiParam::special(ptr, ArgumentPurpose::StructReturn)),
        RetPass::Direct(parts) => out.returns.extend(parts.iter().map(|p| part_param(p, ptr))),
    }
    for a in &layout.args {
        match &a.pass {
            ArgPass::ByRef { .. } => out.params.push(AbiParam::new(ptr)),
            ArgPass::Direct(parts) => out.params.extend(parts.iter().map(|p| part_param(p, ptr))),
        }
    }
    Ok(out)
}

/// Emits a call of `target`, a C function of `sig` in `conv`, into the block
/// `b` is at: the arguments are read from the slots at address `args`, the
/// result written as slots at address `ret` (ABI.md, "Slots": integers
/// extended to 64 bits as their type says, `f32` as its bits, aggregates as
/// their bytes, zero past their size). `b`'s function must use a pointer
/// type of 64 bits.
///
/// # Errors
/// As [`signature`].
pub fn call_from_slots(
    b: &mut FunctionBuilder<'_>,
    sig: &Signature,
    conv: CallConv,
    target: ir::Value,
    args: ir::Value,
    ret: ir::Value,
) -> Result<(), CraneliftError> {
    let ptr = types::I64;
    let clif = signature(sig, conv, ptr)?;
    let layout = classify(sig, conv);
    let flags = MemFlagsData::trusted();
    let mut vals = Vec::new();
    if let RetPass::Sret { .. } = layout.ret {
        // The result slots hold ceil(size/8) * 8 bytes: room for the result.
        vals.push(ret);
    }
    let mut params = clif.params[vals.len()..].iter();
    for a in &layout.args {
        let base = b.ins().iadd_imm_s(args, i64::from(a.slot) * 8);
        match &a.pass {
            ArgPass::ByRef { .. } => {
                // The callee may write its copy: make one, 16-byte aligned.
                let size = a.ty.size().next_multiple_of(8);
                let ss = b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    size,
                    4,
                ));
                for off in (0..size as i32).step_by(8) {
                    let v = b.ins().load(types::I64, flags, base, off);
                    b.ins().stack_store(ptr, v, ss, off);
                }
                vals.push(b.ins().stack_addr(ptr, ss, 0));
                params.next();
            }
            ArgPass::Direct(parts) => {
                for p in parts.iter() {
                    let Some(param) = params.next() else {
                        debug_assert!(false, "one parameter per part");
                        break;
                    };
                    if let ArgumentPurpose::StructArgument(_) = param.purpose {
                        // Its bytes, from the slots (Cranelift copies them).
                        vals.push(b.ins().iadd_imm_s(base, i64::from(p.offset)));
                        continue;
                    }
                    let v = b.ins().load(param.value_type, flags, base, p.offset as i32);
                    vals.push(v);
                }
            }
        }
    }
    let sigref = b.import_signature(clif.clone());
    let call = b.ins().call_indirect(sigref, target, &vals);
    let results = b.inst_results(call).to_vec();
    if let RetPass::Direct(parts) = &layout.ret {
        for (p, (v, r)) in parts.iter().zip(results.iter().zip(&clif.returns)) {
            let slot = (p.offset / 8 * 8) as i32;
            let v = match p.kind {
                PartKind::Scalar(s) if s.is_float() && s.size() == 8 => {
                    b.ins().bitcast(types::I64, MemFlagsData::new(), *v)
                }
                PartKind::Scalar(Scalar::F32) => {
                    let bits = b.ins().bitcast(types::I32, MemFlagsData::new(), *v);
                    b.ins().uextend(types::I64, bits)
                }
                PartKind::Scalar(_) if r.value_type == types::I64 => *v,
                PartKind::Scalar(s) if s.is_signed() => b.ins().sextend(types::I64, *v),
                PartKind::Scalar(_) => b.ins().uextend(types::I64, *v),
                PartKind::SseBytes if p.size == 4 => {
                    let bits = b.ins().bitcast(types::I32, MemFlagsData::new(), *v);
                    b.ins().uextend(types::I64, bits)
                }
                PartKind::SseBytes => b.ins().bitcast(types::I64, MemFlagsData::new(), *v),
                PartKind::IntBytes if p.size < 8 => {
                    // Zero past the size, as result slots are.
                    b.ins().band_imm_s(*v, (1i64 << (8 * p.size)) - 1)
                }
                PartKind::IntBytes | PartKind::Memory => *v,
            };
            b.ins().store(flags, v, ret, slot);
        }
    }
    Ok(())
}
