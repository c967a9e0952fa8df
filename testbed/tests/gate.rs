//! Relay gating in network namespaces (issue 10): a relay whose owner's policy closes in
//! the middle of a transfer serves no one from then on; its child moves to another source
//! within 2 s, and every node still installs the exact bytes. Two nodes whose owners keep
//! relaying closed from the start, chosen among the relays of the plan an NMS without
//! their adverts would make: the NMS plans around them, every node installs, the gated
//! ones serve nothing (by the NMS's per-node figures) and fetch from several relays, and
//! the campaign's time is compared with T1 measured on the same links (a miss of 1.2 × T1
//! is reported, not failed: timings on a loaded machine are not the code's fault; and
//! with 2 of 8 nodes serving nothing no plan ends before 8/7 T1, so the chain's own
//! overhead decides).
//!
//! Needs root (network namespaces). Without it the test prints why and returns; with
//! `BATON_REQUIRE_NETNS=1` a missing privilege fails it instead.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_protocol::NodeId;
use baton_protocol::manifest::Manifest;
use baton_testbed::bench::{BenchCtx, Method, T1};
use baton_testbed::cluster::{Cluster, nms_args, write_pseudo_random};
use baton_testbed::demo::{gated_node_args, plain_plan_relays, served_bytes, summary_node};
use baton_testbed::netns::{self, NetSpec};

const PKG: &str = "frob";
const SIZE: u64 = 24 << 20;

fn never() -> bool {
    false
}

#[test]
fn a_relay_gated_mid_transfer_hands_its_child_to_another_source_within_2_s() {
    if !netns::available_for_tests() {
        return;
    }
    let spec = NetSpec {
        hosts: 5,
        rate: Some("40mbit".into()),
        ..NetSpec::default()
    };
    let mut c = Cluster::create(&spec, PathBuf::from(env!("CARGO_BIN_EXE_baton-testbed"))).expect("cluster");
    // the NMS's default plan is a chain in id order: head -> relay -> child -> last
    let chain = c.chain();
    let (head, relay, child) = (chain[0], chain[1], chain[2]);
    for i in 1..=4 {
        // every node relays while its probe reads an idle CPU
        let args = gated_node_args(&c, i).unwrap();
        std::fs::write(c.node_dir(i).join("probe"), "idle\n").unwrap();
        c.start_node(i, &args).unwrap();
    }
    let nms = c.start_nms(&nms_args(4, true), true, &[]).unwrap();
    let hash = c.drop_package("frob-1.0.tar.gz", SIZE, 7).unwrap();
    let child_log = format!("node-{child}");
    assert!(
        c.wait_until(Duration::from_secs(90), |c| c.progress(child, PKG, SIZE) >= 0.15),
        "the child never got 15% of the package:\n{}",
        c.log(&child_log)
    );
    let at_flip = c.progress(child, PKG, SIZE);
    assert!(at_flip < 0.9, "the transfer is nearly over already ({at_flip})");
    let before = c.log(&child_log).len();
    // the relay's owner gets busy
    let t0 = Instant::now();
    std::fs::write(c.node_dir(relay).join("probe"), "busy\n").unwrap();
    let moved = c.wait_until(Duration::from_secs(2), |c| {
        c.log(&child_log)
            .get(before..)
            .is_some_and(|l| l.contains("moving from source"))
    });
    let took = t0.elapsed();
    assert!(
        moved,
        "the child did not move within 2 s of the relay's gate closing:\nrelay:\n{}\nchild:\n{}",
        c.log(&format!("node-{relay}")),
        c.log(&child_log)
    );
    eprintln!(
        "relay gated with the child at {:.0}%: the child moved to another source {:.0} ms after the probe turned busy",
        at_flip * 100.0,
        took.as_secs_f64() * 1000.0
    );
    assert!(
        c.log(&format!("node-{relay}")).contains("relaying gated (idle)"),
        "the relay must log its gate"
    );
    let s = &c.assert_installed(nms, Duration::from_secs(180), 1..=4, PKG, hash);
    assert_eq!(s["installed"], 4, "{s}");
    // the child's bytes came from the relay until the gate closed, then from higher up
    let relay_served = served_bytes(s, &c.node_ids[relay - 1]);
    let head_served = served_bytes(s, &c.node_ids[head - 1]);
    eprintln!("bytes served: head {head_served}, gated relay {relay_served}");
    assert!(relay_served < SIZE, "the relay served the whole package: {s}");
    assert!(head_served > SIZE, "the head served the child too: {s}");
    c.teardown();
}

