//! The floor under the call-overhead targets on this machine: the cheapest
//! possible exit stub and entry path, written by hand in assembly and linked
//! into this binary, next to a direct call. No tierbridge code runs here; the
//! point is what *any* slot-based bridge must pay.
//!
//! ```text
//! cargo run --release --example floor
//! ```
//!
//! - exit floor: `stub(args, target)` loads two argument registers from
//!   slots and jumps to the target (what tierbridge's register stub
//!   does, with nothing around it);
//! - entry floor: a trampoline that loads its binding from a data cell and
//!   jumps to a thunk, which spills the two arguments into slots, zeroes the
//!   result slot and calls a 4-instruction dispatcher (tierbridge's entry
//!   sequence, with the dispatcher in assembly instead of Rust); and the same
//!   with a trampoline that has the binding's address built in and jumps to
//!   the thunk directly (what writing code per binding would buy);
//! - the same exit and entry floors for eight `i64`s, two of them on the
//!   stack, where the exit stub has to call the target instead of jumping
//!   to it;
//! - the same for a 24-byte struct result (`(f64)->{f64,f64,f64}`, returned
//!   in memory), with libffi's own `ffi_call` of that shape beside them:
//!   the issue's exit target for it is a ratio to libffi.
//!
//! Each is timed as the best of 5 runs of 10⁸ calls in a loop, like the direct
//! call it is compared with.
//!
//! Then the floor under the setup target (a new signature's exit stub and
//! entry point), in plain Rust: the bookkeeping any bridge that interns
//! signatures must do for a signature it has not seen, with everything else
//! taken away (see `setup` below); and, for a signature whose entry shape is
//! new, the same bookkeeping plus the least code such a shape needs: the
//! hand-written 8-argument entry thunk above, copied into fresh executable
//! memory got the way tierbridge's default strategy gets it (a dual-mapped
//! in-memory file, both views populated). `cargo run --release --example
//! floor -- setup` runs this part alone.

#[cfg(target_arch = "x86_64")]
mod floor {
    use std::arch::global_asm;
    use std::hint::black_box;
    use std::time::Instant;

    use libffi::middle::{Cif, CodePtr, Ret, Type, arg};

    use super::measure::{Eight, Triple, eight_i64, triple};

    /// What the trampoline's cell points to: the thunk, the dispatcher.
    #[repr(C)]
    pub struct Binding {
        thunk: unsafe extern "C" fn(),
        dispatch: unsafe extern "C" fn(),
    }

    /// A static binding for a floor's thunk and dispatcher, and the cell its
    /// trampoline reads (both named, for the assembly to refer to).
    macro_rules! binding {
        ($binding:ident, $cell:ident, $thunk:ident, $dispatch:ident) => {
            #[unsafe(no_mangle)]
            static $binding: Binding = Binding {
                thunk: $thunk,
                dispatch: $dispatch,
            };

            #[unsafe(no_mangle)]
            static $cell: &Binding = &$binding;
        };
    }

    binding!(FLOOR_BINDING, FLOOR_CELL, floor_thunk, floor_dispatch);
    binding!(FLOOR_BINDING8, FLOOR_CELL8, floor_thunk8, floor_dispatch8);
    binding!(
        FLOOR_BINDING_SRET,
        FLOOR_CELL_SRET,
        floor_thunk_sret,
        floor_dispatch_sret
    );

