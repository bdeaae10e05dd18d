//! tierbridge against the C compiler, over randomly generated signatures:
//! struct layout, classification (where gcc actually puts every argument and
//! result), exit stubs calling C callees that record what they receive, and
//! entry points called by C callers. `TIERBRIDGE_CASES` / `TIERBRIDGE_SEED`
//! change how many cases run and which.

mod support;

use std::ffi::c_void;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use support::*;
use tierbridge::abi::{
    ArgPass, CallConv, CallLayout, Gpr, Loc, Part, PartKind, RetPass, Scalar, Signature, Type,
    classify,
};
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy};
use tierbridge::thunks::{BackendKind, Bridge, ThunkError};

/// C expressions for every scalar of a value, in `Type::flatten` order.
fn scalar_paths(ty: &Type, prefix: &str, out: &mut Vec<String>) {
    match ty {
        Type::Scalar(_) => out.push(prefix.to_owned()),
        Type::Struct(st) => {
            for (i, f) in st.fields().iter().enumerate() {
                match f.count {
                    None => scalar_paths(&f.ty, &format!("{prefix}.f{i}"), out),
                    Some(n) => (0..n)
                        .for_each(|j| scalar_paths(&f.ty, &format!("{prefix}.f{i}[{j}]"), out)),
                }
            }
        }
    }
}

#[test]
fn struct_layout_matches_the_c_compiler() {
    let mut rng = fastrand::Rng::with_seed(seed());
    let types: Vec<Type> = (0..cases(300))
        .map(|_| rand_struct(&mut rng, 0, 200))
        .collect();
    let mut w = CWriter::new();
    let mut main = String::from("#include <stdio.h>\nint main(void) {\n");
    for (k, ty) in types.iter().enumerate() {
        let name = w.ctype(ty);
        write!(
            main,
            "  {{ {name} v; printf(\"{k} %zu %zu\", sizeof v, _Alignof({name}));"
        )
        .unwrap();
        let mut paths = Vec::new();
        scalar_paths(ty, "v", &mut paths);
        for p in paths {
            write!(main, " printf(\" %td\", (char *)&{p} - (char *)&v);").unwrap();
        }
        main.push_str(" printf(\"\\n\"); }\n");
    }
    main.push_str("  return 0;\n}\n");
    let out = run_c_program("layout", &format!("{}{}", w.head, main));
    for (line, ty) in out.lines().zip(&types) {
        let nums: Vec<u32> = line
            .split(' ')
            .skip(1)
            .map(|n| n.parse().unwrap())
            .collect();
        let ours: Vec<u32> = [ty.size(), ty.align()]
            .into_iter()
            .chain(ty.flatten().into_iter().map(|(o, _)| o))
            .collect();
        assert_eq!(
            nums, ours,
            "layout of {ty}: gcc says size, align, offsets = {nums:?}"
        );
    }
    assert_eq!(out.lines().count(), types.len());
}

/// Random signatures with values; call sites always have a fixed parameter
/// before `...` (C before C23 requires one).
struct Case {
    sig: Signature,
    args: Vec<Vec<u8>>,
    ret: Option<Vec<u8>>,
}

fn cases_for(
    rng: &mut fastrand::Rng,
    n: usize,
    max_params: usize,
    struct_varargs: bool,
) -> Vec<Case> {
    (0..n)
        .map(|_| {
            let mut sig = rand_sig(rng, max_params, 25, struct_varargs);
            if sig.is_variadic() && sig.fixed_count() == 0 {
                sig = Signature::new(sig.params().to_vec(), sig.ret().cloned()).unwrap();
            }
            case_of(rng, sig)
        })
        .collect()
}

/// `sig` with random argument and result values.
fn case_of(rng: &mut fastrand::Rng, sig: Signature) -> Case {
    let args = sig.params().iter().map(|t| rand_value(rng, t)).collect();
    let ret = sig.ret().map(|t| rand_value(rng, t));
    Case { sig, args, ret }
}

/// A case's arguments as slots.
fn case_slots(case: &Case) -> Vec<u64> {
    case.sig
        .params()
        .iter()
        .zip(&case.args)
        .flat_map(|(t, v)| value_slots(t, v))
        .collect()
}

