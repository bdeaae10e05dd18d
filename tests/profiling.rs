//! Profilers see generated code: the perf map and the jitdump file that
//! `TIERBRIDGE_PROFILE` turns on name every region as it is made (checked
//! against the addresses the program itself knows, and against each
//! other), and `perf` itself, where the kernel lets it record, names the
//! exit stub and entry thunk symbols in its report.

// Generated code is what these tests look at.
#![cfg(all(tierbridge_codegen, target_os = "linux"))]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tierbridge::abi::{CallConv, Signature};
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy, HostError};
use tierbridge::tier::CodeMemory;

/// The code the child installs through the tier API: `mov eax, 42; ret`.
const CODE: [u8; 6] = [0xb8, 0x2a, 0, 0, 0, 0xc3];

/// What the child process does with profiling on: make and use an exit
/// stub, an entry point and a piece of tier code, then print what it knows
/// of their addresses.
fn child() -> ! {
    // The perf map through the bridge's option, jitdump through the
    // environment (the parent sets `TIERBRIDGE_PROFILE=jitdump`).
    let bridge = tierbridge::thunks::Bridge::with_options(tierbridge::thunks::BridgeOptions {
        profiler: Some(tierbridge::visibility::Profiler::PerfMap),
        ..Default::default()
    })
    .unwrap();
    let conv = CallConv::host().unwrap();
    let d = Dispatcher::from_host(
        Arc::new(|c: EntryCall<'_>| -> Result<(), HostError> {
            c.ret[0] = c.args[0] + 1;
            Ok(())
        }),
        FailurePolicy::Report,
    );
    let sig = Signature::parse("(i64)->i64").unwrap();
    let entry = bridge.entry_point(&sig, conv, &d, 0).unwrap();
    let stub = bridge.exit_stub(&sig, conv).unwrap();
    let mut ret = [0u64];
    // SAFETY: the entry point has this signature.
    unsafe { stub.call(entry.code_ptr(), &[41], &mut ret) }.unwrap();
    assert_eq!(ret[0], 42);
    let memory = CodeMemory::of(&bridge).unwrap();
    let code = memory.install("profiling test code", &CODE).unwrap();
    println!("entry {:x}", entry.code_ptr() as usize);
    println!("code {:x} {:x}", code.addr() as usize, code.len());
    std::process::exit(0)
}

/// Runs the child with `TIERBRIDGE_PROFILE=jitdump` (the child asks for the
/// perf map itself), jitdump into `dir`; returns its pid and standard
/// output.
fn run_child(dir: &Path) -> (u32, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "perf_map_and_jitdump_name_every_region",
            "--exact",
            "--nocapture",
        ])
        .env("TIERBRIDGE_PROFILING_CHILD", "1")
        .env("TIERBRIDGE_PROFILE", "jitdump")
        .env("JITDUMPDIR", dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    // The child's pid is in its jitdump file's name.
    let dump = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "dump"))
        .expect("a jitdump file");
    let name = dump.file_stem().unwrap().to_str().unwrap();
    let pid = name.strip_prefix("jit-").unwrap().parse().unwrap();
    (pid, stdout)
}

/// One code-load record of a jitdump file.
#[derive(Debug)]
struct Load {
    addr: u64,
    size: u64,
    name: String,
    code: Vec<u8>,
    /// Whether unwinding data came before it (checked against the code).
    unwinding: bool,
}

