//! Embedding in [wasmi](https://docs.rs/wasmi), the WebAssembly interpreter
//! (feature `wasmi`), as it is: no fork, no patches, only its public API.
//!
//! - **Native imports**: [`WasmBridge::link_native`] defines a module's import
//!   as a call to a C function through an exit stub. The wasm import type is
//!   checked against the C signature when linking.
//! - **Exports as C function pointers**: [`WasmBridge::export_entry`] turns an
//!   exported wasm function into a native function pointer (an entry point).
//!
//! ## Type mapping
//!
//! | wasm | C (tierbridge signature) |
//! |---|---|
//! | `i32` | `i8 u8 i16 u16 i32 u32 bool` (truncated/extended as the C type says), or `ptr` as an **offset into the instance's linear memory** |
//! | `i64` | `i64 u64`, or `ptr` as a **native address** passed through unchanged (handles, function pointers) |
//! | `f32` / `f64` | `f32` / `f64` |
//!
//! A C function has at most one result; struct parameters and results have no
//! wasm counterpart. Anything else is [`WasmError::Mismatch`] at link time.
//! Linear-memory pointers are translated at every call (memory can grow and
//! move): an `i32` offset becomes `memory base + offset` (refused with a trap
//! if past the end of memory); a native pointer handed to wasm as an `i32` must
//! point into the memory, or the call traps — it is never dereferenced.
//!
//! ## Where the store comes from
//!
//! An export called from C needs a store. Native code reached from wasm runs
//! inside an import, whose `Caller` the adapter keeps on a per-thread stack of
//! active contexts while the native call runs; so wasm → C → wasm → C → wasm
//! nests naturally. Native code called from Rust (not from wasm) that calls
//! exports must run inside [`with_store`].
//!
//! ## Errors
//!
//! A trap (or any wasmi error) inside an export called from C never unwinds
//! through C. Under [`FailurePolicy::Report`] C gets a zeroed result, and when
//! C returns, the import that called it fails with the original
//! `wasmi::Error`, so the embedder's `call` returns it. Under
//! [`FailurePolicy::Abort`] the process aborts.

use std::any::TypeId;
use std::cell::Cell;
use std::ffi::c_void;
use std::sync::Arc;

use thiserror::Error;
use wasmi::{
    AsContextMut, Caller, Extern, ExternType, Func, FuncType, Instance, Linker, Module, TypedFunc,
    Val, ValType,
};

use crate::abi::{CallConv, Scalar, Signature, Type};
use crate::host::{Dispatcher, EntryCall, EntryError, FailurePolicy, HostError};
use crate::thunks::{Bridge, EntryPoint, ExitStub, ThunkError};

/// Errors of the wasmi embedding.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WasmError {
    /// The module has no such import, or the instance no such export.
    #[error("{0}")]
    NotFound(String),
    /// The wasm function type and the C signature do not correspond.
    #[error("{what}: wasm type {wasm} does not match C signature {sig}: {why}")]
    Mismatch {
        /// The import or export.
        what: String,
        /// Its wasm type.
        wasm: String,
        /// The C signature.
        sig: String,
        /// The first difference.
        why: String,
    },
    /// The bridge refused the signature.
    #[error(transparent)]
    Thunk(#[from] ThunkError),
    /// wasmi refused a definition.
    #[error("wasmi: {0}")]
    Wasmi(String),
    /// A library or symbol lookup failed (it names both).
    #[error(transparent)]
    Native(#[from] crate::native::NativeError),
}

/// How one wasm value travels as one C value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conv {
    /// An integer, truncated/extended as the C type says.
    Int(Scalar),
    /// `f32` / `f64` bits.
    Float,
    /// wasm `i32` offset ↔ C pointer into linear memory.
    MemPtr,
    /// wasm `i64` ↔ C pointer, unchanged.
    RawPtr,
}

fn conv_for(wasm: ValType, c: &Type) -> Result<Conv, String> {
    let Type::Scalar(s) = c else {
        return Err(format!("{c} is a struct; wasm has no by-value aggregates"));
    };
    use Scalar::*;
    match (wasm, s) {
        (ValType::I32, I8 | U8 | I16 | U16 | I32 | U32 | Bool) => Ok(Conv::Int(*s)),
        (ValType::I32, Ptr) => Ok(Conv::MemPtr),
        (ValType::I64, I64 | U64) => Ok(Conv::Int(*s)),
        (ValType::I64, Ptr) => Ok(Conv::RawPtr),
        (ValType::F32, F32) | (ValType::F64, F64) => Ok(Conv::Float),
        (w, s) => Err(format!("wasm {w:?} cannot carry C {s}")),
    }
}

