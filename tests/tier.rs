//! Tiers: every program runs interpreter-only, tiered with thresholds of 1
//! (compiled at the first call, OSR at the first back-edge) and with every
//! guard forced to deoptimize — the results must be identical. Plus OSR in a
//! mixed stack (interpreter → C qsort → interpreted comparator), recursion
//! through compiled frames, a tier-up while another thread calls through the
//! cell, and the pure-interpreter mode on libffi.
//!
//! In a build without code generation (`--cfg tierbridge_no_codegen`) the
//! tiered runtimes interpret everything: the results must still agree, and
//! nothing may be compiled; the two tests whose subject is a tier-up itself
//! are left out there.

mod support;

use std::sync::Arc;

use tierbridge::host::FailurePolicy;
use tierbridge::interp::{Runtime, parse_program};
use tierbridge::thunks::Bridge;
use tierbridge::tier::TierConfig;

/// Whether this build generates code: tiered runtimes compile, or interpret
/// everything (without it, `--cfg tierbridge_no_codegen`).
const CODEGEN: bool = cfg!(tierbridge_codegen);

const PROGRAM: &str = r#"
extern abs "(i32)->i32"
extern qsort "(ptr,u64,u64,ptr)->void"
extern strcmp "(ptr,ptr)->i32"
extern atof "(ptr)->f64"
extern weigh8 "(i64,i64,i64,i64,i64,i64,i64,i64,f64)->i64"

fn collatz_steps(n: i64) -> i64
  local steps: i64
top:
  local.get n
  i64.const 1
  i64.le_s
  br_if done
  local.get steps
  i64.const 1
  i64.add
  local.set steps
  local.get n
  i64.const 2
  i64.rem_s
  br_if odd
  local.get n
  i64.const 2
  i64.div_s
  local.set n
  br top
odd:
  local.get n
  i64.const 3
  i64.mul
  i64.const 1
  i64.add
  local.set n
  br top
done:
  local.get steps
  return
end

# sum over i < n of collatz_steps(i): calls between tiers
fn total_steps(n: i64) -> i64
  local i: i64
  local acc: i64
top:
  local.get i
  local.get n
  i64.ge_s
  br_if done
  local.get acc
  local.get i
  call collatz_steps
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

# wrapping arithmetic past i64::MAX exercises the overflow guard
fn overflow_mix(n: i64) -> i64
  local i: i64
  local x: i64
  i64.const 9223372036854775000
  local.set x
top:
  local.get i
  local.get n
  i64.ge_s
  br_if done
  local.get x
  local.get i
  i64.const 977
  i64.mul
  i64.add
  local.get x
  i64.const 13
  i64.shr_u
  i64.xor
  local.set x
  local.get i
  i64.const 1
  i64.add
  local.set i
  br top
done:
  local.get x
  return
end

fn float_series(n: i64) -> f64
  local i: i64
  local acc: f64
top:
  local.get i
  local.get n
  i64.ge_s
  br_if done
  local.get acc
  f64.const 1
  local.get i
  f64.convert_i64
  f64.const 1
  f64.add
  f64.div
  f64.add
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

# comparator with a loop inside: OSR happens while C's qsort is on the stack
fn cmp_slow(a: ptr, b: ptr) -> i32
  local x: i64
  local y: i64
  local k: i64
  local.get a
  i64.load32_s
  local.set x
  local.get b
  i64.load32_s
  local.set y
spin:
  local.get k
  i64.const 50
  i64.ge_s
  br_if cmp
  local.get k
  i64.const 1
  i64.add
  local.set k
  br spin
cmp:
  local.get x
  call abs_i64
  local.get y
  call abs_i64
  i64.sub
  return
end

fn abs_i64(v: i64) -> i64
  local.get v
  call abs
  return
end

fn sort(base: ptr, n: i64)
  local.get base
  local.get n
  i64.const 4
  ref.func cmp_slow
  call qsort
  return
end

fn divide(a: i64, b: i64) -> i64
  local.get a
  local.get b
  i64.div_s
  return
