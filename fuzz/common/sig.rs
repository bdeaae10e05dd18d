//! Signature text: parse, print, parse again; and the classification of
//! every signature that parses, checked against the rules it must keep in
//! both conventions.

use tierbridge::abi::{
    AbiError, ArgPass, CallConv, CallLayout, Gpr, Loc, MAX_PARAMS, Part, PartKind, RetPass,
    SYSV_INT_ARGS, SYSV_SSE_ARGS, Signature, Type, WIN64_INT_ARGS, WIN64_SHADOW_BYTES, classify,
    sysv_eightbytes, win64_in_register,
};

/// The `sig_text` target: any text through [`Signature::parse`] and
/// [`Signature::parse_param_list`]. A signature that parses prints in a
/// canonical form that parses back to an equal signature and prints the
/// same again, also with spaces around every token; its call-site variadic
/// types are exactly what [`Signature::with_varargs`] accepts; and its
/// classification keeps [`check_layout`]'s rules in both conventions. A
/// parse error names an offset inside the text.
pub fn sig_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(types) = Signature::parse_param_list(text) {
        // The same list as a signature's parameters prints and parses back.
        if let Ok(sig) = Signature::new(types.clone(), None) {
            let again = Signature::parse(&sig.to_string())
                .unwrap_or_else(|e| panic!("{text:?} as a list prints {sig}, which fails: {e}"));
            assert_eq!(again.params(), &types[..], "{text:?}");
        }
    }
    let sig = match Signature::parse(text) {
        Ok(sig) => sig,
        Err(e) => {
            if let AbiError::Parse { offset, .. } = &e {
                assert!(
                    *offset <= text.len(),
                    "{text:?}: offset {offset} past the end"
                );
            }
            // The message is made without a panic.
            let _ = e.to_string();
            return;
        }
    };
    check_signature(&sig, text);
}

/// What every parsed signature keeps; `text` names the input in messages.
pub(crate) fn check_signature(sig: &Signature, text: &str) {
    let printed = sig.to_string();
    let again = Signature::parse(&printed)
        .unwrap_or_else(|e| panic!("{text:?} prints as {printed:?}, which does not parse: {e}"));
    assert_eq!(&again, sig, "{text:?} printed as {printed:?}");
    assert_eq!(
        again.to_string(),
        printed,
        "{text:?}: printing is not canonical"
    );
    let spaced = space_out(&printed);
    let spaced_sig = Signature::parse(&spaced)
        .unwrap_or_else(|e| panic!("{text:?} spaced out as {spaced:?} does not parse: {e}"));
    assert_eq!(&spaced_sig, sig, "{spaced:?}");

    assert!(sig.params().len() <= MAX_PARAMS, "{printed}");
    assert!(sig.fixed_count() <= sig.params().len(), "{printed}");
    let slots: usize = sig.params().iter().map(|t| t.slots() as usize).sum();
    assert_eq!(sig.arg_slots(), slots, "{printed}");
    if sig.is_variadic() {
        // The declared form, and the call site made from it again.
        let declared = sig.declared();
        assert!(declared.is_variadic() && !declared.has_call_varargs());
        let varargs = &sig.params()[sig.fixed_count()..];
        match declared.with_varargs(varargs) {
            Ok(call_site) if varargs.is_empty() => {
                // An empty call site is the declared form itself.
                assert_eq!(call_site.params(), sig.params(), "{printed}");
            }
            Ok(call_site) => assert_eq!(&call_site, sig, "{printed}"),
            Err(e) => panic!(
                "{printed} parses, but its variadic types are not a call site: {e} \
                 (the parser accepts what with_varargs refuses)"
            ),
        }
    }
    for conv in CallConv::ALL {
        let layout = classify(sig, conv);
        if let Err(why) = check_layout(sig, &layout) {
            panic!("{printed} on {conv}: {why}\n{layout:#?}");
        }
    }
}

/// The canonical text with a space on both sides of every punctuation token.
fn space_out(printed: &str) -> String {
    let mut out = String::with_capacity(printed.len() * 3);
    let mut rest = printed;
    while let Some(c) = rest.chars().next() {
        let tok = ["->", "..."]
            .into_iter()
            .find(|t| rest.starts_with(t))
            .unwrap_or(&rest[..c.len_utf8()]);
        if tok.len() > 1 || "(),{}[];".contains(c) {
            out.push(' ');
            out.push_str(tok);
            out.push(' ');
        } else {
            out.push_str(tok);
        }
        rest = &rest[tok.len()..];
    }
    out
}

