//! The key-value store: an ordered map of byte strings with optional
//! absolute expiry (Unix milliseconds). Ordered (BTreeMap) so iteration,
//! SCAN cursors and snapshots are deterministic, and no hasher needs a
//! random seed.
//!
//! Expiry is lazy (an expired key is removed when a command touches it) plus
//! a bounded periodic sweep. Removing an expired key writes no log record:
//! recovery drops keys that are expired at recovery time, and every record
//! that depends on a key's old value is only written while the key is live
//! (see `engine.rs`), so replay reaches the same state.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ops::Bound;

use crate::journal_format::set_record_len;

/// One value with its expiry (0 = none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub expire_at_ms: u64,
}

impl Entry {
    /// Whether the entry is expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expire_at_ms != 0 && self.expire_at_ms <= now_ms
    }
}

/// The store.
#[derive(Default, Debug)]
pub struct Store {
    map: BTreeMap<Vec<u8>, Entry>,
    /// Keys that carry an expiry.
    with_expiry: usize,
    /// Bytes a snapshot of every key would take in the log (see
    /// `journal_format::set_record_len`): decides whether a write fits.
    snapshot_bytes: u64,
    /// Where the periodic sweep continues.
    sweep_cursor: Vec<u8>,
    /// Keys removed because they expired (lazily or by the sweep).
    pub expired_keys: u64,
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys (including expired ones not yet removed).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of keys with an expiry.
    pub fn with_expiry(&self) -> usize {
        self.with_expiry
    }