/// The campaign's time against T1 in the gated run: at most this multiple (issue 10).
const GATED_MAX_T1: f64 = 1.2;

/// T1 on the cluster's links: one HTTP copy of `size` bytes from host 0 to node 1 (the
/// bench's `t1` method), before any daemon runs. Seconds.
fn t1(c: &Cluster, size: u64, rate: &str) -> f64 {
    baton_testbed::bench::procs::use_helper_program(PathBuf::from(env!("CARGO_BIN_EXE_baton-testbed")));
    let dir = c.dir.join("t1");
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let package = dir.join("t1.bin");
    let root_hash = write_pseudo_random(&package, size, 11).unwrap();
    let ctx = BenchCtx {
        net: &c.net,
        nodes: 1,
        package,
        size,
        root_hash,
        workdir: dir.join("run"),
        rate_bps: netns::parse_rate(rate).unwrap(),
        timeout: Duration::from_secs(60),
    };
    let r = T1.run(&ctx).expect("measuring T1");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        r.error.is_none(),
        "T1 (one HTTP copy to node 1) failed: {:?}",
        r.error
    );
    r.wall.expect("T1 copy verified").as_secs_f64()
}

/// The manifest of the one campaign the NMS ran.
fn manifest(c: &Cluster) -> Manifest {
    let root = c.nms_dir().join("campaigns");
    let dir = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .find(|e| e.path().join("manifest.cbor").exists())
        .expect("the NMS saved its campaign's manifest");
    let body = std::fs::read(dir.path().join("manifest.cbor")).unwrap();
    ciborium::from_reader(&body[..]).expect("a manifest")
}

