//! The NMS endpoint: everything `baton-nms` decides, above the per-campaign
//! [`CampaignMonitor`]s.
//!
//! [`NmsEndpoint`] owns the fleet seen by discovery (and the static peers), the rule that
//! makes a node an addressee, the queue of dropped files and the decision when one becomes
//! a campaign (discovery settled, enough nodes, or give up after the discovery timeout), and
//! the campaigns themselves: it routes every control request, response, send failure and
//! chunk request to the right monitor by campaign id, owns the ids of requests in flight,
//! and reports each campaign's end with its summary.
//!
//! The contract is str0m's: feed one [`NmsInput`] with the time to [`NmsEndpoint::handle`],
//! then drain [`NmsEndpoint::poll_action`] (what the shell must do: send, answer, prepare a
//! drop, write a summary) and [`NmsEndpoint::poll_event`] (what the operator sees) until
//! both are empty, and sleep until [`NmsEndpoint::poll_timeout`] (the earliest entry of a
//! table of named timers), where the shell feeds [`NmsInput::Timeout`]. No periodic tick.
//!
//! Copying, hashing and signing a dropped file is I/O: the endpoint asks for it with
//! [`NmsAction::Prepare`] (at most one drop at a time) and the shell answers with
//! [`NmsInput::Prepared`] or [`NmsInput::PrepareFailed`].
//!
//! Late joiners: the endpoint knows each package's latest campaign (those it starts or
//! restores, and those the shell tells it of with [`NmsEndpoint::remember`]) and which
//! nodes hold which version ([`NmsEndpoint::know_installed`]). An eligible node that is no
//! addressee of the latest unexpired campaign of a package, and does not hold its
//! version, waits one settle window (so that nodes appearing together are batched); then
//! the endpoint asks for a follow-up campaign of that version for just those nodes with
//! [`NmsAction::FollowUp`], answered like a drop.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use crate::endpoint::timer::Timers;
use crate::gate::RelayHint;
use crate::id::NodeId;
use crate::keys::{CampaignSecret, ChunkKey, TAG_LEN};
use crate::manifest::{CampaignId, Manifest, SignedManifest, campaign_hex as hex};
pub use crate::monitor::CANCELLED;
use crate::monitor::{CampaignMonitor, MonitorAction, MonitorConfig, MonitorNote, NodeStatus};
use crate::serve::{RequestId, ServeAction};
use crate::wire::{
    ChunkRequest, ChunkResponse, ChunkStatus, Control, ControlKind, PROTOCOL_VERSION, Verdict, encode_control,
};

#[cfg(test)]
mod tests;

/// The shell's name for one dropped file; the shell picks it, unique per endpoint, below
/// [`DropId::FOLLOW_UP`]. Follow-up campaigns ([`NmsAction::FollowUp`]) carry ids the
/// endpoint picks, with that bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DropId(pub u64);

impl DropId {
    /// The bit set in the ids of follow-up campaigns (picked by the endpoint).
    pub const FOLLOW_UP: u64 = 1 << 63;

    /// True for the id of a follow-up campaign.
    pub fn is_follow_up(&self) -> bool {
        self.0 & Self::FOLLOW_UP != 0
    }
}

/// The endpoint's name for one control request the NMS sent; its response or failure
/// comes back with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutboundId(pub u64);

/// What a discovered peer advertises it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// A `baton-node`: may be an addressee.
    Node,
    /// Another NMS: never an addressee.
    Nms,
}

/// How the NMS picks addressees and when a drop becomes a campaign.
#[derive(Debug, Clone)]
pub struct NmsConfig {
    /// Wait for at least this many eligible nodes (0 counts as 1).
    pub min_nodes: usize,
    /// Discovery has settled when no node appeared or left for this long.
    pub settle: Duration,
    /// A drop that could not start this long after it was dropped is given up.
    pub discovery_timeout: Duration,
    /// Only nodes advertising all of these tags are addressees.
    pub tags: Vec<String>,
    /// The protocol version nodes must advertise to be addressees.
    pub protocol_version: u32,
    /// Tunables of each campaign's monitor (deadlines and probes among them).
    pub monitor: MonitorConfig,
    /// Halt a campaign for the nodes not yet installed once this many addressees failed or
    /// are unreachable (`--halt-after`); `None`: never.
    pub halt_after: Option<FailureThreshold>,
    /// Unix seconds at the shell's time origin (`now = 0`): wall-clock time is this plus
    /// `now`. Used to offer a returning node only campaigns that have not expired.
    pub unix_origin: u64,
    /// The fanout the shell asks for in manifests (fitted to the path limit with
    /// [`crate::plan::fanout_for`], as the shell does): the addressee list is ordered for
    /// it, so that nodes that do not relay now are planned at the leaves.
    pub fanout: u8,
}

/// When a campaign halts: a count or a percentage of its addressees that failed or are
/// unreachable. Written `10` or `10%`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureThreshold {
    /// At least this many addressees (at least 1).
    Count(usize),
    /// At least this percentage of the addressees (1 to 100), rounded up to whole nodes.
    Percent(u8),
}

impl FailureThreshold {
    /// True when `bad` of `total` addressees reach the threshold.
    pub fn reached(&self, bad: usize, total: usize) -> bool {
        bad > 0
            && match *self {
                FailureThreshold::Count(n) => bad >= n,
                FailureThreshold::Percent(p) => bad * 100 >= usize::from(p) * total,
            }
    }
}

impl std::fmt::Display for FailureThreshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureThreshold::Count(n) => write!(f, "{n}"),
            FailureThreshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for FailureThreshold {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || {
            format!(
                "{s:?} is not a failure threshold: give a number of nodes (e.g. 3) or a percentage \
                 of the addressees from 1% to 100% (e.g. 10%)"
            )
        };
        if let Some(p) = t.strip_suffix('%') {
            let p: u8 = p.trim().parse().map_err(|_| bad())?;
            if !(1..=100).contains(&p) {
                return Err(bad());
            }
            Ok(FailureThreshold::Percent(p))
        } else {
            let n: usize = t.parse().map_err(|_| bad())?;
            if n == 0 {
                return Err(bad());
            }
            Ok(FailureThreshold::Count(n))
        }
    }
}

impl Default for NmsConfig {
    fn default() -> Self {
        NmsConfig {
            min_nodes: 1,
            settle: Duration::from_secs(2),
            discovery_timeout: Duration::from_secs(30),
            tags: Vec::new(),
            protocol_version: PROTOCOL_VERSION,
            monitor: MonitorConfig::default(),
            halt_after: None,
            unix_origin: 0,
            fanout: 2,
        }
    }
}

