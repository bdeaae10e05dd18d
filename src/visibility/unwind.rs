//! Unwind information: an `.eh_frame` with one CIE and one FDE per region,
//! written with `gimli` from the region's [`Unwind`] description, and
//! registered with the process's unwinder while the region lives.
//!
//! libgcc's `__register_frame` takes the start of a whole `.eh_frame`
//! section (ended by a zero word); LLVM's libunwind (and macOS) take a single
//! FDE. Which one this process has is told by libunwind's own
//! `__unw_add_dynamic_fde`, looked up once.

use std::sync::OnceLock;

use gimli::write::{
    Address, CallFrameInstruction, CommonInformationEntry, EhFrame, FrameDescriptionEntry,
    FrameTable,
};
use gimli::{Encoding, Format, Register, RunTimeEndian, X86_64};

use super::{Cfa, Region, Unwind};

unsafe extern "C" {
    fn __register_frame(begin: *const u8);
    fn __deregister_frame(begin: *const u8);
}

/// A region's frame information, registered: deregistered on drop.
pub(super) struct Registered {
    /// The `.eh_frame` bytes the unwinder points into (never moved: boxed).
    eh_frame: Box<[u8]>,
    /// Where the FDE starts within them (libunwind registers the FDE alone).
    fde_at: usize,
}

// SAFETY: the bytes are only read by the unwinder, from any thread, and
// freed once, after the deregistration.
unsafe impl Send for Registered {}
// SAFETY: as for Send.
unsafe impl Sync for Registered {}

/// Whether the unwinder is LLVM's libunwind (one FDE per registration).
fn libunwind() -> bool {
    static LIBUNWIND: OnceLock<bool> = OnceLock::new();
    *LIBUNWIND.get_or_init(|| {
        // macOS's unwinder is libunwind, whatever the symbol table says.
        if cfg!(target_vendor = "apple") {
            return true;
        }
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only
        // looks a symbol up.
        !unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__unw_add_dynamic_fde".as_ptr()) }.is_null()
    })
}

/// The register of a CFA rule.
fn cfa(c: Cfa) -> (Register, i32) {
    match c {
        Cfa::Rsp(n) => (X86_64::RSP, n as i32),
        Cfa::Rbp(n) => (X86_64::RBP, n as i32),
    }
}

/// Where the code an `.eh_frame` describes is, as its FDE says it.
#[derive(Clone, Copy)]
pub(crate) enum Place {
    /// At the region's address (absolute pointers): for the unwinder of
    /// this process and for gdb.
    Absolute,
    /// `n` bytes before the `.eh_frame` section (section-relative
    /// pointers): where `perf inject --jit` puts the code of the ELF file it
    /// makes for a jitdump region, the section at the code's end rounded up
    /// to 8.
    Before(u64),
}

/// The `.eh_frame` bytes of `region` (a CIE, its FDE, a zero terminator)
/// and the FDE's offset in them; `None` for [`Unwind::Unknown`].
pub(crate) fn eh_frame(region: &Region<'_>, place: Place) -> Option<(Vec<u8>, usize)> {
    // The CIE and the rows are x86-64's (Cranelift's rows on another CPU
    // would need that CPU's CIE): elsewhere there are none, for the unwinder
    // or for gdb.
    if !cfg!(target_arch = "x86_64") || matches!(region.unwind, Unwind::Unknown) {
        return None;
    }
    let encoding = Encoding {
        format: Format::Dwarf32,
        version: 1,
        address_size: 8,
    };
    // At a call's target: CFA = rsp + 8, the return address just below it.
    let mut cie = CommonInformationEntry::new(encoding, 1, -8, X86_64::RA);
    cie.add_instruction(CallFrameInstruction::Cfa(X86_64::RSP, 8));
    cie.add_instruction(CallFrameInstruction::Offset(X86_64::RA, -8));
    let start = match place {
        Place::Absolute => Address::Constant(region.addr as u64),
        Place::Before(n) => {
            // gimli writes a pc-relative constant as itself minus its own
            // offset in the section: the section is taken to start at 0.
            cie.fde_address_encoding = gimli::DW_EH_PE_pcrel | gimli::DW_EH_PE_sdata4;
            Address::Constant(n.wrapping_neg())
        }
    };
    let mut fde = FrameDescriptionEntry::new(start, u32::try_from(region.len).ok()?);
    match region.unwind {
        Unwind::Unknown | Unwind::Leaf => {}
        // Cranelift's rows assume the same CIE (CFA = rsp + 8, code
        // alignment 1, data alignment -8).
        #[cfg(feature = "cranelift")]
        Unwind::Cranelift(info) => fde = info.to_fde(start),
        Unwind::Rows(rows) => {
            let mut saved: Vec<(u16, i32)> = Vec::new();
            let mut rule = (X86_64::RSP, 8);
            for row in rows {
                let now = cfa(row.cfa);
                if now != rule {
                    fde.add_instruction(row.at, CallFrameInstruction::Cfa(now.0, now.1));
                    rule = now;
                }
                let want: Vec<(u16, i32)> =
                    row.saved.iter().map(|(r, o)| (r.dwarf(), *o)).collect();
                for &(r, o) in &want {
                    if !saved.contains(&(r, o)) {
                        fde.add_instruction(row.at, CallFrameInstruction::Offset(Register(r), o));
                    }
                }
                for &(r, _) in &saved {
                    if !want.iter().any(|&(w, _)| w == r) {
                        fde.add_instruction(row.at, CallFrameInstruction::Restore(Register(r)));
                    }
                }
                saved = want;
            }
        }
    }
    let mut table = FrameTable::default();
    let cie_id = table.add_cie(cie);
    table.add_fde(cie_id, fde);
    let mut out = EhFrame(Bytes(Vec::with_capacity(128)));
    table.write_eh_frame(&mut out).ok()?;
    let mut bytes = out.0.0;
    // The CIE comes first: its length word plus its length.
    let cie_len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize + 4;
    // Never more than the region: an FDE reaching into the next region
    // would hide that region's own from the unwinder (Cranelift's rows
    // carry their own length).
    if described_len(&bytes, cie_len, place)? > region.len {
        return None;
    }
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    Some((bytes, cie_len))
}

