//! Building a campaign from a dropped file: open it once and check what was opened
//! ([`Dropped::open`]), refuse it before copying if it is too large, copy it from that
//! descriptor into the NMS's store while hashing it, decide with the package's history
//! whether it is a new version ([`baton_protocol::inbox`]), pick the sequence number
//! (in the database, only grows), sign the manifest and record the campaign.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use baton_protocol::inbox::{Drop as InboxDrop, Intake as Decision, decide};
use baton_protocol::limits::MAX_CHUNKS;
use baton_protocol::manifest::{
    HashList, MANIFEST_FORMAT, PlanParams, RelayPolicy, is_plain_file_name, parse_package_file_name,
};
use baton_protocol::{
    CampaignId, CampaignSecret, Hash, Keypair, Manifest, NodeId, PackageHasher, SignedManifest,
};

use crate::db::{CampaignState, Db, DropStamp, NewCampaign, SavedCampaign};

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
    /// The package's campaigns that were running and are now superseded by this one.
    pub superseded: Vec<CampaignId>,
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
    /// A copy the NMS kept, distributed again as an operator's rollback (not a drop: it is
    /// neither remembered as one nor archived).
    kept: bool,
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
            kept: false,
        })
    }

    /// Opens the NMS's own kept copy `path` of a version distributed before, to distribute
    /// it again as a rollback the operator asked for (`baton-nms rollback`).
    pub fn kept_copy(path: &Path) -> Result<Dropped> {
        let file =
            crate::watch::open_entry(path).map_err(|e| anyhow!(crate::watch::open_refusal(path, &e)))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot examine {}", path.display()))?;
        if let Some(message) = crate::watch::refusal(path, &meta) {
            bail!(message);
        }
        Ok(Dropped {
            path: path.to_path_buf(),
            file,
            meta,
            kept: true,
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

/// Where dropped files go once taken in: the database that remembers them and the
/// versions distributed, the data directory that holds the copies, and the optional
/// archive folder taken-in files are moved to.
#[derive(Debug, Clone)]
pub struct Inbox {
    pub db: Arc<Mutex<Db>>,
    pub data_dir: PathBuf,
    pub archive: Option<PathBuf>,
}

/// What came of a drop that was not refused.
#[derive(Debug)]
pub enum Intook {
    /// A new campaign, signed and recorded.
    Campaign(Box<Prepared>),
    /// Nothing to do (the content distributed last, or a file taken in before); says why.
    Nothing(String),
}

/// The largest package a campaign can carry with this chunk size.
/// Signs `manifest`, draws its campaign secret and writes the signed bytes to
/// `dir/manifest.cbor`; a failure to sign or write calls `discard` (which removes the
/// campaign's folder) before it is returned.
fn sign_and_save(
    manifest: &Manifest,
    nms: &Keypair,
    dir: &Path,
    discard: &dyn Fn(),
) -> Result<(SignedManifest, CampaignSecret)> {
    let signed = match SignedManifest::sign(manifest, nms).context("cannot sign the manifest") {
        Ok(s) => s,
        Err(e) => {
            discard();
            return Err(e);
        }
    };
    let secret = CampaignSecret(random_bytes::<32>()?);
    if let Err(e) = fs::write(dir.join("manifest.cbor"), &signed.body) {
        discard();
        bail!("cannot write {}: {e}", dir.join("manifest.cbor").display());
    }
    Ok((signed, secret))
}

pub fn max_package_size(chunk_size: u32) -> u64 {
    MAX_CHUNKS.saturating_mul(u64::from(chunk_size))
}

/// How a file of the drop folder is remembered: size, mtime, device and inode.
pub fn stamp_of(meta: &fs::Metadata) -> DropStamp {
    DropStamp {
        size: meta.len(),
        mtime_ns: meta
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec()),
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// Checks that a copy taken in under the agent's reserved name is an ELF executable.
/// (Each node checks it is one for its own platform.)
fn agent_header(copy: &Path) -> Result<baton_protocol::selfupdate::ElfTarget, String> {
    use baton_protocol::selfupdate::{ELF_HEADER_LEN, elf_target};
    use std::io::Read;
    let mut header = Vec::with_capacity(ELF_HEADER_LEN);
    fs::File::open(copy)
        .and_then(|f| f.take(ELF_HEADER_LEN as u64).read_to_end(&mut header))
        .map_err(|e| format!("its copy cannot be read: {e}"))?;
    elf_target(&header).map_err(|e| e.to_string())
}

/// The refusal of a drop too large for one campaign, or `None`.
pub fn oversize(path: &Path, size: u64, chunk_size: u32) -> Option<String> {
    let max = max_package_size(chunk_size);
    (size > max).then(|| {
        format!(
            "{} is {size} bytes, more than the {max} bytes ({MAX_CHUNKS} chunks of {chunk_size} bytes) \
             one campaign can carry; nothing was copied and no sequence number was used: raise \
             --chunk-size or split the package",
            path.display()
        )
    })
}

fn lock(db: &Mutex<Db>) -> std::sync::MutexGuard<'_, Db> {
    db.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The sidecar by which the operator asks for a rollback: `<file>.rollback` next to it.
pub fn rollback_sidecar(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".rollback");
    path.with_file_name(name)
}

/// Intake of a file the watcher reported: opens it once ([`Dropped::open`]) and builds the
/// campaign from that descriptor ([`prepare`]).
pub fn intake(
    inbox: &Inbox,
    path: &Path,
    nms: &Keypair,
    addressees: Vec<NodeId>,
    settings: &CampaignSettings,
) -> Result<Intook> {
    let dropped = Dropped::open(path, &inbox.data_dir)?;
    prepare(inbox, dropped, nms, addressees, settings)
}

/// Takes in a dropped file from its descriptor: refuses it before copying if it is too
/// large; copies it into `data/campaigns/<id>/` while hashing it (refusing, signing
/// nothing, if it changed since it was opened: it was still being written); asks
/// [`baton_protocol::inbox::decide`] whether it is a new version, the content distributed
/// last, or an older version not asked for; and for a new version signs the manifest with
/// the package's next sequence number and records the campaign (superseding the package's
/// running campaigns). The file is remembered whatever came of it, so that it is not taken
/// in again, also after a restart.
pub fn prepare(
    inbox: &Inbox,
    dropped: Dropped,
    nms: &Keypair,
    addressees: Vec<NodeId>,
    settings: &CampaignSettings,
) -> Result<Intook> {
    let shown = dropped.path.display().to_string();
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
    let stamp = stamp_of(&dropped.meta);
    let kept = dropped.kept;
    let remember_in = |db: &Db, content: Option<&Hash>, outcome: &str, at: u64| -> Result<()> {
        if !kept {
            db.remember_drop(&file_name, stamp, content, outcome, at)?;
        }
        Ok(())
    };
    let remember = |content: Option<&Hash>, outcome: &str| -> Result<()> {
        remember_in(&lock(&inbox.db), content, outcome, unix_now())
    };
    if let Some(why) = oversize(&dropped.path, dropped.meta.len(), settings.chunk_size) {
        remember(None, "refused: too large")?;
        bail!(why);
    }
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
    let sidecar = rollback_sidecar(&dropped.path);
    let rollback = kept || fs::symlink_metadata(&sidecar).is_ok_and(|m| m.is_file());
    let campaign = random_bytes::<16>()?;
    let dir = inbox.data_dir.join("campaigns").join(hex::encode(campaign));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file = dir.join(&file_name);
    let discard = || {
        // nothing of a file not distributed stays in the store
        let _ = fs::remove_dir_all(&dir);
    };
    let (size, hashes, root) = match copy_and_hash(&dropped, &file, settings.chunk_size) {
        Ok(hashed) => hashed,
        Err(e) => {
            discard();
            return Err(e);
        }
    };
    let agent = name == baton_protocol::selfupdate::AGENT_PACKAGE;
    if agent && let Err(why) = agent_header(&file) {
        discard();
        remember(Some(&root), "refused: not an executable")?;
        bail!(
            "{shown}: `{name}` is the reserved name of the node agent, but {why}; nothing distributed (publish a baton-node executable with baton-nms publish-agent)"
        );
    }
    let mut db = lock(&inbox.db);
    let this = InboxDrop {
        file: &file_name,
        package: &name,
        version: &version,
        content: root,
        rollback,
    };
    let history = db.history(&name)?;
    let sequence = match decide(&this, &history, db.last_sequence(&name)?) {
        Decision::Accept { sequence } => sequence,
        Decision::Unchanged { sequence } => {
            discard();
            remember_in(&db, Some(&root), "unchanged", unix_now())?;
            drop(db);
            if !kept {
                archive(inbox, &dropped.path);
            }
            return Ok(Intook::Nothing(format!(
                "{shown}: its content is {name} {version} as distributed with sequence {sequence}; \
                 nothing to do"
            )));
        }
        Decision::Refused(why) => {
            discard();
            remember_in(&db, Some(&root), "refused: older", unix_now())?;
            bail!(why);
        }
    };
    let now = unix_now();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        campaign,
        nms: NodeId::of(nms),
        name,
        version,
        file: file_name.clone(),
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
        self_update: agent,
        addressees,
    };
    let (signed, secret) = sign_and_save(&manifest, nms, &dir, &discard)?;
    let superseded = db.record_campaign(&NewCampaign {
        id: campaign,
        package: &manifest.name,
        version: &manifest.version,
        sequence,
        content: root,
        size,
        manifest: &signed.body,
        signature: &signed.signature,
        secret: &secret.0,
        copy: &file,
        rollback,
        at: now,
    });
    let superseded = match superseded {
        Ok(s) => s,
        Err(e) => {
            discard();
            return Err(e.into());
        }
    };
    remember_in(&db, Some(&root), "campaign", now)?;
    drop(db);
    if !kept {
        if rollback {
            // asked for once: the next drop of an older version is refused again
            let _ = fs::remove_file(&sidecar);
        }
        archive(inbox, &dropped.path);
    }
    Ok(Intook::Campaign(Box::new(Prepared {
        manifest,
        signed,
        secret,
        file,
        dir,
        superseded,
    })))
}

/// Signs a follow-up of campaign `of` for `addressees` (nodes that appeared after it): the
/// same package version, from the copy the NMS keeps of that version (hard-linked into the
/// new campaign's folder, copied if linking fails), with the same content, chunk hashes,
/// sequence and expiry as `of` (nothing is hashed again), a new campaign id and secret,
/// and the plan's fanout fitted to the new list. Records it as running; refused if `of` was
/// superseded or cancelled, expired, or if no copy of its version is kept.
pub fn follow_up(
    inbox: &Inbox,
    of: &CampaignId,
    nms: &Keypair,
    addressees: Vec<NodeId>,
    leaves: u32,
) -> Result<Intook> {
    let shown = hex::encode(of);
    if addressees.is_empty() {
        bail!("no nodes to send a follow-up of campaign {shown} to");
    }
    let all = lock(&inbox.db).campaigns()?;
    let orig = all
        .iter()
        .find(|c| c.id == *of)
        .with_context(|| format!("campaign {shown} is not in the database"))?;
    if !matches!(orig.state, CampaignState::Running | CampaignState::Done) {
        bail!(
            "campaign {shown} of {} is {}: no follow-up of it",
            orig.package,
            orig.state.as_str()
        );
    }
    if let Some(newer) = all
        .iter()
        .find(|c| c.package == orig.package && c.sequence > orig.sequence)
    {
        bail!(
            "campaign {shown} of {} (sequence {}) is superseded by sequence {}: no follow-up of it",
            orig.package,
            orig.sequence,
            newer.sequence
        );
    }
    let signed = SignedManifest {
        body: orig.manifest.clone(),
        signature: orig.signature.clone(),
    };
    let m = signed
        .open_unchecked()
        .map_err(|e| anyhow!("the saved manifest of campaign {shown} does not decode ({e})"))?;
    let now = unix_now();
    if m.expires_at <= now {
        bail!("campaign {shown} of {} expired; drop the file again", m.name);
    }
    // any campaign of this version still holding its copy (the original or a follow-up)
    let copy = all
        .iter()
        .filter(|c| c.package == orig.package && c.sequence == orig.sequence)
        .filter_map(|c| c.copy.clone())
        .find(|p| fs::metadata(p).is_ok_and(|md| md.is_file() && md.len() == m.size))
        .with_context(|| {
            format!(
                "no copy of {} sequence {} is kept any more; drop the file again",
                m.name, m.sequence
            )
        })?;
    let campaign = random_bytes::<16>()?;
    let dir = inbox.data_dir.join("campaigns").join(hex::encode(campaign));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let discard = || {
        let _ = fs::remove_dir_all(&dir);
    };
    let file = dir.join(&m.file);
    if fs::hard_link(&copy, &file).is_err()
        && let Err(e) = fs::copy(&copy, &file)
    {
        discard();
        bail!("cannot copy {} to {}: {e}", copy.display(), file.display());
    }
    let mut manifest = m;
    manifest.campaign = campaign;
    manifest.plan.fanout = baton_protocol::plan::fanout_for(addressees.len(), manifest.plan.fanout);
    manifest.addressees = addressees;
    manifest.plan.leaves = leaves;
    let (signed, secret) = sign_and_save(&manifest, nms, &dir, &discard)?;
    let recorded = lock(&inbox.db).record_follow_up(
        of,
        &NewCampaign {
            id: campaign,
            package: &manifest.name,
            version: &manifest.version,
            sequence: manifest.sequence,
            content: manifest.root,
            size: manifest.size,
            manifest: &signed.body,
            signature: &signed.signature,
            secret: &secret.0,
            copy: &file,
            rollback: false,
            at: now,
        },
    );
    match recorded {
        Ok(true) => {}
        Ok(false) => {
            discard();
            bail!("campaign {shown} was superseded or cancelled meanwhile: no follow-up of it");
        }
        Err(e) => {
            discard();
            return Err(e.into());
        }
    }
    Ok(Intook::Campaign(Box::new(Prepared {
        manifest,
        signed,
        secret,
        file,
        dir,
        superseded: Vec::new(),
    })))
}

/// What the database knows of a file the watcher reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Before {
    /// Not this file (name, size, mtime, inode): take it in.
    New,
    /// This very file was taken in before, with this outcome.
    Same(String),
    /// Too large for a campaign: refused now (and remembered), nothing copied.
    Refused(String),
}

/// Looks `path` up (without opening it) among the files taken in before, also by the
/// process before a restart, and refuses a file too large for one campaign before anything
/// is copied.
pub fn taken_in_before(db: &Db, path: &Path, chunk_size: u32) -> Result<Before> {
    let (Some(name), Ok(meta)) = (
        path.file_name().and_then(|n| n.to_str()),
        fs::symlink_metadata(path),
    ) else {
        return Ok(Before::New);
    };
    let stamp = stamp_of(&meta);
    if let Some((was, outcome)) = db.drop_seen(name)?
        && was == stamp
    {
        return Ok(Before::Same(outcome));
    }
    if meta.is_file()
        && let Some(why) = oversize(path, meta.len(), chunk_size)
    {
        db.remember_drop(name, stamp, None, "refused: too large", unix_now())?;
        return Ok(Before::Refused(why));
    }
    Ok(Before::New)
}

/// Removes folders of `store` that no campaign in the database names: what a crash left
/// between copying a drop and recording its campaign. Run at start only, when no intake
/// is under way. Returns how many it removed.
pub fn remove_orphan_copies(db: &Db, store: &Path) -> usize {
    let Ok(all) = db.campaigns() else { return 0 };
    let known: std::collections::HashSet<String> = all.iter().map(|c| hex::encode(c.id)).collect();
    let Ok(entries) = fs::read_dir(store) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_campaign_dir = name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if is_campaign_dir && !known.contains(&name) && e.file_type().is_ok_and(|t| t.is_dir()) {
            match fs::remove_dir_all(e.path()) {
                Ok(()) => {
                    tracing::info!(
                        "removed {}: a copy no campaign was recorded for",
                        e.path().display()
                    );
                    removed += 1;
                }
                Err(err) => tracing::warn!("cannot remove {}: {err}", e.path().display()),
            }
        }
    }
    removed
}

