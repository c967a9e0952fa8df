//! The `baton-nms` command line: flags and the process entry point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::campaign::CampaignSettings;
use crate::server::{NmsOptions, run};
use crate::ui::{LogWriter, Mode};
use crate::watch::check_folders;
use anyhow::{Result, bail};
use baton_protocol::endpoint::nms::FailureThreshold;
use baton_protocol::limits::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_FANOUT, MIN_CHUNK_SIZE};
use baton_protocol::manifest::{PlanParams, RelayPolicy, Transfer};
use baton_shell::discovery::{Interfaces, check_interfaces, host_interfaces};
use baton_shell::net::{NMS_PORT, parse_listen, tcp_addr};
use clap::Parser;

/// Watches a folder and distributes every package dropped into it to the nodes of the LAN.
/// Without a command it runs the NMS (--watch is then required); the commands act on the
/// NMS running with the same --data-dir.
#[derive(Parser, Debug)]
#[command(name = "baton-nms", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The folder operators drop packages into.
    #[arg(long)]
    watch: Option<PathBuf>,
    /// Data directory (identity key, sequence numbers, campaigns). Default:
    /// /var/lib/baton-nms as root, else ~/.local/share/baton-nms.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address and TCP port to listen on: IP:PORT, e.g. 0.0.0.0:4101 (every IPv4
    /// address) or [::]:4101 (every IPv6 and IPv4 address); a bare IP gets port 4101. Nodes connect to this port:
    /// let it through the firewall. Port 0 picks any free port.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:4101", value_parser = listen_arg)]
    listen: SocketAddr,
    /// Shorthand for --listen 0.0.0.0:PORT.
    #[arg(long, conflicts_with = "listen")]
    port: Option<u16>,
    /// Do not use mDNS; name nodes with --peer.
    #[arg(long)]
    no_mdns: bool,
    /// Restrict mDNS to these network interfaces (e.g. eth0). Repeatable. Default: all.
    /// A name this host does not have is refused.
    #[arg(long = "interface", value_name = "NAME")]
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
    /// Seconds a dropped file must stay unchanged, after its writer closed it, before it is
    /// taken in. Keep it above the pauses of whatever writes into the drop folder.
    #[arg(long, default_value_t = crate::watch::DEFAULT_SETTLE.as_secs_f64())]
    settle_file: f64,
    /// Move files taken in to this folder (on the same filesystem as --watch).
    #[arg(long, value_name = "DIR")]
    archive: Option<PathBuf>,
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
    /// The campaign's default relay policy, carried in the manifest: always, idle, ac,
    /// idle-or-ac, idle-and-ac, HH:MM-HH:MM (node's local time), or a word and a window
    /// (idle,22:00-06:00). A node owner's own --relay-policy wins.
    #[arg(long, value_name = "POLICY", value_parser = relay_arg)]
    relay_policy: Option<baton_protocol::gate::Policy>,
    /// Seconds a relay whose owner's policy gates it may hold its part of the addressee
    /// list (waiting for its gate to open) before it hands the part back to the NMS, which
    /// offers it itself.
    #[arg(long, value_name = "SECONDS", default_value_t = RelayPolicy::default().grace_secs,
          value_parser = clap::value_parser!(u32).range(0..=86_400))]
    relay_grace: u32,
    /// Print one JSON object per line on stdout for every event and campaign summary,
    /// instead of progress bars or log lines (fields: docs/operations.md).
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

