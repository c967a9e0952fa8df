//! The fuzz corpora as regression tests: every file of `fuzz/corpus/<target>/` goes through
//! the same function as the fuzz target `<target>` (the bodies live in
//! `fuzz/src/protocol.rs`, included here), under stable `cargo test`.
//!
//! The seed files are written by the ignored test `generate_seed_corpus`:
//! `cargo test -p baton-protocol --test fuzz_corpus -- --ignored generate_seed_corpus`.

// A test of the core that reads and writes the committed corpus files; the core itself
// does no file I/O (protocol/clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};

use baton_protocol::chunk::{Hash, PackageHasher};
use baton_protocol::id::{NodeId, fake_id, keypair_from_seed};
use baton_protocol::keys::{CampaignSecret, HopToken};
use baton_protocol::limits::{MAX_PATH, MAX_REASON};
use baton_protocol::manifest::{
    HashList, MANIFEST_FORMAT, Manifest, PlanParams, RelayPolicy, RelayWhen, SignedManifest, Transfer,
};
use baton_protocol::receiver::check_offer;
use baton_protocol::wire::{
    ChunkRequest, ChunkResponse, ChunkStatus, Control, Holding, InstallOutcome, Offer, Phase, ProbeState,
    RefuseReason, Verdict, decode_control, encode_control,
};

mod targets {
    include!("../../fuzz/src/protocol.rs");
}
use targets::{
    INSTALLED, NOW, fixture, fuzz_chunk_request, fuzz_chunk_response, fuzz_control, fuzz_manifest, fuzz_offer,
};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Runs every file of the target's corpus through `body`; fails naming every file that
/// panics, and if the corpus is missing or empty.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|p| {
            let data = std::fs::read(p).unwrap();
            std::panic::catch_unwind(|| body(&data)).is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: these corpus files panic: {failed:#?}"
    );
}

#[test]
fn control_corpus() {
    replay("control", fuzz_control);
}

#[test]
fn chunk_request_corpus() {
    replay("chunk_request", fuzz_chunk_request);
}

#[test]
fn chunk_response_corpus() {
    replay("chunk_response", fuzz_chunk_response);
}

#[test]
fn manifest_corpus() {
    replay("manifest", fuzz_manifest);
}

#[test]
fn offer_corpus() {
    replay("offer", fuzz_offer);
}

// ---------- the seeds ----------

/// Named inputs of one target.
type Seeds = Vec<(String, Vec<u8>)>;

const CAMPAIGN: [u8; 16] = [0xc4; 16];

fn key_id(seed: u64) -> NodeId {
    NodeId::of(&keypair_from_seed(seed))
}

/// Other addressees (real ed25519 ids).
fn others(n: u64) -> Vec<NodeId> {
    (0..n).map(|i| key_id(0xba70_0100 + i)).collect()
}

/// A manifest the fixture's node accepts: signed by the trusted NMS, current, newer than
/// what is installed, and naming the node.
fn good_manifest() -> Manifest {
    let f = fixture();
    let mut h = PackageHasher::new(4096);
    h.update(&[0x42; 10_000]);
    let (size, hashes, root) = h.finish();
    let mut addressees = vec![f.me];
    addressees.extend(others(3));
    Manifest {
        format: MANIFEST_FORMAT,
        campaign: CAMPAIGN,
        nms: f.nms_id,
        name: "frobnicator".into(),
        version: "2.4.1".into(),
        file: "frobnicator-2.4.1.tar.gz".into(),
        sequence: INSTALLED.0 + 1,
        size,
        chunk_size: 4096,
        chunk_hashes: HashList(hashes),
        root,
        created_at: NOW - 100,
        expires_at: NOW + 86_400,
        relay: RelayPolicy::default(),
        plan: PlanParams::default(),
        offline_install: false,
        self_update: false,
        addressees,
    }
}

fn body(m: &Manifest) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(m, &mut out).unwrap();
    out
}

