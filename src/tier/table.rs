//! The tier table: entry cells, hotness, compilation, OSR and deoptimization
//! for the functions of one interpreter instance.

use std::ffi::c_void;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::frame::{FrameState, OSR_COMPLETED, OSR_DEOPT, OsrEntryFn, RawFrame};
use super::{Code, CodeMemory, CompileError, Result, TierConfig, TierError, TierStats};
use crate::abi::{CallConv, Signature};
use crate::host::{Dispatcher, EntryCall, FailurePolicy, FuncId, Host, HostError};
use crate::table::IdTable;
use crate::thunks::{Bridge, EntryPoint, ExitStub, ThunkError};

/// The interpreter a [`TierTable`] serves: it runs functions from their
/// start (calls from C and from compiled code arrive here while a function
/// is interpreted) and resumes them where compiled code deoptimized.
///
/// An interpreter that owns its table holds it, and the table holds this
/// handle: give the table a [`Weak`] (implemented below) to break the cycle.
pub trait Interpreter: Send + Sync + 'static {
    /// Runs `func` from its start with argument slots `args`, writing its
    /// result slots `ret` (ABI.md, "Slots").
    ///
    /// # Errors
    /// Any error: it travels as an entry point's does (the table's
    /// [`FailurePolicy`]).
    fn interpret(&self, func: FuncId, args: &[u64], ret: &mut [u64]) -> Result<(), HostError>;

    /// Continues `func` at `frame.pc()` with `frame`'s locals and operand
    /// stack, to the function's end, writing its result slots `ret`:
    /// compiled code deoptimized there, and this result becomes its result.
    ///
    /// # Errors
    /// As [`Interpreter::interpret`].
    fn resume(&self, func: FuncId, frame: &FrameState, ret: &mut [u64]) -> Result<(), HostError>;
}

impl<T: Interpreter + ?Sized> Interpreter for Weak<T>
where
    Weak<T>: Send + Sync,
{
    fn interpret(&self, func: FuncId, args: &[u64], ret: &mut [u64]) -> Result<(), HostError> {
        self.upgrade()
            .ok_or("the interpreter is gone")?
            .interpret(func, args, ret)
    }

    fn resume(&self, func: FuncId, frame: &FrameState, ret: &mut [u64]) -> Result<(), HostError> {
        self.upgrade()
            .ok_or("the interpreter is gone")?
            .resume(func, frame, ret)
    }
}

/// Why a [`Compiler`] is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompileReason {
    /// The function was called [`TierConfig::call_threshold`] times.
    Calls,
    /// A loop at this header took [`TierConfig::loop_threshold`] back
    /// edges; the running frame waits for an OSR entry there. Give every
    /// OSR entry you can: after a successful compilation, loops without one
    /// are not offered again until the function is reverted.
    Loop {
        /// The loop header.
        header: u32,
    },
    /// [`TierTable::compile_now`].
    Explicit,
}

/// What a [`Compiler`] is given.
pub struct CompileRequest<'a> {
    /// The function.
    pub func: FuncId,
    /// Its name.
    pub name: &'a str,
    /// Its signature (compiled code takes it in [`CompileRequest::conv`]).
    pub signature: &'a Signature,
    /// The convention of the table's functions.
    pub conv: CallConv,
    /// Why now.
    pub reason: CompileReason,
    /// Its declared loop headers (where OSR entries may be given).
    pub loop_headers: &'a [u32],
    /// The table's settings ([`TierConfig::force_deopt`] among them).
    pub config: TierConfig,
    /// Where to place the code.
    pub memory: &'a CodeMemory,
    /// The table: other functions' cells ([`TierTable::cell_addr`]) and
    /// native pointers, the deoptimization helper.
    pub table: &'a TierTable,
}

/// Code a [`Compiler`] made for one function.
#[derive(Debug)]
pub struct Compiled {
    /// The code (kept alive by the table once published).
    pub code: Code,
    /// Offset of the function's entry, in the function's signature and the
    /// table's convention (`None`: OSR entries only; calls stay interpreted).
    pub entry: Option<usize>,
    /// OSR entries ([`OsrEntryFn`]) by declared loop header: (header, offset).
    pub osr: Vec<(u32, usize)>,
}

/// A code generator the [`TierTable`] asks for code when a function or a
/// loop becomes hot.
///
/// # Safety
/// Code it returns must be what [`Compiled`] says: at `entry`, a function of
/// exactly the request's signature and convention that runs the function
/// (C and the interpreter call it); at each OSR offset an [`OsrEntryFn`]
/// that follows [`RawFrame`]'s contract for any frame the interpreter may
/// hand over (at most the declared `frame_slots`, which [`TierTable::osr`]
/// checks, in a buffer of at least that many). Anything else is undefined
/// behaviour the moment a caller enters it.
pub unsafe trait Compiler: Send + Sync + 'static {
    /// Compiles `request.func`.
    ///
    /// # Errors
    /// Any: the function stays interpreted, and the failure is counted
    /// ([`TierStats::compile_failures`]) and kept ([`FnStats::last_error`]).
    fn compile(&self, request: &CompileRequest<'_>) -> Result<Compiled, CompileError>;
}

/// The table's deoptimization helper, for compiled code:
/// `helper(table, func, frame)` resumes the interpreter with the frame
/// `frame` describes and writes the function's result slots to
/// `frame.ret` (which must overlap neither `frame.slots[..len]` nor the
/// frame); it returns [`STATUS_OK`](crate::host::STATUS_OK), or another
/// status when the interpreter failed (the failure is kept for the host and
/// the result slots are zero, as for an entry point under
/// [`FailurePolicy::Report`]).
pub type DeoptFn =
    unsafe extern "C" fn(table: *const c_void, func: u32, frame: *mut RawFrame) -> u32;

