//! The node endpoint on virtual time: a fake shell answers its actions, the test plays the
//! network, and the invariants are checked after every input.

use super::*;
use crate::admission::open_offer;
use crate::chunk::PackageHasher;
use crate::id::{fake_id, keypair_from_seed};
use crate::keys::{CampaignSecret, HopToken};
use crate::manifest::{HashList, MANIFEST_FORMAT, PlanParams, RelayPolicy, SignedManifest, Transfer};

const A: u64 = 1;
const N: u64 = 3;
const P: u64 = 4;
const Q: u64 = 5;
const CHUNK: u32 = 4096;
const SIZE: usize = 2 * CHUNK as usize + 100;

fn id(n: u64) -> NodeId {
    fake_id(n)
}

fn t(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

struct World {
    nms: NodeId,
    secret: CampaignSecret,
    manifest: Manifest,
    signed: SignedManifest,
    data: Vec<u8>,
}

fn world_seq(seq: u64, fanout: u8) -> World {
    let key = keypair_from_seed(100);
    let nms = NodeId::of(&key);
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8 ^ seq as u8).collect();
    let mut h = PackageHasher::new(CHUNK);
    h.update(&data);
    let (size, hashes, root) = h.finish();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        campaign: [0xc0 ^ seq as u8; 16],
        nms,
        name: "frob".into(),
        version: format!("1.{seq}"),
        file: "frob.tgz".into(),
        sequence: seq,
        size,
        chunk_size: CHUNK,
        chunk_hashes: HashList(hashes),
        root,
        created_at: 1000,
        expires_at: 1_000_000,
        relay: RelayPolicy::default(),
        plan: PlanParams {
            fanout,
            transfer: Transfer::CutThrough,
            leaves: 0,
        },
        offline_install: false,
        self_update: false,
        addressees: [A, N, P, Q].into_iter().map(id).collect(),
    };
    let signed = SignedManifest::sign(&manifest, &key).unwrap();
    World {
        nms,
        secret: CampaignSecret([0x5e; 32]),
        manifest,
        signed,
        data,
    }
}

impl World {
    fn c(&self) -> CampaignId {
        self.manifest.campaign
    }
    fn token(&self, path: &[NodeId]) -> HopToken {
        self.secret.root_token(&self.c()).along(path)
    }
    /// The offer `A` sends `N`: path `[A, N]`, part `part`.
    fn offer(&self, part: &[u64]) -> Offer {
        let path = vec![id(A), id(N)];
        Offer {
            manifest: self.signed.clone(),
            part: part.iter().copied().map(id).collect(),
            token: self.token(&path),
            path,
        }
    }
    fn sealed(&self, index: u32) -> ChunkResponse {
        let l = self.manifest.layout().unwrap();
        let s = l.offset(index) as usize;
        let mut data = self.data[s..s + l.len(index) as usize].to_vec();
        self.token(&[id(A), id(N)])
            .chunk_key()
            .seal(&self.c(), index, &mut data);
        ChunkResponse {
            campaign: self.c(),
            index,
            status: ChunkStatus::Ok,
            data,
        }
    }
}

fn config() -> Config {
    Config {
        unix_origin: 1500,
        campaign: NodeConfig {
            progress_interval: t(1000),
            ..NodeConfig::default()
        },
        ..Config::default()
    }
}

/// A fake shell around the endpoint: it answers the disk and off-loop actions at once,
/// answers chunk requests from the world when `serve_chunks`, and records the rest.
struct Shell {
    ep: NodeEndpoint,
    now: Duration,
    /// Chunks found on disk at `Prepare`.
    on_disk: Vec<u32>,
    serve_chunks: bool,
    sent: Vec<(Duration, OutId, NodeId, Control)>,
    replies: Vec<(ReplyId, Control)>,
    journal: Vec<JournalEntry>,
    installs: u32,
    forgotten: Vec<CampaignId>,
    removed: Vec<(String, u64)>,
    events: Vec<Event>,
    worlds: Vec<World>,
    /// Chunk answers given and chunk requests not served by the fake shell.
    chunks: Vec<Action>,
}

impl Shell {
    fn new(start: Start, cfg: Config, worlds: Vec<World>) -> Shell {
        let ep = NodeEndpoint::new(t(0), id(N), cfg, start);
        let mut s = Shell {
            ep,
            now: t(0),
            on_disk: Vec::new(),
            serve_chunks: true,
            sent: Vec::new(),
            replies: Vec::new(),
            journal: Vec::new(),
            installs: 0,
            forgotten: Vec::new(),
            removed: Vec::new(),
            events: Vec::new(),
            worlds,
            chunks: Vec::new(),
        };
        s.drain();
        s
    }

