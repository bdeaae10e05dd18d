//! Tiers agree: the input bytes drive a generator of valid programs that
//! always terminate, and every way of running a program must give the same
//! results, traps and memory.

use std::ffi::c_void;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use tierbridge::abi::Scalar;
use tierbridge::host::FailurePolicy;
use tierbridge::interp::{Runtime, parse_program};
use tierbridge::thunks::{BackendKind, Bridge};
use tierbridge::tier::TierConfig;

use super::Bytes;

/// Deepest call nesting a generated program reaches (every function takes
/// its depth `d` and calls nothing once `d` reaches it). Deep recursion is
/// kept out: compiled code does not yet count the interpreter's call depth.
pub(crate) const MAX_DEPTH: i64 = 50;
/// Fuel of one top-level call: every function entry and loop iteration
/// takes one unit from the cell `fuel` points to, and returns or leaves the
/// loop when none is left. So every program terminates, whatever it does.
const FUEL: u64 = 300;
/// Most instructions a generated function has (roughly).
const MAX_OPS: usize = 400;
/// Slots of the data buffer `p` every function gets (loads and stores stay
/// inside it: addresses are `p + 8 * (x & 7)`).
const BUF_SLOTS: usize = 8;

/// The native every program may call: `tbfz_apply(f, p, fuel, d, x)` calls
/// `f(p, fuel, d, x)`, where `f` is a program function of that signature
/// (`ref.func`): interpreted or compiled code called from C.
const APPLY: &str = "extern tbfz_apply \"(ptr,ptr,ptr,i64,i64)->i64\"\n";

type Callee = extern "C" fn(*mut u64, *mut u64, i64, i64) -> i64;

extern "C" fn tbfz_apply(f: *const c_void, p: *mut u64, fuel: *mut u64, d: i64, x: i64) -> i64 {
    // SAFETY: the generated programs pass only `ref.func` of functions whose
    // signature is `(ptr, ptr, i64, i64) -> i64` (`Gen::callable`), and a
    // runtime's function pointers are C functions of their signature.
    let f: Callee = unsafe { std::mem::transmute::<*const c_void, Callee>(f) };
    f(p, fuel, d, x)
}

/// The kinds of interpreter values.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum K {
    I,
    F,
}

fn kind(s: Scalar) -> K {
    if s == Scalar::F64 { K::F } else { K::I }
}

/// Parameter and result types a generated function may declare (every
/// interpreter type: narrow ones are extended on entry and return).
const TYPES: [Scalar; 11] = [
    Scalar::I64,
    Scalar::F64,
    Scalar::I32,
    Scalar::U8,
    Scalar::I16,
    Scalar::Bool,
    Scalar::U32,
    Scalar::I8,
    Scalar::U64,
    Scalar::U16,
    Scalar::Ptr,
];

/// A generated function's signature after `(p: ptr, fuel: ptr, d: i64)`.
#[derive(Clone, Debug)]
struct FnSig {
    extra: Vec<Scalar>,
    ret: Option<Scalar>,
}

impl FnSig {
    /// Callable from C through `tbfz_apply`.
    fn callable(&self) -> bool {
        self.extra == [Scalar::I64] && self.ret == Some(Scalar::I64)
    }
}

/// Builds a program's text from bytes.
struct Gen<'a, 'b> {
    b: &'b mut Bytes<'a>,
    sigs: Vec<FnSig>,
    out: String,
    labels: u32,
    /// The function being written.
    me: usize,
    /// Exit labels of the loops around the current statement.
    loops: Vec<String>,
    /// Values held on the operand stack by enclosing statements (a
    /// `return` is only written where there are none).
    held: usize,
    ops: usize,
}

impl Gen<'_, '_> {
    fn op(&mut self, text: &str) {
        self.out.push_str("  ");
        self.out.push_str(text);
        self.out.push('\n');
        self.ops += 1;
    }

    fn label(&mut self) -> String {
        self.labels += 1;
        format!("L{}", self.labels)
    }

