//! What tiering buys and what its transfers cost, as a table (medians of
//! interleaved rounds, ratios from the same run):
//!
//! - C's `qsort` of 10^6 `i32` with the reference interpreter's comparator,
//!   interpreter-only and tiered (compiled after 1000 calls from `qsort`),
//!   against a Rust closure behind an entry point and a native comparator;
//! - an OSR transfer of a 16-local frame and a deoptimization of one: the
//!   tier layer's own cost (hand-written code and a one-line interpreter on
//!   the public API) and the reference runtime's (its interpreter included);
//! - publishing compiled code in a cell and reverting it.
//!
//! `cargo run --release --example tier_bench -- [--quick]`

#[path = "common/measure.rs"]
mod measure;

use std::ffi::c_void;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

#[cfg(tierbridge_codegen)]
use dynasmrt::{DynasmApi, dynasm};
use measure::median;
use tierbridge::abi::{CallConv, Signature};
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy, FuncId, HostError};
use tierbridge::interp::{Runtime, parse_program};
use tierbridge::thunks::{BackendKind, Bridge};
use tierbridge::tier::{Compiled, TierConfig};
#[cfg(tierbridge_codegen)]
use tierbridge::tier::{FnDecl, FrameState, Interpreter, OsrOutcome, TierCall, TierTable};

/// The comparator, branch-free: (x > y) - (x < y).
const CMP: &str = "
fn cmp(a: ptr, b: ptr) -> i32
  local x: i64
  local y: i64
  local.get a
  i64.load32_s
  local.set x
  local.get b
  i64.load32_s
  local.set y
  local.get x
  local.get y
  i64.gt_s
  local.get x
  local.get y
  i64.lt_s
  i64.sub
  return
end
";

type Cmp = unsafe extern "C" fn(*const c_void, *const c_void) -> i32;

unsafe extern "C" {
    fn qsort(base: *mut c_void, n: usize, size: usize, cmp: Cmp);
}

/// The native comparator: the same expression, compiled by rustc.
unsafe extern "C" fn native_cmp(a: *const c_void, b: *const c_void) -> i32 {
    // SAFETY: qsort passes pointers to two elements of the i32 array.
    let (x, y) = unsafe { (*(a as *const i32), *(b as *const i32)) };
    i32::from(x > y) - i32::from(x < y)
}

static COMPARISONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

unsafe extern "C" fn counting_cmp(a: *const c_void, b: *const c_void) -> i32 {
    COMPARISONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: forwarded.
    unsafe { native_cmp(a, b) }
}

fn as_cmp(p: *const c_void) -> Cmp {
    // SAFETY: every pointer given here is an `extern "C" fn(ptr, ptr) -> i32`
    // that lives as long as the benchmark.
    unsafe { std::mem::transmute::<*const c_void, Cmp>(p) }
}

/// 16 locals: two parameters and 14 more. `osr16` has a loop at instruction
/// 0 that exits at once when a >= b; `add16` adds its parameters (the add is
/// a guard of the baseline JIT, so with `force_deopt` it deoptimizes).
fn frames_program() -> String {
    let mut p = String::new();
    for name in ["osr16", "add16"] {
        p += &format!("fn {name}(a: i64, b: i64) -> i64\n");
        for k in 0..14 {
            p += &format!("  local l{k}: i64\n");
        }
        if name == "osr16" {
            p += "top:\n  local.get a\n  local.get b\n  i64.ge_s\n  br_if done\n";
            p += "  local.get a\n  i64.const 1\n  i64.add\n  local.set a\n  br top\n";
            p += "done:\n  local.get l13\n  return\nend\n";
        } else {
            p += "  local.get a\n  local.get b\n  i64.add\n  return\nend\n";
        }
    }
    p
}