    /// A shell whose disk holds chunks `on_disk` of every campaign it prepares.
    fn with_disk(
        start: Start,
        cfg: Config,
        worlds: Vec<World>,
        on_disk: &[u32],
        serve_chunks: bool,
    ) -> Shell {
        let mut s = Shell::new(Start::default(), cfg.clone(), worlds);
        s.on_disk = on_disk.to_vec();
        s.serve_chunks = serve_chunks;
        s.ep = NodeEndpoint::new(t(0), id(N), cfg, start);
        s.drain();
        s
    }

    fn world(&self, c: &CampaignId) -> &World {
        self.worlds
            .iter()
            .find(|w| w.c() == *c)
            .expect("a known campaign")
    }

    fn input(&mut self, i: Input) {
        self.ep.handle(self.now, i);
        self.drain();
    }

    /// Moves virtual time to `to`, firing every timer on the way.
    fn run_until(&mut self, to: Duration) {
        while let Some(at) = self.ep.poll_timeout().filter(|&at| at <= to) {
            self.now = self.now.max(at);
            self.ep.handle_timeout(self.now);
            self.drain();
        }
        self.now = to;
    }

    fn drain(&mut self) {
        self.ep.check_invariants();
        while let Some(a) = self.ep.poll_action() {
            let now = self.now;
            match a {
                Action::OpenOffer { ticket, from, offer } => {
                    let result = Box::new(open_offer(*offer, from, id(N)));
                    self.ep.handle(now, Input::OfferOpened { ticket, result });
                }
                Action::Prepare {
                    campaign, manifest, ..
                } => {
                    let mut have = ChunkSet::new(manifest.layout().unwrap().count());
                    for &i in &self.on_disk {
                        have.insert(i);
                    }
                    self.ep.handle(
                        now,
                        Input::Prepared {
                            campaign,
                            result: Ok(have),
                        },
                    );
                }
                Action::StoreChunk { campaign, index, .. } => {
                    self.ep.handle(now, Input::ChunkStored { campaign, index })
                }
                Action::HashFile { campaign } => {
                    let root = self.world(&campaign).manifest.root;
                    self.ep.handle(now, Input::FileHashed { campaign, root })
                }
                Action::Install { campaign } => {
                    self.installs += 1;
                    self.ep.handle(
                        now,
                        Input::InstallDone {
                            campaign,
                            outcome: InstallOutcome::Installed,
                        },
                    )
                }
                Action::RequestChunk { id, req, to } => {
                    if self.serve_chunks {
                        let resp = self.world(&req.campaign).sealed(req.index);
                        self.ep.handle(now, Input::ChunkResponse { id, resp });
                    } else {
                        self.chunks.push(Action::RequestChunk { id, to, req });
                    }
                }
                a @ (Action::SendChunk { .. } | Action::AnswerChunk { .. }) => self.chunks.push(a),
                Action::SendControl { id, to, msg } => self.sent.push((now, id, to, msg)),
                Action::Reply { reply, msg } => self.replies.push((reply, msg)),
                Action::Journal(e) => self.journal.push(e),
                Action::Forget { campaign } => self.forgotten.push(campaign),
                Action::RemoveVersion { name, sequence } => self.removed.push((name, sequence)),
                Action::Pin { .. } => {}
            }
            self.ep.check_invariants();
        }
        while let Some(e) = self.ep.poll_event() {
            self.events.push(e);
        }
    }

    /// The control messages of `kind` sent to `to`.
    fn sent_to(&self, to: NodeId, kind: ControlKind) -> Vec<(Duration, OutId)> {
        self.sent
            .iter()
            .filter(|(_, _, p, m)| *p == to && m.kind() == kind)
            .map(|(at, id, _, _)| (*at, *id))
            .collect()
    }

    fn troubles(&self) -> usize {
        self.sent
            .iter()
            .filter(|(_, _, _, m)| m.kind() == ControlKind::Trouble)
            .count()
    }

    /// Answers every control request to the NMS as the NMS would (auth accepted).
    fn nms_answers(&mut self) {
        let pending: Vec<(OutId, Control)> = std::mem::take(&mut self.sent)
            .into_iter()
            .filter_map(|(at, id, to, m)| {
                if to == self.worlds[0].nms {
                    Some((id, m))
                } else {
                    self.sent.push((at, id, to, m));
                    None
                }
            })
            .collect();
        for (id, m) in pending {
            let msg = match m {
                Control::AuthRequest { campaign, .. } => Control::AuthReply {
                    campaign,
                    ok: true,
                    reason: String::new(),
                },
                _ => Control::Ack,
            };
            self.input(Input::ControlResponse { id, msg });
        }
    }
}

