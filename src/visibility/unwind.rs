//! Unwind information: an `.eh_frame` with one CIE and one FDE per region,
//! written with `gimli` from the region's [`Unwind`] description, and
//! registered with the process's unwinder while the region lives.
//!
//! libgcc's `__register_frame` takes the start of a whole `.eh_frame`
//! section (ended by a zero word); LLVM's libunwind (and macOS) take a single
//! FDE. Which one this process has is told by libunwind's own
//! `__unw_add_dynamic_fde`, looked up once.
//!
//! libgcc (before 13) keeps registered sections in linked lists that every
//! deregistration walks, so one section per region made dropping n live
//! regions cost O(n²) (44 s for 100 000). With libgcc the FDEs are therefore
//! gathered by the [`CHUNK`] of address space their region starts in (a
//! slab's worth): one section per chunk, which a new region's FDE is
//! appended to and a dropped region's FDE is blanked in (made a CIE, which
//! libgcc skips), rebuilt only when blanks are half of it; the section is
//! deregistered before each change and registered again after it. Sections
//! stay few, the one just changed is at the head of libgcc's list, and a
//! change costs about one FDE's bytes. Chunks never overlap: a region
//! belongs to the chunk of its first byte, and regions never overlap, so a
//! chunk's regions all end before the next chunk's first region starts
//! (libgcc requires registered sections not to overlap). While a chunk's
//! section is changed, an unwind through that chunk in another thread may
//! stop there.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

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
pub(super) enum Registered {
    /// libunwind: the region's own `.eh_frame` bytes (never moved: boxed),
    /// and where its FDE, the part registered, starts in them.
    Own { eh_frame: Box<[u8]>, fde_at: usize },
    /// libgcc: entry `id` of chunk `chunk`'s section.
    Chunked { chunk: usize, id: u64 },
}

// SAFETY: the bytes are only read by the unwinder, from any thread, and
// freed once, after the deregistration; a chunk is reached under its lock.
unsafe impl Send for Registered {}
// SAFETY: as for Send.
unsafe impl Sync for Registered {}

/// The address space gathered into one registered section (libgcc): a
/// slab's worth.
pub(crate) const CHUNK: usize = 256 * 1024;

/// A chunk's section and its live regions' FDEs in it.
///
/// The section is the CIE, then FDEs, then a zero word. A region's FDE is
/// appended when it is published; when the region is dropped its FDE is
/// turned into a CIE in place (its CIE pointer zeroed), which libgcc skips
/// like any CIE; the section is rebuilt from the live FDEs once such holes
/// are half of it. The section is deregistered before every change and
/// registered again after it, so libgcc never sees it change.
#[derive(Default)]
struct Chunk {
    section: Vec<u8>,
    /// Whether `section` is registered (at its current address).
    registered: bool,
    /// The live FDEs by entry id: offset in `section`, length.
    fdes: BTreeMap<u64, (usize, usize)>,
    /// Bytes of dropped FDEs still in `section`.
    holes: usize,
}

/// The chunks with live regions, by index (address / [`CHUNK`]); the next
/// entry id; and the buffers of the last chunk emptied, for the next new
/// one (a region made and dropped again and again in an otherwise empty
/// chunk allocates nothing).
struct Chunks {
    chunks: BTreeMap<usize, Chunk>,
    next: u64,
    spare: Chunk,
}

static CHUNKS: Mutex<Chunks> = Mutex::new(Chunks {
    chunks: BTreeMap::new(),
    next: 0,
    spare: Chunk {
        section: Vec::new(),
        registered: false,
        fdes: BTreeMap::new(),
        holes: 0,
    },
});

/// The most buffer bytes kept for reuse once their chunk is empty.
const SPARE_BYTES: usize = 16 * 1024;

impl Chunk {
    /// Takes the section away from libgcc, to change it.
    fn deregister(&mut self) {
        if std::mem::take(&mut self.registered) {
            // SAFETY: registered by `register` at this address, once, and
            // not changed since.
            unsafe { __deregister_frame(self.section.as_ptr()) };
        }
    }