/// How the result travels: its wasm type and conversion (`None`: no result).
type RetPlan = Option<(ValType, Conv)>;

/// The conversions of every parameter and of the result.
fn plan(what: &str, ty: &FuncType, sig: &Signature) -> Result<(Vec<Conv>, RetPlan), WasmError> {
    let mismatch = |why: String| WasmError::Mismatch {
        what: what.to_owned(),
        wasm: format!("{:?} -> {:?}", ty.params(), ty.results()),
        sig: sig.to_string(),
        why,
    };
    if sig.is_variadic() {
        return Err(mismatch(
            "variadic C functions cannot be imported with a fixed wasm type".into(),
        ));
    }
    if ty.params().len() != sig.params().len() {
        return Err(mismatch(format!(
            "{} wasm parameters, {} C parameters",
            ty.params().len(),
            sig.params().len()
        )));
    }
    let params = ty
        .params()
        .iter()
        .zip(sig.params())
        .enumerate()
        .map(|(i, (w, c))| conv_for(*w, c).map_err(|e| mismatch(format!("parameter {i}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let ret = match (ty.results(), sig.ret()) {
        ([], None) => None,
        ([w], Some(c)) => Some((
            *w,
            conv_for(*w, c).map_err(|e| mismatch(format!("result: {e}")))?,
        )),
        (ws, _) => {
            return Err(mismatch(format!(
                "{} wasm results for {} C result",
                ws.len(),
                usize::from(sig.ret().is_some())
            )));
        }
    };
    Ok((params, ret))
}

/// The linear memory "memory" as (base, size); (null, 0) if there is none.
fn memory_span(mem: Option<wasmi::Memory>, ctx: impl wasmi::AsContext) -> (usize, usize) {
    match mem {
        // One store lookup for both (the memory can grow and move between calls).
        Some(m) => {
            let data = m.data(&ctx);
            (data.as_ptr() as usize, data.len())
        }
        None => (0, 0),
    }
}

fn trap(msg: String) -> wasmi::Error {
    wasmi::Error::new(msg)
}

// The conversions run on every call across the boundary: they are inlined
// into the call paths, and the traps they can raise are built out of line.

/// wasm value → C slot.
#[inline(always)]
fn to_slot(v: &Val, conv: Conv, mem: (usize, usize)) -> Result<u64, wasmi::Error> {
    Ok(match (conv, v) {
        (Conv::Int(Scalar::Bool), Val::I32(x)) => u64::from(*x != 0),
        (Conv::Int(s), Val::I32(x)) => s.to_slot(*x as u32 as u64),
        (Conv::Int(s), Val::I64(x)) => s.to_slot(*x as u64),
        (Conv::Float, Val::F32(x)) => u64::from(x.to_bits()),
        (Conv::Float, Val::F64(x)) => x.to_bits(),
        (Conv::MemPtr, Val::I32(x)) => {
            let off = *x as u32 as usize;
            if mem.0 == 0 || off > mem.1 {
                return Err(offset_outside(off, mem.1));
            }
            (mem.0 + off) as u64
        }
        (Conv::RawPtr, Val::I64(x)) => *x as u64,
        (conv, v) => return Err(value_unfit(v, conv)),
    })
}

/// A native pointer into linear memory → its wasm offset (else a trap).
#[inline]
fn mem_offset(slot: u64, mem: (usize, usize)) -> Result<i32, wasmi::Error> {
    let addr = slot as usize;
    if mem.0 == 0 || addr < mem.0 || addr > mem.0 + mem.1 {
        return Err(pointer_outside(addr));
    }
    Ok((addr - mem.0) as i32)
}

/// C slot → wasm value of type `w`.
#[inline(always)]
fn from_slot(slot: u64, w: ValType, conv: Conv, mem: (usize, usize)) -> Result<Val, wasmi::Error> {
    Ok(match (conv, w) {
        (_, ValType::I32) => Val::I32(slot_i32(slot, conv, mem)?),
        (_, ValType::I64) => Val::I64(slot_i64(slot, conv)?),
        (Conv::Float, ValType::F32) => Val::F32(wasmi::F32::from_bits(slot as u32)),
        (Conv::Float, ValType::F64) => Val::F64(wasmi::F64::from_bits(slot)),
        (conv, w) => return Err(conv_unfit(conv, w)),
    })
}

/// C slot → wasm `i32` (an integer, or a pointer into linear memory as its
/// offset); what [`from_slot`] gives for `i32`, without a `Val` (typed calls).
#[inline(always)]
fn slot_i32(slot: u64, conv: Conv, mem: (usize, usize)) -> Result<i32, wasmi::Error> {
    match conv {
        Conv::Int(s) => Ok(s.to_slot(slot) as i32),
        Conv::MemPtr => mem_offset(slot, mem),
        conv => Err(conv_unfit(conv, ValType::I32)),
    }
}

/// C slot → wasm `i64` (an integer, or a native pointer unchanged); what
/// [`from_slot`] gives for `i64`, without a `Val` (typed calls).
#[inline(always)]
fn slot_i64(slot: u64, conv: Conv) -> Result<i64, wasmi::Error> {
    match conv {
        Conv::Int(s) => Ok(s.to_slot(slot) as i64),
        Conv::RawPtr => Ok(slot as i64),
        conv => Err(conv_unfit(conv, ValType::I64)),
    }
}

#[cold]
#[inline(never)]
fn offset_outside(off: usize, len: usize) -> wasmi::Error {
    trap(format!(
        "pointer offset {off:#x} is outside linear memory ({len} bytes)"
    ))
}

#[cold]
#[inline(never)]
fn pointer_outside(addr: usize) -> wasmi::Error {
    trap(format!(
        "native pointer {addr:#x} does not point into linear memory"
    ))
}

#[cold]
#[inline(never)]
fn value_unfit(v: &Val, conv: Conv) -> wasmi::Error {
    trap(format!("value {v:?} does not fit {conv:?}"))
}

#[cold]
#[inline(never)]
fn conv_unfit(conv: Conv, w: ValType) -> wasmi::Error {
    trap(format!("{conv:?} cannot produce wasm {w:?}"))
}

// ------------------------------------------------------------ active contexts

/// An active store context: the type of the store data and a pointer to a
/// `&mut dyn AsContextMut<Data = T>` living in the frame that activated it.
type Active = Option<(TypeId, *mut c_void)>;

thread_local! {
    /// The innermost active store context; each activation keeps the one it
    /// replaced and puts it back when it ends (a stack threaded through frames).
    static ACTIVE: Cell<Active> = const { Cell::new(None) };
}

/// Restores the previously active context when dropped.
struct ActiveContext(Active);

impl Drop for ActiveContext {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.0));
    }
}

