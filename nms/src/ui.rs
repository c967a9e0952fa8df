//! What the operator sees, drawn from the NMS endpoint's events ([`NmsEvent`]) and
//! nothing else, in one of three [`Mode`]s:
//!
//! - **live** (stderr is a terminal): indicatif bars for the campaigns that are running,
//!   nothing else. A campaign gets a header bar, then one bar per node while every running
//!   campaign's nodes fit the terminal's height, else one line per node state (waiting,
//!   receiving, verifying, installing, installed, failed) with the count, the bytes and,
//!   for failures, the reasons. When a campaign ends its bars are removed and its summary
//!   is printed once above the bars: an idle NMS draws nothing. Operator lines (drops,
//!   campaign starts, failures) are printed above the bars too.
//! - **plain** (stderr is not a terminal): one line per event on stdout, and at most one
//!   progress line per running campaign every [`PLAIN_PROGRESS_EVERY`].
//! - **JSON** (`--json`): one JSON object per line on stdout for every event, and the
//!   summary; the fields are documented in `docs/operations.md` ("Operator output").
//!
//! Every mode ends a campaign with its [`Summary`]: per node the outcome, the reason, the
//! time and where its bytes came from. The NMS knows a node's source from its progress
//! reports only: the bytes a node verified between two reports are credited to the source
//! named in the later one ([`Track`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_protocol::endpoint::nms::{CampaignSummary, NmsEvent};
use baton_protocol::wire::PROTOCOL_VERSION;
use baton_protocol::{CampaignId, Manifest, NodeId, NodeStatus, Transfer};
use indicatif::{BinaryBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use serde::Serialize;
use serde_json::{Value, json};

/// In plain mode, a running campaign's progress line is printed at most this often.
pub const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Terminal rows the live view leaves free (the cursor's line and one spare).
const RESERVED_ROWS: usize = 2;
/// Rows a campaign shown by state uses at most (one per [`StateKey`]).
const STATE_ROWS: usize = 6;
/// Sources remembered per node; bytes from further sources are added to the last one.
const MAX_SOURCES: usize = 16;

/// How the operator's output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Progress bars on the terminal (stderr).
    Live,
    /// Log lines on stdout.
    Plain,
    /// JSON lines on stdout.
    Json,
}

impl Mode {
    /// `--json` wins; else bars when stderr is a terminal, log lines when it is not.
    pub fn detect(json: bool) -> Mode {
        if json {
            Mode::Json
        } else if io::IsTerminal::is_terminal(&io::stderr()) {
            Mode::Live
        } else {
            Mode::Plain
        }
    }
}

/// The end of a campaign, for the operator and for scripts (`summary.json`, `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub campaign: String,
    pub package: String,
    pub version: String,
    pub sequence: u64,
    pub size: u64,
    pub nodes: usize,
    pub installed: usize,
    pub failed: Vec<FailedNode>,
    /// Nodes that did not answer the NMS's probes (they get the package if they return
    /// while the campaign is unexpired).
    pub unreachable: Vec<FailedNode>,
    /// Why the campaign was halted (`--halt-after`), if it was.
    pub halted: Option<String>,
    /// Seconds from the drop being detected to the last install.
    pub wall_secs: f64,
    /// Bytes the NMS sent (chunk frames and control messages).
    pub nms_bytes_sent: u64,
    /// `nms_bytes_sent / size`.
    pub nms_copies: f64,
    pub per_node: Vec<NodeResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedNode {
    pub node: String,
    pub reason: String,
}

/// One addressee at the end of a campaign.
#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub node: String,
    /// `installed`, `failed`, `unreachable`, `halted`, `trusts-other-nms` (or the state
    /// it was left in).
    pub status: String,
    /// Why it failed, is unreachable, was halted or refused, in full; `null` otherwise.
    pub reason: Option<String>,
    /// Seconds from the campaign's start to the node's final report.
    pub secs: Option<f64>,
    /// Where its bytes came from, most first.
    pub sources: Vec<SourceBytes>,
    /// Bytes the other addressees reported fetching from it (what it relayed).
    pub served: u64,
}

/// Bytes a node verified while it reported fetching from one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceBytes {
    /// The serving peer's id; `null` when the node did not say.
    pub from: Option<String>,
    /// True when the source is this NMS.
    pub nms: bool,
    pub bytes: u64,
}

impl Summary {
    /// The summary of the endpoint's `s`, without sources.
    pub fn from_core(s: &CampaignSummary) -> Summary {
        Summary::with_sources(s, None, &HashMap::new())
    }

