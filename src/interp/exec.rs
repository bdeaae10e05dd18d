//! Running programs.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use smallvec::SmallVec;

use super::{InterpError, Op, Program};
use crate::abi::{CallConv, Type};
use crate::host::{Dispatcher, EntryCall, EntryError, FailurePolicy, HostError};
use crate::thunks::exec::ExecCode;
use crate::thunks::{Bridge, EntryPoint, ExitStub, ThunkError};
use crate::tier::{TierConfig, TierStats};

/// Deepest interpreted call nesting before a call traps.
pub const MAX_CALL_DEPTH: u32 = 4_000;

/// `f64` → `i64` as x86's `cvttsd2si` does it: truncation, and `i64::MIN`
/// for NaN and out-of-range values (generated code gives the same).
pub(crate) fn f64_to_i64(x: f64) -> i64 {
    if x.is_nan() || !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&x) {
        i64::MIN
    } else {
        x as i64
    }
}

struct NativeBinding {
    addr: usize,
    stub: ExitStub,
}

/// Compiled code of one function.
struct Compiled {
    _code: ExecCode,
    /// OSR entries: (loop header pc, address of `extern "C" fn(*const u64) -> R`).
    osr: Vec<(u32, usize)>,
    /// Exit stub of `(ptr)->R`, to enter an OSR entry.
    osr_stub: ExitStub,
}

/// Entry cells and JIT state (generated backend only).
struct Tiers {
    config: TierConfig,
    /// Each function's current code: its interpreter entry point, then its JIT code.
    cells: Box<[AtomicUsize]>,
    /// `jmp [cell]` stubs: the stable native pointers of the functions.
    jumps: ExecCode,
    /// Each function's exit stub (its own signature), made once: the
    /// interpreter calls compiled code through it, compiled code calls it.
    stubs: Vec<ExitStub>,
    compiled: Vec<OnceLock<Option<Compiled>>>,
    calls: Box<[AtomicU32]>,
    back_edges: Box<[AtomicU32]>,
    n_compiled: AtomicU64,
    n_osr: AtomicU64,
    n_deopt: AtomicU64,
}

struct Inner {
    program: Program,
    bridge: Arc<Bridge>,
    conv: CallConv,
    natives: Vec<OnceLock<NativeBinding>>,
    entries: Vec<EntryPoint>,
    tiers: Option<Tiers>,
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
        let mut failure = None;
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let mut entries = Vec::new();
            for (i, f) in program.functions.iter().enumerate() {
                let w = weak.clone();
                let host = move |c: EntryCall<'_>| -> Result<(), HostError> {
                    let inner = w.upgrade().ok_or("the runtime is gone")?;
                    let r = inner.run(c.func.0 as u32, c.args, 0)?;
                    if let Some(slot) = c.ret.first_mut() {
                        *slot = r;
                    }
                    Ok(())
                };
                let d = Dispatcher::from_host(Arc::new(host), policy);
                match bridge.entry_point(&f.sig, conv, &d, i as u64) {
                    Ok(e) => entries.push(e),
                    Err(e) => failure = failure.take().or(Some(e)),
                }
            }
            let tiers = if entries.len() == program.functions.len() {
                match make_tiers(&bridge, &program, conv, &entries, config) {
                    Ok(t) => t,
                    Err(e) => {
                        failure = failure.take().or(Some(e));
                        None
                    }
                }
            } else {
                None
            };
            Inner {
                natives: program.natives.iter().map(|_| OnceLock::new()).collect(),
                program,
                bridge,
                conv,
                entries,
                tiers,
            }
        });
        if let Some(e) = failure {
            return Err(e.into());
        }
        Ok(Runtime { inner })
    }

    /// What the tiers did so far (all zero when only interpreting).
    pub fn tier_stats(&self) -> TierStats {
        self.inner
            .tiers
            .as_ref()
            .map_or(TierStats::default(), |t| TierStats {
                compiled: t.n_compiled.load(Ordering::Relaxed),
                osr_entries: t.n_osr.load(Ordering::Relaxed),
                deopts: t.n_deopt.load(Ordering::Relaxed),
            })
    }

    /// True if this runtime can tier up (generated backend, tiering enabled).
    pub fn tiers_enabled(&self) -> bool {
        self.inner.tiers.is_some()
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
        let Some(t) = &self.inner.tiers else {
            return Ok(None);
        };
        self.inner.osr_into(t, fi, header, locals)
    }

    /// Compiles function `name` now and publishes it in its entry cell
    /// (explicit tier-up); false if it cannot be compiled here.
    pub fn tier_up(&self, name: &str) -> bool {
        self.inner
            .program
            .function(name)
            .is_some_and(|i| self.inner.compiled(i).is_some())
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

    /// Binds every unbound native by looking its name up in the process's
    /// loaded libraries (`dlsym(RTLD_DEFAULT, name)`).
    ///
    /// # Safety
    /// Each symbol found must be a function with the declared signature.
    ///
    /// # Errors
    /// [`InterpError::Unbound`] for a symbol that is not found.
    pub unsafe fn bind_natives_from_process(&self) -> Result<(), InterpError> {
        for (i, n) in self.inner.program.natives.iter().enumerate() {
            if self.inner.natives[i].get().is_some() {
                continue;
            }
            let name = std::ffi::CString::new(n.name.clone())
                .map_err(|_| InterpError::Unbound(n.name.clone()))?;
            // SAFETY: dlsym with a valid NUL-terminated name; the result is only an address.
            let addr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            if addr.is_null() {
                return Err(InterpError::Unbound(n.name.clone()));
            }
            // SAFETY: forwarded contract.
            unsafe { self.bind_native(&n.name, addr) }?;
        }
        Ok(())
    }

    /// A native function pointer that runs interpreted function `name`, in the
    /// host convention with its declared signature.
    pub fn entry_point(&self, name: &str) -> Option<*const c_void> {
        self.inner
            .program
            .function(name)
            .map(|i| self.inner.entries[i as usize].code_ptr())
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
        self.inner.call_function(i, args, 0)
    }
}

