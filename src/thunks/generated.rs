//! The generated backend's objects: exit stubs and shared entry thunks cached
//! per signature and convention, their code shared between signatures of one
//! machine shape (`x64::exit_key`, `x64::entry_key`; ABI.md, "Generated
//! code"), and bindings reached through a pool of trampolines.
//!
//! A binding costs one 32-byte trampoline of executable memory, one data cell
//! and one binding slot: trampolines are generated a block at a time, each
//! reading its binding from its own cell, and the block keeps a slot per
//! trampoline for the binding itself, so binding a function writes no code
//! and allocates nothing. When an entry point is dropped its binding is
//! moved out of its slot (and dropped once the pool's lock is released), a
//! tombstone takes its place (the same thunk, a dispatcher that aborts with
//! a message naming the function and its signature), and the trampoline goes
//! to the back of the pool's quarantine; only when [`ENTRY_QUARANTINE`] more
//! entry points of the pool were dropped after it does it move on to the
//! free list, to be bound again (ABI.md, "Bindings and trampolines").

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::ffi::c_void;
use std::hash::BuildHasher;
use std::mem::MaybeUninit;
use std::ptr::{NonNull, null_mut};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::code::CodeSpace;
use super::exec::{ExecCode, ExecMemory};
use super::x64::{
    BindingHead, CodeKey, ErrnoIo, FastRet, SigKey, SigKeys, TRAMPOLINE_BYTES, emit_entry,
    emit_fast_exit, emit_slot_exits, emit_trampolines, entry_key, exit_key, scalar_sig_keys,
};
use super::{BackendKind, ENTRY_QUARANTINE, Result, ThunkError};
use crate::abi::{CallConv, CallLayout, Registry, SigId, Signature, SlotExt, Type};
use crate::code::{RawFn, callable, callable_as};
use crate::host::{
    Dispatcher, FailurePolicy, RawBinding, RawVaList, after_dispatch, clear_entry_error,
};
use crate::table::{Arena, Padded, PtrTable, THREAD_NUMBERS, thread_number};
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use rustc_hash::FxBuildHasher;

use crate::visibility::Unwind;

type ExitFn = unsafe extern "C" fn(*const u64, *mut u64, *const c_void, *mut ErrnoIo);

/// A register stub (`x64::emit_fast_exit`): arguments from the slots,
/// result slots back in rax and xmm0 (a `#[repr(C)]` `u64` and `f64`), or,
/// for a result in memory, written by the target through the third argument.
type FastFn = unsafe extern "C" fn(*const u64, *const c_void, *mut u64) -> RegSlots;

/// What a register stub returns: rax and xmm0.
#[repr(C)]
#[derive(Clone, Copy)]
struct RegSlots(u64, f64);

/// The two slot stubs of a signature (plain and errno-capturing).
struct SlotStubs {
    _code: ExecCode,
    f: ExitFn,
    f_errno: ExitFn,
}

/// The largest stub installed. No signature within the limits comes near:
/// large copies are loops (`x64::copy_to_stack`), and 64 parameters take a
/// few instructions each.
const MAX_STUB_BYTES: usize = 64 * 1024;

/// Installs `code` to be published with `unwind`, refusing sizes no sane
/// signature produces.
fn install(mem: &Arc<ExecMemory>, code: &[u8], unwind: &Unwind) -> Result<ExecCode> {
    if code.len() > MAX_STUB_BYTES {
        return Err(too_big(code.len()));
    }
    mem.install(code, unwind)
}

/// `install`, then published to tools (`crate::visibility`) as
/// `tierbridge <what> <signature> <convention>`.
fn install_named(
    mem: &Arc<ExecMemory>,
    code: &[u8],
    what: &str,
    sig: &Signature,
    conv: CallConv,
    unwind: &Unwind,
) -> Result<ExecCode> {
    let mut c = install(mem, code, unwind)?;
    // The name only for the sinks that read it (formatting it costs about
    // as much as the rest of the publication).
    let name = if crate::visibility::names_wanted() {
        format!("tierbridge {what} {sig} {conv}")
    } else {
        String::new()
    };
    c.publish(&name, unwind);
    Ok(c)
}

impl SlotStubs {
    fn new(mem: &Arc<ExecMemory>, sig: &Signature, layout: &CallLayout) -> Result<SlotStubs> {
        let mut space = CodeSpace::new();
        let (bytes, errno_at, unwind) = emit_slot_exits(&mut space, layout);
        let code = install_named(mem, bytes, "exit", sig, layout.conv, &unwind)?;
        // SAFETY: both slot stubs were emitted as exactly this function type.
        let f: ExitFn = unsafe { callable_as(code.addr().cast()) };
        // SAFETY: as above; the errno variant starts `errno_at` bytes in.
        let f_errno: ExitFn = unsafe { callable_as(code.addr().add(errno_at).cast()) };
        Ok(SlotStubs {
            _code: code,
            f,
            f_errno,
        })
    }
}

/// The exit code of one machine shape ([`exit_key`]), shared by every
/// signature of that shape: the register stub when the shape has one (made
/// at once, since `call` and compiled code use it), and the slot stubs (made
/// at once when there is no register stub, else on first need: errno
/// capture, compiled code's slot calls).
struct ExitCode {
    /// Where the slot stubs go when they are made later.
    mem: Arc<ExecMemory>,
    /// Native stack the shape's arguments take (`call_stack_bytes`).
    stack_need: u32,
    fast: Option<(ExecCode, FastRet)>,
    slots: OnceLock<SlotStubs>,
}

/// A generated exit stub: a view of its shape's [`ExitCode`] with what a
/// call needs of the signature, kept by its backend's table of exits
/// ([`GenExits`]). Shared by every signature with the same exit key
/// ([`SigKeys::exit`]), which fixes all of its fields; a signature without
/// one has its own.
pub(super) struct GenExit {
    /// Its shape's code, kept by the same [`GenExits`] as this exit.
    code: Kept<ExitCode>,
    /// The register stub, when the signature has one. This and the next two
    /// fields repeat what `code.fast` says, so that a call reads them from
    /// this struct instead of following `code` to the shared one.
    fast: Option<FastFn>,
    /// How many result slots it returns in registers (0 to 2; 0 also for a
    /// result in memory, which the target writes).
    reg_slots: u8,
    /// Whether slot 0 comes back in xmm0 (and slot 1 in rax), not in rax
    /// (and slot 1 in xmm0).
    sse_first: bool,
    /// How a scalar result's register becomes its slot (`SlotExt::NONE` for
    /// anything but a narrow integer or an `f32`).
    ext: SlotExt,
    nargs: u32,
    nret: u32,
    conv: CallConv,
    /// Native stack its arguments take; a call checks for it first when it
    /// is more than a page (`stack::UNCHECKED_FRAME`).
    stack_need: u32,
}

