//! Executable memory for generated code: slabs, never writable and executable
//! at once.
//!
//! Two strategies ([`ExecStrategy`]):
//! - **write, then protect**: code is written into pages mapped read-write,
//!   which are then made read+execute with `mprotect`. Page-granular: each
//!   allocation takes whole pages of a slab (so a page is never written while
//!   other code in it may run).
//! - **dual mapping**: a slab is an in-memory file mapped twice, once
//!   read-write and once read+execute. Code is written through the first view
//!   and run from the second; no system call per allocation, 16-byte granular.
//!   For kernels that refuse to make written anonymous pages executable.
//!
//! Freed allocations go to a free list and are reused; slabs are never
//! unmapped while the [`ExecMemory`] lives.
//!
//! Slabs are placed just below this library's own code when that address
//! range is free (a hint, never forced): entry thunks call dispatchers that
//! live in the same binary, and on the machine measured, control transfers
//! between far-apart code (the default `mmap` area and a PIE binary) made
//! the call path markedly slower (ABI.md, "Executable memory").

use std::collections::BTreeMap;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use memmap2::{MmapMut, MmapOptions};

use super::{BackendKind, Result, ThunkError};
use crate::sys::exec as os;
use crate::sys::exec::Mapping;

/// How executable memory is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExecStrategy {
    /// Write into read-write pages, then make them read+execute.
    WriteThenProtect,
    /// Write through a read-write view of pages that a second view executes.
    DualMapping,
}

impl fmt::Display for ExecStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExecStrategy::WriteThenProtect => "write-then-protect",
            ExecStrategy::DualMapping => "dual-mapping",
        })
    }
}

impl std::str::FromStr for ExecStrategy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "write-then-protect" => Ok(ExecStrategy::WriteThenProtect),
            "dual-mapping" => Ok(ExecStrategy::DualMapping),
            _ => Err(format!(
                "unknown strategy {s:?} (expected write-then-protect or dual-mapping)"
            )),
        }
    }
}

const SLAB_BYTES: usize = 256 * 1024;
const ALIGN: usize = 16;

fn os_err(what: &str, e: std::io::Error) -> ThunkError {
    ThunkError::Unsupported {
        backend: BackendKind::Generated,
        reason: format!("executable memory: {what}: {e}"),
    }
}

enum Slab {
    /// Anonymous read-write mapping whose pages are flipped to read+execute.
    Protect { map: Mapping },
    /// Read-write and read+execute views of one memfd.
    Dual { rw: MmapMut, rx: Mapping },
}

/// Where the next slab of any [`ExecMemory`] in the process should go (0:
/// anywhere): the first 256 MiB below this library's code on a 2 MiB
/// boundary, each later one a slab lower, so slabs of several allocators
/// never ask for the same range. No preference when that would be under
/// 1 GiB (e.g. a non-PIE binary loaded low).
fn next_slab_hint() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);
    if NEXT.load(Ordering::Relaxed) == usize::MAX {
        let here = next_slab_hint as *const () as usize;
        let first = here
            .checked_sub(256 << 20)
            .map_or(0, |h| h & !((2 << 20) - 1));
        // Only the first caller's value counts (they are all the same).
        let _ = NEXT.compare_exchange(usize::MAX, first, Ordering::Relaxed, Ordering::Relaxed);
    }
    // Hand out the current hint and move the next one a slab down, until the
    // hints would go under 1 GiB; from then on, no preference.
    NEXT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
        (h >= (1 << 30) + SLAB_BYTES).then(|| h - SLAB_BYTES)
    })
    .unwrap_or(0)
}

struct Inner {
    slabs: Vec<Slab>,
    /// The slab small allocations are cut from (`None` before the first).
    current: Option<usize>,
    /// Bytes used in it.
    used: usize,
    /// Freed allocations by rounded size: (slab index, offset).
    free: BTreeMap<usize, Vec<(usize, usize)>>,
    /// Bytes of the slabs, and of the allocations in use (rounded sizes).
    mapped_bytes: usize,
    used_bytes: usize,
}

/// A slab allocator of executable memory.
pub(crate) struct ExecMemory {
    strategy: ExecStrategy,
    page: usize,
    inner: Mutex<Inner>,
}

// SAFETY: the maps are reached under the mutex; their pages are written only
// by the one `install` that was handed them (disjoint ranges), and otherwise
// handed out as read+execute addresses (never written through).
unsafe impl Send for ExecMemory {}
// SAFETY: see Send.
unsafe impl Sync for ExecMemory {}

/// Executable code owned by its creator; released on drop.
pub struct ExecCode {
    mem: Arc<ExecMemory>,
    slab: usize,
    offset: usize,
    size: usize,
    addr: NonNull<u8>,
    /// Bytes of code (the rest of `size` is padding).
    len: usize,
    /// What publishing it was prepared with (`crate::visibility::prepare`).
    prepared: crate::visibility::Prepared,
    /// Its name and unwind rows as tools see them, once published.
    published: Option<crate::visibility::Published>,
}

