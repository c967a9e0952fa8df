//! The operator's output on a fake terminal of a given size, fed event streams.

use std::sync::{Arc, Mutex};

use super::*;
use baton_protocol::endpoint::nms::{DropId, NodeOutcome};
use baton_protocol::id::fake_id;
use baton_protocol::manifest::{HashList, MANIFEST_FORMAT, PlanParams, RelayPolicy};

const NMS: u64 = 1_000_000;

/// A terminal that keeps its screen: auto-wrap at the last column, scrolling at the last
/// row, ANSI styles dropped. Counts what is written to it.
#[derive(Debug, Clone)]
struct FakeTerm(Arc<Mutex<Screen>>);

#[derive(Debug)]
struct Screen {
    rows: usize,
    cols: usize,
    lines: Vec<Vec<char>>,
    row: usize,
    col: usize,
    bytes: usize,
    /// The most lines indicatif went back up over to redraw (its frame's height - 1).
    max_up: usize,
}

impl FakeTerm {
    fn new(rows: u16, cols: u16) -> FakeTerm {
        FakeTerm(Arc::new(Mutex::new(Screen {
            rows: rows.into(),
            cols: cols.into(),
            lines: vec![vec![' '; cols.into()]; rows.into()],
            row: 0,
            col: 0,
            bytes: 0,
            max_up: 0,
        })))
    }
    fn bytes(&self) -> usize {
        self.0.lock().unwrap().bytes
    }
    fn max_up(&self) -> usize {
        self.0.lock().unwrap().max_up
    }
    /// The screen's non-blank lines, right-trimmed.
    fn lines(&self) -> Vec<String> {
        let s = self.0.lock().unwrap();
        s.lines
            .iter()
            .map(|l| l.iter().collect::<String>().trim_end().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl Screen {
    fn newline(&mut self) {
        self.col = 0;
        if self.row + 1 == self.rows {
            self.lines.remove(0);
            self.lines.push(vec![' '; self.cols]);
        } else {
            self.row += 1;
        }
    }
    fn write(&mut self, s: &str) {
        self.bytes += s.len();
        for ch in console::strip_ansi_codes(s).chars() {
            match ch {
                '\r' => self.col = 0,
                '\n' => self.newline(),
                c => {
                    if self.col >= self.cols {
                        self.newline();
                    }
                    self.lines[self.row][self.col] = c;
                    self.col += 1;
                }
            }
        }
    }
}

impl TermLike for FakeTerm {
    fn width(&self) -> u16 {
        self.0.lock().unwrap().cols as u16
    }
    fn height(&self) -> u16 {
        self.0.lock().unwrap().rows as u16
    }
    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.max_up = s.max_up.max(n);
        s.row = s.row.saturating_sub(n);
        s.col = s.col.min(s.cols - 1);
        Ok(())
    }
    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.row = (s.row + n).min(s.rows - 1);
        Ok(())
    }
    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.col = (s.col + n).min(s.cols - 1);
        Ok(())
    }
    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.col = s.col.saturating_sub(n);
        Ok(())
    }
    fn write_line(&self, line: &str) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.write(line);
        s.newline();
        Ok(())
    }
    fn write_str(&self, line: &str) -> io::Result<()> {
        self.0.lock().unwrap().write(line);
        Ok(())
    }
    fn clear_line(&self) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        let (r, c) = (s.row, s.cols);
        s.lines[r] = vec![' '; c];
        s.col = 0;
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// What the view wrote to stdout.
#[derive(Debug, Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn view(mode: Mode, rows: u16, cols: u16) -> (View, FakeTerm, Buf) {
    let term = FakeTerm::new(rows, cols);
    let out = Buf::default();
    let v = View::with_output(
        mode,
        Box::new(out.clone()),
        Box::new(term.clone()),
        Box::new(move || (rows, cols)),
    );
    (v, term, out)
}

fn node(i: usize) -> NodeId {
    fake_id(i as u64 + 1)
}