/// A backend's exits, per convention and by signature id, and the exit code
/// they share. Each exit and each piece of code stays where it was put until
/// the table is dropped, which is when the backend and every [`GenExitRef`]
/// to it are gone.
pub(super) struct GenExits {
    /// Each signature's exit, per convention (a racing thread may set an
    /// id's again: to the same shared exit, or for a signature without an
    /// exit key an equal one of its own, kept as long as the others).
    exits: [PtrTable<GenExit>; 2],
    /// The exits, shared ones found by exit key in `shared`.
    made: Arena<GenExit>,
    shared: Shapes<SigKey, GenExit>,
    code: SharedCode<ExitCode>,
    /// The registry the ids are from: it has each signature, and its layout,
    /// classified and kept on first need (the registry keeps no layout
    /// classified only to make shared code, and a signature whose code was
    /// found by [`scalar_sig_keys`] is never classified for its calls).
    reg: &'static Registry,
}

/// A reference to something a table keeps (never moving or dropping it
/// before the table goes), held where that table outlives the holder (see
/// where each is made): a plain pointer, so that holding it costs no
/// reference count.
struct Kept<T>(NonNull<T>);

impl<T> Kept<T> {
    fn new(value: &T) -> Kept<T> {
        Kept(NonNull::from(value))
    }
}

impl<T> Clone for Kept<T> {
    fn clone(&self) -> Kept<T> {
        *self
    }
}

impl<T> Copy for Kept<T> {}

// SAFETY: a Kept<T> is only ever read through, as a `&T` is, which is Send
// and Sync when T is Sync.
unsafe impl<T: Sync> Send for Kept<T> {}
// SAFETY: as for Send.
unsafe impl<T: Sync> Sync for Kept<T> {}

/// An exit in its backend's table, keeping the table alive: an `ExitStub`
/// reads its exit through one pointer, as it would through an `Arc`, with
/// no allocation per signature.
#[derive(Clone)]
pub(super) struct GenExitRef {
    exit: Kept<GenExit>,
    table: Arc<ExitsKeeper>,
}

/// One of a backend's references to its exits, one per thread number
/// ([`thread_number`]), which the stubs made on threads of that number
/// share: the stubs two threads make at once count their references on two
/// cache lines, not both on the exits' one (padded, so that its `Arc`'s
/// counts have a cache line of their own).
type ExitsKeeper = Padded<Arc<GenExits>>;

// An `ExitStub` may move between and be shared across threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<GenExitRef>();
};

impl GenExitRef {
    /// `exit`, keeping `keepers`' exits alive through this thread's keeper.
    fn new(keepers: &[Arc<ExitsKeeper>; THREAD_NUMBERS], exit: Kept<GenExit>) -> GenExitRef {
        GenExitRef {
            exit,
            table: keepers[thread_number()].clone(),
        }
    }

    /// The signature of `id`, which this exit was made for.
    pub(super) fn signature(&self, id: SigId) -> &'static Signature {
        self.table
            .reg
            .signature(id)
            .expect("made from an id this registry issued")
    }

    /// The layout of `id`, which this exit was made for, classified now if
    /// this is its first use.
    pub(super) fn layout(&self, id: SigId) -> &'static CallLayout {
        self.table
            .reg
            .layout(id, self.conv)
            .expect("made from an id this registry issued")
    }

    /// The call: checks, the stub, and the callback-failure check, with every
    /// error built out of line so the hot path stays a handful of
    /// instructions. `id` is the signature's, for an error to name it.
    ///
    /// # Safety
    /// As `ExitStub::call`.
    #[inline]
    pub(super) unsafe fn call(
        &self,
        id: SigId,
        target: *const c_void,
        args: &[u64],
        ret: &mut [u64],
        errno_before: Option<i32>,
    ) -> Result<Option<i32>> {
        super::check_exit_call(
            move || self.signature(id),
            target,
            (self.nargs as usize, self.nret as usize),
            args,
            ret,
        )?;
        clear_entry_error();
        if let Some(v) = errno_before {
            // SAFETY: forwarded contract; the counts were checked above.
            return unsafe { self.call_errno(id, target, args, ret, v) };
        }
        // SAFETY: the stub reads `nargs` slots and writes `nret` slots (both
        // checked above); the caller vouches that `target` has this signature.
        unsafe { self.run(target, args.as_ptr(), ret.as_mut_ptr()) };
        super::callback_failure()?;
        Ok(None)
    }

    /// The errno-capturing call, through the slot stub (out of line: it is
    /// not the common path).
    ///
    /// # Safety
    /// As `call`, with the slot counts already checked.
    #[inline(never)]
    unsafe fn call_errno(
        &self,
        id: SigId,
        target: *const c_void,
        args: &[u64],
        ret: &mut [u64],
        errno_before: i32,
    ) -> Result<Option<i32>> {
        let f_errno = self.slot_stubs(id)?.f_errno;
        if self.stack_need as usize > crate::stack::UNCHECKED_FRAME {
            super::reserve_call_stack(self.stack_need as usize)?;
        }
        let mut io = ErrnoIo {
            loc: crate::sys::errno_location(),
            value: errno_before,
        };
        // SAFETY: by this function's contract; `io` outlives the call.
        unsafe { f_errno(args.as_ptr(), ret.as_mut_ptr(), target, &mut io) };
        super::callback_failure()?;
        Ok(Some(io.value))
    }

    /// The slot stubs, made now (from `id`'s layout) if this is their first
    /// use.
    fn slot_stubs(&self, id: SigId) -> Result<&SlotStubs> {
        let code = self.code();
        if let Some(s) = code.slots.get() {
            return Ok(s);
        }
        // Any signature of the shape makes the same bytes (`exit_key`).
        let fresh = SlotStubs::new(&code.mem, self.signature(id), self.layout(id))?;
        // Another thread may have won the race: its stubs are used, these freed.
        Ok(code.slots.get_or_init(|| fresh))
    }

    /// The plain slot stub's address (for compiled code); `None` when there
    /// is no executable memory left to make it.
    pub(super) fn raw_fn(&self, id: SigId) -> Option<usize> {
        self.slot_stubs(id).ok().map(|s| s.f as usize)
    }
}

impl std::ops::Deref for GenExitRef {
    type Target = GenExit;

    #[inline(always)]
    fn deref(&self) -> &GenExit {
        // SAFETY: `exit` is kept (in `made`) by the table `table` keeps
        // alive, which never moves or changes it before the table goes.
        unsafe { self.exit.0.as_ref() }
    }
}

