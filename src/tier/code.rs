//! Executable memory for anyone's machine code: [`CodeMemory`] places bytes
//! (from dynasm, Cranelift, or written by hand) W^X with the bridge's
//! strategy, and [`Code`] owns them until it is dropped.

use std::ffi::c_void;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use super::{Result, TierError};
use crate::thunks::exec::{ExecCode, ExecMemory};
use crate::thunks::{Bridge, ExecStrategy};
use crate::visibility::Unwind;

/// A source of executable memory, shared (cheap to clone).
///
/// Code is written into pages that are not executable and published
/// read+execute afterwards (write-then-protect), or written through a second,
/// writable view of memory that a read+execute view runs (dual mapping):
/// never writable and executable at once (ABI.md, "Executable memory").
#[derive(Clone)]
pub struct CodeMemory {
    mem: Arc<ExecMemory>,
}

impl fmt::Debug for CodeMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeMemory")
            .field("strategy", &self.strategy())
            .finish()
    }
}

impl CodeMemory {
    /// The executable memory of `bridge`, with its strategy (the same slabs
    /// its stubs live in).
    ///
    /// # Errors
    /// [`TierError::NoCodeMemory`] on a libffi bridge (no code generation
    /// here: another CPU, a build with `--cfg tierbridge_no_codegen`, or no
    /// strategy works).
    pub fn of(bridge: &Bridge) -> Result<CodeMemory> {
        bridge
            .exec_memory()
            .map(|mem| CodeMemory { mem })
            .ok_or_else(|| TierError::NoCodeMemory {
                reason: bridge
                    .fallback_reason()
                    .unwrap_or("the bridge uses the libffi backend")
                    .to_string(),
            })
    }

    /// New executable memory with `strategy`, checked by running a tiny
    /// function.
    ///
    /// # Errors
    /// [`TierError::NoCodeMemory`] when the strategy does not work here.
    pub fn with_strategy(strategy: ExecStrategy) -> Result<CodeMemory> {
        ExecMemory::new(strategy)
            .map(|mem| CodeMemory { mem })
            .map_err(|e| TierError::NoCodeMemory {
                reason: e.to_string(),
            })
    }

    /// The allocator behind it.
    #[cfg(tierbridge_codegen)]
    pub(crate) fn exec(&self) -> &Arc<ExecMemory> {
        &self.mem
    }

    /// The strategy in use.
    pub fn strategy(&self) -> ExecStrategy {
        self.mem.strategy()
    }

    /// Copies `bytes` (position-independent machine code) into executable
    /// memory under `name`.
    ///
    /// # Errors
    /// [`TierError::Code`] when the system refuses memory or protection.
    pub fn install(&self, name: &str, bytes: &[u8]) -> Result<Code> {
        self.install_with(name, bytes.len(), |_, buf| {
            buf.copy_from_slice(bytes);
            Ok::<(), TierError>(())
        })
    }

    /// [`CodeMemory::install`], with how to unwind through the code: its
    /// frame layout ([`Unwind`]) goes to the unwinder (backtraces, panics),
    /// debuggers and profilers while the code lives ([`crate::visibility`]).
    /// Code installed without it is named for tools, and unwinding stops
    /// at it. The rows must describe the code: wrong rows cannot affect the
    /// code itself, but an unwinder walking through it (a backtrace, a
    /// panic, a profiler) reads the stack where they say, and may fault.
    ///
    /// # Errors
    /// As [`CodeMemory::install`]; [`TierError::Code`] when `unwind`
    /// describes more code than `bytes` (Cranelift's description carries the
    /// length of the code it was made for).
    pub fn install_with_unwind(&self, name: &str, bytes: &[u8], unwind: &Unwind) -> Result<Code> {
        if let Some(n) = crate::visibility::unwind_len(unwind)
            && n > bytes.len()
        {
            return Err(TierError::Code(format!(
                "{name}: the unwind description covers {n} bytes, the code is {}",
                bytes.len()
            )));
        }
        self.install_inner(name, bytes.len(), unwind, |_, buf| {
            buf.copy_from_slice(bytes);
            Ok::<(), TierError>(())
        })
    }

