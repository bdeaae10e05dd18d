//! A hot loop, interpreter-only and tiered: the tiered run moves the running
//! frame into compiled code at a loop back-edge (OSR).
//!
//! `cargo run --release --example tier_up`

use std::sync::Arc;
use std::time::Instant;

use tierbridge::host::FailurePolicy;
use tierbridge::interp::{Runtime, parse_program};
use tierbridge::thunks::{BackendKind, Bridge};
use tierbridge::tier::TierConfig;

/// A hash-like integer loop and a float accumulation, 5 million iterations.
const PROGRAM: &str = r#"
fn hot(n: i64) -> i64
  local i: i64
  local h: i64
  local f: f64
  i64.const 1469598103934665603
  local.set h
top:
  local.get i
  local.get n
  i64.ge_s
  br_if done
  local.get h
  local.get i
  i64.xor
  i64.const 1099511628211
  i64.mul
  local.set h
  local.get f
  local.get i
  f64.convert_i64
  f64.const 0.5
  f64.mul
  f64.add
  local.set f
  local.get i
  i64.const 1
  i64.add
  local.set i
  br top
done:
  local.get h
  local.get f
  i64.trunc_f64
  i64.xor
  return
end
"#;

fn run(config: TierConfig, bridge: Arc<Bridge>, n: u64) -> (u64, f64, u64) {
    // SAFETY: this file's own program: its loads, stores and native calls are valid for every call made here.
    let rt = unsafe {
        Runtime::with_tiers(
            parse_program(PROGRAM).expect("valid"),
            bridge,
            FailurePolicy::Report,
            config,
        )
    }
    .expect("runtime");
    let t = Instant::now();
    let r = rt.call("hot", &[n]).expect("no trap");
    (
        r,
        t.elapsed().as_secs_f64() * 1e3,
        rt.tier_stats().osr_entries,
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bridge = Arc::new(Bridge::new(BackendKind::Generated)?);
    if let Some(why) = bridge.fallback_reason() {
        println!("note: {why} (the tiered run will only interpret)");
    }
    let n = 5_000_000;
    let (a, interp_ms, _) = run(TierConfig::interpreter_only(), bridge.clone(), n);
    println!("interpreter only: hot({n}) = {a:#x} in {interp_ms:.1} ms");
    let tiered = TierConfig {
        call_threshold: 1000,
        loop_threshold: 1000,
        force_deopt: false,
        ..TierConfig::default()
    };
    let (b, tiered_ms, osr) = run(tiered, bridge, n);
    println!("tiered:           hot({n}) = {b:#x} in {tiered_ms:.1} ms ({osr} OSR entries)");
    println!(
        "speedup: {:.1}x (interpreter {:.1} ms, tiered {:.1} ms, osr entries {osr}, {})",
        interp_ms / tiered_ms,
        interp_ms,
        tiered_ms,
        if a == b {
            "results equal"
        } else {
            "results differ"
        }
    );
    Ok(())
}
