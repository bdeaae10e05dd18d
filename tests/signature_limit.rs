//! What a bridge keeps, through the public API: `Bridge::stats` counts the
//! signatures it made code for and its code, and a bridge built with
//! `BridgeOptions::max_signatures` refuses new signatures past the limit
//! with a typed error, before interning them, while the ones it has keep
//! working.
//!
//! Every bridge shares the process's registry, and the tests of this file
//! run at once: each uses signatures no other test makes (struct sizes of
//! its own range), and checks the registry by lookups, not by its size.

use std::ffi::c_void;
use std::sync::Arc;

use tierbridge::abi::{CallConv, Registry, Signature};
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy, HostError};
use tierbridge::thunks::{BackendKind, Bridge, BridgeOptions, ThunkError};

/// A signature of its own for each `n` (below 10 000): two small structs
/// by value whose sizes encode `n`, and an `i64`.
fn sig(n: u32) -> Signature {
    let (a, b) = (n % 100 + 1, n / 100 + 1);
    format!("({{[u8;{a}]}},{{[u16;{b}]}},i64)->i64")
        .parse()
        .unwrap()
}

fn host() -> Dispatcher {
    Dispatcher::from_host(
        Arc::new(|c: EntryCall<'_>| -> Result<(), HostError> {
            // The first struct's first byte (in its first slot) plus the
            // i64 (the last slot).
            c.ret[0] = (c.args[0] & 0xff) + c.args[c.args.len() - 1];
            Ok(())
        }),
        FailurePolicy::Report,
    )
}

/// The backends this build has: the generated one only where it generates
/// code (elsewhere asking for it gives libffi, tested in `bridge.rs`).
fn generated_or_libffi() -> BackendKind {
    if cfg!(tierbridge_codegen) {
        BackendKind::Generated
    } else {
        BackendKind::Libffi
    }
}

fn bridge(backend: BackendKind, max_signatures: Option<usize>) -> Bridge {
    let b = Bridge::with_options(BridgeOptions {
        backend,
        max_signatures,
        ..BridgeOptions::default()
    })
    .unwrap();
    assert_eq!(b.kind(), backend, "{:?}", b.fallback_reason());
    b
}

/// Calls entry point `code` of `sig(n)` through the bridge's exit stub with
/// a first struct whose first byte is 7 and the `i64` 100.
fn call_through(b: &Bridge, n: u32, code: *const c_void) -> u64 {
    let s = sig(n);
    let stub = b.exit_stub(&s, CallConv::SysV).unwrap();
    let mut args = vec![0u64; s.arg_slots()];
    args[0] = 7;
    *args.last_mut().unwrap() = 100;
    let mut ret = [0u64];
    // SAFETY: the entry point has exactly this signature.
    unsafe { stub.call(code, &args, &mut ret) }.unwrap();
    ret[0]
}

fn assert_refused(r: Result<impl std::fmt::Debug, ThunkError>, limit: usize, what: &str) {
    match r {
        Err(ThunkError::TooManySignatures { limit: l, sig }) => {
            assert_eq!(l, limit, "{what}");
            assert!(sig.contains("->i64"), "{what}: {sig}");
        }
        other => panic!("{what}: expected TooManySignatures, got {other:?}"),
    }
}

#[test]
fn a_bridge_refuses_new_signatures_past_its_limit_and_keeps_the_others() {
    for (backend, base) in [(BackendKind::Libffi, 1000), (generated_or_libffi(), 2000)] {
        const LIMIT: usize = 5;
        let b = bridge(backend, Some(LIMIT));
        let d = host();
        let what = |n: u32| format!("{backend}: signature {n}");
        // Up to the limit: stubs for three, entry points for two more
        // (each counts once, whichever made it first).
        let mut eps = Vec::new();
        for n in base..base + 3 {
            b.exit_stub(&sig(n), CallConv::SysV).unwrap();
        }
        for n in base + 3..base + 5 {
            eps.push((n, b.entry_point(&sig(n), CallConv::SysV, &d, 0).unwrap()));
        }
        assert_eq!(b.stats().signatures, LIMIT, "{backend}");
        // A sixth: refused by every way in, and not interned.
        let sixth = sig(base + 5);
        assert_refused(b.exit_stub(&sixth, CallConv::SysV), LIMIT, &what(base + 5));
        assert_refused(
            b.entry_point(&sixth, CallConv::SysV, &d, 0),
            LIMIT,
            &what(base + 5),
        );
        assert_refused(b.prepare(&sixth, CallConv::SysV), LIMIT, &what(base + 5));
        assert_eq!(b.registry().find(&sixth), None, "{}", what(base + 5));
        // Interned elsewhere (the registry is the process's): still new to
        // this bridge, so refused by id too.
        let seventh = sig(base + 6);
        let id = b.registry().intern(&seventh);
        assert_refused(
            b.exit_stub_by_id(id, CallConv::SysV),
            LIMIT,
            &what(base + 6),
        );
        assert_refused(
            b.entry_point_by_id(id, CallConv::SysV, &d, 0),
            LIMIT,
            &what(base + 6),
        );
        assert_eq!(b.stats().signatures, LIMIT, "{backend}");
        // The five it has keep working: new stubs (the other convention
        // too), new entry points, calls. A fresh copy of a signature (not
        // the value interned) is found as well.
        for n in base..base + 5 {
            for conv in CallConv::ALL {
                b.exit_stub(&sig(n), conv).unwrap();
            }
            let ep = b.entry_point(&sig(n), CallConv::SysV, &d, 1).unwrap();
            assert_eq!(call_through(&b, n, ep.code_ptr()), 107, "{}", what(n));
        }
        for (n, ep) in &eps {
            assert_eq!(call_through(&b, *n, ep.code_ptr()), 107, "{}", what(*n));
        }
        assert_eq!(b.stats().signatures, LIMIT, "{backend}");
        // Another bridge without a limit takes the sixth.
        let free = bridge(backend, None);
        free.exit_stub(&sixth, CallConv::SysV).unwrap();
        assert!(b.registry().find(&sixth).is_some());
        // And now that it is interned, the limited bridge still refuses it.
        assert_refused(b.exit_stub(&sixth, CallConv::SysV), LIMIT, &what(base + 5));
    }
}

