//! The buffer the thunk emitters assemble into: dynasm's assembler interface
//! over a fixed array on the emitter's stack, spilling to the heap only for
//! code longer than the array.
//!
//! `dynasmrt::VecAssembler` appends every byte to a `Vec` behind a
//! reference, and the compiler reloads the vector's length, capacity and
//! pointer after each byte it stores (it cannot tell the bytes from the
//! vector's own fields): about eight instructions a byte. Here the bytes go
//! into an array in a [`CodeSpace`], an object apart from the [`CodeBuf`]
//! that keeps the length, so the compiler keeps the length in a register and
//! writes an instruction's constant bytes at fixed offsets; the finished code
//! is copied into executable memory straight from the array (ABI.md,
//! "Generated code").
//!
//! Labels: the thunk emitters use dynasm's local labels only (`name:`,
//! `>name` for the next definition, `<name` for the latest); a reference is
//! patched as soon as its label is known. Global and dynamic labels are
//! refused (an error at [`CodeBuf::code`]), as is a forward reference left
//! without its label.

use dynasmrt::components::PatchLoc;
use dynasmrt::x64::X64Relocation;
use dynasmrt::{AssemblyOffset, DynamicLabel, DynasmApi, DynasmLabelApi};

/// Bytes assembled in place before spilling to the heap: every entry thunk
/// and exit stub of at most a few dozen scalar arguments fits.
const INLINE: usize = 512;

/// Room for one piece of code: the emitter's [`CodeBuf`] writes here.
pub(crate) struct CodeSpace {
    inline: [u8; INLINE],
    /// Empty until the code outgrows `inline`; from then on every byte,
    /// `inline`'s included.
    spilled: Vec<u8>,
}

impl CodeSpace {
    pub(crate) fn new() -> CodeSpace {
        CodeSpace {
            inline: [0; INLINE],
            spilled: Vec::new(),
        }
    }
}

/// An assembler for one piece of code, writing into a [`CodeSpace`] (see the
/// module's documentation). The length lives here and the bytes there, in
/// two objects: the compiler then knows that storing a byte leaves the
/// length alone, and keeps the length in a register from byte to byte.
pub(crate) struct CodeBuf<'a> {
    space: &'a mut CodeSpace,
    /// Bytes used of `space.inline` (`INLINE` once it is full).
    len: usize,
    /// Each local label's latest definition (the first `nlabels`).
    labels: [(&'static str, usize); LABELS],
    nlabels: usize,
    /// References to the next definition of a local label, not met yet.
    forward: [Option<(&'static str, PatchLoc<X64Relocation>)>; LABELS],
    /// The first thing that went wrong, reported by [`CodeBuf::code`].
    error: Option<&'static str>,
}

/// Local labels, and forward references pending at once, one piece of code
/// may have. Kept in arrays, not vectors: nothing here may hand a pointer to
/// the assembler to a function the compiler does not inline, or it could no
/// longer tell that storing a byte leaves the assembler's fields alone.
const LABELS: usize = 4;

impl<'a> CodeBuf<'a> {
    pub(crate) fn new(space: &'a mut CodeSpace) -> CodeBuf<'a> {
        space.spilled.clear();
        CodeBuf {
            space,
            len: 0,
            labels: [("", 0); LABELS],
            nlabels: 0,
            forward: [const { None }; LABELS],
            error: None,
        }
    }

    #[inline(always)]
    fn spilled(&self) -> bool {
        !self.space.spilled.is_empty()
    }

    /// The finished code, or what went wrong assembling it: a label kind
    /// these emitters do not use, more labels than `LABELS`, a reference
    /// whose label never came, or a jump too far for its displacement.
    pub(crate) fn code(self) -> Result<&'a [u8], &'static str> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.forward.iter().any(Option::is_some) {
            return Err("a forward reference to a local label defined nowhere after it");
        }
        let space: &'a CodeSpace = self.space;
        Ok(if space.spilled.is_empty() {
            &space.inline[..self.len]
        } else {
            &space.spilled
        })
    }

    #[inline(always)]
    fn fail(&mut self, e: &'static str) {
        self.error.get_or_insert(e);
    }

    /// Writes the field of the reference `at` so that it leads to `target`.
    #[inline(always)]
    fn patch(&mut self, at: PatchLoc<X64Relocation>, target: usize) {
        let range = at.range(0);
        let code = if self.spilled() {
            &mut self.space.spilled[..]
        } else {
            &mut self.space.inline[..self.len]
        };
        let Some(field) = code.get_mut(range) else {
            return self.fail("a reference's field outside the code");
        };
        // Relative references (the only kind x64 jumps and rip-relative
        // operands use) do not depend on where the code will be.
        if at.patch(field, 0, target).is_err() {
            self.fail("a reference too far for its displacement");
        }
    }
}

/// Out of line, and given the space, not the assembler (see `LABELS`): only
/// code longer than `INLINE` gets here.
#[cold]
#[inline(never)]
fn push_spilled(space: &mut CodeSpace, byte: u8) {
    if space.spilled.is_empty() {
        space.spilled.reserve(2 * INLINE);
        space.spilled.extend_from_slice(&space.inline);
    }
    space.spilled.push(byte);
}

impl Extend<u8> for CodeBuf<'_> {
    #[inline(always)]
    fn extend<T: IntoIterator<Item = u8>>(&mut self, iter: T) {
        for b in iter {
            self.push(b);
        }
    }
}

impl<'a> Extend<&'a u8> for CodeBuf<'_> {
    /// dynasm hands an instruction's constant bytes and its 16-, 32- and
    /// 64-bit fields here, as byte arrays: when the run's length is known
    /// and it fits, one bounds check for the run instead of one a byte.
    #[inline(always)]
    fn extend<T: IntoIterator<Item = &'a u8>>(&mut self, iter: T) {
        let iter = iter.into_iter();
        let (n, most) = iter.size_hint();
        if most == Some(n)
            && let Some(run) = self.space.inline.get_mut(self.len..self.len + n)
        {
            for (to, &b) in run.iter_mut().zip(iter) {
                *to = b;
            }
            self.len += n;
            return;
        }
        for &b in iter {
            self.push(b);
        }
    }
}

