//! A process's persistent ed25519 identity, kept in its data directory (mode 0600).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use baton_protocol::Keypair;

/// File name of the identity key inside a data directory.
pub const KEY_FILE: &str = "identity.key";

/// Loads the key from `dir/identity.key`, or creates one (mode 0600) if there is none.
pub fn load_or_create(dir: &Path) -> Result<Keypair> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let path = dir.join(KEY_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let kp = Keypair::from_protobuf_encoding(&bytes).with_context(|| {
                format!(
                    "{} is not a Baton identity key; move it away to create a new identity (the node's peer id will change)",
                    path.display()
                )
            })?;
            let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "{} was readable by others (mode {mode:o}); setting it to 0600",
                    path.display()
                );
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            }
            Ok(kp)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kp = Keypair::generate_ed25519();
            let bytes = kp.to_protobuf_encoding().context("encoding a new key")?;
            let tmp = dir.join(format!(".{KEY_FILE}.tmp"));
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            Ok(kp)
        }
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    }
}

/// File name of the lock held by the process that owns a data directory.
pub const LOCK_FILE: &str = "lock";

/// The exclusive hold of a data directory; released when dropped (or the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: fs::File,
}

/// Takes the data directory for this process, so that two daemons never share one
/// identity and store. The lock file holds the owner's PID, to name it when refused.
pub fn lock_data_dir(dir: &Path, program: &str) -> Result<DataDirLock> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let owner = fs::read_to_string(&path).unwrap_or_default();
            let owner = owner.trim();
            let who = if owner.is_empty() {
                "another process".to_string()
            } else {
                format!("process {owner}")
            };
            bail!(
                "the data directory {} is in use by {who}: two {program}s cannot share one data directory (one identity); stop that process, or give this one another --data-dir",
                dir.display()
            );
        }
        Err(fs::TryLockError::Error(e)) => bail!("cannot lock {}: {e}", path.display()),
    }
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_has_one_owner() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_data_dir(dir.path(), "baton-node").unwrap();
        let e = lock_data_dir(dir.path(), "baton-node").unwrap_err().to_string();
        assert!(
            e.contains("in use by process") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        drop(held);
        lock_data_dir(dir.path(), "baton-node").unwrap();
    }

    #[test]
    fn identity_persists_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public(), b.public());
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        fs::write(dir.path().join(KEY_FILE), b"junk").unwrap();
        let e = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a Baton identity key"), "{e}");
    }
}