end

fn halve(x: f64) -> f64
  local.get x
  f64.const 0.5
  f64.mul
  return
end

# calls whose results come back in registers: a negative i32 from C (which
# compiled code must extend), an f64 from a compiled function and from C
fn mixed_calls(a: ptr, b: ptr, c: ptr, n: i64) -> f64
  local i: i64
  local acc: f64
top:
  local.get i
  local.get n
  i64.ge_s
  br_if done
  local.get acc
  local.get a
  local.get b
  call strcmp
  f64.convert_i64
  f64.add
  local.get i
  f64.convert_i64
  call halve
  f64.add
  local.get c
  call atof
  f64.add
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

# a native call with two of its integer arguments on the stack (SysV has six
# integer argument registers), from compiled code as from the interpreter
fn stack_calls(n: i64) -> i64
  local i: i64
  local acc: i64
top:
  local.get i
  local.get n
  i64.ge_s
  br_if done
  local.get acc
  local.get i
  i64.const 2
  i64.const 3
  i64.const 4
  i64.const 5
  i64.const 6
  i64.const 7
  local.get i
  local.get i
  f64.convert_i64
  call weigh8
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
"#;

/// Each argument weighted by its position, so a swapped or shifted argument
/// changes the result.
#[allow(clippy::too_many_arguments)]
extern "C" fn weigh8(
    a: i64,
    b: i64,
    c: i64,
    d: i64,
    e: i64,
    f: i64,
    g: i64,
    h: i64,
    x: f64,
) -> i64 {
    a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g + 8 * h + 1000 * x as i64
}

unsafe extern "C" {
    #[link_name = "strcmp"]
    fn libc_strcmp(a: *const std::ffi::c_char, b: *const std::ffi::c_char) -> i32;
}

fn runtime(bridge: Bridge, config: TierConfig) -> Runtime {
    let program = parse_program(PROGRAM).unwrap();
    // SAFETY: this file's own program: its loads, stores and native calls are valid for every call made here.
    let rt =
        unsafe { Runtime::with_tiers(program, Arc::new(bridge), FailurePolicy::Report, config) }
            .unwrap();
    // SAFETY: weigh8 has the declared signature.
    unsafe { rt.bind_native("weigh8", weigh8 as *const std::ffi::c_void) }.unwrap();
    // SAFETY: abs, qsort, strcmp and atof from the C library have the declared signatures.
    unsafe { rt.bind_natives_from_process() }.unwrap();
    rt
}

fn ways() -> Vec<(&'static str, Runtime)> {
    let hot = TierConfig {
        call_threshold: 1,
        loop_threshold: 1,
        force_deopt: false,
        ..TierConfig::default()
    };
    let deopt = TierConfig {
        force_deopt: true,
        ..hot
    };
    vec![
        (
            "interpreter",
            runtime(Bridge::libffi(), TierConfig::interpreter_only()),
        ),
        ("tiered", runtime(support::generated(), hot)),
        ("forced deopt", runtime(support::generated(), deopt)),
    ]
}

fn run_all(rt: &Runtime) -> Vec<u64> {
    let mut v = vec![
        rt.call("collatz_steps", &[27]).unwrap(),
        rt.call("total_steps", &[300]).unwrap(),
        rt.call("overflow_mix", &[1000]).unwrap(),
        rt.call("float_series", &[1000]).unwrap(),
        rt.call("fib", &[18]).unwrap(),
    ];
    let (a, b, c) = (c"apple", c"banana", c"0.25");
    let args = [a.as_ptr() as u64, b.as_ptr() as u64, c.as_ptr() as u64, 40];
    let mixed = rt.call("mixed_calls", &args).unwrap();
    // 40 times strcmp("apple", "banana") (negative), plus the sum of i/2 for
    // i < 40 (390), plus 40 times 0.25: all exact in f64.
    // SAFETY: two NUL-terminated strings.
    let strcmp = unsafe { libc_strcmp(a.as_ptr(), b.as_ptr()) };
    assert!(strcmp < 0);
    assert_eq!(f64::from_bits(mixed), 40.0 * f64::from(strcmp) + 400.0);
    v.push(mixed);
    // weigh8(i, 2, 3, 4, 5, 6, 7, i, i) = i + 8i + 1000i + (4 + 9 + 16 + 25 +
    // 36 + 49) = 1009i + 139; summed over i < 40: 1009 * 780 + 139 * 40.
    let stacked = rt.call("stack_calls", &[40]).unwrap();
    assert_eq!(stacked, 1009 * 780 + 139 * 40);
    v.push(stacked);
    let mut data: Vec<i32> = (0..64).map(|i| (i * 37 % 61) - 30).collect();
    rt.call("sort", &[data.as_mut_ptr() as u64, data.len() as u64])
        .unwrap();
    v.extend(data.iter().map(|x| *x as u64));
    v
}

