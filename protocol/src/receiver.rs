//! A node's state machine for one campaign: receive, verify, relay (cut-through or
//! store-and-forward), receipt, authenticate, install decision, report.
//!
//! Sans-IO: the shell feeds events with the time, drains [`NodeAction`]s with
//! [`NodeCampaign::poll_action`], and calls [`NodeCampaign::timeout`] at
//! [`NodeCampaign::poll_timeout`].

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::Duration;

use crate::admission::{AdmissionContext, admit, open_offer};
use crate::chunk::{ChunkSet, Layout, hash_chunk};
use crate::gate::RelayHint;
use crate::id::NodeId;
use crate::keys::{ChunkKey, HopToken};
use crate::manifest::{CampaignId, Manifest, ManifestError, SignedManifest, Transfer, VerifyContext};
use crate::plan::{Assignment, children_of};
use crate::serve::{RequestId, ServeAction, Server};
use crate::wire::{
    ChunkRequest, ChunkResponse, ChunkStatus, Control, ControlKind, InstallOutcome, Offer, Phase,
    RefuseReason, Verdict, clip_reason,
};

/// How long a finished node keeps serving when a child went silent without a receipt.
pub const RELAY_LINGER: Duration = Duration::from_secs(30);

/// Chunk requests a leaf-only node keeps out to each source besides its current one.
pub const HELPER_WINDOW: usize = 1;

/// How many chunks ahead of the first missing one a request is looked for (bounds the
/// work per request; what lies further is asked for as the first missing one moves on).
const SCAN: u32 = 1024;

/// Whose share chunk `i` is, for a leaf-only node with `k >= 1` helpers among `g >= 2`
/// leaf-only nodes under one parent: `None` for the current source (the parent), `Some(j)`
/// for helper `j`. In each cycle of `gk` chunks, each helper has `g - 1` (first) and the
/// parent `k`: the parent's uplink carries one copy in all, as any relay's in a chain,
/// and each helper's its child's copy plus `(g - 1)/k` (with `k = 5` and `g = 2`, 6/5
/// copies, against 2 for the parent alone). A parent with no more than one copy to send
/// keeps up with its leaves, so they end right after it.
pub fn share_of(i: u32, k: u32, g: u32) -> Option<u32> {
    debug_assert!(k >= 1 && g >= 2);
    let r = i % (g * k);
    (r < k * (g - 1)).then(|| r / (g - 1))
}

/// How many leaf-only nodes share `me`'s parent, if `me` is leaf-only in a chain below
/// the first tier (0 otherwise): what [`share_of`] splits by. Taken from the plan, which
/// every node computes alike.
fn leaf_siblings(manifest: &Manifest, me: &NodeId, parent: Option<NodeId>) -> u32 {
    let leaf = manifest.leaf_only();
    let Some(parent) = parent else { return 0 };
    if manifest.plan.fanout != 1 || !leaf.contains(me) {
        return 0;
    }
    let tree = crate::plan::Tree::plan(&manifest.addressees, 1, &|n| leaf.contains(n));
    let g = leaf
        .iter()
        .filter(|n| tree.parent.get(*n) == Some(&Some(parent)))
        .count();
    u32::try_from(g).unwrap_or(u32::MAX)
}

/// The delay before retry number `n` (1 for the first retry after a failure): `base`
/// doubled per consecutive failure, capped at `cap`, with "equal jitter": a value in
/// `[d/2, d]` drawn from `salt` (deterministic: BLAKE3 of the salt, no RNG in the core).
pub fn backoff(base: Duration, cap: Duration, n: u32, salt: &[u8]) -> Duration {
    let d = base
        .saturating_mul(1u32 << n.saturating_sub(1).min(20))
        .min(cap.max(base));
    let half = d / 2;
    let r = blake3::hash(salt);
    let r = u64::from_le_bytes(r.as_bytes()[..8].try_into().expect("8 bytes"));
    let span = half.as_nanos() as u64;
    half + Duration::from_nanos(if span == 0 { 0 } else { r % (span + 1) })
}

/// Tunables of a node's campaign machine.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Chunk requests in flight.
    pub window: usize,
    /// A chunk request without an answer after this counts as a fault of the source.
    pub request_timeout: Duration,
    /// How long this node holds a child's request for a chunk it does not have yet.
    pub hold: Duration,
    /// How often progress goes to the NMS.
    pub progress_interval: Duration,
    /// Consecutive faults after which the node moves to the next source.
    pub max_faults: u32,
    /// Delay between authentication attempts.
    pub auth_retry: Duration,
    /// Authentication attempts before giving up (or installing offline, if allowed).
    pub auth_attempts: u32,
    /// First pause after a failed chunk request (transport error, an immediate
    /// `UnknownCampaign`/`Refused`/`NotYet`, a bad chunk, a timeout); it doubles per
    /// consecutive failure of the current source up to `retry_max` and resets on a good
    /// chunk or a move to another source. Jittered to `[d/2, d]`.
    pub retry_base: Duration,
    /// Longest pause between requests to a failing source (and cap of the doubling of
    /// `auth_retry` and of the progress interval while the NMS cannot be reached).
    pub retry_max: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            window: 3,
            request_timeout: Duration::from_secs(60),
            hold: Duration::from_secs(15),
            progress_interval: Duration::from_secs(1),
            max_faults: 3,
            auth_retry: Duration::from_secs(2),
            auth_attempts: 5,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// Something the shell should log or show; it changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    SourceFault {
        source: NodeId,
        index: u32,
        reason: String,
    },
    SwitchedSource {
        from: NodeId,
        to: NodeId,
    },
    ChildFailed {
        child: NodeId,
        reason: String,
    },
    Verified,
    Authenticated,
    ReceiptMismatch {
        parent: NodeId,
    },
    /// Relaying stayed gated past the campaign's grace period: these nodes of the part,
    /// never offered, were handed back to the NMS.
    HandedBack {
        nodes: usize,
    },
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAction {
    /// Send a control request; answer with [`NodeCampaign::response`] or
    /// [`NodeCampaign::send_failed`].
    Send {
        to: NodeId,
        msg: Control,
    },
    /// Request a chunk; answer with [`NodeCampaign::chunk_response`] or
    /// [`NodeCampaign::chunk_failed`].
    RequestChunk {
        to: NodeId,
        req: ChunkRequest,
    },
    /// This node's part in the campaign is over: it is installed or failed, and its
    /// relaying is done (see [`NodeCampaign::relay_done`]). Emitted once. The shell may
    /// now drop the campaign (its open file, its working directory); requests that arrive
    /// later are for a campaign it no longer knows.
    RelayDone,
    /// Write verified plaintext of chunk `index` to the package file, then call
    /// [`NodeCampaign::chunk_stored`] or, if the write failed, [`NodeCampaign::store_failed`].
    /// The chunk is served to others only once its write is confirmed.
    Store {
        index: u32,
        data: Vec<u8>,
    },
    /// All chunks are stored: hash the whole file and call [`NodeCampaign::file_hashed`]
    /// or, if the file could not be read, [`NodeCampaign::hash_failed`].
    HashFile,
    /// The NMS acknowledged: install, then call [`NodeCampaign::install_done`].
    Install,
    /// Answer a chunk request.
    Serve(ServeAction),
    Note(Note),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildState {
    Pending,
    Offered,
    Accepted,
    Receipted,
    Failed,
    /// Handed back to the NMS, unoffered, because this node stayed gated.
    HandedBack,
}

#[derive(Debug)]
struct Child {
    a: Assignment,
    state: ChildState,
}

/// Why an offer was refused, with the reason code for the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefuseReason,
    pub detail: String,
}

