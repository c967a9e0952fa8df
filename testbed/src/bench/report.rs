//! Reports: medians over runs, the markdown table, JSON and the SVG plot
//! of per-node completion times (hand-written SVG).

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{BenchConfig, MethodResult, human_size, median};

/// One method's figures over all its runs (medians).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub method: String,
    pub describe: String,
    /// Runs that ran (not skipped).
    pub runs: usize,
    /// Runs without an error.
    pub ok_runs: usize,
    /// Median wall time in seconds over the runs where every node finished.
    pub wall_s: Option<f64>,
    /// `wall_s` divided by t1's `wall_s`.
    pub ratio_t1: Option<f64>,
    /// Median of host 0's transmitted bytes divided by the package size.
    pub nms_copies: Option<f64>,
    /// Fewest verified nodes in any run.
    pub verified: Option<usize>,
    pub nodes: usize,
    pub cpu_s: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    /// Median completion time of each node, seconds.
    pub per_node_s: Vec<Option<f64>>,
    pub skipped: Option<String>,
    /// Errors, as "run K: message".
    pub errors: Vec<String>,
    /// Median bytes each node served (from the NMS's summary); empty when the
    /// method has no such figures.
    pub served_bytes: Vec<Option<u64>>,
    /// Nodes (from 1) whose relaying was gated (as in the first run that says).
    pub gated_nodes: Vec<usize>,
    /// Per run with the figures: the bytes each node served and the gated nodes. The
    /// gated nodes depend on the run's peer ids, so medians per node mix gated and
    /// ungated nodes when they differ between runs; the report then lists the runs.
    pub served_runs: Vec<(Vec<Option<u64>>, Vec<usize>)>,
}