    global_asm!(
        r#"
        .p2align 5
        .globl floor_exit
        floor_exit:
            mov r11, rdi
            mov r10, rsi
            mov rdi, [r11]
            mov rsi, [r11 + 8]
            jmp r10

        .p2align 5
        .globl floor_exit_sret
        floor_exit_sret:
            movq xmm0, [rdi]
            mov rdi, rdx
            jmp rsi

        .p2align 5
        .globl floor_entry_sret
        floor_entry_sret:
            mov r10, [rip + FLOOR_CELL_SRET]
            jmp [r10]

        .p2align 5
        .globl floor_thunk_sret
        floor_thunk_sret:
            sub rsp, 0x38
            mov [rsp + 0x20], rdi
            movq [rsp], xmm0
            mov qword ptr [rsp + 8], 0
            mov qword ptr [rsp + 0x10], 0
            mov qword ptr [rsp + 0x18], 0
            lea rdi, [r10 + 16]
            lea rsi, [rsp]
            lea rdx, [rsp + 8]
            xor ecx, ecx
            call [r10 + 8]
            test eax, eax
            jne 2f
            mov rax, [rsp + 0x20]
            movq xmm0, [rsp + 8]
            movhps xmm0, [rsp + 0x10]
            movdqu [rax], xmm0
            mov rcx, [rsp + 0x18]
            mov [rax + 16], rcx
            add rsp, 0x38
            ret
        2:  ud2

        .p2align 5
        .globl floor_dispatch_sret
        floor_dispatch_sret:
            movsd xmm0, [rsi]
            movsd [rdx], xmm0
            movapd xmm1, xmm0
            addsd xmm1, xmm0
            movsd [rdx + 8], xmm1
            xorpd xmm1, xmm1
            subsd xmm1, xmm0
            movsd [rdx + 16], xmm1
            xor eax, eax
            ret

        .p2align 5
        .globl floor_entry
        floor_entry:
            mov r10, [rip + FLOOR_CELL]
            jmp [r10]

        .p2align 5
        .globl floor_entry_direct
        floor_entry_direct:
            lea r10, [rip + FLOOR_BINDING]
            jmp floor_thunk

        .p2align 5
        .globl floor_thunk
        floor_thunk:
            sub rsp, 0x38
            mov [rsp + 0x20], r10
            mov [rsp], rdi
            mov [rsp + 8], rsi
            mov qword ptr [rsp + 0x10], 0
            lea rdi, [r10 + 16]
            lea rsi, [rsp]
            lea rdx, [rsp + 0x10]
            xor ecx, ecx
            call [r10 + 8]
            test eax, eax
            jne 2f
            mov rax, [rsp + 0x10]
            add rsp, 0x38
            ret
        2:  ud2

        .p2align 5
        .globl floor_dispatch
        floor_dispatch:
            mov rax, [rsi]
            add rax, [rsi + 8]
            mov [rdx], rax
            xor eax, eax
            ret

        .p2align 5
        .globl floor_exit8
        floor_exit8:
            sub rsp, 0x18
            mov r11, rdi
            mov r10, rsi
            mov rdi, [r11]
            mov rsi, [r11 + 8]
            mov rdx, [r11 + 16]
            mov rcx, [r11 + 24]
            mov r8, [r11 + 32]
            mov r9, [r11 + 40]
            mov rax, [r11 + 48]
            mov [rsp], rax
            mov rax, [r11 + 56]
            mov [rsp + 8], rax
            call r10
            add rsp, 0x18
            ret

        .p2align 5
        .globl floor_entry8
        floor_entry8:
            mov r10, [rip + FLOOR_CELL8]
            jmp [r10]

        .p2align 5
        .globl floor_thunk8
        floor_thunk8:
            sub rsp, 0x68
            mov [rsp], rdi
            mov [rsp + 8], rsi
            mov [rsp + 16], rdx
            mov [rsp + 24], rcx
            mov [rsp + 32], r8
            mov [rsp + 40], r9
            mov rax, [rsp + 0x70]
            mov [rsp + 48], rax
            mov rax, [rsp + 0x78]
            mov [rsp + 56], rax
            mov qword ptr [rsp + 0x40], 0
            mov [rsp + 0x48], r10
            lea rdi, [r10 + 16]
            lea rsi, [rsp]
            lea rdx, [rsp + 0x40]
            xor ecx, ecx
            call [r10 + 8]
            test eax, eax
            jne 2f
            mov rax, [rsp + 0x40]
            add rsp, 0x68
            ret
        2:  ud2
        .globl floor_thunk8_end
        floor_thunk8_end:

        .p2align 5
        .globl floor_dispatch8
        floor_dispatch8:
            mov rax, [rsi]
            xor rax, [rsi + 8]
            xor rax, [rsi + 16]
            xor rax, [rsi + 24]
            xor rax, [rsi + 32]
            xor rax, [rsi + 40]
            xor rax, [rsi + 48]
            xor rax, [rsi + 56]
            mov [rdx], rax
            xor eax, eax
            ret
        "#
    );

