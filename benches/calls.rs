//! Call overhead, side by side in one run: a direct call through a function
//! pointer, generated and libffi exit stubs (interpreter → native), generated
//! and libffi entry points (native → a Rust host), on the same shapes; and the
//! setup costs (a new signature's thunks, a new bound entry point, lookups).
//!
//! `cargo bench --bench calls` (HTML reports in target/criterion/).

use std::ffi::c_void;
use std::hint::black_box;

use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use tierbridge::abi::{CallConv, Signature};
use tierbridge::host::{Dispatcher, FailurePolicy, RawBinding, RawVaList};
use tierbridge::thunks::{BackendKind, Bridge, ExitStub};

#[path = "../examples/common/measure.rs"]
mod measure;

use measure::{
    Eight, Mixed, Pair, Ten, Triple, add_f64, add_i64, eight_i64, mixed8, pair_sum, ten_i64, triple,
};

struct Backends {
    generated: Bridge,
    libffi: Bridge,
    raw: Dispatcher,
}

impl Backends {
    fn exits(&self, sig: &str) -> [(&'static str, ExitStub); 2] {
        let s: Signature = sig.parse().unwrap();
        [
            (
                "generated exit",
                self.generated.exit_stub(&s, CallConv::SysV).unwrap(),
            ),
            (
                "libffi exit",
                self.libffi.exit_stub(&s, CallConv::SysV).unwrap(),
            ),
        ]
    }

    /// Entry points for shape `k` of `measure::SHAPES`; the host does what
    /// the shape's direct function does (`measure::host_for`).
    fn entries(&self, sig: &str, k: usize) -> [(&'static str, tierbridge::thunks::EntryPoint); 3] {
        let s: Signature = sig.parse().unwrap();
        let host = measure::host_for(k);
        let bind = |b: &Bridge, d: &Dispatcher| b.entry_point(&s, CallConv::SysV, d, 0).unwrap();
        [
            ("generated entry", bind(&self.generated, &host)),
            ("libffi entry", bind(&self.libffi, &host)),
            (
                "generated entry (raw dispatcher)",
                bind(&self.generated, &self.raw),
            ),
        ]
    }
}

fn exit_bench(
    g: &mut BenchmarkGroup<'_, WallTime>,
    exits: &[(&'static str, ExitStub)],
    f: *const c_void,
    args: &[u64],
) {
    for (name, stub) in exits {
        let mut ret = vec![0u64; stub.signature().ret_slots()];
        g.bench_function(*name, |b| {
            b.iter(|| {
                // SAFETY: `f` has the stub's signature.
                unsafe { stub.call(black_box(f), black_box(args), &mut ret) }.unwrap()
            })
        });
    }
    // The stub alone, as a verified call site or generated code would use it.
    let (_, stub) = &exits[0];
    let mut ret = vec![0u64; stub.signature().ret_slots().max(1)];
    g.bench_function("generated exit (unchecked)", |b| {
        // SAFETY: as above; the slices have the stub's slot counts.
        b.iter(|| unsafe {
            stub.call_unchecked(black_box(f), black_box(args).as_ptr(), ret.as_mut_ptr())
        })
    });
}

/// A raw `extern "C"` dispatcher (no `Host` trait layer): sums the argument
/// slots into every result slot.
///
/// # Safety
/// Called by entry points with their binding and slots.
unsafe extern "C" fn raw_sum(
    binding: *const RawBinding,
    args: *const u64,
    ret: *mut u64,
    _: *mut RawVaList,
) -> u32 {
    // SAFETY: the entry side passes valid slot pointers for the binding's counts.
    unsafe {
        let b = &*binding;
        let mut acc = 0u64;
        for i in 0..b.nargs as usize {
            acc = acc.wrapping_add(*args.add(i));
        }
        for i in 0..b.nret as usize {
            *ret.add(i) = acc;
        }
    }
    0
}

fn raw_host() -> Dispatcher {
    // SAFETY: raw_sum never unwinds and uses no context.
    unsafe { Dispatcher::from_raw(raw_sum, std::ptr::null_mut(), FailurePolicy::Report) }
}

fn shapes(c: &mut Criterion) {
    let generated = Bridge::new(BackendKind::Generated).unwrap();
    assert_eq!(
        generated.kind(),
        BackendKind::Generated,
        "{:?}",
        generated.fallback_reason()
    );
    let be = Backends {
        generated,
        libffi: Bridge::libffi(),
        raw: raw_host(),
    };

    let mut g = c.benchmark_group("(i64,i64)->i64");
    g.bench_function("direct", |b| {
        b.iter(|| black_box(add_i64 as extern "C" fn(i64, i64) -> i64)(black_box(1), 2))
    });
    exit_bench(
        &mut g,
        &be.exits("(i64,i64)->i64"),
        add_i64 as *const c_void,
        &[1, 2],
    );
    for (name, ep) in be.entries("(i64,i64)->i64", 0) {
        // SAFETY: the entry point has this signature and outlives the benchmark.
        let f: extern "C" fn(i64, i64) -> i64 = unsafe { ep.as_fn() };
        assert_eq!(f(1, 2), add_i64(1, 2), "{name}");
        g.bench_function(name, |b| b.iter(|| black_box(f)(black_box(1), 2)));
    }
    g.finish();

    let mut g = c.benchmark_group("(f64,f64)->f64");
    g.bench_function("direct", |b| {
        b.iter(|| black_box(add_f64 as extern "C" fn(f64, f64) -> f64)(black_box(1.0), 2.0))
    });
    exit_bench(
        &mut g,
        &be.exits("(f64,f64)->f64"),
        add_f64 as *const c_void,
        &[1f64.to_bits(), 2f64.to_bits()],
    );
    for (name, ep) in be.entries("(f64,f64)->f64", 1) {
        // SAFETY: as above.
        let f: extern "C" fn(f64, f64) -> f64 = unsafe { ep.as_fn() };
        if !name.contains("raw") {
            assert_eq!(f(1.0, 2.0), add_f64(1.0, 2.0), "{name}");
        }
        g.bench_function(name, |b| b.iter(|| black_box(f)(black_box(1.0), 2.0)));
    }
    g.finish();

    let mut g = c.benchmark_group("8 mixed scalars");
    g.bench_function("direct", |b| {
        b.iter(|| black_box(mixed8 as Mixed)(black_box(1), 2, 3, 4, 5.0, 6.0, 7, 8.0))
    });
    let args = [
        1,
        2,
        3,
        4,
        u64::from(5f32.to_bits()),
        6f64.to_bits(),
        7,
        8f64.to_bits(),
    ];
    exit_bench(
        &mut g,
        &be.exits("(i8,u16,i32,i64,f32,f64,u8,f64)->f64"),
        mixed8 as *const c_void,
        &args,
    );
    for (name, ep) in be.entries("(i8,u16,i32,i64,f32,f64,u8,f64)->f64", 2) {
        // SAFETY: as above.
        let f: Mixed = unsafe { ep.as_fn() };
        if !name.contains("raw") {
            assert_eq!(
                f(1, 2, 3, 4, 5.0, 6.0, 7, 8.0),
                mixed8(1, 2, 3, 4, 5.0, 6.0, 7, 8.0)
            );
        }
        g.bench_function(name, |b| {
            b.iter(|| black_box(f)(black_box(1), 2, 3, 4, 5.0, 6.0, 7, 8.0))
        });
    }
    g.finish();

    // Eight scalars too, but two of them on the stack (SysV has six integer
    // argument registers).
    let mut g = c.benchmark_group("8 x i64 (2 on the stack)");
    let eight = "(i64,i64,i64,i64,i64,i64,i64,i64)->i64";
    g.bench_function("direct", |b| {
        b.iter(|| black_box(eight_i64 as Eight)(black_box(1), 2, 3, 4, 5, 6, 7, 8))
    });
    exit_bench(
        &mut g,
        &be.exits(eight),
        eight_i64 as *const c_void,
        &[1, 2, 3, 4, 5, 6, 7, 8],
    );
    for (name, ep) in be.entries(eight, 7) {
        // SAFETY: as above.
        let f: Eight = unsafe { ep.as_fn() };
        if !name.contains("raw") {
            assert_eq!(
                f(1, 2, 3, 4, 5, 6, 7, 8),
                eight_i64(1, 2, 3, 4, 5, 6, 7, 8),
                "{name}"
            );
        }
        g.bench_function(name, |b| {
            b.iter(|| black_box(f)(black_box(1), 2, 3, 4, 5, 6, 7, 8))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("10 x i64 (stack)");
    let ten = "(i64,i64,i64,i64,i64,i64,i64,i64,i64,i64)->i64";
    g.bench_function("direct", |b| {
        b.iter(|| black_box(ten_i64 as Ten)(black_box(1), 2, 3, 4, 5, 6, 7, 8, 9, 10))
    });
    exit_bench(
        &mut g,
        &be.exits(ten),
        ten_i64 as *const c_void,
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    );
    for (name, ep) in be.entries(ten, 3) {
        // SAFETY: as above.
        let f: Ten = unsafe { ep.as_fn() };
        if !name.contains("raw") {
            let want = ten_i64(1, 2, 3, 4, 5, 6, 7, 8, 9, 10);
            assert_eq!(f(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), want, "{name}");
        }
        g.bench_function(name, |b| {
            b.iter(|| black_box(f)(black_box(1), 2, 3, 4, 5, 6, 7, 8, 9, 10))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("({f32,f32})->f32");
    let p = Pair { a: 1.5, b: 2.5 };
    g.bench_function("direct", |b| {
        b.iter(|| black_box(pair_sum as extern "C" fn(Pair) -> f32)(black_box(p)))
    });
    let slot = u64::from(1.5f32.to_bits()) | u64::from(2.5f32.to_bits()) << 32;
    exit_bench(
        &mut g,
        &be.exits("({f32,f32})->f32"),
        pair_sum as *const c_void,
        &[slot],
    );
    for (name, ep) in be.entries("({f32,f32})->f32", 4) {
        // SAFETY: as above.
        let f: extern "C" fn(Pair) -> f32 = unsafe { ep.as_fn() };
        if !name.contains("raw") {
            assert_eq!(f(p), pair_sum(p), "{name}");
        }
        g.bench_function(name, |b| b.iter(|| black_box(f)(black_box(p))));
    }
    g.finish();

    // The direct call and the entry points hand back the struct's first
    // field, not the struct: criterion keeps a returned struct by copying it
    // with 16-byte loads, and `triple` (compiled by rustc) stores 8 bytes at
    // a time, which such a load is not forwarded from; the direct row then
    // paid a stall (7.2 ns against 1.6 ns reading one field) that made every
    // ratio to it look better than it is.
    let mut g = c.benchmark_group("(f64)->{f64,f64,f64} (sret)");
    g.bench_function("direct", |b| {
        b.iter(|| black_box(triple as extern "C" fn(f64) -> Triple)(black_box(3.0)).a)
    });
    exit_bench(
        &mut g,
        &be.exits("(f64)->{f64,f64,f64}"),
        triple as *const c_void,
        &[3f64.to_bits()],
    );
    for (name, ep) in be.entries("(f64)->{f64,f64,f64}", 5) {
        // SAFETY: as above.
        let f: extern "C" fn(f64) -> Triple = unsafe { ep.as_fn() };
        g.bench_function(name, |b| b.iter(|| black_box(f)(black_box(3.0)).a));
    }
    g.finish();

    setup(c, &be);
}

/// The time `make` takes on the next `iters` signatures of `series` (from
/// `*next`, which moves past them), everything it makes kept until the
/// clock stops.
fn time_new_signatures<T>(
    series: fn(u64) -> Signature,
    next: &mut u64,
    iters: u64,
    mut make: impl FnMut(&Signature) -> T,
) -> Duration {
    let sigs: Vec<Signature> = (*next..*next + iters).map(series).collect();
    *next += iters;
    let mut keep = Vec::with_capacity(iters as usize);
    let t = Instant::now();
    for s in &sigs {
        keep.push(make(s));
    }
    let d = t.elapsed();
    drop(keep);
    d
}

fn setup(c: &mut Criterion, be: &Backends) {
    let mut g = c.benchmark_group("setup");
    let host = measure::host_for(0);
    let (mut next, mut next_shape, mut next_known) = (0u64, 0u64, 0u64);
    for (name, bridge) in [("generated", &be.generated), ("libffi", &be.libffi)] {
        for (what, series, counter) in [
            (
                "new signature's",
                measure::fresh_sig as fn(u64) -> Signature,
                &mut next,
            ),
            (
                "new signature (new entry shape)'s",
                measure::fresh_shape_sig,
                &mut next_shape,
            ),
            (
                "new signature (known shapes)'s",
                measure::fresh_known_shape_sig,
                &mut next_known,
            ),
        ] {
            // The signature's shared code (exit stub and entry thunk), made
            // or found by `prepare`, with no function bound.
            g.bench_function(format!("{name}: {what} exit stub + entry thunk"), |b| {
                b.iter_custom(|iters| {
                    time_new_signatures(series, counter, iters, |s| {
                        bridge.prepare(s, CallConv::SysV).unwrap()
                    })
                })
            });
            // The same, and a first function bound.
            g.bench_function(
                format!("{name}: {what} exit stub + bound entry point"),
                |b| {
                    b.iter_custom(|iters| {
                        time_new_signatures(series, counter, iters, |s| {
                            let x = bridge.exit_stub(s, CallConv::SysV).unwrap();
                            (x, bridge.entry_point(s, CallConv::SysV, &host, 0).unwrap())
                        })
                    })
                },
            );
            // The registry keeps every signature, so each of these rows runs
            // on a larger one than the last: say how large.
            eprintln!(
                "setup: {name}, {what}: the registry now holds {} signatures",
                bridge.registry().len()
            );
        }
        let sig: Signature = "(i64,i64,i64,i64,i64,i64,i64,i64,i64,i64)->i64"
            .parse()
            .unwrap();
        let id = bridge.registry().intern(&sig);
        g.bench_function(format!("{name}: new bound entry point (by id)"), |b| {
            b.iter_custom(|iters| {
                let mut keep = Vec::with_capacity(iters as usize);
                let t = Instant::now();
                for i in 0..iters {
                    keep.push(
                        bridge
                            .entry_point_by_id(id, CallConv::SysV, &host, i)
                            .unwrap(),
                    );
                }
                let d = t.elapsed();
                drop(keep);
                d
            })
        });
        bridge.exit_stub(&sig, CallConv::SysV).unwrap();
        g.bench_function(format!("{name}: cached exit stub by id"), |b| {
            b.iter(|| {
                bridge
                    .exit_stub_by_id(black_box(id), CallConv::SysV)
                    .unwrap()
            })
        });
        g.bench_function(format!("{name}: cached exit stub by signature"), |b| {
            b.iter(|| bridge.exit_stub(black_box(&sig), CallConv::SysV).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_millis(1500));
    targets = shapes
}
criterion_main!(benches);
