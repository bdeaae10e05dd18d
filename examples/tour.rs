//! A tour of tierbridge in one run (under 10 seconds): C functions called from
//! interpreter slots, C calling interpreted code, a callback-heavy loop, a hot
//! interpreted function moved into compiled code mid-loop, and what each kind
//! of call costs.
//!
//! `cargo run --release --example tour`

#[path = "common/measure.rs"]
mod measure;

use std::ffi::{CStr, c_void};
use std::sync::Arc;
use std::time::Instant;

use tierbridge::abi::{CallConv, Scalar, Signature, classify};
use tierbridge::host::FailurePolicy;
use tierbridge::interp::{Runtime, parse_program};
use tierbridge::thunks::{BackendKind, Bridge, Value};
use tierbridge::tier::TierConfig;

unsafe extern "C" {
    fn pow(x: f64, y: f64) -> f64;
    fn ldexp(x: f64, e: i32) -> f64;
    fn frexp(x: f64, e: *mut i32) -> f64;
    fn snprintf(buf: *mut u8, cap: usize, fmt: *const u8, ...) -> i32;
    fn div(n: i32, d: i32) -> u64;
}

const PROGRAM: &str = r#"
extern qsort "(ptr,u64,u64,ptr)->void"

# qsort comparator over i32s, ascending, written in the interpreter's bytecode
fn cmp(a: ptr, b: ptr) -> i32
  local.get a
  i64.load32_s
  local.get b
  i64.load32_s
  i64.sub
  return
end

fn sort(base: ptr, n: i64)
  local.get base
  local.get n
  i64.const 4
  ref.func cmp
  call qsort
  return
end

# a hot loop: an FNV-style hash over 0..n
fn hot(n: i64) -> i64
  local i: i64
  local h: i64
  i64.const 1469598103934665603
  local.set h
top:
  local.get i
  local.get n
  i64.ge_s
  br_if done
  local.get h
  local.get i
  i64.xor
  i64.const 1099511628211
  i64.mul
  local.set h
  local.get i
  i64.const 1
  i64.add
  local.set i
  br top
done:
  local.get h
  return
end
"#;

fn section(title: &str) {
    println!(
        "\n── {title} {}",
        "─".repeat(70usize.saturating_sub(title.len()))
    );
}

