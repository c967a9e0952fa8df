//! Building a campaign from a dropped file: open it once and check what was opened
//! ([`Dropped::open`]), copy it from that descriptor into the NMS's store while hashing it,
//! pick the sequence number (persisted, only grows), sign the manifest.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use baton_protocol::manifest::{
    HashList, MANIFEST_FORMAT, PlanParams, RelayPolicy, is_plain_file_name, parse_package_file_name,
};
use baton_protocol::{CampaignSecret, Hash, Keypair, Manifest, NodeId, PackageHasher, SignedManifest};

/// Campaign settings from the command line.
#[derive(Debug, Clone)]
pub struct CampaignSettings {
    pub chunk_size: u32,
    pub plan: PlanParams,
    pub relay: RelayPolicy,
    pub expiry_secs: u64,
    pub offline_install: bool,
}

/// A campaign ready to start.
#[derive(Debug)]
pub struct Prepared {
    pub manifest: Manifest,
    pub signed: SignedManifest,
    pub secret: CampaignSecret,
    /// The NMS's own copy of the package, served to the first tier.
    pub file: PathBuf,
    pub dir: PathBuf,
}

/// A package file dropped into the watched folder, opened exactly once and checked on the
/// descriptor. A campaign is built only from this descriptor, so the name cannot be swapped
/// for a link (or anything else) between the check and the read.
#[derive(Debug)]
pub struct Dropped {
    path: PathBuf,
    file: fs::File,
    /// The descriptor's metadata when it was opened.
    meta: fs::Metadata,
}

impl Dropped {
    /// Opens the dropped `path` without following a symbolic link and without blocking on
    /// a FIFO, and refuses what must never be distributed: anything but a regular file
    /// with a single link, the NMS's identity key, and any file when the folder it was
    /// dropped into is, or lies inside or around, `data_dir`.
    pub fn open(path: &Path, data_dir: &Path) -> Result<Dropped> {
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        crate::watch::check_folders(folder, data_dir)
            .with_context(|| format!("{} is not distributed", path.display()))?;
        let file =
            crate::watch::open_entry(path).map_err(|e| anyhow!(crate::watch::open_refusal(path, &e)))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot examine {}", path.display()))?;
        // Before the link count: a bind mount of the key has a single link.
        let key = data_dir.join(baton_shell::identity::KEY_FILE);
        if let Ok(k) = fs::metadata(&key)
            && (k.dev(), k.ino()) == (meta.dev(), meta.ino())
        {
            bail!(
                "{} is the NMS's identity key {}; it is never distributed: remove it from the drop \
                 folder (and if anyone else could read it, give the NMS a new identity)",
                path.display(),
                key.display()
            );
        }
        if let Some(message) = crate::watch::refusal(path, &meta) {
            bail!(message);
        }
        Ok(Dropped {
            path: path.to_path_buf(),
            file,
            meta,
        })
    }
}

/// Cryptographically random bytes from the OS.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom")?;
    Ok(b)
}

