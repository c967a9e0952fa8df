//! The node daemon: a thin tokio shell around [`NodeCampaign`]s.
//!
//! It turns libp2p requests, discovery, disk and timers into events for the protocol's
//! state machines, and their actions into requests, disk writes and install runs.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use baton_protocol::receiver::Refusal;
use baton_protocol::wire::{PROTOCOL_VERSION, RefuseReason, Verdict};
use baton_protocol::{
    CampaignId, ChunkRequest, ChunkResponse, ChunkStatus, Control, ControlKind, InstallOutcome, Manifest,
    NodeAction, NodeCampaign, NodeConfig, NodeId, Note, Offer, Phase, RequestId, ServeAction, VerifyContext,
    check_offer,
};
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::discovery::{Advert, Discovery, DiscoveryEvent, Interfaces, Role};
use crate::net::{self, Behaviour, BehaviourEvent};
use crate::store::{InstallCmd, Store};

/// How the node runs.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub data_dir: PathBuf,
    pub listen: Multiaddr,
    pub trust: Vec<NodeId>,
    pub trust_first: bool,
    pub peers: Vec<Multiaddr>,
    pub tags: Vec<String>,
    pub mdns: bool,
    pub interfaces: Interfaces,
    pub install: Option<InstallCmd>,
    /// Exit once a campaign is installed and relayed.
    pub once: bool,
    /// Testing only: corrupt every chunk served (a faulty relay).
    pub corrupt_served: bool,
    pub protocol: NodeConfig,
}

/// File in the data directory holding NMS ids pinned by `--trust-first`.
pub const PINNED_FILE: &str = "trusted-nms.txt";

enum Internal {
    Hashed(CampaignId, std::io::Result<[u8; 32]>),
    Installed(CampaignId, InstallOutcome),
}

struct Running {
    machine: NodeCampaign,
    manifest: Arc<Manifest>,
    /// The package file, kept open: chunks are written and served by offset.
    data: Arc<std::fs::File>,
    file: PathBuf,
    reported_done: bool,
}

struct Agent {
    opts: NodeOptions,
    me: NodeId,
    store: Store,
    trusted: Vec<NodeId>,
    swarm: Swarm<Behaviour>,
    start: Instant,
    campaigns: HashMap<CampaignId, Running>,
    out_control: HashMap<OutboundRequestId, (CampaignId, NodeId, ControlKind)>,
    out_chunk: HashMap<OutboundRequestId, (CampaignId, NodeId, u32)>,
    in_chunk: HashMap<(CampaignId, RequestId), ResponseChannel<ChunkResponse>>,
    next_req: u64,
    internal: mpsc::UnboundedSender<Internal>,
    known: HashSet<PeerId>,
    finished_any: bool,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the node until Ctrl-C / SIGTERM (or, with `--once`, until its campaign is done).
pub async fn run(opts: NodeOptions) -> Result<()> {
    let keypair = crate::identity::load_or_create(&opts.data_dir)?;
    let me = NodeId::of(&keypair);
    let store = Store::open(&opts.data_dir)?;
    let mut trusted = opts.trust.clone();
    let pinned = read_pinned(&opts.data_dir);
    for p in pinned {
        if !trusted.contains(&p) {
            trusted.push(p);
        }
    }
    if trusted.is_empty() && !opts.trust_first {
        warn!(
            "this node trusts no NMS yet and will refuse every campaign: pass `--trust <NMS peer id>` (printed by baton-nms at start) or `--trust-first`"
        );
    }
    let mut swarm = net::build_swarm(keypair, opts.listen.clone())?;
    let port = net::wait_for_port(&mut swarm).await?;
    info!(peer_id = %me, port, data = %opts.data_dir.display(), "baton-node started");
    println!("baton-node {me} listening on port {port}");
    let (itx, mut irx) = mpsc::unbounded_channel();
    let mut agent = Agent {
        opts: opts.clone(),
        me,
        store,
        trusted,
        swarm,
        start: Instant::now(),
        campaigns: HashMap::new(),
        out_control: HashMap::new(),
        out_chunk: HashMap::new(),
        in_chunk: HashMap::new(),
        next_req: 0,
        internal: itx,
        known: HashSet::new(),
        finished_any: false,
    };
    for p in &opts.peers {
        if let Some(id) = net::peer_of(p) {
            agent.swarm.add_peer_address(id, p.clone());
        }
        if let Err(e) = agent.swarm.dial(p.clone()) {
            warn!("cannot dial static peer {p}: {e}");
        }
    }
    let (discovery, mut disco_rx) = if opts.mdns {
        let advert = Advert {
            peer_id: me.to_string(),
            role: Role::Node,
            version: PROTOCOL_VERSION,
            port,
            tags: opts.tags.clone(),
        };
        let (d, rx) = Discovery::start(&advert, &[], &opts.interfaces).context("starting mDNS discovery")?;
        (Some(d), rx)
    } else {
        (None, mpsc::channel(1).1)
    };
    agent.resume();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let deadline = agent.next_deadline();
        tokio::select! {
            ev = agent.swarm.select_next_some() => agent.on_swarm(ev),
            Some(d) = disco_rx.recv() => agent.on_discovery(d),
            Some(i) = irx.recv() => agent.on_internal(i),
            _ = tokio::time::sleep_until(deadline.into()) => agent.on_timeout(),
            _ = tokio::signal::ctrl_c() => { info!("interrupted; stopping"); break; }
            _ = term.recv() => { info!("terminated; stopping"); break; }
        }
        agent.drive_all();
        let now = agent.now();
        if opts.once && agent.finished_any && agent.campaigns.values().all(|r| r.machine.relay_done(now)) {
            info!("--once: campaign installed and relayed; exiting");
            break;
        }
    }
    if let Some(d) = discovery {
        d.shutdown_async().await;
    }
    Ok(())
}

