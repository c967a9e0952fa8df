//! The one-shot agent, `baton-node --once`: run from a package on a machine that has no
//! Baton daemon, it joins, receives, installs, relays to its part of the list, and exits.
//!
//! Two things live here, both outside the core (they decide nothing about a campaign):
//!
//! - [`OnceDirs`]: where the agent keeps its state. By default a temporary directory
//!   `<data>/.once-<pid>-<nanos>` (identity key, journal, partial downloads, control socket)
//!   removed when the agent ends, also on failure, Ctrl-C or SIGTERM; installed versions go
//!   to `<data>/packages` as a daemon's would, so that only they remain. With
//!   `--keep-identity` the state is the data directory itself, as a daemon's, and stays.
//! - [`Watch`]: when the agent ends and with which status, from the endpoint's events:
//!   once a campaign is over here (installed or failed, *and* its relaying done:
//!   [`Event::Finished`] comes after the machine's `RelayDone` and the delivery of its
//!   reports) and no other is in hand; when an offer of a version installed here already
//!   was refused (up to date); or when the `--once-timeout` passes.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use baton_protocol::endpoint::node::Event;
use baton_protocol::receiver::Refusal;
use baton_protocol::wire::RefuseReason;
use baton_protocol::{CampaignId, Phase};
use baton_shell::identity::{DataDirLock, LOCK_FILE, lock_data_dir};
use tracing::{info, warn};

/// How long `--once` waits for a campaign to finish by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// The name prefix of a one-shot agent's temporary state directory in the data directory.
pub const STATE_PREFIX: &str = ".once-";

/// Parses `--once-timeout`: seconds (`90`), or a number with a unit `s`, `m`, `h`
/// (`90s`, `30m`, `2h`). Zero is refused.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => {
            return Err(format!(
                "`{s}` is not a duration: write seconds (3600) or 90s, 30m, 2h"
            ));
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: write seconds (3600) or 90s, 30m, 2h"))?;
    if n == 0 {
        return Err("--once-timeout must be more than 0".into());
    }
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// A one-shot agent's temporary state directory, and the hold of the data directory it
/// installs into. Dropping it removes the state directory (and the data directory's lock
/// file, if this agent made it).
#[derive(Debug)]
pub struct TempState {
    path: PathBuf,
    install_dir: PathBuf,
    made_lock_file: bool,
    _lock: DataDirLock,
}

impl TempState {
    /// The temporary state directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempState {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => info!("--once: removed the temporary state {}", self.path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(
                "--once: could not remove the temporary state {}: {e}; remove it by hand (the next --once run on {} removes it too)",
                self.path.display(),
                self.install_dir.display()
            ),
        }
        if self.made_lock_file {
            // still held: a process starting now on this data directory finds it locked
            // until this one ends, then makes its own
            let _ = fs::remove_file(self.install_dir.join(LOCK_FILE));
        }
    }
}

/// Where a one-shot agent keeps its state and installs packages.
#[derive(Debug)]
pub struct OnceDirs {
    /// Identity key, journal, partial downloads, pins, control socket.
    pub state_dir: PathBuf,
    /// Where `packages/` is: the data directory.
    pub install_dir: PathBuf,
    /// The temporary state, removed when dropped (`None` with `--keep-identity`).
    pub temp: Option<TempState>,
}

