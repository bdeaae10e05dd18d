//! The baseline JIT: one verified function's bytecode to x86-64 code with the
//! function's native (SysV) convention, plugged into the tier layer as its
//! [`Compiler`].
//!
//! Frame: `rbx` = `rsp` after the prologue; local `i` at `[rbx + 8i]`, operand
//! slot `j` at `[rbx + 8(nlocals + j)]`. Operand depths are known statically
//! (the verifier), so every instruction works on fixed frame slots, and the
//! arguments of a call are consecutive slots: a call is a call of the
//! callee's exit stub with those slots, the target read from the callee's
//! entry cell (the register stub when the signature has one and its
//! result is at most one slot: it comes back in rax or xmm0 and is stored
//! into the first argument's slot). The top of the operand stack is cached
//! in rax: an instruction that makes a value leaves it there, the next one
//! takes it from there, and it is stored into its slot only when something
//! needs the frame in memory (a branch target, a call, a float instruction;
//! a guard's out-of-line path stores it itself). Guards (an `i64.add` overflow, a
//! division by zero, a null pointer) jump to a deopt path that describes the
//! frame in a [`RawFrame`](crate::tier::RawFrame) and calls the tier table's
//! deoptimization helper: the interpreter resumes at that instruction
//! (ABI.md, "Tiers"). Each OSR entry is an
//! [`OsrEntryFn`](crate::tier::OsrEntryFn) around a body that starts at its
//! loop header with the frame's locals.

// dynasm's macro converts dynamic register numbers with `.into()`.
#![allow(clippy::useless_conversion)]

use dynasmrt::x64::X64Relocation;
use dynasmrt::{DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler, dynasm};

use std::sync::Weak;

use super::exec::Inner;
use crate::abi::{ArgPass, CallConv, Gpr, Loc, PartKind, Scalar, Type, classify};
use crate::host::FuncId;
use crate::interp::{Op, Program};
use crate::thunks::ExitStub;
use crate::thunks::x64::{Cfi, FastRet, extend_mem, extend_reg, sub_rsp_probed};
use crate::tier::{CompileError, CompileRequest, Compiled, Compiler};
use crate::visibility::{Reg, Unwind};

/// The baseline JIT as the tier table's compiler (SysV only: the convention
/// the table of the reference runtime uses on x86-64 Linux).
struct BaselineJit {
    rt: Weak<Inner>,
}

/// The compiler of a runtime, for its tier table.
pub(super) fn compiler(rt: Weak<Inner>) -> Box<dyn Compiler> {
    Box::new(BaselineJit { rt })
}

