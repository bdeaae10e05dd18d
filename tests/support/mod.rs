//! Test support: random signatures and values, C source for them, and the C
//! compiler as an independent judge.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use tierbridge::abi::{CallConv, Scalar, Signature, StructType, Type};

/// Number of random cases: `TIERBRIDGE_CASES` or the default.
pub fn cases(default: usize) -> usize {
    std::env::var("TIERBRIDGE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed: `TIERBRIDGE_SEED` or a fixed one (printed so a failure can be replayed).
pub fn seed() -> u64 {
    let s = std::env::var("TIERBRIDGE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x7157_b41d);
    eprintln!("TIERBRIDGE_SEED={s}");
    s
}

pub fn rand_scalar(rng: &mut fastrand::Rng) -> Scalar {
    Scalar::ALL[rng.usize(..Scalar::ALL.len())]
}

/// A random struct of at most `max_size` bytes (retried until it fits).
pub fn rand_struct(rng: &mut fastrand::Rng, depth: usize, max_size: u32) -> Type {
    loop {
        let packed = rng.u8(..100) < 6;
        let n = rng.usize(1..=4);
        let fields = (0..n)
            .map(|_| {
                let ty = if depth < 2 && rng.u8(..100) < 20 {
                    rand_struct(rng, depth + 1, 24)
                } else {
                    rand_scalar(rng).into()
                };
                let count = (rng.u8(..100) < 20).then(|| rng.u32(1..=5));
                (ty, count)
            })
            .collect();
        if let Ok(st) = StructType::new(fields, packed)
            && st.size() <= max_size
        {
            return st.into();
        }
    }
}

pub fn rand_type(rng: &mut fastrand::Rng, struct_pct: u8) -> Type {
    if rng.u8(..100) < struct_pct {
        rand_struct(rng, 0, 40)
    } else {
        rand_scalar(rng).into()
    }
}

/// A promoted variadic argument type; structs only when `structs`.
pub fn rand_vararg(rng: &mut fastrand::Rng, structs: bool) -> Type {
    const PROMOTED: [Scalar; 5] = [
        Scalar::I32,
        Scalar::U32,
        Scalar::I64,
        Scalar::F64,
        Scalar::Ptr,
    ];
    if structs && rng.u8(..100) < 20 {
        rand_struct(rng, 0, 32)
    } else {
        PROMOTED[rng.usize(..PROMOTED.len())].into()
    }
}

/// A random signature; variadic ones come as call-site signatures.
pub fn rand_sig(
    rng: &mut fastrand::Rng,
    max_params: usize,
    variadic_pct: u8,
    struct_varargs: bool,
) -> Signature {
    let n = rng.usize(0..=max_params);
    let params: Vec<Type> = (0..n).map(|_| rand_type(rng, 25)).collect();
    let ret = match rng.u8(..100) {
        0..10 => None,
        10..40 => Some(rand_struct(rng, 0, 40)),
        _ => Some(rand_scalar(rng).into()),
    };
    if rng.u8(..100) < variadic_pct {
        let extra: Vec<Type> = (0..rng.usize(0..=10))
            .map(|_| rand_vararg(rng, struct_varargs))
            .collect();
        Signature::new_variadic(params, ret)
            .unwrap()
            .with_varargs(&extra)
            .unwrap()
    } else {
        Signature::new(params, ret).unwrap()
    }
}

/// A random signature made for the register stubs (ABI.md, "Exit stubs"):
/// at most four parameters, scalars or structs of at most 16 bytes, so that
/// on SysV they most often all travel in registers, and a result that is most
/// often a struct of at most 16 bytes whose fields are floats half the time.
/// So every register result a register stub hands back shows up: one
/// eightbyte of either class, and two in rax:rdx, xmm0:xmm1 and rax/xmm0 in
/// both orders (`rand_sig`'s wide signatures and mostly mixed structs rarely
/// give those).
pub fn rand_register_sig(rng: &mut fastrand::Rng) -> Signature {
    fn small_struct(rng: &mut fastrand::Rng) -> Type {
        loop {
            let fields = (0..rng.usize(1..=4))
                .map(|_| {
                    let ty = if rng.bool() {
                        [Scalar::F32, Scalar::F64][rng.usize(..2)]
                    } else {
                        rand_scalar(rng)
                    };
                    (Type::from(ty), (rng.u8(..100) < 10).then(|| rng.u32(1..=3)))
                })
                .collect();
            if let Ok(st) = StructType::new(fields, rng.u8(..100) < 5)
                && st.size() <= 16
            {
                return st.into();
            }
        }
    }
    let params = (0..rng.usize(0..=4))
        .map(|_| {
            if rng.u8(..100) < 30 {
                small_struct(rng)
            } else {
                rand_scalar(rng).into()
            }
        })
        .collect();
    let ret = match rng.u8(..100) {
        0..70 => Some(small_struct(rng)),
        70..80 => Some(rand_struct(rng, 0, 40)),
        80..90 => None,
        _ => Some(rand_scalar(rng).into()),
    };
    Signature::new(params, ret).unwrap()
}

/// Random bytes for a value of `ty`: `bool`s are 0 or 1, other bytes anything
/// (0x55/0xAA-heavy so that extension mistakes show).
pub fn rand_value(rng: &mut fastrand::Rng, ty: &Type) -> Vec<u8> {
    let mut b: Vec<u8> = (0..ty.size())
        .map(|_| match rng.u8(..4) {
            0 => 0x55,
            1 => 0xAA,
            _ => rng.u8(..),
        })
        .collect();
    for (at, s) in ty.flatten() {
        if s == Scalar::Bool {
            b[at as usize] = rng.u8(..2);
        }
    }
    b
}

/// The slots a value's bytes occupy (scalars extended as their type says).
pub fn value_slots(ty: &Type, bytes: &[u8]) -> Vec<u64> {
    let mut out = vec![0u64; ty.slots() as usize];
    match ty {
        Type::Scalar(s) => {
            let mut b = [0u8; 8];
            b[..bytes.len()].copy_from_slice(bytes);
            out[0] = s.to_slot(u64::from_le_bytes(b));
        }
        Type::Struct(_) => {
            for (i, c) in bytes.chunks(8).enumerate() {
                let mut b = [0u8; 8];
                b[..c.len()].copy_from_slice(c);
                out[i] = u64::from_le_bytes(b);
            }
        }
    }
    out
}

/// Compares two byte images of `ty` scalar by scalar (padding excluded).
pub fn same_value(ty: &Type, a: &[u8], b: &[u8]) -> Result<(), String> {
    for (at, s) in ty.flatten() {
        let r = at as usize..(at + s.size()) as usize;
        if a[r.clone()] != b[r.clone()] {
            return Err(format!(
                "{s} at offset {at}: expected {:02x?}, got {:02x?}",
                &a[r.clone()],
                &b[r]
            ));
        }
    }
    Ok(())
}

pub fn slots_bytes(slots: &[u64]) -> Vec<u8> {
    slots.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// C source writer: typedefs for struct types, byte-literal initialisation.
#[derive(Default)]
pub struct CWriter {
    pub head: String,
    pub body: String,
    names: HashMap<Type, String>,
}

impl CWriter {
    pub fn new() -> CWriter {
        let mut w = CWriter::default();
        w.head.push_str("#include <stdint.h>\n#include <stdbool.h>\n#include <string.h>\n#include <stdarg.h>\n#include <stddef.h>\n");
        w
    }

    pub fn ctype(&mut self, ty: &Type) -> String {
        match ty {
            Type::Scalar(s) => match s {
                Scalar::I8 => "int8_t",
                Scalar::U8 => "uint8_t",
                Scalar::I16 => "int16_t",
                Scalar::U16 => "uint16_t",
                Scalar::I32 => "int32_t",
                Scalar::U32 => "uint32_t",
                Scalar::I64 => "int64_t",
                Scalar::U64 => "uint64_t",
                Scalar::Bool => "bool",
                Scalar::F32 => "float",
                Scalar::F64 => "double",
                Scalar::Ptr => "void *",
            }
            .to_owned(),
            Type::Struct(st) => {
                if let Some(n) = self.names.get(ty) {
                    return n.clone();
                }
                let mut def = String::from("typedef struct ");
                if st.is_packed() {
                    def.push_str("__attribute__((packed)) ");
                }
                def.push_str("{ ");
                for (i, f) in st.fields().iter().enumerate() {
                    let t = self.ctype(&f.ty);
                    match f.count {
                        Some(n) => write!(def, "{t} f{i}[{n}]; ").unwrap(),
                        None => write!(def, "{t} f{i}; ").unwrap(),
                    }
                }
                let name = format!("S{}", self.names.len());
                writeln!(def, "}} {name};").unwrap();
                self.head.push_str(&def);
                self.names.insert(ty.clone(), name.clone());
                name
            }
        }
    }

    pub fn ret_ctype(&mut self, ty: Option<&Type>) -> String {
        ty.map_or("void".into(), |t| self.ctype(t))
    }
}

/// A C string literal holding `bytes`.
pub fn c_bytes(bytes: &[u8]) -> String {
    let mut s = String::from("\"");
    for b in bytes {
        write!(s, "\\x{b:02x}").unwrap();
    }
    s.push('"');
    s
}

/// The function attribute for a convention.
pub fn c_attr(conv: CallConv) -> &'static str {
    match conv {
        CallConv::SysV => "__attribute__((sysv_abi))",
        CallConv::Win64 => "__attribute__((ms_abi))",
    }
}

fn compiler() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn run_cc(args: &[&str], src: &Path) {
    let out = Command::new(compiler())
        .args(args)
        .arg(src)
        .output()
        .expect("running the C compiler (cc)");
    assert!(
        out.status.success(),
        "cc failed on {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file stem no other compilation shares: tests of one binary run in
/// parallel and several may build the same fixture, and test binaries run as
/// separate processes sharing the tmp dir.
fn unique_stem(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{name}-{}-{k}", std::process::id())
}

/// Compiles C source into `lib{name}.so` in the test tmp dir. The source and
/// the library are written under names no other compilation uses and the
/// library is then renamed into place (atomically), so a test opening the
/// same fixture meanwhile sees the old file or the new one, never a file
/// the compiler is still writing.
pub fn compile_so(name: &str, src: &str) -> PathBuf {
    let dir = out_dir();
    let stem = unique_stem(name);
    let c = dir.join(format!("{stem}.c"));
    let tmp = dir.join(format!("{stem}.so.tmp"));
    let so = dir.join(format!("lib{name}.so"));
    std::fs::write(&c, src).unwrap();
    run_cc(
        &["-O1", "-shared", "-fPIC", "-w", "-o", tmp.to_str().unwrap()],
        &c,
    );
    std::fs::remove_file(&c).unwrap();
    std::fs::rename(&tmp, &so).unwrap();
    so
}

/// Compiles and runs a C program, returning its standard output.
pub fn run_c_program(name: &str, src: &str) -> String {
    let dir = out_dir();
    let stem = unique_stem(name);
    let c = dir.join(format!("{stem}.c"));
    let exe = dir.join(&stem);
    std::fs::write(&c, src).unwrap();
    run_cc(&["-O1", "-w", "-o", exe.to_str().unwrap()], &c);
    let out = Command::new(&exe).output().unwrap();
    std::fs::remove_file(&c).unwrap();
    std::fs::remove_file(&exe).unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Builds `shared/conformance/libsample.so` (into the test tmp dir) and returns
/// its path and the path of `sample.json`.
pub fn sample_library() -> (PathBuf, PathBuf) {
    static BUILT: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_sample).clone()
}

fn build_sample() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance");
    // One file per test binary: several binaries may build it at the same time.
    let exe = std::env::current_exe().unwrap();
    let so = out_dir().join(format!(
        "libsample-{}.so",
        exe.file_name().unwrap().to_string_lossy()
    ));
    let out = Command::new(compiler())
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(dir.join("sample.c"))
        .arg("-pthread")
        .output()
        .expect("running the C compiler (cc)");
    assert!(
        out.status.success(),
        "building libsample.so: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (so, dir.join("sample.json"))
}

/// A loaded test library (the crate's own symbol lookup, unwrapped).
pub struct Lib(pub tierbridge::native::NativeLibrary);

impl Lib {
    pub fn open(path: &Path) -> Lib {
        // SAFETY: test fixtures built above; their initializers are trivial.
        Lib(unsafe { tierbridge::native::NativeLibrary::open(path.to_str().unwrap()) }.unwrap())
    }

    pub fn addr(&self, name: &str) -> *const std::ffi::c_void {
        self.0.symbol(name).unwrap()
    }
}

/// Every bridge to test: libffi, and the generated backend on each
/// executable-memory strategy where this build generates code (x86-64
/// without `--cfg tierbridge_no_codegen`; elsewhere libffi alone).
pub fn all_bridges() -> Vec<(String, tierbridge::thunks::Bridge)> {
    use tierbridge::thunks::Bridge;
    #[cfg(tierbridge_codegen)]
    use tierbridge::thunks::{BackendKind, BridgeOptions, ExecStrategy};
    #[cfg_attr(not(tierbridge_codegen), expect(unused_mut))]
    let mut v = vec![("libffi".to_owned(), Bridge::libffi())];
    #[cfg(tierbridge_codegen)]
    for exec in [ExecStrategy::DualMapping, ExecStrategy::WriteThenProtect] {
        let b = Bridge::with_options(BridgeOptions {
            backend: BackendKind::Generated,
            exec: Some(exec),
            ..BridgeOptions::default()
        })
        .expect("the generated backend works on this machine");
        assert_eq!(b.kind(), BackendKind::Generated);
        v.push((format!("generated/{exec}"), b));
    }
    v
}

/// What asking for the generated backend gives: the generated backend with
/// the default (probed) memory strategy where this build generates code;
/// in a build without code generation, the libffi bridge it falls back to,
/// which says why (and tier tables on it interpret).
pub fn generated() -> tierbridge::thunks::Bridge {
    use tierbridge::thunks::{BackendKind, Bridge};
    let b = Bridge::new(BackendKind::Generated).unwrap();
    if cfg!(tierbridge_codegen) {
        assert_eq!(
            b.kind(),
            BackendKind::Generated,
            "{:?}",
            b.fallback_reason()
        );
    } else {
        assert_eq!(b.kind(), BackendKind::Libffi);
        assert!(b.fallback_reason().is_some());
    }
    b
}

/// Lines of /proc/self/maps whose permissions are both writable and executable.
pub fn wx_mappings() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|p| p.contains('w') && p.contains('x'))
        })
        .map(str::to_owned)
        .collect()
}
