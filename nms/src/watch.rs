//! Watch a drop folder and report package files once they are completely written.
//!
//! An operator drops a package file into the watched folder; a campaign must
//! start only once the file is complete. Debouncing alone cannot tell that, so
//! a file becomes a *candidate* only when inotify says its writer is done:
//!
//! - `Close(Write)`: a writer closed it (`cp`, a slow writer at the very end);
//! - a rename into the folder (`Modify(Name(To))`, `Modify(Name(Both))`),
//!   which is all that `mv` within one filesystem produces;
//! - a `Create` that is not followed by an `Open` before the settle period
//!   ends (a hard link, a symlink, a FIFO: created already "closed");
//! - a `Modify(Metadata)` of a file not currently tracked (e.g. a `chmod` that
//!   makes an unreadable file readable);
//! - files already present when watching starts (initial scan), and all files
//!   after an inotify queue overflow (rescan).
//!
//! A candidate is reported [`DropEvent::Ready`] once its size and mtime are
//! unchanged over the settle period; a `Modify(Data)` sends it back to
//! "being written" until the next `Close(Write)`. The same file (name, size,
//! mtime) is reported once, even if removed and moved back; a file replaced
//! with a new size or mtime is reported again, and so is a file that replaces
//! an entry reported as an error. A file deleted before it settles is dropped
//! silently.
//!
//! Ignored: names matching [`is_ignored_name`] and directories. Everything
//! else that is not a regular file with a single link yields a
//! [`DropEvent::Error`] (see [`refusal`]): a symbolic link, wherever it points
//! (Baton never follows links in the drop folder), a FIFO, socket or device,
//! a file with several hard links (a hard link can name a file outside the
//! folder), and a file that cannot be opened for reading. The type is checked
//! with `symlink_metadata` before any open, and the readability check opens
//! with [`open_entry`] (`O_NOFOLLOW | O_NONBLOCK`), so an entry swapped for a
//! link or a FIFO in between is neither followed nor waited on.
//!
//! A [`DropEvent::Ready`] names a path, and the entry can be replaced after it
//! was reported: whoever reads it must open it once with [`open_entry`], check
//! the descriptor with [`refusal`] and read only from that descriptor (as
//! [`crate::campaign::Dropped::open`] does).
//!
//! [`check_folders`] refuses a watched folder that is, or lies inside or
//! around, the NMS's data directory: its private key and state files must
//! never be distributed.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Default settle period (`--settle-file`): how long size and mtime must stay unchanged
/// after the writer closed the file. Longer than the pauses of a writer that appends in
/// steps about a second apart (closing the file in between), so that such a file is taken
/// in once, complete, and not once per step.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(3);

/// Capacity of the channel of [`DropEvent`]s handed to the caller.
const EVENT_CAPACITY: usize = 64;

/// Name endings of editors' and downloaders' temporary files (compared
/// ASCII-case-insensitively).
const TEMP_SUFFIXES: &[&str] = &["~", ".tmp", ".part", ".partial", ".crdownload", ".swp", ".swx"];

/// What the watcher reports about a file in the watched folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropEvent {
    /// The file is completely written, stable and readable.
    Ready { path: PathBuf, size: u64 },
    /// The entry cannot be used; `message` says what is wrong and what to do.
    Error { path: PathBuf, message: String },
}

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watched folder {} does not exist: create it or pass another --watch", .dir.display())]
    Missing { dir: PathBuf },
    #[error("watched path {} is not a folder: pass a folder to --watch", .dir.display())]
    NotAFolder { dir: PathBuf },
    #[error("cannot read watched folder {}: {source}", .dir.display())]
    Io { dir: PathBuf, source: io::Error },
    #[error("cannot watch folder {}: {source} (if the inotify limit is reached, raise fs.inotify.max_user_watches / max_user_instances)", .dir.display())]
    Notify { dir: PathBuf, source: notify::Error },
    #[error("DropWatcher::start must be called from within a tokio runtime")]
    NoRuntime,
}