fn saved(w: &World, part: &[u64]) -> SavedCampaign {
    SavedCampaign {
        campaign: w.c(),
        offer: Ok(w.offer(part)),
    }
}

fn start_with(w: &World, journal: Vec<JournalEntry>, saved: Vec<SavedCampaign>) -> Start {
    Start {
        trusted: vec![w.nms],
        installed: Vec::new(),
        journal,
        saved,
    }
}

/// Defect 4: a restarted node resumes a campaign before discovery knows its children. It
/// must not dial them (and report them unreachable) before their address is known.
#[test]
fn a_restarted_node_waits_for_its_childrens_addresses() {
    let w = world_seq(7, 2);
    let start = start_with(&w, vec![], vec![saved(&w, &[N, P, Q])]);
    // complete on disk: only the NMS and the children are left
    let mut s = Shell::with_disk(start, config(), vec![w], &[0, 1, 2], true);
    assert!(
        s.events
            .iter()
            .any(|e| matches!(e, Event::Accepted { resumed: true, .. }))
    );
    s.run_until(t(50));
    assert!(
        s.sent_to(id(P), ControlKind::Offer).is_empty(),
        "offered P before its address was known"
    );
    assert!(
        s.sent_to(id(Q), ControlKind::Offer).is_empty(),
        "offered Q before its address was known"
    );
    assert_eq!(s.troubles(), 0, "reported a child it never tried");
    // discovery finds P, then the NMS and Q
    s.input(Input::PeerAddressKnown(id(P)));
    assert_eq!(s.sent_to(id(P), ControlKind::Offer).len(), 1);
    assert!(s.sent_to(id(Q), ControlKind::Offer).is_empty());
    s.input(Input::PeerAddressKnown(s.worlds[0].nms));
    s.input(Input::PeerAddressKnown(id(Q)));
    assert_eq!(s.sent_to(id(Q), ControlKind::Offer).len(), 1);
    // the NMS learns the package is verified; no trouble anywhere
    assert!(!s.sent_to(s.worlds[0].nms, ControlKind::AuthRequest).is_empty());
    assert_eq!(s.troubles(), 0);
}

/// A peer never found is tried anyway after `address_wait` (then retried like any send).
#[test]
fn an_address_never_found_is_tried_after_the_wait() {
    let w = world_seq(7, 1);
    let start = start_with(&w, vec![], vec![saved(&w, &[N, P])]);
    let mut s = Shell::with_disk(start, config(), vec![w], &[], false);
    s.run_until(t(59));
    assert!(s.sent_to(id(P), ControlKind::Offer).is_empty());
    s.run_until(t(61));
    assert_eq!(s.sent_to(id(P), ControlKind::Offer).len(), 1);
}

fn offered(fanout: u8, part: &[u64]) -> Shell {
    let w = world_seq(7, fanout);
    let start = start_with(&w, vec![], vec![]);
    let mut s = Shell::new(start, config(), vec![w]);
    let offer = s.worlds[0].offer(part);
    s.input(Input::ControlRequest {
        from: id(A),
        reply: ReplyId(1),
        msg: Control::Offer(Box::new(offer)),
    });
    assert!(
        matches!(
            s.replies.last(),
            Some((
                ReplyId(1),
                Control::OfferReply {
                    verdict: Verdict::Accept,
                    ..
                }
            ))
        ),
        "{:?}",
        s.replies
    );
    s
}

/// Defect 4: a dial that fails twice and then succeeds is no trouble.
#[test]
fn a_dial_that_fails_twice_then_succeeds_reports_no_trouble() {
    let mut s = offered(1, &[N, P, Q]);
    s.input(Input::PeerAddressKnown(id(P)));
    for attempt in 1..=2 {
        let offers = s.sent_to(id(P), ControlKind::Offer);
        assert_eq!(offers.len(), attempt);
        let (_, oid) = *offers.last().unwrap();
        s.input(Input::SendFailed {
            id: oid,
            reason: "dial failed".into(),
        });
        assert_eq!(s.troubles(), 0, "reported after attempt {attempt}");
        let now = s.now;
        s.run_until(now + t(20));
    }
    let offers = s.sent_to(id(P), ControlKind::Offer);
    assert_eq!(offers.len(), 3);
    s.input(Input::ControlResponse {
        id: offers[2].1,
        msg: Control::OfferReply {
            campaign: s.worlds[0].c(),
            verdict: Verdict::Accept,
        },
    });
    s.run_until(t(200));
    assert_eq!(s.troubles(), 0);
    assert!(!s.events.iter().any(|e| matches!(
        e,
        Event::Note {
            note: Note::ChildFailed { .. },
            ..
        }
    )));
    assert!(
        s.sent_to(id(Q), ControlKind::Offer).is_empty(),
        "Q was not re-planned"
    );
}