/// A function to add to a [`TierTable`].
#[derive(Clone, Debug)]
pub struct FnDecl {
    name: String,
    signature: Signature,
    loop_headers: Vec<u32>,
    frame_slots: u32,
}

impl FnDecl {
    /// A function `name` of `signature` (no variadic signatures).
    pub fn new(name: impl Into<String>, signature: Signature) -> FnDecl {
        FnDecl {
            name: name.into(),
            signature,
            loop_headers: Vec::new(),
            frame_slots: 0,
        }
    }

    /// Its loop headers (positions in the interpreter's own units): back
    /// edges count per header, and OSR entries are given per header.
    pub fn loop_headers(mut self, headers: impl IntoIterator<Item = u32>) -> FnDecl {
        self.loop_headers = headers.into_iter().collect();
        self.loop_headers.sort_unstable();
        self.loop_headers.dedup();
        self
    }

    /// The most slots (locals plus operand stack) a frame of it holds: the
    /// room an OSR entry is given to write a deoptimized frame into.
    pub fn frame_slots(mut self, slots: u32) -> FnDecl {
        self.frame_slots = slots;
        self
    }
}

/// A call from the interpreter ([`TierTable::call`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum TierCall {
    /// Compiled code ran the call; the result slots are written.
    Compiled,
    /// The function is interpreted: the caller runs it (the call is counted).
    Interpret,
}

/// What [`TierTable::osr`] did with a frame.
#[derive(Debug)]
#[must_use]
pub enum OsrOutcome {
    /// No OSR entry (not compiled yet, or it failed): keep interpreting.
    NotReady,
    /// The OSR entry ran the call to its end: the result slots are written;
    /// the interpreter returns them to its caller.
    Completed,
    /// The OSR entry deoptimized: the interpreter continues at the frame's
    /// position with its slots.
    Deopt(FrameState),
}

/// What one function's tiers did ([`TierTable::fn_stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FnStats {
    /// Calls counted since the function was last reverted.
    pub calls: u32,
    /// Whether its entry cell holds compiled code.
    pub compiled: bool,
    /// Compilations asked for (successful or not).
    pub compiles: u32,
    /// Deoptimizations since it was last compiled.
    pub deopts: u32,
    /// Pieces of code the table keeps alive for it.
    pub code_kept: usize,
    /// The last compile failure, if any.
    pub last_error: Option<String>,
}

/// One loop header of a function.
struct Loop {
    header: u32,
    count: AtomicU32,
    /// Its OSR entry, 0 for none.
    entry: AtomicUsize,
    /// No more compile requests for this loop (failed, refused, or a
    /// compile gave it no entry) until the function is reverted.
    off: AtomicBool,
}

/// One function of the table.
struct FnState {
    name: Box<str>,
    sig: Signature,
    /// The interpreter entry point (its code is the cell's first value),
    /// kept alive here.
    _entry: EntryPoint,
    interp_ptr: usize,
    /// The signature's exit stub: the interpreter calls compiled code with it.
    stub: ExitStub,
    loops: Box<[Loop]>,
    frame_slots: u32,
    arg_slots: usize,
    ret_slots: usize,
    calls: AtomicU32,
    compiles: AtomicU32,
    deopts: AtomicU32,
    busy: AtomicBool,
    /// No more compile requests for calls (one succeeded, failed, or was
    /// refused) until the function is reverted.
    calls_off: AtomicBool,
    /// Bumped by every revert: code compiled before it is not published.
    generation: AtomicU64,
    /// Every piece of code published for it, kept alive (ABI.md, "Tiers").
    code: Mutex<Vec<Code>>,
    last_error: Mutex<Option<String>>,
}

impl FnState {
    fn find_loop(&self, header: u32) -> Option<&Loop> {
        self.loops
            .binary_search_by_key(&header, |l| l.header)
            .ok()
            .map(|i| &self.loops[i])
    }
}

/// Why a compile request did not publish code.
enum Refusal {
    /// No code memory or no compiler.
    NoCompiler,
    /// `max_compiles` reached.
    Exhausted,
    /// Another compilation of the function is under way.
    Busy,
    /// The function was reverted while it compiled: the code was dropped
    /// (not a failure; nothing is turned off).
    Reverted,
    /// The compiler failed, or what it returned could not be published.
    Failed(TierError),
}

/// Frames of at most this many slots are handed to OSR entries from the
/// stack of [`TierTable::osr`]; larger ones from the per-thread pool.
const STACK_FRAME_SLOTS: usize = 64;

/// Functions are kept in blocks of this many, each with its cells and
/// their `jmp [cell]` stubs.
const BLOCK: usize = 64;

struct Block {
    cells: [AtomicUsize; BLOCK],
    fns: [OnceLock<FnState>; BLOCK],
    /// `jmp [cell]` stubs, 16 bytes each (none without code memory).
    jumps: Option<crate::thunks::exec::ExecCode>,
}

const JUMP_BYTES: usize = 16;

/// The host behind every entry point of a table: counts the call, then
/// hands it to the interpreter.
struct TableHost(*const TierTable);

// SAFETY: the pointer is to a `TierTable` (Send + Sync), which owns the
// entry points whose calls reach this host: it is alive whenever they can
// be called (ABI.md, "Tiers": a table outlives every call into it).
unsafe impl Send for TableHost {}
// SAFETY: as for Send; the host only reads through the pointer.
unsafe impl Sync for TableHost {}