impl OnceDirs {
    /// The directories for `--once` on data directory `data_dir`. With `keep_identity` the
    /// state is the data directory itself (the agent locks it as a daemon does). Without,
    /// it holds the data directory (no daemon or other one-shot agent may use it while this
    /// one runs), removes what earlier one-shot agents killed before their cleanup left, and
    /// makes a new temporary state directory (mode 0700) inside it, so that the received
    /// file is hard-linked into `packages/` rather than copied.
    pub fn new(data_dir: &Path, keep_identity: bool) -> Result<OnceDirs> {
        if keep_identity {
            return Ok(OnceDirs {
                state_dir: data_dir.to_path_buf(),
                install_dir: data_dir.to_path_buf(),
                temp: None,
            });
        }
        fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let made_lock_file = !data_dir.join(LOCK_FILE).exists();
        let lock = lock_data_dir(data_dir, "baton-node").context(
            "--once cannot use this data directory while another baton-node runs on it (a daemon there receives the package itself)",
        )?;
        for stale in stale_states(data_dir) {
            match fs::remove_dir_all(&stale) {
                Ok(()) => info!(
                    "--once: removed {} left by an earlier one-shot run",
                    stale.display()
                ),
                Err(e) => warn!(
                    "--once: could not remove {} left by an earlier run: {e}",
                    stale.display()
                ),
            }
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = data_dir.join(format!("{STATE_PREFIX}{}-{nanos}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create the temporary state directory {}", path.display()))?;
        Ok(OnceDirs {
            state_dir: path.clone(),
            install_dir: data_dir.to_path_buf(),
            temp: Some(TempState {
                path,
                install_dir: data_dir.to_path_buf(),
                made_lock_file,
                _lock: lock,
            }),
        })
    }
}

/// Temporary state directories in `data_dir` (only called while holding its lock, so no
/// one-shot agent is using any of them).
fn stale_states(data_dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(data_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(STATE_PREFIX))
        })
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// How a one-shot agent ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Its last campaign installed here and its relaying is done.
    Installed {
        /// `name version (sequence N)`.
        what: String,
        /// Chunks served to others in that campaign.
        served_chunks: u64,
    },
    /// Nothing to download: the NMS offered a version this machine has installed already
    /// (an agent run again on a machine it provisioned).
    UpToDate {
        /// The refusal's detail (`frob sequence 3 is installed`).
        detail: String,
    },
    /// Its last campaign failed here (relaying done).
    Failed {
        /// The campaign's reason.
        reason: String,
    },
    /// No campaign finished in time.
    TimedOut {
        /// The timeout.
        after: Duration,
        /// What the agent saw meanwhile, for the message.
        seen: String,
    },
    /// Ctrl-C or SIGTERM before a campaign finished.
    Interrupted {
        /// `SIGINT` or `SIGTERM`.
        signal: &'static str,
    },
}

