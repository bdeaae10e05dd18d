//! Running programs.

use std::ffi::c_void;
use std::sync::{Arc, OnceLock, Weak};

use smallvec::SmallVec;

use super::{InterpError, Op, Program};
use crate::abi::{CallConv, Type};
use crate::host::{EntryError, FailurePolicy, FuncId, HostError};
use crate::native::NativeLibrary;
use crate::thunks::{Bridge, ExitStub, ThunkError};
use crate::tier::{
    FnDecl, FrameState, Interpreter, OsrOutcome, TierCall, TierConfig, TierError, TierStats,
    TierTable,
};

/// `f64` → `i64` as x86's `cvttsd2si` does it: truncation, and `i64::MIN`
/// for NaN and out-of-range values (generated code gives the same).
pub(crate) fn f64_to_i64(x: f64) -> i64 {
    if x.is_nan() || !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&x) {
        i64::MIN
    } else {
        x as i64
    }
}

pub(super) struct NativeBinding {
    pub(super) addr: usize,
    stub: ExitStub,
}

pub(super) struct Inner {
    pub(super) program: Program,
    bridge: Arc<Bridge>,
    conv: CallConv,
    pub(super) natives: Vec<OnceLock<NativeBinding>>,
    /// Entry cells, hotness, OSR and deoptimization: the public tier layer,
    /// with this interpreter and the baseline JIT as its client. Function
    /// `i` of the program is the table's `FuncId(i)`.
    pub(super) table: Arc<TierTable>,
    /// Whether anything can tier up (a compiler, code memory, thresholds).
    tiering: bool,
}

/// Runs a [`Program`]: calls between interpreted functions, natives through
/// exit stubs, and every interpreted function available to C as a native
/// function pointer ([`Runtime::entry_point`]).
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("functions", &self.inner.program.functions.len())
            .finish()
    }
}

impl Runtime {
    /// A runtime for `program` on `bridge`, in the host's C convention, that
    /// only interprets. Each interpreted function gets an entry point whose
    /// failures follow `policy`.
    ///
    /// # Safety
    /// As [`Runtime::with_tiers`]: the program is trusted like C code.
    ///
    /// # Errors
    /// Bridge errors (a signature the backend cannot express).
    pub unsafe fn new(
        program: Program,
        bridge: Arc<Bridge>,
        policy: FailurePolicy,
    ) -> Result<Runtime, InterpError> {
        // SAFETY: forwarded contract.
        unsafe { Runtime::with_tiers(program, bridge, policy, TierConfig::interpreter_only()) }
    }

