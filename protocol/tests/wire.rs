//! Wire encodings: round trips of every message, and refusal of everything malformed,
//! oversize or over a limit, without a panic.

use baton_protocol::chunk::{Hash, PackageHasher};
use baton_protocol::gate::RelayHint;
use baton_protocol::id::{NodeId, fake_id, keypair_from_seed};
use baton_protocol::keys::HopToken;
use baton_protocol::limits::{
    MAX_ADDRESSEES, MAX_CHUNK_FRAME, MAX_CHUNK_SIZE, MAX_CONTROL_MESSAGE, MAX_FANOUT, MAX_PATH, MAX_REASON,
};
use baton_protocol::manifest::{
    HashList, MANIFEST_FORMAT, Manifest, PlanParams, RelayPolicy, RelayWhen, SignedManifest, Transfer,
};
use baton_protocol::wire::{
    ChunkRequest, ChunkResponse, ChunkStatus, Control, Holding, InstallOutcome, Offer, Phase, ProbeState,
    RefuseReason, Verdict, WireError, decode_control, encode_control,
};
use proptest::collection::vec;
use proptest::prelude::*;

const CAMPAIGN: [u8; 16] = [0xa5; 16];

// ---------- strategies ----------

/// Ids without a key (cheap), and now and then a real ed25519 id (38 bytes).
fn node_id() -> impl Strategy<Value = NodeId> {
    prop_oneof![
        4 => any::<u64>().prop_map(fake_id),
        1 => (1u64..6).prop_map(|s| NodeId::of(&keypair_from_seed(s))),
    ]
}

fn ids(max: usize) -> impl Strategy<Value = Vec<NodeId>> {
    vec(node_id(), 0..=max)
}

fn text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max).prop_map(String::from_iter)
}

fn phase() -> impl Strategy<Value = Phase> {
    prop_oneof![
        Just(Phase::Receiving),
        Just(Phase::Verifying),
        Just(Phase::Authenticating),
        Just(Phase::Installing),
        Just(Phase::Installed),
        Just(Phase::Failed),
    ]
}

fn refuse_reason() -> impl Strategy<Value = RefuseReason> {
    prop_oneof![
        Just(RefuseReason::Untrusted),
        Just(RefuseReason::BadManifest),
        Just(RefuseReason::Expired),
        Just(RefuseReason::Rollback),
        Just(RefuseReason::NotAddressee),
        Just(RefuseReason::BadOffer),
        Just(RefuseReason::Busy),
        Just(RefuseReason::Gated),
        Just(RefuseReason::Installed),
    ]
}

fn relay_when() -> impl Strategy<Value = RelayWhen> {
    prop_oneof![
        Just(RelayWhen::Always),
        Just(RelayWhen::Idle),
        Just(RelayWhen::Ac),
        Just(RelayWhen::IdleOrAc),
        Just(RelayWhen::IdleAndAc),
    ]
}

fn status() -> impl Strategy<Value = ChunkStatus> {
    prop_oneof![
        Just(ChunkStatus::Ok),
        Just(ChunkStatus::UnknownCampaign),
        Just(ChunkStatus::NotYet),
        Just(ChunkStatus::Refused),
        Just(ChunkStatus::Gated),
    ]
}

/// A small valid manifest, signed by the NMS of seed 100.
fn signed_manifest() -> impl Strategy<Value = (Manifest, SignedManifest)> {
    (
        any::<[u8; 16]>(),
        vec(any::<u8>(), 0..20_000),
        (1u64..u64::MAX, 0u64..1 << 40, 1u64..1 << 20),
        (1u8..=MAX_FANOUT, any::<bool>(), any::<bool>(), any::<bool>()),
        (
            relay_when(),
            proptest::option::of(any::<(u16, u16)>()),
            any::<u32>(),
        ),
        proptest::collection::hash_set(any::<u64>(), 1..6),
    )
        .prop_map(
            |(campaign, data, (sequence, created_at, ttl), (fanout, sf, offline, selfup), relay, addr)| {
                let nms = keypair_from_seed(100);
                let mut h = PackageHasher::new(4096);
                h.update(&data);
                let (size, hashes, root) = h.finish();
                let m = Manifest {
                    format: MANIFEST_FORMAT,
                    campaign,
                    nms: NodeId::of(&nms),
                    name: "frobnicator".into(),
                    version: "2.4.1".into(),
                    file: "frobnicator-2.4.1.tar.gz".into(),
                    sequence,
                    size,
                    chunk_size: 4096,
                    chunk_hashes: HashList(hashes),
                    root,
                    created_at,
                    expires_at: created_at + ttl,
                    relay: RelayPolicy {
                        when: relay.0,
                        window: relay.1,
                        grace_secs: relay.2,
                    },
                    plan: PlanParams {
                        fanout,
                        transfer: if sf {
                            Transfer::StoreAndForward
                        } else {
                            Transfer::CutThrough
                        },
                        leaves: 0,
                    },
                    offline_install: offline,
                    self_update: selfup,
                    addressees: addr.into_iter().map(fake_id).collect(),
                };
                let s = SignedManifest::sign(&m, &nms).expect("valid manifest");
                (m, s)
            },
        )
}

