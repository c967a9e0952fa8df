//! Chunk file I/O shared by nodes and the NMS: a package file is kept open and chunks are
//! read by offset and sealed for the requester.

use std::os::unix::fs::FileExt;

use baton_protocol::{ChunkKey, ChunkResponse, ChunkStatus, Manifest};

/// Reads chunk `index` of the package file and seals it for the requester. A read error
/// is logged and answered `NotYet` (the requester asks again later).
pub fn read_and_seal(file: &std::fs::File, m: &Manifest, index: u32, key: &ChunkKey) -> ChunkResponse {
    let layout = m.layout().expect("validated manifest");
    let mut data = vec![0u8; layout.len(index) as usize];
    match file.read_exact_at(&mut data, layout.offset(index)) {
        Ok(()) => {
            key.seal(&m.campaign, index, &mut data);
            ChunkResponse {
                campaign: m.campaign,
                index,
                status: ChunkStatus::Ok,
                data,
            }
        }
        Err(e) => {
            tracing::error!("cannot read chunk {index} of the package: {e}");
            ChunkResponse {
                campaign: m.campaign,
                index,
                status: ChunkStatus::NotYet,
                data: Vec::new(),
            }
        }
    }
}
