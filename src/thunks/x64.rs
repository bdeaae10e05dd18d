//! The generated backend: x86-64 exit stubs and entry thunks assembled with
//! dynasm from a [`CallLayout`]. The emitters read the layout; they never
//! re-derive ABI rules. Code is position independent (internal labels only,
//! absolute addresses as 64-bit immediates), assembled into a `CodeBuf` on
//! the emitter's stack (`code.rs`) and copied from there into
//! [`ExecMemory`](super::exec::ExecMemory).
//!
//! Frames (ABI.md, "Generated code"):
//! - exit stub, called from Rust as `extern "C" fn(args, ret, target, errno)`:
//!   keeps `ret` and `errno` in r12/r13 (saved), the argument pointer and the
//!   target in r11/r10; reserves `stack_bytes + copy_bytes` so `rsp` is
//!   16-byte aligned at the call, loads every part from the slots, calls,
//!   reads errno if asked, stores the result parts.
//! - register stub (SysV), called from Rust as `extern "C" fn(args, target,
//!   ret) -> (u64, f64)`: loads the argument registers and jumps to the
//!   target, or, with stack arguments or a same-class pair result, copies the
//!   stack arguments into an outgoing area of its own (`stack_bytes + 8`, so
//!   `rsp` is 16-byte aligned at the call), calls, and returns rax and xmm0.
//! - entry thunk, reached through a trampoline that puts the binding in r10:
//!   keeps nothing in callee-saved registers (on Win64 it saves rdi, rsi and
//!   xmm6–xmm15, which the SysV dispatcher it calls may clobber), spills each
//!   argument part into slots (reading only the declared width), calls the
//!   dispatcher with everything in registers (`&binding.raw`, the argument
//!   slots, the result slots, the variadic cursor), then loads the result parts.

// dynasm's macro converts dynamic register numbers with `.into()`.
#![allow(clippy::useless_conversion)]

use std::mem::offset_of;

use dynasmrt::{DynasmApi, DynasmLabelApi, dynasm};
use smallvec::SmallVec;

use super::code::{CodeBuf, CodeSpace};
use crate::visibility::{Cfa, Reg, Unwind, UnwindRow};

use crate::abi::{
    ArgPass, CallConv, CallLayout, Gpr, Loc, Part, PartKind, RetPass, Scalar, Signature, Type,
};
use crate::host::{RawBinding, RawDispatch, RawVaList};

/// `dynasm!` of the first form when `$disp` fits in a signed byte (bound to
/// `$b`, an `i8`, for the form's `BYTE` displacement or immediate), else of
/// the second. dynasm encodes a displacement or immediate worked out at run
/// time in 32 bits unless told `BYTE`, which makes such an instruction 3
/// bytes longer; the frame offsets of an entry thunk nearly always fit.
macro_rules! by_size {
    ($ops:ident, $disp:expr, $b:ident => [$($short:tt)*] else [$($long:tt)*]) => {
        match i8::try_from($disp) {
            Ok($b) => dynasm!($ops ; .arch x64 ; $($short)*),
            Err(_) => dynasm!($ops ; .arch x64 ; $($long)*),
        }
    };
}

/// The unwind rows of one piece of generated code, recorded as it is
/// emitted: after each instruction that moves `rsp` or saves a register, the
/// frame as it is from there on (`crate::visibility::Unwind::Rows`).
pub(crate) struct Cfi {
    rows: Vec<UnwindRow>,
    /// CFA = rsp + `cfa` now (the bytes pushed and reserved since the call).
    cfa: u32,
    /// Whether `rbp` is the frame pointer now (CFA = rbp + 16).
    fp: bool,
    saved: Vec<(Reg, i32)>,
}

impl Cfi {
    /// At a function's first instruction: CFA = rsp + 8, nothing saved.
    pub(crate) fn new() -> Cfi {
        Cfi {
            rows: Vec::new(),
            cfa: 8,
            fp: false,
            saved: Vec::new(),
        }
    }

    fn row(&mut self, at: usize) {
        let cfa = if self.fp {
            Cfa::Rbp(16)
        } else {
            Cfa::Rsp(self.cfa)
        };
        let row = UnwindRow {
            at: at as u32,
            cfa,
            saved: self.saved.clone(),
        };
        // A later row at the same offset replaces the earlier one.
        match self.rows.last_mut() {
            Some(last) if last.at == row.at => *last = row,
            _ => self.rows.push(row),
        }
    }

    /// A function starts at `at` (a second one in the same code).
    pub(crate) fn start(&mut self, at: usize) {
        self.cfa = 8;
        self.fp = false;
        self.saved.clear();
        self.row(at);
    }

    /// `mov rbp, rsp` ended at `at`: from here the frame is found from rbp.
    pub(crate) fn frame_pointer(&mut self, at: usize) {
        self.fp = true;
        self.row(at);
    }

    /// `pop rbp` ended at `at`: the frame is found from rsp again.
    pub(crate) fn pop_frame_pointer(&mut self, at: usize) {
        self.fp = false;
        self.cfa -= 8;
        self.saved.retain(|(r, _)| *r != Reg::Rbp);
        self.row(at);
    }

    /// The current frame (for `resume`).
    pub(crate) fn frame(&self) -> (u32, bool, Vec<(Reg, i32)>) {
        (self.cfa, self.fp, self.saved.clone())
    }

    /// Code from `at` on runs in `frame` (taken earlier with `frame`).
    pub(crate) fn resume(&mut self, at: usize, frame: (u32, bool, Vec<(Reg, i32)>)) {
        (self.cfa, self.fp, self.saved) = frame;
        self.row(at);
    }

    /// `rsp` moved down by `by` bytes by the instruction ending at `at`.
    fn grow(&mut self, at: usize, by: u32) {
        self.cfa += by;
        self.row(at);
    }

    /// `push reg` ended at `at`.
    pub(crate) fn push(&mut self, at: usize, reg: Reg) {
        self.cfa += 8;
        self.saved.push((reg, -(self.cfa as i32)));
        self.row(at);
    }

    /// `rsp` moved up by `by` bytes by the instruction ending at `at`.
    fn shrink(&mut self, at: usize, by: u32) {
        self.cfa -= by;
        self.row(at);
    }

    /// `pop reg` ended at `at`.
    pub(crate) fn pop(&mut self, at: usize, reg: Reg) {
        self.cfa -= 8;
        self.saved.retain(|(r, _)| *r != reg);
        self.row(at);
    }

    /// The rows recorded.
    pub(crate) fn finish(self) -> Unwind {
        Unwind::Rows(self.rows)
    }
}

/// The code an emitter assembled. Its labels are all local and defined by
/// the emitter itself, and its jumps have 32-bit displacements, so a failure
/// is a bug here.
fn finished(ops: CodeBuf<'_>) -> &[u8] {
    match ops.code() {
        Ok(code) => code,
        Err(e) => unreachable!("a thunk emitter's code: {e}"),
    }
}

/// What the exit stub takes in `rcx`: where errno lives and the value to put
/// there before the call; the value found right after the call is written back.
#[repr(C)]
pub(crate) struct ErrnoIo {
    pub(crate) loc: *mut i32,
    pub(crate) value: i32,
}

/// The part of a binding generated code reads (at the start of every binding).
#[repr(C)]
pub(crate) struct BindingHead {
    /// Where the trampoline jumps: the shared thunk of the signature.
    pub(crate) thunk: unsafe extern "C" fn(),
    pub(crate) dispatch: RawDispatch,
    /// What the dispatcher receives, by address.
    pub(crate) raw: RawBinding,
}

fn d(v: u32) -> i32 {
    i32::try_from(v).expect("frame offsets fit in 32 bits")
}

/// Bytes of incoming or outgoing stack arguments actually used (not rounded to 16).
fn stack_end(l: &CallLayout) -> u32 {
    let mut end = if l.conv == CallConv::Win64 {
        crate::abi::WIN64_SHADOW_BYTES
    } else {
        0
    };
    for a in &l.args {
        let locs: Vec<(Loc, u32)> = match &a.pass {
            ArgPass::Direct(parts) => parts.iter().map(|p| (p.loc, p.size)).collect(),
            ArgPass::ByRef { ptr, .. } => vec![(*ptr, 8)],
        };
        for (loc, size) in locs {
            if let Loc::Stack(off) = loc {
                end = end.max(off + size.next_multiple_of(8));
            }
        }
    }
    end
}

/// What an emitter's output depends on: exactly the layout fields it reads,
/// with scalar types reduced to the classes the emitters tell apart, one byte
/// per field. Two layouts with equal keys get the same bytes from that
/// emitter (a unit test checks this over random signatures), so signatures of
/// one machine shape share one copy of the code. Layouts whose fields do not
/// fit (a field over 255, more than [`KEY_BYTES`] fields) have no key: their
/// code is made for them alone.
#[derive(Clone, Copy)]
pub(super) struct CodeKey {
    len: u8,
    bytes: [u8; KEY_BYTES],
}

impl CodeKey {
    /// The key's fields, one byte each.
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Room in a key: enough for ten scalar arguments and a scalar result.
const KEY_BYTES: usize = 127;

/// A key being built: fields past the end or over 255 only set `bad` (no
/// branch per field), which the finished key is checked for once.
struct KeyBuf {
    bytes: [u8; KEY_BYTES],
    len: usize,
    bad: bool,
}

impl KeyBuf {
    fn new() -> KeyBuf {
        KeyBuf {
            bytes: [0; KEY_BYTES],
            len: 0,
            bad: false,
        }
    }

