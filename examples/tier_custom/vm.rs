//! A small stack VM of its own — not tierbridge's reference interpreter —
//! with a JIT written with dynasm, tiered through tierbridge's public tier
//! API only. Shared by `examples/tier_custom` and `tests/tier_api.rs`. The
//! JIT is compiled only where tierbridge generates code (x86-64, without
//! `--cfg tierbridge_no_codegen`); elsewhere the VM interprets.
//!
//! Values are `i64`. A function has parameters (its first locals), more
//! locals, and code in a tiny assembly text:
//!
//! ```text
//! const 5     get 0     set 1     add  sub  mul  lt  dup  drop
//! load32      (pop a pointer, push the i32 there, sign-extended)
//! jz L        (pop; jump if zero)   jmp L   call NAME   ret   L:
//! div         (the JIT has no division: compiling a function with one fails)
//! ```
//!
//! The JIT keeps every value in a frame slot (locals, then the operand stack
//! at depths the verifier knows), `rbx` pointing at the frame. `add` is
//! guarded: a signed overflow deoptimizes (the interpreter wraps, so the
//! result is the same), and with `force_deopt` every `add` deoptimizes. A
//! function's code has two bodies: the function entry (SysV, its own
//! signature), whose guards call the table's deoptimization helper, and one
//! OSR entry per loop header, whose guards hand the frame back to the
//! interpreter ([`OSR_DEOPT`]).

#![allow(dead_code, clippy::useless_conversion)]

use std::collections::HashMap;
use std::sync::{Arc, Weak};

#[cfg(tierbridge_codegen)]
use dynasmrt::x64::X64Relocation;
#[cfg(tierbridge_codegen)]
use dynasmrt::{DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler, dynasm};
use tierbridge::abi::{CallConv, Signature};
#[cfg(tierbridge_codegen)]
use tierbridge::abi::{Scalar, Type};
use tierbridge::host::{FailurePolicy, FuncId, HostError};
use tierbridge::thunks::Bridge;
#[cfg(tierbridge_codegen)]
use tierbridge::tier::{CompileError, CompileRequest, Compiled, OSR_COMPLETED, OSR_DEOPT};
use tierbridge::tier::{
    Compiler, FnDecl, FrameState, Interpreter, OsrOutcome, TierCall, TierConfig, TierTable,
};

/// One instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Const(i64),
    Get(u32),
    Set(u32),
    Add,
    Sub,
    Mul,
    Div,
    Lt,
    Dup,
    Drop,
    Load32,
    Jz(u32),
    Jmp(u32),
    Call(u32),
    Ret,
}

/// A function: `params` arguments (`i64` or pointers), `locals` locals in
/// all (parameters first), one `i64`-like result.
#[derive(Clone, Debug)]
pub struct Func {
    pub name: String,
    pub sig: Signature,
    pub params: u32,
    pub locals: u32,
    pub code: Vec<Op>,
    /// Operand-stack depth before each instruction.
    pub depth: Vec<u32>,
    pub max_depth: u32,
    /// Targets of backward jumps.
    pub loop_headers: Vec<u32>,
}

/// Functions as text: `fn NAME SIGNATURE LOCALS` lines start a function
/// (`LOCALS` counts the parameters too), `end` ends it.
pub fn parse(text: &str) -> Result<Vec<Func>, String> {
    let mut funcs: Vec<(String, Signature, u32, Vec<String>)> = Vec::new();
    let mut cur: Option<(String, Signature, u32, Vec<String>)> = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("fn ") {
            let mut w = rest.split_whitespace();
            let (Some(name), Some(sig), Some(locals)) = (w.next(), w.next(), w.next()) else {
                return Err(format!("bad function line: {line}"));
            };
            let sig = Signature::parse(sig).map_err(|e| e.to_string())?;
            let locals = locals.parse().map_err(|_| format!("bad locals: {line}"))?;
            cur = Some((name.into(), sig, locals, Vec::new()));
        } else if line == "end" {
            funcs.push(cur.take().ok_or("end without fn")?);
        } else {
            cur.as_mut()
                .ok_or("code outside a function")?
                .3
                .push(line.into());
        }
    }
    let names: HashMap<String, u32> = funcs
        .iter()
        .enumerate()
        .map(|(i, f)| (f.0.clone(), i as u32))
        .collect();
    let sigs: Vec<usize> = funcs.iter().map(|f| f.1.params().len()).collect();
    funcs
        .into_iter()
        .map(|(name, sig, locals, lines)| assemble(name, sig, locals, &lines, &names, &sigs))
        .collect()
}