/// Summarises `results[run][i]` per method, in the order of `methods`
/// (name, description); methods without results are left out.
pub fn summarize(results: &[Vec<MethodResult>], methods: &[(String, String)], size: u64) -> Vec<Summary> {
    let mut out = Vec::new();
    for (name, describe) in methods {
        let runs: Vec<(usize, &MethodResult)> = results
            .iter()
            .enumerate()
            .flat_map(|(k, rs)| rs.iter().filter(|r| &r.method == name).map(move |r| (k, r)))
            .collect();
        if runs.is_empty() {
            continue;
        }
        let ran: Vec<&(usize, &MethodResult)> = runs.iter().filter(|(_, r)| r.skipped.is_none()).collect();
        let nodes = runs.iter().map(|(_, r)| r.nodes).max().unwrap_or(0);
        let f = |get: &dyn Fn(&MethodResult) -> Option<f64>| {
            median(&ran.iter().filter_map(|(_, r)| get(r)).collect::<Vec<_>>())
        };
        let per_node_s = (0..nodes)
            .map(|i| {
                median(
                    &ran.iter()
                        .filter_map(|(_, r)| r.per_node.get(i).copied().flatten())
                        .map(|d| d.as_secs_f64())
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let served_nodes = ran.iter().map(|(_, r)| r.served_bytes.len()).max().unwrap_or(0);
        let served_bytes = (0..served_nodes)
            .map(|i| {
                median(
                    &ran.iter()
                        .filter_map(|(_, r)| r.served_bytes.get(i).copied().flatten())
                        .map(|b| b as f64)
                        .collect::<Vec<_>>(),
                )
                .map(|b| b.round() as u64)
            })
            .collect();
        let gated_nodes = ran
            .iter()
            .map(|(_, r)| &r.gated_nodes)
            .find(|g| !g.is_empty())
            .cloned()
            .unwrap_or_default();
        let size = size.max(1) as f64;
        out.push(Summary {
            method: name.clone(),
            describe: describe.clone(),
            runs: ran.len(),
            ok_runs: ran.iter().filter(|(_, r)| r.error.is_none()).count(),
            wall_s: f(&|r| r.wall.map(|d| d.as_secs_f64())),
            ratio_t1: None,
            nms_copies: f(&|r| Some(r.nms_tx_bytes as f64 / size)),
            verified: ran.iter().map(|(_, r)| r.verified_nodes).min(),
            nodes,
            cpu_s: f(&|r| r.cpu_secs),
            peak_rss_kib: f(&|r| r.peak_rss_kib.map(|k| k as f64)).map(|k| k.round() as u64),
            per_node_s,
            skipped: runs.iter().find_map(|(_, r)| r.skipped.clone()),
            errors: ran
                .iter()
                .filter_map(|(k, r)| r.error.as_ref().map(|e| format!("run {}: {e}", k + 1)))
                .collect(),
            served_bytes,
            gated_nodes,
            served_runs: ran
                .iter()
                .filter(|(_, r)| !r.served_bytes.is_empty())
                .map(|(_, r)| (r.served_bytes.clone(), r.gated_nodes.clone()))
                .collect(),
        });
    }
    let t1 = out
        .iter()
        .find(|s| s.method == "t1")
        .and_then(|s| s.wall_s)
        .filter(|&w| w > 0.0);
    if let Some(t1) = t1 {
        for s in &mut out {
            s.ratio_t1 = s.wall_s.map(|w| w / t1);
        }
    }
    out
}

/// One line for the progress output.
pub(crate) fn progress_line(r: &MethodResult, size: u64) -> String {
    if let Some(why) = &r.skipped {
        return format!("{}: skipped: {why}", r.method);
    }
    let wall = r
        .wall
        .map(|d| format!("{:.2} s", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into());
    let mut line = format!(
        "{}: {wall}, {}/{} verified, NMS sent {:.2} copies",
        r.method,
        r.verified_nodes,
        r.nodes,
        r.nms_tx_bytes as f64 / size.max(1) as f64
    );
    if !r.served_bytes.is_empty() {
        line.push_str(&format!(
            ", served (NMS summary): {}",
            served_line(&r.served_bytes, &r.gated_nodes)
        ));
    }
    if let Some(e) = &r.error {
        line.push_str(&format!(", FAILED: {e}"));
    }
    line
}

/// `node 1 64 MiB, node 2 0 B (gated), node 3 -`: bytes each node served.
fn served_line(served: &[Option<u64>], gated: &[usize]) -> String {
    served
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let bytes = b.map(human_size).unwrap_or_else(|| "-".into());
            let mark = if gated.contains(&(i + 1)) { " (gated)" } else { "" };
            format!("node {} {bytes}{mark}", i + 1)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "-".into())
}

/// The setup in one line.
fn setup_line(c: &BenchConfig) -> String {
    let mut s = format!(
        "{} nodes, {} package, {} links",
        c.nodes,
        human_size(c.size),
        c.rate
    );
    for slow in &c.slow {
        s.push_str(&format!(", node {} at {}", slow.node, slow.rate));
    }
    if let Some(l) = &c.loss {
        s.push_str(&format!(", loss {l}"));
    }
    if let Some(d) = &c.delay {
        s.push_str(&format!(", delay {d}"));
    }
    s
}

/// The markdown report: the table, then what each method is.
pub fn render_markdown(c: &BenchConfig, summary: &[Summary]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Baton benchmark\n");
    let _ = writeln!(
        md,
        "{}; {} run{} per method (figures are medians over the runs); started {}.\n",
        setup_line(c),
        c.runs,
        if c.runs == 1 { "" } else { "s" },
        c.started
    );
    let _ = writeln!(md, "Command: `{}`\n", c.command.replace('`', "'"));
    let _ = writeln!(
        md,
        "| method | wall (s) | × T1 | NMS copies | verified | CPU (s) | peak RSS (MiB) | notes |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|---|");
    for s in summary {
        let mut notes = Vec::new();
        if let Some(why) = &s.skipped {
            notes.push(format!("skipped: {why}"));
        }
        if s.runs > 0 && s.ok_runs < s.runs {
            notes.push(format!("{} of {} runs failed", s.runs - s.ok_runs, s.runs));
        }
        if let Some(e) = s.errors.first() {
            notes.push(e.clone());
        }
        let notes = notes.join("; ").replace('|', "\\|").replace('\n', " ");
        let verified = match s.verified {
            Some(v) if s.runs > 0 => format!("{v}/{}", s.nodes),
            _ => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            s.method,
            opt(s.wall_s, 2),
            opt(s.ratio_t1, 2),
            opt(s.nms_copies, 2),
            verified,
            opt(s.cpu_s, 2),
            opt(s.peak_rss_kib.map(|k| k as f64 / 1024.0), 1),
            notes
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "wall: from the start to the last node holding the package (every copy checked by \
         BLAKE3). × T1: wall divided by t1's wall. NMS copies: bytes host 0 sent (headers and \
         retransmissions included) divided by the package size. verified: nodes whose copy \
         matched, fewest in any run. CPU: all processes of the method, server and nodes \
         together. peak RSS: the largest single process.\n"
    );
    for s in summary {
        let _ = writeln!(md, "- `{}`: {}", s.method, s.describe);
    }
    let served: Vec<&Summary> = summary.iter().filter(|s| !s.served_bytes.is_empty()).collect();
    if !served.is_empty() {
        let _ = writeln!(
            md,
            "\nBytes each node served to the others, as the NMS's campaign summary counts them \
             (the bytes each node verified while fetching from that node; medians over the runs, or \
             run by run where other nodes were gated):\n"
        );
        for s in served {
            let same_gates = s.served_runs.iter().all(|(_, g)| *g == s.gated_nodes);
            if same_gates {
                let _ = writeln!(
                    md,
                    "- `{}`: {}",
                    s.method,
                    served_line(&s.served_bytes, &s.gated_nodes)
                );
            } else {
                // other nodes were gated in other runs: each run on its own
                for (k, (bytes, gated)) in s.served_runs.iter().enumerate() {
                    let _ = writeln!(
                        md,
                        "- `{}` run {}: {}",
                        s.method,
                        k + 1,
                        served_line(bytes, gated)
                    );
                }
            }
        }
    }
    md
}

/// The report as JSON: the setup, the summary and every run's raw results.
pub fn render_json(c: &BenchConfig, summary: &[Summary], results: &[Vec<MethodResult>]) -> Value {
    let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
    json!({
        "config": {
            "nodes": c.nodes,
            "size_bytes": c.size,
            "rate": c.rate,
            "slow": c.slow.iter().map(|s| json!({"node": s.node, "rate": s.rate})).collect::<Vec<_>>(),
            "loss": c.loss,
            "delay": c.delay,
            "runs": c.runs,
            "command": c.command,
            "started": c.started,
        },
        "summary": summary.iter().map(|s| json!({
            "method": s.method,
            "describe": s.describe,
            "runs": s.runs,
            "ok_runs": s.ok_runs,
            "wall_s": s.wall_s,
            "ratio_t1": s.ratio_t1,
            "nms_copies": s.nms_copies,
            "verified_nodes": s.verified,
            "nodes": s.nodes,
            "cpu_s": s.cpu_s,
            "peak_rss_kib": s.peak_rss_kib,
            "per_node_s": s.per_node_s,
            "skipped": s.skipped,
            "errors": s.errors,
            "served_bytes": s.served_bytes,
            "gated_nodes": s.gated_nodes,
        })).collect::<Vec<_>>(),
        "runs": results.iter().map(|rs| rs.iter().map(|r| json!({
            "method": r.method,
            "wall_s": secs(r.wall),
            "per_node_s": r.per_node.iter().map(|d| secs(*d)).collect::<Vec<_>>(),
            "nms_tx_bytes": r.nms_tx_bytes,
            "verified_nodes": r.verified_nodes,
            "nodes": r.nodes,
            "cpu_s": r.cpu_secs,
            "peak_rss_kib": r.peak_rss_kib,
            "skipped": r.skipped,
            "error": r.error,
            "served_bytes": r.served_bytes,
            "gated_nodes": r.gated_nodes,
        })).collect::<Vec<_>>()).collect::<Vec<_>>(),
    })
}

const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#7f7f7f",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tick step of 1, 2 or 5 times a power of ten giving about `target`
/// ticks over `range`.
pub(crate) fn nice_step(range: f64, target: f64) -> f64 {
    let raw = (range / target.max(1.0)).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_tick(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let digits = (-step.log10().floor()) as usize;
        format!("{v:.digits$}")
    }
}

/// The completion plot: one band per method, one marker per node at its
/// (median) completion time, a bar at the wall time, T1 dashed across.
pub fn render_svg(c: &BenchConfig, summary: &[Summary]) -> String {
    const W: f64 = 960.0;
    const LEFT: f64 = 170.0;
    const RIGHT: f64 = 30.0;
    const TOP: f64 = 64.0;
    let max_nodes = summary.iter().map(|s| s.nodes).max().unwrap_or(1).max(1);
    let band = (max_nodes as f64 * 6.0 + 20.0).clamp(36.0, 140.0);
    let plot_h = band * summary.len().max(1) as f64;
    let height = TOP + plot_h + 96.0;
    let plot_w = W - LEFT - RIGHT;

    let t_max = summary
        .iter()
        .flat_map(|s| s.per_node_s.iter().flatten().copied().chain(s.wall_s))
        .fold(0.0f64, f64::max);
    let step = nice_step(t_max.max(1.0) * 1.05, 8.0);
    let x_end = ((t_max.max(1.0) * 1.05) / step).ceil() * step;
    let x = |t: f64| LEFT + plot_w * (t / x_end);
    let t1 = summary.iter().find(|s| s.method == "t1").and_then(|s| s.wall_s);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(svg, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="22" font-size="16" font-weight="bold">When each node held the verified package</text>"##
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="42" fill="#444">{}; median of {} run{}</text>"##,
        esc(&setup_line(c)),
        c.runs,
        if c.runs == 1 { "" } else { "s" }
    );

    // Bands, labels, markers.
    for (i, s) in summary.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let top = TOP + band * i as f64;
        let mid = top + band / 2.0;
        if i % 2 == 0 {
            let _ = writeln!(
                svg,
                r##"<rect class="band" x="{LEFT}" y="{top}" width="{plot_w}" height="{band}" fill="#f4f4f4"/>"##
            );
        }
        let _ = writeln!(
            svg,
            r##"<text class="method" x="{}" y="{}" text-anchor="end" font-weight="bold" fill="{color}">{}</text>"##,
            LEFT - 10.0,
            mid - 2.0,
            esc(&s.method)
        );
        let sub = if s.skipped.is_some() {
            "skipped".to_owned()
        } else if let Some(w) = s.wall_s {
            match s.ratio_t1 {
                Some(r) if s.method != "t1" => format!("{w:.2} s, {r:.2}× T1"),
                _ => format!("{w:.2} s"),
            }
        } else if s.runs > 0 {
            format!(
                "failed ({}/{} nodes)",
                s.per_node_s.iter().flatten().count(),
                s.nodes
            )
        } else {
            "-".to_owned()
        };
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end" fill="#555" font-size="11">{}</text>"##,
            LEFT - 10.0,
            mid + 12.0,
            esc(&sub)
        );
        let n = s.per_node_s.len().max(1) as f64;
        for (j, t) in s.per_node_s.iter().enumerate() {
            let Some(t) = t else { continue };
            let y = top + 10.0 + (j as f64 + 0.5) * (band - 20.0) / n;
            let _ = writeln!(
                svg,
                r##"<circle class="node" cx="{:.1}" cy="{y:.1}" r="3.5" fill="{color}"><title>{} node {}: {t:.2} s</title></circle>"##,
                x(*t),
                esc(&s.method),
                j + 1
            );
        }
        if let Some(w) = s.wall_s {
            let _ = writeln!(
                svg,
                r##"<line class="wall" x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="{color}" stroke-width="2.5" stroke-opacity="0.55"><title>{3} wall: {w:.2} s</title></line>"##,
                x(w),
                top + 4.0,
                top + band - 4.0,
                esc(&s.method)
            );
        }
    }

    // Axes.
    let bottom = TOP + plot_h;
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{bottom}" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" x2="{}" y1="{bottom}" y2="{bottom}" stroke="#333"/>"##,
        W - RIGHT
    );
    let ticks = (x_end / step).round() as usize;
    for k in 0..=ticks {
        let v = step * k as f64;
        let xv = x(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{xv:.1}" x2="{xv:.1}" y1="{TOP}" y2="{bottom}" stroke="#ddd" stroke-width="0.5"/>"##
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{xv:.1}" x2="{xv:.1}" y1="{bottom}" y2="{}" stroke="#333"/>"##,
            bottom + 5.0
        );
        let _ = writeln!(
            svg,
            r##"<text class="tick" x="{xv:.1}" y="{}" text-anchor="middle">{}</text>"##,
            bottom + 19.0,
            fmt_tick(v, step)
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle">seconds since the start</text>"##,
        LEFT + plot_w / 2.0,
        bottom + 38.0
    );
    if let Some(t1) = t1 {
        let _ = writeln!(
            svg,
            r##"<line class="t1" x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{bottom}" stroke="#000" stroke-dasharray="5,4"/>"##,
            x(t1),
            TOP - 6.0
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{}" font-size="11">T1 = {t1:.2} s</text>"##,
            x(t1) + 4.0,
            TOP - 8.0
        );
    }

    // Legend.
    let ly = bottom + 66.0;
    let _ = writeln!(svg, r##"<g class="legend">"##);
    let _ = writeln!(
        svg,
        r##"<circle cx="{}" cy="{}" r="3.5" fill="#333"/><text x="{}" y="{}">one node done (its row within the band is its number)</text>"##,
        LEFT + 6.0,
        ly - 4.0,
        LEFT + 16.0,
        ly
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{0}" x2="{0}" y1="{1}" y2="{2}" stroke="#333" stroke-width="2.5"/><text x="{3}" y="{4}">wall (median): last node done</text>"##,
        LEFT + 366.0,
        ly - 11.0,
        ly + 3.0,
        LEFT + 376.0,
        ly
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{0}" x2="{1}" y1="{2}" y2="{2}" stroke="#000" stroke-dasharray="5,4"/><text x="{3}" y="{4}">T1: one copy to one node</text>"##,
        LEFT + 566.0,
        LEFT + 596.0,
        ly - 4.0,
        LEFT + 602.0,
        ly
    );
    let _ = writeln!(svg, "</g>");
    let _ = writeln!(svg, "</svg>");
    svg
}
