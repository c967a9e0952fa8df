//! The signed manifest: what a campaign distributes, to whom, and under which rules.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::chunk::{Hash, Layout, LayoutError};
use crate::id::{Keypair, NodeId};
use crate::limits::{MAX_ADDRESSEES, MAX_CONTROL_MESSAGE, MAX_FANOUT, MAX_NAME, MAX_VERSION};

/// A campaign's id: 16 random bytes drawn by the NMS.
pub type CampaignId = [u8; 16];

/// The manifest format this crate writes and reads.
pub const MANIFEST_FORMAT: u8 = 1;

/// Domain separation for manifest signatures.
pub const SIGNATURE_DOMAIN: &[u8] = b"baton manifest v1\0";

/// How data moves down the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transfer {
    /// A node serves every chunk it has verified, while it still receives.
    CutThrough,
    /// The seed's literal flow: a node relays only once it holds the whole package.
    StoreAndForward,
}

/// When a node may relay for others (design brief step 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelayWhen {
    Always,
    Idle,
    Ac,
    IdleOrAc,
    IdleAndAc,
}

/// A campaign id in lower-case hex, as logs and file names show it.
pub fn campaign_hex(c: &CampaignId) -> String {
    c.iter().map(|b| format!("{b:02x}")).collect()
}

/// The campaign's default relay policy; a node owner's local setting wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayPolicy {
    pub when: RelayWhen,
    /// Minutes after local midnight: relaying allowed from `.0` to `.1` (may wrap).
    pub window: Option<(u16, u16)>,
    /// Seconds a gated node may hold its part of the list before handing it back.
    pub grace_secs: u32,
}

impl Default for RelayPolicy {
    fn default() -> Self {
        RelayPolicy {
            when: RelayWhen::Always,
            window: None,
            grace_secs: 60,
        }
    }
}

/// Planning parameters carried in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanParams {
    /// How many parts each sender splits its list into (1 = the seed's chain, 2 = its binary tree).
    pub fanout: u8,
    pub transfer: Transfer,
    /// How many of the addressee list's last entries are *leaf-only*: nodes that said
    /// their relaying is gated, offered one by one and relaying for no one
    /// ([`crate::plan::assignments`]). Absent on the wire when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub leaves: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Default for PlanParams {
    fn default() -> Self {
        PlanParams {
            fanout: 2,
            transfer: Transfer::CutThrough,
            leaves: 0,
        }
    }
}

/// Chunk hashes, encoded as one byte string of 32-byte hashes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HashList(pub Vec<Hash>);

impl Serialize for HashList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0.as_flattened())
    }
}

impl<'de> Deserialize<'de> for HashList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let buf = serde_bytes::ByteBuf::deserialize(d)?;
        if buf.len() % 32 != 0 {
            return Err(serde::de::Error::custom(
                "chunk hash list is not a multiple of 32 bytes",
            ));
        }
        Ok(HashList(
            buf.chunks_exact(32)
                .map(|c| c.try_into().expect("chunks of 32"))
                .collect(),
        ))
    }
}

/// What a campaign distributes, to whom, and under which rules. Signed by the NMS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u8,
    #[serde(with = "serde_bytes")]
    pub campaign: CampaignId,
    /// The NMS that signed it (its key is inlined in the id).
    pub nms: NodeId,
    /// Package name: the folder under `packages/` (a plain file name).
    pub name: String,
    pub version: String,
    /// The file name it is stored under (a plain file name).
    pub file: String,
    /// Per-package sequence number; only grows (rollback protection).
    pub sequence: u64,
    pub size: u64,
    pub chunk_size: u32,
    pub chunk_hashes: HashList,
    /// BLAKE3 of the whole content.
    #[serde(with = "serde_bytes")]
    pub root: Hash,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds; refused after this (freeze protection).
    pub expires_at: u64,
    pub relay: RelayPolicy,
    pub plan: PlanParams,
    /// Install even if the NMS cannot be reached to acknowledge.
    pub offline_install: bool,
    /// The package is a new `baton-node` executable (self-update).
    pub self_update: bool,
    #[serde(deserialize_with = "crate::id::ids_at_most::<_, MAX_ADDRESSEES>")]
    pub addressees: Vec<NodeId>,
}

