//! The fault suite: the real daemons in network namespaces, one fault per scenario, and a
//! check that every campaign ends with the exact bytes on every survivor and a true report.
//!
//! `baton-testbed faults` (and `testbed/tests/faults.rs`, at a smaller size) runs, for each
//! scenario, a fresh fleet: the NMS on host 0 (`--json`, no `--once`: it keeps running, as
//! in production, so that a replaced file or a late node can start another campaign), nodes
//! on hosts 1..=n, one package dropped into the watched folder. The fault is injected when
//! the fleet holds half the package on average (the bytes in the nodes' partial files).
//! A scenario ends when every campaign the NMS started has its `summary.json` and every
//! survivor holds the exact dropped bytes, or, once every campaign reported, [`GRACE`]
//! later; a scenario that does not end within the time limit fails ("did not end within
//! N s"). The fleet is then stopped and removed (also on error), and the next one starts.
//!
//! The judgement (see [`judge`]): every survivor holds the exact bytes of the last drop;
//! the NMS reported every survivor installed; a node reported installed holds the exact
//! bytes; a killed node was reported (installed or failed), the full-disk node failed;
//! every campaign the NMS started ended with a report; the NMS still runs. The time is
//! from the drop to the end, as a multiple of a run without faults (`baseline`); the NMS's
//! copies are the bytes its host sent (all its traffic, from the drop to the end) over the
//! package size.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_protocol::Manifest;

use crate::bench::parse_size;
use crate::bench::procs::interrupted;
use crate::cluster::{Cluster, ProcIdx, dir_names, prepare_host, tail};
use crate::netns::NetSpec;

const PACKAGE: &str = "frob";
const FILE: &str = "frob-1.0.tar.gz";
/// Content seeds of the first and of the replacing drop.
const SEED: u64 = 9;
const SEED_REPLACED: u64 = 10;
/// Once every campaign reported, how long a follow-up campaign (for a late or lagging
/// node) may take to appear before the scenario is judged as it stands.
/// How long after the last survivor's install the dead must be reported (issue 9).
pub const DEAD_REPORTED_WITHIN: Duration = Duration::from_secs(30);

pub const GRACE: Duration = Duration::from_secs(10);
/// Loss on every link in the `loss` scenario.
const LOSS: &str = "5%";

/// One fault (or none: the baseline the times are compared with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Baseline,
    KillRelays,
    KillNms,
    RestartNode,
    Loss,
    FullDisk,
    CorruptRelay,
    LateJoin,
    ReplaceFile,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::Baseline,
        Scenario::KillRelays,
        Scenario::KillNms,
        Scenario::RestartNode,
        Scenario::Loss,
        Scenario::FullDisk,
        Scenario::CorruptRelay,
        Scenario::LateJoin,
        Scenario::ReplaceFile,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Baseline => "baseline",
            Scenario::KillRelays => "kill-relays",
            Scenario::KillNms => "kill-nms",
            Scenario::RestartNode => "restart-node",
            Scenario::Loss => "loss",
            Scenario::FullDisk => "full-disk",
            Scenario::CorruptRelay => "corrupt-relay",
            Scenario::LateJoin => "late-join",
            Scenario::ReplaceFile => "replace-file",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Scenario::Baseline => "no fault",
            Scenario::KillRelays => "kill -9 two relays at 50%",
            Scenario::KillNms => "kill -9 the NMS at 50%, restart it",
            Scenario::RestartNode => "kill -9 a relay at 50%, restart it",
            Scenario::Loss => "5% loss on every link",
            Scenario::FullDisk => "a relay's data dir is a tmpfs of half the package",
            Scenario::CorruptRelay => "a relay flips a bit in every chunk it serves",
            Scenario::LateJoin => "a node starts at 50%",
            Scenario::ReplaceFile => "the dropped file is replaced at 50%",
        }
    }

    pub fn parse(s: &str) -> Result<Scenario, String> {
        Scenario::ALL.into_iter().find(|x| x.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Scenario::ALL.iter().map(|x| x.name()).collect();
            format!("unknown scenario {s:?}; the scenarios are {}", names.join(", "))
        })
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `baton-testbed faults` options.
#[derive(clap::Args, Debug, Clone)]
pub struct FaultArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 8)]
    pub nodes: usize,
    /// Size of the package (e.g. 16MiB).
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub size: u64,
    /// Run only these scenarios (comma-separated; the baseline always runs).
    #[arg(long, value_delimiter = ',', value_parser = Scenario::parse)]
    pub only: Vec<Scenario>,
    /// Shape every host's link to this rate (tc syntax; "none" for unshaped).
    #[arg(long, default_value = "100mbit")]
    pub rate: String,
    /// Hard time limit of each scenario, in seconds from the drop.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Keep each scenario's raw logs, summaries and the table in this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What every scenario builds.