    /// The summary of `s`, with each node's sources from `tracks`; `nms` names the NMS.
    fn with_sources(s: &CampaignSummary, nms: Option<&NodeId>, tracks: &HashMap<NodeId, Track>) -> Summary {
        let listed = |it: &mut dyn Iterator<Item = (&NodeId, &str)>| -> Vec<FailedNode> {
            it.map(|(node, reason)| FailedNode {
                node: node.to_string(),
                reason: reason.to_string(),
            })
            .collect()
        };
        let failed = listed(&mut s.failed());
        let unreachable = listed(&mut s.unreachable());
        let mut served: HashMap<NodeId, u64> = HashMap::new();
        for t in tracks.values() {
            for (src, bytes) in &t.from {
                if let Some(p) = src {
                    *served.entry(*p).or_default() += *bytes;
                }
            }
        }
        let per_node = s
            .nodes
            .iter()
            .map(|o| {
                let mut sources: Vec<SourceBytes> = tracks
                    .get(&o.node)
                    .map(|t| {
                        t.from
                            .iter()
                            .filter(|(_, b)| *b > 0)
                            .map(|(src, bytes)| SourceBytes {
                                from: src.map(|p| p.to_string()),
                                nms: src.is_some() && src.as_ref() == nms,
                                bytes: *bytes,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                sources.sort_by_key(|s| std::cmp::Reverse(s.bytes));
                NodeResult {
                    node: o.node.to_string(),
                    status: status_name(&o.status).to_string(),
                    reason: o.status.reason().map(str::to_string),
                    secs: o.took.map(|t| t.as_secs_f64()),
                    sources,
                    served: served.get(&o.node).copied().unwrap_or(0),
                }
            })
            .collect();
        Summary {
            campaign: hex::encode(s.campaign),
            package: s.package.clone(),
            version: s.version.clone(),
            sequence: s.sequence,
            size: s.size,
            nodes: s.nodes.len(),
            installed: s.installed,
            failed,
            unreachable,
            halted: s.halted.clone(),
            wall_secs: s.wall().as_secs_f64(),
            nms_bytes_sent: s.bytes_sent,
            nms_copies: s.bytes_sent as f64 / s.size.max(1) as f64,
            per_node,
        }
    }

    /// The operator's text form: totals, then one line per node.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let _ = writeln!(
            o,
            "campaign {} — {} {} (sequence {}), {:.1} MiB",
            &self.campaign[..self.campaign.len().min(12)],
            self.package,
            self.version,
            self.sequence,
            mib(self.size)
        );
        let _ = writeln!(
            o,
            "  installed: {}/{} nodes, failed: {}, unreachable: {}",
            self.installed,
            self.nodes,
            self.failed.len(),
            self.unreachable.len()
        );
        if !self.unreachable.is_empty() {
            let _ = writeln!(
                o,
                "  unreachable nodes get the package if they return before the campaign expires"
            );
        }
        if let Some(h) = &self.halted {
            let _ = writeln!(o, "  HALTED: {h}");
        }
        let _ = writeln!(o, "  wall time, drop to last install: {:.2} s", self.wall_secs);
        let _ = writeln!(
            o,
            "  NMS sent {:.1} MiB = {:.2} x the package",
            mib(self.nms_bytes_sent),
            self.nms_copies
        );
        let _ = writeln!(
            o,
            "  {:<52}  {:<9}  {:>8}  {:>10}  bytes from",
            "node", "outcome", "time", "served"
        );
        for n in &self.per_node {
            let secs = n.secs.map_or_else(|| "-".to_string(), |s| format!("{s:.2} s"));
            let from = if n.sources.is_empty() {
                "-".to_string()
            } else {
                n.sources
                    .iter()
                    .map(|s| {
                        let who = match (&s.from, s.nms) {
                            (_, true) => "NMS".to_string(),
                            (Some(p), false) => short(p).to_string(),
                            (None, false) => "unknown".to_string(),
                        };
                        format!("{who} {}", BinaryBytes(s.bytes))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let served = BinaryBytes(n.served).to_string();
            let _ = write!(
                o,
                "  {:<52}  {:<9}  {secs:>8}  {served:>10}  {from}",
                n.node, n.status
            );
            if let Some(r) = &n.reason {
                let _ = write!(o, "\n      reason: {r}");
            }
            o.push('\n');
        }
        o
    }
}

/// The last 8 characters of a peer id, as [`NodeId::short`] prints them.
fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(8)..]
}

/// `waiting`, `receiving`, `verifying`, `authenticated`, `installed`, `failed`,
/// `unreachable`, `halted` or `trusts-other-nms`.
pub fn status_name(s: &NodeStatus) -> &'static str {
    match s {
        NodeStatus::Unreachable(_) => "unreachable",
        NodeStatus::Halted(_) => "halted",
        NodeStatus::TrustsOther(_) => "trusts-other-nms",
        NodeStatus::Waiting => "waiting",
        NodeStatus::Receiving => "receiving",
        NodeStatus::Verifying => "verifying",
        NodeStatus::Authenticated => "authenticated",
        NodeStatus::Installed => "installed",
        NodeStatus::Failed(_) => "failed",
    }
}

/// One node of a running campaign, as its events told.
#[derive(Debug, Clone)]
struct Track {
    status: NodeStatus,
    verified: u64,
    source: Option<NodeId>,
    /// Bytes credited to each source (`None`: the node named none).
    from: Vec<(Option<NodeId>, u64)>,
}

impl Track {
    fn new() -> Track {
        Track {
            status: NodeStatus::Waiting,
            verified: 0,
            source: None,
            from: Vec::new(),
        }
    }

    /// A new report: when it gives the bytes from each source (`fetched`), those are the
    /// figures; the bytes verified beyond what was credited are credited to the source it
    /// names (or, when it names none, the last one named).
    fn update(
        &mut self,
        status: NodeStatus,
        verified: u64,
        source: Option<NodeId>,
        fetched: &[(NodeId, u64)],
        size: u64,
    ) {
        if self.status.is_final() {
            return;
        }
        if !fetched.is_empty() {
            self.from = fetched
                .iter()
                .take(MAX_SOURCES)
                .map(|(n, b)| (Some(*n), (*b).min(size)))
                .collect();
            self.verified = self.from.iter().map(|e| e.1).sum::<u64>().min(size);
        }
        let verified = if status == NodeStatus::Installed {
            size
        } else {
            verified.min(size)
        };
        if source.is_some() {
            self.source = source;
        }
        let delta = verified.saturating_sub(self.verified);
        if delta > 0 {
            let src = self.source;
            if let Some(e) = self.from.iter_mut().find(|e| e.0 == src) {
                e.1 += delta;
            } else if self.from.len() < MAX_SOURCES {
                self.from.push((src, delta));
            } else if let Some(e) = self.from.last_mut() {
                e.1 += delta;
            }
        }
        self.verified = verified;
        self.status = status;
    }
}

/// The rows a node state gets when a campaign is shown by state, in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum StateKey {
    Waiting,
    Receiving,
    Verifying,
    Installing,
    Installed,
    Failed,
    Unreachable,
    Halted,
    TrustsOther,
}

impl StateKey {
    fn of(s: &NodeStatus) -> StateKey {
        match s {
            NodeStatus::Waiting => StateKey::Waiting,
            NodeStatus::Receiving => StateKey::Receiving,
            NodeStatus::Verifying => StateKey::Verifying,
            NodeStatus::Authenticated => StateKey::Installing,
            NodeStatus::Installed => StateKey::Installed,
            NodeStatus::Failed(_) => StateKey::Failed,
            NodeStatus::Unreachable(_) => StateKey::Unreachable,
            NodeStatus::Halted(_) => StateKey::Halted,
            NodeStatus::TrustsOther(_) => StateKey::TrustsOther,
        }
    }
    fn label(self) -> &'static str {
        match self {
            StateKey::Waiting => "waiting",
            StateKey::Receiving => "receiving",
            StateKey::Verifying => "verifying",
            StateKey::Installing => "installing",
            StateKey::Installed => "installed",
            StateKey::Failed => "failed",
            StateKey::Unreachable => "unreachable",
            StateKey::Halted => "halted",
            StateKey::TrustsOther => "trusts another NMS",
        }
    }
}