    #[inline(always)]
    fn push(&mut self, field: u32) {
        self.bytes[self.len.min(KEY_BYTES - 1)] = field as u8;
        self.len += 1;
        self.bad |= field > 255;
    }

    /// The key, unless a field did not fit.
    fn finish(self) -> Option<CodeKey> {
        (!self.bad && self.len <= KEY_BYTES).then_some(CodeKey {
            len: self.len as u8,
            bytes: self.bytes,
        })
    }

    #[inline(always)]
    fn loc(&mut self, loc: Loc) {
        match loc {
            Loc::Gpr(g) => self.push(g as u32),
            Loc::Xmm(n) => self.push(16 + u32::from(n)),
            Loc::XmmAndGpr(n, g) => {
                self.push(32 + u32::from(n));
                self.push(g as u32);
            }
            Loc::Stack(off) => {
                self.push(48);
                // Stack arguments are eightbyte-aligned in both conventions.
                self.push(if off % 8 == 0 { off / 8 } else { u32::MAX });
            }
        }
    }

    #[inline(always)]
    fn kind(&mut self, k: PartKind) {
        self.push(match k {
            PartKind::Scalar(s) => scalar_class(s),
            PartKind::IntBytes => 9,
            PartKind::SseBytes => 10,
            PartKind::Memory => 11,
        });
    }

    /// The arguments' fields: for each, its first slot and, per part, where
    /// it travels, its offset and size (by reference: the pointer's location,
    /// the copy's offset, the struct's size); with `CLASSES`, also each
    /// argument's slot count and each part's class (entry thunks extend and
    /// pair slots by type, and copy exactly a part's bytes), and without,
    /// sizes in whole 8-byte words (exit stubs only move slots, a word at a
    /// time).
    fn args<const CLASSES: bool>(&mut self, l: &CallLayout) {
        self.push(l.args.len() as u32);
        for a in &l.args {
            let tag = match &a.pass {
                ArgPass::Direct(_) => 0,
                ArgPass::ByRef { .. } => 1,
            };
            self.push(tag);
            self.push(a.slot);
            if CLASSES {
                self.push(a.slots);
            }
            match &a.pass {
                ArgPass::Direct(parts) => {
                    self.push(parts.len() as u32);
                    for p in parts {
                        if CLASSES {
                            self.kind(p.kind);
                        }
                        self.loc(p.loc);
                        self.push(p.offset);
                        self.push(if CLASSES { p.size } else { p.size.div_ceil(8) });
                    }
                }
                ArgPass::ByRef { ptr, copy } => {
                    self.loc(*ptr);
                    self.push(*copy);
                    let size = a.ty.size();
                    self.push(if CLASSES { size } else { size.div_ceil(8) });
                }
            }
        }
    }

    /// The result's fields, the same for both emitters (each reads all of them).
    fn ret(&mut self, l: &CallLayout) {
        match &l.ret {
            RetPass::Void => self.push(0),
            RetPass::Direct(parts) => {
                self.push(1);
                self.push(parts.len() as u32);
                for p in parts {
                    self.kind(p.kind);
                    self.loc(p.loc);
                    self.push(p.offset);
                }
            }
            RetPass::Sret { ptr } => {
                self.push(2);
                self.push(*ptr as u32);
            }
        }
        self.push(l.ret_size);
        self.push(l.ret_slots);
    }
}

/// Scalars every emitter treats alike share a class (64-bit integers and
/// pointers; `u8` and `bool`); every other scalar is its own class. The
/// float classes, and only they, have bit 3 set, so a signature's exit key
/// (float or not per parameter) is read off its entry key
/// ([`SigKeys::exit_of`]).
fn scalar_class(s: Scalar) -> u32 {
    match s {
        Scalar::I64 | Scalar::U64 | Scalar::Ptr => 0,
        Scalar::U8 | Scalar::Bool => 1,
        Scalar::I8 => 2,
        Scalar::I16 => 3,
        Scalar::U16 => 4,
        Scalar::I32 => 5,
        Scalar::U32 => 6,
        Scalar::F32 => FLOAT_CLASS,
        Scalar::F64 => FLOAT_CLASS + 1,
    }
}

/// The first float class: bit 3, which no other class has.
const FLOAT_CLASS: u32 = 8;

/// The key of a signature's exit stubs (the register stub and both
/// slot stubs): argument parts matter only by where they come from (slot
/// offset, size) and where they go, not by type.
pub(super) fn exit_key(l: &CallLayout) -> Option<CodeKey> {
    let mut key = KeyBuf::new();
    key.push(l.conv as u32);
    key.push(l.stack_bytes);
    key.push(l.copy_bytes);
    key.push(l.al.map_or(0, |al| u32::from(al) + 1));
    key.args::<false>(l);
    key.ret(l);
    key.finish()
}

/// The key of a signature's entry thunk (`variadic`: a declared variadic
/// signature): argument parts matter by scalar class too (how a narrow
/// integer is extended into its slot, which slots pair up).
pub(super) fn entry_key(l: &CallLayout, variadic: bool) -> Option<CodeKey> {
    let mut key = KeyBuf::new();
    key.push(l.conv as u32);
    key.push(u32::from(variadic));
    key.push(l.stack_bytes);
    key.push(l.copy_bytes);
    key.push(u32::from(l.gprs_used));
    key.push(u32::from(l.xmms_used));
    key.push(l.arg_slots);
    key.args::<true>(l);
    key.ret(l);
    key.finish()
}

/// A signature's own key for its exit code or entry thunk
/// ([`scalar_sig_keys`]): 4-bit fields packed into 128 bits, so finding a
/// shape by it hashes and compares two words. Bits 0–3: the convention;
/// 4–7: the result (0 for none, else 1 + its [`scalar_class`]); 8–15: the
/// number of parameters; from bit 16, 4 bits per parameter, its class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct SigKey(pub(super) u128);

/// The most parameters a [`SigKey`] has room for.
const SIG_KEY_PARAMS: usize = (128 - 16) / 4;

/// A signature's two keys ([`scalar_sig_keys`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SigKeys {
    /// For its exit code: each parameter's class is 1 for a float, else 0.
    pub(super) exit: SigKey,
    /// For its entry thunk: each parameter's class is its [`scalar_class`].
    pub(super) entry: SigKey,
}

impl SigKeys {
    /// The exit key of a signature with entry key `entry`: each parameter's
    /// field keeps only bit 3 of its class, moved to bit 0 (set for the
    /// float classes alone); the header is the same.
    fn exit_of(entry: SigKey) -> SigKey {
        // Bit 0 of every parameter field (bits 16 and up).
        const FIELD_BIT0: u128 = (u128::MAX / 0xF) & !0xFFFF;
        let header = entry.0 & 0xFFFF;
        SigKey(header | ((entry.0 >> 3) & FIELD_BIT0))
    }
}

/// The keys for a signature's exit code and entry thunk read off the
/// signature itself, without classifying it, when it has them: a signature
/// that is not variadic, has at most [`SIG_KEY_PARAMS`] parameters, and
/// whose parameters and result are all scalars (or no result). Their fields
/// ([`SigKey`]) are the convention, the result's class ([`scalar_class`])
/// and each parameter's class: for the entry thunk [`scalar_class`] too, for
/// the exit code only float or not (an exit stub moves a scalar's whole slot
/// into its register or stack slot whatever its type and width; the
/// layout's [`exit_key`] has no classes for arguments either, and counts
/// their sizes in words). Classification places such a signature's scalars
/// by convention, position, float or not and width: an entry class fixes
/// all of these, and an exit class all but the width, which [`exit_key`]
/// does not see. So two signatures with equal keys have equal layout keys
/// ([`exit_key`], [`entry_key`]; a unit test checks this over random
/// signatures). The generated backend looks these keys up first and
/// classifies only when they are new (ABI.md, "Generated code").
pub(super) fn scalar_sig_keys(sig: &Signature, conv: CallConv) -> Option<SigKeys> {
    let params = sig.params();
    if sig.is_variadic() || params.len() > SIG_KEY_PARAMS {
        return None;
    }
    let ret = match sig.ret() {
        None => 0,
        Some(Type::Scalar(s)) => 1 + scalar_class(*s),
        Some(Type::Struct(_)) => return None,
    };
    // This runs for every new signature, once for both keys: the first 12
    // parameters' classes fill the low word after the header, the rest the
    // high word.
    let (first, rest) = params.split_at(params.len().min(12));
    let low = conv as u64
        | u64::from(ret) << 4
        | (params.len() as u64) << 8
        | param_classes(first)? << 16;
    let entry = SigKey(u128::from(param_classes(rest)?) << 64 | u128::from(low));
    Some(SigKeys {
        exit: SigKeys::exit_of(entry),
        entry,
    })
}

/// The [`scalar_class`]es of at most 16 parameters, 4 bits each from bit 0,
/// if all are scalars.
#[inline(always)]
fn param_classes(params: &[Type]) -> Option<u64> {
    let mut classes = 0u64;
    for (i, t) in params.iter().enumerate() {
        let Type::Scalar(s) = t else {
            return None;
        };
        classes |= u64::from(scalar_class(*s)) << (4 * i);
    }
    Some(classes)
}