/// A child that stays unreachable is reported after every attempt (5, over 15 to 30 s),
/// and the rest of its part is offered to the next node.
#[test]
fn a_child_unreachable_after_every_attempt_is_reported_and_replanned() {
    let mut s = offered(1, &[N, P, Q]);
    s.input(Input::PeerAddressKnown(id(P)));
    s.input(Input::PeerAddressKnown(id(Q)));
    s.input(Input::PeerAddressKnown(s.worlds[0].nms));
    let first = s.sent_to(id(P), ControlKind::Offer)[0].0;
    let mut done = 0;
    while s.troubles() == 0 {
        let offers = s.sent_to(id(P), ControlKind::Offer);
        assert!(offers.len() > done, "no new attempt");
        done = offers.len();
        s.input(Input::SendFailed {
            id: offers.last().unwrap().1,
            reason: "dial failed".into(),
        });
        // the dial fails as soon as it is tried: step to the next attempt
        while s.troubles() == 0 && s.sent_to(id(P), ControlKind::Offer).len() == done {
            let at = s.ep.poll_timeout().expect("a retry is due");
            s.run_until(at);
        }
    }
    assert_eq!(done, 5, "attempts");
    let last = s.sent_to(id(P), ControlKind::Offer)[4].0;
    let span = last - first;
    assert!(span >= t(15) && span <= t(30), "{span:?}");
    assert_eq!(
        s.sent_to(id(Q), ControlKind::Offer).len(),
        1,
        "Q takes over P's part"
    );
}

fn finish_campaign(s: &mut Shell) {
    s.input(Input::PeerAddressKnown(s.worlds[0].nms));
    for _ in 0..5 {
        s.nms_answers();
    }
    assert_eq!(s.installs, 1);
    assert!(s.events.iter().any(|e| matches!(e, Event::Finished { .. })));
}

/// The install reports of `s` so far.
fn reports(s: &Shell) -> Vec<InstallOutcome> {
    s.sent
        .iter()
        .filter_map(|(_, _, _, m)| match m {
            Control::InstallReport { outcome, .. } => Some(outcome.clone()),
            _ => None,
        })
        .collect()
}

