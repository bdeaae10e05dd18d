//! Exit stubs (interpreter → native) and entry points (native → interpreter),
//! behind one API with two backends.
//!
//! - [`Bridge`] picks a backend ([`BackendKind`]) and hands out
//!   [`ExitStub`]s (one per signature shape and convention, cached) and
//!   [`EntryPoint`]s (one per bound function).
//! - The generated backend (dynasm, x86-64): exit stubs and shared entry
//!   thunks emitted from the [`CallLayout`], in W^X executable memory
//!   ([`ExecStrategy`]); each bound entry point is a 32-byte trampoline.
//! - The libffi backend (`ffi_call` and closures) works wherever libffi does,
//!   and is what [`Bridge::new`] falls back to when code cannot be generated.

#[cfg(tierbridge_codegen)]
mod code;
pub(crate) mod exec;
mod ffi;
#[cfg(tierbridge_codegen)]
mod generated;
mod value;
#[cfg(tierbridge_codegen)]
pub(crate) mod x64;

use std::ffi::c_void;
use std::fmt;
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::abi::{AbiError, CallConv, CallLayout, Registry, RegistryStats, SigId, Signature};
use crate::host::{Dispatcher, EntryError};
use crate::table::IdTable;

pub use exec::ExecStrategy;
pub use value::Value;

/// Result alias of the `thunks` layer.
pub type Result<T, E = ThunkError> = std::result::Result<T, E>;

/// Errors of the `thunks` layer.
///
/// Only [`ThunkError::Internal`] can mean a bug in tierbridge (or in libffi);
/// every other variant describes input or the platform.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ThunkError {
    /// A signature problem.
    #[error(transparent)]
    Abi(#[from] AbiError),
    /// The backend cannot express this signature or feature.
    #[error("{backend} backend cannot do this: {reason}")]
    Unsupported {
        /// The backend.
        backend: BackendKind,
        /// Why.
        reason: String,
    },
    /// Wrong number of argument slots for the signature.
    #[error("signature {sig} takes {expected} argument slots, {got} given")]
    ArgCount {
        /// The signature.
        sig: String,
        /// Slots the signature needs.
        expected: usize,
        /// Slots given.
        got: usize,
    },
    /// Too few result slots for the signature.
    #[error("signature {sig} returns {expected} slots, room for {got} given")]
    RetSlots {
        /// The signature.
        sig: String,
        /// Slots the result needs.
        expected: usize,
        /// Room given.
        got: usize,
    },
    /// A typed argument whose type is not the signature's.
    #[error("argument {index}: signature wants {expected}, got {got}")]
    ArgType {
        /// Argument position.
        index: usize,
        /// The signature's type.
        expected: String,
        /// The value's type.
        got: String,
    },
    /// A null function pointer as a call target.
    #[error("null call target")]
    NullTarget,
    /// A callback that native code made during this call failed (policy `Report`).
    #[error("a callback failed during the native call: {0}")]
    Callback(EntryError),
    /// Out of memory for a closure or stub.
    #[error("out of memory for {0}")]
    OutOfMemory(&'static str),
    /// The arguments of a call of this signature would take more native
    /// stack than [`MAX_CALL_STACK_BYTES`] (large structs by value): refused
    /// when the exit stub is made, on every backend.
    #[error(
        "a call of {sig} ({conv}) would put {bytes} bytes of arguments on the native stack; the limit is {limit}"
    )]
    CallStackTooLarge {
        /// The signature.
        sig: String,
        /// The convention.
        conv: CallConv,
        /// Bytes its arguments would take (stack area and by-reference copies).
        bytes: u64,
        /// [`MAX_CALL_STACK_BYTES`].
        limit: u32,
    },
    /// Too little native stack was left on this thread for the call's
    /// arguments ([`crate::stack`]); the call was not made.
    #[error("no stack left for the call: {0}")]
    StackExhausted(crate::stack::StackExhausted),
    /// A signature new to a bridge that already has code for as many
    /// signatures as [`BridgeOptions::max_signatures`] allows (given as a
    /// signature, it was not interned either).
    #[error(
        "signature {sig} refused: the bridge already has code for {limit} signatures, the most its options allow"
    )]
    TooManySignatures {
        /// The bridge's limit.
        limit: usize,
        /// The signature refused.
        sig: String,
    },
    /// The profiler output [`BridgeOptions::profiler`] asked for could not
    /// be opened.
    #[error("cannot open the profiler's output: {0}")]
    Profiler(std::io::Error),
    /// libffi refused a prepared signature (a bug, or a libffi limit).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Checks the shape of an exit call (both backends): a non-null target,