fn manifest(tag: u32, nodes: usize, size: u64) -> Manifest {
    let mut campaign = [0u8; 16];
    campaign[..4].copy_from_slice(&tag.to_be_bytes());
    Manifest {
        format: MANIFEST_FORMAT,
        campaign,
        nms: fake_id(NMS),
        name: "frobnicator".into(),
        version: format!("2.{tag}"),
        file: "frobnicator.tar.gz".into(),
        sequence: u64::from(tag),
        size,
        chunk_size: 65536,
        chunk_hashes: HashList(Vec::new()),
        root: [0; 32],
        created_at: 0,
        expires_at: 1,
        relay: RelayPolicy::default(),
        plan: PlanParams {
            fanout: 1,
            transfer: Transfer::CutThrough,
            leaves: 0,
        },
        offline_install: false,
        self_update: false,
        addressees: (0..nodes).map(node).collect(),
    }
}

fn started(m: &Manifest) -> NmsEvent {
    NmsEvent::CampaignStarted {
        drop_id: DropId(1),
        manifest: Box::new(m.clone()),
    }
}

fn progress(m: &Manifest, n: NodeId, status: NodeStatus, verified: u64, source: Option<NodeId>) -> NmsEvent {
    NmsEvent::NodeProgress {
        campaign: m.campaign,
        node: n,
        status,
        verified,
        source,
        fetched: Vec::new(),
    }
}

fn done(m: &Manifest, outcomes: &[(NodeId, NodeStatus)]) -> NmsEvent {
    NmsEvent::CampaignDone {
        summary: CampaignSummary {
            campaign: m.campaign,
            drop_id: DropId(1),
            package: m.name.clone(),
            version: m.version.clone(),
            sequence: m.sequence,
            size: m.size,
            nodes: outcomes
                .iter()
                .map(|(n, s)| NodeOutcome {
                    node: *n,
                    status: s.clone(),
                    took: Some(Duration::from_millis(1500)),
                })
                .collect(),
            installed: outcomes.iter().filter(|o| o.1 == NodeStatus::Installed).count(),
            dropped_at: Duration::ZERO,
            started: Duration::from_millis(100),
            finished: Duration::from_secs(2),
            bytes_sent: m.size,
            halted: None,
        },
    }
}

/// A whole campaign in which every node fetches from the NMS and installs.
fn whole_campaign(v: &mut View, m: &Manifest) {
    v.event(&started(m), Some("/drop/frob.tar.gz"));
    for n in &m.addressees {
        v.event(
            &progress(m, *n, NodeStatus::Receiving, m.size / 2, Some(m.nms)),
            None,
        );
    }
    for n in &m.addressees {
        v.event(&progress(m, *n, NodeStatus::Installed, m.size, Some(m.nms)), None);
        v.event(
            &NmsEvent::NodeInstalled {
                campaign: m.campaign,
                node: *n,
            },
            None,
        );
    }
    let outcomes: Vec<_> = m.addressees.iter().map(|n| (*n, NodeStatus::Installed)).collect();
    assert!(v.event(&done(m, &outcomes), None).is_some());
}

#[test]
fn layout_gives_bars_per_node_only_while_they_fit() {
    use Shape::*;
    assert_eq!(layout(40, &[8]), (vec![Nodes], false));
    assert_eq!(layout(40, &[250]), (vec![States], false));
    assert_eq!(layout(24, &[30]), (vec![States], false));
    assert_eq!(layout(40, &[8, 250]), (vec![Nodes, States], false));
    assert_eq!(layout(40, &[3, 30]), (vec![Nodes, Nodes], false));
    assert_eq!(layout(24, &[250, 250, 250]), (vec![States; 3], false));
    assert_eq!(layout(10, &[250, 250]), (vec![States, Header], false));
    let mut tall = vec![Header; 3];
    tall.extend([Hidden; 7]);
    assert_eq!(layout(6, &[250; 10]), (tall, true));
    assert_eq!(layout(40, &[]), (vec![], false));
}

