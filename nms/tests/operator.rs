//! The operator's commands against a running NMS: the real daemons in-process, over
//! loopback only (no mDNS, peers named with --peer), the commands over the control socket.
//!
//! Two addressees: a real node, and a peer that accepts TCP connections and never answers,
//! sorted first, so that with a chain the campaign waits on it until the test closes it.

use std::net::TcpListener;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use baton_nms::db::{CampaignState, Db};
use baton_nms::ops::{CampaignDetail, CampaignRow, Request, Response, socket_path};
use baton_nms::server::run;
use baton_protocol::NodeId;
use baton_shell::control::ControlError;
use clap::Parser;

mod common;
use common::{addr, free_port, nms_options};

async fn ask(data: &Path, req: Request) -> Result<Response, ControlError> {
    let path = socket_path(data);
    tokio::task::spawn_blocking(move || baton_shell::control::call(&path, "baton-nms", &req))
        .await
        .unwrap()
}

async fn campaigns(data: &Path) -> Vec<CampaignRow> {
    match ask(data, Request::Campaigns).await.unwrap() {
        Response::Campaigns { campaigns } => campaigns,
        other => panic!("{other:?}"),
    }
}

async fn show(data: &Path, id: &str) -> CampaignDetail {
    match ask(data, Request::Show { id: id.into() }).await.unwrap() {
        Response::Show(d) => d,
        other => panic!("{other:?}"),
    }
}