/// How much of a running campaign the live view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Not at all (the terminal is too short; counted in the "more campaigns" line).
    Hidden,
    /// Its header bar only.
    Header,
    /// Its header and one line per node state.
    States,
    /// Its header and one bar per node.
    Nodes,
}

/// What each running campaign (by node count, in start order) shows on a terminal of
/// `rows` rows, and whether a "more campaigns" line is needed. Every campaign shown gets
/// a header; then, in start order, the cheaper of its detailed forms if it fits (a bar per
/// node when it has no more nodes than there are states, else a line per state); then,
/// in start order, a bar per node where that fits too. Depends only on the node counts
/// and the height, so it changes only when a campaign starts or ends or the terminal is
/// resized.
pub(crate) fn layout(rows: usize, nodes: &[usize]) -> (Vec<Shape>, bool) {
    let budget = rows.saturating_sub(RESERVED_ROWS);
    let mut shapes = vec![Shape::Hidden; nodes.len()];
    let (shown, overflow) = if nodes.len() <= budget {
        (nodes.len(), false)
    } else {
        (budget.saturating_sub(1), true)
    };
    let mut left = budget.saturating_sub(shown + usize::from(overflow));
    for s in &mut shapes[..shown] {
        *s = Shape::Header;
    }
    for (s, &n) in shapes[..shown].iter_mut().zip(nodes) {
        let (shape, cost) = if n <= STATE_ROWS {
            (Shape::Nodes, n)
        } else {
            (Shape::States, STATE_ROWS)
        };
        if cost <= left {
            *s = shape;
            left -= cost;
        }
    }
    for (s, &n) in shapes[..shown].iter_mut().zip(nodes) {
        if *s == Shape::States && n - STATE_ROWS <= left {
            *s = Shape::Nodes;
            left -= n - STATE_ROWS;
        }
    }
    (shapes, overflow)
}

/// One row of a campaign's live view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RowKey {
    Node(NodeId),
    State(StateKey),
}

/// A drawn row and what it shows (to redraw only what changed).
#[derive(Debug)]
struct Row {
    key: RowKey,
    bar: ProgressBar,
    shown: (u64, u64, String, bool),
}

#[derive(Debug, Default)]
struct Drawn {
    shape: Option<Shape>,
    header: Option<ProgressBar>,
    header_shown: (u64, String),
    rows: Vec<Row>,
}

/// A running campaign.
#[derive(Debug)]
struct Campaign {
    id: CampaignId,
    name: String,
    version: String,
    size: u64,
    nms: NodeId,
    order: Vec<NodeId>,
    nodes: HashMap<NodeId, Track>,
    started: Instant,
    last_plain: Instant,
    changed: bool,
    drawn: Drawn,
}

impl Campaign {
    fn new(m: &Manifest, now: Instant) -> Campaign {
        Campaign {
            id: m.campaign,
            name: m.name.clone(),
            version: m.version.clone(),
            size: m.size,
            nms: m.nms,
            order: m.addressees.clone(),
            nodes: m.addressees.iter().map(|n| (*n, Track::new())).collect(),
            started: now,
            last_plain: now,
            changed: false,
            drawn: Drawn::default(),
        }
    }