/// The operator's commands to a running NMS (over the control socket in its data
/// directory; see docs/operations.md, "Operator commands").
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// The running NMS: identity, nodes, drops waiting, campaigns running.
    Status(OpArgs),
    /// The fleet inventory: every node seen, when and where, its tags, whether it trusts
    /// this NMS, and what it installed.
    Nodes(OpArgs),
    /// Every campaign, with its state and how many nodes installed.
    Campaigns(OpArgs),
    /// One campaign and each of its nodes.
    Show {
        /// The campaign id, or a unique prefix of it (as listed by `campaigns`).
        id: String,
        #[command(flatten)]
        op: OpArgs,
    },
    /// Stops a running campaign: no more offers or chunks; nodes not yet installed are
    /// reported "cancelled by the operator".
    Cancel {
        /// The campaign id, or a unique prefix of it.
        id: String,
        #[command(flatten)]
        op: OpArgs,
    },
    /// Runs a cancelled campaign again (if its manifest has not expired): its cancelled
    /// nodes are offered it again.
    Resume {
        /// The campaign id, or a unique prefix of it.
        id: String,
        #[command(flatten)]
        op: OpArgs,
    },
    /// Distributes an earlier version of a package again, from the copy the NMS kept, as a
    /// new campaign with a higher sequence number (nodes go back to it).
    Rollback {
        /// The package name (as listed by `campaigns`).
        package: String,
        /// The version to go back to. Default: the newest one older than the current one
        /// whose copy is kept (the NMS keeps the current and the previous version).
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        #[command(flatten)]
        op: OpArgs,
    },
    /// Distributes a new baton-node executable to the fleet (an agent campaign): checks
    /// that it is an ELF executable and drops it into the watched folder as
    /// `baton-node-VERSION`. Each node checks it runs on its platform, lets its children
    /// get it, tries it, and switches to it or rolls back (docs/operations.md).
    PublishAgent {
        /// The new baton-node executable.
        path: PathBuf,
        /// Its version, as nodes and the inventory show it. Default: this baton-nms's
        /// version.
        #[arg(long, value_name = "VERSION")]
        version: Option<String>,
        #[command(flatten)]
        op: OpArgs,
    },
}

