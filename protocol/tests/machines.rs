//! The node and NMS state machines driven by hand, one event at a time, without the
//! simulator: each test feeds a few events and checks the exact actions.
//!
//! The node under test is `N`, third tier: path `[A, B, N]`, part `[N, P, Q]` (so with
//! fanout 2 its children are `P` and `Q`), chunk sources `B`, then `A`, then the NMS.

use std::time::Duration;

use baton_protocol::chunk::{ChunkSet, PackageHasher};
use baton_protocol::gate::RelayHint;
use baton_protocol::id::{NodeId, fake_id, keypair_from_seed};
use baton_protocol::keys::{CampaignSecret, HopToken};
use baton_protocol::manifest::{
    HashList, MANIFEST_FORMAT, Manifest, PlanParams, RelayPolicy, SignedManifest, Transfer, VerifyContext,
};
use baton_protocol::monitor::{CampaignMonitor, MonitorAction, MonitorConfig, MonitorNote, NodeStatus};
use baton_protocol::receiver::{NodeAction, NodeCampaign, NodeConfig, Note, check_offer};
use baton_protocol::serve::{RequestId, ServeAction};
use baton_protocol::wire::{
    ChunkRequest, ChunkResponse, ChunkStatus, Control, ControlKind, InstallOutcome, Offer, Phase,
    RefuseReason, Verdict,
};

const A: u64 = 1;
const B: u64 = 2;
const N: u64 = 3;
const P: u64 = 4;
const Q: u64 = 5;
const CHUNK: u32 = 4096;
const SIZE: usize = 2 * CHUNK as usize + 100; // three chunks, the last one short

fn id(n: u64) -> NodeId {
    fake_id(n)
}

fn t(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

struct World {
    nms: NodeId,
    trusted: Vec<NodeId>,
    secret: CampaignSecret,
    manifest: Manifest,
    signed: SignedManifest,
    data: Vec<u8>,
}

fn world(addressees: &[u64], transfer: Transfer, offline_install: bool) -> World {
    let key = keypair_from_seed(100);
    let nms = NodeId::of(&key);
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    let mut h = PackageHasher::new(CHUNK);
    h.update(&data);
    let (size, hashes, root) = h.finish();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        campaign: [0xc0; 16],
        nms,
        name: "frobnicator".into(),
        version: "2.4.1".into(),
        file: "frobnicator-2.4.1.tar.gz".into(),
        sequence: 7,
        size,
        chunk_size: CHUNK,
        chunk_hashes: HashList(hashes),
        root,
        created_at: 1000,
        expires_at: 2000,
        relay: RelayPolicy::default(),
        plan: PlanParams {
            fanout: 2,
            transfer,
            leaves: 0,
        },
        offline_install,
        self_update: false,
        addressees: addressees.iter().copied().map(id).collect(),
    };
    let signed = SignedManifest::sign(&manifest, &key).unwrap();
    World {
        nms,
        trusted: vec![nms],
        secret: CampaignSecret([0x5e; 32]),
        manifest,
        signed,
        data,
    }
}

fn node_world() -> World {
    world(&[A, B, N, P, Q], Transfer::CutThrough, false)
}

impl World {
    fn campaign(&self) -> [u8; 16] {
        self.manifest.campaign
    }

    fn token(&self, path: &[NodeId]) -> HopToken {
        self.secret.root_token(&self.campaign()).along(path)
    }

    fn offer(&self, path: &[u64], part: &[u64]) -> Offer {
        let path: Vec<NodeId> = path.iter().copied().map(id).collect();
        Offer {
            manifest: self.signed.clone(),
            part: part.iter().copied().map(id).collect(),
            token: self.token(&path),
            path,
        }
    }

    fn ctx(&self, me: u64) -> VerifyContext<'_> {
        VerifyContext {
            trusted: &self.trusted,
            unix_now: 1500,
            installed: None,
            me: Some(id(me)),
        }
    }

    fn plain(&self, index: u32) -> Vec<u8> {
        let l = self.manifest.layout().unwrap();
        let s = l.offset(index) as usize;
        self.data[s..s + l.len(index) as usize].to_vec()
    }

    /// Chunk `index` sealed for the node at the end of `path`.
    fn sealed(&self, path: &[u64], index: u32) -> ChunkResponse {
        let path: Vec<NodeId> = path.iter().copied().map(id).collect();
        let mut data = self.plain(index);
        self.token(&path)
            .chunk_key()
            .seal(&self.campaign(), index, &mut data);
        ChunkResponse {
            campaign: self.campaign(),
            index,
            status: ChunkStatus::Ok,
            data,
        }
    }

    fn request(&self, path: &[u64], index: u32) -> ChunkRequest {
        ChunkRequest {
            campaign: self.campaign(),
            index,
            path: path.iter().copied().map(id).collect(),
        }
    }
}

fn cfg() -> NodeConfig {
    NodeConfig {
        window: 2,
        max_faults: 2,
        auth_attempts: 2,
        progress_interval: t(1000),
        ..NodeConfig::default()
    }
}

/// `N` accepts the offer from `B` (after `check_offer`), at time 0.
fn node_n(w: &World) -> NodeCampaign {
    accept_n(w, &[N, P, Q], RelayHint::Open)
}

/// `N` accepts the offer of part `part` from `B`, on the path `[A, B, N]`, at time 0,
/// its relaying in state `relay`.
fn accept_n(w: &World, part: &[u64], relay: RelayHint) -> NodeCampaign {
    let offer = w.offer(&[A, B, N], part);
    let m = check_offer(&offer, &id(B), &w.ctx(N)).expect("a good offer");
    let count = m.layout().unwrap().count();
    NodeCampaign::accept(t(0), id(N), offer, m, cfg(), ChunkSet::new(count), relay)
}

fn drain(c: &mut NodeCampaign) -> Vec<NodeAction> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn drain_monitor(m: &mut CampaignMonitor) -> Vec<MonitorAction> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

fn send(to: NodeId, msg: Control) -> NodeAction {
    NodeAction::Send { to, msg }
}

/// `N` asks `to` for chunk `index`.
fn ask_from(w: &World, to: NodeId, index: u32) -> NodeAction {
    NodeAction::RequestChunk {
        to,
        req: w.request(&[A, B, N], index),
    }
}

fn ask(w: &World, to: u64, index: u32) -> NodeAction {
    ask_from(w, id(to), index)
}

/// `N` receives every chunk from `B` and the shell stores each one.
fn receive_all(w: &World, c: &mut NodeCampaign) -> Vec<NodeAction> {
    let mut actions = drain(c);
    for i in 0..3 {
        c.chunk_response(t(1), id(B), w.sealed(&[A, B, N], i));
    }
    // the shell carries out the writes and confirms each
    while let Some(a) = c.poll_action() {
        if let NodeAction::Store { index, .. } = a {
            c.chunk_stored(t(1), index);
        }
        actions.push(a);
    }
    actions
}

/// `N` receives every chunk from `B`, then is told its file hashes right.
fn receive_and_hash(w: &World, c: &mut NodeCampaign) -> Vec<NodeAction> {
    drain(c);
    let actions = receive_all(w, c);
    assert_eq!(actions.last(), Some(&NodeAction::HashFile));
    assert_eq!(c.phase(), Phase::Verifying);
    c.file_hashed(t(2), w.manifest.root);
    drain(c)
}

/// The NMS answers every report `N` sent it, and `P` and `Q` accept their offers: what
/// `N`'s relaying waits for besides its children's receipts.
fn settle(w: &World, c: &mut NodeCampaign, now: Duration) {
    for _ in 0..5 {
        c.response(now, w.nms, Control::Ack);
    }
    for child in [P, Q] {
        c.response(
            now,
            id(child),
            Control::OfferReply {
                campaign: w.campaign(),
                verdict: Verdict::Accept,
            },
        );
    }
}

/// `P` and `Q` accept the offers `N` sent them.
fn accept_offers(w: &World, c: &mut NodeCampaign, now: Duration) {
    for child in [P, Q] {
        c.response(
            now,
            id(child),
            Control::OfferReply {
                campaign: w.campaign(),
                verdict: Verdict::Accept,
            },
        );
    }
    drain(c);
}

// ---------- the node ----------

#[test]
fn accept_offers_children_reports_and_fills_the_window() {
    let w = node_world();
    let mut c = node_n(&w);
    let child_offer = |k: u64| {
        let o = w.offer(&[A, B, N, k], &[k]);
        assert_eq!(o.token, w.token(&[id(A), id(B), id(N)]).child(&id(k)));
        send(id(k), Control::Offer(Box::new(o)))
    };
    assert_eq!(
        drain(&mut c),
        vec![
            child_offer(P),
            child_offer(Q),
            send(
                w.nms,
                Control::Progress {
                    campaign: w.campaign(),
                    phase: Phase::Receiving,
                    verified: 0,
                    source: Some(id(B)),
                    parent: Some(id(B)),
                    relay: Some(RelayHint::Open),
                    fetched: Vec::new(),
                }
            ),
            ask(&w, B, 0),
            ask(&w, B, 1),
        ]
    );
    assert_eq!(
        (c.phase(), c.parent(), c.current_source()),
        (Phase::Receiving, Some(id(B)), id(B))
    );
}

