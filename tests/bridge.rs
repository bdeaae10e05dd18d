//! The libffi backend through the public API: Rust and C on the native side,
//! both conventions, the host contract's failure policies, and bad input.

mod support;

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tierbridge::abi::{AbiError, CallConv, Signature};
use tierbridge::host::{
    Dispatcher, EntryCall, EntryError, FailurePolicy, HostError, STATUS_ERROR, STATUS_OK,
    pending_entry_status,
};
use tierbridge::thunks::{BackendKind, Bridge, ThunkError, Value};

fn sig(s: &str) -> Signature {
    Signature::parse(s).unwrap()
}

fn host<F>(f: F, policy: FailurePolicy) -> Dispatcher
where
    F: Fn(EntryCall<'_>) -> Result<(), HostError> + Send + Sync + 'static,
{
    Dispatcher::from_host(Arc::new(f), policy)
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
struct Pair {
    a: f32,
    b: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
struct Big {
    a: i64,
    b: f64,
    c: i32,
}

extern "win64" fn win_mix(a: i8, b: f32, c: i64, d: f64, e: u16, f: f32, p: Pair, g: Big) -> f64 {
    a as f64
        + b as f64 * 2.0
        + c as f64 * 4.0
        + d * 8.0
        + e as f64 * 16.0
        + f as f64 * 32.0
        + p.a as f64 * 64.0
        + p.b as f64 * 128.0
        + g.a as f64 * 256.0
        + g.b * 512.0
        + g.c as f64 * 1024.0
}

extern "win64" fn win_make_big(x: i32, y: f64) -> Big {
    Big {
        a: x as i64 * 3,
        b: y / 2.0,
        c: -x,
    }
}

extern "win64" fn win_make_pair(x: f32) -> Pair {
    Pair { a: x, b: -x }
}

fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: reading the bytes of a plain #[repr(C)] value without padding holes
    // that matter (padding bytes are copied as they are, never interpreted).
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }.to_vec()
}

/// Asking for the generated backend gives it where this build generates code;
/// in a build without code generation (`--cfg tierbridge_no_codegen`, as on
/// another CPU) a working libffi bridge that says why, with any memory
/// strategy, and no code memory for tier tables.
#[test]
fn the_generated_backend_is_given_where_code_is_generated_and_libffi_says_why_elsewhere() {
    use tierbridge::thunks::{BridgeOptions, ExecStrategy};
    use tierbridge::tier::{CodeMemory, TierError};
    let mut bridges = vec![Bridge::new(BackendKind::Generated).unwrap()];
    for exec in [ExecStrategy::DualMapping, ExecStrategy::WriteThenProtect] {
        let options = BridgeOptions {
            backend: BackendKind::Generated,
            exec: Some(exec),
            ..BridgeOptions::default()
        };
        bridges.push(Bridge::with_options(options).unwrap());
    }
    for b in bridges {
        if cfg!(tierbridge_codegen) {
            assert_eq!(b.kind(), BackendKind::Generated);
            assert_eq!(b.fallback_reason(), None);
            assert!(b.exec_strategy().is_some());
            assert!(CodeMemory::of(&b).is_ok());
        } else {
            assert_eq!(b.kind(), BackendKind::Libffi);
            let why = b.fallback_reason().expect("a reason");
            let cause = if cfg!(target_arch = "x86_64") {
                "compiled out (--cfg tierbridge_no_codegen)"
            } else {
                "needs an x86-64 CPU"
            };
            assert!(why.contains(cause), "{why}");
            assert_eq!(b.exec_strategy(), None);
            match CodeMemory::of(&b) {
                Err(TierError::NoCodeMemory { reason }) => assert_eq!(reason, why),
                other => panic!("{other:?}"),
            }
        }
        // Either way the bridge calls.
        let s = b.exit_stub(&sig("(i32,i8)->i64"), CallConv::SysV).unwrap();
        extern "C" fn add(a: i32, b: i8) -> i64 {
            i64::from(a) + i64::from(b)
        }
        let mut ret = [0u64];
        // SAFETY: `add` has the stub's signature.
        unsafe { s.call(add as *const c_void, &[40, (-2i64) as u64], &mut ret) }.unwrap();
        assert_eq!(ret[0] as i64, 38);
    }
}

#[test]
fn exit_stubs_call_rust_win64_functions_with_integer_aggregates_by_reference_structs_and_sret() {
    for (name, b) in support::all_bridges() {
        eprintln!("{name}");
        win64_rust_functions(&b);
    }
}

fn win64_rust_functions(b: &Bridge) {
    let s = b
        .exit_stub(
            &sig("(i8,f32,i64,f64,u16,f32,{f32,f32},{i64,f64,i32})->f64"),
            CallConv::Win64,
        )
        .unwrap();
    let (p, g) = (
        Pair { a: 1.5, b: -2.0 },
        Big {
            a: -7,
            b: 0.25,
            c: 9,
        },
    );
    let args = [
        Value::I8(-3),
        Value::F32(0.5),
        Value::I64(1 << 40),
        Value::F64(-1.25),
        Value::U16(65535),
        Value::F32(3.0),
        Value::Struct(bytes_of(&p)),
        Value::Struct(bytes_of(&g)),
    ];
    // SAFETY: win_mix has exactly this Win64 signature.
    let got = unsafe { s.call_values(win_mix as *const c_void, &args) }.unwrap();
    assert_eq!(
        got,
        Value::F64(win_mix(-3, 0.5, 1 << 40, -1.25, 65535, 3.0, p, g))
    );

    let s = b
        .exit_stub(&sig("(i32,f64)->{i64,f64,i32}"), CallConv::Win64)
        .unwrap();
    // SAFETY: win_make_big has this signature; its 24-byte result comes through rcx.
    let got = unsafe {
        s.call_values(
            win_make_big as *const c_void,
            &[Value::I32(11), Value::F64(5.0)],
        )
    }
    .unwrap();
    let Value::Struct(bytes) = got else { panic!() };
    let want = win_make_big(11, 5.0);
    assert_eq!(&bytes[..20], &bytes_of(&want)[..20]);

    let s = b
        .exit_stub(&sig("(f32)->{f32,f32}"), CallConv::Win64)
        .unwrap();
    // SAFETY: win_make_pair has this signature; an 8-byte struct comes back in rax.
    let got = unsafe { s.call_values(win_make_pair as *const c_void, &[Value::F32(4.5)]) }.unwrap();
    assert_eq!(got, Value::Struct(bytes_of(&Pair { a: 4.5, b: -4.5 })));
}

#[test]
fn an_entry_point_called_through_an_exit_stub_sees_every_scalar_extended_as_its_type_says() {
    // Every pairing of backends: each side checks the other.
    for (xn, x) in support::all_bridges() {
        for (en, e) in support::all_bridges() {
            eprintln!("exit {xn} -> entry {en}");
            every_scalar(&x, &e);
        }
    }
}

fn every_scalar(xb: &Bridge, b: &Bridge) {
    let text = "(i8,u8,i16,u16,i32,u32,i64,u64,bool,f32,f64,ptr)->i16";
    for conv in CallConv::ALL {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let d = host(
            move |c| {
                *s2.lock().unwrap() = c.args.to_vec();
                c.ret[0] = 0xdead_beef_0000_8001; // only the low 16 bits count: -32767
                Ok(())
            },
            FailurePolicy::Report,
        );
        let ep = b.entry_point(&sig(text), conv, &d, 7).unwrap();
        let exit = xb.exit_stub(&sig(text), conv).unwrap();
        let args = [
            Value::I8(-1),
            Value::U8(0xAA),
            Value::I16(-2),
            Value::U16(0x55AA),
            Value::I32(-3),
            Value::U32(0xAA55_AA55),
            Value::I64(-4),
            Value::U64(u64::MAX),
            Value::Bool(true),
            Value::F32(f32::from_bits(0x7fa0_0001)), // a signalling NaN, carried bit-exactly
            Value::F64(-0.0),
            Value::Ptr(0x1234 as *const c_void),
        ];
        // SAFETY: the entry point has exactly this signature and convention.
        let r = unsafe { exit.call_values(ep.code_ptr(), &args) }.unwrap();
        assert_eq!(r, Value::I16(-32767));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                u64::MAX,
                0xAA,
                (-2i64) as u64,
                0x55AA,
                (-3i64) as u64,
                0xAA55_AA55,
                (-4i64) as u64,
                u64::MAX,
                1,
                0x7fa0_0001,
                (-0.0f64).to_bits(),
                0x1234
            ],
            "{conv}"
        );
    }
}