/// Compares what a recording C callee received (`rec`, each argument at the
/// next multiple of 8) and what the call returned (`ret` slots) with the
/// case's values.
fn check_received(who: &str, case: &Case, rec: &[u8], ret: &[u64], failures: &mut Vec<String>) {
    let mut off = 0usize;
    for (i, (t, v)) in case.sig.params().iter().zip(&case.args).enumerate() {
        if let Err(e) = same_value(t, v, &rec[off..][..t.size() as usize]) {
            failures.push(format!("{who} {} arg {i}: {e}", case.sig));
        }
        off += t.size().next_multiple_of(8) as usize;
    }
    if let (Some(t), Some(v)) = (case.sig.ret(), &case.ret) {
        if let Err(e) = same_value(t, v, &slots_bytes(ret)) {
            failures.push(format!("{who} {} result: {e}", case.sig));
        }
        if let Type::Scalar(s) = t {
            assert_eq!(
                ret[0],
                s.to_slot(ret[0]),
                "result slot of {} not extended",
                case.sig
            );
        }
    }
}

/// Packed structs that every backend must take, libffi included, because the
/// convention passes them as plain bytes: on Win64 every aggregate goes by
/// its size alone (1/2/4/8 bytes in a register, else by reference), on SysV
/// one of more than 16 bytes is in memory whatever its fields. Each has a
/// field at an offset natural alignment would not give it.
fn packed_as_bytes(conv: CallConv) -> Vec<Signature> {
    let texts: &[&str] = match conv {
        CallConv::SysV => &[
            "(packed{u8,i64,i64})->packed{u8,i64,i64}",
            "(i32,packed{u8,f64,f64,u8},f32)->packed{u16,u8,u32,u64,u32}",
            "({u8,packed{u32,f64},[u8;9]},i64,i64,i64,i64,i64,i64)->{u8,packed{u32,f64},[u8;9]}",
            "(packed{u8,[i32;5]},packed{u8,[i32;5]})->i64",
        ],
        CallConv::Win64 => &[
            "(packed{u16,u8,u32})->packed{u16,u8,u32}",
            "(packed{u8,u16,u8},packed{u8,u32,u8,u8})->packed{u8,u16,u8}",
            "(packed{u8,f64})->packed{u8,u32,u8,u8}",
            "(i32,f64,i32,packed{u8,i64},packed{u8,u16})->packed{u8,u16}",
            "({u8,packed{u32}},packed{u8,[i32;5]})->{u8,packed{u32}}",
        ],
    };
    texts.iter().map(|t| Signature::parse(t).unwrap()).collect()
}

/// `(P0 a0, P1 a1, ...)` with the variadic part as `, ...` when `variadic_decl`.
fn c_params(w: &mut CWriter, sig: &Signature, named: bool) -> String {
    let mut s = String::new();
    for (i, t) in sig.params()[..sig.fixed_count()].iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&w.ctype(t));
        if named {
            write!(s, " a{i}").unwrap();
        }
    }
    if sig.is_variadic() {
        s.push_str(", ...");
    }
    if s.is_empty() { "void".into() } else { s }
}

/// Declares locals a0.. holding the case's argument bytes; returns the call's argument list.
fn c_locals(w: &mut CWriter, case: &Case, body: &mut String) -> String {
    let mut list = Vec::new();
    for (i, (t, v)) in case.sig.params().iter().zip(&case.args).enumerate() {
        let ct = w.ctype(t);
        writeln!(
            body,
            "  {ct} a{i}; memcpy(&a{i}, {}, sizeof a{i});",
            c_bytes(v)
        )
        .unwrap();
        list.push(format!("a{i}"));
    }
    list.join(", ")
}

const CAPTURE_ASM: &str = r#"
__attribute__((visibility("hidden"))) unsigned char cap_gpr[16 * 8];
__attribute__((visibility("hidden"))) unsigned char cap_xmm[8 * 16];
__attribute__((visibility("hidden"))) unsigned char cap_stack[1024];
__attribute__((visibility("hidden"))) uint64_t cap_rsp;
__attribute__((visibility("hidden"))) unsigned char cap_pointee[(16 + 128) * 64];
__attribute__((visibility("hidden"))) unsigned char cap_ret[48];
void *cap_area(int which) {
  switch (which) { case 0: return cap_gpr; case 1: return cap_xmm; case 2: return cap_stack;
                   case 3: return cap_pointee; case 4: return cap_ret; default: return &cap_rsp; }
}
/* Copies 64 bytes behind every captured register or stack slot that points
   into the caller's stack, while the caller's frame is still alive. */