/// Checks a jitdump unwinding record's data (`.eh_frame`, then a
/// `.eh_frame_hdr` of `hdr` bytes) for code of `code_size` bytes as `perf
/// inject --jit` lays it out: the code, then the data from the next 8-byte
/// boundary. The header's table and the FDE it names must both point at
/// the code's first byte, and the FDE must cover the code exactly.
fn check_unwinding(data: &[u8], hdr: usize, code_size: u64) {
    let i32_at = |o: usize| i64::from(i32::from_le_bytes(data[o..o + 4].try_into().unwrap()));
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
    assert_eq!(hdr, 20, "a header with one entry");
    let frames = data.len() - hdr;
    // Addresses relative to the .eh_frame's start; the code starts at -code.
    let code = -(code_size.next_multiple_of(8) as i64);
    let h = frames;
    assert_eq!(data[h], 1, "eh_frame_hdr version");
    assert_eq!(
        &data[h + 1..h + 4],
        &[0x1b, 0x03, 0x3b],
        "pointer encodings"
    );
    // pcrel: from the field itself; datarel: from the header's start.
    assert_eq!(i32_at(h + 4) + (h + 4) as i64, 0, "eh_frame_ptr");
    assert_eq!(u32_at(h + 8), 1, "one FDE");
    assert_eq!(i32_at(h + 12) + h as i64, code, "the table's start address");
    let fde = (i32_at(h + 16) + h as i64) as usize;
    // The FDE: length, then its distance back to its CIE.
    let cie = fde + 4 - u32_at(fde + 4) as usize;
    assert_eq!(u32_at(cie + 4), 0, "a CIE");
    assert_eq!(&data[cie + 9..cie + 12], b"zR\0", "augmentation");
    // Code alignment 1, data alignment -8, return address 16, then the
    // augmentation's length and the FDE pointer encoding.
    assert_eq!(&data[cie + 12..cie + 17], &[1, 0x78, 16, 1, 0x1b]);
    assert_eq!(i32_at(fde + 8) + (fde + 8) as i64, code, "the FDE's start");
    assert_eq!(i32_at(fde + 12), code_size as i64, "the FDE's length");
}

/// A reader of perf's jitdump format (header, then records), independent of
/// the writer: checks the header and every record's framing.
fn read_jitdump(bytes: &[u8], pid: u32) -> Vec<Load> {
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    assert_eq!(u32_at(0), 0x4A69_5444, "magic \"JiTD\"");
    assert_eq!(u32_at(4), 1, "version");
    let header = u32_at(8) as usize;
    assert_eq!(header, 40);
    assert_eq!(u32_at(12), 62, "EM_X86_64");
    assert_eq!(u32_at(20), pid);
    let mut at = header;
    let mut loads = Vec::new();
    let mut last_time = 0;
    // An unwinding record's data (and header size), for the next load.
    let mut unwinding: Option<(Vec<u8>, usize)> = None;
    while at < bytes.len() {
        let (id, size, time) = (u32_at(at), u32_at(at + 4) as usize, u64_at(at + 8));
        assert!(
            size >= 16 && at + size <= bytes.len(),
            "record framing at {at}"
        );
        assert!(time >= last_time, "timestamps in order");
        last_time = time;
        let body = at + 16;
        if id == 4 {
            // JIT_CODE_UNWINDING_INFO: sizes of the data and of its
            // header, and how much of it perf should take as mapped.
            let (data, hdr, mapped) = (u64_at(body), u64_at(body + 8), u64_at(body + 16));
            assert_eq!(size as u64, (40 + data).next_multiple_of(8), "record size");
            // Every region keeps room for its tables, so perf may map them.
            assert_eq!(mapped, data, "mapped size");
            assert!(unwinding.is_none(), "two unwinding records for one load");
            let bytes = &bytes[body + 24..body + 24 + data as usize];
            unwinding = Some((bytes.to_vec(), hdr as usize));
            at += size;
            continue;
        }
        assert_eq!(id, 0, "code loads and unwinding data only");
        assert_eq!(u32_at(body), pid);
        let (vma, addr, code_size) = (u64_at(body + 8), u64_at(body + 16), u64_at(body + 24));
        assert_eq!(vma, addr);
        let name_at = body + 40;
        let nul = bytes[name_at..].iter().position(|&b| b == 0).unwrap();
        let name = String::from_utf8(bytes[name_at..name_at + nul].to_vec()).unwrap();
        let code_at = name_at + nul + 1;
        assert_eq!(
            code_at + code_size as usize,
            at + size,
            "{name}: code fills the record"
        );
        let had_unwinding = unwinding.is_some();
        if let Some((data, hdr)) = unwinding.take() {
            check_unwinding(&data, hdr, code_size);
        }
        loads.push(Load {
            addr,
            size: code_size,
            name,
            code: bytes[code_at..at + size].to_vec(),
            unwinding: had_unwinding,
        });
        at += size;
    }
    loads
}

