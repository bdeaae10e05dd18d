//! Classification: where every part of every argument and of the result
//! travels, for one signature and one convention. Pure data; no code is
//! emitted here and nothing is unsafe.
//!
//! Stack offsets in a [`CallLayout`] are relative to `rsp` at the `call`
//! instruction (the callee sees them at `rsp + 8 + offset` on entry, above its
//! return address). Rules and their sources are in ABI.md.

use smallvec::SmallVec;

use super::callconv::CallConv;
use super::signature::Signature;
use super::types::{Scalar, Type};

/// An x86-64 general-purpose register, numbered as the hardware numbers it.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Gpr {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

/// SysV integer argument registers in order (psABI 3.2.3).
pub const SYSV_INT_ARGS: [Gpr; 6] = [Gpr::Rdi, Gpr::Rsi, Gpr::Rdx, Gpr::Rcx, Gpr::R8, Gpr::R9];
/// SysV vector argument registers: `xmm0`..`xmm7`.
pub const SYSV_SSE_ARGS: u8 = 8;
/// Win64 integer argument registers by position.
pub const WIN64_INT_ARGS: [Gpr; 4] = [Gpr::Rcx, Gpr::Rdx, Gpr::R8, Gpr::R9];
/// The 32-byte home (shadow) area a Win64 caller reserves above the return address.
pub const WIN64_SHADOW_BYTES: u32 = 32;

/// Where one part of a value travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Loc {
    /// A general-purpose register.
    Gpr(Gpr),
    /// `xmm<n>`, low bits.
    Xmm(u8),
    /// Both: a Win64 variadic floating-point argument in one of the first four
    /// positions is passed in the XMM register and in the matching GPR.
    XmmAndGpr(u8, Gpr),
    /// The outgoing stack argument area at this byte offset from `rsp` at the call.
    Stack(u32),
}

/// What a [`Part`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PartKind {
    /// One whole scalar (extension as its type says; see ABI.md).
    Scalar(Scalar),
    /// An eightbyte of a struct in a general-purpose register (`size` bytes, low bits).
    IntBytes,
    /// An eightbyte of a struct in an XMM register (`size` is 4 or 8).
    SseBytes,
    /// A whole struct copied into the stack argument area.
    Memory,
}

/// How the bits of a part above its width are to be filled when it is put in a
/// register, and read when it is taken out (ABI.md, "Who extends narrow integers").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ext {
    /// Sign-extend from the part's width (signed integers narrower than 64 bits).
    Sign,
    /// Zero-extend from the part's width (unsigned integers, `bool`).
    Zero,
    /// Nothing to extend: 64-bit values, floats (raw bits), struct bytes.
    None,
}

/// One piece of a value: `size` bytes at `offset` in the value's C layout,
/// travelling in `loc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Part {
    /// Byte offset within the value.
    pub offset: u32,
    /// Number of bytes.
    pub size: u32,
    /// What the bytes are.
    pub kind: PartKind,
    /// Where they travel.
    pub loc: Loc,
}

/// How one argument travels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ArgPass {
    /// By value, in these parts.
    Direct(SmallVec<[Part; 2]>),
    /// Win64 aggregate not of size 1, 2, 4 or 8: the caller makes a 16-byte
    /// aligned copy at `copy` in its copy area and passes its address at `ptr`.
    ByRef {
        /// Where the address travels.
        ptr: Loc,
        /// Offset of the copy within the caller's copy area.
        copy: u32,
    },
}

/// One argument's layout.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ArgLayout {
    /// The argument's type.
    pub ty: Type,
    /// Index of its first interpreter slot.
    pub slot: u32,
    /// Number of interpreter slots.
    pub slots: u32,
    /// How it travels.
    pub pass: ArgPass,
}

/// How the result travels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RetPass {
    /// No result.
    Void,
    /// In registers (`rax`, `rdx`, `xmm0`, `xmm1`).
    Direct(SmallVec<[Part; 2]>),
    /// Through memory the caller provides: its address is passed as a hidden
    /// first argument in `ptr` and returned in `rax`.
    Sret {
        /// The register of the hidden pointer (`rdi` on SysV, `rcx` on Win64).
        ptr: Gpr,
    },
}

/// Where everything of a call travels: the result of [`classify`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CallLayout {
    /// The convention.
    pub conv: CallConv,
    /// One entry per parameter (call-site variadic ones included).
    pub args: Vec<ArgLayout>,
    /// The result.
    pub ret: RetPass,
    /// Interpreter slots of all arguments.
    pub arg_slots: u32,
    /// Interpreter slots of the result.
    pub ret_slots: u32,
    /// Size of the result in bytes (0 for `void`).
    pub ret_size: u32,
    /// Bytes of outgoing stack argument area, Win64 home area included; a
    /// multiple of 16 so that `rsp` stays 16-byte aligned at the call.
    pub stack_bytes: u32,
    /// Bytes of the Win64 by-reference copy area (a multiple of 16).
    pub copy_bytes: u32,
    /// General-purpose argument registers used (hidden sret pointer included).
    pub gprs_used: u8,
    /// Vector argument registers used.
    pub xmms_used: u8,
    /// SysV variadic calls: the value the caller puts in `%al`.
    pub al: Option<u8>,
}

