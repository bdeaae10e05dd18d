//! Brainfuck through tierbridge: a decoding interpreter and a Cranelift JIT,
//! tiered through the public tier API only (`TierTable`, `CodeMemory`, OSR
//! and its deoptimization path), with I/O through C functions called by
//! address — from the interpreter through a tierbridge exit stub, from
//! compiled code with the signature tierbridge's classification gives
//! Cranelift (`tierbridge::cranelift::signature`). Shared by
//! `examples/brainfuck` and `tests/brainfuck.rs`.
//!
//! The machine: 8-bit wrapping cells, all zero, a tape that starts at cell 0
//! and grows to the right on demand up to a limit. The program is one
//! tier-table function whose "frame" is three slots — the tape's base
//! address, its length, and the cell pointer — and whose OSR positions are
//! 0 (the start, for `jit` mode) and the first instruction of every loop
//! body (where `]` jumps back to). The compiler turns the whole program into
//! one Cranelift function that takes a `RawFrame`, dispatches on its
//! position and runs to the end; a move off the tape's end (or left of cell
//! 0) in compiled code hands the frame back (`OSR_DEOPT`) at that
//! instruction, and the interpreter grows the tape (or reports the error)
//! and goes on.

#![allow(dead_code)]

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{AbiParam, Function, InstBuilder, MemFlagsData, UserFuncName, types};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use tierbridge::abi::{CallConv, Signature};
use tierbridge::host::{FailurePolicy, FuncId, HostError};
use tierbridge::thunks::{Bridge, ExitStub};
use tierbridge::tier::{
    CompileError, CompileRequest, Compiled, Compiler, FnDecl, FrameState, Interpreter,
    OSR_COMPLETED, OSR_DEOPT, OsrOutcome, TierConfig, TierTable,
};
use tierbridge::visibility::Unwind;

/// One decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `+`/`-` runs: add this (wrapping) to the cell.
    Add(u8),
    /// `>`/`<` runs: move the pointer by this many cells.
    Move(i64),
    /// `.`
    Out,
    /// `,`
    In,
    /// `[`: if the cell is zero, go to this instruction (after the `]`).
    JmpZ(u32),
    /// `]`: if the cell is not zero, go to this instruction (after the `[`).
    JmpNz(u32),
    /// `[-]` or `[+]`: the cell becomes zero.
    Clear,
}

/// A decoded program: instructions, each one's byte offset in the source,
/// and the OSR positions (0 and every loop body's first instruction).
#[derive(Clone, Debug)]
pub struct Program {
    pub ops: Vec<Op>,
    pub offsets: Vec<usize>,
    pub headers: Vec<u32>,
}

/// How a run ends badly; `exit_code` is the command line's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BfError {
    /// A `[` without its `]` or a `]` without its `[`, at this byte offset.
    Unbalanced { offset: usize, what: &'static str },
    /// The pointer moved left of cell 0 at this byte offset.
    LeftOfZero { offset: usize },
    /// The tape would grow past its limit at this byte offset.
    TapeLimit { offset: usize, limit: usize },
    /// The tier layer or the bridge refused something (a bug, or the platform).
    Internal(String),
}

impl BfError {
    pub fn exit_code(&self) -> i32 {
        match self {
            BfError::Unbalanced { .. } => 2,
            BfError::LeftOfZero { .. } => 3,
            BfError::TapeLimit { .. } => 4,
            BfError::Internal(_) => 70,
        }
    }
}

impl std::fmt::Display for BfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BfError::Unbalanced { offset, what } => write!(f, "byte {offset}: {what}"),
            BfError::LeftOfZero { offset } => {
                write!(f, "byte {offset}: the pointer moves left of cell 0")
            }
            BfError::TapeLimit { offset, limit } => {
                write!(f, "byte {offset}: the tape would grow past {limit} cells")
            }
            BfError::Internal(e) => write!(f, "internal error: {e}"),
        }
    }
}

