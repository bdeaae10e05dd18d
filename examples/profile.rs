//! A fixed number of calls through one path, for instruction counts:
//! `valgrind --tool=callgrind target/release/examples/profile <direct|exit|exit-unchecked|exit-struct|exit-wide|exit-complex|entry|entry-raw|direct10|entry10|entry10-scalar|create|create-shapes|create-known|create-phases|bind-drop|code> [calls] [libffi]`
//! (`PROFILE_TIME=1` also prints nanoseconds per call on stderr, and for the
//! `create` modes page faults per signature; `PROFILE_PREFAULT=1` makes the
//! `create` modes run on heap memory already faulted in, to show what the
//! faults cost; `PROFILE_MAKE=1` makes each signature in the timed loop with
//! `Signature::new` and drops it after, as an embedder building signatures
//! in code would; `PROFILE_PREPARE=1` makes each signature's exit stub and
//! entry thunk with `Bridge::prepare`, binding nothing; `PROFILE_THREADS=k`
//! makes the `create` modes share the signatures among k threads on one
//! bridge and print wall time per signature; `create-phases`
//! prints where a new signature's time goes, see below; `bind-drop` binds
//! a function of a known signature and drops its entry point, `calls`
//! times, after as many cycles untimed, so that a quarantine of dropped
//! entry points is full and steady). `code` installs
//! `calls` one-instruction pieces of code through `CodeMemory` (each
//! published: named for tools, and registered with gdb under
//! `TIERBRIDGE_GDB=1`), keeps them all, then drops them oldest first: the
//! cost of a region made and dropped, its time per region with
//! `PROFILE_TIME=1`.

#[path = "common/measure.rs"]
mod measure;

use std::ffi::c_void;
use std::hint::black_box;
use std::sync::Arc;

use tierbridge::abi::{CallConv, Signature};
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy, HostError, RawBinding, RawVaList};
use tierbridge::thunks::{BackendKind, Bridge, EntryPoint, ExitStub};

extern "C" fn add_i64(a: i64, b: i64) -> i64 {
    a.wrapping_add(b)
}

/// A raw dispatcher for `(i64,i64)->i64`: the sum of its two slots.
///
/// # Safety
/// Called by an entry point of that signature (two argument slots, one result slot).
unsafe extern "C" fn add_raw(
    _: *const RawBinding,
    args: *const u64,
    ret: *mut u64,
    _: *mut RawVaList,
) -> u32 {
    // SAFETY: by this function's contract.
    unsafe { *ret = (*args).wrapping_add(*args.add(1)) };
    0
}

/// `n` calls of `f` in a loop (each loop in its own function, so every mode's
/// instruction count is its own loop's).
#[inline(never)]
fn call_loop(f: extern "C" fn(i64, i64) -> i64, n: u64) -> u64 {
    let mut acc = 0u64;
    for i in 0..n {
        acc = acc.wrapping_add(black_box(f)(i as i64, 1) as u64);
    }
    acc
}

/// `n` calls of a ten-argument `f` (four arguments on the stack).
#[inline(never)]
fn call10_loop(f: measure::Ten, n: u64) -> u64 {
    let mut acc = 0u64;
    for i in 0..n {
        let i = i as i64;
        acc = acc.wrapping_add(black_box(f)(i, 1, 2, 3, 4, 5, 6, 7, 8, 9) as u64);
    }
    acc
}

/// `n` checked exit calls of `target`, a function of two `i64`s whose
/// result fills `ret` (`add_i64`, `pair_of`, `wide_of`, `complex_of`).
///
/// # Safety
/// `target` has the stub's signature.
#[inline(never)]
unsafe fn exit_loop(stub: &ExitStub, target: *const c_void, n: u64, ret: &mut [u64]) -> u64 {
    let mut acc = 0u64;
    for i in 0..n {
        // SAFETY: by this function's contract.
        unsafe { stub.call(black_box(target), &[i, 1], ret) }.unwrap();
        acc = acc.wrapping_add(ret[ret.len() - 1]);
    }
    acc
}

/// A two-`i32` struct, returned in rax.
#[repr(C)]
struct Pair32 {
    a: i32,
    b: i32,
}

extern "C" fn pair_of(a: i64, b: i64) -> Pair32 {
    Pair32 {
        a: a as i32,
        b: b as i32,
    }
}

/// Two `i64`s, returned in rax:rdx.
#[repr(C)]
struct Wide {
    q: i64,
    r: i64,
}

extern "C" fn wide_of(a: i64, b: i64) -> Wide {
    Wide { q: a, r: b }
}

/// Two `f64`s (a C `double _Complex`), returned in xmm0:xmm1.
#[repr(C)]
struct Complex {
    re: f64,
    im: f64,
}

