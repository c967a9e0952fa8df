//! The NMS's state machine for one campaign: offers to the first tier, serves chunks as
//! the root of the tree, checks authentication codes, collects progress and reports, and
//! knows when the campaign is over.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use crate::chunk::ChunkSet;
use crate::endpoint::timer::Timers;
use crate::gate::RelayHint;
use crate::id::NodeId;
use crate::keys::{AuthClaim, CampaignSecret, HopToken, verify_auth};
use crate::manifest::{CampaignId, Manifest, SignedManifest};
use crate::plan::{Assignment, assignments, children_of, order_for_relays};
use crate::serve::{RequestId, ServeAction, Server};
use crate::wire::{
    ChunkRequest, Control, ControlKind, Holding, InstallOutcome, Offer, Phase, RefuseReason, Verdict,
    clip_reason,
};

/// Where one addressee stands, as the NMS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeStatus {
    /// Not offered yet (its parent has not got to it).
    Waiting,
    /// Accepted an offer; bytes verified so far.
    Receiving,
    Verifying,
    /// Authenticated by the NMS; installing.
    Authenticated,
    Installed,
    Failed(String),
    /// Did not answer the NMS's probes (the reason says what led to them); the part of the
    /// list it had not served was re-planned. Not final: a node that comes back is offered
    /// the campaign again and may still install.
    Unreachable(String),
    /// The campaign was halted (failure threshold, or the operator's cancel) before this
    /// node installed; the reason says why. Final, with one exception: the operator's
    /// resume ([`CampaignMonitor::resume_halted`]) makes a halted node wait again. Nothing
    /// a node or the network does changes it.
    Halted(String),
    /// The node refused the offer as untrusted: it trusts another NMS. Final for this
    /// campaign; the endpoint stops addressing it.
    TrustsOther(String),
}

impl NodeStatus {
    /// A state that never changes again: installed, failed, halted, or trusting another NMS.
    /// The one exception is explicit: the operator's resume of a halted campaign
    /// ([`CampaignMonitor::resume_halted`]) sets its halted nodes back to waiting.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            NodeStatus::Installed
                | NodeStatus::Failed(_)
                | NodeStatus::Halted(_)
                | NodeStatus::TrustsOther(_)
        )
    }

    /// Final, or unreachable: nothing more is expected of the node, so the campaign can end
    /// (an unreachable node may still come back and change its state).
    pub fn is_settled(&self) -> bool {
        self.is_final() || matches!(self, NodeStatus::Unreachable(_))
    }

    /// The reason of a failed, unreachable, halted or refusing node.
    pub fn reason(&self) -> Option<&str> {
        match self {
            NodeStatus::Failed(r)
            | NodeStatus::Unreachable(r)
            | NodeStatus::Halted(r)
            | NodeStatus::TrustsOther(r) => Some(r),
            _ => None,
        }
    }
}

/// The NMS's view of one addressee.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub status: NodeStatus,
    pub verified: u64,
    pub source: Option<NodeId>,
    /// Bytes it verified from each source, as it last reported (empty: it did not say).
    pub fetched: Vec<(NodeId, u64)>,
    pub parent: Option<NodeId>,
    /// When the node last reported.
    pub last_heard: Option<Duration>,
    /// When it reached its final state (or was found unreachable).
    pub finished_at: Option<Duration>,
    /// What it said last about its relaying (its advert before the campaign, then its
    /// progress reports); `None`: nothing.
    pub relay: Option<RelayHint>,
}

/// Something for the operator's view; changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorNote {
    Installed(NodeId),
    Failed(NodeId, String),
    AuthRefused(NodeId, String),
    /// The NMS probes the node (its deadline passed, a relay reported it, or an offer to it
    /// could not be delivered); why.
    Probing(NodeId, String),
    /// The node did not answer the probes; its unserved part was re-planned.
    Unreachable(NodeId, String),
    /// The node refused the offer as untrusted: it trusts another NMS.
    TrustsOther(NodeId, String),
    /// The relay stayed gated past the grace period and handed back this many nodes of
    /// its part, which the NMS offered itself.
    HandedBack(NodeId, usize),
    /// The campaign was halted for every node not yet installed (or installing).
    Halted(String),
    /// Every addressee is settled (installed, failed, halted, refusing, or unreachable).
    /// Said again if a node that had come back settles again.
    Done,
}

/// What the NMS shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorAction {
    Send { to: NodeId, msg: Control },
    Serve(ServeAction),
    Note(MonitorNote),
}

/// How the NMS watches addressees: the deadlines and the probes (see
/// [`CampaignMonitor`] and `docs/reliability.md`, section Oversight).
///
/// A node's deadline is `base + max(min_wait, slack × work / rate)`, where `rate` is the
/// larger of `floor_rate` and the rate observed in this campaign (the median over the
/// nodes that reported progress for at least a second of their verified bytes per
/// second), and:
/// - for a node not offered yet, `base` is when its wait began (the campaign's start, or
///   the NMS's own offer to it) and `work` is `depth × size` (a node at depth `d` may wait
///   for `d - 1` copies before its own, as in store-and-forward);
/// - for a node heard from, `base` is when it was last heard (any request, answer or
///   probe reply) and `work` is the bytes it has not verified yet.
///
/// When the deadline passes, the NMS probes the node: each probe is given `probe_timeout`
/// to be answered, and the next one goes `probe_interval` after a failure; the node is
/// unreachable once a probe fails `probe_window` or more after the first one went out
/// (`hint_window` when a relay's report or an undeliverable offer started the probes).
/// Any answer (or any message from the node) means it is alive.
#[derive(Debug, Clone)]
pub struct Oversight {
    /// The slowest rate (bytes per second) a deadline assumes, also before any progress
    /// is observed. A deadline that is too short for a slow network costs one probe.
    pub floor_rate: u64,
    /// No deadline is shorter than this after its base.
    pub min_wait: Duration,
    /// How many times the time the work needs at `rate` a node is given.
    pub slack: u32,
    /// A probe without an answer after this counts as failed.
    pub probe_timeout: Duration,
    /// The wait after a failed probe before the next one.
    pub probe_interval: Duration,
    /// Probes that fail for this long after the first one make a node unreachable (its
    /// deadline passed).
    pub probe_window: Duration,
    /// The same when a relay's `Trouble` or an undeliverable offer started the probes (the
    /// relay re-planned already, so only the campaign's end waits for the verdict).
    pub hint_window: Duration,
}

impl Default for Oversight {
    fn default() -> Self {
        Oversight {
            floor_rate: 1 << 20,
            min_wait: Duration::from_secs(5),
            slack: 2,
            probe_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(2),
            // a dead relay is unreachable about 5 + 24 s after it was last heard: longer
            // than a daemon's restart (and than the explorer's crashes, at most 20 s, with
            // several probes once it is back), short enough for a campaign to end within
            // 30 s of the last survivor's install
            probe_window: Duration::from_secs(24),
            hint_window: Duration::from_secs(40),
        }
    }
}