/// A failure of a call into compiled code: the interpreter error that a guard
/// failure (deopt) or an interpreted callee recorded, or the bridge's error.
fn from_compiled(e: ThunkError) -> InterpError {
    match e {
        ThunkError::Callback(EntryError::Host { error, .. }) => {
            match error.downcast::<InterpError>() {
                Ok(e) => *e,
                Err(other) => InterpError::Call(other.to_string()),
            }
        }
        e => e.into(),
    }
}

#[cfg(target_arch = "x86_64")]
fn make_tiers(
    bridge: &Bridge,
    program: &Program,
    conv: CallConv,
    entries: &[EntryPoint],
    config: TierConfig,
) -> Result<Option<Tiers>, ThunkError> {
    if config.call_threshold == u32::MAX && config.loop_threshold == u32::MAX {
        return Ok(None);
    }
    let stubs = program
        .functions
        .iter()
        .map(|f| bridge.exit_stub(&f.sig, conv))
        .collect::<Result<Vec<_>, _>>()?;
    let cells: Box<[AtomicUsize]> = entries
        .iter()
        .map(|e| AtomicUsize::new(e.code_ptr() as usize))
        .collect();
    let addrs: Vec<usize> = cells
        .iter()
        .map(|c| c as *const AtomicUsize as usize)
        .collect();
    let Some(jumps) = bridge.install_code(&crate::thunks::x64::emit_cell_jumps(&addrs)) else {
        return Ok(None); // libffi: interpret only
    };
    Ok(Some(Tiers {
        config,
        jumps: jumps?,
        stubs,
        compiled: entries.iter().map(|_| OnceLock::new()).collect(),
        calls: entries.iter().map(|_| AtomicU32::new(0)).collect(),
        back_edges: entries.iter().map(|_| AtomicU32::new(0)).collect(),
        cells,
        n_compiled: AtomicU64::new(0),
        n_osr: AtomicU64::new(0),
        n_deopt: AtomicU64::new(0),
    }))
}

#[cfg(not(target_arch = "x86_64"))]
fn make_tiers(
    _: &Bridge,
    _: &Program,
    _: CallConv,
    _: &[EntryPoint],
    _: TierConfig,
) -> Result<Option<Tiers>, ThunkError> {
    Ok(None)
}

