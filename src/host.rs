//! The interpreter side of entry points: the host contract.
//!
//! An entry point (a native function pointer made by a backend) gathers the
//! native arguments into 8-byte **slots** (ABI.md, "Slots") and calls the
//! embedding interpreter's dispatcher with the bound function id. Two ways to
//! be that dispatcher:
//!
//! - implement [`Host`] (any `Fn(EntryCall) -> Result<(), HostError>` does) and
//!   use [`Dispatcher::from_host`]: panics and errors are caught at the
//!   boundary;
//! - for a single-threaded interpreter (`Rc`, `RefCell`: not `Send`/`Sync`),
//!   implement [`LocalHost`] (any such closure does) and use
//!   [`Dispatcher::from_local_host`]: calls on the thread that bound it run
//!   it, calls from other threads are refused ([`STATUS_WRONG_THREAD`]);
//! - register a raw `extern "C"` [`RawDispatch`] with [`Dispatcher::from_raw`].
//!
//! A failing call never unwinds through native frames. What happens instead
//! is the [`FailurePolicy`] of the dispatcher:
//! - [`FailurePolicy::Report`]: the native caller gets a zeroed result, and the
//!   error is kept in a thread-local until the host takes it: the exit call
//!   that led into the native code returns it as
//!   [`ThunkError::Callback`](crate::thunks::ThunkError::Callback) when that
//!   code returns, or [`take_entry_error`] hands it over. Native code can ask
//!   [`pending_entry_status`] (an `extern "C"` function) whether a callback
//!   failed.
//! - [`FailurePolicy::Abort`]: the process prints the error and aborts.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::sync::Arc;

use thiserror::Error;

use crate::abi::CallConv;

/// Status a dispatcher returns: the call succeeded.
pub const STATUS_OK: u32 = 0;
/// Status: the host reported an error.
pub const STATUS_ERROR: u32 = 1;
/// Status: the host panicked.
pub const STATUS_PANIC: u32 = 2;
/// Status: a host bound with [`Dispatcher::from_local_host`] was called from
/// a thread other than its own, and did not run.
pub const STATUS_WRONG_THREAD: u32 = 3;
/// Status: the thread's native stack was at its limit ([`crate::stack`]),
/// and the host did not run.
pub const STATUS_STACK_EXHAUSTED: u32 = 4;

/// What [`call_guard_begin`] returns when the call it guards must not be
/// made: the thread's native stack is at its limit, and that failure
/// ([`EntryError::StackExhausted`]) is now pending. Compiled code leaves as
/// it does after a failed callee.
pub const CALL_GUARD_NO_STACK: u32 = u32::MAX;

/// The error type a [`Host`] returns.
pub type HostError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What an entry point tells its raw dispatcher about itself: fixed when the
/// function is bound, so a call builds nothing. Read by generated code: its
/// layout is a contract (ABI.md, "Host contract"; checked by a test).
#[repr(C)]
#[derive(Debug)]
pub struct RawBinding {
    /// The context given with the dispatcher.
    pub ctx: *mut c_void,
    /// The bound function id.
    pub func: u64,
    /// Number of argument slots.
    pub nargs: u32,
    /// Number of result slots.
    pub nret: u32,
}

/// A raw dispatcher, called by an entry point with its binding, `nargs`
/// argument slots, `nret` result slots (zeroed on entry) and, for a variadic
/// signature, the variadic-argument cursor (null otherwise). The binding and
/// slot pointers are never null (a slot pointer may dangle, aligned, when its
/// count is 0).
/// Returns a status (`STATUS_OK`, or any other value for a failure).
///
/// All four arguments travel in registers, so an entry thunk stores nothing
/// but the slots to call it. It must not unwind.
pub type RawDispatch = unsafe extern "C" fn(
    binding: *const RawBinding,
    args: *const u64,
    ret: *mut u64,
    va: *mut RawVaList,
) -> u32;

/// A function id bound into an entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FuncId(pub u64);