/// What every operator command takes.
#[derive(clap::Args, Debug)]
pub struct OpArgs {
    /// The data directory of the NMS to talk to. Default: as baton-nms's own default.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the answer as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

impl Command {
    /// The request, the data directory and whether to print JSON.
    pub fn request(self) -> (crate::ops::Request, PathBuf, bool) {
        use crate::ops::Request;
        let (req, op) = match self {
            Command::Status(op) => (Request::Status, op),
            Command::Nodes(op) => (Request::Nodes, op),
            Command::Campaigns(op) => (Request::Campaigns, op),
            Command::Show { id, op } => (Request::Show { id }, op),
            Command::Cancel { id, op } => (Request::Cancel { id }, op),
            Command::Resume { id, op } => (Request::Resume { id }, op),
            Command::Rollback { package, to, op } => (Request::Rollback { package, to }, op),
            Command::PublishAgent { path, version, op } => (
                Request::PublishAgent {
                    // the NMS reads it: name it from the root, as this shell sees it
                    path: std::path::absolute(&path).unwrap_or(path).display().to_string(),
                    version: version.unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
                },
                op,
            ),
        };
        (req, op.data_dir.unwrap_or_else(default_data_dir), op.json)
    }
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

fn listen_arg(s: &str) -> Result<SocketAddr, String> {
    parse_listen(s, NMS_PORT)
}

pub fn options(cli: Cli) -> Result<NmsOptions> {
    let Some(watch) = cli.watch.clone() else {
        bail!(
            "--watch is required to run the NMS (the folder packages are dropped into); to act on a running NMS, give a command: status, nodes, campaigns, show, cancel, resume, rollback, publish-agent (see --help)"
        );
    };
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
    if watch.exists() && !watch.is_dir() {
        let parent = watch
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| ".".to_string(), |p| p.display().to_string());
        bail!(
            "--watch {} is a file, not a folder: --watch takes the folder packages are dropped into (e.g. --watch {parent}), and each file dropped there becomes a campaign",
            watch.display()
        );
    }
    if !cli.settle_file.is_finite() || !(0.05..=3600.0).contains(&cli.settle_file) {
        bail!(
            "--settle-file is seconds, between 0.05 and 3600 (default {})",
            crate::watch::DEFAULT_SETTLE.as_secs_f64()
        );
    }
    if !watch.is_dir() {
        bail!(
            "the watched folder {} does not exist or is not a folder: create it (mkdir -p) or pass another --watch",
            watch.display()
        );
    }
    let interfaces = if cli.interfaces.is_empty() {
        Interfaces::All
    } else {
        Interfaces::Only(cli.interfaces)
    };
    check_interfaces(&interfaces, &host_interfaces()?)?;
    let listen = match cli.port {
        Some(p) => SocketAddr::new([0, 0, 0, 0].into(), p),
        None => cli.listen,
    };
    let data_dir = cli.data_dir.unwrap_or_else(default_data_dir);
    // Nothing may ever be distributed from the data directory (it holds the private key).
    check_folders(&watch, &data_dir)?;
    if let Some(archive) = &cli.archive {
        if !archive.is_dir() {
            bail!(
                "--archive {} does not exist or is not a folder: create it (mkdir -p) on the same filesystem as --watch",
                archive.display()
            );
        }
        if archive.canonicalize().ok() == watch.canonicalize().ok() {
            bail!(
                "--archive must not be the watched folder itself: files moved there would be taken in again; pass another folder"
            );
        }
        check_folders(archive, &data_dir)
            .map_err(|e| anyhow::anyhow!("--archive {}: {e:#}", archive.display()))?;
    }
    Ok(NmsOptions {
        data_dir,
        listen: tcp_addr(listen.ip(), listen.port()),
        watch,
        mdns: !cli.no_mdns,
        interfaces,
        peers: cli.peers,
        min_nodes: cli.min_nodes,
        settle: Duration::from_secs_f64(cli.settle),
        discovery_timeout: Duration::from_secs_f64(cli.discovery_timeout),
        tags: cli.tags,
        settings: CampaignSettings {
            chunk_size: cli.chunk_size,
            plan: PlanParams {
                leaves: 0,
                fanout: cli.fanout,
                transfer: if cli.store_and_forward {
                    Transfer::StoreAndForward
                } else {
                    Transfer::CutThrough
                },
            },
            relay: cli
                .relay_policy
                .unwrap_or(baton_protocol::gate::Policy::ALWAYS)
                .to_manifest(cli.relay_grace),
            expiry_secs: cli.expiry_hours.max(1) * 3600,
            offline_install: cli.offline_install,
        },
        output: Mode::detect(cli.json),
        settle_file: Duration::from_secs_f64(cli.settle_file),
        archive: cli.archive,
        once: cli.once,
        halt_after: cli.halt_after,
    })
}

fn relay_arg(s: &str) -> Result<baton_protocol::gate::Policy, String> {
    s.parse()
        .map_err(|e: baton_protocol::gate::PolicyError| e.to_string())
}

/// Parses `args` (the program name first) and runs the NMS; with `--once`, exits the
/// process with status 1 if any node failed.
pub fn main_from<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    if let Some(cmd) = cli.command {
        let (req, data_dir, json) = cmd.request();
        return crate::ops::command(&data_dir, &req, json);
    }
    let opts = options(cli)?;
    // logs go to stderr between the live view's redraws
    baton_shell::init_tracing_with(|| LogWriter);
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
    fn the_relay_policy_goes_into_the_campaign_settings() {
        assert_eq!(with(&[]).1.unwrap().settings.relay, RelayPolicy::default());
        let r = with(&["--relay-policy", "idle,22:00-06:00"])
            .1
            .unwrap()
            .settings
            .relay;
        assert_eq!(
            (r.when, r.window),
            (baton_protocol::manifest::RelayWhen::Idle, Some((1320, 360)))
        );
        let e = format!("{:#}", with(&["--relay-policy", "nightly"]).1.unwrap_err());
        assert!(e.contains("unknown relay policy `nightly`"), "{e}");
    }

