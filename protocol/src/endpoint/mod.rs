//! Endpoints: the state machines above the per-campaign ones. A node endpoint owns all of
//! a node's campaigns; an NMS endpoint owns the fleet and its campaigns. Each takes one
//! input type with the time, returns actions for the shell and events for the operator
//! (drained apart), and names its deadlines in a [`timer::Timers`] table whose earliest
//! entry is `poll_timeout`.

pub mod nms;
pub mod node;
pub mod once;
pub mod timer;
