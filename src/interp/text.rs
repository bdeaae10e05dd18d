//! The text form of programs (see the module docs of `interp`).

use std::collections::HashMap;

use super::{Function, InterpError, Kind, Native, Op, Program};
use crate::abi::{Scalar, Signature, Type};

fn err<T>(line: usize, column: usize, message: impl Into<String>) -> Result<T, InterpError> {
    Err(InterpError::Syntax {
        line,
        column,
        message: message.into(),
    })
}

/// A token with its 1-based column.
#[derive(Clone, Copy)]
struct Tok<'a> {
    text: &'a str,
    col: usize,
}

fn tokens(line: &str) -> Vec<Tok<'_>> {
    let code = line.split('#').next().unwrap_or("");
    let code = code.split(";;").next().unwrap_or("");
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in code.char_indices() {
        let sep = c.is_whitespace() || c == ',' || c == '(' || c == ')';
        match (start, sep) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                out.push(Tok {
                    text: &code[s..i],
                    col: s + 1,
                });
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(Tok {
            text: &code[s..],
            col: s + 1,
        });
    }
    out
}

fn scalar(line: usize, t: Tok<'_>) -> Result<Scalar, InterpError> {
    match Scalar::from_name(t.text) {
        Some(Scalar::F32) => err(line, t.col, "f32 is not an interpreter type (use f64)"),
        Some(s) => Ok(s),
        None => err(
            line,
            t.col,
            format!(
                "unknown type {:?} (expected i8..u64, bool, ptr or f64)",
                t.text
            ),
        ),
    }
}

struct RawFn<'a> {
    name: String,
    line: usize,
    sig: Signature,
    locals: Vec<Kind>,
    local_names: Vec<String>,
    labels: HashMap<&'a str, u32>,
    /// (line, mnemonic, operand)
    body: Vec<(usize, Tok<'a>, Option<Tok<'a>>)>,
}