/// exactly `nargs` argument slots, room for `nret` result slots. The error is
/// built out of line, and `sig` (the signature, for the error to name) only
/// called there, so the check costs a few compares on the hot path.
#[inline(always)]
fn check_exit_call<'a>(
    sig: impl FnOnce() -> &'a Signature,
    target: *const c_void,
    (nargs, nret): (usize, usize),
    args: &[u64],
    ret: &[u64],
) -> Result<()> {
    // One branch for the three checks (`|`, not `||`): the common case is that all pass.
    if target.is_null() | (args.len() != nargs) | (ret.len() < nret) {
        return Err(bad_exit_call(
            sig,
            target,
            (nargs, nret),
            args.len(),
            ret.len(),
        ));
    }
    Ok(())
}

#[cold]
#[inline(never)]
fn bad_exit_call<'a>(
    sig: impl FnOnce() -> &'a Signature,
    target: *const c_void,
    (nargs, nret): (usize, usize),
    got_args: usize,
    got_ret: usize,
) -> ThunkError {
    if target.is_null() {
        ThunkError::NullTarget
    } else if got_args != nargs {
        ThunkError::ArgCount {
            sig: sig().to_string(),
            expected: nargs,
            got: got_args,
        }
    } else {
        ThunkError::RetSlots {
            sig: sig().to_string(),
            expected: nret,
            got: got_ret,
        }
    }
}

/// The most native stack the arguments of one exit call may take (its
/// outgoing stack area, Win64's by-reference copies included): two structs
/// of the largest size ([`MAX_STRUCT_SIZE`](crate::abi::MAX_STRUCT_SIZE)) by
/// value. A signature past it is refused when its exit stub is made
/// ([`ThunkError::CallStackTooLarge`]), on both backends alike. A call whose
/// arguments take more than a page checks the thread's stack first
/// ([`crate::stack`]; [`ThunkError::StackExhausted`]), and touches its pages
/// in order, so a copy never jumps past the guard page.
pub const MAX_CALL_STACK_BYTES: u32 = 128 * 1024;

/// The native stack an exit call of `layout` takes for its arguments.
fn call_stack_bytes(layout: &CallLayout) -> u64 {
    u64::from(layout.stack_bytes) + u64::from(layout.copy_bytes)
}

/// Refuses a layout whose arguments would take more than
/// [`MAX_CALL_STACK_BYTES`] of stack (both backends, when an exit is made).
fn check_call_stack(sig: &Signature, layout: &CallLayout) -> Result<()> {
    let bytes = call_stack_bytes(layout);
    if bytes > u64::from(MAX_CALL_STACK_BYTES) {
        return Err(ThunkError::CallStackTooLarge {
            sig: sig.to_string(),
            conv: layout.conv,
            bytes,
            limit: MAX_CALL_STACK_BYTES,
        });
    }
    Ok(())
}

/// Before an exit call whose arguments take `need` bytes (more than a
/// page): whether the thread's stack has them.
#[cold]
#[inline(never)]
fn reserve_call_stack(need: usize) -> Result<()> {
    crate::stack::check(need).map_err(ThunkError::StackExhausted)
}

/// [`ExitStub::call_unchecked`] had too little stack for its arguments: the
/// call was not made; its failure stays pending, as a callback's would, and
/// the results are zero.
#[cold]
#[inline(never)]
fn no_stack_for_call(error: crate::stack::StackExhausted, ret: &mut [u64]) {
    crate::host::record_failure(EntryError::StackExhausted { func: None, error });
    ret.fill(0);
}

/// After an exit call, on either backend: the failure of a callback that ran
/// during it, if any (one thread-local load when there is none).
#[inline(always)]
fn callback_failure() -> Result<()> {
    if crate::host::entry_failure_pending() {
        return Err(callback_failed());
    }
    Ok(())
}

#[cold]
#[inline(never)]
fn callback_failed() -> ThunkError {
    match crate::host::take_entry_error() {
        // The call itself found too little stack (or compiled code in a
        // callback did): not a callback's own failure.
        Some(EntryError::StackExhausted { func: None, error }) => {
            ThunkError::StackExhausted(error)
        }
        Some(e) => ThunkError::Callback(e),
        None => ThunkError::Internal(
            "a callback failed, but its error could not be kept (the thread's locals were being destroyed)"
                .into(),
        ),
    }
}

/// How many dropped entry points a bridge keeps in quarantine, per pool of
/// trampolines on the generated backend and per bridge on libffi: a dropped
/// [`EntryPoint`]'s code is not handed to another binding, nor freed, until
/// this many more entry points were dropped after it, and while it is kept
/// a call of it aborts the process with a message naming the function and
/// its signature (see [`EntryPoint`]'s documentation for exactly what is
/// promised).
///
/// 1024: more than the functions a module or an instance usually exports
/// or takes as callbacks, so that tearing one down and calling one of its
/// pointers late, even after hundreds of new bindings, is still caught; a
/// quarantined entry point costs 120 bytes on the generated backend and
/// 176 on libffi (ABI.md, "Bindings and trampolines"), so a full
/// quarantine is well under 200 KiB.
pub const ENTRY_QUARANTINE: usize = 1024;