/// Signed with the trusted NMS's key whatever the manifest says (no validation), so that
/// near-valid manifests can be seeded too.
fn signed(m: &Manifest) -> SignedManifest {
    let body = body(m);
    let signature = fixture().sign(&body);
    SignedManifest { body, signature }
}

/// Manifests, valid and near-valid, by name.
fn manifests() -> Vec<(&'static str, Manifest)> {
    let f = fixture();
    let good = good_manifest();
    let with = |change: &dyn Fn(&mut Manifest)| {
        let mut m = good.clone();
        change(&mut m);
        m
    };
    let empty_root: Hash = *blake3_empty();
    vec![
        ("valid", good.clone()),
        (
            "valid-resume",
            with(&|m| {
                m.sequence = INSTALLED.0;
                m.root = INSTALLED.1;
            }),
        ),
        (
            "valid-empty-package",
            with(&|m| {
                m.size = 0;
                m.chunk_hashes = HashList(vec![]);
                m.root = empty_root;
            }),
        ),
        (
            "valid-store-and-forward",
            with(&|m| {
                m.relay = RelayPolicy {
                    when: RelayWhen::IdleAndAc,
                    window: Some((1320, 360)),
                    grace_secs: 600,
                };
                m.plan = PlanParams {
                    fanout: 16,
                    transfer: Transfer::StoreAndForward,
                    leaves: 1,
                };
                m.offline_install = true;
                m.self_update = true;
            }),
        ),
        (
            "valid-many",
            with(&|m| {
                m.addressees.extend((0..200).map(fake_id));
                let mut h = PackageHasher::new(4096);
                h.update(&[7; 64 * 4096 - 5]);
                let (size, hashes, root) = h.finish();
                (m.size, m.chunk_hashes, m.root) = (size, HashList(hashes), root);
            }),
        ),
        ("expired", with(&|m| m.expires_at = NOW)),
        ("rollback", with(&|m| m.sequence = INSTALLED.0 - 1)),
        ("same-sequence-other-root", with(&|m| m.sequence = INSTALLED.0)),
        ("not-addressee", with(&|m| m.addressees.retain(|a| *a != f.me))),
        ("untrusted-signer", with(&|m| m.nms = key_id(0xba70_0666))),
        ("fanout-0", with(&|m| m.plan.fanout = 0)),
        ("fanout-17", with(&|m| m.plan.fanout = 17)),
        ("chunk-size-small", with(&|m| m.chunk_size = 4095)),
        ("chunk-size-large", with(&|m| m.chunk_size = 16 * 1024 * 1024 + 1)),
        ("hash-missing", with(&|m| _ = m.chunk_hashes.0.pop())),
        ("hash-extra", with(&|m| m.chunk_hashes.0.push([1; 32]))),
        ("too-many-chunks", with(&|m| m.size = 1 << 40)),
        ("addressee-twice", with(&|m| m.addressees.push(f.me))),
        ("no-addressees", with(&|m| m.addressees.clear())),
        ("nms-addressee", with(&|m| m.addressees.push(f.nms_id))),
        ("name-path", with(&|m| m.name = "../../etc".into())),
        ("file-hidden", with(&|m| m.file = ".profile".into())),
        ("version-empty", with(&|m| m.version = String::new())),
        ("version-long", with(&|m| m.version = "9".repeat(65))),
        ("format-2", with(&|m| m.format = 2)),
        ("expires-before-created", with(&|m| m.expires_at = m.created_at)),
        (
            "chain-too-deep",
            with(&|m| {
                m.addressees.extend((0..70).map(fake_id));
                m.plan.fanout = 1;
            }),
        ),
    ]
}

fn blake3_empty() -> &'static Hash {
    static EMPTY: std::sync::OnceLock<Hash> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| PackageHasher::new(4096).finish().2)
}

fn token_for(path: &[NodeId]) -> HopToken {
    CampaignSecret([9; 32]).root_token(&CAMPAIGN).along(path)
}

