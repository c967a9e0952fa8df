//! The NMS endpoint on virtual time: every input is followed by `check_invariants` (in
//! `handle`), and each test drains actions and events as a shell would.

use super::*;
use crate::chunk::PackageHasher;
use crate::id::{fake_id, keypair_from_seed};
use crate::manifest::{HashList, MANIFEST_FORMAT, PlanParams, RelayPolicy, Transfer};
use crate::wire::{InstallOutcome, Phase, RefuseReason, Verdict};

const A: u64 = 1;
const B: u64 = 2;
const C: u64 = 3;
const D: u64 = 4;
const E: u64 = 5;

fn id(n: u64) -> NodeId {
    fake_id(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn cfg() -> NmsConfig {
    NmsConfig {
        min_nodes: 1,
        settle: s(2),
        discovery_timeout: s(10),
        tags: Vec::new(),
        protocol_version: PROTOCOL_VERSION,
        monitor: MonitorConfig::default(),
        halt_after: None,
        unix_origin: 0,
        fanout: 2,
    }
}

fn seen(n: u64, tags: &[&str]) -> NmsInput {
    NmsInput::NodeSeen {
        id: id(n),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        role: PeerRole::Node,
        version: PROTOCOL_VERSION,
        relay: None,
    }
}

fn drop_ready(d: u64) -> NmsInput {
    NmsInput::DropReady {
        drop_id: DropId(d),
        name: format!("/drops/pkg-{d}.tar"),
    }
}

/// A prepared campaign `tag` (its id is `[tag; 16]`) for these addressees.
fn prepared(d: u64, tag: u8, addressees: &[NodeId]) -> NmsInput {
    prepared_with(d, tag, addressees, 1)
}

/// [`prepared`] with a plan of this fanout.
fn prepared_with(d: u64, tag: u8, addressees: &[NodeId], fanout: u8) -> NmsInput {
    prepared_package(d, tag, addressees, fanout, "pkg")
}

/// [`prepared_with`] of package `name`.
fn prepared_package(d: u64, tag: u8, addressees: &[NodeId], fanout: u8, name: &str) -> NmsInput {
    let key = keypair_from_seed(100);
    let data = vec![tag; 10_000];
    let mut h = PackageHasher::new(4096);
    h.update(&data);
    let (size, hashes, root) = h.finish();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        campaign: [tag; 16],
        nms: NodeId::of(&key),
        name: name.into(),
        version: format!("{tag}"),
        file: format!("pkg-{tag}.tar"),
        sequence: u64::from(tag),
        size,
        chunk_size: 4096,
        chunk_hashes: HashList(hashes),
        root,
        created_at: 1000,
        expires_at: 2000,
        relay: RelayPolicy::default(),
        plan: PlanParams {
            fanout,
            transfer: Transfer::CutThrough,
            leaves: 0,
        },
        offline_install: false,
        self_update: false,
        addressees: addressees.to_vec(),
    };
    let signed = SignedManifest::sign(&manifest, &key).unwrap();
    NmsInput::Prepared {
        drop_id: DropId(d),
        manifest: Box::new(manifest),
        signed,
        secret: CampaignSecret([tag; 32]),
    }
}

fn actions(e: &mut NmsEndpoint) -> Vec<NmsAction> {
    std::iter::from_fn(|| e.poll_action()).collect()
}

fn events(e: &mut NmsEndpoint) -> Vec<NmsEvent> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

fn prepares(a: &[NmsAction]) -> Vec<(DropId, Vec<NodeId>)> {
    a.iter()
        .filter_map(|a| match a {
            NmsAction::Prepare {
                drop_id, addressees, ..
            } => Some((*drop_id, addressees.clone())),
            _ => None,
        })
        .collect()
}

fn offers(a: &[NmsAction]) -> Vec<(OutboundId, NodeId)> {
    a.iter()
        .filter_map(|a| match a {
            NmsAction::SendControl {
                id,
                to,
                msg: Control::Offer(_),
            } => Some((*id, *to)),
            _ => None,
        })
        .collect()
}

fn probes(a: &[NmsAction]) -> Vec<(OutboundId, NodeId, u64)> {
    a.iter()
        .filter_map(|a| match a {
            NmsAction::SendControl {
                id,
                to,
                msg: Control::Probe { nonce, .. },
            } => Some((*id, *to, *nonce)),
            _ => None,
        })
        .collect()
}

/// Runs timers until `until` as a shell sleeping on `poll_timeout` would.
fn run_until(e: &mut NmsEndpoint, until: Duration) -> Vec<NmsAction> {
    let mut out = Vec::new();
    while let Some(t) = e.poll_timeout().filter(|t| *t <= until) {
        e.handle(t, NmsInput::Timeout);
        out.extend(actions(e));
    }
    out
}

fn report(c: u8, outcome: InstallOutcome) -> Control {
    Control::InstallReport {
        campaign: [c; 16],
        outcome,
    }
}

/// An endpoint with nodes `nodes` seen at 0, one drop prepared into campaign `tag`.
fn running(nodes: &[u64], tag: u8) -> (NmsEndpoint, Vec<NmsAction>) {
    let mut e = NmsEndpoint::new(s(0), cfg());
    for n in nodes {
        e.handle(s(0), seen(*n, &[]));
    }
    e.handle(s(0), drop_ready(1));
    let a = run_until(&mut e, s(2));
    let (d, addressees) = prepares(&a).remove(0);
    e.handle(s(3), prepared(d.0, tag, &addressees));
    let a = actions(&mut e);
    events(&mut e);
    (e, a)
}

#[test]
fn a_drop_waits_until_discovery_settles() {
    let mut e = NmsEndpoint::new(s(0), cfg());
    e.handle(s(0), seen(A, &[]));
    e.handle(ms(500), drop_ready(1));
    assert!(actions(&mut e).is_empty(), "not settled yet");
    assert!(events(&mut e).iter().any(|v| matches!(
        v,
        NmsEvent::DropWaiting {
            found: 1,
            needed: 1,
            ..
        }
    )));
    assert_eq!(e.poll_timeout(), Some(s(2)));
    // a new node moves the settle point
    e.handle(ms(1500), seen(B, &[]));
    assert_eq!(e.poll_timeout(), Some(ms(3500)));
    assert!(run_until(&mut e, ms(3499)).is_empty());
    let a = run_until(&mut e, ms(3500));
    assert_eq!(prepares(&a), vec![(DropId(1), vec![id(A), id(B)])]);
    // nothing left to wait for: no periodic wake-up
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn min_nodes_not_reached_gives_up_at_the_discovery_timeout_with_a_reason() {
    let mut e = NmsEndpoint::new(
        s(0),
        NmsConfig {
            min_nodes: 3,
            ..cfg()
        },
    );
    e.handle(s(0), seen(A, &[]));
    e.handle(s(0), seen(B, &[]));
    e.handle(s(1), drop_ready(1));
    assert!(run_until(&mut e, s(10)).is_empty());
    events(&mut e);
    assert!(run_until(&mut e, s(11)).is_empty(), "given up, never prepared");
    let ev = events(&mut e);
    let reason = ev
        .iter()
        .find_map(|v| match v {
            NmsEvent::DropAbandoned {
                drop_id: DropId(1),
                reason,
            } => Some(reason.clone()),
            _ => None,
        })
        .expect("the drop is abandoned");
    assert!(reason.contains("only 2 node(s) found"), "{reason}");
    assert!(reason.contains("3 needed"), "{reason}");
    assert!(reason.contains("--min-nodes"), "{reason}");
    assert_eq!(e.poll_timeout(), None);
    assert_eq!(e.drops_waiting(), 0);
}

#[test]
fn enough_nodes_after_a_while_start_before_the_timeout() {
    let mut e = NmsEndpoint::new(
        s(0),
        NmsConfig {
            min_nodes: 2,
            ..cfg()
        },
    );
    e.handle(s(0), drop_ready(1));
    e.handle(s(1), seen(A, &[]));
    assert_eq!(e.poll_timeout(), Some(s(10)), "no settle timer while too few");
    e.handle(s(4), seen(B, &[]));
    let a = run_until(&mut e, s(6));
    assert_eq!(prepares(&a), vec![(DropId(1), vec![id(A), id(B)])]);
}

#[test]
fn tags_version_and_role_filter_the_addressees() {
    let mut e = NmsEndpoint::new(
        s(0),
        NmsConfig {
            tags: vec!["edge".into()],
            ..cfg()
        },
    );
    e.handle(s(0), seen(A, &["edge"]));
    e.handle(s(0), seen(B, &[]));
    e.handle(s(0), seen(C, &["x", "edge"]));
    e.handle(
        s(0),
        NmsInput::NodeSeen {
            id: id(D),
            tags: vec!["edge".into()],
            role: PeerRole::Node,
            version: PROTOCOL_VERSION + 1,
            relay: None,
        },
    );
    e.handle(
        s(0),
        NmsInput::NodeSeen {
            id: id(E),
            tags: vec!["edge".into()],
            role: PeerRole::Nms,
            version: PROTOCOL_VERSION,
            relay: None,
        },
    );
    assert!(events(&mut e).contains(&NmsEvent::NodeIncompatible {
        id: id(D),
        version: PROTOCOL_VERSION + 1
    }));
    e.handle(s(0), drop_ready(1));
    let a = run_until(&mut e, s(5));
    let mut want = vec![id(A), id(C)];
    want.sort();
    assert_eq!(prepares(&a), vec![(DropId(1), want)]);
    // a node that leaves is no longer eligible
    e.handle(s(5), NmsInput::NodeLost { id: id(C) });
    assert_eq!(e.eligible(), vec![id(A)]);
    // present: every node still there, whatever its tags or version; not the other NMS
    let mut present = vec![id(A), id(B), id(D)];
    present.sort();
    assert_eq!(e.present_nodes().collect::<Vec<_>>(), present);
}

#[test]
fn a_newer_version_supersedes_the_running_campaign_of_an_older_one() {
    // issue 9: a file replaced during its campaign left nodes on the older version
    let (mut e, _) = running(&[A, B], 1);
    e.handle(s(4), drop_ready(2));
    let mut a = actions(&mut e);
    a.extend(run_until(&mut e, s(7)));
    let (d, addressees) = prepares(&a).remove(0);
    e.handle(s(7), prepared(d.0, 2, &addressees));
    actions(&mut e);
    let ev = events(&mut e);
    let why = ev
        .iter()
        .find_map(|v| match v {
            NmsEvent::CampaignHalted { campaign, reason } if *campaign == [1; 16] => Some(reason.clone()),
            _ => None,
        })
        .expect("the older campaign is halted");
    assert!(why.contains("superseded by pkg 2 (sequence 2)"), "{why}");
    let old = e.campaign(&[1; 16]).unwrap();
    assert!(
        old.nodes()
            .values()
            .all(|v| matches!(v.status, NodeStatus::Halted(_)))
    );
    // the new one runs
    assert!(e.campaign(&[2; 16]).unwrap().halted().is_none());
}

#[test]
fn two_drops_are_prepared_one_at_a_time() {
    let mut e = NmsEndpoint::new(s(0), cfg());
    e.handle(s(0), seen(A, &[]));
    e.handle(s(0), drop_ready(1));
    e.handle(s(0), drop_ready(2));
    let a = run_until(&mut e, s(3));
    assert_eq!(prepares(&a), vec![(DropId(1), vec![id(A)])]);
    assert_eq!(e.poll_timeout(), None, "nothing waits while a drop is prepared");
    // a stale answer for a drop not being prepared changes nothing
    e.handle(s(3), prepared(2, 9, &[id(A)]));
    assert!(actions(&mut e).is_empty());
    e.handle(
        s(4),
        NmsInput::PrepareFailed {
            drop_id: DropId(1),
            reason: "changed while copied".into(),
        },
    );
    assert!(events(&mut e).contains(&NmsEvent::DropFailed {
        drop_id: DropId(1),
        reason: "changed while copied".into()
    }));
    let a = actions(&mut e);
    assert_eq!(prepares(&a), vec![(DropId(2), vec![id(A)])]);
    e.handle(s(5), prepared(2, 7, &[id(A)]));
    let a = actions(&mut e);
    assert_eq!(offers(&a).len(), 1);
    assert!(events(&mut e).iter().any(|v| matches!(
        v,
        NmsEvent::CampaignStarted {
            drop_id: DropId(2),
            ..
        }
    )));
}

#[test]
fn a_finished_campaign_reports_its_summary() {
    let (mut e, a) = running(&[A, B], 7);
    assert_eq!(
        offers(&a).iter().map(|(_, to)| *to).collect::<Vec<_>>(),
        vec![id(A)]
    );
    e.handle(
        s(5),
        NmsInput::ControlRequest {
            from: id(A),
            msg: report(7, InstallOutcome::Installed),
        },
    );
    assert!(events(&mut e).contains(&NmsEvent::NodeInstalled {
        campaign: [7; 16],
        node: id(A)
    }));
    assert!(
        !actions(&mut e)
            .iter()
            .any(|a| matches!(a, NmsAction::CampaignFinished { .. }))
    );
    e.handle(
        s(8),
        NmsInput::ControlRequest {
            from: id(B),
            msg: report(
                7,
                InstallOutcome::Failed {
                    reason: "disk full".into(),
                },
            ),
        },
    );
    let summary = actions(&mut e)
        .into_iter()
        .find_map(|a| match a {
            NmsAction::CampaignFinished { summary } => Some(summary),
            _ => None,
        })
        .expect("finished");
    assert_eq!(summary.campaign, [7; 16]);
    assert_eq!(summary.installed, 1);
    assert!(!summary.all_installed());
    assert_eq!(summary.failed().collect::<Vec<_>>(), vec![(&id(B), "disk full")]);
    assert_eq!(summary.nodes[0].took, Some(s(2)), "from the start at 3 s");
    assert_eq!(summary.wall(), s(8), "from the drop at 0 s");
    assert!(summary.bytes_sent > 0);
    let ev = events(&mut e);
    assert!(ev.contains(&NmsEvent::CampaignDone {
        summary: summary.clone()
    }));
    // late messages are still answered, and the summary is not reported twice
    e.handle(
        s(9),
        NmsInput::ControlRequest {
            from: id(B),
            msg: report(7, InstallOutcome::Installed),
        },
    );
    assert!(
        !actions(&mut e)
            .iter()
            .any(|a| matches!(a, NmsAction::CampaignFinished { .. }))
    );
}

#[test]
fn requests_responses_and_failures_reach_the_right_campaign() {
    let (mut e, a1) = running(&[A, B], 1);
    e.handle(s(10), drop_ready(2));
    // the fleet settled long ago: prepared at once
    let a = actions(&mut e);
    let (d, addressees) = prepares(&a).remove(0);
    // another package (a newer version of the same one would supersede campaign 1)
    e.handle(s(12), prepared_package(d.0, 2, &addressees, 1, "other"));
    let a2 = actions(&mut e);
    events(&mut e);
    let (o1, _) = offers(&a1)[0];
    let (o2, to2) = offers(&a2)[0];
    assert_ne!(o1, o2);

    // a chunk request for campaign 2 is served from campaign 2's package
    let req = e
        .handle(
            s(13),
            NmsInput::ChunkRequest {
                from: id(A),
                request: ChunkRequest {
                    campaign: [2; 16],
                    index: 1,
                    path: vec![id(A)],
                },
            },
        )
        .expect("a request id");
    let a = actions(&mut e);
    assert!(matches!(
        a.as_slice(),
        [NmsAction::SendChunk { req: r, campaign, index: 1, .. }] if *r == req && *campaign == [2; 16]
    ));

    // progress for campaign 1 updates campaign 1 only
    let req = e
        .handle(
            s(13),
            NmsInput::ControlRequest {
                from: id(A),
                msg: Control::Progress {
                    campaign: [1; 16],
                    phase: Phase::Receiving,
                    verified: 4096,
                    source: Some(id(B)),
                    parent: None,
                    relay: None,
                    fetched: Vec::new(),
                },
            },
        )
        .unwrap();
    assert_eq!(
        actions(&mut e),
        vec![NmsAction::AnswerControl {
            req,
            msg: Control::Ack
        }]
    );
    assert_eq!(
        events(&mut e),
        vec![NmsEvent::NodeProgress {
            campaign: [1; 16],
            node: id(A),
            status: NodeStatus::Receiving,
            verified: 4096,
            source: Some(id(B)),
            fetched: Vec::new(),
        }]
    );
    assert_eq!(e.campaign(&[2; 16]).unwrap().nodes()[&id(A)].verified, 0);

    // campaign 2's first tier refuses: campaign 2 re-plans, campaign 1 is untouched
    e.handle(
        s(14),
        NmsInput::ControlResponse {
            id: o2,
            msg: Control::OfferReply {
                campaign: [2; 16],
                verdict: Verdict::Refuse {
                    reason: RefuseReason::Busy,
                    detail: "busy".into(),
                },
            },
        },
    );
    let a = actions(&mut e);
    let next = offers(&a);
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].1, to2);
    assert!(events(&mut e).iter().any(|v| matches!(
        v,
        NmsEvent::NodeFailed { campaign, node, .. } if *campaign == [2; 16] && *node == to2
    )));
    assert_eq!(
        e.campaign(&[1; 16]).unwrap().nodes()[&to2].status,
        NodeStatus::Receiving
    );

    // campaign 1's offer could not be delivered: the rest of the list is re-planned at
    // once, and the node is probed, not failed
    e.handle(
        s(15),
        NmsInput::SendFailed {
            id: o1,
            reason: "dial failure".into(),
        },
    );
    let ev = events(&mut e);
    assert!(ev.iter().any(|v| matches!(
        v,
        NmsEvent::NodeProbing { campaign, .. } if *campaign == [1; 16]
    )));
    assert!(!ev.iter().any(|v| matches!(v, NmsEvent::NodeFailed { .. })));
    let a = actions(&mut e);
    assert_eq!(offers(&a).len(), 1, "campaign 1 re-plans too");
    assert_eq!(probes(&a).len(), 1, "and probes the node");
    // an unknown or already answered send id changes nothing
    e.handle(
        s(15),
        NmsInput::SendFailed {
            id: o1,
            reason: "again".into(),
        },
    );
    assert!(actions(&mut e).is_empty());
    assert!(events(&mut e).is_empty());
}