/// One call from native code, as a [`Host`] sees it.
pub struct EntryCall<'a> {
    /// The bound function.
    pub func: FuncId,
    /// Argument slots. Where speed matters, read them 8 bytes at a time (or
    /// 16 bytes from an even slot): the entry thunk has just stored them, and
    /// a read spanning two of its stores stalls (ABI.md, "Host contract").
    pub args: &'a [u64],
    /// Result slots to fill (zeroed on entry).
    pub ret: &'a mut [u64],
    /// The variadic arguments, for a variadic signature.
    pub varargs: Option<VaArgs<'a>>,
}

/// An interpreter (or any Rust code) that runs bound functions.
pub trait Host: Send + Sync + 'static {
    /// Runs `call.func` with `call.args`, writing `call.ret`.
    ///
    /// # Errors
    /// Any error; it travels as described in the [module docs](self).
    fn call(&self, call: EntryCall<'_>) -> Result<(), HostError>;
}

impl<F> Host for F
where
    F: Fn(EntryCall<'_>) -> Result<(), HostError> + Send + Sync + 'static,
{
    fn call(&self, call: EntryCall<'_>) -> Result<(), HostError> {
        self(call)
    }
}

/// A host that lives on one thread: an interpreter built on `Rc`, `Cell`,
/// `RefCell` (anything not `Send`/`Sync`). Bind it with
/// [`Dispatcher::from_local_host`]: calls made on the thread that bound it
/// run it, calls from any other thread are refused.
pub trait LocalHost: 'static {
    /// Runs `call.func` with `call.args`, writing `call.ret`; always on the
    /// host's own thread.
    ///
    /// # Errors
    /// Any error; it travels as described in the [module docs](self).
    fn call(&self, call: EntryCall<'_>) -> Result<(), HostError>;
}

impl<F> LocalHost for F
where
    F: Fn(EntryCall<'_>) -> Result<(), HostError> + 'static,
{
    fn call(&self, call: EntryCall<'_>) -> Result<(), HostError> {
        self(call)
    }
}

/// This thread's serial number: unique for the process's whole run (never
/// reused when a thread exits, unlike a thread-local's address).
fn thread_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static SERIAL: Cell<u64> = const { Cell::new(0) };
    }
    SERIAL.with(|s| {
        if s.get() == 0 {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        s.get()
    })
}

/// A [`LocalHost`] with the thread it belongs to.
struct Local<H> {
    owner: u64,
    host: std::mem::ManuallyDrop<H>,
}

// SAFETY: `host` is only ever touched on the thread whose serial is `owner`:
// `dispatch_local` calls it only after checking the caller's serial, and
// `Drop` drops it only there (elsewhere it is leaked). Other threads only
// read `owner`, a plain integer fixed at construction.
unsafe impl<H> Send for Local<H> {}
// SAFETY: as for Send.
unsafe impl<H> Sync for Local<H> {}

impl<H> Drop for Local<H> {
    fn drop(&mut self) {
        if thread_serial() == self.owner {
            // SAFETY: dropped once, here, on the host's own thread.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.host) };
        }
        // Elsewhere the host is leaked: dropping it there could race with
        // its own thread (an `Rc`'s count is not atomic).
    }
}

/// What to do when the host fails a call that came from native code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum FailurePolicy {
    /// Zeroed result to the native caller; the error kept for the host.
    #[default]
    Report,
    /// Print the error to stderr and abort the process.
    Abort,
}

/// The dispatcher an entry point calls, with its context and policy.
#[derive(Clone)]
pub struct Dispatcher {
    pub(crate) dispatch: RawDispatch,
    pub(crate) ctx: *mut c_void,
    pub(crate) policy: FailurePolicy,
    _keep: Option<Arc<dyn Any + Send + Sync>>,
}

// SAFETY: `ctx` is an `Arc<H: Host>` (Send + Sync) or an `Arc<Local<H>>`
// (whose host is only touched on its own thread, see `Local`), either kept
// alive by `_keep`, or a raw context whose thread-safety the caller of
// `from_raw` vouched for.
unsafe impl Send for Dispatcher {}
// SAFETY: as for Send; the dispatcher is only ever read.
unsafe impl Sync for Dispatcher {}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("ctx", &self.ctx)
            .field("policy", &self.policy)
            .finish()
    }
}