impl GenExit {
    /// The exit of `sig` for convention `conv` through `code`, its shape's.
    fn new(code: &ExitCode, sig: &Signature, conv: CallConv) -> GenExit {
        let ext = match sig.ret() {
            Some(Type::Scalar(s)) => s.slot_ext(),
            _ => SlotExt::NONE,
        };
        let (fast, (reg_slots, sse_first)) = match &code.fast {
            Some((c, kind)) => (
                // SAFETY: emitted as exactly this function type (`FastFn`).
                Some(unsafe { callable_as::<FastFn>(c.addr().cast()) }),
                match kind {
                    FastRet::Regs { slots, sse_first } => (*slots, *sse_first),
                    FastRet::Sret => (0, false),
                },
            ),
            None => (None, (0, false)),
        };
        GenExit {
            code: Kept::new(code),
            fast,
            reg_slots,
            sse_first,
            ext,
            nargs: sig.arg_slots() as u32,
            nret: sig.ret_slots() as u32,
            conv,
            stack_need: code.stack_need,
        }
    }

    /// Its shape's code.
    fn code(&self) -> &ExitCode {
        // SAFETY: an exit is made (in `GenBackend::make_exit`) with code from
        // the `SharedCode` of the same `GenExits` table it is kept by; the
        // table drops its code only when it is dropped itself, and the exit
        // is reached only through a reference into that table.
        unsafe { self.code.0.as_ref() }
    }

    /// The register stub's address and how it returns, if the signature has
    /// one and its result is at most one slot (for compiled code:
    /// `extern "C" fn(args, target, ret)`, the slot in rax or xmm0 as the
    /// target returned it, a narrow integer not yet extended).
    pub(super) fn raw_fast(&self) -> Option<(usize, FastRet)> {
        match self.code().fast.as_ref()? {
            (code, kind @ FastRet::Regs { slots: 0 | 1, .. }) => {
                Some((code.addr().as_ptr() as usize, *kind))
            }
            // Two slots, or a result in memory: compiled code uses the slot stub.
            _ => None,
        }
    }

    /// The stub alone: no checks (see `ExitStub::call_unchecked`).
    ///
    /// # Safety
    /// As `ExitStub::call_unchecked`.
    #[inline(always)]
    pub(super) unsafe fn call_unchecked(
        &self,
        target: *const c_void,
        args: *const u64,
        ret: *mut u64,
    ) {
        // SAFETY: forwarded contract.
        unsafe { self.run(target, args, ret) }
    }

    /// One call through the register stub when the signature has one (the
    /// result slots it returns in rax and xmm0 stored here, a scalar's
    /// extended, a result in memory written there by the target), else the
    /// slot stub.
    ///
    /// # Safety
    /// `args` points to the stub's `nargs` slots, `ret` to its `nret` slots,
    /// and `target` is a non-null function of this signature.
    #[inline(always)]
    unsafe fn run(&self, target: *const c_void, args: *const u64, ret: *mut u64) {
        // One path for every register stub, whatever its result: how the
        // result travels was settled when the stub was made.
        if let Some(f) = self.fast {
            // SAFETY: by this function's contract; the stub reads `nargs`
            // slots, and a target returning in memory writes the `nret` slots
            // at `ret` (its size rounded up to slots, aligned for any C scalar).
            let r = unsafe { f(args, target, ret) };
            let (int, sse) = (r.0, r.1.to_bits());
            let (first, second) = if self.sse_first {
                (sse, int)
            } else {
                (int, sse)
            };
            // One slot first: the common case takes one branch.
            if self.reg_slots == 1 {
                // SAFETY: `ret` points to `nret` >= `reg_slots` slots.
                unsafe { *ret = self.ext.apply(first) };
            } else if self.reg_slots == 2 {
                // SAFETY: as above.
                unsafe { (*ret, *ret.add(1)) = (first, second) };
            }
        } else {
            // Only a slot stub's arguments can take more than a page (no
            // register stub is made for them).
            if self.stack_need as usize > crate::stack::UNCHECKED_FRAME {
                // SAFETY: forwarded contract.
                return unsafe { self.run_big(target, args, ret) };
            }
            // SAFETY: by this function's contract.
            unsafe { (self.slot_fn())(args, ret, target, null_mut()) }
        }
    }
}

impl GenExit {
    /// The plain slot stub, made with the exit when it has no register stub.
    #[inline(always)]
    fn slot_fn(&self) -> ExitFn {
        self.code()
            .slots
            .get()
            .expect("made with the stub when there is no register stub")
            .f
    }

    /// `run` for a slot stub whose arguments take more than a page of
    /// stack: enough stack first, or the call is not made, the results are
    /// zero and the failure is pending.
    ///
    /// # Safety
    /// As `run`.
    #[cold]
    #[inline(never)]
    unsafe fn run_big(&self, target: *const c_void, args: *const u64, ret: *mut u64) {
        if let Err(error) = crate::stack::check(self.stack_need as usize) {
            // SAFETY: `ret` points to the stub's `nret` slots (contract).
            let ret = unsafe { std::slice::from_raw_parts_mut(ret, self.nret as usize) };
            return super::no_stack_for_call(error, ret);
        }
        // SAFETY: by this function's contract.
        unsafe { (self.slot_fn())(args, ret, target, null_mut()) }
    }
}

/// A generated entry thunk, shared by every signature of its machine shape
/// ([`entry_key`]).
struct GenThunk {
    _code: ExecCode,
    thunk: Thunk,
}

/// What a binding needs of its entry thunk (whose code the backend's
/// [`Entries`] keep).
#[derive(Clone, Copy)]
struct Thunk {
    entry: RawFn,
    /// The signature's argument and result slot counts.
    slots: (u32, u32),
}