impl Refusal {
    pub(crate) fn new(reason: RefuseReason, detail: impl Into<String>) -> Self {
        Refusal {
            reason,
            detail: clip_reason(detail.into()),
        }
    }
    pub fn verdict(&self) -> Verdict {
        Verdict::Refuse {
            reason: self.reason,
            detail: self.detail.clone(),
        }
    }
}

impl From<ManifestError> for Refusal {
    fn from(e: ManifestError) -> Self {
        let reason = match e {
            ManifestError::UntrustedSigner(_) => RefuseReason::Untrusted,
            ManifestError::Expired { .. } => RefuseReason::Expired,
            ManifestError::Rollback { .. } => RefuseReason::Rollback,
            ManifestError::NotAddressee(_) => RefuseReason::NotAddressee,
            _ => RefuseReason::BadManifest,
        };
        Refusal::new(reason, e.to_string())
    }
}

/// The checks a node makes on an offer from `from` before accepting it: [`open_offer`]
/// then [`admit`] with the pins in `ctx` (no trust on first use). A convenience for tools
/// and the simulator; the node runs the two steps apart (see [`crate::admission`]).
pub fn check_offer(offer: &Offer, from: &NodeId, ctx: &VerifyContext<'_>) -> Result<Manifest, Refusal> {
    let me = ctx
        .me
        .ok_or_else(|| Refusal::new(RefuseReason::BadOffer, "no node id to check against"))?;
    let opened = open_offer(offer.clone(), *from, me)?;
    let nobody = HashSet::new();
    admit(
        &opened,
        &AdmissionContext {
            trusted: ctx.trusted,
            trust_first: false,
            advertised_nms: &nobody,
            unix_now: ctx.unix_now,
            installed: ctx.installed,
            held: false,
            finished: false,
            resuming: false,
        },
    )?;
    Ok(opened.manifest)
}

/// A node's state in one campaign.
#[derive(Debug)]
pub struct NodeCampaign {
    cfg: NodeConfig,
    me: NodeId,
    manifest: Manifest,
    signed: SignedManifest,
    layout: Layout,
    addressees: HashSet<NodeId>,
    path: Vec<NodeId>,
    token: HopToken,
    key: ChunkKey,
    part: Vec<NodeId>,
    parent: Option<NodeId>,
    sources: Vec<NodeId>,
    source: usize,
    /// For a leaf-only node (see [`Manifest::leaf_only`]) in a chain whose parent feeds
    /// `helpers >= 2` such nodes, that number: it also asks the relays above its parent
    /// (not the NMS) for a share each, [`HELPER_WINDOW`] request at a time, so that its
    /// parent's uplink does not carry every leaf alone. 0: it asks its current source only.
    helpers: u32,
    /// Sources no longer asked as helpers (one failed or was gated; the current source
    /// still moves down the list as before).
    dropped: HashSet<NodeId>,
    faults: u32,
    total_faults: u32,
    fetched: u32,
    /// Bytes verified from each source (said in progress reports).
    fetched_from: Vec<(NodeId, u64)>,
    /// Chunks verified and stored (confirmed by the shell): the ones served to others.
    have: ChunkSet,
    /// Chunks verified whose write the shell has not confirmed yet.
    storing: BTreeSet<u32>,
    cursor: u32,
    in_flight: BTreeMap<u32, (NodeId, Duration)>,
    phase: Phase,
    children: Vec<Child>,
    offering: bool,
    server: Server,
    actions: VecDeque<NodeAction>,
    next_progress: Duration,
    auth_attempts: u32,
    auth_due: Option<Duration>,
    completed_at: Option<Duration>,
    outcome: Option<InstallOutcome>,
    /// Consecutive failures of the current source (back-off); 0 = full speed.
    retry_fails: u32,
    /// No chunk request goes out before this (back-off after a failure).
    retry_at: Option<Duration>,
    /// Retries drawn so far (salt of the jitter).
    retries: u64,
    /// Progress messages in a row that could not be delivered.
    progress_fails: u32,
    relay_done_sent: bool,
    /// The package is current on this node already (see [`NodeCampaign::already_installed`]).
    installed_before: bool,
    /// Since when the owner's policy gates relaying (children are not offered meanwhile).
    gated_since: Option<Duration>,
    /// The policy followed may gate relaying (not `always`): said in progress reports.
    restricted: bool,
    /// A node below its children asked this node for chunks (it moved up its path past a
    /// gated or failed relay): its children's receipts do not end the relaying then.
    served_below: bool,
    /// An agent package ([`crate::selfupdate`]) is authenticated and waits to install
    /// until the children hold it (or were given up): installing it restarts the node.
    install_waits: bool,
}