    unsafe extern "C" {
        fn floor_exit(args: *const u64, target: extern "C" fn(i64, i64) -> i64) -> u64;
        fn floor_exit_sret(args: *const u64, target: TripleFn, ret: *mut u64) -> *mut u64;
        fn floor_entry_sret(x: f64) -> Triple;
        fn floor_thunk_sret();
        fn floor_dispatch_sret();
        fn floor_entry(a: i64, b: i64) -> i64;
        fn floor_entry_direct(a: i64, b: i64) -> i64;
        fn floor_thunk();
        fn floor_dispatch();
        fn floor_exit8(args: *const u64, target: Eight) -> u64;
        fn floor_entry8(a: i64, b: i64, c: i64, d: i64, e: i64, f: i64, g: i64, h: i64) -> i64;
        fn floor_thunk8();
        static floor_thunk8_end: u8;
        fn floor_dispatch8();
    }

    /// The bytes of the hand-written entry thunk for eight `i64`s (two on
    /// the stack): the least code a new entry shape of that size needs, which
    /// the new-shape setup floor copies into fresh executable memory.
    pub fn thunk8_bytes() -> &'static [u8] {
        let start = floor_thunk8 as *const u8;
        let end = &raw const floor_thunk8_end;
        let len = (end as usize)
            .checked_sub(start as usize)
            .expect("floor_thunk8_end follows floor_thunk8");
        // SAFETY: [start, end) is floor_thunk8's code in this binary's text,
        // which is mapped readable and never written.
        unsafe { std::slice::from_raw_parts(start, len) }
    }

    type TripleFn = extern "C" fn(f64) -> Triple;
    type ExitFloorSret = unsafe extern "C" fn(*const u64, TripleFn, *mut u64) -> *mut u64;
    type ExitFloor8 = unsafe extern "C" fn(*const u64, Eight) -> u64;
    type EntryFloor8 = unsafe extern "C" fn(i64, i64, i64, i64, i64, i64, i64, i64) -> i64;

    type ExitFloor = unsafe extern "C" fn(*const u64, extern "C" fn(i64, i64) -> i64) -> u64;
    type EntryFloor = unsafe extern "C" fn(i64, i64) -> i64;

    extern "C" fn add(a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }

    /// The best of 5 runs of 10⁸ calls `call(i)` in a loop, in ns per call.
    fn best_of_5(call: impl Fn(i64) -> i64) -> f64 {
        const N: i64 = 100_000_000;
        (0..5)
            .map(|_| {
                let t = Instant::now();
                let mut acc = 0i64;
                for i in 0..N {
                    acc = acc.wrapping_add(call(i));
                }
                black_box(acc);
                t.elapsed().as_nanos() as f64 / N as f64
            })
            .fold(f64::INFINITY, f64::min)
    }

    pub fn run() {
        let direct = best_of_5(|i| black_box(add as extern "C" fn(i64, i64) -> i64)(i, 1));
        let exit = best_of_5(|i| {
            let slots = [i as u64, 1];
            let target = black_box(add as extern "C" fn(i64, i64) -> i64);
            // SAFETY: floor_exit reads two slots and jumps to `add`, whose
            // result comes back in rax.
            unsafe { black_box(floor_exit as ExitFloor)(slots.as_ptr(), target) as i64 }
        });
        // SAFETY: floor_entry is a complete (i64, i64) -> i64 function: its
        // binding is static and its dispatcher sums two slots.
        let entry = best_of_5(|i| unsafe { black_box(floor_entry as EntryFloor)(i, 1) });
        // SAFETY: as above; this trampoline has the binding's address built in
        // and jumps to the thunk directly.
        let entry_direct =
            best_of_5(|i| unsafe { black_box(floor_entry_direct as EntryFloor)(i, 1) });
        println!("(i64,i64)->i64, best of 5 x 10^8 calls:");
        println!("  direct call                     {direct:.3} ns");
        row("exit floor (slots -> jmp)", exit, direct);
        row("entry floor (trampoline, thunk)", entry, direct);
        row("entry, binding built into code", entry_direct, direct);

        // Eight arguments, two of them on the stack: the exit stub cannot
        // jump to the target (the stack arguments go where its own caller's
        // frame is), so it calls it, and the entry thunk also copies the two
        // stack arguments. Both copy 8 bytes at a time: the slots and the
        // stack arguments were stored 8 bytes at a time, and a 16-byte load
        // of two such stores is not forwarded from them (with one, each floor
        // read 9 ns here).
        let direct8 = best_of_5(|i| black_box(eight_i64 as Eight)(i, 1, 2, 3, 4, 5, 6, 7));
        let exit8 = best_of_5(|i| {
            let slots = [i as u64, 1, 2, 3, 4, 5, 6, 7];
            let target = black_box(eight_i64 as Eight);
            // SAFETY: floor_exit8 reads eight slots, passes the last two on
            // the stack, calls `eight_i64` and returns its rax.
            unsafe { black_box(floor_exit8 as ExitFloor8)(slots.as_ptr(), target) as i64 }
        });
        // SAFETY: floor_entry8 is a complete eight-`i64` function: its
        // binding is static and its dispatcher xors eight slots, as
        // `eight_i64` does.
        let entry8 = best_of_5(|i| unsafe {
            black_box(floor_entry8 as EntryFloor8)(i, 1, 2, 3, 4, 5, 6, 7)
        });
        println!("8 x i64 (2 on the stack) -> i64, best of 5 x 10^8 calls:");
        println!("  direct call                     {direct8:.3} ns");
        row("exit floor (slots -> call)", exit8, direct8);
        row("entry floor (trampoline, thunk)", entry8, direct8);

        // A 24-byte struct result, which travels in memory: the exit stub
        // loads the argument, passes the result slots as the hidden pointer
        // and jumps to the target, which writes the result there. The issue's
        // target for this shape is a ratio to libffi, so libffi's own
        // `ffi_call` is timed too (through libffi-rs, no tierbridge code),
        // writing into the same kind of buffer. Each reads the first result
        // slot 8 bytes at a time (forwarded from the target's stores).
        // Both floors compute what `triple` does.
        let want = triple(3.0);
        let mut ret = [0u64; 3];
        // SAFETY: floor_exit_sret reads one slot and passes `ret`, three
        // writable slots, to `triple` as its result buffer.
        unsafe { floor_exit_sret(&3f64.to_bits(), triple, ret.as_mut_ptr()) };
        // SAFETY: floor_entry_sret is a complete (f64) -> {f64,f64,f64}
        // function (see the timing loop below).
        let got = unsafe { floor_entry_sret(3.0) };
        for t in [[got.a, got.b, got.c], ret.map(f64::from_bits)] {
            assert_eq!(t, [want.a, want.b, want.c]);
        }
        let direct_sret = best_of_5(|i| black_box(triple as TripleFn)(i as f64).a.to_bits() as i64);
        let exit_sret = best_of_5(|i| {
            let slots = [(i as f64).to_bits()];
            let mut ret = [0u64; 3];
            // SAFETY: floor_exit_sret loads one f64 slot, passes `ret` (three
            // slots) as the hidden result pointer and jumps to `triple`.
            unsafe {
                black_box(floor_exit_sret as ExitFloorSret)(
                    slots.as_ptr(),
                    black_box(triple as TripleFn),
                    ret.as_mut_ptr(),
                )
            };
            ret[0] as i64
        });
        let cif = Cif::new(
            [Type::f64()],
            Type::structure([Type::f64(), Type::f64(), Type::f64()]),
        );
        let ffi_sret = best_of_5(|i| {
            let x = i as f64;
            let mut ret = [0u64; 3];
            let f = CodePtr(black_box(triple as TripleFn) as *mut _);
            // SAFETY: the cif describes `triple`, (f64) -> {f64,f64,f64},
            // and `ret` holds the 24-byte result.
            unsafe { cif.call_return_into(f, &[arg(&x)], Ret::new(&mut ret)) };
            ret[0] as i64
        });
        println!("(f64) -> 24-byte struct (in memory), best of 5 x 10^8 calls:");
        println!("  direct call                     {direct_sret:.3} ns");
        row("exit floor (slot, hidden ptr)", exit_sret, direct_sret);
        println!(
            "  libffi ffi_call                 {ffi_sret:.3} ns ({:.1}x the exit floor)",
            ffi_sret / exit_sret
        );
        // SAFETY: floor_entry_sret is a complete (f64) -> {f64,f64,f64}
        // function: its binding is static, its dispatcher writes the three
        // result slots as `triple` computes them, and its thunk copies them
        // to the caller's buffer (16 bytes, then 8, as tierbridge's does).
        let entry_sret = best_of_5(|i| unsafe {
            black_box(floor_entry_sret as unsafe extern "C" fn(f64) -> Triple)(i as f64)
                .a
                .to_bits() as i64
        });
        row("entry floor (trampoline, thunk)", entry_sret, direct_sret);
    }

    /// One line of a floor's table: what, its time, and its ratio to
    /// `direct`, the direct call of the same shape.
    fn row(what: &str, t: f64, direct: f64) {
        println!("  {what:<32}{t:.3} ns ({:.2}x)", t / direct);
    }
}

