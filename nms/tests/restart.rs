//! An NMS killed mid-campaign and restarted resumes the same campaign: the real daemons
//! in-process, over loopback only (no mDNS, peers named with --peer).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_nms::db::{CampaignState, Db};
use baton_nms::server::run;
use baton_protocol::limits::DEFAULT_CHUNK_SIZE;
use baton_protocol::{NodeId, PackageHasher};
use clap::Parser;

mod common;
use common::{addr, free_port, nms_options};

const NODES: usize = 3;
const SIZE: usize = 48 << 20;

/// The node's installed (sequence, campaign id) of `frob`, and whether its bytes are `want`.
fn installed(data: &Path, want: &[u8]) -> Option<(u64, String, bool)> {
    let store = baton_node::store::Store::open(data).ok()?;
    let meta = store.current_meta("frob")?;
    let file = store.current_file("frob")?;
    let same = std::fs::read(file).ok()? == want;
    Some((meta.sequence, meta.campaign, same))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nms_resumes_its_campaign_without_signing_again() {
    baton_shell::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (watch, nms_data) = (tmp.path().join("drop"), tmp.path().join("nms"));
    std::fs::create_dir(&watch).unwrap();
    let nms_id = NodeId::of(&baton_shell::identity::load_or_create(&nms_data).unwrap());
    let nms_port = free_port();
    // without mDNS every node is told where the NMS and the other nodes are
    let mut node_addrs = Vec::new();
    let mut node_dirs: Vec<PathBuf> = Vec::new();
    let mut ports = Vec::new();
    for i in 0..NODES {
        let data = tmp.path().join(format!("node-{i}"));
        let id = NodeId::of(&baton_shell::identity::load_or_create(&data).unwrap());
        let port = free_port();
        node_addrs.push(addr(port, &id));
        node_dirs.push(data);
        ports.push(port);
    }
    let mut node_tasks = Vec::new();
    for i in 0..NODES {
        let mut args = vec![
            "baton-node".to_string(),
            "--no-mdns".into(),
            "--data-dir".into(),
            node_dirs[i].display().to_string(),
            "--trust".into(),
            nms_id.to_string(),
            "--peer".into(),
            addr(nms_port, &nms_id).to_string(),
        ];
        for (j, a) in node_addrs.iter().enumerate() {
            if j != i {
                args.extend(["--peer".to_string(), a.to_string()]);
            }
        }
        let mut opts = baton_node::cli::options(baton_node::cli::Cli::parse_from(args)).unwrap();
        opts.listen = format!("/ip4/127.0.0.1/tcp/{}", ports[i]).parse().unwrap();
        node_tasks.push(tokio::spawn(baton_node::agent::run(opts)));
    }
    let opts = nms_options(&nms_data, &watch, nms_port, node_addrs, NODES, true);
    let first = tokio::spawn(run(opts.clone()));
    let content: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    let mut h = PackageHasher::new(DEFAULT_CHUNK_SIZE);
    h.update(&content);
    let (_, _, root) = h.finish();
    std::fs::write(watch.join("frob-1.0.bin"), &content).unwrap();

    // kill it once a node reported verified bytes (the transfer is under way)
    let t = Instant::now();
    let (campaign, verified_at_kill) = loop {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the campaign never got going"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        let Ok(db) = Db::open(&nms_data) else { continue };
        let Ok(cs) = db.campaigns() else { continue };
        let Some(c) = cs.first() else { continue };
        let nodes = db.nodes_of(&c.id).unwrap_or_default();
        let verified: u64 = nodes.iter().map(|n| n.verified).sum();
        if verified > 0 {
            break (c.clone(), verified);
        }
    };
    first.abort();
    let _ = first.await;
    let installed_at_kill = node_dirs
        .iter()
        .filter(|d| installed(d, &content).is_some())
        .count();
    eprintln!(
        "NMS killed {:?} after the drop: {verified_at_kill} bytes verified in all, {installed_at_kill} of {NODES} nodes installed",
        t.elapsed()
    );

    // the restart: the same data directory, the same drop folder still holding the file
    let summaries = tokio::time::timeout(Duration::from_secs(60), run(opts))
        .await
        .expect("the restarted NMS's campaign never ended")
        .unwrap();
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let s = &summaries[0];
    assert_eq!(s.campaign, hex::encode(campaign.id), "another campaign ran");
    eprintln!(
        "restarted NMS: campaign ended {:.1} s after the restart, NMS sent {:.2} copies after it",
        s.wall_secs, s.nms_copies
    );
    assert_eq!((s.sequence, s.installed, s.nodes), (1, NODES, NODES), "{s:?}");

    let db = Db::open(&nms_data).unwrap();
    let all = db.campaigns().unwrap();
    assert_eq!(all.len(), 1, "something was signed again");
    assert_eq!(all[0].manifest, campaign.manifest, "the manifest changed");
    assert_eq!(all[0].secret, campaign.secret, "the secret changed");
    assert_eq!(all[0].state, CampaignState::Done);
    assert_eq!(db.last_sequence("frob").unwrap(), 1);
    assert_eq!(
        std::fs::read_dir(nms_data.join("campaigns")).unwrap().count(),
        1,
        "a second copy was made"
    );
    for d in &node_dirs {
        let (seq, c, same) = installed(d, &content).expect("a node did not install");
        assert_eq!(
            (seq, c.as_str(), same),
            (1, hex::encode(campaign.id).as_str(), true)
        );
    }
    let _ = root;
    for n in node_tasks {
        n.abort();
    }
}
