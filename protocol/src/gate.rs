//! Relay gating: whether a node's owner lets it serve chunks to others right now.
//!
//! The owner picks a [`Policy`]: `always`, `idle`, `ac`, `idle-or-ac`, `idle-and-ac`, a
//! local-time window `HH:MM-HH:MM` (which may cross midnight), or one of the words with a
//! window (`idle,22:00-06:00`: idle *and* inside the window). The manifest carries the
//! campaign's default ([`RelayPolicy`]); the owner's local setting wins
//! ([`Gating::effective`]).
//!
//! The shell only measures: it feeds [`Readings`] (CPU idle fraction over a sliding
//! window, cpuidle residency where the kernel has it, AC online and battery charge, the
//! local minutes since midnight) with the time. [`Gating`] turns them into two node-wide
//! conditions with hysteresis ([`Conditions`]: idle is entered at `idle_min` and left
//! only below `idle_min - idle_band`; a battery is good from `battery_min` and bad only
//! below `battery_min - battery_band`), and each policy in use into an open or closed
//! [`Gate`]. A gate closes at once when its policy stops allowing relaying, and after a
//! close it opens again only once the policy allowed relaying for `reopen_after` without
//! a break: the gate does not flap.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::manifest::{RelayPolicy, RelayWhen};

/// What a node says about its relaying, in its advert and its progress reports: the NMS
/// plans nodes that may not serve at the leaves. Ordered from the best relay to the worst.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelayHint {
    /// Relays now, and its policy is `always` (or it did not say).
    #[default]
    Open,
    /// Relays now, under a policy that may close (idle, AC, a window).
    Restricted,
    /// Does not relay now.
    Gated,
}

impl RelayHint {
    /// The hint of a node whose gate under `policy` is `open`.
    pub fn of(policy: &Policy, open: bool) -> Self {
        if !open {
            RelayHint::Gated
        } else if *policy == Policy::ALWAYS {
            RelayHint::Open
        } else {
            RelayHint::Restricted
        }
    }

    /// The word in adverts and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayHint::Open => "open",
            RelayHint::Restricted => "restricted",
            RelayHint::Gated => "gated",
        }
    }
}

impl fmt::Display for RelayHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RelayHint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(RelayHint::Open),
            "restricted" => Ok(RelayHint::Restricted),
            "gated" => Ok(RelayHint::Gated),
            other => Err(format!(
                "unknown relay state `{other}` (open, restricted or gated)"
            )),
        }
    }
}

/// Minutes in a day.
pub const DAY_MINUTES: u16 = 24 * 60;

/// Why a policy text was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error(
        "empty relay policy: give always, idle, ac, idle-or-ac, idle-and-ac, a window HH:MM-HH:MM, or a word and a window (e.g. idle,22:00-06:00)"
    )]
    Empty,
    #[error(
        "unknown relay policy `{0}`: use always, idle, ac, idle-or-ac, idle-and-ac, or a window HH:MM-HH:MM"
    )]
    Unknown(String),
    #[error("bad time `{0}` in a relay window: use HH:MM from 00:00 to 23:59")]
    BadTime(String),
    #[error("relay window `{0}` starts and ends at the same minute: use `always` to relay all day")]
    EmptyWindow(String),
    #[error("relay policy `{0}` names more than one condition word or more than one window")]
    Twice(String),
}

/// Local-time window in minutes after midnight: relaying allowed from `start` (included)
/// to `end` (excluded). `start > end` crosses midnight (22:00-06:00).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start: u16,
    pub end: u16,
}

impl Window {
    /// True when local minute `m` is inside the window. An empty window (`start == end`,
    /// only possible from a manifest) contains nothing.
    pub fn contains(&self, m: u16) -> bool {
        if self.start <= self.end {
            self.start <= m && m < self.end
        } else {
            m >= self.start || m < self.end
        }
    }
}

fn hhmm(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", hhmm(self.start), hhmm(self.end))
    }
}

