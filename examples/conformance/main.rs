//! Conformance runner for `abi-corpus/1` files (shared/conformance/FORMAT.md).
//!
//! ```text
//! cargo run --release --example conformance -- --backend <libffi|generated> --lib <path.so> <corpus.json>
//! ```
//!
//! Prints one line per failure (and per skipped vector, with the reason), then
//! `N passed, N failed, N skipped`. Exits non-zero if anything failed.

mod runner;

use std::path::PathBuf;
use std::process::ExitCode;

use tierbridge::thunks::BackendKind;

fn usage() -> ExitCode {
    eprintln!("usage: conformance --backend <libffi|generated> [--lib <path.so>] <corpus.json>");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut backend = None;
    let mut lib = None;
    let mut corpus = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--backend" => match args.next().map(|b| b.parse::<BackendKind>()) {
                Some(Ok(b)) => backend = Some(b),
                Some(Err(e)) => {
                    eprintln!("{e}");
                    return usage();
                }
                None => return usage(),
            },
            "--lib" => lib = args.next().map(PathBuf::from),
            _ if corpus.is_none() && !a.starts_with("--") => corpus = Some(PathBuf::from(a)),
            _ => return usage(),
        }
    }
    let (Some(backend), Some(corpus)) = (backend, corpus) else {
        return usage();
    };
    match runner::run(backend, lib.as_deref(), &corpus) {
        Ok(report) => {
            for line in report
                .skips
                .iter()
                .chain(&report.infos)
                .chain(&report.failures)
            {
                println!("{line}");
            }
            println!("{}", report.closing_line());
            if report.failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("conformance: {e}");
            println!("0 passed, 1 failed, 0 skipped");
            ExitCode::FAILURE
        }
    }
}