fn runtime(bridge: &Arc<Bridge>, text: &str, config: TierConfig) -> Runtime {
    // SAFETY: this file's own programs: their loads (of the i32s qsort hands
    // the comparator) and stores are valid for every call made here.
    unsafe {
        Runtime::with_tiers(
            parse_program(text).expect("valid"),
            bridge.clone(),
            FailurePolicy::Report,
            config,
        )
    }
    .expect("runtime")
}

/// ns per iteration of `f`, `n` iterations.
fn per_iter(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

/// The smallest interpreter: a function's result is the sum of its
/// arguments, or of the frame's slots when it resumes one.
#[cfg(tierbridge_codegen)]
struct Sum;

#[cfg(tierbridge_codegen)]
impl Interpreter for Sum {
    fn interpret(&self, _: FuncId, args: &[u64], ret: &mut [u64]) -> Result<(), HostError> {
        ret[0] = args.iter().sum();
        Ok(())
    }

    fn resume(&self, _: FuncId, frame: &FrameState, ret: &mut [u64]) -> Result<(), HostError> {
        ret[0] = frame.slots().iter().sum();
        Ok(())
    }
}

/// The tier layer's own transfer costs, on the public API alone: a table
/// with `Sum` as its interpreter and one function `(i64,i64)->i64` with 16
/// frame slots, whose code is written here: its entry puts a, b, 2, 3, ...,
/// 15 in 16 slots and deoptimizes at once; its OSR entry (header 0) sums
/// the 16 slots it is given. Returns ns per: OSR, a compiled call that
/// deoptimizes, a compiled call that does not (`lea rax, [rdi+rsi]`).
#[cfg(tierbridge_codegen)]
fn protocol_costs(bridge: &Arc<Bridge>, iters: u32, rounds: usize) -> [f64; 3] {
    let t = TierTable::new(
        bridge.clone(),
        CallConv::SysV,
        TierConfig {
            deopt_threshold: u32::MAX,
            ..TierConfig::interpreter_only()
        },
        FailurePolicy::Report,
        Arc::new(Sum),
        None,
    );
    let sig = Signature::parse("(i64,i64)->i64").unwrap();
    let decl = |name: &str| {
        FnDecl::new(name, sig.clone())
            .loop_headers([0])
            .frame_slots(16)
    };
    let (deopts, adds) = (t.add(decl("deopts")).unwrap(), t.add(decl("adds")).unwrap());
    let (helper, ctx) = t.deopt_helper();
    let mut ops = dynasmrt::VecAssembler::<dynasmrt::x64::X64Relocation>::new(0);
    // Entry: RawFrame at rsp, the result at rsp+32, 16 slots from rsp+48.
    dynasm!(ops ; .arch x64
        ; sub rsp, 184
        ; mov QWORD [rsp + 48], rdi ; mov QWORD [rsp + 56], rsi
    );
    for k in 2..16 {
        dynasm!(ops ; .arch x64 ; mov QWORD [rsp + 48 + 8 * k], k);
    }
    dynasm!(ops ; .arch x64
        ; mov DWORD [rsp], 0 ; mov DWORD [rsp + 4], 16 ; mov DWORD [rsp + 8], 16 ; mov DWORD [rsp + 12], 16
        ; lea rax, [rsp + 48] ; mov QWORD [rsp + 16], rax
        ; lea rax, [rsp + 32] ; mov QWORD [rsp + 24], rax
        ; mov rdi, QWORD ctx as i64 ; mov esi, deopts.0 as i32 ; mov rdx, rsp
        ; mov rax, QWORD helper as usize as i64 ; call rax
        ; mov rax, QWORD [rsp + 32]
        ; add rsp, 184 ; ret
    );
    let osr_at = ops.offset().0;
    dynasm!(ops ; .arch x64 ; mov rsi, QWORD [rdi + 16] ; xor eax, eax);
    for k in 0..16 {
        dynasm!(ops ; .arch x64 ; add rax, QWORD [rsi + 8 * k]);
    }
    dynasm!(ops ; .arch x64 ; mov rcx, QWORD [rdi + 24] ; mov QWORD [rcx], rax ; xor eax, eax ; ret);
    let code = ops.finalize().unwrap();
    let mem = t.memory().expect("code memory");
    let compiled = Compiled {
        code: mem.install("deopts at once", &code).unwrap(),
        entry: Some(0),
        osr: vec![(0, osr_at)],
    };
    // SAFETY: the entry takes (i64, i64) -> i64 in SysV and the OSR entry
    // follows RawFrame's contract (it only reads 16 slots and writes ret).
    unsafe { t.publish(deopts, compiled) }.unwrap();
    let adds_code = Compiled {
        code: mem
            .install("adds", &[0x48, 0x8d, 0x04, 0x37, 0xc3])
            .unwrap(),
        entry: Some(0),
        osr: Vec::new(),
    };
    // SAFETY: `lea rax, [rdi + rsi] ; ret` is an (i64, i64) -> i64.
    unsafe { t.publish(adds, adds_code) }.unwrap();
    let slots: Vec<u64> = (0..16).collect();
    let mut ret = [0u64];
    assert!(matches!(
        t.osr(deopts, 0, &slots, &[], &mut ret),
        Ok(OsrOutcome::Completed)
    ));
    assert_eq!(ret[0], 120);
    assert_eq!(
        t.call(deopts, &[100, 200], &mut ret).unwrap(),
        TierCall::Compiled
    );
    assert_eq!(ret[0], 300 + (2..16).sum::<u64>());
    let call = |f: FuncId| {
        let t = t.clone();
        move || {
            let mut ret = [0u64];
            let _ = black_box(t.call(black_box(f), &[1, 2], &mut ret));
        }
    };
    let mut rows: [Vec<f64>; 3] = Default::default();
    for _ in 0..rounds {
        rows[0].push(per_iter(iters, || {
            let mut ret = [0u64];
            let _ = black_box(t.osr(deopts, black_box(0), &slots, &[], &mut ret));
        }));
        rows[1].push(per_iter(iters, call(deopts)));
        rows[2].push(per_iter(iters, call(adds)));
    }
    rows.map(median)
}

/// Code is written with dynasm for x86-64, which a build without code
/// generation (another CPU, or `--cfg tierbridge_no_codegen`) does not have;
/// `main` stops before this is asked for there.
#[cfg(not(tierbridge_codegen))]
fn protocol_costs(_: &Arc<Bridge>, _: u32, _: usize) -> [f64; 3] {
    [f64::NAN; 3]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, rounds) = if quick { (100_000, 3) } else { (1_000_000, 5) };
    let bridge = Arc::new(Bridge::new(BackendKind::Generated).expect("a bridge"));
    if bridge.kind() != BackendKind::Generated {
        println!("no code generation here: {:?}", bridge.fallback_reason());
        return;
    }
    let conv = CallConv::host().expect("x86-64");

    // --- qsort --------------------------------------------------------------
    let mut rng = fastrand::Rng::with_seed(7);
    let data: Vec<i32> = (0..n).map(|_| rng.i32(..)).collect();
    let mut want = data.clone();
    want.sort_unstable();
    let interp = runtime(&bridge, CMP, TierConfig::interpreter_only());
    let tiered = runtime(
        &bridge,
        CMP,
        TierConfig {
            call_threshold: 1000,
            ..TierConfig::interpreter_only()
        },
    );
    let closure = Dispatcher::from_host(
        Arc::new(|c: EntryCall<'_>| -> Result<(), HostError> {
            // SAFETY: qsort passes pointers to two elements of the i32 array.
            let (x, y) = unsafe { (*(c.args[0] as *const i32), *(c.args[1] as *const i32)) };
            c.ret[0] = (i32::from(x > y) - i32::from(x < y)) as i64 as u64;
            Ok(())
        }),
        FailurePolicy::Report,
    );
    let closure_ep = bridge
        .entry_point(
            &Signature::parse("(ptr,ptr)->i32").unwrap(),
            conv,
            &closure,
            0,
        )
        .expect("an entry point");
    let sort = |cmp: Cmp| {
        let mut v = data.clone();
        let t = Instant::now();
        // SAFETY: `v` holds `n` i32s; `cmp` compares two of them.
        unsafe { qsort(v.as_mut_ptr().cast(), v.len(), 4, cmp) };
        let took = t.elapsed().as_nanos() as f64;
        assert!(v == want, "sorted wrongly");
        took
    };
    COMPARISONS.store(0, std::sync::atomic::Ordering::Relaxed);
    sort(counting_cmp);
    let compares = COMPARISONS.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let cmps: [(&str, Cmp); 4] = [
        ("native comparator (rustc)", native_cmp),
        (
            "Rust closure behind an entry point",
            as_cmp(closure_ep.code_ptr()),
        ),
        (
            "reference interpreter, interpreted",
            as_cmp(interp.entry_point("cmp").unwrap()),
        ),
        (
            "reference interpreter, tiered",
            as_cmp(tiered.entry_point("cmp").unwrap()),
        ),
    ];
    let mut times = vec![Vec::new(); cmps.len()];
    for _ in 0..rounds {
        for (k, (_, cmp)) in cmps.iter().enumerate() {
            times[k].push(sort(*cmp) / compares);
        }
    }
    assert!(
        tiered.tier_stats().compiled == 1,
        "{:?}",
        tiered.tier_stats()
    );
    let sort_ns: Vec<f64> = times.into_iter().map(median).collect();
    println!(
        "## qsort of {n} i32 ({compares:.0} comparisons), median of {rounds} interleaved rounds\n"
    );
    println!("| comparator | ns per comparison | × native |");
    println!("|---|---:|---:|");
    for ((name, _), ns) in cmps.iter().zip(&sort_ns) {
        println!("| {name} | {ns:.2} | {:.2} |", ns / sort_ns[0]);
    }
    println!(
        "\ntiered / native = {:.2} (target 1.5); interpreted / tiered = {:.1}\n",
        sort_ns[3] / sort_ns[0],
        sort_ns[2] / sort_ns[3]
    );

    // --- OSR and deoptimization of a 16-local frame -------------------------
    let text = frames_program();
    let hot = TierConfig {
        call_threshold: 1,
        loop_threshold: u32::MAX - 1, // OSR only when asked
        deopt_threshold: u32::MAX,
        ..TierConfig::default()
    };
    let fast = runtime(&bridge, &text, hot);
    let deopting = runtime(
        &bridge,
        &text,
        TierConfig {
            force_deopt: true,
            ..hot
        },
    );
    let plain = runtime(&bridge, &text, TierConfig::interpreter_only());
    let (osr16, add16) = (FuncId(0), FuncId(1));
    for rt in [&fast, &deopting] {
        assert!(rt.tier_up("osr16") && rt.tier_up("add16"));
    }
    let mut locals = [0u64; 16];
    locals[0] = 5; // a >= b: the loop exits at its header
    locals[15] = 42; // l13, the result
    let t = fast.tier_table();
    let mut ret = [0u64];
    assert!(matches!(
        t.osr(osr16, 0, &locals, &[], &mut ret),
        Ok(tierbridge::tier::OsrOutcome::Completed)
    ));
    assert_eq!(ret[0], 42);
    let calls = |rt: &Runtime, f: FuncId| {
        let t = rt.tier_table().clone();
        move || {
            let mut ret = [0u64];
            let _ = black_box(t.call(black_box(f), &[2, 3], &mut ret));
            assert_eq!(ret[0], 5);
        }
    };
    assert_eq!(plain.call("add16", &[2, 3]).unwrap(), 5);
    assert_eq!(deopting.call("add16", &[2, 3]).unwrap(), 5);
    let iters = if quick { 100_000 } else { 1_000_000 };
    let mut rows: [Vec<f64>; 5] = Default::default();
    for _ in 0..rounds {
        rows[0].push(per_iter(iters, || {
            let mut ret = [0u64];
            let _ = black_box(t.osr(osr16, black_box(0), &locals, &[], &mut ret));
        }));
        rows[1].push(per_iter(iters, calls(&fast, add16)));
        rows[2].push(per_iter(iters, calls(&deopting, add16)));
        rows[3].push(per_iter(iters, || {
            let _ = black_box(plain.call(black_box("add16"), &[2, 3]));
        }));
        rows[4].push(per_iter(iters, || {
            let _ = black_box(fast.call(black_box("add16"), &[2, 3]));
        }));
    }
    let r: Vec<f64> = rows.into_iter().map(median).collect();
    let p = protocol_costs(&bridge, iters, rounds);
    println!("## transfers of a 16-local frame, ns (median of {rounds} rounds of {iters})\n");
    println!("| what | ns |");
    println!("|---|---:|");
    println!(
        "| **the tier layer alone** (public API, code written by hand, a one-line interpreter) | |"
    );
    println!(
        "| OSR: `TierTable::osr` of 16 slots into an entry that sums them | {:.1} |",
        p[0]
    );
    println!(
        "| a compiled call that writes 16 slots and deoptimizes, through `TierTable::call` | {:.1} |",
        p[1]
    );
    println!(
        "| a compiled call that does not (`lea rax, [rdi+rsi]`) | {:.1} |",
        p[2]
    );
    println!(
        "| deoptimization's share (the difference) | {:.1} |",
        p[1] - p[2]
    );
    println!("| **the reference runtime** (its interpreter and baseline JIT) | |");
    println!(
        "| OSR: `TierTable::osr` into the loop's entry, which exits at once | {:.1} |",
        r[0]
    );
    println!(
        "| a call of compiled `add16` through `TierTable::call` | {:.1} |",
        r[1]
    );
    println!(
        "| the same call when its add deoptimizes (interpreter resumes) | {:.1} |",
        r[2]
    );
    println!(
        "| deoptimization's share (the difference) | {:.1} |",
        r[2] - r[1]
    );
    println!(
        "| `Runtime::call` of `add16`, interpreter only | {:.1} |",
        r[3]
    );
    println!("| `Runtime::call` of `add16`, compiled | {:.1} |", r[4]);
    println!("\ntargets: OSR ≤ 100 ns, deoptimization ≤ 100 ns\n");

    // --- publish and revert -------------------------------------------------
    let k = if quick { 2_000 } else { 10_000 };
    let mem = t.memory().expect("code memory");
    // lea rax, [rdi + rsi] ; ret — an `add16` of the right signature.
    let bytes = [0x48, 0x8d, 0x04, 0x37, 0xc3];
    let mut publish = Vec::new();
    let mut revert = Vec::new();
    for _ in 0..rounds {
        let codes: Vec<_> = (0..k)
            .map(|_| mem.install("add16 by hand", &bytes).unwrap())
            .collect();
        let start = Instant::now();
        for code in codes {
            let compiled = Compiled {
                code,
                entry: Some(0),
                osr: Vec::new(),
            };
            // SAFETY: the bytes add the two i64 arguments: add16's signature.
            unsafe { t.publish(add16, compiled) }.unwrap();
            t.revert(add16).unwrap();
        }
        publish.push(start.elapsed().as_nanos() as f64 / f64::from(k));
        revert.push(per_iter(k, || t.revert(add16).unwrap()));
        // SAFETY: no thread runs add16's code now.
        unsafe { t.release_retired(add16) }.unwrap();
    }
    let (pair, rev) = (median(publish), median(revert));
    println!("## publish and revert, ns (median of {rounds} rounds of {k})\n");
    println!("| what | ns |");
    println!("|---|---:|");
    println!("| publish + revert | {pair:.1} |");
    println!("| revert alone | {rev:.1} |");
    println!("| publish (the difference) | {:.1} |", pair - rev);
}