/// Waits (at most 120 s) until `f` holds for the campaign list.
async fn until(data: &Path, what: &str, f: impl Fn(&[CampaignRow]) -> bool) -> Vec<CampaignRow> {
    let t = Instant::now();
    loop {
        if let Ok(Response::Campaigns { campaigns }) = ask(data, Request::Campaigns).await
            && f(&campaigns)
        {
            return campaigns;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node's installed (sequence, version) of `frob`, if its bytes are `want`.
fn installed(data: &Path, want: &[u8]) -> Option<(u64, String)> {
    let store = baton_node::store::Store::open(data).ok()?;
    let meta = store.current_meta("frob")?;
    let file = store.current_file("frob")?;
    (std::fs::read(file).ok()? == want).then_some((meta.sequence, meta.version))
}

fn refused(r: Result<Response, ControlError>) -> String {
    match r {
        Err(ControlError::Refused(why)) => why,
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_cancels_resumes_and_rolls_back_a_running_nms() {
    baton_shell::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (watch, nms_data) = (tmp.path().join("drop"), tmp.path().join("nms"));
    std::fs::create_dir(&watch).unwrap();
    let nms_id = NodeId::of(&baton_shell::identity::load_or_create(&nms_data).unwrap());
    let nms_port = free_port();
    let node_data = tmp.path().join("node");
    let node_id = NodeId::of(&baton_shell::identity::load_or_create(&node_data).unwrap());
    let node_port = free_port();
    // the silent peer: an identity sorted before the node's, a port that accepts and says
    // nothing
    let silent_id = (0..)
        .map(|i| {
            NodeId::of(
                &baton_shell::identity::load_or_create(&tmp.path().join(format!("silent-{i}"))).unwrap(),
            )
        })
        .find(|id| *id < node_id)
        .unwrap();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    silent.set_nonblocking(true).unwrap();
    let silent_thread = std::thread::spawn(move || {
        let mut held = Vec::new();
        while stop_rx.try_recv().is_err() {
            if let Ok((s, _)) = silent.accept() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // dropping the listener and the connections: dials fail from now on
    });

    let args = vec![
        "baton-node".to_string(),
        "--no-mdns".into(),
        "--data-dir".into(),
        node_data.display().to_string(),
        "--trust".into(),
        nms_id.to_string(),
        "--peer".into(),
        addr(nms_port, &nms_id).to_string(),
    ];
    let mut opts = baton_node::cli::options(baton_node::cli::Cli::parse_from(args)).unwrap();
    opts.listen = format!("/ip4/127.0.0.1/tcp/{node_port}").parse().unwrap();
    let node = tokio::spawn(baton_node::agent::run(opts));

    let peers = vec![addr(silent_port, &silent_id), addr(node_port, &node_id)];
    let opts = nms_options(&nms_data, &watch, nms_port, peers, 2, false);
    let nms = tokio::spawn(run(opts.clone()));

    // the socket: there, a socket, the owner's only
    let sock = socket_path(&nms_data);
    let t = Instant::now();
    while !sock.exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "no control socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = std::fs::symlink_metadata(&sock).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(
        m.mode() & 0o777,
        0o600,
        "the control socket is not the owner's only"
    );
    // a second NMS on the same data directory is refused, and leaves the socket alone
    let e = format!("{:#}", run(opts.clone()).await.unwrap_err());
    assert!(e.contains("in use by process"), "{e}");
    assert!(sock.exists());
    match ask(&nms_data, Request::Status).await.unwrap() {
        Response::Status(s) => {
            assert_eq!(s.nms, nms_id.to_string());
            assert_eq!(s.pid, std::process::id());
            assert!(s.running.is_empty());
        }
        other => panic!("{other:?}"),
    }

    // a campaign that waits on the silent peer
    let v1: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(watch.join("frob-1.0.bin"), &v1).unwrap();
    let list = until(&nms_data, "the first campaign", |c| c.len() == 1).await;
    let id = list[0].id.clone();
    let prefix = &id[..6];
    // recorded in the database a moment before the endpoint starts it
    let t = Instant::now();
    loop {
        match ask(&nms_data, Request::Status).await.unwrap() {
            Response::Status(s) if s.running.len() == 1 => {
                assert_eq!((s.running[0].id.as_str(), s.nodes_eligible), (id.as_str(), 2));
                break;
            }
            Response::Status(s) => assert!(t.elapsed() < Duration::from_secs(20), "{s:?}"),
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let d = show(&nms_data, prefix).await;
    assert_eq!(
        (d.campaign.id.as_str(), d.campaign.state.as_str()),
        (id.as_str(), "running")
    );
    assert_eq!(d.nodes.len(), 2);
    assert!(d.nodes.iter().all(|n| n.status == "waiting"), "{d:?}");
    let table = baton_nms::ops::render(&Response::Show(d), 0);
    assert!(
        table.contains("NODE") && table.contains(&silent_id.to_string()),
        "{table}"
    );

    // cancel
    let Response::Done { message, .. } = ask(&nms_data, Request::Cancel { id: prefix.into() })
        .await
        .unwrap()
    else {
        panic!("not done")
    };
    assert!(message.contains("cancelled: 2 node(s)"), "{message}");
    let d = show(&nms_data, prefix).await;
    assert_eq!(
        (d.campaign.state.as_str(), d.campaign.ended),
        ("cancelled", true),
        "{d:?}"
    );
    assert!(
        d.nodes
            .iter()
            .all(|n| n.status == "halted" && n.reason.as_deref() == Some("cancelled by the operator")),
        "{d:?}"
    );
    let why = refused(ask(&nms_data, Request::Cancel { id: prefix.into() }).await);
    assert!(why.contains("has already ended"), "{why}");
    let why = refused(ask(&nms_data, Request::Show { id: "zz".into() }).await);
    assert!(why.contains("not a campaign id"), "{why}");
    {
        let db = Db::open(&nms_data).unwrap();
        assert_eq!(db.campaigns().unwrap()[0].state, CampaignState::Cancelled);
    }
    assert!(
        installed(&node_data, &v1).is_none(),
        "a cancelled campaign was installed"
    );

    // a restart does not take a cancelled campaign back; a resume does, from the database
    nms.abort();
    let _ = nms.await;
    let nms = tokio::spawn(run(opts.clone()));
    let t = Instant::now();
    while ask(&nms_data, Request::Status).await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "the NMS did not restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = campaigns(&nms_data).await;
    assert_eq!(
        (after.len(), after[0].state.as_str()),
        (1, "cancelled"),
        "{after:?}"
    );

    // the silent peer goes away; resume: it is offered again, the offer fails, the node
    // gets the rest of the part, and the silent peer is probed until found unreachable
    // (the hint window, 40 s)
    stop_tx.send(()).unwrap();
    silent_thread.join().unwrap();
    let Response::Done { message, .. } = ask(&nms_data, Request::Resume { id: prefix.into() })
        .await
        .unwrap()
    else {
        panic!("not done")
    };
    assert!(message.contains("resumed: 2 halted node(s)"), "{message}");
    until(&nms_data, "the resumed campaign ends", |c| {
        c[0].ended && c[0].state == "done"
    })
    .await;
    let d = show(&nms_data, &id).await;
    assert_eq!(d.campaign.installed, 1, "{d:?}");
    let silent_row = d.nodes.iter().find(|n| n.node == silent_id.to_string()).unwrap();
    assert_eq!(silent_row.status, "unreachable", "{d:?}");
    assert_eq!(installed(&node_data, &v1), Some((1, "1.0".into())));
    let why = refused(ask(&nms_data, Request::Resume { id: prefix.into() }).await);
    assert!(why.contains("ended without being cancelled"), "{why}");

    // a second version, then back to the first with the rollback command
    let v2: Vec<u8> = v1.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(watch.join("frob-2.0.bin"), &v2).unwrap();
    until(&nms_data, "version 2.0 ends", |c| {
        c.len() == 2 && c.iter().all(|c| c.ended)
    })
    .await;
    assert_eq!(installed(&node_data, &v2), Some((2, "2.0".into())));
    let why = refused(
        ask(
            &nms_data,
            Request::Rollback {
                package: "frob".into(),
                to: Some("9.9".into()),
            },
        )
        .await,
    );
    assert!(why.contains("never distributed frob 9.9"), "{why}");
    let why = refused(
        ask(
            &nms_data,
            Request::Rollback {
                package: "nope".into(),
                to: None,
            },
        )
        .await,
    );
    assert!(why.contains("never distributed a package named"), "{why}");
    let Response::Done { message, .. } = ask(
        &nms_data,
        Request::Rollback {
            package: "frob".into(),
            to: None,
        },
    )
    .await
    .unwrap() else {
        panic!("not done")
    };
    assert!(message.contains("to 1.0"), "{message}");
    let list = until(&nms_data, "the rollback ends", |c| {
        c.len() == 3 && c.iter().all(|c| c.ended)
    })
    .await;
    let back = list.iter().find(|c| c.sequence == 3).expect("sequence 3");
    assert_eq!((back.version.as_str(), back.installed), ("1.0", 1), "{back:?}");
    assert_eq!(installed(&node_data, &v1), Some((3, "1.0".into())));
    let why = refused(
        ask(
            &nms_data,
            Request::Rollback {
                package: "frob".into(),
                to: Some("1.0".into()),
            },
        )
        .await,
    );
    assert!(why.contains("is the current version"), "{why}");
    // the inventory: the node trusts this NMS and is back on 1.0
    let Response::Nodes { nodes } = ask(&nms_data, Request::Nodes).await.unwrap() else {
        panic!("not nodes")
    };
    let me = nodes
        .iter()
        .find(|n| n.node == node_id.to_string())
        .unwrap_or_else(|| panic!("{nodes:?}"));
    assert!(me.trusts_this_nms && me.other_nms.is_none(), "{me:?}");
    assert_eq!(
        me.installed
            .iter()
            .map(|i| (i.package.as_str(), i.version.as_str()))
            .collect::<Vec<_>>(),
        vec![("frob", "1.0")],
        "{me:?}"
    );
    // the command line, as the operator types it
    baton_nms::cli::main_from(["baton-nms", "campaigns", "--data-dir", nms_data.to_str().unwrap()]).unwrap();
    baton_nms::cli::main_from(["baton-nms", "nodes", "--data-dir", nms_data.to_str().unwrap()]).unwrap();

    nms.abort();
    let _ = nms.await;
    node.abort();
    assert!(!sock.exists(), "the control socket outlived the NMS");
    let e = ask(&nms_data, Request::Status).await.unwrap_err().to_string();
    assert!(e.starts_with("is baton-nms running? (no socket at"), "{e}");
}
