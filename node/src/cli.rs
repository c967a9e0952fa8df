//! The `baton-node` command line: flags, config file, and the process entry point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::{NodeOptions, run};
use crate::store::InstallCmd;
use anyhow::{Context, Result, bail};
use baton_protocol::gate::{Policy, Thresholds, parse_rate};
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
    /// `install_cmd`, `install_timeout_secs`, `interfaces`, `data_dir`, `listen`, `port`,
    /// `relay_policy`, `relay_idle_percent`, `relay_min_battery`, `max_upload`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address and TCP port to listen on: IP:PORT, e.g. 0.0.0.0:4100 (every IPv4
    /// address) or [::]:4100 (every IPv6 and IPv4 address); a bare IP gets port 4100. Default 0.0.0.0:4100: the
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
    /// One-shot agent, for a machine without a Baton daemon: receive, install and relay
    /// one campaign, then exit (status 0 only if it installed). Its identity key, journal
    /// and partial downloads live in a temporary directory inside the data directory,
    /// removed at exit (also on failure, Ctrl-C, SIGTERM or SIGHUP): only `packages/` remains.
    #[arg(long)]
    once: bool,
    /// With --once: give up, with a non-zero status, if no campaign is over by then:
    /// seconds, or 90s, 30m, 2h.
    #[arg(long, value_name = "DURATION", requires = "once", value_parser = crate::once::parse_timeout, default_value = "1h")]
    once_timeout: Duration,
    /// With --once: keep the state in the data directory as a daemon does, so that the
    /// machine keeps its peer id (e.g. for a `baton-node` service started afterwards).
    #[arg(long, requires = "once")]
    keep_identity: bool,
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
    /// When this node relays for others: always, idle, ac, idle-or-ac, idle-and-ac, a
    /// local-time window HH:MM-HH:MM (may cross midnight), or a word and a window
    /// (idle,22:00-06:00). Wins over the campaign's default. A gated node still receives
    /// and installs its own copy.
    #[arg(long, value_name = "POLICY", value_parser = policy_arg)]
    relay_policy: Option<Policy>,
    /// `idle` means at least this percent of CPU time idle over 30 s.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
    relay_idle_percent: Option<u8>,
    /// On battery, relay only with at least this charge in percent, or `never`.
    #[arg(long, value_name = "PERCENT|never", value_parser = battery_arg)]
    relay_min_battery: Option<BatteryMin>,
    /// Cap on the upload rate of chunks served to others, e.g. 20mbit, 500kbit, 2MB.
    #[arg(long, value_name = "RATE", value_parser = rate_arg)]
    max_upload: Option<u64>,
    /// Testing only: read the activity probe's readings from this file (lines such as
    /// `cpu_idle = 0.9`, `ac = off`, `battery = 30`, `time = 23:10`, or `busy`/`idle`).
    #[arg(long, hide = true, value_name = "PATH")]
    test_probe_file: Option<PathBuf>,
}

/// `--relay-min-battery`: a percent, or never on battery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatteryMin(Option<f64>);

fn policy_arg(s: &str) -> Result<Policy, String> {
    s.parse()
        .map_err(|e: baton_protocol::gate::PolicyError| e.to_string())
}

fn battery_arg(s: &str) -> Result<BatteryMin, String> {
    if s.trim() == "never" {
        return Ok(BatteryMin(None));
    }
    match s.trim().trim_end_matches('%').parse::<u8>() {
        Ok(p) if p <= 100 => Ok(BatteryMin(Some(f64::from(p)))),
        _ => Err(format!("`{s}` is not a percent from 0 to 100 or `never`")),
    }
}

fn rate_arg(s: &str) -> Result<u64, String> {
    parse_rate(s)
}