/// Copies exactly `size` bytes from `[src + s]` to `[dst + t]` through rax.
#[inline(always)]
fn copy_exact(ops: &mut CodeBuf, src: u8, s: i32, dst: u8, t: i32, size: u32) {
    let mut k = 0i32;
    let size = size as i32;
    while k + 8 <= size {
        dynasm!(ops ; .arch x64 ; mov rax, QWORD [Rq(src) + s + k] ; mov QWORD [Rq(dst) + t + k], rax);
        k += 8;
    }
    if k + 4 <= size {
        dynasm!(ops ; .arch x64 ; mov eax, DWORD [Rq(src) + s + k] ; mov DWORD [Rq(dst) + t + k], eax);
        k += 4;
    }
    if k + 2 <= size {
        dynasm!(ops ; .arch x64 ; mov ax, WORD [Rq(src) + s + k] ; mov WORD [Rq(dst) + t + k], ax);
        k += 2;
    }
    if k < size {
        dynasm!(ops ; .arch x64 ; mov al, BYTE [Rq(src) + s + k] ; mov BYTE [Rq(dst) + t + k], al);
    }
}

/// Copies exactly `size` bytes of result slots at `[rsp + rets]` to the
/// caller's buffer at `[r11]`, each whole 16 bytes as one store built from two
/// 8-byte loads (xmm0 is free: the result travels in memory). The host wrote
/// the slots 8 bytes at a time, which two 8-byte loads forward from; a caller
/// that copies the struct with 16-byte loads (compilers do) then forwards from
/// one store instead of stalling on two, and one reading 8 bytes forwards
/// from either half (ABI.md, "Generated code", the entry thunk).
#[inline(always)]
fn copy_out_paired(ops: &mut CodeBuf, rets: i32, size: u32) {
    let pairs = size / 16;
    for k in 0..pairs as i32 {
        let at = 16 * k;
        dynasm!(ops ; .arch x64
            ; movq xmm0, QWORD [rsp + rets + at]
            ; movhps xmm0, QWORD [rsp + rets + at + 8]
            ; movdqu [r11 + at], xmm0
        );
    }
    let done = d(pairs * 16);
    copy_exact(ops, RSP, rets + done, R11, done, size % 16);
}

/// Copies `ceil(size/8)` whole quadwords (both sides are slot- or
/// stack-slot-granular, so this never reads or writes outside them).
#[inline(always)]
fn copy_qwords(ops: &mut CodeBuf, src: u8, s: i32, dst: u8, t: i32, size: u32) {
    for k in 0..size.div_ceil(8) as i32 {
        dynasm!(ops ; .arch x64 ; mov rax, QWORD [Rq(src) + s + 8 * k] ; mov QWORD [Rq(dst) + t + 8 * k], rax);
    }
}

/// An exit stub's copy of `size` bytes of argument slots at `[r11 + s]` to
/// its outgoing area at `[rsp + t]` (as `copy_qwords`). Past 32 quadwords, a
/// `rep movsq` instead of a move pair per quadword, so that the code stays
/// small for large structs by value. rdi, rsi and rcx (which may hold
/// arguments already) wait in xmm13–xmm15 meanwhile: no argument travels
/// there in either convention, and the stub's own caller (the host's SysV
/// code) keeps nothing in them; `rsp` does not move, so the unwind rows stay
/// as they are. The direction flag is clear at any call (both conventions).
#[inline(always)]
fn copy_to_stack(ops: &mut CodeBuf, s: i32, t: i32, size: u32) {
    let qwords = size.div_ceil(8);
    if qwords <= 32 {
        return copy_qwords(ops, R11, s, RSP, t, size);
    }
    dynasm!(ops ; .arch x64
        ; movq xmm13, rdi ; movq xmm14, rsi ; movq xmm15, rcx
        ; lea rsi, [r11 + s] ; lea rdi, [rsp + t] ; mov ecx, qwords as i32
        ; rep movsq
        ; movq rcx, xmm15 ; movq rsi, xmm14 ; movq rdi, xmm13
    );
}

/// rax = the scalar in register `g`, extended as its type says.
#[inline(always)]
pub(crate) fn extend_reg<A: DynasmApi>(ops: &mut A, s: Scalar, g: u8) {
    match s {
        Scalar::I8 => dynasm!(ops ; .arch x64 ; movsx rax, Rb(g)),
        Scalar::U8 | Scalar::Bool => dynasm!(ops ; .arch x64 ; movzx eax, Rb(g)),
        Scalar::I16 => dynasm!(ops ; .arch x64 ; movsx rax, Rw(g)),
        Scalar::U16 => dynasm!(ops ; .arch x64 ; movzx eax, Rw(g)),
        Scalar::I32 => dynasm!(ops ; .arch x64 ; movsxd rax, Rd(g)),
        Scalar::U32 | Scalar::F32 => dynasm!(ops ; .arch x64 ; mov eax, Rd(g)),
        Scalar::I64 | Scalar::U64 | Scalar::F64 | Scalar::Ptr => {
            dynasm!(ops ; .arch x64 ; mov rax, Rq(g))
        }
    }
}

/// rax = the scalar at `[base + o]`, reading only its width, extended.
#[inline(always)]
pub(crate) fn extend_mem<A: DynasmApi>(ops: &mut A, s: Scalar, base: u8, o: i32) {
    match s {
        Scalar::I8 => by_size!(ops, o, b =>
            [movsx rax, BYTE [BYTE Rq(base) + b]] else [movsx rax, BYTE [Rq(base) + o]]),
        Scalar::U8 | Scalar::Bool => by_size!(ops, o, b =>
            [movzx eax, BYTE [BYTE Rq(base) + b]] else [movzx eax, BYTE [Rq(base) + o]]),
        Scalar::I16 => by_size!(ops, o, b =>
            [movsx rax, WORD [BYTE Rq(base) + b]] else [movsx rax, WORD [Rq(base) + o]]),
        Scalar::U16 => by_size!(ops, o, b =>
            [movzx eax, WORD [BYTE Rq(base) + b]] else [movzx eax, WORD [Rq(base) + o]]),
        Scalar::I32 => by_size!(ops, o, b =>
            [movsxd rax, DWORD [BYTE Rq(base) + b]] else [movsxd rax, DWORD [Rq(base) + o]]),
        Scalar::U32 | Scalar::F32 => by_size!(ops, o, b =>
            [mov eax, DWORD [BYTE Rq(base) + b]] else [mov eax, DWORD [Rq(base) + o]]),
        Scalar::I64 | Scalar::U64 | Scalar::F64 | Scalar::Ptr => by_size!(ops, o, b =>
            [mov rax, QWORD [BYTE Rq(base) + b]] else [mov rax, QWORD [Rq(base) + o]]),
    }
}

const RAX: u8 = Gpr::Rax as u8;
const RSP: u8 = Gpr::Rsp as u8;
const R11: u8 = Gpr::R11 as u8;

/// How a register stub hands back its result. Its Rust type is always
/// `extern "C" fn(args: *const u64, target, ret: *mut u64) -> (u64, f64)`,
/// the pair returned in rax and xmm0 (a `#[repr(C)]` struct of a `u64` and
/// an `f64`), so every signature takes the same path on the Rust side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FastRet {
    /// The first `slots` (0, 1 or 2) result slots, in rax and xmm0: slot 0
    /// in xmm0 and slot 1 in rax when `sse_first`, else the other way round.
    /// The registers hold what the target returned: a narrow integer or an
    /// `f32` has still to be put in slot form (`Scalar::slot_ext`); struct
    /// eightbytes are whole.
    Regs {
        /// How many result slots come back (0 to 2).
        slots: u8,
        /// Whether slot 0 is in xmm0.
        sse_first: bool,
    },
    /// A result in memory (SysV sret), written by the callee straight into
    /// the result slots, whose address the stub passes on as the hidden
    /// pointer; rax and xmm0 mean nothing.
    Sret,
}

/// A signature's two slot stubs in one piece of code (assembled in `space`):
/// the plain one at offset 0 and the errno-capturing one at the returned
/// offset. Both are
/// `extern "C" fn(args: *const u64, ret: *mut u64, target, errno: *mut ErrnoIo)`
/// (the plain one ignores `errno`).
pub(super) fn emit_slot_exits<'a>(
    space: &'a mut CodeSpace,
    l: &CallLayout,
) -> (&'a [u8], usize, Unwind) {
    let mut ops = CodeBuf::new(space);
    let mut cfi = Cfi::new();
    emit_exit(&mut ops, l, false, &mut cfi);
    // The second stub starts 16-byte aligned, `int3`s (0xcc) before it.
    ops.align(16, 0xcc);
    let errno_at = ops.offset().0;
    cfi.start(errno_at);
    emit_exit(&mut ops, l, true, &mut cfi);
    (finished(ops), errno_at, cfi.finish())
}

/// The register stub (assembled in `space`), when the layout allows one, and
/// how it returns.
pub(super) fn emit_fast_exit<'a>(
    space: &'a mut CodeSpace,
    l: &CallLayout,
) -> Option<(&'a [u8], FastRet, Unwind)> {
    let kind = fast_ret(l)?;
    let mut ops = CodeBuf::new(space);
    let mut cfi = Cfi::new();
    emit_exit_fast(&mut ops, l, &mut cfi);
    Some((finished(ops), kind, cfi.finish()))
}

