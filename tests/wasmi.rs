//! The wasmi embedding (feature `wasmi`) on every backend: imports and exports
//! against C fixtures compiled by the C compiler, reentrancy, traps inside
//! callbacks, pointer translation at the edges of linear memory, link errors.
#![cfg(feature = "wasmi")]

mod support;

use std::fmt::Write as _;
use std::sync::Arc;

use tierbridge::abi::{CallConv, Signature};
use tierbridge::host::{EntryError, FailurePolicy, take_entry_error};
use tierbridge::thunks::Bridge;
use tierbridge::wasm::{NativeFn, WasmBridge, WasmError, with_store};
use wasmi::{Engine, Linker, Module, Store, Val};

/// wasm type, C type, byte size.
const KINDS: [(&str, &str, &str, usize); 4] = [
    ("i32", "i32", "int32_t", 4),
    ("i64", "i64", "int64_t", 8),
    ("f32", "f32", "float", 4),
    ("f64", "f64", "double", 8),
];

fn wat_const(kind: usize, bits: u64) -> String {
    match kind {
        0 => format!("(i32.const {})", bits as u32 as i32),
        1 => format!("(i64.const {})", bits as i64),
        2 => format!("(f32.reinterpret_i32 (i32.const {}))", bits as u32 as i32),
        _ => format!("(f64.reinterpret_i64 (i64.const {}))", bits as i64),
    }
}

fn c_const(kind: usize, bits: u64) -> String {
    match kind {
        0 => format!("(int32_t){}", bits as u32 as i32),
        1 => format!("(int64_t){}LL", bits as i64),
        2 => format!("u2f(0x{:08x}u)", bits as u32),
        _ => format!("u2d(0x{bits:016x}ull)"),
    }
}

fn bits_of(v: &Val) -> u64 {
    match v {
        Val::I32(x) => *x as u32 as u64,
        Val::I64(x) => *x as u64,
        Val::F32(x) => u64::from(x.to_bits()),
        Val::F64(x) => x.to_bits(),
        other => panic!("{other:?}"),
    }
}

const C_PRELUDE: &str = "#include <stdint.h>\n#include <string.h>\n\
    static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }\n\
    static double u2d(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }\n\
    unsigned char rec[4096];\n";

struct Case {
    params: Vec<usize>,
    ret: Option<usize>,
    args: Vec<u64>,
    ret_bits: u64,
}

fn cases(rng: &mut fastrand::Rng, n: usize) -> Vec<Case> {
    (0..n)
        .map(|k| {
            // Always some with more than 6 integer and more than 8 float parameters.
            let count = if k < 4 { 20 } else { rng.usize(0..=20) };
            let params: Vec<usize> = (0..count)
                .map(|i| if k < 4 { (i + k) % 4 } else { rng.usize(0..4) })
                .collect();
            let ret = (rng.u8(..4) > 0).then(|| rng.usize(0..4));
            let args = params
                .iter()
                .map(|p| {
                    if *p % 2 == 0 {
                        u64::from(rng.u32(..))
                    } else {
                        rng.u64(..)
                    }
                })
                .collect();
            let ret_bits = match ret {
                Some(0) | Some(2) => u64::from(rng.u32(..)),
                _ => rng.u64(..),
            };
            Case {
                params,
                ret,
                args,
                ret_bits,
            }
        })
        .collect()
}

fn sig_of(c: &Case) -> Signature {
    let p: Vec<&str> = c.params.iter().map(|k| KINDS[*k].1).collect();
    format!(
        "({})->{}",
        p.join(","),
        c.ret.map_or("void", |k| KINDS[k].1)
    )
    .parse()
    .unwrap()
}

fn wasm_ty(c: &Case) -> String {
    let p: Vec<&str> = c.params.iter().map(|k| KINDS[*k].0).collect();
    let r = c
        .ret
        .map(|k| format!(" (result {})", KINDS[k].0))
        .unwrap_or_default();
    format!("(param {}){r}", p.join(" "))
}

