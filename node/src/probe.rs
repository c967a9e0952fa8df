//! The activity probe: measures only, the core decides ([`baton_protocol::gate`]).
//!
//! - CPU idle fraction from `/proc/stat` (idle + iowait over all time counted), over a
//!   sliding window (30 s by default);
//! - residency of the kernel's CPU idle states (`/sys/devices/system/cpu/cpu*/cpuidle/
//!   state*/time`, the polling state left out) over the same window, where it exists: the
//!   form today's kernels give the ACPI processor power states;
//! - AC and battery from `/sys/class/power_supply`: a `Mains` (or `USB`) supply online
//!   means AC; a system battery's `capacity` is its charge (device batteries, such as a
//!   mouse's, are left out); no battery at all counts as AC in the core;
//! - the local time, time-zone aware (chrono's `Local`, which reads `TZ` or
//!   `/etc/localtime`).
//!
//! [`Probe`] and [`LocalClock`] are small traits so that tests drive fakes;
//! [`FileProbe`] replaces the probe with a file a test writes (`--test-probe-file`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_protocol::gate::Readings;

/// How often the node reads its probe.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// The default sliding window of the idle figures.
pub const IDLE_WINDOW: Duration = Duration::from_secs(30);

/// Something that measures the machine.
pub trait Probe: Send {
    /// Readings at `now` (called every [`PROBE_INTERVAL`]).
    fn read(&mut self, now: Instant) -> Result<Readings>;
}

/// The local wall clock.
pub trait LocalClock: Send {
    /// Minutes after local midnight.
    fn local_minutes(&self) -> u16;
}

/// The system's local time zone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl LocalClock for SystemClock {
    fn local_minutes(&self) -> u16 {
        use chrono::Timelike;
        let t = chrono::Local::now();
        (t.hour() * 60 + t.minute()) as u16
    }
}

/// Counters sampled over a sliding window: the fraction `Δpart / Δwhole` between the
/// oldest sample inside the window and the newest.
#[derive(Debug, Default)]
struct Window {
    samples: VecDeque<(Instant, u64, u64)>,
}

impl Window {
    fn push(&mut self, now: Instant, part: u64, whole: u64, span: Duration) -> Option<(f64, Duration)> {
        // counters that went down (CPU hot-unplug, a wrap) restart the window
        if self
            .samples
            .back()
            .is_some_and(|&(_, p, w)| part < p || whole < w)
        {
            self.samples.clear();
        }
        self.samples.push_back((now, part, whole));
        // keep the newest sample at least `span` old as the base
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= span {
            self.samples.pop_front();
        }
        let &(t0, p0, w0) = self.samples.front()?;
        let dw = whole - w0;
        if dw == 0 {
            return None;
        }
        Some(((part - p0) as f64 / dw as f64, now.duration_since(t0)))
    }
}

/// Idle and total jiffies of the `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Result<(u64, u64)> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no `cpu` line")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>())
        .collect::<Result<_, _>>()
        .context("a `cpu` field is not a number")?;
    if v.len() < 4 {
        bail!("the `cpu` line has {} fields, expected at least 4", v.len());
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user/nice)
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Ok((idle, total))
}

/// Reads at most 64 KiB of a small kernel file.
fn read_small(p: &Path) -> Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
    let mut s = String::new();
    f.take(64 * 1024)
        .read_to_string(&mut s)
        .with_context(|| format!("cannot read {}", p.display()))?;
    Ok(s)
}

