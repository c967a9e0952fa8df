//! `baton-node status` against a running node agent, over the shared control socket
//! (`baton_shell::control`): the answer, a refusal of what the node does not know, and
//! the socket's end with the node.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::{Duration, Instant};

use baton_node::agent::ControlRequest;
use baton_protocol::NodeId;
use baton_shell::control::{ControlError, call, socket_path};
use clap::Parser;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_answered_over_the_owner_only_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let me = NodeId::of(&baton_shell::identity::load_or_create(&data).unwrap());
    let nms = NodeId::of(&baton_shell::identity::load_or_create(&tmp.path().join("nms")).unwrap());
    let args = [
        "baton-node".to_string(),
        "--no-mdns".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--trust".into(),
        nms.to_string(),
        "--relay-policy".into(),
        "22:00-06:00".into(),
    ];
    let opts = baton_node::cli::options(baton_node::cli::Cli::parse_from(args)).unwrap();
    let node = tokio::spawn(baton_node::agent::run(opts));
    let sock = socket_path(&data);
    let t = Instant::now();
    while !sock.exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "no control socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = std::fs::symlink_metadata(&sock).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.mode() & 0o777, 0o600);

    let (answer, unknown, cli) = {
        let (sock, data) = (sock.clone(), data.clone());
        tokio::task::spawn_blocking(move || {
            let answer: Value = call(&sock, "baton-node", &ControlRequest::Status).unwrap();
            let unknown = call::<_, Value>(&sock, "baton-node", &serde_json::json!({"cmd": "frob"}));
            let cli =
                baton_node::cli::main_from(["baton-node", "status", "--data-dir", data.to_str().unwrap()]);
            (answer, unknown, cli)
        })
        .await
        .unwrap()
    };
    assert_eq!(answer["node"].as_str(), Some(me.to_string().as_str()), "{answer}");
    assert_eq!(answer["policy"].as_str(), Some("22:00-06:00"), "{answer}");
    match unknown {
        Err(ControlError::Refused(why)) => assert!(why.contains("not understood"), "{why}"),
        other => panic!("an unknown command was not refused: {other:?}"),
    }
    cli.unwrap();

    node.abort();
    let _ = node.await;
    assert!(!sock.exists(), "the control socket outlived the node");
    let e = call::<_, Value>(&sock, "baton-node", &ControlRequest::Status)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("is baton-node running? (no socket at"), "{e}");
}
