//! Real campaigns: the daemons in network namespaces, over real mDNS and libp2p.
//!
//! These need root (network namespaces). Without it they print why and return; with
//! `BATON_REQUIRE_NETNS=1` (set by `.ci/run`) a missing privilege fails them instead.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use baton_protocol::NodeId;
use baton_protocol::plan::Tree;
use baton_testbed::cluster::Cluster;
use baton_testbed::netns::{self, NetSpec};

const PKG: &str = "frob";

fn cluster(nodes: usize, rate: Option<&str>) -> Option<Cluster> {
    if !netns::available_for_tests() {
        return None;
    }
    let spec = NetSpec {
        hosts: nodes + 1,
        rate: rate.map(String::from),
        ..NetSpec::default()
    };
    Some(Cluster::create(&spec, PathBuf::from(env!("CARGO_BIN_EXE_baton-testbed"))).expect("cluster"))
}

fn nms_args(nodes: usize) -> Vec<String> {
    baton_testbed::cluster::nms_args(nodes, true)
}

fn never() -> bool {
    false
}

/// The addressees in the NMS's order and the tree it will plan.
fn tree(c: &Cluster) -> (Vec<NodeId>, Tree) {
    let mut ids = c.node_ids.clone();
    ids.sort();
    let t = Tree::plan(&ids, 1, &baton_protocol::plan::no_leaves); // the NMS default: a chain, no gated nodes
    (ids, t)
}

fn host_of(c: &Cluster, id: &NodeId) -> usize {
    c.node_ids.iter().position(|n| n == id).unwrap() + 1
}

#[test]
fn five_nodes_install_the_exact_bytes_over_mdns() {
    let Some(mut c) = cluster(5, None) else { return };
    for i in 1..=5 {
        c.start_node(i, &[]).unwrap();
    }
    let nms = c.start_nms(&nms_args(5), true, &[]).unwrap();
    let hash = c.drop_package("frob-1.0.tar.gz", 3 << 20, 1).unwrap();
    let s = &c.assert_installed(nms, Duration::from_secs(180), 1..=5, PKG, hash);
    assert_eq!(s["installed"], 5);
    assert!(
        s["nms_copies"].as_f64().unwrap() < 2.2,
        "the NMS sent more than the first tier needs: {s}"
    );
}

#[test]
fn an_untrusted_nms_is_refused_with_the_flag_to_accept_it() {
    let Some(mut c) = cluster(3, None) else { return };
    c.start_node(1, &[]).unwrap();
    c.start_node(2, &[]).unwrap();
    let stranger = NodeId::of(&baton_protocol::Keypair::generate_ed25519());
    c.start_node_raw(3, &["--trust".into(), stranger.to_string()])
        .unwrap();
    let nms = c.start_nms(&nms_args(3), true, &[]).unwrap();
    let hash = c.drop_package("frob-1.0.tar.gz", 1 << 20, 2).unwrap();
    let st = c.wait(nms, Duration::from_secs(180), &never).unwrap();
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(1),
        "NMS must report the failure:\n{}",
        c.log("nms")
    );
    assert_eq!(c.installed_hash(1, PKG), Some(hash));
    assert_eq!(c.installed_hash(2, PKG), Some(hash));
    assert_eq!(c.installed_hash(3, PKG), None);
    let log = c.log("node-3");
    assert!(
        log.contains(&format!("--trust {}", c.nms_id)),
        "node 3 must name the flag:\n{log}"
    );
    // ... and say who sent the offer, whose signature it carries, and to trust only an
    // NMS the owner runs
    assert!(
        log.contains("refused an offer from 12D3") && log.contains(&format!("signed by {}", c.nms_id)),
        "node 3 must name the sender and the signer:\n{log}"
    );
    assert!(
        log.contains("Trust only an NMS that you run yourself"),
        "node 3 must warn to trust only an NMS the owner runs:\n{log}"
    );
    // the NMS reports it as trusting another NMS (issue 9: not as failed), with its
    // refusal, and leaves it out of later campaigns
    let s = &c.summaries()[0];
    assert!(s["failed"].as_array().unwrap().is_empty(), "{s}");
    let me = c.node_ids[2].to_string();
    let n = s["per_node"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == me.as_str())
        .expect("node 3 in the summary");
    assert_eq!(n["status"], "trusts-other-nms", "{s}");
    assert!(n["reason"].as_str().unwrap().contains("untrusted"), "{s}");
}

#[test]
fn a_relay_that_corrupts_chunks_does_not_cause_a_bad_install() {
    let Some(mut c) = cluster(5, None) else { return };
    let (ids, t) = tree(&c);
    let relay = ids
        .iter()
        .find(|n| t.parent.values().any(|p| p.as_ref() == Some(*n)))
        .copied()
        .unwrap();
    let relay_host = host_of(&c, &relay);
    for i in 1..=5 {
        let extra = if i == relay_host {
            vec!["--test-corrupt-served".to_string()]
        } else {
            Vec::new()
        };
        c.start_node(i, &extra).unwrap();
    }
    let nms = c.start_nms(&nms_args(5), true, &[]).unwrap();
    let hash = c.drop_package("frob-1.0.tar.gz", 2 << 20, 3).unwrap();
    let st = c.wait(nms, Duration::from_secs(180), &never).unwrap();
    assert!(st.is_some_and(|s| s.success()), "NMS: {st:?}\n{}", c.log("nms"));
    for i in 1..=5 {
        assert_eq!(c.installed_hash(i, PKG), Some(hash), "node {i}");
    }
    let children: Vec<usize> = ids
        .iter()
        .filter(|n| t.parent[*n] == Some(relay))
        .map(|n| host_of(&c, n))
        .collect();
    assert!(!children.is_empty());
    for h in children {
        let log = c.log(&format!("node-{h}"));
        assert!(
            log.contains("failed authentication"),
            "child {h} did not notice:\n{log}"
        );
        assert!(
            log.contains("moving from source"),
            "child {h} did not move away:\n{log}"
        );
    }
}

