//! Self-update, the shell's half (the core's is `baton_protocol::selfupdate`): what the
//! install step of an agent package does on this machine.
//!
//! The core emits the install step of an agent package only once the node's children hold
//! it. The step then ([`decide`]):
//! - reports it installed if the running executable *is* that package (its BLAKE3, the
//!   build id, is the manifest's root hash): the node restarted into it;
//! - reports it failed with the reason kept from an earlier trial of it, if one failed
//!   (`<data>/agent/failed-<root>`), so a node never tries a broken agent twice;
//! - refuses a file that is not an executable for this node's platform;
//! - otherwise stops the node (networking closed, journal on disk) and [`carry_out`]s the
//!   upgrade: a trial run of the new executable as a child, with the same arguments and
//!   [`TRIAL_ENV`] set, which must start (configuration, identity, listening, advertising
//!   its build id), connect to a trusted NMS and say so in a file within
//!   [`trial_deadline`] (`trial.rs`). Then the running executable is kept as `<exe>.prev`, the new
//!   one renamed over it (atomic), and this very process re-executes it (`execve`: same
//!   PID, so systemd's MainPID stays). If the trial fails, the reason is kept and this
//!   process re-executes the previous executable, which finds the campaign in its journal,
//!   and reports it failed.
//!
//! In both cases the restarted node resumes every unfinished campaign from its journal and
//! working files, like after any restart.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use baton_protocol::chunk::Hash;
use baton_protocol::manifest::Manifest;
use baton_protocol::selfupdate::{ELF_HEADER_LEN, agent_install_decision, probation_at_start};
use tracing::{error, info, warn};

/// Set in the environment of a trial run: the file the new agent writes its build id to
/// once it started.
pub const TRIAL_ENV: &str = "BATON_AGENT_TRIAL";
/// Overrides [`DEFAULT_TRIAL_DEADLINE`] (seconds).
pub const TRIAL_SECS_ENV: &str = "BATON_AGENT_TRIAL_SECS";
/// How long a new agent has to start in its trial.
pub const DEFAULT_TRIAL_DEADLINE: Duration = Duration::from_secs(30);
/// The folder under the data directory for trial files and kept failures.
pub const AGENT_DIR: &str = "agent";
/// Overrides [`DEFAULT_CONFIRM_DEADLINE`] (seconds).
pub const CONFIRM_SECS_ENV: &str = "BATON_AGENT_CONFIRM_SECS";
/// How long a new agent has after the switch to report its install (its probation).
pub const DEFAULT_CONFIRM_DEADLINE: Duration = Duration::from_secs(120);
/// Starts of a new agent on probation after which it is rolled back (a crash loop under a
/// supervisor such as systemd's `Restart=`); the rule is the core's.
pub use baton_protocol::selfupdate::MAX_PROBATION_STARTS;
/// Testing only, in debug builds: an agent whose build id (hex) is this never reports an
/// agent install (a new agent that hangs after the switch).
pub const TEST_SILENT_BUILD_ENV: &str = "BATON_TEST_AGENT_SILENT_BUILD";
/// `<data>/agent/pending`: the build id of a new agent switched to and not yet confirmed.
const PENDING: &str = "pending";
/// `<data>/agent/starts`: how often that agent started.
const STARTS: &str = "starts";

/// The running agent: its executable, build id and arguments.
#[derive(Debug, Clone)]
pub struct AgentSelf {
    /// The executable's path (as `/proc/self/exe` names it at start).
    pub exe: PathBuf,
    /// BLAKE3 of the executable.
    pub build: Hash,
    /// Its first bytes (ELF class and machine).
    pub header: Vec<u8>,
    /// The arguments it was started with, program name first.
    pub args: Vec<OsString>,
    /// Its probation, when it is a new agent just switched to.
    pub probation: Option<std::sync::Arc<Probation>>,
}

impl AgentSelf {
    /// The running process's own executable, hashed.
    pub fn current(args: Vec<OsString>) -> Result<AgentSelf> {
        let exe = std::env::current_exe().context("cannot find this program's executable")?;
        let (build, header) = hash_executable(Path::new("/proc/self/exe"))?;
        Ok(AgentSelf {
            exe,
            build,
            header,
            args,
            probation: None,
        })
    }

    /// The build id as hex.
    pub fn build_hex(&self) -> String {
        hex::encode(self.build)
    }
}