impl Dispatcher {
    /// A dispatcher that runs `host`, catching its panics.
    pub fn from_host<H: Host>(host: Arc<H>, policy: FailurePolicy) -> Dispatcher {
        let ctx = Arc::as_ptr(&host) as *mut c_void;
        Dispatcher {
            dispatch: dispatch_host::<H>,
            ctx,
            policy,
            _keep: Some(host),
        }
    }

    /// A dispatcher for a host that is not `Send`/`Sync` (an `Rc<RefCell<..>>`
    /// interpreter), owned by the calling thread. A call through an entry
    /// point bound with it runs `host` when it is made on this thread; from
    /// any other thread it does not run, and the call fails with
    /// [`STATUS_WRONG_THREAD`] ([`EntryError::WrongThread`]) under `policy`:
    /// a zeroed result and the failure kept for the calling thread
    /// (`Report`), or an abort (`Abort`).
    ///
    /// The host is dropped when the last entry point and dispatcher that
    /// hold it are gone, if that happens on its thread; if the last one is
    /// dropped on another thread, the host is leaked instead (never dropped
    /// there).
    pub fn from_local_host<H: LocalHost>(host: H, policy: FailurePolicy) -> Dispatcher {
        let local = Arc::new(Local {
            owner: thread_serial(),
            host: std::mem::ManuallyDrop::new(host),
        });
        Dispatcher {
            dispatch: dispatch_local::<H>,
            ctx: Arc::as_ptr(&local) as *mut c_void,
            policy,
            _keep: Some(local),
        }
    }

    /// A dispatcher from a raw function and context.
    ///
    /// # Safety
    /// `dispatch` must follow [`RawDispatch`]'s contract (never unwind), and
    /// `ctx` must stay valid, and be usable from any thread that calls a bound
    /// entry point, for as long as any entry point made with this dispatcher exists.
    pub unsafe fn from_raw(
        dispatch: RawDispatch,
        ctx: *mut c_void,
        policy: FailurePolicy,
    ) -> Dispatcher {
        Dispatcher {
            dispatch,
            ctx,
            policy,
            _keep: None,
        }
    }

    /// What keeps the context alive (the host of [`Dispatcher::from_host`]),
    /// for a binding that keeps the dispatch function, context and policy
    /// elsewhere.
    #[cfg(tierbridge_codegen)]
    pub(crate) fn into_keep(self) -> Option<Arc<dyn Any + Send + Sync>> {
        self._keep
    }

    /// The policy.
    pub fn policy(&self) -> FailurePolicy {
        self.policy
    }
}

/// A failure of a host call made from native code, kept for the host.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The host returned an error.
    #[error("host function {func} failed: {error}")]
    Host {
        /// The bound function id.
        func: u64,
        /// The error.
        error: HostError,
    },
    /// The host panicked.
    #[error("host function {func} panicked: {message}")]
    Panic {
        /// The bound function id.
        func: u64,
        /// The panic message, when it was a string.
        message: String,
    },
    /// A host bound with [`Dispatcher::from_local_host`] was called from a
    /// thread other than its own; it did not run.
    #[error("host function {func} belongs to another thread; a call from this one was refused")]
    WrongThread {
        /// The bound function id.
        func: u64,
    },
    /// A raw dispatcher returned a failure status.
    #[error("host function {func} returned status {status}")]
    Status {
        /// The bound function id.
        func: u64,
        /// The status.
        status: u32,
    },
    /// The thread's native stack was at its limit ([`crate::stack`]): a call
    /// from native code into host function `func` (or, for `None`, a call
    /// compiled code guarded with [`call_guard_begin`]) was not made.
    #[error("{}: {error}", match func {
        Some(f) => format!("no stack left to call host function {f}"),
        None => "no stack left for a call from compiled code".to_owned(),
    })]
    StackExhausted {
        /// The bound function id, when an entry point was called.
        func: Option<u64>,
        /// How much was left.
        error: crate::stack::StackExhausted,
    },
}