    /// A runtime that tiers hot functions up to the baseline JIT as `config`
    /// says — on the generated backend; on libffi (no code generation: another
    /// CPU, or a policy) everything is interpreted, with the same results.
    ///
    /// # Safety
    /// The interpreter is not a sandbox: programs load and store through
    /// pointers and call native functions. The program must be trusted like C
    /// code — every load, store and native call it makes must be valid for
    /// every call made into this runtime (by [`Runtime::call`],
    /// [`Runtime::osr_enter`], or native code calling its entry points). The
    /// caller of this function takes that responsibility for the runtime's
    /// whole life.
    ///
    /// # Errors
    /// Bridge errors.
    pub unsafe fn with_tiers(
        program: Program,
        bridge: Arc<Bridge>,
        policy: FailurePolicy,
        config: TierConfig,
    ) -> Result<Runtime, InterpError> {
        let conv = CallConv::host().map_err(|e| InterpError::Call(e.to_string()))?;
        let wants = config.call_threshold != u32::MAX || config.loop_threshold != u32::MAX;
        let mut failure = None;
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            // The baseline JIT emits x86-64 (and is compiled out with
            // `--cfg tierbridge_no_codegen`); elsewhere everything is
            // interpreted.
            #[cfg(tierbridge_codegen)]
            let compiler = wants.then(|| super::jit::compiler(weak.clone()));
            #[cfg(not(tierbridge_codegen))]
            let compiler: Option<Box<dyn crate::tier::Compiler>> = {
                let _ = wants;
                None
            };
            let table = TierTable::new(
                bridge.clone(),
                conv,
                config,
                policy,
                Arc::new(RuntimeInterp(weak.clone())),
                compiler,
            );
            for f in &program.functions {
                // OSR only where the operand stack is empty (what the JIT
                // gives entries for).
                let headers = f
                    .loop_headers
                    .iter()
                    .copied()
                    .filter(|&h| f.depth[h as usize] == 0);
                let decl = FnDecl::new(f.name.clone(), f.sig.clone())
                    .loop_headers(headers)
                    .frame_slots(f.locals.len() as u32 + f.max_stack);
                if let Err(e) = table.add(decl) {
                    failure = failure.take().or(Some(e));
                    break;
                }
            }
            Inner {
                natives: program.natives.iter().map(|_| OnceLock::new()).collect(),
                tiering: table.can_compile(),
                program,
                bridge,
                conv,
                table,
            }
        });
        if let Some(e) = failure {
            return Err(e.into());
        }
        Ok(Runtime { inner })
    }

    /// What the tiers did so far (all zero when only interpreting).
    pub fn tier_stats(&self) -> TierStats {
        self.inner.table.stats()
    }

    /// True if this runtime can tier up (generated backend, tiering enabled).
    pub fn tiers_enabled(&self) -> bool {
        self.inner.tiering
    }

    /// The tier table its functions live in (function `i` of the program is
    /// `FuncId(i)`): their cells, native pointers and counters.
    pub fn tier_table(&self) -> &Arc<TierTable> {
        &self.inner.table
    }

    /// Moves an interpreter frame of function `name` into its compiled code at
    /// loop header `header` (an instruction index with an empty operand
    /// stack), compiling the function first if needed: the same transfer the
    /// interpreter makes at a hot back-edge. `locals` are the frame's locals
    /// (parameters first). Returns the function's result, or `None` if there
    /// is no compiled code or no OSR entry at `header`.
    ///
    /// # Errors
    /// [`InterpError::Call`] if `locals` has the wrong length; a trap or
    /// failure in the compiled code (after deoptimization).
    pub fn osr_enter(
        &self,
        name: &str,
        header: usize,
        locals: &[u64],
    ) -> Result<Option<u64>, InterpError> {
        let fi = self
            .inner
            .program
            .function(name)
            .ok_or_else(|| InterpError::Call(format!("no function {name}")))?;
        let want = self.inner.program.functions[fi as usize].locals.len();
        if locals.len() != want {
            return Err(InterpError::Call(format!(
                "{name} has {want} locals, {} given",
                locals.len()
            )));
        }
        if !self.inner.tiering {
            return Ok(None);
        }
        self.inner.osr(fi, header as u32, locals, &[])
    }

    /// Compiles function `name` now and publishes it in its entry cell
    /// (explicit tier-up); false if it cannot be compiled here.
    pub fn tier_up(&self, name: &str) -> bool {
        let Some(i) = self.inner.program.function(name) else {
            return false;
        };
        let (t, f) = (&self.inner.table, FuncId(u64::from(i)));
        self.inner.tiering && (t.is_compiled(f).unwrap_or(false) || t.compile_now(f).is_ok())
    }

    /// The program.
    pub fn program(&self) -> &Program {
        &self.inner.program
    }

    /// Binds the native function `name` to `addr`.
    ///
    /// # Safety
    /// `addr` must be a function with the signature the program declares for
    /// `name`, and stay valid while the runtime is used.
    ///
    /// # Errors
    /// [`InterpError::Unbound`] if the program declares no such native;
    /// [`InterpError::Call`] if it is already bound.
    pub unsafe fn bind_native(&self, name: &str, addr: *const c_void) -> Result<(), InterpError> {
        let i = self
            .inner
            .program
            .natives
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| InterpError::Unbound(name.into()))?;
        let stub = self
            .inner
            .bridge
            .exit_stub(&self.inner.program.natives[i].sig, self.inner.conv)?;
        self.inner.natives[i]
            .set(NativeBinding {
                addr: addr as usize,
                stub,
            })
            .map_err(|_| InterpError::Call(format!("native {name} is already bound")))
    }

    /// Binds every unbound native by looking its name up among the process's
    /// own symbols ([`NativeLibrary::this_process`]: the program and the
    /// libraries loaded with it).
    ///
    /// # Safety
    /// Each symbol found must be a function with the declared signature.
    ///
    /// # Errors
    /// [`InterpError::Native`] for a symbol that is not found (it names the
    /// symbol, and says that a library the program does not link has to be
    /// opened: [`Runtime::bind_natives_from`]).
    pub unsafe fn bind_natives_from_process(&self) -> Result<(), InterpError> {
        let process = NativeLibrary::this_process()?;
        // SAFETY: forwarded contract.
        unsafe { self.bind_natives_from(&[&process]) }
    }

    /// Binds every unbound native to the symbol of its name in the first of
    /// `libraries` that has it (for example a `libm` opened with
    /// [`NativeLibrary::open`], then [`NativeLibrary::this_process`]). The
    /// libraries must stay loaded while the runtime is used.
    ///
    /// # Safety
    /// Each symbol found must be a function with the declared signature.
    ///
    /// # Errors
    /// [`InterpError::Native`] naming the symbol and every library searched;
    /// nothing is bound after the first native that is not found.
    pub unsafe fn bind_natives_from(
        &self,
        libraries: &[&NativeLibrary],
    ) -> Result<(), InterpError> {
        for (i, n) in self.inner.program.natives.iter().enumerate() {
            if self.inner.natives[i].get().is_some() {
                continue;
            }
            let addr = NativeLibrary::find(libraries, &n.name)?;
            // SAFETY: forwarded contract.
            unsafe { self.bind_native(&n.name, addr) }?;
        }
        Ok(())
    }

    /// A native function pointer that runs function `name`, in the host
    /// convention with its declared signature: its stable pointer, which
    /// reaches the compiled code once the function tiers up (calls through
    /// it count towards that).
    pub fn entry_point(&self, name: &str) -> Option<*const c_void> {
        self.inner
            .program
            .function(name)
            .map(|i| self.inner.func_ptr(i))
    }

    /// Runs function `name` with argument slots; returns the result slot (0
    /// for a function without a result).
    ///
    /// # Errors
    /// [`InterpError::Call`] for an unknown function or a wrong argument
    /// count; [`InterpError::Trap`] for a trap.
    pub fn call(&self, name: &str, args: &[u64]) -> Result<u64, InterpError> {
        let i = self
            .inner
            .program
            .function(name)
            .ok_or_else(|| InterpError::Call(format!("no function {name}")))?;
        let want = self.inner.program.functions[i as usize].sig.params().len();
        if args.len() != want {
            return Err(InterpError::Call(format!(
                "{name} takes {want} arguments, {} given",
                args.len()
            )));
        }
        self.inner.call_function(i, args)
    }
}