/// Decodes `src`: runs of `+-` folded, and runs of `>` or of `<` (one
/// direction only), `[-]` and `[+]` as one instruction, brackets matched
/// with an explicit stack (no recursion, whatever the nesting), every other
/// byte ignored.
pub fn parse(src: &[u8]) -> Result<Program, BfError> {
    let mut ops: Vec<Op> = Vec::new();
    let mut offsets = Vec::new();
    let mut open: Vec<(usize, usize)> = Vec::new(); // (op index, byte offset) of each `[`
    let mut headers = vec![0u32];
    for (at, &c) in src.iter().enumerate() {
        match c {
            b'+' | b'-' => {
                let d = if c == b'+' { 1u8 } else { 255u8 };
                if let Some(Op::Add(k)) = ops.last_mut() {
                    *k = k.wrapping_add(d);
                } else {
                    ops.push(Op::Add(d));
                    offsets.push(at);
                }
            }
            b'>' | b'<' => {
                // Only runs of one direction fold: `<>` must still fail at
                // cell 0, and `><` at the tape's end.
                let d = if c == b'>' { 1 } else { -1 };
                if let Some(Op::Move(k)) = ops.last_mut()
                    && (*k > 0) == (d > 0)
                {
                    *k += d;
                } else {
                    ops.push(Op::Move(d));
                    offsets.push(at);
                }
            }
            b'.' => {
                ops.push(Op::Out);
                offsets.push(at);
            }
            b',' => {
                ops.push(Op::In);
                offsets.push(at);
            }
            b'[' => {
                open.push((ops.len(), at));
                ops.push(Op::JmpZ(0));
                offsets.push(at);
            }
            b']' => {
                let Some((o, open_at)) = open.pop() else {
                    return Err(BfError::Unbalanced {
                        offset: at,
                        what: "`]` without a matching `[`",
                    });
                };
                if ops.len() == o + 2 && matches!(ops[o + 1], Op::Add(1 | 255)) {
                    // A clear loop: one instruction, no loop.
                    ops.truncate(o);
                    offsets.truncate(o);
                    ops.push(Op::Clear);
                    offsets.push(open_at);
                    continue;
                }
                let here = ops.len() as u32;
                ops.push(Op::JmpNz(o as u32 + 1));
                offsets.push(at);
                ops[o] = Op::JmpZ(here + 1);
                headers.push(o as u32 + 1);
            }
            _ => {}
        }
    }
    if let Some(&(_, at)) = open.last() {
        return Err(BfError::Unbalanced {
            offset: at,
            what: "`[` without a matching `]`",
        });
    }
    headers.sort_unstable();
    headers.dedup();
    Ok(Program {
        ops,
        offsets,
        headers,
    })
}

/// How a run goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Never compile.
    Interp,
    /// Interpret; move hot loops into compiled code by OSR.
    Tiered,
    /// Compile the whole program first, enter it at the start.
    Jit,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "interp" => Ok(Mode::Interp),
            "tiered" => Ok(Mode::Tiered),
            "jit" => Ok(Mode::Jit),
            _ => Err(format!("unknown mode {s:?} (interp, tiered or jit)")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Interp => "interp",
            Mode::Tiered => "tiered",
            Mode::Jit => "jit",
        })
    }
}

/// The byte I/O the program uses: two C functions, `int put(int)` and
/// `int get(void)` (`putchar_unlocked`/`getchar_unlocked`, or a test's own),
/// returning -1 at the end of input.
#[derive(Clone, Copy, Debug)]
pub struct Io {
    pub put: *const c_void,
    pub get: *const c_void,
}

// SAFETY: two addresses of C functions, callable from any thread.
unsafe impl Send for Io {}
// SAFETY: as for Send.
unsafe impl Sync for Io {}

/// What the tiers did in a run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub compiled: u64,
    pub osr: u64,
    pub deopts: u64,
    /// Each compilation's time, in ms.
    pub compile_ms: Vec<f64>,
}

/// Never called: the program is entered by OSR only (it has no native entry,
/// and its compiled code deoptimizes by handing the frame back).
struct NoEntry;

impl Interpreter for NoEntry {
    fn interpret(&self, _: FuncId, _: &[u64], _: &mut [u64]) -> Result<(), HostError> {
        Err("a brainfuck program has no native entry".into())
    }
    fn resume(&self, _: FuncId, _: &FrameState, _: &mut [u64]) -> Result<(), HostError> {
        Err("a brainfuck program deoptimizes through OSR frames only".into())
    }
}

