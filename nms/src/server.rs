//! The NMS daemon: a thin tokio shell around [`NmsEndpoint`], which decides everything
//! (the fleet, when a drop becomes a campaign, the campaigns). This file only translates:
//! swarm, discovery, drop-folder and background-job events become [`NmsInput`]s;
//! [`NmsAction`]s become requests, answers, jobs and files; [`NmsEvent`]s go to the
//! operator's view (`ui.rs`), the log and `--json` lines. It sleeps until the endpoint's
//! `poll_timeout`: there is no periodic tick.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use baton_protocol::endpoint::nms::{
    CampaignSummary, DropId, FailureThreshold, NmsAction, NmsConfig, NmsEndpoint, NmsEvent, NmsInput,
    OutboundId, PeerRole,
};
use baton_protocol::wire::PROTOCOL_VERSION;
use baton_protocol::{
    CampaignId, ChunkResponse, Control, ControlKind, Keypair, Manifest, MonitorConfig, NodeId, NodeStatus,
    RequestId,
};
use baton_shell::chunkfile::read_and_seal;
use baton_shell::discovery::{Advert, Discovery, DiscoveryEvent, Interfaces, Role};
use baton_shell::net::{self, Behaviour, BehaviourEvent, Inbound, Incoming};
use futures::StreamExt;
use libp2p::request_response::ResponseChannel;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::campaign::{CampaignSettings, Prepared, intake};
use crate::ui::Ui;
use crate::watch::{DropEvent, DropWatcher};

/// How the NMS runs.
#[derive(Debug, Clone)]
pub struct NmsOptions {
    pub data_dir: PathBuf,
    pub listen: Multiaddr,
    pub watch: PathBuf,
    pub mdns: bool,
    pub interfaces: Interfaces,
    pub peers: Vec<Multiaddr>,
    /// Wait for at least this many nodes before starting a campaign.
    pub min_nodes: usize,
    /// Discovery has settled when no new node appeared for this long.
    pub settle: Duration,
    /// Give up waiting for `min_nodes` after this long.
    pub discovery_timeout: Duration,
    /// Only nodes with all of these tags are addressees.
    pub tags: Vec<String>,
    pub settings: CampaignSettings,
    pub json: bool,
    /// Exit after the first campaign ends.
    pub once: bool,
    /// Halt a campaign once this many addressees failed or are unreachable.
    pub halt_after: Option<FailureThreshold>,
}

/// The end of a campaign, for the operator and for scripts.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub campaign: String,
    pub package: String,
    pub version: String,
    pub sequence: u64,
    pub size: u64,
    pub nodes: usize,
    pub installed: usize,
    pub failed: Vec<FailedNode>,
    /// Nodes that did not answer the NMS's probes (they get the package if they return
    /// while the campaign is unexpired).
    pub unreachable: Vec<FailedNode>,
    /// Why the campaign was halted (`--halt-after`), if it was.
    pub halted: Option<String>,
    /// Seconds from the drop being detected to the last install.
    pub wall_secs: f64,
    /// Bytes the NMS sent (chunk frames and control messages).
    pub nms_bytes_sent: u64,
    /// `nms_bytes_sent / size`.
    pub nms_copies: f64,
    pub per_node: Vec<NodeResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedNode {
    pub node: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub node: String,
    pub status: String,
    /// Why it failed, is unreachable, was halted or refused.
    pub reason: Option<String>,
    pub secs: Option<f64>,
}

enum Internal {
    Prepared(DropId, Box<Result<Prepared>>),
}

/// What the shell keeps for a campaign: its files and its live view.
struct Files {
    manifest: Arc<Manifest>,
    /// The NMS's copy of the package, kept open.
    data: Arc<std::fs::File>,
    dir: PathBuf,
}

struct Nms {
    opts: NmsOptions,
    keypair: Keypair,
    swarm: Swarm<Behaviour>,
    start: Instant,
    endpoint: NmsEndpoint,
    /// Dropped files the endpoint knows, by the id the shell gave them.
    drops: HashMap<DropId, PathBuf>,
    next_drop: u64,
    /// Prepared campaigns' files, until the endpoint says the campaign started.
    prepared: HashMap<DropId, (Arc<std::fs::File>, PathBuf)>,
    files: HashMap<CampaignId, Files>,
    uis: HashMap<CampaignId, Ui>,
    control_reqs: net::Requests<(OutboundId, NodeId, ControlKind)>,
    chunk_reqs: net::Requests<()>,
    in_control: HashMap<RequestId, ResponseChannel<Control>>,
    in_chunk: HashMap<RequestId, ResponseChannel<ChunkResponse>>,
    internal: mpsc::UnboundedSender<Internal>,
    summaries: Vec<Summary>,
    failures: net::FailureLog,
}