/// A failure of a call into compiled code: the interpreter error that a guard
/// failure (deopt) or an interpreted callee recorded, or the tier layer's.
fn from_tier(e: TierError) -> InterpError {
    match e {
        TierError::Failed(EntryError::Host { error, .. }) => {
            match error.downcast::<InterpError>() {
                Ok(e) => *e,
                Err(other) => InterpError::Call(other.to_string()),
            }
        }
        e => e.into(),
    }
}

/// The tier table's view of this interpreter: calls from C and compiled
/// code, and frames that compiled code deoptimized. A `Weak` (the runtime
/// owns the table), upgraded and run in one step on the call path.
struct RuntimeInterp(Weak<Inner>);

impl Interpreter for RuntimeInterp {
    fn interpret(&self, func: FuncId, args: &[u64], ret: &mut [u64]) -> Result<(), HostError> {
        let inner = self.0.upgrade().ok_or("the runtime is gone")?;
        let r = inner.run(func.0 as u32, args)?;
        if let Some(slot) = ret.first_mut() {
            *slot = r;
        }
        Ok(())
    }

    fn resume(&self, func: FuncId, frame: &FrameState, ret: &mut [u64]) -> Result<(), HostError> {
        let inner = self.0.upgrade().ok_or("the runtime is gone")?;
        // No OSR from a resumed frame: a forced deopt would otherwise re-enter
        // compiled code and deopt again, growing the native stack.
        let r = inner.run_from(
            func.0 as u32,
            frame.pc() as usize,
            SmallVec::from_slice(frame.locals()),
            SmallVec::from_slice(frame.stack()),
            false,
        )?;
        if let Some(slot) = ret.first_mut() {
            *slot = r;
        }
        Ok(())
    }
}