#[derive(Debug, Clone)]
pub struct FaultOptions {
    pub nodes: usize,
    pub size: u64,
    pub rate: Option<String>,
    /// Hard limit from the drop to the end.
    pub timeout: Duration,
    /// Where to copy each scenario's logs (a subdirectory per scenario).
    pub out: Option<PathBuf>,
}

/// How one scenario went.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: Scenario,
    /// Survivors holding the exact bytes, and how many survivors there are.
    pub exact: (usize, usize),
    /// Seconds from the drop to the end (None: it did not end).
    pub secs: Option<f64>,
    /// Bytes the NMS's host sent from the drop to the end, over the package size.
    pub nms_copies: Option<f64>,
    /// What the NMS reported, in short.
    pub reported: String,
    /// Seconds from the last survivor's install to the last dead node's report.
    pub dead_after: Option<f64>,
    /// Why the scenario failed (empty: it passed).
    pub failures: Vec<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// `baton-testbed faults`: runs the scenarios, prints the table, fails if any failed.
pub fn run(args: &FaultArgs) -> Result<()> {
    if args.nodes < 4 || args.nodes > 64 {
        bail!("--nodes must be between 4 and 64 (killing two relays needs a chain of 4)");
    }
    if args.size < 64 * 1024 {
        bail!("--size must be at least 64KiB, so that a fault can land mid-transfer");
    }
    prepare_host("the fault suite", "faults")?;
    let opts = FaultOptions {
        nodes: args.nodes,
        size: args.size,
        rate: (args.rate != "none").then(|| args.rate.clone()),
        timeout: Duration::from_secs(args.timeout),
        out: args.out.clone(),
    };
    if let Some(out) = &opts.out {
        fs::create_dir_all(out).with_context(|| format!("cannot create --out {}", out.display()))?;
    }
    let mut todo: Vec<Scenario> = if args.only.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.only.clone()
    };
    todo.push(Scenario::Baseline);
    todo.sort();
    todo.dedup();
    println!(
        "Fault suite: NMS + {} nodes, {:.1} MiB package, links {}, {} s per scenario",
        opts.nodes,
        opts.size as f64 / (1024.0 * 1024.0),
        opts.rate.as_deref().unwrap_or("unshaped"),
        args.timeout
    );
    let exe = std::env::current_exe()?;
    let mut outcomes = Vec::new();
    for s in todo {
        if interrupted() {
            bail!("interrupted");
        }
        println!("\n== {s}: {}", s.describe());
        let o = run_scenario(s, &opts, &exe);
        println!(
            "   {} — {}",
            if o.ok() { "ok" } else { "FAILED" },
            if o.ok() {
                o.reported.clone()
            } else {
                o.failures.join("; ")
            }
        );
        outcomes.push(o);
    }
    let table = render(&outcomes);
    println!("\n{table}");
    if let Some(out) = &opts.out {
        fs::write(out.join("table.txt"), &table)?;
        println!("raw logs in {}", out.display());
    }
    let failed = outcomes.iter().filter(|o| !o.ok()).count();
    if failed > 0 {
        bail!("{failed} of {} scenarios failed", outcomes.len());
    }
    Ok(())
}

