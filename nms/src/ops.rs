//! The operator's commands to a running NMS (`baton-nms status`, `nodes`, `campaigns`,
//! `show`, `cancel`, `resume`, `rollback`): the requests and answers that travel over the control
//! socket in the data directory ([`baton_shell::control`]), what the daemon answers from
//! its database and live state, and how the command prints the answer (tables, or `--json`).
//! The decisions (what a cancel or a resume does) are the endpoint's; this file only
//! translates.

use std::path::{Path, PathBuf};

use baton_protocol::monitor::CampaignMonitor;
use baton_protocol::{CampaignId, Manifest, NodeStatus, SignedManifest};
use serde::{Deserialize, Serialize};

use crate::db::{AgentSeen, CampaignState, InventoryNode, SavedCampaign, SavedNode};

/// Where the NMS with this data directory listens for the operator.
pub use baton_shell::control::socket_path;

/// One request of the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Nodes,
    Campaigns,
    Show {
        id: String,
    },
    Cancel {
        id: String,
    },
    Resume {
        id: String,
    },
    Rollback {
        package: String,
        to: Option<String>,
    },
    /// Distribute a new `baton-node` executable (an agent campaign, docs/operations.md).
    PublishAgent {
        path: String,
        version: String,
    },
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Status(StatusInfo),
    /// The fleet inventory, by node.
    Nodes {
        nodes: Vec<InventoryRow>,
    },
    Campaigns {
        campaigns: Vec<CampaignRow>,
    },
    Show(CampaignDetail),
    /// A cancel, resume or rollback carried out.
    Done {
        message: String,
        campaign: Option<CampaignRow>,
    },
}

/// The NMS as it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub nms: String,
    pub pid: u32,
    pub data_dir: String,
    pub watch: String,
    pub uptime_secs: u64,
    /// Nodes that would be addressees of a drop now.
    pub nodes_eligible: usize,
    /// Nodes in the inventory (seen at some time).
    pub nodes_known: usize,
    pub drops_waiting: usize,
    /// Campaigns still running (not every addressee final).
    pub running: Vec<CampaignRow>,
}

/// One node of the fleet inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryRow {
    pub node: String,
    pub addresses: Vec<String>,
    pub tags: Vec<String>,
    /// True unless it refused our offer because it trusts another NMS.
    pub trusts_this_nms: bool,
    /// Its refusal, when it trusts another NMS.
    pub other_nms: Option<String>,
    pub first_seen: u64,
    /// When it was last seen: its advert last changed, or went away, or a report of it.
    pub last_seen: u64,
    /// Its advert is on the LAN now (the NMS found it and has not lost it since).
    #[serde(default)]
    pub present: bool,
    pub installed: Vec<InstalledRow>,
    /// The agent it advertises: version, build id (BLAKE3 of its executable) and the build
    /// it ran before. `None` for an agent too old to say.
    #[serde(default)]
    pub agent: Option<AgentSeen>,
}

/// A package version a node installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledRow {
    pub package: String,
    pub version: String,
}

/// The inventory as the operator gets it; `present` says whether a node's advert is on
/// the LAN now.
pub fn node_rows(inventory: Vec<InventoryNode>, present: impl Fn(&str) -> bool) -> Vec<InventoryRow> {
    inventory
        .into_iter()
        .map(|n| InventoryRow {
            present: present(&n.node),
            node: n.node,
            addresses: n.addresses,
            tags: n.tags,
            trusts_this_nms: n.trust.is_none(),
            other_nms: n.trust,
            first_seen: n.first_seen,
            last_seen: n.last_seen,
            installed: n
                .installed
                .into_iter()
                .map(|(package, version)| InstalledRow { package, version })
                .collect(),
            agent: n.agent,
        })
        .collect()
}

fn node_table(nodes: &[InventoryRow], now: u64) -> String {
    if nodes.is_empty() {
        return "no node seen yet\n".into();
    }
    let or_dash = |s: String| if s.is_empty() { "-".into() } else { s };
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                if n.present {
                    "now".into()
                } else {
                    ago(n.last_seen, now)
                },
                or_dash(n.addresses.join(" ")),
                or_dash(n.tags.join(",")),
                match &n.other_nms {
                    None => "this NMS".into(),
                    Some(d) => format!("another NMS: {d}"),
                },
                match &n.agent {
                    None => "-".into(),
                    Some(a) => {
                        let short = |b: &str| b.get(..16).unwrap_or(b).to_string();
                        match &a.previous {
                            Some(p) => format!("{} {} (was {})", a.version, short(&a.build), short(p)),
                            None => format!("{} {}", a.version, short(&a.build)),
                        }
                    }
                },
                or_dash(
                    n.installed
                        .iter()
                        .map(|i| format!("{} {}", i.package, i.version))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "LAST SEEN",
            "ADDRESSES",
            "TAGS",
            "TRUSTS",
            "AGENT",
            "INSTALLED",
        ],
        &rows,
    )
}