fn offer(manifest: SignedManifest, part: Vec<NodeId>, path: Vec<NodeId>) -> Control {
    let token = token_for(&path);
    Control::Offer(Box::new(Offer {
        manifest,
        part,
        path,
        token,
    }))
}

/// Offers (encoded), valid and near-valid, by name.
fn offers() -> Seeds {
    let f = fixture();
    let m = good_manifest();
    let o = others(3);
    let good = signed(&m);
    let mut out: Seeds = vec![
        (
            "valid-first-tier".into(),
            encode_control(&offer(good.clone(), vec![f.me, o[1], o[2]], vec![f.me])),
        ),
        (
            "valid-second-tier".into(),
            encode_control(&offer(good.clone(), vec![f.me, o[2]], vec![o[0], f.me])),
        ),
        (
            "part-not-me-first".into(),
            encode_control(&offer(good.clone(), vec![o[1], f.me], vec![f.me])),
        ),
        (
            "path-not-ending-with-me".into(),
            encode_control(&offer(good.clone(), vec![f.me], vec![o[0]])),
        ),
        (
            "empty-path".into(),
            encode_control(&offer(good.clone(), vec![f.me], vec![])),
        ),
        (
            "stranger-in-part".into(),
            encode_control(&offer(good.clone(), vec![f.me, key_id(0xba70_0777)], vec![f.me])),
        ),
        (
            "path-too-long".into(),
            encode_control(&offer(
                good.clone(),
                vec![f.me],
                std::iter::repeat_n(o[0], MAX_PATH).chain([f.me]).collect(),
            )),
        ),
    ];
    let mut flipped = good.clone();
    flipped.signature[7] ^= 1;
    out.push((
        "bad-signature".into(),
        encode_control(&offer(flipped, vec![f.me], vec![f.me])),
    ));
    let mut trailing = encode_control(&offer(good, vec![f.me], vec![f.me]));
    trailing.push(0);
    out.push(("trailing-byte".into(), trailing));
    for (name, m) in manifests().into_iter().filter(|(n, _)| !n.starts_with("valid")) {
        let frame = encode_control(&offer(signed(&m), vec![f.me], vec![f.me]));
        out.push((format!("manifest-{name}"), frame));
    }
    out
}

