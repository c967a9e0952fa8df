//! Baton as a benchmark method: the real daemons on the bench's hosts. The clock starts
//! when the package is renamed into the NMS's watched folder (after every node has been
//! discovered) and a node counts as done when its `current` version is the package.
//! The bytes each node served come from the NMS's campaign summary (its per-node
//! sources). `baton-gated` gates two nodes' relaying by their owners' policy (`--relay-policy
//! idle` with a test probe that reads a busy CPU): the last two relays of the plan an NMS
//! that knew nothing of the gates would make, so that the NMS's gate-aware planning is what
//! keeps them from relaying.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_protocol::manifest::parse_package_file_name;

use crate::bench::procs::{Done, NodeWatch, ProcId, Procs, check_interrupted};
use crate::bench::{BenchCtx, Method, MethodResult};
use crate::demo::{plain_plan_relays, served_bytes};

/// One Baton configuration.
#[derive(Debug, Clone)]
pub struct Baton {
    pub name: &'static str,
    pub describe: &'static str,
    /// Extra `baton-nms` flags.
    pub nms_args: &'static [&'static str],
    /// How many nodes have their relaying gated by their owners' policy from the start
    /// (chosen by [`plain_plan_relays`]); a gated node serving any byte fails the run.
    pub gated: usize,
}

/// The Baton methods the bench knows.
pub fn methods() -> Vec<Box<dyn Method>> {
    vec![
        Box::new(Baton {
            name: "baton",
            describe: "Baton, default mode: cut-through chain, 128 KiB chunks",
            nms_args: &[],
            gated: 0,
        }),
        Box::new(Baton {
            name: "baton-tree",
            describe: "Baton, cut-through binary tree (fanout 2)",
            nms_args: &["--fanout", "2"],
            gated: 0,
        }),
        Box::new(Baton {
            name: "baton-sf",
            describe: "Baton in the seed's literal flow: store-and-forward binary tree, 1 MiB chunks",
            nms_args: &["--fanout", "2", "--store-and-forward", "--chunk-size", "1048576"],
            gated: 0,
        }),
        Box::new(Baton {
            name: "baton-gated",
            describe: "Baton, default mode, with 2 nodes whose owners gate relaying (policy idle, \
                       the CPU busy) from the start: the last two relays of the plan in the \
                       fleet's order",
            nms_args: &[],
            gated: 2,
        }),
    ]
}

