//! A dropped entry point called again, on every backend: within the
//! quarantine's depth the call aborts the process with a message naming the
//! function and its signature (never running freed memory or another
//! binding), and the quarantine itself stays bounded in create/drop loops.
//!
//! Calls of dropped entry points abort, so each runs in a child process:
//! the test binary re-runs itself with `--exact` on an ignored test and the
//! scenario in environment variables.

mod support;

use std::ffi::c_void;
use std::sync::Arc;

use tierbridge::abi::{CallConv, Signature};
use tierbridge::host::{Dispatcher, EntryCall, FailurePolicy, HostError};
use tierbridge::thunks::{Bridge, ENTRY_QUARANTINE};

fn sig(s: &str) -> Signature {
    Signature::parse(s).unwrap()
}

/// A host whose function `f` returns `f * 1000 + x` for argument `x`, so a
/// call that reaches the wrong binding is told from the right one.
fn host() -> Dispatcher {
    Dispatcher::from_host(
        Arc::new(|c: EntryCall<'_>| -> Result<(), HostError> {
            c.ret[0] = c.func.0.wrapping_mul(1000).wrapping_add(c.args[0]);
            Ok(())
        }),
        FailurePolicy::Report,
    )
}

/// The bridges every scenario runs on: libffi and both generated strategies.
fn bridge(k: usize) -> (String, Bridge) {
    support::all_bridges().swap_remove(k)
}

const SIG: &str = "(i64)->i64";
const STALE_FN: u64 = 4242;

/// Runs the ignored test `name` in a child process with the scenario in its
/// environment: its exit status and its stderr.
fn run_child(name: &str, env: &[(&str, String)]) -> (std::process::ExitStatus, String) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        name,
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.parse().ok()
}

/// Binds function `STALE_FN`, calls it, drops it; then binds and drops
/// `TIERBRIDGE_CHURN` other functions one at a time, binds
/// `TIERBRIDGE_LIVE` more and keeps them; then calls the dropped one's
/// pointer. Only ever reached as a child process.
#[test]
#[ignore = "run as a child process by the tests below"]
fn child_calls_a_dropped_entry_point() {
    let Some(backend) = env_usize("TIERBRIDGE_CHILD") else {
        return;
    };
    let churn = env_usize("TIERBRIDGE_CHURN").unwrap_or(0);
    let live = env_usize("TIERBRIDGE_LIVE").unwrap_or(0);
    let (name, b) = bridge(backend);
    let (s, conv) = (sig(SIG), CallConv::SysV);
    let d = host();
    let exit = b.exit_stub(&s, conv).unwrap();
    let call = |code: *const c_void, x: u64| {
        let mut ret = [0u64];
        // SAFETY: every entry point here has this signature; the last call
        // (of a dropped one) is the scenario under test.
        unsafe { exit.call(code, &[x], &mut ret) }.unwrap();
        ret[0]
    };
    let ep = b.entry_point(&s, conv, &d, STALE_FN).unwrap();
    assert_eq!(call(ep.code_ptr(), 1), STALE_FN * 1000 + 1, "{name}");
    let stale = ep.code_ptr();
    drop(ep);
    for k in 0..churn as u64 {
        let e = b.entry_point(&s, conv, &d, 10_000 + k).unwrap();
        assert_eq!(call(e.code_ptr(), 2), (10_000 + k) * 1000 + 2, "{name}");
        drop(e);
    }
    let kept: Vec<_> = (0..live as u64)
        .map(|k| b.entry_point(&s, conv, &d, 900_000 + k).unwrap())
        .collect();
    eprintln!("{name}: calling the dropped entry point");
    let r = call(stale, 3);
    eprintln!("child survived: the dropped entry point returned {r}");
    drop(kept);
}

/// Runs the scenario on bridge `backend` and checks that the child died of
/// SIGABRT with the message naming the dropped function and its signature.
#[cfg(unix)]
fn assert_stale_call_aborts(backend: usize, churn: usize, live: usize) {
    use std::os::unix::process::ExitStatusExt;
    let (status, stderr) = run_child(
        "child_calls_a_dropped_entry_point",
        &[
            ("TIERBRIDGE_CHILD", backend.to_string()),
            ("TIERBRIDGE_CHURN", churn.to_string()),
            ("TIERBRIDGE_LIVE", live.to_string()),
        ],
    );
    let what = format!(
        "bridge {} after {churn} bind+drop and {live} live bindings; stderr:\n{stderr}",
        bridge(backend).0
    );
    assert!(
        stderr.contains("calling the dropped entry point"),
        "the scenario did not get to the call: {what}"
    );
    assert!(!stderr.contains("child survived"), "{what}");
    assert_eq!(status.signal(), Some(6), "should die of SIGABRT: {what}");
    let message = format!(
        "tierbridge: called a dropped entry point (fn id {STALE_FN}, signature {SIG}, sysv)"
    );
    assert!(stderr.contains(&message), "no {message:?}: {what}");
}