#[path = "common/measure.rs"]
mod measure;

/// The least a bridge that interns signatures must do for a new signature
/// whose machine shape it has already made code for, as tierbridge's
/// `profile create-known` series: intern it (hash it, find it missing in a
/// table of every signature seen, keep a copy, give it an id), find its shape's
/// shared code by a key of its parameter classes, record an exit stub (id,
/// code, slot counts), and bind an entry point (take a ready trampoline, record
/// a binding, point the trampoline's cell at it).
///
/// Everything is made as cheap as it can be, so that the result is a lower
/// bound: signatures are one byte per type, made before the clock starts;
/// one thread, so no locks and no atomics; one allocation (the interned
/// copy); records go into arenas reserved up front; trampolines are ready
/// made and free.
mod setup {
    use std::hash::BuildHasher;
    use std::hint::black_box;
    use std::time::Instant;

    use hashbrown::HashTable;
    use rustc_hash::FxBuildHasher;

    use super::measure;

    /// The least an exit stub records.
    struct ExitRec {
        _id: u32,
        _code: usize,
        _slots: (u32, u32),
    }

    /// The least a binding records (what tierbridge's trampolines read:
    /// thunk, dispatcher, context, function id, slot counts).
    struct BindRec {
        _thunk: usize,
        _dispatch: usize,
        _ctx: usize,
        _func: u64,
        _slots: (u32, u32),
    }

