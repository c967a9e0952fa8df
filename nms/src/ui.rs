//! The operator's live view of a campaign: an overall bar and one bar per node
//! (indicatif; hidden when stderr is not a terminal), or JSON lines with `--json`.

use std::collections::HashMap;

use baton_protocol::{CampaignMonitor, Manifest, MonitorNote, NodeId, NodeStatus};
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
        Ui {
            json,
            mp,
            overall,
            bars,
            size: m.size.max(1),
        }
    }

    /// Redraws from the monitor's view.
    pub fn update(&self, monitor: &CampaignMonitor) {
        let mut total = 0;
        for (id, v) in monitor.nodes() {
            let verified = if v.status == NodeStatus::Installed {
                self.size
            } else {
                v.verified
            };
            total += verified;
            if let Some(b) = self.bars.get(id) {
                b.set_position(verified);
                b.set_message(match &v.status {
                    NodeStatus::Failed(r) => format!("FAILED: {}", r.chars().take(60).collect::<String>()),
                    s => format!("{s:?}").to_lowercase(),
                });
            }
        }
        let (installed, failed, n) = monitor.counts();
        self.overall.set_position(total);
        self.overall
            .set_message(format!("installed {installed}/{n}, failed {failed}"));
    }

    /// Logs an event line.
    pub fn note(&self, n: &MonitorNote) {
        let line = match n {
            MonitorNote::Installed(id) => {
                if self.json {
                    serde_json::json!({"event": "installed", "node": id.to_string()}).to_string()
                } else {
                    format!("installed on {id}")
                }
            }
            MonitorNote::Failed(id, reason) => {
                if self.json {
                    serde_json::json!({"event": "failed", "node": id.to_string(), "reason": reason})
                        .to_string()
                } else {
                    format!("FAILED on {id}: {reason}")
                }
            }
            MonitorNote::AuthRefused(id, reason) => {
                if self.json {
                    serde_json::json!({"event": "auth-refused", "node": id.to_string(), "reason": reason})
                        .to_string()
                } else {
                    format!("authentication refused for {id}: {reason}")
                }
            }
            MonitorNote::Done => return,
        };
        if self.json {
            println!("{line}");
        } else if self.mp.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.mp.println(line);
        }
    }

    pub fn finish(&self) {
        self.overall.finish();
        for b in self.bars.values() {
            b.finish();
        }
    }
}
