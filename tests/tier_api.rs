//! The public tier API, used as an outside crate would: a foreign stack VM
//! with its own dynasm JIT (`examples/tier_custom/vm.rs`, not tierbridge's
//! reference interpreter) exercises every protocol — entry cells under
//! concurrent publish and revert, hotness from C, OSR with a non-empty
//! operand stack and inside a callback from C, deoptimization storms, compile
//! failures, freeing reverted code — and every result is compared with the
//! VM's own interpreter or with values worked out by hand.
//!
//! The VM's JIT and the code written here are x86-64. The tests that need
//! the JIT, or a tier table with code memory (a bridge on the generated
//! backend), are left out of a build without code generation
//! (`--cfg tierbridge_no_codegen`); the rest run there too.
#![cfg(target_arch = "x86_64")]

#[path = "../examples/tier_custom/vm.rs"]
mod vm;

mod support;

#[cfg(tierbridge_codegen)]
use std::ffi::c_void;
use std::sync::Arc;

#[cfg(tierbridge_codegen)]
use tierbridge::abi::{CallConv, Signature};
#[cfg(tierbridge_codegen)]
use tierbridge::host::{FailurePolicy, FuncId, HostError};
use tierbridge::thunks::{Bridge, ExecStrategy};
use tierbridge::tier::{CodeMemory, TierConfig, TierError};
#[cfg(tierbridge_codegen)]
use tierbridge::tier::{
    CompileError, CompileRequest, Compiled, Compiler, FnDecl, FrameState, Interpreter, TierCall,
    TierTable,
};

const PROGRAM: &str = "
# sum of 0..n in locals
fn sum_to (i64)->i64 3
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

# the same sum, carried on the operand stack: the loop header has depth 1
fn sum_stack (i64)->i64 2
  const 0
top:
  get 1
  get 0
  lt
  jz done
  get 1
  add
  get 1
  const 1
  add
  set 1
  jmp top
done:
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

# a comparator with a loop inside (k < 20): OSR while C's qsort is below
fn cmp_spin (ptr,ptr)->i32 3
top:
  get 2
  const 20
  lt
  jz out
  get 2
  const 1
  add
  set 2
  jmp top
out:
  get 0
  load32
  get 1
  load32
  sub
  ret
end

# calls sum_to through its cell, in a loop
fn sums (i64)->i64 3
top:
  get 1
  get 0
  lt
  jz done
  get 2
  get 1
  call sum_to
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

# division: the JIT refuses it
fn quot (i64,i64)->i64 2
  get 0
  get 1
  div
  ret
end

# down(n) = n == 0 ? 0 : down(n - 1) + 1, recursing through its cell
fn down (i64)->i64 1
  get 0
  jz zero
  get 0
  const 1
  sub
  call down
  const 1
  add
  ret
zero:
  const 0
  ret
end

# loads through its argument: a null pointer traps in the interpreter
fn deref (ptr)->i64 1
  get 0
  load32
  ret
end
";

#[cfg(tierbridge_codegen)]
fn bridge() -> Arc<Bridge> {
    Arc::new(support::generated())
}

#[cfg(tierbridge_codegen)]
fn vms(config: TierConfig) -> (Arc<vm::Vm>, Arc<vm::Vm>) {
    let funcs = vm::parse(PROGRAM).unwrap();
    let interp = vm::Vm::new(
        funcs.clone(),
        Arc::new(Bridge::libffi()),
        TierConfig::interpreter_only(),
        false,
    );
    (interp, vm::Vm::new(funcs, bridge(), config, true))
}

fn eager() -> TierConfig {
    TierConfig {
        max_compiles: 1000,
        ..TierConfig::eager()
    }
}

/// n(n-1)/2, the sum of 0..n.
fn tri(n: i64) -> i64 {
    n * (n - 1) / 2
}

#[cfg(tierbridge_codegen)]
type Cmp = unsafe extern "C" fn(*const c_void, *const c_void) -> i32;

#[cfg(tierbridge_codegen)]
unsafe extern "C" {
    fn qsort(base: *mut c_void, n: usize, size: usize, cmp: Cmp);
}