#[test]
fn live_view_of_250_nodes_fits_the_terminal_with_a_line_per_state() {
    let (mut v, term, _) = view(Mode::Live, 40, 120);
    let m = manifest(1, 250, 1 << 20);
    v.event(&started(&m), None);
    for (i, n) in m.addressees.iter().enumerate() {
        let ev = match i % 5 {
            0 => progress(&m, *n, NodeStatus::Installed, 1 << 20, Some(m.nms)),
            1 => progress(
                &m,
                *n,
                NodeStatus::Failed("no space left on device".into()),
                1 << 18,
                None,
            ),
            2 | 3 => progress(&m, *n, NodeStatus::Receiving, 1 << 19, Some(node(i - 1))),
            _ => continue,
        };
        v.event(&ev, None);
    }
    let lines = term.lines();
    assert!(term.max_up() < 40, "a frame of {} lines", term.max_up() + 1);
    assert!(lines.len() < 40, "{lines:#?}");
    let row = |label: &str| {
        lines
            .iter()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line in {lines:#?}"))
            .clone()
    };
    assert!(row("waiting").ends_with("50 nodes"), "{lines:#?}");
    assert!(row("receiving").ends_with("100 nodes"), "{lines:#?}");
    assert!(row("installed").ends_with("50 nodes"), "{lines:#?}");
    assert!(
        row("failed").ends_with("50 nodes: no space left on device (×50)"),
        "{lines:#?}"
    );
    // no bar per node
    assert!(!lines.iter().any(|l| l.contains(&node(7).short())), "{lines:#?}");
    assert!(lines[0].contains("frobnicator 2.1"), "{lines:#?}");
}

#[test]
fn a_fleet_taller_than_the_terminal_gets_state_lines_not_cut_off_bars() {
    let (mut v, term, _) = view(Mode::Live, 24, 100);
    let m = manifest(1, 30, 1 << 20);
    v.event(&started(&m), None);
    for n in &m.addressees {
        v.event(
            &progress(&m, *n, NodeStatus::Receiving, 1 << 19, Some(m.nms)),
            None,
        );
    }
    let lines = term.lines();
    assert!(term.max_up() < 24, "a frame of {} lines", term.max_up() + 1);
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("receiving") && l.ends_with("30 nodes")),
        "{lines:#?}"
    );
}

#[test]
fn finished_campaigns_are_never_drawn_again() {
    let (mut v, term, out) = view(Mode::Live, 40, 120);
    let mut cost = Vec::new();
    for tag in 0..73 {
        let before = term.bytes();
        whole_campaign(&mut v, &manifest(tag, 8, 1 << 20));
        cost.push(term.bytes() - before);
    }
    // the 73rd campaign costs what the first did: the 72 before it are not redrawn
    assert!(
        cost[72] <= cost[0] + cost[0] / 10,
        "first campaign drew {} bytes, the 73rd {}",
        cost[0],
        cost[72]
    );
    assert_eq!(v.running(), 0);
    assert!(term.lines().is_empty(), "{:#?}", term.lines());
    assert_eq!(out.text().matches("installed: 8/8 nodes").count(), 73);
    // idle: late reports about ended campaigns and time passing draw nothing
    let idle = term.bytes();
    let m = manifest(3, 8, 1 << 20);
    v.event(&progress(&m, node(0), NodeStatus::Installed, 1 << 20, None), None);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(term.bytes(), idle);
}