/// True for names that are never reported: hidden files (leading `.`),
/// `#autosave#`-style names, temporary names ending in `~`, `.tmp`,
/// `.part`, `.partial`, `.crdownload`, `.swp` or `.swx` (any ASCII case), and the
/// `<file>.rollback` sidecars by which the operator asks for a rollback.
pub fn is_ignored_name(name: &str) -> bool {
    if name.is_empty() || name.starts_with('.') || name.starts_with('#') || name.ends_with(".rollback") {
        return true;
    }
    let lower = name.to_ascii_lowercase();
    TEMP_SUFFIXES.iter().any(|suffix| lower.ends_with(suffix))
}

/// Opens an entry of the drop folder for reading without following a symbolic
/// link (an open of a link fails with `ELOOP`) and without blocking on a FIFO
/// (`O_NONBLOCK`, which reads of a regular file ignore). Check what was opened
/// with [`refusal`] on the descriptor's metadata before reading.
pub fn open_entry(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// The refusal of a symbolic link in the drop folder.
pub fn symlink_refusal(path: &Path) -> String {
    format!(
        "{} is a symbolic link; Baton never follows links in the drop folder: move or copy the file \
         itself in",
        path.display()
    )
}

/// Why an entry of the drop folder is never distributed, from its metadata
/// (`symlink_metadata`, or better an open descriptor's): `None` for a regular
/// file with a single link, else what is wrong and what to do.
pub fn refusal(path: &Path, meta: &fs::Metadata) -> Option<String> {
    let shown = path.display();
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Some(symlink_refusal(path));
    }
    if kind.is_dir() {
        return Some(format!(
            "{shown} is a folder; subfolders of the drop folder are not read: drop the package file itself"
        ));
    }
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO (named pipe)"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_block_device() || kind.is_char_device() {
            "a device file"
        } else {
            "not a regular file"
        };
        return Some(format!(
            "{shown} is {what}, not a regular file; it is not read: remove it and drop \
             a regular package file instead"
        ));
    }
    if meta.nlink() > 1 {
        return Some(format!(
            "{shown} has {} hard links; Baton refuses hard-linked files in the drop folder (a hard \
             link can name a file outside it): remove this link and copy the file in instead (cp, not ln)",
            meta.nlink()
        ));
    }
    None
}

/// What to tell the operator when [`open_entry`] fails.
pub fn open_refusal(path: &Path, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => symlink_refusal(path),
        Some(libc::ENOENT) => format!("{} was removed before it could be read", path.display()),
        _ => format!(
            "{} cannot be opened for reading ({e}): give the server read access (e.g. chmod a+r) \
             and it will be picked up",
            path.display()
        ),
    }
}