/// The table: one row per scenario, then why each failed one failed.
pub fn render(outcomes: &[Outcome]) -> String {
    let base = outcomes
        .iter()
        .find(|o| o.scenario == Scenario::Baseline && o.ok())
        .and_then(|o| o.secs);
    let head = [
        "scenario",
        "exact bytes",
        "time",
        "NMS copies",
        "NMS reported",
        "ok",
    ];
    let rows: Vec<[String; 6]> = outcomes
        .iter()
        .map(|o| {
            [
                o.scenario.name().to_string(),
                format!("{}/{}", o.exact.0, o.exact.1),
                match (o.secs, base) {
                    (None, _) => "did not end".into(),
                    (Some(s), Some(b)) if b > 0.0 => format!("{:.2}x ({s:.1} s)", s / b),
                    (Some(s), _) => format!("{s:.1} s"),
                },
                o.nms_copies.map(|c| format!("{c:.2}")).unwrap_or("-".into()),
                o.reported.clone(),
                if o.ok() { "ok".into() } else { "FAIL".into() },
            ]
        })
        .collect();
    let mut w = head.map(|h| h.chars().count());
    for r in &rows {
        for k in 0..6 {
            w[k] = w[k].max(r[k].chars().count());
        }
    }
    let line = |c: [&str; 6]| {
        let cells: Vec<String> = (0..6)
            .map(|k| format!("{}{}", c[k], " ".repeat(w[k] - c[k].chars().count())))
            .collect();
        cells.join(" | ").trim_end().to_string() + "\n"
    };
    let mut out = line(head);
    out.push_str(&line(w.map(|n| "-".repeat(n)).each_ref().map(String::as_str)));
    for r in &rows {
        out.push_str(&line(r.each_ref().map(String::as_str)));
    }
    out.push_str(
        "\nexact bytes: survivors holding the last dropped bytes; time: drop to end, as a multiple of the baseline; \
         NMS copies: bytes the NMS host sent / package size\n",
    );
    for o in outcomes.iter().filter(|o| !o.ok()) {
        out.push_str(&format!("\n{} FAILED:\n", o.scenario));
        for f in &o.failures {
            out.push_str(&format!("  - {f}\n"));
        }
    }
    out
}

/// The role a node plays in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Must end with the exact bytes, reported installed.
    Survivor,
    /// Killed for good: must be reported (installed only if it holds the bytes).
    Dead,
    /// Its disk cannot hold the package: must be reported failed.
    FullDisk,
}

/// Runs one scenario on a fresh fleet; never leaves anything behind. An error while
/// building or driving the fleet is a failure of the scenario, not of the suite.
pub fn run_scenario(s: Scenario, o: &FaultOptions, exe: &Path) -> Outcome {
    let mut outcome = Outcome {
        scenario: s,
        exact: (0, o.nodes),
        secs: None,
        nms_copies: None,
        reported: "-".into(),
        dead_after: None,
        failures: Vec::new(),
    };
    if let Err(e) = Run::go(s, o, exe, &mut outcome) {
        outcome.failures.push(format!("{e:#}"));
    }
    outcome
}