/// Rules every classification keeps, checked from the layout alone and the
/// types: slots add up; every part of a value covers its bytes exactly once;
/// no argument register is given twice, and the registers are the
/// convention's own in its order; stack arguments do not overlap and fit in
/// `stack_bytes`; Win64 by-reference copies do not overlap and fit in
/// `copy_bytes`; results travel as the convention says.
pub(crate) fn check_layout(sig: &Signature, l: &CallLayout) -> Result<(), String> {
    let conv = l.conv;
    if l.args.len() != sig.params().len() {
        return Err(format!("{} arg layouts", l.args.len()));
    }
    if !l.stack_bytes.is_multiple_of(16) || !l.copy_bytes.is_multiple_of(16) {
        return Err("stack or copy area not a multiple of 16".into());
    }
    let mut gprs: Vec<Gpr> = Vec::new();
    let mut xmms: Vec<u8> = Vec::new();
    let mut stack: Vec<(u32, u32)> = Vec::new();
    let mut copies: Vec<(u32, u32)> = Vec::new();
    // The ret pass first: its hidden pointer takes the first register.
    match (&l.ret, sig.ret()) {
        (RetPass::Void, None) => {}
        (RetPass::Direct(parts), Some(t)) => {
            if !returns_in_registers(t, conv) {
                return Err(format!("result {t} in registers"));
            }
            check_parts(t, parts)?;
            let mut ints = [Gpr::Rax, Gpr::Rdx].into_iter();
            let mut sses = 0u8..2;
            for p in parts {
                let ok = match p.loc {
                    Loc::Gpr(g) => ints.next() == Some(g),
                    Loc::Xmm(x) => sses.next() == Some(x),
                    _ => false,
                };
                if !ok {
                    return Err(format!("result part in {:?}", p.loc));
                }
            }
        }
        (RetPass::Sret { ptr }, Some(t)) => {
            if returns_in_registers(t, conv) {
                return Err(format!("result {t} through memory"));
            }
            let want = match conv {
                CallConv::SysV => Gpr::Rdi,
                CallConv::Win64 => Gpr::Rcx,
            };
            if *ptr != want {
                return Err(format!("sret pointer in {ptr}"));
            }
            gprs.push(*ptr);
        }
        (r, t) => return Err(format!("result {t:?} passed as {r:?}")),
    }
    if l.ret_size != sig.ret().map_or(0, Type::size)
        || l.ret_slots as usize != sig.ret_slots()
        || l.arg_slots as usize != sig.arg_slots()
    {
        return Err("slot or size counts".into());
    }
    let mut next_slot = 0u32;
    for (i, (a, t)) in l.args.iter().zip(sig.params()).enumerate() {
        if &a.ty != t || a.slot != next_slot || a.slots != t.slots() {
            return Err(format!("arg {i}: type or slots"));
        }
        next_slot += a.slots;
        // Win64: the position (the hidden sret pointer is position 0).
        let pos = i + usize::from(matches!(l.ret, RetPass::Sret { .. }));
        let mut take = |loc: Loc, size: u32, gprs: &mut Vec<Gpr>, xmms: &mut Vec<u8>| {
            match loc {
                Loc::Gpr(g) => gprs.push(g),
                Loc::Xmm(x) => xmms.push(x),
                Loc::XmmAndGpr(x, g) => {
                    if conv != CallConv::Win64 || i < sig.fixed_count() {
                        return Err(format!("arg {i}: both registers, not a Win64 vararg"));
                    }
                    xmms.push(x);
                    gprs.push(g);
                }
                Loc::Stack(at) => stack.push((at, size.next_multiple_of(8))),
            }
            if conv == CallConv::Win64 {
                let want_reg = WIN64_INT_ARGS.get(pos).copied();
                let ok = match (loc, want_reg) {
                    (Loc::Gpr(g), Some(w)) | (Loc::XmmAndGpr(_, g), Some(w)) => g == w,
                    (Loc::Xmm(x), Some(_)) => usize::from(x) == pos,
                    (Loc::Stack(at), None) => at == WIN64_SHADOW_BYTES + 8 * (pos as u32 - 4),
                    _ => false,
                };
                if !ok || matches!(loc, Loc::XmmAndGpr(x, _) if usize::from(x) != pos) {
                    return Err(format!("arg {i} (position {pos}) in {loc:?}"));
                }
            }
            Ok(())
        };
        match &a.pass {
            ArgPass::Direct(parts) => {
                check_parts(t, parts).map_err(|e| format!("arg {i}: {e}"))?;
                for p in parts {
                    take(p.loc, p.size, &mut gprs, &mut xmms)?;
                }
            }
            ArgPass::ByRef { ptr, copy } => {
                if conv != CallConv::Win64 || win64_in_register(t) {
                    return Err(format!("arg {i} ({t}) by reference"));
                }
                if !copy.is_multiple_of(16) {
                    return Err(format!("arg {i}: copy at {copy}"));
                }
                copies.push((*copy, t.size()));
                take(*ptr, 8, &mut gprs, &mut xmms)?;
            }
        }
    }
    // Each register once; SysV's in the convention's order.
    let mut seen = gprs.clone();
    seen.sort_by_key(|g| *g as u8);
    seen.dedup();
    if seen.len() != gprs.len() {
        return Err(format!("a GPR given twice: {gprs:?}"));
    }
    let mut seen_x = xmms.clone();
    seen_x.sort_unstable();
    seen_x.dedup();
    if seen_x.len() != xmms.len() {
        return Err(format!("an XMM register given twice: {xmms:?}"));
    }
    match conv {
        CallConv::SysV => {
            if gprs[..] != SYSV_INT_ARGS[..gprs.len().min(6)] || gprs.len() > 6 {
                return Err(format!("GPRs out of order: {gprs:?}"));
            }
            if xmms.iter().enumerate().any(|(k, x)| usize::from(*x) != k)
                || xmms.len() > usize::from(SYSV_SSE_ARGS)
            {
                return Err(format!("XMMs out of order: {xmms:?}"));
            }
            if usize::from(l.gprs_used) != gprs.len() || usize::from(l.xmms_used) != xmms.len() {
                return Err("register counts".into());
            }
            if l.al != sig.is_variadic().then_some(l.xmms_used) {
                return Err(format!("al {:?}", l.al));
            }
        }
        CallConv::Win64 => {
            if l.al.is_some() || stack.iter().any(|(at, _)| *at < WIN64_SHADOW_BYTES) {
                return Err("al, or a stack argument in the home area".into());
            }
        }
    }
    disjoint(&mut stack, l.stack_bytes, 8).map_err(|e| format!("stack: {e}"))?;
    disjoint(&mut copies, l.copy_bytes, 16).map_err(|e| format!("copies: {e}"))?;
    Ok(())
}