/// Refuses a watched folder that is the data directory, lies inside it, or
/// contains it: the NMS would distribute its own private key and then its own
/// state files. Creates `data_dir` first if it does not exist (it is created
/// at start-up anyway), so that both can be resolved. Compares device and
/// inode numbers along both paths' ancestors, so that symbolic links and bind
/// mounts cannot hide the overlap.
pub fn check_folders(watch: &Path, data_dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let resolve = |p: &Path, what: &str| {
        fs::canonicalize(p).with_context(|| format!("cannot resolve the {what} {}", p.display()))
    };
    let watch = resolve(watch, "watched folder (--watch)")?;
    let data = resolve(data_dir, "data directory (--data-dir)")?;
    let id = |p: &Path| {
        fs::metadata(p)
            .map(|m| (m.dev(), m.ino()))
            .with_context(|| format!("cannot examine {}", p.display()))
    };
    let (watch_id, data_id) = (id(&watch)?, id(&data)?);
    // Whether `inner` is the folder `outer` or lies inside it.
    let within = |inner: &Path, outer: (u64, u64)| -> anyhow::Result<bool> {
        for ancestor in inner.ancestors() {
            if id(ancestor)? == outer {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let (w, d) = (watch.display(), data.display());
    let todo = "the NMS would distribute its own private key and state files. Use two separate \
                folders, neither inside the other (e.g. --watch /srv/baton/drop --data-dir \
                /var/lib/baton-nms)";
    if watch_id == data_id {
        bail!(
            "the watched folder (--watch) {w} and the data directory (--data-dir) {d} are the same folder: {todo}"
        );
    }
    if within(&watch, data_id)? {
        bail!("the watched folder (--watch) {w} is inside the data directory (--data-dir) {d}: {todo}");
    }
    if within(&data, watch_id)? {
        bail!("the data directory (--data-dir) {d} is inside the watched folder (--watch) {w}: {todo}");
    }
    Ok(())
}

/// Watches one folder (non-recursively). Dropping it stops watching.
pub struct DropWatcher {
    dir: PathBuf,
    _watcher: RecommendedWatcher,
    task: JoinHandle<()>,
}

impl fmt::Debug for DropWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DropWatcher")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for DropWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DropWatcher {
    /// Starts watching `dir`; files already there are reported too. Must be
    /// called inside a tokio runtime. Use [`DEFAULT_SETTLE`] unless testing.
    pub fn start(
        dir: &Path,
        settle: Duration,
    ) -> Result<(DropWatcher, mpsc::Receiver<DropEvent>), WatchError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WatchError::NoRuntime)?;
        let io_err = |source| WatchError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let dir = std::path::absolute(dir).map_err(io_err)?;
        match fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(WatchError::NotAFolder { dir }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(WatchError::Missing { dir });
            }
            Err(source) => return Err(WatchError::Io { dir, source }),
        }
        let (raw_tx, raw_rx) = mpsc::unbounded_channel();
        let notify_err = |source| WatchError::Notify {
            dir: dir.clone(),
            source,
        };
        let mut watcher = notify::recommended_watcher(move |res| {
            let _ = raw_tx.send(res);
        })
        .map_err(notify_err)?;
        // Watch before scanning so that nothing created meanwhile is missed.
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(notify_err)?;

        let (out_tx, out_rx) = mpsc::channel(EVENT_CAPACITY);
        let worker = Worker {
            dir: dir.clone(),
            settle,
            pending: HashMap::new(),
            reported: HashMap::new(),
            outbox: Vec::new(),
            out: out_tx,
        };
        let task = runtime.spawn(worker.run(raw_rx));
        let watcher = DropWatcher {
            dir,
            _watcher: watcher,
            task,
        };
        Ok((watcher, out_rx))
    }

    /// The watched folder (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Size and mtime: a file is stable while this does not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: Option<SystemTime>,
}

#[derive(Debug)]
enum Phase {
    /// A writer has it open: wait for `Close(Write)`.
    Writing,
    /// Candidate, checked at `due`. `created` marks a fresh `Create` that an
    /// `Open` (a writer creating it) turns into `Writing`.
    Settling {
        stamp: Option<Stamp>,
        due: Instant,
        created: bool,
    },
}

/// What a path is, checked without opening it.
enum Look {
    Gone,
    Folder,
    Problem(String),
    File(Stamp),
}

struct Worker {
    dir: PathBuf,
    settle: Duration,
    pending: HashMap<OsString, Phase>,
    reported: HashMap<OsString, Stamp>,
    outbox: Vec<DropEvent>,
    out: mpsc::Sender<DropEvent>,
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

impl Worker {
    async fn run(mut self, mut raw: mpsc::UnboundedReceiver<notify::Result<Event>>) {
        self.scan();
        let out = self.out.clone();
        loop {
            for event in std::mem::take(&mut self.outbox) {
                tracing::debug!(?event, "drop folder event");
                if out.send(event).await.is_err() {
                    return;
                }
            }
            let next_due = self.pending.values().filter_map(|phase| match phase {
                Phase::Settling { due, .. } => Some(*due),
                Phase::Writing => None,
            });
            tokio::select! {
                msg = raw.recv() => match msg {
                    Some(Ok(event)) => self.on_event(event),
                    Some(Err(e)) => tracing::warn!(dir = %self.dir.display(), "watch error: {e}"),
                    None => return,
                },
                () = sleep_until(next_due.min()) => self.on_due(),
                () = out.closed() => return,
            }
        }
    }

    /// Makes every entry of the folder that is not tracked yet a candidate.
    fn scan(&mut self) {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot list watched folder: {e}");
                return;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !is_ignored_name(&name.to_string_lossy()) && !self.pending.contains_key(&name) {
                self.candidate(name, false);
            }
        }
    }

