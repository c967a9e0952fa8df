//! The node daemon: a thin tokio shell around a [`NodeEndpoint`].
//!
//! It only translates I/O: libp2p requests, discovery, disk, background jobs and the clock
//! become [`Input`]s; the endpoint's [`Action`]s become requests, disk writes, jobs and
//! journal lines; its [`Event`]s become log lines. Every decision (admission, retries,
//! which peers can be offered to, what a restart resumes, what is kept on disk) is the
//! endpoint's.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use baton_protocol::endpoint::node::{self as ep, Action, Event, Input, NodeEndpoint, OutId, ReplyId};
use baton_protocol::gate::{Policy, Thresholds, UploadCap};
use baton_protocol::receiver::Refusal;
use baton_protocol::wire::{PROTOCOL_VERSION, RefuseReason};
use baton_protocol::{
    CampaignId, ChunkRequest, ChunkResponse, Control, InstallOutcome, Manifest, NodeConfig, NodeId, Note,
    OpenedOffer, Phase, open_offer,
};
use futures::StreamExt;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::journal::Journal;
use crate::probe::{FileProbe, IDLE_WINDOW, PROBE_INTERVAL, Probe, SysProbe, SystemClock};
use crate::store::{InstallCmd, Store};
use baton_shell::discovery::{Advert, Discovery, DiscoveryEvent, Interfaces, Role};
use baton_shell::net::{self, Behaviour, BehaviourEvent, Inbound, Incoming};

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
    /// `--once`: exit once a campaign is over here and relayed, or after this timeout
    /// ([`crate::once`]).
    pub once: Option<Duration>,
    /// Where `packages/` is, when not in `data_dir` (a one-shot agent's temporary state).
    pub install_dir: Option<PathBuf>,
    /// Testing only: corrupt every chunk served (a faulty relay).
    pub corrupt_served: bool,
    pub protocol: NodeConfig,
    /// Installed versions kept per package (current included; 0 = all).
    pub keep_versions: usize,
    /// The owner's relay policy (`None`: each campaign's manifest decides).
    pub relay_policy: Option<Policy>,
    /// The owner's gating thresholds.
    pub gate: Thresholds,
    /// Upload cap on served chunks, bytes a second.
    pub max_upload: Option<u64>,
    /// Testing only: readings from this file instead of the machine's probe.
    pub test_probe_file: Option<PathBuf>,
    /// The running agent's own executable, when it runs as one (`baton-node`): it
    /// advertises its build and can replace itself. `None` (embedded in another program,
    /// e.g. the testbed): agent packages are refused.
    pub agent: Option<Arc<crate::upgrade::AgentSelf>>,
}

/// Bursts the upload cap lets through at once (two 128 KiB chunks).
const UPLOAD_BURST: u64 = 256 * 1024;

/// A request on the control socket ([`baton_shell::control`]): `{"cmd": "status"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum ControlRequest {
    /// The node's relay policy, gates, readings and campaigns ([`crate::status::status`]).
    Status,
}

/// File in the data directory holding NMS ids pinned by `--trust-first`.
pub const PINNED_FILE: &str = "trusted-nms.txt";
/// The identify agent version prefix of an NMS.
pub const NMS_AGENT_PREFIX: &str = "baton-nms/";

enum Internal {
    Hashed(CampaignId, std::io::Result<[u8; 32]>),
    Installed(CampaignId, InstallOutcome),
    /// An offer was opened (decoded, signature checked) off the event loop.
    Opened {
        ticket: ep::OfferTicket,
        result: Box<Result<OpenedOffer, Refusal>>,
    },
}

/// A campaign's files, open from [`Action::Prepare`] to [`Action::Forget`].
struct Open {
    manifest: Arc<Manifest>,
    /// The package file, kept open: chunks are written and served by offset.
    data: Arc<std::fs::File>,
    file: PathBuf,
}