/// Runs the NMS until Ctrl-C (or, with `--once`, until its first campaign ends).
pub async fn run(opts: NmsOptions) -> Result<Vec<Summary>> {
    let _lock = baton_shell::identity::lock_data_dir(&opts.data_dir, "baton-nms")?;
    let keypair = baton_shell::identity::load_or_create(&opts.data_dir)?;
    let me = NodeId::of(&keypair);
    let (watcher, mut drops) = DropWatcher::start(&opts.watch, crate::watch::DEFAULT_SETTLE)?;
    let mut swarm = net::build_swarm(
        keypair.clone(),
        opts.listen.clone(),
        &format!("baton-nms/{}", env!("CARGO_PKG_VERSION")),
        net::Limits::nms(),
    )?;
    let port = net::wait_for_port(&mut swarm).await?;
    info!(peer_id = %me, port, watch = %opts.watch.display(), "baton-nms started");
    eprintln!(
        "baton-nms {me}\n  watching {}\n  nodes must trust it: baton-node --trust {me}",
        watcher.dir().display()
    );
    let (itx, mut irx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let endpoint = NmsEndpoint::new(
        Duration::ZERO,
        NmsConfig {
            min_nodes: opts.min_nodes,
            settle: opts.settle,
            discovery_timeout: opts.discovery_timeout,
            tags: opts.tags.clone(),
            protocol_version: PROTOCOL_VERSION,
            monitor: MonitorConfig::default(),
            halt_after: opts.halt_after,
            unix_origin: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        },
    );
    let mut nms = Nms {
        opts: opts.clone(),
        keypair,
        swarm,
        start,
        endpoint,
        drops: HashMap::new(),
        next_drop: 0,
        prepared: HashMap::new(),
        files: HashMap::new(),
        uis: HashMap::new(),
        control_reqs: net::Requests::new("control"),
        chunk_reqs: net::Requests::new("chunk"),
        in_control: HashMap::new(),
        in_chunk: HashMap::new(),
        internal: itx,
        summaries: Vec::new(),
        failures: net::FailureLog::default(),
    };
    for p in &opts.peers {
        match net::peer_of(p) {
            Some(id) => {
                nms.swarm.add_peer_address(id, p.clone());
                nms.input(NmsInput::StaticPeer { id: NodeId(id) });
            }
            None => warn!("--peer {p} has no /p2p/<peer id> at its end; ignoring it"),
        }
    }
    let (discovery, mut disco_rx) = if opts.mdns {
        let advert = Advert {
            peer_id: me.to_string(),
            role: Role::Nms,
            version: PROTOCOL_VERSION,
            port,
            tags: Vec::new(),
        };
        let (d, rx) = Discovery::start(&advert, &[], &opts.interfaces).context("starting mDNS discovery")?;
        (Some(d), rx)
    } else {
        (None, mpsc::channel(1).1)
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        nms.drive();
        if opts.once && !nms.summaries.is_empty() {
            break;
        }
        let deadline = nms.next_deadline();
        tokio::select! {
            ev = nms.swarm.select_next_some() => nms.on_swarm(ev),
            Some(d) = disco_rx.recv() => nms.on_discovery(d),
            Some(d) = drops.recv() => nms.on_drop(d),
            Some(i) = irx.recv() => nms.on_internal(i),
            _ = tokio::time::sleep_until(deadline.into()) => { nms.input(NmsInput::Timeout); }
            _ = tokio::signal::ctrl_c() => { info!("interrupted; stopping"); break; }
            _ = term.recv() => { info!("terminated; stopping"); break; }
        }
    }
    for ui in nms.uis.values() {
        ui.finish();
    }
    drop(watcher);
    if let Some(d) = discovery {
        d.shutdown_async().await;
    }
    Ok(nms.summaries)
}

impl Nms {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Feeds one input to the endpoint; its outputs are run by [`Nms::drive`].
    fn input(&mut self, input: NmsInput) -> Option<RequestId> {
        let now = self.now();
        self.endpoint.handle(now, input)
    }

    fn next_deadline(&self) -> Instant {
        let far = self.now() + Duration::from_secs(3600);
        self.start + self.endpoint.poll_timeout().unwrap_or(far).min(far)
    }

    /// This NMS's id, as nodes must trust it.
    fn endpoint_id(&self) -> NodeId {
        NodeId::of(&self.keypair)
    }

    fn path(&self, d: DropId) -> String {
        self.drops
            .get(&d)
            .map_or_else(|| format!("drop {}", d.0), |p| p.display().to_string())
    }

    fn on_discovery(&mut self, ev: DiscoveryEvent) {
        match ev {
            DiscoveryEvent::Found { advert, addrs } => {
                let Ok(peer) = advert.peer_id.parse::<PeerId>() else {
                    return;
                };
                for ip in &addrs {
                    self.swarm.add_peer_address(peer, net::tcp_addr(*ip, advert.port));
                }
                self.input(NmsInput::NodeSeen {
                    id: NodeId(peer),
                    tags: advert.tags,
                    role: match advert.role {
                        Role::Node => PeerRole::Node,
                        Role::Nms => PeerRole::Nms,
                    },
                    version: advert.version,
                });
            }
            DiscoveryEvent::Lost { peer_id } => {
                if let Ok(peer) = peer_id.parse::<PeerId>() {
                    self.input(NmsInput::NodeLost { id: NodeId(peer) });
                }
            }
        }
    }

    fn on_drop(&mut self, ev: DropEvent) {
        match ev {
            DropEvent::Ready { path, size } => {
                info!("dropped: {} ({size} bytes)", path.display());
                self.next_drop += 1;
                let drop_id = DropId(self.next_drop);
                let name = path.display().to_string();
                self.drops.insert(drop_id, path);
                self.input(NmsInput::DropReady { drop_id, name });
            }
            DropEvent::Error { path, message } => self.drop_error(&path.display().to_string(), &message),
        }
    }

    fn drop_error(&self, path: &str, message: &str) {
        error!("{path}: {message}; no campaign started");
        if self.opts.json {
            println!(
                "{}",
                serde_json::json!({"event": "drop-error", "path": path, "message": message})
            );
        }
    }

    /// Copies, hashes and signs a drop off the event loop.
    fn prepare(&mut self, drop_id: DropId, addressees: Vec<NodeId>) {
        let Some(path) = self.drops.get(&drop_id).cloned() else {
            return;
        };
        let (data, kp, settings, tx) = (
            self.opts.data_dir.clone(),
            self.keypair.clone(),
            self.opts.settings.clone(),
            self.internal.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            // opens the dropped file once, without following links, and reads only from that
            let r = intake(&data, &path, &kp, addressees, &settings);
            if r.is_ok() {
                info!("copied, hashed and signed in {} ms", t.elapsed().as_millis());
            }
            let _ = tx.send(Internal::Prepared(drop_id, Box::new(r)));
        });
    }

    fn on_internal(&mut self, i: Internal) {
        match i {
            Internal::Prepared(drop_id, r) => {
                let input = match *r {
                    Ok(p) => match std::fs::File::open(&p.file) {
                        Ok(f) => {
                            self.prepared.insert(drop_id, (Arc::new(f), p.dir));
                            NmsInput::Prepared {
                                drop_id,
                                manifest: Box::new(p.manifest),
                                signed: p.signed,
                                secret: p.secret,
                            }
                        }
                        Err(e) => NmsInput::PrepareFailed {
                            drop_id,
                            reason: format!("cannot open the campaign's copy {}: {e}", p.file.display()),
                        },
                    },
                    Err(e) => NmsInput::PrepareFailed {
                        drop_id,
                        reason: format!("{e:#}"),
                    },
                };
                self.input(input);
            }
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Control(e)) => {
                match self.control_reqs.classify(e, &mut self.failures) {
                    Some(Incoming::Request { from, msg, channel }) => {
                        let input = NmsInput::ControlRequest {
                            from: NodeId(from),
                            msg,
                        };
                        if let Some(req) = self.input(input) {
                            self.in_control.insert(req, channel);
                        }
                    }
                    Some(Incoming::Response { id: (id, ..), msg }) => {
                        self.input(NmsInput::ControlResponse { id, msg });
                    }
                    Some(Incoming::Failed {
                        id: (id, to, kind),
                        reason,
                    }) => {
                        warn!("{kind:?} to {to} failed: {reason}");
                        self.input(NmsInput::SendFailed { id, reason });
                    }
                    None => {}
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Chunk(e)) => {
                // the NMS only serves chunks: it never requests them
                if let Some(Incoming::Request { from, msg, channel }) =
                    self.chunk_reqs.classify(e, &mut self.failures)
                {
                    let input = NmsInput::ChunkRequest {
                        from: NodeId(from),
                        request: msg,
                    };
                    if let Some(req) = self.input(input) {
                        self.in_chunk.insert(req, channel);
                    }
                }
            }
            _ => {}
        }
    }

    /// Drains the endpoint: events first (they register a started campaign's files), then
    /// actions, until both are empty.
    fn drive(&mut self) {
        loop {
            let mut any = false;
            while let Some(ev) = self.endpoint.poll_event() {
                any = true;
                self.on_event(ev);
            }
            while let Some(a) = self.endpoint.poll_action() {
                any = true;
                self.on_action(a);
            }
            if !any {
                return;
            }
        }
    }

    fn on_action(&mut self, a: NmsAction) {
        match a {
            NmsAction::Prepare { drop_id, addressees } => self.prepare(drop_id, addressees),
            NmsAction::SendControl { id, to, msg } => {
                let kind = msg.kind();
                let rid = self
                    .swarm
                    .behaviour_mut()
                    .control
                    .send_request(&to.0, Inbound::Msg(msg));
                self.control_reqs.sent(rid, (id, to, kind));
            }
            NmsAction::AnswerControl { req, msg } => {
                if let Some(ch) = self.in_control.remove(&req) {
                    let _ = self.swarm.behaviour_mut().control.send_response(ch, msg);
                }
            }
            NmsAction::SendChunk {
                req,
                campaign,
                index,
                key,
            } => {
                if let Some(ch) = self.in_chunk.remove(&req)
                    && let Some(f) = self.files.get(&campaign)
                {
                    let resp = read_and_seal(&f.data, &f.manifest, index, &key);
                    let _ = self.swarm.behaviour_mut().chunk.send_response(ch, resp);
                }
            }
            NmsAction::AnswerChunk { req, response } => {
                if let Some(ch) = self.in_chunk.remove(&req) {
                    let _ = self.swarm.behaviour_mut().chunk.send_response(ch, response);
                }
            }
            NmsAction::CampaignFinished { summary } => {
                let Some(f) = self.files.get(&summary.campaign) else {
                    return;
                };
                let s = Summary::from_core(&summary);
                if let Err(e) = std::fs::write(
                    f.dir.join("summary.json"),
                    serde_json::to_string_pretty(&s).unwrap_or_default(),
                ) {
                    warn!("cannot save the campaign summary: {e}");
                }
            }
        }
    }

    fn on_event(&mut self, ev: NmsEvent) {
        let json = self.opts.json;
        match ev {
            NmsEvent::NodeDiscovered { id, known } => {
                info!("node {id} discovered ({known} known)");
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "node-discovered", "node": id.to_string(), "known": known})
                    );
                }
            }
            NmsEvent::NodeIncompatible { id, version } => {
                warn!("{id} speaks protocol {version}; this NMS speaks {PROTOCOL_VERSION}; not using it")
            }
            NmsEvent::NodeLeft { id } => info!("node {id} left"),
            NmsEvent::DropWaiting {
                drop_id,
                found,
                needed,
            } => info!(
                "{}: waiting for discovery to settle ({found} node(s) found, {needed} needed)",
                self.path(drop_id)
            ),
            NmsEvent::DropAbandoned { drop_id, reason } => {
                error!("{reason}");
                self.drops.remove(&drop_id);
            }
            NmsEvent::DropFailed { drop_id, reason } => {
                self.drop_error(&self.path(drop_id), &reason);
                self.drops.remove(&drop_id);
                self.prepared.remove(&drop_id);
            }
            NmsEvent::CampaignStarted { drop_id, manifest } => {
                self.drops.remove(&drop_id);
                let m = &manifest;
                info!(
                    "campaign {}: {} {} (sequence {}), {} bytes to {} nodes, fanout {}, {:?}",
                    hex::encode(m.campaign),
                    m.name,
                    m.version,
                    m.sequence,
                    m.size,
                    m.addressees.len(),
                    m.plan.fanout,
                    m.plan.transfer
                );
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "campaign-started", "campaign": hex::encode(m.campaign), "package": m.name,
                            "version": m.version, "sequence": m.sequence, "size": m.size, "nodes": m.addressees.len()})
                    );
                }
                self.uis.insert(m.campaign, Ui::new(m, json));
                if let Some((data, dir)) = self.prepared.remove(&drop_id) {
                    self.files.insert(
                        m.campaign,
                        Files {
                            manifest: Arc::new(*manifest),
                            data,
                            dir,
                        },
                    );
                }
            }
            NmsEvent::NodeProbing { campaign, node, why } => {
                info!("campaign {}: probing {node}: {why}", hex::encode(campaign));
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "probing", "campaign": hex::encode(campaign),
                            "node": node.to_string(), "why": why})
                    );
                }
            }
            NmsEvent::NodeTrustsOtherNms {
                campaign,
                node,
                detail,
            } => {
                warn!(
                    "{node} trusts another NMS (it refused campaign {} as untrusted: {detail}); it is not \
                     addressed until it accepts an offer again or re-appears. To include it, start it with \
                     baton-node --trust {}",
                    hex::encode(campaign),
                    self.endpoint_id()
                );
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "trusts-other-nms", "campaign": hex::encode(campaign),
                            "node": node.to_string(), "detail": detail})
                    );
                }
            }
            NmsEvent::CampaignHalted { campaign, ref reason } => {
                error!("campaign {} halted: {reason}", hex::encode(campaign));
                if let Some(ui) = self.uis.get_mut(&campaign) {
                    ui.event(&ev);
                }
            }
            NmsEvent::NodeProgress { campaign, .. }
            | NmsEvent::NodeInstalled { campaign, .. }
            | NmsEvent::NodeFailed { campaign, .. }
            | NmsEvent::NodeUnreachable { campaign, .. }
            | NmsEvent::AuthRefused { campaign, .. } => {
                if let Some(ui) = self.uis.get_mut(&campaign) {
                    ui.event(&ev);
                }
            }
            NmsEvent::CampaignDone { summary } => {
                if let Some(ui) = self.uis.get(&summary.campaign) {
                    ui.finish();
                }
                let s = Summary::from_core(&summary);
                if json {
                    println!("{}", serde_json::json!({"event": "campaign-done", "summary": s}));
                } else {
                    print_summary(&s);
                }
                self.summaries.push(s);
            }
        }
    }
}