    fn title(&self) -> String {
        format!("{} {}", self.name, self.version)
    }

    /// Bytes verified over all nodes (an installed node counts the whole package).
    fn verified(&self) -> u64 {
        self.nodes.values().map(|t| t.verified).sum()
    }

    /// Nodes per state, with their bytes and (for failures) their reasons.
    fn states(&self) -> Vec<(StateKey, usize, u64, Vec<&str>)> {
        let mut out: Vec<(StateKey, usize, u64, Vec<&str>)> = Vec::new();
        for t in self.nodes.values() {
            let k = StateKey::of(&t.status);
            let i = match out.iter().position(|e| e.0 == k) {
                Some(i) => i,
                None => {
                    out.push((k, 0, 0, Vec::new()));
                    out.len() - 1
                }
            };
            out[i].1 += 1;
            out[i].2 += t.verified;
            if let NodeStatus::Failed(r) = &t.status {
                out[i].3.push(r);
            }
        }
        out.sort_by_key(|e| e.0);
        out
    }

    fn counts(&self) -> String {
        let mut s = String::new();
        for (k, n, ..) in self.states() {
            if !s.is_empty() {
                s.push_str(", ");
            }
            let _ = write!(s, "{} {n}", k.label());
        }
        format!("{} nodes: {s}", self.order.len())
    }

    fn progress_line(&self) -> String {
        format!(
            "{}: {}; {} of {} verified",
            self.title(),
            self.counts(),
            BinaryBytes(self.verified()),
            BinaryBytes(self.size * self.order.len() as u64)
        )
    }

    /// Position, length, message and failed-ness of a row.
    fn row(&self, key: RowKey) -> (u64, u64, String, bool) {
        match key {
            RowKey::Node(id) => {
                let t = &self.nodes[&id];
                let msg = match &t.status {
                    NodeStatus::Failed(r) => format!("FAILED: {r}"),
                    NodeStatus::Receiving => match t.source {
                        Some(s) if s == self.nms => "receiving from the NMS".to_string(),
                        Some(s) => format!("receiving from {}", s.short()),
                        None => "receiving".to_string(),
                    },
                    NodeStatus::Authenticated => "installing".to_string(),
                    s => status_name(s).to_string(),
                };
                let failed = matches!(t.status, NodeStatus::Failed(_));
                (t.verified, self.size.max(1), msg, failed)
            }
            RowKey::State(k) => {
                let states = self.states();
                let Some((_, n, bytes, reasons)) = states.into_iter().find(|e| e.0 == k) else {
                    return (0, 1, String::new(), false);
                };
                let mut msg = format!("{n} node{}", if n == 1 { "" } else { "s" });
                if !reasons.is_empty() {
                    let mut grouped: Vec<(&str, usize)> = Vec::new();
                    for r in reasons {
                        match grouped.iter_mut().find(|g| g.0 == r) {
                            Some(g) => g.1 += 1,
                            None => grouped.push((r, 1)),
                        }
                    }
                    grouped.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                    let list: Vec<String> = grouped.iter().map(|(r, c)| format!("{r} (×{c})")).collect();
                    let _ = write!(msg, ": {}", list.join("; "));
                }
                (bytes, self.size.max(1) * n as u64, msg, k == StateKey::Failed)
            }
        }
    }

    fn header(&self) -> (u64, String) {
        (self.verified(), self.counts())
    }

    /// The rows `shape` gives this campaign now.
    fn row_keys(&self, shape: Shape) -> Vec<RowKey> {
        match shape {
            Shape::Hidden | Shape::Header => Vec::new(),
            Shape::Nodes => self.order.iter().map(|n| RowKey::Node(*n)).collect(),
            Shape::States => self.states().into_iter().map(|e| RowKey::State(e.0)).collect(),
        }
    }
}

/// Where the live view draws.
struct Live {
    mp: MultiProgress,
    /// The terminal's (rows, columns).
    size: Box<dyn Fn() -> (u16, u16) + Send>,
    overflow: Option<ProgressBar>,
    /// Whether the header bars tick by themselves (their elapsed time); off in tests.
    tick: bool,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

/// The multi-progress of the process's live view, for [`LogWriter`].
static LIVE: OnceLock<MultiProgress> = OnceLock::new();

/// Log output that does not tear the live view: it writes to stderr between redraws.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match LIVE.get() {
            Some(mp) => mp.suspend(|| io::stderr().write_all(buf))?,
            None => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// The operator's output; see the module docs.
pub struct View {
    mode: Mode,
    out: Box<dyn Write + Send>,
    live: Option<Live>,
    /// Running campaigns, in start order.
    campaigns: Vec<Campaign>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("mode", &self.mode)
            .field("campaigns", &self.campaigns.len())
            .finish()
    }
}

impl View {
    /// The process's view: bars on stderr in live mode, lines on stdout.
    pub fn new(mode: Mode) -> View {
        let live = (mode == Mode::Live).then(|| {
            let mp = LIVE
                .get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
                .clone();
            Live {
                mp,
                size: Box::new(|| console_size().unwrap_or((24, 80))),
                overflow: None,
                tick: true,
            }
        });
        View {
            mode,
            out: Box::new(io::stdout()),
            live,
            campaigns: Vec::new(),
        }
    }