impl End {
    /// The process's result: `Ok` only when installed; otherwise an error saying why
    /// (the binary exits non-zero).
    pub fn result(self) -> Result<()> {
        match self {
            End::Installed { what, served_chunks } => {
                println!(
                    "baton-node --once: installed {what}, served {served_chunks} chunks to others; exiting"
                );
                Ok(())
            }
            End::UpToDate { detail } => {
                println!("baton-node --once: nothing to download ({detail}); exiting");
                Ok(())
            }
            End::Failed { reason } => bail!("--once: the campaign failed on this machine: {reason}"),
            End::TimedOut { after, seen } => bail!(
                "--once: no campaign finished within {}: {seen}. Check that the NMS is running and lists this machine, that --trust names its peer id, and that TCP 4100 is open; or give a longer --once-timeout",
                human(after)
            ),
            End::Interrupted { signal } => bail!("--once: stopped by {signal} before a campaign finished"),
        }
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{} h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

/// Follows the endpoint's events for `--once` and says when the agent is done.
#[derive(Debug, Default)]
pub struct Watch {
    /// Accepted campaigns: package name and sequence.
    accepted: HashMap<CampaignId, (String, u64)>,
    /// Installed campaigns: `name version (sequence N)`.
    installed: HashMap<CampaignId, String>,
    /// Failed campaigns and why.
    failed: HashMap<CampaignId, String>,
    /// Campaigns over here, in order, with their phase and chunks served.
    finished: Vec<(CampaignId, Phase, u64)>,
    last_refusal: Option<String>,
    /// Offers of a version installed here already (refused as `Installed`): why.
    up_to_date: Option<String>,
}

impl Watch {
    pub fn new() -> Watch {
        Watch::default()
    }

    /// Takes note of an event of the endpoint.
    pub fn observe(&mut self, e: &Event) {
        match e {
            Event::Accepted {
                campaign,
                name,
                sequence,
                ..
            } => {
                self.accepted.insert(*campaign, (name.clone(), *sequence));
            }
            Event::Refused { from, refusal, .. } => {
                if refusal.reason == RefuseReason::Installed {
                    self.up_to_date = Some(refusal.detail.clone());
                }
                self.last_refusal = Some(refusal_text(from, refusal));
            }
            Event::Installed {
                campaign,
                name,
                version,
                sequence,
            } => {
                self.installed
                    .insert(*campaign, format!("{name} {version} (sequence {sequence})"));
            }
            Event::Failed { campaign, reason } => {
                self.failed.insert(*campaign, reason.clone());
            }
            Event::Finished {
                campaign,
                phase,
                served_chunks,
                ..
            } => self.finished.push((*campaign, *phase, *served_chunks)),
            _ => {}
        }
    }

    /// The end, once a campaign is over here and no other is in hand (`busy`: the
    /// endpoint's [`baton_protocol::endpoint::node::NodeEndpoint::busy`]). Installed only if,
    /// for every package it took, the campaign of the newest sequence installed: an older
    /// one stopped by a newer version of its package does not count (among campaigns of
    /// one sequence, e.g. follow-ups, the last one over decides).
    ///
    /// With no campaign over and nothing in hand, an offer of a version installed here
    /// already (only a trusted, unexpired offer is refused so) ends it too: this machine is
    /// up to date.
    pub fn end(&self, busy: bool) -> Option<End> {
        if busy {
            return None;
        }
        if self.finished.is_empty() {
            return self.up_to_date.as_ref().map(|detail| End::UpToDate {
                detail: detail.clone(),
            });
        }
        let mut newest: BTreeMap<String, (u64, usize)> = BTreeMap::new();
        for (i, (c, _, _)) in self.finished.iter().enumerate() {
            let (name, seq) = self
                .accepted
                .get(c)
                .cloned()
                .unwrap_or_else(|| (format!("campaign {}", hex::encode(c)), 0));
            let e = newest.entry(name).or_insert((seq, i));
            if seq >= e.0 {
                *e = (seq, i);
            }
        }
        let (mut what, mut failures) = (Vec::new(), Vec::new());
        for (name, (seq, i)) in newest {
            let (c, phase, _) = &self.finished[i];
            if *phase == Phase::Installed {
                what.push(
                    self.installed
                        .get(c)
                        .cloned()
                        .unwrap_or_else(|| format!("{name} (sequence {seq})")),
                );
            } else {
                let why = self
                    .failed
                    .get(c)
                    .cloned()
                    .unwrap_or_else(|| format!("ended {phase:?}"));
                failures.push(format!("{name} (sequence {seq}): {why}"));
            }
        }
        Some(if failures.is_empty() {
            End::Installed {
                what: what.join(", "),
                served_chunks: self.finished.iter().map(|f| f.2).sum(),
            }
        } else {
            End::Failed {
                reason: failures.join("; "),
            }
        })
    }

    /// The end when the timeout passed.
    pub fn timed_out(&self, after: Duration) -> End {
        let seen = if !self.accepted.is_empty() {
            format!(
                "{} campaign(s) accepted, not all over yet (receiving, installing or serving)",
                self.accepted.len()
            )
        } else if let Some(r) = &self.last_refusal {
            format!("no campaign accepted; the last offer was refused: {r}")
        } else {
            "no offer arrived".to_string()
        };
        End::TimedOut { after, seen }
    }
}

fn refusal_text(from: &baton_protocol::NodeId, r: &Refusal) -> String {
    format!("from {from}: {} ({:?})", r.detail, r.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_with_units_and_zero_is_refused() {
        assert_eq!(parse_timeout("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_timeout(" 2h "), Ok(Duration::from_secs(7200)));
        for bad in ["", "h", "1d", "1.5h", "-3", "ten"] {
            let e = parse_timeout(bad).unwrap_err();
            assert!(e.contains("not a duration"), "{bad}: {e}");
        }
        assert!(parse_timeout("0").unwrap_err().contains("more than 0"));
        assert!(parse_timeout("99999999999999999999h").is_err());
    }

    fn accepted(c: u8, name: &str, seq: u64) -> Event {
        Event::Accepted {
            campaign: [c; 16],
            from: baton_protocol::NodeId::of(&baton_protocol::Keypair::generate_ed25519()),
            resumed: false,
            name: name.into(),
            version: "1.0".into(),
            sequence: seq,
            size: 1000,
            part: 3,
            chunks_on_disk: 0,
            chunks: 3,
        }
    }

    fn installed(c: u8, name: &str, seq: u64) -> Event {
        Event::Installed {
            campaign: [c; 16],
            name: name.into(),
            version: "1.0".into(),
            sequence: seq,
        }
    }

    fn failed(c: u8, reason: &str) -> Event {
        Event::Failed {
            campaign: [c; 16],
            reason: reason.into(),
        }
    }

    fn finished(c: u8, phase: Phase, served: u64) -> Event {
        Event::Finished {
            campaign: [c; 16],
            phase,
            served_chunks: served,
            fetched_chunks: 3,
            faults: 0,
        }
    }

    fn watch(events: &[Event]) -> Watch {
        let mut w = Watch::new();
        for e in events {
            w.observe(e);
        }
        w
    }

    #[test]
    fn the_agent_ends_only_when_a_campaign_is_over_and_nothing_is_in_hand() {
        let mut w = Watch::new();
        assert_eq!(w.end(false), None, "nothing happened yet");
        w.observe(&accepted(1, "frob", 4));
        w.observe(&installed(1, "frob", 4));
        // installed but still relaying: Finished has not come
        assert_eq!(w.end(false), None);
        w.observe(&finished(1, Phase::Installed, 24));
        assert_eq!(w.end(true), None, "another campaign is in hand");
        assert_eq!(
            w.end(false),
            Some(End::Installed {
                what: "frob 1.0 (sequence 4)".into(),
                served_chunks: 24
            })
        );
        assert!(w.end(false).unwrap().result().is_ok());
    }

    #[test]
    fn a_failed_install_ends_non_zero_with_its_reason() {
        let w = watch(&[
            accepted(2, "frob", 1),
            failed(2, "install command `false` exited with exit status: 1"),
            finished(2, Phase::Failed, 5),
        ]);
        let msg = format!("{:#}", w.end(false).unwrap().result().unwrap_err());
        assert!(
            msg.contains("failed on this machine: frob (sequence 1): install command `false`"),
            "{msg}"
        );
    }

    #[test]
    fn the_newest_sequence_of_each_package_decides() {
        // an older campaign stopped by a newer version of its package ends first
        let mut w = watch(&[
            accepted(1, "frob", 4),
            accepted(2, "frob", 5),
            failed(1, "superseded by sequence 5"),
            finished(1, Phase::Failed, 0),
        ]);
        assert_eq!(
            w.end(true),
            None,
            "the newer campaign is still in hand: the agent waits"
        );
        w.observe(&installed(2, "frob", 5));
        w.observe(&finished(2, Phase::Installed, 7));
        assert_eq!(
            w.end(false),
            Some(End::Installed {
                what: "frob 1.0 (sequence 5)".into(),
                served_chunks: 7
            })
        );
        // a newer version that fails is a failure, whatever was installed before
        let w = watch(&[
            accepted(1, "frob", 4),
            installed(1, "frob", 4),
            finished(1, Phase::Installed, 0),
            accepted(2, "frob", 5),
            failed(2, "disk full"),
            finished(2, Phase::Failed, 0),
        ]);
        assert_eq!(
            w.end(false),
            Some(End::Failed {
                reason: "frob (sequence 5): disk full".into()
            })
        );
        // two packages taken together: both must install
        let w = watch(&[
            accepted(1, "frob", 4),
            accepted(2, "knob", 9),
            installed(1, "frob", 4),
            finished(1, Phase::Installed, 3),
            failed(2, "checksum"),
            finished(2, Phase::Failed, 0),
        ]);
        assert_eq!(
            w.end(false),
            Some(End::Failed {
                reason: "knob (sequence 9): checksum".into()
            })
        );
        let w = watch(&[
            accepted(1, "frob", 4),
            accepted(2, "knob", 9),
            installed(1, "frob", 4),
            installed(2, "knob", 9),
            finished(2, Phase::Installed, 1),
            finished(1, Phase::Installed, 3),
        ]);
        assert_eq!(
            w.end(false),
            Some(End::Installed {
                what: "frob 1.0 (sequence 4), knob 1.0 (sequence 9)".into(),
                served_chunks: 4
            })
        );
    }

    #[test]
    fn an_offer_of_the_version_installed_here_ends_it_up_to_date() {
        let from = baton_protocol::NodeId::of(&baton_protocol::Keypair::generate_ed25519());
        let refused = |reason, detail: &str| Event::Refused {
            from,
            signer: None,
            refusal: Refusal {
                reason,
                detail: detail.into(),
            },
        };
        let mut w = Watch::new();
        w.observe(&refused(RefuseReason::Untrusted, "signed by a stranger"));
        assert_eq!(w.end(false), None, "a refused stranger's offer ends nothing");
        w.observe(&refused(
            RefuseReason::Installed,
            "campaign 01 is already over on this node (frob sequence 1 is installed); nothing to download",
        ));
        assert_eq!(w.end(true), None, "another campaign is in hand");
        let e = w.end(false).unwrap();
        assert!(matches!(&e, End::UpToDate { detail } if detail.contains("frob sequence 1 is installed")));
        assert!(e.result().is_ok());
        // a campaign over here decides, not the refusal
        w.observe(&accepted(2, "frob", 2));
        w.observe(&failed(2, "disk full"));
        w.observe(&finished(2, Phase::Failed, 0));
        assert!(matches!(w.end(false), Some(End::Failed { .. })));
    }

    #[test]
    fn the_timeout_says_what_was_seen() {
        let mut w = Watch::new();
        let msg = |w: &Watch| {
            format!(
                "{:#}",
                w.timed_out(Duration::from_secs(3600)).result().unwrap_err()
            )
        };
        let m = msg(&w);
        assert!(
            m.contains("within 1 h") && m.contains("no offer arrived") && m.contains("--once-timeout"),
            "{m}"
        );
        let from = baton_protocol::NodeId::of(&baton_protocol::Keypair::generate_ed25519());
        w.observe(&Event::Refused {
            from,
            signer: None,
            refusal: Refusal {
                reason: RefuseReason::Untrusted,
                detail: "signed by an NMS this node does not trust".into(),
            },
        });
        let m = msg(&w);
        assert!(m.contains("refused") && m.contains("does not trust"), "{m}");
        assert_eq!(human(Duration::from_secs(90)), "90 s");
        assert_eq!(human(Duration::from_secs(1800)), "30 min");
        let e = End::Interrupted { signal: "SIGTERM" }.result().unwrap_err();
        assert!(e.to_string().contains("SIGTERM"), "{e}");
    }

    #[test]
    fn the_temporary_state_is_removed_and_only_packages_remain() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        // a state left by a one-shot agent killed before its cleanup
        fs::create_dir_all(data.join(".once-1-2/partial")).unwrap();
        fs::write(data.join(".once-1-2/identity.key"), b"x").unwrap();
        let dirs = OnceDirs::new(&data, false).unwrap();
        assert!(!data.join(".once-1-2").exists(), "the stale state stays");
        let state = dirs.state_dir.clone();
        assert!(state.starts_with(&data) && state.is_dir());
        assert_eq!(dirs.install_dir, data);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
        // while it runs, no daemon or other one-shot agent may use the data directory
        let e = format!("{:#}", lock_data_dir(&data, "baton-node").unwrap_err());
        assert!(e.contains("in use"), "{e}");
        let e = format!("{:#}", OnceDirs::new(&data, false).unwrap_err());
        assert!(e.contains("while another baton-node runs on it"), "{e}");
        // what an agent leaves in both
        let store = crate::store::Store::open_split(&state, &data).unwrap();
        drop(store);
        baton_shell::identity::load_or_create(&state).unwrap();
        fs::create_dir_all(data.join("packages/frob/1")).unwrap();
        drop(dirs);
        assert!(!state.exists(), "the temporary state stays");
        let left: Vec<String> = fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["packages".to_string()]);
        // the data directory is free again
        drop(lock_data_dir(&data, "baton-node").unwrap());
    }

    #[test]
    fn keep_identity_uses_the_data_directory_as_a_daemon_does() {
        let d = tempfile::tempdir().unwrap();
        let dirs = OnceDirs::new(d.path(), true).unwrap();
        assert_eq!(dirs.state_dir, d.path());
        assert_eq!(dirs.install_dir, d.path());
        assert!(dirs.temp.is_none());
        let id = baton_shell::identity::load_or_create(&dirs.state_dir).unwrap();
        drop(dirs);
        let again = baton_shell::identity::load_or_create(d.path()).unwrap();
        assert_eq!(
            baton_protocol::NodeId::of(&id),
            baton_protocol::NodeId::of(&again)
        );
    }
}
