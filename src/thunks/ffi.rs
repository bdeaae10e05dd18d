//! The libffi backend: `ffi_call` for exits, libffi closures for entries.
//!
//! One prepared `ffi_cif` per signature shape and convention, cached by
//! [`SigId`]. A call builds its argument pointer array on the stack: no heap
//! allocation per call.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::ptr::{NonNull, null_mut};
use std::sync::{Arc, Mutex};

use libffi::raw::{
    FFI_TYPE_STRUCT, ffi_abi, ffi_abi_FFI_UNIX64, ffi_abi_FFI_WIN64, ffi_call, ffi_cif,
    ffi_closure, ffi_closure_alloc, ffi_closure_free, ffi_prep_cif, ffi_prep_cif_var,
    ffi_prep_closure_loc, ffi_status_FFI_OK, ffi_type,
};
use smallvec::SmallVec;

use super::{BackendKind, ENTRY_QUARANTINE, Result, ThunkError};
use crate::abi::{
    ArgPass, CallConv, CallLayout, MAX_PARAMS, Registry, Scalar, SigId, Signature, StructType,
    Type, sysv_eightbytes,
};
use crate::code::RawFn;
use crate::host::{
    Dispatcher, RawBinding, RawVaList, after_dispatch, clear_entry_error, slot_ptr, slot_ptr_mut,
};
use crate::table::IdTable;

fn unsupported(reason: String) -> ThunkError {
    ThunkError::Unsupported {
        backend: BackendKind::Libffi,
        reason,
    }
}

fn abi_of(conv: CallConv) -> ffi_abi {
    match conv {
        CallConv::SysV => ffi_abi_FFI_UNIX64,
        CallConv::Win64 => ffi_abi_FFI_WIN64,
    }
}

fn scalar_type(s: Scalar) -> *mut ffi_type {
    use libffi::raw as r;
    // Only the addresses of libffi's builtin type descriptors are taken; libffi
    // never writes to them and neither does tierbridge.
    {
        match s {
            Scalar::I8 => &raw mut r::ffi_type_sint8,
            Scalar::U8 | Scalar::Bool => &raw mut r::ffi_type_uint8,
            Scalar::I16 => &raw mut r::ffi_type_sint16,
            Scalar::U16 => &raw mut r::ffi_type_uint16,
            Scalar::I32 => &raw mut r::ffi_type_sint32,
            Scalar::U32 => &raw mut r::ffi_type_uint32,
            Scalar::I64 => &raw mut r::ffi_type_sint64,
            Scalar::U64 => &raw mut r::ffi_type_uint64,
            Scalar::F32 => &raw mut r::ffi_type_float,
            Scalar::F64 => &raw mut r::ffi_type_double,
            Scalar::Ptr => &raw mut r::ffi_type_pointer,
        }
    }
}

/// Owns the `ffi_type` descriptors of struct types (libffi keeps pointers to them).
#[derive(Default)]
struct TypeArena {
    // Boxed: libffi keeps pointers to each descriptor, which must not move when
    // the Vec grows.
    #[allow(clippy::vec_box)]
    structs: Vec<Box<ffi_type>>,
    elements: Vec<Box<[*mut ffi_type]>>,
}

impl TypeArena {
    fn get(&mut self, ty: &Type) -> *mut ffi_type {
        match ty {
            Type::Scalar(s) => scalar_type(*s),
            Type::Struct(st) => {
                let mut elems: Vec<*mut ffi_type> = Vec::new();
                for f in st.fields() {
                    let t = self.get(&f.ty);
                    // libffi has no array type: an array field is its elements in a row.
                    elems.extend(std::iter::repeat_n(t, f.count.unwrap_or(1) as usize));
                }
                elems.push(null_mut());
                let mut elems = elems.into_boxed_slice();
                let mut desc = Box::new(ffi_type {
                    size: 0,
                    alignment: 0,
                    type_: FFI_TYPE_STRUCT,
                    elements: elems.as_mut_ptr(),
                });
                let p: *mut ffi_type = &mut *desc;
                self.elements.push(elems);
                self.structs.push(desc);
                p
            }
        }
    }
}

/// An integer result narrower than a register: a closure returns it widened
/// to 64 bits (a cif of its own describes it so).
fn narrow_int(s: Scalar) -> bool {
    !s.is_float() && s.size() < 8
}

