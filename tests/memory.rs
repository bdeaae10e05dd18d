//! Memory safety of the boundary: no mapping is ever writable and executable
//! at once, and nothing is read or written past an argument or a result
//! (values placed flush against a PROT_NONE guard page).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tierbridge::abi::{CallConv, Signature};
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy, HostError};
use tierbridge::thunks::Bridge;

fn sig(s: &str) -> Signature {
    Signature::parse(s).unwrap()
}

fn work(b: &Bridge, round: u64) {
    let d = Dispatcher::from_host(
        Arc::new(|c: EntryCall<'_>| -> Result<(), HostError> {
            c.ret[0] = c.args.iter().sum();
            Ok(())
        }),
        FailurePolicy::Report,
    );
    // New shapes every round, so code keeps being generated while the watcher reads.
    let text = format!(
        "({})->i64",
        vec!["i64"; 1 + (round % 20) as usize].join(",")
    );
    let s = sig(&text);
    for conv in CallConv::ALL {
        let ep = b.entry_point(&s, conv, &d, round).unwrap();
        let exit = b.exit_stub(&s, conv).unwrap();
        let args: Vec<u64> = (0..s.params().len() as u64).collect();
        let mut ret = [0u64];
        // SAFETY: the entry point has this signature.
        unsafe { exit.call(ep.code_ptr(), &args, &mut ret) }.unwrap();
        assert_eq!(ret[0], args.iter().sum::<u64>());
    }
    let wide = sig(&format!(
        "({{[u8;{}]}},f32)->{{[u8;{}]}}",
        1 + round % 40,
        1 + round % 33
    ));
    b.exit_stub(&wide, CallConv::SysV).ok();
}

#[cfg(target_os = "linux")]
#[test]
fn no_mapping_is_ever_writable_and_executable() {
    assert!(
        support::wx_mappings().is_empty(),
        "W+X before the test: {:?}",
        support::wx_mappings()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, reads) = (stop.clone(), reads.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.extend(support::wx_mappings());
                reads.fetch_add(1, Ordering::Relaxed);
            }
            seen
        })
    };
    let bridges = support::all_bridges();
    for round in 0..300 {
        for (_, b) in &bridges {
            work(b, round);
        }
        drop(support::generated());
    }
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert!(
        seen.is_empty(),
        "writable and executable mappings seen: {seen:#?}"
    );
    assert!(reads.load(Ordering::Relaxed) > 10, "the watcher barely ran");
}

/// `len` bytes ending exactly at a PROT_NONE page.
struct Guarded {
    base: *mut u8,
    page: usize,
}

impl Guarded {
    fn new() -> Guarded {
        // SAFETY: plain anonymous mapping of two pages; the second becomes PROT_NONE.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            let base = libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(base, libc::MAP_FAILED);
            assert_eq!(
                libc::mprotect(base.cast::<u8>().add(page).cast(), page, libc::PROT_NONE),
                0
            );
            Guarded {
                base: base.cast(),
                page,
            }
        }
    }

    /// The last `len` bytes before the guard page.
    fn tail(&self, len: usize) -> *mut u8 {
        self.base.wrapping_add(self.page - len)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.base.cast(), 2 * self.page) };
    }
}

/// A 17-byte struct's bytes.
fn pattern(seed: u8) -> [u8; 17] {
    std::array::from_fn(|i| seed.wrapping_add(i as u8 * 7))
}