/// Whether the layout allows a register stub, and how its result comes
/// back: SysV, every argument part in a register or the stack argument area
/// (nothing by reference), and no result, a result of one or two eightbytes
/// in registers (a scalar, or a struct of at most 16 bytes), or a result in
/// memory (whose hidden pointer is the result slots).
fn fast_ret(l: &CallLayout) -> Option<FastRet> {
    if l.conv != CallConv::SysV || l.copy_bytes != 0 {
        return None;
    }
    let by_value = l.args.iter().all(|a| match &a.pass {
        ArgPass::Direct(parts) => parts
            .iter()
            .all(|p| matches!(p.loc, Loc::Gpr(_) | Loc::Xmm(_) | Loc::Stack(_))),
        ArgPass::ByRef { .. } => false,
    });
    if !by_value {
        return None;
    }
    match &l.ret {
        RetPass::Void => Some(FastRet::Regs {
            slots: 0,
            sse_first: false,
        }),
        // Both conventions return at most two eightbytes in registers, one
        // result slot each (psABI 3.2.3, returning of values); a pair of one
        // class comes back moved into rax and xmm0 (see `emit_exit_fast`).
        RetPass::Direct(parts) => Some(FastRet::Regs {
            slots: parts.len() as u8,
            sse_first: matches!(parts[0].loc, Loc::Xmm(_)),
        }),
        RetPass::Sret { .. } => Some(FastRet::Sret),
    }
}

/// The register stub, `extern "C" fn(args: *const u64, target, ret) ->
/// (u64, f64)` (rax, xmm0): loads the argument registers from the slots,
/// then jumps to the target, which returns straight to the stub's caller
/// (its result in rax and/or xmm0, or written through the hidden pointer).
/// Two cases call the target instead, with the stub's own frame under it:
/// stack arguments (copied from their slots into an outgoing area the stub
/// makes, as the target must find them right above its return address), and
/// a struct of two eightbytes of one class, returned in rax:rdx or
/// xmm0:xmm1, whose second eightbyte is moved into the register of the
/// other class (xmm0 or rax). A result in memory: the stub's third argument
/// (rdx, read before any argument register is loaded) becomes the hidden
/// pointer.
fn emit_exit_fast(ops: &mut CodeBuf, l: &CallLayout, cfi: &mut Cfi) {
    let second = match &l.ret {
        RetPass::Direct(parts) if parts.len() == 2 => Some(parts[1].loc),
        _ => None,
    };
    let pair = matches!(second, Some(Loc::Gpr(Gpr::Rdx) | Loc::Xmm(1)));
    let calls = l.stack_bytes != 0 || pair;
    // rsp is 8 mod 16 on entry and the stack area a multiple of 16: 8 more
    // bytes align the call.
    let frame = d(l.stack_bytes + 8);
    dynasm!(ops ; .arch x64 ; mov r11, rdi ; mov r10, rsi);
    if let RetPass::Sret { ptr } = l.ret {
        dynasm!(ops ; .arch x64 ; mov Rq(ptr as u8), rdx);
    }
    if calls {
        sub_rsp_probed(ops, frame, cfi);
    }
    for a in &l.args {
        let ArgPass::Direct(parts) = &a.pass else {
            unreachable!("checked by fast_ret")
        };
        for p in parts {
            move_part(ops, p, d(a.slot * 8 + p.offset));
        }
    }
    if let Some(al) = l.al {
        dynasm!(ops ; .arch x64 ; mov eax, i32::from(al));
    }
    if !calls {
        dynasm!(ops ; .arch x64 ; jmp r10);
        return;
    }
    dynasm!(ops ; .arch x64 ; call r10);
    match second {
        Some(Loc::Gpr(Gpr::Rdx)) => dynasm!(ops ; .arch x64 ; movq xmm0, rdx),
        Some(Loc::Xmm(1)) => dynasm!(ops ; .arch x64 ; movq rax, xmm1),
        _ => {}
    }
    dynasm!(ops ; .arch x64 ; add rsp, frame);
    cfi.shrink(ops.offset().0, frame as u32);
    dynasm!(ops ; .arch x64 ; ret);
}

/// An exit stub's move of one by-value argument part from its slot bytes at
/// `[r11 + src]` to where it travels: its register(s), or the outgoing stack
/// area at `[rsp + off]` through rax (which carries no argument in either
/// convention; a SysV variadic call's `al` is set after every part).
fn move_part(ops: &mut CodeBuf, p: &Part, src: i32) {
    match p.loc {
        Loc::Gpr(g) => dynasm!(ops ; .arch x64 ; mov Rq(g as u8), QWORD [r11 + src]),
        Loc::Xmm(n) => dynasm!(ops ; .arch x64 ; movq Rx(n), QWORD [r11 + src]),
        Loc::XmmAndGpr(n, g) => {
            dynasm!(ops ; .arch x64 ; movq Rx(n), QWORD [r11 + src] ; mov Rq(g as u8), QWORD [r11 + src])
        }
        Loc::Stack(off) => copy_to_stack(ops, src, d(off), p.size),
    }
}

/// `sub rsp, frame` for generated code's frame (eax free): a frame larger
/// than a page grows a page at a time, each page touched before the next,
/// so that running out of stack meets the guard page instead of jumping
/// past it (the frame is then written in any order).
pub(crate) fn sub_rsp_probed<A: DynasmApi>(ops: &mut A, frame: i32, cfi: &mut Cfi) {
    const PAGE: i32 = crate::stack::UNCHECKED_FRAME as i32;
    let mut left = frame;
    while left > PAGE {
        dynasm!(ops ; .arch x64 ; sub rsp, PAGE);
        cfi.grow(ops.offset().0, PAGE as u32);
        dynasm!(ops ; .arch x64 ; mov eax, DWORD [rsp]);
        left -= PAGE;
    }
    dynasm!(ops ; .arch x64 ; sub rsp, left);
    cfi.grow(ops.offset().0, left as u32);
}

/// One exit stub.
///
/// Only `ret` (r12) and, when capturing errno, the `errno` block (r13) must
/// survive the call, so only those callee-saved registers are pushed; the
/// argument pointer (r11) and the target (r10) live in caller-saved registers
/// that carry no argument in either convention.
fn emit_exit(ops: &mut CodeBuf, l: &CallLayout, errno: bool, cfi: &mut Cfi) {
    // One push leaves rsp at 0 mod 16, two at 8: realign for the call.
    let frame = d(l.stack_bytes + l.copy_bytes + if errno { 8 } else { 0 });
    dynasm!(ops ; .arch x64 ; push r12);
    cfi.push(ops.offset().0, Reg::R12);
    if errno {
        dynasm!(ops ; .arch x64 ; push r13);
        cfi.push(ops.offset().0, Reg::R13);
        dynasm!(ops ; .arch x64
            ; mov r13, rcx
            ; mov rax, QWORD [r13] ; mov ecx, DWORD [r13 + 8] ; mov DWORD [rax], ecx
        );
    }
    sub_rsp_probed(ops, frame, cfi);
    dynasm!(ops ; .arch x64 ; mov r11, rdi ; mov r12, rsi ; mov r10, rdx);
    // Each part where it travels (rax is the only scratch); a Win64
    // by-reference aggregate is copied and its copy's address passed.
    for a in &l.args {
        let slot = d(a.slot * 8);
        match &a.pass {
            ArgPass::Direct(parts) => {
                for p in parts {
                    move_part(ops, p, slot + d(p.offset));
                }
            }
            ArgPass::ByRef { ptr, copy } => {
                let at = d(l.stack_bytes + copy);
                copy_to_stack(ops, slot, at, a.ty.size());
                match ptr {
                    Loc::Gpr(g) => dynasm!(ops ; .arch x64 ; lea Rq(*g as u8), [rsp + at]),
                    Loc::Stack(off) => {
                        dynasm!(ops ; .arch x64 ; lea rax, [rsp + at] ; mov QWORD [rsp + d(*off)], rax)
                    }
                    other => unreachable!("a by-reference pointer in {other:?}"),
                }
            }
        }
    }
    if let RetPass::Sret { ptr } = l.ret {
        dynasm!(ops ; .arch x64 ; mov Rq(ptr as u8), r12);
    }
    if let Some(al) = l.al {
        dynasm!(ops ; .arch x64 ; mov eax, i32::from(al));
    }
    dynasm!(ops ; .arch x64 ; call r10);
    if errno {
        // First thing after the call: nothing may run between the callee and this read.
        dynasm!(ops ; .arch x64 ; mov r10, QWORD [r13] ; mov r10d, DWORD [r10] ; mov DWORD [r13 + 8], r10d);
    }
    if let RetPass::Direct(parts) = &l.ret {
        for p in parts {
            store_result_part(ops, p);
        }
    }
    dynasm!(ops ; .arch x64 ; add rsp, frame);
    cfi.shrink(ops.offset().0, frame as u32);
    if errno {
        dynasm!(ops ; .arch x64 ; pop r13);
        cfi.pop(ops.offset().0, Reg::R13);
    }
    dynasm!(ops ; .arch x64 ; pop r12);
    cfi.pop(ops.offset().0, Reg::R12);
    dynasm!(ops ; .arch x64 ; ret);
}

