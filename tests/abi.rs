//! The `abi` layer: parsing, layout, classification tables worked out by hand
//! from the ABI documents, and the registry.

use std::collections::HashSet;
use std::sync::Arc;

use proptest::prelude::*;
use tierbridge::abi::{
    AbiError, ArgPass, CallConv, Ext, Gpr, Loc, MAX_NESTING, MAX_PARAMS, Part, PartKind, Registry,
    RetPass, Scalar, Signature, StructType, Type, classify,
};

fn sig(s: &str) -> Signature {
    Signature::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

// ---------------------------------------------------------------- parsing

#[test]
fn every_example_of_the_grammar_parses_and_prints_back_unchanged() {
    for s in [
        "()->void",
        "(u32,i16,u8)->i64",
        "(ptr,...)->f64",
        "({f32,i32})->{f32,i32}",
        "({{f32,i16},f64})->f64",
        "({[u8;17]})->{[u8;17]}",
        "(packed{u16,u8,u32})->packed{u16,u8,u32}",
        "(i32,{[f32;2],f64},f32)->f64",
        "(...)->i32",
        "(bool,ptr)->bool",
    ] {
        assert_eq!(sig(s).to_string(), s);
    }
}

#[test]
fn spaces_around_tokens_are_accepted() {
    let s = sig("  ( i32 , packed { u8 , [ f32 ; 3 ] } , ... ) -> { f64 }  ");
    assert_eq!(s.to_string(), "(i32,packed{u8,[f32;3]},...)->{f64}");
}

#[test]
fn a_call_site_signature_lists_its_varargs_after_the_ellipsis() {
    let s = sig("(ptr,...)->i32")
        .with_varargs(&[Scalar::F64.into(), Scalar::I32.into()])
        .unwrap();
    assert_eq!(s.to_string(), "(ptr,...,f64,i32)->i32");
    assert_eq!(sig("(ptr,...,f64,i32)->i32"), s);
    assert_eq!(s.fixed_count(), 1);
    assert_eq!(s.declared(), sig("(ptr,...)->i32"));
}

fn parse_err(s: &str) -> (usize, &'static str) {
    match Signature::parse(s) {
        Err(AbiError::Parse {
            offset, expected, ..
        }) => (offset, expected),
        other => panic!("{s}: expected a parse error, got {other:?}"),
    }
}

#[test]
fn malformed_text_reports_the_byte_offset_and_what_was_expected() {
    assert_eq!(parse_err("i32->i32"), (0, "`(`"));
    assert_eq!(parse_err("(i32 i32)->i32").0, 5);
    assert_eq!(parse_err("(i32,)->i32").0, 5);
    assert_eq!(parse_err("(i33)->i32").0, 1);
    assert_eq!(parse_err("(i32)i32"), (5, "`->`"));
    assert_eq!(parse_err("(i32)->"), (7, parse_err("(i32)->").1));
    assert_eq!(parse_err("({i32)->void").0, 5);
    assert_eq!(parse_err("({[i32;x]})->void").0, 7);
    assert_eq!(parse_err("({[i32 4]})->void").0, 7);
    assert_eq!(parse_err("(i32)->i32 junk"), (11, "end of input"));
    assert_eq!(parse_err("(...,...)->void").0, 8);
    let err = Signature::parse("(i32").unwrap_err().to_string();
    assert!(
        err.contains("byte 4") && err.contains("end of input"),
        "{err}"
    );
}

#[test]
fn invalid_types_are_typed_errors() {
    assert_eq!(Signature::parse("(void)->i32"), Err(AbiError::VoidParam));
    assert_eq!(
        Signature::parse("(i32,void)->i32"),
        Err(AbiError::VoidParam)
    );
    assert_eq!(Signature::parse("({})->void"), Err(AbiError::EmptyStruct));
    assert_eq!(
        Signature::parse("({[u8;0]})->void"),
        Err(AbiError::EmptyArray)
    );
    let deep = format!(
        "({}i32{})->void",
        "{".repeat(MAX_NESTING + 1),
        "}".repeat(MAX_NESTING + 1)
    );
    assert_eq!(
        Signature::parse(&deep),
        Err(AbiError::NestingTooDeep { max: MAX_NESTING })
    );
    let ok_deep = format!(
        "({}i32{})->void",
        "{".repeat(MAX_NESTING),
        "}".repeat(MAX_NESTING)
    );
    assert!(Signature::parse(&ok_deep).is_ok());
    assert!(matches!(
        Signature::parse("({[u8;70000]})->void"),
        Err(AbiError::StructTooLarge { .. })
    ));
    let many = format!("({})->void", vec!["i32"; MAX_PARAMS + 1].join(","));
    assert_eq!(
        Signature::parse(&many),
        Err(AbiError::TooManyParams {
            count: MAX_PARAMS + 1,
            max: MAX_PARAMS
        })
    );
    assert!(Signature::parse(&format!("({})->void", vec!["i32"; MAX_PARAMS].join(","))).is_ok());
}

#[test]
fn varargs_must_be_promoted_and_only_given_to_variadic_signatures() {
    let v = sig("(i32,...)->void");
    for bad in [Scalar::F32, Scalar::I8, Scalar::U16, Scalar::Bool] {
        assert!(matches!(
            v.with_varargs(&[bad.into()]),
            Err(AbiError::UnpromotedVararg { index: 1, .. })
        ));
    }
    assert!(matches!(
        sig("(i32)->void").with_varargs(&[]),
        Err(AbiError::NotVariadic(_))
    ));
    // The text of a call site is held to the same rule (found by fuzzing:
    // the parser took what with_varargs refuses).
    for bad in ["f32", "i8", "u16", "bool"] {
        assert!(matches!(
            Signature::parse(&format!("(i32,...,i64,{bad})->void")),
            Err(AbiError::UnpromotedVararg { index: 2, .. })
        ));
    }
    assert!(Signature::parse("(i32,...,i64,u32,f64,ptr,{u8})->void").is_ok());
    let once = v.with_varargs(&[Scalar::I64.into()]).unwrap();
    assert!(matches!(
        once.with_varargs(&[]),
        Err(AbiError::VarargsAlreadyGiven(_))
    ));
}

#[test]
fn the_builder_and_the_parser_agree() {
    let inner = StructType::new(
        vec![(Scalar::F32.into(), None), (Scalar::I16.into(), None)],
        false,
    )
    .unwrap();
    let outer = StructType::new(
        vec![(inner.into(), None), (Scalar::F64.into(), None)],
        false,
    )
    .unwrap();
    let built = Signature::builder()
        .param(Scalar::Ptr)
        .param(outer)
        .variadic()
        .returns(Scalar::U8)
        .build()
        .unwrap();
    assert_eq!(built, sig("(ptr,{{f32,i16},f64},...)->u8"));
}

fn arb_type() -> impl Strategy<Value = Type> {
    let scalar = (0..Scalar::ALL.len()).prop_map(|i| Type::Scalar(Scalar::ALL[i]));
    scalar.prop_recursive(4, 24, 4, |inner| {
        (
            prop::collection::vec((inner, prop::option::of(1u32..4)), 1..4),
            any::<bool>(),
        )
            .prop_filter_map("valid struct", |(fields, packed)| {
                StructType::new(fields, packed).ok().map(Type::from)
            })
    })
}

fn arb_sig() -> impl Strategy<Value = Signature> {
    (
        prop::collection::vec(arb_type(), 0..6),
        prop::option::of(arb_type()),
        any::<bool>(),
    )
        .prop_map(|(params, ret, variadic)| {
            if variadic {
                Signature::new_variadic(params, ret)
            } else {
                Signature::new(params, ret)
            }
            .unwrap()
        })
}

proptest! {
    #[test]
    fn display_then_parse_gives_the_same_signature(s in arb_sig()) {
        let text = s.to_string();
        prop_assert_eq!(Signature::parse(&text).unwrap(), s.clone());
        // and with spaces between every token
        let spaced: String = text.chars().flat_map(|c| if "(){}[];,".contains(c) { vec![' ', c, ' '] } else { vec![c] }).collect();
        prop_assert_eq!(Signature::parse(&spaced.replace("->", " -> ")).unwrap(), s);
    }

    #[test]
    fn parsing_never_panics(text in "[ -~]{0,40}") {
        let _ = Signature::parse(&text);
    }
}

// ---------------------------------------------------------------- layout

#[test]
fn struct_layout_follows_the_c_rules_by_hand() {
    // {i8,bool,u8}: three bytes, no padding, alignment 1.
    let t = sig("({i8,bool,u8})->void").params()[0].clone();
    assert_eq!((t.size(), t.align()), (3, 1));
    // {{f32,i16},f64}: inner is 8 bytes (2 of tail padding) aligned 4; f64 at 8.
    let t = sig("({{f32,i16},f64})->void").params()[0].clone();
    assert_eq!((t.size(), t.align()), (16, 8));
    assert_eq!(
        t.flatten(),
        vec![(0, Scalar::F32), (4, Scalar::I16), (8, Scalar::F64)]
    );
    // {i64,f64,i32}: 20 bytes of fields, rounded up to 24.
    assert_eq!(sig("({i64,f64,i32})->void").params()[0].size(), 24);
    // packed{u16,u8,u32}: 7 bytes, u32 at the unaligned offset 3.
    let t = sig("(packed{u16,u8,u32})->void").params()[0].clone();
    assert_eq!((t.size(), t.align()), (7, 1));
    assert_eq!(t.flatten()[2], (3, Scalar::U32));
    // {u8,packed{i32}}: the packed struct has alignment 1, so its i32 sits at 1.
    assert_eq!(
        sig("({u8,packed{i32}})->void").params()[0].flatten()[1],
        (1, Scalar::I32)
    );
    // [u8;17] is 17 bytes aligned 1.
    assert_eq!(sig("({[u8;17]})->void").params()[0].size(), 17);
}

// ---------------------------------------------------------------- classification, SysV
// System V AMD64 psABI 1.0, section 3.2.3 "Parameter Passing": INTEGER arguments
// in rdi, rsi, rdx, rcx, r8, r9; SSE in xmm0-7; aggregates up to 16 bytes split
// into eightbytes classified INTEGER or SSE; larger or unaligned ones MEMORY; an
// aggregate that does not fit the remaining registers goes wholly to memory;
// MEMORY results through a hidden pointer in rdi, returned in rax.

fn part(offset: u32, size: u32, kind: PartKind, loc: Loc) -> Part {
    Part {
        offset,
        size,
        kind,
        loc,
    }
}

fn parts(a: &ArgPass) -> Vec<Part> {
    match a {
        ArgPass::Direct(p) => p.to_vec(),
        other => panic!("not direct: {other:?}"),
    }
}

#[test]
fn sysv_scalars_take_registers_by_class_then_the_stack_in_order() {
    // sample_many_mixed_22-like: 6 INTEGER then stack; 8 SSE then stack (3.2.3 step 4).
    let l = classify(
        &sig("(i64,f64,i64,i64,i64,i64,i64,i64,f32,f64,f64,f64,f64,f64,f64,f64,f64)->void"),
        CallConv::SysV,
    );
    let locs: Vec<Loc> = l.args.iter().map(|a| parts(&a.pass)[0].loc).collect();
    use Gpr::*;
    assert_eq!(
        locs,
        vec![
            Loc::Gpr(Rdi),
            Loc::Xmm(0),
            Loc::Gpr(Rsi),
            Loc::Gpr(Rdx),
            Loc::Gpr(Rcx),
            Loc::Gpr(R8),
            Loc::Gpr(R9),
            Loc::Stack(0),
            Loc::Xmm(1),
            Loc::Xmm(2),
            Loc::Xmm(3),
            Loc::Xmm(4),
            Loc::Xmm(5),
            Loc::Xmm(6),
            Loc::Xmm(7),
            Loc::Stack(8),
            Loc::Stack(16),
        ]
    );
    assert_eq!(l.stack_bytes, 32); // 24 rounded up to 16 (3.2.2: rsp+8 aligned at entry)
    assert_eq!(l.al, None);
}

#[test]
fn sysv_structs_split_into_eightbytes() {
    use Gpr::*;
    // {f32,i32}: one eightbyte holding an int -> INTEGER.
    let l = classify(&sig("({f32,i32})->{f32,i32}"), CallConv::SysV);
    assert_eq!(
        parts(&l.args[0].pass),
        vec![part(0, 8, PartKind::IntBytes, Loc::Gpr(Rdi))]
    );
    assert_eq!(
        l.ret,
        RetPass::Direct(
            [part(0, 8, PartKind::IntBytes, Loc::Gpr(Rax))]
                .into_iter()
                .collect()
        )
    );
    // {f32,f32,i32}: [SSE, INTEGER]; the second eightbyte is 4 bytes.
    let l = classify(&sig("({f32,f32,i32})->{f32,f32,i32}"), CallConv::SysV);
    assert_eq!(
        parts(&l.args[0].pass),
        vec![
            part(0, 8, PartKind::SseBytes, Loc::Xmm(0)),
            part(8, 4, PartKind::IntBytes, Loc::Gpr(Rdi))
        ]
    );
    // Results: INTEGER in rax then rdx, SSE in xmm0 then xmm1 (3.2.3, "Returning of Values").
    assert_eq!(
        l.ret,
        RetPass::Direct(
            [
                part(0, 8, PartKind::SseBytes, Loc::Xmm(0)),
                part(8, 4, PartKind::IntBytes, Loc::Gpr(Rax))
            ]
            .into_iter()
            .collect()
        )
    );
    // {i64,f64} result: rax + xmm0. {f64,f64,f64}: 24 bytes -> MEMORY, sret in rdi.
    let l = classify(&sig("(f64)->{f64,f64,f64}"), CallConv::SysV);
    assert_eq!(l.ret, RetPass::Sret { ptr: Rdi });
    assert_eq!(parts(&l.args[0].pass)[0].loc, Loc::Xmm(0));
    // The hidden pointer takes rdi, so the first integer argument moves to rsi.
    let l = classify(
        &sig("(i16,u16,i32,u32,i64,u64)->{i64,f64,i32}"),
        CallConv::SysV,
    );
    assert_eq!(l.ret, RetPass::Sret { ptr: Rdi });
    assert_eq!(parts(&l.args[0].pass)[0].loc, Loc::Gpr(Rsi));
    assert_eq!(parts(&l.args[5].pass)[0].loc, Loc::Stack(0));
}

#[test]
fn sysv_unaligned_packed_and_large_structs_are_memory() {
    let l = classify(
        &sig("(packed{u16,u8,u32},{[u8;17]},packed{u32,u16})->void"),
        CallConv::SysV,
    );
    assert_eq!(
        parts(&l.args[0].pass),
        vec![part(0, 7, PartKind::Memory, Loc::Stack(0))]
    );
    assert_eq!(
        parts(&l.args[1].pass),
        vec![part(0, 17, PartKind::Memory, Loc::Stack(8))]
    );
    // packed but every field aligned: classified like an ordinary struct (FORMAT.md 2.2).
    assert_eq!(
        parts(&l.args[2].pass),
        vec![part(0, 6, PartKind::IntBytes, Loc::Gpr(Gpr::Rdi))]
    );
    assert_eq!(l.stack_bytes, 32); // 8 + 24 = 32
    // {u8,packed{i32}}: the i32 is at offset 1 of the outermost struct -> MEMORY.
    let l = classify(&sig("({u8,packed{i32}})->void"), CallConv::SysV);
    assert_eq!(parts(&l.args[0].pass)[0].kind, PartKind::Memory);
}

#[test]
fn sysv_a_struct_that_no_longer_fits_goes_wholly_to_the_stack_while_later_scalars_get_registers() {
    // sample_spill_int: five integers take rdi..r8; {[i32;4]} needs two INTEGER
    // registers but only r9 is left, so it goes to the stack; the next i32 gets r9.
    let l = classify(
        &sig("(u8,i16,i32,i64,u64,{[i32;4]},i32,{i8,bool,u8})->i64"),
        CallConv::SysV,
    );
    assert_eq!(
        parts(&l.args[5].pass),
        vec![part(0, 16, PartKind::Memory, Loc::Stack(0))]
    );
    assert_eq!(parts(&l.args[6].pass)[0].loc, Loc::Gpr(Gpr::R9));
    assert_eq!(parts(&l.args[7].pass)[0].loc, Loc::Stack(16));
}

#[test]
fn sysv_variadic_calls_put_the_vector_register_count_in_al() {
    let s = sig("(ptr,...)->f64")
        .with_varargs(&[Scalar::F64.into(), Scalar::I32.into(), Scalar::F64.into()])
        .unwrap();
    assert_eq!(classify(&s, CallConv::SysV).al, Some(2));
    assert_eq!(classify(&sig("(ptr,...)->f64"), CallConv::SysV).al, Some(0));
}

// ---------------------------------------------------------------- classification, Win64
// Microsoft "x64 calling convention": the first four arguments by position in
// rcx/rdx/r8/r9 or xmm0-3; a 32-byte home area; the rest on the stack above it;
// aggregates of 1, 2, 4 or 8 bytes as integers, others by reference to a
// caller-made copy; results in rax or xmm0, or through a hidden pointer in rcx
// returned in rax; varargs floats also in the matching integer register.

#[test]
fn win64_arguments_take_registers_by_position() {
    use Gpr::*;
    // sample_ms_many7: (f64,i8,f32,u16,i64,f32,u32)->f64
    let l = classify(&sig("(f64,i8,f32,u16,i64,f32,u32)->f64"), CallConv::Win64);
    let locs: Vec<Loc> = l.args.iter().map(|a| parts(&a.pass)[0].loc).collect();
    assert_eq!(
        locs,
        vec![
            Loc::Xmm(0),
            Loc::Gpr(Rdx),
            Loc::Xmm(2),
            Loc::Gpr(R9),
            Loc::Stack(32),
            Loc::Stack(40),
            Loc::Stack(48)
        ]
    );
    assert_eq!(l.stack_bytes, 64); // 32 home + 24, rounded up to 16
    assert_eq!(classify(&sig("()->void"), CallConv::Win64).stack_bytes, 32);
}

#[test]
fn win64_aggregates_travel_as_integers_or_by_reference() {
    use Gpr::*;
    // sample_ms_structs: ({f32,i32},{i8,bool,u8},{[f32;2],f64},f32)->{f32,i32}
    let l = classify(
        &sig("({f32,i32},{i8,bool,u8},{[f32;2],f64},f32)->{f32,i32}"),
        CallConv::Win64,
    );
    assert_eq!(
        parts(&l.args[0].pass),
        vec![part(0, 8, PartKind::IntBytes, Loc::Gpr(Rcx))]
    );
    assert_eq!(
        l.args[1].pass,
        ArgPass::ByRef {
            ptr: Loc::Gpr(Rdx),
            copy: 0
        }
    ); // 3 bytes
    assert_eq!(
        l.args[2].pass,
        ArgPass::ByRef {
            ptr: Loc::Gpr(R8),
            copy: 16
        }
    ); // 16 bytes
    assert_eq!(parts(&l.args[3].pass)[0].loc, Loc::Xmm(3));
    assert_eq!(l.copy_bytes, 32);
    assert_eq!(
        l.ret,
        RetPass::Direct(
            [part(0, 8, PartKind::IntBytes, Loc::Gpr(Rax))]
                .into_iter()
                .collect()
        )
    );
    // sample_ms_ret_s12: a 12-byte result -> hidden pointer in rcx, arguments shift.
    let l = classify(&sig("(f32,i32)->{f32,f32,i32}"), CallConv::Win64);
    assert_eq!(l.ret, RetPass::Sret { ptr: Rcx });
    assert_eq!(parts(&l.args[0].pass)[0].loc, Loc::Xmm(1));
    assert_eq!(parts(&l.args[1].pass)[0].loc, Loc::Gpr(R8));
}

#[test]
fn win64_variadic_floats_travel_in_both_registers() {
    let s = sig("(i32,...)->f64")
        .with_varargs(&[
            Scalar::F64.into(),
            Scalar::F64.into(),
            Scalar::F64.into(),
            Scalar::F64.into(),
        ])
        .unwrap();
    let l = classify(&s, CallConv::Win64);
    assert_eq!(parts(&l.args[1].pass)[0].loc, Loc::XmmAndGpr(1, Gpr::Rdx));
    assert_eq!(parts(&l.args[3].pass)[0].loc, Loc::XmmAndGpr(3, Gpr::R9));
    assert_eq!(parts(&l.args[4].pass)[0].loc, Loc::Stack(32));
    assert_eq!(l.al, None);
}

#[test]
fn narrow_integers_carry_their_extension_rule() {
    let l = classify(
        &sig("(i8,u16,bool,i32,u32,i64,f32,{i8})->void"),
        CallConv::SysV,
    );
    let ext: Vec<Ext> = l.args.iter().map(|a| parts(&a.pass)[0].ext()).collect();
    use Ext::*;
    assert_eq!(ext, vec![Sign, Zero, Zero, Sign, Zero, None, None, None]);
}

#[test]
fn slots_are_one_per_scalar_and_ceil_size_over_8_per_struct() {
    let l = classify(
        &sig("(i8,{[u8;17]},f32,{f32,f32,f32})->{i64,f64,i32}"),
        CallConv::SysV,
    );
    let slots: Vec<(u32, u32)> = l.args.iter().map(|a| (a.slot, a.slots)).collect();
    assert_eq!(slots, vec![(0, 1), (1, 3), (4, 1), (5, 2)]);
    assert_eq!((l.arg_slots, l.ret_slots), (7, 3));
}

// ---------------------------------------------------------------- conventions

#[test]
fn callconv_names_round_trip_and_the_host_is_known() {
    for c in CallConv::ALL {
        assert_eq!(c.to_string().parse::<CallConv>().unwrap(), c);
    }
    assert_eq!(
        "fastcall".parse::<CallConv>(),
        Err(AbiError::UnknownCallConv("fastcall".into()))
    );
    #[cfg(all(target_arch = "x86_64", unix))]
    assert_eq!(CallConv::host().unwrap(), CallConv::SysV);
}

// ---------------------------------------------------------------- registry

#[test]
fn equal_shapes_share_an_id_and_different_shapes_do_not() {
    let r = Registry::new();
    let a = r.intern(&sig("(i32,{f32,f32})->f64"));
    assert_eq!(r.intern(&sig("( i32 , { f32 , f32 } ) -> f64")), a);
    assert_ne!(r.intern(&sig("(i32,{f32,f32})->f32")), a);
    assert_ne!(r.intern(&sig("(i32,packed{f32,f32})->f64")), a);
    assert_ne!(
        r.intern(&sig("(i32,{[f32;2]})->f64")),
        a,
        "an array and two fields are different shapes"
    );
    assert_eq!(r.len(), 4);
    assert_eq!(*r.signature(a).unwrap(), sig("(i32,{f32,f32})->f64"));
    assert_eq!(
        *r.layout(a, CallConv::SysV).unwrap(),
        classify(&sig("(i32,{f32,f32})->f64"), CallConv::SysV)
    );
    assert!(matches!(
        Registry::new().signature(a),
        Err(AbiError::UnknownSigId(_))
    ));
}

#[test]
fn a_signature_interned_in_several_registries_gets_each_ones_id() {
    // A signature notes the id a registry gave it, so interning it again is
    // a load; another registry's note must never be taken for its own. The
    // two registries give `s` different ids (0 in `a`, 1 in `b`).
    let (a, b) = (Registry::new(), Registry::new());
    let (s, t) = (sig("(i64)->i64"), sig("(f64)->f64"));
    assert_eq!(a.intern(&s).index(), 0);
    assert_eq!(b.intern(&t).index(), 0);
    assert_eq!(b.intern(&s).index(), 1);
    for _ in 0..2 {
        assert_eq!(a.intern(&s).index(), 0);
        assert_eq!(b.intern(&s).index(), 1);
        assert_eq!(a.intern(&s.clone()).index(), 0);
        assert_eq!(a.intern(&t).index(), 1);
    }
    assert_eq!(*b.signature(b.intern(&s)).unwrap(), s);
    assert_eq!((a.len(), b.len()), (2, 2));
}

#[test]
fn a_new_signature_is_interned_without_copying_its_parameters() {
    // The registry keeps a clone of a new signature, and a clone shares the
    // parameter list: the id's signature must point at the very types of the
    // one interned, and a struct type must gain no reference per parameter
    // (a copied list would clone each `Type::Struct`'s `Arc`). 40 parameters:
    // more than the parser keeps on the stack (16), so this also parses the
    // longest lists through the spilled path.
    let pair = Arc::new(
        StructType::new(
            vec![(Scalar::F32.into(), None), (Scalar::F32.into(), None)],
            false,
        )
        .unwrap(),
    );
    let mut b = Signature::builder();
    for i in 0..40 {
        b = if i % 3 == 0 {
            b.param(Type::Struct(Arc::clone(&pair)))
        } else {
            b.param(Scalar::ALL[i % Scalar::ALL.len()])
        };
    }
    let built = b.returns(Type::Struct(Arc::clone(&pair))).build().unwrap();
    let parsed = sig(&built.to_string());
    assert_eq!(parsed, built, "a 40-parameter list parses back to itself");
    let r = Registry::new();
    let before = Arc::strong_count(&pair);
    let id = r.intern(&built);
    assert_eq!(
        Arc::strong_count(&pair),
        before + 1,
        "only the result's type is cloned"
    );
    let kept = r.signature(id).unwrap();
    assert!(std::ptr::eq(kept.params(), built.params()));
    // Still there, and still the same value, when the original is gone.
    drop(built);
    assert_eq!(*r.signature(id).unwrap(), parsed);
    assert_eq!(r.intern(&parsed), id);
}

#[test]
fn ids_map_back_to_exactly_their_signature_under_concurrent_interning() {
    let r = Arc::new(Registry::new());
    let texts: Vec<String> = (0..2000)
        .map(|i| {
            let n = i % 7;
            format!(
                "({}{{[u8;{}]}})->i{}",
                "i64,".repeat(n),
                i / 7 + 1,
                [8, 16, 32, 64][i % 4]
            )
        })
        .collect();
    let texts = Arc::new(texts);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (r, texts) = (r.clone(), texts.clone());
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for k in 0..texts.len() {
                    let s = &texts[(k * 7 + t * 13) % texts.len()];
                    ids.push((s.clone(), r.intern(&sig(s))));
                }
                ids
            })
        })
        .collect();
    let mut seen = std::collections::HashMap::new();
    for t in threads {
        for (text, id) in t.join().unwrap() {
            assert_eq!(
                *seen.entry(text.clone()).or_insert(id),
                id,
                "{text} got two ids"
            );
            assert_eq!(r.signature(id).unwrap().to_string(), text);
        }
    }
    let distinct: HashSet<_> = seen.values().collect();
    assert_eq!(distinct.len(), texts.len());
    assert_eq!(r.len(), texts.len());
}
