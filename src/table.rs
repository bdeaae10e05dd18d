//! Append-only tables indexed by small integers, read without locks: an
//! [`IdTable`] keeps values, a [`PtrTable`] pointers to values kept
//! elsewhere (a slot of 8 bytes, set with a plain store).
//!
//! Chunk `k` holds `64 << k` entries, so indices up to `u32::MAX` need at most
//! 26 chunks. Chunks are allocated on first use and never move, so a shared
//! reference to an entry lives as long as the table.
//!
//! A chunk is allocated zeroed, and an all-zero slot is an empty one, so a
//! chunk's pages are only written (and, for a chunk large enough to be mapped
//! fresh, only faulted in) as its entries are set: the table's memory follows
//! the entries in use, not its capacity. Reading a slot on a page nothing
//! wrote yet would fault the page in too (once to read, again to write), so
//! the table keeps a bound that no set slot is at or above, and a lookup at
//! or above it does not touch the slot. The bound is the end of the 4 KiB of
//! the highest slot set (every slot whose state is in the same 4 KiB as that
//! slot's state, which setting it wrote, is below it): read without
//! touching a fresh page, and raised once per 4 KiB of slots instead of once
//! per slot when entries are set in order (an atomic read-modify-write is
//! among the dearest things a new signature does).

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
#[cfg(tierbridge_codegen)]
use std::ptr::NonNull;
use std::sync::OnceLock;
#[cfg(tierbridge_codegen)]
use std::sync::atomic::AtomicPtr;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

const FIRST: usize = 64;
const CHUNKS: usize = 27;

/// The states of a slot. `EMPTY` must be zero: chunks are allocated zeroed.
const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

/// One entry: its state and, once `READY`, its value (never changed again).
struct Slot<T> {
    state: AtomicU8,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// The chunks of slots of a table and its bound (see the module docs).
/// `S` is a slot type whose all-zero bytes are a valid empty slot.
struct Chunks<S> {
    chunks: [OnceLock<Box<[S]>>; CHUNKS],
    /// No slot at or above it is set (or being set); the state of every
    /// slot below it is on a page written before (see the module docs).
    above: AtomicU64,
}

impl<S> Default for Chunks<S> {
    fn default() -> Self {
        Chunks {
            chunks: std::array::from_fn(|_| OnceLock::new()),
            above: AtomicU64::new(0),
        }
    }
}

impl<S> Chunks<S> {
    /// Bytes of the chunks allocated so far (whether or not their pages
    /// were touched yet).
    fn allocated_bytes(&self) -> usize {
        self.chunks
            .iter()
            .filter_map(OnceLock::get)
            .map(|c| c.len() * size_of::<S>())
            .sum()
    }

    /// The slot at `index` (its chunk allocated if need be) and how many
    /// slots of its chunk follow it.
    ///
    /// # Safety
    /// All-zero bytes are a valid `S` (an empty slot).
    unsafe fn slot(&self, index: u32) -> (&S, usize) {
        let (k, i) = locate(index);
        let chunk = self.chunks[k].get_or_init(|| {
            let zeroed = Box::<[S]>::new_zeroed_slice(FIRST << k);
            // SAFETY: by this function's contract.
            unsafe { zeroed.assume_init() }
        });
        (&chunk[i], chunk.len() - 1 - i)
    }

    /// The slot at `index` if it may be set: below the bound and in a chunk
    /// already allocated.
    #[inline]
    fn get(&self, index: u32) -> Option<&S> {
        if u64::from(index) >= self.above.load(Ordering::Acquire) {
            return None;
        }
        let (k, i) = locate(index);
        Some(&self.chunks[k].get()?[i])
    }