fn assemble(
    name: String,
    sig: Signature,
    locals: u32,
    lines: &[String],
    names: &HashMap<String, u32>,
    nargs: &[usize],
) -> Result<Func, String> {
    let mut labels = HashMap::new();
    let mut n = 0u32;
    for l in lines {
        match l.strip_suffix(':') {
            Some(label) => {
                labels.insert(label.to_string(), n);
            }
            None => n += 1,
        }
    }
    let mut code = Vec::new();
    for l in lines.iter().filter(|l| !l.ends_with(':')) {
        let mut w = l.split_whitespace();
        let op = w.next().unwrap_or("");
        let arg = w.next();
        let num = || -> Result<i64, String> {
            arg.and_then(|a| a.parse().ok())
                .ok_or(format!("{name}: {l}: a number expected"))
        };
        let label = || -> Result<u32, String> {
            arg.and_then(|a| labels.get(a).copied())
                .ok_or(format!("{name}: {l}: unknown label"))
        };
        code.push(match op {
            "const" => Op::Const(num()?),
            "get" => Op::Get(num()? as u32),
            "set" => Op::Set(num()? as u32),
            "add" => Op::Add,
            "sub" => Op::Sub,
            "mul" => Op::Mul,
            "div" => Op::Div,
            "lt" => Op::Lt,
            "dup" => Op::Dup,
            "drop" => Op::Drop,
            "load32" => Op::Load32,
            "jz" => Op::Jz(label()?),
            "jmp" => Op::Jmp(label()?),
            "call" => Op::Call(
                arg.and_then(|a| names.get(a).copied())
                    .ok_or(format!("{name}: {l}: unknown function"))?,
            ),
            "ret" => Op::Ret,
            _ => return Err(format!("{name}: unknown instruction {l}")),
        });
    }
    let params = sig.params().len() as u32;
    if locals < params {
        return Err(format!("{name}: fewer locals than parameters"));
    }
    let (depth, max_depth) = verify(&name, &code, locals, nargs)?;
    let mut loop_headers: Vec<u32> = code
        .iter()
        .enumerate()
        .filter_map(|(pc, op)| match *op {
            Op::Jz(t) | Op::Jmp(t) if t as usize <= pc => Some(t),
            _ => None,
        })
        .collect();
    loop_headers.sort_unstable();
    loop_headers.dedup();
    Ok(Func {
        name,
        sig,
        params,
        locals,
        code,
        depth,
        max_depth,
        loop_headers,
    })
}