/// Every control message, by name.
fn controls() -> Seeds {
    let f = fixture();
    let id = f.me;
    let c = CAMPAIGN;
    let mut msgs: Vec<(String, Control)> = vec![
        ("ack".into(), Control::Ack),
        (
            "probe".into(),
            Control::Probe {
                nonce: 7,
                campaign: None,
            },
        ),
        (
            "probe-reply".into(),
            Control::ProbeReply {
                nonce: u64::MAX,
                state: None,
            },
        ),
        (
            "probe-campaign".into(),
            Control::Probe {
                nonce: 8,
                campaign: Some(c),
            },
        ),
        (
            "probe-reply-state".into(),
            Control::ProbeReply {
                nonce: 8,
                state: Some(ProbeState {
                    campaign: c,
                    holding: Holding::Running {
                        phase: Phase::Receiving,
                        verified: 4096,
                    },
                }),
            },
        ),
        (
            "offer-reply-accept".into(),
            Control::OfferReply {
                campaign: c,
                verdict: Verdict::Accept,
            },
        ),
        (
            "receipt".into(),
            Control::Receipt {
                campaign: c,
                root: [1; 32],
            },
        ),
        (
            "receipt-ack".into(),
            Control::ReceiptAck {
                campaign: c,
                matches: true,
            },
        ),
        (
            "auth-request".into(),
            Control::AuthRequest {
                campaign: c,
                path: vec![fake_id(1), id],
                root: [1; 32],
                code: [2; 32],
            },
        ),
        (
            "auth-reply".into(),
            Control::AuthReply {
                campaign: c,
                ok: false,
                reason: "wrong code".into(),
            },
        ),
        (
            "progress".into(),
            Control::Progress {
                campaign: c,
                phase: Phase::Receiving,
                verified: 4096,
                source: Some(fake_id(1)),
                parent: None,
                relay: None,
                fetched: Vec::new(),
            },
        ),
        (
            "install-installed".into(),
            Control::InstallReport {
                campaign: c,
                outcome: InstallOutcome::Installed,
            },
        ),
        (
            "install-failed".into(),
            Control::InstallReport {
                campaign: c,
                outcome: InstallOutcome::Failed {
                    reason: "exit status 1: ünïcödé".into(),
                },
            },
        ),
        (
            "trouble".into(),
            Control::Trouble {
                campaign: c,
                node: id,
                reason: "timed out".into(),
            },
        ),
        (
            "error-max-reason".into(),
            Control::Error {
                reason: "x".repeat(MAX_REASON),
            },
        ),
        (
            "error-over-reason".into(),
            Control::Error {
                reason: "x".repeat(MAX_REASON + 1),
            },
        ),
    ];
    for (i, phase) in [
        Phase::Verifying,
        Phase::Authenticating,
        Phase::Installing,
        Phase::Installed,
        Phase::Failed,
    ]
    .into_iter()
    .enumerate()
    {
        msgs.push((
            format!("progress-{i}"),
            Control::Progress {
                campaign: c,
                phase,
                verified: 1 << 40,
                source: None,
                parent: Some(id),
                relay: None,
                fetched: Vec::new(),
            },
        ));
    }
    for reason in [
        RefuseReason::Untrusted,
        RefuseReason::BadManifest,
        RefuseReason::Expired,
        RefuseReason::Rollback,
        RefuseReason::NotAddressee,
        RefuseReason::BadOffer,
        RefuseReason::Busy,
        RefuseReason::Gated,
    ] {
        msgs.push((
            format!("offer-reply-{reason:?}").to_lowercase(),
            Control::OfferReply {
                campaign: c,
                verdict: Verdict::Refuse {
                    reason,
                    detail: "because".into(),
                },
            },
        ));
    }
    let mut out: Seeds = msgs.into_iter().map(|(n, m)| (n, encode_control(&m))).collect();
    let (_, first_tier) = offers().into_iter().next().unwrap();
    out.push(("offer".into(), first_tier));
    let mut trailing = encode_control(&Control::Ack);
    trailing.push(0xf6);
    out.push(("ack-trailing".into(), trailing));
    out
}

fn chunk_requests() -> Seeds {
    let f = fixture();
    let req = |index, path: Vec<NodeId>| {
        ChunkRequest {
            campaign: CAMPAIGN,
            index,
            path,
        }
        .encode()
    };
    let full = req(5, std::iter::repeat_n(f.me, MAX_PATH).collect());
    let mut over = req(5, std::iter::repeat_n(f.me, MAX_PATH).collect());
    over[25] = MAX_PATH as u8 + 1;
    let mut trailing = req(1, vec![f.me]);
    trailing.push(0);
    let mut version = req(1, vec![f.me]);
    version[4] = 2;
    let one = req(5, vec![f.me]);
    vec![
        ("empty-path".into(), req(0, vec![])),
        ("one".into(), one.clone()),
        ("fake-ids".into(), req(u32::MAX, (1..4).map(fake_id).collect())),
        ("full-path".into(), full),
        ("path-over-limit".into(), over),
        ("trailing-byte".into(), trailing),
        ("version-2".into(), version),
        ("truncated".into(), one[..one.len() - 3].to_vec()),
    ]
}

