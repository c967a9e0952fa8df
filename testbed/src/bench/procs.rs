//! Processes a benchmark starts inside the namespaces: spawning, CPU and
//! memory sampling from `/proc`, waiting for nodes to finish, and killing
//! (by PID) whatever is left, also on error, panic or Ctrl-C.
//!
//! Every command runs through `ip netns exec`, which `exec`s the tool in the
//! same process, so the PID of the spawned child is the tool's own PID.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Net;

/// How often [`Procs::wait_nodes`] looks at the nodes.
const POLL: Duration = Duration::from_millis(10);
/// `/proc/<pid>/status` (peak RSS) is read every this many polls.
const STATUS_EVERY: u32 = 5;
/// Clock ticks per second in `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;
/// Lines of output kept per process for error messages.
const TAIL_LINES: usize = 40;
/// After the last essential process (the server) exited, nodes still
/// pending get this long before they count as failed.
const ESSENTIAL_GRACE: Duration = Duration::from_secs(3);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// True once SIGINT or SIGTERM arrived during [`super::run`]: methods stop
/// what they are doing and return an error; everything is cleaned up.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Fails with "interrupted" when [`interrupted`].
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted (Ctrl-C)");
    }
    Ok(())
}

/// What the interrupt handler says, for `what` (`bench`, `demo`, `attack`): at the first
/// signal (`second` false) and at the second.
pub(crate) fn interrupt_message(what: &str, second: bool) -> String {
    if second {
        format!("{what}: second interrupt, exiting now (the next run removes what is left)")
    } else {
        format!(
            "{what}: interrupted; stopping the {what}'s processes and removing its network \
             (press Ctrl-C again to exit at once)"
        )
    }
}

/// Installs (once per process) a SIGINT/SIGTERM watcher for the subcommand `what`
/// (`bench`, `demo`, `attack`; its messages name it): the first signal sets
/// [`interrupted`], so the run stops at the next check and tears everything down; a
/// second one exits at once with status 130 (the namespaces left behind are then removed
/// by the next run's `clean_stale`). Uses tokio's signal support on a small thread,
/// because installing a handler by hand needs `unsafe`.
pub(crate) fn install_interrupt_handler(what: &'static str) {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name(format!("{what}-signals"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
                    Ok(rt) => rt,
                    Err(err) => {
                        tracing::warn!("{what}: no Ctrl-C handling: {err}");
                        return;
                    }
                };
                rt.block_on(async {
                    use tokio::signal::unix::{SignalKind, signal};
                    let (Ok(mut int), Ok(mut term)) =
                        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
                    else {
                        tracing::warn!("{what}: cannot watch SIGINT/SIGTERM");
                        return;
                    };
                    loop {
                        tokio::select! {
                            _ = int.recv() => {}
                            _ = term.recv() => {}
                        }
                        if INTERRUPTED.swap(true, Ordering::Relaxed) {
                            eprintln!("{}", interrupt_message(what, true));
                            std::process::exit(130);
                        }
                        eprintln!("{}", interrupt_message(what, false));
                    }
                });
            });
        if let Err(err) = spawned {
            tracing::warn!("{what}: no Ctrl-C handling: {err}");
        }
    });
}

/// Looks a program up in PATH and the usual system directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `Some("<tool> not found: apt-get install <package>")` for the first of
/// `tools` (program, Debian package) that is missing.
pub fn missing_tools(tools: &[(&str, &str)]) -> Option<String> {
    let missing: Vec<&(&str, &str)> = tools.iter().filter(|(t, _)| find_tool(t).is_none()).collect();
    if missing.is_empty() {
        return None;
    }
    let names: Vec<&str> = missing.iter().map(|(t, _)| *t).collect();
    let mut packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    packages.dedup();
    Some(format!(
        "{} not found: apt-get install {}",
        names.join(", "),
        packages.join(" ")
    ))
}

/// How to run this program's hidden helper subcommands (`http-serve`,
/// `http-fetch`) inside a namespace: normally `current_exe()` (or
/// `$BATON_TESTBED_EXE`) with the subcommand as its arguments.
#[derive(Debug, Clone)]
pub(crate) struct Helper {
    program: PathBuf,
    /// Arguments before the helper's own (the unit tests' harness filter).
    prefix: Vec<String>,
    /// When set, the helper's arguments go in this environment variable
    /// (joined by U+001F) instead of the command line.
    env: Option<&'static str>,
}

