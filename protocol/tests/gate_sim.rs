//! Relay gating on the simulator (issue 10): nodes whose owner's policy (`ac`) gates
//! relaying because they run on a low battery. The NMS does not know before the campaign
//! (the first manifest is signed in the fleet's order), so gated nodes are planned as
//! relays: they install their own copy, serve nothing (the simulator checks every chunk
//! served against the node's gate), hold their part for the grace period and hand it back,
//! and the NMS offers it itself. A later campaign, planned with what the nodes reported,
//! puts them at the leaves.

use std::time::Duration;

use baton_protocol::manifest::Transfer;
use baton_protocol::plan::Tree;
use baton_protocol::sim::{Faults, SimConfig, run};

fn config(gated: Vec<(usize, Option<Duration>)>, grace_secs: u32) -> SimConfig {
    SimConfig {
        nodes: 15,
        fanout: 2,
        transfer: Transfer::CutThrough,
        size: 4 << 20,
        chunk_size: 64 * 1024,
        link_bps: 100_000_000,
        seed: 21,
        gated,
        grace_secs,
        max_time: Duration::from_secs(600),
        ..SimConfig::default()
    }
}

/// The relays of the plan of `n` addressees in the fleet's order (as the first manifest).
fn relays(n: usize, fanout: u8) -> Vec<usize> {
    let ids: Vec<_> = (0..n as u64).map(baton_protocol::id::fake_id).collect();
    let tree = Tree::plan(&ids, fanout, &baton_protocol::plan::no_leaves);
    (0..n)
        .filter(|i| tree.parent.values().any(|p| *p == Some(ids[*i])))
        .collect()
}

#[test]
fn gated_relays_serve_nothing_and_hand_their_part_back() {
    let rel = relays(15, 2);
    let gated: Vec<usize> = rel.iter().copied().take(2).collect();
    assert_eq!(gated.len(), 2, "the plan has relays: {rel:?}");
    let clean = run(&config(Vec::new(), 5));
    assert!(clean.violations.is_empty(), "{:?}", clean.violations);
    let t0 = clean.completion().expect("the run without gates completes");
    let r = run(&config(gated.iter().map(|&i| (i, None)).collect(), 5));
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let done = r.completion().expect("every node installs, gated ones too");
    for &g in &gated {
        assert_eq!(r.served[g], 0, "gated node {g} served chunks");
        assert!(
            r.installed_at[g].is_some(),
            "gated node {g} installed its own copy"
        );
    }
    assert!(r.handed_back >= 1, "no hand-back: {r:?}");
    assert_eq!(r.outcomes[0], (15, 0, 15));
    println!(
        "15 nodes, 4 MiB, 2 gated relays, grace 5 s: all installed at {:.2} s (without gates {:.2} s), \
         {} hand-back(s), NMS sent {:.2} copies",
        done.as_secs_f64(),
        t0.as_secs_f64(),
        r.handed_back,
        r.nms_copies
    );
    // each gated relay on the way (the NMS learns of one only when it reports) holds its
    // part at most the grace period, then it goes on from the NMS
    let grace = Duration::from_secs(5);
    assert!(done <= t0 * 3 + grace * 2, "{done:?} against {t0:?}");
}

#[test]
fn a_gate_that_opens_within_the_grace_period_keeps_the_part() {
    let rel = relays(15, 2);
    let g = rel[0];
    let r = run(&config(vec![(g, Some(Duration::from_secs(2)))], 60));
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert!(r.completion().is_some(), "every node installs");
    assert_eq!(r.handed_back, 0, "handed back although the gate opened in time");
    assert!(
        r.served[g] > 0,
        "the relay served its children once its gate opened"
    );
}

#[test]
fn a_later_campaign_plans_the_gated_nodes_at_the_leaves() {
    let rel = relays(15, 2);
    let gated: Vec<usize> = rel.iter().copied().take(3).collect();
    let r = run(&SimConfig {
        faults: Faults {
            campaigns: vec![Duration::ZERO, Duration::from_secs(30)],
            ..Faults::default()
        },
        max_time: Duration::from_secs(600),
        ..config(gated.iter().map(|&i| (i, None)).collect(), 5)
    });
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(
        r.outcomes[1],
        (15, 0, 15),
        "the second campaign installs everywhere"
    );
    assert_eq!(
        r.leaves_gated_in_last_plan,
        Some(true),
        "gated nodes relay in the second plan"
    );
    for &g in &gated {
        assert_eq!(r.served[g], 0, "gated node {g} served chunks");
    }
}

/// In a chain, the gated nodes of a later campaign hang off the last relay, deep in the
/// path: each takes chunks from its parent and from the relays above it, never from the
/// NMS, so the last relay's uplink does not carry both alone.
#[test]
fn gated_leaves_in_a_chain_fetch_from_several_relays() {
    let rel = relays(8, 1);
    let gated: Vec<usize> = vec![rel[1], rel[4]];
    let r = run(&SimConfig {
        nodes: 8,
        fanout: 1,
        faults: Faults {
            campaigns: vec![Duration::ZERO, Duration::from_secs(30)],
            ..Faults::default()
        },
        ..config(gated.iter().map(|&i| (i, None)).collect(), 5)
    });
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(
        r.outcomes[1],
        (8, 0, 8),
        "the second campaign installs everywhere"
    );
    assert_eq!(r.leaves_gated_in_last_plan, Some(true));
    for &g in &gated {
        assert_eq!(r.served[g], 0, "gated node {g} served chunks");
        let from: Vec<usize> = r.fed_by[g]
            .iter()
            .filter(|(k, _)| *k == 1)
            .map(|(_, s)| *s)
            .collect();
        assert!(
            !from.contains(&0),
            "gated leaf {g} fetched from the NMS: {from:?}"
        );
        assert!(from.len() >= 3, "gated leaf {g} fetched from {from:?} only");
    }
}