/// Makes `ctx` the active store context of this thread until the guard drops.
///
/// # Safety
/// `slot` must point to a live `&mut dyn AsContextMut<Data = T>` that nothing
/// else uses until the guard is dropped, and the guard must be dropped before
/// that reference's frame returns.
unsafe fn activate<T: 'static>(slot: *mut &mut dyn AsContextMut<Data = T>) -> ActiveContext {
    ActiveContext(ACTIVE.with(|a| a.replace(Some((TypeId::of::<T>(), slot.cast())))))
}

/// Runs `f` (which calls native code that may call exports) with `store` as
/// this thread's active store context.
pub fn with_store<T: 'static, R>(
    mut store: impl AsContextMut<Data = T>,
    f: impl FnOnce() -> R,
) -> R {
    let mut fat: &mut dyn AsContextMut<Data = T> = &mut store;
    // SAFETY: `fat` lives in this frame until after `_active` is dropped, and
    // nothing else touches `store` while `f` runs.
    let _active = unsafe { activate::<T>(&mut fat) };
    f()
}

/// Runs `f` on the innermost active store context, if it holds data of type `T`.
fn with_active<T: 'static, R>(
    f: impl FnOnce(&mut dyn AsContextMut<Data = T>) -> Result<R, wasmi::Error>,
) -> Result<R, wasmi::Error> {
    match ACTIVE.with(Cell::get) {
        Some((id, p)) if id == TypeId::of::<T>() => {
            // SAFETY: set by `activate::<T>` (same TypeId) from a frame that is
            // suspended in native code below us and still owns the reference.
            let ctx = unsafe { &mut **p.cast::<&mut dyn AsContextMut<Data = T>>() };
            f(ctx)
        }
        Some(_) => Err(trap(
            "the active wasmi store holds data of another type".into(),
        )),
        None => Err(trap(
            "a wasm export was called from native code with no active store on this thread".into(),
        )),
    }
}

