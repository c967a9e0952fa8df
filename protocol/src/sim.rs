//! A deterministic simulator: N virtual nodes and an NMS on virtual links (bandwidth,
//! latency), a seeded RNG and virtual time, driving the real state machines through a
//! whole campaign. Every message goes through the real wire encoding.
//!
//! Links: each entity has an uplink and a downlink of fixed rate; a transmission occupies
//! the sender's uplink for `bytes / up_rate` (FIFO), then arrives after the latency, or
//! later if the receiver's downlink is still busy.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use crate::chunk::{ChunkSet, PackageHasher};
use crate::id::{NodeId, fake_id, keypair_from_seed};
use crate::keys::CampaignSecret;
use crate::manifest::{
    HashList, MANIFEST_FORMAT, Manifest, PlanParams, RelayPolicy, SignedManifest, Transfer, VerifyContext,
};
use crate::monitor::{CampaignMonitor, MonitorAction, MonitorConfig};
use crate::receiver::{NodeAction, NodeCampaign, NodeConfig, check_offer};
use crate::serve::{RequestId, ServeAction};
use crate::wire::{
    ChunkRequest, ChunkResponse, ChunkStatus, Control, InstallOutcome, decode_control, encode_control,
};

/// One simulated campaign.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    pub fanout: u8,
    pub transfer: Transfer,
    pub size: u64,
    pub chunk_size: u32,
    /// Bits per second, every entity's uplink and downlink.
    pub link_bps: u64,
    pub latency: Duration,
    pub seed: u64,
    /// Addressee indices that flip a bit in every chunk they serve.
    pub corrupt: Vec<usize>,
    /// Addressee indices that are down for the whole campaign.
    pub dead: Vec<usize>,
    /// Addressee indices whose disk fills up: every chunk write after the first quarter
    /// of the package fails with "No space left on device".
    pub disk_full: Vec<usize>,
    pub node: NodeConfig,
    /// Virtual time after which the simulation gives up.
    pub max_time: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 100,
            fanout: 2,
            transfer: Transfer::CutThrough,
            size: 1 << 20,
            chunk_size: 16 * 1024,
            link_bps: 100_000_000,
            latency: Duration::from_micros(500),
            seed: 1,
            corrupt: Vec::new(),
            dead: Vec::new(),
            disk_full: Vec::new(),
            node: NodeConfig {
                progress_interval: Duration::from_millis(250),
                ..NodeConfig::default()
            },
            max_time: Duration::from_secs(600),
        }
    }
}

/// What a simulated campaign did.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub seed: u64,
    /// Per addressee: when it installed.
    pub installed_at: Vec<Option<Duration>>,
    /// When the NMS saw every addressee final.
    pub done_at: Option<Duration>,
    /// Addressees whose stored bytes equal the package.
    pub exact_copies: usize,
    /// Bytes the NMS sent, over the package size.
    pub nms_copies: f64,
    /// Faults the nodes detected in what sources sent.
    pub faults_detected: u32,
    /// Nodes that moved to another source.
    pub source_switches: u32,
    /// Per addressee: the reason it failed, as the NMS was told.
    pub failures: Vec<Option<String>>,
    /// The physical reference: one copy over one link.
    pub t1: Duration,
    pub events: u64,
}

impl SimReport {
    /// The last install, or `None` if some node never installed.
    pub fn completion(&self) -> Option<Duration> {
        self.installed_at
            .iter()
            .copied()
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max()
    }
}

#[derive(Debug)]
enum Ev {
    Control {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
        reply: bool,
    },
    ControlFailed {
        from: usize,
        to: usize,
        kind: crate::wire::ControlKind,
    },
    ChunkReq {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
    },
    ChunkResp {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
    },
    ChunkFailed {
        from: usize,
        to: usize,
        index: u32,
    },
    Timer {
        e: usize,
    },
}