    fn place(&mut self, label: &str) {
        writeln!(self.out, "{label}:").unwrap();
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.b.below(from.len())]
    }

    fn sig(&self) -> &FnSig {
        &self.sigs[self.me]
    }

    /// Locals of a kind that expressions read: parameters after `p` and
    /// `fuel` (never the pointers: their values differ between runs), the
    /// scratch locals, the loop counters.
    fn readable(&self, k: K) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        if k == K::I {
            v.push("d".into());
            v.extend(["a", "b", "c", "i0", "i1", "i2"].map(String::from));
        } else {
            v.extend(["x", "y"].map(String::from));
        }
        for (i, s) in self.sig().extra.iter().enumerate() {
            if kind(*s) == k {
                v.push(format!("q{i}"));
            }
        }
        v
    }

    /// Locals of a kind that statements assign (not `d`, not the counters).
    fn writable(&self, k: K) -> Vec<String> {
        let mut v: Vec<String> = match k {
            K::I => ["a", "b", "c"].map(String::from).to_vec(),
            K::F => ["x", "y"].map(String::from).to_vec(),
        };
        for (i, s) in self.sig().extra.iter().enumerate() {
            if kind(*s) == k && *s != Scalar::Ptr {
                v.push(format!("q{i}"));
            }
        }
        v
    }

    fn int_const(&mut self) -> i64 {
        match self.b.below(8) {
            0 => self.b.u64() as i64,
            1 => i64::MAX - self.b.below(4) as i64,
            2 => i64::MIN + self.b.below(4) as i64,
            3 => [0, 1, -1, 2, 7, 8, 31, 32, 63, 64, 65, -64][self.b.below(12)],
            _ => i64::from(self.b.u8() as i8),
        }
    }

    fn leaf(&mut self, k: K) {
        if self.b.chance(50) {
            let names = self.readable(k);
            let n = self.pick_name(&names);
            self.op(&format!("local.get {n}"));
        } else if k == K::I {
            let v = self.int_const();
            self.op(&format!("i64.const {v}"));
        } else {
            const F: [&str; 14] = [
                "0.0",
                "-0.0",
                "0.5",
                "1.0",
                "-2.5",
                "1e300",
                "-1e-300",
                "inf",
                "-inf",
                "NaN",
                "3000000000.0",
                "9.3e18",
                "-9.3e18",
                "4.5e-310",
            ];
            let c = if self.b.chance(70) {
                self.pick(&F).to_owned()
            } else {
                format!("{}.25", self.b.u8() as i8)
            };
            self.op(&format!("f64.const {c}"));
        }
    }

    fn pick_name(&mut self, names: &[String]) -> String {
        names[self.b.below(names.len())].clone()
    }

    /// `p + 8 * (x & 7)`.
    fn addr(&mut self) {
        self.op("local.get p");
        self.expr(K::I, 1);
        self.op("i64.const 7");
        self.op("i64.and");
        self.op("i64.const 8");
        self.op("i64.mul");
        self.op("i64.add");
    }

    /// An expression of kind `k`, at most `depth` levels: one value more
    /// on the stack.
    fn expr(&mut self, k: K, depth: u32) {
        if depth == 0 || self.ops > MAX_OPS || self.b.chance(30) {
            return self.leaf(k);
        }
        let d = depth - 1;
        match (k, self.b.below(12)) {
            (K::I, 0) => {
                self.expr(K::I, d);
                self.op("i64.eqz");
            }
            (K::I, 1) => {
                self.expr(K::I, d);
                let n = self.writable(K::I);
                let n = self.pick_name(&n);
                self.op(&format!("local.tee {n}"));
            }
            (K::I, 2) => {
                self.expr(K::F, d);
                self.op("i64.trunc_f64");
            }
            (K::I, 3) => {
                self.expr(K::F, d);
                self.expr(K::F, d);
                let c = self.pick(&["eq", "ne", "lt", "le", "gt", "ge"]);
                self.op(&format!("f64.{c}"));
            }
            (K::I, 4) => {
                self.addr();
                let l = self.pick(&["i64.load", "i64.load32_s"]);
                self.op(l);
            }
            (K::I, _) => {
                self.expr(K::I, d);
                self.expr(K::I, d);
                const BIN: [&str; 17] = [
                    "add", "sub", "mul", "and", "or", "xor", "shl", "shr_s", "shr_u", "eq", "ne",
                    "lt_s", "le_s", "gt_s", "ge_s", "div_s", "rem_s",
                ];
                // `add` (a guard in compiled code) a third of the time.
                let op = if self.b.chance(33) {
                    "add"
                } else {
                    self.pick(&BIN)
                };
                if (op == "div_s" || op == "rem_s") && !self.b.chance(10) {
                    // Mostly never by zero (a trap ends the whole call).
                    self.op("i64.const 1");
                    self.op("i64.or");
                }
                self.op(&format!("i64.{op}"));
            }
            (K::F, 0 | 1) => {
                self.expr(K::I, d);
                self.op("f64.convert_i64");
            }
            (K::F, 2) => {
                self.addr();
                self.op("f64.load");
            }
            (K::F, 3) => {
                self.expr(K::F, d);
                let n = self.writable(K::F);
                let n = self.pick_name(&n);
                self.op(&format!("local.tee {n}"));
            }
            (K::F, _) => {
                self.expr(K::F, d);
                self.expr(K::F, d);
                let op = self.pick(&["add", "sub", "mul", "div"]);
                self.op(&format!("f64.{op}"));
            }
        }
    }

    /// Takes one unit of fuel; jumps to `empty` when none is left.
    fn burn_fuel(&mut self, empty: &str, when_empty: &str) {
        self.op("local.get fuel");
        self.op("local.get fuel");
        self.op("i64.load");
        self.op("i64.const 1");
        self.op("i64.sub");
        self.op("i64.store");
        self.op("local.get fuel");
        self.op("i64.load");
        self.op("i64.const 0");
        self.op("i64.le_s");
        self.op(&format!("{when_empty} {empty}"));
    }

    /// A value of the function's result kind, and `return`.
    fn ret(&mut self, depth: u32) {
        if let Some(r) = self.sig().ret {
            self.expr(kind(r), depth);
        }
        self.op("return");
    }

    /// Statements until the bytes, the budget or the chance run out.
    fn block(&mut self, nest: u32) {
        let most = if nest == 0 { 12 } else { 4 };
        for _ in 0..most {
            if self.b.is_empty() || self.ops > MAX_OPS || self.b.chance(15) {
                break;
            }
            self.statement(nest);
        }
    }

    /// One statement: the operand stack as it was before it.
    fn statement(&mut self, nest: u32) {
        let nested = nest < 3;
        match self.b.below(16) {
            0 | 1 => {
                self.expr(K::I, 3);
                let n = self.writable(K::I);
                let n = self.pick_name(&n);
                self.op(&format!("local.set {n}"));
            }
            2 => {
                self.expr(K::F, 3);
                let n = self.writable(K::F);
                let n = self.pick_name(&n);
                self.op(&format!("local.set {n}"));
            }
            3 => {
                self.addr();
                self.expr(K::I, 2);
                let s = self.pick(&["i64.store", "i64.store32"]);
                self.op(s);
            }
            4 if nested => {
                // if / else
                let (els, end) = (self.label(), self.label());
                self.expr(K::I, 2);
                self.op(&format!("br_unless {els}"));
                self.block(nest + 1);
                self.op(&format!("br {end}"));
                self.place(&els);
                self.block(nest + 1);
                self.place(&end);
            }
            5 => {
                // Two paths join with a value on the stack.
                let k = if self.b.chance(70) { K::I } else { K::F };
                let join = self.label();
                self.expr(k, 2);
                self.expr(K::I, 1);
                self.op(&format!("br_if {join}"));
                self.op("drop");
                self.expr(k, 2);
                self.place(&join);
                let n = self.writable(k);
                let n = self.pick_name(&n);
                self.op(&format!("local.set {n}"));
            }
            6 | 7 if nested && self.loops.len() < 3 => self.counted_loop(nest, false),
            8 if nested && self.loops.len() < 3 => self.counted_loop(nest, true),
            9 | 10 => self.call(),
            11 if self.sigs.iter().any(FnSig::callable) => self.call_from_c(),
            12 if self.held == 0 => {
                // An early return.
                let no = self.label();
                self.expr(K::I, 2);
                self.op(&format!("br_unless {no}"));
                self.ret(2);
                self.place(&no);
            }
            13 if !self.loops.is_empty() => {
                // break
                let exit = self.loops.last().unwrap().clone();
                self.expr(K::I, 2);
                self.op(&format!("br_if {exit}"));
            }
            14 if self.b.chance(10) => {
                // A null pointer: a trap in every tier.
                self.op("i64.const 0");
                if self.b.chance(50) {
                    self.op("i64.load");
                    self.op("drop");
                } else {
                    self.op("i64.const 1");
                    self.op("i64.store");
                }
            }
            _ => {
                let k = if self.b.chance(70) { K::I } else { K::F };
                self.expr(k, 3);
                self.op("drop");
            }
        }
    }

    /// `for i in 0..n` (burning fuel each time round), around a block. With
    /// `carry`, a value rides on the operand stack through the loop (its
    /// header is then no OSR entry) and is folded into a local at the end.
    fn counted_loop(&mut self, nest: u32, carry: bool) {
        let i = format!("i{}", self.loops.len());
        let (top, exit) = (self.label(), self.label());
        let n = 1 + self.b.below(12);
        if carry {
            self.expr(K::I, 1);
            self.held += 1;
        }
        self.op("i64.const 0");
        self.op(&format!("local.set {i}"));
        self.place(&top);
        self.op(&format!("local.get {i}"));
        self.op(&format!("i64.const {n}"));
        self.op("i64.ge_s");
        self.op(&format!("br_if {exit}"));
        self.burn_fuel(&exit, "br_if");
        self.loops.push(exit.clone());
        self.block(nest + 1);
        self.loops.pop();
        if carry {
            self.expr(K::I, 1);
            self.op("i64.xor");
        }
        self.op(&format!("local.get {i}"));
        self.op("i64.const 1");
        self.op("i64.add");
        self.op(&format!("local.set {i}"));
        self.op(&format!("br {top}"));
        self.place(&exit);
        if carry {
            self.held -= 1;
            let n = self.writable(K::I);
            let n = self.pick_name(&n);
            self.op(&format!("local.set {n}"));
        }
    }

    /// Skips to `skip` when the call depth is reached.
    fn depth_guard(&mut self, skip: &str) {
        self.op("local.get d");
        self.op(&format!("i64.const {MAX_DEPTH}"));
        self.op("i64.ge_s");
        self.op(&format!("br_if {skip}"));
    }

    /// A direct call of any function (itself included), its result kept or
    /// dropped.
    fn call(&mut self) {
        let callee = self.b.below(self.sigs.len());
        let skip = self.label();
        self.depth_guard(&skip);
        self.op("local.get p");
        self.op("local.get fuel");
        self.op("local.get d");
        self.op("i64.const 1");
        self.op("i64.add");
        let sig = self.sigs[callee].clone();
        for s in &sig.extra {
            self.expr(kind(*s), 2);
        }
        self.op(&format!("call f{callee}"));
        if let Some(r) = sig.ret {
            if self.b.chance(80) {
                let n = self.writable(kind(r));
                let n = self.pick_name(&n);
                self.op(&format!("local.set {n}"));
            } else {
                self.op("drop");
            }
        }
        self.place(&skip);
    }

    /// A call through C: `tbfz_apply` with a function's native pointer.
    fn call_from_c(&mut self) {
        let targets: Vec<usize> = (0..self.sigs.len())
            .filter(|i| self.sigs[*i].callable())
            .collect();
        let callee = self.pick(&targets);
        let skip = self.label();
        self.depth_guard(&skip);
        self.op(&format!("ref.func f{callee}"));
        self.op("local.get p");
        self.op("local.get fuel");
        self.op("local.get d");
        self.op("i64.const 1");
        self.op("i64.add");
        self.expr(K::I, 2);
        self.op("call tbfz_apply");
        let n = self.writable(K::I);
        let n = self.pick_name(&n);
        self.op(&format!("local.set {n}"));
        self.place(&skip);
    }

    fn function(&mut self, me: usize) {
        self.me = me;
        self.ops = 0;
        self.loops.clear();
        let sig = self.sigs[me].clone();
        write!(self.out, "fn f{me}(p: ptr, fuel: ptr, d: i64").unwrap();
        for (i, s) in sig.extra.iter().enumerate() {
            write!(self.out, ", q{i}: {s}").unwrap();
        }
        self.out.push(')');
        if let Some(r) = sig.ret {
            write!(self.out, " -> {r}").unwrap();
        }
        self.out.push('\n');
        for l in ["a", "b", "c", "i0", "i1", "i2"] {
            writeln!(self.out, "  local {l}: i64").unwrap();
        }
        for l in ["x", "y"] {
            writeln!(self.out, "  local {l}: f64").unwrap();
        }
        // Out of fuel: return a constant at once.
        let body = self.label();
        self.burn_fuel(&body, "br_unless");
        match sig.ret.map(kind) {
            Some(K::I) => self.op("i64.const 0"),
            Some(K::F) => self.op("f64.const 0"),
            None => {}
        }
        self.op("return");
        self.place(&body);
        self.block(0);
        self.ret(3);
        self.out.push_str("end\n");
    }
}