// SAFETY: `compile` returns code of `jit::compile`, whose function entry at
// offset 0 takes the function's signature in SysV (checked: the request's
// convention must be SysV) and whose OSR entries follow `RawFrame`'s
// contract (module docs; the tier tests run every program through both).
unsafe impl Compiler for BaselineJit {
    fn compile(&self, req: &CompileRequest<'_>) -> Result<Compiled, CompileError> {
        if req.conv != CallConv::SysV {
            return Err(format!("the baseline JIT emits SysV code, not {}", req.conv).into());
        }
        let rt = self.rt.upgrade().ok_or("the runtime is gone")?;
        let fi = req.func.0 as u32;
        let program = &rt.program;
        let table = req.table;
        // The register stub when its result is at most one slot, else the slot stub.
        let call_stub = |s: &ExitStub| match s.raw_fast() {
            Some((addr, kind)) => Some(CallStub::Register(addr, kind)),
            None => s.raw_fn().map(CallStub::Slots),
        };
        let ids = || (0..program.functions.len() as u64).map(FuncId);
        let call_stubs = ids()
            .map(|g| table.exit_stub(g).ok().and_then(call_stub))
            .collect::<Option<Vec<_>>>()
            .ok_or("a callee's exit stub is not generated code")?;
        let native_stubs = program
            .natives
            .iter()
            .map(|n| {
                let s = table.bridge().exit_stub(&n.sig, req.conv).ok()?;
                call_stub(&s)
            })
            .collect::<Option<Vec<_>>>()
            .ok_or("a native's exit stub is not generated code")?;
        // The natives this function calls must be bound: compiled code calls
        // them directly (the others are never used by this code).
        let f = &program.functions[fi as usize];
        let used = |i: usize| f.code.contains(&Op::CallNative(i as u32));
        let natives = rt
            .natives
            .iter()
            .enumerate()
            .map(|(i, n)| match n.get() {
                Some(b) => Ok(b.addr),
                None if !used(i) => Ok(0),
                None => Err(format!("native {} is not bound", program.natives[i].name)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cells = ids()
            .map(|g| table.cell_addr(g).map(|p| p as usize))
            .collect::<Result<Vec<_>, _>>()?;
        let func_ptrs = ids()
            .map(|g| table.native_ptr(g).map(|p| p as usize))
            .collect::<Result<Vec<_>, _>>()?;
        let (deopt, ctx) = table.deopt_helper();
        let env = JitEnv {
            cells: &cells,
            call_stubs: &call_stubs,
            natives: &natives,
            native_stubs: &native_stubs,
            func_ptrs: &func_ptrs,
            deopt: deopt as usize,
            ctx: ctx as usize,
            force_deopt: req.config.force_deopt,
            guard_begin: crate::host::call_guard_begin as *const () as usize,
            guard_end: crate::host::call_guard_end as *const () as usize,
        };
        let code = compile(program, fi, &env);
        Ok(Compiled {
            code: req
                .memory
                .install_with_unwind(req.name, &code.bytes, &code.unwind)?,
            entry: Some(0),
            osr: code.osr,
        })
    }
}

/// The baseline JIT's assembler: dynasm's own, whose dynamic labels (one per
/// bytecode instruction) the thunk emitters' `CodeBuf` does not take.
type Asm = VecAssembler<X64Relocation>;

/// How compiled code calls a function of some signature.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CallStub {
    /// The slot stub: `extern "C" fn(args, ret, target, errno)`.
    Slots(usize),
    /// The register stub of a result of at most one slot,
    /// `extern "C" fn(args, target, ret)`, whose result comes back in rax
    /// (not yet extended) or xmm0 (never `f32`: the verifier rejects `f32`
    /// in interpreter signatures).
    Register(usize, FastRet),
}

/// What compiled code needs to know about the world.
pub(crate) struct JitEnv<'a> {
    /// Address of each function's entry cell.
    pub cells: &'a [usize],
    /// How to call each function's signature.
    pub call_stubs: &'a [CallStub],
    /// Address of each native function.
    pub natives: &'a [usize],
    /// How to call each native's signature.
    pub native_stubs: &'a [CallStub],
    /// What `ref.func` pushes for each function.
    pub func_ptrs: &'a [usize],
    /// The tier table's [`DeoptFn`](crate::tier::DeoptFn).
    pub deopt: usize,
    /// Its first argument.
    pub ctx: usize,
    /// Make every guard fail (testing deoptimization).
    pub force_deopt: bool,
    /// `call_guard_begin` and `call_guard_end` (host): whether a callee
    /// failed.
    pub guard_begin: usize,
    pub guard_end: usize,
}

/// Compiled code: the function at offset 0, an OSR entry per loop header.
pub(crate) struct JitCode {
    pub bytes: Vec<u8>,
    /// (loop header pc, offset of its [`OsrEntryFn`](crate::tier::OsrEntryFn)).
    pub osr: Vec<(u32, usize)>,
    /// How to unwind through the code, for tools.
    pub unwind: Unwind,
}

const RBP: u8 = Gpr::Rbp as u8;

/// A register holding the top of the operand stack when a guard fails, and
/// the frame offset of its slot (the deopt path stores it there).
type Spill = (u8, i32);

// `flush!` clears `tos` for instructions that then set it again.
#[allow(unused_assignments)]
pub(crate) fn compile(program: &Program, fi: u32, env: &JitEnv<'_>) -> JitCode {
    let f = &program.functions[fi as usize];
    let nl = f.locals.len() as i32;
    let local = |i: u32| 8 * i as i32;
    let slot = |j: u32| 8 * (nl + j as i32);
    let frame = (8 * (f.locals.len() + f.max_stack as usize + 1)).next_multiple_of(16) as i32;
    let layout = classify(&f.sig, CallConv::SysV);
    let ret_scalar = f.sig.ret().and_then(Type::as_scalar);
    let mut ops = Asm::new(0);
    let labels: Vec<DynamicLabel> = (0..f.code.len()).map(|_| ops.new_dynamic_label()).collect();
    let epilogue = ops.new_dynamic_label();
    // Leaving after a callee failed: a zero result.
    let bail = ops.new_dynamic_label();

    // Three pushes after the return address: rsp is 16-byte aligned, and so
    // it stays (the frame is a multiple of 16).
    // Unwind rows, recorded as the code is emitted: after the prologue the
    // frame is found from rbp (CFA = rbp + 16) until the epilogue's pops.
    let mut cfi = Cfi::new();
    let mut pushed;
    macro_rules! prologue {
        () => {
            dynasm!(ops ; .arch x64 ; push rbp);
            cfi.push(ops.offset().0, Reg::Rbp);
            dynasm!(ops ; .arch x64 ; mov rbp, rsp);
            cfi.frame_pointer(ops.offset().0);
            dynasm!(ops ; .arch x64 ; push rbx);
            cfi.push(ops.offset().0, Reg::Rbx);
            dynasm!(ops ; .arch x64 ; push r12);
            cfi.push(ops.offset().0, Reg::R12);
            // What the epilogue's `lea rsp, [rbp - 16]` comes back to.
            pushed = cfi.frame();
            // A frame past a page (many locals) grows a page at a time,
            // each touched, so that it meets the guard page (rax is free).
            sub_rsp_probed(&mut ops, frame, &mut cfi);
            dynasm!(ops ; .arch x64 ; mov rbx, rsp);
        };
    }

    // The function entry: parameters from their registers or stack slots.
    prologue!();
    let body_frame = cfi.frame();
    for (i, a) in layout.args.iter().enumerate() {
        let ArgPass::Direct(parts) = &a.pass else {
            unreachable!("interpreter parameters are scalars")
        };
        let p = parts[0];
        let PartKind::Scalar(s) = p.kind else {
            unreachable!("scalar parameters")
        };
        match p.loc {
            Loc::Gpr(g) => extend_reg(&mut ops, s, g as u8),
            Loc::Xmm(n) => dynasm!(ops ; .arch x64 ; movq rax, Rx(n)),
            Loc::Stack(off) => extend_mem(&mut ops, s, RBP, 16 + off as i32),
            Loc::XmmAndGpr(..) => unreachable!("no varargs"),
        }
        dynasm!(ops ; .arch x64 ; mov QWORD [rbx + local(i as u32)], rax);
    }
    for i in f.sig.params().len()..f.locals.len() {
        dynasm!(ops ; .arch x64 ; mov QWORD [rbx + local(i as u32)], 0);
    }
    dynasm!(ops ; .arch x64 ; jmp =>labels[0]);

    // OSR entries. Each is an `OsrEntryFn(frame: *mut RawFrame) -> u32`
    // around a body that starts at the loop header with rdi pointing to the
    // locals: the wrapper keeps the frame in rbx (callee-saved, pushed:
    // the body is called with rsp as at any call), stores the body's result
    // into `frame.ret` and returns OSR_COMPLETED (the body deoptimizes
    // through the helper, as function code does, so it always completes).
    let mut osr_starts = Vec::new();
    for &h in &f.loop_headers {
        if f.depth[h as usize] != 0 {
            continue; // OSR only where the operand stack is empty
        }
        let body = ops.new_dynamic_label();
        osr_starts.push((h, ops.offset().0));
        cfi.start(ops.offset().0);
        dynasm!(ops ; .arch x64 ; push rbx);
        cfi.push(ops.offset().0, Reg::Rbx);
        dynasm!(ops ; .arch x64
            ; mov rbx, rdi
            ; mov rdi, QWORD [rbx + 16] // frame.slots
            ; call =>body
            ; mov rcx, QWORD [rbx + 24] // frame.ret
        );
        match ret_scalar {
            None => {}
            Some(Scalar::F64) => dynasm!(ops ; .arch x64 ; movq QWORD [rcx], xmm0),
            Some(_) => dynasm!(ops ; .arch x64 ; mov QWORD [rcx], rax),
        }
        dynasm!(ops ; .arch x64 ; xor eax, eax ; pop rbx);
        cfi.pop(ops.offset().0, Reg::Rbx);
        dynasm!(ops ; .arch x64 ; ret ; =>body);
        cfi.start(ops.offset().0);
        prologue!();
        for i in 0..f.locals.len() as i32 {
            dynasm!(ops ; .arch x64 ; mov rax, QWORD [rdi + 8 * i] ; mov QWORD [rbx + 8 * i], rax);
        }
        dynasm!(ops ; .arch x64 ; jmp =>labels[h as usize]);
    }
    // The body: in the function's frame, whichever prologue made it.
    cfi.resume(ops.offset().0, body_frame.clone());

    // A guard failure at `pc`: the interpreter resumes there with this
    // frame. A `RawFrame` (32 bytes) and the result slot (8) below the
    // frame, 48 bytes to keep rsp 16-byte aligned; the helper is
    // `fn(table, func, frame) -> status` and writes the result slot (its
    // value is already extended as the result type says).
    let nl_u = f.locals.len() as i32;
    let deopt_at = |ops: &mut Asm, pc: usize| {
        let len = nl_u + f.depth[pc] as i32;
        dynasm!(ops ; .arch x64
            ; sub rsp, 48
            ; mov DWORD [rsp], pc as i32 ; mov DWORD [rsp + 4], nl_u
            ; mov DWORD [rsp + 8], len ; mov DWORD [rsp + 12], len
            ; mov QWORD [rsp + 16], rbx
            ; lea rax, [rsp + 32] ; mov QWORD [rsp + 24], rax
            ; mov QWORD [rsp + 32], 0
            ; mov rdi, QWORD env.ctx as i64 ; mov esi, fi as i32 ; mov rdx, rsp
            ; mov rax, QWORD env.deopt as i64 ; call rax
            ; mov rax, QWORD [rsp + 32]
        );
        if ret_scalar == Some(Scalar::F64) {
            dynasm!(ops ; .arch x64 ; movq xmm0, rax);
        }
        dynasm!(ops ; .arch x64 ; jmp =>epilogue);
    };
    // Guards: their label, the instruction, and the register that holds
    // the top of the stack if it is not in its slot yet (the deopt path
    // stores it first, so the frame in memory is the interpreter's).
    let mut deopts: Vec<(DynamicLabel, usize, Option<Spill>)> = Vec::new();
    // Branch targets start with every slot in memory.
    let mut targets = vec![false; f.code.len()];
    for op in &f.code {
        if let Op::Br(t) | Op::BrIf(t) | Op::BrUnless(t) = *op {
            targets[t as usize] = true;
        }
    }
    // Top-of-stack caching: when `tos`, the top operand slot's value is in
    // rax and not (necessarily) in its slot; every other slot is in memory.
    // An instruction that consumes the top takes it from rax, one that
    // produces a value leaves it there; anything that needs the frame in
    // memory (a branch target, a call, an out-of-line guard's frame, a float
    // instruction) stores it first.
    let mut tos = false;
    const RAX: u8 = Gpr::Rax as u8;
    const RCX: u8 = Gpr::Rcx as u8;

    for (pc, op) in f.code.iter().enumerate() {
        let d = f.depth[pc];
        let (a, b) = (slot(d.wrapping_sub(2)), slot(d.wrapping_sub(1)));
        macro_rules! flush {
            () => {
                if tos {
                    dynasm!(ops ; .arch x64 ; mov QWORD [rbx + b], rax);
                    tos = false;
                }
            };
        }
        if targets[pc] {
            flush!();
        }
        dynasm!(ops ; .arch x64 ; =>labels[pc]);
        macro_rules! guard {
            ($spill:expr) => {{
                let l = ops.new_dynamic_label();
                deopts.push((l, pc, $spill));
                l
            }};
        }
        // rax = a, and the second operand where `$op rax, <b>` can take it:
        // rcx when the top was in rax, else its slot.
        macro_rules! int_bin {
            ($($t:tt)*) => {{
                if tos {
                    dynasm!(ops ; .arch x64 ; mov rcx, rax ; mov rax, QWORD [rbx + a] ; $($t)* rax, rcx);
                } else {
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + a] ; $($t)* rax, QWORD [rbx + b]);
                }
                tos = true;
            }};
        }
        macro_rules! int_cmp {
            ($set:ident) => {{
                if tos {
                    dynasm!(ops ; .arch x64 ; mov rcx, rax ; mov rax, QWORD [rbx + a] ; cmp rax, rcx);
                } else {
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + a] ; cmp rax, QWORD [rbx + b]);
                }
                dynasm!(ops ; .arch x64 ; $set al ; movzx eax, al);
                tos = true;
            }};
        }
        macro_rules! flt_bin {
            ($ins:ident) => {{
                flush!();
                dynasm!(ops ; .arch x64 ; movq xmm0, QWORD [rbx + a] ; $ins xmm0, QWORD [rbx + b] ; movq QWORD [rbx + a], xmm0)
            }};
        }
        // a OP b where OP is above (>) or above-or-equal (>=), NaN false.
        macro_rules! flt_cmp {
            ($x:ident, $y:ident, $set:ident) => {{
                flush!();
                dynasm!(ops ; .arch x64
                    ; movq xmm0, QWORD [rbx + a] ; movq xmm1, QWORD [rbx + b]
                    ; ucomisd $x, $y ; $set al ; movzx eax, al ; mov QWORD [rbx + a], rax)
            }};
        }
        match *op {
            Op::ConstI(v) => {
                flush!();
                dynasm!(ops ; .arch x64 ; mov rax, QWORD v);
                tos = true;
            }
            Op::ConstF(bits) => {
                flush!();
                dynasm!(ops ; .arch x64 ; mov rax, QWORD bits as i64);
                tos = true;
            }
            Op::FuncAddr(i) => {
                flush!();
                dynasm!(ops ; .arch x64 ; mov rax, QWORD env.func_ptrs[i as usize] as i64);
                tos = true;
            }
            Op::Get(l) => {
                flush!();
                dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + local(l)]);
                tos = true;
            }
            Op::Set(l) | Op::Tee(l) => {
                if !tos {
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + b]);
                }
                dynasm!(ops ; .arch x64 ; mov QWORD [rbx + local(l)], rax);
                // tee keeps the value on the stack (in rax, and maybe in its slot too).
                tos = matches!(op, Op::Tee(_));
            }
            Op::Drop => tos = false,
            Op::IAdd => {
                // The guard: signed overflow deoptimizes (the interpreter wraps,
                // so the result is the same either way).
                if env.force_deopt {
                    flush!();
                    let g = guard!(None);
                    dynasm!(ops ; .arch x64 ; jmp =>g);
                } else if tos {
                    let g = guard!(Some((RCX, b)));
                    dynasm!(ops ; .arch x64
                        ; mov rcx, rax ; mov rax, QWORD [rbx + a] ; add rax, rcx ; jo =>g);
                } else {
                    let g = guard!(None);
                    dynasm!(ops ; .arch x64
                        ; mov rax, QWORD [rbx + a] ; add rax, QWORD [rbx + b] ; jo =>g);
                }
                tos = true;
            }
            Op::ISub => int_bin!(sub),
            Op::IMul => int_bin!(imul),
            Op::IAnd => int_bin!(and),
            Op::IOr => int_bin!(or),
            Op::IXor => int_bin!(xor),
            Op::IDivS | Op::IRemS => {
                flush!();
                let g = guard!(None);
                let done = ops.new_dynamic_label();
                let normal = ops.new_dynamic_label();
                dynasm!(ops ; .arch x64
                    ; mov rcx, QWORD [rbx + b] ; test rcx, rcx ; jz =>g
                    ; mov rax, QWORD [rbx + a]
                    ; cmp rcx, -1 ; jne =>normal
                );
                // x / -1 = wrapping negation, x % -1 = 0 (idiv would fault on MIN / -1).
                if *op == Op::IDivS {
                    dynasm!(ops ; .arch x64 ; neg rax ; jmp =>done);
                } else {
                    dynasm!(ops ; .arch x64 ; xor eax, eax ; jmp =>done);
                }
                dynasm!(ops ; .arch x64 ; =>normal ; cqo ; idiv rcx);
                if *op == Op::IRemS {
                    dynasm!(ops ; .arch x64 ; mov rax, rdx);
                }
                dynasm!(ops ; .arch x64 ; =>done);
                tos = true;
            }
            Op::IShl | Op::IShrS | Op::IShrU => {
                if tos {
                    dynasm!(ops ; .arch x64 ; mov rcx, rax);
                } else {
                    dynasm!(ops ; .arch x64 ; mov rcx, QWORD [rbx + b]);
                }
                dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + a]);
                match *op {
                    Op::IShl => dynasm!(ops ; .arch x64 ; shl rax, cl),
                    Op::IShrS => dynasm!(ops ; .arch x64 ; sar rax, cl),
                    _ => dynasm!(ops ; .arch x64 ; shr rax, cl),
                }
                tos = true;
            }
            Op::IEq => int_cmp!(sete),
            Op::INe => int_cmp!(setne),
            Op::ILtS => int_cmp!(setl),
            Op::ILeS => int_cmp!(setle),
            Op::IGtS => int_cmp!(setg),
            Op::IGeS => int_cmp!(setge),
            Op::IEqz => {
                if tos {
                    dynasm!(ops ; .arch x64 ; test rax, rax);
                } else {
                    dynasm!(ops ; .arch x64 ; cmp QWORD [rbx + b], 0);
                }
                dynasm!(ops ; .arch x64 ; sete al ; movzx eax, al);
                tos = true;
            }
            Op::FAdd => flt_bin!(addsd),
            Op::FSub => flt_bin!(subsd),
            Op::FMul => flt_bin!(mulsd),
            Op::FDiv => flt_bin!(divsd),
            Op::FGt => flt_cmp!(xmm0, xmm1, seta),
            Op::FGe => flt_cmp!(xmm0, xmm1, setae),
            Op::FLt => flt_cmp!(xmm1, xmm0, seta),
            Op::FLe => flt_cmp!(xmm1, xmm0, setae),
            Op::FEq | Op::FNe => {
                flush!();
                dynasm!(ops ; .arch x64 ; movq xmm0, QWORD [rbx + a] ; ucomisd xmm0, QWORD [rbx + b]);
                if *op == Op::FEq {
                    dynasm!(ops ; .arch x64 ; sete al ; setnp cl ; and al, cl);
                } else {
                    dynasm!(ops ; .arch x64 ; setne al ; setp cl ; or al, cl);
                }
                dynasm!(ops ; .arch x64 ; movzx eax, al ; mov QWORD [rbx + a], rax);
            }
            Op::IToF => {
                if tos {
                    dynasm!(ops ; .arch x64 ; cvtsi2sd xmm0, rax);
                } else {
                    dynasm!(ops ; .arch x64 ; cvtsi2sd xmm0, QWORD [rbx + b]);
                }
                dynasm!(ops ; .arch x64 ; movq rax, xmm0);
                tos = true;
            }
            Op::FToI => {
                if tos {
                    dynasm!(ops ; .arch x64 ; movq xmm0, rax ; cvttsd2si rax, xmm0);
                } else {
                    dynasm!(ops ; .arch x64 ; cvttsd2si rax, QWORD [rbx + b]);
                }
                tos = true;
            }
            Op::Load32S | Op::Load64 | Op::LoadF64 => {
                if !tos {
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + b]);
                }
                // The pointer is in rax (and maybe not in its slot): the
                // deopt path stores it.
                let g = guard!(Some((RAX, b)));
                dynasm!(ops ; .arch x64 ; test rax, rax ; jz =>g);
                if *op == Op::Load32S {
                    dynasm!(ops ; .arch x64 ; movsxd rax, DWORD [rax]);
                } else {
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD [rax]);
                }
                tos = true;
            }
            Op::Store32 | Op::Store64 => {
                if tos {
                    dynasm!(ops ; .arch x64 ; mov rcx, rax);
                } else {
                    dynasm!(ops ; .arch x64 ; mov rcx, QWORD [rbx + b]);
                }
                // The value is in rcx (and maybe not in its slot).
                let g = guard!(Some((RCX, b)));
                dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + a] ; test rax, rax ; jz =>g);
                if *op == Op::Store32 {
                    dynasm!(ops ; .arch x64 ; mov DWORD [rax], ecx);
                } else {
                    dynasm!(ops ; .arch x64 ; mov QWORD [rax], rcx);
                }
                tos = false;
            }
            Op::Br(t) => {
                flush!();
                dynasm!(ops ; .arch x64 ; jmp =>labels[t as usize]);
            }
            Op::BrIf(t) | Op::BrUnless(t) => {
                if tos {
                    dynasm!(ops ; .arch x64 ; test rax, rax);
                } else {
                    dynasm!(ops ; .arch x64 ; cmp QWORD [rbx + b], 0);
                }
                if let Op::BrIf(_) = *op {
                    dynasm!(ops ; .arch x64 ; jne =>labels[t as usize]);
                } else {
                    dynasm!(ops ; .arch x64 ; je =>labels[t as usize]);
                }
                tos = false;
            }
            Op::Call(i) | Op::CallNative(i) => {
                flush!();
                // r12 (saved by the prologue) keeps whether a failure was
                // pending before the call. No stack left for the call (the
                // guard's answer is `CALL_GUARD_NO_STACK`, -1): leave as
                // after a failed callee, the failure pending.
                dynasm!(ops ; .arch x64
                    ; mov rax, QWORD env.guard_begin as i64 ; call rax ; mov r12d, eax
                    ; cmp eax, -1 ; je =>bail
                );
                let (sig, stub) = match *op {
                    Op::Call(_) => (
                        &program.functions[i as usize].sig,
                        env.call_stubs[i as usize],
                    ),
                    _ => (
                        &program.natives[i as usize].sig,
                        env.native_stubs[i as usize],
                    ),
                };
                // The arguments are consecutive slots; the result replaces the first.
                // (Unreachable code has depth 0: wrap instead of panicking;
                // it never runs.)
                let first = slot(d.wrapping_sub(sig.params().len() as u32));
                // The target goes where the stub takes it: rdx for the slot
                // stub (args, ret, target, errno), rsi for the register stub
                // (args, target, ret).
                let t = match stub {
                    CallStub::Slots(_) => Gpr::Rdx,
                    CallStub::Register(..) => Gpr::Rsi,
                } as u8;
                if let Op::Call(_) = *op {
                    // Through the callee's entry cell: whatever code it holds now.
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD env.cells[i as usize] as i64 ; mov Rq(t), QWORD [rax]);
                } else {
                    dynasm!(ops ; .arch x64 ; mov Rq(t), QWORD env.natives[i as usize] as i64);
                }
                dynasm!(ops ; .arch x64 ; lea rdi, [rbx + first]);
                match stub {
                    CallStub::Slots(stub) => {
                        dynasm!(ops ; .arch x64
                            ; lea rsi, [rbx + first] ; xor ecx, ecx
                            ; mov rax, QWORD stub as i64 ; call rax
                        );
                    }
                    CallStub::Register(stub, kind) => {
                        dynasm!(ops ; .arch x64 ; mov rax, QWORD stub as i64 ; call rax);
                        match (kind, sig.ret().and_then(Type::as_scalar)) {
                            (FastRet::Regs { slots: 0, .. }, _) => {}
                            (
                                FastRet::Regs {
                                    sse_first: true, ..
                                },
                                Some(Scalar::F64),
                            ) => {
                                dynasm!(ops ; .arch x64 ; movq QWORD [rbx + first], xmm0)
                            }
                            (
                                FastRet::Regs {
                                    sse_first: false, ..
                                },
                                Some(s),
                            ) => {
                                extend_reg(&mut ops, s, Gpr::Rax as u8);
                                dynasm!(ops ; .arch x64 ; mov QWORD [rbx + first], rax);
                            }
                            (kind, ret) => unreachable!("a {kind:?} stub for a {ret:?} result"),
                        }
                    }
                }
                // A callee that failed (a trap in the interpreter it ran, a
                // host error) left its failure pending: stop here as the
                // interpreter would, returning a zero result; the failure
                // reaches the exit call that led into this code.
                dynasm!(ops ; .arch x64
                    ; mov edi, r12d ; mov rax, QWORD env.guard_end as i64 ; call rax
                    ; test eax, eax ; jnz =>bail
                );
            }
            Op::Return => {
                match (ret_scalar, tos) {
                    (None, _) => {}
                    (Some(Scalar::F64), true) => dynasm!(ops ; .arch x64 ; movq xmm0, rax),
                    (Some(Scalar::F64), false) => {
                        dynasm!(ops ; .arch x64 ; movq xmm0, QWORD [rbx + b])
                    }
                    (Some(s), true) => extend_reg(&mut ops, s, RAX),
                    (Some(s), false) => extend_mem(&mut ops, s, Gpr::Rbx as u8, b),
                }
                dynasm!(ops ; .arch x64 ; jmp =>epilogue);
                tos = false;
            }
        }
    }
    for (l, pc, spill) in deopts {
        dynasm!(ops ; .arch x64 ; =>l);
        if let Some((r, at)) = spill {
            dynasm!(ops ; .arch x64 ; mov QWORD [rbx + at], Rq(r));
        }
        deopt_at(&mut ops, pc);
    }
    dynasm!(ops ; .arch x64
        ; =>bail
        ; xor eax, eax ; xorps xmm0, xmm0
        ; =>epilogue
        ; lea rsp, [rbp - 16]
    );
    cfi.resume(ops.offset().0, pushed);
    dynasm!(ops ; .arch x64 ; pop r12);
    cfi.pop(ops.offset().0, Reg::R12);
    dynasm!(ops ; .arch x64 ; pop rbx);
    cfi.pop(ops.offset().0, Reg::Rbx);
    dynasm!(ops ; .arch x64 ; pop rbp);
    cfi.pop_frame_pointer(ops.offset().0);
    dynasm!(ops ; .arch x64 ; ret);
    JitCode {
        bytes: ops
            .finalize()
            .expect("JIT code uses no external relocations"),
        osr: osr_starts,
        unwind: cfi.finish(),
    }
}
