//! Calls across the bridge: a parsed signature called from every exit stub
//! into every entry point, on both backends and in both conventions.

use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use tierbridge::abi::{CallConv, Scalar, Signature, Type, classify};
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy, HostError, VaArgs};
#[cfg(tierbridge_codegen)]
use tierbridge::thunks::{BackendKind, BridgeOptions, ExecStrategy};
use tierbridge::thunks::{Bridge, ThunkError};

use super::Bytes;
use super::sig::check_layout;

/// The bridges every call goes through, made once per process (a bridge's
/// stubs are cached per signature shape for its whole life): libffi, and
/// the generated backend on each executable-memory strategy where this
/// build generates code (not with `--cfg tierbridge_no_codegen`).
pub(crate) fn bridges() -> &'static [(&'static str, Bridge)] {
    static BRIDGES: OnceLock<Vec<(&'static str, Bridge)>> = OnceLock::new();
    BRIDGES.get_or_init(|| {
        #[cfg_attr(not(tierbridge_codegen), expect(unused_mut))]
        let mut v = vec![("libffi", Bridge::libffi())];
        #[cfg(tierbridge_codegen)]
        for (name, exec) in [
            ("generated/dual-mapping", ExecStrategy::DualMapping),
            (
                "generated/write-then-protect",
                ExecStrategy::WriteThenProtect,
            ),
        ] {
            let b = Bridge::with_options(BridgeOptions {
                backend: BackendKind::Generated,
                exec: Some(exec),
                ..BridgeOptions::default()
            })
            .expect("the generated backend works on this machine");
            assert_eq!(b.kind(), BackendKind::Generated);
            v.push((name, b));
        }
        v
    })
}

/// What the host saw in one call.
#[derive(Default)]
struct Seen {
    calls: u32,
    args: Vec<u64>,
    varargs: Vec<u64>,
}

/// The `bridge_calls` target. The input is a signature's text, a newline,
/// then bytes for the values. The signature is classified in both
/// conventions (checked as in `sig_text`); then, in both conventions, every
/// backend makes an entry point of its declared form and an exit stub of it,
/// every exit stub calls every entry point with the same argument values,
/// and the host behind each entry point must receive exactly those values
/// (scalars as their extended slots, struct bytes without their padding, the
/// promoted scalar variadic arguments through `VaArgs`), and every caller
/// must get back exactly the result the host wrote, through `call` and
/// `call_capture_errno` alike. A backend may refuse a signature only with
/// `Unsupported`, or an exit stub with `CallStackTooLarge` (then every
/// backend refuses it). Everything is dropped at the end of the input.
pub fn bridge_calls(data: &[u8]) {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let Ok(text) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let Ok(sig) = Signature::parse(text) else {
        return;
    };
    for conv in CallConv::ALL {
        let layout = classify(&sig, conv);
        if let Err(why) = check_layout(&sig, &layout) {
            panic!("{sig} on {conv}: {why}\n{layout:#?}");
        }
    }
    let mut bytes = Bytes::new(data.get(split + 1..).unwrap_or(&[]));
    let args: Vec<Vec<u8>> = sig.params().iter().map(|t| value(&mut bytes, t)).collect();
    let ret = sig.ret().map(|t| value(&mut bytes, t));
    for conv in CallConv::ALL {
        calls(&sig, conv, &args, ret.as_deref());
    }
}

/// Bytes of a value of `ty` from the input: anything, but a `bool` is 0 or 1.
fn value(bytes: &mut Bytes<'_>, ty: &Type) -> Vec<u8> {
    let mut b: Vec<u8> = (0..ty.size()).map(|_| bytes.u8()).collect();
    for (at, s) in ty.flatten() {
        if s == Scalar::Bool {
            b[at as usize] &= 1;
        }
    }
    b
}

/// The slots of a value (scalars extended as their type says).
pub(crate) fn value_slots(ty: &Type, bytes: &[u8]) -> Vec<u64> {
    let mut out = vec![0u64; ty.slots() as usize];
    for (i, c) in bytes.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        out[i] = u64::from_le_bytes(b);
    }
    if let Type::Scalar(s) = ty {
        out[0] = s.to_slot(out[0]);
    }
    out
}