__attribute__((visibility("hidden"))) void cap_save_pointees(void) {
  for (int i = 0; i < 16 + 128; i++) {
    uint64_t v;
    memcpy(&v, i < 16 ? cap_gpr + 8 * i : cap_stack + 8 * (i - 16), 8);
    if (v >= cap_rsp && v - cap_rsp <= 8192 - 64) memcpy(cap_pointee + 64 * i, (void *)v, 64);
  }
}
#define CAPTURE_BODY(restore) \
  "mov %rax, cap_gpr+0(%rip)\n mov %rcx, cap_gpr+8(%rip)\n mov %rdx, cap_gpr+16(%rip)\n" \
  "mov %rbx, cap_gpr+24(%rip)\n mov %rsp, cap_gpr+32(%rip)\n mov %rbp, cap_gpr+40(%rip)\n" \
  "mov %rsi, cap_gpr+48(%rip)\n mov %rdi, cap_gpr+56(%rip)\n mov %r8, cap_gpr+64(%rip)\n" \
  "mov %r9, cap_gpr+72(%rip)\n mov %r10, cap_gpr+80(%rip)\n mov %r11, cap_gpr+88(%rip)\n" \
  "mov %r12, cap_gpr+96(%rip)\n mov %r13, cap_gpr+104(%rip)\n mov %r14, cap_gpr+112(%rip)\n" \
  "mov %r15, cap_gpr+120(%rip)\n" \
  "movdqu %xmm0, cap_xmm+0(%rip)\n movdqu %xmm1, cap_xmm+16(%rip)\n movdqu %xmm2, cap_xmm+32(%rip)\n" \
  "movdqu %xmm3, cap_xmm+48(%rip)\n movdqu %xmm4, cap_xmm+64(%rip)\n movdqu %xmm5, cap_xmm+80(%rip)\n" \
  "movdqu %xmm6, cap_xmm+96(%rip)\n movdqu %xmm7, cap_xmm+112(%rip)\n" \
  "lea 8(%rsp), %rsi\n mov %rsi, cap_rsp(%rip)\n lea cap_stack(%rip), %rdi\n mov $1024, %ecx\n rep movsb\n" \
  "sub $8, %rsp\n call cap_save_pointees\n add $8, %rsp\n" \
  restore "\n ret\n"
/* The sret pointer must come back in rax: SysV passed it in rdi, Win64 in rcx. */
__asm__(".text\n .globl capture_sysv\n .type capture_sysv,@function\ncapture_sysv:\n"
        CAPTURE_BODY("mov cap_gpr+56(%rip), %rax"));
__asm__(".text\n .globl capture_win64\n .type capture_win64,@function\ncapture_win64:\n"
        CAPTURE_BODY("mov cap_gpr+8(%rip), %rax"));
/* capture_ret(fn, buf): calls fn with buf as the hidden pointer of either
   convention and a Win64 home area, then records rax, rdx, xmm0, xmm1. */
__asm__(".text\n .globl capture_ret\n .type capture_ret,@function\ncapture_ret:\n"
        "push %rbx\n mov %rsi, %rbx\n mov %rdi, %rax\n mov %rbx, %rdi\n mov %rbx, %rcx\n"
        "sub $32, %rsp\n call *%rax\n add $32, %rsp\n"
        "mov %rax, cap_ret+0(%rip)\n mov %rdx, cap_ret+8(%rip)\n"
        "movdqu %xmm0, cap_ret+16(%rip)\n movdqu %xmm1, cap_ret+32(%rip)\n pop %rbx\n ret\n");
extern void capture_sysv(void);
extern void capture_win64(void);
/* Called through volatile pointers: a cast of a known function is folded into
   a direct call with the declaration's convention, ignoring the cast's ms_abi. */
void *volatile capture_ptr_sysv = (void *)capture_sysv;
void *volatile capture_ptr_win64 = (void *)capture_win64;
"#;

struct Captured<'a> {
    gpr: &'a [u8],
    xmm: &'a [u8],
    stack: &'a [u8],
    pointee: &'a [u8],
    rsp: u64,
}

impl Captured<'_> {
    fn read(&self, loc: Loc, size: usize) -> Vec<u8> {
        match loc {
            Loc::Gpr(g) => self.gpr[g as usize * 8..][..size].to_vec(),
            Loc::Xmm(n) | Loc::XmmAndGpr(n, _) => self.xmm[n as usize * 16..][..size].to_vec(),
            Loc::Stack(off) => self.stack[off as usize..][..size].to_vec(),
        }
    }

    fn pointee(&self, loc: Loc) -> &[u8] {
        match loc {
            Loc::Gpr(g) => &self.pointee[g as usize * 64..][..64],
            Loc::Stack(off) => &self.pointee[(16 + off as usize / 8) * 64..][..64],
            other => panic!("a pointer in {other:?}"),
        }
    }
}

