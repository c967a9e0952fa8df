//! A new agent on trial (`upgrade.rs`): started by the running agent, which stopped its
//! own networking, with the same arguments and `BATON_AGENT_TRIAL` set. It reads its
//! configuration and identity, listens, advertises itself with its build id (that is how
//! the NMS learns it), and waits until it has a connection to a trusted NMS (found by
//! mDNS or named with `--peer`). Then it writes its build id to the file named by
//! `BATON_AGENT_TRIAL` and exits. It runs no campaign; the parent's deadline bounds it.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use baton_protocol::NodeId;
use baton_protocol::wire::PROTOCOL_VERSION;
use baton_shell::discovery::{Advert, AgentBuild, Discovery, DiscoveryEvent, Role};
use baton_shell::net;
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use tracing::info;

use crate::agent::{NMS_AGENT_PREFIX, NodeOptions, read_pinned};
use crate::upgrade::{AgentSelf, report_trial};

/// `listen` with port 0: the trial does not need the node's port (the stopped agent may
/// still hold it for a moment).
fn any_port(listen: &Multiaddr) -> Multiaddr {
    listen
        .iter()
        .map(|p| match p {
            Protocol::Tcp(_) => Protocol::Tcp(0),
            p => p,
        })
        .collect()
}

/// Runs the trial; returns once a trusted NMS is connected and the build id is written.
pub async fn run(opts: NodeOptions, me: Arc<AgentSelf>, healthy: &Path) -> Result<()> {
    let keypair = baton_shell::identity::load_or_create(&opts.data_dir)?;
    let mut trusted: Vec<NodeId> = opts.trust.clone();
    trusted.extend(read_pinned(&opts.data_dir)?);
    let listen = any_port(&opts.listen);
    let mut swarm = net::build_swarm(
        keypair,
        listen.clone(),
        &format!("baton-node/{}", env!("CARGO_PKG_VERSION")),
        net::Limits::node(),
    )?;
    let port = net::wait_for_port(&mut swarm, &listen).await?;
    info!(port, build = %me.build_hex(), "new agent on trial: looking for the NMS");
    let mut heard_nms: Vec<PeerId> = Vec::new();
    let is_nms = |p: &PeerId, heard: &[PeerId]| {
        trusted.contains(&NodeId(*p)) || (trusted.is_empty() && opts.trust_first && heard.contains(p))
    };
    for p in &opts.peers {
        let _ = swarm.dial(p.clone());
    }
    let (discovery, mut disco_rx) = if opts.mdns {
        let advert = Advert {
            peer_id: swarm.local_peer_id().to_string(),
            role: Role::Node,
            version: PROTOCOL_VERSION,
            port,
            tags: opts.tags.clone(),
            // a trial relays nothing and says nothing about it
            relay: None,
            agent: Some(AgentBuild {
                version: env!("CARGO_PKG_VERSION").to_string(),
                build: me.build_hex(),
            }),
        };
        let (d, rx) = Discovery::start(&advert, &net::advertised_ips(&opts.listen), &opts.interfaces)
            .context("starting mDNS discovery")?;
        (Some(d), rx)
    } else if opts.peers.is_empty() {
        // no way to reach an NMS by itself: starting and listening is all it can show
        report_trial(healthy, &me)?;
        return Ok(());
    } else {
        (None, tokio::sync::mpsc::channel(1).1)
    };
    let nms = loop {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if is_nms(&peer_id, &heard_nms) => break peer_id,
                SwarmEvent::Behaviour(net::BehaviourEvent::Identify(libp2p::identify::Event::Received {
                    peer_id, info, ..
                })) if info.agent_version.starts_with(NMS_AGENT_PREFIX) => {
                    heard_nms.push(peer_id);
                    if is_nms(&peer_id, &heard_nms) {
                        break peer_id;
                    }
                }
                _ => {}
            },
            Some(DiscoveryEvent::Found { advert, addrs }) = disco_rx.recv() => {
                let Ok(peer) = advert.peer_id.parse::<PeerId>() else { continue };
                if advert.role != Role::Nms {
                    continue;
                }
                heard_nms.push(peer);
                if is_nms(&peer, &heard_nms) {
                    for ip in addrs {
                        swarm.add_peer_address(peer, net::tcp_addr(ip, advert.port));
                    }
                    let _ = swarm.dial(peer);
                }
            }
        }
    };
    info!("new agent on trial: connected to the NMS {nms}");
    report_trial(healthy, &me)?;
    if let Some(d) = discovery {
        d.shutdown_async().await;
    }
    Ok(())
}