/// `sample_apply_nested(f, x, y)` returns `f(f(x, y), x)`: C code between the
/// interpreter's exit call and the failing callback.
fn apply_nested(b: &Bridge, d: &Dispatcher) -> Result<i32, ThunkError> {
    let (so, _) = support::sample_library();
    let lib = support::Lib::open(&so);
    let ep = b
        .entry_point(&sig("(i32,i32)->i32"), CallConv::SysV, d, 1)
        .unwrap();
    let exit = b
        .exit_stub(&sig("(ptr,i32,i32)->i32"), CallConv::SysV)
        .unwrap();
    let mut ret = [0u64];
    // SAFETY: sample_apply_nested has this signature and calls the entry point twice.
    unsafe {
        exit.call(
            lib.addr("sample_apply_nested"),
            &[ep.code_ptr() as u64, 6, 7],
            &mut ret,
        )
    }?;
    Ok(ret[0] as i32)
}

#[test]
fn a_host_error_reaches_the_interpreter_after_the_c_caller_returns() {
    for (name, b) in support::all_bridges() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c2 = calls.clone();
        let d = host(
            move |c| {
                if c2.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err("first call refused".into());
                }
                c.ret[0] = (c.args[0] as i32 - c.args[1] as i32) as i64 as u64;
                Ok(())
            },
            FailurePolicy::Report,
        );
        match apply_nested(&b, &d) {
            Err(ThunkError::Callback(EntryError::Host { func: 1, error })) => {
                assert_eq!(error.to_string(), "first call refused")
            }
            other => panic!("{name}: expected the callback's error, got {other:?}"),
        }
        // C carried on with a zeroed result: f(0, 6) ran as the second call.
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{name}");
        let again = apply_nested(&b, &d).unwrap();
        assert_eq!(again, (6 - 7) - 6, "{name}: a later call is not affected");
    }
}

#[test]
fn a_panicking_host_becomes_an_error_not_an_unwind_through_c() {
    let d = host(|_| panic!("host blew up"), FailurePolicy::Report);
    for (name, b) in support::all_bridges() {
        match apply_nested(&b, &d) {
            Err(ThunkError::Callback(EntryError::Panic { message, .. })) => {
                assert_eq!(message, "host blew up")
            }
            other => panic!("{name}: expected the panic as an error, got {other:?}"),
        }
    }
}

#[test]
fn native_code_can_see_that_a_callback_failed() {
    let so = support::compile_so(
        "status_fixture",
        "#include <stdint.h>\n\
         uint32_t call_then_status(int64_t (*cb)(int64_t), uint32_t (*status)(void), int64_t *out) {\n\
           *out = cb(5); return status(); }\n",
    );
    let lib = support::Lib::open(&so);
    for (name, b) in support::all_bridges() {
        let exit = b
            .exit_stub(&sig("(ptr,ptr,ptr)->u32"), CallConv::SysV)
            .unwrap();
        for (fail, want_status) in [(false, STATUS_OK), (true, STATUS_ERROR)] {
            let d = host(
                move |c| {
                    if fail {
                        return Err("no".into());
                    }
                    c.ret[0] = c.args[0] * 10;
                    Ok(())
                },
                FailurePolicy::Report,
            );
            let ep = b
                .entry_point(&sig("(i64)->i64"), CallConv::SysV, &d, 0)
                .unwrap();
            let mut out = 0i64;
            let mut ret = [0u64];
            let status_fn = pending_entry_status as *const () as u64;
            let args = [ep.code_ptr() as u64, status_fn, &mut out as *mut i64 as u64];
            // SAFETY: call_then_status has this signature; all three pointers are valid.
            let r = unsafe { exit.call(lib.addr("call_then_status"), &args, &mut ret) };
            assert_eq!(ret[0] as u32, want_status, "{name}");
            assert_eq!(out, if fail { 0 } else { 50 }, "{name}");
            assert_eq!(r.is_err(), fail, "{name}");
        }
    }
}

