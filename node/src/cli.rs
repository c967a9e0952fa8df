//! The `baton-node` command line: flags, config file, and the process entry point.

use std::path::PathBuf;
use std::time::Duration;

use crate::agent::{NodeOptions, run};
use crate::store::InstallCmd;
use anyhow::{Context, Result, bail};
use baton_protocol::{NodeConfig, NodeId};
use baton_shell::discovery::Interfaces;
use clap::{Parser, Subcommand};
use serde::Deserialize;

/// Receives, verifies, installs and relays packages distributed by a Baton NMS.
#[derive(Parser, Debug)]
#[command(name = "baton-node", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Data directory (identity key, package store). Default: /var/lib/baton-node as
    /// root, else ~/.local/share/baton-node.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// TOML config file with the same settings (`trust`, `trust_first`, `peers`, `tags`,
    /// `install_cmd`, `install_timeout_secs`, `interfaces`, `data_dir`, `port`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// TCP port to listen on (0 = any free port).
    #[arg(long)]
    port: Option<u16>,
    /// Trust campaigns signed by this NMS (its peer id). Repeatable.
    #[arg(long = "trust", value_name = "NMS_PEER_ID")]
    trust: Vec<NodeId>,
    /// Pin the first NMS heard (trust on first use). For home labs.
    #[arg(long)]
    trust_first: bool,
    /// A peer to reach without mDNS, e.g. /ip4/10.0.0.5/tcp/4100/p2p/12D3Koo... Repeatable.
    #[arg(long = "peer", value_name = "MULTIADDR")]
    peers: Vec<libp2p::Multiaddr>,
    /// A tag the NMS can select nodes by. Repeatable.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Do not use mDNS (use --peer).
    #[arg(long)]
    no_mdns: bool,
    /// Restrict mDNS to these interfaces. Repeatable. Default: all.
    #[arg(long = "interface")]
    interfaces: Vec<String>,
    /// Command run to install a package (through /bin/sh), with BATON_PACKAGE, BATON_NAME,
    /// BATON_VERSION, BATON_SEQUENCE, BATON_CAMPAIGN and BATON_ROOT_HASH set.
    #[arg(long)]
    install_cmd: Option<String>,
    /// Seconds the install command may run.
    #[arg(long)]
    install_timeout: Option<u64>,
    /// Exit after a campaign is installed and relayed.
    #[arg(long)]
    once: bool,
    /// Chunk requests in flight.
    #[arg(long, default_value_t = 3)]
    window: usize,
    /// Installed versions kept per package, the current one included (0 = keep all).
    /// After each install, older versions beyond this are removed.
    #[arg(long, default_value_t = 2, value_name = "N")]
    keep_versions: usize,
    /// Testing only: flip a bit in every chunk this node serves (a faulty relay).
    #[arg(long, hide = true)]
    test_corrupt_served: bool,
}

/// What to do instead of running the node.
#[derive(Subcommand, Debug)]
enum Command {
    /// Show or forget the NMS keys this node trusts.
    Trust {
        #[command(subcommand)]
        action: TrustAction,
    },
}

#[derive(Subcommand, Debug)]
enum TrustAction {
    /// List the NMS ids this node trusts: pinned by --trust-first, and from the config file.
    List,
    /// Forget an NMS pinned by --trust-first (the node then trusts it no more).
    Forget {
        /// The NMS peer id to forget.
        nms: NodeId,
    },
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    port: Option<u16>,
    #[serde(default)]
    trust: Vec<String>,
    #[serde(default)]
    trust_first: bool,
    #[serde(default)]
    peers: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    install_cmd: Option<String>,
    install_timeout_secs: Option<u64>,
    #[serde(default)]
    interfaces: Vec<String>,
}

fn default_data_dir() -> PathBuf {
    if std::env::var("USER").as_deref() == Ok("root") || std::env::var("HOME").as_deref() == Ok("/root") {
        PathBuf::from("/var/lib/baton-node")
    } else if let Some(home) = std::env::var_os("HOME") {
        PathBuf::from(home).join(".local/share/baton-node")
    } else {
        PathBuf::from("baton-node-data")
    }
}

/// The settings of a config file, parsed and checked: `trust` holds peer ids, `peers`
/// multiaddrs. Settings the file leaves out are empty or `None`.
#[derive(Debug, Default)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub port: Option<u16>,
    pub trust: Vec<NodeId>,
    pub trust_first: bool,
    pub peers: Vec<libp2p::Multiaddr>,
    pub tags: Vec<String>,
    pub install_cmd: Option<String>,
    pub install_timeout_secs: Option<u64>,
    pub interfaces: Vec<String>,
}

