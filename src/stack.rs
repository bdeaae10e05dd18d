//! The native stack that every tier shares, and the limit all of them obey.
//!
//! On one thread the interpreter, compiled code, C code and callbacks from C
//! into the interpreter all run on the same native stack. Counting calls in
//! one of them (the interpreter's depth, say) protects nothing: C → interpreter
//! → C recursion, or compiled code calling itself, runs out of stack without
//! ever reaching such a count, and the process dies. So tierbridge measures
//! the stack itself, as wasmtime does: each thread has a **limit**, the lowest
//! address of its stack plus a **reserve** ([`DEFAULT_RESERVE`], or
//! [`set_reserve`]), and these places check the stack pointer against it:
//!
//! - every call the reference interpreter makes, and every call compiled code
//!   from its JIT makes (through [`call_guard_begin`](crate::host::call_guard_begin),
//!   which any JIT can use the same way);
//! - every entry from native code into a [`Host`](crate::host::Host) through
//!   an entry point ([`EntryError::StackExhausted`](crate::host::EntryError::StackExhausted));
//! - every exit call whose arguments need more than a page of stack
//!   ([`ThunkError::StackExhausted`](crate::thunks::ThunkError::StackExhausted)).
//!
//! Running out is then a typed error where it happens, which travels like
//! any other failure to the outermost host call (a trap in the interpreter, a
//! failed callback for C), instead of a crash. The reserve is what code may
//! use after a check without checking again: C functions called through an
//! exit stub, the frames between two checks, formatting the error.
//!
//! The stack's bounds come from the operating system the first time a thread
//! checks (Linux: `pthread_getattr_np`; macOS: `pthread_get_stackaddr_np`;
//! elsewhere they are unknown and every check passes). A stack pointer
//! outside those bounds (a coroutine or fiber on a stack of its own) passes
//! every check, unless the program declares that stack with [`set_bounds`]
//! while it runs there.
//!
//! Where no check runs (code of your own, C recursing by itself), the stack's
//! guard page still stops an overflow: frames larger than a page that
//! tierbridge makes (exit calls with large arguments, on both backends) touch
//! their pages in order, so a copy never jumps past the guard page. Rust
//! reports such an overflow and aborts the process.
//!
//! ```
//! // How much of this thread's stack is left above the limit.
//! let left = tierbridge::stack::remaining();
//! assert!(left.is_none_or(|n| n > 0));
//! // A check that asks for more than the whole address space fails.
//! if left.is_some() {
//!     assert!(tierbridge::stack::check(usize::MAX / 2).is_err());
//! }
//! ```

use std::cell::Cell;

use thiserror::Error;

/// The default reserve: bytes of stack above the thread's lowest address
/// that no check hands out, kept for what runs between two checks.
pub const DEFAULT_RESERVE: usize = 128 * 1024;

/// Frames up to this size (exit calls' argument areas) are made without a
/// check: a first touch within a page of the last one finds the guard page.
pub(crate) const UNCHECKED_FRAME: usize = 4096;

/// A check found too little stack left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error(
    "native stack exhausted: {need} bytes wanted, {available} left above the stack limit (reserve {reserve} bytes)"
)]
#[non_exhaustive]
pub struct StackExhausted {
    /// Bytes the check asked for.
    pub need: usize,
    /// Bytes between the stack pointer and the limit at the check.
    pub available: usize,
    /// The thread's reserve at the time.
    pub reserve: usize,
}

/// One thread's stack as its checks see it.
#[derive(Clone, Copy)]
struct Limits {
    /// `low + reserve`: a check of `need` bytes passes when
    /// `sp - need >= limit`. `usize::MAX` until the thread first checks.
    limit: usize,
    /// The highest address; `usize::MAX` when the bounds are unknown.
    high: usize,
    /// The lowest address; 0 when the bounds are unknown.
    low: usize,
    reserve: usize,
}

const UNSET: Limits = Limits {
    limit: usize::MAX,
    high: usize::MAX,
    low: 0,
    reserve: DEFAULT_RESERVE,
};

thread_local! {
    static LIMITS: Cell<Limits> = const { Cell::new(UNSET) };
}

/// The stack pointer, near enough: the caller's frame.
#[inline(always)]
fn stack_pointer() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let sp: usize;
        // SAFETY: reads rsp into a register; touches no memory or flags.
        unsafe {
            std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
        };
        sp
    }
    #[cfg(target_arch = "aarch64")]
    {
        let sp: usize;
        // SAFETY: reads sp into a register; touches no memory or flags.
        unsafe {
            std::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags))
        };
        sp
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let here = 0u8;
        std::hint::black_box(&here) as *const u8 as usize
    }
}

fn limits_for(bounds: Option<(usize, usize)>, reserve: usize) -> Limits {
    match bounds {
        Some((low, high)) => Limits {
            // A small stack (a C thread's, musl's 128 KiB default) keeps at
            // most a quarter of itself in reserve, so that calls can run
            // on it at all; `usize::MAX` is the unset mark, never a limit.
            limit: low
                .saturating_add(reserve.min((high - low) / 4))
                .min(usize::MAX - 1),
            high,
            low,
            reserve,
        },
        // Unknown: every check passes (`sp - need >= 0`, `sp < MAX`).
        None => Limits {
            limit: 0,
            high: usize::MAX,
            low: 0,
            reserve,
        },
    }
}

/// The thread's limits, read from the operating system on first use.
#[inline(always)]
fn limits() -> Limits {
    let l = LIMITS.with(Cell::get);
    if l.limit == usize::MAX {
        return first_limits();
    }
    l
}

#[cold]
#[inline(never)]
fn first_limits() -> Limits {
    let l = limits_for(crate::sys::thread_stack_bounds(), DEFAULT_RESERVE);
    LIMITS.set(l);
    l
}

