//! A node the NMS never addressed gets the package's latest version from a follow-up
//! campaign, also across an NMS restart: the real daemons in-process, over loopback only
//! (no mDNS, peers named with --peer).

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_nms::db::Db;
use baton_nms::server::run;
use baton_protocol::{Manifest, NodeId};
use clap::Parser;
use libp2p::Multiaddr;

mod common;
use common::{addr, free_port, nms_options};

const SIZE: usize = 4 << 20;

/// The node's installed (sequence, campaign id) of `frob`, and whether its bytes are `want`.
fn installed(data: &Path, want: &[u8]) -> Option<(u64, String, bool)> {
    let store = baton_node::store::Store::open(data).ok()?;
    let meta = store.current_meta("frob")?;
    let file = store.current_file("frob")?;
    let same = std::fs::read(file).ok()? == want;
    Some((meta.sequence, meta.campaign, same))
}

fn node(
    data: &Path,
    port: u16,
    nms: &NodeId,
    nms_port: u16,
    others: &[Multiaddr],
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let mut args = vec![
        "baton-node".to_string(),
        "--no-mdns".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--trust".into(),
        nms.to_string(),
        "--peer".into(),
        addr(nms_port, nms).to_string(),
    ];
    for a in others {
        args.extend(["--peer".to_string(), a.to_string()]);
    }
    let mut opts = baton_node::cli::options(baton_node::cli::Cli::parse_from(args)).unwrap();
    opts.listen = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    tokio::spawn(baton_node::agent::run(opts))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_never_addressed_gets_the_latest_version_after_a_restart() {
    baton_shell::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (watch, nms_data) = (tmp.path().join("drop"), tmp.path().join("nms"));
    std::fs::create_dir(&watch).unwrap();
    let nms_id = NodeId::of(&baton_shell::identity::load_or_create(&nms_data).unwrap());
    let nms_port = free_port();
    let dirs: Vec<PathBuf> = (0..2).map(|i| tmp.path().join(format!("node-{i}"))).collect();
    let ids: Vec<NodeId> = dirs
        .iter()
        .map(|d| NodeId::of(&baton_shell::identity::load_or_create(d).unwrap()))
        .collect();
    let ports = [free_port(), free_port()];
    let addrs: Vec<Multiaddr> = (0..2).map(|i| addr(ports[i], &ids[i])).collect();
    let content: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();

    // the NMS knows only node 0: the campaign addresses it alone
    let a = node(&dirs[0], ports[0], &nms_id, nms_port, &addrs[1..]);
    std::fs::write(watch.join("frob-1.0.bin"), &content).unwrap();
    let first = tokio::time::timeout(
        Duration::from_secs(60),
        run(nms_options(
            &nms_data,
            &watch,
            nms_port,
            addrs[..1].to_vec(),
            1,
            true,
        )),
    )
    .await
    .expect("the first campaign never ended")
    .unwrap();
    assert_eq!(
        (first.len(), first[0].installed, first[0].nodes),
        (1, 1, 1),
        "{first:?}"
    );
    let original = first[0].campaign.clone();

    // node 1 appears; the restarted NMS knows both: node 1 alone gets a follow-up
    let b = node(&dirs[1], ports[1], &nms_id, nms_port, &addrs[..1]);
    let second = tokio::time::timeout(
        Duration::from_secs(60),
        run(nms_options(
            &nms_data,
            &watch,
            nms_port,
            addrs.clone(),
            addrs.len(),
            true,
        )),
    )
    .await
    .expect("no follow-up ended")
    .unwrap();
    assert_eq!(second.len(), 1, "{second:?}");
    let f = &second[0];
    assert_ne!(f.campaign, original);
    assert_eq!((f.sequence, f.installed, f.nodes), (1, 1, 1), "{f:?}");

    let db = Db::open(&nms_data).unwrap();
    let all = db.campaigns().unwrap();
    assert_eq!(all.len(), 2, "one original, one follow-up");
    assert_eq!(db.last_sequence("frob").unwrap(), 1, "no new version");
    let m: Vec<Manifest> = all
        .iter()
        .map(|c| {
            baton_protocol::SignedManifest {
                body: c.manifest.clone(),
                signature: c.signature.clone(),
            }
            .open_unchecked()
            .unwrap()
        })
        .collect();
    let (o, fu) = if hex::encode(m[0].campaign) == original {
        (&m[0], &m[1])
    } else {
        (&m[1], &m[0])
    };
    assert_eq!(o.addressees, vec![ids[0]]);
    assert_eq!(fu.addressees, vec![ids[1]]);
    assert_eq!(
        (fu.root, &fu.chunk_hashes.0, fu.expires_at),
        (o.root, &o.chunk_hashes.0, o.expires_at)
    );
    assert_eq!(installed(&dirs[0], &content), Some((1, original.clone(), true)));
    assert_eq!(installed(&dirs[1], &content), Some((1, f.campaign.clone(), true)));
    a.abort();
    b.abort();
}
