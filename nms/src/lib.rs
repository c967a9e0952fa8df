//! baton-nms: the management server. Watches a folder, builds and signs campaigns, plans
//! and offers them, authenticates nodes, and shows the operator what happens.

pub mod campaign;
pub mod cli;
pub mod db;
pub mod ops;
pub mod server;
pub mod ui;
pub mod watch;
