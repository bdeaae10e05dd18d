//! gdb sees generated code through its JIT interface: a backtrace taken by
//! gdb itself inside a host function that C called through an entry thunk
//! names the generated frames and reaches `main` (and without the interface
//! it does not); so does one taken in a C function called by code the
//! brainfuck client compiled with Cranelift; and the list gdb reads, walked
//! here from the
//! `__jit_debug_descriptor` symbol as gdb walks it, holds one object per
//! live region, describing it, and is back to what it was once 100 000
//! regions are dropped, in time linear in their number.
//!
//! The list is walked without the library's lock, so no other test in this
//! file may make code in this process (the gdb test runs its program in a
//! child process).

#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use object::read::elf::{ElfFile64, Sym as _};
use object::{Object, ObjectSection, ObjectSymbol};
use tierbridge::thunks::ExecStrategy;
use tierbridge::tier::{Code, CodeMemory};

/// The built example `name`, next to this test binary
/// (`target/<profile>/examples`).
fn example_named(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples").join(name)
}

/// The gdb target example.
fn example() -> PathBuf {
    example_named("gdb_target")
}

/// `gdb -batch` on the example, stopping where its host function calls
/// `tierbridge_gdb_stop_here`, printing the backtrace; `None` (with the
/// reason printed) where gdb cannot run it here.
fn gdb_backtrace(gdb_interface: bool) -> Option<String> {
    gdb_backtrace_at(
        "tierbridge_gdb_stop_here",
        &[example().to_str().unwrap()],
        gdb_interface,
    )
}

/// `gdb -batch` on the command line `args`, stopping at `breakpoint` and
/// printing the backtrace; `None` (with the reason printed) where gdb
/// cannot run it here.
fn gdb_backtrace_at(breakpoint: &str, args: &[&str], gdb_interface: bool) -> Option<String> {
    let mut cmd = Command::new("gdb");
    cmd.args([
        "-nx",
        "-q",
        "-batch",
        "-iex",
        "set debuginfod enabled off",
        // The breakpoint may be in a shared library not loaded yet.
        "-iex",
        "set breakpoint pending on",
        "-ex",
        &format!("break {breakpoint}"),
        "-ex",
        "run",
        "-ex",
        "bt",
        "--args",
    ])
    .args(args)
    .env_remove("TIERBRIDGE_GDB")
    .env_remove("TIERBRIDGE_PROFILE");
    if gdb_interface {
        cmd.env("TIERBRIDGE_GDB", "1");
    }
    let out = cmd.output().expect("gdb runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("ptrace: Operation not permitted") {
        println!("skipped: this system refuses gdb's ptrace:\n{text}");
        return None;
    }
    Some(text)
}

/// The backtrace's frame lines (`#N ...`), numbered from 0.
fn frames(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with('#')).collect()
}

/// The index of the first frame, at or after `from`, containing `what`.
fn frame(frames: &[&str], from: usize, what: &str) -> Option<usize> {
    (from..frames.len()).find(|&i| frames[i].contains(what))
}

/// Checks that the backtrace in `text` has frames containing each of
/// `expected`, in that order (others may come between), and that every
/// frame has a name: gdb unwound through the generated code by its
/// `.eh_frame` instead of guessing.
fn assert_backtrace(text: &str, expected: &[&str]) {
    let f = frames(text);
    let mut at = 0;
    for what in expected {
        match frame(&f, at, what) {
            Some(i) => at = i + 1,
            None => panic!("no frame `{what}` at or after #{at}:\n{text}"),
        }
    }
    assert!(
        !f.iter().any(|l| l.contains(" in ?? ()")),
        "an unnamed frame:\n{text}"
    );
}