struct Agent {
    opts: NodeOptions,
    me: NodeId,
    store: Store,
    journal: Journal,
    swarm: Swarm<Behaviour>,
    start: Instant,
    endpoint: NodeEndpoint,
    files: HashMap<CampaignId, Open>,
    /// Requests out: the transport's handle to the endpoint's id.
    control_reqs: net::Requests<OutId>,
    chunk_reqs: net::Requests<OutId>,
    /// Requests to answer, by the handle the endpoint answers with.
    in_control: HashMap<ReplyId, ResponseChannel<Control>>,
    in_chunk: HashMap<ReplyId, ResponseChannel<ChunkResponse>>,
    next_reply: u64,
    internal: mpsc::UnboundedSender<Internal>,
    failures: net::FailureLog,
    probe: Box<dyn Probe>,
    /// The probe's last error, logged once until it changes.
    probe_error: Option<String>,
    upload: Option<UploadCap>,
    /// Chunk answers waiting for the upload cap, in the order they may go.
    delayed: VecDeque<(Instant, ResponseChannel<ChunkResponse>, ChunkResponse)>,
    /// Peers named with --peer, whose addresses are given back after a failed dial.
    /// Addresses given back after a failed dial (`--peer` and discovered ones).
    addresses: net::AddressBook,
    /// With `--once`: what decides the end.
    once: Option<crate::once::Watch>,
    /// An agent package's install step asked to stop and upgrade.
    upgrade: Option<crate::upgrade::Upgrade>,
    /// Install steps running (an upgrade waits for them: an install command is not cut
    /// off by the switch).
    installing: usize,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the node until Ctrl-C / SIGTERM / SIGHUP (the terminal or SSH session it ran in
/// closed) or, with `--once`, until its campaign is done: then an error unless it
/// installed, see [`crate::once::result`].
pub async fn run(opts: NodeOptions) -> Result<()> {
    // taken first, so that a signal during start-up also ends the loop below (and a
    // one-shot agent's temporary state is removed) rather than killing the process
    use tokio::signal::unix::{SignalKind, signal};
    let (mut int, mut term, mut hup) = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
        signal(SignalKind::hangup())?,
    );
    let _lock = baton_shell::identity::lock_data_dir(&opts.data_dir, "baton-node")?;
    let keypair = baton_shell::identity::load_or_create(&opts.data_dir)?;
    let me = NodeId::of(&keypair);
    let store = Store::open_split(
        &opts.data_dir,
        opts.install_dir.as_ref().unwrap_or(&opts.data_dir),
    )?;
    let (journal, entries) = Journal::open(&opts.data_dir)?;
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
    let port = net::wait_for_port(&mut swarm, &opts.listen).await?;
    info!(peer_id = %me, port, data = %opts.data_dir.display(), window = opts.protocol.window, "baton-node started");
    println!("baton-node {me} listening on port {port}");
    let (itx, mut irx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let cfg = ep::Config {
        campaign: opts.protocol.clone(),
        trust_first: opts.trust_first,
        unix_origin: unix_now(),
        keep_versions: opts.keep_versions,
        relay_policy: opts.relay_policy,
        gate: opts.gate.clone(),
        ..ep::Config::default()
    };
    let boot = ep::Start {
        trusted,
        installed: store.installed_packages(),
        journal: entries,
        saved: store.saved_campaigns(),
    };
    let endpoint = NodeEndpoint::new(Duration::ZERO, me, cfg, boot);
    let mut agent = Agent {
        opts: opts.clone(),
        me,
        store,
        journal,
        swarm,
        start,
        endpoint,
        files: HashMap::new(),
        control_reqs: net::Requests::new("control"),
        chunk_reqs: net::Requests::new("chunk"),
        in_control: HashMap::new(),
        in_chunk: HashMap::new(),
        next_reply: 0,
        internal: itx,
        failures: net::FailureLog::default(),
        probe: match &opts.test_probe_file {
            Some(f) => Box::new(FileProbe::new(f, SystemClock)),
            None => Box::new(SysProbe::new("/", IDLE_WINDOW, SystemClock)),
        },
        probe_error: None,
        upload: opts.max_upload.map(|r| UploadCap::new(r, UPLOAD_BURST)),
        delayed: VecDeque::new(),
        addresses: net::AddressBook::default(),
        once: opts.once.map(|_| crate::once::Watch::new()),
        upgrade: None,
        installing: 0,
    };
    agent.read_probe();
    let (_control, mut ctl_rx) = match baton_shell::control::ControlServer::bind::<
        ControlRequest,
        serde_json::Value,
    >(&baton_shell::control::socket_path(&opts.data_dir), "baton-node")
    {
        Ok((sock, rx)) => (Some(sock), rx),
        Err(e) => {
            warn!("no control socket (`baton-node status` will not answer): {e}");
            (None, mpsc::channel(1).1)
        }
    };
    let mut probe_tick = tokio::time::interval_at((Instant::now() + PROBE_INTERVAL).into(), PROBE_INTERVAL);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for p in &opts.peers {
        if let Some(id) = net::peer_of(p) {
            agent.addresses.add_static(id, p.clone());
            agent.swarm.add_peer_address(id, p.clone());
            agent.input(Input::PeerAddressKnown(NodeId(id)));
        }
        if let Err(e) = agent.swarm.dial(p.clone()) {
            warn!("cannot dial static peer {p}: {e}");
        }
    }
    // the advert says whether the owner's policy lets this node relay now (the probe was
    // read above)
    let mut advert = Advert {
        peer_id: me.to_string(),
        role: Role::Node,
        version: PROTOCOL_VERSION,
        port,
        tags: opts.tags.clone(),
        relay: agent.endpoint.relay_hint(),
        agent: opts.agent.as_ref().map(|a| baton_shell::discovery::AgentBuild {
            version: env!("CARGO_PKG_VERSION").to_string(),
            build: a.build_hex(),
        }),
    };
    let (discovery, mut disco_rx) = if opts.mdns {
        let (d, rx) = Discovery::start(&advert, &net::advertised_ips(&opts.listen), &opts.interfaces)
            .context("starting mDNS discovery")?;
        (Some(d), rx)
    } else {
        (None, mpsc::channel(1).1)
    };
    agent.drive();
    let once_at = Instant::now() + opts.once.unwrap_or_default();
    let end = loop {
        let deadline = agent.next_deadline();
        let (delayed_at, any_delayed) = (agent.next_delayed(), !agent.delayed.is_empty());
        tokio::select! {
            ev = agent.swarm.select_next_some() => agent.on_swarm(ev),
            Some(d) = disco_rx.recv() => agent.on_discovery(d),
            Some(i) = irx.recv() => agent.on_internal(i),
            _ = probe_tick.tick() => agent.read_probe(),
            Some(call) = ctl_rx.recv() => { let a = agent.control(call.request); call.reply(Ok(a)); }
            _ = tokio::time::sleep_until(delayed_at.into()), if any_delayed => {
                agent.send_delayed();
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = agent.now();
                agent.endpoint.handle_timeout(now);
            }
            _ = tokio::time::sleep_until(once_at.into()), if opts.once.is_some() => {
                break agent.once.as_ref().zip(opts.once).map(|(w, t)| w.timed_out(t));
            }
            _ = int.recv() => {
                info!("interrupted; stopping");
                break Some(crate::once::End::Interrupted { signal: "SIGINT" });
            }
            _ = term.recv() => {
                info!("terminated; stopping");
                break Some(crate::once::End::Interrupted { signal: "SIGTERM" });
            }
            _ = hup.recv() => {
                info!("hung up (the terminal or session closed); stopping");
                break Some(crate::once::End::Interrupted { signal: "SIGHUP" });
            }
        }
        agent.drive();
        if agent.upgrade.is_some() && agent.installing == 0 {
            info!("stopping to switch to the new agent");
            break None;
        }
        let relay = agent.endpoint.relay_hint();
        if relay != advert.relay {
            advert.relay = relay;
            if let Some(d) = &discovery
                && let Err(e) = d.update(&advert)
            {
                warn!("cannot advertise the new relay state: {e}");
            }
        }
        if let Some(e) = agent.once.as_ref().and_then(|w| w.end(agent.endpoint.busy())) {
            info!("--once: the campaign is over here and relayed; exiting");
            break Some(e);
        }
    };
    if let Some(d) = discovery {
        d.shutdown_async().await;
    }
    if let (Some(up), Some(me)) = (agent.upgrade.take(), opts.agent.clone()) {
        // the swarm and every file closed; the journal is on disk (appends are synced);
        // with --once, the re-executed agent goes on with the same arguments
        drop(agent);
        drop(_control);
        return Err(crate::upgrade::carry_out(&opts.data_dir, &me, &up));
    }
    match end {
        Some(e) if opts.once.is_some() => crate::once::result(e),
        _ => Ok(()),
    }
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
        let far = self.now() + Duration::from_secs(3600);
        let t = self.endpoint.poll_timeout().unwrap_or(far).min(far);
        self.start + t
    }

    /// Reads the probe and feeds its readings (a failing probe is logged once per error).
    fn read_probe(&mut self) {
        match self.probe.read(Instant::now()) {
            Ok(r) => {
                if self.probe_error.take().is_some() {
                    info!("the activity probe reads again");
                }
                self.input(Input::Readings(r));
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if self.probe_error.as_deref() != Some(msg.as_str()) {
                    warn!("activity probe: {msg}; relay gates keep their last state");
                    self.probe_error = Some(msg);
                }
            }
        }
    }

    fn next_delayed(&self) -> Instant {
        self.delayed
            .front()
            .map(|d| d.0)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// Sends the chunk answers the upload cap lets go now.
    fn send_delayed(&mut self) {
        let now = Instant::now();
        while self.delayed.front().is_some_and(|d| d.0 <= now) {
            let (_, ch, resp) = self.delayed.pop_front().expect("front");
            let _ = self.swarm.behaviour_mut().chunk.send_response(ch, resp);
        }
    }

    /// Answers a request on the control socket.
    fn control(&self, q: ControlRequest) -> serde_json::Value {
        match q {
            ControlRequest::Status => crate::status::status(
                self.me,
                &self.endpoint,
                self.now(),
                self.probe_error.as_deref(),
                self.upload.as_ref().map(|u| u.rate()),
            ),
        }
    }

    /// Feeds one input to the endpoint (its outputs are carried out by [`Self::drive`]).
    fn input(&mut self, i: Input) {
        let now = self.now();
        self.endpoint.handle(now, i);
    }

    fn reply_id(&mut self) -> ReplyId {
        self.next_reply += 1;
        ReplyId(self.next_reply)
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
                let dialable = !addrs.is_empty();
                let addrs: Vec<Multiaddr> = addrs
                    .into_iter()
                    .map(|ip| net::tcp_addr(ip, advert.port))
                    .collect();
                for a in &addrs {
                    self.swarm.add_peer_address(peer, a.clone());
                }
                self.addresses.discovered(peer, addrs);
                if dialable && !self.endpoint.knows_address(&NodeId(peer)) {
                    info!(role = %advert.role, "discovered {peer}");
                    self.input(Input::PeerAddressKnown(NodeId(peer)));
                }
                if advert.role == Role::Nms {
                    self.input(Input::PeerHeardAsNms(NodeId(peer)));
                }
            }
            DiscoveryEvent::Lost { peer_id } => {
                if let Ok(p) = peer_id.parse::<PeerId>() {
                    self.addresses.lost(&p);
                }
                info!("{peer_id} left")
            }
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Control(e)) => self.on_control(e),
            SwarmEvent::Behaviour(BehaviourEvent::Chunk(e)) => self.on_chunk(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(libp2p::identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.agent_version.starts_with(NMS_AGENT_PREFIX) => {
                self.input(Input::PeerHeardAsNms(NodeId(peer_id)))
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                // a peer with an open connection can be sent to (repeats are no-ops)
                self.input(Input::PeerAddressKnown(NodeId(peer_id)))
            }
            SwarmEvent::NewListenAddr { address, .. } => info!("listening on {address}"),
            SwarmEvent::OutgoingConnectionError { peer_id: Some(p), .. } => {
                // libp2p forgets an address that failed to dial (a restarting NMS), and
                // discovery does not report an unchanged advert again: given back
                for a in self.addresses.of(&p) {
                    self.swarm.add_peer_address(p, a.clone());
                }
            }
            _ => {}
        }
    }

    fn on_control(&mut self, ev: request_response::Event<Inbound<Control>, Control>) {
        match self.control_reqs.classify(ev, &mut self.failures) {
            Some(Incoming::Request { from, msg, channel }) => {
                let reply = self.reply_id();
                self.in_control.insert(reply, channel);
                self.input(Input::ControlRequest {
                    from: NodeId(from),
                    reply,
                    msg,
                });
            }
            Some(Incoming::Response { id, msg }) => self.input(Input::ControlResponse { id, msg }),
            Some(Incoming::Failed { id, reason }) => self.input(Input::SendFailed { id, reason }),
            None => {}
        }
    }

    fn on_chunk(&mut self, ev: request_response::Event<Inbound<ChunkRequest>, ChunkResponse>) {
        match self.chunk_reqs.classify(ev, &mut self.failures) {
            Some(Incoming::Request { from, msg, channel }) => {
                let reply = self.reply_id();
                self.in_chunk.insert(reply, channel);
                self.input(Input::ChunkRequest {
                    from: NodeId(from),
                    reply,
                    req: msg,
                });
            }
            Some(Incoming::Response { id, msg }) => self.input(Input::ChunkResponse { id, resp: msg }),
            Some(Incoming::Failed { id, reason }) => self.input(Input::ChunkFailed { id, reason }),
            None => {}
        }
    }

    fn on_internal(&mut self, i: Internal) {
        match i {
            Internal::Hashed(campaign, Ok(root)) => self.input(Input::FileHashed { campaign, root }),
            Internal::Hashed(campaign, Err(e)) => {
                error!("cannot hash the received package: {e}");
                self.input(Input::HashFailed {
                    campaign,
                    reason: e.to_string(),
                })
            }
            Internal::Opened { ticket, result } => self.input(Input::OfferOpened { ticket, result }),
            Internal::Installed(campaign, outcome) => {
                self.installing = self.installing.saturating_sub(1);
                self.input(Input::InstallDone { campaign, outcome })
            }
        }
    }

    /// Carries out the endpoint's actions and logs its events, until both are drained.
    fn drive(&mut self) {
        loop {
            if let Some(a) = self.endpoint.poll_action() {
                self.act(a);
            } else if let Some(e) = self.endpoint.poll_event() {
                self.log_event(e);
            } else {
                break;
            }
        }
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::SendControl { id, to, msg } => {
                let rid = self
                    .swarm
                    .behaviour_mut()
                    .control
                    .send_request(&to.0, Inbound::Msg(msg));
                self.control_reqs.sent(rid, id);
            }
            Action::Reply { reply, msg } => {
                if let Some(ch) = self.in_control.remove(&reply) {
                    let _ = self.swarm.behaviour_mut().control.send_response(ch, msg);
                }
            }
            Action::RequestChunk { id, to, req } => {
                let rid = self
                    .swarm
                    .behaviour_mut()
                    .chunk
                    .send_request(&to.0, Inbound::Msg(req));
                self.chunk_reqs.sent(rid, id);
            }
            Action::StoreChunk {
                campaign,
                index,
                data,
            } => {
                // the endpoint serves the chunk only once the write is confirmed
                let Some(o) = self.files.get(&campaign) else {
                    return;
                };
                // one line per chunk fetched and verified (the fault suite counts chunks
                // fetched twice from these; off unless RUST_LOG enables the target)
                debug!(target: "baton_node::chunks", "campaign {}: verified chunk {index}", hex::encode(campaign));
                let input = match Store::write_chunk(&o.data, &o.manifest, index, &data) {
                    Ok(()) => Input::ChunkStored { campaign, index },
                    Err(e) => {
                        error!("cannot write chunk {index}: {e:#}; the campaign fails");
                        Input::StoreFailed {
                            campaign,
                            index,
                            reason: format!("{e:#}"),
                        }
                    }
                };
                self.input(input);
            }
            Action::SendChunk {
                reply,
                campaign,
                index,
                key,
                ..
            } => {
                let Some(ch) = self.in_chunk.remove(&reply) else {
                    return;
                };
                let Some(o) = self.files.get(&campaign) else {
                    return;
                };
                // inline: a chunk read from the page cache and sealed costs less than
                // handing it to another thread and back
                let mut resp = baton_shell::chunkfile::read_and_seal(&o.data, &o.manifest, index, &key);
                if self.opts.corrupt_served
                    && let Some(b) = resp.data.first_mut()
                {
                    *b ^= 0x40;
                }
                if let Some(cap) = &mut self.upload {
                    let wait = cap.reserve(self.start.elapsed(), resp.data.len() as u64);
                    if !wait.is_zero() || !self.delayed.is_empty() {
                        self.delayed.push_back((Instant::now() + wait, ch, resp));
                        return;
                    }
                }
                let _ = self.swarm.behaviour_mut().chunk.send_response(ch, resp);
            }
            Action::AnswerChunk {
                reply,
                campaign,
                index,
                status,
            } => {
                if let Some(ch) = self.in_chunk.remove(&reply) {
                    let resp = ChunkResponse {
                        campaign,
                        index,
                        status,
                        data: Vec::new(),
                    };
                    let _ = self.swarm.behaviour_mut().chunk.send_response(ch, resp);
                }
            }
            Action::OpenOffer { ticket, from, offer } => {
                let tx = self.internal.clone();
                let me = self.me;
                tokio::task::spawn_blocking(move || {
                    let result = Box::new(open_offer(*offer, from, me));
                    let _ = tx.send(Internal::Opened { ticket, result });
                });
            }
            Action::Prepare {
                campaign,
                offer,
                manifest,
            } => {
                let result = self.prepare(&offer, manifest).map_err(|e| format!("{e:#}"));
                self.input(Input::Prepared { campaign, result });
            }
            Action::HashFile { campaign } => {
                let Some(o) = self.files.get(&campaign) else {
                    return;
                };
                let file = o.file.clone();
                let tx = self.internal.clone();
                tokio::task::spawn_blocking(move || {
                    let r = Store::hash_file(&file).map_err(std::io::Error::other);
                    let _ = tx.send(Internal::Hashed(campaign, r));
                });
            }
            Action::Install { campaign } if self.is_agent(&campaign) => self.install_agent(campaign),
            Action::Install { campaign } => {
                let Some(o) = self.files.get(&campaign) else {
                    return;
                };
                let manifest = o.manifest.clone();
                let tx = self.internal.clone();
                let store = self.store.clone();
                let cmd = self.opts.install.clone();
                self.installing += 1;
                tokio::spawn(async move {
                    let outcome = match store.install(&manifest, cmd.as_ref()).await {
                        Ok(()) => InstallOutcome::Installed,
                        Err(reason) => InstallOutcome::Failed { reason },
                    };
                    let _ = tx.send(Internal::Installed(campaign, outcome));
                });
            }
            Action::Forget { campaign } => forget(&mut self.files, &self.store, &campaign),
            Action::RemoveVersion { name, sequence } => match self.store.remove_version(&name, sequence) {
                Ok(()) => info!("removed {name} sequence {sequence} (older than the versions kept)"),
                Err(e) => warn!("could not remove {name} sequence {sequence}: {e:#}"),
            },
            Action::Pin { nms, trusted } => {
                warn!(
                    "TRUST ON FIRST USE: pinning NMS {nms}, which sent this node a valid offer signed by itself; from now on this node installs only what {nms} signs. To undo: `baton-node trust forget {nms}`"
                );
                if let Err(e) = write_pinned(&self.opts.data_dir, &trusted) {
                    error!("could not save the pinned NMS: {e:#}");
                }
            }
            Action::Journal(entry) => {
                if let Err(e) = self.journal.append(&entry) {
                    error!("{e:#}; a restart may resume this campaign again");
                }
            }
        }
    }