/// What a trampoline's cell points to. Generated code reads `head` only.
/// Its dispatcher is in `head` but for the policy and what keeps the host
/// alive; its thunk's code is kept by the [`Entries`] that keep the binding.
#[repr(C)]
struct GenBinding {
    head: BindingHead,
    policy: FailurePolicy,
    _host: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

// SAFETY: the head's raw pointers are code addresses and the dispatcher's
// context, which `Dispatcher` (Send) vouches for; the rest is Send.
unsafe impl Send for GenBinding {}

struct DeadHead(BindingHead);
// SAFETY: immutable, and its pointers are to functions or null.
unsafe impl Sync for DeadHead {}

/// What a trampoline's cell points to before its first binding, and for the
/// moment between a binding's removal and its tombstone's arrival.
static DEAD: DeadHead = DeadHead(BindingHead {
    thunk: dead_entry,
    dispatch: dead_dispatch,
    raw: RawBinding {
        ctx: null_mut(),
        func: u64::MAX,
        nargs: 0,
        nret: 0,
    },
});

/// Reached (by a jump from a trampoline) when native code calls a trampoline
/// with no binding and no tombstone: never bound, or called while its entry
/// point was being dropped.
///
/// # Safety
/// Only ever jumped to by a trampoline; it never returns.
unsafe extern "C" fn dead_entry() {
    super::abort_with(format_args!(
        "called an entry point while it was being dropped (or one never bound)"
    ));
}

/// What a dropped entry point's slot holds while its trampoline is in
/// quarantine: a binding head whose thunk is the signature's own (so a
/// stale call is taken apart as a call of the signature, as it is one) and
/// whose dispatcher aborts, naming the function and the signature kept here
/// (looked up only then). Written over the binding's slot, so it must fit
/// there.
#[repr(C)]
struct Tombstone {
    head: BindingHead,
    reg: &'static Registry,
    id: SigId,
    conv: CallConv,
}

const _: () = {
    assert!(size_of::<Tombstone>() <= size_of::<GenBinding>());
    assert!(align_of::<Tombstone>() <= align_of::<GenBinding>());
};

/// A tombstone's dispatcher: reached through the signature's thunk when
/// native code calls a dropped entry point still in quarantine.
///
/// # Safety
/// `binding` is the `raw` field of a [`Tombstone`]'s head (as a tombstone's
/// thunk passes it); it never returns.
unsafe extern "C" fn tombstone_dispatch(
    binding: *const RawBinding,
    _: *const u64,
    _: *mut u64,
    _: *mut RawVaList,
) -> u32 {
    let at = std::mem::offset_of!(Tombstone, head) + std::mem::offset_of!(BindingHead, raw);
    // SAFETY: by the contract above, `binding` is `at` bytes into a live
    // tombstone (its slot is kept while the trampoline is in quarantine).
    let t = unsafe { &*binding.byte_sub(at).cast::<Tombstone>() };
    match t.reg.signature(t.id) {
        Ok(sig) => super::dropped_entry_called(t.head.raw.func, sig, t.conv),
        // Not reachable: the id was the binding's, from this registry.
        Err(_) => super::abort_with(format_args!(
            "called a dropped entry point (fn id {}, {})",
            t.head.raw.func, t.id
        )),
    }
}

/// Never called (the dead binding's code aborts first); present so the dead
/// binding is a complete `BindingHead`.
///
/// # Safety
/// None needed: it aborts without touching its arguments.
unsafe extern "C" fn dead_dispatch(
    _: *const RawBinding,
    _: *const u64,
    _: *mut u64,
    _: *mut RawVaList,
) -> u32 {
    std::process::abort();
}

/// Called by entry thunks when the dispatcher returned a failure status.
///
/// # Safety
/// `binding` is the live binding of the running thunk, `ret` its `nret` result slots.
unsafe extern "C" fn entry_failed(
    status: u32,
    binding: *const GenBinding,
    ret: *mut u64,
    nret: u32,
) {
    // SAFETY: by the contract above (the thunk passes its own binding and frame).
    let (b, ret) = unsafe {
        (
            &*binding,
            std::slice::from_raw_parts_mut(ret, nret as usize),
        )
    };
    after_dispatch(status, b.head.raw.func, b.policy, ret);
}

const BLOCK: usize = 128;

/// Bytes a quarantined entry point keeps from reuse on this backend: its
/// trampoline, its cell, its binding slot (the tombstone), and its place in
/// the queue.
pub(super) const QUARANTINED_BYTES: usize = TRAMPOLINE_BYTES
    + size_of::<AtomicPtr<BindingHead>>()
    + size_of::<BindingSlot>()
    + size_of::<(usize, usize)>();

/// Where a binding lives: a slot of its trampoline's block, written when a
/// function is bound to the trampoline and moved out when the entry point is
/// dropped (so binding allocates nothing). The slot's memory lives as long
/// as the pool.
type BindingSlot = UnsafeCell<MaybeUninit<GenBinding>>;

struct Block {
    code: ExecCode,
    cells: Box<[AtomicPtr<BindingHead>]>,
    /// `slots[i]` holds trampoline `i`'s binding while it is bound.
    slots: Box<[BindingSlot]>,
}

struct Pool {
    blocks: Vec<Block>,
    /// Trampolines no binding or tombstone holds, taken from the front.
    free: VecDeque<(usize, usize)>,
    /// Dropped entry points' trampolines, each with its tombstone, oldest
    /// first: at most [`ENTRY_QUARANTINE`], the oldest moving to the back of
    /// `free` when one more arrives.
    quarantine: VecDeque<(usize, usize)>,
}

/// One of a backend's pools of trampolines with their bindings, one per
/// thread number ([`thread_number`]), and the entry thunks those bindings
/// run (kept with the pool, so that a binding needs no reference of its own
/// to its thunk's code). An entry point is bound from its thread's pool:
/// entry points two threads bind at once take two locks, fill two blocks
/// and count their references on two cache lines (the pool is padded, so
/// that its `Arc`'s counts have a cache line of their own).
struct PoolKeeper {
    pool: Mutex<Pool>,
    /// Kept for the bindings, which run its thunks.
    _entries: Arc<Entries>,
    /// Where its bindings' signature ids are from (for a tombstone's message).
    reg: &'static Registry,
}

/// A backend's entry thunks, each signature's and their shared code.
struct Entries {
    /// Each signature's entry thunk, per convention (one table per
    /// convention, so a program that uses one touches no memory for the
    /// other; a racing thread may set an id's again, to the same shared
    /// thunk or, for a shape without a key, an equal one).
    thunks: [PtrTable<GenThunk>; 2],
    /// The thunks by a signature's entry key ([`SigKeys::entry`]), found
    /// without classifying the signature.
    by_sig: Shapes<SigKey, GenThunk>,
    code: SharedCode<GenThunk>,
}

/// A bound generated entry point. It owns the binding in its trampoline's
/// slot from `bind` until `drop`.
pub(super) struct GenEntry {
    /// Its block and trampoline (and so its cell and binding slot).
    at: (usize, usize),
    code: *const c_void,
    /// The pool its trampoline is from.
    pool: Arc<Padded<PoolKeeper>>,
    /// For its tombstone's message.
    id: SigId,
    conv: CallConv,
}

// SAFETY: its one raw pointer is its trampoline's address (code, never
// written or read through here); the binding it owns is in the pool, behind a
// mutex, and immutable once published.
unsafe impl Send for GenEntry {}
// SAFETY: see Send.
unsafe impl Sync for GenEntry {}

impl GenEntry {
    pub(super) fn code_ptr(&self) -> *const c_void {
        self.code
    }
}

impl Drop for GenEntry {
    fn drop(&mut self) {
        let binding = {
            let mut pool = self.pool.pool.lock().unwrap_or_else(|e| e.into_inner());
            let (b, i) = self.at;
            let block = &pool.blocks[b];
            // Away from the slot while it is rewritten (a call racing the
            // drop is the caller's bug, but then it aborts here too).
            block.cells[i].store(
                (&DEAD.0 as *const BindingHead).cast_mut(),
                Ordering::Release,
            );
            let slot = block.slots[i].get();
            // SAFETY: `bind` wrote the binding into this slot and only this
            // entry owns it; it is moved out once, here, before the slot goes
            // into quarantine (under the same lock), and the cell no longer
            // points at it.
            let binding = unsafe { slot.cast::<GenBinding>().read() };
            let tombstone = Tombstone {
                head: BindingHead {
                    thunk: binding.head.thunk,
                    dispatch: tombstone_dispatch,
                    raw: RawBinding {
                        ctx: null_mut(),
                        ..binding.head.raw
                    },
                },
                reg: self.pool.reg,
                id: self.id,
                conv: self.conv,
            };
            // SAFETY: the slot is this entry's alone (see above), and a
            // tombstone fits in it (checked where `Tombstone` is defined);
            // it owns nothing, so `bind` may write over it later.
            unsafe { slot.cast::<Tombstone>().write(tombstone) };
            block.cells[i].store(slot.cast::<BindingHead>(), Ordering::Release);
            pool.quarantine.push_back(self.at);
            if pool.quarantine.len() > ENTRY_QUARANTINE {
                let oldest = pool.quarantine.pop_front().expect("longer than the depth");
                // To the back: the slot is reused as late as possible.
                pool.free.push_back(oldest);
            }
            binding
        };
        // Dropped outside the pool's lock: dropping the dispatcher may drop
        // the host, whose own drop may bind or drop entry points.
        drop(binding);
    }
}

/// The generated backend.
pub(super) struct GenBackend {
    mem: Arc<ExecMemory>,
    /// The exits, each signature's and their shared code.
    exits: Arc<GenExits>,
    /// The references to `exits` that the stubs keep (see [`ExitsKeeper`]).
    keepers: [Arc<ExitsKeeper>; THREAD_NUMBERS],
    /// The entry thunks, each signature's and their shared code.
    entries: Arc<Entries>,
    /// The trampolines and their bindings, a pool per thread number.
    pools: [Arc<Padded<PoolKeeper>>; THREAD_NUMBERS],
}

/// Code shared by machine shape, found by its layout's key. A signature
/// with a signature key ([`scalar_sig_keys`]) is looked up by that first,
/// without classifying it, in a table of its own side ([`GenExits::shared`],
/// [`Entries::by_sig`]); only a signature that key does not find comes here.
/// Every piece of code made stays where it was put until the table is
/// dropped (as signatures are never forgotten either), so a lookup hands out
/// a plain reference, and a lookup of a shape seen before usually takes no
/// lock (see [`Shapes`]).
struct SharedCode<T> {
    /// The code, in the order it was made.
    code: Arena<T>,
    by_layout: Shapes<CodeKey, T>,
}

impl<T> Default for SharedCode<T> {
    fn default() -> SharedCode<T> {
        SharedCode {
            code: Arena::default(),
            by_layout: Shapes::default(),
        }
    }
}

impl<T> SharedCode<T> {
    /// The code of `id`'s shape: found by the key `layout_key` reads off its
    /// layout (classified only now, and not kept by the registry), else made
    /// by `make` from the layout.
    fn get_or_make(
        &self,
        reg: &Registry,
        (id, conv): (SigId, CallConv),
        layout_key: impl FnOnce(&CallLayout) -> Option<CodeKey>,
        make: impl FnOnce(&CallLayout) -> Result<T>,
    ) -> Result<&T> {
        let code = reg.with_layout(id, conv, |layout| {
            self.by_layout
                .get_or_add(layout_key(layout), || Ok(self.keep(make(layout)?)))
        })??;
        // SAFETY: the shapes hand out only what `keep` made: code in
        // `self.code`, which never moves or drops it before `self` is dropped.
        Ok(unsafe { code.0.as_ref() })
    }

