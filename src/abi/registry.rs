//! Interning: one [`SigId`] per distinct signature shape.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use hashbrown::{HashTable, hash_table};
use rustc_hash::FxBuildHasher;

use super::callconv::CallConv;
use super::classify::{CallLayout, classify};
use super::error::{AbiError, Result};
use super::signature::Signature;
use crate::table::{Arena, IdTable, Padded};

/// The interned identity of a signature shape within one [`Registry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SigId(u32);

impl SigId {
    /// The id as a small index, for tables by id. Each index is given once
    /// per registry. A thread interning into a registry no other thread is
    /// interning into gets 0, 1, 2, … in order; threads interning at once
    /// take indices in blocks of 64, one block per thread number (8
    /// numbers, taken by threads in turn), so they do not write neighbouring
    /// entries of tables by id from two cores. The indices skipped are the
    /// rest of each number's block, fewer than 512, plus, only with more
    /// than 8 threads interning, fewer than 64 each time two threads of one
    /// number need a new block at once (ABI.md, "Interning and the tables by
    /// id").
    pub fn index(self) -> u32 {
        self.0
    }
}

impl fmt::Display for SigId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sig#{}", self.0)
    }
}

/// What a [`Registry`] holds ([`Registry::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryStats {
    /// Distinct signatures interned (as [`Registry::len`]).
    pub signatures: usize,
    /// Layouts kept (one per signature and convention asked for through
    /// [`Registry::layout`]: by an exit stub's `layout`, a libffi cif, the
    /// classification of a call; code made once per machine shape keeps
    /// none).
    pub layouts: usize,
    /// Heap bytes the registry allocated for them: the signatures (each
    /// one's entry, parameter list and struct descriptions, a struct shared
    /// by several signatures counted in each), the layouts kept, the tables
    /// by id (whole chunks, as allocated) and the hash tables that find a
    /// signature.
    pub bytes: usize,
}

const SHARDS: usize = 16;

/// One shard entry: 32 bits of the signature's hash and its id (the
/// signature itself is the id's entry: a clone, which shares its parameter
/// list with the one interned, so a new signature's types are not copied).
struct Interned(u32, SigId);