#[test]
fn a_good_chunk_is_stored_and_releases_a_held_child_request() {
    let w = node_world();
    let mut c = node_n(&w);
    drain(&mut c);
    // P asks for chunk 0 before N has it: held (long poll), nothing to do yet
    c.chunk_request(t(1), RequestId(1), id(P), &w.request(&[A, B, N, P], 0));
    assert_eq!(drain(&mut c), vec![]);
    c.chunk_response(t(1), id(B), w.sealed(&[A, B, N], 0));
    let p_key = w.token(&[id(A), id(B), id(N), id(P)]).chunk_key();
    // verified, but not servable before the shell confirms the write
    assert_eq!(
        drain(&mut c),
        vec![
            NodeAction::Store {
                index: 0,
                data: w.plain(0)
            },
            ask(&w, B, 2),
        ]
    );
    assert_eq!(c.verified_bytes(), 0);
    c.chunk_stored(t(1), 0);
    assert_eq!(
        drain(&mut c),
        vec![NodeAction::Serve(ServeAction::SendChunk {
            req: RequestId(1),
            to: id(P),
            index: 0,
            key: p_key.clone(),
        })]
    );
    // a chunk N has is served at once; a path that does not end with the sender is refused
    c.chunk_request(t(1), RequestId(2), id(P), &w.request(&[A, B, N, P], 0));
    c.chunk_request(t(1), RequestId(3), id(Q), &w.request(&[A, B, N, P], 0));
    assert_eq!(
        drain(&mut c),
        vec![
            NodeAction::Serve(ServeAction::SendChunk {
                req: RequestId(2),
                to: id(P),
                index: 0,
                key: p_key,
            }),
            NodeAction::Serve(ServeAction::Answer {
                req: RequestId(3),
                index: 0,
                status: ChunkStatus::Refused
            }),
        ]
    );
    assert_eq!(c.verified_bytes(), u64::from(CHUNK));
}

#[test]
fn a_chunk_sealed_with_the_wrong_key_is_a_fault_and_is_asked_again() {
    let w = node_world();
    let mut c = node_n(&w);
    drain(&mut c);
    // sealed for B (its own hop key), not for N
    c.chunk_response(t(1), id(B), w.sealed(&[A, B], 0));
    let actions = drain(&mut c);
    assert!(
        matches!(&actions[..], [
            NodeAction::Note(Note::SourceFault { source, index: 0, reason }),
        ] if *source == id(B) && reason.contains("authentication")),
        "{actions:?}"
    );
    assert_eq!((c.total_faults(), c.have().count()), (1, 0));
    // asked again after a short pause (back-off: at most retry_base the first time)
    let again = c.poll_timeout().unwrap();
    assert!(again > t(1) && again <= t(1) + cfg().retry_base, "{again:?}");
    c.timeout(again);
    // while B fails, one request at a time: chunk 1 is still out
    assert_eq!(drain(&mut c), vec![]);
    // a good chunk from B: full speed again
    c.chunk_response(again, id(B), w.sealed(&[A, B, N], 1));
    let asked: Vec<u32> = chunk_requests(&drain(&mut c))
        .iter()
        .map(|(_, r)| r.index)
        .collect();
    assert_eq!(asked, vec![0, 2]);
}

#[test]
fn after_max_faults_the_source_moves_up_to_the_grandparent_then_the_nms() {
    let w = node_world();
    let mut c = node_n(&w);
    drain(&mut c);
    for _ in 0..2 {
        c.chunk_response(t(1), id(B), w.sealed(&[A, B], 0));
    }
    let actions = drain(&mut c);
    assert_eq!(
        actions[actions.len() - 3..],
        [
            NodeAction::Note(Note::SwitchedSource {
                from: id(B),
                to: id(A)
            }),
            ask(&w, A, 0),
            ask(&w, A, 1),
        ]
    );
    // A does not answer: both requests time out, two faults, on to the NMS
    c.timeout(t(1) + cfg().request_timeout);
    let actions = drain(&mut c);
    assert!(actions.contains(&NodeAction::Note(Note::SwitchedSource {
        from: id(A),
        to: w.nms
    })));
    assert_eq!(
        actions[actions.len() - 2..],
        [ask_from(&w, w.nms, 0), ask_from(&w, w.nms, 1)]
    );
    assert_eq!(c.current_source(), w.nms);
    // the NMS seals with N's key too (it derives N's token from its own), and N takes it
    c.chunk_response(t(70), w.nms, w.sealed(&[A, B, N], 0));
    assert!(matches!(drain(&mut c)[0], NodeAction::Store { index: 0, .. }));
}

#[test]
fn store_and_forward_offers_children_only_once_the_file_is_hashed() {
    let w = world(&[A, B, N, P, Q], Transfer::StoreAndForward, false);
    let mut c = node_n(&w);
    let first = drain(&mut c);
    assert!(
        !first.iter().any(|a| matches!(
            a,
            NodeAction::Send {
                msg: Control::Offer(_),
                ..
            }
        )),
        "{first:?}"
    );
    assert_eq!(first[1..], [ask(&w, B, 0), ask(&w, B, 1)]);
    // a child's request for a chunk N holds is still held until the whole file is verified
    c.chunk_response(t(1), id(B), w.sealed(&[A, B, N], 0));
    c.chunk_stored(t(1), 0);
    c.chunk_request(t(1), RequestId(9), id(P), &w.request(&[A, B, N, P], 0));
    assert!(!drain(&mut c).iter().any(|a| matches!(a, NodeAction::Serve(_))));

    let after = receive_and_hash(&w, &mut c);
    let n_path = vec![id(A), id(B), id(N)];
    let campaign = w.campaign();
    let root = w.manifest.root;
    assert_eq!(
        after,
        vec![
            NodeAction::Note(Note::Verified),
            NodeAction::Serve(ServeAction::SendChunk {
                req: RequestId(9),
                to: id(P),
                index: 0,
                key: w.token(&[id(A), id(B), id(N), id(P)]).chunk_key(),
            }),
            send(id(P), Control::Offer(Box::new(w.offer(&[A, B, N, P], &[P])))),
            send(id(Q), Control::Offer(Box::new(w.offer(&[A, B, N, Q], &[Q])))),
            send(id(B), Control::Receipt { campaign, root }),
            send(
                w.nms,
                Control::Progress {
                    campaign,
                    phase: Phase::Authenticating,
                    verified: SIZE as u64,
                    source: Some(id(B)),
                    parent: Some(id(B)),
                    relay: Some(RelayHint::Open),
                    fetched: vec![(id(B), SIZE as u64)],
                }
            ),
            send(
                w.nms,
                Control::AuthRequest {
                    campaign,
                    path: n_path.clone(),
                    root,
                    code: w.token(&n_path).auth_code(&campaign, &root),
                }
            ),
        ]
    );
    assert_eq!(c.phase(), Phase::Authenticating);
}

#[test]
fn a_file_that_hashes_wrong_fails_the_install() {
    let w = node_world();
    let mut c = node_n(&w);
    drain(&mut c);
    receive_all(&w, &mut c);
    c.file_hashed(t(2), [0; 32]);
    assert!(matches!(
        &drain(&mut c)[..],
        [NodeAction::Send {
            msg: Control::InstallReport {
                outcome: InstallOutcome::Failed { .. },
                ..
            },
            ..
        }]
    ));
    assert_eq!(c.phase(), Phase::Failed);
    // nobody pulls from it: its relaying is over once its reports and offers are answered
    settle(&w, &mut c, t(2));
    assert_eq!(drain(&mut c), vec![NodeAction::RelayDone]);
}

/// The frame a shell sends for a [`ServeAction::Answer`] of `N` (protocol.md 6.2).
fn answer_frame(w: &World, a: &NodeAction) -> ChunkResponse {
    match a {
        NodeAction::Serve(ServeAction::Answer { index, status, .. }) => ChunkResponse {
            campaign: w.campaign(),
            index: *index,
            status: *status,
            data: Vec::new(),
        },
        other => panic!("not an answer: {other:?}"),
    }
}

/// `P`, child of `N`: path `[A, B, N, P]`, sources `N`, `B`, `A`, the NMS. It holds chunk 0
/// already (resumed), so its requests are for chunks 1 and 2 and a wrong index in an
/// answer matches nothing in flight.
fn node_p(w: &World) -> NodeCampaign {
    let offer = w.offer(&[A, B, N, P], &[P]);
    let m = check_offer(&offer, &id(N), &w.ctx(P)).expect("a good offer");
    let mut have = ChunkSet::new(m.layout().unwrap().count());
    have.insert(0);
    NodeCampaign::accept(t(0), id(P), offer, m, cfg(), have, RelayHint::Open)
}

