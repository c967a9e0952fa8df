//! `baton-testbed bench`: distributes one random package from host 0 (the
//! NMS / server) to N nodes in a private namespace network with shaped
//! links, once per method (Baton and the baselines: one copy to one node,
//! naive HTTP fan-out, BitTorrent, UFTP multicast plain and encrypted,
//! udpcast), checks every node's copy by BLAKE3 hash, and reports wall
//! time, per-node completion, how many copies the server sent, CPU and
//! memory, as a table, JSON and an SVG plot. See `docs/benchmarks.md`.
//!
//! Methods implement [`Method`]; [`run`] runs the built-in ones and any
//! `extra` ones (Baton) selected with `--methods`.

pub mod http;
mod methods;
pub mod procs;
mod report;
#[cfg(test)]
mod tests;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::{self, Net, NetSpec};

pub use http::{HttpFetchArgs, HttpServeArgs, helper_main, http_fetch, http_serve};
pub use methods::{T1, builtin_methods};
pub use procs::{
    Done, HELPER_EXE_ENV, NodeTimes, NodeWatch, ProcId, Procs, TempDir, check_interrupted, find_tool,
    interrupted, missing_tools,
};
pub use report::{Summary, render_json, render_markdown, render_svg, summarize};

/// Options of `baton-testbed bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Number of nodes (hosts 1..=N; host 0 is the NMS / server).
    #[arg(long, default_value_t = 8)]
    pub nodes: usize,
    /// Package size: bytes, or a number with a unit (500KiB, 64MiB, 1GiB,
    /// 10MB, 1.5GiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub size: u64,
    /// Link rate of every host, both directions, in tc syntax (100mbit,
    /// 1gbit, 10mbps = 10 megabytes/s).
    #[arg(long, default_value = "100mbit", value_parser = parse_rate_arg)]
    pub rate: String,
    /// A slower (or faster) link for node I (1..=N), e.g. `--slow 3:10mbit`;
    /// repeatable.
    #[arg(long = "slow", value_name = "I:RATE", value_parser = parse_slow)]
    pub slow: Vec<SlowNode>,
    /// Random packet loss on every host's egress, e.g. `0.5%`.
    #[arg(long)]
    pub loss: Option<String>,
    /// Delay on every host's egress, e.g. `10ms` (needs netem in the kernel).
    #[arg(long)]
    pub delay: Option<String>,
    /// Methods to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Runs of every method; the report shows medians.
    #[arg(long, default_value_t = 1, value_parser = parse_runs)]
    pub runs: usize,
    /// Directory for results.md, results.json and completion.svg (default:
    /// results/<UTC timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Keep running the other methods after one fails (default: stop at the
    /// first failure; the report still shows what ran).
    #[arg(long)]
    pub keep_going: bool,
    /// Give up on a method run after this many seconds (default: 60 s plus
    /// four times the time N+1 copies take at the link rate).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            nodes: 8,
            size: 64 << 20,
            rate: "100mbit".into(),
            slow: Vec::new(),
            loss: None,
            delay: None,
            methods: Vec::new(),
            runs: 1,
            out: None,
            json: false,
            keep_going: false,
            timeout: None,
        }
    }
}

/// `--slow I:RATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowNode {
    /// Node number, 1..=N (= host index).
    pub node: usize,
    /// Rate in tc syntax.
    pub rate: String,
}

/// The outcome of one method run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodResult {
    pub method: String,
    /// Start to the last node holding the verified package (None unless
    /// every node did).
    pub wall: Option<Duration>,
    /// Start to each node holding the package (None: it never did, or its
    /// copy did not verify).
    pub per_node: Vec<Option<Duration>>,
    /// Bytes host 0 sent during the run ([`run`] measures this).
    pub nms_tx_bytes: u64,
    /// Nodes whose copy matched the package's BLAKE3 hash.
    pub verified_nodes: usize,
    pub nodes: usize,
    /// CPU seconds of all processes the method started (server and nodes).
    pub cpu_secs: Option<f64>,
    /// Largest peak RSS (VmHWM) of any one of those processes, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Why the method did not run (e.g. the tool is missing, with the
    /// install command).
    pub skipped: Option<String>,
    /// What went wrong (a method run with an error still reports what it
    /// measured).
    pub error: Option<String>,
    /// Bytes each node served to the others (index 0 = node 1), as the NMS's
    /// campaign summary counts them (its per-node sources); empty when the
    /// method has no such figures (every method but Baton's).
    pub served_bytes: Vec<Option<u64>>,
    /// Nodes (numbered from 1) whose owners' policy gated relaying in the run.
    pub gated_nodes: Vec<usize>,
}

