//! Relay gating in the node endpoint, on virtual time (issue 10): the probe's readings
//! open and close the gate of every campaign that follows a policy; a gated node still
//! receives and installs its copy but answers `Gated`, and a requester told `Gated` moves
//! to its next source at once.

use super::*;
use crate::gate::{Policy, Readings};

fn readings(idle: f64) -> Readings {
    Readings {
        cpu_idle: Some(idle),
        idle_span_secs: 30,
        ac_online: Some(true),
        local_minutes: 12 * 60,
        ..Readings::default()
    }
}

fn policy(s: &str) -> Policy {
    s.parse().unwrap()
}

fn config_with(local: Option<&str>) -> Config {
    Config {
        relay_policy: local.map(policy),
        ..config()
    }
}

/// A node `N` offered part `[N, P]` by `A` (P is its child), with the owner's policy
/// `local` and the campaign's `campaign`; its own chunk requests are left unanswered.
fn relay(local: Option<&str>, campaign: &str, first: Readings) -> Shell {
    let mut w = world_seq(7, 1);
    w.manifest.relay = policy(campaign).to_manifest(60);
    w.signed = SignedManifest::sign(&w.manifest, &keypair_from_seed(100)).unwrap();
    let start = start_with(&w, vec![], vec![]);
    let mut s = Shell::new(start, config_with(local), vec![w]);
    s.serve_chunks = false;
    s.input(Input::Readings(first));
    let offer = s.worlds[0].offer(&[N, P]);
    s.input(Input::ControlRequest {
        from: id(A),
        reply: ReplyId(1),
        msg: Control::Offer(Box::new(offer)),
    });
    s
}

/// P asks N for chunk `index`; returns the answers given during this input (`None`: the
/// chunk was sent).
fn ask(s: &mut Shell, reply: u64, index: u32) -> Vec<(ReplyId, Option<ChunkStatus>)> {
    let before = s.chunks.len();
    let req = ChunkRequest {
        campaign: s.worlds[0].c(),
        index,
        path: vec![id(A), id(N), id(P)],
    };
    s.input(Input::ChunkRequest {
        from: id(P),
        reply: ReplyId(reply),
        req,
    });
    answers_since(s, before)
}

fn answers_since(s: &Shell, before: usize) -> Vec<(ReplyId, Option<ChunkStatus>)> {
    s.chunks[before..]
        .iter()
        .filter_map(|a| match a {
            Action::SendChunk { reply, .. } => Some((*reply, None)),
            Action::AnswerChunk { reply, status, .. } => Some((*reply, Some(*status))),
            _ => None,
        })
        .collect()
}

fn gate_events(s: &Shell) -> Vec<(bool, Vec<CampaignId>)> {
    s.events
        .iter()
        .filter_map(|e| match e {
            Event::Gate { open, campaigns, .. } => Some((*open, campaigns.clone())),
            _ => None,
        })
        .collect()
}

/// Answers every chunk request N has out from the world, and serves later ones too.
fn feed_own_chunks(s: &mut Shell) {
    s.serve_chunks = true;
    let out: Vec<(OutId, ChunkRequest)> = s
        .chunks
        .iter()
        .filter_map(|a| match a {
            Action::RequestChunk { id, req, .. } => Some((*id, req.clone())),
            _ => None,
        })
        .collect();
    for (oid, req) in out {
        let resp = s.world(&req.campaign).sealed(req.index);
        s.input(Input::ChunkResponse { id: oid, resp });
    }
}