#[test]
fn gdb_names_the_generated_frames_and_unwinds_through_them_to_main() {
    if Command::new("gdb").arg("--version").output().is_err() {
        println!("skipped: gdb is not installed");
        return;
    }
    if !example().exists() {
        // `cargo test` (the README's command, and CI) builds the examples;
        // a test binary run on its own may not have it.
        println!("skipped: {} is not built", example().display());
        return;
    }
    let Some(text) = gdb_backtrace(true) else {
        return;
    };
    if text.contains("no generated code on this machine") {
        println!("skipped: the generated backend is not available:\n{text}");
        return;
    }
    // From the top: the C-ABI function the host called through an exit
    // stub, that stub, the host (Rust, under the dispatcher), the entry
    // thunk C called, qsort, the exit stub that called qsort, the Rust
    // function that made that call, main.
    // The Rust frames between are named so only with debug information (an
    // optimized build inlines some and prints hashed names).
    let expected: &[&str] = if cfg!(debug_assertions) {
        &[
            "tierbridge_gdb_stop_here",
            "in tierbridge exit (registers) (i64,i64,i64,i64,i64,i64,i64,i64)->i64 sysv ()",
            "gdb_target::sort::{closure",
            "tierbridge::host::dispatch_host",
            "in tierbridge entry (ptr,ptr)->i32 sysv ()",
            "qsort",
            "in tierbridge exit (ptr,u64,u64,ptr)->void sysv ()",
            "gdb_target::sort (",
            "gdb_target::main ()",
            " in main ()",
        ]
    } else {
        &[
            "tierbridge_gdb_stop_here",
            "in tierbridge exit (registers) (i64,i64,i64,i64,i64,i64,i64,i64)->i64 sysv ()",
            "tierbridge::host::dispatch_host",
            "in tierbridge entry (ptr,ptr)->i32 sysv ()",
            "qsort",
            "in tierbridge exit (ptr,u64,u64,ptr)->void sysv ()",
            " in main ()",
        ]
    };
    assert_backtrace(&text, expected);

    // Without the interface gdb knows neither the names nor how to unwind
    // through the generated frames (the test's control).
    let Some(text) = gdb_backtrace(false) else {
        return;
    };
    let f = frames(&text);
    assert!(
        frame(&f, 0, "tierbridge_gdb_stop_here").is_some(),
        "gdb stopped: {text}"
    );
    assert!(
        frame(&f, 0, "tierbridge exit").is_none() && frame(&f, 0, "tierbridge entry").is_none(),
        "generated code named without the interface:\n{text}"
    );
    assert!(
        frame(&f, 0, "gdb_target::main ()").is_none(),
        "gdb unwound through unnamed generated code:\n{text}"
    );
}

/// Code a JIT we did not write compiled, published through the tier API:
/// the brainfuck client's Cranelift code calls the C library's
/// `putchar_unlocked` directly; stopped there, gdb names the compiled
/// program's frame and unwinds through it, by Cranelift's own unwind
/// description, to `main` (and without the interface does neither). Not
/// without code generation, where the client compiles nothing.
#[cfg(tierbridge_codegen)]
#[test]
fn gdb_unwinds_through_code_a_cranelift_jit_compiled() {
    if Command::new("gdb").arg("--version").output().is_err() {
        println!("skipped: gdb is not installed");
        return;
    }
    let bf = example_named("brainfuck");
    if !bf.exists() {
        println!("skipped: {} (feature cranelift) is not built", bf.display());
        return;
    }
    let program = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/brainfuck/hello.b");
    let args = [bf.to_str().unwrap(), "--mode", "jit", program];
    let Some(text) = gdb_backtrace_at("putchar_unlocked", &args, true) else {
        return;
    };
    // The Rust frames between are named only with debug information (an
    // optimized build inlines or hides them).
    let expected: &[&str] = if cfg!(debug_assertions) {
        &[
            "putchar_unlocked",
            "in brainfuck program ()",
            "tierbridge::tier::table::TierTable::osr",
            "brainfuck::bf::Bf::run",
            "brainfuck::main ()",
            " in main ()",
        ]
    } else {
        &["putchar_unlocked", "in brainfuck program ()", " in main ()"]
    };
    assert_backtrace(&text, expected);
    let Some(text) = gdb_backtrace_at("putchar_unlocked", &args, false) else {
        return;
    };
    let f = frames(&text);
    assert!(
        frame(&f, 0, "putchar_unlocked").is_some(),
        "gdb stopped: {text}"
    );
    assert!(
        frame(&f, 0, "brainfuck program").is_none() && frame(&f, 0, "brainfuck::main").is_none(),
        "named or unwound without the interface:\n{text}"
    );
}

/// gdb's `struct jit_code_entry`.
#[repr(C)]
struct JitCodeEntry {
    next: *const JitCodeEntry,
    prev: *const JitCodeEntry,
    symfile_addr: *const u8,
    symfile_size: u64,
}

/// gdb's `struct jit_descriptor`.
#[repr(C)]
struct JitDescriptor {
    version: u32,
    action_flag: u32,
    relevant_entry: *const JitCodeEntry,
    first_entry: *const JitCodeEntry,
}

unsafe extern "C" {
    /// The list gdb reads, defined by tierbridge under gdb's name.
    static __jit_debug_descriptor: JitDescriptor;
}

