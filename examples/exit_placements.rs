//! Exit-stub call times that do not depend on where the code happens to land.
//!
//! ```text
//! cargo run --release --example exit_placements
//! ```
//!
//! A cell of `benches/calls.rs` can move by 0.4–1 ns from one build to the
//! next with no change to the code it times: where the stub, the loop and the
//! callee land in memory matters on the machine measured (ABI.md, "Executable
//! memory"). This example times each shape's checked exit through eight
//! bridges, each with its stubs at a different place (0 to 7 other stubs made
//! before them, the result slots at a different offset), three rounds each,
//! and prints the median of those 24 runs and the range of each placement's
//! best round (the placements' own spread, with passing disturbances of the
//! machine filtered out). Comparing two builds' medians says what a change
//! did, not where it moved the code.

use std::ffi::c_void;
use std::hint::black_box;
use std::time::Instant;

use tierbridge::abi::{CallConv, Signature};
use tierbridge::thunks::{BackendKind, Bridge, ExitStub};

#[path = "common/measure.rs"]
mod measure;

use measure::{Triple, add_i64, eight_i64, ten_i64, triple};

extern "C" fn xor7(a: i64, b: i64, c: i64, d: i64, e: i64, f: i64, g: i64) -> i64 {
    a ^ b ^ c ^ d ^ e ^ f ^ g
}

/// A struct too big for registers: passed on the stack (SysV MEMORY class).
extern "C" fn sum_triple(p: Triple, x: i64) -> f64 {
    p.a + p.b + p.c + x as f64
}

/// `n` checked calls of `target` through `stub`, in ns per call.
#[inline(never)]
fn time(stub: &ExitStub, target: *const c_void, args: &[u64], ret: &mut [u64], n: u64) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: every target below has its stub's signature, and the
        // argument values are plain integers and floats.
        unsafe { stub.call(black_box(target), black_box(args), ret) }.unwrap();
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let shapes: [(&str, *const c_void); 6] = [
        ("(i64,i64)->i64", add_i64 as *const c_void),
        ("(i64,i64,i64,i64,i64,i64,i64)->i64", xor7 as *const c_void),
        (
            "(i64,i64,i64,i64,i64,i64,i64,i64)->i64",
            eight_i64 as *const c_void,
        ),
        (
            "(i64,i64,i64,i64,i64,i64,i64,i64,i64,i64)->i64",
            ten_i64 as *const c_void,
        ),
        ("(f64)->{f64,f64,f64}", triple as *const c_void),
        ("({f64,f64,f64},i64)->f64", sum_triple as *const c_void),
    ];
    // Stubs of other shapes, made first to move the measured ones.
    let fillers = [
        "(i8)->i8",
        "(i16,f32)->i16",
        "(u32,f64,f64)->f32",
        "(f32,f32,f32,f32)->f64",
        "(i8,i8,i8)->u8",
        "(u16)->void",
        "(f64,i8)->i16",
    ];
    if let Some(why) = Bridge::new(BackendKind::Generated)
        .unwrap()
        .fallback_reason()
    {
        // Placements are the generated backend's: libffi's code does not move.
        println!("no code generation here: {why}");
        return;
    }
    let n = 2_000_000;
    // times[shape][place][round]
    let mut times: Vec<Vec<Vec<f64>>> = vec![Vec::new(); shapes.len()];
    for place in 0..=fillers.len() {
        let bridge = Bridge::new(BackendKind::Generated).unwrap();
        let _fillers: Vec<ExitStub> = fillers[..place]
            .iter()
            .map(|s| {
                bridge
                    .exit_stub(&s.parse().unwrap(), CallConv::SysV)
                    .unwrap()
            })
            .collect();
        let sigs: Vec<Signature> = shapes.iter().map(|(s, _)| s.parse().unwrap()).collect();
        let stubs: Vec<ExitStub> = sigs
            .iter()
            .map(|s| bridge.exit_stub(s, CallConv::SysV).unwrap())
            .collect();
        let args: Vec<Vec<u64>> = sigs
            .iter()
            .map(|s| (1..=s.arg_slots() as u64).collect())
            .collect();
        let mut ret = vec![0u64; 3 + place];
        for t in times.iter_mut() {
            t.push(Vec::new());
        }
        for _round in 0..3 {
            for (k, (_, target)) in shapes.iter().enumerate() {
                let ret = &mut ret[place..place + sigs[k].ret_slots()];
                times[k][place].push(time(&stubs[k], *target, &args[k], ret, n));
            }
        }
    }
    // The median of all runs; and each placement's best round, which a
    // passing disturbance of the machine does not reach: how far apart
    // those are is the placement's own effect.
    println!("checked exit, ns per call, 8 placements x 3 rounds:");
    for ((shape, _), per_place) in shapes.iter().zip(times) {
        let all: Vec<f64> = per_place.iter().flatten().copied().collect();
        let mut best: Vec<f64> = per_place
            .iter()
            .map(|r| r.iter().copied().fold(f64::INFINITY, f64::min))
            .collect();
        best.sort_by(f64::total_cmp);
        println!(
            "  {shape:48} median {:.2}  best per placement {:.2}..{:.2}",
            measure::median(all),
            best[0],
            best[best.len() - 1]
        );
    }
}
