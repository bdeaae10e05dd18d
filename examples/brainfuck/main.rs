//! Brainfuck, interpreted and compiled with Cranelift, tiered through
//! tierbridge (see `bf.rs`).
//!
//! `cargo run --release --features cranelift --example brainfuck -- [--mode interp|tiered|jit] [--stats] PROGRAM.b`
//!
//! Reads the program's input from stdin and writes its output to stdout.
//! Exit status: 0; 2 for unbalanced brackets (nothing runs); 3 when the
//! pointer moves left of cell 0; 4 when the tape would grow past its limit
//! (2^28 cells); 1 for a bad command line.

mod bf;

use std::sync::Arc;

use tierbridge::abi::{CallConv, Signature};
use tierbridge::native::NativeLibrary;
use tierbridge::thunks::{BackendKind, Bridge};
use tierbridge::tier::TierConfig;

fn usage() -> ! {
    eprintln!("usage: brainfuck [--mode interp|tiered|jit] [--stats] PROGRAM.b");
    std::process::exit(1)
}

/// Flushes the C library's output (what `putchar_unlocked` buffered).
fn flush(bridge: &Bridge) {
    let flush = NativeLibrary::this_process()
        .and_then(|l| l.symbol("fflush"))
        .expect("fflush");
    let stub = bridge
        .exit_stub(
            &Signature::parse("(ptr)->i32").unwrap(),
            CallConv::host().unwrap(),
        )
        .expect("a stub");
    let mut r = [0u64];
    // SAFETY: fflush(NULL) flushes every output stream.
    let _ = unsafe { stub.call(flush, &[0], &mut r) };
}

fn main() {
    let mut mode = bf::Mode::Tiered;
    let mut stats = false;
    let mut path = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mode" => {
                mode = args
                    .next()
                    .and_then(|m| m.parse().map_err(|e| eprintln!("{e}")).ok())
                    .unwrap_or_else(|| usage())
            }
            "--stats" => stats = true,
            _ if a.starts_with("--") => usage(),
            _ if path.is_none() => path = Some(a),
            _ => usage(),
        }
    }
    let Some(path) = path else { usage() };
    let src = std::fs::read(&path).unwrap_or_else(|e| {
        eprintln!("brainfuck: {path}: {e}");
        std::process::exit(1)
    });
    let program = match bf::parse(&src) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("brainfuck: {path}: {e}");
            std::process::exit(e.exit_code())
        }
    };
    let bridge = Arc::new(Bridge::new(BackendKind::Generated).expect("a bridge"));
    let io = bf::stdio().expect("putchar_unlocked and getchar_unlocked");
    let config = TierConfig {
        call_threshold: u32::MAX,
        loop_threshold: if mode == bf::Mode::Jit { 1 } else { 1000 },
        ..TierConfig::default()
    };
    let vm = bf::Bf::new(program, bridge.clone(), mode, config, io, bf::TAPE_LIMIT).unwrap_or_else(
        |e| {
            eprintln!("brainfuck: {e}");
            std::process::exit(e.exit_code())
        },
    );
    let result = vm.run();
    flush(&bridge);
    if stats {
        let s = vm.stats();
        let ms: f64 = s.compile_ms.iter().fold(0.0, |a, b| a + b);
        eprintln!(
            "stats: mode={mode} compiled={} osr={} deopts={} compile_ms={ms:.3}",
            s.compiled, s.osr, s.deopts
        );
    }
    if let Err(e) = result {
        eprintln!("brainfuck: {path}: {e}");
        std::process::exit(e.exit_code());
    }
}