/// Minutes after midnight of a local time `HH:MM` (00:00 to 23:59).
pub fn parse_time(s: &str) -> Result<u16, PolicyError> {
    let bad = || PolicyError::BadTime(s.to_string());
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl FromStr for Window {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| PolicyError::Unknown(s.to_string()))?;
        let w = Window {
            start: parse_time(a.trim())?,
            end: parse_time(b.trim())?,
        };
        if w.start == w.end {
            return Err(PolicyError::EmptyWindow(s.to_string()));
        }
        Ok(w)
    }
}

fn when_word(w: RelayWhen) -> &'static str {
    match w {
        RelayWhen::Always => "always",
        RelayWhen::Idle => "idle",
        RelayWhen::Ac => "ac",
        RelayWhen::IdleOrAc => "idle-or-ac",
        RelayWhen::IdleAndAc => "idle-and-ac",
    }
}

/// When a node relays: a condition and an optional window, both required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub when: RelayWhen,
    pub window: Option<Window>,
}

impl Policy {
    /// Relay whenever asked.
    pub const ALWAYS: Policy = Policy {
        when: RelayWhen::Always,
        window: None,
    };

    /// The campaign's default from its manifest. Minutes past the day are read as 23:59;
    /// an empty window (start = end) allows nothing.
    pub fn from_manifest(p: &RelayPolicy) -> Self {
        let clamp = |m: u16| m.min(DAY_MINUTES - 1);
        Policy {
            when: p.when,
            window: p.window.map(|(s, e)| Window {
                start: clamp(s),
                end: clamp(e),
            }),
        }
    }

    /// This policy as a manifest carries it, with `grace_secs`.
    pub fn to_manifest(&self, grace_secs: u32) -> RelayPolicy {
        RelayPolicy {
            when: self.when,
            window: self.window.map(|w| (w.start, w.end)),
            grace_secs,
        }
    }

    fn needs_idle(&self) -> bool {
        matches!(
            self.when,
            RelayWhen::Idle | RelayWhen::IdleOrAc | RelayWhen::IdleAndAc
        )
    }

    fn needs_power(&self) -> bool {
        matches!(
            self.when,
            RelayWhen::Ac | RelayWhen::IdleOrAc | RelayWhen::IdleAndAc
        )
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.when, self.window) {
            (RelayWhen::Always, Some(w)) => write!(f, "{w}"),
            (when, Some(w)) => write!(f, "{},{w}", when_word(when)),
            (when, None) => f.write_str(when_word(when)),
        }
    }
}

impl FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let mut when = None;
        let mut window = None;
        let parts: Vec<&str> = s
            .split([',', '+'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            return Err(PolicyError::Empty);
        }
        for p in parts {
            let w = match p.to_ascii_lowercase().as_str() {
                "always" => Some(RelayWhen::Always),
                "idle" => Some(RelayWhen::Idle),
                "ac" => Some(RelayWhen::Ac),
                "idle-or-ac" => Some(RelayWhen::IdleOrAc),
                "idle-and-ac" => Some(RelayWhen::IdleAndAc),
                _ => None,
            };
            match w {
                Some(w) if when.is_none() => when = Some(w),
                Some(_) => return Err(PolicyError::Twice(s.to_string())),
                None if p.contains(':') && window.is_none() => window = Some(p.parse::<Window>()?),
                None if p.contains(':') => return Err(PolicyError::Twice(s.to_string())),
                None => return Err(PolicyError::Unknown(p.to_string())),
            }
        }
        Ok(Policy {
            when: when.unwrap_or(RelayWhen::Always),
            window,
        })
    }
}

/// The owner's thresholds (local settings; the manifest carries none).
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Idle means at least this fraction of CPU time idle over the probe's window.
    pub idle_min: f64,
    /// Once idle, the node stays idle until the fraction drops below `idle_min - idle_band`.
    pub idle_band: f64,
    /// On battery, relaying needs at least this charge in percent; `None`: never on battery.
    pub battery_min: Option<f64>,
    /// Once good, a battery stays good until below `battery_min - battery_band`.
    pub battery_band: f64,
    /// After a close, a gate opens again only once its policy allowed relaying this long
    /// without a break.
    pub reopen_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            idle_min: 0.80,
            idle_band: 0.10,
            battery_min: Some(40.0),
            battery_band: 5.0,
            reopen_after: Duration::from_secs(60),
        }
    }
}

