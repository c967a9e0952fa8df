//! The key schedule: campaign secret, hop tokens, hop keys, chunk sealing and the rolling
//! authentication code (design brief step 6 and 8; the seed's claims 7-8 and 17-18).
//!
//! Every derivation is BLAKE3 `derive_key` with a fixed context string:
//!
//! ```text
//! T_root       = KDF(CTX_ROOT,  secret || campaign_id)
//! T_child      = KDF(CTX_HOP,   T_parent || peer_id_bytes(child))   (T_parent = T_root at the NMS)
//! hop key      = KDF(CTX_CHUNK, T_child)
//! auth code    = KDF(CTX_AUTH,  T_node || campaign_id || root_hash)
//! ```
//!
//! A node knows its own token and derives its children's; it can never go back up.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::chunk::Hash;
use crate::id::NodeId;
use crate::manifest::CampaignId;

pub const CTX_ROOT: &str = "baton 2026-11 campaign root token v1";
pub const CTX_HOP: &str = "baton 2026-11 hop token v1";
pub const CTX_CHUNK: &str = "baton 2026-11 chunk key v1";
pub const CTX_AUTH: &str = "baton 2026-11 auth code v1";

/// Length of the Poly1305 tag appended to every sealed chunk.
pub const TAG_LEN: usize = 16;

fn kdf(context: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(context);
    for p in parts {
        h.update(p);
    }
    *h.finalize().as_bytes()
}

/// The NMS's per-campaign secret. Never leaves the NMS.
#[derive(Clone, PartialEq, Eq)]
pub struct CampaignSecret(pub [u8; 32]);

impl std::fmt::Debug for CampaignSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CampaignSecret(..)")
    }
}

impl CampaignSecret {
    /// The token the NMS holds for a campaign; first-tier tokens derive from it.
    pub fn root_token(&self, campaign: &CampaignId) -> HopToken {
        HopToken(kdf(CTX_ROOT, &[&self.0, campaign]))
    }
}

/// A hop token: what a parent hands its child in the offer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopToken(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl std::fmt::Debug for HopToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HopToken(..)")
    }
}

impl HopToken {
    /// The token of a child of the holder of this token.
    pub fn child(&self, child: &NodeId) -> HopToken {
        HopToken(kdf(CTX_HOP, &[&self.0, &child.to_bytes()]))
    }

    /// The token at the end of `path`, walking down from the holder of this token.
    pub fn along(&self, path: &[NodeId]) -> HopToken {
        path.iter().fold(self.clone(), |t, n| t.child(n))
    }

    /// The key that seals chunks sent to the holder of this token.
    pub fn chunk_key(&self) -> ChunkKey {
        ChunkKey(kdf(CTX_CHUNK, &[&self.0]))
    }

    /// The rolling code the holder sends the NMS to prove what it received.
    pub fn auth_code(&self, campaign: &CampaignId, root: &Hash) -> [u8; 32] {
        kdf(CTX_AUTH, &[&self.0, campaign, root])
    }
}

/// A hop key (ChaCha20-Poly1305).
#[derive(Clone, PartialEq, Eq)]
pub struct ChunkKey(pub [u8; 32]);

impl std::fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkKey(..)")
    }
}

/// A sealed chunk failed to open: wrong key, wrong index, or tampered bytes.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("sealed chunk {index} failed authentication (tampered, or sealed for another hop)")]
pub struct OpenError {
    pub index: u32,
}

fn nonce(index: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&u64::from(index).to_le_bytes());
    Nonce::from(n)
}

fn aad(campaign: &CampaignId, index: u32) -> [u8; 24] {
    let mut a = [0u8; 24];
    a[..16].copy_from_slice(campaign);
    a[16..].copy_from_slice(&u64::from(index).to_le_bytes());
    a
}

impl ChunkKey {
    /// Seals `data` in place and appends the 16-byte tag.
    pub fn seal(&self, campaign: &CampaignId, index: u32, data: &mut Vec<u8>) {
        let cipher = ChaCha20Poly1305::new(&Key::from(self.0));
        let tag = cipher
            .encrypt_inout_detached(&nonce(index), &aad(campaign, index), data.as_mut_slice().into())
            .expect("chunks are far below ChaCha20-Poly1305's length limit");
        data.extend_from_slice(&tag);
    }

    /// Opens a sealed chunk in place (removing the tag).
    pub fn open(&self, campaign: &CampaignId, index: u32, data: &mut Vec<u8>) -> Result<(), OpenError> {
        if data.len() < TAG_LEN {
            return Err(OpenError { index });
        }
        let split = data.len() - TAG_LEN;
        let mut tag_bytes = [0u8; TAG_LEN];
        tag_bytes.copy_from_slice(&data[split..]);
        data.truncate(split);
        let cipher = ChaCha20Poly1305::new(&Key::from(self.0));
        cipher
            .decrypt_inout_detached(
                &nonce(index),
                &aad(campaign, index),
                data.as_mut_slice().into(),
                &Tag::from(tag_bytes),
            )
            .map_err(|_| OpenError { index })
    }
}

