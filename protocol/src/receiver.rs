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
    faults: u32,
    total_faults: u32,
    fetched: u32,
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
}

impl NodeCampaign {
    /// Starts a campaign from an offer that passed [`check_offer`]. `have` holds the chunks
    /// already verified on disk (resume after a restart).
    pub fn accept(
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
        let children = children_of(&offer.part, manifest.plan.fanout)
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
        let mut c = NodeCampaign {
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
            sources,
            source: 0,
            faults: 0,
            total_faults: 0,
            fetched: 0,
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
            manifest,
        };
        c.offer_children();
        c.send_progress(now);
        c.after_chunk(now);
        c.request_more(now);
        c
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
    /// for a chunk during [`RELAY_LINGER`] since the package was complete here.
    pub fn relay_done(&self, now: Duration) -> bool {
        let children_done = self
            .children
            .iter()
            .all(|c| matches!(c.state, ChildState::Receipted | ChildState::Failed));
        // quiet since the later of: the package was complete here, the last chunk request
        let since = self.server.last_request().max(self.completed_at);
        let idle = since.is_none_or(|t| now.saturating_sub(t) >= RELAY_LINGER);
        matches!(self.phase, Phase::Installed | Phase::Failed)
            && self.server.held_count() == 0
            && (children_done || idle)
    }

    pub fn poll_action(&mut self) -> Option<NodeAction> {
        self.actions.pop_front()
    }

    /// The earliest time at which [`Self::timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let mut t = [
            self.in_flight
                .values()
                .map(|(_, at)| *at + self.cfg.request_timeout)
                .min(),
            self.server.next_timeout(),
            self.auth_due,
            (!matches!(self.phase, Phase::Installed | Phase::Failed)).then_some(self.next_progress),
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
            self.fault(s, i, "no answer in time");
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
        self.request_more(now);
    }

    /// A chunk request from `from` (authenticated by the transport).
    pub fn chunk_request(&mut self, now: Duration, req: RequestId, from: NodeId, r: &ChunkRequest) {
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
    }

    /// The owner's policy opened or closed relaying.
    pub fn set_gated(&mut self, now: Duration, gated: bool) {
        let mut out = Vec::new();
        self.server.set_gated(now, gated, &mut out);
        self.push_serve(out);
    }

    /// The answer to a chunk request this node made.
    pub fn chunk_response(&mut self, now: Duration, from: NodeId, mut resp: ChunkResponse) {
        if self.phase != Phase::Receiving {
            return; // nothing more to fetch (complete, or failed)
        }
        let i = resp.index;
        if self.in_flight.get(&i).is_some_and(|(s, _)| *s == from) {
            self.in_flight.remove(&i);
        } else if resp.status != ChunkStatus::Ok || self.have.contains(i) || self.storing.contains(&i) {
            return; // late or unsolicited
        }
        match resp.status {
            ChunkStatus::Ok => {
                if i >= self.layout.count() {
                    self.fault(from, i, "chunk index out of range");
                } else if self.key.open(&self.manifest.campaign, i, &mut resp.data).is_err() {
                    self.fault(from, i, "sealed chunk failed authentication");
                } else if resp.data.len() != self.layout.len(i) as usize
                    || hash_chunk(&resp.data) != self.manifest.chunk_hashes.0[i as usize]
                {
                    self.fault(from, i, "chunk does not match the manifest's hash");
                } else if !self.have.contains(i) && self.storing.insert(i) {
                    self.fetched += 1;
                    if from == self.current_source() {
                        self.faults = 0;
                    }
                    // servable (and counted) only once the shell confirms the write
                    self.actions.push_back(NodeAction::Store {
                        index: i,
                        data: resp.data,
                    });
                }
            }
            ChunkStatus::NotYet => {}
            ChunkStatus::Gated => self.switch_source(),
            ChunkStatus::UnknownCampaign => self.fault(from, i, "source does not know the campaign"),
            ChunkStatus::Refused => self.fault(from, i, "source refused to serve this node"),
        }
        self.request_more(now);
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
    }

    /// The shell could not write chunk `index` after [`NodeAction::Store`] (`reason`, e.g.
    /// "No space left on device (os error 28)"). The store is failing: the campaign ends
    /// [`Phase::Failed`] with this reason, and this node serves nothing more.
    pub fn store_failed(&mut self, _now: Duration, index: u32, reason: &str) {
        if self.phase != Phase::Receiving || !self.storing.contains(&index) {
            return;
        }
        self.disk_failed(format!("cannot store chunk {index}: {reason}"));
    }