    /// A view writing lines to `out` and, in live mode, drawing on `term`, whose
    /// (rows, columns) `size` tells.
    pub fn with_output(
        mode: Mode,
        out: Box<dyn Write + Send>,
        term: Box<dyn TermLike>,
        size: Box<dyn Fn() -> (u16, u16) + Send>,
    ) -> View {
        let live = (mode == Mode::Live).then(|| Live {
            mp: MultiProgress::with_draw_target(ProgressDrawTarget::term_like(term)),
            size,
            overflow: None,
            tick: false,
        });
        View {
            mode,
            out,
            live,
            campaigns: Vec::new(),
        }
    }

    /// Running campaigns.
    pub fn running(&self) -> usize {
        self.campaigns.len()
    }

    /// Shows one event; `drop` is how the operator knows the drop the event is about (its
    /// path). Returns the summary when the event ends a campaign.
    pub fn event(&mut self, ev: &NmsEvent, drop: Option<&str>) -> Option<Summary> {
        self.event_at(ev, drop, Instant::now())
    }

    /// Sets a node's status in the campaign at `idx`, keeping its bytes.
    fn set_status(&mut self, idx: Option<usize>, node: &NodeId, status: NodeStatus) {
        let c = &mut self.campaigns[idx.expect("checked")];
        let size = c.size;
        if let Some(t) = c.nodes.get_mut(node) {
            let v = t.verified;
            t.update(status, v, None, &[], size);
            c.changed = true;
        }
    }

    /// [`View::event`] at `now`.
    pub fn event_at(&mut self, ev: &NmsEvent, drop: Option<&str>, now: Instant) -> Option<Summary> {
        let idx = campaign_of(ev).and_then(|c| self.campaigns.iter().position(|k| k.id == *c));
        if let NmsEvent::CampaignStarted { manifest, .. } = ev {
            self.campaigns.push(Campaign::new(manifest, now));
        }
        // events about campaigns that ended (late reports) change nothing
        if campaign_of(ev).is_some() && idx.is_none() && !matches!(ev, NmsEvent::CampaignStarted { .. }) {
            if self.mode == Mode::Json {
                self.json(json_event(ev, drop, None, unix_now()));
            }
            return None;
        }
        let summary = match ev {
            NmsEvent::NodeProgress {
                node,
                status,
                verified,
                source,
                fetched,
                ..
            } => {
                let c = &mut self.campaigns[idx.expect("checked")];
                let size = c.size;
                if let Some(t) = c.nodes.get_mut(node) {
                    t.update(status.clone(), *verified, *source, fetched, size);
                    c.changed = true;
                }
                None
            }
            NmsEvent::NodeInstalled { node, .. } => {
                let c = &mut self.campaigns[idx.expect("checked")];
                let size = c.size;
                if let Some(t) = c.nodes.get_mut(node) {
                    t.update(NodeStatus::Installed, size, None, &[], size);
                }
                None
            }
            NmsEvent::NodeFailed { node, reason, .. } => {
                let c = &mut self.campaigns[idx.expect("checked")];
                let size = c.size;
                if let Some(t) = c.nodes.get_mut(node) {
                    let v = t.verified;
                    t.update(NodeStatus::Failed(reason.clone()), v, None, &[], size);
                }
                None
            }
            NmsEvent::NodeUnreachable { node, reason, .. } => {
                self.set_status(idx, node, NodeStatus::Unreachable(reason.clone()));
                None
            }
            NmsEvent::NodeTrustsOtherNms { node, detail, .. } => {
                self.set_status(idx, node, NodeStatus::TrustsOther(detail.clone()));
                None
            }
            NmsEvent::CampaignHalted { reason, .. } => {
                // as the monitor does: every node not installed and not yet authenticated
                let c = &self.campaigns[idx.expect("checked")];
                let halted: Vec<NodeId> = c
                    .nodes
                    .iter()
                    .filter(|(_, t)| !t.status.is_final() && !matches!(t.status, NodeStatus::Authenticated))
                    .map(|(n, _)| *n)
                    .collect();
                for n in halted {
                    self.set_status(idx, &n, NodeStatus::Halted(reason.clone()));
                }
                None
            }
            NmsEvent::CampaignDone { summary } => {
                let c = self.campaigns.remove(idx.expect("checked"));
                if let Some(live) = &self.live {
                    clear(&live.mp, c.drawn);
                }
                Some(Summary::with_sources(summary, Some(&c.nms), &c.nodes))
            }
            _ => None,
        };
        match self.mode {
            Mode::Json => self.json(json_event(ev, drop, summary.as_ref(), unix_now())),
            Mode::Plain | Mode::Live => {
                let show = match ev {
                    NmsEvent::CampaignDone { .. } => summary.as_ref().map(Summary::text),
                    // the bars show installs; a log shows them as lines
                    NmsEvent::NodeInstalled { .. } if self.mode == Mode::Live => None,
                    _ => text_event(ev, drop, idx.and_then(|i| self.campaigns.get(i))),
                };
                if let Some(line) = show {
                    self.line(line.trim_end());
                }
            }
        }
        if self.mode == Mode::Plain {
            self.plain_progress(now);
        }
        if self.live.is_some() {
            self.redraw(idx.filter(|_| summary.is_none()));
        }
        summary
    }

