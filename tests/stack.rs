//! Running out of native stack is a typed error in every tier, never a
//! crash: recursion in the interpreter and in compiled code, recursion
//! through C (interpreter → C → interpreter → …), and exit calls with large
//! by-value arguments, on both backends. The truth is arithmetic (f(n) = n)
//! and the other tiers: whatever finishes must agree, whatever cannot must
//! fail with the same kind of error.

mod support;

use std::ffi::c_void;
use std::sync::Arc;

use tierbridge::abi::{CallConv, Signature};
use tierbridge::host::{EntryError, FailurePolicy, take_entry_error};
use tierbridge::interp::{InterpError, Runtime, parse_program};
use tierbridge::stack;
use tierbridge::thunks::{Bridge, MAX_CALL_STACK_BYTES, ThunkError};
use tierbridge::tier::TierConfig;

const PROGRAM: &str = r#"
extern apply "(ptr,i64)->i64"

# f(n) = n == 0 ? 0 : f(n - 1) + 1
fn f(n: i64) -> i64
  local.get n
  i64.eqz
  br_if zero
  local.get n
  i64.const 1
  i64.sub
  call f
  i64.const 1
  i64.add
  return
zero:
  i64.const 0
  return
end

# g(n) = n == 0 ? 0 : apply(g, n - 1) + 1: every level goes out to native
# code and back in through g's entry point.
fn g(n: i64) -> i64
  local.get n
  i64.eqz
  br_if zero
  ref.func g
  local.get n
  i64.const 1
  i64.sub
  call apply
  i64.const 1
  i64.add
  return
zero:
  i64.const 0
  return
end
"#;

/// The native side of `g`'s recursion.
extern "C" fn apply(f: extern "C" fn(i64) -> i64, n: i64) -> i64 {
    f(n)
}

/// Every tier on every backend: interpreter only, compiled at once, compiled
/// with every guard deoptimizing; each on the generated backend and on
/// libffi (where everything is interpreted).
fn runtimes() -> Vec<(String, Runtime)> {
    let hot = TierConfig {
        call_threshold: 1,
        loop_threshold: 1,
        force_deopt: false,
        ..TierConfig::default()
    };
    let configs = [
        ("interpreter", TierConfig::interpreter_only()),
        ("tiered", hot),
        (
            "deopt",
            TierConfig {
                force_deopt: true,
                ..hot
            },
        ),
    ];
    let mut out = Vec::new();
    for (backend, make) in [
        ("generated", support::generated as fn() -> Bridge),
        ("libffi", Bridge::libffi),
    ] {
        for (name, config) in configs {
            let program = parse_program(PROGRAM).unwrap();
            // SAFETY: this file's program: it loads and stores nothing, and
            // calls `apply` with g's own entry point.
            let rt = unsafe {
                Runtime::with_tiers(program, Arc::new(make()), FailurePolicy::Report, config)
            }
            .unwrap();
            // SAFETY: `apply` has the declared signature.
            unsafe { rt.bind_native("apply", apply as *const c_void) }.unwrap();
            out.push((format!("{name} on {backend}"), rt));
        }
    }
    out
}

/// Runs `f` on a thread with a stack of `size` bytes.
fn on_stack<T: Send + 'static>(size: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(size)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

fn is_stack_exhaustion(e: &InterpError) -> bool {
    e.to_string().contains("native stack exhausted")
}

/// On a 64 MiB stack, in every runtime: `func(fits)` returns `fits`;
/// `func(10^7)` runs out of stack and is a trap; afterwards the runtime still
/// works and nothing is left pending.
fn fits_then_runs_out(func: &'static str, fits: u64) {
    on_stack(64 << 20, move || {
        for (name, rt) in runtimes() {
            assert_eq!(rt.call(func, &[fits]).unwrap(), fits, "{name}");
            let e = rt.call(func, &[10_000_000]).unwrap_err();
            assert!(is_stack_exhaustion(&e), "{name}: {e}");
            assert_eq!(rt.call(func, &[10]).unwrap(), 10, "{name}");
            assert!(take_entry_error().is_none(), "{name}: nothing left pending");
        }
    });
}