/// The tour's program on `bridge`, tiered as `config` says, with its
/// natives (libc's `qsort`) bound.
fn runtime(
    bridge: &Arc<Bridge>,
    config: TierConfig,
) -> Result<Runtime, Box<dyn std::error::Error>> {
    // SAFETY: this file's own program: its loads, stores and native calls are
    // valid for every call made here.
    let rt = unsafe {
        Runtime::with_tiers(
            parse_program(PROGRAM)?,
            bridge.clone(),
            FailurePolicy::Report,
            config,
        )
    }?;
    // SAFETY: qsort from the C library has the declared signature.
    unsafe { rt.bind_natives_from_process() }?;
    Ok(rt)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let conv = CallConv::host()?;
    let bridge = Arc::new(Bridge::new(BackendKind::Generated)?);
    println!("tierbridge tour — host convention {conv}");
    match (bridge.fallback_reason(), bridge.exec_strategy()) {
        (Some(why), _) => println!("backend: {} ({why})", bridge.kind()),
        (None, Some(exec)) => {
            println!("backend: generated x86-64 code, executable memory by {exec}")
        }
        (None, None) => println!("backend: {}", bridge.kind()),
    }

    section("1. signatures are data");
    let sig: Signature = "(i32, {f32,f32}, f64, {[u8;17]}) -> {i64,f64}".parse()?;
    println!("classify({sig}, {conv}):");
    for line in classify(&sig, conv).to_string().lines() {
        println!("  {line}");
    }

    section("2. the interpreter calls C (exit stubs from slots)");
    let f64x2 = bridge.exit_stub(&"(f64,f64)->f64".parse()?, conv)?;
    // SAFETY: pow is double pow(double, double).
    let r =
        unsafe { f64x2.call_values(pow as *const c_void, &[Value::F64(2.0), Value::F64(0.5)])? };
    println!("  pow(2, 0.5)           = {r:?}");
    let ld = bridge.exit_stub(&"(f64,i32)->f64".parse()?, conv)?;
    // SAFETY: ldexp is double ldexp(double, int).
    let r = unsafe { ld.call_values(ldexp as *const c_void, &[Value::F64(0.75), Value::I32(4)])? };
    println!("  ldexp(0.75, 4)        = {r:?}");
    let fr = bridge.exit_stub(&"(f64,ptr)->f64".parse()?, conv)?;
    let mut e = 0i32;
    // SAFETY: frexp is double frexp(double, int *); `e` outlives the call.
    let r = unsafe {
        fr.call_values(
            frexp as *const c_void,
            &[Value::F64(48.0), Value::Ptr((&raw mut e).cast())],
        )?
    };
    println!("  frexp(48, &e)         = {r:?}, e = {e}   (out-parameter)");
    let dv = bridge.exit_stub(&"(i32,i32)->{i32,i32}".parse()?, conv)?;
    let mut ret = [0u64];
    // SAFETY: div is div_t div(int, int); div_t is {int quot; int rem}.
    unsafe { dv.call(div as *const c_void, &[47, 5], &mut ret)? };
    println!(
        "  div(47, 5)            = {{quot: {}, rem: {}}}   (struct returned in rax)",
        ret[0] as i32,
        (ret[0] >> 32) as i32
    );
    let site = "(ptr,u64,ptr,...)->i32"
        .parse::<Signature>()?
        .with_varargs(&[Scalar::I32.into(), Scalar::F64.into()])?;
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
    // SAFETY: snprintf with a format matching the call site's types; buf has 64 bytes.
    unsafe { sn.call(snprintf as *const c_void, &args, &mut ret)? };
    println!(
        "  snprintf(\"{}\", 12, 1.625) = {:?}   (variadic, %al = {})",
        fmt.to_str()?,
        CStr::from_bytes_until_nul(&buf)?,
        sn.layout().al.unwrap_or(0)
    );

    section("3. C calls the interpreter (entry points), a callback-heavy loop");
    let rt = runtime(&bridge, TierConfig::interpreter_only())?;
    let mut small: Vec<i32> = vec![42, -7, 19, 0, -23, 8];
    rt.call("sort", &[small.as_mut_ptr() as u64, small.len() as u64])?;
    println!("  qsort with an interpreted comparator: {small:?}");
    let n = 200_000;
    let mut big: Vec<i32> = (0..n)
        .map(|i| ((i as i64 * 2_654_435_761) % 1_000_003) as i32)
        .collect();
    let t = Instant::now();
    rt.call("sort", &[big.as_mut_ptr() as u64, n as u64])?;
    let secs = t.elapsed().as_secs_f64();
    assert!(big.windows(2).all(|w| w[0] <= w[1]));
    let calls = n as f64 * (n as f64).log2();
    println!(
        "  qsort of {n} ints: {:.0} ms, ~{:.1} M interpreted comparator calls/s from C",
        secs * 1e3,
        calls / secs / 1e6
    );
    // The same comparator in a tiered runtime: qsort's calls through its
    // native pointer count, and after 1000 of them it runs compiled code.
    let tiered_rt = runtime(&bridge, TierConfig::default())?;
    let mut big2: Vec<i32> = (0..n)
        .map(|i| ((i as i64 * 2_654_435_761) % 1_000_003) as i32)
        .collect();
    let t = Instant::now();
    tiered_rt.call("sort", &[big2.as_mut_ptr() as u64, n as u64])?;
    let tiered_secs = t.elapsed().as_secs_f64();
    assert_eq!(big, big2);
    println!(
        "  the same, tiered: {:.0} ms ({:.1}x; the comparator was compiled after 1000 of C's calls: {} compiled)",
        tiered_secs * 1e3,
        secs / tiered_secs,
        tiered_rt.tier_stats().compiled
    );

    section("4. tier-up: a hot interpreted loop moves into compiled code (OSR)");
    let iters = 3_000_000u64;
    let plain = runtime(&bridge, TierConfig::interpreter_only())?;
    let t = Instant::now();
    let a = plain.call("hot", &[iters])?;
    let interp_ms = t.elapsed().as_secs_f64() * 1e3;
    let tiered = runtime(&bridge, TierConfig::default())?;
    let t = Instant::now();
    let b = tiered.call("hot", &[iters])?;
    let tiered_ms = t.elapsed().as_secs_f64() * 1e3;
    let stats = tiered.tier_stats();
    println!(
        "  interpreter only: {interp_ms:.1} ms;  tiered: {tiered_ms:.1} ms ({} compiled, {} OSR entry)",
        stats.compiled, stats.osr_entries
    );
    println!(
        "  speedup {:.1}x, results {}",
        interp_ms / tiered_ms,
        if a == b { "equal" } else { "DIFFER" }
    );

    section("5. what a call costs (ns per call, ratio to a direct call of the same shape)");
    let table = measure::measure(&bridge, 50_000, 3);
    print!("{}", measure::markdown(&table));
    let (r1, r2, r3, r4) = measure::summary(&table);
    println!(
        "  in short: on the shapes of up to 8 scalar arguments a generated exit costs at most \
         {r1:.1}x and an entry at most {r2:.1}x a direct call; libffi is at least {r3:.1}x (exits) \
         and {r4:.1}x (entries) slower than the generated path."
    );
    println!(
        "  (a quick estimate: 3 rounds of 50 000 calls; `cargo run --release --example overhead` \
         measures 9 rounds of 10^6, and `cargo bench` runs criterion)"
    );
    println!("\ntour done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
