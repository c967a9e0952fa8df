//! Private multi-host test networks built from Linux network namespaces.
//!
//! A [`Net`] is a small LAN that lives entirely on this machine:
//!
//! * one namespace (`baton-<pid>-<k>-br`) holds a Linux bridge `br0`; the
//!   bridge lives in its own namespace, so it can never be attached to a real
//!   interface of the machine;
//! * every host `i` is a namespace `baton-<pid>-<k>-h<i>` with a veth `eth0`
//!   whose peer `vh<i>` sits in the bridge namespace, enslaved to `br0`;
//! * host `i` has the address [`host_addr`]`(i)` out of the benchmarking range
//!   198.18.0.0/15 (prefix [`PREFIX_LEN`], broadcast 198.19.255.255), `lo` is
//!   up, there is a route for multicast (`224.0.0.0/4 dev eth0`) and **no
//!   default route**: a packet to any other address fails at once with
//!   "network unreachable". IPv6 is disabled in every namespace.
//!
//! Shaping (optional) uses `tc`: a `tbf` on the host's `eth0` (its egress)
//! and one on the bridge-side peer `vh<i>` (its ingress). Delay and loss use
//! `netem` on the host's egress when the kernel has it (netem is then the
//! root qdisc and the tbf its child). Without netem (as on kernels built
//! without `CONFIG_NET_SCH_NETEM`), loss is emulated with a classic-BPF
//! filter drawing a random number on the `clsact` egress hook that redirects
//! the chosen packets to a down `ifb` device (which drops them), and delay is
//! refused with a clear error. See [`netem_supported`].
//!
//! Every namespace is removed by [`Net::teardown`], which [`Drop`] calls (so
//! also when a test panics); processes still running inside are killed first.
//! Namespaces left behind by a crashed process are removed by
//! [`clean_stale`].
//!
//! Everything needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2;
//! [`check_privileges`] says whether that is available and, if not, why.
//! No `unsafe`: commands run inside a namespace through `ip netns exec`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Every namespace this module creates starts with this.
pub const NAME_PREFIX: &str = "baton-";
/// Prefix length of the host addresses (198.18.0.0/15).
pub const PREFIX_LEN: u8 = 15;
/// Most hosts one [`Net`] can have (a Linux bridge takes at most 1024 ports).
pub const MAX_HOSTS: usize = 1000;
/// Name of every host's interface.
pub const HOST_IFACE: &str = "eth0";
/// Name of the bridge inside the bridge namespace.
pub const BRIDGE_IFACE: &str = "br0";
/// Hint shown when the privileges or tools are missing.
pub const PRIVILEGE_HINT: &str =
    "needs root (CAP_NET_ADMIN) and iproute2: run as root or install iproute2 with apt-get install iproute2";

/// The down `ifb` device the BPF loss filter redirects dropped packets to.
const DROP_IFACE: &str = "drop0";
/// Smallest tbf bucket, in bytes.
const MIN_BURST_BYTES: u64 = 32 * 1024;
/// How long a packet may wait in a tbf before it is dropped.
const TBF_LATENCY: &str = "50ms";
/// netem's queue length, in packets (its default of 1000 is too small for
/// delay at high rates).
const NETEM_LIMIT: &str = "100000";
/// Capabilities needed: CAP_NET_ADMIN (12) and CAP_SYS_ADMIN (21, for the
/// mounts of `ip netns add` / `ip netns exec`).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Per-process counter `k` in the namespace names, so that several nets made
/// by one process (tests in parallel threads) never collide.
static NEXT_NET: AtomicU64 = AtomicU64::new(0);
/// `ip netns add` is serialised within the process: the first one on a
/// machine sets up the `/run/netns` mount, and two doing that at once can
/// stack two mounts there.
static NETNS_ADD_LOCK: Mutex<()> = Mutex::new(());

/// What network to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// Number of hosts (1..=[`MAX_HOSTS`]).
    pub hosts: usize,
    /// Rate limit for every host, both directions, in `tc` syntax
    /// (`"100mbit"`, `"1gbit"`, `"500kbit"`, `"10mbps"` = 10 megabytes/s).
    pub rate: Option<String>,
    /// Per-host overrides of `rate` (host index -> rate).
    pub per_host_rate: BTreeMap<usize, String>,
    /// netem delay added to every host's egress, e.g. `"20ms"` or
    /// `"20ms 5ms"` (with jitter). Between two hosts a packet is delayed once,
    /// so the round trip grows by twice this. Needs netem in the kernel.
    pub delay: Option<String>,
    /// Random loss on every host's egress in percent, e.g. `"1%"` or `"0.5"`.
    pub loss: Option<String>,
}

impl Default for NetSpec {
    fn default() -> Self {
        NetSpec {
            hosts: 2,
            rate: None,
            per_host_rate: BTreeMap::new(),
            delay: None,
            loss: None,
        }
    }
}

impl NetSpec {
    /// A spec for `hosts` unshaped hosts.
    pub fn with_hosts(hosts: usize) -> Self {
        NetSpec {
            hosts,
            ..NetSpec::default()
        }
    }
}

/// One host of a [`Net`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Index of the host (0-based).
    pub index: usize,
    /// Name of the host's network namespace.
    pub netns: String,
    /// The host's address on `eth0`.
    pub addr: Ipv4Addr,
    /// Name of the bridge-side peer of the host's `eth0` (in the bridge
    /// namespace).
    pub peer: String,
    /// The rate the host is shaped to, in bits per second (None: unshaped).
    pub rate_bps: Option<u64>,
}

/// A running private network; removed on [`Net::teardown`] or drop.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    bridge_netns: String,
    hosts: Vec<Host>,
    /// Namespaces made and not yet removed, in the order they were made.
    live: Vec<String>,
}

/// A command that exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed ({status}): {stderr}")]
pub struct CommandError {
    /// The command line.
    pub command: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard error, trimmed.
    pub stderr: String,
}

/// The address of host `i`: 198.18.(i / 250).(i % 250 + 1).
pub fn host_addr(i: usize) -> Ipv4Addr {
    assert!(i < MAX_HOSTS, "host index {i} out of range");
    // i < 1000, so both fit in a byte.
    Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8)
}

