//! When a one-shot agent (`baton-node --once`) is done, and how it ended, from the node
//! endpoint's events: once a campaign is over here (installed or failed, *and* its
//! relaying done: [`Event::Finished`] comes after the machine's `RelayDone` and the
//! delivery of its reports) and no other is in hand; when an offer of a version installed
//! here already was refused (up to date); or when the shell's timeout passes. The shell
//! turns the [`End`] into its exit status.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::endpoint::node::Event;
use crate::manifest::{CampaignId, campaign_hex};
use crate::receiver::Refusal;
use crate::wire::{Phase, RefuseReason};

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
    /// endpoint's [`crate::endpoint::node::NodeEndpoint::busy`]). Installed only if,
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
                .unwrap_or_else(|| (format!("campaign {}", campaign_hex(c)), 0));
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

fn refusal_text(from: &crate::NodeId, r: &Refusal) -> String {
    format!("from {from}: {} ({:?})", r.detail, r.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(c: u8, name: &str, seq: u64) -> Event {
        Event::Accepted {
            campaign: [c; 16],
            from: crate::id::fake_id(99),
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
    }

    #[test]
    fn a_failed_install_ends_non_zero_with_its_reason() {
        let w = watch(&[
            accepted(2, "frob", 1),
            failed(2, "install command `false` exited with exit status: 1"),
            finished(2, Phase::Failed, 5),
        ]);
        assert_eq!(
            w.end(false),
            Some(End::Failed {
                reason: "frob (sequence 1): install command `false` exited with exit status: 1".into()
            })
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
        let from = crate::id::fake_id(99);
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
        // a campaign over here decides, not the refusal
        w.observe(&accepted(2, "frob", 2));
        w.observe(&failed(2, "disk full"));
        w.observe(&finished(2, Phase::Failed, 0));
        assert!(matches!(w.end(false), Some(End::Failed { .. })));
    }
}
