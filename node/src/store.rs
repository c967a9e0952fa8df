//! The node's package store on disk.
//!
//! ```text
//! <data>/partial/<campaign hex>/offer.cbor     the offer (manifest, part, path, token), 0600
//! <data>/partial/<campaign hex>/data           the package as it arrives (chunks at their offsets)
//! <data>/packages/<name>/<sequence>/<file>     installed versions
//! <data>/packages/<name>/<sequence>/.baton.json
//! <data>/packages/<name>/current -> <sequence> switched atomically (symlink + rename)
//! ```
//!
//! Names come from a validated manifest (plain file names); every join re-checks that the
//! component is one plain path component, so a package name never escapes the store.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_protocol::chunk::{ChunkSet, hash_chunk};
use baton_protocol::endpoint::node::{InstalledPackage, SavedCampaign};
use baton_protocol::manifest::is_plain_file_name;
use baton_protocol::wire::{decode_control, encode_control};
use baton_protocol::{CampaignId, Control, Hash, InstallCheck, Manifest, Offer};
use serde::{Deserialize, Serialize};

/// The package store of one node. Clones share the install locks.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Where `packages/` is: the data directory, or with `--once` the data directory while
    /// `root` is the one-shot agent's temporary state directory.
    install_root: PathBuf,
    /// One lock per package name: installs of one package run one at a time.
    installs: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// What `.baton.json` records of an installed version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstalledMeta {
    pub campaign: String,
    pub name: String,
    pub version: String,
    pub sequence: u64,
    pub file: String,
    pub root: String,
    pub size: u64,
}

/// How to run the owner's install command.
#[derive(Debug, Clone)]
pub struct InstallCmd {
    pub command: String,
    pub timeout: Duration,
}