/// What the probe measured (plain values; the shell reads them, the core decides).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Readings {
    /// Fraction (0 to 1) of CPU time idle over the probe's window (`/proc/stat`).
    pub cpu_idle: Option<f64>,
    /// Fraction (0 to 1) of CPU time spent in the kernel's idle states over the same
    /// window (`cpuidle` residency), where the kernel exposes it.
    pub cpuidle_residency: Option<f64>,
    /// Seconds the idle figures cover.
    pub idle_span_secs: u32,
    /// A mains supply is online; `None`: no mains supply found.
    pub ac_online: Option<bool>,
    /// Battery charge in percent; `None`: no battery.
    pub battery_percent: Option<f64>,
    /// Local time, minutes after midnight (time-zone aware).
    pub local_minutes: u16,
}

fn fraction(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite()).map(|v| v.clamp(0.0, 1.0))
}

impl Readings {
    /// The idle measure: the smaller of the CPU idle fraction and the cpuidle residency
    /// (both must say idle), whichever are known.
    pub fn idle_measure(&self) -> Option<f64> {
        match (fraction(self.cpu_idle), fraction(self.cpuidle_residency)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// On mains power: a mains supply online, or no mains supply found and no battery.
    pub fn on_ac(&self) -> bool {
        self.ac_online.unwrap_or(self.battery_percent.is_none())
    }

    fn battery(&self) -> Option<f64> {
        self.battery_percent
            .filter(|v| v.is_finite())
            .map(|v| v.clamp(0.0, 100.0))
    }
}

/// The node-wide conditions, with hysteresis; `None` until a reading says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditions {
    /// The CPU is idle enough.
    pub idle: Option<bool>,
    /// On AC, or on a battery charged enough.
    pub power: Option<bool>,
    idle_text: String,
    power_text: String,
}

impl Conditions {
    fn update(&mut self, r: &Readings, th: &Thresholds) {
        let need = th.idle_min * 100.0;
        match r.idle_measure() {
            Some(m) => {
                let idle = if self.idle == Some(true) {
                    m >= th.idle_min - th.idle_band
                } else {
                    m >= th.idle_min
                };
                self.idle = Some(idle);
                let held = if idle && m < th.idle_min {
                    format!(
                        ", still idle until below {:.0}%",
                        (th.idle_min - th.idle_band) * 100.0
                    )
                } else {
                    String::new()
                };
                self.idle_text = format!(
                    "CPU {:.0}% idle over {} s (idle needs {need:.0}%{held})",
                    m * 100.0,
                    r.idle_span_secs
                );
            }
            None => {
                self.idle = Some(false);
                self.idle_text = "no CPU reading".into();
            }
        }
        if r.on_ac() {
            self.power = Some(true);
            self.power_text = "on AC power".into();
            return;
        }
        let good = match (r.battery(), th.battery_min) {
            (Some(b), Some(min)) => {
                if self.power == Some(true) {
                    b >= min - th.battery_band
                } else {
                    b >= min
                }
            }
            _ => false,
        };
        self.power = Some(good);
        self.power_text = match (r.battery(), th.battery_min) {
            (Some(b), Some(min)) => format!("on battery at {b:.0}% (needs {min:.0}%)"),
            (Some(b), None) => format!("on battery at {b:.0}% (never relays on battery)"),
            (None, _) => "on battery, charge unknown".into(),
        };
    }

    /// Whether `p`'s condition word holds now, and why (the window aside).
    fn allows(&self, p: &Policy) -> (bool, String) {
        let idle = self.idle == Some(true);
        let power = self.power == Some(true);
        let ok = match p.when {
            RelayWhen::Always => true,
            RelayWhen::Idle => idle,
            RelayWhen::Ac => power,
            RelayWhen::IdleOrAc => idle || power,
            RelayWhen::IdleAndAc => idle && power,
        };
        let mut why = Vec::new();
        if p.needs_idle() {
            why.push(self.idle_text.clone());
        }
        if p.needs_power() {
            why.push(self.power_text.clone());
        }
        (ok, why.join("; "))
    }
}

/// One policy's gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub policy: Policy,
    /// Relaying allowed now.
    pub open: bool,
    /// Why it is open or closed, for the owner.
    pub reason: String,
    /// When `open` last changed (or the gate was made).
    pub since: Duration,
    /// The gate closed at least once (reopening then waits `reopen_after`).
    closed_before: bool,
    /// Since when the policy allows relaying without a break.
    allowed_since: Option<Duration>,
}