/// Rebuilds the value image of one argument or result from its parts.
fn image(
    ty: &Type,
    parts: &[Part],
    read: impl Fn(Loc, usize) -> Vec<u8>,
) -> Result<Vec<u8>, String> {
    let mut img = vec![0u8; ty.size() as usize];
    for p in parts {
        let bytes = read(p.loc, p.size as usize);
        if let Loc::XmmAndGpr(_, g) = p.loc {
            let in_gpr = read(Loc::Gpr(g), p.size as usize);
            if in_gpr != bytes {
                return Err(format!(
                    "Win64 variadic float: xmm {bytes:02x?} but {g:?} {in_gpr:02x?}"
                ));
            }
        }
        img[p.offset as usize..][..p.size as usize].copy_from_slice(&bytes);
    }
    Ok(img)
}

fn check_classification(conv: CallConv, count: usize) {
    let mut rng = fastrand::Rng::with_seed(seed() ^ conv as u64);
    let cases = cases_for(&mut rng, count, 20, true);
    let mut w = CWriter::new();
    let mut body = String::new();
    let attr = c_attr(conv);
    for (k, case) in cases.iter().enumerate() {
        let rt = w.ret_ctype(case.sig.ret());
        let params = c_params(&mut w, &case.sig, false);
        writeln!(body, "void cap_{k}(void) {{").unwrap();
        let list = c_locals(&mut w, case, &mut body);
        writeln!(
            body,
            "  (({rt} ({attr} *)({params}))capture_ptr_{conv})({list});\n}}"
        )
        .unwrap();
        if let (Some(t), Some(v)) = (case.sig.ret(), &case.ret) {
            let ct = w.ctype(t);
            writeln!(
                body,
                "{attr} {ct} ret_{k}(void) {{ {ct} r; memcpy(&r, {}, sizeof r); return r; }}",
                c_bytes(v)
            )
            .unwrap();
        }
    }
    let so = compile_so(
        &format!("capture_{conv}"),
        &format!("{}{CAPTURE_ASM}{body}", w.head),
    );
    let lib = Lib::open(&so);
    let bridge = Bridge::libffi();
    let void_call = bridge
        .exit_stub(&"()->void".parse().unwrap(), CallConv::SysV)
        .unwrap();
    let area_stub = bridge
        .exit_stub(&"(i32)->ptr".parse().unwrap(), CallConv::SysV)
        .unwrap();
    let cap_ret_stub = bridge
        .exit_stub(&"(ptr,ptr)->void".parse().unwrap(), CallConv::SysV)
        .unwrap();
    let area = |which: u64, len: usize| -> &'static [u8] {
        let mut r = [0u64];
        // SAFETY: cap_area has signature (i32)->ptr.
        unsafe {
            area_stub
                .call(lib.addr("cap_area"), &[which], &mut r)
                .unwrap()
        };
        // SAFETY: cap_area returns static arrays of at least `len` bytes.
        unsafe { std::slice::from_raw_parts(r[0] as *const u8, len) }
    };
    let mut failures = Vec::new();
    for (k, case) in cases.iter().enumerate() {
        let layout: CallLayout = classify(&case.sig, conv);
        // SAFETY: cap_k is `void cap_k(void)`.
        unsafe {
            void_call
                .call(lib.addr(&format!("cap_{k}")), &[], &mut [])
                .unwrap()
        };
        let rsp = u64::from_le_bytes(area(5, 8).try_into().unwrap());
        let cap = Captured {
            gpr: area(0, 128),
            xmm: area(1, 128),
            stack: area(2, 1024),
            pointee: area(3, 144 * 64),
            rsp,
        };
        let mut problems = Vec::new();
        for (i, (a, v)) in layout.args.iter().zip(&case.args).enumerate() {
            let img = match &a.pass {
                ArgPass::Direct(parts) => image(&a.ty, parts, |l, n| cap.read(l, n)),
                ArgPass::ByRef { ptr, .. } => {
                    let p = u64::from_le_bytes(cap.read(*ptr, 8).try_into().unwrap());
                    if p < cap.rsp || p >= cap.rsp + 8192 {
                        Err(format!(
                            "by-reference pointer {p:#x} does not point into the caller's frame"
                        ))
                    } else {
                        Ok(cap.pointee(*ptr)[..a.ty.size() as usize].to_vec())
                    }
                }
            };
            if let Err(e) = img.and_then(|img| same_value(&a.ty, v, &img)) {
                problems.push(format!("arg {i} ({}) {:?}: {e}", a.ty, a.pass));
            }
        }
        if let Some(al) = layout.al
            && cap.gpr[0] != al
        {
            problems.push(format!("%al: gcc set {}, we say {al}", cap.gpr[0]));
        }
        if let RetPass::Sret { ptr } = layout.ret {
            let p = u64::from_le_bytes(cap.read(Loc::Gpr(ptr), 8).try_into().unwrap());
            if p < cap.rsp || p >= cap.rsp + 8192 {
                problems.push(format!(
                    "sret pointer in {ptr:?} is {p:#x}, not into the caller's frame"
                ));
            }
        }
        if let (Some(t), Some(v)) = (case.sig.ret(), &case.ret) {
            let mut buf = vec![0u64; 8];
            let buf_addr = buf.as_mut_ptr() as u64;
            // SAFETY: capture_ret(fn, buf) calls ret_k (no arguments) with a 64-byte buffer.
            unsafe {
                cap_ret_stub.call(
                    lib.addr("capture_ret"),
                    &[lib.addr(&format!("ret_{k}")) as u64, buf_addr],
                    &mut [],
                )
            }
            .unwrap();
            let regs = area(4, 48);
            let img = match &layout.ret {
                RetPass::Direct(parts) => image(t, parts, |l, n| match l {
                    Loc::Gpr(Gpr::Rax) => regs[..n].to_vec(),
                    Loc::Gpr(Gpr::Rdx) => regs[8..][..n].to_vec(),
                    Loc::Xmm(0) => regs[16..][..n].to_vec(),
                    Loc::Xmm(1) => regs[32..][..n].to_vec(),
                    other => panic!("result part in {other:?}"),
                }),
                RetPass::Sret { .. } => {
                    let rax = u64::from_le_bytes(regs[..8].try_into().unwrap());
                    if rax != buf_addr {
                        problems.push(format!(
                            "sret: rax {rax:#x} is not the hidden pointer {buf_addr:#x}"
                        ));
                    }
                    Ok(slots_bytes(&buf)[..t.size() as usize].to_vec())
                }
                RetPass::Void => unreachable!(),
            };
            if let Err(e) = img.and_then(|img| same_value(t, v, &img)) {
                problems.push(format!("result ({t}) {:?}: {e}", layout.ret));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{conv} {}: {}", case.sig, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} signatures disagree with gcc:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn sysv_classification_puts_every_part_where_gcc_does() {
    check_classification(CallConv::SysV, cases(300));
}

#[test]
fn win64_classification_puts_every_part_where_gcc_does() {
    check_classification(CallConv::Win64, cases(300));
}

/// C callees that record what they receive, called through exit stubs.
fn check_exit_against_c(conv: CallConv, count: usize) {
    let mut rng = fastrand::Rng::with_seed(seed() ^ 0xe1 ^ conv as u64);
    let mut cases = cases_for(&mut rng, count, 24, true);
    // And as many made for the register stubs: small struct results of
    // every class mix, arguments in registers.
    cases.extend((0..count).map(|_| {
        let sig = rand_register_sig(&mut rng);
        case_of(&mut rng, sig)
    }));
    let must_take = cases.len();
    cases.extend(
        packed_as_bytes(conv)
            .into_iter()
            .map(|s| case_of(&mut rng, s)),
    );
    let mut w = CWriter::new();
    let mut body = String::from("unsigned char rec[8192];\nvoid *rec_area(void) { return rec; }\n");
    let attr = c_attr(conv);
    let (va_list, va_start, va_end) = match conv {
        CallConv::SysV => ("va_list", "va_start", "va_end"),
        CallConv::Win64 => (
            "__builtin_ms_va_list",
            "__builtin_ms_va_start",
            "__builtin_ms_va_end",
        ),
    };
    for (k, case) in cases.iter().enumerate() {
        let rt = w.ret_ctype(case.sig.ret());
        let params = c_params(&mut w, &case.sig, true);
        writeln!(body, "{attr} {rt} recv_{k}({params}) {{").unwrap();
        let mut off = 0;
        let fixed = case.sig.fixed_count();
        for (i, t) in case.sig.params().iter().enumerate() {
            if i == fixed {
                writeln!(body, "  {va_list} ap; {va_start}(ap, a{});", fixed - 1).unwrap();
            }
            if i >= fixed {
                let ct = w.ctype(t);
                if conv == CallConv::Win64 && !tierbridge::abi::win64_in_register(t) {
                    // gcc's ms_abi va_arg reads a by-reference aggregate by value,
                    // although its callers pass a pointer (ABI.md, "gcc quirks").
                    writeln!(body, "  {ct} a{i} = *__builtin_va_arg(ap, {ct} *);").unwrap();
                } else {
                    writeln!(body, "  {ct} a{i} = __builtin_va_arg(ap, {ct});").unwrap();
                }
            }
            writeln!(body, "  memcpy(rec + {off}, &a{i}, sizeof a{i});").unwrap();
            off += t.size().next_multiple_of(8);
        }
        if case.sig.params().len() > fixed {
            writeln!(body, "  {va_end}(ap);").unwrap();
        }
        if let Some(v) = &case.ret {
            writeln!(
                body,
                "  {rt} r; memcpy(&r, {}, sizeof r); return r;",
                c_bytes(v)
            )
            .unwrap();
        }
        body.push_str("}\n");
    }
    let so = compile_so(&format!("recv_{conv}"), &format!("{}{body}", w.head));
    let lib = Lib::open(&so);
    for (name, bridge) in all_bridges() {
        let area_stub = bridge
            .exit_stub(&"()->ptr".parse().unwrap(), CallConv::SysV)
            .unwrap();
        let mut r = [0u64];
        // SAFETY: rec_area is `void *rec_area(void)`.
        unsafe { area_stub.call(lib.addr("rec_area"), &[], &mut r).unwrap() };
        // SAFETY: rec is a static 8192-byte array.
        let rec = unsafe { std::slice::from_raw_parts(r[0] as *const u8, 8192) };
        let (mut failures, mut unsupported) = (Vec::new(), 0);
        for (k, case) in cases.iter().enumerate() {
            let stub = match bridge.exit_stub(&case.sig, conv) {
                Ok(s) => s,
                Err(ThunkError::Unsupported { reason, .. }) => {
                    assert!(reason.contains("packed"), "{}: {reason}", case.sig);
                    assert!(
                        k < must_take,
                        "{name} {conv} refused {}: {reason}",
                        case.sig
                    );
                    unsupported += 1;
                    continue;
                }
                Err(e) => panic!("{}: {e}", case.sig),
            };
            let slots = case_slots(case);
            let mut ret = vec![0u64; case.sig.ret_slots()];
            // SAFETY: recv_k has exactly this signature and convention.
            unsafe { stub.call(lib.addr(&format!("recv_{k}")), &slots, &mut ret) }.unwrap();
            check_received(&format!("{name} {conv}"), case, rec, &ret, &mut failures);
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // Only libffi may refuse (packed structs); generated code takes every case.
        let allowed = if bridge.kind() == BackendKind::Libffi {
            cases.len() / 4
        } else {
            0
        };
        assert!(
            unsupported <= allowed,
            "{name}: {unsupported} unsupported cases"
        );
        eprintln!(
            "{name} {conv}: {unsupported} of {} cases refused",
            cases.len()
        );
    }
    // Cranelift code calling the same callees through the call that
    // tierbridge::cranelift lowers from the classification: what they
    // receive and return must be what the exit stubs gave (every
    // non-variadic case).
    #[cfg(feature = "cranelift")]
    {
        // The generated backend's memory; in a build without it, memory
        // made here (Cranelift needs no generated backend).
        let mem = if cfg!(tierbridge_codegen) {
            tierbridge::tier::CodeMemory::of(&support::generated())
        } else {
            tierbridge::tier::CodeMemory::with_strategy(
                tierbridge::thunks::ExecStrategy::DualMapping,
            )
        }
        .unwrap();
        // SAFETY: rec_area is `void *rec_area(void)`.
        let area: extern "C" fn() -> *const u8 =
            unsafe { std::mem::transmute(lib.addr("rec_area")) };
        // SAFETY: rec is a static 8192-byte array.
        let rec = unsafe { std::slice::from_raw_parts(area(), 8192) };
        let (mut failures, mut lowered) = (Vec::new(), 0);
        for (k, case) in cases.iter().enumerate() {
            if case.sig.is_variadic() {
                continue;
            }
            let code = tierbridge::cranelift::exit_function(&case.sig, conv, &mem)
                .unwrap_or_else(|e| panic!("{conv} {}: {e}", case.sig));
            // SAFETY: exit_function's code is `extern "C" fn(target, args, ret)`.
            let call: extern "C" fn(*const c_void, *const u64, *mut u64) = unsafe { code.as_fn(0) };
            let slots = case_slots(case);
            let mut ret = vec![0u64; case.sig.ret_slots().max(1)];
            call(
                lib.addr(&format!("recv_{k}")),
                slots.as_ptr(),
                ret.as_mut_ptr(),
            );
            ret.truncate(case.sig.ret_slots());
            check_received(&format!("cranelift {conv}"), case, rec, &ret, &mut failures);
            lowered += 1;
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(
            lowered > cases.len() / 2,
            "{lowered} of {} cases lowered",
            cases.len()
        );
        eprintln!(
            "cranelift {conv}: {lowered} of {} cases called",
            cases.len()
        );
    }
}

#[test]
fn exit_stubs_deliver_what_c_callees_receive_sysv() {
    check_exit_against_c(CallConv::SysV, cases(300));
}

#[test]
fn exit_stubs_deliver_what_c_callees_receive_win64() {
    check_exit_against_c(CallConv::Win64, cases(300));
}

/// What the host saw in one entry call.
#[derive(Default)]
struct Seen {
    args: Vec<u64>,
    varargs: Vec<u64>,
}

/// C callers calling entry points.
fn check_entry_against_c(conv: CallConv, count: usize) {
    let mut rng = fastrand::Rng::with_seed(seed() ^ 0xe2 ^ conv as u64);
    // The variadic cursor reads scalars only: no struct varargs here.
    let mut cases = cases_for(&mut rng, count, 24, false);
    let must_take = cases.len();
    cases.extend(
        packed_as_bytes(conv)
            .into_iter()
            .map(|s| case_of(&mut rng, s)),
    );
    let mut w = CWriter::new();
    let mut body = String::new();
    let attr = c_attr(conv);
    for (k, case) in cases.iter().enumerate() {
        let rt = w.ret_ctype(case.sig.ret());
        let params = c_params(&mut w, &case.sig, false);
        writeln!(body, "void send_{k}(void *fp, unsigned char *out) {{").unwrap();
        let list = c_locals(&mut w, case, &mut body);
        if case.sig.ret().is_some() {
            writeln!(body, "  {rt} r = (({rt} ({attr} *)({params}))fp)({list});\n  memcpy(out, &r, sizeof r);\n}}").unwrap();
        } else {
            writeln!(body, "  (({rt} ({attr} *)({params}))fp)({list});\n}}").unwrap();
        }
    }
    let so = compile_so(&format!("send_{conv}"), &format!("{}{body}", w.head));
    let lib = Lib::open(&so);
    for (name, bridge) in all_bridges() {
        let send = bridge
            .exit_stub(&"(ptr,ptr)->void".parse().unwrap(), CallConv::SysV)
            .unwrap();
        let (mut failures, mut unsupported) = (Vec::new(), 0);
        for (k, case) in cases.iter().enumerate() {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let ret_slots = case
                .ret
                .as_ref()
                .zip(case.sig.ret())
                .map(|(v, t)| value_slots(t, v))
                .unwrap_or_default();
            let var_types: Vec<Scalar> = case.sig.params()[case.sig.fixed_count()..]
                .iter()
                .map(|t| t.as_scalar().unwrap())
                .collect();
            let (seen2, ret2) = (seen.clone(), ret_slots.clone());
            let host = move |call: EntryCall<'_>| -> Result<(), tierbridge::host::HostError> {
                let mut s = seen2.lock().unwrap();
                s.args = call.args.to_vec();
                if let Some(mut va) = call.varargs {
                    for t in &var_types {
                        let v = match t {
                            Scalar::I32 => va.next_i32().map(|v| v as i64 as u64),
                            Scalar::U32 => va.next_u32().map(u64::from),
                            Scalar::I64 => va.next_i64().map(|v| v as u64),
                            Scalar::F64 => va.next_f64().map(f64::to_bits),
                            Scalar::Ptr => va.next_ptr().map(|p| p as u64),
                            other => panic!("vararg {other}"),
                        };
                        s.varargs.push(v.ok_or("vararg out of reach")?);
                    }
                }
                call.ret.copy_from_slice(&ret2);
                Ok(())
            };
            let d = Dispatcher::from_host(Arc::new(host), FailurePolicy::Report);
            let declared = case.sig.declared();
            let ep = match bridge.entry_point(&declared, conv, &d, k as u64) {
                Ok(ep) => ep,
                Err(ThunkError::Unsupported { reason, .. }) => {
                    assert!(reason.contains("packed"), "{}: {reason}", case.sig);
                    assert!(
                        k < must_take,
                        "{name} {conv} refused {}: {reason}",
                        case.sig
                    );
                    unsupported += 1;
                    continue;
                }
                Err(e) => panic!("{}: {e}", case.sig),
            };
            let mut out = vec![0u64; 8];
            // SAFETY: send_k(fp, out) calls fp with this signature and writes the result to out.
            unsafe {
                send.call(
                    lib.addr(&format!("send_{k}")),
                    &[ep.code_ptr() as u64, out.as_mut_ptr() as u64],
                    &mut [],
                )
            }
            .unwrap();
            let s = seen.lock().unwrap();
            let fixed = case.sig.fixed_count();
            let want_fixed: Vec<u64> = case.sig.params()[..fixed]
                .iter()
                .zip(&case.args)
                .flat_map(|(t, v)| value_slots(t, v))
                .collect();
            // Compare slot by slot but struct padding only through same_value.
            let mut at = 0;
            for (i, (t, v)) in case.sig.params()[..fixed]
                .iter()
                .zip(&case.args)
                .enumerate()
            {
                let n = t.slots() as usize;
                let got = slots_bytes(s.args.get(at..at + n).unwrap_or(&[]));
                if got.len() < t.size() as usize {
                    failures.push(format!("{name} {conv} {} arg {i}: missing slots", case.sig));
                } else if let Err(e) = same_value(t, v, &got) {
                    failures.push(format!("{name} {conv} {} arg {i}: {e}", case.sig));
                } else if t.as_scalar().is_some() && s.args[at] != value_slots(t, v)[0] {
                    // The slot convention: a scalar's slot is extended as its type says.
                    let (want, got) = (value_slots(t, v)[0], s.args[at]);
                    failures.push(format!(
                        "{name} {conv} {} arg {i} ({t}): slot {got:#x}, want {want:#x}",
                        case.sig
                    ));
                }
                at += n;
            }
            assert_eq!(s.args.len(), want_fixed.len());
            let want_var: Vec<u64> = case.sig.params()[fixed..]
                .iter()
                .zip(&case.args[fixed..])
                .flat_map(|(t, v)| value_slots(t, v))
                .collect();
            if s.varargs != want_var {
                failures.push(format!(
                    "{name} {conv} {} varargs: expected {want_var:x?}, got {:x?}",
                    case.sig, s.varargs
                ));
            }
            if let (Some(t), Some(v)) = (case.sig.ret(), &case.ret)
                && let Err(e) = same_value(t, v, &slots_bytes(&out))
            {
                failures.push(format!("{name} {conv} {} result: {e}", case.sig));
            }
            drop(ep);
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // Only libffi may refuse (packed structs); generated code takes every case.
        let allowed = if bridge.kind() == BackendKind::Libffi {
            cases.len() / 4
        } else {
            0
        };
        assert!(
            unsupported <= allowed,
            "{name}: {unsupported} unsupported cases"
        );
        eprintln!(
            "{name} {conv}: {unsupported} of {} cases refused",
            cases.len()
        );
    }
}

#[test]
fn entry_points_receive_what_c_callers_pass_sysv() {
    check_entry_against_c(CallConv::SysV, cases(300));
}

#[test]
fn entry_points_receive_what_c_callers_pass_win64() {
    check_entry_against_c(CallConv::Win64, cases(300));
}

#[test]
fn part_kinds_are_consistent_with_the_value_they_carry() {
    // Pure self-consistency over many random signatures: parts of an argument
    // never overlap, stay inside the value, and stack parts are 8-aligned and
    // within stack_bytes. (The gcc tests above are the truth; this catches
    // layouts those tests would only see as crashes.)
    let mut rng = fastrand::Rng::with_seed(seed());
    for _ in 0..cases(2000) {
        let sig = rand_sig(&mut rng, 32, 25, true);
        for conv in CallConv::ALL {
            let l = classify(&sig, conv);
            assert_eq!(l.stack_bytes % 16, 0);
            for a in &l.args {
                if let ArgPass::Direct(parts) = &a.pass {
                    let mut covered = 0;
                    for p in parts {
                        assert!(p.offset + p.size <= a.ty.size().max(p.size), "{sig}: {p:?}");
                        if let Loc::Stack(off) = p.loc {
                            assert_eq!(off % 8, 0);
                            assert!(off + p.size <= l.stack_bytes, "{sig} {conv}: {p:?}");
                        }
                        if p.kind == PartKind::Memory {
                            assert_eq!(p.size, a.ty.size());
                        }
                        covered += p.size;
                    }
                    assert_eq!(
                        covered,
                        a.ty.size(),
                        "{sig} {conv}: parts of {} cover {covered} bytes",
                        a.ty
                    );
                }
            }
        }
    }
}

#[allow(dead_code)]
fn unused(_: *const c_void) {}
