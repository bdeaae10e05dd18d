//! The conformance runner's logic: reads an `abi-corpus/1` file and runs every
//! vector, scenario and catalogue callback through one tierbridge backend.
//! Shared by `examples/conformance/main.rs` and `tests/conformance.rs`.

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::Value as Json;
use tierbridge::abi::{CallConv, Scalar, Signature, Type};
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy, HostError};
use tierbridge::thunks::{BackendKind, Bridge, EntryPoint, ExitStub, ThunkError};

/// The outcome of one run.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// One line per failure.
    pub failures: Vec<String>,
    /// One line per skipped check, with the reason.
    pub skips: Vec<String>,
    /// Differences in `informative` vectors (never failures).
    pub infos: Vec<String>,
}

impl Report {
    pub fn closing_line(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

fn ty_of(text: &str) -> Result<Type, String> {
    let sig =
        Signature::parse(&format!("({text})->void")).map_err(|e| format!("type {text:?}: {e}"))?;
    sig.params()
        .first()
        .cloned()
        .ok_or_else(|| format!("type {text:?}: empty"))
}

// ---------------------------------------------------------------------------
// value encoding (FORMAT.md section 5)
// ---------------------------------------------------------------------------

fn scalar_bits(s: Scalar, v: &Json) -> Result<u64, String> {
    let bad = || format!("value {v} does not encode a {s}");
    match s {
        Scalar::Bool => v.as_bool().map(u64::from).ok_or_else(bad),
        Scalar::F32 | Scalar::F64 => {
            let hex = v
                .as_str()
                .and_then(|t| t.strip_prefix("0x"))
                .ok_or_else(bad)?;
            let digits = if s == Scalar::F32 { 8 } else { 16 };
            if hex.len() != digits {
                return Err(bad());
            }
            u64::from_str_radix(hex, 16).map_err(|_| bad())
        }
        Scalar::Ptr => match v {
            Json::Null => Ok(0),
            _ => Err(format!(
                "pointer value {v} inside a struct is not encodable"
            )),
        },
        _ => {
            let t = v.as_str().ok_or_else(bad)?;
            let (lo, hi): (i128, i128) = match s {
                Scalar::I8 => (i8::MIN.into(), i8::MAX.into()),
                Scalar::U8 => (0, u8::MAX.into()),
                Scalar::I16 => (i16::MIN.into(), i16::MAX.into()),
                Scalar::U16 => (0, u16::MAX.into()),
                Scalar::I32 => (i32::MIN.into(), i32::MAX.into()),
                Scalar::U32 => (0, u32::MAX.into()),
                Scalar::I64 => (i64::MIN.into(), i64::MAX.into()),
                _ => (0, u64::MAX.into()),
            };
            let n: i128 = t.parse().map_err(|_| bad())?;
            if n < lo || n > hi {
                return Err(bad());
            }
            Ok(s.to_slot(n as u64))
        }
    }
}

/// The C-layout bytes of a value of type `ty`.
fn encode(ty: &Type, v: &Json) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; ty.size() as usize];
    encode_into(ty, v, &mut out)?;
    Ok(out)
}