#[test]
fn a_failed_node_keeps_its_bytes_and_its_whole_reason() {
    let (mut v, term, out) = view(Mode::Live, 30, 250);
    let m = manifest(1, 2, 1 << 20);
    let reason = "install command exited with status 3: dpkg: error processing archive \
                  frobnicator.deb (--unpack): cannot copy extracted data for './usr/bin/frob'"
        .to_string();
    assert!(reason.len() > 120);
    v.event(&started(&m), None);
    v.event(
        &progress(&m, node(0), NodeStatus::Receiving, 1 << 18, Some(m.nms)),
        None,
    );
    v.event(
        &progress(&m, node(1), NodeStatus::Receiving, 1 << 19, Some(m.nms)),
        None,
    );
    v.event(
        &NmsEvent::NodeFailed {
            campaign: m.campaign,
            node: node(0),
            reason: reason.clone(),
        },
        None,
    );
    let lines = term.lines();
    let row = lines
        .iter()
        .find(|l| l.contains(&node(0).short()))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(row.contains("256.00 KiB"), "{row}");
    assert!(row.contains(&format!("FAILED: {}", reason.trim_end())), "{row}");
    let filled = row.chars().filter(|c| *c == '█').count();
    assert!(filled < 30 / 2, "{row}");
    // the log line above the bars has the whole reason too
    assert!(out.text().contains(&reason), "{}", out.text());
    v.event(
        &done(
            &m,
            &[
                (node(0), NodeStatus::Failed(reason.clone())),
                (node(1), NodeStatus::Installed),
            ],
        ),
        None,
    );
    // the ended campaign leaves no bar (full or not) on the screen
    assert!(term.lines().is_empty(), "{:#?}", term.lines());
    assert!(out.text().contains(&format!("reason: {reason}")));
}

#[test]
fn the_summary_says_where_each_nodes_bytes_came_from() {
    let (mut v, _, out) = view(Mode::Plain, 24, 80);
    let m = manifest(1, 3, 1000);
    let (a, b, c, nms) = (node(0), node(1), node(2), m.nms);
    v.event(&started(&m), None);
    v.event(&progress(&m, a, NodeStatus::Receiving, 400, Some(nms)), None);
    v.event(&progress(&m, b, NodeStatus::Receiving, 300, Some(a)), None);
    v.event(&progress(&m, a, NodeStatus::Verifying, 1000, Some(nms)), None);
    v.event(&progress(&m, b, NodeStatus::Receiving, 700, Some(nms)), None);
    v.event(
        &NmsEvent::NodeInstalled {
            campaign: m.campaign,
            node: a,
        },
        None,
    );
    v.event(
        &NmsEvent::NodeInstalled {
            campaign: m.campaign,
            node: b,
        },
        None,
    );
    v.event(&progress(&m, c, NodeStatus::Receiving, 200, Some(b)), None);
    v.event(
        &NmsEvent::NodeFailed {
            campaign: m.campaign,
            node: c,
            reason: "no space left on device".into(),
        },
        None,
    );
    let s = v
        .event(
            &done(
                &m,
                &[
                    (a, NodeStatus::Installed),
                    (b, NodeStatus::Installed),
                    (c, NodeStatus::Failed("no space left on device".into())),
                ],
            ),
            None,
        )
        .unwrap();
    let src = |from: NodeId, bytes: u64| SourceBytes {
        from: Some(from.to_string()),
        nms: from == nms,
        bytes,
    };
    assert_eq!(s.per_node[0].sources, vec![src(nms, 1000)]);
    // 300 from a, then 400 and the last 300 (reported with the install) from the NMS
    assert_eq!(s.per_node[1].sources, vec![src(nms, 700), src(a, 300)]);
    assert_eq!(s.per_node[2].sources, vec![src(b, 200)]);
    // what each relayed: a served b 300 bytes, b served c 200, c no one
    let served: Vec<u64> = s.per_node.iter().map(|n| n.served).collect();
    assert_eq!(served, vec![300, 200, 0]);
    assert_eq!(s.per_node[2].reason.as_deref(), Some("no space left on device"));
    assert_eq!(s.per_node[2].status, "failed");
    assert_eq!(s.per_node[0].secs, Some(1.5));
    let text = out.text();
    assert!(text.contains("installed: 2/3 nodes, failed: 1"), "{text}");
    let line_b = text
        .lines()
        .find(|l| l.trim_start().starts_with(&b.to_string()))
        .unwrap();
    assert!(
        line_b.contains("installed") && line_b.contains("1.50 s"),
        "{line_b}"
    );
    assert!(
        line_b.contains(&format!("NMS 700 B, {} 300 B", a.short())),
        "{line_b}"
    );
    assert!(text.contains("reason: no space left on device"), "{text}");
}

