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
use object::write::elf::{FileHeader, SectionHeader, Sym, Writer};
use object::{Endianness, write::StringId};

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
pub(super) fn register(region: &Region<'_>, eh_frame: Option<&[u8]>) -> Option<Registered> {
    let symfile = symfile(region, eh_frame)?;
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
    Some(Registered {
        // SAFETY: from `Box::into_raw`, never null.
        entry: unsafe { NonNull::new_unchecked(entry) },
        symfile,
    })
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

/// `region`'s object file: an ELF64 x86-64 relocatable file with `.text`
/// (`SHT_NOBITS` at the region's address), `.eh_frame` (when given),
/// `.symtab` with one function symbol, `.strtab` and `.shstrtab`. `None`
/// only if the writer fails (it cannot for these sizes).
pub(crate) fn symfile(region: &Region<'_>, eh_frame: Option<&[u8]>) -> Option<Box<[u8]>> {
    let mut out = Vec::new();
    let mut w = Writer::new(Endianness::Little, true, &mut out);
    // Phase one: every range of the file, in the order it is written.
    w.reserve_file_header();
    let text_name = w.add_section_name(b".text");
    let text = w.reserve_section_index();
    let eh = eh_frame.map(|bytes| {
        let name: StringId = w.add_section_name(b".eh_frame");
        w.reserve_section_index();
        let offset = w.reserve(bytes.len() as u64, 8);
        (name, offset, bytes)
    });
    let sym_name = w.add_string(region.name.as_bytes());
    w.reserve_symbol_index(Some(text));
    w.reserve_symtab_section_index();
    w.reserve_symtab();
    w.reserve_strtab_section_index();
    w.reserve_strtab().ok()?;
    w.reserve_shstrtab_section_index();
    w.reserve_shstrtab().ok()?;
    w.reserve_section_headers();
    // Phase two: the same ranges, written.
    w.write_file_header(&FileHeader {
        os_abi: elf::ELFOSABI_NONE,
        abi_version: 0,
        e_type: elf::ET_REL,
        e_machine: elf::EM_X86_64,
        e_entry: 0,
        e_flags: elf::FileFlags(0),
    })
    .ok()?;
    if let Some((_, _, bytes)) = eh {
        w.write_align(8);
        w.write(bytes);
    }
    w.write_null_symbol();
    w.write_symbol(&Sym {
        section: Some(text.0),
        st_name: w.string_offset(Some(sym_name)),
        st_info: elf::SymbolInfo::new(elf::STB_GLOBAL, elf::STT_FUNC),
        st_other: elf::SymbolOther(elf::STV_DEFAULT.0),
        st_shndx: elf::SymbolSection(0),
        // An offset in `.text` (a relocatable file's convention).
        st_value: 0,
        st_size: region.len as u64,
    });
    w.write_strtab();
    w.write_shstrtab();
    w.write_null_section_header();
    w.write_section_header(&SectionHeader {
        sh_name: w.section_name_offset(Some(text_name)),
        sh_type: elf::SHT_NOBITS,
        sh_flags: elf::SectionFlags(elf::SHF_ALLOC.0 | elf::SHF_EXECINSTR.0),
        sh_addr: region.addr as u64,
        sh_offset: 0,
        sh_size: region.len as u64,
        sh_link: 0,
        sh_info: 0,
        sh_addralign: 16,
        sh_entsize: 0,
    });
    if let Some((name, offset, bytes)) = eh {
        w.write_section_header(&SectionHeader {
            sh_name: w.section_name_offset(Some(name)),
            sh_type: elf::SHT_PROGBITS,
            // Not SHF_ALLOC: gdb reads it as a file section; allocating it
            // would place it at address 0 in every object.
            sh_flags: elf::SectionFlags(0),
            sh_addr: 0,
            sh_offset: offset,
            sh_size: bytes.len() as u64,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: 8,
            sh_entsize: 0,
        });
    }
    w.write_symtab_section_header(1);
    w.write_strtab_section_header();
    w.write_shstrtab_section_header();
    debug_assert_eq!(w.reserved_len(), w.len());
    Some(out.into_boxed_slice())
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
        let (eh, _) = super::super::unwind::eh_frame(&r).unwrap();
        for with_eh in [true, false] {
            let bytes = symfile(&r, with_eh.then_some(&eh[..])).unwrap();
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
            .map(|(i, n)| register(&region(n, 0x1000 * (i + 1), &leaf), None))
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