#[test]
fn a_restart_offers_again_to_heads_that_had_not_answered_and_forgets_requests_in_flight() {
    // fanout 2: two first-tier heads, each offered at the start
    let mut e = NmsEndpoint::new(s(0), cfg());
    for n in [A, B, C, D, E] {
        e.handle(s(0), seen(n, &[]));
    }
    e.handle(s(0), drop_ready(1));
    let (d, addressees) = prepares(&run_until(&mut e, s(2))).remove(0);
    let NmsInput::Prepared {
        mut manifest, secret, ..
    } = prepared(d.0, 1, &addressees)
    else {
        unreachable!()
    };
    manifest.plan.fanout = 2;
    let signed = SignedManifest::sign(&manifest, &keypair_from_seed(100)).unwrap();
    e.handle(
        s(3),
        NmsInput::Prepared {
            drop_id: d,
            manifest,
            signed,
            secret,
        },
    );
    let first = offers(&actions(&mut e));
    events(&mut e);
    assert!(first.len() >= 2, "{first:?}");
    let (answered, head) = first[0];
    e.handle(
        s(4),
        NmsInput::ControlResponse {
            id: answered,
            msg: Control::OfferReply {
                campaign: [1; 16],
                verdict: Verdict::Accept,
            },
        },
    );
    actions(&mut e);
    events(&mut e);
    // the process restarts: the heads that had not answered are offered again, the one
    // that accepted is not
    e.restarted(s(5));
    let again = offers(&actions(&mut e));
    let waiting: Vec<NodeId> = first[1..].iter().map(|(_, to)| *to).collect();
    assert_eq!(again.iter().map(|(_, to)| *to).collect::<Vec<_>>(), waiting);
    assert!(again.iter().all(|(id, _)| first.iter().all(|(f, _)| f != id)));
    // a response or failure of a request sent before the restart changes nothing
    for (id, _) in &first[1..] {
        e.handle(
            s(6),
            NmsInput::SendFailed {
                id: *id,
                reason: "connection closed".into(),
            },
        );
    }
    assert!(actions(&mut e).is_empty());
    for (_, to) in &first[1..] {
        assert_eq!(
            e.campaign(&[1; 16]).unwrap().nodes()[to].status,
            NodeStatus::Waiting
        );
    }
    assert_ne!(
        e.campaign(&[1; 16]).unwrap().nodes()[&head].status,
        NodeStatus::Waiting
    );
}

