//! baton-testbed: many hosts on one machine. Network namespaces on an isolated bridge
//! ([`netns`]), the one-command demo ([`demo`]), and benchmarks against existing tools
//! ([`bench`]).

pub mod bench;
pub mod netns;