#[test]
fn deep_recursion_gives_the_same_results_in_every_tier_and_running_out_is_a_trap() {
    // 5000: deeper than the interpreter's old call-count limit (4000),
    // within the stack: every tier computes it. Past any stack: a trap in
    // every tier (tiered, this used to recurse in compiled code until the
    // process died).
    fits_then_runs_out("f", 5000);
}

#[test]
fn recursion_through_native_code_runs_out_as_a_trap_on_every_backend() {
    // interpreter → native → interpreter → … until the stack ends: the
    // innermost entry is refused, and that failure travels out through
    // every native frame to the outer call (each entry used to start a
    // count of its own, and the process died).
    fits_then_runs_out("g", 2000);
}

#[test]
fn a_big_enough_stack_holds_100_000_levels_through_native_code() {
    // 100 000 levels of interpreter → native → interpreter: what fails on a
    // small stack works on a large one, in every tier.
    on_stack(2 << 30, || {
        for (name, rt) in runtimes() {
            assert_eq!(rt.call("g", &[100_000]).unwrap(), 100_000, "{name}");
        }
    });
}

#[test]
fn compiled_code_out_of_stack_leaves_a_typed_failure_for_the_caller() {
    // Compiled code asks `call_guard_begin` before each call; with no stack
    // left it gets `CALL_GUARD_NO_STACK` and the failure is pending.
    on_stack(1 << 20, || {
        // This thread declares a stack that ends 1000 bytes below here: a
        // quarter of it is kept in reserve, so no call may start.
        let here = 0u8;
        let sp = std::hint::black_box(&here) as *const u8 as usize;
        let real = stack::bounds();
        stack::set_bounds(Some((sp - 1000, sp + 100_000)));
        assert_eq!(
            tierbridge::host::call_guard_begin(),
            tierbridge::host::CALL_GUARD_NO_STACK
        );
        match take_entry_error() {
            Some(EntryError::StackExhausted { func: None, error }) => {
                assert_eq!(error.available, 0);
            }
            other => panic!("{other:?}"),
        }
        stack::set_bounds(real);
        let before = tierbridge::host::call_guard_begin();
        assert_eq!(before, 0);
        assert_eq!(tierbridge::host::call_guard_end(before), 0);
    });
}

/// A struct of `n` bytes by value.
fn bytes_struct(n: usize) -> String {
    format!("{{[u8;{n}]}}")
}

#[repr(C)]
struct Big([u8; 65536]);

/// Σ (i + 1) · b[i] mod 2^64, computed by the callee from its by-value copy.
extern "C" fn weigh_big(b: Big, k: u64) -> u64 {
    b.0.iter().enumerate().fold(k, |acc, (i, &x)| {
        acc.wrapping_add((i as u64 + 1) * u64::from(x))
    })
}

/// `weigh_big` for a Win64 caller.
#[cfg(target_arch = "x86_64")]
extern "win64" fn weigh_big_win64(b: Big, k: u64) -> u64 {
    weigh_big(b, k)
}

/// The conventions a call can be made in here, with `weigh_big` in each.
fn weigh_big_by_conv() -> Vec<(CallConv, *const c_void)> {
    let mut v = vec![(CallConv::SysV, weigh_big as *const c_void)];
    #[cfg(target_arch = "x86_64")]
    v.push((CallConv::Win64, weigh_big_win64 as *const c_void));
    v
}

fn big_sig() -> Signature {
    Signature::parse(&format!("({},u64)->u64", bytes_struct(65536))).unwrap()
}

/// The argument slots of `weigh_big`: the struct's bytes, then `k`.
fn big_args() -> (Vec<u64>, u64) {
    let bytes: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    let want = bytes.iter().enumerate().fold(5u64, |acc, (i, &x)| {
        acc.wrapping_add((i as u64 + 1) * u64::from(x))
    });
    let mut slots: Vec<u64> = bytes
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    slots.push(5);
    (slots, want)
}