    /// Raises the bound past `index` if need be, once the state of the slot
    /// at `index` (with `after` slots of its chunk after it) is written, at
    /// address `state` (a slot's state is at the same offset in every
    /// slot): so no reader finds a set index at or above it (a reader below
    /// it that reads the slot too early sees it not set yet, as it would
    /// anyway). Raised to the first slot whose state is not in the same
    /// 4 KiB as this one's (4 KiB is the smallest page of any target), or
    /// the end of the chunk.
    #[inline]
    fn raise(&self, index: u32, state: usize, after: usize) {
        if u64::from(index) >= self.above.load(Ordering::Relaxed) {
            let same_4k = (((state | 4095) - state) / size_of::<S>()).min(after);
            self.above
                .fetch_max(u64::from(index) + 1 + same_4k as u64, Ordering::AcqRel);
        }
    }
}

pub(crate) struct IdTable<T> {
    chunks: Chunks<Slot<T>>,
}

// SAFETY: the table hands out shared references to its values across
// threads, as `OnceLock<T>` does, so it needs `T: Sync`, and `T: Send` since
// a value set by one thread is dropped by whichever thread drops the table.
// A value is written once, by the thread that moved its slot from EMPTY to
// WRITING, and published by the Release store of READY that every reader's
// Acquire load of the state pairs with.
unsafe impl<T: Send + Sync> Sync for IdTable<T> {}

impl<T> Default for IdTable<T> {
    fn default() -> Self {
        IdTable {
            chunks: Chunks::default(),
        }
    }
}

fn locate(index: u32) -> (usize, usize) {
    // Chunk k starts at FIRST * (2^k - 1).
    let scaled = index as usize / FIRST + 1;
    let k = (usize::BITS - 1 - scaled.leading_zeros()) as usize;
    (k, index as usize - FIRST * ((1 << k) - 1))
}

impl<T> Slot<T> {
    fn get(&self) -> Option<&T> {
        if self.state.load(Ordering::Acquire) == READY {
            // SAFETY: READY is stored (Release) only after the value was
            // written, and the value is never written again.
            Some(unsafe { (*self.value.get()).assume_init_ref() })
        } else {
            None
        }
    }
}

impl<T> IdTable<T> {
    /// Bytes of the table's chunks allocated so far (its values' own heap
    /// memory not included).
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.chunks.allocated_bytes()
    }

    /// The slot at `index` (its chunk allocated if need be) and how many
    /// slots of its chunk follow it.
    fn slot(&self, index: u32) -> (&Slot<T>, usize) {
        // SAFETY: an all-zero slot is a valid one: its state is EMPTY (an
        // AtomicU8 of 0) and its value is a `MaybeUninit`, valid for any
        // bytes.
        unsafe { self.chunks.slot(index) }
    }

    /// The entry at `index`, if set.
    pub(crate) fn get(&self, index: u32) -> Option<&T> {
        self.chunks.get(index)?.get()
    }

    /// The entry at `index`: `value` if the entry was not set yet, else the
    /// one already there (and `value` is dropped). A thread that finds
    /// another one setting the entry waits for it: the other thread only
    /// has to move a value that is already made.
    pub(crate) fn get_or_insert(&self, index: u32, value: T) -> &T {
        let (slot, after) = self.slot(index);
        // Straight to the exchange: on a page nothing touched yet, reading
        // the state first would fault the page in twice (for the read, then
        // for the write).
        match slot
            .state
            .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Acquire)
        {
            // SAFETY: moving the state from EMPTY to WRITING gives this
            // thread alone the right to write the value.
            Ok(_) => unsafe { self.publish(index, (slot, after), value) },
            Err(_) => loop {
                if let Some(v) = slot.get() {
                    return v;
                }
                std::thread::yield_now();
            },
        }
    }

    /// Sets the entry at `index` to `value`, for a caller that alone ever
    /// sets that index ([`Arena::push`], which hands each index out once):
    /// no exchange is needed to claim the slot.
    ///
    /// # Safety
    /// No other call of this method or of [`IdTable::get_or_insert`] is ever
    /// made with `index` on this table, before, during or after this one.
    unsafe fn insert_unique(&self, index: u32, value: T) -> &T {
        let (slot, after) = self.slot(index);
        // A plain store: it writes the state's page before `above` lets
        // readers read it, as the exchange does in `get_or_insert`.
        slot.state.store(WRITING, Ordering::Relaxed);
        // SAFETY: by this function's contract, this thread alone writes the
        // slot.
        unsafe { self.publish(index, (slot, after), value) }
    }

    /// Raises `above` past `index` if need be and publishes `value` in
    /// `slot`, the slot at `index` (with `after` slots of its chunk after
    /// it), whose state this thread has just set to WRITING.
    ///
    /// # Safety
    /// This thread alone may write the slot's value (it moved the state to
    /// WRITING itself), and no reader looks at the value before READY.
    unsafe fn publish<'a>(
        &'a self,
        index: u32,
        (slot, after): (&'a Slot<T>, usize),
        value: T,
    ) -> &'a T {
        // Raised before the value is published (readers below the bound
        // wait for READY).
        let state = &slot.state as *const AtomicU8 as usize;
        self.chunks.raise(index, state, after);
        // SAFETY: by this function's contract.
        let v = unsafe { (*slot.value.get()).write(value) };
        slot.state.store(READY, Ordering::Release);
        v
    }
}

