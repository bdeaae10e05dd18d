//! The reference interpreter: programs in the text form, on every backend,
//! against values worked out independently (Rust computing the same thing,
//! libc, hand-checked numbers), and malformed programs.

mod support;

use std::sync::{Arc, OnceLock};

use tierbridge::host::FailurePolicy;
use tierbridge::interp::{InterpError, Runtime, parse_program};
use tierbridge::native::NativeLibrary;
use tierbridge::thunks::Bridge;
use tierbridge::tier::TierConfig;

const PROGRAM: &str = r#"
extern abs "(i32)->i32"
extern pow "(f64,f64)->f64"
extern qsort "(ptr,u64,u64,ptr)->void"

# fib(n), recursively
fn fib(n: i64) -> i64
  local.get n
  i64.const 2
  i64.lt_s
  br_if small
  local.get n
  i64.const 1
  i64.sub
  call fib
  local.get n
  i64.const 2
  i64.sub
  call fib
  i64.add
  return
small:
  local.get n
  return
end

# sum of |i - k| for i in 0..n, through libc abs
fn sum_abs(n: i64, k: i64) -> i64
  local i: i64
  local acc: i64
top:
  local.get i
  local.get n
  i64.ge_s
  br_if done
  local.get acc
  local.get i
  local.get k
  i64.sub
  call abs
  i64.add
  local.set acc
  local.get i
  i64.const 1
  i64.add
  local.set i
  br top
done:
  local.get acc
  return
end

# Newton's method for sqrt(x), 30 steps, then pow(result, 2) through libm
fn sqrt_squared(x: f64) -> f64
  local g: f64
  local i: i64
  local.get x
  local.set g
again:
  local.get g
  local.get x
  local.get g
  f64.div
  f64.add
  f64.const 0.5
  f64.mul
  local.set g
  local.get i
  i64.const 1
  i64.add
  local.tee i
  i64.const 30
  i64.lt_s
  br_if again
  local.get g
  f64.const 2
  call pow
  return
end

# qsort comparator over two i32 pointers, descending
fn cmp_desc(a: ptr, b: ptr) -> i32
  local x: i64
  local y: i64
  local.get a
  i64.load32_s
  local.set x
  local.get b
  i64.load32_s
  local.set y
  local.get y
  local.get x
  i64.gt_s
  local.get y
  local.get x
  i64.lt_s
  i64.sub
  return
end

fn sort_desc(base: ptr, n: i64)
  local.get base
  local.get n
  i64.const 4
  ref.func cmp_desc
  call qsort
  return
end

fn narrow(x: i8) -> u16
  local.get x
  i64.const 1000
  i64.mul
  return
end

fn divide(a: i64, b: i64) -> i64
  local.get a
  local.get b
  i64.div_s
  return
end

fn trunc(x: f64) -> i64
  local.get x
  i64.trunc_f64
  return
end
"#;

/// The C math library (the test binary itself need not link it), opened
/// once and kept for the process.
fn libm() -> &'static NativeLibrary {
    static LIBM: OnceLock<NativeLibrary> = OnceLock::new();
    // SAFETY: loading the system math library runs only its own initialisers.
    LIBM.get_or_init(|| unsafe { NativeLibrary::open("libm.so.6") }.expect("libm.so.6 loads"))
}

/// The program interpreted on every backend, then tiered (compiled at the
/// first call, OSR at the first back-edge) and with every guard forced to
/// deoptimize: every test checks the same results all five ways.
fn runtimes() -> Vec<(String, Runtime)> {
    let program = parse_program(PROGRAM).expect("the program verifies");
    let hot = TierConfig {
        call_threshold: 1,
        loop_threshold: 1,
        force_deopt: false,
        ..TierConfig::default()
    };
    let mut ways: Vec<(String, Bridge, TierConfig)> = support::all_bridges()
        .into_iter()
        .map(|(name, b)| {
            (
                format!("{name} interpreter"),
                b,
                TierConfig::interpreter_only(),
            )
        })
        .collect();
    ways.push(("tiered".into(), support::generated(), hot));
    ways.push((
        "forced deopt".into(),
        support::generated(),
        TierConfig {
            force_deopt: true,
            ..hot
        },
    ));
    ways.into_iter()
        .map(|(name, b, config)| {
            let rt =
                // SAFETY: this file's own program: its loads, stores and native calls are valid for every call made here.
                unsafe { Runtime::with_tiers(program.clone(), Arc::new(b), FailurePolicy::Report, config) }
                    .unwrap();
            let process = NativeLibrary::this_process().unwrap();
            // SAFETY: pow from libm, abs and qsort from the C library have the
            // declared signatures.
            unsafe { rt.bind_natives_from(&[libm(), &process]) }.unwrap();
            (name, rt)
        })
        .collect()
}

fn fib(n: u64) -> u64 {
    if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
}

#[test]
fn programs_compute_what_rust_computes() {
    for (name, rt) in runtimes() {
        assert_eq!(rt.call("fib", &[20]).unwrap(), fib(20), "{name}");
        let want: i64 = (0..100i64).map(|i| (i - 37).abs()).sum();
        assert_eq!(
            rt.call("sum_abs", &[100, 37]).unwrap() as i64,
            want,
            "{name}"
        );
        let r = f64::from_bits(rt.call("sqrt_squared", &[2.0f64.to_bits()]).unwrap());
        assert!((r - 2.0).abs() < 1e-12, "{name}: {r}");
        // i8 argument -1 (slot all ones): -1 * 1000 = -1000, as u16 = 64536.
        assert_eq!(rt.call("narrow", &[u64::MAX]).unwrap(), 64536, "{name}");
        assert_eq!(
            rt.call("trunc", &[(-2.75f64).to_bits()]).unwrap() as i64,
            -2,
            "{name}"
        );
        assert_eq!(
            rt.call("trunc", &[f64::NAN.to_bits()]).unwrap() as i64,
            i64::MIN,
            "{name}"
        );
    }
}

