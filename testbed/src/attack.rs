//! The attack suite: a rogue peer, built on the project's crates, against a live fleet in
//! network namespaces.
//!
//! `baton-testbed attack` (and `testbed/tests/attack.rs`, at a smaller size) builds a fleet:
//! the NMS on host 0, `nodes` nodes trusting it on hosts 1..=n, one more node started with
//! `--trust-first` on host n+1, and a rogue host n+2. The rogue is this binary re-executed as
//! `baton-testbed attack-rogue <config>` inside its namespace. It has its own libp2p swarm
//! (TCP + Noise + Yamux, like the fleet) and its **own** codecs for `/baton/control/1` and
//! `/baton/chunk/1`: it writes whatever bytes it likes, at whatever pace. It only uses the
//! public message types and encoders of `baton-protocol`. It also answers, as an NMS would,
//! requests about the campaigns it made up: it serves their chunks sealed for the requester
//! and acknowledges authentication. So an offer a node wrongly accepts runs all the way to an
//! install, and the final check sees it.
//!
//! The run:
//! 1. the nodes start; the NMS does not yet. The trust-first node gets an identity that
//!    sorts first, so that it is the head of the NMS's chain and gets its offer from the NMS
//!    itself (the only offer trust on first use may pin, docs/security.md section 3);
//! 2. phase 1: the rogue offers to the trust-first node before any NMS is heard;
//! 3. phase 2, for `duration` seconds: the NMS starts, and every attack runs at once
//!    (forged, unsigned, untrusted, expired and replayed offers, garbage, offer and chunk
//!    floods, the single oversize frames). Once the single oversize frames are done (or half
//!    the time has passed), the stalled max-size (MAX_CONTROL_MESSAGE) frames start, then (once one of them holds on)
//!    the slow streams, and both are kept up to the end; only then is the fleet's package
//!    dropped, so that its campaign runs under all of it;
//! 4. the checks: no node holds any package but the NMS's, and that one with the exact
//!    dropped bytes; the fleet's campaign completed (the NMS exited 0); the peak RSS of every
//!    node (VmRSS, sampled every 100 ms) stayed under [`RSS_LIMIT_KIB`]; every node still runs.
//!    A table row also fails if a rogue offer was accepted or a node served the rogue a chunk.
//!
//! The rogue uses several identities (its stored key for offers, replays and garbage; fresh
//! keys for each flood and each kind of stalled stream; one well-behaved key that only
//! probes), each with its own connections: the per-connection caps one family runs into do
//! not hide how a node answers another, and an attacker can make keys at will.
//!
//! The rogue gets the nodes' addresses from the cluster: every node listens on [`NODE_PORT`]
//! in its own namespace. To replay real traffic it reads a node's saved offer
//! (`partial/*/offer.cbor`), as an attacker with a copy of that disk would. It holds a copy of
//! the NMS key *only* to mint "recorded" manifests that stand for real offers recorded from
//! earlier campaigns: an expired one, one with an older sequence, and valid ones that the
//! rogue offers in the NMS's place. Whatever it signs with that key lists only the fleet's
//! nodes as addressees, never the rogue itself.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use baton_protocol::chunk::PackageHasher;
use baton_protocol::limits::{MAX_CHUNK_FRAME, MAX_CONTROL_MESSAGE, MAX_PATH, MAX_SMALL_CONTROL};
use baton_protocol::manifest::{HashList, MANIFEST_FORMAT, PlanParams, RelayPolicy, SIGNATURE_DOMAIN};
use baton_protocol::wire::{
    CHUNK_PROTOCOL, CONTROL_PROTOCOL, RefuseReason, Verdict, decode_control, encode_control,
};
use baton_protocol::{
    CampaignId, ChunkRequest, ChunkResponse, ChunkStatus, Control, HopToken, InstallOutcome, Keypair,
    Manifest, NodeId, Offer, SignedManifest,
};
use futures::prelude::*;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, noise, tcp, yamux};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::bench::parse_size;
use crate::bench::procs::interrupted;
use crate::cluster::{Cluster, dir_names, prepare_host, tail};
use crate::netns::{NetSpec, host_addr};

/// The TCP port every node listens on (each in its own namespace).
pub const NODE_PORT: u16 = 4100;
/// The most a node's resident set may reach while it is attacked, in KiB (64 MiB).
pub const RSS_LIMIT_KIB: u64 = 64 * 1024;
/// The fleet's package.
const PACKAGE: &str = "frob";
const PACKAGE_FILE: &str = "frob-1.0.tar.gz";
/// The reference shell's limit on a chunk request frame (docs/protocol.md, 3.2).
const CHUNK_REQUEST_LIMIT: usize = 8 * 1024;
/// Chunk size of the rogue's own packages.
const ROGUE_CHUNK: u32 = 4096;
/// How often a stalled stream sends one byte to learn whether the node still holds it.
const STALL_PROBE: Duration = Duration::from_secs(2);
/// What a paced write returns when it stalled to the end and the stream was still open.
const HELD: &str = "rogue: stalled to the end, stream still open";

/// How hard the rogue pushes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scale {
    /// Seconds the attacks of phase 2 run.
    pub duration_secs: f64,
    /// Offers flooded to each node.
    pub offer_flood: usize,
    /// Chunk requests flooded to each node for unknown campaigns, and as many again for the
    /// fleet's campaign.
    pub chunk_flood: usize,
    /// Slow streams per node and kind (a frame a byte at a time; a control header then
    /// nothing; a chunk header then nothing).
    pub slow_streams: usize,
    /// Control frames per node that announce max-size (MAX_CONTROL_MESSAGE), send all but the last byte, then stall.
    pub oversize_streams: usize,
    /// Requests in flight per node and flood.
    pub concurrency: usize,
    /// Minimal peer ids (3 bytes each on the wire) in each decode-amplification offer.
    pub amplify_ids: usize,
}

impl Scale {
    /// The `baton-testbed attack` defaults.
    pub fn full() -> Self {
        Scale {
            duration_secs: 30.0,
            offer_flood: 5000,
            chunk_flood: 5000,
            slow_streams: 48,
            oversize_streams: 4,
            concurrency: 64,
            amplify_ids: 1_000_000,
        }
    }

    /// The CI size (`testbed/tests/attack.rs`): fewer requests, the same kinds, the same
    /// oversize streams.
    pub fn small() -> Self {
        Scale {
            duration_secs: 20.0,
            offer_flood: 1000,
            chunk_flood: 1000,
            slow_streams: 24,
            oversize_streams: 4,
            concurrency: 32,
            amplify_ids: 1_000_000,
        }
    }
}

/// What the suite builds and how long it waits.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Nodes that trust the NMS (a trust-first node comes on top).
    pub nodes: usize,
    /// Size of the fleet's package.
    pub size: u64,
    pub scale: Scale,
    /// How long the fleet's campaign may take after the drop.
    pub campaign_timeout: Duration,
    /// Keep the work directory (logs, node stores) for inspection.
    pub keep: bool,
}

/// `baton-testbed attack` options.
#[derive(clap::Args, Debug, Clone)]
pub struct AttackArgs {
    /// Nodes trusting the NMS (one `--trust-first` node is added).
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Size of the fleet's package (e.g. 32MiB).
    #[arg(long, default_value = "32MiB", value_parser = parse_size)]
    pub size: u64,
    /// Seconds the attacks run alongside the campaign.
    #[arg(long, default_value_t = Scale::full().duration_secs)]
    pub duration: f64,
    /// Offers flooded to each node.
    #[arg(long, default_value_t = Scale::full().offer_flood)]
    pub offer_flood: usize,
    /// Chunk requests flooded to each node (for unknown campaigns, and again for the fleet's).
    #[arg(long, default_value_t = Scale::full().chunk_flood)]
    pub chunk_flood: usize,
    /// Slow streams per node and kind.
    #[arg(long, default_value_t = Scale::full().slow_streams)]
    pub slow_streams: usize,
    /// Stalled max-size (MAX_CONTROL_MESSAGE) control frames per node.
    #[arg(long, default_value_t = Scale::full().oversize_streams)]
    pub oversize_streams: usize,
    /// Requests in flight per node and flood.
    #[arg(long, default_value_t = Scale::full().concurrency)]
    pub concurrency: usize,
    /// Empty peer ids in each decode-amplification offer (3 bytes each on the wire).
    #[arg(long, default_value_t = Scale::full().amplify_ids)]
    pub amplify_ids: usize,
    /// Seconds the fleet's campaign may take.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
    /// Keep the work directory (logs, stores) afterwards.
    #[arg(long)]
    pub keep: bool,
}

impl AttackArgs {
    fn options(&self) -> SuiteOptions {
        SuiteOptions {
            nodes: self.nodes,
            size: self.size,
            scale: Scale {
                duration_secs: self.duration,
                offer_flood: self.offer_flood,
                chunk_flood: self.chunk_flood,
                slow_streams: self.slow_streams,
                oversize_streams: self.oversize_streams,
                concurrency: self.concurrency.max(1),
                amplify_ids: self.amplify_ids,
            },
            campaign_timeout: Duration::from_secs(self.timeout),
            keep: self.keep,
        }
    }
}

/// One line of the table: an attack, what was sent, how the nodes answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub attack: String,
    pub sent: String,
    /// Seconds from the start of phase 2 to the first send and to the last answer.
    pub when: Option<(f64, f64)>,
    /// Answers by class, with counts and the slowest time.
    pub result: String,
    pub ok: bool,
    /// Why the row failed (empty when ok).
    pub why: String,
}

/// A final assertion.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Peak resident set of one node.
#[derive(Debug, Clone)]
pub struct RssStat {
    pub label: String,
    pub pid: u32,
    pub peak_kib: u64,
    /// Unix seconds when the peak was seen.
    pub peak_unix: f64,
    pub first_kib: u64,
    pub samples: usize,
}

/// Everything the suite found.
#[derive(Debug, Clone)]
pub struct SuiteReport {
    pub rows: Vec<Row>,
    pub checks: Vec<Check>,
    pub rss: Vec<RssStat>,
    /// Seconds from the drop to the NMS's exit.
    pub campaign_secs: Option<f64>,
    /// Unix seconds when phase 2 began (the rogue's clock), and when the package was dropped.
    pub phase2: Option<f64>,
    pub dropped: f64,
    pub total_secs: f64,
}