#[cfg(tierbridge_codegen)]
fn as_cmp(p: *const c_void) -> Cmp {
    // SAFETY: the callers pass a comparator's native pointer, an
    // `extern "C" fn(ptr, ptr) -> i32` valid while its table lives.
    unsafe { std::mem::transmute::<*const c_void, Cmp>(p) }
}

#[cfg(tierbridge_codegen)]
fn sorted_with(cmp: Cmp, n: usize) -> Vec<i32> {
    let mut v: Vec<i32> = (0..n as i32).map(|i| (i * 7919) % 1009 - 504).collect();
    // SAFETY: `v` holds `n` i32s; `cmp` compares two of them.
    unsafe { qsort(v.as_mut_ptr().cast(), v.len(), 4, cmp) };
    v
}

#[cfg(tierbridge_codegen)]
fn sorted_by_rust(n: usize) -> Vec<i32> {
    let mut v: Vec<i32> = (0..n as i32).map(|i| (i * 7919) % 1009 - 504).collect();
    v.sort_unstable();
    v
}

#[test]
#[cfg(tierbridge_codegen)]
fn c_callers_and_the_interpreter_reach_compiled_code_after_tier_up() {
    let (interp, tiered) = vms(TierConfig {
        call_threshold: 10,
        loop_threshold: u32::MAX,
        ..TierConfig::default()
    });
    let t = &tiered.table;
    let f = tiered.id("sum_to");
    assert_eq!(t.current(f).unwrap(), t.interpreter_entry(f).unwrap());
    // SAFETY: sum_to's native pointer is an `extern "C" fn(i64) -> i64`.
    let from_c: extern "C" fn(i64) -> i64 =
        unsafe { std::mem::transmute(t.native_ptr(f).unwrap()) };
    for n in 0..5 {
        assert_eq!(from_c(n), tri(n));
        assert_eq!(tiered.call("sum_to", &[n]).unwrap(), tri(n));
    }
    // Ten calls, five from C and five from the interpreter: hot.
    assert!(t.is_compiled(f).unwrap(), "{:?}", t.fn_stats(f));
    assert_ne!(t.current(f).unwrap(), t.interpreter_entry(f).unwrap());
    assert_eq!(t.fn_stats(f).unwrap().calls, 10);
    for n in [0, 1, 7, 1000] {
        let want = interp.call("sum_to", &[n]).unwrap();
        assert_eq!(want, tri(n));
        assert_eq!(from_c(n), want);
        assert_eq!(tiered.call("sum_to", &[n]).unwrap(), want);
    }
    // Compiled calls are not counted: the count stopped at the threshold.
    assert_eq!(t.fn_stats(f).unwrap().calls, 10);
    // Compiled code calling through another function's cell.
    let sums = tiered.id("sums");
    t.compile_now(sums).unwrap();
    let want: i64 = (0..30).map(tri).sum();
    assert_eq!(tiered.call("sums", &[30]).unwrap(), want);
    assert_eq!(interp.call("sums", &[30]).unwrap(), want);
}

#[test]
#[cfg(tierbridge_codegen)]
fn a_thread_calling_through_the_cell_while_another_publishes_and_reverts_gets_equal_results() {
    let (_, tiered) = vms(TierConfig {
        call_threshold: u32::MAX,
        loop_threshold: u32::MAX,
        max_compiles: u32::MAX,
        ..TierConfig::default()
    });
    let t = tiered.table.clone();
    let f = tiered.id("sum_to");
    let p = t.native_ptr(f).unwrap() as usize;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let made = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stop2, made2) = (stop.clone(), made.clone());
    // The caller calls until told to stop (and at least 20 000 times), so
    // the flips below overlap its calls however the threads are scheduled.
    let caller = std::thread::spawn(move || {
        // SAFETY: sum_to's native pointer is an `extern "C" fn(i64) -> i64`,
        // valid while the table (kept by the main thread) lives.
        let g: extern "C" fn(i64) -> i64 = unsafe { std::mem::transmute(p) };
        let mut wrong = 0;
        let mut k = 0i64;
        while k < 20_000 || !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            wrong += usize::from(g(k % 100) != tri(k % 100));
            k += 1;
            made2.store(k as u64, std::sync::atomic::Ordering::Relaxed);
        }
        wrong
    });
    let mut flips = 0u64;
    while made.load(std::sync::atomic::Ordering::Relaxed) < 20_000 || flips < 200 {
        t.compile_now(f).unwrap();
        assert!(t.is_compiled(f).unwrap());
        // Published for a moment: the caller may run on it meanwhile.
        std::thread::yield_now();
        t.revert(f).unwrap();
        // Interpreted for a moment too.
        std::thread::yield_now();
        flips += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(caller.join().unwrap(), 0, "a call gave a wrong result");
    let calls = made.load(std::sync::atomic::Ordering::Relaxed);
    // Some of the calls from the other thread ran compiled code (they did
    // not reach the interpreter), and some ran interpreted.
    let interpreted = tiered
        .interpreted_from_native
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        interpreted > 0 && interpreted < calls,
        "{interpreted} of {calls} calls interpreted over {flips} publish/revert pairs"
    );
    // Every compiled version is still kept: a call may still be inside one.
    assert_eq!(t.fn_stats(f).unwrap().code_kept as u64, flips);
    assert_eq!(t.stats().reverts, flips);
}

