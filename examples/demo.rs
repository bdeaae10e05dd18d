//! What tierbridge does so far, in one run: an "interpreter" (here, plain Rust
//! working on 8-byte slots) calls C functions through exit stubs, and hands C
//! a callback that runs on the interpreter side through an entry point, on the
//! generated backend (or libffi where code cannot be generated, saying why).
//!
//! `cargo run --release --example demo`

use std::ffi::{CStr, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tierbridge::abi::{CallConv, Scalar, Signature, classify};
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy, HostError};
use tierbridge::thunks::{BackendKind, Bridge, Value};

unsafe extern "C" {
    fn pow(x: f64, y: f64) -> f64;
    fn ldexp(x: f64, e: i32) -> f64;
    fn frexp(x: f64, e: *mut i32) -> f64;
    fn snprintf(buf: *mut u8, cap: usize, fmt: *const u8, ...) -> i32;
    fn qsort(base: *mut c_void, n: usize, size: usize, cmp: *const c_void);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let conv = CallConv::host()?;
    let bridge = Bridge::new(BackendKind::Generated)?;
    match (bridge.fallback_reason(), bridge.exec_strategy()) {
        (Some(why), _) => println!("tierbridge demo: backend {} ({why})", bridge.kind()),
        (None, Some(exec)) => {
            println!(
                "tierbridge demo: backend {}, executable memory by {exec}",
                bridge.kind()
            )
        }
        (None, None) => println!("tierbridge demo: backend {}", bridge.kind()),
    }
    println!("host convention {conv}\n");

    // 1. Signatures are data: parse one and see where each argument travels.
    let sig: Signature = "(i32, {f32,f32}, f64, {[u8;17]}) -> {i64,f64}".parse()?;
    for conv in CallConv::ALL {
        println!("classify({sig}, {conv}):");
        for line in classify(&sig, conv).to_string().lines() {
            println!("  {line}");
        }
        println!();
    }

    // 2. Exit stubs: call libm and libc from slots.
    let f64x2 = bridge.exit_stub(&"(f64,f64)->f64".parse()?, conv)?;
    // SAFETY: pow is double pow(double, double).
    let r =
        unsafe { f64x2.call_values(pow as *const c_void, &[Value::F64(2.0), Value::F64(0.5)])? };
    println!("pow(2, 0.5)            = {r:?}");
    let ld = bridge.exit_stub(&"(f64,i32)->f64".parse()?, conv)?;
    // SAFETY: ldexp is double ldexp(double, int).
    let r = unsafe { ld.call_values(ldexp as *const c_void, &[Value::F64(0.75), Value::I32(4)])? };
    println!("ldexp(0.75, 4)         = {r:?}");
    let fr = bridge.exit_stub(&"(f64,ptr)->f64".parse()?, conv)?;
    let mut exp = 0i32;
    // SAFETY: frexp is double frexp(double, int *); `exp` outlives the call.
    let r = unsafe {
        fr.call_values(
            frexp as *const c_void,
            &[Value::F64(48.0), Value::Ptr((&raw mut exp).cast())],
        )?
    };
    println!("frexp(48, &e)          = {r:?}, e = {exp}");

    // Variadic: snprintf's call site lists the promoted variadic types.
    let declared: Signature = "(ptr,u64,ptr,...)->i32".parse()?;
    let site = declared.with_varargs(&[Scalar::I32.into(), Scalar::F64.into()])?;
    let sn = bridge.exit_stub(&site, conv)?;
    let mut buf = [0u8; 64];
    let fmt = c"%d apples weigh %.3f kg";
    let args = [
        buf.as_mut_ptr() as u64,
        64,
        fmt.as_ptr() as u64,
        12,
        1.625f64.to_bits(),
    ];
    let mut ret = [0u64];
    // SAFETY: snprintf with a format matching the call site's types; buf has 64 bytes.
    unsafe { sn.call(snprintf as *const c_void, &args, &mut ret)? };
    println!(
        "snprintf(...)          = {} chars: {:?}",
        ret[0] as i32,
        CStr::from_bytes_until_nul(&buf)?
    );

    // 3. Entry points: qsort calls an interpreter-side comparator.
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let comparator = move |c: EntryCall<'_>| -> Result<(), HostError> {
        counter.fetch_add(1, Ordering::Relaxed);
        // SAFETY: qsort passes two pointers into the i32 array being sorted.
        let (a, b) = unsafe { (*(c.args[0] as *const i32), *(c.args[1] as *const i32)) };
        c.ret[0] = a.cmp(&b) as i64 as u64;
        Ok(())
    };
    let dispatcher = Dispatcher::from_host(Arc::new(comparator), FailurePolicy::Report);
    let cmp = bridge.entry_point(&"(ptr,ptr)->i32".parse()?, conv, &dispatcher, 0)?;
    let mut data: Vec<i32> = (0..20).map(|i| (i * 7919 + 13) % 101 - 50).collect();
    let qs = bridge.exit_stub(&"(ptr,u64,u64,ptr)->void".parse()?, conv)?;
    let args = [
        data.as_mut_ptr() as u64,
        data.len() as u64,
        4,
        cmp.code_ptr() as u64,
    ];
    // SAFETY: qsort over `data` (20 i32s) with a comparator of the right signature.
    unsafe { qs.call(qsort as *const c_void, &args, &mut [])? };
    println!(
        "qsort with interpreted comparator ({} calls): {data:?}",
        calls.load(Ordering::Relaxed)
    );
    assert!(data.windows(2).all(|w| w[0] <= w[1]));

    // 4. What a call costs (median of 5 runs of 200k calls; benches/ has the full set).
    let n = 200_000;
    let direct = median_ns(n, || {
        let f: extern "C" fn(f64, f64) -> f64 = std::hint::black_box(add_f64);
        std::hint::black_box(f(1.0, 2.0));
    });
    let sig: Signature = "(f64,f64)->f64".parse()?;
    let args = [1f64.to_bits(), 2f64.to_bits()];
    let mut ret = [0u64];
    println!("\ncall overhead, (f64,f64)->f64, {n} calls, median of 5:");
    println!("  direct call through a fn pointer   {direct:6.1} ns");
    for b in [&bridge, &Bridge::libffi()] {
        let stub = b.exit_stub(&sig, conv)?;
        let t = median_ns(n, || {
            // SAFETY: add_f64 has this signature.
            unsafe {
                stub.call(add_f64 as *const c_void, &args, &mut ret)
                    .unwrap()
            };
        });
        let name = format!("{} exit stub from slots", b.kind());
        println!("  {name:<34} {t:6.1} ns  ({:.1}x direct)", t / direct);
    }
    Ok(())
}

extern "C" fn add_f64(a: f64, b: f64) -> f64 {
    a + b
}

fn median_ns(n: u32, mut f: impl FnMut()) -> f64 {
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[2]
}