#[test]
fn two_relays_gated_from_the_start_are_planned_around_serve_nothing_and_everyone_installs() {
    if !netns::available_for_tests() {
        return;
    }
    const NODES: usize = 8;
    const SIZE: u64 = 8 << 20;
    const RATE: &str = "20mbit";
    let spec = NetSpec {
        hosts: NODES + 1,
        rate: Some(RATE.into()),
        ..NetSpec::default()
    };
    let mut c = Cluster::create(&spec, PathBuf::from(env!("CARGO_BIN_EXE_baton-testbed"))).expect("cluster");
    // two nodes that would relay in a plan made without their adverts (a chain in id order)
    let gated = plain_plan_relays(&c.node_ids, 1, 2);
    assert_eq!(gated.len(), 2, "the plain plan has relays");
    let t1 = t1(&c, SIZE, RATE);
    eprintln!("T1 (one HTTP copy of {SIZE} bytes to node 1 over the same links) = {t1:.2} s");
    for i in 1..=NODES {
        let args = if gated.contains(&i) {
            gated_node_args(&c, i).unwrap()
        } else {
            Vec::new()
        };
        c.start_node(i, &args).unwrap();
    }
    let nms_args: Vec<String> = [
        "--once",
        "--json",
        "--min-nodes",
        "8",
        "--settle",
        "0",
        "--settle-file",
        "0.15",
        "--discovery-timeout",
        "60",
    ]
    .map(String::from)
    .to_vec();
    let nms = c.start_nms(&nms_args, true, &[]).unwrap();
    // the gated nodes' first adverts say so: once the NMS has discovered every node it
    // knows which of them relay
    assert!(
        c.wait_until(Duration::from_secs(60), |c| c
            .log("nms")
            .contains(&format!("\"known\":{NODES}"))),
        "the NMS did not discover all {NODES} nodes:\n{}",
        c.log("nms")
    );
    let t0 = Instant::now();
    let hash = c.drop_package("frob-1.0.tar.gz", SIZE, 9).unwrap();
    let st = c.wait(nms, Duration::from_secs(75), &never).unwrap();
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(st.is_some_and(|s| s.success()), "NMS: {st:?}\n{}", c.log("nms"));
    for i in 1..=NODES {
        assert_eq!(
            c.installed_hash(i, PKG),
            Some(hash),
            "node {i}{} did not install the exact bytes:\n{}",
            if gated.contains(&i) { " (gated)" } else { "" },
            c.log(&format!("node-{i}"))
        );
    }
    let s = &c.summaries()[0];
    assert_eq!(s["installed"], NODES, "{s}");
    // the NMS planned with the adverts: the gated nodes end the list as leaf-only nodes
    // (they hang off the chain's last relay), not where the id order would put them; so
    // no grace period is waited (the default 60 s would show)
    let m = manifest(&c);
    let gated_ids: Vec<NodeId> = gated.iter().map(|&g| c.node_ids[g - 1]).collect();
    let mut sorted = c.node_ids.clone();
    sorted.sort();
    let (expected, leaves) = baton_protocol::plan::plan_order(&sorted, 1, |n| {
        if gated_ids.contains(n) {
            baton_protocol::gate::RelayHint::Gated
        } else {
            baton_protocol::gate::RelayHint::Open
        }
    });
    assert_ne!(
        sorted, expected,
        "the test's gated nodes must be relays of the plain plan"
    );
    assert_eq!(
        (&m.addressees, m.plan.leaves as usize),
        (&expected, leaves),
        "the NMS did not plan with the gated nodes' adverts"
    );
    let leaf: Vec<NodeId> = m.addressees[m.addressees.len() - leaves..].to_vec();
    let tree = baton_protocol::plan::Tree::plan(&m.addressees, 1, &|n| leaf.contains(n));
    let relays_gated: Vec<usize> = gated
        .iter()
        .copied()
        .filter(|&g| tree.parent.values().any(|p| *p == Some(c.node_ids[g - 1])))
        .collect();
    assert!(
        relays_gated.is_empty(),
        "gated nodes {relays_gated:?} relay in the NMS's plan"
    );
    let mut served = Vec::new();
    for (i, id) in c.node_ids.iter().enumerate() {
        served.push(format!("node {} {}", i + 1, served_bytes(s, id)));
    }
    eprintln!(
        "gated nodes {gated:?} (still planned as relays: {relays_gated:?}); bytes served per the NMS: {}; NMS sent {} copies",
        served.join(", "),
        s["nms_copies"]
    );
    for &g in &gated {
        assert_eq!(
            served_bytes(s, &c.node_ids[g - 1]),
            0,
            "gated node {g} served bytes by the NMS's figures: {s}"
        );
        // leaf-only, deep in the chain: it fetched from its parent and the relays above
        let node = summary_node(s, &c.node_ids[g - 1])
            .unwrap_or_else(|| panic!("gated node {g} is not in the summary: {s}"));
        let sources = node["sources"].as_array().cloned().unwrap_or_default();
        assert!(
            sources.len() >= 3 && sources.iter().all(|x| x["nms"] == false),
            "gated node {g} fetched from {sources:?}: not from its parent and the relays above it"
        );
    }
    // with equal links, 8 copies over the 7 uplinks that relay (the NMS's and 6 nodes')
    // take at least 8/7 T1 whatever the plan
    let bound = NODES as f64 / (NODES - gated.len() + 1) as f64;
    eprintln!("no plan in which the gated nodes serve nothing ends before {bound:.2} x T1");
    let wall = s["wall_secs"].as_f64().expect("the summary's wall_secs");
    let ratio = wall / t1;
    eprintln!(
        "campaign {wall:.2} s (NMS summary; {elapsed:.2} s from the drop to the NMS's exit) = {ratio:.2} x T1 ({t1:.2} s); target <= {GATED_MAX_T1} x T1"
    );
    if ratio > GATED_MAX_T1 {
        // timings on a loaded machine: reported, not failed (as the fault suite does)
        eprintln!(
            "TIMING TARGET MISSED: the campaign took {wall:.2} s = {ratio:.2} x T1 ({t1:.2} s), more than {GATED_MAX_T1} x T1"
        );
    }
    c.teardown();
}