/// Everything that happens to the NMS, with the time passed to [`NmsEndpoint::handle`].
#[derive(Debug, Clone)]
pub enum NmsInput {
    /// The time reached [`NmsEndpoint::poll_timeout`] (early or repeated calls are harmless).
    Timeout,
    /// Discovery found (or refreshed) a peer.
    NodeSeen {
        /// The peer.
        id: NodeId,
        /// Its advertised tags.
        tags: Vec<String>,
        /// Node or NMS.
        role: PeerRole,
        /// Its advertised protocol version.
        version: u32,
        /// What it advertises about its relaying (`None`: nothing, e.g. its owner set no
        /// policy).
        relay: Option<RelayHint>,
    },
    /// Discovery lost a peer.
    NodeLost {
        /// The peer.
        id: NodeId,
    },
    /// A peer given on the command line: a node of this protocol version without tags,
    /// present until discovery says it left.
    StaticPeer {
        /// The peer.
        id: NodeId,
    },
    /// A file was dropped and is stable; it waits for the fleet before being prepared.
    DropReady {
        /// The shell's name for it.
        drop_id: DropId,
        /// How the operator knows it (the path), for messages.
        name: String,
    },
    /// The shell prepared the drop asked for by [`NmsAction::Prepare`]: the campaign starts.
    Prepared {
        /// The drop.
        drop_id: DropId,
        /// The signed manifest's content.
        manifest: Box<Manifest>,
        /// The manifest as signed.
        signed: SignedManifest,
        /// The campaign's secret.
        secret: CampaignSecret,
    },
    /// Preparing the drop failed; no campaign starts.
    PrepareFailed {
        /// The drop.
        drop_id: DropId,
        /// Why, for the operator.
        reason: String,
    },
    /// A control request from a peer; [`NmsEndpoint::handle`] returns the id its answer
    /// ([`NmsAction::AnswerControl`]) will carry.
    ControlRequest {
        /// The sender (authenticated by the transport).
        from: NodeId,
        /// The request.
        msg: Control,
    },
    /// The response to [`NmsAction::SendControl`] `id`.
    ControlResponse {
        /// The send's id.
        id: OutboundId,
        /// The response.
        msg: Control,
    },
    /// [`NmsAction::SendControl`] `id` could not be delivered.
    SendFailed {
        /// The send's id.
        id: OutboundId,
        /// Why, for messages.
        reason: String,
    },
    /// A chunk request from a peer; [`NmsEndpoint::handle`] returns the id its answer
    /// ([`NmsAction::SendChunk`] or [`NmsAction::AnswerChunk`]) will carry.
    ChunkRequest {
        /// The requester (authenticated by the transport).
        from: NodeId,
        /// The request.
        request: ChunkRequest,
    },
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NmsAction {
    /// Open, copy, hash and sign this drop for these addressees (off the event loop), then
    /// feed [`NmsInput::Prepared`] or [`NmsInput::PrepareFailed`].
    Prepare {
        /// The drop.
        drop_id: DropId,
        /// The eligible nodes, ordered for the plan (see [`crate::plan::plan_order`]).
        addressees: Vec<NodeId>,
        /// How many of the last addressees are leaf-only (`PlanParams::leaves`).
        leaves: u32,
    },
    /// Sign a follow-up of campaign `of` for `addressees` (nodes that appeared late, none
    /// of its addressees): the same package version (content, chunk hashes, sequence and
    /// expiry) from the NMS's kept copy, a new campaign id and secret. Then feed
    /// [`NmsInput::Prepared`] or [`NmsInput::PrepareFailed`] with `drop_id`.
    FollowUp {
        /// The endpoint's name for it ([`DropId::is_follow_up`]).
        drop_id: DropId,
        /// The package's latest campaign (or one of its follow-ups).
        of: CampaignId,
        /// The late nodes, ordered for the plan (as [`NmsAction::Prepare`]).
        addressees: Vec<NodeId>,
        /// How many of the last addressees are leaf-only.
        leaves: u32,
    },
    /// Send `msg` as a request to `to`; report its response or failure with `id`.
    SendControl {
        /// The send's id.
        id: OutboundId,
        /// The peer.
        to: NodeId,
        /// The request.
        msg: Control,
    },
    /// Answer the control request `req` with `msg`.
    AnswerControl {
        /// The request's id.
        req: RequestId,
        /// The answer.
        msg: Control,
    },
    /// Answer the chunk request `req`: read chunk `index` of `campaign`'s package copy,
    /// seal it with `key`, send it.
    SendChunk {
        /// The request's id.
        req: RequestId,
        /// The campaign whose package is read.
        campaign: CampaignId,
        /// The chunk.
        index: u32,
        /// The requester's hop key.
        key: ChunkKey,
    },
    /// Answer the chunk request `req` with this (data-less) response.
    AnswerChunk {
        /// The request's id.
        req: RequestId,
        /// The response.
        response: ChunkResponse,
    },
    /// The campaign ended: persist its summary (the campaign still answers late requests).
    CampaignFinished {
        /// The summary.
        summary: CampaignSummary,
    },
}

/// What the operator sees; changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NmsEvent {
    /// A compatible node appeared.
    NodeDiscovered {
        /// The node.
        id: NodeId,
        /// Eligible nodes now present.
        known: usize,
    },
    /// A node speaks another protocol version; it is never an addressee.
    NodeIncompatible {
        /// The node.
        id: NodeId,
        /// Its version.
        version: u32,
    },
    /// A node left.
    NodeLeft {
        /// The node.
        id: NodeId,
    },
    /// A drop cannot start yet (said once per drop).
    DropWaiting {
        /// The drop.
        drop_id: DropId,
        /// Eligible nodes present.
        found: usize,
        /// Nodes needed.
        needed: usize,
    },
    /// A drop was given up after the discovery timeout; no campaign started.
    DropAbandoned {
        /// The drop.
        drop_id: DropId,
        /// Why, with advice, for the operator.
        reason: String,
    },
    /// Preparing a drop failed; no campaign started.
    DropFailed {
        /// The drop.
        drop_id: DropId,
        /// Why.
        reason: String,
    },
    /// A campaign started.
    CampaignStarted {
        /// The drop it came from.
        drop_id: DropId,
        /// Its manifest.
        manifest: Box<Manifest>,
    },
    /// A node's progress, after any message about it.
    NodeProgress {
        /// The campaign.
        campaign: CampaignId,
        /// The node.
        node: NodeId,
        /// Its status.
        status: NodeStatus,
        /// Bytes it verified.
        verified: u64,
        /// The peer it last reported fetching from (the NMS or a relay), if it said.
        source: Option<NodeId>,
        /// Bytes it verified from each source, as it last reported (empty: it did not say).
        fetched: Vec<(NodeId, u64)>,
    },
    /// A node installed the package.
    NodeInstalled {
        /// The campaign.
        campaign: CampaignId,
        /// The node.
        node: NodeId,
    },
    /// A node failed.
    NodeFailed {
        /// The campaign.
        campaign: CampaignId,
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// The NMS probes a node: its deadline passed, a relay reported it, or an offer to it
    /// could not be delivered.
    NodeProbing {
        /// The campaign.
        campaign: CampaignId,
        /// The node.
        node: NodeId,
        /// Why.
        why: String,
    },
    /// A node did not answer the probes: unreachable (not failed for good: it is offered
    /// the campaign again when discovery sees it again); the part of the list it had not
    /// served was re-planned.
    NodeUnreachable {
        /// The campaign.
        campaign: CampaignId,
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// A node refused an offer as untrusted: it trusts another NMS, and is not an
    /// addressee of later campaigns until it accepts an offer again or re-appears.
    NodeTrustsOtherNms {
        /// The campaign it refused.
        campaign: CampaignId,
        /// The node.
        node: NodeId,
        /// Its refusal.
        detail: String,
    },
    /// A relay stayed gated past the campaign's grace period and handed back `nodes`
    /// nodes of its part, which the NMS offered itself.
    RelayHandedBack {
        /// The campaign.
        campaign: CampaignId,
        /// The gated relay.
        node: NodeId,
        /// How many nodes it handed back.
        nodes: usize,
    },
    /// The campaign reached the failure threshold and was halted for every node not yet
    /// installed (or installing).
    CampaignHalted {
        /// The campaign.
        campaign: CampaignId,
        /// Why, with the counts and the threshold.
        reason: String,
    },
    /// A node's rolling code was refused.
    AuthRefused {
        /// The campaign.
        campaign: CampaignId,
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// Every addressee settled (installed, failed, halted, refusing or unreachable). Said
    /// again, with the new summary, when a node that had come back settles again.
    CampaignDone {
        /// The summary.
        summary: CampaignSummary,
    },
}

/// One addressee at the end of a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOutcome {
    /// The node.
    pub node: NodeId,
    /// Its final status (`Failed` carries the reason).
    pub status: NodeStatus,
    /// From the campaign's start to its final report.
    pub took: Option<Duration>,
}

/// The end of a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignSummary {
    /// The campaign.
    pub campaign: CampaignId,
    /// The drop it came from.
    pub drop_id: DropId,
    /// Package name.
    pub package: String,
    /// Package version.
    pub version: String,
    /// Sequence number.
    pub sequence: u64,
    /// Package size in bytes.
    pub size: u64,
    /// Every addressee, in the manifest's order.
    pub nodes: Vec<NodeOutcome>,
    /// Addressees that installed.
    pub installed: usize,
    /// Why the campaign was halted, if it was.
    pub halted: Option<String>,
    /// When the drop was reported ready.
    pub dropped_at: Duration,
    /// When the campaign started.
    pub started: Duration,
    /// When the last addressee reached a final state.
    pub finished: Duration,
    /// Bytes the NMS sent in this campaign (control messages and chunk frames).
    pub bytes_sent: u64,
}

impl CampaignSummary {
    /// From the drop to the last final report.
    pub fn wall(&self) -> Duration {
        self.finished.saturating_sub(self.dropped_at)
    }

