//! The fault explorer: simulated runs whose fleet, package, plan and faults are all drawn
//! from a seed, with the invariants checked after every event (see `baton_protocol::sim`).
//!
//! `cargo run --release -p baton-protocol --example vopr -- --seeds N [--start S] [--threads T]`
//! `cargo run --release -p baton-protocol --example vopr -- --seed S [--trace]`
//!
//! Seeds run on every core (or `--threads T`); failing seeds are printed in seed order,
//! each with the command that reproduces it, then a summary. Exits non-zero if any seed
//! failed. A seed whose run panics counts as failed.

// an example, not the core: it may read the clock (a default seed, the time taken) and
// run threads
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use baton_protocol::sim::{SimConfig, run};

/// What one seed gave: its events and its first violation (or panic).
fn explore(seed: u64) -> (u64, Option<String>) {
    match catch_unwind(AssertUnwindSafe(|| run(&SimConfig::explore(seed)))) {
        Ok(r) => (r.events, r.violations.first().cloned()),
        Err(p) => {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            (0, Some(format!("the run panicked: {what}")))
        }
    }
}

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
    let threads = value("--threads")
        .map(|t| t.max(1) as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!(
        "fault explorer: seeds {start}..{} ({seeds} seeds, {threads} threads)",
        start + seeds
    );
    let t0 = Instant::now();
    let (mut failed, mut events) = (0u64, 0u64);
    let next = AtomicU64::new(start);
    let end = start + seeds;
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let tx = tx.clone();
            let next = &next;
            s.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    if tx.send((seed, explore(seed))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // results come in any order; they are printed in seed order
        let mut done = BTreeMap::new();
        let mut print_from = start;
        for (seed, r) in rx {
            done.insert(seed, r);
            while let Some((n, v)) = done.remove(&print_from) {
                events += n;
                if let Some(v) = v {
                    failed += 1;
                    println!(
                        "FAIL seed {print_from}: {v}\n    reproduce: cargo run --release -p baton-protocol --example vopr -- --seed {print_from} --trace"
                    );
                }
                print_from += 1;
            }
        }
    });
    let took = t0.elapsed();
    println!(
        "{seeds} seeds from {start}: {failed} failed, {} passed; {events} events in {:.1} s",
        seeds - failed,
        took.as_secs_f64()
    );
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