fn chunk_responses() -> Seeds {
    let resp = |status, data: Vec<u8>| {
        ChunkResponse {
            campaign: CAMPAIGN,
            index: 5,
            status,
            data,
        }
        .encode()
    };
    let key = token_for(&[fixture().me]).chunk_key();
    let mut sealed = vec![0x42; 100];
    key.seal(&CAMPAIGN, 5, &mut sealed);
    let mut sealed_full = vec![0x42; 4096];
    key.seal(&CAMPAIGN, 5, &mut sealed_full);
    let ok = resp(ChunkStatus::Ok, sealed.clone());
    let mut trailing = ok.clone();
    trailing.push(0);
    let mut bad_status = resp(ChunkStatus::Gated, vec![]);
    bad_status[25] = 5;
    let mut huge_len = resp(ChunkStatus::Ok, vec![]);
    huge_len[26..30].copy_from_slice(&u32::MAX.to_be_bytes());
    vec![
        ("ok".into(), ok.clone()),
        ("ok-full-chunk".into(), resp(ChunkStatus::Ok, sealed_full)),
        (
            "unknown-campaign".into(),
            resp(ChunkStatus::UnknownCampaign, vec![]),
        ),
        ("not-yet".into(), resp(ChunkStatus::NotYet, vec![])),
        ("refused".into(), resp(ChunkStatus::Refused, vec![])),
        ("gated".into(), resp(ChunkStatus::Gated, vec![])),
        ("trailing-byte".into(), trailing),
        ("bad-status".into(), bad_status),
        ("huge-len".into(), huge_len),
        ("truncated".into(), ok[..ok.len() - 1].to_vec()),
    ]
}

fn seeds() -> Vec<(&'static str, Seeds)> {
    let mut manifest: Seeds = manifests()
        .into_iter()
        .map(|(n, m)| (n.to_string(), body(&m)))
        .collect();
    let mut trailing = body(&good_manifest());
    trailing.push(0);
    manifest.push(("trailing-byte".into(), trailing));
    vec![
        ("control", controls()),
        ("chunk_request", chunk_requests()),
        ("chunk_response", chunk_responses()),
        ("manifest", manifest),
        ("offer", offers()),
    ]
}

/// Writes the seed files (`seed-<name>`), replacing older seeds; leaves other corpus files.
#[test]
#[ignore = "writes fuzz/corpus; run by hand after a change of the wire format"]
fn generate_seed_corpus() {
    for (target, files) in seeds() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for old in std::fs::read_dir(&dir).unwrap() {
            let p = old.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with("seed-") {
                std::fs::remove_file(p).unwrap();
            }
        }
        for (name, data) in files {
            std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        }
    }
}

/// The seeds mean what their names say, so that the fuzzer starts from inputs that pass
/// the checks; a failure here means the seeds need regenerating (see the module docs).
#[test]
fn valid_seeds_are_accepted_and_near_valid_ones_refused() {
    let f = fixture();
    let ctx = f.ctx();
    for (name, m) in manifests() {
        let verdict = signed(&m).verify(&ctx);
        assert_eq!(name.starts_with("valid"), verdict.is_ok(), "{name}: {verdict:?}");
    }
    let o = others(1);
    for (name, frame) in offers() {
        let verdict = match decode_control(&frame) {
            Ok(Control::Offer(offer)) => {
                let from = if name == "valid-second-tier" {
                    o[0]
                } else {
                    f.nms_id
                };
                check_offer(&offer, &from, &ctx).map(|_| ())
            }
            other => Err(baton_protocol::receiver::Refusal {
                reason: RefuseReason::BadOffer,
                detail: format!("{other:?}"),
            }),
        };
        assert_eq!(name.starts_with("valid"), verdict.is_ok(), "{name}: {verdict:?}");
    }
    for (target, files) in seeds() {
        for (name, data) in files {
            let on_disk = std::fs::read(corpus_dir(target).join(format!("seed-{name}")))
                .unwrap_or_else(|e| panic!("{target}/seed-{name}: {e}; regenerate the seeds"));
            assert!(
                on_disk == data,
                "{target}/seed-{name} is stale; regenerate the seeds"
            );
        }
    }
}