    /// Keeps `code` until the table is dropped.
    fn keep(&self, code: T) -> Kept<T> {
        Kept::new(self.code.push(code).1)
    }
}

/// A key code is shared by, and how a [`Shapes`] table keeps it.
trait ShapeKey {
    /// The key as the table keeps it.
    type Kept: Send + Sync;
    fn hash(&self) -> u64;
    fn is(&self, kept: &Self::Kept) -> bool;
    fn keep(&self) -> Self::Kept;
}

/// A layout key is kept out of line, so the table stays small (and cheap to
/// grow) however many shapes there are.
impl ShapeKey for CodeKey {
    type Kept = Box<[u8]>;
    fn hash(&self) -> u64 {
        FxBuildHasher.hash_one(self.as_bytes())
    }
    fn is(&self, kept: &Box<[u8]>) -> bool {
        **kept == *self.as_bytes()
    }
    fn keep(&self) -> Box<[u8]> {
        self.as_bytes().into()
    }
}

impl ShapeKey for SigKey {
    type Kept = SigKey;
    fn hash(&self) -> u64 {
        FxBuildHasher.hash_one(self.0)
    }
    fn is(&self, kept: &SigKey) -> bool {
        self == kept
    }
    fn keep(&self) -> SigKey {
        *self
    }
}

/// Bits of a key's hash that choose its place in [`Shapes::recent`].
const PLACE_BITS: u32 = 8;

/// Machine shapes by key, each with its code (kept by a [`SharedCode`]).
/// Kept as long as the backend.
///
/// A lookup first reads the place its key's hash chooses among `recent`,
/// which points to the shape last found or added there, without a lock: a
/// program's signatures come in a few shapes, so a new signature usually
/// finds its shape there with plain loads (a lock is two atomic
/// read-modify-writes, among the dearest things a new signature does).
/// Otherwise it looks in `all` under its lock.
struct Shapes<K: ShapeKey, T> {
    /// Every shape, by number in the order added.
    shapes: Arena<Shape<K, T>>,
    /// Each shape's hash and number: for adding a shape and for lookups
    /// whose place names another.
    all: Mutex<HashTable<(u64, u32)>>,
    /// Per place, the shape last found or added there (null: none yet),
    /// always one in `shapes`.
    recent: [AtomicPtr<Shape<K, T>>; 1 << PLACE_BITS],
}

/// One shape: its key's hash, its key, its code.
struct Shape<K: ShapeKey, T> {
    hash: u64,
    key: K::Kept,
    code: Kept<T>,
}

impl<K: ShapeKey, T> Default for Shapes<K, T> {
    fn default() -> Shapes<K, T> {
        Shapes {
            shapes: Arena::default(),
            all: Mutex::new(HashTable::new()),
            recent: std::array::from_fn(|_| AtomicPtr::new(null_mut())),
        }
    }
}

impl<K: ShapeKey, T> Shapes<K, T> {
    /// The code of shape `key`; if the shape is new, `make` keeps its code
    /// (or finds it elsewhere), outside the lock: if another thread added
    /// the shape meanwhile, its code is used (and this one's, if `make` made
    /// any, stays kept unused). With no key, what `make` gives, for this
    /// signature alone.
    fn get_or_add(
        &self,
        key: Option<K>,
        make: impl FnOnce() -> Result<Kept<T>>,
    ) -> Result<Kept<T>> {
        let Some(key) = key else {
            return make();
        };
        let hash = key.hash();
        let place = &self.recent[(hash >> (64 - PLACE_BITS)) as usize];
        let is_it = |s: &Shape<K, T>| s.hash == hash && key.is(&s.key);
        // Acquire pairs with the Release store below, made after the shape
        // was set.
        let last = place.load(Ordering::Acquire);
        // SAFETY: a place is null or points to a shape in `self.shapes`,
        // which never moves or drops it before `self` is dropped.
        if let Some(s) = unsafe { last.as_ref() }.filter(|s| is_it(s)) {
            return Ok(s.code);
        }
        // A poisoned lock only means another thread panicked while holding
        // it; the table is never left half-updated, so keep using it.
        let lock = || self.all.lock().unwrap_or_else(|e| e.into_inner());
        let same = |e: &(u64, u32)| e.0 == hash && self.shapes.get(e.1).is_some_and(is_it);
        let found = lock().find(hash, same).map(|e| e.1);
        let n = match found {
            Some(n) => n,
            None => {
                let code = make()?;
                match lock().entry(hash, same, |e| e.0) {
                    Entry::Occupied(e) => e.get().1,
                    Entry::Vacant(e) => {
                        let shape = Shape {
                            hash,
                            key: key.keep(),
                            code,
                        };
                        // Under the lock, so no other thread adds this key
                        // meanwhile.
                        let n = self.shapes.push(shape).0;
                        e.insert((hash, n));
                        n
                    }
                }
            }
        };
        let shape = self
            .shapes
            .get(n)
            .expect("a shape is set before it is added to `all`");
        place.store((shape as *const Shape<K, T>).cast_mut(), Ordering::Release);
        Ok(shape.code)
    }
}

fn too_big(len: usize) -> ThunkError {
    ThunkError::Unsupported {
        backend: BackendKind::Generated,
        reason: format!(
            "the stub would be {len} bytes of code; structs this large are not supported"
        ),
    }
}

impl GenBackend {
    pub(super) fn new(mem: Arc<ExecMemory>, reg: &'static Registry) -> GenBackend {
        let exits = Arc::new(GenExits {
            exits: Default::default(),
            made: Arena::default(),
            shared: Shapes::default(),
            code: SharedCode::default(),
            reg,
        });
        let entries = Arc::new(Entries {
            thunks: Default::default(),
            by_sig: Shapes::default(),
            code: SharedCode::default(),
        });
        GenBackend {
            mem,
            keepers: std::array::from_fn(|_| Arc::new(Padded(exits.clone()))),
            exits,
            pools: std::array::from_fn(|_| {
                Arc::new(Padded(PoolKeeper {
                    pool: Mutex::new(Pool {
                        blocks: Vec::new(),
                        free: VecDeque::new(),
                        quarantine: VecDeque::new(),
                    }),
                    _entries: entries.clone(),
                    reg,
                }))
            }),
            entries,
        }
    }