fn has_packed(ty: &Type) -> bool {
    match ty {
        Type::Scalar(_) => false,
        Type::Struct(st) => st.is_packed() || st.fields().iter().any(|f| has_packed(&f.ty)),
    }
}

/// libffi describes structs by their natural layout only. A packed struct is
/// expressible where the convention passes it as plain bytes (described as
/// an array of bytes), or when its natural layout puts every scalar where the
/// packed one does and the copies libffi makes cannot run past the caller's
/// memory (ABI.md, "libffi").
fn libffi_type_for(ty: &Type, conv: CallConv, is_ret: bool) -> Result<Type> {
    if !has_packed(ty) {
        return Ok(ty.clone());
    }
    // Where the convention treats the aggregate as plain bytes, its fields do
    // not matter, and an array of as many bytes gives the same call: on Win64
    // every aggregate travels by its size alone (1, 2, 4 or 8 bytes in a
    // register, anything else by reference), and on SysV one of more than
    // 16 bytes is MEMORY class whatever its fields (psABI 3.2.3).
    let bytes = match conv {
        CallConv::Win64 => true,
        CallConv::SysV => ty.size() > 16,
    };
    if bytes {
        return Ok(
            StructType::new(vec![(Type::Scalar(Scalar::U8), Some(ty.size()))], false)?.into(),
        );
    }
    let natural = ty.unpacked()?;
    for ((at, s), (nat_at, _)) in ty.flatten().into_iter().zip(natural.flatten()) {
        if at != nat_at {
            return Err(unsupported(format!(
                "packed struct {ty}: its {s} at offset {at} is not where natural alignment puts it \
                 (offset {nat_at}), and libffi cannot describe packing"
            )));
        }
    }
    let (size, nat) = (ty.size(), natural.size());
    let ok = match conv {
        CallConv::SysV => {
            size.next_multiple_of(8) == nat.next_multiple_of(8)
                && !(is_ret && sysv_eightbytes(ty).is_none() && size != nat)
        }
        CallConv::Win64 => size == nat,
    };
    if !ok {
        return Err(unsupported(format!(
            "packed struct {ty} is {size} bytes but its natural layout is {nat}, and libffi cannot describe packing"
        )));
    }
    Ok(natural)
}

/// How a libffi closure for a variadic signature finds the variadic
/// arguments: extra pseudo-parameters cover the argument registers the fixed
/// ones left unused, and one more lands on the first variadic stack slot.
struct VaPlan {
    conv: CallConv,
    gp_first: u32,
    gp_count: u32,
    fp_first: u32,
    fp_count: u32,
    /// Index of the pseudo-parameter whose address is the overflow anchor.
    anchor: usize,
    /// Bytes from the anchor back to where [`RawVaList::overflow`] must point.
    anchor_back: usize,
}

/// A prepared signature: the `ffi_cif` and what a call needs to use it.
pub(super) struct FfiCif {
    cif: Box<ffi_cif>,
    _arena: TypeArena,
    _arg_types: Box<[*mut ffi_type]>,
    pub(super) sig: &'static Signature,
    pub(super) layout: &'static CallLayout,
    /// First slot of each argument.
    arg_slot: Box<[u32]>,
    arg_slots: usize,
    ret_slots: usize,
    /// Win64 by-reference arguments: (argument index, copy offset, size).
    byref: Box<[(usize, usize, usize)]>,
    va: Option<VaPlan>,
    /// Native stack a call takes beyond this frame: the arguments, libffi's
    /// register block and our scratch copies (see `FfiCif::call`).
    stack_need: usize,
}

// SAFETY: an FfiCif is immutable after construction; its raw pointers point into
// boxes it owns or to libffi's static type descriptors, and libffi only reads a
// prepared cif, so sharing it between threads is sound.
unsafe impl Send for FfiCif {}
// SAFETY: see Send.
unsafe impl Sync for FfiCif {}