    /// A dropped file that could not be read or taken in (the watcher's own errors).
    pub fn drop_error(&mut self, path: &str, message: &str) {
        match self.mode {
            Mode::Json => self.json(json!({
                "event": "drop-error", "time": unix_now(), "drop": path, "reason": message,
            })),
            _ => self.line(&format!("{path}: {message}; no campaign started")),
        }
    }

    /// Stops the view (Ctrl-C): running campaigns are named, their bars removed.
    pub fn finish(&mut self) {
        let running: Vec<Campaign> = self.campaigns.drain(..).collect();
        for mut c in running {
            if let Some(live) = &self.live {
                clear(&live.mp, std::mem::take(&mut c.drawn));
            }
            let line = format!(
                "campaign {} stopped while running: {}",
                &hex::encode(c.id)[..12],
                c.progress_line()
            );
            match self.mode {
                Mode::Json => {
                    let v = json!({"event": "campaign-stopped", "time": unix_now(),
                        "campaign": hex::encode(c.id), "verified": c.verified()});
                    self.json(v)
                }
                _ => self.line(&line),
            }
        }
        if let Some(live) = &mut self.live
            && let Some(b) = live.overflow.take()
        {
            live.mp.remove(&b);
        }
    }

    fn json(&mut self, v: Value) {
        let _ = writeln!(self.out, "{v}");
        let _ = self.out.flush();
    }

    /// A text line: above the bars in live mode.
    fn line(&mut self, line: &str) {
        let out = &mut self.out;
        let mut write = || {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        };
        match &self.live {
            Some(l) => l.mp.suspend(write),
            None => write(),
        }
    }

    fn plain_progress(&mut self, now: Instant) {
        let mut lines = Vec::new();
        for c in &mut self.campaigns {
            if c.changed && now.saturating_duration_since(c.last_plain) >= PLAIN_PROGRESS_EVERY {
                c.changed = false;
                c.last_plain = now;
                lines.push(c.progress_line());
            }
        }
        for l in lines {
            self.line(&l);
        }
    }

    /// Brings the bars in line with the layout, then redraws campaign `idx`'s rows.
    fn redraw(&mut self, idx: Option<usize>) {
        let Some(live) = &mut self.live else { return };
        let (rows, _) = (live.size)();
        let counts: Vec<usize> = self.campaigns.iter().map(|c| c.order.len()).collect();
        let (shapes, overflow) = layout(rows as usize, &counts);
        // the first campaign whose rows change, and everything after it, is rebuilt in order
        let first = self.campaigns.iter().zip(&shapes).position(|(c, s)| {
            c.drawn.shape != Some(*s)
                || (*s == Shape::States
                    && c.row_keys(*s) != c.drawn.rows.iter().map(|r| r.key).collect::<Vec<_>>())
        });
        let overflow_changed = overflow != live.overflow.is_some();
        if first.is_some() || overflow_changed {
            let from = first.unwrap_or(self.campaigns.len());
            for c in &mut self.campaigns[from..] {
                clear(&live.mp, std::mem::take(&mut c.drawn));
            }
            if let Some(b) = live.overflow.take() {
                live.mp.remove(&b);
            }
            for (c, s) in self.campaigns[from..].iter_mut().zip(&shapes[from..]) {
                build(live, c, *s);
                update(c);
            }
            if overflow {
                let hidden = shapes.iter().filter(|s| **s == Shape::Hidden).count();
                let b = live.mp.add(ProgressBar::new(1));
                b.set_style(style("{wide_msg}"));
                b.set_message(format!(
                    "… and {hidden} more campaign{} running (a taller terminal shows them)",
                    if hidden == 1 { "" } else { "s" }
                ));
                live.overflow = Some(b);
            }
        }
        if let Some(i) = idx
            && let Some(c) = self.campaigns.get_mut(i)
        {
            update(c);
        }
    }
}