/// The objects in gdb's list, first (newest) to last, as gdb reads them;
/// checks the version and each back link on the way.
fn jit_objects() -> Vec<&'static [u8]> {
    let d = &raw const __jit_debug_descriptor;
    let mut out = Vec::new();
    // SAFETY: nothing else in this process changes the list meanwhile (see
    // the module's docs); its entries and their objects are live while
    // listed, and the caller looks at the objects before dropping code.
    unsafe {
        assert_eq!(std::ptr::read_volatile(&raw const (*d).version), 1);
        let mut prev = std::ptr::null();
        let mut e = std::ptr::read_volatile(&raw const (*d).first_entry);
        while !e.is_null() {
            assert_eq!((*e).prev, prev, "a broken back link");
            out.push(std::slice::from_raw_parts(
                (*e).symfile_addr,
                (*e).symfile_size as usize,
            ));
            prev = e;
            e = (*e).next;
        }
    }
    out
}

/// Bytes the C allocator (which Rust's global allocator is here) has handed
/// out and not got back: glibc's `mallinfo2`, small blocks and mapped ones.
#[cfg(target_env = "gnu")]
fn heap_in_use() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    m.uordblks + m.hblkhd
}

/// The resident set size where glibc's statistics are not available.
#[cfg(not(target_env = "gnu"))]
fn heap_in_use() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Installs `n` small pieces of code into `codes` (emptied, its room
/// reused), all alive at once, then drops them oldest first (the far end of
/// gdb's list, which is newest first); returns the time taken.
fn make_and_drop(mem: &CodeMemory, codes: &mut Vec<Code>, n: usize, base: usize) -> Duration {
    let t = Instant::now();
    codes.extend((0..n).map(|_| mem.install("gdb list test", &[0xc3]).unwrap()));
    let listed = jit_objects().len();
    codes.clear();
    let dt = t.elapsed();
    assert_eq!(listed, base + n);
    assert_eq!(jit_objects().len(), base, "entries left after the drop");
    dt
}

#[test]
fn the_list_holds_one_object_per_live_region_and_empties_in_linear_time() {
    tierbridge::visibility::enable_gdb();
    // Dual mapping places code 16 bytes apart; write-then-protect would
    // take a page (and a mapping) per piece.
    let mem = match CodeMemory::with_strategy(ExecStrategy::DualMapping) {
        Ok(m) => m,
        Err(e) => {
            println!("skipped: no dual mapping here ({e})");
            return;
        }
    };
    let base = jit_objects().len();

    // One region: the newest object describes it.
    let code = mem.install("gdb test: ret", &[0xc3]).unwrap();
    let objects = jit_objects();
    assert_eq!(objects.len(), base + 1);
    let file = ElfFile64::<object::Endianness>::parse(objects[0]).unwrap();
    let text = file.section_by_name(".text").unwrap();
    assert_eq!(text.address(), code.addr() as u64);
    assert_eq!(text.size(), 1);
    let sym = file.symbols().next().unwrap();
    assert_eq!(sym.name().unwrap(), "gdb test: ret");
    assert_eq!(sym.section_index(), Some(text.index()));
    assert_eq!(sym.elf_symbol().st_size(file.endian()), 1);
    drop(code);
    assert_eq!(jit_objects().len(), base);

    // Warm up (the allocator's and the code memory's first growth), then
    // 10 000 and 100 000 regions; the second 100 000 must find the memory
    // the first gave back.
    let mut codes = Vec::with_capacity(100_000);
    make_and_drop(&mem, &mut codes, 100_000, base);
    let small = make_and_drop(&mem, &mut codes, 10_000, base);
    let before = heap_in_use();
    let large = make_and_drop(&mem, &mut codes, 100_000, base);
    let grown = heap_in_use().saturating_sub(before);
    let per = |d: Duration, n: u32| d.as_secs_f64() * 1e9 / f64::from(n);
    println!(
        "10 000 regions: {:.0} ns each; 100 000: {:.0} ns each; heap in use grew {grown} bytes",
        per(small, 10_000),
        per(large, 100_000),
    );
    // Everything comes back: a leak of even the list entries alone (32
    // bytes each) would be 3.2 MB here, of the objects tens of megabytes.
    assert!(grown < 1 << 20, "grew {grown} bytes over 100 000 regions");
    // Linear: about the same time per region at ten times the number. A
    // list searched on removal takes about ten times as long per region at
    // 100 000 (measured: 44 µs and 492 µs per region, against 7.1 and 7.7
    // µs); the bound is loose for a shared machine.
    assert!(
        per(large, 100_000) < 4.0 * per(small, 10_000) + 5_000.0,
        "10 000: {small:?}, 100 000: {large:?}"
    );
}