impl MethodResult {
    /// A result with nothing measured yet.
    pub fn new(method: &str, nodes: usize) -> Self {
        MethodResult {
            method: method.to_owned(),
            per_node: vec![None; nodes],
            nodes,
            ..MethodResult::default()
        }
    }

    /// Builds the result from per-node completion times (one per node the
    /// method served, normally all N): checks every node's copy (`copies[i]`
    /// is node i+1's file) by hash, takes CPU and memory from `procs`, and
    /// records the failures as the error.
    pub fn from_nodes(
        ctx: &BenchCtx<'_>,
        method: &str,
        times: NodeTimes,
        copies: &[PathBuf],
        procs: &Procs<'_>,
    ) -> Self {
        let n = times.times.len();
        let mut r = MethodResult::new(method, n);
        let mut failures = times.failures;
        for (i, t) in times.times.iter().enumerate() {
            let Some(t) = t else { continue };
            match copies.get(i) {
                Some(path) if verify_copy(ctx, path) => r.per_node[i] = Some(*t),
                Some(path) => failures.push(format!(
                    "node {}: {} does not match the package",
                    i + 1,
                    path.display()
                )),
                None => failures.push(format!("node {}: no copy", i + 1)),
            }
        }
        r.verified_nodes = r.per_node.iter().flatten().count();
        if r.verified_nodes == n && n > 0 {
            r.wall = r.per_node.iter().flatten().max().copied();
        } else if failures.is_empty() {
            failures.push(format!("{} of {n} nodes hold a verified copy", r.verified_nodes));
        }
        if !failures.is_empty() {
            let more = failures.len().saturating_sub(3);
            let mut msg = failures.into_iter().take(3).collect::<Vec<_>>().join("; ");
            if more > 0 {
                msg.push_str(&format!("; and {more} more"));
            }
            r.error = Some(msg);
        }
        r.cpu_secs = procs.cpu_secs();
        r.peak_rss_kib = procs.peak_rss_kib();
        r
    }
}

/// What a method gets to work with.
#[derive(Debug)]
pub struct BenchCtx<'a> {
    pub net: &'a Net,
    /// Number of nodes: hosts 1..=nodes (host 0 is the NMS / server).
    pub nodes: usize,
    /// The file to distribute; readable from every namespace (they share
    /// the filesystem). Do not modify it.
    pub package: PathBuf,
    pub size: u64,
    /// BLAKE3 of the package.
    pub root_hash: [u8; 32],
    /// A fresh empty directory for this method and run, removed afterwards;
    /// per-host subdirectories are up to the method (see [`BenchCtx::node_dir`]).
    pub workdir: PathBuf,
    /// The link rate (`--rate`) in bit/s.
    pub rate_bps: u64,
    /// How long a run may take before its nodes count as failed.
    pub timeout: Duration,
}