impl NodeCampaign {
    /// Starts a campaign from an offer that passed [`check_offer`]. `have` holds the chunks
    /// already verified on disk (resume after a restart). `relay` is the state of the relay
    /// gate the campaign follows: a gated node holds its children's offers (see
    /// [`Self::set_gated`]).
    pub fn accept(
        now: Duration,
        me: NodeId,
        offer: Offer,
        manifest: Manifest,
        cfg: NodeConfig,
        have: ChunkSet,
        relay: RelayHint,
    ) -> Self {
        let mut c = Self::build(now, me, offer, manifest, cfg, have);
        c.restricted = relay != RelayHint::Open;
        if relay == RelayHint::Gated {
            c.set_gated(now, true);
        }
        c.offer_children();
        c.send_progress(now);
        c.after_chunk(now);
        c.request_more(now);
        c
    }

    /// A campaign left unfinished by an earlier run that admission now refuses (e.g. a newer
    /// sequence was installed meanwhile): it is not resumed, but it ends here
    /// [`Phase::Failed`] with `reason` and reports that to the NMS, which would otherwise
    /// wait for this node forever. It fetches and serves nothing (requests are answered
    /// `Gated`, so children move up their path at once); its children are offered (again),
    /// so that they fetch from higher up (see [`Self::offer_children_again`]).
    pub fn resume_refused(
        now: Duration,
        me: NodeId,
        offer: Offer,
        manifest: Manifest,
        cfg: NodeConfig,
        reason: &str,
    ) -> Self {
        let count = manifest.layout().expect("validated manifest").count();
        let mut c = Self::build(now, me, offer, manifest, cfg, ChunkSet::new(count));
        c.offer_children_again();
        c.disk_failed(format!("not resumed after a restart: {reason}"));
        c.check_relay_done(now);
        c
    }

    /// A campaign that had ended here (its final phase journaled) when the node restarted
    /// before it was over (its reports delivered, its relaying done): its report may never
    /// have reached the NMS, which would wait for this node forever. It ends again at once
    /// with `outcome` and reports it; like [`Self::resume_refused`] it fetches, installs
    /// and serves nothing, and offers its children (again).
    pub fn resume_ended(
        now: Duration,
        me: NodeId,
        offer: Offer,
        manifest: Manifest,
        cfg: NodeConfig,
        outcome: InstallOutcome,
    ) -> Self {
        let count = manifest.layout().expect("validated manifest").count();
        let mut c = Self::build(now, me, offer, manifest, cfg, ChunkSet::new(count));
        c.offer_children_again();
        c.stop_serving();
        c.finish(outcome);
        c.check_relay_done(now);
        c
    }

    /// After a restart: every child is offered, in either transfer mode. An offer of the
    /// earlier run may never have been delivered (its retries died with the process), and
    /// only this node offers that part. A child running the campaign accepts it again; one
    /// that is over with it refuses, and the rest of its part is offered on.
    fn offer_children_again(&mut self) {
        self.offering = true;
        self.offer_children();
    }

    fn build(
        now: Duration,
        me: NodeId,
        offer: Offer,
        manifest: Manifest,
        cfg: NodeConfig,
        have: ChunkSet,
    ) -> Self {
        let layout = manifest.layout().expect("validated manifest");
        let path = offer.path;
        let parent = (path.len() >= 2).then(|| path[path.len() - 2]);
        let mut sources: Vec<NodeId> = path[..path.len() - 1].iter().rev().copied().collect();
        sources.push(manifest.nms);
        let token = offer.token;
        let key = token.chunk_key();
        let transfer = manifest.plan.transfer;
        let server = Server::new(manifest.campaign, path.clone(), token.clone(), transfer, cfg.hold);
        let leaf = manifest.leaf_only();
        let children = children_of(&offer.part, manifest.plan.fanout, &|n| leaf.contains(n))
            .into_iter()
            .map(|a| Child {
                a,
                state: ChildState::Pending,
            })
            .collect();
        let have = if have.len() == layout.count() {
            have
        } else {
            ChunkSet::new(layout.count())
        };
        NodeCampaign {
            addressees: manifest.addressees.iter().copied().collect(),
            cfg,
            me,
            signed: offer.manifest,
            layout,
            path,
            token,
            key,
            part: offer.part,
            parent,
            helpers: leaf_siblings(&manifest, &me, parent),
            sources,
            source: 0,
            dropped: HashSet::new(),
            faults: 0,
            total_faults: 0,
            fetched: 0,
            fetched_from: Vec::new(),
            have,
            storing: BTreeSet::new(),
            cursor: 0,
            in_flight: BTreeMap::new(),
            phase: Phase::Receiving,
            children,
            offering: transfer == Transfer::CutThrough,
            server,
            actions: VecDeque::new(),
            next_progress: now,
            auth_attempts: 0,
            auth_due: None,
            completed_at: None,
            outcome: None,
            retry_fails: 0,
            retry_at: None,
            retries: 0,
            progress_fails: 0,
            relay_done_sent: false,
            installed_before: false,
            gated_since: None,
            restricted: false,
            served_below: false,
            install_waits: false,
            manifest,
        }
    }

