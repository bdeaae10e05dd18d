//! Generated code that tools can see through: backtraces taken inside host
//! functions that C called through entry thunks continue below the thunk
//! and below the C code, down to this test's own frames, on both memory
//! strategies; and the `.eh_frame` registered for stubs and thunks
//! describes them.

// Generated code is what these tests look at.
#![cfg(all(tierbridge_codegen, target_os = "linux"))]

mod support;

use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use tierbridge::abi::{CallConv, Signature};
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy, HostError};
use tierbridge::interp::{Runtime, parse_program};
use tierbridge::thunks::{BackendKind, Bridge, BridgeOptions, ExecStrategy};
use tierbridge::tier::TierConfig;

fn bridge(exec: ExecStrategy) -> Option<Bridge> {
    let b = Bridge::with_options(BridgeOptions {
        backend: BackendKind::Generated,
        exec: Some(exec),
        ..BridgeOptions::default()
    })
    .ok()?;
    (b.kind() == BackendKind::Generated).then_some(b)
}

/// Sorts through an exit stub for `qsort` whose comparator is an entry
/// point; the host captures a backtrace at its first call and returns it.
#[inline(never)]
fn sort_through_the_bridge(bridge: &Bridge) -> String {
    let seen = Arc::new(Mutex::new(None::<String>));
    let seen2 = seen.clone();
    let host = move |call: EntryCall<'_>| -> Result<(), HostError> {
        let mut s = seen2.lock().unwrap();
        if s.is_none() {
            *s = Some(std::backtrace::Backtrace::force_capture().to_string());
        }
        // SAFETY: qsort passes pointers to two i32s of the array.
        let (a, b) = unsafe { (*(call.args[0] as *const i32), *(call.args[1] as *const i32)) };
        call.ret[0] = (a.cmp(&b) as i32) as u32 as u64;
        Ok(())
    };
    let d = Dispatcher::from_host(Arc::new(host), FailurePolicy::Report);
    let conv = CallConv::host().unwrap();
    let cmp = bridge
        .entry_point(&Signature::parse("(ptr,ptr)->i32").unwrap(), conv, &d, 0)
        .unwrap();
    let stub = bridge
        .exit_stub(&Signature::parse("(ptr,u64,u64,ptr)->void").unwrap(), conv)
        .unwrap();
    let mut v: Vec<i32> = (0..64).map(|i| (i * 37) % 64).collect();
    let args = [
        v.as_mut_ptr() as u64,
        v.len() as u64,
        4,
        cmp.code_ptr() as u64,
    ];
    // SAFETY: qsort has this signature; the comparator is an entry point of
    // the comparator's signature, alive during the call.
    unsafe { stub.call(libc::qsort as *const c_void, &args, &mut []) }.unwrap();
    assert!(v.windows(2).all(|w| w[0] <= w[1]));
    seen.lock().unwrap().take().expect("the comparator ran")
}

#[test]
fn a_backtrace_in_a_callback_from_c_reaches_the_frames_below_c() {
    for exec in [ExecStrategy::WriteThenProtect, ExecStrategy::DualMapping] {
        let Some(b) = bridge(exec) else {
            println!("skipped {exec}: no generated backend here");
            continue;
        };
        let bt = sort_through_the_bridge(&b);
        // Below the entry thunk: C's qsort, then the exit stub, then the
        // Rust frames that called it (without unwind information for the
        // thunk, the unwinder stopped at the thunk).
        assert!(bt.contains("qsort"), "{exec}: {bt}");
        assert!(bt.contains("sort_through_the_bridge"), "{exec}: {bt}");
        // (An optimized build inlines the test function into its caller.)
        assert!(
            !cfg!(debug_assertions)
                || bt.contains("a_backtrace_in_a_callback_from_c_reaches_the_frames_below_c"),
            "{exec}: {bt}"
        );
    }
}

const PROGRAM: &str = r#"
extern qsort "(ptr,u64,u64,ptr)->void"
extern probe "()->void"

# qsort's comparator over int32_t, which calls probe() once per comparison
fn cmp(a: ptr, b: ptr) -> i32
  call probe
  local.get a
  i64.load32_s
  local.get b
  i64.load32_s
  i64.sub
  return
end

fn sort(base: ptr, n: i64) -> i64
  local.get base
  local.get n
  i64.const 4
  ref.func cmp
  call qsort
  i64.const 0
  return
end
"#;

static PROBED: Mutex<Option<String>> = Mutex::new(None);

extern "C" fn probe() {
    let mut s = PROBED.lock().unwrap();
    if s.is_none() {
        *s = Some(std::backtrace::Backtrace::force_capture().to_string());
    }
}

