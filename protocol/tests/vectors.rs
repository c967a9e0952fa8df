//! Test vectors for the key schedule, the test identities and the manifest signature.
//!
//! The values are hard-coded: a change to a context string, an input order, the nonce or
//! the AAD breaks these tests, and with them every other implementation. docs/protocol.md
//! lists the same values.

use baton_protocol::id::{Keypair, NodeId, keypair_from_seed};
use baton_protocol::keys::{AuthClaim, CampaignSecret, verify_auth};
use baton_protocol::manifest::{
    HashList, MANIFEST_FORMAT, Manifest, PlanParams, RelayPolicy, RelayWhen, SignedManifest, Transfer,
};
use baton_protocol::{HopToken, PackageHasher};

fn h(bytes: impl AsRef<[u8]>) -> String {
    hex::encode(bytes)
}

fn secret() -> CampaignSecret {
    CampaignSecret(std::array::from_fn(|i| i as u8))
}

fn campaign() -> [u8; 16] {
    std::array::from_fn(|i| 0xa0 + i as u8)
}

fn a() -> NodeId {
    NodeId::of(&keypair_from_seed(1))
}

fn b() -> NodeId {
    NodeId::of(&keypair_from_seed(2))
}

fn root() -> [u8; 32] {
    *blake3::hash(b"baton").as_bytes()
}

const A_SECRET: &str = "d5916c85ee96f6c0ca58342436b310d0fd7c31586e19624ca689d7b031a0a2dd";
const A_PUBLIC: &str = "b92486d895544ac9e18a3c8284aba5f7e21a301a6213ed5a1ff71836c354d2fb";
const A_ID: &str = "002408011220b92486d895544ac9e18a3c8284aba5f7e21a301a6213ed5a1ff71836c354d2fb";
const B_SECRET: &str = "9bcf3fbb3f2a3d4b8accb31fecf68c51cff2085e48e5dd6fe6bbb177b8acbed8";
const B_PUBLIC: &str = "439abe37cf6c9936e7ee19cf9052535a7028f1d386d7ed49ec6e55eab68390f3";
const B_ID: &str = "002408011220439abe37cf6c9936e7ee19cf9052535a7028f1d386d7ed49ec6e55eab68390f3";

#[test]
fn test_identities() {
    for (seed, secret, public, id, text) in [
        (
            1u64,
            A_SECRET,
            A_PUBLIC,
            A_ID,
            "12D3KooWNH5tzswkAT26rBYo2mRfiZf7xQSWcoGf3m27Vg6yQq6a",
        ),
        (
            2,
            B_SECRET,
            B_PUBLIC,
            B_ID,
            "12D3KooWENGLgK294KsoR1LteERN6CjQSxjzJfGBiAaNjAAwUTfx",
        ),
        (
            100, // the NMS of the manifest vector
            "5bc0297a42f7adc213d39d10b8fc2cf7e47cbea40f3ad34315fe0aa8181583eb",
            "03fdfc8817f41dc6d9c63ec49704f41b8861b42607cbcd64a40408706bd6be82",
            "00240801122003fdfc8817f41dc6d9c63ec49704f41b8861b42607cbcd64a40408706bd6be82",
            "12D3KooWA5x23XX4s8GEtUUu5aehwmbmdDe5D8nwFP7Gk2KXVaWD",
        ),
    ] {
        // the ed25519 secret key: derive_key over seed (u64 LE) || 0xba || 23 zero bytes
        let mut input = [0u8; 32];
        input[..8].copy_from_slice(&seed.to_le_bytes());
        input[8] = 0xba;
        assert_eq!(
            h(blake3::derive_key("baton 2026 test keypair v1", &input)),
            secret
        );
        let kp = keypair_from_seed(seed);
        let derived = Keypair::ed25519_from_bytes(hex::decode(secret).unwrap()).unwrap();
        assert_eq!(kp.public(), derived.public());
        assert_eq!(h(kp.public().try_into_ed25519().unwrap().to_bytes()), public);
        // the peer id: identity multihash (0x00, 36) of the protobuf key (08 01 12 20 || key)
        let nid = NodeId::of(&kp);
        assert_eq!(h(nid.to_bytes()), id);
        assert_eq!(nid.to_string(), text);
        assert_eq!(nid.public_key(), Some(kp.public()));
    }
    assert_eq!(h(a().to_bytes()), A_ID);
    assert_eq!(h(b().to_bytes()), B_ID);
}