impl SuiteReport {
    /// Every failed row and check, one line each.
    pub fn failures(&self) -> Vec<String> {
        let rows = self
            .rows
            .iter()
            .filter(|r| !r.ok)
            .map(|r| format!("{}: {}", r.attack, r.why));
        let checks = self
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail));
        rows.chain(checks).collect()
    }

    /// The table, the checks and the figures, for a terminal. Times are seconds from the
    /// start of phase 2 (`ph1`: before it).
    pub fn render(&self) -> String {
        let head = ["attack", "what was sent", "when (s)", "result", "ok"];
        let cells: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.attack.clone(),
                    r.sent.clone(),
                    match r.when {
                        Some((_, b)) if b < 0.0 => "ph1".into(),
                        Some((a, b)) => format!("{:.1}-{:.1}", a.max(0.0), b),
                        None => "-".into(),
                    },
                    r.result.clone(),
                    if r.ok { "ok".into() } else { "FAIL".into() },
                ]
            })
            .collect();
        let mut w = head.map(|h| h.chars().count());
        for c in &cells {
            for k in 0..5 {
                w[k] = w[k].max(c[k].chars().count());
            }
        }
        let line = |c: [&str; 5]| -> String {
            let mut s = String::new();
            for k in 0..5 {
                let pad = w[k].saturating_sub(c[k].chars().count());
                s.push_str(c[k]);
                if k < 4 {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(" | ");
                }
            }
            s.trim_end().to_string()
        };
        let rel = |t: f64| self.phase2.map(|p| t - p).unwrap_or(t);
        let mut out = String::new();
        out.push_str(&line(head));
        out.push('\n');
        out.push_str(&line(w.map(|n| "-".repeat(n)).each_ref().map(String::as_str)));
        out.push('\n');
        for c in &cells {
            out.push_str(&line(c.each_ref().map(String::as_str)));
            out.push('\n');
        }
        out.push_str(&format!(
            "\nthe fleet's package was dropped at {:.1} s\n",
            rel(self.dropped)
        ));
        out.push_str("\npeak RSS of each node (VmRSS every 100 ms, limit 64 MiB):\n");
        for r in &self.rss {
            out.push_str(&format!(
                "  {:<8} pid {:<7} peak {:>7.1} MiB at {:>5.1} s (first sample {:.1} MiB, {} samples)\n",
                r.label,
                r.pid,
                r.peak_kib as f64 / 1024.0,
                rel(r.peak_unix),
                r.first_kib as f64 / 1024.0,
                r.samples
            ));
        }
        out.push_str("\nchecks:\n");
        for c in &self.checks {
            out.push_str(&format!(
                "  [{}] {}: {}\n",
                if c.ok { " ok " } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        out.push_str(&format!(
            "\nfleet campaign: {}; whole suite {:.1} s\n",
            self.campaign_secs
                .map(|s| format!("NMS exited {s:.1} s after the drop"))
                .unwrap_or_else(|| "did not end".into()),
            self.total_secs
        ));
        let f = self.failures();
        if f.is_empty() {
            out.push_str("all checks passed\n");
        } else {
            out.push_str(&format!("{} failed:\n", f.len()));
            for l in f {
                out.push_str(&format!("  - {l}\n"));
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// The orchestrator: the fleet, the rogue process, the RSS sampler, the checks.
// ---------------------------------------------------------------------------------------

/// `baton-testbed attack`: runs the suite, prints the table, fails if any check failed.
pub fn run(args: &AttackArgs) -> Result<()> {
    if args.nodes == 0 || args.nodes > 64 {
        bail!("--nodes must be between 1 and 64");
    }
    prepare_host("the attack suite", "attack")?;
    let opts = args.options();
    println!(
        "Attack suite: NMS + {} nodes + 1 trust-first node + 1 rogue host, {:.1} MiB package, attacks for {:.0} s",
        opts.nodes,
        opts.size as f64 / (1024.0 * 1024.0),
        opts.scale.duration_secs
    );
    let report = run_suite(&opts, std::env::current_exe()?, &interrupted)?;
    println!("{}", report.render());
    let failed = report.failures();
    if !failed.is_empty() {
        bail!("{} of the attack suite's checks failed", failed.len());
    }
    Ok(())
}

/// Builds the fleet and the rogue, runs both phases and checks the fleet. The cluster (and
/// with it every namespace and process) is removed before this returns, also on error.
pub fn run_suite(opts: &SuiteOptions, exe: PathBuf, stop: &dyn Fn() -> bool) -> Result<SuiteReport> {
    let t0 = Instant::now();
    let n = opts.nodes;
    let tofu = n + 1;
    let rogue = n + 2;
    let mut c = Cluster::create(&NetSpec::with_hosts(n + 3), exe)?;
    first_in_chain(&mut c, tofu, n)?;
    if opts.keep {
        c.keep_dir();
        println!("work directory {}", c.dir.display());
    }
    let port = ["--port".to_string(), NODE_PORT.to_string()];
    let mut procs = Vec::new();
    for i in 1..=n {
        procs.push(c.start_node(i, &port)?);
    }
    let mut tofu_args = vec!["--trust-first".to_string()];
    tofu_args.extend(port.iter().cloned());
    procs.push(c.start_node_raw(tofu, &tofu_args)?);
    for i in 1..=tofu {
        let name = format!("node-{i}");
        if !c.wait_until(Duration::from_secs(30), |c| {
            c.log(&name).contains("listening on port")
        }) {
            bail!("node {i} did not come up:\n{}", c.log(&name));
        }
    }
    let watched: Vec<(String, u32)> = procs
        .iter()
        .enumerate()
        .filter_map(|(k, p)| Some((format!("node-{}", k + 1), c.pid(*p)?)))
        .collect();
    let sampler = Sampler::start(watched, c.dir.join("rss.csv"));

    let targets: Vec<TargetSpec> = (1..=tofu)
        .map(|i| {
            let id = c.node_ids[i - 1];
            TargetSpec {
                label: format!("node-{i}"),
                id: id.to_string(),
                addr: format!("/ip4/{}/tcp/{NODE_PORT}/p2p/{id}", host_addr(i)),
                data_dir: c.node_dir(i),
                trust_first: i == tofu,
            }
        })
        .collect();
    let cfg = RogueConfig {
        key_dir: c.node_dir(rogue),
        nms_key_dir: c.nms_dir(),
        nms_id: c.nms_id.to_string(),
        targets,
        phase_file: c.dir.join("rogue-phase1.done"),
        pressure_file: c.dir.join("rogue-pressure.up"),
        report_file: c.dir.join("rogue-report.json"),
        scale: opts.scale.clone(),
    };
    let cfg_path = c.dir.join("rogue.json");
    fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
    let rogue_proc = c.start_helper(
        rogue,
        "rogue",
        &["attack-rogue".to_string(), cfg_path.display().to_string()],
        "rogue",
    )?;
    // phase 1: the rogue speaks to the trust-first node before any NMS exists
    let phase_deadline = Instant::now() + Duration::from_secs(60);
    while !cfg.phase_file.exists() {
        if stop() {
            bail!("interrupted");
        }
        if !c.running(rogue_proc) || Instant::now() > phase_deadline {
            bail!("the rogue did not finish phase 1:\n{}", tail(&c.log("rogue"), 40));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // phase 2: the fleet's own campaign, under attack
    let nms = c.start_nms(&crate::cluster::nms_args(tofu, true), true, &[])?;
    // the package is dropped once the rogue's stalled and slow streams are up
    let pressure_deadline = Instant::now() + Duration::from_secs_f64(opts.scale.duration_secs);
    while !cfg.pressure_file.exists() && Instant::now() < pressure_deadline {
        if stop() {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let expected = c.drop_package(PACKAGE_FILE, opts.size, 2026)?;
    let dropped = Instant::now();
    let dropped_unix = unix_secs();
    let nms_status = c.wait(nms, opts.campaign_timeout, stop)?;
    let campaign_secs = nms_status.map(|_| dropped.elapsed().as_secs_f64());
    let rogue_status = c.wait(
        rogue_proc,
        Duration::from_secs_f64(opts.scale.duration_secs + 90.0),
        stop,
    )?;
    let rss = sampler.stop();
    let alive: Vec<bool> = procs.iter().map(|p| c.running(*p)).collect();

    let mut checks = Vec::new();
    let mut phase2 = None;
    let rows = match fs::read(&cfg.report_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<RogueReport>(&b).ok())
    {
        Some(r) => {
            checks.push(Check {
                name: "the rogue ran every attack".into(),
                ok: rogue_status.is_some_and(|s| s.success()),
                detail: format!("rogue exit {rogue_status:?}"),
            });
            phase2 = Some(r.phase2);
            r.rows
        }
        None => {
            checks.push(Check {
                name: "the rogue ran every attack".into(),
                ok: false,
                detail: format!(
                    "no report (exit {rogue_status:?}); its log ends:\n{}",
                    tail(&c.log("rogue"), 30)
                ),
            });
            Vec::new()
        }
    };

    // nothing installed but the NMS's package, with the exact bytes
    let mut foreign = Vec::new();
    let mut partial = Vec::new();
    for i in 1..=tofu {
        for name in dir_names(&c.node_dir(i).join("packages")) {
            if name != PACKAGE {
                let hash = c.installed_hash(i, &name).map(hex::encode).unwrap_or_default();
                foreign.push(format!("node-{i} installed `{name}` {hash}"));
            }
        }
        if let Some(h) = c.installed_hash(i, PACKAGE)
            && h != expected
        {
            foreign.push(format!(
                "node-{i} has `{PACKAGE}` with other bytes ({})",
                hex::encode(h)
            ));
        }
        // campaigns accepted but not (yet) installed: anything not signed by the NMS
        for name in dir_names(&c.node_dir(i).join("partial")) {
            let signer = fs::read(c.node_dir(i).join("partial").join(&name).join("offer.cbor"))
                .ok()
                .and_then(|b| match decode_control(&b) {
                    Ok(Control::Offer(o)) => o.manifest.open_unchecked().ok(),
                    _ => None,
                })
                .map(|m| (m.nms, m.name));
            match signer {
                Some((nms, _)) if nms == c.nms_id => {}
                Some((nms, pkg)) => partial.push(format!("node-{i} holds `{pkg}` signed by {nms}")),
                None => partial.push(format!("node-{i} holds an unreadable campaign {name}")),
            }
        }
    }
    checks.push(Check {
        name: "nothing installed but the NMS's package".into(),
        ok: foreign.is_empty(),
        detail: if foreign.is_empty() {
            format!(
                "every node holds only `{PACKAGE}`{}",
                if partial.is_empty() {
                    String::new()
                } else {
                    format!("; accepted, not installed: {}", partial.join(", "))
                }
            )
        } else {
            let mut d = foreign.join("; ");
            if !partial.is_empty() {
                d.push_str(&format!("; accepted, not installed: {}", partial.join(", ")));
            }
            d
        },
    });

    let missing: Vec<String> = (1..=tofu)
        .filter(|i| c.installed_hash(*i, PACKAGE) != Some(expected))
        .map(|i| format!("node-{i}"))
        .collect();
    let summary = c.summaries().pop();
    let failed_nodes = summary
        .as_ref()
        .and_then(|s| s.get("failed").cloned())
        .map(|f| f.to_string())
        .unwrap_or_default();
    let nms_ok = nms_status.is_some_and(|s| s.success());
    checks.push(Check {
        name: "the fleet's campaign completed with the exact bytes".into(),
        ok: nms_ok && missing.is_empty(),
        detail: match (nms_status, missing.is_empty()) {
            (None, _) => format!(
                "the NMS did not finish within {} s; missing the dropped bytes: {}",
                opts.campaign_timeout.as_secs(),
                missing.join(", ")
            ),
            (Some(st), true) if st.success() => format!(
                "NMS exit 0 after {:.1} s; {tofu}/{tofu} nodes hold the dropped bytes ({})",
                campaign_secs.unwrap_or_default(),
                &hex::encode(expected)[..16]
            ),
            (Some(st), _) => format!(
                "NMS {st} after {:.1} s; without the dropped bytes: [{}]; NMS summary failed: {failed_nodes}",
                campaign_secs.unwrap_or_default(),
                missing.join(", ")
            ),
        },
    });

    let pinned =
        fs::read_to_string(c.node_dir(tofu).join(baton_node::agent::PINNED_FILE)).unwrap_or_default();
    let pinned = pinned
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    let pinned = pinned.as_str();
    let rogue_id = c.node_ids[rogue - 1].to_string();
    let who = if pinned.is_empty() {
        "nothing".to_string()
    } else if pinned == rogue_id {
        format!("the ROGUE ({pinned})")
    } else if pinned == c.nms_id.to_string() {
        format!("the NMS ({pinned})")
    } else {
        pinned.to_string()
    };
    let tofu_ok = c.installed_hash(tofu, PACKAGE) == Some(expected)
        && dir_names(&c.node_dir(tofu).join("packages")).len() == 1;
    checks.push(Check {
        name: format!("trust-first node-{tofu}: only the NMS's campaign installed"),
        ok: tofu_ok,
        detail: format!(
            "it pinned {who}; packages: [{}]",
            dir_names(&c.node_dir(tofu).join("packages")).join(", ")
        ),
    });

    for r in &rss {
        checks.push(Check {
            name: format!("{} peak RSS under 64 MiB", r.label),
            ok: r.peak_kib < RSS_LIMIT_KIB && r.samples > 0,
            detail: format!(
                "peak {:.1} MiB ({} samples)",
                r.peak_kib as f64 / 1024.0,
                r.samples
            ),
        });
    }
    let dead: Vec<String> = alive
        .iter()
        .enumerate()
        .filter(|(_, a)| !**a)
        .map(|(k, _)| format!("node-{}", k + 1))
        .collect();
    checks.push(Check {
        name: "every node still running".into(),
        ok: dead.is_empty(),
        detail: if dead.is_empty() {
            format!("{tofu}/{tofu} running")
        } else {
            format!("exited: {}", dead.join(", "))
        },
    });
    let report = SuiteReport {
        rows,
        checks,
        rss,
        campaign_secs,
        phase2,
        dropped: dropped_unix,
        total_secs: 0.0,
    };
    drop(c);
    Ok(SuiteReport {
        total_secs: t0.elapsed().as_secs_f64(),
        ..report
    })
}

/// Gives node `tofu` a new identity that sorts before nodes 1..=n. The NMS orders addressees
/// by id and plans a chain by default, so that node is first tier: it gets its offer from
/// the NMS itself, the only offer that trust on first use may pin (docs/security.md, 3).
fn first_in_chain(c: &mut Cluster, tofu: usize, n: usize) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(first) = c.node_ids[..n].iter().min().copied() else {
        return Ok(());
    };
    let kp = loop {
        let kp = Keypair::generate_ed25519();
        if NodeId::of(&kp) < first {
            break kp;
        }
    };
    let path = c.node_dir(tofu).join(baton_shell::identity::KEY_FILE);
    fs::write(&path, kp.to_protobuf_encoding()?)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    c.node_ids[tofu - 1] = NodeId::of(&kp);
    Ok(())
}

/// Reads VmRSS of each process every 100 ms on a thread.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<RssStat>>>,
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Sampler {
    /// Samples `procs` until stopped; writes every sample to `out` (CSV) at the end.
    fn start(procs: Vec<(String, u32)>, out: PathBuf) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut stats: Vec<RssStat> = procs
                .into_iter()
                .map(|(label, pid)| RssStat {
                    label,
                    pid,
                    peak_kib: 0,
                    peak_unix: 0.0,
                    first_kib: 0,
                    samples: 0,
                })
                .collect();
            let mut csv = String::from("unix_secs,node,vm_rss_kib\n");
            while !flag.load(Ordering::Relaxed) {
                let now = unix_secs();
                for s in &mut stats {
                    if let Some(kib) = vm_rss_kib(s.pid) {
                        csv.push_str(&format!("{now:.1},{},{kib}\n", s.label));
                        if s.samples == 0 {
                            s.first_kib = kib;
                        }
                        s.samples += 1;
                        if kib > s.peak_kib {
                            s.peak_kib = kib;
                            s.peak_unix = now;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = fs::write(&out, csv);
            stats
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> Vec<RssStat> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// The rogue process.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TargetSpec {
    label: String,
    id: String,
    addr: String,
    data_dir: PathBuf,
    trust_first: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RogueConfig {
    /// The rogue's own identity.
    key_dir: PathBuf,
    /// The NMS's data directory: its key mints "recorded" manifests only.
    nms_key_dir: PathBuf,
    nms_id: String,
    targets: Vec<TargetSpec>,
    /// Created when phase 1 is over.
    phase_file: PathBuf,
    /// Created when the stalled and slow streams are up on every node.
    pressure_file: PathBuf,
    report_file: PathBuf,
    scale: Scale,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RogueReport {
    /// Unix seconds when phase 2 began.
    phase2: f64,
    rows: Vec<Row>,
}

/// The hidden `baton-testbed attack-rogue <config.json>`: runs inside the rogue's namespace.
pub fn rogue_main(args: &[String]) -> Result<()> {
    baton_shell::init_tracing();
    let path = args.first().context("usage: attack-rogue <config.json>")?;
    let cfg: RogueConfig = serde_json::from_slice(&fs::read(path)?).context("reading the rogue's config")?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let r = rt.block_on(rogue(cfg));
    rt.shutdown_timeout(Duration::from_secs(1));
    r
}

// --- the codec -------------------------------------------------------------------------

/// How the bytes of a request go out.
#[derive(Debug, Clone)]
enum Pace {
    /// All at once, then the write side is closed.
    All,
    /// One byte, a flush, a pause, until the frame is out or `until` passes.
    Trickle { gap: Duration, until: Instant },
    /// The first `after` bytes, then one more byte every [`STALL_PROBE`] (never the last
    /// one, so the frame is never complete) to see whether the node still holds the stream,
    /// until `until`. `held` is set once the node took the first probe byte: the stream
    /// survived the node's first decision about it.
    Stall {
        after: usize,
        until: Instant,
        held: Option<Arc<AtomicBool>>,
    },
}

#[derive(Debug, Clone)]
enum Req {
    /// Outbound: bytes exactly as given (length prefix included), at a pace.
    Raw {
        bytes: Arc<Vec<u8>>,
        pace: Pace,
    },
    /// Inbound, from a node that believes the rogue is an NMS or a parent.
    Control(Control),
    Chunk(ChunkRequest),
}

#[derive(Debug)]
enum Resp {
    Control(Control),
    Chunk(ChunkResponse),
    /// A reply that did not decode (or nothing to say to an inbound request).
    Undecodable,
}

const MIB: f64 = 1024.0 * 1024.0;

/// The rogue's own framing: a u32 big-endian length, then the bytes.
#[derive(Debug, Clone, Default)]
struct RogueCodec;

fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 4);
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn is_chunk(p: &StreamProtocol) -> bool {
    p.as_ref() == CHUNK_PROTOCOL
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(invalid(format!("frame of {len} bytes over {limit}")));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

fn reset(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("rogue: write failed: {e}"))
}

async fn write_paced<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8], pace: Pace) -> io::Result<()> {
    match pace {
        Pace::All => {
            for piece in bytes.chunks(256 * 1024) {
                io.write_all(piece).await.map_err(reset)?;
            }
            Ok(())
        }
        Pace::Trickle { gap, until } => {
            for b in bytes {
                if Instant::now() >= until {
                    return Err(io::Error::other(HELD));
                }
                io.write_all(std::slice::from_ref(b)).await.map_err(reset)?;
                io.flush().await.map_err(reset)?;
                tokio::time::sleep(gap).await;
            }
            Ok(())
        }
        Pace::Stall { after, until, held } => {
            let after = after.min(bytes.len());
            for piece in bytes[..after].chunks(256 * 1024) {
                io.write_all(piece).await.map_err(reset)?;
            }
            io.flush().await.map_err(reset)?;
            let mut next = after;
            loop {
                let wake = (Instant::now() + STALL_PROBE).min(until);
                tokio::time::sleep_until(wake.into()).await;
                if next + 1 < bytes.len() {
                    io.write_all(&bytes[next..next + 1]).await.map_err(reset)?;
                    io.flush().await.map_err(reset)?;
                    next += 1;
                    if let Some(h) = &held {
                        h.store(true, Ordering::Release);
                    }
                }
                if wake >= until {
                    return Err(io::Error::other(HELD));
                }
            }
        }
    }
}

impl request_response::Codec for RogueCodec {
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Req> {
        if is_chunk(p) {
            ChunkRequest::decode(&read_frame(io, CHUNK_REQUEST_LIMIT).await?)
                .map(Req::Chunk)
                .map_err(invalid)
        } else {
            decode_control(&read_frame(io, MAX_CONTROL_MESSAGE).await?)
                .map(Req::Control)
                .map_err(invalid)
        }
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Resp> {
        if is_chunk(p) {
            let b = read_frame(io, MAX_CHUNK_FRAME).await?;
            Ok(match ChunkResponse::decode(&b) {
                Ok(r) => Resp::Chunk(r),
                Err(_) => Resp::Undecodable,
            })
        } else {
            let b = read_frame(io, MAX_CONTROL_MESSAGE).await?;
            Ok(match decode_control(&b) {
                Ok(c) => Resp::Control(c),
                Err(_) => Resp::Undecodable,
            })
        }
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> io::Result<()> {
        match req {
            Req::Raw { bytes, pace } => write_paced(io, &bytes, pace).await,
            Req::Control(c) => io.write_all(&framed(&encode_control(&c))).await,
            Req::Chunk(c) => io.write_all(&framed(&c.encode())).await,
        }
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()> {
        let bytes = match res {
            Resp::Control(c) => framed(&encode_control(&c)),
            Resp::Chunk(r) => framed(&r.encode()),
            Resp::Undecodable => Vec::new(),
        };
        io.write_all(&bytes).await?;
        io.close().await
    }
}

#[derive(NetworkBehaviour)]
struct RogueBehaviour {
    control: request_response::Behaviour<RogueCodec>,
    chunk: request_response::Behaviour<RogueCodec>,
}

fn build_swarm(keypair: Keypair, timeout: Duration) -> Result<Swarm<RogueBehaviour>> {
    let cfg = || {
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(8192)
    };
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| RogueBehaviour {
            control: request_response::Behaviour::new(
                [(
                    StreamProtocol::new(CONTROL_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                cfg(),
            ),
            chunk: request_response::Behaviour::new(
                [(
                    StreamProtocol::new(CHUNK_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                cfg(),
            ),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    swarm.listen_on("/ip4/0.0.0.0/tcp/0".parse()?)?;
    Ok(swarm)
}

// --- the rogue as an NMS for its own campaigns -----------------------------------------

struct RogueCampaign {
    content: Arc<Vec<u8>>,
    root: HopToken,
}

/// Serves the campaigns the rogue made up, and counts what nodes asked about them: any
/// count here means a node accepted a rogue offer.
#[derive(Default)]
struct MiniNms {
    campaigns: HashMap<CampaignId, RogueCampaign>,
    labels: HashMap<PeerId, String>,
    seen: BTreeMap<String, u64>,
}

fn serde_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

impl MiniNms {
    fn label(&self, p: &PeerId) -> String {
        self.labels.get(p).cloned().unwrap_or_else(|| p.to_string())
    }

    fn control(&mut self, from: PeerId, msg: Control) -> Control {
        let ours = msg.campaign().is_some_and(|c| self.campaigns.contains_key(c));
        if ours {
            let what = match &msg {
                Control::AuthRequest { .. } => "auth-request".to_string(),
                Control::Progress { phase, .. } => format!("progress:{}", serde_name(phase)),
                Control::InstallReport {
                    outcome: InstallOutcome::Installed,
                    ..
                } => "install-report:INSTALLED".into(),
                Control::InstallReport { .. } => "install-report:failed".into(),
                other => format!("{:?}", other.kind()),
            };
            *self
                .seen
                .entry(format!("{} {what}", self.label(&from)))
                .or_default() += 1;
        }
        match msg {
            Control::AuthRequest { campaign, .. } if ours => Control::AuthReply {
                campaign,
                ok: true,
                reason: String::new(),
            },
            Control::Receipt { campaign, .. } => Control::ReceiptAck {
                campaign,
                matches: true,
            },
            Control::Probe { nonce, .. } => Control::ProbeReply { nonce, state: None },
            Control::Offer(_) => Control::OfferReply {
                campaign: [0; 16],
                verdict: Verdict::Refuse {
                    reason: RefuseReason::Busy,
                    detail: "no".into(),
                },
            },
            _ => Control::Ack,
        }
    }

    fn chunk(&mut self, from: PeerId, req: ChunkRequest) -> ChunkResponse {
        let answer = |status| ChunkResponse {
            campaign: req.campaign,
            index: req.index,
            status,
            data: Vec::new(),
        };
        let Some(c) = self.campaigns.get(&req.campaign) else {
            return answer(ChunkStatus::UnknownCampaign);
        };
        let start = req.index as usize * ROGUE_CHUNK as usize;
        if start >= c.content.len() {
            return answer(ChunkStatus::Refused);
        }
        let end = (start + ROGUE_CHUNK as usize).min(c.content.len());
        let mut data = c.content[start..end].to_vec();
        c.root
            .along(&req.path)
            .chunk_key()
            .seal(&req.campaign, req.index, &mut data);
        let key = format!("{} chunk-request", self.label(&from));
        *self.seen.entry(key).or_default() += 1;
        ChunkResponse {
            campaign: req.campaign,
            index: req.index,
            status: ChunkStatus::Ok,
            data,
        }
    }
}

// --- the swarm driver ------------------------------------------------------------------

#[derive(Debug)]
enum Outcome {
    Control(Control),
    Chunk(ChunkResponse),
    Undecodable,
    Failed(String),
}

struct Cmd {
    peer: PeerId,
    chunk: bool,
    req: Req,
    done: oneshot::Sender<Outcome>,
}

fn failure_class(e: &OutboundFailure) -> String {
    match e {
        OutboundFailure::Timeout => "timeout".into(),
        OutboundFailure::ConnectionClosed => "conn-closed".into(),
        OutboundFailure::DialFailure => "dial-failure".into(),
        OutboundFailure::UnsupportedProtocols => "unsupported".into(),
        OutboundFailure::Io(e) => {
            let m = e.to_string();
            if m.contains(HELD) {
                "held-open".into()
            } else if m.contains("max sub-streams") {
                "rogue-stream-limit".into()
            } else {
                "dropped".into()
            }
        }
    }
}

type Pending = HashMap<(bool, OutboundRequestId), oneshot::Sender<Outcome>>;

fn on_rr(
    swarm: &mut Swarm<RogueBehaviour>,
    chunk: bool,
    ev: request_response::Event<Req, Resp>,
    pending: &mut Pending,
    mini: &Mutex<MiniNms>,
) {
    match ev {
        request_response::Event::Message { peer, message, .. } => match message {
            request_response::Message::Request { request, channel, .. } => {
                let resp = {
                    let mut m = mini.lock().unwrap();
                    match request {
                        Req::Control(c) => Resp::Control(m.control(peer, c)),
                        Req::Chunk(r) => Resp::Chunk(m.chunk(peer, r)),
                        Req::Raw { .. } => Resp::Undecodable,
                    }
                };
                let b = swarm.behaviour_mut();
                let _ = if chunk {
                    b.chunk.send_response(channel, resp)
                } else {
                    b.control.send_response(channel, resp)
                };
            }
            request_response::Message::Response { request_id, response } => {
                if let Some(tx) = pending.remove(&(chunk, request_id)) {
                    let _ = tx.send(match response {
                        Resp::Control(c) => Outcome::Control(c),
                        Resp::Chunk(r) => Outcome::Chunk(r),
                        Resp::Undecodable => Outcome::Undecodable,
                    });
                }
            }
        },
        request_response::Event::OutboundFailure {
            request_id, error, ..
        } => {
            if let Some(tx) = pending.remove(&(chunk, request_id)) {
                let _ = tx.send(Outcome::Failed(failure_class(&error)));
            }
        }
        _ => {}
    }
}

async fn drive(
    mut swarm: Swarm<RogueBehaviour>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    mini: Arc<Mutex<MiniNms>>,
) {
    let mut pending = Pending::new();
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                let b = swarm.behaviour_mut();
                let id = if cmd.chunk {
                    b.chunk.send_request(&cmd.peer, cmd.req)
                } else {
                    b.control.send_request(&cmd.peer, cmd.req)
                };
                pending.insert((cmd.chunk, id), cmd.done);
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::Behaviour(RogueBehaviourEvent::Control(e)) => {
                    on_rr(&mut swarm, false, e, &mut pending, &mini)
                }
                SwarmEvent::Behaviour(RogueBehaviourEvent::Chunk(e)) => {
                    on_rr(&mut swarm, true, e, &mut pending, &mini)
                }
                SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                    tracing::info!("rogue: connection to {peer_id} closed: {cause:?}");
                }
                _ => {}
            },
        }
    }
}

// --- the board: what each attack got ---------------------------------------------------

struct Acc {
    attack: String,
    sent: String,
    /// A replay of the fleet's running campaign may be answered Accept (documented).
    allow_accept: bool,
    classes: BTreeMap<String, Vec<f64>>,
    fail: Vec<String>,
    notes: Vec<String>,
    /// Unix seconds of the first send and the last answer.
    first: f64,
    last: f64,
}

#[derive(Default)]
struct Board {
    rows: Mutex<Vec<Acc>>,
}

fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.1} s")
    }
}

impl Board {
    fn declare(&self, attack: &str, sent: &str, allow_accept: bool) {
        let mut rows = self.rows.lock().unwrap();
        if rows.iter().all(|r| r.attack != attack) {
            rows.push(Acc {
                attack: attack.into(),
                sent: sent.into(),
                allow_accept,
                classes: BTreeMap::new(),
                fail: Vec::new(),
                notes: Vec::new(),
                first: f64::INFINITY,
                last: 0.0,
            });
        }
    }

    fn with(&self, attack: &str, f: impl FnOnce(&mut Acc)) {
        let mut rows = self.rows.lock().unwrap();
        match rows.iter_mut().find(|r| r.attack == attack) {
            Some(r) => f(r),
            None => tracing::error!("rogue: undeclared attack {attack}"),
        }
    }

    fn record(&self, attack: &str, class: &str, secs: f64) {
        let now = unix_secs();
        self.with(attack, |r| {
            r.classes.entry(class.to_string()).or_default().push(secs);
            r.first = r.first.min(now - secs);
            r.last = r.last.max(now);
        });
    }

    fn note(&self, attack: &str, note: String) {
        self.with(attack, |r| r.notes.push(note));
    }

    fn fail(&self, attack: &str, why: String) {
        self.with(attack, |r| r.fail.push(why));
    }

    fn finish(&self, t0: f64) -> Vec<Row> {
        let rows = self.rows.lock().unwrap();
        rows.iter()
            .map(|r| {
                let mut classes: Vec<(&String, &Vec<f64>)> = r.classes.iter().collect();
                classes.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
                let mut parts: Vec<String> = classes
                    .iter()
                    .map(|(c, v)| {
                        let mut t = (*v).clone();
                        t.sort_by(f64::total_cmp);
                        let max = t.last().copied().unwrap_or_default();
                        if t.len() >= 20 {
                            format!(
                                "{c} ×{} (p50 {}, max {})",
                                t.len(),
                                secs(t[t.len() / 2]),
                                secs(max)
                            )
                        } else {
                            format!("{c} ×{} (max {})", t.len(), secs(max))
                        }
                    })
                    .collect();
                parts.extend(r.notes.iter().cloned());
                let mut why = r.fail.clone();
                if r.classes.contains_key("accept") && !r.allow_accept {
                    why.push(format!("{} rogue offer(s) ACCEPTED", r.classes["accept"].len()));
                }
                if let Some(v) = r.classes.get("chunk:Ok") {
                    why.push(format!("a node served {} chunk(s) to the rogue", v.len()));
                }
                if r.classes.is_empty() && r.notes.is_empty() && why.is_empty() {
                    why.push("not run".into());
                }
                Row {
                    attack: r.attack.clone(),
                    sent: r.sent.clone(),
                    when: (r.last > 0.0).then_some((r.first - t0, r.last - t0)),
                    result: if parts.is_empty() {
                        "-".into()
                    } else {
                        parts.join("; ")
                    },
                    ok: why.is_empty(),
                    why: why.join("; "),
                }
            })
            .collect()
    }
}

fn class(o: &Outcome) -> String {
    match o {
        Outcome::Control(Control::OfferReply {
            verdict: Verdict::Accept,
            ..
        }) => "accept".into(),
        Outcome::Control(Control::OfferReply {
            verdict: Verdict::Refuse { reason, .. },
            ..
        }) => format!("refuse:{}", serde_name(reason)),
        Outcome::Control(Control::Error { .. }) => "error-reply".into(),
        Outcome::Control(c) => format!("reply:{:?}", c.kind()),
        Outcome::Chunk(r) => format!("chunk:{:?}", r.status),
        Outcome::Undecodable => "undecodable-reply".into(),
        Outcome::Failed(c) => c.clone(),
    }
}

// --- attack names ----------------------------------------------------------------------

const T_NOT_ADDRESSEE: &str = "trust-first 1: self-signed, not naming it";
const T_EXPIRED: &str = "trust-first 2: self-signed, expired";
const T_VALID: &str = "trust-first 3: valid self-signed offer";

const O_UNTRUSTED: &str = "offer: untrusted";
const O_FORGED: &str = "offer: forged";
const O_NOSIG: &str = "offer: unsigned (no signature)";
const O_ZEROSIG: &str = "offer: unsigned (zero signature)";
const O_TAMPERED: &str = "offer: tampered";
const O_EXPIRED_REC: &str = "offer: expired (recorded)";
const O_EXPIRED_SELF: &str = "offer: expired (self-signed)";
const O_IMPERSONATE: &str = "offer: NMS-signed, sent by the rogue";
const O_FAKE_PARENT: &str = "offer: NMS-signed, rogue claims a parent";

const R_OWNER: &str = "replay: captured offer to its owner";
const R_OTHERS: &str = "replay: captured offer to other nodes";
const R_REPATH: &str = "replay: real manifest, path rewritten";
const R_CONTROL: &str = "replay: forged control for the real campaign";
const R_AFTER: &str = "replay: captured offer after install";
const R_ROLLBACK: &str = "replay: older sequence (recorded)";

const G_RANDOM: &str = "garbage: random bytes (control)";
const G_UNFRAMED: &str = "garbage: no length prefix (control)";
const G_EMPTY: &str = "garbage: empty frame (control)";
const G_TRUNCATED: &str = "garbage: truncated CBOR";
const G_SHORT: &str = "garbage: frame shorter than its prefix";
const G_DEEP: &str = "garbage: CBOR nested 100 000 deep";
const G_HUGE_ARRAY: &str = "garbage: CBOR claims 2^63 entries";
const G_HUGE_BYTES: &str = "garbage: CBOR claims a 2^62-byte string";
const G_TRAILING: &str = "garbage: offer + trailing bytes";
const G_LONG_PATH: &str = "garbage: offer with a 65-hop path";
const G_BAD_ID: &str = "garbage: offer with bad peer ids";
const G_KINDS: &str = "garbage: unexpected control kinds";
const G_CHUNK_RANDOM: &str = "garbage: random bytes (chunk)";
const G_CHUNK_MAGIC: &str = "garbage: chunk frame, wrong magic/version";
const G_CHUNK_PATH: &str = "garbage: chunk request, bad path";
const G_CHUNK_ZEROS: &str = "garbage: chunk frame of 8 KiB zeros";

const X_CONTROL_OVER: &str = "oversize: control prefix over the offer limit";
const X_CHUNK_OVER: &str = "oversize: chunk prefix over 8 KiB";
const X_STALL: &str = "oversize: max-size offer announced, stalled";
const X_FULL: &str = "oversize: complete max-size offer";
const X_AMPLIFY_PART: &str = "oversize: decode amplification (part)";
const X_AMPLIFY_BODY: &str = "oversize: decode amplification (manifest)";

const S_TRICKLE: &str = "slow: offer a byte every 250 ms";
const S_HEADER: &str = "slow: control header, then nothing";
const S_CHUNK_HEADER: &str = "slow: chunk header, then nothing";

const F_OFFERS: &str = "flood: offers";
const F_CHUNK_UNKNOWN: &str = "flood: chunk requests, unknown campaigns";
const F_CHUNK_KNOWN: &str = "flood: chunk requests, the fleet's campaign";
const L_PROBE: &str = "liveness: Probe every 250 ms";
const M_SERVED: &str = "rogue as NMS: requests for its campaigns";

fn declare_all(b: &Board, s: &Scale, k: usize) {
    let d = |a: &str, sent: String| b.declare(a, &sent, false);
    d(
        T_NOT_ADDRESSEE,
        "to the trust-first node before any NMS: rogue-signed offer whose addressees omit it".into(),
    );
    d(
        T_EXPIRED,
        "to the trust-first node: rogue-signed offer naming it, expired yesterday".into(),
    );
    d(
        T_VALID,
        "to the trust-first node: rogue-signed offer naming it, valid; the rogue serves it".into(),
    );
    d(
        O_UNTRUSTED,
        "manifest signed by the rogue's own key (nms = rogue), every node addressed".into(),
    );
    d(
        O_FORGED,
        "manifest claiming the NMS's id, signed by the rogue's key".into(),
    );
    d(O_NOSIG, "manifest claiming the NMS, empty signature".into());
    d(
        O_ZEROSIG,
        "manifest claiming the NMS, 64 zero bytes as signature".into(),
    );
    d(
        O_TAMPERED,
        "NMS-signed manifest, version edited after signing".into(),
    );
    d(
        O_EXPIRED_REC,
        "recorded NMS-signed manifest that expired yesterday".into(),
    );
    d(
        O_EXPIRED_SELF,
        "rogue-signed manifest that expired yesterday".into(),
    );
    d(
        O_IMPERSONATE,
        "valid NMS-signed (recorded) manifest, path [node], sent by the rogue".into(),
    );
    d(
        O_FAKE_PARENT,
        "valid NMS-signed manifest, path [other node, node], sent by the rogue".into(),
    );
    b.declare(
        R_OWNER,
        "a node's saved offer.cbor, verbatim, back to that node",
        true,
    );
    b.declare(
        R_OTHERS,
        "a node's saved offer.cbor, verbatim, to every other node",
        true,
    );
    b.declare(
        R_REPATH,
        "the real signed manifest with part/path [target], random token",
        true,
    );
    d(
        R_CONTROL,
        "AuthReply ok, Receipt, Progress, InstallReport, Trouble for the real campaign".into(),
    );
    b.declare(
        R_AFTER,
        "the saved real offer again, after the node installed it",
        true,
    );
    d(
        R_ROLLBACK,
        "after install: NMS-signed `frob` with an older sequence, rogue content".into(),
    );
    d(G_RANDOM, "framed 1 KiB of random bytes".into());
    d(G_UNFRAMED, "1 KiB of random bytes, no length prefix".into());
    d(G_EMPTY, "length prefix 0".into());
    d(G_TRUNCATED, "an offer's CBOR cut in half, framed".into());
    d(
        G_SHORT,
        "prefix says 1000 bytes, 10 sent, write side closed".into(),
    );
    d(
        G_DEEP,
        "Offer with an unknown key holding arrays nested 100 000 deep".into(),
    );
    d(
        G_HUGE_ARRAY,
        "Offer.part with an array head of 2^63 entries".into(),
    );
    d(
        G_HUGE_BYTES,
        "manifest body with a byte-string head of 2^62 bytes".into(),
    );
    d(G_TRAILING, "a valid offer followed by one more byte".into());
    d(G_LONG_PATH, "offer whose path has 65 entries".into());
    d(G_BAD_ID, "offer whose part holds non-peer-id bytes".into());
    d(
        G_KINDS,
        "AuthReply, Receipt, OfferReply, Ack as requests, unknown campaign".into(),
    );
    d(
        G_CHUNK_RANDOM,
        "framed 1 KiB of random bytes on /baton/chunk/1".into(),
    );
    d(
        G_CHUNK_MAGIC,
        "chunk request with magic `XXXX`, and with version 9".into(),
    );
    d(
        G_CHUNK_PATH,
        "chunk request: 255 path entries; an id of 0xff bytes; cut short".into(),
    );
    d(G_CHUNK_ZEROS, "8 192 zero bytes, framed (at the limit)".into());
    d(
        X_CONTROL_OVER,
        "control prefix max-size (MAX_CONTROL_MESSAGE) + 1, and 4 GiB, then 64 KiB".into(),
    );
    d(X_CHUNK_OVER, "chunk prefix 8 193, and 4 GiB, then 8 KiB".into());
    d(
        X_STALL,
        format!(
            "{k} streams per node: prefix max-size (MAX_CONTROL_MESSAGE), an offer's first bytes, max-size (MAX_CONTROL_MESSAGE) − 64 sent, then 1 byte / 2 s; resent when dropped"
        ),
    );
    d(
        X_FULL,
        "one max-size (MAX_CONTROL_MESSAGE) control frame: an offer whose manifest body is junk".into(),
    );
    d(
        X_AMPLIFY_PART,
        format!(
            "{:.1} MiB offer whose part lists {} empty peer ids",
            (s.amplify_ids * 3) as f64 / MIB,
            s.amplify_ids
        ),
    );
    d(
        X_AMPLIFY_BODY,
        format!(
            "{:.1} MiB offer, unsigned manifest with {} empty peer ids as addressees",
            (s.amplify_ids * 3) as f64 / MIB,
            s.amplify_ids
        ),
    );
    d(
        S_TRICKLE,
        format!(
            "{} streams per node: an offer trickled 1 byte / 250 ms; reopened when dropped",
            s.slow_streams
        ),
    );
    d(
        S_HEADER,
        format!(
            "{} streams per node: prefix 64 KiB (largest non-offer), then 1 byte / 2 s; reopened when dropped",
            s.slow_streams
        ),
    );
    d(
        S_CHUNK_HEADER,
        format!(
            "{} streams per node: chunk prefix 8 KiB, then 1 byte / 2 s; reopened when dropped",
            s.slow_streams
        ),
    );
    d(
        F_OFFERS,
        format!(
            "{} offers per node (untrusted / forged, fresh campaign ids), {} in flight",
            s.offer_flood, s.concurrency
        ),
    );
    d(
        F_CHUNK_UNKNOWN,
        format!(
            "{} chunk requests per node for random campaigns, {} in flight",
            s.chunk_flood, s.concurrency
        ),
    );
    d(
        F_CHUNK_KNOWN,
        format!(
            "{} chunk requests per node for the real campaign, rogue's paths",
            s.chunk_flood
        ),
    );
    d(
        L_PROBE,
        "Probe every 250 ms from a separate, well-behaved identity (5 s timeout; informational)".into(),
    );
    d(
        M_SERVED,
        "(inbound) chunk, auth, progress, install requests nodes sent the rogue".into(),
    );
    for (rows, n) in [
        (&[S_TRICKLE, S_HEADER, S_CHUNK_HEADER][..], s.slow_streams),
        (&[X_STALL][..], s.oversize_streams),
        (&[F_OFFERS][..], s.offer_flood),
        (&[F_CHUNK_UNKNOWN, F_CHUNK_KNOWN][..], s.chunk_flood),
    ] {
        if n == 0 {
            for r in rows {
                b.note(r, "skipped (scale 0)".into());
            }
        }
    }
}

// --- the rogue's context ---------------------------------------------------------------

/// The rogue's identities. Each has its own swarm and connections, so that the per-connection
/// caps of a node that one family of attacks runs into do not hide how the node answers
/// another; an attacker can make as many keys as it likes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// The key in the rogue's data directory: phase 1, scripted offers, replays, garbage, and
    /// the NMS of the rogue's campaigns.
    Main,
    /// A well-behaved peer that only probes: is the node still answering others?
    Observer,
    Oversize,
    Trickle,
    Header,
    ChunkHeader,
    OfferFlood,
    ChunkFlood,
    ChunkFloodKnown,
}

const WHO: [Who; 9] = [
    Who::Main,
    Who::Observer,
    Who::Oversize,
    Who::Trickle,
    Who::Header,
    Who::ChunkHeader,
    Who::OfferFlood,
    Who::ChunkFlood,
    Who::ChunkFloodKnown,
];

struct Target {
    label: String,
    id: NodeId,
    data_dir: PathBuf,
    trust_first: bool,
}

struct Ctx {
    /// One driver per identity, indexed by `Who as usize`.
    tx: Vec<mpsc::UnboundedSender<Cmd>>,
    /// The peer id of each identity, indexed by `Who as usize`.
    ids: Vec<NodeId>,
    rogue: Keypair,
    rogue_id: NodeId,
    /// Only for "recorded" manifests (see the module docs).
    nms: Keypair,
    nms_id: NodeId,
    targets: Vec<Target>,
    fleet: Vec<NodeId>,
    mini: Arc<Mutex<MiniNms>>,
    board: Board,
    scale: Scale,
    content: Arc<Vec<u8>>,
    /// Nodes whose stalled and slow streams have started; the last one creates the file.
    gated: std::sync::atomic::AtomicUsize,
    pressure_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signer {
    /// nms = the rogue, signed by the rogue: untrusted.
    Rogue,
    /// nms = the NMS, signed by the rogue.
    Forged,
    /// nms = the NMS, no signature bytes.
    NoSig,
    /// nms = the NMS, 64 zero bytes.
    ZeroSig,
    /// nms = the NMS, signed by it (a recording).
    Recorded,
    /// Recorded, then edited.
    Tampered,
}

struct Mint<'a> {
    name: &'a str,
    sequence: u64,
    addressees: Vec<NodeId>,
    expired: bool,
    signer: Signer,
}

fn unix_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_campaign() -> CampaignId {
    let mut c = [0u8; 16];
    fastrand::fill(&mut c);
    c
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    fastrand::fill(&mut v);
    v
}

fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("CBOR into a Vec");
    out
}

fn sign(kp: &Keypair, body: &[u8]) -> Vec<u8> {
    let mut m = SIGNATURE_DOMAIN.to_vec();
    m.extend_from_slice(body);
    kp.sign(&m).expect("ed25519 signs")
}

fn offer_frame(offer: Offer) -> Arc<Vec<u8>> {
    Arc::new(framed(&encode_control(&Control::Offer(Box::new(offer)))))
}

/// A CBOR text string head + bytes.
fn cbor_text(s: &str) -> Vec<u8> {
    let mut v = cbor_head(3, s.len() as u64);
    v.extend_from_slice(s.as_bytes());
    v
}

/// A CBOR head of major type `major` and argument `n`, shortest form.
fn cbor_head(major: u8, n: u64) -> Vec<u8> {
    let m = major << 5;
    match n {
        0..=23 => vec![m | n as u8],
        24..=0xff => vec![m | 24, n as u8],
        0x100..=0xffff => {
            let mut v = vec![m | 25];
            v.extend_from_slice(&(n as u16).to_be_bytes());
            v
        }
        0x1_0000..=0xffff_ffff => {
            let mut v = vec![m | 26];
            v.extend_from_slice(&(n as u32).to_be_bytes());
            v
        }
        _ => {
            let mut v = vec![m | 27];
            v.extend_from_slice(&n.to_be_bytes());
            v
        }
    }
}

impl Ctx {
    fn who_id(&self, w: Who) -> NodeId {
        self.ids[w as usize]
    }

    /// A manifest for rogue content, signed as `signer` says; registered with the mini NMS
    /// so that a node that accepts it can fetch it and authenticate.
    fn mint(&self, m: Mint<'_>) -> (CampaignId, SignedManifest) {
        let campaign = random_campaign();
        let now = unix_now();
        let (created_at, expires_at) = if m.expired {
            (now - 2 * 86_400, now - 86_400)
        } else {
            (now - 60, now + 86_400)
        };
        let mut h = PackageHasher::new(ROGUE_CHUNK);
        h.update(&self.content);
        let (size, hashes, root) = h.finish();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            campaign,
            nms: if m.signer == Signer::Rogue {
                self.rogue_id
            } else {
                self.nms_id
            },
            name: m.name.into(),
            version: "6.6.6".into(),
            file: format!("{}-6.6.6.bin", m.name),
            sequence: m.sequence,
            size,
            chunk_size: ROGUE_CHUNK,
            chunk_hashes: HashList(hashes),
            root,
            created_at,
            expires_at,
            relay: RelayPolicy::default(),
            plan: PlanParams::default(),
            offline_install: true,
            self_update: false,
            addressees: m.addressees,
        };
        let mut body = cbor(&manifest);
        let signature = match m.signer {
            Signer::Rogue | Signer::Forged => sign(&self.rogue, &body),
            Signer::NoSig => Vec::new(),
            Signer::ZeroSig => vec![0; 64],
            Signer::Recorded => sign(&self.nms, &body),
            Signer::Tampered => {
                let s = sign(&self.nms, &body);
                if let Some(at) = body.windows(5).position(|w| w == b"6.6.6") {
                    body[at..at + 5].copy_from_slice(b"9.9.9");
                }
                s
            }
        };
        let mut root_token = [0u8; 32];
        fastrand::fill(&mut root_token);
        self.mini.lock().unwrap().campaigns.insert(
            campaign,
            RogueCampaign {
                content: self.content.clone(),
                root: HopToken(root_token),
            },
        );
        (campaign, SignedManifest { body, signature })
    }

    /// An offer of a minted campaign to `to` along `path` (which ends with `to`).
    fn offer(&self, campaign: &CampaignId, manifest: SignedManifest, to: NodeId, path: Vec<NodeId>) -> Offer {
        let token = self
            .mini
            .lock()
            .unwrap()
            .campaigns
            .get(campaign)
            .map(|c| c.root.along(&path))
            .unwrap_or(HopToken([7; 32]));
        Offer {
            manifest,
            part: vec![to],
            path,
            token,
        }
    }

    async fn send(
        &self,
        who: Who,
        to: &Target,
        chunk: bool,
        req: Req,
        limit: Option<Duration>,
    ) -> (Outcome, f64) {
        let (tx, rx) = oneshot::channel();
        let t0 = Instant::now();
        let cmd = Cmd {
            peer: to.id.0,
            chunk,
            req,
            done: tx,
        };
        if self.tx[who as usize].send(cmd).is_err() {
            return (Outcome::Failed("rogue-down".into()), 0.0);
        }
        let o = match limit {
            Some(l) => match tokio::time::timeout(l, rx).await {
                Ok(Ok(o)) => o,
                Ok(Err(_)) => Outcome::Failed("rogue-down".into()),
                Err(_) => Outcome::Failed("timeout".into()),
            },
            None => rx.await.unwrap_or(Outcome::Failed("rogue-down".into())),
        };
        (o, t0.elapsed().as_secs_f64())
    }

    /// Sends `bytes` to `to` and records the answer under `attack`.
    #[allow(clippy::too_many_arguments)]
    async fn hit(
        &self,
        who: Who,
        attack: &str,
        to: &Target,
        chunk: bool,
        bytes: Arc<Vec<u8>>,
        pace: Pace,
        limit: Option<Duration>,
    ) -> String {
        let (o, t) = self.send(who, to, chunk, Req::Raw { bytes, pace }, limit).await;
        let c = class(&o);
        self.board.record(attack, &c, t);
        c
    }

    /// Sends an offer and records the answer; an Accept from a node that already ran the
    /// offered campaign before it was sent is recorded as `accept(running)`.
    async fn offer_hit(&self, attack: &str, to: &Target, offer: Offer) -> String {
        let campaign = offer.manifest.open_unchecked().map(|m| m.campaign).ok();
        let running = campaign.is_some_and(|c| to.data_dir.join("partial").join(hex::encode(c)).exists());
        let (o, t) = self
            .send(
                Who::Main,
                to,
                false,
                Req::Raw {
                    bytes: offer_frame(offer),
                    pace: Pace::All,
                },
                Some(Duration::from_secs(20)),
            )
            .await;
        let mut c = class(&o);
        if c == "accept" && running {
            c = "accept(already running)".into();
        }
        self.board.record(attack, &c, t);
        c
    }

    fn installed(&self, t: &Target) -> bool {
        t.data_dir
            .join("packages")
            .join(PACKAGE)
            .join("current")
            .join(".baton.json")
            .exists()
    }

    /// The fleet's offer as saved on a node's disk, if any node has it yet.
    fn capture(&self) -> Option<(Offer, Manifest)> {
        for t in &self.targets {
            for name in dir_names(&t.data_dir.join("partial")) {
                let Ok(b) = fs::read(t.data_dir.join("partial").join(&name).join("offer.cbor")) else {
                    continue;
                };
                let Ok(Control::Offer(o)) = decode_control(&b) else {
                    continue;
                };
                if let Ok(m) = o.manifest.open_unchecked()
                    && m.nms == self.nms_id
                    && m.name == PACKAGE
                {
                    return Some((*o, m));
                }
            }
        }
        None
    }
}

async fn rogue(cfg: RogueConfig) -> Result<()> {
    let rogue_kp = baton_shell::identity::load_or_create(&cfg.key_dir)?;
    let nms_kp = baton_shell::identity::load_or_create(&cfg.nms_key_dir)?;
    let nms_id: NodeId = cfg.nms_id.parse().map_err(anyhow::Error::msg)?;
    if NodeId::of(&nms_kp) != nms_id {
        bail!("the NMS key in {} is not {nms_id}", cfg.nms_key_dir.display());
    }
    let rogue_id = NodeId::of(&rogue_kp);
    eprintln!("rogue {rogue_id} starting");
    let timeout = Duration::from_secs_f64(cfg.scale.duration_secs + 120.0);
    let mut targets = Vec::new();
    let mut mini = MiniNms::default();
    let mut addrs = Vec::new();
    for t in &cfg.targets {
        let id: NodeId = t.id.parse().map_err(anyhow::Error::msg)?;
        addrs.push((id, t.addr.parse::<Multiaddr>()?));
        mini.labels.insert(id.0, t.label.clone());
        targets.push(Target {
            label: t.label.clone(),
            id,
            data_dir: t.data_dir.clone(),
            trust_first: t.trust_first,
        });
    }
    let mini = Arc::new(Mutex::new(mini));
    let mut txs = Vec::new();
    let mut ids = Vec::new();
    let mut drivers = Vec::new();
    for who in WHO {
        let kp = if who == Who::Main {
            rogue_kp.clone()
        } else {
            Keypair::generate_ed25519()
        };
        ids.push(NodeId::of(&kp));
        let mut swarm = build_swarm(kp, timeout)?;
        for (id, addr) in &addrs {
            swarm.add_peer_address(id.0, addr.clone());
            if let Err(e) = swarm.dial(addr.clone()) {
                eprintln!("rogue: {who:?} cannot dial {addr}: {e}");
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        drivers.push(tokio::spawn(drive(swarm, rx, mini.clone())));
        txs.push(tx);
    }
    let ctx = Arc::new(Ctx {
        tx: txs,
        ids,
        rogue: rogue_kp,
        rogue_id,
        nms: nms_kp,
        nms_id,
        fleet: targets.iter().map(|t| t.id).collect(),
        targets,
        mini,
        board: Board::default(),
        scale: cfg.scale.clone(),
        content: Arc::new(random_bytes(3 * ROGUE_CHUNK as usize + 100)),
        gated: Default::default(),
        pressure_file: cfg.pressure_file.clone(),
    });
    declare_all(&ctx.board, &cfg.scale, cfg.scale.oversize_streams);

    // phase 1: the trust-first node hears from the rogue before any NMS
    let t1 = Instant::now();
    phase_one(&ctx).await;
    // let a node that wrongly accepted fetch from the rogue before the NMS appears
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("rogue: phase 1 done in {:.1} s", t1.elapsed().as_secs_f64());
    let blobs = Arc::new(Blobs::new(&ctx));
    fs::write(&cfg.phase_file, b"")?;

    // phase 2: everything at once, alongside the fleet's campaign
    let phase2 = unix_secs();
    let end = Instant::now() + Duration::from_secs_f64(cfg.scale.duration_secs);
    let mut tasks = Vec::new();
    for t in 0..ctx.targets.len() {
        tasks.push(tokio::spawn(scripted(ctx.clone(), t)));
        tasks.push(tokio::spawn(garbage(ctx.clone(), t, blobs.clone())));
        tasks.push(tokio::spawn(pressure(ctx.clone(), t, blobs.clone(), end)));
        tasks.push(tokio::spawn(flood_offers(ctx.clone(), t, end)));
        tasks.push(tokio::spawn(flood_chunks(ctx.clone(), t, end, false)));
        tasks.push(tokio::spawn(flood_chunks(ctx.clone(), t, end, true)));
        tasks.push(tokio::spawn(probes(ctx.clone(), t, end)));
    }
    tasks.push(tokio::spawn(replays(ctx.clone(), end)));
    let all = future::join_all(tasks);
    if tokio::time::timeout_at((end + Duration::from_secs(25)).into(), all)
        .await
        .is_err()
    {
        eprintln!("rogue: some attacks were still running 25 s after the end; reporting what there is");
    }
    // requests nodes sent the rogue about its own campaigns
    let seen = ctx.mini.lock().unwrap().seen.clone();
    if seen.is_empty() {
        ctx.board
            .note(M_SERVED, "none: no node asked the rogue for anything".into());
    } else {
        for (k, v) in &seen {
            ctx.board.note(M_SERVED, format!("{k} ×{v}"));
        }
        ctx.board.fail(
            M_SERVED,
            "nodes fetched / authenticated / reported rogue campaigns".into(),
        );
    }
    let rows = ctx.board.finish(phase2);
    fs::write(
        &cfg.report_file,
        serde_json::to_vec_pretty(&RogueReport { phase2, rows })?,
    )?;
    eprintln!("rogue: done");
    for d in drivers {
        d.abort();
    }
    Ok(())
}

async fn phase_one(ctx: &Ctx) {
    let tofu: Vec<&Target> = ctx.targets.iter().filter(|t| t.trust_first).collect();
    for t in tofu {
        let others: Vec<NodeId> = ctx.fleet.iter().copied().filter(|n| *n != t.id).collect();
        let (c, s) = ctx.mint(Mint {
            name: "rogue-tofu",
            sequence: 1,
            addressees: others,
            expired: false,
            signer: Signer::Rogue,
        });
        ctx.offer_hit(T_NOT_ADDRESSEE, t, ctx.offer(&c, s, t.id, vec![t.id]))
            .await;
        let (c, s) = ctx.mint(Mint {
            name: "rogue-tofu",
            sequence: 1,
            addressees: vec![t.id],
            expired: true,
            signer: Signer::Rogue,
        });
        ctx.offer_hit(T_EXPIRED, t, ctx.offer(&c, s, t.id, vec![t.id]))
            .await;
        let (c, s) = ctx.mint(Mint {
            name: "rogue-tofu",
            sequence: 1,
            addressees: vec![t.id],
            expired: false,
            signer: Signer::Rogue,
        });
        ctx.offer_hit(T_VALID, t, ctx.offer(&c, s, t.id, vec![t.id]))
            .await;
    }
}

async fn scripted(ctx: Arc<Ctx>, t: usize) {
    let to = &ctx.targets[t];
    let fleet = ctx.fleet.clone();
    let cases = [
        (O_UNTRUSTED, Signer::Rogue, "rogue-untrusted", false),
        (O_FORGED, Signer::Forged, "rogue-forged", false),
        (O_NOSIG, Signer::NoSig, "rogue-unsigned", false),
        (O_ZEROSIG, Signer::ZeroSig, "rogue-unsigned", false),
        (O_TAMPERED, Signer::Tampered, "rogue-tampered", false),
        (O_EXPIRED_REC, Signer::Recorded, "rogue-expired", true),
        (O_EXPIRED_SELF, Signer::Rogue, "rogue-expired", true),
        (O_IMPERSONATE, Signer::Recorded, "rogue-recorded", false),
    ];
    for (attack, signer, name, expired) in cases {
        let (c, s) = ctx.mint(Mint {
            name,
            sequence: 1,
            addressees: fleet.clone(),
            expired,
            signer,
        });
        ctx.offer_hit(attack, to, ctx.offer(&c, s, to.id, vec![to.id]))
            .await;
    }
    if let Some(other) = fleet.iter().find(|n| **n != to.id) {
        let (c, s) = ctx.mint(Mint {
            name: "rogue-recorded",
            sequence: 1,
            addressees: fleet.clone(),
            expired: false,
            signer: Signer::Recorded,
        });
        ctx.offer_hit(O_FAKE_PARENT, to, ctx.offer(&c, s, to.id, vec![*other, to.id]))
            .await;
    }
}

/// The frames that are the same for every node, built once.
struct Blobs {
    control: Vec<(&'static str, Arc<Vec<u8>>)>,
    chunk: Vec<(&'static str, Arc<Vec<u8>>)>,
    stall: Arc<Vec<u8>>,
    full: Arc<Vec<u8>>,
    amplify_part: Arc<Vec<u8>>,
    amplify_body: Arc<Vec<u8>>,
    trickle: Arc<Vec<u8>>,
}

impl Blobs {
    fn new(ctx: &Ctx) -> Blobs {
        let a = |v: Vec<u8>| Arc::new(v);
        let me = ctx.fleet[0];
        let (c, s) = ctx.mint(Mint {
            name: "rogue-garbage",
            sequence: 1,
            addressees: ctx.fleet.clone(),
            expired: false,
            signer: Signer::Rogue,
        });
        let offer = ctx.offer(&c, s, me, vec![me]);
        let offer_cbor = encode_control(&Control::Offer(Box::new(offer.clone())));

        let mut control = vec![
            (G_RANDOM, a(framed(&random_bytes(1024)))),
            (G_UNFRAMED, a(random_bytes(1024))),
            (G_EMPTY, a(framed(&[]))),
            (G_TRUNCATED, a(framed(&offer_cbor[..offer_cbor.len() / 2]))),
        ];
        let mut short = 1000u32.to_be_bytes().to_vec();
        short.extend_from_slice(&[0xa1; 10]);
        control.push((G_SHORT, a(short)));
        // {"Offer": {"zz": [[[[...]]]]}}: skipped as an unknown key, so the decoder recurses
        let mut deep = vec![0xa1];
        deep.extend(cbor_text("Offer"));
        deep.push(0xa1);
        deep.extend(cbor_text("zz"));
        deep.extend(std::iter::repeat_n(0x81u8, 100_000));
        deep.push(0x00);
        control.push((G_DEEP, a(framed(&deep))));
        // {"Offer": {"manifest": {...}, "part": <array head 2^63>, 00 00 ...}}
        let mut huge = vec![0xa1];
        huge.extend(cbor_text("Offer"));
        huge.push(0xa4);
        huge.extend(cbor_text("manifest"));
        huge.push(0xa2);
        huge.extend(cbor_text("body"));
        huge.push(0x40);
        huge.extend(cbor_text("signature"));
        huge.push(0x40);
        huge.extend(cbor_text("part"));
        huge.extend(cbor_head(4, 1 << 63));
        for _ in 0..64 {
            huge.extend_from_slice(&[0x42, 0x00, 0x00]);
        }
        control.push((G_HUGE_ARRAY, a(framed(&huge))));
        // {"Offer": {"manifest": {"body": <bytes head 2^62> ...
        let mut hb = vec![0xa1];
        hb.extend(cbor_text("Offer"));
        hb.push(0xa4);
        hb.extend(cbor_text("manifest"));
        hb.push(0xa2);
        hb.extend(cbor_text("body"));
        hb.extend(cbor_head(2, 1 << 62));
        hb.extend(random_bytes(4096));
        control.push((G_HUGE_BYTES, a(framed(&hb))));
        let mut trailing = offer_cbor.clone();
        trailing.push(0x00);
        control.push((G_TRAILING, a(framed(&trailing))));
        let mut long = offer.clone();
        long.path = (0..=MAX_PATH).map(|_| me).collect();
        control.push((
            G_LONG_PATH,
            a(framed(&encode_control(&Control::Offer(Box::new(long))))),
        ));
        // part: [h'ffff...'] is no peer id
        let mut bad = vec![0xa1];
        bad.extend(cbor_text("Offer"));
        bad.push(0xa4);
        bad.extend(cbor_text("manifest"));
        bad.extend(cbor(&offer.manifest));
        bad.extend(cbor_text("part"));
        bad.push(0x81);
        bad.extend(cbor_head(2, 40));
        bad.extend(std::iter::repeat_n(0xffu8, 40));
        bad.extend(cbor_text("path"));
        bad.push(0x81);
        bad.extend(cbor(&me));
        bad.extend(cbor_text("token"));
        bad.extend(cbor(&offer.token));
        control.push((G_BAD_ID, a(framed(&bad))));
        let unknown = random_campaign();
        for msg in [
            Control::AuthReply {
                campaign: unknown,
                ok: true,
                reason: String::new(),
            },
            Control::Receipt {
                campaign: unknown,
                root: [1; 32],
            },
            Control::OfferReply {
                campaign: unknown,
                verdict: Verdict::Accept,
            },
            Control::Ack,
        ] {
            control.push((G_KINDS, a(framed(&encode_control(&msg)))));
        }

        let mut chunk = Vec::new();
        chunk.push((G_CHUNK_RANDOM, a(framed(&random_bytes(1024)))));
        let good = ChunkRequest {
            campaign: unknown,
            index: 0,
            path: vec![ctx.rogue_id],
        }
        .encode();
        let mut magic = good.clone();
        magic[..4].copy_from_slice(b"XXXX");
        chunk.push((G_CHUNK_MAGIC, a(framed(&magic))));
        let mut version = good.clone();
        version[4] = 9;
        chunk.push((G_CHUNK_MAGIC, a(framed(&version))));
        // 255 path entries (over MAX_PATH), then an id of 0xff bytes, then a cut-short frame
        let mut many = good[..25].to_vec();
        many.push(255);
        for _ in 0..255 {
            let b = ctx.rogue_id.to_bytes();
            many.push(b.len() as u8);
            many.extend_from_slice(&b);
        }
        chunk.push((G_CHUNK_PATH, a(framed(&many))));
        let mut badid = good[..25].to_vec();
        badid.push(1);
        badid.push(40);
        badid.extend(std::iter::repeat_n(0xffu8, 40));
        chunk.push((G_CHUNK_PATH, a(framed(&badid))));
        chunk.push((G_CHUNK_PATH, a(framed(&good[..good.len() - 3]))));
        chunk.push((G_CHUNK_ZEROS, a(framed(&[0u8; CHUNK_REQUEST_LIMIT]))));

        // max-size (MAX_CONTROL_MESSAGE) announced: a prefix of exactly the limit, the first bytes of a real offer
        // (only an offer may be that large), then junk
        let mut stall = (MAX_CONTROL_MESSAGE as u32).to_be_bytes().to_vec();
        stall.extend_from_slice(&offer_cbor[..64.min(offer_cbor.len())]);
        stall.resize(4 + MAX_CONTROL_MESSAGE, 0xa5);
        // a complete, well-formed max-size (MAX_CONTROL_MESSAGE) offer whose manifest body is junk
        let mut big = offer.clone();
        big.manifest = SignedManifest {
            body: Vec::new(),
            signature: vec![0; 64],
        };
        let overhead = encode_control(&Control::Offer(Box::new(big.clone()))).len();
        // the body's head grows from 1 to 5 bytes
        big.manifest.body = vec![0x5a; MAX_CONTROL_MESSAGE - overhead - 4];
        let full = encode_control(&Control::Offer(Box::new(big)));
        debug_assert!(full.len() <= MAX_CONTROL_MESSAGE, "{}", full.len());

        // amplification 1: Offer.part of minimal peer ids (h'0000': 3 bytes each)
        let mut amp = vec![0xa1];
        amp.extend(cbor_text("Offer"));
        amp.push(0xa4);
        amp.extend(cbor_text("manifest"));
        amp.extend(cbor(&offer.manifest));
        amp.extend(cbor_text("part"));
        amp.extend(cbor_head(4, ctx.scale.amplify_ids as u64));
        for _ in 0..ctx.scale.amplify_ids {
            amp.extend_from_slice(&[0x42, 0x00, 0x00]);
        }
        amp.extend(cbor_text("path"));
        amp.push(0x81);
        amp.extend(cbor(&me));
        amp.extend(cbor_text("token"));
        amp.extend(cbor(&offer.token));
        // amplification 2: a manifest body whose addressees are minimal peer ids
        let mut h = PackageHasher::new(ROGUE_CHUNK);
        h.update(&ctx.content);
        let (size, hashes, root) = h.finish();
        let m = Manifest {
            format: MANIFEST_FORMAT,
            campaign: random_campaign(),
            nms: ctx.nms_id,
            name: "rogue-amplify".into(),
            version: "1".into(),
            file: "rogue-amplify-1.bin".into(),
            sequence: 1,
            size,
            chunk_size: ROGUE_CHUNK,
            chunk_hashes: HashList(hashes),
            root,
            created_at: unix_now() - 60,
            expires_at: unix_now() + 86_400,
            relay: RelayPolicy::default(),
            plan: PlanParams::default(),
            offline_install: true,
            self_update: false,
            addressees: Vec::new(),
        };
        let mut body = cbor(&m);
        // the last field is `addressees: []` (0x80): widen it
        body.pop();
        body.extend(cbor_head(4, ctx.scale.amplify_ids as u64));
        for _ in 0..ctx.scale.amplify_ids {
            body.extend_from_slice(&[0x42, 0x00, 0x00]);
        }
        let amp_body = Offer {
            manifest: SignedManifest {
                body,
                signature: vec![0; 64],
            },
            part: vec![me],
            path: vec![me],
            token: HopToken([0; 32]),
        };
        let trickle = offer_frame(offer);
        Blobs {
            control,
            chunk,
            stall: a(stall),
            full: a(framed(&full)),
            amplify_part: a(framed(&amp)),
            amplify_body: offer_frame(amp_body),
            trickle,
        }
    }
}

async fn garbage(ctx: Arc<Ctx>, t: usize, blobs: Arc<Blobs>) {
    let to = &ctx.targets[t];
    let limit = Some(Duration::from_secs(20));
    for (attack, bytes) in &blobs.control {
        ctx.hit(Who::Main, attack, to, false, bytes.clone(), Pace::All, limit)
            .await;
    }
    for (attack, bytes) in &blobs.chunk {
        ctx.hit(Who::Main, attack, to, true, bytes.clone(), Pace::All, limit)
            .await;
    }
}

fn prefix_then(len: u32, junk: usize) -> Arc<Vec<u8>> {
    let mut v = len.to_be_bytes().to_vec();
    v.extend(std::iter::repeat_n(0x33u8, junk));
    Arc::new(v)
}

/// Sends the same stalled or trickled frame again whenever the node drops it, until `end`:
/// the pressure a patient attacker keeps up. Every attempt is recorded.
#[allow(clippy::too_many_arguments)]
async fn persist(
    ctx: &Ctx,
    who: Who,
    attack: &str,
    to: &Target,
    chunk: bool,
    bytes: Arc<Vec<u8>>,
    pace: impl Fn() -> Pace,
    end: Instant,
) {
    while Instant::now() < end {
        let t0 = Instant::now();
        let c = ctx.hit(who, attack, to, chunk, bytes.clone(), pace(), None).await;
        if c == "held-open" {
            break;
        }
        // do not spin on a node that refuses at once
        if t0.elapsed() < Duration::from_millis(250) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The single oversize frames first, on a budget nobody holds yet; then, once they are
/// done or 40 % of the time has passed, the stalled and slow streams that hold it. The
/// fleet's package is dropped once these are up on every node, so that its campaign runs
/// under them.
async fn pressure(ctx: Arc<Ctx>, t: usize, blobs: Arc<Blobs>, end: Instant) {
    let left = |f: f64| Instant::now() + end.saturating_duration_since(Instant::now()).mul_f64(f);
    let gate = left(0.5);
    let mut singles = tokio::spawn(oversize_singles(ctx.clone(), t, blobs.clone()));
    let done = tokio::time::timeout_at(gate.into(), &mut singles).await.is_ok();
    // the big stalled frames first; the slow streams once one of them holds on (or after a
    // while), so that the stalled frame gets the node's control-frame budget before the
    // small slow frames take the rest
    let established = Arc::new(AtomicBool::new(false));
    let fallback = left(0.3);
    let flag = established.clone();
    futures::join!(
        oversize_stalls(ctx.clone(), t, blobs.clone(), end, established),
        async {
            while !flag.load(Ordering::Acquire) && Instant::now() < fallback {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if ctx.gated.fetch_add(1, Ordering::AcqRel) + 1 == ctx.targets.len() {
                // let the slow streams be read, then tell the orchestrator
                let file = ctx.pressure_file.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    if let Err(e) = fs::write(&file, b"") {
                        eprintln!("rogue: cannot write {}: {e}", file.display());
                    }
                });
            }
            slow(ctx.clone(), t, blobs.clone(), end).await
        }
    );
    if !done {
        let _ = singles.await;
    }
}

async fn oversize_singles(ctx: Arc<Ctx>, t: usize, blobs: Arc<Blobs>) {
    let to = &ctx.targets[t];
    let limit = Some(Duration::from_secs(30));
    let c = &ctx;
    let w = Who::Oversize;
    for len in [MAX_CONTROL_MESSAGE as u32 + 1, u32::MAX] {
        c.hit(
            w,
            X_CONTROL_OVER,
            to,
            false,
            prefix_then(len, 64 * 1024),
            Pace::All,
            limit,
        )
        .await;
    }
    for len in [CHUNK_REQUEST_LIMIT as u32 + 1, u32::MAX] {
        c.hit(
            w,
            X_CHUNK_OVER,
            to,
            true,
            prefix_then(len, 8 * 1024),
            Pace::All,
            limit,
        )
        .await;
    }
    c.hit(w, X_FULL, to, false, blobs.full.clone(), Pace::All, limit)
        .await;
    let slow_limit = Some(Duration::from_secs(20));
    c.hit(
        w,
        X_AMPLIFY_PART,
        to,
        false,
        blobs.amplify_part.clone(),
        Pace::All,
        slow_limit,
    )
    .await;
    c.hit(
        w,
        X_AMPLIFY_BODY,
        to,
        false,
        blobs.amplify_body.clone(),
        Pace::All,
        slow_limit,
    )
    .await;
}

async fn oversize_stalls(
    ctx: Arc<Ctx>,
    t: usize,
    blobs: Arc<Blobs>,
    end: Instant,
    established: Arc<AtomicBool>,
) {
    let to = &ctx.targets[t];
    let c = &ctx;
    let stall = blobs.stall.len() - 64;
    let stalls = (0..ctx.scale.oversize_streams).map(|_| {
        persist(
            c,
            Who::Oversize,
            X_STALL,
            to,
            false,
            blobs.stall.clone(),
            {
                let held = established.clone();
                move || Pace::Stall {
                    after: stall,
                    until: end,
                    held: Some(held.clone()),
                }
            },
            end,
        )
    });
    future::join_all(stalls).await;
}

async fn slow(ctx: Arc<Ctx>, t: usize, blobs: Arc<Blobs>, end: Instant) {
    let to = &ctx.targets[t];
    let c = &ctx;
    let n = ctx.scale.slow_streams;
    let header = prefix_then(MAX_SMALL_CONTROL as u32, MAX_SMALL_CONTROL);
    let chunk_header = prefix_then(CHUNK_REQUEST_LIMIT as u32, CHUNK_REQUEST_LIMIT);
    let mut all = Vec::new();
    for i in 0..n {
        let stagger = Duration::from_millis(10 * i as u64);
        let (h, ch, tr) = (header.clone(), chunk_header.clone(), blobs.trickle.clone());
        all.push(async move {
            tokio::time::sleep(stagger).await;
            let trickle = move || Pace::Trickle {
                gap: Duration::from_millis(250),
                until: end,
            };
            let stall = move || Pace::Stall {
                after: 4,
                until: end,
                held: None,
            };
            futures::join!(
                persist(c, Who::Trickle, S_TRICKLE, to, false, tr, trickle, end),
                persist(c, Who::Header, S_HEADER, to, false, h, stall, end),
                persist(c, Who::ChunkHeader, S_CHUNK_HEADER, to, true, ch, stall, end),
            );
        });
    }
    future::join_all(all).await;
}

/// Runs `f(i)` for `i in 0..n`, spread evenly over `span`, at most `conc` at a time.
async fn paced<F, Fut>(n: usize, span: Duration, conc: usize, f: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let t0 = tokio::time::Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(conc, |i| {
            let at = t0 + span.mul_f64(i as f64 / n.max(1) as f64);
            let fut = f(i);
            async move {
                tokio::time::sleep_until(at).await;
                fut.await
            }
        })
        .await;
}

async fn flood_offers(ctx: Arc<Ctx>, t: usize, end: Instant) {
    let to = &ctx.targets[t];
    let span = end.saturating_duration_since(Instant::now()).mul_f64(0.7);
    let c = &ctx;
    paced(
        ctx.scale.offer_flood,
        span,
        ctx.scale.concurrency,
        |i| async move {
            let signer = if i % 2 == 0 { Signer::Rogue } else { Signer::Forged };
            let (campaign, s) = c.mint(Mint {
                name: "rogue-flood",
                sequence: 1,
                addressees: c.fleet.clone(),
                expired: false,
                signer,
            });
            let offer = c.offer(&campaign, s, to.id, vec![to.id]);
            c.hit(
                Who::OfferFlood,
                F_OFFERS,
                to,
                false,
                offer_frame(offer),
                Pace::All,
                Some(Duration::from_secs(30)),
            )
            .await;
        },
    )
    .await;
}

async fn flood_chunks(ctx: Arc<Ctx>, t: usize, end: Instant, known: bool) {
    let to = &ctx.targets[t];
    let (attack, who) = if known {
        (F_CHUNK_KNOWN, Who::ChunkFloodKnown)
    } else {
        (F_CHUNK_UNKNOWN, Who::ChunkFlood)
    };
    let real = if known {
        // wait for the fleet's campaign to show up on some node's disk
        let give_up = end - Duration::from_secs(2).min(end.saturating_duration_since(Instant::now()));
        loop {
            if let Some((_, m)) = ctx.capture() {
                break Some(m);
            }
            if Instant::now() > give_up {
                ctx.board.note(
                    attack,
                    format!("{}: not run, the real campaign was not seen in time", to.label),
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        None
    };
    let span = end.saturating_duration_since(Instant::now()).mul_f64(0.7);
    let c = &ctx;
    let real = &real;
    paced(
        ctx.scale.chunk_flood,
        span,
        ctx.scale.concurrency,
        |i| async move {
            let (campaign, count) = match real {
                Some(m) => (m.campaign, m.size.div_ceil(u64::from(m.chunk_size)) as u32),
                None => (random_campaign(), 16),
            };
            let me = c.who_id(who);
            let path = match i % 3 {
                0 => vec![me],
                1 => vec![to.id],
                _ => vec![to.id, me],
            };
            let req = ChunkRequest {
                campaign,
                index: if i % 7 == 6 {
                    u32::MAX
                } else {
                    (i as u32) % count.max(1)
                },
                path,
            };
            c.hit(
                who,
                attack,
                to,
                true,
                Arc::new(framed(&req.encode())),
                Pace::All,
                Some(Duration::from_secs(30)),
            )
            .await;
        },
    )
    .await;
}

async fn probes(ctx: Arc<Ctx>, t: usize, end: Instant) {
    let to = &ctx.targets[t];
    let mut nonce = 0u64;
    while Instant::now() < end {
        nonce += 1;
        let msg = framed(&encode_control(&Control::Probe {
            nonce,
            campaign: None,
        }));
        ctx.hit(
            Who::Observer,
            L_PROBE,
            to,
            false,
            Arc::new(msg),
            Pace::All,
            Some(Duration::from_secs(5)),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn replays(ctx: Arc<Ctx>, end: Instant) {
    let give_up = end - Duration::from_secs(3).min(end.saturating_duration_since(Instant::now()));
    let (offer, m) = loop {
        if let Some(x) = ctx.capture() {
            break x;
        }
        if Instant::now() > give_up {
            for a in [R_OWNER, R_OTHERS, R_REPATH, R_CONTROL, R_AFTER, R_ROLLBACK] {
                ctx.board.note(
                    a,
                    "not run: no real offer was seen on any node before the end".into(),
                );
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let owner = offer.path.last().copied();
    let c = &ctx;
    for to in &ctx.targets {
        let attack = if Some(to.id) == owner { R_OWNER } else { R_OTHERS };
        c.offer_hit(attack, to, offer.clone()).await;
    }
    for to in &ctx.targets {
        let mut token = [0u8; 32];
        fastrand::fill(&mut token);
        let o = Offer {
            manifest: offer.manifest.clone(),
            part: vec![to.id],
            path: vec![to.id],
            token: HopToken(token),
        };
        c.offer_hit(R_REPATH, to, o).await;
    }
    for to in &ctx.targets {
        for msg in [
            Control::AuthReply {
                campaign: m.campaign,
                ok: true,
                reason: String::new(),
            },
            Control::Receipt {
                campaign: m.campaign,
                root: [9; 32],
            },
            Control::Progress {
                campaign: m.campaign,
                phase: baton_protocol::Phase::Installed,
                verified: m.size,
                source: None,
                parent: None,
                relay: None,
                fetched: Vec::new(),
            },
            Control::InstallReport {
                campaign: m.campaign,
                outcome: InstallOutcome::Installed,
            },
            Control::Trouble {
                campaign: m.campaign,
                node: to.id,
                reason: "rogue".into(),
            },
        ] {
            c.hit(
                Who::Main,
                R_CONTROL,
                to,
                false,
                Arc::new(framed(&encode_control(&msg))),
                Pace::All,
                Some(Duration::from_secs(20)),
            )
            .await;
        }
    }
    // after each node installed: the same offer again, and an older sequence
    let after = ctx.targets.iter().map(|to| {
        let offer = offer.clone();
        let m = &m;
        async move {
            let deadline = end - Duration::from_secs(2).min(end.saturating_duration_since(Instant::now()));
            while !c.installed(to) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !c.installed(to) {
                c.board.note(
                    R_ROLLBACK,
                    format!("{} never installed `{PACKAGE}`; sent anyway", to.label),
                );
            }
            c.offer_hit(R_AFTER, to, offer).await;
            if m.sequence == 0 {
                c.board
                    .note(R_ROLLBACK, "the real sequence is 0: nothing older".into());
                return;
            }
            let (campaign, s) = c.mint(Mint {
                name: PACKAGE,
                sequence: m.sequence - 1,
                addressees: c.fleet.clone(),
                expired: false,
                signer: Signer::Recorded,
            });
            let o = c.offer(&campaign, s, to.id, vec![to.id]);
            c.offer_hit(R_ROLLBACK, to, o).await;
        }
    });
    future::join_all(after).await;
}