#[inline(never)]
fn sort_interpreted(rt: &Runtime) {
    let mut v: Vec<i32> = (0..32).map(|i| (i * 11) % 32).collect();
    rt.call("sort", &[v.as_mut_ptr() as u64, v.len() as u64])
        .unwrap();
    assert!(v.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn a_backtrace_inside_an_interpreted_comparator_reaches_below_qsort() {
    // Rust → interpreter → exit stub → qsort → entry point → interpreter
    // (the comparator) → exit stub → probe, which takes the backtrace.
    backtrace_through_the_runtime(TierConfig::interpreter_only(), "interpreted");
}

#[test]
fn a_backtrace_inside_a_compiled_comparator_reaches_below_qsort() {
    // The same with both functions compiled by the reference JIT at once:
    // Rust → exit stub → compiled sort → exit stub → qsort → cell jump →
    // compiled comparator → exit stub → probe.
    let eager = TierConfig {
        call_threshold: 1,
        loop_threshold: 1,
        force_deopt: false,
        ..TierConfig::default()
    };
    backtrace_through_the_runtime(eager, "compiled");
}

fn backtrace_through_the_runtime(config: TierConfig, what: &str) {
    for exec in [ExecStrategy::WriteThenProtect, ExecStrategy::DualMapping] {
        let Some(b) = bridge(exec) else {
            println!("skipped {exec}: no generated backend here");
            continue;
        };
        let program = parse_program(PROGRAM).unwrap();
        // SAFETY: the program loads only through the pointers qsort gives
        // its comparator, and calls qsort and probe as declared.
        let rt =
            unsafe { Runtime::with_tiers(program, Arc::new(b), FailurePolicy::Report, config) }
                .unwrap();
        // SAFETY: probe has the declared signature.
        unsafe { rt.bind_native("probe", probe as *const c_void) }.unwrap();
        // SAFETY: qsort from the C library has the declared signature.
        unsafe { rt.bind_natives_from_process() }.unwrap();
        // Twice: the first call makes the code hot (and compiles it).
        sort_interpreted(&rt);
        let _guard = PROBE_LOCK.lock().unwrap();
        *PROBED.lock().unwrap() = None;
        sort_interpreted(&rt);
        let bt = PROBED.lock().unwrap().take().expect("probe ran");
        if what == "compiled" {
            assert!(rt.tier_stats().compiled >= 2, "{exec}: both compiled");
        }
        assert!(bt.contains("qsort"), "{what} {exec}: {bt}");
        assert!(bt.contains("sort_interpreted"), "{what} {exec}: {bt}");
        assert!(
            bt.contains("backtrace_through_the_runtime"),
            "{what} {exec}: {bt}"
        );
    }
}

/// One test at a time uses `PROBED`.
static PROBE_LOCK: Mutex<()> = Mutex::new(());

/// Resident memory in KiB (Linux).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn publishing_and_unpublishing_100_000_regions_leaks_nothing_and_stays_linear() {
    let Some(b) = bridge(ExecStrategy::DualMapping) else {
        println!("skipped: no generated backend here");
        return;
    };
    let memory = tierbridge::tier::CodeMemory::of(&b).unwrap();
    // `ret`: its frame is the caller's return address alone.
    let code = [0xc3u8];
    let leaf = tierbridge::visibility::Unwind::Leaf;
    let round = |n: usize| {
        let t = std::time::Instant::now();
        for _ in 0..n {
            // Installed (an FDE built and registered), then dropped
            // (deregistered, memory back to the allocator).
            let c = memory.install_with_unwind("leaf", &code, &leaf).unwrap();
            // SAFETY: `ret` is a valid `extern "C" fn()`.
            let f: extern "C" fn() = unsafe { std::mem::transmute(c.addr()) };
            f();
        }
        t.elapsed()
    };
    round(10_000);
    let before = rss_kib();
    let small = round(10_000);
    let large = round(100_000);
    let after = rss_kib();
    println!("10 000: {small:?}, 100 000: {large:?}, RSS {before} -> {after} KiB");
    // Linear: ten times the regions take about ten times as long (a loose
    // bound for a shared machine; quadratic would be a hundred times).
    assert!(large < small * 40, "10 000: {small:?}, 100 000: {large:?}");
    // Nothing kept per region: 100 000 leaked FDEs would be megabytes.
    assert!(after < before + 2048, "RSS {before} -> {after} KiB");
}

/// Cranelift's unwind description carries the length of the code it was
/// made for: installed with fewer bytes, it would tell the unwinder about
/// code past the region's end (another region's), so it is refused; with
/// the code it came with, it is taken.
#[cfg(feature = "cranelift")]
#[test]
fn an_unwind_description_longer_than_the_code_is_refused() {
    use cranelift_codegen::ir::{self, AbiParam, InstBuilder, types};
    use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
    let Some(b) = bridge(ExecStrategy::DualMapping) else {
        println!("skipped: no generated backend here");
        return;
    };
    let memory = tierbridge::tier::CodeMemory::of(&b).unwrap();
    let isa = tierbridge::cranelift::host_isa().unwrap();
    let mut sig = ir::Signature::new(isa.default_call_conv());
    sig.params.push(AbiParam::new(types::I64));
    sig.returns.push(AbiParam::new(types::I64));
    let mut func = ir::Function::with_name_signature(ir::UserFuncName::user(0, 0), sig);
    let mut fctx = FunctionBuilderContext::new();
    let mut fb = FunctionBuilder::new(&mut func, &mut fctx);
    let block = fb.create_block();
    fb.append_block_params_for_function_params(block);
    fb.switch_to_block(block);
    fb.seal_block(block);
    let x = fb.block_params(block)[0];
    let y = fb.ins().iadd_imm_s(x, 1);
    fb.ins().return_(&[y]);
    fb.finalize(isa.frontend_config());
    let (bytes, unwind) = tierbridge::cranelift::compile_with_unwind(&isa, func).unwrap();
    assert!(
        matches!(unwind, tierbridge::visibility::Unwind::Cranelift(_)),
        "{unwind:?}"
    );
    let err = memory
        .install_with_unwind("short", &bytes[..bytes.len() - 1], &unwind)
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "covers {} bytes, the code is {}",
            bytes.len(),
            bytes.len() - 1
        )),
        "{err}"
    );
    let code = memory
        .install_with_unwind("whole", &bytes, &unwind)
        .unwrap();
    // SAFETY: the compiled function is `extern "C" fn(i64) -> i64` in the
    // host convention.
    let f: extern "C" fn(i64) -> i64 = unsafe { std::mem::transmute(code.addr()) };
    assert_eq!(f(41), 42);
}
