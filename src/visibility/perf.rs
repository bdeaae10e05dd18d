//! perf's two ways to learn about JIT code: the perf map
//! (`/tmp/perf-<pid>.map`, a text line per region, read by `perf report`
//! itself) and a jitdump file (binary code-load records with the code's
//! bytes, merged into a recording by `perf inject --jit`). The jitdump
//! format is perf's `tools/perf/Documentation/jitdump-specification.txt`:
//! a header, then a code-load record per region (after an unwinding
//! record when the region has unwind information); the file is also mapped
//! executable once, which is the event by which `perf record` finds it.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Mutex;

use super::Region;

/// The open output files.
struct Files {
    perf_map: Option<File>,
    jitdump: Option<File>,
    /// Code-load records written (each gets its index).
    index: u64,
}

static FILES: Mutex<Files> = Mutex::new(Files {
    perf_map: None,
    jitdump: None,
    index: 0,
});

fn files() -> std::sync::MutexGuard<'static, Files> {
    FILES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The perf map's path for this process.
pub(crate) fn perf_map_path() -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/tmp/perf-{}.map", std::process::id()))
}

/// The jitdump file's path for this process: `$JITDUMPDIR`, else the
/// current directory.
pub(crate) fn jitdump_path() -> std::path::PathBuf {
    let dir = std::env::var_os("JITDUMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    dir.join(format!("jit-{}.dump", std::process::id()))
}

/// Opens (appends to) the perf map.
pub(super) fn open_perf_map() -> io::Result<()> {
    let mut f = files();
    if f.perf_map.is_none() {
        f.perf_map = Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(perf_map_path())?,
        );
    }
    Ok(())
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `perf record -k mono`.
fn timestamp() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The jitdump header's magic ("JiTD" as a little-endian word).
pub(crate) const JITDUMP_MAGIC: u32 = 0x4A69_5444;
/// The record id of a code load.
pub(crate) const JIT_CODE_LOAD: u32 = 0;
/// The record id of unwinding data (for the next code load).
pub(crate) const JIT_CODE_UNWINDING_INFO: u32 = 4;
/// The ELF machine number of this CPU (x86-64 62, AArch64 183).
pub(super) const ELF_MACHINE: u32 = if cfg!(target_arch = "aarch64") {
    183
} else {
    62
};

/// Creates the jitdump file, writes its header and maps it executable.
pub(super) fn open_jitdump() -> io::Result<()> {
    let mut f = files();
    if f.jitdump.is_some() {
        return Ok(());
    }
    let path = jitdump_path();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let mut h = Vec::with_capacity(40);
    h.extend(JITDUMP_MAGIC.to_le_bytes());
    h.extend(1u32.to_le_bytes()); // version
    h.extend(40u32.to_le_bytes()); // header size
    h.extend(ELF_MACHINE.to_le_bytes());
    h.extend(0u32.to_le_bytes()); // padding
    h.extend(std::process::id().to_le_bytes());
    h.extend(timestamp().to_le_bytes());
    h.extend(0u64.to_le_bytes()); // flags
    file.write_all(&h)?;
    // perf finds the file by this mapping (its name in the mmap event); the
    // mapping is never used, and stays for the process's life as perf
    // expects.
    let page = crate::sys::exec::page_size();
    use std::os::fd::AsRawFd;
    // SAFETY: a new private read+execute mapping of the file's first page;
    // no MAP_FIXED, so nothing existing is replaced. Nothing reads it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    f.jitdump = Some(file);
    Ok(())
}

/// The calling thread's id.
fn tid() -> u32 {
    // SAFETY: gettid has no preconditions.
    (unsafe { libc::syscall(libc::SYS_gettid) }) as u32
}

/// Records that `region` was made, in the files that are open.
pub(super) fn code_loaded(region: &Region<'_>, perf_map: bool, jitdump: bool) {
    let mut f = files();
    if perf_map && let Some(file) = f.perf_map.as_mut() {
        // One write per line, so lines from several processes never mix.
        let line = format!("{:x} {:x} {}\n", region.addr, region.len, region.name);
        let _ = file.write_all(line.as_bytes());
    }
    if jitdump && f.jitdump.is_some() {
        let name = region.name.as_bytes();
        let unwinding = region
            .perf
            .map_or(0, |d| (40 + d.len()).next_multiple_of(8));
        let mut r = Vec::with_capacity(unwinding + 16 + 40 + name.len() + 1 + region.len);
        // The unwinding data comes first: `perf inject --jit` keeps it for
        // the next code load, and writes both into the ELF file it makes.
        if let Some(data) = region.perf {
            // perf reads the data through the region's map, which it
            // extends over `mapped_size` bytes past the code (rounded to 8):
            // the data's size, which `prepare` kept free after the code
            // whenever it made the data, so the map never hides another
            // region.
            let mapped = data.len();
            let size = (40 + data.len()).next_multiple_of(8);
            r.extend(JIT_CODE_UNWINDING_INFO.to_le_bytes());
            r.extend((size as u32).to_le_bytes());
            r.extend(timestamp().to_le_bytes());
            r.extend((data.len() as u64).to_le_bytes()); // .eh_frame + header
            r.extend((super::unwind::EH_FRAME_HDR_BYTES as u64).to_le_bytes());
            r.extend((mapped as u64).to_le_bytes());
            r.extend_from_slice(data);
            r.resize(r.len().next_multiple_of(8), 0);
        }
        let index = f.index;
        f.index += 1;
        let size = 16 + 40 + name.len() + 1 + region.len;
        let at = r.len();
        r.extend(JIT_CODE_LOAD.to_le_bytes());
        r.extend((size as u32).to_le_bytes());
        r.extend(timestamp().to_le_bytes());
        r.extend(std::process::id().to_le_bytes());
        r.extend(tid().to_le_bytes());
        r.extend((region.addr as u64).to_le_bytes()); // vma
        r.extend((region.addr as u64).to_le_bytes()); // code address
        r.extend((region.len as u64).to_le_bytes());
        r.extend(index.to_le_bytes());
        r.extend_from_slice(name);
        r.push(0);
        // SAFETY: the region is `len` bytes of published code, readable
        // (read+execute) while its publication runs.
        r.extend_from_slice(unsafe {
            std::slice::from_raw_parts(region.addr as *const u8, region.len)
        });
        debug_assert_eq!(r.len() - at, size);
        // One write for both records, so that they stay together.
        if let Some(file) = f.jitdump.as_mut() {
            let _ = file.write_all(&r);
        }
    }
}