fn encode_into(ty: &Type, v: &Json, out: &mut [u8]) -> Result<(), String> {
    match ty {
        Type::Scalar(s) => {
            let bits = scalar_bits(*s, v)?;
            out[..s.size() as usize].copy_from_slice(&bits.to_le_bytes()[..s.size() as usize]);
            Ok(())
        }
        Type::Struct(st) => {
            let items = v
                .as_array()
                .ok_or_else(|| format!("struct value {v} is not an array"))?;
            if items.len() != st.fields().len() {
                return Err(format!(
                    "struct value {v} has {} fields, {ty} has {}",
                    items.len(),
                    st.fields().len()
                ));
            }
            for (f, item) in st.fields().iter().zip(items) {
                let at = f.offset as usize;
                match f.count {
                    None => encode_into(&f.ty, item, &mut out[at..])?,
                    Some(n) => {
                        let elems = item
                            .as_array()
                            .filter(|a| a.len() == n as usize)
                            .ok_or_else(|| {
                                format!("array field value {item} is not an array of {n}")
                            })?;
                        let stride = f.ty.size() as usize;
                        for (i, e) in elems.iter().enumerate() {
                            encode_into(&f.ty, e, &mut out[at + i * stride..])?;
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

fn bytes_to_slots(bytes: &[u8], slots: &mut [u64]) {
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        slots[i] = u64::from_le_bytes(b);
    }
}

fn slots_to_bytes(slots: &[u64]) -> Vec<u8> {
    slots.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// A scalar's bytes as the corpus would write the value.
fn show(s: Scalar, bytes: &[u8]) -> String {
    let mut b = [0u8; 8];
    b[..bytes.len()].copy_from_slice(bytes);
    let raw = u64::from_le_bytes(b);
    match s {
        Scalar::F32 => format!("0x{raw:08x} ({})", f32::from_bits(raw as u32)),
        Scalar::F64 => format!("0x{raw:016x} ({})", f64::from_bits(raw)),
        Scalar::Ptr => format!("{raw:#x}"),
        s if s.is_signed() => format!("{}", s.to_slot(raw) as i64),
        s => format!("{}", s.to_slot(raw)),
    }
}

/// Compares two C-layout byte images of `ty` scalar by scalar (padding excluded).
fn diff_bytes(ty: &Type, want: &[u8], got: &[u8]) -> Option<String> {
    let whole = matches!(ty, Type::Scalar(_));
    for (at, s) in ty.flatten() {
        let r = at as usize..(at + s.size()) as usize;
        let (w, g) = (&want[r.clone()], &got[r]);
        let differs = if s == Scalar::Bool {
            (w[0] != 0) != (g[0] != 0) || g[0] > 1
        } else {
            w != g
        };
        if differs {
            let place = if whole {
                String::new()
            } else {
                format!(" at offset {at}")
            };
            return Some(format!(
                "{s}{place}: expected {}, got {}",
                show(s, w),
                show(s, g)
            ));
        }
    }
    None
}

// ---------------------------------------------------------------------------
// the callback catalogue (FORMAT.md section 7)
// ---------------------------------------------------------------------------

const CATALOGUE: [&str; 20] = [
    "cmp_i32_asc",
    "cmp_i32_desc",
    "fold_hash",
    "sub_i32",
    "mixed10_sum",
    "many18_sum",
    "make_s16ld",
    "make_s24",
    "make_s12fff",
    "make_s8ff",
    "struct_args_sum",
    "narrow_mix",
    "reenter_add",
    "affine_i64",
    "inc_i64",
    "probe_via_bridge",
    "va_weighted",
    "jump_out",
    "ms6_sum",
    "ms_inc_i64",
];

/// An exit path to a helper of FORMAT.md section 7.1.
struct Helper {
    stub: ExitStub,
    addr: usize,
}

/// The interpreter side of the catalogue: one handler per id.
struct Catalogue {
    reenter: Option<Helper>,
    probe: Option<Helper>,
    /// Entry code address of each bound callback, by id (set once, after binding).
    self_ptrs: OnceLock<HashMap<&'static str, usize>>,
}

fn f32_of(slot: u64) -> f32 {
    f32::from_bits(slot as u32)
}

fn f64_of(slot: u64) -> f64 {
    f64::from_bits(slot)
}

fn refuse(msg: &str) -> HostError {
    msg.to_owned().into()
}

impl Catalogue {
    fn helper_call(h: &Option<Helper>, name: &str, args: &[u64]) -> Result<u64, HostError> {
        let h = h
            .as_ref()
            .ok_or_else(|| refuse(&format!("helper {name} is not in the library")))?;
        let mut ret = [0u64];
        // SAFETY: `addr` is the library's `name`, whose signature is the stub's (FORMAT.md 7.1).
        unsafe { h.stub.call(h.addr as *const c_void, args, &mut ret)? };
        Ok(ret[0])
    }

    fn handle(&self, call: EntryCall<'_>) -> Result<(), HostError> {
        let id = *CATALOGUE
            .get(call.func.0 as usize)
            .ok_or_else(|| refuse("unknown callback id"))?;
        let a = call.args;
        let r = call.ret;
        let i64_of = |k: usize| a[k] as i64;
        match id {
            "cmp_i32_asc" | "cmp_i32_desc" => {
                // SAFETY: native code passes two pointers to i32 (the comparator's contract).
                let (x, y) = unsafe { (*(a[0] as *const i32), *(a[1] as *const i32)) };
                let c = (x > y) as i32 - (x < y) as i32;
                r[0] = if id == "cmp_i32_asc" { c } else { -c } as i64 as u64;
            }
            "fold_hash" => r[0] = (a[0].wrapping_mul(31)).wrapping_add(a[1] as i32 as i64 as u64),
            "sub_i32" => r[0] = (a[0] as i32).wrapping_sub(a[1] as i32) as i64 as u64,
            "mixed10_sum" => {
                // SAFETY: the callback's contract: argument 6 points to an i32.
                let g = unsafe { *(a[6] as *const i32) };
                let v = (a[0] as i8) as f64
                    + (a[1] as u16) as f64 * 2.0
                    + (a[2] as i32) as f64 * 4.0
                    + i64_of(3) as f64 * 8.0
                    + f32_of(a[4]) as f64 * 16.0
                    + f64_of(a[5]) * 32.0
                    + g as f64 * 64.0
                    + (a[7] & 1) as f64 * 128.0
                    + (a[8] as u8) as f64 * 256.0
                    + f64_of(a[9]) * 512.0;
                r[0] = v.to_bits();
            }
            "many18_sum" => {
                let mut v = 0.0f64;
                for (k, slot) in a.iter().enumerate().take(18) {
                    let x = if k < 16 && k % 2 == 0 {
                        *slot as i64 as f64
                    } else {
                        f64_of(*slot)
                    };
                    v = if k == 0 {
                        x
                    } else {
                        v + x * (1u64 << k) as f64
                    };
                }
                r[0] = v.to_bits();
            }
            "make_s16ld" => {
                let i = a[0] as i32;
                r[0] = (i as i64 * 100 + 7) as u64;
                r[1] = (i as f64 * 0.5 - 0.125).to_bits();
            }
            "make_s24" => {
                let x = f64_of(a[0]);
                r[0] = x.to_bits();
                r[1] = (x * 2.0 + 0.5).to_bits();
                r[2] = (-x).to_bits();
            }
            "make_s12fff" => {
                let i = a[0] as i32 as f32;
                r[0] = (i + 0.5).to_bits() as u64 | ((i * 2.0 + 0.25).to_bits() as u64) << 32;
                r[1] = (-i).to_bits() as u64;
            }
            "make_s8ff" => {
                let x = f32_of(a[0]);
                r[0] = (x + 1.0).to_bits() as u64 | ((x * 0.5).to_bits() as u64) << 32;
            }
            "struct_args_sum" => {
                // slots: {i32,i32,f32} in 0..2, {f64,i64} in 2..4, {u8,u8,u8} in 4
                let (aa, ab, ac) = (a[0] as i32, (a[0] >> 32) as i32, f32_of(a[1]));
                let (ba, bb) = (f64_of(a[2]), a[3] as i64);
                let (ca, cb, cc) = (a[4] as u8, (a[4] >> 8) as u8, (a[4] >> 16) as u8);
                let v = aa as f64
                    + ab as f64 * 2.0
                    + ac as f64 * 4.0
                    + ba * 8.0
                    + bb as f64 * 16.0
                    + ca as f64 * 32.0
                    + cb as f64 * 64.0
                    + cc as f64 * 128.0;
                r[0] = v.to_bits();
            }
            "narrow_mix" => {
                let g = (f32_of(a[6]) * 4.0) as i64 as u64;
                let v = (a[0] as i8 as i64 as u64)
                    .wrapping_add((a[1] as u8 as u64).wrapping_mul(3))
                    .wrapping_add((a[2] as i16 as i64 as u64).wrapping_mul(5))
                    .wrapping_add((a[3] as u16 as u64).wrapping_mul(7))
                    .wrapping_add((a[4] & 1).wrapping_mul(11))
                    .wrapping_add((a[5] as i32 as i64 as u64).wrapping_mul(13))
                    .wrapping_add(g.wrapping_mul(17));
                r[0] = v;
            }
            "reenter_add" => {
                let n = a[0] as i32;
                let me = self
                    .self_ptrs
                    .get()
                    .and_then(|m| m.get("reenter_add"))
                    .copied()
                    .unwrap_or(0);
                let inner = Self::helper_call(
                    &self.reenter,
                    "corpus_cb_reenter",
                    &[(n - 1) as i64 as u64, me as u64],
                )?;
                r[0] = (n as i64 * 10).wrapping_add(inner as i64) as u64;
            }
            "affine_i64" => r[0] = a[0].wrapping_mul(3).wrapping_add(1),
            "inc_i64" | "ms_inc_i64" => r[0] = a[0].wrapping_add(1),
            "probe_via_bridge" => {
                let v = Self::helper_call(&self.probe, "corpus_stack_probe", &[])?;
                r[0] = v as u32 as i32 as i64 as u64;
            }
            "va_weighted" => {
                let n = a[0] as i32;
                let mut va = call
                    .varargs
                    .ok_or_else(|| refuse("va_weighted called without variadic arguments"))?;
                let (mut acc, mut w) = (0.0f64, 1.0f64);
                for _ in 0..n.max(0) {
                    let x = va
                        .next_f64()
                        .ok_or_else(|| refuse("va_weighted: variadic argument out of reach"))?;
                    acc += x * w;
                    w *= 2.0;
                }
                r[0] = acc.to_bits();
            }
            "jump_out" => {
                return Err(refuse(
                    "jump_out refused: longjmp across Rust and bridge frames is not supported",
                ));
            }
            "ms6_sum" => {
                let v = (a[0] as i32) as f64
                    + f64_of(a[1]) * 2.0
                    + (a[2] as i32) as f64 * 4.0
                    + f32_of(a[3]) as f64 * 8.0
                    + i64_of(4) as f64 * 16.0
                    + f64_of(a[5]) * 32.0;
                r[0] = v.to_bits();
            }
            other => return Err(refuse(&format!("no handler for {other}"))),
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// the run
// ---------------------------------------------------------------------------

struct Function {
    name: String,
    conv: CallConv,
    sig: Result<Signature, String>,
    flags: Vec<String>,
}

struct Runner<'a> {
    bridge: &'a Bridge,
    lib: libloading::Library,
    /// Callback id → entry point (kept alive for the whole run).
    callbacks: HashMap<String, Result<EntryPoint, String>>,
    report: Report,
}

/// Memory behind pointer arguments, alive until the checks are done.
struct ArgMemory {
    blocks: Vec<Vec<u64>>,
}

impl ArgMemory {
    fn alloc(&mut self, bytes: usize) -> *mut u8 {
        let mut v = vec![0u64; bytes.div_ceil(8).max(1)];
        let p = v.as_mut_ptr().cast::<u8>();
        self.blocks.push(v);
        p
    }
}

/// What a vector is: its function, index, and the JSON.
struct Check<'j> {
    label: String,
    f: &'j Function,
    v: &'j Json,
    informative: bool,
}

impl Runner<'_> {
    fn symbol(&self, name: &str) -> Option<usize> {
        let cname = std::ffi::CString::new(name).ok()?;
        // SAFETY: the symbol is only used as an address here.
        unsafe { self.lib.get::<*const c_void>(cname.as_bytes_with_nul()) }
            .ok()
            .map(|s| *s as usize)
    }

    fn pointer_arg(&self, d: &Json, mem: &mut ArgMemory) -> Result<u64, String> {
        if d.is_null() {
            return Ok(0);
        }
        let obj = d
            .as_object()
            .ok_or_else(|| format!("pointer descriptor {d} is not an object"))?;
        if let Some(buf) = obj.get("buf") {
            let ty = ty_of(buf["elem"].as_str().ok_or("buf without elem")?)?;
            let values = buf["values"].as_array().ok_or("buf without values")?;
            let stride = ty.size() as usize;
            let p = mem.alloc(stride * values.len());
            for (i, v) in values.iter().enumerate() {
                let bytes = encode(&ty, v)?;
                // SAFETY: `p` has room for values.len() elements of `stride` bytes.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.add(i * stride), stride) };
            }
            return Ok(p as u64);
        }
        if let Some(out) = obj.get("out") {
            let ty = ty_of(out["elem"].as_str().ok_or("out without elem")?)?;
            let n = out["count"].as_u64().ok_or("out without count")? as usize;
            return Ok(mem.alloc(ty.size() as usize * n) as u64);
        }
        if let Some(s) = obj.get("cstr") {
            let s = s.as_str().ok_or("cstr is not a string")?;
            let p = mem.alloc(s.len() + 1);
            // SAFETY: `p` has room for the bytes and the NUL (zero-filled).
            unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), p, s.len()) };
            return Ok(p as u64);
        }
        if let Some(id) = obj.get("callback") {
            let id = id.as_str().ok_or("callback id is not a string")?;
            return match self.callbacks.get(id) {
                Some(Ok(ep)) => Ok(ep.code_ptr() as u64),
                Some(Err(e)) => Err(format!("callback {id}: {e}")),
                None => Err(format!("unknown callback id {id:?}")),
            };
        }
        if let Some(sym) = obj.get("native") {
            let sym = sym.as_str().ok_or("native is not a string")?;
            return self
                .symbol(sym)
                .map(|a| a as u64)
                .ok_or_else(|| format!("no symbol {sym}"));
        }
        Err(format!("unknown pointer descriptor {d}"))
    }

    /// Runs one vector (or scenario step). `Ok(None)` = pass, `Ok(Some(why))` = mismatch.
    fn run_vector(
        &self,
        c: &Check<'_>,
        target_override: Option<usize>,
        last_ptr: &mut Option<u64>,
    ) -> Outcome {
        let sig = match &c.f.sig {
            Ok(s) => s,
            Err(e) => return Outcome::Fail(format!("signature: {e}")),
        };
        let v = c.v;
        let call_sig = if sig.is_variadic() {
            let Some(ct) = v.get("call_types").and_then(Json::as_str) else {
                return Outcome::Fail("variadic function vector without call_types".into());
            };
            let types = match Signature::parse_param_list(ct) {
                Ok(t) => t,
                Err(e) => return Outcome::Fail(format!("call_types {ct}: {e}")),
            };
            if types.len() < sig.fixed_count() || types[..sig.fixed_count()] != sig.params()[..] {
                return Outcome::Fail(format!(
                    "call_types {ct} do not start with the fixed parameters of {sig}"
                ));
            }
            match sig.with_varargs(&types[sig.fixed_count()..]) {
                Ok(s) => s,
                Err(e) => return Outcome::Fail(format!("call_types {ct}: {e}")),
            }
        } else {
            sig.clone()
        };
        let stub = match self.bridge.exit_stub(&call_sig, c.f.conv) {
            Ok(s) => s,
            Err(e @ ThunkError::Unsupported { .. }) => return Outcome::Skip(e.to_string()),
            Err(e) => return Outcome::Fail(format!("exit stub: {e}")),
        };
        let target = match target_override.or_else(|| self.symbol(&c.f.name)) {
            Some(t) => t,
            None => return Outcome::Fail(format!("symbol {} not found", c.f.name)),
        };
        let Some(args) = v.get("args").and_then(Json::as_array) else {
            return Outcome::Fail("vector without args".into());
        };
        if args.len() != call_sig.params().len() {
            return Outcome::Fail(format!(
                "{} args for {} parameters",
                args.len(),
                call_sig.params().len()
            ));
        }
        let mut mem = ArgMemory { blocks: Vec::new() };
        let mut slots = vec![0u64; call_sig.arg_slots()];
        let mut addrs = vec![0u64; args.len()];
        for (i, (a, layout)) in args.iter().zip(&stub.layout().args).enumerate() {
            let at = layout.slot as usize;
            let r = match &layout.ty {
                Type::Scalar(Scalar::Ptr) => self.pointer_arg(a, &mut mem).map(|p| {
                    addrs[i] = p;
                    slots[at] = p;
                }),
                Type::Scalar(s) => scalar_bits(*s, a).map(|b| slots[at] = b),
                ty @ Type::Struct(_) => encode(ty, a).map(|b| bytes_to_slots(&b, &mut slots[at..])),
            };
            if let Err(e) = r {
                return Outcome::Fail(format!("argument {i}: {e}"));
            }
        }
        let mut ret = vec![0u64; call_sig.ret_slots()];
        let want_errno = v.get("errno").and_then(Json::as_i64);
        // SAFETY: the target is the library's function with this signature (the
        // corpus's promise), and every pointer argument points to live memory.
        let result = unsafe {
            match want_errno {
                Some(_) => stub
                    .call_capture_errno(target as *const c_void, &slots, &mut ret, 12345)
                    .map(Some),
                None => stub
                    .call(target as *const c_void, &slots, &mut ret)
                    .map(|_| None),
            }
        };
        let got_errno = match result {
            Ok(e) => e,
            Err(e) => return Outcome::Fail(format!("call failed: {e}")),
        };
        let mut problems = Vec::new();
        if let Some(w) = want_errno
            && got_errno != Some(w as i32)
        {
            problems.push(format!(
                "errno: expected {w}, got {}",
                got_errno.unwrap_or_default()
            ));
        }
        let want = v.get("ret").unwrap_or(&Json::Null);
        match call_sig.ret() {
            None => {
                if !want.is_null() {
                    problems.push(format!("ret: void function, corpus expects {want}"));
                }
            }
            Some(Type::Scalar(Scalar::Ptr)) => {
                let got = ret[0];
                *last_ptr = Some(got);
                let expected = if want.is_null() {
                    Ok(0)
                } else if let Some(i) = want.get("same_as_arg").and_then(Json::as_u64) {
                    addrs
                        .get(i as usize)
                        .copied()
                        .ok_or_else(|| format!("same_as_arg {i} out of range"))
                } else if let Some(sym) = want.get("native").and_then(Json::as_str) {
                    self.symbol(sym)
                        .map(|a| a as u64)
                        .ok_or_else(|| format!("no symbol {sym}"))
                } else {
                    Err(format!("unknown pointer result {want}"))
                };
                match expected {
                    Ok(e) if e == got => {}
                    Ok(e) => problems.push(format!("ret: expected pointer {e:#x}, got {got:#x}")),
                    Err(e) => problems.push(e),
                }
            }
            Some(ty) => match encode(ty, want) {
                Ok(w) => {
                    let got = slots_to_bytes(&ret);
                    if let Some(d) = diff_bytes(ty, &w, &got) {
                        problems.push(format!("ret: {d}"));
                    }
                }
                Err(e) => problems.push(format!("ret: {e}")),
            },
        }
        for check in v
            .get("after")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            if let Err(e) = self.after_check(check, &addrs, &mut problems) {
                problems.push(format!("after: {e}"));
            }
        }
        if problems.is_empty() {
            Outcome::Pass
        } else {
            Outcome::Fail(problems.join("; "))
        }
    }

    fn after_check(
        &self,
        check: &Json,
        addrs: &[u64],
        problems: &mut Vec<String>,
    ) -> Result<(), String> {
        let i = check["arg"].as_u64().ok_or("after without arg")? as usize;
        let p = *addrs.get(i).ok_or("after arg out of range")? as *const u8;
        if p.is_null() {
            return Err(format!("argument {i} is null"));
        }
        if let Some(text) = check.get("cstr").and_then(Json::as_str) {
            let want: Vec<u8> = text.bytes().chain([0]).collect();
            // SAFETY: argument i is a buf/out block the runner allocated, at least as
            // long as what the corpus says the callee wrote.
            let got = unsafe { std::slice::from_raw_parts(p, want.len()) };
            if got != want.as_slice() {
                problems.push(format!(
                    "after arg {i}: expected {:?}, got {:?}",
                    text,
                    String::from_utf8_lossy(got)
                ));
            }
            return Ok(());
        }
        let ty = ty_of(check["elem"].as_str().ok_or("after without elem")?)?;
        let values = check["values"].as_array().ok_or("after without values")?;
        let stride = ty.size() as usize;
        for (k, v) in values.iter().enumerate() {
            let want = encode(&ty, v)?;
            // SAFETY: as above, the block holds at least values.len() elements.
            let got = unsafe { std::slice::from_raw_parts(p.add(k * stride), stride) };
            if let Some(d) = diff_bytes(&ty, &want, got) {
                problems.push(format!("after arg {i} element {k}: {d}"));
            }
        }
        Ok(())
    }

    fn record(&mut self, c: &Check<'_>, outcome: Outcome) {
        let display = c.v.get("display").and_then(Json::as_str).unwrap_or("");
        match outcome {
            Outcome::Pass => self.report.passed += 1,
            Outcome::Skip(why) => {
                self.report.skipped += 1;
                self.report
                    .skips
                    .push(format!("SKIP {} {display}: {why}", c.label));
            }
            Outcome::Fail(why) if c.informative => {
                self.report.infos.push(format!(
                    "INFO {} {display}: {why} (informative, not counted)",
                    c.label
                ));
            }
            Outcome::Fail(why) => {
                self.report.failed += 1;
                self.report
                    .failures
                    .push(format!("FAIL {} {display}: {why}", c.label));
            }
        }
    }
}

enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

fn flags(j: &Json) -> Vec<String> {
    j.get("flags")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect()
}

/// Runs a corpus file on one backend. `Err` only for problems that make the
/// whole file unusable (unreadable, wrong format, library not loadable, or the
/// backend not available here).
pub fn run(backend: BackendKind, lib_path: Option<&Path>, corpus: &Path) -> Result<Report, String> {
    let bridge = Bridge::new(backend).map_err(|e| e.to_string())?;
    if let Some(why) = bridge.fallback_reason() {
        return Err(format!(
            "the {backend} backend is not available here: {why}"
        ));
    }
    run_bridge(&bridge, lib_path, corpus)
}

/// [`run`] on a bridge made by the caller.
pub fn run_bridge(
    bridge: &Bridge,
    lib_path: Option<&Path>,
    corpus: &Path,
) -> Result<Report, String> {
    let text = std::fs::read_to_string(corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
    let doc: Json =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", corpus.display()))?;
    if doc.get("format").and_then(Json::as_str) != Some("abi-corpus/1") {
        return Err(format!("{}: format is not abi-corpus/1", corpus.display()));
    }
    let lib_path: PathBuf = match lib_path {
        Some(p) => p.to_owned(),
        None => corpus.with_file_name(
            doc["library"]
                .as_str()
                .ok_or("no library named in the corpus")?,
        ),
    };
    // SAFETY: loading the corpus's library runs its initializers; the corpus is trusted test input.
    let lib = unsafe { libloading::Library::new(&lib_path) }
        .map_err(|e| format!("{}: {e}", lib_path.display()))?;
    let mut runner = Runner {
        bridge,
        lib,
        callbacks: HashMap::new(),
        report: Report::default(),
    };

    let parse_fn = |j: &Json| -> Function {
        let name = j["name"].as_str().unwrap_or("?").to_owned();
        let conv = j["abi"].as_str().unwrap_or("?").parse::<CallConv>();
        let sig = match (conv.as_ref(), j["sig"].as_str()) {
            (Ok(_), Some(s)) => Signature::parse(s).map_err(|e| format!("{s}: {e}")),
            (Err(e), _) => Err(e.to_string()),
            (_, None) => Err("no sig".into()),
        };
        Function {
            name,
            conv: conv.unwrap_or(CallConv::SysV),
            sig,
            flags: flags(j),
        }
    };
    let functions: Vec<Function> = doc["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(parse_fn)
        .collect();
    let by_name: HashMap<&str, &Function> =
        functions.iter().map(|f| (f.name.as_str(), f)).collect();

    // The catalogue: one entry point per callback id, alive for the whole run.
    let helper = |name: &str, runner: &Runner<'_>| -> Option<Helper> {
        let f = by_name.get(name)?;
        let stub = runner.bridge.exit_stub(f.sig.as_ref().ok()?, f.conv).ok()?;
        Some(Helper {
            stub,
            addr: runner.symbol(name)?,
        })
    };
    let catalogue = Arc::new(Catalogue {
        reenter: helper("corpus_cb_reenter", &runner),
        probe: helper("corpus_stack_probe", &runner),
        self_ptrs: OnceLock::new(),
    });
    let cat = catalogue.clone();
    let dispatcher = Dispatcher::from_host(
        Arc::new(move |call: EntryCall<'_>| cat.handle(call)),
        FailurePolicy::Report,
    );
    let mut self_ptrs = HashMap::new();
    for cb in doc["callbacks"].as_array().into_iter().flatten() {
        let id = cb["id"].as_str().unwrap_or("?").to_owned();
        let made = (|| {
            let index = CATALOGUE
                .iter()
                .position(|k| *k == id)
                .ok_or_else(|| format!("unknown callback id {id:?}"))?;
            let conv: CallConv = cb["abi"]
                .as_str()
                .unwrap_or("?")
                .parse()
                .map_err(|e| format!("{e}"))?;
            let sig =
                Signature::parse(cb["sig"].as_str().unwrap_or("")).map_err(|e| e.to_string())?;
            let ep = bridge
                .entry_point(&sig, conv, &dispatcher, index as u64)
                .map_err(|e| e.to_string())?;
            self_ptrs.insert(CATALOGUE[index], ep.code_ptr() as usize);
            Ok::<_, String>(ep)
        })();
        runner.callbacks.insert(id, made);
    }
    let _ = catalogue.self_ptrs.set(self_ptrs);

    for f in &functions {
        let vectors = by_name[f.name.as_str()];
        let fj = doc["functions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| j["name"] == f.name.as_str());
        for (k, v) in fj
            .and_then(|j| j["vectors"].as_array())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let c = Check {
                label: format!("{}[{k}]", f.name),
                f: vectors,
                v,
                informative: f.flags.iter().any(|x| x == "informative"),
            };
            let outcome = if f.flags.iter().any(|x| x == "hazard") {
                Outcome::Skip(
                    "hazard: longjmp across bridge frames is not supported by this runner".into(),
                )
            } else {
                runner.run_vector(&c, None, &mut None)
            };
            runner.record(&c, outcome);
        }
    }

    for sc in doc["scenarios"].as_array().into_iter().flatten() {
        let name = sc["name"].as_str().unwrap_or("?");
        let mut last_ptr: Option<u64> = None;
        for (k, step) in sc["steps"].as_array().into_iter().flatten().enumerate() {
            let label = format!("{name}/step{k}");
            let fname = step["fn"].as_str().unwrap_or("?");
            let Some(f) = by_name.get(fname) else {
                runner.report.failed += 1;
                runner
                    .report
                    .failures
                    .push(format!("FAIL {label}: unknown function {fname}"));
                continue;
            };
            let note = step.get("note").and_then(Json::as_str).unwrap_or("");
            let target = if note.contains("call the pointer returned") {
                last_ptr.map(|p| p as usize)
            } else {
                None
            };
            let c = Check {
                label,
                f,
                v: step,
                informative: f.flags.iter().any(|x| x == "informative"),
            };
            let outcome = if f.flags.iter().any(|x| x == "hazard") {
                Outcome::Skip("hazard".into())
            } else {
                runner.run_vector(&c, target, &mut last_ptr)
            };
            runner.record(&c, outcome);
        }
    }
    let report = std::mem::take(&mut runner.report);
    drop(runner);
    Ok(report)
}