// ------------------------------------------------------------ the bridge

/// A C function to import: its address and signature.
#[derive(Clone, Debug)]
pub struct NativeFn {
    /// The function's address.
    pub addr: *const c_void,
    /// Its C signature.
    pub sig: Signature,
    /// Its convention.
    pub conv: CallConv,
}

// SAFETY: a code address and plain data; calling it is what is unsafe, and that
// is the responsibility of whoever made the NativeFn (`NativeFn::new`).
unsafe impl Send for NativeFn {}
// SAFETY: see Send.
unsafe impl Sync for NativeFn {}

impl NativeFn {
    /// A native function.
    ///
    /// # Safety
    /// `addr` must be a function with exactly `sig` and `conv`, alive as long as
    /// any instance linked to it, and safe to call with any values the wasm
    /// code may pass (pointers are bounds-checked against linear memory only at
    /// their start: a C function that reads N bytes past a pointer is trusted
    /// to stay within what the wasm code meant).
    pub unsafe fn new(addr: *const c_void, sig: Signature, conv: CallConv) -> NativeFn {
        NativeFn { addr, sig, conv }
    }
}

/// Native libraries and symbol lookup are the core crate's
/// ([`crate::native`]), re-exported here for the embedding's users.
pub use crate::native::NativeLibrary;

/// Connects wasmi modules to native code through a [`Bridge`].
#[derive(Clone, Debug)]
pub struct WasmBridge {
    bridge: Arc<Bridge>,
}

impl WasmBridge {
    /// An adapter on `bridge` (either backend).
    pub fn new(bridge: Arc<Bridge>) -> WasmBridge {
        WasmBridge { bridge }
    }

    /// The bridge underneath.
    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    /// Defines the import `module_name.name` of `module` in `linker` as a call to
    /// `native`, after checking the import's wasm type against its signature.
    ///
    /// # Errors
    /// [`WasmError::NotFound`] if the module has no such function import,
    /// [`WasmError::Mismatch`] if the types do not correspond, and bridge or
    /// linker errors.
    pub fn link_native<T: 'static>(
        &self,
        linker: &mut Linker<T>,
        module: &Module,
        module_name: &str,
        name: &str,
        native: &NativeFn,
    ) -> Result<(), WasmError> {
        let what = format!("import {module_name}.{name}");
        let ty = module
            .imports()
            .find(|i| i.module() == module_name && i.name() == name)
            .and_then(|i| match i.ty() {
                ExternType::Func(f) => Some(f.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                WasmError::NotFound(format!("{what}: the module has no such function import"))
            })?;
        let (params, ret) = plan(&what, &ty, &native.sig)?;
        let import = Import {
            stub: self.bridge.exit_stub(&native.sig, native.conv)?,
            addr: native.addr as usize,
            uses_memory: params.contains(&Conv::MemPtr) || matches!(ret, Some((_, Conv::MemPtr))),
            params,
            ret,
            nret: native.sig.ret_slots(),
        };
        linker
            .func_new(module_name, name, ty, move |caller, args, results| {
                import.call(caller, args, results)
            })
            .map_err(|e| WasmError::Wasmi(e.to_string()))?;
        Ok(())
    }

    /// A native function pointer with signature `sig` that calls the exported
    /// wasm function `name` of `instance`. Calls need an active store context
    /// (see the [module docs](self)); failures follow `policy`.
    ///
    /// # Errors
    /// [`WasmError::NotFound`], [`WasmError::Mismatch`], bridge errors.
    pub fn export_entry<T: 'static>(
        &self,
        store: impl wasmi::AsContext<Data = T>,
        instance: &Instance,
        name: &str,
        sig: &Signature,
        conv: CallConv,
        policy: FailurePolicy,
    ) -> Result<EntryPoint, WasmError> {
        let what = format!("export {name}");
        let func = instance.get_func(&store, name).ok_or_else(|| {
            WasmError::NotFound(format!("{what}: the instance has no such function export"))
        })?;
        let ty = func.ty(&store);
        let (params, ret) = plan(&what, &ty, sig)?;
        let memory = instance.get_memory(&store, "memory");
        let typed = Typed::of(func, &store);
        let params: Vec<(ValType, Conv)> = ty.params().iter().copied().zip(params).collect();
        let uses_memory = params.iter().any(|(_, c)| *c == Conv::MemPtr);
        let host = ExportHost::<T> {
            func,
            typed,
            memory,
            params,
            uses_memory,
            ret,
            _data: std::marker::PhantomData,
        };
        let dispatcher = Dispatcher::from_host(Arc::new(host), policy);
        Ok(self.bridge.entry_point(sig, conv, &dispatcher, 0)?)
    }
}