#[test]
fn calls_whose_arguments_exceed_the_stack_limit_are_refused_when_the_stub_is_made() {
    // 64 structs of 64 KiB by value: valid, but 4 MiB of stack per call
    // (libffi used to accept it and crash in the call).
    let many = format!("({})->void", vec![bytes_struct(65536); 64].join(","));
    let many = Signature::parse(&many).unwrap();
    for (name, bridge) in support::all_bridges() {
        for conv in [CallConv::SysV, CallConv::Win64] {
            match bridge.exit_stub(&many, conv) {
                Err(ThunkError::CallStackTooLarge {
                    bytes, limit: l, ..
                }) => {
                    assert!(bytes >= 64 * 65536, "{name} {conv}: {bytes}");
                    assert_eq!(l, MAX_CALL_STACK_BYTES);
                }
                other => panic!("{name} {conv}: {other:?}"),
            }
            // Two of the largest structs: exactly the limit on SysV.
            let two = Signature::parse(&format!(
                "({},{})->void",
                bytes_struct(65536),
                bytes_struct(65536)
            ))
            .unwrap();
            let r = bridge.exit_stub(&two, conv);
            match conv {
                CallConv::SysV => assert!(r.is_ok(), "{name} {conv}: {r:?}"),
                // Win64 adds its home area: past the limit by 32 bytes.
                _ => assert!(
                    matches!(r, Err(ThunkError::CallStackTooLarge { .. })),
                    "{name} {conv}: {r:?}"
                ),
            }
        }
    }
}

#[test]
fn a_call_with_64_kib_of_arguments_works_and_checks_the_stack_first() {
    let (args, want) = big_args();
    let sig = big_sig();
    // Both conventions: SysV copies the struct into the stack area, Win64
    // into a copy whose address it passes.
    for (conv, f) in weigh_big_by_conv() {
        for (name, bridge) in support::all_bridges() {
            let stub = bridge.exit_stub(&sig, conv).unwrap();
            let mut ret = [0u64];
            // SAFETY: `f` has this signature in this convention.
            unsafe { stub.call(f, &args, &mut ret) }.unwrap();
            assert_eq!(ret[0], want, "{name} {conv}");
        }
    }
    let conv = CallConv::host().unwrap();
    for (name, bridge) in support::all_bridges() {
        let stub = bridge.exit_stub(&sig, conv).unwrap();
        // On a thread with room: the callee sees the bytes (independent truth:
        // the same sum computed here).
        let mut ret = [0u64];
        // SAFETY: `weigh_big` has this signature.
        unsafe { stub.call(weigh_big as *const c_void, &args, &mut ret) }.unwrap();
        assert_eq!(ret[0], want, "{name}");
        // On a thread whose stack has less than 64 KiB left above the limit:
        // a typed error, the callee never runs.
        let stub2 = stub.clone();
        let args2 = args.clone();
        let name2 = name.clone();
        on_stack(1 << 20, move || {
            // This thread's stack, as the checks see it, has 32 KiB left
            // above its limit (declared bounds: the real stack has room,
            // so a check that failed to refuse would be seen, not crash).
            let here = 0u8;
            let sp = std::hint::black_box(&here) as *const u8 as usize;
            let low = sp - 32 * 1024 - stack::DEFAULT_RESERVE;
            stack::set_bounds(Some((low, low + (4 << 20))));
            let mut ret = [7u64];
            // SAFETY: as above.
            let r = unsafe { stub2.call(weigh_big as *const c_void, &args2, &mut ret) };
            match r {
                Err(ThunkError::StackExhausted(e)) => assert!(e.need >= 65536, "{e}"),
                other => panic!("{name2}: {other:?}"),
            }
            // The unchecked call: not made either; zero result, failure pending.
            // SAFETY: as above; the counts are the signature's.
            unsafe {
                stub2.call_unchecked(weigh_big as *const c_void, args2.as_ptr(), ret.as_mut_ptr())
            };
            assert_eq!(ret[0], 0, "{name2}");
            assert!(
                matches!(take_entry_error(), Some(EntryError::StackExhausted { .. })),
                "{name2}"
            );
        });
    }
}

/// What the child process runs: a 64 KiB-argument call on a small stack
/// whose bounds the checks do not know, so only the guard page can stop it.
fn overflow_child(backend: &str) -> ! {
    let (args, _) = big_args();
    let bridge = match backend {
        "generated" => support::generated(),
        _ => Bridge::libffi(),
    };
    let stub = bridge
        .exit_stub(&big_sig(), CallConv::host().unwrap())
        .unwrap();
    on_stack(48 * 1024, move || {
        stack::set_bounds(None);
        let mut ret = [0u64];
        // SAFETY: `weigh_big` has this signature.
        let r = unsafe { stub.call(weigh_big as *const c_void, &args, &mut ret) };
        eprintln!("the call returned: {r:?}");
    });
    std::process::exit(0)
}

