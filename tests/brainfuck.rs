//! The brainfuck client (`examples/brainfuck`): a second client of the tier
//! API sharing nothing with the reference interpreter — a tape machine, a
//! Cranelift JIT. Every mode (interpreted, tiered, tiered at a threshold of
//! 1, whole-program JIT) must give byte-identical output and the same
//! outcome as a small reference interpreter written here, on programs
//! written here and on random terminating programs with random input. The
//! command line's exit statuses and messages, and a run under Linux's
//! memory-deny-write-execute, are checked on the built example.
//!
//! Cranelift compiles for any host, but a tier table gets code memory only
//! from a bridge on the generated backend: in a build without code
//! generation (`--cfg tierbridge_no_codegen`) every mode interprets, the
//! outputs must still agree and nothing may be compiled, and the run under
//! memory-deny-write-execute (whose subject is the JIT's code) is left out.
#![cfg(feature = "cranelift")]

#[path = "../examples/brainfuck/bf.rs"]
mod bf;

mod support;

use std::cell::RefCell;
use std::ffi::c_void;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use tierbridge::tier::TierConfig;

/// Whether this build generates code: the JIT modes compile, or interpret
/// (without it, `--cfg tierbridge_no_codegen`).
const CODEGEN: bool = cfg!(tierbridge_codegen);

