//! The OSR transfer of a frame with 16 locals: interpreter frame → migration
//! buffer → compiled code's OSR entry → the loop header (which exits at
//! once) → result back. `cargo bench --bench tier`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tierbridge::host::FailurePolicy;
use tierbridge::interp::{Runtime, parse_program};
use tierbridge::thunks::{BackendKind, Bridge};
use tierbridge::tier::TierConfig;

fn program() -> String {
    let mut p = String::from("fn osr16(a: i64, b: i64) -> i64\n");
    for k in 0..14 {
        p.push_str(&format!("  local l{k}: i64\n"));
    }
    // The loop header is instruction 0: exits when a >= b, returning l13.
    p.push_str("top:\n  local.get a\n  local.get b\n  i64.ge_s\n  br_if done\n");
    p.push_str("  local.get a\n  i64.const 1\n  i64.add\n  local.set a\n  br top\n");
    p.push_str("done:\n  local.get l13\n  return\nend\n");
    p
}

fn osr(c: &mut Criterion) {
    let bridge = Arc::new(Bridge::new(BackendKind::Generated).unwrap());
    let config = TierConfig {
        call_threshold: u32::MAX,
        loop_threshold: u32::MAX - 1,
        force_deopt: false,
        ..TierConfig::default()
    };
    // SAFETY: this file's own program: its loads, stores and native calls are valid for every call made here.
    let rt = unsafe {
        Runtime::with_tiers(
            parse_program(&program()).unwrap(),
            bridge,
            FailurePolicy::Report,
            config,
        )
    }
    .unwrap();
    let mut locals = [0u64; 16];
    locals[0] = 5; // a >= b: the loop exits at the header
    locals[15] = 42; // l13
    assert_eq!(rt.osr_enter("osr16", 0, &locals).unwrap(), Some(42));
    c.bench_function("OSR transfer, 16 locals", |b| {
        b.iter(|| {
            rt.osr_enter(black_box("osr16"), 0, black_box(&locals))
                .unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = osr
}
criterion_main!(benches);