#[test]
fn unknown_campaigns_are_answered_as_such() {
    let (mut e, _) = running(&[A], 1);
    let req = e
        .handle(
            s(5),
            NmsInput::ChunkRequest {
                from: id(A),
                request: ChunkRequest {
                    campaign: [9; 16],
                    index: 3,
                    path: vec![id(A)],
                },
            },
        )
        .unwrap();
    assert_eq!(
        actions(&mut e),
        vec![NmsAction::AnswerChunk {
            req,
            response: ChunkResponse {
                campaign: [9; 16],
                index: 3,
                status: ChunkStatus::UnknownCampaign,
                data: Vec::new(),
            }
        }]
    );
    let req = e
        .handle(
            s(5),
            NmsInput::ControlRequest {
                from: id(A),
                msg: report(9, InstallOutcome::Installed),
            },
        )
        .unwrap();
    assert!(matches!(
        actions(&mut e).as_slice(),
        [NmsAction::AnswerControl { req: r, msg: Control::Error { .. } }] if *r == req
    ));
    let req = e
        .handle(
            s(5),
            NmsInput::ControlRequest {
                from: id(B),
                msg: Control::Probe {
                    nonce: 42,
                    campaign: None,
                },
            },
        )
        .unwrap();
    assert_eq!(
        actions(&mut e),
        vec![NmsAction::AnswerControl {
            req,
            msg: Control::ProbeReply {
                nonce: 42,
                state: None,
            }
        }]
    );
    assert!(events(&mut e).is_empty());
}

#[test]
fn a_request_from_a_non_addressee_is_refused_by_its_campaign() {
    let (mut e, _) = running(&[A], 1);
    let req = e
        .handle(
            s(5),
            NmsInput::ChunkRequest {
                from: id(B),
                request: ChunkRequest {
                    campaign: [1; 16],
                    index: 0,
                    path: vec![id(B)],
                },
            },
        )
        .unwrap();
    assert!(matches!(
        actions(&mut e).as_slice(),
        [NmsAction::AnswerChunk { req: r, response }] if *r == req && response.status == ChunkStatus::Refused
    ));
}

/// The pieces of campaign `tag` as the shell saved them.
fn saved_campaign(tag: u8, addressees: &[NodeId]) -> (SignedManifest, Manifest, CampaignSecret) {
    match prepared(0, tag, addressees) {
        NmsInput::Prepared {
            manifest,
            signed,
            secret,
            ..
        } => (signed, *manifest, secret),
        _ => unreachable!(),
    }
}

#[test]
fn a_restored_campaign_offers_again_only_where_unanswered_and_ends_on_the_reports() {
    // fanout 1 over A, B, C: A is the only first-tier head; it had failed (refused),
    // so the part passed to B, which had not answered when the NMS died
    let nodes = [id(A), id(B), id(C)];
    let (signed, manifest, secret) = saved_campaign(9, &nodes);
    let mut e = NmsEndpoint::new(s(0), cfg());
    let saved = [(id(A), NodeStatus::Failed("refused the offer".into()), 0)];
    assert!(e.restore(
        s(1),
        DropId(1),
        signed.clone(),
        manifest.clone(),
        secret.clone(),
        &saved
    ));
    let ev = events(&mut e);
    assert!(
        matches!(&ev[..], [NmsEvent::CampaignStarted { drop_id: DropId(1), manifest: m }] if **m == manifest)
    );
    let a = actions(&mut e);
    assert_eq!(
        offers(&a).iter().map(|(_, to)| *to).collect::<Vec<_>>(),
        vec![id(B)]
    );
    // the offer repeated is the very manifest signed before the restart
    assert!(
        a.iter().any(
            |a| matches!(a, NmsAction::SendControl { msg: Control::Offer(o), .. } if o.manifest == signed)
        )
    );
    // a second restore of the same campaign is refused
    assert!(!e.restore(
        s(1),
        DropId(2),
        signed.clone(),
        manifest.clone(),
        secret.clone(),
        &[]
    ));
    // the nodes authenticate against the same secret and report
    for n in [B, C] {
        e.handle(
            s(2),
            NmsInput::ControlRequest {
                from: id(n),
                msg: report(9, InstallOutcome::Installed),
            },
        );
    }
    let summary = actions(&mut e)
        .into_iter()
        .find_map(|a| match a {
            NmsAction::CampaignFinished { summary } => Some(summary),
            _ => None,
        })
        .expect("finished");
    assert_eq!(summary.installed, 2);
    assert_eq!(summary.failed().count(), 1);
}

#[test]
fn a_restored_campaign_whose_nodes_had_all_reported_ends_at_once() {
    let nodes = [id(A), id(B)];
    let (signed, manifest, secret) = saved_campaign(4, &nodes);
    let mut e = NmsEndpoint::new(s(0), cfg());
    let saved = [
        (id(A), NodeStatus::Installed, 0),
        (id(B), NodeStatus::Installed, 0),
    ];
    assert!(e.restore(s(1), DropId(1), signed, manifest, secret, &saved));
    let a = actions(&mut e);
    assert!(offers(&a).is_empty());
    assert!(
        a.iter()
            .any(|a| matches!(a, NmsAction::CampaignFinished { summary } if summary.installed == 2))
    );
}

fn finished(a: &[NmsAction]) -> Option<&CampaignSummary> {
    a.iter().find_map(|a| match a {
        NmsAction::CampaignFinished { summary } => Some(summary),
        _ => None,
    })
}

fn chunk_from_a(e: &mut NmsEndpoint, tag: u8) -> Vec<NmsAction> {
    e.handle(
        s(5),
        NmsInput::ChunkRequest {
            from: id(A),
            request: ChunkRequest {
                campaign: [tag; 16],
                index: 0,
                path: vec![id(A)],
            },
        },
    );
    actions(e)
}

#[test]
fn cancel_halts_stops_offers_and_chunks_and_ends_the_campaign() {
    // fanout 1 over A, B, C: one part [A, B, C] offered to A
    let (mut e, a) = running(&[A, B, C], 7);
    let c = [7; 16];
    let (offer_a, _) = offers(&a)[0];
    e.handle(
        s(4),
        NmsInput::ControlRequest {
            from: id(A),
            msg: report(7, InstallOutcome::Installed),
        },
    );
    actions(&mut e);
    events(&mut e);
    assert_eq!(e.cancel(s(5), &c), Ok(vec![id(B), id(C)]));
    let summary = finished(&actions(&mut e))
        .expect("cancel ends the campaign")
        .clone();
    assert_eq!(summary.installed, 1);
    assert_eq!(summary.halted.as_deref(), Some(CANCELLED));
    assert_eq!(summary.failed().count(), 0);
    let ev = events(&mut e);
    for n in [B, C] {
        assert!(ev.iter().any(|v| matches!(v,
            NmsEvent::NodeProgress { node, status: NodeStatus::Halted(r), .. } if *node == id(n) && r == CANCELLED)));
        // no deadline or probe is left for a halted node
        assert_eq!(e.campaign(&c).unwrap().watch_timer(&id(n)), None);
    }
    assert!(
        ev.iter()
            .any(|v| matches!(v, NmsEvent::CampaignHalted { reason, .. } if reason == CANCELLED))
    );
    assert!(ev.iter().any(|v| matches!(v, NmsEvent::CampaignDone { .. })));
    // no more chunks, no authentication, no offers (a late failure of A's offer would
    // otherwise pass its part on to B)
    let a = chunk_from_a(&mut e, 7);
    assert!(
        matches!(&a[..], [NmsAction::AnswerChunk { response, .. }] if response.status == ChunkStatus::Gated),
        "{a:?}"
    );
    e.handle(
        s(5),
        NmsInput::ControlRequest {
            from: id(B),
            msg: Control::Progress {
                campaign: c,
                phase: Phase::Receiving,
                verified: 10,
                source: None,
                parent: None,
                relay: None,
                fetched: Vec::new(),
            },
        },
    );
    actions(&mut e);
    assert_eq!(
        e.campaign(&c).unwrap().nodes()[&id(B)].status,
        NodeStatus::Halted(CANCELLED.into()),
        "a report of a halted node changes nothing"
    );
    e.handle(
        s(6),
        NmsInput::SendFailed {
            id: offer_a,
            reason: "gone".into(),
        },
    );
    assert!(offers(&actions(&mut e)).is_empty());
    // refused: twice, or a campaign not held
    assert_eq!(e.cancel(s(7), &c), Err(OperatorRefusal::Ended(hex(&c))));
    assert!(matches!(
        e.cancel(s(7), &[1; 16]),
        Err(OperatorRefusal::NotHeld(_))
    ));
    // the failure that came in while cancelled did not lose the part: a resume offers it
    e.resume(s(8), &c, 1500).unwrap();
    assert_eq!(
        offers(&actions(&mut e))
            .iter()
            .map(|(_, to)| *to)
            .collect::<Vec<_>>(),
        vec![id(B)]
    );
}

