//! An append-only table indexed by small integers, read without locks.
//!
//! Chunk `k` holds `64 << k` entries, so indices up to `u32::MAX` need at most
//! 26 chunks. Chunks are allocated on first use and never move, so a shared
//! reference to an entry lives as long as the table.

use std::sync::OnceLock;

const FIRST: usize = 64;
const CHUNKS: usize = 27;

pub(crate) struct IdTable<T> {
    chunks: [OnceLock<Box<[OnceLock<T>]>>; CHUNKS],
}

impl<T> Default for IdTable<T> {
    fn default() -> Self {
        IdTable {
            chunks: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

fn locate(index: u32) -> (usize, usize) {
    // Chunk k starts at FIRST * (2^k - 1).
    let scaled = index as usize / FIRST + 1;
    let k = (usize::BITS - 1 - scaled.leading_zeros()) as usize;
    (k, index as usize - FIRST * ((1 << k) - 1))
}

impl<T> IdTable<T> {
    fn cell(&self, index: u32) -> &OnceLock<T> {
        let (k, i) = locate(index);
        let chunk =
            self.chunks[k].get_or_init(|| (0..FIRST << k).map(|_| OnceLock::new()).collect());
        &chunk[i]
    }

    /// The entry at `index`, if set.
    pub(crate) fn get(&self, index: u32) -> Option<&T> {
        let (k, i) = locate(index);
        self.chunks[k].get()?[i].get()
    }

    /// The entry at `index`, made by `init` if it is not set yet.
    pub(crate) fn get_or_init(&self, index: u32, init: impl FnOnce() -> T) -> &T {
        self.cell(index).get_or_init(init)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(*t.get_or_init(i, || i * 2), i * 2);
            assert_eq!(*t.get_or_init(i, || 0), i * 2);
        }
        assert_eq!(t.get(1000), Some(&2000));
        assert_eq!(t.get(1001), None);
    }
}
