//! baton-node: the agent on every machine. Its transport, discovery and identity are in
//! `baton-shell`, shared with `baton-nms`.

pub mod agent;
pub mod cli;
pub mod journal;
pub mod once;
pub mod probe;
pub mod status;
pub mod store;
pub mod trial;
pub mod upgrade;
