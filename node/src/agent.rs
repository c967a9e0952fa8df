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
    AdmissionContext, Admitted, CampaignId, ChunkRequest, ChunkResponse, ChunkStatus, Control, ControlKind,
    InstallOutcome, Manifest, NodeAction, NodeCampaign, NodeConfig, NodeId, Note, Offer, OpenedOffer, Phase,
    RequestId, ServeAction, admit, open_offer,
};
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::store::{InstallCmd, Store};
use baton_shell::discovery::{Advert, Discovery, DiscoveryEvent, Interfaces, Role};
use baton_shell::net::{self, Behaviour, BehaviourEvent, Inbound};

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
/// The identify agent version prefix of an NMS.
pub const NMS_AGENT_PREFIX: &str = "baton-nms/";
/// Offers from one peer being verified at once; more are answered `Busy`.
pub const MAX_VERIFYING_PER_PEER: usize = 2;
/// Offers being verified at once in total; more are answered `Busy`.
pub const MAX_VERIFYING: usize = 8;

enum Internal {
    Hashed(CampaignId, std::io::Result<[u8; 32]>),
    Installed(CampaignId, InstallOutcome),
    /// An offer was opened (decoded, signature checked) off the event loop.
    Opened {
        ticket: u64,
        result: Box<Result<OpenedOffer, Refusal>>,
    },
}

struct Running {
    machine: NodeCampaign,
    manifest: Arc<Manifest>,
    /// The package file, kept open: chunks are written and served by offset.
    data: Arc<std::fs::File>,
    file: PathBuf,
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
    /// Peers that advertise themselves as an NMS (mDNS role or identify agent).
    advertised_nms: HashSet<NodeId>,
    /// Offers being opened off the loop, by ticket: who sent it and where to answer.
    verifying: HashMap<u64, (PeerId, ResponseChannel<Control>)>,
    next_ticket: u64,
    failures: net::FailureLog,
    /// Some campaign ended here and was dropped (for `--once`).
    finished_any: bool,
    /// Campaigns that ended here and were dropped, newest last (at most [`MAX_OVER`]):
    /// offers for them are refused, not downloaded again.
    over: std::collections::VecDeque<CampaignId>,
}

/// Finished campaigns remembered to refuse later offers for them.
pub const MAX_OVER: usize = 4096;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the node until Ctrl-C / SIGTERM (or, with `--once`, until its campaign is done).
pub async fn run(opts: NodeOptions) -> Result<()> {
    let _lock = baton_shell::identity::lock_data_dir(&opts.data_dir, "baton-node")?;
    let keypair = baton_shell::identity::load_or_create(&opts.data_dir)?;
    let me = NodeId::of(&keypair);
    let store = Store::open(&opts.data_dir)?;
    let mut trusted = opts.trust.clone();
    let pinned = read_pinned(&opts.data_dir)?;
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
    let mut swarm = net::build_swarm(
        keypair,
        opts.listen.clone(),
        &format!("baton-node/{}", env!("CARGO_PKG_VERSION")),
        net::Limits::node(),
    )?;
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
        advertised_nms: HashSet::new(),
        verifying: HashMap::new(),
        next_ticket: 0,
        failures: net::FailureLog::default(),
        finished_any: false,
        over: std::collections::VecDeque::new(),
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
        // finished campaigns are dropped when the machine reports `RelayDone`
        if opts.once && agent.finished_any && agent.campaigns.is_empty() {
            info!("--once: campaign installed and relayed; exiting");
            break;
        }
    }
    if let Some(d) = discovery {
        d.shutdown_async().await;
    }
    Ok(())
}

/// The NMS ids pinned by trust on first use, from `dir/trusted-nms.txt` (one per line;
/// blank lines and `#` comments ignored).
pub fn read_pinned(dir: &std::path::Path) -> Result<Vec<NodeId>> {
    let path = dir.join(PINNED_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.parse::<NodeId>().map_err(|e| {
                anyhow::anyhow!(
                    "{} holds `{l}`, which is not a peer id ({e}); fix the line or forget it with `baton-node trust forget`",
                    path.display()
                )
            })
        })
        .collect()
}