    pub fn campaign(&self) -> &CampaignId {
        &self.manifest.campaign
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn phase(&self) -> Phase {
        self.phase
    }
    pub fn have(&self) -> &ChunkSet {
        &self.have
    }
    pub fn path(&self) -> &[NodeId] {
        &self.path
    }
    pub fn parent(&self) -> Option<NodeId> {
        self.parent
    }
    /// The node currently asked for chunks.
    pub fn current_source(&self) -> NodeId {
        self.sources[self.source]
    }
    /// The chunk requests this node has out (index and source), as the machine counts
    /// them: at most `window` at a time.
    pub fn in_flight(&self) -> impl Iterator<Item = (u32, NodeId)> + '_ {
        self.in_flight.iter().map(|(i, (s, _))| (*i, *s))
    }
    /// Faults seen from sources (bad seals, bad hashes, timeouts).
    pub fn total_faults(&self) -> u32 {
        self.total_faults
    }
    /// Chunks received and verified in this run (not counting those found on disk).
    pub fn fetched_chunks(&self) -> u32 {
        self.fetched
    }
    /// When the whole package was verified.
    pub fn completed_at(&self) -> Option<Duration> {
        self.completed_at
    }
    pub fn outcome(&self) -> Option<&InstallOutcome> {
        self.outcome.as_ref()
    }
    /// Bytes verified and stored so far.
    pub fn verified_bytes(&self) -> u64 {
        if self.have.is_full() {
            return self.layout.size;
        }
        (0..self.layout.count())
            .filter(|&i| self.have.contains(i))
            .map(|i| u64::from(self.layout.len(i)))
            .sum()
    }
    /// Chunks this node served to others.
    pub fn served_chunks(&self) -> u64 {
        self.server.served_chunks
    }
    /// True once installed (or failed) and every child has its package or was re-planned,
    /// or, for a child that went silent without a receipt, once nobody asked this node
    /// for a chunk during [`RELAY_LINGER`] since the package was complete here. A node
    /// that nodes further down asked (they moved up their path past a gated or failed
    /// relay) ends only that way: their receipts go to their own parents, not here.
    pub fn relay_done(&self, now: Duration) -> bool {
        matches!(self.phase, Phase::Installed | Phase::Failed) && self.children_settled(now)
    }

    /// When a silent child stops holding this node: [`RELAY_LINGER`] after the later of
    /// the package being complete here and the last chunk request.
    fn linger_end(&self) -> Option<Duration> {
        let since = self.server.last_request().max(self.completed_at);
        since.map(|t| t + RELAY_LINGER)
    }

    /// The install step starts: at once for a package, once the children are settled
    /// ([`Self::children_settled`]) for a new agent, whose install restarts this node.
    fn start_install(&mut self, now: Duration) {
        self.phase = Phase::Installing;
        if crate::selfupdate::is_agent_package(&self.manifest) {
            self.install_waits = true;
            self.check_agent_install(now);
        } else {
            self.actions.push_back(NodeAction::Install);
        }
    }

    /// True once no child still needs this node: every child has its package, was given
    /// up or handed back, no request is held, no offer unanswered and no part held while
    /// gated, or (a silent child, or nodes further down that asked here) nobody asked for
    /// a chunk during [`RELAY_LINGER`] since the package was complete here. The end of
    /// relaying once installed ([`Self::relay_done`]), and what an agent's install step
    /// waits for.
    pub fn children_settled(&self, now: Duration) -> bool {
        let children_done = self.children.iter().all(|c| {
            matches!(
                c.state,
                ChildState::Receipted | ChildState::Failed | ChildState::HandedBack
            )
        });
        let idle = self.linger_end().is_none_or(|t| now >= t);
        self.only_linger_left() && ((children_done && !self.served_below) || idle)
    }

    /// No request held, no offer unanswered (it may come back refused: the rest of that
    /// part is then offered to its next node, which only this node can do), and no part
    /// held while gated (offered or handed back first): what is left before the children
    /// are settled is their receipts or the linger.
    fn only_linger_left(&self) -> bool {
        self.server.held_count() == 0
            && !self
                .children
                .iter()
                .any(|c| matches!(c.state, ChildState::Offered | ChildState::Pending))
    }

    /// True while an agent package waits for its children before its install step.
    pub fn install_waits(&self) -> bool {
        self.install_waits
    }

    /// Emits the deferred [`NodeAction::Install`] of an agent package once the children
    /// are settled.
    fn check_agent_install(&mut self, now: Duration) {
        if self.install_waits && self.phase == Phase::Installing && self.children_settled(now) {
            self.install_waits = false;
            self.actions.push_back(NodeAction::Install);
        }
    }

    /// Emits [`NodeAction::RelayDone`] once, when [`Self::relay_done`] becomes true.
    fn check_relay_done(&mut self, now: Duration) {
        self.check_agent_install(now);
        if !self.relay_done_sent && self.relay_done(now) {
            self.relay_done_sent = true;
            self.actions.push_back(NodeAction::RelayDone);
        }
    }

    /// True once [`NodeAction::RelayDone`] was emitted.
    pub fn is_over(&self) -> bool {
        self.relay_done_sent
    }

    pub fn poll_action(&mut self) -> Option<NodeAction> {
        self.actions.pop_front()
    }

