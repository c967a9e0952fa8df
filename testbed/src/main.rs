//! `baton-testbed`: the demo, benchmarks, and (hidden) the daemons and helpers it runs
//! inside its namespaces.

use anyhow::Result;
use baton_testbed::attack::{self, AttackArgs};
use baton_testbed::bench::{self, BenchArgs};
use baton_testbed::demo::{self, DemoArgs};
use baton_testbed::faults::{self, FaultArgs};
use clap::{Parser, Subcommand};

/// Many Baton hosts on one machine: network namespaces on an isolated bridge.
#[derive(Parser, Debug)]
#[command(name = "baton-testbed", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// A whole campaign on this machine: 1 NMS + N nodes, a dropped package, the summary.
    Demo(DemoArgs),
    /// Baton against the physical limit and existing tools, on shaped links.
    Bench(BenchArgs),
    /// A rogue peer against a live fleet: forged, unsigned, untrusted, expired and replayed
    /// offers, garbage, oversize and slow frames, floods; checks installs, RSS and the campaign.
    Attack(AttackArgs),
    /// Faults against a live fleet (dead relays, a restarted NMS or node, loss, a full
    /// disk, a corrupting relay, a late node, a replaced file): checks every survivor holds
    /// the exact bytes and the NMS's report is true.
    Faults(FaultArgs),
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // the daemons and helpers this binary runs inside its namespaces
    match args.get(1).map(String::as_str) {
        Some("node") => {
            return baton_node::cli::main_from(
                std::iter::once("baton-node".to_string()).chain(args[2..].iter().cloned()),
            );
        }
        Some("nms") => {
            return baton_nms::cli::main_from(
                std::iter::once("baton-nms".to_string()).chain(args[2..].iter().cloned()),
            );
        }
        Some("http-serve" | "http-fetch") => return bench::http::helper_main(&args[1..]),
        Some("attack-rogue") => return attack::rogue_main(&args[2..]),
        _ => {}
    }
    baton_shell::init_tracing();
    match Cli::parse().cmd {
        Cmd::Demo(a) => demo::run(&a),
        Cmd::Bench(a) => bench::run(&a, baton_testbed::baton_bench::methods()),
        Cmd::Attack(a) => attack::run(&a),
        Cmd::Faults(a) => faults::run(&a),
    }
}