    /// Reserves `len` bytes, then calls `write` with their final executable
    /// address and a writable buffer of exactly `len` bytes (filled with
    /// `int3` to begin with), for position-dependent code: absolute
    /// addresses inside the code, relocations resolved against `base`. The
    /// code is published (made executable, or for dual mapping handed out)
    /// only after `write` returns `Ok`; after an `Err` the reservation is
    /// given back unpublished.
    ///
    /// # Errors
    /// The error `write` returns (converted), or [`TierError::Code`] when
    /// the system refuses memory or protection; the reservation is given
    /// back either way.
    pub fn install_with<E>(
        &self,
        name: &str,
        len: usize,
        write: impl FnOnce(usize, &mut [u8]) -> std::result::Result<(), E>,
    ) -> Result<Code>
    where
        TierError: From<E>,
    {
        self.install_inner(name, len, &Unwind::Unknown, write)
    }

    /// `install_with` with unwind rows (the crate's Cranelift code, which
    /// is position-dependent and describes its own frames).
    pub(crate) fn install_inner<E>(
        &self,
        name: &str,
        len: usize,
        unwind: &Unwind,
        write: impl FnOnce(usize, &mut [u8]) -> std::result::Result<(), E>,
    ) -> Result<Code>
    where
        TierError: From<E>,
    {
        let mut failure = None;
        let exec = self.mem.install_with(len, unwind, |base, buf| {
            match write(base.as_ptr() as usize, buf) {
                Ok(()) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        });
        match (exec, failure) {
            (_, Some(e)) => Err(e.into()),
            (Ok(mut exec), None) => {
                exec.publish(name, unwind);
                Ok(Code {
                    exec,
                    len,
                    name: name.into(),
                })
            }
            (Err(e), None) => Err(TierError::Code(e.to_string())),
        }
    }
}

/// Machine code placed in executable memory, with its name.
///
/// Dropping it gives the memory back at once: drop it only when no call can
/// be inside the code or about to enter it (code published in a
/// [`TierTable`](super::TierTable) is kept alive by the table).
pub struct Code {
    exec: ExecCode,
    len: usize,
    name: Box<str>,
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Code")
            .field("name", &self.name)
            .field("addr", &self.addr())
            .field("len", &self.len)
            .finish()
    }
}

impl Code {
    /// The name it was installed under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address of its first byte (executable, never writable).
    pub fn addr(&self) -> *const u8 {
        self.exec.addr().as_ptr()
    }

    /// Its length in bytes (as installed; the allocation may be larger).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for code of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address `offset` bytes in, as a code pointer.
    ///
    /// # Errors
    /// [`TierError::Code`] when `offset` is not inside the code.
    pub fn ptr_at(&self, offset: usize) -> Result<*const c_void> {
        if offset >= self.len {
            return Err(TierError::Code(format!(
                "offset {offset} is outside {} ({} bytes)",
                self.name, self.len
            )));
        }
        Ok(self.addr().wrapping_add(offset).cast())
    }

    /// True if `addr` lies inside the code.
    pub fn contains(&self, addr: *const c_void) -> bool {
        let a = addr as usize;
        let base = self.addr() as usize;
        a >= base && a < base + self.len
    }

    /// The code at `offset` as a typed function pointer.
    ///
    /// # Safety
    /// `F` must be a function pointer type whose convention and signature
    /// are exactly those of the code at `offset`, and the result must not be
    /// called after this `Code` is dropped.
    ///
    /// # Panics
    /// If `offset` is outside the code, or `F` is not pointer-sized.
    pub unsafe fn as_fn<F: Copy>(&self, offset: usize) -> F {
        let p = self.ptr_at(offset).expect("offset inside the code");
        let p = NonNull::new(p.cast_mut()).expect("code is never at address 0");
        // SAFETY: forwarded contract.
        unsafe { crate::code::callable_as::<F>(p) }
    }
}