    pub(super) fn exec(&self) -> &Arc<ExecMemory> {
        &self.mem
    }

    /// How many dropped entry points are in quarantine, in all pools.
    pub(super) fn quarantined(&self) -> usize {
        self.pools
            .iter()
            .map(|k| {
                let pool = k.pool.lock().unwrap_or_else(|e| e.into_inner());
                pool.quarantine.len()
            })
            .sum()
    }

    fn install(&self, code: &[u8], unwind: &Unwind) -> Result<ExecCode> {
        install(&self.mem, code, unwind)
    }

    /// The registry the backend's ids are from (its bridge's).
    fn reg(&self) -> &'static Registry {
        self.exits.reg
    }

    pub(super) fn exit(&self, id: SigId, conv: CallConv) -> Result<GenExitRef> {
        if let Some(e) = self.exits.exits[conv as usize].get(id.index()) {
            return Ok(GenExitRef::new(&self.keepers, Kept(e)));
        }
        let sig = self.reg().signature(id)?;
        self.make_exit((id, conv), sig, scalar_sig_keys(sig, conv))
    }

    /// Makes the exit of `id`, which had none, from its signature and keys,
    /// and sets it as the id's (a thread doing the same meanwhile sets the
    /// same shared exit, or an equal one, either of which may stay).
    fn make_exit(
        &self,
        (id, conv): (SigId, CallConv),
        sig: &'static Signature,
        keys: Option<SigKeys>,
    ) -> Result<GenExitRef> {
        let table = &*self.exits;
        let key = keys.map(|k| k.exit);
        // A signature with an exit key shares the exit of that key (made by
        // the first signature with it); one without has its own. A new exit's
        // code is found by its layout's key.
        let exit = table.shared.get_or_add(key, || {
            let code = table
                .code
                .get_or_make(self.reg(), (id, conv), exit_key, |layout| {
                    super::check_call_stack(sig, layout)?;
                    let mut space = CodeSpace::new();
                    // Arguments past a page of stack: no register stub, so
                    // that only the slot stub's path checks the stack.
                    let big =
                        super::call_stack_bytes(layout) > crate::stack::UNCHECKED_FRAME as u64;
                    let fast = match emit_fast_exit(&mut space, layout).filter(|_| !big) {
                        Some((bytes, kind, unwind)) => Some((
                            install_named(
                                &self.mem,
                                bytes,
                                "exit (registers)",
                                sig,
                                conv,
                                &unwind,
                            )?,
                            kind,
                        )),
                        None => None,
                    };
                    let slots = OnceLock::new();
                    if fast.is_none() {
                        // The slot stub is the call path: make it now.
                        let _ = slots.set(SlotStubs::new(&self.mem, sig, layout)?);
                    }
                    Ok(ExitCode {
                        mem: self.mem.clone(),
                        stack_need: super::call_stack_bytes(layout) as u32,
                        fast,
                        slots,
                    })
                })?;
            Ok(Kept::new(table.made.push(GenExit::new(code, sig, conv)).1))
        })?;
        table.exits[conv as usize].set(id.index(), exit.0);
        Ok(GenExitRef::new(&self.keepers, exit))
    }

    /// The entry thunk of `id`, if it has one yet.
    fn thunk_of(&self, id: SigId, conv: CallConv) -> Option<Thunk> {
        let t = self.entries.thunks[conv as usize].get(id.index())?;
        // SAFETY: the table points only to thunks `self.entries` keeps,
        // which never moves or drops them before it is dropped.
        Some(unsafe { t.as_ref() }.thunk)
    }

    fn thunk(&self, id: SigId, conv: CallConv) -> Result<Thunk> {
        if let Some(t) = self.thunk_of(id, conv) {
            return Ok(t);
        }
        let sig = self.reg().signature(id)?;
        self.make_thunk((id, conv), sig, scalar_sig_keys(sig, conv))
    }

