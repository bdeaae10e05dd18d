//! A wasm module (wasmi, unmodified) sorts an array in its own linear memory
//! with libc `qsort`, passing one of its own exports as the comparator; the
//! comparator calls libc `abs` (sort by magnitude) and the module calls libm.
//! The stack nests Rust → wasm → C → wasm → C.
//!
//! `cargo run --release --features wasmi --example wasmi_qsort`

use std::sync::Arc;
use std::time::Instant;

use tierbridge::abi::{CallConv, Signature};
use tierbridge::host::FailurePolicy;
use tierbridge::thunks::{BackendKind, Bridge};
use tierbridge::wasm::{NativeFn, NativeLibrary, WasmBridge, with_store};
use wasmi::{Engine, Linker, Module, Store, TypedFunc};

const WAT: &str = r#"
(module
  (import "libc" "qsort" (func $qsort (param i32 i64 i64 i64)))
  (import "libc" "abs" (func $abs (param i32) (result i32)))
  (import "libm" "pow" (func $pow (param f64 f64) (result f64)))
  (import "libm" "ldexp" (func $ldexp (param f64 i32) (result f64)))
  (memory (export "memory") 1)
  (global $calls (mut i32) (i32.const 0))

  ;; qsort comparator over two i32 pointers (offsets into this memory): by |x|, then x.
  (func (export "cmp_abs") (param $a i32) (param $b i32) (result i32)
    (local $x i32) (local $y i32) (local $ax i32) (local $ay i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (local.set $x (i32.load (local.get $a)))
    (local.set $y (i32.load (local.get $b)))
    (local.set $ax (call $abs (local.get $x)))
    (local.set $ay (call $abs (local.get $y)))
    (if (i32.ne (local.get $ax) (local.get $ay))
      (then (return (i32.sub (i32.gt_s (local.get $ax) (local.get $ay))
                             (i32.lt_s (local.get $ax) (local.get $ay))))))
    (i32.sub (i32.gt_s (local.get $x) (local.get $y)) (i32.lt_s (local.get $x) (local.get $y))))

  ;; n pseudo-random i32s in [-500, 500) at offset 0.
  (func (export "fill") (param $n i32) (param $seed i32)
    (local $i i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $seed (i32.add (i32.mul (local.get $seed) (i32.const 1103515245)) (i32.const 12345)))
      (i32.store (i32.shl (local.get $i) (i32.const 2))
        (i32.sub (i32.rem_u (i32.shr_u (local.get $seed) (i32.const 8)) (i32.const 1000)) (i32.const 500)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))))

  ;; qsort(memory + 0, n, 4, cmp): `cmp` is the native pointer the host made from cmp_abs.
  (func (export "sort") (param $n i32) (param $cmp i64) (result i32)
    (global.set $calls (i32.const 0))
    (call $qsort (i32.const 0) (i64.extend_i32_u (local.get $n)) (i64.const 4) (local.get $cmp))
    (global.get $calls))

  ;; hypot through libm: sqrt(pow(x,2) + pow(y,2)) scaled by ldexp.
  (func (export "hypot_scaled") (param $x f64) (param $y f64) (param $e i32) (result f64)
    (call $ldexp
      (f64.sqrt (f64.add (call $pow (local.get $x) (f64.const 2)) (call $pow (local.get $y) (f64.const 2))))
      (local.get $e)))
)
"#;

/// Rounds of the timed calls (each round times the three kinds back to back).
const ROUNDS: usize = 15;

struct Run {
    sorted: Vec<i32>,
    cmp_calls: u32,
    calls_per_sec: f64,
    /// Medians over the rounds: ns per call.
    entry_ns: f64,
    typed_ns: f64,
    untyped_ns: f64,
    /// Medians of each round's ratio to the typed call of the same round
    /// (a round's three loops run back to back, so a slow spell of the
    /// machine moves all three).
    entry_ratio: f64,
    untyped_ratio: f64,
    hypot: f64,
}