    /// Options from `--watch <tmp>/drop --data-dir <tmp>/data` and `extra`.
    fn with(extra: &[&str]) -> (tempfile::TempDir, Result<NmsOptions>) {
        let d = tempfile::tempdir().unwrap();
        let watch = d.path().join("drop");
        fs::create_dir(&watch).unwrap();
        let data = d.path().join("data");
        let mut args: Vec<std::ffi::OsString> = vec!["baton-nms".into(), "--watch".into(), watch.into()];
        args.extend(["--data-dir".into(), data.into_os_string()]);
        args.extend(extra.iter().map(|a| a.into()));
        let r = Cli::try_parse_from(args)
            .map_err(anyhow::Error::from)
            .and_then(options);
        (d, r)
    }

    fn listen(extra: &[&str]) -> String {
        with(extra).1.unwrap().listen.to_string()
    }

    #[test]
    fn the_listen_address_is_an_ip_and_a_fixed_default_port() {
        assert_eq!(listen(&[]), "/ip4/0.0.0.0/tcp/4101");
        assert_eq!(
            listen(&["--listen", "198.18.0.1:5000"]),
            "/ip4/198.18.0.1/tcp/5000"
        );
        assert_eq!(listen(&["--listen", "[::]:4101"]), "/ip6/::/tcp/4101");
        assert_eq!(listen(&["--listen", "10.0.0.1"]), "/ip4/10.0.0.1/tcp/4101");
        assert_eq!(listen(&["--listen", "0.0.0.0:0"]), "/ip4/0.0.0.0/tcp/0");
        // the older --port stays a shorthand
        assert_eq!(listen(&["--port", "4200"]), "/ip4/0.0.0.0/tcp/4200");
        let e = format!("{:#}", with(&["--listen", "eth0"]).1.unwrap_err());
        assert!(
            e.contains("not a listen address") && e.contains("0.0.0.0:4101"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            with(&["--port", "1", "--listen", "[::]:2"]).1.unwrap_err()
        );
        assert!(e.contains("cannot be used with"), "{e}");
    }

    #[test]
    fn an_unknown_interface_is_refused_with_those_that_exist() {
        let here = host_interfaces().unwrap();
        let e = format!("{:#}", with(&["--interface", "nosuch0"]).1.unwrap_err());
        assert!(e.contains("no network interface named \"nosuch0\""), "{e}");
        assert!(e.contains(&here.join(", ")), "{e}");
        let opts = with(&["--interface", &here[0]]).1.unwrap();
        assert!(matches!(opts.interfaces, Interfaces::Only(ref n) if *n == [here[0].clone()]));
    }

    #[test]
    fn a_watched_file_is_named_a_file() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("frob-1.0.tar.gz");
        fs::write(&file, b"x").unwrap();
        let e = format!("{:#}", parse(&file, &d.path().join("data")).unwrap_err());
        assert!(e.contains("is a file, not a folder"), "{e}");
        assert!(e.contains(&format!("--watch {}", d.path().display())), "{e}");
        // a missing folder is still told apart
        let e = format!(
            "{:#}",
            parse(&d.path().join("nope"), &d.path().join("data")).unwrap_err()
        );
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn json_selects_json_lines() {
        assert_eq!(with(&["--json"]).1.unwrap().output, Mode::Json);
        // tests do not run on a terminal: plain lines
        assert_ne!(with(&[]).1.unwrap().output, Mode::Json);
    }

    fn parse_with(watch: &Path, data: &Path, extra: &[&std::ffi::OsStr]) -> Result<NmsOptions> {
        let args = ["baton-nms", "--no-mdns", "--watch"];
        let cli = Cli::try_parse_from(
            args.iter()
                .map(std::ffi::OsStr::new)
                .chain([watch.as_os_str(), "--data-dir".as_ref(), data.as_os_str()])
                .chain(extra.iter().copied()),
        )?;
        options(cli)
    }

    #[test]
    fn archive_and_settle_file_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let (watch, data, archive) = (
            d.path().join("drop"),
            d.path().join("data"),
            d.path().join("archive"),
        );
        fs::create_dir(&watch).unwrap();
        let a = std::ffi::OsStr::new("--archive");
        let err = format!(
            "{:#}",
            parse_with(&watch, &data, &[a, archive.as_os_str()]).unwrap_err()
        );
        assert!(err.contains("does not exist or is not a folder"), "{err}");
        let err = format!(
            "{:#}",
            parse_with(&watch, &data, &[a, watch.as_os_str()]).unwrap_err()
        );
        assert!(err.contains("must not be the watched folder"), "{err}");
        fs::create_dir(&archive).unwrap();
        let opts = parse_with(&watch, &data, &[a, archive.as_os_str()]).unwrap();
        assert_eq!(opts.archive.as_deref(), Some(archive.as_path()));
        assert_eq!(opts.settle_file, crate::watch::DEFAULT_SETTLE);
        let s = std::ffi::OsStr::new("--settle-file");
        let err = format!("{:#}", parse_with(&watch, &data, &[s, "0".as_ref()]).unwrap_err());
        assert!(err.contains("--settle-file is seconds"), "{err}");
        let opts = parse_with(&watch, &data, &[s, "1.5".as_ref()]).unwrap();
        assert_eq!(opts.settle_file, Duration::from_millis(1500));
    }