/// Tunables of the NMS's campaign machine.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// How long a request for a chunk is held (the NMS has all chunks, so this rarely matters).
    pub hold: Duration,
    /// Deadlines and probes.
    pub oversight: Oversight,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            hold: Duration::from_secs(15),
            oversight: Oversight::default(),
        }
    }
}

/// How many addressees ended how, for the operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub installed: usize,
    pub failed: usize,
    pub unreachable: usize,
    pub halted: usize,
    pub trusts_other: usize,
    pub total: usize,
}

/// Who is expected to offer a node which part, as far as the NMS knows (the plan, updated
/// by its own re-plans and by relays' trouble reports).
#[derive(Debug, Clone)]
struct Slot {
    /// The node's part of the list, itself first.
    part: Vec<NodeId>,
    /// Who offers it (`None`: the NMS).
    parent: Option<NodeId>,
    /// Hops from the NMS (first tier = 1).
    depth: u32,
}

/// What the NMS is waiting for from one node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    /// Nothing (the node is settled): no timer.
    Idle,
    /// The timer is the node's deadline.
    Deadline,
    /// Probing since `first`: probe number `attempt` (`nonce`) is out (`in_flight`, the
    /// timer is its timeout) or the next one is due (the timer is the interval). A failure
    /// at or after `until` makes the node unreachable.
    Probe {
        nonce: u64,
        attempt: u32,
        in_flight: bool,
        why: String,
        first: Duration,
        until: Duration,
    },
}

/// Oversight of one node.
#[derive(Debug, Clone)]
struct Watch {
    slot: Slot,
    check: Check,
    /// The first progress report: when, and bytes verified.
    first: Option<(Duration, u64)>,
    /// Its verified bytes per second since then (once [`MIN_RATE_SPAN`] passed).
    rate: Option<u64>,
    /// When its current wait began: the campaign's start, the NMS's own offer to it, or
    /// the NMS's restart. A deadline's base is this or the last time it was heard.
    since: Duration,
    /// Offers the NMS made to it after a probe or on its return.
    direct_offers: u32,
}

/// A node's rate counts once its progress reports span this long.
const MIN_RATE_SPAN: Duration = Duration::from_millis(200);

/// The observed rate is recomputed at most this often; when it moved by more than a
/// quarter, every deadline is computed again with it.
const RATE_REFRESH: Duration = Duration::from_secs(1);

/// Direct offers to one node after which an alive node that still does not hold the
/// campaign is failed instead of offered again.
const MAX_DIRECT_OFFERS: u32 = 3;

/// The longest deadline computed (a guard against absurd sizes or rates).
const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The NMS's state in one campaign.
///
/// Oversight: every addressee not settled has a named timer (a [`Timers`] table keyed by
/// node): its deadline (see [`Oversight`]), then the probes. A node that answers (or says
/// anything) gets a new deadline; a node that does not is [`NodeStatus::Unreachable`] and
/// the NMS offers the part of the list it had not served (the heads it was to offer that
/// were never heard from) itself. A relay's [`Control::Trouble`] about a child is a hint:
/// the NMS takes note that the relay re-planned the child's part, and probes the child. An
/// alive node that does not hold the campaign when it should is offered it directly.
#[derive(Debug)]
pub struct CampaignMonitor {
    manifest: Manifest,
    signed: SignedManifest,
    secret: CampaignSecret,
    root_token: HopToken,
    addressees: HashSet<NodeId>,
    nodes: HashMap<NodeId, NodeView>,
    offered: HashMap<NodeId, Assignment>,
    server: Server,
    all: ChunkSet,
    actions: VecDeque<MonitorAction>,
    started: Duration,
    finished_at: Option<Duration>,
    /// Halted by the operator's cancel: the NMS serves no chunks either (until a resume).
    cancelled: bool,
    /// How long the root holds a chunk request ([`MonitorConfig::hold`]).
    server_hold: Duration,
    /// A node un-settled after the campaign was done (it came back); `Done` is said again
    /// once every node is settled again.
    reopened: bool,
    cfg: Oversight,
    watches: HashMap<NodeId, Watch>,
    timers: Timers<NodeId>,
    next_nonce: u64,
    /// Offers the NMS made after a probe or on a return: a refusal of one is not a failure
    /// of a node that was running.
    reoffered: HashSet<NodeId>,
    halted: Option<String>,
    /// Re-arm every deadline at the next input (after a restart).
    rearm_all: bool,
    /// The observed rate, and when it was computed (at most once a second).
    rate_cache: Option<(Duration, Option<u64>)>,
    /// The manifest's leaf-only addressees (they relay for no one).
    leaf_only: HashSet<NodeId>,
}

/// The reason given to the nodes of a campaign the operator cancelled.
pub const CANCELLED: &str = "cancelled by the operator";

impl CampaignMonitor {
    /// Starts a campaign: offers go to the first tier at once, and every addressee gets
    /// its deadline.
    pub fn start(
        now: Duration,
        manifest: Manifest,
        signed: SignedManifest,
        secret: CampaignSecret,
        cfg: MonitorConfig,
    ) -> Self {
        let count = manifest.layout().expect("validated manifest").count();
        let root_token = secret.root_token(&manifest.campaign);
        let mut server = Server::new(
            manifest.campaign,
            Vec::new(),
            root_token.clone(),
            manifest.plan.transfer,
            cfg.hold,
        );
        let all = ChunkSet::full(count);
        server.set_complete(&all, &mut Vec::new());
        let nodes = manifest
            .addressees
            .iter()
            .map(|n| {
                (
                    *n,
                    NodeView {
                        status: NodeStatus::Waiting,
                        verified: 0,
                        source: None,
                        parent: None,
                        last_heard: None,
                        finished_at: None,
                        relay: None,
                        fetched: Vec::new(),
                    },
                )
            })
            .collect();
        let mut m = CampaignMonitor {
            addressees: manifest.addressees.iter().copied().collect(),
            signed,
            secret,
            root_token,
            nodes,
            offered: HashMap::new(),
            server,
            all,
            actions: VecDeque::new(),
            started: now,
            finished_at: None,
            cancelled: false,
            server_hold: cfg.hold,
            reopened: false,
            cfg: cfg.oversight,
            watches: HashMap::new(),
            timers: Timers::default(),
            next_nonce: 0,
            reoffered: HashSet::new(),
            halted: None,
            rearm_all: false,
            rate_cache: None,
            leaf_only: HashSet::new(),
            manifest,
        };
        m.leaf_only = m.manifest.leaf_only();
        let first = assignments(&m.manifest.addressees, m.manifest.plan.fanout, &|n| {
            m.leaf_only.contains(n)
        });
        for a in &first {
            m.assign(a, None, 1);
        }
        for n in m.manifest.addressees.clone() {
            m.rearm(n);
        }
        for a in first {
            m.offer(a);
        }
        m
    }