/// Directory entries (at most 4096, sorted).
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .take(4096)
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn name_of(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// Microseconds spent in idle states (the polling state left out) over every CPU that
/// has `cpuidle`, and how many CPUs that is; `None` where the kernel has no cpuidle.
fn cpuidle_time(sys: &Path) -> Option<(u64, u64)> {
    let mut total = 0u64;
    let mut cpus = 0u64;
    for cpu in entries(&sys.join("devices/system/cpu")) {
        let n = name_of(&cpu);
        if !(n.starts_with("cpu") && n[3..].chars().all(|c| c.is_ascii_digit()) && n.len() > 3) {
            continue;
        }
        let states = entries(&cpu.join("cpuidle"));
        let mut any = false;
        for st in states.iter().filter(|s| name_of(s).starts_with("state")) {
            let name = read_small(&st.join("name")).unwrap_or_default();
            if name.trim().eq_ignore_ascii_case("POLL") {
                any = true;
                continue;
            }
            if let Some(us) = read_small(&st.join("time"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                total += us;
                any = true;
            }
        }
        cpus += u64::from(any);
    }
    (cpus > 0).then_some((total, cpus))
}

/// AC online (`None`: no mains supply) and the mean charge of the system batteries
/// (`None`: no battery).
pub fn power_supply(dir: &Path) -> (Option<bool>, Option<f64>) {
    let mut ac = None;
    let mut charges = Vec::new();
    for e in entries(dir) {
        let kind = read_small(&e.join("type")).unwrap_or_default();
        let kind = kind.trim();
        let online = || {
            read_small(&e.join("online"))
                .ok()
                .map(|s| s.trim() == "1")
                .unwrap_or(false)
        };
        match kind {
            "Mains" | "USB" | "USB_C" | "USB_PD" => {
                ac = Some(ac.unwrap_or(false) || online());
            }
            "Battery" => {
                let scope = read_small(&e.join("scope")).unwrap_or_default();
                if scope.trim().eq_ignore_ascii_case("Device") {
                    continue; // a peripheral's battery
                }
                if let Some(c) = read_small(&e.join("capacity"))
                    .ok()
                    .and_then(|s| s.trim().parse::<f64>().ok())
                {
                    charges.push(c.clamp(0.0, 100.0));
                }
            }
            _ => {}
        }
    }
    let charge = (!charges.is_empty()).then(|| charges.iter().sum::<f64>() / charges.len() as f64);
    (ac, charge)
}

/// The probe of this machine: `/proc` and `/sys` under `root` (`/` in production).
pub struct SysProbe<C: LocalClock> {
    root: PathBuf,
    window: Duration,
    clock: C,
    cpu: Window,
    cpuidle: Window,
    started: Option<Instant>,
}

impl<C: LocalClock> std::fmt::Debug for SysProbe<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SysProbe").field("root", &self.root).finish()
    }
}

impl<C: LocalClock> SysProbe<C> {
    /// A probe of the machine whose `/proc` and `/sys` are under `root`.
    pub fn new(root: impl Into<PathBuf>, window: Duration, clock: C) -> Self {
        SysProbe {
            root: root.into(),
            window,
            clock,
            cpu: Window::default(),
            cpuidle: Window::default(),
            started: None,
        }
    }
}

impl<C: LocalClock> Probe for SysProbe<C> {
    fn read(&mut self, now: Instant) -> Result<Readings> {
        let started = *self.started.get_or_insert(now);
        let stat = read_small(&self.root.join("proc/stat"))?;
        let (idle, total) =
            parse_proc_stat(&stat).with_context(|| format!("{}/proc/stat", self.root.display()))?;
        // a fraction over less than a probe interval is noise: none until then
        let min_span = PROBE_INTERVAL.mul_f32(0.75);
        let cpu = self
            .cpu
            .push(now, idle, total, self.window)
            .filter(|(_, d)| *d >= min_span);
        let sys = self.root.join("sys");
        let residency = cpuidle_time(&sys).and_then(|(us, cpus)| {
            let wall = now.duration_since(started).as_micros() as u64;
            // the window's denominator is wall time times CPUs
            self.cpuidle
                .push(now, us, wall.saturating_mul(cpus), self.window)
                .map(|(f, _)| f.clamp(0.0, 1.0))
        });
        let (ac_online, battery_percent) = power_supply(&sys.join("class/power_supply"));
        Ok(Readings {
            cpu_idle: cpu.map(|(f, _)| f),
            cpuidle_residency: residency,
            idle_span_secs: cpu.map(|(_, d)| d.as_secs() as u32).unwrap_or(0),
            ac_online,
            battery_percent,
            local_minutes: self.clock.local_minutes(),
        })
    }
}

/// Testing: readings from a file the test writes, read again at every probe. Lines of
/// `key = value`: `cpu_idle` (0 to 1), `cpuidle_residency` (0 to 1), `ac` (`on`/`off`),
/// `battery` (percent or `none`), `time` (`HH:MM`); `#` starts a comment. The word
/// `busy` alone stands for `cpu_idle = 0`, `idle` for `cpu_idle = 1`. Missing keys:
/// CPU unknown, no mains supply, no battery, the local time from the clock.
pub struct FileProbe<C: LocalClock> {
    path: PathBuf,
    clock: C,
}