#[test]
fn without_known_bounds_a_large_call_meets_the_guard_page_not_memory_below_it() {
    if let Ok(backend) = std::env::var("TIERBRIDGE_STACK_CHILD") {
        overflow_child(&backend);
    }
    for backend in ["generated", "libffi"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "without_known_bounds_a_large_call_meets_the_guard_page_not_memory_below_it",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TIERBRIDGE_STACK_CHILD", backend)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Rust's own report of a guard-page hit, then an abort; a copy that
        // jumped past the guard page would fault elsewhere (SIGSEGV, no
        // report) or write over whatever lies below.
        assert!(
            stderr.contains("has overflowed its stack"),
            "{backend}: status {:?}, stderr: {stderr}",
            out.status
        );
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(out.status.signal(), Some(6), "{backend}: SIGABRT");
        }
    }
}

#[repr(C)]
struct Bytes<const N: usize>([u8; N]);

/// a + 3b + 5c + 7k + Σ (i + 1) · s[i], from the callee's own copy.
extern "C" fn weigh_n<const N: usize>(a: u64, b: u64, c: u64, s: Bytes<N>, k: u64) -> u64 {
    let sum = s.0.iter().enumerate().fold(0u64, |acc, (i, &x)| {
        acc.wrapping_add((i as u64 + 1) * u64::from(x))
    });
    a + 3 * b + 5 * c + 7 * k + sum
}

#[cfg(target_arch = "x86_64")]
extern "win64" fn weigh_n_win64<const N: usize>(
    a: u64,
    b: u64,
    c: u64,
    s: Bytes<N>,
    k: u64,
) -> u64 {
    weigh_n(a, b, c, s, k)
}

fn check_weigh_n<const N: usize>() {
    let bytes: Vec<u8> = (0..N).map(|i| (i * 13 % 256) as u8).collect();
    let sum = bytes.iter().enumerate().fold(0u64, |acc, (i, &x)| {
        acc.wrapping_add((i as u64 + 1) * u64::from(x))
    });
    let want = 1 + 3 * 2 + 5 * 3 + 7 * 4 + sum;
    let mut args = vec![1u64, 2, 3];
    let mut padded = bytes.clone();
    padded.resize(N.div_ceil(8) * 8, 0xEE);
    args.extend(
        padded
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap())),
    );
    args.push(4);
    let sig = Signature::parse(&format!("(u64,u64,u64,{},u64)->u64", bytes_struct(N))).unwrap();
    let mut fns = vec![(CallConv::SysV, weigh_n::<N> as *const c_void)];
    #[cfg(target_arch = "x86_64")]
    fns.push((CallConv::Win64, weigh_n_win64::<N> as *const c_void));
    for (conv, f) in fns {
        for (name, bridge) in support::all_bridges() {
            let stub = bridge.exit_stub(&sig, conv).unwrap();
            let mut ret = [0u64];
            // SAFETY: `f` has this signature in this convention.
            unsafe { stub.call(f, &args, &mut ret) }.unwrap();
            assert_eq!(ret[0], want, "{name} {conv} N={N}");
        }
    }
}

#[test]
fn structs_by_value_around_the_copy_loop_threshold_arrive_intact() {
    // Exit stubs copy arguments of more than 32 quadwords with a loop, around
    // which the argument registers already loaded are saved: sizes on both
    // sides of it, odd ones, and past a page, with integers before and after
    // in registers (the truth: the same sum computed here).
    check_weigh_n::<17>();
    check_weigh_n::<255>();
    check_weigh_n::<256>();
    check_weigh_n::<257>();
    check_weigh_n::<263>();
    check_weigh_n::<1000>();
    check_weigh_n::<4097>();
    check_weigh_n::<20000>();
}

