//! The fault explorer under `cargo test`: a fixed range of seeds, each a whole run with
//! faults drawn from the seed and the invariants checked after every event (see
//! `baton_protocol::sim`). More seeds: `cargo run --release -p baton-protocol --example vopr
//! -- --seeds 1000`.

use baton_protocol::sim::{SimConfig, run};

/// As many as fit in about 20 s of a debug build (protocol at opt-level 2).
const SEEDS: u64 = 60;

#[test]
fn fault_explorer_seeds_hold_every_invariant() {
    let mut failed = Vec::new();
    for seed in 0..SEEDS {
        let r = run(&SimConfig::explore(seed));
        if let Some(v) = r.violations.first() {
            failed.push(format!(
                "seed {seed}: {v}\n    reproduce: cargo run --release -p baton-protocol --example vopr -- --seed {seed} --trace"
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn explorer_runs_are_reproducible_from_the_seed() {
    for seed in [3, 16, 216] {
        let (a, b) = (run(&SimConfig::explore(seed)), run(&SimConfig::explore(seed)));
        assert_eq!(a.events, b.events, "seed {seed}");
        assert_eq!(a.end, b.end, "seed {seed}");
        assert_eq!(a.outcomes, b.outcomes, "seed {seed}");
    }
}
