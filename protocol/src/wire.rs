//! Wire messages: control messages in CBOR, chunk requests and responses as raw frames.
//!
//! Every decoder checks sizes and counts against [`crate::limits`] and returns a typed
//! error on garbage; nothing from the network is trusted to be reasonable.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::chunk::Hash;
use crate::gate::RelayHint;
use crate::id::NodeId;
use crate::keys::{HopToken, TAG_LEN};
use crate::limits::{
    MAX_ADDRESSEES, MAX_CHUNK_FRAME, MAX_CHUNK_SIZE, MAX_CONTROL_MESSAGE, MAX_PATH, MAX_PEER_ID_BYTES,
    MAX_REASON,
};
use crate::manifest::{CampaignId, SignedManifest};

/// The protocol version carried in discovery records and protocol names.
pub const PROTOCOL_VERSION: u32 = 1;
/// libp2p protocol name of the control protocol.
pub const CONTROL_PROTOCOL: &str = "/baton/control/1";
/// libp2p protocol name of the chunk protocol.
pub const CHUNK_PROTOCOL: &str = "/baton/chunk/1";

/// An offer: a parent hands its child the manifest, the child's part of the list, the
/// child's path from the first tier and the child's hop token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub manifest: SignedManifest,
    /// The child's part of the addressee list, the child first.
    #[serde(deserialize_with = "crate::id::ids_at_most::<_, MAX_ADDRESSEES>")]
    pub part: Vec<NodeId>,
    /// Addressees from the first tier down to the child (inclusive).
    #[serde(deserialize_with = "crate::id::ids_at_most::<_, MAX_PATH>")]
    pub path: Vec<NodeId>,
    pub token: HopToken,
}

/// Why a node refused an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefuseReason {
    Untrusted,
    BadManifest,
    Expired,
    Rollback,
    NotAddressee,
    BadOffer,
    Busy,
    Gated,
    /// The node holds this package version already (same sequence and root): nothing to
    /// download, and the NMS counts it as installed.
    Installed,
}

/// What a node tells its parent about an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Accept,
    Refuse { reason: RefuseReason, detail: String },
}

/// The outcome of an install, as reported to the NMS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstallOutcome {
    Installed,
    Failed { reason: String },
}

/// How far a node is in a campaign (reported in progress and probes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Receiving,
    Verifying,
    Authenticating,
    Installing,
    Installed,
    Failed,
}

/// Where a node stands in the campaign a [`Control::Probe`] named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeState {
    #[serde(with = "serde_bytes")]
    pub campaign: CampaignId,
    pub holding: Holding,
}

/// Whether a node holds a campaign, as it answers a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Holding {
    /// The node does not know the campaign: never offered, or forgotten.
    No,
    /// An offer of it is being checked, or its files prepared.
    Opening,
    /// The node runs the campaign: its phase and the bytes it verified.
    Running { phase: Phase, verified: u64 },
    /// The node finished the campaign (its install report says how).
    Finished,
}