impl Net {
    /// Builds the network. On a failure midway everything made so far is
    /// removed again.
    pub fn create(spec: &NetSpec) -> Result<Net> {
        Net::create_inner(spec, None)
    }

    fn create_inner(spec: &NetSpec, fail_at_host: Option<usize>) -> Result<Net> {
        check_privileges().map_err(anyhow::Error::msg)?;
        let plan = Plan::from_spec(spec)?;
        let prefix = allocate_prefix()?;
        let mut net = Net {
            bridge_netns: format!("{prefix}-br"),
            prefix,
            hosts: Vec::with_capacity(plan.rates.len()),
            live: Vec::new(),
        };
        if let Err(err) = net.build(&plan, fail_at_host) {
            let err = err.context(format!("building test network {}", net.prefix));
            return match net.teardown() {
                Ok(()) => Err(err),
                Err(cleanup) => {
                    Err(err.context(format!("and removing what was made failed too: {cleanup:#}")))
                }
            };
        }
        tracing::debug!(prefix = %net.prefix, hosts = net.hosts.len(), "netns: network ready");
        Ok(net)
    }

    fn build(&mut self, plan: &Plan, fail_at_host: Option<usize>) -> Result<()> {
        let br = self.bridge_netns.clone();
        add_netns(&br)?;
        self.live.push(br.clone());
        disable_ipv6(&br)?;
        // Bridged frames need not go through (empty) iptables chains; the
        // keys exist only when br_netfilter is loaded, hence -e and no `?`.
        let _ = run(ip_exec(&br, sysctl_path()).args(words(
            "-q -e -w net.bridge.bridge-nf-call-iptables=0 \
             net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0",
        )));
        ip_n(&br, "link set lo up")?;
        // No STP, no forward delay, no multicast snooping: multicast (mDNS)
        // is flooded to every port without needing an IGMP querier.
        ip_n(
            &br,
            &format!("link add {BRIDGE_IFACE} type bridge stp_state 0 forward_delay 0 mcast_snooping 0"),
        )?;
        ip_n(&br, &format!("link set {BRIDGE_IFACE} up"))?;
        for (i, rate) in plan.rates.iter().enumerate() {
            if fail_at_host == Some(i) {
                bail!("injected failure at host {i}");
            }
            self.add_host(i, *rate, plan)
                .with_context(|| format!("setting up host {i}"))?;
        }
        Ok(())
    }

    fn add_host(&mut self, i: usize, rate_bps: Option<u64>, plan: &Plan) -> Result<()> {
        let br = &self.bridge_netns;
        let ns = format!("{}-h{i}", self.prefix);
        let peer = format!("vh{i}");
        let addr = host_addr(i);
        add_netns(&ns)?;
        self.live.push(ns.clone());
        disable_ipv6(&ns)?;
        ip_n(&ns, "link set lo up")?;
        // Both ends are made in the bridge namespace and `eth0` is moved at
        // once: nothing ever appears in the root namespace.
        ip_n(
            br,
            &format!("link add {peer} type veth peer name {HOST_IFACE} netns {ns}"),
        )?;
        ip_n(br, &format!("link set {peer} master {BRIDGE_IFACE}"))?;
        ip_n(br, &format!("link set {peer} up"))?;
        ip_n(
            &ns,
            &format!("addr add {addr}/{PREFIX_LEN} brd + dev {HOST_IFACE}"),
        )?;
        ip_n(&ns, &format!("link set {HOST_IFACE} up"))?;
        ip_n(&ns, &format!("route add 224.0.0.0/4 dev {HOST_IFACE}"))?;

        // Host egress: netem (root) with the tbf as its child, or the tbf alone.
        let dev = format!("qdisc add dev {HOST_IFACE}");
        match (&plan.netem, rate_bps) {
            (Some(netem), rate) => {
                tc_n(&ns, &format!("{dev} root handle 1: netem {netem}"))?;
                if let Some(bps) = rate {
                    tc_n(&ns, &format!("{dev} parent 1:1 handle 10: {}", tbf(bps)))?;
                }
            }
            (None, Some(bps)) => {
                tc_n(&ns, &format!("{dev} root handle 1: {}", tbf(bps)))?;
            }
            (None, None) => {}
        }
        if let Some(threshold) = plan.bpf_loss {
            add_bpf_loss(&ns, threshold)?;
        }
        // Host ingress = egress of the bridge-side peer.
        if let Some(bps) = rate_bps {
            tc_n(br, &format!("qdisc add dev {peer} root handle 1: {}", tbf(bps)))?;
        }
        self.hosts.push(Host {
            index: i,
            netns: ns,
            addr,
            peer,
            rate_bps,
        });
        Ok(())
    }

    /// All hosts, by index.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`; panics when there is no such host.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// The `baton-<pid>-<k>` part every namespace name of this net starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Name of the namespace that holds the bridge.
    pub fn bridge_netns(&self) -> &str {
        &self.bridge_netns
    }

    /// Names of the namespaces of this net that still exist (bridge first).
    pub fn netns_names(&self) -> &[String] {
        &self.live
    }