/// Why a manifest (or an offer carrying one) was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("the manifest could not be decoded: {0}")]
    Decode(String),
    #[error("the manifest is {0} bytes, over the limit of {MAX_CONTROL_MESSAGE}")]
    TooLarge(usize),
    #[error("the manifest's signature does not verify (forged or corrupted)")]
    BadSignature,
    #[error("the manifest is signed by {0}, which this node does not trust")]
    UntrustedSigner(NodeId),
    #[error("the manifest expired at unix time {expires_at} (now {now}); the NMS must start a new campaign")]
    Expired { expires_at: u64, now: u64 },
    #[error(
        "sequence {sequence} of package `{name}` is not newer than the installed {installed} (rollback refused)"
    )]
    Rollback {
        name: String,
        sequence: u64,
        installed: u64,
    },
    #[error("this node ({0}) is not an addressee of the campaign")]
    NotAddressee(NodeId),
    #[error("limit exceeded: {0}")]
    Limit(String),
    #[error("`{0}` is not a plain file name (no '/', '\\', NUL, control characters, leading '.' or '-')")]
    BadName(String),
    #[error("the manifest is inconsistent: {0}")]
    Inconsistent(String),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A manifest written by a newer NMS for newer nodes (a mixed fleet during an agent
    /// update): refused cleanly, the NMS plans around the refusal.
    #[error(
        "the manifest has format {0}, newer than the format {MANIFEST_FORMAT} this baton-node reads; upgrade this node's agent (baton-nms publish-agent) to receive it"
    )]
    NewerFormat(u8),
}

/// True for a name that can be used as one path component inside the package store.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && !name.starts_with('-')
        && !name.chars().any(|c| c == '/' || c == '\\' || c.is_control())
}

/// Splits a dropped file's name into (package name, version):
/// `frobnicator-2.4.1.tar.gz` gives `("frobnicator", "2.4.1")`; a name without a version
/// gives the whole stem and version "0".
pub fn parse_package_file_name(file: &str) -> (String, String) {
    const EXTS: [&str; 12] = [
        ".tar.gz", ".tar.xz", ".tar.zst", ".tar.bz2", ".tgz", ".tar", ".zip", ".deb", ".rpm", ".bin", ".img",
        ".pkg",
    ];
    let stem = EXTS.iter().find_map(|e| file.strip_suffix(e)).unwrap_or(file);
    let split = stem
        .char_indices()
        .filter(|&(i, c)| c == '-' && stem[i + 1..].starts_with(|d: char| d.is_ascii_digit()))
        .map(|(i, _)| i)
        .next_back();
    match split {
        Some(i) if i > 0 => (stem[..i].to_string(), stem[i + 1..].to_string()),
        _ => (stem.to_string(), "0".to_string()),
    }
}

impl Manifest {
    /// The chunk layout.
    pub fn layout(&self) -> Result<Layout, LayoutError> {
        Layout::new(self.size, self.chunk_size)
    }

