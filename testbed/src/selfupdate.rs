//! The agent-update scenario's pieces (issue 11): a fleet whose nodes run their own
//! `baton-node` executables (each a copy it may replace), distinct agent builds to
//! publish, and the NMS's inventory as the operator reads it (`baton-nms nodes --json`).
//! Used by `tests/selfupdate.rs`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cluster::{Cluster, ProcIdx};

/// The `baton-node` executable built next to `testbed_exe` (`target/<profile>/`), or why
/// there is none.
pub fn built_agent(testbed_exe: &Path) -> Result<PathBuf> {
    let exe = testbed_exe.with_file_name("baton-node");
    if !exe.is_file() {
        bail!(
            "{} is missing: the agent-update scenario runs the real baton-node executable; build it first (cargo build -p baton-node)",
            exe.display()
        );
    }
    Ok(exe)
}

/// Copies `src` to `dst` without its debug sections (`strip`, when installed: a debug
/// build is ~150 MB, ~20 MB stripped), appends `extra` (an ELF file still runs with bytes
/// after its last section: a distinct build id for the same code), makes it executable,
/// and returns its build id (BLAKE3, hex).
pub fn agent_copy(src: &Path, dst: &Path, extra: &[u8]) -> Result<String> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(src, dst).with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
    // best effort: an unstripped copy works, only larger
    let _ = Command::new("strip").arg(dst).status();
    if !extra.is_empty() {
        use std::io::Write;
        fs::OpenOptions::new().append(true).open(dst)?.write_all(extra)?;
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755))?;
    build_id(dst)
}

/// BLAKE3 of a file, hex (what an agent advertises as its build id).
pub fn build_id(path: &Path) -> Result<String> {
    let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(blake3::hash(&data).to_hex().to_string())
}

/// Node `i`'s own executable in the cluster's work directory.
pub fn node_exe(c: &Cluster, i: usize) -> PathBuf {
    c.dir.join(format!("bin-{i}")).join("baton-node")
}

/// Gives every node a copy of `agent` as its own executable and starts it with `env`.
/// Returns the started processes, by node (index 0 = node 1).
pub fn start_agents(c: &mut Cluster, agent: &Path, env: &[(&str, &str)]) -> Result<Vec<ProcIdx>> {
    let mut procs = Vec::new();
    for i in 1..=c.nodes() {
        let exe = node_exe(c, i);
        fs::create_dir_all(exe.parent().expect("a folder"))?;
        fs::copy(agent, &exe)?;
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755))?;
        procs.push(c.start_agent(i, &exe, &[], env)?);
    }
    Ok(procs)
}

/// One node's agent in the NMS's inventory: (version, build, previous build).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenAgent {
    pub version: String,
    pub build: String,
    pub previous: Option<String>,
}

/// The agent of each node of the cluster as `baton-nms nodes --json` shows it (index 0 =
/// node 1; `None`: not in the inventory or no agent advertised).
pub fn inventory_agents(c: &Cluster) -> Result<Vec<Option<SeenAgent>>> {
    let answer = c.nms_command(&["nodes"])?;
    let nodes = answer["nodes"].as_array().context("no nodes in the answer")?;
    Ok(c.node_ids
        .iter()
        .map(|id| {
            let n = nodes.iter().find(|n| n["node"] == id.to_string())?;
            let a = n.get("agent")?;
            Some(SeenAgent {
                version: a["version"].as_str()?.to_string(),
                build: a["build"].as_str()?.to_string(),
                previous: a["previous"].as_str().map(str::to_string),
            })
        })
        .collect())
}

/// Waits until every node's inventory entry satisfies `ok`, up to `timeout`; returns the
/// last inventory read.
pub fn wait_for_agents(
    c: &Cluster,
    timeout: Duration,
    ok: impl Fn(&SeenAgent) -> bool,
) -> (bool, Vec<Option<SeenAgent>>) {
    let mut last = Vec::new();
    let done = c.wait_until(timeout, |c| {
        last = inventory_agents(c).unwrap_or_default();
        !last.is_empty() && last.iter().all(|a| a.as_ref().is_some_and(&ok))
    });
    (done, last)
}

/// The summary of the NMS's campaign of `package`, newest first, if one ended.
pub fn summary_of(c: &Cluster, package: &str) -> Option<serde_json::Value> {
    c.summaries().into_iter().rev().find(|s| s["package"] == package)
}