#[test]
fn a_limit_of_zero_refuses_everything() {
    let b = bridge(generated_or_libffi(), Some(0));
    assert_refused(b.exit_stub(&sig(3000), CallConv::SysV), 0, "limit 0");
    assert_eq!(b.stats().signatures, 0);
}

/// Threads racing to add signatures to a limited bridge: exactly the
/// limit's worth are admitted, and every other is refused.
#[test]
fn racing_threads_admit_exactly_the_limit() {
    const LIMIT: usize = 40;
    let b = bridge(generated_or_libffi(), Some(LIMIT));
    let admitted: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4u32)
            .map(|t| {
                let b = &b;
                s.spawn(move || {
                    (0..30)
                        .filter(|&k: &u32| {
                            // Threads share half their signatures.
                            let n = 4000
                                + if k.is_multiple_of(2) {
                                    k
                                } else {
                                    100 * (t + 1) + k
                                };
                            match b.exit_stub(&sig(n), CallConv::SysV) {
                                Ok(_) => true,
                                Err(ThunkError::TooManySignatures { .. }) => false,
                                Err(e) => panic!("{e}"),
                            }
                        })
                        .count()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(b.stats().signatures, LIMIT);
    // 15 shared signatures (each admitted by up to four threads) and 60 of
    // their own: more than the limit, so the bridge is full.
    assert!(admitted >= LIMIT, "{admitted}");
}

#[test]
fn stats_count_the_signatures_and_code_made() {
    for (backend, base) in [(BackendKind::Libffi, 5000), (generated_or_libffi(), 6000)] {
        let b = bridge(backend, None);
        let d = host();
        let s0 = b.stats();
        assert_eq!(s0.signatures, 0, "{backend}");
        assert_eq!(s0.quarantined, 0, "{backend}");
        // 10 signatures, each through one way in, some twice.
        for n in base..base + 4 {
            b.exit_stub(&sig(n), CallConv::SysV).unwrap();
            b.exit_stub(&sig(n), CallConv::Win64).unwrap();
        }
        for n in base + 4..base + 7 {
            b.prepare(&sig(n), CallConv::SysV).unwrap();
        }
        let eps: Vec<_> = (base + 7..base + 10)
            .map(|n| b.entry_point(&sig(n), CallConv::SysV, &d, 0).unwrap())
            .collect();
        let id = b.registry().intern(&sig(base));
        b.entry_point_by_id(id, CallConv::SysV, &d, 0).unwrap();
        let s1 = b.stats();
        assert_eq!(s1.signatures, 10, "{backend}");
        assert!(s1.registry.signatures >= 10, "{backend}");
        match backend {
            BackendKind::Libffi => {
                assert_eq!((s1.code_bytes, s1.code_mapped_bytes), (0, 0));
            }
            _ => {
                // Exit stubs and thunks for new shapes (structs of sizes
                // no other test uses), and a block of trampolines.
                assert!(s1.code_bytes > s0.code_bytes, "{s0:?} {s1:?}");
                assert!(s1.code_bytes <= s1.code_mapped_bytes, "{s1:?}");
            }
        }
        // Drops go to quarantine: the one bound by id (dropped at once)
        // and these three.
        drop(eps);
        assert_eq!(b.stats().quarantined, 4, "{backend}");
    }
}

#[test]
fn registry_stats_count_signatures_and_layouts() {
    let reg = Registry::new();
    assert_eq!(reg.stats().signatures, 0);
    let sigs: Vec<Signature> = (0..100).map(sig).collect();
    for s in &sigs {
        reg.intern(s);
        reg.intern(&s.clone());
    }
    let st = reg.stats();
    assert_eq!(st.signatures, 100);
    assert_eq!(st.layouts, 0);
    for s in &sigs[..30] {
        let id = reg.find(s).unwrap();
        reg.layout(id, CallConv::SysV).unwrap();
        reg.layout(id, CallConv::Win64).unwrap();
    }
    let st2 = reg.stats();
    assert_eq!(st2.layouts, 60);
    assert!(st2.bytes > st.bytes, "{st:?} {st2:?}");
    assert_eq!(reg.find(&sig(100)), None);
}