/// Parses the text of a config file (TOML) and checks its `trust` and `peers` entries.
pub fn parse_config(text: &str) -> Result<ConfigFile> {
    let file: FileConfig = toml::from_str(text)?;
    let mut trust = Vec::with_capacity(file.trust.len());
    for t in &file.trust {
        trust.push(
            t.parse::<NodeId>()
                .map_err(anyhow::Error::msg)
                .context("in config `trust`")?,
        );
    }
    let mut peers = Vec::with_capacity(file.peers.len());
    for p in &file.peers {
        peers.push(
            p.parse()
                .with_context(|| format!("config `peers`: `{p}` is not a multiaddr"))?,
        );
    }
    Ok(ConfigFile {
        data_dir: file.data_dir,
        port: file.port,
        trust,
        trust_first: file.trust_first,
        peers,
        tags: file.tags,
        install_cmd: file.install_cmd,
        install_timeout_secs: file.install_timeout_secs,
        interfaces: file.interfaces,
    })
}

/// Reads and checks the config file, if one is given.
fn read_config(path: Option<&std::path::Path>) -> Result<ConfigFile> {
    let Some(p) = path else {
        return Ok(ConfigFile::default());
    };
    let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config {}", p.display()))?;
    parse_config(&text).with_context(|| format!("config {} is not valid", p.display()))
}

pub fn options(cli: Cli) -> Result<NodeOptions> {
    let file = read_config(cli.config.as_deref())?;
    let mut trust = cli.trust;
    trust.extend(file.trust);
    let mut peers = cli.peers;
    peers.extend(file.peers);
    let mut tags = cli.tags;
    tags.extend(file.tags);
    let mut ifaces = cli.interfaces;
    ifaces.extend(file.interfaces);
    let port = cli.port.or(file.port).unwrap_or(0);
    if cli.window == 0 || cli.window > 256 {
        bail!("--window must be between 1 and 256");
    }
    let install = cli.install_cmd.or(file.install_cmd).map(|command| InstallCmd {
        command,
        timeout: Duration::from_secs(cli.install_timeout.or(file.install_timeout_secs).unwrap_or(600)),
    });
    Ok(NodeOptions {
        data_dir: cli.data_dir.or(file.data_dir).unwrap_or_else(default_data_dir),
        listen: format!("/ip4/0.0.0.0/tcp/{port}").parse()?,
        trust,
        trust_first: cli.trust_first || file.trust_first,
        peers,
        tags,
        mdns: !cli.no_mdns,
        interfaces: if ifaces.is_empty() {
            Interfaces::All
        } else {
            Interfaces::Only(ifaces)
        },
        install,
        once: cli.once,
        corrupt_served: cli.test_corrupt_served,
        protocol: NodeConfig {
            window: cli.window,
            ..NodeConfig::default()
        },
        keep_versions: cli.keep_versions,
    })
}

pub use baton_shell::init_tracing;

/// Parses `args` (the program name first) and runs the node to its end.
pub fn main_from<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    init_tracing();
    let mut cli = Cli::parse_from(args);
    if let Some(Command::Trust { action }) = cli.command.take() {
        return trust_command(&cli, action);
    }
    let opts = options(cli)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(opts))
}

/// `baton-node trust list|forget`: the owner's view of the trust pins.
fn trust_command(cli: &Cli, action: TrustAction) -> Result<()> {
    let file = read_config(cli.config.as_deref())?;
    let dir = cli
        .data_dir
        .clone()
        .or(file.data_dir.clone())
        .unwrap_or_else(default_data_dir);
    let pinned = crate::agent::read_pinned(&dir)?;
    match action {
        TrustAction::List => {
            let configured: Vec<&NodeId> = cli.trust.iter().chain(&file.trust).collect();
            if pinned.is_empty() && configured.is_empty() {
                println!("this node trusts no NMS (data directory {})", dir.display());
            }
            for p in &pinned {
                println!(
                    "{p}  pinned by --trust-first (in {})",
                    dir.join(crate::agent::PINNED_FILE).display()
                );
            }
            for c in configured {
                println!("{c}  from --trust or the config file");
            }
        }
        TrustAction::Forget { nms } => {
            if !pinned.contains(&nms) {
                let list = if pinned.is_empty() {
                    "none".to_string()
                } else {
                    pinned
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                bail!(
                    "{nms} is not pinned in {} (pinned: {list}); an NMS given with --trust or in the config file is removed there",
                    dir.display()
                );
            }
            let rest: Vec<NodeId> = pinned.into_iter().filter(|p| *p != nms).collect();
            crate::agent::write_pinned(&dir, &rest)?;
            println!("forgot {nms}: this node no longer trusts it");
            if baton_shell::identity::lock_data_dir(&dir, "baton-node").is_err() {
                println!(
                    "a baton-node is running on {}: restart it for this to take effect",
                    dir.display()
                );
            }
        }
    }
    Ok(())
}