/// Slot-normalised expected value of a C/wasm value of kind k with these bits.
fn norm(kind: usize, bits: u64) -> u64 {
    if kind.is_multiple_of(2) {
        bits as u32 as u64
    } else {
        bits
    }
}

#[test]
fn imports_of_every_wasm_type_deliver_exactly_what_wasm_passed() {
    let mut rng = fastrand::Rng::with_seed(support::seed() ^ 0x36);
    let cases = cases(&mut rng, 24);
    let mut c = String::from(C_PRELUDE);
    c.push_str("void *rec_area(void) { return rec; }\n");
    let mut wat = String::from("(module\n");
    for (k, case) in cases.iter().enumerate() {
        let params: Vec<String> = case
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{} a{i}", KINDS[*p].2))
            .collect();
        let rt = case.ret.map_or("void", |r| KINDS[r].2);
        writeln!(
            c,
            "{rt} imp_{k}({}) {{",
            if params.is_empty() {
                "void".into()
            } else {
                params.join(", ")
            }
        )
        .unwrap();
        for i in 0..case.params.len() {
            writeln!(c, "  memcpy(rec + {}, &a{i}, sizeof a{i});", 8 * i).unwrap();
        }
        if let Some(r) = case.ret {
            writeln!(c, "  return {};", c_const(r, case.ret_bits)).unwrap();
        }
        c.push_str("}\n");
        writeln!(
            wat,
            "  (import \"c\" \"imp_{k}\" (func $imp_{k} {}))",
            wasm_ty(case)
        )
        .unwrap();
    }
    for (k, case) in cases.iter().enumerate() {
        let r = case
            .ret
            .map(|r| format!(" (result {})", KINDS[r].0))
            .unwrap_or_default();
        let args: Vec<String> = case
            .params
            .iter()
            .zip(&case.args)
            .map(|(p, a)| wat_const(*p, *a))
            .collect();
        writeln!(
            wat,
            "  (func (export \"run_{k}\"){r} (call $imp_{k} {}))",
            args.join(" ")
        )
        .unwrap();
    }
    wat.push_str(")\n");
    let so = support::compile_so("wasm_imports", &c);
    let lib = support::Lib::open(&so);
    let wasm = wat::parse_str(&wat).unwrap();
    for (name, bridge) in support::all_bridges() {
        let wb = WasmBridge::new(Arc::new(bridge));
        let engine = Engine::default();
        let module = Module::new(&engine, &wasm).unwrap();
        let mut store = Store::new(&engine, ());
        let mut linker = <Linker<()>>::new(&engine);
        for (k, case) in cases.iter().enumerate() {
            // SAFETY: imp_k has exactly this signature.
            let f = unsafe {
                NativeFn::new(lib.addr(&format!("imp_{k}")), sig_of(case), CallConv::SysV)
            };
            wb.link_native(&mut linker, &module, "c", &format!("imp_{k}"), &f)
                .unwrap();
        }
        let inst = linker.instantiate_and_start(&mut store, &module).unwrap();
        let rec = lib.addr("rec_area");
        let exit = wb
            .bridge()
            .exit_stub(&"()->ptr".parse().unwrap(), CallConv::SysV)
            .unwrap();
        let mut r = [0u64];
        // SAFETY: rec_area is void *(void).
        unsafe { exit.call(rec, &[], &mut r) }.unwrap();
        for (k, case) in cases.iter().enumerate() {
            let f = inst.get_func(&store, &format!("run_{k}")).unwrap();
            let mut out = vec![Val::I32(0); usize::from(case.ret.is_some())];
            f.call(&mut store, &[], &mut out).unwrap();
            for (i, (p, a)) in case.params.iter().zip(&case.args).enumerate() {
                // SAFETY: rec is a 4096-byte static array; each argument has 8 bytes.
                let got = unsafe {
                    std::ptr::read_unaligned((r[0] as *const u8).add(8 * i).cast::<u64>())
                };
                let mask = if KINDS[*p].3 == 4 {
                    0xffff_ffff
                } else {
                    u64::MAX
                };
                assert_eq!(
                    got & mask,
                    norm(*p, *a),
                    "{name} imp_{k} arg {i} ({})",
                    KINDS[*p].0
                );
            }
            if let Some(rk) = case.ret {
                assert_eq!(
                    bits_of(&out[0]),
                    norm(rk, case.ret_bits),
                    "{name} imp_{k} result"
                );
            }
        }
    }
}