/// Writes the pinned NMS ids (atomically: a temporary file renamed into place).
pub fn write_pinned(dir: &std::path::Path, pins: &[NodeId]) -> Result<()> {
    let path = dir.join(PINNED_FILE);
    let tmp = dir.join(format!(".{PINNED_FILE}.tmp"));
    let mut text =
        String::from("# NMS peer ids pinned by --trust-first; `baton-node trust forget <id>` removes one\n");
    for p in pins {
        text.push_str(&format!("{p}\n"));
    }
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

impl Agent {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn next_deadline(&self) -> Instant {
        // every timer (the end of relaying included) is the machines' own
        let far = self.now() + Duration::from_secs(3600);
        let t = self
            .campaigns
            .values()
            .filter_map(|r| r.machine.poll_timeout())
            .min()
            .unwrap_or(far)
            .min(far);
        self.start + t
    }

    /// Pins `nms` (trust on first use), after admission decided so.
    fn pin(&mut self, nms: NodeId) {
        warn!(
            "TRUST ON FIRST USE: pinning NMS {nms}, which sent this node a valid offer signed by itself; from now on this node installs only what {nms} signs. To undo: `baton-node trust forget {nms}`"
        );
        self.trusted.push(nms);
        if let Err(e) = write_pinned(&self.opts.data_dir, &self.trusted) {
            error!("could not save the pinned NMS: {e:#}");
        }
    }

    /// A peer claims to be an NMS (its mDNS advert or identify agent). This alone trusts
    /// nothing: it only makes the peer a candidate for trust on first use.
    fn heard_nms(&mut self, peer: PeerId, how: &str) {
        if self.advertised_nms.insert(NodeId(peer)) {
            info!("{peer} advertises itself as an NMS ({how})");
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
                    self.heard_nms(peer, "mDNS");
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
            // a campaign resumes only under a trust already held: no pinning here
            match open_offer(offer, from, self.me).and_then(|o| self.admit_and_start(o, false)) {
                Ok(c) => info!("resumed campaign {} from disk", hex::encode(c)),
                Err(r) => {
                    info!("not resuming the campaign in {}: {}", dir.display(), r.detail);
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
    }

    /// Admits an opened offer (trust, expiry, rollback, duplicates) and starts the campaign,
    /// pinning its NMS if trust on first use says so and `may_pin`.
    fn admit_and_start(&mut self, opened: OpenedOffer, may_pin: bool) -> Result<CampaignId, Refusal> {
        let campaign = opened.manifest.campaign;
        let ctx = AdmissionContext {
            trusted: &self.trusted,
            trust_first: self.opts.trust_first && may_pin,
            advertised_nms: &self.advertised_nms,
            unix_now: unix_now(),
            installed: self.store.installed(&opened.manifest.name),
            held: self.campaigns.contains_key(&campaign),
            finished: self.over.contains(&campaign),
            // only `resume` passes `may_pin = false`: a campaign restarted from disk
            resuming: !may_pin,
        };
        match admit(&opened, &ctx)? {
            Admitted::AlreadyHeld => return Ok(campaign),
            Admitted::Start { pin: Some(nms) } => self.pin(nms),
            Admitted::Start { pin: None } => {}
        }
        let OpenedOffer {
            offer,
            manifest,
            from,
        } = opened;
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
            },
        );
        Ok(campaign)
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Control(e)) => self.on_control(e),
            SwarmEvent::Behaviour(BehaviourEvent::Chunk(e)) => self.on_chunk(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(libp2p::identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.agent_version.starts_with(NMS_AGENT_PREFIX) => self.heard_nms(peer_id, "identify"),
            SwarmEvent::NewListenAddr { address, .. } => info!("listening on {address}"),
            _ => {}
        }
    }

    fn on_control(&mut self, ev: request_response::Event<Inbound<Control>, Control>) {
        let now = self.now();
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => match request {
                    Inbound::Unreadable(why) => self.failures.unreadable(peer, "control", &why),
                    Inbound::Msg(Control::Offer(offer)) => self.on_offer(peer, *offer, channel),
                    Inbound::Msg(other) => {
                        let answer = self.answer(NodeId(peer), other);
                        let _ = self.swarm.behaviour_mut().control.send_response(channel, answer);
                    }
                },
                request_response::Message::Response { request_id, response } => {
                    if let Some((c, to, _)) = self.out_control.remove(&request_id)
                        && let Some(r) = self.campaigns.get_mut(&c)
                    {
                        r.machine.response(now, to, response);
                    }
                }
            },
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.failures.inbound(peer, "control", &error)
            }
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

    /// An offer arrived: open it (decode, check the signature) off the event loop, at most
    /// [`MAX_VERIFYING_PER_PEER`] per peer and [`MAX_VERIFYING`] in all; more are `Busy`.
    fn on_offer(&mut self, peer: PeerId, offer: Offer, channel: ResponseChannel<Control>) {
        let from_peer = self.verifying.values().filter(|(p, _)| *p == peer).count();
        if from_peer >= MAX_VERIFYING_PER_PEER || self.verifying.len() >= MAX_VERIFYING {
            let verdict = Verdict::Refuse {
                reason: RefuseReason::Busy,
                detail: "too many offers being checked; try again later".into(),
            };
            let reply = Control::OfferReply {
                campaign: CampaignId::default(),
                verdict,
            };
            if let Some(line) = self.failures.record(
                Instant::now(),
                peer,
                "offer",
                &"refused as busy: too many offers being checked",
            ) {
                warn!("{line}");
            }
            let _ = self.swarm.behaviour_mut().control.send_response(channel, reply);
            return;
        }
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        self.verifying.insert(ticket, (peer, channel));
        let tx = self.internal.clone();
        let me = self.me;
        tokio::task::spawn_blocking(move || {
            let result = Box::new(open_offer(offer, NodeId(peer), me));
            let _ = tx.send(Internal::Opened { ticket, result });
        });
    }

    /// An offer was opened off the loop: admit it and answer its sender.
    fn on_opened(&mut self, ticket: u64, result: Result<OpenedOffer, Refusal>) {
        let Some((peer, channel)) = self.verifying.remove(&ticket) else {
            return;
        };
        let (campaign, signer) = match &result {
            Ok(o) => (o.manifest.campaign, Some(o.manifest.nms)),
            Err(_) => (CampaignId::default(), None),
        };
        let verdict = match result.and_then(|o| self.admit_and_start(o, true)) {
            Ok(_) => Verdict::Accept,
            Err(r) => {
                self.log_refusal(peer, signer, &r);
                r.verdict()
            }
        };
        let reply = Control::OfferReply { campaign, verdict };
        let _ = self.swarm.behaviour_mut().control.send_response(channel, reply);
    }

    fn log_refusal(&mut self, peer: PeerId, signer: Option<NodeId>, r: &Refusal) {
        match (r.reason, signer) {
            (RefuseReason::Untrusted, Some(nms)) => error!(
                "refused an offer from {peer} carrying a manifest signed by {nms}: {}. Trust only an NMS that you run yourself: if {nms} is yours (baton-nms prints its id at start), restart this node with `--trust {nms}`; otherwise someone on the network is offering packages, and refusing them is right.",
                r.detail
            ),
            _ => {
                if let Some(line) =
                    self.failures
                        .record(Instant::now(), peer, "offer", &format!("refused: {}", r.detail))
                {
                    warn!("{line}");
                }
            }
        }
    }

    fn answer(&mut self, from: NodeId, request: Control) -> Control {
        match request {
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

    fn on_chunk(&mut self, ev: request_response::Event<Inbound<ChunkRequest>, ChunkResponse>) {
        let now = self.now();
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request: Inbound::Unreadable(why),
                    ..
                } => self.failures.unreadable(peer, "chunk", &why),
                request_response::Message::Request {
                    request: Inbound::Msg(request),
                    channel,
                    ..
                } => {
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
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.failures.inbound(peer, "chunk", &error)
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
                        Err(e) => {
                            error!("cannot hash the received package: {e}");
                            r.machine.hash_failed(now, &e.to_string());
                        }
                    }
                }
            }
            Internal::Opened { ticket, result } => self.on_opened(ticket, *result),
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
        let mut over = false;
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
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .control
                        .send_request(&to.0, Inbound::Msg(msg));
                    self.out_control.insert(id, (c, to, kind));
                }
                NodeAction::RequestChunk { to, req } => {
                    let index = req.index;
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .chunk
                        .send_request(&to.0, Inbound::Msg(req));
                    self.out_chunk.insert(id, (c, to, index));
                }
                NodeAction::Store { index, data } => {
                    // the machine serves the chunk only once the write is confirmed
                    let now = self.now();
                    let written = Store::write_chunk(&data_file, &manifest, index, &data);
                    if let Some(r) = self.campaigns.get_mut(&c) {
                        match written {
                            Ok(()) => r.machine.chunk_stored(now, index),
                            Err(e) => {
                                error!("cannot write chunk {index}: {e:#}; the campaign fails");
                                r.machine.store_failed(now, index, &format!("{e:#}"));
                            }
                        }
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
                    let mut resp = baton_shell::chunkfile::read_and_seal(&data_file, &manifest, index, &key);
                    if self.opts.corrupt_served
                        && let Some(b) = resp.data.first_mut()
                    {
                        *b ^= 0x40;
                    }
                    if let Some(ch) = self.in_chunk.remove(&(c, req)) {
                        let _ = self.swarm.behaviour_mut().chunk.send_response(ch, resp);
                    }
                }
                NodeAction::Serve(ServeAction::Answer { req, index, status }) => {
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
                NodeAction::Note(n) => log_note(&n),
                NodeAction::RelayDone => over = true,
            }
        }
        if over {
            self.end_campaign(c);
        }
    }

    /// The campaign is over here (installed or failed, relaying done): drop it, its open
    /// file and its working directory. Later requests for it are answered as for an
    /// unknown campaign, and later offers are refused (admission's `finished`).
    fn end_campaign(&mut self, c: CampaignId) {
        let Some(r) = retire(&mut self.campaigns, &self.store, &c) else {
            return;
        };
        self.finished_any = true;
        info!(
            served_chunks = r.machine.served_chunks(),
            fetched_chunks = r.machine.fetched_chunks(),
            faults = r.machine.total_faults(),
            outcome = ?r.machine.outcome(),
            "campaign {} finished here: {} and relayed; dropped",
            hex::encode(c),
            if r.machine.phase() == Phase::Installed { "installed" } else { "failed" },
        );
        // answering a held request needs the campaign: none is held when it is over
        self.in_chunk.retain(|(campaign, _), _| *campaign != c);
        if self.over.len() >= MAX_OVER {
            self.over.pop_front();
        }
        self.over.push_back(c);
    }
}

