//! The NMS daemon: a thin tokio shell around [`NmsEndpoint`], which decides everything
//! (the fleet, when a drop becomes a campaign, the campaigns). This file only translates:
//! swarm, discovery, drop-folder and background-job events become [`NmsInput`]s;
//! [`NmsAction`]s become requests, answers, jobs and files; [`NmsEvent`]s go to the
//! operator's view (`ui.rs`), the log and `--json` lines. It sleeps until the endpoint's
//! `poll_timeout`: there is no periodic tick.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use baton_protocol::endpoint::nms::{
    DropId, FailureThreshold, NmsAction, NmsConfig, NmsEndpoint, NmsEvent, NmsInput, OutboundId, PeerRole,
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
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::campaign::{
    Before, CampaignSettings, Inbox, Intook, follow_up, intake, remove_old_copies, remove_orphan_copies,
    taken_in_before,
};
use crate::db::{CampaignState, Db, SavedCampaign};
use crate::ops::{Request, Response};
pub use crate::ui::{FailedNode, NodeResult, Summary};
use crate::ui::{Mode, View};
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
    /// How the operator's output is written (bars, lines, JSON lines).
    pub output: Mode,
    /// How long a dropped file must stay unchanged before it is taken in.
    pub settle_file: Duration,
    /// Where files taken in are moved (same filesystem as the drop folder).
    pub archive: Option<PathBuf>,
    /// Halt a campaign once this many addressees failed or are unreachable.
    pub halt_after: Option<FailureThreshold>,
    /// Exit after the first campaign ends.
    pub once: bool,
}

enum Internal {
    Prepared(DropId, Box<Result<Intook>>),
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
    view: View,
    control_reqs: net::Requests<(OutboundId, NodeId, ControlKind)>,
    chunk_reqs: net::Requests<()>,
    in_control: HashMap<RequestId, ResponseChannel<Control>>,
    in_chunk: HashMap<RequestId, ResponseChannel<ChunkResponse>>,
    internal: mpsc::UnboundedSender<Internal>,
    summaries: Vec<Summary>,
    failures: net::FailureLog,
    /// The state that survives a restart.
    inbox: Inbox,
    /// Addresses given back after a failed dial (`--peer` and discovered ones).
    addresses: net::AddressBook,
    /// Drops that are kept copies distributed again as the operator's rollback.
    rollbacks: HashSet<DropId>,
}

/// How long a `--once` NMS keeps its swarm running after its campaign ended, so that the
/// answers still queued reach their nodes.
const ONCE_FLUSH: Duration = Duration::from_secs(1);

/// Drives the swarm for [`ONCE_FLUSH`] (answers go out as it is polled).
async fn flush_answers(nms: &mut Nms) {
    let until = tokio::time::Instant::now() + ONCE_FLUSH;
    while let Ok(ev) = tokio::time::timeout_at(until, nms.swarm.select_next_some()).await {
        nms.on_swarm(ev);
        nms.drive();
    }
}

