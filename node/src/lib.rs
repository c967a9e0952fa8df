//! baton-node: the agent on every machine.

pub mod discovery;