impl FfiCif {
    /// Prepares `sig`. `closure` prepares the cif a closure for a declared
    /// variadic signature uses (with pseudo-parameters, see [`VaPlan`]).
    fn new(
        sig: &'static Signature,
        layout: &'static CallLayout,
        conv: CallConv,
        closure: bool,
    ) -> Result<FfiCif> {
        let mut arena = TypeArena::default();
        let mut types = Vec::with_capacity(sig.params().len() + 16);
        for ty in sig.params() {
            let t = libffi_type_for(ty, conv, false)?;
            types.push(arena.get(&t));
        }
        let rtype = match sig.ret() {
            None => scalar_type_void(),
            // A closure's narrow integer result is described to libffi as
            // 64 bits: the handler writes it extended as its type says, and
            // libffi then returns all of rax (it would load only the
            // declared width and zero the upper half; ABI.md, "Who extends
            // narrow integers"). A call (`ffi_call`) keeps the declared
            // width: there libffi extends what the callee left.
            Some(Type::Scalar(s)) if closure && narrow_int(*s) => scalar_type(if s.is_signed() {
                Scalar::I64
            } else {
                Scalar::U64
            }),
            Some(ty) => {
                let t = libffi_type_for(ty, conv, true)?;
                arena.get(&t)
            }
        };
        let nfixed = sig.fixed_count();
        let va = (closure && sig.is_variadic()).then(|| {
            let plan = va_plan(layout, nfixed);
            let i64t = scalar_type(Scalar::I64);
            types.extend(std::iter::repeat_n(i64t, plan.gp_count as usize));
            types.extend(std::iter::repeat_n(
                scalar_type(Scalar::F64),
                plan.fp_count as usize,
            ));
            types.push(i64t);
            plan
        });
        let mut types = types.into_boxed_slice();
        let mut cif: Box<ffi_cif> = Box::default();
        let n = types.len() as u32;
        // SAFETY: `cif`, `rtype` and every pointer in `types` are valid, and stay
        // alive (owned by the FfiCif) for as long as the cif is used.
        let status = unsafe {
            if sig.is_variadic() && !closure {
                ffi_prep_cif_var(
                    &mut *cif,
                    abi_of(conv),
                    nfixed as u32,
                    n,
                    rtype,
                    types.as_mut_ptr(),
                )
            } else {
                ffi_prep_cif(&mut *cif, abi_of(conv), n, rtype, types.as_mut_ptr())
            }
        };
        if status != ffi_status_FFI_OK {
            return Err(ThunkError::Internal(format!(
                "ffi_prep_cif refused {sig} ({conv}): status {status}"
            )));
        }
        let byref = layout
            .args
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a.pass {
                ArgPass::ByRef { copy, .. } => Some((i, copy as usize, a.ty.size() as usize)),
                ArgPass::Direct(_) => None,
            })
            .collect();
        Ok(FfiCif {
            arg_slot: layout.args.iter().map(|a| a.slot).collect(),
            arg_slots: sig.arg_slots(),
            ret_slots: sig.ret_slots(),
            byref,
            cif,
            _arena: arena,
            _arg_types: types,
            sig,
            layout,
            va,
            stack_need: super::call_stack_bytes(layout) as usize + 1024,
        })
    }

    /// Sets errno if asked and makes the libffi call.
    ///
    /// # Safety
    /// As `ffi_call`: `f` matches the cif, `avalue` holds one valid pointer per
    /// argument, `rvalue` has room for the result.
    #[inline(always)]
    unsafe fn invoke(
        &self,
        f: RawFn,
        rvalue: *mut c_void,
        avalue: *mut *mut c_void,
        errno_before: Option<i32>,
    ) {
        if let Some(e) = errno_before {
            crate::sys::set_errno(e);
        }
        // SAFETY: by this function's contract.
        unsafe { ffi_call(self.cif_ptr(), Some(f), rvalue, avalue) };
    }

    /// [`FfiCif::invoke`] for Win64 calls with by-reference aggregates: the
    /// callee owns (and may write) its copy, so it gets a 16-byte aligned copy
    /// in this frame instead of the caller's slots. (libffi copies too; this
    /// keeps the guarantee independent of libffi.)
    ///
    /// # Safety
    /// As [`FfiCif::invoke`].
    #[cold]
    #[inline(never)]
    unsafe fn invoke_with_copies(
        &self,
        f: RawFn,
        rvalue: *mut c_void,
        avalue: *mut *mut c_void,
        errno_before: Option<i32>,
    ) {
        #[repr(C, align(16))]
        struct Scratch([u8; 512]);
        let mut scratch = MaybeUninit::<Scratch>::uninit();
        let mut big: Vec<u128> = Vec::new();
        let need = self.layout.copy_bytes as usize;
        let base: *mut u8 = if need <= size_of::<Scratch>() {
            scratch.as_mut_ptr().cast()
        } else {
            big.resize(need.div_ceil(16), 0);
            big.as_mut_ptr().cast()
        };
        for &(i, copy, size) in self.byref.iter() {
            // SAFETY: the source is the argument's slots (at least `size` bytes, as
            // the slot count was checked); the destination lies within the
            // `copy_bytes` bytes of `base`, which live until the call returns.
            unsafe {
                std::ptr::copy_nonoverlapping(*avalue.add(i) as *const u8, base.add(copy), size);
                *avalue.add(i) = base.add(copy).cast();
            }
        }
        // SAFETY: forwarded contract; the copies outlive the call.
        unsafe { self.invoke(f, rvalue, avalue, errno_before) };
    }

    fn cif_ptr(&self) -> *mut ffi_cif {
        // libffi takes `*mut` but only reads a prepared cif.
        &*self.cif as *const ffi_cif as *mut ffi_cif
    }

    /// The exit call. Returns the captured errno when `errno_before` is given.
    /// With `collect_failure`, a callback failure during the call becomes
    /// `ThunkError::Callback`; without it, it stays pending for the host.
    ///
    /// # Safety
    /// As `ExitStub::call`.
    pub(super) unsafe fn call(
        &self,
        target: *const c_void,
        args: &[u64],
        ret: &mut [u64],
        errno_before: Option<i32>,
        collect_failure: bool,
    ) -> Result<Option<i32>> {
        super::check_exit_call(
            || self.sig,
            target,
            (self.arg_slots, self.ret_slots),
            args,
            ret,
        )?;
        let target = NonNull::new(target as *mut c_void).ok_or(ThunkError::NullTarget)?;
        if self.stack_need > crate::stack::UNCHECKED_FRAME {
            // libffi copies the arguments below this frame (`alloca`):
            // enough stack for them, touched a page at a time.
            super::reserve_call_stack(self.stack_need)?;
            crate::stack::probe(self.stack_need);
        }
        let mut avalue = [MaybeUninit::<*mut c_void>::uninit(); MAX_PARAMS];
        for (p, slot) in avalue.iter_mut().zip(self.arg_slot.iter()) {
            p.write(args[*slot as usize..].as_ptr() as *mut c_void);
        }
        // Initialised above for every argument (arg_slot has one entry per argument).
        let avalue = avalue.as_mut_ptr().cast::<*mut c_void>();
        let mut void_ret = 0u64;
        let rvalue: *mut c_void = if self.ret_slots == 0 {
            (&mut void_ret as *mut u64).cast()
        } else {
            ret[..self.ret_slots].fill(0);
            ret.as_mut_ptr().cast()
        };
        clear_entry_error();
        // SAFETY: the caller vouches that `target` is code of this signature.
        let f = unsafe { crate::code::callable(target) };
        // SAFETY: the cif matches `target` (caller's contract); `avalue` holds one
        // valid pointer per argument, each to at least the argument's size in bytes;
        // `rvalue` has room for the result (ret_slots * 8 bytes, at least 8).
        unsafe {
            if self.byref.is_empty() {
                self.invoke(f, rvalue, avalue, errno_before)
            } else {
                self.invoke_with_copies(f, rvalue, avalue, errno_before)
            }
        };
        let captured = errno_before.map(|_| crate::sys::errno());
        if let Some(Type::Scalar(s)) = self.sig.ret() {
            ret[0] = s.to_slot(ret[0]);
        }
        if collect_failure {
            super::callback_failure()?;
        }
        Ok(captured)
    }
}

