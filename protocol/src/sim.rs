//! A deterministic simulator and fault explorer: N virtual nodes and an NMS on virtual
//! links (bandwidth, latency), a seeded RNG and virtual time, driving the real state
//! machines through whole campaigns. Every message goes through the real wire encoding.
//!
//! Links: each entity has an uplink and a downlink of fixed rate; a transmission occupies
//! the sender's uplink for `bytes / up_rate` (FIFO), then arrives after the latency (plus
//! the jitter of both ends' links), or later if the receiver's downlink is still busy.
//!
//! Faults ([`Faults`], all drawn from the seed by [`SimConfig::explore`]): message loss per
//! link (a lost message is a dropped connection: the requester sees a failure, before or
//! after the receiver handled the request), latency jitter, node crashes with a restart that
//! resumes from the node's "disk" (verified chunks, saved offers and what is installed
//! survive; the machines do not), install commands that fail, a disk that fills up, an NMS
//! crash and restart (its campaign state survives, requests in flight are lost), and
//! several overlapping campaigns of one package with growing sequences.
//!
//! After every event the simulator checks the invariants (see [`SimReport::violations`]):
//! 1. a node installs only after the NMS acknowledged the right code (checked here against
//!    the campaign secret, independently of the NMS), in its current run;
//! 2. a node's current sequence never goes down;
//! 3. at most `window` chunk requests are out per node, campaign and source;
//! 4. a final state never changes: the NMS's status of a node once installed or failed,
//!    and the outcome a node reported for a campaign (across restarts);
//! 5. at the end, every addressee that is up is final at the NMS for every campaign
//!    (installed, or failed with a reason), and installed at the NMS only if it is.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use crate::admission::{AdmissionContext, admit, open_offer};
use crate::chunk::{ChunkSet, Hash, PackageHasher, hash_chunk};
use crate::id::{NodeId, fake_id, keypair_from_seed};
use crate::keys::CampaignSecret;
use crate::manifest::{
    HashList, InstallCheck, MANIFEST_FORMAT, Manifest, PlanParams, RelayPolicy, SignedManifest, Transfer,
};
use crate::monitor::{CampaignMonitor, MonitorAction, MonitorConfig, NodeStatus};
use crate::receiver::{NodeAction, NodeCampaign, NodeConfig};
use crate::serve::{RequestId, ServeAction};
use crate::wire::{
    ChunkRequest, ChunkResponse, ChunkStatus, Control, ControlKind, InstallOutcome, Offer, decode_control,
    encode_control,
};

/// A crash and restart of one entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crash {
    /// Addressee index (ignored for the NMS's crash).
    pub node: usize,
    pub at: Duration,
    pub down_for: Duration,
}

/// Faults of one run. Entity vectors are indexed 0 = the NMS, `i + 1` = addressee `i`, and
/// may be shorter (missing entries: no fault).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Probability that a message over an entity's link is lost (its connection drops).
    pub loss: Vec<f64>,
    /// Extra latency, uniform in `[0, jitter]`, per message over an entity's link.
    pub jitter: Vec<Duration>,
    /// Addressees that crash and restart (resuming from their disk).
    pub crashes: Vec<Crash>,
    /// Addressees whose install command fails.
    pub install_fail: Vec<usize>,
    /// Addressees whose disk fills up: (addressee, chunk writes that still fit).
    pub disk_room: Vec<(usize, usize)>,
    /// The NMS crashes and restarts (campaign state kept, requests in flight lost).
    pub nms_crash: Option<Crash>,
    /// Start times of the campaigns of the package, sequences 1, 2, ...; empty: one at 0.
    pub campaigns: Vec<Duration>,
}

/// One simulated run.
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
    /// Addressee indices that are down for the whole run.
    pub dead: Vec<usize>,
    /// Addressee indices whose disk fills up: every chunk write after the first quarter
    /// of the package fails with "No space left on device".
    pub disk_full: Vec<usize>,
    pub faults: Faults,
    pub node: NodeConfig,
    /// Virtual time after which the simulation gives up.
    pub max_time: Duration,
    /// Keep a trace of every event in the report.
    pub trace: bool,
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
            faults: Faults::default(),
            node: NodeConfig {
                progress_interval: Duration::from_millis(250),
                ..NodeConfig::default()
            },
            max_time: Duration::from_secs(600),
            trace: false,
        }
    }
}

impl SimConfig {
    /// A run of the fault explorer: the fleet, the package, the plan and every fault drawn
    /// from `seed` alone.
    pub fn explore(seed: u64) -> SimConfig {
        let mut r = fastrand::Rng::with_seed(seed ^ 0x5eed_f417_0bad_cafe);
        let nodes = r.usize(5..=40);
        let chunk_size = if r.u8(..4) == 0 { 8192 } else { 4096 };
        let chunks = if r.u8(..10) == 0 {
            r.u64(1..=4)
        } else {
            r.u64(1..=300)
        };
        let size = chunks * u64::from(chunk_size) - r.u64(..u64::from(chunk_size));
        let link_bps = [10_000_000u64, 50_000_000, 100_000_000][r.usize(..3)];
        let latency = Duration::from_micros(r.u64(100..=5_000));
        let entities = nodes + 1;
        // about the time of one campaign without faults: a copy per tier, plus round trips
        let copy = Duration::from_nanos(size * 8 * 1_000_000_000 / link_bps);
        let span = copy * 4 + latency * 200 + Duration::from_millis(500);
        let at = |r: &mut fastrand::Rng| Duration::from_nanos(r.u64(..span.as_nanos() as u64));
        let mut faults = Faults::default();
        if r.bool() {
            faults.loss = (0..entities)
                .map(|_| if r.bool() { r.f64() * 0.05 } else { 0.0 })
                .collect();
        }
        if r.bool() {
            faults.jitter = (0..entities)
                .map(|_| Duration::from_micros(r.u64(..=20_000)))
                .collect();
        }
        let mut picked = HashSet::new();
        let mut pick = |r: &mut fastrand::Rng| {
            let i = r.usize(..nodes);
            picked.insert(i).then_some(i)
        };
        for _ in 0..r.usize(..=3) {
            if let Some(node) = pick(&mut r) {
                let at = at(&mut r);
                let down_for = Duration::from_millis(r.u64(10..=20_000));
                faults.crashes.push(Crash { node, at, down_for });
            }
        }
        for _ in 0..r.usize(..=2) {
            faults.install_fail.extend(pick(&mut r));
        }
        let campaigns = r.usize(1..=3);
        if r.u8(..4) == 0
            && let Some(i) = pick(&mut r)
        {
            faults
                .disk_room
                .push((i, r.usize(..=chunks as usize * campaigns)));
        }
        if r.u8(..3) == 0 {
            let at = at(&mut r);
            let down_for = Duration::from_millis(r.u64(10..=15_000));
            faults.nms_crash = Some(Crash {
                node: 0,
                at,
                down_for,
            });
        }
        faults.campaigns = (0..campaigns)
            .map(|k| if k == 0 { Duration::ZERO } else { at(&mut r) })
            .collect();
        let dead = if r.u8(..5) == 0 {
            pick(&mut r).into_iter().collect()
        } else {
            Vec::new()
        };
        let corrupt = if r.u8(..5) == 0 {
            pick(&mut r).into_iter().collect()
        } else {
            Vec::new()
        };
        SimConfig {
            nodes,
            fanout: r.u8(1..=3),
            transfer: if r.bool() {
                Transfer::CutThrough
            } else {
                Transfer::StoreAndForward
            },
            size,
            chunk_size,
            link_bps,
            latency,
            seed,
            corrupt,
            dead,
            disk_full: Vec::new(),
            faults,
            node: NodeConfig {
                progress_interval: Duration::from_millis(250),
                ..NodeConfig::default()
            },
            max_time: Duration::from_secs(3600),
            trace: false,
        }
    }