    fn is_agent(&self, c: &CampaignId) -> bool {
        self.files
            .get(c)
            .is_some_and(|o| baton_protocol::selfupdate::is_agent_package(&o.manifest))
    }

    /// The install step of an agent package (see `upgrade.rs`): installed if this process
    /// runs it, failed with a reason, or stop and try it.
    fn install_agent(&mut self, campaign: CampaignId) {
        use crate::upgrade::{Decision, Upgrade, decide};
        let Some(o) = self.files.get(&campaign) else {
            return;
        };
        let manifest = o.manifest.clone();
        let decision = match &self.opts.agent {
            None => Decision::Failed(
                "this node runs inside another program, not as its own baton-node executable: it cannot replace itself".into(),
            ),
            Some(me) => decide(&self.opts.data_dir, me, &o.file, &manifest),
        };
        match decision {
            Decision::Running => {
                // the NMS acknowledged this agent's rolling code: it reported; it stays
                if let Some(me) = &self.opts.agent {
                    if crate::upgrade::test_silent(me) {
                        warn!(
                            "testing ({}): this agent does not report its install",
                            crate::upgrade::TEST_SILENT_BUILD_ENV
                        );
                        return;
                    }
                    if let Some(p) = &me.probation {
                        p.confirm();
                    }
                }
                info!(version = %manifest.version, "running the new agent (build {})", hex::encode(manifest.root));
                let tx = self.internal.clone();
                let store = self.store.clone();
                self.installing += 1;
                tokio::spawn(async move {
                    // kept in the store like any package; no install command for the agent
                    let outcome = match store.install(&manifest, None).await {
                        Ok(()) => InstallOutcome::Installed,
                        Err(reason) => InstallOutcome::Failed { reason },
                    };
                    let _ = tx.send(Internal::Installed(campaign, outcome));
                });
            }
            Decision::Failed(reason) => {
                self.installing += 1;
                let _ = self
                    .internal
                    .send(Internal::Installed(campaign, InstallOutcome::Failed { reason }));
            }
            Decision::Upgrade => {
                self.upgrade = Some(Upgrade {
                    package: o.file.clone(),
                    root: manifest.root,
                    version: manifest.version.clone(),
                });
            }
        }
    }