/// BLAKE3 and the first [`ELF_HEADER_LEN`] bytes of a file.
pub fn hash_executable(path: &Path) -> Result<(Hash, Vec<u8>)> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut header = Vec::with_capacity(ELF_HEADER_LEN);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        if header.len() < ELF_HEADER_LEN {
            let take = (ELF_HEADER_LEN - header.len()).min(n);
            header.extend_from_slice(&buf[..take]);
        }
        hasher.update(&buf[..n]);
    }
    Ok((*hasher.finalize().as_bytes(), header))
}

/// The trial's deadline ([`TRIAL_SECS_ENV`] or [`DEFAULT_TRIAL_DEADLINE`]).
pub fn trial_deadline() -> Duration {
    std::env::var(TRIAL_SECS_ENV)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_TRIAL_DEADLINE)
}

/// What the install step of an agent package does (decided in the core, from what
/// [`decide`] reads).
pub use baton_protocol::selfupdate::AgentDecision as Decision;

fn failure_file(data_dir: &Path, root: &Hash) -> PathBuf {
    data_dir
        .join(AGENT_DIR)
        .join(format!("failed-{}", hex::encode(root)))
}

/// Decides the install step of the agent package `manifest`, received at `package`.
pub fn decide(data_dir: &Path, me: &AgentSelf, package: &Path, manifest: &Manifest) -> Decision {
    if me.build == manifest.root {
        return Decision::Running; // nothing to read
    }
    let failed_before = fs::read_to_string(failure_file(data_dir, &manifest.root)).ok();
    let mut header = Vec::with_capacity(ELF_HEADER_LEN);
    let read = fs::File::open(package)
        .and_then(|f| f.take(ELF_HEADER_LEN as u64).read_to_end(&mut header))
        .map_err(|e| format!("cannot read the new agent {}: {e}", package.display()));
    agent_install_decision(
        &me.build,
        &me.header,
        &manifest.root,
        read.map(|_| header.as_slice()),
        failed_before.as_deref(),
    )
}

/// An upgrade to carry out once the node stopped.
#[derive(Debug, Clone)]
pub struct Upgrade {
    /// The received package file.
    pub package: PathBuf,
    /// Its root hash: the new agent's build id.
    pub root: Hash,
    /// Its version, for the log.
    pub version: String,
}

/// The trial run of a new agent (the child started with [`TRIAL_ENV`]): writes this
/// agent's build id to `healthy` once it started.
pub fn report_trial(healthy: &Path, me: &AgentSelf) -> Result<()> {
    let tmp = healthy.with_extension("tmp");
    fs::write(&tmp, me.build_hex()).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, healthy).with_context(|| format!("cannot write {}", healthy.display()))?;
    Ok(())
}

/// Tries the new agent and re-executes into it, or back into the previous one. Returns
/// only if even that re-execution failed.
pub fn carry_out(data_dir: &Path, me: &AgentSelf, up: &Upgrade) -> anyhow::Error {
    let dir = data_dir.join(AGENT_DIR);
    let new = sibling(&me.exe, ".new");
    let outcome = fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))
        .and_then(|()| stage(&up.package, &new))
        .and_then(|()| trial(&new, &dir, me, up, trial_deadline()));
    let why = match outcome {
        Ok(()) => match switch(&me.exe, &new) {
            Ok(()) => {
                info!(version = %up.version, build = %hex::encode(up.root), "the new agent started in its trial; switching to it");
                // the new agent is on probation until it reports its install (Probation)
                let pending = dir.join(PENDING);
                let _ = fs::remove_file(dir.join(STARTS));
                if let Err(e) = fs::write(&pending, hex::encode(up.root)) {
                    warn!(
                        "cannot write {}: {e}; the new agent runs without probation",
                        pending.display()
                    );
                }
                let e = exec(&me.exe, &me.args);
                // the new executable cannot even be executed: put the previous one back
                error!(
                    "cannot execute the new agent {}: {e}; restoring the previous one",
                    me.exe.display()
                );
                if let Err(e) = fs::rename(sibling(&me.exe, ".prev"), &me.exe) {
                    return anyhow::anyhow!("cannot restore the previous agent: {e}");
                }
                format!("the new agent could not be executed: {e}; the previous agent was restored")
            }
            Err(e) => format!("the new agent could not replace the running one: {e:#}"),
        },
        Err(e) => format!("{e:#}"),
    };
    let _ = fs::remove_file(&new);
    warn!(version = %up.version, "agent update failed, running the previous agent again: {why}");
    let keep = failure_file(data_dir, &up.root);
    if let Err(e) = fs::write(&keep, &why) {
        error!(
            "cannot keep the failure in {}: {e}; the update may be tried again",
            keep.display()
        );
    }
    let e = exec(&me.exe, &me.args);
    anyhow::anyhow!(
        "cannot execute the previous agent {} again: {e}",
        me.exe.display()
    )
}