/// (rows, columns) of the terminal on stderr.
fn console_size() -> Option<(u16, u16)> {
    let t = console::Term::stderr();
    t.is_term().then(|| t.size())
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Adds campaign `c`'s bars for `shape` at the end of the view.
fn build(live: &Live, c: &mut Campaign, shape: Shape) {
    c.drawn = Drawn {
        shape: Some(shape),
        ..Drawn::default()
    };
    if shape == Shape::Hidden {
        return;
    }
    let total = c.size.max(1) * c.order.len() as u64;
    let h = live
        .mp
        .add(ProgressBar::new(total).with_elapsed(c.started.elapsed()));
    h.set_style(style(
        "{prefix} [{elapsed_precise}] {bar:30.cyan/blue} {binary_bytes}/{binary_total_bytes} {wide_msg}",
    ));
    h.set_prefix(format!("{} (campaign {})", c.title(), &hex::encode(c.id)[..8]));
    if live.tick {
        h.enable_steady_tick(Duration::from_secs(1));
    }
    c.drawn.header = Some(h);
    c.drawn.header_shown = (u64::MAX, String::new());
    for key in c.row_keys(shape) {
        let b = live.mp.add(ProgressBar::new(1));
        b.set_prefix(match key {
            RowKey::Node(n) => n.short(),
            RowKey::State(k) => k.label().to_string(),
        });
        c.drawn.rows.push(Row {
            key,
            bar: b,
            shown: (u64::MAX, 0, String::new(), false),
        });
    }
}

const ROW: &str = "{prefix:>12} {bar:30.green/white} {binary_bytes:>10} {wide_msg}";
const FAILED_ROW: &str = "{prefix:>12} {bar:30.red/white} {binary_bytes:>10} {wide_msg:.red}";

/// Redraws what changed in campaign `c`'s bars.
fn update(c: &mut Campaign) {
    let header = c.header();
    if let Some(h) = &c.drawn.header
        && c.drawn.header_shown != header
    {
        h.set_position(header.0);
        h.set_message(header.1.clone());
        c.drawn.header_shown = header;
    }
    for i in 0..c.drawn.rows.len() {
        let now = c.row(c.drawn.rows[i].key);
        let row = &mut c.drawn.rows[i];
        if row.shown == now {
            continue;
        }
        if row.shown.3 != now.3 || row.shown.0 == u64::MAX {
            row.bar.set_style(style(if now.3 { FAILED_ROW } else { ROW }));
        }
        row.bar.set_length(now.1);
        row.bar.set_position(now.0);
        row.bar.set_message(now.2.clone());
        row.shown = now;
    }
}

/// Removes a campaign's bars from the view; they are never drawn again.
fn clear(mp: &MultiProgress, d: Drawn) {
    if let Some(h) = d.header {
        h.disable_steady_tick();
        mp.remove(&h);
    }
    for r in d.rows {
        mp.remove(&r.bar);
    }
}

fn campaign_of(ev: &NmsEvent) -> Option<&CampaignId> {
    match ev {
        NmsEvent::CampaignStarted { manifest, .. } => Some(&manifest.campaign),
        NmsEvent::NodeProgress { campaign, .. }
        | NmsEvent::NodeInstalled { campaign, .. }
        | NmsEvent::NodeFailed { campaign, .. }
        | NmsEvent::AuthRefused { campaign, .. }
        | NmsEvent::NodeProbing { campaign, .. }
        | NmsEvent::NodeUnreachable { campaign, .. }
        | NmsEvent::NodeTrustsOtherNms { campaign, .. }
        | NmsEvent::RelayHandedBack { campaign, .. }
        | NmsEvent::CampaignHalted { campaign, .. } => Some(campaign),
        NmsEvent::CampaignDone { summary } => Some(&summary.campaign),
        NmsEvent::NodeDiscovered { .. }
        | NmsEvent::NodeIncompatible { .. }
        | NmsEvent::NodeLeft { .. }
        | NmsEvent::DropWaiting { .. }
        | NmsEvent::DropAbandoned { .. }
        | NmsEvent::DropFailed { .. } => None,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0)
}

/// The operator's line for an event (plain and live modes); `None` for events shown only
/// as bars or progress lines.
fn text_event(ev: &NmsEvent, drop: Option<&str>, c: Option<&Campaign>) -> Option<String> {
    let drop_name = |id: u64| drop.map_or_else(|| format!("drop {id}"), str::to_string);
    let title = c.map_or_else(String::new, |c| format!("{}: ", c.title()));
    Some(match ev {
        NmsEvent::NodeDiscovered { id, known } => format!("node {id} discovered ({known} known)"),
        NmsEvent::NodeIncompatible { id, version } => {
            format!("node {id} speaks protocol {version}, this NMS speaks {PROTOCOL_VERSION}: not using it")
        }
        NmsEvent::NodeLeft { id } => format!("node {id} left"),
        NmsEvent::DropWaiting {
            drop_id,
            found,
            needed,
        } => format!(
            "{}: waiting for discovery to settle ({found} node(s) found, {needed} needed)",
            drop_name(drop_id.0)
        ),
        NmsEvent::DropAbandoned { drop_id, reason } => {
            format!("{}: no campaign started: {reason}", drop_name(drop_id.0))
        }
        NmsEvent::DropFailed { drop_id, reason } => {
            format!("{}: no campaign started: {reason}", drop_name(drop_id.0))
        }
        NmsEvent::CampaignStarted { drop_id, manifest: m } => format!(
            "campaign {} started: {} {} (sequence {}) from {}, {} to {} node(s), fanout {}, {}",
            &hex::encode(m.campaign)[..12],
            m.name,
            m.version,
            m.sequence,
            drop_name(drop_id.0),
            BinaryBytes(m.size),
            m.addressees.len(),
            m.plan.fanout,
            transfer_name(m.plan.transfer)
        ),
        NmsEvent::NodeProgress { .. } | NmsEvent::CampaignDone { .. } => return None,
        NmsEvent::NodeInstalled { node, .. } => format!("{title}installed on {node}"),
        NmsEvent::NodeFailed { node, reason, .. } => format!("{title}FAILED on {node}: {reason}"),
        NmsEvent::AuthRefused { node, reason, .. } => {
            format!("{title}authentication refused for {node}: {reason}")
        }
        NmsEvent::NodeProbing { node, why, .. } => format!("{title}probing {node}: {why}"),
        NmsEvent::NodeUnreachable { node, reason, .. } => {
            format!("{title}UNREACHABLE {node}: {reason} (it gets the package if it returns before expiry)")
        }
        NmsEvent::NodeTrustsOtherNms { node, detail, .. } => format!(
            "{title}{node} trusts another NMS ({detail}); it is not addressed until it accepts an offer again. \
             To include it, its owner runs: baton-node trust forget <that NMS> and restarts it, or starts it with --trust <this NMS's id>"
        ),
        NmsEvent::RelayHandedBack { node, nodes, .. } => format!(
            "{title}{node} stayed gated by its owner's relay policy past the grace period: \
             it handed back {nodes} node(s) of its part, now offered by the NMS"
        ),
        NmsEvent::CampaignHalted { reason, .. } => format!("{title}CAMPAIGN HALTED: {reason}"),
    })
}

fn transfer_name(t: Transfer) -> &'static str {
    match t {
        Transfer::CutThrough => "cut-through",
        Transfer::StoreAndForward => "store-and-forward",
    }
}

