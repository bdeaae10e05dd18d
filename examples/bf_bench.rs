//! The brainfuck client against what a user would pick instead: every mode
//! of `examples/brainfuck` (interpreted, tiered, whole-program JIT) on
//! loop-heavy programs, next to a naive C interpreter compiled with `cc -O2`
//! here; and copying 10 MB from stdin to stdout, tiered, next to a cat-like
//! C loop with the same buffering (`getchar_unlocked`/`putchar_unlocked`).
//! Medians of interleaved rounds, ratios from the same run.
//!
//! `cargo run --release --features cranelift --example bf_bench -- [--quick]`

#[path = "brainfuck/bf.rs"]
mod bf;
#[path = "common/measure.rs"]
mod measure;

use std::ffi::c_void;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use measure::median;
use tierbridge::native::NativeLibrary;
use tierbridge::thunks::{BackendKind, Bridge};
use tierbridge::tier::TierConfig;

/// A naive interpreter (brackets matched once, nothing folded) and a
/// cat-like copy loop, in C.
const C_SOURCE: &str = r#"
#include <stdio.h>
#include <stdlib.h>
long naive_run(const unsigned char *p, long n, unsigned char *tape) {
    long *jump = malloc(sizeof(long) * (n + 1)), *stack = malloc(sizeof(long) * (n + 1));
    long sp = 0, pc, ptr = 0, sum = 0;
    for (pc = 0; pc < n; pc++) {
        if (p[pc] == '[') stack[sp++] = pc;
        else if (p[pc] == ']') { long o = stack[--sp]; jump[o] = pc; jump[pc] = o; }
    }
    for (pc = 0; pc < n; pc++) {
        switch (p[pc]) {
        case '+': tape[ptr]++; break;
        case '-': tape[ptr]--; break;
        case '>': ptr++; break;
        case '<': ptr--; break;
        case '.': sum += tape[ptr]; break;
        case '[': if (!tape[ptr]) pc = jump[pc]; break;
        case ']': if (tape[ptr]) pc = jump[pc]; break;
        }
    }
    free(jump); free(stack);
    return sum;
}
long cat_loop(void) {
    long n = 0;
    int c;
    while ((c = getchar_unlocked()) != EOF) { putchar_unlocked(c); n++; }
    fflush(stdout);
    return n;
}
/* The same, calling the functions, as the brainfuck program's code does
   (through pointers: glibc's headers inline them even when called by name). */
long cat_calls(void) {
    int (*volatile get)(void) = getchar_unlocked;
    int (*volatile put)(int) = putchar_unlocked;
    long n = 0;
    int c;
    while ((c = get()) != EOF) { put(c); n++; }
    fflush(stdout);
    return n;
}
void rewind_stdin(void) { rewind(stdin); }
void flush_stdout(void) { fflush(stdout); }
"#;

static OUT_SUM: AtomicU64 = AtomicU64::new(0);

/// Output for the loop-heavy programs: summed, not printed.
extern "C" fn sum_put(c: i32) -> i32 {
    OUT_SUM.fetch_add(c as u8 as u64, Ordering::Relaxed);
    c
}