impl CallLayout {
    /// Heap bytes this layout holds (its arguments, and parts lists too long
    /// to be kept inline; the types are shared with the signature's), for
    /// the registry's statistics.
    pub(crate) fn heap_bytes(&self) -> usize {
        let parts = |p: &SmallVec<[Part; 2]>| {
            if p.spilled() {
                p.capacity() * size_of::<Part>()
            } else {
                0
            }
        };
        let args: usize = self
            .args
            .iter()
            .map(|a| match &a.pass {
                ArgPass::Direct(p) => parts(p),
                ArgPass::ByRef { .. } => 0,
            })
            .sum();
        let ret = match &self.ret {
            RetPass::Direct(p) => parts(p),
            _ => 0,
        };
        self.args.capacity() * size_of::<ArgLayout>() + args + ret
    }
}

/// SysV class of one eightbyte (psABI 3.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EightbyteClass {
    /// Travels in a general-purpose register.
    Integer,
    /// Travels in an XMM register.
    Sse,
}

/// SysV classification of a type: the class of each eightbyte, or `None` for
/// MEMORY (larger than 16 bytes, or a scalar at an offset from the start of the
/// outermost value that is not a multiple of its natural alignment).
pub fn sysv_eightbytes(ty: &Type) -> Option<SmallVec<[EightbyteClass; 2]>> {
    let size = ty.size();
    if size > 16 {
        return None;
    }
    let mut classes: SmallVec<[Option<EightbyteClass>; 2]> =
        SmallVec::from_elem(None, size.div_ceil(8) as usize);
    for (offset, s) in ty.flatten() {
        if offset % s.size() != 0 {
            return None;
        }
        let slot = &mut classes[(offset / 8) as usize];
        *slot = match (s.is_float(), *slot) {
            (false, _) | (true, Some(EightbyteClass::Integer)) => Some(EightbyteClass::Integer),
            (true, _) => Some(EightbyteClass::Sse),
        };
    }
    // An eightbyte holding only padding cannot occur with alignments <= 8; treat it as INTEGER.
    Some(
        classes
            .into_iter()
            .map(|c| c.unwrap_or(EightbyteClass::Integer))
            .collect(),
    )
}

/// True if Win64 passes (and returns) a value of this type in one register:
/// scalars, and aggregates of size 1, 2, 4 or 8.
pub fn win64_in_register(ty: &Type) -> bool {
    match ty {
        Type::Scalar(_) => true,
        Type::Struct(st) => matches!(st.size(), 1 | 2 | 4 | 8),
    }
}

/// Classifies a signature for a convention. Pure: the same input always gives
/// the same layout, and nothing is emitted.
///
/// A declared variadic signature (no call-site types) is classified for its
/// fixed parameters only, which is what an entry thunk needs to find where the
/// variadic ones start.
pub fn classify(sig: &Signature, conv: CallConv) -> CallLayout {
    match conv {
        CallConv::SysV => classify_sysv(sig),
        CallConv::Win64 => classify_win64(sig),
    }
}

fn scalar_part(s: Scalar, loc: Loc) -> Part {
    Part {
        offset: 0,
        size: s.size(),
        kind: PartKind::Scalar(s),
        loc,
    }
}

/// Both conventions return a scalar in `xmm0` (floats) or `rax` (the rest).
fn scalar_ret(s: Scalar) -> RetPass {
    let loc = if s.is_float() {
        Loc::Xmm(0)
    } else {
        Loc::Gpr(Gpr::Rax)
    };
    RetPass::Direct(one_part(scalar_part(s, loc)))
}

/// A value in one part (pushed, not collected: collecting into a
/// `SmallVec` costs several times more, and classification runs for every
/// new signature).
fn one_part(p: Part) -> SmallVec<[Part; 2]> {
    let mut parts = SmallVec::new();
    parts.push(p);
    parts
}

/// Each parameter with its first slot and slot count.
fn with_slots(sig: &Signature) -> impl Iterator<Item = (&Type, (u32, u32))> {
    let mut next = 0;
    sig.params().iter().map(move |t| {
        let at = next;
        next += t.slots();
        (t, (at, t.slots()))
    })
}

