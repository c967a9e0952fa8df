//! The one-command demo: a whole campaign on this machine. One NMS and N nodes in
//! network namespaces on an isolated bridge, a generated package dropped into the watched
//! folder, the NMS's live view, a check that every node installed exactly the dropped
//! bytes, and the summary. Everything is removed at the end, also on failure or Ctrl-C.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

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
    /// Leave the network and daemons up after the campaign until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

const PACKAGE: &str = "frobnicator";
const FILE: &str = "frobnicator-2.4.1.tar.gz";

/// Runs the demo; fails if any node did not install the exact bytes.
pub fn run(args: &DemoArgs) -> Result<()> {
    if args.nodes == 0 || args.nodes > 250 {
        bail!("--nodes must be between 1 and 250");
    }
    prepare_host("the demo")?;
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
        c.start_node(i, &node_args)?;
    }
    let mut nms_args = vec![
        "--once".to_string(),
        "--min-nodes".into(),
        args.nodes.to_string(),
        "--settle".into(),
        "0".into(),
        "--fanout".into(),
        args.fanout.to_string(),
    ];
    if args.store_and_forward {
        nms_args.push("--store-and-forward".into());
    }
    if let Some(cs) = args.chunk_size {
        nms_args.extend(["--chunk-size".to_string(), cs.to_string()]);
    }
    // the NMS draws its live view on this terminal; its logs stay quiet unless asked for
    let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,mdns_sd=error".into());
    let nms = c.start_nms(&nms_args, false, &[("RUST_LOG", &rust_log)])?;
    std::thread::sleep(Duration::from_millis(500));
    let mib = args.size as f64 / (1024.0 * 1024.0);
    println!("Dropping {FILE} ({mib:.1} MiB) into {}", c.watch_dir().display());
    let t0 = Instant::now();
    let expected = c.drop_package(FILE, args.size, 2026)?;
    let status = c.wait(nms, Duration::from_secs(args.timeout), &interrupted)?;
    let elapsed = t0.elapsed();
    let Some(status) = status else {
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
        "\nDemo: {exact}/{} nodes hold exactly the dropped bytes (BLAKE3 {}); {:.2} s from the drop (NMS {status})",
        args.nodes,
        &hex::encode(expected)[..16],
        elapsed.as_secs_f64()
    );
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
        println!("\n--keep: the network and the nodes stay up until Ctrl-C. Namespaces:");
        for h in c.net.hosts() {
            println!("  {} ({})", h.netns, h.addr);
        }
        println!(
            "e.g. `ip netns exec {} avahi-browse -rt _baton._tcp` lists the nodes; data and logs are in {}",
            c.net.host(0).netns,
            c.dir.display()
        );
        while !interrupted() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    c.teardown();
    if exact != args.nodes {
        bail!(
            "{} of {} nodes did not install the package",
            args.nodes - exact,
            args.nodes
        );
    }
    Ok(())
}