// SAFETY: an ExecCode is an address of read+execute memory that nothing writes
// while it is alive, plus an Arc and owned data (its prepared tables, its
// publication, itself Send and Sync); its Drop only touches the allocator's
// mutex and unpublishes.
unsafe impl Send for ExecCode {}
// SAFETY: see Send; shared access only reads the address.
unsafe impl Sync for ExecCode {}

impl ExecCode {
    /// The code's executable address.
    pub(crate) fn addr(&self) -> NonNull<u8> {
        self.addr
    }

    /// Publishes the code to profilers, debuggers and the unwinder
    /// (`crate::visibility`) under `name`, until it is dropped; `unwind`
    /// must be the description it was installed with (what was prepared
    /// for jitdump came from that one).
    pub(crate) fn publish(&mut self, name: &str, unwind: &crate::visibility::Unwind) {
        // Only needed now: the record is written during the publication.
        let perf = self.prepared.perf.take();
        debug_assert!(
            perf.is_none()
                || crate::visibility::prepare(self.len, unwind).perf.as_deref() == perf.as_deref(),
            "published with another unwind description than installed with"
        );
        self.published = Some(crate::visibility::publish(&crate::visibility::Region {
            name,
            addr: self.addr.as_ptr() as usize,
            len: self.len,
            unwind,
            perf: perf.as_deref(),
        }));
    }
}

impl fmt::Debug for ExecCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExecCode({:p}, {} bytes)", self.addr, self.size)
    }
}

impl Drop for ExecCode {
    fn drop(&mut self) {
        // Unpublished first: the memory may be handed out again below.
        drop(self.published.take());
        let mut inner = self.mem.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.used_bytes -= self.size;
        inner
            .free
            .entry(self.size)
            .or_default()
            .push((self.slab, self.offset));
    }
}