/// A node that reports its bytes per source (a leaf-only node fetching from several
/// relays at once) is credited as it says, not by the single source it names; the bytes
/// it verified after its last report go to the source it named last.
#[test]
fn the_bytes_a_node_reports_per_source_are_what_each_source_served() {
    let (mut v, _, _) = view(Mode::Plain, 24, 80);
    let m = manifest(1, 3, 1000);
    let (a, b, c) = (node(0), node(1), node(2));
    v.event(&started(&m), None);
    let from = |verified: u64, fetched: Vec<(NodeId, u64)>| NmsEvent::NodeProgress {
        campaign: m.campaign,
        node: c,
        status: NodeStatus::Receiving,
        verified,
        source: Some(b),
        fetched,
    };
    v.event(&from(300, vec![(b, 200), (a, 100)]), None);
    v.event(&from(900, vec![(b, 500), (a, 400)]), None);
    v.event(
        &NmsEvent::NodeInstalled {
            campaign: m.campaign,
            node: c,
        },
        None,
    );
    let all = [a, b, c].map(|n| (n, NodeStatus::Installed));
    let s = v.event(&done(&m, &all), None).unwrap();
    let src = |from: NodeId, bytes: u64| SourceBytes {
        from: Some(from.to_string()),
        nms: false,
        bytes,
    };
    assert_eq!(s.per_node[2].sources, vec![src(b, 600), src(a, 400)]);
    let served: Vec<u64> = s.per_node.iter().map(|n| n.served).collect();
    assert_eq!(served, vec![400, 600, 0]);
}

