//! Differential tests over randomly generated signatures: every exit backend
//! calls every entry backend, and what the host receives must be, bit for bit,
//! what the interpreter sent (and the result the other way). The generated
//! backend is checked against libffi and against itself; with
//! `TIERBRIDGE_CASES=1000000` this is the million-case run. In a build
//! without code generation (`--cfg tierbridge_no_codegen`) libffi is checked
//! against itself, and the test of a generated-code memory strategy is left
//! out.

mod support;

use std::sync::{Arc, Mutex};

use support::*;
use tierbridge::abi::{CallConv, Scalar, Signature, Type};
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy, HostError};
use tierbridge::thunks::{BackendKind, Bridge, BridgeOptions, ExecStrategy, ThunkError};

#[derive(Default)]
struct Seen {
    args: Vec<u64>,
    varargs: Vec<u64>,
}

fn read_vararg(va: &mut tierbridge::host::VaArgs<'_>, t: Scalar) -> Option<u64> {
    match t {
        Scalar::I32 => va.next_i32().map(|v| v as i64 as u64),
        Scalar::U32 => va.next_u32().map(u64::from),
        Scalar::I64 | Scalar::U64 => va.next_u64(),
        Scalar::F64 => va.next_f64().map(f64::to_bits),
        Scalar::Ptr => va.next_ptr().map(|p| p as u64),
        other => panic!("vararg of type {other}"),
    }
}

/// Runs one signature through exit backend `x` and entry backend `e`.
/// `Ok(false)` when a backend cannot express it (libffi and packed structs).
fn one_case(
    x: &Bridge,
    e: &Bridge,
    sig: &Signature,
    conv: CallConv,
    rng: &mut fastrand::Rng,
) -> Result<bool, String> {
    let args: Vec<Vec<u8>> = sig.params().iter().map(|t| rand_value(rng, t)).collect();
    let ret = sig.ret().map(|t| rand_value(rng, t));
    let ret_slots = ret
        .as_ref()
        .zip(sig.ret())
        .map(|(v, t)| value_slots(t, v))
        .unwrap_or_default();
    let var_types: Vec<Scalar> = sig.params()[sig.fixed_count()..]
        .iter()
        .map(|t| t.as_scalar().expect("scalar varargs"))
        .collect();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (seen2, ret2) = (seen.clone(), ret_slots.clone());
    let host = move |c: EntryCall<'_>| -> Result<(), HostError> {
        let mut s = seen2.lock().unwrap();
        s.args = c.args.to_vec();
        if let Some(mut va) = c.varargs {
            for t in &var_types {
                s.varargs
                    .push(read_vararg(&mut va, *t).ok_or("vararg out of reach")?);
            }
        }
        c.ret.copy_from_slice(&ret2);
        Ok(())
    };
    let d = Dispatcher::from_host(Arc::new(host), FailurePolicy::Report);
    let ep = match e.entry_point(&sig.declared(), conv, &d, 1) {
        Ok(ep) => ep,
        Err(ThunkError::Unsupported { .. }) if e.kind() == BackendKind::Libffi => return Ok(false),
        Err(err) => return Err(format!("entry point: {err}")),
    };
    let stub = match x.exit_stub(sig, conv) {
        Ok(s) => s,
        Err(ThunkError::Unsupported { .. }) if x.kind() == BackendKind::Libffi => return Ok(false),
        Err(err) => return Err(format!("exit stub: {err}")),
    };
    let slots: Vec<u64> = sig
        .params()
        .iter()
        .zip(&args)
        .flat_map(|(t, v)| value_slots(t, v))
        .collect();
    let mut out = vec![0u64; sig.ret_slots()];
    // SAFETY: the entry point has exactly the exit stub's signature (declared form).
    unsafe { stub.call(ep.code_ptr(), &slots, &mut out) }.map_err(|err| format!("call: {err}"))?;
    let s = seen.lock().unwrap();
    let fixed = sig.fixed_count();
    let mut at = 0;
    for (i, (t, v)) in sig.params()[..fixed].iter().zip(&args).enumerate() {
        let n = t.slots() as usize;
        let got = s
            .args
            .get(at..at + n)
            .ok_or(format!("arg {i}: missing slots"))?;
        match t {
            Type::Scalar(_) if got[0] != value_slots(t, v)[0] => {
                return Err(format!(
                    "arg {i} ({t}): slot {:#x}, want {:#x}",
                    got[0],
                    value_slots(t, v)[0]
                ));
            }
            _ => same_value(t, v, &slots_bytes(got))
                .map_err(|err| format!("arg {i} ({t}): {err}"))?,
        }
        at += n;
    }
    let want_var: Vec<u64> = sig.params()[fixed..]
        .iter()
        .zip(&args[fixed..])
        .flat_map(|(t, v)| value_slots(t, v))
        .collect();
    if s.varargs != want_var {
        return Err(format!("varargs: got {:x?}, want {want_var:x?}", s.varargs));
    }
    if let (Some(t), Some(v)) = (sig.ret(), &ret) {
        same_value(t, v, &slots_bytes(&out)).map_err(|err| format!("result ({t}): {err}"))?;
        if let Type::Scalar(sc) = t
            && out[0] != sc.to_slot(out[0])
        {
            return Err(format!("result slot {:#x} not extended as {sc}", out[0]));
        }
    }
    drop(s);
    // The errno-capturing variant is always the slot stub; `call` may have used
    // the register one: both must deliver the same result.
    let mut again = vec![0u64; sig.ret_slots()];
    // SAFETY: as above.
    unsafe { stub.call_capture_errno(ep.code_ptr(), &slots, &mut again, 0) }
        .map_err(|err| format!("call_capture_errno: {err}"))?;
    // Bytes past a struct result's size are unspecified; a scalar's slot is exact.
    match sig.ret() {
        Some(Type::Scalar(_)) if again != out => {
            return Err(format!("call gave {out:x?}, call_capture_errno {again:x?}"));
        }
        Some(t) => same_value(t, &slots_bytes(&out), &slots_bytes(&again))
            .map_err(|err| format!("call vs call_capture_errno ({t}): {err}"))?,
        None => {}
    }
    Ok(true)
}