    /// Structural validation: limits, names, consistency. Needs no keys or clock.
    pub fn validate(&self) -> Result<Layout, ManifestError> {
        if self.format > MANIFEST_FORMAT {
            return Err(ManifestError::NewerFormat(self.format));
        }
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::Inconsistent(format!(
                "format {} is not the supported {MANIFEST_FORMAT}",
                self.format
            )));
        }
        for n in [&self.name, &self.file] {
            if !is_plain_file_name(n) {
                return Err(ManifestError::BadName(n.clone()));
            }
        }
        if self.version.is_empty() || self.version.len() > MAX_VERSION || !is_plain_file_name(&self.version) {
            return Err(ManifestError::BadName(self.version.clone()));
        }
        let layout = self.layout()?;
        if self.chunk_hashes.0.len() as u64 != u64::from(layout.count()) {
            return Err(ManifestError::Inconsistent(format!(
                "{} chunk hashes for {} chunks",
                self.chunk_hashes.0.len(),
                layout.count()
            )));
        }
        if self.addressees.len() > MAX_ADDRESSEES {
            return Err(ManifestError::Limit(format!(
                "{} addressees, over {MAX_ADDRESSEES}",
                self.addressees.len()
            )));
        }
        if self.addressees.is_empty() {
            return Err(ManifestError::Inconsistent("no addressees".into()));
        }
        let mut seen = HashSet::with_capacity(self.addressees.len());
        for a in &self.addressees {
            if !seen.insert(a) {
                return Err(ManifestError::Inconsistent(format!("addressee {a} listed twice")));
            }
        }
        if seen.contains(&self.nms) {
            return Err(ManifestError::Inconsistent(
                "the NMS is listed as an addressee".into(),
            ));
        }
        if self.plan.fanout == 0 || self.plan.fanout > MAX_FANOUT {
            return Err(ManifestError::Limit(format!(
                "fanout {} outside 1..={MAX_FANOUT}",
                self.plan.fanout
            )));
        }
        let depth = crate::plan::expected_depth(self.addressees.len(), self.plan.fanout);
        if depth > crate::limits::MAX_PATH {
            return Err(ManifestError::Limit(format!(
                "fanout {} gives paths of {depth} hops for {} addressees, over {}; use a larger fanout",
                self.plan.fanout,
                self.addressees.len(),
                crate::limits::MAX_PATH
            )));
        }
        if self.expires_at <= self.created_at {
            return Err(ManifestError::Inconsistent(
                "expires before it was created".into(),
            ));
        }
        if self.plan.leaves as usize > self.addressees.len() {
            return Err(ManifestError::Inconsistent(format!(
                "{} leaf-only addressees of {}",
                self.plan.leaves,
                self.addressees.len()
            )));
        }
        Ok(layout)
    }

    /// The leaf-only addressees: the list's last `plan.leaves` entries.
    pub fn leaf_only(&self) -> HashSet<NodeId> {
        let n = self.addressees.len();
        let k = (self.plan.leaves as usize).min(n);
        self.addressees[n - k..].iter().copied().collect()
    }

    /// Is `id` an addressee? (Linear; state machines keep a set.)
    pub fn is_addressee(&self, id: &NodeId) -> bool {
        self.addressees.contains(id)
    }

    /// The install step's check against what is installed *at that moment*
    /// (`(sequence, root)` of the current version): the rollback rule of the offer check,
    /// made again because another campaign of the package may have installed while this
    /// one ran. A newer sequence installs; the same sequence with the same content is
    /// already current (nothing to do: `current` switches only after the install command
    /// succeeded, so it ran); an older one, or the same sequence with other content, does
    /// not install. The shell makes this check and the switch of `current` as one step
    /// (no other install of the package in between).
    pub fn install_check(&self, installed: Option<(u64, Hash)>) -> Result<InstallCheck, Superseded> {
        match installed {
            None => Ok(InstallCheck::Install),
            Some((sequence, _)) if sequence < self.sequence => Ok(InstallCheck::Install),
            Some((sequence, root)) if sequence == self.sequence && root == self.root => {
                Ok(InstallCheck::AlreadyCurrent)
            }
            Some((sequence, _)) if sequence == self.sequence => Err(Superseded::Conflict {
                name: self.name.clone(),
                sequence,
            }),
            Some((sequence, _)) => Err(Superseded::Newer {
                name: self.name.clone(),
                sequence: self.sequence,
                installed: sequence,
            }),
        }
    }
}

/// What the install step does, from [`Manifest::install_check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallCheck {
    /// Place the package, run the install command, switch `current`.
    Install,
    /// This very package is current already: report it installed, change nothing.
    AlreadyCurrent,
}

/// Why the install step does not make a manifest current: the campaign fails with this
/// reason, and what is installed stays current.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Superseded {
    #[error(
        "not installed: a newer sequence {installed} of `{name}` is already installed (this campaign carries sequence {sequence})"
    )]
    Newer {
        name: String,
        sequence: u64,
        installed: u64,
    },
    #[error("not installed: sequence {sequence} of `{name}` is already installed with other content")]
    Conflict { name: String, sequence: u64 },
}