impl Inner {
    /// The stable native pointer of function `i`.
    pub(super) fn func_ptr(&self, i: u32) -> *const c_void {
        self.table
            .native_ptr(FuncId(u64::from(i)))
            .expect("every function of the program is in the table")
    }

    /// A call of function `i` from the interpreter or from Rust: through the
    /// tier table (its compiled code, when it has some), else interpreted here.
    fn call_function(&self, i: u32, args: &[u64]) -> Result<u64, InterpError> {
        if self.tiering {
            let mut ret = [0u64; 1];
            let nret = self.program.functions[i as usize].sig.ret_slots();
            match self
                .table
                .call(FuncId(u64::from(i)), args, &mut ret[..nret])
            {
                Ok(TierCall::Compiled) => return Ok(ret[0]),
                Ok(TierCall::Interpret) => {}
                Err(e) => return Err(from_tier(e)),
            }
        }
        self.run(i, args)
    }

    /// Offers the frame at loop header `header` to the tier table's OSR:
    /// the function's result when compiled code ran the call to its end, or
    /// interpreted on from where it deoptimized; `None` when there is no
    /// OSR entry. Out of line: the interpreter's loop keeps its registers.
    #[inline(never)]
    fn osr(
        &self,
        fi: u32,
        header: u32,
        locals: &[u64],
        st: &[u64],
    ) -> Result<Option<u64>, InterpError> {
        let mut ret = [0u64; 1];
        let nret = self.program.functions[fi as usize].sig.ret_slots();
        match self
            .table
            .osr(FuncId(u64::from(fi)), header, locals, st, &mut ret[..nret])
            .map_err(from_tier)?
        {
            OsrOutcome::NotReady => Ok(None),
            OsrOutcome::Completed => Ok(Some(ret[0])),
            OsrOutcome::Deopt(frame) => {
                let r = self.run_from(
                    fi,
                    frame.pc() as usize,
                    SmallVec::from_slice(frame.locals()),
                    SmallVec::from_slice(frame.stack()),
                    false,
                )?;
                Ok(Some(r))
            }
        }
    }

    fn trap<T>(&self, fi: u32, pc: usize, message: impl Into<String>) -> Result<T, InterpError> {
        Err(InterpError::Trap {
            func: self.program.functions[fi as usize].name.clone(),
            pc,
            message: message.into(),
        })
    }

    fn run(&self, fi: u32, args: &[u64]) -> Result<u64, InterpError> {
        let f = &self.program.functions[fi as usize];
        let mut locals: SmallVec<[u64; 16]> = SmallVec::from_elem(0, f.locals.len());
        for (slot, (a, t)) in locals.iter_mut().zip(args.iter().zip(f.sig.params())) {
            // The slot convention: what a native caller would deliver.
            *slot = match t {
                Type::Scalar(s) => s.to_slot(*a),
                Type::Struct(_) => *a,
            };
        }
        self.run_from(fi, 0, locals, SmallVec::new(), true)
    }