#[test]
fn key_schedule() {
    let campaign = campaign();
    assert_eq!(
        h(root()),
        "274548b0ae66d7bac84b63d3094303314f0b12d3a00174daf5e703573d1d6c4b"
    );
    let t_root = secret().root_token(&campaign);
    assert_eq!(
        h(t_root.0),
        "f6214425a60ff2088b8830a5565251a83f79915c94fb79efd75c90ad9c88a099"
    );
    let t_a = t_root.child(&a());
    assert_eq!(
        h(t_a.0),
        "f06e5f6724af05e833e8fd97638b3dbed9cf6985b714e569f566ed0f632cf87f"
    );
    let t_b = t_a.child(&b());
    assert_eq!(
        h(t_b.0),
        "005df21aee38a72f5dc651bf7f523c2d65e7e4633e71e5c102b19bfff4addec1"
    );
    assert_eq!(t_root.along(&[a(), b()]), t_b);
    assert_eq!(
        h(t_a.chunk_key().0),
        "eb67aa1fbfff1b218210d1053e5e691e1d137b211c55f57e73b59685240d2d86"
    );
    assert_eq!(
        h(t_b.chunk_key().0),
        "6eb807739649f844d6621a96ddff43bff2a38b0da0a58d6b579d85fed272bdb0"
    );
    assert_eq!(
        h(t_b.auth_code(&campaign, &root())),
        "f8262553c3594933a241e3d87e06836b1ffd59333b431ebaaca2f01062dcb4ac"
    );
}

#[test]
fn the_derivations_are_plain_blake3_derive_key() {
    // the same values from blake3 alone, as a second implementation would compute them
    let campaign = campaign();
    let kdf = |ctx: &str, parts: &[&[u8]]| blake3::derive_key(ctx, &parts.concat());
    let t_root = kdf("baton 2026-11 campaign root token v1", &[&secret().0, &campaign]);
    let t_a = kdf(
        "baton 2026-11 hop token v1",
        &[&t_root, &hex::decode(A_ID).unwrap()],
    );
    let t_b = kdf("baton 2026-11 hop token v1", &[&t_a, &hex::decode(B_ID).unwrap()]);
    let key_b = kdf("baton 2026-11 chunk key v1", &[&t_b]);
    let code_b = kdf("baton 2026-11 auth code v1", &[&t_b, &campaign, &root()]);
    let t = HopToken(t_b);
    assert_eq!(secret().root_token(&campaign).along(&[a(), b()]), t);
    assert_eq!(t.chunk_key().0, key_b);
    assert_eq!(t.auth_code(&campaign, &root()), code_b);
}

#[test]
fn sealed_chunks() {
    let campaign = campaign();
    let key = secret().root_token(&campaign).along(&[a(), b()]).chunk_key();
    for (index, sealed) in [
        (0u32, "a7aeaf5255ee0376ae32ea0ea693491fdcf7ae79e72f7fcce039"),
        (5, "944ea9fa8ffefcc607eaf11451732077d88f14774d2c8dd593c9"),
    ] {
        let mut data = b"chunk zero".to_vec();
        key.seal(&campaign, index, &mut data);
        assert_eq!(h(&data), sealed, "index {index}");
        // 10 bytes of ciphertext, then the 16-byte tag
        assert_eq!(data.len(), 10 + 16);
        key.open(&campaign, index, &mut data).unwrap();
        assert_eq!(data, b"chunk zero");
    }
}