    /// The addressees that failed, with their reasons.
    pub fn failed(&self) -> impl Iterator<Item = (&NodeId, &str)> {
        self.nodes.iter().filter_map(|o| match &o.status {
            NodeStatus::Failed(r) => Some((&o.node, r.as_str())),
            _ => None,
        })
    }

    /// The addressees that were unreachable at the end, with the reasons.
    pub fn unreachable(&self) -> impl Iterator<Item = (&NodeId, &str)> {
        self.nodes.iter().filter_map(|o| match &o.status {
            NodeStatus::Unreachable(r) => Some((&o.node, r.as_str())),
            _ => None,
        })
    }

    /// True when every addressee installed.
    pub fn all_installed(&self) -> bool {
        self.installed == self.nodes.len()
    }
}

/// Why the operator's cancel or resume of a campaign was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorRefusal {
    /// Not among the campaigns this endpoint holds.
    #[error("campaign {0} is not running in this NMS")]
    NotHeld(String),
    /// Cancel: every addressee already reached a final state.
    #[error("campaign {0} has already ended; there is nothing to cancel")]
    Ended(String),
    /// Resume: it runs.
    #[error("campaign {0} is running; only a cancelled or halted campaign can be resumed")]
    Running(String),
    /// Resume: it ended by itself, without a node halted (by a cancel or the threshold).
    #[error(
        "campaign {0} ended without being cancelled or halted, so there is nothing to resume; to \
         distribute its package again, drop the file again"
    )]
    NotCancelled(String),
    /// Resume: its manifest expired; nodes would refuse it.
    #[error(
        "campaign {0}'s manifest has expired, so nodes would refuse it; drop the package file \
         again for a new campaign"
    )]
    Expired(String),
}

/// The endpoint's named deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Discovery settles for the drop at the front of the queue.
    Settle,
    /// The drop at the front of the queue is given up.
    DiscoveryTimeout,
    /// A campaign's monitor wants to be woken.
    Campaign(CampaignId),
    /// Late joiners wait for discovery to settle before their follow-up is asked for.
    LateJoin,
}

/// A package's latest version as campaigns distributed it: what a late joiner must get.
#[derive(Debug, Clone)]
struct Latest {
    /// Its first campaign known (a follow-up names it).
    campaign: CampaignId,
    sequence: u64,
    expires_at: u64,
    /// Addressees of its campaign and of every follow-up.
    addressed: BTreeSet<NodeId>,
    /// Cancelled (or otherwise stopped by the shell): no follow-up.
    stopped: bool,
}

#[derive(Debug, Clone)]
struct Peer {
    tags: Vec<String>,
    role: PeerRole,
    version: u32,
    present: bool,
    /// What it said last about its relaying (advert or progress report).
    relay: Option<RelayHint>,
}

#[derive(Debug, Clone)]
struct PendingDrop {
    id: DropId,
    name: String,
    at: Duration,
    said_waiting: bool,
}

#[derive(Debug)]
struct Campaign {
    monitor: CampaignMonitor,
    drop_id: DropId,
    dropped_at: Duration,
    bytes_sent: u64,
    /// The summary was reported; the monitor still answers late requests.
    finished: bool,
}

/// The NMS: the fleet, the drops waiting for it, and the campaigns. See the module docs.
#[derive(Debug)]
pub struct NmsEndpoint {
    cfg: NmsConfig,
    fleet: BTreeMap<NodeId, Peer>,
    /// When the set of present compatible nodes last changed.
    last_change: Duration,
    pending: VecDeque<PendingDrop>,
    preparing: Option<PendingDrop>,
    campaigns: HashMap<CampaignId, Campaign>,
    /// Nodes that refused an offer as untrusted (they trust another NMS), with the refusal:
    /// not addressed until they accept an offer again or re-appear.
    trusts_other: BTreeMap<NodeId, String>,
    /// Chunk requests in flight, by the id the endpoint gave them.
    chunk_requests: HashMap<RequestId, CampaignId>,
    /// Control requests sent, awaiting a response or a failure.
    /// With the probe's nonce, for a probe (so that a late failure of an older probe is
    /// not taken for the current one's).
    sent: HashMap<OutboundId, (CampaignId, NodeId, ControlKind, Option<u64>)>,
    next_request: u64,
    next_outbound: u64,
    timers: Timers<Timer>,
    actions: VecDeque<NmsAction>,
    events: VecDeque<NmsEvent>,
    /// Each package's latest version (by name).
    latest: BTreeMap<String, Latest>,
    /// Sequences nodes are known to hold, by node and package.
    holds: HashMap<NodeId, HashMap<String, u64>>,
    /// Follow-ups asked for and not yet prepared: the package and the nodes.
    following: BTreeMap<DropId, (String, Vec<NodeId>)>,
    next_follow_up: u64,
    /// Nodes whose follow-up could not be prepared, by package: not asked again until
    /// they re-appear.
    late_gave_up: BTreeSet<(NodeId, String)>,
}

