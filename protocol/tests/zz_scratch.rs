use baton_protocol::id::{fake_id, keypair_from_seed};
use baton_protocol::keys::{CampaignSecret, HopToken};
use baton_protocol::manifest::*;
use baton_protocol::wire::*;
use baton_protocol::*;
use ciborium::Value;

fn diag(v: &Value) -> String {
    match v {
        Value::Integer(i) => format!("{}", i128::from(*i)),
        Value::Bytes(b) => format!("h'{}'", hex::encode(b)),
        Value::Text(t) => format!("{t:?}"),
        Value::Bool(b) => format!("{b}"),
        Value::Null => "null".into(),
        Value::Float(f) => format!("{f}"),
        Value::Tag(t, v) => format!("{t}({})", diag(v)),
        Value::Array(a) => format!("[{}]", a.iter().map(diag).collect::<Vec<_>>().join(", ")),
        Value::Map(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", diag(k), diag(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => "?".into(),
    }
}

fn show(name: &str, c: &Control) {
    let b = encode_control(c);
    let v: Value = ciborium::from_reader(b.as_slice()).unwrap();
    println!(
        "--- {name} ({} bytes)\nhex {}\ndiag {}",
        b.len(),
        hex::encode(&b),
        diag(&v)
    );
}

#[test]
fn dump() {
    let a = NodeId::of(&keypair_from_seed(1));
    let b = NodeId::of(&keypair_from_seed(2));
    let nms_kp = keypair_from_seed(100);
    let nms = NodeId::of(&nms_kp);
    for s in [1u64, 2] {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&s.to_le_bytes());
        bytes[8] = 0xba;
        let d = blake3::derive_key("baton 2026 test keypair v1", &bytes);
        println!("seed {s}: input {} secret {}", hex::encode(bytes), hex::encode(d));
        let kp = keypair_from_seed(s);
        let pk = kp.public().try_into_ed25519().unwrap().to_bytes();
        println!(
            "  pub {} id {} ({})",
            hex::encode(pk),
            hex::encode(NodeId::of(&kp).to_bytes()),
            NodeId::of(&kp)
        );
    }
    println!("fake_id(1) {}", hex::encode(fake_id(1).to_bytes()));
    let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
    let campaign: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
    let root = *blake3::hash(b"baton").as_bytes();
    let s = CampaignSecret(secret);
    let t_root = s.root_token(&campaign);
    let t_a = t_root.child(&a);
    let t_b = t_a.child(&b);
    println!("root hash {}", hex::encode(root));
    println!("T_root {}", hex::encode(t_root.0));
    println!("T_A {}", hex::encode(t_a.0));
    println!("T_B {}", hex::encode(t_b.0));
    println!("key_A {}", hex::encode(t_a.chunk_key().0));
    println!("key_B {}", hex::encode(t_b.chunk_key().0));
    for i in [0u32, 5] {
        let mut d = b"chunk zero".to_vec();
        t_b.chunk_key().seal(&campaign, i, &mut d);
        println!("sealed[{i}] {}", hex::encode(&d));
    }
    println!("auth_B {}", hex::encode(t_b.auth_code(&campaign, &root)));
    let _ = HopToken([0; 32]);

    show("Ack", &Control::Ack);
    show("Probe", &Control::Probe { nonce: 7 });
    show("Receipt", &Control::Receipt { campaign, root });
    show(
        "OfferReply accept",
        &Control::OfferReply {
            campaign,
            verdict: Verdict::Accept,
        },
    );
    show(
        "OfferReply refuse",
        &Control::OfferReply {
            campaign,
            verdict: Verdict::Refuse {
                reason: RefuseReason::NotAddressee,
                detail: "x".into(),
            },
        },
    );
    show(
        "Progress",
        &Control::Progress {
            campaign,
            phase: Phase::Receiving,
            verified: 4096,
            source: Some(fake_id(1)),
            parent: None,
        },
    );
    show(
        "InstallReport ok",
        &Control::InstallReport {
            campaign,
            outcome: InstallOutcome::Installed,
        },
    );
    show(
        "InstallReport failed",
        &Control::InstallReport {
            campaign,
            outcome: InstallOutcome::Failed {
                reason: "boom".into(),
            },
        },
    );
    show(
        "AuthRequest",
        &Control::AuthRequest {
            campaign,
            path: vec![fake_id(1), fake_id(2)],
            root: [1; 32],
            code: [2; 32],
        },
    );
    show("Error", &Control::Error { reason: "e".into() });
    let data = b"hello baton".to_vec();
    let mut h = PackageHasher::new(4096);
    h.update(&data);
    let (size, hashes, root2) = h.finish();
    let m = Manifest {
        format: 1,
        campaign,
        nms,
        name: "hello".into(),
        version: "1".into(),
        file: "hello-1.bin".into(),
        sequence: 1,
        size,
        chunk_size: 4096,
        chunk_hashes: HashList(hashes),
        root: root2,
        created_at: 1000,
        expires_at: 2000,
        relay: RelayPolicy {
            when: RelayWhen::IdleOrAc,
            window: Some((60, 300)),
            grace_secs: 60,
        },
        plan: PlanParams::default(),
        offline_install: false,
        self_update: false,
        addressees: vec![a, b],
    };
    let sm = SignedManifest::sign(&m, &nms_kp).unwrap();
    let v: Value = ciborium::from_reader(sm.body.as_slice()).unwrap();
    println!("manifest body ({} bytes) diag {}", sm.body.len(), diag(&v));
    println!("sig {}", hex::encode(&sm.signature));
    show(
        "Offer",
        &Control::Offer(Box::new(Offer {
            manifest: sm,
            part: vec![a, b],
            path: vec![a],
            token: t_a.clone(),
        })),
    );
    let rq = ChunkRequest {
        campaign,
        index: 5,
        path: vec![a, b],
    };
    println!("chunkreq {}", hex::encode(rq.encode()));
    let rs = ChunkResponse {
        campaign,
        index: 5,
        status: ChunkStatus::Ok,
        data: vec![1, 2, 3],
    };
    println!("chunkresp {}", hex::encode(rs.encode()));
}