fn sibling(exe: &Path, suffix: &str) -> PathBuf {
    let mut name = exe.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    exe.with_file_name(name)
}

/// Copies the package next to the running executable (same filesystem, so a rename can
/// replace it), executable, synced.
fn stage(package: &Path, new: &Path) -> Result<()> {
    let _ = fs::remove_file(new);
    fs::copy(package, new).with_context(|| {
        format!(
            "cannot copy the new agent to {} (the folder of the running executable must be writable)",
            new.display()
        )
    })?;
    let f = fs::OpenOptions::new().write(true).open(new)?;
    f.set_permissions(fs::Permissions::from_mode(0o755))?;
    f.sync_all()?;
    Ok(())
}

/// Runs the new agent with this agent's arguments and [`TRIAL_ENV`]; it must say it
/// started (its build id in the file) and exit 0 within the deadline.
fn trial(new: &Path, dir: &Path, me: &AgentSelf, up: &Upgrade, deadline: Duration) -> Result<()> {
    let healthy = dir.join("trial-healthy");
    let _ = fs::remove_file(&healthy);
    info!(version = %up.version, deadline = ?deadline, "trying the new agent {}", new.display());
    let mut child = Command::new(new)
        .args(me.args.iter().skip(1))
        .env(TRIAL_ENV, &healthy)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("the new agent could not be started ({})", new.display()))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!(
                    "the new agent did not report that it started within {} s; it was stopped",
                    deadline.as_secs_f64()
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => anyhow::bail!("cannot wait for the new agent: {e}"),
        }
    };
    let said = fs::read_to_string(&healthy).unwrap_or_default();
    let _ = fs::remove_file(&healthy);
    if !status.success() {
        anyhow::bail!("the new agent exited at start ({status})");
    }
    let expected = hex::encode(up.root);
    if said.trim() != expected {
        anyhow::bail!(
            "the new agent exited without reporting its build id (it said {:?}, expected {expected})",
            said.trim()
        );
    }
    Ok(())
}

/// Keeps the running executable as `<exe>.prev` and renames the new one over it.
fn switch(exe: &Path, new: &Path) -> Result<()> {
    let prev = sibling(exe, ".prev");
    let tmp = sibling(exe, ".prev.tmp");
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(exe, &tmp).is_err() {
        fs::copy(exe, &tmp)
            .with_context(|| format!("cannot keep the previous agent as {}", tmp.display()))?;
    }
    fs::rename(&tmp, &prev)
        .with_context(|| format!("cannot keep the previous agent as {}", prev.display()))?;
    fs::rename(new, exe).with_context(|| format!("cannot rename {} to {}", new.display(), exe.display()))?;
    if let Some(parent) = exe.parent()
        && let Ok(d) = fs::File::open(parent)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Replaces this process by `exe` with `args` (same PID); returns only on failure.
fn exec(exe: &Path, args: &[OsString]) -> std::io::Error {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let mut cmd = Command::new(exe);
    if let Some(a0) = args.first() {
        cmd.arg0(a0);
    }
    cmd.args(args.iter().skip(1)).env_remove(TRIAL_ENV).exec()
}

/// A new agent's probation after the switch: until it reports the agent campaign's
/// install (the NMS acknowledged its rolling code, [`Probation::confirm`]) it may be rolled
/// back: by a thread of its own at the deadline (a thread, so that it fires even if the
/// event loop hangs), or at its next start when it started [`MAX_PROBATION_STARTS`] times
/// (crash loop). Rolling back puts `<exe>.prev` back over `<exe>`, keeps the reason as a
/// failed trial, and re-executes the previous agent, which reports the install failed.
#[derive(Debug)]
pub struct Probation {
    data_dir: PathBuf,
    root: Hash,
    exe: PathBuf,
    args: Vec<OsString>,
    confirmed: std::sync::Mutex<bool>,
}

/// What `<data>/agent/pending` says about this agent at start (the core's rule,
/// [`probation_at_start`]).
pub use baton_protocol::selfupdate::Probation as Pending;

/// Reads and updates the pending switch for an agent of build `build` starting now.
pub fn check_pending(data_dir: &Path, build: &Hash) -> Pending {
    let dir = data_dir.join(AGENT_DIR);
    let Ok(root) = fs::read_to_string(dir.join(PENDING)) else {
        return Pending::None;
    };
    let pending: Option<Hash> = hex::decode(root.trim()).ok().and_then(|b| b.try_into().ok());
    let starts = fs::read_to_string(dir.join(STARTS))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let p = probation_at_start(build, pending.as_ref(), starts);
    match p {
        Pending::None => {
            // the previous agent runs again (or the record is unreadable): nothing pending
            let _ = fs::remove_file(dir.join(PENDING));
            let _ = fs::remove_file(dir.join(STARTS));
        }
        Pending::OnProbation(n) | Pending::CrashLoop(n) => {
            let _ = fs::write(dir.join(STARTS), n.to_string());
        }
    }
    p
}

/// The probation deadline ([`CONFIRM_SECS_ENV`] or [`DEFAULT_CONFIRM_DEADLINE`]).
pub fn confirm_deadline() -> Duration {
    std::env::var(CONFIRM_SECS_ENV)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86400.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_CONFIRM_DEADLINE)
}