    /// `ip netns exec <host i's namespace> <program>`; add arguments, stdio
    /// and so on to it as to any `Command`. Whatever runs inside is killed
    /// on teardown.
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        ip_exec(&self.host(i).netns, program.as_ref())
    }

    /// Runs `program args..` in host `i` to completion and returns its
    /// standard output; a non-zero exit is an error showing the command
    /// line and its standard error.
    pub fn exec<I, S>(&self, i: usize, program: impl AsRef<OsStr>, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.command(i, program).args(args))
    }

    /// Bytes sent by host `i`'s `eth0`.
    pub fn tx_bytes(&self, i: usize) -> Result<u64> {
        self.counter(i, "tx_bytes")
    }

    /// Bytes received by host `i`'s `eth0`.
    pub fn rx_bytes(&self, i: usize) -> Result<u64> {
        self.counter(i, "rx_bytes")
    }

    /// Packets sent by host `i`'s `eth0`.
    pub fn tx_packets(&self, i: usize) -> Result<u64> {
        self.counter(i, "tx_packets")
    }

    /// Packets received by host `i`'s `eth0`.
    pub fn rx_packets(&self, i: usize) -> Result<u64> {
        self.counter(i, "rx_packets")
    }

    fn counter(&self, i: usize, name: &str) -> Result<u64> {
        // `ip netns exec` mounts the namespace's own /sys.
        let path = format!("/sys/class/net/{HOST_IFACE}/statistics/{name}");
        let out = self.exec(i, "cat", [&path])?;
        out.trim()
            .parse()
            .with_context(|| format!("bad counter {name} of host {i}: {out:?}"))
    }

    /// `tc -s qdisc` (and filters) of host `i`'s `eth0` (egress) and of its
    /// bridge-side peer (the host's ingress), for checking shaping.
    pub fn tc_stats(&self, i: usize) -> Result<String> {
        let host = self.host(i);
        let egress = tc_n(&host.netns, &format!("-s qdisc show dev {HOST_IFACE}"))?;
        let filters =
            tc_n(&host.netns, &format!("-s filter show dev {HOST_IFACE} egress")).unwrap_or_default();
        let ingress = tc_n(&self.bridge_netns, &format!("-s qdisc show dev {}", host.peer))?;
        Ok(format!(
            "egress ({} {HOST_IFACE}):\n{egress}{filters}ingress ({} {}):\n{ingress}",
            host.netns, self.bridge_netns, host.peer
        ))
    }

    /// Kills the processes inside the net's namespaces and removes the
    /// namespaces (which removes the veths and the bridge). Idempotent: a
    /// second call does nothing; after a failure a later call retries what
    /// is left.
    pub fn teardown(&mut self) -> Result<()> {
        if self.live.is_empty() {
            return Ok(());
        }
        let leftover = remove_namespaces(&self.live);
        self.live.retain(|ns| leftover.iter().any(|(name, _)| name == ns));
        if leftover.is_empty() {
            tracing::debug!(prefix = %self.prefix, "netns: network removed");
            return Ok(());
        }
        let lines: Vec<String> = leftover.iter().map(|(_, e)| format!("{e:#}")).collect();
        bail!(
            "removing test network {} left namespaces behind: {}",
            self.prefix,
            lines.join("; ")
        )
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Err(err) = self.teardown() {
            tracing::error!("netns: {err:#}");
            eprintln!("netns: {err:#} (run clean_stale() after this process exits)");
        }
    }
}

/// Removes every namespace named `baton-<pid>-...` whose process `<pid>` is
/// no longer alive (left by a crash), killing the processes still running
/// inside first. Namespaces of live processes and names not starting with
/// `baton-<digits>-` are never touched. Returns the names removed.
pub fn clean_stale() -> Result<Vec<String>> {
    let stale: Vec<String> = list_netns()?
        .into_iter()
        .filter(|name| owner_pid(name).is_some_and(|pid| !pid_alive(pid)))
        .collect();
    if stale.is_empty() {
        return Ok(stale);
    }
    tracing::info!(?stale, "netns: removing stale namespaces");
    let leftover = remove_namespaces(&stale);
    if leftover.is_empty() {
        return Ok(stale);
    }
    let lines: Vec<String> = leftover.iter().map(|(_, e)| format!("{e:#}")).collect();
    bail!("removing stale namespaces failed: {}", lines.join("; "))
}

/// For integration tests: true when this process may build namespaces. Otherwise prints
/// why the test is skipped and returns false, or panics when `BATON_REQUIRE_NETNS` is set
/// (as `.ci/run` does), so that a missing privilege fails there instead.
pub fn available_for_tests() -> bool {
    match check_privileges() {
        Ok(()) => true,
        Err(why) if std::env::var_os("BATON_REQUIRE_NETNS").is_some() => {
            panic!("BATON_REQUIRE_NETNS is set but namespaces are unavailable: {why}")
        }
        Err(why) => {
            eprintln!("skipped: needs root to create network namespaces ({why}); run the tests as root");
            false
        }
    }
}

/// Whether this process may build networks: `ip` and `tc` are there, it has
/// CAP_NET_ADMIN and CAP_SYS_ADMIN, and `ip netns add` works (tried once
/// per process with a probe namespace). The error explains what is missing.
pub fn check_privileges() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT.get_or_init(probe_privileges).clone()
}

/// Whether the kernel has the netem qdisc (needed for [`NetSpec::delay`]);
/// tried once per process in a probe namespace. False without privileges.
pub fn netem_supported() -> bool {
    static RESULT: OnceLock<bool> = OnceLock::new();
    *RESULT.get_or_init(|| {
        if check_privileges().is_err() {
            return false;
        }
        let Ok(name) = allocate_prefix().map(|p| format!("{p}-probe")) else {
            return false;
        };
        if add_netns(&name).is_err() {
            return false;
        }
        let ok = tc_n(&name, "qdisc add dev lo root netem delay 1ms").is_ok();
        if let Err(err) = delete_netns(&name) {
            tracing::warn!("netns: {err:#}");
        }
        ok
    })
}

fn probe_privileges() -> Result<(), String> {
    for tool in ["ip", "tc"] {
        if find_tool(tool).is_none() {
            return Err(format!(
                "{PRIVILEGE_HINT} (`{tool}` not found in PATH, /usr/sbin or /sbin)"
            ));
        }
    }
    if let Some(missing) = missing_capabilities() {
        return Err(format!("{PRIVILEGE_HINT} (this process lacks {missing})"));
    }
    let name = allocate_prefix()
        .map(|p| format!("{p}-probe"))
        .map_err(|e| format!("{PRIVILEGE_HINT} (`ip netns list` failed: {e:#})"))?;
    add_netns(&name).map_err(|e| format!("{PRIVILEGE_HINT} (`ip netns add` failed: {e:#})"))?;
    delete_netns(&name).map_err(|e| format!("{PRIVILEGE_HINT} (`ip netns del` failed: {e:#})"))
}

/// Which of the needed capabilities the effective set lacks, from
/// /proc/self/status (None when all are there or it cannot be read).
fn missing_capabilities() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    let eff = u64::from_str_radix(hex, 16).ok()?;
    let missing: Vec<&str> = [(CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")]
        .into_iter()
        .filter(|(bit, _)| eff & (1 << bit) == 0)
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(missing.join(" and "))
    }
}