/// Retention: keeps the copies of each package's newest campaign and of the newest one done
/// before it (the current and the previous version), and removes every other copy once its
/// campaign has ended (a superseded campaign keeps its copy until its nodes are done).
/// Removes only folders directly inside `store`. Returns the campaigns whose copy went.
pub fn remove_old_copies(db: &Db, store: &Path) -> Vec<CampaignId> {
    let all = match db.campaigns() {
        Ok(all) => all,
        Err(e) => {
            tracing::error!("{e}");
            return Vec::new();
        }
    };
    let mut by_package: std::collections::BTreeMap<&str, Vec<&SavedCampaign>> = Default::default();
    for c in &all {
        by_package.entry(c.package.as_str()).or_default().push(c);
    }
    let mut removed = Vec::new();
    for list in by_package.values_mut() {
        list.sort_by_key(|c| std::cmp::Reverse(c.sequence));
        // the newest version may have several campaigns (follow-ups for late joiners)
        let newest = list[0].sequence;
        // the previous version: one copy of it (a campaign of it that still has one)
        let previous = list
            .iter()
            .find(|c| c.sequence < newest && c.state == CampaignState::Done)
            .and_then(|p| {
                list.iter()
                    .find(|c| c.sequence == p.sequence && c.state == CampaignState::Done && c.copy.is_some())
            })
            .map(|c| c.id);
        for c in list.iter() {
            let Some(copy) = &c.copy else { continue };
            let ended = c.ended || c.state == CampaignState::Cancelled;
            if c.sequence == newest || Some(c.id) == previous || !ended {
                continue;
            }
            let Some(dir) = copy.parent().filter(|d| d.parent() == Some(store)) else {
                tracing::warn!(
                    "not removing {}: it is not in {}",
                    copy.display(),
                    store.display()
                );
                continue;
            };
            match fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!("cannot remove the old campaign copy {}: {e}", dir.display());
                    continue;
                }
            }
            tracing::info!(
                "removed the copy of campaign {} ({} sequence {}): neither the current nor the previous version",
                hex::encode(c.id),
                c.package,
                c.sequence
            );
            if let Err(e) = db.copy_removed(&c.id) {
                tracing::error!("{e}");
            }
            removed.push(c.id);
        }
    }
    removed
}