impl EntryError {
    fn status(&self) -> u32 {
        match self {
            EntryError::Host { .. } => STATUS_ERROR,
            EntryError::Panic { .. } => STATUS_PANIC,
            EntryError::WrongThread { .. } => STATUS_WRONG_THREAD,
            EntryError::Status { status, .. } => *status,
            EntryError::StackExhausted { .. } => STATUS_STACK_EXHAUSTED,
        }
    }
}

thread_local! {
    /// The failure `HAS_PENDING` speaks of; when that flag is false, whatever
    /// is left here is stale (never reported, replaced by the next failure).
    static PENDING: RefCell<Option<EntryError>> = const { RefCell::new(None) };
    /// Whether `PENDING` holds a failure the host has not taken and no exit
    /// call has begun since: an exit call makes an older failure stale with
    /// one store, and checks for its own with one load.
    static HAS_PENDING: Cell<bool> = const { Cell::new(false) };
}

/// Takes the failure of the latest failed entry call on this thread, if any.
pub fn take_entry_error() -> Option<EntryError> {
    if !HAS_PENDING.with(Cell::get) {
        return None;
    }
    HAS_PENDING.with(|h| h.set(false));
    PENDING
        .try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.take()))
        .ok()
        .flatten()
}

/// Makes a failure nobody took stale, as a new exit call begins (one store:
/// the stale value is replaced by the next failure, or freed when taken).
#[inline(always)]
pub(crate) fn clear_entry_error() {
    HAS_PENDING.with(|h| h.set(false));
}

/// Whether a failed entry call left a failure nobody took yet (one load).
#[inline(always)]
pub(crate) fn entry_failure_pending() -> bool {
    HAS_PENDING.with(Cell::get)
}

/// Records a failure for the host, as a failed entry call does (the first one
/// wins until it is taken).
pub(crate) fn record_failure(e: EntryError) {
    // Keep the first failure: later ones are usually its consequences.
    if HAS_PENDING.with(Cell::get) {
        return;
    }
    // Pending even when the error itself cannot be kept (the thread's locals
    // are being destroyed): the exit call still learns that a callback failed.
    HAS_PENDING.with(|h| h.set(true));
    let _ = PENDING.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            // A stale failure is replaced.
            *p = Some(e);
        }
    });
}

/// For native code: the status of this thread's pending entry failure
/// (`STATUS_OK` when none). Hand its address to C as a function pointer.
pub extern "C" fn pending_entry_status() -> u32 {
    if !HAS_PENDING.with(Cell::get) {
        return STATUS_OK;
    }
    PENDING
        .try_with(|p| {
            p.try_borrow()
                .ok()
                .and_then(|p| p.as_ref().map(EntryError::status))
        })
        .ok()
        .flatten()
        // A failure that could not be kept is still a failure.
        .unwrap_or(STATUS_ERROR)
}

/// For compiled code around each call it makes to code that may fail (an
/// interpreted function through its cell, a C function that calls back):
/// before the call, `call_guard_begin()` notes whether a failure was already
/// pending on this thread and clears the flag; after it,
/// `call_guard_end(before)` returns 1 if the call left a failure pending
/// (compiled code should then stop as the interpreter would, and the
/// failure reaches the exit call that led into it), else 0, putting back
/// the earlier pending state.
///
/// `call_guard_begin` also checks the thread's native stack
/// ([`crate::stack`]): at the limit, it records
/// [`EntryError::StackExhausted`] and returns [`CALL_GUARD_NO_STACK`]; the
/// call must then not be made (compiled code leaves as after a failed
/// callee). So recursion through compiled code ends in the same typed
/// failure as recursion in the interpreter.
pub extern "C" fn call_guard_begin() -> u32 {
    if let Err(error) = crate::stack::check(0) {
        return no_stack_for_call(error);
    }
    let was = HAS_PENDING.with(Cell::get);
    HAS_PENDING.with(|h| h.set(false));
    u32::from(was)
}