/// A validated [`NetSpec`].
#[derive(Debug)]
struct Plan {
    /// Rate of each host in bit/s.
    rates: Vec<Option<u64>>,
    /// Arguments after `netem`, when delay/loss is done by netem.
    netem: Option<String>,
    /// Random-number threshold below which the BPF loss filter drops a
    /// packet, when loss is done without netem.
    bpf_loss: Option<u32>,
}

impl Plan {
    fn from_spec(spec: &NetSpec) -> Result<Plan> {
        Plan::from_spec_with(spec, netem_supported)
    }

    fn from_spec_with(spec: &NetSpec, netem: impl FnOnce() -> bool) -> Result<Plan> {
        if spec.hosts == 0 || spec.hosts > MAX_HOSTS {
            bail!("a net needs 1..={MAX_HOSTS} hosts, not {}", spec.hosts);
        }
        let default = spec
            .rate
            .as_deref()
            .map(parse_rate)
            .transpose()
            .context("bad NetSpec::rate")?;
        let mut rates = vec![default; spec.hosts];
        for (&i, rate) in &spec.per_host_rate {
            let Some(slot) = rates.get_mut(i) else {
                bail!(
                    "NetSpec::per_host_rate names host {i}, but there are only {} hosts",
                    spec.hosts
                );
            };
            *slot = Some(parse_rate(rate).with_context(|| format!("bad rate of host {i}"))?);
        }
        let delay: Option<Vec<String>> = match spec.delay.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(d) => Some(d.split_whitespace().map(str::to_owned).collect()),
        };
        let loss = match spec.loss.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(l) => Some(parse_percent(l).context("bad NetSpec::loss")?),
        }
        .filter(|&p| p > 0.0);
        let mut plan = Plan {
            rates,
            netem: None,
            bpf_loss: None,
        };
        if delay.is_none() && loss.is_none() {
            return Ok(plan);
        }
        if netem() {
            let mut args = Vec::new();
            if let Some(delay) = delay {
                args.push("delay".to_owned());
                args.extend(delay);
            }
            if let Some(loss) = loss {
                args.extend(["loss".to_owned(), format!("{loss}%")]);
            }
            args.extend(["limit".to_owned(), NETEM_LIMIT.to_owned()]);
            plan.netem = Some(args.join(" "));
        } else if delay.is_some() {
            bail!(
                "NetSpec::delay needs the netem qdisc, which this kernel does not have \
                 (CONFIG_NET_SCH_NETEM unset, `tc qdisc add ... netem` says \
                 \"Specified qdisc kind is unknown\"); loss works without it"
            );
        } else if let Some(loss) = loss {
            plan.bpf_loss = Some(loss_threshold(loss));
        }
        Ok(plan)
    }
}

/// Parses a rate in tc syntax into bits per second: a number, optionally
/// followed by `bit`, `kbit`, `mbit`, `gbit`, `tbit`, their IEC forms
/// (`kibit`, ...), or a bytes-per-second unit (`bps`, `kbps`, `mbps`,
/// `gbps`, `tbps`, `kibps`, ...). Case-insensitive, as in tc; a bare number
/// is bits per second.
pub fn parse_rate(rate: &str) -> Result<u64> {
    let s = rate.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .with_context(|| format!("rate {rate:?}: expected a number followed by a unit like mbit"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let (prefix, bytes) = if let Some(p) = unit.strip_suffix("bit") {
        (p, false)
    } else if let Some(p) = unit.strip_suffix("bps") {
        (p, true)
    } else if unit.is_empty() {
        ("", false)
    } else {
        bail!("rate {rate:?}: unknown unit {unit:?} (use bit, kbit, mbit, gbit, or bps, kbps, mbps)");
    };
    let scale: f64 = match prefix {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        "ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => bail!("rate {rate:?}: unknown unit {unit:?}"),
    };
    let bits = value * scale * if bytes { 8.0 } else { 1.0 };
    if !bits.is_finite() || !(8.0..=1e15).contains(&bits) {
        bail!("rate {rate:?} is out of range");
    }
    Ok(bits.round() as u64)
}

/// Parses `"5%"`, `"5"` or `"0.5%"` into a percentage in 0..=100.
fn parse_percent(s: &str) -> Result<f64> {
    let num = s.trim().trim_end_matches('%').trim();
    let value: f64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a percentage like \"1%\""))?;
    if !(0.0..=100.0).contains(&value) {
        bail!("{s:?} is not within 0..100%");
    }
    Ok(value)
}

/// The tbf bucket for a rate: 10 ms worth of traffic, at least 32 KiB.
fn burst_bytes(bps: u64) -> u64 {
    (bps / 8 / 100).max(MIN_BURST_BYTES)
}

/// `tbf rate <bps>bit burst <bytes> latency 50ms`.
fn tbf(bps: u64) -> String {
    format!(
        "tbf rate {bps}bit burst {} latency {TBF_LATENCY}",
        burst_bytes(bps)
    )
}

/// The random-number threshold for a loss percentage.
fn loss_threshold(percent: f64) -> u32 {
    let t = (percent / 100.0 * 4_294_967_296.0).round();
    t.clamp(0.0, f64::from(u32::MAX)) as u32
}

/// The classic-BPF program of the loss filter, in `tc ... bpf bytecode`
/// form: load a random u32 (ancillary load SKF_AD_OFF + SKF_AD_RANDOM);
/// if it is >= threshold return 0 (no match, packet passes), else return -1
/// (match: the filter's action runs).
fn loss_bytecode(threshold: u32) -> String {
    const LD_W_ABS: u16 = 0x20;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const SKF_AD_RANDOM: u32 = 0u32.wrapping_sub(0x1000).wrapping_add(56);
    format!(
        "4,{LD_W_ABS} 0 0 {SKF_AD_RANDOM},{JGE_K} 0 1 {threshold},{RET_K} 0 0 0,{RET_K} 0 0 {}",
        u32::MAX
    )
}