extern "C" fn no_get() -> i32 {
    -1
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 5 };
    let bridge = Arc::new(Bridge::new(BackendKind::Generated).expect("a bridge"));
    if bridge.kind() != BackendKind::Generated {
        println!("no code generation here: {:?}", bridge.fallback_reason());
        return;
    }
    let dir = std::env::temp_dir().join(format!("tierbridge-bf-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c_path = dir.join("naive.c");
    let so_path = dir.join("libnaive.so");
    std::fs::write(&c_path, C_SOURCE).unwrap();
    let cc = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&so_path)
        .arg(&c_path)
        .status()
        .expect("a C compiler (cc)");
    assert!(cc.success(), "cc failed");
    // SAFETY: the library just compiled: its initialisers are the C runtime's.
    let lib = unsafe { NativeLibrary::open(so_path.to_str().unwrap()) }.unwrap();
    type Naive = unsafe extern "C" fn(*const u8, i64, *mut u8) -> i64;
    // SAFETY: the functions of C_SOURCE, with these signatures.
    let (naive, cat, cat_calls, rewind_stdin, flush_stdout) = unsafe {
        (
            std::mem::transmute::<*const c_void, Naive>(lib.symbol("naive_run").unwrap()),
            std::mem::transmute::<*const c_void, extern "C" fn() -> i64>(
                lib.symbol("cat_loop").unwrap(),
            ),
            std::mem::transmute::<*const c_void, extern "C" fn() -> i64>(
                lib.symbol("cat_calls").unwrap(),
            ),
            std::mem::transmute::<*const c_void, extern "C" fn()>(
                lib.symbol("rewind_stdin").unwrap(),
            ),
            std::mem::transmute::<*const c_void, extern "C" fn()>(
                lib.symbol("flush_stdout").unwrap(),
            ),
        )
    };

    // --- loop-heavy programs ------------------------------------------------
    let programs: [(&str, &str); 2] = [
        (
            "three nested 255-loops with a copy inside",
            "-[>-[>-[>+<-]<-]<-]+++++.",
        ),
        (
            "copy loops inside two 255-loops",
            "-[>-[>+[>+>+<<-]>>[<<+>>-]<<<-]<-]>>>>.",
        ),
    ];
    let io = bf::Io {
        put: sum_put as *const c_void,
        get: no_get as *const c_void,
    };
    let tiered = TierConfig {
        call_threshold: u32::MAX,
        loop_threshold: 1000,
        ..TierConfig::default()
    };
    let jit = TierConfig {
        loop_threshold: 1,
        ..tiered
    };
    println!("## loop-heavy programs: ms per run (median of {rounds} interleaved rounds)\n");
    println!(
        "| program | interp | tiered | jit | naive C (`cc -O2`) | tiered vs interp | tiered vs naive C | compile ms (median, max) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut all_compiles = Vec::new();
    for (name, src) in programs {
        let modes = [
            (bf::Mode::Interp, TierConfig::interpreter_only()),
            (bf::Mode::Tiered, tiered),
            (bf::Mode::Jit, jit),
        ];
        let mut times: [Vec<f64>; 4] = Default::default();
        let mut compiles = Vec::new();
        let mut sums = Vec::new();
        for _ in 0..rounds {
            for (k, (mode, config)) in modes.iter().enumerate() {
                let vm = bf::Bf::new(
                    bf::parse(src.as_bytes()).unwrap(),
                    bridge.clone(),
                    *mode,
                    *config,
                    io,
                    bf::TAPE_LIMIT,
                )
                .unwrap();
                OUT_SUM.store(0, Ordering::Relaxed);
                let t = Instant::now();
                vm.run().unwrap();
                times[k].push(t.elapsed().as_secs_f64() * 1e3);
                sums.push(OUT_SUM.load(Ordering::Relaxed));
                compiles.extend(vm.stats().compile_ms);
            }
            let mut tape = vec![0u8; 1 << 16];
            let t = Instant::now();
            // SAFETY: a balanced program and a tape larger than it walks.
            let s = unsafe { naive(src.as_ptr(), src.len() as i64, tape.as_mut_ptr()) };
            times[3].push(t.elapsed().as_secs_f64() * 1e3);
            sums.push(s as u64);
        }
        assert!(
            sums.iter().all(|s| *s == sums[0]),
            "{name}: outputs differ: {sums:?}"
        );
        let m: Vec<f64> = times.into_iter().map(median).collect();
        let cmax = compiles.iter().copied().fold(0.0, f64::max);
        let cmed = median(compiles.clone());
        all_compiles.extend(compiles);
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}× | {:.1}× | {cmed:.2}, {cmax:.2} |",
            m[0],
            m[1],
            m[2],
            m[3],
            m[0] / m[1],
            m[3] / m[1]
        );
    }
    println!("\ntargets: tiered ≥ 20× the interpreter and ≥ 5× the naive C interpreter\n");

    // --- I/O: 10 MB through stdin and stdout ---------------------------------
    let mb = if quick { 2 } else { 10 };
    let input = dir.join("input");
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..mb << 20)
        .map(|_| {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            (rng_state % 255) as u8 + 1 // no zero byte: `,[.[-],]` stops at one
        })
        .collect();
    std::fs::write(&input, &data).unwrap();
    let output = dir.join("output");
    std::io::stdout().flush().unwrap();
    // SAFETY: dup of the process's own descriptors, restored below.
    let (saved_in, saved_out) = unsafe { (libc::dup(0), libc::dup(1)) };
    let fin = std::fs::File::open(&input).unwrap();
    let fout = std::fs::File::create(&output).unwrap();
    // SAFETY: descriptors 0 and 1 now name the files (stdio's buffers are
    // empty: nothing was read, stdout was flushed).
    unsafe {
        libc::dup2(fin.as_raw_fd(), 0);
        libc::dup2(fout.as_raw_fd(), 1);
    }
    let stdio = bf::stdio().unwrap();
    let copy = bf::parse(b",[.[-],]").unwrap();
    let (mut bf_ms, mut c_ms, mut calls_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        rewind_stdin();
        let vm = bf::Bf::new(
            copy.clone(),
            bridge.clone(),
            bf::Mode::Tiered,
            tiered,
            stdio,
            bf::TAPE_LIMIT,
        )
        .unwrap();
        let t = Instant::now();
        vm.run().unwrap();
        flush_stdout();
        bf_ms.push(t.elapsed().as_secs_f64() * 1e3);
        rewind_stdin();
        let t = Instant::now();
        let n = cat();
        c_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(n as usize, data.len());
        rewind_stdin();
        let t = Instant::now();
        let n = cat_calls();
        calls_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(n as usize, data.len());
    }
    // SAFETY: the saved descriptors back in place.
    unsafe {
        libc::dup2(saved_in, 0);
        libc::dup2(saved_out, 1);
    }
    let written = std::fs::metadata(&output).unwrap().len();
    let (b, c, cc) = (median(bf_ms), median(c_ms), median(calls_ms));
    println!(
        "## copying {mb} MB from stdin to stdout (`,[.[-],]`), ms (median of {rounds} rounds)\n"
    );
    println!(
        "| brainfuck, tiered | C, glibc's getchar/putchar_unlocked (inlined) | C calling the same functions (through pointers) | brainfuck / inlined | brainfuck / calls |"
    );
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {b:.1} | {c:.1} | {cc:.1} | {:.2}× | {:.2}× |",
        b / c,
        b / cc
    );
    println!("\ntarget: within 1.5×; {written} bytes written in all");
    let _ = std::fs::remove_dir_all(&dir);
}