/// An imported native function, as its host closure sees it: all worked out
/// at link time.
struct Import {
    stub: ExitStub,
    addr: usize,
    params: Vec<Conv>,
    ret: Option<(ValType, Conv)>,
    nret: usize,
    /// Whether any parameter or the result is a linear-memory pointer (only
    /// then is the memory looked up, by name: not free).
    uses_memory: bool,
}

impl Import {
    fn call<T: 'static>(
        &self,
        mut caller: Caller<'_, T>,
        args: &[Val],
        results: &mut [Val],
    ) -> Result<(), wasmi::Error> {
        let memory = if self.uses_memory {
            caller.get_export("memory").and_then(Extern::into_memory)
        } else {
            None
        };
        let mem = memory_span(memory, &caller);
        let mut slots = smallvec::SmallVec::<[u64; 16]>::new();
        for (v, c) in args.iter().zip(&self.params) {
            slots.push(to_slot(v, *c, mem)?);
        }
        let mut out = [0u64; 1];
        let outcome = {
            let mut fat: &mut dyn AsContextMut<Data = T> = &mut caller;
            // SAFETY: `fat` lives in this frame until `_active` drops at the end of
            // this block; while native code runs, only exports it calls use the store.
            let _active = unsafe { activate::<T>(&mut fat) };
            // SAFETY: `addr` has the stub's signature (NativeFn::new's contract), the
            // slots were built from that signature, and pointer slots point into memory.
            unsafe {
                self.stub
                    .call(self.addr as *const c_void, &slots, &mut out[..self.nret])
            }
        };
        match outcome {
            Ok(()) => {}
            Err(ThunkError::Callback(EntryError::Host { error, .. })) => {
                // A wasm export called by the native code failed (a trap): surface the
                // original error now that the native code has returned.
                return Err(match error.downcast::<wasmi::Error>() {
                    Ok(e) => *e,
                    Err(other) => trap(other.to_string()),
                });
            }
            Err(e) => return Err(trap(e.to_string())),
        }
        if let Some((w, c)) = self.ret {
            // Looked up again: the native code may have grown (moved) the memory.
            let mem = memory_span(memory, &caller);
            results[0] = from_slot(out[0], w, c, mem)?;
        }
        Ok(())
    }
}

/// A typed handle on an export of a common callback shape: calling it skips
/// wasmi's per-call type verification (`TypedFunc` vs `Func::call`).
#[derive(Clone, Copy)]
enum Typed {
    I32I32ToI32(TypedFunc<(i32, i32), i32>),
    I32ToI32(TypedFunc<i32, i32>),
    I64ToI64(TypedFunc<i64, i64>),
    I64I64ToI64(TypedFunc<(i64, i64), i64>),
    F64ToF64(TypedFunc<f64, f64>),
    F64F64ToF64(TypedFunc<(f64, f64), f64>),
    I32ToNone(TypedFunc<i32, ()>),
    NoneToNone(TypedFunc<(), ()>),
}

impl Typed {
    fn of(func: Func, store: impl wasmi::AsContext) -> Option<Typed> {
        use ValType::{F64, I32, I64};
        let ty = func.ty(&store);
        Some(match (ty.params(), ty.results()) {
            ([I32, I32], [I32]) => Typed::I32I32ToI32(func.typed(&store).ok()?),
            ([I32], [I32]) => Typed::I32ToI32(func.typed(&store).ok()?),
            ([I64], [I64]) => Typed::I64ToI64(func.typed(&store).ok()?),
            ([I64, I64], [I64]) => Typed::I64I64ToI64(func.typed(&store).ok()?),
            ([F64], [F64]) => Typed::F64ToF64(func.typed(&store).ok()?),
            ([F64, F64], [F64]) => Typed::F64F64ToF64(func.typed(&store).ok()?),
            ([I32], []) => Typed::I32ToNone(func.typed(&store).ok()?),
            ([], []) => Typed::NoneToNone(func.typed(&store).ok()?),
            _ => return None,
        })
    }

