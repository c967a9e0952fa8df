//! The attack suite at CI size: a rogue peer against a live fleet in namespaces (see
//! `baton_testbed::attack`). It asserts that nothing but the NMS's package is installed, that
//! every node's RSS stays under 64 MiB, and that the fleet's own campaign completes.
//!
//! Needs root (network namespaces). Without it this prints why and returns; with
//! `BATON_REQUIRE_NETNS=1` (set by `.ci/run`) a missing privilege fails it instead.

use std::path::PathBuf;
use std::time::Duration;

use baton_testbed::attack::{self, Scale, SuiteOptions};
use baton_testbed::netns;

#[test]
fn a_rogue_peer_installs_nothing_exhausts_no_node_and_does_not_stop_the_campaign() {
    if !netns::available_for_tests() {
        return;
    }
    let opts = SuiteOptions {
        nodes: 4,
        size: 8 << 20,
        scale: Scale::small(),
        campaign_timeout: Duration::from_secs(30),
        keep: std::env::var_os("BATON_KEEP").is_some(),
    };
    let report = attack::run_suite(&opts, PathBuf::from(env!("CARGO_BIN_EXE_baton-testbed")), &|| {
        false
    })
    .expect("the attack suite could not run");
    let table = report.render();
    println!("{table}");
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{table}\n{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