/// Moves a file taken in to the archive folder, if there is one (same filesystem).
fn archive(inbox: &Inbox, path: &Path) {
    let Some(dir) = &inbox.archive else { return };
    let Some(name) = path.file_name() else { return };
    let to = dir.join(name);
    if let Err(e) = fs::rename(path, &to) {
        tracing::warn!(
            "cannot move {} to the archive {}: {e} (the archive must be on the same filesystem as \
             the drop folder); it stays where it is and is not taken in again",
            path.display(),
            to.display()
        );
    }
}

/// Test helpers: an inbox over `data`, and intake that expects a campaign.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) fn inbox(data: &Path) -> Inbox {
        Inbox {
            db: Arc::new(Mutex::new(Db::open(data).unwrap())),
            data_dir: data.to_path_buf(),
            archive: None,
        }
    }

    pub(crate) fn campaign(r: Result<Intook>) -> Result<Prepared> {
        match r? {
            Intook::Campaign(p) => Ok(*p),
            Intook::Nothing(why) => bail!("no campaign: {why}"),
        }
    }

    pub(crate) fn intake_at(
        data: &Path,
        path: &Path,
        nms: &Keypair,
        addressees: Vec<NodeId>,
        settings: &CampaignSettings,
    ) -> Result<Prepared> {
        campaign(intake(&inbox(data), path, nms, addressees, settings))
    }

    pub(crate) fn prepare_at(
        data: &Path,
        dropped: Dropped,
        nms: &Keypair,
        addressees: Vec<NodeId>,
        settings: &CampaignSettings,
    ) -> Result<Prepared> {
        campaign(prepare(&inbox(data), dropped, nms, addressees, settings))
    }

    /// True if no campaign was ever recorded in `data` and no sequence number was used.
    pub(crate) fn nothing_recorded(data: &Path) -> bool {
        !data.join(crate::db::DB_FILE).exists() || Db::open(data).unwrap().campaigns().unwrap().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::intake_at as intake;
    use super::*;

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
    use super::testing::{intake_at as intake, nothing_recorded, prepare_at as prepare};
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
        assert!(nothing_recorded(data), "a sequence number was used");
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
        assert!(nothing_recorded(&data));
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
        assert!(nothing_recorded(data), "a sequence number was used");
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

/// The drop folder as an inbox (issue 9, points 2, 3, 4 and 8).
#[cfg(test)]
mod inbox_tests {
    use super::testing::{campaign, inbox};
    use super::*;
    use crate::db::CampaignState;

    fn settings() -> CampaignSettings {
        CampaignSettings {
            chunk_size: 4096,
            plan: PlanParams::default(),
            relay: RelayPolicy::default(),
            expiry_secs: 3600,
            offline_install: false,
        }
    }

    struct Setup {
        _tmp: tempfile::TempDir,
        watch: PathBuf,
        data: PathBuf,
        kp: Keypair,
        node: NodeId,
    }

    fn setup() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let (watch, data) = (tmp.path().join("drop"), tmp.path().join("data"));
        fs::create_dir(&watch).unwrap();
        Setup {
            _tmp: tmp,
            watch,
            data,
            kp: Keypair::generate_ed25519(),
            node: NodeId::of(&Keypair::generate_ed25519()),
        }
    }

    impl Setup {
        fn put(&self, name: &str, content: &[u8]) -> PathBuf {
            let p = self.watch.join(name);
            // a new inode, as a copy into the folder makes
            let _ = fs::remove_file(&p);
            fs::write(&p, content).unwrap();
            p
        }
        fn take(&self, inbox: &Inbox, path: &Path) -> Result<Intook> {
            intake(inbox, path, &self.kp, vec![self.node], &settings())
        }
        fn copies(&self) -> usize {
            fs::read_dir(self.data.join("campaigns")).map_or(0, |d| d.count())
        }
    }

    #[test]
    fn the_reserved_agent_name_takes_only_an_executable_and_flags_it_self_update() {
        let s = setup();
        let ib = inbox(&s.data);
        let script = s.put("baton-node-0.2.0", b"#!/bin/sh\necho not an agent\n");
        let e = format!("{:#}", s.take(&ib, &script).unwrap_err());
        assert!(
            e.contains("reserved name of the node agent") && e.contains("not an ELF file"),
            "{e}"
        );
        assert_eq!(s.copies(), 0, "the refused file's copy was kept");
        // the NMS checks the header only (each node checks its platform): a test
        // executable's first 4 KiB will do
        let mut exe = vec![0u8; 4096];
        std::io::Read::read_exact(&mut fs::File::open("/proc/self/exe").unwrap(), &mut exe).unwrap();
        let agent = s.put("baton-node-0.2.0", &exe);
        let c = campaign(s.take(&ib, &agent)).unwrap();
        assert!(c.manifest.self_update);
        assert_eq!(
            (c.manifest.name.as_str(), c.manifest.version.as_str()),
            ("baton-node", "0.2.0")
        );
        // any other package is not flagged
        let frob = s.put("frob-1.0.bin", &exe);
        assert!(!campaign(s.take(&ib, &frob)).unwrap().manifest.self_update);
    }

    #[test]
    fn a_file_taken_in_is_not_taken_in_again_after_a_restart() {
        // point 2: the restarted NMS signed every file of the folder again
        let s = setup();
        let path = s.put("frob-1.0.bin", &[1u8; 10_000]);
        let first = campaign(s.take(&inbox(&s.data), &path)).unwrap();
        assert_eq!(first.manifest.sequence, 1);
        // the restart: a new process, the same data directory
        let again = inbox(&s.data);
        let db = again.db.lock().unwrap();
        assert!(
            matches!(taken_in_before(&db, &path, 4096).unwrap(), Before::Same(ref o) if o == "campaign"),
            "the very file is taken in again after a restart"
        );
        drop(db);
        // copied in again (new inode and mtime), same bytes: nothing signed
        let path = s.put("frob-1.0.bin", &[1u8; 10_000]);
        let db = again.db.lock().unwrap();
        assert_eq!(taken_in_before(&db, &path, 4096).unwrap(), Before::New);
        drop(db);
        match s.take(&again, &path).unwrap() {
            Intook::Nothing(why) => assert!(why.contains("sequence 1; nothing to do"), "{why}"),
            Intook::Campaign(p) => panic!("signed again as sequence {}", p.manifest.sequence),
        }
        let db = again.db.lock().unwrap();
        assert_eq!(db.last_sequence("frob").unwrap(), 1);
        assert_eq!(db.campaigns().unwrap().len(), 1);
        assert_eq!(s.copies(), 1, "a second copy was kept");
    }

    #[test]
    fn an_older_version_is_refused_and_taken_only_as_a_rollback_asked_for() {
        // point 2: files re-sent in directory order downgraded nodes (2.0, then 1.0)
        let s = setup();
        let inbox = inbox(&s.data);
        let new = s.put("frob-2.0.bin", &[2u8; 10_000]);
        assert_eq!(campaign(s.take(&inbox, &new)).unwrap().manifest.sequence, 1);
        let old = s.put("frob-1.0.bin", &[1u8; 10_000]);
        let err = format!(
            "{:#}",
            campaign(s.take(&inbox, &old)).expect_err("a downgrade was signed")
        );
        assert!(
            err.contains("older than the latest distributed version 2.0")
                && err.contains("frob-1.0.bin.rollback"),
            "{err}"
        );
        assert_eq!(inbox.db.lock().unwrap().last_sequence("frob").unwrap(), 1);
        assert_eq!(s.copies(), 1, "the refused file's copy was kept");
        // asked for in so many words: a rollback, with a higher sequence
        fs::write(rollback_sidecar(&old), b"").unwrap();
        let p = campaign(s.take(&inbox, &old)).unwrap();
        assert_eq!((p.manifest.version.as_str(), p.manifest.sequence), ("1.0", 2));
        assert!(!rollback_sidecar(&old).exists(), "the sidecar is used once");
        // 2.0's content under another name, without a sidecar: refused (it is older now)
        let back = s.put("frob-3.0.bin", &[2u8; 10_000]);
        let err = format!("{:#}", campaign(s.take(&inbox, &back)).unwrap_err());
        assert!(err.contains("content is that of version 2.0"), "{err}");
    }

    #[test]
    fn a_file_changed_after_its_campaign_started_is_a_new_version_superseding_it() {
        // point 3: a file replaced during its campaign left nodes on the older version
        let s = setup();
        let inbox = inbox(&s.data);
        let path = s.put("frob-1.0.bin", &[1u8; 10_000]);
        let first = campaign(s.take(&inbox, &path)).unwrap();
        let path = s.put("frob-1.0.bin", &[9u8; 12_000]);
        let second = campaign(s.take(&inbox, &path)).unwrap();
        assert_eq!(second.manifest.sequence, 2);
        assert_eq!(second.superseded, vec![first.manifest.campaign]);
        let states: Vec<_> = inbox
            .db
            .lock()
            .unwrap()
            .campaigns()
            .unwrap()
            .iter()
            .map(|c| (c.sequence, c.state))
            .collect();
        assert_eq!(
            states,
            vec![(1, CampaignState::Superseded), (2, CampaignState::Running)]
        );
    }

    #[test]
    fn an_oversize_drop_is_refused_before_anything_is_copied() {
        // point 4: an oversize drop was copied whole and used up a sequence number
        let s = setup();
        let inbox = inbox(&s.data);
        let path = s.watch.join("huge-1.0.img");
        let f = fs::File::create(&path).unwrap();
        f.set_len(max_package_size(4096) + 1).unwrap(); // sparse
        drop(f);
        let db = inbox.db.lock().unwrap();
        match taken_in_before(&db, &path, 4096).unwrap() {
            Before::Refused(why) => assert!(why.contains("nothing was copied"), "{why}"),
            other => panic!("not refused at once: {other:?}"),
        }
        // and remembered: not refused again and again
        assert!(matches!(
            taken_in_before(&db, &path, 4096).unwrap(),
            Before::Same(_)
        ));
        drop(db);
        // intake itself refuses it from the descriptor's size, before copying
        let err = format!("{:#}", campaign(s.take(&inbox, &path)).unwrap_err());
        assert!(
            err.contains("nothing was copied and no sequence number was used"),
            "{err}"
        );
        assert_eq!(s.copies(), 0);
        assert_eq!(inbox.db.lock().unwrap().last_sequence("huge").unwrap(), 0);
    }

    #[test]
    fn only_the_current_and_previous_copies_are_kept_once_campaigns_end() {
        // point 8: an NMS held 4.4 GB of old campaign copies
        let s = setup();
        let inbox = inbox(&s.data);
        let store = s.data.join("campaigns");
        let mut ids = Vec::new();
        for v in 1..=4u8 {
            let path = s.put(&format!("frob-{v}.0.bin"), &[v; 10_000]);
            let p = campaign(s.take(&inbox, &path)).unwrap();
            ids.push((p.manifest.campaign, p.file));
            if v < 3 {
                inbox
                    .db
                    .lock()
                    .unwrap()
                    .campaign_ended(&p.manifest.campaign, 1)
                    .unwrap();
            }
        }
        // 1 and 2 done; 3 superseded by 4 and still running; 4 running
        let db = inbox.db.lock().unwrap();
        assert_eq!(remove_old_copies(&db, &store), vec![ids[0].0]);
        assert!(!ids[0].1.exists() && ids[1].1.exists() && ids[2].1.exists() && ids[3].1.exists());
        // the superseded campaign ends: its copy goes; 4 is current, 2 the previous version
        db.campaign_ended(&ids[2].0, 2).unwrap();
        assert_eq!(remove_old_copies(&db, &store), vec![ids[2].0]);
        assert!(!ids[2].1.exists() && ids[1].1.exists() && ids[3].1.exists());
        // 4 done: 4 current, and it is also the newest done, 2 still the previous
        db.campaign_ended(&ids[3].0, 3).unwrap();
        assert!(remove_old_copies(&db, &store).is_empty());
        assert_eq!(fs::read_dir(&store).unwrap().count(), 2);
        // a restart finds the copies it removed marked as such
        let left: Vec<_> = db
            .campaigns()
            .unwrap()
            .into_iter()
            .filter(|c| c.copy.is_some())
            .map(|c| c.sequence)
            .collect();
        assert_eq!(left, vec![2, 4]);
    }

    /// Late joiners: a follow-up is the same version (content, chunk hashes, sequence,
    /// expiry) under a new campaign id and secret for the late nodes only, from the kept
    /// copy; the package's history is untouched; retention keeps every copy of the current
    /// version; a superseded version gets no follow-up.
    #[test]
    fn a_follow_up_signs_the_same_version_for_late_nodes() {
        let s = setup();
        let inbox = inbox(&s.data);
        let store = s.data.join("campaigns");
        let path = s.put("frob-1.0.bin", &[7; 10_000]);
        let p1 = campaign(s.take(&inbox, &path)).unwrap();
        let late = NodeId::of(&Keypair::generate_ed25519());
        let f = campaign(follow_up(&inbox, &p1.manifest.campaign, &s.kp, vec![late], 0)).unwrap();
        let (a, b) = (&p1.manifest, &f.manifest);
        assert_ne!(a.campaign, b.campaign);
        assert_ne!(p1.secret.0, f.secret.0);
        assert_eq!(b.addressees, vec![late]);
        assert_eq!(
            (
                a.sequence,
                a.root,
                &a.chunk_hashes.0,
                a.expires_at,
                a.size,
                &a.file
            ),
            (
                b.sequence,
                b.root,
                &b.chunk_hashes.0,
                b.expires_at,
                b.size,
                &b.file
            )
        );
        assert_eq!(f.signed.open_unchecked().unwrap(), f.manifest);
        assert_eq!(fs::read(&f.file).unwrap(), vec![7; 10_000]);
        {
            let db = inbox.db.lock().unwrap();
            assert_eq!(db.last_sequence("frob").unwrap(), a.sequence);
            assert_eq!(db.history("frob").unwrap().len(), 1);
            let mut running: Vec<_> = db
                .unfinished()
                .unwrap()
                .into_iter()
                .map(|c| (c.id, c.sequence))
                .collect();
            running.sort();
            let mut want = vec![(a.campaign, 1), (b.campaign, 1)];
            want.sort();
            assert_eq!(running, want, "both run, the original not superseded");
            // both end: both copies of the current version stay
            db.campaign_ended(&a.campaign, 1).unwrap();
            db.campaign_ended(&b.campaign, 1).unwrap();
            assert!(remove_old_copies(&db, &store).is_empty());
            assert!(p1.file.exists() && f.file.exists());
        }
        // a follow-up of the follow-up works too, from either copy
        fs::remove_file(&p1.file).unwrap();
        let late2 = NodeId::of(&Keypair::generate_ed25519());
        let g = campaign(follow_up(&inbox, &b.campaign, &s.kp, vec![late2], 0)).unwrap();
        assert_eq!(fs::read(&g.file).unwrap(), vec![7; 10_000]);
        // a newer version: no follow-up of the old one
        let path = s.put("frob-2.0.bin", &[8; 10_000]);
        campaign(s.take(&inbox, &path)).unwrap();
        let e = follow_up(&inbox, &a.campaign, &s.kp, vec![late], 0).unwrap_err();
        assert!(format!("{e:#}").contains("superseded by sequence 2"), "{e:#}");
    }

    #[test]
    fn files_taken_in_move_to_the_archive() {
        let s = setup();
        let archive = s.watch.parent().unwrap().join("archive");
        fs::create_dir(&archive).unwrap();
        let mut inbox = inbox(&s.data);
        inbox.archive = Some(archive.clone());
        let path = s.put("frob-1.0.bin", &[1u8; 5000]);
        campaign(s.take(&inbox, &path)).unwrap();
        assert!(!path.exists());
        assert_eq!(fs::read(archive.join("frob-1.0.bin")).unwrap(), vec![1u8; 5000]);
    }

    #[test]
    fn a_copy_left_by_a_crash_before_its_campaign_was_recorded_is_removed_at_start() {
        let s = setup();
        let inbox = inbox(&s.data);
        let path = s.put("frob-1.0.bin", &[1u8; 5000]);
        let kept = campaign(s.take(&inbox, &path)).unwrap();
        let store = s.data.join("campaigns");
        let orphan = store.join("00112233445566778899aabbccddeeff");
        fs::create_dir(&orphan).unwrap();
        fs::write(orphan.join("frob-2.0.bin"), b"half a copy").unwrap();
        let db = inbox.db.lock().unwrap();
        assert_eq!(remove_orphan_copies(&db, &store), 1);
        assert!(!orphan.exists() && kept.file.exists());
    }
}