fn read_pinned(dir: &std::path::Path) -> Vec<NodeId> {
    std::fs::read_to_string(dir.join(PINNED_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

impl Agent {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn next_deadline(&self) -> Instant {
        // with --once, look at the relay state every second
        let far = self.now() + Duration::from_secs(if self.opts.once { 1 } else { 3600 });
        let t = self
            .campaigns
            .values()
            .filter_map(|r| r.machine.poll_timeout())
            .min()
            .unwrap_or(far)
            .min(far);
        self.start + t
    }

    fn pin(&mut self, nms: NodeId, how: &str) {
        if !self.opts.trust_first || !self.trusted.is_empty() {
            return;
        }
        warn!(
            "TRUST ON FIRST USE: pinning NMS {nms} ({how}); this node will install what it signs. Remove {} to undo.",
            self.opts.data_dir.join(PINNED_FILE).display()
        );
        self.trusted.push(nms);
        if let Err(e) = std::fs::write(self.opts.data_dir.join(PINNED_FILE), format!("{nms}\n")) {
            error!("could not save the pinned NMS: {e}");
        }
    }

    fn on_discovery(&mut self, ev: DiscoveryEvent) {
        match ev {
            DiscoveryEvent::Found { advert, addrs } => {
                let Ok(peer) = advert.peer_id.parse::<PeerId>() else {
                    return;
                };
                if advert.version != PROTOCOL_VERSION {
                    warn!(
                        "{peer} speaks protocol {} (this node: {PROTOCOL_VERSION}); ignoring it",
                        advert.version
                    );
                    return;
                }
                for ip in addrs {
                    self.swarm.add_peer_address(peer, net::tcp_addr(ip, advert.port));
                }
                if self.known.insert(peer) {
                    info!(role = %advert.role, "discovered {peer}");
                }
                if advert.role == Role::Nms {
                    self.pin(NodeId(peer), "first NMS heard on mDNS");
                }
            }
            DiscoveryEvent::Lost { peer_id } => info!("{peer_id} left"),
        }
    }

    fn resume(&mut self) {
        for (dir, offer) in self.store.saved_offers() {
            let offer = match offer {
                Ok(o) => o,
                Err(e) => {
                    warn!("ignoring unreadable saved campaign in {}: {e:#}", dir.display());
                    continue;
                }
            };
            let from = if offer.path.len() >= 2 {
                offer.path[offer.path.len() - 2]
            } else {
                match offer.manifest.open_unchecked() {
                    Ok(m) => m.nms,
                    Err(_) => continue,
                }
            };
            match self.accept(from, offer) {
                Ok(c) => info!("resumed campaign {} from disk", hex::encode(c)),
                Err(r) => {
                    info!("not resuming the campaign in {}: {}", dir.display(), r.detail);
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
    }

    /// Checks an offer and starts (or confirms) the campaign.
    fn accept(&mut self, from: NodeId, offer: Offer) -> Result<CampaignId, Refusal> {
        let peek = offer.manifest.open_unchecked().map_err(Refusal::from)?;
        if self.campaigns.contains_key(&peek.campaign) {
            return Ok(peek.campaign);
        }
        self.pin(peek.nms, "first NMS that sent an offer");
        let installed = self.store.installed(&peek.name);
        let ctx = VerifyContext {
            trusted: &self.trusted,
            unix_now: unix_now(),
            installed,
            me: Some(self.me),
        };
        let manifest = check_offer(&offer, &from, &ctx)?;
        let have = self.store.prepare(&offer, &manifest).map_err(|e| Refusal {
            reason: RefuseReason::Busy,
            detail: format!("cannot store the package: {e:#}"),
        })?;
        let resumed = have.count();
        if resumed > 0 {
            info!("{} of {} chunks already verified on disk", resumed, have.len());
        }
        info!(
            package = %manifest.name, version = %manifest.version, sequence = manifest.sequence,
            size = manifest.size, part = offer.part.len(), "accepted campaign {} from {from}",
            hex::encode(manifest.campaign)
        );
        let campaign = manifest.campaign;
        let file = self.store.data_file(&campaign);
        let data = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .map(Arc::new)
            .map_err(|e| Refusal {
                reason: RefuseReason::Busy,
                detail: format!("cannot open the package file {}: {e}", file.display()),
            })?;
        let machine = NodeCampaign::accept(
            self.now(),
            self.me,
            offer,
            manifest.clone(),
            self.opts.protocol.clone(),
            have,
        );
        self.campaigns.insert(
            campaign,
            Running {
                machine,
                manifest: Arc::new(manifest),
                data,
                file,
                reported_done: false,
            },
        );
        Ok(campaign)
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Control(e)) => self.on_control(e),
            SwarmEvent::Behaviour(BehaviourEvent::Chunk(e)) => self.on_chunk(e),
            SwarmEvent::NewListenAddr { address, .. } => info!("listening on {address}"),
            _ => {}
        }
    }

    fn on_control(&mut self, ev: request_response::Event<Control, Control>) {
        let now = self.now();
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let from = NodeId(peer);
                    let answer = self.answer(from, request);
                    let _ = self.swarm.behaviour_mut().control.send_response(channel, answer);
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some((c, to, _)) = self.out_control.remove(&request_id)
                        && let Some(r) = self.campaigns.get_mut(&c)
                    {
                        r.machine.response(now, to, response);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((c, to, kind)) = self.out_control.remove(&request_id) {
                    warn!("{kind:?} to {to} failed: {error}");
                    if let Some(r) = self.campaigns.get_mut(&c) {
                        r.machine.send_failed(now, to, kind, &error.to_string());
                    }
                }
            }
            _ => {}
        }
    }

    fn answer(&mut self, from: NodeId, request: Control) -> Control {
        match request {
            Control::Offer(offer) => {
                let campaign = offer
                    .manifest
                    .open_unchecked()
                    .map(|m| m.campaign)
                    .unwrap_or_default();
                let verdict = match self.accept(from, *offer) {
                    Ok(_) => Verdict::Accept,
                    Err(r) => {
                        if r.reason == RefuseReason::Untrusted {
                            error!("refused an offer: {}", r.detail);
                        } else {
                            warn!("refused an offer from {from}: {}", r.detail);
                        }
                        r.verdict()
                    }
                };
                Control::OfferReply { campaign, verdict }
            }
            Control::Probe { nonce } => Control::ProbeReply { nonce },
            other => {
                let now = self.now();
                match other.campaign().and_then(|c| self.campaigns.get_mut(c)) {
                    Some(r) => r.machine.request(now, from, &other),
                    None => Control::Error {
                        reason: "this node does not know that campaign".into(),
                    },
                }
            }
        }
    }

    fn on_chunk(&mut self, ev: request_response::Event<ChunkRequest, ChunkResponse>) {
        let now = self.now();
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let campaign = request.campaign;
                    match self.campaigns.get_mut(&campaign) {
                        Some(r) => {
                            self.next_req += 1;
                            let rid = RequestId(self.next_req);
                            self.in_chunk.insert((campaign, rid), channel);
                            r.machine.chunk_request(now, rid, NodeId(peer), &request);
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
                request_response::Message::Response { request_id, response } => {
                    if let Some((c, from, _)) = self.out_chunk.remove(&request_id)
                        && let Some(r) = self.campaigns.get_mut(&c)
                    {
                        r.machine.chunk_response(now, from, response);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((c, from, index)) = self.out_chunk.remove(&request_id)
                    && let Some(r) = self.campaigns.get_mut(&c)
                {
                    r.machine.chunk_failed(now, from, index, &error.to_string());
                }
            }
            _ => {}
        }
    }

    fn on_internal(&mut self, i: Internal) {
        let now = self.now();
        match i {
            Internal::Hashed(c, res) => {
                if let Some(r) = self.campaigns.get_mut(&c) {
                    match res {
                        Ok(root) => r.machine.file_hashed(now, root),
                        Err(e) => error!("cannot hash the received package: {e}"),
                    }
                }
            }
            Internal::Installed(c, outcome) => {
                if let Some(r) = self.campaigns.get_mut(&c) {
                    match &outcome {
                        InstallOutcome::Installed => info!(
                            "installed {} {} (sequence {})",
                            r.manifest.name, r.manifest.version, r.manifest.sequence
                        ),
                        InstallOutcome::Failed { reason } => error!("install failed: {reason}"),
                    }
                    r.machine.install_done(now, outcome);
                }
            }
        }
    }

    fn on_timeout(&mut self) {
        let now = self.now();
        for r in self.campaigns.values_mut() {
            if r.machine.poll_timeout().is_some_and(|t| t <= now) {
                r.machine.timeout(now);
            }
        }
    }

    fn drive_all(&mut self) {
        let ids: Vec<CampaignId> = self.campaigns.keys().copied().collect();
        for c in ids {
            self.drive(c);
        }
    }

    /// Carries out a campaign's actions.
    fn drive(&mut self, c: CampaignId) {
        loop {
            let Some(r) = self.campaigns.get_mut(&c) else {
                return;
            };
            let Some(action) = r.machine.poll_action() else {
                break;
            };
            let manifest = r.manifest.clone();
            let file = r.file.clone();
            let data_file = r.data.clone();
            match action {
                NodeAction::Send { to, msg } => {
                    let kind = msg.kind();
                    let id = self.swarm.behaviour_mut().control.send_request(&to.0, msg);
                    self.out_control.insert(id, (c, to, kind));
                }
                NodeAction::RequestChunk { to, req } => {
                    let index = req.index;
                    let id = self.swarm.behaviour_mut().chunk.send_request(&to.0, req);
                    self.out_chunk.insert(id, (c, to, index));
                }
                NodeAction::Store { index, data } => {
                    if let Err(e) = Store::write_chunk(&data_file, &manifest, index, &data) {
                        error!("cannot write chunk {index}: {e:#}");
                    }
                }
                NodeAction::HashFile => {
                    let tx = self.internal.clone();
                    tokio::task::spawn_blocking(move || {
                        let r = Store::hash_file(&file).map_err(std::io::Error::other);
                        let _ = tx.send(Internal::Hashed(c, r));
                    });
                }
                NodeAction::Install => {
                    let tx = self.internal.clone();
                    let store = self.store.clone();
                    let cmd = self.opts.install.clone();
                    tokio::spawn(async move {
                        let outcome = match store.install(&manifest, cmd.as_ref()).await {
                            Ok(()) => InstallOutcome::Installed,
                            Err(reason) => InstallOutcome::Failed { reason },
                        };
                        let _ = tx.send(Internal::Installed(c, outcome));
                    });
                }
                NodeAction::Serve(ServeAction::SendChunk { req, index, key, .. }) => {
                    // inline: a chunk read from the page cache and sealed costs less than
                    // handing it to another thread and back
                    let mut resp = read_and_seal(&data_file, &manifest, index, &key);
                    if self.opts.corrupt_served
                        && let Some(b) = resp.data.first_mut()
                    {
                        *b ^= 0x40;
                    }
                    if let Some(ch) = self.in_chunk.remove(&(c, req)) {
                        let _ = self.swarm.behaviour_mut().chunk.send_response(ch, resp);
                    }
                }
                NodeAction::Serve(ServeAction::Answer { req, status }) => {
                    if let Some(ch) = self.in_chunk.remove(&(c, req)) {
                        let resp = ChunkResponse {
                            campaign: c,
                            index: 0,
                            status,
                            data: Vec::new(),
                        };
                        let _ = self.swarm.behaviour_mut().chunk.send_response(ch, resp);
                    }
                }
                NodeAction::Note(n) => log_note(&n),
            }
        }
        let now = self.now();
        let Some(r) = self.campaigns.get_mut(&c) else {
            return;
        };
        if matches!(r.machine.phase(), Phase::Installed | Phase::Failed) {
            self.finished_any = true;
        }
        if r.machine.relay_done(now) && !r.reported_done {
            r.reported_done = true;
            info!(
                served_chunks = r.machine.served_chunks(),
                fetched_chunks = r.machine.fetched_chunks(),
                faults = r.machine.total_faults(),
                "campaign {} finished here: installed and relayed",
                hex::encode(c)
            );
        }
    }
}

/// Reads chunk `index` of the package file and seals it for the requester.
pub fn read_and_seal(
    file: &std::fs::File,
    m: &Manifest,
    index: u32,
    key: &baton_protocol::ChunkKey,
) -> ChunkResponse {
    use std::os::unix::fs::FileExt;
    let layout = m.layout().expect("validated manifest");
    let mut data = vec![0u8; layout.len(index) as usize];
    let r = file.read_exact_at(&mut data, layout.offset(index));
    match r {
        Ok(()) => {
            key.seal(&m.campaign, index, &mut data);
            ChunkResponse {
                campaign: m.campaign,
                index,
                status: ChunkStatus::Ok,
                data,
            }
        }
        Err(e) => {
            error!("cannot read chunk {index} of the package: {e}");
            ChunkResponse {
                campaign: m.campaign,
                index,
                status: ChunkStatus::NotYet,
                data: Vec::new(),
            }
        }
    }
}

fn log_note(n: &Note) {
    match n {
        Note::SourceFault {
            source,
            index,
            reason,
        } => warn!("chunk {index} from {source}: {reason}"),
        Note::SwitchedSource { from, to } => warn!("moving from source {from} to {to}"),
        Note::ChildFailed { child, reason } => warn!("child {child} failed: {reason}; re-planned its part"),
        Note::Verified => info!("package verified (root hash matches the signed manifest)"),
        Note::Authenticated => info!("the NMS acknowledged the package"),
        Note::ReceiptMismatch { parent } => warn!("parent {parent} reports a different root hash"),
    }
}