    /// The `n`-th signature of one of `measure`'s series, one byte per type:
    /// its parameters (digit `d` of `n` in base `base` is type `d`), then its
    /// result (type `base`). With base 3 that is
    /// `measure::fresh_known_shape_sig` (`i64`, `u64`, `ptr`, one class: the
    /// shapes are nearly all known); with base 9, `measure::fresh_shape_sig`
    /// (nine types of nine classes, and an `f64` result: every shape new).
    fn signature(n: u64, base: u64) -> Box<[u8]> {
        let mut v: Vec<u8> = measure::digits(n, base)
            .into_iter()
            .map(|d| d as u8)
            .collect();
        v.push(base as u8);
        v.into()
    }

    /// One round over `sigs`, from empty tables: ns per signature. `class`
    /// gives each type's class, which the shape key is made of; with `code`,
    /// a new shape's thunk (the template's bytes) is copied into fresh
    /// executable memory (made for this round and released after it).
    fn round(sigs: &[Box<[u8]>], class: fn(u8) -> u8, code: Option<&[u8]>) -> f64 {
        let n = sigs.len();
        let mut interned: HashTable<(u64, Box<[u8]>, u32)> = HashTable::new();
        let mut shapes: HashTable<(u64, Box<[u8]>, usize)> = HashTable::new();
        let mut exits: Vec<ExitRec> = Vec::with_capacity(n);
        let mut binds: Vec<BindRec> = Vec::with_capacity(n);
        let mut cells: Vec<u32> = vec![u32::MAX; n];
        let mut free: Vec<u32> = (0..n as u32).rev().collect();
        let mut slabs = code::Slabs::default();
        let t = Instant::now();
        for sig in sigs {
            let h = FxBuildHasher.hash_one(&sig[..]);
            let same = |e: &(u64, Box<[u8]>, u32)| e.0 == h && *e.1 == **sig;
            let id = match interned.find(h, same) {
                Some(e) => e.2,
                None => {
                    let id = interned.len() as u32;
                    interned.insert_unique(h, (h, sig.clone(), id), |e| e.0);
                    id
                }
            };
            // The shape key: one class per type, in a buffer on the stack.
            let mut key = [0u8; 64];
            let len = sig.len().min(64);
            for (k, &ty) in key.iter_mut().zip(&sig[..len]) {
                *k = class(ty);
            }
            let key = &key[..len];
            let kh = FxBuildHasher.hash_one(key);
            let code = match shapes.find(kh, |e| e.0 == kh && *e.1 == *key) {
                Some(e) => e.2,
                None => {
                    let code = match code {
                        Some(bytes) => slabs.install(bytes),
                        None => 0x1000 + shapes.len(),
                    };
                    shapes.insert_unique(kh, (kh, key.into(), code), |e| e.0);
                    code
                }
            };
            let slots = (sig.len() as u32 - 1, 1);
            exits.push(ExitRec {
                _id: id,
                _code: code,
                _slots: slots,
            });
            let trampoline = free.pop().expect("one per signature");
            binds.push(BindRec {
                _thunk: code,
                _dispatch: 0x2000,
                _ctx: 0x3000,
                _func: u64::from(id),
                _slots: slots,
            });
            cells[trampoline as usize] = binds.len() as u32 - 1;
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        black_box((&exits, &binds, &cells));
        ns
    }

    /// Prints the floor of `rounds` rounds per count of signatures.
    fn series(
        what: &str,
        base: u64,
        class: fn(u8) -> u8,
        code: Option<&[u8]>,
        counts: &[(u64, u64)],
    ) {
        println!("{what}:");
        for &(n, rounds) in counts {
            let times: Vec<f64> = (0..rounds)
                .map(|r| {
                    let sigs: Vec<Box<[u8]>> =
                        (r * n..(r + 1) * n).map(|k| signature(k, base)).collect();
                    round(&sigs, class, code)
                })
                .collect();
            let (lo, hi) = times
                .iter()
                .fold((f64::INFINITY, 0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
            println!(
                "  {n:>9} signatures            {:.0} ns each (median of {rounds}; {lo:.0}-{hi:.0})",
                measure::median(times)
            );
        }
    }

    pub fn run() {
        series(
            "a new signature (known shapes), least bookkeeping, one thread",
            3,
            |_| 0,
            None,
            &[(20_000, 5), (100_000, 5), (200_000, 5), (1_000_000, 3)],
        );
        if let Some(thunk) = code::template() {
            series(
                &format!(
                    "a new signature (new entry shape), the same bookkeeping and a \
                     {}-byte thunk copied into fresh executable memory",
                    thunk.len()
                ),
                9,
                |ty| ty,
                Some(thunk),
                &[(20_000, 5), (200_000, 3)],
            );
        }
    }

    /// Fresh executable memory, got as a generator that never maps memory
    /// writable and executable at once must get it on Linux when it does not
    /// flip pages with `mprotect` for every thunk (tierbridge's default
    /// strategy): 256 KiB slabs of an in-memory file, mapped read-write and
    /// read+execute, both views populated when mapped; code is copied in
    /// through the first, in 16-byte granules.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    mod code {
        const SLAB: usize = 256 * 1024;

        /// The thunk a new shape gets: the hand-written one for eight `i64`s.
        pub fn template() -> Option<&'static [u8]> {
            Some(crate::floor::thunk8_bytes())
        }

        /// The slabs of one round: (read-write view, read+execute view).
        #[derive(Default)]
        pub struct Slabs {
            maps: Vec<(*mut u8, *mut u8)>,
            used: usize,
        }

        impl Slabs {
            /// Copies `code` into fresh executable memory; its address.
            pub fn install(&mut self, code: &[u8]) -> usize {
                let size = code.len().next_multiple_of(16);
                assert!(size <= SLAB);
                if self.maps.is_empty() || self.used + size > SLAB {
                    self.maps.push(slab());
                    self.used = 0;
                }
                let (rw, rx) = *self.maps.last().expect("a slab was just made");
                // SAFETY: [used, used + size) of the read-write view is
                // inside the slab and not handed out before.
                unsafe {
                    std::ptr::copy_nonoverlapping(code.as_ptr(), rw.add(self.used), code.len())
                };
                let at = rx as usize + self.used;
                self.used += size;
                at
            }
        }

        impl Drop for Slabs {
            fn drop(&mut self) {
                for &(rw, rx) in &self.maps {
                    for view in [rw, rx] {
                        // SAFETY: each view is a SLAB-byte mapping made by
                        // `slab` and unmapped once, here.
                        unsafe { libc::munmap(view.cast(), SLAB) };
                    }
                }
            }
        }

        /// A new slab's two views.
        fn slab() -> (*mut u8, *mut u8) {
            // SAFETY: plain system calls on a file this function creates;
            // every result is checked.
            unsafe {
                let fd = libc::memfd_create(c"floor-code".as_ptr(), libc::MFD_CLOEXEC);
                assert!(fd >= 0, "memfd_create failed");
                assert_eq!(
                    libc::ftruncate(fd, SLAB as libc::off_t),
                    0,
                    "ftruncate failed"
                );
                let map = |prot| {
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        SLAB,
                        prot,
                        libc::MAP_SHARED | libc::MAP_POPULATE,
                        fd,
                        0,
                    );
                    assert_ne!(p, libc::MAP_FAILED, "mmap failed");
                    p.cast::<u8>()
                };
                let views = (
                    map(libc::PROT_READ | libc::PROT_WRITE),
                    map(libc::PROT_READ | libc::PROT_EXEC),
                );
                libc::close(fd);
                views
            }
        }
    }

    /// Elsewhere the new-shape floor is not measured.
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    mod code {
        pub fn template() -> Option<&'static [u8]> {
            None
        }

        #[derive(Default)]
        pub struct Slabs;

        impl Slabs {
            pub fn install(&mut self, _: &[u8]) -> usize {
                unreachable!("no template, no code")
            }
        }
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() != Some("setup") {
        #[cfg(target_arch = "x86_64")]
        floor::run();
        #[cfg(not(target_arch = "x86_64"))]
        println!("the call floor is x86-64 assembly");
    }
    setup::run();
}
