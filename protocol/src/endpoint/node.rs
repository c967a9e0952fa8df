//! The node endpoint: everything a node decides, across all its campaigns.
//!
//! A [`NodeEndpoint`] owns every [`NodeCampaign`] of a node, and the decisions that span
//! campaigns or outlive them: admission of offers (duplicates, trust on first use, finished
//! campaigns), request ids, probes, which peers can be dialled and the retry of failed
//! sends, the lifecycle of a campaign (when it is over, what it leaves on disk, which
//! installed versions are kept) and the journal that decides what a restart resumes.
//!
//! The contract is the one of quinn-proto's `Endpoint` and str0m's `Rtc`:
//!
//! - the shell feeds every input with the time: [`NodeEndpoint::handle`] with one
//!   [`Input`], and [`NodeEndpoint::handle_timeout`] at [`NodeEndpoint::poll_timeout`];
//! - after each call it drains [`NodeEndpoint::poll_action`] (things the shell must do:
//!   send, store, hash, install, serve, remove files, write the journal) and
//!   [`NodeEndpoint::poll_event`] (things the operator may want to know), kept apart, until
//!   both are empty, then sleeps until the next `poll_timeout`.
//!
//! Ids: a request this node sends gets an [`OutId`] from the endpoint (in the action); the
//! shell maps its transport handle to it and reports the answer or failure with it. A
//! request this node must answer gets a [`ReplyId`] from the shell (in the input); the
//! endpoint's answer carries it back. Offers are opened (decoded, signature checked) off
//! the shell's event loop: the endpoint asks with [`Action::OpenOffer`] and an
//! [`OfferTicket`], the shell answers with [`Input::OfferOpened`].
//!
//! Time is a `Duration` since an origin the shell picks; wall-clock time (for the expiry of
//! manifests) is [`Config::unix_origin`] plus that.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::admission::{AdmissionContext, Admitted, OpenedOffer, admit};
use crate::chunk::{ChunkSet, Hash};
use crate::endpoint::timer::Timers;
use crate::gate::{Gating, Policy, Readings, RelayHint, Thresholds};
use crate::id::NodeId;
use crate::keys::ChunkKey;
use crate::manifest::{CampaignId, Manifest};
use crate::receiver::{NodeAction, NodeCampaign, NodeConfig, Note, Refusal, backoff};
use crate::serve::{RequestId, ServeAction};
use crate::wire::{
    ChunkRequest, ChunkResponse, ChunkStatus, Control, ControlKind, Holding, InstallOutcome, Offer, Phase,
    ProbeState, RefuseReason, Verdict,
};

/// Tunables of a node endpoint.
#[derive(Debug, Clone)]
pub struct Config {
    /// The per-campaign machine's tunables.
    pub campaign: NodeConfig,
    /// Trust on first use (`--trust-first`): pin the first advertised NMS that offers a
    /// valid campaign directly, while no NMS is trusted.
    pub trust_first: bool,
    /// Unix seconds at the shell's time origin (`now == 0`).
    pub unix_origin: u64,
    /// Installed versions kept per package: the current one and the `keep_versions - 1`
    /// newest before it (default 2: the current and the previous). 0 keeps every version.
    pub keep_versions: usize,
    /// Offers from one peer being opened at once; more are refused `Busy`.
    pub max_opening_per_peer: usize,
    /// Offers being opened at once in total; more are refused `Busy`.
    pub max_opening: usize,
    /// Finished campaigns remembered (offers for them are refused, a restart does not
    /// resume them).
    pub max_finished: usize,
    /// A message for a peer whose address is not known yet waits this long for it, then
    /// is sent anyway (and retried like any failed send).
    pub address_wait: Duration,
    /// Attempts to deliver a one-shot message (offer, receipt) before it counts as
    /// undeliverable (an offer: the child is unreachable).
    pub send_attempts: u32,
    /// Attempts to deliver an install report or a trouble report before it is given up:
    /// more than [`Config::send_attempts`], as the NMS hears of this node's outcome from
    /// nothing else, and an NMS restart takes a while.
    pub report_attempts: u32,
    /// First pause before a failed one-shot message is sent again; doubles per attempt up
    /// to [`Config::send_retry_max`], jittered to `[d/2, d]`.
    pub send_retry_base: Duration,
    /// Longest pause between two attempts of a one-shot message.
    pub send_retry_max: Duration,
    /// The owner's relay policy (`--relay-policy`); `None`: each campaign's manifest.
    pub relay_policy: Option<Policy>,
    /// The owner's gating thresholds.
    pub gate: Thresholds,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            campaign: NodeConfig::default(),
            trust_first: false,
            unix_origin: 0,
            keep_versions: 2,
            max_opening_per_peer: 2,
            max_opening: 8,
            max_finished: 4096,
            address_wait: Duration::from_secs(60),
            // 4 pauses of 1-2, 2-4, 4-8 and 8-16 s: 15 to 30 s from the first attempt
            send_attempts: 5,
            // then 7 more pauses of 8-16 s: 71 to 142 s from the first attempt
            report_attempts: 12,
            send_retry_base: Duration::from_secs(2),
            send_retry_max: Duration::from_secs(16),
            relay_policy: None,
            gate: Thresholds::default(),
        }
    }
}

/// A request this node sends; given out by the endpoint in [`Action::SendControl`] and
/// [`Action::RequestChunk`]. The shell maps its transport handle to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutId(pub u64);

/// The shell's handle for a request this node must answer (a control request or a chunk
/// request). Unique among the requests the shell has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyId(pub u64);

/// An offer being opened off the shell's event loop ([`Action::OpenOffer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OfferTicket(pub u64);

/// The phase a campaign reached, as the journal records it. A restart resumes a campaign
/// whose last phase is [`JournalPhase::Accepted`] and never one whose phase is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JournalPhase {
    /// Admitted and prepared on disk (its offer saved): unfinished work.
    Accepted,
    /// Installed here (final): never downloaded, authenticated or installed again.
    Installed,
    /// Failed here (final): not resumed; later offers for it are refused.
    Failed,
}

impl JournalPhase {
    /// True for a phase after which nothing about the campaign changes.
    pub fn is_final(self) -> bool {
        matches!(self, JournalPhase::Installed | JournalPhase::Failed)
    }
    /// The word the journal file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            JournalPhase::Accepted => "accepted",
            JournalPhase::Installed => "installed",
            JournalPhase::Failed => "failed",
        }
    }
    /// The phase a journal word names.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "accepted" => JournalPhase::Accepted,
            "installed" => JournalPhase::Installed,
            "failed" => JournalPhase::Failed,
            _ => return None,
        })
    }
}

/// One line of the journal: campaign `campaign` reached `phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalEntry {
    /// The campaign.
    pub campaign: CampaignId,
    /// The phase it reached.
    pub phase: JournalPhase,
}

/// The state a journal's entries (oldest first) describe: the last phase of each
/// campaign, where a final phase never changes. Campaigns in order of their first entry.
pub fn fold_journal(entries: &[JournalEntry]) -> Vec<JournalEntry> {
    let mut order = Vec::new();
    let mut last: HashMap<CampaignId, JournalPhase> = HashMap::new();
    for e in entries {
        match last.get(&e.campaign) {
            Some(p) if p.is_final() => {}
            Some(_) => {
                last.insert(e.campaign, e.phase);
            }
            None => {
                order.push(e.campaign);
                last.insert(e.campaign, e.phase);
            }
        }
    }
    order
        .into_iter()
        .map(|c| JournalEntry {
            campaign: c,
            phase: last[&c],
        })
        .collect()
}

