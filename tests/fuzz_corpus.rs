//! The fuzz targets (fuzz/, README "Fuzzing") on their checked-in corpus,
//! in the ordinary test suite on stable Rust: every file of every target's
//! corpus (fuzz/corpus/<target>/) through every target. Each target panics
//! exactly when it finds something wrong (a round trip that changes a
//! signature or a program, a call across the bridge that delivers other
//! values, tiers that disagree); invalid input returns quietly. The corpus
//! holds the inputs fuzzing found interesting, so these tests replay what
//! the fuzzer covered.
#![deny(unsafe_op_in_unsafe_fn)]

#[path = "../fuzz/common/mod.rs"]
mod common;

use std::path::PathBuf;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("sig_text", common::sig_text),
    ("program_text", common::program_text),
    ("bridge_calls", common::bridge_calls),
    ("tiers_agree", common::tiers_agree),
];

/// Every file of one target's corpus, sorted by name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Runs `target` on every file of `from`'s corpus, naming the file that fails.
fn replay(target: &str, f: Target, from: &str) -> usize {
    let files = corpus(from);
    for (path, bytes) in &files {
        let r = std::panic::catch_unwind(|| f(bytes));
        assert!(
            r.is_ok(),
            "target {target} failed on {} (replay it with `cargo fuzz run {target} {}` in fuzz/)",
            path.display(),
            path.display()
        );
    }
    files.len()
}

fn replay_everywhere(target: &str) {
    let f = TARGETS.iter().find(|(n, _)| *n == target).unwrap().1;
    let mut own = 0;
    for (from, _) in TARGETS {
        let n = replay(target, f, from);
        if from == target {
            own = n;
        }
    }
    assert!(own >= 5, "the {target} corpus has only {own} files");
}

#[test]
fn signature_text_round_trips_on_the_corpus() {
    replay_everywhere("sig_text");
}

#[test]
fn program_text_parses_and_round_trips_on_the_corpus() {
    replay_everywhere("program_text");
}

#[test]
fn every_exit_stub_calls_every_entry_point_on_the_corpus() {
    replay_everywhere("bridge_calls");
}

#[test]
fn every_tier_agrees_on_the_corpus_programs() {
    replay_everywhere("tiers_agree");
}

/// `program_text` checks the parser against this module's printer, which
/// declines a program it cannot print (a name the parser took from a
/// context the printer does not reproduce): it must print the corpus's
/// programs, or the round trip would check nothing.
#[test]
fn the_program_printer_prints_the_corpus_programs() {
    let mut printed = 0;
    for (_, bytes) in corpus("program_text") {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let Ok(p) = tierbridge::interp::parse_program(text) {
            printed += usize::from(common::program::print_program(&p).is_some());
        }
    }
    assert!(printed >= 5, "only {printed} programs printed");
}
