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
//!   the thunk directly (what writing code per binding would buy).
//!
//! Each is timed as the best of 5 runs of 10⁸ calls in a loop, like the direct
//! call it is compared with.

#[cfg(target_arch = "x86_64")]
mod floor {
    use std::arch::global_asm;
    use std::hint::black_box;
    use std::time::Instant;

    /// What the trampoline's cell points to: the thunk, the dispatcher.
    #[repr(C)]
    pub struct Binding {
        thunk: unsafe extern "C" fn(),
        dispatch: unsafe extern "C" fn(),
    }

    #[unsafe(no_mangle)]
    static FLOOR_BINDING: Binding = Binding {
        thunk: floor_thunk,
        dispatch: floor_dispatch,
    };

    #[unsafe(no_mangle)]
    static FLOOR_CELL: &Binding = &FLOOR_BINDING;

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
        "#
    );

    unsafe extern "C" {
        fn floor_exit(args: *const u64, target: extern "C" fn(i64, i64) -> i64) -> u64;
        fn floor_entry(a: i64, b: i64) -> i64;
        fn floor_entry_direct(a: i64, b: i64) -> i64;
        fn floor_thunk();
        fn floor_dispatch();
    }

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
        println!(
            "  exit floor (slots -> jmp)       {exit:.3} ns ({:.2}x)",
            exit / direct
        );
        println!(
            "  entry floor (trampoline, thunk) {entry:.3} ns ({:.2}x)",
            entry / direct
        );
        println!(
            "  entry, binding built into code  {entry_direct:.3} ns ({:.2}x)",
            entry_direct / direct
        );
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    floor::run();
    #[cfg(not(target_arch = "x86_64"))]
    println!("the floor measurement is x86-64 assembly");
}