    /// One line describing the run.
    pub fn describe(&self) -> String {
        let f = &self.faults;
        format!(
            "{} nodes, fanout {}, {:?}, {} bytes in {}-byte chunks, {} Mbit/s, {:?} latency; {} campaign(s); \
             loss on {} links, jitter on {}, crashes {:?}, NMS crash {:?}, install failures {:?}, disk room {:?}, dead {:?}, corrupt {:?}",
            self.nodes,
            self.fanout,
            self.transfer,
            self.size,
            self.chunk_size,
            self.link_bps / 1_000_000,
            self.latency,
            f.campaigns.len().max(1),
            f.loss.iter().filter(|&&l| l > 0.0).count(),
            f.jitter.iter().filter(|j| !j.is_zero()).count(),
            f.crashes
                .iter()
                .map(|c| (c.node, c.at, c.down_for))
                .collect::<Vec<_>>(),
            f.nms_crash.map(|c| (c.at, c.down_for)),
            f.install_fail,
            f.disk_room,
            self.dead,
            self.corrupt,
        )
    }
}

/// What a simulated run did.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub seed: u64,
    /// Per addressee: when it installed (first campaign).
    pub installed_at: Vec<Option<Duration>>,
    /// When the NMS saw every addressee final (first campaign).
    pub done_at: Option<Duration>,
    /// Addressees whose stored bytes equal the package (first campaign).
    pub exact_copies: usize,
    /// Bytes the NMS sent, over the package size.
    pub nms_copies: f64,
    /// Faults the nodes detected in what sources sent.
    pub faults_detected: u32,
    /// Nodes that moved to another source.
    pub source_switches: u32,
    /// Per addressee: the reason it failed, as the NMS was told (first campaign).
    pub failures: Vec<Option<String>>,
    /// The physical reference: one copy over one link.
    pub t1: Duration,
    pub events: u64,
    /// Virtual time at the end of the run.
    pub end: Duration,
    /// Per campaign: (installed, failed, total) as the NMS saw it at the end.
    pub outcomes: Vec<(usize, usize, usize)>,
    /// Broken invariants; the run stops at the first one (empty: all held).
    pub violations: Vec<String>,
    /// The event trace, if [`SimConfig::trace`].
    pub trace: Vec<String>,
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
    /// A control request (`reply: false`) or its answer. `k`: the campaign of the request;
    /// `epoch`: the requester's run when it sent the request.
    Control {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
        reply: bool,
        k: Option<usize>,
        epoch: u32,
        /// An install or trouble report from a node to the NMS, or its answer.
        report: bool,
    },
    /// A control request failed; `copy`: the request, for the shell's retries.
    ControlFailed {
        from: usize,
        to: usize,
        kind: crate::wire::ControlKind,
        k: Option<usize>,
        epoch: u32,
        copy: Option<Vec<u8>>,
    },
    ChunkReq {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
        epoch: u32,
    },
    ChunkResp {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
        epoch: u32,
    },
    ChunkFailed {
        from: usize,
        to: usize,
        k: usize,
        index: u32,
        epoch: u32,
    },
    Timer {
        e: usize,
    },
    Crash {
        e: usize,
        down_for: Duration,
    },
    Restart {
        e: usize,
    },
    Start {
        k: usize,
    },
    /// A node's shell sends again a report the NMS did not get (as `NodeEndpoint` retries
    /// one-shot messages).
    Resend {
        from: usize,
        k: usize,
        bytes: Vec<u8>,
        epoch: u32,
        attempt: u32,
    },
}

/// One campaign of the package.
struct Camp {
    manifest: Manifest,
    signed: SignedManifest,
    secret: CampaignSecret,
    data: Vec<u8>,
    monitor: Option<CampaignMonitor>,
}

struct Entity {
    id: NodeId,
    /// Incremented at each crash: answers to an earlier run are dropped.
    epoch: u32,
    /// Per campaign: the running machine.
    campaigns: Vec<Option<NodeCampaign>>,
    /// Per campaign, per chunk: what the disk holds (survives a crash).
    disk: Vec<Vec<Option<Vec<u8>>>>,
    /// Per campaign: the offer saved at accept, until the campaign is over (survives).
    saved: Vec<Option<Offer>>,
    /// Per campaign: over here (relaying done) in this run.
    over: Vec<bool>,
    /// Per campaign: the machine's relaying is done, its reports not all delivered yet.
    relay_done: Vec<bool>,
    /// Per campaign: it reached a final phase here (the journal's final entry; survives).
    ended: Vec<bool>,
    /// Installed sequence and root (survives).
    current: Option<(u64, Hash)>,
    up_free: Duration,
    down_free: Duration,
    timer_at: Option<Duration>,
    dead: bool,
    corrupt: bool,
    install_fail: bool,
    /// Chunk writes left before the disk is full (`None`: never full).
    room: Option<usize>,
    switches: u32,
    faults_seen: u32,
    /// The first campaign's package, as installed, equals the package.
    exact: bool,
}