impl Host for TableHost {
    fn call(&self, call: EntryCall<'_>) -> Result<(), HostError> {
        // SAFETY: see the Send impl: the table outlives calls into it.
        let table = unsafe { &*self.0 };
        // Only a table that counts calls looks the function up.
        if table.config.call_threshold != u32::MAX {
            let f = table.get(call.func)?;
            table.count_call(call.func, f);
        }
        table.interp.interpret(call.func, call.args, call.ret)
    }
}

/// Entry cells, hotness, compilation, OSR and deoptimization for the
/// functions of one interpreter instance (module docs; ABI.md, "Tiers").
///
/// Made with [`TierTable::new`], shared as an `Arc`. Functions are added at
/// any time ([`TierTable::add`]) and never removed; their ids are dense from
/// 0. Every method takes `&self` and may be called from any thread.
///
/// **Lifetime rule**: drop the table only when no call can be inside any of
/// its functions' code or about to enter it (their native pointers, cells
/// and code are freed with it).
pub struct TierTable {
    bridge: Arc<Bridge>,
    conv: CallConv,
    config: TierConfig,
    policy: FailurePolicy,
    memory: Option<CodeMemory>,
    interp: Arc<dyn Interpreter>,
    compiler: Option<Box<dyn Compiler>>,
    dispatcher: Dispatcher,
    blocks: IdTable<Box<Block>>,
    /// Functions added (taken under this lock while adding).
    len: Mutex<u32>,
    added: AtomicU32,
    compiled: AtomicU64,
    compile_failures: AtomicU64,
    osr_entries: AtomicU64,
    deopts: AtomicU64,
    reverts: AtomicU64,
}

impl fmt::Debug for TierTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierTable")
            .field("functions", &self.len())
            .field("conv", &self.conv)
            .field("config", &self.config)
            .field("memory", &self.memory)
            .finish()
    }
}

impl TierTable {
    /// A table whose functions take the convention `conv`, are interpreted
    /// by `interp`, and are compiled by `compiler` when `config` says. On a
    /// bridge without code generation (libffi) nothing is ever compiled: the
    /// table still counts, and every call is interpreted. Failures of calls
    /// that native code makes into the interpreter follow `policy`.
    pub fn new(
        bridge: Arc<Bridge>,
        conv: CallConv,
        config: TierConfig,
        policy: FailurePolicy,
        interp: Arc<dyn Interpreter>,
        compiler: Option<Box<dyn Compiler>>,
    ) -> Arc<TierTable> {
        let memory = CodeMemory::of(&bridge).ok();
        Arc::new_cyclic(|me: &Weak<TierTable>| {
            let host = Arc::new(TableHost(me.as_ptr()));
            TierTable {
                dispatcher: Dispatcher::from_host(host, policy),
                bridge,
                conv,
                config,
                policy,
                memory,
                interp,
                compiler,
                blocks: IdTable::default(),
                len: Mutex::new(0),
                added: AtomicU32::new(0),
                compiled: AtomicU64::new(0),
                compile_failures: AtomicU64::new(0),
                osr_entries: AtomicU64::new(0),
                deopts: AtomicU64::new(0),
                reverts: AtomicU64::new(0),
            }
        })
    }

    /// Adds a function; its id (dense from 0). Its cell starts with its
    /// interpreter entry point.
    ///
    /// # Errors
    /// [`TierError::BadDecl`] for a variadic signature;
    /// [`TierError::Thunk`] when the bridge cannot bind the signature;
    /// [`TierError::Code`] when no memory is left for its native pointer.
    pub fn add(&self, decl: FnDecl) -> Result<FuncId> {
        if decl.signature.is_variadic() {
            return Err(TierError::BadDecl {
                name: decl.name,
                reason: "a variadic function cannot be tiered".into(),
            });
        }
        let mut len = self.len.lock().unwrap_or_else(|e| e.into_inner());
        let index = *len;
        let (b, k) = (index as usize / BLOCK, index as usize % BLOCK);
        let block = match self.blocks.get(b as u32) {
            Some(block) => block,
            None => self.blocks.get_or_insert(b as u32, self.new_block()?),
        };
        let entry = self.bridge.entry_point(
            &decl.signature,
            self.conv,
            &self.dispatcher,
            u64::from(index),
        )?;
        let stub = self.bridge.exit_stub(&decl.signature, self.conv)?;
        let interp_ptr = entry.code_ptr() as usize;
        let loops = decl
            .loop_headers
            .iter()
            .map(|&header| Loop {
                header,
                count: AtomicU32::new(0),
                entry: AtomicUsize::new(0),
                off: AtomicBool::new(false),
            })
            .collect();
        let state = FnState {
            name: decl.name.into(),
            arg_slots: decl.signature.arg_slots(),
            ret_slots: decl.signature.ret_slots(),
            sig: decl.signature,
            _entry: entry,
            interp_ptr,
            stub,
            loops,
            frame_slots: decl.frame_slots,
            calls: AtomicU32::new(0),
            compiles: AtomicU32::new(0),
            deopts: AtomicU32::new(0),
            busy: AtomicBool::new(false),
            calls_off: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            code: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
        };
        block.cells[k].store(interp_ptr, Ordering::Release);
        if block.fns[k].set(state).is_err() {
            return Err(TierError::Internal("a function slot was set twice".into()));
        }
        *len += 1;
        self.added.store(*len, Ordering::Release);
        Ok(FuncId(u64::from(index)))
    }