/// Random loss on `eth0`'s egress without netem: a down ifb device, a
/// clsact qdisc, and a BPF filter that redirects the chosen packets to the
/// down device, where they are dropped.
fn add_bpf_loss(ns: &str, threshold: u32) -> Result<()> {
    ip_n(ns, &format!("link add {DROP_IFACE} type ifb"))?;
    tc_n(ns, &format!("qdisc add dev {HOST_IFACE} clsact"))?;
    // The bytecode is one argument (it has spaces), hence no `tc_n`.
    run(tc_in(ns)
        .args(words(&format!("filter add dev {HOST_IFACE} egress bpf bytecode")))
        .arg(loss_bytecode(threshold))
        .args(words(&format!("action mirred egress redirect dev {DROP_IFACE}"))))?;
    Ok(())
}

/// Takes the next free `baton-<pid>-<k>`. A name of ours can already exist
/// only when an earlier process with the same pid crashed; `k` skips those.
fn allocate_prefix() -> Result<String> {
    let pid = std::process::id();
    let existing = list_netns()?;
    loop {
        let k = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NAME_PREFIX}{pid}-{k}");
        let dashed = format!("{prefix}-");
        if !existing.iter().any(|n| n.starts_with(&dashed)) {
            return Ok(prefix);
        }
    }
}