/// Called by compiled code when a guard fails at `pc`: the interpreter resumes
/// there with the compiled frame's locals and operand stack, and its result is
/// the compiled function's result.
///
/// # Safety
/// `ctx` is the live `Inner` the code was compiled for; `frame` points to the
/// function's locals followed by its operand stack at `pc`.
#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn jit_deopt(ctx: *const Inner, fi: u32, pc: u32, frame: *const u64) -> u64 {
    // SAFETY: by the contract above.
    let inner = unsafe { &*ctx };
    let f = &inner.program.functions[fi as usize];
    let (nl, depth) = (f.locals.len(), f.depth[pc as usize] as usize);
    // SAFETY: the frame holds nl locals and then the operand stack.
    let all = unsafe { std::slice::from_raw_parts(frame, nl + depth) };
    if let Some(t) = &inner.tiers {
        t.n_deopt.fetch_add(1, Ordering::Relaxed);
    }
    // No OSR from a resumed frame: a forced deopt would otherwise re-enter
    // compiled code and deopt again, growing the native stack.
    match inner.run_from(
        fi,
        pc as usize,
        SmallVec::from_slice(&all[..nl]),
        SmallVec::from_slice(&all[nl..]),
        0,
        false,
    ) {
        Ok(v) => v,
        Err(e) => {
            crate::host::record_failure(EntryError::Host {
                func: u64::from(fi),
                error: Box::new(e),
            });
            0
        }
    }
}

impl Inner {
    /// The stable native pointer of function `i`.
    fn func_ptr(&self, i: u32) -> usize {
        match &self.tiers {
            Some(t) => t.jumps.addr().as_ptr() as usize + 16 * i as usize,
            None => self.entries[i as usize].code_ptr() as usize,
        }
    }

