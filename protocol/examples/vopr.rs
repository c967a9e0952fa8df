//! The fault explorer: simulated runs whose fleet, package, plan and faults are all drawn
//! from a seed, with the invariants checked after every event (see `baton_protocol::sim`).
//!
//! `cargo run --release -p baton-protocol --example vopr -- --seeds N [--start S]`
//! `cargo run --release -p baton-protocol --example vopr -- --seed S [--trace]`
//!
//! Prints one line per failing seed with the command that reproduces it, then a summary;
//! exits non-zero if any seed failed.

// an example, not the core: it may read the clock (a default seed, the time taken)
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Instant;

use baton_protocol::sim::{SimConfig, run};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Option<u64> {
        let i = args.iter().position(|a| a == name)?;
        match args.get(i + 1).and_then(|v| v.parse().ok()) {
            Some(v) => Some(v),
            None => {
                eprintln!("{name} needs a number");
                std::process::exit(2);
            }
        }
    };
    let trace = args.iter().any(|a| a == "--trace");
    if let Some(seed) = value("--seed") {
        let mut cfg = SimConfig::explore(seed);
        cfg.trace = trace;
        println!("seed {seed}: {}", cfg.describe());
        let t0 = Instant::now();
        let r = run(&cfg);
        for line in &r.trace {
            println!("{line}");
        }
        println!(
            "seed {seed}: {} events, {:.3} s virtual, {:.3} s real; per campaign (installed, failed, total): {:?}",
            r.events,
            r.end.as_secs_f64(),
            t0.elapsed().as_secs_f64(),
            r.outcomes
        );
        for v in &r.violations {
            println!("seed {seed}: VIOLATION {v}");
        }
        std::process::exit(if r.violations.is_empty() { 0 } else { 1 });
    }
    let seeds = value("--seeds").unwrap_or(100);
    let start = value("--start").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            % 1_000_000_000_000
    });
    println!("fault explorer: seeds {start}..{} ({seeds} seeds)", start + seeds);
    let t0 = Instant::now();
    let (mut failed, mut events) = (0u64, 0u64);
    for seed in start..start + seeds {
        let r = run(&SimConfig::explore(seed));
        events += r.events;
        if let Some(v) = r.violations.first() {
            failed += 1;
            println!(
                "FAIL seed {seed}: {v}\n    reproduce: cargo run --release -p baton-protocol --example vopr -- --seed {seed} --trace"
            );
        }
    }
    let took = t0.elapsed();
    println!(
        "{seeds} seeds from {start}: {failed} failed, {} passed; {events} events in {:.1} s",
        seeds - failed,
        took.as_secs_f64()
    );
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
