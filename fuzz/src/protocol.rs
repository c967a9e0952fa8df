// The bodies of the protocol fuzz targets, shared: the fuzz crate compiles this file as its
// module `protocol`, and `protocol/tests/fuzz_corpus.rs` include!()s it to replay the
// committed corpora under `cargo test`. Every function here must return normally on every
// input; a panic is a bug in the code under test (or a broken property), never caught.
//
// Only `baton_protocol`, `ciborium` (a dependency of baton-protocol) and `std` may be used,
// so that the file compiles in both places.

use std::sync::OnceLock;

use baton_protocol::id::{Keypair, NodeId, keypair_from_seed};
use baton_protocol::limits::{MAX_CHUNK_SIZE, MAX_PATH, MAX_REASON};
use baton_protocol::manifest::{Manifest, SIGNATURE_DOMAIN, SignedManifest, VerifyContext};
use baton_protocol::receiver::check_offer;
use baton_protocol::wire::{ChunkRequest, ChunkResponse, Control, decode_control, encode_control};

/// Seed of the NMS key that the manifest and offer targets trust (`keypair_from_seed`).
pub const NMS_SEED: u64 = 0xba70_0001;
/// Seed of the node that checks manifests and offers ("me").
pub const ME_SEED: u64 = 0xba70_0002;
/// The clock of the verifying node, Unix seconds.
pub const NOW: u64 = 1_800_000_000;
/// What the verifying node has installed of the package: (sequence, root).
pub const INSTALLED: (u64, [u8; 32]) = (5, [0x11; 32]);

/// The keys and ids the manifest and offer targets check against.
#[derive(Debug)]
pub struct Fixture {
    pub nms: Keypair,
    pub nms_id: NodeId,
    pub me: NodeId,
    pub trusted: [NodeId; 1],
}

impl Fixture {
    /// The verifying node's context: trusts the NMS, has `INSTALLED`, is `me`, at `NOW`.
    pub fn ctx(&self) -> VerifyContext<'_> {
        VerifyContext {
            trusted: &self.trusted,
            unix_now: NOW,
            installed: Some(INSTALLED),
            me: Some(self.me),
        }
    }

    /// Signs `body` as the trusted NMS would.
    pub fn sign(&self, body: &[u8]) -> Vec<u8> {
        let mut msg = Vec::with_capacity(SIGNATURE_DOMAIN.len() + body.len());
        msg.extend_from_slice(SIGNATURE_DOMAIN);
        msg.extend_from_slice(body);
        self.nms.sign(&msg).expect("ed25519 signing does not fail")
    }
}

/// The fixture, built once (deriving keys per input would dominate the run time).
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let nms = keypair_from_seed(NMS_SEED);
        let nms_id = NodeId::of(&nms);
        Fixture {
            nms,
            nms_id,
            me: NodeId::of(&keypair_from_seed(ME_SEED)),
            trusted: [nms_id],
        }
    })
}

/// `control`: a control frame. A message that decodes re-encodes to a frame that decodes to
/// the same message, and that encoding is stable.
pub fn fuzz_control(data: &[u8]) {
    let Ok(msg) = decode_control(data) else {
        return;
    };
    let _ = (msg.kind(), msg.campaign());
    let bytes = encode_control(&msg);
    let again = decode_control(&bytes)
        .unwrap_or_else(|e| panic!("a decoded message re-encodes to a frame that is refused: {e}"));
    assert_eq!(again, msg, "the message changed in a round trip");
    assert_eq!(encode_control(&again), bytes, "the encoding is not stable");
}

/// `chunk_request`: a chunk request frame. The format has one encoding per request, so a
/// frame that decodes re-encodes to exactly its bytes.
pub fn fuzz_chunk_request(data: &[u8]) {
    let Ok(req) = ChunkRequest::decode(data) else {
        return;
    };
    assert!(req.path.len() <= MAX_PATH);
    assert_eq!(
        req.encode(),
        data,
        "a decoded chunk request re-encodes to other bytes"
    );
}

/// `chunk_response`: a chunk response frame. It re-encodes to exactly its bytes, and the
/// header alone is the first `HEADER_LEN` of them.
pub fn fuzz_chunk_response(data: &[u8]) {
    let Ok(resp) = ChunkResponse::decode(data) else {
        return;
    };
    assert!(resp.data.len() <= MAX_CHUNK_SIZE as usize + 16);
    assert_eq!(
        resp.encode(),
        data,
        "a decoded chunk response re-encodes to other bytes"
    );
    let mut header = Vec::new();
    resp.encode_header_into(&mut header);
    assert_eq!(header, data[..ChunkResponse::HEADER_LEN]);
}