/// Stores one result part from its register into the result slots at r12.
fn store_result_part(ops: &mut CodeBuf, p: &Part) {
    let o = d(p.offset);
    match (p.kind, p.loc) {
        (PartKind::Scalar(Scalar::F32), Loc::Xmm(n)) => {
            dynasm!(ops ; .arch x64 ; movd eax, Rx(n) ; mov QWORD [r12 + o], rax)
        }
        (PartKind::Scalar(s), Loc::Gpr(g)) => {
            extend_reg(ops, s, g as u8);
            dynasm!(ops ; .arch x64 ; mov QWORD [r12 + o], rax);
        }
        (_, Loc::Xmm(n)) => dynasm!(ops ; .arch x64 ; movq QWORD [r12 + o], Rx(n)),
        (_, Loc::Gpr(g)) => dynasm!(ops ; .arch x64 ; mov QWORD [r12 + o], Rq(g as u8)),
        (_, other) => unreachable!("a result part in {other:?}"),
    }
}

/// Offsets within an entry thunk's frame (from `rsp` after the prologue).
struct EntryFrame {
    va: i32,
    args: i32,
    rets: i32,
    xmm_save: i32,
    /// The binding (r10 on entry), for the failure path.
    binding: i32,
    /// The hidden result pointer (sret).
    sret: i32,
    size: i32,
    /// `rsp + incoming` is the caller's first stack argument.
    incoming: i32,
}

/// Registers the thunk pushes: none on SysV (it keeps nothing in callee-saved
/// registers), rdi and rsi on Win64 (which the SysV dispatcher may clobber).
fn entry_pushes(l: &CallLayout) -> u32 {
    if l.conv == CallConv::Win64 { 2 } else { 0 }
}

fn entry_frame(l: &CallLayout, variadic: bool) -> EntryFrame {
    let mut at = 0u32;
    let va = at;
    if variadic {
        at += size_of::<RawVaList>().next_multiple_of(16) as u32;
    }
    let args = at;
    at += (l.arg_slots * 8).next_multiple_of(16);
    let rets = at;
    at += (l.ret_slots.max(1) * 8).next_multiple_of(16);
    let xmm_save = at;
    if l.conv == CallConv::Win64 {
        at += 160;
    }
    let binding = at;
    let sret = at + 8;
    at += 16;
    // The return address and the pushes come on top of the frame: together
    // they must keep `rsp` 16-byte aligned at the dispatcher call.
    let above = 8 + 8 * entry_pushes(l);
    at = (at + above).next_multiple_of(16) - above;
    EntryFrame {
        va: d(va),
        args: d(args),
        rets: d(rets),
        xmm_save: d(xmm_save),
        binding: d(binding),
        sret: d(sret),
        size: d(at),
        incoming: d(at + above),
    }
}

/// The shared entry thunk of one signature and convention (a declared
/// variadic signature when `variadic`), assembled in `space`; `failed` is the
/// address of the Rust function that applies the failure policy.
///
/// The binding arrives in r10. Nothing lives in a callee-saved register across
/// the dispatcher call (the binding and an sret pointer are kept in the
/// frame), so on SysV the thunk pushes nothing: its stores are the argument
/// slots, the zeroed result slots and the binding.
pub(super) fn emit_entry<'a>(
    space: &'a mut CodeSpace,
    l: &CallLayout,
    variadic: bool,
    failed: usize,
) -> (&'a [u8], Unwind) {
    // The assembler is this function's own (not a parameter), so the
    // compiler knows the code's bytes are elsewhere (`code.rs`).
    let mut buf = CodeBuf::new(space);
    let ops = &mut buf;
    let mut cfi = Cfi::new();
    let f = entry_frame(l, variadic);
    let win = l.conv == CallConv::Win64;
    if win {
        dynasm!(ops ; .arch x64 ; push rdi);
        cfi.push(ops.offset().0, Reg::Rdi);
        dynasm!(ops ; .arch x64 ; push rsi);
        cfi.push(ops.offset().0, Reg::Rsi);
    }
    if f.size as usize > crate::stack::UNCHECKED_FRAME {
        // A frame past a page (large structs by value): a page at a time,
        // each touched, so that it meets the guard page (rax is free).
        sub_rsp_probed(ops, f.size, &mut cfi);
    } else {
        by_size!(ops, f.size, b => [sub rsp, BYTE b] else [sub rsp, f.size]);
        cfi.grow(ops.offset().0, f.size as u32);
    }
    let body = cfi.frame();
    store(ops, f.binding, Gpr::R10 as u8);
    if let RetPass::Sret { ptr } = l.ret {
        store(ops, f.sret, ptr as u8);
    }
    if variadic {
        let va = f.va;
        let gp = va + offset_of!(RawVaList, gp) as i32;
        let fp = va + offset_of!(RawVaList, fp) as i32;
        let (regs, gp_next, overflow): (&[Gpr], u32, u32) = match l.conv {
            CallConv::SysV => (
                &crate::abi::SYSV_INT_ARGS,
                u32::from(l.gprs_used),
                stack_end(l),
            ),
            CallConv::Win64 => (
                &crate::abi::WIN64_INT_ARGS,
                win64_positions(l),
                crate::abi::WIN64_SHADOW_BYTES,
            ),
        };
        for (i, r) in regs.iter().enumerate() {
            dynasm!(ops ; .arch x64 ; mov QWORD [rsp + gp + 8 * i as i32], Rq(*r as u8));
        }
        if !win {
            for n in 0..8u8 {
                dynasm!(ops ; .arch x64 ; movq QWORD [rsp + fp + 8 * i32::from(n)], Rx(n));
            }
        }
        dynasm!(ops ; .arch x64
            ; mov DWORD [rsp + va + offset_of!(RawVaList, conv) as i32], l.conv as i32
            ; mov DWORD [rsp + va + offset_of!(RawVaList, gp_next) as i32], gp_next as i32
            ; mov DWORD [rsp + va + offset_of!(RawVaList, fp_next) as i32], i32::from(l.xmms_used)
            ; mov DWORD [rsp + va + offset_of!(RawVaList, stack_read) as i32], 0
            ; lea rax, [rsp + f.incoming + d(overflow)]
            ; mov QWORD [rsp + va + offset_of!(RawVaList, overflow) as i32], rax
        );
    }
    // SysV: neighbouring arguments that fill one slot unchanged are stored as
    // 16-byte pairs (built in xmm8/xmm9, scratch registers that carry no
    // argument), so a host reading the slots with 16-byte loads gets them
    // forwarded from one store instead of stalling; 8-byte reads forward from
    // the pair too (ABI.md, "Host contract").
    let paired = if win { SmallVec::new() } else { slot_pairs(l) };
    // Bit k: slots 2k and 2k+1 are stored as a pair (k < PAIRS).
    let mut pair_bits = 0u64;
    for &(k, first, second) in &paired {
        pair_bits |= 1 << k;
        slot_value_to_xmm(ops, first, 8, f.incoming);
        slot_value_to_xmm(ops, second, 9, f.incoming);
        let at = f.args + 16 * k as i32;
        dynasm!(ops ; .arch x64 ; punpcklqdq xmm8, xmm9);
        by_size!(ops, at, b => [movdqu [BYTE rsp + b], xmm8] else [movdqu [rsp + at], xmm8]);
    }
    // The other arguments into slots; rax and r11 are the only scratch
    // registers, and neither carries an argument in either convention.
    for a in &l.args {
        if a.slots == 1 && a.slot / 2 < PAIRS && pair_bits & (1 << (a.slot / 2)) != 0 {
            continue;
        }
        let slot = f.args + d(a.slot * 8);
        match &a.pass {
            ArgPass::Direct(parts) => {
                for p in parts {
                    let at = slot + d(p.offset);
                    match (p.kind, p.loc) {
                        (PartKind::Scalar(Scalar::F32), Loc::Xmm(n)) => {
                            dynasm!(ops ; .arch x64 ; movd eax, Rx(n));
                            store(ops, at, RAX);
                        }
                        (
                            PartKind::Scalar(Scalar::I64 | Scalar::U64 | Scalar::Ptr),
                            Loc::Gpr(g),
                        ) => store(ops, at, g as u8),
                        (PartKind::Scalar(s), Loc::Gpr(g)) => {
                            extend_reg(ops, s, g as u8);
                            store(ops, at, RAX);
                        }
                        (PartKind::Scalar(s), Loc::Stack(off)) => {
                            extend_mem(ops, s, RSP, f.incoming + d(off));
                            store(ops, at, RAX);
                        }
                        (_, Loc::Xmm(n)) | (_, Loc::XmmAndGpr(n, _)) => by_size!(ops, at, b =>
                            [movq QWORD [BYTE rsp + b], Rx(n)] else [movq QWORD [rsp + at], Rx(n)]),
                        (_, Loc::Gpr(g)) => store(ops, at, g as u8),
                        (_, Loc::Stack(off)) => {
                            copy_qwords(ops, RSP, f.incoming + d(off), RSP, at, p.size)
                        }
                    }
                }
            }
            ArgPass::ByRef { ptr, .. } => {
                match ptr {
                    Loc::Gpr(g) => dynasm!(ops ; .arch x64 ; mov r11, Rq(*g as u8)),
                    Loc::Stack(off) => {
                        dynasm!(ops ; .arch x64 ; mov r11, QWORD [rsp + f.incoming + d(*off)])
                    }
                    other => unreachable!("a by-reference pointer in {other:?}"),
                }
                // Exactly the struct's bytes: the caller's copy may end at a page edge.
                copy_exact(ops, R11, 0, RSP, slot, a.ty.size());
            }
        }
    }
    if win {
        for i in 0..10u8 {
            dynasm!(ops ; .arch x64 ; movdqu [rsp + f.xmm_save + 16 * i32::from(i)], Rx(6 + i));
        }
    }
    for k in 0..l.ret_slots as i32 {
        let at = f.rets + 8 * k;
        by_size!(ops, at, b => [mov QWORD [BYTE rsp + b], 0] else [mov QWORD [rsp + at], 0]);
    }
    // dispatch(&binding.raw, args, ret, va): all in registers.
    // Both offsets fit in a signed byte (checked when compiling), so their
    // 8-bit form.
    const RAW: i8 = byte_offset(offset_of!(BindingHead, raw));
    const DISPATCH: i8 = byte_offset(offset_of!(BindingHead, dispatch));
    dynasm!(ops ; .arch x64 ; lea rdi, [BYTE r10 + RAW]);
    lea_rsp(ops, Gpr::Rsi as u8, f.args);
    lea_rsp(ops, Gpr::Rdx as u8, f.rets);
    if variadic {
        lea_rsp(ops, Gpr::Rcx as u8, f.va);
    } else {
        dynasm!(ops ; .arch x64 ; xor ecx, ecx);
    }
    dynasm!(ops ; .arch x64
        ; call QWORD [BYTE r10 + DISPATCH]
        ; test eax, eax
        ; jnz >fail
        ; results:
    );
    match &l.ret {
        RetPass::Void => {}
        RetPass::Direct(parts) => {
            for p in parts {
                let o = f.rets + d(p.offset);
                match (p.kind, p.loc) {
                    (PartKind::Scalar(Scalar::F32), Loc::Xmm(n)) => by_size!(ops, o, b =>
                        [movd Rx(n), DWORD [BYTE rsp + b]] else [movd Rx(n), DWORD [rsp + o]]),
                    (PartKind::Scalar(s), Loc::Gpr(Gpr::Rax)) => extend_mem(ops, s, RSP, o),
                    (_, Loc::Xmm(n)) => load_xmm(ops, n, o),
                    (_, Loc::Gpr(g)) => load(ops, g as u8, o),
                    (_, other) => unreachable!("a result part in {other:?}"),
                }
            }
        }
        RetPass::Sret { .. } => {
            // Exactly the result's bytes: the caller's buffer may end at a page edge.
            load(ops, R11, f.sret);
            copy_out_paired(ops, f.rets, l.ret_size);
            dynasm!(ops ; .arch x64 ; mov rax, r11);
        }
    }
    if win {
        for i in 0..10u8 {
            dynasm!(ops ; .arch x64 ; movdqu Rx(6 + i), [rsp + f.xmm_save + 16 * i32::from(i)]);
        }
    }
    by_size!(ops, f.size, b => [add rsp, BYTE b] else [add rsp, f.size]);
    cfi.shrink(ops.offset().0, f.size as u32);
    if win {
        dynasm!(ops ; .arch x64 ; pop rsi);
        cfi.pop(ops.offset().0, Reg::Rsi);
        dynasm!(ops ; .arch x64 ; pop rdi);
        cfi.pop(ops.offset().0, Reg::Rdi);
    }
    dynasm!(ops ; .arch x64 ; ret);
    // The failure path runs in the body's frame.
    cfi.resume(ops.offset().0, body);
    dynasm!(ops ; .arch x64
        ; fail:
        // entry_failed(status, binding, ret slots, count): applies the policy.
        ; mov edi, eax
    );
    load(ops, Gpr::Rsi as u8, f.binding);
    lea_rsp(ops, Gpr::Rdx as u8, f.rets);
    dynasm!(ops ; .arch x64
        ; mov ecx, d(l.ret_slots)
        ; mov rax, QWORD failed as i64 ; call rax
        ; jmp <results
    );
    (finished(buf), cfi.finish())
}

