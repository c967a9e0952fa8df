//! The one-command demo: a whole campaign on this machine. One NMS and N nodes in
//! network namespaces on an isolated bridge, a generated package dropped into the watched
//! folder, the NMS's live view, a check that every node installed exactly the dropped
//! bytes, and the summary. With `--keep` the NMS and the nodes keep running after that,
//! so the user can go on dropping files, until Ctrl-C. Everything is removed at the end,
//! also on failure or Ctrl-C.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use baton_protocol::NodeId;

use crate::bench::parse_size;
use crate::bench::procs::interrupted;
use crate::cluster::{Cluster, prepare_host};
use crate::netns::NetSpec;

/// `baton-testbed demo` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 8)]
    pub nodes: usize,
    /// Size of the generated package (e.g. 64MiB, 500KiB, 1GiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub size: u64,
    /// Shape every host's link to this rate (tc syntax, e.g. 100mbit). Default: unshaped.
    #[arg(long)]
    pub rate: Option<String>,
    /// How many parts each sender splits its list into (1 = chain, 2 = binary tree).
    #[arg(long, default_value_t = 1)]
    pub fanout: u8,
    /// Chunk size in bytes (default: the NMS's).
    #[arg(long)]
    pub chunk_size: Option<u32>,
    /// Chunk requests each node keeps in flight (default: the node's).
    #[arg(long)]
    pub window: Option<usize>,
    /// Relay whole packages only (the seed's literal flow).
    #[arg(long)]
    pub store_and_forward: bool,
    /// Keep the NMS and the nodes running after the first campaign, until Ctrl-C: every
    /// file dropped into the watched folder (the demo prints where) becomes a campaign.
    #[arg(long)]
    pub keep: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Nodes (numbered from 1) whose owners gate relaying: they run `--relay-policy idle`
    /// with a probe that reads a busy CPU, so they install but serve no one.
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    pub gated: Vec<usize>,
    /// Upgrade the fleet's agent instead (issue 11): the nodes run their own copies of
    /// baton-node (built next to this binary), a new build is published while a package
    /// campaign relays, then a broken one (/bin/false) that every node trying it rolls
    /// back; `baton-nms nodes` before and after. Uses --nodes and --size.
    #[arg(long)]
    pub self_update: bool,
}

/// The flags that gate node `i` through a test probe file in its directory (written
/// here, `busy`): `--relay-policy idle` with a CPU that is never idle.
pub fn gated_node_args(c: &Cluster, i: usize) -> Result<Vec<String>> {
    let probe = c.node_dir(i).join("probe");
    std::fs::create_dir_all(c.node_dir(i))?;
    std::fs::write(&probe, "busy\n")?;
    Ok(vec![
        "--relay-policy".into(),
        "idle".into(),
        "--test-probe-file".into(),
        probe.display().to_string(),
    ])
}

/// The nodes to gate so that an NMS planning without knowing of the gates would have made
/// them relays: the plan of `ids` (index 0 = node 1) in the fleet's id order (what an NMS
/// that knows nothing of relaying signs) under `fanout`, and of its relays the last `k`
/// in that order (in a chain, the last `k` relays before the leaf). Node numbers from 1,
/// ascending; fewer than `k` when the plan has fewer relays.
pub fn plain_plan_relays(ids: &[NodeId], fanout: u8, k: usize) -> Vec<usize> {
    let mut sorted = ids.to_vec();
    sorted.sort();
    let fanout = baton_protocol::plan::fanout_for(sorted.len(), fanout);
    let tree = baton_protocol::plan::Tree::plan(&sorted, fanout, &baton_protocol::plan::no_leaves);
    let relays: Vec<NodeId> = sorted
        .iter()
        .filter(|n| tree.parent.values().any(|p| p.as_ref() == Some(*n)))
        .copied()
        .collect();
    let mut nodes: Vec<usize> = relays[relays.len().saturating_sub(k)..]
        .iter()
        .filter_map(|r| ids.iter().position(|i| i == r).map(|p| p + 1))
        .collect();
    nodes.sort_unstable();
    nodes
}

/// `node`'s entry in a campaign summary's `per_node`.
pub fn summary_node<'a>(summary: &'a serde_json::Value, node: &NodeId) -> Option<&'a serde_json::Value> {
    let id = node.to_string();
    summary["per_node"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["node"].as_str() == Some(id.as_str()))
}

/// Bytes the nodes report having fetched from `node` (a campaign summary's per-node
/// sources).
pub fn served_bytes(summary: &serde_json::Value, node: &NodeId) -> u64 {
    let id = node.to_string();
    summary["per_node"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| n["sources"].as_array().into_iter().flatten())
        .filter(|s| s["from"].as_str() == Some(id.as_str()))
        .filter_map(|s| s["bytes"].as_u64())
        .sum()
}

const PACKAGE: &str = "frobnicator";
const FILE: &str = "frobnicator-2.4.1.tar.gz";