impl BenchCtx<'_> {
    /// The package's file name.
    pub fn package_name(&self) -> String {
        self.package
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "package".into())
    }

    /// `<workdir>/host<i>`, created (host 0 is the server; nodes are 1..=N).
    pub fn host_dir(&self, i: usize) -> Result<PathBuf> {
        let dir = self.workdir.join(format!("host{i}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    /// [`BenchCtx::host_dir`] of node `node` (1..=N).
    pub fn node_dir(&self, node: usize) -> Result<PathBuf> {
        self.host_dir(node)
    }

    /// The expected time of one copy at the link rate (the floor for T1).
    pub fn one_copy_time(&self) -> Duration {
        Duration::from_secs_f64(self.size as f64 * 8.0 / self.rate_bps.max(1) as f64)
    }
}

/// A way to distribute the package (a baseline or Baton).
pub trait Method {
    /// Short name used by `--methods` and in the reports.
    fn name(&self) -> &'static str;
    /// One line saying what it is.
    fn describe(&self) -> &'static str;
    /// Why it cannot run here, with the install command (e.g. "aria2c not
    /// found: apt-get install aria2"); None when it can.
    fn missing_tool(&self) -> Option<String>;
    /// Distributes `ctx.package` from host 0 to hosts 1..=N and reports.
    fn run(&self, ctx: &BenchCtx<'_>) -> Result<MethodResult>;
}

/// Whether the file at `path` is the package (size, then BLAKE3).
pub fn verify_copy(ctx: &BenchCtx<'_>, path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() == ctx.size => {}
        _ => return false,
    }
    hash_file(path).is_ok_and(|h| h == ctx.root_hash)
}

/// How many of `paths` hold the package (checked by BLAKE3).
pub fn verify_copies(ctx: &BenchCtx<'_>, paths: &[PathBuf]) -> usize {
    paths.iter().filter(|p| verify_copy(ctx, p)).count()
}

/// BLAKE3 of a file.
pub fn hash_file(path: &Path) -> Result<[u8; 32]> {
    baton_node::store::Store::hash_file(path).with_context(|| format!("cannot hash {}", path.display()))
}

/// Parses a size: bytes, or a number with B, KiB, MiB, GiB, TiB (powers of
/// 1024; K, M, G, T and KB, MB, GB, TB are powers of 1000), case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("size {s:?}: expected a number with a unit like 64MiB"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB or KB, MB, GB)"
            ));
        }
    };
    let bytes = (value * scale).round();
    if !bytes.is_finite() || !(1.0..=1e13).contains(&bytes) {
        return Err(format!("size {s:?} is out of range (1 byte to 10 TB)"));
    }
    Ok(bytes as u64)
}

fn parse_rate_arg(s: &str) -> Result<String, String> {
    netns::parse_rate(s).map_err(|e| format!("{e:#}"))?;
    Ok(s.trim().to_owned())
}

fn parse_runs(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(format!("--runs {s:?}: expected a number from 1 to 1000")),
    }
}

/// Parses `I:RATE` (`3:10mbit`).
pub fn parse_slow(s: &str) -> Result<SlowNode, String> {
    let (i, rate) = s
        .split_once(':')
        .ok_or_else(|| format!("--slow {s:?}: expected NODE:RATE, e.g. 3:10mbit"))?;
    let node: usize = i
        .trim()
        .parse()
        .map_err(|_| format!("--slow {s:?}: {i:?} is not a node number"))?;
    if node == 0 {
        return Err(format!(
            "--slow {s:?}: nodes are numbered from 1 (host 0 is the server; use --rate)"
        ));
    }
    let rate = parse_rate_arg(rate).map_err(|e| format!("--slow {s:?}: {e}"))?;
    Ok(SlowNode { node, rate })
}

/// Picks the methods named in `wanted` (all when empty), in the order of
/// `all`; an unknown name is an error listing the valid ones.
pub fn select_methods(all: Vec<Box<dyn Method>>, wanted: &[String]) -> Result<Vec<Box<dyn Method>>> {
    let wanted: Vec<String> = wanted
        .iter()
        .map(|w| w.trim().to_ascii_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    if wanted.is_empty() {
        return Ok(all);
    }
    let names: Vec<&str> = all.iter().map(|m| m.name()).collect();
    let unknown: Vec<&String> = wanted.iter().filter(|w| !names.contains(&w.as_str())).collect();
    if !unknown.is_empty() {
        bail!(
            "unknown method{} {}: valid are {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown
                .iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            names.join(", ")
        );
    }
    Ok(all
        .into_iter()
        .filter(|m| wanted.iter().any(|w| w == m.name()))
        .collect())
}

/// Median of the values (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Everything a report needs about the setup.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    pub nodes: usize,
    pub size: u64,
    pub rate: String,
    pub slow: Vec<SlowNode>,
    pub loss: Option<String>,
    pub delay: Option<String>,
    pub runs: usize,
    /// The command line, for the record.
    pub command: String,
    /// UTC start time, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started: String,
}

/// Runs the benchmark: builds the network, makes the package, runs every
/// selected method `--runs` times, writes the reports to `--out` and prints
/// the table (or JSON). Everything it made (namespaces, processes, temporary
/// files) is removed at the end, also on error or Ctrl-C. Returns an error
/// when not root, when a method failed, or when interrupted.
pub fn run(args: &BenchArgs, extra: Vec<Box<dyn Method>>) -> Result<()> {
    run_inner(args, extra, true).map(drop)
}