/// A field offset as an 8-bit displacement; fails to compile when it does
/// not fit.
const fn byte_offset(offset: usize) -> i8 {
    assert!(offset < 128, "the offset does not fit in a signed byte");
    offset as i8
}

/// `mov QWORD [rsp + at], Rq(g)`, short when it can be (`by_size!`).
#[inline(always)]
fn store(ops: &mut CodeBuf, at: i32, g: u8) {
    by_size!(ops, at, b => [mov QWORD [BYTE rsp + b], Rq(g)] else [mov QWORD [rsp + at], Rq(g)]);
}

/// `mov Rq(g), QWORD [rsp + at]`, short when it can be.
#[inline(always)]
fn load(ops: &mut CodeBuf, g: u8, at: i32) {
    by_size!(ops, at, b => [mov Rq(g), QWORD [BYTE rsp + b]] else [mov Rq(g), QWORD [rsp + at]]);
}

/// `movq Rx(x), QWORD [rsp + at]`, short when it can be.
#[inline(always)]
fn load_xmm(ops: &mut CodeBuf, x: u8, at: i32) {
    by_size!(ops, at, b => [movq Rx(x), QWORD [BYTE rsp + b]] else [movq Rx(x), QWORD [rsp + at]]);
}

/// `lea Rq(g), [rsp + at]`, short when it can be.
#[inline(always)]
fn lea_rsp(ops: &mut CodeBuf, g: u8, at: i32) {
    by_size!(ops, at, b => [lea Rq(g), [BYTE rsp + b]] else [lea Rq(g), [rsp + at]]);
}

/// A one-slot scalar argument's source: its scalar and where it arrives.
#[derive(Clone, Copy)]
struct SlotSource {
    scalar: Scalar,
    loc: Loc,
}

/// Slot pairs `slot_pairs` may make: pairs 0 to 63, so that the entry
/// emitter marks them in the bits of a `u64` (later slots are stored one by
/// one).
const PAIRS: u32 = 64;

/// The 16-byte-aligned slot pairs `(k, slot 2k, slot 2k+1)`, `k` below
/// [`PAIRS`], whose two slots are each a whole argument that needs no
/// extending (`i64`, `u64`, `ptr`, `f64`).
fn slot_pairs(l: &CallLayout) -> SmallVec<[(u32, SlotSource, SlotSource); 8]> {
    // One pass: arguments come in slot order, so a pair is an argument that
    // qualifies at an even slot followed by one that qualifies.
    let mut pairs = SmallVec::new();
    let mut first: Option<(u32, SlotSource)> = None;
    for a in &l.args {
        let source = match &a.pass {
            ArgPass::Direct(parts)
                if a.slots == 1
                    && let [p] = parts.as_slice()
                    && let PartKind::Scalar(
                        scalar @ (Scalar::I64 | Scalar::U64 | Scalar::Ptr | Scalar::F64),
                    ) = p.kind
                    && p.offset == 0
                    && !matches!(p.loc, Loc::XmmAndGpr(..)) =>
            {
                Some(SlotSource { scalar, loc: p.loc })
            }
            _ => None,
        };
        first = match (first.take(), source) {
            (Some((k, x)), Some(y)) if a.slot == 2 * k + 1 && k < PAIRS => {
                pairs.push((k, x, y));
                None
            }
            (_, Some(x)) if a.slot % 2 == 0 => Some((a.slot / 2, x)),
            _ => None,
        };
    }
    pairs
}

/// xmm`x` (low 64 bits; the rest zero) = the slot value of `src`, one of
/// `slot_pairs`' arguments (a 64-bit integer or pointer in a register or on
/// the stack, an `f64` in a register or on the stack). `incoming` locates
/// stack arguments (`rsp + incoming` is the first).
#[inline(always)]
fn slot_value_to_xmm(ops: &mut CodeBuf, src: SlotSource, x: u8, incoming: i32) {
    match src.loc {
        Loc::Xmm(n) => dynasm!(ops ; .arch x64 ; movq Rx(x), Rx(n)),
        Loc::Gpr(g) => dynasm!(ops ; .arch x64 ; movq Rx(x), Rq(g as u8)),
        Loc::Stack(off) => {
            load_xmm(ops, x, incoming + d(off));
        }
        other => unreachable!("a paired {} argument in {other:?}", src.scalar),
    }
}

/// Argument positions the fixed parameters (and a hidden result pointer) use.
fn win64_positions(l: &CallLayout) -> u32 {
    l.args.len() as u32 + u32::from(matches!(l.ret, RetPass::Sret { .. }))
}

/// Code for one stub of `bytes` bytes per cell, the stubs differing only in
/// their cell's address: `emit` assembles one for a sentinel address, and
/// the rest are copies of it with the cell's address written over the
/// sentinel's bytes (so no instruction encoding is written out here, and a
/// block of stubs costs one assembly, not one per stub). Padded with `int3`.
fn per_cell(cells: &[usize], bytes: usize, emit: impl FnOnce(&mut CodeBuf, i64)) -> Vec<u8> {
    const SENTINEL: u64 = 0x5eb1_7e1e_5eb1_7e1e;
    let mut space = CodeSpace::new();
    let mut ops = CodeBuf::new(&mut space);
    emit(&mut ops, SENTINEL as i64);
    while ops.offset().0 < bytes {
        dynasm!(ops ; .arch x64 ; int3);
    }
    let one = finished(ops);
    assert_eq!(one.len(), bytes, "a per-cell stub fits its bytes");
    let at = one
        .windows(8)
        .position(|w| w == SENTINEL.to_le_bytes())
        .expect("the address is an 8-byte immediate");
    let mut code = Vec::with_capacity(cells.len() * bytes);
    for &cell in cells {
        let start = code.len();
        code.extend_from_slice(one);
        code[start + at..start + at + 8].copy_from_slice(&(cell as u64).to_le_bytes());
    }
    code
}

