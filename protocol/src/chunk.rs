//! Chunk layout, per-chunk hashing and the set of verified chunks.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::limits::{MAX_CHUNK_SIZE, MAX_CHUNKS, MIN_CHUNK_SIZE};

/// A BLAKE3 hash.
pub type Hash = [u8; 32];

/// The BLAKE3 hash of one chunk's plaintext.
pub fn hash_chunk(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// Why a layout was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("chunk size {0} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} bytes")]
    ChunkSize(u32),
    #[error(
        "a package of {size} bytes in chunks of {chunk_size} has {count} chunks, more than the limit of {MAX_CHUNKS}; use larger chunks"
    )]
    TooManyChunks { size: u64, chunk_size: u32, count: u64 },
}

/// How a package of `size` bytes is cut into chunks of `chunk_size` bytes: every chunk is
/// full but the last, which holds the rest (1..=chunk_size bytes). An empty package has
/// no chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub size: u64,
    pub chunk_size: u32,
}

impl Layout {
    /// A layout, checked against the limits.
    pub fn new(size: u64, chunk_size: u32) -> Result<Self, LayoutError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(LayoutError::ChunkSize(chunk_size));
        }
        let count = size.div_ceil(u64::from(chunk_size));
        if count > MAX_CHUNKS {
            return Err(LayoutError::TooManyChunks {
                size,
                chunk_size,
                count,
            });
        }
        Ok(Layout { size, chunk_size })
    }

    /// Number of chunks.
    pub fn count(&self) -> u32 {
        self.size.div_ceil(u64::from(self.chunk_size)) as u32
    }

    /// Byte offset of chunk `index`.
    pub fn offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.chunk_size)
    }

    /// Length of chunk `index` in bytes (0 for an index past the end).
    pub fn len(&self, index: u32) -> u32 {
        let start = self.offset(index);
        if start >= self.size {
            return 0;
        }
        (self.size - start).min(u64::from(self.chunk_size)) as u32
    }

    /// True for an empty package.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

/// Hashes a package as it streams by: per-chunk hashes and the root hash (the BLAKE3 hash
/// of the whole content). The caller feeds the bytes; this type does no I/O.
#[derive(Debug)]
pub struct PackageHasher {
    chunk_size: u32,
    whole: blake3::Hasher,
    current: blake3::Hasher,
    in_current: u32,
    size: u64,
    chunks: Vec<Hash>,
}

impl PackageHasher {
    pub fn new(chunk_size: u32) -> Self {
        PackageHasher {
            chunk_size,
            whole: blake3::Hasher::new(),
            current: blake3::Hasher::new(),
            in_current: 0,
            size: 0,
            chunks: Vec::new(),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.whole.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            let room = (self.chunk_size - self.in_current) as usize;
            let take = room.min(data.len());
            self.current.update(&data[..take]);
            self.in_current += take as u32;
            data = &data[take..];
            if self.in_current == self.chunk_size {
                self.chunks.push(*self.current.finalize().as_bytes());
                self.current.reset();
                self.in_current = 0;
            }
        }
    }

    /// (size, per-chunk hashes, root hash).
    pub fn finish(mut self) -> (u64, Vec<Hash>, Hash) {
        if self.in_current > 0 {
            self.chunks.push(*self.current.finalize().as_bytes());
        }
        (self.size, self.chunks, *self.whole.finalize().as_bytes())
    }
}

/// A set of chunk indices (which chunks are verified).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkSet {
    bits: Vec<u64>,
    len: u32,
    count: u32,
}

impl ChunkSet {
    pub fn new(len: u32) -> Self {
        ChunkSet {
            bits: vec![0; (len as usize).div_ceil(64)],
            len,
            count: 0,
        }
    }
    pub fn full(len: u32) -> Self {
        let mut s = Self::new(len);
        for i in 0..len {
            s.insert(i);
        }
        s
    }
    pub fn contains(&self, i: u32) -> bool {
        i < self.len && self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    /// Inserts `i`; true if it was new.
    pub fn insert(&mut self, i: u32) -> bool {
        if i >= self.len || self.contains(i) {
            return false;
        }
        self.bits[(i / 64) as usize] |= 1 << (i % 64);
        self.count += 1;
        true
    }
    pub fn count(&self) -> u32 {
        self.count
    }
    pub fn len(&self) -> u32 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn is_full(&self) -> bool {
        self.count == self.len
    }
    /// The lowest index not in the set at or after `from`.
    pub fn first_missing_from(&self, from: u32) -> Option<u32> {
        (from..self.len).find(|&i| !self.contains(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_package_has_no_chunks() {
        let l = Layout::new(0, 4096).unwrap();
        assert_eq!(l.count(), 0);
        assert!(l.is_empty());
        let (size, chunks, root) = PackageHasher::new(4096).finish();
        assert_eq!((size, chunks.len()), (0, 0));
        assert_eq!(root, *blake3::hash(b"").as_bytes());
    }

    #[test]
    fn limits_are_enforced() {
        assert_eq!(Layout::new(1, 100), Err(LayoutError::ChunkSize(100)));
        assert!(matches!(
            Layout::new(u64::MAX / 2, MIN_CHUNK_SIZE),
            Err(LayoutError::TooManyChunks { .. })
        ));
    }

    proptest! {
        #[test]
        fn layout_covers_every_byte_once(size in 0u64..5_000_000, cs in 4096u32..300_000) {
            let l = Layout::new(size, cs).unwrap();
            let mut total = 0u64;
            for i in 0..l.count() {
                prop_assert_eq!(l.offset(i), total);
                let n = l.len(i);
                prop_assert!(n >= 1 && n <= cs);
                total += u64::from(n);
            }
            prop_assert_eq!(total, size);
            prop_assert_eq!(l.len(l.count()), 0);
        }

        #[test]
        fn hasher_matches_chunkwise_hashing(data in proptest::collection::vec(any::<u8>(), 0..40_000), split in 0usize..40_000) {
            let l = Layout::new(data.len() as u64, 4096).unwrap();
            let mut h = PackageHasher::new(4096);
            let split = split.min(data.len());
            h.update(&data[..split]);
            h.update(&data[split..]);
            let (size, chunks, root) = h.finish();
            prop_assert_eq!(size, data.len() as u64);
            prop_assert_eq!(chunks.len() as u32, l.count());
            for i in 0..l.count() {
                let s = l.offset(i) as usize;
                prop_assert_eq!(chunks[i as usize], hash_chunk(&data[s..s + l.len(i) as usize]));
            }
            prop_assert_eq!(root, *blake3::hash(&data).as_bytes());
        }
    }

    #[test]
    fn chunk_set_tracks_membership() {
        let mut s = ChunkSet::new(130);
        assert!(s.insert(0));
        assert!(!s.insert(0));
        assert!(s.insert(129));
        assert!(!s.insert(130));
        assert_eq!(s.count(), 2);
        assert_eq!(s.first_missing_from(0), Some(1));
        assert_eq!(s.first_missing_from(129), None);
        assert!(ChunkSet::full(130).is_full());
    }
}
