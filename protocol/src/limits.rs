//! Hard limits on everything that comes from the network or the disk.
//!
//! Every decoder and validator in this crate enforces these; a peer that sends more is
//! refused with a typed error, never trusted to be reasonable.

/// Largest control message (CBOR) accepted on the wire, in bytes: an offer. An offer with
/// the maximum chunk count (8 MiB of hashes) and the maximum addressee list (2 MB in the
/// manifest and 2 MB in the part, for ed25519 ids) fits (`the_largest_offer_fits`). Kept
/// this small because a node holds an offer's frame and its decoded form at once, and a
/// node under attack must stay small (`docs/security.md`).
pub const MAX_CONTROL_MESSAGE: usize = 12 * 1024 * 1024;
/// Largest control message other than an offer, in bytes. Only an offer carries a
/// manifest; every other message is a few hundred bytes, so a peer cannot make a node
/// hold megabytes by announcing a large non-offer frame.
pub const MAX_SMALL_CONTROL: usize = 64 * 1024;
/// Largest chunk request frame, in bytes (a path of [`MAX_PATH`] peer ids fits).
pub const MAX_CHUNK_REQUEST: usize = 8 * 1024;
/// Largest chunk, in bytes.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Smallest chunk, in bytes.
pub const MIN_CHUNK_SIZE: u32 = 4 * 1024;
/// Default chunk size.
pub const DEFAULT_CHUNK_SIZE: u32 = 128 * 1024;
/// Most chunks one package may have (8 MiB of hashes in a manifest).
pub const MAX_CHUNKS: u64 = 1 << 18;
/// Most addressees in one campaign.
pub const MAX_ADDRESSEES: usize = 50_000;
/// Longest path from the NMS to a node (hops).
pub const MAX_PATH: usize = 64;
/// Longest encoded peer id, in bytes.
pub const MAX_PEER_ID_BYTES: usize = 64;
/// Largest fanout.
pub const MAX_FANOUT: u8 = 16;
/// Longest package name (a plain file name), in bytes.
pub const MAX_NAME: usize = 200;
/// Longest version string, in bytes.
pub const MAX_VERSION: usize = 64;
/// Longest free-text reason in a message, in bytes.
pub const MAX_REASON: usize = 4096;
/// Largest chunk frame on the wire: header plus sealed chunk.
pub const MAX_CHUNK_FRAME: usize = MAX_CHUNK_SIZE as usize + 1024;
