//! Generated code that profilers, debuggers and backtraces can see through.
//!
//! Every region of executable code tierbridge makes — exit stubs, entry
//! thunks, trampolines, the tier table's cell jumps, and the code anyone
//! installs through [`CodeMemory`](crate::tier::CodeMemory) — is *published*
//! here with a name and an [`Unwind`] description, to each of these sinks:
//!
//! - **unwind information** (always on): an `.eh_frame` FDE per region,
//!   written with `gimli` and registered with the unwinder
//!   (`__register_frame`) while the code lives, so a backtrace taken in a
//!   host function that C called through an entry thunk continues below the
//!   thunk, down to `main`;
//! - **perf map and jitdump** (off by default; [`Profiler`]): the lines of
//!   `/tmp/perf-<pid>.map`, or the code-load and unwinding records of a
//!   jitdump file, so `perf report` names the regions and `perf record
//!   --call-graph=dwarf` unwinds through them;
//! - **the GDB JIT interface** (off by default; [`enable_gdb`]): an
//!   in-memory ELF object per region, with its symbol and its `.eh_frame`,
//!   so gdb names frames in generated code and unwinds through them.
//!
//! A region is unpublished (its FDE deregistered, its GDB entry removed)
//! before its memory can be reused.

mod gdb;
mod perf;
mod unwind;

use std::sync::atomic::{AtomicU8, Ordering};

/// How to find the caller of a frame inside a region: what an unwinder needs
/// to walk the stack through it. Offsets are from the region's start; the
/// x86-64 DWARF register numbers are those of [`Reg`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unwind {
    /// Nothing known: tools see the region's name, and unwinding stops there.
    Unknown,
    /// The stack pointer never moves: the return address is at `[rsp]`
    /// throughout (jumps, trampolines, leaf code).
    Leaf,
    /// Rows, each in force from its offset until the next: where the frame's
    /// canonical frame address (the stack pointer before the call that
    /// entered the region) is, and where registers were saved.
    Rows(Vec<UnwindRow>),
    /// The frames as Cranelift describes the code it compiled
    /// ([`crate::cranelift::compile_with_unwind`]).
    #[cfg(feature = "cranelift")]
    Cranelift(cranelift_codegen::isa::unwind::systemv::UnwindInfo),
}

/// One row of an [`Unwind::Rows`] table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnwindRow {
    /// The code offset from which the row holds.
    pub at: u32,
    /// Where the canonical frame address is.
    pub cfa: Cfa,
    /// Registers saved in the frame: register and offset from the CFA (the
    /// return address is always at CFA − 8 and need not be listed).
    pub saved: Vec<(Reg, i32)>,
}

/// The canonical frame address of an [`UnwindRow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cfa {
    /// `rsp + n`.
    Rsp(u32),
    /// `rbp + n` (a frame-pointer frame).
    Rbp(u32),
}

/// An x86-64 general-purpose register, by DWARF number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reg {
    /// rbx (3).
    Rbx,
    /// rsi (4; callee-saved in Win64).
    Rsi,
    /// rdi (5; callee-saved in Win64).
    Rdi,
    /// rbp (6).
    Rbp,
    /// r12 (12).
    R12,
    /// r13 (13).
    R13,
    /// r14 (14).
    R14,
    /// r15 (15).
    R15,
}

impl Reg {
    /// The DWARF register number (System V x86-64 psABI, figure 3.36).
    pub fn dwarf(self) -> u16 {
        match self {
            Reg::Rbx => 3,
            Reg::Rsi => 4,
            Reg::Rdi => 5,
            Reg::Rbp => 6,
            Reg::R12 => 12,
            Reg::R13 => 13,
            Reg::R14 => 14,
            Reg::R15 => 15,
        }
    }
}