#[test]
#[cfg(tierbridge_codegen)]
fn osr_with_a_non_empty_operand_stack_gives_the_interpreters_result() {
    let (interp, tiered) = vms(TierConfig {
        call_threshold: u32::MAX,
        loop_threshold: 50,
        ..TierConfig::default()
    });
    let f = &tiered.funcs[tiered.id("sum_stack").0 as usize];
    assert_eq!(
        f.depth[f.loop_headers[0] as usize], 1,
        "the header has the sum on the stack"
    );
    for n in [0, 10, 49, 50, 51, 1000, 100_000] {
        let want = interp.call("sum_stack", &[n]).unwrap();
        assert_eq!(want, tri(n));
        assert_eq!(tiered.call("sum_stack", &[n]).unwrap(), want, "n = {n}");
    }
    let s = tiered.table.stats();
    assert!(s.osr_entries >= 1 && s.compiled == 1, "{s:?}");
}

#[test]
#[cfg(tierbridge_codegen)]
fn osr_happens_inside_a_comparator_called_back_from_c() {
    let (_, tiered) = vms(TierConfig {
        call_threshold: u32::MAX,
        loop_threshold: 5,
        ..TierConfig::default()
    });
    let f = tiered.id("cmp_spin");
    // The first comparison runs interpreted from qsort's call and moves into
    // compiled code at its fifth back edge (qsort's frames below it); the
    // compiled entry is published too, so later comparisons start compiled.
    let v = sorted_with(as_cmp(tiered.table.native_ptr(f).unwrap()), 300);
    assert_eq!(v, sorted_by_rust(300));
    let s = tiered.table.stats();
    assert_eq!(s.osr_entries, 1, "{s:?}");
    assert!(tiered.table.is_compiled(f).unwrap());
}

#[test]
#[cfg(tierbridge_codegen)]
fn a_comparator_tiers_up_while_c_is_still_calling_it() {
    let (_, tiered) = vms(TierConfig {
        call_threshold: 50,
        loop_threshold: u32::MAX,
        ..TierConfig::default()
    });
    let f = tiered.id("cmp");
    let v = sorted_with(as_cmp(tiered.table.native_ptr(f).unwrap()), 2_000);
    assert_eq!(v, sorted_by_rust(2_000));
    // 2000 elements take thousands of comparisons; only the first 50 were
    // counted (interpreted): the rest went from qsort straight to compiled
    // code through the native pointer.
    let st = tiered.table.fn_stats(f).unwrap();
    assert!(st.compiled && st.calls == 50, "{st:?}");
}

/// Random loops over random arithmetic: `n` iterations of a body of
/// statements `l[c] = l[a] OP l[b]` or `l[c] = l[a] OP k`, an accumulator
/// carried on the operand stack, and the result mixing every local.
#[cfg(tierbridge_codegen)]
fn random_program(seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    let locals = 6; // n, i, and four variables
    let mut p = format!("fn r{seed} (i64)->i64 {locals}\n");
    for l in 2..locals {
        p += &format!("  const {}\n  set {l}\n", rng.i64(-1000..1000));
    }
    p += "  const 0\ntop:\n  get 1\n  get 0\n  lt\n  jz done\n";
    for _ in 0..rng.usize(1..8) {
        let (a, c) = (rng.u32(1..locals), rng.u32(2..locals));
        let op = ["add", "sub", "mul", "lt"][rng.usize(0..4)];
        p += &format!("  get {a}\n");
        if rng.bool() {
            p += &format!("  get {}\n", rng.u32(1..locals));
        } else {
            p += &format!("  const {}\n", rng.i64(i64::MIN..i64::MAX));
        }
        p += &format!("  {op}\n  set {c}\n");
        if rng.bool() {
            p += &format!("  get {c}\n  add\n");
        }
    }
    p += "  get 1\n  const 1\n  add\n  set 1\n  jmp top\ndone:\n";
    for l in 2..locals {
        p += &format!("  get {l}\n  add\n");
    }
    p += "  ret\nend\n";
    p
}