/// Up to 32 parameters, every scalar, nested and packed structs, variadic
/// tails of promoted scalars.
fn wide_sig(rng: &mut fastrand::Rng) -> Signature {
    rand_sig(rng, 32, 20, false)
}

fn run(
    bridges: &[(String, Bridge)],
    count: usize,
    seed_mix: u64,
    sigs: fn(&mut fastrand::Rng) -> Signature,
) {
    let mut rng = fastrand::Rng::with_seed(seed() ^ seed_mix);
    let mut failures = Vec::new();
    let mut ran = 0usize;
    for k in 0..count {
        let sig = sigs(&mut rng);
        let conv = CallConv::ALL[k % 2];
        for (xn, x) in bridges {
            for (en, e) in bridges {
                match one_case(x, e, &sig, conv, &mut rng) {
                    Ok(done) => ran += usize::from(done),
                    Err(why) => {
                        failures.push(format!("{conv} {sig} exit {xn} -> entry {en}: {why}"))
                    }
                }
            }
        }
        assert!(failures.len() < 20, "{}", failures.join("\n"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Most cases run on every pair (libffi refuses only some packed structs).
    assert!(
        ran * 10 >= count * bridges.len() * bridges.len() * 8,
        "only {ran} cases ran"
    );
}

/// libffi, and the generated backend on `exec` where this build generates
/// code.
fn bridges(exec: ExecStrategy) -> Vec<(String, Bridge)> {
    let mut v = vec![("libffi".to_owned(), Bridge::libffi())];
    if cfg!(tierbridge_codegen) {
        let generated = Bridge::with_options(BridgeOptions {
            backend: BackendKind::Generated,
            exec: Some(exec),
            ..BridgeOptions::default()
        })
        .unwrap();
        assert_eq!(generated.kind(), BackendKind::Generated);
        v.push(("generated".to_owned(), generated));
    }
    v
}

#[test]
fn generated_and_libffi_agree_in_every_direction_on_random_signatures() {
    let bridges = bridges(ExecStrategy::DualMapping);
    run(&bridges, cases(1500), 0xd1, wide_sig);
}

/// Needs generated code: the memory strategy is the generated backend's.
#[test]
#[cfg(tierbridge_codegen)]
fn the_write_then_protect_strategy_runs_the_same_differential() {
    let bridges = bridges(ExecStrategy::WriteThenProtect);
    run(&bridges, cases(1500) / 3, 0xd2, wide_sig);
}

/// The register stubs' results: signatures whose arguments mostly travel in
/// registers and whose results are mostly small structs of every class mix.
#[test]
fn register_results_agree_in_every_direction() {
    let bridges = bridges(ExecStrategy::DualMapping);
    run(&bridges, cases(1500) / 3, 0xd3, rand_register_sig);
}