/// A profiler's view of generated code: which file tierbridge writes as
/// code is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Profiler {
    /// `/tmp/perf-<pid>.map`: a line per region (`start size name`), which
    /// `perf report` reads by itself.
    PerfMap,
    /// A jitdump file (`jit-<pid>.dump` in the current directory, or in
    /// `$JITDUMPDIR`), with a code-load record per region, preceded by its
    /// unwind tables when it has unwind information: `perf record -k mono`
    /// (with `--call-graph=dwarf` for call graphs through generated code),
    /// then `perf inject --jit`, then `perf report`. Each region made while
    /// it is on keeps its tables' size (70–90 bytes for a stub, more for
    /// code with many unwind rows) free after its code, where perf
    /// places those tables.
    JitDump,
}

/// What is published, set process-wide: bit 0 perf map, bit 1 jitdump,
/// bit 2 GDB; bit 7 set once the environment was read.
static SINKS: AtomicU8 = AtomicU8::new(0);
const PERF_MAP: u8 = 1;
const JIT_DUMP: u8 = 2;
const GDB: u8 = 4;
const READ_ENV: u8 = 0x80;

/// The sinks on now, the environment read on first use:
/// `TIERBRIDGE_PROFILE=perfmap|jitdump` (comma-separated for both) and
/// `TIERBRIDGE_GDB=1`.
fn sinks() -> u8 {
    let s = SINKS.load(Ordering::Acquire);
    if s & READ_ENV != 0 {
        return s;
    }
    let mut add = READ_ENV;
    if let Ok(v) = std::env::var("TIERBRIDGE_PROFILE") {
        for part in v.split(',') {
            match part.trim() {
                "perfmap" => add |= PERF_MAP,
                "jitdump" => add |= JIT_DUMP,
                _ => {}
            }
        }
    }
    if std::env::var_os("TIERBRIDGE_GDB").is_some_and(|v| v != "0") {
        add |= GDB;
    }
    // The files asked for by the environment are opened now; one that
    // cannot be stays off (said once on stderr: the program asked for it).
    if add & PERF_MAP != 0
        && let Err(e) = perf::open_perf_map()
    {
        eprintln!("tierbridge: TIERBRIDGE_PROFILE=perfmap: {e}; no perf map");
        add &= !PERF_MAP;
    }
    if add & JIT_DUMP != 0
        && let Err(e) = perf::open_jitdump()
    {
        eprintln!("tierbridge: TIERBRIDGE_PROFILE=jitdump: {e}; no jitdump");
        add &= !JIT_DUMP;
    }
    SINKS.fetch_or(add, Ordering::AcqRel) | add
}

/// Turns a profiler's output on for the rest of the process (code made from
/// now on; what exists is not written). Also
/// `TIERBRIDGE_PROFILE=perfmap|jitdump`, for programs that cannot change code.
///
/// # Errors
/// The file could not be created.
pub fn enable_profiler(p: Profiler) -> std::io::Result<()> {
    sinks();
    match p {
        Profiler::PerfMap => perf::open_perf_map()?,
        Profiler::JitDump => perf::open_jitdump()?,
    }
    SINKS.fetch_or(
        match p {
            Profiler::PerfMap => PERF_MAP,
            Profiler::JitDump => JIT_DUMP,
        },
        Ordering::AcqRel,
    );
    Ok(())
}