fn scalar_type_void() -> *mut ffi_type {
    // The address of libffi's static void descriptor; never written.
    &raw mut libffi::raw::ffi_type_void
}

fn va_plan(layout: &CallLayout, nfixed: usize) -> VaPlan {
    match layout.conv {
        CallConv::SysV => {
            let (g, x) = (u32::from(layout.gprs_used), u32::from(layout.xmms_used));
            let (gp_count, fp_count) = (6 - g, 8 - x);
            VaPlan {
                conv: CallConv::SysV,
                gp_first: g,
                gp_count,
                fp_first: x,
                fp_count,
                anchor: nfixed + (gp_count + fp_count) as usize,
                anchor_back: 0,
            }
        }
        CallConv::Win64 => {
            let p0 =
                nfixed as u32 + u32::from(matches!(layout.ret, crate::abi::RetPass::Sret { .. }));
            let gp_count = 4u32.saturating_sub(p0);
            VaPlan {
                conv: CallConv::Win64,
                gp_first: p0,
                gp_count,
                fp_first: 0,
                fp_count: 0,
                anchor: nfixed + gp_count as usize,
                anchor_back: 8 * (p0.max(4) - 4) as usize,
            }
        }
    }
}

/// The libffi backend's caches.
#[derive(Default)]
pub(super) struct FfiBackend {
    /// Per convention, by signature id.
    exits: [IdTable<Arc<FfiCif>>; 2],
    /// Closures whose cif differs from the exit's: declared variadic
    /// signatures, and narrow integer results (described as 64 bits).
    closures: [IdTable<Arc<FfiCif>>; 2],
    /// The dropped entry points' closures, shared with every entry point
    /// bound here (which puts its closure there when dropped).
    quarantine: Arc<Mutex<Quarantine>>,
}

