//! The NMS daemon: a thin tokio shell around [`CampaignMonitor`]s, a drop-folder
//! watcher, discovery, and the operator's live view.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use baton_protocol::wire::{PROTOCOL_VERSION, encode_control};
use baton_protocol::{
    CampaignId, CampaignMonitor, ChunkRequest, ChunkResponse, ChunkStatus, Control, ControlKind, Keypair,
    Manifest, MonitorAction, MonitorConfig, MonitorNote, NodeId, NodeStatus, RequestId, ServeAction,
};
use baton_shell::chunkfile::read_and_seal;
use baton_shell::discovery::{Advert, Discovery, DiscoveryEvent, Interfaces, Role};
use baton_shell::net::{self, Behaviour, BehaviourEvent, Inbound};
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
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
    pub secs: Option<f64>,
}

enum Internal {
    Prepared(PathBuf, Instant, Box<Result<Prepared>>),
}

struct Running {
    monitor: CampaignMonitor,
    manifest: Arc<Manifest>,
    /// The NMS's copy of the package, kept open.
    data: Arc<std::fs::File>,
    dir: PathBuf,
    dropped_at: Instant,
    bytes_sent: u64,
    ui: Ui,
}

struct NodeInfo {
    tags: Vec<String>,
    present: bool,
}