#[test]
fn perf_map_and_jitdump_name_every_region() {
    if std::env::var_os("TIERBRIDGE_PROFILING_CHILD").is_some() {
        child();
    }
    let dir = std::env::temp_dir().join(format!("tierbridge-profiling-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (pid, stdout) = run_child(&dir);
    let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
    let said = |what: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(what))
            .unwrap_or_else(|| panic!("the child says {what:?}: {stdout}"))
            .to_owned()
    };
    let entry = hex(&said("entry "));
    let code: Vec<u64> = said("code ").split(' ').map(hex).collect();

    // The perf map: `start size name` per line.
    let map_path = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    let map = std::fs::read_to_string(&map_path).unwrap();
    std::fs::remove_file(&map_path).unwrap();
    let regions: BTreeSet<(u64, u64, String)> = map
        .lines()
        .map(|l| {
            let mut p = l.splitn(3, ' ');
            (
                hex(p.next().unwrap()),
                hex(p.next().unwrap()),
                p.next().unwrap().to_owned(),
            )
        })
        .collect();
    let named = |n: &'static str| regions.iter().filter(move |r| r.2 == n);
    // The tier code: exactly where the program says it is.
    assert!(
        named("profiling test code").any(|r| r.0 == code[0] && r.1 == code[1]),
        "{map}"
    );
    // The entry point's address is inside the trampolines' region.
    assert!(
        named("tierbridge trampolines").any(|r| r.0 <= entry && entry < r.0 + r.1),
        "{map}"
    );
    assert!(
        named("tierbridge entry (i64)->i64 sysv").count() == 1,
        "{map}"
    );
    assert!(
        regions
            .iter()
            .any(|r| r.2.starts_with("tierbridge exit") && r.2.ends_with("(i64)->i64 sysv")),
        "{map}"
    );

    // The jitdump: the same regions, with their code.
    let dump_path = dir.join(format!("jit-{pid}.dump"));
    let loads = read_jitdump(&std::fs::read(&dump_path).unwrap(), pid);
    std::fs::remove_dir_all(&dir).unwrap();
    let dumped: BTreeSet<(u64, u64, String)> = loads
        .iter()
        .map(|l| (l.addr, l.size, l.name.clone()))
        .collect();
    assert_eq!(dumped, regions, "every code address is a published region");
    let ours = loads
        .iter()
        .find(|l| l.name == "profiling test code")
        .unwrap();
    assert_eq!(ours.code, CODE);
    // Unwinding data for every region made with unwind rows: all but the
    // tier code, which was installed without any.
    for l in &loads {
        assert_eq!(l.unwinding, l.name != "profiling test code", "{}", l.name);
    }
}

/// The examples cargo built with the tests.
fn example(name: &str) -> Option<PathBuf> {
    let deps = std::env::current_exe().unwrap();
    let p = deps.parent()?.parent()?.join("examples").join(name);
    p.exists().then_some(p)
}

/// Records `program args` under perf with `env` and the extra `perf
/// record` arguments `record_args`, in `dir`, as `label`; the recording
/// (after `perf inject --jit` when `jit`), or `None` when the kernel refuses
/// perf events.
fn perf_record(
    dir: &Path,
    label: &str,
    (program, args): (&Path, &[&str]),
    env: &[(&str, &str)],
    record_args: &[&str],
    jit: bool,
) -> Option<PathBuf> {
    let data = dir.join(format!("{label}.data"));
    let mut record = Command::new("perf");
    record.args(["record", "-e", "cpu-clock"]).args(record_args);
    if jit {
        // jitdump records carry CLOCK_MONOTONIC times.
        record.args(["-k", "mono"]);
    }
    let rec = record
        .arg("-o")
        .arg(&data)
        .arg("--")
        .arg(program)
        .args(args)
        .envs(env.iter().copied())
        .env("JITDUMPDIR", dir)
        .current_dir(dir)
        .output()
        .unwrap();
    if !rec.status.success() {
        println!(
            "skipped: the kernel refused perf events: {}",
            String::from_utf8_lossy(&rec.stderr)
        );
        return None;
    }
    if !jit {
        return Some(data);
    }
    let injected = dir.join(format!("{label}.jit.data"));
    let inj = Command::new("perf")
        .args(["inject", "--jit", "-i"])
        .arg(&data)
        .arg("-o")
        .arg(&injected)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(inj.status.success(), "perf inject: {inj:?}");
    Some(injected)
}