    /// Gives the section (with at least one FDE) to libgcc.
    fn register(&mut self) {
        debug_assert!(!self.registered && !self.fdes.is_empty());
        // SAFETY: a well-formed .eh_frame (gimli's CIE, FDEs pointing back
        // to it, CIEs in place of dropped FDEs, the zero terminator) for
        // code that stays mapped while its FDE is live (a region's FDE is
        // dropped, the section deregistered, before the region's memory is
        // given back); `deregister` is called before the bytes change or
        // move.
        unsafe { __register_frame(self.section.as_ptr()) };
        self.registered = true;
    }

    /// Appends an FDE (`fde`, whose CIE is `cie`) as entry `id`.
    fn add(&mut self, id: u64, cie: &[u8], fde: &[u8]) {
        if self.section.is_empty() {
            self.section.extend_from_slice(cie);
        } else {
            debug_assert_eq!(&self.section[..cie.len()], cie, "one CIE for all");
            // Over the terminator.
            self.section.truncate(self.section.len() - 4);
        }
        let at = self.section.len();
        self.section.extend_from_slice(fde);
        // The CIE pointer: back from its own position to the CIE, at 0.
        self.section[at + 4..at + 8].copy_from_slice(&((at + 4) as u32).to_le_bytes());
        self.section.extend_from_slice(&[0, 0, 0, 0]);
        self.fdes.insert(id, (at, fde.len()));
    }

    /// Drops entry `id`'s FDE; rebuilds the section once holes are half.
    fn remove(&mut self, id: u64) {
        let Some((at, len)) = self.fdes.remove(&id) else {
            return;
        };
        // A CIE pointer of 0 makes the entry a CIE, which nothing uses.
        self.section[at + 4..at + 8].fill(0);
        self.holes += len;
        if self.holes * 2 > self.section.len() && !self.fdes.is_empty() {
            let cie =
                u32::from_le_bytes(self.section[..4].try_into().expect("4 bytes")) as usize + 4;
            let mut section = Vec::with_capacity(self.section.len() - self.holes);
            section.extend_from_slice(&self.section[..cie]);
            for (from, len) in self.fdes.values_mut() {
                let at = section.len();
                section.extend_from_slice(&self.section[*from..*from + *len]);
                section[at + 4..at + 8].copy_from_slice(&((at + 4) as u32).to_le_bytes());
                *from = at;
            }
            section.extend_from_slice(&[0, 0, 0, 0]);
            self.section = section;
            self.holes = 0;
        }
    }
}

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
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    Some((bytes, cie_len))
}

/// gimli's output: a byte vector made with room for a typical `.eh_frame`
/// (gimli's `EndianVec` starts empty, and growing it byte by byte was a
/// third of the work).
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
        room: len,
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
/// FDE's offset in them) for the region at `addr`.
pub(super) fn register(addr: usize, (bytes, fde_at): (Vec<u8>, usize)) -> Registered {
    let eh_frame = bytes.into_boxed_slice();
    if libunwind() {
        // SAFETY: the FDE of a well-formed .eh_frame (gimli's writer) for
        // code that stays mapped while the registration lives; the bytes
        // stay put (boxed) until `Drop` deregisters them.
        unsafe { __register_frame(eh_frame[fde_at..].as_ptr()) };
        return Registered::Own { eh_frame, fde_at };
    }
    let chunk = addr / CHUNK;
    let mut guard = CHUNKS.lock().unwrap_or_else(|e| e.into_inner());
    let state = &mut *guard;
    let id = state.next;
    state.next += 1;
    let c = state
        .chunks
        .entry(chunk)
        .or_insert_with(|| std::mem::take(&mut state.spare));
    c.deregister();
    c.add(
        id,
        &eh_frame[..fde_at],
        &eh_frame[fde_at..eh_frame.len() - 4],
    );
    c.register();
    Registered::Chunked { chunk, id }
}