/// Runs the ignored test `name` of this binary in a child process, on bridge
/// number `backend` of `all_bridges`, and returns its status and stderr.
fn run_child(name: &str, backend: usize) -> (std::process::ExitStatus, String) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TIERBRIDGE_CHILD", backend.to_string())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn abort_child(fail: fn(EntryCall<'_>) -> Result<(), HostError>) {
    // Only meaningful in the child process started by run_child.
    let Some(backend) = std::env::var("TIERBRIDGE_CHILD")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return;
    };
    let d = host(fail, FailurePolicy::Abort);
    let (_, b) = support::all_bridges().swap_remove(backend);
    let _ = apply_nested(&b, &d);
    eprintln!("child survived");
}

#[test]
#[ignore = "run as a child process by the_abort_policy_aborts_*"]
fn child_host_error_under_abort() {
    abort_child(|_| Err("fatal host error".into()));
}

#[test]
#[ignore = "run as a child process by the_abort_policy_aborts_*"]
fn child_host_panic_under_abort() {
    abort_child(|_| panic!("fatal host panic"));
}

#[cfg(unix)]
#[test]
fn the_abort_policy_aborts_the_process_on_a_host_error_or_panic() {
    use std::os::unix::process::ExitStatusExt;
    for backend in 0..support::all_bridges().len() {
        for (child, message) in [
            ("child_host_error_under_abort", "fatal host error"),
            ("child_host_panic_under_abort", "fatal host panic"),
        ] {
            let (status, stderr) = run_child(child, backend);
            let what = format!("{child} on bridge {backend}; stderr:\n{stderr}");
            assert_eq!(status.signal(), Some(6), "should die of SIGABRT: {what}");
            assert!(
                stderr.contains("tierbridge: aborting") && stderr.contains(message),
                "{what}"
            );
            assert!(!stderr.contains("child survived"), "{what}");
        }
    }
}

/// Needs generated code (the promise is the generated backend's).
#[test]
#[cfg(tierbridge_codegen)]
#[ignore = "run as a child process by a_dropped_generated_entry_point_aborts_instead_of_running_freed_memory"]
fn child_calls_a_dropped_entry_point() {
    if std::env::var_os("TIERBRIDGE_CHILD").is_none() {
        return;
    }
    let b = support::generated();
    let d = host(
        |c| {
            c.ret[0] = 1;
            Ok(())
        },
        FailurePolicy::Report,
    );
    let ep = b
        .entry_point(&sig("(i64)->i64"), CallConv::SysV, &d, 0)
        .unwrap();
    let stale = ep.code_ptr();
    drop(ep);
    let exit = b.exit_stub(&sig("(i64)->i64"), CallConv::SysV).unwrap();
    // SAFETY: deliberately calling a dropped entry point: the documented outcome
    // on the generated backend is an abort with a message.
    let _ = unsafe { exit.call(stale, &[1], &mut [0]) };
    eprintln!("child survived");
}

/// Needs generated code (the promise is the generated backend's).
#[cfg(all(unix, tierbridge_codegen))]
#[test]
fn a_dropped_generated_entry_point_aborts_instead_of_running_freed_memory() {
    use std::os::unix::process::ExitStatusExt;
    let (status, stderr) = run_child("child_calls_a_dropped_entry_point", 0);
    assert_eq!(status.signal(), Some(6), "stderr:\n{stderr}");
    assert!(
        stderr.contains("called a dropped entry point (fn id 0, signature (i64)->i64, sysv)"),
        "{stderr}"
    );
    assert!(!stderr.contains("child survived"));
}

#[test]
fn bad_calls_are_typed_errors() {
    for (name, b) in support::all_bridges() {
        let s = b.exit_stub(&sig("(i32,f64)->i32"), CallConv::SysV).unwrap();
        let f = win_mix as *const c_void;
        // SAFETY: none of these calls reaches native code: each fails its checks first.
        unsafe {
            let null = s.call(std::ptr::null(), &[1, 2], &mut [0]);
            assert!(matches!(null, Err(ThunkError::NullTarget)), "{name}");
            let few = s.call(f, &[1], &mut [0]);
            assert!(
                matches!(
                    few,
                    Err(ThunkError::ArgCount {
                        expected: 2,
                        got: 1,
                        ..
                    })
                ),
                "{name}"
            );
            let no_room = s.call(f, &[1, 2], &mut []);
            assert!(
                matches!(
                    no_room,
                    Err(ThunkError::RetSlots {
                        expected: 1,
                        got: 0,
                        ..
                    })
                ),
                "{name}"
            );
            let typed = s.call_values(f, &[Value::I32(1), Value::F32(2.0)]);
            assert!(
                matches!(typed, Err(ThunkError::ArgType { index: 1, .. })),
                "{name}"
            );
            let count = s.call_values(f, &[Value::I32(1)]);
            assert!(matches!(count, Err(ThunkError::ArgCount { .. })), "{name}");
        }
        let d = host(|_| Ok(()), FailurePolicy::Report);
        let call_site = sig("(i32,...)->void")
            .with_varargs(&[tierbridge::abi::Scalar::I64.into()])
            .unwrap();
        let e = b.entry_point(&call_site, CallConv::SysV, &d, 0);
        assert!(matches!(e, Err(ThunkError::Unsupported { .. })), "{name}");
        // Packed structs: libffi cannot describe them; generated code can.
        let packed = b.exit_stub(&sig("(packed{u8,u32})->void"), CallConv::SysV);
        match b.kind() {
            BackendKind::Libffi => assert!(
                matches!(
                    packed,
                    Err(ThunkError::Unsupported {
                        backend: BackendKind::Libffi,
                        ..
                    })
                ),
                "{name}"
            ),
            _ => assert!(packed.is_ok(), "{name}"),
        }
    }
    let nested = "(".to_owned() + &"{".repeat(20) + "i32" + &"}".repeat(20) + ")->void";
    assert!(matches!(
        Signature::parse(&nested).map_err(ThunkError::from),
        Err(ThunkError::Abi(AbiError::NestingTooDeep { .. }))
    ));
    let forced = "no-such-strategy".parse::<tierbridge::thunks::ExecStrategy>();
    assert!(forced.is_err());
}

unsafe extern "C" {
    fn close(fd: i32) -> i32;
}

#[test]
fn errno_is_captured_right_after_the_native_call() {
    extern "C" fn ident(x: i32) -> i32 {
        x
    }
    for (name, b) in support::all_bridges() {
        let s = b.exit_stub(&sig("(i32)->i32"), CallConv::SysV).unwrap();
        let mut ret = [0u64];
        let bad_fd = [(-1i64) as u64];
        // SAFETY: close(-1) only fails with EBADF.
        let errno =
            unsafe { s.call_capture_errno(close as *const c_void, &bad_fd, &mut ret, 12345) };
        assert_eq!((ret[0] as i32, errno.unwrap()), (-1, 9), "{name}");
        // A callee that leaves errno alone: the value set before the call comes back.
        // SAFETY: ident has this signature.
        let errno = unsafe { s.call_capture_errno(ident as *const c_void, &[4], &mut ret, 12345) };
        assert_eq!((ret[0], errno.unwrap()), (4, 12345), "{name}");
    }
}

