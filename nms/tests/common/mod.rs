//! What the in-process NMS tests share: loopback ports and addresses, and the options of
//! an NMS that runs over loopback only (no mDNS, peers named with --peer, JSON output).

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use baton_nms::campaign::CampaignSettings;
use baton_nms::server::NmsOptions;
use baton_protocol::NodeId;
use baton_protocol::limits::DEFAULT_CHUNK_SIZE;
use baton_protocol::manifest::{PlanParams, RelayPolicy, Transfer};
use baton_shell::discovery::Interfaces;
use libp2p::Multiaddr;

/// A TCP port free on loopback now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `/ip4/127.0.0.1/tcp/<port>/p2p/<id>`.
pub fn addr(port: u16, id: &NodeId) -> Multiaddr {
    format!("/ip4/127.0.0.1/tcp/{port}/p2p/{id}").parse().unwrap()
}

/// An NMS on loopback `port` with these static peers, starting a campaign once
/// `min_nodes` are known; a chain (the command line's default); `once`: exit after the
/// first campaign.
pub fn nms_options(
    data: &Path,
    watch: &Path,
    port: u16,
    peers: Vec<Multiaddr>,
    min_nodes: usize,
    once: bool,
) -> NmsOptions {
    NmsOptions {
        data_dir: data.to_path_buf(),
        listen: format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap(),
        watch: watch.to_path_buf(),
        mdns: false,
        interfaces: Interfaces::All,
        peers,
        min_nodes,
        settle: Duration::from_millis(300),
        discovery_timeout: Duration::from_secs(60),
        tags: Vec::new(),
        settings: CampaignSettings {
            chunk_size: DEFAULT_CHUNK_SIZE,
            plan: PlanParams {
                fanout: 1,
                transfer: Transfer::CutThrough,
                leaves: 0,
            },
            relay: RelayPolicy::default(),
            expiry_secs: 3600,
            offline_install: false,
        },
        settle_file: Duration::from_millis(200),
        archive: None,
        output: baton_nms::ui::Mode::Json,
        halt_after: None,
        once,
    }
}