/// What is installed of one package, as the shell finds it on disk at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPackage {
    /// The package name.
    pub name: String,
    /// Sequence and root hash of the current version, if any.
    pub current: Option<(u64, Hash)>,
    /// Every installed sequence on disk (the current one included).
    pub sequences: Vec<u64>,
}

/// A campaign the shell found in its working area at start (`partial/<campaign>`).
#[derive(Debug, Clone)]
pub struct SavedCampaign {
    /// The campaign (its directory's name).
    pub campaign: CampaignId,
    /// The offer saved there, or why it could not be read.
    pub offer: Result<Offer, String>,
}

/// What the shell knows at start.
#[derive(Debug, Clone, Default)]
pub struct Start {
    /// NMS ids trusted: flags, config and earlier pins.
    pub trusted: Vec<NodeId>,
    /// Installed packages.
    pub installed: Vec<InstalledPackage>,
    /// The journal's entries, oldest first.
    pub journal: Vec<JournalEntry>,
    /// Campaigns left in the working area by an earlier run.
    pub saved: Vec<SavedCampaign>,
}

/// Everything the shell tells the endpoint, with the time, through [`NodeEndpoint::handle`].
#[derive(Debug)]
pub enum Input {
    /// A control request from `from` (offers included) to answer with `reply`.
    ControlRequest {
        /// The sender (authenticated by the transport).
        from: NodeId,
        /// The shell's handle to answer with.
        reply: ReplyId,
        /// The request.
        msg: Control,
    },
    /// The answer to [`Action::SendControl`] `id`.
    ControlResponse {
        /// The request answered.
        id: OutId,
        /// The answer.
        msg: Control,
    },
    /// [`Action::SendControl`] `id` could not be delivered (dial failed, connection
    /// closed, timed out).
    SendFailed {
        /// The request that failed.
        id: OutId,
        /// The transport's reason.
        reason: String,
    },
    /// A chunk request from `from` to answer with `reply`.
    ChunkRequest {
        /// The requester (authenticated by the transport).
        from: NodeId,
        /// The shell's handle to answer with.
        reply: ReplyId,
        /// The request.
        req: ChunkRequest,
    },
    /// The answer to [`Action::RequestChunk`] `id`.
    ChunkResponse {
        /// The request answered.
        id: OutId,
        /// The answer.
        resp: ChunkResponse,
    },
    /// [`Action::RequestChunk`] `id` failed in transport.
    ChunkFailed {
        /// The request that failed.
        id: OutId,
        /// The transport's reason.
        reason: String,
    },
    /// [`Action::OpenOffer`] `ticket` is done (run `crate::admission::open_offer`).
    OfferOpened {
        /// The ticket of the offer.
        ticket: OfferTicket,
        /// What opening it gave.
        result: Box<Result<OpenedOffer, Refusal>>,
    },
    /// [`Action::Prepare`] is done: the chunks already verified on disk, or why the
    /// campaign's working files could not be made.
    Prepared {
        /// The campaign.
        campaign: CampaignId,
        /// The chunks found verified on disk, or the error.
        result: Result<ChunkSet, String>,
    },
    /// [`Action::StoreChunk`] is written.
    ChunkStored {
        /// The campaign.
        campaign: CampaignId,
        /// The chunk.
        index: u32,
    },
    /// [`Action::StoreChunk`] could not be written.
    StoreFailed {
        /// The campaign.
        campaign: CampaignId,
        /// The chunk.
        index: u32,
        /// The error.
        reason: String,
    },
    /// [`Action::HashFile`] gave this root hash.
    FileHashed {
        /// The campaign.
        campaign: CampaignId,
        /// BLAKE3 of the whole file.
        root: Hash,
    },
    /// [`Action::HashFile`] could not read the file.
    HashFailed {
        /// The campaign.
        campaign: CampaignId,
        /// The error.
        reason: String,
    },
    /// [`Action::Install`] ran.
    InstallDone {
        /// The campaign.
        campaign: CampaignId,
        /// Its outcome.
        outcome: InstallOutcome,
    },
    /// The shell can dial this peer now (an address from discovery or the static peers,
    /// or a connection is open). Messages waiting for it go out.
    PeerAddressKnown(NodeId),
    /// This peer advertises itself as an NMS (discovery, identify). It trusts nothing by
    /// itself: it makes the peer a candidate for trust on first use.
    PeerHeardAsNms(NodeId),
    /// The activity probe's readings (every few seconds): relay gates open or close.
    Readings(Readings),
}

/// What the shell must do, drained with [`NodeEndpoint::poll_action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a control request; report [`Input::ControlResponse`] or [`Input::SendFailed`]
    /// with `id`.
    SendControl {
        /// The endpoint's id of this request.
        id: OutId,
        /// The peer.
        to: NodeId,
        /// The request.
        msg: Control,
    },
    /// Answer the control request `reply` with `msg`.
    Reply {
        /// The shell's handle.
        reply: ReplyId,
        /// The answer.
        msg: Control,
    },
    /// Open an offer (decode, check its signature: `crate::admission::open_offer`) off
    /// the event loop, then report [`Input::OfferOpened`] with `ticket`.
    OpenOffer {
        /// The ticket to report with.
        ticket: OfferTicket,
        /// Who sent it (for a resumed campaign, its parent on the saved path).
        from: NodeId,
        /// The offer.
        offer: Box<Offer>,
    },
    /// Make the campaign's working files (save the offer, open the package file, find the
    /// chunks already verified on disk), then report [`Input::Prepared`]. The package
    /// file stays open until [`Action::Forget`].
    Prepare {
        /// The campaign.
        campaign: CampaignId,
        /// The offer to save.
        offer: Box<Offer>,
        /// Its manifest (decoded, verified).
        manifest: Arc<Manifest>,
    },
    /// Request a chunk; report [`Input::ChunkResponse`] or [`Input::ChunkFailed`] with
    /// `id`.
    RequestChunk {
        /// The endpoint's id of this request.
        id: OutId,
        /// The source.
        to: NodeId,
        /// The request.
        req: ChunkRequest,
    },
    /// Write verified plaintext of chunk `index` at its offset; report
    /// [`Input::ChunkStored`] or [`Input::StoreFailed`].
    StoreChunk {
        /// The campaign.
        campaign: CampaignId,
        /// The chunk.
        index: u32,
        /// Its plaintext.
        data: Vec<u8>,
    },
    /// Hash the whole package file; report [`Input::FileHashed`] or [`Input::HashFailed`].
    HashFile {
        /// The campaign.
        campaign: CampaignId,
    },
    /// Install the package (the store's install step); report [`Input::InstallDone`].
    Install {
        /// The campaign.
        campaign: CampaignId,
    },
    /// Answer chunk request `reply`: read chunk `index`, seal it with `key`, send it.
    SendChunk {
        /// The shell's handle.
        reply: ReplyId,
        /// The campaign.
        campaign: CampaignId,
        /// The requester.
        to: NodeId,
        /// The chunk.
        index: u32,
        /// The requester's hop key.
        key: ChunkKey,
    },
    /// Answer chunk request `reply` with an empty response of this status.
    AnswerChunk {
        /// The shell's handle.
        reply: ReplyId,
        /// The campaign asked for.
        campaign: CampaignId,
        /// The chunk asked for (the answer carries it).
        index: u32,
        /// The status.
        status: ChunkStatus,
    },
    /// The campaign is over here: close its package file and remove its working files
    /// (`partial/<campaign>`; an installed version is a separate link and stays).
    Forget {
        /// The campaign.
        campaign: CampaignId,
    },
    /// Remove an installed version no longer kept (never the current one).
    RemoveVersion {
        /// The package.
        name: String,
        /// The sequence to remove.
        sequence: u64,
    },
    /// Trust on first use pinned `nms`: save `trusted` (every NMS trusted now).
    Pin {
        /// The NMS pinned now.
        nms: NodeId,
        /// Every NMS trusted, to save.
        trusted: Vec<NodeId>,
    },
    /// Append this entry to the journal (durably) before carrying out later actions.
    Journal(JournalEntry),
}

