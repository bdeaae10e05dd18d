//! A program to look at in gdb: `main` sorts through an exit stub for C's
//! `qsort`, whose comparator is a host function reached through an entry
//! thunk; at its first comparison the comparator calls
//! `tierbridge_gdb_stop_here` through a second exit stub, and a breakpoint
//! there shows the whole stack:
//!
//! ```text
//! cargo build --example gdb_target
//! TIERBRIDGE_GDB=1 gdb -q -batch -ex 'break tierbridge_gdb_stop_here' -ex run -ex bt \
//!     target/debug/examples/gdb_target
//! ```
//!
//! With `TIERBRIDGE_GDB=1` gdb names the generated frames (`tierbridge exit
//! (i64,i64,i64,i64,i64,i64,i64,i64)->i64 sysv`, `tierbridge entry
//! (ptr,ptr)->i32 sysv`, `tierbridge exit (ptr,u64,u64,ptr)->void sysv`) and
//! unwinds through them down to `main`. Outside gdb it prints the sorted
//! numbers and exits.
//!
//! Both exit stubs here call their target and so keep a frame: the second
//! because two of its eight arguments go on the stack, the first because it
//! captures `errno` after the call. An exit stub whose arguments all travel
//! in registers jumps to its target instead, leaving no frame of its own
//! (gdb then shows its caller directly below the C function).

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tierbridge::abi::{CallConv, Signature};
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy, HostError};
use tierbridge::thunks::{BackendKind, Bridge, BridgeOptions};

/// Where gdb stops: called once, from the first comparison, through an exit
/// stub (eight arguments, two on the stack).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tierbridge_gdb_stop_here(
    a: i64,
    b: i64,
    c: i64,
    d: i64,
    e: i64,
    f: i64,
    g: i64,
    h: i64,
) -> i64 {
    std::hint::black_box(a + b + c + d + e + f + g + h)
}

#[inline(never)]
fn sort(bridge: &Bridge, v: &mut [i32]) {
    let conv = CallConv::host().expect("a supported host");
    let stop = bridge
        .exit_stub(
            &Signature::parse("(i64,i64,i64,i64,i64,i64,i64,i64)->i64").unwrap(),
            conv,
        )
        .expect("an exit stub");
    let stopped = Arc::new(AtomicBool::new(false));
    let host = move |call: EntryCall<'_>| -> Result<(), HostError> {
        // SAFETY: qsort passes pointers to two i32s of the array.
        let (a, b) = unsafe { (*(call.args[0] as *const i32), *(call.args[1] as *const i32)) };
        if !stopped.swap(true, Ordering::Relaxed) {
            let mut r = [0u64];
            // SAFETY: the function has this signature.
            unsafe {
                stop.call(
                    tierbridge_gdb_stop_here as *const c_void,
                    &[a as u64, b as u64, 3, 4, 5, 6, 7, 8],
                    &mut r,
                )
            }?;
            assert_eq!(r[0] as i64, i64::from(a) + i64::from(b) + 33);
        }
        call.ret[0] = (a.cmp(&b) as i32) as u32 as u64;
        Ok(())
    };
    let d = Dispatcher::from_host(Arc::new(host), FailurePolicy::Report);
    let cmp = bridge
        .entry_point(&Signature::parse("(ptr,ptr)->i32").unwrap(), conv, &d, 0)
        .expect("an entry point");
    let sort = bridge
        .exit_stub(&Signature::parse("(ptr,u64,u64,ptr)->void").unwrap(), conv)
        .expect("an exit stub");
    let args = [
        v.as_mut_ptr() as u64,
        v.len() as u64,
        4,
        cmp.code_ptr() as u64,
    ];
    // SAFETY: qsort has this signature; the comparator is an entry point of
    // the comparator's signature, alive during the call.
    unsafe { sort.call_capture_errno(libc::qsort as *const c_void, &args, &mut [], 0) }
        .expect("the call");
}

fn main() {
    let bridge = Bridge::with_options(BridgeOptions {
        backend: BackendKind::Generated,
        ..BridgeOptions::default()
    })
    .expect("a bridge");
    if bridge.kind() != BackendKind::Generated {
        eprintln!("no generated code on this machine: nothing for gdb to see");
        std::process::exit(2);
    }
    let mut v: Vec<i32> = (0..16).map(|i| (i * 7) % 16).collect();
    sort(&bridge, &mut v);
    println!("{v:?}");
}