/// Control messages. Each is sent as a request; the answer is a [`Control`] too
/// (`OfferReply`, `ReceiptAck`, `AuthReply`, or `Ack`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    Offer(Box<Offer>),
    OfferReply {
        #[serde(with = "serde_bytes")]
        campaign: CampaignId,
        verdict: Verdict,
    },
    /// Child to parent: the root hash the child computed over the whole package.
    Receipt {
        #[serde(with = "serde_bytes")]
        campaign: CampaignId,
        #[serde(with = "serde_bytes")]
        root: Hash,
    },
    ReceiptAck {
        #[serde(with = "serde_bytes")]
        campaign: CampaignId,
        matches: bool,
    },
    /// Node to NMS: the rolling code with the node's path.
    AuthRequest {
        #[serde(with = "serde_bytes")]
        campaign: CampaignId,
        #[serde(deserialize_with = "crate::id::ids_at_most::<_, MAX_PATH>")]
        path: Vec<NodeId>,
        #[serde(with = "serde_bytes")]
        root: Hash,
        #[serde(with = "serde_bytes")]
        code: [u8; 32],
    },
    AuthReply {
        #[serde(with = "serde_bytes")]
        campaign: CampaignId,
        ok: bool,
        reason: String,
    },
    /// Node to NMS: bytes verified so far and from which source.
    Progress {
        #[serde(with = "serde_bytes")]
        campaign: CampaignId,
        phase: Phase,
        verified: u64,
        source: Option<NodeId>,
        parent: Option<NodeId>,
        /// Whether the node relays now (absent on the wire when `None`, as older nodes
        /// send it); the NMS plans nodes that do not at the leaves.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay: Option<RelayHint>,
        /// Bytes verified so far from each source that sent any, at most
        /// [`crate::limits::MAX_PATH`] + 1 entries (absent on the wire when empty, as older
        /// nodes send it). A leaf-only node fetches from several at once.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        fetched: Vec<(NodeId, u64)>,
    },
    InstallReport {
        #[serde(with = "serde_bytes")]
        campaign: CampaignId,
        outcome: InstallOutcome,
    },
    /// Node to NMS: an offer to `node` failed, its part was re-planned by the sender.
    Trouble {
        #[serde(with = "serde_bytes")]
        campaign: CampaignId,
        node: NodeId,
        reason: String,
    },
    /// Relay to NMS: its relaying stayed gated past the campaign's grace period, so it
    /// hands back these nodes of its part, which it never offered; the NMS offers them
    /// itself (re-planned).
    HandBack {
        #[serde(with = "serde_bytes")]
        campaign: CampaignId,
        #[serde(deserialize_with = "crate::id::ids_at_most::<_, MAX_ADDRESSEES>")]
        nodes: Vec<NodeId>,
    },
    /// Anyone to anyone: are you there? With `campaign`, the NMS also asks where the
    /// node stands in that campaign (absent on the wire when `None`; an older peer
    /// ignores it).
    Probe {
        nonce: u64,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
        campaign: Option<CampaignId>,
    },
    /// The answer to a probe. `state` answers a probe that named a campaign (absent on the
    /// wire when `None`, as older peers send it).
    ProbeReply {
        nonce: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<ProbeState>,
    },
    Ack,
    /// The receiver could not handle the request.
    Error {
        reason: String,
    },
}

/// The kind of a control message, to tell the machine which send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlKind {
    Offer,
    OfferReply,
    Receipt,
    ReceiptAck,
    AuthRequest,
    AuthReply,
    Progress,
    InstallReport,
    Trouble,
    HandBack,
    Probe,
    ProbeReply,
    Ack,
    Error,
}

impl Control {
    pub fn kind(&self) -> ControlKind {
        match self {
            Control::Offer(_) => ControlKind::Offer,
            Control::OfferReply { .. } => ControlKind::OfferReply,
            Control::Receipt { .. } => ControlKind::Receipt,
            Control::ReceiptAck { .. } => ControlKind::ReceiptAck,
            Control::AuthRequest { .. } => ControlKind::AuthRequest,
            Control::AuthReply { .. } => ControlKind::AuthReply,
            Control::Progress { .. } => ControlKind::Progress,
            Control::InstallReport { .. } => ControlKind::InstallReport,
            Control::Trouble { .. } => ControlKind::Trouble,
            Control::HandBack { .. } => ControlKind::HandBack,
            Control::Probe { .. } => ControlKind::Probe,
            Control::ProbeReply { .. } => ControlKind::ProbeReply,
            Control::Ack => ControlKind::Ack,
            Control::Error { .. } => ControlKind::Error,
        }
    }

    /// The campaign the message is about, if any.
    pub fn campaign(&self) -> Option<&CampaignId> {
        match self {
            Control::Offer(_) => None,
            Control::OfferReply { campaign, .. }
            | Control::Receipt { campaign, .. }
            | Control::ReceiptAck { campaign, .. }
            | Control::AuthRequest { campaign, .. }
            | Control::AuthReply { campaign, .. }
            | Control::Progress { campaign, .. }
            | Control::InstallReport { campaign, .. }
            | Control::Trouble { campaign, .. }
            | Control::HandBack { campaign, .. } => Some(campaign),
            _ => None,
        }
    }
}