/// Fault explorer, seed 47 (once the explorer drove the real endpoint): a node journaled
/// `installed`, its install report failed, and it crashed before the retry. After the
/// restart it did not resume the campaign (its phase was final), so the report never went
/// out again and the NMS waited for it forever. A final campaign whose working files are
/// still there was not over: it reports its phase again, and nothing else.
#[test]
fn a_restart_after_install_reports_again_but_neither_installs_nor_authenticates() {
    let mut s = offered(1, &[N]);
    finish_campaign(&mut s);
    let c = s.worlds[0].c();
    assert_eq!(
        s.journal,
        vec![
            JournalEntry {
                campaign: c,
                phase: JournalPhase::Accepted
            },
            JournalEntry {
                campaign: c,
                phase: JournalPhase::Installed
            },
        ]
    );
    assert_eq!(s.forgotten, vec![c]);
    // restart, as if the node died before its working files were removed (before its
    // report was delivered)
    let journal = s.journal.clone();
    let w = world_seq(7, 1);
    let mut start = start_with(&w, journal, vec![saved(&w, &[N])]);
    start.installed = vec![InstalledPackage {
        name: "frob".into(),
        current: Some((7, w.manifest.root)),
        sequences: vec![7],
    }];
    let mut s = Shell::new(start, config(), vec![w]);
    assert!(s.forgotten.is_empty(), "forgotten before its report is delivered");
    assert!(s.ep.busy());
    s.input(Input::PeerAddressKnown(s.worlds[0].nms));
    assert_eq!(reports(&s), vec![InstallOutcome::Installed]);
    assert!(
        s.sent
            .iter()
            .all(|(_, _, _, m)| m.kind() == ControlKind::InstallReport),
        "{:?}",
        s.sent
    );
    assert!(s.journal.is_empty(), "journaled again: {:?}", s.journal);
    s.nms_answers();
    s.run_until(t(100));
    assert_eq!(s.installs, 0);
    assert!(s.sent.is_empty(), "{:?}", s.sent);
    assert_eq!(s.forgotten, vec![c], "its working files are removed");
    assert!(!s.ep.busy());
    // its parent offers it again: refused, nothing downloaded
    let offer = s.worlds[0].offer(&[N]);
    s.input(Input::ControlRequest {
        from: id(A),
        reply: ReplyId(9),
        msg: Control::Offer(Box::new(offer)),
    });
    match s.replies.last() {
        Some((
            ReplyId(9),
            Control::OfferReply {
                verdict: Verdict::Refuse { reason, .. },
                ..
            },
        )) => {
            assert_eq!(*reason, RefuseReason::Installed)
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(s.installs, 0);
}

/// As above for a campaign that had failed here: the failure is reported again (its
/// first reason is not kept), nothing is fetched or installed; a campaign whose working
/// files are gone is not resumed.
#[test]
fn a_restart_after_a_failure_reports_it_again_and_nothing_else() {
    let w = world_seq(7, 1);
    let c = w.c();
    let journal = vec![
        JournalEntry {
            campaign: c,
            phase: JournalPhase::Accepted,
        },
        JournalEntry {
            campaign: c,
            phase: JournalPhase::Failed,
        },
    ];
    let mut s = Shell::new(
        start_with(&w, journal.clone(), vec![saved(&w, &[N])]),
        config(),
        vec![w],
    );
    s.input(Input::PeerAddressKnown(s.worlds[0].nms));
    match reports(&s).as_slice() {
        [InstallOutcome::Failed { reason }] => assert!(reason.contains("restarted"), "{reason}"),
        r => panic!("{r:?}"),
    }
    s.nms_answers();
    s.run_until(t(100));
    assert_eq!(s.installs, 0);
    assert!(s.sent.is_empty(), "{:?}", s.sent);
    assert!(s.journal.is_empty());
    assert_eq!(s.forgotten, vec![c]);
    // without its working files, the same journal resumes nothing
    let w = world_seq(7, 1);
    let mut s = Shell::new(start_with(&w, journal, vec![]), config(), vec![w]);
    s.input(Input::PeerAddressKnown(s.worlds[0].nms));
    s.run_until(t(100));
    assert!(s.sent.is_empty(), "{:?}", s.sent);
    assert!(!s.ep.busy());
}

#[test]
fn an_unfinished_campaign_resumes_where_it_stopped() {
    let w = world_seq(7, 1);
    let c = w.c();
    let journal = vec![JournalEntry {
        campaign: c,
        phase: JournalPhase::Accepted,
    }];
    let start = start_with(&w, journal, vec![saved(&w, &[N])]);
    let mut s = Shell::with_disk(start, config(), vec![w], &[0, 1], false);
    assert!(s.events.iter().any(|e| matches!(
        e,
        Event::Accepted {
            resumed: true,
            chunks_on_disk: 2,
            ..
        }
    )));
    let m = s.ep.campaign(&c).unwrap();
    let asked: Vec<u32> = m.in_flight().map(|(i, _)| i).collect();
    assert_eq!(asked, vec![2], "only the missing chunk is fetched");
    s.serve_chunks = true;
    // answer the request out
    let (index, _) = m.in_flight().next().unwrap();
    let oid = *s
        .ep
        .out
        .iter()
        .find(|(_, o)| matches!(o, Out::Chunk { index: i, .. } if *i == index))
        .unwrap()
        .0;
    let resp = s.worlds[0].sealed(index);
    s.input(Input::ChunkResponse { id: oid, resp });
    finish_campaign(&mut s);
}

#[test]
fn installs_keep_the_current_and_the_previous_version() {
    let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
    assert_eq!(versions_to_remove(&set(&[1, 2, 3, 4]), 4, 2), vec![2, 1]);
    assert_eq!(versions_to_remove(&set(&[1, 2, 3, 4]), 4, 1), vec![3, 2, 1]);
    assert_eq!(versions_to_remove(&set(&[1, 2, 3, 4]), 4, 0), Vec::<u64>::new());
    assert_eq!(versions_to_remove(&set(&[4]), 4, 2), Vec::<u64>::new());
    // a newer sequence on disk than the current one is not touched
    assert_eq!(versions_to_remove(&set(&[1, 3, 5]), 3, 1), vec![1]);

    for (keep, removed) in [(2, vec![5, 3]), (3, vec![3]), (0, vec![])] {
        let w = world_seq(7, 1);
        let mut start = start_with(&w, vec![], vec![]);
        start.installed = vec![InstalledPackage {
            name: "frob".into(),
            current: Some((6, [1; 32])),
            sequences: vec![3, 5, 6],
        }];
        let cfg = Config {
            keep_versions: keep,
            ..config()
        };
        let mut s = Shell::new(start, cfg, vec![w]);
        let offer = s.worlds[0].offer(&[N]);
        s.input(Input::ControlRequest {
            from: id(A),
            reply: ReplyId(1),
            msg: Control::Offer(Box::new(offer)),
        });
        finish_campaign(&mut s);
        let want: Vec<(String, u64)> = removed.into_iter().map(|q| ("frob".to_string(), q)).collect();
        assert_eq!(s.removed, want, "keep {keep}");
    }
}

#[test]
fn duplicate_offers_busy_offers_and_probes() {
    let mut s = offered(1, &[N]);
    s.serve_chunks = false;
    // the same offer again while running: accepted, nothing started twice
    let offer = s.worlds[0].offer(&[N]);
    s.input(Input::ControlRequest {
        from: id(A),
        reply: ReplyId(2),
        msg: Control::Offer(Box::new(offer.clone())),
    });
    assert!(matches!(
        s.replies.last(),
        Some((
            ReplyId(2),
            Control::OfferReply {
                verdict: Verdict::Accept,
                ..
            }
        ))
    ));
    assert_eq!(s.ep.running(), 1);
    // offers not yet opened: at most two per peer
    let mut ep = NodeEndpoint::new(t(0), id(N), config(), start_with(&s.worlds[0], vec![], vec![]));
    for r in 1..=3 {
        ep.handle(
            t(0),
            Input::ControlRequest {
                from: id(A),
                reply: ReplyId(r),
                msg: Control::Offer(Box::new(offer.clone())),
            },
        );
    }
    let actions: Vec<Action> = std::iter::from_fn(|| ep.poll_action()).collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::OpenOffer { .. }))
            .count(),
        2
    );
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Reply {
            reply: ReplyId(3),
            msg: Control::OfferReply {
                verdict: Verdict::Refuse {
                    reason: RefuseReason::Busy,
                    ..
                },
                ..
            }
        }
    )));
    // probes and unknown campaigns
    s.input(Input::ControlRequest {
        from: id(Q),
        reply: ReplyId(5),
        msg: Control::Probe {
            nonce: 42,
            campaign: None,
        },
    });
    assert_eq!(
        s.replies.last(),
        Some(&(
            ReplyId(5),
            Control::ProbeReply {
                nonce: 42,
                state: None,
            }
        ))
    );
    // a probe naming a campaign is answered with where the node stands in it
    let held = s.worlds[0].manifest.campaign;
    for (reply, campaign, want) in [
        (
            7,
            held,
            // the fake shell served it every chunk; it waits for the NMS's acknowledgement
            Holding::Running {
                phase: Phase::Authenticating,
                verified: s.worlds[0].manifest.size,
            },
        ),
        (8, [9; 16], Holding::No),
    ] {
        s.input(Input::ControlRequest {
            from: id(Q),
            reply: ReplyId(reply),
            msg: Control::Probe {
                nonce: 43,
                campaign: Some(campaign),
            },
        });
        assert_eq!(
            s.replies.last(),
            Some(&(
                ReplyId(reply),
                Control::ProbeReply {
                    nonce: 43,
                    state: Some(ProbeState {
                        campaign,
                        holding: want
                    }),
                }
            ))
        );
    }
    ep.handle(
        t(0),
        Input::ChunkRequest {
            from: id(Q),
            reply: ReplyId(6),
            req: ChunkRequest {
                campaign: [9; 16],
                index: 3,
                path: vec![id(Q)],
            },
        },
    );
    assert_eq!(
        ep.poll_action(),
        Some(Action::AnswerChunk {
            reply: ReplyId(6),
            campaign: [9; 16],
            index: 3,
            status: ChunkStatus::UnknownCampaign
        })
    );
    // answers to ids the endpoint never gave out are ignored
    s.input(Input::ChunkResponse {
        id: OutId(999_999),
        resp: s.worlds[0].sealed(0),
    });
    s.input(Input::SendFailed {
        id: OutId(999_998),
        reason: "x".into(),
    });
}