/// Two byte images of `ty` compared scalar by scalar (padding excluded).
fn same_value(ty: &Type, want: &[u8], got: &[u8]) -> Result<(), String> {
    for (at, s) in ty.flatten() {
        let r = at as usize..(at + s.size()) as usize;
        if got.get(r.clone()) != Some(&want[r.clone()]) {
            return Err(format!(
                "{s} at offset {at}: sent {:02x?}, got {:02x?}",
                &want[r.clone()],
                got.get(r)
            ));
        }
    }
    Ok(())
}

fn slots_bytes(slots: &[u64]) -> Vec<u8> {
    slots.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// A variadic argument read as its (promoted) type; `None` for a type
/// `VaArgs` cannot read (structs, and unpromoted scalars).
fn read_vararg(va: &mut VaArgs<'_>, t: &Type) -> Option<Option<u64>> {
    Some(match t.as_scalar()? {
        Scalar::I32 => va.next_i32().map(|v| v as i64 as u64),
        Scalar::U32 => va.next_u32().map(u64::from),
        Scalar::I64 | Scalar::U64 => va.next_u64(),
        Scalar::F64 => va.next_f64().map(f64::to_bits),
        Scalar::Ptr => va.next_ptr().map(|p| p as u64),
        _ => return None,
    })
}

/// One convention: every exit stub into every entry point.
fn calls(sig: &Signature, conv: CallConv, args: &[Vec<u8>], ret: Option<&[u8]>) {
    let fixed = sig.fixed_count();
    let ret_slots: Vec<u64> = ret
        .zip(sig.ret())
        .map(|(v, t)| value_slots(t, v))
        .unwrap_or_default();
    // The variadic arguments the host can read: the scalar prefix of them.
    let var_types: Vec<Type> = sig.params()[fixed..]
        .iter()
        .take_while(|t| {
            matches!(
                t.as_scalar(),
                Some(
                    Scalar::I32
                        | Scalar::U32
                        | Scalar::I64
                        | Scalar::U64
                        | Scalar::F64
                        | Scalar::Ptr
                )
            )
        })
        .cloned()
        .collect();
    let want_var: Vec<u64> = var_types
        .iter()
        .zip(&args[fixed..])
        .flat_map(|(t, v)| value_slots(t, v))
        .collect();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let declared = sig.declared();
    let mut entries = Vec::new();
    for (name, bridge) in bridges() {
        let (seen2, ret2, types2) = (seen.clone(), ret_slots.clone(), var_types.clone());
        let host = move |c: EntryCall<'_>| -> Result<(), HostError> {
            let mut s = seen2.lock().unwrap_or_else(|e| e.into_inner());
            s.calls += 1;
            s.args = c.args.to_vec();
            s.varargs.clear();
            if let Some(mut va) = c.varargs {
                for t in &types2 {
                    let v = read_vararg(&mut va, t)
                        .flatten()
                        .ok_or("vararg out of reach")?;
                    s.varargs.push(v);
                }
            }
            if c.ret.len() != ret2.len() {
                return Err(
                    format!("{} result slots, {} expected", c.ret.len(), ret2.len()).into(),
                );
            }
            c.ret.copy_from_slice(&ret2);
            Ok(())
        };
        let d = Dispatcher::from_host(Arc::new(host), FailurePolicy::Report);
        match bridge.entry_point(&declared, conv, &d, 7) {
            Ok(ep) => entries.push((*name, ep)),
            Err(ThunkError::Unsupported { .. }) => {}
            Err(e) => panic!("{conv} {sig}: entry point on {name}: {e}"),
        }
    }
    let slots: Vec<u64> = sig
        .params()
        .iter()
        .zip(args)
        .flat_map(|(t, v)| value_slots(t, v))
        .collect();
    // Which backends refused the call for the stack its arguments take:
    // all of them or none (the bound is the classification's).
    let mut too_large = Vec::new();
    for (xname, bridge) in bridges() {
        let stub = match bridge.exit_stub(sig, conv) {
            Ok(s) => s,
            Err(ThunkError::CallStackTooLarge { .. }) => {
                too_large.push(true);
                continue;
            }
            Err(ThunkError::Unsupported { .. }) => continue,
            Err(e) => panic!("{conv} {sig}: exit stub on {xname}: {e}"),
        };
        too_large.push(false);
        for (ename, ep) in &entries {
            let at = format!("{conv} {sig}: exit {xname} -> entry {ename}");
            let target: *const c_void = ep.code_ptr();
            let mut out = vec![0u64; sig.ret_slots()];
            *seen.lock().unwrap() = Seen::default();
            // SAFETY: the entry point has exactly the exit stub's signature
            // (its declared form) and convention; no argument is a pointer
            // anyone reads (the host only copies the slots).
            unsafe { stub.call(target, &slots, &mut out) }
                .unwrap_or_else(|e| panic!("{at}: call: {e}"));
            let s = std::mem::take(&mut *seen.lock().unwrap());
            if let Err(why) = check_seen(sig, args, &slots, &s, &want_var) {
                panic!("{at}: {why}");
            }
            if let (Some(t), Some(v)) = (sig.ret(), ret) {
                same_value(t, v, &slots_bytes(&out))
                    .unwrap_or_else(|e| panic!("{at}: result ({t}): {e}"));
                if let Type::Scalar(sc) = t {
                    assert_eq!(out[0], sc.to_slot(out[0]), "{at}: result slot not extended");
                }
            }
            let mut again = vec![0u64; sig.ret_slots()];
            // SAFETY: as above.
            unsafe { stub.call_capture_errno(target, &slots, &mut again, 0) }
                .unwrap_or_else(|e| panic!("{at}: call_capture_errno: {e}"));
            match sig.ret() {
                Some(Type::Scalar(_)) => assert_eq!(again, out, "{at}: call_capture_errno"),
                Some(t) => same_value(t, &slots_bytes(&out), &slots_bytes(&again))
                    .unwrap_or_else(|e| panic!("{at}: call_capture_errno ({t}): {e}")),
                None => {}
            }
        }
    }
    assert!(
        too_large.iter().all(|t| *t) || !too_large.iter().any(|t| *t),
        "{conv} {sig}: the call's stack refused by some backends only: {too_large:?}"
    );
}

