//! baton-shell: the I/O layer written once and shared by `baton-node` and `baton-nms`.
//! Every decision is in `baton-protocol`; this crate only moves bytes: the libp2p
//! transport and its limits ([`net`]), mDNS discovery ([`discovery`]), the persistent
//! identity and the data-directory lock ([`identity`]), reading and sealing chunks from a
//! package file ([`chunkfile`]), the operator's control socket ([`control`]), and the log subscriber ([`init_tracing`]).

pub mod chunkfile;
pub mod control;
pub mod discovery;
pub mod identity;
pub mod net;

/// Installs the log subscriber (stderr; `RUST_LOG` overrides the default filter).
pub fn init_tracing() {
    init_tracing_with(std::io::stderr);
}

/// [`init_tracing`] writing through `make` (e.g. a writer that keeps a live view intact);
/// colours only when stderr is a terminal.
pub fn init_tracing_with<W: std::io::Write + 'static>(make: fn() -> W) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p=warn,mdns_sd=warn".into()),
        )
        .with_writer(make)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
