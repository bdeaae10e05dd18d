//! Call overhead: a direct call through a function pointer against the libffi
//! backend's exit stubs and entry points, on the same shapes, in one run.
//!
//! `cargo bench --bench calls` (HTML reports in target/criterion/).

use std::ffi::c_void;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tierbridge::abi::{CallConv, Signature};
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy, HostError};
use tierbridge::thunks::Bridge;

extern "C" fn add_i64(a: i64, b: i64) -> i64 {
    a.wrapping_add(b)
}

extern "C" fn add_f64(a: f64, b: f64) -> f64 {
    a + b
}

#[allow(clippy::too_many_arguments)]
extern "C" fn mixed8(a: i8, b: u16, c: i32, d: i64, e: f32, f: f64, g: u8, h: f64) -> f64 {
    a as f64 + b as f64 + c as f64 + d as f64 + e as f64 + f + g as f64 + h
}

#[allow(clippy::too_many_arguments)]
extern "C" fn ten_i64(
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

fn sum_host() -> Dispatcher {
    let host = |c: EntryCall<'_>| -> Result<(), HostError> {
        c.ret[0] = c.args.iter().fold(0u64, |a, b| a.wrapping_add(*b));
        Ok(())
    };
    Dispatcher::from_host(Arc::new(host), FailurePolicy::Report)
}

fn shapes(c: &mut Criterion) {
    let bridge = Bridge::libffi();
    let conv = CallConv::SysV;
    let d = sum_host();

    let mut g = c.benchmark_group("(i64,i64)->i64");
    let sig: Signature = "(i64,i64)->i64".parse().unwrap();
    let stub = bridge.exit_stub(&sig, conv).unwrap();
    let ep = bridge.entry_point(&sig, conv, &d, 0).unwrap();
    // SAFETY: the entry point has this signature and outlives every call below.
    let entry: extern "C" fn(i64, i64) -> i64 = unsafe { ep.as_fn() };
    g.bench_function("direct", |b| {
        b.iter(|| black_box(add_i64 as extern "C" fn(i64, i64) -> i64)(black_box(1), 2))
    });
    g.bench_function("libffi exit", |b| {
        let mut r = [0u64];
        // SAFETY: add_i64 has this signature.
        b.iter(|| unsafe {
            stub.call(black_box(add_i64 as *const c_void), &[1, 2], &mut r)
                .unwrap()
        })
    });
    g.bench_function("libffi entry", |b| {
        b.iter(|| black_box(entry)(black_box(1), 2))
    });
    g.finish();

    let mut g = c.benchmark_group("(f64,f64)->f64");
    let stub = bridge
        .exit_stub(&"(f64,f64)->f64".parse().unwrap(), conv)
        .unwrap();
    g.bench_function("direct", |b| {
        b.iter(|| black_box(add_f64 as extern "C" fn(f64, f64) -> f64)(black_box(1.0), 2.0))
    });
    g.bench_function("libffi exit", |b| {
        let mut r = [0u64];
        let args = [1f64.to_bits(), 2f64.to_bits()];
        // SAFETY: add_f64 has this signature.
        b.iter(|| unsafe {
            stub.call(black_box(add_f64 as *const c_void), &args, &mut r)
                .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("8 mixed scalars");
    let stub = bridge
        .exit_stub(
            &"(i8,u16,i32,i64,f32,f64,u8,f64)->f64".parse().unwrap(),
            conv,
        )
        .unwrap();
    type Mixed = extern "C" fn(i8, u16, i32, i64, f32, f64, u8, f64) -> f64;
    g.bench_function("direct", |b| {
        b.iter(|| black_box(mixed8 as Mixed)(black_box(1), 2, 3, 4, 5.0, 6.0, 7, 8.0))
    });
    g.bench_function("libffi exit", |b| {
        let mut r = [0u64];
        let args = [
            1,
            2,
            3,
            4,
            5f32.to_bits() as u64,
            6f64.to_bits(),
            7,
            8f64.to_bits(),
        ];
        // SAFETY: mixed8 has this signature.
        b.iter(|| unsafe {
            stub.call(black_box(mixed8 as *const c_void), &args, &mut r)
                .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("10 x i64 (stack)");
    let sig: Signature = "(i64,i64,i64,i64,i64,i64,i64,i64,i64,i64)->i64"
        .parse()
        .unwrap();
    let stub = bridge.exit_stub(&sig, conv).unwrap();
    let ep = bridge.entry_point(&sig, conv, &d, 0).unwrap();
    type Ten = extern "C" fn(i64, i64, i64, i64, i64, i64, i64, i64, i64, i64) -> i64;
    // SAFETY: the entry point has this signature and outlives every call below.
    let entry: Ten = unsafe { ep.as_fn() };
    g.bench_function("direct", |b| {
        b.iter(|| black_box(ten_i64 as Ten)(black_box(1), 2, 3, 4, 5, 6, 7, 8, 9, 10))
    });
    g.bench_function("libffi exit", |b| {
        let mut r = [0u64];
        let args = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        // SAFETY: ten_i64 has this signature.
        b.iter(|| unsafe {
            stub.call(black_box(ten_i64 as *const c_void), &args, &mut r)
                .unwrap()
        })
    });
    g.bench_function("libffi entry", |b| {
        b.iter(|| black_box(entry)(black_box(1), 2, 3, 4, 5, 6, 7, 8, 9, 10))
    });
    g.finish();

    let mut g = c.benchmark_group("setup");
    g.bench_function("cached exit stub lookup", |b| {
        b.iter(|| bridge.exit_stub(black_box(&sig), conv).unwrap())
    });
    g.bench_function("new bound entry point", |b| {
        b.iter(|| bridge.entry_point(&sig, conv, &d, 1).unwrap())
    });
    g.finish();
}

criterion_group!(benches, shapes);
criterion_main!(benches);