    /// Interprets function `fi` from instruction `pc` with the given frame.
    fn run_from(
        &self,
        fi: u32,
        mut pc: usize,
        mut locals: SmallVec<[u64; 16]>,
        mut st: SmallVec<[u64; 16]>,
        allow_osr: bool,
    ) -> Result<u64, InterpError> {
        let f = &self.program.functions[fi as usize];
        // Every tier's limit: the native stack this call would run on
        // (`crate::stack`), shared with compiled code and with C.
        if let Err(e) = crate::stack::check(0) {
            return self.trap(fi, pc, e.to_string());
        }
        let osr_allowed = allow_osr && self.tiering;
        macro_rules! pop {
            () => {
                st.pop().expect("verified: the operand is there")
            };
        }
        macro_rules! bin_i {
            ($e:expr) => {{
                let b = pop!() as i64;
                let a = pop!() as i64;
                #[allow(clippy::redundant_closure_call)]
                st.push(($e)(a, b) as u64);
            }};
        }
        macro_rules! bin_f {
            ($e:expr) => {{
                let b = f64::from_bits(pop!());
                let a = f64::from_bits(pop!());
                #[allow(clippy::redundant_closure_call)]
                st.push(($e)(a, b));
            }};
        }
        loop {
            let op = f.code[pc];
            pc += 1;
            match op {
                Op::ConstI(v) => st.push(v as u64),
                Op::ConstF(b) => st.push(b),
                Op::Get(l) => st.push(locals[l as usize]),
                Op::Set(l) => locals[l as usize] = pop!(),
                Op::Tee(l) => locals[l as usize] = *st.last().expect("verified"),
                Op::Drop => {
                    pop!();
                }
                Op::IAdd => bin_i!(|a: i64, b: i64| a.wrapping_add(b)),
                Op::ISub => bin_i!(|a: i64, b: i64| a.wrapping_sub(b)),
                Op::IMul => bin_i!(|a: i64, b: i64| a.wrapping_mul(b)),
                Op::IDivS | Op::IRemS => {
                    let b = pop!() as i64;
                    let a = pop!() as i64;
                    if b == 0 {
                        return self.trap(fi, pc - 1, "integer division by zero");
                    }
                    st.push(if op == Op::IDivS {
                        a.wrapping_div(b)
                    } else {
                        a.wrapping_rem(b)
                    } as u64);
                }
                Op::IAnd => bin_i!(|a: i64, b: i64| a & b),
                Op::IOr => bin_i!(|a: i64, b: i64| a | b),
                Op::IXor => bin_i!(|a: i64, b: i64| a ^ b),
                Op::IShl => bin_i!(|a: i64, b: i64| a.wrapping_shl(b as u32)),
                Op::IShrS => bin_i!(|a: i64, b: i64| a.wrapping_shr(b as u32)),
                Op::IShrU => bin_i!(|a: i64, b: i64| (a as u64).wrapping_shr(b as u32) as i64),
                Op::IEq => bin_i!(|a: i64, b: i64| i64::from(a == b)),
                Op::INe => bin_i!(|a: i64, b: i64| i64::from(a != b)),
                Op::ILtS => bin_i!(|a: i64, b: i64| i64::from(a < b)),
                Op::ILeS => bin_i!(|a: i64, b: i64| i64::from(a <= b)),
                Op::IGtS => bin_i!(|a: i64, b: i64| i64::from(a > b)),
                Op::IGeS => bin_i!(|a: i64, b: i64| i64::from(a >= b)),
                Op::IEqz => {
                    let a = pop!();
                    st.push(u64::from(a == 0));
                }
                Op::FAdd => bin_f!(|a: f64, b: f64| (a + b).to_bits()),
                Op::FSub => bin_f!(|a: f64, b: f64| (a - b).to_bits()),
                Op::FMul => bin_f!(|a: f64, b: f64| (a * b).to_bits()),
                Op::FDiv => bin_f!(|a: f64, b: f64| (a / b).to_bits()),
                Op::FEq => bin_f!(|a: f64, b: f64| u64::from(a == b)),
                Op::FNe => bin_f!(|a: f64, b: f64| u64::from(a != b)),
                Op::FLt => bin_f!(|a: f64, b: f64| u64::from(a < b)),
                Op::FLe => bin_f!(|a: f64, b: f64| u64::from(a <= b)),
                Op::FGt => bin_f!(|a: f64, b: f64| u64::from(a > b)),
                Op::FGe => bin_f!(|a: f64, b: f64| u64::from(a >= b)),
                Op::IToF => {
                    let a = pop!() as i64;
                    st.push((a as f64).to_bits());
                }
                Op::FToI => {
                    let a = f64::from_bits(pop!());
                    st.push(f64_to_i64(a) as u64);
                }
                Op::Load32S | Op::Load64 | Op::LoadF64 => {
                    let addr = pop!() as usize;
                    if addr == 0 {
                        return self.trap(fi, pc - 1, "load from a null pointer");
                    }
                    // SAFETY: programs are trusted like C code (module docs): a
                    // non-null address they load from is theirs to read.
                    let v = unsafe {
                        match op {
                            Op::Load32S => (addr as *const i32).read_unaligned() as i64 as u64,
                            _ => (addr as *const u64).read_unaligned(),
                        }
                    };
                    st.push(v);
                }
                Op::Store32 | Op::Store64 => {
                    let v = pop!();
                    let addr = pop!() as usize;
                    if addr == 0 {
                        return self.trap(fi, pc - 1, "store to a null pointer");
                    }
                    // SAFETY: as for loads: trusted programs write their own memory.
                    unsafe {
                        match op {
                            Op::Store32 => (addr as *mut u32).write_unaligned(v as u32),
                            _ => (addr as *mut u64).write_unaligned(v),
                        }
                    }
                }
                Op::Br(t) | Op::BrIf(t) | Op::BrUnless(t) => {
                    let taken = match op {
                        Op::Br(_) => true,
                        Op::BrIf(_) => pop!() != 0,
                        _ => pop!() == 0,
                    };
                    if taken {
                        let backward = (t as usize) < pc;
                        pc = t as usize;
                        if backward
                            && osr_allowed
                            && self.table.back_edge(FuncId(u64::from(fi)), pc as u32)
                            && let Some(r) = self.osr(fi, pc as u32, &locals, &st)?
                        {
                            return Ok(r);
                        }
                    }
                }
                Op::Call(i) => {
                    let callee = &self.program.functions[i as usize];
                    let n = callee.sig.params().len();
                    let args: SmallVec<[u64; 8]> = st.drain(st.len() - n..).collect();
                    let r = self.call_function(i, &args)?;
                    if callee.sig.ret().is_some() {
                        st.push(r);
                    }
                }
                Op::CallNative(i) => {
                    let native = &self.program.natives[i as usize];
                    let Some(b) = self.natives[i as usize].get() else {
                        return Err(InterpError::Unbound(native.name.clone()));
                    };
                    let n = native.sig.params().len();
                    let args: SmallVec<[u64; 8]> = st.drain(st.len() - n..).collect();
                    let mut ret = [0u64; 1];
                    let nret = native.sig.ret_slots();
                    // SAFETY: bind_native's contract: `addr` has this signature.
                    match unsafe {
                        b.stub
                            .call(b.addr as *const c_void, &args, &mut ret[..nret])
                    } {
                        Ok(()) => {}
                        // A function of this runtime that native code called
                        // back trapped: that trap is the error, as compiled
                        // code reports it (`from_tier`), so that every tier
                        // gives the same one.
                        Err(ThunkError::Callback(EntryError::Host { error, .. }))
                            if error.is::<InterpError>() =>
                        {
                            return Err(*error.downcast::<InterpError>().expect("checked"));
                        }
                        Err(ThunkError::Callback(e)) => {
                            return self.trap(
                                fi,
                                pc - 1,
                                format!("in a callback of {}: {e}", native.name),
                            );
                        }
                        Err(e) => return self.trap(fi, pc - 1, e.to_string()),
                    }
                    if nret == 1 {
                        st.push(ret[0]);
                    }
                }
                Op::FuncAddr(i) => st.push(self.func_ptr(i) as u64),
                Op::Return => {
                    return Ok(match (f.sig.ret(), st.pop()) {
                        (Some(Type::Scalar(s)), Some(v)) => s.to_slot(v),
                        _ => 0,
                    });
                }
            }
        }
    }
}