/// Dropped entry points' closures, oldest first, at most
/// [`ENTRY_QUARANTINE`]: each still allocated and prepared, its user data a
/// tombstone binding (its own, whose dispatcher aborts with a message), so a
/// call of it is taken apart as a call of its signature and then aborts.
/// The oldest is freed when one more arrives (outside the lock).
#[derive(Default)]
struct Quarantine(VecDeque<Quarantined>);

/// A closure in quarantine and its tombstone, freed together.
struct Quarantined {
    closure: *mut ffi_closure,
    binding: NonNull<Binding>,
}

// SAFETY: a quarantined closure and its tombstone are owned by the
// quarantine alone; nothing reads them but libffi's trampoline (a stale call,
// which only reads), and they are freed once, by whichever thread evicts them.
unsafe impl Send for Quarantined {}

impl Drop for Quarantined {
    fn drop(&mut self) {
        // SAFETY: allocated by ffi_closure_alloc, freed only here; then the
        // tombstone it pointed to, from `Box::into_raw` in `bind`, which
        // nothing reaches once the closure is gone.
        unsafe {
            ffi_closure_free(self.closure.cast());
            drop(Box::from_raw(self.binding.as_ptr()));
        }
    }
}

/// Bytes a quarantined entry point keeps allocated on this backend: its
/// closure (libffi's `ffi_closure`, plus the 32-byte trampoline libffi pairs
/// with each), its tombstone binding, and its place in the queue. The cif is
/// the signature's, shared.
pub(super) const QUARANTINED_BYTES: usize =
    size_of::<ffi_closure>() + 32 + size_of::<Binding>() + size_of::<Quarantined>();

/// A tombstone's dispatcher: reached through `closure_handler` when native
/// code calls a dropped entry point still in quarantine.
///
/// # Safety
/// `binding` is the `raw` field of a live [`Binding`] (as `closure_handler`
/// passes it); it never returns.
unsafe extern "C" fn tombstone_dispatch(
    binding: *const RawBinding,
    _: *const u64,
    _: *mut u64,
    _: *mut RawVaList,
) -> u32 {
    // SAFETY: `raw` is a `Binding`'s first field (`repr(C)`), and the
    // tombstone is kept as long as its closure.
    let b = unsafe { &*binding.cast::<Binding>() };
    super::dropped_entry_called(b.raw.func, b.cif.sig, b.cif.layout.conv)
}

impl FfiBackend {
    fn cached(
        tables: &[IdTable<Arc<FfiCif>>; 2],
        reg: &'static Registry,
        id: SigId,
        conv: CallConv,
        closure: bool,
    ) -> Result<Arc<FfiCif>> {
        let table = &tables[conv as usize];
        if let Some(c) = table.get(id.index()) {
            return Ok(c.clone());
        }
        let sig = reg.signature(id)?;
        let layout = reg.layout(id, conv)?;
        let fresh = Arc::new(FfiCif::new(sig, layout, conv, closure)?);
        Ok(table.get_or_insert(id.index(), fresh).clone())
    }

