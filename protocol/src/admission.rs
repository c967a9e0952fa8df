//! Admission of offers: which offers a node takes, and whom it comes to trust.
//!
//! An offer is checked in two steps, so that the shell can run the expensive one off its
//! event loop and the cheap one against its state:
//!
//! 1. [`open_offer`] is stateless and costly: it decodes the manifest, checks its
//!    signature against the key it names, its structure, and the offer's part, path and
//!    sender against it. Its result, an [`OpenedOffer`], is the only way to reach step 2,
//!    so a manifest is decoded and its signature checked exactly once per offer.
//! 2. [`admit`] is cheap and needs the node's state: trust (pins, or trust on first use),
//!    expiry, rollback against what is installed, and whether the campaign is already
//!    held. A campaign already held is checked like any other offer.
//!
//! Trust on first use pins an NMS only on an offer that passes every check, that comes
//! directly from the NMS that signed it (the sender is the signer, the path is one hop),
//! and whose sender advertises itself as an NMS. A refused offer never pins anyone.

use std::collections::HashSet;

use crate::chunk::Hash;
use crate::id::NodeId;
use crate::manifest::{Manifest, ManifestError};
use crate::receiver::Refusal;
use crate::wire::{Offer, RefuseReason};

/// An offer whose manifest decoded, whose signature verifies against the key the manifest
/// names, and whose part, path and sender are consistent with it. Not yet trusted.
#[derive(Debug, Clone)]
pub struct OpenedOffer {
    pub offer: Offer,
    pub manifest: Manifest,
    /// The peer the offer came from.
    pub from: NodeId,
}

impl OpenedOffer {
    /// True when the offer comes straight from the NMS that signed it (a first-tier offer).
    pub fn direct_from_signer(&self) -> bool {
        self.from == self.manifest.nms && self.offer.path.len() == 1
    }
}

/// Step 1: the stateless, costly checks of an offer from `from` to `me`.
pub fn open_offer(offer: Offer, from: NodeId, me: NodeId) -> Result<OpenedOffer, Refusal> {
    let m = offer.manifest.open_unchecked()?;
    if !m.is_addressee(&me) {
        return Err(ManifestError::NotAddressee(me).into());
    }
    if offer.part.first() != Some(&me) {
        return Err(Refusal::new(
            RefuseReason::BadOffer,
            "the offered part does not start with this node",
        ));
    }
    if offer.path.last() != Some(&me) || offer.path.len() > crate::limits::MAX_PATH {
        return Err(Refusal::new(
            RefuseReason::BadOffer,
            "the offered path does not end with this node",
        ));
    }
    let expected_sender = if offer.path.len() >= 2 {
        offer.path[offer.path.len() - 2]
    } else {
        m.nms
    };
    if from != expected_sender {
        return Err(Refusal::new(
            RefuseReason::BadOffer,
            format!("the offer came from {from}, not from the parent on its path ({expected_sender})"),
        ));
    }
    let addressees: HashSet<&NodeId> = m.addressees.iter().collect();
    if let Some(bad) = offer
        .part
        .iter()
        .chain(&offer.path)
        .find(|n| !addressees.contains(n))
    {
        return Err(Refusal::new(
            RefuseReason::BadOffer,
            format!("{bad} in the offer is not an addressee"),
        ));
    }
    Ok(OpenedOffer {
        offer,
        manifest: m,
        from,
    })
}

/// What a node knows when it admits an offer.
#[derive(Debug, Clone)]
pub struct AdmissionContext<'a> {
    /// NMS ids this node trusts (flags, config and earlier pins).
    pub trusted: &'a [NodeId],
    /// Trust on first use is on (`--trust-first`); it applies only while `trusted` is empty.
    pub trust_first: bool,
    /// Peers that advertise themselves as an NMS (discovery or identify).
    pub advertised_nms: &'a HashSet<NodeId>,
    /// Unix seconds now.
    pub unix_now: u64,
    /// Sequence and root hash installed for the offered package, if any.
    pub installed: Option<(u64, Hash)>,
    /// The node already runs this campaign.
    pub held: bool,
    /// The node ran this campaign to its end (installed or failed, relaying done) and
    /// dropped it.
    pub finished: bool,
    /// The campaign is resumed from the node's own disk at start, not offered: a package
    /// installed with the same sequence and root does not stop it (a crash between the
    /// install and the end of relaying resumes, reports and relays).
    pub resuming: bool,
}

/// What admission decided about an offer that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// A new campaign to start. `pin` is the NMS to trust from now on (trust on first use).
    Start { pin: Option<NodeId> },
    /// The node already runs this campaign; the offer checked out and changes nothing.
    AlreadyHeld,
}