#[test]
fn every_program_gives_identical_results_interpreted_tiered_and_deoptimized() {
    let mut results = Vec::new();
    for (name, rt) in ways() {
        // Twice: the second run starts from compiled code.
        let first = run_all(&rt);
        let second = run_all(&rt);
        assert_eq!(first, second, "{name}: a second run differs");
        let stats = rt.tier_stats();
        match name {
            "interpreter" => assert_eq!(stats.compiled, 0),
            _ if !CODEGEN => assert_eq!(stats, Default::default(), "{name}: no code generation"),
            "tiered" => {
                assert!(stats.compiled >= 5, "{name}: {stats:?}");
                assert!(stats.osr_entries >= 1, "{name}: {stats:?}");
            }
            _ => assert!(stats.deopts >= 1, "{name}: {stats:?}"),
        }
        results.push((name, first));
    }
    assert_eq!(results[0].1[0], 111, "collatz(27) takes 111 steps");
    let mut sorted: Vec<i64> = (0..64).map(|i| (i * 37 % 61) - 30).collect();
    sorted.sort_by_key(|x| x.abs());
    for (name, r) in &results[1..] {
        assert_eq!(r, &results[0].1, "{name} differs from the interpreter");
    }
    let abs_sorted: Vec<i64> = results[0].1[7..]
        .iter()
        .map(|x| (*x as i32).abs() as i64)
        .collect();
    assert_eq!(
        abs_sorted,
        sorted.iter().map(|x| x.abs()).collect::<Vec<_>>(),
        "sorted by magnitude"
    );
}

#[test]
fn a_trap_in_compiled_code_is_the_interpreters_trap() {
    for (name, rt) in ways() {
        assert_eq!(rt.call("divide", &[7, 2]).unwrap(), 3, "{name}");
        let e = rt.call("divide", &[7, 0]).unwrap_err().to_string();
        assert!(
            e.contains("division by zero") && e.contains("divide"),
            "{name}: {e}"
        );
        assert_eq!(
            rt.call("divide", &[i64::MIN as u64, u64::MAX]).unwrap() as i64,
            i64::MIN,
            "{name}"
        );
    }
}

#[test]
fn recursion_through_compiled_frames_and_native_callers_reach_compiled_code() {
    let hot = TierConfig {
        call_threshold: 3,
        loop_threshold: 2,
        force_deopt: false,
        ..TierConfig::default()
    };
    let rt = runtime(support::generated(), hot);
    assert_eq!(rt.call("fib", &[22]).unwrap(), 17711);
    assert_eq!(rt.tier_stats().compiled >= 1, CODEGEN);
    // The native pointer jumps through the cell: it now reaches compiled code.
    let p = rt.entry_point("fib").unwrap();
    // SAFETY: fib has the C signature int64_t(int64_t).
    let f: extern "C" fn(i64) -> i64 = unsafe { std::mem::transmute(p) };
    assert_eq!(f(20), 6765);
}