impl Drop for Registered {
    fn drop(&mut self) {
        match self {
            Registered::Own { eh_frame, fde_at } => {
                // SAFETY: registered in `register` with this same pointer,
                // once.
                unsafe { __deregister_frame(eh_frame[*fde_at..].as_ptr()) };
            }
            Registered::Chunked { chunk, id } => {
                let mut guard = CHUNKS.lock().unwrap_or_else(|e| e.into_inner());
                let state = &mut *guard;
                let Some(c) = state.chunks.get_mut(chunk) else {
                    return;
                };
                c.deregister();
                c.remove(*id);
                if !c.fdes.is_empty() {
                    c.register();
                } else if let Some(mut c) = state.chunks.remove(chunk) {
                    // Its buffers, emptied, serve the next new chunk.
                    if c.section.capacity() <= SPARE_BYTES {
                        c.section.clear();
                        c.fdes.clear();
                        c.holes = 0;
                        state.spare = c;
                    }
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// libgcc's `struct dwarf_eh_bases`.
    #[repr(C)]
    struct Bases {
        tbase: *mut u8,
        dbase: *mut u8,
        func: *mut u8,
    }

    unsafe extern "C" {
        /// libgcc's own lookup: the FDE covering `pc`, or null.
        fn _Unwind_Find_FDE(pc: *const u8, bases: *mut Bases) -> *const u8;
    }

    /// Where the unwinder finds a function starting for `pc`, if anywhere.
    fn found(pc: usize) -> Option<usize> {
        let mut b = Bases {
            tbase: std::ptr::null_mut(),
            dbase: std::ptr::null_mut(),
            func: std::ptr::null_mut(),
        };
        // SAFETY: only looks `pc` up in the registered tables.
        let f = unsafe { _Unwind_Find_FDE(pc as *const u8, &mut b) };
        (!f.is_null()).then_some(b.func as usize)
    }

    /// Regions made and dropped at random in a few chunks' worth of
    /// addresses nothing is mapped at (the unwinder reads its tables, never
    /// the code): at every step, libgcc's own lookup finds exactly the live
    /// regions, each at its own start, and nothing where a region was
    /// dropped; one section per chunk with live regions.
    #[test]
    fn the_unwinder_finds_exactly_the_live_regions() {
        if libunwind() {
            return;
        }
        // 64 GiB up: no code of this process lives there.
        let base = 64usize << 30;
        let slots = 2 * CHUNK / 256;
        let mut rng = fastrand::Rng::with_seed(7);
        let mut live: BTreeMap<usize, (usize, Registered)> = BTreeMap::new();
        for step in 0..8000 {
            let slot = rng.usize(..slots);
            // Half a slot in: a region may cross into the next chunk.
            let addr = base + slot * 256 + 128;
            if let Some((len, r)) = live.remove(&addr) {
                drop(r);
                assert_eq!(
                    found(addr + len / 2),
                    None,
                    "step {step}: dropped {addr:#x}"
                );
            } else {
                // Up to the next slot.
                let len = rng.usize(1..=256);
                let unwind = Unwind::Leaf;
                let region = Region {
                    name: "",
                    addr,
                    len,
                    room: len,
                    unwind: &unwind,
                    perf: None,
                };
                let r = register(addr, eh_frame(&region, Place::Absolute).unwrap());
                live.insert(addr, (len, r));
            }
            if step % 500 == 0 {
                for (&a, (len, _)) in &live {
                    for pc in [a, a + len / 2, a + len - 1] {
                        assert_eq!(found(pc), Some(a), "step {step}: {pc:#x} in {a:#x}+{len}");
                    }
                    if *len < 256 && !live.contains_key(&(a + 256)) {
                        assert_eq!(found(a + len), None, "step {step}: past {a:#x}+{len}");
                    }
                }
                let chunks: std::collections::BTreeSet<usize> =
                    live.keys().map(|a| a / CHUNK).collect();
                let guard = CHUNKS.lock().unwrap();
                let ours = guard
                    .chunks
                    .iter()
                    .filter(|(k, _)| (base / CHUNK..(base + 2 * CHUNK) / CHUNK).contains(*k));
                assert!(ours.clone().all(|(_, c)| c.registered));
                assert_eq!(
                    ours.map(|(k, _)| *k)
                        .collect::<std::collections::BTreeSet<_>>(),
                    chunks
                );
            }
        }
        drop(live);
        for slot in 0..slots {
            assert_eq!(found(base + slot * 256 + 128), None);
        }
    }
}