    /// The earliest time at which [`Self::timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let finished = matches!(self.phase, Phase::Installed | Phase::Failed);
        let mut t = [
            self.in_flight
                .values()
                .map(|(_, at)| *at + self.cfg.request_timeout)
                .min(),
            self.server.next_timeout(),
            self.auth_due,
            (!finished).then_some(self.next_progress),
            self.retry_at.filter(|_| self.phase == Phase::Receiving),
            // the end of relaying, or an agent's install, when only a silent child's
            // linger is left (an offer still unanswered ends with its answer or failure,
            // an input, not a timer; a held part with the hand-back's timer below)
            (((finished && !self.relay_done_sent)
                || (self.install_waits && self.phase == Phase::Installing))
                && self.only_linger_left())
            .then(|| self.linger_end())
            .flatten(),
            self.hand_back_at(),
        ];
        t.sort();
        t.into_iter().flatten().next()
    }

    pub fn timeout(&mut self, now: Duration) {
        let expired: Vec<(u32, NodeId)> = self
            .in_flight
            .iter()
            .filter(|(_, (_, at))| now >= *at + self.cfg.request_timeout)
            .map(|(i, (s, _))| (*i, *s))
            .collect();
        for (i, s) in expired {
            self.in_flight.remove(&i);
            self.fault(now, s, i, "no answer in time");
        }
        let mut out = Vec::new();
        self.server.timeout(now, &mut out);
        self.push_serve(out);
        if self.auth_due.is_some_and(|t| now >= t) {
            self.auth_due = None;
            self.send_auth();
        }
        if now >= self.next_progress && !matches!(self.phase, Phase::Installed | Phase::Failed) {
            self.send_progress(now);
        }
        if self.hand_back_at().is_some_and(|t| now >= t) {
            self.hand_back();
        }
        self.request_more(now);
        self.check_relay_done(now);
    }

    /// A chunk request from `from` (authenticated by the transport).
    pub fn chunk_request(&mut self, now: Duration, req: RequestId, from: NodeId, r: &ChunkRequest) {
        if self.gated_since.is_none() && !self.children.iter().any(|c| c.a.head == from) {
            self.served_below = true;
        }
        let mut out = Vec::new();
        let addressees = &self.addressees;
        self.server.request(
            now,
            req,
            from,
            r,
            &self.have,
            |n| addressees.contains(n),
            &mut out,
        );
        self.push_serve(out);
        self.check_relay_done(now);
    }

    /// The owner's policy opened or closed relaying. While gated the node serves no chunk
    /// (requests are answered `Gated`, so children move up their path at once) and offers
    /// no child: it holds its part, for the gate may open soon. Once the gate opens it
    /// offers them; if it stays gated for the campaign's grace period it hands the part
    /// it did not offer back to the NMS ([`Control::HandBack`]), which offers it itself.
    pub fn set_gated(&mut self, now: Duration, gated: bool) {
        if gated {
            self.gated_since.get_or_insert(now);
        } else if self.gated_since.take().is_some() {
            self.offer_children();
        }
        let mut out = Vec::new();
        self.server.set_gated(now, gated, &mut out);
        self.push_serve(out);
        self.check_relay_done(now);
    }

    /// Whether the policy this campaign follows is not `always` (said in progress reports).
    pub fn set_restricted(&mut self, restricted: bool) {
        self.restricted = restricted;
    }

    /// What this node says about its relaying in this campaign.
    pub fn relay_hint(&self) -> RelayHint {
        if self.gated_since.is_some() {
            RelayHint::Gated
        } else if self.restricted {
            RelayHint::Restricted
        } else {
            RelayHint::Open
        }
    }

    /// When the part held while gated goes back to the NMS: the grace period after the
    /// gate closed, if a child is still unoffered.
    fn hand_back_at(&self) -> Option<Duration> {
        let since = self.gated_since?;
        self.children
            .iter()
            .any(|c| c.state == ChildState::Pending)
            .then(|| since + Duration::from_secs(u64::from(self.manifest.relay.grace_secs)))
    }

    /// Hands every child part not offered back to the NMS (the grace period passed).
    fn hand_back(&mut self) {
        let mut nodes = Vec::new();
        for c in &mut self.children {
            if c.state == ChildState::Pending {
                c.state = ChildState::HandedBack;
                nodes.extend_from_slice(&c.a.part);
            }
        }
        if nodes.is_empty() {
            return;
        }
        self.actions
            .push_back(NodeAction::Note(Note::HandedBack { nodes: nodes.len() }));
        self.send(
            self.manifest.nms,
            Control::HandBack {
                campaign: self.manifest.campaign,
                nodes,
            },
        );
    }

    /// The answer to a chunk request this node made.
    pub fn chunk_response(&mut self, now: Duration, from: NodeId, mut resp: ChunkResponse) {
        if self.phase != Phase::Receiving {
            return; // nothing more to fetch (complete, or failed)
        }
        let i = resp.index;
        let sent = match self.in_flight.get(&i) {
            Some((s, at)) if *s == from => Some(*at),
            _ => None,
        };
        if sent.is_some() {
            self.in_flight.remove(&i);
        } else if resp.status != ChunkStatus::Ok || self.have.contains(i) || self.storing.contains(&i) {
            return; // late or unsolicited
        }
        match resp.status {
            ChunkStatus::Ok => {
                if i >= self.layout.count() {
                    self.fault(now, from, i, "chunk index out of range");
                } else if self.key.open(&self.manifest.campaign, i, &mut resp.data).is_err() {
                    self.fault(now, from, i, "sealed chunk failed authentication");
                } else if resp.data.len() != self.layout.len(i) as usize
                    || hash_chunk(&resp.data) != self.manifest.chunk_hashes.0[i as usize]
                {
                    self.fault(now, from, i, "chunk does not match the manifest's hash");
                } else if !self.have.contains(i) && self.storing.insert(i) {
                    self.fetched += 1;
                    let bytes = resp.data.len() as u64;
                    if let Some((_, b)) = self.fetched_from.iter_mut().find(|(s, _)| *s == from) {
                        *b += bytes;
                    } else if self.fetched_from.len() <= crate::limits::MAX_PATH {
                        self.fetched_from.push((from, bytes));
                    }
                    if from == self.current_source() {
                        // a good chunk: full speed again
                        self.faults = 0;
                        self.retry_fails = 0;
                        self.retry_at = None;
                    }
                    // servable (and counted) only once the shell confirms the write
                    self.actions.push_back(NodeAction::Store {
                        index: i,
                        data: resp.data,
                    });
                }
            }
            ChunkStatus::NotYet => {
                // after a hold the source paced the request itself: ask again at once; an
                // immediate NotYet (e.g. the source cannot read the chunk back) waits, or
                // ends a helper's part
                if sent.is_some_and(|at| now.saturating_sub(at) < self.cfg.retry_base) {
                    if from == self.current_source() {
                        self.retry_later(now);
                    } else if self.helpers >= 2 {
                        self.drop_helper(from);
                    }
                }
            }
            ChunkStatus::Gated => {
                if from != self.current_source() {
                    self.drop_helper(from);
                } else if !self.switch_source() {
                    self.retry_later(now); // nowhere else to go
                }
            }
            ChunkStatus::UnknownCampaign => self.fault(now, from, i, "source does not know the campaign"),
            ChunkStatus::Refused => self.fault(now, from, i, "source refused to serve this node"),
        }
        self.request_more(now);
        self.check_relay_done(now);
    }

    /// The shell wrote chunk `index` after [`NodeAction::Store`]: from now on it is served
    /// to others and counts as verified.
    pub fn chunk_stored(&mut self, now: Duration, index: u32) {
        if self.phase != Phase::Receiving || !self.storing.remove(&index) {
            return;
        }
        self.have.insert(index);
        let mut out = Vec::new();
        self.server.chunk_available(&self.have, &mut out);
        self.push_serve(out);
        self.after_chunk(now);
        self.check_relay_done(now);
    }

    /// The shell could not write chunk `index` after [`NodeAction::Store`] (`reason`, e.g.
    /// "No space left on device (os error 28)"). The store is failing: the campaign ends
    /// [`Phase::Failed`] with this reason, and this node serves nothing more.
    pub fn store_failed(&mut self, now: Duration, index: u32, reason: &str) {
        if self.phase != Phase::Receiving || !self.storing.contains(&index) {
            return;
        }
        self.disk_failed(format!("cannot store chunk {index}: {reason}"));
        self.check_relay_done(now);
    }

    /// The shell could not read the stored file back after [`NodeAction::HashFile`]. The
    /// campaign ends [`Phase::Failed`] with this reason, and this node serves nothing more.
    pub fn hash_failed(&mut self, now: Duration, reason: &str) {
        if self.phase != Phase::Verifying {
            return;
        }
        self.disk_failed(format!(
            "cannot read the stored package back to check it: {reason}"
        ));
        self.check_relay_done(now);
    }

    /// A newer version of this package was accepted on this node (the NMS, which started
    /// it, has halted this campaign): one still fetching or verifying stops there and ends
    /// [`Phase::Failed`] with `reason`. It serves nothing more (requests are answered
    /// `Gated`) and offers no child an older version; a campaign authenticating, installing
    /// or over is left alone. Returns whether it stopped.
    pub fn superseded(&mut self, now: Duration, reason: &str) -> bool {
        if !matches!(self.phase, Phase::Receiving | Phase::Verifying) {
            return false;
        }
        self.in_flight.clear();
        self.storing.clear();
        let mut out = Vec::new();
        self.server.close(&mut out);
        self.push_serve(out);
        self.offering = true;
        self.finish(InstallOutcome::Failed {
            reason: clip_reason(reason.to_string()),
        });
        self.check_relay_done(now);
        true
    }

    /// The store failed (a write, a read, or a file that no longer hashes to the root
    /// although every chunk did): what it holds cannot be trusted, so the node stops pulling
    /// and serving (requests are answered `Gated`: its children move to their next source
    /// at once, without counting a fault) and fails with `reason`. In store-and-forward
    /// mode its children are offered now, so that they fetch from higher up.
    fn disk_failed(&mut self, reason: String) {
        self.stop_serving();
        self.finish(InstallOutcome::Failed {
            reason: clip_reason(reason),
        });
    }

    /// Fetches and serves nothing more (requests are answered `Gated`); children not
    /// offered yet (store-and-forward) are offered now, to fetch from higher up.
    fn stop_serving(&mut self) {
        self.in_flight.clear();
        self.storing.clear();
        let mut out = Vec::new();
        self.server.close(&mut out);
        self.push_serve(out);
        if !self.offering {
            self.offering = true;
            self.offer_children();
        }
    }

    /// A chunk request this node made failed in transport.
    pub fn chunk_failed(&mut self, now: Duration, from: NodeId, index: u32, reason: &str) {
        if self.in_flight.get(&index).is_some_and(|(s, _)| *s == from) {
            self.in_flight.remove(&index);
            self.fault(now, from, index, reason);
        }
        self.request_more(now);
    }

    /// The whole-file hash the shell computed after [`NodeAction::HashFile`].
    pub fn file_hashed(&mut self, now: Duration, root: [u8; 32]) {
        if self.phase != Phase::Verifying {
            return;
        }
        if root != self.manifest.root {
            // every chunk matched its hash, so the store itself is failing
            self.disk_failed("the stored package does not hash to the manifest's root (disk fault?)".into());
            self.check_relay_done(now);
            return;
        }
        self.completed_at = Some(now);
        self.actions.push_back(NodeAction::Note(Note::Verified));
        let mut out = Vec::new();
        self.server.set_complete(&self.have, &mut out);
        self.push_serve(out);
        if !self.offering {
            self.offering = true;
            self.offer_children();
        }
        if let Some(p) = self.parent {
            self.send(
                p,
                Control::Receipt {
                    campaign: self.manifest.campaign,
                    root,
                },
            );
        }
        if self.installed_before {
            // installed in an earlier run, after the NMS's acknowledgement: nothing to
            // authenticate or install again; report it and relay
            self.finish(InstallOutcome::Installed);
            return;
        }
        self.phase = Phase::Authenticating;
        self.send_progress(now);
        self.send_auth();
    }

    /// The shell resumed this campaign from its disk and finds its package current already
    /// (the node crashed after the install, before its relaying was done). Once the file
    /// hashes to the root the campaign ends [`Phase::Installed`] without asking the NMS
    /// again: an unreachable NMS cannot turn an install that happened into a failure.
    /// Call right after [`Self::accept`].
    pub fn already_installed(&mut self) {
        self.installed_before = true;
    }

    /// A control request for this campaign from `from`; returns the answer.
    pub fn request(&mut self, now: Duration, from: NodeId, msg: &Control) -> Control {
        match msg {
            Control::Receipt { root, .. } => {
                let matches = *root == self.manifest.root;
                for c in &mut self.children {
                    if c.a.head == from && matches {
                        c.state = ChildState::Receipted;
                    }
                }
                self.check_relay_done(now);
                Control::ReceiptAck {
                    campaign: self.manifest.campaign,
                    matches,
                }
            }
            _ => Control::Error {
                reason: format!("unexpected {:?} for a running campaign", msg.kind()),
            },
        }
    }

    /// The answer to a control request this node sent to `from`.
    pub fn response(&mut self, now: Duration, from: NodeId, msg: Control) {
        self.on_response(now, from, msg);
        self.check_relay_done(now);
    }

    fn on_response(&mut self, now: Duration, from: NodeId, msg: Control) {
        match msg {
            Control::OfferReply { verdict, .. } => match verdict {
                Verdict::Accept => self.set_child(from, ChildState::Accepted),
                Verdict::Refuse { reason, detail } => {
                    self.child_failed(now, from, format!("refused ({reason:?}): {detail}"))
                }
            },
            Control::ReceiptAck { matches, .. } => {
                if !matches && let Some(p) = self.parent {
                    self.actions
                        .push_back(NodeAction::Note(Note::ReceiptMismatch { parent: p }));
                }
            }
            Control::AuthReply { ok, reason, .. } if from == self.manifest.nms => {
                if self.phase != Phase::Authenticating {
                    return;
                }
                if ok {
                    self.actions.push_back(NodeAction::Note(Note::Authenticated));
                    self.start_install(now);
                } else {
                    self.finish(InstallOutcome::Failed {
                        reason: clip_reason(format!("the NMS refused the authentication code: {reason}")),
                    });
                }
            }
            Control::Error { reason } if from == self.manifest.nms && self.phase == Phase::Authenticating => {
                // e.g. an NMS that restarted and lost the campaign: retry, then give up
                self.send_failed(now, from, ControlKind::AuthRequest, &reason);
            }
            Control::Ack if from == self.manifest.nms => self.progress_fails = 0,
            _ => {}
        }
    }

    /// A control request this node sent to `to` could not be delivered.
    pub fn send_failed(&mut self, now: Duration, to: NodeId, kind: ControlKind, reason: &str) {
        self.on_send_failed(now, to, kind, reason);
        self.check_relay_done(now);
    }

    fn on_send_failed(&mut self, now: Duration, to: NodeId, kind: ControlKind, reason: &str) {
        match kind {
            ControlKind::Offer => self.child_failed(now, to, format!("unreachable: {reason}")),
            ControlKind::AuthRequest if self.phase == Phase::Authenticating => {
                if self.auth_attempts >= self.cfg.auth_attempts {
                    if self.manifest.offline_install {
                        self.start_install(now);
                    } else {
                        self.finish(InstallOutcome::Failed {
                            reason: clip_reason(format!(
                                "the NMS could not be reached to authenticate ({reason}); the campaign does not allow offline install"
                            )),
                        });
                    }
                } else {
                    // auth_retry, doubling per attempt (capped), jittered
                    let cap = self.cfg.retry_max.max(self.cfg.auth_retry);
                    let wait = self.jittered(self.cfg.auth_retry, cap, self.auth_attempts);
                    self.auth_due = Some(now + wait);
                }
            }
            ControlKind::Progress if to == self.manifest.nms => {
                // the NMS is unreachable: space progress out (doubling, capped) until it answers
                self.progress_fails += 1;
                let cap = self.cfg.retry_max.max(self.cfg.progress_interval);
                let wait = self.jittered(self.cfg.progress_interval, cap, self.progress_fails + 1);
                self.next_progress = self.next_progress.max(now + wait);
            }
            _ => {}
        }
    }

    /// The shell ran the install step.
    pub fn install_done(&mut self, now: Duration, outcome: InstallOutcome) {
        if self.phase == Phase::Installing {
            self.finish(outcome);
        }
        self.check_relay_done(now);
    }

    /// A back-off delay for retry `n` (see [`backoff`]), jittered from this node, this
    /// campaign and a counter: two nodes, or two retries, draw apart.
    fn jittered(&mut self, base: Duration, cap: Duration, n: u32) -> Duration {
        self.retries += 1;
        let mut salt = self.me.to_bytes();
        salt.extend_from_slice(&self.manifest.campaign);
        salt.extend_from_slice(&self.retries.to_le_bytes());
        backoff(base, cap, n, &salt)
    }

    /// The current source failed a request (at once, or by timing out): no new request
    /// goes to it before a back-off pause. Failures of requests sent before the pause
    /// began do not lengthen it.
    fn retry_later(&mut self, now: Duration) {
        if self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        self.retry_fails += 1;
        let wait = self.jittered(self.cfg.retry_base, self.cfg.retry_max, self.retry_fails);
        self.retry_at = Some(now + wait);
    }

    fn finish(&mut self, outcome: InstallOutcome) {
        self.phase = match outcome {
            InstallOutcome::Installed => Phase::Installed,
            InstallOutcome::Failed { .. } => Phase::Failed,
        };
        self.outcome = Some(outcome.clone());
        self.send(
            self.manifest.nms,
            Control::InstallReport {
                campaign: self.manifest.campaign,
                outcome,
            },
        );
    }

    fn send(&mut self, to: NodeId, msg: Control) {
        self.actions.push_back(NodeAction::Send { to, msg });
    }

    fn send_auth(&mut self) {
        self.auth_attempts += 1;
        let campaign = self.manifest.campaign;
        let root = self.manifest.root;
        self.send(
            self.manifest.nms,
            Control::AuthRequest {
                campaign,
                path: self.path.clone(),
                root,
                code: self.token.auth_code(&campaign, &root),
            },
        );
    }

    fn send_progress(&mut self, now: Duration) {
        self.next_progress = now + self.cfg.progress_interval;
        let msg = Control::Progress {
            campaign: self.manifest.campaign,
            phase: self.phase,
            verified: self.verified_bytes(),
            source: Some(self.current_source()),
            parent: self.parent,
            relay: Some(self.relay_hint()),
            fetched: self.fetched_from.clone(),
        };
        self.send(self.manifest.nms, msg);
    }

    fn push_serve(&mut self, out: Vec<ServeAction>) {
        self.actions.extend(out.into_iter().map(NodeAction::Serve));
    }

    fn after_chunk(&mut self, _now: Duration) {
        if self.have.is_full() && self.phase == Phase::Receiving {
            self.phase = Phase::Verifying;
            self.in_flight.clear();
            self.actions.push_back(NodeAction::HashFile);
        }
    }

    fn request_more(&mut self, now: Duration) {
        if self.phase != Phase::Receiving {
            return;
        }
        let backing_off = match self.retry_at {
            Some(t) if now < t => true,
            Some(_) => {
                self.retry_at = None;
                false
            }
            None => false,
        };
        // helpers first: the current source takes what is left of their shares
        for h in self.helper_sources() {
            self.ask(now, h, HELPER_WINDOW);
        }
        if !backing_off {
            // while the source is failing, one probe at a time; a good chunk reopens the window
            let window = if self.retry_fails > 0 { 1 } else { self.cfg.window };
            self.ask(now, self.current_source(), window);
        }
    }

    /// The sources asked besides the current one: for a leaf-only node, those after it on
    /// the list that did not fail as helpers.
    fn helper_sources(&self) -> Vec<NodeId> {
        if self.helpers < 2 {
            return Vec::new();
        }
        // never the NMS, which sends each byte about once: its uplink feeds the first tier
        self.sources[self.source + 1..]
            .iter()
            .filter(|s| **s != self.manifest.nms && !self.dropped.contains(s))
            .copied()
            .collect()
    }

    /// Requests the next wanted chunks from `source` until it has `window` out.
    fn ask(&mut self, now: Duration, source: NodeId, window: usize) {
        let helpers = self.helper_sources();
        let k = helpers.len() as u32;
        let share = helpers.iter().position(|h| *h == source).map(|j| j as u32);
        while self.in_flight.values().filter(|(s, _)| *s == source).count() < window {
            let Some(i) = self.next_wanted(share, k) else {
                break;
            };
            self.in_flight.insert(i, (source, now));
            self.actions.push_back(NodeAction::RequestChunk {
                to: source,
                req: ChunkRequest {
                    campaign: self.manifest.campaign,
                    index: i,
                    path: self.path.clone(),
                },
            });
        }
    }

    /// Whether chunk `i` is wanted: neither verified, nor being stored, nor asked for.
    fn wanted(&self, i: u32) -> bool {
        !(self.have.contains(i) || self.storing.contains(&i) || self.in_flight.contains_key(&i))
    }

    /// The lowest wanted chunk of a share: the current source's (`None`) or helper `j`'s,
    /// with `k` helpers (see [`share_of`]). The current source also takes any other wanted
    /// chunk once its share is asked for, so a slow helper never holds the package back.
    fn next_wanted(&mut self, share: Option<u32>, k: u32) -> Option<u32> {
        let count = self.layout.count();
        self.cursor = self.have.first_missing_from(self.cursor)?;
        let g = self.helpers;
        let mut window = (self.cursor..count).take(SCAN as usize);
        if k == 0 {
            return window.find(|&i| self.wanted(i));
        }
        let own = window.find(|&i| share_of(i, k, g) == share && self.wanted(i));
        if own.is_some() || share.is_some() {
            return own;
        }
        (self.cursor..count).take(SCAN as usize).find(|&i| self.wanted(i))
    }

    /// A helper failed (or is gated): it is not asked as one again in this campaign; what
    /// it had out goes back to the others.
    fn drop_helper(&mut self, source: NodeId) {
        self.dropped.insert(source);
        self.in_flight.retain(|_, (s, _)| *s != source);
    }

    fn fault(&mut self, now: Duration, source: NodeId, index: u32, reason: &str) {
        self.total_faults += 1;
        self.actions.push_back(NodeAction::Note(Note::SourceFault {
            source,
            index,
            reason: reason.to_string(),
        }));
        if source == self.current_source() {
            self.faults += 1;
            // a new source is asked at full speed; the same one only after a pause
            if !(self.faults >= self.cfg.max_faults && self.switch_source()) {
                self.retry_later(now);
            }
        } else if self.helpers >= 2 {
            self.drop_helper(source);
        }
    }

    /// Moves to the next source, if there is one (returns whether it moved).
    fn switch_source(&mut self) -> bool {
        if self.source + 1 < self.sources.len() {
            let from = self.current_source();
            self.source += 1;
            self.faults = 0;
            self.retry_fails = 0;
            self.retry_at = None;
            let to = self.current_source();
            // requests still out to the old source are asked again from the new one
            self.in_flight.retain(|_, (s, _)| *s != from);
            self.actions
                .push_back(NodeAction::Note(Note::SwitchedSource { from, to }));
            true
        } else {
            false
        }
    }

    fn set_child(&mut self, head: NodeId, state: ChildState) {
        for c in &mut self.children {
            if c.a.head == head
                && !matches!(
                    c.state,
                    ChildState::Failed | ChildState::Receipted | ChildState::HandedBack
                )
            {
                c.state = state;
            }
        }
    }

    fn child_failed(&mut self, _now: Duration, head: NodeId, reason: String) {
        let Some(pos) = self.children.iter().position(|c| {
            c.a.head == head && !matches!(c.state, ChildState::Failed | ChildState::HandedBack)
        }) else {
            return;
        };
        self.children[pos].state = ChildState::Failed;
        self.actions.push_back(NodeAction::Note(Note::ChildFailed {
            child: head,
            reason: reason.clone(),
        }));
        self.send(
            self.manifest.nms,
            Control::Trouble {
                campaign: self.manifest.campaign,
                node: head,
                reason: clip_reason(reason),
            },
        );
        // the rest of its part gets a new head: the next node on it
        let rest = self.children[pos].a.part[1..].to_vec();
        if let Some(&next) = rest.first() {
            self.children.push(Child {
                a: Assignment {
                    head: next,
                    part: rest,
                },
                state: ChildState::Pending,
            });
            self.offer_children();
        }
    }

    fn offer_children(&mut self) {
        if !self.offering || self.gated_since.is_some() {
            return; // not yet, or held while gated
        }
        for idx in 0..self.children.len() {
            if self.children[idx].state != ChildState::Pending {
                continue;
            }
            self.children[idx].state = ChildState::Offered;
            let a = &self.children[idx].a;
            let mut path = self.path.clone();
            path.push(a.head);
            let offer = Offer {
                manifest: self.signed.clone(),
                part: a.part.clone(),
                path,
                token: self.token.child(&a.head),
            };
            let to = a.head;
            self.send(to, Control::Offer(Box::new(offer)));
        }
    }

    /// This node's own part of the list (itself first).
    pub fn part(&self) -> &[NodeId] {
        &self.part
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }
}