impl Probation {
    /// At start of agent `me`: its probation if it is a new agent just switched to (with
    /// its deadline thread running); rolls back at once after a crash loop.
    pub fn start(data_dir: &Path, me: &AgentSelf) -> Option<std::sync::Arc<Probation>> {
        let starts = match check_pending(data_dir, &me.build) {
            Pending::None => return None,
            Pending::OnProbation(n) => n,
            Pending::CrashLoop(n) => {
                let p = Probation::new(data_dir, me);
                p.roll_back(&format!(
                    "the new agent started {n} times after the switch without reporting its install"
                ));
                return None;
            }
        };
        let p = std::sync::Arc::new(Probation::new(data_dir, me));
        let deadline = confirm_deadline();
        warn!(
            start = starts,
            "this agent was just switched to: it is rolled back unless it reports its install within {} s",
            deadline.as_secs_f64()
        );
        let watch = p.clone();
        std::thread::spawn(move || {
            std::thread::sleep(deadline);
            watch.roll_back(&format!(
                "the new agent did not report its install within {} s after the switch",
                deadline.as_secs_f64()
            ));
        });
        Some(p)
    }

    fn new(data_dir: &Path, me: &AgentSelf) -> Probation {
        Probation {
            data_dir: data_dir.to_path_buf(),
            root: me.build,
            exe: me.exe.clone(),
            args: me.args.clone(),
            confirmed: std::sync::Mutex::new(false),
        }
    }

    /// The new agent reported (its install step ran after the NMS's acknowledgement): it
    /// stays.
    pub fn confirm(&self) {
        let mut c = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        if !*c {
            *c = true;
            let dir = self.data_dir.join(AGENT_DIR);
            let _ = fs::remove_file(dir.join(PENDING));
            let _ = fs::remove_file(dir.join(STARTS));
            info!("the new agent reported its install: its probation is over");
        }
    }

    /// Unless confirmed: the previous executable back, the reason kept, and re-executed.
    fn roll_back(&self, reason: &str) {
        let c = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        if *c {
            return;
        }
        let dir = self.data_dir.join(AGENT_DIR);
        let prev = sibling(&self.exe, ".prev");
        error!("{reason}; restoring the previous agent {}", prev.display());
        if let Err(e) = fs::rename(&prev, &self.exe) {
            error!("cannot restore the previous agent: {e}; keeping this one");
            return;
        }
        let why = format!("{reason}; the previous agent was restored");
        let _ = fs::write(failure_file(&self.data_dir, &self.root), &why);
        let _ = fs::remove_file(dir.join(PENDING));
        let _ = fs::remove_file(dir.join(STARTS));
        let e = exec(&self.exe, &self.args);
        error!("cannot execute the previous agent again: {e}");
        std::process::exit(1);
    }
}