/// The `--json` line for an event (see docs/operations.md for the fields). `summary` is
/// the view's summary of a `CampaignDone`.
pub fn json_event(ev: &NmsEvent, drop: Option<&str>, summary: Option<&Summary>, time: f64) -> Value {
    let drop_name = |id: u64| drop.map_or_else(|| format!("drop {id}"), str::to_string);
    let hexc = |c: &CampaignId| hex::encode(c);
    let mut v = match ev {
        NmsEvent::NodeDiscovered { id, known } => {
            json!({"event": "node-discovered", "node": id.to_string(), "known": known})
        }
        NmsEvent::NodeIncompatible { id, version } => json!({"event": "node-incompatible",
            "node": id.to_string(), "version": version, "ours": PROTOCOL_VERSION}),
        NmsEvent::NodeLeft { id } => json!({"event": "node-left", "node": id.to_string()}),
        NmsEvent::DropWaiting {
            drop_id,
            found,
            needed,
        } => json!({"event": "drop-waiting", "drop": drop_name(drop_id.0), "found": found, "needed": needed}),
        NmsEvent::DropAbandoned { drop_id, reason } => {
            json!({"event": "drop-abandoned", "drop": drop_name(drop_id.0), "reason": reason})
        }
        NmsEvent::DropFailed { drop_id, reason } => {
            json!({"event": "drop-failed", "drop": drop_name(drop_id.0), "reason": reason})
        }
        NmsEvent::CampaignStarted { drop_id, manifest: m } => json!({
            "event": "campaign-started", "drop": drop_name(drop_id.0), "campaign": hexc(&m.campaign),
            "package": m.name, "version": m.version, "sequence": m.sequence, "size": m.size,
            "chunk_size": m.chunk_size, "nodes": m.addressees.len(),
            "addressees": m.addressees.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "fanout": m.plan.fanout, "transfer": transfer_name(m.plan.transfer),
        }),
        NmsEvent::NodeProgress {
            campaign,
            node,
            status,
            verified,
            source,
            fetched,
        } => {
            let mut v = json!({"event": "node-progress", "campaign": hexc(campaign), "node": node.to_string(),
                "status": status_name(status), "verified": verified,
                "source": source.map(|s| s.to_string())});
            if !fetched.is_empty() {
                let from: serde_json::Map<String, serde_json::Value> =
                    fetched.iter().map(|(n, b)| (n.to_string(), json!(b))).collect();
                v["fetched"] = serde_json::Value::Object(from);
            }
            if let NodeStatus::Failed(r) = status {
                v["reason"] = json!(r);
            }
            v
        }
        NmsEvent::NodeInstalled { campaign, node } => {
            json!({"event": "node-installed", "campaign": hexc(campaign), "node": node.to_string()})
        }
        NmsEvent::NodeFailed {
            campaign,
            node,
            reason,
        } => {
            json!({"event": "node-failed", "campaign": hexc(campaign), "node": node.to_string(), "reason": reason})
        }
        NmsEvent::AuthRefused {
            campaign,
            node,
            reason,
        } => {
            json!({"event": "auth-refused", "campaign": hexc(campaign), "node": node.to_string(), "reason": reason})
        }
        NmsEvent::NodeProbing { campaign, node, why } => {
            json!({"event": "node-probing", "campaign": hexc(campaign), "node": node.to_string(), "why": why})
        }
        NmsEvent::NodeUnreachable {
            campaign,
            node,
            reason,
        } => {
            json!({"event": "node-unreachable", "campaign": hexc(campaign), "node": node.to_string(), "reason": reason})
        }
        NmsEvent::NodeTrustsOtherNms {
            campaign,
            node,
            detail,
        } => json!({"event": "node-trusts-other-nms", "campaign": hexc(campaign),
            "node": node.to_string(), "detail": detail}),
        NmsEvent::RelayHandedBack {
            campaign,
            node,
            nodes,
        } => json!({"event": "relay-handed-back",
            "campaign": hexc(campaign), "node": node.to_string(), "nodes": nodes}),
        NmsEvent::CampaignHalted { campaign, reason } => {
            json!({"event": "campaign-halted", "campaign": hexc(campaign), "reason": reason})
        }
        NmsEvent::CampaignDone { summary: core } => {
            let s = summary.cloned().unwrap_or_else(|| Summary::from_core(core));
            json!({"event": "campaign-done", "campaign": hexc(&core.campaign), "summary": s})
        }
    };
    v["time"] = json!(time);
    v
}

#[cfg(test)]
mod tests;