/// The operand-stack depth before each instruction, the same on every path.
fn verify(
    name: &str,
    code: &[Op],
    locals: u32,
    nargs: &[usize],
) -> Result<(Vec<u32>, u32), String> {
    let mut depth = vec![u32::MAX; code.len()];
    let mut work = vec![(0usize, 0u32)];
    let mut max = 0;
    while let Some((pc, d)) = work.pop() {
        let Some(&op) = code.get(pc) else {
            return Err(format!("{name}: falls off the end"));
        };
        if depth[pc] != u32::MAX {
            if depth[pc] != d {
                return Err(format!("{name}: depth {d} and {} at {pc}", depth[pc]));
            }
            continue;
        }
        depth[pc] = d;
        max = max.max(d);
        let (pop, push) = match op {
            Op::Const(_) | Op::Get(_) => (0, 1),
            Op::Set(l) if l < locals => (1, 0),
            Op::Set(_) => return Err(format!("{name}: bad local at {pc}")),
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Lt => (2, 1),
            Op::Dup => (1, 2),
            Op::Drop | Op::Jz(_) => (1, 0),
            Op::Load32 => (1, 1),
            Op::Jmp(_) => (0, 0),
            Op::Call(f) => (nargs[f as usize] as u32, 1),
            Op::Ret => (1, 0),
        };
        if let Op::Get(l) = op
            && l >= locals
        {
            return Err(format!("{name}: bad local at {pc}"));
        }
        if d < pop {
            return Err(format!("{name}: stack underflow at {pc}"));
        }
        let next = d - pop + push;
        max = max.max(next);
        match op {
            Op::Ret => {}
            Op::Jmp(t) => work.push((t as usize, next)),
            Op::Jz(t) => {
                work.push((t as usize, next));
                work.push((pc + 1, next));
            }
            _ => work.push((pc + 1, next)),
        }
    }
    Ok((depth, max))
}

/// Why the interpreter stopped.
#[derive(Debug)]
pub struct Trap(pub String);

impl std::fmt::Display for Trap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Trap {}

/// The VM: its functions and its tier table (function `i` is `FuncId(i)`).
pub struct Vm {
    pub funcs: Vec<Func>,
    pub table: Arc<TierTable>,
    /// Calls that arrived from native code and ran interpreted.
    pub interpreted_from_native: std::sync::atomic::AtomicU64,
}

impl Vm {
    /// A VM for `funcs` on `bridge`, tiering as `config` says (with no JIT
    /// when `jit` is false, or in a build of tierbridge without code
    /// generation: its tier table would have no code memory for one).
    pub fn new(funcs: Vec<Func>, bridge: Arc<Bridge>, config: TierConfig, jit: bool) -> Arc<Vm> {
        Arc::new_cyclic(|me: &Weak<Vm>| {
            #[cfg(tierbridge_codegen)]
            let compiler: Option<Box<dyn Compiler>> =
                jit.then(|| Box::new(Jit { vm: me.clone() }) as Box<dyn Compiler>);
            #[cfg(not(tierbridge_codegen))]
            let compiler: Option<Box<dyn Compiler>> = {
                let _ = jit;
                None
            };
            let table = TierTable::new(
                bridge,
                CallConv::SysV,
                config,
                FailurePolicy::Report,
                Arc::new(me.clone()),
                compiler,
            );
            for f in &funcs {
                let decl = FnDecl::new(f.name.clone(), f.sig.clone())
                    .loop_headers(f.loop_headers.iter().copied())
                    .frame_slots(f.locals + f.max_depth);
                table
                    .add(decl)
                    .expect("the VM's signatures are plain scalars");
            }
            Vm {
                funcs,
                table,
                interpreted_from_native: std::sync::atomic::AtomicU64::new(0),
            }
        })
    }

    /// The id of function `name`.
    pub fn id(&self, name: &str) -> FuncId {
        FuncId(
            self.funcs
                .iter()
                .position(|f| f.name == name)
                .expect("a function of the VM") as u64,
        )
    }

    /// Calls `name` as the interpreter does: compiled code if published.
    pub fn call(&self, name: &str, args: &[i64]) -> Result<i64, HostError> {
        let args: Vec<u64> = args.iter().map(|&a| a as u64).collect();
        self.call_id(self.id(name), &args)
    }

    fn call_id(&self, f: FuncId, args: &[u64]) -> Result<i64, HostError> {
        let mut ret = [0u64];
        match self.table.call(f, args, &mut ret)? {
            TierCall::Compiled => Ok(ret[0] as i64),
            TierCall::Interpret => {
                let func = &self.funcs[f.0 as usize];
                let mut locals = vec![0i64; func.locals as usize];
                for (l, a) in locals.iter_mut().zip(args) {
                    *l = *a as i64;
                }
                self.run(f, 0, locals, Vec::new(), true)
            }
        }
    }

