//! The GDB JIT interface: gdb's documented protocol ("JIT Compilation
//! Interface" in its manual) by which a process tells an attached debugger
//! about code it generated.
//!
//! The process keeps a doubly linked list of [`JitCodeEntry`] under the
//! global `__jit_debug_descriptor`, each entry pointing at an in-memory
//! object file ("symfile"); after adding or removing an entry it sets the
//! descriptor's action and relevant entry and calls the empty function
//! `__jit_debug_register_code`, on which gdb keeps a breakpoint: gdb then
//! reads the object out of the process's memory and adds (or drops) it as
//! if a shared library had been loaded. A debugger attached later walks the
//! list from `first_entry`. With no debugger, a registration is a list
//! insertion and a call to an empty function.
//!
//! The object per region is a small ELF64 relocatable file, the shape
//! LuaJIT and V8 give gdb: a `.text` section of type `SHT_NOBITS` (no bytes:
//! the code is in the process already) whose address and size are the
//! region's, one global function symbol over it, and, when the region has
//! unwind rows, the region's `.eh_frame` (the same bytes the unwinder is
//! given), from which gdb unwinds through the region. gdb reads the object
//! with BFD's in-memory reader; a relocatable file's symbol values are
//! offsets in their section, and the section's address places them.

use std::cell::UnsafeCell;
use std::ptr::{NonNull, null_mut};
use std::sync::Mutex;

use object::elf;

use super::Region;

/// One registered object: gdb's `struct jit_code_entry`.
#[repr(C)]
pub(crate) struct JitCodeEntry {
    next: *mut JitCodeEntry,
    prev: *mut JitCodeEntry,
    symfile_addr: *const u8,
    symfile_size: u64,
}

/// `jit_actions_t`.
const JIT_NOACTION: u32 = 0;
const JIT_REGISTER_FN: u32 = 1;
const JIT_UNREGISTER_FN: u32 = 2;

/// gdb's `struct jit_descriptor`.
#[repr(C)]
pub(crate) struct JitDescriptor {
    version: u32,
    action_flag: u32,
    relevant_entry: *mut JitCodeEntry,
    first_entry: *mut JitCodeEntry,
}

/// The descriptor, in writable static memory under the name gdb looks for.
#[repr(transparent)]
pub(crate) struct Descriptor(UnsafeCell<JitDescriptor>);

// SAFETY: the descriptor is only written under `LOCK`; gdb reads it while
// the process is stopped.
unsafe impl Sync for Descriptor {}

/// The list gdb reads (version 1 is the only protocol version gdb knows;
/// it refuses a descriptor with another one).
#[unsafe(no_mangle)]
pub(crate) static __jit_debug_descriptor: Descriptor = Descriptor(UnsafeCell::new(JitDescriptor {
    version: 1,
    action_flag: JIT_NOACTION,
    relevant_entry: null_mut(),
    first_entry: null_mut(),
}));

/// Serializes every change to the list (the descriptor and the entries'
/// links).
static LOCK: Mutex<()> = Mutex::new(());

/// The function gdb keeps a breakpoint on: called after each change to the
/// list, with the descriptor saying what changed. Never inlined, and its
/// empty `asm!` keeps it (and the call, and the stores before the call)
/// from being optimized away.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn __jit_debug_register_code() {
    // SAFETY: an empty instruction sequence; without `nomem`/`pure` the
    // compiler treats it as reading and writing any memory, so the list's
    // stores happen before gdb's breakpoint here.
    unsafe { std::arch::asm!("", options(nostack, preserves_flags)) };
}

/// A region registered with gdb: unregistered on drop.
pub(super) struct Registered {
    /// The list entry (a `Box` given to the list; freed in `Drop`).
    entry: NonNull<JitCodeEntry>,
    /// The object file the entry points to; gdb reads it, nothing writes it.
    symfile: Box<[u8]>,
}

// SAFETY: the entry is linked and unlinked only under `LOCK`, and the object
// file's bytes are never written after registration; any thread may drop it.
unsafe impl Send for Registered {}
// SAFETY: shared access reads nothing.
unsafe impl Sync for Registered {}

