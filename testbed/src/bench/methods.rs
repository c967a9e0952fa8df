//! The built-in baselines.
//!
//! Every method starts its clock when the receivers are told to go (the
//! server side — HTTP server, tracker and seeder, UFTP and udpcast
//! receivers waiting — is set up before), and stops a node's clock when the
//! tool says that node holds the package; every copy is then checked by
//! BLAKE3 hash ([`MethodResult::from_nodes`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::http::percent_encode;
use super::procs::{Helper, check_interrupted, missing_tools};
use super::{BenchCtx, Done, Method, MethodResult, NodeWatch, Procs};

/// Ports handed out to method runs, so that no run meets packets or
/// sockets left from an earlier one.
static NEXT_PORT: AtomicU16 = AtomicU16::new(20_000);

/// A fresh even port (udpcast needs an even base and uses base + 1 too).
fn next_port() -> u16 {
    let p = NEXT_PORT.fetch_add(2, Ordering::Relaxed);
    if p > 60_000 {
        NEXT_PORT.store(20_000, Ordering::Relaxed);
    }
    p
}

/// The built-in methods, in report order (`t1` first: it is the reference).
pub fn builtin_methods() -> Vec<Box<dyn Method>> {
    vec![
        Box::new(T1),
        Box::new(Naive),
        Box::new(Torrent),
        Box::new(Uftp { encrypted: false }),
        Box::new(Uftp { encrypted: true }),
        Box::new(Udpcast),
    ]
}

fn addr(ctx: &BenchCtx<'_>, host: usize) -> Ipv4Addr {
    ctx.net.host(host).addr
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Waits for a file to appear (a server's ready file), watching `proc`.
fn wait_for_file(procs: &mut Procs<'_>, path: &Path, proc: usize, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        check_interrupted()?;
        if path.exists() {
            return Ok(());
        }
        procs.sample();
        if !procs.running(proc) {
            bail!("{what} exited at start: {}", procs.tail(proc, 8));
        }
        if Instant::now() > deadline {
            bail!("{what} did not start within 15 s: {}", procs.tail(proc, 8));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------- HTTP

/// HTTP from host 0 to `nodes`, all at once.
fn http_run(ctx: &BenchCtx<'_>, name: &str, nodes: &[usize]) -> Result<MethodResult> {
    let helper = Helper::get()?;
    let mut procs = Procs::new(ctx.net);
    let port = next_port();
    let ready = ctx.workdir.join("http-serve.ready");
    let server_args = vec![
        "http-serve".to_owned(),
        "--file".into(),
        s(&ctx.package),
        "--bind".into(),
        addr(ctx, 0).to_string(),
        "--port".into(),
        port.to_string(),
        "--ready-file".into(),
        s(&ready),
    ];
    let server = procs.spawn_command("http-serve", helper.command(ctx.net, 0, &server_args))?;
    wait_for_file(&mut procs, &ready, server, "http-serve")?;

    let url = format!("http://{}:{port}/{}", addr(ctx, 0), ctx.package_name());
    let mut watches = Vec::new();
    let mut copies = Vec::new();
    let start = Instant::now();
    for &node in nodes {
        let out = ctx.node_dir(node)?.join(ctx.package_name());
        let args = vec![
            "http-fetch".to_owned(),
            "--url".into(),
            url.clone(),
            "--out".into(),
            s(&out),
            "--timeout".into(),
            ctx.timeout.as_secs().max(1).to_string(),
        ];
        let id = procs.spawn_command(
            &format!("http-fetch on node {node}"),
            helper.command(ctx.net, node, &args),
        )?;
        watches.push(NodeWatch {
            done: Done::Exit(id),
            proc: Some(id),
        });
        copies.push(out);
    }
    let times = procs.wait_nodes(&watches, &[server], start, ctx.timeout)?;
    procs.stop_all();
    Ok(MethodResult::from_nodes(ctx, name, times, &copies, &procs))
}

/// `t1`: one HTTP copy to node 1, the physical reference.
#[derive(Debug)]
pub struct T1;

impl Method for T1 {
    fn name(&self) -> &'static str {
        "t1"
    }
    fn describe(&self) -> &'static str {
        "one HTTP copy from host 0 to node 1: the physical reference T1"
    }
    fn missing_tool(&self) -> Option<String> {
        None
    }
    fn run(&self, ctx: &BenchCtx<'_>) -> Result<MethodResult> {
        // One node is the whole job: the result has nodes = 1.
        http_run(ctx, self.name(), &[1])
    }
}

/// `naive`: every node downloads from host 0 over HTTP at once.
#[derive(Debug)]
pub struct Naive;

impl Method for Naive {
    fn name(&self) -> &'static str {
        "naive"
    }
    fn describe(&self) -> &'static str {
        "naive fan-out: every node downloads from host 0 over HTTP at once"
    }
    fn missing_tool(&self) -> Option<String> {
        None
    }
    fn run(&self, ctx: &BenchCtx<'_>) -> Result<MethodResult> {
        let nodes: Vec<usize> = (1..=ctx.nodes).collect();
        http_run(ctx, self.name(), &nodes)
    }
}