/// The text `perf <what> -i data <args>` prints.
fn perf_output(dir: &Path, what: &str, data: &Path, args: &[&str]) -> String {
    let out = Command::new("perf")
        .args([what, "-i"])
        .arg(data)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "perf {what}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Records `profile <mode>` under perf with `env`, in `dir`; the report's
/// text (after `perf inject --jit` when `jit`), or `None` when the kernel
/// refuses perf events.
fn perf_report(
    profile: &Path,
    dir: &Path,
    mode: &str,
    env: &[(&str, &str)],
    jit: bool,
) -> Option<String> {
    let data = perf_record(
        dir,
        mode,
        (profile, &[mode, "5000000"]),
        env,
        &["-F", "20000"],
        jit,
    )?;
    Some(perf_output(
        dir,
        "report",
        &data,
        &["--stdio", "--sort", "sym"],
    ))
}

/// perf, or why this test cannot use it; and the `profile` example.
fn perf_and_profile() -> Option<PathBuf> {
    let Ok(v) = Command::new("perf").arg("--version").output() else {
        println!("skipped: perf is not installed (.ci/run installs linux-perf)");
        return None;
    };
    assert!(v.status.success());
    let profile = example("profile");
    if profile.is_none() {
        println!("skipped: the profile example is not built");
    }
    profile
}

#[test]
fn perf_report_names_the_exit_stub_and_the_entry_thunk() {
    let Some(profile) = perf_and_profile() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("tierbridge-perf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Calls through an exit stub, and calls from native code through an
    // entry point. The perf map serves anonymous memory (write-then-protect;
    // perf takes dual-mapped code for a file), jitdump serves both.
    for (mode, want) in [
        ("exit-unchecked", "tierbridge exit"),
        ("entry", "tierbridge entry"),
    ] {
        for (env, jit) in [
            (
                [
                    ("TIERBRIDGE_PROFILE", "perfmap"),
                    ("TIERBRIDGE_EXEC", "write-then-protect"),
                ],
                false,
            ),
            (
                [
                    ("TIERBRIDGE_PROFILE", "jitdump"),
                    ("TIERBRIDGE_EXEC", "dual-mapping"),
                ],
                true,
            ),
        ] {
            let Some(text) = perf_report(&profile, &dir, mode, &env, jit) else {
                std::fs::remove_dir_all(&dir).unwrap();
                return;
            };
            assert!(text.contains(want), "{mode} {env:?}: {text}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One sample of `perf script`: its frames, innermost first, each as
/// (symbol, object file).
fn samples(script: &str) -> Vec<Vec<(String, String)>> {
    script
        .split("\n\n")
        .map(|sample| {
            sample
                .lines()
                .skip(1)
                .filter_map(|frame| {
                    // `address symbol+offset (object)`
                    let (_, rest) = frame.trim().split_once(' ')?;
                    let (sym, obj) = rest.rsplit_once(" (")?;
                    Some((sym.to_owned(), obj.trim_end_matches(')').to_owned()))
                })
                .collect()
        })
        .collect()
}

#[test]
fn perf_call_graphs_unwind_through_generated_code() {
    let Some(profile) = perf_and_profile() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("tierbridge-unwind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Samples in an entry thunk or trampoline, or in the host function the
    // thunk called, samples in an exit stub, and samples in code a JIT
    // compiled (the brainfuck client's Cranelift code, entered by OSR):
    // perf's unwinder needs the unwinding data of the jitdump records to get
    // from generated code to the function that called into it. Both memory
    // strategies: with dual mapping, regions lie next to each other, and
    // each keeps room after its code where perf places its unwinding data.
    // The calls are a second or less in either build (the examples are
    // built with the tests, optimized or not).
    let debug = cfg!(debug_assertions);
    let entries = if debug { "2000000" } else { "40000000" };
    let exits = if debug { "60000000" } else { "100000000" };
    // Nested loops, 8 × 255⁴ turns of the innermost, in a fraction of a
    // second once compiled.
    let bf_program = dir.join("loops.b");
    std::fs::write(&bf_program, "++++++++[>-[>-[>-[>-[>+<-]<-]<-]<-]<-]").unwrap();
    let brainfuck = example("brainfuck");
    if brainfuck.is_none() {
        println!("not run: the brainfuck example (feature cranelift) is not built");
    }
    let bf_args = ["--mode", "jit", bf_program.to_str().unwrap()];
    let mut cases = vec![
        (
            "entry",
            "dual-mapping",
            (&profile, vec!["entry", entries]),
            "profile::call_loop",
        ),
        (
            "entry",
            "write-then-protect",
            (&profile, vec!["entry", entries]),
            "profile::call_loop",
        ),
        (
            "exit-unchecked",
            "dual-mapping",
            (&profile, vec!["exit-unchecked", exits]),
            "profile::exit_unchecked_loop",
        ),
    ];
    if let Some(bf) = &brainfuck {
        cases.push((
            "brainfuck",
            "dual-mapping",
            (bf, bf_args.to_vec()),
            "brainfuck::main",
        ));
    }
    for (label, strategy, (program, args), caller) in cases {
        let env = [
            ("TIERBRIDGE_PROFILE", "jitdump"),
            ("TIERBRIDGE_EXEC", strategy),
        ];
        let Some(data) = perf_record(
            &dir,
            label,
            (program, &args),
            &env,
            &["-F", "4000", "--call-graph=dwarf"],
            true,
        ) else {
            std::fs::remove_dir_all(&dir).unwrap();
            return;
        };
        let script = perf_output(&dir, "script", &data, &["--no-inline"]);
        // The samples with a frame in generated code (perf inject's ELF
        // files are named `jitted-<pid>-<n>.so`).
        let jitted: Vec<_> = samples(&script)
            .into_iter()
            .filter_map(|frames| {
                let at = frames
                    .iter()
                    .position(|(_, obj)| obj.contains("/jitted-"))?;
                Some((frames, at))
            })
            .collect();
        let what = format!("{label} {strategy}");
        assert!(
            jitted.len() >= 10,
            "{what}: {} samples in generated code\n{script}",
            jitted.len()
        );
        // Every one continues below the generated frame, to the caller.
        let lost: Vec<_> = jitted
            .iter()
            .filter(|(frames, at)| {
                !frames[at + 1..]
                    .iter()
                    .any(|(sym, _)| sym.starts_with(caller))
            })
            .collect();
        println!(
            "{what}: {} samples in generated code, {} of them stop there",
            jitted.len(),
            lost.len()
        );
        assert!(
            lost.len() * 20 <= jitted.len(),
            "{what}: {} of {} samples in generated code stop there: {:?}",
            lost.len(),
            jitted.len(),
            lost.first()
        );
        // In the entry thunk, and through it: samples in the host function
        // it called, where unwinding starts in compiled Rust and continues
        // through the thunk.
        if label == "entry" {
            let through = jitted
                .iter()
                .filter(|(frames, at)| {
                    *at > 0
                        && frames[*at]
                            .0
                            .starts_with("tierbridge entry (i64,i64)->i64 sysv")
                })
                .count();
            assert!(
                through >= 5,
                "{what}: {through} samples above the entry thunk"
            );
        }
        // The compiled program's own frames.
        if label == "brainfuck" {
            assert!(
                jitted
                    .iter()
                    .any(|(f, at)| f[*at].0.starts_with("brainfuck program")),
                "{what}: no sample in the compiled program"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