/// Runs the NMS until Ctrl-C (or, with `--once`, until its first campaign ends). Returns
/// the summaries of the campaigns that ended (with `--once` only: a long-running NMS keeps
/// none in memory; they are in `campaigns/<id>/summary.json`).
pub async fn run(opts: NmsOptions) -> Result<Vec<Summary>> {
    let _lock = baton_shell::identity::lock_data_dir(&opts.data_dir, "baton-nms")?;
    let keypair = baton_shell::identity::load_or_create(&opts.data_dir)?;
    let me = NodeId::of(&keypair);
    let db = Db::open(&opts.data_dir)?;
    let inbox = Inbox {
        db: Arc::new(std::sync::Mutex::new(db)),
        data_dir: opts.data_dir.clone(),
        archive: opts.archive.clone(),
    };
    // the operator's commands (ops.rs): refused while another process answers on it
    let (_control, mut operator) = baton_shell::control::ControlServer::bind::<Request, Response>(
        &crate::ops::socket_path(&opts.data_dir),
        "baton-nms",
    )?;
    let (watcher, mut drops) = DropWatcher::start(&opts.watch, opts.settle_file)?;
    let mut swarm = net::build_swarm(
        keypair.clone(),
        opts.listen.clone(),
        &format!("baton-nms/{}", env!("CARGO_PKG_VERSION")),
        net::Limits::nms(),
    )?;
    let port = net::wait_for_port(&mut swarm, &opts.listen).await?;
    info!(peer_id = %me, port, watch = %opts.watch.display(), "baton-nms started");
    let at = net::socket_of(&opts.listen).map_or_else(
        || format!("TCP port {port}"),
        |a| std::net::SocketAddr::new(a.ip(), port).to_string(),
    );
    eprintln!(
        "baton-nms {me}\n  listening on {at} (TCP: firewalls must let the nodes reach it)\n  watching {} (drop packages there)\n  nodes must trust it: baton-node --trust {me}",
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
            halt_after: opts.halt_after,
            unix_origin: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            monitor: MonitorConfig::default(),
            fanout: opts.settings.plan.fanout,
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
        view: View::new(opts.output),
        control_reqs: net::Requests::new("control"),
        chunk_reqs: net::Requests::new("chunk"),
        in_control: HashMap::new(),
        in_chunk: HashMap::new(),
        internal: itx,
        summaries: Vec::new(),
        failures: net::FailureLog::default(),
        inbox,
        addresses: net::AddressBook::default(),
        rollbacks: HashSet::new(),
    };
    for p in &opts.peers {
        match net::peer_of(p) {
            Some(id) => {
                nms.addresses.add_static(id, p.clone());
                let r = nms
                    .db()
                    .node_seen(&NodeId(id), &[p.to_string()], None, unix_now());
                nms.db_error(r);
                nms.swarm.add_peer_address(id, p.clone());
                nms.input(NmsInput::StaticPeer { id: NodeId(id) });
            }
            None => warn!("--peer {p} has no /p2p/<peer id> at its end; ignoring it"),
        }
    }
    // after the static peers, so that offers made again can reach them
    nms.resume_campaigns(me)?;
    remove_orphan_copies(&nms.db(), &opts.data_dir.join("campaigns"));
    nms.retention();
    let (discovery, mut disco_rx) = if opts.mdns {
        let advert = Advert {
            peer_id: me.to_string(),
            role: Role::Nms,
            version: PROTOCOL_VERSION,
            port,
            tags: Vec::new(),
            relay: None,
            agent: None,
        };
        let (d, rx) = Discovery::start(&advert, &net::advertised_ips(&opts.listen), &opts.interfaces)
            .context("starting mDNS discovery")?;
        (Some(d), rx)
    } else {
        (None, mpsc::channel(1).1)
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        nms.drive();
        if opts.once && !nms.summaries.is_empty() {
            // the answer to the report that ended the campaign is queued, not sent: let the
            // swarm send it, or that node retries its report for minutes to an NMS gone
            flush_answers(&mut nms).await;
            break;
        }
        let deadline = nms.next_deadline();
        tokio::select! {
            ev = nms.swarm.select_next_some() => nms.on_swarm(ev),
            Some(d) = disco_rx.recv() => nms.on_discovery(d),
            Some(d) = drops.recv() => nms.on_drop(d),
            Some(i) = irx.recv() => nms.on_internal(i),
            Some(call) = operator.recv() => {
                let r = nms.operate(call.request.clone());
                call.reply(r);
            }
            _ = tokio::time::sleep_until(deadline.into()) => { nms.input(NmsInput::Timeout); }
            _ = tokio::signal::ctrl_c() => { info!("interrupted; stopping"); break; }
            _ = term.recv() => { info!("terminated; stopping"); break; }
        }
    }
    nms.view.finish();
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

    fn on_discovery(&mut self, ev: DiscoveryEvent) {
        match ev {
            DiscoveryEvent::Found { advert, addrs } => {
                let Ok(peer) = advert.peer_id.parse::<PeerId>() else {
                    return;
                };
                let mut seen = Vec::new();
                let mut known = Vec::new();
                for ip in &addrs {
                    let a = net::tcp_addr(*ip, advert.port);
                    seen.push(a.to_string());
                    self.swarm.add_peer_address(peer, a.clone());
                    known.push(a);
                }
                self.addresses.discovered(peer, known);
                if advert.role == Role::Node {
                    let r = self
                        .db()
                        .node_seen(&NodeId(peer), &seen, Some(&advert.tags), unix_now());
                    self.db_error(r);
                    if let Some(a) = &advert.agent {
                        let r = self
                            .db()
                            .node_agent(&NodeId(peer), &a.version, &a.build, unix_now());
                        self.db_error(r);
                    }
                }
                self.input(NmsInput::NodeSeen {
                    id: NodeId(peer),
                    tags: advert.tags,
                    role: match advert.role {
                        Role::Node => PeerRole::Node,
                        Role::Nms => PeerRole::Nms,
                    },
                    version: advert.version,
                    relay: advert.relay,
                });
            }
            DiscoveryEvent::Lost { peer_id } => {
                if let Ok(peer) = peer_id.parse::<PeerId>() {
                    self.addresses.lost(&peer);
                    if self.endpoint.present_nodes().any(|n| n == NodeId(peer)) {
                        // seen until now: "last seen" is when its advert went away
                        let r = self.db().node_gone(&NodeId(peer), unix_now());
                        self.db_error(r);
                    }
                    self.input(NmsInput::NodeLost { id: NodeId(peer) });
                }
            }
        }
    }

    fn on_drop(&mut self, ev: DropEvent) {
        match ev {
            DropEvent::Ready { path, size } => {
                if self.taken_in_before(&path) {
                    return;
                }
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

    fn drop_error(&mut self, path: &str, message: &str) {
        self.view.drop_error(path, message);
    }

    /// Copies, hashes and signs a drop off the event loop.
    /// Prepares a drop off the event loop for `addressees`, whose last `leaves` are
    /// leaf-only (the endpoint's order for the plan).
    fn prepare(&mut self, drop_id: DropId, addressees: Vec<NodeId>, leaves: u32) {
        let Some(path) = self.drops.get(&drop_id).cloned() else {
            return;
        };
        let kept = self.rollbacks.remove(&drop_id);
        let (inbox, kp, settings, tx) = (
            self.inbox.clone(),
            self.keypair.clone(),
            crate::campaign::CampaignSettings {
                plan: baton_protocol::manifest::PlanParams {
                    leaves,
                    ..self.opts.settings.plan
                },
                ..self.opts.settings.clone()
            },
            self.internal.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            // opens the dropped file once, without following links, and reads only from that
            let r = if kept {
                crate::campaign::Dropped::kept_copy(&path)
                    .and_then(|d| crate::campaign::prepare(&inbox, d, &kp, addressees, &settings))
            } else {
                intake(&inbox, &path, &kp, addressees, &settings)
            };
            if matches!(r, Ok(Intook::Campaign(_))) {
                info!("copied, hashed and signed in {} ms", t.elapsed().as_millis());
            }
            let _ = tx.send(Internal::Prepared(drop_id, Box::new(r)));
        });
    }

    /// Signs a follow-up campaign for late joiners off the event loop (no hashing: the
    /// version's chunk hashes are reused).
    fn follow_up(&mut self, drop_id: DropId, of: CampaignId, addressees: Vec<NodeId>, leaves: u32) {
        let name = format!(
            "follow-up of campaign {} for {} late node(s)",
            &hex::encode(of)[..12],
            addressees.len()
        );
        info!(
            "{name}: {}",
            addressees
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        self.drops.insert(drop_id, PathBuf::from(name));
        let (inbox, kp, tx) = (self.inbox.clone(), self.keypair.clone(), self.internal.clone());
        tokio::task::spawn_blocking(move || {
            let r = follow_up(&inbox, &of, &kp, addressees, leaves);
            let _ = tx.send(Internal::Prepared(drop_id, Box::new(r)));
        });
    }

    fn on_internal(&mut self, i: Internal) {
        match i {
            Internal::Prepared(drop_id, r) => {
                let input = match *r {
                    Ok(Intook::Nothing(why)) => {
                        info!("{why}");
                        NmsInput::PrepareFailed { drop_id, reason: why }
                    }
                    Ok(Intook::Campaign(p)) => match std::fs::File::open(&p.file) {
                        Ok(f) => {
                            for old in &p.superseded {
                                info!(
                                    "campaign {} of {} is superseded by campaign {} (sequence {})",
                                    hex::encode(old),
                                    p.manifest.name,
                                    hex::encode(p.manifest.campaign),
                                    p.manifest.sequence
                                );
                            }
                            self.prepared.insert(drop_id, (Arc::new(f), p.dir));
                            NmsInput::Prepared {
                                drop_id,
                                manifest: Box::new(p.manifest),
                                signed: p.signed,
                                secret: p.secret,
                            }
                        }
                        Err(e) => {
                            let r = self
                                .db()
                                .set_state(&p.manifest.campaign, CampaignState::Cancelled);
                            self.db_error(r);
                            NmsInput::PrepareFailed {
                                drop_id,
                                reason: format!("cannot open the campaign's copy {}: {e}", p.file.display()),
                            }
                        }
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
            SwarmEvent::OutgoingConnectionError { peer_id: Some(p), .. } => {
                // libp2p forgets an address that failed to dial (a restarting node), and
                // discovery does not report an unchanged advert again: given back
                for a in self.addresses.of(&p) {
                    self.swarm.add_peer_address(p, a.clone());
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
            NmsAction::Prepare {
                drop_id,
                addressees,
                leaves,
            } => self.prepare(drop_id, addressees, leaves),
            NmsAction::FollowUp {
                drop_id,
                of,
                addressees,
                leaves,
            } => self.follow_up(drop_id, of, addressees, leaves),
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
                // the view's summary (it knows where the bytes came from), if it made one;
                // a long-running NMS keeps none in memory (only --once reports them)
                let id = hex::encode(summary.campaign);
                let s = self
                    .summaries
                    .iter()
                    .rev()
                    .find(|s| s.campaign == id)
                    .cloned()
                    .unwrap_or_else(|| Summary::from_core(&summary));
                if !self.opts.once {
                    self.summaries.retain(|s| s.campaign != id);
                }
                let Some(f) = self.files.get(&summary.campaign) else {
                    return;
                };
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
        // the operator sees every event (bars, lines or JSON lines: ui.rs)
        let drop = match &ev {
            NmsEvent::DropWaiting { drop_id, .. }
            | NmsEvent::DropAbandoned { drop_id, .. }
            | NmsEvent::DropFailed { drop_id, .. }
            | NmsEvent::CampaignStarted { drop_id, .. } => {
                self.drops.get(drop_id).map(|p| p.display().to_string())
            }
            _ => None,
        };
        if let Some(s) = self.view.event(&ev, drop.as_deref()) {
            self.summaries.push(s);
        }
        match ev {
            NmsEvent::DropAbandoned { drop_id, .. } => {
                self.drops.remove(&drop_id);
                self.rollbacks.remove(&drop_id);
            }
            NmsEvent::DropFailed { drop_id, .. } => {
                self.drops.remove(&drop_id);
                self.rollbacks.remove(&drop_id);
                self.prepared.remove(&drop_id);
            }
            NmsEvent::CampaignStarted { drop_id, manifest } => {
                self.drops.remove(&drop_id);
                if let Some((data, dir)) = self.prepared.remove(&drop_id) {
                    self.files.insert(
                        manifest.campaign,
                        Files {
                            manifest: Arc::new(*manifest),
                            data,
                            dir,
                        },
                    );
                }
            }
            NmsEvent::NodeProgress {
                campaign,
                node,
                ref status,
                verified,
                source,
                ..
            } => {
                let r = self
                    .db()
                    .save_node(&campaign, &node, status, verified, source.as_ref(), unix_now());
                self.db_error(r);
                // at work on our campaign: it accepted our offer, so it trusts this NMS
                if matches!(
                    status,
                    NodeStatus::Receiving
                        | NodeStatus::Verifying
                        | NodeStatus::Authenticated
                        | NodeStatus::Installed
                ) {
                    let r = self.db().node_trusts_us(&node);
                    self.db_error(r);
                }
            }
            NmsEvent::NodeFailed { campaign, node, .. }
            | NmsEvent::NodeUnreachable { campaign, node, .. } => self.save_view(&campaign, &[node]),
            NmsEvent::NodeTrustsOtherNms {
                campaign,
                node,
                ref detail,
            } => {
                self.save_view(&campaign, &[node]);
                let r = self.db().node_trusts_other(&node, detail, unix_now());
                self.db_error(r);
            }
            NmsEvent::CampaignHalted { campaign, .. } => {
                let nodes: Vec<NodeId> = self
                    .endpoint
                    .campaign(&campaign)
                    .map(|m| m.nodes().keys().copied().collect())
                    .unwrap_or_default();
                self.save_view(&campaign, &nodes);
            }
            NmsEvent::NodeInstalled { campaign, node } => {
                self.save_view(&campaign, &[node]);
                let r = self.db().node_trusts_us(&node);
                self.db_error(r);
                if let Some(f) = self.files.get(&campaign) {
                    let m = &f.manifest;
                    let r = self
                        .db()
                        .node_installed(&node, &m.name, &m.version, m.sequence, unix_now());
                    self.db_error(r);
                }
            }
            NmsEvent::CampaignDone { summary } => {
                let r = self.db().campaign_ended(&summary.campaign, unix_now());
                self.db_error(r);
                self.retention();
            }
            _ => {}
        }
    }
}

impl Nms {
    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.inbox.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Saves what the campaign's monitor now holds of `nodes` (status, reason, bytes,
    /// source), so that a restart takes it back.
    fn save_view(&self, campaign: &CampaignId, nodes: &[NodeId]) {
        let Some(m) = self.endpoint.campaign(campaign) else {
            return;
        };
        for n in nodes {
            if let Some(v) = m.nodes().get(n) {
                let r =
                    self.db()
                        .save_node(campaign, n, &v.status, v.verified, v.source.as_ref(), unix_now());
                self.db_error(r);
            }
        }
    }

    /// Logs a failed write to the database; the NMS carries on (what was not saved is
    /// asked again after a restart, at worst as a duplicate offer).
    fn db_error(&self, r: Result<(), crate::db::DbError>) {
        if let Err(e) = r {
            error!("{e}: this state is lost at a restart; check the disk holding the data directory");
        }
    }

    /// True (and says so) if `path` is the very file taken in before, by this process or
    /// one before the restart ([`taken_in_before`]); refuses an oversize file at once.
    fn taken_in_before(&mut self, path: &std::path::Path) -> bool {
        let r = taken_in_before(&self.db(), path, self.opts.settings.chunk_size);
        match r {
            Ok(Before::New) => false,
            Ok(Before::Same(outcome)) => {
                info!(
                    "{}: taken in before ({outcome}); not taken in again",
                    path.display()
                );
                true
            }
            Ok(Before::Refused(why)) => {
                self.drop_error(&path.display().to_string(), &why);
                true
            }
            Err(e) => {
                error!("{e}");
                false
            }
        }
    }

    /// Takes back every campaign the database holds as unfinished: same manifest, same
    /// secret, the addressees' saved statuses. Nothing is signed again.
    fn resume_campaigns(&mut self, me: NodeId) -> Result<()> {
        let (saved, inventory) = {
            let db = self.db();
            (db.unfinished()?, db.inventory()?)
        };
        // where the nodes were last seen, so that offers made again can reach them before
        // discovery finds them
        for n in &inventory {
            if let Ok(peer) = n.node.parse::<PeerId>() {
                for a in n.addresses.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                    self.swarm.add_peer_address(peer, a);
                }
            }
        }
        for c in &saved {
            let id = hex::encode(c.id);
            match self.resume_one(me, c) {
                Ok(()) => info!(
                    "campaign {id}: {} sequence {} resumed after a restart (nothing signed again)",
                    c.package, c.sequence
                ),
                Err(why) => {
                    error!(
                        "campaign {id} of {} cannot be resumed: {why}; it is cancelled",
                        c.package
                    );
                    let r = self.db().set_state(&c.id, CampaignState::Cancelled);
                    self.db_error(r);
                }
            }
        }
        self.feed_late_join()
    }

    /// Tells the endpoint what late joiners need: every campaign of each package's newest
    /// version (cancelled or halted ones stop follow-ups of it) and the installed versions
    /// of the inventory.
    fn feed_late_join(&mut self) -> Result<()> {
        let now = self.now();
        let (all, installed) = {
            let db = self.db();
            (db.campaigns()?, db.installed_sequences()?)
        };
        let mut newest: HashMap<&str, u64> = HashMap::new();
        for c in &all {
            let n = newest.entry(c.package.as_str()).or_default();
            *n = (*n).max(c.sequence);
        }
        for c in all
            .iter()
            .filter(|c| newest.get(c.package.as_str()) == Some(&c.sequence))
        {
            let signed = baton_protocol::SignedManifest {
                body: c.manifest.clone(),
                signature: c.signature.clone(),
            };
            let Ok(m) = signed.open_unchecked() else { continue };
            let halted = c.ended
                && self
                    .db()
                    .nodes_of(&c.id)?
                    .iter()
                    .any(|n| matches!(n.status, NodeStatus::Halted(_)));
            let stopped = c.state == CampaignState::Cancelled || halted;
            self.endpoint.remember(now, &m, stopped);
        }
        for (node, package, sequence) in installed {
            if let Ok(peer) = node.parse::<PeerId>() {
                self.endpoint
                    .know_installed(now, NodeId(peer), &package, sequence);
            }
        }
        Ok(())
    }

    fn resume_one(&mut self, me: NodeId, c: &SavedCampaign) -> std::result::Result<(), String> {
        let signed = baton_protocol::SignedManifest {
            body: c.manifest.clone(),
            signature: c.signature.clone(),
        };
        let manifest = signed
            .open_unchecked()
            .map_err(|e| format!("its saved manifest does not decode ({e})"))?;
        if manifest.nms != me || manifest.campaign != c.id {
            return Err(format!(
                "it was signed by {} for campaign {}, not by this NMS {me}",
                manifest.nms,
                hex::encode(manifest.campaign)
            ));
        }
        if manifest.expires_at <= unix_now() {
            return Err("its manifest expired while the NMS was down; drop the file again".into());
        }
        let copy = c.copy.as_ref().ok_or("its copy of the package was removed")?;
        let file = std::fs::File::open(copy)
            .map_err(|e| format!("its copy {} cannot be opened ({e})", copy.display()))?;
        let nodes = self.db().nodes_of(&c.id).map_err(|e| e.to_string())?;
        let saved: Vec<(NodeId, NodeStatus, u64)> = nodes
            .into_iter()
            .filter_map(|n| Some((NodeId(n.node.parse::<PeerId>().ok()?), n.status, n.verified)))
            .collect();
        self.next_drop += 1;
        let drop_id = DropId(self.next_drop);
        let dir = copy.parent().map(PathBuf::from).unwrap_or_default();
        self.prepared.insert(drop_id, (Arc::new(file), dir));
        let now = self.now();
        let secret = baton_protocol::CampaignSecret(c.secret);
        if !self
            .endpoint
            .restore(now, drop_id, signed, manifest, secret, &saved)
        {
            self.prepared.remove(&drop_id);
            return Err("it is already running".into());
        }
        Ok(())
    }

    /// Removes the copies neither current nor previous ([`remove_old_copies`]).
    fn retention(&mut self) {
        let store = self.opts.data_dir.join("campaigns");
        let removed = remove_old_copies(&self.db(), &store);
        for c in removed {
            self.files.remove(&c);
        }
    }
}

/// The operator's commands (`ops.rs`): answers from the database and the endpoint; a
/// cancel or a resume is the endpoint's decision, told to the database here.
impl Nms {
    fn operate(&mut self, req: Request) -> std::result::Result<Response, String> {
        let all = self.db().campaigns().map_err(|e| e.to_string())?;
        match req {
            Request::Status => {
                let running = all
                    .iter()
                    .filter(|c| self.endpoint.campaign(&c.id).is_some_and(|m| !m.is_done()))
                    .map(|c| self.detail(c).map(|d| d.campaign))
                    .collect::<std::result::Result<Vec<_>, String>>()?;
                Ok(Response::Status(crate::ops::StatusInfo {
                    nms: NodeId::of(&self.keypair).to_string(),
                    pid: std::process::id(),
                    data_dir: self.opts.data_dir.display().to_string(),
                    watch: self.opts.watch.display().to_string(),
                    uptime_secs: self.start.elapsed().as_secs(),
                    nodes_eligible: self.endpoint.eligible().len(),
                    nodes_known: self.db().inventory().map_err(|e| e.to_string())?.len(),
                    drops_waiting: self.endpoint.drops_waiting(),
                    running,
                }))
            }
            Request::Nodes => {
                // "now" for the nodes present, not when their advert last changed
                let present: HashSet<String> = self.endpoint.present_nodes().map(|a| a.to_string()).collect();
                Ok(Response::Nodes {
                    nodes: crate::ops::node_rows(self.db().inventory().map_err(|e| e.to_string())?, |n| {
                        present.contains(n)
                    }),
                })
            }
            Request::Campaigns => Ok(Response::Campaigns {
                campaigns: all
                    .iter()
                    .map(|c| self.detail(c).map(|d| d.campaign))
                    .collect::<std::result::Result<_, _>>()?,
            }),
            Request::Show { id } => {
                let c = crate::ops::resolve(&all, &id)?;
                let c = all.iter().find(|x| x.id == c).expect("resolved");
                Ok(Response::Show(self.detail(c)?))
            }
            Request::Cancel { id } => {
                let c = crate::ops::resolve(&all, &id)?;
                let saved = all.iter().find(|x| x.id == c).expect("resolved");
                let now = self.now();
                let cancelled = self
                    .endpoint
                    .cancel(now, &c)
                    .map_err(|e| format!("{e} (its state: {})", self.state_of(saved)))?;
                // before the campaign's end is told to the database: it stays cancelled
                let r = self.db().set_state(&c, CampaignState::Cancelled);
                self.db_error(r);
                info!("campaign {} cancelled by the operator", hex::encode(c));
                let row = self.detail(saved)?.campaign;
                Ok(Response::Done {
                    message: format!(
                        "campaign {} ({} {}, sequence {}) cancelled: {} node(s) not yet installed or installing are halted, {} installed; resume it with baton-nms resume {}",
                        &row.id[..12],
                        row.package,
                        row.version,
                        row.sequence,
                        cancelled.len(),
                        row.installed,
                        &row.id[..12]
                    ),
                    campaign: Some(row),
                })
            }
            Request::Resume { id } => {
                let c = crate::ops::resolve(&all, &id)?;
                let saved = all.iter().find(|x| x.id == c).expect("resolved").clone();
                let reopened = self.resume(&saved)?;
                let r = self.db().reopened(&c);
                self.db_error(r);
                info!("campaign {} resumed by the operator", hex::encode(c));
                let mut row = self.detail(&saved)?.campaign;
                row.state = "running".into();
                Ok(Response::Done {
                    message: format!(
                        "campaign {} ({} {}, sequence {}) resumed: {} halted node(s) wait again and are offered it",
                        &row.id[..12],
                        row.package,
                        row.version,
                        row.sequence,
                        reopened
                    ),
                    campaign: Some(row),
                })
            }
            Request::Rollback { package, to } => {
                let with_manifests: Vec<(SavedCampaign, Manifest)> = all
                    .iter()
                    .filter(|c| c.package == package)
                    .map(|c| crate::ops::manifest_of(c).map(|(_, m)| (c.clone(), m)))
                    .collect::<std::result::Result<_, _>>()?;
                let (copy, version, seq, current, current_seq) =
                    crate::ops::rollback_target(&with_manifests, &package, to.as_deref())?;
                self.next_drop += 1;
                let drop_id = DropId(self.next_drop);
                self.drops.insert(drop_id, copy.clone());
                self.rollbacks.insert(drop_id);
                info!(
                    "rollback of {package} to {version} asked by the operator: distributing {} again",
                    copy.display()
                );
                self.input(NmsInput::DropReady {
                    drop_id,
                    name: format!("rollback of {package} to {version}"),
                });
                Ok(Response::Done {
                    message: format!(
                        "rollback of {package} from {current} (sequence {current_seq}) to {version} (first distributed with sequence {seq}): \
                         its kept copy goes out again as a new campaign with a sequence above {current_seq}; follow it with baton-nms campaigns"
                    ),
                    campaign: None,
                })
            }
            Request::PublishAgent { path, version } => self.publish_agent(&path, &version),
        }
    }

    /// `baton-nms publish-agent`: checks the file is an ELF executable and puts it into the
    /// watched folder as `baton-node-<version>` (written under a hidden name, then renamed
    /// into place), where it is taken in like any drop (`campaign.rs` gives the reserved
    /// name its self-update flag).
    fn publish_agent(&self, path: &str, version: &str) -> std::result::Result<Response, String> {
        use baton_protocol::selfupdate::{AGENT_PACKAGE, ELF_HEADER_LEN, elf_target};
        use std::io::Read;
        let name = format!("{AGENT_PACKAGE}-{version}");
        let (package, parsed) = baton_protocol::manifest::parse_package_file_name(&name);
        if !baton_protocol::manifest::is_plain_file_name(version)
            || package != AGENT_PACKAGE
            || parsed != version
        {
            return Err(format!(
                "`{version}` cannot be an agent version: give --version as digits and dots, e.g. 0.2.0"
            ));
        }
        let mut header = Vec::with_capacity(ELF_HEADER_LEN);
        std::fs::File::open(path)
            .and_then(|f| f.take(ELF_HEADER_LEN as u64).read_to_end(&mut header))
            .map_err(|e| format!("cannot read {path}: {e}"))?;
        let target = elf_target(&header).map_err(|e| format!("{path}: {e}; nothing published"))?;
        let tmp = self.opts.watch.join(format!(".{name}.publishing"));
        let dest = self.opts.watch.join(&name);
        std::fs::copy(path, &tmp)
            .and_then(|_| std::fs::rename(&tmp, &dest))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!(
                    "cannot put {path} into the watched folder as {}: {e}",
                    dest.display()
                )
            })?;
        info!(
            "agent {version} ({target}) published by the operator as {}",
            dest.display()
        );
        Ok(Response::Done {
            message: format!(
                "{path} ({target}) put into the watched folder as {name}: it goes out as an agent campaign \
                 once taken in; follow it with baton-nms campaigns, and the agents with baton-nms nodes"
            ),
            campaign: None,
        })
    }

    fn state_of(&self, c: &SavedCampaign) -> String {
        self.detail(c)
            .map(|d| {
                format!(
                    "{}{}",
                    d.campaign.state,
                    if d.campaign.ended { ", ended" } else { "" }
                )
            })
            .unwrap_or_else(|e| e)
    }

    fn detail(&self, c: &SavedCampaign) -> std::result::Result<crate::ops::CampaignDetail, String> {
        let (_, m) = crate::ops::manifest_of(c)?;
        let live = self.endpoint.campaign(&c.id);
        let saved = if live.is_some() {
            Vec::new()
        } else {
            self.db().nodes_of(&c.id).map_err(|e| e.to_string())?
        };
        Ok(crate::ops::detail(c, &m, live, &saved))
    }

    /// Resumes a halted campaign (cancelled, or halted by `--halt-after`), held by the
    /// endpoint or (halted before a restart) from the database; its copy must still be kept. Returns how many nodes reopened.
    fn resume(&mut self, c: &SavedCampaign) -> std::result::Result<usize, String> {
        let id = hex::encode(c.id);
        let kept = c.copy.as_ref().filter(|p| p.is_file()).ok_or_else(|| {
            format!(
                "campaign {id} cannot be resumed: its copy of the package was removed (this NMS keeps only the current and the previous version); drop the package file again"
            )
        })?;
        let now = self.now();
        if self.endpoint.campaign(&c.id).is_some() {
            // retention may have let go of its files when it ended
            if let std::collections::hash_map::Entry::Vacant(slot) = self.files.entry(c.id) {
                let file =
                    std::fs::File::open(kept).map_err(|e| format!("cannot open {}: {e}", kept.display()))?;
                let (_, m) = crate::ops::manifest_of(c)?;
                slot.insert(Files {
                    manifest: Arc::new(m),
                    data: Arc::new(file),
                    dir: kept.parent().map(PathBuf::from).unwrap_or_default(),
                });
            }
            return self
                .endpoint
                .resume(now, &c.id, unix_now())
                .map(|r| r.len())
                .map_err(|e| e.to_string());
        }
        let (signed, manifest) = crate::ops::manifest_of(c)?;
        let file = std::fs::File::open(kept).map_err(|e| format!("cannot open {}: {e}", kept.display()))?;
        let nodes = self.db().nodes_of(&c.id).map_err(|e| e.to_string())?;
        let saved: Vec<(NodeId, NodeStatus, u64)> = nodes
            .into_iter()
            .filter_map(|n| Some((NodeId(n.node.parse::<PeerId>().ok()?), n.status, n.verified)))
            .collect();
        self.next_drop += 1;
        let drop_id = DropId(self.next_drop);
        let dir = kept.parent().map(PathBuf::from).unwrap_or_default();
        self.prepared.insert(drop_id, (Arc::new(file), dir));
        let secret = baton_protocol::CampaignSecret(c.secret);
        match self
            .endpoint
            .resume_saved(now, drop_id, signed, manifest, secret, &saved, unix_now())
        {
            Ok(r) => Ok(r.len()),
            Err(e) => {
                self.prepared.remove(&drop_id);
                Err(e.to_string())
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