/// The manifest's encoded bytes and the NMS's signature over them. The bytes travel as
/// signed, so no canonical re-encoding is needed to check the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedManifest {
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// What a node checks a manifest against.
#[derive(Debug, Clone)]
pub struct VerifyContext<'a> {
    /// NMS ids this node trusts.
    pub trusted: &'a [NodeId],
    /// Unix seconds now.
    pub unix_now: u64,
    /// Sequence and root hash installed for this package name, if any.
    pub installed: Option<(u64, Hash)>,
    /// This node: must be an addressee. `None` skips the check (tools, the NMS itself).
    pub me: Option<NodeId>,
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_DOMAIN.len() + body.len());
    m.extend_from_slice(SIGNATURE_DOMAIN);
    m.extend_from_slice(body);
    m
}

impl SignedManifest {
    /// Validates, encodes and signs a manifest with the NMS's key.
    pub fn sign(manifest: &Manifest, nms: &Keypair) -> Result<Self, ManifestError> {
        if NodeId::of(nms) != manifest.nms {
            return Err(ManifestError::Inconsistent(
                "the manifest names another NMS than the signer".into(),
            ));
        }
        manifest.validate()?;
        let mut body = Vec::new();
        ciborium::into_writer(manifest, &mut body).map_err(|e| ManifestError::Decode(e.to_string()))?;
        if body.len() > MAX_CONTROL_MESSAGE {
            return Err(ManifestError::TooLarge(body.len()));
        }
        let signature = nms
            .sign(&signed_message(&body))
            .map_err(|e| ManifestError::Inconsistent(format!("signing failed: {e}")))?;
        Ok(SignedManifest { body, signature })
    }

    /// Decodes and checks the signature and structure, without trust, clock or sequence.
    pub fn open_unchecked(&self) -> Result<Manifest, ManifestError> {
        if self.body.len() > MAX_CONTROL_MESSAGE {
            return Err(ManifestError::TooLarge(self.body.len()));
        }
        let manifest: Manifest =
            ciborium::from_reader(self.body.as_slice()).map_err(|e| ManifestError::Decode(e.to_string()))?;
        let key = manifest.nms.public_key().ok_or(ManifestError::BadSignature)?;
        if !key.verify(&signed_message(&self.body), &self.signature) {
            return Err(ManifestError::BadSignature);
        }
        manifest.validate()?;
        Ok(manifest)
    }

