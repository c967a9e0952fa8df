//! The NMS's state machine for one campaign: offers to the first tier, serves chunks as
//! the root of the tree, checks authentication codes, collects progress and reports, and
//! knows when the campaign is over.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use crate::chunk::ChunkSet;
use crate::id::NodeId;
use crate::keys::{AuthClaim, CampaignSecret, HopToken, verify_auth};
use crate::manifest::{CampaignId, Manifest, SignedManifest};
use crate::plan::{Assignment, assignments};
use crate::serve::{RequestId, ServeAction, Server};
use crate::wire::{ChunkRequest, Control, ControlKind, InstallOutcome, Offer, Phase, Verdict, clip_reason};

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
}

impl NodeStatus {
    pub fn is_final(&self) -> bool {
        matches!(self, NodeStatus::Installed | NodeStatus::Failed(_))
    }
}

/// The NMS's view of one addressee.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub status: NodeStatus,
    pub verified: u64,
    pub source: Option<NodeId>,
    pub parent: Option<NodeId>,
    /// When the node last reported.
    pub last_heard: Option<Duration>,
    /// When it reported its install outcome.
    pub finished_at: Option<Duration>,
}

/// Something for the operator's view; changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorNote {
    Installed(NodeId),
    Failed(NodeId, String),
    AuthRefused(NodeId, String),
    Done,
}

/// What the NMS shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorAction {
    Send { to: NodeId, msg: Control },
    Serve(ServeAction),
    Note(MonitorNote),
}

/// Tunables of the NMS's campaign machine.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// How long a request for a chunk is held (the NMS has all chunks, so this rarely matters).
    pub hold: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            hold: Duration::from_secs(15),
        }
    }
}

/// The NMS's state in one campaign.
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
    /// Cancelled by the operator: no offers, no chunks, no authentication.
    cancelled: bool,
    /// How long the root holds a chunk request ([`MonitorConfig::hold`]).
    server_hold: Duration,
}

/// The reason given to the nodes of a campaign the operator cancelled.
pub const CANCELLED: &str = "cancelled by the operator";

