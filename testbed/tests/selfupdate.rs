//! Fleet-wide self-update in network namespaces (issue 11): a running fleet's agent is
//! upgraded to a distinct build while a package campaign relays, and a broken agent (one
//! that exits at start) is rolled back by every node that tried it, the campaign halted
//! and the fleet still working.
//!
//! Needs root (network namespaces) and the `baton-node` executable built next to the
//! testbed's (`cargo build -p baton-node`). Without root the tests print why and return;
//! with `BATON_REQUIRE_NETNS=1` a missing privilege fails them instead.

use std::path::PathBuf;
use std::time::Duration;

use baton_testbed::cluster::{Cluster, nms_args};
use baton_testbed::demo::summary_node;
use baton_testbed::netns::{self, NetSpec};
use baton_testbed::selfupdate::{
    agent_copy, build_id, built_agent, node_exe, start_agents, summary_of, wait_for_agents,
};

const NODES: usize = 3;

/// The 'new' agent: the same code as the running one with bytes appended (another build
/// id), written into the cluster's staging folder.
fn new_agent(c: &Cluster) -> (PathBuf, String) {
    let built = built_agent(&PathBuf::from(env!("CARGO_BIN_EXE_baton-testbed"))).unwrap();
    let new = c.dir.join("staging").join("baton-node-new");
    let build = agent_copy(&built, &new, b"\nbaton testbed: another build of the agent\n").unwrap();
    (new, build)
}

fn fleet(halt_after: Option<&str>) -> (Cluster, Vec<usize>, String) {
    fleet_env(halt_after, |_| Vec::new())
}