#[test]
fn exports_called_from_c_receive_what_c_passed_and_return_to_it() {
    let mut rng = fastrand::Rng::with_seed(support::seed() ^ 0x37);
    let cases = cases(&mut rng, 24);
    let mut c = String::from(C_PRELUDE);
    let mut wat = String::from("(module\n  (memory (export \"memory\") 1)\n");
    for (k, case) in cases.iter().enumerate() {
        // The export stores each parameter at 8*i and returns a constant.
        let params: Vec<String> = case.params.iter().map(|p| KINDS[*p].0.to_owned()).collect();
        let r = case
            .ret
            .map(|r| format!(" (result {})", KINDS[r].0))
            .unwrap_or_default();
        write!(
            wat,
            "  (func (export \"exp_{k}\") (param {}){r}",
            params.join(" ")
        )
        .unwrap();
        for (i, p) in case.params.iter().enumerate() {
            write!(
                wat,
                " ({}.store (i32.const {}) (local.get {i}))",
                KINDS[*p].0,
                8 * i
            )
            .unwrap();
        }
        if let Some(rk) = case.ret {
            write!(wat, " {}", wat_const(rk, case.ret_bits)).unwrap();
        }
        wat.push_str(")\n");
        // C calls the export with the case's constants and stores the result.
        let ptypes: Vec<&str> = case.params.iter().map(|p| KINDS[*p].2).collect();
        let rt = case.ret.map_or("void", |r| KINDS[r].2);
        let fty = format!(
            "{rt} (*)({})",
            if ptypes.is_empty() {
                "void".into()
            } else {
                ptypes.join(", ")
            }
        );
        let args: Vec<String> = case
            .params
            .iter()
            .zip(&case.args)
            .map(|(p, a)| c_const(*p, *a))
            .collect();
        if case.ret.is_some() {
            writeln!(c, "void call_{k}(void *fp, unsigned char *out) {{ {rt} r = (({fty})fp)({}); memcpy(out, &r, sizeof r); }}", args.join(", ")).unwrap();
        } else {
            writeln!(
                c,
                "void call_{k}(void *fp, unsigned char *out) {{ (({fty})fp)({}); }}",
                args.join(", ")
            )
            .unwrap();
        }
    }
    wat.push_str(")\n");
    let so = support::compile_so("wasm_exports", &c);
    let lib = support::Lib::open(&so);
    let wasm = wat::parse_str(&wat).unwrap();
    for (name, bridge) in support::all_bridges() {
        let wb = WasmBridge::new(Arc::new(bridge));
        let engine = Engine::default();
        let module = Module::new(&engine, &wasm).unwrap();
        let mut store = Store::new(&engine, ());
        let inst = <Linker<()>>::new(&engine)
            .instantiate_and_start(&mut store, &module)
            .unwrap();
        let call = wb
            .bridge()
            .exit_stub(&"(ptr,ptr)->void".parse().unwrap(), CallConv::SysV)
            .unwrap();
        for (k, case) in cases.iter().enumerate() {
            let ep = wb
                .export_entry(
                    &store,
                    &inst,
                    &format!("exp_{k}"),
                    &sig_of(case),
                    CallConv::SysV,
                    FailurePolicy::Report,
                )
                .unwrap();
            let mut out = [0u64; 1];
            with_store(&mut store, || {
                // SAFETY: call_k(fp, out) calls fp with the export's C signature.
                unsafe {
                    call.call(
                        lib.addr(&format!("call_{k}")),
                        &[ep.code_ptr() as u64, out.as_mut_ptr() as u64],
                        &mut [],
                    )
                }
                .unwrap();
            });
            let mem = inst.get_memory(&store, "memory").unwrap();
            let data = mem.data(&store);
            for (i, (p, a)) in case.params.iter().zip(&case.args).enumerate() {
                let got = u64::from_le_bytes(data[8 * i..8 * i + 8].try_into().unwrap());
                let mask = if KINDS[*p].3 == 4 {
                    0xffff_ffff
                } else {
                    u64::MAX
                };
                assert_eq!(got & mask, norm(*p, *a), "{name} exp_{k} arg {i}");
            }
            if let Some(rk) = case.ret {
                let mask = if KINDS[rk].3 == 4 {
                    0xffff_ffff
                } else {
                    u64::MAX
                };
                assert_eq!(
                    out[0] & mask,
                    norm(rk, case.ret_bits),
                    "{name} exp_{k} result"
                );
            }
        }
    }
}