/// See [`call_guard_begin`].
pub extern "C" fn call_guard_end(before: u32) -> u32 {
    if HAS_PENDING.with(Cell::get) {
        return 1;
    }
    if before != 0 {
        HAS_PENDING.with(|h| h.set(true));
    }
    0
}

/// Called by every backend after the dispatcher returned `status` for `func`.
/// Under `Report` records the failure (if the dispatcher did not already) and
/// zeroes `ret`; under `Abort` never returns.
pub(crate) fn after_dispatch(status: u32, func: u64, policy: FailurePolicy, ret: &mut [u64]) {
    if status == STATUS_OK {
        return;
    }
    match policy {
        FailurePolicy::Report => {
            // Kept only if the dispatcher recorded none (the first failure wins).
            record_failure(EntryError::Status { func, status });
            ret.fill(0);
        }
        FailurePolicy::Abort => {
            let what = take_entry_error().unwrap_or(EntryError::Status { func, status });
            eprintln!("tierbridge: aborting (FailurePolicy::Abort): {what}");
            std::process::abort();
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic payload that is not a string".to_owned()
    }
}

/// # Safety
/// `binding.ctx` is the `Arc<H>` pointer of a live [`Dispatcher::from_host`],
/// and the slot pointers are valid for the binding's counts (ABI.md, "Host
/// contract"); a non-null `va` points to a cursor filled for this call.
unsafe extern "C" fn dispatch_host<H: Host>(
    binding: *const RawBinding,
    args: *const u64,
    ret: *mut u64,
    va: *mut RawVaList,
) -> u32 {
    // SAFETY: by this function's contract.
    let b = unsafe { &*binding };
    // SAFETY: as above.
    let host = unsafe { &*(b.ctx as *const H) };
    // SAFETY: forwarded contract.
    unsafe { run_host(b, args, ret, va, |call| host.call(call)) }
}

/// [`RawDispatch`] for a [`Local`] host: the host runs only on its thread.
///
/// # Safety
/// As `dispatch_host`, with `binding.ctx` the `Local<H>` of a live
/// [`Dispatcher::from_local_host`].
unsafe extern "C" fn dispatch_local<H: LocalHost>(
    binding: *const RawBinding,
    args: *const u64,
    ret: *mut u64,
    va: *mut RawVaList,
) -> u32 {
    // SAFETY: by this function's contract.
    let b = unsafe { &*binding };
    // SAFETY: as above; only `owner` is read before the thread check.
    let local = unsafe { &*(b.ctx as *const Local<H>) };
    if thread_serial() != local.owner {
        return wrong_thread(b.func);
    }
    // SAFETY: forwarded contract; this is the host's own thread.
    unsafe { run_host(b, args, ret, va, |call| local.host.call(call)) }
}

/// What both dispatchers do once they have their host: the call made of the
/// binding and the slots, its panic caught, its failure recorded.
///
/// # Safety
/// The slot pointers are valid for the binding's counts; a non-null `va`
/// points to a cursor filled for this call.
#[inline(always)]
unsafe fn run_host(
    b: &RawBinding,
    args: *const u64,
    ret: *mut u64,
    va: *mut RawVaList,
    host: impl FnOnce(EntryCall<'_>) -> Result<(), HostError>,
) -> u32 {
    if crate::stack::maybe_exhausted() {
        // Out of line, so the common path keeps nothing live across it.
        // SAFETY: forwarded contract.
        return unsafe { run_host_near_limit(b, args, ret, va, host) };
    }
    // SAFETY: forwarded contract.
    unsafe { run_host_now(b, args, ret, va, host) }
}

/// `run_host` when the stack may be at its limit: refused if it is, run
/// otherwise.
///
/// # Safety
/// As `run_host`.
#[cold]
#[inline(never)]
unsafe fn run_host_near_limit(
    b: &RawBinding,
    args: *const u64,
    ret: *mut u64,
    va: *mut RawVaList,
    host: impl FnOnce(EntryCall<'_>) -> Result<(), HostError>,
) -> u32 {
    if let Err(error) = crate::stack::check(0) {
        return no_stack_for_entry(b.func, error);
    }
    // SAFETY: forwarded contract.
    unsafe { run_host_now(b, args, ret, va, host) }
}

/// `run_host` once the stack is known to have room.
///
/// # Safety
/// As `run_host`.
#[inline(always)]
unsafe fn run_host_now(
    b: &RawBinding,
    args: *const u64,
    ret: *mut u64,
    va: *mut RawVaList,
    host: impl FnOnce(EntryCall<'_>) -> Result<(), HostError>,
) -> u32 {
    // SAFETY: backends pass non-null slot pointers valid for the counts.
    let args = unsafe { std::slice::from_raw_parts(args, b.nargs as usize) };
    // SAFETY: as above; the result slots are not aliased during the call.
    let ret = unsafe { std::slice::from_raw_parts_mut(ret, b.nret as usize) };
    // SAFETY: a non-null `va` points to a cursor filled by the backend for this call.
    let varargs = unsafe { va.as_mut() }.map(VaArgs::new);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        host(EntryCall {
            func: FuncId(b.func),
            args,
            ret,
            varargs,
        })
    }));
    match outcome {
        Ok(Ok(())) => STATUS_OK,
        // Out of line: the success path keeps nothing alive across the host
        // call but the binding.
        Ok(Err(error)) => host_failed(b.func, error),
        Err(payload) => host_panicked(b.func, payload),
    }
}

/// Runs `call` as a dispatcher runs a host: its panic caught, its failure
/// recorded for the host and handled by `policy` as an entry call's is
/// ([`after_dispatch`]). For native code that calls into Rust through a
/// path of its own (the tier layer's deoptimization helper).
pub(crate) fn guarded_call(
    func: u64,
    policy: FailurePolicy,
    ret: &mut [u64],
    call: impl FnOnce(&mut [u64]) -> Result<(), HostError>,
) -> u32 {
    let status = match catch_unwind(AssertUnwindSafe(|| call(&mut *ret))) {
        Ok(Ok(())) => STATUS_OK,
        Ok(Err(error)) => host_failed(func, error),
        Err(payload) => host_panicked(func, payload),
    };
    after_dispatch(status, func, policy, ret);
    status
}

/// Records that compiled code had no stack left for a call.
#[cold]
#[inline(never)]
fn no_stack_for_call(error: crate::stack::StackExhausted) -> u32 {
    // The failure compiled code leaves with is this one, not one that was
    // pending before (which the guard would have put back after the call).
    HAS_PENDING.with(|h| h.set(false));
    record_failure(EntryError::StackExhausted { func: None, error });
    CALL_GUARD_NO_STACK
}

/// Records an entry refused for want of stack; returns its status.
#[cold]
#[inline(never)]
fn no_stack_for_entry(func: u64, error: crate::stack::StackExhausted) -> u32 {
    record_failure(EntryError::StackExhausted {
        func: Some(func),
        error,
    });
    STATUS_STACK_EXHAUSTED
}

/// Records a call refused for being on the wrong thread; returns its status.
#[cold]
#[inline(never)]
fn wrong_thread(func: u64) -> u32 {
    record_failure(EntryError::WrongThread { func });
    STATUS_WRONG_THREAD
}

/// Records a host error; returns its status.
#[cold]
#[inline(never)]
fn host_failed(func: u64, error: HostError) -> u32 {
    record_failure(EntryError::Host { func, error });
    STATUS_ERROR
}

/// Records a host panic; returns its status.
#[cold]
#[inline(never)]
fn host_panicked(func: u64, payload: Box<dyn Any + Send>) -> u32 {
    record_failure(EntryError::Panic {
        func,
        message: panic_message(&*payload),
    });
    // Dropping a panic payload can itself panic; never let that unwind.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    STATUS_PANIC
}

/// How far past the register arguments a [`VaArgs`] cursor reads the caller's
/// stack before it refuses (in 8-byte slots).
pub const MAX_VA_STACK_SLOTS: u32 = 64;

/// The state of a variadic-argument cursor, filled by the entry side. Read by
/// generated code: its layout is a contract (ABI.md, "Variadic entry").
///
/// SysV: `gp[gp_next..6]` and `fp[fp_next..8]` are the argument registers the
/// fixed parameters left unused, `overflow` the first variadic stack slot.
/// Win64: `gp_next` is the next argument position, `gp[0..4]` the first four
/// positions' integer registers, `overflow` the address of position 4.
#[repr(C)]
#[derive(Debug)]
pub struct RawVaList {
    /// The convention (`CallConv as u32`).
    pub conv: u32,
    /// Next general-purpose register (SysV) or argument position (Win64).
    pub gp_next: u32,
    /// Next vector register (SysV only).
    pub fp_next: u32,
    /// Stack slots read so far.
    pub stack_read: u32,
    /// Integer argument registers.
    pub gp: [u64; 6],
    /// Vector argument registers (low 64 bits).
    pub fp: [u64; 8],
    /// See the type's docs.
    pub overflow: *const u8,
}

impl RawVaList {
    pub(crate) fn empty(conv: CallConv) -> RawVaList {
        RawVaList {
            conv: conv as u32,
            gp_next: 0,
            fp_next: 0,
            stack_read: 0,
            gp: [0; 6],
            fp: [0; 8],
            overflow: std::ptr::null(),
        }
    }
}

/// A cursor over the variadic arguments of a call, read in order the way C's
/// `va_arg` reads them. The caller's actual types are not known: reading a type
/// other than the one passed gives meaningless bits, and reading more
/// arguments than were passed reads the caller's stack above them (as C's
/// `va_arg` would: mapped memory, meaningless values — an AddressSanitizer
/// build reports it as a stack-buffer underflow) until [`MAX_VA_STACK_SLOTS`]
/// stack slots, after which it gives `None`.
///
/// Aggregates passed as variadic arguments are not readable yet.
pub struct VaArgs<'a> {
    raw: &'a mut RawVaList,
}