/// One campaign in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignRow {
    pub id: String,
    pub package: String,
    pub version: String,
    pub sequence: u64,
    /// running, done, superseded or cancelled.
    pub state: String,
    /// Every addressee reached a final state.
    pub ended: bool,
    pub installed: usize,
    pub failed: usize,
    pub nodes: usize,
    pub started_at: u64,
    pub expires_at: u64,
    /// The NMS still holds the package's copy (a resume or rollback can use it).
    pub copy_kept: bool,
}

/// One addressee of a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub node: String,
    pub status: String,
    pub reason: Option<String>,
    pub verified: u64,
    pub source: Option<String>,
}

/// A campaign and its addressees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignDetail {
    pub campaign: CampaignRow,
    pub size: u64,
    pub file: String,
    pub nodes: Vec<NodeRow>,
}

/// The saved manifest of a campaign, decoded.
pub fn manifest_of(c: &SavedCampaign) -> Result<(SignedManifest, Manifest), String> {
    let signed = SignedManifest {
        body: c.manifest.clone(),
        signature: c.signature.clone(),
    };
    let m = signed.open_unchecked().map_err(|e| {
        format!(
            "the saved manifest of campaign {} does not decode ({e})",
            hex::encode(c.id)
        )
    })?;
    Ok((signed, m))
}

