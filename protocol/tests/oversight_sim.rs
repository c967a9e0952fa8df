//! The scenario on the simulator: two relays of 8 killed mid-transfer and never
//! back. The survivors route around them (source switching), and the NMS's oversight
//! finds the dead relays unreachable, so the campaign ends. Before oversight it never did.

use std::time::Duration;

use baton_protocol::manifest::Transfer;
use baton_protocol::sim::{Crash, Faults, SimConfig, run};

fn config(size: u64) -> SimConfig {
    SimConfig {
        nodes: 8,
        fanout: 1,
        transfer: Transfer::CutThrough,
        size,
        chunk_size: 64 * 1024,
        link_bps: 100_000_000,
        seed: 9,
        max_time: Duration::from_secs(600),
        ..SimConfig::default()
    }
}

#[test]
fn two_relays_of_eight_killed_at_half_end_the_campaign_with_them_unreachable() {
    let size = 16 << 20;
    let clean = run(&config(size));
    let t0 = clean.completion().expect("the run without faults completes");
    // relays 2 and 5 of the chain die at half the fault-free time and stay dead
    let killed = [2, 5];
    let at = t0 / 2;
    let faulty = run(&SimConfig {
        faults: Faults {
            crashes: killed
                .iter()
                .map(|&node| Crash {
                    node,
                    at,
                    down_for: Duration::from_secs(100_000),
                })
                .collect(),
            ..Faults::default()
        },
        ..config(size)
    });
    let survivors: Vec<usize> = (0..8).filter(|i| !killed.contains(i)).collect();
    let last = survivors
        .iter()
        .map(|&i| faulty.installed_at[i].expect("every survivor installs"))
        .max()
        .unwrap();
    let done = faulty
        .done_at
        .expect("the campaign ends although two relays never come back");
    println!(
        "8 nodes, chain, 16 MiB, 100 Mbit/s: without faults {:.2} s; two relays killed at {:.2} s: \
         last survivor {:.2} s ({:.2}x), campaign over {:.2} s ({:.1} s after the last survivor)",
        t0.as_secs_f64(),
        at.as_secs_f64(),
        last.as_secs_f64(),
        last.as_secs_f64() / t0.as_secs_f64(),
        done.as_secs_f64(),
        (done - last.min(done)).as_secs_f64()
    );
    assert!(faulty.exact_copies >= survivors.len(), "{faulty:?}");
    assert!(
        done <= last + Duration::from_secs(30),
        "over {done:?}, 30 s after the last survivor's install at {last:?}"
    );
    for i in killed {
        assert_eq!(faulty.installed_at[i], None);
        assert_eq!(faulty.failures[i], None, "unreachable, not failed");
    }
    assert_eq!(faulty.outcomes[0], (6, 0, 8));
    // the explorer's end check knows no node that dies for good (its crashes always
    // restart): it reports exactly the two killed relays as not installed or failed
    assert_eq!(faulty.violations.len(), 1, "{:?}", faulty.violations);
    let v = &faulty.violations[0];
    assert!(v.contains("not over at the end"), "{v}");
    assert_eq!(v.matches("is Unreachable").count(), 2, "{v}");
}
