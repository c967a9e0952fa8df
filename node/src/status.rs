//! `baton-node status`: what the running node answers on its control socket about relay
//! gating (the probe's readings, the effective policy, whether it relays now and why),
//! and how the command shows it.

use std::fmt::Write as _;
use std::time::Duration;

use baton_protocol::NodeId;
use baton_protocol::endpoint::node::NodeEndpoint;
use baton_protocol::gate::Readings;
use serde_json::{Value, json};

fn readings_json(r: &Readings, age: Duration) -> Value {
    json!({
        "age_secs": age.as_secs(),
        "cpu_idle": r.cpu_idle,
        "cpuidle_residency": r.cpuidle_residency,
        "idle_span_secs": r.idle_span_secs,
        "ac_online": r.ac_online,
        "on_ac": r.on_ac(),
        "battery_percent": r.battery_percent,
        "local_time": format!("{:02}:{:02}", r.local_minutes / 60, r.local_minutes % 60),
    })
}

/// The status answer, from the endpoint's gating at `now`.
pub fn status(
    me: NodeId,
    ep: &NodeEndpoint,
    now: Duration,
    probe_error: Option<&str>,
    max_upload: Option<u64>,
) -> Value {
    let g = ep.gating();
    let th = g.thresholds();
    let gates: Vec<Value> = g
        .gates()
        .iter()
        .map(|gate| {
            let mut campaigns = Vec::new();
            for c in ep.campaign_ids() {
                if ep.relay_policy(&c) == Some(gate.policy) {
                    campaigns.push(hex::encode(c));
                }
            }
            json!({
                "policy": gate.policy.to_string(),
                "from": if Some(gate.policy) == g.local() { "owner" } else { "campaign" },
                "relaying": gate.open,
                "reason": gate.reason,
                "for_secs": now.saturating_sub(gate.since).as_secs(),
                "campaigns": campaigns,
            })
        })
        .collect();
    let relaying = match g.local() {
        Some(p) => g.gates().iter().find(|x| x.policy == p).map(|x| x.open),
        None => None,
    };
    json!({
        "node": me.to_string(),
        "policy": g.local().map(|p| p.to_string()),
        "relaying": relaying,
        "thresholds": {
            "idle_percent": th.idle_min * 100.0,
            "idle_leave_percent": (th.idle_min - th.idle_band) * 100.0,
            "battery_min_percent": th.battery_min,
            "battery_leave_percent": th.battery_min.map(|b| b - th.battery_band),
            "reopen_after_secs": th.reopen_after.as_secs(),
        },
        "max_upload_bytes_per_sec": max_upload,
        "readings": g.readings().map(|(at, r)| readings_json(r, now.saturating_sub(*at))),
        "probe_error": probe_error,
        "gates": gates,
    })
}

fn pct(v: &Value) -> Option<String> {
    v.as_f64().map(|f| format!("{:.0}%", f * 100.0))
}

