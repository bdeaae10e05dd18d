//! Running programs.

use std::ffi::c_void;
use std::sync::{Arc, OnceLock, Weak};

use smallvec::SmallVec;

use super::{InterpError, Op, Program};
use crate::abi::{CallConv, Type};
use crate::host::{Dispatcher, EntryCall, FailurePolicy, HostError};
use crate::thunks::{Bridge, EntryPoint, ExitStub, ThunkError};

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

struct Inner {
    program: Program,
    bridge: Arc<Bridge>,
    conv: CallConv,
    natives: Vec<OnceLock<NativeBinding>>,
    entries: Vec<EntryPoint>,
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
    /// A runtime for `program` on `bridge`, in the host's C convention. Each
    /// interpreted function gets an entry point whose failures follow `policy`.
    ///
    /// # Errors
    /// Bridge errors (a signature the backend cannot express).
    pub fn new(
        program: Program,
        bridge: Arc<Bridge>,
        policy: FailurePolicy,
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
            Inner {
                natives: program.natives.iter().map(|_| OnceLock::new()).collect(),
                program,
                bridge,
                conv,
                entries,
            }
        });
        if let Some(e) = failure {
            return Err(e.into());
        }
        Ok(Runtime { inner })
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
        self.inner.run(i, args, 0)
    }
}

impl Inner {
    fn trap<T>(&self, fi: u32, pc: usize, message: impl Into<String>) -> Result<T, InterpError> {
        Err(InterpError::Trap {
            func: self.program.functions[fi as usize].name.clone(),
            pc,
            message: message.into(),
        })
    }

    fn run(&self, fi: u32, args: &[u64], depth: u32) -> Result<u64, InterpError> {
        let f = &self.program.functions[fi as usize];
        if depth > MAX_CALL_DEPTH {
            return self.trap(fi, 0, "call depth exceeded");
        }
        let mut locals: SmallVec<[u64; 16]> = SmallVec::from_elem(0, f.locals.len());
        for (slot, (a, t)) in locals.iter_mut().zip(args.iter().zip(f.sig.params())) {
            // The slot convention: what a native caller would deliver.
            *slot = match t {
                Type::Scalar(s) => s.to_slot(*a),
                Type::Struct(_) => *a,
            };
        }
        let mut st: SmallVec<[u64; 16]> = SmallVec::with_capacity(f.max_stack as usize);
        let mut pc = 0usize;
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
                Op::Br(t) => pc = t as usize,
                Op::BrIf(t) => {
                    if pop!() != 0 {
                        pc = t as usize;
                    }
                }
                Op::BrUnless(t) => {
                    if pop!() == 0 {
                        pc = t as usize;
                    }
                }
                Op::Call(i) => {
                    let callee = &self.program.functions[i as usize];
                    let n = callee.sig.params().len();
                    let args: SmallVec<[u64; 8]> = st.drain(st.len() - n..).collect();
                    let r = self.run(i, &args, depth + 1)?;
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
                Op::FuncAddr(i) => st.push(self.entries[i as usize].code_ptr() as u64),
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