#[test]
fn resume_reopens_a_cancelled_campaign_where_unanswered_unless_expired() {
    let (mut e, _) = running(&[A, B, C], 7);
    let c = [7; 16];
    assert_eq!(e.resume(s(4), &c, 1500), Err(OperatorRefusal::Running(hex(&c))));
    e.handle(
        s(4),
        NmsInput::ControlRequest {
            from: id(A),
            msg: report(7, InstallOutcome::Installed),
        },
    );
    e.cancel(s(5), &c).unwrap();
    actions(&mut e);
    events(&mut e);
    // the manifest expires at 2000 (unix seconds)
    assert_eq!(e.resume(s(6), &c, 2000), Err(OperatorRefusal::Expired(hex(&c))));
    assert_eq!(e.resume(s(6), &c, 1500), Ok(vec![id(B), id(C)]));
    // A installed: the part goes out again from B, the first node still waiting
    let a = actions(&mut e);
    assert_eq!(
        offers(&a).iter().map(|(_, to)| *to).collect::<Vec<_>>(),
        vec![id(B)]
    );
    assert!(a.iter().any(
        |a| matches!(a, NmsAction::SendControl { msg: Control::Offer(o), .. }
        if o.part == vec![id(B), id(C)])
    ));
    assert!(events(&mut e).iter().any(|v| matches!(v,
        NmsEvent::NodeProgress { node, status: NodeStatus::Waiting, .. } if *node == id(C))));
    // it serves again, and ends on the reports
    let a = chunk_from_a(&mut e, 7);
    assert!(matches!(&a[..], [NmsAction::SendChunk { .. }]), "{a:?}");
    for n in [B, C] {
        e.handle(
            s(8),
            NmsInput::ControlRequest {
                from: id(n),
                msg: report(7, InstallOutcome::Installed),
            },
        );
    }
    assert_eq!(finished(&actions(&mut e)).expect("ended").installed, 3);
    // a campaign that ended by itself is not resumed
    assert_eq!(
        e.resume(s(9), &c, 1500),
        Err(OperatorRefusal::NotCancelled(hex(&c)))
    );
}

#[test]
fn a_campaign_cancelled_before_a_restart_is_resumed_from_its_saved_state() {
    let nodes = [id(A), id(B), id(C)];
    let (signed, manifest, secret) = saved_campaign(9, &nodes);
    let mut e = NmsEndpoint::new(s(0), cfg());
    let saved = [
        (id(A), NodeStatus::Installed, 10_000),
        (id(B), NodeStatus::Halted(CANCELLED.into()), 4096),
        (id(C), NodeStatus::Halted(CANCELLED.into()), 0),
    ];
    let r = e.resume_saved(
        s(1),
        DropId(1),
        signed.clone(),
        manifest.clone(),
        secret.clone(),
        &saved,
        1500,
    );
    assert_eq!(r, Ok(vec![id(B), id(C)]));
    let a = actions(&mut e);
    assert_eq!(
        offers(&a).iter().map(|(_, to)| *to).collect::<Vec<_>>(),
        vec![id(B)]
    );
    assert!(finished(&a).is_none());
    assert!(matches!(&events(&mut e)[0], NmsEvent::CampaignStarted { .. }));
    assert_eq!(e.campaign(&[9; 16]).unwrap().nodes()[&id(B)].verified, 4096);
    // a cancelled first-tier head keeps its part: it is offered it again first
    let (signed, manifest, secret) = saved_campaign(5, &nodes);
    let all_cancelled: Vec<_> = nodes
        .iter()
        .map(|n| (*n, NodeStatus::Halted(CANCELLED.into()), 0))
        .collect();
    let r = e.resume_saved(s(1), DropId(3), signed, manifest, secret, &all_cancelled, 1500);
    assert_eq!(r.unwrap().len(), 3);
    let a = actions(&mut e);
    assert!(
        a.iter().any(
            |a| matches!(a, NmsAction::SendControl { to, msg: Control::Offer(o), .. }
            if *to == id(A) && o.part == nodes)
        ),
        "{a:?}"
    );
    // one whose nodes all ended by themselves is not resumed, and not taken in
    let (signed, manifest, secret) = saved_campaign(4, &nodes);
    let done: Vec<_> = nodes.iter().map(|n| (*n, NodeStatus::Installed, 0)).collect();
    let r = e.resume_saved(s(2), DropId(2), signed, manifest, secret, &done, 1500);
    assert_eq!(r, Err(OperatorRefusal::NotCancelled(hex(&[4; 16]))));
    assert!(e.campaign(&[4; 16]).is_none());
}

/// Oversight: deadlines, probes, re-plans, the failure threshold, returning nodes and
/// nodes that trust another NMS. Package of 10 000 bytes; deadlines at a floor of
/// 1000 B/s, slack 2, at least 5 s; probes time out after 2 s, go 1 s after a failure, and
/// a node is unreachable once a probe fails 3 s or more after the first.
mod oversight {
    use super::*;
    use crate::monitor::Oversight;
    use crate::wire::{Holding, ProbeState};

    fn ocfg(halt_after: Option<FailureThreshold>) -> NmsConfig {
        NmsConfig {
            monitor: MonitorConfig {
                oversight: Oversight {
                    floor_rate: 1000,
                    min_wait: s(5),
                    slack: 2,
                    probe_timeout: s(2),
                    probe_interval: s(1),
                    probe_window: s(3),
                    hint_window: s(3),
                },
                ..MonitorConfig::default()
            },
            halt_after,
            ..cfg()
        }
    }

    /// `nodes` seen at 0, campaign `tag` with this fanout started at 3 s; returns the
    /// endpoint, the addressees in the manifest's order, and the first actions.
    fn start(nodes: &[u64], tag: u8, fanout: u8, c: NmsConfig) -> (NmsEndpoint, Vec<NodeId>, Vec<NmsAction>) {
        let mut e = NmsEndpoint::new(s(0), c);
        for n in nodes {
            e.handle(s(0), seen(*n, &[]));
        }
        e.handle(s(0), drop_ready(1));
        let a = run_until(&mut e, s(2));
        let (d, addressees) = prepares(&a).remove(0);
        e.handle(s(3), prepared_with(d.0, tag, &addressees, fanout));
        let a = actions(&mut e);
        events(&mut e);
        (e, addressees, a)
    }

    /// Sends a control request; returns its answer.
    fn req(e: &mut NmsEndpoint, at: Duration, from: NodeId, msg: Control) -> Control {
        req_a(e, at, from, msg).0
    }

    /// Sends a control request; returns its answer and every action that followed.
    fn req_a(e: &mut NmsEndpoint, at: Duration, from: NodeId, msg: Control) -> (Control, Vec<NmsAction>) {
        let r = e.handle(at, NmsInput::ControlRequest { from, msg }).unwrap();
        let a = actions(e);
        let answer = a
            .iter()
            .find_map(|a| match a {
                NmsAction::AnswerControl { req, msg } if *req == r => Some(msg.clone()),
                _ => None,
            })
            .expect("an answer");
        (answer, a)
    }

    fn summary_in(a: &[NmsAction]) -> Option<CampaignSummary> {
        a.iter().find_map(|a| match a {
            NmsAction::CampaignFinished { summary } => Some(summary.clone()),
            _ => None,
        })
    }

    fn progress(tag: u8, verified: u64, parent: Option<NodeId>) -> Control {
        Control::Progress {
            campaign: [tag; 16],
            phase: Phase::Receiving,
            verified,
            source: parent,
            parent,
            relay: None,
            fetched: Vec::new(),
        }
    }

    fn accept(tag: u8) -> Control {
        Control::OfferReply {
            campaign: [tag; 16],
            verdict: Verdict::Accept,
        }
    }

    fn status(e: &NmsEndpoint, tag: u8, n: NodeId) -> NodeStatus {
        e.campaign(&[tag; 16]).unwrap().nodes()[&n].status.clone()
    }

    /// Offers in `a` as (send id, to, part, path).
    fn offers_full(a: &[NmsAction]) -> Vec<(OutboundId, NodeId, Vec<NodeId>, Vec<NodeId>)> {
        a.iter()
            .filter_map(|a| match a {
                NmsAction::SendControl {
                    id,
                    to,
                    msg: Control::Offer(o),
                } => Some((*id, *to, o.part.clone(), o.path.clone())),
                _ => None,
            })
            .collect()
    }

    /// Fails every probe to `n` as the shell would (dial failure) until no timer is
    /// left before `until`; returns all actions.
    fn fail_probes_to(e: &mut NmsEndpoint, n: NodeId, until: Duration) -> Vec<NmsAction> {
        let mut all = Vec::new();
        while let Some(t) = e.poll_timeout().filter(|t| *t <= until) {
            e.handle(t, NmsInput::Timeout);
            let a = actions(e);
            for (id, to, _) in probes(&a) {
                if to == n {
                    e.handle(
                        t,
                        NmsInput::SendFailed {
                            id,
                            reason: "connection refused".into(),
                        },
                    );
                    all.extend(actions(e));
                }
            }
            all.extend(a);
        }
        all
    }

