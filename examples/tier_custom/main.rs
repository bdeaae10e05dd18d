//! Tier-up for an interpreter that is not tierbridge's: a small stack VM
//! (`vm.rs`, its own bytecode and its own dynasm JIT) on tierbridge's public
//! tier API only.
//!
//! `cargo run --release --example tier_custom`
//!
//! It shows, each checked against the VM's interpreter:
//! 1. C callers (through the function's stable native pointer) and the
//!    interpreter reach compiled code after tier-up;
//! 2. a running loop moves into compiled code by OSR;
//! 3. a guard (signed overflow of `add`) deoptimizes back to the
//!    interpreter, which finishes the call;
//! 4. a comparator that C's `qsort` calls tiers up while `qsort` runs, and
//!    what that does to the sort's time.

mod vm;

fn main() {
    use std::ffi::c_void;
    use std::sync::Arc;
    use std::time::Instant;

    use tierbridge::thunks::{BackendKind, Bridge};
    use tierbridge::tier::TierConfig;

    const PROGRAM: &str = "
# sum of 0..n, the loop counter and the sum in locals
fn sum_to (i64)->i64 3
  const 0
  set 1
top:
  get 1
  get 0
  lt
  jz done
  get 2
  get 1
  add
  set 2
  get 1
  const 1
  add
  set 1
  jmp top
done:
  get 2
  ret
end

# x * 2^k by doubling: overflows (the add guard fails) when it wraps
fn double_k (i64,i64)->i64 2
top:
  get 1
  jz done
  get 0
  get 0
  add
  set 0
  get 1
  const 1
  sub
  set 1
  jmp top
done:
  get 0
  ret
end

# qsort's comparator over int32_t
fn cmp (ptr,ptr)->i32 2
  get 0
  load32
  get 1
  load32
  sub
  ret
end
";

    unsafe extern "C" {
        fn qsort(
            base: *mut c_void,
            n: usize,
            size: usize,
            cmp: unsafe extern "C" fn(*const c_void, *const c_void) -> i32,
        );
    }
    unsafe extern "C" fn c_cmp(a: *const c_void, b: *const c_void) -> i32 {
        // SAFETY: qsort passes pointers to elements of the i32 array.
        unsafe { *(a as *const i32) - *(b as *const i32) }
    }

    let bridge = Arc::new(Bridge::new(BackendKind::Generated).expect("a bridge"));
    if bridge.kind() != BackendKind::Generated {
        println!(
            "no code generation here ({:?}): nothing to tier",
            bridge.fallback_reason()
        );
        return;
    }
    let funcs = vm::parse(PROGRAM).expect("the program parses");
    let config = TierConfig {
        call_threshold: 100,
        loop_threshold: 1000,
        ..TierConfig::default()
    };
    let interp = vm::Vm::new(
        funcs.clone(),
        bridge.clone(),
        TierConfig::interpreter_only(),
        false,
    );
    let tiered = vm::Vm::new(funcs, bridge.clone(), config, true);
    let t = &tiered.table;

    // 1. Calls from C and from the interpreter reach compiled code.
    let sum_to = tiered.id("sum_to");
    // SAFETY: sum_to's native pointer is an `extern "C" fn(i64) -> i64`,
    // valid while the table lives.
    let from_c: extern "C" fn(i64) -> i64 =
        unsafe { std::mem::transmute(t.native_ptr(sum_to).expect("a function")) };
    for k in 0..200 {
        let n = k % 50;
        let want = interp.call("sum_to", &[n]).expect("interpreted");
        assert_eq!(from_c(n), want);
        assert_eq!(tiered.call("sum_to", &[n]).expect("tiered"), want);
    }
    assert!(t.is_compiled(sum_to).unwrap(), "{:?}", t.fn_stats(sum_to));
    println!(
        "1. sum_to: compiled after {} counted calls (from C and from the interpreter); sum_to(49) = {} in both tiers",
        config.call_threshold,
        from_c(49)
    );

    // 2. OSR: one long call, whose loop moves into compiled code.
    let double = tiered.id("double_k");
    let before = t.stats().osr_entries;
    let n = 5_000_000;
    let want = interp.call("sum_to", &[n]).unwrap();
    let osr_vm = vm::Vm::new(vm::parse(PROGRAM).unwrap(), bridge.clone(), config, true);
    assert_eq!(osr_vm.call("sum_to", &[n]).unwrap(), want);
    println!(
        "2. sum_to({n}) in one call: {} OSR entry (the frame moved at back edge {}), result {want}",
        osr_vm.table.stats().osr_entries,
        config.loop_threshold
    );
    let _ = before;

    // 3. Deoptimization: 3 doubled 62 times wraps; compiled code's add
    // overflows there, deoptimizes, and the interpreter finishes.
    t.compile_now(double).expect("compiles");
    let want = interp.call("double_k", &[3, 62]).unwrap();
    assert_eq!(want, 3i64.wrapping_shl(62));
    let deopts = t.stats().deopts;
    assert_eq!(tiered.call("double_k", &[3, 62]).unwrap(), want);
    assert_eq!(tiered.call("double_k", &[3, 10]).unwrap(), 3 << 10);
    assert_eq!(t.stats().deopts, deopts + 1);
    println!(
        "3. double_k(3, 62) = {want}: the add guard failed once and the interpreter finished it"
    );

    // 4. qsort's comparator tiers up while qsort runs.
    let data: Vec<i32> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) % 2_000_001) as i32 - 1_000_000)
        .collect();
    let mut want = data.clone();
    want.sort_unstable();
    let sort = |cmp: unsafe extern "C" fn(*const c_void, *const c_void) -> i32| {
        let mut v = data.clone();
        let start = Instant::now();
        // SAFETY: `v` is an array of `len` i32s; `cmp` compares two of them.
        unsafe { qsort(v.as_mut_ptr().cast(), v.len(), 4, cmp) };
        let took = start.elapsed();
        assert_eq!(v, want);
        took
    };
    let as_cmp = |p: *const c_void| {
        // SAFETY: `cmp`'s native pointer is an `extern "C" fn(ptr, ptr) -> i32`.
        unsafe {
            std::mem::transmute::<
                *const c_void,
                unsafe extern "C" fn(*const c_void, *const c_void) -> i32,
            >(p)
        }
    };
    let cmp_tiered = tiered.id("cmp");
    let t_interp = sort(as_cmp(interp.table.native_ptr(interp.id("cmp")).unwrap()));
    let t_tiered = sort(as_cmp(t.native_ptr(cmp_tiered).unwrap()));
    let t_c = sort(c_cmp);
    assert!(t.is_compiled(cmp_tiered).unwrap());
    let calls = 100_000f64 * 100_000f64.log2();
    println!(
        "4. qsort of 100000 i32: interpreted comparator {:.1} ms, tiered {:.1} ms (compiled after {} of its calls), C comparator {:.1} ms",
        t_interp.as_secs_f64() * 1e3,
        t_tiered.as_secs_f64() * 1e3,
        config.call_threshold,
        t_c.as_secs_f64() * 1e3,
    );
    println!(
        "   about {:.1} / {:.1} / {:.1} ns a comparison; tiers: {:?}",
        t_interp.as_secs_f64() * 1e9 / calls,
        t_tiered.as_secs_f64() * 1e9 / calls,
        t_c.as_secs_f64() * 1e9 / calls,
        t.stats()
    );
}