/// `manifest`: a manifest body (the CBOR that the NMS signs).
///
/// 1. decoded and validated on its own, whoever it names as signer;
/// 2. opened with a signature that is not the trusted NMS's: never opens as the trusted NMS;
/// 3. if it names the trusted NMS, signed by that key and put through `open_unchecked` and
///    the full `verify` of a node, whose answers must agree with 1 and with the context.
pub fn fuzz_manifest(data: &[u8]) {
    let f = fixture();
    let decoded = ciborium::from_reader::<Manifest, _>(data).ok();
    let valid = decoded.as_ref().map(|m| m.validate());
    if let Some((m, Ok(layout))) = decoded.as_ref().zip(valid.as_ref()) {
        assert_eq!(layout.count() as usize, m.chunk_hashes.0.len());
        if let Some(last) = layout.count().checked_sub(1) {
            let n = layout.len(last);
            assert!((1..=m.chunk_size).contains(&n), "last chunk of {n} bytes");
            assert_eq!(layout.offset(last) + u64::from(n), m.size);
        }
    }

    let forged = SignedManifest {
        body: data.to_vec(),
        signature: vec![0x5a; 64],
    };
    if let Ok(m) = forged.open_unchecked() {
        assert_ne!(
            m.nms, f.nms_id,
            "a signature not made by the trusted NMS verified"
        );
    }

    let Some(m) = decoded.filter(|m| m.nms == f.nms_id) else {
        return;
    };
    let signed = SignedManifest {
        body: data.to_vec(),
        signature: f.sign(data),
    };
    let opened = signed.open_unchecked();
    assert_eq!(
        opened.is_ok(),
        valid.is_some_and(|v| v.is_ok()),
        "open_unchecked and validate disagree: {opened:?}"
    );
    match signed.verify(&f.ctx()) {
        Ok(v) => {
            assert_eq!(v, m);
            assert!(NOW < v.expires_at);
            assert!(v.sequence > INSTALLED.0 || (v.sequence == INSTALLED.0 && v.root == INSTALLED.1));
            assert!(v.is_addressee(&f.me));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// `offer`: a control frame; if it is an offer, the checks a node makes on it.
///
/// The offer is checked as received (from the trusted NMS). If its manifest body names the
/// trusted NMS, it is also re-signed with that key and checked as coming from the parent its
/// path names, so that inputs reach the checks after the signature. An accepted offer must
/// satisfy them; a refusal must make a reply the parent can decode.
pub fn fuzz_offer(data: &[u8]) {
    let Ok(Control::Offer(offer)) = decode_control(data) else {
        return;
    };
    let f = fixture();
    let ctx = f.ctx();
    check_offer_and_reply(&offer, &f.nms_id, &ctx);

    let names_nms =
        ciborium::from_reader::<Manifest, _>(offer.manifest.body.as_slice()).is_ok_and(|m| m.nms == f.nms_id);
    if !names_nms {
        return;
    }
    let mut offer = offer;
    offer.manifest.signature = f.sign(&offer.manifest.body);
    let from = match offer.path.len() {
        n if n >= 2 => offer.path[n - 2],
        _ => f.nms_id,
    };
    if let Some(m) = check_offer_and_reply(&offer, &from, &ctx) {
        assert_eq!(offer.part.first(), Some(&f.me));
        assert_eq!(offer.path.last(), Some(&f.me));
        assert!(offer.path.len() <= MAX_PATH);
        assert!(offer.part.iter().chain(&offer.path).all(|n| m.is_addressee(n)));
    }
}

fn check_offer_and_reply(
    offer: &baton_protocol::wire::Offer,
    from: &NodeId,
    ctx: &VerifyContext<'_>,
) -> Option<Manifest> {
    match check_offer(offer, from, ctx) {
        Ok(m) => Some(m),
        Err(refusal) => {
            assert!(refusal.detail.len() <= MAX_REASON);
            let reply = Control::OfferReply {
                campaign: [0; 16],
                verdict: refusal.verdict(),
            };
            decode_control(&encode_control(&reply))
                .unwrap_or_else(|e| panic!("the refusal's reply does not decode: {e}"));
            None
        }
    }
}