/// What the operator may want to know, drained with [`NodeEndpoint::poll_event`]. Changes
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A campaign started (offered, or resumed from disk after a restart).
    Accepted {
        /// The campaign.
        campaign: CampaignId,
        /// The sender of the offer (for a resumed campaign, its parent).
        from: NodeId,
        /// Resumed from disk rather than offered.
        resumed: bool,
        /// Package name, version and sequence.
        name: String,
        /// The version.
        version: String,
        /// The sequence.
        sequence: u64,
        /// Package size in bytes.
        size: u64,
        /// Nodes in this node's part (itself included).
        part: usize,
        /// Chunks found verified on disk.
        chunks_on_disk: u32,
        /// Chunks in the package.
        chunks: u32,
    },
    /// An offer was refused (`signer` is the manifest's NMS, when it could be read).
    Refused {
        /// The sender.
        from: NodeId,
        /// The manifest's signer, if the offer opened.
        signer: Option<NodeId>,
        /// Why.
        refusal: Refusal,
    },
    /// A campaign left by an earlier run is not resumed.
    NotResumed {
        /// The campaign.
        campaign: CampaignId,
        /// Why.
        reason: String,
    },
    /// Trust on first use pinned this NMS.
    Pinned {
        /// The NMS.
        nms: NodeId,
    },
    /// A peer advertises itself as an NMS (first time).
    HeardNms {
        /// The peer.
        peer: NodeId,
    },
    /// Something a campaign's machine noted.
    Note {
        /// The campaign.
        campaign: CampaignId,
        /// The note.
        note: Note,
    },
    /// The package was installed.
    Installed {
        /// The campaign.
        campaign: CampaignId,
        /// Package name.
        name: String,
        /// Its version.
        version: String,
        /// Its sequence.
        sequence: u64,
    },
    /// The campaign failed here.
    Failed {
        /// The campaign.
        campaign: CampaignId,
        /// Why.
        reason: String,
    },
    /// A message could not be delivered and goes again after `wait`.
    SendRetry {
        /// The campaign.
        campaign: CampaignId,
        /// The peer.
        to: NodeId,
        /// What was sent.
        kind: ControlKind,
        /// The attempt that failed (1 = first).
        attempt: u32,
        /// Pause before the next attempt.
        wait: Duration,
        /// The transport's reason.
        reason: String,
    },
    /// A message could not be delivered (after every attempt, for one-shot messages).
    SendFailed {
        /// The campaign.
        campaign: CampaignId,
        /// The peer.
        to: NodeId,
        /// What was sent.
        kind: ControlKind,
        /// The transport's reason.
        reason: String,
    },
    /// A campaign is over here (installed or failed, relaying done) and was dropped.
    Finished {
        /// The campaign.
        campaign: CampaignId,
        /// Installed or failed.
        phase: Phase,
        /// Chunks served to others.
        served_chunks: u64,
        /// Chunks fetched in this run.
        fetched_chunks: u32,
        /// Faults seen from sources.
        faults: u32,
    },
    /// Relaying under `policy` opened or closed (or a campaign starts gated): the
    /// campaigns that follow it serve others again, or answer `Gated`.
    Gate {
        /// The policy.
        policy: Policy,
        /// Relaying allowed now.
        open: bool,
        /// Why, for the owner.
        reason: String,
        /// The running campaigns that follow it.
        campaigns: Vec<CampaignId>,
    },
}

/// The endpoint's named deadlines; [`NodeEndpoint::poll_timeout`] is the earliest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerName {
    /// The campaign machine's own next wake-up (requests timing out, held requests,
    /// progress, authentication retry, chunk back-off, the end of relaying).
    Campaign(CampaignId),
    /// A failed one-shot message goes again (its serial number).
    Resend(u64),
    /// The earliest message waiting for a peer's address is sent anyway.
    AddressWait,
}

/// Where an offer being opened came from.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Peer {
        from: NodeId,
        reply: ReplyId,
    },
    Resume,
    /// A campaign that had ended here (`phase`, final, journaled) but was not over when the
    /// node restarted: it resumes only to report that phase again and end.
    Ended {
        campaign: CampaignId,
        phase: JournalPhase,
    },
}

#[derive(Debug)]
struct Preparing {
    opened: OpenedOffer,
    origin: Origin,
}

/// A request out, by [`OutId`].
#[derive(Debug)]
enum Out {
    Control {
        campaign: CampaignId,
        to: NodeId,
        kind: ControlKind,
        attempt: u32,
        /// A copy to send again, for one-shot messages.
        copy: Option<Box<Control>>,
    },
    Chunk {
        campaign: CampaignId,
        to: NodeId,
        index: u32,
    },
}

/// A message waiting for its peer's address, or for its next attempt.
#[derive(Debug)]
struct Waiting {
    campaign: CampaignId,
    to: NodeId,
    msg: Control,
    attempt: u32,
    since: Duration,
}

#[derive(Debug)]
struct Held {
    machine: NodeCampaign,
    journaled: JournalPhase,
    /// The machine's relaying is done ([`NodeAction::RelayDone`]); it is retired once no
    /// report to the NMS is still on its way (see [`NodeEndpoint::reports_pending`]).
    relay_done: bool,
}

#[derive(Debug, Default)]
struct Package {
    current: Option<(u64, Hash)>,
    sequences: BTreeSet<u64>,
}

/// One-shot messages: sent once by the machine, so a failed delivery is retried here.
fn one_shot(kind: ControlKind) -> bool {
    matches!(
        kind,
        ControlKind::Offer
            | ControlKind::Receipt
            | ControlKind::Trouble
            | ControlKind::HandBack
            | ControlKind::InstallReport
    )
}

/// Reports to the NMS: retried for longer than other messages (the NMS may be restarting),
/// and a campaign is not retired while one is out.
fn is_report(kind: ControlKind) -> bool {
    matches!(
        kind,
        ControlKind::InstallReport | ControlKind::Trouble | ControlKind::HandBack
    )
}