    /// Records that `a.head` is offered `a.part` by `parent` (at `depth`), and what that
    /// means for the whole subtree below it (the plan each node applies to its part).
    fn assign(&mut self, a: &Assignment, parent: Option<NodeId>, depth: u32) {
        let fanout = self.manifest.plan.fanout;
        let mut stack = vec![(a.clone(), parent, depth)];
        while let Some((a, parent, depth)) = stack.pop() {
            for c in children_of(&a.part, fanout, &|n| self.leaf_only.contains(n)) {
                stack.push((c, Some(a.head), depth + 1));
            }
            let slot = Slot {
                part: a.part,
                parent,
                depth,
            };
            match self.watches.get_mut(&a.head) {
                Some(w) => w.slot = slot,
                None => {
                    self.watches.insert(
                        a.head,
                        Watch {
                            slot,
                            check: Check::Idle,
                            first: None,
                            rate: None,
                            since: self.started,
                            direct_offers: 0,
                        },
                    );
                }
            }
        }
    }

    fn offer(&mut self, a: Assignment) {
        if self.halted.is_some() {
            return;
        }
        let offer = Offer {
            manifest: self.signed.clone(),
            part: a.part.clone(),
            path: vec![a.head],
            token: self.root_token.child(&a.head),
        };
        let to = a.head;
        self.offered.insert(to, a);
        self.actions.push_back(MonitorAction::Send {
            to,
            msg: Control::Offer(Box::new(offer)),
        });
    }

    /// The NMS itself takes over `a` (a re-plan, or a direct offer): it offers it now, and
    /// the head's wait starts again.
    fn offer_from_nms(&mut self, now: Duration, a: Assignment) {
        if self.halted.is_some() {
            return;
        }
        self.assign(&a, None, 1);
        let head = a.head;
        self.offer(a);
        if let Some(w) = self.watches.get_mut(&head) {
            w.since = now;
        }
        if !self.status(&head).is_settled() {
            self.rearm(head);
        }
    }

    /// Offers `node` its current part directly (it is alive but does not hold the
    /// campaign). After [`MAX_DIRECT_OFFERS`] the node is failed instead.
    fn direct_offer(&mut self, now: Duration, node: NodeId) {
        let Some(w) = self.watches.get_mut(&node) else {
            return;
        };
        if w.direct_offers >= MAX_DIRECT_OFFERS {
            self.set_status(
                now,
                node,
                NodeStatus::Failed(format!(
                    "answers probes but did not take the campaign after {MAX_DIRECT_OFFERS} offers from the NMS"
                )),
            );
            return;
        }
        w.direct_offers += 1;
        let part = w.slot.part.clone();
        self.reoffered.insert(node);
        self.offer_from_nms(now, Assignment { head: node, part });
    }

    pub fn campaign(&self) -> &CampaignId {
        &self.manifest.campaign
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn nodes(&self) -> &HashMap<NodeId, NodeView> {
        &self.nodes
    }
    pub fn started(&self) -> Duration {
        self.started
    }
    /// When the last addressee settled (installed, failed, halted, refusing, unreachable).
    pub fn finished_at(&self) -> Option<Duration> {
        self.finished_at
    }
    /// True once every addressee settled (it stays true if an unreachable node comes back).
    pub fn is_done(&self) -> bool {
        self.finished_at.is_some()
    }
    /// Why the campaign was halted, if it was.
    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref()
    }
    /// (installed, failed, total).
    pub fn counts(&self) -> (usize, usize, usize) {
        let t = self.tally();
        (t.installed, t.failed, t.total)
    }
    /// How many addressees stand where.
    pub fn tally(&self) -> Tally {
        let mut t = Tally {
            total: self.nodes.len(),
            ..Tally::default()
        };
        for v in self.nodes.values() {
            match v.status {
                NodeStatus::Installed => t.installed += 1,
                NodeStatus::Failed(_) => t.failed += 1,
                NodeStatus::Unreachable(_) => t.unreachable += 1,
                NodeStatus::Halted(_) => t.halted += 1,
                NodeStatus::TrustsOther(_) => t.trusts_other += 1,
                _ => {}
            }
        }
        t
    }
    /// Chunks the NMS served itself.
    pub fn served_chunks(&self) -> u64 {
        self.server.served_chunks
    }
    /// When `node`'s deadline or probe timer fires, if one is set.
    pub fn watch_timer(&self, node: &NodeId) -> Option<Duration> {
        self.timers.get(*node)
    }
    /// True while the NMS is probing `node`.
    pub fn probing(&self, node: &NodeId) -> bool {
        self.watches
            .get(node)
            .is_some_and(|w| matches!(w.check, Check::Probe { .. }))
    }