    #[test]
    fn commands_parse_and_a_daemon_needs_watch() {
        let cli = Cli::try_parse_from([
            "baton-nms",
            "rollback",
            "frob",
            "--to",
            "1.0",
            "--data-dir",
            "/d",
            "--json",
        ])
        .unwrap();
        let (req, dir, json) = cli.command.unwrap().request();
        assert_eq!(
            req,
            crate::ops::Request::Rollback {
                package: "frob".into(),
                to: Some("1.0".into())
            }
        );
        assert_eq!((dir, json), (PathBuf::from("/d"), true));
        let cli = Cli::try_parse_from(["baton-nms", "show", "ab12"]).unwrap();
        assert_eq!(cli.command.unwrap().request().1, default_data_dir());
        // publish-agent: the path as the daemon must read it (absolute), the version
        let cli = Cli::try_parse_from(["baton-nms", "publish-agent", "bin/baton-node"]).unwrap();
        match cli.command.unwrap().request().0 {
            crate::ops::Request::PublishAgent { path, version } => {
                assert!(
                    path.starts_with('/') && path.ends_with("bin/baton-node"),
                    "{path}"
                );
                assert_eq!(version, env!("CARGO_PKG_VERSION"));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "baton-nms",
            "publish-agent",
            "/x/baton-node",
            "--version",
            "0.2.0",
        ])
        .unwrap();
        assert_eq!(
            cli.command.unwrap().request().0,
            crate::ops::Request::PublishAgent {
                path: "/x/baton-node".into(),
                version: "0.2.0".into()
            }
        );
        let e = format!(
            "{:#}",
            options(Cli::try_parse_from(["baton-nms"]).unwrap()).unwrap_err()
        );
        assert!(e.contains("--watch is required") && e.contains("status"), "{e}");
    }

    #[test]
    fn a_command_without_a_running_nms_says_so() {
        let d = tempfile::tempdir().unwrap();
        let e = main_from(["baton-nms", "status", "--data-dir", d.path().to_str().unwrap()]).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            format!(
                "is baton-nms running? (no socket at {})",
                d.path().join("control.sock").display()
            )
        );
    }

    #[test]
    fn halt_after_takes_a_count_or_a_percentage() {
        let halt = |v: &str| with(&["--halt-after", v]).1;
        assert_eq!(
            halt("10%").unwrap().halt_after,
            Some(FailureThreshold::Percent(10))
        );
        assert_eq!(halt("3").unwrap().halt_after, Some(FailureThreshold::Count(3)));
        assert_eq!(with(&[]).1.unwrap().halt_after, None);
        for bad in ["0", "150%", "some"] {
            let err = format!("{:#}", halt(bad).unwrap_err());
            assert!(err.contains("--halt-after") && err.contains("10%"), "{err}");
        }
    }
}