/// Prints `tierbridge: {what}; aborting` to stderr and aborts the process:
/// the end of a call of a dropped entry point (no unwinding, no panic).
#[cold]
pub(crate) fn abort_with(what: fmt::Arguments<'_>) -> ! {
    use std::io::Write;
    // A failed write changes nothing: the process aborts either way.
    let _ = writeln!(std::io::stderr(), "tierbridge: {what}; aborting");
    std::process::abort()
}

/// Where a call of a dropped entry point in quarantine ends, on either
/// backend: the message names the function, its signature and convention.
#[cold]
pub(crate) fn dropped_entry_called(func: u64, sig: &Signature, conv: CallConv) -> ! {
    abort_with(format_args!(
        "called a dropped entry point (fn id {func}, signature {sig}, {conv})"
    ))
}

/// Which machinery makes stubs and entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Code generated at run time with dynasm (x86-64).
    Generated,
    /// libffi's `ffi_call` and closures.
    Libffi,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Generated => "generated",
            BackendKind::Libffi => "libffi",
        })
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "generated" => Ok(BackendKind::Generated),
            "libffi" => Ok(BackendKind::Libffi),
            _ => Err(format!(
                "unknown backend {s:?} (expected \"generated\" or \"libffi\")"
            )),
        }
    }
}

/// How to build a [`Bridge`]. The default: the generated backend, the
/// probed memory strategy, no limit on signatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeOptions {
    /// The backend wanted.
    pub backend: BackendKind,
    /// Force an executable-memory strategy for the generated backend (`None`:
    /// probe, dual mapping first). Also settable with the environment variable
    /// `TIERBRIDGE_EXEC=write-then-protect|dual-mapping`.
    pub exec: Option<ExecStrategy>,
    /// The most distinct signatures the bridge makes code for (exit stubs,
    /// entry points, [`Bridge::prepare`]; `None`: no limit). Past it, a
    /// signature new to the bridge is refused with
    /// [`ThunkError::TooManySignatures`] — given as a [`Signature`], before
    /// it is interned, so that neither the registry nor the bridge grows —
    /// while every signature it has code for keeps working.
    ///
    /// For long-running embedders that make signatures from untrusted
    /// input: the registry and the bridge keep every signature and its code
    /// for their lives (see [`Bridge::stats`]), so without a limit such input
    /// can grow them without bound.
    pub max_signatures: Option<usize>,
    /// Turn a profiler's output on ([`crate::visibility::enable_profiler`]:
    /// process-wide, for code made from then on). Also settable with the
    /// environment variable `TIERBRIDGE_PROFILE=perfmap|jitdump`.
    pub profiler: Option<crate::visibility::Profiler>,
}

impl Default for BridgeOptions {
    fn default() -> BridgeOptions {
        BridgeOptions {
            backend: BackendKind::Generated,
            exec: None,
            max_signatures: None,
            profiler: None,
        }
    }
}

/// What a [`Bridge`] holds ([`Bridge::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeStats {
    /// Distinct signatures the bridge was asked to make code for (exit
    /// stubs, entry points, [`Bridge::prepare`]), those the backend then
    /// refused included; what [`BridgeOptions::max_signatures`] bounds.
    pub signatures: usize,
    /// Bytes of executable memory in use on the generated backend: exit
    /// stubs, entry thunks, blocks of trampolines, and code a tier table
    /// placed through the bridge (allocations rounded to 16 bytes with dual
    /// mapping, to pages with write-then-protect); 0 on libffi.
    pub code_bytes: usize,
    /// Bytes of executable memory mapped for that (whole slabs, kept while
    /// the bridge or any of its code lives); 0 on libffi.
    pub code_mapped_bytes: usize,
    /// Dropped entry points in quarantine (at most [`ENTRY_QUARANTINE`] per
    /// pool of trampolines, of which there are 8, on the generated backend;
    /// at most [`ENTRY_QUARANTINE`] on libffi).
    pub quarantined: usize,
    /// Bytes they keep from reuse: on the generated backend trampolines
    /// (also counted in `code_bytes`), cells, binding slots; on libffi
    /// closures and their tombstones.
    pub quarantine_bytes: usize,
    /// The registry's (shared by every bridge in the process).
    pub registry: RegistryStats,
}

/// The entry to everything in this layer: a backend plus the signature
/// registry.
///
/// Every signature a bridge sees is interned in the process-wide
/// [`Registry`] and kept there for the process's life; the code made for
/// it (an exit stub and an entry thunk per machine shape, shared by the
/// signatures of that shape, and a few dozen bytes per signature to find
/// them) is kept for the bridge's. That is what makes asking again a
/// lookup, and a program's signatures are usually a few hundred shapes; a
/// program that makes signatures from untrusted input should bound them
/// with [`BridgeOptions::max_signatures`] and can watch them with
/// [`Bridge::stats`].
pub struct Bridge {
    kind: BackendKind,
    registry: &'static Registry,
    ffi: ffi::FfiBackend,
    #[cfg(tierbridge_codegen)]
    generated: Option<generated::GenBackend>,
    fallback: Option<String>,
    admitted: Admitted,
}