    /// The full check a node makes before accepting an offer.
    pub fn verify(&self, ctx: &VerifyContext<'_>) -> Result<Manifest, ManifestError> {
        let m = self.open_unchecked()?;
        if !ctx.trusted.contains(&m.nms) {
            return Err(ManifestError::UntrustedSigner(m.nms));
        }
        if ctx.unix_now >= m.expires_at {
            return Err(ManifestError::Expired {
                expires_at: m.expires_at,
                now: ctx.unix_now,
            });
        }
        if let Some((installed, root)) = ctx.installed
            && (m.sequence < installed || (m.sequence == installed && m.root != root))
        {
            return Err(ManifestError::Rollback {
                name: m.name.clone(),
                sequence: m.sequence,
                installed,
            });
        }
        if let Some(me) = ctx.me
            && !m.is_addressee(&me)
        {
            return Err(ManifestError::NotAddressee(me));
        }
        Ok(m)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::chunk::PackageHasher;
    use crate::id::keypair_from_seed;

    #[test]
    fn an_install_never_goes_back_to_an_older_sequence() {
        let nms = keypair_from_seed(1);
        let mut m = sample(&nms, vec![NodeId::of(&keypair_from_seed(2))], b"two");
        m.sequence = 2;
        assert_eq!(m.install_check(None), Ok(InstallCheck::Install));
        assert_eq!(m.install_check(Some((1, [9; 32]))), Ok(InstallCheck::Install));
        assert_eq!(
            m.install_check(Some((2, m.root))),
            Ok(InstallCheck::AlreadyCurrent)
        );
        let e = m.install_check(Some((3, [9; 32]))).unwrap_err();
        assert!(matches!(
            e,
            Superseded::Newer {
                installed: 3,
                sequence: 2,
                ..
            }
        ));
        assert!(e.to_string().contains("a newer sequence 3"), "{e}");
        assert!(matches!(
            m.install_check(Some((2, [9; 32]))),
            Err(Superseded::Conflict { sequence: 2, .. })
        ));
    }

    #[test]
    fn a_manifest_of_a_newer_format_is_refused_cleanly_even_with_fields_this_node_does_not_know() {
        let nms = keypair_from_seed(1);
        let me = NodeId::of(&keypair_from_seed(2));
        let m = sample(&nms, vec![me], b"from a newer NMS");
        // what a newer NMS would sign: a higher format and a field unknown here
        let mut value = ciborium::Value::serialized(&m).unwrap();
        let map = value.as_map_mut().unwrap();
        for (k, v) in map.iter_mut() {
            if k.as_text() == Some("format") {
                *v = ciborium::Value::Integer((MANIFEST_FORMAT + 1).into());
            }
        }
        map.push((
            ciborium::Value::Text("stripes".into()),
            ciborium::Value::Integer(4.into()),
        ));
        let mut body = Vec::new();
        ciborium::into_writer(&value, &mut body).unwrap();
        let signature = nms.sign(&signed_message(&body)).unwrap();
        let signed = SignedManifest { body, signature };
        let e = signed.open_unchecked().unwrap_err();
        assert_eq!(e, ManifestError::NewerFormat(MANIFEST_FORMAT + 1));
        assert!(e.to_string().contains("upgrade this node's agent"), "{e}");
        // a node answers the offer with a refusal the NMS re-plans around (a bad manifest)
        let refusal = crate::receiver::Refusal::from(e);
        assert_eq!(refusal.reason, crate::wire::RefuseReason::BadManifest);
        // the same manifest at this format opens
        let signed = SignedManifest::sign(&m, &nms).unwrap();
        assert_eq!(signed.open_unchecked().unwrap(), m);
    }

    pub(crate) fn sample(nms: &Keypair, addressees: Vec<NodeId>, data: &[u8]) -> Manifest {
        let mut h = PackageHasher::new(4096);
        h.update(data);
        let (size, hashes, root) = h.finish();
        Manifest {
            format: MANIFEST_FORMAT,
            campaign: [5; 16],
            nms: NodeId::of(nms),
            name: "frobnicator".into(),
            version: "2.4.1".into(),
            file: "frobnicator-2.4.1.tar.gz".into(),
            sequence: 3,
            size,
            chunk_size: 4096,
            chunk_hashes: HashList(hashes),
            root,
            created_at: 1000,
            expires_at: 2000,
            relay: RelayPolicy::default(),
            plan: PlanParams::default(),
            offline_install: false,
            self_update: false,
            addressees,
        }
    }

    fn setup() -> (Keypair, NodeId, Manifest) {
        let nms = keypair_from_seed(100);
        let me = NodeId::of(&keypair_from_seed(1));
        let m = sample(&nms, vec![me, NodeId::of(&keypair_from_seed(2))], &[1u8; 10_000]);
        (nms, me, m)
    }

    fn ctx<'a>(trusted: &'a [NodeId], me: NodeId) -> VerifyContext<'a> {
        VerifyContext {
            trusted,
            unix_now: 1500,
            installed: Some((2, [0; 32])),
            me: Some(me),
        }
    }

    #[test]
    fn a_good_manifest_verifies() {
        let (nms, me, m) = setup();
        let s = SignedManifest::sign(&m, &nms).unwrap();
        assert_eq!(s.verify(&ctx(&[m.nms], me)).unwrap(), m);
    }

    #[test]
    fn forged_manifest_is_refused() {
        let (nms, me, m) = setup();
        let mut s = SignedManifest::sign(&m, &nms).unwrap();
        let last = s.body.len() - 1;
        s.body[last] ^= 1; // flips a bit of the last addressee
        let e = s.verify(&ctx(&[m.nms], me)).unwrap_err();
        assert!(
            matches!(e, ManifestError::BadSignature | ManifestError::Decode(_)),
            "{e}"
        );
        // a valid body re-signed by another key that claims to be the NMS
        let mut m2 = m.clone();
        m2.sequence = 99;
        let mut forged = SignedManifest::sign(&m, &nms).unwrap();
        let mut body = Vec::new();
        ciborium::into_writer(&m2, &mut body).unwrap();
        forged.body = body;
        assert_eq!(
            forged.verify(&ctx(&[m.nms], me)),
            Err(ManifestError::BadSignature)
        );
    }

    #[test]
    fn untrusted_expired_rolled_back_and_strangers_are_refused() {
        let (nms, me, m) = setup();
        let s = SignedManifest::sign(&m, &nms).unwrap();
        let trusted = [m.nms];
        let e = s.verify(&ctx(&[], me)).unwrap_err();
        assert_eq!(e, ManifestError::UntrustedSigner(m.nms));
        // the refusal goes back to the sender: it names the signer, never a flag to trust it
        assert!(e.to_string().contains(&m.nms.to_string()));
        assert!(!e.to_string().contains("--trust"), "{e}");

        let mut c = ctx(&trusted, me);
        c.unix_now = 2000;
        assert!(matches!(s.verify(&c), Err(ManifestError::Expired { .. })));

        let mut c = ctx(&trusted, me);
        c.installed = Some((3, [1; 32]));
        assert!(matches!(
            s.verify(&c),
            Err(ManifestError::Rollback { installed: 3, .. })
        ));
        c.installed = Some((4, m.root));
        assert!(matches!(s.verify(&c), Err(ManifestError::Rollback { .. })));
        c.installed = Some((3, m.root)); // the same campaign again: resume
        assert!(s.verify(&c).is_ok());

        let stranger = NodeId::of(&keypair_from_seed(77));
        assert_eq!(
            s.verify(&ctx(&[m.nms], stranger)),
            Err(ManifestError::NotAddressee(stranger))
        );
    }

    #[test]
    fn oversize_and_malformed_manifests_are_refused() {
        let (nms, me, m) = setup();
        let mut big = m.clone();
        big.addressees = (0..(MAX_ADDRESSEES as u64 + 1)).map(crate::id::fake_id).collect();
        assert!(matches!(
            SignedManifest::sign(&big, &nms),
            Err(ManifestError::Limit(_))
        ));

        let oversize = SignedManifest {
            body: vec![0; MAX_CONTROL_MESSAGE + 1],
            signature: vec![],
        };
        assert_eq!(
            oversize.verify(&ctx(&[m.nms], me)),
            Err(ManifestError::TooLarge(MAX_CONTROL_MESSAGE + 1))
        );
        let garbage = SignedManifest {
            body: vec![0xff; 100],
            signature: vec![1; 64],
        };
        assert!(matches!(
            garbage.verify(&ctx(&[m.nms], me)),
            Err(ManifestError::Decode(_))
        ));

        let mut bad = m.clone();
        bad.name = "../../etc".into();
        assert!(matches!(
            SignedManifest::sign(&bad, &nms),
            Err(ManifestError::BadName(_))
        ));
        let mut bad = m.clone();
        bad.chunk_hashes.0.pop();
        assert!(matches!(
            SignedManifest::sign(&bad, &nms),
            Err(ManifestError::Inconsistent(_))
        ));
        let mut bad = m.clone();
        bad.chunk_size = 1;
        assert!(matches!(
            SignedManifest::sign(&bad, &nms),
            Err(ManifestError::Layout(_))
        ));
        let mut long_chain = m.clone();
        long_chain.addressees = (0..65).map(crate::id::fake_id).collect();
        long_chain.plan.fanout = 1;
        let e = SignedManifest::sign(&long_chain, &nms).unwrap_err();
        assert!(
            matches!(e, ManifestError::Limit(_)) && e.to_string().contains("larger fanout"),
            "{e}"
        );
        let mut bad = m;
        bad.plan.fanout = 0;
        assert!(matches!(
            SignedManifest::sign(&bad, &nms),
            Err(ManifestError::Limit(_))
        ));
    }

    #[test]
    fn names_and_versions_parse() {
        assert_eq!(
            parse_package_file_name("frobnicator-2.4.1.tar.gz"),
            ("frobnicator".into(), "2.4.1".into())
        );
        assert_eq!(
            parse_package_file_name("my-tool-10.deb"),
            ("my-tool".into(), "10".into())
        );
        assert_eq!(parse_package_file_name("blob"), ("blob".into(), "0".into()));
        for bad in [
            "", ".", "..", "../x", "a/b", "a\\b", ".hidden", "-rf", "a\0b", "a\nb",
        ] {
            assert!(!is_plain_file_name(bad), "{bad:?}");
        }
        assert!(is_plain_file_name("frobnicator-2.4.1.tar.gz"));
    }
}