fn control() -> impl Strategy<Value = Control> {
    let hash = any::<Hash>;
    prop_oneof![
        (signed_manifest(), ids(40), ids(MAX_PATH), any::<[u8; 32]>()).prop_map(
            |((_, manifest), part, path, t)| {
                Control::Offer(Box::new(Offer {
                    manifest,
                    part,
                    path,
                    token: HopToken(t),
                }))
            }
        ),
        (
            any::<[u8; 16]>(),
            prop_oneof![
                Just(Verdict::Accept),
                (refuse_reason(), text(60)).prop_map(|(reason, detail)| Verdict::Refuse { reason, detail }),
            ]
        )
            .prop_map(|(campaign, verdict)| Control::OfferReply { campaign, verdict }),
        (any::<[u8; 16]>(), hash()).prop_map(|(campaign, root)| Control::Receipt { campaign, root }),
        (any::<[u8; 16]>(), any::<bool>())
            .prop_map(|(campaign, matches)| Control::ReceiptAck { campaign, matches }),
        (any::<[u8; 16]>(), ids(MAX_PATH), hash(), any::<[u8; 32]>()).prop_map(
            |(campaign, path, root, code)| Control::AuthRequest {
                campaign,
                path,
                root,
                code
            }
        ),
        (any::<[u8; 16]>(), any::<bool>(), text(60)).prop_map(|(campaign, ok, reason)| Control::AuthReply {
            campaign,
            ok,
            reason
        }),
        (
            any::<[u8; 16]>(),
            phase(),
            any::<u64>(),
            proptest::option::of(node_id()),
            proptest::option::of(node_id()),
            proptest::option::of(prop_oneof![
                Just(RelayHint::Open),
                Just(RelayHint::Restricted),
                Just(RelayHint::Gated)
            ])
        )
            .prop_map(
                |(campaign, phase, verified, source, parent, relay)| Control::Progress {
                    campaign,
                    phase,
                    verified,
                    source,
                    parent,
                    relay,
                    fetched: Vec::new(),
                }
            ),
        (
            any::<[u8; 16]>(),
            prop_oneof![
                Just(InstallOutcome::Installed),
                text(60).prop_map(|reason| InstallOutcome::Failed { reason }),
            ]
        )
            .prop_map(|(campaign, outcome)| Control::InstallReport { campaign, outcome }),
        (any::<[u8; 16]>(), node_id(), text(60)).prop_map(|(campaign, node, reason)| Control::Trouble {
            campaign,
            node,
            reason
        }),
        (any::<u64>(), proptest::option::of(any::<[u8; 16]>()))
            .prop_map(|(nonce, campaign)| Control::Probe { nonce, campaign }),
        (any::<u64>(), proptest::option::of((any::<[u8; 16]>(), holding()))).prop_map(|(nonce, state)| {
            Control::ProbeReply {
                nonce,
                state: state.map(|(campaign, holding)| ProbeState { campaign, holding }),
            }
        }),
        Just(Control::Ack),
        text(60).prop_map(|reason| Control::Error { reason }),
    ]
}

fn holding() -> impl Strategy<Value = Holding> {
    prop_oneof![
        Just(Holding::No),
        Just(Holding::Opening),
        Just(Holding::Finished),
        (
            prop_oneof![
                Just(Phase::Receiving),
                Just(Phase::Verifying),
                Just(Phase::Authenticating),
                Just(Phase::Installing),
                Just(Phase::Installed),
                Just(Phase::Failed),
            ],
            any::<u64>()
        )
            .prop_map(|(phase, verified)| Holding::Running { phase, verified }),
    ]
}

