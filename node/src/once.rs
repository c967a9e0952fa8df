//! The one-shot agent, `baton-node --once`: run from a package on a machine that has no
//! Baton daemon, it joins, receives, installs, relays to its part of the list, and exits.
//!
//! Here: [`OnceDirs`], where the agent keeps its state. By default a temporary directory
//! `<data>/.once-<pid>-<nanos>` (identity key, journal, partial downloads, control socket)
//! removed when the agent ends, also on failure, Ctrl-C, SIGTERM or SIGHUP; installed versions go
//! to `<data>/packages` as a daemon's would, so that only they remain. With
//! `--keep-identity` the state is the data directory itself, as a daemon's, and stays.
//! When the agent ends and how is decided in the core ([`Watch`], [`End`]); [`result`]
//! turns that into the exit status and its message.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
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

/// How the agent ended, and when: decided in the core.
pub use baton_protocol::endpoint::once::{End, Watch};

/// The process's result of how the agent ended: `Ok` only when installed (or up to
/// date); otherwise an error saying why (the binary exits non-zero).
pub fn result(end: End) -> Result<()> {
    match end {
        End::Installed { what, served_chunks } => {
            println!("baton-node --once: installed {what}, served {served_chunks} chunks to others; exiting");
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

#[cfg(test)]
mod tests {
    use super::*;
    use baton_protocol::endpoint::node::Event;
    use baton_protocol::receiver::Refusal;
    use baton_protocol::wire::RefuseReason;

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

    #[test]
    fn the_timeout_says_what_was_seen() {
        let mut w = Watch::new();
        let msg = |w: &Watch| {
            format!(
                "{:#}",
                result(w.timed_out(Duration::from_secs(3600))).unwrap_err()
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
        // installed and up to date exit 0; a failure exits non-zero with its reason
        assert!(
            result(End::Installed {
                what: "frob 1.0 (sequence 4)".into(),
                served_chunks: 24
            })
            .is_ok()
        );
        assert!(
            result(End::UpToDate {
                detail: "frob sequence 1 is installed".into()
            })
            .is_ok()
        );
        let msg = format!(
            "{:#}",
            result(End::Failed {
                reason: "frob (sequence 1): install command `false`".into()
            })
            .unwrap_err()
        );
        assert!(
            msg.contains("failed on this machine: frob (sequence 1): install command `false`"),
            "{msg}"
        );
        let e = result(End::Interrupted { signal: "SIGTERM" }).unwrap_err();
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