/// Why a message could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message of {size} bytes is over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("limit exceeded: {0}")]
    Limit(String),
}

fn check_len(what: &str, n: usize, max: usize) -> Result<(), WireError> {
    if n > max {
        Err(WireError::Limit(format!("{what} has {n} entries, over {max}")))
    } else {
        Ok(())
    }
}

/// Encodes a control message.
pub fn encode_control(msg: &Control) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(msg, &mut out).expect("writing CBOR to a Vec cannot fail");
    out
}

/// Decodes a control message, enforcing the size and count limits.
pub fn decode_control(bytes: &[u8]) -> Result<Control, WireError> {
    if bytes.len() > MAX_CONTROL_MESSAGE {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            limit: MAX_CONTROL_MESSAGE,
        });
    }
    let mut rest = bytes;
    let msg: Control = ciborium::from_reader(&mut rest).map_err(|e| {
        let e = e.to_string();
        if e.contains(crate::id::IDS_OVER_LIMIT) {
            WireError::Limit(e)
        } else {
            WireError::Malformed(e)
        }
    })?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    match &msg {
        Control::Offer(o) => {
            check_len("part", o.part.len(), MAX_ADDRESSEES)?;
            check_len("path", o.path.len(), MAX_PATH)?;
        }
        Control::AuthRequest { path, .. } => check_len("path", path.len(), MAX_PATH)?,
        _ => {}
    }
    let reason = match &msg {
        Control::AuthReply { reason, .. } | Control::Trouble { reason, .. } | Control::Error { reason } => {
            Some(reason.len())
        }
        Control::OfferReply {
            verdict: Verdict::Refuse { detail, .. },
            ..
        } => Some(detail.len()),
        Control::InstallReport {
            outcome: InstallOutcome::Failed { reason },
            ..
        } => Some(reason.len()),
        _ => None,
    };
    if let Some(n) = reason
        && n > MAX_REASON
    {
        return Err(WireError::Limit(format!(
            "reason of {n} bytes, over {MAX_REASON}"
        )));
    }
    Ok(msg)
}

/// The first bytes of every encoded [`Control::Offer`]: a CBOR map of one entry whose key
/// is the text `Offer`.
pub const OFFER_PREFIX: &[u8] = &[0xa1, 0x65, b'O', b'f', b'f', b'e', b'r'];

/// The largest control frame of `len` bytes whose first bytes are `prefix` that a reader
/// should accept: offers may be up to [`MAX_CONTROL_MESSAGE`], everything else up to
/// [`crate::limits::MAX_SMALL_CONTROL`]. A reader that has at least
/// `OFFER_PREFIX.len()` bytes (or the whole frame, if shorter) can decide before
/// buffering the rest.
pub fn control_frame_limit(prefix: &[u8]) -> usize {
    if prefix.starts_with(OFFER_PREFIX) {
        MAX_CONTROL_MESSAGE
    } else {
        crate::limits::MAX_SMALL_CONTROL
    }
}

/// Truncates a free-text reason to the wire limit (on a char boundary).
pub fn clip_reason(mut s: String) -> String {
    if s.len() > MAX_REASON {
        let mut at = MAX_REASON;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

const REQ_MAGIC: &[u8; 4] = b"BTCQ";
const RESP_MAGIC: &[u8; 4] = b"BTCR";
const FRAME_VERSION: u8 = 1;

/// A request for one chunk, sent by `path.last()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRequest {
    pub campaign: CampaignId,
    pub index: u32,
    /// The requester's path from the first tier (inclusive). The server derives the
    /// requester's hop key from its own token along the part of the path below itself.
    pub path: Vec<NodeId>,
}

/// The status of a chunk response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStatus {
    /// `data` is the chunk sealed with the requester's hop key.
    Ok = 0,
    /// The server does not know the campaign.
    UnknownCampaign = 1,
    /// The server does not have the chunk yet; ask again.
    NotYet = 2,
    /// The server will not serve this requester (path does not check out).
    Refused = 3,
    /// The server's relaying is gated (owner's policy); ask another source.
    Gated = 4,
}