fn chunk_request() -> impl Strategy<Value = ChunkRequest> {
    (any::<[u8; 16]>(), any::<u32>(), ids(MAX_PATH)).prop_map(|(campaign, index, path)| ChunkRequest {
        campaign,
        index,
        path,
    })
}

fn chunk_response() -> impl Strategy<Value = ChunkResponse> {
    (
        any::<[u8; 16]>(),
        any::<u32>(),
        status(),
        vec(any::<u8>(), 0..3000),
    )
        .prop_map(|(campaign, index, status, data)| ChunkResponse {
            campaign,
            index,
            status,
            data,
        })
}

/// Valid encodings of every kind, to mutate.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        control().prop_map(|c| encode_control(&c)),
        chunk_request().prop_map(|r| r.encode()),
        chunk_response().prop_map(|r| r.encode()),
        signed_manifest().prop_map(|(_, s)| s.body),
    ]
}

/// Feeds `bytes` to every decoder; none may panic.
fn decode_everything(bytes: &[u8]) {
    let _ = decode_control(bytes);
    let _ = ChunkRequest::decode(bytes);
    let _ = ChunkResponse::decode(bytes);
    let _ = SignedManifest {
        body: bytes.to_vec(),
        signature: vec![0; 64],
    }
    .open_unchecked();
}