/// Why the NMS refused an authentication code.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the path is empty")]
    EmptyPath,
    #[error("the path is longer than {} hops", crate::limits::MAX_PATH)]
    PathTooLong,
    #[error("the path does not end with the node that asked ({0})")]
    NotTheSender(NodeId),
    #[error("{0} on the path is not an addressee of this campaign")]
    NotAddressee(NodeId),
    #[error("{0} appears twice on the path")]
    Loop(NodeId),
    #[error("the root hash reported is not the manifest's")]
    WrongRoot,
    #[error("the authentication code does not match the path (forged token or tampered path)")]
    BadCode,
}

/// What a node claims when it authenticates: sent by `sender` along `path` (first tier
/// first), having received a package with root hash `root`.
#[derive(Debug, Clone, Copy)]
pub struct AuthClaim<'a> {
    pub sender: &'a NodeId,
    pub path: &'a [NodeId],
    pub root: &'a Hash,
    pub code: &'a [u8; 32],
}

/// The NMS's check of a rolling code.
pub fn verify_auth(
    secret: &CampaignSecret,
    campaign: &CampaignId,
    manifest_root: &Hash,
    is_addressee: impl Fn(&NodeId) -> bool,
    claim: AuthClaim<'_>,
) -> Result<(), AuthError> {
    let AuthClaim {
        sender,
        path,
        root,
        code,
    } = claim;
    let last = path.last().ok_or(AuthError::EmptyPath)?;
    if path.len() > crate::limits::MAX_PATH {
        return Err(AuthError::PathTooLong);
    }
    if last != sender {
        return Err(AuthError::NotTheSender(*sender));
    }
    for (i, n) in path.iter().enumerate() {
        if !is_addressee(n) {
            return Err(AuthError::NotAddressee(*n));
        }
        if path[..i].contains(n) {
            return Err(AuthError::Loop(*n));
        }
    }
    if root != manifest_root {
        return Err(AuthError::WrongRoot);
    }
    let expected = secret.root_token(campaign).along(path).auth_code(campaign, root);
    if constant_time_eq(&expected, code) {
        Ok(())
    } else {
        Err(AuthError::BadCode)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::keypair_from_seed;

    fn ids() -> (NodeId, NodeId) {
        (
            NodeId::of(&keypair_from_seed(1)),
            NodeId::of(&keypair_from_seed(2)),
        )
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let key = HopToken([7; 32]).chunk_key();
        let campaign = [1u8; 16];
        let mut buf = b"hello chunk".to_vec();
        key.seal(&campaign, 3, &mut buf);
        assert_eq!(buf.len(), 11 + TAG_LEN);
        let sealed = buf.clone();
        key.open(&campaign, 3, &mut buf).unwrap();
        assert_eq!(buf, b"hello chunk");
        // wrong index, wrong campaign, wrong key, flipped bit: all refused
        assert!(key.open(&campaign, 4, &mut sealed.clone()).is_err());
        assert!(key.open(&[2u8; 16], 3, &mut sealed.clone()).is_err());
        assert!(
            HopToken([8; 32])
                .chunk_key()
                .open(&campaign, 3, &mut sealed.clone())
                .is_err()
        );
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert!(key.open(&campaign, 3, &mut flipped).is_err());
        assert!(key.open(&campaign, 3, &mut vec![0u8; 5]).is_err());
    }

    #[test]
    fn auth_code_checks_along_the_path() {
        let (a, b) = ids();
        let secret = CampaignSecret([9; 32]);
        let campaign = [3u8; 16];
        let root = [4u8; 32];
        let t_a = secret.root_token(&campaign).child(&a);
        let t_b = t_a.child(&b);
        let code = t_b.auth_code(&campaign, &root);
        let all = |_: &NodeId| true;
        assert_eq!(
            verify_auth(
                &secret,
                &campaign,
                &root,
                all,
                AuthClaim {
                    sender: &b,
                    path: &[a, b],
                    root: &root,
                    code: &code
                }
            ),
            Ok(())
        );
        assert_eq!(
            verify_auth(
                &secret,
                &campaign,
                &root,
                all,
                AuthClaim {
                    sender: &b,
                    path: &[b],
                    root: &root,
                    code: &code
                }
            ),
            Err(AuthError::BadCode)
        );
        assert_eq!(
            verify_auth(
                &secret,
                &campaign,
                &root,
                all,
                AuthClaim {
                    sender: &a,
                    path: &[a, b],
                    root: &root,
                    code: &code
                }
            ),
            Err(AuthError::NotTheSender(a))
        );
        assert_eq!(
            verify_auth(
                &secret,
                &campaign,
                &root,
                |n| *n != a,
                AuthClaim {
                    sender: &b,
                    path: &[a, b],
                    root: &root,
                    code: &code
                }
            ),
            Err(AuthError::NotAddressee(a))
        );
        assert_eq!(
            verify_auth(
                &secret,
                &campaign,
                &root,
                all,
                AuthClaim {
                    sender: &b,
                    path: &[a, b],
                    root: &[5; 32],
                    code: &code
                }
            ),
            Err(AuthError::WrongRoot)
        );
        assert_eq!(
            verify_auth(
                &secret,
                &campaign,
                &root,
                all,
                AuthClaim {
                    sender: &a,
                    path: &[a, b, a],
                    root: &root,
                    code: &code
                }
            ),
            Err(AuthError::Loop(a))
        );
    }
}