struct Entity {
    id: NodeId,
    campaign: Option<NodeCampaign>,
    chunks: Vec<Option<Vec<u8>>>,
    up_free: Duration,
    down_free: Duration,
    timer_at: Option<Duration>,
    dead: bool,
    corrupt: bool,
    /// Chunk writes left before the disk is full (`None`: never full).
    room: Option<usize>,
    switches: u32,
}

struct Sim {
    cfg: SimConfig,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: HashMap<usize, Ev>,
    ents: Vec<Entity>,
    index: HashMap<NodeId, usize>,
    monitor: CampaignMonitor,
    data: Vec<u8>,
    manifest: Manifest,
    next_req: u64,
    pending_serve: HashMap<(usize, RequestId), (usize, ChunkRequest)>,
    nms_bytes: u64,
    processed: u64,
}

/// Runs one simulated campaign.
pub fn run(cfg: &SimConfig) -> SimReport {
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let nms_key = keypair_from_seed(cfg.seed.wrapping_mul(31).wrapping_add(7));
    let nms = NodeId::of(&nms_key);
    let addressees: Vec<NodeId> = (0..cfg.nodes as u64)
        .map(|i| fake_id(cfg.seed << 32 | i))
        .collect();
    let data: Vec<u8> = (0..cfg.size).map(|_| rng.u8(..)).collect();
    let mut h = PackageHasher::new(cfg.chunk_size);
    h.update(&data);
    let (size, hashes, root) = h.finish();
    let mut campaign = [0u8; 16];
    rng.fill(&mut campaign);
    let mut secret = [0u8; 32];
    rng.fill(&mut secret);
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        campaign,
        nms,
        name: "simulated".into(),
        version: "1".into(),
        file: "simulated-1.bin".into(),
        sequence: 1,
        size,
        chunk_size: cfg.chunk_size,
        chunk_hashes: HashList(hashes),
        root,
        created_at: 1_000,
        expires_at: 1_000_000,
        relay: RelayPolicy::default(),
        plan: PlanParams {
            fanout: crate::plan::fanout_for(cfg.nodes, cfg.fanout),
            transfer: cfg.transfer,
        },
        offline_install: false,
        self_update: false,
        addressees: addressees.clone(),
    };
    let signed = SignedManifest::sign(&manifest, &nms_key).expect("simulated manifest is valid");
    let count = manifest.layout().expect("valid").count() as usize;
    let monitor = CampaignMonitor::start(
        Duration::ZERO,
        manifest.clone(),
        signed,
        CampaignSecret(secret),
        MonitorConfig::default(),
    );
    let mut ents = vec![Entity {
        id: nms,
        campaign: None,
        chunks: Vec::new(),
        up_free: Duration::ZERO,
        down_free: Duration::ZERO,
        timer_at: None,
        dead: false,
        corrupt: false,
        room: None,
        switches: 0,
    }];
    for (i, id) in addressees.iter().enumerate() {
        ents.push(Entity {
            id: *id,
            campaign: None,
            chunks: vec![None; count],
            up_free: Duration::ZERO,
            down_free: Duration::ZERO,
            timer_at: None,
            dead: cfg.dead.contains(&i),
            corrupt: cfg.corrupt.contains(&i),
            room: cfg.disk_full.contains(&i).then_some(count / 4),
            switches: 0,
        });
    }
    let index = ents.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
    let mut sim = Sim {
        cfg: cfg.clone(),
        now: Duration::ZERO,
        seq: 0,
        queue: BinaryHeap::new(),
        events: HashMap::new(),
        ents,
        index,
        monitor,
        data,
        manifest,
        next_req: 0,
        pending_serve: HashMap::new(),
        nms_bytes: 0,
        processed: 0,
    };
    sim.drain_monitor();
    while let Some(Reverse((t, seq, _))) = sim.queue.pop() {
        if t > cfg.max_time || sim.monitor.is_done() {
            break;
        }
        sim.now = t;
        sim.processed += 1;
        let ev = sim.events.remove(&(seq as usize)).expect("queued event");
        sim.handle(ev);
    }
    sim.report()
}