/// Registers generated code with gdb, through gdb's JIT interface, for the
/// rest of the process: code made from now on (what exists already is not
/// registered). Also `TIERBRIDGE_GDB=1`, for programs that cannot change
/// code. Off by default.
///
/// Each region (exit stub, entry thunk, trampoline block, code installed
/// through [`CodeMemory`](crate::tier::CodeMemory)) then gets a small ELF
/// object in memory, naming it with its symbol (`tierbridge exit
/// (i64,i64)->i64 sysv`, …) and carrying its unwind information, linked
/// into the list that gdb reads from `__jit_debug_descriptor`; gdb (attached
/// from the start or later) names the frames in generated code and unwinds
/// through them, so `bt` inside a host function that C called through an
/// entry thunk reaches `main`.
///
/// What it costs: without a debugger, building the object and linking it,
/// about 1 100 instructions per region made and dropped, 0.1 µs in a hot
/// loop and up to about 1 µs when many thousands are alive (memory), and
/// 500–650 bytes held per region while it lives; adding and removing are
/// constant time. Under gdb every region made or dropped stops the process
/// while gdb reads the object, and gdb's own work grows with the number of
/// objects (milliseconds each past a thousand), so keep it for debugging
/// sessions. PERF.md has the measurements.
///
/// The program must keep its symbol table (not stripped), where gdb finds
/// `__jit_debug_register_code` and `__jit_debug_descriptor`; tierbridge
/// defines both, so it cannot be linked with another library that defines
/// them too.
pub fn enable_gdb() {
    sinks();
    SINKS.fetch_or(GDB, Ordering::AcqRel);
}

/// Whether any sink on reads regions' names (else a name need not be
/// made: the unwinder needs none).
#[cfg(tierbridge_codegen)]
pub(crate) fn names_wanted() -> bool {
    sinks() & (PERF_MAP | JIT_DUMP | GDB) != 0
}

/// A region as the sinks see it.
pub(crate) struct Region<'a> {
    pub(crate) name: &'a str,
    pub(crate) addr: usize,
    pub(crate) len: usize,
    pub(crate) unwind: &'a Unwind,
    /// The region's jitdump unwinding data, if [`prepare`] made it (and so
    /// kept room for it after the code).
    pub(crate) perf: Option<&'a [u8]>,
}

/// How many bytes of code `unwind` says it describes, when it carries a
/// length of its own (Cranelift's description).
pub(crate) fn unwind_len(unwind: &Unwind) -> Option<usize> {
    unwind::unwind_len(unwind)
}

/// What code to be published needs before its memory is allocated: nothing
/// unless jitdump is on; then its jitdump unwinding data, and room for it
/// after the code (perf takes the region to extend over that data, and
/// another region there would hide it).
#[derive(Default)]
pub(crate) struct Prepared {
    /// Bytes to keep free after the code.
    pub(crate) tail: usize,
    /// The jitdump unwinding data (`.eh_frame` and `.eh_frame_hdr`).
    pub(crate) perf: Option<Box<[u8]>>,
}

/// Prepares `len` bytes of code that will be published with `unwind`.
pub(crate) fn prepare(len: usize, unwind: &Unwind) -> Prepared {
    if sinks() & JIT_DUMP == 0 {
        return Prepared::default();
    }
    match unwind::perf_unwinding(len, unwind) {
        Some(data) => Prepared {
            tail: len.next_multiple_of(8) - len + data.len(),
            perf: Some(data.into_boxed_slice()),
        },
        None => Prepared::default(),
    }
}

/// A published region: unpublished on drop.
pub(crate) struct Published {
    unwind: Option<unwind::Registered>,
    gdb: Option<gdb::Registered>,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("unwind", &self.unwind.is_some())
            .field("gdb", &self.gdb.is_some())
            .finish()
    }
}

/// Publishes `region` to every sink that is on. Never fails: a sink that
/// cannot take the region leaves it out (the code still runs).
pub(crate) fn publish(region: &Region<'_>) -> Published {
    let s = sinks();
    if s & (PERF_MAP | JIT_DUMP) != 0 {
        perf::code_loaded(region, s & PERF_MAP != 0, s & JIT_DUMP != 0);
    }
    // Made once: the unwinder and gdb's object file take the same bytes.
    let frames = unwind::eh_frame(region, unwind::Place::Absolute);
    let gdb =
        (s & GDB != 0).then(|| gdb::register(region, frames.as_ref().map(|(bytes, _)| &bytes[..])));
    Published {
        unwind: frames.map(unwind::register),
        gdb,
    }
}