/// One 16-byte stub per cell: `jmp [cell]` — a stable native function pointer
/// that always reaches the cell's current code (tier layer).
pub(crate) fn emit_cell_jumps(cells: &[usize]) -> Vec<u8> {
    per_cell(cells, 16, |ops, cell| {
        dynasm!(ops ; .arch x64 ; mov r11, QWORD cell ; jmp QWORD [r11]);
    })
}

/// One trampoline per binding, `TRAMPOLINE_BYTES` each: loads the binding
/// from its data cell into r10 and jumps to the binding's thunk.
pub(super) const TRAMPOLINE_BYTES: usize = 32;

/// Code for `cells.len()` trampolines; trampoline `i` reads `cells[i]` (a
/// block of them is made for every `BLOCK` bindings; assembling each one had
/// cost more than the rest of a binding).
pub(super) fn emit_trampolines(cells: &[usize]) -> Vec<u8> {
    per_cell(cells, TRAMPOLINE_BYTES, |ops, cell| {
        dynasm!(ops ; .arch x64
            ; mov r10, QWORD cell
            ; mov r10, QWORD [r10]
            ; jmp QWORD [r10]
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::classify;

    /// Generated code reads these at fixed offsets (ABI.md, "Generated code").
    #[test]
    fn repr_c_layouts_match_abi_md() {
        assert_eq!(offset_of!(BindingHead, thunk), 0);
        assert_eq!(offset_of!(BindingHead, dispatch), 8);
        assert_eq!(offset_of!(BindingHead, raw), 16);
        assert_eq!(offset_of!(ErrnoIo, loc), 0);
        assert_eq!(offset_of!(ErrnoIo, value), 8);
    }

    /// Frame offsets that fit in a signed byte take the 8-bit forms (3 bytes
    /// shorter), the others the 32-bit ones. Worked out by hand: `(i64)->i64`
    /// on SysV has one argument slot (16 bytes with padding), one result slot
    /// at 16 (16 bytes), the binding at 32 and room for an sret pointer, so
    /// 48 bytes, made 56 so that rsp is 16-byte aligned at the call after
    /// the return address: `sub rsp, 0x38` (48 83 ec 38), `mov [rsp+0x20],
    /// r10` (4c 89 54 24 20), `mov [rsp], rdi` (48 89 7c 24 00). With twenty
    /// `i64`s the result slot is at 160, past a byte: `mov QWORD [rsp+0xa0],
    /// 0` is 48 c7 84 24 a0 00 00 00, then the 32-bit zero.
    #[test]
    fn entry_thunks_use_8_bit_displacements_where_they_fit() {
        let layout = |text: &str| classify(&text.parse().unwrap(), CallConv::SysV);
        let mut space = CodeSpace::new();
        let (code, _) = emit_entry(&mut space, &layout("(i64)->i64"), false, 0);
        assert_eq!(
            code[..14],
            [
                0x48, 0x83, 0xec, 0x38, 0x4c, 0x89, 0x54, 0x24, 0x20, 0x48, 0x89, 0x7c, 0x24, 0x00
            ]
        );
        let twenty = format!("({})->i64", vec!["i64"; 20].join(","));
        let mut space = CodeSpace::new();
        let (code, _) = emit_entry(&mut space, &layout(&twenty), false, 0);
        let zero_result = [0x48, 0xc7, 0x84, 0x24, 0xa0, 0, 0, 0, 0, 0, 0, 0];
        assert!(code.windows(zero_result.len()).any(|w| w == zero_result));
    }

    /// One of a signature's two keys (`entry`: the entry thunk's).
    fn scalar_sig_key(sig: &crate::abi::Signature, conv: CallConv, entry: bool) -> Option<SigKey> {
        scalar_sig_keys(sig, conv).map(|k| if entry { k.entry } else { k.exit })
    }

    /// Both keys of one signature, worked out by hand from the field layout
    /// (`SigKey`): `(i32,f64,u8,...)` would have none; `(i32,f64,u8)->f32` on
    /// Win64 (convention 1) has the result field 1 + 8 (`f32`'s class), 3
    /// parameters, and parameter classes 5, 9, 1 for its entry thunk but 0,
    /// 1, 0 (float or not) for its exit code.
    #[test]
    fn a_signatures_keys_are_its_fields() {
        let sig: crate::abi::Signature = "(i32,f64,u8)->f32".parse().unwrap();
        let keys = scalar_sig_keys(&sig, CallConv::Win64).unwrap();
        let header = 1 | 9 << 4 | 3 << 8;
        assert_eq!(keys.entry, SigKey(header | (5 | 9 << 4 | 1 << 8) << 16));
        assert_eq!(keys.exit, SigKey(header | (1 << 4) << 16));
        // A 13th parameter goes to the high word, where bit 3 of its class
        // moves to bit 0 of the same field.
        let long: crate::abi::Signature =
            "(i64,i64,i64,i64,i64,i64,i64,i64,i64,i64,i64,i64,f32)->void"
                .parse()
                .unwrap();
        let keys = scalar_sig_keys(&long, CallConv::SysV).unwrap();
        assert_eq!(keys.entry, SigKey(8 << 64 | 13 << 8));
        assert_eq!(keys.exit, SigKey(1 << 64 | 13 << 8));
        let variadic: crate::abi::Signature = "(i32,f64,u8,...)->void".parse().unwrap();
        assert_eq!(scalar_sig_keys(&variadic, CallConv::SysV), None);
    }

    /// A random type for the shape test: mostly scalars (shapes repeat),
    /// sometimes a small struct of scalars.
    fn rand_type(rng: &mut fastrand::Rng) -> crate::abi::Type {
        use crate::abi::{StructType, Type};
        let scalar = |rng: &mut fastrand::Rng| Scalar::ALL[rng.usize(..Scalar::ALL.len())];
        if rng.u8(..100) < 15 {
            let fields = (0..rng.usize(1..=4))
                .map(|_| {
                    let count = (rng.u8(..100) < 20).then(|| rng.u32(1..=5));
                    (Type::from(scalar(rng)), count)
                })
                .collect();
            StructType::new(fields, rng.u8(..100) < 10).unwrap().into()
        } else {
            scalar(rng).into()
        }
    }

    /// The promise the signature keys rest on: two signatures with the same
    /// exit (entry) [`scalar_sig_key`] have the same [`exit_key`]
    /// ([`entry_key`]), so the same code by the test below, and only scalar,
    /// non-variadic signatures have one. And for entry thunks the converse,
    /// which lets the backend skip the layout key of a signature that has a
    /// signature key: a signature whose [`entry_key`] is that of a signature
    /// with an entry signature key has the same signature key (no other
    /// signature, keyed or not, would share its thunk). Checked over random
    /// signatures, short ones over few types half the time so that keys meet
    /// often.
    #[test]
    fn signatures_with_equal_scalar_keys_have_equal_layout_keys() {
        use crate::abi::{Signature, Type};
        use std::collections::HashMap;
        let mut rng = fastrand::Rng::with_seed(0x51_6e_6b_e9);
        let mut seen: HashMap<(SigKey, bool), (String, Vec<u8>)> = HashMap::new();
        // Entry layout key -> the first signature with it, and its entry
        // signature key if it has one.
        let mut thunks: HashMap<Vec<u8>, (String, Option<SigKey>)> = HashMap::new();
        let mut thunks_shared = 0;
        let (mut shared, mut keyed, mut unkeyed) = (0, 0, 0);
        let few = [
            Scalar::I64,
            Scalar::U64,
            Scalar::Ptr,
            Scalar::U8,
            Scalar::Bool,
            Scalar::F64,
        ];
        for _ in 0..20_000 {
            let short = rng.bool();
            let n = if short {
                rng.usize(0..=4)
            } else {
                rng.usize(0..=12)
            };
            let params: Vec<Type> = (0..n)
                .map(|_| {
                    if short {
                        few[rng.usize(..few.len())].into()
                    } else {
                        rand_type(&mut rng)
                    }
                })
                .collect();
            let ret = (rng.u8(..100) < 85).then(|| rand_type(&mut rng));
            let sig = if rng.u8(..100) < 90 {
                Signature::new(params, ret).unwrap()
            } else {
                Signature::new_variadic(params, ret).unwrap()
            };
            let text = sig.to_string();
            let scalar = |t: &Type| matches!(t, Type::Scalar(_));
            let keyable = !sig.is_variadic()
                && sig.params().iter().all(scalar)
                && sig.ret().is_none_or(scalar);
            for conv in CallConv::ALL {
                let l = crate::abi::classify(&sig, conv);
                if let Some(layout_key) = entry_key(&l, sig.is_variadic()) {
                    let key = scalar_sig_key(&sig, conv, true);
                    match thunks.get(layout_key.as_bytes()) {
                        Some((first, theirs)) => {
                            assert_eq!(
                                *theirs, key,
                                "{first} and {text} ({conv}) share an entry layout key, not an entry signature key"
                            );
                            if *first != text {
                                thunks_shared += 1;
                            }
                        }
                        None => {
                            thunks.insert(layout_key.as_bytes().to_vec(), (text.clone(), key));
                        }
                    }
                }
                for entry in [false, true] {
                    let Some(key) = scalar_sig_key(&sig, conv, entry) else {
                        assert!(!keyable, "{text} ({conv}) has no signature key");
                        unkeyed += 1;
                        continue;
                    };
                    assert!(keyable, "{text} ({conv}) has a signature key");
                    keyed += 1;
                    let layout_key = if entry {
                        entry_key(&l, false)
                    } else {
                        exit_key(&l)
                    };
                    let layout_key = layout_key.expect("a scalar layout has a key");
                    let key = (key, entry);
                    match seen.get(&key) {
                        Some((first, theirs)) => {
                            assert_eq!(
                                theirs.as_slice(),
                                layout_key.as_bytes(),
                                "{first} and {text} ({conv}, entry: {entry}) share a signature key, not a layout key"
                            );
                            if *first != text {
                                shared += 1;
                            }
                        }
                        None => {
                            seen.insert(key, (text.clone(), layout_key.as_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        // The test means something only if many keys are shared.
        // (With this seed: 26 568 shared, 45 808 keyed, 34 192 not; 12 727
        // signatures met an earlier one's entry layout key.)
        assert!(shared > 22_000, "{shared} shared signature keys");
        assert!(
            thunks_shared > 10_000,
            "{thunks_shared} shared entry layout keys"
        );
        assert!(
            keyed > 30_000 && unkeyed > 10_000,
            "{keyed} keyed, {unkeyed} not"
        );
    }

    /// Every parameter a signature key has room for counts: changing any
    /// one parameter's class (here `i64` to `f64`, which both the entry and
    /// the exit class tell apart) changes the key, in both words; one
    /// parameter more than there is room for gives no key.
    #[test]
    fn every_parameter_of_a_signature_key_counts() {
        use crate::abi::{Signature, Type};
        let sig = |params: Vec<Type>| Signature::new(params, Some(Scalar::I64.into())).unwrap();
        let base = vec![Type::from(Scalar::I64); SIG_KEY_PARAMS];
        for entry in [false, true] {
            let mut keys = vec![scalar_sig_key(&sig(base.clone()), CallConv::SysV, entry).unwrap()];
            for i in 0..SIG_KEY_PARAMS {
                let mut params = base.clone();
                params[i] = Scalar::F64.into();
                keys.push(scalar_sig_key(&sig(params), CallConv::SysV, entry).unwrap());
            }
            for (i, k) in keys.iter().enumerate() {
                assert!(
                    !keys[..i].contains(k),
                    "entry {entry}: changing parameter {i} left the key of an earlier one"
                );
            }
            let mut too_many = base.clone();
            too_many.push(Scalar::I64.into());
            assert!(scalar_sig_key(&sig(too_many), CallConv::SysV, entry).is_none());
        }
    }

    /// The promise code sharing rests on: two layouts with the same key get
    /// the same bytes from the emitter the key is for. Checked over random
    /// signatures (both conventions, structs, declared and call-site
    /// variadics), which must also share keys often enough to mean something.
    #[test]
    fn layouts_with_equal_keys_get_the_same_code() {
        use crate::abi::{Signature, Type};
        use std::collections::HashMap;
        let mut rng = fastrand::Rng::with_seed(0x5eed_c0de);
        let mut exits: HashMap<Vec<u8>, (String, Vec<u8>)> = HashMap::new();
        let mut entries: HashMap<Vec<u8>, (String, Vec<u8>)> = HashMap::new();
        let (mut shared_exit, mut shared_entry, mut keyless) = (0, 0, 0);
        for _ in 0..20_000 {
            // Short lists half the time, so that shapes meet often.
            let n = if rng.bool() {
                rng.usize(0..=3)
            } else {
                rng.usize(0..=10)
            };
            let params: Vec<Type> = (0..n).map(|_| rand_type(&mut rng)).collect();
            let ret = (rng.u8(..100) < 85).then(|| rand_type(&mut rng));
            let sig = match rng.u8(..100) {
                0..80 => Signature::new(params, ret).unwrap(),
                80..90 => Signature::new_variadic(params, ret).unwrap(),
                _ => {
                    let extra: Vec<Type> = (0..rng.usize(0..4))
                        .map(|_| [Scalar::I64, Scalar::F64, Scalar::Ptr][rng.usize(..3)].into())
                        .collect();
                    Signature::new_variadic(params, ret)
                        .unwrap()
                        .with_varargs(&extra)
                        .unwrap()
                }
            };
            let text = sig.to_string();
            for conv in CallConv::ALL {
                let l = crate::abi::classify(&sig, conv);
                let mut space = CodeSpace::new();
                let mut exit = emit_fast_exit(&mut space, &l).map_or(Vec::new(), |(b, kind, _)| {
                    let mut v = b.to_vec();
                    v.push(match kind {
                        FastRet::Regs { slots, sse_first } => slots | u8::from(sse_first) << 2,
                        FastRet::Sret => 8,
                    });
                    v
                });
                let (slots, errno_at, _) = emit_slot_exits(&mut space, &l);
                exit.extend_from_slice(slots);
                exit.extend((errno_at as u32).to_le_bytes());
                let declared_variadic = sig.is_variadic() && !sig.has_call_varargs();
                let entry = emit_entry(&mut space, &l, declared_variadic, 0x1234)
                    .0
                    .to_vec();
                for (key, bytes, seen, shared) in [
                    (exit_key(&l), exit, &mut exits, &mut shared_exit),
                    (
                        entry_key(&l, declared_variadic),
                        entry,
                        &mut entries,
                        &mut shared_entry,
                    ),
                ] {
                    let Some(key) = key.map(|k| k.as_bytes().to_vec()) else {
                        keyless += 1;
                        continue;
                    };
                    match seen.get(&key) {
                        Some((first, code)) => {
                            assert_eq!(
                                code, &bytes,
                                "{first} and {text} ({conv}) share a key but not their code"
                            );
                            if *first != text {
                                *shared += 1;
                            }
                        }
                        None => {
                            seen.insert(key, (text.clone(), bytes));
                        }
                    }
                }
            }
        }
        // The test means something only if many keys are shared.
        // (With this seed: 23 330 and 7 246 shared, 10 without a key.)
        assert!(shared_exit > 20_000, "{shared_exit} shared exit keys");
        assert!(shared_entry > 6_000, "{shared_entry} shared entry keys");
        assert!(keyless < 1_000, "{keyless} layouts without a key");
    }

    #[test]
    fn a_cell_jump_is_its_cells_address_and_an_indirect_jump_in_16_bytes() {
        let code = emit_cell_jumps(&[0x1122_3344_5566_7788, 0x99aa_bbcc_ddee_ff00]);
        assert_eq!(code.len(), 32);
        // mov r11, imm64 (49 bb + 8 bytes); jmp [r11] (41 ff 23); int3 padding.
        for (k, cell) in [0x1122_3344_5566_7788u64, 0x99aa_bbcc_ddee_ff00]
            .into_iter()
            .enumerate()
        {
            let one = &code[16 * k..16 * (k + 1)];
            assert_eq!(&one[..2], &[0x49, 0xbb]);
            assert_eq!(&one[2..10], &cell.to_le_bytes());
            assert_eq!(&one[10..13], &[0x41, 0xff, 0x23]);
            assert!(one[13..].iter().all(|&b| b == 0xcc));
        }
    }

    #[test]
    fn a_trampoline_fits_its_32_bytes() {
        let code = emit_trampolines(&[0x1122_3344_5566_7788, 0x99aa_bbcc_ddee_ff00]);
        assert_eq!(code.len(), 2 * TRAMPOLINE_BYTES);
        // mov r10, imm64 (49 ba + 8 bytes) carries the cell address.
        assert_eq!(&code[..2], &[0x49, 0xba]);
        assert_eq!(&code[2..10], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&code[32..34], &[0x49, 0xba]);
        assert_eq!(&code[34..42], &0x99aa_bbcc_ddee_ff00u64.to_le_bytes());
        // The rest of each is the same: mov r10, [r10]; jmp [r10]; int3 padding.
        assert_eq!(code[10..32], code[42..64]);
        assert_eq!(&code[10..16], &[0x4d, 0x8b, 0x12, 0x41, 0xff, 0x22]);
        assert!(code[16..32].iter().all(|&b| b == 0xcc));
    }

    #[test]
    fn exit_and_entry_frames_keep_the_stack_aligned() {
        for text in [
            "()->void",
            "(i64,i64,i64,i64,i64,i64,i64)->i64",
            "({[u8;17]},f32,...)->{f64,f64,f64}",
        ] {
            let sig = crate::abi::Signature::parse(text).unwrap();
            for conv in CallConv::ALL {
                let l = crate::abi::classify(&sig, conv);
                assert_eq!(l.stack_bytes % 16, 0);
                assert_eq!(l.copy_bytes % 16, 0);
                // The return address, the pushes and the frame: a multiple of 16.
                let f = entry_frame(&l, sig.is_variadic());
                assert_eq!(f.incoming % 16, 0, "{text} {conv}");
                assert_eq!(f.incoming as u32, f.size as u32 + 8 + 8 * entry_pushes(&l));
            }
        }
    }
}