#[test]
fn the_auth_code_of_b_is_accepted_along_its_path() {
    let (campaign, root, a, b) = (campaign(), root(), a(), b());
    let code = secret()
        .root_token(&campaign)
        .along(&[a, b])
        .auth_code(&campaign, &root);
    let check = |sender: &NodeId, path: &[NodeId]| {
        let claim = AuthClaim {
            sender,
            path,
            root: &root,
            code: &code,
        };
        verify_auth(&secret(), &campaign, &root, |_| true, claim)
    };
    assert_eq!(check(&b, &[a, b]), Ok(()));
    assert!(check(&b, &[b]).is_err());
    assert!(check(&a, &[a]).is_err());
}

/// A manifest signed by the test NMS (seed 100): the exact body bytes and the signature.
#[test]
fn manifest_signature() {
    let nms = keypair_from_seed(100);
    assert_eq!(
        h(NodeId::of(&nms).to_bytes()),
        "00240801122003fdfc8817f41dc6d9c63ec49704f41b8861b42607cbcd64a40408706bd6be82"
    );
    let data = b"hello baton";
    let mut hasher = PackageHasher::new(4096);
    hasher.update(data);
    let (size, hashes, root) = hasher.finish();
    let m = Manifest {
        format: MANIFEST_FORMAT,
        campaign: campaign(),
        nms: NodeId::of(&nms),
        name: "hello".into(),
        version: "1".into(),
        file: "hello-1.bin".into(),
        sequence: 1,
        size,
        chunk_size: 4096,
        chunk_hashes: HashList(hashes),
        root,
        created_at: 1000,
        expires_at: 2000,
        relay: RelayPolicy {
            when: RelayWhen::IdleOrAc,
            window: Some((60, 300)),
            grace_secs: 60,
        },
        plan: PlanParams {
            fanout: 2,
            transfer: Transfer::CutThrough,
            leaves: 0,
        },
        offline_install: false,
        self_update: false,
        addressees: vec![a(), b()],
    };
    let s = SignedManifest::sign(&m, &nms).unwrap();
    let body = "b266666f726d6174016863616d706169676e50a0a1a2a3a4a5a6a7a8a9aaabacadaeaf636e6d73582600240801\
                122003fdfc8817f41dc6d9c63ec49704f41b8861b42607cbcd64a40408706bd6be82646e616d656568656c6c6f\
                6776657273696f6e61316466696c656b68656c6c6f2d312e62696e6873657175656e6365016473697a650b6a63\
                68756e6b5f73697a651910006c6368756e6b5f6861736865735820bb4872f0897d62f00f5d167eb4844787476e\
                a4b624edcd5f5480e21d19539f0664726f6f745820bb4872f0897d62f00f5d167eb4844787476ea4b624edcd5f\
                5480e21d19539f066a637265617465645f61741903e86a657870697265735f61741907d06572656c6179a36477\
                68656e6a69646c652d6f722d61636677696e646f7782183c19012c6a67726163655f73656373183c64706c616e\
                a26666616e6f757402687472616e736665726b6375742d7468726f7567686f6f66666c696e655f696e7374616c\
                6cf46b73656c665f757064617465f46a61646472657373656573825826002408011220b92486d895544ac9e18a\
                3c8284aba5f7e21a301a6213ed5a1ff71836c354d2fb5826002408011220439abe37cf6c9936e7ee19cf905253\
                5a7028f1d386d7ed49ec6e55eab68390f3";
    assert_eq!(h(&s.body), body);
    assert_eq!(
        h(&s.signature),
        "6bd00b9ce25797bd498ec1bff4c23b59d9deca6f16f3fd0dfb31055aa74fa7e3\
         340b5aab468893f5b551a351303a7413c3f93f88bc7a0bc0d4dd4353bc98e706"
    );
    // the signature is plain ed25519 over "baton manifest v1\0" || body
    let mut msg = b"baton manifest v1\0".to_vec();
    msg.extend_from_slice(&s.body);
    assert!(nms.public().verify(&msg, &s.signature));
    assert!(!nms.public().verify(&s.body, &s.signature));
    assert_eq!(s.open_unchecked(), Ok(m));
}