// ---------------------------------------------------------- BitTorrent

/// `torrent`: mktorrent + opentracker on host 0 + aria2c everywhere.
#[derive(Debug)]
pub struct Torrent;

/// aria2c options shared by the seeder and the nodes: no DHT, no local
/// peer discovery, no IPv6 (only the tracker finds peers), peer exchange
/// on, seed forever (until the benchmark stops it), no config file.
const ARIA2_COMMON: &[&str] = &[
    "--no-conf=true",
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=true",
    "--disable-ipv6=true",
    "--seed-ratio=0.0",
    "--file-allocation=none",
    "--summary-interval=0",
    "--console-log-level=warn",
    "--download-result=hide",
    "--follow-torrent=mem",
    "--allow-overwrite=true",
    "--max-overall-upload-limit=0",
    "--max-overall-download-limit=0",
];

impl Method for Torrent {
    fn name(&self) -> &'static str {
        "torrent"
    }
    fn describe(&self) -> &'static str {
        "BitTorrent: opentracker and an aria2c seeder on host 0, aria2c on every node"
    }
    fn missing_tool(&self) -> Option<String> {
        missing_tools(&[
            ("aria2c", "aria2"),
            ("mktorrent", "mktorrent"),
            ("opentracker", "opentracker"),
        ])
    }
    fn run(&self, ctx: &BenchCtx<'_>) -> Result<MethodResult> {
        let helper = Helper::get()?;
        let name = ctx.package_name();
        let port = next_port();
        let tracker_url = format!("http://{}:{port}", addr(ctx, 0));

        // The torrent (256 KiB pieces up to 1 GiB, then 1 MiB).
        let torrent = ctx.workdir.join("package.torrent");
        let piece_log2 = if ctx.size <= 1 << 30 { "18" } else { "20" };
        run_local(
            "mktorrent",
            &[
                "-a",
                &format!("{tracker_url}/announce"),
                "-l",
                piece_log2,
                "-o",
                &s(&torrent),
                &s(&ctx.package),
            ],
        )?;
        let shown = run_local("aria2c", &["-S", &s(&torrent)])?;
        let info_hash = shown
            .lines()
            .find_map(|l| l.trim().strip_prefix("Info Hash:"))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| h.len() == 40 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .with_context(|| format!("no info hash in `aria2c -S`: {shown}"))?;

        // opentracker (Debian's build only tracks whitelisted hashes; it
        // chroots to -d, reads the whitelist there, and runs as nobody).
        let tracker_dir = ctx.workdir.join("tracker");
        std::fs::create_dir(&tracker_dir)?;
        std::fs::write(tracker_dir.join("whitelist"), format!("{info_hash}\n"))?;
        set_mode(&tracker_dir, 0o755)?;
        set_mode(&tracker_dir.join("whitelist"), 0o644)?;
        let mut procs = Procs::new(ctx.net);
        let tracker = procs.spawn(
            0,
            "opentracker",
            "opentracker",
            [
                "-i".to_owned(),
                addr(ctx, 0).to_string(),
                "-p".into(),
                port.to_string(),
                "-P".into(),
                port.to_string(),
                "-d".into(),
                s(&tracker_dir),
                "-w".into(),
                "whitelist".into(),
            ],
        )?;

        // The seeder, on a hard link of the package (aria2 may write next
        // to the file it seeds).
        let seed_dir = ctx.host_dir(0)?;
        let seed_file = seed_dir.join(&name);
        if std::fs::hard_link(&ctx.package, &seed_file).is_err() {
            std::fs::copy(&ctx.package, &seed_file)?;
        }
        let mut seed_args: Vec<String> = ARIA2_COMMON.iter().map(|a| (*a).to_owned()).collect();
        seed_args.extend([
            format!("--dir={}", s(&seed_dir)),
            "--check-integrity=true".into(),
            s(&torrent),
        ]);
        let seeder = procs.spawn(0, "aria2c seeder", "aria2c", seed_args)?;

        // Wait until the tracker knows the seeder (a node announcing before
        // it would get no peers and ask again only after the tracker's
        // 15-minute minimum interval).
        let hash_bytes: Vec<u8> = (0..20)
            .map(|i| u8::from_str_radix(&info_hash[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        let scrape_url = format!("{tracker_url}/scrape?info_hash={}", percent_encode(&hash_bytes));
        let scrape_out = ctx.workdir.join("scrape");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            check_interrupted()?;
            procs.sample();
            for (id, what) in [(tracker, "opentracker"), (seeder, "the aria2c seeder")] {
                if !procs.running(id) {
                    bail!("{what} exited at start: {}", procs.tail(id, 8));
                }
            }
            let args = vec![
                "http-fetch".to_owned(),
                "--url".into(),
                scrape_url.clone(),
                "--out".into(),
                s(&scrape_out),
                "--timeout".into(),
                "2".into(),
            ];
            let ok = helper
                .command(ctx.net, 0, &args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .stdin(std::process::Stdio::null())
                .status()
                .is_ok_and(|st| st.success());
            if ok {
                let body = std::fs::read(&scrape_out).unwrap_or_default();
                if seeders_in_scrape(&body) >= 1 {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the seeder did not show up at the tracker within 30 s: tracker: {}; seeder: {}",
                    procs.tail(tracker, 5),
                    procs.tail(seeder, 5)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }

        // The completion hook touches a marker next to the node's file.
        let hook = ctx.workdir.join("on-complete.sh");
        std::fs::write(&hook, "#!/bin/sh\n: > \"$3.complete\"\n")?;
        set_mode(&hook, 0o755)?;

        let start = Instant::now();
        let mut watches = Vec::new();
        let mut copies = Vec::new();
        for node in 1..=ctx.nodes {
            let dir = ctx.node_dir(node)?;
            let mut args: Vec<String> = ARIA2_COMMON.iter().map(|a| (*a).to_owned()).collect();
            args.extend([
                format!("--dir={}", s(&dir)),
                format!("--on-bt-download-complete={}", s(&hook)),
                s(&torrent),
            ]);
            let id = procs.spawn(node, &format!("aria2c on node {node}"), "aria2c", args)?;
            let file = dir.join(&name);
            watches.push(NodeWatch {
                done: Done::Marker(PathBuf::from(format!("{}.complete", s(&file)))),
                proc: Some(id),
            });
            copies.push(file);
        }
        let times = procs.wait_nodes(&watches, &[seeder], start, ctx.timeout)?;
        procs.stop_all();
        Ok(MethodResult::from_nodes(ctx, self.name(), times, &copies, &procs))
    }
}

/// The `complete` count of the first file in a bencoded scrape answer.
pub(crate) fn seeders_in_scrape(body: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(body);
    let Some(i) = text.find("8:completei") else {
        return 0;
    };
    let rest = &text[i + "8:completei".len()..];
    rest.split('e').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

// ---------------------------------------------------------------- UFTP

/// `uftp` / `uftp-enc`: UFTP multicast from host 0, `uftpd` on every node.
#[derive(Debug)]
pub struct Uftp {
    pub encrypted: bool,
}

/// UFTP's client id for a host: its IPv4 address as 0xAABBCCDD (what uftpd
/// picks by itself, set explicitly).
fn uftp_id(a: Ipv4Addr) -> String {
    format!("0x{:08X}", u32::from(a))
}

impl Method for Uftp {
    fn name(&self) -> &'static str {
        if self.encrypted { "uftp-enc" } else { "uftp" }
    }
    fn describe(&self) -> &'static str {
        if self.encrypted {
            "UFTP multicast, AES-256-GCM, ECDH key exchange, server and client keys pinned"
        } else {
            "UFTP multicast from host 0 at the link rate, closed group of the N nodes"
        }
    }
    fn missing_tool(&self) -> Option<String> {
        let mut tools = vec![("uftp", "uftp"), ("uftpd", "uftp")];
        if self.encrypted {
            tools.push(("uftp_keymgt", "uftp"));
        }
        missing_tools(&tools)
    }
    fn run(&self, ctx: &BenchCtx<'_>) -> Result<MethodResult> {
        let port = next_port();
        let server_id = uftp_id(addr(ctx, 0));
        let keys = ctx.workdir.join("keys");
        // Multicast groups: the announcement (public) and data (private)
        // addresses. Clients that pin servers (-S) accept only
        // source-specific groups (232/8).
        let (public, private) = if self.encrypted {
            ("232.4.4.1", "232.5.5.1")
        } else {
            ("230.4.4.1", "230.5.5.1")
        };
        let mut hosts_file = String::new();
        if self.encrypted {
            std::fs::create_dir(&keys)?;
            set_mode(&keys, 0o700)?;
            let fp = uftp_keygen(&keys.join("server.pem"))?;
            std::fs::write(
                keys.join("servers"),
                format!("{server_id}|{}|{fp}\n", addr(ctx, 0)),
            )?;
            for node in 1..=ctx.nodes {
                let fp = uftp_keygen(&keys.join(format!("node{node}.pem")))?;
                hosts_file.push_str(&format!("{}|{fp}\n", uftp_id(addr(ctx, node))));
            }
        } else {
            for node in 1..=ctx.nodes {
                hosts_file.push_str(&format!("{}\n", uftp_id(addr(ctx, node))));
            }
        }
        let hosts_path = ctx.workdir.join("hosts");
        std::fs::write(&hosts_path, hosts_file)?;

        let mut procs = Procs::new(ctx.net);
        let mut watches = Vec::new();
        let mut copies = Vec::new();
        let mut clients = Vec::new();
        for node in 1..=ctx.nodes {
            let dir = ctx.node_dir(node)?;
            let status = ctx.workdir.join(format!("uftpd{node}.status"));
            let mut args: Vec<String> = vec![
                "-d".into(),
                "-q".into(),
                "-x".into(),
                "1".into(),
                "-I".into(),
                "eth0".into(),
                "-U".into(),
                uftp_id(addr(ctx, node)),
                "-p".into(),
                port.to_string(),
                "-M".into(),
                public.into(),
                "-D".into(),
                s(&dir),
                "-F".into(),
                s(&status),
            ];
            if self.encrypted {
                args.extend([
                    "-E".into(),
                    "-k".into(),
                    s(&keys.join(format!("node{node}.pem"))),
                    "-S".into(),
                    s(&keys.join("servers")),
                ]);
            }
            let id = procs.spawn(node, &format!("uftpd on node {node}"), "uftpd", args)?;
            clients.push(id);
            watches.push(NodeWatch {
                done: Done::Contains(status, "RESULT;".into()),
                proc: Some(id),
            });
            copies.push(dir.join(ctx.package_name()));
        }
        // Every client must listen before the server announces.
        wait_udp_listening(ctx, &mut procs, &clients, port)?;

        let rate_kbps = (ctx.rate_bps / 1000).max(1);
        let mut args: Vec<String> = vec![
            "-x".into(),
            "1".into(),
            "-I".into(),
            "eth0".into(),
            "-U".into(),
            server_id,
            "-p".into(),
            port.to_string(),
            "-R".into(),
            rate_kbps.to_string(),
            "-M".into(),
            public.into(),
            "-P".into(),
            private.into(),
            "-H".into(),
            format!("@{}", s(&hosts_path)),
            "-S".into(),
            s(&ctx.workdir.join("uftp.status")),
        ];
        if self.encrypted {
            args.extend([
                "-Y".into(),
                "aes256-gcm".into(),
                "-h".into(),
                "sha256".into(),
                "-e".into(),
                "ecdh_ecdsa".into(),
                "-k".into(),
                s(&keys.join("server.pem")),
                "-c".into(),
            ]);
        }
        args.push(s(&ctx.package));
        let start = Instant::now();
        let server = procs.spawn(0, "uftp", "uftp", args)?;
        let times = procs.wait_nodes(&watches, &[server], start, ctx.timeout)?;
        // Let the server finish its session on its own (for its CPU time).
        procs.wait_exit(&[server], Duration::from_secs(5))?;
        procs.stop_all();
        Ok(MethodResult::from_nodes(ctx, self.name(), times, &copies, &procs))
    }
}

/// Generates an ECDSA P-256 key with `uftp_keymgt`; returns its fingerprint.
fn uftp_keygen(path: &Path) -> Result<String> {
    let out = run_local("uftp_keymgt", &["-g", "ec:prime256v1", &s(path)])?;
    set_mode(path, 0o600)?;
    out.split("fingerprint:")
        .nth(1)
        .map(|f| f.split_whitespace().next().unwrap_or_default().to_owned())
        .filter(|f| !f.is_empty())
        .with_context(|| format!("no fingerprint in uftp_keymgt's output: {out}"))
}

/// Waits until every process in `ids` (one per node, node = index + 1) has
/// a UDP socket on `port` (from the node's /proc/net/udp).
fn wait_udp_listening(ctx: &BenchCtx<'_>, procs: &mut Procs<'_>, ids: &[usize], port: u16) -> Result<()> {
    let needle = format!(":{port:04X} ");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut waiting: Vec<usize> = (1..=ids.len()).collect();
    while !waiting.is_empty() {
        check_interrupted()?;
        procs.sample();
        for (i, &id) in ids.iter().enumerate() {
            if !procs.running(id) {
                bail!("node {}: exited at start: {}", i + 1, procs.tail(id, 8));
            }
        }
        waiting.retain(|&node| {
            !ctx.net.exec(node, "cat", ["/proc/net/udp"]).is_ok_and(|t| {
                t.lines().skip(1).any(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .is_some_and(|local| format!("{local} ").contains(&needle))
                })
            })
        });
        if Instant::now() > deadline {
            bail!("nodes {waiting:?} did not open UDP port {port} within 15 s");
        }
        if !waiting.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

// ------------------------------------------------------------- udpcast

/// `udpcast`: `udp-sender` on host 0, `udp-receiver` on every node.
#[derive(Debug)]
pub struct Udpcast;

impl Method for Udpcast {
    fn name(&self) -> &'static str {
        "udpcast"
    }
    fn describe(&self) -> &'static str {
        "udpcast multicast: udp-sender on host 0 waits for the N receivers, capped at the link rate"
    }
    fn missing_tool(&self) -> Option<String> {
        missing_tools(&[("udp-sender", "udpcast"), ("udp-receiver", "udpcast")])
    }
    fn run(&self, ctx: &BenchCtx<'_>) -> Result<MethodResult> {
        let port = next_port();
        let start_timeout = ctx.timeout.as_secs().clamp(10, 3600).to_string();
        let mut procs = Procs::new(ctx.net);
        let mut watches = Vec::new();
        let mut copies = Vec::new();
        let mut receivers = Vec::new();
        for node in 1..=ctx.nodes {
            let file = ctx.node_dir(node)?.join(ctx.package_name());
            let id = procs.spawn(
                node,
                &format!("udp-receiver on node {node}"),
                "udp-receiver",
                [
                    "--nokbd".to_owned(),
                    "--interface".into(),
                    "eth0".into(),
                    "--portbase".into(),
                    port.to_string(),
                    "--start-timeout".into(),
                    start_timeout.clone(),
                    "--receive-timeout".into(),
                    "30".into(),
                    "--file".into(),
                    s(&file),
                ],
            )?;
            receivers.push(id);
            // udp-receiver writes sequentially: a full-length file holds
            // all the data (its exit comes ~0.5 s later, after its
            // --exit-wait guarding the final ACK).
            watches.push(NodeWatch {
                done: Done::Length(file.clone(), ctx.size),
                proc: Some(id),
            });
            copies.push(file);
        }
        wait_udp_listening(ctx, &mut procs, &receivers, port)?;
        let start = Instant::now();
        let sender = procs.spawn(
            0,
            "udp-sender",
            "udp-sender",
            [
                "--nokbd".to_owned(),
                "--interface".into(),
                "eth0".into(),
                "--portbase".into(),
                port.to_string(),
                "--min-receivers".into(),
                ctx.nodes.to_string(),
                "--max-bitrate".into(),
                ctx.rate_bps.to_string(),
                "--start-timeout".into(),
                start_timeout,
                "--file".into(),
                s(&ctx.package),
            ],
        )?;
        let times = procs.wait_nodes(&watches, &[sender], start, ctx.timeout)?;
        let mut all = receivers.clone();
        all.push(sender);
        procs.wait_exit(&all, Duration::from_secs(5))?;
        procs.stop_all();
        Ok(MethodResult::from_nodes(ctx, self.name(), times, &copies, &procs))
    }
}

// ------------------------------------------------------------- helpers

/// Runs a local tool (no network: mktorrent, aria2c -S, uftp_keymgt) to
/// completion; returns stdout and stderr together.
fn run_local(program: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            text.trim()
        );
    }
    Ok(text)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}