/// The hash a shard's table files an entry under, from the 32 bits the entry
/// keeps (the table needs it again when it grows): multiplied by an odd
/// constant, so the table's top bits (its tags) depend on all 32.
fn filed_under(tag: u32) -> u64 {
    u64::from(tag).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Interns signatures: equal signatures (compared by full structure, never by
/// hash alone) get the same [`SigId`], and each id's layout per convention is
/// classified and kept on the first [`Registry::layout`] (code made once per
/// machine shape classifies without keeping it).
///
/// Thread-safe. Interning takes the lock of one of 16 shards chosen by hash,
/// once, whether the signature is found or added (a reader-writer lock would
/// take its read lock, then its write lock for every new signature, for the
/// same cost when found: a signature interned before is usually found by the
/// id it carries, below, without a lock); looking up an id takes no lock at
/// all. A signature carries its hash from when it was made; the shards keep
/// 32 bits of each entry's hash and its id, 8 bytes (the signature itself is
/// kept once, in the id's entry), so probing and growing a shard compare and
/// move those without touching the signatures.
///
/// A signature interned once also carries the id it was given (with the
/// registry's serial number, unique in the process), so interning the same
/// signature value again, or a clone of it, in the same registry is one
/// atomic load: the common case of making an exit stub and an entry point
/// from one signature, or asking for a cached stub by signature.
pub struct Registry {
    /// Each on a cache line of its own (a lock and a table's header are 40
    /// bytes: unpadded, two threads locking two shards would pass one line
    /// between them).
    shards: [Padded<Mutex<HashTable<Interned>>>; SHARDS],
    /// Each id's signature (a clone of the first one interned, sharing its
    /// parameters); an id is the index the arena gives it (see
    /// [`SigId::index`]).
    entries: Arena<Signature>,
    /// Each id's layout per convention, once asked for.
    layouts: [IdTable<CallLayout>; 2],
    /// This registry's serial number, 0 when the process made so many
    /// registries that the numbers ran out (its signatures then carry no id).
    serial: u32,
}

/// The next registry's serial number (from 1).
static SERIALS: AtomicU32 = AtomicU32::new(1);

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: std::array::from_fn(|_| Padded(Mutex::new(HashTable::new()))),
            entries: Arena::default(),
            layouts: Default::default(),
            serial: SERIALS
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_add(1))
                .unwrap_or(0),
        }
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("len", &self.len())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// The process-wide registry.
    pub fn global() -> &'static Registry {
        static GLOBAL: OnceLock<Registry> = OnceLock::new();
        GLOBAL.get_or_init(Registry::new)
    }

    /// Number of distinct shapes interned so far (the shards' counts, each
    /// read under its lock).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// What the registry holds and the heap bytes it takes: every signature
    /// ever interned stays, with its layouts, for the registry's life (the
    /// process-wide one, [`Registry::global`], for the process's), so a
    /// program that makes signatures without bound (from untrusted input,
    /// say) grows it without bound; see `BridgeOptions::max_signatures` for
    /// a bound. Walks every entry: for monitoring, not for hot paths.
    pub fn stats(&self) -> RegistryStats {
        let mut st = RegistryStats::default();
        for shard in &self.shards {
            let table = shard.lock().unwrap_or_else(|e| e.into_inner());
            st.signatures += table.len();
            // hashbrown: a power-of-two number of buckets, at most 7/8 full,
            // each an entry and a control byte (and a group of control
            // bytes more).
            if table.capacity() > 0 {
                let buckets = (table.capacity() * 8 / 7).next_power_of_two();
                st.bytes += buckets * (size_of::<Interned>() + 1) + 16;
            }
        }
        st.bytes += self.entries.allocated_bytes();
        for id in 0..self.entries.bound() {
            if let Some(sig) = self.entries.get(id) {
                st.bytes += sig.heap_bytes();
            }
            for table in &self.layouts {
                if let Some(l) = table.get(id) {
                    st.layouts += 1;
                    st.bytes += l.heap_bytes();
                }
            }
        }
        st.bytes += self
            .layouts
            .iter()
            .map(IdTable::allocated_bytes)
            .sum::<usize>();
        st
    }

    /// The id of `sig`'s shape if it was interned already; never interns.
    pub fn find(&self, sig: &Signature) -> Option<SigId> {
        let noted = sig.interned().load(Ordering::Acquire);
        if self.serial != 0 && noted >> 32 == u64::from(self.serial) {
            return Some(SigId(noted as u32));
        }
        let hash = FxBuildHasher.hash_one(sig);
        let shard = &self.shards[(hash >> 60) as usize % SHARDS];
        let tag = hash as u32;
        let same = |e: &Interned| e.0 == tag && self.entries.get(e.1.0).is_some_and(|x| x == sig);
        let table = shard.lock().unwrap_or_else(|e| e.into_inner());
        table.find(filed_under(tag), same).map(|e| e.1)
    }

    /// True if nothing was interned yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id of `sig`'s shape, interning it on first sight.
    pub fn intern(&self, sig: &Signature) -> SigId {
        // The id this registry gave this signature value before, if it did:
        // a signature never changes after it is made, and the serial number
        // tells this registry's ids from any other's. Acquire pairs with the
        // Release below, made after the id's entry was set.
        let noted = sig.interned().load(Ordering::Acquire);
        if self.serial != 0 && noted >> 32 == u64::from(self.serial) {
            return SigId(noted as u32);
        }
        let id = self.intern_uncached(sig);
        if self.serial != 0 {
            sig.interned().store(
                u64::from(self.serial) << 32 | u64::from(id.0),
                Ordering::Release,
            );
        }
        id
    }

    fn intern_uncached(&self, sig: &Signature) -> SigId {
        // The signature's own hash (FxHash, worked out when it was made:
        // signatures come from the embedder, not from an adversary), mixed
        // once more so the shard index has good high bits.
        let hash = FxBuildHasher.hash_one(sig);
        let shard = &self.shards[(hash >> 60) as usize % SHARDS];
        let tag = hash as u32;
        // A poisoned lock only means another thread panicked while holding it;
        // the map itself is never left half-updated, so keep using it.
        // An entry in a shard was set in `entries` before it was inserted
        // (under the shard's lock), so its signature is always there.
        let same = |e: &Interned| e.0 == tag && self.entries.get(e.1.0).is_some_and(|x| x == sig);
        let mut table = shard.lock().unwrap_or_else(|e| e.into_inner());
        match table.entry(filed_under(tag), same, |e| filed_under(e.0)) {
            hash_table::Entry::Occupied(e) => e.get().1,
            hash_table::Entry::Vacant(v) => {
                let id = SigId(self.entries.push(sig.clone()).0);
                v.insert(Interned(tag, id));
                id
            }
        }
    }

    /// The signature behind an id (kept as long as the registry).
    ///
    /// # Errors
    /// [`AbiError::UnknownSigId`] for an id this registry did not issue.
    pub fn signature(&self, id: SigId) -> Result<&Signature> {
        self.entries.get(id.0).ok_or(AbiError::UnknownSigId(id.0))
    }

    /// `f` of the layout of an id for a convention: the cached one if it was
    /// classified before, else one classified for `f` alone and dropped
    /// after (for code made once per machine shape, which reads a layout only
    /// while it is made: keeping every such layout would cost a new
    /// signature more fresh memory than the rest of its setup).
    ///
    /// # Errors
    /// [`AbiError::UnknownSigId`] for an id this registry did not issue.
    #[cfg(tierbridge_codegen)]
    pub(crate) fn with_layout<R>(
        &self,
        id: SigId,
        conv: CallConv,
        f: impl FnOnce(&CallLayout) -> R,
    ) -> Result<R> {
        match self.layouts[conv as usize].get(id.0) {
            Some(l) => Ok(f(l)),
            None => Ok(f(&classify(self.signature(id)?, conv))),
        }
    }

    /// Whether the registry keeps a layout of this id for this convention.
    #[cfg(all(test, tierbridge_codegen))]
    pub(crate) fn keeps_layout(&self, id: SigId, conv: CallConv) -> bool {
        self.layouts[conv as usize].get(id.0).is_some()
    }

    /// The layout of an id for a convention, classified once and then cached.
    ///
    /// # Errors
    /// [`AbiError::UnknownSigId`] for an id this registry did not issue.
    pub fn layout(&self, id: SigId, conv: CallConv) -> Result<&CallLayout> {
        let table = &self.layouts[conv as usize];
        if let Some(l) = table.get(id.0) {
            return Ok(l);
        }
        // Classified outside any lock; a thread that loses a race to set the
        // entry drops its own (equal) layout.
        let layout = classify(self.signature(id)?, conv);
        Ok(table.get_or_insert(id.0, layout))
    }
}