/// Runs the demo; fails if any node did not install the exact bytes.
pub fn run(args: &DemoArgs) -> Result<()> {
    if args.nodes == 0 || args.nodes > 250 {
        bail!("--nodes must be between 1 and 250");
    }
    if args.self_update {
        return crate::selfupdate::demo(args.nodes, args.size);
    }
    if let Some(g) = args.gated.iter().find(|&&g| g == 0 || g > args.nodes) {
        bail!("--gated {g}: nodes are numbered 1 to {}", args.nodes);
    }
    prepare_host("the demo", "demo")?;
    let exe = std::env::current_exe()?;
    println!(
        "Creating a private network: 1 NMS + {} nodes, each in its own network namespace, on a bridge connected to nothing else (198.18.0.0/15){}",
        args.nodes,
        args.rate
            .as_ref()
            .map(|r| format!(", links shaped to {r}"))
            .unwrap_or_default()
    );
    let spec = NetSpec {
        hosts: args.nodes + 1,
        rate: args.rate.clone(),
        ..NetSpec::default()
    };
    let mut c = Cluster::create(&spec, exe)?;
    println!("NMS {}\n  work directory {}", c.nms_id, c.dir.display());
    let node_args: Vec<String> = args
        .window
        .iter()
        .flat_map(|w| ["--window".to_string(), w.to_string()])
        .collect();
    for i in 1..=args.nodes {
        let mut a = node_args.clone();
        if args.gated.contains(&i) {
            a.extend(gated_node_args(&c, i)?);
        }
        c.start_node(i, &a)?;
    }
    if !args.gated.is_empty() {
        println!(
            "Nodes {} gate relaying (policy idle, their probe reads a busy CPU): they install but serve no one",
            args.gated
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // the NMS draws its live view on this terminal; its logs stay quiet unless asked for
    let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,mdns_sd=error".into());
    let nms = c.start_nms(&nms_args(args), false, &[("RUST_LOG", &rust_log)])?;
    std::thread::sleep(Duration::from_millis(500));
    let mib = args.size as f64 / (1024.0 * 1024.0);
    println!("Dropping {FILE} ({mib:.1} MiB) into {}", c.watch_dir().display());
    let t0 = Instant::now();
    let expected = c.drop_package(FILE, args.size, 2026)?;
    let timeout = Duration::from_secs(args.timeout);
    let ended = if args.keep {
        first_campaign_end(&mut c, nms, timeout).map_err(speak_of_the_demo)?
    } else {
        c.wait(nms, timeout, &interrupted)
            .map_err(speak_of_the_demo)?
            .map(|st| format!("NMS {st}"))
    };
    let elapsed = t0.elapsed();
    let Some(status) = ended else {
        bail!(
            "the campaign did not end within {} s; node logs are in {}",
            args.timeout,
            c.dir.display()
        );
    };
    let exact = (1..=args.nodes)
        .filter(|&i| c.installed_hash(i, PACKAGE) == Some(expected))
        .count();
    println!(
        "\nDemo: {exact}/{} nodes hold exactly the dropped bytes (BLAKE3 {}); {:.2} s from the drop ({status})",
        args.nodes,
        &hex::encode(expected)[..16],
        elapsed.as_secs_f64()
    );
    if let Some(s) = c.summaries().first() {
        for &g in &args.gated {
            println!(
                "gated node {g} ({}) served {} bytes",
                c.node_ids[g - 1],
                served_bytes(s, &c.node_ids[g - 1])
            );
        }
    }
    if exact != args.nodes {
        for i in (1..=args.nodes).filter(|&i| c.installed_hash(i, PACKAGE) != Some(expected)) {
            let log = c.log(&format!("node-{i}"));
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            println!(
                "node {i} ({}) did not install; last log lines:",
                c.node_ids[i - 1]
            );
            for l in tail.into_iter().rev() {
                println!("    {l}");
            }
        }
    }
    if args.keep {
        println!("{}", keep_message(&c, args.nodes));
        while !interrupted() {
            if !c.running(nms) {
                println!("demo: the NMS exited (its output is above); stopping the demo");
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    c.teardown();
    if interrupted() {
        println!("demo: stopped; its processes, network namespaces and files are removed");
    }
    if exact != args.nodes {
        bail!(
            "{} of {} nodes did not install the package",
            args.nodes - exact,
            args.nodes
        );
    }
    Ok(())
}

/// The NMS's flags: without `--keep` it exits after the first campaign.
fn nms_args(args: &DemoArgs) -> Vec<String> {
    let mut nms_args = vec![
        "--min-nodes".to_string(),
        args.nodes.to_string(),
        "--settle".into(),
        "0".into(),
        "--fanout".into(),
        args.fanout.to_string(),
    ];
    if !args.keep {
        nms_args.insert(0, "--once".into());
    }
    if args.store_and_forward {
        nms_args.push("--store-and-forward".into());
    }
    if let Some(cs) = args.chunk_size {
        nms_args.extend(["--chunk-size".to_string(), cs.to_string()]);
    }
    nms_args
}

/// With `--keep` the NMS does not exit: the first campaign has ended once the NMS saved
/// its summary. `None` on timeout.
fn first_campaign_end(c: &mut Cluster, nms: usize, timeout: Duration) -> Result<Option<String>> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if interrupted() {
            bail!("interrupted");
        }
        if !c.summaries().is_empty() {
            return Ok(Some("the NMS keeps running".into()));
        }
        if !c.running(nms) {
            return Ok(Some("the NMS exited".into()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(None)
}

/// Ctrl-C during the demo is reported as the demo's, not as an error of its parts.
fn speak_of_the_demo(e: anyhow::Error) -> anyhow::Error {
    if interrupted() {
        anyhow::anyhow!("demo interrupted (Ctrl-C): its processes, network namespaces and files are removed")
    } else {
        e
    }
}

/// What `--keep` tells the user once the first campaign ended: where to drop files and
/// how to stop.
fn keep_message(c: &Cluster, nodes: usize) -> String {
    let mut m = keep_instructions(&c.watch_dir(), &c.dir, nodes);
    m.push_str("\nNamespaces:");
    for h in c.net.hosts() {
        m.push_str(&format!("\n  {} ({})", h.netns, h.addr));
    }
    m.push_str(&format!(
        "\ne.g. `ip netns exec {} avahi-browse -rt _baton._tcp` lists the nodes; data and logs are in {}",
        c.net.host(0).netns,
        c.dir.display()
    ));
    m
}

fn keep_instructions(watch: &std::path::Path, dir: &std::path::Path, nodes: usize) -> String {
    format!(
        "\n--keep: the NMS and the {nodes} nodes keep running. Drop more files into\n  {w}\n\
         and each becomes a campaign to every node; the NMS shows it here. The file name gives \
         the package and its version, e.g. frobnicator-2.4.2.tar.gz (copy the file in, as root: \
         sudo cp FILE {w}/).\n\
         Press Ctrl-C to stop the demo: it stops the NMS and the nodes and removes the network \
         and {d}.",
        w = watch.display(),
        d = dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::procs::interrupt_message;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Demo {
        #[command(flatten)]
        args: DemoArgs,
    }

    fn demo(args: &[&str]) -> DemoArgs {
        Demo::try_parse_from(std::iter::once("demo").chain(args.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn the_nodes_to_gate_are_the_last_relays_of_the_plan_in_id_order() {
        use baton_protocol::id::fake_id;
        // the fleet in an order that is not the ids' (node k has id 10 - k)
        let ids: Vec<NodeId> = (1..=8u64).map(|k| fake_id(10 - k)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        let pos = |node: usize| sorted.iter().position(|i| *i == ids[node - 1]).unwrap();
        // a chain: positions 0..=6 relay, the last two of them are 5 and 6
        let g = plain_plan_relays(&ids, 1, 2);
        assert_eq!(g.len(), 2);
        let mut at: Vec<usize> = g.iter().map(|&n| pos(n)).collect();
        at.sort_unstable();
        assert_eq!(at, [5, 6], "{g:?}");
        // a binary tree of 8: every chosen node heads a part of more than one node
        let tree = baton_protocol::plan::Tree::plan(&sorted, 2, &baton_protocol::plan::no_leaves);
        for n in plain_plan_relays(&ids, 2, 2) {
            assert!(
                tree.parent.values().any(|p| *p == Some(ids[n - 1])),
                "node {n} relays"
            );
        }
        // no more than the plan has
        assert_eq!(plain_plan_relays(&ids[..2], 1, 2).len(), 1);
    }

    #[test]
    fn keep_keeps_the_nms_running_after_the_first_campaign() {
        let once = nms_args(&demo(&[]));
        assert_eq!(once[0], "--once");
        let kept = nms_args(&demo(&["--keep", "--nodes", "3", "--chunk-size", "65536"]));
        assert!(!kept.contains(&"--once".to_string()), "{kept:?}");
        assert_eq!(
            kept,
            [
                "--min-nodes",
                "3",
                "--settle",
                "0",
                "--fanout",
                "1",
                "--chunk-size",
                "65536"
            ]
        );
        let m = keep_instructions(
            std::path::Path::new("/tmp/baton-1-0/watch"),
            std::path::Path::new("/tmp/baton-1-0"),
            3,
        );
        assert!(m.contains("the NMS and the 3 nodes keep running"), "{m}");
        assert!(
            m.contains("Drop more files into\n  /tmp/baton-1-0/watch\n"),
            "{m}"
        );
        assert!(m.contains("sudo cp FILE /tmp/baton-1-0/watch/"), "{m}");
        assert!(m.contains("Press Ctrl-C to stop the demo"), "{m}");
    }

    #[test]
    fn ctrl_c_in_the_demo_speaks_of_the_demo() {
        for second in [false, true] {
            let m = interrupt_message("demo", second);
            assert!(m.starts_with("demo: ") && !m.contains("bench"), "{m}");
        }
        assert!(interrupt_message("demo", false).contains("Ctrl-C again"));
        assert!(interrupt_message("bench", false).starts_with("bench: "));
    }
}