    /// A relay dies after its first report: nobody changes until its deadline; then it is
    /// probed 4 times (at 0, 1, 2 and 3 s), marked unreachable with the reason, and the part it had not served
    /// (a child never heard from) is offered by the NMS itself; the child it had served is
    /// left alone; the campaign ends with the relay unreachable.
    #[test]
    fn a_silent_relay_is_probed_at_its_deadline_then_unreachable_and_its_unserved_part_replanned() {
        let (mut e, list, a) = start(&[A, B, C, D, E], 1, 2, ocfg(None));
        // fanout 2: [n0 n1 n2] and [n3 n4]; n0 offers n1 and n2
        let [n0, n1, n2, n3, n4] = list[..] else {
            panic!("five addressees")
        };
        let firsts = offers_full(&a);
        assert_eq!(
            firsts.iter().map(|o| (o.1, o.2.clone())).collect::<Vec<_>>(),
            vec![(n0, vec![n0, n1, n2]), (n3, vec![n3, n4])]
        );
        for (id, ..) in &firsts {
            e.handle(
                s(3),
                NmsInput::ControlResponse {
                    id: *id,
                    msg: accept(1),
                },
            );
        }
        assert_eq!(req(&mut e, s(4), n0, progress(1, 4096, None)), Control::Ack);
        req(&mut e, s(4), n1, progress(1, 0, Some(n0)));
        // n3, n4 and n1 install; n2 never hears from n0
        for n in [n3, n4, n1] {
            req(&mut e, s(6), n, report(1, InstallOutcome::Installed));
        }
        events(&mut e);
        // deadline: last heard at 4 s + max(5 s, 2 × 5904 B / 1000 B/s) = 15.808 s
        let m = e.campaign(&[1; 16]).unwrap();
        assert_eq!(m.watch_timer(&n0), Some(ms(15_808)));
        // n2 was never heard: from the start, 3 s + 2 × depth 2 × 10 000 B / 1000 B/s
        assert_eq!(m.watch_timer(&n2), Some(s(43)));
        assert!(probes(&run_until(&mut e, ms(15_807))).is_empty());
        let a = fail_probes_to(&mut e, n0, s(30));
        let p = probes(&a);
        assert_eq!(p.len(), 4, "four probes: {p:?}");
        assert!(p.iter().all(|(_, to, _)| *to == n0));
        let ev = events(&mut e);
        assert!(ev.iter().any(|v| matches!(v,
            NmsEvent::NodeProbing { node, why, .. } if *node == n0 && why.contains("deadline"))));
        let reason = ev
            .iter()
            .find_map(|v| match v {
                NmsEvent::NodeUnreachable { node, reason, .. } if *node == n0 => Some(reason.clone()),
                _ => None,
            })
            .expect("n0 unreachable");
        assert!(reason.contains("4 probe(s) failed over 3.0 s"), "{reason}");
        assert!(matches!(status(&e, 1, n0), NodeStatus::Unreachable(_)));
        // the part n0 had not served: n2 only (n1 was heard), offered by the NMS
        let o = offers_full(&a);
        assert_eq!(
            o.iter()
                .map(|o| (o.1, o.2.clone(), o.3.clone()))
                .collect::<Vec<_>>(),
            vec![(n2, vec![n2], vec![n2])]
        );
        e.handle(
            s(20),
            NmsInput::ControlResponse {
                id: o[0].0,
                msg: accept(1),
            },
        );
        let (_, a) = req_a(&mut e, s(22), n2, report(1, InstallOutcome::Installed));
        let summary = summary_in(&a).expect("the campaign ends with n0 unreachable");
        assert_eq!(summary.installed, 4);
        assert_eq!(
            summary.unreachable().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![n0]
        );
        assert!(e.poll_timeout().is_none(), "nothing left to watch");
    }

    /// A probe that is answered changes nothing: no offers, the status stays, the bytes
    /// the node says it verified count, and the next deadline starts from the answer. A
    /// late failure of an earlier probe is not taken for the current one's.
    #[test]
    fn an_answered_probe_changes_nothing_but_the_deadline() {
        let (mut e, list, a) = start(&[A, B], 2, 1, ocfg(None));
        let [n0, n1] = list[..] else { panic!() };
        let (o, _) = offers(&a)[0];
        e.handle(
            s(3),
            NmsInput::ControlResponse {
                id: o,
                msg: accept(2),
            },
        );
        req(&mut e, s(4), n0, progress(2, 1000, None));
        req(&mut e, s(4), n1, progress(2, 0, Some(n0)));
        req(&mut e, s(20), n1, progress(2, 5000, Some(n0)));
        events(&mut e);
        // n0's deadline: 4 s + 2 × 9000 B / 1000 B/s; n1's: 20 s + 2 × 5000 B / 1000 B/s
        assert_eq!(e.campaign(&[2; 16]).unwrap().watch_timer(&n1), Some(s(30)));
        let a = run_until(&mut e, s(22));
        let p = probes(&a);
        assert_eq!(p.iter().map(|p| p.1).collect::<Vec<_>>(), vec![n0]);
        let (first, ..) = p[0];
        // the first probe times out at 24 s, the second goes 1 s later
        assert!(probes(&run_until(&mut e, s(24))).is_empty());
        let a = run_until(&mut e, s(25));
        let p = probes(&a);
        assert_eq!(p.iter().map(|p| p.1).collect::<Vec<_>>(), vec![n0]);
        let (id, _, nonce) = p[0];
        // the shell reports the first probe failed only now: the second is still out
        e.handle(
            ms(25_200),
            NmsInput::SendFailed {
                id: first,
                reason: "timed out".into(),
            },
        );
        assert_eq!(e.campaign(&[2; 16]).unwrap().watch_timer(&n0), Some(s(27)));
        e.handle(
            ms(25_500),
            NmsInput::ControlResponse {
                id,
                msg: Control::ProbeReply {
                    nonce,
                    state: Some(ProbeState {
                        campaign: [2; 16],
                        holding: Holding::Running {
                            phase: Phase::Receiving,
                            verified: 8000,
                        },
                    }),
                },
            },
        );
        let a = actions(&mut e);
        assert!(offers(&a).is_empty() && probes(&a).is_empty(), "{a:?}");
        let m = e.campaign(&[2; 16]).unwrap();
        assert!(!m.probing(&n0));
        assert_eq!(m.nodes()[&n0].status, NodeStatus::Receiving);
        assert_eq!(m.nodes()[&n0].verified, 8000);
        // 25.5 s + max(5 s, 2 × 2000 B / 1000 B/s)
        assert_eq!(m.watch_timer(&n0), Some(ms(30_500)));
        assert!(
            !events(&mut e)
                .iter()
                .any(|v| matches!(v, NmsEvent::NodeUnreachable { .. } | NmsEvent::NodeFailed { .. }))
        );
        // n1, still sending progress, was never probed
        req(&mut e, s(26), n1, progress(2, 6000, Some(n0)));
        assert!(!e.campaign(&[2; 16]).unwrap().probing(&n1));
    }

    /// Defect (issue 9): a relay's report about a child marked the child failed at once,
    /// and 3 of 8 healthy nodes were once failed that way. Now it is a hint: the NMS
    /// probes the child; a healthy child stays, and is offered the campaign directly if it
    /// does not hold it (its relay re-planned the rest of its part, so it gets a one-node
    /// part); it then installs.
    #[test]
    fn a_trouble_report_is_checked_by_probing_and_a_healthy_child_stays() {
        let (mut e, list, a) = start(&[A, B, C], 3, 1, ocfg(None));
        let [n0, n1, n2] = list[..] else { panic!() };
        let (o, _) = offers(&a)[0];
        e.handle(
            s(3),
            NmsInput::ControlResponse {
                id: o,
                msg: accept(3),
            },
        );
        let (answer, a) = req_a(
            &mut e,
            s(4),
            n0,
            Control::Trouble {
                campaign: [3; 16],
                node: n1,
                reason: "unreachable: timed out".into(),
            },
        );
        assert_eq!(answer, Control::Ack);
        assert_eq!(status(&e, 3, n1), NodeStatus::Waiting, "a hint, not a verdict");
        let ev = events(&mut e);
        assert!(!ev.iter().any(|v| matches!(v, NmsEvent::NodeFailed { .. })));
        assert!(ev.iter().any(|v| matches!(v,
            NmsEvent::NodeProbing { node, why, .. } if *node == n1 && why.contains("reported by"))));
        let p = probes(&a);
        assert_eq!(p.iter().map(|p| p.1).collect::<Vec<_>>(), vec![n1]);
        let (id, _, nonce) = p[0];
        e.handle(
            s(4),
            NmsInput::ControlResponse {
                id,
                msg: Control::ProbeReply {
                    nonce,
                    state: Some(ProbeState {
                        campaign: [3; 16],
                        holding: Holding::No,
                    }),
                },
            },
        );
        let o = offers_full(&actions(&mut e));
        assert_eq!(
            o.iter().map(|o| (o.1, o.2.clone())).collect::<Vec<_>>(),
            vec![(n1, vec![n1])],
            "n0 re-planned n2, so n1 gets a one-node part"
        );
        e.handle(
            s(5),
            NmsInput::ControlResponse {
                id: o[0].0,
                msg: accept(3),
            },
        );
        assert_eq!(status(&e, 3, n1), NodeStatus::Receiving);
        for n in [n0, n1, n2] {
            req(&mut e, s(6), n, report(3, InstallOutcome::Installed));
        }
        assert!(e.campaign(&[3; 16]).unwrap().is_done());
        assert_eq!(e.campaign(&[3; 16]).unwrap().counts(), (3, 0, 3));
    }

    /// The same report about a child that is really gone: the probes fail, the child is
    /// unreachable, and the NMS offers nothing (the relay re-planned the child's part).
    #[test]
    fn a_trouble_report_about_a_dead_child_ends_unreachable_without_a_second_replan() {
        let (mut e, list, a) = start(&[A, B, C], 4, 1, ocfg(None));
        let [n0, n1, n2] = list[..] else { panic!() };
        let (o, _) = offers(&a)[0];
        e.handle(
            s(3),
            NmsInput::ControlResponse {
                id: o,
                msg: accept(4),
            },
        );
        let r = e
            .handle(
                s(4),
                NmsInput::ControlRequest {
                    from: n0,
                    msg: Control::Trouble {
                        campaign: [4; 16],
                        node: n1,
                        reason: "unreachable".into(),
                    },
                },
            )
            .unwrap();
        let a = actions(&mut e);
        assert!(
            a.iter()
                .any(|a| matches!(a, NmsAction::AnswerControl { req, .. } if *req == r))
        );
        let (id, ..) = probes(&a)[0];
        e.handle(
            s(4),
            NmsInput::SendFailed {
                id,
                reason: "refused".into(),
            },
        );
        let mut all = actions(&mut e);
        all.extend(fail_probes_to(&mut e, n1, s(8)));
        assert!(offers(&all).is_empty(), "{all:?}");
        assert!(matches!(status(&e, 4, n1), NodeStatus::Unreachable(r) if r.contains("reported by")));
        for n in [n0, n2] {
            req(&mut e, s(9), n, report(4, InstallOutcome::Installed));
        }
        assert!(e.campaign(&[4; 16]).unwrap().is_done());
    }

