//! Identities: ed25519 keys named by their libp2p `PeerId`.

use std::fmt;

pub use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::MAX_PEER_ID_BYTES;

/// The name of a process in a Baton network: the `PeerId` of its ed25519 key.
///
/// On the wire it is the byte form of the peer id (a multihash), a CBOR byte string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub PeerId);

impl NodeId {
    /// The id of a keypair.
    pub fn of(keypair: &Keypair) -> Self {
        NodeId(keypair.public().to_peer_id())
    }

    /// The bytes that name this id on the wire and in the key schedule.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// Parses the byte form, refusing anything longer than [`MAX_PEER_ID_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_PEER_ID_BYTES {
            return None;
        }
        PeerId::from_bytes(bytes).ok().map(NodeId)
    }

    /// The ed25519 public key inlined in this id, if it is an ed25519 id.
    pub fn public_key(&self) -> Option<PublicKey> {
        let bytes = self.0.to_bytes();
        // identity multihash: code 0x00, length 36, then the protobuf-encoded key
        if bytes.len() == 38 && bytes[0] == 0 && bytes[1] == 36 {
            PublicKey::try_decode_protobuf(&bytes[2..]).ok()
        } else {
            None
        }
    }

    /// A short form for logs and progress bars.
    pub fn short(&self) -> String {
        let s = self.0.to_base58();
        s[s.len().saturating_sub(8)..].to_string()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl std::str::FromStr for NodeId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<PeerId>()
            .map(NodeId)
            .map_err(|e| format!("`{s}` is not a peer id ({e}); peer ids look like 12D3KooW..."))
    }
}

impl From<PeerId> for NodeId {
    fn from(p: PeerId) -> Self {
        NodeId(p)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.to_bytes())
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let buf = serde_bytes::ByteBuf::deserialize(d)?;
        NodeId::from_bytes(&buf).ok_or_else(|| serde::de::Error::custom("invalid peer id bytes"))
    }
}

/// The start of the decoding error of a list of ids over its limit.
pub(crate) const IDS_OVER_LIMIT: &str = "list of ids over the limit of";

/// Deserializes a list of ids, refusing more than `MAX` entries while decoding, so that a
/// peer cannot make a decoder build a huge list before a limit is checked.
pub(crate) fn ids_at_most<'de, D: Deserializer<'de>, const MAX: usize>(
    d: D,
) -> Result<Vec<NodeId>, D::Error> {
    struct Ids<const MAX: usize>;
    impl<'de, const MAX: usize> serde::de::Visitor<'de> for Ids<MAX> {
        type Value = Vec<NodeId>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {MAX} peer ids")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX).min(1024));
            while let Some(id) = seq.next_element::<NodeId>()? {
                if out.len() == MAX {
                    return Err(serde::de::Error::custom(format!("{IDS_OVER_LIMIT} {MAX}")));
                }
                out.push(id);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Ids::<MAX>)
}

/// A keypair derived from a seed, for tests and the simulator. Never for real use.
pub fn keypair_from_seed(seed: u64) -> Keypair {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8] = 0xba;
    let derived = blake3::derive_key("baton 2026 test keypair v1", &bytes);
    Keypair::ed25519_from_bytes(derived).expect("32 bytes make an ed25519 secret")
}

/// A distinct, cheap id without a key (identity multihash of `n`), for tests and large
/// simulations where signatures by the id are never checked.
pub fn fake_id(n: u64) -> NodeId {
    let mut b = vec![0x00, 8];
    b.extend_from_slice(&n.to_le_bytes());
    NodeId(PeerId::from_bytes(&b).expect("identity multihash of 8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_round_trips_through_the_id() {
        let kp = keypair_from_seed(7);
        let id = NodeId::of(&kp);
        assert_eq!(id.public_key().unwrap(), kp.public());
        assert_eq!(NodeId::from_bytes(&id.to_bytes()), Some(id));
        assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        assert!(NodeId::from_bytes(&[0u8; 80]).is_none());
        assert!(NodeId::from_bytes(b"garbage").is_none());
    }
}
