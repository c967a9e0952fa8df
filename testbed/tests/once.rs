//! The one-shot agent (issue 11): `baton-node --once`, started on a fresh machine through
//! `scripts/bootstrap-node.sh`, joins a campaign in the middle of the plan, installs the
//! exact bytes, serves its child until that one has the package, exits by itself with
//! status 0 and leaves only the installed package.
//!
//! The namespace test needs root. Without it it prints why and returns; with
//! `BATON_REQUIRE_NETNS=1` a missing privilege fails it instead. The other tests (the
//! script's checks and unit file, the agent's timeout and SIGTERM on loopback without
//! mDNS) need neither.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use baton_protocol::NodeId;
use baton_testbed::cluster::{Cluster, dir_names, tail};
use baton_testbed::demo::served_bytes;
use baton_testbed::netns::{self, NetSpec};

const PKG: &str = "frob";
const SIZE: u64 = 6 << 20;

fn never() -> bool {
    false
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bootstrap-node.sh")
}

fn testbed() -> &'static str {
    env!("CARGO_BIN_EXE_baton-testbed")
}

/// A `baton-node` binary for the script: this package's testbed binary runs the node as
/// `baton-testbed node ...`.
fn node_binary(dir: &Path) -> PathBuf {
    let p = dir.join("baton-node");
    fs::write(&p, format!("#!/bin/sh\nexec {} node \"$@\"\n", testbed())).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A process this test started, killed (by its PID) if it is still running when dropped.
struct Started(Child);

impl Started {
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.0.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the one-shot agent on host `fresh` of the cluster, as a fresh machine would:
/// through `scripts/bootstrap-node.sh`, with nothing of Baton's in its data directory
/// (the identity the cluster made for it is removed); `extra` goes after `--`. Returns it
/// once it printed its peer id, which becomes the cluster's id for that host.
fn start_once(c: &mut Cluster, fresh: usize, script_args: &[&str], extra: &[&str]) -> Started {
    fs::remove_dir_all(c.node_dir(fresh)).unwrap();
    run_once(c, fresh, script_args, extra)
}

/// [`start_once`] on whatever the data directory holds (an agent run again), with a new log.
fn run_once(c: &mut Cluster, fresh: usize, script_args: &[&str], extra: &[&str]) -> Started {
    let data = c.node_dir(fresh);
    let bin = node_binary(&c.dir);
    let log = fs::File::create(c.dir.join(format!("node-{fresh}.log"))).unwrap();
    let once = Started(
        c.net
            .command(fresh, "bash")
            .arg(script())
            .args(["--binary", bin.to_str().unwrap()])
            .args(["--trust", &c.nms_id.to_string()])
            .args(["--data-dir", data.to_str().unwrap()])
            .args(script_args)
            .arg("--")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let once_log = format!("node-{fresh}");
    assert!(
        c.wait_until(Duration::from_secs(20), |c| printed_id(&c.log(&once_log))
            .is_some()),
        "the one-shot agent did not start:\n{}",
        c.log(&once_log)
    );
    assert!(
        c.log(&once_log).contains("bootstrap-node.sh: baton-node"),
        "the script names the binary"
    );
    c.node_ids[fresh - 1] = printed_id(&c.log(&once_log)).unwrap();
    once
}

/// The peer id a node prints at start (`baton-node <id> listening on port <p>`).
fn printed_id(log: &str) -> Option<NodeId> {
    let line = log
        .lines()
        .find(|l| l.starts_with("baton-node ") && l.contains(" listening on port "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Gives node `i` of the cluster a new identity for which `want` holds (keys are cheap);
/// false if none was found in `tries`.
fn reidentify(c: &mut Cluster, i: usize, tries: usize, want: impl Fn(&NodeId) -> bool) -> bool {
    for _ in 0..tries {
        let key = baton_protocol::Keypair::generate_ed25519();
        let id = NodeId::of(&key);
        if want(&id) {
            let path = c.node_dir(i).join(baton_shell::identity::KEY_FILE);
            fs::write(&path, key.to_protobuf_encoding().unwrap()).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            c.node_ids[i - 1] = id;
            return true;
        }
    }
    false
}

#[test]
fn a_one_shot_agent_installs_relays_and_leaves_only_the_package() {
    if !netns::available_for_tests() {
        return;
    }
    let t0 = Instant::now();
    // hosts: 0 the NMS, 1..=3 daemons, 4 the fresh machine
    let spec = NetSpec {
        hosts: 5,
        rate: Some("200mbit".into()),
        ..NetSpec::default()
    };
    let mut c = Cluster::create(&spec, PathBuf::from(testbed())).expect("cluster");
    let fresh = 4;
    let data = c.node_dir(fresh);
    let mut once = start_once(&mut c, fresh, &["--timeout", "80s"], &[]);
    let once_log = format!("node-{fresh}");
    let me = c.node_ids[fresh - 1];
    // the NMS's plan is a chain in id order: one daemon before the one-shot agent (its
    // parent), two after it (its child relays to the last); or, if its id is so low that
    // none is found below it, it heads the chain
    let mid = reidentify(&mut c, 1, 20_000, |id| *id < me);
    for i in if mid { 2..=3 } else { 1..=3 } {
        assert!(reidentify(&mut c, i, 20_000, |id| *id > me));
    }
    let mut chain = c.node_ids.clone();
    chain.sort();
    let at = chain.iter().position(|id| *id == me).unwrap();
    assert!(at + 1 < chain.len(), "the one-shot agent must have a child");
    let child = chain[at + 1];
    assert_eq!(at, usize::from(mid), "{chain:?}");
    eprintln!("the one-shot agent is number {} of the chain of 4", at + 1);
    for i in 1..=3 {
        c.start_node(i, &[]).unwrap();
    }
    let nms_args: Vec<String> = [
        "--once",
        "--json",
        "--min-nodes",
        "4",
        "--settle",
        "1",
        "--discovery-timeout",
        "40",
    ]
    .map(String::from)
    .to_vec();
    let nms = c.start_nms(&nms_args, true, &[]).unwrap();
    let hash = c.drop_package("frob-1.0.tar.gz", SIZE, 11).unwrap();

    // it exits by itself, with status 0
    let st = once.wait(Duration::from_secs(60));
    let log = c.log(&once_log);
    assert!(st.is_some(), "the one-shot agent is still running:\n{log}");
    assert!(st.unwrap().success(), "the one-shot agent: {st:?}\n{log}");
    // it installed the exact bytes, in the data directory, and nothing else is left there
    assert_eq!(c.installed_hash(fresh, PKG), Some(hash), "{log}");
    assert_eq!(
        dir_names(&data),
        vec!["packages".to_string()],
        "left in {}:\n{log}",
        data.display()
    );
    assert!(log.contains("removed the temporary state"), "{log}");
    assert!(log.contains("installed frob 1.0 (sequence 1)"), "{log}");
    eprintln!("the one-shot agent's last lines:\n{}", tail(&log, 4));
    // it served its child until the child had the package: it ends only after the relay
    // is done (the child's receipt)
    let total_chunks = SIZE / (128 << 10);
    let served_chunks = log
        .split(", served ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        served_chunks.is_some_and(|n| n >= total_chunks),
        "the one-shot agent did not serve its child the whole package ({served_chunks:?} of {total_chunks} chunks):\n{log}"
    );

    let s = &c.assert_installed(nms, Duration::from_secs(60), 1..=3, PKG, hash);
    assert_eq!(s["installed"], 4, "{s}");
    let served = served_bytes(s, &me);
    assert!(
        served >= SIZE,
        "the NMS saw the one-shot agent serve {served} bytes, less than the package: {s}"
    );
    eprintln!(
        "the one-shot agent served {served} bytes to {child}, exited 0, left only packages/; {:.1} s in all",
        t0.elapsed().as_secs_f64()
    );
    c.teardown();
}

#[test]
fn a_one_shot_agent_whose_install_fails_exits_non_zero_with_the_reason_and_cleans_up() {
    if !netns::available_for_tests() {
        return;
    }
    // hosts: 0 the NMS, 1 a daemon, 2 the fresh machine whose install command fails
    let mut c = Cluster::create(&NetSpec::with_hosts(3), PathBuf::from(testbed())).expect("cluster");
    let fresh = 2;
    let data = c.node_dir(fresh);
    let mut once = start_once(
        &mut c,
        fresh,
        &[],
        &["--install-cmd", "echo the disk says no; exit 3"],
    );
    let once_log = format!("node-{fresh}");
    c.start_node(1, &[]).unwrap();
    let nms_args: Vec<String> = ["--once", "--json", "--min-nodes", "2", "--settle", "1"]
        .map(String::from)
        .to_vec();
    let nms = c.start_nms(&nms_args, true, &[]).unwrap();
    let hash = c.drop_package("frob-1.0.tar.gz", 1 << 20, 12).unwrap();
    let st = once.wait(Duration::from_secs(60));
    let log = c.log(&once_log);
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(2),
        "the one-shot agent: {st:?}\n{log}"
    );
    assert!(
        log.contains("--once: the campaign failed on this machine: frob (sequence 1): install command")
            && log.contains("exited with exit status: 3")
            && log.contains("the disk says no"),
        "{log}"
    );
    assert_eq!(c.installed_hash(fresh, PKG), None);
    // the failed version was removed; only the (empty) packages folder remains
    assert_eq!(dir_names(&data), vec!["packages".to_string()], "{log}");
    assert!(log.contains("removed the temporary state"), "{log}");
    eprintln!("the one-shot agent's last lines:\n{}", tail(&log, 4));
    let st = c.wait(nms, Duration::from_secs(60), &never).unwrap();
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(1),
        "the NMS reports the failure:\n{}",
        c.log("nms")
    );
    assert_eq!(c.installed_hash(1, PKG), Some(hash));
    let s = &c.summaries()[0];
    assert_eq!(s["installed"], 1, "{s}");
    c.teardown();
}

#[test]
fn a_fresh_machine_joining_a_running_fleet_gets_the_current_version_and_exits() {
    if !netns::available_for_tests() {
        return;
    }
    // hosts: 0 the NMS (it keeps running), 1 a daemon, 2 the fresh machine, started
    // after the package was distributed
    let mut c = Cluster::create(&NetSpec::with_hosts(3), PathBuf::from(testbed())).expect("cluster");
    c.start_node(1, &[]).unwrap();
    let nms_args: Vec<String> = ["--json", "--min-nodes", "1", "--settle", "1"]
        .map(String::from)
        .to_vec();
    c.start_nms(&nms_args, true, &[]).unwrap();
    let hash = c.drop_package("frob-1.0.tar.gz", 2 << 20, 13).unwrap();
    assert!(
        c.wait_until(Duration::from_secs(60), |c| c.installed_hash(1, PKG)
            == Some(hash)),
        "the daemon did not install:\n{}",
        c.log("node-1")
    );
    let fresh = 2;
    let data = c.node_dir(fresh);
    let mut once = start_once(&mut c, fresh, &["--timeout", "60s"], &[]);
    // a late joiner: the NMS sends it the current version in a follow-up campaign
    let st = once.wait(Duration::from_secs(60));
    let log = c.log(&format!("node-{fresh}"));
    assert!(
        st.is_some_and(|s| s.success()),
        "the one-shot agent: {st:?}\n{log}"
    );
    assert!(log.contains("installed frob 1.0 (sequence 1)"), "{log}");
    assert_eq!(c.installed_hash(fresh, PKG), Some(hash), "{log}");
    assert_eq!(dir_names(&data), vec!["packages".to_string()], "{log}");
    let me = c.node_ids[fresh - 1].to_string();
    assert!(
        c.wait_until(Duration::from_secs(10), |c| c.summaries().iter().any(|s| {
            s["per_node"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|n| n["node"] == me.as_str() && n["status"] == "installed")
            })
        })),
        "the NMS's summaries do not show the one-shot agent installed:\n{}",
        c.log("nms")
    );
    // run again on the provisioned machine: a new identity, so a new late joiner to the
    // NMS, offered the version it holds: it says so and ends at once, with status 0
    let first = c.node_ids[fresh - 1];
    let mut again = run_once(&mut c, fresh, &["--timeout", "60s"], &[]);
    assert_ne!(c.node_ids[fresh - 1], first, "the identity was not temporary");
    let st = again.wait(Duration::from_secs(60));
    let log = c.log(&format!("node-{fresh}"));
    assert!(
        st.is_some_and(|s| s.success()),
        "the one-shot agent run again: {st:?}\n{log}"
    );
    assert!(
        log.contains("nothing to download") && log.contains("frob sequence 1 is installed"),
        "{log}"
    );
    assert_eq!(c.installed_hash(fresh, PKG), Some(hash), "{log}");
    assert_eq!(dir_names(&data), vec!["packages".to_string()], "{log}");
    c.teardown();
}

/// Runs the script with `args`.
fn run_script(args: &[&str]) -> Output {
    Command::new("bash").arg(script()).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const SOME_NMS: &str = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo";

#[test]
fn the_bootstrap_script_checks_the_binary_before_running_it() {
    let d = tempfile::tempdir().unwrap();
    let o = run_script(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("usage:") && text(&o).contains("--binary is required"),
        "{}",
        text(&o)
    );
    let bin = node_binary(d.path());
    let o = run_script(&["--binary", bin.to_str().unwrap(), "--trust", "nms"]);
    assert!(text(&o).contains("is not a peer id"), "{}", text(&o));
    // not executable
    let plain = d.path().join("plain");
    fs::write(&plain, "#!/bin/sh\n").unwrap();
    let o = run_script(&["--binary", plain.to_str().unwrap(), "--trust", SOME_NMS]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("is not executable: chmod +x"), "{}", text(&o));
    // built for another machine: an ELF header of another architecture
    let other = d.path().join("other-arch");
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(64, 0);
    elf[18] = if cfg!(target_arch = "aarch64") { 0x3e } else { 0xb7 }; // x86-64 / AArch64
    fs::write(&other, elf).unwrap();
    fs::set_permissions(&other, fs::Permissions::from_mode(0o755)).unwrap();
    let o = run_script(&["--binary", other.to_str().unwrap(), "--trust", SOME_NMS]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("does not run on this machine")
            && text(&o).contains("use the baton-node built for"),
        "{}",
        text(&o)
    );
    // another program
    let o = run_script(&["--binary", "/bin/ls", "--trust", SOME_NMS]);
    assert!(text(&o).contains("is not baton-node"), "{}", text(&o));
    // options of one mode with the other
    let o = run_script(&[
        "--binary",
        bin.to_str().unwrap(),
        "--trust",
        SOME_NMS,
        "--no-start",
    ]);
    assert!(text(&o).contains("are for --permanent"), "{}", text(&o));
}

#[test]
fn the_bootstrap_script_installs_a_permanent_agent_as_a_systemd_unit() {
    let d = tempfile::tempdir().unwrap();
    let bin = node_binary(d.path());
    let (bin_dir, unit_dir) = (d.path().join("bin"), d.path().join("units"));
    let o = run_script(&[
        "--permanent",
        "--no-start",
        "--binary",
        bin.to_str().unwrap(),
        "--trust",
        SOME_NMS,
        "--data-dir",
        "/srv/baton node",
        "--bin-dir",
        bin_dir.to_str().unwrap(),
        "--unit-dir",
        unit_dir.to_str().unwrap(),
        "--",
        "--tag",
        "lab",
        "--install-cmd",
        "tar -xzf \"$BATON_PACKAGE\" -C /opt/frob && echo 100%",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o)
            .contains("systemctl daemon-reload && systemctl enable baton-node.service && systemctl restart"),
        "{}",
        text(&o)
    );
    let installed = bin_dir.join("baton-node");
    assert_eq!(fs::read(&installed).unwrap(), fs::read(&bin).unwrap());
    assert_eq!(
        fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let unit = fs::read_to_string(unit_dir.join("baton-node.service")).unwrap();
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert_eq!(
        exec,
        format!(
            "ExecStart={} --data-dir \"/srv/baton node\" --trust {SOME_NMS} --tag lab --install-cmd \"tar -xzf \\\"$$BATON_PACKAGE\\\" -C /opt/frob && echo 100%%\"",
            installed.display()
        )
    );
    for line in [
        "WantedBy=multi-user.target",
        "Restart=on-failure",
        "After=network-online.target",
    ] {
        assert!(unit.contains(line), "{unit}");
    }
    assert_eq!(
        dir_names(&unit_dir),
        vec!["baton-node.service".to_string()],
        "no temporary file left"
    );
    // a folder it cannot make or write to is named, with what to do (under a plain
    // file: root can write to any folder)
    let ro = d.path().join("a-file");
    fs::write(&ro, "").unwrap();
    let o = run_script(&[
        "--permanent",
        "--no-start",
        "--binary",
        bin.to_str().unwrap(),
        "--trust",
        SOME_NMS,
        "--bin-dir",
        ro.join("bin").to_str().unwrap(),
        "--unit-dir",
        unit_dir.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("cannot write to") && text(&o).contains("run this as root"),
        "{}",
        text(&o)
    );
}

/// Starts a one-shot agent on loopback without mDNS (no NMS: nothing will come), logging
/// to `log`.
fn lone_agent(data: &Path, log: &Path, extra: &[&str]) -> Started {
    let f = fs::File::create(log).unwrap();
    Started(
        Command::new(testbed())
            .args(["node", "--once", "--no-mdns", "--listen", "127.0.0.1:0"])
            .args(["--data-dir", data.to_str().unwrap(), "--trust", SOME_NMS])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap(),
    )
}

#[test]
fn a_one_shot_agent_that_times_out_says_why_and_removes_its_state() {
    let d = tempfile::tempdir().unwrap();
    let (data, log) = (d.path().join("data"), d.path().join("log"));
    let mut a = lone_agent(&data, &log, &["--once-timeout", "2s"]);
    let st = a.wait(Duration::from_secs(30));
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(st.and_then(|s| s.code()), Some(2), "{text}");
    assert!(
        text.contains("no campaign finished within 2 s: no offer arrived"),
        "{text}"
    );
    assert_eq!(dir_names(&data), vec!["packages".to_string()], "{text}");
}

#[test]
fn a_one_shot_agent_stopped_by_sigterm_removes_its_state_and_fails() {
    stopped_by("TERM");
}

/// The terminal or SSH session the agent ran in closed.
#[test]
fn a_one_shot_agent_stopped_by_sighup_removes_its_state_and_fails() {
    stopped_by("HUP");
}

/// A one-shot agent gets `SIG<signal>` before any campaign: it says so, exits 2 and
/// leaves only `packages/`.
fn stopped_by(signal: &str) {
    let d = tempfile::tempdir().unwrap();
    let (data, log) = (d.path().join("data"), d.path().join("log"));
    let mut a = lone_agent(&data, &log, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while printed_id(&fs::read_to_string(&log).unwrap_or_default()).is_none() {
        assert!(Instant::now() < deadline, "{}", fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let state: Vec<String> = dir_names(&data)
        .into_iter()
        .filter(|n| n.starts_with(".once-"))
        .collect();
    assert_eq!(state.len(), 1, "{:?}", dir_names(&data));
    assert!(data.join(&state[0]).join("identity.key").exists());
    let pid = a.0.id().to_string();
    assert!(
        Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success()
    );
    let st = a.wait(Duration::from_secs(20));
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(st.and_then(|s| s.code()), Some(2), "{text}");
    assert!(
        text.contains(&format!("stopped by SIG{signal} before a campaign finished")),
        "{text}"
    );
    assert_eq!(dir_names(&data), vec!["packages".to_string()], "{text}");
}

#[test]
fn keep_identity_keeps_the_peer_id_for_the_next_agent() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let mut ids = Vec::new();
    for run in 0..2 {
        let log = d.path().join(format!("log-{run}"));
        let mut a = lone_agent(&data, &log, &["--keep-identity", "--once-timeout", "1s"]);
        let st = a.wait(Duration::from_secs(30));
        let text = fs::read_to_string(&log).unwrap();
        assert_eq!(st.and_then(|s| s.code()), Some(2), "{text}");
        ids.push(printed_id(&text).unwrap());
    }
    assert_eq!(ids[0], ids[1], "the identity was not kept");
    assert!(data.join("identity.key").exists());
    assert!(!dir_names(&data).iter().any(|n| n.starts_with(".once-")));
}