/// Parses and verifies a program.
///
/// # Errors
/// [`InterpError::Syntax`] with the line and column of the first problem.
pub fn parse_program(text: &str) -> Result<Program, InterpError> {
    let mut natives: Vec<Native> = Vec::new();
    let mut raw: Vec<RawFn<'_>> = Vec::new();
    let mut current: Option<RawFn<'_>> = None;
    for (i, line_text) in text.lines().enumerate() {
        let line = i + 1;
        let toks = tokens(line_text);
        let Some(first) = toks.first().copied() else {
            continue;
        };
        if let Some(f) = current.as_mut() {
            match first.text {
                "end" => {
                    if toks.len() > 1 {
                        return err(line, toks[1].col, "nothing may follow `end`");
                    }
                    raw.push(current.take().expect("inside a function"));
                }
                "local" => {
                    // local NAME: TYPE
                    let (Some(name), Some(ty)) = (toks.get(1), toks.get(2)) else {
                        return err(line, first.col, "expected `local NAME: i64|f64`");
                    };
                    let Some(n) = name.text.strip_suffix(':') else {
                        return err(line, name.col, "expected `NAME:`");
                    };
                    let kind = match ty.text {
                        "i64" => Kind::Int,
                        "f64" => Kind::Float,
                        _ => return err(line, ty.col, "a local is i64 or f64"),
                    };
                    if f.local_names.iter().any(|x| x == n) {
                        return err(line, name.col, format!("local {n} is already defined"));
                    }
                    f.locals.push(kind);
                    f.local_names.push(n.to_owned());
                }
                label if label.ends_with(':') && toks.len() == 1 => {
                    let l = &label[..label.len() - 1];
                    if f.labels.insert(l, f.body.len() as u32).is_some() {
                        return err(line, first.col, format!("label {l} is already defined"));
                    }
                }
                _ => {
                    if toks.len() > 2 {
                        return err(
                            line,
                            toks[2].col,
                            "an instruction takes at most one operand",
                        );
                    }
                    f.body.push((line, first, toks.get(1).copied()));
                }
            }
            continue;
        }
        match first.text {
            "extern" => {
                // extern NAME "SIG"
                let Some(name) = toks.get(1) else {
                    return err(line, first.col, "expected `extern NAME \"SIG\"`");
                };
                // The name is one token, and only spaces stand between it
                // and the quoted signature.
                let name_end = name.col - 1 + name.text.len();
                if name.text.contains('"') {
                    return err(line, name.col, "expected `extern NAME \"SIG\"`");
                }
                let Some(q) = line_text.find('"') else {
                    return err(line, first.col, "expected a quoted signature");
                };
                if let Some(extra) = line_text[name_end..q].find(|c: char| !c.is_whitespace()) {
                    return err(line, name_end + extra + 1, "expected a quoted signature");
                }
                let rest = &line_text[q + 1..];
                let Some(e) = rest.find('"') else {
                    return err(line, q + 1, "unterminated signature");
                };
                // Nothing but a comment after it.
                let after = &rest[e + 1..];
                let trimmed = after.trim_start();
                if !(trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(";;")) {
                    let column = q + e + 3 + (after.len() - trimmed.len());
                    return err(line, column, "nothing may follow the signature");
                }
                if natives.iter().any(|n| n.name == name.text) {
                    return err(
                        line,
                        name.col,
                        format!("extern {} is already declared", name.text),
                    );
                }
                let sig = Signature::parse(&rest[..e]).map_err(|x| match x {
                    crate::abi::AbiError::Parse {
                        offset,
                        expected,
                        found,
                    } => InterpError::Syntax {
                        line,
                        column: q + 2 + offset,
                        message: format!("expected {expected}, found {found}"),
                    },
                    other => InterpError::Syntax {
                        line,
                        column: q + 2,
                        message: other.to_string(),
                    },
                })?;
                natives.push(Native {
                    name: name.text.to_owned(),
                    sig,
                });
            }
            "fn" => {
                // fn NAME(p: T, ...) -> T
                let Some(name) = toks.get(1) else {
                    return err(line, first.col, "expected `fn NAME(...)`");
                };
                let mut params = Vec::new();
                let mut names = Vec::new();
                let mut k = 2;
                let mut ret = None;
                while k < toks.len() {
                    let t = toks[k];
                    if t.text == "->" {
                        let Some(rt) = toks.get(k + 1) else {
                            return err(line, t.col, "expected a result type");
                        };
                        ret = Some(scalar(line, *rt)?);
                        if let Some(extra) = toks.get(k + 2) {
                            return err(line, extra.col, "unexpected text after the result type");
                        }
                        break;
                    }
                    let Some(p) = t.text.strip_suffix(':') else {
                        return err(line, t.col, "expected `NAME:` of a parameter or `->`");
                    };
                    let Some(ty) = toks.get(k + 1) else {
                        return err(line, t.col, "expected a parameter type");
                    };
                    params.push(scalar(line, *ty)?);
                    names.push(p.to_owned());
                    k += 2;
                }
                let sig = Signature::new(
                    params.iter().map(|s| Type::from(*s)).collect(),
                    ret.map(Type::from),
                )
                .map_err(|e| InterpError::Syntax {
                    line,
                    column: first.col,
                    message: e.to_string(),
                })?;
                let locals = params
                    .iter()
                    .map(|s| Kind::of(*s).expect("f32 refused above"))
                    .collect();
                current = Some(RawFn {
                    name: name.text.to_owned(),
                    line,
                    sig,
                    locals,
                    local_names: names,
                    labels: HashMap::new(),
                    body: Vec::new(),
                });
            }
            other => {
                return err(
                    line,
                    first.col,
                    format!("expected `fn` or `extern`, found {other:?}"),
                );
            }
        }
    }
    if let Some(f) = current {
        return err(f.line, 1, format!("function {} has no `end`", f.name));
    }
    let fn_index: HashMap<String, u32> = raw
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.clone(), i as u32))
        .collect();
    let native_index: HashMap<String, u32> = natives
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i as u32))
        .collect();
    if fn_index.len() != raw.len() {
        return err(1, 1, "two functions have the same name");
    }
    let mut functions = Vec::with_capacity(raw.len());
    for f in raw {
        let mut code = Vec::with_capacity(f.body.len());
        let mut positions = Vec::with_capacity(f.body.len());
        for (line, m, arg) in &f.body {
            let (line, col) = (*line, m.col);
            let need = |what: &str| -> Result<Tok<'_>, InterpError> {
                arg.ok_or_else(|| InterpError::Syntax {
                    line,
                    column: col,
                    message: format!("{} takes {what}", m.text),
                })
            };
            let local = |t: Tok<'_>| -> Result<u32, InterpError> {
                f.local_names
                    .iter()
                    .position(|n| n == t.text)
                    .map(|i| i as u32)
                    .ok_or_else(|| InterpError::Syntax {
                        line,
                        column: t.col,
                        message: format!("no local or parameter named {}", t.text),
                    })
            };
            let label = |t: Tok<'_>| -> Result<u32, InterpError> {
                f.labels
                    .get(t.text)
                    .copied()
                    .ok_or_else(|| InterpError::Syntax {
                        line,
                        column: t.col,
                        message: format!("no label {}", t.text),
                    })
            };
            let simple = match m.text {
                "drop" => Some(Op::Drop),
                "i64.add" => Some(Op::IAdd),
                "i64.sub" => Some(Op::ISub),
                "i64.mul" => Some(Op::IMul),
                "i64.div_s" => Some(Op::IDivS),
                "i64.rem_s" => Some(Op::IRemS),
                "i64.and" => Some(Op::IAnd),
                "i64.or" => Some(Op::IOr),
                "i64.xor" => Some(Op::IXor),
                "i64.shl" => Some(Op::IShl),
                "i64.shr_s" => Some(Op::IShrS),
                "i64.shr_u" => Some(Op::IShrU),
                "i64.eq" => Some(Op::IEq),
                "i64.ne" => Some(Op::INe),
                "i64.lt_s" => Some(Op::ILtS),
                "i64.le_s" => Some(Op::ILeS),
                "i64.gt_s" => Some(Op::IGtS),
                "i64.ge_s" => Some(Op::IGeS),
                "i64.eqz" => Some(Op::IEqz),
                "f64.add" => Some(Op::FAdd),
                "f64.sub" => Some(Op::FSub),
                "f64.mul" => Some(Op::FMul),
                "f64.div" => Some(Op::FDiv),
                "f64.eq" => Some(Op::FEq),
                "f64.ne" => Some(Op::FNe),
                "f64.lt" => Some(Op::FLt),
                "f64.le" => Some(Op::FLe),
                "f64.gt" => Some(Op::FGt),
                "f64.ge" => Some(Op::FGe),
                "f64.convert_i64" => Some(Op::IToF),
                "i64.trunc_f64" => Some(Op::FToI),
                "i64.load32_s" => Some(Op::Load32S),
                "i64.load" => Some(Op::Load64),
                "f64.load" => Some(Op::LoadF64),
                "i64.store32" => Some(Op::Store32),
                "i64.store" => Some(Op::Store64),
                "return" => Some(Op::Return),
                _ => None,
            };
            let op = match (simple, m.text) {
                (Some(op), _) => {
                    if let Some(a) = arg {
                        return err(line, a.col, format!("{} takes no operand", m.text));
                    }
                    op
                }
                (None, "i64.const") => {
                    let t = need("an integer")?;
                    let v = t.text.parse::<i64>().or_else(|_| {
                        t.text.strip_prefix("0x").map_or(Err(()), |h| {
                            u64::from_str_radix(h, 16).map(|v| v as i64).map_err(|_| ())
                        })
                    });
                    Op::ConstI(
                        v.or_else(|_| err(line, t.col, format!("{:?} is not an i64", t.text)))?,
                    )
                }
                (None, "f64.const") => {
                    let t = need("a number")?;
                    Op::ConstF(
                        t.text
                            .parse::<f64>()
                            .map(f64::to_bits)
                            .or_else(|_| err(line, t.col, format!("{:?} is not an f64", t.text)))?,
                    )
                }
                (None, "local.get") => Op::Get(local(need("a local")?)?),
                (None, "local.set") => Op::Set(local(need("a local")?)?),
                (None, "local.tee") => Op::Tee(local(need("a local")?)?),
                (None, "br") => Op::Br(label(need("a label")?)?),
                (None, "br_if") => Op::BrIf(label(need("a label")?)?),
                (None, "br_unless") => Op::BrUnless(label(need("a label")?)?),
                (None, "call") => {
                    let t = need("a function")?;
                    match (fn_index.get(t.text), native_index.get(t.text)) {
                        (Some(i), _) => Op::Call(*i),
                        (None, Some(i)) => Op::CallNative(*i),
                        _ => {
                            return err(
                                line,
                                t.col,
                                format!("no function or extern named {}", t.text),
                            );
                        }
                    }
                }
                (None, "ref.func") => {
                    let t = need("a function")?;
                    match fn_index.get(t.text) {
                        Some(i) => Op::FuncAddr(*i),
                        None => return err(line, t.col, format!("no function named {}", t.text)),
                    }
                }
                (None, other) => return err(line, col, format!("unknown instruction {other:?}")),
            };
            code.push(op);
            positions.push((line, col));
        }
        functions.push(Function {
            name: f.name,
            sig: f.sig,
            locals: f.locals,
            local_names: f.local_names,
            code,
            positions,
            depth: Vec::new(),
            max_stack: 0,
            loop_headers: Vec::new(),
        });
    }
    let mut program = Program { functions, natives };
    super::verify::verify(&mut program)?;
    Ok(program)
}