/// The length of code the FDE at `fde_at` in `bytes` covers: after the
/// length word and the CIE pointer, the start and the length, as wide as
/// `place` writes them.
fn described_len(bytes: &[u8], fde_at: usize, place: Place) -> Option<usize> {
    let at = fde_at + 8;
    match place {
        Place::Absolute => {
            Some(u64::from_le_bytes(bytes.get(at + 8..at + 16)?.try_into().ok()?) as usize)
        }
        Place::Before(_) => {
            Some(u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?) as usize)
        }
    }
}

/// How many bytes of code `unwind` describes, when it says so itself
/// (Cranelift's description carries the length of the code it was made
/// for; rows are cut to the region's length).
pub(crate) fn unwind_len(unwind: &Unwind) -> Option<usize> {
    if !matches!(unwind, Unwind::Rows(_) | Unwind::Leaf | Unwind::Unknown) {
        let region = Region {
            name: "",
            addr: 0,
            len: u32::MAX as usize,
            unwind,
            perf: None,
        };
        let (bytes, fde_at) = eh_frame(&region, Place::Absolute)?;
        return described_len(&bytes, fde_at, Place::Absolute);
    }
    None
}

/// gimli's output: a byte vector made with room for a typical `.eh_frame`
/// (gimli's `EndianVec` starts empty, and its reallocations while it grew
/// were a third of the work).
struct Bytes(Vec<u8>);

impl gimli::write::Writer for Bytes {
    type Endian = RunTimeEndian;

    fn endian(&self) -> RunTimeEndian {
        RunTimeEndian::Little
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn write(&mut self, bytes: &[u8]) -> gimli::write::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn write_at(&mut self, offset: usize, bytes: &[u8]) -> gimli::write::Result<()> {
        let to = self
            .0
            .get_mut(offset..offset + bytes.len())
            .ok_or(gimli::write::Error::OffsetOutOfBounds)?;
        to.copy_from_slice(bytes);
        Ok(())
    }
}

/// Bytes of an `.eh_frame_hdr` with one entry.
pub(crate) const EH_FRAME_HDR_BYTES: usize = 20;

/// The unwinding data of a jitdump record for `len` bytes of code described
/// by `unwind`: an `.eh_frame` followed by its `.eh_frame_hdr`, for the ELF
/// file `perf inject --jit` makes of the region, which has the code at the
/// start of its text and these two sections right after it, the first on an
/// 8-byte boundary. `None` for [`Unwind::Unknown`].
pub(crate) fn perf_unwinding(len: usize, unwind: &Unwind) -> Option<Vec<u8>> {
    let region = Region {
        name: "",
        addr: 0,
        len,
        unwind,
        perf: None,
    };
    let code = len.next_multiple_of(8) as i64;
    let (mut bytes, fde_at) = eh_frame(&region, Place::Before(code as u64))?;
    let frames = bytes.len() as i64;
    // The header (LSB-standard `.eh_frame_hdr`), at `code + frames` from
    // the code's start; its table's entries are relative to its own start.
    let table = |v: i64| i32::try_from(v).ok().map(i32::to_le_bytes);
    bytes.extend([
        1,                                                    // version
        gimli::DW_EH_PE_pcrel.0 | gimli::DW_EH_PE_sdata4.0,   // eh_frame_ptr
        gimli::DW_EH_PE_udata4.0,                             // fde_count
        gimli::DW_EH_PE_datarel.0 | gimli::DW_EH_PE_sdata4.0, // table
    ]);
    bytes.extend(table(-(frames + 4))?); // the .eh_frame, from this field
    bytes.extend(1u32.to_le_bytes()); // one FDE
    bytes.extend(table(-(code + frames))?); // where its code starts
    bytes.extend(table(fde_at as i64 - frames)?); // where it is
    Some(bytes)
}

/// Registers frame information made by [`eh_frame`] (its bytes and the
/// FDE's offset in them).
pub(super) fn register((bytes, fde_at): (Vec<u8>, usize)) -> Registered {
    let r = Registered {
        eh_frame: bytes.into_boxed_slice(),
        fde_at,
    };
    // SAFETY: the bytes are a well-formed .eh_frame (gimli's writer) for
    // code that stays mapped while `r` lives, and stay put (boxed) until
    // `Drop` deregisters them.
    unsafe { __register_frame(r.start()) };
    r
}

impl Registered {
    /// What the unwinder is given: the section, or the FDE for libunwind.
    fn start(&self) -> *const u8 {
        if libunwind() {
            self.eh_frame[self.fde_at..].as_ptr()
        } else {
            self.eh_frame.as_ptr()
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        // SAFETY: registered in `register` with this same pointer, once.
        unsafe { __deregister_frame(self.start()) };
    }
}