/// Needs generated code: the tier-up is the subject (without it the
/// assertion fails while the other thread still calls the freed pointer).
#[test]
#[cfg(tierbridge_codegen)]
fn a_tier_up_while_another_thread_calls_through_the_cell_gives_the_same_results() {
    let rt = runtime(
        support::generated(),
        TierConfig {
            call_threshold: u32::MAX,
            loop_threshold: u32::MAX - 1,
            force_deopt: false,
            ..TierConfig::default()
        },
    );
    let p = rt.entry_point("total_steps").unwrap() as usize;
    let caller = std::thread::spawn(move || {
        // SAFETY: total_steps has the C signature int64_t(int64_t).
        let f: extern "C" fn(i64) -> i64 = unsafe { std::mem::transmute(p) };
        (0..200).map(|_| f(100)).collect::<Vec<_>>()
    });
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert!(rt.tier_up("total_steps") && rt.tier_up("collatz_steps"));
    let results = caller.join().unwrap();
    assert!(
        results.iter().all(|r| *r == results[0]),
        "old and new code disagree"
    );
    assert_eq!(rt.call("total_steps", &[100]).unwrap() as i64, results[0]);
}

#[test]
fn without_code_generation_everything_is_interpreted_with_the_same_results() {
    let rt = runtime(
        Bridge::libffi(),
        TierConfig {
            call_threshold: 1,
            loop_threshold: 1,
            force_deopt: false,
            ..TierConfig::default()
        },
    );
    assert!(!rt.tiers_enabled());
    assert_eq!(rt.call("collatz_steps", &[27]).unwrap(), 111);
    assert_eq!(rt.tier_stats().compiled, 0);
}

#[test]
fn osr_happens_inside_a_comparator_while_c_qsort_is_on_the_stack() {
    // Calls never tier up, back-edges do at once: the first comparator call from
    // C starts in the interpreter and moves into compiled code mid-loop (OSR
    // with qsort's frames below it); that also publishes the compiled code in
    // the entry cell, so qsort's later calls, which go through the cell, run
    // compiled code from their first instruction.
    let config = TierConfig {
        call_threshold: u32::MAX,
        loop_threshold: 1,
        force_deopt: false,
        ..TierConfig::default()
    };
    let rt = runtime(support::generated(), config);
    let mut data: Vec<i32> = (0..40).map(|i| (i * 17 % 41) - 20).collect();
    rt.call("sort", &[data.as_mut_ptr() as u64, data.len() as u64])
        .unwrap();
    let osr = rt.tier_stats().osr_entries;
    assert!(
        data.windows(2).all(|w| w[0].abs() <= w[1].abs()),
        "{data:?}"
    );
    assert_eq!(osr, u64::from(CODEGEN), "{:?}", rt.tier_stats());
    assert_eq!(rt.tier_stats().compiled >= 1, CODEGEN);
}

const RECURSIVE_LOOPS: &str = r#"
# depth(n): loops n times, then recurses: OSR'd frames calling interpreted and
# compiled frames of themselves.
fn depth(n: i64) -> i64
  local i: i64
  local acc: i64
top:
  local.get i
  local.get n
  i64.ge_s
  br_if recurse
  local.get acc
  local.get i
  i64.add
  local.set acc
  local.get i
  i64.const 1
  i64.add
  local.set i
  br top
recurse:
  local.get n
  i64.eqz
  br_if done
  local.get acc
  local.get n
  i64.const 1
  i64.sub
  call depth
  i64.add
  return
done:
  local.get acc
  return
end
"#;