/// The signatures a bridge was asked to make code for, and its limit.
#[derive(Default)]
struct Admitted {
    limit: Option<usize>,
    /// Set for each id admitted (read without a lock).
    known: IdTable<()>,
    /// How many are set; taken to admit a new one.
    count: Mutex<usize>,
}

impl fmt::Debug for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge")
            .field("kind", &self.kind)
            .field("exec", &self.exec_strategy())
            .field("fallback", &self.fallback)
            .finish()
    }
}

impl Bridge {
    /// A bridge on the given backend. Asking for [`BackendKind::Generated`]
    /// where code cannot be generated (not x86-64, a build with
    /// `--cfg tierbridge_no_codegen`, or no executable-memory strategy works)
    /// gives a libffi bridge that says why in [`Bridge::fallback_reason`].
    ///
    /// # Errors
    /// Only with a forced strategy (`TIERBRIDGE_EXEC`) that does not work.
    pub fn new(kind: BackendKind) -> Result<Bridge> {
        let exec = match std::env::var("TIERBRIDGE_EXEC") {
            Ok(v) => Some(v.parse().map_err(|reason| ThunkError::Unsupported {
                backend: kind,
                reason,
            })?),
            Err(_) => None,
        };
        Bridge::with_options(BridgeOptions {
            backend: kind,
            exec,
            ..BridgeOptions::default()
        })
    }

    /// A bridge built exactly as `options` say.
    ///
    /// # Errors
    /// [`ThunkError::Unsupported`] when `options.exec` forces a strategy that
    /// does not work here, [`ThunkError::Profiler`] when `options.profiler`'s
    /// file cannot be opened.
    pub fn with_options(options: BridgeOptions) -> Result<Bridge> {
        if let Some(p) = options.profiler {
            crate::visibility::enable_profiler(p).map_err(ThunkError::Profiler)?;
        }
        let mut bridge = Bridge::libffi();
        bridge.admitted.limit = options.max_signatures;
        if options.backend == BackendKind::Libffi {
            return Ok(bridge);
        }
        #[cfg(tierbridge_codegen)]
        {
            let mem = match options.exec {
                Some(s) => Ok(exec::ExecMemory::new(s)?),
                None => exec::ExecMemory::probe(),
            };
            match mem {
                Ok(mem) => {
                    bridge.kind = BackendKind::Generated;
                    bridge.generated = Some(generated::GenBackend::new(mem, bridge.registry));
                }
                Err(why) => {
                    bridge.fallback = Some(format!("no executable memory ({why}); using libffi"))
                }
            }
        }
        #[cfg(not(tierbridge_codegen))]
        {
            bridge.fallback = Some(if cfg!(target_arch = "x86_64") {
                "the generated backend is compiled out (--cfg tierbridge_no_codegen); using libffi"
                    .into()
            } else {
                "the generated backend needs an x86-64 CPU; using libffi".into()
            });
        }
        Ok(bridge)
    }

    /// A bridge on the libffi backend (available everywhere libffi is).
    pub fn libffi() -> Bridge {
        Bridge {
            kind: BackendKind::Libffi,
            registry: Registry::global(),
            ffi: ffi::FfiBackend::default(),
            #[cfg(tierbridge_codegen)]
            generated: None,
            fallback: None,
            admitted: Admitted::default(),
        }
    }

    /// The backend in use.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// Why the generated backend was asked for but libffi is in use.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The executable-memory strategy of the generated backend.
    pub fn exec_strategy(&self) -> Option<ExecStrategy> {
        #[cfg(tierbridge_codegen)]
        {
            self.generated.as_ref().map(|g| g.exec().strategy())
        }
        #[cfg(not(tierbridge_codegen))]
        {
            None
        }
    }

    /// The generated backend's executable memory (for the tier layer's
    /// [`CodeMemory`](crate::tier::CodeMemory)); `None` on libffi.
    pub(crate) fn exec_memory(&self) -> Option<Arc<exec::ExecMemory>> {
        #[cfg(tierbridge_codegen)]
        {
            self.generated.as_ref().map(|g| g.exec().clone())
        }
        #[cfg(not(tierbridge_codegen))]
        {
            None
        }
    }