const NEST_C: &str = "#include <stdint.h>\n\
    int32_t depth_seen;\n\
    /* C in the middle: calls the wasm export `down` through its native pointer. */\n\
    int32_t bounce(int32_t n, int32_t (*down)(int32_t)) { if (n > depth_seen) depth_seen = n; return 1000 + down(n - 1); }\n\
    int32_t call_twice(int32_t (*f)(int32_t), int32_t x, int32_t *done) { int32_t a = f(x); int32_t b = f(x + 1); *done += 1; return a * 100 + b; }\n\
    uint64_t sum_bytes(const uint8_t *p, uint64_t n) { uint64_t s = 0; for (uint64_t i = 0; i < n; i++) s += p[i]; return s; }\n\
    const uint8_t *ptr_plus(const uint8_t *p, int64_t k) { return p + k; }\n\
    static uint8_t outside[16];\n\
    int32_t call_with_outside(int32_t (*f)(const uint8_t *)) { return f(outside); }\n";

const NEST_WAT: &str = r#"(module
  (import "c" "bounce" (func $bounce (param i32 i64) (result i32)))
  (import "c" "call_twice" (func $call_twice (param i64 i32 i32) (result i32)))
  (import "c" "sum_bytes" (func $sum_bytes (param i32 i64) (result i64)))
  (import "c" "ptr_plus" (func $ptr_plus (param i32 i64) (result i32)))
  (import "c" "call_with_outside" (func $call_with_outside (param i64) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 65532) "\01\02\03\04")
  (global $down (mut i64) (i64.const 0))
  (func (export "set_down") (param i64) (global.set $down (local.get 0)))
  ;; wasm -> C -> wasm -> C ... n levels deep
  (func (export "down") (param $n i32) (result i32)
    (if (result i32) (i32.le_s (local.get $n) (i32.const 0))
      (then (i32.const 0))
      (else (call $bounce (local.get $n) (global.get $down)))))
  (func (export "maybe_trap") (param $x i32) (result i32)
    (if (i32.eq (local.get $x) (i32.const 1)) (then unreachable))
    (i32.mul (local.get $x) (i32.const 3)))
  (func (export "twice") (param $f i64) (param $x i32) (result i32)
    (call $call_twice (local.get $f) (local.get $x) (i32.const 16)))
  (func (export "done") (result i32) (i32.load (i32.const 16)))
  (func (export "sum") (param $off i32) (param $n i64) (result i64) (call $sum_bytes (local.get $off) (local.get $n)))
  (func (export "plus") (param $off i32) (param $k i64) (result i32) (call $ptr_plus (local.get $off) (local.get $k)))
  (func (export "first_byte") (param $p i32) (result i32) (i32.load8_u (local.get $p)))
  (func (export "outside") (param $f i64) (result i32) (call $call_with_outside (local.get $f)))
)"#;

struct Nest {
    wb: WasmBridge,
    store: Store<()>,
    inst: wasmi::Instance,
    _lib: support::Lib,
}