/// The Cranelift compiler of one program.
struct BfJit {
    program: Arc<Program>,
    io: Io,
    times: Arc<Mutex<Vec<f64>>>,
}

/// The largest program compiled (in instructions); larger ones stay
/// interpreted (a compile failure, counted).
pub const MAX_COMPILED_OPS: usize = 50_000;

// SAFETY: `compile` returns no function entry, and one OSR entry (offset 0)
// for every declared position: an `OsrEntryFn` made by Cranelift from the
// signature `fn(i64) -> i32` in the host convention (SysV), that reads the
// frame's three slots, writes back at most three (cap >= the declared 3),
// and returns OSR_COMPLETED or OSR_DEOPT.
unsafe impl Compiler for BfJit {
    fn compile(&self, req: &CompileRequest<'_>) -> Result<Compiled, CompileError> {
        let t = Instant::now();
        let (bytes, unwind) = compile_program(&self.program, self.io)?;
        // Cranelift's description of its frames goes with the code, so
        // backtraces and profilers walk through it.
        let code = req
            .memory
            .install_with_unwind("brainfuck program", &bytes, &unwind)?;
        self.times
            .lock()
            .unwrap()
            .push(t.elapsed().as_secs_f64() * 1e3);
        Ok(Compiled {
            code,
            entry: None,
            osr: self.program.headers.iter().map(|&h| (h, 0)).collect(),
        })
    }
}

/// (lowest offset, highest offset, (offset, added per iteration) of each
/// other cell) of a multiply loop.
type MultiplyLoop = (i64, i64, Vec<(i64, u8)>);

/// A loop body of `+`/`-` and moves only that ends where it began and takes
/// one from the starting cell each time: (lowest and highest offset it
/// touches, and what it adds to each other cell per iteration).
fn multiply_loop(body: &[Op]) -> Option<MultiplyLoop> {
    let (mut at, mut adds) = (0i64, Vec::<(i64, u8)>::new());
    for op in body {
        match *op {
            Op::Move(n) => at += n,
            Op::Add(k) => match adds.iter_mut().find(|(o, _)| *o == at) {
                Some((_, sum)) => *sum = sum.wrapping_add(k),
                None => adds.push((at, k)),
            },
            _ => return None,
        }
    }
    let origin = adds.iter().position(|(o, _)| *o == 0)?;
    if at != 0 || adds[origin].1 != 255 {
        return None;
    }
    adds.remove(origin);
    let lo = adds.iter().map(|(o, _)| *o).min().unwrap_or(0).min(0);
    let hi = adds.iter().map(|(o, _)| *o).max().unwrap_or(0).max(0);
    Some((lo, hi, adds))
}