    /// Makes the entry thunk of `id`, which had none, from its signature and
    /// keys, and sets it as the id's (a thread doing the same meanwhile sets
    /// the same shared thunk, or an equal one, either of which may stay).
    fn make_thunk(
        &self,
        (id, conv): (SigId, CallConv),
        sig: &Signature,
        keys: Option<SigKeys>,
    ) -> Result<Thunk> {
        let variadic = sig.is_variadic();
        let sig_key = keys.map(|k| k.entry);
        // A signature with an entry signature key shares its entry layout key
        // with no signature but those of the same signature key, which the
        // lookup by signature key has already met (a unit test in `x64.rs`
        // checks this): its layout key is neither worked out nor looked up.
        let keyed = sig_key.is_some();
        let code = self.entries.by_sig.get_or_add(sig_key, || {
            let code = self.entries.code.get_or_make(
                self.reg(),
                (id, conv),
                |layout| (!keyed).then(|| entry_key(layout, variadic)).flatten(),
                |layout| {
                    let mut space = CodeSpace::new();
                    let (bytes, unwind) = emit_entry(
                        &mut space,
                        layout,
                        variadic,
                        entry_failed as *const () as usize,
                    );
                    let code = install_named(&self.mem, bytes, "entry", sig, conv, &unwind)?;
                    // SAFETY: the entry thunk is code; it is only ever jumped to by trampolines.
                    let entry = unsafe { callable(code.addr().cast()) };
                    Ok(GenThunk {
                        _code: code,
                        thunk: Thunk {
                            entry,
                            slots: (layout.arg_slots, layout.ret_slots),
                        },
                    })
                },
            )?;
            Ok(Kept::new(code))
        })?;
        self.entries.thunks[conv as usize].set(id.index(), code.0);
        // SAFETY: `by_sig` hands out only thunks `self.entries.code` keeps,
        // which never moves or drops them before it is dropped.
        Ok(unsafe { code.0.as_ref() }.thunk)
    }

    /// `BLOCK` new trampolines, each reading its own cell (pointing at the
    /// dead binding until a function is bound to it).
    fn trampoline_block(&self) -> Result<Block> {
        let cells: Box<[AtomicPtr<BindingHead>]> = (0..BLOCK)
            .map(|_| AtomicPtr::new((&DEAD.0 as *const BindingHead).cast_mut()))
            .collect();
        let addrs: Vec<usize> = cells.iter().map(|c| c as *const _ as usize).collect();
        let mut code = self.install(&emit_trampolines(&addrs), &Unwind::Leaf)?;
        // Each trampoline only jumps: the return address stays at [rsp].
        code.publish("tierbridge trampolines", &Unwind::Leaf);
        let slots = (0..BLOCK)
            .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
            .collect();
        Ok(Block { code, cells, slots })
    }

    /// The signature's exit and its entry thunk (none for a call-site
    /// variadic signature), each made now if it was not made before
    /// (`Bridge::prepare`): the signature's keys are read once for both.
    pub(super) fn prepare(&self, id: SigId, conv: CallConv) -> Result<GenExitRef> {
        let exit = self.exits.exits[conv as usize].get(id.index());
        let thunk = self.entries.thunks[conv as usize].get(id.index());
        if let (Some(e), Some(_)) = (exit, thunk) {
            return Ok(GenExitRef::new(&self.keepers, Kept(e)));
        }
        let sig = self.reg().signature(id)?;
        let keys = scalar_sig_keys(sig, conv);
        let exit = match exit {
            Some(e) => GenExitRef::new(&self.keepers, Kept(e)),
            None => self.make_exit((id, conv), sig, keys)?,
        };
        if thunk.is_none() && !sig.has_call_varargs() {
            self.make_thunk((id, conv), sig, keys)?;
        }
        Ok(exit)
    }

