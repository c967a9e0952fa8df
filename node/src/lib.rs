//! baton-node: the agent on every machine, and the pieces of shell it shares with
//! `baton-nms` (identity, transport, discovery).

pub mod agent;
pub mod cli;
pub mod discovery;
pub mod identity;
pub mod net;
pub mod store;