    /// The shell could not read the stored file back after [`NodeAction::HashFile`]. The
    /// campaign ends [`Phase::Failed`] with this reason, and this node serves nothing more.
    pub fn hash_failed(&mut self, _now: Duration, reason: &str) {
        if self.phase != Phase::Verifying {
            return;
        }
        self.disk_failed(format!(
            "cannot read the stored package back to check it: {reason}"
        ));
    }

    /// The store failed (a write, a read, or a file that no longer hashes to the root
    /// although every chunk did): what it holds cannot be trusted, so the node stops pulling
    /// and serving (requests are answered `Gated`: its children move to their next source
    /// at once, without counting a fault) and fails with `reason`. In store-and-forward
    /// mode its children are offered now, so that they fetch from higher up.
    fn disk_failed(&mut self, reason: String) {
        self.in_flight.clear();
        self.storing.clear();
        let mut out = Vec::new();
        self.server.close(&mut out);
        self.push_serve(out);
        if !self.offering {
            self.offering = true;
            self.offer_children();
        }
        self.finish(InstallOutcome::Failed {
            reason: clip_reason(reason),
        });
    }

    /// A chunk request this node made failed in transport.
    pub fn chunk_failed(&mut self, now: Duration, from: NodeId, index: u32, reason: &str) {
        if self.in_flight.get(&index).is_some_and(|(s, _)| *s == from) {
            self.in_flight.remove(&index);
            self.fault(from, index, reason);
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
        self.phase = Phase::Authenticating;
        self.send_progress(now);
        self.send_auth();
    }

    /// A control request for this campaign from `from`; returns the answer.
    pub fn request(&mut self, _now: Duration, from: NodeId, msg: &Control) -> Control {
        match msg {
            Control::Receipt { root, .. } => {
                let matches = *root == self.manifest.root;
                for c in &mut self.children {
                    if c.a.head == from && matches {
                        c.state = ChildState::Receipted;
                    }
                }
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
                    self.phase = Phase::Installing;
                    self.actions.push_back(NodeAction::Install);
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
            _ => {}
        }
    }

    /// A control request this node sent to `to` could not be delivered.
    pub fn send_failed(&mut self, now: Duration, to: NodeId, kind: ControlKind, reason: &str) {
        match kind {
            ControlKind::Offer => self.child_failed(now, to, format!("unreachable: {reason}")),
            ControlKind::AuthRequest if self.phase == Phase::Authenticating => {
                if self.auth_attempts >= self.cfg.auth_attempts {
                    if self.manifest.offline_install {
                        self.phase = Phase::Installing;
                        self.actions.push_back(NodeAction::Install);
                    } else {
                        self.finish(InstallOutcome::Failed {
                            reason: clip_reason(format!(
                                "the NMS could not be reached to authenticate ({reason}); the campaign does not allow offline install"
                            )),
                        });
                    }
                } else {
                    self.auth_due = Some(now + self.cfg.auth_retry);
                }
            }
            _ => {}
        }
    }

    /// The shell ran the install step.
    pub fn install_done(&mut self, _now: Duration, outcome: InstallOutcome) {
        if self.phase == Phase::Installing {
            self.finish(outcome);
        }
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
        let source = self.current_source();
        while self.in_flight.len() < self.cfg.window {
            let mut i = match self.have.first_missing_from(self.cursor) {
                Some(i) => i,
                None => break,
            };
            self.cursor = i;
            while i < self.layout.count()
                && (self.have.contains(i) || self.storing.contains(&i) || self.in_flight.contains_key(&i))
            {
                i += 1;
            }
            if i >= self.layout.count() {
                break;
            }
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

    fn fault(&mut self, source: NodeId, index: u32, reason: &str) {
        self.total_faults += 1;
        self.actions.push_back(NodeAction::Note(Note::SourceFault {
            source,
            index,
            reason: reason.to_string(),
        }));
        if source == self.current_source() {
            self.faults += 1;
            if self.faults >= self.cfg.max_faults {
                self.switch_source();
            }
        }
    }

    fn switch_source(&mut self) {
        if self.source + 1 < self.sources.len() {
            let from = self.current_source();
            self.source += 1;
            self.faults = 0;
            let to = self.current_source();
            // requests still out to the old source are asked again from the new one
            self.in_flight.retain(|_, (s, _)| *s != from);
            self.actions
                .push_back(NodeAction::Note(Note::SwitchedSource { from, to }));
        }
    }

    fn set_child(&mut self, head: NodeId, state: ChildState) {
        for c in &mut self.children {
            if c.a.head == head && c.state != ChildState::Failed && c.state != ChildState::Receipted {
                c.state = state;
            }
        }
    }

    fn child_failed(&mut self, _now: Duration, head: NodeId, reason: String) {
        let Some(pos) = self
            .children
            .iter()
            .position(|c| c.a.head == head && c.state != ChildState::Failed)
        else {
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
        if !self.offering {
            return;
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