/// A fleet of `NODES` nodes running their own copies of the agent, each started with the
/// environment `env` gives for the new agent's build id.
fn fleet_env(
    halt_after: Option<&str>,
    env: impl Fn(&str) -> Vec<(&'static str, String)>,
) -> (Cluster, Vec<usize>, String) {
    let testbed = PathBuf::from(env!("CARGO_BIN_EXE_baton-testbed"));
    let built = built_agent(&testbed).expect("the baton-node executable");
    let mut c = Cluster::create(&NetSpec::with_hosts(NODES + 1), testbed).expect("cluster");
    let old = c.dir.join("staging").join("agent-old");
    let old_build = agent_copy(&built, &old, b"").expect("the running agent");
    let (_, new_build) = new_agent(&c);
    let env = env(&new_build);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let procs = start_agents(&mut c, &old, &env).expect("nodes");
    let mut args = nms_args(NODES, false);
    if let Some(h) = halt_after {
        args.extend(["--halt-after".to_string(), h.to_string()]);
    }
    c.start_nms(&args, true, &[]).expect("nms");
    // before: every node reports the agent it runs
    let (ok, seen) = wait_for_agents(&c, Duration::from_secs(30), |a| {
        a.build == old_build && a.previous.is_none()
    });
    assert!(
        ok,
        "the inventory never showed every node's agent build {old_build}: {seen:?}\n{}",
        c.log("nms")
    );
    eprintln!("before: {seen:?}");
    (c, procs, old_build)
}

/// Drops a 2 MiB package `file` (bytes from `seed`) and checks that every node installs
/// it within 30 s; `what` says what failed otherwise.
fn fleet_installs(c: &Cluster, file: &str, seed: u64, what: &str) {
    let hash = c.drop_package(file, 2 << 20, seed).unwrap();
    assert!(
        c.wait_until(Duration::from_secs(30), |c| (1..=NODES)
            .all(|i| c.installed_hash(i, "frob") == Some(hash))),
        "{what}:\n{}",
        logs(c)
    );
}

/// The agent campaign's summary, once it ended within `within`.
fn agent_summary(c: &Cluster, within: Duration) -> serde_json::Value {
    assert!(
        c.wait_until(within, |c| summary_of(c, "baton-node").is_some()),
        "the agent campaign did not end:\n{}",
        logs(c)
    );
    let s = summary_of(c, "baton-node").unwrap();
    eprintln!("summary: {s}");
    s
}

/// Node `i` (cluster process `p`) still runs, as the process it was (`pid`), on the
/// agent it ran before (`old_build`).
fn runs_previous_agent(c: &mut Cluster, i: usize, p: usize, pid: Option<u32>, old_build: &str) {
    let running = c.running(p);
    assert!(running, "node {i} is not running:\n{}", logs(c));
    assert_eq!(c.pid(p), pid, "node {i} was restarted by someone else");
    assert_eq!(
        build_id(&node_exe(c, i)).unwrap(),
        old_build,
        "node {i} runs its previous agent"
    );
}

fn logs(c: &Cluster) -> String {
    let mut s = format!("--- nms\n{}", c.log("nms"));
    for i in 1..=NODES {
        s += &format!("--- node {i}\n{}", c.log(&format!("node-{i}")));
    }
    s
}

#[test]
fn a_running_fleet_switches_to_a_new_agent_build_while_relaying_goes_on() {
    if !netns::available_for_tests() {
        return;
    }
    let (mut c, procs, old_build) = fleet(None);
    let pids: Vec<Option<u32>> = procs.iter().map(|p| c.pid(*p)).collect();
    let (new, new_build) = new_agent(&c);
    assert_ne!(new_build, old_build);
    // the agent campaign, and a larger package campaign that is still relaying when the
    // nodes switch: it goes on after their restart, resumed from their disks
    let answer = c
        .nms_command(&["publish-agent", new.to_str().unwrap(), "--version", "0.1.1"])
        .unwrap();
    let frob = c.drop_package("frob-1.0.tar.gz", 32 << 20, 3).unwrap();
    eprintln!("publish-agent: {answer}");
    let (ok, seen) = wait_for_agents(&c, Duration::from_secs(75), |a| {
        a.build == new_build
            && a.previous.as_deref() == Some(old_build.as_str())
            && a.version == env!("CARGO_PKG_VERSION")
    });
    assert!(
        ok,
        "not every node reports the new build {new_build}: {seen:?}\n{}",
        logs(&c)
    );
    eprintln!("after: {seen:?}");
    assert!(
        c.wait_until(Duration::from_secs(60), |c| (1..=NODES)
            .all(|i| c.installed_hash(i, "frob") == Some(frob))),
        "the package campaign did not complete on every node:\n{}",
        logs(&c)
    );
    let s = agent_summary(&c, Duration::from_secs(30));
    assert_eq!(s["installed"], NODES, "{s}");
    let resumed = (1..=NODES)
        .filter(|i| {
            c.log(&format!("node-{i}"))
                .lines()
                .any(|l| l.contains("resumed from disk") && l.contains("package=frob"))
        })
        .count();
    eprintln!(
        "{resumed} of {NODES} nodes switched agents in the middle of the package campaign and resumed it"
    );
    for (i, p) in (1..=NODES).zip(&procs) {
        // the same process (re-executed in place, as systemd's MainPID), now the new build
        assert!(c.running(*p), "node {i} is not running:\n{}", logs(&c));
        assert_eq!(c.pid(*p), pids[i - 1]);
        let exe = node_exe(&c, i);
        assert_eq!(build_id(&exe).unwrap(), new_build, "node {i}'s executable");
        assert_eq!(
            build_id(&exe.with_file_name("baton-node.prev")).unwrap(),
            old_build,
            "node {i} keeps the previous agent"
        );
    }
    // the fleet works on the new agent
    fleet_installs(
        &c,
        "frob-2.0.tar.gz",
        4,
        "the new agents did not install the next package",
    );
    c.teardown();
}

#[test]
fn a_broken_agent_is_rolled_back_by_every_node_that_tried_it_and_the_campaign_halts() {
    if !netns::available_for_tests() {
        return;
    }
    let (mut c, procs, old_build) = fleet(Some("1"));
    let pids: Vec<Option<u32>> = procs.iter().map(|p| c.pid(*p)).collect();
    // a valid executable for this machine that exits at once
    let broken = c.dir.join("staging").join("broken");
    std::fs::copy("/bin/false", &broken).unwrap();
    c.nms_command(&["publish-agent", broken.to_str().unwrap(), "--version", "0.1.2"])
        .unwrap();
    let s = agent_summary(&c, Duration::from_secs(60));
    assert_eq!(s["installed"], 0, "{s}");
    assert!(s["halted"].is_string(), "the campaign was not halted: {s}");
    let failed = s["failed"].as_array().unwrap();
    assert!(!failed.is_empty(), "{s}");
    let mut tried = 0;
    for (i, p) in (1..=NODES).zip(&procs) {
        runs_previous_agent(&mut c, i, *p, pids[i - 1], &old_build);
        let kept = std::fs::read_dir(c.node_dir(i).join("agent"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("failed-"));
        let status = summary_node(&s, &c.node_ids[i - 1])
            .map(|n| (n["status"].clone(), n["reason"].clone()))
            .unwrap();
        if kept {
            tried += 1;
            // it tried the agent, rolled back, and said so to the NMS
            assert_eq!(status.0, "failed", "node {i}: {status:?}");
            assert!(
                status.1.as_str().is_some_and(|r| r.contains("exited at start")),
                "node {i}: {status:?}"
            );
        } else {
            assert_eq!(
                status.0, "halted",
                "node {i} did not try it, so it was halted: {status:?}"
            );
        }
    }
    assert!(tried >= 1, "no node tried the broken agent:\n{}", logs(&c));
    eprintln!("{tried} of {NODES} nodes tried the broken agent and rolled back");
    // every node still reports the previous agent, and the fleet still works
    let (ok, seen) = wait_for_agents(&c, Duration::from_secs(15), |a| {
        a.build == old_build && a.previous.is_none()
    });
    assert!(ok, "{seen:?}");
    fleet_installs(&c, "frob-1.0.tar.gz", 5, "the fleet no longer installs packages");
    c.teardown();
}

#[test]
fn a_new_agent_that_does_not_report_after_the_switch_is_rolled_back() {
    if !netns::available_for_tests() {
        return;
    }
    // the new build passes its trial, then hangs before it reports its install: its
    // probation (5 s here) runs out and the previous agent comes back
    let (mut c, procs, old_build) = fleet_env(None, |new_build| {
        vec![
            ("BATON_TEST_AGENT_SILENT_BUILD", new_build.to_string()),
            ("BATON_AGENT_CONFIRM_SECS", "5".to_string()),
        ]
    });
    let pids: Vec<Option<u32>> = procs.iter().map(|p| c.pid(*p)).collect();
    let (new, _) = new_agent(&c);
    c.nms_command(&["publish-agent", new.to_str().unwrap(), "--version", "0.1.3"])
        .unwrap();
    let s = agent_summary(&c, Duration::from_secs(60));
    assert_eq!(s["installed"], 0, "{s}");
    for (i, p) in (1..=NODES).zip(&procs) {
        runs_previous_agent(&mut c, i, *p, pids[i - 1], &old_build);
        let node = summary_node(&s, &c.node_ids[i - 1]).unwrap();
        assert_eq!(node["status"], "failed", "node {i}: {node}");
        assert!(
            node["reason"]
                .as_str()
                .is_some_and(|r| r.contains("did not report its install within 5 s after the switch")),
            "node {i}: {node}"
        );
    }
    let (ok, seen) = wait_for_agents(&c, Duration::from_secs(15), |a| a.build == old_build);
    assert!(ok, "{seen:?}");
    c.teardown();
}