thread_local! {
    static INPUT: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
    static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

extern "C" fn put(c: i32) -> i32 {
    OUTPUT.with(|o| o.borrow_mut().push(c as u8));
    c
}

extern "C" fn get() -> i32 {
    INPUT.with(|i| {
        let mut i = i.borrow_mut();
        let (buf, at) = &mut *i;
        match buf.get(*at) {
            Some(&c) => {
                *at += 1;
                i32::from(c)
            }
            None => -1,
        }
    })
}

fn io() -> bf::Io {
    bf::Io {
        put: put as *const c_void,
        get: get as *const c_void,
    }
}

/// The reference: the textbook interpreter, byte by byte, no folding.
fn reference(src: &[u8], input: &[u8], limit: usize) -> (Vec<u8>, Result<(), i32>) {
    let code: Vec<u8> = src.to_vec();
    let mut jump = vec![0usize; code.len()];
    let mut stack = Vec::new();
    for (i, &c) in code.iter().enumerate() {
        if c == b'[' {
            stack.push(i);
        } else if c == b']' {
            let Some(o) = stack.pop() else {
                return (Vec::new(), Err(2));
            };
            jump[o] = i;
            jump[i] = o;
        }
    }
    if !stack.is_empty() {
        return (Vec::new(), Err(2));
    }
    let (mut tape, mut p, mut pc, mut out, mut inp) = (vec![0u8; 1], 0usize, 0, Vec::new(), 0);
    while pc < code.len() {
        match code[pc] {
            b'+' => tape[p] = tape[p].wrapping_add(1),
            b'-' => tape[p] = tape[p].wrapping_sub(1),
            b'>' => {
                p += 1;
                if p >= limit {
                    return (out, Err(4));
                }
                if p >= tape.len() {
                    tape.push(0);
                }
            }
            b'<' => {
                if p == 0 {
                    return (out, Err(3));
                }
                p -= 1;
            }
            b'.' => out.push(tape[p]),
            b',' => {
                if let Some(&c) = input.get(inp) {
                    tape[p] = c;
                    inp += 1;
                }
            }
            b'[' if tape[p] == 0 => pc = jump[pc],
            b']' if tape[p] != 0 => pc = jump[pc],
            _ => {}
        }
        pc += 1;
    }
    (out, Ok(()))
}

fn modes() -> Vec<(&'static str, bf::Mode, TierConfig)> {
    let hot = |n| TierConfig {
        call_threshold: u32::MAX,
        loop_threshold: n,
        ..TierConfig::default()
    };
    vec![
        ("interp", bf::Mode::Interp, TierConfig::interpreter_only()),
        ("tiered", bf::Mode::Tiered, hot(1000)),
        ("tiered, threshold 1", bf::Mode::Tiered, hot(1)),
        ("jit", bf::Mode::Jit, hot(1)),
    ]
}

/// Runs `src` in `mode` on `input`: output, outcome (exit status on error),
/// and the tiers' stats.
fn run(
    src: &[u8],
    input: &[u8],
    mode: bf::Mode,
    config: TierConfig,
    limit: usize,
) -> (Vec<u8>, Result<(), i32>, bf::Stats) {
    INPUT.with(|i| *i.borrow_mut() = (input.to_vec(), 0));
    OUTPUT.with(|o| o.borrow_mut().clear());
    let program = match bf::parse(src) {
        Ok(p) => p,
        Err(e) => return (Vec::new(), Err(e.exit_code()), bf::Stats::default()),
    };
    let vm = bf::Bf::new(
        program,
        Arc::new(support::generated()),
        mode,
        config,
        io(),
        limit,
    )
    .unwrap();
    let r = vm.run().map_err(|e| e.exit_code());
    (OUTPUT.with(|o| o.borrow().clone()), r, vm.stats())
}

/// At most 200 bytes of a program, for messages.
fn shown(src: &[u8]) -> String {
    String::from_utf8_lossy(&src[..src.len().min(200)]).into_owned()
}

/// Checks every mode against the reference; the stats of each mode.
fn check(src: &[u8], input: &[u8], limit: usize) -> Vec<bf::Stats> {
    let (want_out, want) = reference(src, input, limit);
    modes()
        .into_iter()
        .map(|(name, mode, config)| {
            let (out, r, stats) = run(src, input, mode, config, limit);
            assert_eq!(r, want, "{name}: outcome of {:?}", shown(src));
            assert!(
                out == want_out,
                "{name}: output {:?}, want {:?}, for {:?}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&want_out),
                shown(src)
            );
            stats
        })
        .collect()
}

const HELLO: &str = "++++++++[>++++[>++>+++>+++>+<<<<-]>+>+>->>+[<]<-]>>.>---.+++++++..+++.>>.<-.<.+++.------.--------.>>+.>++.";

#[test]
fn written_programs_agree_in_every_mode() {
    check(HELLO.as_bytes(), b"", bf::TAPE_LIMIT);
    assert_eq!(reference(HELLO.as_bytes(), b"", 1000).0, b"Hello World!\n");
    // Echo to end of input; `,` at the end leaves the cell as it was.
    check(b",[.[-],]", b"echo \x01\xff bytes", bf::TAPE_LIMIT);
    check(b"+++++,.", b"", bf::TAPE_LIMIT);
    // Nested loops: 6 * 7 * 5 = 210 printed as one byte.
    check(b"++++++[>+++++++[>+++++<-]<-]>>.", b"", bf::TAPE_LIMIT);
    // Everything that is not a command is ignored, invalid UTF-8 included.
    check(b"\xff\xfe+a+b\n+c.\x80", b"", bf::TAPE_LIMIT);
}

#[test]
fn far_right_moves_in_compiled_loops_grow_the_tape_through_deoptimization() {
    // A counter of 250 carried 200 cells right each iteration: the pointer
    // ends near cell 50 000, far past the first tape (64 cells); compiled
    // code hands the frame back at each move off the tape's end, and the
    // interpreter grows the tape and goes on.
    let stride = 200;
    let src = format!(
        "{}[[->{}+<{}]{}-]{}.",
        "+".repeat(250),
        ">".repeat(stride - 1),
        "<".repeat(stride - 1),
        ">".repeat(stride),
        "+".repeat(65)
    );
    let stats = check(src.as_bytes(), b"", bf::TAPE_LIMIT);
    for (s, (name, ..)) in stats.iter().zip(modes()) {
        if !CODEGEN {
            assert_eq!((s.compiled, s.osr, s.deopts), (0, 0, 0), "{name}: {s:?}");
        } else if name == "tiered, threshold 1" || name == "jit" {
            assert!(
                s.deopts >= 5 && s.osr >= 5 && s.compiled == 1,
                "{name}: {s:?}"
            );
        }
    }
}

#[test]
fn bad_programs_and_bad_runs_are_errors_with_their_statuses() {
    for (src, status) in [
        (&b"+[>+"[..], 2),
        (&b"+]"[..], 2),
        (&b"+.<"[..], 3),
        (&b"++[>++<-]>.<<"[..], 3),
    ] {
        check(src, b"", bf::TAPE_LIMIT);
        let (_, r) = reference(src, b"", bf::TAPE_LIMIT);
        assert_eq!(r, Err(status), "{:?}", String::from_utf8_lossy(src));
    }
    // A move left of cell 0 (or past the limit) inside a run of moves that
    // comes back is still an error: runs of opposite moves do not fold.
    for (src, limit) in [(&b"<>+."[..], 1 << 20), (&b"+>><<<>>."[..], 1 << 20)] {
        check(src, b"", limit);
        assert_eq!(reference(src, b"", limit).1, Err(3));
    }
    let to_the_end = format!("{}><.", ">".repeat(99));
    check(to_the_end.as_bytes(), b"", 100);
    assert_eq!(reference(to_the_end.as_bytes(), b"", 100).1, Err(4));
    // Output before the error is kept.
    let (out, r, _) = run(b"+++.<", b"", bf::Mode::Jit, TierConfig::eager(), 1 << 20);
    assert_eq!((out, r), (vec![3], Err(3)));
    // Growing past the limit (a small one here; the command line's is 2^28).
    check(b"+[>+]", b"", 10_000);
    check(format!("+[{}+]", ">".repeat(97)).as_bytes(), b"", 5_000);
    // The unbalanced bracket's byte offset.
    assert_eq!(
        bf::parse(b"ab[[+]").unwrap_err(),
        bf::BfError::Unbalanced {
            offset: 2,
            what: "`[` without a matching `]`"
        }
    );
}

#[test]
fn deep_nesting_and_large_programs_are_handled() {
    let deep = format!("{}{}+.", "[".repeat(100_000), "]".repeat(100_000));
    check(deep.as_bytes(), b"", bf::TAPE_LIMIT);
    let mut big = vec![b' '; 4 << 20];
    big.extend_from_slice(HELLO.as_bytes());
    let (out, r, _) = run(
        &big,
        b"",
        bf::Mode::Tiered,
        TierConfig::eager(),
        bf::TAPE_LIMIT,
    );
    assert_eq!((out.as_slice(), r), (&b"Hello World!\n"[..], Ok(())));
}

/// A random terminating program: `+`/`-` runs, moves that never go left of
/// `floor + 1` (cell 0 at the top), output, input, and counted loops — a
/// counter cell set to 1..5, a body that stays right of it, `-]` — nested up
/// to three deep.
fn random_program(rng: &mut fastrand::Rng, depth: u32, at: &mut i64, floor: i64, out: &mut String) {
    for _ in 0..rng.usize(1..8) {
        match rng.u8(..10) {
            0..=2 => out.push_str(&"+".repeat(rng.usize(1..20))),
            3 => out.push_str(&"-".repeat(rng.usize(1..20))),
            4 => {
                let n = rng.i64(1..40);
                out.push_str(&">".repeat(n as usize));
                *at += n;
            }
            5 if *at - 1 > floor => {
                let n = rng.i64(1..=(*at - 1 - floor).min(40));
                out.push_str(&"<".repeat(n as usize));
                *at -= n;
            }
            6 => out.push('.'),
            7 => out.push(','),
            8 | 9 if depth < 3 => {
                out.push_str("[-]");
                out.push_str(&"+".repeat(rng.usize(1..6)));
                out.push_str("[>");
                let counter = *at;
                *at += 1;
                random_program(rng, depth + 1, at, counter, out);
                // Back to the counter, which the body never reached.
                out.push_str(&"<".repeat((*at - counter) as usize));
                *at = counter;
                out.push_str("-]");
            }
            _ => out.push('+'),
        }
    }
}

#[test]
fn random_programs_agree_in_every_mode() {
    let seed = support::seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut compiled = 0;
    for _ in 0..support::cases(150) {
        let mut src = String::new();
        let mut at = 0;
        random_program(&mut rng, 0, &mut at, -1, &mut src);
        src.push('.');
        let input: Vec<u8> = (0..rng.usize(0..16)).map(|_| rng.u8(..)).collect();
        let stats = check(src.as_bytes(), &input, bf::TAPE_LIMIT);
        compiled += stats[3].compiled;
    }
    if CODEGEN {
        assert!(compiled > 100, "the JIT compiled {compiled} programs");
    } else {
        assert_eq!(compiled, 0, "no code generation");
    }
}

/// The built example, next to this test binary (`target/<profile>/examples`).
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples").join("brainfuck")
}