#[cfg(unix)]
#[test]
fn a_dropped_entry_point_called_again_aborts_with_a_message() {
    for backend in 0..support::all_bridges().len() {
        assert_stale_call_aborts(backend, 0, 0);
    }
}

/// The dropped entry point's code is not handed to another binding while
/// fewer than `ENTRY_QUARANTINE` entry points were dropped after it: the
/// stale call still aborts, even with hundreds of other bindings alive
/// (more than a block of trampolines, so without the quarantine one of them
/// would have reused its trampoline, or its libffi closure, and the stale
/// call would run it).
#[cfg(unix)]
#[test]
fn a_stale_call_still_aborts_after_fewer_than_the_depth_of_drops() {
    for backend in 0..support::all_bridges().len() {
        assert_stale_call_aborts(backend, ENTRY_QUARANTINE - 1, 300);
    }
}

/// Resident memory of this process in bytes (Linux).
#[cfg(target_os = "linux")]
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

/// In a process of its own (nothing else allocating): after a warm-up of
/// twice the depth, 20 times the depth more bind+drop cycles leave resident
/// memory within 512 KiB of where it was (a quarantine that kept every
/// dropped entry point would hold about 20 000 of them, several MiB).
#[test]
#[ignore = "run as a child process by quarantine_memory_is_bounded_in_create_drop_loops"]
#[cfg(target_os = "linux")]
fn child_create_drop_loop() {
    let Some(backend) = env_usize("TIERBRIDGE_CHILD") else {
        return;
    };
    let (name, b) = bridge(backend);
    let (s, conv) = (sig(SIG), CallConv::SysV);
    let d = host();
    let cycles = |n: usize| {
        for k in 0..n as u64 {
            drop(b.entry_point(&s, conv, &d, k).unwrap());
        }
    };
    cycles(2 * ENTRY_QUARANTINE);
    let before = rss();
    cycles(20 * ENTRY_QUARANTINE);
    let after = rss();
    eprintln!("{name}: rss {before} -> {after}");
    assert!(
        after <= before + 512 * 1024,
        "{name}: resident memory grew from {before} to {after} bytes"
    );
    eprintln!("child done");
}

#[cfg(target_os = "linux")]
#[test]
fn quarantine_memory_is_bounded_in_create_drop_loops() {
    // The bridge's own account: exactly the depth quarantined after more
    // drops than that, and no code made for the later cycles.
    for (name, b) in support::all_bridges() {
        let (s, conv) = (sig(SIG), CallConv::SysV);
        let d = host();
        let cycles = |n: usize| {
            for k in 0..n as u64 {
                drop(b.entry_point(&s, conv, &d, k).unwrap());
            }
        };
        cycles(ENTRY_QUARANTINE / 2);
        assert_eq!(
            b.stats().quarantined,
            ENTRY_QUARANTINE / 2,
            "{name}: every drop so far quarantined"
        );
        cycles(2 * ENTRY_QUARANTINE);
        let warm = b.stats();
        assert_eq!(warm.quarantined, ENTRY_QUARANTINE, "{name}");
        cycles(10 * ENTRY_QUARANTINE);
        let later = b.stats();
        assert_eq!(later.quarantined, ENTRY_QUARANTINE, "{name}");
        assert_eq!(later.code_bytes, warm.code_bytes, "{name}: no new code");
        assert_eq!(later.quarantine_bytes, warm.quarantine_bytes, "{name}");
        assert!(later.quarantine_bytes >= ENTRY_QUARANTINE * 32, "{name}");
    }
    // And the process's: resident memory, in a clean child per backend.
    for backend in 0..support::all_bridges().len() {
        let (status, stderr) = run_child(
            "child_create_drop_loop",
            &[("TIERBRIDGE_CHILD", backend.to_string())],
        );
        assert!(
            status.success() && stderr.contains("child done"),
            "{status}: {stderr}"
        );
    }
}
