//! The operator's live view of a campaign: an overall bar and one bar per node
//! (indicatif; hidden when stderr is not a terminal), or JSON lines with `--json`. It is
//! drawn from the NMS endpoint's events ([`NmsEvent`]), nothing else.

use std::collections::HashMap;
use std::time::Duration;

use baton_protocol::endpoint::nms::NmsEvent;
use baton_protocol::{Manifest, NodeId, NodeStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Per-node bars are drawn for fleets up to this size; larger ones get the overall bar.
const MAX_NODE_BARS: usize = 32;

/// The live view of one campaign.
#[derive(Debug)]
pub struct Ui {
    json: bool,
    mp: MultiProgress,
    overall: ProgressBar,
    bars: HashMap<NodeId, ProgressBar>,
    size: u64,
    /// Where each addressee stands, from the events seen so far.
    nodes: HashMap<NodeId, (NodeStatus, u64)>,
}

impl Ui {
    pub fn new(m: &Manifest, json: bool) -> Ui {
        let mp = if json {
            MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
        } else {
            MultiProgress::new()
        };
        let nodes = m.addressees.len() as u64;
        let overall = mp.add(ProgressBar::new(m.size.max(1) * nodes));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:>14} [{elapsed_precise}] {wide_bar:.cyan/blue} {binary_bytes}/{binary_total_bytes} {msg}",
            )
            .expect("valid template"),
        );
        overall.set_prefix(format!("{} {}", m.name, m.version));
        let mut bars = HashMap::new();
        if m.addressees.len() <= MAX_NODE_BARS {
            let style =
                ProgressStyle::with_template("{prefix:>14} {bar:40.green/white} {binary_bytes:>10} {msg}")
                    .expect("valid template");
            for id in &m.addressees {
                let b = mp.add(ProgressBar::new(m.size.max(1)));
                b.set_style(style.clone());
                b.set_prefix(id.short());
                b.set_message("waiting");
                bars.insert(*id, b);
            }
        }
        if !json {
            // redraws the elapsed time between events (indicatif's own thread)
            overall.enable_steady_tick(Duration::from_millis(500));
        }
        let nodes = m
            .addressees
            .iter()
            .map(|id| (*id, (NodeStatus::Waiting, 0)))
            .collect();
        Ui {
            json,
            mp,
            overall,
            bars,
            size: m.size.max(1),
            nodes,
        }
    }

    /// Shows one of this campaign's events: progress redraws, installs and failures are
    /// also logged as lines.
    pub fn event(&mut self, ev: &NmsEvent) {
        match ev {
            NmsEvent::NodeProgress {
                node,
                status,
                verified,
                ..
            } => self.set(*node, status.clone(), *verified),
            NmsEvent::NodeInstalled { node, .. } => {
                self.set(*node, NodeStatus::Installed, self.size);
                self.line(Note::Installed(node));
            }
            NmsEvent::NodeFailed { node, reason, .. } => {
                let verified = self.nodes.get(node).map_or(0, |n| n.1);
                self.set(*node, NodeStatus::Failed(reason.clone()), verified);
                self.line(Note::Failed(node, reason));
            }
            NmsEvent::NodeUnreachable { node, reason, .. } => {
                let verified = self.nodes.get(node).map_or(0, |n| n.1);
                self.set(*node, NodeStatus::Unreachable(reason.clone()), verified);
                self.line(Note::Unreachable(node, reason));
            }
            NmsEvent::CampaignHalted { reason, .. } => {
                let halted: Vec<(NodeId, u64)> = self
                    .nodes
                    .iter()
                    .filter(|(_, (s, _))| {
                        matches!(
                            s,
                            NodeStatus::Waiting
                                | NodeStatus::Receiving
                                | NodeStatus::Verifying
                                | NodeStatus::Unreachable(_)
                        )
                    })
                    .map(|(id, (_, v))| (*id, *v))
                    .collect();
                for (id, v) in halted {
                    self.set(id, NodeStatus::Halted(reason.clone()), v);
                }
                self.line(Note::Halted(reason));
            }
            NmsEvent::AuthRefused { node, reason, .. } => self.line(Note::AuthRefused(node, reason)),
            _ => {}
        }
    }

    fn set(&mut self, id: NodeId, status: NodeStatus, verified: u64) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.0.is_final() && !status.is_final() {
            return;
        }
        *n = (status, verified);
        let verified = if n.0 == NodeStatus::Installed {
            self.size
        } else {
            n.1
        };
        if let Some(b) = self.bars.get(&id) {
            b.set_position(verified);
            b.set_message(match &n.0 {
                NodeStatus::Failed(r) => format!("FAILED: {}", r.chars().take(60).collect::<String>()),
                s @ (NodeStatus::Unreachable(r) | NodeStatus::Halted(r) | NodeStatus::TrustsOther(r)) => {
                    format!(
                        "{}: {}",
                        crate::server::status_name(s).to_uppercase(),
                        r.chars().take(60).collect::<String>()
                    )
                }
                s => crate::server::status_name(s).to_string(),
            });
        }
        let mut total = 0;
        let (mut installed, mut failed, mut unreachable) = (0, 0, 0);
        for (s, v) in self.nodes.values() {
            match s {
                NodeStatus::Installed => {
                    installed += 1;
                    total += self.size;
                }
                NodeStatus::Failed(_) | NodeStatus::Halted(_) => {
                    failed += 1;
                    total += v;
                }
                NodeStatus::Unreachable(_) => {
                    unreachable += 1;
                    total += v;
                }
                _ => total += v,
            }
        }
        self.overall.set_position(total);
        self.overall.set_message(format!(
            "installed {installed}/{}, failed {failed}, unreachable {unreachable}",
            self.nodes.len()
        ));
    }

    /// Logs an event line.
    fn line(&self, n: Note<'_>) {
        let line = match n {
            Note::Installed(id) => {
                if self.json {
                    serde_json::json!({"event": "installed", "node": id.to_string()}).to_string()
                } else {
                    format!("installed on {id}")
                }
            }
            Note::Failed(id, reason) => {
                if self.json {
                    serde_json::json!({"event": "failed", "node": id.to_string(), "reason": reason})
                        .to_string()
                } else {
                    format!("FAILED on {id}: {reason}")
                }
            }
            Note::Unreachable(id, reason) => {
                if self.json {
                    serde_json::json!({"event": "unreachable", "node": id.to_string(), "reason": reason})
                        .to_string()
                } else {
                    format!("UNREACHABLE {id}: {reason}")
                }
            }
            Note::Halted(reason) => {
                if self.json {
                    serde_json::json!({"event": "halted", "reason": reason}).to_string()
                } else {
                    format!("CAMPAIGN HALTED: {reason}")
                }
            }
            Note::AuthRefused(id, reason) => {
                if self.json {
                    serde_json::json!({"event": "auth-refused", "node": id.to_string(), "reason": reason})
                        .to_string()
                } else {
                    format!("authentication refused for {id}: {reason}")
                }
            }
        };
        if self.json {
            println!("{line}");
        } else if self.mp.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.mp.println(line);
        }
    }

    /// Stops the bars where they are.
    pub fn finish(&self) {
        self.overall.finish();
        for b in self.bars.values() {
            b.finish();
        }
    }
}

/// A line for the operator's log.
enum Note<'a> {
    Installed(&'a NodeId),
    Failed(&'a NodeId, &'a str),
    AuthRefused(&'a NodeId, &'a str),
    Unreachable(&'a NodeId, &'a str),
    Halted(&'a str),
}