    pub(super) fn exit_cif(
        &self,
        reg: &'static Registry,
        id: SigId,
        conv: CallConv,
    ) -> Result<Arc<FfiCif>> {
        Self::cached(&self.exits, reg, id, conv, false)
    }

    /// The cif a closure of this signature calls through: the exit cif, or
    /// one of its own for a declared variadic signature (its fixed part) or a
    /// narrow integer result (returned as 64 bits, extended).
    fn entry_cif(&self, reg: &'static Registry, id: SigId, conv: CallConv) -> Result<Arc<FfiCif>> {
        let sig = reg.signature(id)?;
        let narrow = matches!(sig.ret(), Some(Type::Scalar(s)) if narrow_int(*s));
        if sig.is_variadic() || narrow {
            Self::cached(&self.closures, reg, id, conv, true)
        } else {
            self.exit_cif(reg, id, conv)
        }
    }

    /// Prepares the cif later closures of this signature use (`Bridge::prepare`).
    pub(super) fn prepare_entry(
        &self,
        reg: &'static Registry,
        id: SigId,
        conv: CallConv,
    ) -> Result<()> {
        self.entry_cif(reg, id, conv).map(|_| ())
    }

    pub(super) fn bind(
        &self,
        reg: &'static Registry,
        id: SigId,
        conv: CallConv,
        dispatcher: Dispatcher,
        func: u64,
    ) -> Result<FfiEntry> {
        let cif = self.entry_cif(reg, id, conv)?;
        let mut code: *mut c_void = null_mut();
        // SAFETY: ffi_closure_alloc returns writable closure memory and its
        // executable address in `code`, or null.
        let closure =
            unsafe { ffi_closure_alloc(size_of::<ffi_closure>(), &mut code) }.cast::<ffi_closure>();
        if closure.is_null() || code.is_null() {
            return Err(ThunkError::OutOfMemory("a libffi closure"));
        }
        let binding = NonNull::from(Box::leak(Box::new(Binding {
            raw: RawBinding {
                ctx: dispatcher.ctx,
                func,
                nargs: cif.arg_slots as u32,
                nret: cif.ret_slots as u32,
            },
            cif,
            dispatcher,
        })));
        // SAFETY: `closure`/`code` come from ffi_closure_alloc; the binding
        // (and the cif it keeps) outlive the closure: the entry point owns
        // both, then its quarantine does, which frees the closure first.
        let status = unsafe {
            ffi_prep_closure_loc(
                closure,
                binding.as_ref().cif.cif_ptr(),
                Some(closure_handler),
                binding.as_ptr().cast(),
                code,
            )
        };
        if status != ffi_status_FFI_OK {
            // SAFETY: allocated above and never handed out.
            unsafe {
                ffi_closure_free(closure.cast());
                drop(Box::from_raw(binding.as_ptr()));
            }
            return Err(ThunkError::Internal(format!(
                "ffi_prep_closure_loc failed: status {status}"
            )));
        }
        Ok(FfiEntry {
            closure,
            code,
            binding,
            quarantine: self.quarantine.clone(),
        })
    }

    /// How many dropped entry points are in quarantine.
    pub(super) fn quarantined(&self) -> usize {
        self.quarantine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .len()
    }
}

/// A closure's user data: `raw` first (`repr(C)`), so that a tombstone's
/// dispatcher finds the binding from the pointer it is given.
#[repr(C)]
struct Binding {
    /// What the dispatcher receives (its counts are the cif's).
    raw: RawBinding,
    cif: Arc<FfiCif>,
    dispatcher: Dispatcher,
}

/// A bound libffi closure.
pub(super) struct FfiEntry {
    closure: *mut ffi_closure,
    code: *mut c_void,
    /// The closure's user data, from `Box::into_raw` (the closure reads it
    /// through this pointer, so it is never reached through a `Box`).
    binding: NonNull<Binding>,
    /// Where the closure goes when the entry point is dropped.
    quarantine: Arc<Mutex<Quarantine>>,
}