/// A value on a cache line (of 64 bytes) of its own, for state that
/// threads write often: unpadded, two such values side by side would pass
/// one line between the cores that write them.
#[repr(align(64))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// How many thread numbers there are ([`thread_number`]).
pub(crate) const THREAD_NUMBERS: usize = 8;

/// This thread's number, below [`THREAD_NUMBERS`]: threads take them in
/// turn when they first ask (one whose locals are being destroyed gets 0).
/// State that threads would otherwise all write on every new signature
/// (an arena's next index, the reference count of a backend's exits, a
/// pool of trampolines) is kept once per number, so threads of different
/// numbers write different cache lines.
pub(crate) fn thread_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % THREAD_NUMBERS;
    }
    MINE.try_with(|n| *n).unwrap_or(0)
}

/// An append-only table filled by [`Arena::push`] alone: each entry is set
/// without an exchange (its index is the pushing thread's own), read without
/// locks, and kept where it was put until the arena is dropped.
///
/// Indices are handed out in blocks of [`BLOCK`] from a shared counter, a
/// block per thread number ([`thread_number`]): threads pushing at once
/// neither take turns at the counter for every entry nor write neighbouring
/// entries (here, and in every other table by the same index) from two
/// cores. A thread pushing alone gets 0, 1, 2, … in order. The indices not
/// handed out yet are the rest of each number's block (fewer than
/// `BLOCK` × [`THREAD_NUMBERS`] in all), and, when two threads of one
/// number (only with more than [`THREAD_NUMBERS`] threads) find its block
/// used up at once, the rest of the block the slower one took.
pub(crate) struct Arena<T> {
    table: IdTable<T>,
    /// The first index no block has yet.
    next: Padded<AtomicU32>,
    /// Per thread number, its block: `next << 32 | end`, the indices
    /// `next..end` not handed out yet (none at first).
    blocks: [Padded<AtomicU64>; THREAD_NUMBERS],
}

/// The indices a thread number takes from an arena at once: 64 entries of 8
/// bytes (a table of pointers by the same index) are 512 bytes, whole cache
/// lines no other number writes.
const BLOCK: u32 = 64;

impl<T> Default for Arena<T> {
    fn default() -> Self {
        Arena {
            table: IdTable::default(),
            next: Padded(AtomicU32::new(0)),
            blocks: std::array::from_fn(|_| Padded(AtomicU64::new(0))),
        }
    }
}

impl<T> Arena<T> {
    /// No index at or above it was handed out yet.
    pub(crate) fn bound(&self) -> u32 {
        self.next.load(Ordering::Relaxed)
    }

    /// Bytes of the arena's chunks allocated so far (its values' own heap
    /// memory not included).
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.table.allocated_bytes()
    }

    /// Appends `value`; its index and the entry.
    pub(crate) fn push(&self, value: T) -> (u32, &T) {
        let block = &self.blocks[thread_number()];
        let mut b = block.load(Ordering::Relaxed);
        let index = loop {
            let (next, end) = ((b >> 32) as u32, b as u32);
            if next < end {
                // The exchange hands `next` to this thread alone (a thread
                // of the same number may be taking from the block too).
                match block.compare_exchange_weak(
                    b,
                    b + (1 << 32),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break next,
                    Err(now) => b = now,
                }
            } else {
                // A new block, whose first index is this thread's; if another
                // thread of this number put a block there meanwhile, this
                // block's other indices go unused.
                let start = self.take();
                let fresh = u64::from(start + 1) << 32 | u64::from(start + BLOCK);
                let _ = block.compare_exchange(b, fresh, Ordering::Relaxed, Ordering::Relaxed);
                break start;
            }
        };
        // SAFETY: `index` was handed to this thread alone (the counter hands
        // each block out once, and each index of a block is taken by one
        // exchange); nothing but `push` sets entries of `table`.
        (index, unsafe { self.table.insert_unique(index, value) })
    }

    /// The first index of a new block.
    fn take(&self) -> u32 {
        // The counter never wraps, so no index is handed out twice (which
        // would make two threads write one slot).
        match self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| {
                k.checked_add(BLOCK)
            }) {
            Ok(start) => start,
            Err(_) => {
                // Not reachable in practice: that many entries (signatures,
                // pieces of code) take far more memory than any process has.
                eprintln!("tierbridge: a table ran out of 32-bit indices; aborting");
                std::process::abort();
            }
        }
    }

    /// The entry at `index`, if it was pushed (and is set already).
    pub(crate) fn get(&self, index: u32) -> Option<&T> {
        self.table.get(index)
    }
}