    fn new_block(&self) -> Result<Box<Block>> {
        #[cfg_attr(not(tierbridge_codegen), expect(unused_mut))]
        let mut block = Box::new(Block {
            cells: std::array::from_fn(|_| AtomicUsize::new(0)),
            fns: std::array::from_fn(|_| OnceLock::new()),
            jumps: None,
        });
        #[cfg(tierbridge_codegen)]
        if let Some(mem) = &self.memory {
            let cells: Vec<usize> = block.cells.iter().map(|c| c.as_ptr() as usize).collect();
            let code = crate::thunks::x64::emit_cell_jumps(&cells);
            debug_assert_eq!(code.len(), JUMP_BYTES * BLOCK);
            let leaf = crate::visibility::Unwind::Leaf;
            let mut jumps = mem
                .exec()
                .install(&code, &leaf)
                .map_err(|e| TierError::Code(e.to_string()))?;
            // Each cell's stub only jumps: the return address stays at [rsp].
            jumps.publish("tierbridge cell jumps", &leaf);
            block.jumps = Some(jumps);
        }
        Ok(block)
    }

    /// Functions added so far.
    pub fn len(&self) -> usize {
        self.added.load(Ordering::Acquire) as usize
    }

    /// True before the first [`TierTable::add`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn slot(&self, f: FuncId) -> Option<(&Block, usize)> {
        let i = u32::try_from(f.0).ok()?;
        let block = self.blocks.get(i / BLOCK as u32)?;
        Some((block, i as usize % BLOCK))
    }

    /// A function's state, its block and its index there: one lookup.
    #[inline]
    fn entry(&self, f: FuncId) -> Result<(&FnState, &Block, usize)> {
        let (b, k) = self.slot(f).ok_or_else(|| unknown(f))?;
        let state = b.fns[k].get().ok_or_else(|| unknown(f))?;
        Ok((state, b, k))
    }

    #[inline]
    fn get(&self, f: FuncId) -> Result<&FnState> {
        self.entry(f).map(|(state, ..)| state)
    }

    /// A function's state and its entry cell.
    #[inline]
    fn with_cell(&self, f: FuncId) -> Result<(&FnState, &AtomicUsize)> {
        self.entry(f).map(|(state, b, k)| (state, &b.cells[k]))
    }

    /// The bridge.
    pub fn bridge(&self) -> &Arc<Bridge> {
        &self.bridge
    }

    /// The convention of the table's functions.
    pub fn conv(&self) -> CallConv {
        self.conv
    }

    /// The settings.
    pub fn config(&self) -> TierConfig {
        self.config
    }

    /// The executable memory compiled code goes into (`None` on libffi:
    /// then nothing is compiled).
    pub fn memory(&self) -> Option<&CodeMemory> {
        self.memory.as_ref()
    }

    /// True when functions can be compiled here: code memory and a compiler.
    pub fn can_compile(&self) -> bool {
        self.memory.is_some() && self.compiler.is_some()
    }

    /// The function's name.
    ///
    /// # Errors
    /// [`TierError::UnknownFunction`].
    pub fn name(&self, f: FuncId) -> Result<&str> {
        Ok(&self.get(f)?.name)
    }

    /// The function's signature.
    ///
    /// # Errors
    /// [`TierError::UnknownFunction`].
    pub fn signature(&self, f: FuncId) -> Result<&Signature> {
        Ok(&self.get(f)?.sig)
    }

    /// The exit stub of the function's signature (what the table calls
    /// compiled code with; compiled code may call it too).
    ///
    /// # Errors
    /// [`TierError::UnknownFunction`].
    pub fn exit_stub(&self, f: FuncId) -> Result<&ExitStub> {
        Ok(&self.get(f)?.stub)
    }

    /// The function's stable native pointer, in the table's convention:
    /// hand it to C. It jumps through the cell (`jmp [cell]`), so it always
    /// reaches the current code; on libffi it is the interpreter entry
    /// point. Valid while the table lives.
    ///
    /// # Errors
    /// [`TierError::UnknownFunction`].
    pub fn native_ptr(&self, f: FuncId) -> Result<*const c_void> {
        let (state, b, k) = self.entry(f)?;
        Ok(match &b.jumps {
            Some(j) => j.addr().as_ptr().wrapping_add(JUMP_BYTES * k).cast(),
            None => state.interp_ptr as *const c_void,
        })
    }

    /// The address of the function's entry cell: 8 bytes holding the code
    /// address to call (read it with an acquire or plain load, then call it
    /// in the function's signature). For compiled code that calls the
    /// function. Valid while the table lives.
    ///
    /// # Errors
    /// [`TierError::UnknownFunction`].
    pub fn cell_addr(&self, f: FuncId) -> Result<*const c_void> {
        Ok(self.with_cell(f)?.1.as_ptr() as *const c_void)
    }

    /// The code the cell holds now.
    ///
    /// # Errors
    /// [`TierError::UnknownFunction`].
    pub fn current(&self, f: FuncId) -> Result<*const c_void> {
        Ok(self.with_cell(f)?.1.load(Ordering::Acquire) as *const c_void)
    }

    /// The function's interpreter entry point (the cell's first value).
    ///
    /// # Errors
    /// [`TierError::UnknownFunction`].
    pub fn interpreter_entry(&self, f: FuncId) -> Result<*const c_void> {
        Ok(self.get(f)?.interp_ptr as *const c_void)
    }

    /// Whether the cell holds compiled code.
    ///
    /// # Errors
    /// [`TierError::UnknownFunction`].
    pub fn is_compiled(&self, f: FuncId) -> Result<bool> {
        let (state, cell) = self.with_cell(f)?;
        Ok(cell.load(Ordering::Acquire) != state.interp_ptr)
    }

    /// The deoptimization helper and its first argument, for compiled code
    /// to embed (see [`DeoptFn`]).
    pub fn deopt_helper(&self) -> (DeoptFn, *const c_void) {
        (deopt_helper, self as *const TierTable as *const c_void)
    }

    /// A call of `f` from the interpreter: runs its compiled code through
    /// the signature's exit stub when the cell holds some, else counts the
    /// call (which may compile the function, for later calls) and says
    /// [`TierCall::Interpret`].
    ///
    /// # Errors
    /// [`TierError::UnknownFunction`]; [`TierError::Thunk`] for wrong slot
    /// counts (in either tier); [`TierError::Failed`] when compiled code, or the interpreter
    /// it called or deoptimized into, failed (the error it reported).
    #[inline]
    pub fn call(&self, f: FuncId, args: &[u64], ret: &mut [u64]) -> Result<TierCall> {
        let (state, b, k) = self.entry(f)?;
        if args.len() != state.arg_slots || ret.len() < state.ret_slots {
            return Err(bad_call(state, args.len(), ret.len()));
        }
        let code = b.cells[k].load(Ordering::Acquire);
        if code != state.interp_ptr {
            // SAFETY: the cell holds code published for this function, which
            // has its signature and the table's convention (`publish`'s and
            // `Compiler`'s contracts), and is kept alive by the table.
            unsafe { state.stub.call(code as *const c_void, args, ret) }?;
            return Ok(TierCall::Compiled);
        }
        self.count_call(f, state);
        Ok(TierCall::Interpret)
    }

    /// Counts a call of an interpreted function; compiles it once hot.
    #[inline]
    fn count_call(&self, f: FuncId, state: &FnState) {
        if self.config.call_threshold == u32::MAX {
            return;
        }
        // Not a read-modify-write: a count lost to a race only delays
        // tier-up, and a plain store costs no locked instruction per call.
        let n = state.calls.load(Ordering::Relaxed).saturating_add(1);
        state.calls.store(n, Ordering::Relaxed);
        if n >= self.config.call_threshold && !state.calls_off.load(Ordering::Relaxed) {
            self.hot(f, state, CompileReason::Calls);
        }
    }

    #[cold]
    #[inline(never)]
    fn hot(&self, f: FuncId, state: &FnState, reason: CompileReason) {
        let _ = self.try_compile(f, state, reason);
    }

    /// Counts a back edge of `f` to `header`; true when the interpreter
    /// should offer its frame to [`TierTable::osr`] now (the loop is hot, and
    /// it has an OSR entry or may get one). Cheap: a lookup among the
    /// function's headers and a counter.
    #[inline]
    pub fn back_edge(&self, f: FuncId, header: u32) -> bool {
        if self.config.loop_threshold == u32::MAX {
            return false;
        }
        let Ok(state) = self.get(f) else {
            return false;
        };
        let Some(l) = state.find_loop(header) else {
            return false;
        };
        let n = l.count.load(Ordering::Relaxed).saturating_add(1);
        l.count.store(n, Ordering::Relaxed);
        n >= self.config.loop_threshold
            && (l.entry.load(Ordering::Acquire) != 0
                || (self.can_compile() && !l.off.load(Ordering::Relaxed)))
    }

    /// On-stack replacement: moves an interpreter frame of `f` at loop
    /// header `header` (its `locals`, then its operand `stack`) into the
    /// loop's OSR entry, compiling it first if there is none yet. The
    /// result slots go to `ret` when the call completes in compiled code.
    ///
    /// # Errors
    /// [`TierError::UnknownFunction`]; [`TierError::BadFrame`] when `ret`
    /// is too short or compiled code left a frame that does not fit;
    /// [`TierError::Failed`] when compiled code (or the interpreter it
    /// called) failed.
    pub fn osr(
        &self,
        f: FuncId,
        header: u32,
        locals: &[u64],
        stack: &[u64],
        ret: &mut [u64],
    ) -> Result<OsrOutcome> {
        let state = self.get(f)?;
        if ret.len() < state.ret_slots {
            return Err(TierError::BadFrame {
                func: f.0,
                reason: format!(
                    "room for {} result slots, {} needed",
                    ret.len(),
                    state.ret_slots
                ),
            });
        }
        let Some(l) = state.find_loop(header) else {
            return Ok(OsrOutcome::NotReady);
        };
        let mut entry = l.entry.load(Ordering::Acquire);
        if entry == 0 && !l.off.load(Ordering::Relaxed) {
            let _ = self.try_compile(f, state, CompileReason::Loop { header });
            entry = l.entry.load(Ordering::Acquire);
        }
        if entry == 0 {
            return Ok(OsrOutcome::NotReady);
        }
        let len = locals.len() + stack.len();
        if state.frame_slots != 0 && len > state.frame_slots as usize {
            return Err(TierError::BadFrame {
                func: f.0,
                reason: format!(
                    "a frame of {len} slots, more than the {} declared",
                    state.frame_slots
                ),
            });
        }
        let entry = std::ptr::NonNull::new(entry as *mut c_void).expect("checked non-zero");
        let cap = len.max(state.frame_slots as usize);
        let bad = |reason: String| TierError::BadFrame { func: f.0, reason };
        if cap <= STACK_FRAME_SLOTS {
            // Small frames (the usual case) live on this stack for the call:
            // no pool, no thread-local; a frame is made only on a deopt.
            // Only the `cap` slots handed over are written (no 512-byte
            // clear per transfer): the frame, then zeros up to `cap`.
            let mut buf = [std::mem::MaybeUninit::<u64>::uninit(); STACK_FRAME_SLOTS];
            let slots = buf.as_mut_ptr().cast::<u64>();
            // SAFETY: `buf` has room for `cap` >= `len` slots, `locals` and
            // `stack` are `len` slots apart from it.
            unsafe {
                std::ptr::copy_nonoverlapping(locals.as_ptr(), slots, locals.len());
                std::ptr::copy_nonoverlapping(stack.as_ptr(), slots.add(locals.len()), stack.len());
                std::ptr::write_bytes(slots.add(len), 0, cap - len);
            }
            let mut raw = RawFrame {
                pc: header,
                locals: locals.len() as u32,
                len: len as u32,
                cap: cap as u32,
                slots,
                ret: ret.as_mut_ptr(),
            };
            // SAFETY: `raw` describes `buf` (cap slots) and `ret` (checked).
            let status = unsafe { self.enter_osr(entry, &mut raw) }?;
            return match status {
                OSR_COMPLETED => Ok(OsrOutcome::Completed),
                OSR_DEOPT => {
                    if raw.slots != slots || raw.len > raw.cap || raw.cap as usize != cap {
                        return Err(bad(format!(
                            "compiled code left a frame of {} slots in a buffer of {cap}",
                            raw.len
                        )));
                    }
                    // SAFETY: `slots` is `buf` and `len` is within `cap`, all
                    // of whose slots were written (above, or by the entry).
                    let frame = unsafe { FrameState::from_raw(&raw) }.map_err(bad)?;
                    self.count_deopt(f, state);
                    Ok(OsrOutcome::Deopt(frame))
                }
                s => Err(bad(format!("an OSR entry returned status {s}"))),
            };
        }
        let mut frame = FrameState::with_capacity(cap);
        frame.set(header, locals, stack);
        let mut raw = frame.raw(state.frame_slots as usize, ret.as_mut_ptr());
        // SAFETY: `raw` describes the frame's buffer and `ret` (checked).
        let status = unsafe { self.enter_osr(entry, &mut raw) }?;
        match status {
            OSR_COMPLETED => Ok(OsrOutcome::Completed),
            OSR_DEOPT => {
                frame.take_raw(&raw).map_err(bad)?;
                self.count_deopt(f, state);
                Ok(OsrOutcome::Deopt(frame))
            }
            s => Err(bad(format!("an OSR entry returned status {s}"))),
        }
    }

    /// Runs an OSR entry on `raw`: its status, or the failure a callback
    /// recorded while it ran.
    ///
    /// # Safety
    /// `entry` is an OSR entry published for the function (`Compiler`'s and
    /// `publish`'s contracts), kept alive by the table; `raw` describes a
    /// live buffer of `cap` slots and `ret` room for the result slots.
    unsafe fn enter_osr(
        &self,
        entry: std::ptr::NonNull<c_void>,
        raw: &mut RawFrame,
    ) -> Result<u32> {
        self.osr_entries.fetch_add(1, Ordering::Relaxed);
        crate::host::clear_entry_error();
        // SAFETY: by this function's contract.
        let status = unsafe {
            let osr: OsrEntryFn = crate::code::callable_as(entry);
            osr(raw)
        };
        if crate::host::entry_failure_pending() {
            return Err(failed());
        }
        Ok(status)
    }

    /// Compiles `f` now (whatever its counters say) and publishes the code.
    ///
    /// # Errors
    /// [`TierError::NoCodeMemory`] without code memory or a compiler;
    /// [`TierError::Compile`] when the compiler fails or may not be asked
    /// again ([`TierConfig::max_compiles`]), or another compilation of `f` is
    /// under way.
    pub fn compile_now(&self, f: FuncId) -> Result<()> {
        let state = self.get(f)?;
        if !self.can_compile() {
            return Err(TierError::NoCodeMemory {
                reason: if self.memory.is_none() {
                    "the bridge has no code generation".into()
                } else {
                    "the table has no compiler".into()
                },
            });
        }
        self.try_compile(f, state, CompileReason::Explicit)
            .map_err(|r| match r {
                Refusal::NoCompiler => TierError::NoCodeMemory {
                    reason: "no code memory or no compiler".into(),
                },
                Refusal::Exhausted => TierError::Compile {
                    name: state.name.to_string(),
                    message: format!(
                        "compiled {} times, as often as max_compiles allows",
                        self.config.max_compiles
                    ),
                },
                Refusal::Busy => TierError::Compile {
                    name: state.name.to_string(),
                    message: "another compilation of it is under way".into(),
                },
                Refusal::Reverted => TierError::Compile {
                    name: state.name.to_string(),
                    message: "reverted while it was being compiled; the code was dropped".into(),
                },
                Refusal::Failed(e) => e,
            })
    }

    /// Asks the compiler for `f` (one compilation of a function at a time;
    /// at most `max_compiles`), and publishes what it returns. Automatic
    /// requests ignore the outcome, so a refusal builds nothing (no message):
    /// [`TierTable::compile_now`] turns it into an error.
    fn try_compile(
        &self,
        f: FuncId,
        state: &FnState,
        reason: CompileReason,
    ) -> std::result::Result<(), Refusal> {
        // After a refusal for good or a failure, the same request is not
        // made again until a revert.
        let turn_off = || match reason {
            CompileReason::Loop { header } => {
                if let Some(l) = state.find_loop(header) {
                    l.off.store(true, Ordering::Relaxed);
                }
            }
            _ => state.calls_off.store(true, Ordering::Relaxed),
        };
        let (Some(memory), Some(compiler)) = (&self.memory, &self.compiler) else {
            turn_off();
            return Err(Refusal::NoCompiler);
        };
        let exhausted = || state.compiles.load(Ordering::Relaxed) >= self.config.max_compiles;
        if exhausted() {
            turn_off();
            return Err(Refusal::Exhausted);
        }
        if state.busy.swap(true, Ordering::Acquire) {
            return Err(Refusal::Busy);
        }
        struct Idle<'a>(&'a AtomicBool);
        impl Drop for Idle<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _idle = Idle(&state.busy);
        // Again under the flag: another thread may have compiled meanwhile.
        if exhausted() {
            turn_off();
            return Err(Refusal::Exhausted);
        }
        state.compiles.fetch_add(1, Ordering::Relaxed);
        let generation = state.generation.load(Ordering::Acquire);
        let request = CompileRequest {
            func: f,
            name: &state.name,
            signature: &state.sig,
            conv: self.conv,
            reason,
            loop_headers: &state.loops.iter().map(|l| l.header).collect::<Vec<_>>(),
            config: self.config,
            memory,
            table: self,
        };
        let refuse = |message: String| TierError::Compile {
            name: state.name.to_string(),
            message,
        };
        let outcome = match catch_unwind(AssertUnwindSafe(|| compiler.compile(&request))) {
            // SAFETY: the compiler's contract (an unsafe trait) is
            // `publish`'s.
            Ok(Ok(compiled)) => unsafe { self.install(f, compiled, Some(generation)) },
            Ok(Err(e)) => Err(Refusal::Failed(refuse(e.to_string()))),
            Err(_) => Err(Refusal::Failed(refuse("the compiler panicked".into()))),
        };
        if let Err(Refusal::Failed(e)) = &outcome {
            self.compile_failures.fetch_add(1, Ordering::Relaxed);
            *state.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
            turn_off();
        }
        outcome
    }

    /// Publishes compiled code of `f`: its OSR entries at once, then its
    /// entry in the cell (a release store), so that every new call — from
    /// C through the native pointer, from compiled code through the cell,
    /// from the interpreter through [`TierTable::call`] — runs it. A call
    /// already running finishes in the code it is in. The table keeps the
    /// code alive until it is dropped or [`TierTable::release_retired`].
    ///
    /// # Errors
    /// [`TierError::Code`] for an offset outside the code,
    /// [`TierError::BadDecl`] for an OSR entry at an undeclared header;
    /// nothing is published then.
    ///
    /// # Safety
    /// As [`Compiler`]'s contract: at `compiled.entry` a function of exactly
    /// `f`'s signature in the table's convention, at each OSR offset an
    /// [`OsrEntryFn`].
    pub unsafe fn publish(&self, f: FuncId, compiled: Compiled) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.install(f, compiled, None) }.map_err(|r| match r {
            Refusal::Failed(e) => e,
            _ => TierError::Internal("publish without a generation was refused".into()),
        })
    }

    /// [`TierTable::publish`]; with `generation` (a compilation's), only if
    /// `f` was not reverted since (code compiled before a revert is dropped:
    /// [`Refusal::Reverted`]), and then, under the same lock, the requests
    /// this compilation answered are turned off: calls (they have their code,
    /// or the compiler gives none) and every loop it gave no OSR entry.
    ///
    /// # Safety
    /// As [`TierTable::publish`].
    unsafe fn install(
        &self,
        f: FuncId,
        compiled: Compiled,
        generation: Option<u64>,
    ) -> std::result::Result<(), Refusal> {
        let failed = Refusal::Failed;
        let (state, cell) = self.with_cell(f).map_err(failed)?;
        let Compiled { code, entry, osr } = compiled;
        let entry = entry
            .map(|off| code.ptr_at(off))
            .transpose()
            .map_err(failed)?;
        let mut osr_ptrs = Vec::with_capacity(osr.len());
        for (header, off) in osr {
            let l = state.find_loop(header).ok_or_else(|| {
                failed(TierError::BadDecl {
                    name: state.name.to_string(),
                    reason: format!(
                        "an OSR entry at {header}, which is not a declared loop header"
                    ),
                })
            })?;
            osr_ptrs.push((l, code.ptr_at(off).map_err(failed)?));
        }
        let mut kept = state.code.lock().unwrap_or_else(|e| e.into_inner());
        if generation.is_some_and(|g| g != state.generation.load(Ordering::Acquire)) {
            return Err(Refusal::Reverted);
        }
        kept.push(code);
        for (l, p) in osr_ptrs {
            l.entry.store(p as usize, Ordering::Release);
        }
        if let Some(p) = entry {
            cell.store(p as usize, Ordering::Release);
        }
        if generation.is_some() {
            state.calls_off.store(true, Ordering::Relaxed);
            for l in state.loops.iter() {
                if l.entry.load(Ordering::Acquire) == 0 {
                    l.off.store(true, Ordering::Relaxed);
                }
            }
        }
        state.deopts.store(0, Ordering::Relaxed);
        self.compiled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Returns `f` to the interpreter (invalidation): the cell gets the
    /// interpreter entry point back, OSR entries are forgotten, and the
    /// counters start again (it may be compiled again). Calls already in
    /// compiled code finish there; the code stays alive.
    ///
    /// # Errors
    /// [`TierError::UnknownFunction`].
    pub fn revert(&self, f: FuncId) -> Result<()> {
        let (state, cell) = self.with_cell(f)?;
        let _kept = state.code.lock().unwrap_or_else(|e| e.into_inner());
        state.generation.fetch_add(1, Ordering::AcqRel);
        cell.store(state.interp_ptr, Ordering::Release);
        for l in state.loops.iter() {
            l.entry.store(0, Ordering::Release);
            l.count.store(0, Ordering::Relaxed);
            l.off.store(false, Ordering::Relaxed);
        }
        state.calls.store(0, Ordering::Relaxed);
        state.deopts.store(0, Ordering::Relaxed);
        state.calls_off.store(false, Ordering::Relaxed);
        self.reverts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Frees the code of `f` that is no longer published (reverted or
    /// replaced); how many pieces were freed.
    ///
    /// # Safety
    /// No call may be inside that code or about to enter it: no thread is
    /// running it (an interpreter frame below a compiled frame counts), and
    /// none loaded its address from the cell before the revert and has yet
    /// to call it.
    ///
    /// # Errors
    /// [`TierError::UnknownFunction`].
    pub unsafe fn release_retired(&self, f: FuncId) -> Result<usize> {
        let (state, cell) = self.with_cell(f)?;
        let mut kept = state.code.lock().unwrap_or_else(|e| e.into_inner());
        let live = |c: &Code| {
            c.contains(cell.load(Ordering::Acquire) as *const c_void)
                || state
                    .loops
                    .iter()
                    .any(|l| c.contains(l.entry.load(Ordering::Acquire) as *const c_void))
        };
        let before = kept.len();
        kept.retain(live);
        Ok(before - kept.len())
    }

    /// Counts a deoptimization of `f`; reverts it past the threshold.
    fn count_deopt(&self, f: FuncId, state: &FnState) {
        self.deopts.fetch_add(1, Ordering::Relaxed);
        let n = state.deopts.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.config.deopt_threshold {
            let _ = self.revert(f);
        }
    }

    /// What the tiers did so far, over all functions.
    pub fn stats(&self) -> TierStats {
        TierStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            compile_failures: self.compile_failures.load(Ordering::Relaxed),
            osr_entries: self.osr_entries.load(Ordering::Relaxed),
            deopts: self.deopts.load(Ordering::Relaxed),
            reverts: self.reverts.load(Ordering::Relaxed),
        }
    }

    /// What one function's tiers did.
    ///
    /// # Errors
    /// [`TierError::UnknownFunction`].
    pub fn fn_stats(&self, f: FuncId) -> Result<FnStats> {
        let state = self.get(f)?;
        Ok(FnStats {
            calls: state.calls.load(Ordering::Relaxed),
            compiled: self.is_compiled(f)?,
            compiles: state.compiles.load(Ordering::Relaxed),
            deopts: state.deopts.load(Ordering::Relaxed),
            code_kept: state.code.lock().unwrap_or_else(|e| e.into_inner()).len(),
            last_error: state
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        })
    }
}

/// The error of an id the table never gave out (built only when needed:
/// an error built eagerly and dropped costs every call).
#[cold]
#[inline(never)]
fn unknown(f: FuncId) -> TierError {
    TierError::UnknownFunction(f.0)
}

/// The error of a call with the wrong slot counts (the exit stub's own).
#[cold]
#[inline(never)]
fn bad_call(state: &FnState, args: usize, ret: usize) -> TierError {
    TierError::Thunk(if args != state.arg_slots {
        ThunkError::ArgCount {
            sig: state.sig.to_string(),
            expected: state.arg_slots,
            got: args,
        }
    } else {
        ThunkError::RetSlots {
            sig: state.sig.to_string(),
            expected: state.ret_slots,
            got: ret,
        }
    })
}

#[cold]
fn failed() -> TierError {
    match crate::host::take_entry_error() {
        Some(e) => TierError::Failed(e),
        None => TierError::Internal(
            "compiled code failed, but its error could not be kept (the thread's locals were being destroyed)"
                .into(),
        ),
    }
}

/// [`DeoptFn`]: resumes the interpreter with the frame compiled code
/// described.
///
/// # Safety
/// `table` is [`TierTable::deopt_helper`]'s context (a live table); `frame`
/// points to a [`RawFrame`] whose `slots` hold `len` readable slots and
/// whose `ret` has room for `func`'s result slots, overlapping neither the
/// slots nor the frame.
unsafe extern "C" fn deopt_helper(table: *const c_void, func: u32, frame: *mut RawFrame) -> u32 {
    // SAFETY: by this function's contract.
    let (table, raw) = unsafe { (&*(table as *const TierTable), &*frame) };
    let f = FuncId(u64::from(func));
    let Ok(state) = table.get(f) else {
        // Compiled code named a function this table does not have: a bug of
        // its compiler; nothing sensible can run, and nothing may unwind.
        eprintln!("tierbridge: deoptimization of unknown function {func}; aborting");
        std::process::abort();
    };
    table.count_deopt(f, state);
    // The frame is copied out before the result slots are borrowed, so that
    // no reference to the slots is alive while `ret` is written.
    // SAFETY: `slots` holds `len` readable slots (contract).
    let frame = unsafe { FrameState::from_raw(raw) };
    let ret = if state.ret_slots == 0 {
        &mut [][..]
    } else {
        // SAFETY: `ret` has room for the function's result slots and
        // overlaps neither the slots nor the frame (contract).
        unsafe { std::slice::from_raw_parts_mut(raw.ret, state.ret_slots) }
    };
    crate::host::guarded_call(u64::from(func), table.policy, ret, |ret| {
        table.interp.resume(f, &frame?, ret)
    })
}