/// A tmpfs mounted over a node's data directory; unmounted when dropped.
#[derive(Debug)]
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` over `dir`, keeping the files already there (the node's key).
    fn mount(dir: &Path, bytes: u64) -> Result<Tmpfs> {
        let saved: Vec<(PathBuf, Vec<u8>)> = dir_names(dir)
            .into_iter()
            .map(|n| dir.join(n))
            .filter(|p| p.is_file())
            .map(|p| fs::read(&p).map(|b| (p, b)))
            .collect::<Result<_, _>>()?;
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700"), "tmpfs"])
            .arg(dir)
            .status()
            .context("cannot run mount")?;
        if !st.success() {
            bail!("mounting a tmpfs on {} failed ({st})", dir.display());
        }
        let t = Tmpfs {
            dir: dir.to_path_buf(),
        };
        for (p, b) in saved {
            use std::os::unix::fs::PermissionsExt;
            fs::write(&p, b)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600))?;
        }
        Ok(t)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // lazy: the node may still hold files open; it is stopped right after
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// One scenario in progress.
struct Run<'a> {
    s: Scenario,
    o: &'a FaultOptions,
    c: Cluster,
    nms: ProcIdx,
    nms_args: Vec<String>,
    /// Node process per host (index 0 = host 1), None while not started.
    procs: Vec<Option<ProcIdx>>,
    roles: Vec<Role>,
    node_args: Vec<Vec<String>>,
    /// What the suite did, with unix times (saved as `events.txt`).
    events: Vec<String>,
}

impl<'a> Run<'a> {
    fn go(s: Scenario, o: &'a FaultOptions, exe: &Path, out: &mut Outcome) -> Result<()> {
        let n = o.nodes;
        let spec = NetSpec {
            hosts: n + 1,
            rate: o.rate.clone(),
            loss: (s == Scenario::Loss).then(|| LOSS.to_string()),
            ..NetSpec::default()
        };
        let c = Cluster::create(&spec, exe.to_path_buf())?;
        let mut r = Run {
            s,
            o,
            c,
            nms: 0,
            nms_args: Vec::new(),
            procs: vec![None; n],
            roles: vec![Role::Survivor; n],
            node_args: vec![Vec::new(); n],
            events: Vec::new(),
        };
        let res = r.drive(out);
        r.c.stop_all();
        if let Some(dir) = &o.out {
            r.save_logs(&dir.join(s.name()));
        }
        res
    }

    /// Victims by position in the chain: relays (never the last node).
    fn victims(&self) -> Vec<usize> {
        let chain = self.c.chain();
        let n = chain.len();
        match self.s {
            Scenario::KillRelays => vec![chain[n / 3], chain[(2 * n / 3).min(n - 2)]],
            Scenario::RestartNode | Scenario::FullDisk | Scenario::CorruptRelay => {
                vec![chain[n / 2]]
            }
            Scenario::LateJoin => vec![n],
            _ => Vec::new(),
        }
    }

    fn event(&mut self, what: String) {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.events.push(format!("{:.3} {what}", t.as_secs_f64()));
    }

    fn start_node(&mut self, i: usize) -> Result<()> {
        let args = self.node_args[i - 1].clone();
        let p = self.c.start_node(i, &args)?;
        self.procs[i - 1] = Some(p);
        let name = format!("node-{i}");
        let runs = self.c.log(&name).matches("listening on port").count();
        if !self.c.wait_until(Duration::from_secs(30), |c| {
            c.log(&name).matches("listening on port").count() > runs
        }) {
            bail!("node {i} did not come up:\n{}", tail(&self.c.log(&name), 10));
        }
        Ok(())
    }

    fn start_nms(&mut self) -> Result<()> {
        self.nms = self.c.start_nms(&self.nms_args, true, &[])?;
        Ok(())
    }

    /// Everything from the fleet's start to the judgement.
    fn drive(&mut self, out: &mut Outcome) -> Result<()> {
        let n = self.o.nodes;
        let size = self.o.size;
        let victims = self.victims();
        let mut _disk = None;
        for &v in &victims {
            self.c.node_ids.get(v - 1).context("victim out of range")?;
        }
        match self.s {
            Scenario::FullDisk => {
                let v = victims[0];
                _disk = Some(Tmpfs::mount(&self.c.node_dir(v), (size / 2).max(64 * 1024))?);
                self.roles[v - 1] = Role::FullDisk;
            }
            Scenario::CorruptRelay => {
                self.node_args[victims[0] - 1] = vec!["--test-corrupt-served".into()];
            }
            _ => {}
        }
        let late = (self.s == Scenario::LateJoin).then(|| victims[0]);
        for i in 1..=n {
            if Some(i) != late {
                self.start_node(i)?;
            }
        }
        let present = n - usize::from(late.is_some());
        self.nms_args = [
            "--json",
            "--min-nodes",
            &present.to_string(),
            "--settle",
            "0",
            "--discovery-timeout",
            "60",
        ]
        .map(String::from)
        .to_vec();
        self.start_nms()?;
        let needle = format!("\"known\":{present}");
        if !self
            .c
            .wait_until(Duration::from_secs(60), |c| c.log("nms").contains(&needle))
        {
            bail!(
                "the NMS did not discover the {present} nodes:\n{}",
                tail(&self.c.log("nms"), 10)
            );
        }
        let tx0 = self.c.net.tx_bytes(0)?;
        let mut expected = self.c.drop_package(FILE, size, SEED)?;
        let t0 = Instant::now();
        self.event(format!("dropped {FILE} ({size} bytes)"));
        let deadline = t0 + self.o.timeout;
        let mut injected = !matches!(
            self.s,
            Scenario::KillRelays
                | Scenario::KillNms
                | Scenario::RestartNode
                | Scenario::LateJoin
                | Scenario::ReplaceFile
        );
        let mut late_injection = None;
        let mut ended_at: Option<Instant> = None;
        let mut end: Option<Instant> = None;
        let mut last_check = t0;
        while Instant::now() < deadline {
            if interrupted() {
                bail!("interrupted");
            }
            std::thread::sleep(Duration::from_millis(10));
            if !injected {
                let present: Vec<usize> = (1..=n).filter(|&i| Some(i) != late).collect();
                let mean = present
                    .iter()
                    .map(|&i| self.c.progress(i, PACKAGE, size))
                    .sum::<f64>()
                    / present.len() as f64;
                if mean >= 0.5 {
                    injected = true;
                    if mean >= 0.95 {
                        late_injection = Some(mean);
                    }
                    self.event(format!(
                        "fleet at {:.0}%: injecting {}",
                        mean * 100.0,
                        self.s.describe()
                    ));
                    if let Some(e) = self.inject(&victims)? {
                        expected = e;
                    }
                }
                continue;
            }
            // the newest campaign reported: the end, once every survivor holds the bytes and
            // every campaign reported, or after GRACE (a follow-up campaign resets it)
            let campaigns = self.campaigns();
            let newest_reported = campaigns.len() >= self.expected_campaigns()
                && campaigns.last().is_some_and(|c| c.summary.is_some());
            if !newest_reported {
                ended_at = None;
                continue;
            }
            let since = *ended_at.get_or_insert_with(Instant::now);
            if last_check.elapsed() < Duration::from_millis(300) && since.elapsed() < GRACE {
                continue;
            }
            last_check = Instant::now();
            if campaigns.iter().all(|c| c.summary.is_some())
                && self
                    .survivors()
                    .all(|i| self.c.installed_hash(i, PACKAGE) == Some(expected))
            {
                end = Some(Instant::now());
                break;
            }
            if since.elapsed() >= GRACE {
                end = Some(since);
                break;
            }
        }
        self.event(match end {
            Some(_) => "ended".to_string(),
            None => "time limit reached".to_string(),
        });
        if let Ok(tx1) = self.c.net.tx_bytes(0) {
            out.nms_copies = Some(tx1.saturating_sub(tx0) as f64 / size.max(1) as f64);
        }
        out.secs = end.map(|e| e.duration_since(t0).as_secs_f64());
        if let Some(at) = late_injection {
            out.failures.push(format!(
                "the fault landed after the transfer (the fleet held {:.0}% of the package): \
                 use a larger --size or a lower --rate",
                at * 100.0
            ));
        }
        if !injected {
            out.failures.push(format!(
                "the fault was never injected: the fleet did not reach half the package within {} s",
                self.o.timeout.as_secs()
            ));
        }
        if end.is_none() && injected {
            out.failures.push(format!(
                "did not end within {} s{}",
                self.o.timeout.as_secs(),
                self.pending()
            ));
        }
        self.judge(expected, out);
        Ok(())
    }

    /// Injects the scenario's fault; returns the new expected content if it changed.
    fn inject(&mut self, victims: &[usize]) -> Result<Option<[u8; 32]>> {
        match self.s {
            Scenario::KillRelays => {
                for &v in victims {
                    if let Some(p) = self.procs[v - 1].take() {
                        self.c.kill(p);
                    }
                    self.roles[v - 1] = Role::Dead;
                }
            }
            Scenario::KillNms => {
                self.c.kill(self.nms);
                self.start_nms()?;
            }
            Scenario::RestartNode => {
                let v = victims[0];
                if let Some(p) = self.procs[v - 1].take() {
                    self.c.kill(p);
                }
                self.start_node(v)?;
            }
            Scenario::LateJoin => self.start_node(victims[0])?,
            Scenario::ReplaceFile => {
                return Ok(Some(self.c.drop_package(FILE, self.o.size, SEED_REPLACED)?));
            }
            _ => {}
        }
        Ok(None)
    }

    fn expected_campaigns(&self) -> usize {
        if self.s == Scenario::ReplaceFile { 2 } else { 1 }
    }

    fn survivors(&self) -> impl Iterator<Item = usize> + '_ {
        (1..=self.o.nodes).filter(|&i| self.roles[i - 1] == Role::Survivor)
    }

    /// Every campaign the NMS prepared: its manifest and summary, oldest first.
    fn campaigns(&self) -> Vec<CampaignFiles> {
        let root = self.c.nms_dir().join("campaigns");
        let mut v: Vec<CampaignFiles> = dir_names(&root)
            .into_iter()
            .filter_map(|d| {
                let body = fs::read(root.join(&d).join("manifest.cbor")).ok()?;
                let manifest: Manifest = ciborium::from_reader(&body[..]).ok()?;
                let summary = fs::read(root.join(&d).join("summary.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                Some(CampaignFiles { manifest, summary })
            })
            .collect();
        v.sort_by_key(|c| c.manifest.sequence);
        v
    }

    /// What is still missing, for "did not end".
    fn pending(&self) -> String {
        let cs = self.campaigns();
        let open: Vec<String> = cs
            .iter()
            .filter(|c| c.summary.is_none())
            .map(|c| format!("sequence {}", c.manifest.sequence))
            .collect();
        let mut s = format!(
            " ({} campaign(s) started, {} expected",
            cs.len(),
            self.expected_campaigns()
        );
        if !open.is_empty() {
            s.push_str(&format!("; without a report: {}", open.join(", ")));
        }
        s.push(')');
        s
    }

    /// Checks the end state against the truth; pushes every discrepancy.
    fn judge(&mut self, expected: [u8; 32], out: &mut Outcome) {
        let n = self.o.nodes;
        let survivors: Vec<usize> = self.survivors().collect();
        let mut exact = 0;
        for &i in &survivors {
            let held = self.c.installed_hash(i, PACKAGE);
            if held == Some(expected) {
                exact += 1;
            } else {
                out.failures.push(format!(
                    "node-{i} ({}) lacks the exact bytes: {}",
                    self.position(i),
                    match held {
                        None => "nothing installed".to_string(),
                        Some(_) => "it holds other bytes (an older drop?)".to_string(),
                    }
                ));
            }
            match self.procs[i - 1] {
                Some(p) if !self.c.running(p) => {
                    out.failures.push(format!("node-{i} exited on its own"));
                }
                _ => {}
            }
        }
        out.exact = (exact, survivors.len());
        if !self.c.running(self.nms) {
            out.failures
                .push(format!("the NMS exited:\n{}", tail(&self.c.log("nms"), 6)));
        }

        let cs = self.campaigns();
        for c in cs.iter().filter(|c| c.summary.is_none()) {
            out.failures.push(format!(
                "campaign {} (sequence {}) never ended with a report",
                hex::encode(&c.manifest.campaign[..4]),
                c.manifest.sequence
            ));
        }
        // statuses from the campaigns of the last drop's content
        let mut status: BTreeMap<usize, (String, String)> = BTreeMap::new();
        let mut settled_at: BTreeMap<usize, f64> = BTreeMap::new();
        let mut addressed = BTreeSet::new();
        let last: Vec<&CampaignFiles> = cs.iter().filter(|c| c.manifest.root == expected).collect();
        for c in &last {
            for a in &c.manifest.addressees {
                if let Some(k) = self.c.node_ids.iter().position(|x| x == a) {
                    addressed.insert(k + 1);
                }
            }
            let Some(sm) = &c.summary else { continue };
            let reasons: BTreeMap<String, String> = sm["failed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| Some((f["node"].as_str()?.to_string(), f["reason"].as_str()?.to_string())))
                .collect();
            for pn in sm["per_node"].as_array().into_iter().flatten() {
                let Some(id) = pn["node"].as_str() else { continue };
                let Some(k) = self.c.node_ids.iter().position(|x| x.to_string() == id) else {
                    continue;
                };
                let st = pn["status"].as_str().unwrap_or("?").to_string();
                if let Some(t) = pn["secs"].as_f64() {
                    settled_at.insert(k + 1, t);
                }
                let e = status.entry(k + 1).or_default();
                if e.0 != "installed" {
                    *e = (st, reasons.get(id).cloned().unwrap_or_default());
                }
            }
        }
        // the dead must be reported soon after the last survivor installed (issue 9's
        // target: within 30 s)
        let last_survivor = (1..=n)
            .filter(|i| self.roles[i - 1] == Role::Survivor)
            .filter_map(|i| settled_at.get(&i).copied())
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
        let last_dead = (1..=n)
            .filter(|i| self.roles[i - 1] == Role::Dead)
            .filter_map(|i| settled_at.get(&i).copied())
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
        if let (Some(s), Some(d)) = (last_survivor, last_dead) {
            out.dead_after = Some(d - s);
            if d - s > DEAD_REPORTED_WITHIN.as_secs_f64() {
                out.failures.push(format!(
                    "the dead were reported {:.1} s after the last survivor installed (at most {} s)",
                    d - s,
                    DEAD_REPORTED_WITHIN.as_secs()
                ));
            }
        }
        // without any report on the last bytes, the line per campaign above says it all
        let reported = last.iter().any(|c| c.summary.is_some());
        if last.is_empty() {
            out.failures
                .push("the NMS started no campaign for the last dropped bytes".into());
        }
        for i in (1..=n).filter(|_| reported) {
            let (st, why) = status.get(&i).cloned().unwrap_or_default();
            let holds = self.c.installed_hash(i, PACKAGE) == Some(expected);
            let role = self.roles[i - 1];
            let name = format!("node-{i} ({})", self.position(i));
            if st == "installed" && !holds {
                out.failures.push(format!(
                    "{name} was reported installed but does not hold the bytes"
                ));
            }
            match role {
                Role::Survivor if st != "installed" => {
                    out.failures.push(if st.is_empty() {
                        format!(
                            "{name}: the NMS reported nothing about it{}",
                            if addressed.contains(&i) {
                                ""
                            } else {
                                " (never an addressee)"
                            }
                        )
                    } else {
                        format!("{name}, alive, was reported {st}: {why}")
                    });
                }
                Role::Dead if !["installed", "failed", "unreachable"].contains(&st.as_str()) => {
                    out.failures.push(format!(
                        "{name} was never reported{}",
                        if st.is_empty() {
                            String::new()
                        } else {
                            format!(" (status {st})")
                        }
                    ));
                }
                Role::FullDisk if st != "failed" => {
                    out.failures.push(format!(
                        "{name} was reported {}, not failed",
                        if st.is_empty() { "nothing" } else { &st }
                    ));
                }
                _ => {}
            }
        }
        let installed = status.values().filter(|(s, _)| s == "installed").count();
        let failed: Vec<String> = status
            .iter()
            .filter(|(_, (s, _))| s != "installed")
            .map(|(i, (s, _))| format!("node-{i} {s}"))
            .collect();
        out.reported = if cs.iter().all(|c| c.summary.is_none()) {
            // no summary: what its live view (--json events) had said
            let log = self.c.log("nms");
            let count = |ev: &str| log.matches(&format!("{{\"event\":\"{ev}\"")).count();
            format!(
                "no summary (live: {} installed, {} failed)",
                count("node-installed"),
                count("node-failed")
            )
        } else {
            let mut r = format!("{installed}/{} installed", addressed.len());
            if !failed.is_empty() {
                r.push_str(&format!(" ({})", failed.join(", ")));
            }
            let done = cs.iter().filter(|c| c.summary.is_some()).count();
            if cs.len() > 1 {
                r.push_str(&format!("; {done}/{} campaigns reported", cs.len()));
            }
            if let Some(d) = out.dead_after {
                r.push_str(&format!("; dead reported {d:.1} s after the last survivor"));
            }
            r
        };
    }

    /// "relay 3/8" or "last of 8": where node `i` sits in the chain.
    fn position(&self, i: usize) -> String {
        let chain = self.c.chain();
        let k = chain.iter().position(|&h| h == i).unwrap_or(0);
        let role = match self.roles[i - 1] {
            Role::Survivor => "",
            Role::Dead => ", killed",
            Role::FullDisk => ", full disk",
        };
        if self.s == Scenario::LateJoin && i == self.o.nodes {
            return "joined late".into();
        }
        format!("chain {}/{}{role}", k + 1, chain.len())
    }

    /// Copies the logs, the NMS's manifests and summaries to `dir`.
    fn save_logs(&self, dir: &Path) {
        let _ = fs::remove_dir_all(dir);
        if fs::create_dir_all(dir).is_err() {
            return;
        }
        for name in dir_names(&self.c.dir) {
            if name.ends_with(".log") {
                let _ = fs::copy(self.c.dir.join(&name), dir.join(&name));
            }
        }
        let root = self.c.nms_dir().join("campaigns");
        for d in dir_names(&root) {
            let _ = fs::copy(
                root.join(&d).join("summary.json"),
                dir.join(format!("summary-{d}.json")),
            );
        }
        let ids: String = (1..=self.o.nodes)
            .map(|i| format!("node-{i} {} {}\n", self.c.node_ids[i - 1], self.position(i)))
            .collect();
        let _ = fs::write(dir.join("nodes.txt"), format!("nms {}\n{ids}", self.c.nms_id));
        let _ = fs::write(dir.join("events.txt"), self.events.join("\n") + "\n");
    }
}

struct CampaignFiles {
    manifest: Manifest,
    summary: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_parse_back_and_unknown_ones_are_refused_with_the_list() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.name()), Ok(s));
        }
        let e = Scenario::parse("kill-everything").unwrap_err();
        assert!(e.contains("kill-relays") && e.contains("replace-file"), "{e}");
    }

    #[test]
    fn the_table_shows_multiples_of_the_baseline_and_why_a_scenario_failed() {
        let row = |s, secs, failures: &[&str]| Outcome {
            scenario: s,
            exact: (8, 8),
            secs,
            nms_copies: Some(1.0),
            reported: "8/8 installed".into(),
            dead_after: None,
            failures: failures.iter().map(|f| f.to_string()).collect(),
        };
        let t = render(&[
            row(Scenario::Baseline, Some(4.0), &[]),
            row(Scenario::Loss, Some(6.0), &[]),
            row(Scenario::KillRelays, None, &["did not end within 120 s"]),
        ]);
        assert!(t.contains("1.50x (6.0 s)"), "{t}");
        assert!(t.contains("did not end "), "{t}");
        assert!(
            t.contains("kill-relays FAILED:\n  - did not end within 120 s"),
            "{t}"
        );
        assert!(!t.contains("loss FAILED"), "{t}");
    }
}