struct Sim {
    cfg: SimConfig,
    rng: fastrand::Rng,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    events: HashMap<u64, Ev>,
    ents: Vec<Entity>,
    index: HashMap<NodeId, usize>,
    camps: Vec<Camp>,
    by_id: HashMap<[u8; 16], usize>,
    next_req: u64,
    /// (server, request) -> (requester, its epoch, request)
    pending_serve: HashMap<(usize, RequestId), (usize, u32, ChunkRequest)>,
    nms_bytes: u64,
    processed: u64,
    started: Vec<bool>,
    // invariant bookkeeping
    /// (node, campaign): the NMS acknowledged the right code in the node's current run.
    acked: HashSet<(usize, usize)>,
    /// (node, campaign): whether its last auth request to the NMS carried the right code.
    auth_good: HashMap<(usize, usize), bool>,
    /// (node, campaign, source) -> chunk requests out.
    out: HashMap<(usize, usize, usize), usize>,
    /// (node, campaign) -> the first outcome the node reported (true: installed).
    reported: HashMap<(usize, usize), bool>,
    /// (campaign, node) -> final status at the NMS.
    finals: HashMap<(usize, usize), NodeStatus>,
    /// Per node: the sequences made current, in order.
    installs: Vec<Vec<u64>>,
    /// (node, campaign) -> reports sent again.
    resends: HashMap<(usize, usize), u32>,
    /// (node, campaign) -> reports on their way to the NMS or waiting to be sent again.
    reports_out: HashMap<(usize, usize), u32>,
    violations: Vec<String>,
    trace: Vec<String>,
}

/// Runs one simulated campaign (or several, see [`Faults::campaigns`]).
pub fn run(cfg: &SimConfig) -> SimReport {
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let nms_key = keypair_from_seed(cfg.seed.wrapping_mul(31).wrapping_add(7));
    let nms = NodeId::of(&nms_key);
    let addressees: Vec<NodeId> = (0..cfg.nodes as u64)
        .map(|i| fake_id(cfg.seed << 32 | i))
        .collect();
    let starts = if cfg.faults.campaigns.is_empty() {
        vec![Duration::ZERO]
    } else {
        cfg.faults.campaigns.clone()
    };
    let mut camps = Vec::new();
    for k in 0..starts.len() {
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
            version: format!("{}", k + 1),
            file: format!("simulated-{}.bin", k + 1),
            sequence: k as u64 + 1,
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
        camps.push(Camp {
            manifest,
            signed,
            secret: CampaignSecret(secret),
            data,
            monitor: None,
        });
    }
    let counts: Vec<usize> = camps
        .iter()
        .map(|c| c.manifest.layout().expect("valid").count() as usize)
        .collect();
    let nc = camps.len();
    let mut ents = Vec::new();
    for (i, id) in std::iter::once(nms).chain(addressees.iter().copied()).enumerate() {
        let a = i.wrapping_sub(1); // addressee index (meaningless for the NMS)
        let node = i > 0;
        let room = if !node {
            None
        } else if cfg.disk_full.contains(&a) {
            Some(counts[0] / 4)
        } else {
            cfg.faults
                .disk_room
                .iter()
                .find(|(n, _)| *n == a)
                .map(|(_, r)| *r)
        };
        ents.push(Entity {
            id,
            epoch: 0,
            campaigns: (0..nc).map(|_| None).collect(),
            disk: counts
                .iter()
                .map(|&c| if node { vec![None; c] } else { Vec::new() })
                .collect(),
            saved: vec![None; nc],
            over: vec![false; nc],
            relay_done: vec![false; nc],
            ended: vec![false; nc],
            current: None,
            up_free: Duration::ZERO,
            down_free: Duration::ZERO,
            timer_at: None,
            dead: node && cfg.dead.contains(&a),
            corrupt: node && cfg.corrupt.contains(&a),
            install_fail: node && cfg.faults.install_fail.contains(&a),
            room,
            switches: 0,
            faults_seen: 0,
            exact: false,
        });
    }
    let index = ents.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
    let by_id = camps
        .iter()
        .enumerate()
        .map(|(k, c)| (c.manifest.campaign, k))
        .collect();
    let n_ents = ents.len();
    let mut sim = Sim {
        cfg: cfg.clone(),
        rng,
        now: Duration::ZERO,
        seq: 0,
        queue: BinaryHeap::new(),
        events: HashMap::new(),
        ents,
        index,
        camps,
        by_id,
        next_req: 0,
        pending_serve: HashMap::new(),
        nms_bytes: 0,
        processed: 0,
        started: vec![false; nc],
        acked: HashSet::new(),
        auth_good: HashMap::new(),
        out: HashMap::new(),
        reported: HashMap::new(),
        finals: HashMap::new(),
        installs: vec![Vec::new(); n_ents],
        resends: HashMap::new(),
        reports_out: HashMap::new(),
        violations: Vec::new(),
        trace: Vec::new(),
    };
    for (k, at) in starts.iter().enumerate() {
        sim.push(*at, Ev::Start { k });
    }
    for c in &cfg.faults.crashes {
        if c.node < cfg.nodes {
            sim.push(
                c.at,
                Ev::Crash {
                    e: c.node + 1,
                    down_for: c.down_for,
                },
            );
        }
    }
    if let Some(c) = cfg.faults.nms_crash {
        sim.push(
            c.at,
            Ev::Crash {
                e: 0,
                down_for: c.down_for,
            },
        );
    }
    while let Some(Reverse((t, seq))) = sim.queue.pop() {
        if t > cfg.max_time || sim.all_done() {
            break;
        }
        sim.now = t;
        sim.processed += 1;
        let ev = sim.events.remove(&seq).expect("queued event");
        if cfg.trace {
            let line = format!(
                "{:>12.6}s #{} {}",
                t.as_secs_f64(),
                sim.processed,
                sim.describe(&ev)
            );
            sim.trace.push(line);
        }
        sim.handle(ev);
        sim.check_invariants();
        if !sim.violations.is_empty() {
            break;
        }
    }
    if sim.violations.is_empty() {
        sim.check_end();
    }
    sim.report()
}

