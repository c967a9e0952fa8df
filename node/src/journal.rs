//! The node's journal: `<data>/journal`, one line per phase a campaign reached
//! (`<campaign hex> <phase>`), appended and synced before the actions after it run.
//!
//! What the phases mean, and what a restart resumes, is decided in the core
//! ([`baton_protocol::endpoint::node`]): this file only stores the lines. At open the file
//! is folded to one line per campaign ([`fold_journal`]) and rewritten atomically when that
//! makes it smaller, keeping the newest [`MAX_ENTRIES`].

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use baton_protocol::CampaignId;
use baton_protocol::endpoint::node::{JournalEntry, JournalPhase, fold_journal};
use tracing::warn;

/// The journal's file name in the data directory.
pub const JOURNAL_FILE: &str = "journal";
/// Campaigns the journal keeps (the newest).
pub const MAX_ENTRIES: usize = 8192;

/// An open journal, appended to.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

fn line(e: &JournalEntry) -> String {
    format!("{} {}\n", hex::encode(e.campaign), e.phase.as_str())
}

fn parse(l: &str) -> Option<JournalEntry> {
    let (c, p) = l.trim().split_once(' ')?;
    let mut campaign = CampaignId::default();
    hex::decode_to_slice(c, &mut campaign).ok()?;
    Some(JournalEntry {
        campaign,
        phase: JournalPhase::parse(p)?,
    })
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and returns its entries, folded.
    pub fn open(dir: &Path) -> Result<(Journal, Vec<JournalEntry>)> {
        let path = dir.join(JOURNAL_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut lines = 0;
        let mut entries = Vec::new();
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            lines += 1;
            match parse(l) {
                Some(e) => entries.push(e),
                None => warn!("ignoring the unreadable line `{l}` in {}", path.display()),
            }
        }
        let mut folded = fold_journal(&entries);
        if folded.len() > MAX_ENTRIES {
            folded.drain(..folded.len() - MAX_ENTRIES);
        }
        if folded.len() < lines {
            let tmp = dir.join(format!(".{JOURNAL_FILE}.tmp"));
            let text: String = folded.iter().map(line).collect();
            let mut f = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok((Journal { path, file }, folded))
    }

    /// Appends an entry and syncs it to disk.
    pub fn append(&mut self, e: &JournalEntry) -> Result<()> {
        self.file
            .write_all(line(e).as_bytes())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_reopen_folded() {
        let dir = tempfile::tempdir().unwrap();
        let e = |c: u8, phase| JournalEntry {
            campaign: [c; 16],
            phase,
        };
        let (mut j, old) = Journal::open(dir.path()).unwrap();
        assert!(old.is_empty());
        for x in [
            e(1, JournalPhase::Accepted),
            e(2, JournalPhase::Accepted),
            e(1, JournalPhase::Installed),
        ] {
            j.append(&x).unwrap();
        }
        drop(j);
        std::fs::write(
            dir.path().join(JOURNAL_FILE),
            std::fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap() + "garbage line\n",
        )
        .unwrap();
        let (_, got) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            got,
            vec![e(1, JournalPhase::Installed), e(2, JournalPhase::Accepted)]
        );
        // rewritten to one line per campaign
        let text = std::fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }
}