    /// The registry signatures are interned in.
    pub fn registry(&self) -> &'static Registry {
        self.registry
    }

    /// What the bridge and its registry hold: signatures, their code, and
    /// dropped entry points in quarantine. Walks the registry
    /// ([`Registry::stats`]): for monitoring, not for hot paths.
    pub fn stats(&self) -> BridgeStats {
        let signatures = *self
            .admitted
            .count
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (quarantined, per) = match self.generated_backend() {
            #[cfg(tierbridge_codegen)]
            Some(g) => (g.quarantined(), generated::QUARANTINED_BYTES),
            _ => (self.ffi.quarantined(), ffi::QUARANTINED_BYTES),
        };
        let (code_bytes, code_mapped_bytes) = self.exec_memory().map_or((0, 0), |m| m.usage());
        BridgeStats {
            signatures,
            code_bytes,
            code_mapped_bytes,
            quarantined,
            quarantine_bytes: quarantined * per,
            registry: self.registry.stats(),
        }
    }

    #[cfg(tierbridge_codegen)]
    fn generated_backend(&self) -> Option<&generated::GenBackend> {
        self.generated.as_ref()
    }

    #[cfg(not(tierbridge_codegen))]
    fn generated_backend(&self) -> Option<std::convert::Infallible> {
        None
    }

    /// `sig`'s id, admitted (see [`Bridge::admit`]); with a limit, a
    /// signature new to the registry is interned only if the bridge may
    /// admit it.
    fn intern(&self, sig: &Signature) -> Result<SigId> {
        let Some(limit) = self.admitted.limit else {
            let id = self.registry.intern(sig);
            self.admit(id)?;
            return Ok(id);
        };
        let found = self.registry.find(sig);
        if let Some(id) = found
            && self.admitted.known.get(id.index()).is_some()
        {
            return Ok(id);
        }
        let mut count = self
            .admitted
            .count
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let id = match found.or_else(|| self.registry.find(sig)) {
            Some(id) => id,
            None if *count >= limit => {
                return Err(ThunkError::TooManySignatures {
                    limit,
                    sig: sig.to_string(),
                });
            }
            None => self.registry.intern(sig),
        };
        self.admit_locked(&mut count, id)
    }

    /// Counts `id` among the signatures this bridge makes code for, unless
    /// it is there already; refuses it past the bridge's limit. A lookup
    /// without a lock for an id admitted before.
    #[inline]
    fn admit(&self, id: SigId) -> Result<()> {
        if self.admitted.known.get(id.index()).is_some() {
            return Ok(());
        }
        self.admit_new(id)
    }

    #[cold]
    #[inline(never)]
    fn admit_new(&self, id: SigId) -> Result<()> {
        // Checked first: an id from another registry is refused, not counted.
        self.registry.signature(id)?;
        let mut count = self
            .admitted
            .count
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.admit_locked(&mut count, id).map(|_| ())
    }

    fn admit_locked(&self, count: &mut usize, id: SigId) -> Result<SigId> {
        if self.admitted.known.get(id.index()).is_some() {
            return Ok(id);
        }
        if let Some(limit) = self.admitted.limit
            && *count >= limit
        {
            return Err(ThunkError::TooManySignatures {
                limit,
                sig: self.registry.signature(id)?.to_string(),
            });
        }
        self.admitted.known.get_or_insert(id.index(), ());
        *count += 1;
        Ok(id)
    }

    /// The exit stub for a signature and convention. For a variadic function,
    /// pass the call-site signature ([`Signature::with_varargs`]). Stubs are
    /// cached per signature shape: asking again is a lookup.
    ///
    /// # Errors
    /// [`ThunkError::Unsupported`] when the backend cannot express the signature
    /// (libffi: packed structs whose layout differs from the natural one),
    /// [`ThunkError::CallStackTooLarge`] when its arguments would take more
    /// than [`MAX_CALL_STACK_BYTES`] of stack. A
    /// declared variadic signature is the call site that passes no variadic
    /// argument. [`ThunkError::TooManySignatures`] for a signature new to a
    /// bridge at its [`BridgeOptions::max_signatures`].
    pub fn exit_stub(&self, sig: &Signature, conv: CallConv) -> Result<ExitStub> {
        let id = self.intern(sig)?;
        self.exit_stub_admitted(id, conv)
    }

    /// [`Bridge::exit_stub`] for an already interned signature: no hashing.
    ///
    /// # Errors
    /// As [`Bridge::exit_stub`], plus [`AbiError::UnknownSigId`].
    pub fn exit_stub_by_id(&self, id: SigId, conv: CallConv) -> Result<ExitStub> {
        self.admit(id)?;
        self.exit_stub_admitted(id, conv)
    }

    #[inline]
    fn exit_stub_admitted(&self, id: SigId, conv: CallConv) -> Result<ExitStub> {
        #[cfg(tierbridge_codegen)]
        if let Some(g) = &self.generated {
            return Ok(ExitStub {
                imp: ExitImpl::Gen(g.exit(id, conv)?),
                id,
            });
        }
        let cif = self.ffi.exit_cif(self.registry, id, conv)?;
        check_call_stack(cif.sig, cif.layout)?;
        Ok(ExitStub {
            imp: ExitImpl::Ffi(cif),
            id,
        })
    }

    /// Makes (or finds) both pieces of code a signature's calls share, its
    /// exit stub and its entry thunk, and returns the exit stub: afterwards a
    /// call through the stub, and binding a function of the signature with
    /// [`Bridge::entry_point`], pay only for themselves (on the generated
    /// backend a binding then only takes a trampoline). For an embedder that
    /// knows its signatures before it binds anything, e.g. a module's
    /// function types when it is loaded.
    ///
    /// A call-site variadic signature ([`Signature::with_varargs`]) has no
    /// entry thunk (an entry point takes the declared signature): only its
    /// exit stub is made.
    ///
    /// # Errors
    /// As [`Bridge::exit_stub`] and [`Bridge::entry_point`].
    pub fn prepare(&self, sig: &Signature, conv: CallConv) -> Result<ExitStub> {
        self.prepare_admitted(self.intern(sig)?, conv)
    }

    /// [`Bridge::prepare`] for an already interned signature: no hashing.
    ///
    /// # Errors
    /// As [`Bridge::prepare`], plus [`AbiError::UnknownSigId`].
    pub fn prepare_by_id(&self, id: SigId, conv: CallConv) -> Result<ExitStub> {
        self.admit(id)?;
        self.prepare_admitted(id, conv)
    }

    #[inline]
    fn prepare_admitted(&self, id: SigId, conv: CallConv) -> Result<ExitStub> {
        #[cfg(tierbridge_codegen)]
        if let Some(g) = &self.generated {
            return Ok(ExitStub {
                imp: ExitImpl::Gen(g.prepare(id, conv)?),
                id,
            });
        }
        let stub = self.exit_stub_admitted(id, conv)?;
        if !stub.signature().has_call_varargs() {
            self.ffi.prepare_entry(self.registry, id, conv)?;
        }
        Ok(stub)
    }

    /// Binds function `func` of `dispatcher` to a new native entry point with
    /// this signature and convention. A variadic signature is given in its
    /// declared form; the host reads the variadic arguments through
    /// [`VaArgs`](crate::host::VaArgs).
    ///
    /// # Errors
    /// [`ThunkError::Unsupported`] when the backend cannot express the
    /// signature, [`ThunkError::OutOfMemory`] when no closure can be
    /// allocated, [`ThunkError::TooManySignatures`] for a signature new to a
    /// bridge at its [`BridgeOptions::max_signatures`].
    pub fn entry_point(
        &self,
        sig: &Signature,
        conv: CallConv,
        dispatcher: &Dispatcher,
        func: u64,
    ) -> Result<EntryPoint> {
        self.entry_point_admitted(self.intern(sig)?, conv, dispatcher, func)
    }

    /// [`Bridge::entry_point`] for an already interned signature: no hashing.
    ///
    /// # Errors
    /// As [`Bridge::entry_point`], plus [`AbiError::UnknownSigId`].
    pub fn entry_point_by_id(
        &self,
        id: SigId,
        conv: CallConv,
        dispatcher: &Dispatcher,
        func: u64,
    ) -> Result<EntryPoint> {
        self.admit(id)?;
        self.entry_point_admitted(id, conv, dispatcher, func)
    }

    #[inline(always)]
    fn entry_point_admitted(
        &self,
        id: SigId,
        conv: CallConv,
        dispatcher: &Dispatcher,
        func: u64,
    ) -> Result<EntryPoint> {
        let sig = self.registry.signature(id)?;
        if sig.has_call_varargs() {
            return Err(ThunkError::Unsupported {
                backend: self.kind,
                reason: format!(
                    "entry point for {sig}: give the declared variadic signature; the host reads the variadic arguments"
                ),
            });
        }
        #[cfg(tierbridge_codegen)]
        if let Some(g) = &self.generated {
            let e = g.bind(id, conv, dispatcher.clone(), func)?;
            return Ok(EntryPoint {
                imp: EntryImpl::Gen(e),
                id,
            });
        }
        let inner = self
            .ffi
            .bind(self.registry, id, conv, dispatcher.clone(), func)?;
        Ok(EntryPoint {
            imp: EntryImpl::Ffi(inner),
            id,
        })
    }
}