impl<C: LocalClock> std::fmt::Debug for FileProbe<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileProbe").field("path", &self.path).finish()
    }
}

impl<C: LocalClock> FileProbe<C> {
    pub fn new(path: impl Into<PathBuf>, clock: C) -> Self {
        FileProbe {
            path: path.into(),
            clock,
        }
    }
}

/// Parses a test probe file's text.
pub fn parse_probe_file(text: &str, local_minutes: u16) -> Result<Readings> {
    let mut r = Readings {
        idle_span_secs: IDLE_WINDOW.as_secs() as u32,
        local_minutes,
        ..Readings::default()
    };
    let frac = |k: &str, v: &str| -> Result<f64> {
        let f: f64 = v
            .parse()
            .with_context(|| format!("`{k}` must be a number from 0 to 1, not `{v}`"))?;
        if !(0.0..=1.0).contains(&f) {
            bail!("`{k}` must be from 0 to 1, not {f}");
        }
        Ok(f)
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => match line {
                "busy" => ("cpu_idle", "0"),
                "idle" => ("cpu_idle", "1"),
                _ => bail!("`{line}` is not `key = value` (or `busy`/`idle`)"),
            },
        };
        match k {
            "cpu_idle" => r.cpu_idle = Some(frac(k, v)?),
            "cpuidle_residency" => r.cpuidle_residency = Some(frac(k, v)?),
            "ac" => {
                r.ac_online = Some(match v {
                    "on" | "1" | "true" => true,
                    "off" | "0" | "false" => false,
                    _ => bail!("`ac` must be `on` or `off`, not `{v}`"),
                })
            }
            "battery" => {
                r.battery_percent = match v {
                    "none" => None,
                    _ => {
                        let b: f64 = v
                            .parse()
                            .with_context(|| format!("`battery` must be a percent or `none`, not `{v}`"))?;
                        if !(0.0..=100.0).contains(&b) {
                            bail!("`battery` must be from 0 to 100, not {b}");
                        }
                        Some(b)
                    }
                }
            }
            "time" => {
                r.local_minutes = baton_protocol::gate::parse_time(v)
                    .map_err(|_| anyhow::anyhow!("`time` must be HH:MM, not `{v}`"))?;
            }
            _ => bail!("unknown key `{k}` (cpu_idle, cpuidle_residency, ac, battery, time)"),
        }
    }
    Ok(r)
}