struct Nms {
    opts: NmsOptions,
    keypair: Keypair,
    swarm: Swarm<Behaviour>,
    start: Instant,
    nodes: BTreeMap<PeerId, NodeInfo>,
    last_change: Instant,
    pending: VecDeque<(PathBuf, Instant)>,
    preparing: bool,
    campaigns: HashMap<CampaignId, Running>,
    out_control: HashMap<OutboundRequestId, (CampaignId, NodeId, ControlKind)>,
    in_chunk: HashMap<(CampaignId, RequestId), ResponseChannel<ChunkResponse>>,
    next_req: u64,
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
    let mut nms = Nms {
        opts: opts.clone(),
        keypair,
        swarm,
        start: Instant::now(),
        nodes: BTreeMap::new(),
        last_change: Instant::now(),
        pending: VecDeque::new(),
        preparing: false,
        campaigns: HashMap::new(),
        out_control: HashMap::new(),
        in_chunk: HashMap::new(),
        next_req: 0,
        internal: itx,
        summaries: Vec::new(),
        failures: net::FailureLog::default(),
    };
    for p in &opts.peers {
        match net::peer_of(p) {
            Some(id) => {
                nms.swarm.add_peer_address(id, p.clone());
                nms.nodes.insert(
                    id,
                    NodeInfo {
                        tags: Vec::new(),
                        present: true,
                    },
                );
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
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let deadline = nms.next_deadline();
        tokio::select! {
            ev = nms.swarm.select_next_some() => nms.on_swarm(ev),
            Some(d) = disco_rx.recv() => nms.on_discovery(d),
            Some(d) = drops.recv() => nms.on_drop(d),
            Some(i) = irx.recv() => nms.on_internal(i),
            _ = tokio::time::sleep_until(deadline.into()) => nms.on_timeout(),
            _ = tick.tick() => nms.on_tick(),
            _ = tokio::signal::ctrl_c() => { info!("interrupted; stopping"); break; }
            _ = term.recv() => { info!("terminated; stopping"); break; }
        }
        nms.drive_all();
        if opts.once && !nms.summaries.is_empty() {
            break;
        }
    }
    for r in nms.campaigns.values() {
        r.ui.finish();
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

    fn next_deadline(&self) -> Instant {
        let far = self.now() + Duration::from_secs(3600);
        let t = self
            .campaigns
            .values()
            .filter_map(|r| r.monitor.poll_timeout())
            .min()
            .unwrap_or(far)
            .min(far);
        self.start + t
    }

    fn eligible(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.present && self.opts.tags.iter().all(|t| n.tags.contains(t)))
            .map(|(p, _)| NodeId(*p))
            .collect()
    }

    fn on_discovery(&mut self, ev: DiscoveryEvent) {
        match ev {
            DiscoveryEvent::Found { advert, addrs } => {
                let Ok(peer) = advert.peer_id.parse::<PeerId>() else {
                    return;
                };
                if advert.version != PROTOCOL_VERSION {
                    warn!(
                        "{peer} speaks protocol {}; this NMS speaks {PROTOCOL_VERSION}; not using it",
                        advert.version
                    );
                    return;
                }
                for ip in &addrs {
                    self.swarm.add_peer_address(peer, net::tcp_addr(*ip, advert.port));
                }
                if advert.role != Role::Node {
                    return;
                }
                let new = !self.nodes.get(&peer).is_some_and(|n| n.present);
                self.nodes.insert(
                    peer,
                    NodeInfo {
                        tags: advert.tags,
                        present: true,
                    },
                );
                if new {
                    self.last_change = Instant::now();
                    let known = self.eligible().len();
                    info!("node {peer} discovered ({known} known)");
                    if self.opts.json {
                        println!(
                            "{}",
                            serde_json::json!({"event": "node-discovered", "node": peer.to_string(), "known": known})
                        );
                    }
                }
            }
            DiscoveryEvent::Lost { peer_id } => {
                if let Ok(peer) = peer_id.parse::<PeerId>()
                    && let Some(n) = self.nodes.get_mut(&peer)
                {
                    n.present = false;
                    self.last_change = Instant::now();
                    info!("node {peer} left");
                }
            }
        }
    }

    fn on_drop(&mut self, ev: DropEvent) {
        match ev {
            DropEvent::Ready { path, size } => {
                info!("dropped: {} ({size} bytes)", path.display());
                self.pending.push_back((path, Instant::now()));
                self.start_pending();
            }
            DropEvent::Error { path, message } => {
                error!("{}: {message}; no campaign started", path.display());
                if self.opts.json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "drop-error", "path": path, "message": message})
                    );
                }
            }
        }
    }

    /// Starts pending drops once discovery has settled.
    fn on_tick(&mut self) {
        for r in self.campaigns.values_mut() {
            r.ui.update(&r.monitor);
        }
        self.start_pending();
    }

    fn start_pending(&mut self) {
        if self.preparing {
            return;
        }
        let Some((path, dropped_at)) = self.pending.front().cloned() else {
            return;
        };
        let nodes = self.eligible();
        let enough = nodes.len() >= self.opts.min_nodes.max(1);
        let settled = self.last_change.elapsed() >= self.opts.settle;
        if !(enough && settled) {
            if dropped_at.elapsed() >= self.opts.discovery_timeout {
                self.pending.pop_front();
                error!(
                    "{}: only {} node(s) found{} within {:?}, {} needed; no campaign started. Check that nodes run and are on this LAN, or lower --min-nodes",
                    path.display(),
                    nodes.len(),
                    if self.opts.tags.is_empty() {
                        String::new()
                    } else {
                        format!(" with tags {:?}", self.opts.tags)
                    },
                    self.opts.discovery_timeout,
                    self.opts.min_nodes.max(1)
                );
            }
            return;
        }
        self.pending.pop_front();
        self.preparing = true;
        let (data, kp, settings, tx) = (
            self.opts.data_dir.clone(),
            self.keypair.clone(),
            self.opts.settings.clone(),
            self.internal.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            // opens the dropped file once, without following links, and reads only from that
            let r = intake(&data, &path, &kp, nodes, &settings);
            if r.is_ok() {
                info!("copied, hashed and signed in {} ms", t.elapsed().as_millis());
            }
            let _ = tx.send(Internal::Prepared(path, dropped_at, Box::new(r)));
        });
    }

    fn on_internal(&mut self, i: Internal) {
        match i {
            Internal::Prepared(path, dropped_at, r) => {
                self.preparing = false;
                match *r {
                    Ok(p) => self.start_campaign(p, dropped_at),
                    Err(e) => {
                        error!("{}: {e:#}; no campaign started", path.display());
                        if self.opts.json {
                            println!(
                                "{}",
                                serde_json::json!({"event": "drop-error", "path": path, "message": format!("{e:#}")})
                            );
                        }
                    }
                }
                self.start_pending();
            }
        }
    }

    fn start_campaign(&mut self, p: Prepared, dropped_at: Instant) {
        let m = &p.manifest;
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
        if self.opts.json {
            println!(
                "{}",
                serde_json::json!({"event": "campaign-started", "campaign": hex::encode(m.campaign), "package": m.name,
                    "version": m.version, "sequence": m.sequence, "size": m.size, "nodes": m.addressees.len()})
            );
        }
        let data = match std::fs::File::open(&p.file) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                error!(
                    "cannot open the campaign's copy {}: {e}; no campaign started",
                    p.file.display()
                );
                return;
            }
        };
        let monitor = CampaignMonitor::start(
            self.now(),
            p.manifest.clone(),
            p.signed,
            p.secret,
            MonitorConfig::default(),
        );
        let ui = Ui::new(&p.manifest, self.opts.json);
        self.campaigns.insert(
            p.manifest.campaign,
            Running {
                monitor,
                manifest: Arc::new(p.manifest),
                data,
                dir: p.dir,
                dropped_at,
                bytes_sent: 0,
                ui,
            },
        );
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        let now = self.now();
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Control(e)) => match e {
                request_response::Event::Message { peer, message, .. } => match message {
                    request_response::Message::Request {
                        request: Inbound::Unreadable(why),
                        ..
                    } => self.failures.unreadable(peer, "control", &why),
                    request_response::Message::Request {
                        request: Inbound::Msg(request),
                        channel,
                        ..
                    } => {
                        let answer = match &request {
                            Control::Probe { nonce } => Control::ProbeReply { nonce: *nonce },
                            other => match other.campaign().and_then(|c| self.campaigns.get_mut(c)) {
                                Some(r) => {
                                    let a = r.monitor.request(now, NodeId(peer), other);
                                    r.bytes_sent += encode_control(&a).len() as u64;
                                    a
                                }
                                None => Control::Error {
                                    reason: "this NMS does not know that campaign".into(),
                                },
                            },
                        };
                        let _ = self.swarm.behaviour_mut().control.send_response(channel, answer);
                    }
                    request_response::Message::Response { request_id, response } => {
                        if let Some((c, to, _)) = self.out_control.remove(&request_id)
                            && let Some(r) = self.campaigns.get_mut(&c)
                        {
                            r.monitor.response(now, to, response);
                        }
                    }
                },
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                } => {
                    if let Some((c, to, kind)) = self.out_control.remove(&request_id) {
                        warn!("{kind:?} to {to} failed: {error}");
                        if let Some(r) = self.campaigns.get_mut(&c) {
                            r.monitor.send_failed(now, to, kind, &error.to_string());
                        }
                    }
                }
                request_response::Event::InboundFailure { peer, error, .. } => {
                    self.failures.inbound(peer, "control", &error)
                }
                _ => {}
            },
            SwarmEvent::Behaviour(BehaviourEvent::Chunk(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request: Inbound::Msg(request),
                        channel,
                        ..
                    },
                ..
            })) => self.on_chunk_request(peer, request, channel),
            SwarmEvent::Behaviour(BehaviourEvent::Chunk(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request: Inbound::Unreadable(why),
                        ..
                    },
                ..
            })) => self.failures.unreadable(peer, "chunk", &why),
            SwarmEvent::Behaviour(BehaviourEvent::Chunk(request_response::Event::InboundFailure {
                peer,
                error,
                ..
            })) => self.failures.inbound(peer, "chunk", &error),
            _ => {}
        }
    }

    fn on_chunk_request(
        &mut self,
        peer: PeerId,
        request: ChunkRequest,
        channel: ResponseChannel<ChunkResponse>,
    ) {
        let now = self.now();
        let campaign = request.campaign;
        match self.campaigns.get_mut(&campaign) {
            Some(r) => {
                self.next_req += 1;
                let rid = RequestId(self.next_req);
                self.in_chunk.insert((campaign, rid), channel);
                r.monitor.chunk_request(now, rid, NodeId(peer), &request);
            }
            None => {
                let resp = ChunkResponse {
                    campaign,
                    index: request.index,
                    status: ChunkStatus::UnknownCampaign,
                    data: Vec::new(),
                };
                let _ = self.swarm.behaviour_mut().chunk.send_response(channel, resp);
            }
        }
    }

    fn on_timeout(&mut self) {
        let now = self.now();
        for r in self.campaigns.values_mut() {
            if r.monitor.poll_timeout().is_some_and(|t| t <= now) {
                r.monitor.timeout(now);
            }
        }
    }

    fn drive_all(&mut self) {
        let ids: Vec<CampaignId> = self.campaigns.keys().copied().collect();
        for c in ids {
            self.drive(c);
        }
    }

    fn drive(&mut self, c: CampaignId) {
        let mut done = false;
        loop {
            let Some(r) = self.campaigns.get_mut(&c) else {
                return;
            };
            let Some(action) = r.monitor.poll_action() else {
                break;
            };
            match action {
                MonitorAction::Send { to, msg } => {
                    r.bytes_sent += encode_control(&msg).len() as u64;
                    let kind = msg.kind();
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .control
                        .send_request(&to.0, Inbound::Msg(msg));
                    self.out_control.insert(id, (c, to, kind));
                }
                MonitorAction::Serve(ServeAction::SendChunk { req, index, key, .. }) => {
                    let resp = read_and_seal(&r.data, &r.manifest, index, &key);
                    if let Some(ch) = self.in_chunk.remove(&(c, req)) {
                        r.bytes_sent += (resp.data.len() + ChunkResponse::HEADER_LEN + 4) as u64;
                        let _ = self.swarm.behaviour_mut().chunk.send_response(ch, resp);
                    }
                }
                MonitorAction::Serve(ServeAction::Answer { req, index, status }) => {
                    if let Some(ch) = self.in_chunk.remove(&(c, req)) {
                        let resp = ChunkResponse {
                            campaign: c,
                            index,
                            status,
                            data: Vec::new(),
                        };
                        let _ = self.swarm.behaviour_mut().chunk.send_response(ch, resp);
                    }
                }
                MonitorAction::Note(n) => {
                    r.ui.note(&n);
                    if n == MonitorNote::Done {
                        done = true;
                    }
                }
            }
        }
        if done {
            self.finish(c);
        }
    }

    fn finish(&mut self, c: CampaignId) {
        let Some(r) = self.campaigns.get_mut(&c) else {
            return;
        };
        r.ui.update(&r.monitor);
        r.ui.finish();
        let m = &r.manifest;
        let started = r.monitor.started();
        let mut failed = Vec::new();
        let mut per_node = Vec::new();
        for id in &m.addressees {
            let v = &r.monitor.nodes()[id];
            let secs = v.finished_at.map(|t| t.saturating_sub(started).as_secs_f64());
            let status = match &v.status {
                NodeStatus::Installed => "installed".to_string(),
                NodeStatus::Failed(reason) => {
                    failed.push(FailedNode {
                        node: id.to_string(),
                        reason: reason.clone(),
                    });
                    "failed".to_string()
                }
                other => format!("{other:?}").to_lowercase(),
            };
            per_node.push(NodeResult {
                node: id.to_string(),
                status,
                secs,
            });
        }
        let (installed, _, total) = r.monitor.counts();
        // wall time: from the drop being detected to the last node's final report
        let finished = r.monitor.finished_at().unwrap_or(started);
        let wall = r.dropped_at.elapsed().as_secs_f64()
            - (self.start.elapsed().saturating_sub(finished)).as_secs_f64();
        let s = Summary {
            campaign: hex::encode(c),
            package: m.name.clone(),
            version: m.version.clone(),
            sequence: m.sequence,
            size: m.size,
            nodes: total,
            installed,
            failed,
            wall_secs: wall,
            nms_bytes_sent: r.bytes_sent,
            nms_copies: r.bytes_sent as f64 / m.size.max(1) as f64,
            per_node,
        };
        if let Err(e) = std::fs::write(
            r.dir.join("summary.json"),
            serde_json::to_string_pretty(&s).unwrap_or_default(),
        ) {
            warn!("cannot save the campaign summary: {e}");
        }
        if self.opts.json {
            println!("{}", serde_json::json!({"event": "campaign-done", "summary": s}));
        } else {
            print_summary(&s);
        }
        self.summaries.push(s);
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
    println!("  wall time, drop to last install: {:.2} s", s.wall_secs);
    println!(
        "  NMS sent {:.1} MiB = {:.2} x the package",
        s.nms_bytes_sent as f64 / (1024.0 * 1024.0),
        s.nms_copies
    );
}