/// A gate that opened or closed.
#[derive(Debug, Clone, PartialEq)]
pub struct GateChange {
    pub policy: Policy,
    pub open: bool,
    pub reason: String,
}

/// The gates of the policies in use, and the conditions they share.
#[derive(Debug, Clone)]
pub struct Gating {
    th: Thresholds,
    local: Option<Policy>,
    readings: Option<(Duration, Readings)>,
    cond: Conditions,
    gates: Vec<Gate>,
}

impl Gating {
    /// Gating with the owner's thresholds and policy (`None`: each campaign's manifest
    /// decides).
    pub fn new(th: Thresholds, local: Option<Policy>) -> Self {
        Gating {
            th,
            local,
            readings: None,
            cond: Conditions::default(),
            gates: Vec::new(),
        }
    }

    /// The owner's policy, if set.
    pub fn local(&self) -> Option<Policy> {
        self.local
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> &Thresholds {
        &self.th
    }

    /// The latest readings and when they came.
    pub fn readings(&self) -> Option<&(Duration, Readings)> {
        self.readings.as_ref()
    }

    /// The conditions now.
    pub fn conditions(&self) -> &Conditions {
        &self.cond
    }

    /// The gates tracked now.
    pub fn gates(&self) -> &[Gate] {
        &self.gates
    }

    /// The policy a campaign whose manifest carries `campaign` follows: the owner's if
    /// set, else the campaign's.
    pub fn effective(&self, campaign: &RelayPolicy) -> Policy {
        self.local.unwrap_or_else(|| Policy::from_manifest(campaign))
    }

    /// Whether `p` allows relaying now (conditions and window), and why.
    fn allows(&self, p: &Policy) -> (bool, String) {
        let Some((_, r)) = &self.readings else {
            if *p == Policy::ALWAYS {
                return (true, "policy always".into());
            }
            return (false, format!("policy {p}: no probe reading yet"));
        };
        let (ok, why) = self.cond.allows(p);
        let mut text = format!("policy {p}");
        if !why.is_empty() {
            text.push_str(": ");
            text.push_str(&why);
        }
        if let Some(w) = p.window {
            let inside = w.contains(r.local_minutes);
            let sep = if why.is_empty() { ": " } else { "; " };
            text.push_str(&format!(
                "{sep}local time {} is {} {w}",
                hhmm(r.local_minutes),
                if inside { "inside" } else { "outside" }
            ));
            return (ok && inside, text);
        }
        (ok, text)
    }

    /// Steps gate `i` at `now`; returns the change, if any.
    fn step(&mut self, now: Duration, i: usize) -> Option<GateChange> {
        let (allowed, why) = self.allows(&self.gates[i].policy);
        let reopen = self.th.reopen_after;
        let g = &mut self.gates[i];
        let was = g.open;
        if allowed {
            let since = *g.allowed_since.get_or_insert(now);
            if !g.open {
                let ready = !g.closed_before || now >= since + reopen;
                if ready {
                    g.open = true;
                    g.reason = why;
                } else {
                    let held = now.saturating_sub(since).as_secs();
                    g.reason = format!(
                        "{why}; allowed again for {held} s, relays once allowed for {} s (no flapping)",
                        reopen.as_secs()
                    );
                }
            } else {
                g.reason = why;
            }
        } else {
            g.allowed_since = None;
            if g.open {
                g.open = false;
                g.closed_before = true;
            }
            g.reason = why;
        }
        (g.open != was).then(|| {
            g.since = now;
            GateChange {
                policy: g.policy,
                open: g.open,
                reason: g.reason.clone(),
            }
        })
    }

    /// New readings at `now`: conditions and every gate are updated; returns the gates
    /// that opened or closed.
    pub fn update(&mut self, now: Duration, r: Readings) -> Vec<GateChange> {
        self.cond.update(&r, &self.th);
        self.readings = Some((now, r));
        (0..self.gates.len()).filter_map(|i| self.step(now, i)).collect()
    }

    /// The gate of `p` (tracked from now on if it was not), evaluated at `now` if new.
    pub fn gate(&mut self, now: Duration, p: Policy) -> &Gate {
        let i = match self.gates.iter().position(|g| g.policy == p) {
            Some(i) => i,
            None => {
                self.gates.push(Gate {
                    policy: p,
                    open: false,
                    reason: String::new(),
                    since: now,
                    closed_before: false,
                    allowed_since: None,
                });
                let i = self.gates.len() - 1;
                self.step(now, i);
                self.gates[i].since = now;
                i
            }
        };
        &self.gates[i]
    }

    /// Stops tracking gates whose policy `in_use` rejects (the owner's policy stays).
    pub fn retain(&mut self, in_use: impl Fn(&Policy) -> bool) {
        let local = self.local;
        self.gates
            .retain(|g| Some(g.policy) == local || in_use(&g.policy));
    }
}

/// An upload rate cap (`--max-upload`): a token bucket on the bytes of chunk answers.
/// [`UploadCap::reserve`] says how long an answer of `bytes` must wait so that the
/// answers sent stay under `rate` bytes a second, with bursts of at most `burst` bytes.
#[derive(Debug, Clone)]
pub struct UploadCap {
    rate: u64,
    burst: u64,
    /// When every byte reserved so far has drained at `rate`.
    free_at: Duration,
}

impl UploadCap {
    /// A cap of `rate` bytes a second (at least 1), bursts of `burst` bytes.
    pub fn new(rate: u64, burst: u64) -> Self {
        UploadCap {
            rate: rate.max(1),
            burst,
            free_at: Duration::ZERO,
        }
    }