/// A program from bytes: 1 to 4 functions `f0`..`f3`, each
/// `(p: ptr, fuel: ptr, d: i64, ...)`, with straight-line code, branches,
/// joins with values on the stack, counted loops (some with a value riding
/// through), breaks, early returns, calls of any function (itself
/// included) and calls through C, loads and stores inside `p`'s 8 slots,
/// and now and then a division by zero or a null pointer.
fn generate(b: &mut Bytes<'_>) -> (String, Vec<FnSig>) {
    let n = 1 + b.below(4);
    let sigs: Vec<FnSig> = (0..n)
        .map(|_| {
            if b.chance(35) {
                return FnSig {
                    extra: vec![Scalar::I64],
                    ret: Some(Scalar::I64),
                };
            }
            let extra = (0..b.below(4))
                .map(|_| TYPES[b.below(TYPES.len())])
                .collect();
            let ret = match b.below(8) {
                0 => None,
                1..4 => Some(Scalar::I64),
                _ => Some(TYPES[b.below(TYPES.len())]),
            };
            FnSig { extra, ret }
        })
        .collect();
    let mut g = Gen {
        b,
        sigs,
        out: String::from(APPLY),
        labels: 0,
        me: 0,
        loops: Vec::new(),
        held: 0,
        ops: 0,
    };
    for me in 0..n {
        g.function(me);
    }
    (g.out, g.sigs)
}