fn classify_sysv(sig: &Signature) -> CallLayout {
    let mut gpr = 0usize;
    let mut xmm = 0u8;
    let mut stack = 0u32;
    let ret = match sig.ret() {
        None => RetPass::Void,
        Some(Type::Scalar(s)) => scalar_ret(*s),
        Some(ty) => match sysv_eightbytes(ty) {
            None => {
                gpr = 1;
                RetPass::Sret { ptr: Gpr::Rdi }
            }
            Some(classes) => {
                let (mut ints, mut sses) = ([Gpr::Rax, Gpr::Rdx].into_iter(), 0u8..2);
                RetPass::Direct(eightbyte_parts(
                    ty.size(),
                    &classes,
                    || ints.next().unwrap(),
                    || sses.next().unwrap(),
                ))
            }
        },
    };
    let arg_slots = sig.arg_slots() as u32;
    let mut args = Vec::with_capacity(sig.params().len());
    for (ty, (slot, nslots)) in with_slots(sig) {
        let mut on_stack = |size: u32| {
            let at = stack;
            stack += size.next_multiple_of(8);
            Loc::Stack(at)
        };
        let parts: SmallVec<[Part; 2]> = match ty {
            Type::Scalar(s) if s.is_float() => {
                let loc = if xmm < SYSV_SSE_ARGS {
                    xmm += 1;
                    Loc::Xmm(xmm - 1)
                } else {
                    on_stack(8)
                };
                one_part(scalar_part(*s, loc))
            }
            Type::Scalar(s) => {
                let loc = if gpr < SYSV_INT_ARGS.len() {
                    gpr += 1;
                    Loc::Gpr(SYSV_INT_ARGS[gpr - 1])
                } else {
                    on_stack(8)
                };
                one_part(scalar_part(*s, loc))
            }
            Type::Struct(_) => {
                let fits = sysv_eightbytes(ty).filter(|classes| {
                    let ints = classes
                        .iter()
                        .filter(|c| **c == EightbyteClass::Integer)
                        .count();
                    let sses = classes.len() - ints;
                    gpr + ints <= SYSV_INT_ARGS.len()
                        && usize::from(xmm) + sses <= usize::from(SYSV_SSE_ARGS)
                });
                match fits {
                    Some(classes) => eightbyte_parts(
                        ty.size(),
                        &classes,
                        || {
                            gpr += 1;
                            SYSV_INT_ARGS[gpr - 1]
                        },
                        || {
                            xmm += 1;
                            xmm - 1
                        },
                    ),
                    // MEMORY, or not enough registers left: the whole struct goes to
                    // the stack and no register is consumed (psABI 3.2.3, step 5).
                    None => {
                        let loc = on_stack(ty.size());
                        one_part(Part {
                            offset: 0,
                            size: ty.size(),
                            kind: PartKind::Memory,
                            loc,
                        })
                    }
                }
            }
        };
        args.push(ArgLayout {
            ty: ty.clone(),
            slot,
            slots: nslots,
            pass: ArgPass::Direct(parts),
        });
    }
    CallLayout {
        conv: CallConv::SysV,
        args,
        ret,
        arg_slots,
        ret_slots: sig.ret_slots() as u32,
        ret_size: sig.ret().map_or(0, Type::size),
        stack_bytes: stack.next_multiple_of(16),
        copy_bytes: 0,
        gprs_used: gpr as u8,
        xmms_used: xmm,
        al: sig.is_variadic().then_some(xmm),
    }
}

fn eightbyte_parts(
    size: u32,
    classes: &[EightbyteClass],
    mut next_gpr: impl FnMut() -> Gpr,
    mut next_xmm: impl FnMut() -> u8,
) -> SmallVec<[Part; 2]> {
    classes
        .iter()
        .enumerate()
        .map(|(i, class)| {
            let offset = i as u32 * 8;
            let size = (size - offset).min(8);
            match class {
                EightbyteClass::Integer => Part {
                    offset,
                    size,
                    kind: PartKind::IntBytes,
                    loc: Loc::Gpr(next_gpr()),
                },
                EightbyteClass::Sse => Part {
                    offset,
                    size,
                    kind: PartKind::SseBytes,
                    loc: Loc::Xmm(next_xmm()),
                },
            }
        })
        .collect()
}