#[test]
fn nothing_is_read_or_written_past_an_argument_or_a_result() {
    let g = Guarded::new();
    for (name, b) in support::all_bridges() {
        // The host sums the struct's bytes and returns a 17-byte struct.
        let d = Dispatcher::from_host(
            Arc::new(|c: EntryCall<'_>| -> Result<(), HostError> {
                let bytes: Vec<u8> = c
                    .args
                    .iter()
                    .flat_map(|s| s.to_le_bytes())
                    .take(17)
                    .collect();
                if c.ret.len() == 1 {
                    c.ret[0] = bytes.iter().map(|b| u64::from(*b)).sum();
                } else {
                    let out = pattern(bytes[0].wrapping_add(1));
                    for (i, chunk) in out.chunks(8).enumerate() {
                        let mut w = [0u8; 8];
                        w[..chunk.len()].copy_from_slice(chunk);
                        c.ret[i] = u64::from_le_bytes(w);
                    }
                }
                Ok(())
            }),
            FailurePolicy::Report,
        );
        let want_sum: u64 = pattern(3).iter().map(|b| u64::from(*b)).sum();

        // 1. Exit stub: argument slots and result slots end at the guard page.
        for conv in CallConv::ALL {
            let s = sig("({[u8;17]})->{[u8;17]}");
            let ep = b.entry_point(&s, conv, &d, 0).unwrap();
            let exit = b.exit_stub(&s, conv).unwrap();
            let args = g.tail(24).cast::<u64>();
            // SAFETY: 24 writable bytes before the guard page.
            unsafe { std::ptr::copy_nonoverlapping(pattern(3).as_ptr(), args.cast::<u8>(), 17) };
            // SAFETY: as above; the slices are exactly the 3 slots each.
            let arg_slots = unsafe { std::slice::from_raw_parts(args, 3) };
            let mut local = [0u64; 3];
            // SAFETY: the entry point has this signature.
            unsafe { exit.call(ep.code_ptr(), arg_slots, &mut local) }.unwrap();
            let got: Vec<u8> = local
                .iter()
                .flat_map(|s| s.to_le_bytes())
                .take(17)
                .collect();
            assert_eq!(got, pattern(4), "{name} {conv}");
            // SAFETY: the same 24 bytes, now as result slots.
            let ret_slots = unsafe { std::slice::from_raw_parts_mut(args, 3) };
            let copy = arg_slots.to_vec();
            // SAFETY: as above.
            unsafe { exit.call(ep.code_ptr(), &copy, ret_slots) }.unwrap();
        }

        // 2. Win64 entry: a by-reference struct whose 17 bytes end at the guard
        //    page (passed as the pointer it is, through a (ptr)->i64 exit stub).
        let ep = b
            .entry_point(&sig("({[u8;17]})->i64"), CallConv::Win64, &d, 0)
            .unwrap();
        let exit = b.exit_stub(&sig("(ptr)->i64"), CallConv::Win64).unwrap();
        let p = g.tail(17);
        // SAFETY: 17 writable bytes before the guard page.
        unsafe { std::ptr::copy_nonoverlapping(pattern(3).as_ptr(), p, 17) };
        let mut ret = [0u64];
        // SAFETY: Win64 passes that struct as a pointer in rcx, which is what the stub passes.
        unsafe { exit.call(ep.code_ptr(), &[p as u64], &mut ret) }.unwrap();
        assert_eq!(ret[0], want_sum, "{name} win64 by-reference");

        // 3. SysV entry: the hidden result pointer's 17 bytes end at the guard page.
        let ep = b
            .entry_point(&sig("(u8)->{[u8;17]}"), CallConv::SysV, &d, 0)
            .unwrap();
        let exit = b.exit_stub(&sig("(ptr,u8)->ptr"), CallConv::SysV).unwrap();
        let mut ret = [0u64];
        // SAFETY: sret takes the buffer in rdi and the u8 in rsi, as this stub passes them.
        unsafe { exit.call(ep.code_ptr(), &[p as u64, 9], &mut ret) }.unwrap();
        assert_eq!(ret[0], p as u64, "{name}: sret returns its pointer");
        // SAFETY: the 17 bytes the callee wrote.
        let got = unsafe { std::slice::from_raw_parts(p, 17) };
        assert_eq!(got, pattern(10), "{name} sret");
    }
}

/// Generated code is placed just below the library's own code when that range
/// is free (as it is in a PIE test binary): the entry thunk's calls to the
/// dispatcher and the returns stay within one 4 GiB region (ABI.md,
/// "Executable memory"). Checked on every memory strategy, for an entry
/// point, an exit stub, and code made after many slabs' worth of bindings.
#[test]
#[cfg(all(tierbridge_codegen, target_os = "linux"))]
fn generated_code_lives_within_2_gib_of_the_library() {
    let lib = tierbridge::host::pending_entry_status as *const () as usize;
    let near = |p: usize, what: &str| {
        assert!(
            p.abs_diff(lib) < 1 << 31,
            "{what} at {p:#x}, library code at {lib:#x}"
        );
    };
    for (name, b) in support::all_bridges() {
        if b.kind() != tierbridge::thunks::BackendKind::Generated {
            continue;
        }
        let d = Dispatcher::from_host(
            Arc::new(|_: EntryCall<'_>| -> Result<(), HostError> { Ok(()) }),
            FailurePolicy::Report,
        );
        let s = sig("(i64,i64)->i64");
        // 3000 bindings: 96 KB of trampolines, and enough entry points to need
        // more than one slab on the write-then-protect strategy.
        let eps: Vec<_> = (0..3000)
            .map(|i| b.entry_point(&s, CallConv::SysV, &d, i).unwrap())
            .collect();
        near(
            eps[0].code_ptr() as usize,
            &format!("{name}: first entry point"),
        );
        near(
            eps[2999].code_ptr() as usize,
            &format!("{name}: last entry point"),
        );
    }
}