impl Summary {
    /// The operator's and scripts' form of the endpoint's summary.
    pub fn from_core(s: &CampaignSummary) -> Summary {
        let listed = |it: &mut dyn Iterator<Item = (&NodeId, &str)>| -> Vec<FailedNode> {
            it.map(|(node, reason)| FailedNode {
                node: node.to_string(),
                reason: reason.to_string(),
            })
            .collect()
        };
        let failed = listed(&mut s.failed());
        let unreachable = listed(&mut s.unreachable());
        let per_node = s
            .nodes
            .iter()
            .map(|o| NodeResult {
                node: o.node.to_string(),
                status: status_name(&o.status).to_string(),
                reason: o.status.reason().map(str::to_string),
                secs: o.took.map(|t| t.as_secs_f64()),
            })
            .collect();
        Summary {
            campaign: hex::encode(s.campaign),
            package: s.package.clone(),
            version: s.version.clone(),
            sequence: s.sequence,
            size: s.size,
            nodes: s.nodes.len(),
            installed: s.installed,
            failed,
            unreachable,
            halted: s.halted.clone(),
            wall_secs: s.wall().as_secs_f64(),
            nms_bytes_sent: s.bytes_sent,
            nms_copies: s.bytes_sent as f64 / s.size.max(1) as f64,
            per_node,
        }
    }
}