impl DynasmApi for CodeBuf<'_> {
    #[inline(always)]
    fn offset(&self) -> AssemblyOffset {
        AssemblyOffset(if self.spilled() {
            self.space.spilled.len()
        } else {
            self.len
        })
    }

    #[inline(always)]
    fn push(&mut self, byte: u8) {
        if let Some(b) = self.space.inline.get_mut(self.len) {
            *b = byte;
            self.len += 1;
        } else {
            push_spilled(self.space, byte);
        }
    }

    fn align(&mut self, alignment: usize, with: u8) {
        while !self.offset().0.is_multiple_of(alignment) {
            self.push(with);
        }
    }
}

const GLOBAL: &str = "a global label (the thunk emitters use local labels only)";
const DYNAMIC: &str = "a dynamic label (the thunk emitters use local labels only)";

impl DynasmLabelApi for CodeBuf<'_> {
    type Relocation = X64Relocation;

    #[inline(always)]
    fn local_label(&mut self, name: &'static str) {
        let here = self.offset().0;
        for k in 0..LABELS {
            if let Some((_, at)) = self.forward[k].take_if(|(n, _)| *n == name) {
                self.patch(at, here);
            }
        }
        match self.labels[..self.nlabels]
            .iter()
            .position(|(n, _)| *n == name)
        {
            Some(k) => self.labels[k].1 = here,
            None if self.nlabels < LABELS => {
                self.labels[self.nlabels] = (name, here);
                self.nlabels += 1;
            }
            None => self.fail("more local labels than the thunk emitters use"),
        }
    }

    fn global_label(&mut self, _: &'static str) {
        self.fail(GLOBAL);
    }

    fn dynamic_label(&mut self, _: DynamicLabel) {
        self.fail(DYNAMIC);
    }

    #[inline(always)]
    fn forward_relocation(
        &mut self,
        name: &'static str,
        target_offset: isize,
        field_offset: u8,
        ref_offset: u8,
        kind: X64Relocation,
    ) {
        let at = PatchLoc::new(self.offset(), target_offset, field_offset, ref_offset, kind);
        match self.forward.iter_mut().find(|f| f.is_none()) {
            Some(free) => *free = Some((name, at)),
            None => self.fail("more pending forward references than the thunk emitters make"),
        }
    }

    #[inline(always)]
    fn backward_relocation(
        &mut self,
        name: &'static str,
        target_offset: isize,
        field_offset: u8,
        ref_offset: u8,
        kind: X64Relocation,
    ) {
        let at = PatchLoc::new(self.offset(), target_offset, field_offset, ref_offset, kind);
        match self.labels[..self.nlabels].iter().find(|(n, _)| *n == name) {
            Some(&(_, target)) => self.patch(at, target),
            None => self.fail("a backward reference to a local label defined nowhere before it"),
        }
    }

    fn global_relocation(&mut self, _: &'static str, _: isize, _: u8, _: u8, _: X64Relocation) {
        self.fail(GLOBAL);
    }

    fn dynamic_relocation(&mut self, _: DynamicLabel, _: isize, _: u8, _: u8, _: X64Relocation) {
        self.fail(DYNAMIC);
    }

    fn value_relocation(&mut self, _: usize, _: u8, _: u8, _: X64Relocation) {
        self.fail("a reference to an address (thunks take addresses as immediates)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynasmrt::{VecAssembler, dynasm};

    /// The same code through `CodeBuf` and through dynasm's own
    /// `VecAssembler` (the independent truth): `pad` one-byte `nop`s, then
    /// `n` filler instructions between a forward jump and its label, a
    /// backward jump after, and `int3`s up to the next 16 bytes.
    fn both(pad: usize, n: usize) -> (Vec<u8>, Vec<u8>) {
        let mut space = CodeSpace::new();
        let mut ops = CodeBuf::new(&mut space);
        let mut vec: VecAssembler<X64Relocation> = VecAssembler::new(0);
        macro_rules! emit {
            ($ops:ident) => {
                for _ in 0..pad {
                    dynasm!($ops ; .arch x64 ; nop);
                }
                dynasm!($ops ; .arch x64 ; top: ; test eax, eax ; jnz >out);
                for k in 0..n {
                    dynasm!($ops ; .arch x64 ; mov QWORD [rsp + 8 * k as i32], rax);
                }
                dynasm!($ops ; .arch x64 ; out: ; jmp <top ; again: ; jmp <again ; ret);
                $ops.align(16, 0xcc);
                dynasm!($ops ; .arch x64 ; ret);
            };
        }
        emit!(ops);
        emit!(vec);
        (ops.code().unwrap().to_vec(), vec.finalize().unwrap())
    }

    #[test]
    fn local_labels_assemble_as_dynasms_own_assembler_does() {
        for n in [0, 1, 10] {
            let (ours, theirs) = both(0, n);
            assert_eq!(ours, theirs, "{n} filler instructions");
        }
    }

    #[test]
    fn code_longer_than_the_inline_bytes_spills_whole() {
        // 8 bytes a filler instruction: well past INLINE, references on
        // both sides of the spill. Each padding puts a different byte of an
        // instruction's runs (its constant bytes, its 32-bit displacement)
        // at the inline bytes' end, so runs that do not fit are split there.
        for pad in 0..8 {
            let (ours, theirs) = both(pad, INLINE / 4);
            assert!(ours.len() > 2 * INLINE);
            assert_eq!(ours, theirs, "{pad} bytes of padding");
        }
    }

    #[test]
    fn what_the_emitters_do_not_use_is_an_error() {
        let mut space = CodeSpace::new();
        let mut ops = CodeBuf::new(&mut space);
        dynasm!(ops ; .arch x64 ; jmp >nowhere);
        assert!(ops.code().unwrap_err().contains("defined nowhere after"));

        let mut ops = CodeBuf::new(&mut space);
        dynasm!(ops ; .arch x64 ; jmp <nowhere);
        assert!(ops.code().unwrap_err().contains("defined nowhere before"));

        let mut vec: VecAssembler<X64Relocation> = VecAssembler::new(0);
        let label = vec.new_dynamic_label();
        let mut ops = CodeBuf::new(&mut space);
        dynasm!(ops ; .arch x64 ; =>label ; jmp =>label);
        assert!(ops.code().unwrap_err().contains("dynamic label"));

        // A short jump over more than 127 bytes.
        let mut ops = CodeBuf::new(&mut space);
        dynasm!(ops ; .arch x64 ; jmp BYTE >far);
        for _ in 0..200 {
            dynasm!(ops ; .arch x64 ; nop);
        }
        dynasm!(ops ; .arch x64 ; far:);
        assert!(ops.code().unwrap_err().contains("too far"));

        let mut ops = CodeBuf::new(&mut space);
        for _ in 0..=LABELS {
            dynasm!(ops ; .arch x64 ; jmp >a ; jmp >b ; jmp >c ; jmp >d ; jmp >e);
        }
        assert!(
            ops.code()
                .unwrap_err()
                .contains("more pending forward references")
        );
    }

    #[test]
    fn a_space_is_reused_from_empty() {
        let mut space = CodeSpace::new();
        let mut ops = CodeBuf::new(&mut space);
        for _ in 0..INLINE + 1 {
            dynasm!(ops ; .arch x64 ; nop);
        }
        assert_eq!(ops.code().unwrap().len(), INLINE + 1);
        let mut ops = CodeBuf::new(&mut space);
        dynasm!(ops ; .arch x64 ; ret);
        assert_eq!(ops.code().unwrap(), [0xc3]);
    }
}