    /// With `--halt-after 40%` of 5 addressees, the second failure halts the campaign:
    /// every node not installed or installing is halted with the reason, an event says
    /// why, halted nodes cannot authenticate (so cannot install), a node already
    /// authenticated still installs, and the campaign ends with the reason in its summary.
    #[test]
    fn the_failure_threshold_halts_the_campaign_and_says_why() {
        let (mut e, list, _) = start(&[A, B, C, D, E], 5, 1, ocfg(Some("40%".parse().unwrap())));
        let [n0, n1, n2, n3, n4] = list[..] else { panic!() };
        // n0 installing (authenticated); compute its code as its path [n0] gives it
        let secret = CampaignSecret([5; 32]);
        let m = e.campaign(&[5; 16]).unwrap().manifest().clone();
        let token = secret.root_token(&m.campaign).child(&n0);
        let ok = req(
            &mut e,
            s(4),
            n0,
            Control::AuthRequest {
                campaign: [5; 16],
                path: vec![n0],
                root: m.root,
                code: token.auth_code(&m.campaign, &m.root),
            },
        );
        assert!(matches!(ok, Control::AuthReply { ok: true, .. }));
        req(&mut e, s(4), n1, progress(5, 100, Some(n0)));
        let failed = |why: &str| report(5, InstallOutcome::Failed { reason: why.into() });
        req(&mut e, s(5), n2, failed("disk full"));
        assert!(e.campaign(&[5; 16]).unwrap().halted().is_none(), "1 of 5 is 20%");
        req(&mut e, s(6), n3, failed("install command exited 1"));
        let ev = events(&mut e);
        let reason = ev
            .iter()
            .find_map(|v| match v {
                NmsEvent::CampaignHalted { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .expect("halted");
        assert!(
            reason.contains("2 of 5") && reason.contains("--halt-after 40%"),
            "{reason}"
        );
        for n in [n1, n4] {
            assert_eq!(status(&e, 5, n), NodeStatus::Halted(reason.clone()));
        }
        assert_eq!(status(&e, 5, n0), NodeStatus::Authenticated);
        // a halted node that asks to install is refused with the reason
        let no = req(
            &mut e,
            s(7),
            n1,
            Control::AuthRequest {
                campaign: [5; 16],
                path: vec![n0, n1],
                root: m.root,
                code: [0; 32],
            },
        );
        assert!(matches!(no, Control::AuthReply { ok: false, reason, .. } if reason.contains("halted")));
        let (_, a) = req_a(&mut e, s(8), n0, report(5, InstallOutcome::Installed));
        let summary = summary_in(&a).expect("the campaign ends");
        assert_eq!(summary.halted.as_deref(), Some(reason.as_str()));
        assert_eq!(
            summary
                .nodes
                .iter()
                .filter(|o| o.status == NodeStatus::Halted(reason.clone()))
                .count(),
            2
        );
        let k = e.campaign(&[5; 16]).unwrap();
        assert!(k.is_done());
        assert_eq!(status(&e, 5, n0), NodeStatus::Installed);
        assert!(e.poll_timeout().is_none());
    }

    #[test]
    fn the_operator_resumes_a_campaign_the_threshold_halted() {
        let (mut e, list, _) = start(&[A, B, C, D, E], 5, 1, ocfg(Some("40%".parse().unwrap())));
        let [n0, n1, n2, n3, n4] = list[..] else { panic!() };
        let failed = |why: &str| report(5, InstallOutcome::Failed { reason: why.into() });
        req(&mut e, s(4), n0, report(5, InstallOutcome::Installed));
        req(&mut e, s(5), n2, failed("disk full"));
        let (_, a) = req_a(&mut e, s(6), n3, failed("install command exited 1"));
        // halted, and ended: every node is settled
        assert!(summary_in(&a).is_some_and(|s| s.halted.is_some()));
        assert!(e.campaign(&[5; 16]).unwrap().is_done());
        events(&mut e);
        assert_eq!(e.resume(s(7), &[5; 16], 1500), Ok(vec![n1, n4]));
        let a = actions(&mut e);
        // the NMS's part [n0..n4] goes out again from n1, its first waiting node
        assert_eq!(
            offers_full(&a)
                .into_iter()
                .map(|(_, to, part, _)| (to, part))
                .collect::<Vec<_>>(),
            vec![(n1, vec![n1, n2, n3, n4])]
        );
        let k = e.campaign(&[5; 16]).unwrap();
        assert!(!k.is_done() && k.halted().is_none());
        for n in [n1, n4] {
            assert_eq!(status(&e, 5, n), NodeStatus::Waiting);
            assert!(k.watch_timer(&n).is_some(), "{n} has no deadline again");
        }
        assert!(events(&mut e).iter().any(|v| matches!(v,
            NmsEvent::NodeProgress { node, status: NodeStatus::Waiting, .. } if *node == n4)));
        // the threshold still counts the failures from before: the next one halts again
        req(&mut e, s(8), n1, failed("no space"));
        assert_eq!(
            status(&e, 5, n4).reason().map(|r| r.contains("3 of 5")),
            Some(true)
        );
        // resumed again, the last one installs and the campaign ends, not halted
        assert_eq!(e.resume(s(9), &[5; 16], 1500), Ok(vec![n4]));
        actions(&mut e);
        let (_, a) = req_a(&mut e, s(10), n4, report(5, InstallOutcome::Installed));
        let summary = summary_in(&a).expect("the campaign ends");
        assert_eq!((summary.installed, summary.halted), (2, None));
        assert!(e.poll_timeout().is_none());
    }

    #[test]
    fn failure_thresholds_parse_and_count() {
        assert_eq!("3".parse(), Ok(FailureThreshold::Count(3)));
        assert_eq!(" 10% ".parse(), Ok(FailureThreshold::Percent(10)));
        for bad in ["0", "0%", "101%", "-1", "ten", "%", ""] {
            let e = bad.parse::<FailureThreshold>().unwrap_err();
            assert!(e.contains("failure threshold") && e.contains("10%"), "{e}");
        }
        let t = FailureThreshold::Percent(10);
        assert!(!t.reached(0, 5), "no failure never halts");
        assert!(t.reached(1, 5) && t.reached(1, 10) && !t.reached(1, 11));
        assert!(!FailureThreshold::Count(2).reached(1, 100));
        assert!(FailureThreshold::Count(2).reached(2, 100));
        assert_eq!(FailureThreshold::Percent(10).to_string(), "10%");
    }

    /// A first-tier node that is gone: its offer fails, the rest is re-planned at once,
    /// the probes fail, it is unreachable and the campaign ends. When discovery sees it
    /// again it is offered the campaign directly with a one-node part, installs, and the
    /// summary is reported again. An expired campaign is not offered.
    #[test]
    fn a_returning_unreachable_node_gets_the_package() {
        let mut c = ocfg(None);
        c.unix_origin = 1_000; // the manifest expires at 2000
        let (mut e, list, a) = start(&[A, B], 6, 1, c);
        let [n0, n1] = list[..] else { panic!() };
        let (o, _) = offers(&a)[0];
        e.handle(
            s(3),
            NmsInput::SendFailed {
                id: o,
                reason: "dial failure".into(),
            },
        );
        let a = actions(&mut e);
        let re = offers_full(&a);
        assert_eq!(
            re.iter().map(|o| (o.1, o.2.clone())).collect::<Vec<_>>(),
            vec![(n1, vec![n1])]
        );
        let (id, ..) = probes(&a)[0];
        e.handle(
            s(3),
            NmsInput::SendFailed {
                id,
                reason: "dial failure".into(),
            },
        );
        fail_probes_to(&mut e, n0, s(10));
        assert!(matches!(status(&e, 6, n0), NodeStatus::Unreachable(_)));
        e.handle(
            s(11),
            NmsInput::ControlResponse {
                id: re[0].0,
                msg: accept(6),
            },
        );
        let (_, first) = req_a(&mut e, s(12), n1, report(6, InstallOutcome::Installed));
        assert_eq!(summary_in(&first).expect("ends with n0 unreachable").installed, 1);
        events(&mut e);
        // it comes back
        e.handle(s(100), NmsInput::NodeLost { id: n0 });
        e.handle(s(200), seen_id(n0));
        let o = offers_full(&actions(&mut e));
        assert_eq!(
            o.iter()
                .map(|o| (o.1, o.2.clone(), o.3.clone()))
                .collect::<Vec<_>>(),
            vec![(n0, vec![n0], vec![n0])]
        );
        // discovery refreshing it meanwhile does not offer twice
        e.handle(s(200), seen_id(n0));
        assert!(offers(&actions(&mut e)).is_empty());
        e.handle(
            s(201),
            NmsInput::ControlResponse {
                id: o[0].0,
                msg: accept(6),
            },
        );
        assert_eq!(status(&e, 6, n0), NodeStatus::Receiving);
        let (_, again) = req_a(&mut e, s(205), n0, report(6, InstallOutcome::Installed));
        let summary = summary_in(&again).expect("the summary again");
        assert!(summary.all_installed());
        assert!(
            events(&mut e)
                .iter()
                .any(|v| matches!(v, NmsEvent::CampaignDone { .. }))
        );

        // an expired campaign is not offered to a returning node
        let mut c = ocfg(None);
        c.unix_origin = 1_990;
        let (mut e, list, a) = start(&[A, B], 7, 1, c);
        let [n0, _] = list[..] else { panic!() };
        let (o, _) = offers(&a)[0];
        e.handle(
            s(3),
            NmsInput::SendFailed {
                id: o,
                reason: "dial failure".into(),
            },
        );
        actions(&mut e);
        fail_probes_to(&mut e, n0, s(9));
        assert!(matches!(status(&e, 7, n0), NodeStatus::Unreachable(_)));
        e.handle(s(10), NmsInput::NodeLost { id: n0 });
        e.handle(s(11), seen_id(n0));
        assert!(offers(&actions(&mut e)).is_empty(), "expired at 2000, now 2001");
    }

    fn seen_id(n: NodeId) -> NmsInput {
        NmsInput::NodeSeen {
            id: n,
            tags: Vec::new(),
            role: PeerRole::Node,
            version: PROTOCOL_VERSION,
            relay: None,
        }
    }

    /// A node that refuses as untrusted trusts another NMS: recorded as such (not failed),
    /// listed, and not an addressee of the next campaign; once it re-appears (or accepts
    /// an offer) it is addressed again.
    #[test]
    fn a_node_trusting_another_nms_is_not_addressed() {
        let (mut e, list, a) = start(&[A, B], 8, 2, ocfg(None));
        let [n0, n1] = list[..] else { panic!() };
        let o = offers_full(&a);
        let to1 = o.iter().find(|o| o.1 == n1).unwrap().0;
        e.handle(
            s(4),
            NmsInput::ControlResponse {
                id: to1,
                msg: Control::OfferReply {
                    campaign: [8; 16],
                    verdict: Verdict::Refuse {
                        reason: RefuseReason::Untrusted,
                        detail: "signed by an NMS this node does not trust".into(),
                    },
                },
            },
        );
        assert!(matches!(status(&e, 8, n1), NodeStatus::TrustsOther(_)));
        let ev = events(&mut e);
        assert!(
            ev.iter()
                .any(|v| matches!(v, NmsEvent::NodeTrustsOtherNms { node, .. } if *node == n1))
        );
        assert!(!ev.iter().any(|v| matches!(v, NmsEvent::NodeFailed { .. })));
        assert!(e.trusting_other().contains_key(&n1));
        assert_eq!(e.eligible(), vec![n0]);
        // the next drop is addressed to n0 only
        e.handle(s(10), drop_ready(2));
        let p = prepares(&actions(&mut e));
        assert_eq!(p[0].1, vec![n0]);
        e.handle(s(10), prepared(p[0].0.0, 9, &p[0].1));
        actions(&mut e);
        // a discovery refresh changes nothing; leaving and re-appearing does
        e.handle(s(20), seen_id(n1));
        assert_eq!(e.eligible(), vec![n0]);
        e.handle(s(21), NmsInput::NodeLost { id: n1 });
        e.handle(s(22), seen_id(n1));
        assert!(e.trusting_other().is_empty());
        assert_eq!(e.eligible().len(), 2);
    }
}

/// Late joiners: nodes that were no addressee of a package's latest campaign get a
/// follow-up of the same version, batched over one settle window.
mod late {
    use super::*;

    fn follow_ups(a: &[NmsAction]) -> Vec<(DropId, CampaignId, Vec<NodeId>)> {
        a.iter()
            .filter_map(|a| match a {
                NmsAction::FollowUp {
                    drop_id,
                    leaves: _,
                    of,
                    addressees,
                } => Some((*drop_id, *of, addressees.clone())),
                _ => None,
            })
            .collect()
    }

    fn sorted(ns: &[u64]) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = ns.iter().map(|n| id(*n)).collect();
        v.sort();
        v
    }

    /// The follow-up the shell would sign: version `seq` (as [`prepared`] makes it), a new
    /// campaign id `[tag; 16]`.
    fn follow_up_prepared(d: DropId, seq: u8, tag: u8, addressees: &[NodeId]) -> NmsInput {
        let NmsInput::Prepared { mut manifest, .. } = prepared(d.0, seq, addressees) else {
            unreachable!()
        };
        manifest.campaign = [tag; 16];
        let signed = SignedManifest::sign(&manifest, &keypair_from_seed(100)).unwrap();
        NmsInput::Prepared {
            drop_id: d,
            manifest,
            signed,
            secret: CampaignSecret([tag; 32]),
        }
    }

    fn manifest_of(seq: u8, addressees: &[NodeId]) -> Manifest {
        let NmsInput::Prepared { manifest, .. } = prepared(0, seq, addressees) else {
            unreachable!()
        };
        *manifest
    }

    #[test]
    fn nodes_appearing_together_share_one_follow_up() {
        let (mut e, _) = running(&[A], 1);
        e.handle(s(10), seen(B, &[]));
        e.handle(s(11), seen(C, &[]));
        // the window restarts with C: nothing at 12, one follow-up for both at 13
        assert!(follow_ups(&run_until(&mut e, s(12))).is_empty());
        let f = follow_ups(&run_until(&mut e, s(13)));
        assert_eq!(f.len(), 1, "{f:?}");
        let (d, of, nodes) = f[0].clone();
        assert!(d.is_follow_up());
        assert_eq!((of, nodes.clone()), ([1; 16], sorted(&[B, C])));
        // D appears while it is being prepared: not in it, and waits for it
        e.handle(s(14), seen(D, &[]));
        assert!(follow_ups(&run_until(&mut e, s(30))).is_empty());
        e.handle(s(31), follow_up_prepared(d, 1, 21, &nodes));
        let a = actions(&mut e);
        assert_eq!(offers(&a).len(), 1, "the follow-up offers its first tier");
        let ev = events(&mut e);
        assert!(ev.iter().any(|v| matches!(
            v,
            NmsEvent::CampaignStarted { drop_id, manifest } if *drop_id == d && manifest.sequence == 1
        )));
        // then D gets its own, at once: the settle window from its appearance passed
        assert_eq!(e.poll_timeout(), Some(s(31)));
        let f = follow_ups(&run_until(&mut e, s(31)));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].2, vec![id(D)]);
        // nothing more: refreshes of addressees change nothing, no periodic wake-up
        e.handle(s(40), seen(B, &[]));
        e.handle(s(40), seen(A, &[]));
        assert!(follow_ups(&run_until(&mut e, s(100))).is_empty());
    }

