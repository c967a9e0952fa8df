//! baton-testbed: many hosts on one machine. Network namespaces on an isolated bridge
//! ([`netns`]), a Baton fleet on them ([`cluster`]), the one-command demo ([`demo`]),
//! benchmarks against existing tools ([`bench`]), and the fault suite ([`faults`]).

pub mod attack;
pub mod baton_bench;
pub mod bench;
pub mod cluster;
pub mod demo;
pub mod faults;
pub mod netns;
pub mod selfupdate;