fn nest(bridge: Bridge) -> Nest {
    let so = support::compile_so("wasm_nest", NEST_C);
    let lib = support::Lib::open(&so);
    let wb = WasmBridge::new(Arc::new(bridge));
    let engine = Engine::default();
    let module = Module::new(&engine, wat::parse_str(NEST_WAT).unwrap()).unwrap();
    let mut store = Store::new(&engine, ());
    let mut linker = <Linker<()>>::new(&engine);
    for (name, sig) in [
        ("bounce", "(i32,ptr)->i32"),
        ("call_twice", "(ptr,i32,ptr)->i32"),
        ("sum_bytes", "(ptr,u64)->u64"),
        ("ptr_plus", "(ptr,i64)->ptr"),
        ("call_with_outside", "(ptr)->i32"),
    ] {
        // SAFETY: the fixture's functions have exactly these signatures.
        let f = unsafe { NativeFn::new(lib.addr(name), sig.parse().unwrap(), CallConv::SysV) };
        wb.link_native(&mut linker, &module, "c", name, &f).unwrap();
    }
    let inst = linker.instantiate_and_start(&mut store, &module).unwrap();
    Nest {
        wb,
        store,
        inst,
        _lib: lib,
    }
}

#[test]
fn wasm_and_c_nest_many_levels_deep() {
    for (name, bridge) in support::all_bridges() {
        let mut n = nest(bridge);
        let down =
            n.wb.export_entry(
                &n.store,
                &n.inst,
                "down",
                &"(i32)->i32".parse().unwrap(),
                CallConv::SysV,
                FailurePolicy::Report,
            )
            .unwrap();
        n.inst
            .get_typed_func::<i64, ()>(&n.store, "set_down")
            .unwrap()
            .call(&mut n.store, down.code_ptr() as i64)
            .unwrap();
        let f = n.inst.get_typed_func::<i32, i32>(&n.store, "down").unwrap();
        // Rust -> wasm -> C -> wasm -> C ... : 12 wasm frames and 12 C frames interleaved.
        assert_eq!(f.call(&mut n.store, 12).unwrap(), 12 * 1000, "{name}");
    }
}

#[test]
fn a_trap_inside_a_callback_reaches_the_embedder_after_c_returns() {
    for (name, bridge) in support::all_bridges() {
        let mut n = nest(bridge);
        let cb =
            n.wb.export_entry(
                &n.store,
                &n.inst,
                "maybe_trap",
                &"(i32)->i32".parse().unwrap(),
                CallConv::SysV,
                FailurePolicy::Report,
            )
            .unwrap();
        let twice = n
            .inst
            .get_typed_func::<(i64, i32), i32>(&n.store, "twice")
            .unwrap();
        let done = n.inst.get_typed_func::<(), i32>(&n.store, "done").unwrap();
        // f(5), f(6): no trap.
        assert_eq!(
            twice.call(&mut n.store, (cb.code_ptr() as i64, 5)).unwrap(),
            15 * 100 + 18,
            "{name}"
        );
        // f(0), f(1): the second call traps inside C's call; C still finishes.
        let err = twice
            .call(&mut n.store, (cb.code_ptr() as i64, 0))
            .unwrap_err();
        assert_eq!(
            err.as_trap_code(),
            Some(wasmi::TrapCode::UnreachableCodeReached),
            "{name}: {err}"
        );
        assert_eq!(
            done.call(&mut n.store, ()).unwrap(),
            2,
            "{name}: C returned normally both times"
        );
        // And the instance is still usable.
        assert_eq!(
            twice.call(&mut n.store, (cb.code_ptr() as i64, 2)).unwrap(),
            6 * 100 + 9,
            "{name}"
        );
    }
}

