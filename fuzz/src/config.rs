// The body of the `config` fuzz target, shared: the fuzz crate compiles this file as its
// module `config`, and `node/tests/config_corpus.rs` include!()s it to replay the committed
// corpus under `cargo test`. It must return normally on every input.

/// `config`: the text of a node's config file, through `baton_node::cli::parse_config`.
/// Bytes that are not UTF-8 are also tried with their invalid sequences replaced, so that
/// mutations of the bytes still reach the parser.
pub fn fuzz_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = baton_node::cli::parse_config(&text) {
        let _ = format!("{c:?}");
    }
}