fn run(kind: BackendKind, n: u32) -> Result<Run, Box<dyn std::error::Error>> {
    let bridge = Arc::new(Bridge::new(kind)?);
    if let Some(why) = bridge.fallback_reason() {
        println!("  ({why})");
    }
    let wb = WasmBridge::new(bridge);
    let engine = Engine::default();
    let module = Module::new(&engine, wat::parse_str(WAT)?)?;
    let mut store = Store::new(&engine, ());
    let mut linker = <Linker<()>>::new(&engine);
    // SAFETY: loading the C and math libraries runs only their initialisers.
    let (libc, libm) = unsafe {
        (
            NativeLibrary::open("libc.so.6")?,
            NativeLibrary::open("libm.so.6")?,
        )
    };
    let conv = CallConv::SysV;
    let imports = [
        ("libc", "qsort", &libc, "(ptr,u64,u64,ptr)->void"),
        ("libc", "abs", &libc, "(i32)->i32"),
        ("libm", "pow", &libm, "(f64,f64)->f64"),
        ("libm", "ldexp", &libm, "(f64,i32)->f64"),
    ];
    for (module_name, name, lib, sig) in imports {
        let sig: Signature = sig.parse()?;
        // SAFETY: these are the C library's functions with exactly these prototypes.
        let native = unsafe { NativeFn::new(lib.symbol(name)?, sig, conv) };
        wb.link_native(&mut linker, &module, module_name, name, &native)?;
    }
    let instance = linker.instantiate_and_start(&mut store, &module)?;
    let cmp_sig: Signature = "(ptr,ptr)->i32".parse()?;
    let cmp = wb.export_entry(
        &store,
        &instance,
        "cmp_abs",
        &cmp_sig,
        conv,
        FailurePolicy::Report,
    )?;

    let fill: TypedFunc<(i32, i32), ()> = instance.get_typed_func(&store, "fill")?;
    let sort: TypedFunc<(i32, i64), i32> = instance.get_typed_func(&store, "sort")?;
    fill.call(&mut store, (n as i32, 7))?;
    let t = Instant::now();
    let cmp_calls = sort.call(&mut store, (n as i32, cmp.code_ptr() as i64))? as u32;
    let calls_per_sec = f64::from(cmp_calls) / t.elapsed().as_secs_f64();
    let memory = instance
        .get_memory(&store, "memory")
        .ok_or("no memory export")?;
    let sorted: Vec<i32> = memory.data(&store)[..4 * n as usize]
        .chunks(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();

    // The bridge's own cost: the comparator called through the entry point from
    // native code, against wasmi calling the same export from Rust.
    let cmp_typed: TypedFunc<(i32, i32), i32> = instance.get_typed_func(&store, "cmp_abs")?;
    // SAFETY: the entry point has the C signature (ptr,ptr)->i32 and outlives the loop.
    let cmp_native: extern "C" fn(*const i32, *const i32) -> i32 = unsafe { cmp.as_fn() };
    let base = memory.data_ptr(&store) as *const i32;
    let reps = 100_000u32;
    let (mut entry_ns, mut typed_ns, mut untyped_ns) = (Vec::new(), Vec::new(), Vec::new());
    let cmp_func = instance.get_func(&store, "cmp_abs").ok_or("no cmp_abs")?;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        with_store(&mut store, || {
            for i in 0..reps {
                // SAFETY: both pointers are inside the module's memory (offsets 0..16).
                std::hint::black_box(cmp_native(
                    base.wrapping_add((i % 4) as usize),
                    base.wrapping_add(1),
                ));
            }
        });
        entry_ns.push(t.elapsed().as_nanos() as f64 / f64::from(reps));
        let t = Instant::now();
        for i in 0..reps {
            std::hint::black_box(cmp_typed.call(&mut store, ((i % 4 * 4) as i32, 4))?);
        }
        typed_ns.push(t.elapsed().as_nanos() as f64 / f64::from(reps));
        let t = Instant::now();
        let mut out = [wasmi::Val::I32(0)];
        for i in 0..reps {
            let args = [wasmi::Val::I32((i % 4 * 4) as i32), wasmi::Val::I32(4)];
            cmp_func.call(&mut store, &args, &mut out)?;
            std::hint::black_box(&out);
        }
        untyped_ns.push(t.elapsed().as_nanos() as f64 / f64::from(reps));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratios = |v: &[f64]| v.iter().zip(&typed_ns).map(|(a, t)| a / t).collect();
    let (entry_ratio, untyped_ratio) = (median(ratios(&entry_ns)), median(ratios(&untyped_ns)));
    let hypot: TypedFunc<(f64, f64, i32), f64> = instance.get_typed_func(&store, "hypot_scaled")?;
    let hypot = hypot.call(&mut store, (3.0, 4.0, 2))?;
    Ok(Run {
        sorted,
        cmp_calls,
        calls_per_sec,
        entry_ns: median(entry_ns),
        typed_ns: median(typed_ns),
        untyped_ns: median(untyped_ns),
        entry_ratio,
        untyped_ratio,
        hypot,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = 2000;
    let mut results = Vec::new();
    for kind in [BackendKind::Generated, BackendKind::Libffi] {
        println!("backend {kind}:");
        let r = run(kind, n)?;
        // The same sort done in Rust: by magnitude, then by value.
        let mut expected = r.sorted.clone();
        expected.sort_by_key(|x| (x.abs(), *x));
        let ok = expected == r.sorted;
        println!(
            "  sorted {n} values in wasm memory with libc qsort: {:?} ... {:?}",
            &r.sorted[..6],
            &r.sorted[n as usize - 3..]
        );
        println!(
            "  matches a sort done in Rust: {}",
            if ok { "yes" } else { "NO" }
        );
        println!("  hypot_scaled(3, 4, 2) via libm pow/ldexp = {}", r.hypot);
        println!(
            "  comparator: {} calls, {:.2} M calls/s inside qsort",
            r.cmp_calls,
            r.calls_per_sec / 1e6
        );
        println!(
            "  one comparator call: {:.1} ns from C through the entry point vs {:.1} ns TypedFunc::call from Rust ({:+.1}%, the median of {ROUNDS} interleaved rounds' ratios)",
            r.entry_ns,
            r.typed_ns,
            (r.entry_ratio - 1.0) * 100.0
        );
        println!(
            "  (wasmi's own untyped Func::call from Rust, which a signature known only at run time needs: {:.1} ns, {:+.1}%)",
            r.untyped_ns,
            (r.untyped_ratio - 1.0) * 100.0
        );
        if !ok || r.hypot != 20.0 {
            return Err("wrong result".into());
        }
        results.push((kind, r));
    }
    Ok(())
}
