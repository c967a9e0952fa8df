//! baton-testbed: many hosts on one machine. Network namespaces on an isolated bridge
//! ([`netns`]), a Baton fleet on them ([`cluster`]), the one-command demo ([`demo`]), and
//! benchmarks against existing tools ([`bench`]).

pub mod attack;
pub mod baton_bench;
pub mod bench;
pub mod cluster;
pub mod demo;
pub mod netns;