#[derive(Clone)]
enum ExitImpl {
    Ffi(Arc<ffi::FfiCif>),
    #[cfg(tierbridge_codegen)]
    Gen(generated::GenExitRef),
}

enum EntryImpl {
    Ffi(ffi::FfiEntry),
    #[cfg(tierbridge_codegen)]
    Gen(generated::GenEntry),
}

/// Calls native functions of one signature shape from interpreter slots.
#[derive(Clone)]
pub struct ExitStub {
    imp: ExitImpl,
    id: SigId,
}

impl fmt::Debug for ExitStub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExitStub")
            .field("sig", &self.signature().to_string())
            .field("conv", &self.layout().conv)
            .finish()
    }
}

impl ExitStub {
    /// The signature.
    pub fn signature(&self) -> &Signature {
        match &self.imp {
            ExitImpl::Ffi(c) => c.sig,
            #[cfg(tierbridge_codegen)]
            ExitImpl::Gen(g) => g.signature(self.id),
        }
    }

    /// Its interned id.
    pub fn sig_id(&self) -> SigId {
        self.id
    }

    /// Its layout (on the generated backend, classified on the first call of
    /// this method or of [`ExitStub::call_values`] when making the stub did
    /// not need it: ABI.md, "Generated code").
    pub fn layout(&self) -> &CallLayout {
        match &self.imp {
            ExitImpl::Ffi(c) => c.layout,
            #[cfg(tierbridge_codegen)]
            ExitImpl::Gen(g) => g.layout(self.id),
        }
    }

