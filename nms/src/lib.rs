//! baton-nms: the management server.

pub mod watch;