/// The installed sequences of a package to remove so that `keep` remain: the current one
/// and the `keep - 1` newest below it. Sequences above the current one (none, normally)
/// and the current one are never removed; `keep == 0` keeps everything.
pub fn versions_to_remove(sequences: &BTreeSet<u64>, current: u64, keep: usize) -> Vec<u64> {
    if keep == 0 {
        return Vec::new();
    }
    sequences
        .iter()
        .rev()
        .filter(|&&s| s < current)
        .skip(keep - 1)
        .copied()
        .collect()
}

/// All of a node's campaigns and the decisions above them. See the module documentation.
#[derive(Debug)]
pub struct NodeEndpoint {
    cfg: Config,
    me: NodeId,
    trusted: Vec<NodeId>,
    advertised_nms: HashSet<NodeId>,
    packages: HashMap<String, Package>,
    campaigns: HashMap<CampaignId, Held>,
    preparing: HashMap<CampaignId, Preparing>,
    opening: HashMap<OfferTicket, Origin>,
    finished: HashSet<CampaignId>,
    finished_order: VecDeque<CampaignId>,
    /// Peers the shell can dial.
    known: HashSet<NodeId>,
    parked: Vec<Waiting>,
    resend: HashMap<u64, Waiting>,
    out: HashMap<OutId, Out>,
    next_id: u64,
    next_serial: u64,
    retries: u64,
    timers: Timers<TimerName>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    /// The latest time seen (wall-clock time is [`Config::unix_origin`] plus this).
    last_now: Duration,
    /// Relay gates (the owner's policy and those of running campaigns).
    gating: Gating,
}

impl NodeEndpoint {
    /// A node endpoint for node `me`, with what the shell found at start. Campaigns the
    /// journal shows unfinished are resumed (their offers opened again); the working
    /// files of finished or unreadable ones are forgotten. Drain the actions after this.
    pub fn new(now: Duration, me: NodeId, cfg: Config, start: Start) -> Self {
        let gating = Gating::new(cfg.gate.clone(), cfg.relay_policy);
        let mut e = NodeEndpoint {
            cfg,
            me,
            trusted: start.trusted,
            advertised_nms: HashSet::new(),
            packages: HashMap::new(),
            campaigns: HashMap::new(),
            preparing: HashMap::new(),
            opening: HashMap::new(),
            finished: HashSet::new(),
            finished_order: VecDeque::new(),
            known: HashSet::new(),
            parked: Vec::new(),
            resend: HashMap::new(),
            out: HashMap::new(),
            next_id: 0,
            next_serial: 0,
            retries: 0,
            timers: Timers::default(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            last_now: now,
            gating,
        };
        if let Some(p) = e.cfg.relay_policy {
            e.gating.gate(now, p);
        }
        for p in start.installed {
            e.packages.insert(
                p.name,
                Package {
                    current: p.current,
                    sequences: p.sequences.into_iter().collect(),
                },
            );
        }
        let journal = fold_journal(&start.journal);
        let phase: HashMap<CampaignId, JournalPhase> =
            journal.iter().map(|j| (j.campaign, j.phase)).collect();
        for j in &journal {
            if j.phase.is_final() {
                e.remember_finished(j.campaign);
            }
        }
        for s in start.saved {
            let c = s.campaign;
            let offer = match s.offer {
                Ok(o) => o,
                Err(reason) => {
                    e.events.push_back(Event::NotResumed {
                        campaign: c,
                        reason: format!("its saved offer cannot be read: {reason}"),
                    });
                    e.actions.push_back(Action::Forget { campaign: c });
                    continue;
                }
            };
            let from = if offer.path.len() >= 2 {
                offer.path[offer.path.len() - 2]
            } else {
                match offer.manifest.open_unchecked() {
                    Ok(m) => m.nms,
                    Err(err) => {
                        e.events.push_back(Event::NotResumed {
                            campaign: c,
                            reason: format!("its saved manifest is unreadable: {err}"),
                        });
                        e.actions.push_back(Action::Forget { campaign: c });
                        continue;
                    }
                }
            };
            // a campaign whose final phase is journaled but whose working files are still
            // here was not over: its report may not have reached the NMS
            let origin = match phase.get(&c).copied().filter(|p| p.is_final()) {
                Some(phase) => {
                    e.finished.remove(&c);
                    e.finished_order.retain(|f| *f != c);
                    Origin::Ended { campaign: c, phase }
                }
                None => Origin::Resume,
            };
            let ticket = e.ticket();
            e.opening.insert(ticket, origin);
            e.actions.push_back(Action::OpenOffer {
                ticket,
                from,
                offer: Box::new(offer),
            });
        }
        e
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The NMS ids trusted now (pins included).
    pub fn trusted(&self) -> &[NodeId] {
        &self.trusted
    }

    /// Campaigns running (admitted and prepared, not yet over).
    pub fn running(&self) -> usize {
        self.campaigns.len()
    }

    /// Work in hand: campaigns running, being prepared, or offers being opened to resume.
    pub fn busy(&self) -> bool {
        !self.campaigns.is_empty()
            || !self.preparing.is_empty()
            || self
                .opening
                .values()
                .any(|o| matches!(o, Origin::Resume | Origin::Ended { .. }))
    }

    /// The machine of a running campaign.
    pub fn campaign(&self, c: &CampaignId) -> Option<&NodeCampaign> {
        self.campaigns.get(c).map(|h| &h.machine)
    }

    /// True when the endpoint can dial `peer` (its address is known).
    pub fn knows_address(&self, peer: &NodeId) -> bool {
        self.known.contains(peer)
    }

    /// The next action for the shell.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event for the operator.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest time [`Self::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.timers.next()
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.last_now = self.last_now.max(now);
        for t in self.timers.expired(now) {
            match t {
                TimerName::Campaign(c) => {
                    if let Some(h) = self.campaigns.get_mut(&c) {
                        h.machine.timeout(now);
                        self.pump(now, c);
                    }
                }
                TimerName::Resend(serial) => {
                    if let Some(w) = self.resend.remove(&serial) {
                        self.send(now, w.campaign, w.to, w.msg, w.attempt);
                    }
                }
                TimerName::AddressWait => {
                    let wait = self.cfg.address_wait;
                    let (due, keep): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.parked)
                        .into_iter()
                        .partition(|w| now >= w.since + wait);
                    self.parked = keep;
                    for w in due {
                        self.dispatch(w.campaign, w.to, w.msg, w.attempt);
                    }
                    self.set_address_timer();
                }
            }
        }
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Duration, input: Input) {
        self.last_now = self.last_now.max(now);
        match input {
            Input::ControlRequest { from, reply, msg } => {
                self.peer_known(from);
                self.on_control_request(now, from, reply, msg)
            }
            Input::ControlResponse { id, msg } => {
                if let Some(Out::Control { campaign, to, .. }) = self.out.remove(&id)
                    && let Some(h) = self.campaigns.get_mut(&campaign)
                {
                    h.machine.response(now, to, msg);
                    self.pump(now, campaign);
                }
            }
            Input::SendFailed { id, reason } => self.on_send_failed(now, id, reason),
            Input::ChunkRequest { from, reply, req } => {
                self.peer_known(from);
                let campaign = req.campaign;
                match self.campaigns.get_mut(&campaign) {
                    Some(h) => {
                        h.machine.chunk_request(now, RequestId(reply.0), from, &req);
                        self.pump(now, campaign);
                    }
                    None => self.actions.push_back(Action::AnswerChunk {
                        reply,
                        campaign,
                        index: req.index,
                        status: ChunkStatus::UnknownCampaign,
                    }),
                }
            }
            Input::ChunkResponse { id, resp } => {
                if let Some(Out::Chunk { campaign, to, .. }) = self.out.remove(&id)
                    && let Some(h) = self.campaigns.get_mut(&campaign)
                {
                    h.machine.chunk_response(now, to, resp);
                    self.pump(now, campaign);
                }
            }
            Input::ChunkFailed { id, reason } => {
                if let Some(Out::Chunk { campaign, to, index }) = self.out.remove(&id)
                    && let Some(h) = self.campaigns.get_mut(&campaign)
                {
                    h.machine.chunk_failed(now, to, index, &reason);
                    self.pump(now, campaign);
                }
            }
            Input::OfferOpened { ticket, result } => self.on_opened(now, ticket, *result),
            Input::Prepared { campaign, result } => self.on_prepared(now, campaign, result),
            Input::ChunkStored { campaign, index } => {
                self.with(now, campaign, |m| m.chunk_stored(now, index))
            }
            Input::StoreFailed {
                campaign,
                index,
                reason,
            } => self.with(now, campaign, |m| m.store_failed(now, index, &reason)),
            Input::FileHashed { campaign, root } => self.with(now, campaign, |m| m.file_hashed(now, root)),
            Input::HashFailed { campaign, reason } => {
                self.with(now, campaign, |m| m.hash_failed(now, &reason))
            }
            Input::InstallDone { campaign, outcome } => {
                self.with(now, campaign, |m| m.install_done(now, outcome))
            }
            Input::PeerAddressKnown(peer) => self.peer_known(peer),
            Input::PeerHeardAsNms(peer) => {
                if self.advertised_nms.insert(peer) {
                    self.events.push_back(Event::HeardNms { peer });
                }
            }
            Input::Readings(r) => self.on_readings(now, r),
        }
    }

