//! An append-only table indexed by small integers, read without locks.
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
//! the table keeps one past the highest index ever set, and a lookup above it
//! does not touch the slot.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

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

pub(crate) struct IdTable<T> {
    chunks: [OnceLock<Box<[Slot<T>]>>; CHUNKS],
    /// One past the highest index set (or being set): slots at or above it
    /// are empty.
    above: AtomicU64,
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
            chunks: std::array::from_fn(|_| OnceLock::new()),
            above: AtomicU64::new(0),
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
    fn slot(&self, index: u32) -> &Slot<T> {
        let (k, i) = locate(index);
        let chunk = self.chunks[k].get_or_init(|| {
            let zeroed = Box::<[Slot<T>]>::new_zeroed_slice(FIRST << k);
            // SAFETY: an all-zero slot is a valid one: its state is EMPTY (an
            // AtomicU8 of 0) and its value is a `MaybeUninit`, valid for any
            // bytes.
            unsafe { zeroed.assume_init() }
        });
        &chunk[i]
    }

    /// The entry at `index`, if set.
    pub(crate) fn get(&self, index: u32) -> Option<&T> {
        if u64::from(index) >= self.above.load(Ordering::Acquire) {
            return None;
        }
        let (k, i) = locate(index);
        self.chunks[k].get()?[i].get()
    }

    /// The entry at `index`: `value` if the entry was not set yet, else the
    /// one already there (and `value` is dropped). A thread that finds
    /// another one setting the entry waits for it: the other thread only
    /// has to move a value that is already made.
    pub(crate) fn get_or_insert(&self, index: u32, value: T) -> &T {
        let slot = self.slot(index);
        // Straight to the exchange: on a page nothing touched yet, reading
        // the state first would fault the page in twice (for the read, then
        // for the write).
        match slot
            .state
            .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Acquire)
        {
            Ok(_) => {
                // Raised before the value is published, so no reader finds
                // a set index at or above it (a reader below it that reads
                // the slot too early sees it not set yet, as it would
                // anyway).
                let next = u64::from(index) + 1;
                if next > self.above.load(Ordering::Relaxed) {
                    self.above.fetch_max(next, Ordering::AcqRel);
                }
                // SAFETY: moving the state from EMPTY to WRITING gives this
                // thread alone the right to write the value; no reader looks
                // at it before READY.
                let v = unsafe { (*slot.value.get()).write(value) };
                slot.state.store(READY, Ordering::Release);
                v
            }
            Err(_) => loop {
                if let Some(v) = slot.get() {
                    return v;
                }
                std::thread::yield_now();
            },
        }
    }
}

impl<T> Drop for IdTable<T> {
    fn drop(&mut self) {
        // Only the slots below `above` can be set (the rest need not be read).
        let above = *self.above.get_mut();
        for (k, chunk) in self.chunks.iter_mut().enumerate() {
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
