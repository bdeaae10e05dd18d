//! Program text: `parse_program` on anything, and a printer of parsed
//! programs (the crate has none) whose text must parse back to the same
//! program.

use std::fmt::Write as _;

use tierbridge::abi::Type;
use tierbridge::interp::{InterpError, Kind, Op, Program, parse_program};

/// The `program_text` target: any text through [`parse_program`] (which
/// parses and verifies): never a panic; an error names a line of the text.
/// A program that parses is printed by [`print_program`] and parsed again:
/// the same functions, natives, locals and code.
pub fn program_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let program = match parse_program(text) {
        Ok(p) => p,
        Err(e) => {
            if let InterpError::Syntax { line, .. } = &e {
                // Line 1 stands for the whole program (duplicate names, a
                // native's signature), also in an empty text.
                assert!(
                    *line >= 1 && *line <= text.lines().count().max(1),
                    "{text:?}: error on line {line}: {e}"
                );
            }
            let _ = e.to_string();
            return;
        }
    };
    check_program(&program, text);
}

/// A parsed program printed and parsed again is the same program.
pub(crate) fn check_program(program: &Program, text: &str) {
    let Some(printed) = print_program(program) else {
        return;
    };
    let again = parse_program(&printed)
        .unwrap_or_else(|e| panic!("{text:?}\nprints as\n{printed}\nwhich fails: {e}"));
    let same = |a: &Program, b: &Program| {
        a.natives().len() == b.natives().len()
            && a.natives()
                .iter()
                .zip(b.natives())
                .all(|(x, y)| x.name == y.name && x.sig == y.sig)
            && a.functions().len() == b.functions().len()
            && a.functions().iter().zip(b.functions()).all(|(x, y)| {
                x.name == y.name
                    && x.sig == y.sig
                    && x.locals == y.locals
                    && x.local_names == y.local_names
                    && same_code(&x.code, &y.code)
                    && x.depth == y.depth
                    && x.max_stack == y.max_stack
                    && x.loop_headers == y.loop_headers
            })
    };
    assert!(
        same(program, &again),
        "{text:?}\nprints as\n{printed}\nwhich parses to another program"
    );
}

/// Instructions equal, `f64.const` by its bits.
fn same_code(a: &[Op], b: &[Op]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Op::ConstF(p), Op::ConstF(q)) => p == q,
            _ => x == y,
        })
}

/// True if `name` prints as one token that reads back as itself in every
/// place a name stands (no separator, no comment, no quote).
fn plain(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['#', '"', ',', '(', ')'])
        && !name.contains(";;")
        && !name.chars().any(char::is_whitespace)
}

/// The text of a program: natives, then each function with its locals
/// declared first and a label `L<pc>:` at every branch target. `None` when a
/// name cannot be printed as a token of its own (the parser accepted it from
/// a context this printer does not reproduce), or a float constant has no
/// text that parses to its bits (a NaN's payload).
pub(crate) fn print_program(p: &Program) -> Option<String> {
    let mut out = String::new();
    for n in p.natives() {
        if !plain(&n.name) {
            return None;
        }
        writeln!(out, "extern {} \"{}\"", n.name, n.sig).unwrap();
    }
    for f in p.functions() {
        let names_ok = plain(&f.name) && f.local_names.iter().all(|n| plain(n) && n != "->");
        if !names_ok {
            return None;
        }
        let nparams = f.sig.params().len();
        write!(out, "fn {}(", f.name).unwrap();
        for (i, (name, t)) in f.local_names.iter().zip(f.sig.params()).enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(out, "{sep}{name}: {t}").unwrap();
        }
        out.push(')');
        if let Some(t) = f.sig.ret() {
            if !matches!(t, Type::Scalar(_)) {
                return None;
            }
            write!(out, " -> {t}").unwrap();
        }
        out.push('\n');
        for (name, kind) in f.local_names.iter().zip(&f.locals).skip(nparams) {
            let ty = match kind {
                Kind::Int => "i64",
                Kind::Float => "f64",
            };
            writeln!(out, "  local {name}: {ty}").unwrap();
        }
        let mut targets: Vec<u32> = f
            .code
            .iter()
            .filter_map(|op| match op {
                Op::Br(t) | Op::BrIf(t) | Op::BrUnless(t) => Some(*t),
                _ => None,
            })
            .collect();
        targets.sort_unstable();
        targets.dedup();
        let fname = |i: u32| p.functions()[i as usize].name.clone();
        for (pc, op) in f.code.iter().enumerate() {
            if targets.binary_search(&(pc as u32)).is_ok() {
                writeln!(out, "L{pc}:").unwrap();
            }
            let local = |l: u32| f.local_names[l as usize].clone();
            let text = match *op {
                Op::ConstI(v) => format!("i64.const {v}"),
                Op::ConstF(bits) => {
                    let v = f64::from_bits(bits);
                    let t = format!("{v:?}");
                    // Only a text that parses back to these very bits.
                    if t.parse::<f64>().map(f64::to_bits) != Ok(bits) {
                        return None;
                    }
                    format!("f64.const {t}")
                }
                Op::Get(l) => format!("local.get {}", local(l)),
                Op::Set(l) => format!("local.set {}", local(l)),
                Op::Tee(l) => format!("local.tee {}", local(l)),
                Op::Br(t) => format!("br L{t}"),
                Op::BrIf(t) => format!("br_if L{t}"),
                Op::BrUnless(t) => format!("br_unless L{t}"),
                Op::Call(i) => format!("call {}", fname(i)),
                Op::CallNative(i) => format!("call {}", p.natives()[i as usize].name),
                Op::FuncAddr(i) => format!("ref.func {}", fname(i)),
                simple => mnemonic(simple).to_owned(),
            };
            writeln!(out, "  {text}").unwrap();
        }
        out.push_str("end\n");
    }
    // A call names a function first, then a native: a native that shares a
    // function's name cannot be called by its name, and prints the same.
    Some(out)
}

/// The mnemonic of an instruction without an operand.
pub(crate) fn mnemonic(op: Op) -> &'static str {
    match op {
        Op::Drop => "drop",
        Op::IAdd => "i64.add",
        Op::ISub => "i64.sub",
        Op::IMul => "i64.mul",
        Op::IDivS => "i64.div_s",
        Op::IRemS => "i64.rem_s",
        Op::IAnd => "i64.and",
        Op::IOr => "i64.or",
        Op::IXor => "i64.xor",
        Op::IShl => "i64.shl",
        Op::IShrS => "i64.shr_s",
        Op::IShrU => "i64.shr_u",
        Op::IEq => "i64.eq",
        Op::INe => "i64.ne",
        Op::ILtS => "i64.lt_s",
        Op::ILeS => "i64.le_s",
        Op::IGtS => "i64.gt_s",
        Op::IGeS => "i64.ge_s",
        Op::IEqz => "i64.eqz",
        Op::FAdd => "f64.add",
        Op::FSub => "f64.sub",
        Op::FMul => "f64.mul",
        Op::FDiv => "f64.div",
        Op::FEq => "f64.eq",
        Op::FNe => "f64.ne",
        Op::FLt => "f64.lt",
        Op::FLe => "f64.le",
        Op::FGt => "f64.gt",
        Op::FGe => "f64.ge",
        Op::IToF => "f64.convert_i64",
        Op::FToI => "i64.trunc_f64",
        Op::Load32S => "i64.load32_s",
        Op::Load64 => "i64.load",
        Op::LoadF64 => "f64.load",
        Op::Store32 => "i64.store32",
        Op::Store64 => "i64.store",
        Op::Return => "return",
        other => panic!("{other:?} has an operand"),
    }
}