#[test]
#[cfg(tierbridge_codegen)]
fn random_programs_agree_interpreted_tiered_and_in_deoptimization_storms() {
    let hot = eager();
    let loops = TierConfig {
        call_threshold: u32::MAX,
        ..eager()
    };
    let force = |c: TierConfig| TierConfig {
        force_deopt: true,
        ..c
    };
    let mut deopts = 0;
    let mut osr = 0;
    for seed in 0..60u64 {
        let text = random_program(seed);
        let funcs = vm::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let interp = vm::Vm::new(
            funcs.clone(),
            Arc::new(Bridge::libffi()),
            TierConfig::interpreter_only(),
            false,
        );
        let name = format!("r{seed}");
        // Compiled at the first call; moved by OSR at the first back edge;
        // and both again with every guard failing.
        let ways = [
            ("tiered", vm::Vm::new(funcs.clone(), bridge(), hot, true)),
            ("osr", vm::Vm::new(funcs.clone(), bridge(), loops, true)),
            (
                "storm",
                vm::Vm::new(funcs.clone(), bridge(), force(hot), true),
            ),
            (
                "osr storm",
                vm::Vm::new(funcs, bridge(), force(loops), true),
            ),
        ];
        for n in [0i64, 1, 2, 17, 300] {
            let want = interp.call(&name, &[n]).unwrap();
            for (way, v) in &ways {
                assert_eq!(v.call(&name, &[n]).unwrap(), want, "{way}, n = {n}\n{text}");
            }
        }
        for (_, v) in &ways {
            deopts += v.table.stats().deopts;
            osr += v.table.stats().osr_entries;
        }
    }
    // Every add deoptimized in the storms: from function entries (through the
    // helper) and from OSR entries (handing the frame back).
    assert!(deopts > 500 && osr >= 100, "deopts {deopts}, osr {osr}");
}

#[test]
#[cfg(tierbridge_codegen)]
fn a_deoptimization_storm_reverts_the_function_and_the_result_stays_right() {
    let config = TierConfig {
        force_deopt: true,
        deopt_threshold: 10,
        max_compiles: 3,
        ..TierConfig::eager()
    };
    let (interp, tiered) = vms(config);
    for n in 0..100 {
        assert_eq!(
            tiered.call("sum_to", &[n]).unwrap(),
            interp.call("sum_to", &[n]).unwrap()
        );
    }
    let s = tiered.table.stats();
    // Compiled three times at most, each reverted after 10 deopts.
    assert_eq!(s.compiled, 3, "{s:?}");
    assert_eq!(s.reverts, 3, "{s:?}");
    assert!(!tiered.table.is_compiled(tiered.id("sum_to")).unwrap());
}

#[test]
#[cfg(tierbridge_codegen)]
fn a_compile_failure_leaves_the_function_interpreted_and_is_counted() {
    let (_, tiered) = vms(eager());
    let t = &tiered.table;
    let f = tiered.id("quot");
    assert_eq!(tiered.call("quot", &[17, 5]).unwrap(), 3);
    assert_eq!(tiered.call("quot", &[-17, 5]).unwrap(), -3);
    let s = t.stats();
    assert_eq!((s.compiled, s.compile_failures), (0, 1), "{s:?}");
    let st = t.fn_stats(f).unwrap();
    assert!(
        st.last_error.as_deref().unwrap().contains("no division"),
        "{st:?}"
    );
    assert!(!st.compiled);
    // Asked once; an explicit request fails the same way, with the reason.
    let e = t.compile_now(f).unwrap_err();
    assert!(matches!(e, TierError::Compile { .. }), "{e}");
    assert_eq!(t.stats().compile_failures, 2);
    // A division by zero is still the interpreter's error.
    let e = tiered.call("quot", &[1, 0]).unwrap_err();
    assert!(e.to_string().contains("division by zero"), "{e}");
}