    /// Bytes a second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Reserves `bytes` at `now`; returns how long to wait before sending them.
    pub fn reserve(&mut self, now: Duration, bytes: u64) -> Duration {
        let per = |b: u64| Duration::from_secs_f64(b as f64 / self.rate as f64);
        // `free_at`: when everything reserved so far has drained at `rate`; a send waits
        // only for what is more than `burst` bytes ahead of `now`
        self.free_at = self.free_at.max(now) + per(bytes);
        (self.free_at - now).saturating_sub(per(self.burst))
    }
}

/// Parses a rate such as `20mbit`, `500kbit`, `1gbit`, `2MB` (bytes), `100kB` or a bare
/// number of bits a second; returns bytes a second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a rate: give e.g. 20mbit, 500kbit or 2MB (bytes)"))?;
    let bits = match unit.trim() {
        "" | "bit" | "bps" => 1.0,
        "kbit" | "Kbit" | "kbps" => 1e3,
        "mbit" | "Mbit" | "mbps" | "Mbps" => 1e6,
        "gbit" | "Gbit" | "gbps" | "Gbps" => 1e9,
        "B" => 8.0,
        "kB" | "KB" | "KiB" => 8.0 * 1024.0,
        "MB" | "MiB" => 8.0 * 1024.0 * 1024.0,
        "GB" | "GiB" => 8.0 * 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "unknown unit `{u}` in `{s}`: use bit, kbit, mbit, gbit, B, kB, MB or GB"
            ));
        }
    };
    let bytes = n * bits / 8.0;
    // a requester gives up on a chunk after 60 s; a few 128 KiB chunks must fit in that
    if !bytes.is_finite() || bytes < 12_500.0 {
        return Err(format!(
            "`{s}` is below 100kbit: served chunks would time out at the nodes asking for them"
        ));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn busy(idle: f64) -> Readings {
        Readings {
            cpu_idle: Some(idle),
            idle_span_secs: 30,
            local_minutes: 12 * 60,
            ..Readings::default()
        }
    }

    fn p(s: &str) -> Policy {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_policies() {
        for s in [
            "always",
            "idle",
            "ac",
            "idle-or-ac",
            "idle-and-ac",
            "22:00-06:00",
            "idle,22:00-06:00",
            "ac,09:30-17:00",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
        assert_eq!(p("IDLE + 01:05-02:00").to_string(), "idle,01:05-02:00");
        assert_eq!(p("22:00-06:00").when, RelayWhen::Always);
        assert_eq!("".parse::<Policy>(), Err(PolicyError::Empty));
        assert!(matches!(
            "sometimes".parse::<Policy>(),
            Err(PolicyError::Unknown(_))
        ));
        assert!(matches!(
            "24:00-06:00".parse::<Policy>(),
            Err(PolicyError::BadTime(_))
        ));
        assert!(matches!(
            "7:5-08:00".parse::<Policy>(),
            Err(PolicyError::BadTime(_))
        ));
        assert!(matches!(
            "10:00-10:00".parse::<Policy>(),
            Err(PolicyError::EmptyWindow(_))
        ));
        assert!(matches!("idle,ac".parse::<Policy>(), Err(PolicyError::Twice(_))));
        assert!(matches!(
            "01:00-02:00,03:00-04:00".parse::<Policy>(),
            Err(PolicyError::Twice(_))
        ));
        let m = p("idle,22:00-06:00").to_manifest(60);
        assert_eq!(m.window, Some((22 * 60, 6 * 60)));
        assert_eq!(Policy::from_manifest(&m), p("idle,22:00-06:00"));
    }

    #[test]
    fn windows_across_midnight() {
        let w: Window = "22:00-06:00".parse().unwrap();
        assert!(w.contains(22 * 60));
        assert!(w.contains(23 * 60 + 59));
        assert!(w.contains(0));
        assert!(w.contains(5 * 60 + 59));
        assert!(!w.contains(6 * 60));
        assert!(!w.contains(12 * 60));
        assert!(!w.contains(21 * 60 + 59));
        let day: Window = "09:00-17:00".parse().unwrap();
        assert!(day.contains(9 * 60) && day.contains(16 * 60 + 59));
        assert!(!day.contains(17 * 60) && !day.contains(8 * 60 + 59));
        // an empty window from a manifest allows nothing
        let empty = Policy::from_manifest(&RelayPolicy {
            window: Some((600, 600)),
            ..RelayPolicy::default()
        });
        assert!(!empty.window.unwrap().contains(600));
    }

    #[test]
    fn local_setting_wins_over_the_manifest() {
        let campaign = p("ac").to_manifest(60);
        let g = Gating::new(Thresholds::default(), None);
        assert_eq!(g.effective(&campaign), p("ac"));
        let g = Gating::new(Thresholds::default(), Some(p("idle")));
        assert_eq!(g.effective(&campaign), p("idle"));
    }

    #[test]
    fn idle_policy_with_hysteresis_and_reopen_delay() {
        let mut g = Gating::new(Thresholds::default(), None);
        let idle = p("idle");
        // no reading yet: closed, and the reason says so
        let gate = g.gate(t(0), idle).clone();
        assert!(!gate.open);
        assert!(gate.reason.contains("no probe reading"), "{}", gate.reason);
        // 85% idle: opens at once (it never closed before)
        let ch = g.update(t(1), busy(0.85));
        assert_eq!(ch.len(), 1);
        assert!(ch[0].open);
        // 75%: below 80% but inside the band, so still idle
        assert!(g.update(t(2), busy(0.75)).is_empty());
        assert!(g.gate(t(2), idle).open);
        assert!(g.gate(t(2), idle).reason.contains("still idle until below 70%"));
        // 65%: closes at once
        let ch = g.update(t(3), busy(0.65));
        assert_eq!((ch.len(), ch[0].open), (1, false));
        assert!(
            ch[0].reason.contains("CPU 65% idle over 30 s"),
            "{}",
            ch[0].reason
        );
        // 75% is not idle again (must reach 80%)
        assert!(g.update(t(4), busy(0.75)).is_empty());
        // 90% from t=5: would reopen at t=65 (reopen_after 60 s)...
        assert!(g.update(t(5), busy(0.9)).is_empty());
        assert!(g.update(t(35), busy(0.9)).is_empty());
        assert!(g.gate(t(35), idle).reason.contains("allowed again for 30 s"));
        // ...but a dip at t=40 starts the wait again
        assert!(g.update(t(40), busy(0.5)).is_empty(), "already closed");
        assert!(g.update(t(65), busy(0.9)).is_empty());
        assert!(g.update(t(124), busy(0.9)).is_empty());
        let ch = g.update(t(125), busy(0.9));
        assert_eq!((ch.len(), ch[0].open), (1, true));
        assert_eq!(g.gate(t(125), idle).since, t(125));
    }

    #[test]
    fn no_flapping_on_a_noisy_cpu() {
        let mut g = Gating::new(Thresholds::default(), None);
        g.gate(t(0), p("idle"));
        let mut changes = 0;
        // idle hovering around 80% (72% to 88%), one reading every 2 s for 10 minutes
        for k in 0..300u64 {
            let v = 0.80 + 0.08 * if k % 2 == 0 { 1.0 } else { -1.0 };
            changes += g.update(t(2 * k), busy(v)).len();
        }
        assert_eq!(changes, 1, "opens once and stays open inside the band");
        // crossing the band every 2 s (60% / 90%): closes, then opens at most once a minute
        let mut changes = 0;
        for k in 300..600u64 {
            let v = if k % 2 == 0 { 0.6 } else { 0.9 };
            changes += g.update(t(2 * k), busy(v)).len();
        }
        assert_eq!(changes, 1, "closed once, never allowed for 60 s in a row");
    }

    #[test]
    fn power_battery_threshold_and_no_battery_is_ac() {
        let mut g = Gating::new(Thresholds::default(), None);
        let ac = p("ac");
        let r = |ac: Option<bool>, bat: Option<f64>| Readings {
            ac_online: ac,
            battery_percent: bat,
            ..busy(0.1)
        };
        g.gate(t(0), ac);
        // a desktop: no mains entry, no battery: on AC
        assert!(g.update(t(1), r(None, None))[0].open);
        // laptop unplugged at 55%: fine
        assert!(g.update(t(2), r(Some(false), Some(55.0))).is_empty());
        // 37%: below 40 but within the 5-point band
        assert!(g.update(t(3), r(Some(false), Some(37.0))).is_empty());
        // 34%: closed
        let ch = g.update(t(4), r(Some(false), Some(34.0)));
        assert!(!ch[0].open);
        assert!(
            ch[0].reason.contains("on battery at 34% (needs 40%)"),
            "{}",
            ch[0].reason
        );
        // plugged in: allowed, but reopens only after 60 s
        assert!(g.update(t(5), r(Some(true), Some(34.0))).is_empty());
        assert!(g.update(t(65), r(Some(true), Some(35.0)))[0].open);
        // an owner who never relays on battery
        let th = Thresholds {
            battery_min: None,
            ..Thresholds::default()
        };
        let mut g = Gating::new(th, Some(ac));
        g.gate(t(0), ac);
        assert!(g.update(t(1), r(Some(false), Some(100.0))).is_empty());
        assert!(!g.gate(t(1), ac).open);
        assert!(g.gate(t(1), ac).reason.contains("never relays on battery"));
    }

    #[test]
    fn combined_words() {
        let mut g = Gating::new(Thresholds::default(), None);
        let (or, and) = (p("idle-or-ac"), p("idle-and-ac"));
        let r = |idle: f64, ac: bool| Readings {
            ac_online: Some(ac),
            battery_percent: Some(10.0),
            ..busy(idle)
        };
        g.update(t(0), r(0.1, true));
        assert!(g.gate(t(0), or).open);
        assert!(!g.gate(t(0), and).open);
        g.update(t(1), r(0.95, false));
        assert!(g.gate(t(1), or).open, "idle is enough");
        assert!(!g.gate(t(1), and).open);
        g.update(t(2), r(0.95, true));
        assert!(g.gate(t(2), and).open, "never closed before: opens at once");
        let ch = g.update(t(3), r(0.1, false));
        assert_eq!(ch.len(), 2, "both close: {ch:?}");
        let reason = &g.gate(t(3), and).reason;
        assert!(
            reason.contains("CPU 10% idle") && reason.contains("on battery at 10%"),
            "{reason}"
        );
    }

    #[test]
    fn window_alone_and_with_a_word() {
        let mut g = Gating::new(Thresholds::default(), None);
        let night = p("22:00-06:00");
        let idle_night = p("idle,22:00-06:00");
        let at = |m: u16, idle: f64| Readings {
            local_minutes: m,
            ..busy(idle)
        };
        g.update(t(0), at(21 * 60 + 59, 0.95));
        assert!(!g.gate(t(0), night).open);
        assert!(
            g.gate(t(0), night)
                .reason
                .contains("local time 21:59 is outside 22:00-06:00")
        );
        assert!(!g.gate(t(0), idle_night).open);
        let ch = g.update(t(60), at(22 * 60, 0.95));
        assert_eq!(ch.len(), 2, "both open at 22:00 (never closed before)");
        // busy inside the window: only the combined one closes
        let ch = g.update(t(120), at(23 * 60, 0.2));
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].policy, idle_night);
        // past midnight, still inside
        assert!(g.update(t(180), at(3 * 60, 0.2)).is_empty());
        assert!(g.gate(t(180), night).open);
        // 06:00: closes
        let ch = g.update(t(240), at(6 * 60, 0.95));
        assert_eq!(ch.len(), 1);
        assert!(!ch[0].open && ch[0].policy == night);
    }

    #[test]
    fn cpuidle_residency_must_agree() {
        let r = Readings {
            cpu_idle: Some(0.95),
            cpuidle_residency: Some(0.5),
            ..busy(0.0)
        };
        assert_eq!(r.idle_measure(), Some(0.5));
        let only = Readings {
            cpu_idle: None,
            cpuidle_residency: Some(0.9),
            ..busy(0.0)
        };
        assert_eq!(only.idle_measure(), Some(0.9));
        let junk = Readings {
            cpu_idle: Some(f64::NAN),
            cpuidle_residency: Some(7.0),
            ..busy(0.0)
        };
        assert_eq!(
            junk.idle_measure(),
            Some(1.0),
            "NaN ignored, out of range clamped"
        );
        let mut g = Gating::new(Thresholds::default(), None);
        g.update(t(0), r);
        assert!(!g.gate(t(0), p("idle")).open);
    }

    #[test]
    fn always_needs_no_reading_and_retain_keeps_the_local_policy() {
        let mut g = Gating::new(Thresholds::default(), Some(p("idle")));
        assert!(g.gate(t(0), Policy::ALWAYS).open);
        g.gate(t(0), p("idle"));
        g.gate(t(0), p("ac"));
        g.retain(|q| *q == Policy::ALWAYS);
        let left: Vec<String> = g.gates().iter().map(|x| x.policy.to_string()).collect();
        assert_eq!(left, ["always", "idle"]);
    }
    #[test]
    fn upload_cap_is_a_token_bucket() {
        // 1 MB/s, bursts of 256 kB
        let mut c = UploadCap::new(1_000_000, 256_000);
        assert_eq!(c.reserve(t(0), 128_000), Duration::ZERO);
        assert_eq!(c.reserve(t(0), 128_000), Duration::ZERO, "inside the burst");
        let w = c.reserve(t(0), 128_000);
        assert!((w.as_secs_f64() - 0.128).abs() < 1e-6, "{w:?}");
        // 10 chunks of 100 kB sent as soon as allowed take about 1 s beyond the burst
        let mut c = UploadCap::new(1_000_000, 0);
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            last = c.reserve(t(5), 100_000);
        }
        assert!((last.as_secs_f64() - 1.0).abs() < 1e-6, "{last:?}");
        // idle time refills the bucket, up to the burst only
        let mut c = UploadCap::new(1_000_000, 100_000);
        assert_eq!(c.reserve(t(100), 100_000), Duration::ZERO);
        assert!(c.reserve(t(100), 100_000) > Duration::ZERO);
        assert_eq!(parse_rate("20mbit"), Ok(2_500_000));
        assert_eq!(parse_rate("500kbit"), Ok(62_500));
        assert_eq!(parse_rate("2MB"), Ok(2 * 1024 * 1024));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("20furlongs").unwrap_err().contains("unknown unit"));
        assert!(parse_rate("100bit").unwrap_err().contains("below 100kbit"));
        assert_eq!(parse_rate("100kbit"), Ok(12_500));
    }
}