#[test]
fn exit_stubs_are_cached_per_shape() {
    for (_, b) in support::all_bridges() {
        let x = b.exit_stub(&sig("(i64,i64)->i64"), CallConv::SysV).unwrap();
        let y = b
            .exit_stub(&sig("( i64 , i64 ) -> i64"), CallConv::SysV)
            .unwrap();
        assert_eq!(x.sig_id(), y.sig_id());
        let z = b.exit_stub(&sig("(i64,i64)->i32"), CallConv::SysV).unwrap();
        assert_ne!(x.sig_id(), z.sig_id());
    }
}

#[test]
fn prepared_signatures_call_and_bind_as_unprepared_ones_do() {
    // `prepare` returns the signature's exit stub (the one `exit_stub`
    // gives) and readies its entry thunk; binding afterwards still gives a
    // working entry point. Each bridge meets these shapes here first, so
    // `prepare` is what makes their code.
    extern "C" fn weigh(a: i8, b: f64, p: Pair, c: u16) -> f64 {
        a as f64 + b * 2.0 + p.a as f64 * 4.0 + p.b as f64 * 8.0 + c as f64 * 16.0
    }
    for (name, b) in support::all_bridges() {
        let s = sig("(i8,f64,{f32,f32},u16)->f64");
        let stub = b.prepare(&s, CallConv::SysV).unwrap();
        assert_eq!(
            stub.sig_id(),
            b.exit_stub(&s, CallConv::SysV).unwrap().sig_id()
        );
        let pair = u64::from(1.5f32.to_bits()) | u64::from((-2.25f32).to_bits()) << 32;
        let args = [(-3i64) as u64, 0.5f64.to_bits(), pair, 7];
        // -3 + 0.5*2 + 1.5*4 - 2.25*8 + 7*16 = 98.
        let mut ret = [0u64];
        // SAFETY: weigh has this signature.
        unsafe { stub.call(weigh as *const c_void, &args, &mut ret) }.unwrap();
        assert_eq!(f64::from_bits(ret[0]), 98.0, "{name}: to C");
        let d = host(
            |c| {
                let p = c.args[2];
                let w = c.args[0] as i8 as f64
                    + f64::from_bits(c.args[1]) * 2.0
                    + f32::from_bits(p as u32) as f64 * 4.0
                    + f32::from_bits((p >> 32) as u32) as f64 * 8.0
                    + c.args[3] as u16 as f64 * 16.0;
                c.ret[0] = w.to_bits();
                Ok(())
            },
            FailurePolicy::Report,
        );
        let ep = b.entry_point(&s, CallConv::SysV, &d, 0).unwrap();
        // SAFETY: the entry point has the stub's signature.
        unsafe { stub.call(ep.code_ptr(), &args, &mut ret) }.unwrap();
        assert_eq!(f64::from_bits(ret[0]), 98.0, "{name}: to the host");

        // Declared variadic: the entry point reads its variadic arguments.
        let declared = sig("(i16,...)->i64");
        b.prepare(&declared, CallConv::SysV).unwrap();
        let d = host(
            |c| {
                let mut va = c.varargs.expect("variadic");
                let (x, y) = (va.next_i64().unwrap(), va.next_f64().unwrap());
                c.ret[0] = (c.args[0] as i16 as i64 * 100 + x + y as i64) as u64;
                Ok(())
            },
            FailurePolicy::Report,
        );
        let ep = b.entry_point(&declared, CallConv::SysV, &d, 0).unwrap();
        // SAFETY: a variadic function of this declared signature.
        let f: unsafe extern "C" fn(i16, ...) -> i64 = unsafe { ep.as_fn() };
        // SAFETY: as above; an i64 and a double passed.
        assert_eq!(unsafe { f(-2, 30i64, 4.0f64) }, -166, "{name}: variadic");

        // A call site has no entry thunk: prepare makes its stub only, and
        // binding it is still refused.
        let call_site = declared
            .with_varargs(&[tierbridge::abi::Scalar::I64.into()])
            .unwrap();
        let stub = b.prepare(&call_site, CallConv::SysV).unwrap();
        assert_eq!(stub.signature(), &call_site, "{name}");
        assert!(matches!(
            b.entry_point(&call_site, CallConv::SysV, &d, 0),
            Err(ThunkError::Unsupported { .. })
        ));
    }
}

#[test]
fn exit_stubs_and_entry_points_outlive_their_bridge() {
    // Stubs and entry points made by a bridge, and clones of them, keep
    // working after the bridge is dropped: one stub with a register path,
    // one with stack arguments, each calling an entry point.
    for (name, b) in support::all_bridges() {
        let two = sig("(i64,i64)->i64");
        let ten = sig("(i64,i64,i64,i64,i64,i64,i64,i64,i64,i64)->i64");
        let x2 = b.exit_stub(&two, CallConv::SysV).unwrap();
        let x10 = b.exit_stub(&ten, CallConv::SysV).unwrap();
        let x10_clone = x10.clone();
        // Function 0 reads its two arguments as digits, function 1 weighs
        // each of its ten by its position: a swapped or shifted argument
        // changes the result.
        let d = host(
            |c| {
                c.ret[0] = match c.func.0 {
                    0 => c.args[0] * 100 + c.args[1],
                    _ => (1..).zip(c.args).map(|(k, x)| k * x).sum(),
                };
                Ok(())
            },
            FailurePolicy::Report,
        );
        let ep2 = b.entry_point(&two, CallConv::SysV, &d, 0).unwrap();
        let ep10 = b.entry_point(&ten, CallConv::SysV, &d, 1).unwrap();
        drop(b);
        drop(x10);
        let mut ret = [0u64];
        // SAFETY: the entry point has the stub's signature.
        unsafe { x2.call(ep2.code_ptr(), &[3, 4], &mut ret) }.unwrap();
        assert_eq!(ret[0], 304, "{name}");
        let args: Vec<u64> = (1..=10).collect();
        // SAFETY: as above.
        unsafe { x10_clone.call(ep10.code_ptr(), &args, &mut ret) }.unwrap();
        // 1*1 + 2*2 + ... + 10*10 = 385.
        assert_eq!(ret[0], 385, "{name}");
    }
}