    pub fn poll_action(&mut self) -> Option<MonitorAction> {
        self.actions.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Duration> {
        match (self.server.next_timeout(), self.timers.next()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn timeout(&mut self, now: Duration) {
        self.catch_up(now);
        let mut out = Vec::new();
        self.server.timeout(now, &mut out);
        self.push_serve(out);
        for node in self.timers.expired(now) {
            self.watch_fired(now, node);
        }
    }

    pub fn chunk_request(&mut self, now: Duration, req: RequestId, from: NodeId, r: &ChunkRequest) {
        self.catch_up(now);
        let mut out = Vec::new();
        let addressees = &self.addressees;
        self.server
            .request(now, req, from, r, &self.all, |n| addressees.contains(n), &mut out);
        self.push_serve(out);
    }

    fn push_serve(&mut self, out: Vec<ServeAction>) {
        self.actions.extend(out.into_iter().map(MonitorAction::Serve));
    }

    fn status(&self, n: &NodeId) -> &NodeStatus {
        &self.nodes[n].status
    }

    /// A control request from `from` about this campaign; returns the answer.
    pub fn request(&mut self, now: Duration, from: NodeId, msg: &Control) -> Control {
        self.catch_up(now);
        if !self.addressees.contains(&from) {
            return Control::Error {
                reason: format!("{from} is not an addressee of this campaign"),
            };
        }
        if let Some(v) = self.nodes.get_mut(&from) {
            v.last_heard = Some(now);
        }
        let answer = match msg {
            Control::AuthRequest { path, root, code, .. } => {
                if let (Some(why), NodeStatus::Halted(_)) = (&self.halted, self.status(&from)) {
                    let reason = clip_reason(format!("the campaign was halted: {why}"));
                    self.actions
                        .push_back(MonitorAction::Note(MonitorNote::AuthRefused(
                            from,
                            reason.clone(),
                        )));
                    return Control::AuthReply {
                        campaign: self.manifest.campaign,
                        ok: false,
                        reason,
                    };
                }
                let addressees = &self.addressees;
                let r = verify_auth(
                    &self.secret,
                    &self.manifest.campaign,
                    &self.manifest.root,
                    |n| addressees.contains(n),
                    AuthClaim {
                        sender: &from,
                        path,
                        root,
                        code,
                    },
                );
                let (ok, reason) = match r {
                    Ok(()) => {
                        self.set_status(now, from, NodeStatus::Authenticated);
                        (true, String::new())
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        self.actions
                            .push_back(MonitorAction::Note(MonitorNote::AuthRefused(
                                from,
                                reason.clone(),
                            )));
                        (false, reason)
                    }
                };
                Control::AuthReply {
                    campaign: self.manifest.campaign,
                    ok,
                    reason,
                }
            }
            Control::Progress {
                phase,
                verified,
                source,
                parent,
                relay,
                fetched,
                ..
            } => {
                let verified = (*verified).min(self.manifest.size);
                let mut gate_moved = false;
                if let Some(v) = self.nodes.get_mut(&from) {
                    v.verified = verified;
                    v.source = *source;
                    if !fetched.is_empty() {
                        // bounded: a node has at most its path's sources and the NMS
                        v.fetched = fetched
                            .iter()
                            .take(crate::limits::MAX_PATH + 1)
                            .copied()
                            .collect();
                    }
                    v.parent = *parent;
                    if relay.is_some() {
                        let gated = |h: Option<RelayHint>| h == Some(RelayHint::Gated);
                        gate_moved = gated(v.relay) != gated(*relay);
                        v.relay = *relay;
                    }
                }
                if gate_moved {
                    // the nodes waiting below it wait a grace period more, or no longer
                    let waiting: Vec<NodeId> = self
                        .watches
                        .iter()
                        .filter(|(n, w)| w.check == Check::Deadline && *self.status(n) == NodeStatus::Waiting)
                        .map(|(n, _)| *n)
                        .collect();
                    for n in waiting {
                        self.rearm(n);
                    }
                }
                self.observe(now, from, verified);
                self.refresh_rate(now);
                let status = match phase {
                    Phase::Receiving => Some(NodeStatus::Receiving),
                    Phase::Verifying => Some(NodeStatus::Verifying),
                    _ => None,
                };
                if let Some(s) = status {
                    self.set_status(now, from, s);
                }
                Control::Ack
            }
            Control::InstallReport { outcome, .. } => {
                let status = match outcome {
                    InstallOutcome::Installed => NodeStatus::Installed,
                    InstallOutcome::Failed { reason } => NodeStatus::Failed(reason.clone()),
                };
                if status == NodeStatus::Installed
                    && let Some(v) = self.nodes.get_mut(&from)
                {
                    v.verified = self.manifest.size;
                }
                self.set_status(now, from, status);
                Control::Ack
            }
            Control::Trouble { node, reason, .. } => {
                self.trouble(now, from, *node, reason);
                Control::Ack
            }
            Control::HandBack { nodes, .. } => {
                self.hand_back(now, from, nodes);
                Control::Ack
            }
            other => Control::Error {
                reason: format!("unexpected {:?} for the NMS", other.kind()),
            },
        };
        self.heard(from);
        answer
    }

    /// A relay's report that its offer to `node` failed: it re-planned the rest of
    /// `node`'s part. A hint, never a verdict: the NMS records the re-plan and probes
    /// `node` itself.
    fn trouble(&mut self, now: Duration, from: NodeId, node: NodeId, reason: &str) {
        if !self.addressees.contains(&node) || node == from {
            return;
        }
        let w = self.watches.get_mut(&node).expect("every addressee is watched");
        if w.slot.parent == Some(from) && w.slot.part.len() > 1 {
            let rest = w.slot.part[1..].to_vec();
            w.slot.part.truncate(1);
            let depth = w.slot.depth;
            self.assign(
                &Assignment {
                    head: rest[0],
                    part: rest,
                },
                Some(from),
                depth,
            );
        }
        if !self.status(&node).is_final() {
            self.start_probe(
                now,
                node,
                clip_reason(format!("reported by {from}: {reason}")),
                true,
            );
        }
    }

    /// What the NMS knows of `node`'s relaying before it reports (its advert): used when
    /// the NMS re-plans a part.
    pub fn set_relay_hint(&mut self, node: NodeId, hint: RelayHint) {
        if let Some(v) = self.nodes.get_mut(&node)
            && v.relay.is_none()
        {
            v.relay = Some(hint);
        }
    }

    /// A relay stayed gated past the grace period and hands back `nodes`, which it never
    /// offered. The NMS offers those of them that are in the relay's part and still
    /// waiting itself, re-planned so that nodes known to relay head the new parts.
    fn hand_back(&mut self, now: Duration, from: NodeId, nodes: &[NodeId]) {
        let Some(w) = self.watches.get(&from) else {
            return;
        };
        let mut seen = HashSet::new();
        let back: Vec<NodeId> = nodes
            .iter()
            .filter(|n| {
                **n != from
                    && w.slot.part.contains(n)
                    && *self.status(n) == NodeStatus::Waiting
                    && !self.offered.contains_key(n)
                    && seen.insert(**n)
            })
            .copied()
            .collect();
        if back.is_empty() {
            return;
        }
        if let Some(w) = self.watches.get_mut(&from) {
            w.slot.part.retain(|n| !seen.contains(n));
        }
        self.actions
            .push_back(MonitorAction::Note(MonitorNote::HandedBack(from, back.len())));
        // the nodes known to be gated get a part of their own; the others are planned
        let fanout = self.manifest.plan.fanout;
        let (gated, relaying): (Vec<NodeId>, Vec<NodeId>) = back
            .iter()
            .partition(|n| self.nodes[*n].relay == Some(RelayHint::Gated));
        let ordered = order_for_relays(&relaying, fanout, |n| self.nodes[n].relay.unwrap_or_default());
        let mut parts = assignments(&ordered, fanout, &|n| self.leaf_only.contains(n));
        parts.extend(gated.iter().map(|g| Assignment {
            head: *g,
            part: vec![*g],
        }));
        for a in parts {
            if self.halted.is_some() {
                // offered by a resume, from its first waiting node
                self.assign(&a, None, 1);
                self.offered.insert(a.head, a);
            } else {
                self.offer_from_nms(now, a);
            }
        }
        // their wait starts again now, under the new plan
        for n in back {
            if let Some(w) = self.watches.get_mut(&n) {
                w.since = now;
            }
            if self.halted.is_none() && !self.status(&n).is_settled() {
                self.rearm(n);
            }
        }
    }

    /// The answer to a request the NMS sent (offers and probes).
    pub fn response(&mut self, now: Duration, from: NodeId, msg: Control) {
        self.catch_up(now);
        if !self.addressees.contains(&from) {
            return;
        }
        match msg {
            Control::OfferReply { verdict, .. } => match verdict {
                Verdict::Accept => {
                    self.reoffered.remove(&from);
                    if matches!(
                        self.status(&from),
                        NodeStatus::Waiting | NodeStatus::Unreachable(_)
                    ) {
                        self.set_status(now, from, NodeStatus::Receiving);
                    }
                    if let Some(v) = self.nodes.get_mut(&from) {
                        v.last_heard = Some(now);
                    }
                    self.heard(from);
                }
                Verdict::Refuse { reason, detail } => self.refused(now, from, reason, &detail),
            },
            // any answer while probing shows the node alive (also a late one to an earlier
            // probe: the transport authenticated the sender)
            Control::ProbeReply { state, .. } if self.probing(&from) => {
                let state = state
                    .filter(|s| s.campaign == self.manifest.campaign)
                    .map(|s| s.holding);
                self.probe_answered(now, from, state);
            }
            // an answer, so the node is alive; what it holds is unknown
            Control::Error { .. } if self.probing(&from) => self.probe_answered(now, from, None),
            _ => {}
        }
    }

    /// `from` refused an offer of the NMS.
    fn refused(&mut self, now: Duration, from: NodeId, reason: RefuseReason, detail: &str) {
        let again = self.reoffered.remove(&from);
        if reason == RefuseReason::Untrusted {
            let why = clip_reason(format!(
                "trusts another NMS (refused the offer as untrusted): {detail}"
            ));
            self.actions
                .push_back(MonitorAction::Note(MonitorNote::TrustsOther(from, why.clone())));
            self.first_tier_failed(now, from, NodeStatus::TrustsOther(why));
            return;
        }
        if reason == RefuseReason::Installed {
            // it holds this version already (e.g. it got it from an earlier campaign): no
            // download, counted as installed; the rest of its part is re-planned
            self.first_tier_failed(now, from, NodeStatus::Installed);
            return;
        }
        if again && *self.status(&from) != NodeStatus::Waiting {
            // a node that ran the campaign refused it again (e.g. it finished it): its own
            // report decides; its part was re-planned already
            self.offered.remove(&from);
            return;
        }
        self.first_tier_failed(
            now,
            from,
            NodeStatus::Failed(clip_reason(format!("refused the offer ({reason:?}): {detail}"))),
        );
    }

    /// The NMS restarted with this campaign's state from its disk. The requests it had
    /// sent died with the old process, so every first-tier node that had not answered its
    /// offer is offered it again; one that already holds the campaign takes the repeat as
    /// a duplicate and accepts. Probes in flight died too, and nodes could not report while
    /// the NMS was down: at the next input (which brings the time), every node not settled
    /// gets a fresh deadline from then.
    pub fn restarted(&mut self) {
        let waiting: Vec<Assignment> = self
            .manifest
            .addressees
            .iter()
            .filter_map(|n| self.offered.get(n))
            .filter(|a| {
                self.nodes
                    .get(&a.head)
                    .is_some_and(|v| v.status == NodeStatus::Waiting)
            })
            .cloned()
            .collect();
        for a in waiting {
            self.offer(a);
        }
        self.rearm_all = true;
    }

    /// Called first by every input with the time: applies a pending restart.
    fn catch_up(&mut self, now: Duration) {
        if !std::mem::take(&mut self.rearm_all) {
            return;
        }
        for n in self.manifest.addressees.clone() {
            if let Some(w) = self.watches.get_mut(&n) {
                w.since = now;
            }
            if self.status(&n).is_settled() {
                self.stop_watch(n);
            } else {
                self.rearm(n);
            }
        }
    }

    /// A campaign restored after an NMS restart, from what the shell saved: the signed
    /// manifest, the secret and each addressee's last known status and verified bytes
    /// (addressees not in `saved` are [`NodeStatus::Waiting`]). Nothing is signed again and
    /// the first offers are not repeated as such: the first tier's assignments are replayed
    /// past heads that had failed, and [`CampaignMonitor::restarted`] offers again to the
    /// heads that had not answered (a node holding the campaign takes it as a duplicate).
    /// If every addressee was already final, the campaign ends at once.
    pub fn resume(
        now: Duration,
        manifest: Manifest,
        signed: SignedManifest,
        secret: CampaignSecret,
        cfg: MonitorConfig,
        saved: &[(NodeId, NodeStatus, u64)],
    ) -> Self {
        let mut m = Self::start(now, manifest, signed, secret, cfg);
        // the first offers went out before the restart
        m.actions.clear();
        let size = m.manifest.size;
        for (node, status, verified) in saved {
            if let Some(v) = m.nodes.get_mut(node) {
                v.verified = (*verified).min(size);
                if status.is_final() {
                    v.finished_at = Some(now);
                }
                v.status = status.clone();
            }
        }
        // the first tier as it stood: a failed head had handed its part to the next node
        let heads: Vec<NodeId> = m.offered.keys().copied().collect();
        for head in heads {
            let mut a = m.offered.remove(&head).expect("listed");
            while m
                .nodes
                .get(&a.head)
                .is_some_and(|v| matches!(v.status, NodeStatus::Failed(_)))
                && a.part.len() > 1
            {
                a = Assignment {
                    head: a.part[1],
                    part: a.part[1..].to_vec(),
                };
            }
            m.offered.insert(a.head, a);
        }
        if m.nodes.values().all(|v| v.status.is_final()) {
            m.finished_at = Some(now);
            m.actions.push_back(MonitorAction::Note(MonitorNote::Done));
        } else {
            m.restarted();
        }
        m
    }

    /// A newer version of the package started: the campaign is halted
    /// ([`CampaignMonitor::halt`]) with `reason` and the NMS stops serving it (requests
    /// are answered `Gated`); the nodes stop it when they take the newer one.
    pub fn supersede(&mut self, now: Duration, reason: String) {
        self.halt(now, reason);
        let mut out = Vec::new();
        self.server.close(&mut out);
        self.push_serve(out);
    }

    /// The operator cancels the campaign: it is halted ([`CampaignMonitor::halt`]) with
    /// the reason [`CANCELLED`] (every node not installed or installing becomes
    /// [`NodeStatus::Halted`], its deadline and probes stop, nothing more is offered and
    /// its authentication is refused), and the NMS stops serving chunks too (held
    /// requests and later ones are answered `Gated`). A node already authenticated may
    /// still finish its install. If the failure threshold had halted it already, only the
    /// serving stops. Returns the addressees this call halted.
    pub fn cancel(&mut self, now: Duration) -> Vec<NodeId> {
        self.catch_up(now);
        let before: HashSet<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, v)| matches!(v.status, NodeStatus::Halted(_)))
            .map(|(n, _)| *n)
            .collect();
        self.halt(now, CANCELLED.into());
        self.cancelled = true;
        let mut out = Vec::new();
        self.server.close(&mut out);
        self.push_serve(out);
        self.manifest
            .addressees
            .iter()
            .filter(|n| matches!(self.status(n), NodeStatus::Halted(_)) && !before.contains(n))
            .copied()
            .collect()
    }

    /// The operator resumes a halted campaign (cancelled by the operator, or halted by the
    /// failure threshold). This is the one way a final status changes: every
    /// [`NodeStatus::Halted`] addressee waits again (keeping its verified bytes) with a new
    /// deadline, the NMS serves again, each part the NMS offered is offered again from its
    /// first waiting node on, and a waiting node in none of them is offered a one-node
    /// part itself (a node that holds the campaign takes a repeat as a duplicate). Returns
    /// the addressees that wait again (none, and nothing changes, if it was not halted).
    pub fn resume_halted(&mut self, now: Duration) -> Vec<NodeId> {
        self.catch_up(now);
        if self.halted.is_none() {
            return Vec::new();
        }
        self.halted = None;
        if std::mem::take(&mut self.cancelled) {
            let mut server = Server::new(
                self.manifest.campaign,
                Vec::new(),
                self.root_token.clone(),
                self.manifest.plan.transfer,
                self.server_hold,
            );
            server.set_complete(&self.all, &mut Vec::new());
            self.server = server;
        }
        let mut reopened = Vec::new();
        for n in &self.manifest.addressees {
            if let Some(v) = self.nodes.get_mut(n)
                && matches!(v.status, NodeStatus::Halted(_))
            {
                v.status = NodeStatus::Waiting;
                v.finished_at = None;
                reopened.push(*n);
            }
        }
        if reopened.is_empty() {
            return reopened;
        }
        self.finished_at = None;
        self.reopened = false;
        self.reoffer_reopened(now, &reopened);
        reopened
    }

    /// Offers the reopened nodes again: each part the NMS offered, from its first waiting
    /// node on, then each reopened node not in one of those a one-node part. Every
    /// reopened node's wait starts now, with a deadline.
    fn reoffer_reopened(&mut self, now: Duration, reopened: &[NodeId]) {
        let mut heads: Vec<NodeId> = self.offered.keys().copied().collect();
        heads.sort_unstable();
        let mut covered = HashSet::new();
        for head in heads {
            let Some(a) = self.offered.get(&head) else {
                continue;
            };
            let first = a.part.iter().position(|n| *self.status(n) == NodeStatus::Waiting);
            if let Some(i) = first {
                let a = self.offered.remove(&head).expect("listed");
                let part = a.part[i..].to_vec();
                covered.extend(part.iter().copied());
                self.offer_from_nms(now, Assignment { head: part[0], part });
            }
        }
        for n in reopened {
            if let Some(w) = self.watches.get_mut(n) {
                w.since = now;
                w.direct_offers = 0;
            }
            if !covered.contains(n) {
                if let Some(w) = self.watches.get_mut(n) {
                    w.slot.part = vec![*n];
                }
                self.offer_from_nms(
                    now,
                    Assignment {
                        head: *n,
                        part: vec![*n],
                    },
                );
            }
            self.rearm(*n);
        }
    }

    /// A halted campaign (cancelled by the operator, or halted by the failure threshold)
    /// taken back after an NMS restart to be resumed: [`CampaignMonitor::resume`] from what
    /// the shell saved, then its halted addressees wait again and are offered as
    /// [`CampaignMonitor::resume_halted`] would. Returns them too.
    pub fn resume_saved_halted(
        now: Duration,
        manifest: Manifest,
        signed: SignedManifest,
        secret: CampaignSecret,
        cfg: MonitorConfig,
        saved: &[(NodeId, NodeStatus, u64)],
    ) -> (Self, Vec<NodeId>) {
        let reopened: Vec<NodeId> = manifest
            .addressees
            .iter()
            .filter(|n| {
                saved
                    .iter()
                    .any(|(m, st, _)| m == *n && matches!(st, NodeStatus::Halted(_)))
            })
            .copied()
            .collect();
        // the halted wait again: a first-tier head among them keeps its part
        let saved: Vec<(NodeId, NodeStatus, u64)> = saved
            .iter()
            .map(|(n, st, v)| {
                let st = if matches!(st, NodeStatus::Halted(_)) {
                    NodeStatus::Waiting
                } else {
                    st.clone()
                };
                (*n, st, *v)
            })
            .collect();
        let mut m = Self::resume(now, manifest, signed, secret, cfg, &saved);
        if !reopened.is_empty() {
            // offered from each part's first waiting node, not only to waiting heads
            m.actions.clear();
            m.catch_up(now);
            m.reoffer_reopened(now, &reopened);
        }
        (m, reopened)
    }

    /// A request the NMS sent could not be delivered.
    pub fn send_failed(&mut self, now: Duration, to: NodeId, kind: ControlKind, reason: &str) {
        self.catch_up(now);
        if !self.addressees.contains(&to) {
            return;
        }
        match kind {
            ControlKind::Offer => {
                self.reoffered.remove(&to);
                // the rest of its part cannot wait: it goes to the next head now, and the
                // node itself is probed
                if let Some(a) = self.offered.remove(&to) {
                    self.replan_rest(now, &a);
                }
                if !self.status(&to).is_final() {
                    self.start_probe(
                        now,
                        to,
                        clip_reason(format!("the offer could not be delivered: {reason}")),
                        true,
                    );
                }
            }
            ControlKind::Probe => {
                if matches!(&self.watches[&to].check, Check::Probe { in_flight: true, .. }) {
                    self.probe_failed(now, to, reason);
                }
            }
            _ => {}
        }
    }

    /// The probe `nonce` to `to` could not be delivered. Unlike [`Self::send_failed`], a
    /// late failure of an older probe is told apart from the current one's (and ignored).
    pub fn probe_send_failed(&mut self, now: Duration, to: NodeId, nonce: u64, reason: &str) {
        self.catch_up(now);
        let current = self.watches.get(&to).is_some_and(
            |w| matches!(&w.check, Check::Probe { nonce: n, in_flight: true, .. } if *n == nonce),
        );
        if current {
            self.probe_failed(now, to, reason);
        }
    }

    /// The NMS's offer of `a` is off the table: `a.head` keeps a one-node part and the
    /// rest goes to the next node on it, offered by the NMS.
    fn replan_rest(&mut self, now: Duration, a: &Assignment) {
        if self.halted.is_some() {
            // nothing is offered while halted: the part stays the NMS's, so that a resume
            // offers it again from its first waiting node
            self.offered.insert(a.head, a.clone());
            return;
        }
        if let Some(w) = self.watches.get_mut(&a.head) {
            w.slot.part = vec![a.head];
        }
        let rest = &a.part[1..];
        if let Some(&next) = rest.first() {
            self.offer_from_nms(
                now,
                Assignment {
                    head: next,
                    part: rest.to_vec(),
                },
            );
        }
    }

    fn first_tier_failed(&mut self, now: Duration, head: NodeId, status: NodeStatus) {
        self.set_status(now, head, status);
        if let Some(a) = self.offered.remove(&head) {
            self.replan_rest(now, &a);
        }
    }

    /// Discovery saw `node` again. If it is unreachable here and the campaign was not
    /// halted, the NMS offers it the campaign directly with a one-node part (its part was
    /// re-planned when it went away); returns true if it did.
    pub fn returned(&mut self, now: Duration, node: NodeId) -> bool {
        self.catch_up(now);
        if self.halted.is_some()
            || !matches!(
                self.nodes.get(&node).map(|v| &v.status),
                Some(NodeStatus::Unreachable(_))
            )
        {
            return false;
        }
        if self.probing(&node) || self.reoffered.contains(&node) {
            // already being checked, or offered and not answered yet
            return false;
        }
        let w = self.watches.get_mut(&node).expect("watched");
        w.slot.part = vec![node];
        w.direct_offers = 0;
        self.reoffered.insert(node);
        self.offer_from_nms(
            now,
            Assignment {
                head: node,
                part: vec![node],
            },
        );
        true
    }

    /// Halts the campaign for every node that has not installed and is not installing:
    /// each becomes [`NodeStatus::Halted`] with `reason`, the NMS offers nothing more and
    /// refuses their authentication (so they cannot install).
    pub fn halt(&mut self, now: Duration, reason: String) {
        self.catch_up(now);
        if self.halted.is_some() {
            return;
        }
        let reason = clip_reason(reason);
        self.halted = Some(reason.clone());
        self.actions
            .push_back(MonitorAction::Note(MonitorNote::Halted(reason.clone())));
        for n in self.manifest.addressees.clone() {
            let halt = matches!(
                self.status(&n),
                NodeStatus::Waiting
                    | NodeStatus::Receiving
                    | NodeStatus::Verifying
                    | NodeStatus::Unreachable(_)
            );
            if halt {
                self.set_status(now, n, NodeStatus::Halted(reason.clone()));
            }
        }
    }

    /// Any message from `node` shows it alive: a probe stops, its deadline starts again.
    fn heard(&mut self, node: NodeId) {
        if self.status(&node).is_settled() {
            if self.status(&node).is_final() {
                self.stop_watch(node);
            }
            return;
        }
        self.rearm(node);
    }

    /// Sets `node`'s deadline (see [`Oversight`]) from the later of when it was last
    /// heard and when its current wait began.
    fn rearm(&mut self, node: NodeId) {
        let at = self.deadline(node);
        if let Some(w) = self.watches.get_mut(&node) {
            w.check = Check::Deadline;
            self.timers.set(node, at);
        }
    }

    fn stop_watch(&mut self, node: NodeId) {
        if let Some(w) = self.watches.get_mut(&node) {
            w.check = Check::Idle;
        }
        self.timers.clear(node);
    }

    fn deadline(&self, node: NodeId) -> Duration {
        let rate = self.assumed_rate().max(1);
        let size = self.manifest.size;
        let v = &self.nodes[&node];
        let since = self.watches.get(&node).map_or(self.started, |w| w.since);
        let base = v.last_heard.map_or(since, |h| h.max(since));
        let work = if v.status == NodeStatus::Waiting {
            let depth = self.watches.get(&node).map_or(1, |w| w.slot.depth.max(1));
            u128::from(size) * u128::from(depth)
        } else {
            u128::from(size.saturating_sub(v.verified))
        };
        let nanos = work * u128::from(self.cfg.slack) * 1_000_000_000 / u128::from(rate);
        let need = Duration::from_nanos(nanos.min(MAX_WAIT.as_nanos()) as u64);
        // a gated relay above it may hold its part for the grace period, then hand it back
        let held = if v.status == NodeStatus::Waiting && self.below_gated(node) {
            Duration::from_secs(u64::from(self.manifest.relay.grace_secs))
        } else {
            Duration::ZERO
        };
        base + need.max(self.cfg.min_wait) + held
    }

    /// Whether a node that offers `node` its part, or one above it, said it is gated.
    fn below_gated(&self, node: NodeId) -> bool {
        let mut at = node;
        for _ in 0..crate::limits::MAX_PATH {
            match self.watches.get(&at).and_then(|w| w.slot.parent) {
                Some(p)
                    if self
                        .nodes
                        .get(&p)
                        .is_some_and(|v| v.relay == Some(RelayHint::Gated)) =>
                {
                    return true;
                }
                Some(p) => at = p,
                None => return false,
            }
        }
        false
    }

    /// The rate deadlines assume: the larger of the floor and the observed rate.
    fn assumed_rate(&self) -> u64 {
        let observed = self.rate_cache.and_then(|(_, r)| r).unwrap_or(0);
        observed.max(self.cfg.floor_rate)
    }

    /// Recomputes the observed rate (at most every [`RATE_REFRESH`]); when it moved by
    /// more than a quarter, every pending deadline is computed again with it (deadlines
    /// set before any rate was known assumed the floor).
    fn refresh_rate(&mut self, now: Duration) {
        if self.rate_cache.is_some_and(|(at, _)| now < at + RATE_REFRESH) {
            return;
        }
        let before = self.assumed_rate();
        let mut rates: Vec<u64> = self.watches.values().filter_map(|w| w.rate).collect();
        rates.sort_unstable();
        let median = (!rates.is_empty()).then(|| rates[rates.len() / 2]);
        self.rate_cache = Some((now, median));
        let after = self.assumed_rate();
        let moved = u128::from(before.abs_diff(after)) * 4 > u128::from(before);
        if moved {
            let pending: Vec<NodeId> = self
                .manifest
                .addressees
                .iter()
                .filter(|n| self.watches[*n].check == Check::Deadline)
                .copied()
                .collect();
            for n in pending {
                self.rearm(n);
            }
        }
    }

    /// A progress report: `node` verified `verified` bytes at `now`.
    fn observe(&mut self, now: Duration, node: NodeId, verified: u64) {
        let Some(w) = self.watches.get_mut(&node) else {
            return;
        };
        match w.first {
            None => w.first = Some((now, verified)),
            Some((t0, v0)) => {
                let dt = now.saturating_sub(t0);
                if dt >= MIN_RATE_SPAN && verified > v0 {
                    let r = u128::from(verified - v0) * 1_000_000_000 / dt.as_nanos().max(1);
                    w.rate = Some(r.min(u128::from(u64::MAX)) as u64);
                }
            }
        }
    }

    /// Probes `node` (its deadline passed; or, with `hint`, a relay reported it or an
    /// offer to it could not be delivered), unless a probe of it is already under way.
    fn start_probe(&mut self, now: Duration, node: NodeId, why: String, hint: bool) {
        if self.status(&node).is_final() || self.probing(&node) {
            return;
        }
        self.actions
            .push_back(MonitorAction::Note(MonitorNote::Probing(node, why.clone())));
        let window = if hint {
            self.cfg.hint_window
        } else {
            self.cfg.probe_window
        };
        self.send_probe(now, node, 1, why, now, now + window);
    }

    fn send_probe(
        &mut self,
        now: Duration,
        node: NodeId,
        attempt: u32,
        why: String,
        first: Duration,
        until: Duration,
    ) {
        self.next_nonce += 1;
        let nonce = self.next_nonce;
        if let Some(w) = self.watches.get_mut(&node) {
            w.check = Check::Probe {
                nonce,
                attempt,
                in_flight: true,
                why,
                first,
                until,
            };
        }
        self.timers.set(node, now + self.cfg.probe_timeout);
        self.actions.push_back(MonitorAction::Send {
            to: node,
            msg: Control::Probe {
                nonce,
                campaign: Some(self.manifest.campaign),
            },
        });
    }

    fn watch_fired(&mut self, now: Duration, node: NodeId) {
        let Some(w) = self.watches.get(&node) else {
            return;
        };
        match w.check.clone() {
            Check::Idle => {}
            Check::Deadline => {
                let since = self.nodes[&node].last_heard.map_or_else(
                    || "never heard from".to_string(),
                    |t| format!("silent for {:.1} s", now.saturating_sub(t).as_secs_f64()),
                );
                self.start_probe(now, node, format!("deadline passed ({since})"), false);
            }
            Check::Probe { in_flight: true, .. } => {
                let t = self.cfg.probe_timeout;
                self.probe_failed(now, node, &format!("no answer within {t:?}"));
            }
            Check::Probe {
                attempt,
                in_flight: false,
                why,
                first,
                until,
                ..
            } => self.send_probe(now, node, attempt + 1, why, first, until),
        }
    }

    fn probe_failed(&mut self, now: Duration, node: NodeId, reason: &str) {
        let Some(w) = self.watches.get_mut(&node) else {
            return;
        };
        let Check::Probe {
            attempt,
            in_flight,
            why,
            first,
            until,
            ..
        } = &mut w.check
        else {
            return;
        };
        if now >= *until {
            let status = NodeStatus::Unreachable(clip_reason(format!(
                "{why}; {attempt} probe(s) failed over {:.1} s, the last: {reason}",
                now.saturating_sub(*first).as_secs_f64()
            )));
            self.stop_watch(node);
            self.unreachable(now, node, status);
            return;
        }
        *in_flight = false;
        self.timers.set(node, now + self.cfg.probe_interval);
    }

    /// `node` answered a probe: it is alive. `state` is what it holds of this campaign
    /// (`None`: it did not say).
    fn probe_answered(&mut self, now: Duration, node: NodeId, state: Option<Holding>) {
        if let Some(v) = self.nodes.get_mut(&node) {
            v.last_heard = Some(now);
        }
        match state {
            Some(Holding::Running { verified, .. }) => {
                let verified = verified.min(self.manifest.size);
                if let Some(v) = self.nodes.get_mut(&node) {
                    v.verified = v.verified.max(verified);
                }
                if matches!(
                    self.status(&node),
                    NodeStatus::Waiting | NodeStatus::Unreachable(_)
                ) {
                    self.set_status(now, node, NodeStatus::Receiving);
                }
            }
            Some(Holding::Opening | Holding::Finished) => {}
            Some(Holding::No) if !self.status(&node).is_final() => self.direct_offer(now, node),
            None if matches!(
                self.status(&node),
                NodeStatus::Waiting | NodeStatus::Unreachable(_)
            ) =>
            {
                self.direct_offer(now, node)
            }
            _ => {}
        }
        if self.status(&node).is_settled() {
            self.stop_watch(node);
        } else {
            self.rearm(node);
        }
    }

    /// `node` did not answer: unreachable, and the part of the list it had not served
    /// (the heads it was to offer that were never heard from) is offered by the NMS.
    fn unreachable(&mut self, now: Duration, node: NodeId, status: NodeStatus) {
        if let NodeStatus::Unreachable(r) = &status {
            self.actions
                .push_back(MonitorAction::Note(MonitorNote::Unreachable(node, r.clone())));
        }
        self.set_status(now, node, status);
        self.offered.remove(&node);
        self.reoffered.remove(&node);
        let heads: Vec<NodeId> = self
            .manifest
            .addressees
            .iter()
            .filter(|n| self.watches[*n].slot.parent == Some(node))
            .copied()
            .collect();
        for h in heads {
            if *self.status(&h) == NodeStatus::Waiting {
                let part = self.watches[&h].slot.part.clone();
                self.offer_from_nms(now, Assignment { head: h, part });
            }
        }
        if let Some(w) = self.watches.get_mut(&node) {
            w.slot.part = vec![node];
        }
    }

    fn set_status(&mut self, now: Duration, node: NodeId, status: NodeStatus) {
        let Some(v) = self.nodes.get_mut(&node) else {
            return;
        };
        if v.status.is_final() || v.status == status {
            return;
        }
        match &status {
            NodeStatus::Installed => self
                .actions
                .push_back(MonitorAction::Note(MonitorNote::Installed(node))),
            NodeStatus::Failed(r) => self
                .actions
                .push_back(MonitorAction::Note(MonitorNote::Failed(node, r.clone()))),
            _ => {}
        }
        let was_settled = v.status.is_settled();
        if status.is_settled() {
            v.finished_at = Some(now);
        } else {
            v.finished_at = None;
        }
        v.status = status;
        let settled = v.status.is_settled();
        if v.status.is_final() {
            self.stop_watch(node);
        }
        if was_settled && !settled && self.finished_at.is_some() {
            self.reopened = true;
        }
        if settled && self.nodes.values().all(|v| v.status.is_settled()) {
            if self.finished_at.is_none() {
                self.finished_at = Some(now);
                self.actions.push_back(MonitorAction::Note(MonitorNote::Done));
            } else if self.reopened {
                self.reopened = false;
                self.finished_at = Some(now);
                self.actions.push_back(MonitorAction::Note(MonitorNote::Done));
            }
        }
    }

    /// Checks the oversight's invariants; panics with the first one broken.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        for (n, v) in &self.nodes {
            let w = &self.watches[n];
            if v.status.is_final() {
                assert!(
                    self.timers.get(*n).is_none() && w.check == Check::Idle,
                    "{n} is {:?} but still watched",
                    v.status
                );
            } else if !v.status.is_settled() {
                assert!(
                    self.timers.get(*n).is_some() && w.check != Check::Idle,
                    "{n} is {:?} but has no deadline or probe",
                    v.status
                );
            }
            if self.halted.is_some() {
                assert!(
                    !matches!(
                        v.status,
                        NodeStatus::Waiting
                            | NodeStatus::Receiving
                            | NodeStatus::Verifying
                            | NodeStatus::Unreachable(_)
                    ),
                    "{n} is {:?} in a halted campaign",
                    v.status
                );
            }
        }
        if self.finished_at.is_none() {
            assert!(
                !self.nodes.values().all(|v| v.status.is_settled()),
                "every node is settled but the campaign is not done"
            );
        }
    }
}