fn chunk_requests(actions: &[NodeAction]) -> Vec<(NodeId, ChunkRequest)> {
    actions
        .iter()
        .filter_map(|a| match a {
            NodeAction::RequestChunk { to, req } => Some((*to, req.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn answers_carry_the_requested_index_and_the_requester_reacts_at_once() {
    let w = node_world();
    let mut n = node_n(&w);
    drain(&mut n);
    let mut p = node_p(&w);
    let asked = chunk_requests(&drain(&mut p));
    assert_eq!(
        asked.iter().map(|(to, r)| (*to, r.index)).collect::<Vec<_>>(),
        vec![(id(N), 1), (id(N), 2)]
    );

    // N has neither chunk: it holds both requests, then answers NotYet when the hold ends
    for (k, (_, r)) in asked.iter().enumerate() {
        n.chunk_request(t(1), RequestId(k as u64), id(P), r);
    }
    assert_eq!(drain(&mut n), vec![]);
    let hold_end = t(1) + cfg().hold;
    n.timeout(hold_end);
    let answers: Vec<NodeAction> = drain(&mut n)
        .into_iter()
        .filter(|a| matches!(a, NodeAction::Serve(_)))
        .collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    for a in &answers {
        let f = answer_frame(&w, a);
        assert_eq!(f.status, ChunkStatus::NotYet);
        let NodeAction::Serve(ServeAction::Answer { req, .. }) = a else {
            unreachable!()
        };
        assert_eq!(f.index, asked[req.0 as usize].1.index, "the index of the request");
        p.chunk_response(hold_end, id(N), f);
    }
    // P asks again at once, not after its request timeout
    let again = chunk_requests(&drain(&mut p));
    let mut again_idx: Vec<(NodeId, u32)> = again.iter().map(|(to, r)| (*to, r.index)).collect();
    again_idx.sort();
    assert_eq!(again_idx, vec![(id(N), 1), (id(N), 2)]);
    assert_eq!(p.poll_timeout(), Some(hold_end + cfg().request_timeout));

    // N's owner gates relaying: N answers Gated, and P moves to B at once, without a fault
    n.set_gated(hold_end, true);
    for (k, (_, r)) in again.iter().enumerate() {
        n.chunk_request(hold_end, RequestId(10 + k as u64), id(P), r);
    }
    let answers = drain(&mut n);
    assert_eq!(answers.len(), 2, "{answers:?}");
    for a in &answers {
        let f = answer_frame(&w, a);
        assert_eq!(f.status, ChunkStatus::Gated);
        p.chunk_response(hold_end, id(N), f);
    }
    let actions = drain(&mut p);
    assert!(
        actions.contains(&NodeAction::Note(Note::SwitchedSource {
            from: id(N),
            to: id(B)
        })),
        "{actions:?}"
    );
    let mut moved: Vec<(NodeId, u32)> = chunk_requests(&actions)
        .iter()
        .map(|(to, r)| (*to, r.index))
        .collect();
    moved.sort();
    assert_eq!(moved, vec![(id(B), 1), (id(B), 2)]);
    assert_eq!((p.current_source(), p.total_faults()), (id(B), 0));
}

#[test]
fn a_chunk_that_failed_to_store_is_never_served_and_fails_the_campaign() {
    let w = node_world();
    let mut c = node_n(&w);
    drain(&mut c);
    // P waits for chunks 0 and 1 (held)
    c.chunk_request(t(1), RequestId(1), id(P), &w.request(&[A, B, N, P], 0));
    c.chunk_request(t(1), RequestId(2), id(P), &w.request(&[A, B, N, P], 1));
    c.chunk_response(t(1), id(B), w.sealed(&[A, B, N], 0));
    c.chunk_response(t(1), id(B), w.sealed(&[A, B, N], 1));
    let actions = drain(&mut c);
    let served: Vec<&NodeAction> = actions
        .iter()
        .filter(|a| matches!(a, NodeAction::Serve(_)))
        .collect();
    assert!(
        served.is_empty(),
        "served before the write was confirmed: {served:?}"
    );
    assert!(actions.contains(&NodeAction::Store {
        index: 1,
        data: w.plain(1)
    }));
    // chunk 0 was written: served; chunk 1 was not: the campaign fails
    c.chunk_stored(t(1), 0);
    assert!(matches!(
        &drain(&mut c)[..],
        [NodeAction::Serve(ServeAction::SendChunk {
            req: RequestId(1),
            index: 0,
            ..
        })]
    ));
    let reason = "No space left on device (os error 28)";
    c.store_failed(t(1), 1, reason);
    let actions = drain(&mut c);
    assert_eq!(
        actions,
        vec![
            // the held request is sent elsewhere at once
            NodeAction::Serve(ServeAction::Answer {
                req: RequestId(2),
                index: 1,
                status: ChunkStatus::Gated
            }),
            send(
                w.nms,
                Control::InstallReport {
                    campaign: w.campaign(),
                    outcome: InstallOutcome::Failed {
                        reason: format!("cannot store chunk 1: {reason}")
                    }
                }
            ),
        ]
    );
    assert_eq!(c.phase(), Phase::Failed);
    assert!(!c.have().contains(1));
    assert_eq!(c.verified_bytes(), u64::from(CHUNK));
    // a failed store serves nothing more, not even chunks it stored; pulls nothing more
    c.chunk_request(t(2), RequestId(3), id(P), &w.request(&[A, B, N, P], 1));
    c.chunk_request(t(2), RequestId(4), id(P), &w.request(&[A, B, N, P], 0));
    c.chunk_response(t(2), id(B), w.sealed(&[A, B, N], 2));
    c.chunk_stored(t(2), 1);
    c.store_failed(t(2), 2, reason);
    assert_eq!(
        drain(&mut c),
        vec![
            NodeAction::Serve(ServeAction::Answer {
                req: RequestId(3),
                index: 1,
                status: ChunkStatus::Gated
            }),
            NodeAction::Serve(ServeAction::Answer {
                req: RequestId(4),
                index: 0,
                status: ChunkStatus::Gated
            }),
        ]
    );
    // waits for nothing but the answers to its offers (inputs, no timer), then the end of
    // relaying (it answers Gated until then)
    assert_eq!(c.poll_timeout(), None);
    accept_offers(&w, &mut c, t(2));
    assert_eq!(
        c.poll_timeout(),
        Some(t(2) + baton_protocol::receiver::RELAY_LINGER)
    );
    c.set_gated(t(3), false); // the owner's gate does not reopen it
    c.chunk_request(t(3), RequestId(5), id(P), &w.request(&[A, B, N, P], 0));
    assert!(matches!(
        &drain(&mut c)[..],
        [NodeAction::Serve(ServeAction::Answer {
            status: ChunkStatus::Gated,
            ..
        })]
    ));
}

#[test]
fn a_failed_whole_file_hash_fails_the_campaign() {
    for transfer in [Transfer::CutThrough, Transfer::StoreAndForward] {
        let w = world(&[A, B, N, P, Q], transfer, false);
        let mut c = node_n(&w);
        drain(&mut c);
        let actions = receive_all(&w, &mut c);
        assert_eq!(actions.last(), Some(&NodeAction::HashFile));
        assert_eq!(c.phase(), Phase::Verifying);
        c.chunk_request(t(2), RequestId(1), id(P), &w.request(&[A, B, N, P], 0));
        drain(&mut c);
        c.hash_failed(t(3), "Input/output error (os error 5)");
        let actions = drain(&mut c);
        assert_eq!(c.phase(), Phase::Failed, "{transfer:?}");
        let report = actions.iter().find_map(|a| match a {
            NodeAction::Send {
                to,
                msg:
                    Control::InstallReport {
                        outcome: InstallOutcome::Failed { reason },
                        ..
                    },
            } if *to == w.nms => Some(reason.clone()),
            _ => None,
        });
        assert_eq!(
            report.as_deref(),
            Some("cannot read the stored package back to check it: Input/output error (os error 5)")
        );
        // no receipt, no auth; the children are sent elsewhere, and are offered (S&F)
        assert!(!actions.iter().any(|a| matches!(
            a,
            NodeAction::Send {
                msg: Control::Receipt { .. } | Control::AuthRequest { .. },
                ..
            }
        )));
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, NodeAction::Serve(ServeAction::SendChunk { .. })))
        );
        if transfer == Transfer::StoreAndForward {
            assert!(actions.contains(&NodeAction::Serve(ServeAction::Answer {
                req: RequestId(1),
                index: 0,
                status: ChunkStatus::Gated
            })));
            for k in [P, Q] {
                assert!(actions.contains(&send(
                    id(k),
                    Control::Offer(Box::new(w.offer(&[A, B, N, k], &[k])))
                )));
            }
        }
        // waits for nothing but the answers to its offers (inputs, no timer), then the end
        // of relaying (it answers Gated until then)
        assert_eq!(c.poll_timeout(), None);
        accept_offers(&w, &mut c, t(3));
        assert_eq!(
            c.poll_timeout(),
            Some(t(2) + baton_protocol::receiver::RELAY_LINGER)
        );
        // a late hash result changes nothing
        c.file_hashed(t(4), w.manifest.root);
        assert_eq!(drain(&mut c), vec![]);
    }
}

#[test]
fn an_auth_reply_ok_installs() {
    let w = node_world();
    let mut c = node_n(&w);
    receive_and_hash(&w, &mut c);
    let reply = |ok| Control::AuthReply {
        campaign: w.campaign(),
        ok,
        reason: String::new(),
    };
    // only the NMS can acknowledge
    c.response(t(3), id(B), reply(true));
    assert_eq!(drain(&mut c), vec![]);
    c.response(t(3), w.nms, reply(true));
    assert_eq!(
        drain(&mut c),
        vec![NodeAction::Note(Note::Authenticated), NodeAction::Install]
    );
    assert_eq!(c.phase(), Phase::Installing);
    c.install_done(t(4), InstallOutcome::Installed);
    assert_eq!(
        drain(&mut c),
        vec![send(
            w.nms,
            Control::InstallReport {
                campaign: w.campaign(),
                outcome: InstallOutcome::Installed
            }
        )]
    );
    assert_eq!(c.phase(), Phase::Installed);
    assert_eq!(c.outcome(), Some(&InstallOutcome::Installed));
}

#[test]
fn an_auth_reply_refused_fails_without_installing() {
    let w = node_world();
    let mut c = node_n(&w);
    receive_and_hash(&w, &mut c);
    c.response(
        t(3),
        w.nms,
        Control::AuthReply {
            campaign: w.campaign(),
            ok: false,
            reason: "forged".into(),
        },
    );
    let actions = drain(&mut c);
    assert!(
        matches!(&actions[..], [NodeAction::Send { to, msg: Control::InstallReport { outcome: InstallOutcome::Failed { reason }, .. } }]
            if *to == w.nms && reason.contains("forged")),
        "{actions:?}"
    );
    assert_eq!(c.phase(), Phase::Failed);
}

#[test]
fn an_unreachable_nms_is_retried_then_fails_or_installs_offline() {
    for offline in [false, true] {
        let w = world(&[A, B, N, P, Q], Transfer::CutThrough, offline);
        let mut c = node_n(&w);
        receive_and_hash(&w, &mut c); // first attempt
        c.send_failed(t(3), w.nms, ControlKind::AuthRequest, "connection refused");
        assert_eq!(drain(&mut c), vec![]);
        // auth_retry, jittered to [auth_retry/2, auth_retry]
        let retry_at = c.poll_timeout().unwrap();
        assert!(
            retry_at >= t(3) + cfg().auth_retry / 2 && retry_at <= t(3) + cfg().auth_retry,
            "{retry_at:?}"
        );
        c.timeout(retry_at);
        assert!(matches!(
            &drain(&mut c)[..],
            [NodeAction::Send {
                msg: Control::AuthRequest { .. },
                ..
            }]
        ));
        // the second (last) attempt fails too
        c.send_failed(retry_at, w.nms, ControlKind::AuthRequest, "connection refused");
        let actions = drain(&mut c);
        if offline {
            assert_eq!(actions, vec![NodeAction::Install]);
            assert_eq!(c.phase(), Phase::Installing);
        } else {
            assert!(
                matches!(&actions[..], [NodeAction::Send { msg: Control::InstallReport { outcome: InstallOutcome::Failed { reason }, .. }, .. }]
                    if reason.contains("offline")),
                "{actions:?}"
            );
            assert_eq!(c.phase(), Phase::Failed);
        }
    }
}

#[test]
fn receipts_from_children_are_checked_against_the_root() {
    let w = node_world();
    let mut c = node_n(&w);
    let receipt = |root| Control::Receipt {
        campaign: w.campaign(),
        root,
    };
    let ack = |matches| Control::ReceiptAck {
        campaign: w.campaign(),
        matches,
    };
    assert_eq!(c.request(t(1), id(P), &receipt([0; 32])), ack(false));
    assert_eq!(c.request(t(1), id(P), &receipt(w.manifest.root)), ack(true));
}

/// Receives the whole package, authenticates and installs (done at `t(4)`).
fn install_here(w: &World, c: &mut NodeCampaign) {
    receive_and_hash(w, c);
    c.response(
        t(3),
        w.nms,
        Control::AuthReply {
            campaign: w.campaign(),
            ok: true,
            reason: String::new(),
        },
    );
    c.install_done(t(4), InstallOutcome::Installed);
    drain(c);
    settle(w, c, t(4));
}

/// `child` accepts its offer and sends its receipt at `now`.
fn child_receipted(w: &World, c: &mut NodeCampaign, child: u64, now: Duration) {
    c.response(
        now,
        id(child),
        Control::OfferReply {
            campaign: w.campaign(),
            verdict: baton_protocol::wire::Verdict::Accept,
        },
    );
    c.request(
        now,
        id(child),
        &Control::Receipt {
            campaign: w.campaign(),
            root: w.manifest.root,
        },
    );
}

#[test]
fn relaying_is_done_on_receipts_or_after_a_silent_child_lingered() {
    use baton_protocol::receiver::RELAY_LINGER;
    let w = node_world();
    let install = |c: &mut NodeCampaign| install_here(&w, c);
    // N's children are P and Q (fanout 2); the receipts of both end its relaying
    let mut c = node_n(&w);
    install(&mut c);
    assert!(!c.relay_done(t(5)), "children still pulling");
    for child in [P, Q] {
        child_receipted(&w, &mut c, child, t(5));
    }
    assert!(c.relay_done(t(5)));
    // a child that asked for a chunk and then went silent: done once it lingered
    let mut c = node_n(&w);
    install(&mut c);
    c.chunk_request(t(6), RequestId(1), id(P), &w.request(&[A, B, N, P], 0));
    drain(&mut c);
    assert!(!c.relay_done(t(6) + RELAY_LINGER / 2));
    assert!(c.relay_done(t(6) + RELAY_LINGER));
}

fn offers_sent(actions: &[NodeAction]) -> Vec<NodeId> {
    actions
        .iter()
        .filter_map(|a| match a {
            NodeAction::Send {
                to,
                msg: Control::Offer(_),
            } => Some(*to),
            _ => None,
        })
        .collect()
}

fn gated_n(w: &World) -> NodeCampaign {
    accept_n(w, &[N, P, Q], RelayHint::Gated)
}

#[test]
fn a_gated_relay_holds_its_part_and_offers_it_once_its_gate_opens() {
    let w = node_world();
    let mut c = gated_n(&w);
    let first = drain(&mut c);
    assert!(offers_sent(&first).is_empty(), "no offer while gated: {first:?}");
    assert!(first.iter().any(|a| matches!(
        a,
        NodeAction::Send {
            msg: Control::Progress {
                relay: Some(RelayHint::Gated),
                ..
            },
            ..
        }
    )));
    assert_eq!(c.relay_hint(), RelayHint::Gated);
    c.set_gated(t(10), false);
    assert_eq!(offers_sent(&drain(&mut c)), vec![id(P), id(Q)]);
    assert_eq!(c.relay_hint(), RelayHint::Restricted);
}

#[test]
fn a_relay_gated_past_the_grace_period_hands_its_part_back_to_the_nms() {
    let w = node_world();
    let grace = Duration::from_secs(u64::from(w.manifest.relay.grace_secs));
    let mut c = gated_n(&w);
    drain(&mut c);
    assert!(c.poll_timeout().is_some_and(|at| at <= t(0) + grace));
    c.timeout(t(0) + grace - Duration::from_millis(1));
    assert!(!drain(&mut c).iter().any(|a| matches!(
        a,
        NodeAction::Send {
            msg: Control::HandBack { .. },
            ..
        }
    )));
    c.timeout(t(0) + grace);
    let a = drain(&mut c);
    let back: Vec<_> = a
        .iter()
        .filter_map(|a| match a {
            NodeAction::Send {
                to,
                msg: Control::HandBack { nodes, .. },
            } => Some((*to, nodes.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(back, vec![(w.nms, vec![id(P), id(Q)])]);
    assert!(a.contains(&NodeAction::Note(Note::HandedBack { nodes: 2 })));
    // the gate opening later offers nothing: the part is the NMS's now
    c.set_gated(t(0) + grace * 2, false);
    assert!(offers_sent(&drain(&mut c)).is_empty());
}

#[test]
fn a_relay_asked_by_a_grandchild_lingers_after_its_children_s_receipts() {
    // N's part is N, P, Q, R (fanout 2): its children are P (with Q below) and R. Q moved up
    // its path to N (P gated or failed) and is still fetching: P's and R's receipts must
    // not end N's relaying, or Q falls back to the NMS.
    use baton_protocol::receiver::RELAY_LINGER;
    const R: u64 = 6;
    let w = world(&[A, B, N, P, Q, R], Transfer::CutThrough, false);
    let mut c = accept_n(&w, &[N, P, Q, R], RelayHint::Open);
    install_here(&w, &mut c);
    c.chunk_request(t(5), RequestId(1), id(Q), &w.request(&[A, B, N, P, Q], 0));
    drain(&mut c);
    for child in [P, R] {
        child_receipted(&w, &mut c, child, t(5));
    }
    assert!(!c.relay_done(t(5)), "Q still fetches from N");
    assert!(!c.relay_done(t(5) + RELAY_LINGER / 2));
    assert!(c.relay_done(t(5) + RELAY_LINGER), "done once Q went quiet");
}

#[test]
fn relaying_is_not_done_while_an_offer_to_a_child_is_unanswered() {
    // found by the fault explorer: a relay whose disk filled up was "done" with its offer
    // to a child still out; the child's refusal then reached no one, and the rest of the
    // part was never offered nor reported
    let w = node_world();
    let mut c = node_n(&w);
    drain(&mut c); // offers to P and Q, progress, chunk requests
    c.chunk_response(t(1), id(B), w.sealed(&[A, B, N], 0));
    drain(&mut c);
    c.store_failed(t(1), 0, "No space left on device (os error 28)");
    drain(&mut c);
    c.response(t(1), w.nms, Control::Ack); // progress
    c.response(t(1), w.nms, Control::Ack); // install report (failed)
    assert_eq!(c.phase(), Phase::Failed);
    assert!(!c.relay_done(t(1)), "the offers to P and Q are unanswered");
    let refused = Control::OfferReply {
        campaign: w.campaign(),
        verdict: Verdict::Refuse {
            reason: RefuseReason::Rollback,
            detail: "a newer sequence is installed".into(),
        },
    };
    c.response(t(2), id(P), refused);
    let actions = drain(&mut c);
    assert!(
        actions.iter().any(
            |a| matches!(a, NodeAction::Send { msg: Control::Trouble { node, .. }, .. } if *node == id(P))
        ),
        "{actions:?}"
    );
    c.response(
        t(2),
        id(Q),
        Control::OfferReply {
            campaign: w.campaign(),
            verdict: Verdict::Accept,
        },
    );
    c.response(t(2), w.nms, Control::Ack); // trouble
    assert!(c.relay_done(t(2) + baton_protocol::receiver::RELAY_LINGER));
}

#[test]
fn a_relay_waiting_for_an_offer_answer_after_its_linger_is_not_woken_again_and_again() {
    // found by the fault explorer (seed 312, once it drove NodeEndpoint, which retries an
    // undelivered offer for up to about 30 s): a relay that had installed waited for the
    // answer to its offer to a dead child when its linger ended. Its timer stayed due at
    // the end of the linger, so its shell woke it at that same instant forever (a busy
    // loop; relaying is not done while an offer is unanswered).
    use baton_protocol::receiver::RELAY_LINGER;
    let w = node_world();
    let mut c = node_n(&w);
    receive_and_hash(&w, &mut c);
    let ok = Control::AuthReply {
        campaign: w.campaign(),
        ok: true,
        reason: String::new(),
    };
    c.response(t(3), w.nms, ok);
    drain(&mut c);
    c.install_done(t(3), InstallOutcome::Installed);
    drain(&mut c);
    for _ in 0..5 {
        c.response(t(3), w.nms, Control::Ack);
    }
    // P accepts; the offer to Q stays unanswered
    c.response(
        t(3),
        id(P),
        Control::OfferReply {
            campaign: w.campaign(),
            verdict: Verdict::Accept,
        },
    );
    drain(&mut c);
    assert_eq!(c.phase(), Phase::Installed);
    // a shell sleeping on `poll_timeout` until well after the linger
    let late = t(3) + RELAY_LINGER * 2;
    let mut now = t(3);
    let mut wakes = 0;
    while let Some(at) = c.poll_timeout().filter(|at| *at <= late) {
        now = now.max(at);
        c.timeout(now);
        drain(&mut c);
        wakes += 1;
        assert!(wakes < 100, "woken {wakes} times, last at {now:?}");
    }
    assert!(!c.relay_done(late), "the offer to Q is unanswered");
    // its answer ends the relaying (P never sent a receipt, and lingered long enough)
    c.response(
        late,
        id(Q),
        Control::OfferReply {
            campaign: w.campaign(),
            verdict: Verdict::Accept,
        },
    );
    assert!(drain(&mut c).contains(&NodeAction::RelayDone));
}

#[test]
fn a_campaign_resumed_after_a_restart_without_fetching_offers_its_children_again() {
    // found by the fault explorer (seed 723): a cut-through relay installed, its offer to a
    // child failed and was to be sent again, and the relay crashed first. After the restart
    // it reported again but offered nothing (cut-through children are offered at accept),
    // so that child's part never got the campaign and the NMS waited for it forever.
    let w = node_world();
    let part_offer = |k: u64| send(id(k), Control::Offer(Box::new(w.offer(&[A, B, N, k], &[k]))));
    for ended in [true, false] {
        let offer = w.offer(&[A, B, N], &[N, P, Q]);
        let m = check_offer(&offer, &id(B), &w.ctx(N)).expect("a good offer");
        let mut c = if ended {
            NodeCampaign::resume_ended(t(0), id(N), offer, m, cfg(), InstallOutcome::Installed)
        } else {
            NodeCampaign::resume_refused(t(0), id(N), offer, m, cfg(), "rollback")
        };
        let actions = drain(&mut c);
        for k in [P, Q] {
            assert!(actions.contains(&part_offer(k)), "{ended}: {actions:?}");
        }
        let report = actions.iter().find_map(|a| match a {
            NodeAction::Send {
                msg: Control::InstallReport { outcome, .. },
                ..
            } => Some(outcome.clone()),
            _ => None,
        });
        match report {
            Some(InstallOutcome::Installed) => assert!(ended),
            Some(InstallOutcome::Failed { reason }) => {
                assert!(!ended);
                assert!(reason.contains("rollback"), "{reason}");
            }
            None => panic!("{ended}: no report: {actions:?}"),
        }
        // nothing fetched, authenticated or installed
        assert!(
            actions.iter().all(|a| matches!(a, NodeAction::Send { .. })
                && !matches!(
                    a,
                    NodeAction::Send {
                        msg: Control::AuthRequest { .. },
                        ..
                    }
                )),
            "{actions:?}"
        );
        assert!(!c.relay_done(t(1)), "its offers are unanswered");
        accept_offers(&w, &mut c, t(1));
        assert!(c.relay_done(t(1)));
    }
}

#[test]
fn a_resumed_campaign_already_installed_ends_installed_without_the_nms() {
    // found by the fault explorer: a node that installed, crashed before its relaying was
    // done and resumed while the NMS was unreachable reported the campaign failed
    let w = node_world();
    let offer = w.offer(&[A, B, N], &[N, P, Q]);
    let m = check_offer(&offer, &id(B), &w.ctx(N)).unwrap();
    let count = m.layout().unwrap().count();
    let mut c = NodeCampaign::accept(
        t(0),
        id(N),
        offer,
        m,
        cfg(),
        ChunkSet::full(count),
        RelayHint::Open,
    );
    c.already_installed();
    let actions = drain(&mut c);
    assert_eq!(actions.last(), Some(&NodeAction::HashFile), "{actions:?}");
    c.file_hashed(t(1), w.manifest.root);
    let actions = drain(&mut c);
    assert!(
        !actions.iter().any(|a| matches!(
            a,
            NodeAction::Install
                | NodeAction::Send {
                    msg: Control::AuthRequest { .. },
                    ..
                }
        )),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| matches!(
            a,
            NodeAction::Send {
                msg: Control::InstallReport {
                    outcome: InstallOutcome::Installed,
                    ..
                },
                ..
            }
        )),
        "{actions:?}"
    );
    assert_eq!(c.phase(), Phase::Installed);
}

// ---------- offers ----------

#[test]
fn check_offer_refuses_with_the_right_reason() {
    let w = node_world();
    let good = w.offer(&[A, B, N], &[N, P, Q]);
    let refuse =
        |o: &Offer, from: u64, ctx: &VerifyContext<'_>| check_offer(o, &id(from), ctx).unwrap_err().reason;
    let ctx = w.ctx(N);
    assert!(check_offer(&good, &id(B), &ctx).is_ok());

    assert_eq!(
        refuse(&w.offer(&[A, B, N], &[P, N]), B, &ctx),
        RefuseReason::BadOffer
    );
    assert_eq!(
        refuse(&w.offer(&[A, N, B], &[N]), N, &ctx),
        RefuseReason::BadOffer
    );
    let mut no_path = good.clone();
    no_path.path.clear();
    assert_eq!(refuse(&no_path, B, &ctx), RefuseReason::BadOffer);
    // only the parent on the path may offer; a first-tier offer comes from the NMS
    assert_eq!(refuse(&good, A, &ctx), RefuseReason::BadOffer);
    let first_tier = w.offer(&[N], &[N]);
    assert_eq!(refuse(&first_tier, B, &ctx), RefuseReason::BadOffer);
    assert!(check_offer(&first_tier, &w.nms, &ctx).is_ok());
    // everybody in the part and on the path must be an addressee
    let mut stranger = good.clone();
    stranger.part.push(id(99));
    assert_eq!(refuse(&stranger, B, &ctx), RefuseReason::BadOffer);

    let untrusted = VerifyContext {
        trusted: &[],
        ..w.ctx(N)
    };
    let r = check_offer(&good, &id(B), &untrusted).unwrap_err();
    assert_eq!(r.reason, RefuseReason::Untrusted);
    assert!(r.detail.contains(&w.nms.to_string()), "{}", r.detail);
    assert!(!r.detail.contains("--trust"), "{}", r.detail);
    let expired = VerifyContext {
        unix_now: w.manifest.expires_at,
        ..w.ctx(N)
    };
    assert_eq!(refuse(&good, B, &expired), RefuseReason::Expired);
    let newer_installed = VerifyContext {
        installed: Some((w.manifest.sequence + 1, [0; 32])),
        ..w.ctx(N)
    };
    assert_eq!(refuse(&good, B, &newer_installed), RefuseReason::Rollback);
    assert_eq!(
        refuse(&w.offer(&[A, B, 99], &[99]), B, &w.ctx(99)),
        RefuseReason::NotAddressee
    );
    let mut forged = good.clone();
    forged.manifest.signature[0] ^= 1;
    assert_eq!(refuse(&forged, B, &ctx), RefuseReason::BadManifest);
}

// ---------- the NMS ----------

fn monitor(w: &World) -> CampaignMonitor {
    CampaignMonitor::start(
        t(0),
        w.manifest.clone(),
        w.signed.clone(),
        w.secret.clone(),
        MonitorConfig::default(),
    )
}

fn first_tier_offer(w: &World, part: &[u64]) -> MonitorAction {
    MonitorAction::Send {
        to: id(part[0]),
        msg: Control::Offer(Box::new(w.offer(&part[..1], part))),
    }
}

#[test]
fn the_nms_offers_each_part_to_its_head() {
    let w = world(&[A, B, N, P, Q], Transfer::CutThrough, false);
    let mut m = monitor(&w);
    assert_eq!(
        drain_monitor(&mut m),
        vec![first_tier_offer(&w, &[A, B, N]), first_tier_offer(&w, &[P, Q])]
    );
    assert!(m.nodes().values().all(|v| v.status == NodeStatus::Waiting));
}

#[test]
fn a_refused_first_tier_offer_is_replanned_to_the_next_head() {
    let w = world(&[A, B, N, P, Q], Transfer::CutThrough, false);
    let mut m = monitor(&w);
    drain_monitor(&mut m);
    m.response(
        t(1),
        id(A),
        Control::OfferReply {
            campaign: w.campaign(),
            verdict: Verdict::Refuse {
                reason: RefuseReason::Busy,
                detail: "no".into(),
            },
        },
    );
    let actions = drain_monitor(&mut m);
    assert!(matches!(&actions[0], MonitorAction::Note(MonitorNote::Failed(n, _)) if *n == id(A)));
    assert_eq!(actions[1..], [first_tier_offer(&w, &[B, N])]);
    assert!(matches!(m.nodes()[&id(A)].status, NodeStatus::Failed(_)));
    // an undeliverable offer: the rest is re-planned at once, and the head is probed
    // (not failed: unreachable only if the probes fail too)
    m.send_failed(t(1), id(P), ControlKind::Offer, "connection refused");
    let actions = drain_monitor(&mut m);
    assert_eq!(actions[0], first_tier_offer(&w, &[Q]));
    assert!(matches!(&actions[1], MonitorAction::Note(MonitorNote::Probing(n, _)) if *n == id(P)));
    assert!(matches!(
        &actions[2],
        MonitorAction::Send { to, msg: Control::Probe { campaign: Some(c), .. } } if *to == id(P) && *c == w.campaign()
    ));
    assert_eq!(m.nodes()[&id(P)].status, NodeStatus::Waiting);
}

#[test]
fn a_head_refusing_as_untrusted_trusts_another_nms_and_is_replanned() {
    let w = world(&[A, B, N], Transfer::CutThrough, false);
    let mut m = monitor(&w);
    drain_monitor(&mut m);
    m.response(
        t(1),
        id(A),
        Control::OfferReply {
            campaign: w.campaign(),
            verdict: Verdict::Refuse {
                reason: RefuseReason::Untrusted,
                detail: "not my NMS".into(),
            },
        },
    );
    let actions = drain_monitor(&mut m);
    assert!(matches!(&actions[0], MonitorAction::Note(MonitorNote::TrustsOther(n, _)) if *n == id(A)));
    assert_eq!(actions[1..], [first_tier_offer(&w, &[B])]);
    assert!(matches!(m.nodes()[&id(A)].status, NodeStatus::TrustsOther(_)));
    assert_eq!(m.tally().trusts_other, 1);
    assert_eq!(m.counts(), (0, 0, 3), "not counted as failed");
}

#[test]
fn a_restarted_nms_offers_again_to_heads_that_had_not_answered() {
    // vopr seed 585: the NMS crashed just after its offers went out; the restarted one
    // waited for answers that had died with the old process
    let w = world(&[A, B, N, P, Q], Transfer::CutThrough, false);
    let mut m = monitor(&w);
    drain_monitor(&mut m);
    m.response(
        t(1),
        id(A),
        Control::OfferReply {
            campaign: w.campaign(),
            verdict: Verdict::Accept,
        },
    );
    drain_monitor(&mut m);
    m.restarted();
    // A accepted before the crash; only P's offer goes out again
    assert_eq!(drain_monitor(&mut m), vec![first_tier_offer(&w, &[P, Q])]);
}

#[test]
fn the_nms_checks_auth_codes() {
    let w = world(&[A, B, N], Transfer::CutThrough, false);
    let mut m = monitor(&w);
    drain_monitor(&mut m);
    let path = vec![id(A), id(B)];
    let root = w.manifest.root;
    let campaign = w.campaign();
    let auth = |code| Control::AuthRequest {
        campaign,
        path: path.clone(),
        root,
        code,
    };
    let forged = m.request(t(1), id(B), &auth([0; 32]));
    assert!(
        matches!(&forged, Control::AuthReply { ok: false, reason, .. } if reason.contains("does not match"))
    );
    assert!(matches!(
        &drain_monitor(&mut m)[..],
        [MonitorAction::Note(MonitorNote::AuthRefused(n, _))] if *n == id(B)
    ));
    // the right code, but claimed by another sender than the end of the path
    let code = w.token(&path).auth_code(&campaign, &root);
    assert!(matches!(
        m.request(t(1), id(A), &auth(code)),
        Control::AuthReply { ok: false, .. }
    ));
    assert_eq!(
        m.request(t(1), id(B), &auth(code)),
        Control::AuthReply {
            campaign,
            ok: true,
            reason: String::new()
        }
    );
    assert_eq!(m.nodes()[&id(B)].status, NodeStatus::Authenticated);
    // strangers get an error, not a verdict
    assert!(matches!(
        m.request(t(1), id(99), &auth(code)),
        Control::Error { .. }
    ));
}

#[test]
fn the_nms_serves_any_addressee_with_the_key_of_its_path() {
    let w = world(&[A, B, N], Transfer::CutThrough, false);
    let mut m = monitor(&w);
    drain_monitor(&mut m);
    m.chunk_request(t(1), RequestId(1), id(N), &w.request(&[A, B, N], 2));
    m.chunk_request(t(1), RequestId(2), id(B), &w.request(&[A, B, N], 2));
    m.chunk_request(t(1), RequestId(3), id(N), &w.request(&[A, 99, N], 2));
    let mut other = w.request(&[A, B, N], 2);
    other.campaign = [0; 16];
    m.chunk_request(t(1), RequestId(4), id(N), &other);
    m.chunk_request(t(1), RequestId(5), id(N), &w.request(&[A, B, N], 3));
    // every answer carries the index of its request (protocol.md 6.2)
    let refused = |r, index| {
        MonitorAction::Serve(ServeAction::Answer {
            req: RequestId(r),
            index,
            status: ChunkStatus::Refused,
        })
    };
    assert_eq!(
        drain_monitor(&mut m),
        vec![
            MonitorAction::Serve(ServeAction::SendChunk {
                req: RequestId(1),
                to: id(N),
                index: 2,
                key: w.token(&[id(A), id(B), id(N)]).chunk_key(),
            }),
            refused(2, 2),
            refused(3, 2),
            MonitorAction::Serve(ServeAction::Answer {
                req: RequestId(4),
                index: 2,
                status: ChunkStatus::UnknownCampaign
            }),
            refused(5, 3), // past the last chunk
        ]
    );
}

#[test]
fn the_campaign_is_done_when_every_addressee_is_final() {
    let w = world(&[A, B], Transfer::CutThrough, false);
    let mut m = monitor(&w);
    drain_monitor(&mut m);
    let report = |outcome| Control::InstallReport {
        campaign: w.campaign(),
        outcome,
    };
    let progress = Control::Progress {
        campaign: w.campaign(),
        phase: Phase::Receiving,
        verified: 10,
        source: Some(w.nms),
        parent: None,
        relay: None,
        fetched: vec![(w.nms, 10)],
    };
    assert_eq!(m.request(t(1), id(B), &progress), Control::Ack);
    assert_eq!(m.nodes()[&id(B)].status, NodeStatus::Receiving);
    assert_eq!(m.nodes()[&id(B)].fetched, vec![(w.nms, 10)]);
    assert_eq!(
        m.request(t(2), id(A), &report(InstallOutcome::Installed)),
        Control::Ack
    );
    assert_eq!(
        drain_monitor(&mut m),
        vec![MonitorAction::Note(MonitorNote::Installed(id(A)))]
    );
    assert!(!m.is_done());
    let failed = InstallOutcome::Failed {
        reason: "disk full".into(),
    };
    m.request(t(3), id(B), &report(failed));
    assert_eq!(
        drain_monitor(&mut m),
        vec![
            MonitorAction::Note(MonitorNote::Failed(id(B), "disk full".into())),
            MonitorAction::Note(MonitorNote::Done),
        ]
    );
    assert!(m.is_done());
    assert_eq!((m.finished_at(), m.counts()), (Some(t(3)), (1, 1, 2)));
}

// ---------- back-off and the end of relaying ----------

/// `A`, first tier: path `[A]`, part `[A, B, N, P, Q]`; its only source is the NMS.
fn node_a(w: &World) -> NodeCampaign {
    let offer = w.offer(&[A], &[A, B, N, P, Q]);
    let m = check_offer(&offer, &w.nms, &w.ctx(A)).expect("a good offer");
    let count = m.layout().unwrap().count();
    NodeCampaign::accept(
        t(0),
        id(A),
        offer,
        m,
        cfg(),
        ChunkSet::new(count),
        RelayHint::Open,
    )
}

#[derive(Clone, Copy, Debug)]
enum Failing {
    /// The dial fails at once (the NMS is down).
    Transport,
    /// The source answers at once that it does not know the campaign.
    Unknown,
    /// The source answers `NotYet` at once (it could not read the chunk back).
    NotYetAtOnce,
}

/// Runs `c` for `secs` seconds of virtual time from `start` against a source whose every
/// request fails at once as `how`; returns the requests made and the time it stopped.
fn run_failing(c: &mut NodeCampaign, w: &World, how: Failing, start: Duration, secs: u64) -> usize {
    let end = start + t(secs);
    let mut now = start;
    let mut asked = 0;
    loop {
        while let Some(a) = c.poll_action() {
            if let NodeAction::RequestChunk { to, req } = a {
                asked += 1;
                if asked > 1000 {
                    return asked; // a busy loop: no need to go on
                }
                match how {
                    Failing::Transport => c.chunk_failed(now, to, req.index, "connection refused"),
                    Failing::Unknown | Failing::NotYetAtOnce => {
                        let status = match how {
                            Failing::Unknown => ChunkStatus::UnknownCampaign,
                            _ => ChunkStatus::NotYet,
                        };
                        c.chunk_response(
                            now,
                            to,
                            ChunkResponse {
                                campaign: w.campaign(),
                                index: req.index,
                                status,
                                data: Vec::new(),
                            },
                        )
                    }
                }
            }
        }
        match c.poll_timeout() {
            Some(next) if next <= end => {
                assert!(next >= now, "a wake-up in the past: {next:?} < {now:?}");
                now = next;
                c.timeout(now);
            }
            _ => return asked,
        }
    }
}

#[test]
fn a_failing_source_is_asked_with_back_off_and_at_full_speed_after_a_success() {
    for how in [Failing::Transport, Failing::Unknown, Failing::NotYetAtOnce] {
        let w = world(&[A, B, N, P, Q], Transfer::CutThrough, false);
        let mut c = node_a(&w);
        // ten seconds of virtual time against a source that always fails at once
        let asked = run_failing(&mut c, &w, how, t(0), 10);
        assert!(asked < 20, "{how:?}: {asked} requests in 10 s");
        assert!(asked >= 5, "{how:?}: still retrying ({asked})");
        // the pause grew: the next request is more than a second away, at most 5 s
        let next = c.poll_timeout().expect("a retry is due");
        assert!(next > t(10), "{how:?}: {next:?}");
        assert!(next <= t(15), "{how:?}: capped at 5 s, {next:?}");
        c.timeout(next);
        let asks = chunk_requests(&drain(&mut c));
        assert_eq!(asks.len(), 1, "{how:?}: one probe while backing off: {asks:?}");
        // the probe succeeds: the window fills again at once
        c.chunk_response(next, w.nms, w.sealed(&[A], asks[0].1.index));
        let mut actions = drain(&mut c);
        let stored: Vec<u32> = actions
            .iter()
            .filter_map(|a| match a {
                NodeAction::Store { index, .. } => Some(*index),
                _ => None,
            })
            .collect();
        for i in stored {
            c.chunk_stored(next, i);
        }
        actions.extend(drain(&mut c));
        let again = chunk_requests(&actions);
        assert_eq!(
            again.len(),
            cfg().window,
            "{how:?}: full window after a success: {actions:?}"
        );
        // and a new failure waits only the first step again (about 100 ms), not 5 s
        for (to, r) in &again {
            c.chunk_failed(next, *to, r.index, "connection reset");
        }
        assert!(
            chunk_requests(&drain(&mut c)).is_empty(),
            "{how:?}: waits after a failure"
        );
        let retry = c.poll_timeout().expect("a retry is due");
        assert!(
            retry > next && retry <= next + Duration::from_millis(100),
            "{how:?}: {retry:?} after {next:?}"
        );
    }
}

#[test]
fn not_yet_after_a_hold_is_asked_again_at_once() {
    let w = world(&[A, B, N, P, Q], Transfer::CutThrough, false);
    let mut c = node_a(&w);
    let asks = chunk_requests(&drain(&mut c));
    assert_eq!(asks.len(), 2);
    let held_until = t(15);
    for (to, r) in &asks {
        c.chunk_response(
            held_until,
            *to,
            ChunkResponse {
                campaign: w.campaign(),
                index: r.index,
                status: ChunkStatus::NotYet,
                data: Vec::new(),
            },
        );
    }
    assert_eq!(chunk_requests(&drain(&mut c)).len(), 2, "asked again at once");
    assert_eq!(c.total_faults(), 0);
}

#[test]
fn relay_done_is_reported_once_at_its_time() {
    use baton_protocol::receiver::RELAY_LINGER;
    let w = node_world();
    let install = |c: &mut NodeCampaign| {
        receive_and_hash(&w, c);
        c.response(
            t(3),
            w.nms,
            Control::AuthReply {
                campaign: w.campaign(),
                ok: true,
                reason: String::new(),
            },
        );
        drain(c);
        c.install_done(t(4), InstallOutcome::Installed);
        settle(&w, c, t(4));
    };
    let done = |actions: &[NodeAction]| actions.iter().filter(|a| **a == NodeAction::RelayDone).count();

    // receipts of both children: done at the second one
    let mut c = node_n(&w);
    install(&mut c);
    assert_eq!(done(&drain(&mut c)), 0, "children still pulling");
    for child in [P, Q] {
        c.response(
            t(5),
            id(child),
            Control::OfferReply {
                campaign: w.campaign(),
                verdict: Verdict::Accept,
            },
        );
        c.request(
            t(5),
            id(child),
            &Control::Receipt {
                campaign: w.campaign(),
                root: w.manifest.root,
            },
        );
    }
    assert_eq!(done(&drain(&mut c)), 1);
    assert_eq!(c.poll_timeout(), None);
    c.timeout(t(100));
    assert_eq!(done(&drain(&mut c)), 0, "only once");

    // a child that asked and went silent: the linger is a timer of the machine
    let mut c = node_n(&w);
    install(&mut c);
    drain(&mut c);
    assert_eq!(c.poll_timeout(), Some(t(2) + RELAY_LINGER), "from completion");
    c.chunk_request(t(6), RequestId(1), id(P), &w.request(&[A, B, N, P], 0));
    assert_eq!(done(&drain(&mut c)), 0);
    let end = t(6) + RELAY_LINGER;
    assert_eq!(c.poll_timeout(), Some(end));
    c.timeout(end - Duration::from_millis(1));
    assert_eq!(done(&drain(&mut c)), 0);
    c.timeout(end);
    assert_eq!(done(&drain(&mut c)), 1);
    assert_eq!(c.poll_timeout(), None);
    c.timeout(end + t(100));
    assert_eq!(done(&drain(&mut c)), 0, "only once");

    // a node that failed with nobody pulling: done at once
    let mut c = node_n(&w);
    drain(&mut c);
    c.chunk_response(t(1), id(B), w.sealed(&[A, B, N], 0));
    for a in drain(&mut c) {
        if let NodeAction::Store { index, .. } = a {
            c.store_failed(t(1), index, "No space left on device (os error 28)");
        }
    }
    // its children were offered, and a failed store serves nothing (Gated): done as soon
    // as the offers and its reports are answered
    assert_eq!(c.phase(), Phase::Failed);
    assert_eq!(done(&drain(&mut c)), 0, "offers unanswered");
    settle(&w, &mut c, t(1));
    assert_eq!(done(&drain(&mut c)), 1);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn an_agent_package_installs_only_once_the_children_hold_it() {
    use baton_protocol::receiver::RELAY_LINGER;
    use baton_protocol::selfupdate::AGENT_PACKAGE;
    let agent_world = || {
        let mut w = node_world();
        w.manifest.name = AGENT_PACKAGE.into();
        w.manifest.file = AGENT_PACKAGE.into();
        w.manifest.self_update = true;
        w.signed = SignedManifest::sign(&w.manifest, &keypair_from_seed(100)).unwrap();
        w
    };
    let ok = |w: &World| Control::AuthReply {
        campaign: w.campaign(),
        ok: true,
        reason: String::new(),
    };
    let receipt = |w: &World| Control::Receipt {
        campaign: w.campaign(),
        root: w.manifest.root,
    };
    // both children receipt: the install step starts with the last receipt
    let w = agent_world();
    let mut c = node_n(&w);
    receive_and_hash(&w, &mut c);
    accept_offers(&w, &mut c, t(3));
    c.response(t(3), w.nms, ok(&w));
    assert_eq!(drain(&mut c), vec![NodeAction::Note(Note::Authenticated)]);
    assert_eq!(c.phase(), Phase::Installing);
    assert!(c.install_waits());
    c.request(t(4), id(P), &receipt(&w));
    assert!(
        !drain(&mut c).contains(&NodeAction::Install),
        "Q has not got it yet"
    );
    c.request(t(5), id(Q), &receipt(&w));
    assert!(drain(&mut c).contains(&NodeAction::Install));
    assert!(!c.install_waits());
    c.install_done(t(6), InstallOutcome::Installed);
    assert_eq!(c.phase(), Phase::Installed);
    // a child that went silent: the install step starts after the linger, woken by the timer
    let w = agent_world();
    let mut c = node_n(&w);
    receive_and_hash(&w, &mut c);
    accept_offers(&w, &mut c, t(3));
    c.chunk_request(t(3), RequestId(1), id(P), &w.request(&[A, B, N, P], 0));
    drain(&mut c);
    c.response(t(3), w.nms, ok(&w));
    c.request(t(3), id(Q), &receipt(&w));
    assert!(!drain(&mut c).contains(&NodeAction::Install));
    let wake = c.poll_timeout().expect("a timer for the linger");
    assert!(wake <= t(3) + RELAY_LINGER, "{wake:?}");
    c.timeout(t(3) + RELAY_LINGER);
    assert!(drain(&mut c).contains(&NodeAction::Install));
    // an ordinary package installs at once, children or not
    let w = node_world();
    let mut c = node_n(&w);
    receive_and_hash(&w, &mut c);
    c.response(t(3), w.nms, ok(&w));
    assert!(drain(&mut c).contains(&NodeAction::Install));
}

/// A chain (fanout 1, cut-through) of `addressees` whose last `leaves` are leaf-only.
fn chain_world(addressees: &[u64], leaves: u32) -> World {
    let mut w = world(addressees, Transfer::CutThrough, false);
    w.manifest.plan.fanout = 1;
    w.manifest.plan.leaves = leaves;
    w.signed = SignedManifest::sign(&w.manifest, &keypair_from_seed(100)).unwrap();
    w
}

/// In the chain `[A, B, N, P]` whose last two are leaf-only (both below `B`), `N` has
/// just accepted `B`'s offer.
fn leaf_n() -> (World, NodeCampaign) {
    let w = chain_world(&[A, B, N, P], 2);
    let c = accept_n(&w, &[N], RelayHint::Open);
    (w, c)
}

fn requests(actions: &[NodeAction]) -> Vec<NodeAction> {
    actions
        .iter()
        .filter(|a| matches!(a, NodeAction::RequestChunk { .. }))
        .cloned()
        .collect()
}

/// A leaf-only node relays for no one: beside its parent, which feeds 2 such nodes, it
/// asks the relay above (never the NMS, which sends each byte once) for a share, here
/// chunk 0 of each cycle of 2 (`share_of`). A helper that is gated is asked no more,
/// without moving the node off its parent, and its chunk goes back to the parent; the
/// progress report says what came from whom.
#[test]
fn a_leaf_only_node_fetches_from_its_parent_and_the_relays_above_it() {
    let (w, mut c) = leaf_n();
    let first = drain(&mut c);
    assert_eq!(requests(&first), [ask(&w, A, 0), ask(&w, B, 1), ask(&w, B, 2)]);
    // A answers chunk 0 with a good chunk: it stays a helper, and has nothing more to ask
    c.chunk_response(t(1), id(A), w.sealed(&[A, B, N], 0));
    c.chunk_stored(t(1), 0);
    assert_eq!(requests(&drain(&mut c)), []);
    c.chunk_response(t(1), id(B), w.sealed(&[A, B, N], 1));
    c.chunk_stored(t(1), 1);
    c.chunk_response(t(1), id(B), w.sealed(&[A, B, N], 2));
    c.chunk_stored(t(1), 2);
    assert_eq!(c.phase(), Phase::Verifying);
    drain(&mut c);
    c.file_hashed(t(2), w.manifest.root);
    let after = drain(&mut c);
    let progress = after.iter().find_map(|a| match a {
        NodeAction::Send {
            msg: Control::Progress { fetched, .. },
            ..
        } => Some(fetched.clone()),
        _ => None,
    });
    let l = w.manifest.layout().unwrap();
    assert_eq!(
        progress,
        Some(vec![
            (id(A), u64::from(l.len(0))),
            (id(B), u64::from(l.len(1)) + u64::from(l.len(2))),
        ]),
        "{after:?}"
    );

    // a gated helper: dropped, its chunk asked from the parent, which stays the source
    let (w, mut c) = leaf_n();
    drain(&mut c);
    c.chunk_response(t(1), id(B), w.sealed(&[A, B, N], 1));
    c.chunk_stored(t(1), 1);
    drain(&mut c);
    let gated = ChunkResponse {
        campaign: w.campaign(),
        index: 0,
        status: ChunkStatus::Gated,
        data: Vec::new(),
    };
    c.chunk_response(t(1), id(A), gated);
    assert_eq!(requests(&drain(&mut c)), [ask(&w, B, 0)]);
    assert_eq!(c.current_source(), id(B));
    // a later failure of the parent moves the node up its path as before (A is still
    // the next source: dropped as a helper, not as a source)
    c.chunk_failed(t(2), id(B), 2, "connection reset");
    c.chunk_failed(t(2), id(B), 0, "connection reset");
    assert_eq!(c.current_source(), id(A));
}

/// The shares of a leaf-only node's sources: in each cycle of `gk` chunks the parent has
/// `k` and each of the `k` helpers `g - 1` (so the parent's uplink, `g` leaves times `k`,
/// carries one copy, a whole cycle).
#[test]
fn the_shares_of_a_leaf_only_node_even_out_the_uplinks() {
    use baton_protocol::receiver::share_of;
    for k in 1..=8u32 {
        for g in 2..=5u32 {
            let cycle = g * k;
            let mut parent = 0;
            let mut helper = vec![0u32; k as usize];
            for i in 0..3 * cycle {
                match share_of(i, k, g) {
                    None => parent += 1,
                    Some(j) => helper[j as usize] += 1,
                }
            }
            assert_eq!(parent, 3 * k, "k {k} g {g}");
            assert!(
                helper.iter().all(|&h| h == 3 * (g - 1)),
                "k {k} g {g}: {helper:?}"
            );
        }
    }
}

/// A single leaf-only node below its parent needs no helper: the parent's uplink
/// carries it as it would a relay (one copy).
#[test]
fn a_lone_leaf_only_node_fetches_from_its_parent_only() {
    let w = chain_world(&[A, B, N], 1);
    let mut c = accept_n(&w, &[N], RelayHint::Open);
    assert_eq!(requests(&drain(&mut c)), [ask(&w, B, 0), ask(&w, B, 1)]);
}