/// Whether the convention returns `t` in registers.
fn returns_in_registers(t: &Type, conv: CallConv) -> bool {
    match (t, conv) {
        (Type::Scalar(_), _) => true,
        (_, CallConv::SysV) => sysv_eightbytes(t).is_some(),
        (_, CallConv::Win64) => win64_in_register(t),
    }
}

/// The parts of a value of type `t`: in order, each covering the next bytes,
/// all of them together exactly `0..size`; a register part at most 8 bytes,
/// a scalar in one part of its own size, memory only on the stack.
fn check_parts(t: &Type, parts: &[Part]) -> Result<(), String> {
    let mut at = 0;
    for p in parts {
        if p.offset != at || p.size == 0 {
            return Err(format!(
                "part at {} of {} bytes, expected at {at}",
                p.offset, p.size
            ));
        }
        match (p.kind, p.loc) {
            (PartKind::Memory, Loc::Stack(_)) => {}
            (PartKind::Memory, loc) => return Err(format!("memory part in {loc:?}")),
            (PartKind::Scalar(s), _) if Type::Scalar(s) != *t => {
                return Err(format!("scalar part {s} of {t}"));
            }
            (_, Loc::Stack(_)) => {}
            _ if p.size > 8 => return Err(format!("a register part of {} bytes", p.size)),
            _ => {}
        }
        at += p.size;
    }
    if at != t.size() {
        return Err(format!("parts cover {at} of {} bytes", t.size()));
    }
    Ok(())
}

/// Ranges `(start, len)`: aligned to `align`, none overlapping, all below `end`.
fn disjoint(ranges: &mut [(u32, u32)], end: u32, align: u32) -> Result<(), String> {
    ranges.sort_unstable();
    let mut free = 0u32;
    for &(at, len) in ranges.iter() {
        if !at.is_multiple_of(align) || at < free || at + len > end {
            return Err(format!("{ranges:?} in {end} bytes"));
        }
        free = at + len;
    }
    Ok(())
}