/// The program text an input of `tiers_agree` makes (to read a reproducer).
pub fn tiers_program(data: &[u8]) -> String {
    generate(&mut Bytes::new(data)).0
}

/// The bridges runtimes use: libffi for the interpreter-only runtime, the
/// generated backend for the tiered ones (in a build without code
/// generation, `--cfg tierbridge_no_codegen`, the libffi bridge it falls
/// back to, on which every way interprets).
fn bridges() -> &'static (Arc<Bridge>, Arc<Bridge>) {
    static B: OnceLock<(Arc<Bridge>, Arc<Bridge>)> = OnceLock::new();
    B.get_or_init(|| {
        let g = Bridge::new(BackendKind::Generated).expect("a bridge");
        if cfg!(tierbridge_codegen) {
            assert_eq!(
                g.kind(),
                BackendKind::Generated,
                "{:?}",
                g.fallback_reason()
            );
        }
        (Arc::new(Bridge::libffi()), Arc::new(g))
    })
}

/// What one way of running a program gave: per call the result (or the
/// error's text) and the fuel left; then the data buffer.
type Outcome = (Vec<(Result<u64, String>, u64)>, [u64; BUF_SLOTS]);

/// The `tiers_agree` target. The bytes make a program ([`generate`]), the
/// first function's arguments and the data buffer; the program runs
/// interpreter-only (on libffi), tiered with call and loop thresholds of 1,
/// 2, 3 and 4, by OSR alone, and with every guard forced to deoptimize, each
/// in a fresh runtime calling `f0` twice (the second call starts from
/// whatever code the first left). Every way must give the same results (the
/// same trap, word for word, where one traps), the same fuel left and
/// the same memory.
pub fn tiers_agree(data: &[u8]) {
    let mut b = Bytes::new(data);
    let (text, sigs) = generate(&mut b);
    let program = parse_program(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut buf0 = [0u64; BUF_SLOTS];
    for s in &mut buf0 {
        *s = if b.chance(50) {
            b.u64()
        } else {
            b.below(16) as u64
        };
    }
    let arg_sets: Vec<Vec<u64>> = (0..2)
        .map(|_| sigs[0].extra.iter().map(|s| arg(&mut b, *s)).collect())
        .collect();
    let (c, l) = (1 + b.below(4) as u32, 1 + b.below(4) as u32);
    let hot = |n| TierConfig {
        call_threshold: n,
        loop_threshold: n,
        ..TierConfig::default()
    };
    let ways = [
        ("interpreter", TierConfig::interpreter_only()),
        ("tiered 1", hot(1)),
        ("tiered 2", hot(2)),
        ("tiered 3", hot(3)),
        ("tiered 4", hot(4)),
        (
            "osr only",
            TierConfig {
                call_threshold: u32::MAX,
                ..hot(l)
            },
        ),
        (
            "forced deopt",
            TierConfig {
                call_threshold: c,
                loop_threshold: l,
                force_deopt: true,
                ..TierConfig::default()
            },
        ),
    ];
    let ret_float = sigs[0].ret == Some(Scalar::F64);
    let mut first: Option<(&str, Outcome)> = None;
    for (name, config) in ways {
        let outcome = run(&program, name, config, &buf0, &arg_sets, ret_float);
        match &first {
            None => first = Some((name, outcome)),
            Some((n0, o0)) => assert!(
                *o0 == outcome,
                "{name} differs from {n0}:\n{o0:?}\n{outcome:?}\n{text}"
            ),
        }
    }
}

/// An argument of type `s` from the bytes, as its slot.
fn arg(b: &mut Bytes<'_>, s: Scalar) -> u64 {
    match s {
        Scalar::F64 => {
            const F: [f64; 8] = [0.0, -0.0, 1.5, -7.25, 1e300, f64::INFINITY, 4e18, -1e-310];
            F[b.below(F.len())].to_bits()
        }
        _ if b.chance(50) => b.below(16) as u64,
        _ => b.u64(),
    }
}

/// Runs the program one way. `ret_float`: `f0` returns `f64`, whose NaNs are
/// compared as one (which NaN an operation makes is not specified).
fn run(
    program: &tierbridge::interp::Program,
    name: &str,
    config: TierConfig,
    buf0: &[u64; BUF_SLOTS],
    arg_sets: &[Vec<u64>],
    ret_float: bool,
) -> Outcome {
    let (ffi, generated) = bridges();
    let bridge = if name == "interpreter" {
        ffi
    } else {
        generated
    };
    // SAFETY: the generated programs load and store only inside the
    // buffer `p` (8 slots; addresses `p + 8 * (x & 7)`) and the fuel cell,
    // both alive for every call made here; their one native, tbfz_apply, is
    // given only function pointers of its callee signature.
    let rt = unsafe {
        Runtime::with_tiers(
            program.clone(),
            bridge.clone(),
            FailurePolicy::Report,
            config,
        )
    }
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    // SAFETY: tbfz_apply has the declared signature.
    unsafe { rt.bind_native("tbfz_apply", tbfz_apply as *const c_void) }
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut buf = *buf0;
    let mut calls = Vec::new();
    for extra in arg_sets {
        let mut fuel = FUEL;
        let mut args = vec![buf.as_mut_ptr() as u64, &mut fuel as *mut u64 as u64, 0];
        args.extend(extra);
        let r = rt
            .call("f0", &args)
            .map(|v| {
                if ret_float && f64::from_bits(v).is_nan() {
                    f64::NAN.to_bits()
                } else {
                    v
                }
            })
            .map_err(|e| e.to_string());
        calls.push((r, fuel));
    }
    (calls, buf)
}