/// Testing only ([`TEST_SILENT_BUILD_ENV`]): this agent never reports an agent install.
/// Debug builds only: a release agent ignores the variable.
pub fn test_silent(me: &AgentSelf) -> bool {
    cfg!(debug_assertions) && std::env::var(TEST_SILENT_BUILD_ENV).is_ok_and(|b| b == me.build_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me_with(exe: &Path) -> AgentSelf {
        let (build, header) = hash_executable(exe).unwrap();
        AgentSelf {
            exe: exe.to_path_buf(),
            build,
            header,
            args: vec![],
            probation: None,
        }
    }

    fn manifest(root: Hash) -> Manifest {
        let nms = baton_protocol::id::keypair_from_seed(1);
        Manifest {
            format: baton_protocol::manifest::MANIFEST_FORMAT,
            campaign: [1; 16],
            nms: baton_protocol::NodeId::of(&nms),
            name: "baton-node".into(),
            version: "0.2.0".into(),
            file: "baton-node-0.2.0".into(),
            sequence: 1,
            size: 0,
            chunk_size: 4096,
            chunk_hashes: Default::default(),
            root,
            created_at: 1,
            expires_at: 2,
            relay: Default::default(),
            plan: Default::default(),
            offline_install: false,
            self_update: true,
            addressees: vec![],
        }
    }

    #[test]
    fn the_install_step_decides_from_the_build_the_kept_failures_and_the_platform() {
        let d = tempfile::tempdir().unwrap();
        let me = me_with(Path::new("/proc/self/exe"));
        // running the package already
        assert_eq!(
            decide(d.path(), &me, Path::new("/nonexistent"), &manifest(me.build)),
            Decision::Running
        );
        // another executable of this platform: try it
        let other = d.path().join("other");
        let mut bytes = fs::read("/proc/self/exe").unwrap();
        bytes.extend_from_slice(b"another build");
        fs::write(&other, &bytes).unwrap();
        let (root, _) = hash_executable(&other).unwrap();
        assert_ne!(root, me.build);
        assert_eq!(decide(d.path(), &me, &other, &manifest(root)), Decision::Upgrade);
        // a failed trial is kept: not tried again
        fs::create_dir_all(d.path().join(AGENT_DIR)).unwrap();
        fs::write(failure_file(d.path(), &root), "the new agent exited at start\n").unwrap();
        assert_eq!(
            decide(d.path(), &me, &other, &manifest(root)),
            Decision::Failed("the new agent exited at start".into())
        );
        // not an executable
        let script = d.path().join("script");
        fs::write(&script, "#!/bin/sh\necho hello from a script\n").unwrap();
        match decide(d.path(), &me, &script, &manifest([7; 32])) {
            Decision::Failed(r) => assert!(r.contains("not an ELF file"), "{r}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_trial_fails_on_an_exit_a_silence_or_a_hang() {
        let d = tempfile::tempdir().unwrap();
        let up = Upgrade {
            package: PathBuf::new(),
            root: [3; 32],
            version: "0.2.0".into(),
        };
        let mut me = me_with(Path::new("/proc/self/exe"));
        let short = Duration::from_millis(300);
        let e = trial(Path::new("/bin/false"), d.path(), &me, &up, short).unwrap_err();
        assert!(e.to_string().contains("exited at start"), "{e:#}");
        let e = trial(Path::new("/bin/true"), d.path(), &me, &up, short).unwrap_err();
        assert!(e.to_string().contains("without reporting its build id"), "{e:#}");
        me.args = vec!["sleep".into(), "30".into()];
        let t = Instant::now();
        let e = trial(Path::new("/bin/sleep"), d.path(), &me, &up, short).unwrap_err();
        assert!(
            e.to_string()
                .contains("did not report that it started within 0.3 s"),
            "{e:#}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the hanging agent was not stopped"
        );
    }

    #[test]
    fn a_pending_switch_counts_the_new_agents_starts_and_ends_for_another_build() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(AGENT_DIR);
        fs::create_dir_all(&dir).unwrap();
        let (new, old) = ([1; 32], [2; 32]);
        assert_eq!(check_pending(d.path(), &new), Pending::None);
        fs::write(dir.join(PENDING), hex::encode(new)).unwrap();
        for n in 1..=MAX_PROBATION_STARTS {
            assert_eq!(check_pending(d.path(), &new), Pending::OnProbation(n));
        }
        assert_eq!(
            check_pending(d.path(), &new),
            Pending::CrashLoop(MAX_PROBATION_STARTS + 1)
        );
        // the previous agent runs again: nothing pending any more
        assert_eq!(check_pending(d.path(), &old), Pending::None);
        assert!(!dir.join(PENDING).exists() && !dir.join(STARTS).exists());
    }

    #[test]
    fn switching_keeps_the_previous_executable() {
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("baton-node");
        let new = sibling(&exe, ".new");
        fs::write(&exe, "old").unwrap();
        fs::write(&new, "new").unwrap();
        switch(&exe, &new).unwrap();
        assert_eq!(fs::read_to_string(&exe).unwrap(), "new");
        assert_eq!(fs::read_to_string(sibling(&exe, ".prev")).unwrap(), "old");
        assert!(!new.exists());
    }
}