/// Step 2: trust, expiry, rollback, and duplicates.
pub fn admit(o: &OpenedOffer, ctx: &AdmissionContext<'_>) -> Result<Admitted, Refusal> {
    let m = &o.manifest;
    let pin = if ctx.trusted.contains(&m.nms) {
        None
    } else if ctx.trust_first && ctx.trusted.is_empty() {
        if !o.direct_from_signer() {
            return Err(Refusal::new(
                RefuseReason::Untrusted,
                format!(
                    "this node trusts no NMS yet and pins one only from an offer sent by the NMS itself; this offer came from {} and is signed by {}",
                    o.from, m.nms
                ),
            ));
        }
        if !ctx.advertised_nms.contains(&m.nms) {
            return Err(Refusal::new(
                RefuseReason::Untrusted,
                format!(
                    "{} does not advertise itself as an NMS; trust on first use pins only an advertised NMS",
                    m.nms
                ),
            ));
        }
        Some(m.nms)
    } else {
        return Err(ManifestError::UntrustedSigner(m.nms).into());
    };
    if ctx.unix_now >= m.expires_at {
        return Err(ManifestError::Expired {
            expires_at: m.expires_at,
            now: ctx.unix_now,
        }
        .into());
    }
    if let Some((installed, root)) = ctx.installed
        && (m.sequence < installed || (m.sequence == installed && m.root != root))
    {
        return Err(ManifestError::Rollback {
            name: m.name.clone(),
            sequence: m.sequence,
            installed,
        }
        .into());
    }
    if ctx.held {
        return Ok(Admitted::AlreadyHeld);
    }
    // a campaign over here is not downloaded again: refused, so that the sender re-plans
    // the rest of the part (protocol.md 9.2)
    let same_installed = ctx.installed == Some((m.sequence, m.root));
    if ctx.finished || (same_installed && !ctx.resuming) {
        let what = if same_installed {
            format!("{} sequence {} is installed", m.name, m.sequence)
        } else {
            "it ended".to_string()
        };
        // the same version installed (from this or another campaign, e.g. a follow-up for
        // a node that got it after all): the NMS counts the node as installed
        let reason = if same_installed && !ctx.resuming {
            RefuseReason::Installed
        } else {
            RefuseReason::Rollback
        };
        return Err(Refusal::new(
            reason,
            format!(
                "campaign {} is already over on this node ({what}); nothing to download",
                m.campaign.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        ));
    }
    Ok(Admitted::Start { pin })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Keypair, keypair_from_seed};
    use crate::keys::CampaignSecret;
    use crate::manifest::SignedManifest;
    use crate::manifest::tests::sample;

    struct World {
        nms: Keypair,
        rogue: Keypair,
        me: NodeId,
        other: NodeId,
    }

    fn world() -> World {
        World {
            nms: keypair_from_seed(1),
            rogue: keypair_from_seed(2),
            me: NodeId::of(&keypair_from_seed(3)),
            other: NodeId::of(&keypair_from_seed(4)),
        }
    }

    fn offer(signer: &Keypair, addressees: Vec<NodeId>, path: Vec<NodeId>, part: Vec<NodeId>) -> Offer {
        let m = sample(signer, addressees, b"package bytes");
        let token = CampaignSecret([9; 32]).root_token(&m.campaign).child(&path[0]);
        Offer {
            manifest: SignedManifest::sign(&m, signer).unwrap(),
            part,
            path,
            token,
        }
    }

    fn ctx<'a>(
        trusted: &'a [NodeId],
        trust_first: bool,
        nms_adverts: &'a HashSet<NodeId>,
    ) -> AdmissionContext<'a> {
        AdmissionContext {
            trusted,
            trust_first,
            advertised_nms: nms_adverts,
            unix_now: 1500,
            installed: None,
            held: false,
            finished: false,
            resuming: false,
        }
    }

    #[test]
    fn a_refused_offer_never_pins_its_signer() {
        let w = world();
        let rogue = NodeId::of(&w.rogue);
        let everyone = HashSet::from([rogue]);
        // not an addressee: refused in step 1, nothing to pin
        let o = offer(&w.rogue, vec![w.other], vec![w.other], vec![w.other]);
        assert_eq!(
            open_offer(o, rogue, w.me).unwrap_err().reason,
            RefuseReason::NotAddressee
        );
        // expired: refused in step 2, and no pin comes out of a refusal
        let o = offer(&w.rogue, vec![w.me], vec![w.me], vec![w.me]);
        let opened = open_offer(o, rogue, w.me).unwrap();
        let mut c = ctx(&[], true, &everyone);
        c.unix_now = 5000;
        assert_eq!(admit(&opened, &c).unwrap_err().reason, RefuseReason::Expired);
    }

    #[test]
    fn trust_on_first_use_needs_an_advertised_nms_speaking_for_itself() {
        let w = world();
        let nms = NodeId::of(&w.nms);
        let advertised = HashSet::from([nms]);
        let nobody = HashSet::new();
        let o = offer(&w.nms, vec![w.me, w.other], vec![w.me], vec![w.me, w.other]);
        let opened = open_offer(o, nms, w.me).unwrap();
        assert_eq!(
            admit(&opened, &ctx(&[], true, &advertised)).unwrap(),
            Admitted::Start { pin: Some(nms) }
        );
        // not advertised as an NMS
        let r = admit(&opened, &ctx(&[], true, &nobody)).unwrap_err();
        assert_eq!(r.reason, RefuseReason::Untrusted);
        // without --trust-first, an unknown signer is refused
        let r = admit(&opened, &ctx(&[], false, &advertised)).unwrap_err();
        assert_eq!(r.reason, RefuseReason::Untrusted);
        // once something is pinned, first use is over
        let r = admit(&opened, &ctx(&[w.other], true, &advertised)).unwrap_err();
        assert_eq!(r.reason, RefuseReason::Untrusted);
        // relayed by a parent (a second-tier offer): not direct from the signer
        let o = offer(&w.nms, vec![w.other, w.me], vec![w.other, w.me], vec![w.me]);
        let opened = open_offer(o, w.other, w.me).unwrap();
        let r = admit(&opened, &ctx(&[], true, &advertised)).unwrap_err();
        assert_eq!(r.reason, RefuseReason::Untrusted);
        assert!(
            r.detail
                .contains("pins one only from an offer sent by the NMS itself"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn a_campaign_already_held_is_checked_like_any_offer() {
        let w = world();
        let nms = NodeId::of(&w.nms);
        let nobody = HashSet::new();
        let trusted = [nms];
        let o = offer(&w.nms, vec![w.me], vec![w.me], vec![w.me]);
        let opened = open_offer(o, nms, w.me).unwrap();
        let mut c = ctx(&trusted, false, &nobody);
        c.held = true;
        assert_eq!(admit(&opened, &c).unwrap(), Admitted::AlreadyHeld);
        c.unix_now = 5000;
        assert_eq!(admit(&opened, &c).unwrap_err().reason, RefuseReason::Expired);
        // a forged copy of the held campaign (same body, another signature) is refused
        let mut forged = opened.offer.clone();
        forged.manifest.signature = SignedManifest::sign(&opened.manifest.clone(), &w.nms)
            .unwrap()
            .signature
            .iter()
            .map(|b| b ^ 1)
            .collect();
        assert_eq!(
            open_offer(forged, nms, w.me).unwrap_err().reason,
            RefuseReason::BadManifest
        );
    }

    #[test]
    fn a_campaign_over_here_is_refused_and_not_started_again() {
        let w = world();
        let nms = NodeId::of(&w.nms);
        let nobody = HashSet::new();
        let trusted = [nms];
        let o = offer(&w.nms, vec![w.me], vec![w.me], vec![w.me]);
        let opened = open_offer(o, nms, w.me).unwrap();
        let m = &opened.manifest;
        let mut c = ctx(&trusted, false, &nobody);
        // installed with the same sequence and root: not a rollback, but not started again
        c.installed = Some((m.sequence, m.root));
        let r = admit(&opened, &c).unwrap_err();
        assert_eq!(r.reason, RefuseReason::Installed);
        assert!(r.detail.contains("already over on this node"), "{}", r.detail);
        // also when the campaign ended here too
        c.finished = true;
        assert_eq!(admit(&opened, &c).unwrap_err().reason, RefuseReason::Installed);
        c.finished = false;
        // ... unless resumed from the node's own disk
        c.resuming = true;
        assert_eq!(admit(&opened, &c).unwrap(), Admitted::Start { pin: None });
        // a campaign that ended here (e.g. failed), whatever is installed
        let mut c = ctx(&trusted, false, &nobody);
        c.finished = true;
        assert_eq!(admit(&opened, &c).unwrap_err().reason, RefuseReason::Rollback);
        // an untrusted signer is still refused as untrusted first
        let mut c = ctx(&[], false, &nobody);
        c.finished = true;
        assert_eq!(admit(&opened, &c).unwrap_err().reason, RefuseReason::Untrusted);
    }
}