/// Environment variable that names the baton-testbed executable to use as
/// the helper (default: the running executable).
pub const HELPER_EXE_ENV: &str = "BATON_TESTBED_EXE";

static HELPER_OVERRIDE: OnceLock<Helper> = OnceLock::new();

/// Makes `program` (a baton-testbed executable) the helper for the rest of this process,
/// unless one was chosen already: for callers whose own executable is not baton-testbed
/// (the fault suite's integration tests run the T1 copy).
pub fn use_helper_program(program: PathBuf) {
    let _ = HELPER_OVERRIDE.set(Helper {
        program,
        prefix: Vec::new(),
        env: None,
    });
}

impl Helper {
    pub(crate) fn get() -> Result<Helper> {
        if let Some(h) = HELPER_OVERRIDE.get() {
            return Ok(h.clone());
        }
        let program = match std::env::var_os(HELPER_EXE_ENV) {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe().context("cannot find the baton-testbed executable")?,
        };
        Ok(Helper {
            program,
            prefix: Vec::new(),
            env: None,
        })
    }

    /// Used by the unit tests: the test binary runs one test that acts as
    /// the helper.
    #[cfg(test)]
    pub(crate) fn set_override(program: PathBuf, prefix: Vec<String>, env: &'static str) {
        let _ = HELPER_OVERRIDE.set(Helper {
            program,
            prefix,
            env: Some(env),
        });
    }

    /// `ip netns exec <host> <helper> <args>`.
    pub(crate) fn command(&self, net: &Net, host: usize, args: &[String]) -> Command {
        let mut cmd = net.command(host, &self.program);
        cmd.args(&self.prefix);
        match self.env {
            Some(var) => {
                cmd.env(var, args.join("\u{1f}"));
            }
            None => {
                cmd.args(args);
            }
        }
        cmd
    }
}

/// A directory removed (recursively) when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

/// Name prefix of the benchmark's temporary directories.
const TEMP_PREFIX: &str = "baton-bench-";

impl TempDir {
    /// Makes `<tmp>/baton-bench-<pid>-<nanos>`.
    pub fn new() -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{TEMP_PREFIX}{}-{nanos:09}", std::process::id()));
        std::fs::create_dir(&path)
            .with_context(|| format!("cannot create temporary directory {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("bench: cannot remove {}: {err}", self.path.display());
        }
    }
}

/// Removes `baton-bench-<pid>-*` temporary directories whose process is
/// gone (left by a crash or a double Ctrl-C).
pub(crate) fn clean_stale_tempdirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The last lines a process wrote (stdout and stderr together).
#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
}

impl Tail {
    fn push(&mut self, line: &str) {
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        let mut l: String = line.chars().take(300).collect();
        if l.len() < line.len() {
            l.push('…');
        }
        self.lines.push_back(l);
    }
}

/// Index of a process in a [`Procs`].
pub type ProcId = usize;

#[derive(Debug)]
struct Proc {
    label: String,
    pid: u32,
    child: Option<Child>,
    /// Exit status and when it was seen; None while running (or killed by us).
    exit: Option<(Instant, ExitStatus)>,
    /// utime + stime + cutime + cstime, last sample.
    ticks: u64,
    /// VmHWM in KiB, last sample.
    hwm_kib: u64,
    tail: Arc<Mutex<Tail>>,
    readers: Vec<JoinHandle<()>>,
}

/// What says that a node holds the package.
#[derive(Debug, Clone)]
pub enum Done {
    /// The process exited successfully.
    Exit(ProcId),
    /// This file exists (a completion hook touched it).
    Marker(PathBuf),
    /// This file has reached this length (a tool that writes sequentially).
    Length(PathBuf, u64),
    /// This file contains this text (a status file).
    Contains(PathBuf, String),
}

/// How to tell that one node is done, and which process failing means it
/// never will be.
#[derive(Debug, Clone)]
pub struct NodeWatch {
    pub done: Done,
    /// The node's process: if it exits before `done`, the node failed.
    pub proc: Option<ProcId>,
}

/// Per-node completion times from [`Procs::wait_nodes`].
#[derive(Debug, Clone, Default)]
pub struct NodeTimes {
    /// Time from the start to when the node was seen done (None: failed).
    pub times: Vec<Option<Duration>>,
    /// Why the failed nodes failed.
    pub failures: Vec<String>,
}

/// The processes of one method run. Dropping it kills (SIGKILL, by PID)
/// and reaps whatever still runs.
#[derive(Debug)]
pub struct Procs<'n> {
    net: &'n Net,
    procs: Vec<Proc>,
    polls: u32,
}

