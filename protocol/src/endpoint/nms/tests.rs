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
    }
}

fn seen(n: u64, tags: &[&str]) -> NmsInput {
    NmsInput::NodeSeen {
        id: id(n),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        role: PeerRole::Node,
        version: PROTOCOL_VERSION,
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
    let key = keypair_from_seed(100);
    let data = vec![tag; 10_000];
    let mut h = PackageHasher::new(4096);
    h.update(&data);
    let (size, hashes, root) = h.finish();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        campaign: [tag; 16],
        nms: NodeId::of(&key),
        name: "pkg".into(),
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
            fanout: 1,
            transfer: Transfer::CutThrough,
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
            NmsAction::Prepare { drop_id, addressees } => Some((*drop_id, addressees.clone())),
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
        },
    );
    e.handle(
        s(0),
        NmsInput::NodeSeen {
            id: id(E),
            tags: vec!["edge".into()],
            role: PeerRole::Nms,
            version: PROTOCOL_VERSION,
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
    e.handle(s(12), prepared(d.0, 2, &addressees));
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

    // campaign 1's offer could not be delivered
    e.handle(
        s(15),
        NmsInput::SendFailed {
            id: o1,
            reason: "dial failure".into(),
        },
    );
    assert!(events(&mut e).iter().any(|v| matches!(
        v,
        NmsEvent::NodeFailed { campaign, .. } if *campaign == [1; 16]
    )));
    let a = actions(&mut e);
    assert_eq!(offers(&a).len(), 1, "campaign 1 re-plans too");
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
                msg: Control::Probe { nonce: 42 },
            },
        )
        .unwrap();
    assert_eq!(
        actions(&mut e),
        vec![NmsAction::AnswerControl {
            req,
            msg: Control::ProbeReply { nonce: 42 }
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
fn cancel_stops_offers_chunks_and_authentication_and_ends_the_campaign() {
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
    assert_eq!(
        summary.failed().collect::<Vec<_>>(),
        vec![(&id(B), CANCELLED), (&id(C), CANCELLED)]
    );
    let ev = events(&mut e);
    for n in [B, C] {
        assert!(ev.iter().any(|v| matches!(v,
            NmsEvent::NodeProgress { node, status: NodeStatus::Failed(r), .. } if *node == id(n) && r == CANCELLED)));
    }
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
            },
        },
    );
    assert!(matches!(&actions(&mut e)[..],
        [NmsAction::AnswerControl { msg: Control::Error { reason }, .. }] if reason == CANCELLED));
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
        (id(B), NodeStatus::Failed(CANCELLED.into()), 4096),
        (id(C), NodeStatus::Failed(CANCELLED.into()), 0),
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
        .map(|n| (*n, NodeStatus::Failed(CANCELLED.into()), 0))
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