/// Extra daemon flags from the environment, for tuning experiments (e.g.
/// `BATON_NMS_ARGS="--chunk-size 131072" BATON_NODE_ARGS="--window 2"`).
fn extra_args(var: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

impl Method for Baton {
    fn name(&self) -> &'static str {
        self.name
    }
    fn describe(&self) -> &'static str {
        self.describe
    }
    fn missing_tool(&self) -> Option<String> {
        None
    }
    fn run(&self, ctx: &BenchCtx<'_>) -> Result<MethodResult> {
        let exe = std::env::current_exe()?.display().to_string();
        let host0 = ctx.host_dir(0)?;
        let watch = host0.join("watch");
        let staging = host0.join("staging");
        std::fs::create_dir_all(&watch)?;
        std::fs::create_dir_all(&staging)?;
        let nms_dir = host0.join("nms");
        let nms_id = baton_protocol::NodeId::of(&baton_shell::identity::load_or_create(&nms_dir)?);
        let node_ids = (1..=ctx.nodes)
            .map(|i| {
                Ok(baton_protocol::NodeId::of(
                    &baton_shell::identity::load_or_create(&ctx.node_dir(i)?)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let gated = if self.gated > 0 {
            let fanout = self
                .nms_args
                .windows(2)
                .find(|w| w[0] == "--fanout")
                .and_then(|w| w[1].parse().ok())
                .unwrap_or(1);
            let g = plain_plan_relays(&node_ids, fanout, self.gated);
            if g.len() < self.gated {
                bail!(
                    "{} gates {} relays, but the plan of {} nodes has only {}: use more --nodes",
                    self.name,
                    self.gated,
                    ctx.nodes,
                    g.len()
                );
            }
            g
        } else {
            Vec::new()
        };
        let mut procs = Procs::new(ctx.net);
        for i in 1..=ctx.nodes {
            let dir = ctx.node_dir(i)?;
            let mut args = vec![
                "node".to_string(),
                "--data-dir".into(),
                dir.display().to_string(),
                "--trust".into(),
                nms_id.to_string(),
            ];
            if gated.contains(&i) {
                // closed from the start: the node's first advert already says `gated`
                let probe = dir.join("probe");
                std::fs::write(&probe, "busy\n").context("writing the test probe")?;
                args.extend([
                    "--relay-policy".into(),
                    "idle".into(),
                    "--test-probe-file".into(),
                    probe.display().to_string(),
                ]);
            }
            args.extend(extra_args("BATON_NODE_ARGS"));
            procs.spawn(i, &format!("baton-node {i}"), &exe, args)?;
        }
        let nodes = ctx.nodes.to_string();
        let (w, d) = (watch.display().to_string(), nms_dir.display().to_string());
        let mut args = vec![
            "nms",
            "--watch",
            &w,
            "--data-dir",
            &d,
            "--once",
            "--json",
            "--min-nodes",
            &nodes,
            "--settle",
            "0",
            // the package is renamed in whole: no writer to wait for (the default window,
            // meant for files written in steps, would count in every run's time)
            "--settle-file",
            "0.15",
        ];
        args.extend_from_slice(self.nms_args);
        let mut cmd = ctx.net.command(0, &exe);
        cmd.args(&args)
            .args(extra_args("BATON_NMS_ARGS"))
            .env("RUST_LOG", "warn");
        let nms = procs.spawn_command("baton-nms", cmd)?;
        // every node discovered before the clock starts
        let needle = format!("\"known\":{}", ctx.nodes);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !procs.tail(nms, 400).contains(&needle) {
            check_interrupted()?;
            procs.sample();
            if !procs.running(nms) || Instant::now() > deadline {
                bail!(
                    "baton-nms did not discover all {} nodes: {}",
                    ctx.nodes,
                    procs.tail(nms, 8)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let file = ctx.package_name();
        let staged = staging.join(&file);
        // a copy, not a hard link: the NMS refuses hard-linked drops (one could point
        // outside the drop folder); staging happens before the clock starts
        std::fs::copy(&ctx.package, &staged).context("staging the package")?;
        let (pkg, _) = parse_package_file_name(&file);
        let current = |i: usize| -> Result<PathBuf> {
            Ok(ctx.node_dir(i)?.join("packages").join(&pkg).join("current"))
        };
        let mut watches = Vec::new();
        let mut copies = Vec::new();
        for i in 1..=ctx.nodes {
            watches.push(NodeWatch {
                done: Done::Marker(current(i)?.join(".baton.json")),
                proc: Some(i - 1),
            });
            copies.push(current(i)?.join(&file));
        }
        let start = Instant::now();
        std::fs::rename(&staged, watch.join(&file))?;
        let times = procs.wait_nodes(&watches, &[nms], start, ctx.timeout)?;
        // the NMS writes its summary once the campaign has ended (--once: then it exits)
        let summary = wait_summary(&nms_dir, &mut procs, nms);
        procs.stop_all();
        let mut r = MethodResult::from_nodes(ctx, self.name, times, &copies, &procs);
        r.gated_nodes = gated.clone();
        let mut trouble = Vec::new();
        match &summary {
            Some(s) => {
                r.served_bytes = node_ids.iter().map(|id| Some(served_bytes(s, id))).collect();
                for &g in &gated {
                    let b = served_bytes(s, &node_ids[g - 1]);
                    if b > 0 {
                        trouble.push(format!(
                            "gated node {g} served {b} bytes (the NMS's summary); a gated node serves none"
                        ));
                    }
                }
            }
            None if !gated.is_empty() => trouble.push(
                "the NMS wrote no campaign summary: the bytes the gated nodes served are unknown".into(),
            ),
            None => r.served_bytes = vec![None; ctx.nodes],
        }
        if !trouble.is_empty() {
            let mut e = r.error.take().map(|e| vec![e]).unwrap_or_default();
            e.extend(trouble);
            r.error = Some(e.join("; "));
        }
        Ok(r)
    }
}

/// The summary of the campaign the NMS in `nms_dir` ran, waiting up to 15 s for it to be
/// written (or until the NMS exits); None if there is none.
fn wait_summary(nms_dir: &Path, procs: &mut Procs<'_>, nms: ProcId) -> Option<serde_json::Value> {
    let read = || {
        std::fs::read_dir(nms_dir.join("campaigns"))
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|e| serde_json::from_slice(&std::fs::read(e.path().join("summary.json")).ok()?).ok())
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(s) = read() {
            return Some(s);
        }
        procs.sample();
        if !procs.running(nms) || Instant::now() > deadline || check_interrupted().is_err() {
            // one last look: it may have written the summary as it exited
            return read();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