    /// # Safety
    /// As [`ExitStub::call`].
    #[inline]
    unsafe fn call_inner(
        &self,
        target: *const c_void,
        args: &[u64],
        ret: &mut [u64],
        errno_before: Option<i32>,
    ) -> Result<Option<i32>> {
        // SAFETY: forwarded contract.
        unsafe {
            match &self.imp {
                ExitImpl::Ffi(c) => c.call(target, args, ret, errno_before, true),
                #[cfg(tierbridge_codegen)]
                ExitImpl::Gen(g) => g.call(self.id, target, args, ret, errno_before),
            }
        }
    }

    /// Calls `target` with argument slots `args`, writing the result slots `ret`
    /// (ABI.md, "Slots": narrow integer results come back extended as their type
    /// says, whatever the callee left in the upper bits).
    ///
    /// # Errors
    /// [`ThunkError::NullTarget`], [`ThunkError::ArgCount`],
    /// [`ThunkError::RetSlots`], [`ThunkError::StackExhausted`] when the
    /// arguments take more than a page of stack and this thread has not that
    /// much left ([`crate::stack`]), and [`ThunkError::Callback`] when a
    /// callback failed while native code ran (the result slots are still
    /// written).
    ///
    /// # Safety
    /// `target` must be a function with exactly this signature and convention,
    /// and every pointer passed in `args` must be valid for what the callee does
    /// with it.
    #[inline]
    pub unsafe fn call(&self, target: *const c_void, args: &[u64], ret: &mut [u64]) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.call_inner(target, args, ret, None) }.map(|_| ())
    }

    /// The generated stub itself, `extern "C" fn(args, ret, target, errno)`
    /// (for generated code that calls it directly); `None` on libffi, or when
    /// no executable memory is left to make it.
    #[cfg(tierbridge_codegen)]
    pub(crate) fn raw_fn(&self) -> Option<usize> {
        match &self.imp {
            ExitImpl::Gen(g) => g.raw_fn(self.id),
            ExitImpl::Ffi(_) => None,
        }
    }

    /// The generated register stub, `extern "C" fn(args: *const u64, target,
    /// ret)`, and how it returns, when its result is at most one slot (for
    /// generated code that calls it directly); `None` on libffi, when the
    /// signature has none, or when its result is two slots or in memory
    /// (ABI.md, "Exit stubs").
    #[cfg(tierbridge_codegen)]
    pub(crate) fn raw_fast(&self) -> Option<(usize, x64::FastRet)> {
        match &self.imp {
            ExitImpl::Gen(g) => g.raw_fast(),
            ExitImpl::Ffi(_) => None,
        }
    }

    /// [`ExitStub::call`] without its checks, for callers that already know
    /// the call is well formed (an interpreter whose verifier checked the call
    /// site, generated code): no slot-count or null check, and a callback
    /// failure is not turned into an error here — it stays pending for
    /// [`take_entry_error`](crate::host::take_entry_error). The stack is
    /// still checked when the arguments take more than a page: without room,
    /// the call is not made, the results are zero and
    /// [`EntryError::StackExhausted`] is pending.
    ///
    /// # Safety
    /// As [`ExitStub::call`], and: `target` is not null, `args` points to
    /// `signature().arg_slots()` readable slots and `ret` to
    /// `signature().ret_slots()` writable ones (any non-null pointer when 0).
    #[inline]
    pub unsafe fn call_unchecked(&self, target: *const c_void, args: *const u64, ret: *mut u64) {
        match &self.imp {
            // SAFETY: forwarded contract; the counts are the stub's own.
            ExitImpl::Ffi(c) => unsafe {
                let args = std::slice::from_raw_parts(args, c.layout.arg_slots as usize);
                let ret = std::slice::from_raw_parts_mut(ret, c.layout.ret_slots as usize);
                // Fails only for want of stack (the target is non-null and
                // the counts are the stub's): that failure stays pending.
                if let Err(ThunkError::StackExhausted(error)) =
                    c.call(target, args, ret, None, false)
                {
                    no_stack_for_call(error, ret);
                }
            },
            #[cfg(tierbridge_codegen)]
            // SAFETY: forwarded contract.
            ExitImpl::Gen(g) => unsafe { g.call_unchecked(target, args, ret) },
        }
    }

    /// [`ExitStub::call`], capturing the thread's `errno` right after the
    /// native function returns (before any other code of the bridge runs that
    /// could change it). `errno` is set to `errno_before` before the call.
    ///
    /// # Errors
    /// As [`ExitStub::call`].
    ///
    /// # Safety
    /// As [`ExitStub::call`].
    pub unsafe fn call_capture_errno(
        &self,
        target: *const c_void,
        args: &[u64],
        ret: &mut [u64],
        errno_before: i32,
    ) -> Result<i32> {
        // SAFETY: forwarded contract.
        unsafe { self.call_inner(target, args, ret, Some(errno_before)) }.map(|e| e.unwrap_or(0))
    }

    /// Typed form of [`ExitStub::call`]: checks each value's type against the
    /// signature and returns the typed result.
    ///
    /// # Errors
    /// [`ThunkError::ArgType`] / [`ThunkError::ArgCount`] on a mismatch, and
    /// everything [`ExitStub::call`] returns.
    ///
    /// # Safety
    /// As [`ExitStub::call`].
    pub unsafe fn call_values(&self, target: *const c_void, args: &[Value]) -> Result<Value> {
        let sig = self.signature();
        if args.len() != sig.params().len() {
            return Err(ThunkError::ArgCount {
                sig: sig.to_string(),
                expected: sig.params().len(),
                got: args.len(),
            });
        }
        let mut slots = vec![0u64; sig.arg_slots()];
        for (index, ((value, ty), layout)) in args
            .iter()
            .zip(sig.params())
            .zip(&self.layout().args)
            .enumerate()
        {
            let at = layout.slot as usize;
            value
                .write_slots(ty, &mut slots[at..at + layout.slots as usize])
                .map_err(|got| ThunkError::ArgType {
                    index,
                    expected: ty.to_string(),
                    got,
                })?;
        }
        let mut ret = vec![0u64; sig.ret_slots()];
        // SAFETY: forwarded contract.
        unsafe { self.call(target, &slots, &mut ret)? };
        Ok(Value::from_slots(sig.ret(), &ret))
    }
}