impl<T> Drop for IdTable<T> {
    fn drop(&mut self) {
        // Only the slots below `above` can be set (the rest need not be read).
        let above = *self.chunks.above.get_mut();
        for (k, chunk) in self.chunks.chunks.iter_mut().enumerate() {
            let Some(chunk) = chunk.get_mut() else {
                continue;
            };
            let start = (FIRST * ((1 << k) - 1)) as u64;
            let used = above.saturating_sub(start).min(chunk.len() as u64) as usize;
            for slot in &mut chunk[..used] {
                if *slot.state.get_mut() == READY {
                    // SAFETY: a READY slot holds a value, dropped once here
                    // (the table is going away; nothing else can reach it).
                    unsafe { slot.value.get_mut().assume_init_drop() };
                }
            }
        }
    }
}

/// A table of pointers to values kept elsewhere, by index: 8 bytes a slot,
/// null for none. Setting an entry is a plain store, not an exchange: for
/// tables where whatever two threads racing to set one index would store
/// does the same (the same value, or equal ones kept as long as the table's
/// readers), so either may win. Its chunks and bound are an [`IdTable`]'s.
/// Only the generated backend keeps one, so it is compiled with it alone.
#[cfg(tierbridge_codegen)]
pub(crate) struct PtrTable<T> {
    chunks: Chunks<AtomicPtr<T>>,
}

#[cfg(tierbridge_codegen)]
impl<T> Default for PtrTable<T> {
    fn default() -> Self {
        PtrTable {
            chunks: Chunks::default(),
        }
    }
}

// SAFETY: the table only keeps and hands out pointers (it never reads or
// drops what they point to) and every slot is an atomic; `T: Sync` because
// the pointers it hands out are read through from any thread, as shared
// references would be.
#[cfg(tierbridge_codegen)]
unsafe impl<T: Sync> Sync for PtrTable<T> {}
// SAFETY: as for Sync.
#[cfg(tierbridge_codegen)]
unsafe impl<T: Sync> Send for PtrTable<T> {}

#[cfg(tierbridge_codegen)]
impl<T> PtrTable<T> {
    /// The pointer at `index`, if one was set. Acquire: what the setter
    /// wrote before it set the pointer is visible through it.
    #[inline]
    pub(crate) fn get(&self, index: u32) -> Option<NonNull<T>> {
        NonNull::new(self.chunks.get(index)?.load(Ordering::Acquire))
    }

    /// Sets the pointer at `index` to `ptr` (Release), whether or not one was
    /// set before.
    pub(crate) fn set(&self, index: u32, ptr: NonNull<T>) {
        // SAFETY: an all-zero `AtomicPtr` is a null pointer, an empty slot.
        let (slot, after) = unsafe { self.chunks.slot(index) };
        // Written before the bound is raised past it, as a state is (the
        // value stored is the one meant; a store of the same pointer again
        // by a racing setter changes nothing).
        slot.store(ptr.as_ptr(), Ordering::Release);
        self.chunks.raise(index, slot.as_ptr() as usize, after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn locate_maps_chunk_boundaries_to_the_start_of_each_chunk() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(63), (0, 63));
        assert_eq!(locate(64), (1, 0));
        assert_eq!(locate(191), (1, 127));
        assert_eq!(locate(192), (2, 0));
        let (k, i) = locate(u32::MAX);
        assert!(k < CHUNKS && i < FIRST << k);
    }