    /// Interprets `f` from `pc` with a frame.
    pub fn run(
        &self,
        f: FuncId,
        mut pc: usize,
        mut locals: Vec<i64>,
        mut st: Vec<i64>,
        osr: bool,
    ) -> Result<i64, HostError> {
        // The stack limit every tier obeys (compiled code's call guards
        // check the same one): running out is an error, not a crash.
        tierbridge::stack::check(0)?;
        let func = &self.funcs[f.0 as usize];
        loop {
            let op = func.code[pc];
            pc += 1;
            macro_rules! pop {
                () => {
                    st.pop().expect("verified")
                };
            }
            match op {
                Op::Const(v) => st.push(v),
                Op::Get(l) => st.push(locals[l as usize]),
                Op::Set(l) => locals[l as usize] = pop!(),
                Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Lt => {
                    let b = pop!();
                    let a = pop!();
                    st.push(match op {
                        Op::Add => a.wrapping_add(b),
                        Op::Sub => a.wrapping_sub(b),
                        Op::Mul => a.wrapping_mul(b),
                        Op::Lt => i64::from(a < b),
                        _ if b == 0 => {
                            return Err(Box::new(Trap(format!("{}: division by zero", func.name))));
                        }
                        _ => a.wrapping_div(b),
                    });
                }
                Op::Dup => {
                    let a = *st.last().expect("verified");
                    st.push(a);
                }
                Op::Drop => {
                    pop!();
                }
                Op::Load32 => {
                    let p = pop!() as usize as *const i32;
                    if p.is_null() {
                        return Err(Box::new(Trap(format!("{}: load from null", func.name))));
                    }
                    // SAFETY: the VM's programs, like C, load only from
                    // pointers they were given (the tests' and example's data).
                    st.push(i64::from(unsafe { p.read_unaligned() }));
                }
                Op::Jz(t) | Op::Jmp(t) => {
                    let taken = match op {
                        Op::Jz(_) => pop!() == 0,
                        _ => true,
                    };
                    if taken {
                        let back = (t as usize) < pc;
                        pc = t as usize;
                        if back && osr && self.table.back_edge(f, t) {
                            let locals_u: Vec<u64> = locals.iter().map(|&v| v as u64).collect();
                            let st_u: Vec<u64> = st.iter().map(|&v| v as u64).collect();
                            let mut ret = [0u64];
                            match self.table.osr(f, t, &locals_u, &st_u, &mut ret)? {
                                OsrOutcome::NotReady => {}
                                OsrOutcome::Completed => return Ok(ret[0] as i64),
                                OsrOutcome::Deopt(frame) => {
                                    // Continue here, without OSR again (a
                                    // forced deopt would loop).
                                    return self.resume_frame(f, &frame);
                                }
                            }
                        }
                    }
                }
                Op::Call(g) => {
                    let n = self.funcs[g as usize].params as usize;
                    let args: Vec<u64> = st.drain(st.len() - n..).map(|v| v as u64).collect();
                    st.push(self.call_id(FuncId(u64::from(g)), &args)?);
                }
                Op::Ret => return Ok(pop!()),
            }
        }
    }

    fn resume_frame(&self, f: FuncId, frame: &FrameState) -> Result<i64, HostError> {
        let to_i = |s: &[u64]| s.iter().map(|&v| v as i64).collect::<Vec<_>>();
        self.run(
            f,
            frame.pc() as usize,
            to_i(frame.locals()),
            to_i(frame.stack()),
            false,
        )
    }
}

impl Interpreter for Vm {
    fn interpret(&self, func: FuncId, args: &[u64], ret: &mut [u64]) -> Result<(), HostError> {
        self.interpreted_from_native
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let f = &self.funcs[func.0 as usize];
        let mut locals = vec![0i64; f.locals as usize];
        for (l, a) in locals.iter_mut().zip(args) {
            *l = *a as i64;
        }
        ret[0] = self.run(func, 0, locals, Vec::new(), true)? as u64;
        Ok(())
    }

