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
//!    (installed, or failed with a reason, or halted with a reason once a newer version of
//!    the package started: the NMS supersedes an older campaign), and installed at the
//!    NMS only if it is;
//! 6. virtual time moves on: at most 100,000 events happen at one instant (a livelock
//!    otherwise hangs the run);
//! 7. each node endpoint's own `check_invariants` holds after each of its inputs;
//! 8. a node whose owner's policy gates relaying serves no chunk while its gate is closed.
//!
//! Some seeds gate a few nodes ([`SimConfig::gated`]: policy `ac` on a low battery, some
//! with mains power back later): the NMS does not know at the first drop, so they are
//! planned as relays, hold their parts and hand them back; later drops are planned with
//! what their progress reports said.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use crate::admission::open_offer;
use crate::chunk::{ChunkSet, Hash, PackageHasher, hash_chunk};
use crate::endpoint::nms::{DropId, NmsAction, NmsConfig, NmsEndpoint, NmsEvent, NmsInput, OutboundId};
use crate::endpoint::node::{
    Action, Config as EndpointConfig, Event, Input, InstalledPackage, JournalEntry, NodeEndpoint, OutId,
    ReplyId, SavedCampaign, Start, fold_journal,
};
use crate::gate::{Policy, Readings};
use crate::id::{Keypair, NodeId, fake_id, keypair_from_seed};
use crate::keys::CampaignSecret;
use crate::manifest::{
    HashList, InstallCheck, MANIFEST_FORMAT, Manifest, PlanParams, RelayPolicy, RelayWhen, SignedManifest,
    Transfer,
};
use crate::monitor::{CampaignMonitor, MonitorConfig, NodeStatus};
use crate::receiver::{NodeConfig, Note};
use crate::wire::{
    ChunkRequest, ChunkResponse, ChunkStatus, Control, ControlKind, InstallOutcome, Offer, PROTOCOL_VERSION,
    decode_control, encode_control,
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
    /// Addressees whose owner lets them relay only on AC power (`--relay-policy ac`),
    /// running on a low battery until the time given (`None`: all run long): their gate
    /// is closed until then. The NMS does not know (the simulated manifests are signed
    /// before any advert), so some are planned as relays.
    pub gated: Vec<(usize, Option<Duration>)>,
    /// The manifests' grace period: how long a gated relay holds its part.
    pub grace_secs: u32,
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
            gated: Vec::new(),
            grace_secs: RelayPolicy::default().grace_secs,
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
        // drawn last, so that the draws above stay those of earlier versions
        let fanout = r.u8(1..=3);
        let transfer = if r.bool() {
            Transfer::CutThrough
        } else {
            Transfer::StoreAndForward
        };
        let mut gated = Vec::new();
        if r.u8(..3) == 0 {
            for _ in 0..r.usize(1..=3) {
                if let Some(i) = pick(&mut r) {
                    let until = r.bool().then(|| at(&mut r) * 2);
                    gated.push((i, until));
                }
            }
        }
        let grace_secs = [2, 10, 60][r.usize(..3)];
        SimConfig {
            nodes,
            fanout,
            transfer,
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
            gated,
            grace_secs,
        }
    }

    /// One line describing the run.
    pub fn describe(&self) -> String {
        let f = &self.faults;
        format!(
            "{} nodes, fanout {}, {:?}, {} bytes in {}-byte chunks, {} Mbit/s, {:?} latency; {} campaign(s); \
             loss on {} links, jitter on {}, crashes {:?}, NMS crash {:?}, install failures {:?}, disk room {:?}, dead {:?}, corrupt {:?}, \
             gated (until) {:?} with grace {} s",
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
            self.gated,
            self.grace_secs,
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
    /// Per addressee: chunks it served to others (all campaigns).
    pub served: Vec<u64>,
    /// Per addressee: (campaign, source) of every source that sent it a chunk, sources
    /// numbered as entities (0 = the NMS, `i + 1` = addressee `i`).
    pub fed_by: Vec<BTreeSet<(usize, usize)>>,
    /// Hand-backs of gated relays the NMS took.
    pub handed_back: usize,
    /// Whether the last drop the NMS planned put every gated addressee at a leaf.
    pub leaves_gated_in_last_plan: Option<bool>,
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

/// Unix seconds at virtual time 0 (the manifests are valid from 1,000 to 1,000,000).
const UNIX_ORIGIN: u64 = 2_000;
/// The package every campaign of a run installs.
const PACKAGE: &str = "simulated";
/// Events at one virtual instant beyond which the run counts as a livelock.
const MAX_EVENTS_AT_ONCE: u64 = 100_000;
/// The reason of every dropped connection.
const DROPPED: &str = "connection closed";

#[derive(Debug)]
enum Ev {
    /// A control request from `from` to `to`. `id`: the requester's id for it (a node
    /// endpoint's `OutId` or the NMS endpoint's `OutboundId`); `epoch`: the requester's run
    /// when it sent it (an answer to an earlier run is dropped).
    Request {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
        id: u64,
        epoch: u32,
    },
    /// The answer of `from` to request `id` of `to`.
    Answer {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
        id: u64,
        epoch: u32,
    },
    /// Control request `id` of `from` to `to` failed: its connection dropped.
    ControlFailed {
        from: usize,
        to: usize,
        id: u64,
        epoch: u32,
        kind: ControlKind,
    },
    /// A chunk request of campaign `k`.
    ChunkReq {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
        id: u64,
        k: usize,
        epoch: u32,
    },
    /// The answer of `from` to chunk request `id` of `to`.
    ChunkResp {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
        id: u64,
        k: usize,
        epoch: u32,
    },
    /// Chunk request `id` of `from` to `to` failed.
    ChunkFailed {
        from: usize,
        to: usize,
        id: u64,
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
    /// Campaign `k`'s file is dropped at the NMS.
    Start {
        k: usize,
    },
    /// A gated addressee's mains power comes back (its relay gate opens).
    Power {
        e: usize,
    },
}

/// One campaign of the package: what the NMS's shell prepares from the dropped file.
struct Camp {
    manifest: Manifest,
    signed: SignedManifest,
    secret: CampaignSecret,
    data: Vec<u8>,
}

/// What a node keeps across a crash, as its data directory does.
#[derive(Debug, Clone, Default)]
struct Disk {
    /// Per campaign, its working area (`partial/<campaign>`): the offer saved at
    /// [`Action::Prepare`] and the chunks written since.
    offers: Vec<Option<Offer>>,
    chunks: Vec<Vec<Option<Vec<u8>>>>,
    /// The journal's lines, oldest first.
    journal: Vec<JournalEntry>,
    /// NMS ids pinned by trust on first use.
    pins: Vec<NodeId>,
    /// The package's current version (sequence, root) and the versions on disk.
    current: Option<(u64, Hash)>,
    versions: BTreeSet<u64>,
}

struct Entity {
    id: NodeId,
    /// Incremented at each crash: answers to an earlier run are dropped.
    epoch: u32,
    /// A node's endpoint while it runs (the NMS's is [`Sim::nms`]); dropped in a crash.
    ep: Option<NodeEndpoint>,
    disk: Disk,
    up_free: Duration,
    down_free: Duration,
    timer_at: Option<Duration>,
    /// Crashed, or dead for the whole run.
    down: bool,
    corrupt: bool,
    install_fail: bool,
    /// Chunk writes left before the disk is full (`None`: never full).
    room: Option<usize>,
    switches: u32,
    faults_seen: u32,
    /// The first campaign's package, as installed, equals the package.
    exact: bool,
    /// Chunks it served (all campaigns).
    served: u64,
    /// (campaign, entity) of every source that sent it a good chunk.
    fed_by: BTreeSet<(usize, usize)>,
}

/// A request an entity holds until its endpoint answers it.
#[derive(Debug, Clone, Copy)]
struct Asked {
    /// The requester, its run, and its id for the request.
    from: usize,
    epoch: u32,
    id: u64,
    kind: ControlKind,
}

/// A chunk request an entity holds until its endpoint answers it.
#[derive(Debug, Clone, Copy)]
struct AskedChunk {
    from: usize,
    epoch: u32,
    id: u64,
    k: usize,
    index: u32,
}

struct Sim {
    /// The NMS's signing key (a drop is signed again in the order the NMS planned).
    nms_key: Keypair,
    /// Hand-backs the NMS reported.
    handed_back: usize,
    /// See [`SimReport::leaves_gated_in_last_plan`].
    leaves_gated: Option<bool>,
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
    /// The NMS: its campaign state survives its crashes (as in its data directory).
    nms: NmsEndpoint,
    /// The handles a node's shell gives requests it must answer.
    next_reply: u64,
    /// (server, its handle) -> the control request it has to answer.
    held_control: HashMap<(usize, u64), Asked>,
    /// (server, its handle) -> the chunk request it has to answer.
    held_chunk: HashMap<(usize, u64), AskedChunk>,
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
    violations: Vec<String>,
    trace: Vec<String>,
}

/// Runs one simulated campaign (or several, see [`Faults::campaigns`]).
pub fn run(cfg: &SimConfig) -> SimReport {
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let nms_key = keypair_from_seed(cfg.seed.wrapping_mul(31).wrapping_add(7));
    let nms_id = NodeId::of(&nms_key);
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
            nms: nms_id,
            name: PACKAGE.into(),
            version: format!("{}", k + 1),
            file: format!("{PACKAGE}-{}.bin", k + 1),
            sequence: k as u64 + 1,
            size,
            chunk_size: cfg.chunk_size,
            chunk_hashes: HashList(hashes),
            root,
            created_at: 1_000,
            expires_at: 1_000_000,
            relay: RelayPolicy {
                grace_secs: cfg.grace_secs,
                ..RelayPolicy::default()
            },
            plan: PlanParams {
                fanout: crate::plan::fanout_for(cfg.nodes, cfg.fanout),
                transfer: cfg.transfer,
                leaves: 0,
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
        });
    }
    let counts: Vec<usize> = camps
        .iter()
        .map(|c| c.manifest.layout().expect("valid").count() as usize)
        .collect();
    let nc = camps.len();
    let mut ents = Vec::new();
    for (i, id) in std::iter::once(nms_id)
        .chain(addressees.iter().copied())
        .enumerate()
    {
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
        let disk = Disk {
            offers: vec![None; nc],
            chunks: counts
                .iter()
                .map(|&c| if node { vec![None; c] } else { Vec::new() })
                .collect(),
            ..Disk::default()
        };
        ents.push(Entity {
            id,
            epoch: 0,
            ep: None,
            disk,
            up_free: Duration::ZERO,
            down_free: Duration::ZERO,
            timer_at: None,
            down: node && cfg.dead.contains(&a),
            corrupt: node && cfg.corrupt.contains(&a),
            install_fail: node && cfg.faults.install_fail.contains(&a),
            room,
            switches: 0,
            faults_seen: 0,
            exact: false,
            served: 0,
            fed_by: BTreeSet::new(),
        });
    }
    let index = ents.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
    let by_id = camps
        .iter()
        .enumerate()
        .map(|(k, c)| (c.manifest.campaign, k))
        .collect();
    // every addressee is a static peer of the NMS; a drop becomes a campaign at once
    let mut nms = NmsEndpoint::new(
        Duration::ZERO,
        NmsConfig {
            min_nodes: 1,
            settle: Duration::ZERO,
            discovery_timeout: Duration::from_secs(60),
            tags: Vec::new(),
            protocol_version: PROTOCOL_VERSION,
            monitor: MonitorConfig::default(),
            halt_after: None,
            unix_origin: UNIX_ORIGIN,
            fanout: cfg.fanout,
        },
    );
    for id in &addressees {
        nms.handle(Duration::ZERO, NmsInput::StaticPeer { id: *id });
    }
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
        nms,
        next_reply: 0,
        held_control: HashMap::new(),
        held_chunk: HashMap::new(),
        nms_bytes: 0,
        processed: 0,
        handed_back: 0,
        leaves_gated: None,
        nms_key,
        started: vec![false; nc],
        acked: HashSet::new(),
        auth_good: HashMap::new(),
        out: HashMap::new(),
        reported: HashMap::new(),
        finals: HashMap::new(),
        installs: vec![Vec::new(); n_ents],
        violations: Vec::new(),
        trace: Vec::new(),
    };
    sim.after(0);
    for e in 1..n_ents {
        if !sim.ents[e].down {
            sim.boot(e);
        }
    }
    for (k, at) in starts.iter().enumerate() {
        sim.push(*at, Ev::Start { k });
    }
    for (a, until) in &cfg.gated {
        if let (true, Some(t)) = (*a < cfg.nodes, until) {
            sim.push(*t, Ev::Power { e: a + 1 });
        }
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
    let mut at_once = 0u64;
    while sim.violations.is_empty()
        && let Some(Reverse((t, seq))) = sim.queue.pop()
    {
        if t > cfg.max_time || sim.all_done() {
            break;
        }
        // 6. time moves on: a livelock (e.g. a timer due again and again at the same
        // instant) would otherwise hang the run
        at_once = if t == sim.now { at_once + 1 } else { 0 };
        if at_once > MAX_EVENTS_AT_ONCE {
            sim.violation(format!(
                "livelock: more than {MAX_EVENTS_AT_ONCE} events at {t:?} without time moving on"
            ));
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
        if sim.violations.is_empty() {
            sim.check_invariants();
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
            && self.camps.iter().all(|c| {
                self.nms
                    .campaign(&c.manifest.campaign)
                    .is_some_and(|m| m.is_done())
            })
    }

    fn monitor(&self, k: usize) -> Option<&CampaignMonitor> {
        self.nms.campaign(&self.camps[k].manifest.campaign)
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

    /// A short name for a peer or campaign id in the trace.
    fn who(&self, id: &NodeId) -> String {
        self.index
            .get(id)
            .map_or_else(|| id.to_string(), |e| self.name(*e))
    }

    fn describe(&self, ev: &Ev) -> String {
        let n = |e: &usize| self.name(*e);
        match ev {
            Ev::Request { from, to, bytes, .. } | Ev::Answer { from, to, bytes, .. } => {
                let kind = decode_control(bytes)
                    .map(|m| format!("{:?}", m.kind()))
                    .unwrap_or_default();
                let what = if matches!(ev, Ev::Request { .. }) {
                    "request"
                } else {
                    "answer"
                };
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
            Ev::Start { k } => format!("campaign {k} (sequence {}) dropped at the NMS", k + 1),
            Ev::Power { e } => format!("{}: AC power back", n(e)),
        }
    }

    /// True if a message over the links of `a` and `b` is lost.
    fn lost(&mut self, a: usize, b: usize) -> bool {
        let l = |e: usize| self.cfg.faults.loss.get(e).copied().unwrap_or(0.0);
        let p = 1.0 - (1.0 - l(a)) * (1.0 - l(b));
        p > 0.0 && self.rng.f64() < p
    }

    /// When a dropped connection is noticed.
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

    /// Feeds an input to node `e`'s endpoint, if it runs.
    fn feed(&mut self, e: usize, input: Input) {
        let now = self.now;
        if let Some(ep) = self.ents[e].ep.as_mut() {
            ep.handle(now, input);
        }
    }

    /// Entity `from` sends control request `id` to `to`.
    fn send_control(&mut self, from: usize, to: usize, id: u64, msg: &Control) {
        let epoch = self.ents[from].epoch;
        let kind = msg.kind();
        if from > 0
            && let Control::InstallReport { campaign, outcome } = msg
            && let Some(&k) = self.by_id.get(campaign)
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
        if self.ents[to].down || self.lost(from, to) {
            let at = self.fail_at();
            self.push(
                at,
                Ev::ControlFailed {
                    from,
                    to,
                    id,
                    epoch,
                    kind,
                },
            );
            return;
        }
        let bytes = encode_control(msg);
        let at = self.transmit(from, to, bytes.len());
        self.push(
            at,
            Ev::Request {
                from,
                to,
                bytes,
                id,
                epoch,
            },
        );
    }

    /// Entity `server` answers the control request it holds as `handle`.
    fn reply(&mut self, server: usize, handle: u64, msg: Control) {
        let Some(a) = self.held_control.remove(&(server, handle)) else {
            return;
        };
        // the answer travels back unless the connection drops
        if self.lost(server, a.from) {
            let at = self.fail_at();
            self.push(
                at,
                Ev::ControlFailed {
                    from: a.from,
                    to: server,
                    id: a.id,
                    epoch: a.epoch,
                    kind: a.kind,
                },
            );
            return;
        }
        let bytes = encode_control(&msg);
        let at = self.transmit(server, a.from, bytes.len());
        self.push(
            at,
            Ev::Answer {
                from: server,
                to: a.from,
                bytes,
                id: a.id,
                epoch: a.epoch,
            },
        );
    }

    /// Node `e` sends chunk request `id` to `to`.
    fn send_chunk_request(&mut self, e: usize, to: usize, id: u64, req: ChunkRequest) {
        let Some(&k) = self.by_id.get(&req.campaign) else {
            return;
        };
        *self.out.entry((e, k, to)).or_insert(0) += 1;
        let epoch = self.ents[e].epoch;
        if self.ents[to].down || self.lost(e, to) {
            let at = self.fail_at();
            self.push(
                at,
                Ev::ChunkFailed {
                    from: e,
                    to,
                    id,
                    k,
                    index: req.index,
                    epoch,
                },
            );
            return;
        }
        let bytes = req.encode();
        let at = self.transmit(e, to, bytes.len());
        self.push(
            at,
            Ev::ChunkReq {
                from: e,
                to,
                bytes,
                id,
                k,
                epoch,
            },
        );
    }

    /// Entity `server` answers the chunk request it holds as `handle`.
    fn chunk_answer(&mut self, server: usize, handle: u64, resp: ChunkResponse) {
        let Some(a) = self.held_chunk.remove(&(server, handle)) else {
            return;
        };
        if self.lost(server, a.from) {
            let at = self.fail_at();
            self.push(
                at,
                Ev::ChunkFailed {
                    from: a.from,
                    to: server,
                    id: a.id,
                    k: a.k,
                    index: a.index,
                    epoch: a.epoch,
                },
            );
            return;
        }
        let bytes = resp.encode();
        let at = self.transmit(server, a.from, bytes.len());
        self.push(
            at,
            Ev::ChunkResp {
                from: server,
                to: a.from,
                bytes,
                id: a.id,
                k: a.k,
                epoch: a.epoch,
            },
        );
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Request {
                from,
                to,
                bytes,
                id,
                epoch,
            } => {
                let msg = decode_control(&bytes).expect("simulated peers send valid messages");
                let kind = msg.kind();
                if self.ents[to].down {
                    let at = self.fail_at();
                    self.push(
                        at,
                        Ev::ControlFailed {
                            from,
                            to,
                            id,
                            epoch,
                            kind,
                        },
                    );
                    return;
                }
                let asked = Asked {
                    from,
                    epoch,
                    id,
                    kind,
                };
                let from_id = self.ents[from].id;
                if to == 0 {
                    if let Control::AuthRequest {
                        campaign,
                        path,
                        root,
                        code,
                    } = &msg
                        && let Some(&k) = self.by_id.get(campaign)
                    {
                        let good = self.code_is_right(k, from, path, root, code);
                        self.auth_good.insert((from, k), good);
                    }
                    let input = NmsInput::ControlRequest { from: from_id, msg };
                    if let Some(req) = self.nms.handle(now, input) {
                        self.held_control.insert((0, req.0), asked);
                    }
                } else {
                    self.next_reply += 1;
                    let reply = self.next_reply;
                    self.held_control.insert((to, reply), asked);
                    self.feed(
                        to,
                        Input::ControlRequest {
                            from: from_id,
                            reply: ReplyId(reply),
                            msg,
                        },
                    );
                }
                self.after(to);
            }
            Ev::Answer {
                from,
                to,
                bytes,
                id,
                epoch,
            } => {
                if self.ents[to].down || self.ents[to].epoch != epoch {
                    return;
                }
                let msg = decode_control(&bytes).expect("simulated peers send valid messages");
                if from == 0
                    && let Control::AuthReply {
                        campaign, ok: true, ..
                    } = &msg
                    && let Some(&k) = self.by_id.get(campaign)
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
                    self.nms.handle(
                        now,
                        NmsInput::ControlResponse {
                            id: OutboundId(id),
                            msg,
                        },
                    );
                } else {
                    self.feed(to, Input::ControlResponse { id: OutId(id), msg });
                }
                self.after(to);
            }
            Ev::ControlFailed { from, id, epoch, .. } => {
                if self.ents[from].down || self.ents[from].epoch != epoch {
                    return;
                }
                let reason = DROPPED.to_string();
                if from == 0 {
                    self.nms.handle(
                        now,
                        NmsInput::SendFailed {
                            id: OutboundId(id),
                            reason,
                        },
                    );
                } else {
                    self.feed(
                        from,
                        Input::SendFailed {
                            id: OutId(id),
                            reason,
                        },
                    );
                }
                self.after(from);
            }
            Ev::ChunkReq {
                from,
                to,
                bytes,
                id,
                k,
                epoch,
            } => {
                let req = ChunkRequest::decode(&bytes).expect("valid chunk request");
                let asked = AskedChunk {
                    from,
                    epoch,
                    id,
                    k,
                    index: req.index,
                };
                if self.ents[to].down {
                    let at = self.fail_at();
                    self.push(
                        at,
                        Ev::ChunkFailed {
                            from,
                            to,
                            id,
                            k,
                            index: req.index,
                            epoch,
                        },
                    );
                    return;
                }
                let from_id = self.ents[from].id;
                if to == 0 {
                    let input = NmsInput::ChunkRequest {
                        from: from_id,
                        request: req,
                    };
                    if let Some(r) = self.nms.handle(now, input) {
                        self.held_chunk.insert((0, r.0), asked);
                    }
                } else {
                    self.next_reply += 1;
                    let reply = self.next_reply;
                    self.held_chunk.insert((to, reply), asked);
                    self.feed(
                        to,
                        Input::ChunkRequest {
                            from: from_id,
                            reply: ReplyId(reply),
                            req,
                        },
                    );
                }
                self.after(to);
            }
            Ev::ChunkResp {
                from,
                to,
                bytes,
                id,
                k,
                epoch,
            } => {
                if self.ents[to].down || self.ents[to].epoch != epoch {
                    return;
                }
                self.done_request(to, k, from);
                let resp = ChunkResponse::decode(&bytes).expect("valid chunk response");
                if resp.status == ChunkStatus::Ok {
                    self.ents[to].fed_by.insert((k, from));
                }
                self.feed(to, Input::ChunkResponse { id: OutId(id), resp });
                self.after(to);
            }
            Ev::ChunkFailed {
                from,
                to,
                id,
                k,
                epoch,
                ..
            } => {
                if self.ents[from].down || self.ents[from].epoch != epoch {
                    return;
                }
                self.done_request(from, k, to);
                self.feed(
                    from,
                    Input::ChunkFailed {
                        id: OutId(id),
                        reason: DROPPED.to_string(),
                    },
                );
                self.after(from);
            }
            Ev::Timer { e } => {
                if self.ents[e].timer_at != Some(now) || self.ents[e].down {
                    return;
                }
                self.ents[e].timer_at = None;
                if e == 0 {
                    self.nms.handle(now, NmsInput::Timeout);
                } else if let Some(ep) = self.ents[e].ep.as_mut() {
                    ep.handle_timeout(now);
                }
                self.after(e);
            }
            Ev::Crash { e, down_for } => self.crash(e, down_for),
            Ev::Restart { e } => self.restart(e),
            Ev::Power { e } => {
                if !self.ents[e].down {
                    let r = self.readings(e);
                    self.feed(e, Input::Readings(r));
                    self.after(e);
                }
            }
            Ev::Start { k } => {
                if self.ents[0].down {
                    return; // dropped at the restart
                }
                self.start(k);
            }
        }
    }

    /// Campaign `k`'s file is dropped at the NMS (prepared in [`Sim::act_nms`]).
    fn start(&mut self, k: usize) {
        self.started[k] = true;
        let input = NmsInput::DropReady {
            drop_id: DropId(k as u64),
            name: self.camps[k].manifest.file.clone(),
        };
        self.nms.handle(self.now, input);
        self.after(0);
    }

    fn done_request(&mut self, node: usize, k: usize, source: usize) {
        if let Some(n) = self.out.get_mut(&(node, k, source)) {
            *n = n.saturating_sub(1);
        }
    }

    fn crash(&mut self, e: usize, down_for: Duration) {
        if self.ents[e].down {
            return;
        }
        self.note(format!("{} crashes", self.name(e)));
        let ent = &mut self.ents[e];
        ent.down = true;
        ent.epoch += 1;
        ent.timer_at = None;
        if e > 0 {
            // memory is gone (the endpoint and its machines); the disk stays
            ent.ep = None;
            self.acked.retain(|(n, _)| *n != e);
            self.out.retain(|(n, _, _), _| *n != e);
        }
        // requests this entity was holding: their connections drop
        let at = self.fail_at();
        let mut held: Vec<(usize, u64)> = self
            .held_control
            .keys()
            .filter(|(s, _)| *s == e)
            .copied()
            .collect();
        held.sort_unstable();
        for key in held {
            let a = self.held_control.remove(&key).expect("listed");
            self.push(
                at,
                Ev::ControlFailed {
                    from: a.from,
                    to: e,
                    id: a.id,
                    epoch: a.epoch,
                    kind: a.kind,
                },
            );
        }
        let mut held: Vec<(usize, u64)> = self.held_chunk.keys().filter(|(s, _)| *s == e).copied().collect();
        held.sort_unstable();
        for key in held {
            let a = self.held_chunk.remove(&key).expect("listed");
            self.push(
                at,
                Ev::ChunkFailed {
                    from: a.from,
                    to: e,
                    id: a.id,
                    k: a.k,
                    index: a.index,
                    epoch: a.epoch,
                },
            );
        }
        let at = self.now + down_for;
        self.push(at, Ev::Restart { e });
    }

    fn restart(&mut self, e: usize) {
        self.ents[e].down = false;
        self.note(format!("{} restarts", self.name(e)));
        if e > 0 {
            self.boot(e);
            return;
        }
        // the campaign state was kept (as in the NMS's data directory), requests in
        // flight are lost; files dropped while it was down are picked up now
        self.nms.restarted(self.now);
        for k in 0..self.camps.len() {
            let due = self.cfg.faults.campaigns.get(k).is_none_or(|t| *t <= self.now);
            if !self.started[k] && due {
                self.start(k);
            }
        }
        self.after(0);
    }

    /// Starts node `e` as `node/src/agent.rs` does: what its data directory holds (trusted
    /// NMS ids, installed versions, the journal, the saved offers) builds a new endpoint,
    /// and every peer can be dialled (static peers).
    fn boot(&mut self, e: usize) {
        let now = self.now;
        let nms = self.ents[0].id;
        let d = &mut self.ents[e].disk;
        d.journal = fold_journal(&d.journal); // as the journal is compacted at open
        let mut trusted = vec![nms];
        for p in &d.pins {
            if !trusted.contains(p) {
                trusted.push(*p);
            }
        }
        let installed = if d.current.is_some() || !d.versions.is_empty() {
            vec![InstalledPackage {
                name: PACKAGE.into(),
                current: d.current,
                sequences: d.versions.iter().copied().collect(),
            }]
        } else {
            Vec::new()
        };
        let saved = d
            .offers
            .iter()
            .enumerate()
            .filter_map(|(k, o)| {
                Some(SavedCampaign {
                    campaign: self.camps[k].manifest.campaign,
                    offer: Ok(o.clone()?),
                })
            })
            .collect();
        let start = Start {
            trusted,
            installed,
            journal: d.journal.clone(),
            saved,
        };
        let gated = self.gated_until(e).is_some();
        let cfg = EndpointConfig {
            campaign: self.cfg.node.clone(),
            unix_origin: UNIX_ORIGIN,
            relay_policy: gated.then_some(Policy {
                when: RelayWhen::Ac,
                window: None,
            }),
            ..EndpointConfig::default()
        };
        let me = self.ents[e].id;
        let mut ep = NodeEndpoint::new(now, me, cfg, start);
        if gated {
            ep.handle(now, Input::Readings(self.readings(e)));
        }
        for (i, peer) in self.ents.iter().enumerate() {
            if i != e {
                ep.handle(now, Input::PeerAddressKnown(peer.id));
            }
        }
        self.ents[e].ep = Some(ep);
        self.after(e);
    }

    /// When gated entity `e`'s power comes back (`Some(None)`: never), `None` if it is not
    /// gated.
    fn gated_until(&self, e: usize) -> Option<Option<Duration>> {
        let a = e.checked_sub(1)?;
        self.cfg.gated.iter().find(|(i, _)| *i == a).map(|(_, t)| *t)
    }

    /// What gated entity `e`'s probe reads now: a low battery, or mains power once back.
    fn readings(&self, e: usize) -> Readings {
        let on_ac = self.gated_until(e).flatten().is_some_and(|t| self.now >= t);
        Readings {
            ac_online: Some(on_ac),
            battery_percent: Some(10.0),
            ..Readings::default()
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

    /// Carries out entity `e`'s actions and notes its events until both are drained, then
    /// sleeps until its endpoint's next timeout.
    fn after(&mut self, e: usize) {
        if e == 0 {
            loop {
                if let Some(a) = self.nms.poll_action() {
                    self.act_nms(a);
                } else if let Some(ev) = self.nms.poll_event() {
                    if matches!(ev, NmsEvent::RelayHandedBack { .. }) {
                        self.handed_back += 1;
                    }
                    if self.cfg.trace && !matches!(ev, NmsEvent::NodeProgress { .. }) {
                        self.note(format!("nms: {ev:?}"));
                    }
                } else {
                    break;
                }
            }
            let next = self.nms.poll_timeout();
            self.schedule(0, next);
            return;
        }
        loop {
            let Some(ep) = self.ents[e].ep.as_mut() else {
                return;
            };
            if let Some(a) = ep.poll_action() {
                self.act_node(e, a);
            } else if let Some(ev) = ep.poll_event() {
                self.node_event(e, ev);
            } else {
                break;
            }
        }
        let Some(ep) = self.ents[e].ep.as_ref() else {
            return;
        };
        // the endpoint's own invariants (it panics on a broken one)
        let broken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ep.check_invariants())).err();
        let next = ep.poll_timeout();
        if let Some(p) = broken {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            self.violation(format!("{}'s endpoint broke an invariant: {what}", self.name(e)));
        }
        self.schedule(e, next);
    }

    /// The NMS's shell: prepares dropped files, sends, answers, serves the package.
    fn act_nms(&mut self, a: NmsAction) {
        match a {
            NmsAction::Prepare {
                drop_id,
                addressees,
                leaves,
            } => {
                let k = drop_id.0 as usize;
                let mut planned = self.camps[k].manifest.addressees.clone();
                planned.sort();
                let mut picked = addressees.clone();
                picked.sort();
                if picked == planned {
                    // signed in the NMS's order (nodes that do not relay at the leaves)
                    let fanout = self.camps[k].manifest.plan.fanout;
                    let n = addressees.len();
                    let leaf: HashSet<NodeId> = addressees[n - (leaves as usize).min(n)..]
                        .iter()
                        .copied()
                        .collect();
                    let tree = crate::plan::Tree::plan(&addressees, fanout, &|x| leaf.contains(x));
                    let relaying: HashSet<NodeId> = tree.parent.values().flatten().copied().collect();
                    let gated_leaves = self
                        .cfg
                        .gated
                        .iter()
                        .filter_map(|(a, _)| self.ents.get(a + 1))
                        .all(|e| !relaying.contains(&e.id));
                    self.leaves_gated = Some(gated_leaves);
                    let c = &mut self.camps[k];
                    c.manifest.addressees = addressees;
                    c.manifest.plan.leaves = leaves;
                    c.signed = SignedManifest::sign(&c.manifest, &self.nms_key)
                        .expect("simulated manifest is valid");
                } else {
                    self.violation(format!(
                        "the NMS picked {} addressees for campaign {k}, not the fleet of {}",
                        addressees.len(),
                        planned.len()
                    ));
                }
                let c = &self.camps[k];
                let input = NmsInput::Prepared {
                    drop_id,
                    manifest: Box::new(c.manifest.clone()),
                    signed: c.signed.clone(),
                    secret: c.secret.clone(),
                };
                self.nms.handle(self.now, input);
            }
            NmsAction::FollowUp { of, addressees, .. } => {
                // every node is an addressee of every campaign here: nobody is late
                self.violation(format!(
                    "the NMS asked for a follow-up of campaign {} for {} node(s), all addressees already",
                    of.iter().take(4).map(|b| format!("{b:02x}")).collect::<String>(),
                    addressees.len()
                ));
            }
            NmsAction::SendControl { id, to, msg } => {
                let to = self.index[&to];
                self.send_control(0, to, id.0, &msg);
            }
            NmsAction::AnswerControl { req, msg } => self.reply(0, req.0, msg),
            NmsAction::SendChunk {
                req,
                campaign,
                index,
                key,
            } => {
                let Some(&k) = self.by_id.get(&campaign) else {
                    return;
                };
                let c = &self.camps[k];
                let l = c.manifest.layout().expect("valid");
                let s = l.offset(index) as usize;
                let mut data = c.data[s..s + l.len(index) as usize].to_vec();
                key.seal(&campaign, index, &mut data);
                let resp = ChunkResponse {
                    campaign,
                    index,
                    status: ChunkStatus::Ok,
                    data,
                };
                self.chunk_answer(0, req.0, resp);
            }
            NmsAction::AnswerChunk { req, response } => self.chunk_answer(0, req.0, response),
            NmsAction::CampaignFinished { summary } => {
                let k = self.by_id.get(&summary.campaign).copied();
                self.note(format!(
                    "nms: campaign {k:?} finished, {} of {} installed",
                    summary.installed,
                    summary.nodes.len()
                ));
            }
        }
    }

    /// Node `e`'s shell: the links, its disk, its install command.
    fn act_node(&mut self, e: usize, a: Action) {
        let k_of = |s: &Sim, c: &[u8; 16]| s.by_id.get(c).copied();
        match a {
            Action::SendControl { id, to, msg } => {
                let to = self.index[&to];
                self.send_control(e, to, id.0, &msg);
            }
            Action::Reply { reply, msg } => self.reply(e, reply.0, msg),
            Action::OpenOffer { ticket, from, offer } => {
                let result = open_offer(*offer, from, self.ents[e].id);
                self.feed(
                    e,
                    Input::OfferOpened {
                        ticket,
                        result: Box::new(result),
                    },
                );
            }
            Action::Prepare {
                campaign,
                offer,
                manifest,
            } => {
                let Some(k) = k_of(self, &campaign) else {
                    let result = Err("not a campaign of this run".to_string());
                    return self.feed(e, Input::Prepared { campaign, result });
                };
                // the offer is saved; the chunks already on disk are checked again
                let d = &mut self.ents[e].disk;
                d.offers[k] = Some(*offer);
                let mut have = ChunkSet::new(d.chunks[k].len() as u32);
                for (i, c) in d.chunks[k].iter().enumerate() {
                    if c.as_ref()
                        .is_some_and(|c| manifest.chunk_hashes.0.get(i) == Some(&hash_chunk(c)))
                    {
                        have.insert(i as u32);
                    }
                }
                self.feed(
                    e,
                    Input::Prepared {
                        campaign,
                        result: Ok(have),
                    },
                );
            }
            Action::RequestChunk { id, to, req } => {
                let to = self.index[&to];
                self.send_chunk_request(e, to, id.0, req);
            }
            Action::StoreChunk {
                campaign,
                index,
                data,
            } => {
                let Some(k) = k_of(self, &campaign) else { return };
                let ent = &mut self.ents[e];
                let input = if ent.room == Some(0) {
                    Input::StoreFailed {
                        campaign,
                        index,
                        reason: "No space left on device (os error 28)".into(),
                    }
                } else {
                    ent.disk.chunks[k][index as usize] = Some(data);
                    ent.room = ent.room.map(|r| r - 1);
                    Input::ChunkStored { campaign, index }
                };
                self.feed(e, input);
            }
            Action::HashFile { campaign } => {
                let Some(k) = k_of(self, &campaign) else { return };
                let mut h = blake3::Hasher::new();
                for c in self.ents[e].disk.chunks[k].iter().flatten() {
                    h.update(c);
                }
                let root = *h.finalize().as_bytes();
                self.feed(e, Input::FileHashed { campaign, root });
            }
            Action::Install { campaign } => {
                let Some(k) = k_of(self, &campaign) else { return };
                let outcome = self.install(e, k);
                self.feed(e, Input::InstallDone { campaign, outcome });
            }
            Action::SendChunk {
                reply,
                campaign,
                index,
                key,
                ..
            } => {
                let Some(k) = k_of(self, &campaign) else { return };
                if let Some(ep) = &self.ents[e].ep
                    && let Some(p) = ep.gating().local()
                    && !ep.gating().gates().iter().any(|g| g.policy == p && g.open)
                {
                    let what = format!(
                        "{} serves chunk {index} of campaign {k} while its owner's policy gates relaying",
                        self.name(e)
                    );
                    return self.violation(what);
                }
                self.ents[e].served += 1;
                let stored = self.ents[e].disk.chunks[k].get(index as usize).cloned().flatten();
                let Some(mut data) = stored else {
                    let what = format!(
                        "{} serves chunk {index} of campaign {k}, which is not on its disk",
                        self.name(e)
                    );
                    return self.violation(what);
                };
                key.seal(&campaign, index, &mut data);
                if self.ents[e].corrupt
                    && let Some(b) = data.first_mut()
                {
                    *b ^= 0x40;
                }
                let resp = ChunkResponse {
                    campaign,
                    index,
                    status: ChunkStatus::Ok,
                    data,
                };
                self.chunk_answer(e, reply.0, resp);
            }
            Action::AnswerChunk {
                reply,
                campaign,
                index,
                status,
            } => {
                let resp = ChunkResponse {
                    campaign,
                    index,
                    status,
                    data: Vec::new(),
                };
                self.chunk_answer(e, reply.0, resp);
            }
            Action::Forget { campaign } => {
                let Some(k) = k_of(self, &campaign) else { return };
                let d = &mut self.ents[e].disk;
                d.offers[k] = None;
                d.chunks[k].iter_mut().for_each(|c| *c = None);
                self.note(format!("{} forgets campaign {k}", self.name(e)));
            }
            Action::RemoveVersion { sequence, .. } => {
                let d = &mut self.ents[e].disk;
                if d.current.is_some_and(|(s, _)| s == sequence) {
                    let what = format!("{} removes its current version {sequence}", self.name(e));
                    return self.violation(what);
                }
                d.versions.remove(&sequence);
            }
            Action::Pin { trusted, .. } => self.ents[e].disk.pins = trusted,
            Action::Journal(entry) => {
                self.ents[e].disk.journal.push(entry);
                if let Some(k) = k_of(self, &entry.campaign) {
                    self.note(format!(
                        "{} journals campaign {k} {}",
                        self.name(e),
                        entry.phase.as_str()
                    ));
                }
            }
        }
    }

    fn node_event(&mut self, e: usize, ev: Event) {
        match &ev {
            Event::Note {
                note: Note::SwitchedSource { .. },
                ..
            } => self.ents[e].switches += 1,
            Event::Finished { faults, .. } => self.ents[e].faults_seen += faults,
            _ => {}
        }
        if self.cfg.trace {
            let line = match &ev {
                Event::Accepted {
                    campaign, resumed, ..
                } => format!(
                    "campaign {:?} {}",
                    self.by_id.get(campaign),
                    if *resumed { "resumed" } else { "accepted" }
                ),
                Event::Refused { from, refusal, .. } => {
                    format!("refused an offer from {}: {}", self.who(from), refusal.detail)
                }
                other => format!("{other:?}"),
            };
            self.note(format!("{}: {line}", self.name(e)));
        }
    }

    /// The install step of the node's shell (the store's): the sequence check and the
    /// switch of `current` in one step, the install command in between.
    fn install(&mut self, e: usize, k: usize) -> InstallOutcome {
        if !self.acked.contains(&(e, k)) {
            self.violation(format!(
                "{} installs campaign {k} without the NMS's acknowledgement of its code",
                self.name(e)
            ));
        }
        let m = &self.camps[k].manifest;
        let (seq, root) = (m.sequence, m.root);
        let outcome = match m.install_check(self.ents[e].disk.current) {
            Err(s) => InstallOutcome::Failed {
                reason: s.to_string(),
            },
            Ok(InstallCheck::AlreadyCurrent) => InstallOutcome::Installed,
            Ok(InstallCheck::Install) if self.ents[e].install_fail => InstallOutcome::Failed {
                reason: "the install command exited with status 1".into(),
            },
            Ok(InstallCheck::Install) => {
                let d = &mut self.ents[e].disk;
                d.current = Some((seq, root));
                d.versions.insert(seq);
                self.installs[e].push(seq);
                InstallOutcome::Installed
            }
        };
        if k == 0 && outcome == InstallOutcome::Installed {
            let mut h = blake3::Hasher::new();
            for c in self.ents[e].disk.chunks[0].iter().flatten() {
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
            let Some(m) = self.monitor(k) else {
                continue;
            };
            let mut changed = None;
            let mut new = Vec::new();
            for e in 1..self.ents.len() {
                let s = &m.nodes()[&self.ents[e].id].status;
                match self.finals.get(&(k, e)) {
                    Some(f) if f != s => {
                        changed = Some(format!(
                            "the NMS's final status of {} in campaign {k} changed from {f:?} to {s:?}",
                            self.name(e)
                        ));
                        break;
                    }
                    None if s.is_final() => new.push((e, s.clone())),
                    _ => {}
                }
            }
            if let Some(line) = changed {
                self.violation(line);
                return;
            }
            for (e, s) in new {
                self.finals.insert((k, e), s);
            }
        }
    }

    /// Invariant 5, at the end: every addressee that is up is final at the NMS in every
    /// campaign, and installed at the NMS only if it installed that campaign (or a newer
    /// one first).
    fn check_end(&mut self) {
        for k in 0..self.camps.len() {
            let Some(m) = self.monitor(k) else {
                self.violation(format!("campaign {k} never started"));
                return;
            };
            let seq = self.camps[k].manifest.sequence;
            let newer_started =
                (0..self.camps.len()).any(|j| self.started[j] && self.camps[j].manifest.sequence > seq);
            let mut bad = Vec::new();
            for e in 1..self.ents.len() {
                let v = &m.nodes()[&self.ents[e].id];
                if self.ents[e].down && self.cfg.dead.contains(&(e - 1)) {
                    continue; // down for the whole run: see the planning checks
                }
                match &v.status {
                    NodeStatus::Installed => {
                        let cur = self.ents[e].disk.current.map(|c| c.0);
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
                    // a newer version of the package started: the NMS halted this one for
                    // nodes not yet installing, and says why
                    NodeStatus::Halted(r) if !r.is_empty() && newer_started => {}
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
        let monitor = self.monitor(0);
        let nodes = monitor.map_or(&empty, |m| m.nodes());
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
                let running: u32 = self
                    .camps
                    .iter()
                    .filter_map(|c| e.ep.as_ref()?.campaign(&c.manifest.campaign))
                    .map(|c| c.total_faults())
                    .sum();
                e.faults_seen + running
            })
            .sum();
        SimReport {
            seed: self.cfg.seed,
            installed_at,
            done_at: monitor.and_then(|m| m.finished_at()),
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
            outcomes: (0..self.camps.len())
                .map(|k| self.monitor(k).map_or((0, 0, self.cfg.nodes), |m| m.counts()))
                .collect(),
            violations: self.violations.clone(),
            served: self.ents[1..].iter().map(|e| e.served).collect(),
            fed_by: self.ents[1..].iter().map(|e| e.fed_by.clone()).collect(),
            handed_back: self.handed_back,
            leaves_gated_in_last_plan: self.leaves_gated,
            trace: self.trace.clone(),
        }
    }
}