#[test]
fn the_journal_folds_to_the_last_phase_and_a_final_phase_never_changes() {
    let e = |c: u8, phase| JournalEntry {
        campaign: [c; 16],
        phase,
    };
    let folded = fold_journal(&[
        e(1, JournalPhase::Accepted),
        e(2, JournalPhase::Accepted),
        e(1, JournalPhase::Installed),
        e(1, JournalPhase::Accepted),
        e(2, JournalPhase::Failed),
    ]);
    assert_eq!(
        folded,
        vec![e(1, JournalPhase::Installed), e(2, JournalPhase::Failed)]
    );
    for p in [
        JournalPhase::Accepted,
        JournalPhase::Installed,
        JournalPhase::Failed,
    ] {
        assert_eq!(JournalPhase::parse(p.as_str()), Some(p));
    }
}

/// Answers the control requests to the NMS as the NMS would, except that the first
/// delivery of an install report fails. Returns whether one failed.
fn nms_answers_but_the_first_report_fails(s: &mut Shell, failed: &mut bool) {
    let nms = s.worlds[0].nms;
    let pending: Vec<(OutId, Control)> = s
        .sent
        .iter()
        .filter(|(_, _, to, _)| *to == nms)
        .map(|(_, id, _, m)| (*id, m.clone()))
        .collect();
    s.sent.retain(|(_, _, to, _)| *to != nms);
    for (id, m) in pending {
        match m {
            Control::InstallReport { .. } if !*failed => {
                *failed = true;
                s.input(Input::SendFailed {
                    id,
                    reason: "connection closed".into(),
                });
            }
            Control::AuthRequest { campaign, .. } => s.input(Input::ControlResponse {
                id,
                msg: Control::AuthReply {
                    campaign,
                    ok: true,
                    reason: String::new(),
                },
            }),
            _ => s.input(Input::ControlResponse {
                id,
                msg: Control::Ack,
            }),
        }
    }
}

