//! Prints simulated completion times: cut-through against store-and-forward.
//!
//! `cargo run --release -p baton-protocol --example simulate -- [nodes] [fanout] [size] [seed]`

use baton_protocol::manifest::Transfer;
use baton_protocol::sim::{SimConfig, run};

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let nodes = args.first().copied().unwrap_or(100) as usize;
    let fanout = args.get(1).copied().unwrap_or(2) as u8;
    let size = args.get(2).copied().unwrap_or(1 << 20);
    let seed = args.get(3).copied().unwrap_or(42);
    println!("{nodes} nodes, fanout {fanout}, {size} bytes, 100 Mbit/s links, 0.5 ms latency, seed {seed}");
    println!(
        "{:<20} {:>12} {:>10} {:>11}",
        "mode", "completion", "x T1", "NMS copies"
    );
    for transfer in [Transfer::CutThrough, Transfer::StoreAndForward] {
        let r = run(&SimConfig {
            nodes,
            fanout,
            size,
            seed,
            transfer,
            ..SimConfig::default()
        });
        let t = r.completion().expect("every node installs");
        println!(
            "{:<20} {:>10.3} s {:>9.2}x {:>11.2}",
            format!("{transfer:?}"),
            t.as_secs_f64(),
            t.as_secs_f64() / r.t1.as_secs_f64(),
            r.nms_copies
        );
    }
}