#[test]
fn pointers_are_translated_at_the_edges_of_linear_memory_and_refused_outside_it() {
    for (name, bridge) in support::all_bridges() {
        let mut n = nest(bridge);
        let size = n
            .inst
            .get_memory(&n.store, "memory")
            .unwrap()
            .data_size(&n.store) as i32;
        let sum = n
            .inst
            .get_typed_func::<(i32, i64), i64>(&n.store, "sum")
            .unwrap();
        // The last four bytes of memory, and the empty range at its very end.
        assert_eq!(
            sum.call(&mut n.store, (size - 4, 4)).unwrap(),
            1 + 2 + 3 + 4,
            "{name}"
        );
        assert_eq!(sum.call(&mut n.store, (size, 0)).unwrap(), 0, "{name}");
        // One past the end: refused before C runs.
        let err = sum.call(&mut n.store, (size + 1, 0)).unwrap_err();
        assert!(
            err.to_string().contains("outside linear memory"),
            "{name}: {err}"
        );
        // A native pointer coming back into wasm: inside -> its offset; outside -> a trap.
        let plus = n
            .inst
            .get_typed_func::<(i32, i64), i32>(&n.store, "plus")
            .unwrap();
        assert_eq!(plus.call(&mut n.store, (100, 28)).unwrap(), 128, "{name}");
        assert_eq!(
            plus.call(&mut n.store, (size - 1, 1)).unwrap(),
            size,
            "{name}"
        );
        let err = plus.call(&mut n.store, (size - 1, 2)).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not point into linear memory"),
            "{name}: {err}"
        );
        // C passes a pointer to its own static data to an export expecting a
        // linear-memory pointer: a trap, never a dereference.
        let first =
            n.wb.export_entry(
                &n.store,
                &n.inst,
                "first_byte",
                &"(ptr)->i32".parse().unwrap(),
                CallConv::SysV,
                FailurePolicy::Report,
            )
            .unwrap();
        let outside = n
            .inst
            .get_typed_func::<i64, i32>(&n.store, "outside")
            .unwrap();
        let err = outside
            .call(&mut n.store, first.code_ptr() as i64)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("does not point into linear memory"),
            "{name}: {err}"
        );
        // Called from Rust through the pointer with a pointer into memory: translated.
        let mem = n.inst.get_memory(&n.store, "memory").unwrap();
        let p = mem.data_ptr(&n.store).wrapping_add(size as usize - 2);
        // SAFETY: the entry point has C signature (ptr)->i32.
        let f: extern "C" fn(*const u8) -> i32 = unsafe { first.as_fn() };
        assert_eq!(with_store(&mut n.store, || f(p)), 3, "{name}");
        // No active store: the call fails cleanly (zero to C, the error kept).
        assert_eq!(f(p), 0, "{name}");
        match take_entry_error() {
            Some(EntryError::Host { error, .. }) => {
                assert!(error.to_string().contains("no active store"), "{error}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn mismatched_import_and_export_types_are_link_errors() {
    let wb = WasmBridge::new(Arc::new(support::generated()));
    let engine = Engine::default();
    let module = Module::new(&engine, wat::parse_str(NEST_WAT).unwrap()).unwrap();
    let mut linker = <Linker<()>>::new(&engine);
    let lib = support::Lib::open(&support::compile_so("wasm_nest", NEST_C));
    let bad = |sig: &str| {
        // SAFETY: never called: linking fails first.
        unsafe { NativeFn::new(lib.addr("sum_bytes"), sig.parse().unwrap(), CallConv::SysV) }
    };
    for (sig, why) in [
        ("(ptr)->u64", "parameters"),
        ("(f64,u64)->u64", "parameter 0"),
        ("(ptr,u64)->void", "result"),
        ("(ptr,u64)->f32", "result"),
        ("({i32},u64)->u64", "struct"),
        ("(ptr,...)->u64", "variadic"),
    ] {
        match wb.link_native(&mut linker, &module, "c", "sum_bytes", &bad(sig)) {
            Err(WasmError::Mismatch { why: w, .. }) => assert!(w.contains(why), "{sig}: {w}"),
            other => panic!("{sig}: {other:?}"),
        }
    }
    let missing = wb.link_native(&mut linker, &module, "c", "no_such", &bad("(ptr,u64)->u64"));
    assert!(matches!(missing, Err(WasmError::NotFound(_))));
    let mut store = Store::new(&engine, ());
    let module = Module::new(
        &engine,
        wat::parse_str("(module (func (export \"f\") (param i32) (result i64) (i64.const 1)))")
            .unwrap(),
    )
    .unwrap();
    let inst = <Linker<()>>::new(&engine)
        .instantiate_and_start(&mut store, &module)
        .unwrap();
    let e = wb.export_entry(
        &store,
        &inst,
        "f",
        &"(i32)->i32".parse().unwrap(),
        CallConv::SysV,
        FailurePolicy::Report,
    );
    assert!(matches!(e, Err(WasmError::Mismatch { .. })), "{e:?}");
}

#[test]
fn every_typed_fast_path_shape_converts_arguments_and_results_exactly() {
    let wat = r#"(module
      (memory (export "memory") 1)
      (global $hits (mut i32) (i32.const 0))
      (func (export "ii_i") (param i32 i32) (result i32) (i32.sub (local.get 0) (local.get 1)))
      (func (export "i_i") (param i32) (result i32) (i32.mul (local.get 0) (i32.const -3)))
      (func (export "l_l") (param i64) (result i64) (i64.xor (local.get 0) (i64.const -1)))
      (func (export "ll_l") (param i64 i64) (result i64) (i64.sub (local.get 0) (local.get 1)))
      (func (export "d_d") (param f64) (result f64) (f64.mul (local.get 0) (f64.const 0.5)))
      (func (export "dd_d") (param f64 f64) (result f64) (f64.div (local.get 0) (local.get 1)))
      (func (export "i_") (param i32) (global.set $hits (i32.add (global.get $hits) (local.get 0))))
      (func (export "_") (global.set $hits (i32.add (global.get $hits) (i32.const 100))))
      (func (export "hits") (result i32) (global.get $hits)))"#;
    for (name, bridge) in support::all_bridges() {
        let wb = WasmBridge::new(Arc::new(bridge));
        let engine = Engine::default();
        let module = Module::new(&engine, wat::parse_str(wat).unwrap()).unwrap();
        let mut store = Store::new(&engine, ());
        let inst = <Linker<()>>::new(&engine)
            .instantiate_and_start(&mut store, &module)
            .unwrap();
        let ep = |store: &Store<()>, export: &str, sig: &str| {
            wb.export_entry(
                store,
                &inst,
                export,
                &sig.parse().unwrap(),
                CallConv::SysV,
                FailurePolicy::Report,
            )
            .unwrap()
        };
        let (ii_i, i_i, l_l, ll_l) = (
            ep(&store, "ii_i", "(i32,i32)->i32"),
            ep(&store, "i_i", "(i16)->i32"),
            ep(&store, "l_l", "(u64)->u64"),
            ep(&store, "ll_l", "(i64,i64)->i64"),
        );
        let (d_d, dd_d, i_, e_) = (
            ep(&store, "d_d", "(f64)->f64"),
            ep(&store, "dd_d", "(f64,f64)->f64"),
            ep(&store, "i_", "(u8)->void"),
            ep(&store, "_", "()->void"),
        );
        // SAFETY: each entry point has exactly the C signature it is cast to.
        unsafe {
            let f1: extern "C" fn(i32, i32) -> i32 = ii_i.as_fn();
            let f2: extern "C" fn(i16) -> i32 = i_i.as_fn();
            let f3: extern "C" fn(u64) -> u64 = l_l.as_fn();
            let f4: extern "C" fn(i64, i64) -> i64 = ll_l.as_fn();
            let f5: extern "C" fn(f64) -> f64 = d_d.as_fn();
            let f6: extern "C" fn(f64, f64) -> f64 = dd_d.as_fn();
            let f7: extern "C" fn(u8) = i_.as_fn();
            let f8: extern "C" fn() = e_.as_fn();
            with_store(&mut store, || {
                assert_eq!(f1(i32::MIN, 1), i32::MAX, "{name}: wraps");
                assert_eq!(f2(-7), 21, "{name}: i16 sign-extended into i32");
                assert_eq!(f3(0x0123_4567_89ab_cdef), !0x0123_4567_89ab_cdef, "{name}");
                assert_eq!(f4(i64::MIN, 1), i64::MAX, "{name}");
                assert_eq!(f5(-0.0).to_bits(), (-0.0f64).to_bits(), "{name}: -0 kept");
                assert_eq!(f6(1.0, 0.0), f64::INFINITY, "{name}");
                f7(200);
                f8();
            });
        }
        let hits = inst
            .get_typed_func::<(), i32>(&store, "hits")
            .unwrap()
            .call(&mut store, ())
            .unwrap();
        assert_eq!(hits, 300, "{name}: u8 200 zero-extended, plus 100");
    }
}