/// The operator's end-of-campaign summary.
pub fn print_summary(s: &Summary) {
    let mib = s.size as f64 / (1024.0 * 1024.0);
    println!(
        "campaign {} — {} {} (sequence {}), {:.1} MiB",
        &s.campaign[..12],
        s.package,
        s.version,
        s.sequence,
        mib
    );
    println!("  installed: {}/{} nodes", s.installed, s.nodes);
    for f in &s.failed {
        println!("  FAILED {}: {}", f.node, f.reason);
    }
    for f in &s.unreachable {
        println!(
            "  UNREACHABLE {}: {} (it gets the package if it returns before expiry)",
            f.node, f.reason
        );
    }
    if let Some(h) = &s.halted {
        println!("  HALTED: {h}");
    }
    for n in s
        .per_node
        .iter()
        .filter(|n| n.status == "halted" || n.status == "trusts-other-nms")
    {
        println!("  {} {}", n.status.to_uppercase(), n.node);
    }
    println!("  wall time, drop to last install: {:.2} s", s.wall_secs);
    println!(
        "  NMS sent {:.1} MiB = {:.2} x the package",
        s.nms_bytes_sent as f64 / (1024.0 * 1024.0),
        s.nms_copies
    );
}

/// The operator's and scripts' name of a node's status.
pub fn status_name(s: &NodeStatus) -> &'static str {
    match s {
        NodeStatus::Waiting => "waiting",
        NodeStatus::Receiving => "receiving",
        NodeStatus::Verifying => "verifying",
        NodeStatus::Authenticated => "authenticated",
        NodeStatus::Installed => "installed",
        NodeStatus::Failed(_) => "failed",
        NodeStatus::Unreachable(_) => "unreachable",
        NodeStatus::Halted(_) => "halted",
        NodeStatus::TrustsOther(_) => "trusts-other-nms",
    }
}