impl NmsEndpoint {
    /// An NMS with an empty fleet, at time `now`.
    pub fn new(now: Duration, cfg: NmsConfig) -> Self {
        NmsEndpoint {
            cfg,
            fleet: BTreeMap::new(),
            last_change: now,
            pending: VecDeque::new(),
            preparing: None,
            campaigns: HashMap::new(),
            trusts_other: BTreeMap::new(),
            chunk_requests: HashMap::new(),
            sent: HashMap::new(),
            next_request: 0,
            next_outbound: 0,
            timers: Timers::default(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            latest: BTreeMap::new(),
            holds: HashMap::new(),
            following: BTreeMap::new(),
            next_follow_up: 0,
            late_gave_up: BTreeSet::new(),
        }
    }

    /// Handles one input at `now`. For [`NmsInput::ControlRequest`] and
    /// [`NmsInput::ChunkRequest`] returns the id that the one answer action for it will
    /// carry (the shell keeps its reply handle under it); `None` for every other input.
    pub fn handle(&mut self, now: Duration, input: NmsInput) -> Option<RequestId> {
        let r = match input {
            NmsInput::Timeout => {
                self.on_timeout(now);
                None
            }
            NmsInput::NodeSeen {
                id,
                tags,
                role,
                version,
                relay,
            } => {
                self.node_seen(now, id, tags, role, version, relay);
                None
            }
            NmsInput::NodeLost { id } => {
                if let Some(p) = self.fleet.get_mut(&id)
                    && p.present
                {
                    p.present = false;
                    if p.role == PeerRole::Node && p.version == self.cfg.protocol_version {
                        self.last_change = now;
                        self.events.push_back(NmsEvent::NodeLeft { id });
                    }
                }
                self.try_start(now);
                None
            }
            NmsInput::StaticPeer { id } => {
                let version = self.cfg.protocol_version;
                self.node_seen(now, id, Vec::new(), PeerRole::Node, version, None);
                None
            }
            NmsInput::DropReady { drop_id, name } => {
                self.pending.push_back(PendingDrop {
                    id: drop_id,
                    name,
                    at: now,
                    said_waiting: false,
                });
                self.try_start(now);
                None
            }
            NmsInput::Prepared {
                drop_id,
                manifest,
                signed,
                secret,
            } => {
                if let Some(d) = self.take_preparing(drop_id) {
                    self.start_campaign(now, d, *manifest, signed, secret);
                } else if let Some((package, _)) = self.following.remove(&drop_id) {
                    let d = PendingDrop {
                        id: drop_id,
                        name: format!("follow-up of {package}"),
                        at: now,
                        said_waiting: true,
                    };
                    self.start_campaign(now, d, *manifest, signed, secret);
                    self.arm_late_join(now);
                }
                self.try_start(now);
                None
            }
            NmsInput::PrepareFailed { drop_id, reason } => {
                if self.take_preparing(drop_id).is_some() {
                    self.events.push_back(NmsEvent::DropFailed { drop_id, reason });
                } else if let Some((package, nodes)) = self.following.remove(&drop_id) {
                    // not asked again until they re-appear: the cause would repeat
                    self.late_gave_up
                        .extend(nodes.iter().map(|n| (*n, package.clone())));
                    self.events.push_back(NmsEvent::DropFailed {
                        drop_id,
                        reason: format!(
                            "follow-up of {package} for {} late node(s) not prepared: {reason}",
                            nodes.len()
                        ),
                    });
                    self.arm_late_join(now);
                }
                self.try_start(now);
                None
            }
            NmsInput::ControlRequest { from, msg } => Some(self.control_request(now, from, msg)),
            NmsInput::ControlResponse { id, msg } => {
                if let Some((c, to, ..)) = self.sent.remove(&id)
                    && let Some(k) = self.campaigns.get_mut(&c)
                {
                    if let Control::OfferReply {
                        verdict: Verdict::Accept,
                        ..
                    } = &msg
                    {
                        self.trusts_other.remove(&to);
                    }
                    k.monitor.response(now, to, msg);
                    self.progress(c, to);
                    self.drain(now, c);
                }
                None
            }
            NmsInput::SendFailed { id, reason } => {
                if let Some((c, to, kind, probe)) = self.sent.remove(&id)
                    && let Some(k) = self.campaigns.get_mut(&c)
                {
                    match probe {
                        Some(nonce) => k.monitor.probe_send_failed(now, to, nonce, &reason),
                        None => k.monitor.send_failed(now, to, kind, &reason),
                    }
                    self.progress(c, to);
                    self.drain(now, c);
                }
                None
            }
            NmsInput::ChunkRequest { from, request } => Some(self.chunk_request(now, from, request)),
        };
        #[cfg(test)]
        self.check_invariants();
        r
    }

    /// The NMS process restarted with its campaigns as they were (their state is kept on
    /// disk) but nothing in flight: responses to requests sent before, and chunk requests
    /// it held, are not awaited any more; every running campaign offers again to the
    /// first-tier heads that had not answered ([`CampaignMonitor::restarted`]).
    pub fn restarted(&mut self, now: Duration) {
        self.sent.clear();
        self.chunk_requests.clear();
        let mut running: Vec<CampaignId> = self
            .campaigns
            .iter()
            .filter(|(_, k)| !k.finished)
            .map(|(c, _)| *c)
            .collect();
        running.sort();
        for c in running {
            if let Some(k) = self.campaigns.get_mut(&c) {
                k.monitor.restarted();
            }
            self.drain(now, c);
        }
        #[cfg(test)]
        self.check_invariants();
    }

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<NmsAction> {
        self.actions.pop_front()
    }

    /// The next thing to show the operator.
    pub fn poll_event(&mut self) -> Option<NmsEvent> {
        self.events.pop_front()
    }

    /// When to feed [`NmsInput::Timeout`]: the earliest named timer.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.timers.next()
    }