#[test]
#[cfg(tierbridge_codegen)]
fn reverted_code_is_kept_until_released_and_then_freed() {
    let (_, tiered) = vms(TierConfig {
        call_threshold: u32::MAX,
        loop_threshold: u32::MAX,
        ..TierConfig::default()
    });
    let t = &tiered.table;
    let f = tiered.id("sum_to");
    t.compile_now(f).unwrap();
    assert_eq!(tiered.call("sum_to", &[10]).unwrap(), 45);
    t.compile_now(f).unwrap(); // replaces the first code
    assert_eq!(t.fn_stats(f).unwrap().code_kept, 2);
    // SAFETY: no thread runs sum_to's code, and none is about to.
    assert_eq!(
        unsafe { t.release_retired(f) }.unwrap(),
        1,
        "the replaced code"
    );
    assert!(t.is_compiled(f).unwrap());
    assert_eq!(tiered.call("sum_to", &[10]).unwrap(), 45);
    t.revert(f).unwrap();
    // SAFETY: as above.
    assert_eq!(
        unsafe { t.release_retired(f) }.unwrap(),
        1,
        "the reverted code"
    );
    assert_eq!(t.fn_stats(f).unwrap().code_kept, 0);
    // SAFETY: sum_to's native pointer is an `extern "C" fn(i64) -> i64`.
    let from_c: extern "C" fn(i64) -> i64 =
        unsafe { std::mem::transmute(t.native_ptr(f).unwrap()) };
    assert_eq!(from_c(10), 45, "interpreted again");
    assert_eq!(tiered.call("sum_to", &[10]).unwrap(), 45);
}

