//! Baton as a benchmark method: the real daemons on the bench's hosts. The clock starts
//! when the package is renamed into the NMS's watched folder (after every node has been
//! discovered) and a node counts as done when its `current` version is the package.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_protocol::manifest::parse_package_file_name;

use crate::bench::procs::{Done, NodeWatch, Procs, check_interrupted};
use crate::bench::{BenchCtx, Method, MethodResult};

/// One Baton configuration.
#[derive(Debug, Clone)]
pub struct Baton {
    pub name: &'static str,
    pub describe: &'static str,
    /// Extra `baton-nms` flags.
    pub nms_args: &'static [&'static str],
}

/// The Baton methods the bench knows.
pub fn methods() -> Vec<Box<dyn Method>> {
    vec![
        Box::new(Baton {
            name: "baton",
            describe: "Baton, default mode: cut-through chain, 128 KiB chunks",
            nms_args: &[],
        }),
        Box::new(Baton {
            name: "baton-tree",
            describe: "Baton, cut-through binary tree (fanout 2)",
            nms_args: &["--fanout", "2"],
        }),
        Box::new(Baton {
            name: "baton-sf",
            describe: "Baton in the seed's literal flow: store-and-forward binary tree, 1 MiB chunks",
            nms_args: &["--fanout", "2", "--store-and-forward", "--chunk-size", "1048576"],
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
        let mut procs = Procs::new(ctx.net);
        for i in 1..=ctx.nodes {
            let dir = ctx.node_dir(i)?.display().to_string();
            let mut args = vec![
                "node".to_string(),
                "--data-dir".into(),
                dir,
                "--trust".into(),
                nms_id.to_string(),
            ];
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
        procs.stop_all();
        Ok(MethodResult::from_nodes(ctx, self.name, times, &copies, &procs))
    }
}