impl Sim {
    fn all_done(&self) -> bool {
        self.started.iter().all(|s| *s)
            && self
                .camps
                .iter()
                .all(|c| c.monitor.as_ref().is_some_and(|m| m.is_done()))
    }

    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.events.insert(self.seq, ev);
        self.queue.push(Reverse((at, self.seq)));
    }

    fn note(&mut self, line: String) {
        if self.cfg.trace {
            self.trace
                .push(format!("{:>12.6}s    {line}", self.now.as_secs_f64()));
        }
    }

    fn violation(&mut self, what: String) {
        let line = format!("at {:?} (event {}): {what}", self.now, self.processed);
        self.note(format!("VIOLATION {line}"));
        self.violations.push(line);
    }

    fn name(&self, e: usize) -> String {
        if e == 0 {
            "nms".into()
        } else {
            format!("n{}", e - 1)
        }
    }

    fn describe(&self, ev: &Ev) -> String {
        let n = |e: &usize| self.name(*e);
        match ev {
            Ev::Control {
                from,
                to,
                bytes,
                reply,
                ..
            } => {
                let kind = decode_control(bytes)
                    .map(|m| format!("{:?}", m.kind()))
                    .unwrap_or_default();
                let what = if *reply { "answer" } else { "request" };
                format!("{} -> {}: {kind} {what}", n(from), n(to))
            }
            Ev::ControlFailed { from, to, kind, .. } => {
                format!("{} -> {}: {kind:?} failed", n(from), n(to))
            }
            Ev::ChunkReq { from, to, bytes, .. } => {
                let i = ChunkRequest::decode(bytes).map(|r| r.index).unwrap_or(u32::MAX);
                format!("{} -> {}: chunk request {i}", n(from), n(to))
            }
            Ev::ChunkResp { from, to, bytes, .. } => match ChunkResponse::decode(bytes) {
                Ok(r) => format!("{} -> {}: chunk {} {:?}", n(from), n(to), r.index, r.status),
                Err(_) => String::new(),
            },
            Ev::ChunkFailed { from, to, index, .. } => {
                format!("{} -> {}: chunk request {index} failed", n(from), n(to))
            }
            Ev::Timer { e } => format!("{}: timer", n(e)),
            Ev::Crash { e, down_for } => format!("{}: CRASH for {down_for:?}", n(e)),
            Ev::Restart { e } => format!("{}: RESTART", n(e)),
            Ev::Start { k } => format!("campaign {k} (sequence {}) starts", k + 1),
            Ev::Resend { from, attempt, .. } => format!("{}: resend to the NMS, attempt {attempt}", n(from)),
        }
    }

    /// True if a message over the links of `a` and `b` is lost.
    fn lost(&mut self, a: usize, b: usize) -> bool {
        let l = |e: usize| self.cfg.faults.loss.get(e).copied().unwrap_or(0.0);
        let p = 1.0 - (1.0 - l(a)) * (1.0 - l(b));
        p > 0.0 && self.rng.f64() < p
    }

    /// When a dropped connection between `a` and `b` is noticed.
    fn fail_at(&self) -> Duration {
        self.now + self.cfg.latency * 4
    }

    /// Occupies the links for `bytes` from `from` to `to`; returns the arrival time.
    fn transmit(&mut self, from: usize, to: usize, bytes: usize) -> Duration {
        let tx = Duration::from_nanos(bytes as u64 * 8 * 1_000_000_000 / self.cfg.link_bps);
        let start = self.now.max(self.ents[from].up_free);
        let end = start + tx;
        self.ents[from].up_free = end;
        let mut jitter = Duration::ZERO;
        for e in [from, to] {
            let j = self.cfg.faults.jitter.get(e).copied().unwrap_or_default();
            if !j.is_zero() {
                jitter += Duration::from_nanos(self.rng.u64(..=j.as_nanos() as u64));
            }
        }
        let arrival = (end + self.cfg.latency + jitter).max(self.ents[to].down_free + tx);
        self.ents[to].down_free = arrival;
        if from == 0 {
            self.nms_bytes += bytes as u64;
        }
        arrival
    }

    fn campaign_of(&self, msg: &Control) -> Option<usize> {
        let id = match msg {
            Control::Offer(o) => o.manifest.open_unchecked().ok()?.campaign,
            other => *other.campaign()?,
        };
        self.by_id.get(&id).copied()
    }

    /// Entity `from` sends a control request about campaign `k` to `to`.
    fn send_request(&mut self, from: usize, to: usize, msg: &Control, k: Option<usize>) {
        let epoch = self.ents[from].epoch;
        let kind = msg.kind();
        // a report counts as pending from here until answered; a failure of it schedules
        // a resend, which stays pending
        let report = from > 0 && to == 0 && matches!(kind, ControlKind::InstallReport | ControlKind::Trouble);
        if report && let Some(k) = k {
            *self.reports_out.entry((from, k)).or_insert(0) += 1;
        }
        if self.ents[to].dead || self.lost(from, to) {
            let at = self.fail_at();
            self.push(
                at,
                Ev::ControlFailed {
                    from,
                    to,
                    kind,
                    k,
                    epoch,
                    copy: Some(encode_control(msg)),
                },
            );
            return;
        }
        if from > 0
            && to == 0
            && let (Some(k), Control::InstallReport { outcome, .. }) = (k, msg)
        {
            let installed = *outcome == InstallOutcome::Installed;
            match self.reported.get(&(from, k)) {
                None => {
                    self.reported.insert((from, k), installed);
                }
                Some(&first) if first != installed => self.violation(format!(
                    "{} reported {outcome:?} for campaign {k} after reporting {}",
                    self.name(from),
                    if first { "installed" } else { "failed" }
                )),
                Some(_) => {}
            }
        }
        let bytes = encode_control(msg);
        let at = self.transmit(from, to, bytes.len());
        self.push(
            at,
            Ev::Control {
                from,
                to,
                bytes,
                reply: false,
                k,
                epoch,
                report,
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
                k,
                epoch,
                report,
            } => {
                let msg = decode_control(&bytes).expect("simulated peers send valid messages");
                if reply {
                    // `to` asked, `from` answers
                    if self.ents[to].dead || self.ents[to].epoch != epoch {
                        return;
                    }
                    let from_id = self.ents[from].id;
                    let Some(k) = k else { return };
                    if report {
                        self.report_settled(to, k);
                    }
                    if let Control::AuthReply { ok: true, .. } = msg
                        && from == 0
                    {
                        if self.auth_good.get(&(to, k)) == Some(&true) {
                            self.acked.insert((to, k));
                        } else {
                            self.violation(format!(
                                "the NMS acknowledged a wrong code from {} in campaign {k}",
                                self.name(to)
                            ));
                        }
                    }
                    if to == 0 {
                        if let Some(m) = self.camps[k].monitor.as_mut() {
                            m.response(self.now, from_id, msg);
                        }
                    } else if let Some(c) = self.ents[to].campaigns[k].as_mut() {
                        c.response(self.now, from_id, msg);
                    }
                    self.after(to);
                } else {
                    if self.ents[to].dead {
                        let at = self.fail_at();
                        let kind = msg.kind();
                        self.push(
                            at,
                            Ev::ControlFailed {
                                from,
                                to,
                                kind,
                                k,
                                epoch,
                                copy: Some(bytes.clone()),
                            },
                        );
                        return;
                    }
                    let answer = self.answer(from, to, &msg, k);
                    self.after(to);
                    // the answer travels back unless the connection drops
                    if self.lost(to, from) {
                        let at = self.fail_at();
                        self.push(
                            at,
                            Ev::ControlFailed {
                                from,
                                to,
                                kind: msg.kind(),
                                k,
                                epoch,
                                copy: Some(bytes.clone()),
                            },
                        );
                    } else {
                        let bytes = encode_control(&answer);
                        let at = self.transmit(to, from, bytes.len());
                        self.push(
                            at,
                            Ev::Control {
                                from: to,
                                to: from,
                                bytes,
                                reply: true,
                                k,
                                epoch,
                                report,
                            },
                        );
                    }
                }
            }
            Ev::ControlFailed {
                from,
                to,
                kind,
                k,
                epoch,
                copy,
            } => {
                if self.ents[from].dead || self.ents[from].epoch != epoch {
                    return;
                }
                let Some(k) = k else { return };
                if from > 0 && to == 0 && matches!(kind, ControlKind::InstallReport | ControlKind::Trouble) {
                    // the node's shell retries a report until the NMS gets it
                    if let Some(bytes) = copy {
                        let n = self.resends.entry((from, k)).or_insert(0);
                        *n += 1;
                        let attempt = *n;
                        let wait = crate::receiver::backoff(
                            Duration::from_secs(2),
                            Duration::from_secs(16),
                            attempt,
                            &[from as u8, attempt as u8],
                        );
                        let at = self.now + wait;
                        self.push(
                            at,
                            Ev::Resend {
                                from,
                                k,
                                bytes,
                                epoch,
                                attempt,
                            },
                        );
                    }
                    return;
                }
                let to_id = self.ents[to].id;
                if from == 0 {
                    if let Some(m) = self.camps[k].monitor.as_mut() {
                        m.send_failed(self.now, to_id, kind, "connection closed");
                    }
                } else if let Some(c) = self.ents[from].campaigns[k].as_mut() {
                    c.send_failed(self.now, to_id, kind, "connection closed");
                }
                self.after(from);
            }
            Ev::ChunkReq {
                from,
                to,
                bytes,
                epoch,
            } => {
                let req = ChunkRequest::decode(&bytes).expect("valid chunk request");
                let k = self.by_id[&req.campaign];
                if self.ents[to].dead {
                    let at = self.fail_at();
                    self.push(
                        at,
                        Ev::ChunkFailed {
                            from,
                            to,
                            k,
                            index: req.index,
                            epoch,
                        },
                    );
                    return;
                }
                self.next_req += 1;
                let rid = RequestId(self.next_req);
                self.pending_serve.insert((to, rid), (from, epoch, req.clone()));
                let from_id = self.ents[from].id;
                if to == 0 {
                    match self.camps[k].monitor.as_mut() {
                        Some(m) => m.chunk_request(self.now, rid, from_id, &req),
                        None => self.unknown(to, rid, req.index),
                    }
                } else {
                    match self.ents[to].campaigns[k].as_mut() {
                        Some(c) => c.chunk_request(self.now, rid, from_id, &req),
                        None => self.unknown(to, rid, req.index),
                    }
                }
                self.after(to);
            }
            Ev::ChunkResp {
                from,
                to,
                bytes,
                epoch,
            } => {
                if self.ents[to].dead || self.ents[to].epoch != epoch {
                    return;
                }
                let resp = ChunkResponse::decode(&bytes).expect("valid chunk response");
                let k = self.by_id[&resp.campaign];
                self.done_request(to, k, from);
                let from_id = self.ents[from].id;
                if let Some(c) = self.ents[to].campaigns[k].as_mut() {
                    c.chunk_response(self.now, from_id, resp);
                }
                self.after(to);
            }
            Ev::ChunkFailed {
                from,
                to,
                k,
                index,
                epoch,
            } => {
                if self.ents[from].dead || self.ents[from].epoch != epoch {
                    return;
                }
                self.done_request(from, k, to);
                let to_id = self.ents[to].id;
                if let Some(c) = self.ents[from].campaigns[k].as_mut() {
                    c.chunk_failed(self.now, to_id, index, "connection closed");
                }
                self.after(from);
            }
            Ev::Timer { e } => {
                if self.ents[e].timer_at != Some(self.now) || self.ents[e].dead {
                    return;
                }
                self.ents[e].timer_at = None;
                let now = self.now;
                if e == 0 {
                    for c in &mut self.camps {
                        if let Some(m) = c.monitor.as_mut() {
                            m.timeout(now);
                        }
                    }
                } else {
                    for c in self.ents[e].campaigns.iter_mut().flatten() {
                        if c.poll_timeout().is_some_and(|t| t <= now) {
                            c.timeout(now);
                        }
                    }
                }
                self.after(e);
            }
            Ev::Crash { e, down_for } => self.crash(e, down_for),
            Ev::Restart { e } => self.restart(e),
            Ev::Resend {
                from,
                k,
                bytes,
                epoch,
                attempt,
            } => {
                if self.ents[from].dead || self.ents[from].epoch != epoch {
                    return;
                }
                let msg = decode_control(&bytes).expect("valid");
                self.note(format!(
                    "{} resends a report (attempt {attempt})",
                    self.name(from)
                ));
                // counted again as it goes out
                if let Some(n) = self.reports_out.get_mut(&(from, k)) {
                    *n = n.saturating_sub(1);
                }
                self.send_request(from, 0, &msg, Some(k));
            }
            Ev::Start { k } => {
                if self.ents[0].dead {
                    return; // started at the restart
                }
                self.start(k);
            }
        }
    }

    fn start(&mut self, k: usize) {
        self.started[k] = true;
        let c = &mut self.camps[k];
        c.monitor = Some(CampaignMonitor::start(
            self.now,
            c.manifest.clone(),
            c.signed.clone(),
            c.secret.clone(),
            MonitorConfig::default(),
        ));
        self.after(0);
    }

    fn unknown(&mut self, server: usize, req: RequestId, index: u32) {
        self.serve(
            server,
            ServeAction::Answer {
                req,
                index,
                status: ChunkStatus::UnknownCampaign,
            },
        );
    }

    fn done_request(&mut self, node: usize, k: usize, source: usize) {
        if let Some(n) = self.out.get_mut(&(node, k, source)) {
            *n = n.saturating_sub(1);
        }
    }

    fn crash(&mut self, e: usize, down_for: Duration) {
        if self.ents[e].dead {
            return;
        }
        self.note(format!("{} crashes", self.name(e)));
        let ent = &mut self.ents[e];
        ent.dead = true;
        ent.epoch += 1;
        ent.timer_at = None;
        if e > 0 {
            // memory is gone; the disk (chunks, saved offers, what is installed) stays
            for c in &mut ent.campaigns {
                *c = None;
            }
            ent.over.iter_mut().for_each(|o| *o = false);
            ent.relay_done.iter_mut().for_each(|o| *o = false);
            self.acked.retain(|(n, _)| *n != e);
            self.reports_out.retain(|(n, _), _| *n != e);
            self.out.retain(|(n, _, _), _| *n != e);
        }
        // requests this entity was holding: their connections drop
        let held: Vec<(usize, RequestId)> = self
            .pending_serve
            .keys()
            .filter(|(s, _)| *s == e)
            .copied()
            .collect();
        let at = self.fail_at();
        for key in held {
            let (from, epoch, req) = self.pending_serve.remove(&key).expect("listed");
            let k = self.by_id[&req.campaign];
            self.push(
                at,
                Ev::ChunkFailed {
                    from,
                    to: e,
                    k,
                    index: req.index,
                    epoch,
                },
            );
        }
        let at = self.now + down_for;
        self.push(at, Ev::Restart { e });
    }

    fn restart(&mut self, e: usize) {
        self.ents[e].dead = false;
        self.note(format!("{} restarts", self.name(e)));
        if e == 0 {
            // the campaign state was kept (as in the NMS's data directory); campaigns
            // due while it was down start now; offers lost in the crash go out again
            for c in &mut self.camps {
                if let Some(m) = c.monitor.as_mut() {
                    m.restarted();
                }
            }
            for k in 0..self.camps.len() {
                if !self.started[k] && self.queue_has_passed_start(k) {
                    self.start(k);
                }
            }
            self.after(0);
            return;
        }
        // resume every campaign whose offer is saved, as the node does at start
        for k in 0..self.camps.len() {
            let Some(offer) = self.ents[e].saved[k].clone() else {
                continue;
            };
            let from = if offer.path.len() >= 2 {
                offer.path[offer.path.len() - 2]
            } else {
                self.camps[k].manifest.nms
            };
            if let Err(r) = self.admit_and_start(e, k, offer.clone(), from, true) {
                self.note(format!(
                    "{} does not resume campaign {k}: {}",
                    self.name(e),
                    r.detail
                ));
                // as the node does: one that had ended here is dropped; an unfinished one
                // ends failed and reports why (its offer stays saved until it is over)
                if self.ents[e].ended[k] {
                    self.forget(e, k);
                    continue;
                }
                let c = NodeCampaign::resume_refused(
                    self.now,
                    self.ents[e].id,
                    offer,
                    self.camps[k].manifest.clone(),
                    self.cfg.node.clone(),
                    &r.detail,
                );
                self.ents[e].campaigns[k] = Some(c);
            }
        }
        self.after(e);
    }

    fn queue_has_passed_start(&self, k: usize) -> bool {
        let starts = &self.cfg.faults.campaigns;
        starts.get(k).is_none_or(|t| *t <= self.now)
    }

    fn forget(&mut self, e: usize, k: usize) {
        let ent = &mut self.ents[e];
        ent.saved[k] = None;
        ent.disk[k].iter_mut().for_each(|c| *c = None);
    }

    /// Admission and start of campaign `k` on node `e` (an offer, or a resume from disk).
    fn admit_and_start(
        &mut self,
        e: usize,
        k: usize,
        offer: Offer,
        from: NodeId,
        resuming: bool,
    ) -> Result<(), crate::receiver::Refusal> {
        let me = self.ents[e].id;
        let opened = open_offer(offer, from, me)?;
        let trusted = [self.camps[k].manifest.nms];
        let nobody = HashSet::new();
        let ctx = AdmissionContext {
            trusted: &trusted,
            trust_first: false,
            advertised_nms: &nobody,
            unix_now: 2_000,
            installed: self.ents[e].current,
            held: self.ents[e].campaigns[k].is_some(),
            finished: self.ents[e].over[k],
            resuming,
        };
        if admit(&opened, &ctx)? == crate::admission::Admitted::AlreadyHeld {
            return Ok(());
        }
        // the chunks on disk are checked again, as the store does
        let m = &opened.manifest;
        let mut have = ChunkSet::new(m.layout().expect("valid").count());
        for (i, c) in self.ents[e].disk[k].iter().enumerate() {
            if c.as_ref().is_some_and(|d| hash_chunk(d) == m.chunk_hashes.0[i]) {
                have.insert(i as u32);
            }
        }
        self.ents[e].saved[k] = Some(opened.offer.clone());
        let m = opened.manifest.clone();
        let c = NodeCampaign::accept(
            self.now,
            me,
            opened.offer,
            opened.manifest,
            self.cfg.node.clone(),
            have,
        );
        let installed = (m.sequence, m.root);
        let mut c = c;
        if resuming && self.ents[e].current == Some(installed) {
            c.already_installed();
        }
        self.ents[e].campaigns[k] = Some(c);
        Ok(())
    }

    /// The answer of entity `to` to a control request from `from` (about campaign `k`).
    fn answer(&mut self, from: usize, to: usize, msg: &Control, k: Option<usize>) -> Control {
        let from_id = self.ents[from].id;
        let unknown = Control::Error {
            reason: "unknown campaign".into(),
        };
        let Some(k) = k.or_else(|| self.campaign_of(msg)) else {
            return unknown;
        };
        if to == 0 {
            if let Control::AuthRequest { path, root, code, .. } = msg {
                let good = self.code_is_right(k, from, path, root, code);
                self.auth_good.insert((from, k), good);
            }
            return match self.camps[k].monitor.as_mut() {
                Some(m) => m.request(self.now, from_id, msg),
                None => unknown,
            };
        }
        let campaign = self.camps[k].manifest.campaign;
        match msg {
            Control::Offer(offer) => match self.admit_and_start(to, k, (**offer).clone(), from_id, false) {
                Ok(()) => Control::OfferReply {
                    campaign,
                    verdict: crate::wire::Verdict::Accept,
                },
                Err(r) => Control::OfferReply {
                    campaign,
                    verdict: r.verdict(),
                },
            },
            other => match self.ents[to].campaigns[k].as_mut() {
                Some(c) => c.request(self.now, from_id, other),
                None => unknown,
            },
        }
    }

    /// The rolling code of node `e` for campaign `k`, derived here from the secret along
    /// the path (independently of the NMS's check).
    fn code_is_right(&self, k: usize, e: usize, path: &[NodeId], root: &Hash, code: &[u8; 32]) -> bool {
        let c = &self.camps[k];
        let m = &c.manifest;
        if path.last() != Some(&self.ents[e].id) || *root != m.root {
            return false;
        }
        let mut token = c.secret.root_token(&m.campaign);
        for hop in path {
            token = token.child(hop);
        }
        token.auth_code(&m.campaign, root) == *code
    }

    fn serve(&mut self, server: usize, a: ServeAction) {
        let (req, status, payload) = match a {
            ServeAction::SendChunk { req, index, key, .. } => {
                let Some((_, _, r)) = self.pending_serve.get(&(server, req)) else {
                    return;
                };
                let k = self.by_id[&r.campaign];
                let c = &self.camps[k];
                let mut data = if server == 0 {
                    let l = c.manifest.layout().expect("valid");
                    let s = l.offset(index) as usize;
                    c.data[s..s + l.len(index) as usize].to_vec()
                } else {
                    self.ents[server].disk[k][index as usize]
                        .clone()
                        .expect("served chunks are stored")
                };
                key.seal(&c.manifest.campaign, index, &mut data);
                if self.ents[server].corrupt {
                    data[0] ^= 0x40;
                }
                (req, ChunkStatus::Ok, data)
            }
            ServeAction::Answer { req, status, .. } => (req, status, Vec::new()),
        };
        let Some((to, epoch, r)) = self.pending_serve.remove(&(server, req)) else {
            return;
        };
        if self.lost(server, to) {
            let at = self.fail_at();
            let k = self.by_id[&r.campaign];
            self.push(
                at,
                Ev::ChunkFailed {
                    from: to,
                    to: server,
                    k,
                    index: r.index,
                    epoch,
                },
            );
            return;
        }
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
                epoch,
            },
        );
    }

    fn after(&mut self, e: usize) {
        if e == 0 {
            self.drain_monitors();
            return;
        }
        for k in 0..self.camps.len() {
            self.drain_node(e, k);
        }
        let next = self.ents[e]
            .campaigns
            .iter()
            .flatten()
            .filter_map(|c| c.poll_timeout())
            .min();
        self.schedule(e, next);
    }

    fn drain_monitors(&mut self) {
        for k in 0..self.camps.len() {
            while let Some(a) = self.camps[k].monitor.as_mut().and_then(|m| m.poll_action()) {
                match a {
                    MonitorAction::Send { to, msg } => {
                        let to = self.index[&to];
                        self.send_request(0, to, &msg, Some(k));
                    }
                    MonitorAction::Serve(s) => self.serve(0, s),
                    MonitorAction::Note(n) => self.note(format!("nms campaign {k}: {n:?}")),
                }
            }
        }
        let next = self
            .camps
            .iter()
            .filter_map(|c| c.monitor.as_ref()?.poll_timeout())
            .min();
        self.schedule(0, next);
    }

    fn drain_node(&mut self, e: usize, k: usize) {
        while let Some(a) = self.ents[e].campaigns[k].as_mut().and_then(|c| c.poll_action()) {
            match a {
                NodeAction::Send { to, msg } => {
                    if let Control::InstallReport { .. } = msg {
                        self.ents[e].ended[k] = true; // journaled before the report goes out
                    }
                    let to = self.index[&to];
                    self.send_request(e, to, &msg, Some(k));
                }
                NodeAction::RequestChunk { to, req } => {
                    let to = self.index[&to];
                    let n = self.out.entry((e, k, to)).or_insert(0);
                    *n += 1;
                    let epoch = self.ents[e].epoch;
                    if self.ents[to].dead || self.lost(e, to) {
                        let at = self.fail_at();
                        self.push(
                            at,
                            Ev::ChunkFailed {
                                from: e,
                                to,
                                k,
                                index: req.index,
                                epoch,
                            },
                        );
                    } else {
                        let bytes = req.encode();
                        let at = self.transmit(e, to, bytes.len());
                        self.push(
                            at,
                            Ev::ChunkReq {
                                from: e,
                                to,
                                bytes,
                                epoch,
                            },
                        );
                    }
                }
                NodeAction::Store { index, data } => {
                    let now = self.now;
                    let ent = &mut self.ents[e];
                    let full = ent.room == Some(0);
                    if !full {
                        ent.disk[k][index as usize] = Some(data);
                        ent.room = ent.room.map(|r| r - 1);
                    }
                    if let Some(c) = ent.campaigns[k].as_mut() {
                        if full {
                            c.store_failed(now, index, "No space left on device (os error 28)");
                        } else {
                            c.chunk_stored(now, index);
                        }
                    }
                }
                NodeAction::HashFile => {
                    let mut h = blake3::Hasher::new();
                    for c in self.ents[e].disk[k].iter().flatten() {
                        h.update(c);
                    }
                    let root = *h.finalize().as_bytes();
                    let now = self.now;
                    if let Some(c) = self.ents[e].campaigns[k].as_mut() {
                        c.file_hashed(now, root);
                    }
                }
                NodeAction::Install => {
                    let outcome = self.install(e, k);
                    let now = self.now;
                    if let Some(c) = self.ents[e].campaigns[k].as_mut() {
                        c.install_done(now, outcome);
                    }
                }
                NodeAction::Serve(s) => self.serve(e, s),
                NodeAction::Note(crate::receiver::Note::SwitchedSource { .. }) => self.ents[e].switches += 1,
                NodeAction::Note(_) => {}
                NodeAction::RelayDone => {
                    // as the node does: the campaign ends once its reports reached the NMS
                    self.ents[e].relay_done[k] = true;
                    if self.retire(e, k) {
                        return;
                    }
                }
            }
        }
    }

    /// A report of node `e` in campaign `k` reached the NMS; the campaign ends if its
    /// relaying was done.
    fn report_settled(&mut self, e: usize, k: usize) {
        if let Some(n) = self.reports_out.get_mut(&(e, k)) {
            *n = n.saturating_sub(1);
        }
        self.retire(e, k);
    }

    /// As `NodeEndpoint` retires a campaign: once its relaying is done and no report is
    /// on its way to the NMS, it is dropped and its partial removed. Returns whether it was.
    fn retire(&mut self, e: usize, k: usize) -> bool {
        let pending = self.reports_out.get(&(e, k)).is_some_and(|n| *n > 0);
        if !self.ents[e].relay_done[k] || pending {
            return false;
        }
        let Some(c) = self.ents[e].campaigns[k].take() else {
            return false;
        };
        self.ents[e].relay_done[k] = false;
        self.ents[e].faults_seen += c.total_faults();
        self.ents[e].over[k] = true;
        self.forget(e, k);
        self.note(format!("{} is done with campaign {k}", self.name(e)));
        true
    }

    /// The install step of the node's shell: the sequence check and the switch of
    /// `current` in one step, the install command in between.
    fn install(&mut self, e: usize, k: usize) -> InstallOutcome {
        if !self.acked.contains(&(e, k)) {
            self.violation(format!(
                "{} installs campaign {k} without the NMS's acknowledgement of its code",
                self.name(e)
            ));
        }
        let m = &self.camps[k].manifest;
        let (seq, root) = (m.sequence, m.root);
        let outcome = match m.install_check(self.ents[e].current) {
            Err(s) => InstallOutcome::Failed {
                reason: s.to_string(),
            },
            Ok(InstallCheck::AlreadyCurrent) => InstallOutcome::Installed,
            Ok(InstallCheck::Install) if self.ents[e].install_fail => InstallOutcome::Failed {
                reason: "the install command exited with status 1".into(),
            },
            Ok(InstallCheck::Install) => {
                self.ents[e].current = Some((seq, root));
                self.installs[e].push(seq);
                InstallOutcome::Installed
            }
        };
        if k == 0 && outcome == InstallOutcome::Installed {
            let mut h = blake3::Hasher::new();
            for c in self.ents[e].disk[0].iter().flatten() {
                h.update(c);
            }
            self.ents[e].exact = *h.finalize().as_bytes() == self.camps[0].manifest.root;
        }
        self.note(format!("{} install of campaign {k}: {outcome:?}", self.name(e)));
        outcome
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

    /// The invariants that must hold after every event.
    fn check_invariants(&mut self) {
        // 2. never an older sequence made current
        for e in 1..self.ents.len() {
            if self.installs[e].windows(2).any(|w| w[1] < w[0]) {
                self.violation(format!(
                    "{} made an older sequence current: {:?}",
                    self.name(e),
                    self.installs[e]
                ));
                return;
            }
        }
        // 3. at most `window` chunk requests out per node, campaign and source
        let window = self.cfg.node.window;
        let over = self.out.iter().find(|(_, n)| **n > window).map(|(k, n)| (*k, *n));
        if let Some(((e, k, s), n)) = over {
            self.violation(format!(
                "{} has {n} chunk requests out to {} in campaign {k} (window {window})",
                self.name(e),
                self.name(s)
            ));
            return;
        }
        // 4. a final state at the NMS never changes (the operator's resume of a halted
        // campaign, the one exception, is not simulated)
        for k in 0..self.camps.len() {
            let Some(m) = self.camps[k].monitor.as_ref() else {
                continue;
            };
            for e in 1..self.ents.len() {
                let s = &m.nodes()[&self.ents[e].id].status;
                match self.finals.get(&(k, e)) {
                    Some(f) if f != s => {
                        let line = format!(
                            "the NMS's final status of {} in campaign {k} changed from {f:?} to {s:?}",
                            self.name(e)
                        );
                        self.violation(line);
                        return;
                    }
                    None if s.is_final() => {
                        self.finals.insert((k, e), s.clone());
                    }
                    _ => {}
                }
            }
        }
    }

    /// Invariant 5, at the end: every addressee that is up is final at the NMS in every campaign, and
    /// installed at the NMS only if it installed that campaign (or a newer one first).
    fn check_end(&mut self) {
        for k in 0..self.camps.len() {
            let Some(m) = self.camps[k].monitor.as_ref() else {
                self.violation(format!("campaign {k} never started"));
                return;
            };
            let seq = self.camps[k].manifest.sequence;
            let mut bad = Vec::new();
            for e in 1..self.ents.len() {
                let v = &m.nodes()[&self.ents[e].id];
                if self.ents[e].dead && self.cfg.dead.contains(&(e - 1)) {
                    continue; // down for the whole run: see the planning checks
                }
                match &v.status {
                    NodeStatus::Installed => {
                        let cur = self.ents[e].current.map(|c| c.0);
                        if cur.is_none_or(|c| c < seq) {
                            bad.push(format!(
                                "{} installed at the NMS but its current sequence is {cur:?}",
                                self.name(e)
                            ));
                        }
                    }
                    NodeStatus::Failed(r) if r.is_empty() => {
                        bad.push(format!("{} failed without a reason", self.name(e)))
                    }
                    NodeStatus::Failed(_) => {}
                    other => bad.push(format!("{} is {other:?}", self.name(e))),
                }
            }
            if !bad.is_empty() {
                let (i, f, t) = m.counts();
                self.violation(format!(
                    "campaign {k} not over at the end ({i} installed, {f} failed of {t}): {}",
                    bad.join("; ")
                ));
                return;
            }
        }
    }

    fn report(&self) -> SimReport {
        let first = &self.camps[0];
        let empty = HashMap::new();
        let nodes = first.monitor.as_ref().map_or(&empty, |m| m.nodes());
        let status = |e: &Entity| nodes.get(&e.id).map(|v| (v.status.clone(), v.finished_at));
        let installed_at = self.ents[1..]
            .iter()
            .map(|e| match status(e) {
                Some((NodeStatus::Installed, t)) => t,
                _ => None,
            })
            .collect();
        let exact_copies = self.ents[1..].iter().filter(|e| e.exact).count();
        let faults = self.ents[1..]
            .iter()
            .map(|e| {
                e.faults_seen
                    + e.campaigns
                        .iter()
                        .flatten()
                        .map(|c| c.total_faults())
                        .sum::<u32>()
            })
            .sum();
        SimReport {
            seed: self.cfg.seed,
            installed_at,
            done_at: first.monitor.as_ref().and_then(|m| m.finished_at()),
            exact_copies,
            nms_copies: self.nms_bytes as f64 / first.data.len().max(1) as f64,
            faults_detected: faults,
            source_switches: self.ents.iter().map(|e| e.switches).sum(),
            failures: self.ents[1..]
                .iter()
                .map(|e| match status(e) {
                    Some((NodeStatus::Failed(r), _)) => Some(r),
                    _ => None,
                })
                .collect(),
            t1: Duration::from_nanos(first.data.len() as u64 * 8 * 1_000_000_000 / self.cfg.link_bps),
            events: self.processed,
            end: self.now,
            outcomes: self
                .camps
                .iter()
                .map(|c| c.monitor.as_ref().map_or((0, 0, self.cfg.nodes), |m| m.counts()))
                .collect(),
            violations: self.violations.clone(),
            trace: self.trace.clone(),
        }
    }
}