// SAFETY: the closure is immutable once prepared and callable from any thread;
// the binding it points to is Send + Sync (Dispatcher and FfiCif are).
unsafe impl Send for FfiEntry {}
// SAFETY: see Send; nothing is mutated through a shared FfiEntry.
unsafe impl Sync for FfiEntry {}

impl FfiEntry {
    pub(super) fn code_ptr(&self) -> *const c_void {
        self.code
    }
}

impl Drop for FfiEntry {
    fn drop(&mut self) {
        let b = self.binding.as_ptr();
        // The binding becomes its closure's tombstone: its dispatcher one
        // that aborts, its context gone; the cif stays (libffi reads it to
        // take a stale call's arguments apart).
        // SAFETY: the binding is this entry's alone, and the owner promises
        // no call is inside the closure (EntryPoint's documented contract),
        // so nothing reads the binding while it is rewritten.
        let host = unsafe {
            let policy = (*b).dispatcher.policy;
            (*b).raw.ctx = null_mut();
            std::ptr::replace(
                &raw mut (*b).dispatcher,
                // SAFETY: never returns, reads no context.
                Dispatcher::from_raw(tombstone_dispatch, null_mut(), policy),
            )
        };
        let evicted = {
            let mut q = self.quarantine.lock().unwrap_or_else(|e| e.into_inner());
            q.0.push_back(Quarantined {
                closure: self.closure,
                binding: self.binding,
            });
            (q.0.len() > ENTRY_QUARANTINE).then(|| q.0.pop_front())
        };
        // Outside the lock: dropping the host may bind or drop entry points.
        drop(host);
        drop(evicted);
    }
}

/// Reads `size` (1, 2, 4 or 8) little-endian bytes.
///
/// # Safety
/// `p` must be valid for reading `size` bytes.
unsafe fn read_bits(p: *const u8, size: u32) -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: by the function's contract.
    unsafe { std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), size as usize) };
    u64::from_le_bytes(b)
}