#[test]
fn a_thread_with_a_small_stack_can_still_call_in() {
    // 128 KiB of stack (musl's default for threads), no more than the
    // default reserve: a quarter of it is kept instead, so calls from native
    // code into a host still run there.
    for (name, bridge) in support::all_bridges() {
        let d = tierbridge::host::Dispatcher::from_host(
            Arc::new(
                |c: tierbridge::host::EntryCall<'_>| -> Result<(), tierbridge::host::HostError> {
                    c.ret[0] = c.args[0] * 2;
                    Ok(())
                },
            ),
            FailurePolicy::Report,
        );
        let sig = Signature::parse("(u64)->u64").unwrap();
        let conv = CallConv::host().unwrap();
        let e = bridge.entry_point(&sig, conv, &d, 0).unwrap();
        let stub = bridge.exit_stub(&sig, conv).unwrap();
        let p = e.code_ptr() as usize;
        let r = on_stack(128 * 1024, move || {
            let mut ret = [0u64];
            // SAFETY: the entry point has this signature, and lives (`e`)
            // until the thread is joined.
            let r = unsafe { stub.call(p as *const c_void, &[21], &mut ret) };
            r.map(|()| ret[0]).map_err(|e| e.to_string())
        });
        assert_eq!(r, Ok(42), "{name}");
        drop(e);
    }
}

#[test]
fn an_entry_point_taking_16_kib_by_value_gets_every_byte() {
    // The entry thunk's frame holds the struct's slots (16 KiB, grown a
    // page at a time); the host sums what it got, against the same sum
    // worked out here. Every exit backend into every entry backend.
    const N: usize = 16 * 1024;
    let bytes: Vec<u8> = (0..N).map(|i| (i * 7 % 251) as u8).collect();
    let want = bytes.iter().enumerate().fold(5u64, |acc, (i, &x)| {
        acc.wrapping_add((i as u64 + 1) * u64::from(x))
    });
    let mut args: Vec<u64> = bytes
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    args.push(5);
    let sig = Signature::parse(&format!("({},u64)->u64", bytes_struct(N))).unwrap();
    let conv = CallConv::host().unwrap();
    for (exit_name, exit_bridge) in support::all_bridges() {
        for (entry_name, entry_bridge) in support::all_bridges() {
            let d = tierbridge::host::Dispatcher::from_host(
                Arc::new(
                    |c: tierbridge::host::EntryCall<'_>| -> Result<(), tierbridge::host::HostError> {
                        let bytes = c.args[..N / 8].iter().flat_map(|s| s.to_le_bytes());
                        c.ret[0] = bytes.enumerate().fold(c.args[N / 8], |acc, (i, x)| {
                            acc.wrapping_add((i as u64 + 1) * u64::from(x))
                        });
                        Ok(())
                    },
                ),
                FailurePolicy::Report,
            );
            let e = entry_bridge.entry_point(&sig, conv, &d, 0).unwrap();
            let stub = exit_bridge.exit_stub(&sig, conv).unwrap();
            let mut ret = [0u64];
            // SAFETY: the entry point has this signature.
            unsafe { stub.call(e.code_ptr(), &args, &mut ret) }.unwrap();
            assert_eq!(ret[0], want, "{exit_name} into {entry_name}");
        }
    }
}

#[test]
fn compiled_frames_larger_than_a_page_give_the_interpreters_results() {
    // 600 locals: the JIT's frame is about 5 KiB, grown a page at a time;
    // the function stores into the far end of it and calls itself.
    let mut text = String::from("fn big(n: i64) -> i64\n");
    for i in 0..600 {
        text.push_str(&format!("  local l{i}: i64\n"));
    }
    text.push_str(
        "  local.get n\n  local.set l599\n  local.get n\n  i64.eqz\n  br_if zero\n  local.get n\n  i64.const 1\n  i64.sub\n  call big\n  local.get l599\n  i64.add\n  return\nzero:\n  local.get l0\n  return\nend\n",
    );
    let eager = TierConfig {
        call_threshold: 1,
        loop_threshold: 1,
        force_deopt: false,
        ..TierConfig::default()
    };
    for (tiered, config) in [(false, TierConfig::interpreter_only()), (true, eager)] {
        // SAFETY: the program loads and stores nothing and calls no native.
        let rt = unsafe {
            Runtime::with_tiers(
                parse_program(&text).unwrap(),
                Arc::new(support::generated()),
                FailurePolicy::Report,
                config,
            )
        }
        .unwrap();
        // 1 + 2 + … + 100
        assert_eq!(rt.call("big", &[100]).unwrap(), 5050);
        assert_eq!(rt.call("big", &[100]).unwrap(), 5050);
        if tiered && cfg!(tierbridge_codegen) {
            assert_eq!(rt.tier_stats().compiled, 1, "the big frame was compiled");
        }
    }
}