    /// The file name of `path` if it is a non-ignored entry of the folder.
    fn name_of(&self, path: &Path) -> Option<OsString> {
        let name = path.file_name()?;
        (path.parent() == Some(self.dir.as_path()) && !is_ignored_name(&name.to_string_lossy()))
            .then(|| name.to_os_string())
    }

    fn candidate(&mut self, name: OsString, created: bool) {
        let stamp = match self.look(&self.dir.join(&name)) {
            Look::File(stamp) => Some(stamp),
            _ => None,
        };
        let due = Instant::now() + self.settle;
        let phase = Phase::Settling { stamp, due, created };
        self.pending.insert(name, phase);
    }

    fn on_event(&mut self, event: Event) {
        tracing::trace!(?event, "notify event");
        if event.need_rescan() {
            self.scan();
        }
        if matches!(event.kind, EventKind::Remove(_)) && event.paths.iter().any(|p| p == &self.dir) {
            self.outbox.push(DropEvent::Error {
                path: self.dir.clone(),
                message: format!(
                    "the watched folder {} was removed: recreate it and restart the server",
                    self.dir.display()
                ),
            });
            return;
        }
        if let EventKind::Modify(ModifyKind::Name(RenameMode::Both)) = event.kind {
            // paths = [from, to]
            if let Some(name) = event.paths.first().and_then(|p| self.name_of(p)) {
                self.pending.remove(&name);
            }
            if let Some(name) = event.paths.last().and_then(|p| self.name_of(p)) {
                self.candidate(name, false);
            }
            return;
        }
        let names: Vec<OsString> = event.paths.iter().filter_map(|p| self.name_of(p)).collect();
        for name in names {
            match event.kind {
                EventKind::Create(_) => match fs::symlink_metadata(self.dir.join(&name)) {
                    Ok(meta) if meta.is_dir() => {}
                    // A regular file is expected to be opened by its writer
                    // right away; anything else is complete on creation.
                    Ok(meta) => self.candidate(name, meta.is_file()),
                    Err(_) => {
                        self.pending.remove(&name);
                    }
                },
                EventKind::Access(AccessKind::Open(_)) => {
                    if let Some(Phase::Settling { created: true, .. }) = self.pending.get(&name) {
                        self.pending.insert(name, Phase::Writing);
                    }
                }
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                    self.candidate(name, false);
                }
                EventKind::Modify(ModifyKind::Data(_)) => {
                    self.pending.insert(name, Phase::Writing);
                }
                EventKind::Modify(ModifyKind::Metadata(_)) if !self.pending.contains_key(&name) => {
                    self.candidate(name, false);
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
                    self.pending.remove(&name);
                }
                EventKind::Modify(ModifyKind::Name(_)) => {
                    if self.dir.join(&name).symlink_metadata().is_ok() {
                        self.candidate(name, false);
                    } else {
                        self.pending.remove(&name);
                    }
                }
                _ => {}
            }
        }
    }

    /// Checks every candidate whose settle period has ended.
    fn on_due(&mut self) {
        let now = Instant::now();
        let due: Vec<OsString> = self
            .pending
            .iter()
            .filter(|(_, phase)| matches!(phase, Phase::Settling { due, .. } if *due <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            let path = self.dir.join(&name);
            let look = self.look(&path);
            let Some(Phase::Settling { stamp, due, .. }) = self.pending.get_mut(&name) else {
                continue;
            };
            match look {
                Look::File(now_stamp) if *stamp != Some(now_stamp) => {
                    // Still changing: watch it for another settle period.
                    *stamp = Some(now_stamp);
                    *due = now + self.settle;
                    continue;
                }
                Look::File(now_stamp) => {
                    self.pending.remove(&name);
                    self.finish(name, path, now_stamp);
                }
                Look::Gone | Look::Folder => {
                    self.pending.remove(&name);
                }
                Look::Problem(message) => {
                    self.pending.remove(&name);
                    self.refuse(name, path, message);
                }
            }
        }
    }

    /// Reports a stable regular file unless already reported as it is.
    fn finish(&mut self, name: OsString, path: PathBuf, stamp: Stamp) {
        if self.reported.get(&name) == Some(&stamp) {
            return;
        }
        // No link is followed and a FIFO swapped in since `look` does not block.
        match open_entry(&path).and_then(|file| file.metadata()) {
            Ok(meta) if meta.is_dir() => {} // replaced by a folder meanwhile
            Ok(meta) => match refusal(&path, &meta) {
                None => {
                    self.reported.insert(name, stamp);
                    self.outbox.push(DropEvent::Ready {
                        path,
                        size: stamp.size,
                    });
                }
                Some(message) => self.refuse(name, path, message),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // removed meanwhile
            Err(e) => {
                let message = open_refusal(&path, &e);
                self.refuse(name, path, message);
            }
        }
    }

    /// Reports an entry that cannot be used. Whatever replaces it later is
    /// reported again, even with the size and mtime of an earlier report.
    fn refuse(&mut self, name: OsString, path: PathBuf, message: String) {
        self.reported.remove(&name);
        self.outbox.push(DropEvent::Error { path, message });
    }

    /// Classifies `path` without opening it and without following a link.
    fn look(&self, path: &Path) -> Look {
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Look::Gone,
            Err(e) => {
                return Look::Problem(format!(
                    "{} cannot be examined ({e}): check the permissions of the watched folder",
                    path.display()
                ));
            }
        };
        if meta.is_dir() {
            return Look::Folder;
        }
        if let Some(message) = refusal(path, &meta) {
            return Look::Problem(message);
        }
        Look::File(Stamp {
            size: meta.len(),
            mtime: meta.modified().ok(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const SETTLE: Duration = Duration::from_millis(100);
    const ARRIVES: Duration = Duration::from_secs(10);
    const QUIET: Duration = Duration::from_secs(1);

    async fn next(rx: &mut mpsc::Receiver<DropEvent>, within: Duration) -> Option<DropEvent> {
        tokio::time::timeout(within, rx.recv()).await.ok().flatten()
    }

    async fn expect_ready(rx: &mut mpsc::Receiver<DropEvent>, path: &Path, size: u64) {
        let event = next(rx, ARRIVES).await;
        let want = DropEvent::Ready {
            path: path.to_path_buf(),
            size,
        };
        assert_eq!(event, Some(want));
    }

    async fn expect_quiet(rx: &mut mpsc::Receiver<DropEvent>) {
        let event = next(rx, QUIET).await;
        assert_eq!(event, None, "unexpected event");
    }

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("drop");
        fs::create_dir(&dir).unwrap();
        (tmp, dir)
    }

    #[test]
    fn ignored_names() {
        for name in [
            ".hidden",
            ".x.pkg",
            "a~",
            "a.tmp",
            "a.TMP",
            "a.part",
            "a.partial",
            "a.crdownload",
            ".a.swp",
            "a.swp",
            "a.swx",
            "#a#",
            "frob-1.0.bin.rollback",
            "",
        ] {
            assert!(is_ignored_name(name), "{name:?} should be ignored");
        }
        for name in [
            "pkg.bin",
            "pkg.toml",
            "a.tar.gz",
            "tmp",
            "part",
            "a.tmp.pkg",
            "x#",
        ] {
            assert!(!is_ignored_name(name), "{name:?} should not be ignored");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_folder_is_an_error() {
        let (_tmp, dir) = setup();
        let missing = dir.join("nope");
        let err = DropWatcher::start(&missing, SETTLE).unwrap_err();
        assert!(matches!(err, WatchError::Missing { .. }));
        assert!(err.to_string().contains("create it or pass another --watch"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn written_file_is_ready() {
        let (_tmp, dir) = setup();
        let (_w, mut rx) = DropWatcher::start(&dir, SETTLE).unwrap();
        let path = dir.join("a.pkg");
        fs::write(&path, vec![7u8; 12345]).unwrap();
        expect_ready(&mut rx, &path, 12345).await;
        expect_quiet(&mut rx).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_writer_is_ready_only_after_close() {
        let (_tmp, dir) = setup();
        let (_w, mut rx) = DropWatcher::start(&dir, SETTLE).unwrap();
        let path = dir.join("slow.pkg");
        let mut file = fs::File::create(&path).unwrap();
        // Created and opened but nothing written yet, then written in chunks.
        for chunk in 0..5 {
            tokio::time::sleep(SETTLE * 4).await;
            assert!(rx.try_recv().is_err(), "reported while still open");
            if chunk < 4 {
                file.write_all(&[1u8; 1000]).unwrap();
                file.flush().unwrap();
            }
        }
        drop(file);
        expect_ready(&mut rx, &path, 4000).await;
        expect_quiet(&mut rx).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renamed_into_place_is_ready() {
        let (tmp, dir) = setup();
        let (_w, mut rx) = DropWatcher::start(&dir, SETTLE).unwrap();
        // Hidden temporary name inside the folder, then rename.
        let hidden = dir.join(".incoming");
        fs::write(&hidden, b"hello").unwrap();
        let first = dir.join("first.pkg");
        fs::rename(&hidden, &first).unwrap();
        expect_ready(&mut rx, &first, 5).await;
        expect_quiet(&mut rx).await;
        // Sibling folder on the same filesystem, then rename.
        let staging = tmp.path().join("staging.pkg");
        fs::write(&staging, b"hello world").unwrap();
        let second = dir.join("second.pkg");
        fs::rename(&staging, &second).unwrap();
        expect_ready(&mut rx, &second, 11).await;
        expect_quiet(&mut rx).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hard_link_with_a_single_link_left_is_ready() {
        // A hard link gives only Create: no Open, no Close(Write). Once the
        // original name is gone, the file has a single link.
        let (tmp, dir) = setup();
        let (_w, mut rx) = DropWatcher::start(&dir, SETTLE).unwrap();
        let original = tmp.path().join("original.pkg");
        fs::write(&original, b"linked").unwrap();
        let link = dir.join("linked.pkg");
        fs::hard_link(&original, &link).unwrap();
        fs::remove_file(&original).unwrap();
        expect_ready(&mut rx, &link, 6).await;
        expect_quiet(&mut rx).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hard_link_to_a_file_outside_is_refused() {
        let (tmp, dir) = setup();
        let (_w, mut rx) = DropWatcher::start(&dir, SETTLE).unwrap();
        let original = tmp.path().join("original.pkg");
        fs::write(&original, b"linked").unwrap();
        let link = dir.join("linked.pkg");
        fs::hard_link(&original, &link).unwrap();
        expect_error(&mut rx, &link, "has 2 hard links").await;
        expect_quiet(&mut rx).await;
        // Copied in instead: reported.
        fs::remove_file(&link).unwrap();
        fs::copy(&original, &link).unwrap();
        expect_ready(&mut rx, &link, 6).await;
        expect_quiet(&mut rx).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hidden_and_temporary_names_are_ignored() {
        let (_tmp, dir) = setup();
        let (_w, mut rx) = DropWatcher::start(&dir, SETTLE).unwrap();
        for name in [".hidden", "a.tmp", "b.part", "c~", "#d#", "e.crdownload"] {
            fs::write(dir.join(name), b"x").unwrap();
        }
        fs::create_dir(dir.join("sub")).unwrap();
        let marker = dir.join("marker.pkg");
        fs::write(&marker, b"m").unwrap();
        expect_ready(&mut rx, &marker, 1).await;
        expect_quiet(&mut rx).await;
    }

    async fn expect_error(rx: &mut mpsc::Receiver<DropEvent>, want: &Path, words: &str) {
        match next(rx, ARRIVES).await {
            Some(DropEvent::Error { path, message }) => {
                assert_eq!(path, want);
                assert!(message.contains(words), "{message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn symlink_out_of_folder_is_refused() {
        let (tmp, dir) = setup();
        let outside = tmp.path().join("outside.pkg");
        fs::write(&outside, b"secret").unwrap();
        let (_w, mut rx) = DropWatcher::start(&dir, SETTLE).unwrap();
        let link = dir.join("link.pkg");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        expect_error(&mut rx, &link, "is a symbolic link; Baton never follows links").await;
        expect_quiet(&mut rx).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn symlink_inside_folder_is_refused_too() {
        let (_tmp, dir) = setup();
        fs::create_dir(dir.join("store")).unwrap();
        let target = dir.join("store").join("real.pkg");
        fs::write(&target, b"abc").unwrap();
        let (_w, mut rx) = DropWatcher::start(&dir, SETTLE).unwrap();
        let link = dir.join("link.pkg");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        expect_error(&mut rx, &link, "move or copy the file itself in").await;
        expect_quiet(&mut rx).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_replacing_a_refused_link_is_reported_even_if_reported_before() {
        let (tmp, dir) = setup();
        let (_w, mut rx) = DropWatcher::start(&dir, SETTLE).unwrap();
        let path = dir.join("a.pkg");
        fs::write(&path, b"genuine").unwrap();
        expect_ready(&mut rx, &path, 7).await;
        // Moved away, a link put in its place, then the same file moved back.
        let aside = tmp.path().join("aside.pkg");
        fs::rename(&path, &aside).unwrap();
        std::os::unix::fs::symlink(&aside, &path).unwrap();
        expect_error(&mut rx, &path, "symbolic link").await;
        fs::remove_file(&path).unwrap();
        fs::rename(&aside, &path).unwrap();
        expect_ready(&mut rx, &path, 7).await;
        expect_quiet(&mut rx).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifo_is_an_error() {
        let (_tmp, dir) = setup();
        let (_w, mut rx) = DropWatcher::start(&dir, SETTLE).unwrap();
        let fifo = dir.join("pipe.pkg");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        match next(&mut rx, ARRIVES).await {
            Some(DropEvent::Error { path, message }) => {
                assert_eq!(path, fifo);
                assert!(message.contains("FIFO"), "{message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        expect_quiet(&mut rx).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_present_at_start_are_ready() {
        let (_tmp, dir) = setup();
        let a = dir.join("a.pkg");
        let b = dir.join("b.pkg");
        fs::write(&a, b"aa").unwrap();
        fs::write(&b, b"bbb").unwrap();
        let (_w, mut rx) = DropWatcher::start(&dir, SETTLE).unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(next(&mut rx, ARRIVES).await);
        }
        got.sort_by_key(|e| format!("{e:?}"));
        let ready = |path: &Path, size| {
            Some(DropEvent::Ready {
                path: path.to_path_buf(),
                size,
            })
        };
        assert_eq!(got, vec![ready(&a, 2), ready(&b, 3)]);
        expect_quiet(&mut rx).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unchanged_file_is_reported_once_and_replacement_again() {
        let (_tmp, dir) = setup();
        let (_w, mut rx) = DropWatcher::start(&dir, SETTLE).unwrap();
        let path = dir.join("same.pkg");
        fs::write(&path, b"12345").unwrap();
        expect_ready(&mut rx, &path, 5).await;
        // Open for writing and close without writing, and chmod: events but
        // no change in size or mtime.
        drop(fs::OpenOptions::new().append(true).open(&path).unwrap());
        let perms = fs::metadata(&path).unwrap().permissions();
        fs::set_permissions(&path, perms).unwrap();
        expect_quiet(&mut rx).await;
        // Replaced with new content: reported again.
        fs::write(&path, b"1234567").unwrap();
        expect_ready(&mut rx, &path, 7).await;
        expect_quiet(&mut rx).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_with_pauses_of_a_second_are_taken_in_once_complete() {
        // issue 9 point 3: a file appended in steps with pauses of a second produced 5
        // campaigns of truncated content
        let (_tmp, dir) = setup();
        let (_w, mut rx) = DropWatcher::start(&dir, DEFAULT_SETTLE).unwrap();
        let path = dir.join("grown.pkg");
        for _ in 0..5 {
            // each step opens, appends and closes, as `cat part >> file` does
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(&[5u8; 1000]).unwrap();
            drop(f);
            tokio::time::sleep(Duration::from_millis(1100)).await;
            if let Ok(ev) = rx.try_recv() {
                panic!("taken in while still growing: {ev:?}");
            }
        }
        expect_ready(&mut rx, &path, 5000).await;
        expect_quiet(&mut rx).await;
    }
}