#[test]
fn recursion_through_osr_frames_matches_the_interpreter() {
    // sum over k in 0..=n of k*(k-1)/2
    let want: u64 = (0..=60u64).map(|k| k * k.saturating_sub(1) / 2).sum();
    for config in [
        TierConfig::interpreter_only(),
        TierConfig {
            call_threshold: u32::MAX,
            loop_threshold: 3,
            force_deopt: false,
            ..TierConfig::default()
        },
        TierConfig {
            call_threshold: 5,
            loop_threshold: 3,
            force_deopt: false,
            ..TierConfig::default()
        },
        TierConfig {
            call_threshold: 5,
            loop_threshold: 3,
            force_deopt: true,
            ..TierConfig::default()
        },
    ] {
        // SAFETY: this file's own program: its loads, stores and native calls are valid for every call made here.
        let rt = unsafe {
            Runtime::with_tiers(
                parse_program(RECURSIVE_LOOPS).unwrap(),
                Arc::new(support::generated()),
                FailurePolicy::Report,
                config,
            )
        }
        .unwrap();
        assert_eq!(rt.call("depth", &[60]).unwrap(), want, "{config:?}");
        if config.loop_threshold == 3 {
            assert_eq!(
                rt.tier_stats().osr_entries >= 1,
                CODEGEN,
                "{config:?}: {:?}",
                rt.tier_stats()
            );
        }
    }
}

/// A random integer expression of at most `depth` levels over the locals
/// `n i a b c` (and, through `f64`, a float round trip), leaving one value.
fn rand_expr(rng: &mut fastrand::Rng, depth: u32, out: &mut String) {
    const LEAVES: [&str; 5] = ["n", "i", "a", "b", "c"];
    if depth == 0 || rng.u8(..4) == 0 {
        if rng.bool() {
            out.push_str(&format!("  local.get {}\n", LEAVES[rng.usize(..5)]));
        } else {
            // Large values often, so that adds overflow (a guard).
            let k = match rng.u8(..5) {
                0 => rng.i64(..),
                1 => rng.i64(-3..4),
                2 => i64::MAX - rng.i64(0..1000),
                3 => i64::MIN + rng.i64(0..1000),
                _ => rng.i64(-1000..1000),
            };
            out.push_str(&format!("  i64.const {k}\n"));
        }
        return;
    }
    rand_expr(rng, depth - 1, out);
    match rng.u8(..10) {
        0 => out.push_str("  i64.eqz\n"),
        1 => out.push_str(&format!(
            "  local.tee {}\n",
            ["a", "b", "c"][rng.usize(..3)]
        )),
        2 => out.push_str("  f64.convert_i64\n  f64.const 0.5\n  f64.mul\n  i64.trunc_f64\n"),
        _ => {
            rand_expr(rng, depth - 1, out);
            const BIN: [&str; 17] = [
                "add", "sub", "mul", "and", "or", "xor", "shl", "shr_s", "shr_u", "eq", "ne",
                "lt_s", "le_s", "gt_s", "ge_s", "div_s", "rem_s",
            ];
            // add (the guarded instruction) a third of the time.
            let op = if rng.u8(..3) == 0 {
                "add"
            } else {
                BIN[rng.usize(..BIN.len())]
            };
            if op == "div_s" || op == "rem_s" {
                // Never by zero (that traps, in every tier alike; tested elsewhere).
                out.push_str("  i64.const 1\n  i64.or\n");
            }
            out.push_str(&format!("  i64.{op}\n"));
        }
    }
}