    /// Log bytes a snapshot of the whole store would need.
    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes
    }

    /// The live entry for `key`, removing it first if it has expired.
    pub fn get(&mut self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        self.expire_if_due(key, now_ms);
        self.map.get(key)
    }

    /// Whether `key` is live, removing it if it has expired.
    pub fn contains(&mut self, key: &[u8], now_ms: u64) -> bool {
        self.get(key, now_ms).is_some()
    }

    /// The entry for `key` regardless of expiry (replay, snapshots).
    pub fn peek(&self, key: &[u8]) -> Option<&Entry> {
        self.map.get(key)
    }

    fn expire_if_due(&mut self, key: &[u8], now_ms: u64) {
        if self.map.get(key).is_some_and(|e| e.expired(now_ms)) {
            self.remove(key);
            self.expired_keys += 1;
        }
    }

    /// Inserts or replaces `key`.
    pub fn set(&mut self, key: &[u8], value: Vec<u8>, expire_at_ms: u64) {
        let new_cost = set_record_len(key.len(), value.len()) as u64;
        let entry = Entry {
            value,
            expire_at_ms,
        };
        if let Some(old) = self.map.get_mut(key) {
            self.snapshot_bytes -= set_record_len(key.len(), old.value.len()) as u64;
            if old.expire_at_ms != 0 {
                self.with_expiry -= 1;
            }
            *old = entry;
        } else {
            self.map.insert(key.to_vec(), entry);
        }
        if expire_at_ms != 0 {
            self.with_expiry += 1;
        }
        self.snapshot_bytes += new_cost;
    }

    /// Appends to the value of `key` (which must exist); returns the new length.
    pub fn append(&mut self, key: &[u8], data: &[u8]) -> usize {
        match self.map.get_mut(key) {
            Some(e) => {
                e.value.extend_from_slice(data);
                self.snapshot_bytes += data.len() as u64;
                e.value.len()
            }
            None => {
                self.set(key, data.to_vec(), 0);
                data.len()
            }
        }
    }

    /// Sets the expiry of an existing key; returns whether it exists.
    pub fn set_expiry(&mut self, key: &[u8], expire_at_ms: u64) -> bool {
        match self.map.get_mut(key) {
            Some(e) => {
                if e.expire_at_ms != 0 {
                    self.with_expiry -= 1;
                }
                if expire_at_ms != 0 {
                    self.with_expiry += 1;
                }
                e.expire_at_ms = expire_at_ms;
                true
            }
            None => false,
        }
    }

    /// Removes `key`; returns whether it existed.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        match self.map.remove(key) {
            Some(old) => {
                self.snapshot_bytes -= set_record_len(key.len(), old.value.len()) as u64;
                if old.expire_at_ms != 0 {
                    self.with_expiry -= 1;
                }
                true
            }
            None => false,
        }
    }

    /// Removes every key.
    pub fn clear(&mut self) {
        self.map.clear();
        self.with_expiry = 0;
        self.snapshot_bytes = 0;
        self.sweep_cursor.clear();
    }

    /// Entries with keys strictly after `after` (or from the start), in order.
    pub fn range_after<'a>(
        &'a self,
        after: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Entry)> + 'a {
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        self.map.range::<[u8], _>((lower, Bound::Unbounded))
    }

    /// Every entry in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Entry)> {
        self.map.iter()
    }

    /// Examines up to `budget` keys from where the last sweep stopped and
    /// removes the expired ones; returns how many it removed.
    pub fn sweep(&mut self, now_ms: u64, budget: usize) -> usize {
        if self.with_expiry == 0 {
            return 0;
        }
        let mut dead: Vec<Vec<u8>> = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        let mut seen = 0;
        let start = core::mem::take(&mut self.sweep_cursor);
        let lower = if start.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(&start[..])
        };
        for (k, e) in self.map.range::<[u8], _>((lower, Bound::Unbounded)) {
            if seen == budget {
                break;
            }
            seen += 1;
            if e.expired(now_ms) {
                dead.push(k.clone());
            }
            last = Some(k.clone());
        }
        // A short pass reached the end: start over next time.
        self.sweep_cursor = if seen < budget {
            Vec::new()
        } else {
            last.unwrap_or_default()
        };
        for k in &dead {
            self.remove(k);
        }
        self.expired_keys += dead.len() as u64;
        dead.len()
    }

    /// Removes every key expired at `now_ms` (recovery); returns how many.
    pub fn drop_expired(&mut self, now_ms: u64) -> usize {
        let dead: Vec<Vec<u8>> = self
            .map
            .iter()
            .filter(|(_, e)| e.expired(now_ms))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dead {
            self.remove(k);
        }
        dead.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn lazy_expiry_and_accounting() {
        let mut s = Store::new();
        s.set(b"a", b"1".to_vec(), 0);
        s.set(b"b", b"22".to_vec(), 100);
        assert_eq!(s.with_expiry(), 1);
        let cost = s.snapshot_bytes();
        assert_eq!(
            cost,
            (set_record_len(1, 1) + set_record_len(1, 2)) as u64,
            "snapshot cost tracks both keys"
        );
        assert!(s.get(b"b", 99).is_some());
        assert!(s.get(b"b", 100).is_none(), "expires at its deadline");
        assert_eq!(s.expired_keys, 1);
        assert_eq!(s.len(), 1);
        assert_eq!(s.with_expiry(), 0);
        assert_eq!(s.append(b"a", b"xyz"), 4);
        assert_eq!(s.snapshot_bytes(), set_record_len(1, 4) as u64);
        assert!(s.remove(b"a"));
        assert_eq!(s.snapshot_bytes(), 0);
    }

    #[test]
    fn sweep_is_bounded_and_wraps() {
        let mut s = Store::new();
        for i in 0..1000u32 {
            let k = vec![(i >> 8) as u8, i as u8];
            s.set(&k, vec![1], if i % 2 == 0 { 10 } else { 0 });
        }
        let mut removed = 0;
        for _ in 0..10 {
            let r = s.sweep(20, 128);
            assert!(r <= 128);
            removed += r;
        }
        assert_eq!(removed, 500);
        assert_eq!(s.len(), 500);
        assert_eq!(s.with_expiry(), 0);
        assert_eq!(s.sweep(20, 128), 0);
    }

    #[test]
    fn range_after_is_exclusive() {
        let mut s = Store::new();
        for k in [b"a", b"b", b"c"] {
            s.set(k, vec![], 0);
        }
        let ks: Vec<_> = s.range_after(Some(b"a")).map(|(k, _)| k.clone()).collect();
        assert_eq!(ks, vec![b"b".to_vec(), b"c".to_vec()]);
    }
}