impl<'n> Procs<'n> {
    pub fn new(net: &'n Net) -> Self {
        Procs {
            net,
            procs: Vec::new(),
            polls: 0,
        }
    }

    /// The net the processes run in.
    pub fn net(&self) -> &'n Net {
        self.net
    }

    /// Starts `program args` inside host `host`'s namespace.
    pub fn spawn<I, S>(&mut self, host: usize, label: &str, program: &str, args: I) -> Result<ProcId>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut cmd = self.net.command(host, program);
        cmd.args(args.into_iter().map(Into::into));
        self.spawn_command(label, cmd)
    }

    /// Starts a prepared command (e.g. from `Net::command`); stdin is
    /// /dev/null, stdout and stderr are collected for error messages.
    pub fn spawn_command(&mut self, label: &str, mut cmd: Command) -> Result<ProcId> {
        check_interrupted()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {label} ({:?})", cmd.get_program()))?;
        let tail = Arc::new(Mutex::new(Tail::default()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(reader_thread(out, Arc::clone(&tail)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(reader_thread(err, Arc::clone(&tail)));
        }
        tracing::debug!(label, pid = child.id(), "bench: started");
        self.procs.push(Proc {
            label: label.to_owned(),
            pid: child.id(),
            child: Some(child),
            exit: None,
            ticks: 0,
            hwm_kib: 0,
            tail,
            readers,
        });
        Ok(self.procs.len() - 1)
    }

    /// The process's PID.
    pub fn pid(&self, id: ProcId) -> u32 {
        self.procs[id].pid
    }

    /// When and how the process exited on its own (None while running or
    /// when it was stopped by [`Procs::stop`]).
    pub fn exit(&self, id: ProcId) -> Option<(Instant, ExitStatus)> {
        self.procs[id].exit
    }

    /// Whether the process is still running.
    pub fn running(&self, id: ProcId) -> bool {
        self.procs[id].child.is_some()
    }

    /// The last lines of the process's output, for error messages.
    pub fn tail(&self, id: ProcId, lines: usize) -> String {
        let tail = self.procs[id].tail.lock().unwrap_or_else(|p| p.into_inner());
        let skip = tail.lines.len().saturating_sub(lines);
        tail.lines
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Samples CPU time and peak RSS of every running process, and reaps
    /// the ones that exited (a zombie's `/proc/<pid>/stat` still has its
    /// final CPU times, so nothing is lost by exiting between samples).
    pub fn sample(&mut self) {
        self.polls = self.polls.wrapping_add(1);
        let read_status = self.polls % STATUS_EVERY == 1;
        for p in &mut self.procs {
            let Some(child) = p.child.as_mut() else {
                continue;
            };
            let stat = read_stat(p.pid);
            if let Some((_, ticks)) = stat {
                p.ticks = p.ticks.max(ticks);
            }
            let zombie = matches!(stat, None | Some(('Z' | 'X', _)));
            if !zombie {
                if read_status && let Some(hwm) = read_hwm(p.pid) {
                    p.hwm_kib = p.hwm_kib.max(hwm);
                }
                continue;
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    p.exit = Some((Instant::now(), status));
                    p.child = None;
                    tracing::debug!(label = %p.label, %status, "bench: exited");
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(label = %p.label, "bench: wait failed: {err}"),
            }
        }
    }

    /// Samples the process one last time, kills it (SIGKILL) and reaps it.
    pub fn stop(&mut self, id: ProcId) {
        self.sample();
        let p = &mut self.procs[id];
        if let Some(mut child) = p.child.take() {
            if let Some(hwm) = read_hwm(p.pid) {
                p.hwm_kib = p.hwm_kib.max(hwm);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for r in p.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// [`Procs::stop`] for every process.
    pub fn stop_all(&mut self) {
        for id in 0..self.procs.len() {
            self.stop(id);
        }
    }

    /// Waits (sampling) until every process in `ids` has exited, for at
    /// most `limit`; returns whether they all did.
    pub fn wait_exit(&mut self, ids: &[ProcId], limit: Duration) -> Result<bool> {
        let deadline = Instant::now() + limit;
        loop {
            self.sample();
            if ids.iter().all(|&id| !self.running(id)) {
                return Ok(true);
            }
            check_interrupted()?;
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Total CPU seconds of all processes (None when there were none).
    pub fn cpu_secs(&self) -> Option<f64> {
        if self.procs.is_empty() {
            return None;
        }
        Some(self.procs.iter().map(|p| p.ticks).sum::<u64>() as f64 / TICKS_PER_SEC)
    }

    /// Largest peak RSS (VmHWM) of any one process, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.procs.iter().map(|p| p.hwm_kib).max().filter(|&k| k > 0)
    }

    /// Polls until every node is done or failed. A node fails when its
    /// process exits first, when all `essential` processes (servers) have
    /// exited and it is still not done a few seconds later, or at the
    /// timeout. Ctrl-C makes it return an error.
    pub fn wait_nodes(
        &mut self,
        watches: &[NodeWatch],
        essential: &[ProcId],
        start: Instant,
        timeout: Duration,
    ) -> Result<NodeTimes> {
        let n = watches.len();
        let mut times: Vec<Option<Duration>> = vec![None; n];
        let mut failed: Vec<Option<String>> = vec![None; n];
        let mut essential_gone: Option<Instant> = None;
        loop {
            check_interrupted()?;
            self.sample();
            let now = Instant::now();
            for (i, w) in watches.iter().enumerate() {
                if times[i].is_some() || failed[i].is_some() {
                    continue;
                }
                let done = match &w.done {
                    Done::Exit(id) => match self.procs[*id].exit {
                        Some((at, status)) if status.success() => {
                            times[i] = Some(at.saturating_duration_since(start));
                            continue;
                        }
                        _ => false,
                    },
                    Done::Marker(path) => path.exists(),
                    Done::Length(path, len) => std::fs::metadata(path).is_ok_and(|m| m.len() >= *len),
                    Done::Contains(path, needle) => std::fs::read(path)
                        .is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle.as_str())),
                };
                if done {
                    times[i] = Some(now.saturating_duration_since(start));
                    continue;
                }
                let proc = w.proc.or(match w.done {
                    Done::Exit(id) => Some(id),
                    _ => None,
                });
                if let Some(id) = proc
                    && let Some((_, status)) = self.procs[id].exit
                {
                    failed[i] = Some(format!(
                        "node {}: {} exited ({status}) before finishing: {}",
                        i + 1,
                        self.procs[id].label,
                        self.tail(id, 6)
                    ));
                }
            }
            let pending: Vec<usize> = (0..n)
                .filter(|&i| times[i].is_none() && failed[i].is_none())
                .collect();
            if pending.is_empty() {
                break;
            }
            if !essential.is_empty() && essential.iter().all(|&id| !self.running(id)) {
                let since = *essential_gone.get_or_insert(now);
                if now.duration_since(since) >= ESSENTIAL_GRACE {
                    let why: Vec<String> = essential
                        .iter()
                        .map(|&id| {
                            let p = &self.procs[id];
                            let status = p.exit.map(|(_, s)| s.to_string()).unwrap_or_default();
                            format!("{} exited ({status}): {}", p.label, self.tail(id, 6))
                        })
                        .collect();
                    for i in pending {
                        failed[i] = Some(format!("node {}: not done; {}", i + 1, why.join("; ")));
                    }
                    break;
                }
            }
            if now.duration_since(start) >= timeout {
                for i in pending {
                    failed[i] = Some(format!(
                        "node {}: timed out after {:.0} s",
                        i + 1,
                        timeout.as_secs_f64()
                    ));
                }
                break;
            }
            std::thread::sleep(POLL);
        }
        Ok(NodeTimes {
            times,
            failures: failed.into_iter().flatten().collect(),
        })
    }
}

impl Drop for Procs<'_> {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut child) = p.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            for r in p.readers.drain(..) {
                let _ = r.join();
            }
        }
    }
}

fn reader_thread<R: Read + Send + 'static>(r: R, tail: Arc<Mutex<Tail>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        // Progress meters end their lines with \r: split on both.
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    for piece in text.split('\r') {
                        t.push(piece);
                    }
                }
            }
        }
    })
}

/// State and CPU ticks (utime + stime + cutime + cstime) from
/// `/proc/<pid>/stat`.
fn read_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses `/proc/<pid>/stat`: the command name is in parentheses and may
/// contain spaces, so the fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime, stime, cutime, cstime are
    // fields 14..=17.
    let state = fields.first()?.chars().next()?;
    let mut ticks = 0u64;
    for f in fields.get(11..15)? {
        ticks += f.parse::<i64>().ok()?.max(0) as u64;
    }
    Some((state, ticks))
}

/// VmHWM (peak resident set) in KiB from `/proc/<pid>/status`.
fn read_hwm(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_hwm(&text)
}

pub(crate) fn parse_hwm(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
