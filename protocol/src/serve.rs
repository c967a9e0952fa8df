//! The serving half of a relay, shared by nodes and the NMS: answers chunk requests from
//! the chunks that are verified, holds requests for chunks still on their way
//! (cut-through) and releases them when the chunk arrives.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::chunk::ChunkSet;
use crate::id::NodeId;
use crate::keys::{ChunkKey, HopToken};
use crate::manifest::{CampaignId, Transfer};
use crate::wire::{ChunkRequest, ChunkStatus};

/// The shell's handle for one incoming chunk request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// What the shell must do with a chunk request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeAction {
    /// Read chunk `index` from the store, seal it with `key` and send it as the response.
    SendChunk {
        req: RequestId,
        to: NodeId,
        index: u32,
        key: ChunkKey,
    },
    /// Answer with an empty response of this status. `index` is the request's, which the
    /// response must carry (protocol.md 6.2): the requester matches answers to its
    /// requests in flight by index and drops any other.
    Answer {
        req: RequestId,
        index: u32,
        status: ChunkStatus,
    },
}

#[derive(Debug)]
struct Held {
    req: RequestId,
    to: NodeId,
    index: u32,
    key: ChunkKey,
    since: Duration,
}

/// Serves one campaign's chunks.
#[derive(Debug)]
pub struct Server {
    campaign: CampaignId,
    /// Path from the first tier down to this server (empty for the NMS).
    my_path: Vec<NodeId>,
    my_token: HopToken,
    transfer: Transfer,
    complete: bool,
    /// How long a request for a missing chunk is held before `NotYet`.
    hold: Duration,
    held: Vec<Held>,
    keys: HashMap<Vec<NodeId>, ChunkKey>,
    gated: bool,
    /// Serving stopped for good (the holder's store failed): every request is `Gated`.
    closed: bool,
    last_request: Option<Duration>,
    /// Chunks served (count) and bytes, for reports.
    pub served_chunks: u64,
}

impl Server {
    /// A server for the holder of `my_token` at `my_path`.
    pub fn new(
        campaign: CampaignId,
        my_path: Vec<NodeId>,
        my_token: HopToken,
        transfer: Transfer,
        hold: Duration,
    ) -> Self {
        Server {
            campaign,
            my_path,
            my_token,
            transfer,
            complete: false,
            hold,
            held: Vec::new(),
            keys: HashMap::new(),
            gated: false,
            closed: false,
            last_request: None,
            served_chunks: 0,
        }
    }

    /// Relaying is gated by the owner's policy: answer `Gated` until it opens.
    pub fn set_gated(&mut self, now: Duration, gated: bool, out: &mut Vec<ServeAction>) {
        self.gated = gated;
        if gated {
            self.answer_held_gated(out);
        }
        let _ = now;
    }

    /// Stops serving for good, whatever the owner's gate says: held requests and every
    /// later one are answered `Gated`, so requesters move to another source at once. For a
    /// holder whose store failed, whose chunks may not be what it verified.
    pub fn close(&mut self, out: &mut Vec<ServeAction>) {
        self.closed = true;
        self.answer_held_gated(out);
    }

    fn answer_held_gated(&mut self, out: &mut Vec<ServeAction>) {
        for h in self.held.drain(..) {
            out.push(ServeAction::Answer {
                req: h.req,
                index: h.index,
                status: ChunkStatus::Gated,
            });
        }
    }

    /// Handles a request from `from` (authenticated by the transport).
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &mut self,
        now: Duration,
        req: RequestId,
        from: NodeId,
        r: &ChunkRequest,
        have: &ChunkSet,
        is_addressee: impl Fn(&NodeId) -> bool,
        out: &mut Vec<ServeAction>,
    ) {
        self.last_request = Some(now);
        let answer = |status| ServeAction::Answer {
            req,
            index: r.index,
            status,
        };
        if r.campaign != self.campaign {
            out.push(answer(ChunkStatus::UnknownCampaign));
            return;
        }
        // the request path must be ours, then at least one more hop, ending at the sender
        let ok_path = r.path.len() > self.my_path.len()
            && r.path.starts_with(&self.my_path)
            && r.path.last() == Some(&from)
            && r.path[self.my_path.len()..].iter().all(&is_addressee)
            && r.index < have.len();
        if !ok_path {
            out.push(answer(ChunkStatus::Refused));
            return;
        }
        if self.gated || self.closed {
            out.push(answer(ChunkStatus::Gated));
            return;
        }
        let suffix = &r.path[self.my_path.len()..];
        let key = match self.keys.get(suffix) {
            Some(k) => k.clone(),
            None => {
                // bounded: a peer inventing path suffixes cannot grow the cache forever
                if self.keys.len() >= 4096 {
                    self.keys.clear();
                }
                let k = self.my_token.along(suffix).chunk_key();
                self.keys.insert(suffix.to_vec(), k.clone());
                k
            }
        };
        if self.can_serve(r.index, have) {
            self.served_chunks += 1;
            out.push(ServeAction::SendChunk {
                req,
                to: from,
                index: r.index,
                key,
            });
        } else {
            self.held.push(Held {
                req,
                to: from,
                index: r.index,
                key,
                since: now,
            });
        }
    }

    fn can_serve(&self, index: u32, have: &ChunkSet) -> bool {
        match self.transfer {
            Transfer::CutThrough => have.contains(index),
            Transfer::StoreAndForward => self.complete,
        }
    }

    /// A chunk became available (verified and stored).
    pub fn chunk_available(&mut self, have: &ChunkSet, out: &mut Vec<ServeAction>) {
        self.release(have, out);
    }

    /// The whole package is verified (store-and-forward serves from now on).
    pub fn set_complete(&mut self, have: &ChunkSet, out: &mut Vec<ServeAction>) {
        self.complete = true;
        self.release(have, out);
    }

    fn release(&mut self, have: &ChunkSet, out: &mut Vec<ServeAction>) {
        let mut i = 0;
        while i < self.held.len() {
            if self.can_serve(self.held[i].index, have) {
                let h = self.held.swap_remove(i);
                self.served_chunks += 1;
                out.push(ServeAction::SendChunk {
                    req: h.req,
                    to: h.to,
                    index: h.index,
                    key: h.key,
                });
            } else {
                i += 1;
            }
        }
    }

    /// Answers held requests that waited too long with `NotYet`.
    pub fn timeout(&mut self, now: Duration, out: &mut Vec<ServeAction>) {
        let hold = self.hold;
        self.held.retain(|h| {
            if now.saturating_sub(h.since) >= hold {
                out.push(ServeAction::Answer {
                    req: h.req,
                    index: h.index,
                    status: ChunkStatus::NotYet,
                });
                false
            } else {
                true
            }
        });
    }

    /// When the next held request times out.
    pub fn next_timeout(&self) -> Option<Duration> {
        self.held.iter().map(|h| h.since + self.hold).min()
    }

    /// When the last chunk request arrived.
    pub fn last_request(&self) -> Option<Duration> {
        self.last_request
    }

    /// The requests still held (for tests and status).
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// The requesters currently being served or held (for status).
    pub fn waiting_peers(&self) -> HashSet<NodeId> {
        self.held.iter().map(|h| h.to).collect()
    }
}