    fn resume(&self, func: FuncId, frame: &FrameState, ret: &mut [u64]) -> Result<(), HostError> {
        ret[0] = self.resume_frame(func, frame)? as u64;
        Ok(())
    }
}

/// The JIT: dynasm, SysV.
#[cfg(tierbridge_codegen)]
struct Jit {
    vm: Weak<Vm>,
}

#[cfg(tierbridge_codegen)]
type Asm = VecAssembler<X64Relocation>;

/// The SysV integer argument registers, by number (rdi, rsi, rdx, rcx, r8, r9).
#[cfg(tierbridge_codegen)]
const ARG_REGS: [u8; 6] = [7, 6, 2, 1, 8, 9];

// SAFETY: the function entry at offset 0 takes the function's parameters
// (integers and pointers) in SysV registers and returns its result in rax;
// each OSR entry is an `OsrEntryFn` that reads the frame's `len` slots and
// writes `ret` (returning OSR_COMPLETED) or rewrites the frame within `cap`
// (returning OSR_DEOPT) — the table gives `cap` >= the declared frame slots.
#[cfg(tierbridge_codegen)]
unsafe impl Compiler for Jit {
    fn compile(&self, req: &CompileRequest<'_>) -> Result<Compiled, CompileError> {
        let vm = self.vm.upgrade().ok_or("the VM is gone")?;
        let f = &vm.funcs[req.func.0 as usize];
        if f.params > 6 {
            return Err("more than six parameters".into());
        }
        if let Some(pc) = f.code.iter().position(|op| *op == Op::Div) {
            return Err(format!("{}: no division in the JIT (instruction {pc})", f.name).into());
        }
        let (deopt, table) = req.table.deopt_helper();
        let cells = (0..vm.funcs.len() as u64)
            .map(|g| req.table.cell_addr(FuncId(g)).map(|p| p as i64))
            .collect::<Result<Vec<_>, _>>()?;
        let env = Env {
            f,
            fid: req.func.0 as i32,
            vm: &vm,
            cells: &cells,
            deopt: deopt as usize as i64,
            table: table as i64,
            force_deopt: req.config.force_deopt,
        };
        let mut ops = Asm::new(0);
        env.body(&mut ops, None);
        let mut osr = Vec::new();
        for &h in &f.loop_headers {
            osr.push((h, ops.offset().0));
            env.body(&mut ops, Some(h));
        }
        let bytes = ops.finalize().map_err(|_| "unresolved labels")?;
        Ok(Compiled {
            code: req.memory.install(&format!("vm {}", f.name), &bytes)?,
            entry: Some(0),
            osr,
        })
    }
}

#[cfg(tierbridge_codegen)]
struct Env<'a> {
    f: &'a Func,
    fid: i32,
    vm: &'a Vm,
    cells: &'a [i64],
    deopt: i64,
    table: i64,
    force_deopt: bool,
}