/// The instruction-cache hook: x86-64 keeps instruction fetch coherent with
/// stores, so there is nothing to do; other targets would flush here.
fn flush_icache(_addr: *const u8, _len: usize) {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

impl ExecMemory {
    /// Executable memory with `strategy`, checked by running a tiny function.
    pub(crate) fn new(strategy: ExecStrategy) -> Result<Arc<ExecMemory>> {
        let mem = Arc::new(ExecMemory {
            strategy,
            page: os::page_size(),
            inner: Mutex::new(Inner {
                slabs: Vec::new(),
                current: None,
                used: 0,
                free: BTreeMap::new(),
                mapped_bytes: 0,
                used_bytes: 0,
            }),
        });
        mem.self_test()?;
        Ok(mem)
    }

    /// The first strategy that works: dual mapping, then write-then-protect.
    #[cfg(tierbridge_codegen)]
    pub(crate) fn probe() -> std::result::Result<Arc<ExecMemory>, String> {
        let mut why = Vec::new();
        for s in [ExecStrategy::DualMapping, ExecStrategy::WriteThenProtect] {
            match ExecMemory::new(s) {
                Ok(m) => return Ok(m),
                Err(e) => why.push(format!("{s}: {e}")),
            }
        }
        Err(why.join("; "))
    }

    pub(crate) fn strategy(&self) -> ExecStrategy {
        self.strategy
    }

    /// Bytes of executable memory in use (allocations, rounded to the
    /// strategy's granule) and mapped (every slab, none ever unmapped while
    /// the allocator lives).
    pub(crate) fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.used_bytes, inner.mapped_bytes)
    }

    fn self_test(self: &Arc<Self>) -> Result<()> {
        #[cfg(target_arch = "x86_64")]
        {
            // mov eax, 0x2a ; ret
            let code = self.install(
                &[0xb8, 0x2a, 0, 0, 0, 0xc3],
                &crate::visibility::Unwind::Unknown,
            )?;
            // SAFETY: the bytes above are a complete function returning 42.
            let f: extern "C" fn() -> u32 = unsafe { crate::code::callable_as(code.addr().cast()) };
            if f() != 42 {
                return Err(ThunkError::Internal(
                    "executable memory self-test returned the wrong value".into(),
                ));
            }
        }
        Ok(())
    }

    fn new_slab(&self, hint: usize, bytes: usize) -> Result<Slab> {
        match self.strategy {
            ExecStrategy::WriteThenProtect => {
                let map = Mapping::new(hint, bytes, None).map_err(|e| os_err("mmap", e))?;
                Ok(Slab::Protect { map })
            }
            ExecStrategy::DualMapping => {
                let file = os::code_file(bytes).map_err(|e| os_err("memfd_create", e))?;
                // SAFETY: the file is private to this process (an unnamed memfd);
                // nobody else can truncate or modify it under the maps.
                let rw = unsafe { MmapOptions::new().len(bytes).populate().map_mut(&file) }
                    .map_err(|e| os_err("mmap (read-write view)", e))?;
                let rx = Mapping::new(hint, bytes, Some(&file))
                    .map_err(|e| os_err("mmap (executable view)", e))?;
                Ok(Slab::Dual { rw, rx })
            }
        }
    }

    fn granule(&self) -> usize {
        match self.strategy {
            ExecStrategy::WriteThenProtect => self.page,
            ExecStrategy::DualMapping => ALIGN,
        }
    }

    /// Copies `code` into executable memory and returns it, read+execute,
    /// prepared to be published with `unwind` ([`ExecCode::publish`]).
    /// Never maps anything writable and executable at once.
    pub(crate) fn install(
        self: &Arc<Self>,
        code: &[u8],
        unwind: &crate::visibility::Unwind,
    ) -> Result<ExecCode> {
        self.install_with(code.len(), unwind, |_, buf| {
            buf.copy_from_slice(code);
            true
        })
    }

    /// Reserves `len` bytes of executable memory (and any room after them
    /// that publishing with `unwind` needs, left as `int3`), lets `write`
    /// fill them through a writable view (given the final executable address first,
    /// for position-dependent code; the bytes start as `int3`), then
    /// publishes them read+execute — unless `write` returns false (or
    /// panics): then the allocation is given back without being made
    /// executable (write-then-protect) or handed out (dual mapping), and the
    /// result is [`ThunkError::Internal`]. Never maps anything writable and
    /// executable at once.
    pub(crate) fn install_with(
        self: &Arc<Self>,
        len: usize,
        unwind: &crate::visibility::Unwind,
        write: impl FnOnce(NonNull<u8>, &mut [u8]) -> bool,
    ) -> Result<ExecCode> {
        let prepared = crate::visibility::prepare(len, unwind);
        let size = (len + prepared.tail)
            .max(1)
            .next_multiple_of(self.granule());
        // Only the allocation happens under the lock; the writing (and, for
        // write-then-protect, the two `mprotect` calls) touch memory this
        // allocation alone owns, so threads installing code overlap there.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let reused = inner.free.get_mut(&size).and_then(Vec::pop);
        let (slab, offset) = match reused {
            Some(at) => at,
            None if size > SLAB_BYTES => {
                // A slab of its own, rounded to whole pages; the bump slab
                // stays the one it was.
                let bytes = size.next_multiple_of(self.page);
                let s = self.new_slab(0, bytes)?;
                inner.slabs.push(s);
                inner.mapped_bytes += bytes;
                (inner.slabs.len() - 1, 0)
            }
            None => {
                if inner.current.is_none() || inner.used + size > SLAB_BYTES {
                    let s = self.new_slab(next_slab_hint(), SLAB_BYTES)?;
                    inner.slabs.push(s);
                    inner.mapped_bytes += SLAB_BYTES;
                    inner.current = Some(inner.slabs.len() - 1);
                    inner.used = 0;
                }
                let current = inner.current.expect("set above");
                let at = (current, inner.used);
                inner.used += size;
                at
            }
        };
        inner.used_bytes += size;
        // Addresses inside the mappings, which stay put while `self` lives
        // (the `Slab` values may move when the vector grows; their pages do not).
        let (write_at, exec_at) = match &mut inner.slabs[slab] {
            Slab::Protect { map } => (map.as_ptr(), map.as_ptr()),
            Slab::Dual { rw, rx } => (rw.as_mut_ptr(), rx.as_ptr()),
        };
        drop(inner);
        let write_at = write_at.wrapping_add(offset);
        let addr =
            NonNull::new(exec_at.wrapping_add(offset)).expect("a mapping is never at address 0");
        // Made first, so that a failure (or a panic in `write`) below gives
        // the allocation back.
        let installed = ExecCode {
            mem: self.clone(),
            slab,
            offset,
            size,
            addr,
            len,
            prepared,
            published: None,
        };
        if self.strategy == ExecStrategy::WriteThenProtect {
            // SAFETY: [offset, offset+size) are whole pages of this slab that
            // this allocation alone owns and no live code occupies (fresh, or
            // freed: the owner promised no call is inside), so making them
            // writable cannot break running code, and nothing else writes them.
            unsafe { os::protect(write_at, size, false) }
                .map_err(|e| os_err("mprotect (write)", e))?;
        }
        // SAFETY: [write_at, write_at+size) is writable now (made so above,
        // or the read-write view of a dual mapping), belongs to this
        // allocation alone, and no code runs there (fresh, or freed with no
        // call inside); the slice ends before `write` returns.
        let buf = unsafe { std::slice::from_raw_parts_mut(write_at, size) };
        buf.fill(0xcc);
        if !write(addr, &mut buf[..len]) {
            // `installed` drops: the allocation goes back to the free list.
            return Err(ThunkError::Internal("the code's writer gave up".into()));
        }
        if self.strategy == ExecStrategy::WriteThenProtect {
            // SAFETY: as above: these pages are this allocation's alone.
            unsafe { os::protect(write_at, size, true) }
                .map_err(|e| os_err("mprotect (execute)", e))?;
        }
        flush_icache(addr.as_ptr(), len);
        Ok(installed)
    }
}

impl fmt::Debug for ExecMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecMemory")
            .field("strategy", &self.strategy)
            .finish()
    }
}
