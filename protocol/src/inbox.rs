//! What the NMS does with a file taken in from its drop folder, given what it distributed
//! before: a new version (a new campaign with the next sequence number), the very content
//! distributed last (nothing to do), or a refusal when the drop would take the fleet back
//! to an older version without the operator asking for a rollback in so many words.
//!
//! A package's sequence number never goes down: every accepted drop, a rollback included,
//! gets the package's last sequence plus one. The shell remembers each file it took in
//! (name, size, mtime, inode, content hash), so a restart does not take it in again; this
//! module decides only from the content and the package's history.

use std::cmp::Ordering;

use crate::chunk::Hash;

/// A version of a package the NMS distributed before (a campaign was signed for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distributed {
    /// The version string, from the file name.
    pub version: String,
    /// Its sequence number.
    pub sequence: u64,
    /// The root hash of its content.
    pub content: Hash,
}

/// A drop taken in, hashed, and not yet signed.
#[derive(Debug, Clone, Copy)]
pub struct Drop<'a> {
    /// The file's name, for messages.
    pub file: &'a str,
    /// The package name.
    pub package: &'a str,
    /// The version string, from the file name.
    pub version: &'a str,
    /// The root hash of its content.
    pub content: Hash,
    /// The operator asked for a rollback (a `<file>.rollback` sidecar).
    pub rollback: bool,
}

/// What becomes of a drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    /// Sign a campaign with this sequence number.
    Accept {
        /// The package's last sequence plus one.
        sequence: u64,
    },
    /// The content is the one distributed last: no new campaign.
    Unchanged {
        /// The sequence number it was distributed with.
        sequence: u64,
    },
    /// Never distributed; the message says why and what to do.
    Refused(String),
}

/// Decides about `drop` given the package's `history` (any order) and the last sequence
/// number the package used (0 if none; it may exceed the history's, e.g. after a refusal
/// further down the line).
pub fn decide(drop: &Drop<'_>, history: &[Distributed], last_sequence: u64) -> Intake {
    let last = history
        .iter()
        .map(|d| d.sequence)
        .max()
        .unwrap_or(0)
        .max(last_sequence);
    let Some(latest) = history.iter().max_by_key(|d| d.sequence) else {
        return Intake::Accept { sequence: last + 1 };
    };
    if latest.content == drop.content {
        return Intake::Unchanged {
            sequence: latest.sequence,
        };
    }
    if !drop.rollback {
        let ask = format!(
            "to distribute it anyway, create an empty file {}.rollback next to it and drop it again \
             (or touch it)",
            drop.file
        );
        if compare_versions(drop.version, &latest.version) == Ordering::Less {
            return Intake::Refused(format!(
                "{}: version {} of {} is older than the latest distributed version {} (sequence {}); \
                 not distributed, so no node is downgraded; {ask}",
                drop.file, drop.version, drop.package, latest.version, latest.sequence
            ));
        }
        if let Some(old) = history
            .iter()
            .filter(|d| d.content == drop.content)
            .max_by_key(|d| d.sequence)
        {
            return Intake::Refused(format!(
                "{}: its content is that of version {} of {} (sequence {}), older than the latest \
                 distributed version {} (sequence {}); not distributed, so no node is downgraded; {ask}",
                drop.file, old.version, drop.package, old.sequence, latest.version, latest.sequence
            ));
        }
    }
    Intake::Accept { sequence: last + 1 }
}

/// Orders version strings: runs of digits compare as numbers, other runs as text, and a
/// version that is a prefix of another is the lower ("1.2" < "1.2.1"). Separators count as
/// text, so "1.10" > "1.9" and "2.0" > "1.99". Pre-release suffixes get no special
/// meaning: "2.0-rc1" > "2.0".
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (runs(a), runs(b));
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) => {
                let o = match (p.parse::<u128>(), q.parse::<u128>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    // a number beyond u128: longer is larger once zeros are stripped
                    _ if is_digits(p) && is_digits(q) => {
                        let (p, q) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
                        p.len().cmp(&q.len()).then_with(|| p.cmp(q))
                    }
                    _ => p.cmp(q),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Splits into maximal runs of ASCII digits and of everything else.
fn runs(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let first = rest.chars().next()?;
        let digit = first.is_ascii_digit();
        let end = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() != digit)
            .map_or(rest.len(), |(i, _)| i);
        let (run, tail) = rest.split_at(end);
        rest = tail;
        Some(run)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: &str, sequence: u64, content: u8) -> Distributed {
        Distributed {
            version: version.into(),
            sequence,
            content: [content; 32],
        }
    }

    fn dropped(version: &str, content: u8, rollback: bool) -> Drop<'_> {
        Drop {
            file: "frob.bin",
            package: "frob",
            version,
            content: [content; 32],
            rollback,
        }
    }

    #[test]
    fn versions_order_numerically() {
        use Ordering::*;
        for (a, b, o) in [
            ("1.0", "2.0", Less),
            ("1.10", "1.9", Greater),
            ("2.0", "1.99", Greater),
            ("1.2", "1.2.1", Less),
            ("1.2", "1.2", Equal),
            ("10", "9", Greater),
            ("1.0a", "1.0b", Less),
            ("99999999999999999999999999999999999999999", "1", Greater),
            ("0", "0", Equal),
        ] {
            assert_eq!(compare_versions(a, b), o, "{a} vs {b}");
        }
    }

    #[test]
    fn the_first_drop_of_a_package_takes_the_next_sequence() {
        assert_eq!(
            decide(&dropped("1.0", 1, false), &[], 0),
            Intake::Accept { sequence: 1 }
        );
        // a sequence used by a campaign no longer in the history is never used again
        assert_eq!(
            decide(&dropped("1.0", 1, false), &[], 4),
            Intake::Accept { sequence: 5 }
        );
    }

    #[test]
    fn a_newer_version_or_new_content_of_the_same_version_is_accepted() {
        let h = [v("1.0", 1, 1), v("2.0", 2, 2)];
        assert_eq!(
            decide(&dropped("3.0", 3, false), &h, 2),
            Intake::Accept { sequence: 3 }
        );
        // the same version replaced by other bytes: a new campaign
        assert_eq!(
            decide(&dropped("2.0", 9, false), &h, 2),
            Intake::Accept { sequence: 3 }
        );
    }

    #[test]
    fn the_content_distributed_last_is_unchanged() {
        let h = [v("1.0", 1, 1), v("2.0", 2, 2)];
        assert_eq!(
            decide(&dropped("2.0", 2, false), &h, 2),
            Intake::Unchanged { sequence: 2 }
        );
        assert_eq!(
            decide(&dropped("2.0", 2, true), &h, 2),
            Intake::Unchanged { sequence: 2 }
        );
    }

    #[test]
    fn an_older_version_is_refused_unless_a_rollback_is_asked_for() {
        let h = [v("1.0", 1, 1), v("2.0", 2, 2)];
        let Intake::Refused(why) = decide(&dropped("1.0", 7, false), &h, 2) else {
            panic!("an older version was accepted")
        };
        assert!(
            why.contains("older than the latest distributed version 2.0"),
            "{why}"
        );
        assert!(why.contains("frob.bin.rollback"), "{why}");
        // the older content under a newer name: refused too
        let Intake::Refused(why) = decide(&dropped("3.0", 1, false), &h, 2) else {
            panic!("older content was accepted")
        };
        assert!(why.contains("content is that of version 1.0"), "{why}");
        // asked for: a rollback, with a higher sequence
        assert_eq!(
            decide(&dropped("1.0", 1, true), &h, 2),
            Intake::Accept { sequence: 3 }
        );
    }
}
