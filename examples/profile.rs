//! A fixed number of calls through one path, for instruction counts:
//! `valgrind --tool=callgrind target/release/examples/profile <exit|entry|direct> [calls] [libffi]`.

use std::ffi::c_void;
use std::hint::black_box;
use std::sync::Arc;

use tierbridge::abi::CallConv;
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy, HostError};
use tierbridge::thunks::{BackendKind, Bridge};

extern "C" fn add_i64(a: i64, b: i64) -> i64 {
    a.wrapping_add(b)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "exit".into());
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let kind = if args.next().as_deref() == Some("libffi") {
        BackendKind::Libffi
    } else {
        BackendKind::Generated
    };
    let b = Bridge::new(kind).unwrap();
    let sig = "(i64,i64)->i64".parse().unwrap();
    let mut acc = 0u64;
    match mode.as_str() {
        "direct" => {
            for i in 0..n {
                acc = acc.wrapping_add(black_box(add_i64 as extern "C" fn(i64, i64) -> i64)(
                    i as i64, 1,
                ) as u64);
            }
        }
        "exit" => {
            let stub = b.exit_stub(&sig, CallConv::SysV).unwrap();
            let mut ret = [0u64];
            for i in 0..n {
                // SAFETY: add_i64 has this signature.
                unsafe { stub.call(black_box(add_i64 as *const c_void), &[i, 1], &mut ret) }
                    .unwrap();
                acc = acc.wrapping_add(ret[0]);
            }
        }
        _ => {
            let h = |c: EntryCall<'_>| -> Result<(), HostError> {
                c.ret[0] = c.args[0].wrapping_add(c.args[1]);
                Ok(())
            };
            let d = Dispatcher::from_host(Arc::new(h), FailurePolicy::Report);
            let ep = b.entry_point(&sig, CallConv::SysV, &d, 0).unwrap();
            // SAFETY: the entry point has this signature and outlives the loop.
            let f: extern "C" fn(i64, i64) -> i64 = unsafe { ep.as_fn() };
            for i in 0..n {
                acc = acc.wrapping_add(black_box(f)(i as i64, 1) as u64);
            }
        }
    }
    println!("{acc}");
}