    /// Makes a campaign's working files and opens its package file.
    fn prepare(
        &mut self,
        offer: &baton_protocol::Offer,
        manifest: Arc<Manifest>,
    ) -> Result<baton_protocol::ChunkSet> {
        let have = self
            .store
            .prepare(offer, &manifest)
            .context("cannot store the package")?;
        let file = self.store.data_file(&manifest.campaign);
        let data = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .map(Arc::new)
            .with_context(|| format!("cannot open the package file {}", file.display()))?;
        self.files
            .insert(manifest.campaign, Open { manifest, data, file });
        Ok(have)
    }

    fn log_event(&mut self, e: Event) {
        if let Some(w) = &mut self.once {
            w.observe(&e);
        }
        match e {
            Event::Accepted {
                campaign,
                from,
                resumed,
                name,
                version,
                sequence,
                size,
                part,
                chunks_on_disk,
                chunks,
            } => {
                if chunks_on_disk > 0 {
                    info!("{chunks_on_disk} of {chunks} chunks already verified on disk");
                }
                let how = if resumed { "resumed from disk" } else { "accepted" };
                info!(
                    package = %name, version = %version, sequence, size, part,
                    "{how} campaign {} from {from}", hex::encode(campaign)
                );
            }
            Event::Refused {
                from,
                signer,
                refusal,
            } => self.log_refusal(from.0, signer, &refusal),
            Event::NotResumed { campaign, reason } => {
                info!("not resuming campaign {}: {reason}", hex::encode(campaign))
            }
            Event::Pinned { nms } => info!("pinned NMS {nms}"),
            Event::HeardNms { peer } => info!("{peer} advertises itself as an NMS"),
            Event::Note { note, .. } => log_note(&note),
            Event::Installed {
                name,
                version,
                sequence,
                ..
            } => info!("installed {name} {version} (sequence {sequence})"),
            Event::Failed { reason, .. } => error!("campaign failed here: {reason}"),
            Event::SendRetry {
                to,
                kind,
                attempt,
                wait,
                reason,
                ..
            } => warn!("{kind:?} to {to} failed (attempt {attempt}): {reason}; again in {wait:.1?}"),
            Event::SendFailed { to, kind, reason, .. } => warn!("{kind:?} to {to} failed: {reason}"),
            Event::Gate {
                policy,
                open,
                reason,
                campaigns,
            } => {
                let n = campaigns.len();
                if open {
                    info!(campaigns = n, "relaying opened ({policy}): {reason}");
                } else {
                    info!(
                        campaigns = n,
                        "relaying gated ({policy}): {reason}; children ask other sources"
                    );
                }
            }
            Event::Finished {
                campaign,
                phase,
                served_chunks,
                fetched_chunks,
                faults,
            } => info!(
                served_chunks,
                fetched_chunks,
                faults,
                "campaign {} finished here: {} and relayed; dropped",
                hex::encode(campaign),
                if phase == Phase::Installed {
                    "installed"
                } else {
                    "failed"
                },
            ),
        }
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
}

/// Drops campaign `c`'s files: its open package file and its `partial/<campaign>`
/// directory. The installed version is a hard link to (or a copy of) the partial file, so
/// it stays.
fn forget(files: &mut HashMap<CampaignId, Open>, store: &Store, c: &CampaignId) {
    files.remove(c);
    store.forget(c);
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
        Note::HandedBack { nodes } => warn!(
            "relaying stayed gated past the campaign's grace period: handed {nodes} node(s) of this node's part back to the NMS"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_protocol::Keypair;

    /// Descriptors of this process open on files under `dir`.
    fn open_under(dir: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|p| p.starts_with(dir))
            .count()
    }

    /// A campaign as `Action::Prepare` leaves it: prepared in the store, its file open;
    /// then received and installed.
    async fn installed_campaign(store: &Store, nms: &Keypair, me: NodeId, seq: u64) -> (CampaignId, Open) {
        let m = crate::store::tests::campaign(store, nms, me, seq, &vec![seq as u8; 10_000]);
        let file = store.data_file(&m.campaign);
        let data = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&file)
                .unwrap(),
        );
        store.install(&m, None).await.unwrap();
        (
            m.campaign,
            Open {
                manifest: Arc::new(m),
                data,
                file,
            },
        )
    }

    #[tokio::test]
    async fn forgotten_campaigns_keep_no_file_open_and_leave_no_partial_dir() {
        let dir = tempfile::tempdir().unwrap();
        let dir_path = dir.path().canonicalize().unwrap();
        let store = Store::open(&dir_path).unwrap();
        let nms = Keypair::generate_ed25519();
        let me = NodeId::of(&Keypair::generate_ed25519());
        let mut files = HashMap::new();
        let n = 50u64; // more than a `ulimit -n 64` node could hold open
        for seq in 1..=n {
            let (c, o) = installed_campaign(&store, &nms, me, seq).await;
            files.insert(c, o);
        }
        assert_eq!(open_under(&dir_path), n as usize);
        for seq in 1..=n {
            forget(&mut files, &store, &[seq as u8; 16]);
        }
        assert_eq!(open_under(&dir_path), 0, "files left open");
        assert!(files.is_empty());
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
        // forgetting twice is harmless
        forget(&mut files, &store, &[1; 16]);
    }
}
