//! Verification: every instruction gets a known operand stack (kinds and
//! depth), the same along every path reaching it, and every path ends in
//! `return` with the declared result.

use super::{Function, InterpError, Kind, Op, Program};
use crate::abi::{Signature, Type};

/// The kinds of a signature's parameters and result, if all have one.
pub(super) fn kinds(sig: &Signature) -> Result<(Vec<Kind>, Option<Kind>), String> {
    if sig.is_variadic() {
        return Err(format!(
            "{sig}: variadic functions cannot be called from the interpreter"
        ));
    }
    let kind = |t: &Type| match t {
        Type::Scalar(s) => {
            Kind::of(*s).ok_or_else(|| format!("{sig}: f32 is not an interpreter type"))
        }
        Type::Struct(_) => Err(format!("{sig}: structs are not interpreter values")),
    };
    let params = sig
        .params()
        .iter()
        .map(kind)
        .collect::<Result<Vec<_>, _>>()?;
    let ret = sig.ret().map(kind).transpose()?;
    Ok((params, ret))
}

pub(super) fn verify(p: &mut Program) -> Result<(), InterpError> {
    let callee_kinds: Vec<(Vec<Kind>, Option<Kind>)> = p
        .functions
        .iter()
        .map(|f| kinds(&f.sig).expect("parsed signatures have kinds"))
        .collect();
    let mut native_kinds = Vec::new();
    for n in &p.natives {
        native_kinds.push(kinds(&n.sig).map_err(|m| InterpError::Syntax {
            line: 1,
            column: 1,
            message: format!("extern {}: {m}", n.name),
        })?);
    }
    for f in &mut p.functions {
        verify_function(f, &callee_kinds, &native_kinds)?;
    }
    Ok(())
}

fn verify_function(
    f: &mut Function,
    funcs: &[(Vec<Kind>, Option<Kind>)],
    natives: &[(Vec<Kind>, Option<Kind>)],
) -> Result<(), InterpError> {
    let n = f.code.len();
    let ret_kind = kinds(&f.sig).map_err(InterpError::Call)?.1;
    let at = |pc: usize| f.positions.get(pc).copied().unwrap_or((1, 1));
    let fail = |pc: usize, message: String| {
        let (line, column) = at(pc);
        Err(InterpError::Syntax {
            line,
            column,
            message,
        })
    };
    if n == 0 {
        return Err(InterpError::Syntax {
            line: 1,
            column: 1,
            message: format!("function {} has no code", f.name),
        });
    }
    let mut states: Vec<Option<Vec<Kind>>> = vec![None; n];
    states[0] = Some(Vec::new());
    let mut work = vec![0usize];
    let mut loop_headers = Vec::new();
    while let Some(pc) = work.pop() {
        let mut st = states[pc].clone().expect("queued states are set");
        let op = f.code[pc];
        let pop = |st: &mut Vec<Kind>, want: Kind| -> Result<(), InterpError> {
            match st.pop() {
                Some(k) if k == want => Ok(()),
                Some(k) => fail(pc, format!("expected an {want:?} operand, found {k:?}")),
                None => fail(
                    pc,
                    format!("expected an {want:?} operand, the stack is empty"),
                ),
            }
        };
        use Kind::{Float as F, Int as I};
        let mut succ: Vec<usize> = Vec::new();
        let next = pc + 1;
        match op {
            Op::ConstI(_) | Op::FuncAddr(_) => st.push(I),
            Op::ConstF(_) => st.push(F),
            Op::Get(l) => st.push(f.locals[l as usize]),
            Op::Set(l) => pop(&mut st, f.locals[l as usize])?,
            Op::Tee(l) => {
                pop(&mut st, f.locals[l as usize])?;
                st.push(f.locals[l as usize]);
            }
            Op::Drop => {
                if st.pop().is_none() {
                    return fail(pc, "drop on an empty stack".into());
                }
            }
            Op::IAdd
            | Op::ISub
            | Op::IMul
            | Op::IDivS
            | Op::IRemS
            | Op::IAnd
            | Op::IOr
            | Op::IXor
            | Op::IShl
            | Op::IShrS
            | Op::IShrU
            | Op::IEq
            | Op::INe
            | Op::ILtS
            | Op::ILeS
            | Op::IGtS
            | Op::IGeS => {
                pop(&mut st, I)?;
                pop(&mut st, I)?;
                st.push(I);
            }
            Op::IEqz => {
                pop(&mut st, I)?;
                st.push(I);
            }
            Op::FAdd | Op::FSub | Op::FMul | Op::FDiv => {
                pop(&mut st, F)?;
                pop(&mut st, F)?;
                st.push(F);
            }
            Op::FEq | Op::FNe | Op::FLt | Op::FLe | Op::FGt | Op::FGe => {
                pop(&mut st, F)?;
                pop(&mut st, F)?;
                st.push(I);
            }
            Op::IToF => {
                pop(&mut st, I)?;
                st.push(F);
            }
            Op::FToI => {
                pop(&mut st, F)?;
                st.push(I);
            }
            Op::Load32S | Op::Load64 => {
                pop(&mut st, I)?;
                st.push(I);
            }
            Op::LoadF64 => {
                pop(&mut st, I)?;
                st.push(F);
            }
            Op::Store32 | Op::Store64 => {
                pop(&mut st, I)?;
                pop(&mut st, I)?;
            }
            Op::Br(t) => succ.push(t as usize),
            Op::BrIf(t) | Op::BrUnless(t) => {
                pop(&mut st, I)?;
                succ.push(t as usize);
            }
            Op::Call(i) | Op::CallNative(i) => {
                let (params, ret) = if matches!(op, Op::Call(_)) {
                    &funcs[i as usize]
                } else {
                    &natives[i as usize]
                };
                for k in params.iter().rev() {
                    pop(&mut st, *k)?;
                }
                if let Some(k) = ret {
                    st.push(*k);
                }
            }
            Op::Return => {
                let want: Vec<Kind> = ret_kind.into_iter().collect();
                if st != want {
                    return fail(
                        pc,
                        format!("return with stack {st:?}, the function returns {want:?}"),
                    );
                }
            }
        }
        if !matches!(op, Op::Br(_) | Op::Return) {
            succ.push(next);
        }
        for t in succ {
            if t >= n {
                return fail(
                    pc,
                    "control falls off the end of the function (add `return`)".into(),
                );
            }
            if matches!(op, Op::Br(_) | Op::BrIf(_) | Op::BrUnless(_))
                && t <= pc
                && !loop_headers.contains(&(t as u32))
            {
                loop_headers.push(t as u32);
            }
            match &states[t] {
                None => {
                    states[t] = Some(st.clone());
                    work.push(t);
                }
                Some(existing) if *existing == st => {}
                Some(existing) => {
                    return fail(
                        t,
                        format!(
                            "the operand stack differs between paths here: {existing:?} vs {st:?}"
                        ),
                    );
                }
            }
        }
    }
    // Unreachable instructions get the empty stack (they never run).
    f.depth = states
        .iter()
        .map(|s| s.as_ref().map_or(0, |s| s.len() as u32))
        .collect();
    f.max_stack = f.depth.iter().copied().max().unwrap_or(0) + 1;
    loop_headers.sort_unstable();
    f.loop_headers = loop_headers;
    Ok(())
}
