//! The `baton-nms` command line: flags and the process entry point.

use std::path::PathBuf;
use std::time::Duration;

use crate::campaign::CampaignSettings;
use crate::server::{NmsOptions, run};
use crate::watch::check_folders;
use anyhow::{Result, bail};
use baton_protocol::endpoint::nms::FailureThreshold;
use baton_protocol::limits::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_FANOUT, MIN_CHUNK_SIZE};
use baton_protocol::manifest::{PlanParams, RelayPolicy, Transfer};
use baton_shell::discovery::Interfaces;
use clap::Parser;

/// Watches a folder and distributes every package dropped into it to the nodes of the LAN.
#[derive(Parser, Debug)]
#[command(name = "baton-nms", version)]
pub struct Cli {
    /// The folder operators drop packages into.
    #[arg(long)]
    watch: PathBuf,
    /// Data directory (identity key, sequence numbers, campaigns). Default:
    /// /var/lib/baton-nms as root, else ~/.local/share/baton-nms.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TCP port to listen on (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Do not use mDNS; name nodes with --peer.
    #[arg(long)]
    no_mdns: bool,
    /// Restrict mDNS to these interfaces. Repeatable.
    #[arg(long = "interface")]
    interfaces: Vec<String>,
    /// A node to include without mDNS: /ip4/.../tcp/.../p2p/<peer id>. Repeatable.
    #[arg(long = "peer", value_name = "MULTIADDR")]
    peers: Vec<libp2p::Multiaddr>,
    /// Wait for at least this many nodes before starting a campaign.
    #[arg(long, default_value_t = 0)]
    min_nodes: usize,
    /// Seconds without a newly discovered node before discovery counts as settled.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Seconds to wait for --min-nodes before giving up on a dropped file.
    #[arg(long, default_value_t = 60.0)]
    discovery_timeout: f64,
    /// Only nodes advertising all these tags get the package. Repeatable.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// How many parts each sender splits its list into (1 = chain, 2 = the seed's binary
    /// tree). A chain is the default: with cut-through every link carries the package once
    /// at full rate, so completion is close to one copy's time (see docs/benchmarks.md).
    #[arg(long, default_value_t = 1)]
    fanout: u8,
    /// Chunk size in bytes. Smaller chunks shorten the pipeline delay per hop.
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    chunk_size: u32,
    /// Relay only whole packages (the seed's literal flow) instead of cut-through.
    #[arg(long)]
    store_and_forward: bool,
    /// Hours until a campaign's manifest expires.
    #[arg(long, default_value_t = 24)]
    expiry_hours: u64,
    /// Let nodes install when they cannot reach the NMS to authenticate.
    #[arg(long)]
    offline_install: bool,
    /// Print JSON lines (events and the summary) instead of progress bars.
    #[arg(long)]
    json: bool,
    /// Exit after the first campaign ends (exit status 1 if any node failed).
    #[arg(long)]
    once: bool,
    /// Halt a campaign for the nodes not yet installed once this many addressees failed
    /// or are unreachable: a number of nodes (e.g. 3) or a percentage of the addressees
    /// (e.g. 10%). Default: never halt.
    #[arg(long, value_name = "N|P%")]
    halt_after: Option<FailureThreshold>,
}

fn default_data_dir() -> PathBuf {
    if std::env::var("HOME").as_deref() == Ok("/root") {
        PathBuf::from("/var/lib/baton-nms")
    } else if let Some(home) = std::env::var_os("HOME") {
        PathBuf::from(home).join(".local/share/baton-nms")
    } else {
        PathBuf::from("baton-nms-data")
    }
}

pub fn options(cli: Cli) -> Result<NmsOptions> {
    if cli.fanout == 0 || cli.fanout > MAX_FANOUT {
        bail!("--fanout must be between 1 and {MAX_FANOUT}");
    }
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cli.chunk_size) {
        bail!("--chunk-size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes");
    }
    if !cli.settle.is_finite()
        || cli.settle < 0.0
        || !cli.discovery_timeout.is_finite()
        || cli.discovery_timeout < 0.0
    {
        bail!("--settle and --discovery-timeout are seconds, 0 or more");
    }
    if !cli.watch.is_dir() {
        bail!(
            "the watched folder {} does not exist or is not a folder: create it (mkdir -p) or pass another --watch",
            cli.watch.display()
        );
    }
    let data_dir = cli.data_dir.unwrap_or_else(default_data_dir);
    // Nothing may ever be distributed from the data directory (it holds the private key).
    check_folders(&cli.watch, &data_dir)?;
    Ok(NmsOptions {
        data_dir,
        listen: format!("/ip4/0.0.0.0/tcp/{}", cli.port).parse()?,
        watch: cli.watch,
        mdns: !cli.no_mdns,
        interfaces: if cli.interfaces.is_empty() {
            Interfaces::All
        } else {
            Interfaces::Only(cli.interfaces)
        },
        peers: cli.peers,
        min_nodes: cli.min_nodes,
        settle: Duration::from_secs_f64(cli.settle),
        discovery_timeout: Duration::from_secs_f64(cli.discovery_timeout),
        tags: cli.tags,
        settings: CampaignSettings {
            chunk_size: cli.chunk_size,
            plan: PlanParams {
                fanout: cli.fanout,
                transfer: if cli.store_and_forward {
                    Transfer::StoreAndForward
                } else {
                    Transfer::CutThrough
                },
            },
            relay: RelayPolicy::default(),
            expiry_secs: cli.expiry_hours.max(1) * 3600,
            offline_install: cli.offline_install,
        },
        json: cli.json,
        once: cli.once,
        halt_after: cli.halt_after,
    })
}