/// Checks that `need` more bytes of stack are available on this thread
/// below the current frame, the reserve kept.
///
/// # Errors
/// [`StackExhausted`] when they are not.
#[inline]
pub fn check(need: usize) -> Result<(), StackExhausted> {
    let sp = stack_pointer();
    // One load and one compare in the common case; out of line, the first
    // check on a thread (the limit is `usize::MAX` until then) and whether
    // `sp` is on the known stack at all (else the check passes).
    if sp.saturating_sub(need) < LIMITS.with(|c| c.get().limit) {
        return exhausted(sp, need);
    }
    Ok(())
}

/// The fast half of `check(0)`: false means the check passes; true means
/// `check(0)` must decide (the stack pointer is below the limit, or this
/// thread has not checked yet). For hot paths that want nothing kept live
/// across the decision: branch on this, and call `check` out of line.
#[inline(always)]
pub(crate) fn maybe_exhausted() -> bool {
    stack_pointer() < LIMITS.with(|c| c.get().limit)
}

#[cold]
#[inline(never)]
fn exhausted(sp: usize, need: usize) -> Result<(), StackExhausted> {
    let l = limits();
    if sp.saturating_sub(need) >= l.limit || sp < l.low || sp >= l.high {
        // Another stack (a fiber's): not ours to judge.
        return Ok(());
    }
    Err(StackExhausted {
        need,
        available: sp.saturating_sub(l.limit),
        reserve: l.reserve,
    })
}

/// Bytes between the stack pointer and this thread's limit (0 when already
/// past it); `None` when the thread's stack bounds are unknown, or the
/// stack pointer is outside them.
pub fn remaining() -> Option<usize> {
    let sp = stack_pointer();
    let l = limits();
    (sp >= l.low && sp < l.high && l.high != usize::MAX).then(|| sp.saturating_sub(l.limit))
}

/// This thread's stack bounds as the checks use them, `(lowest, highest)`
/// address; `None` when unknown.
pub fn bounds() -> Option<(usize, usize)> {
    let l = limits();
    (l.high != usize::MAX).then_some((l.low, l.high))
}

/// Declares the stack this thread runs on from now: `Some((lowest,
/// highest))` for a stack of the program's own (a coroutine's, a fiber's; set
/// it when switching to that stack and back when switching away), or `None`
/// to turn the checks off on this thread. Wrong bounds cannot cause
/// undefined behaviour, only checks that fail too early or pass too late.
pub fn set_bounds(bounds: Option<(usize, usize)>) {
    let reserve = limits().reserve;
    LIMITS.set(limits_for(bounds, reserve));
}

/// Sets this thread's reserve (bytes no check hands out; see the module
/// docs), for example larger for C code with deep recursion of its own. On
/// a stack smaller than four times the reserve, a quarter of the stack is
/// kept instead.
pub fn set_reserve(bytes: usize) {
    let l = limits();
    let bounds = (l.high != usize::MAX).then_some((l.low, l.high));
    LIMITS.set(limits_for(bounds, bytes));
}

/// This thread's reserve.
pub fn reserve() -> usize {
    limits().reserve
}

/// Touches the `need` bytes of stack below the caller's frame a page at a
/// time, top down, so that a later frame of that size finds the guard page
/// instead of jumping past it (for stacks whose bounds are unknown).
#[inline(never)]
pub(crate) fn probe(need: usize) {
    probe_pages(need.div_ceil(UNCHECKED_FRAME));
}

/// One page of stack per level: each frame is larger than a page, so the
/// compiler's own stack probes touch it in order.
#[inline(never)]
fn probe_pages(pages: usize) {
    let mut page = [0u8; UNCHECKED_FRAME];
    std::hint::black_box(&mut page);
    if pages > 1 {
        probe_pages(pages - 1);
    }
    // Keeps the frame alive across the call (no tail call).
    std::hint::black_box(&page);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_knows_its_stack_and_checks_against_it() {
        // A thread with a 1 MiB stack: the bounds bracket a local, the
        // remaining bytes are below the size, and a check for more fails.
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| {
                let (low, high) = bounds().expect("Linux tells");
                let here = 0u8;
                let at = &here as *const u8 as usize;
                assert!(low < at && at < high);
                assert!(high - low >= 1 << 20);
                // (The C library may hand out a larger cached stack.)
                let left = remaining().unwrap();
                assert!(left < high - low && left > (high - low) / 2, "{left}");
                assert!(check(left / 2).is_ok());
                let e = check(left + 4096).unwrap_err();
                assert_eq!(e.need, left + 4096);
                assert_eq!(e.reserve, DEFAULT_RESERVE);
                // A larger reserve leaves less.
                // (At most a quarter of the stack is kept.)
                set_reserve(DEFAULT_RESERVE + 64 * 1024);
                let less = remaining().unwrap();
                assert!(less + 64 * 1024 <= left + 4096 && less + 64 * 1024 + 4096 >= left);
                set_reserve(usize::MAX);
                let quarter = remaining().unwrap();
                let kept = (high - low) / 4;
                assert!(quarter + kept <= left + DEFAULT_RESERVE + 4096, "{quarter}");
                assert!(quarter + kept + 4096 >= left + DEFAULT_RESERVE, "{quarter}");
                assert_eq!(reserve(), usize::MAX, "kept, not reset by the next check");
                // Another stack: checks pass; no bounds: checks pass.
                set_bounds(Some((0x1000, 0x2000)));
                assert!(check(usize::MAX / 4).is_ok());
                assert_eq!(remaining(), None);
                set_bounds(None);
                assert!(check(usize::MAX / 4).is_ok());
                assert_eq!(bounds(), None);
                probe(64 * 1024);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