/// The whole program as one Cranelift function `fn(frame: *mut RawFrame) ->
/// u32`, machine code without relocations (C functions are called by
/// address), with Cranelift's unwind rows for it.
pub fn compile_program(p: &Program, io: Io) -> Result<(Vec<u8>, Unwind), CompileError> {
    if p.ops.len() > MAX_COMPILED_OPS {
        return Err(format!(
            "{} instructions: more than this JIT compiles ({MAX_COMPILED_OPS})",
            p.ops.len()
        )
        .into());
    }
    let isa = tierbridge::cranelift::host_isa()?;
    let ptr = isa.pointer_type();
    let mut sig = cranelift_codegen::ir::Signature::new(isa.default_call_conv());
    sig.params.push(AbiParam::new(ptr));
    sig.returns.push(AbiParam::new(types::I32));
    let mut func = Function::with_name_signature(UserFuncName::user(0, 0), sig);
    // The C functions' signatures, from tierbridge's classification.
    let put_sig =
        tierbridge::cranelift::signature(&Signature::parse("(i32)->i32")?, CallConv::host()?, ptr)?;
    let get_sig =
        tierbridge::cranelift::signature(&Signature::parse("()->i32")?, CallConv::host()?, ptr)?;
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut func, &mut fctx);
    let put_ref = b.import_signature(put_sig);
    let get_ref = b.import_signature(get_sig);
    let flags = MemFlagsData::trusted();

    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    let blocks: Vec<_> = (0..=p.ops.len()).map(|_| b.create_block()).collect();
    let end = blocks[p.ops.len()];
    let pv = b.declare_var(types::I64);

    // Entry: the frame's slots, then a jump to the position it names.
    b.switch_to_block(entry);
    let frame = b.block_params(entry)[0];
    let slots = b.ins().load(ptr, flags, frame, 16);
    let base = b.ins().load(types::I64, flags, slots, 0);
    let len = b.ins().load(types::I64, flags, slots, 8);
    let p0 = b.ins().load(types::I64, flags, slots, 16);
    b.def_var(pv, p0);
    let pc = b.ins().load(types::I32, flags, frame, 0);
    for &h in &p.headers {
        let next = b.create_block();
        let is = b.ins().icmp_imm_s(IntCC::Equal, pc, i64::from(h));
        b.ins().brif(is, blocks[h as usize], &[], next, &[]);
        b.switch_to_block(next);
    }
    // A position that is not an OSR position: hand the frame back unchanged.
    b.ins().store(flags, pc, frame, 0);
    let deopt = b.ins().iconst(types::I32, i64::from(OSR_DEOPT));
    b.ins().return_(&[deopt]);

    for (k, op) in p.ops.iter().enumerate() {
        b.switch_to_block(blocks[k]);
        let next = blocks[k + 1];
        let cur = b.use_var(pv);
        let cell = b.ins().iadd(base, cur);
        match *op {
            Op::Add(n) => {
                let v = b.ins().load(types::I8, flags, cell, 0);
                let v = b.ins().iadd_imm_s(v, i64::from(n as i8));
                b.ins().store(flags, v, cell, 0);
                b.ins().jump(next, &[]);
            }
            Op::Move(n) => {
                // In bounds when 0 <= p + n < len: one unsigned compare.
                let np = b.ins().iadd_imm_s(cur, n);
                let ok = b.ins().icmp(IntCC::UnsignedLessThan, np, len);
                let fine = b.create_block();
                let off = b.create_block();
                b.ins().brif(ok, fine, &[], off, &[]);
                b.switch_to_block(fine);
                b.def_var(pv, np);
                b.ins().jump(next, &[]);
                // Off the tape: the interpreter redoes this move (and grows
                // the tape, or reports the error).
                b.switch_to_block(off);
                let at = b.ins().iconst(types::I32, k as i64);
                b.ins().store(flags, at, frame, 0);
                b.ins().store(flags, cur, slots, 16);
                let three = b.ins().iconst(types::I32, 3);
                b.ins().store(flags, three, frame, 4);
                b.ins().store(flags, three, frame, 8);
                let st = b.ins().iconst(types::I32, i64::from(OSR_DEOPT));
                b.ins().return_(&[st]);
            }
            Op::Out => {
                let v = b.ins().uload8(types::I32, flags, cell, 0);
                let f = b.ins().iconst(ptr, io.put as i64);
                b.ins().call_indirect(put_ref, f, &[v]);
                b.ins().jump(next, &[]);
            }
            Op::In => {
                let f = b.ins().iconst(ptr, io.get as i64);
                let call = b.ins().call_indirect(get_ref, f, &[]);
                let c = b.inst_results(call)[0];
                let eof = b.ins().icmp_imm_s(IntCC::Equal, c, -1);
                let store = b.create_block();
                b.ins().brif(eof, next, &[], store, &[]);
                b.switch_to_block(store);
                b.ins().istore8(flags, c, cell, 0);
                b.ins().jump(next, &[]);
            }
            Op::Clear => {
                let zero = b.ins().iconst(types::I8, 0);
                b.ins().store(flags, zero, cell, 0);
                b.ins().jump(next, &[]);
            }
            Op::JmpZ(t) => {
                let v = b.ins().load(types::I8, flags, cell, 0);
                match multiply_loop(&p.ops[k + 1..t as usize - 1]) {
                    // A loop that moves the cell's value into others, k
                    // times each (`[->++>+<<]`): done in one step when every
                    // cell it touches is on the tape; else the loop as it is.
                    Some((lo, hi, adds)) => {
                        let once = b.create_block();
                        let in_bounds = b.create_block();
                        b.ins().brif(v, once, &[], blocks[t as usize], &[]);
                        b.switch_to_block(once);
                        let lo_ok = b.ins().iadd_imm_s(cur, lo);
                        let lo_ok = b
                            .ins()
                            .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, lo_ok, 0);
                        let hi_p = b.ins().iadd_imm_s(cur, hi);
                        let hi_ok = b.ins().icmp(IntCC::SignedLessThan, hi_p, len);
                        let ok = b.ins().band(lo_ok, hi_ok);
                        b.ins().brif(ok, in_bounds, &[], next, &[]);
                        b.switch_to_block(in_bounds);
                        let v = b.ins().load(types::I8, flags, cell, 0);
                        for (off, k) in adds {
                            let d = b.ins().imul_imm_s(v, i64::from(k as i8));
                            let c = b.ins().load(types::I8, flags, cell, off as i32);
                            let c = b.ins().iadd(c, d);
                            b.ins().store(flags, c, cell, off as i32);
                        }
                        let zero = b.ins().iconst(types::I8, 0);
                        b.ins().store(flags, zero, cell, 0);
                        b.ins().jump(blocks[t as usize], &[]);
                    }
                    None => {
                        b.ins().brif(v, next, &[], blocks[t as usize], &[]);
                    }
                }
            }
            Op::JmpNz(t) => {
                let v = b.ins().load(types::I8, flags, cell, 0);
                b.ins().brif(v, blocks[t as usize], &[], next, &[]);
            }
        }
    }
    b.switch_to_block(end);
    let done = b.ins().iconst(types::I32, i64::from(OSR_COMPLETED));
    b.ins().return_(&[done]);
    b.seal_all_blocks();
    b.finalize(isa.frontend_config());

    Ok(tierbridge::cranelift::compile_with_unwind(&isa, func)?)
}