fn classify_win64(sig: &Signature) -> CallLayout {
    let mut pos = 0u32;
    let ret = match sig.ret() {
        None => RetPass::Void,
        Some(Type::Scalar(s)) => scalar_ret(*s),
        Some(ty) if win64_in_register(ty) => RetPass::Direct(
            [Part {
                offset: 0,
                size: ty.size(),
                kind: PartKind::IntBytes,
                loc: Loc::Gpr(Gpr::Rax),
            }]
            .into_iter()
            .collect(),
        ),
        Some(_) => {
            pos = 1;
            RetPass::Sret { ptr: Gpr::Rcx }
        }
    };
    let fixed = sig.fixed_count();
    let arg_slots = sig.arg_slots() as u32;
    let mut copy = 0u32;
    let mut xmms_used = 0u8;
    let mut args = Vec::with_capacity(sig.params().len());
    for (i, (ty, (slot, nslots))) in with_slots(sig).enumerate() {
        let p = pos;
        pos += 1;
        let int_loc = if p < 4 {
            Loc::Gpr(WIN64_INT_ARGS[p as usize])
        } else {
            Loc::Stack(WIN64_SHADOW_BYTES + 8 * (p - 4))
        };
        let pass = match ty {
            Type::Scalar(s) if s.is_float() => {
                let loc = match int_loc {
                    Loc::Gpr(g) if i >= fixed => Loc::XmmAndGpr(p as u8, g),
                    Loc::Gpr(_) => Loc::Xmm(p as u8),
                    other => other,
                };
                if p < 4 {
                    xmms_used = xmms_used.max(p as u8 + 1);
                }
                ArgPass::Direct(one_part(scalar_part(*s, loc)))
            }
            Type::Scalar(s) => ArgPass::Direct(one_part(scalar_part(*s, int_loc))),
            Type::Struct(_) if win64_in_register(ty) => ArgPass::Direct(one_part(Part {
                offset: 0,
                size: ty.size(),
                kind: PartKind::IntBytes,
                loc: int_loc,
            })),
            Type::Struct(_) => {
                let at = copy;
                copy += ty.size().next_multiple_of(16);
                ArgPass::ByRef {
                    ptr: int_loc,
                    copy: at,
                }
            }
        };
        args.push(ArgLayout {
            ty: ty.clone(),
            slot,
            slots: nslots,
            pass,
        });
    }
    CallLayout {
        conv: CallConv::Win64,
        args,
        ret,
        arg_slots,
        ret_slots: sig.ret_slots() as u32,
        ret_size: sig.ret().map_or(0, Type::size),
        stack_bytes: (WIN64_SHADOW_BYTES + 8 * pos.saturating_sub(4)).next_multiple_of(16),
        copy_bytes: copy,
        gprs_used: pos.min(4) as u8,
        xmms_used,
        al: None,
    }
}

impl Part {
    /// The extension rule of this part.
    pub fn ext(&self) -> Ext {
        match self.kind {
            PartKind::Scalar(s) if s.size() < 8 && s.is_signed() => Ext::Sign,
            PartKind::Scalar(s) if s.size() < 8 && !s.is_float() => Ext::Zero,
            _ => Ext::None,
        }
    }
}

impl Gpr {
    /// The register's name (`rdi`, `r8`, …).
    pub const fn name(self) -> &'static str {
        const NAMES: [&str; 16] = [
            "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15",
        ];
        NAMES[self as usize]
    }
}

impl std::fmt::Display for Gpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Loc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loc::Gpr(g) => write!(f, "{g}"),
            Loc::Xmm(n) => write!(f, "xmm{n}"),
            Loc::XmmAndGpr(n, g) => write!(f, "xmm{n}+{g}"),
            Loc::Stack(off) => write!(f, "[rsp+{off}]"),
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            PartKind::Scalar(s) => write!(f, "{s} in {}", self.loc),
            PartKind::IntBytes => write!(
                f,
                "bytes {}..{} as integer in {}",
                self.offset,
                self.offset + self.size,
                self.loc
            ),
            PartKind::SseBytes => write!(
                f,
                "bytes {}..{} as sse in {}",
                self.offset,
                self.offset + self.size,
                self.loc
            ),
            PartKind::Memory => write!(f, "{} bytes in memory at {}", self.size, self.loc),
        }
    }
}

fn join_parts(f: &mut std::fmt::Formatter<'_>, parts: &[Part]) -> std::fmt::Result {
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{p}")?;
    }
    Ok(())
}

impl std::fmt::Display for ArgPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgPass::Direct(parts) => join_parts(f, parts),
            ArgPass::ByRef { ptr, copy } => {
                write!(f, "by reference: address in {ptr} of a copy at +{copy}")
            }
        }
    }
}

impl std::fmt::Display for RetPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetPass::Void => f.write_str("void"),
            RetPass::Direct(parts) => join_parts(f, parts),
            RetPass::Sret { ptr } => write!(
                f,
                "through memory: hidden pointer in {ptr}, returned in rax"
            ),
        }
    }
}

impl std::fmt::Display for CallLayout {
    /// One line per argument, then the result and the frame facts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, a) in self.args.iter().enumerate() {
            writeln!(f, "arg {i} {}: {}", a.ty, a.pass)?;
        }
        writeln!(f, "result: {}", self.ret)?;
        write!(f, "stack argument area: {} bytes", self.stack_bytes)?;
        if let Some(al) = self.al {
            write!(f, ", %al = {al}")?;
        }
        Ok(())
    }
}