// ---------- round trips ----------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_control_message_round_trips(msg in control()) {
        let bytes = encode_control(&msg);
        prop_assert!(bytes.len() <= MAX_CONTROL_MESSAGE);
        prop_assert_eq!(decode_control(&bytes), Ok(msg.clone()));
        // a reader decides the frame limit from the first bytes: only offers may be large
        let limit = baton_protocol::wire::control_frame_limit(&bytes[..bytes.len().min(8)]);
        if matches!(msg, Control::Offer(_)) {
            prop_assert_eq!(limit, MAX_CONTROL_MESSAGE);
        } else {
            prop_assert_eq!(limit, baton_protocol::limits::MAX_SMALL_CONTROL);
            prop_assert!(bytes.len() <= limit);
        }
    }

    #[test]
    fn signed_manifests_open_to_what_was_signed((m, s) in signed_manifest()) {
        prop_assert_eq!(s.open_unchecked(), Ok(m));
    }

    #[test]
    fn chunk_requests_round_trip(r in chunk_request()) {
        prop_assert_eq!(ChunkRequest::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn chunk_responses_round_trip(r in chunk_response()) {
        let bytes = r.encode();
        prop_assert_eq!(bytes.len(), ChunkResponse::HEADER_LEN + r.data.len());
        let mut head = Vec::new();
        r.encode_header_into(&mut head);
        prop_assert_eq!(&head[..], &bytes[..ChunkResponse::HEADER_LEN]);
        prop_assert_eq!(ChunkResponse::decode(&bytes), Ok(r));
    }
}

// ---------- refusals ----------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..600)) {
        decode_everything(&bytes);
    }

    #[test]
    fn random_bytes_behind_a_valid_frame_prefix_never_panic(
        prefix in prop_oneof![Just(&b"BTCQ\x01"[..]), Just(&b"BTCR\x01"[..]), Just(&b"\xa1eOffer"[..])],
        bytes in vec(any::<u8>(), 0..600),
    ) {
        let mut b = prefix.to_vec();
        b.extend_from_slice(&bytes);
        decode_everything(&b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// CBOR and the chunk frames are prefix-free: no truncation of a valid encoding is
    /// itself valid.
    #[test]
    fn truncations_are_refused(msg in control(), req in chunk_request(), resp in chunk_response(), cut in any::<prop::sample::Index>()) {
        let c = encode_control(&msg);
        prop_assert!(decode_control(&c[..cut.index(c.len())]).is_err());
        let q = req.encode();
        prop_assert!(ChunkRequest::decode(&q[..cut.index(q.len())]).is_err());
        let r = resp.encode();
        prop_assert!(ChunkResponse::decode(&r[..cut.index(r.len())]).is_err());
    }

    #[test]
    fn bit_flips_never_panic(frame in valid_frame(), flips in vec((any::<prop::sample::Index>(), 0u8..8), 1..4)) {
        let mut b = frame;
        for (at, bit) in flips {
            let i = at.index(b.len());
            b[i] ^= 1 << bit;
        }
        decode_everything(&b);
        // the chunk frames have one encoding per value
        if let Ok(r) = ChunkResponse::decode(&b) {
            prop_assert_eq!(r.encode(), b.clone());
        }
        if let Ok(r) = ChunkRequest::decode(&b) {
            prop_assert_eq!(r.encode(), b.clone());
        }
    }

    /// No change to a signed manifest, in its body or its signature, is accepted.
    #[test]
    fn tampered_manifests_are_refused((_, s) in signed_manifest(), at in any::<prop::sample::Index>(), bit in 0u8..8, in_sig in any::<bool>()) {
        let mut t = s.clone();
        let target = if in_sig { &mut t.signature } else { &mut t.body };
        let i = at.index(target.len());
        target[i] ^= 1 << bit;
        prop_assert!(t.open_unchecked().is_err());
        let mut cut = s.clone();
        cut.body.truncate(i.min(cut.body.len() - 1));
        prop_assert!(cut.open_unchecked().is_err());
    }
}

fn control_bytes_with_trailer(msg: &Control, trailer: &[u8]) -> Vec<u8> {
    let mut b = encode_control(msg);
    b.extend_from_slice(trailer);
    b
}

#[test]
fn oversize_control_messages_are_refused_before_decoding() {
    let big = vec![0u8; MAX_CONTROL_MESSAGE + 1];
    assert_eq!(
        decode_control(&big),
        Err(WireError::TooLarge {
            size: MAX_CONTROL_MESSAGE + 1,
            limit: MAX_CONTROL_MESSAGE
        })
    );
    let body = SignedManifest {
        body: big,
        signature: vec![0; 64],
    };
    assert!(matches!(
        body.open_unchecked(),
        Err(baton_protocol::manifest::ManifestError::TooLarge(_))
    ));
}

#[test]
fn hostile_cbor_is_refused_without_exhausting_memory_or_stack() {
    // nesting far past the decoder's recursion limit
    let deep = [vec![0xa1, 0x65], b"Offer".to_vec(), vec![0x81; 100_000]].concat();
    assert!(decode_control(&deep).is_err());
    // declared lengths of 2^64-1 with nothing behind them
    for header in [
        &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    ] {
        let mut b = vec![0xa1, 0x6b];
        b.extend_from_slice(b"AuthRequest");
        b.extend_from_slice(&[0xa1, 0x64]);
        b.extend_from_slice(b"path");
        b.extend_from_slice(header);
        assert!(decode_control(&b).is_err());
        assert!(decode_control(header).is_err());
    }
}

#[test]
fn paths_over_the_limit_are_refused() {
    let long: Vec<NodeId> = (0..=MAX_PATH as u64).map(fake_id).collect();
    let just: Vec<NodeId> = long[..MAX_PATH].to_vec();
    let auth = |path: Vec<NodeId>| Control::AuthRequest {
        campaign: CAMPAIGN,
        path,
        root: [1; 32],
        code: [2; 32],
    };
    assert!(decode_control(&encode_control(&auth(just.clone()))).is_ok());
    assert!(matches!(
        decode_control(&encode_control(&auth(long.clone()))),
        Err(WireError::Limit(_))
    ));

    let nms = keypair_from_seed(100);
    let mut h = PackageHasher::new(4096);
    h.update(b"x");
    let (size, hashes, root) = h.finish();
    let m = Manifest {
        format: MANIFEST_FORMAT,
        campaign: CAMPAIGN,
        nms: NodeId::of(&nms),
        name: "x".into(),
        version: "1".into(),
        file: "x-1.bin".into(),
        sequence: 1,
        size,
        chunk_size: 4096,
        chunk_hashes: HashList(hashes),
        root,
        created_at: 1,
        expires_at: 2,
        relay: RelayPolicy::default(),
        plan: PlanParams::default(),
        offline_install: false,
        self_update: false,
        addressees: vec![fake_id(0)],
    };
    let manifest = SignedManifest::sign(&m, &nms).unwrap();
    let offer = |part: Vec<NodeId>, path: Vec<NodeId>| {
        Control::Offer(Box::new(Offer {
            manifest: manifest.clone(),
            part,
            path,
            token: HopToken([0; 32]),
        }))
    };
    assert!(decode_control(&encode_control(&offer(just.clone(), just.clone()))).is_ok());
    assert!(matches!(
        decode_control(&encode_control(&offer(just.clone(), long.clone()))),
        Err(WireError::Limit(_))
    ));
    let huge_part: Vec<NodeId> = (0..=MAX_ADDRESSEES as u64).map(fake_id).collect();
    assert!(matches!(
        decode_control(&encode_control(&offer(huge_part, just.clone()))),
        Err(WireError::Limit(_))
    ));

    let req = |path| ChunkRequest {
        campaign: CAMPAIGN,
        index: 0,
        path,
    };
    assert!(ChunkRequest::decode(&req(just).encode()).is_ok());
    assert!(matches!(
        ChunkRequest::decode(&req(long).encode()),
        Err(WireError::Limit(_))
    ));
}

#[test]
fn reasons_over_the_limit_are_refused() {
    let at = "r".repeat(MAX_REASON);
    let over = "r".repeat(MAX_REASON + 1);
    let messages = |reason: &str| {
        vec![
            Control::AuthReply {
                campaign: CAMPAIGN,
                ok: false,
                reason: reason.into(),
            },
            Control::Trouble {
                campaign: CAMPAIGN,
                node: fake_id(1),
                reason: reason.into(),
            },
            Control::Error {
                reason: reason.into(),
            },
            Control::OfferReply {
                campaign: CAMPAIGN,
                verdict: Verdict::Refuse {
                    reason: RefuseReason::Busy,
                    detail: reason.into(),
                },
            },
            Control::InstallReport {
                campaign: CAMPAIGN,
                outcome: InstallOutcome::Failed {
                    reason: reason.into(),
                },
            },
        ]
    };
    for m in messages(&at) {
        assert_eq!(decode_control(&encode_control(&m)), Ok(m));
    }
    for m in messages(&over) {
        assert!(
            matches!(decode_control(&encode_control(&m)), Err(WireError::Limit(_))),
            "{:?} accepted",
            m.kind()
        );
    }
    // the limit is in bytes, not characters
    let wide = "é".repeat(MAX_REASON / 2 + 1);
    assert!(matches!(
        decode_control(&encode_control(&Control::Error { reason: wide })),
        Err(WireError::Limit(_))
    ));
}

#[test]
fn trailing_bytes_are_refused() {
    for trailer in [&[0u8][..], &[0xf6], b"\xa1cAck"] {
        let b = control_bytes_with_trailer(&Control::Ack, trailer);
        assert!(matches!(decode_control(&b), Err(WireError::Malformed(_))));
    }
    let mut q = ChunkRequest {
        campaign: CAMPAIGN,
        index: 1,
        path: vec![fake_id(1)],
    }
    .encode();
    q.push(0);
    assert!(matches!(ChunkRequest::decode(&q), Err(WireError::Malformed(_))));
    let mut r = ChunkResponse {
        campaign: CAMPAIGN,
        index: 1,
        status: ChunkStatus::Ok,
        data: vec![7; 10],
    }
    .encode();
    r.push(0);
    assert!(matches!(ChunkResponse::decode(&r), Err(WireError::Malformed(_))));
}

fn response_header(status: u8, len: u32) -> Vec<u8> {
    let mut b = b"BTCR\x01".to_vec();
    b.extend_from_slice(&CAMPAIGN);
    b.extend_from_slice(&9u32.to_be_bytes());
    b.push(status);
    b.extend_from_slice(&len.to_be_bytes());
    b
}

#[test]
fn chunk_response_limits_and_statuses() {
    let limit = MAX_CHUNK_SIZE as usize + 16;
    // a length field over the largest sealed chunk is refused before reading the data
    assert_eq!(
        ChunkResponse::decode(&response_header(0, limit as u32 + 1)),
        Err(WireError::TooLarge {
            size: limit + 1,
            limit
        })
    );
    assert_eq!(
        ChunkResponse::decode(&response_header(0, u32::MAX)),
        Err(WireError::TooLarge {
            size: u32::MAX as usize,
            limit
        })
    );
    // the largest sealed chunk is accepted
    let mut full = response_header(0, limit as u32);
    full.resize(full.len() + limit, 0xee);
    let r = ChunkResponse::decode(&full).unwrap();
    assert_eq!((r.index, r.status, r.data.len()), (9, ChunkStatus::Ok, limit));
    // a frame over MAX_CHUNK_FRAME is refused whole
    let mut over = response_header(0, 0);
    over.resize(MAX_CHUNK_FRAME + 1, 0);
    assert_eq!(
        ChunkResponse::decode(&over),
        Err(WireError::TooLarge {
            size: MAX_CHUNK_FRAME + 1,
            limit: MAX_CHUNK_FRAME
        })
    );
    // a length field promising more than the frame holds
    let mut short = response_header(0, 10);
    short.extend_from_slice(&[1; 9]);
    assert!(matches!(
        ChunkResponse::decode(&short),
        Err(WireError::Malformed(_))
    ));
    // statuses 0..=4 are known, anything else is refused
    for (code, s) in [
        (0, ChunkStatus::Ok),
        (1, ChunkStatus::UnknownCampaign),
        (2, ChunkStatus::NotYet),
        (3, ChunkStatus::Refused),
        (4, ChunkStatus::Gated),
    ] {
        assert_eq!(
            ChunkResponse::decode(&response_header(code, 0)).unwrap().status,
            s
        );
    }
    for code in [5u8, 6, 0x7f, 0xff] {
        assert!(matches!(
            ChunkResponse::decode(&response_header(code, 0)),
            Err(WireError::Malformed(m)) if m.contains("status")
        ));
    }
}

#[test]
fn chunk_frames_check_magic_version_and_peer_ids() {
    let q = ChunkRequest {
        campaign: CAMPAIGN,
        index: 1,
        path: vec![fake_id(1)],
    }
    .encode();
    let r = ChunkResponse {
        campaign: CAMPAIGN,
        index: 1,
        status: ChunkStatus::NotYet,
        data: vec![],
    }
    .encode();
    // requests and responses are not interchangeable
    assert!(ChunkRequest::decode(&r).is_err());
    assert!(ChunkResponse::decode(&q).is_err());
    for (i, v) in [(0, b'X'), (4, 2u8), (4, 0)] {
        let mut b = q.clone();
        b[i] = v;
        assert!(matches!(ChunkRequest::decode(&b), Err(WireError::Malformed(_))));
        let mut b = r.clone();
        b[i] = v;
        assert!(matches!(ChunkResponse::decode(&b), Err(WireError::Malformed(_))));
    }
    // a path entry that is not a peer id, or longer than MAX_PEER_ID_BYTES
    let mut bad = q[..25].to_vec();
    bad.extend_from_slice(&[1, 3, 0xff, 0xff, 0xff]);
    assert!(matches!(ChunkRequest::decode(&bad), Err(WireError::Malformed(_))));
    let mut long = q[..25].to_vec();
    long.push(1);
    long.push(65);
    long.extend_from_slice(&[0; 65]);
    assert!(matches!(
        ChunkRequest::decode(&long),
        Err(WireError::Malformed(_))
    ));
    // a request frame over its largest possible size
    assert!(matches!(
        ChunkRequest::decode(&vec![0; 26 + MAX_PATH * 65 + 1]),
        Err(WireError::TooLarge { .. })
    ));
}

#[test]
fn control_encodings_are_pinned() {
    // the CBOR shape docs/protocol.md describes; a change here breaks other implementations
    let campaign: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
    let cases: Vec<(Control, &str)> = vec![
        (Control::Ack, "6341636b"),
        (
            Control::Probe {
                nonce: 7,
                campaign: None,
            },
            "a16550726f6265a1656e6f6e636507",
        ),
        (
            Control::Probe {
                nonce: 7,
                campaign: Some(campaign),
            },
            "a16550726f6265a2656e6f6e6365076863616d706169676e50a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
        ),
        (
            Control::ProbeReply {
                nonce: 7,
                state: None,
            },
            "a16a50726f62655265706c79a1656e6f6e636507",
        ),
        (
            Control::ProbeReply {
                nonce: 7,
                state: Some(ProbeState {
                    campaign,
                    holding: Holding::Running {
                        phase: Phase::Receiving,
                        verified: 4096,
                    },
                }),
            },
            "a16a50726f62655265706c79a2656e6f6e636507657374617465a26863616d706169676e50a0a1a2a3a4a5a6a7a8a9aaabacadaeaf67686f6c64696e67a16772756e6e696e67a265706861736569726563656976696e67687665726966696564191000",
        ),
        (
            Control::OfferReply {
                campaign,
                verdict: Verdict::Refuse {
                    reason: RefuseReason::NotAddressee,
                    detail: "x".into(),
                },
            },
            "a16a4f666665725265706c79a26863616d706169676e50a0a1a2a3a4a5a6a7a8a9aaabacadaeaf67766572646963\
             74a166526566757365a266726561736f6e6d6e6f742d6164647265737365656664657461696c6178",
        ),
        (
            Control::Progress {
                campaign,
                phase: Phase::Receiving,
                verified: 4096,
                source: Some(fake_id(1)),
                parent: None,
                relay: None,
                fetched: Vec::new(),
            },
            "a16850726f6772657373a56863616d706169676e50a0a1a2a3a4a5a6a7a8a9aaabacadaeaf6570686173656972\
             6563656976696e6768766572696669656419100066736f757263654a0008010000000000000066706172656e74f6",
        ),
        (
            Control::InstallReport {
                campaign,
                outcome: InstallOutcome::Installed,
            },
            "a16d496e7374616c6c5265706f7274a26863616d706169676e50a0a1a2a3a4a5a6a7a8a9aaabacadaeaf676f7574\
             636f6d6569496e7374616c6c6564",
        ),
        (
            Control::AuthRequest {
                campaign,
                path: vec![fake_id(1), fake_id(2)],
                root: [1; 32],
                code: [2; 32],
            },
            "a16b4175746852657175657374a46863616d706169676e50a0a1a2a3a4a5a6a7a8a9aaabacadaeaf6470617468\
             824a000801000000000000004a0008020000000000000064726f6f7458200101010101010101010101010101010101\
             01010101010101010101010101010164636f6465582002020202020202020202020202020202020202020202020202\
             02020202020202",
        ),
    ];
    for (msg, hex) in cases {
        assert_eq!(hex::encode(encode_control(&msg)), hex, "{:?}", msg.kind());
        assert_eq!(decode_control(&hex::decode(hex).unwrap()), Ok(msg));
    }
    // chunk frames
    let a = NodeId::of(&keypair_from_seed(1));
    let q = ChunkRequest {
        campaign,
        index: 5,
        path: vec![a],
    };
    assert_eq!(
        hex::encode(q.encode()),
        "4254435101a0a1a2a3a4a5a6a7a8a9aaabacadaeaf000000050126\
         002408011220b92486d895544ac9e18a3c8284aba5f7e21a301a6213ed5a1ff71836c354d2fb"
    );
    let r = ChunkResponse {
        campaign,
        index: 5,
        status: ChunkStatus::Ok,
        data: vec![1, 2, 3],
    };
    assert_eq!(
        hex::encode(r.encode()),
        "4254435201a0a1a2a3a4a5a6a7a8a9aaabacadaeaf000000050000000003010203"
    );
}

#[test]
fn decoders_accept_fields_in_any_order_and_ignore_unknown_ones() {
    // what a second implementation may rely on: map order is free, unknown keys are skipped,
    // a missing optional field reads as null
    let mut b = vec![0xa1, 0x65];
    b.extend_from_slice(b"Probe");
    b.extend_from_slice(&[0xa2, 0x65]);
    b.extend_from_slice(b"extra");
    b.push(0xf5);
    b.push(0x65);
    b.extend_from_slice(b"nonce");
    b.push(0x07);
    assert_eq!(
        decode_control(&b),
        Ok(Control::Probe {
            nonce: 7,
            campaign: None
        })
    );

    let mut p = vec![0xa1, 0x68];
    p.extend_from_slice(b"Progress");
    p.extend_from_slice(&[0xa3, 0x68]);
    p.extend_from_slice(b"verified");
    p.push(0x01);
    p.push(0x65);
    p.extend_from_slice(b"phase");
    p.push(0x66);
    p.extend_from_slice(b"failed");
    p.push(0x68);
    p.extend_from_slice(b"campaign");
    p.push(0x50);
    p.extend_from_slice(&CAMPAIGN);
    assert_eq!(
        decode_control(&p),
        Ok(Control::Progress {
            campaign: CAMPAIGN,
            phase: Phase::Failed,
            verified: 1,
            source: None,
            parent: None,
            relay: None,
            fetched: Vec::new(),
        })
    );
    // an unknown variant or a missing required field is refused
    assert!(decode_control(b"\x64Nope").is_err());
    let mut missing = vec![0xa1, 0x65];
    missing.extend_from_slice(b"Probe");
    missing.push(0xa0);
    assert!(decode_control(&missing).is_err());
}

#[test]
fn the_largest_offer_fits() {
    // the most chunks and the most addressees at once, with ed25519-sized ids (38 bytes)
    use baton_protocol::limits::{MAX_CHUNKS, MAX_CONTROL_MESSAGE};
    let id = |n: u64| {
        let mut b = vec![0u8, 36];
        b.extend_from_slice(&[8, 1, 18, 32]);
        b.extend_from_slice(&n.to_le_bytes());
        b.resize(38, 7);
        NodeId::from_bytes(&b).unwrap()
    };
    let nms = keypair_from_seed(100);
    let addressees: Vec<NodeId> = (0..MAX_ADDRESSEES as u64).map(id).collect();
    let chunk_size = 4096u32;
    let m = Manifest {
        format: MANIFEST_FORMAT,
        campaign: CAMPAIGN,
        nms: NodeId::of(&nms),
        name: "x".repeat(200),
        version: "1".repeat(64),
        file: "y".repeat(200),
        sequence: u64::MAX,
        size: MAX_CHUNKS * chunk_size as u64,
        chunk_size,
        chunk_hashes: HashList(vec![[9; 32]; MAX_CHUNKS as usize]),
        root: [1; 32],
        created_at: u64::MAX - 1,
        expires_at: u64::MAX,
        relay: RelayPolicy::default(),
        plan: PlanParams::default(),
        offline_install: true,
        self_update: true,
        addressees: addressees.clone(),
    };
    let manifest = SignedManifest::sign(&m, &nms).unwrap();
    let offer = Control::Offer(Box::new(Offer {
        manifest,
        part: addressees.clone(),
        path: addressees[..MAX_PATH].to_vec(),
        token: HopToken([0; 32]),
    }));
    let bytes = encode_control(&offer);
    assert!(
        bytes.len() <= MAX_CONTROL_MESSAGE,
        "{} > {MAX_CONTROL_MESSAGE}",
        bytes.len()
    );
    assert_eq!(decode_control(&bytes), Ok(offer));
}

/// The probe's campaign and the reply's state are optional fields added to version 1: a
/// peer built before them decodes the new messages (it ignores the fields it does not
/// know), and this build decodes theirs (the fields are absent).
#[test]
fn probes_with_campaign_state_stay_decodable_both_ways() {
    #[derive(Debug, PartialEq, serde::Deserialize, serde::Serialize)]
    enum OldControl {
        Probe { nonce: u64 },
        ProbeReply { nonce: u64 },
    }
    let old = |m: &Control| -> OldControl {
        let b = encode_control(m);
        ciborium::from_reader(&b[..]).expect("an old peer decodes it")
    };
    let campaign = [9u8; 16];
    assert_eq!(
        old(&Control::Probe {
            nonce: 3,
            campaign: Some(campaign)
        }),
        OldControl::Probe { nonce: 3 }
    );
    assert_eq!(
        old(&Control::ProbeReply {
            nonce: 3,
            state: Some(ProbeState {
                campaign,
                holding: Holding::Finished
            })
        }),
        OldControl::ProbeReply { nonce: 3 }
    );
    for (o, new) in [
        (
            OldControl::Probe { nonce: 4 },
            Control::Probe {
                nonce: 4,
                campaign: None,
            },
        ),
        (
            OldControl::ProbeReply { nonce: 4 },
            Control::ProbeReply {
                nonce: 4,
                state: None,
            },
        ),
    ] {
        let mut b = Vec::new();
        ciborium::into_writer(&o, &mut b).unwrap();
        assert_eq!(decode_control(&b), Ok(new));
    }
}
