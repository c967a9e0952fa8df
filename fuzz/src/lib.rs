//! Bodies of Baton's fuzz targets. Each `fuzz_targets/<name>.rs` calls `fuzz_<name>`; the
//! regression tests in `protocol/tests/fuzz_corpus.rs` and `node/tests/config_corpus.rs`
//! include the same files and run every file of `corpus/<name>/` through them.

pub mod config;
pub mod protocol;
