//! A Baton fleet in namespaces: one NMS host and N node hosts on a [`Net`], each running
//! the real daemons (this binary re-executed as `baton-testbed nms ...` / `node ...`), with
//! their data directories under one work directory. Used by the demo and the integration
//! tests. Dropping a `Cluster` stops every process it started (by PID) and removes the
//! network and the work directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_protocol::NodeId;

use crate::netns::{Net, NetSpec};

/// The NMS arguments most runs use: JSON events, a campaign once `min_nodes` nodes are
/// known (1 s after the last discovery, or after 60 s), and with `once` an exit after it.
pub fn nms_args(min_nodes: usize, once: bool) -> Vec<String> {
    let mut args: Vec<String> = ["--json", "--min-nodes", &min_nodes.to_string()]
        .map(String::from)
        .to_vec();
    args.extend(["--settle", "1", "--discovery-timeout", "60"].map(String::from));
    if once {
        args.insert(0, "--once".into());
    }
    args
}

/// A process the cluster started.
#[derive(Debug)]
pub struct Proc {
    pub label: String,
    pub child: Child,
    pub log: Option<PathBuf>,
}

/// The fleet.
#[derive(Debug)]
pub struct Cluster {
    pub net: Net,
    pub dir: PathBuf,
    pub nms_id: NodeId,
    /// Node ids, index 0 = host 1.
    pub node_ids: Vec<NodeId>,
    exe: PathBuf,
    procs: Vec<Option<Proc>>,
    keep_dir: bool,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Index of a started process.
pub type ProcIdx = usize;

impl Cluster {
    /// Creates the network (host 0 = NMS, hosts 1..=nodes) and the identities.
    pub fn create(spec: &NetSpec, exe: PathBuf) -> Result<Cluster> {
        let dir = std::env::temp_dir().join(format!(
            "baton-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("watch"))?;
        fs::create_dir_all(dir.join("staging"))?;
        let ids = (|| -> Result<(NodeId, Vec<NodeId>)> {
            let nms = NodeId::of(&baton_shell::identity::load_or_create(&dir.join("nms"))?);
            let nodes = (1..spec.hosts)
                .map(|i| {
                    Ok(NodeId::of(&baton_shell::identity::load_or_create(
                        &dir.join(format!("node-{i}")),
                    )?))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((nms, nodes))
        })();
        let (nms_id, node_ids) = match ids {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let net = match Net::create(spec) {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(Cluster {
            net,
            dir,
            nms_id,
            node_ids,
            exe,
            procs: Vec::new(),
            keep_dir: false,
        })
    }

    /// Leave the work directory in place when dropped (for inspection).
    pub fn keep_dir(&mut self) {
        self.keep_dir = true;
    }

    pub fn watch_dir(&self) -> PathBuf {
        self.dir.join("watch")
    }
    pub fn nms_dir(&self) -> PathBuf {
        self.dir.join("nms")
    }
    /// Data directory of node `i` (1-based, = its host index).
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{i}"))
    }
    pub fn nodes(&self) -> usize {
        self.node_ids.len()
    }

    fn spawn(
        &mut self,
        host: usize,
        label: String,
        args: Vec<String>,
        log: Option<PathBuf>,
        env: &[(&str, &str)],
    ) -> Result<ProcIdx> {
        let exe = self.exe.clone();
        self.spawn_exe(host, &exe, label, args, log, env)
    }

    fn spawn_exe(
        &mut self,
        host: usize,
        exe: &Path,
        label: String,
        args: Vec<String>,
        log: Option<PathBuf>,
        env: &[(&str, &str)],
    ) -> Result<ProcIdx> {
        let mut cmd: Command = self.net.command(host, exe);
        cmd.args(&args).stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(log) = &log {
            // appended: a restarted daemon keeps the log of its earlier run
            let f = fs::OpenOptions::new().create(true).append(true).open(log)?;
            cmd.stdout(f.try_clone()?).stderr(f);
        }
        let child = cmd.spawn().with_context(|| format!("cannot start {label}"))?;
        self.procs.push(Some(Proc { label, child, log }));
        Ok(self.procs.len() - 1)
    }

    /// Starts the NMS on host 0 (`--watch` and `--data-dir` are set). With `log = false`
    /// its output goes to this process's terminal.
    pub fn start_nms(&mut self, extra: &[String], log: bool, env: &[(&str, &str)]) -> Result<ProcIdx> {
        let mut args = vec![
            "nms".to_string(),
            "--watch".into(),
            self.watch_dir().display().to_string(),
            "--data-dir".into(),
            self.nms_dir().display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        let log = log.then(|| self.dir.join("nms.log"));
        self.spawn(0, "baton-nms".into(), args, log, env)
    }

    /// Starts node `i` (1-based) trusting the cluster's NMS, logging to `node-i.log`.
    pub fn start_node(&mut self, i: usize, extra: &[String]) -> Result<ProcIdx> {
        self.start_node_env(i, extra, &[])
    }

    /// [`Cluster::start_node`] with extra environment variables (e.g. `RUST_LOG`).
    pub fn start_node_env(&mut self, i: usize, extra: &[String], env: &[(&str, &str)]) -> Result<ProcIdx> {
        let mut args = vec![
            "node".to_string(),
            "--data-dir".into(),
            self.node_dir(i).display().to_string(),
            "--trust".into(),
            self.nms_id.to_string(),
        ];
        args.extend(extra.iter().cloned());
        let log = self.dir.join(format!("node-{i}.log"));
        self.spawn(i, format!("baton-node {i}"), args, Some(log), env)
    }

    /// Starts node `i` from its own `baton-node` executable `exe` (not this binary: an
    /// agent that can replace itself, `--data-dir` and `--trust` set), logging to
    /// `node-i.log`.
    pub fn start_agent(
        &mut self,
        i: usize,
        exe: &Path,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> Result<ProcIdx> {
        let mut args = vec![
            "--data-dir".to_string(),
            self.node_dir(i).display().to_string(),
            "--trust".into(),
            self.nms_id.to_string(),
        ];
        args.extend(extra.iter().cloned());
        let log = self.dir.join(format!("node-{i}.log"));
        self.spawn_exe(i, exe, format!("baton-node {i}"), args, Some(log), env)
    }

    /// Runs an operator command of the cluster's NMS (`baton-nms <args> --data-dir <dir>
    /// --json`) and returns its JSON answer.
    pub fn nms_command(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.nms_output(args, &["--json"])?;
        serde_json::from_slice(&out).context("baton-nms did not answer JSON")
    }

    /// Runs an operator command of the cluster's NMS (`baton-nms <args> --data-dir <dir>`)
    /// and returns what it prints (a table).
    pub fn nms_command_text(&self, args: &[&str]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.nms_output(args, &[])?).into_owned())
    }

    /// What `baton-nms <args> --data-dir <dir> <more>` printed; an error with its stderr
    /// if it failed.
    fn nms_output(&self, args: &[&str], more: &[&str]) -> Result<Vec<u8>> {
        let out = Command::new(&self.exe)
            .arg("nms")
            .args(args)
            .args(["--data-dir", &self.nms_dir().display().to_string()])
            .args(more)
            .stdin(Stdio::null())
            .output()
            .context("cannot run baton-nms")?;
        if !out.status.success() {
            bail!(
                "baton-nms {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    }

    /// Starts node `i` with exactly these arguments after `node --data-dir <dir>`.
    pub fn start_node_raw(&mut self, i: usize, extra: &[String]) -> Result<ProcIdx> {
        let mut args = vec![
            "node".to_string(),
            "--data-dir".into(),
            self.node_dir(i).display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        let log = self.dir.join(format!("node-{i}.log"));
        self.spawn(i, format!("baton-node {i}"), args, Some(log), &[])
    }

    /// Starts this binary on `host` with `args` (a helper such as the attack suite's rogue),
    /// logging to `<log>.log` in the work directory.
    pub fn start_helper(&mut self, host: usize, label: &str, args: &[String], log: &str) -> Result<ProcIdx> {
        let log = self.dir.join(format!("{log}.log"));
        self.spawn(host, label.to_string(), args.to_vec(), Some(log), &[])
    }

    /// The OS process id of a started process that was not stopped or killed.
    pub fn pid(&self, p: ProcIdx) -> Option<u32> {
        self.procs.get(p)?.as_ref().map(|x| x.child.id())
    }

    /// True while a started process is running.
    pub fn running(&mut self, p: ProcIdx) -> bool {
        self.procs
            .get_mut(p)
            .and_then(|x| x.as_mut())
            .is_some_and(|x| matches!(x.child.try_wait(), Ok(None)))
    }

    /// The text logged so far by node `i` (or "nms").
    pub fn log(&self, who: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{who}.log"))).unwrap_or_default()
    }

    /// Waits for a process to exit, up to `timeout`; `stop` is polled to give up early.
    pub fn wait(
        &mut self,
        p: ProcIdx,
        timeout: Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if stop() {
                bail!("interrupted");
            }
            let Some(proc_) = self.procs[p].as_mut() else {
                return Ok(None);
            };
            if let Some(st) = proc_.child.try_wait()? {
                return Ok(Some(st));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(None)
    }

    /// For tests: waits up to `timeout` for the NMS `nms` (run with `--once`) to end
    /// successfully and checks that every node in `nodes` installed `package` with exactly
    /// the bytes hashed `hash`, panicking with the logs otherwise; returns the summary of
    /// the first campaign.
    pub fn assert_installed(
        &mut self,
        nms: ProcIdx,
        timeout: Duration,
        nodes: impl IntoIterator<Item = usize>,
        package: &str,
        hash: [u8; 32],
    ) -> serde_json::Value {
        let st = self.wait(nms, timeout, &|| false).expect("waiting for the NMS");
        assert!(
            st.is_some_and(|s| s.success()),
            "NMS: {st:?}\n{}",
            self.log("nms")
        );
        for i in nodes {
            assert_eq!(
                self.installed_hash(i, package),
                Some(hash),
                "node {i} did not install the exact bytes:\n{}",
                self.log(&format!("node-{i}"))
            );
        }
        self.summaries()
            .into_iter()
            .next()
            .expect("the NMS wrote a campaign summary")
    }

    /// Waits until `cond` holds, up to `timeout`.
    pub fn wait_until(&self, timeout: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        cond(self)
    }

    /// Stops a process: SIGTERM, then SIGKILL after 3 s.
    pub fn stop(&mut self, p: ProcIdx) {
        if let Some(mut proc_) = self.procs[p].take() {
            stop_child(&mut proc_.child);
        }
    }

    /// Kills a process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self, p: ProcIdx) {
        if let Some(mut proc_) = self.procs[p].take() {
            let _ = proc_.child.kill();
            let _ = proc_.child.wait();
        }
    }

    /// Writes a package of `size` pseudo-random bytes (from `seed`) in a staging folder and
    /// renames it into the watched folder. Returns its BLAKE3 hash.
    pub fn drop_package(&self, file_name: &str, size: u64, seed: u64) -> Result<[u8; 32]> {
        let staged = self.dir.join("staging").join(file_name);
        let hash = write_pseudo_random(&staged, size, seed)?;
        fs::rename(&staged, self.watch_dir().join(file_name))?;
        Ok(hash)
    }

    /// BLAKE3 of the current installed version of `package` on node `i`.
    pub fn installed_hash(&self, i: usize, package: &str) -> Option<[u8; 32]> {
        let cur = self.node_dir(i).join("packages").join(package).join("current");
        let meta: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(cur.join(".baton.json")).ok()?).ok()?;
        let file = meta.get("file")?.as_str()?;
        baton_node::store::Store::hash_file(&cur.join(file)).ok()
    }

    /// Node hosts in the order of the NMS's default plan (addressees sorted by id: with a
    /// chain, the first is the head and each one relays to the next).
    pub fn chain(&self) -> Vec<usize> {
        let mut hosts: Vec<usize> = (1..=self.nodes()).collect();
        hosts.sort_by_key(|&i| self.node_ids[i - 1]);
        hosts
    }

    /// How much of a `size`-byte package node `i` holds, 0.0..=1.0: 1 once a version of
    /// `package` is current, else the bytes written to its partial downloads (sparse
    /// files: allocated blocks count).
    pub fn progress(&self, i: usize, package: &str, size: u64) -> f64 {
        use std::os::unix::fs::MetadataExt;
        let dir = self.node_dir(i);
        if dir.join("packages").join(package).join("current").exists() {
            return 1.0;
        }
        let written = dir_names(&dir.join("partial"))
            .iter()
            .filter_map(|c| fs::metadata(dir.join("partial").join(c).join("data")).ok())
            .map(|m| m.blocks() * 512)
            .max()
            .unwrap_or(0);
        (written as f64 / size.max(1) as f64).min(1.0)
    }

    /// The summaries the NMS wrote, newest last.
    pub fn summaries(&self) -> Vec<serde_json::Value> {
        let mut out: Vec<(std::time::SystemTime, serde_json::Value)> =
            fs::read_dir(self.nms_dir().join("campaigns"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let p = e.path().join("summary.json");
                    let t = fs::metadata(&p).ok()?.modified().ok()?;
                    Some((t, serde_json::from_str(&fs::read_to_string(&p).ok()?).ok()?))
                })
                .collect();
        out.sort_by_key(|(t, _)| *t);
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// Stops every process it started.
    pub fn stop_all(&mut self) {
        for p in 0..self.procs.len() {
            self.stop(p);
        }
    }

    /// Stops every process and removes the network (and the work directory unless kept).
    pub fn teardown(&mut self) {
        self.stop_all();
        let _ = self.net.teardown();
        if !self.keep_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Checks that this process may build namespaces (saying how to run `what` otherwise),
/// installs the Ctrl-C handler and removes what an earlier crashed run left behind.
/// `command` names the subcommand in interrupt messages.
pub fn prepare_host(what: &str, command: &'static str) -> Result<()> {
    if let Err(why) = crate::netns::check_privileges() {
        bail!(
            "{what} builds a private network out of Linux network namespaces, and cannot here: {why}\n\
             Run it as root (e.g. `sudo target/release/baton-testbed ...`) on Linux with iproute2 installed."
        );
    }
    crate::bench::procs::install_interrupt_handler(command);
    let removed = crate::netns::clean_stale()?;
    if !removed.is_empty() {
        println!(
            "removed {} namespaces left by an earlier crashed run",
            removed.len()
        );
    }
    Ok(())
}

/// The last `lines` lines of `s`.
pub fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// The names in `dir`, sorted (none if it cannot be read).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Writes `size` pseudo-random bytes derived from `seed` (BLAKE3 XOF) to `path`; returns
/// the BLAKE3 hash of the content.
pub fn write_pseudo_random(path: &Path, size: u64, seed: u64) -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut xof = blake3::Hasher::new_keyed(&key).finalize_xof();
    let mut f = std::io::BufWriter::new(
        fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
    );
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(*h.finalize().as_bytes())
}