#[cfg(tierbridge_codegen)]
impl Env<'_> {
    /// One body: the function entry (`osr` None) or the OSR entry at a
    /// loop header. Frame: rbx = the slots (locals, then operand stack);
    /// r12 = the `RawFrame` in an OSR entry.
    fn body(&self, ops: &mut Asm, osr: Option<u32>) {
        let f = self.f;
        let nl = f.locals as i32;
        let slot = |j: u32| 8 * (nl + j as i32);
        let frame = (8 * (f.locals + f.max_depth + 1)).next_multiple_of(16) as i32;
        let labels: Vec<DynamicLabel> =
            (0..f.code.len()).map(|_| ops.new_dynamic_label()).collect();
        let done = ops.new_dynamic_label();
        // After a callee failed: a zero result (or, in an OSR entry, a
        // completed call with result 0; the failure is what counts).
        let failed = ops.new_dynamic_label();
        // Pushes: rbp, rbx, r12, r13 (then rsp is 8 off 16; the frame
        // adds 8 more to make it 16 again).
        dynasm!(ops ; .arch x64
            ; push rbp ; mov rbp, rsp ; push rbx ; push r12 ; push r13
            ; sub rsp, frame + 8 ; mov rbx, rsp
        );
        match osr {
            None => {
                for i in 0..f.locals {
                    if i < f.params {
                        dynasm!(ops ; .arch x64 ; mov QWORD [rbx + 8 * i as i32], Rq(ARG_REGS[i as usize]));
                    } else {
                        dynasm!(ops ; .arch x64 ; mov QWORD [rbx + 8 * i as i32], 0);
                    }
                }
                dynasm!(ops ; .arch x64 ; jmp =>labels[0]);
            }
            Some(h) => {
                // Copy the frame's slots (locals, then the operand stack at h).
                let len = nl + f.depth[h as usize] as i32;
                dynasm!(ops ; .arch x64 ; mov r12, rdi ; mov rsi, QWORD [r12 + 16]);
                for i in 0..len {
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD [rsi + 8 * i] ; mov QWORD [rbx + 8 * i], rax);
                }
                dynasm!(ops ; .arch x64 ; jmp =>labels[h as usize]);
            }
        }
        let mut guards: Vec<(DynamicLabel, usize)> = Vec::new();
        for (pc, op) in f.code.iter().enumerate() {
            dynasm!(ops ; .arch x64 ; =>labels[pc]);
            let d = f.depth[pc];
            let (a, b) = (slot(d.wrapping_sub(2)), slot(d.wrapping_sub(1)));
            match *op {
                Op::Const(v) => {
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD v ; mov QWORD [rbx + slot(d)], rax)
                }
                Op::Get(l) => {
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + 8 * l as i32] ; mov QWORD [rbx + slot(d)], rax)
                }
                Op::Set(l) => {
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + b] ; mov QWORD [rbx + 8 * l as i32], rax)
                }
                Op::Add => {
                    let g = ops.new_dynamic_label();
                    guards.push((g, pc));
                    if self.force_deopt {
                        dynasm!(ops ; .arch x64 ; jmp =>g);
                    } else {
                        dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + a] ; add rax, QWORD [rbx + b] ; jo =>g ; mov QWORD [rbx + a], rax);
                    }
                }
                Op::Sub => {
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + a] ; sub rax, QWORD [rbx + b] ; mov QWORD [rbx + a], rax)
                }
                Op::Mul => {
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + a] ; imul rax, QWORD [rbx + b] ; mov QWORD [rbx + a], rax)
                }
                Op::Lt => dynasm!(ops ; .arch x64
                    ; mov rax, QWORD [rbx + a] ; cmp rax, QWORD [rbx + b] ; setl al ; movzx eax, al ; mov QWORD [rbx + a], rax),
                Op::Dup => {
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + b] ; mov QWORD [rbx + slot(d)], rax)
                }
                Op::Drop => {}
                Op::Load32 => {
                    let g = ops.new_dynamic_label();
                    guards.push((g, pc));
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + b] ; test rax, rax ; jz =>g
                        ; movsxd rax, DWORD [rax] ; mov QWORD [rbx + b], rax);
                }
                Op::Jz(t) => {
                    dynasm!(ops ; .arch x64 ; cmp QWORD [rbx + b], 0 ; je =>labels[t as usize])
                }
                Op::Jmp(t) => dynasm!(ops ; .arch x64 ; jmp =>labels[t as usize]),
                Op::Call(g) => {
                    // Through the callee's cell: whatever code it holds now
                    // (its interpreter entry point, or its compiled code).
                    let n = self.vm.funcs[g as usize].params;
                    let first = d - n;
                    // A callee that fails (an interpreter trap) leaves its
                    // failure pending: stop there, as the interpreter would
                    // (r13, saved, keeps the pending state before the call).
                    // No stack left for the call (`CALL_GUARD_NO_STACK`, -1):
                    // the same, without calling.
                    let (begin, end) = (
                        tierbridge::host::call_guard_begin as *const () as i64,
                        tierbridge::host::call_guard_end as *const () as i64,
                    );
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD begin ; call rax ; mov r13d, eax
                        ; cmp eax, -1 ; je =>failed);
                    for i in 0..n {
                        dynasm!(ops ; .arch x64 ; mov Rq(ARG_REGS[i as usize]), QWORD [rbx + slot(first + i)]);
                    }
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD self.cells[g as usize] ; call QWORD [rax]);
                    // C leaves the upper half of an `i32` result undefined.
                    if self.vm.funcs[g as usize].sig.ret() == Some(&Type::Scalar(Scalar::I32)) {
                        dynasm!(ops ; .arch x64 ; movsxd rax, eax);
                    }
                    dynasm!(ops ; .arch x64
                        ; mov QWORD [rbx + slot(first)], rax
                        ; mov edi, r13d ; mov rax, QWORD end ; call rax
                        ; test eax, eax ; jnz =>failed
                    );
                }
                Op::Div => unreachable!("refused above"),
                Op::Ret => {
                    dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + b]);
                    if osr.is_some() {
                        dynasm!(ops ; .arch x64 ; mov rcx, QWORD [r12 + 24] ; mov QWORD [rcx], rax ; mov eax, OSR_COMPLETED as i32);
                    }
                    dynasm!(ops ; .arch x64 ; jmp =>done);
                }
            }
        }
        for (g, pc) in guards {
            dynasm!(ops ; .arch x64 ; =>g);
            let len = nl + f.depth[pc] as i32;
            match osr {
                None => {
                    // A RawFrame (32 bytes) and the result slot below the
                    // frame (48 bytes keep rsp 16-byte aligned), then the
                    // table's helper: fn(table, func, frame) -> status.
                    dynasm!(ops ; .arch x64
                        ; sub rsp, 48
                        ; mov DWORD [rsp], pc as i32 ; mov DWORD [rsp + 4], nl
                        ; mov DWORD [rsp + 8], len ; mov DWORD [rsp + 12], len
                        ; mov QWORD [rsp + 16], rbx
                        ; lea rax, [rsp + 32] ; mov QWORD [rsp + 24], rax
                        ; mov QWORD [rsp + 32], 0
                        ; mov rdi, QWORD self.table ; mov esi, self.fid ; mov rdx, rsp
                        ; mov rax, QWORD self.deopt ; call rax
                        ; mov rax, QWORD [rsp + 32]
                        ; jmp =>done
                    );
                }
                Some(_) => {
                    // Hand the frame back: pc, locals, len, and the slots.
                    dynasm!(ops ; .arch x64
                        ; mov DWORD [r12], pc as i32 ; mov DWORD [r12 + 4], nl ; mov DWORD [r12 + 8], len
                        ; mov rsi, QWORD [r12 + 16]
                    );
                    for i in 0..len {
                        dynasm!(ops ; .arch x64 ; mov rax, QWORD [rbx + 8 * i] ; mov QWORD [rsi + 8 * i], rax);
                    }
                    dynasm!(ops ; .arch x64 ; mov eax, OSR_DEOPT as i32 ; jmp =>done);
                }
            }
        }
        dynasm!(ops ; .arch x64 ; =>failed ; xor eax, eax);
        if osr.is_some() {
            dynasm!(ops ; .arch x64 ; mov rcx, QWORD [r12 + 24] ; mov QWORD [rcx], rax);
        }
        dynasm!(ops ; .arch x64
            ; =>done
            ; lea rsp, [rbp - 24] ; pop r13 ; pop r12 ; pop rbx ; pop rbp ; ret
        );
    }
}
