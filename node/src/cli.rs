//! The `baton-node` command line: flags, config file, and the process entry point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::{NodeOptions, run};
use crate::store::InstallCmd;
use anyhow::{Context, Result, bail};
use baton_protocol::{NodeConfig, NodeId};
use baton_shell::discovery::{Interfaces, check_interfaces, host_interfaces};
use baton_shell::net::{NODE_PORT, parse_listen, tcp_addr};
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
    /// `install_cmd`, `install_timeout_secs`, `interfaces`, `data_dir`, `listen`, `port`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address and TCP port to listen on: IP:PORT, e.g. 0.0.0.0:4100 (every IPv4
    /// address) or [::]:4100 (IPv6); a bare IP gets port 4100. Default 0.0.0.0:4100: the
    /// NMS and other nodes connect to this port, so let it through the firewall. Port 0
    /// picks any free port.
    #[arg(long, value_name = "IP:PORT", value_parser = listen_arg)]
    listen: Option<SocketAddr>,
    /// Shorthand for --listen 0.0.0.0:PORT.
    #[arg(long, conflicts_with = "listen")]
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
    /// Restrict mDNS to these network interfaces (e.g. eth0). Repeatable. Default: all.
    /// A name this host does not have is refused.
    #[arg(long = "interface", value_name = "NAME")]
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
    listen: Option<String>,
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
    /// `listen = "IP:PORT"`.
    pub listen: Option<SocketAddr>,
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
    let listen = match &file.listen {
        Some(l) => Some(
            parse_listen(l, NODE_PORT)
                .map_err(anyhow::Error::msg)
                .context("config `listen`")?,
        ),
        None => None,
    };
    if listen.is_some() && file.port.is_some() {
        bail!("config: give `listen` or `port`, not both (`port = P` is short for `listen = \"0.0.0.0:P\"`)");
    }
    Ok(ConfigFile {
        data_dir: file.data_dir,
        listen,
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

fn listen_arg(s: &str) -> Result<SocketAddr, String> {
    parse_listen(s, NODE_PORT)
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
    // the command line wins over the file; `port` is short for 0.0.0.0:port
    let any = |p: u16| SocketAddr::new([0, 0, 0, 0].into(), p);
    let listen = cli
        .listen
        .or(cli.port.map(any))
        .or(file.listen)
        .or(file.port.map(any))
        .unwrap_or(any(NODE_PORT));
    let interfaces = if ifaces.is_empty() {
        Interfaces::All
    } else {
        Interfaces::Only(ifaces)
    };
    check_interfaces(&interfaces, &host_interfaces()?)?;
    if cli.window == 0 || cli.window > 256 {
        bail!("--window must be between 1 and 256");
    }
    let install = cli.install_cmd.or(file.install_cmd).map(|command| InstallCmd {
        command,
        timeout: Duration::from_secs(cli.install_timeout.or(file.install_timeout_secs).unwrap_or(600)),
    });
    Ok(NodeOptions {
        data_dir: cli.data_dir.or(file.data_dir).unwrap_or_else(default_data_dir),
        listen: tcp_addr(listen.ip(), listen.port()),
        trust,
        trust_first: cli.trust_first || file.trust_first,
        peers,
        tags,
        mdns: !cli.no_mdns,
        interfaces,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with(args: &[&str]) -> Result<NodeOptions> {
        let d = tempfile::tempdir().unwrap();
        let mut all: Vec<std::ffi::OsString> =
            vec!["baton-node".into(), "--data-dir".into(), d.path().into()];
        all.extend(args.iter().map(|a| a.into()));
        options(Cli::try_parse_from(all)?)
    }

    fn listen(args: &[&str]) -> String {
        with(args).unwrap().listen.to_string()
    }

    #[test]
    fn the_listen_address_is_an_ip_and_a_fixed_default_port() {
        assert_eq!(listen(&[]), "/ip4/0.0.0.0/tcp/4100");
        assert_eq!(
            listen(&["--listen", "198.18.0.2:4200"]),
            "/ip4/198.18.0.2/tcp/4200"
        );
        assert_eq!(listen(&["--listen", "[::]:4100"]), "/ip6/::/tcp/4100");
        assert_eq!(listen(&["--listen", "192.0.2.1"]), "/ip4/192.0.2.1/tcp/4100");
        assert_eq!(listen(&["--port", "4300"]), "/ip4/0.0.0.0/tcp/4300");
        let e = format!("{:#}", with(&["--listen", ":4100"]).unwrap_err());
        assert!(
            e.contains("not a listen address") && e.contains("[::]:4100"),
            "{e}"
        );
        let e = format!("{:#}", with(&["--listen", "[::]:1", "--port", "2"]).unwrap_err());
        assert!(e.contains("cannot be used with"), "{e}");
    }

    #[test]
    fn the_config_file_takes_a_listen_address_and_the_command_line_wins() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("node.toml");
        std::fs::write(&conf, "listen = \"[::]:4500\"\n").unwrap();
        let c = conf.to_str().unwrap();
        assert_eq!(listen(&["--config", c]), "/ip6/::/tcp/4500");
        assert_eq!(
            listen(&["--config", c, "--port", "4600"]),
            "/ip4/0.0.0.0/tcp/4600"
        );
        std::fs::write(&conf, "port = 4700\n").unwrap();
        assert_eq!(listen(&["--config", c]), "/ip4/0.0.0.0/tcp/4700");
        std::fs::write(&conf, "listen = \"0.0.0.0:1\"\nport = 2\n").unwrap();
        let e = format!("{:#}", with(&["--config", c]).unwrap_err());
        assert!(e.contains("`listen` or `port`, not both"), "{e}");
        std::fs::write(&conf, "listen = \"eth0:4100\"\n").unwrap();
        let e = format!("{:#}", with(&["--config", c]).unwrap_err());
        assert!(
            e.contains("config `listen`") && e.contains("not a listen address"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_interface_is_refused_with_those_that_exist() {
        let here = host_interfaces().unwrap();
        let e = format!("{:#}", with(&["--interface", "nosuch0"]).unwrap_err());
        assert!(e.contains("no network interface named \"nosuch0\""), "{e}");
        assert!(e.contains(&here.join(", ")), "{e}");
        with(&["--interface", &here[0]]).unwrap();
    }
}