/// Parses `args` (the program name first) and runs the NMS; with `--once`, exits the
/// process with status 1 if any node failed.
pub fn main_from<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    baton_shell::init_tracing();
    let opts = options(Cli::parse_from(args))?;
    let once = opts.once;
    let summaries = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(opts))?;
    if once
        && summaries
            .iter()
            .any(|s| !s.failed.is_empty() || s.installed < s.nodes)
    {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    fn parse(watch: &Path, data: &Path) -> Result<NmsOptions> {
        let args = ["baton-nms", "--no-mdns", "--watch"];
        let cli = Cli::try_parse_from(args.iter().map(std::ffi::OsStr::new).chain([
            watch.as_os_str(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ]))?;
        options(cli)
    }

    fn refused(watch: &Path, data: &Path, what: &str) {
        let err = format!("{:#}", parse(watch, data).expect_err("layout accepted"));
        assert!(err.contains(what), "{err}");
        assert!(err.contains("--watch") && err.contains("--data-dir"), "{err}");
    }

    #[test]
    fn watch_equal_to_data_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let both = d.path().join("nms");
        fs::create_dir(&both).unwrap();
        refused(&both, &both, "same folder");
        // spelled differently: through a symlink
        std::os::unix::fs::symlink(&both, d.path().join("alias")).unwrap();
        refused(&d.path().join("alias"), &both, "same folder");
    }

    #[test]
    fn watch_inside_data_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let watch = data.join("campaigns").join("drop");
        fs::create_dir_all(&watch).unwrap();
        refused(&watch, &data, "inside the data directory");
    }

    #[test]
    fn data_dir_inside_watch_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let watch = d.path().join("drop");
        fs::create_dir(&watch).unwrap();
        // not created yet
        refused(
            &watch,
            &watch.join("state").join("nms"),
            "inside the watched folder",
        );
        // through a symlink from elsewhere
        std::os::unix::fs::symlink(&watch, d.path().join("alias")).unwrap();
        refused(
            &watch,
            &d.path().join("alias").join("nms2"),
            "inside the watched folder",
        );
    }

    #[test]
    fn sibling_folders_are_accepted() {
        let d = tempfile::tempdir().unwrap();
        let watch = d.path().join("drop");
        fs::create_dir(&watch).unwrap();
        for data in [
            d.path().join("data"),
            d.path().join("drop2"),
            d.path().join("drop.d"),
        ] {
            let opts = parse(&watch, &data).unwrap();
            assert_eq!(opts.data_dir, data);
            assert_eq!(opts.watch, watch);
        }
    }

    #[test]
    fn halt_after_takes_a_count_or_a_percentage() {
        let d = tempfile::tempdir().unwrap();
        let watch = d.path().join("drop");
        fs::create_dir(&watch).unwrap();
        let data = d.path().join("data");
        let with = |v: &str| {
            Cli::try_parse_from([
                "baton-nms".as_ref(),
                "--no-mdns".as_ref(),
                "--watch".as_ref(),
                watch.as_os_str(),
                "--data-dir".as_ref(),
                data.as_os_str(),
                "--halt-after".as_ref(),
                std::ffi::OsStr::new(v),
            ])
        };
        let opts = options(with("10%").unwrap()).unwrap();
        assert_eq!(opts.halt_after, Some(FailureThreshold::Percent(10)));
        let opts = options(with("3").unwrap()).unwrap();
        assert_eq!(opts.halt_after, Some(FailureThreshold::Count(3)));
        assert_eq!(options(parse_default(&watch, &data)).unwrap().halt_after, None);
        for bad in ["0", "150%", "some"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains("--halt-after") && err.contains("10%"), "{err}");
        }
    }

    fn parse_default(watch: &Path, data: &Path) -> Cli {
        Cli::try_parse_from([
            "baton-nms".as_ref(),
            "--no-mdns".as_ref(),
            "--watch".as_ref(),
            watch.as_os_str(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ])
        .unwrap()
    }
}