/// [`run`]; `clean_stale` says whether to remove other processes' leftovers
/// first (the unit tests must not: other tests of the same process are
/// checking `clean_stale` with stale namespaces of their own). Returns the
/// names of the namespaces it used.
pub(crate) fn run_inner(
    args: &BenchArgs,
    extra: Vec<Box<dyn Method>>,
    clean_stale: bool,
) -> Result<Vec<String>> {
    let mut all = builtin_methods();
    for m in extra {
        if all.iter().any(|b| b.name() == m.name()) {
            bail!("two methods are called {:?}", m.name());
        }
        all.push(m);
    }
    let methods = select_methods(all, &args.methods)?;
    if args.nodes == 0 || args.nodes + 1 > netns::MAX_HOSTS {
        bail!("--nodes must be 1..={}", netns::MAX_HOSTS - 1);
    }
    for s in &args.slow {
        if s.node > args.nodes {
            bail!(
                "--slow {}:{}: there are only {} nodes (1..={})",
                s.node,
                s.rate,
                args.nodes,
                args.nodes
            );
        }
    }
    netns::check_privileges().map_err(|why| anyhow::anyhow!("bench {why}"))?;
    procs::install_interrupt_handler("bench");
    if clean_stale {
        let removed = netns::clean_stale()?;
        if !removed.is_empty() {
            eprintln!("bench: removed stale namespaces {}", removed.join(", "));
        }
        procs::clean_stale_tempdirs();
    }

    let started = utc_now();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results").join(started.replace(':', "")));

    let rate_bps = netns::parse_rate(&args.rate)?;
    let mut spec = NetSpec::with_hosts(args.nodes + 1);
    spec.rate = Some(args.rate.clone());
    for s in &args.slow {
        spec.per_host_rate.insert(s.node, s.rate.clone());
    }
    spec.loss = args.loss.clone();
    spec.delay = args.delay.clone();
    let net = Net::create(&spec)?;
    let netns_names = net.netns_names().to_vec();
    let tmp = TempDir::new()?;
    check_interrupted()?;

    eprintln!(
        "bench: {} nodes, {} package, {} links; making the package",
        args.nodes,
        human_size(args.size),
        args.rate
    );
    let package_dir = tmp.path().join("package");
    std::fs::create_dir(&package_dir)?;
    let package = package_dir.join(format!("package-{}.bin", args.size));
    let root_hash = make_package(&package, args.size)?;

    let timeout = args.timeout.map(Duration::from_secs).unwrap_or_else(|| {
        let one = args.size as f64 * 8.0 / rate_bps as f64;
        Duration::from_secs_f64(60.0 + 4.0 * one * (args.nodes + 1) as f64)
    });
    let config = BenchConfig {
        nodes: args.nodes,
        size: args.size,
        rate: args.rate.clone(),
        slow: args.slow.clone(),
        loss: args.loss.clone(),
        delay: args.delay.clone(),
        runs: args.runs,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started,
    };

    let mut results: Vec<Vec<MethodResult>> = Vec::new();
    let mut failed = 0usize;
    'runs: for run_no in 0..args.runs {
        results.push(Vec::new());
        for m in &methods {
            if interrupted() {
                break 'runs;
            }
            if let Err(err) = net_intact(&net) {
                eprintln!("bench: {err:#}");
                failed += 1;
                break 'runs;
            }
            let workdir = tmp.path().join(format!("run{}-{}", run_no + 1, m.name()));
            let ctx = BenchCtx {
                net: &net,
                nodes: args.nodes,
                package: package.clone(),
                size: args.size,
                root_hash,
                workdir,
                rate_bps,
                timeout,
            };
            let r = run_method(&ctx, m.as_ref());
            eprintln!(
                "bench: run {}/{} {}",
                run_no + 1,
                args.runs,
                report::progress_line(&r, args.size)
            );
            let bad = r.error.is_some();
            if let Some(last) = results.last_mut() {
                last.push(r);
            }
            if bad {
                failed += 1;
                if !args.keep_going && !interrupted() {
                    eprintln!("bench: stopping at the first failure (--keep-going runs the rest)");
                    break 'runs;
                }
            }
        }
    }
    drop(net);
    drop(tmp);

    let descriptions: Vec<(String, String)> = methods
        .iter()
        .map(|m| (m.name().to_owned(), m.describe().to_owned()))
        .collect();
    let summary = summarize(&results, &descriptions, args.size);
    let md = render_markdown(&config, &summary);
    let json = render_json(&config, &summary, &results);
    let svg = render_svg(&config, &summary);
    {
        let mut stdout = std::io::stdout().lock();
        if args.json {
            writeln!(stdout, "{}", serde_json::to_string_pretty(&json)?)?;
        } else {
            writeln!(stdout, "{md}")?;
        }
    }
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;
    write_file(&out.join("results.md"), md.as_bytes())?;
    write_file(
        &out.join("results.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    write_file(&out.join("completion.svg"), svg.as_bytes())?;
    eprintln!("bench: reports in {}", out.display());
    if interrupted() {
        bail!(
            "interrupted; partial results in {} (everything was cleaned up)",
            out.display()
        );
    }
    if failed > 0 {
        bail!(
            "{failed} method run(s) failed; see {}",
            out.join("results.md").display()
        );
    }
    Ok(netns_names)
}

/// Fails when a namespace of `net` has disappeared (removed by another
/// process), so that the remaining methods are not run into the void.
fn net_intact(net: &Net) -> Result<()> {
    let ip = find_tool("ip").unwrap_or_else(|| PathBuf::from("ip"));
    let out = std::process::Command::new(ip)
        .args(["netns", "list"])
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run `ip netns list`")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let present: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let missing: Vec<&String> = net
        .netns_names()
        .iter()
        .filter(|n| !present.contains(&n.as_str()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the test network was removed from outside this process (missing {}); stopping",
            missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// Runs one method in a fresh workdir, measuring host 0's transmitted bytes;
/// a missing tool gives a skipped result, an error a result with the error.
fn run_method(ctx: &BenchCtx<'_>, m: &dyn Method) -> MethodResult {
    let name = m.name();
    if let Some(missing) = m.missing_tool() {
        let mut r = MethodResult::new(name, ctx.nodes);
        r.skipped = Some(missing);
        return r;
    }
    if let Err(err) = std::fs::create_dir_all(&ctx.workdir) {
        let mut r = MethodResult::new(name, ctx.nodes);
        r.error = Some(format!("cannot create {}: {err}", ctx.workdir.display()));
        return r;
    }
    let tx_before = ctx.net.tx_bytes(0);
    let started = Instant::now();
    let mut r = match m.run(ctx) {
        Ok(r) => r,
        Err(err) => {
            let mut r = MethodResult::new(name, ctx.nodes);
            r.error = Some(format!("{err:#}"));
            r
        }
    };
    tracing::debug!(method = name, elapsed = ?started.elapsed(), "bench: method done");
    r.method = name.to_owned();
    if r.nodes == 0 {
        r.nodes = ctx.nodes;
    }
    r.per_node.resize(r.nodes, None);
    match (tx_before, ctx.net.tx_bytes(0)) {
        (Ok(a), Ok(b)) => r.nms_tx_bytes = b.saturating_sub(a),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("bench: cannot read host 0's counters: {e:#}");
        }
    }
    if let Err(err) = std::fs::remove_dir_all(&ctx.workdir) {
        tracing::warn!("bench: cannot remove {}: {err}", ctx.workdir.display());
    }
    r
}

/// Writes `size` random bytes (a BLAKE3 XOF stream keyed from
/// /dev/urandom) to `path`; returns their BLAKE3 hash.
pub fn make_package(path: &Path, size: u64) -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("cannot read /dev/urandom")?;
    let mut xof = blake3::Hasher::new_keyed(&key).finalize_xof();
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        check_interrupted()?;
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.flush()?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all().ok();
    Ok(*hasher.finalize().as_bytes())
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))
}

/// `64 MiB`, `500 KiB`, `1.5 GiB`, `123 B`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{} {}", v.round(), UNITS[u])
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Formats seconds since 1970 as `YYYY-MM-DDTHH:MM:SSZ` (proleptic
/// Gregorian calendar, days counted in 400-year eras).
pub(crate) fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}