/// What to do instead of running the node.
#[derive(Subcommand, Debug)]
enum Command {
    /// Ask the running node (same data directory) for its relay policy, the activity
    /// probe's readings, and whether it relays now and why.
    Status {
        /// Print the node's answer as JSON.
        #[arg(long)]
        json: bool,
    },
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
    relay_policy: Option<String>,
    relay_idle_percent: Option<u8>,
    relay_min_battery: Option<toml::Value>,
    max_upload: Option<String>,
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
    pub relay_policy: Option<Policy>,
    pub relay_idle_percent: Option<u8>,
    pub relay_min_battery: Option<BatteryMin>,
    pub max_upload: Option<u64>,
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
    let relay_policy = match &file.relay_policy {
        Some(p) => Some(
            policy_arg(p)
                .map_err(anyhow::Error::msg)
                .context("config `relay_policy`")?,
        ),
        None => None,
    };
    if let Some(p) = file.relay_idle_percent
        && !(1..=100).contains(&p)
    {
        bail!("config `relay_idle_percent` must be from 1 to 100, not {p}");
    }
    let relay_min_battery = match &file.relay_min_battery {
        Some(toml::Value::Integer(i)) => Some(
            battery_arg(&i.to_string())
                .map_err(anyhow::Error::msg)
                .context("config `relay_min_battery`")?,
        ),
        Some(toml::Value::String(s)) => Some(
            battery_arg(s)
                .map_err(anyhow::Error::msg)
                .context("config `relay_min_battery`")?,
        ),
        Some(other) => {
            bail!("config `relay_min_battery` must be a percent (e.g. 40) or \"never\", not {other}")
        }
        None => None,
    };
    let max_upload = match &file.max_upload {
        Some(r) => Some(
            rate_arg(r)
                .map_err(anyhow::Error::msg)
                .context("config `max_upload`")?,
        ),
        None => None,
    };
    Ok(ConfigFile {
        relay_policy,
        relay_idle_percent: file.relay_idle_percent,
        relay_min_battery,
        max_upload,
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
    let mut gate = Thresholds::default();
    if let Some(p) = cli.relay_idle_percent.or(file.relay_idle_percent) {
        gate.idle_min = f64::from(p) / 100.0;
    }
    if let Some(BatteryMin(b)) = cli.relay_min_battery.or(file.relay_min_battery) {
        gate.battery_min = b;
    }
    Ok(NodeOptions {
        relay_policy: cli.relay_policy.or(file.relay_policy),
        gate,
        max_upload: cli.max_upload.or(file.max_upload),
        test_probe_file: cli.test_probe_file,
        data_dir: cli.data_dir.or(file.data_dir).unwrap_or_else(default_data_dir),
        listen: tcp_addr(listen.ip(), listen.port()),
        trust,
        trust_first: cli.trust_first || file.trust_first,
        peers,
        tags,
        mdns: !cli.no_mdns,
        interfaces,
        install,
        once: cli.once.then_some(cli.once_timeout),
        install_dir: None,
        corrupt_served: cli.test_corrupt_served,
        protocol: NodeConfig {
            window: cli.window,
            ..NodeConfig::default()
        },
        keep_versions: cli.keep_versions,
        agent: None,
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
    match cli.command.take() {
        Some(Command::Trust { action }) => return trust_command(&cli, action),
        Some(Command::Status { json }) => return status_command(&cli, json),
        None => {}
    }
    let keep_identity = cli.keep_identity;
    let mut opts = options(cli)?;
    // with --once: the state directory (temporary unless --keep-identity), removed when
    // `dirs` is dropped, after the runtime (and the jobs it ran) ended
    let dirs = match opts.once {
        Some(_) => Some(crate::once::OnceDirs::new(&opts.data_dir, keep_identity)?),
        None => None,
    };
    if let Some(d) = &dirs {
        if d.temp.is_some() {
            tracing::info!(
                state = %d.state_dir.display(),
                "--once: temporary identity and state (removed at exit); packages install into {}",
                d.install_dir.join("packages").display()
            );
        }
        opts.data_dir = d.state_dir.clone();
        opts.install_dir = Some(d.install_dir.clone());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(run(opts));
    drop(runtime);
    drop(dirs);
    result
}

/// The `baton-node` executable's entry point: [`main_from`], as an agent that knows its own
/// executable (it advertises its build id and can replace itself, `upgrade.rs`). Started
/// with [`crate::upgrade::TRIAL_ENV`], it is a new agent on trial (`trial.rs`): it starts,
/// advertises its build id, connects to the NMS, says so and exits.
pub fn main_agent(args: Vec<std::ffi::OsString>) -> Result<()> {
    init_tracing();
    let mut cli = Cli::parse_from(args.clone());
    match cli.command.take() {
        Some(Command::Trust { action }) => return trust_command(&cli, action),
        Some(Command::Status { json }) => return status_command(&cli, json),
        None => {}
    }
    let me = crate::upgrade::AgentSelf::current(args)?;
    let mut opts = options(cli)?;
    if let Some(healthy) = std::env::var_os(crate::upgrade::TRIAL_ENV) {
        println!(
            "baton-node {} (build {}) on trial",
            env!("CARGO_PKG_VERSION"),
            me.build_hex()
        );
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(crate::trial::run(
                opts,
                std::sync::Arc::new(me),
                std::path::Path::new(&healthy),
            ));
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), build = %me.build_hex(), exe = %me.exe.display(), "agent");
    let mut me = me;
    me.probation = crate::upgrade::Probation::start(&opts.data_dir, &me);
    opts.agent = Some(std::sync::Arc::new(me));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(opts))
}

/// `baton-node status`: asks the running node over its control socket.
fn status_command(cli: &Cli, json: bool) -> Result<()> {
    let file = read_config(cli.config.as_deref())?;
    let dir = cli
        .data_dir
        .clone()
        .or(file.data_dir.clone())
        .unwrap_or_else(default_data_dir);
    let answer: serde_json::Value = baton_shell::control::call(
        &baton_shell::control::socket_path(&dir),
        "baton-node",
        &crate::agent::ControlRequest::Status,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", crate::status::render(&answer));
    }
    Ok(())
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
    fn relay_flags_and_config() {
        let o = with(&["--relay-policy", "idle,22:00-06:00", "--max-upload", "20mbit"]).unwrap();
        assert_eq!(o.relay_policy.unwrap().to_string(), "idle,22:00-06:00");
        assert_eq!(o.max_upload, Some(2_500_000));
        assert_eq!(o.gate, Thresholds::default());
        let o = with(&["--relay-idle-percent", "90", "--relay-min-battery", "never"]).unwrap();
        assert_eq!((o.gate.idle_min, o.gate.battery_min), (0.9, None));
        assert_eq!(o.relay_policy, None, "no local policy: the manifest decides");
        let e = format!("{:#}", with(&["--relay-policy", "sometimes"]).unwrap_err());
        assert!(e.contains("unknown relay policy `sometimes`"), "{e}");
        let e = format!("{:#}", with(&["--relay-policy", "22:00-22:00"]).unwrap_err());
        assert!(e.contains("use `always`"), "{e}");
        let e = format!("{:#}", with(&["--max-upload", "fast"]).unwrap_err());
        assert!(e.contains("20mbit"), "{e}");
        let e = format!("{:#}", with(&["--relay-min-battery", "140"]).unwrap_err());
        assert!(e.contains("percent from 0 to 100 or `never`"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("node.toml");
        std::fs::write(
            &conf,
            "relay_policy = \"ac\"\nrelay_min_battery = 60\nmax_upload = \"1MB\"\nrelay_idle_percent = 70\n",
        )
        .unwrap();
        let c = conf.to_str().unwrap();
        let o = with(&["--config", c]).unwrap();
        assert_eq!(o.relay_policy.unwrap().to_string(), "ac");
        assert_eq!((o.gate.battery_min, o.gate.idle_min), (Some(60.0), 0.7));
        assert_eq!(o.max_upload, Some(1024 * 1024));
        // the command line wins over the file
        let o = with(&["--config", c, "--relay-policy", "always"]).unwrap();
        assert_eq!(o.relay_policy.unwrap().to_string(), "always");
        std::fs::write(&conf, "relay_min_battery = \"never\"\n").unwrap();
        assert_eq!(with(&["--config", c]).unwrap().gate.battery_min, None);
        std::fs::write(&conf, "relay_policy = \"idle,25:00-01:00\"\n").unwrap();
        let e = format!("{:#}", with(&["--config", c]).unwrap_err());
        assert!(
            e.contains("config `relay_policy`") && e.contains("bad time `25:00`"),
            "{e}"
        );
    }

    #[test]
    fn once_takes_a_timeout_and_keep_identity_only_with_once() {
        assert_eq!(with(&[]).unwrap().once, None, "a daemon by default");
        assert_eq!(with(&["--once"]).unwrap().once, Some(Duration::from_secs(3600)));
        assert_eq!(
            with(&["--once", "--once-timeout", "30m"]).unwrap().once,
            Some(Duration::from_secs(1800))
        );
        assert!(with(&["--once", "--keep-identity"]).is_ok());
        for alone in [&["--once-timeout", "30m"][..], &["--keep-identity"][..]] {
            let e = format!("{:#}", with(alone).unwrap_err());
            assert!(e.contains("--once"), "{alone:?}: {e}");
        }
        let e = format!("{:#}", with(&["--once", "--once-timeout", "soon"]).unwrap_err());
        assert!(e.contains("not a duration"), "{e}");
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