/// The pid in a name `baton-<pid>-<rest>`, None for any other name.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, tail) = rest.split_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) || tail.is_empty() {
        return None;
    }
    pid.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Names from `ip netns list` (its lines look like `name` or
/// `name (id: 3)`).
fn list_netns() -> Result<Vec<String>> {
    let out = run(ip().args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

fn add_netns(name: &str) -> Result<()> {
    let _guard = NETNS_ADD_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    run(ip().args(["netns", "add", name]))?;
    Ok(())
}

fn delete_netns(name: &str) -> Result<()> {
    match run(ip().args(["netns", "del", name])) {
        Ok(_) => Ok(()),
        // Already gone counts as removed.
        Err(_) if !list_netns()?.iter().any(|n| n == name) => Ok(()),
        Err(err) => Err(err),
    }
}

/// Kills what runs inside `names`, then deletes them; returns the ones that
/// could not be deleted, with the reason.
fn remove_namespaces(names: &[String]) -> Vec<(String, anyhow::Error)> {
    if let Err(err) = kill_inside(names) {
        tracing::warn!("netns: {err:#}");
    }
    let mut leftover = Vec::new();
    // Hosts before the bridge (the reverse of creation order).
    for name in names.iter().rev() {
        if let Err(err) = delete_netns(name) {
            leftover.push((name.clone(), err));
        }
    }
    leftover
}

/// SIGKILLs every process inside `names` until none is left (or ~2 s pass).
fn kill_inside(names: &[String]) -> Result<()> {
    let me = std::process::id().to_string();
    for _ in 0..100 {
        let mut pids: Vec<String> = Vec::new();
        for name in names {
            // Fails when the namespace is already gone: nothing to kill.
            if let Ok(out) = run(ip().args(["netns", "pids", name])) {
                pids.extend(
                    out.split_whitespace()
                        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()) && *p != me)
                        .map(str::to_owned),
                );
            }
        }
        if pids.is_empty() {
            return Ok(());
        }
        tracing::debug!(?pids, "netns: killing processes left in namespaces");
        // The shell's builtin kill: always there; a pid that exited in the
        // meantime only makes it complain.
        let _ = Command::new("/bin/sh")
            .args(["-c", "kill -KILL \"$@\" 2>/dev/null", "kill"])
            .args(&pids)
            .stdin(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("processes are still running inside {}", names.join(", "))
}

fn disable_ipv6(ns: &str) -> Result<()> {
    run(ip_exec(ns, sysctl_path()).args(words(
        "-q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
    )))?;
    Ok(())
}

/// The words of a command line made of names of our own (no quoting).
fn words(line: &str) -> std::str::SplitWhitespace<'_> {
    line.split_whitespace()
}

/// `ip -n <ns> <words of line>`, run to completion.
fn ip_n(ns: &str, line: &str) -> Result<String> {
    run(ip_in(ns).args(words(line)))
}

/// `tc -n <ns> <words of line>`, run to completion.
fn tc_n(ns: &str, line: &str) -> Result<String> {
    run(tc_in(ns).args(words(line)))
}

/// Looks a tool up in PATH, then in the sbin directories (root's PATH does
/// not always have them).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn tool_path(name: &'static str, cell: &'static OnceLock<PathBuf>) -> &'static Path {
    cell.get_or_init(|| find_tool(name).unwrap_or_else(|| PathBuf::from(name)))
}

fn ip() -> Command {
    static IP: OnceLock<PathBuf> = OnceLock::new();
    Command::new(tool_path("ip", &IP))
}

fn tc() -> Command {
    static TC: OnceLock<PathBuf> = OnceLock::new();
    Command::new(tool_path("tc", &TC))
}

fn sysctl_path() -> PathBuf {
    static SYSCTL: OnceLock<PathBuf> = OnceLock::new();
    tool_path("sysctl", &SYSCTL).to_path_buf()
}

/// `ip -n <ns>`.
fn ip_in(ns: &str) -> Command {
    let mut cmd = ip();
    cmd.args(["-n", ns]);
    cmd
}

/// `tc -n <ns>`.
fn tc_in(ns: &str) -> Command {
    let mut cmd = tc();
    cmd.args(["-n", ns]);
    cmd
}

/// `ip netns exec <ns> <program>`.
fn ip_exec(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = ip();
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// The command line of `cmd`, quoted where needed, for messages.
fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| {
            let arg = arg.to_string_lossy();
            if !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=+,%@".contains(c))
            {
                arg.into_owned()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion (stdin from /dev/null) and returns its standard
/// output; failing to start or exiting non-zero is an error with the command
/// line and its standard error.
fn run(cmd: &mut Command) -> Result<String> {
    let line = command_line(cmd);
    tracing::trace!(command = %line, "netns: running");
    let out = cmd.stdin(Stdio::null()).output().map_err(|err| {
        let hint = if err.kind() == io::ErrorKind::NotFound {
            format!(" ({PRIVILEGE_HINT})")
        } else {
            String::new()
        };
        anyhow::anyhow!("cannot run `{line}`: {err}{hint}")
    })?;
    if !out.status.success() {
        return Err(CommandError {
            command: line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::process::Child;
    use std::time::Instant;

    /// Returns false (after saying so) when the test cannot run here.
    fn privileged(test: &str) -> bool {
        match check_privileges() {
            Ok(()) => true,
            Err(why) => {
                eprintln!("skipped: {test}: {why}");
                false
            }
        }
    }

    fn python() -> &'static str {
        if Path::new("/usr/bin/python3").is_file() {
            "/usr/bin/python3"
        } else {
            "python3"
        }
    }

    /// Listens on argv[1]:argv[2], says "ready", takes one connection, reads
    /// it to the end, prints "<bytes> <seconds from accept to EOF>".
    const RECEIVER: &str = r#"
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(20)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(20)
t = time.monotonic()
n = 0
while True:
    b = c.recv(65536)
    if not b:
        break
    n += len(b)
print(n, time.monotonic() - t, flush=True)
"#;

    /// Connects to argv[1]:argv[2], sends argv[3] bytes, prints the seconds
    /// the connect took.
    const SENDER: &str = r#"
import socket, sys, time
s = socket.socket()
s.settimeout(20)
t = time.monotonic()
s.connect((sys.argv[1], int(sys.argv[2])))
print(time.monotonic() - t, flush=True)
s.sendall(b"\0" * int(sys.argv[3]))
s.shutdown(socket.SHUT_WR)
s.recv(1)
s.close()
"#;

    /// Prints the errno of a TCP connect to argv[1]:argv[2] (or "connected").
    const CONNECT_ERRNO: &str = r#"
import socket, sys
s = socket.socket()
s.settimeout(5)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as e:
    print("errno", e.errno)
"#;

    /// Sends argv[3] UDP datagrams of 100 bytes to argv[1]:argv[2], paced.
    const UDP_BLAST: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(b"x" * 100, (sys.argv[1], int(sys.argv[2])))
    if i % 50 == 49:
        time.sleep(0.005)
"#;

    fn wait_with_deadline(child: &mut Child, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("child did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    struct Transfer {
        received: u64,
        seconds: f64,
        connect_seconds: f64,
    }

    /// Sends `bytes` over TCP from host `from` to host `to`.
    fn transfer(net: &Net, from: usize, to: usize, bytes: usize) -> Result<Transfer> {
        let addr = net.host(to).addr.to_string();
        let mut receiver = net
            .command(to, "timeout")
            .args(["30", python(), "-c", RECEIVER, &addr, "7000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut out = BufReader::new(receiver.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "ready" {
            let mut err = String::new();
            let _ = receiver.stderr.take().unwrap().read_to_string(&mut err);
            let _ = wait_with_deadline(&mut receiver, Duration::from_secs(5));
            bail!("receiver in host {to} did not start: {line:?} {err}");
        }
        let sent = net.exec(
            from,
            "timeout",
            ["30", python(), "-c", SENDER, &addr, "7000", &bytes.to_string()],
        );
        let mut rest = String::new();
        out.read_to_string(&mut rest)?;
        let status = wait_with_deadline(&mut receiver, Duration::from_secs(40))?;
        let sent = sent?;
        if !status.success() {
            bail!("receiver failed: {status}");
        }
        let mut fields = rest.split_whitespace();
        let received = fields.next().context("no byte count")?.parse()?;
        let seconds = fields.next().context("no time")?.parse()?;
        let connect_seconds = sent.trim().parse()?;
        Ok(Transfer {
            received,
            seconds,
            connect_seconds,
        })
    }

    fn existing() -> Vec<String> {
        list_netns().unwrap()
    }

    #[test]
    fn addresses_names_and_units() {
        assert_eq!(host_addr(0), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(host_addr(249), Ipv4Addr::new(198, 18, 0, 250));
        assert_eq!(host_addr(250), Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(host_addr(MAX_HOSTS - 1), Ipv4Addr::new(198, 18, 3, 250));
        for i in [0, MAX_HOSTS - 1] {
            let a = host_addr(i).octets();
            assert!(a[0] == 198 && (a[1] & 0xfe) == 18, "{a:?} outside 198.18.0.0/15");
        }
        // Interface names fit IFNAMSIZ - 1.
        for name in [
            format!("vh{}", MAX_HOSTS - 1),
            HOST_IFACE.into(),
            BRIDGE_IFACE.into(),
            DROP_IFACE.into(),
        ] {
            assert!(name.len() <= 15, "{name}");
        }

        assert_eq!(parse_rate("100mbit").unwrap(), 100_000_000);
        assert_eq!(parse_rate("1Gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate("500kbit").unwrap(), 500_000);
        assert_eq!(parse_rate("1.5mbit").unwrap(), 1_500_000);
        assert_eq!(parse_rate("10mbps").unwrap(), 80_000_000);
        assert_eq!(parse_rate("1kibit").unwrap(), 1024);
        assert_eq!(parse_rate("64000").unwrap(), 64_000);
        assert_eq!(parse_rate(" 2 mbit ").unwrap(), 2_000_000);
        for bad in ["", "mbit", "10 furlongs", "0bit", "-5mbit", "1e99gbit"] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(burst_bytes(10_000_000), MIN_BURST_BYTES);
        assert_eq!(burst_bytes(1_000_000_000), 1_250_000);

        assert_eq!(parse_percent("5%").unwrap(), 5.0);
        assert_eq!(parse_percent("0.5").unwrap(), 0.5);
        assert!(parse_percent("101%").is_err());
        assert!(parse_percent("lots").is_err());
        assert_eq!(loss_threshold(0.0), 0);
        assert_eq!(loss_threshold(25.0), 1 << 30);
        assert_eq!(loss_threshold(100.0), u32::MAX);
        assert_eq!(
            loss_bytecode(1 << 30),
            "4,32 0 0 4294963256,53 0 1 1073741824,6 0 0 0,6 0 0 4294967295"
        );

        assert_eq!(owner_pid("baton-123-0-br"), Some(123));
        assert_eq!(owner_pid("baton-123-4-h17"), Some(123));
        for other in [
            "baton-x-0-br",
            "baton--0",
            "baton-123",
            "baton-123-",
            "xbaton-1-0",
            "netns1",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    fn plan_validation() {
        let mut spec = NetSpec::with_hosts(3);
        spec.rate = Some("100mbit".into());
        spec.per_host_rate.insert(2, "10mbit".into());
        let plan = Plan::from_spec_with(&spec, || unreachable!()).unwrap();
        assert_eq!(
            plan.rates,
            [Some(100_000_000), Some(100_000_000), Some(10_000_000)]
        );
        assert!(plan.netem.is_none() && plan.bpf_loss.is_none());

        spec.per_host_rate.insert(3, "1mbit".into());
        assert!(Plan::from_spec_with(&spec, || false).is_err());
        spec.per_host_rate.remove(&3);
        assert!(Plan::from_spec_with(&NetSpec::with_hosts(0), || false).is_err());
        assert!(Plan::from_spec_with(&NetSpec::with_hosts(MAX_HOSTS + 1), || false).is_err());

        spec.loss = Some("1%".into());
        let plan = Plan::from_spec_with(&spec, || false).unwrap();
        assert_eq!(plan.bpf_loss, Some(loss_threshold(1.0)));
        let plan = Plan::from_spec_with(&spec, || true).unwrap();
        assert_eq!(plan.netem.unwrap(), format!("loss 1% limit {NETEM_LIMIT}"));
        assert_eq!(plan.bpf_loss, None);

        spec.delay = Some("20ms 5ms".into());
        let err = Plan::from_spec_with(&spec, || false).unwrap_err();
        assert!(format!("{err:#}").contains("netem"), "{err:#}");
        let plan = Plan::from_spec_with(&spec, || true).unwrap();
        assert_eq!(
            plan.netem.unwrap(),
            format!("delay 20ms 5ms loss 1% limit {NETEM_LIMIT}")
        );
    }

    #[test]
    fn command_lines_are_quoted() {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", "baton-1-0-h0", "sh", "-c", "echo 'hi'"]);
        assert_eq!(
            command_line(&cmd),
            r"ip netns exec baton-1-0-h0 sh -c 'echo '\''hi'\'''"
        );
    }

    #[test]
    fn three_hosts_reach_each_other_and_are_shaped() {
        if !privileged("three_hosts_reach_each_other_and_are_shaped") {
            return;
        }
        let mut spec = NetSpec::with_hosts(3);
        spec.per_host_rate.insert(2, "10mbit".into());
        let mut net = Net::create(&spec).unwrap();
        let prefix = format!("{}-", net.prefix());

        // Namespaces.
        let names = existing();
        assert!(names.contains(&net.bridge_netns().to_owned()));
        for host in net.hosts() {
            assert!(names.contains(&host.netns), "{} missing", host.netns);
            assert!(host.netns.starts_with(&prefix));
        }
        assert_eq!(net.hosts().len(), 3);
        assert_eq!(net.host(2).addr, Ipv4Addr::new(198, 18, 0, 3));

        // Addressing and routes: the /15 with broadcast, multicast, no default.
        let addrs = net
            .exec(1, "ip", ["-4", "-o", "addr", "show", "dev", "eth0"])
            .unwrap();
        assert!(addrs.contains("198.18.0.2/15 brd 198.19.255.255"), "{addrs}");
        let routes = net.exec(1, "ip", ["route", "show"]).unwrap();
        assert!(!routes.contains("default"), "{routes}");
        assert!(routes.contains("224.0.0.0/4 dev eth0"), "{routes}");
        let lo = net.exec(1, "ip", ["-o", "link", "show", "lo"]).unwrap();
        assert!(lo.contains("UP"), "{lo}");
        let v6 = net.exec(1, "ip", ["-6", "-o", "addr", "show"]).unwrap();
        assert!(v6.trim().is_empty(), "IPv6 addresses: {v6}");
        let off = net
            .exec(1, "cat", ["/proc/sys/net/ipv6/conf/all/disable_ipv6"])
            .unwrap();
        assert_eq!(off.trim(), "1");

        // A stray packet fails at once: no default route.
        let started = Instant::now();
        let stray = net
            .exec(1, python(), ["-c", CONNECT_ERRNO, "198.51.100.1", "80"])
            .unwrap();
        assert_eq!(stray.trim(), "errno 101", "expected ENETUNREACH");
        assert!(started.elapsed() < Duration::from_secs(3));

        // TCP from host 1 to host 0 (unshaped) and counters.
        let tx_before = net.tx_bytes(1).unwrap();
        let rx_before = net.rx_bytes(0).unwrap();
        const SIZE: usize = 2 * 1024 * 1024;
        let fast = transfer(&net, 1, 0, SIZE).unwrap();
        assert_eq!(fast.received, SIZE as u64);
        assert!(fast.seconds < 1.0, "unshaped 2 MiB took {}s", fast.seconds);
        assert!(fast.connect_seconds < 0.5);
        assert!(net.tx_bytes(1).unwrap() >= tx_before + SIZE as u64);
        assert!(net.rx_bytes(0).unwrap() >= rx_before + SIZE as u64);

        // Host 2 is shaped to 10 mbit both ways: 2 MiB takes ~1.7 s.
        let into = transfer(&net, 1, 2, SIZE).unwrap();
        assert_eq!(into.received, SIZE as u64);
        assert!(
            into.seconds >= 1.2,
            "2 MiB into a 10 mbit host took {}s",
            into.seconds
        );
        let out_of = transfer(&net, 2, 1, SIZE).unwrap();
        assert_eq!(out_of.received, SIZE as u64);
        assert!(
            out_of.seconds >= 1.2,
            "2 MiB out of a 10 mbit host took {}s",
            out_of.seconds
        );
        let stats = net.tc_stats(2).unwrap();
        assert_eq!(stats.matches("qdisc tbf").count(), 2, "{stats}");
        assert_eq!(stats.matches("rate 10Mbit").count(), 2, "{stats}");
        let unshaped = net.tc_stats(0).unwrap();
        assert!(!unshaped.contains("tbf"), "{unshaped}");
        eprintln!(
            "unshaped {:.3}s, into shaped {:.3}s, out of shaped {:.3}s",
            fast.seconds, into.seconds, out_of.seconds
        );

        // Something left running inside is killed on teardown.
        let mut sleeper = net.command(0, "sleep").arg("300").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(100));

        let names: Vec<String> = net.netns_names().to_vec();
        net.teardown().unwrap();
        net.teardown().unwrap();
        let status = wait_with_deadline(&mut sleeper, Duration::from_secs(5)).unwrap();
        assert!(!status.success());
        drop(net);
        let left = existing();
        for name in &names {
            assert!(!left.contains(name), "{name} left behind");
        }
        assert!(!left.iter().any(|n| n.starts_with(&prefix)));
    }

    #[test]
    fn drop_removes_everything_even_on_panic() {
        if !privileged("drop_removes_everything_even_on_panic") {
            return;
        }
        let names = std::sync::Mutex::new(Vec::new());
        let result = std::panic::catch_unwind(|| {
            let net = Net::create(&NetSpec::with_hosts(2)).unwrap();
            names.lock().unwrap().extend(net.netns_names().iter().cloned());
            panic!("test panics with a net alive");
        });
        assert!(result.is_err());
        let names = names.into_inner().unwrap();
        assert_eq!(names.len(), 3);
        let left = existing();
        assert!(names.iter().all(|n| !left.contains(n)), "{left:?}");
    }

    #[test]
    fn failure_midway_removes_what_was_made() {
        if !privileged("failure_midway_removes_what_was_made") {
            return;
        }
        let err = Net::create_inner(&NetSpec::with_hosts(3), Some(2)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("injected failure at host 2"), "{msg}");
        let mine = format!("{NAME_PREFIX}{}-", std::process::id());
        let prefix = msg
            .split_whitespace()
            .find(|w| w.starts_with(&mine))
            .expect("prefix in message")
            .trim_end_matches(':')
            .to_owned();
        let left = existing();
        assert!(
            !left.iter().any(|n| n.starts_with(&format!("{prefix}-"))),
            "{prefix}: {left:?}"
        );
    }

    #[test]
    fn loss_drops_about_the_right_share() {
        if !privileged("loss_drops_about_the_right_share") {
            return;
        }
        let spec = NetSpec {
            loss: Some("30%".into()),
            ..NetSpec::with_hosts(2)
        };
        let net = Net::create(&spec).unwrap();
        // A permanent neighbour entry so that lost ARP does not get in the way.
        let mac = net.exec(1, "cat", ["/sys/class/net/eth0/address"]).unwrap();
        net.exec(
            0,
            "ip",
            [
                "neigh",
                "replace",
                &net.host(1).addr.to_string(),
                "lladdr",
                mac.trim(),
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )
        .unwrap();
        let before = net.rx_packets(1).unwrap();
        const N: u64 = 2000;
        net.exec(
            0,
            python(),
            [
                "-c",
                UDP_BLAST,
                &net.host(1).addr.to_string(),
                "9",
                &N.to_string(),
            ],
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let got = net.rx_packets(1).unwrap() - before;
        let stats = net.tc_stats(0).unwrap();
        eprintln!("30% loss: {got} of {N} datagrams arrived\n{stats}");
        assert!((1200..=1600).contains(&got), "{got} of {N} arrived\n{stats}");
    }

    #[test]
    fn delay_with_netem() {
        if !privileged("delay_with_netem") {
            return;
        }
        let spec = NetSpec {
            delay: Some("100ms".into()),
            rate: Some("100mbit".into()),
            ..NetSpec::with_hosts(2)
        };
        if !netem_supported() {
            let err = Net::create(&spec).unwrap_err();
            assert!(format!("{err:#}").contains("netem"), "{err:#}");
            eprintln!("skipped: delay_with_netem: this kernel has no netem qdisc ({err:#})");
            return;
        }
        let net = Net::create(&spec).unwrap();
        let stats = net.tc_stats(0).unwrap();
        assert!(
            stats.contains("qdisc netem") && stats.contains("qdisc tbf"),
            "{stats}"
        );
        let t = transfer(&net, 0, 1, 1000).unwrap();
        // SYN and SYN-ACK are each delayed once.
        assert!(t.connect_seconds >= 0.19, "connect took {}s", t.connect_seconds);
    }

    #[test]
    fn clean_stale_removes_only_dead_owners() {
        if !privileged("clean_stale_removes_only_dead_owners") {
            return;
        }
        /// Deletes the namespaces it holds when dropped (also on panic).
        struct Made(Vec<String>);
        impl Drop for Made {
            fn drop(&mut self) {
                for name in &self.0 {
                    let _ = delete_netns(name);
                }
            }
        }

        let mut dead = 999_999u32;
        while pid_alive(dead) {
            dead -= 1;
        }
        let k = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        let stale = vec![
            format!("{NAME_PREFIX}{dead}-{k}-br"),
            format!("{NAME_PREFIX}{dead}-{k}-h0"),
        ];
        let live = format!("{NAME_PREFIX}{}-{k}-live", std::process::id());
        let foreign = format!("notbaton-{dead}-{k}-h0");
        let made = Made(stale.iter().chain([&live, &foreign]).cloned().collect());
        for name in &made.0 {
            add_netns(name).unwrap();
        }
        // A process still running inside a stale namespace.
        let mut sleeper = ip_exec(&stale[1], "sleep").arg("300").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(100));

        let removed = clean_stale().unwrap();
        for name in &stale {
            assert!(removed.contains(name), "{name} not removed: {removed:?}");
        }
        assert!(!removed.contains(&live) && !removed.contains(&foreign));
        let status = wait_with_deadline(&mut sleeper, Duration::from_secs(5)).unwrap();
        assert!(!status.success());

        let left = existing();
        assert!(stale.iter().all(|n| !left.contains(n)), "{left:?}");
        assert!(left.contains(&live) && left.contains(&foreign), "{left:?}");
        drop(made);
        let left = existing();
        assert!(!left.contains(&live) && !left.contains(&foreign), "{left:?}");
    }
}