    #[test]
    fn entries_set_once_are_read_back() {
        let t = IdTable::default();
        for i in [0u32, 5, 64, 1000, 100_000] {
            assert_eq!(*t.get_or_insert(i, i * 2), i * 2);
            assert_eq!(*t.get_or_insert(i, 0), i * 2);
        }
        // Below the highest index set, and unset.
        assert_eq!(t.get(99_999), None);
        assert_eq!(t.get(1000), Some(&2000));
        assert_eq!(t.get(1001), None);
        assert_eq!(t.get(1 << 30), None);
    }

    /// The address of the state of slot `index` (its chunk allocated).
    fn state_at<T>(t: &IdTable<T>, index: u32) -> usize {
        &t.slot(index).0.state as *const AtomicU8 as usize
    }

    #[test]
    fn the_bound_covers_only_slots_whose_state_shares_4k_with_a_set_one() {
        // 24-byte values: 32-byte slots, so a 4 KiB run holds 128 states.
        let t: IdTable<[u64; 3]> = IdTable::default();
        let mut raised = 0;
        let mut last = 0;
        for i in 0..5000u32 {
            t.get_or_insert(i, [u64::from(i); 3]);
            let above = t.chunks.above.load(Ordering::Relaxed);
            if above != last {
                raised += 1;
                last = above;
            }
            // Every slot from the one just set up to the bound has its state
            // in the same 4 KiB as the one just set (which wrote it), and the
            // first slot at the bound, in the same chunk, does not.
            let here = state_at(&t, i) >> 12;
            assert!(above > u64::from(i));
            for j in i..above as u32 {
                assert_eq!(state_at(&t, j) >> 12, here, "slot {j} after setting {i}");
            }
            if locate(above as u32).0 == locate(i).0 {
                assert_ne!(state_at(&t, above as u32) >> 12, here);
            }
        }
        // Raised once per 4 KiB of slots (and per chunk), not once per slot:
        // 5000 slots of 32 bytes span about 40 runs of 4 KiB, in 7 chunks.
        assert!(raised <= 5000 * 32 / 4096 + 2 * 7, "raised {raised} times");
        assert_eq!(t.get(4999), Some(&[4999; 3]));
        assert_eq!(t.get(5000), None);
    }

    #[test]
    #[cfg(tierbridge_codegen)]
    fn pointers_set_are_read_back_and_unset_ones_are_none() {
        let values: Vec<u64> = (0..5).collect();
        let t: PtrTable<u64> = PtrTable::default();
        for (i, at) in [0u32, 63, 64, 5000, 100_000].into_iter().enumerate() {
            assert_eq!(t.get(at), None);
            t.set(at, NonNull::from(&values[i]));
            assert_eq!(t.get(at), Some(NonNull::from(&values[i])));
        }
        // Set again: the last pointer stored is the one read.
        t.set(64, NonNull::from(&values[0]));
        assert_eq!(t.get(64), Some(NonNull::from(&values[0])));
        // Below the highest index set, on a page written, and unset.
        assert_eq!(t.get(65), None);
        assert_eq!(t.get(99_999), None);
        assert_eq!(t.get(1 << 30), None);
        // Pointer slots are 8 bytes, 512 to 4 KiB: after slot 100 000 the
        // bound covers at most the rest of that slot's 4 KiB.
        let above = t.chunks.above.load(Ordering::Relaxed);
        assert!(above > 100_000 && above <= 100_000 + 512, "bound {above}");
    }

    #[test]
    #[cfg(tierbridge_codegen)]
    fn threads_setting_the_same_pointers_all_read_them() {
        // Eight threads set the same 2000 indices to the same pointers, out of
        // order, and each then reads every index it set back.
        let values: Vec<u32> = (0..2000).collect();
        let t: PtrTable<u32> = PtrTable::default();
        std::thread::scope(|s| {
            for who in 0..8u32 {
                let (t, values) = (&t, &values);
                s.spawn(move || {
                    for k in 0..2000u32 {
                        let i = (k * 7 + who * 251) % 2000;
                        t.set(i, NonNull::from(&values[i as usize]));
                        // SAFETY: the pointer is into `values`, alive here.
                        assert_eq!(t.get(i).map(|p| unsafe { *p.as_ref() }), Some(i));
                    }
                });
            }
        });
        for i in 0..2000u32 {
            assert_eq!(t.get(i), Some(NonNull::from(&values[i as usize])));
        }
    }