#[test]
fn dropped_entry_points_release_their_host_and_their_trampolines_are_reused_correctly() {
    // 300 bindings span several blocks of trampolines (128 each on the
    // generated backend); after dropping them all (into quarantine), 300
    // more are bound, each reaching its own function. (Trampolines are
    // bound again once out of quarantine: tests/quarantine.rs.)
    for (name, b) in support::all_bridges() {
        let s = sig("(i64)->i64");
        let exit = b.exit_stub(&s, CallConv::SysV).unwrap();
        let f = Arc::new(|c: EntryCall<'_>| -> Result<(), HostError> {
            c.ret[0] = c.args[0].wrapping_add(c.func.0 * 1000);
            Ok(())
        });
        let call = |code: *const c_void, x: u64| {
            let mut ret = [0u64];
            // SAFETY: every entry point here has this signature.
            unsafe { exit.call(code, &[x], &mut ret) }.unwrap();
            ret[0]
        };
        for round in 0..2u64 {
            let d = Dispatcher::from_host(f.clone(), FailurePolicy::Report);
            let eps: Vec<_> = (0..300u64)
                .map(|i| b.entry_point(&s, CallConv::SysV, &d, i + round).unwrap())
                .collect();
            for (i, ep) in eps.iter().enumerate() {
                let i = i as u64;
                assert_eq!(call(ep.code_ptr(), 7), 7 + (i + round) * 1000, "{name}");
            }
            drop(d);
            assert_eq!(Arc::strong_count(&f), 301, "{name}: one per binding");
            drop(eps);
            assert_eq!(Arc::strong_count(&f), 1, "{name}: bindings released");
        }
    }
}

/// A host that binds and drops an entry point of its own bridge when it is
/// dropped (as an interpreter that owns entry points would).
struct BindsWhenDropped {
    bridge: Arc<Bridge>,
    dropped: Arc<AtomicUsize>,
}

impl tierbridge::host::Host for BindsWhenDropped {
    fn call(&self, _: EntryCall<'_>) -> Result<(), HostError> {
        Ok(())
    }
}