/// The campaign whose id starts with `prefix` (hex, any case), among `all`.
pub fn resolve(all: &[SavedCampaign], prefix: &str) -> Result<CampaignId, String> {
    let p = prefix.trim().to_ascii_lowercase();
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{prefix:?} is not a campaign id: give the hex digits of one (a unique prefix is enough), as listed by baton-nms campaigns"
        ));
    }
    let hits: Vec<&SavedCampaign> = all.iter().filter(|c| hex::encode(c.id).starts_with(&p)).collect();
    match hits[..] {
        [c] => Ok(c.id),
        [] => Err(format!(
            "no campaign id starts with {p}: list them with baton-nms campaigns"
        )),
        _ => Err(format!(
            "{p} is the start of {} campaign ids ({}): give more digits",
            hits.len(),
            hits.iter()
                .map(|c| hex::encode(c.id))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn state_text(s: CampaignState) -> &'static str {
    match s {
        CampaignState::Running => "running",
        CampaignState::Done => "done",
        CampaignState::Superseded => "superseded",
        CampaignState::Cancelled => "cancelled",
    }
}

fn status_text(s: &NodeStatus) -> (String, Option<String>) {
    let t = match s {
        NodeStatus::Waiting => "waiting",
        NodeStatus::Receiving => "receiving",
        NodeStatus::Verifying => "verifying",
        NodeStatus::Authenticated => "installing",
        NodeStatus::Installed => "installed",
        NodeStatus::Failed(r) => return ("failed".into(), Some(r.clone())),
        NodeStatus::Unreachable(r) => return ("unreachable".into(), Some(r.clone())),
        NodeStatus::Halted(r) => return ("halted".into(), Some(r.clone())),
        NodeStatus::TrustsOther(r) => return ("trusts-other-nms".into(), Some(r.clone())),
    };
    (t.into(), None)
}

/// A campaign's detail: from the live monitor while the NMS holds it, else from what the
/// database saved (`saved_nodes`; addressees without a saved row are waiting).
pub fn detail(
    c: &SavedCampaign,
    m: &Manifest,
    live: Option<&CampaignMonitor>,
    saved_nodes: &[SavedNode],
) -> CampaignDetail {
    let nodes: Vec<NodeRow> = m
        .addressees
        .iter()
        .map(|id| {
            let name = id.to_string();
            if let Some(v) = live.and_then(|l| l.nodes().get(id)) {
                let (status, reason) = status_text(&v.status);
                return NodeRow {
                    node: name,
                    status,
                    reason,
                    verified: v.verified,
                    source: v.source.map(|s| s.to_string()),
                };
            }
            match saved_nodes.iter().find(|n| n.node == name) {
                Some(n) => {
                    let (status, reason) = status_text(&n.status);
                    NodeRow {
                        node: name,
                        status,
                        reason,
                        verified: n.verified,
                        source: n.source.clone(),
                    }
                }
                None => NodeRow {
                    node: name,
                    status: "waiting".into(),
                    reason: None,
                    verified: 0,
                    source: None,
                },
            }
        })
        .collect();
    let installed = nodes.iter().filter(|n| n.status == "installed").count();
    let failed = nodes.iter().filter(|n| n.status == "failed").count();
    CampaignDetail {
        campaign: CampaignRow {
            id: hex::encode(c.id),
            package: m.name.clone(),
            version: m.version.clone(),
            sequence: m.sequence,
            state: state_text(c.state).into(),
            ended: live.map_or(c.ended, |l| l.is_done()),
            installed,
            failed,
            nodes: nodes.len(),
            started_at: c.started_at,
            expires_at: m.expires_at,
            copy_kept: c.copy.as_ref().is_some_and(|p| p.is_file()),
        },
        size: m.size,
        file: m.file.clone(),
        nodes,
    }
}

/// The copy a rollback of `package` distributes again: that of version `to`, or without
/// it the newest version older than the current one whose copy is kept. `all` holds every
/// campaign with its manifest. Returns the copy, its version and sequence, and the
/// current version and sequence; or why no rollback is possible, and what to do.
pub fn rollback_target(
    all: &[(SavedCampaign, Manifest)],
    package: &str,
    to: Option<&str>,
) -> Result<(PathBuf, String, u64, String, u64), String> {
    let mut list: Vec<&(SavedCampaign, Manifest)> =
        all.iter().filter(|(c, _)| c.package == package).collect();
    list.sort_by_key(|(c, _)| std::cmp::Reverse(c.sequence));
    let Some((cur, cur_m)) = list.first() else {
        return Err(format!(
            "this NMS never distributed a package named {package:?}: check the name with baton-nms campaigns"
        ));
    };
    let again = |v: &str| {
        format!(
            "to distribute {package} {v} anyway, drop its file again with an empty <file>.rollback next to it"
        )
    };
    let kept = |c: &SavedCampaign| c.copy.as_ref().filter(|p| p.is_file()).cloned();
    let older = list[1..].iter().filter(|(_, m)| m.version != cur_m.version);
    let pick = match to {
        Some(v) if v == cur_m.version => {
            return Err(format!(
                "{package} {v} is the current version (sequence {}); there is nothing to roll back to",
                cur.sequence
            ));
        }
        Some(v) => {
            let mut same = older.filter(|(_, m)| m.version == v).peekable();
            if same.peek().is_none() {
                let versions: Vec<String> = list.iter().map(|(_, m)| m.version.clone()).collect();
                return Err(format!(
                    "this NMS never distributed {package} {v} (it distributed: {}); {}",
                    versions.join(", "),
                    again(v)
                ));
            }
            match same.find(|(c, _)| kept(c).is_some()) {
                Some(x) => x,
                None => {
                    return Err(format!(
                        "the copy of {package} {v} was removed: this NMS keeps only the current and the previous version of a package; {}",
                        again(v)
                    ));
                }
            }
        }
        None => match older.clone().find(|(c, _)| kept(c).is_some()) {
            Some(x) => x,
            None => {
                let why = match older.clone().next() {
                    Some((_, m)) => format!(
                        "the copy of the previous version {} was removed; {}",
                        m.version,
                        again(&m.version)
                    ),
                    None => format!("{package} {} is the only version it distributed", cur_m.version),
                };
                return Err(format!("no earlier version of {package} is kept: {why}"));
            }
        },
    };
    let (c, m) = pick;
    Ok((
        kept(c).expect("picked with a kept copy"),
        m.version.clone(),
        c.sequence,
        cur_m.version.clone(),
        cur.sequence,
    ))
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                s.push_str(&c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

fn ago(unix: u64, now: u64) -> String {
    let d = now.saturating_sub(unix);
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

fn campaign_rows(list: &[CampaignRow], now: u64) -> String {
    if list.is_empty() {
        return "no campaigns\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.id[..12.min(c.id.len())].to_string(),
                c.package.clone(),
                c.version.clone(),
                c.sequence.to_string(),
                c.state.clone()
                    + if c.ended || c.state == "running" {
                        ""
                    } else {
                        " (running)"
                    },
                format!("{}/{}", c.installed, c.nodes),
                c.failed.to_string(),
                ago(c.started_at, now),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "PACKAGE",
            "VERSION",
            "SEQ",
            "STATE",
            "INSTALLED",
            "FAILED",
            "STARTED",
        ],
        &rows,
    )
}

/// The answer as the operator reads it.
pub fn render(r: &Response, now: u64) -> String {
    match r {
        Response::Status(s) => {
            let mut out = format!(
                "baton-nms {} (pid {}), up {}s\n  data dir  {}\n  watching  {}\n  nodes     {} eligible now, {} known\n  drops     {} waiting\n",
                s.nms,
                s.pid,
                s.uptime_secs,
                s.data_dir,
                s.watch,
                s.nodes_eligible,
                s.nodes_known,
                s.drops_waiting
            );
            if s.running.is_empty() {
                out.push_str("no campaign running\n");
            } else {
                out.push_str(&format!("{} campaign(s) running:\n", s.running.len()));
                out.push_str(&campaign_rows(&s.running, now));
            }
            out
        }
        Response::Nodes { nodes } => node_table(nodes, now),
        Response::Campaigns { campaigns } => campaign_rows(campaigns, now),
        Response::Show(d) => {
            let c = &d.campaign;
            let mut out = format!(
                "campaign {}\n  package   {} {} ({}, {} bytes), sequence {}\n  state     {}{}\n  nodes     {} installed, {} failed, {} in all\n  started   {}\n  expires   {}\n  copy      {}\n",
                c.id,
                c.package,
                c.version,
                d.file,
                d.size,
                c.sequence,
                c.state,
                if c.ended {
                    ", ended"
                } else {
                    ", nodes still at work"
                },
                c.installed,
                c.failed,
                c.nodes,
                ago(c.started_at, now),
                if c.expires_at > now {
                    format!("in {}s", c.expires_at - now)
                } else {
                    "expired".into()
                },
                if c.copy_kept { "kept" } else { "removed" },
            );
            let rows: Vec<Vec<String>> = d
                .nodes
                .iter()
                .map(|n| {
                    vec![
                        n.node.clone(),
                        n.status.clone(),
                        n.verified.to_string(),
                        n.source.clone().unwrap_or_else(|| "-".into()),
                        n.reason.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            out.push_str(&table(&["NODE", "STATUS", "VERIFIED", "FROM", "REASON"], &rows));
            out
        }
        Response::Done { message, .. } => format!("{message}\n"),
    }
}

/// Sends `req` to the NMS whose data directory is `data_dir` and prints its answer (a
/// table, or with `json` the answer as one JSON object).
pub fn command(data_dir: &Path, req: &Request, json: bool) -> anyhow::Result<()> {
    let r: Response = baton_shell::control::call(&socket_path(data_dir), "baton-nms", req)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        print!("{}", render(&r, now));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(id: u8, seq: u64, copy: Option<PathBuf>) -> SavedCampaign {
        SavedCampaign {
            id: [id; 16],
            package: "frob".into(),
            sequence: seq,
            manifest: Vec::new(),
            signature: Vec::new(),
            secret: [0; 32],
            state: CampaignState::Done,
            ended: true,
            copy,
            started_at: 0,
        }
    }

    #[test]
    fn a_campaign_is_named_by_a_unique_prefix() {
        let all = [saved(0xab, 1, None), saved(0xac, 2, None)];
        assert_eq!(resolve(&all, "AB").unwrap(), [0xab; 16]);
        let e = resolve(&all, "a").unwrap_err();
        assert!(e.contains("give more digits"), "{e}");
        let e = resolve(&all, "ff").unwrap_err();
        assert!(e.contains("no campaign id starts with ff"), "{e}");
        let e = resolve(&all, "zz").unwrap_err();
        assert!(e.contains("not a campaign id"), "{e}");
    }

    fn manifest(version: &str, seq: u64) -> Manifest {
        use baton_protocol::manifest::{HashList, MANIFEST_FORMAT, PlanParams, RelayPolicy, Transfer};
        Manifest {
            format: MANIFEST_FORMAT,
            campaign: [seq as u8; 16],
            nms: baton_protocol::id::fake_id(1),
            name: "frob".into(),
            version: version.into(),
            file: format!("frob-{version}.bin"),
            sequence: seq,
            size: 0,
            chunk_size: 4096,
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
            addressees: Vec::new(),
        }
    }

    #[test]
    fn a_rollback_goes_to_a_kept_older_version_or_says_why_not() {
        let d = tempfile::tempdir().unwrap();
        let copy = |n: &str| {
            let p = d.path().join(n);
            std::fs::write(&p, b"x").unwrap();
            Some(p)
        };
        // 1.0 (copy removed), 2.0 (kept), 3.0 (current, kept)
        let all = vec![
            (saved(1, 1, None), manifest("1.0", 1)),
            (saved(2, 2, copy("2")), manifest("2.0", 2)),
            (saved(3, 3, copy("3")), manifest("3.0", 3)),
        ];
        let (path, v, seq, cur, cur_seq) = rollback_target(&all, "frob", None).unwrap();
        assert_eq!(
            (path, v.as_str(), seq, cur.as_str(), cur_seq),
            (d.path().join("2"), "2.0", 2, "3.0", 3)
        );
        let e = rollback_target(&all, "frob", Some("1.0")).unwrap_err();
        assert!(
            e.contains("copy of frob 1.0 was removed") && e.contains(".rollback"),
            "{e}"
        );
        let e = rollback_target(&all, "frob", Some("3.0")).unwrap_err();
        assert!(e.contains("is the current version"), "{e}");
        let e = rollback_target(&all, "frob", Some("0.9")).unwrap_err();
        assert!(
            e.contains("never distributed frob 0.9 (it distributed: 3.0, 2.0, 1.0)"),
            "{e}"
        );
        // only one version
        let e = rollback_target(&all[2..], "frob", None).unwrap_err();
        assert!(e.contains("the only version"), "{e}");
        // the previous copy gone, an older one not kept either
        let gone = vec![
            all[0].clone(),
            (saved(2, 2, None), manifest("2.0", 2)),
            all[2].clone(),
        ];
        let e = rollback_target(&gone, "frob", None).unwrap_err();
        assert!(e.contains("copy of the previous version 2.0 was removed"), "{e}");
    }

    #[test]
    fn the_inventory_lists_tags_trust_and_versions() {
        let inv = vec![
            InventoryNode {
                node: "12D3KooA".into(),
                addresses: vec!["/ip4/198.18.0.2/tcp/4001".into()],
                tags: vec!["lab".into(), "rack-2".into()],
                trust: None,
                first_seen: 100,
                last_seen: 940,
                installed: vec![("frob".into(), "1.0".into()), ("knob".into(), "2.1".into())],
                agent: Some(AgentSeen {
                    version: "0.2.0".into(),
                    build: "b".repeat(64),
                    previous: Some("a".repeat(64)),
                    since: 900,
                }),
            },
            InventoryNode {
                node: "12D3KooB".into(),
                addresses: vec![],
                tags: vec![],
                trust: Some("trusts NMS 12D3KooX".into()),
                first_seen: 100,
                last_seen: 400,
                installed: vec![],
                agent: None,
            },
        ];
        let rows = node_rows(inv, |n| n == "12D3KooB");
        assert!(!rows[0].present && rows[1].present);
        assert!(rows[0].trusts_this_nms && rows[0].other_nms.is_none());
        assert!(!rows[1].trusts_this_nms);
        assert_eq!(
            rows[0].installed[1],
            InstalledRow {
                package: "knob".into(),
                version: "2.1".into()
            }
        );
        let r = Response::Nodes { nodes: rows };
        let out = render(&r, 1000);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[0].starts_with("NODE") && lines[0].contains("TRUSTS"),
            "{out}"
        );
        assert!(
            lines[1].contains("1m ago")
                && lines[1].contains("lab,rack-2")
                && lines[1].contains("this NMS")
                && lines[1].contains(&format!("0.2.0 {} (was {})", "b".repeat(16), "a".repeat(16)))
                && lines[1].ends_with("frob 1.0, knob 2.1"),
            "{out}"
        );
        assert!(
            lines[2].contains("  now  ")
                && !lines[2].contains("ago")
                && lines[2].contains("another NMS: trusts NMS 12D3KooX  -")
                && lines[2].ends_with("  -"),
            "{out}"
        );
        // --json: the same answer, parsed back
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""kind":"nodes""#), "{json}");
        assert_eq!(serde_json::from_str::<Response>(&json).unwrap(), r);
        assert_eq!(
            render(&Response::Nodes { nodes: vec![] }, 0),
            "no node seen yet\n"
        );
    }
}
