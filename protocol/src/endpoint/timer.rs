//! A table of named timers, in the manner of quinn-proto's `connection/timer.rs`: each
//! endpoint names the things it waits for, sets and clears them by name, and its
//! `poll_timeout` is the earliest one. Time is a `Duration` since the shell's origin.

use std::collections::BTreeMap;
use std::time::Duration;

/// Named deadlines; at most one per name.
#[derive(Debug, Clone)]
pub struct Timers<K: Ord + Copy> {
    at: BTreeMap<K, Duration>,
}

impl<K: Ord + Copy> Default for Timers<K> {
    fn default() -> Self {
        Timers { at: BTreeMap::new() }
    }
}

impl<K: Ord + Copy> Timers<K> {
    /// Sets (or moves) the timer `k` to fire at `at`.
    pub fn set(&mut self, k: K, at: Duration) {
        self.at.insert(k, at);
    }

    /// Sets `k` to `at` unless it is already set to fire earlier.
    pub fn set_earliest(&mut self, k: K, at: Duration) {
        let e = self.at.entry(k).or_insert(at);
        if at < *e {
            *e = at;
        }
    }

    /// Stops the timer `k`.
    pub fn clear(&mut self, k: K) {
        self.at.remove(&k);
    }

    /// When `k` fires, if it is set.
    pub fn get(&self, k: K) -> Option<Duration> {
        self.at.get(&k).copied()
    }

    /// The earliest deadline: what the endpoint's `poll_timeout` returns.
    pub fn next(&self) -> Option<Duration> {
        self.at.values().min().copied()
    }

    /// Removes and returns the timers due at `now`, earliest first (ties by name).
    pub fn expired(&mut self, now: Duration) -> Vec<K> {
        let mut due: Vec<(Duration, K)> = self
            .at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, at)| (*at, *k))
            .collect();
        due.sort();
        for (_, k) in &due {
            self.at.remove(k);
        }
        due.into_iter().map(|(_, k)| k).collect()
    }

    /// Number of timers set.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// True when no timer is set.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum T {
        Retry(u32),
        Linger,
    }

    #[test]
    fn the_earliest_timer_is_the_timeout_and_fires_first() {
        let s = Duration::from_secs;
        let mut t = Timers::default();
        assert_eq!(t.next(), None);
        t.set(T::Linger, s(30));
        t.set(T::Retry(2), s(5));
        t.set(T::Retry(1), s(5));
        assert_eq!(t.next(), Some(s(5)));
        t.set_earliest(T::Linger, s(40));
        assert_eq!(t.get(T::Linger), Some(s(30)));
        t.set_earliest(T::Linger, s(20));
        assert_eq!(t.get(T::Linger), Some(s(20)));
        assert!(t.expired(s(4)).is_empty());
        assert_eq!(t.expired(s(5)), vec![T::Retry(1), T::Retry(2)]);
        assert_eq!(t.next(), Some(s(20)));
        t.clear(T::Linger);
        assert!(t.is_empty());
    }
}