/// A program ready to run, with its tier table (function 0 is the program).
pub struct Bf {
    pub program: Arc<Program>,
    pub table: Arc<TierTable>,
    pub mode: Mode,
    io: Io,
    put: ExitStub,
    get: ExitStub,
    limit: usize,
    times: Arc<Mutex<Vec<f64>>>,
}

/// The default tape limit: 2^28 cells.
pub const TAPE_LIMIT: usize = 1 << 28;

/// Where the tape starts: a small tape, so that growing it (and the
/// deoptimization that asks for it) happens in ordinary programs.
const FIRST_TAPE: usize = 64;

static FRESH: AtomicU64 = AtomicU64::new(0);

impl Bf {
    /// A program on `bridge`, run in `mode` (`config` says when loops are
    /// hot), with `io` and a tape of at most `limit` cells.
    pub fn new(
        program: Program,
        bridge: Arc<Bridge>,
        mode: Mode,
        config: TierConfig,
        io: Io,
        limit: usize,
    ) -> Result<Bf, BfError> {
        let program = Arc::new(program);
        let times = Arc::new(Mutex::new(Vec::new()));
        let config = match mode {
            Mode::Interp => TierConfig::interpreter_only(),
            _ => config,
        };
        let compiler: Option<Box<dyn Compiler>> = match mode {
            Mode::Interp => None,
            _ => Some(Box::new(BfJit {
                program: program.clone(),
                io,
                times: times.clone(),
            })),
        };
        let conv = CallConv::host().map_err(|e| BfError::Internal(e.to_string()))?;
        let internal = |e: &dyn std::fmt::Display| BfError::Internal(e.to_string());
        let table = TierTable::new(
            bridge.clone(),
            conv,
            config,
            FailurePolicy::Report,
            Arc::new(NoEntry),
            compiler,
        );
        let n = FRESH.fetch_add(1, Ordering::Relaxed);
        let decl = FnDecl::new(
            format!("brainfuck#{n}"),
            Signature::parse("()->void").unwrap(),
        )
        .loop_headers(program.headers.iter().copied())
        .frame_slots(3);
        table.add(decl).map_err(|e| internal(&e))?;
        let stub = |s: &str| {
            bridge
                .exit_stub(&Signature::parse(s).unwrap(), conv)
                .map_err(|e| internal(&e))
        };
        Ok(Bf {
            put: stub("(i32)->i32")?,
            get: stub("()->i32")?,
            program,
            table,
            mode,
            io,
            limit,
            times,
        })
    }

