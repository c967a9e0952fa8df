//! Building a campaign from a dropped file: copy it into the NMS's store, hash it, pick
//! the sequence number (persisted, only grows), sign the manifest.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use baton_protocol::manifest::{
    HashList, MANIFEST_FORMAT, PlanParams, RelayPolicy, is_plain_file_name, parse_package_file_name,
};
use baton_protocol::{CampaignSecret, Keypair, Manifest, NodeId, PackageHasher, SignedManifest};

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

/// Cryptographically random bytes from the OS.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom")?;
    Ok(b)
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

/// Copies the dropped file into `data/campaigns/<id>/`, hashes the copy and signs the manifest.
pub fn prepare(
    data_dir: &Path,
    dropped: &Path,
    nms: &Keypair,
    addressees: Vec<NodeId>,
    settings: &CampaignSettings,
) -> Result<Prepared> {
    let file_name = dropped
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_plain_file_name(n))
        .with_context(|| {
            format!(
                "{} has a name Baton cannot use as a package file name (UTF-8, no leading '.' or '-', at most 200 bytes); rename it",
                dropped.display()
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
    // hash while copying, so the manifest describes exactly the bytes we will serve
    let mut src = fs::File::open(dropped).with_context(|| format!("cannot read {}", dropped.display()))?;
    let mut dst = fs::File::create(&file).with_context(|| format!("cannot write {}", file.display()))?;
    let mut hasher = PackageHasher::new(settings.chunk_size);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", dropped.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        std::io::Write::write_all(&mut dst, &buf[..n])?;
    }
    // no fsync: the copy only has to outlive this NMS process, and a crash ends the campaign
    let (size, hashes, root) = hasher.finish();
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
        let drop = d.path().join("frob-1.2.tar.gz");
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
        let p = prepare(d.path(), &drop, &kp, vec![node], &s).unwrap();
        assert_eq!(
            (p.manifest.name.as_str(), p.manifest.version.as_str()),
            ("frob", "1.2")
        );
        assert_eq!(p.manifest.size, 300_000);
        assert_eq!(p.manifest.chunk_hashes.0.len(), 5);
        assert_eq!(fs::read(&p.file).unwrap(), vec![7u8; 300_000]);
        assert_eq!(p.signed.open_unchecked().unwrap(), p.manifest);
        let bad = d.path().join("-rf");
        fs::write(&bad, b"x").unwrap();
        assert!(prepare(d.path(), &bad, &kp, vec![node], &s).is_err());
    }
}