/// The host saw one call with the fixed arguments sent and the readable
/// variadic ones.
fn check_seen(
    sig: &Signature,
    args: &[Vec<u8>],
    slots: &[u64],
    s: &Seen,
    want_var: &[u64],
) -> Result<(), String> {
    if s.calls != 1 {
        return Err(format!("the host ran {} times", s.calls));
    }
    let fixed = sig.fixed_count();
    let fixed_slots: usize = sig.params()[..fixed]
        .iter()
        .map(|t| t.slots() as usize)
        .sum();
    if s.args.len() != fixed_slots {
        return Err(format!(
            "{} argument slots, {fixed_slots} sent",
            s.args.len()
        ));
    }
    let mut at = 0;
    for (i, (t, v)) in sig.params()[..fixed].iter().zip(args).enumerate() {
        let n = t.slots() as usize;
        let got = &s.args[at..at + n];
        match t {
            Type::Scalar(_) if got[0] != slots[at] => {
                return Err(format!(
                    "arg {i} ({t}): slot {:#x}, sent {:#x}",
                    got[0], slots[at]
                ));
            }
            _ => same_value(t, v, &slots_bytes(got)).map_err(|e| format!("arg {i} ({t}): {e}"))?,
        }
        at += n;
    }
    if s.varargs != want_var {
        return Err(format!("varargs: got {:x?}, sent {want_var:x?}", s.varargs));
    }
    Ok(())
}