/// A loop of `n` iterations over random statements: assignments, loads and
/// stores through `p` (8 slots of 8 bytes), forward branches, drops; the
/// result mixes every local.
fn random_program(seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut p = String::from(
        "fn r(n: i64, p: ptr) -> i64\n  local i: i64\n  local a: i64\n  local b: i64\n  local c: i64\n",
    );
    p += "top:\n  local.get i\n  local.get n\n  i64.ge_s\n  br_if done\n";
    for s in 0..rng.usize(1..7) {
        let slot = |rng: &mut fastrand::Rng, p: &mut String| {
            *p += "  local.get p\n";
            rand_expr(rng, 1, p);
            *p += "  i64.const 7\n  i64.and\n  i64.const 8\n  i64.mul\n  i64.add\n";
        };
        match rng.u8(..7) {
            6 => {
                // Two paths join with a value on the stack: the join is a
                // branch target reached with the top of the stack just made.
                rand_expr(&mut rng, 2, &mut p);
                rand_expr(&mut rng, 1, &mut p);
                p += &format!("  br_if join{s}\n  drop\n");
                rand_expr(&mut rng, 2, &mut p);
                p += &format!(
                    "join{s}:\n  local.set {}\n",
                    ["a", "b", "c"][rng.usize(..3)]
                );
            }
            0 => {
                slot(&mut rng, &mut p);
                rand_expr(&mut rng, 2, &mut p);
                p += "  i64.store\n";
            }
            1 => {
                slot(&mut rng, &mut p);
                p += "  i64.load\n";
                p += &format!("  local.set {}\n", ["a", "b", "c"][rng.usize(..3)]);
            }
            2 => {
                rand_expr(&mut rng, 2, &mut p);
                p += &format!("  br_if skip{s}\n");
                rand_expr(&mut rng, 2, &mut p);
                p += &format!(
                    "  local.set {}\nskip{s}:\n",
                    ["a", "b", "c"][rng.usize(..3)]
                );
            }
            3 => {
                rand_expr(&mut rng, 2, &mut p);
                p += "  drop\n";
            }
            _ => {
                rand_expr(&mut rng, 3, &mut p);
                p += &format!("  local.set {}\n", ["a", "b", "c"][rng.usize(..3)]);
            }
        }
    }
    p += "  local.get i\n  i64.const 1\n  i64.add\n  local.set i\n  br top\ndone:\n";
    p += "  local.get a\n  local.get b\n  i64.xor\n  local.get c\n  i64.add\n  return\nend\n";
    p
}