/// The status answer as the owner reads it.
pub fn render(s: &Value) -> String {
    let mut out = String::new();
    if let Some(e) = s.get("error").and_then(Value::as_str) {
        return format!("the node answered an error: {e}\n");
    }
    let _ = writeln!(out, "node {}", s["node"].as_str().unwrap_or("?"));
    match (s["policy"].as_str(), s["relaying"].as_bool()) {
        (Some(p), Some(r)) => {
            let reason = s["gates"]
                .as_array()
                .and_then(|g| g.iter().find(|x| x["policy"] == p))
                .and_then(|x| x["reason"].as_str())
                .unwrap_or("");
            let _ = writeln!(
                out,
                "relaying now: {} ({reason})",
                if r { "yes" } else { "no, gated" }
            );
            let _ = writeln!(
                out,
                "policy: {p} (the owner's setting; it wins over every campaign's)"
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "policy: none set here: each campaign's manifest decides (the NMS's default is `always`)"
            );
        }
    }
    let th = &s["thresholds"];
    let battery = match th["battery_min_percent"].as_f64() {
        Some(b) => format!(
            "on battery at least {b:.0}% (bad again below {:.0}%)",
            th["battery_leave_percent"].as_f64().unwrap_or(b)
        ),
        None => "never on battery".into(),
    };
    let _ = writeln!(
        out,
        "thresholds: idle = at least {:.0}% idle (idle until below {:.0}%); {battery}; after a close, relays again once allowed for {} s",
        th["idle_percent"].as_f64().unwrap_or(0.0),
        th["idle_leave_percent"].as_f64().unwrap_or(0.0),
        th["reopen_after_secs"].as_u64().unwrap_or(0)
    );
    match s["max_upload_bytes_per_sec"].as_u64() {
        Some(b) => {
            let _ = writeln!(out, "upload cap: {:.1} Mbit/s", b as f64 * 8.0 / 1e6);
        }
        None => {
            let _ = writeln!(out, "upload cap: none");
        }
    }
    let r = &s["readings"];
    if r.is_null() {
        let _ = writeln!(out, "readings: none yet");
    } else {
        let cpu = match pct(&r["cpu_idle"]) {
            Some(p) => format!("CPU {p} idle over {} s", r["idle_span_secs"]),
            None => "CPU: not measured yet".into(),
        };
        let cpuidle = match pct(&r["cpuidle_residency"]) {
            Some(p) => format!("cpuidle residency {p}"),
            None => "no cpuidle".into(),
        };
        let power = match (r["ac_online"].as_bool(), r["battery_percent"].as_f64()) {
            (_, None) if r["on_ac"] == true => "on AC (no battery)".to_string(),
            (Some(true), Some(b)) => format!("on AC, battery {b:.0}%"),
            (_, Some(b)) => format!("on battery, {b:.0}%"),
            _ => "on battery, charge unknown".to_string(),
        };
        let _ = writeln!(
            out,
            "readings ({} s ago): {cpu}; {cpuidle}; {power}; local time {}",
            r["age_secs"],
            r["local_time"].as_str().unwrap_or("?")
        );
    }
    if let Some(e) = s["probe_error"].as_str() {
        let _ = writeln!(out, "probe error: {e}");
    }
    if let Some(gates) = s["gates"].as_array() {
        for g in gates {
            let campaigns: Vec<String> = g["campaigns"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .filter_map(Value::as_str)
                        .map(|h| h[..h.len().min(12)].to_string())
                        .collect()
                })
                .unwrap_or_default();
            let whose = if campaigns.is_empty() {
                "no campaign running".to_string()
            } else {
                format!("campaigns {}", campaigns.join(", "))
            };
            let _ = writeln!(
                out,
                "  {} [{}]: {} for {} s, {whose}: {}",
                g["policy"].as_str().unwrap_or("?"),
                g["from"].as_str().unwrap_or("?"),
                if g["relaying"] == true {
                    "relaying"
                } else {
                    "gated"
                },
                g["for_secs"],
                g["reason"].as_str().unwrap_or("")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_protocol::endpoint::node::{Config, Input, Start};
    use baton_protocol::gate::Thresholds;
    use baton_protocol::id::fake_id;

    #[test]
    fn status_shows_readings_policy_and_why() {
        let cfg = Config {
            relay_policy: Some("idle,22:00-06:00".parse().unwrap()),
            gate: Thresholds::default(),
            ..Config::default()
        };
        let mut ep = NodeEndpoint::new(Duration::ZERO, fake_id(1), cfg, Start::default());
        let r = Readings {
            cpu_idle: Some(0.95),
            idle_span_secs: 30,
            ac_online: None,
            battery_percent: None,
            local_minutes: 14 * 60 + 5,
            ..Readings::default()
        };
        ep.handle(Duration::from_secs(10), Input::Readings(r));
        let s = status(fake_id(1), &ep, Duration::from_secs(12), None, Some(2_500_000));
        assert_eq!(s["relaying"], false);
        assert_eq!(s["readings"]["age_secs"], 2);
        let text = render(&s);
        for want in [
            "relaying now: no, gated",
            "policy: idle,22:00-06:00 (the owner's setting",
            "CPU 95% idle over 30 s",
            "on AC (no battery)",
            "local time 14:05",
            "local time 14:05 is outside 22:00-06:00",
            "upload cap: 20.0 Mbit/s",
            "at least 80% idle (idle until below 70%)",
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }
        let none = NodeEndpoint::new(Duration::ZERO, fake_id(1), Config::default(), Start::default());
        let text = render(&status(
            fake_id(1),
            &none,
            Duration::ZERO,
            Some("no /proc/stat"),
            None,
        ));
        assert!(text.contains("each campaign's manifest decides"), "{text}");
        assert!(text.contains("readings: none yet") && text.contains("probe error: no /proc/stat"));
        assert!(render(&json!({"error": "x"})).contains("answered an error: x"));
    }
}