/// Seed 399 of the fault explorer: a node's relaying was done before its install report
/// reached the NMS, and retiring the campaign dropped the report's retry, so the NMS
/// never heard. The campaign ends only once its report is delivered.
#[test]
fn a_campaign_ends_only_once_its_install_report_is_delivered() {
    let mut s = offered(1, &[N]);
    let c = s.worlds[0].c();
    s.input(Input::PeerAddressKnown(s.worlds[0].nms));
    let mut failed = false;
    for _ in 0..5 {
        nms_answers_but_the_first_report_fails(&mut s, &mut failed);
    }
    assert!(failed, "an install report went out");
    assert_eq!(s.installs, 1);
    assert!(s.ep.campaign(&c).is_some(), "retired before its report arrived");
    assert!(s.forgotten.is_empty());
    assert!(!s.events.iter().any(|e| matches!(e, Event::Finished { .. })));
    // the retry goes out and is answered: now the campaign is over
    let now = s.now;
    s.run_until(now + t(30));
    assert_eq!(s.sent_to(s.worlds[0].nms, ControlKind::InstallReport).len(), 1);
    s.nms_answers();
    assert!(s.ep.campaign(&c).is_none());
    assert_eq!(s.forgotten, vec![c]);
    assert!(s.events.iter().any(|e| matches!(e, Event::Finished { .. })));
}

/// Fault explorer, seeds 1079 and 1489: the NMS was down for 12 s, four attempts of an
/// install report fell in that time, and the fifth, after the NMS was back, was lost on a
/// lossy link; the report was given up and the NMS waited for the node forever. Reports
/// are tried longer than offers and receipts.
#[test]
fn an_install_report_is_tried_longer_than_other_one_shot_messages() {
    let mut s = offered(1, &[N]);
    let c = s.worlds[0].c();
    let nms = s.worlds[0].nms;
    s.input(Input::PeerAddressKnown(nms));
    let mut tries = 0;
    for _ in 0..40 {
        let pending: Vec<(OutId, Control)> = s
            .sent
            .iter()
            .filter(|(_, _, to, _)| *to == nms)
            .map(|(_, id, _, m)| (*id, m.clone()))
            .collect();
        s.sent.retain(|(_, _, to, _)| *to != nms);
        for (id, m) in pending {
            match m {
                Control::InstallReport { .. } => {
                    tries += 1;
                    s.input(Input::SendFailed {
                        id,
                        reason: "connection closed".into(),
                    });
                }
                Control::AuthRequest { campaign, .. } => s.input(Input::ControlResponse {
                    id,
                    msg: Control::AuthReply {
                        campaign,
                        ok: true,
                        reason: String::new(),
                    },
                }),
                _ => s.input(Input::ControlResponse {
                    id,
                    msg: Control::Ack,
                }),
            }
        }
        let now = s.now;
        s.run_until(now + t(20));
    }
    assert_eq!(s.installs, 1);
    let cfg = config();
    assert!(cfg.report_attempts > cfg.send_attempts);
    assert_eq!(tries, cfg.report_attempts);
    // given up after the last attempt: the campaign is over here
    assert!(s.ep.campaign(&c).is_none());
    assert_eq!(s.forgotten, vec![c]);
}

