//! Standard libp2p tools can talk to a Baton process: identify tells its agent version,
//! ping answers. Two swarms on loopback.

use std::time::Duration;

use baton_protocol::Keypair;
use baton_shell::net::{self, BehaviourEvent, IDENTIFY_PROTOCOL, Limits};
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, ping};

#[tokio::test]
async fn identify_and_ping_answer_with_the_agent_version() {
    let listen: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let node_key = Keypair::generate_ed25519();
    let node_id = node_key.public().to_peer_id();
    let mut node = net::build_swarm(node_key, listen.clone(), "baton-node/9.9.9", Limits::node()).unwrap();
    let port = net::wait_for_port(&mut node, &listen).await.unwrap();
    let mut tool = net::build_swarm(
        Keypair::generate_ed25519(),
        listen.clone(),
        "a-libp2p-tool/1",
        Limits::node(),
    )
    .unwrap();
    net::wait_for_port(&mut tool, &listen).await.unwrap();
    let addr: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{node_id}")
        .parse()
        .unwrap();
    tool.dial(addr).unwrap();

    let (mut agent, mut pinged) = (None, false);
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    while agent.is_none() || !pinged {
        tokio::select! {
            ev = tool.select_next_some() => match ev {
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    assert_eq!(peer_id, node_id);
                    assert_eq!(info.protocol_version, IDENTIFY_PROTOCOL);
                    assert!(info.protocols.iter().any(|p| p.as_ref() == "/baton/control/1"), "{:?}", info.protocols);
                    agent = Some(info.agent_version);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result: Ok(_), .. })) => {
                    assert_eq!(peer, node_id);
                    pinged = true;
                }
                _ => {}
            },
            _ = node.select_next_some() => {}
            _ = &mut deadline => panic!("no identify/ping answer within 20 s (agent {agent:?}, pinged {pinged})"),
        }
    }
    assert_eq!(agent.as_deref(), Some("baton-node/9.9.9"));
}

/// `--listen [::]:PORT` means every address, IPv4 too: libp2p's IPv6 sockets are
/// IPv6-only, so the daemon also listens on 0.0.0.0 at the same port, and a peer dialing
/// 127.0.0.1 reaches it (as one dialing the IPv4 addresses mDNS advertises would).
#[tokio::test]
async fn a_listener_on_the_ipv6_any_address_is_reachable_over_ipv4_too() {
    let any6: libp2p::Multiaddr = "/ip6/::/tcp/0".parse().unwrap();
    let key = Keypair::generate_ed25519();
    let id = key.public().to_peer_id();
    let mut node = net::build_swarm(key, any6.clone(), "baton-node/9.9.9", Limits::node()).unwrap();
    let port = match net::wait_for_port(&mut node, &any6).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIPPED: this machine cannot listen on IPv6 ([::]): {e:#}");
            return;
        }
    };
    let v4: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let mut tool = net::build_swarm(
        Keypair::generate_ed25519(),
        v4.clone(),
        "a-libp2p-tool/1",
        Limits::node(),
    )
    .unwrap();
    net::wait_for_port(&mut tool, &v4).await.unwrap();
    tool.dial(
        format!("/ip4/127.0.0.1/tcp/{port}/p2p/{id}")
            .parse::<libp2p::Multiaddr>()
            .unwrap(),
    )
    .unwrap();
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = tool.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == id => break,
                SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dialing 127.0.0.1:{port}: {error}"),
                _ => {}
            },
            _ = node.select_next_some() => {}
            _ = &mut deadline => panic!("no IPv4 connection to a node listening on [::]:{port}"),
        }
    }
}