impl<C: LocalClock> Probe for FileProbe<C> {
    fn read(&mut self, _now: Instant) -> Result<Readings> {
        let text = read_small(&self.path)?;
        parse_probe_file(&text, self.clock.local_minutes())
            .with_context(|| format!("test probe file {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(u16);
    impl LocalClock for Fixed {
        fn local_minutes(&self) -> u16 {
            self.0
        }
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn stat(idle: u64, busy: u64) -> String {
        format!("cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 {busy} 0 0 {idle} 0 0 0 0 0 0\n")
    }

    #[test]
    fn proc_stat_idle_over_a_sliding_window() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let mut p = SysProbe::new(root, Duration::from_secs(30), Fixed(75));
        let t0 = Instant::now();
        let s = |k: u64| t0 + Duration::from_secs(k);
        write(root, "proc/stat", &stat(0, 0));
        let r = p.read(s(0)).unwrap();
        assert_eq!(r.cpu_idle, None, "one sample gives no fraction");
        assert_eq!(r.local_minutes, 75);
        // 10 s at 90% idle (100 jiffies a second)
        write(root, "proc/stat", &stat(900, 100));
        let r = p.read(s(10)).unwrap();
        assert!((r.cpu_idle.unwrap() - 0.9).abs() < 1e-9);
        assert_eq!(r.idle_span_secs, 10);
        // then 30 s fully busy: the window forgets the idle start
        for k in 1..=6 {
            write(root, "proc/stat", &stat(900, 100 + 500 * k));
            p.read(s(10 + 5 * k)).unwrap();
        }
        let r = p.read(s(40)).unwrap();
        assert!(r.cpu_idle.unwrap() < 0.01, "{:?}", r.cpu_idle);
        assert!((30..=35).contains(&r.idle_span_secs), "{}", r.idle_span_secs);
        // no cpuidle, no power supply here
        assert_eq!(r.cpuidle_residency, None);
        assert_eq!((r.ac_online, r.battery_percent), (None, None));
    }

    #[test]
    fn cpuidle_residency_leaves_out_polling() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, "proc/stat", &stat(0, 0));
        for cpu in ["cpu0", "cpu1"] {
            write(
                root,
                &format!("sys/devices/system/cpu/{cpu}/cpuidle/state0/name"),
                "POLL\n",
            );
            write(
                root,
                &format!("sys/devices/system/cpu/{cpu}/cpuidle/state0/time"),
                "0\n",
            );
            write(
                root,
                &format!("sys/devices/system/cpu/{cpu}/cpuidle/state1/name"),
                "C1\n",
            );
            write(
                root,
                &format!("sys/devices/system/cpu/{cpu}/cpuidle/state1/time"),
                "0\n",
            );
        }
        write(root, "sys/devices/system/cpu/cpufreq/x", "");
        let mut p = SysProbe::new(root, Duration::from_secs(30), Fixed(0));
        let t0 = Instant::now();
        p.read(t0).unwrap();
        // 10 s: cpu0 5 s in C1, cpu1 10 s in C1, 9 s polling (not idle)
        write(
            root,
            "sys/devices/system/cpu/cpu0/cpuidle/state1/time",
            "5000000\n",
        );
        write(
            root,
            "sys/devices/system/cpu/cpu1/cpuidle/state1/time",
            "10000000\n",
        );
        write(
            root,
            "sys/devices/system/cpu/cpu1/cpuidle/state0/time",
            "9000000\n",
        );
        let r = p.read(t0 + Duration::from_secs(10)).unwrap();
        let f = r.cpuidle_residency.unwrap();
        assert!((f - 0.75).abs() < 0.01, "{f}");
    }

    #[test]
    fn power_supplies_mains_batteries_and_peripherals() {
        let d = tempfile::tempdir().unwrap();
        let ps = d.path();
        assert_eq!(power_supply(ps), (None, None), "a desktop: nothing");
        write(ps, "AC/type", "Mains\n");
        write(ps, "AC/online", "0\n");
        write(ps, "BAT0/type", "Battery\n");
        write(ps, "BAT0/capacity", "57\n");
        write(ps, "hidpp_battery_0/type", "Battery\n");
        write(ps, "hidpp_battery_0/scope", "Device\n");
        write(ps, "hidpp_battery_0/capacity", "5\n");
        assert_eq!(power_supply(ps), (Some(false), Some(57.0)));
        write(ps, "ucsi-source-psy-USBC000:001/type", "USB\n");
        write(ps, "ucsi-source-psy-USBC000:001/online", "1\n");
        assert_eq!(power_supply(ps), (Some(true), Some(57.0)), "USB-C charger");
    }

    #[test]
    fn the_test_probe_file() {
        let r = parse_probe_file("busy\nac = off # unplugged\nbattery=30\ntime=23:15\n", 5).unwrap();
        assert_eq!(r.cpu_idle, Some(0.0));
        assert_eq!(r.ac_online, Some(false));
        assert_eq!(r.battery_percent, Some(30.0));
        assert_eq!(r.local_minutes, 23 * 60 + 15);
        let r = parse_probe_file("cpu_idle = 0.95\n", 5).unwrap();
        assert_eq!((r.cpu_idle, r.local_minutes), (Some(0.95), 5));
        for bad in [
            "cpu_idle = 2",
            "ac = maybe",
            "frob = 1",
            "time = 25:00",
            "battery = -1",
            "gated",
        ] {
            let e = format!("{:#}", parse_probe_file(bad, 0).unwrap_err());
            assert!(!e.is_empty(), "{bad}");
        }
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("probe");
        let mut p = FileProbe::new(&f, Fixed(0));
        let e = format!("{:#}", p.read(Instant::now()).unwrap_err());
        assert!(e.contains("cannot open"), "{e}");
        std::fs::write(&f, "idle\n").unwrap();
        assert_eq!(p.read(Instant::now()).unwrap().cpu_idle, Some(1.0));
    }

    #[test]
    fn this_machine_can_be_probed() {
        let mut p = SysProbe::new("/", IDLE_WINDOW, SystemClock);
        let t0 = Instant::now();
        p.read(t0).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let r = p.read(t0 + PROBE_INTERVAL).unwrap();
        assert!(r.local_minutes < 24 * 60);
        if let Some(f) = r.cpu_idle {
            assert!((0.0..=1.0).contains(&f));
        }
    }
}