#[test]
#[cfg(tierbridge_codegen)]
fn running_out_of_stack_is_an_error_in_both_tiers_of_a_foreign_vm() {
    // The VM's interpreter checks `tierbridge::stack` at each activation,
    // its JIT's code asks `call_guard_begin` before each call: the same
    // limit, so deep recursion ends in an error in both tiers, never in a
    // crash, and what fits gives the same result.
    std::thread::Builder::new()
        .stack_size(32 << 20)
        .spawn(|| {
            let (interp, tiered) = vms(eager());
            for vm in [&interp, &tiered] {
                assert_eq!(vm.call("down", &[3000]).unwrap(), 3000);
                let e = vm.call("down", &[100_000_000]).unwrap_err();
                assert!(e.to_string().contains("native stack exhausted"), "{e}");
                assert_eq!(vm.call("down", &[10]).unwrap(), 10);
            }
            assert!(tiered.table.is_compiled(tiered.id("down")).unwrap());
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
#[cfg(tierbridge_codegen)]
fn a_guard_that_fails_into_a_trap_reports_the_interpreters_error() {
    let (_, tiered) = vms(eager());
    let t = &tiered.table;
    let f = tiered.id("deref");
    let x = 1234i32;
    assert_eq!(
        tiered.call("deref", &[&x as *const i32 as i64]).unwrap(),
        1234
    );
    assert!(t.is_compiled(f).unwrap());
    // Null: the compiled guard deoptimizes, the interpreter traps, and the
    // trap comes back through the exit call as the call's error.
    let mut ret = [0u64];
    let e = t.call(f, &[0], &mut ret).unwrap_err();
    assert!(matches!(e, TierError::Failed(_)), "{e}");
    assert!(e.to_string().contains("load from null"), "{e}");
    assert_eq!(t.stats().deopts, 1);
}

#[test]
#[cfg(tierbridge_codegen)]
fn bad_requests_are_typed_errors() {
    let (_, tiered) = vms(eager());
    let t = &tiered.table;
    let nobody = FuncId(10_000);
    assert!(matches!(
        t.native_ptr(nobody),
        Err(TierError::UnknownFunction(10_000))
    ));
    assert!(matches!(
        t.call(nobody, &[], &mut []),
        Err(TierError::UnknownFunction(_))
    ));
    assert!(!t.back_edge(nobody, 0));
    let f = tiered.id("sum_to");
    // Wrong slot counts are the bridge's errors, interpreted or compiled.
    for _ in 0..2 {
        assert!(matches!(t.call(f, &[], &mut [0]), Err(TierError::Thunk(_))));
        assert!(matches!(t.call(f, &[1], &mut []), Err(TierError::Thunk(_))));
        t.compile_now(f).unwrap();
    }
    // OSR with no room for the result.
    assert!(matches!(
        t.osr(f, 0, &[1, 0, 0], &[], &mut []),
        Err(TierError::BadFrame { .. })
    ));
    // A variadic function cannot be tiered.
    let e = t
        .add(FnDecl::new(
            "printf",
            Signature::parse("(ptr, ...)->i32").unwrap(),
        ))
        .unwrap_err();
    assert!(matches!(e, TierError::BadDecl { .. }), "{e}");
    // Publishing an OSR entry at a header nobody declared, or an offset
    // outside the code, publishes nothing.
    let mem = t.memory().unwrap();
    let ret42 = [0xb8, 42, 0, 0, 0, 0xc3]; // mov eax, 42 ; ret
    let bad_osr = Compiled {
        code: mem.install("ret42", &ret42).unwrap(),
        entry: Some(0),
        osr: vec![(12_345, 0)],
    };
    let before = t.current(f).unwrap();
    // SAFETY: nothing is published (the error is checked below).
    let e = unsafe { t.publish(f, bad_osr) }.unwrap_err();
    assert!(matches!(e, TierError::BadDecl { .. }), "{e}");
    let bad_entry = Compiled {
        code: mem.install("ret42", &ret42).unwrap(),
        entry: Some(6),
        osr: vec![],
    };
    // SAFETY: as above.
    let e = unsafe { t.publish(f, bad_entry) }.unwrap_err();
    assert!(matches!(e, TierError::Code(_)), "{e}");
    assert_eq!(t.current(f).unwrap(), before);
}

/// A compiler that panics: counted as a failure, never a crash.
#[cfg(tierbridge_codegen)]
struct Panics;

// SAFETY: it never returns code.
#[cfg(tierbridge_codegen)]
unsafe impl Compiler for Panics {
    fn compile(&self, _: &CompileRequest<'_>) -> Result<Compiled, CompileError> {
        panic!("this compiler always panics")
    }
}

/// An interpreter of one function, `(i64)->i64`: x + 1.
#[cfg(tierbridge_codegen)]
struct PlusOne;

#[cfg(tierbridge_codegen)]
impl Interpreter for PlusOne {
    fn interpret(&self, _: FuncId, args: &[u64], ret: &mut [u64]) -> Result<(), HostError> {
        ret[0] = args[0] + 1;
        Ok(())
    }

    fn resume(&self, _: FuncId, frame: &FrameState, ret: &mut [u64]) -> Result<(), HostError> {
        ret[0] = frame.locals()[0] + 1;
        Ok(())
    }
}

#[test]
#[cfg(tierbridge_codegen)]
fn a_panicking_compiler_is_a_counted_failure() {
    let t = TierTable::new(
        bridge(),
        CallConv::SysV,
        TierConfig::eager(),
        FailurePolicy::Report,
        Arc::new(PlusOne),
        Some(Box::new(Panics)),
    );
    let f = t
        .add(FnDecl::new(
            "plus_one",
            Signature::parse("(i64)->i64").unwrap(),
        ))
        .unwrap();
    let mut ret = [0];
    assert_eq!(t.call(f, &[41], &mut ret).unwrap(), TierCall::Interpret);
    let s = t.stats();
    assert_eq!((s.compiled, s.compile_failures), (0, 1));
    assert!(
        t.fn_stats(f)
            .unwrap()
            .last_error
            .unwrap()
            .contains("panicked")
    );
    // SAFETY: the native pointer is an `extern "C" fn(i64) -> i64`.
    let g: extern "C" fn(i64) -> i64 = unsafe { std::mem::transmute(t.native_ptr(f).unwrap()) };
    assert_eq!(g(41), 42);
}

#[test]
fn without_code_generation_the_table_interprets_everything() {
    let funcs = vm::parse(PROGRAM).unwrap();
    let v = vm::Vm::new(funcs, Arc::new(Bridge::libffi()), eager(), true);
    assert!(!v.table.can_compile());
    assert!(matches!(
        CodeMemory::of(&Bridge::libffi()),
        Err(TierError::NoCodeMemory { .. })
    ));
    assert_eq!(v.call("sum_to", &[100]).unwrap(), tri(100));
    assert_eq!(v.call("sum_stack", &[100]).unwrap(), tri(100));
    let f = v.id("sum_to");
    assert!(matches!(
        v.table.compile_now(f),
        Err(TierError::NoCodeMemory { .. })
    ));
    // The native pointer is the interpreter entry point.
    assert_eq!(
        v.table.native_ptr(f).unwrap(),
        v.table.interpreter_entry(f).unwrap()
    );
    // SAFETY: sum_to's native pointer is an `extern "C" fn(i64) -> i64`.
    let g: extern "C" fn(i64) -> i64 =
        unsafe { std::mem::transmute(v.table.native_ptr(f).unwrap()) };
    assert_eq!(g(10), 45);
    let s = v.table.stats();
    assert_eq!((s.compiled, s.osr_entries), (0, 0));
}

#[test]
fn code_memory_places_named_and_position_dependent_code_on_both_strategies() {
    for strategy in [ExecStrategy::DualMapping, ExecStrategy::WriteThenProtect] {
        let mem = match CodeMemory::with_strategy(strategy) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{strategy} is not available here: {e}");
                continue;
            }
        };
        assert_eq!(mem.strategy(), strategy);
        let code = mem
            .install("forty-two", &[0xb8, 42, 0, 0, 0, 0xc3])
            .unwrap();
        assert_eq!((code.name(), code.len()), ("forty-two", 6));
        // SAFETY: the bytes are `mov eax, 42 ; ret`.
        let f: extern "C" fn() -> u32 = unsafe { code.as_fn(0) };
        assert_eq!(f(), 42);
        // Position-dependent: `mov rax, imm64 ; ret` where the immediate is
        // the code's own final address, known only once it is reserved.
        let mut seen = 0;
        let here = mem
            .install_with("where am I", 11, |base, buf| {
                seen = base;
                buf[..2].copy_from_slice(&[0x48, 0xb8]);
                buf[2..10].copy_from_slice(&(base as u64).to_le_bytes());
                buf[10] = 0xc3;
                Ok::<(), TierError>(())
            })
            .unwrap();
        assert_eq!(here.addr() as usize, seen);
        // SAFETY: the bytes are `mov rax, imm64 ; ret`.
        let g: extern "C" fn() -> usize = unsafe { here.as_fn(0) };
        assert_eq!(g(), seen);
        assert!(here.contains(here.addr().cast()));
        assert!(here.ptr_at(11).is_err());
        // Nothing is writable and executable while the writer writes; a
        // writer that fails gives the reservation back (the next code of
        // the same size gets it) and says why.
        let mut reserved = 0;
        let e = mem
            .install_with("broken", 64, |base, _| {
                assert_eq!(support::wx_mappings(), Vec::<String>::new());
                reserved = base;
                Err(TierError::Code("the writer gave up".into()))
            })
            .unwrap_err();
        assert!(e.to_string().contains("gave up"), "{e}");
        let again = mem.install("same size", &[0xc3; 64]).unwrap();
        assert_eq!(again.addr() as usize, reserved, "{strategy}: reused");
        // Code larger than a slab gets one of its own.
        let big = vec![0xc3u8; 1 << 20];
        let big = mem.install("a megabyte of ret", &big).unwrap();
        // SAFETY: every byte is `ret`.
        let r: extern "C" fn() = unsafe { big.as_fn((1 << 20) - 1) };
        r();
        assert_eq!(support::wx_mappings(), Vec::<String>::new());
    }
}

/// A compiler that counts its calls, returns code without a function entry
/// or OSR entries (`ret`), and, when asked, reverts the function while it
/// compiles.
#[cfg(tierbridge_codegen)]
struct Counting {
    calls: std::sync::atomic::AtomicU32,
    revert_meanwhile: bool,
}

// SAFETY: it returns no entry and no OSR entry: nothing of its code is ever
// called.
#[cfg(tierbridge_codegen)]
unsafe impl Compiler for Counting {
    fn compile(&self, req: &CompileRequest<'_>) -> Result<Compiled, CompileError> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.revert_meanwhile {
            req.table.revert(req.func)?;
        }
        Ok(Compiled {
            code: req.memory.install(req.name, &[0xc3])?,
            entry: None,
            osr: Vec::new(),
        })
    }
}

