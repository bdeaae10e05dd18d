//! Frames of slots handed across tiers: [`FrameState`] (what an interpreter
//! sees, from a per-thread pool) and [`RawFrame`] (what compiled code reads
//! and writes, a `#[repr(C)]` contract).

use std::cell::RefCell;
use std::fmt;

/// An interpreter frame as slots: the position, the locals, then the operand
/// stack. Its buffer comes from a per-thread pool and goes back to it when
/// the frame is dropped, so handing frames across tiers allocates nothing
/// once the pool holds a buffer as large as the frames in use.
pub struct FrameState {
    pc: u32,
    locals: u32,
    slots: Vec<u64>,
}

/// Buffers of dropped frames, reused by the next ones on this thread (a few
/// at most: one per OSR or deoptimization nested at once).
const POOL_MAX: usize = 16;

thread_local! {
    static POOL: RefCell<Vec<Vec<u64>>> = const { RefCell::new(Vec::new()) };
}

impl FrameState {
    /// A frame at `pc` with `locals`, then `stack` (the operand stack,
    /// bottom first; empty at most loop headers).
    pub fn new(pc: u32, locals: &[u64], stack: &[u64]) -> FrameState {
        let mut f = FrameState::with_capacity(locals.len() + stack.len());
        f.set(pc, locals, stack);
        f
    }

    /// An empty frame whose buffer holds at least `cap` slots.
    pub(crate) fn with_capacity(cap: usize) -> FrameState {
        let mut slots = POOL
            .try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.pop()))
            .ok()
            .flatten()
            .unwrap_or_default();
        slots.clear();
        slots.reserve(cap);
        FrameState {
            pc: 0,
            locals: 0,
            slots,
        }
    }

    /// Makes this frame `pc`, `locals`, `stack`.
    pub(crate) fn set(&mut self, pc: u32, locals: &[u64], stack: &[u64]) {
        self.pc = pc;
        self.locals = locals.len() as u32;
        self.slots.clear();
        self.slots.extend_from_slice(locals);
        self.slots.extend_from_slice(stack);
    }

    /// The position (a loop header for OSR, the resume point after a
    /// deoptimization), in the interpreter's own units.
    pub fn pc(&self) -> u32 {
        self.pc
    }

    /// The locals (parameters first, as the interpreter lays them out).
    pub fn locals(&self) -> &[u64] {
        &self.slots[..self.locals as usize]
    }

    /// The operand stack, bottom first.
    pub fn stack(&self) -> &[u64] {
        &self.slots[self.locals as usize..]
    }

    /// Every slot: the locals, then the operand stack.
    pub fn slots(&self) -> &[u64] {
        &self.slots
    }

    /// A [`RawFrame`] over this frame's buffer, room for at least `cap`
    /// slots, and result slots at `ret`.
    pub(crate) fn raw(&mut self, cap: usize, ret: *mut u64) -> RawFrame {
        let len = self.slots.len();
        self.slots.resize(cap.max(len), 0);
        RawFrame {
            pc: self.pc,
            locals: self.locals,
            len: len as u32,
            cap: self.slots.len() as u32,
            slots: self.slots.as_mut_ptr(),
            ret,
        }
    }

    /// Takes back what compiled code wrote into `raw` (made by
    /// [`FrameState::raw`] from this frame), checking it.
    pub(crate) fn take_raw(&mut self, raw: &RawFrame) -> Result<(), String> {
        if raw.slots != self.slots.as_mut_ptr() {
            return Err("compiled code changed the frame's slot pointer".into());
        }
        if raw.len > raw.cap || raw.locals > raw.len || raw.cap as usize != self.slots.len() {
            return Err(format!(
                "compiled code left a frame of {} slots ({} locals) in a buffer of {}",
                raw.len, raw.locals, raw.cap
            ));
        }
        self.pc = raw.pc;
        self.locals = raw.locals;
        self.slots.truncate(raw.len as usize);
        Ok(())
    }

    /// A copy of a frame compiled code described (in its own memory).
    ///
    /// # Safety
    /// `raw.slots` points to `raw.len` readable slots.
    pub(crate) unsafe fn from_raw(raw: &RawFrame) -> Result<FrameState, String> {
        if raw.locals > raw.len {
            return Err(format!(
                "compiled code described a frame of {} slots with {} locals",
                raw.len, raw.locals
            ));
        }
        let all = if raw.len == 0 {
            &[][..]
        } else {
            // SAFETY: by this function's contract.
            unsafe { std::slice::from_raw_parts(raw.slots, raw.len as usize) }
        };
        let (locals, stack) = all.split_at(raw.locals as usize);
        Ok(FrameState::new(raw.pc, locals, stack))
    }
}