impl Sim {
    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.events.insert(self.seq as usize, ev);
        self.queue.push(Reverse((at, self.seq, 0)));
    }

    /// Occupies the links for `bytes` from `from` to `to`; returns the arrival time.
    fn transmit(&mut self, from: usize, to: usize, bytes: usize) -> Duration {
        let tx = Duration::from_nanos(bytes as u64 * 8 * 1_000_000_000 / self.cfg.link_bps);
        let start = self.now.max(self.ents[from].up_free);
        let end = start + tx;
        self.ents[from].up_free = end;
        let arrival = (end + self.cfg.latency).max(self.ents[to].down_free + tx);
        self.ents[to].down_free = arrival;
        if from == 0 {
            self.nms_bytes += bytes as u64;
        }
        arrival
    }

    fn send_control(&mut self, from: usize, to: usize, msg: &Control, reply: bool) {
        let bytes = encode_control(msg);
        if self.ents[to].dead {
            let at = self.now + self.cfg.latency * 4;
            if !reply {
                self.push(
                    at,
                    Ev::ControlFailed {
                        from,
                        to,
                        kind: msg.kind(),
                    },
                );
            }
            return;
        }
        let at = self.transmit(from, to, bytes.len());
        self.push(
            at,
            Ev::Control {
                from,
                to,
                bytes,
                reply,
            },
        );
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Control {
                from,
                to,
                bytes,
                reply,
            } => {
                let msg = decode_control(&bytes).expect("simulated peers send valid messages");
                let from_id = self.ents[from].id;
                if reply {
                    if to == 0 {
                        self.monitor.response(self.now, from_id, msg);
                    } else if let Some(c) = self.ents[to].campaign.as_mut() {
                        c.response(self.now, from_id, msg);
                    }
                } else {
                    let answer = self.answer(from, to, &msg);
                    self.send_control(to, from, &answer, true);
                }
                self.after(to);
            }
            Ev::ControlFailed { from, to, kind } => {
                let to_id = self.ents[to].id;
                if from == 0 {
                    self.monitor
                        .send_failed(self.now, to_id, kind, "connection refused");
                } else if let Some(c) = self.ents[from].campaign.as_mut() {
                    c.send_failed(self.now, to_id, kind, "connection refused");
                }
                self.after(from);
            }
            Ev::ChunkReq { from, to, bytes } => {
                let req = ChunkRequest::decode(&bytes).expect("valid chunk request");
                self.next_req += 1;
                let rid = RequestId(self.next_req);
                self.pending_serve.insert((to, rid), (from, req.clone()));
                let from_id = self.ents[from].id;
                if to == 0 {
                    self.monitor.chunk_request(self.now, rid, from_id, &req);
                } else if let Some(c) = self.ents[to].campaign.as_mut() {
                    c.chunk_request(self.now, rid, from_id, &req);
                } else {
                    self.serve(
                        to,
                        ServeAction::Answer {
                            req: rid,
                            index: req.index,
                            status: ChunkStatus::UnknownCampaign,
                        },
                    );
                }
                self.after(to);
            }
            Ev::ChunkResp { from, to, bytes } => {
                let resp = ChunkResponse::decode(&bytes).expect("valid chunk response");
                let from_id = self.ents[from].id;
                if let Some(c) = self.ents[to].campaign.as_mut() {
                    c.chunk_response(self.now, from_id, resp);
                }
                self.after(to);
            }
            Ev::ChunkFailed { from, to, index } => {
                let to_id = self.ents[to].id;
                if let Some(c) = self.ents[from].campaign.as_mut() {
                    c.chunk_failed(self.now, to_id, index, "connection refused");
                }
                self.after(from);
            }
            Ev::Timer { e } => {
                if self.ents[e].timer_at != Some(self.now) {
                    return;
                }
                self.ents[e].timer_at = None;
                if e == 0 {
                    self.monitor.timeout(self.now);
                } else if let Some(c) = self.ents[e].campaign.as_mut() {
                    c.timeout(self.now);
                }
                self.after(e);
            }
        }
    }

    /// The answer of entity `to` to a control request from `from`.
    fn answer(&mut self, from: usize, to: usize, msg: &Control) -> Control {
        let from_id = self.ents[from].id;
        if to == 0 {
            return self.monitor.request(self.now, from_id, msg);
        }
        let me = self.ents[to].id;
        match msg {
            Control::Offer(offer) => {
                if self.ents[to].campaign.is_some() {
                    return Control::OfferReply {
                        campaign: self.manifest.campaign,
                        verdict: crate::wire::Verdict::Accept,
                    };
                }
                let trusted = [self.manifest.nms];
                let ctx = VerifyContext {
                    trusted: &trusted,
                    unix_now: 2_000,
                    installed: None,
                    me: Some(me),
                };
                match check_offer(offer, &from_id, &ctx) {
                    Ok(m) => {
                        let count = m.layout().expect("valid").count();
                        let c = NodeCampaign::accept(
                            self.now,
                            me,
                            (**offer).clone(),
                            m,
                            self.cfg.node.clone(),
                            ChunkSet::new(count),
                        );
                        self.ents[to].campaign = Some(c);
                        Control::OfferReply {
                            campaign: self.manifest.campaign,
                            verdict: crate::wire::Verdict::Accept,
                        }
                    }
                    Err(r) => Control::OfferReply {
                        campaign: self.manifest.campaign,
                        verdict: r.verdict(),
                    },
                }
            }
            other => match self.ents[to].campaign.as_mut() {
                Some(c) => c.request(self.now, from_id, other),
                None => Control::Error {
                    reason: "unknown campaign".into(),
                },
            },
        }
    }

    fn serve(&mut self, server: usize, a: ServeAction) {
        let (req, status, payload) = match a {
            ServeAction::SendChunk { req, index, key, .. } => {
                let mut data = if server == 0 {
                    let l = self.manifest.layout().expect("valid");
                    let s = l.offset(index) as usize;
                    self.data[s..s + l.len(index) as usize].to_vec()
                } else {
                    self.ents[server].chunks[index as usize]
                        .clone()
                        .expect("served chunks are stored")
                };
                key.seal(&self.manifest.campaign, index, &mut data);
                if self.ents[server].corrupt {
                    data[0] ^= 0x40;
                }
                (req, ChunkStatus::Ok, data)
            }
            ServeAction::Answer { req, status, .. } => (req, status, Vec::new()),
        };
        let Some((to, r)) = self.pending_serve.remove(&(server, req)) else {
            return;
        };
        let resp = ChunkResponse {
            campaign: r.campaign,
            index: r.index,
            status,
            data: payload,
        };
        let bytes = resp.encode();
        let at = self.transmit(server, to, bytes.len());
        self.push(
            at,
            Ev::ChunkResp {
                from: server,
                to,
                bytes,
            },
        );
    }

    fn drain_monitor(&mut self) {
        while let Some(a) = self.monitor.poll_action() {
            match a {
                MonitorAction::Send { to, msg } => {
                    let to = self.index[&to];
                    self.send_control(0, to, &msg, false);
                }
                MonitorAction::Serve(s) => self.serve(0, s),
                MonitorAction::Note(_) => {}
            }
        }
        let next = self.monitor.poll_timeout();
        self.schedule(0, next);
    }

    fn after(&mut self, e: usize) {
        if e == 0 {
            self.drain_monitor();
            return;
        }
        while let Some(a) = self.ents[e].campaign.as_mut().and_then(|c| c.poll_action()) {
            match a {
                NodeAction::Send { to, msg } => {
                    let to = self.index[&to];
                    self.send_control(e, to, &msg, false);
                }
                NodeAction::RequestChunk { to, req } => {
                    let to = self.index[&to];
                    if self.ents[to].dead {
                        let at = self.now + self.cfg.latency * 4;
                        self.push(
                            at,
                            Ev::ChunkFailed {
                                from: e,
                                to,
                                index: req.index,
                            },
                        );
                    } else {
                        let bytes = req.encode();
                        let at = self.transmit(e, to, bytes.len());
                        self.push(at, Ev::ChunkReq { from: e, to, bytes });
                    }
                }
                NodeAction::Store { index, data } => {
                    let now = self.now;
                    let ent = &mut self.ents[e];
                    let full = ent.room == Some(0);
                    if !full {
                        ent.chunks[index as usize] = Some(data);
                        ent.room = ent.room.map(|r| r - 1);
                    }
                    if let Some(c) = ent.campaign.as_mut() {
                        if full {
                            c.store_failed(now, index, "No space left on device (os error 28)");
                        } else {
                            c.chunk_stored(now, index);
                        }
                    }
                }
                NodeAction::HashFile => {
                    let mut h = blake3::Hasher::new();
                    for c in self.ents[e].chunks.iter().flatten() {
                        h.update(c);
                    }
                    let root = *h.finalize().as_bytes();
                    let now = self.now;
                    if let Some(c) = self.ents[e].campaign.as_mut() {
                        c.file_hashed(now, root);
                    }
                }
                NodeAction::Install => {
                    let now = self.now;
                    if let Some(c) = self.ents[e].campaign.as_mut() {
                        c.install_done(now, InstallOutcome::Installed);
                    }
                }
                NodeAction::Serve(s) => self.serve(e, s),
                NodeAction::Note(crate::receiver::Note::SwitchedSource { .. }) => self.ents[e].switches += 1,
                NodeAction::Note(_) => {}
                NodeAction::RelayDone => {}
            }
        }
        let next = self.ents[e].campaign.as_ref().and_then(|c| c.poll_timeout());
        self.schedule(e, next);
    }

    fn schedule(&mut self, e: usize, next: Option<Duration>) {
        let Some(n) = next else { return };
        let n = n.max(self.now);
        let current = self.ents[e].timer_at;
        if current.is_none_or(|c| n < c || c < self.now) {
            self.ents[e].timer_at = Some(n);
            self.push(n, Ev::Timer { e });
        }
    }

    fn report(&self) -> SimReport {
        let nodes = self.monitor.nodes();
        let installed_at = self.ents[1..]
            .iter()
            .map(|e| {
                let v = &nodes[&e.id];
                (v.status == crate::monitor::NodeStatus::Installed)
                    .then_some(v.finished_at)
                    .flatten()
            })
            .collect();
        let root = self.manifest.root;
        let exact_copies = self.ents[1..]
            .iter()
            .filter(|e| {
                let mut h = blake3::Hasher::new();
                for c in &e.chunks {
                    match c {
                        Some(c) => h.update(c),
                        None => return false,
                    };
                }
                *h.finalize().as_bytes() == root
            })
            .count();
        let faults = self.ents[1..]
            .iter()
            .filter_map(|e| e.campaign.as_ref())
            .map(|c| c.total_faults())
            .sum();
        SimReport {
            seed: self.cfg.seed,
            installed_at,
            done_at: self.monitor.finished_at(),
            exact_copies,
            nms_copies: self.nms_bytes as f64 / self.data.len().max(1) as f64,
            faults_detected: faults,
            source_switches: self.ents.iter().map(|e| e.switches).sum(),
            failures: self.ents[1..]
                .iter()
                .map(|e| match &nodes[&e.id].status {
                    crate::monitor::NodeStatus::Failed(r) => Some(r.clone()),
                    _ => None,
                })
                .collect(),
            t1: Duration::from_nanos(self.data.len() as u64 * 8 * 1_000_000_000 / self.cfg.link_bps),
            events: self.processed,
        }
    }
}