/// Seed 301 of the fault explorer: a campaign left unfinished by a crash is refused at
/// restart because a newer sequence was installed meanwhile. It used to be dropped without
/// a word, so its NMS waited for this node forever; now it ends failed here, with the
/// reason, and the report goes to the NMS.
#[test]
fn an_unfinished_campaign_refused_at_restart_is_reported_failed() {
    let w = world_seq(7, 1);
    let c = w.c();
    let newer = world_seq(8, 1);
    let journal = vec![JournalEntry {
        campaign: c,
        phase: JournalPhase::Accepted,
    }];
    let mut start = start_with(&w, journal, vec![saved(&w, &[N])]);
    start.installed = vec![InstalledPackage {
        name: "frob".into(),
        current: Some((8, newer.manifest.root)),
        sequences: vec![8],
    }];
    let mut s = Shell::new(start, config(), vec![w]);
    assert!(s.events.iter().any(|e| matches!(e, Event::NotResumed { .. })));
    s.input(Input::PeerAddressKnown(s.worlds[0].nms));
    let reports: Vec<Control> = s
        .sent
        .iter()
        .filter(|(_, _, _, m)| m.kind() == ControlKind::InstallReport)
        .map(|(_, _, _, m)| m.clone())
        .collect();
    match reports.as_slice() {
        [
            Control::InstallReport {
                outcome: InstallOutcome::Failed { reason },
                ..
            },
        ] => assert!(reason.contains("rollback"), "{reason}"),
        r => panic!("no failure report: {r:?}"),
    }
    assert_eq!(
        s.journal.last(),
        Some(&JournalEntry {
            campaign: c,
            phase: JournalPhase::Failed
        })
    );
    assert_eq!(s.installs, 0);
    assert!(s.ep.campaign(&c).is_some(), "held until its report is delivered");
    s.nms_answers();
    s.run_until(t(100));
    assert!(s.ep.campaign(&c).is_none());
    assert_eq!(s.forgotten, vec![c]);
}

#[path = "node_gate_tests.rs"]
mod gate;

/// Issue 9: a file replaced during its campaign is a new version that supersedes the old
/// campaign: a node still fetching the older version stops it when it accepts the newer
/// one (it ends failed with the reason, journaled, and serves it no more); a campaign of
/// the newer version is untouched.
#[test]
fn accepting_a_newer_version_stops_the_older_campaign_still_fetching() {
    let old = world_seq(7, 1);
    let new = world_seq(8, 1);
    let start = start_with(&old, vec![], vec![]);
    // the shell serves no chunk: the older campaign stays fetching
    let mut s = Shell::with_disk(start, config(), vec![old, new], &[], false);
    s.input(Input::PeerAddressKnown(s.worlds[0].nms));
    let offer = s.worlds[0].offer(&[N]);
    s.input(Input::ControlRequest {
        from: id(A),
        reply: ReplyId(1),
        msg: Control::Offer(Box::new(offer)),
    });
    let (c_old, c_new) = (s.worlds[0].c(), s.worlds[1].c());
    assert!(
        !s.journal
            .iter()
            .any(|j| j.campaign == c_old && j.phase.is_final())
    );
    let offer = s.worlds[1].offer(&[N]);
    s.input(Input::ControlRequest {
        from: id(A),
        reply: ReplyId(2),
        msg: Control::Offer(Box::new(offer)),
    });
    assert!(s.journal.contains(&JournalEntry {
        campaign: c_old,
        phase: JournalPhase::Failed,
    }));
    assert!(
        !s.journal
            .iter()
            .any(|j| j.campaign == c_new && j.phase.is_final())
    );
    let failed: Vec<String> = s
        .sent
        .iter()
        .filter_map(|(_, _, _, m)| match m {
            Control::InstallReport {
                campaign,
                outcome: InstallOutcome::Failed { reason },
            } if *campaign == c_old => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert!(
        failed
            .iter()
            .any(|r| r.contains("superseded by frob 1.8 (sequence 8)")),
        "{failed:?}"
    );
}