    #[test]
    fn an_entry_set_unique_is_read_back() {
        let t = IdTable::default();
        for i in [0u32, 1, 63, 64, 4000] {
            // SAFETY: each index is set once, here.
            assert_eq!(*unsafe { t.insert_unique(i, i + 7) }, i + 7);
        }
        assert_eq!(t.get(4000), Some(&4007));
        assert_eq!(t.get(64), Some(&71));
        assert_eq!(t.get(2), None);
    }

    #[test]
    fn an_arena_hands_out_indices_in_order_and_reads_them_back() {
        let a = Arena::default();
        assert_eq!(a.get(0), None);
        for i in 0..300u32 {
            let (n, v) = a.push(i * 3);
            assert_eq!((n, *v), (i, i * 3));
        }
        assert_eq!(a.get(299), Some(&897));
        assert_eq!(a.get(300), None);
    }

    #[test]
    fn a_thread_pushing_into_many_arenas_in_turn_gets_each_ones_indices_in_order() {
        // Ten arenas, pushed to in turn by one thread: each hands out 0, 1,
        // 2, … with no gap, whatever the thread does with the others.
        let arenas: Vec<Arena<u32>> = (0..10).map(|_| Arena::default()).collect();
        for k in 0..200u32 {
            for a in &arenas {
                assert_eq!(a.push(k).0, k);
            }
        }
    }

    #[test]
    fn threads_pushing_at_once_take_blocks_and_leave_fewer_gaps_than_entries() {
        // Four threads push 1, 5, 100 and 1000 entries into one arena; each
        // also says its thread number.
        let a = Arena::default();
        let counts = [1u32, 5, 100, 1000];
        let taken: Vec<(usize, Vec<u32>)> = std::thread::scope(|s| {
            let hs: Vec<_> = counts
                .iter()
                .enumerate()
                .map(|(who, &n)| {
                    let a = &a;
                    s.spawn(move || {
                        let pushed = (0..n).map(|k| a.push((who, k)).0).collect::<Vec<_>>();
                        (thread_number(), pushed)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Every index once, each with its own entry.
        let mut all: Vec<u32> = taken.iter().flat_map(|t| t.1.iter()).copied().collect();
        all.sort_unstable();
        all.dedup();
        let total: u32 = counts.iter().sum();
        assert_eq!(all.len() as u32, total);
        for (who, (_, indices)) in taken.iter().enumerate() {
            for (k, &i) in indices.iter().enumerate() {
                assert_eq!(a.get(i), Some(&(who, k as u32)));
            }
        }
        // Few indices left unused: the rest of each number's last block
        // (the four take 20 blocks when each has a number of its own).
        assert!(*all.last().unwrap() < 2 * total, "{all:?}");
        // A thread with a number no other of the four has takes its indices
        // in blocks: each block's indices one after the other, from a
        // multiple of the block size.
        for (number, indices) in &taken {
            if taken.iter().filter(|t| t.0 == *number).count() > 1 {
                continue;
            }
            for block in indices.chunks(BLOCK as usize) {
                assert_eq!(block[0] % BLOCK, 0, "{block:?}");
                assert!(block.windows(2).all(|w| w[1] == w[0] + 1), "{block:?}");
            }
        }
    }

    #[test]
    fn racing_threads_agree_on_one_value_and_every_value_is_dropped_once() {
        // Eight threads insert their own value at the same 500 indices; each
        // index must end up with one of them, seen by all eight, and every
        // value must be dropped exactly once: the losers' at once, the
        // winners' with the table.
        let counter = Arc::new(());
        let t: IdTable<(usize, Arc<()>)> = IdTable::default();
        let seen: Vec<Vec<usize>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|who| {
                    let (t, counter) = (&t, &counter);
                    s.spawn(move || {
                        (0..500u32)
                            .map(|i| t.get_or_insert(i * 7, (who, counter.clone())).0)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for i in 0..500 {
            let winner = t.get(i as u32 * 7).unwrap().0;
            assert!(seen.iter().all(|v| v[i] == winner));
        }
        assert_eq!(Arc::strong_count(&counter), 1 + 500);
        drop(t);
        assert_eq!(Arc::strong_count(&counter), 1);
    }
}
