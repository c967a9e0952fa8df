//! The agent-update scenario's pieces (issue 11): a fleet whose nodes run their own
//! `baton-node` executables (each a copy it may replace), distinct agent builds to
//! publish, and the NMS's inventory as the operator reads it (`baton-nms nodes --json`).
//! Used by `tests/selfupdate.rs` and `baton-testbed demo --self-update` ([`demo`]).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cluster::{Cluster, ProcIdx, prepare_host};
use crate::netns::NetSpec;

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

/// `baton-testbed demo --self-update`: a fleet of `nodes` nodes upgrades its agent while a
/// `size`-byte package campaign relays, then rolls back a broken agent; the inventory
/// before, between and after.
pub fn demo(nodes: usize, size: u64) -> Result<()> {
    prepare_host("the demo", "demo")?;
    let testbed = std::env::current_exe()?;
    let built = built_agent(&testbed)?;
    println!(
        "Creating a private network: 1 NMS + {nodes} nodes in network namespaces; each node runs its own copy of {}",
        built.display()
    );
    let mut c = Cluster::create(&NetSpec::with_hosts(nodes + 1), testbed)?;
    let old = c.dir.join("staging").join("agent-old");
    let old_build = agent_copy(&built, &old, b"")?;
    let new = c.dir.join("staging").join("baton-node-new");
    let new_build = agent_copy(&built, &new, b"\nbaton testbed: another build of the agent\n")?;
    start_agents(&mut c, &old, &[])?;
    let nms_args: Vec<String> = [
        "--min-nodes",
        &nodes.to_string(),
        "--settle",
        "1",
        "--halt-after",
        "1",
    ]
    .map(String::from)
    .to_vec();
    c.start_nms(&nms_args, true, &[])?;
    println!(
        "NMS {} (log: {}/nms.log; --halt-after 1)",
        c.nms_id,
        c.dir.display()
    );
    let (ok, _) = wait_for_agents(&c, Duration::from_secs(30), |a| a.build == old_build);
    if !ok {
        bail!("the nodes did not all appear in the NMS's inventory within 30 s");
    }
    println!(
        "\n$ baton-nms nodes   # before: every node runs build {}",
        &old_build[..16]
    );
    print!("{}", c.nms_command_text(&["nodes"])?);

    println!(
        "\n$ baton-nms publish-agent {} --version 0.1.1   # another build, {}..., while frob-1.0 ({} bytes) relays",
        new.display(),
        &new_build[..16],
        size
    );
    print!(
        "{}",
        c.nms_command_text(&[
            "publish-agent",
            new.to_str().unwrap_or_default(),
            "--version",
            "0.1.1"
        ])?
    );
    let frob = c.drop_package("frob-1.0.tar.gz", size, 2026)?;
    let (ok, _) = wait_for_agents(&c, Duration::from_secs(120), |a| a.build == new_build);
    let installed = c.wait_until(Duration::from_secs(120), |c| {
        (1..=c.nodes()).all(|i| c.installed_hash(i, "frob") == Some(frob))
    });
    println!(
        "\n$ baton-nms nodes   # after: each node switched in place (same PID) and kept the previous build"
    );
    print!("{}", c.nms_command_text(&["nodes"])?);
    if !ok || !installed {
        bail!(
            "the upgrade did not complete on every node (new build everywhere: {ok}, frob installed everywhere: {installed}); logs in {}",
            c.dir.display()
        );
    }

    let broken = c.dir.join("staging").join("broken");
    fs::copy("/bin/false", &broken)?;
    println!(
        "\n$ baton-nms publish-agent {} --version 0.1.2   # a broken agent: /bin/false",
        broken.display()
    );
    print!(
        "{}",
        c.nms_command_text(&[
            "publish-agent",
            broken.to_str().unwrap_or_default(),
            "--version",
            "0.1.2"
        ])?
    );
    let ended = c.wait_until(Duration::from_secs(120), |c| {
        c.summaries()
            .iter()
            .any(|s| s["package"] == "baton-node" && s["version"] == "0.1.2")
    });
    if !ended {
        bail!(
            "the broken agent's campaign did not end; logs in {}",
            c.dir.display()
        );
    }
    let (_, _) = wait_for_agents(&c, Duration::from_secs(15), |a| a.build == new_build);
    println!("\n$ baton-nms campaigns");
    print!("{}", c.nms_command_text(&["campaigns"])?);
    if let Some(s) = c.summaries().into_iter().rev().find(|s| s["version"] == "0.1.2") {
        println!("\nthe broken agent's campaign: halted: {}", s["halted"]);
        for f in s["failed"].as_array().into_iter().flatten() {
            println!(
                "  {}: {}",
                f["node"].as_str().unwrap_or("?"),
                f["reason"].as_str().unwrap_or("?")
            );
        }
    }
    println!("\n$ baton-nms nodes   # every node still runs the build it had");
    print!("{}", c.nms_command_text(&["nodes"])?);
    c.teardown();
    Ok(())
}