    /// Calls with the arguments taken straight from their slots (no `Val`s).
    fn call(
        self,
        ctx: wasmi::StoreContextMut<'_, impl Sized>,
        slots: &[u64],
        params: &[(ValType, Conv)],
        mem: (usize, usize),
    ) -> Result<Option<Val>, wasmi::Error> {
        let a = SlotArgs { slots, params, mem };
        Ok(match self {
            Typed::I32I32ToI32(t) => Some(Val::I32(t.call(ctx, (a.i32(0)?, a.i32(1)?))?)),
            Typed::I32ToI32(t) => Some(Val::I32(t.call(ctx, a.i32(0)?)?)),
            Typed::I64ToI64(t) => Some(Val::I64(t.call(ctx, a.i64(0)?)?)),
            Typed::I64I64ToI64(t) => Some(Val::I64(t.call(ctx, (a.i64(0)?, a.i64(1)?))?)),
            Typed::F64ToF64(t) => Some(Val::F64(t.call(ctx, a.f64(0))?.into())),
            Typed::F64F64ToF64(t) => Some(Val::F64(t.call(ctx, (a.f64(0), a.f64(1)))?.into())),
            Typed::I32ToNone(t) => {
                t.call(ctx, a.i32(0)?)?;
                None
            }
            Typed::NoneToNone(t) => {
                t.call(ctx, ())?;
                None
            }
        })
    }
}

/// A typed call's arguments, read from their slots. Methods rather than
/// closures: rustc kept closures of this size as calls (35 instructions per
/// argument, callgrind).
#[derive(Clone, Copy)]
struct SlotArgs<'a> {
    slots: &'a [u64],
    params: &'a [(ValType, Conv)],
    mem: (usize, usize),
}

impl SlotArgs<'_> {
    #[inline(always)]
    fn i32(self, k: usize) -> Result<i32, wasmi::Error> {
        slot_i32(self.slots[k], self.params[k].1, self.mem)
    }

    #[inline(always)]
    fn i64(self, k: usize) -> Result<i64, wasmi::Error> {
        slot_i64(self.slots[k], self.params[k].1)
    }

    #[inline(always)]
    fn f64(self, k: usize) -> f64 {
        f64::from_bits(self.slots[k])
    }
}

/// The interpreter side of an export handed to C.
struct ExportHost<T> {
    func: Func,
    typed: Option<Typed>,
    memory: Option<wasmi::Memory>,
    /// (wasm type, conversion) of each parameter, cached at creation.
    params: Vec<(ValType, Conv)>,
    uses_memory: bool,
    ret: Option<(ValType, Conv)>,
    _data: std::marker::PhantomData<fn() -> T>,
}

impl<T: 'static> crate::host::Host for ExportHost<T> {
    fn call(&self, call: EntryCall<'_>) -> Result<(), HostError> {
        let result = with_active::<T, Option<u64>>(|ctx| {
            let memory = if self.uses_memory { self.memory } else { None };
            let mem = memory_span(memory, ctx.as_context());
            let out = match self.typed {
                Some(t) => t.call(ctx.as_context_mut(), call.args, &self.params, mem)?,
                None => {
                    let mut args = smallvec::SmallVec::<[Val; 8]>::new();
                    for (slot, (w, c)) in call.args.iter().zip(&self.params) {
                        args.push(from_slot(*slot, *w, *c, mem)?);
                    }
                    let mut outs = [Val::I32(0)];
                    let k = usize::from(self.ret.is_some());
                    if let Some((w, _)) = self.ret {
                        outs[0] = Val::default_for_ty(w);
                    }
                    self.func
                        .call(ctx.as_context_mut(), &args, &mut outs[..k])?;
                    let [first] = outs;
                    (k == 1).then_some(first)
                }
            };
            match (self.ret, out) {
                (Some((_, c)), Some(v)) => {
                    let memory = if c == Conv::MemPtr { self.memory } else { None };
                    let mem = memory_span(memory, ctx.as_context());
                    Ok(Some(to_slot(&v, c, mem)?))
                }
                _ => Ok(None),
            }
        });
        match result {
            Ok(Some(v)) => {
                call.ret[0] = v;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(Box::new(e)),
        }
    }
}
