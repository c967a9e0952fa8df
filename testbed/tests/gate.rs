//! Relay gating in network namespaces (issue 10): a relay whose owner's policy closes in
//! the middle of a transfer serves no one from then on; its child moves to another source
//! within 2 s, and every node still installs the exact bytes.
//!
//! Needs root (network namespaces). Without it the test prints why and returns; with
//! `BATON_REQUIRE_NETNS=1` a missing privilege fails it instead.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_testbed::cluster::Cluster;
use baton_testbed::demo::{gated_node_args, served_bytes};
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
    let nms_args: Vec<String> = [
        "--once",
        "--json",
        "--min-nodes",
        "4",
        "--settle",
        "1",
        "--discovery-timeout",
        "60",
    ]
    .map(String::from)
    .to_vec();
    let nms = c.start_nms(&nms_args, true, &[]).unwrap();
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
    let st = c.wait(nms, Duration::from_secs(180), &never).unwrap();
    assert!(st.is_some_and(|s| s.success()), "NMS: {st:?}\n{}", c.log("nms"));
    for i in 1..=4 {
        assert_eq!(
            c.installed_hash(i, PKG),
            Some(hash),
            "node {i} (the gated relay installs too):\n{}",
            c.log(&format!("node-{i}"))
        );
    }
    let s = &c.summaries()[0];
    assert_eq!(s["installed"], 4, "{s}");
    // the child's bytes came from the relay until the gate closed, then from higher up
    let relay_served = served_bytes(s, &c.node_ids[relay - 1]);
    let head_served = served_bytes(s, &c.node_ids[head - 1]);
    eprintln!("bytes served: head {head_served}, gated relay {relay_served}");
    assert!(relay_served < SIZE, "the relay served the whole package: {s}");
    assert!(head_served > SIZE, "the head served the child too: {s}");
    c.teardown();
}