#[test]
fn random_programs_agree_interpreted_tiered_and_deoptimized() {
    let hot = TierConfig {
        call_threshold: 1,
        loop_threshold: 1,
        ..TierConfig::default()
    };
    let ways = [
        ("interpreter", TierConfig::interpreter_only()),
        ("tiered", hot),
        (
            "osr",
            TierConfig {
                call_threshold: u32::MAX,
                ..hot
            },
        ),
        (
            "forced deopt",
            TierConfig {
                force_deopt: true,
                ..hot
            },
        ),
    ];
    let cases = support::cases(200) as u64;
    let seed = support::seed();
    let mut compiled = 0;
    let (mut osr, mut deopts) = (0, 0);
    for k in 0..cases {
        let text = random_program(seed.wrapping_add(k));
        let program = parse_program(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let mut results = Vec::new();
        for (name, config) in ways {
            // SAFETY: the program loads and stores only within the 8-slot
            // buffer it is given (its addresses are p + 8 * (x & 7)).
            let rt = unsafe {
                Runtime::with_tiers(
                    program.clone(),
                    Arc::new(support::generated()),
                    FailurePolicy::Report,
                    config,
                )
            }
            .unwrap();
            let mut buf = [0u64; 8];
            let r = rt
                .call("r", &[17, buf.as_mut_ptr() as u64])
                .map_err(|e| e.to_string());
            let again = rt
                .call("r", &[5, buf.as_mut_ptr() as u64])
                .map_err(|e| e.to_string());
            compiled += rt.tier_stats().compiled;
            match name {
                "osr" => osr += rt.tier_stats().osr_entries,
                "forced deopt" => deopts += rt.tier_stats().deopts,
                _ => {}
            }
            results.push((name, r, again, buf));
        }
        for w in &results[1..] {
            assert_eq!(
                (&w.1, &w.2, &w.3),
                (&results[0].1, &results[0].2, &results[0].3),
                "{} differs from the interpreter (seed {}):\n{text}",
                w.0,
                seed.wrapping_add(k)
            );
        }
    }
    if !CODEGEN {
        assert_eq!((compiled, osr, deopts), (0, 0, 0), "no code generation");
        return;
    }
    assert!(
        compiled >= cases,
        "compiled {compiled} times over {cases} programs"
    );
    // Every program loops: each enters compiled code by OSR in the "osr"
    // way, and every program's adds deoptimize in the forced way.
    assert!(
        osr >= cases && deopts >= cases,
        "osr {osr}, deopts {deopts} over {cases} programs"
    );
}

#[test]
fn a_comparator_called_from_c_tiers_up_from_its_calls() {
    // No back edges count; only calls, which arrive from C's qsort through
    // the comparator's native pointer: after ten, it is compiled, and the
    // rest of qsort's calls reach the compiled code through the same pointer.
    let rt = runtime(
        support::generated(),
        TierConfig {
            call_threshold: 10,
            loop_threshold: u32::MAX,
            ..TierConfig::default()
        },
    );
    unsafe extern "C" {
        fn qsort(
            base: *mut std::ffi::c_void,
            n: usize,
            size: usize,
            cmp: extern "C" fn(*const i32, *const i32) -> i32,
        );
    }
    // SAFETY: cmp_slow's native pointer is an `extern "C" fn(ptr, ptr) -> i32`.
    let cmp: extern "C" fn(*const i32, *const i32) -> i32 =
        unsafe { std::mem::transmute(rt.entry_point("cmp_slow").unwrap()) };
    let mut data: Vec<i32> = (0..500).map(|i| (i * 37 % 499) - 250).collect();
    // SAFETY: `data` holds `len` i32s; `cmp` compares two of them.
    unsafe { qsort(data.as_mut_ptr().cast(), data.len(), 4, cmp) };
    assert!(
        data.windows(2).all(|w| w[0].abs() <= w[1].abs()),
        "{data:?}"
    );
    let s = rt.tier_stats();
    if !CODEGEN {
        assert_eq!((s.osr_entries, s.compiled), (0, 0), "{s:?}");
        return;
    }
    // cmp_slow, and abs_i64, which it calls.
    assert_eq!((s.osr_entries, s.compiled), (0, 2), "{s:?}");
    let t = rt.tier_table();
    let f = tierbridge::host::FuncId(rt.program().function("cmp_slow").unwrap() as u64);
    let st = t.fn_stats(f).unwrap();
    assert!(st.compiled && st.calls == 10, "{st:?}");
}

const STOPS_AT_A_TRAP: &str = r#"
# stores i through p, then calls a function that divides by i - 3
fn store_then_call(p: ptr, n: i64) -> i64
  local i: i64
top:
  local.get i
  local.get n
  i64.ge_s
  br_if done
  local.get p
  local.get i
  i64.store
  local.get i
  call fails_at_3
  drop
  local.get i
  i64.const 1
  i64.add
  local.set i
  br top
done:
  i64.const 0
  return
end

fn fails_at_3(i: i64) -> i64
  i64.const 12
  local.get i
  i64.const 3
  i64.sub
  i64.div_s
  return
end
"#;

#[test]
fn compiled_code_stops_where_the_interpreter_traps_in_a_callee() {
    let hot = TierConfig {
        call_threshold: 1,
        loop_threshold: 1,
        ..TierConfig::default()
    };
    for (name, config) in [
        ("interpreter", TierConfig::interpreter_only()),
        ("tiered", hot),
        (
            "forced deopt",
            TierConfig {
                force_deopt: true,
                ..hot
            },
        ),
    ] {
        // SAFETY: the program stores only through the pointer it is given.
        let rt = unsafe {
            Runtime::with_tiers(
                parse_program(STOPS_AT_A_TRAP).unwrap(),
                Arc::new(support::generated()),
                FailurePolicy::Report,
                config,
            )
        }
        .unwrap();
        // Warm up (compiled from the first call on, tiered).
        let mut cell = 0i64;
        assert_eq!(
            rt.call("store_then_call", &[&mut cell as *mut i64 as u64, 3])
                .unwrap(),
            0
        );
        let e = rt
            .call("store_then_call", &[&mut cell as *mut i64 as u64, 100])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("division by zero") && e.contains("fails_at_3"),
            "{name}: {e}"
        );
        // The loop stopped at the trap (i = 3), in every tier.
        assert_eq!(cell, 3, "{name}: the loop ran on after the trap");
        if name != "interpreter" {
            assert_eq!(
                rt.tier_stats().compiled >= 2,
                CODEGEN,
                "{name}: {:?}",
                rt.tier_stats()
            );
        }
    }
}