impl CampaignMonitor {
    /// Starts a campaign: offers go to the first tier at once.
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
            manifest,
        };
        let first = assignments(&m.manifest.addressees, m.manifest.plan.fanout);
        for a in first {
            m.offer(a);
        }
        m
    }

    fn offer(&mut self, a: Assignment) {
        if self.cancelled {
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
    /// When the last addressee reached a final state.
    pub fn finished_at(&self) -> Option<Duration> {
        self.finished_at
    }
    pub fn is_done(&self) -> bool {
        self.finished_at.is_some()
    }
    /// (installed, failed, total).
    pub fn counts(&self) -> (usize, usize, usize) {
        let installed = self
            .nodes
            .values()
            .filter(|v| v.status == NodeStatus::Installed)
            .count();
        let failed = self
            .nodes
            .values()
            .filter(|v| matches!(v.status, NodeStatus::Failed(_)))
            .count();
        (installed, failed, self.nodes.len())
    }
    /// Chunks the NMS served itself.
    pub fn served_chunks(&self) -> u64 {
        self.server.served_chunks
    }

    pub fn poll_action(&mut self) -> Option<MonitorAction> {
        self.actions.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Duration> {
        self.server.next_timeout()
    }

    pub fn timeout(&mut self, now: Duration) {
        let mut out = Vec::new();
        self.server.timeout(now, &mut out);
        self.push_serve(out);
    }

    pub fn chunk_request(&mut self, now: Duration, req: RequestId, from: NodeId, r: &ChunkRequest) {
        let mut out = Vec::new();
        let addressees = &self.addressees;
        self.server
            .request(now, req, from, r, &self.all, |n| addressees.contains(n), &mut out);
        self.push_serve(out);
    }

    fn push_serve(&mut self, out: Vec<ServeAction>) {
        self.actions.extend(out.into_iter().map(MonitorAction::Serve));
    }

    /// A control request from `from` about this campaign; returns the answer.
    pub fn request(&mut self, now: Duration, from: NodeId, msg: &Control) -> Control {
        if !self.addressees.contains(&from) {
            return Control::Error {
                reason: format!("{from} is not an addressee of this campaign"),
            };
        }
        if self.cancelled {
            return match msg {
                Control::AuthRequest { .. } => Control::AuthReply {
                    campaign: self.manifest.campaign,
                    ok: false,
                    reason: CANCELLED.into(),
                },
                _ => Control::Error {
                    reason: CANCELLED.into(),
                },
            };
        }
        if let Some(v) = self.nodes.get_mut(&from) {
            v.last_heard = Some(now);
        }
        match msg {
            Control::AuthRequest { path, root, code, .. } => {
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
                ..
            } => {
                if let Some(v) = self.nodes.get_mut(&from) {
                    v.verified = (*verified).min(self.manifest.size);
                    v.source = *source;
                    v.parent = *parent;
                }
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
                self.set_status(
                    now,
                    *node,
                    NodeStatus::Failed(clip_reason(format!("reported by {from}: {reason}"))),
                );
                Control::Ack
            }
            other => Control::Error {
                reason: format!("unexpected {:?} for the NMS", other.kind()),
            },
        }
    }

    /// The answer to a request the NMS sent (offers to the first tier).
    pub fn response(&mut self, now: Duration, from: NodeId, msg: Control) {
        if let Control::OfferReply { verdict, .. } = msg {
            match verdict {
                Verdict::Accept => {
                    if self
                        .nodes
                        .get(&from)
                        .is_some_and(|v| v.status == NodeStatus::Waiting)
                    {
                        self.set_status(now, from, NodeStatus::Receiving);
                    }
                }
                Verdict::Refuse { reason, detail } => {
                    self.first_tier_failed(now, from, format!("refused the offer ({reason:?}): {detail}"))
                }
            }
        }
    }

    /// The NMS restarted with this campaign's state from its disk. The requests it had
    /// sent died with the old process, so every first-tier node that had not answered its
    /// offer is offered it again; one that already holds the campaign takes the repeat as
    /// a duplicate and accepts.
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

    /// True once the operator cancelled the campaign (until it is reopened).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// The operator cancels the campaign: no more offers, chunks (held requests and later
    /// ones are answered `Gated`) or authentications; every addressee not yet final fails
    /// with [`CANCELLED`], which ends the campaign. Returns those addressees.
    pub fn cancel(&mut self, now: Duration) -> Vec<NodeId> {
        let open: Vec<NodeId> = self
            .manifest
            .addressees
            .iter()
            .filter(|n| self.nodes.get(n).is_some_and(|v| !v.status.is_final()))
            .copied()
            .collect();
        self.cancelled = true;
        let mut out = Vec::new();
        self.server.close(&mut out);
        self.push_serve(out);
        for n in &open {
            self.set_status(now, *n, NodeStatus::Failed(CANCELLED.into()));
        }
        if self.finished_at.is_none() {
            // every addressee was final already
            self.finished_at = Some(now);
            self.actions.push_back(MonitorAction::Note(MonitorNote::Done));
        }
        open
    }

    /// The operator resumes a cancelled campaign: its cancelled addressees wait again
    /// (keeping their verified bytes), the NMS serves again, and each first-tier part
    /// holding a waiting node is offered again, from its first waiting node on (a node
    /// that holds the campaign takes the repeat as a duplicate). Returns the reopened
    /// addressees (none, and nothing changes, if the campaign was not cancelled).
    pub fn reopen(&mut self) -> Vec<NodeId> {
        if !self.cancelled {
            return Vec::new();
        }
        self.cancelled = false;
        let count = self.all.len();
        let mut server = Server::new(
            self.manifest.campaign,
            Vec::new(),
            self.root_token.clone(),
            self.manifest.plan.transfer,
            self.server_hold,
        );
        server.set_complete(&ChunkSet::full(count), &mut Vec::new());
        self.server = server;
        let mut reopened = Vec::new();
        for n in &self.manifest.addressees {
            if let Some(v) = self.nodes.get_mut(n)
                && v.status == NodeStatus::Failed(CANCELLED.into())
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
        self.reoffer_waiting();
        reopened
    }

    /// Offers each first-tier part holding a waiting node again, from its first waiting
    /// node on.
    fn reoffer_waiting(&mut self) {
        let parts: Vec<Assignment> = self.offered.drain().map(|(_, a)| a).collect();
        for a in parts {
            let first = a
                .part
                .iter()
                .position(|n| self.nodes.get(n).is_some_and(|v| v.status == NodeStatus::Waiting));
            match first {
                Some(i) => self.offer(Assignment {
                    head: a.part[i],
                    part: a.part[i..].to_vec(),
                }),
                None => {
                    self.offered.insert(a.head, a);
                }
            }
        }
    }

    /// A campaign the operator cancelled before an NMS restart, taken back to be resumed:
    /// [`CampaignMonitor::resume`] from what the shell saved, its cancelled addressees
    /// waiting again and offered as [`CampaignMonitor::reopen`] would. Returns them too.
    pub fn resume_cancelled(
        now: Duration,
        manifest: Manifest,
        signed: SignedManifest,
        secret: CampaignSecret,
        cfg: MonitorConfig,
        saved: &[(NodeId, NodeStatus, u64)],
    ) -> (Self, Vec<NodeId>) {
        let cancelled = NodeStatus::Failed(CANCELLED.into());
        let reopened: Vec<NodeId> = saved
            .iter()
            .filter(|(n, st, _)| *st == cancelled && manifest.addressees.contains(n))
            .map(|(n, ..)| *n)
            .collect();
        // the cancelled wait again: a first-tier head among them keeps its part
        let saved: Vec<(NodeId, NodeStatus, u64)> = saved
            .iter()
            .map(|(n, st, v)| {
                (
                    *n,
                    if *st == cancelled {
                        NodeStatus::Waiting
                    } else {
                        st.clone()
                    },
                    *v,
                )
            })
            .collect();
        let mut m = Self::resume(now, manifest, signed, secret, cfg, &saved);
        if !reopened.is_empty() {
            // offered from each part's first waiting node, not only to waiting heads
            m.actions.clear();
            m.reoffer_waiting();
        }
        (m, reopened)
    }

    /// A request the NMS sent could not be delivered.
    pub fn send_failed(&mut self, now: Duration, to: NodeId, kind: ControlKind, reason: &str) {
        if kind == ControlKind::Offer {
            self.first_tier_failed(now, to, format!("unreachable: {reason}"));
        }
    }

    fn first_tier_failed(&mut self, now: Duration, head: NodeId, reason: String) {
        if self.cancelled {
            // the part stays with its head: a resume offers it again
            return;
        }
        self.set_status(now, head, NodeStatus::Failed(clip_reason(reason)));
        if let Some(a) = self.offered.remove(&head) {
            let rest = &a.part[1..];
            if let Some(&next) = rest.first() {
                self.offer(Assignment {
                    head: next,
                    part: rest.to_vec(),
                });
            }
        }
    }

    fn set_status(&mut self, now: Duration, node: NodeId, status: NodeStatus) {
        let Some(v) = self.nodes.get_mut(&node) else {
            return;
        };
        if v.status.is_final() {
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
        if status.is_final() {
            v.finished_at = Some(now);
        }
        v.status = status;
        if self.finished_at.is_none() && self.nodes.values().all(|v| v.status.is_final()) {
            self.finished_at = Some(now);
            self.actions.push_back(MonitorAction::Note(MonitorNote::Done));
        }
    }
}