extern "C" fn complex_of(a: i64, b: i64) -> Complex {
    Complex {
        re: a as f64,
        im: b as f64,
    }
}

/// `n` unchecked exit calls of `add_i64`.
#[inline(never)]
fn exit_unchecked_loop(stub: &ExitStub, n: u64) -> u64 {
    let (mut acc, mut ret) = (0u64, [0u64]);
    for i in 0..n {
        let args = [i, 1];
        // SAFETY: add_i64 has the stub's signature; the slot counts are the stub's.
        unsafe {
            stub.call_unchecked(
                black_box(add_i64 as *const c_void),
                args.as_ptr(),
                ret.as_mut_ptr(),
            )
        };
        acc = acc.wrapping_add(ret[0]);
    }
    acc
}

/// Where a new signature's time goes: `n` new signatures of the
/// `measure::fresh_sig` series (each round its own), taken through one more
/// step per phase, each phase with a bridge of its own. The registry is the
/// process's, so a later phase finds the signatures interned and classified
/// by the earlier ones: phase 1 is interning, 2 classifying (after interning
/// again, which finds the signature), 3 the exit stub alone, 4 the entry
/// point alone (interning and classifying found again, its thunk found or
/// made, and the binding). Prints nanoseconds per signature for three rounds.
/// (`create` classifies only the signatures whose signature key, ABI.md,
/// "Generated code", is new to the backend: its total is less than the sum.)
fn create_phases(kind: BackendKind, n: u64) {
    let d = Dispatcher::from_host(
        Arc::new(|_: EntryCall<'_>| -> Result<(), HostError> { Ok(()) }),
        FailurePolicy::Report,
    );
    for round in 0..3 {
        let sigs: Vec<Signature> = (round * n..(round + 1) * n)
            .map(measure::fresh_sig)
            .collect();
        let mut per = [0f64; 4];
        for (phase, out) in per.iter_mut().enumerate() {
            let b = Bridge::new(kind).unwrap();
            let reg = b.registry();
            let (mut exits, mut entries) = (Vec::new(), Vec::new());
            let t = std::time::Instant::now();
            for s in &sigs {
                match phase {
                    0 => drop(black_box(reg.intern(s))),
                    1 => drop(black_box(
                        reg.layout(reg.intern(s), CallConv::SysV).unwrap(),
                    )),
                    2 => exits.push(b.exit_stub(s, CallConv::SysV).unwrap()),
                    _ => entries.push(b.entry_point(s, CallConv::SysV, &d, 0).unwrap()),
                }
            }
            *out = t.elapsed().as_nanos() as f64 / n.max(1) as f64;
        }
        println!(
            "ns per new signature: intern {:.0}, classify {:.0}, exit stub {:.0}, entry point {:.0}",
            per[0], per[1], per[2], per[3]
        );
    }
}

/// What the `create` modes make for their signatures: an exit stub and a
/// bound entry point each, or with `prepare` the exit stub `Bridge::prepare`
/// returns.
enum Made {
    Bound(Vec<(ExitStub, EntryPoint)>),
    Prepared(Vec<ExitStub>),
}

impl Made {
    fn with_room(n: usize, prepare: bool) -> Made {
        if prepare {
            Made::Prepared(Vec::with_capacity(n))
        } else {
            Made::Bound(Vec::with_capacity(n))
        }
    }

    /// Makes what each of `sigs` gets (`make`: from a copy of it made here
    /// with `Signature::new` and dropped after, see `PROFILE_MAKE`).
    fn make_each(&mut self, b: &Bridge, d: &Dispatcher, sigs: &[Signature], make: bool) {
        for s in sigs {
            let made;
            let s = if make {
                made = Signature::new(s.params().to_vec(), s.ret().cloned()).unwrap();
                &made
            } else {
                s
            };
            match self {
                Made::Prepared(stubs) => stubs.push(b.prepare(s, CallConv::SysV).unwrap()),
                Made::Bound(keep) => keep.push((
                    b.exit_stub(s, CallConv::SysV).unwrap(),
                    b.entry_point(s, CallConv::SysV, d, 0).unwrap(),
                )),
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Made::Bound(keep) => keep.len(),
            Made::Prepared(stubs) => stubs.len(),
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "exit".into());
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let kind = if args.next().as_deref() == Some("libffi") {
        BackendKind::Libffi
    } else {
        BackendKind::Generated
    };
    if mode == "create-phases" {
        return create_phases(kind, n);
    }
    let b = Bridge::new(kind).unwrap();
    if let Some(why) = b.fallback_reason() {
        eprintln!("note: {why}");
    }
    let sig = "(i64,i64)->i64".parse().unwrap();
    let acc: u64;
    let t0 = std::time::Instant::now();
    match mode.as_str() {
        "direct" => acc = call_loop(add_i64, n),
        "create" | "create-shapes" | "create-known" => {
            // n new signatures of a series benches/calls.rs uses
            // (`measure::fresh_sig`; `fresh_shape_sig`: every entry shape
            // new; `fresh_known_shape_sig`: nearly every shape known); for
            // each, its exit stub and a bound entry point (`PROFILE_PREPARE`:
            // its exit stub and entry thunk, nothing bound).
            let d = Dispatcher::from_host(
                Arc::new(|_: EntryCall<'_>| -> Result<(), HostError> { Ok(()) }),
                FailurePolicy::Report,
            );
            let series = match mode.as_str() {
                "create" => measure::fresh_sig,
                "create-known" => measure::fresh_known_shape_sig,
                _ => measure::fresh_shape_sig,
            };
            let sigs: Vec<Signature> = (0..n).map(series).collect();
            let prepare = std::env::var_os("PROFILE_PREPARE").is_some();
            if std::env::var_os("PROFILE_PREFAULT").is_some() {
                prefault_heap();
            }
            // PROFILE_MAKE: each signature made in the loop, from a vector
            // of its types (`Signature::new`), and dropped after its exit
            // stub and entry point are made, as an embedder building
            // signatures in code does.
            let make = std::env::var_os("PROFILE_MAKE").is_some();
            // PROFILE_THREADS=k: k threads share the signatures (thread i
            // the i-th k-th of them, so that neighbouring signatures, each
            // written once when interned to note its id, stay one thread's),
            // all on one bridge, and the time printed is wall time over all
            // signatures (the throughput; one thread's time per signature is
            // k times it).
            let threads: usize = std::env::var("PROFILE_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&k| k > 1)
                .unwrap_or(1);
            let share = sigs.len().div_ceil(threads).max(1);
            // What each signature makes is kept until the clock stops, in
            // room reserved beforehand.
            let mut made: Vec<Made> = sigs
                .chunks(share)
                .map(|c| Made::with_room(c.len(), prepare))
                .collect();
            let f0 = minor_faults();
            let t = std::time::Instant::now();
            if threads == 1 {
                for (c, m) in sigs.chunks(share).zip(&mut made) {
                    m.make_each(&b, &d, c, make);
                }
            } else {
                std::thread::scope(|scope| {
                    for (c, m) in sigs.chunks(share).zip(&mut made) {
                        let (b, d) = (&b, &d);
                        scope.spawn(move || m.make_each(b, d, c, make));
                    }
                });
            }
            if std::env::var_os("PROFILE_TIME").is_some() {
                let per = t.elapsed().as_nanos() as f64 / n.max(1) as f64;
                let faults = (minor_faults() - f0) as f64 / n.max(1) as f64;
                let on = if threads > 1 {
                    format!(", {threads} threads")
                } else {
                    String::new()
                };
                eprintln!(
                    "create (without parsing{on}): {per:.0} ns, {faults:.3} page faults per signature"
                );
            }
            acc = made.iter().map(Made::len).sum::<usize>() as u64;
        }
        "bind-drop" => {
            let d = Dispatcher::from_host(
                Arc::new(|_: EntryCall<'_>| -> Result<(), HostError> { Ok(()) }),
                FailurePolicy::Report,
            );
            let id = b.registry().intern(&sig);
            let cycle = |i: u64| {
                let ep = b.entry_point_by_id(id, CallConv::SysV, &d, i).unwrap();
                black_box(ep.code_ptr());
            };
            // Not counted: the first cycles fill the quarantine, make the
            // trampolines it holds, and grow the queues to their size.
            (0..n).for_each(cycle);
            let t = std::time::Instant::now();
            bind_drop_loop(&cycle, n);
            if std::env::var_os("PROFILE_TIME").is_some() {
                let per = t.elapsed().as_nanos() as f64 / n.max(1) as f64;
                eprintln!("bind-drop: {per:.1} ns per bind and drop");
            }
            acc = n;
        }
        "exit" => {
            let stub = b.exit_stub(&sig, CallConv::SysV).unwrap();
            // SAFETY: add_i64 is `(i64,i64)->i64`.
            acc = unsafe { exit_loop(&stub, add_i64 as *const c_void, n, &mut [0]) }
        }
        "exit-struct" => {
            let s = "(i64,i64)->{i32,i32}".parse().unwrap();
            let stub = b.exit_stub(&s, CallConv::SysV).unwrap();
            // SAFETY: pair_of is `(i64,i64)->{i32,i32}`.
            acc = unsafe { exit_loop(&stub, pair_of as *const c_void, n, &mut [0]) }
        }
        "exit-wide" => {
            let s = "(i64,i64)->{i64,i64}".parse().unwrap();
            let stub = b.exit_stub(&s, CallConv::SysV).unwrap();
            // SAFETY: wide_of is `(i64,i64)->{i64,i64}`.
            acc = unsafe { exit_loop(&stub, wide_of as *const c_void, n, &mut [0; 2]) }
        }
        "exit-complex" => {
            let s = "(i64,i64)->{f64,f64}".parse().unwrap();
            let stub = b.exit_stub(&s, CallConv::SysV).unwrap();
            // SAFETY: complex_of is `(i64,i64)->{f64,f64}`.
            acc = unsafe { exit_loop(&stub, complex_of as *const c_void, n, &mut [0; 2]) }
        }
        "exit-unchecked" => {
            acc = exit_unchecked_loop(&b.exit_stub(&sig, CallConv::SysV).unwrap(), n)
        }
        "entry10" | "entry10-scalar" => {
            // The same host work two ways: a fold the compiler vectorizes
            // (16-byte loads, each spanning two slots the thunk has just
            // stored one by one) and one 8-byte load per slot.
            let scalar = mode == "entry10-scalar";
            let h = move |c: EntryCall<'_>| -> Result<(), HostError> {
                let a = &c.args[..10];
                c.ret[0] = if scalar {
                    // SAFETY: references to live slots (volatile: never merged into wider loads).
                    a.iter()
                        .fold(0, |x, y| x ^ unsafe { std::ptr::read_volatile(y) })
                } else {
                    a.iter().fold(0, |x, y| x ^ y)
                };
                Ok(())
            };
            let d = Dispatcher::from_host(Arc::new(h), FailurePolicy::Report);
            let s10 = "(i64,i64,i64,i64,i64,i64,i64,i64,i64,i64)->i64"
                .parse()
                .unwrap();
            let ep = b.entry_point(&s10, CallConv::SysV, &d, 0).unwrap();
            // SAFETY: the entry point has this signature and outlives the loop.
            acc = call10_loop(unsafe { ep.as_fn() }, n);
        }
        "direct10" => acc = call10_loop(measure::ten_i64, n),
        "code" => {
            let mem = tierbridge::tier::CodeMemory::of(&b).expect("code memory");
            let mut codes = Vec::with_capacity(n as usize);
            for _ in 0..n {
                codes.push(mem.install("profile code", &[0xc3]).unwrap());
            }
            acc = codes
                .iter()
                .map(|c| c.addr() as u64)
                .fold(0, u64::wrapping_add);
            drop(codes);
        }
        "entry-raw" => {
            // SAFETY: add_raw never unwinds and ignores the context.
            let d = unsafe {
                Dispatcher::from_raw(add_raw, std::ptr::null_mut(), FailurePolicy::Report)
            };
            let ep = b.entry_point(&sig, CallConv::SysV, &d, 0).unwrap();
            // SAFETY: the entry point has this signature and outlives the loop.
            acc = call_loop(unsafe { ep.as_fn() }, n);
        }
        _ => {
            let h = |c: EntryCall<'_>| -> Result<(), HostError> {
                c.ret[0] = c.args[0].wrapping_add(c.args[1]);
                Ok(())
            };
            let d = Dispatcher::from_host(Arc::new(h), FailurePolicy::Report);
            let ep = b.entry_point(&sig, CallConv::SysV, &d, 0).unwrap();
            // SAFETY: the entry point has this signature and outlives the loop.
            acc = call_loop(unsafe { ep.as_fn() }, n);
        }
    }
    let dt = t0.elapsed();
    println!("{acc}");
    if std::env::var_os("PROFILE_TIME").is_some() {
        eprintln!(
            "{mode}: {:.3} ns/call",
            dt.as_nanos() as f64 / n.max(1) as f64
        );
    }
}

/// `n` bind+drop cycles (its own function, so that callgrind counts its
/// instructions apart from the warm-up's).
#[inline(never)]
fn bind_drop_loop(cycle: &dyn Fn(u64), n: u64) {
    (0..n).for_each(cycle);
}

/// Minor page faults of this process so far.
#[cfg(unix)]
fn minor_faults() -> i64 {
    // SAFETY: an all-zero rusage is a valid value (integers and timevals).
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid rusage for getrusage to write.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_minflt
}

#[cfg(not(unix))]
fn minor_faults() -> i64 {
    0
}

/// Makes glibc's malloc keep 200 MB of heap that was written once, so the
/// allocations that follow take no page faults.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn prefault_heap() {
    // SAFETY: mallopt only changes malloc's tunables (it takes malloc's own
    // lock): no large block from mmap, never give memory back to the system.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    black_box(vec![1u8; 200 << 20]);
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn prefault_heap() {
    eprintln!("PROFILE_PREFAULT works with glibc's malloc only");
}
