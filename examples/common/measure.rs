//! Call-overhead measurement shared by `examples/overhead.rs` and
//! `examples/tour.rs`: every mechanism on every shape, interleaved round by
//! round, medians of the rounds; and what `benches/calls.rs` and
//! `examples/profile.rs` share (the shapes' hosts, the series of new
//! signatures).
#![allow(dead_code)]

use std::ffi::c_void;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use tierbridge::abi::{CallConv, Signature};
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy, HostError};
use tierbridge::interp::{Runtime, parse_program};
use tierbridge::thunks::{Bridge, EntryPoint, ExitStub};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pair {
    pub a: f32,
    pub b: f32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Triple {
    pub a: f64,
    pub b: f64,
    pub c: f64,
}

pub extern "C" fn add_i64(a: i64, b: i64) -> i64 {
    a.wrapping_add(b)
}
pub extern "C" fn add_f64(a: f64, b: f64) -> f64 {
    a + b
}
#[allow(clippy::too_many_arguments)]
pub extern "C" fn mixed8(a: i8, b: u16, c: i32, d: i64, e: f32, f: f64, g: u8, h: f64) -> f64 {
    a as f64 + b as f64 + c as f64 + d as f64 + e as f64 + f + g as f64 + h
}
#[allow(clippy::too_many_arguments)]
pub extern "C" fn ten_i64(
    a: i64,
    b: i64,
    c: i64,
    d: i64,
    e: i64,
    f: i64,
    g: i64,
    h: i64,
    i: i64,
    j: i64,
) -> i64 {
    a ^ b ^ c ^ d ^ e ^ f ^ g ^ h ^ i ^ j
}
#[allow(clippy::too_many_arguments)]
pub extern "C" fn eight_i64(a: i64, b: i64, c: i64, d: i64, e: i64, f: i64, g: i64, h: i64) -> i64 {
    a ^ b ^ c ^ d ^ e ^ f ^ g ^ h
}
pub extern "C" fn pair_sum(p: Pair) -> f32 {
    p.a + p.b
}
pub extern "C" fn triple(x: f64) -> Triple {
    Triple {
        a: x,
        b: x * 2.0,
        c: -x,
    }
}
pub extern "C" fn cmp_i32(a: *const i32, b: *const i32) -> i32 {
    // SAFETY: called with pointers to two i32s.
    let (x, y) = unsafe { (*a, *b) };
    (x > y) as i32 - (x < y) as i32
}

pub type Mixed = extern "C" fn(i8, u16, i32, i64, f32, f64, u8, f64) -> f64;
pub type Ten = extern "C" fn(i64, i64, i64, i64, i64, i64, i64, i64, i64, i64) -> i64;
pub type Eight = extern "C" fn(i64, i64, i64, i64, i64, i64, i64, i64) -> i64;
pub type Cmp = extern "C" fn(*const i32, *const i32) -> i32;

/// The shapes: name, signature, number of scalar arguments (None: not all scalar).
pub const SHAPES: [(&str, &str, Option<usize>); 8] = [
    ("(i64,i64)->i64", "(i64,i64)->i64", Some(2)),
    ("(f64,f64)->f64", "(f64,f64)->f64", Some(2)),
    (
        "8 mixed scalars",
        "(i8,u16,i32,i64,f32,f64,u8,f64)->f64",
        Some(8),
    ),
    (
        "10 x i64",
        "(i64,i64,i64,i64,i64,i64,i64,i64,i64,i64)->i64",
        Some(10),
    ),
    ("({f32,f32})->f32", "({f32,f32})->f32", None),
    ("(f64)->24-byte struct", "(f64)->{f64,f64,f64}", None),
    ("(ptr,ptr)->i32", "(ptr,ptr)->i32", Some(2)),
    ("8 x i64", "(i64,i64,i64,i64,i64,i64,i64,i64)->i64", Some(8)),
];

pub const MECHANISMS: [&str; 7] = [
    "direct call",
    "generated exit",
    "libffi exit",
    "generated entry",
    "libffi entry",
    "interpreter → C → interpreter",
    "generated exit, unchecked",
];

/// The interpreter side of the entry rows for shape `k` (its index in
/// `SHAPES`): a host that does on slots exactly what the shape's direct
/// function does on registers, so an entry row differs from the direct row
/// only by the bridge. One dispatcher per shape: a real interpreter's lookup
/// of the bound function would be its own cost, not the bridge's.
pub fn host_for(k: usize) -> Dispatcher {
    fn d<F>(f: F) -> Dispatcher
    where
        F: Fn(EntryCall<'_>) -> Result<(), HostError> + Send + Sync + 'static,
    {
        Dispatcher::from_host(Arc::new(f), FailurePolicy::Report)
    }
    let f64_of = f64::from_bits;
    match k {
        0 => d(|c| {
            c.ret[0] = add_i64(c.args[0] as i64, c.args[1] as i64) as u64;
            Ok(())
        }),
        1 => d(move |c| {
            c.ret[0] = add_f64(f64_of(c.args[0]), f64_of(c.args[1])).to_bits();
            Ok(())
        }),
        2 => d(move |c| {
            let a = c.args;
            c.ret[0] = mixed8(
                a[0] as i8,
                a[1] as u16,
                a[2] as i32,
                a[3] as i64,
                f32::from_bits(a[4] as u32),
                f64_of(a[5]),
                a[6] as u8,
                f64_of(a[7]),
            )
            .to_bits();
            Ok(())
        }),
        // Every argument xor-ed, over a slice of constant length (unrolled,
        // like the direct functions; a loop over `c.args` costs ~2 ns more).
        3 => d(|c| {
            c.ret[0] = c.args[..10].iter().fold(0, |x, y| x ^ y);
            Ok(())
        }),
        7 => d(|c| {
            c.ret[0] = c.args[..8].iter().fold(0, |x, y| x ^ y);
            Ok(())
        }),
        4 => d(|c| {
            let p = Pair {
                a: f32::from_bits(c.args[0] as u32),
                b: f32::from_bits((c.args[0] >> 32) as u32),
            };
            c.ret[0] = u64::from(pair_sum(p).to_bits());
            Ok(())
        }),
        5 => d(move |c| {
            let t = triple(f64_of(c.args[0]));
            c.ret[..3].copy_from_slice(&[t.a.to_bits(), t.b.to_bits(), t.c.to_bits()]);
            Ok(())
        }),
        6 => d(|c| {
            let r = cmp_i32(c.args[0] as *const i32, c.args[1] as *const i32);
            c.ret[0] = r as i64 as u64;
            Ok(())
        }),
        _ => panic!("no shape {k}"),
    }
}

const ROUND_TRIP: &str = r#"
extern bsearch "(ptr,ptr,u64,u64,ptr)->ptr"
fn cmp(a: ptr, b: ptr) -> i32
  local.get a
  i64.load32_s
  local.get b
  i64.load32_s
  i64.sub
  return
end
# one bsearch over a one-element array: C calls cmp exactly once
fn find(key: ptr, base: ptr) -> ptr
  local.get key
  local.get base
  i64.const 1
  i64.const 4
  ref.func cmp
  call bsearch
  return
end
"#;

/// ns per call: `table[mechanism][shape]` (None: not measured for that shape).
pub type Table = Vec<Vec<Option<f64>>>;

fn time_ns(iters: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(iters)
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Setup {
    exits: [ExitStub; 2],
    entries: [EntryPoint; 2],
}

/// Measures every mechanism on every shape, `rounds` times interleaved, with
/// `iters` calls per cell per round; returns medians in ns per call.
pub fn measure(generated: &Bridge, iters: u32, rounds: usize) -> Table {
    let libffi = Bridge::libffi();
    let conv = CallConv::host().expect("x86-64 host");
    let setups: Vec<Setup> = SHAPES
        .iter()
        .enumerate()
        .map(|(k, (_, sig, _))| {
            let s: Signature = sig.parse().unwrap();
            let d = host_for(k);
            Setup {
                exits: [
                    generated.exit_stub(&s, conv).unwrap(),
                    libffi.exit_stub(&s, conv).unwrap(),
                ],
                entries: [
                    generated.entry_point(&s, conv, &d, k as u64).unwrap(),
                    libffi.entry_point(&s, conv, &d, k as u64).unwrap(),
                ],
            }
        })
        .collect();
    // SAFETY: this file's own program: its loads, stores and native calls are valid for every call made here.
    let rt = unsafe {
        Runtime::new(
            parse_program(ROUND_TRIP).unwrap(),
            Arc::new(Bridge::new(generated.kind()).unwrap()),
            FailurePolicy::Report,
        )
    }
    .unwrap();
    // SAFETY: bsearch from the C library has the declared signature.
    unsafe { rt.bind_natives_from_process() }.unwrap();
    let (x, y) = (5i32, 5i32);
    let (px, py) = (&x as *const i32, &y as *const i32);
    let p = Pair { a: 1.5, b: 2.5 };
    let args: [Vec<u64>; 8] = [
        vec![1, 2],
        vec![1f64.to_bits(), 2f64.to_bits()],
        vec![
            1,
            2,
            3,
            4,
            u64::from(5f32.to_bits()),
            6f64.to_bits(),
            7,
            8f64.to_bits(),
        ],
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        vec![u64::from(1.5f32.to_bits()) | u64::from(2.5f32.to_bits()) << 32],
        vec![3f64.to_bits()],
        vec![px as u64, py as u64],
        vec![1, 2, 3, 4, 5, 6, 7, 8],
    ];
    let targets: [*const c_void; 8] = [
        add_i64 as *const c_void,
        add_f64 as *const c_void,
        mixed8 as *const c_void,
        ten_i64 as *const c_void,
        pair_sum as *const c_void,
        triple as *const c_void,
        cmp_i32 as *const c_void,
        eight_i64 as *const c_void,
    ];
    let mut samples: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); SHAPES.len()]; MECHANISMS.len()];
    let mut ret = [0u64; 3];
    for _ in 0..rounds {
        for k in 0..SHAPES.len() {
            let direct = match k {
                0 => time_ns(iters, || {
                    black_box(black_box(add_i64 as extern "C" fn(i64, i64) -> i64)(
                        black_box(1),
                        2,
                    ));
                }),
                1 => time_ns(iters, || {
                    black_box(black_box(add_f64 as extern "C" fn(f64, f64) -> f64)(
                        black_box(1.0),
                        2.0,
                    ));
                }),
                2 => time_ns(iters, || {
                    black_box(black_box(mixed8 as Mixed)(
                        black_box(1),
                        2,
                        3,
                        4,
                        5.0,
                        6.0,
                        7,
                        8.0,
                    ));
                }),
                3 => time_ns(iters, || {
                    black_box(black_box(ten_i64 as Ten)(
                        black_box(1),
                        2,
                        3,
                        4,
                        5,
                        6,
                        7,
                        8,
                        9,
                        10,
                    ));
                }),
                4 => time_ns(iters, || {
                    black_box(black_box(pair_sum as extern "C" fn(Pair) -> f32)(
                        black_box(p),
                    ));
                }),
                5 => time_ns(iters, || {
                    black_box(black_box(triple as extern "C" fn(f64) -> Triple)(
                        black_box(3.0),
                    ));
                }),
                6 => time_ns(iters, || {
                    black_box(black_box(cmp_i32 as Cmp)(black_box(px), py));
                }),
                _ => time_ns(iters, || {
                    black_box(black_box(eight_i64 as Eight)(
                        black_box(1),
                        2,
                        3,
                        4,
                        5,
                        6,
                        7,
                        8,
                    ));
                }),
            };
            samples[0][k].push(direct);
            let nret = SHAPES[k].1.parse::<Signature>().unwrap().ret_slots();
            for (m, stub) in setups[k].exits.iter().enumerate() {
                let t = time_ns(iters, || {
                    // SAFETY: each target has its shape's signature.
                    unsafe {
                        stub.call(black_box(targets[k]), black_box(&args[k]), &mut ret[..nret])
                    }
                    .unwrap();
                });
                samples[1 + m][k].push(t);
            }
            // The stub without the checked API's checks, as a verified call
            // site or generated code calls it.
            let stub = &setups[k].exits[0];
            let t = time_ns(iters, || {
                // SAFETY: as above; the slot counts are the stub's.
                unsafe {
                    stub.call_unchecked(
                        black_box(targets[k]),
                        black_box(&args[k]).as_ptr(),
                        ret.as_mut_ptr(),
                    )
                };
            });
            samples[6][k].push(t);
            for (m, ep) in setups[k].entries.iter().enumerate() {
                // SAFETY: in every arm the entry point has its shape's C signature.
                let t = unsafe {
                    match k {
                        0 => {
                            let f: extern "C" fn(i64, i64) -> i64 = ep.as_fn();
                            time_ns(iters, || {
                                black_box(black_box(f)(black_box(1), 2));
                            })
                        }
                        1 => {
                            let f: extern "C" fn(f64, f64) -> f64 = ep.as_fn();
                            time_ns(iters, || {
                                black_box(black_box(f)(black_box(1.0), 2.0));
                            })
                        }
                        2 => {
                            let f: Mixed = ep.as_fn();
                            time_ns(iters, || {
                                black_box(black_box(f)(black_box(1), 2, 3, 4, 5.0, 6.0, 7, 8.0));
                            })
                        }
                        3 => {
                            let f: Ten = ep.as_fn();
                            time_ns(iters, || {
                                black_box(black_box(f)(black_box(1), 2, 3, 4, 5, 6, 7, 8, 9, 10));
                            })
                        }
                        4 => {
                            let f: extern "C" fn(Pair) -> f32 = ep.as_fn();
                            time_ns(iters, || {
                                black_box(black_box(f)(black_box(p)));
                            })
                        }
                        5 => {
                            let f: extern "C" fn(f64) -> Triple = ep.as_fn();
                            time_ns(iters, || {
                                black_box(black_box(f)(black_box(3.0)));
                            })
                        }
                        6 => {
                            let f: Cmp = ep.as_fn();
                            time_ns(iters, || {
                                black_box(black_box(f)(black_box(px), py));
                            })
                        }
                        _ => {
                            let f: Eight = ep.as_fn();
                            time_ns(iters, || {
                                black_box(black_box(f)(black_box(1), 2, 3, 4, 5, 6, 7, 8));
                            })
                        }
                    }
                };
                samples[3 + m][k].push(t);
            }
            if k == 6 {
                let t = time_ns(iters / 4, || {
                    black_box(rt.call("find", &[px as u64, py as u64]).unwrap());
                });
                samples[5][k].push(t);
            }
        }
    }
    samples
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|s| (!s.is_empty()).then(|| median(s)))
                .collect()
        })
        .collect()
}

