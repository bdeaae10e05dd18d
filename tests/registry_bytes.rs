//! `Registry::stats().bytes` against an independent truth: the bytes the
//! process's allocator handed out, counted by a global allocator of this
//! test binary, while a fresh registry interns signatures (and keeps
//! layouts) that the test then drops its own copies of. One test in this
//! binary, so nothing else allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use tierbridge::abi::{CallConv, Registry, Signature};

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Signature `k` of a varied series, each one of its own: scalars, nested
/// structs and arrays, so that parameter lists and struct descriptions of
/// many sizes are kept.
fn sig(k: usize) -> Signature {
    let scalars = ["i8", "u16", "i32", "f32", "f64", "ptr", "i64"];
    let mut params: Vec<String> = (0..k % 9)
        .map(|i| scalars[(k + i) % scalars.len()].to_string())
        .collect();
    // The two array lengths tell every k apart.
    params.push(format!("{{i32,[u8;{}]}}", k % 37 + 1));
    if k.is_multiple_of(3) {
        params.push(format!("{{f64,{{i8,[u16;{}]}}}}", k / 37 + 1));
    } else {
        params.push(format!("{{[u16;{}]}}", k / 37 + 1));
    }
    format!("({})->{{i64,f64}}", params.join(","))
        .parse()
        .unwrap()
}

#[test]
fn registry_bytes_match_what_the_allocator_handed_out() {
    let reg = Registry::new();
    for round in 0..2 {
        let (n0, n1) = (round * 3000, (round + 1) * 3000);
        let before = (live(), reg.stats());
        let sigs: Vec<Signature> = (n0..n1).map(sig).collect();
        for s in &sigs {
            let id = reg.intern(s);
            if s.params().len().is_multiple_of(2) {
                reg.layout(id, CallConv::SysV).unwrap();
            }
        }
        drop(sigs);
        let after = (live(), reg.stats());
        let allocated = (after.0 - before.0) as f64;
        let counted = (after.1.bytes - before.1.bytes) as f64;
        assert_eq!(after.1.signatures - before.1.signatures, 3000);
        eprintln!(
            "round {round}: allocator {allocated} bytes, stats {counted} bytes ({:.3}), {} layouts",
            counted / allocated,
            after.1.layouts
        );
        assert!(
            (0.9..=1.1).contains(&(counted / allocated)),
            "round {round}: stats say {counted} bytes, the allocator handed out {allocated}"
        );
    }
}