/// Drops campaign `c`: its running state (and with it the open package file) and its
/// `partial/<campaign>` directory. The installed version is a hard link to (or a copy
/// of) the partial file, so it stays. Returns what was dropped.
fn retire(campaigns: &mut HashMap<CampaignId, Running>, store: &Store, c: &CampaignId) -> Option<Running> {
    let r = campaigns.remove(c)?;
    store.forget(c);
    Some(r)
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

#[cfg(test)]
mod tests {
    use super::*;
    use baton_protocol::chunk::ChunkSet;
    use baton_protocol::manifest::{HashList, MANIFEST_FORMAT, PlanParams, RelayPolicy};
    use baton_protocol::{HopToken, Keypair, PackageHasher, SignedManifest};

    /// Descriptors of this process open on files under `dir`.
    fn open_under(dir: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|p| p.starts_with(dir))
            .count()
    }

    /// A campaign as `admit_and_start` leaves it: prepared in the store, its file open,
    /// its machine running; then received and installed.
    async fn installed_campaign(store: &Store, nms: &Keypair, me: NodeId, seq: u64) -> (CampaignId, Running) {
        let content = vec![seq as u8; 10_000];
        let mut h = PackageHasher::new(4096);
        h.update(&content);
        let (size, hashes, root) = h.finish();
        let m = Manifest {
            format: MANIFEST_FORMAT,
            campaign: [seq as u8; 16],
            nms: NodeId::of(nms),
            name: "frob".into(),
            version: format!("1.{seq}"),
            file: "frob.tgz".into(),
            sequence: seq,
            size,
            chunk_size: 4096,
            chunk_hashes: HashList(hashes),
            root,
            created_at: 1,
            expires_at: u64::MAX,
            relay: RelayPolicy::default(),
            plan: PlanParams::default(),
            offline_install: false,
            self_update: false,
            addressees: vec![me],
        };
        let offer = Offer {
            manifest: SignedManifest::sign(&m, nms).unwrap(),
            part: vec![me],
            path: vec![me],
            token: HopToken([0; 32]),
        };
        store.prepare(&offer, &m).unwrap();
        let file = store.data_file(&m.campaign);
        let data = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&file)
                .unwrap(),
        );
        for (i, c) in content.chunks(4096).enumerate() {
            Store::write_chunk(&data, &m, i as u32, c).unwrap();
        }
        store.install(&m, None).await.unwrap();
        let count = m.layout().unwrap().count();
        let machine = NodeCampaign::accept(
            Duration::ZERO,
            me,
            offer,
            m.clone(),
            NodeConfig::default(),
            ChunkSet::full(count),
        );
        (
            m.campaign,
            Running {
                machine,
                manifest: Arc::new(m),
                data,
                file,
            },
        )
    }

    #[tokio::test]
    async fn finished_campaigns_keep_no_file_open_and_leave_no_partial_dir() {
        let dir = tempfile::tempdir().unwrap();
        let dir_path = dir.path().canonicalize().unwrap();
        let store = Store::open(&dir_path).unwrap();
        let nms = Keypair::generate_ed25519();
        let me = NodeId::of(&Keypair::generate_ed25519());
        let mut campaigns = HashMap::new();
        let n = 50u64; // more than a `ulimit -n 64` node could hold open
        for seq in 1..=n {
            let (c, r) = installed_campaign(&store, &nms, me, seq).await;
            campaigns.insert(c, r);
        }
        assert_eq!(open_under(&dir_path), n as usize);
        for seq in 1..=n {
            assert!(retire(&mut campaigns, &store, &[seq as u8; 16]).is_some());
        }
        assert_eq!(open_under(&dir_path), 0, "files left open");
        assert!(campaigns.is_empty());
        let partial: Vec<_> = std::fs::read_dir(dir_path.join("partial")).unwrap().collect();
        assert!(partial.is_empty(), "partial dirs left: {partial:?}");
        // every installed version is intact (the partial file was a hard link to it)
        for seq in 1..=n {
            let f = dir_path.join(format!("packages/frob/{seq}/frob.tgz"));
            assert_eq!(
                std::fs::read(&f).unwrap(),
                vec![seq as u8; 10_000],
                "{}",
                f.display()
            );
        }
        assert_eq!(store.installed("frob").map(|(s, _)| s), Some(n));
        // retiring twice is harmless
        assert!(retire(&mut campaigns, &store, &[1; 16]).is_none());
    }
}