/// Builds `region`'s object file and registers it with gdb. `eh_frame` is
/// the region's `.eh_frame` section (a CIE, an FDE with absolute addresses,
/// a zero terminator), when it has unwind rows.
pub(super) fn register(region: &Region<'_>, eh_frame: Option<&[u8]>) -> Registered {
    let symfile = symfile(region, eh_frame);
    let entry = Box::into_raw(Box::new(JitCodeEntry {
        next: null_mut(),
        prev: null_mut(),
        symfile_addr: symfile.as_ptr(),
        symfile_size: symfile.len() as u64,
    }));
    let d = __jit_debug_descriptor.0.get();
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: under `LOCK`, which every change to the list holds: `entry`
    // is a fresh allocation, `first` (if any) a live entry of the list (an
    // entry is freed only after its unlinking under the lock), and `d` the
    // descriptor. The writes are volatile: gdb reads them from outside.
    unsafe {
        let first = (*d).first_entry;
        (*entry).next = first;
        if !first.is_null() {
            (*first).prev = entry;
        }
        std::ptr::write_volatile(&raw mut (*d).first_entry, entry);
        std::ptr::write_volatile(&raw mut (*d).relevant_entry, entry);
        std::ptr::write_volatile(&raw mut (*d).action_flag, JIT_REGISTER_FN);
    }
    __jit_debug_register_code();
    Registered {
        // SAFETY: from `Box::into_raw`, never null.
        entry: unsafe { NonNull::new_unchecked(entry) },
        symfile,
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let e = self.entry.as_ptr();
        let d = __jit_debug_descriptor.0.get();
        {
            let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: under `LOCK`: `e` is in the list (linked by `register`,
            // unlinked only here), its neighbours are live entries of the
            // list, and `d` is the descriptor. O(1): the entry knows both
            // neighbours.
            unsafe {
                debug_assert_eq!((*e).symfile_addr, self.symfile.as_ptr());
                let (next, prev) = ((*e).next, (*e).prev);
                if prev.is_null() {
                    std::ptr::write_volatile(&raw mut (*d).first_entry, next);
                } else {
                    (*prev).next = next;
                }
                if !next.is_null() {
                    (*next).prev = prev;
                }
                std::ptr::write_volatile(&raw mut (*d).relevant_entry, e);
                std::ptr::write_volatile(&raw mut (*d).action_flag, JIT_UNREGISTER_FN);
            }
            // gdb finds the object by the entry's address and drops it.
            __jit_debug_register_code();
            // SAFETY: as above.
            unsafe {
                std::ptr::write_volatile(&raw mut (*d).relevant_entry, null_mut());
                std::ptr::write_volatile(&raw mut (*d).action_flag, JIT_NOACTION);
            }
        }
        // SAFETY: from `Box::into_raw` in `register`, unlinked above: nothing
        // points to it any more.
        drop(unsafe { Box::from_raw(e) });
        // `symfile` is freed after this, with the fields: gdb was told first.
    }
}

/// The section names, in `.shstrtab` order, and their offsets in it.
const SHSTRTAB: &[u8] = b"\0.text\0.eh_frame\0.symtab\0.strtab\0.shstrtab\0";
const NAME_TEXT: u32 = 1;
const NAME_EH_FRAME: u32 = 7;
const NAME_SYMTAB: u32 = 17;
const NAME_STRTAB: u32 = 25;
const NAME_SHSTRTAB: u32 = 33;

/// `region`'s object file: an ELF64 relocatable file for this CPU with `.text`
/// (`SHT_NOBITS` at the region's address), `.eh_frame` (when given),
/// `.symtab` with one global function symbol, `.strtab` and `.shstrtab`.
///
/// The layout is fixed, so it is written directly with the `object` crate's
/// ELF structures (one allocation, no string tables to build): the header,
/// the `.eh_frame` bytes, the symbols, the two string tables, then the
/// section headers.
pub(crate) fn symfile(region: &Region<'_>, eh_frame: Option<&[u8]>) -> Box<[u8]> {
    use object::LittleEndian as LE;
    use object::U16;
    use object::elf::{FileHeader64, Ident, SectionHeader64, Sym64};
    use object::pod::bytes_of;
    type U32 = object::U32<LE>;
    type U64 = object::U64<LE>;

    const HEADER: usize = size_of::<FileHeader64<LE>>();
    const SYM: usize = size_of::<Sym64<LE>>();
    const SHDR: usize = size_of::<SectionHeader64<LE>>();
    let eh = eh_frame.unwrap_or(&[]);
    let name = region.name.as_bytes();
    // Offsets: the header (64 bytes, so what follows is 8-aligned), the
    // .eh_frame, the symbols (8-aligned), .strtab, .shstrtab, the section
    // headers (8-aligned).
    let eh_at = HEADER;
    let symtab_at = (eh_at + eh.len()).next_multiple_of(8);
    let strtab_at = symtab_at + 2 * SYM;
    let strtab_len = 1 + name.len() + 1;
    let shstrtab_at = strtab_at + strtab_len;
    let shdrs_at = (shstrtab_at + SHSTRTAB.len()).next_multiple_of(8);
    // null, .text, [.eh_frame], .symtab, .strtab, .shstrtab
    let with_eh = eh_frame.is_some();
    let sections = if with_eh { 6 } else { 5 };
    let strtab = if with_eh { 4 } else { 3 };
    let text = 1u16;
    let total = shdrs_at + sections * SHDR;

    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(bytes_of(&FileHeader64::<LE> {
        e_ident: Ident {
            magic: elf::ELFMAG,
            class: elf::ELFCLASS64,
            data: elf::ELFDATA2LSB,
            version: elf::EV_CURRENT,
            os_abi: elf::ELFOSABI_NONE,
            abi_version: 0,
            padding: [0; 7],
        },
        e_type: U16::new(LE, elf::ET_REL),
        e_machine: U16::new(LE, elf::Machine(super::perf::ELF_MACHINE as u16)),
        e_version: U32::new(LE, u32::from(elf::EV_CURRENT.0)),
        e_entry: U64::new(LE, 0),
        e_phoff: U64::new(LE, 0),
        e_shoff: U64::new(LE, shdrs_at as u64),
        e_flags: object::U32::new(LE, elf::FileFlags(0)),
        e_ehsize: U16::new(LE, HEADER as u16),
        e_phentsize: U16::new(LE, 0),
        e_phnum: U16::new(LE, 0),
        e_shentsize: U16::new(LE, SHDR as u16),
        e_shnum: U16::new(LE, sections as u16),
        e_shstrndx: U16::new(LE, elf::SymbolSection(sections as u16 - 1)),
    }));
    out.extend_from_slice(eh);
    out.resize(symtab_at, 0);
    out.extend_from_slice(&[0; SYM]);
    out.extend_from_slice(bytes_of(&Sym64::<LE> {
        st_name: U32::new(LE, 1),
        st_info: elf::SymbolInfo::new(elf::STB_GLOBAL, elf::STT_FUNC),
        st_other: elf::SymbolOther(elf::STV_DEFAULT.0),
        st_shndx: U16::new(LE, elf::SymbolSection(text)),
        // An offset in `.text` (a relocatable file's convention: the
        // section's address places it).
        st_value: U64::new(LE, 0),
        st_size: U64::new(LE, region.len as u64),
    }));
    out.push(0);
    out.extend_from_slice(name);
    out.push(0);
    out.extend_from_slice(SHSTRTAB);
    out.resize(shdrs_at, 0);
    let w32 = |n: u32| U32::new(LE, n);
    let w64 = |n: usize| U64::new(LE, n as u64);
    // A section header with nothing special in it: the rest filled in below.
    let plain = |name: u32, ty: elf::SectionType, (at, len): (usize, usize)| SectionHeader64 {
        sh_name: w32(name),
        sh_type: object::U32::new(LE, ty),
        sh_flags: object::U64::new(LE, elf::SectionFlags(0)),
        sh_addr: w64(0),
        sh_offset: w64(at),
        sh_size: w64(len),
        sh_link: w32(0),
        sh_info: w32(0),
        sh_addralign: w64(1),
        sh_entsize: w64(0),
    };
    out.extend_from_slice(&[0; SHDR]);
    // No bytes in the file: the code is in the process already.
    out.extend_from_slice(bytes_of(&SectionHeader64 {
        sh_flags: object::U64::new(
            LE,
            elf::SectionFlags(elf::SHF_ALLOC.0 | elf::SHF_EXECINSTR.0),
        ),
        sh_addr: w64(region.addr),
        sh_addralign: w64(16),
        ..plain(NAME_TEXT, elf::SHT_NOBITS, (0, region.len))
    }));
    if with_eh {
        // Not SHF_ALLOC: gdb reads it as a file section (its FDE's
        // addresses are absolute); allocating it would place it at address
        // 0 in every object.
        out.extend_from_slice(bytes_of(&SectionHeader64 {
            sh_addralign: w64(8),
            ..plain(NAME_EH_FRAME, elf::SHT_PROGBITS, (eh_at, eh.len()))
        }));
    }
    out.extend_from_slice(bytes_of(&SectionHeader64 {
        sh_link: w32(strtab),
        // The index of the first global symbol (after the null one).
        sh_info: w32(1),
        sh_addralign: w64(8),
        sh_entsize: w64(SYM),
        ..plain(NAME_SYMTAB, elf::SHT_SYMTAB, (symtab_at, 2 * SYM))
    }));
    out.extend_from_slice(bytes_of(&plain(
        NAME_STRTAB,
        elf::SHT_STRTAB,
        (strtab_at, strtab_len),
    )));
    out.extend_from_slice(bytes_of(&plain(
        NAME_SHSTRTAB,
        elf::SHT_STRTAB,
        (shstrtab_at, SHSTRTAB.len()),
    )));
    debug_assert_eq!(out.len(), total);
    out.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::visibility::{Cfa, Reg, Unwind, UnwindRow};
    use object::read::elf::{ElfFile64, FileHeader as _, SectionHeader as _, Sym as _};
    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

    fn region<'a>(name: &'a str, addr: usize, unwind: &'a Unwind) -> Region<'a> {
        Region {
            name,
            addr,
            len: 0x53,
            unwind,
            perf: None,
        }
    }

    /// The entries of gdb's list, first to last, checking each `prev` link.
    fn list() -> Vec<*mut JitCodeEntry> {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        // SAFETY: under `LOCK` the list's entries are live.
        unsafe {
            let mut prev = null_mut();
            let mut e = (*__jit_debug_descriptor.0.get()).first_entry;
            while !e.is_null() {
                assert_eq!((*e).prev, prev, "a broken back link");
                out.push(e);
                prev = e;
                e = (*e).next;
            }
        }
        out
    }

    #[test]
    fn the_descriptor_and_entries_have_gdbs_layout() {
        use std::mem::{offset_of, size_of};
        // gdb's jit.h: two uint32_t, then pointers; an entry is two
        // pointers, a pointer and a uint64_t.
        assert_eq!(offset_of!(JitDescriptor, version), 0);
        assert_eq!(offset_of!(JitDescriptor, action_flag), 4);
        assert_eq!(offset_of!(JitDescriptor, relevant_entry), 8);
        assert_eq!(offset_of!(JitDescriptor, first_entry), 16);
        assert_eq!(size_of::<JitDescriptor>(), 24);
        assert_eq!(offset_of!(JitCodeEntry, next), 0);
        assert_eq!(offset_of!(JitCodeEntry, prev), 8);
        assert_eq!(offset_of!(JitCodeEntry, symfile_addr), 16);
        assert_eq!(offset_of!(JitCodeEntry, symfile_size), 24);
        assert_eq!(size_of::<JitCodeEntry>(), 32);
        // SAFETY: read only; version never changes.
        assert_eq!(unsafe { (*__jit_debug_descriptor.0.get()).version }, 1);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_object_reads_back_with_the_region_address_symbol_and_eh_frame() {
        let rows = Unwind::Rows(vec![
            UnwindRow {
                at: 0,
                cfa: Cfa::Rsp(8),
                saved: vec![],
            },
            UnwindRow {
                at: 2,
                cfa: Cfa::Rsp(16),
                saved: vec![(Reg::R12, -16)],
            },
        ]);
        let addr = 0x7f12_3456_7000;
        let r = region("tierbridge exit (i64,i64)->i64 sysv", addr, &rows);
        let (eh, _) =
            super::super::unwind::eh_frame(&r, super::super::unwind::Place::Absolute).unwrap();
        for with_eh in [true, false] {
            let bytes = symfile(&r, with_eh.then_some(&eh[..]));
            let file = ElfFile64::<object::Endianness>::parse(&*bytes).unwrap();
            let h = file.elf_header();
            let e = file.endian();
            assert_eq!(h.e_type(e), elf::ET_REL);
            assert_eq!(h.e_machine(e), elf::EM_X86_64);
            let text = file.section_by_name(".text").unwrap();
            assert_eq!(text.address(), addr as u64);
            assert_eq!(text.size(), 0x53);
            let sh = text.elf_section_header();
            assert_eq!(sh.sh_type(e), elf::SHT_NOBITS);
            assert_eq!(
                sh.sh_flags(e),
                elf::SectionFlags(elf::SHF_ALLOC.0 | elf::SHF_EXECINSTR.0)
            );
            let syms: Vec<_> = file.symbols().collect();
            assert_eq!(syms.len(), 1);
            let s = &syms[0];
            assert_eq!(s.name().unwrap(), r.name);
            assert_eq!(s.kind(), SymbolKind::Text);
            assert!(s.is_global());
            assert_eq!(s.section_index(), Some(text.index()));
            // A relocatable file's symbol is an offset in its section.
            assert_eq!(s.elf_symbol().st_value(e), 0);
            assert_eq!(s.size(), 0x53);
            match file.section_by_name(".eh_frame") {
                Some(f) => {
                    assert!(with_eh);
                    assert_eq!(f.data().unwrap(), &eh[..]);
                    assert_eq!(f.elf_section_header().sh_type(e), elf::SHT_PROGBITS);
                }
                None => assert!(!with_eh),
            }
        }
    }

    /// Which of `regs` are in gdb's list, in list order.
    fn ours(regs: &[Option<Registered>]) -> Vec<usize> {
        list()
            .iter()
            .filter_map(|e| {
                regs.iter()
                    .position(|r| r.as_ref().is_some_and(|r| r.entry.as_ptr() == *e))
            })
            .collect()
    }

    #[test]
    fn entries_link_at_the_head_and_unlink_from_anywhere() {
        let leaf = Unwind::Leaf;
        let names = ["gdb test a", "gdb test b", "gdb test c"];
        let mut regs: Vec<Option<Registered>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Some(register(&region(n, 0x1000 * (i + 1), &leaf), None)))
            .collect();
        // Newest first (other tests' entries may sit between).
        assert_eq!(ours(&regs), [2, 1, 0]);
        for r in regs.iter().flatten() {
            // SAFETY: a registered entry is live; its fields are only read.
            let e = unsafe { &*r.entry.as_ptr() };
            assert_eq!(e.symfile_addr, r.symfile.as_ptr());
            assert_eq!(e.symfile_size, r.symfile.len() as u64);
        }
        regs[1] = None;
        assert_eq!(ours(&regs), [2, 0]);
        let (a, c) = (
            regs[0].as_ref().unwrap().entry.as_ptr(),
            regs[2].as_ref().unwrap().entry.as_ptr(),
        );
        regs[2] = None;
        assert!(!list().contains(&c));
        assert!(list().contains(&a));
        regs[0] = None;
        assert!(!list().contains(&a));
    }
}