#[test]
fn json_lines_carry_every_event_and_the_summary() {
    let (mut v, term, out) = view(Mode::Json, 24, 80);
    let m = manifest(1, 2, 1000);
    let (a, b) = (node(0), node(1));
    let evs = [
        NmsEvent::NodeDiscovered { id: a, known: 1 },
        NmsEvent::NodeIncompatible { id: b, version: 99 },
        NmsEvent::NodeLeft { id: b },
        NmsEvent::DropWaiting {
            drop_id: DropId(1),
            found: 1,
            needed: 2,
        },
        NmsEvent::DropAbandoned {
            drop_id: DropId(2),
            reason: "only 1 node".into(),
        },
        NmsEvent::DropFailed {
            drop_id: DropId(3),
            reason: "too big".into(),
        },
        started(&m),
        progress(&m, a, NodeStatus::Receiving, 500, Some(m.nms)),
        NmsEvent::NodeInstalled {
            campaign: m.campaign,
            node: a,
        },
        NmsEvent::AuthRefused {
            campaign: m.campaign,
            node: b,
            reason: "bad code".into(),
        },
        NmsEvent::NodeFailed {
            campaign: m.campaign,
            node: b,
            reason: "auth refused".into(),
        },
        done(
            &m,
            &[
                (a, NodeStatus::Installed),
                (b, NodeStatus::Failed("auth refused".into())),
            ],
        ),
    ];
    for ev in &evs {
        v.event(ev, Some("/srv/drop/frob.tar.gz"));
    }
    v.drop_error("/srv/drop/x", "cannot read it");
    let text = out.text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let names: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "node-discovered",
            "node-incompatible",
            "node-left",
            "drop-waiting",
            "drop-abandoned",
            "drop-failed",
            "campaign-started",
            "node-progress",
            "node-installed",
            "auth-refused",
            "node-failed",
            "campaign-done",
            "drop-error"
        ]
    );
    for l in &lines {
        assert!(l["time"].as_f64().unwrap() > 1.7e9, "{l}");
    }
    // scripts wait for "known":N (the benchmark does)
    assert!(text.contains("\"known\":1"), "{text}");
    let keys = |i: usize, ks: &[&str]| {
        for k in ks {
            assert!(lines[i].get(*k).is_some(), "{} lacks {k}: {}", names[i], lines[i]);
        }
    };
    keys(0, &["node", "known"]);
    keys(1, &["node", "version", "ours"]);
    keys(3, &["drop", "found", "needed"]);
    keys(4, &["drop", "reason"]);
    keys(5, &["drop", "reason"]);
    keys(
        6,
        &[
            "drop",
            "campaign",
            "package",
            "version",
            "sequence",
            "size",
            "chunk_size",
            "nodes",
            "addressees",
            "fanout",
            "transfer",
        ],
    );
    keys(7, &["campaign", "node", "status", "verified", "source"]);
    keys(8, &["campaign", "node"]);
    keys(9, &["campaign", "node", "reason"]);
    keys(10, &["campaign", "node", "reason"]);
    keys(11, &["campaign", "summary"]);
    keys(12, &["drop", "reason"]);
    assert_eq!(lines[6]["drop"], "/srv/drop/frob.tar.gz");
    assert_eq!(lines[6]["transfer"], "cut-through");
    assert_eq!(lines[7]["source"], m.nms.to_string());
    assert_eq!(lines[7]["status"], "receiving");
    let s = &lines[11]["summary"];
    for k in [
        "campaign",
        "package",
        "version",
        "sequence",
        "size",
        "nodes",
        "installed",
        "failed",
        "wall_secs",
        "nms_bytes_sent",
        "nms_copies",
        "per_node",
    ] {
        assert!(s.get(k).is_some(), "summary lacks {k}: {s}");
    }
    assert_eq!(s["installed"], 1);
    assert_eq!(s["failed"][0]["reason"], "auth refused");
    let p = &s["per_node"];
    assert_eq!(p[0]["status"], "installed");
    assert_eq!(p[0]["reason"], Value::Null);
    assert_eq!(p[0]["sources"][0]["nms"], true);
    assert_eq!(p[0]["sources"][0]["bytes"], 1000);
    assert_eq!(p[0]["sources"][0]["from"], m.nms.to_string());
    assert_eq!(p[1]["status"], "failed");
    assert_eq!(p[1]["reason"], "auth refused");
    assert_eq!(p[1]["secs"], 1.5);
    // JSON mode never draws
    assert_eq!(term.bytes(), 0);
}

#[test]
fn plain_mode_logs_lines_and_a_progress_line_at_most_every_ten_seconds() {
    let (mut v, term, out) = view(Mode::Plain, 24, 80);
    let m = manifest(1, 2, 1000);
    let t0 = Instant::now();
    v.event_at(&started(&m), Some("/drop/frob.tar.gz"), t0);
    for i in 0..50u64 {
        let ev = progress(&m, node(0), NodeStatus::Receiving, i * 10, Some(m.nms));
        v.event_at(&ev, None, t0 + Duration::from_millis(i * 100));
    }
    assert_eq!(out.text().matches("verified").count(), 0, "{}", out.text());
    let ev = progress(&m, node(0), NodeStatus::Receiving, 600, Some(m.nms));
    v.event_at(&ev, None, t0 + Duration::from_secs(11));
    v.event_at(&ev, None, t0 + Duration::from_secs(12));
    let text = out.text();
    assert_eq!(text.matches("verified").count(), 1, "{text}");
    assert!(
        text.contains("frobnicator 2.1: 2 nodes: waiting 1, receiving 1; 600 B of 1.95 KiB verified"),
        "{text}"
    );
    assert!(
        text.contains("started: frobnicator 2.1 (sequence 1) from /drop/frob.tar.gz"),
        "{text}"
    );
    v.event_at(
        &NmsEvent::NodeInstalled {
            campaign: m.campaign,
            node: node(0),
        },
        None,
        t0 + Duration::from_secs(13),
    );
    assert!(out.text().contains(&format!("installed on {}", node(0))));
    assert_eq!(term.bytes(), 0);
}