#[test]
fn a_gated_relay_installs_its_copy_but_serves_no_one_until_the_gate_reopens() {
    let mut s = relay(Some("idle"), "always", readings(0.95));
    let c = s.worlds[0].c();
    assert_eq!(
        s.ep.relay_policy(&c),
        Some(policy("idle")),
        "the owner's policy wins"
    );
    assert_eq!(
        gate_events(&s),
        vec![(true, vec![])],
        "opened by the first reading"
    );
    // P's request for a chunk N does not have yet is held (cut-through)
    assert!(ask(&mut s, 10, 0).is_empty());
    // the owner gets busy: the held request is answered Gated at once
    s.now = t(5);
    let before = s.chunks.len();
    s.input(Input::Readings(readings(0.3)));
    assert_eq!(
        answers_since(&s, before),
        vec![(ReplyId(10), Some(ChunkStatus::Gated))]
    );
    assert_eq!(gate_events(&s).last(), Some(&(false, vec![c])));
    let reason = s
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Gate { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(reason.contains("CPU 30% idle over 30 s"), "{reason}");
    // N still receives, verifies and installs its own copy
    feed_own_chunks(&mut s);
    s.input(Input::PeerAddressKnown(s.worlds[0].nms));
    for _ in 0..5 {
        s.nms_answers();
    }
    assert_eq!(s.installs, 1);
    assert_eq!(s.ep.campaign(&c).map(|m| m.phase()), Some(Phase::Installed));
    // but serves no one, though it holds every chunk
    assert_eq!(ask(&mut s, 11, 1), vec![(ReplyId(11), Some(ChunkStatus::Gated))]);
    // idle again from t=10: the gate reopens only after 60 s without a break
    s.now = t(10);
    s.input(Input::Readings(readings(0.95)));
    s.now = t(69);
    s.input(Input::Readings(readings(0.95)));
    assert_eq!(ask(&mut s, 12, 1), vec![(ReplyId(12), Some(ChunkStatus::Gated))]);
    s.now = t(70);
    s.input(Input::Readings(readings(0.95)));
    assert_eq!(gate_events(&s).last(), Some(&(true, vec![c])));
    assert_eq!(ask(&mut s, 13, 1), vec![(ReplyId(13), None)], "served again");
    assert_eq!(s.ep.campaign(&c).unwrap().served_chunks(), 1);
}

#[test]
fn a_gated_answer_moves_the_requester_to_its_next_source_at_once() {
    let mut s = relay(None, "always", readings(0.1));
    let c = s.worlds[0].c();
    let nms = s.worlds[0].nms;
    let first: Vec<(OutId, u32)> = s
        .chunks
        .iter()
        .filter_map(|a| match a {
            Action::RequestChunk { id: oid, to, req } if *to == id(A) => Some((*oid, req.index)),
            _ => None,
        })
        .collect();
    assert!(!first.is_empty(), "N asks its parent A first");
    s.now = t(3);
    let before = s.chunks.len();
    let (oid, index) = first[0];
    s.input(Input::ChunkResponse {
        id: oid,
        resp: ChunkResponse {
            campaign: c,
            index,
            status: ChunkStatus::Gated,
            data: Vec::new(),
        },
    });
    // at the same instant, the chunk (and the others A had) are asked of the next source
    let again: Vec<(NodeId, u32)> = s.chunks[before..]
        .iter()
        .filter_map(|a| match a {
            Action::RequestChunk { to, req, .. } => Some((*to, req.index)),
            _ => None,
        })
        .collect();
    assert!(again.contains(&(nms, index)), "{again:?}");
    assert!(again.iter().all(|(to, _)| *to == nms), "{again:?}");
    assert_eq!(s.ep.campaign(&c).unwrap().current_source(), nms);
    assert!(s.events.iter().any(|e| matches!(e,
        Event::Note { note: Note::SwitchedSource { from, to }, .. } if *from == id(A) && *to == nms)));
    assert_eq!(s.ep.campaign(&c).unwrap().total_faults(), 0, "Gated is no fault");
}

#[test]
fn the_manifest_default_applies_unless_the_owner_set_a_policy() {
    let on_battery = Readings {
        ac_online: Some(false),
        battery_percent: Some(20.0),
        ..readings(0.1)
    };
    // no local policy: the campaign's `ac` gates it from the start (battery at 20%)
    let mut s = relay(None, "ac", on_battery.clone());
    let c = s.worlds[0].c();
    assert_eq!(s.ep.relay_policy(&c), Some(policy("ac")));
    assert_eq!(gate_events(&s), vec![(false, vec![c])], "starts gated");
    feed_own_chunks(&mut s);
    assert_eq!(ask(&mut s, 10, 0), vec![(ReplyId(10), Some(ChunkStatus::Gated))]);
    let g = s.ep.gating().gates();
    assert_eq!(g.len(), 1);
    assert!(
        g[0].reason.contains("on battery at 20% (needs 40%)"),
        "{}",
        g[0].reason
    );
    // the owner's `always` wins over the manifest
    let mut s = relay(Some("always"), "ac", on_battery);
    assert_eq!(gate_events(&s), vec![], "never gated");
    feed_own_chunks(&mut s);
    assert_eq!(ask(&mut s, 10, 0), vec![(ReplyId(10), None)]);
}

#[test]
fn gates_of_finished_campaigns_are_dropped_and_the_owners_stays() {
    let mut s = relay(None, "idle-and-ac", readings(0.95));
    let c = s.worlds[0].c();
    assert_eq!(s.ep.gating().gates().len(), 1);
    feed_own_chunks(&mut s);
    s.input(Input::PeerAddressKnown(id(P)));
    let offer = s.sent_to(id(P), ControlKind::Offer)[0].1;
    s.input(Input::ControlResponse {
        id: offer,
        msg: Control::OfferReply {
            campaign: c,
            verdict: Verdict::Accept,
        },
    });
    s.input(Input::ControlRequest {
        from: id(P),
        reply: ReplyId(20),
        msg: Control::Receipt {
            campaign: c,
            root: s.worlds[0].manifest.root,
        },
    });
    finish_campaign(&mut s);
    assert!(s.ep.campaign(&c).is_none(), "retired");
    assert!(s.ep.gating().gates().is_empty());
    let s = relay(Some("ac"), "idle", readings(0.95));
    let kept: Vec<String> =
        s.ep.gating()
            .gates()
            .iter()
            .map(|g| g.policy.to_string())
            .collect();
    assert_eq!(kept, ["ac"]);
}