fn cli(args: &[&str], program: &[u8], input: &[u8]) -> (i32, Vec<u8>, String) {
    let dir = std::env::temp_dir().join(format!("tierbridge-bf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("p{}.b", fastrand::u64(..)));
    std::fs::write(&path, program).unwrap();
    let mut cmd = Command::new(example());
    cmd.args(args)
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("the brainfuck example is built by cargo test");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&path);
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_command_line_gives_the_statuses_and_the_stats_line() {
    if !example().exists() {
        // `cargo test --all-features` (the README's command, and CI) builds
        // the examples; a test binary run on its own may not have it.
        eprintln!("skipped: {} is not built", example().display());
        return;
    }
    for mode in ["interp", "tiered", "jit"] {
        let (st, out, err) = cli(&["--mode", mode, "--stats"], b",[.[-],]", b"some input\n");
        assert_eq!(
            (st, out.as_slice()),
            (0, &b"some input\n"[..]),
            "{mode}: {err}"
        );
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.starts_with(&format!("stats: mode={mode} compiled="))
                && last.contains(" osr=")
                && last.contains(" deopts=")
                && last.contains(" compile_ms="),
            "{mode}: {err}"
        );
    }
    let (st, out, err) = cli(&[], b"+[>+", b"");
    assert!(
        st == 2 && out.is_empty() && err.contains("byte 1"),
        "{st} {err}"
    );
    let (st, out, err) = cli(&["--mode", "jit"], b"+++.<<", b"");
    assert!(
        st == 3 && out == [3] && err.contains("byte 4"),
        "{st} {out:?} {err}"
    );
    // Past 2^28 cells: strides of 100 000 cells, a few thousand iterations.
    let far = format!("+[{}+]", ">".repeat(100_000));
    let (st, _, err) = cli(&["--mode", "jit"], far.as_bytes(), b"");
    assert!(st == 4 && err.contains("268435456"), "{st} {err}");
    let (st, _, _) = cli(&["--mode", "fast"], b"", b"");
    assert_eq!(st, 1);
}

/// Linux's memory-deny-write-execute (PR_SET_MDWE): no page that was ever
/// writable may become executable. Cranelift's own `mprotect` provider fails
/// there; code placed through tierbridge's executable memory (dual mapping)
/// runs. Done in a child process (the setting cannot be undone). Needs
/// generated code: without it there is no JIT to run.
#[test]
#[cfg(tierbridge_codegen)]
fn the_jit_runs_under_memory_deny_write_execute() {
    const PR_SET_MDWE: i32 = 65;
    const PR_MDWE_REFUSE_EXEC_GAIN: u64 = 1;
    if std::env::var_os("TIERBRIDGE_MDWE_CHILD").is_some() {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0u64, 0u64, 0u64) };
        if r != 0 {
            println!("MDWE-UNSUPPORTED {}", std::io::Error::last_os_error());
            return;
        }
        // A page made writable can no longer be made executable...
        let page = unsafe {
            // SAFETY: a fresh anonymous mapping, checked below.
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED);
        // SAFETY: the mapping made above.
        let refused = unsafe { libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC) } != 0;
        assert!(refused, "MDWE is on");
        // ...yet the JIT runs, tiered and whole-program.
        for (name, mode, config) in modes() {
            let (out, r, s) = run(HELLO.as_bytes(), b"", mode, config, bf::TAPE_LIMIT);
            assert_eq!(
                (out.as_slice(), r),
                (&b"Hello World!\n"[..], Ok(())),
                "{name}"
            );
            if name == "jit" {
                assert_eq!(s.compiled, 1);
            }
        }
        println!("MDWE-OK");
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_jit_runs_under_memory_deny_write_execute",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("TIERBRIDGE_MDWE_CHILD", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("MDWE-UNSUPPORTED") {
        eprintln!("skipped: this kernel has no PR_SET_MDWE ({text})");
        return;
    }
    assert!(
        out.status.success() && text.contains("MDWE-OK"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