    /// The relay gates: the owner's policy, readings, conditions, and every gate in use.
    pub fn gating(&self) -> &Gating {
        &self.gating
    }

    /// The running campaigns.
    pub fn campaign_ids(&self) -> Vec<CampaignId> {
        let mut v: Vec<CampaignId> = self.campaigns.keys().copied().collect();
        v.sort();
        v
    }

    /// What this node advertises about its relaying: from the owner's policy and its gate,
    /// `None` when the owner set no policy (each campaign's manifest decides).
    pub fn relay_hint(&self) -> Option<RelayHint> {
        let p = self.gating.local()?;
        let open = self
            .gating
            .gates()
            .iter()
            .find(|g| g.policy == p)
            .is_some_and(|g| g.open);
        Some(RelayHint::of(&p, open))
    }

    /// The relay policy campaign `c` follows (the owner's, else its manifest's).
    pub fn relay_policy(&self, c: &CampaignId) -> Option<Policy> {
        let h = self.campaigns.get(c)?;
        Some(self.gating.effective(&h.machine.manifest().relay))
    }

    fn following(&self, p: Policy) -> Vec<CampaignId> {
        let mut v: Vec<CampaignId> = self
            .campaigns
            .iter()
            .filter(|(_, h)| self.gating.effective(&h.machine.manifest().relay) == p)
            .map(|(c, _)| *c)
            .collect();
        v.sort();
        v
    }

    fn on_readings(&mut self, now: Duration, r: Readings) {
        for ch in self.gating.update(now, r) {
            let campaigns = self.following(ch.policy);
            for c in &campaigns {
                self.with(now, *c, |m| m.set_gated(now, !ch.open));
            }
            self.events.push_back(Event::Gate {
                policy: ch.policy,
                open: ch.open,
                reason: ch.reason,
                campaigns,
            });
        }
    }

    fn with(&mut self, now: Duration, c: CampaignId, f: impl FnOnce(&mut NodeCampaign)) {
        if let Some(h) = self.campaigns.get_mut(&c) {
            f(&mut h.machine);
            self.pump(now, c);
        }
    }

    fn ticket(&mut self) -> OfferTicket {
        self.next_serial += 1;
        OfferTicket(self.next_serial)
    }

    fn out_id(&mut self) -> OutId {
        self.next_id += 1;
        OutId(self.next_id)
    }