#[test]
fn c_qsort_calls_an_interpreted_comparator_through_an_entry_point() {
    for (name, rt) in runtimes() {
        let mut v: Vec<i32> = (0..200).map(|i| (i * 7919 % 211) - 105).collect();
        let mut want = v.clone();
        want.sort_by(|a, b| b.cmp(a));
        rt.call("sort_desc", &[v.as_mut_ptr() as u64, v.len() as u64])
            .unwrap();
        assert_eq!(v, want, "{name}");
        // The entry point is a plain C function pointer.
        let cmp = rt.entry_point("cmp_desc").unwrap();
        // SAFETY: it has the C signature int (*)(const void *, const void *).
        let f: extern "C" fn(*const i32, *const i32) -> i32 = unsafe { std::mem::transmute(cmp) };
        assert_eq!((f(&1, &2), f(&2, &1), f(&3, &3)), (1, -1, 0), "{name}");
    }
}

#[test]
fn traps_and_bad_calls_are_errors() {
    for (name, rt) in runtimes() {
        match rt.call("divide", &[1, 0]) {
            Err(InterpError::Trap { func, message, .. }) => {
                assert_eq!(func, "divide");
                assert!(message.contains("division by zero"), "{name}: {message}");
            }
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(
            rt.call("divide", &[i64::MIN as u64, u64::MAX]).unwrap() as i64,
            i64::MIN,
            "{name}: wraps"
        );
        assert!(matches!(rt.call("fib", &[]), Err(InterpError::Call(_))));
        assert!(matches!(rt.call("nope", &[]), Err(InterpError::Call(_))));
    }
    let program = parse_program("extern nosuchsymbol_tierbridge \"()->void\"\nfn f()\n  call nosuchsymbol_tierbridge\n  return\nend\n").unwrap();
    // SAFETY: this file's own program: its loads, stores and native calls are valid for every call made here.
    let rt = unsafe {
        Runtime::new(
            program,
            Arc::new(tierbridge::thunks::Bridge::libffi()),
            FailurePolicy::Report,
        )
    }
    .unwrap();
    // SAFETY: nothing is bound: the symbol does not exist.
    let e = unsafe { rt.bind_natives_from_process() }.unwrap_err();
    assert!(matches!(e, InterpError::Native(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("nosuchsymbol_tierbridge") && text.contains("this process"),
        "the error names the symbol and where it was looked for: {text}"
    );
    assert!(matches!(rt.call("f", &[]), Err(InterpError::Unbound(_))));
}

fn syntax(text: &str) -> (usize, usize, String) {
    match parse_program(text) {
        Err(InterpError::Syntax {
            line,
            column,
            message,
        }) => (line, column, message),
        other => panic!("expected a syntax error for {text:?}, got {other:?}"),
    }
}

#[test]
fn malformed_programs_are_errors_with_line_and_column() {
    let cases: &[(&str, usize, usize, &str)] = &[
        (
            "fn f()\n  i64.frob\n  return\nend\n",
            2,
            3,
            "unknown instruction",
        ),
        (
            "fn f() -> i64\n  f64.const 1\n  return\nend\n",
            3,
            3,
            "return with stack",
        ),
        (
            "fn f() -> i64\n  i64.const 1\n  f64.const 2\n  i64.add\n  return\nend\n",
            4,
            3,
            "Int operand",
        ),
        ("fn f()\n  br nowhere\nend\n", 2, 6, "no label"),
        ("fn f()\n  local.get x\n  return\nend\n", 2, 13, "no local"),
        ("fn f(x: f32)\n  return\nend\n", 1, 9, "f32"),
        ("fn f()\n  return\n", 1, 1, "no `end`"),
        (
            "fn f() -> i64\n  i64.const 1\nend\n",
            2,
            3,
            "falls off the end",
        ),
        (
            "fn f(c: i64) -> i64\n  local.get c\n  br_if l\n  i64.const 1\nl:\n  i64.const 2\n  return\nend\n",
            6,
            3,
            "differs between paths",
        ),
        (
            "fn f()\n  i64.const 12x\n  return\nend\n",
            2,
            13,
            "not an i64",
        ),
        ("fn f()\n  call g\n  return\nend\n", 2, 8, "no function"),
        ("extern e \"(i32,,)->void\"\n", 1, 16, "expected"),
        // Found by fuzzing: the extern line took a missing name, text
        // between the name and the signature or after it, and a second
        // extern of the same name.
        ("extern \"(i32)->i32\"\n", 1, 8, "expected `extern NAME"),
        ("extern a\"(i32)->i32\"\n", 1, 8, "expected `extern NAME"),
        ("extern a b \"(i32)->i32\"\n", 1, 10, "quoted signature"),
        ("extern a \"(i32)->i32\" b\n", 1, 23, "nothing may follow"),
        (
            "extern a \"(i32)->i32\"\nextern a \"(i64)->i64\"\n",
            2,
            8,
            "already declared",
        ),
        ("garbage\n", 1, 1, "expected `fn`"),
        ("fn f()\n  drop\n  return\nend\n", 2, 3, "empty stack"),
    ];
    for (text, line, column, needle) in cases {
        let (l, c, m) = syntax(text);
        assert_eq!((l, c), (*line, *column), "{text:?}: {m}");
        assert!(m.contains(needle), "{text:?}: {m}");
    }
}