fn component(name: &str) -> Result<&str> {
    let mut comps = Path::new(name).components();
    match (comps.next(), comps.next()) {
        (Some(Component::Normal(_)), None) if is_plain_file_name(name) => Ok(name),
        _ => bail!("`{name}` is not a plain file name; refusing to use it as a path in the store"),
    }
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Store> {
        Store::open_split(data_dir, data_dir)
    }

    /// A store whose working files (`partial/`) are under `state_dir` and whose installed
    /// versions (`packages/`) are under `install_dir` (the one-shot agent's temporary state
    /// and the machine's data directory). Installing hard-links the received file when both
    /// are on one file system, else copies it.
    pub fn open_split(state_dir: &Path, install_dir: &Path) -> Result<Store> {
        let s = Store {
            root: state_dir.to_path_buf(),
            install_root: install_dir.to_path_buf(),
            installs: Arc::default(),
        };
        for d in [s.root.join("partial"), s.install_root.join("packages")] {
            fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        Ok(s)
    }

    pub fn partial_dir(&self, campaign: &CampaignId) -> PathBuf {
        self.root.join("partial").join(hex(campaign))
    }

    /// The file chunks are written to and served from.
    pub fn data_file(&self, campaign: &CampaignId) -> PathBuf {
        self.partial_dir(campaign).join("data")
    }

    fn package_dir(&self, name: &str) -> Result<PathBuf> {
        Ok(self.install_root.join("packages").join(component(name)?))
    }

    /// The installed (sequence, root hash) of a package, if any.
    pub fn installed(&self, name: &str) -> Option<(u64, Hash)> {
        let meta = self.current_meta(name)?;
        let mut root = [0u8; 32];
        hex::decode_to_slice(&meta.root, &mut root).ok()?;
        Some((meta.sequence, root))
    }

    /// The metadata of the current version of a package.
    pub fn current_meta(&self, name: &str) -> Option<InstalledMeta> {
        let dir = self.package_dir(name).ok()?.join("current");
        let text = fs::read_to_string(dir.join(".baton.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Path of the current version's file.
    pub fn current_file(&self, name: &str) -> Option<PathBuf> {
        let meta = self.current_meta(name)?;
        Some(self.package_dir(name).ok()?.join("current").join(meta.file))
    }

    /// Makes room for a campaign and returns the chunks already verified on disk
    /// (resume after a restart).
    pub fn prepare(&self, offer: &Offer, manifest: &Manifest) -> Result<ChunkSet> {
        let dir = self.partial_dir(&manifest.campaign);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let offer_path = dir.join("offer.cbor");
        let tmp = dir.join(".offer.cbor.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&encode_control(&Control::Offer(Box::new(offer.clone()))))?;
        f.sync_all()?;
        fs::rename(&tmp, &offer_path)?;
        let layout = manifest.layout()?;
        let path = self.data_file(&manifest.campaign);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let existing = file.metadata()?.len();
        file.set_len(manifest.size)?;
        let mut have = ChunkSet::new(layout.count());
        if existing > 0 {
            let mut buf = vec![0u8; manifest.chunk_size as usize];
            for i in 0..layout.count() {
                if layout.offset(i) >= existing {
                    break;
                }
                let n = layout.len(i) as usize;
                file.read_exact_at(&mut buf[..n], layout.offset(i))?;
                if hash_chunk(&buf[..n]) == manifest.chunk_hashes.0[i as usize] {
                    have.insert(i);
                }
            }
        }
        Ok(have)
    }

    /// Offers saved by earlier runs, for campaigns not finished (resume).
    pub fn saved_offers(&self) -> Vec<(PathBuf, Result<Offer>)> {
        let Ok(rd) = fs::read_dir(self.root.join("partial")) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| {
                let p = e.path().join("offer.cbor");
                let r = fs::read(&p).map_err(anyhow::Error::from).and_then(|b| {
                    if b.len() > baton_protocol::limits::MAX_CONTROL_MESSAGE {
                        bail!("too large");
                    }
                    match decode_control(&b)? {
                        Control::Offer(o) => Ok(*o),
                        _ => bail!("not an offer"),
                    }
                });
                (e.path(), r)
            })
            .collect()
    }

    /// Campaigns left in the working area by an earlier run, for the endpoint to decide
    /// what resumes. A directory whose name is not a campaign id is removed.
    pub fn saved_campaigns(&self) -> Vec<SavedCampaign> {
        let mut out = Vec::new();
        for (dir, offer) in self.saved_offers() {
            let id = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| hex::decode(n).ok())
                .and_then(|b| CampaignId::try_from(b.as_slice()).ok());
            match id {
                Some(campaign) => out.push(SavedCampaign {
                    campaign,
                    offer: offer.map_err(|e| format!("{e:#}")),
                }),
                None => {
                    let _ = fs::remove_dir_all(&dir);
                }
            }
        }
        out
    }

    /// Every installed package: its current version and the sequences on disk.
    pub fn installed_packages(&self) -> Vec<InstalledPackage> {
        let Ok(rd) = fs::read_dir(self.install_root.join("packages")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if component(&name).is_err() {
                continue;
            }
            let sequences = fs::read_dir(e.path())
                .map(|rd| {
                    rd.flatten()
                        .filter(|v| v.file_type().is_ok_and(|t| t.is_dir()))
                        .filter_map(|v| v.file_name().to_str()?.parse::<u64>().ok())
                        .collect()
                })
                .unwrap_or_default();
            out.push(InstalledPackage {
                current: self.installed(&name),
                name,
                sequences,
            });
        }
        out
    }

    /// Removes installed version `sequence` of package `name` (retention), never the
    /// current one.
    pub fn remove_version(&self, name: &str, sequence: u64) -> Result<()> {
        if self.installed(name).is_some_and(|(s, _)| s == sequence) {
            bail!("{name} sequence {sequence} is current; not removing it");
        }
        let dir = self.package_dir(name)?.join(sequence.to_string());
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", dir.display()))
            }
            _ => Ok(()),
        }
    }

    /// Writes a verified chunk at its offset.
    pub fn write_chunk(file: &File, manifest: &Manifest, index: u32, data: &[u8]) -> Result<()> {
        let layout = manifest.layout()?;
        file.write_all_at(data, layout.offset(index))?;
        Ok(())
    }

    /// BLAKE3 of the whole data file.
    pub fn hash_file(path: &Path) -> Result<Hash> {
        let mut f = File::open(path)?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(*h.finalize().as_bytes())
    }

    /// Removes a campaign's working files.
    pub fn forget(&self, campaign: &CampaignId) {
        let _ = fs::remove_dir_all(self.partial_dir(campaign));
    }

    /// Installs a verified package: places it at `packages/<name>/<sequence>/<file>`, runs
    /// the install command if any, then switches `current` atomically. On any failure the
    /// new version is removed and the previous one stays current. Returns the failure
    /// reason for the report.
    ///
    /// Installs of one package run one at a time (the agent spawns each as a task, and two
    /// campaigns of one package can overlap), and each first checks what is installed now
    /// ([`Manifest::install_check`]): an older sequence than the current one fails with
    /// "a newer sequence N is already installed" and changes nothing, so the check and the
    /// switch of `current` act as one step.
    pub async fn install(&self, manifest: &Manifest, cmd: Option<&InstallCmd>) -> Result<(), String> {
        let lock = self.install_lock(&manifest.name);
        let _turn = lock.lock().await;
        match manifest.install_check(self.installed(&manifest.name)) {
            Ok(InstallCheck::Install) => {}
            Ok(InstallCheck::AlreadyCurrent) => return Ok(()),
            Err(superseded) => return Err(superseded.to_string()),
        }
        let r = self
            .place(manifest)
            .map_err(|e| format!("could not place the package: {e:#}"));
        let (dir, file) = r?;
        if let Some(cmd) = cmd
            && let Err(e) = run_install_cmd(cmd, manifest, &file).await
        {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        self.switch_current(manifest).map_err(|e| {
            let _ = fs::remove_dir_all(&dir);
            format!("could not switch `current`: {e:#}")
        })
    }

    fn install_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.installs.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(name.to_string()).or_default().clone()
    }

    fn place(&self, m: &Manifest) -> Result<(PathBuf, PathBuf)> {
        let pkg = self.package_dir(&m.name)?;
        fs::create_dir_all(&pkg)?;
        let seq = m.sequence.to_string();
        let dir = pkg.join(&seq);
        let file_name = component(&m.file)?;
        let meta = InstalledMeta {
            campaign: hex(&m.campaign),
            name: m.name.clone(),
            version: m.version.clone(),
            sequence: m.sequence,
            file: file_name.to_string(),
            root: hex(&m.root),
            size: m.size,
        };
        if dir.exists() {
            let same = fs::read_to_string(dir.join(".baton.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<InstalledMeta>(&t).ok())
                .is_some_and(|old| old == meta);
            if same {
                return Ok((dir.clone(), dir.join(file_name)));
            }
            fs::remove_dir_all(&dir)?;
        }
        let tmp = pkg.join(format!(".{seq}.tmp-{}", hex(&m.campaign)));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        let src = self.data_file(&m.campaign);
        if fs::hard_link(&src, tmp.join(file_name)).is_err() {
            fs::copy(&src, tmp.join(file_name))?;
        }
        fs::write(tmp.join(".baton.json"), serde_json::to_string_pretty(&meta)?)?;
        fs::rename(&tmp, &dir)?;
        Ok((dir.clone(), dir.join(file_name)))
    }

    fn switch_current(&self, m: &Manifest) -> Result<()> {
        let pkg = self.package_dir(&m.name)?;
        let tmp = pkg.join(".current.tmp");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(m.sequence.to_string(), &tmp)?;
        fs::rename(&tmp, pkg.join("current"))?;
        Ok(())
    }
}

/// Runs the owner's install command with the package in its environment; keeps the tail
/// of its output for the report.
async fn run_install_cmd(cmd: &InstallCmd, m: &Manifest, file: &Path) -> Result<(), String> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&cmd.command)
        .env("BATON_PACKAGE", file)
        .env("BATON_PACKAGE_DIR", file.parent().unwrap_or(file))
        .env("BATON_NAME", &m.name)
        .env("BATON_VERSION", &m.version)
        .env("BATON_SEQUENCE", m.sequence.to_string())
        .env("BATON_CAMPAIGN", hex(&m.campaign))
        .env("BATON_ROOT_HASH", hex(&m.root))
        .env("BATON_SELF_UPDATE", if m.self_update { "1" } else { "0" })
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("could not start install command `{}`: {e}", cmd.command))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let collect = async {
        use tokio::io::AsyncReadExt;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let _ = tokio::join!(out.read_to_end(&mut a), err.read_to_end(&mut b));
        a.extend_from_slice(&b);
        a
    };
    let res = tokio::time::timeout(cmd.timeout, async { tokio::join!(child.wait(), collect) }).await;
    let tail = |o: &[u8]| {
        let s = String::from_utf8_lossy(&o[o.len().saturating_sub(2000)..])
            .trim()
            .to_string();
        if s.is_empty() {
            String::new()
        } else {
            format!("; output tail: {s}")
        }
    };
    match res {
        Err(_) => Err(format!(
            "install command `{}` did not finish within {:?} and was killed",
            cmd.command, cmd.timeout
        )),
        Ok((Err(e), _)) => Err(format!("install command `{}` failed to run: {e}", cmd.command)),
        Ok((Ok(status), output)) if !status.success() => Err(format!(
            "install command `{}` exited with {status}{}",
            cmd.command,
            tail(&output)
        )),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn names_never_escape() {
        for bad in ["..", "../x", "a/b", "/etc", ".", ""] {
            assert!(component(bad).is_err(), "{bad}");
        }
        assert!(component("frob-1.0.tgz").is_ok());
    }

    use baton_protocol::manifest::{HashList, MANIFEST_FORMAT, PlanParams, RelayPolicy};
    use baton_protocol::{HopToken, Keypair, NodeId, PackageHasher, SignedManifest};

    /// A campaign of package `frob`, sequence `seq`, prepared in `store` with every chunk
    /// of `content` written (its file closed again).
    pub(crate) fn campaign(store: &Store, nms: &Keypair, me: NodeId, seq: u64, content: &[u8]) -> Manifest {
        let mut h = PackageHasher::new(4096);
        h.update(content);
        let (size, hashes, root) = h.finish();
        let m = Manifest {
            format: MANIFEST_FORMAT,
            campaign: [seq as u8; 16],
            nms: NodeId::of(nms),
            name: "frob".into(),
            version: format!("1.{seq}"),
            file: "frob.tgz".into(),
            sequence: seq,
            size,
            chunk_size: 4096,
            chunk_hashes: HashList(hashes),
            root,
            created_at: 1,
            expires_at: u64::MAX,
            relay: RelayPolicy::default(),
            plan: PlanParams::default(),
            offline_install: false,
            self_update: false,
            addressees: vec![me],
        };
        let offer = Offer {
            manifest: SignedManifest::sign(&m, nms).unwrap(),
            part: vec![me],
            path: vec![me],
            token: HopToken([0; 32]),
        };
        let have = store.prepare(&offer, &m).unwrap();
        assert_eq!(have.count(), 0);
        let f = OpenOptions::new()
            .write(true)
            .open(store.data_file(&m.campaign))
            .unwrap();
        for (i, c) in content.chunks(4096).enumerate() {
            Store::write_chunk(&f, &m, i as u32, c).unwrap();
        }
        // a restart finds every chunk verified on disk
        assert!(store.prepare(&offer, &m).unwrap().is_full());
        m
    }

    fn cmd(c: &str, ms: u64) -> InstallCmd {
        InstallCmd {
            command: c.into(),
            timeout: Duration::from_millis(ms),
        }
    }

    #[tokio::test]
    async fn a_failed_install_leaves_the_previous_version_current() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let nms = Keypair::generate_ed25519();
        let me = NodeId::of(&Keypair::generate_ed25519());
        let m1 = campaign(&store, &nms, me, 1, &[1u8; 10_000]);
        store.install(&m1, None).await.unwrap();
        assert_eq!(store.installed("frob"), Some((1, m1.root)));
        assert_eq!(
            fs::read(store.current_file("frob").unwrap()).unwrap(),
            vec![1u8; 10_000]
        );

        let m2 = campaign(&store, &nms, me, 2, &[2u8; 5_000]);
        let e = store
            .install(&m2, Some(&cmd("echo boom; exit 3", 10_000)))
            .await
            .unwrap_err();
        assert!(e.contains("exited with") && e.contains("boom"), "{e}");
        assert_eq!(store.installed("frob"), Some((1, m1.root)));
        assert!(
            !dir.path().join("packages/frob/2").exists(),
            "a half-installed version was left"
        );

        let e = store.install(&m2, Some(&cmd("sleep 5", 200))).await.unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
        assert_eq!(store.installed("frob"), Some((1, m1.root)));

        let ok = r#"test "$BATON_NAME" = frob && test "$BATON_SEQUENCE" = 2 && cmp -s "$BATON_PACKAGE" "$BATON_PACKAGE_DIR/frob.tgz""#;
        store.install(&m2, Some(&cmd(ok, 10_000))).await.unwrap();
        assert_eq!(store.installed("frob"), Some((2, m2.root)));
        assert_eq!(
            fs::read(store.current_file("frob").unwrap()).unwrap(),
            vec![2u8; 5_000]
        );
    }

    #[tokio::test]
    async fn an_older_sequence_never_becomes_current() {
        // one after the other: 2, then 1
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let nms = Keypair::generate_ed25519();
        let me = NodeId::of(&Keypair::generate_ed25519());
        let m1 = campaign(&store, &nms, me, 1, &[1u8; 10_000]);
        let m2 = campaign(&store, &nms, me, 2, &[2u8; 5_000]);
        store.install(&m2, None).await.unwrap();
        let e = store.install(&m1, None).await.unwrap_err();
        assert!(e.contains("a newer sequence 2"), "{e}");
        assert_eq!(store.installed("frob"), Some((2, m2.root)));
        assert!(!dir.path().join("packages/frob/1").exists());
        // the same package again is current already: nothing to do
        store.install(&m2, None).await.unwrap();
        assert_eq!(store.installed("frob"), Some((2, m2.root)));

        // overlapping, the older one started first (its install command is slow), and the
        // other way round: 2 ends current either way
        for older_first in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let m1 = campaign(&store, &nms, me, 1, &[1u8; 10_000]);
            let m2 = campaign(&store, &nms, me, 2, &[2u8; 5_000]);
            let slow = cmd("sleep 0.3", 10_000);
            let (r1, r2) = if older_first {
                tokio::join!(store.install(&m1, Some(&slow)), async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    store.install(&m2, None).await
                })
            } else {
                let (r2, r1) = tokio::join!(store.install(&m2, Some(&slow)), async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    store.install(&m1, None).await
                });
                (r1, r2)
            };
            r2.unwrap();
            assert_eq!(
                store.installed("frob"),
                Some((2, m2.root)),
                "older first: {older_first}"
            );
            assert_eq!(
                fs::read(store.current_file("frob").unwrap()).unwrap(),
                vec![2u8; 5_000]
            );
            if !older_first {
                assert!(r1.unwrap_err().contains("a newer sequence 2"));
            }
        }
    }

    #[tokio::test]
    async fn installed_packages_and_removing_old_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let nms = Keypair::generate_ed25519();
        let me = NodeId::of(&Keypair::generate_ed25519());
        for seq in 1..=3 {
            let m = campaign(&store, &nms, me, seq, &[seq as u8; 5_000]);
            store.install(&m, None).await.unwrap();
        }
        let mut p = store.installed_packages();
        assert_eq!(p.len(), 1);
        p[0].sequences.sort();
        assert_eq!(p[0].name, "frob");
        assert_eq!(p[0].sequences, vec![1, 2, 3]);
        assert_eq!(p[0].current.map(|(s, _)| s), Some(3));
        // the endpoint decided (keep 2): sequence 1 goes; the current one never does
        store.remove_version("frob", 1).unwrap();
        assert!(!dir.path().join("packages/frob/1").exists());
        assert!(store.remove_version("frob", 3).is_err());
        assert!(dir.path().join("packages/frob/3").exists());
        store.remove_version("frob", 1).unwrap(); // already gone: fine
        assert!(store.remove_version("../x", 1).is_err());
        assert_eq!(
            fs::read(store.current_file("frob").unwrap()).unwrap(),
            vec![3u8; 5_000]
        );
        // working dirs: one per campaign, resumable ones listed with their id
        let saved = store.saved_campaigns();
        assert_eq!(saved.len(), 3);
        assert!(saved.iter().all(|s| s.offer.is_ok()));
        fs::create_dir_all(dir.path().join("partial/not-a-campaign")).unwrap();
        assert_eq!(store.saved_campaigns().len(), 3);
        assert!(!dir.path().join("partial/not-a-campaign").exists());
    }

    #[tokio::test]
    async fn forget_keeps_the_installed_package() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let nms = Keypair::generate_ed25519();
        let me = NodeId::of(&Keypair::generate_ed25519());
        let m = campaign(&store, &nms, me, 1, &[7u8; 10_000]);
        store.install(&m, None).await.unwrap();
        let installed = store.current_file("frob").unwrap();
        // the installed file is the partial file, hard-linked
        let links = fs::metadata(&installed).unwrap().nlink();
        store.forget(&m.campaign);
        assert!(!store.partial_dir(&m.campaign).exists());
        assert_eq!(fs::read(&installed).unwrap(), vec![7u8; 10_000]);
        assert_eq!(fs::metadata(&installed).unwrap().nlink(), links - 1);
        assert_eq!(store.installed("frob"), Some((1, m.root)));
        assert!(store.saved_offers().is_empty(), "nothing left to resume");
    }
}
