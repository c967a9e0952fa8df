//! Whole campaigns on virtual time: the real state machines, virtual links.

use baton_protocol::manifest::Transfer;
use baton_protocol::sim::{SimConfig, SimReport, run};

fn check_all_installed(r: &SimReport, n: usize) {
    assert_eq!(
        r.exact_copies, n,
        "seed {}: not every node holds the exact bytes",
        r.seed
    );
    assert!(
        r.completion().is_some(),
        "seed {}: some node never installed: {:?}",
        r.seed,
        r.installed_at
    );
}

#[test]
fn hundred_nodes_fanout_two_cut_through_beats_store_and_forward() {
    let base = SimConfig {
        nodes: 100,
        fanout: 2,
        seed: 42,
        ..SimConfig::default()
    };
    let ct = run(&base);
    check_all_installed(&ct, 100);
    let sf = run(&SimConfig {
        transfer: Transfer::StoreAndForward,
        ..base.clone()
    });
    check_all_installed(&sf, 100);
    let (t_ct, t_sf) = (ct.completion().unwrap(), sf.completion().unwrap());
    println!(
        "100 nodes, fanout 2, 1 MiB, 100 Mbit/s: T1 {:?}, cut-through {:?} ({:.2}x T1), store-and-forward {:?} ({:.2}x T1); NMS copies {:.2} / {:.2}",
        ct.t1,
        t_ct,
        t_ct.as_secs_f64() / ct.t1.as_secs_f64(),
        t_sf,
        t_sf.as_secs_f64() / sf.t1.as_secs_f64(),
        ct.nms_copies,
        sf.nms_copies
    );
    assert!(
        t_ct * 2 < t_sf,
        "seed {}: cut-through {t_ct:?} is not clearly faster than store-and-forward {t_sf:?}",
        ct.seed
    );
    // the NMS serves only the first tier: two copies and a little control traffic
    assert!(
        ct.nms_copies < 2.5,
        "seed {}: NMS sent {:.2} copies",
        ct.seed,
        ct.nms_copies
    );
    assert_eq!(ct.faults_detected, 0);
}

#[test]
fn a_corrupting_relay_is_detected_and_worked_around() {
    // addressee 0 heads the first half of the list: 49 nodes sit below it
    let r = run(&SimConfig {
        nodes: 100,
        corrupt: vec![0, 7],
        seed: 7,
        ..SimConfig::default()
    });
    check_all_installed(&r, 100);
    assert!(
        r.faults_detected > 0,
        "seed {}: corruption went unnoticed",
        r.seed
    );
    assert!(
        r.source_switches >= 2,
        "seed {}: children did not move away from the bad relays",
        r.seed
    );
}

#[test]
fn dead_nodes_are_planned_around_and_reported() {
    let r = run(&SimConfig {
        nodes: 30,
        dead: vec![0, 5],
        seed: 3,
        ..SimConfig::default()
    });
    for (i, t) in r.installed_at.iter().enumerate() {
        assert_eq!(
            t.is_none(),
            i == 0 || i == 5,
            "seed {}: node {i} installed at {t:?}",
            r.seed
        );
    }
    assert!(
        r.done_at.is_some(),
        "seed {}: the NMS never saw the campaign end",
        r.seed
    );
}

#[test]
fn a_relay_whose_disk_fills_up_fails_and_its_subtree_still_installs() {
    for transfer in [Transfer::CutThrough, Transfer::StoreAndForward] {
        // addressee 0 heads the first half of the list: 14 nodes sit below it
        let r = run(&SimConfig {
            nodes: 30,
            disk_full: vec![0],
            transfer,
            seed: 9,
            ..SimConfig::default()
        });
        assert_eq!(
            r.failures[0].as_deref(),
            Some("cannot store chunk 16: No space left on device (os error 28)"),
            "{transfer:?}"
        );
        for (i, t) in r.installed_at.iter().enumerate() {
            assert_eq!(t.is_none(), i == 0, "{transfer:?}: node {i} installed at {t:?}");
        }
        // nobody received a chunk the full disk did not hold, and nobody counted a fault
        assert_eq!(r.exact_copies, 29, "{transfer:?}");
        assert_eq!(r.faults_detected, 0, "{transfer:?}");
    }
}

#[test]
fn chain_and_empty_packages_complete() {
    let chain = run(&SimConfig {
        nodes: 10,
        fanout: 1,
        seed: 5,
        ..SimConfig::default()
    });
    check_all_installed(&chain, 10);
    // a chain with cut-through costs about one copy plus a chunk per hop
    assert!(
        chain.completion().unwrap() < chain.t1 * 2,
        "{:?} vs T1 {:?}",
        chain.completion(),
        chain.t1
    );
    let empty = run(&SimConfig {
        nodes: 5,
        size: 0,
        seed: 6,
        ..SimConfig::default()
    });
    check_all_installed(&empty, 5);
    let odd = run(&SimConfig {
        nodes: 7,
        size: 100_003,
        chunk_size: 4096,
        fanout: 3,
        seed: 8,
        ..SimConfig::default()
    });
    check_all_installed(&odd, 7);
}

#[test]
fn runs_are_reproducible_from_the_seed() {
    let cfg = SimConfig {
        nodes: 20,
        corrupt: vec![1],
        seed: 11,
        ..SimConfig::default()
    };
    let (a, b) = (run(&cfg), run(&cfg));
    assert_eq!(a.installed_at, b.installed_at);
    assert_eq!(a.events, b.events);
}