impl Drop for BindsWhenDropped {
    fn drop(&mut self) {
        let d = host(|_| Ok(()), FailurePolicy::Report);
        let ep = self
            .bridge
            .entry_point(&sig("()->void"), CallConv::SysV, &d, 0)
            .unwrap();
        drop(ep);
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_host_dropped_with_its_last_entry_point_can_bind_and_drop_entry_points() {
    for (name, b) in support::all_bridges() {
        let b = Arc::new(b);
        let dropped = Arc::new(AtomicUsize::new(0));
        let (done, wait) = std::sync::mpsc::channel();
        let (b2, dropped2) = (b.clone(), dropped.clone());
        // In a thread of its own, so that a deadlock fails the test instead
        // of hanging it.
        std::thread::spawn(move || {
            let d = Dispatcher::from_host(
                Arc::new(BindsWhenDropped {
                    bridge: b2.clone(),
                    dropped: dropped2,
                }),
                FailurePolicy::Report,
            );
            let ep = b2
                .entry_point(&sig("(i64)->i64"), CallConv::SysV, &d, 1)
                .unwrap();
            drop(d);
            drop(ep); // the host's last reference
            done.send(()).unwrap();
        });
        wait.recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{name}: dropping the entry point did not return"));
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "{name}");
    }
}

#[test]
fn eight_threads_create_call_and_drop_entry_points() {
    for (name, b) in support::all_bridges() {
        let b = Arc::new(b);
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let s = sig("(i64,i32)->i64");
                    let exit = b.exit_stub(&s, CallConv::SysV).unwrap();
                    for i in 0..200u64 {
                        let d = host(
                            move |c| {
                                c.ret[0] = c.args[0].wrapping_mul(t + 1).wrapping_add(c.args[1]);
                                Ok(())
                            },
                            FailurePolicy::Report,
                        );
                        let ep = b.entry_point(&s, CallConv::SysV, &d, i).unwrap();
                        let mut ret = [0u64];
                        // SAFETY: the entry point has this signature.
                        unsafe { exit.call(ep.code_ptr(), &[i, (-1i64) as u64], &mut ret) }
                            .unwrap();
                        assert_eq!(ret[0], (i * (t + 1)).wrapping_sub(1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join()
                .unwrap_or_else(|_| panic!("{name}: a thread failed"));
        }
    }
}

#[test]
fn the_variadic_cursor_stops_instead_of_reading_the_whole_stack() {
    for (name, b) in support::all_bridges() {
        let count = Arc::new(AtomicUsize::new(0));
        let c2 = count.clone();
        let d = host(
            move |c| {
                let mut va = c.varargs.expect("variadic");
                let mut n = 0;
                while va.next_f64().is_some() {
                    n += 1;
                }
                c2.store(n, Ordering::SeqCst);
                Ok(())
            },
            FailurePolicy::Report,
        );
        let ep = b
            .entry_point(&sig("(i32,...)->void"), CallConv::SysV, &d, 0)
            .unwrap();
        let exit = b
            .exit_stub(&sig("(i32,...)->void"), CallConv::SysV)
            .unwrap();
        // SAFETY: a variadic entry point called with no variadic argument.
        unsafe { exit.call(ep.code_ptr(), &[0], &mut []) }.unwrap();
        // 8 vector registers, then at most MAX_VA_STACK_SLOTS stack slots.
        let max = 8 + tierbridge::host::MAX_VA_STACK_SLOTS as usize;
        assert_eq!(count.load(Ordering::SeqCst), max, "{name}");
    }
}

#[test]
fn unchecked_calls_run_the_stub_and_leave_callback_failures_pending() {
    extern "C" fn mul(a: i64, b: i32) -> i64 {
        a * i64::from(b)
    }
    for (name, b) in support::all_bridges() {
        let s = b.exit_stub(&sig("(i64,i32)->i64"), CallConv::SysV).unwrap();
        let args = [7u64, (-3i64) as u64];
        let mut ret = [0u64];
        // SAFETY: mul has this signature; 2 argument slots, 1 result slot.
        unsafe { s.call_unchecked(mul as *const c_void, args.as_ptr(), ret.as_mut_ptr()) };
        assert_eq!(ret[0] as i64, -21, "{name}");
        let d = host(|_| Err("refused".into()), FailurePolicy::Report);
        let ep = b
            .entry_point(&sig("(i64,i32)->i64"), CallConv::SysV, &d, 3)
            .unwrap();
        // SAFETY: as above, through the entry point.
        unsafe { s.call_unchecked(ep.code_ptr(), args.as_ptr(), ret.as_mut_ptr()) };
        assert_eq!(ret[0], 0, "{name}: the failed callback's result is zero");
        match tierbridge::host::take_entry_error() {
            Some(EntryError::Host { func: 3, error }) => assert_eq!(error.to_string(), "refused"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn a_failure_nobody_took_is_not_reported_by_the_next_exit_call() {
    extern "C" fn mul(a: i64, b: i32) -> i64 {
        a * i64::from(b)
    }
    let s_ = sig("(i64,i32)->i64");
    for (name, b) in support::all_bridges() {
        let d = host(|_| Err("refused".into()), FailurePolicy::Report);
        let stale = b.entry_point(&s_, CallConv::SysV, &d, 1).unwrap();
        let fresh = b.entry_point(&s_, CallConv::SysV, &d, 2).unwrap();
        // Native code calls a callback on its own (no exit call around it),
        // and it fails: the failure waits for the host...
        // SAFETY: the entry point has this signature.
        let f: extern "C" fn(i64, i32) -> i64 = unsafe { stale.as_fn() };
        assert_eq!(f(7, 3), 0, "{name}");
        assert_eq!(pending_entry_status(), STATUS_ERROR, "{name}");
        // ...but an exit call that begins after it is not answerable for it.
        let x = b.exit_stub(&s_, CallConv::SysV).unwrap();
        let mut ret = [0u64];
        // SAFETY: mul has this signature; 2 argument slots, 1 result slot.
        let ok = unsafe { x.call(mul as *const c_void, &[7, (-3i64) as u64], &mut ret) };
        assert!(ok.is_ok(), "{name}: {ok:?}");
        assert_eq!(ret[0] as i64, -21, "{name}");
        assert_eq!(pending_entry_status(), STATUS_OK, "{name}");
        assert!(tierbridge::host::take_entry_error().is_none(), "{name}");
        // A failure during an exit call is that call's (function 2), not the
        // stale one (function 1).
        for func in [2, 1] {
            let ep = if func == 1 { &stale } else { &fresh };
            f(7, 3); // a new stale failure, each time
            // SAFETY: as above, through the entry point.
            let failed = unsafe { x.call(ep.code_ptr(), &[7, 3], &mut ret) };
            assert!(
                matches!(
                    &failed,
                    Err(ThunkError::Callback(EntryError::Host { func: f, .. })) if *f == func
                ),
                "{name}: {failed:?}"
            );
        }
        assert!(tierbridge::host::take_entry_error().is_none(), "{name}");
    }
}

#[test]
fn an_entry_point_can_be_made_while_the_thread_is_being_torn_down() {
    /// When dropped: makes and calls an entry point of a shape new to its
    /// bridge, then calls a failing callback through an exit stub.
    struct OnDrop(Bridge, std::sync::mpsc::Sender<i64>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            let d = host(
                |c: EntryCall<'_>| {
                    let (a, b) = (c.args[0] as i64, c.args[1] as i8 as i64);
                    c.ret[0] = (a * b) as u64;
                    Ok(())
                },
                FailurePolicy::Report,
            );
            let ep = self
                .0
                .entry_point(&sig("(i64,i8)->i64"), CallConv::SysV, &d, 0)
                .unwrap();
            // SAFETY: the entry point has this signature.
            let f: extern "C" fn(i64, i8) -> i64 = unsafe { ep.as_fn() };
            let _ = self.1.send(f(6, -7));
            // The failure cannot be kept (the failure slot is gone by now),
            // but the exit call must still report one, not crash.
            let refuse = host(|_| Err("refused".into()), FailurePolicy::Report);
            let s = sig("(i64,i8)->i64");
            let failing = self.0.entry_point(&s, CallConv::SysV, &refuse, 1).unwrap();
            let x = self.0.exit_stub(&s, CallConv::SysV).unwrap();
            let mut ret = [7u64];
            // SAFETY: the entry point has the stub's signature.
            let r = unsafe { x.call(failing.code_ptr(), &[1, 2], &mut ret) };
            let _ = self.1.send(i64::from(r.is_err()) * 100 + ret[0] as i64);
        }
    }
    thread_local! {
        static LAST: std::cell::RefCell<Option<OnDrop>> = const { std::cell::RefCell::new(None) };
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // `LAST` is set up before the bridge's own thread-locals, so (thread
        // locals being destroyed last first) its destructor runs after theirs.
        LAST.with(|l| *l.borrow_mut() = Some(OnDrop(support::generated(), tx)));
        let b = support::generated();
        let d = host(|_| Ok(()), FailurePolicy::Report);
        b.entry_point(&sig("(f32)->void"), CallConv::SysV, &d, 0)
            .unwrap();
        // A failed callback, taken: the failure slot is set up now too.
        let refuse = host(|_| Err("refused".into()), FailurePolicy::Report);
        let ep = b
            .entry_point(&sig("(i64)->void"), CallConv::SysV, &refuse, 0)
            .unwrap();
        // SAFETY: the entry point has this signature.
        let f: extern "C" fn(i64) = unsafe { ep.as_fn() };
        f(1);
        assert!(tierbridge::host::take_entry_error().is_some());
    })
    .join()
    .unwrap();
    assert_eq!(rx.recv().unwrap(), -42);
    // An error, and the failed callback's zeroed result.
    assert_eq!(rx.recv().unwrap(), 100);
}

/// Returns its argument's 64 bits in rax: called through a stub whose result
/// type is narrower, it is a callee that leaves the result's upper bits set.
extern "C" fn dirty_sysv(bits: u64) -> u64 {
    bits
}

/// As `dirty_sysv`, Win64.
extern "win64" fn dirty_win64(bits: u64) -> u64 {
    bits
}

/// Returns its argument's 64 bits in xmm0 (an `f32` result is only the low half).
extern "C" fn dirty_float_sysv(bits: f64) -> f64 {
    bits
}

/// As `dirty_float_sysv`, Win64.
extern "win64" fn dirty_float_win64(bits: f64) -> f64 {
    bits
}

/// Both conventions leave the bits of a register above a narrow result
/// undefined (SysV psABI §3.2.3, Microsoft's x64 "Return values"), so every
/// exit path must extend the result itself. The expected slots are worked out
/// by hand from 0x0123_4567_89ab_cdef: the low byte 0xef, low half-word 0xcdef
/// and low word 0x89ab_cdef all have their sign bit set.
#[test]
fn narrow_results_are_extended_whatever_the_callee_leaves_in_the_upper_bits() {
    const BITS: u64 = 0x0123_4567_89ab_cdef;
    let int_cases: [(&str, u64); 6] = [
        ("(u64)->i8", 0xffff_ffff_ffff_ffef),
        ("(u64)->u8", 0xef),
        ("(u64)->i16", 0xffff_ffff_ffff_cdef),
        ("(u64)->u16", 0xcdef),
        ("(u64)->i32", 0xffff_ffff_89ab_cdef),
        ("(u64)->u32", 0x89ab_cdef),
    ];
    // An f32 result is the low 32 bits of xmm0, zero-extended in its slot.
    const FBITS: u64 = 0x4011_2233_3f80_0000;
    let float_case = ("(f64)->f32", 0x3f80_0000u64);
    for (name, b) in support::all_bridges() {
        for conv in CallConv::ALL {
            let (int_fn, float_fn) = match conv {
                CallConv::SysV => (
                    dirty_sysv as *const c_void,
                    dirty_float_sysv as *const c_void,
                ),
                _ => (
                    dirty_win64 as *const c_void,
                    dirty_float_win64 as *const c_void,
                ),
            };
            let cases = int_cases
                .iter()
                .map(|&(s, want)| (s, want, int_fn, BITS))
                .chain([(float_case.0, float_case.1, float_fn, FBITS)]);
            for (text, want, f, arg) in cases {
                let stub = b.exit_stub(&sig(text), conv).unwrap();
                let what = format!("{name} {conv} {text}");
                let mut r = [0u64];
                // SAFETY: `f` takes one 64-bit argument of the stub's class
                // and returns a value of its result class.
                unsafe { stub.call(f, &[arg], &mut r) }.unwrap();
                assert_eq!(r[0], want, "{what}: call");
                r[0] = 0;
                // SAFETY: as above; one argument slot and one result slot.
                unsafe { stub.call_unchecked(f, [arg].as_ptr(), r.as_mut_ptr()) };
                assert_eq!(r[0], want, "{what}: call_unchecked");
                r[0] = 0;
                // SAFETY: as above.
                unsafe { stub.call_capture_errno(f, &[arg], &mut r, 0) }.unwrap();
                assert_eq!(r[0], want, "{what}: call_capture_errno");
            }
        }
    }
}

/// What the raw dispatcher below saw on its last call.
#[derive(Debug, Default)]
struct RawSeen {
    ctx: usize,
    func: u64,
    counts: (u32, u32),
    args: Vec<u64>,
    ret_on_entry: Vec<u64>,
    variadic: bool,
}

/// The raw dispatcher's context: what to record into, what to answer.
struct RawCtx {
    seen: std::sync::Mutex<RawSeen>,
    answer: Vec<u64>,
    status: u32,
}

/// A raw `extern "C"` dispatcher that records everything it receives and
/// answers `ctx.answer` with status `ctx.status`.
///
/// # Safety
/// Called by entry points bound with a `RawCtx` context, with their slots.
unsafe extern "C" fn raw_recorder(
    binding: *const tierbridge::host::RawBinding,
    args: *const u64,
    ret: *mut u64,
    va: *mut tierbridge::host::RawVaList,
) -> u32 {
    // SAFETY: the binding is the entry point's; its context is a live RawCtx;
    // the slot pointers are valid for the binding's counts.
    unsafe {
        let b = &*binding;
        let ctx = &*(b.ctx as *const RawCtx);
        let (nargs, nret) = (b.nargs as usize, b.nret as usize);
        let mut seen = ctx.seen.lock().unwrap();
        *seen = RawSeen {
            ctx: b.ctx as usize,
            func: b.func,
            counts: (b.nargs, b.nret),
            args: std::slice::from_raw_parts(args, nargs).to_vec(),
            ret_on_entry: std::slice::from_raw_parts(ret, nret).to_vec(),
            variadic: !va.is_null(),
        };
        std::slice::from_raw_parts_mut(ret, nret).copy_from_slice(&ctx.answer[..nret]);
        ctx.status
    }
}

/// (signature, arguments, their slots, the dispatcher's answer slot, the value
/// the caller must get back).
type RawCase = (&'static str, Vec<Value>, Vec<u64>, u64, Value);

/// The raw host contract (ABI.md, "Host contract") on every backend and both
/// conventions: the dispatcher gets the binding fixed at bind time (its
/// context, the function id, the slot counts of the signature), the argument
/// slots the caller passed, zeroed result slots, a cursor only for a variadic
/// signature; its answer reaches the caller; a non-zero status is the
/// failure the exit call reports, with a zeroed result.
#[test]
fn a_raw_dispatcher_gets_its_binding_the_slots_and_a_cursor_only_when_variadic() {
    // The argument slots are worked out by hand.
    let cases: [RawCase; 4] = [
        (
            "(i64,i32,f64)->i64",
            vec![Value::I64(-5), Value::I32(-6), Value::F64(2.5)],
            vec![(-5i64) as u64, (-6i64) as u64, 2.5f64.to_bits()],
            (-77i64) as u64,
            Value::I64(-77),
        ),
        ("()->u16", vec![], vec![], 0xBEEF, Value::U16(0xBEEF)),
        (
            // {1i32, 1.0f32}: bytes 01 00 00 00 | 00 00 80 3f in one slot.
            "(f32,{i32,f32})->f64",
            vec![
                Value::F32(1.5),
                Value::Struct(vec![1, 0, 0, 0, 0, 0, 0x80, 0x3f]),
            ],
            vec![0x3fc0_0000, 0x3f80_0000_0000_0001],
            (-0.25f64).to_bits(),
            Value::F64(-0.25),
        ),
        (
            "(ptr,...)->i32",
            vec![Value::Ptr(0x40 as *const c_void)],
            vec![0x40],
            (-3i64) as u64,
            Value::I32(-3),
        ),
    ];
    for (name, b) in support::all_bridges() {
        for conv in CallConv::ALL {
            for (text, args, arg_slots, answer_slot, answer) in &cases {
                let s = sig(text);
                let ctx = Box::new(RawCtx {
                    seen: Default::default(),
                    answer: vec![*answer_slot],
                    status: STATUS_OK,
                });
                let ctx_ptr = &*ctx as *const RawCtx as *mut c_void;
                // SAFETY: raw_recorder never unwinds; `ctx` outlives the entry point.
                let d =
                    unsafe { Dispatcher::from_raw(raw_recorder, ctx_ptr, FailurePolicy::Report) };
                let what = format!("{name} {conv} {text}");
                let ep = match b.entry_point(&s, conv, &d, 41) {
                    Ok(ep) => ep,
                    Err(e) => panic!("{what}: {e}"),
                };
                let exit = Bridge::libffi().exit_stub(&s.declared(), conv).unwrap();
                // SAFETY: the entry point has exactly this signature and convention.
                let r = unsafe { exit.call_values(ep.code_ptr(), args) }.unwrap();
                assert_eq!(&r, answer, "{what}");
                let seen = ctx.seen.lock().unwrap();
                assert_eq!(seen.ctx, ctx_ptr as usize, "{what}");
                assert_eq!(seen.func, 41, "{what}");
                assert_eq!(seen.counts, (arg_slots.len() as u32, 1), "{what}");
                assert_eq!(&seen.args, arg_slots, "{what}");
                assert!(seen.ret_on_entry.iter().all(|&w| w == 0), "{what}");
                assert_eq!(seen.variadic, s.is_variadic(), "{what}");
                drop(seen);
                drop(ep);
            }
            // A failure status: the caller gets a zeroed result and the exit
            // call reports the status with the function id.
            let s = sig("(i64)->i64");
            let ctx = Box::new(RawCtx {
                seen: Default::default(),
                answer: vec![99],
                status: 7,
            });
            let ctx_ptr = &*ctx as *const RawCtx as *mut c_void;
            // SAFETY: as above.
            let d = unsafe { Dispatcher::from_raw(raw_recorder, ctx_ptr, FailurePolicy::Report) };
            let ep = b.entry_point(&s, conv, &d, 9).unwrap();
            let exit = Bridge::libffi().exit_stub(&s, conv).unwrap();
            let mut ret = [5u64];
            // SAFETY: as above.
            let err = unsafe { exit.call(ep.code_ptr(), &[1], &mut ret) }.unwrap_err();
            assert_eq!(ret[0], 0, "{name} {conv}: result not zeroed");
            match err {
                ThunkError::Callback(EntryError::Status { func: 9, status: 7 }) => {}
                other => panic!("{name} {conv}: {other}"),
            }
        }
    }
}

/// A signature with a register stub gets its slot stubs on first need
/// (ABI.md, "Exit stubs"). Eight threads that all need them at once for a
/// fresh signature each get working stubs: whichever thread's stubs win, the
/// others' are freed, and every call — plain and errno-capturing — is right.
#[test]
fn eight_threads_needing_the_slot_stubs_of_a_fresh_signature_at_once() {
    extern "C" fn mix(a: i64, b: i32, c: f64) -> i64 {
        a.wrapping_mul(3) ^ i64::from(b) ^ c.to_bits() as i64
    }
    for (name, b) in support::all_bridges() {
        for round in 0..20u32 {
            // A shape no other test uses, new each round (the u8 count varies).
            let text = format!(
                "(i64,i32,f64,{})->i64",
                vec!["u8"; 1 + round as usize].join(",")
            );
            let s = b.exit_stub(&sig(&text), CallConv::SysV).unwrap();
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|scope| {
                for t in 0..8i64 {
                    let (s, barrier, name) = (&s, &barrier, &name);
                    scope.spawn(move || {
                        let mut args = vec![t as u64, (-7i64) as u64, 2.5f64.to_bits()];
                        args.resize(3 + 1 + round as usize, 0);
                        let want = mix(t, -7, 2.5) as u64;
                        barrier.wait();
                        let mut ret = [0u64];
                        // SAFETY: `mix` ignores the trailing u8 arguments, which
                        // the SysV convention passes in registers or on the
                        // stack without disturbing the first three.
                        let errno = unsafe {
                            s.call_capture_errno(mix as *const c_void, &args, &mut ret, 77)
                        };
                        assert_eq!((ret[0], errno.unwrap()), (want, 77), "{name} {t}");
                        // SAFETY: as above.
                        unsafe { s.call(mix as *const c_void, &args, &mut ret) }.unwrap();
                        assert_eq!(ret[0], want, "{name} {t}");
                    });
                }
            });
        }
    }
}

/// ABI.md ("Who extends narrow integers"): an entry point returns a narrow
/// integer result extended to 64 bits as its type says, on every backend
/// and convention (C reads only the declared width, but the backends agree
/// with each other and with ABI.md). Read as a 64-bit result through a Rust
/// function pointer of the same convention; the wanted values are the
/// host's result worked out by hand from -1 (all ones) and 0x80 / 0x8000 /
/// 0x8000_0000 (sign bit set in the declared width only).
#[test]
fn entry_points_return_narrow_results_extended_to_64_bits_on_every_backend() {
    let cases: [(&str, u64, u64); 8] = [
        ("()->i8", u64::MAX, u64::MAX),
        ("()->i8", 0x80, 0xffff_ffff_ffff_ff80),
        ("()->u8", u64::MAX, 0xff),
        ("()->i16", 0x8000, 0xffff_ffff_ffff_8000),
        ("()->u16", u64::MAX, 0xffff),
        ("()->i32", 0x8000_0000, 0xffff_ffff_8000_0000),
        ("()->u32", u64::MAX, 0xffff_ffff),
        ("()->bool", 1, 1),
    ];
    for (name, b) in support::all_bridges() {
        for conv in CallConv::ALL {
            for (text, host_result, want) in cases {
                let d = Dispatcher::from_host(
                    Arc::new(move |c: EntryCall<'_>| -> Result<(), HostError> {
                        c.ret[0] = host_result;
                        Ok(())
                    }),
                    FailurePolicy::Report,
                );
                let e = b.entry_point(&sig(text), conv, &d, 0).unwrap();
                // SAFETY: a function of no arguments returning in rax, read
                // whole; the handle outlives the call.
                let got = unsafe {
                    match conv {
                        CallConv::SysV => e.as_fn::<extern "C" fn() -> u64>()(),
                        _ => e.as_fn::<extern "win64" fn() -> u64>()(),
                    }
                };
                assert_eq!(got, want, "{name} {conv} {text} returning {host_result:#x}");
            }
        }
    }
}
