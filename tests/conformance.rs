//! The public conformance sample through the conformance runner's logic
//! (`examples/conformance/runner.rs`), on the libffi backend.

#[path = "../examples/conformance/runner.rs"]
mod runner;
mod support;

use std::sync::{Mutex, MutexGuard};

use tierbridge::thunks::BackendKind;

/// The sample library keeps process-wide state (reentrancy counters, a stored
/// callback), so two corpus runs in one process must not overlap: tests in one
/// binary run on parallel threads.
fn one_run_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn the_sample_corpus_passes_on_the_libffi_backend() {
    let (so, json) = support::sample_library();
    let _one = one_run_at_a_time();
    let report = runner::run(BackendKind::Libffi, Some(&so), &json).expect("the corpus runs");
    for line in report
        .skips
        .iter()
        .chain(&report.infos)
        .chain(&report.failures)
    {
        println!("{line}");
    }
    println!("{}", report.closing_line());
    assert_eq!(report.failed, 0, "{:#?}", report.failures);
    // Only what libffi cannot express (a packed struct with an unaligned field)
    // and hazard vectors may be skipped.
    for skip in &report.skips {
        assert!(
            skip.contains("hazard")
                || (skip.contains("packed") && skip.contains("not where natural alignment")),
            "unexpected skip: {skip}"
        );
    }
    // 142 vectors + 14 scenario steps, minus the skipped ones and the
    // informative vectors (report-only).
    assert!(report.passed >= 145, "{}", report.closing_line());
}

#[test]
fn a_corrupted_expectation_is_reported_as_a_failure() {
    let (so, json) = support::sample_library();
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let f = doc["functions"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == "sample_cb_ms6")
        .unwrap();
    f["vectors"][0]["ret"] = serde_json::json!("0x0000000000000000");
    let bad = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("corrupted.json");
    std::fs::write(&bad, doc.to_string()).unwrap();
    let _one = one_run_at_a_time();
    let report = runner::run(BackendKind::Libffi, Some(&so), &bad).unwrap();
    assert_eq!(report.failed, 1, "{:#?}", report.failures);
    assert!(report.failures[0].contains("sample_cb_ms6[0]"));
}

#[test]
fn a_file_of_another_format_is_refused() {
    let bad = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("other-format.json");
    std::fs::write(&bad, r#"{"format":"abi-corpus/2"}"#).unwrap();
    let err = runner::run(BackendKind::Libffi, None, &bad).unwrap_err();
    assert!(err.contains("abi-corpus/1"), "{err}");
}

/// Needs generated code.
#[test]
#[cfg(tierbridge_codegen)]
fn the_sample_corpus_passes_on_the_generated_backend_with_either_memory_strategy() {
    let (so, json) = support::sample_library();
    for (name, bridge) in support::all_bridges().into_iter().skip(1) {
        let _one = one_run_at_a_time();
        let report = runner::run_bridge(&bridge, Some(&so), &json).expect("the corpus runs");
        println!("{name}: {}", report.closing_line());
        assert_eq!(report.failed, 0, "{name}: {:#?}", report.failures);
        // Generated code expresses everything in the sample; only the
        // optional hazard vectors (longjmp across bridge frames) are skipped.
        assert!(
            report.skips.iter().all(|s| s.contains("hazard")),
            "{name}: {:#?}",
            report.skips
        );
        assert!(report.passed >= 150, "{name}: {}", report.closing_line());
    }
}