    fn peer_known(&mut self, peer: NodeId) {
        if !self.known.insert(peer) {
            return;
        }
        let (go, keep): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|w| w.to == peer);
        self.parked = keep;
        for w in go {
            self.dispatch(w.campaign, w.to, w.msg, w.attempt);
        }
        self.set_address_timer();
    }

    fn set_address_timer(&mut self) {
        match self.parked.iter().map(|w| w.since).min() {
            Some(t) => self.timers.set(TimerName::AddressWait, t + self.cfg.address_wait),
            None => self.timers.clear(TimerName::AddressWait),
        }
    }

    /// Sends `msg` once `to` can be dialled (or after [`Config::address_wait`]).
    fn send(&mut self, now: Duration, campaign: CampaignId, to: NodeId, msg: Control, attempt: u32) {
        if self.known.contains(&to) {
            self.dispatch(campaign, to, msg, attempt);
            return;
        }
        // progress is a snapshot: only the newest waits
        if msg.kind() == ControlKind::Progress
            && let Some(w) = self
                .parked
                .iter_mut()
                .find(|w| w.campaign == campaign && w.to == to && w.msg.kind() == ControlKind::Progress)
        {
            w.msg = msg;
            return;
        }
        self.parked.push(Waiting {
            campaign,
            to,
            msg,
            attempt,
            since: now,
        });
        self.set_address_timer();
    }

    fn dispatch(&mut self, campaign: CampaignId, to: NodeId, msg: Control, attempt: u32) {
        let id = self.out_id();
        let kind = msg.kind();
        let copy = one_shot(kind).then(|| Box::new(msg.clone()));
        self.out.insert(
            id,
            Out::Control {
                campaign,
                to,
                kind,
                attempt,
                copy,
            },
        );
        self.actions.push_back(Action::SendControl { id, to, msg });
    }

    fn on_send_failed(&mut self, now: Duration, id: OutId, reason: String) {
        let Some(Out::Control {
            campaign,
            to,
            kind,
            attempt,
            copy,
        }) = self.out.remove(&id)
        else {
            return;
        };
        if !self.campaigns.contains_key(&campaign) {
            return;
        }
        let attempts = if is_report(kind) {
            self.cfg.report_attempts
        } else {
            self.cfg.send_attempts
        };
        if let Some(msg) = copy
            && attempt < attempts
        {
            self.retries += 1;
            let mut salt = self.me.to_bytes();
            salt.extend_from_slice(&campaign);
            salt.extend_from_slice(&self.retries.to_le_bytes());
            let wait = backoff(self.cfg.send_retry_base, self.cfg.send_retry_max, attempt, &salt);
            self.next_serial += 1;
            let serial = self.next_serial;
            self.resend.insert(
                serial,
                Waiting {
                    campaign,
                    to,
                    msg: *msg,
                    attempt: attempt + 1,
                    since: now,
                },
            );
            self.timers.set(TimerName::Resend(serial), now + wait);
            self.events.push_back(Event::SendRetry {
                campaign,
                to,
                kind,
                attempt,
                wait,
                reason,
            });
            return;
        }
        self.events.push_back(Event::SendFailed {
            campaign,
            to,
            kind,
            reason: reason.clone(),
        });
        if let Some(h) = self.campaigns.get_mut(&campaign) {
            h.machine.send_failed(now, to, kind, &reason);
            self.pump(now, campaign);
        }
    }

    /// Where this node stands in campaign `c`, for a probe's answer.
    fn holding(&self, c: &CampaignId) -> Holding {
        if let Some(h) = self.campaigns.get(c) {
            Holding::Running {
                phase: h.machine.phase(),
                verified: h.machine.verified_bytes(),
            }
        } else if self.finished.contains(c) {
            Holding::Finished
        } else if self.preparing.contains_key(c) {
            Holding::Opening
        } else {
            Holding::No
        }
    }

    fn on_control_request(&mut self, now: Duration, from: NodeId, reply: ReplyId, msg: Control) {
        let answer = match msg {
            Control::Offer(offer) => return self.on_offer(from, reply, offer),
            Control::Probe { nonce, campaign } => Control::ProbeReply {
                nonce,
                state: campaign.map(|c| ProbeState {
                    campaign: c,
                    holding: self.holding(&c),
                }),
            },
            other => match other.campaign().copied() {
                Some(c) if self.campaigns.contains_key(&c) => {
                    let h = self.campaigns.get_mut(&c).expect("held");
                    let a = h.machine.request(now, from, &other);
                    self.actions.push_back(Action::Reply { reply, msg: a });
                    self.pump(now, c);
                    return;
                }
                _ => Control::Error {
                    reason: "this node does not know that campaign".into(),
                },
            },
        };
        self.actions.push_back(Action::Reply { reply, msg: answer });
    }

    /// An offer arrived: opened off the loop, at most [`Config::max_opening_per_peer`]
    /// per peer and [`Config::max_opening`] in all; more are refused `Busy`.
    fn on_offer(&mut self, from: NodeId, reply: ReplyId, offer: Box<Offer>) {
        let from_peer = self
            .opening
            .values()
            .filter(|o| matches!(o, Origin::Peer { from: f, .. } if *f == from))
            .count();
        if from_peer >= self.cfg.max_opening_per_peer || self.opening.len() >= self.cfg.max_opening {
            let refusal = Refusal {
                reason: RefuseReason::Busy,
                detail: "too many offers being checked; try again later".into(),
            };
            self.refuse(from, reply, CampaignId::default(), None, refusal);
            return;
        }
        let ticket = self.ticket();
        self.opening.insert(ticket, Origin::Peer { from, reply });
        self.actions.push_back(Action::OpenOffer { ticket, from, offer });
    }

    fn refuse(
        &mut self,
        from: NodeId,
        reply: ReplyId,
        campaign: CampaignId,
        signer: Option<NodeId>,
        r: Refusal,
    ) {
        self.actions.push_back(Action::Reply {
            reply,
            msg: Control::OfferReply {
                campaign,
                verdict: r.verdict(),
            },
        });
        self.events.push_back(Event::Refused {
            from,
            signer,
            refusal: r,
        });
    }

    fn on_opened(&mut self, now: Duration, ticket: OfferTicket, result: Result<OpenedOffer, Refusal>) {
        let Some(origin) = self.opening.remove(&ticket) else {
            return;
        };
        let opened = match result {
            Ok(o) => o,
            Err(r) => return self.refused(origin, None, None, r),
        };
        let c = opened.manifest.campaign;
        let held = self.campaigns.contains_key(&c) || self.preparing.contains_key(&c);
        if let Origin::Ended { campaign, phase } = origin {
            return self.resume_ended(now, campaign, phase, opened, held);
        }
        let resuming = matches!(origin, Origin::Resume);
        let ctx = AdmissionContext {
            trusted: &self.trusted,
            // a campaign resumes only under a trust already held: no pinning there
            trust_first: self.cfg.trust_first && !resuming,
            advertised_nms: &self.advertised_nms,
            unix_now: self.cfg.unix_origin + self.last_now.as_secs(),
            installed: self.packages.get(&opened.manifest.name).and_then(|p| p.current),
            held,
            finished: self.finished.contains(&c),
            resuming,
        };
        match admit(&opened, &ctx) {
            // an unfinished campaign refused at restart (e.g. a newer sequence is installed
            // now) ends failed here and is reported, or its NMS would wait for it forever;
            // only to an NMS still trusted
            Err(r) if resuming && r.reason != RefuseReason::Untrusted => {
                self.events.push_back(Event::NotResumed {
                    campaign: c,
                    reason: r.detail.clone(),
                });
                let OpenedOffer { offer, manifest, .. } = opened;
                let machine = NodeCampaign::resume_refused(
                    now,
                    self.me,
                    offer,
                    manifest,
                    self.cfg.campaign.clone(),
                    &r.detail,
                );
                self.hold(now, c, machine);
            }
            Err(r) => {
                let signer = Some(opened.manifest.nms);
                self.refused(origin, Some(c), signer, r)
            }
            Ok(Admitted::AlreadyHeld) => {
                if let Origin::Peer { reply, .. } = origin {
                    self.actions.push_back(Action::Reply {
                        reply,
                        msg: Control::OfferReply {
                            campaign: c,
                            verdict: Verdict::Accept,
                        },
                    });
                }
            }
            Ok(Admitted::Start { pin }) => {
                if let Some(nms) = pin {
                    self.trusted.push(nms);
                    self.actions.push_back(Action::Pin {
                        nms,
                        trusted: self.trusted.clone(),
                    });
                    self.events.push_back(Event::Pinned { nms });
                }
                let manifest = Arc::new(opened.manifest.clone());
                self.actions.push_back(Action::Prepare {
                    campaign: c,
                    offer: Box::new(opened.offer.clone()),
                    manifest,
                });
                self.preparing.insert(c, Preparing { opened, origin });
            }
        }
    }

    fn refused(&mut self, origin: Origin, c: Option<CampaignId>, signer: Option<NodeId>, r: Refusal) {
        match origin {
            Origin::Peer { from, reply } => self.refuse(from, reply, c.unwrap_or_default(), signer, r),
            Origin::Ended { campaign, phase } => {
                self.events.push_back(Event::NotResumed {
                    campaign,
                    reason: format!(
                        "it had ended here ({}) before the restart, and {}",
                        phase.as_str(),
                        r.detail
                    ),
                });
                self.actions.push_back(Action::Forget { campaign });
                self.remember_finished(campaign);
            }
            Origin::Resume => {
                if let Some(c) = c {
                    self.events.push_back(Event::NotResumed {
                        campaign: c,
                        reason: r.detail,
                    });
                    self.actions.push_back(Action::Forget { campaign: c });
                }
            }
        }
    }

    fn on_prepared(&mut self, now: Duration, c: CampaignId, result: Result<ChunkSet, String>) {
        let Some(Preparing { opened, origin }) = self.preparing.remove(&c) else {
            return;
        };
        let have = match result {
            Ok(h) => h,
            Err(e) => {
                let r = Refusal {
                    reason: RefuseReason::Busy,
                    detail: format!("cannot store the package: {e}"),
                };
                self.actions.push_back(Action::Forget { campaign: c });
                return self.refused(origin, Some(c), Some(opened.manifest.nms), r);
            }
        };
        let OpenedOffer {
            offer,
            manifest,
            from,
        } = opened;
        self.events.push_back(Event::Accepted {
            campaign: c,
            from,
            resumed: matches!(origin, Origin::Resume),
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            sequence: manifest.sequence,
            size: manifest.size,
            part: offer.part.len(),
            chunks_on_disk: have.count(),
            chunks: manifest.layout().map(|l| l.count()).unwrap_or(0),
        });
        self.actions.push_back(Action::Journal(JournalEntry {
            campaign: c,
            phase: JournalPhase::Accepted,
        }));
        if let Origin::Peer { reply, .. } = origin {
            self.actions.push_back(Action::Reply {
                reply,
                msg: Control::OfferReply {
                    campaign: c,
                    verdict: Verdict::Accept,
                },
            });
        }
        let p = self.gating.effective(&manifest.relay);
        let relay = RelayHint::of(&p, self.gating.gate(now, p).open);
        let machine = NodeCampaign::accept(
            now,
            self.me,
            offer,
            manifest,
            self.cfg.campaign.clone(),
            have,
            relay,
        );
        self.hold(now, c, machine);
    }

    /// A campaign that had ended here before the restart (`phase` journaled) but was not
    /// over: it ends again at once and reports `phase` (to an NMS still trusted), fetching,
    /// authenticating, installing and serving nothing; it is over once the report is
    /// delivered or given up. Nothing is journaled again.
    fn resume_ended(
        &mut self,
        now: Duration,
        c: CampaignId,
        phase: JournalPhase,
        opened: OpenedOffer,
        held: bool,
    ) {
        let origin = Origin::Ended { campaign: c, phase };
        let m = &opened.manifest;
        let refusal = if m.campaign != c {
            Some("its saved offer is for another campaign".to_string())
        } else if !self.trusted.contains(&m.nms) {
            Some(format!("its NMS {} is not trusted any more", m.nms))
        } else if held {
            Some("it runs again".to_string())
        } else {
            None
        };
        if let Some(detail) = refusal {
            let r = Refusal {
                reason: RefuseReason::Untrusted,
                detail,
            };
            return self.refused(origin, Some(c), Some(m.nms), r);
        }
        let OpenedOffer {
            offer,
            manifest,
            from,
        } = opened;
        self.events.push_back(Event::Accepted {
            campaign: c,
            from,
            resumed: true,
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            sequence: manifest.sequence,
            size: manifest.size,
            part: offer.part.len(),
            chunks_on_disk: 0,
            chunks: manifest.layout().map(|l| l.count()).unwrap_or(0),
        });
        let outcome = match phase {
            JournalPhase::Installed => InstallOutcome::Installed,
            _ => InstallOutcome::Failed {
                reason: "it had failed on this node before the node restarted (the first report, \
                         with the reason, may not have reached the NMS)"
                    .into(),
            },
        };
        let machine =
            NodeCampaign::resume_ended(now, self.me, offer, manifest, self.cfg.campaign.clone(), outcome);
        self.hold_as(now, c, machine, phase);
    }

    /// Holds campaign `c`'s new machine (its acceptance is journaled) and carries out what
    /// it decided.
    fn hold(&mut self, now: Duration, c: CampaignId, machine: NodeCampaign) {
        self.hold_as(now, c, machine, JournalPhase::Accepted);
    }

    /// Holds campaign `c`'s new machine, whose phase `journaled` is in the journal; it
    /// starts gated if its relay gate is closed.
    fn hold_as(&mut self, now: Duration, c: CampaignId, mut machine: NodeCampaign, journaled: JournalPhase) {
        let p = self.gating.effective(&machine.manifest().relay);
        machine.set_restricted(p != Policy::ALWAYS);
        let g = self.gating.gate(now, p);
        if !g.open {
            machine.set_gated(now, true);
            self.events.push_back(Event::Gate {
                policy: p,
                open: false,
                reason: g.reason.clone(),
                campaigns: vec![c],
            });
        }
        let (name, version, sequence) = {
            let m = machine.manifest();
            (m.name.clone(), m.version.clone(), m.sequence)
        };
        self.campaigns.insert(
            c,
            Held {
                machine,
                journaled,
                relay_done: false,
            },
        );
        self.pump(now, c);
        if journaled == JournalPhase::Accepted {
            self.supersede_older(now, c, &name, &version, sequence);
        }
    }

    /// A newer version of package `name` was accepted (campaign `newer`): this node's
    /// campaigns of lower sequences that are still fetching or verifying stop there
    /// ([`NodeCampaign::superseded`]); the NMS has halted them already.
    fn supersede_older(
        &mut self,
        now: Duration,
        newer: CampaignId,
        name: &str,
        version: &str,
        sequence: u64,
    ) {
        let mut older: Vec<CampaignId> = self
            .campaigns
            .iter()
            .filter(|(id, h)| {
                **id != newer && h.machine.manifest().name == name && h.machine.manifest().sequence < sequence
            })
            .map(|(id, _)| *id)
            .collect();
        older.sort();
        let reason = format!("superseded by {name} {version} (sequence {sequence})");
        for o in older {
            let stopped = self
                .campaigns
                .get_mut(&o)
                .is_some_and(|h| h.machine.superseded(now, &reason));
            if stopped {
                self.pump(now, o);
            }
        }
    }

    /// Carries out what campaign `c`'s machine decided: journal first (a final phase is
    /// written before the report goes out), then its actions, then its timer; retires it
    /// when its relaying is done.
    fn pump(&mut self, now: Duration, c: CampaignId) {
        let Some(h) = self.campaigns.get_mut(&c) else {
            return;
        };
        let reached = match h.machine.phase() {
            Phase::Installed => Some(JournalPhase::Installed),
            Phase::Failed => Some(JournalPhase::Failed),
            _ => None,
        };
        if let Some(p) = reached
            && !h.journaled.is_final()
        {
            h.journaled = p;
            self.actions.push_back(Action::Journal(JournalEntry {
                campaign: c,
                phase: p,
            }));
            let m = h.machine.manifest();
            match p {
                JournalPhase::Installed => {
                    self.events.push_back(Event::Installed {
                        campaign: c,
                        name: m.name.clone(),
                        version: m.version.clone(),
                        sequence: m.sequence,
                    });
                    let (name, seq, root) = (m.name.clone(), m.sequence, m.root);
                    self.installed(name, seq, root);
                }
                _ => {
                    let reason = match h.machine.outcome() {
                        Some(InstallOutcome::Failed { reason }) => reason.clone(),
                        _ => String::new(),
                    };
                    self.events.push_back(Event::Failed { campaign: c, reason });
                }
            }
        }
        let mut over = false;
        loop {
            let Some(h) = self.campaigns.get_mut(&c) else {
                return;
            };
            let Some(a) = h.machine.poll_action() else {
                break;
            };
            match a {
                NodeAction::Send { to, msg } => self.send(now, c, to, msg, 1),
                NodeAction::RequestChunk { to, req } => {
                    let id = self.out_id();
                    self.out.insert(
                        id,
                        Out::Chunk {
                            campaign: c,
                            to,
                            index: req.index,
                        },
                    );
                    self.actions.push_back(Action::RequestChunk { id, to, req });
                }
                NodeAction::Store { index, data } => self.actions.push_back(Action::StoreChunk {
                    campaign: c,
                    index,
                    data,
                }),
                NodeAction::HashFile => self.actions.push_back(Action::HashFile { campaign: c }),
                NodeAction::Install => self.actions.push_back(Action::Install { campaign: c }),
                NodeAction::Serve(ServeAction::SendChunk { req, to, index, key }) => {
                    self.actions.push_back(Action::SendChunk {
                        reply: ReplyId(req.0),
                        campaign: c,
                        to,
                        index,
                        key,
                    })
                }
                NodeAction::Serve(ServeAction::Answer { req, index, status }) => {
                    self.actions.push_back(Action::AnswerChunk {
                        reply: ReplyId(req.0),
                        campaign: c,
                        index,
                        status,
                    })
                }
                NodeAction::Note(note) => self.events.push_back(Event::Note { campaign: c, note }),
                NodeAction::RelayDone => over = true,
            }
        }
        // the campaign ends only once its reports reached the NMS (or were given up): a
        // retired campaign's retries are dropped
        let relay_done = match self.campaigns.get_mut(&c) {
            Some(h) => {
                h.relay_done |= over;
                h.relay_done
            }
            None => return,
        };
        if relay_done && !self.reports_pending(c) {
            self.retire(c);
            return;
        }
        match self.campaigns.get(&c).and_then(|h| h.machine.poll_timeout()) {
            Some(t) => self.timers.set(TimerName::Campaign(c), t),
            None => self.timers.clear(TimerName::Campaign(c)),
        }
    }

    /// True while an install report or a trouble report of campaign `c` is out, waiting
    /// for its peer's address, or waiting to be sent again.
    fn reports_pending(&self, c: CampaignId) -> bool {
        let report = is_report;
        self.out
            .values()
            .any(|o| matches!(o, Out::Control { campaign, kind, .. } if *campaign == c && report(*kind)))
            || self
                .resend
                .values()
                .chain(&self.parked)
                .any(|w| w.campaign == c && report(w.msg.kind()))
    }

    /// A package was installed: it is what admission checks against from now on, and
    /// versions beyond [`Config::keep_versions`] are removed.
    fn installed(&mut self, name: String, seq: u64, root: Hash) {
        let keep = self.cfg.keep_versions;
        let p = self.packages.entry(name.clone()).or_default();
        if p.current.is_none_or(|(s, _)| s <= seq) {
            p.current = Some((seq, root));
        }
        p.sequences.insert(seq);
        let current = p.current.map(|(s, _)| s).unwrap_or(seq);
        let gone = versions_to_remove(&p.sequences, current, keep);
        for s in gone {
            p.sequences.remove(&s);
            self.actions.push_back(Action::RemoveVersion {
                name: name.clone(),
                sequence: s,
            });
        }
    }

    /// Campaign `c` is over here: dropped, its files forgotten, its id remembered so that
    /// later offers for it are refused.
    fn retire(&mut self, c: CampaignId) {
        let Some(h) = self.campaigns.remove(&c) else {
            return;
        };
        self.timers.clear(TimerName::Campaign(c));
        self.out.retain(|_, o| match o {
            Out::Control { campaign, .. } | Out::Chunk { campaign, .. } => *campaign != c,
        });
        self.parked.retain(|w| w.campaign != c);
        self.set_address_timer();
        let gone: Vec<u64> = self
            .resend
            .iter()
            .filter(|(_, w)| w.campaign == c)
            .map(|(s, _)| *s)
            .collect();
        for s in gone {
            self.resend.remove(&s);
            self.timers.clear(TimerName::Resend(s));
        }
        self.actions.push_back(Action::Forget { campaign: c });
        self.events.push_back(Event::Finished {
            campaign: c,
            phase: h.machine.phase(),
            served_chunks: h.machine.served_chunks(),
            fetched_chunks: h.machine.fetched_chunks(),
            faults: h.machine.total_faults(),
        });
        self.remember_finished(c);
        let in_use: Vec<Policy> = self
            .campaigns
            .values()
            .map(|h| self.gating.effective(&h.machine.manifest().relay))
            .collect();
        self.gating.retain(|p| in_use.contains(p));
    }

    fn remember_finished(&mut self, c: CampaignId) {
        if !self.finished.insert(c) {
            return;
        }
        self.finished_order.push_back(c);
        while self.finished_order.len() > self.cfg.max_finished {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
    }

    /// Checks the endpoint's invariants; panics with the one broken. For tests and
    /// simulators: every request id out maps to a running campaign, at most `window`
    /// chunk requests per source are in flight and each was given to the shell, no
    /// campaign is both running and finished, a final phase is journaled once reached, and
    /// the timer of a campaign is its machine's.
    pub fn check_invariants(&self) {
        for (id, o) in &self.out {
            let c = match o {
                Out::Control { campaign, .. } | Out::Chunk { campaign, .. } => campaign,
            };
            assert!(
                self.campaigns.contains_key(c),
                "{id:?} maps to no running campaign"
            );
        }
        for (c, h) in &self.campaigns {
            assert!(!self.finished.contains(c), "campaign both running and finished");
            assert!(
                !self.preparing.contains_key(c),
                "campaign both running and preparing"
            );
            let mut per_source: BTreeMap<NodeId, usize> = BTreeMap::new();
            for (index, source) in h.machine.in_flight() {
                *per_source.entry(source).or_default() += 1;
                assert!(
                    self.out.values().any(|o| matches!(o,
                        Out::Chunk { campaign, to, index: i } if campaign == c && *to == source && *i == index)),
                    "chunk {index} in flight to {source} has no request id"
                );
            }
            for (s, n) in per_source {
                assert!(
                    n <= self.cfg.campaign.window,
                    "{n} chunk requests in flight to {s}"
                );
            }
            let final_phase = matches!(h.machine.phase(), Phase::Installed | Phase::Failed);
            assert_eq!(final_phase, h.journaled.is_final(), "journal behind the machine");
            if final_phase {
                let want = if h.machine.phase() == Phase::Installed {
                    JournalPhase::Installed
                } else {
                    JournalPhase::Failed
                };
                assert_eq!(h.journaled, want, "a final phase changed");
            }
            assert_eq!(
                self.timers.get(TimerName::Campaign(*c)),
                h.machine.poll_timeout(),
                "campaign timer out of date"
            );
        }
        for c in self.preparing.keys() {
            assert!(!self.finished.contains(c), "campaign both preparing and finished");
        }
        assert_eq!(self.finished.len(), self.finished_order.len());
        assert!(self.finished.len() <= self.cfg.max_finished);
        for w in &self.parked {
            assert!(!self.known.contains(&w.to), "a message waits for a known peer");
        }
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