#[cfg(tierbridge_codegen)]
fn counting_table(revert_meanwhile: bool) -> (Arc<TierTable>, FuncId, Arc<Counting>) {
    let compiler = Arc::new(Counting {
        calls: std::sync::atomic::AtomicU32::new(0),
        revert_meanwhile,
    });
    struct Shared(Arc<Counting>);
    // SAFETY: as Counting's.
    unsafe impl Compiler for Shared {
        fn compile(&self, req: &CompileRequest<'_>) -> Result<Compiled, CompileError> {
            self.0.compile(req)
        }
    }
    let t = TierTable::new(
        bridge(),
        CallConv::SysV,
        TierConfig {
            max_compiles: 100,
            ..TierConfig::eager()
        },
        FailurePolicy::Report,
        Arc::new(PlusOne),
        Some(Box::new(Shared(compiler.clone()))),
    );
    let f = t
        .add(FnDecl::new("plus_one", Signature::parse("(i64)->i64").unwrap()).loop_headers([3]))
        .unwrap();
    (t, f, compiler)
}

#[test]
#[cfg(tierbridge_codegen)]
fn code_without_entries_is_asked_for_once_not_at_every_call_or_back_edge() {
    let (t, f, compiler) = counting_table(false);
    let mut ret = [0];
    for _ in 0..1000 {
        assert_eq!(t.call(f, &[1], &mut ret).unwrap(), TierCall::Interpret);
    }
    assert_eq!(ret[0], 0, "the table does not run the interpreter itself");
    let calls = compiler.calls.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(calls, 1, "one compilation for the hot calls");
    // The compiled code gave the loop no OSR entry: it is not offered again.
    assert!(!(0..1000).any(|_| t.back_edge(f, 3)));
    assert_eq!(compiler.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    // A revert starts over: hot again, asked again (once).
    t.revert(f).unwrap();
    for _ in 0..100 {
        let _ = t.call(f, &[1], &mut ret).unwrap();
    }
    assert_eq!(compiler.calls.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
#[cfg(tierbridge_codegen)]
fn code_compiled_across_a_revert_is_dropped_not_published() {
    let (t, f, compiler) = counting_table(true);
    let e = t.compile_now(f).unwrap_err();
    assert!(e.to_string().contains("reverted while"), "{e}");
    assert_eq!(
        t.fn_stats(f).unwrap().code_kept,
        0,
        "the stale code was dropped"
    );
    // Not a failure, and nothing is turned off: hot calls ask again (this
    // compiler reverts every time, so until max_compiles, 100).
    assert_eq!(t.stats().compile_failures, 0);
    let mut ret = [0];
    for _ in 0..300 {
        let _ = t.call(f, &[1], &mut ret).unwrap();
    }
    assert_eq!(
        compiler.calls.load(std::sync::atomic::Ordering::Relaxed),
        100
    );
}

#[test]
#[cfg(tierbridge_codegen)]
fn frames_larger_than_the_stack_buffer_go_through_the_pooled_frames() {
    // 70 locals: more than TierTable::osr keeps on its stack (64), so the
    // frame is a pooled FrameState, in both outcomes.
    let text = "
fn wide (i64)->i64 70
top:
  get 1
  get 0
  lt
  jz done
  get 69
  get 1
  add
  set 69
  get 1
  const 1
  add
  set 1
  jmp top
done:
  get 69
  ret
end
";
    let loops = TierConfig {
        call_threshold: u32::MAX,
        loop_threshold: 1,
        ..TierConfig::default()
    };
    for force_deopt in [false, true] {
        let v = vm::Vm::new(
            vm::parse(text).unwrap(),
            bridge(),
            TierConfig {
                force_deopt,
                ..loops
            },
            true,
        );
        assert_eq!(
            v.call("wide", &[1000]).unwrap(),
            tri(1000),
            "force_deopt {force_deopt}"
        );
        let s = v.table.stats();
        assert!(s.osr_entries >= 1, "{s:?}");
        assert_eq!(s.deopts >= 1, force_deopt, "{s:?}");
    }
}