/// A native function pointer that runs a bound host function. The pointer is
/// valid while this handle lives.
///
/// Drop it only when no native code can still call the pointer, and never
/// from inside a call through it (or while another thread may be inside
/// it): dropping releases the binding (and the dispatcher's host with it)
/// at once.
///
/// # A call after the drop
///
/// Calling the pointer after the handle is dropped is a bug in the caller,
/// but a bridge keeps the last [`ENTRY_QUARANTINE`] dropped entry points in
/// quarantine (per pool of trampolines on the generated backend, which only
/// makes it more), so that such a call is caught:
///
/// - **while the dropped entry point is among the last [`ENTRY_QUARANTINE`]
///   dropped on its bridge** (and the bridge or another of its entry points
///   or stubs is still alive), its code and memory are kept, not given to
///   another binding nor freed, and a call of it aborts the process with
///   `tierbridge: called a dropped entry point (fn id F, signature S,
///   conv); aborting` on stderr: never running freed memory, another
///   binding, or the dropped host;
/// - **after that**, its trampoline (generated) may be bound to another
///   function, whose binding the stale call then runs as if it were its
///   own, or its closure (libffi) freed and reused by libffi: the call's
///   behaviour is undefined. The same holds once the bridge and everything
///   made from it are dropped (the quarantine goes with them).
///
/// Either way the call is taken apart as a call of the entry point's
/// signature before it aborts, so a call with a wrong signature is
/// undefined too.
pub struct EntryPoint {
    imp: EntryImpl,
    id: SigId,
}

impl fmt::Debug for EntryPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntryPoint")
            .field("code", &self.code_ptr())
            .field("sig", &self.id)
            .finish()
    }
}

impl EntryPoint {
    /// The native function pointer to hand to C.
    pub fn code_ptr(&self) -> *const c_void {
        match &self.imp {
            EntryImpl::Ffi(e) => e.code_ptr(),
            #[cfg(tierbridge_codegen)]
            EntryImpl::Gen(e) => e.code_ptr(),
        }
    }

    /// The interned signature id.
    pub fn sig_id(&self) -> SigId {
        self.id
    }

    /// The entry point as a typed Rust function pointer, for Rust code that
    /// calls it directly.
    ///
    /// # Safety
    /// `F` must be a function pointer type whose convention and signature are
    /// exactly the entry point's (`extern "C" fn(i64) -> i64` for a SysV
    /// `(i64)->i64`, `extern "win64" fn…` for Win64), and the result must not
    /// be called after this handle is dropped.
    ///
    /// # Panics
    /// If `F` is not pointer-sized.
    pub unsafe fn as_fn<F: Copy>(&self) -> F {
        let code = std::ptr::NonNull::new(self.code_ptr().cast_mut())
            .expect("an entry point's code is never null");
        // SAFETY: forwarded contract.
        unsafe { crate::code::callable_as::<F>(code) }
    }
}