    /// What the tiers did.
    pub fn stats(&self) -> Stats {
        let s = self.table.stats();
        Stats {
            compiled: s.compiled,
            osr: s.osr_entries,
            deopts: s.deopts,
            compile_ms: self.times.lock().unwrap().clone(),
        }
    }

    /// Runs the program from the start with a fresh tape.
    pub fn run(&self) -> Result<(), BfError> {
        let f = FuncId(0);
        let ops = &self.program.ops;
        let mut tape = vec![0u8; FIRST_TAPE.min(self.limit.max(1))];
        let (mut pc, mut p) = (0usize, 0usize);
        let internal = |e: &dyn std::fmt::Display| BfError::Internal(e.to_string());
        // Offers the frame at `at` to compiled code: Ok(true) when the
        // program ran to its end there.
        let osr = |at: usize, tape: &mut Vec<u8>, pc: &mut usize, p: &mut usize| {
            let slots = [tape.as_mut_ptr() as u64, tape.len() as u64, *p as u64];
            match self
                .table
                .osr(f, at as u32, &slots, &[], &mut [])
                .map_err(|e| internal(&e))?
            {
                OsrOutcome::NotReady => Ok(false),
                OsrOutcome::Completed => Ok(true),
                OsrOutcome::Deopt(frame) => {
                    *pc = frame.pc() as usize;
                    *p = frame.locals()[2] as usize;
                    Ok(false)
                }
            }
        };
        if self.mode == Mode::Jit {
            // A program the JIT refuses (too large) is interpreted: the
            // failure is counted in the table's stats.
            let _ = self.table.compile_now(f);
            if osr(0, &mut tape, &mut pc, &mut p)? {
                return Ok(());
            }
        }
        while pc < ops.len() {
            match ops[pc] {
                Op::Add(n) => tape[p] = tape[p].wrapping_add(n),
                Op::Clear => tape[p] = 0,
                Op::Move(n) => {
                    let np = p as i64 + n;
                    if np < 0 {
                        return Err(BfError::LeftOfZero {
                            offset: self.program.offsets[pc],
                        });
                    }
                    let np = np as usize;
                    if np >= tape.len() {
                        if np >= self.limit {
                            return Err(BfError::TapeLimit {
                                offset: self.program.offsets[pc],
                                limit: self.limit,
                            });
                        }
                        let grown = (np + 1).next_power_of_two().max(tape.len() * 2);
                        tape.resize(grown.min(self.limit), 0);
                    }
                    p = np;
                }
                Op::Out => {
                    let mut r = [0u64];
                    // SAFETY: `put` is an `int(int)` C function (Io's contract).
                    unsafe {
                        self.put.call_unchecked(
                            self.io.put,
                            [u64::from(tape[p])].as_ptr(),
                            r.as_mut_ptr(),
                        )
                    };
                }
                Op::In => {
                    let mut r = [0u64];
                    // SAFETY: `get` is an `int(void)` C function (Io's contract).
                    unsafe {
                        self.get
                            .call_unchecked(self.io.get, [].as_ptr(), r.as_mut_ptr())
                    };
                    if r[0] as i32 != -1 {
                        tape[p] = r[0] as u8;
                    }
                }
                Op::JmpZ(t) => {
                    if tape[p] == 0 {
                        pc = t as usize;
                        continue;
                    }
                }
                Op::JmpNz(t) => {
                    if tape[p] != 0 {
                        pc = t as usize;
                        if self.mode != Mode::Interp
                            && self.table.back_edge(f, t)
                            && osr(pc, &mut tape, &mut pc, &mut p)?
                        {
                            return Ok(());
                        }
                        continue;
                    }
                }
            }
            pc += 1;
        }
        Ok(())
    }
}

/// `putchar_unlocked` and `getchar_unlocked` from the C library.
pub fn stdio() -> Result<Io, tierbridge::native::NativeError> {
    let libc = tierbridge::native::NativeLibrary::this_process()?;
    Ok(Io {
        put: libc.symbol("putchar_unlocked")?,
        get: libc.symbol("getchar_unlocked")?,
    })
}