    /// Compiles function `fi` once, publishing it in its cell.
    #[cfg(target_arch = "x86_64")]
    fn compiled(&self, fi: u32) -> Option<&Compiled> {
        let t = self.tiers.as_ref()?;
        t.compiled[fi as usize]
            .get_or_init(|| self.compile(fi))
            .as_ref()
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn compiled(&self, _: u32) -> Option<&Compiled> {
        None
    }

    #[cfg(target_arch = "x86_64")]
    fn compile(&self, fi: u32) -> Option<Compiled> {
        let t = self.tiers.as_ref()?;
        // The register stub when its result is at most one slot, else the slot stub.
        let call_stub = |s: &ExitStub| {
            use crate::tier::jit::CallStub;
            match s.raw_fast() {
                Some((addr, kind)) => Some(CallStub::Register(addr, kind)),
                None => s.raw_fn().map(CallStub::Slots),
            }
        };
        let call_stubs = t.stubs.iter().map(call_stub).collect::<Option<Vec<_>>>()?;
        let native_stubs = self
            .program
            .natives
            .iter()
            .map(|n| {
                let s = self.bridge.exit_stub(&n.sig, self.conv).ok()?;
                call_stub(&s)
            })
            .collect::<Option<Vec<_>>>()?;
        // The natives this function calls must be bound: compiled code calls
        // them directly (the others are never used by this code).
        let f = &self.program.functions[fi as usize];
        let used = |i: usize| f.code.contains(&crate::interp::Op::CallNative(i as u32));
        let natives = self
            .natives
            .iter()
            .enumerate()
            .map(|(i, n)| match n.get() {
                Some(b) => Some(b.addr),
                None if !used(i) => Some(0),
                None => None,
            })
            .collect::<Option<Vec<_>>>()?;
        let cells: Vec<usize> = t
            .cells
            .iter()
            .map(|c| c as *const AtomicUsize as usize)
            .collect();
        let func_ptrs: Vec<usize> = (0..self.program.functions.len() as u32)
            .map(|i| self.func_ptr(i))
            .collect();
        let env = crate::tier::jit::JitEnv {
            cells: &cells,
            call_stubs: &call_stubs,
            natives: &natives,
            native_stubs: &native_stubs,
            func_ptrs: &func_ptrs,
            deopt: jit_deopt as *const () as usize,
            ctx: self as *const Inner as usize,
            force_deopt: t.config.force_deopt,
        };
        let code = crate::tier::jit::compile(&self.program, fi, &env);
        let installed = self.bridge.install_code(&code.bytes)?.ok()?;
        let base = installed.addr().as_ptr() as usize;
        let f = &self.program.functions[fi as usize];
        let osr_sig =
            crate::abi::Signature::new(vec![crate::abi::Scalar::Ptr.into()], f.sig.ret().cloned())
                .ok()?;
        let osr_stub = self.bridge.exit_stub(&osr_sig, self.conv).ok()?;
        t.cells[fi as usize].store(base, Ordering::Release);
        t.n_compiled.fetch_add(1, Ordering::Relaxed);
        Some(Compiled {
            _code: installed,
            osr: code.osr.iter().map(|(h, off)| (*h, base + off)).collect(),
            osr_stub,
        })
    }

    /// A call of function `i` from the interpreter or from Rust: through its
    /// entry cell once it is compiled, else interpreted here.
    fn call_function(&self, i: u32, args: &[u64], depth: u32) -> Result<u64, InterpError> {
        if let Some(t) = &self.tiers {
            let cell = t.cells[i as usize].load(Ordering::Acquire);
            if cell != self.entries[i as usize].code_ptr() as usize {
                let stub = &t.stubs[i as usize];
                let mut ret = [0u64; 1];
                let nret = stub.signature().ret_slots();
                // SAFETY: the cell holds compiled code of exactly this signature.
                let r = unsafe { stub.call(cell as *const c_void, args, &mut ret[..nret]) };
                return r.map(|()| ret[0]).map_err(from_compiled);
            }
            if t.calls[i as usize]
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
                >= t.config.call_threshold
            {
                // Hot: compile; this call still runs here, later ones go through the cell.
                let _ = self.compiled(i);
            }
        }
        self.run(i, args, depth)
    }

    fn trap<T>(&self, fi: u32, pc: usize, message: impl Into<String>) -> Result<T, InterpError> {
        Err(InterpError::Trap {
            func: self.program.functions[fi as usize].name.clone(),
            pc,
            message: message.into(),
        })
    }

    fn run(&self, fi: u32, args: &[u64], depth: u32) -> Result<u64, InterpError> {
        let f = &self.program.functions[fi as usize];
        let mut locals: SmallVec<[u64; 16]> = SmallVec::from_elem(0, f.locals.len());
        for (slot, (a, t)) in locals.iter_mut().zip(args.iter().zip(f.sig.params())) {
            // The slot convention: what a native caller would deliver.
            *slot = match t {
                Type::Scalar(s) => s.to_slot(*a),
                Type::Struct(_) => *a,
            };
        }
        self.run_from(fi, 0, locals, SmallVec::new(), depth, true)
    }

    /// Interprets function `fi` from instruction `pc` with the given frame.
    fn run_from(
        &self,
        fi: u32,
        mut pc: usize,
        mut locals: SmallVec<[u64; 16]>,
        mut st: SmallVec<[u64; 16]>,
        depth: u32,
        allow_osr: bool,
    ) -> Result<u64, InterpError> {
        let f = &self.program.functions[fi as usize];
        if depth > MAX_CALL_DEPTH {
            return self.trap(fi, pc, "call depth exceeded");
        }
        let osr_tiers = if allow_osr { self.tiers.as_ref() } else { None };
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
                            && let Some(tiers) = osr_tiers
                            && let Some(r) = self.maybe_osr(tiers, fi, pc, &locals, &st)?
                        {
                            return Ok(r);
                        }
                    }
                }
                Op::Call(i) => {
                    let callee = &self.program.functions[i as usize];
                    let n = callee.sig.params().len();
                    let args: SmallVec<[u64; 8]> = st.drain(st.len() - n..).collect();
                    let r = self.call_function(i, &args, depth + 1)?;
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

impl Inner {
    /// At a taken backward branch to `header` with an empty operand stack:
    /// counts it, and once the function is hot moves this frame into its
    /// compiled code (OSR); returns the function's result if it did.
    fn maybe_osr(
        &self,
        t: &Tiers,
        fi: u32,
        header: usize,
        locals: &[u64],
        st: &[u64],
    ) -> Result<Option<u64>, InterpError> {
        if !st.is_empty()
            || t.back_edges[fi as usize]
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
                < t.config.loop_threshold
        {
            return Ok(None);
        }
        self.osr_into(t, fi, header, locals)
    }

    /// The OSR transfer: compiles the function if it is not yet, then calls
    /// its entry for loop header `header` with the frame's locals as a
    /// migration buffer; `None` when it cannot be compiled or has no entry there.
    fn osr_into(
        &self,
        t: &Tiers,
        fi: u32,
        header: usize,
        locals: &[u64],
    ) -> Result<Option<u64>, InterpError> {
        let Some(c) = self.compiled(fi) else {
            return Ok(None);
        };
        let Some(&(_, entry)) = c.osr.iter().find(|(h, _)| *h as usize == header) else {
            return Ok(None);
        };
        t.n_osr.fetch_add(1, Ordering::Relaxed);
        let f = &self.program.functions[fi as usize];
        let mut ret = [0u64; 1];
        // SAFETY: `entry` is this function's OSR entry for `header`, of type
        // `extern "C" fn(*const u64) -> R`; `locals` holds all its locals.
        let r = unsafe {
            c.osr_stub.call(
                entry as *const c_void,
                &[locals.as_ptr() as u64],
                &mut ret[..f.sig.ret_slots()],
            )
        };
        r.map(|()| Some(ret[0])).map_err(from_compiled)
    }
}