/// The table as markdown: ns per call and the ratio to the direct call.
pub fn markdown(table: &Table) -> String {
    let mut s = String::from("| mechanism |");
    for (name, _, _) in SHAPES {
        s.push_str(&format!(" {name} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---:|".repeat(SHAPES.len()));
    s.push('\n');
    for (m, row) in table.iter().enumerate() {
        s.push_str(&format!("| {} |", MECHANISMS[m]));
        for (k, cell) in row.iter().enumerate() {
            match (cell, table[0][k]) {
                (Some(ns), _) if m == 0 => s.push_str(&format!(" {ns:.2} ns |")),
                (Some(ns), Some(direct)) => {
                    s.push_str(&format!(" {ns:.2} ns ({:.1}×) |", ns / direct))
                }
                _ => s.push_str(" — |"),
            }
        }
        s.push('\n');
    }
    s
}

/// (R1, R2, R3, R4) of the summary line: worst generated/direct exit and entry
/// ratios over the all-scalar shapes of at most 8 arguments; smallest
/// libffi/generated speedups (exit, entry) over all shapes.
pub fn summary(table: &Table) -> (f64, f64, f64, f64) {
    let ratio = |m: usize, k: usize| table[m][k].unwrap() / table[0][k].unwrap();
    let small: Vec<usize> = (0..SHAPES.len())
        .filter(|k| SHAPES[*k].2.is_some_and(|n| n <= 8))
        .collect();
    let worst = |m: usize| small.iter().map(|k| ratio(m, *k)).fold(0.0, f64::max);
    let speedup = |lib: usize, generated: usize| {
        (0..SHAPES.len())
            .map(|k| table[lib][k].unwrap() / table[generated][k].unwrap())
            .fold(f64::INFINITY, f64::min)
    };
    (worst(1), worst(3), speedup(2, 1), speedup(4, 3))
}

/// The digits of `n` in base `base`, least significant first, at least six
/// (the parameter types of the series of new signatures below, one per
/// digit; `examples/floor.rs` spells the same series in bytes).
pub fn digits(n: u64, base: u64) -> Vec<usize> {
    let (mut v, mut k) = (Vec::new(), n);
    while v.len() < 6 || k != 0 {
        v.push((k % base) as usize);
        k /= base;
    }
    v
}

/// The signature spelling `n` in base `types.len()`, one parameter type per
/// digit (`digits`), returning `ret`.
fn spelled(n: u64, types: &[&str], ret: &str) -> Signature {
    let params: Vec<&str> = digits(n, types.len() as u64)
        .into_iter()
        .map(|d| types[d])
        .collect();
    format!("({})->{ret}", params.join(",")).parse().unwrap()
}

/// The `n`-th of a series of signatures nobody has seen: six scalar
/// parameters (seven from the 1 771 561st on) spelling `n` in base 11, so
/// every one is new, all travel in registers, and every batch a benchmark
/// asks for costs the same. Their machine shapes repeat as real signatures'
/// do: the 11 types fall into 9 classes for entry thunks (a new entry shape
/// for 48% of the first 20 000 signatures, 37% of the first million) and 2
/// for exit stubs (64 shapes in all). The registry is process-wide: one
/// counter must serve every measurement of this series, so that none finds
/// another's signatures already interned.
pub fn fresh_sig(n: u64) -> Signature {
    const T: [&str; 11] = [
        "i8", "u8", "i16", "u16", "i32", "u32", "i64", "u64", "f32", "f64", "ptr",
    ];
    spelled(n, &T, "i64")
}

/// The `n`-th of a series of signatures nobody has seen whose machine
/// shapes are nearly all made already: six parameters or more spelling `n`
/// in base 3 over `i64`, `u64` and `ptr` (one class for both emitters), an
/// `i64` result. Only the first signature of each parameter count (a handful
/// in any run) needs code; the rest measure what a new signature costs
/// besides emitting code (interning, classifying where the backend needs
/// to, finding the shared code, binding).
pub fn fresh_known_shape_sig(n: u64) -> Signature {
    spelled(n, &["i64", "u64", "ptr"], "i64")
}

/// The `n`-th of a series of signatures whose entry thunks have a machine
/// shape nobody has seen (so their code cannot be shared, see ABI.md,
/// "Generated code"): six parameters or more spelling `n` in base 9 over one
/// type of each class the entry emitter tells apart, and an `f64` result,
/// which no signature of [`fresh_sig`] has.
pub fn fresh_shape_sig(n: u64) -> Signature {
    const T: [&str; 9] = ["i64", "u8", "i8", "i16", "u16", "i32", "u32", "f32", "f64"];
    spelled(n, &T, "f64")
}