    #[test]
    fn addressees_and_known_holders_get_none_an_older_holder_does() {
        let (mut e, _) = running(&[A, B], 1);
        e.know_installed(s(4), id(C), "pkg", 1);
        e.know_installed(s(4), id(D), "pkg", 0);
        e.know_installed(s(4), id(E), "other", 5);
        // an addressee leaving and coming back is the oversight's business, not a late joiner
        e.handle(s(10), NmsInput::NodeLost { id: id(A) });
        e.handle(s(11), seen(A, &[]));
        e.handle(s(11), seen(C, &[]));
        e.handle(s(11), seen(D, &[]));
        e.handle(s(11), seen(E, &[]));
        let f = follow_ups(&run_until(&mut e, s(20)));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].2, sorted(&[D, E]));
    }

    #[test]
    fn expired_stopped_or_halted_versions_get_none() {
        // expired: the manifest expires at 2000
        let mut c = cfg();
        c.unix_origin = 1_990;
        let mut e = NmsEndpoint::new(s(0), c);
        e.handle(s(0), seen(A, &[]));
        e.handle(s(0), drop_ready(1));
        let (d, nodes) = prepares(&run_until(&mut e, s(2))).remove(0);
        e.handle(s(3), prepared(d.0, 1, &nodes));
        e.handle(s(5), seen(B, &[]));
        assert_eq!(e.poll_timeout().map(|t| t <= s(7)), Some(true), "still unexpired");
        e.handle(s(6), seen(C, &[]));
        // the window ends at 8; at unix 1998 it is unexpired: a follow-up
        assert_eq!(follow_ups(&run_until(&mut e, s(8))).len(), 1);
        // another node after the expiry: none
        e.handle(s(20), seen(D, &[]));
        assert!(follow_ups(&run_until(&mut e, s(100))).is_empty());

        // stopped (the shell says a cancelled campaign is the latest): none
        let mut e = NmsEndpoint::new(s(0), cfg());
        e.remember(s(0), &manifest_of(3, &[id(A)]), true);
        e.handle(s(0), seen(B, &[]));
        assert!(follow_ups(&run_until(&mut e, s(100))).is_empty());
        assert_eq!(e.poll_timeout(), None);

        // halted: none
        let mut c = cfg();
        c.halt_after = Some(FailureThreshold::Count(1));
        let mut e = NmsEndpoint::new(s(0), c);
        e.handle(s(0), seen(A, &[]));
        e.handle(s(0), drop_ready(1));
        let (d, nodes) = prepares(&run_until(&mut e, s(2))).remove(0);
        e.handle(s(3), prepared(d.0, 1, &nodes));
        let r = e.handle(
            s(4),
            NmsInput::ControlRequest {
                from: id(A),
                msg: report(
                    1,
                    InstallOutcome::Failed {
                        reason: "disk".into(),
                    },
                ),
            },
        );
        assert!(r.is_some());
        assert!(e.campaign(&[1; 16]).unwrap().halted().is_some());
        e.handle(s(5), seen(B, &[]));
        assert!(follow_ups(&run_until(&mut e, s(100))).is_empty());
    }

    #[test]
    fn a_cancel_stops_follow_ups_and_a_resume_brings_them_back() {
        // A and B addressees, B not done yet: the cancel halts B
        let (mut e, _) = running(&[A, B], 1);
        e.handle(
            s(4),
            NmsInput::ControlRequest {
                from: id(A),
                msg: report(1, InstallOutcome::Installed),
            },
        );
        e.cancel(s(5), &[1; 16]).unwrap();
        e.handle(s(6), seen(C, &[]));
        assert!(follow_ups(&run_until(&mut e, s(30))).is_empty());
        assert_eq!(e.resume(s(31), &[1; 16], 1500), Ok(vec![id(B)]));
        let f = follow_ups(&run_until(&mut e, s(40)));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].1, f[0].2.clone()), ([1; 16], vec![id(C)]));
    }

    #[test]
    fn a_campaign_resumed_after_a_restart_is_no_longer_stopped() {
        // the shell told of it as cancelled at start, then the operator resumes it
        let nodes = [id(A), id(B)];
        let mut e = NmsEndpoint::new(s(0), cfg());
        let (signed, manifest, secret) = saved_campaign(9, &nodes);
        e.remember(s(0), &manifest, true);
        e.handle(s(0), seen(C, &[]));
        assert!(follow_ups(&run_until(&mut e, s(10))).is_empty());
        let saved = [
            (id(A), NodeStatus::Installed, 10_000),
            (id(B), NodeStatus::Halted(CANCELLED.into()), 0),
        ];
        let r = e.resume_saved(s(11), DropId(1), signed, manifest, secret, &saved, 1500);
        assert_eq!(r, Ok(vec![id(B)]));
        let f = follow_ups(&run_until(&mut e, s(20)));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].2, vec![id(C)]);
    }

    #[test]
    fn the_latest_version_counts_also_when_remembered_at_start() {
        // at start the shell tells of ended campaigns: versions 1 and 2 (2 to A and a
        // follow-up of 2 to B), and that C holds 2
        let mut e = NmsEndpoint::new(s(0), cfg());
        e.remember(s(0), &manifest_of(1, &[id(A), id(B), id(C), id(D)]), false);
        e.remember(s(0), &manifest_of(2, &[id(A)]), false);
        let mut f2 = manifest_of(2, &[id(B)]);
        f2.campaign = [22; 16];
        e.remember(s(0), &f2, false);
        e.know_installed(s(0), id(C), "pkg", 2);
        for n in [A, B, C, D] {
            e.handle(s(1), seen(n, &[]));
        }
        let f = follow_ups(&run_until(&mut e, s(100)));
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].1, f[0].2.clone()), ([2; 16], vec![id(D)]));
        // its preparation fails: said, and not asked again until D re-appears
        e.handle(
            s(101),
            NmsInput::PrepareFailed {
                drop_id: f[0].0,
                reason: "the copy was removed".into(),
            },
        );
        assert!(events(&mut e).iter().any(|v| matches!(
            v,
            NmsEvent::DropFailed { reason, .. } if reason.contains("the copy was removed")
        )));
        assert!(follow_ups(&run_until(&mut e, s(200))).is_empty());
        e.handle(s(201), NmsInput::NodeLost { id: id(D) });
        e.handle(s(202), seen(D, &[]));
        assert_eq!(follow_ups(&run_until(&mut e, s(300))).len(), 1);
    }

    /// A node offered a version it holds already refuses as `installed`: the NMS counts it
    /// installed (not failed), and the campaign ends with every node installed.
    #[test]
    fn a_node_holding_the_version_counts_as_installed() {
        let (mut e, a) = running(&[A], 1);
        let (o, _) = offers(&a)[0];
        e.handle(
            s(4),
            NmsInput::ControlResponse {
                id: o,
                msg: Control::OfferReply {
                    campaign: [1; 16],
                    verdict: Verdict::Refuse {
                        reason: RefuseReason::Installed,
                        detail: "campaign ... is already over on this node (pkg sequence 1 is installed)"
                            .into(),
                    },
                },
            },
        );
        let a = actions(&mut e);
        let done = a
            .iter()
            .find_map(|a| match a {
                NmsAction::CampaignFinished { summary } => Some(summary.clone()),
                _ => None,
            })
            .expect("the campaign ends");
        assert!(done.all_installed(), "{done:?}");
        assert!(
            !events(&mut e)
                .iter()
                .any(|v| matches!(v, NmsEvent::NodeFailed { .. }))
        );
    }
}