impl Clone for FrameState {
    fn clone(&self) -> Self {
        FrameState::new(self.pc, self.locals(), self.stack())
    }
}

impl Drop for FrameState {
    fn drop(&mut self) {
        let slots = std::mem::take(&mut self.slots);
        let _ = POOL.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut()
                && p.len() < POOL_MAX
            {
                p.push(slots);
            }
        });
    }
}

impl fmt::Debug for FrameState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameState")
            .field("pc", &self.pc)
            .field("locals", &self.locals())
            .field("stack", &self.stack())
            .finish()
    }
}

impl PartialEq for FrameState {
    fn eq(&self, other: &Self) -> bool {
        self.pc == other.pc && self.locals == other.locals && self.slots == other.slots
    }
}

/// A frame as compiled code sees it (ABI.md, "Tiers"; its layout is checked
/// by a test). Offsets: `pc` 0, `locals` 4, `len` 8, `cap` 12, `slots` 16,
/// `ret` 24; 32 bytes.
///
/// - An **OSR entry** ([`OsrEntryFn`]) gets one filled by the table: `pc` is
///   the loop header, `slots[..len]` the locals then the operand stack, room
///   for `cap` slots, and `ret` room for the function's result slots. It
///   either runs the call to its end, writes the result slots to `ret` and
///   returns [`OSR_COMPLETED`], or deoptimizes: it rewrites `pc`, `locals`,
///   `len` (at most `cap`) and `slots[..len]` and returns [`OSR_DEOPT`].
/// - **Compiled code that deoptimizes** describes its live state in one of
///   its own (`cap` is not read) and passes it to the table's
///   [`DeoptFn`](super::DeoptFn), which writes the result slots to `ret`.
#[repr(C)]
#[derive(Debug)]
pub struct RawFrame {
    /// The position.
    pub pc: u32,
    /// How many of the slots are locals (the rest is the operand stack).
    pub locals: u32,
    /// Slots in use.
    pub len: u32,
    /// Slots the buffer holds.
    pub cap: u32,
    /// The slots.
    pub slots: *mut u64,
    /// The result slots.
    pub ret: *mut u64,
}

/// An OSR entry: `unsafe extern "C" fn(frame: *mut RawFrame) -> u32`,
/// returning [`OSR_COMPLETED`] or [`OSR_DEOPT`] (see [`RawFrame`]).
pub type OsrEntryFn = unsafe extern "C" fn(frame: *mut RawFrame) -> u32;

/// An OSR entry ran the call to its end; the result slots are in `ret`.
pub const OSR_COMPLETED: u32 = 0;
/// An OSR entry deoptimized; the frame says where the interpreter resumes.
pub const OSR_DEOPT: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiled code reads these at fixed offsets (the docs above, ABI.md).
    #[test]
    fn raw_frame_layout_is_the_documented_one() {
        assert_eq!(std::mem::offset_of!(RawFrame, pc), 0);
        assert_eq!(std::mem::offset_of!(RawFrame, locals), 4);
        assert_eq!(std::mem::offset_of!(RawFrame, len), 8);
        assert_eq!(std::mem::offset_of!(RawFrame, cap), 12);
        assert_eq!(std::mem::offset_of!(RawFrame, slots), 16);
        assert_eq!(std::mem::offset_of!(RawFrame, ret), 24);
        assert_eq!(size_of::<RawFrame>(), 32);
    }

    #[test]
    fn a_frame_splits_locals_from_the_stack_and_reuses_its_buffer() {
        let f = FrameState::new(7, &[1, 2, 3], &[4, 5]);
        assert_eq!(
            (f.pc(), f.locals(), f.stack()),
            (7, &[1, 2, 3][..], &[4, 5][..])
        );
        let p = f.slots.as_ptr();
        drop(f);
        let g = FrameState::new(1, &[9], &[]);
        assert_eq!(g.slots.as_ptr(), p, "the pooled buffer is reused");
        assert_eq!((g.locals(), g.stack()), (&[9][..], &[][..]));
    }
}