fn field(log: &str, key: &str) -> Option<u64> {
    let at = log.rfind(key)? + key.len();
    log[at..]
        .split(|ch: char| !ch.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_node_restarted_mid_transfer_resumes_without_refetching_verified_chunks() {
    let Some(mut c) = cluster(3, Some("40mbit")) else {
        return;
    };
    let (ids, t) = tree(&c);
    let leaf = *ids
        .iter()
        .find(|n| !t.parent.values().any(|p| p.as_ref() == Some(*n)))
        .unwrap();
    let h = host_of(&c, &leaf);
    let mut procs = Vec::new();
    for i in 1..=3 {
        procs.push(c.start_node(i, &["--window".into(), "4".into()]).unwrap());
    }
    let mut args = nms_args(3);
    args.extend(["--chunk-size".to_string(), (1u32 << 20).to_string()]);
    let nms = c.start_nms(&args, true, &[]).unwrap();
    let size = 16u64 << 20;
    let hash = c.drop_package("frob-1.0.tar.gz", size, 4).unwrap();
    let name = format!("node-{h}");
    assert!(c.wait_until(Duration::from_secs(60), |c| {
        c.log(&name).contains("accepted campaign")
    }));
    // kill it once chunk 4 is on disk (the package is random, the preallocated file zeros)
    let dir = c.node_dir(h).join("partial");
    let has_chunk = move |i: u64| {
        use std::os::unix::fs::FileExt;
        let Some(e) = std::fs::read_dir(&dir)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
        else {
            return false;
        };
        let mut b = [0u8; 64];
        std::fs::File::open(e.path().join("data"))
            .and_then(|f| f.read_exact_at(&mut b, i << 20))
            .is_ok_and(|_| b.iter().any(|&x| x != 0))
    };
    assert!(
        c.wait_until(Duration::from_secs(60), |_| has_chunk(4)),
        "no chunk arrived"
    );
    c.kill(procs[h - 1]);
    let before = c.log(&name);
    assert!(
        !before.contains("installed frob") && !has_chunk(15),
        "the node finished before it could be killed; slow the link"
    );
    std::fs::rename(
        c.dir.join(format!("{name}.log")),
        c.dir.join(format!("{name}-first.log")),
    )
    .unwrap();
    c.start_node(h, &[]).unwrap();
    let st = c.wait(nms, Duration::from_secs(180), &never).unwrap();
    assert!(st.is_some_and(|s| s.success()), "NMS: {st:?}\n{}", c.log("nms"));
    assert_eq!(c.installed_hash(h, PKG), Some(hash));
    assert!(c.wait_until(Duration::from_secs(10), |c| {
        c.log(&name).contains("fetched_chunks")
    }));
    let log = c.log(&name);
    // "<resumed> of <total> chunks already verified on disk"
    let resumed = log
        .lines()
        .find(|l| l.contains("chunks already verified on disk"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let of = words.iter().position(|w| *w == "of")?;
            words[of - 1].parse::<u64>().ok()
        });
    let resumed = resumed.unwrap_or_else(|| panic!("the restarted node found nothing on disk:\n{log}"));
    let fetched = field(&log, "fetched_chunks=").unwrap();
    let total = size / (1 << 20);
    assert!(resumed > 0 && resumed < total, "resumed {resumed} of {total}");
    assert_eq!(
        fetched + resumed,
        total,
        "verified chunks were fetched again:\n{log}"
    );
}

#[test]
fn a_file_still_being_written_does_not_start_a_campaign_until_complete() {
    let Some(mut c) = cluster(2, None) else { return };
    c.start_node(1, &[]).unwrap();
    c.start_node(2, &[]).unwrap();
    let nms = c.start_nms(&nms_args(2), true, &[]).unwrap();
    std::thread::sleep(Duration::from_secs(3)); // discovery settles: a ready file would start at once
    let path = c.watch_dir().join("frob-2.0.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x5au8; 1 << 20];
    for _ in 0..3 {
        f.write_all(&block).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !c.log("nms").contains("campaign-started"),
            "started on a partial file:\n{}",
            c.log("nms")
        );
    }
    drop(f);
    let st = c.wait(nms, Duration::from_secs(180), &never).unwrap();
    assert!(st.is_some_and(|s| s.success()), "NMS: {st:?}\n{}", c.log("nms"));
    let s = &c.summaries()[0];
    assert_eq!(s["size"], 3u64 << 20, "{s}");
    assert_eq!(
        c.installed_hash(1, PKG),
        Some(*blake3::hash(&vec![0x5au8; 3 << 20]).as_bytes())
    );
}