    pub(super) fn bind(
        &self,
        id: SigId,
        conv: CallConv,
        dispatcher: Dispatcher,
        func: u64,
    ) -> Result<GenEntry> {
        let thunk = self.thunk(id, conv)?;
        let binding = GenBinding {
            head: BindingHead {
                thunk: thunk.entry,
                dispatch: dispatcher.dispatch,
                raw: RawBinding {
                    ctx: dispatcher.ctx,
                    func,
                    nargs: thunk.slots.0,
                    nret: thunk.slots.1,
                },
            },
            policy: dispatcher.policy,
            _host: dispatcher.into_keep(),
        };
        let keeper = &self.pools[thread_number()];
        let mut pool = keeper.pool.lock().unwrap_or_else(|e| e.into_inner());
        while pool.free.is_empty() {
            // Make a block of trampolines without holding the pool (emitting
            // and installing code takes the executable memory's own lock); if
            // another thread added one meanwhile, this one is kept as spare.
            drop(pool);
            let block = self.trampoline_block()?;
            pool = keeper.pool.lock().unwrap_or_else(|e| e.into_inner());
            let b = pool.blocks.len();
            pool.blocks.push(block);
            pool.free.extend((0..BLOCK).map(|i| (b, i)));
        }
        let (b, i) = pool
            .free
            .pop_front()
            .expect("the loop left a free trampoline");
        let block = &pool.blocks[b];
        let slot: *mut GenBinding = block.slots[i].get().cast();
        // SAFETY: the slot was on the free list, so no entry point owns it
        // (its last binding, if any, was moved out before it went into
        // quarantine, and the tombstone written there owns nothing), and
        // the pool's lock is held; its memory lives as long as the pool.
        unsafe { slot.write(binding) };
        let head = slot.cast::<BindingHead>(); // `head` is first (`repr(C)`).
        block.cells[i].store(head, Ordering::Release);
        let base: NonNull<u8> = block.code.addr();
        let code = base
            .as_ptr()
            .wrapping_add(i * TRAMPOLINE_BYTES)
            .cast::<c_void>();
        drop(pool);
        Ok(GenEntry {
            at: (b, i),
            code,
            pool: keeper.clone(),
            id,
            conv,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Kept, PLACE_BITS, ShapeKey, Shapes, SigKey};
    use crate::abi::{CallConv, Signature};
    use crate::host::{Dispatcher, EntryCall, FailurePolicy, HostError};
    use crate::thunks::EntryImpl;
    use crate::thunks::{BackendKind, Bridge};
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;

    /// Code made from a layout (a signature with structs has no signature
    /// key, so its exit stub and entry thunk are made from its layout) leaves
    /// no layout in the registry; asking the stub for its layout keeps one.
    #[test]
    fn code_made_from_a_layout_leaves_no_layout_behind() {
        let bridge = Bridge::new(BackendKind::Generated).unwrap();
        if bridge.kind() != BackendKind::Generated {
            return; // fell back to libffi, whose cifs keep their layouts
        }
        let host = Dispatcher::from_host(
            Arc::new(|_: EntryCall<'_>| Ok::<(), HostError>(())),
            FailurePolicy::Report,
        );
        let sig: Signature = "({i32,f32},i8)->{i64,i64}".parse().unwrap();
        let conv = CallConv::SysV;
        let stub = bridge.exit_stub(&sig, conv).unwrap();
        let _entry = bridge.entry_point(&sig, conv, &host, 0).unwrap();
        let reg = bridge.registry();
        let id = reg.intern(&sig);
        assert!(!reg.keeps_layout(id, conv));
        assert_eq!(stub.layout().args.len(), 2);
        assert!(reg.keeps_layout(id, conv));
    }

    /// `Bridge::prepare` makes the signature's entry thunk (a binding
    /// afterwards finds it), and a call site's preparation makes none.
    #[test]
    fn prepare_makes_the_entry_thunk_a_binding_then_finds() {
        let bridge = Bridge::new(BackendKind::Generated).unwrap();
        let Some(g) = &bridge.generated else {
            return; // fell back to libffi
        };
        let (reg, conv) = (bridge.registry(), CallConv::SysV);
        let sig: Signature = "(i64,...)->f32".parse().unwrap();
        let id = reg.intern(&sig);
        assert!(g.thunk_of(id, conv).is_none());
        bridge.prepare(&sig, conv).unwrap();
        let made = g.thunk_of(id, conv).map(|t| t.entry as usize);
        assert!(made.is_some());
        let host = Dispatcher::from_host(
            Arc::new(|_: EntryCall<'_>| Ok::<(), HostError>(())),
            FailurePolicy::Report,
        );
        let entry = bridge.entry_point(&sig, conv, &host, 0).unwrap();
        let EntryImpl::Gen(e) = &entry.imp else {
            unreachable!("a generated bridge binds generated entry points")
        };
        let head = {
            let pool = e.pool.pool.lock().unwrap();
            pool.blocks[e.at.0].cells[e.at.1].load(Relaxed)
        };
        // SAFETY: the cell points at the binding `entry` owns, alive until it drops.
        let thunk = unsafe { (*head).thunk };
        assert_eq!(Some(thunk as usize), made);

        let call_site = sig.with_varargs(&[crate::abi::Scalar::F64.into()]).unwrap();
        let id = reg.intern(&call_site);
        bridge.prepare(&call_site, conv).unwrap();
        assert!(g.thunk_of(id, conv).is_none());
    }

    /// An entry point is bound from its thread's pool, keeps that pool,
    /// and gives its trampoline back to it (to its quarantine) when dropped
    /// on another thread;
    /// a stub keeps the exits through its thread's keeper.
    #[test]
    fn an_entry_point_goes_back_to_the_pool_of_the_thread_that_bound_it() {
        let bridge = Bridge::new(BackendKind::Generated).unwrap();
        let Some(g) = &bridge.generated else {
            return; // fell back to libffi
        };
        let host = Dispatcher::from_host(
            Arc::new(|_: EntryCall<'_>| Ok::<(), HostError>(())),
            FailurePolicy::Report,
        );
        let (sig, conv): (Signature, _) = ("(i32)->i32".parse().unwrap(), CallConv::SysV);
        let mine = crate::table::thread_number();
        let quarantined = |k: usize| g.pools[k].pool.lock().unwrap().quarantine.len();
        let entry = bridge.entry_point(&sig, conv, &host, 0).unwrap();
        let EntryImpl::Gen(e) = &entry.imp else {
            unreachable!("a generated bridge binds generated entry points")
        };
        assert!(Arc::ptr_eq(&e.pool, &g.pools[mine]));
        let before = quarantined(mine);
        let stub = bridge.exit_stub(&sig, conv).unwrap();
        let crate::thunks::ExitImpl::Gen(r) = &stub.imp else {
            unreachable!("a generated bridge makes generated stubs")
        };
        assert!(Arc::ptr_eq(&r.table, &g.keepers[mine]));
        std::thread::scope(|s| s.spawn(move || drop((entry, stub))).join().unwrap());
        assert_eq!(quarantined(mine), before + 1);
    }

    fn place(k: &SigKey) -> u64 {
        k.hash() >> (64 - PLACE_BITS)
    }

    /// Two keys sharing a place in `recent` are both found, each time with
    /// the code first given for it, whichever of them the place names; and
    /// the place names the shape last found there.
    #[test]
    fn keys_sharing_a_place_each_keep_their_own_code() {
        let a = SigKey(1);
        let b = (2..).map(SigKey).find(|k| place(k) == place(&a)).unwrap();
        let code = [10u32, 20, 30, 31];
        let kept = |i: usize| Kept::new(&code[i]);
        let is = |k: Kept<u32>, i: usize| k.0 == kept(i).0;
        let shapes: Shapes<SigKey, u32> = Shapes::default();
        let slot = &shapes.recent[place(&a) as usize];
        let names = |n: u32| std::ptr::eq(slot.load(Relaxed), shapes.shapes.get(n).unwrap());
        assert!(is(shapes.get_or_add(Some(a), || Ok(kept(0))).unwrap(), 0));
        assert!(is(shapes.get_or_add(Some(b), || Ok(kept(1))).unwrap(), 1));
        let never = || -> crate::thunks::Result<Kept<u32>> { panic!("made again") };
        for _ in 0..3 {
            assert!(is(shapes.get_or_add(Some(a), never).unwrap(), 0));
            // Shape 0 is `a`'s, shape 1 `b`'s.
            assert!(names(0));
            assert!(is(shapes.get_or_add(Some(a), never).unwrap(), 0));
            assert!(is(shapes.get_or_add(Some(b), never).unwrap(), 1));
            assert!(names(1));
        }
        // No key: the code is this signature's alone, never looked up.
        assert!(is(shapes.get_or_add(None, || Ok(kept(2))).unwrap(), 2));
        assert!(is(shapes.get_or_add(None, || Ok(kept(3))).unwrap(), 3));
    }

    /// Eight threads adding the same 300 shapes, each offering its own
    /// code, agree on one code per shape, and a failure to make code adds
    /// no shape.
    #[test]
    fn racing_threads_agree_on_each_shapes_code() {
        let code: Vec<Vec<u32>> = (0..8)
            .map(|who| (0..300).map(|k| who * 1000 + k).collect())
            .collect();
        let shapes: Shapes<SigKey, u32> = Shapes::default();
        let err = || Err(crate::thunks::ThunkError::NullTarget);
        assert!(shapes.get_or_add(Some(SigKey(5)), err).is_err());
        // Addresses as integers, to carry them across threads.
        let seen: Vec<Vec<usize>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|who| {
                    let (shapes, code) = (&shapes, &code);
                    s.spawn(move || {
                        (0..300)
                            .map(|k| {
                                let key = SigKey(k as u128 * 7919);
                                let mine = || Ok(Kept::new(&code[who][k]));
                                shapes.get_or_add(Some(key), mine).unwrap().0.as_ptr() as usize
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for k in 0..300 {
            let first = seen[0][k];
            let from = |who: usize| std::ptr::from_ref(&code[who][k]) as usize;
            assert!((0..8).any(|who| first == from(who)), "shape {k}");
            assert!(seen.iter().all(|v| v[k] == first), "shape {k}");
        }
        assert_eq!(shapes.all.lock().unwrap().len(), 300);
    }
}