// ---------- relay gating (issue 10) ----------

fn seen_relay(n: u64, relay: RelayHint) -> NmsInput {
    NmsInput::NodeSeen {
        id: id(n),
        tags: Vec::new(),
        role: PeerRole::Node,
        version: PROTOCOL_VERSION,
        relay: Some(relay),
    }
}

/// `n`'s progress report in campaign 1 saying its relaying is gated.
fn says_gated(n: u64) -> NmsInput {
    NmsInput::ControlRequest {
        from: id(n),
        msg: Control::Progress {
            campaign: [1; 16],
            phase: Phase::Receiving,
            verified: 0,
            source: None,
            parent: None,
            relay: Some(RelayHint::Gated),
            fetched: Vec::new(),
        },
    }
}

fn relaying(list: &[NodeId], fanout: u8, leaves: u32) -> Vec<NodeId> {
    let leaf: Vec<NodeId> = list[list.len() - leaves as usize..].to_vec();
    let tree = crate::plan::Tree::plan(list, fanout, &|n| leaf.contains(n));
    let mut v: Vec<NodeId> = tree.parent.values().flatten().copied().collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn nodes_that_advertise_gated_or_restricted_relaying_are_planned_at_the_leaves() {
    let nodes: Vec<u64> = (1..=8).collect();
    let mut e = NmsEndpoint::new(s(0), cfg());
    for n in &nodes {
        e.handle(s(0), seen(*n, &[]));
    }
    e.handle(s(0), drop_ready(1));
    let (_, plain) = prepares(&run_until(&mut e, s(2))).remove(0);
    let plain_relays = relaying(&plain, 2, 0);
    assert_eq!(plain_relays.len(), 4, "8 nodes, fanout 2: 4 relays");
    // two of the plain plan's relays now say they are gated, one restricted
    let mut e = NmsEndpoint::new(s(0), cfg());
    let gated = [plain_relays[0], plain_relays[1]];
    let restricted = plain_relays[2];
    for n in &nodes {
        let hint = if gated.contains(&id(*n)) {
            RelayHint::Gated
        } else if id(*n) == restricted {
            RelayHint::Restricted
        } else {
            RelayHint::Open
        };
        e.handle(s(0), seen_relay(*n, hint));
    }
    e.handle(s(0), drop_ready(1));
    let a = run_until(&mut e, s(2));
    let (_, ordered) = prepares(&a).remove(0);
    let leaves = a
        .iter()
        .find_map(|a| match a {
            NmsAction::Prepare { leaves, .. } => Some(*leaves),
            _ => None,
        })
        .unwrap();
    assert_eq!(leaves, 2, "the two gated nodes are leaf-only");
    let mut tail = ordered[6..].to_vec();
    tail.sort();
    let mut g = gated.to_vec();
    g.sort();
    assert_eq!(tail, g, "at the end of the list");
    let mut sorted = ordered.clone();
    sorted.sort();
    assert_eq!(sorted, plain, "the same addressees");
    let relays = relaying(&ordered, 2, leaves);
    for g in gated.iter().chain([&restricted]) {
        assert!(!relays.contains(g), "{g} relays in {ordered:?}");
    }
}

#[test]
fn a_progress_report_teaches_the_nms_a_node_s_relay_state_for_later_plans() {
    let (mut e, _) = running(&[A, B, C, D], 1);
    assert_eq!(e.relay_hint(&id(A)), None);
    e.handle(s(4), says_gated(A));
    assert_eq!(e.relay_hint(&id(A)), Some(RelayHint::Gated));
    assert_eq!(
        e.campaign(&[1; 16]).unwrap().nodes()[&id(A)].relay,
        Some(RelayHint::Gated)
    );
}

#[test]
fn a_hand_back_is_offered_by_the_nms_and_only_for_the_relay_s_own_waiting_nodes() {
    // fanout 1 (a chain A -> B -> C -> D): A hands back B, C, D
    let mut e = NmsEndpoint::new(s(0), cfg());
    for n in [A, B, C, D, E] {
        e.handle(s(0), seen(n, &[]));
    }
    e.handle(s(0), drop_ready(1));
    let (d, _) = prepares(&run_until(&mut e, s(2))).remove(0);
    let chain = vec![id(A), id(B), id(C), id(D)];
    e.handle(s(3), prepared_with(d.0, 1, &chain, 1));
    let first = offers(&actions(&mut e));
    assert_eq!(first.iter().map(|o| o.1).collect::<Vec<_>>(), vec![id(A)]);
    // A says it is gated; then hands back its part (E is no addressee, B twice)
    e.handle(s(4), says_gated(A));
    actions(&mut e);
    e.handle(
        s(64),
        NmsInput::ControlRequest {
            from: id(A),
            msg: Control::HandBack {
                campaign: [1; 16],
                nodes: vec![id(B), id(C), id(D), id(E), id(B), id(A)],
            },
        },
    );
    let a = actions(&mut e);
    let to: Vec<NodeId> = offers(&a).iter().map(|o| o.1).collect();
    assert_eq!(to, vec![id(B)], "the NMS offers the chain's rest from its head");
    let part = a.iter().find_map(|a| match a {
        NmsAction::SendControl {
            msg: Control::Offer(o),
            ..
        } => Some(o.part.clone()),
        _ => None,
    });
    assert_eq!(part, Some(vec![id(B), id(C), id(D)]));
    assert!(events(&mut e).iter().any(|v| matches!(
        v,
        NmsEvent::RelayHandedBack { node, nodes: 3, .. } if *node == id(A)
    )));
    // a second hand-back of the same nodes changes nothing: they were offered
    e.handle(
        s(65),
        NmsInput::ControlRequest {
            from: id(A),
            msg: Control::HandBack {
                campaign: [1; 16],
                nodes: vec![id(B), id(C), id(D)],
            },
        },
    );
    assert!(offers(&actions(&mut e)).is_empty());
    // B cannot hand back nodes of a part that is not its own
    e.handle(
        s(66),
        NmsInput::ControlRequest {
            from: id(C),
            msg: Control::HandBack {
                campaign: [1; 16],
                nodes: vec![id(B)],
            },
        },
    );
    assert!(offers(&actions(&mut e)).is_empty());
}

#[test]
fn nodes_held_by_a_gated_relay_get_the_grace_period_before_they_are_probed() {
    let mut e = NmsEndpoint::new(s(0), cfg());
    for n in [A, B, C] {
        e.handle(s(0), seen(n, &[]));
    }
    e.handle(s(0), drop_ready(1));
    let (d, _) = prepares(&run_until(&mut e, s(2))).remove(0);
    e.handle(s(3), prepared_with(d.0, 1, &[id(A), id(B), id(C)], 1));
    actions(&mut e);
    let before = e.campaign(&[1; 16]).unwrap().watch_timer(&id(B)).unwrap();
    e.handle(s(3), says_gated(A));
    let after = e.campaign(&[1; 16]).unwrap().watch_timer(&id(B)).unwrap();
    let grace = Duration::from_secs(u64::from(RelayPolicy::default().grace_secs));
    assert_eq!(after, before + grace, "B waits the grace period more");
    let c = e.campaign(&[1; 16]).unwrap().watch_timer(&id(C)).unwrap();
    assert!(c >= before + grace, "and so does C, below B");
}