/// A response to a [`ChunkRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkResponse {
    pub campaign: CampaignId,
    pub index: u32,
    pub status: ChunkStatus,
    pub data: Vec<u8>,
}

impl ChunkRequest {
    /// `BTCQ` | version u8 | campaign [16] | index u32 BE | n u8 | n × (len u8 | peer id bytes)
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.path.len() <= u8::MAX as usize,
            "a chunk request path cannot exceed 255 entries"
        );
        let mut out = Vec::with_capacity(26 + self.path.len() * 40);
        out.extend_from_slice(REQ_MAGIC);
        out.push(FRAME_VERSION);
        out.extend_from_slice(&self.campaign);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.push(self.path.len() as u8);
        for n in &self.path {
            let b = n.to_bytes();
            out.push(b.len() as u8);
            out.extend_from_slice(&b);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let max = 26 + MAX_PATH * (1 + MAX_PEER_ID_BYTES);
        if bytes.len() > max {
            return Err(WireError::TooLarge {
                size: bytes.len(),
                limit: max,
            });
        }
        let mut r = Reader(bytes);
        r.magic(REQ_MAGIC)?;
        let campaign = r.array::<16>()?;
        let index = u32::from_be_bytes(r.array::<4>()?);
        let n = r.u8()? as usize;
        check_len("path", n, MAX_PATH)?;
        let mut path = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.u8()? as usize;
            let b = r.take(len)?;
            path.push(
                NodeId::from_bytes(b).ok_or_else(|| WireError::Malformed("bad peer id in path".into()))?,
            );
        }
        r.end()?;
        Ok(ChunkRequest {
            campaign,
            index,
            path,
        })
    }
}

impl ChunkResponse {
    /// `BTCR` | version u8 | campaign [16] | index u32 BE | status u8 | len u32 BE | data
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(30 + self.data.len());
        self.encode_header_into(&mut out);
        out.extend_from_slice(&self.data);
        out
    }

    /// Writes the header only (for shells that write the data separately).
    pub fn encode_header_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(RESP_MAGIC);
        out.push(FRAME_VERSION);
        out.extend_from_slice(&self.campaign);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.push(self.status as u8);
        out.extend_from_slice(&(self.data.len() as u32).to_be_bytes());
    }

    /// Header length in bytes.
    pub const HEADER_LEN: usize = 30;

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() > MAX_CHUNK_FRAME {
            return Err(WireError::TooLarge {
                size: bytes.len(),
                limit: MAX_CHUNK_FRAME,
            });
        }
        let mut r = Reader(bytes);
        r.magic(RESP_MAGIC)?;
        let campaign = r.array::<16>()?;
        let index = u32::from_be_bytes(r.array::<4>()?);
        let status = match r.u8()? {
            0 => ChunkStatus::Ok,
            1 => ChunkStatus::UnknownCampaign,
            2 => ChunkStatus::NotYet,
            3 => ChunkStatus::Refused,
            4 => ChunkStatus::Gated,
            s => return Err(WireError::Malformed(format!("unknown chunk status {s}"))),
        };
        let len = u32::from_be_bytes(r.array::<4>()?) as usize;
        if len > MAX_CHUNK_SIZE as usize + TAG_LEN {
            return Err(WireError::TooLarge {
                size: len,
                limit: MAX_CHUNK_SIZE as usize + TAG_LEN,
            });
        }
        let data = r.take(len)?.to_vec();
        r.end()?;
        Ok(ChunkResponse {
            campaign,
            index,
            status,
            data,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed("frame ends early".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }
    fn magic(&mut self, m: &[u8; 4]) -> Result<(), WireError> {
        if self.take(4)? != m {
            return Err(WireError::Malformed("not a Baton chunk frame".into()));
        }
        let v = self.u8()?;
        if v != FRAME_VERSION {
            return Err(WireError::Malformed(format!(
                "frame version {v}, expected {FRAME_VERSION}"
            )));
        }
        Ok(())
    }
    fn end(&self) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed(format!("{} trailing bytes", self.0.len())))
        }
    }
}
