//! The `config` fuzz corpus as a regression test: every file of `fuzz/corpus/config/` goes
//! through the fuzz target's body (`fuzz/src/config.rs`, included here), that is through
//! `baton_node::cli::parse_config`, under stable `cargo test`.
//!
//! The seed files are written by the ignored test `generate_seed_corpus`:
//! `cargo test -p baton-node --test config_corpus -- --ignored generate_seed_corpus`.

use std::path::{Path, PathBuf};

use baton_node::cli::parse_config;
use baton_protocol::id::{NodeId, keypair_from_seed};

mod target {
    include!("../../fuzz/src/config.rs");
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config")
}

#[test]
fn config_corpus() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", corpus_dir().display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "the corpus {} is empty",
        corpus_dir().display()
    );
    let failed: Vec<String> = files
        .iter()
        .filter(|p| {
            let data = std::fs::read(p).unwrap();
            std::panic::catch_unwind(|| target::fuzz_config(&data)).is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(failed.is_empty(), "these corpus files panic: {failed:#?}");
}

/// Config files, valid (`valid-*`) and not, by name.
fn seeds() -> Vec<(&'static str, String)> {
    let nms = NodeId::of(&keypair_from_seed(0xba70_0001));
    let peer = NodeId::of(&keypair_from_seed(0xba70_0100));
    vec![
        ("valid-empty", String::new()),
        ("valid-trust-first", "trust_first = true\n".into()),
        (
            "valid-full",
            format!(
                r#"# every setting
data_dir = "/var/lib/baton-node"
port = 4100
trust = ["{nms}"]
trust_first = false
peers = [
    "/ip4/10.0.0.5/tcp/4100/p2p/{peer}",
    "/ip6/::1/tcp/4100",
    "/dns4/nms.example/tcp/4100",
    "/dnsaddr/bootstrap.example",
    "/ip4/10.0.0.6/udp/4100/quic-v1",
    "/ip4/10.0.0.7/tcp/443/tls/sni/example.com/ws",
    "/unix/%2Frun%2Fbaton.sock",
]
tags = ["lab", "rack-3", "ünïcödé"]
install_cmd = 'tar -xzf "$BATON_PACKAGE" -C /opt/$BATON_NAME'
install_timeout_secs = 600
interfaces = ["eth0", "wlan0",]
"#
            ),
        ),
        (
            "valid-multiline",
            "install_cmd = \"\"\"\nset -e\nsh \\\"$BATON_PACKAGE\\\" \\\n  --yes\n\"\"\"\ntags = [\n  'a', # one\n  '''b''',\n]\nport = 0x10\n".into(),
        ),
        ("unknown-key", "colour = \"blue\"\n".into()),
        ("table", "[trust]\nnms = \"x\"\n".into()),
        ("bad-trust", "trust = [\"12D3KooWnotapeerid\"]\n".into()),
        ("bad-peer", "peers = [\"/ip4/999.0.0.1/tcp/1\"]\n".into()),
        ("port-too-large", "port = 70000\n".into()),
        ("wrong-type", "trust_first = \"yes\"\n".into()),
        ("duplicate-key", "port = 1\nport = 2\n".into()),
        ("inline-table", "tags = [{ a = 1 }, [1, [2, [3]]]]\n".into()),
        ("dates", "install_timeout_secs = 1979-05-27T07:32:00Z\n".into()),
    ]
}

#[test]
#[ignore = "writes fuzz/corpus/config; run by hand after a change of the config file"]
fn generate_seed_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for old in std::fs::read_dir(&dir).unwrap() {
        let p = old.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("seed-") {
            std::fs::remove_file(p).unwrap();
        }
    }
    for (name, text) in seeds() {
        std::fs::write(dir.join(format!("seed-{name}.toml")), text).unwrap();
    }
}

#[test]
fn valid_seeds_parse_and_others_do_not() {
    for (name, text) in seeds() {
        let parsed = parse_config(&text);
        assert_eq!(name.starts_with("valid"), parsed.is_ok(), "{name}: {parsed:?}");
    }
    let full = parse_config(&seeds()[2].1).unwrap();
    assert_eq!(full.trust, [NodeId::of(&keypair_from_seed(0xba70_0001))]);
    assert_eq!(full.peers.len(), 7);
    assert_eq!(full.interfaces, ["eth0", "wlan0"]);
}
