//! Baton's sans-IO core.
//!
//! Everything a Baton process decides lives here, as plain data and state machines that
//! take events with the time passed in and return actions: no sockets, no clocks, no
//! files, no async runtime. `baton-node`, `baton-nms` and `baton-testbed` are shells that
//! turn I/O into events and actions into I/O; the [`sim`] module drives the same machines
//! on virtual time.
//!
//! Start reading at the endpoints: [`endpoint::node::NodeEndpoint`] (all of a node's
//! campaigns: admission, lifecycle, retries, the journal's meaning) and
//! [`endpoint::nms::NmsEndpoint`] (the fleet, drops becoming campaigns, the campaigns).
//! Below them, [`receiver::NodeCampaign`] is a node in one campaign and
//! [`monitor::CampaignMonitor`] the NMS in one campaign. Time is a
//! [`std::time::Duration`] since an origin the shell picks.

pub mod admission;
pub mod chunk;
pub mod endpoint;
pub mod gate;
pub mod id;
pub mod inbox;
pub mod keys;
pub mod limits;
pub mod manifest;
pub mod monitor;
pub mod plan;
pub mod receiver;
pub mod selfupdate;
pub mod serve;
pub mod sim;
pub mod wire;

pub use admission::{AdmissionContext, Admitted, OpenedOffer, admit, open_offer};
pub use chunk::{ChunkSet, Hash, Layout, PackageHasher};
pub use id::{Keypair, NodeId, PeerId};
pub use keys::{CampaignSecret, ChunkKey, HopToken};
pub use manifest::{CampaignId, InstallCheck, Manifest, SignedManifest, Superseded, Transfer, VerifyContext};
pub use monitor::{CampaignMonitor, MonitorAction, MonitorConfig, MonitorNote, NodeStatus};
pub use receiver::{NodeAction, NodeCampaign, NodeConfig, Note, check_offer};
pub use serve::{RequestId, ServeAction};
pub use wire::{
    ChunkRequest, ChunkResponse, ChunkStatus, Control, ControlKind, Holding, InstallOutcome, Offer, Phase,
    ProbeState,
};