/// libffi's closure callback: native arguments → slots → dispatcher → native result.
///
/// # Safety
/// Called by libffi only, with `data` the closure's `Binding`, `args` one
/// pointer per cif argument and `ret` room for the result.
unsafe extern "C" fn closure_handler(
    _cif: *mut ffi_cif,
    ret: *mut c_void,
    args: *mut *mut c_void,
    data: *mut c_void,
) {
    // SAFETY: `data` is the Binding the closure was prepared with (or, once
    // its entry point is dropped, the same binding made a tombstone), alive
    // while the closure is.
    let b = unsafe { &*(data as *const Binding) };
    let cif = &*b.cif;
    let mut slots: SmallVec<[u64; 32]> = SmallVec::from_elem(0, cif.arg_slots);
    for (i, ty) in cif.sig.params().iter().enumerate() {
        // SAFETY: libffi passes one valid pointer per argument.
        let p = unsafe { *args.add(i) } as *const u8;
        let at = cif.arg_slot[i] as usize;
        match ty {
            // Only the declared low bytes are read: the upper register bits are garbage.
            // SAFETY: `p` points to at least the scalar's size in bytes.
            Type::Scalar(s) => slots[at] = s.to_slot(unsafe { read_bits(p, s.size()) }),
            Type::Struct(st) => {
                let dst = slots[at..].as_mut_ptr().cast::<u8>();
                // SAFETY: `p` points to the struct (st.size bytes); the slots hold
                // ceil(size/8) * 8 bytes from `at`.
                unsafe { std::ptr::copy_nonoverlapping(p, dst, st.size() as usize) };
            }
        }
    }
    let mut va = cif.va.as_ref().map(|plan| {
        let mut raw = RawVaList::empty(plan.conv);
        let nfixed = cif.sig.params().len();
        // SAFETY: every `k` read is a pseudo-parameter, part of the cif, so
        // libffi passes a valid pointer to 8 readable bytes for each.
        let read = |k: usize| unsafe { read_bits(*args.add(k) as *const u8, 8) };
        for k in 0..plan.gp_count as usize {
            raw.gp[plan.gp_first as usize + k] = read(nfixed + k);
        }
        for k in 0..plan.fp_count as usize {
            raw.fp[plan.fp_first as usize + k] = read(nfixed + plan.gp_count as usize + k);
        }
        raw.gp_next = plan.gp_first;
        raw.fp_next = plan.fp_first;
        // SAFETY: the anchor's pointer is its stack slot in the caller's frame;
        // stepping back stays within the caller's argument area.
        raw.overflow = unsafe { (*args.add(plan.anchor) as *const u8).sub(plan.anchor_back) };
        raw
    });
    let mut rets: SmallVec<[u64; 4]> = SmallVec::from_elem(0, cif.ret_slots);
    let va = va.as_mut().map_or(null_mut(), |v| v as *mut RawVaList);
    // SAFETY: the dispatcher's contract (Dispatcher::from_host or from_raw) makes
    // this call valid with its binding (counts equal to these slots).
    let status =
        unsafe { (b.dispatcher.dispatch)(&b.raw, slot_ptr(&slots), slot_ptr_mut(&mut rets), va) };
    after_dispatch(status, b.raw.func, b.dispatcher.policy, &mut rets);
    match cif.sig.ret() {
        None => {}
        // SAFETY: libffi's `ret` has room for an ffi_arg (8 bytes); an `f32`
        // result writes 4.
        Some(Type::Scalar(Scalar::F32)) => unsafe { *(ret as *mut u32) = rets[0] as u32 },
        // SAFETY: room for an ffi_arg (8 bytes) for integer and pointer results.
        Some(Type::Scalar(s)) => unsafe { *(ret as *mut u64) = s.to_slot(rets[0]) },
        // SAFETY: room for the struct's size; the result slots hold at least that.
        Some(Type::Struct(st)) => unsafe {
            std::ptr::copy_nonoverlapping(
                rets.as_ptr().cast::<u8>(),
                ret.cast::<u8>(),
                st.size() as usize,
            )
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::classify;

    fn sig(s: &str) -> Signature {
        Signature::parse(s).unwrap()
    }

    #[test]
    fn packed_structs_libffi_can_describe_are_plain_bytes_or_naturally_laid_out() {
        let ty = |s: &str| sig(&format!("({s})->void")).params()[0].clone();
        let bytes = |n: u32| {
            Type::from(StructType::new(vec![(Type::Scalar(Scalar::U8), Some(n))], false).unwrap())
        };
        // SysV, at most 16 bytes: only a natural layout (same offsets) will do.
        let pk6 = ty("packed{u32,u16}");
        assert_eq!(
            libffi_type_for(&pk6, CallConv::SysV, false).unwrap(),
            pk6.unpacked().unwrap()
        );
        let pk7 = ty("packed{u16,u8,u32}");
        let err = libffi_type_for(&pk7, CallConv::SysV, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("offset 3"), "{err}");
        // SysV, more than 16 bytes: memory whatever the fields, as bytes.
        let pk17 = ty("packed{u8,i64,i64}");
        for is_ret in [false, true] {
            assert_eq!(
                libffi_type_for(&pk17, CallConv::SysV, is_ret).unwrap(),
                bytes(17)
            );
        }
        // Win64: any aggregate goes by its size alone.
        for (t, n) in [
            (pk6, 6),
            (pk7, 7),
            (ty("packed{u8,u16,u8}"), 4),
            (ty("{u8,packed{u32}}"), 5),
        ] {
            assert_eq!(
                libffi_type_for(&t, CallConv::Win64, false).unwrap(),
                bytes(n),
                "{t}"
            );
        }
    }

    #[test]
    fn variadic_closure_plan_covers_unused_registers_then_the_stack() {
        let s = sig("(i32,f64,...)->f64");
        let plan = va_plan(&classify(&s, CallConv::SysV), 2);
        assert_eq!(
            (plan.gp_first, plan.gp_count, plan.fp_first, plan.fp_count),
            (1, 5, 1, 7)
        );
        assert_eq!(plan.anchor, 2 + 5 + 7);
        let plan = va_plan(&classify(&s, CallConv::Win64), 2);
        assert_eq!(
            (plan.gp_first, plan.gp_count, plan.anchor, plan.anchor_back),
            (2, 2, 4, 0)
        );
        let six = sig("(i64,i64,i64,i64,i64,i64,...)->void");
        let plan = va_plan(&classify(&six, CallConv::Win64), 6);
        assert_eq!((plan.gp_count, plan.anchor, plan.anchor_back), (0, 6, 16));
    }
}