impl<'a> VaArgs<'a> {
    pub(crate) fn new(raw: &'a mut RawVaList) -> VaArgs<'a> {
        VaArgs { raw }
    }

    fn stack_slot(&mut self) -> Option<u64> {
        if self.raw.stack_read >= MAX_VA_STACK_SLOTS || self.raw.overflow.is_null() {
            return None;
        }
        // SAFETY: `overflow` points into the caller's stack at the first variadic
        // stack slot; the caller's frames (and the thread's stack above them) stay
        // mapped during the call, and reads are bounded by MAX_VA_STACK_SLOTS.
        let v = unsafe {
            self.raw
                .overflow
                .add(8 * self.raw.stack_read as usize)
                .cast::<u64>()
                .read_unaligned()
        };
        self.raw.stack_read += 1;
        Some(v)
    }

    fn next_int_bits(&mut self) -> Option<u64> {
        if self.raw.conv == CallConv::Win64 as u32 {
            return self.next_win64_bits();
        }
        if self.raw.gp_next < 6 {
            self.raw.gp_next += 1;
            return Some(self.raw.gp[self.raw.gp_next as usize - 1]);
        }
        self.stack_slot()
    }

    fn next_win64_bits(&mut self) -> Option<u64> {
        let pos = self.raw.gp_next;
        if pos < 4 {
            self.raw.gp_next += 1;
            return Some(self.raw.gp[pos as usize]);
        }
        // Position p >= 4 lives at overflow + 8 * (p - 4).
        self.raw.stack_read = pos - 4;
        let v = self.stack_slot()?;
        self.raw.gp_next += 1;
        Some(v)
    }

    /// The next argument as an `i64` / `long long`.
    pub fn next_i64(&mut self) -> Option<i64> {
        self.next_int_bits().map(|v| v as i64)
    }

    /// The next argument as a `u64`.
    pub fn next_u64(&mut self) -> Option<u64> {
        self.next_int_bits()
    }

    /// The next argument as an `int` (also what `char`, `short` and `bool` promote to).
    pub fn next_i32(&mut self) -> Option<i32> {
        self.next_int_bits().map(|v| v as i32)
    }

    /// The next argument as an `unsigned int`.
    pub fn next_u32(&mut self) -> Option<u32> {
        self.next_int_bits().map(|v| v as u32)
    }

    /// The next argument as a pointer.
    pub fn next_ptr(&mut self) -> Option<*const c_void> {
        self.next_int_bits().map(|v| v as usize as *const c_void)
    }

    /// The next argument as a `double` (also what `float` promotes to).
    pub fn next_f64(&mut self) -> Option<f64> {
        if self.raw.conv == CallConv::Win64 as u32 {
            // Win64 passes a variadic double in the integer register too.
            return self.next_win64_bits().map(f64::from_bits);
        }
        if self.raw.fp_next < 8 {
            self.raw.fp_next += 1;
            return Some(f64::from_bits(self.raw.fp[self.raw.fp_next as usize - 1]));
        }
        self.stack_slot().map(f64::from_bits)
    }
}

/// Non-null slot pointer for a possibly empty slice.
pub(crate) fn slot_ptr(s: &[u64]) -> *const u64 {
    if s.is_empty() {
        NonNull::dangling().as_ptr()
    } else {
        s.as_ptr()
    }
}

/// Non-null mutable slot pointer for a possibly empty slice.
pub(crate) fn slot_ptr_mut(s: &mut [u64]) -> *mut u64 {
    if s.is_empty() {
        NonNull::dangling().as_ptr()
    } else {
        s.as_mut_ptr()
    }
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    /// Generated code will read these structs at fixed offsets (ABI.md,
    /// "Host contract"): the offsets are a contract, checked here.
    #[test]
    fn repr_c_layouts_match_abi_md() {
        assert_eq!(offset_of!(RawBinding, ctx), 0);
        assert_eq!(offset_of!(RawBinding, func), 8);
        assert_eq!(offset_of!(RawBinding, nargs), 16);
        assert_eq!(offset_of!(RawBinding, nret), 20);
        assert_eq!(size_of::<RawBinding>(), 24);
        assert_eq!(offset_of!(RawVaList, conv), 0);
        assert_eq!(offset_of!(RawVaList, gp_next), 4);
        assert_eq!(offset_of!(RawVaList, fp_next), 8);
        assert_eq!(offset_of!(RawVaList, stack_read), 12);
        assert_eq!(offset_of!(RawVaList, gp), 16);
        assert_eq!(offset_of!(RawVaList, fp), 64);
        assert_eq!(offset_of!(RawVaList, overflow), 128);
        assert_eq!(size_of::<RawVaList>(), 136);
    }

    #[test]
    fn a_win64_cursor_reads_positions_in_order_across_registers_and_stack() {
        let stack = [10u64, 11, 12];
        let mut raw = RawVaList::empty(CallConv::Win64);
        raw.gp = [100, 101, 102, 103, 0, 0];
        raw.gp_next = 2; // two fixed parameters
        raw.overflow = stack.as_ptr().cast();
        let mut va = VaArgs::new(&mut raw);
        assert_eq!(va.next_u64(), Some(102));
        assert_eq!(va.next_f64().map(f64::to_bits), Some(103));
        assert_eq!(va.next_i64(), Some(10));
        assert_eq!(va.next_u32(), Some(11));
        assert_eq!(va.next_ptr(), Some(12 as *const c_void));
    }

    #[test]
    fn a_sysv_cursor_reads_integers_and_doubles_from_their_own_registers_then_the_stack() {
        let stack = [7u64, 2.5f64.to_bits()];
        let mut raw = RawVaList::empty(CallConv::SysV);
        raw.gp = [0, 0, 0, 0, 0, 55];
        raw.fp = [0, 0, 0, 0, 0, 0, 0, 1.5f64.to_bits()];
        raw.gp_next = 5;
        raw.fp_next = 7;
        raw.overflow = stack.as_ptr().cast();
        let mut va = VaArgs::new(&mut raw);
        assert_eq!(va.next_f64(), Some(1.5));
        assert_eq!(va.next_i32(), Some(55));
        assert_eq!(va.next_i64(), Some(7));
        assert_eq!(va.next_f64(), Some(2.5));
    }
}