    /// The nodes present now (found, or given with `--peer`, and not lost since), of any
    /// version or trust; sorted.
    pub fn present_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.fleet
            .iter()
            .filter(|(_, p)| p.present && p.role == PeerRole::Node)
            .map(|(id, _)| *id)
    }

    /// The nodes that would be addressees now: present, of role node, of this protocol
    /// version, with every configured tag, and not known to trust another NMS; sorted.
    pub fn eligible(&self) -> Vec<NodeId> {
        self.fleet
            .iter()
            .filter(|(id, p)| self.is_eligible(p) && !self.trusts_other.contains_key(id))
            .map(|(id, _)| *id)
            .collect()
    }

    /// What the NMS knows of `node`'s relaying (advert or progress report).
    pub fn relay_hint(&self, node: &NodeId) -> Option<RelayHint> {
        self.fleet.get(node).and_then(|p| p.relay)
    }

    /// `nodes` ordered for the plan, and how many of the last are leaf-only: the nodes
    /// known not to relay now (gated) relay for no one, and those whose relaying may stop
    /// (restricted) take relay places only after the others.
    fn ordered_for_relays(&self, nodes: Vec<NodeId>) -> (Vec<NodeId>, u32) {
        let fanout = crate::plan::fanout_for(nodes.len(), self.cfg.fanout);
        let (order, leaves) =
            crate::plan::plan_order(&nodes, fanout, |n| self.relay_hint(n).unwrap_or_default());
        (order, leaves as u32)
    }

    /// Tells a new campaign's monitor what is known of its addressees' relaying.
    fn seed_relay_hints(&self, monitor: &mut CampaignMonitor) {
        let known: Vec<(NodeId, RelayHint)> = monitor
            .manifest()
            .addressees
            .iter()
            .filter_map(|n| Some((*n, self.relay_hint(n)?)))
            .collect();
        for (n, h) in known {
            monitor.set_relay_hint(n, h);
        }
    }

    /// The monitor of a campaign this endpoint holds (running or finished).
    pub fn campaign(&self, c: &CampaignId) -> Option<&CampaignMonitor> {
        self.campaigns.get(c).map(|k| &k.monitor)
    }

    /// Takes back a campaign saved before a restart (see [`CampaignMonitor::resume`]): the
    /// same manifest and secret, each addressee's saved status and verified bytes. Says
    /// [`NmsEvent::CampaignStarted`] with `drop_id` (a name the shell picks for it) and
    /// offers again to the first-tier heads that had not answered. Refused (returns false)
    /// if a campaign with this id is already held.
    pub fn restore(
        &mut self,
        now: Duration,
        drop_id: DropId,
        signed: SignedManifest,
        manifest: Manifest,
        secret: CampaignSecret,
        saved: &[(NodeId, NodeStatus, u64)],
    ) -> bool {
        let c = manifest.campaign;
        if self.campaigns.contains_key(&c) {
            return false;
        }
        self.events.push_back(NmsEvent::CampaignStarted {
            drop_id,
            manifest: Box::new(manifest.clone()),
        });
        self.note_campaign(&manifest, false);
        let mut monitor =
            CampaignMonitor::resume(now, manifest, signed, secret, self.cfg.monitor.clone(), saved);
        self.seed_relay_hints(&mut monitor);
        self.campaigns.insert(
            c,
            Campaign {
                monitor,
                drop_id,
                dropped_at: now,
                bytes_sent: 0,
                finished: false,
            },
        );
        self.drain(now, c);
        self.arm_late_join(now);
        true
    }

    /// The operator cancels campaign `c`: it is halted with the reason [`CANCELLED`]
    /// ([`CampaignMonitor::cancel`]: the NMS stops offering, serving and authenticating
    /// it, every addressee not installed or installing becomes halted), and once the
    /// nodes already installing are done it ends with its summary
    /// ([`NmsAction::CampaignFinished`], [`NmsEvent::CampaignDone`]). Returns the
    /// addressees halted.
    pub fn cancel(&mut self, now: Duration, c: &CampaignId) -> Result<Vec<NodeId>, OperatorRefusal> {
        let k = self
            .campaigns
            .get_mut(c)
            .ok_or_else(|| OperatorRefusal::NotHeld(hex(c)))?;
        if k.finished {
            return Err(OperatorRefusal::Ended(hex(c)));
        }
        let cancelled = k.monitor.cancel(now);
        for n in &cancelled {
            self.progress(*c, *n);
        }
        self.drain(now, *c);
        // halted: no follow-ups for late joiners of this version
        self.arm_late_join(now);
        #[cfg(test)]
        self.check_invariants();
        Ok(cancelled)
    }

    /// The operator resumes campaign `c`, halted in this process (cancelled, or halted by
    /// `--halt-after`): unless its manifest expired (`unix_now` is the wall clock in
    /// seconds), its halted addressees wait again and are offered again
    /// ([`CampaignMonitor::resume_halted`]). The failure threshold still counts the
    /// failures from before: the next failure or unreachable node halts it again. Returns
    /// the addressees reopened.
    pub fn resume(
        &mut self,
        now: Duration,
        c: &CampaignId,
        unix_now: u64,
    ) -> Result<Vec<NodeId>, OperatorRefusal> {
        let k = self
            .campaigns
            .get_mut(c)
            .ok_or_else(|| OperatorRefusal::NotHeld(hex(c)))?;
        if k.monitor.halted().is_none() {
            return Err(if k.finished {
                OperatorRefusal::NotCancelled(hex(c))
            } else {
                OperatorRefusal::Running(hex(c))
            });
        }
        if k.monitor.manifest().expires_at <= unix_now {
            return Err(OperatorRefusal::Expired(hex(c)));
        }
        let reopened = k.monitor.resume_halted(now);
        k.finished = k.monitor.is_done();
        let manifest = k.monitor.manifest().clone();
        for n in &reopened {
            self.progress(*c, *n);
        }
        self.drain(now, *c);
        self.unstop(now, &manifest);
        #[cfg(test)]
        self.check_invariants();
        Ok(reopened)
    }

    /// The operator resumes a campaign halted (cancelled, or by `--halt-after`) before this
    /// NMS started, from what the shell saved (as [`NmsEndpoint::restore`]): refused if
    /// expired or without a halted addressee; else it runs again as [`NmsEndpoint::resume`] would
    /// have it, announced with [`NmsEvent::CampaignStarted`].
    #[allow(clippy::too_many_arguments)]
    pub fn resume_saved(
        &mut self,
        now: Duration,
        drop_id: DropId,
        signed: SignedManifest,
        manifest: Manifest,
        secret: CampaignSecret,
        saved: &[(NodeId, NodeStatus, u64)],
        unix_now: u64,
    ) -> Result<Vec<NodeId>, OperatorRefusal> {
        let c = manifest.campaign;
        if self.campaigns.contains_key(&c) {
            return self.resume(now, &c, unix_now);
        }
        if manifest.expires_at <= unix_now {
            return Err(OperatorRefusal::Expired(hex(&c)));
        }
        let (monitor, reopened) = CampaignMonitor::resume_saved_halted(
            now,
            manifest.clone(),
            signed,
            secret,
            self.cfg.monitor.clone(),
            saved,
        );
        if reopened.is_empty() {
            return Err(OperatorRefusal::NotCancelled(hex(&c)));
        }
        self.events.push_back(NmsEvent::CampaignStarted {
            drop_id,
            manifest: Box::new(manifest.clone()),
        });
        self.campaigns.insert(
            c,
            Campaign {
                monitor,
                drop_id,
                dropped_at: now,
                bytes_sent: 0,
                finished: false,
            },
        );
        for n in &reopened {
            self.progress(c, *n);
        }
        self.drain(now, c);
        self.unstop(now, &manifest);
        #[cfg(test)]
        self.check_invariants();
        Ok(reopened)
    }

    /// The operator resumed a campaign of `m`'s package and version: follow-ups of it for
    /// late joiners are no longer stopped (the shell had told of it as cancelled).
    fn unstop(&mut self, now: Duration, m: &Manifest) {
        match self.latest.get_mut(&m.name) {
            Some(l) if l.sequence == m.sequence => l.stopped = false,
            _ => self.note_campaign(m, false),
        }
        self.arm_late_join(now);
    }

    /// Tells the endpoint of a campaign it does not hold (one that ended, or was cancelled:
    /// `stopped`), so that nodes appearing late get the package's latest version. The
    /// newest sequence of each package counts; campaigns of the same sequence (follow-ups)
    /// add their addressees; one stopped campaign of it stops follow-ups of that version.
    pub fn remember(&mut self, now: Duration, manifest: &Manifest, stopped: bool) {
        self.note_campaign(manifest, stopped);
        self.arm_late_join(now);
    }

    /// Tells the endpoint that `node` holds sequence `sequence` of `package` (from the
    /// shell's inventory): it gets no follow-up of that or an older sequence.
    pub fn know_installed(&mut self, now: Duration, node: NodeId, package: &str, sequence: u64) {
        let s = self
            .holds
            .entry(node)
            .or_default()
            .entry(package.to_string())
            .or_insert(sequence);
        *s = (*s).max(sequence);
        self.arm_late_join(now);
    }

    /// Nodes known to trust another NMS (they refused an offer as untrusted), with their
    /// refusal: not addressed until they accept an offer again or re-appear after leaving.
    pub fn trusting_other(&self) -> &BTreeMap<NodeId, String> {
        &self.trusts_other
    }

    /// Drops waiting for the fleet, plus the one being prepared.
    pub fn drops_waiting(&self) -> usize {
        self.pending.len() + usize::from(self.preparing.is_some())
    }

    fn is_eligible(&self, p: &Peer) -> bool {
        p.present
            && p.role == PeerRole::Node
            && p.version == self.cfg.protocol_version
            && self.cfg.tags.iter().all(|t| p.tags.contains(t))
    }

    fn node_seen(
        &mut self,
        now: Duration,
        id: NodeId,
        tags: Vec<String>,
        role: PeerRole,
        version: u32,
        relay: Option<RelayHint>,
    ) {
        let compatible = role == PeerRole::Node && version == self.cfg.protocol_version;
        let before = self.fleet.get(&id).cloned();
        let was_compatible_present = before
            .as_ref()
            .is_some_and(|p| p.present && p.role == PeerRole::Node && p.version == self.cfg.protocol_version);
        self.fleet.insert(
            id,
            Peer {
                tags,
                role,
                version,
                present: true,
                relay,
            },
        );
        if role == PeerRole::Node && !compatible {
            let said = before.as_ref().is_some_and(|p| p.present && p.version == version);
            if !said {
                self.events.push_back(NmsEvent::NodeIncompatible { id, version });
            }
        }
        if compatible && before.as_ref().is_none_or(|p| !p.present) {
            // it re-appeared: it announces itself anew, perhaps with another trust
            self.trusts_other.remove(&id);
            self.late_gave_up.retain(|(n, _)| *n != id);
        }
        if compatible {
            self.node_returned(now, id);
        }
        if compatible != was_compatible_present {
            self.last_change = now;
            if compatible {
                let known = self.eligible().len();
                self.events.push_back(NmsEvent::NodeDiscovered { id, known });
            } else {
                self.events.push_back(NmsEvent::NodeLeft { id });
            }
        }
        self.try_start(now);
        self.arm_late_join(now);
    }

    fn unix_now(&self, now: Duration) -> u64 {
        self.cfg.unix_origin.saturating_add(now.as_secs())
    }

    /// Records campaign `m` as its package's latest version if it is (see [`Self::remember`]).
    fn note_campaign(&mut self, m: &Manifest, stopped: bool) {
        match self.latest.get_mut(&m.name) {
            Some(l) if l.sequence > m.sequence => {}
            Some(l) if l.sequence == m.sequence => {
                l.addressed.extend(m.addressees.iter().copied());
                l.stopped |= stopped;
            }
            _ => {
                self.latest.insert(
                    m.name.clone(),
                    Latest {
                        campaign: m.campaign,
                        sequence: m.sequence,
                        expires_at: m.expires_at,
                        addressed: m.addressees.iter().copied().collect(),
                        stopped,
                    },
                );
            }
        }
    }

    /// For each package whose latest version is unexpired and neither stopped nor halted,
    /// and has no follow-up being prepared: the eligible nodes that are none of its
    /// addressees and do not hold it.
    fn late_joiners(&self, now: Duration) -> Vec<(String, CampaignId, Vec<NodeId>)> {
        let unix_now = self.unix_now(now);
        let eligible = self.eligible();
        let mut out = Vec::new();
        for (package, l) in &self.latest {
            let halted = self.campaigns.values().any(|k| {
                let m = k.monitor.manifest();
                m.name == *package && m.sequence == l.sequence && k.monitor.halted().is_some()
            });
            if l.stopped
                || halted
                || l.expires_at <= unix_now
                || self.following.values().any(|(p, _)| p == package)
            {
                continue;
            }
            let nodes: Vec<NodeId> = eligible
                .iter()
                .filter(|n| {
                    !l.addressed.contains(n)
                        && !self.late_gave_up.contains(&(**n, package.clone()))
                        && self
                            .holds
                            .get(n)
                            .and_then(|h| h.get(package))
                            .is_none_or(|s| *s < l.sequence)
                })
                .copied()
                .collect();
            if !nodes.is_empty() {
                out.push((package.clone(), l.campaign, nodes));
            }
        }
        out
    }

    /// Arms the late-join timer at the end of the settle window if some node waits for a
    /// follow-up, clears it otherwise.
    fn arm_late_join(&mut self, now: Duration) {
        if self.late_joiners(now).is_empty() {
            self.timers.clear(Timer::LateJoin);
        } else {
            self.timers
                .set(Timer::LateJoin, (self.last_change + self.cfg.settle).max(now));
        }
    }

    /// The late-join timer fired: once discovery settled, asks for one follow-up per
    /// package for every late node.
    fn late_join(&mut self, now: Duration) {
        if now < self.last_change + self.cfg.settle {
            self.arm_late_join(now);
            return;
        }
        for (package, of, addressees) in self.late_joiners(now) {
            let (addressees, leaves) = self.ordered_for_relays(addressees);
            self.next_follow_up += 1;
            let drop_id = DropId(DropId::FOLLOW_UP | self.next_follow_up);
            self.following.insert(drop_id, (package, addressees.clone()));
            self.actions.push_back(NmsAction::FollowUp {
                drop_id,
                of,
                addressees,
                leaves,
            });
        }
        self.arm_late_join(now);
    }

    /// Discovery sees `id`: every unexpired campaign that found it unreachable offers it
    /// the campaign again (a direct offer with a one-node part).
    fn node_returned(&mut self, now: Duration, id: NodeId) {
        let unix_now = self.cfg.unix_origin.saturating_add(now.as_secs());
        let mut cs: Vec<CampaignId> = self
            .campaigns
            .iter()
            .filter(|(_, k)| {
                k.monitor.manifest().expires_at > unix_now
                    && matches!(
                        k.monitor.nodes().get(&id).map(|v| &v.status),
                        Some(NodeStatus::Unreachable(_))
                    )
            })
            .map(|(c, _)| *c)
            .collect();
        cs.sort();
        for c in cs {
            let k = self.campaigns.get_mut(&c).expect("listed");
            if k.monitor.returned(now, id) {
                self.drain(now, c);
            }
        }
    }

    fn take_preparing(&mut self, drop_id: DropId) -> Option<PendingDrop> {
        if self.preparing.as_ref().is_some_and(|d| d.id == drop_id) {
            self.preparing.take()
        } else {
            None
        }
    }

    /// Decides whether the drop at the front of the queue is prepared now, given up, or
    /// waits (and for which timers).
    fn try_start(&mut self, now: Duration) {
        loop {
            if self.preparing.is_some() || self.pending.is_empty() {
                self.timers.clear(Timer::Settle);
                self.timers.clear(Timer::DiscoveryTimeout);
                return;
            }
            let nodes = self.eligible();
            let needed = self.cfg.min_nodes.max(1);
            let enough = nodes.len() >= needed;
            let settled_at = self.last_change + self.cfg.settle;
            let settled = now >= settled_at;
            let front = self.pending.front_mut().expect("not empty");
            if enough && settled {
                let d = self.pending.pop_front().expect("not empty");
                let (nodes, leaves) = self.ordered_for_relays(nodes);
                self.actions.push_back(NmsAction::Prepare {
                    drop_id: d.id,
                    addressees: nodes,
                    leaves,
                });
                self.preparing = Some(d);
                continue;
            }
            let give_up = front.at + self.cfg.discovery_timeout;
            if now >= give_up {
                let d = self.pending.pop_front().expect("not empty");
                let tags = if self.cfg.tags.is_empty() {
                    String::new()
                } else {
                    format!(" with tags {:?}", self.cfg.tags)
                };
                let reason = if enough {
                    format!(
                        "{}: discovery did not settle within {:?} (nodes kept appearing or leaving \
                         within --settle {:?}); no campaign started. Drop it again, or lower --settle",
                        d.name, self.cfg.discovery_timeout, self.cfg.settle
                    )
                } else {
                    format!(
                        "{}: only {} node(s) found{tags} within {:?}, {needed} needed; no campaign \
                         started. Check that nodes run and are on this LAN, or lower --min-nodes",
                        d.name,
                        nodes.len(),
                        self.cfg.discovery_timeout
                    )
                };
                self.events.push_back(NmsEvent::DropAbandoned {
                    drop_id: d.id,
                    reason,
                });
                continue;
            }
            if !front.said_waiting {
                front.said_waiting = true;
                let drop_id = front.id;
                self.events.push_back(NmsEvent::DropWaiting {
                    drop_id,
                    found: nodes.len(),
                    needed,
                });
            }
            self.timers.set(Timer::DiscoveryTimeout, give_up);
            if enough {
                self.timers.set(Timer::Settle, settled_at);
            } else {
                // a node appearing is an input, which decides again
                self.timers.clear(Timer::Settle);
            }
            return;
        }
    }

    fn start_campaign(
        &mut self,
        now: Duration,
        d: PendingDrop,
        manifest: Manifest,
        signed: SignedManifest,
        secret: CampaignSecret,
    ) {
        let c = manifest.campaign;
        if self.campaigns.contains_key(&c) {
            self.events.push_back(NmsEvent::DropFailed {
                drop_id: d.id,
                reason: format!("campaign id {} is already in use", hex(&c)),
            });
            return;
        }
        self.events.push_back(NmsEvent::CampaignStarted {
            drop_id: d.id,
            manifest: Box::new(manifest.clone()),
        });
        self.note_campaign(&manifest, false);
        let mut monitor = CampaignMonitor::start(now, manifest, signed, secret, self.cfg.monitor.clone());
        self.seed_relay_hints(&mut monitor);
        self.campaigns.insert(
            c,
            Campaign {
                monitor,
                drop_id: d.id,
                dropped_at: d.at,
                bytes_sent: 0,
                finished: false,
            },
        );
        self.drain(now, c);
        self.supersede_older(now, c);
    }

    /// A newer version of a package supersedes its running campaigns of lower sequences:
    /// each is halted ([`CampaignMonitor::halt`]), so that its nodes not yet installing
    /// stop there and take the new version instead, and it ends with the reason. A
    /// follow-up (same sequence) supersedes nothing.
    fn supersede_older(&mut self, now: Duration, newer: CampaignId) {
        let Some((name, version, sequence)) = self.campaigns.get(&newer).map(|k| {
            let m = k.monitor.manifest();
            (m.name.clone(), m.version.clone(), m.sequence)
        }) else {
            return;
        };
        let mut older: Vec<CampaignId> = self
            .campaigns
            .iter()
            .filter(|(id, k)| {
                **id != newer
                    && !k.monitor.is_done()
                    && k.monitor.halted().is_none()
                    && k.monitor.manifest().name == name
                    && k.monitor.manifest().sequence < sequence
            })
            .map(|(id, _)| *id)
            .collect();
        older.sort();
        for o in older {
            if let Some(k) = self.campaigns.get_mut(&o) {
                k.monitor.supersede(
                    now,
                    format!("superseded by {name} {version} (sequence {sequence})"),
                );
            }
            self.drain(now, o);
        }
    }

    fn control_request(&mut self, now: Duration, from: NodeId, msg: Control) -> RequestId {
        let req = self.request_id();
        let answer = match &msg {
            Control::Probe { nonce, .. } => Control::ProbeReply {
                nonce: *nonce,
                state: None,
            },
            other => match other.campaign().copied() {
                Some(c) if self.campaigns.contains_key(&c) => {
                    if let Control::Progress { relay, .. } = other {
                        // running a campaign of ours: it took an offer, so it trusts us
                        self.trusts_other.remove(&from);
                        if let (Some(h), Some(p)) = (relay, self.fleet.get_mut(&from)) {
                            p.relay = Some(*h);
                        }
                    }
                    let k = self.campaigns.get_mut(&c).expect("checked");
                    let a = k.monitor.request(now, from, other);
                    k.bytes_sent += encode_control(&a).len() as u64;
                    let about = match other {
                        Control::Trouble { node, .. } => *node,
                        _ => from,
                    };
                    self.progress(c, about);
                    self.drain(now, c);
                    a
                }
                _ => Control::Error {
                    reason: "this NMS does not know that campaign".into(),
                },
            },
        };
        self.actions
            .push_back(NmsAction::AnswerControl { req, msg: answer });
        req
    }

    fn chunk_request(&mut self, now: Duration, from: NodeId, request: ChunkRequest) -> RequestId {
        let req = self.request_id();
        let c = request.campaign;
        match self.campaigns.get_mut(&c) {
            Some(k) => {
                self.chunk_requests.insert(req, c);
                k.monitor.chunk_request(now, req, from, &request);
                self.drain(now, c);
            }
            None => self.actions.push_back(NmsAction::AnswerChunk {
                req,
                response: ChunkResponse {
                    campaign: c,
                    index: request.index,
                    status: ChunkStatus::UnknownCampaign,
                    data: Vec::new(),
                },
            }),
        }
        req
    }

    fn request_id(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    fn on_timeout(&mut self, now: Duration) {
        let mut decide = false;
        for t in self.timers.expired(now) {
            match t {
                Timer::Settle | Timer::DiscoveryTimeout => decide = true,
                Timer::LateJoin => self.late_join(now),
                Timer::Campaign(c) => {
                    if let Some(k) = self.campaigns.get_mut(&c) {
                        k.monitor.timeout(now);
                        self.drain(now, c);
                    }
                }
            }
        }
        if decide {
            self.try_start(now);
        }
    }

    /// Says where `node` stands in campaign `c`.
    fn progress(&mut self, c: CampaignId, node: NodeId) {
        if let Some(v) = self.campaigns.get(&c).and_then(|k| k.monitor.nodes().get(&node)) {
            self.events.push_back(NmsEvent::NodeProgress {
                campaign: c,
                node,
                status: v.status.clone(),
                verified: v.verified,
                source: v.source,
                fetched: v.fetched.clone(),
            });
        }
    }

    /// Turns campaign `c`'s monitor actions into endpoint actions and events, then re-arms
    /// its timer.
    fn drain(&mut self, now: Duration, c: CampaignId) {
        let mut done = false;
        let mut bad_news = false;
        while let Some(k) = self.campaigns.get_mut(&c)
            && let Some(a) = k.monitor.poll_action()
        {
            match a {
                MonitorAction::Send { to, msg } => {
                    k.bytes_sent += encode_control(&msg).len() as u64;
                    self.next_outbound += 1;
                    let id = OutboundId(self.next_outbound);
                    let probe = match &msg {
                        Control::Probe { nonce, .. } => Some(*nonce),
                        _ => None,
                    };
                    self.sent.insert(id, (c, to, msg.kind(), probe));
                    self.actions.push_back(NmsAction::SendControl { id, to, msg });
                }
                MonitorAction::Serve(ServeAction::SendChunk { req, index, key, .. }) => {
                    if self.chunk_requests.remove(&req).is_some() {
                        let len = k.monitor.manifest().layout().map_or(0, |l| l.len(index) as usize);
                        k.bytes_sent += (len + TAG_LEN + ChunkResponse::HEADER_LEN + 4) as u64;
                        self.actions.push_back(NmsAction::SendChunk {
                            req,
                            campaign: c,
                            index,
                            key,
                        });
                    }
                }
                MonitorAction::Serve(ServeAction::Answer { req, index, status }) => {
                    if self.chunk_requests.remove(&req).is_some() {
                        k.bytes_sent += (ChunkResponse::HEADER_LEN + 4) as u64;
                        self.actions.push_back(NmsAction::AnswerChunk {
                            req,
                            response: ChunkResponse {
                                campaign: c,
                                index,
                                status,
                                data: Vec::new(),
                            },
                        });
                    }
                }
                MonitorAction::Note(n) => match n {
                    MonitorNote::Installed(node) => self
                        .events
                        .push_back(NmsEvent::NodeInstalled { campaign: c, node }),
                    MonitorNote::Failed(node, reason) => {
                        bad_news = true;
                        self.events.push_back(NmsEvent::NodeFailed {
                            campaign: c,
                            node,
                            reason,
                        })
                    }
                    MonitorNote::AuthRefused(node, reason) => self.events.push_back(NmsEvent::AuthRefused {
                        campaign: c,
                        node,
                        reason,
                    }),
                    MonitorNote::Probing(node, why) => self.events.push_back(NmsEvent::NodeProbing {
                        campaign: c,
                        node,
                        why,
                    }),
                    MonitorNote::Unreachable(node, reason) => {
                        bad_news = true;
                        self.events.push_back(NmsEvent::NodeUnreachable {
                            campaign: c,
                            node,
                            reason,
                        })
                    }
                    MonitorNote::TrustsOther(node, detail) => {
                        self.trusts_other.insert(node, detail.clone());
                        self.events.push_back(NmsEvent::NodeTrustsOtherNms {
                            campaign: c,
                            node,
                            detail,
                        });
                    }
                    MonitorNote::HandedBack(node, nodes) => {
                        self.events.push_back(NmsEvent::RelayHandedBack {
                            campaign: c,
                            node,
                            nodes,
                        })
                    }
                    MonitorNote::Halted(reason) => self
                        .events
                        .push_back(NmsEvent::CampaignHalted { campaign: c, reason }),
                    MonitorNote::Done => done = true,
                },
            }
            if std::mem::take(&mut bad_news) {
                // a halt's own actions and notes follow in this loop
                self.check_threshold(now, c);
            }
        }
        if done {
            self.finish(now, c);
        }
        match self.campaigns.get(&c).and_then(|k| k.monitor.poll_timeout()) {
            Some(at) => self.timers.set(Timer::Campaign(c), at),
            None => self.timers.clear(Timer::Campaign(c)),
        }
    }

    /// Halts campaign `c` if its failures reached `--halt-after`.
    fn check_threshold(&mut self, now: Duration, c: CampaignId) {
        let Some(t) = self.cfg.halt_after else {
            return;
        };
        let Some(k) = self.campaigns.get_mut(&c) else {
            return;
        };
        if k.monitor.halted().is_some() {
            return;
        }
        let n = k.monitor.tally();
        let bad = n.failed + n.unreachable;
        if !t.reached(bad, n.total) {
            return;
        }
        let reason = format!(
            "{bad} of {} addressees failed or are unreachable ({} failed, {} unreachable), at the \
             threshold --halt-after {t}; nodes not yet installed stop here",
            n.total, n.failed, n.unreachable
        );
        k.monitor.halt(now, reason);
    }

    /// Reports campaign `c`'s summary (again, if a node that had come back settled again).
    fn finish(&mut self, now: Duration, c: CampaignId) {
        let Some(k) = self.campaigns.get_mut(&c) else {
            return;
        };
        k.finished = true;
        let m = k.monitor.manifest();
        let started = k.monitor.started();
        let nodes = m
            .addressees
            .iter()
            .map(|id| {
                let v = &k.monitor.nodes()[id];
                NodeOutcome {
                    node: *id,
                    status: v.status.clone(),
                    took: v.finished_at.map(|t| t.saturating_sub(started)),
                }
            })
            .collect();
        let summary = CampaignSummary {
            campaign: c,
            drop_id: k.drop_id,
            package: m.name.clone(),
            version: m.version.clone(),
            sequence: m.sequence,
            size: m.size,
            nodes,
            installed: k.monitor.counts().0,
            halted: k.monitor.halted().map(str::to_string),
            dropped_at: k.dropped_at,
            started,
            finished: k.monitor.finished_at().unwrap_or(now),
            bytes_sent: k.bytes_sent,
        };
        self.actions.push_back(NmsAction::CampaignFinished {
            summary: summary.clone(),
        });
        self.events.push_back(NmsEvent::CampaignDone { summary });
    }

    /// Checks the endpoint's invariants; panics with the first one broken. Run after every
    /// input in this crate's tests.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        for (req, c) in &self.chunk_requests {
            assert!(
                self.campaigns.contains_key(c),
                "chunk request {req:?} belongs to no campaign"
            );
        }
        for (id, (c, ..)) in &self.sent {
            assert!(
                self.campaigns.contains_key(c),
                "send {id:?} belongs to no campaign"
            );
        }
        for (c, k) in &self.campaigns {
            assert_eq!(
                k.finished,
                k.monitor.is_done(),
                "campaign {} is finished in one view and running in the other",
                hex(c)
            );
        }
        if let Some(p) = &self.preparing {
            assert!(
                self.pending.iter().all(|d| d.id != p.id),
                "drop {:?} is both preparing and pending",
                p.id
            );
        }
        if self.pending.is_empty() || self.preparing.is_some() {
            assert!(
                self.timers.get(Timer::Settle).is_none(),
                "settle timer without a waiting drop"
            );
            assert!(
                self.timers.get(Timer::DiscoveryTimeout).is_none(),
                "discovery timer without a waiting drop"
            );
        }
        for k in self.campaigns.values() {
            k.monitor.check_invariants();
        }
        for id in self.eligible() {
            assert!(
                !self.trusts_other.contains_key(&id),
                "{id} trusts another NMS but is eligible"
            );
        }
        for (c, k) in &self.campaigns {
            assert_eq!(
                self.timers.get(Timer::Campaign(*c)),
                k.monitor.poll_timeout(),
                "campaign timer out of step"
            );
        }
    }
}