/// Copies the dropped file's descriptor to `to`, hashing while copying so that the manifest
/// describes exactly the bytes served; then checks that the file did not change meanwhile.
fn copy_and_hash(dropped: &Dropped, to: &Path, chunk_size: u32) -> Result<(u64, Vec<Hash>, Hash)> {
    let shown = dropped.path.display();
    let mut src = &dropped.file;
    let mut dst = fs::File::create(to).with_context(|| format!("cannot write {}", to.display()))?;
    let mut hasher = PackageHasher::new(chunk_size);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src
            .read(&mut buf)
            .with_context(|| format!("cannot read {shown}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        std::io::Write::write_all(&mut dst, &buf[..n])
            .with_context(|| format!("cannot write {}", to.display()))?;
    }
    // no fsync: the copy only has to outlive this NMS process, and a crash ends the campaign
    let (size, hashes, root) = hasher.finish();
    let after = dropped
        .file
        .metadata()
        .with_context(|| format!("cannot examine {shown}"))?;
    let before = &dropped.meta;
    if size != before.len() || after.len() != before.len() || after.modified().ok() != before.modified().ok()
    {
        bail!(
            "{shown} changed while it was being copied ({} bytes when opened, {size} copied, {} now): \
             it was still being written, so nothing was signed and no campaign started; it is picked \
             up again once it is complete and unchanged (if not, copy it in again)",
            before.len(),
            after.len()
        );
    }
    Ok((size, hashes, root))
}

/// The persisted per-package sequence numbers.
fn next_sequence(data_dir: &Path, name: &str) -> Result<u64> {
    let path = data_dir.join("sequences.json");
    let mut seqs: BTreeMap<String, u64> = match fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t).with_context(|| {
            format!(
                "{} is corrupt; fix or remove it (sequence numbers must only grow)",
                path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    };
    let seq = seqs.get(name).copied().unwrap_or(0) + 1;
    seqs.insert(name.to_string(), seq);
    let tmp = data_dir.join(".sequences.json.tmp");
    fs::write(&tmp, serde_json::to_string_pretty(&seqs)?)?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, &path)?;
    Ok(seq)
}

/// Intake of a file the watcher reported: opens it once ([`Dropped::open`]) and builds the
/// campaign from that descriptor ([`prepare`]).
pub fn intake(
    data_dir: &Path,
    path: &Path,
    nms: &Keypair,
    addressees: Vec<NodeId>,
    settings: &CampaignSettings,
) -> Result<Prepared> {
    let dropped = Dropped::open(path, data_dir)?;
    prepare(data_dir, dropped, nms, addressees, settings)
}

/// Copies the dropped file from its descriptor into `data/campaigns/<id>/`, hashing the
/// bytes as they are copied, and signs the manifest. Refuses (signing nothing) if the file
/// changed in size or mtime since it was opened: it was still being written.
pub fn prepare(
    data_dir: &Path,
    dropped: Dropped,
    nms: &Keypair,
    addressees: Vec<NodeId>,
    settings: &CampaignSettings,
) -> Result<Prepared> {
    let shown = dropped.path.display();
    let file_name = dropped
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_plain_file_name(n))
        .with_context(|| {
            format!(
                "{shown} has a name Baton cannot use as a package file name (UTF-8, no leading '.' or '-', at most 200 bytes); rename it"
            )
        })?
        .to_string();
    let (name, version) = parse_package_file_name(&file_name);
    if addressees.is_empty() {
        bail!("no nodes to send {file_name} to");
    }
    let mut plan = settings.plan;
    plan.fanout = baton_protocol::plan::fanout_for(addressees.len(), plan.fanout);
    if plan.fanout != settings.plan.fanout {
        tracing::warn!(
            "{} nodes with fanout {} would make paths longer than {} hops; using fanout {}",
            addressees.len(),
            settings.plan.fanout,
            baton_protocol::limits::MAX_PATH,
            plan.fanout
        );
    }
    let campaign = random_bytes::<16>()?;
    let dir = data_dir.join("campaigns").join(hex::encode(campaign));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file = dir.join(&file_name);
    let copied = copy_and_hash(&dropped, &file, settings.chunk_size);
    let (size, hashes, root) = match copied {
        Ok(hashed) => hashed,
        Err(e) => {
            // nothing of a refused file stays in the store
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let sequence = next_sequence(data_dir, &name)?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        campaign,
        nms: NodeId::of(nms),
        name,
        version,
        file: file_name,
        sequence,
        size,
        chunk_size: settings.chunk_size,
        chunk_hashes: HashList(hashes),
        root,
        created_at: now,
        expires_at: now + settings.expiry_secs,
        relay: settings.relay,
        plan,
        offline_install: settings.offline_install,
        self_update: false,
        addressees,
    };
    let signed = SignedManifest::sign(&manifest, nms).context("cannot sign the manifest")?;
    fs::write(dir.join("manifest.cbor"), &signed.body)?;
    Ok(Prepared {
        manifest,
        signed,
        secret: CampaignSecret(random_bytes::<32>()?),
        file,
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_only_grow_and_survive_restarts() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(next_sequence(d.path(), "frob").unwrap(), 1);
        assert_eq!(next_sequence(d.path(), "frob").unwrap(), 2);
        assert_eq!(next_sequence(d.path(), "other").unwrap(), 1);
        assert_eq!(next_sequence(d.path(), "frob").unwrap(), 3);
        fs::write(d.path().join("sequences.json"), "garbage").unwrap();
        assert!(
            next_sequence(d.path(), "frob")
                .unwrap_err()
                .to_string()
                .contains("corrupt")
        );
    }

    #[test]
    fn prepare_hashes_the_copy_and_signs() {
        let d = tempfile::tempdir().unwrap();
        let (watch, data) = (d.path().join("drop"), d.path().join("data"));
        fs::create_dir(&watch).unwrap();
        let drop = watch.join("frob-1.2.tar.gz");
        fs::write(&drop, vec![7u8; 300_000]).unwrap();
        let kp = Keypair::generate_ed25519();
        let node = NodeId::of(&Keypair::generate_ed25519());
        let s = CampaignSettings {
            chunk_size: 65536,
            plan: PlanParams::default(),
            relay: RelayPolicy::default(),
            expiry_secs: 3600,
            offline_install: false,
        };
        let p = intake(&data, &drop, &kp, vec![node], &s).unwrap();
        assert_eq!(
            (p.manifest.name.as_str(), p.manifest.version.as_str()),
            ("frob", "1.2")
        );
        assert_eq!(p.manifest.size, 300_000);
        assert_eq!(p.manifest.chunk_hashes.0.len(), 5);
        assert_eq!(fs::read(&p.file).unwrap(), vec![7u8; 300_000]);
        assert_eq!(p.signed.open_unchecked().unwrap(), p.manifest);
        assert!(p.file.starts_with(data.join("campaigns")));
        let bad = watch.join("-rf");
        fs::write(&bad, b"x").unwrap();
        assert!(intake(&data, &bad, &kp, vec![node], &s).is_err());
    }
}

#[cfg(test)]
mod intake_tests {
    use super::*;
    use crate::watch::{DropEvent, DropWatcher};
    use std::time::Duration;

    fn settings() -> CampaignSettings {
        CampaignSettings {
            chunk_size: 65536,
            plan: PlanParams::default(),
            relay: RelayPolicy::default(),
            expiry_secs: 3600,
            offline_install: false,
        }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn assert_never_copied(data: &Path, secret: &[u8]) {
        let campaigns = data.join("campaigns");
        if let Ok(dirs) = fs::read_dir(&campaigns) {
            for dir in dirs.flatten() {
                for f in fs::read_dir(dir.path()).unwrap().flatten() {
                    let bytes = fs::read(f.path()).unwrap();
                    assert!(
                        !contains(&bytes, secret),
                        "{} holds the outside content",
                        f.path().display()
                    );
                }
            }
        }
        assert!(
            !data.join("sequences.json").exists(),
            "a sequence number was used"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn symlink_swapped_in_after_detection_is_never_read() {
        let d = tempfile::tempdir().unwrap();
        let (watch, data) = (d.path().join("drop"), d.path().join("data"));
        fs::create_dir(&watch).unwrap();
        let outside = d.path().join("outside-secret");
        let secret = b"outside secret that must never be distributed";
        fs::write(&outside, secret).unwrap();
        let (_w, mut rx) = DropWatcher::start(&watch, Duration::from_millis(100)).unwrap();
        let path = watch.join("frob-1.0.bin");
        fs::write(&path, b"the genuine package").unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap();
        assert!(
            matches!(ev, Some(DropEvent::Ready { path: ref p, .. }) if p == &path),
            "{ev:?}"
        );
        // The swap, in the window between detection and intake.
        let staged = watch.join(".swap");
        std::os::unix::fs::symlink(&outside, &staged).unwrap();
        fs::rename(&staged, &path).unwrap();
        let node = NodeId::of(&Keypair::generate_ed25519());
        let r = intake(
            &data,
            &path,
            &Keypair::generate_ed25519(),
            vec![node],
            &settings(),
        );
        let err = r.expect_err("a symlink swapped in was followed").to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_never_copied(&data, secret);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hard_link_swapped_in_after_detection_is_never_read() {
        let d = tempfile::tempdir().unwrap();
        let (watch, data) = (d.path().join("drop"), d.path().join("data"));
        fs::create_dir(&watch).unwrap();
        let outside = d.path().join("outside-secret");
        let secret = b"outside secret that must never be distributed";
        fs::write(&outside, secret).unwrap();
        let (_w, mut rx) = DropWatcher::start(&watch, Duration::from_millis(100)).unwrap();
        let path = watch.join("frob-1.0.bin");
        fs::write(&path, b"the genuine package").unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap();
        assert!(
            matches!(ev, Some(DropEvent::Ready { path: ref p, .. }) if p == &path),
            "{ev:?}"
        );
        let staged = watch.join(".swap");
        fs::hard_link(&outside, &staged).unwrap();
        fs::rename(&staged, &path).unwrap();
        let node = NodeId::of(&Keypair::generate_ed25519());
        let r = intake(
            &data,
            &path,
            &Keypair::generate_ed25519(),
            vec![node],
            &settings(),
        );
        let err = r.expect_err("a hard link swapped in was read").to_string();
        assert!(err.contains("hard link"), "{err}");
        assert_never_copied(&data, secret);
    }

    #[test]
    fn identity_key_is_never_distributed_even_if_watch_is_data_dir() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let kp = baton_shell::identity::load_or_create(&data).unwrap();
        let key = data.join(baton_shell::identity::KEY_FILE);
        let secret = fs::read(&key).unwrap();
        let node = NodeId::of(&Keypair::generate_ed25519());
        // watch == data dir, bypassing the start-up check
        let r = intake(&data, &key, &kp, vec![node], &settings());
        let err = format!("{:#}", r.expect_err("the identity key was distributed"));
        assert!(err.contains("data directory"), "{err}");
        assert_never_copied(&data, &secret);
    }

    #[test]
    fn hard_link_to_identity_key_is_never_distributed() {
        let d = tempfile::tempdir().unwrap();
        let (watch, data) = (d.path().join("drop"), d.path().join("data"));
        fs::create_dir(&watch).unwrap();
        let kp = baton_shell::identity::load_or_create(&data).unwrap();
        let key = data.join(baton_shell::identity::KEY_FILE);
        let secret = fs::read(&key).unwrap();
        let link = watch.join("key-1.0.bin");
        fs::hard_link(&key, &link).unwrap();
        let node = NodeId::of(&Keypair::generate_ed25519());
        let r = intake(&data, &link, &kp, vec![node], &settings());
        let err = r.expect_err("the identity key was distributed").to_string();
        assert!(err.contains("identity key"), "{err}");
        assert_never_copied(&data, &secret);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifo_swapped_in_after_detection_does_not_block() {
        let d = tempfile::tempdir().unwrap();
        let (watch, data) = (d.path().join("drop"), d.path().join("data"));
        fs::create_dir(&watch).unwrap();
        let (_w, mut rx) = DropWatcher::start(&watch, Duration::from_millis(100)).unwrap();
        let path = watch.join("frob-1.0.bin");
        fs::write(&path, b"the genuine package").unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap();
        assert!(
            matches!(ev, Some(DropEvent::Ready { path: ref p, .. }) if p == &path),
            "{ev:?}"
        );
        fs::remove_file(&path).unwrap();
        let status = std::process::Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(status.success());
        let node = NodeId::of(&Keypair::generate_ed25519());
        let (data2, path2) = (data.clone(), path.clone());
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::task::spawn_blocking(move || {
                intake(
                    &data2,
                    &path2,
                    &Keypair::generate_ed25519(),
                    vec![node],
                    &settings(),
                )
            }),
        )
        .await
        .expect("intake blocked on a FIFO")
        .unwrap();
        let err = r.expect_err("a FIFO was read").to_string();
        assert!(err.contains("FIFO"), "{err}");
        assert!(!data.join("sequences.json").exists());
    }

    fn drop_file(d: &Path) -> (PathBuf, PathBuf) {
        let (watch, data) = (d.join("drop"), d.join("data"));
        fs::create_dir(&watch).unwrap();
        let path = watch.join("frob-1.0.bin");
        fs::write(&path, vec![3u8; 200_000]).unwrap();
        (path, data)
    }

    fn assert_nothing_signed(data: &Path, err: anyhow::Error) {
        let err = err.to_string();
        assert!(
            err.contains("changed while it was being copied") && err.contains("nothing was signed"),
            "{err}"
        );
        assert!(
            !data.join("sequences.json").exists(),
            "a sequence number was used"
        );
        let left = fs::read_dir(data.join("campaigns"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "a campaign folder was left behind");
    }

    #[test]
    fn file_growing_after_it_was_opened_is_not_signed() {
        let d = tempfile::tempdir().unwrap();
        let (path, data) = drop_file(d.path());
        let dropped = Dropped::open(&path, &data).unwrap();
        // the writer was not done
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, b"more").unwrap();
        let node = NodeId::of(&Keypair::generate_ed25519());
        let r = prepare(
            &data,
            dropped,
            &Keypair::generate_ed25519(),
            vec![node],
            &settings(),
        );
        assert_nothing_signed(&data, r.expect_err("a file still being written was signed"));
    }

    #[test]
    fn file_rewritten_in_place_after_it_was_opened_is_not_signed() {
        let d = tempfile::tempdir().unwrap();
        let (path, data) = drop_file(d.path());
        let dropped = Dropped::open(&path, &data).unwrap();
        // same size, other bytes, other mtime
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[9u8; 1000], 0).unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        let node = NodeId::of(&Keypair::generate_ed25519());
        let r = prepare(
            &data,
            dropped,
            &Keypair::generate_ed25519(),
            vec![node],
            &settings(),
        );
        assert_nothing_signed(&data, r.expect_err("a file still being written was signed"));
    }

    #[test]
    fn data_dir_file_is_refused_even_if_only_the_folder_is_shared() {
        // bypassing the start-up check: a state file of the NMS in its own data dir
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        fs::create_dir(&data).unwrap();
        let state = data.join("sequences.json");
        fs::write(&state, b"{}").unwrap();
        let err = Dropped::open(&state, &data).expect_err("a data-dir file was accepted");
        let err = format!("{err:#}");
        assert!(
            err.contains("same folder") && err.contains("is not distributed"),
            "{err}"
        );
    }
}
