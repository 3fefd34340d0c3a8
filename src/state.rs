//! Keyed state of stateful stages (correlate's windows, ml-score's baselines), per input
//! partition, with what a checkpoint needs: which keys changed since the last one, the input
//! offset the state includes, and per-offset results remembered until committed so a
//! replayed record gets the result it got the first time.
//!
//! [`TrackedMap`] is the map with change tracking; [`Checkpointed`] is what a partition's
//! state tells the checkpoint store (`stage::checkpoint`) and the stage shell
//! (`stage::partitioned`).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A string-keyed map that remembers which keys changed or went since the last
/// [`TrackedMap::take_changes`].
#[derive(Debug, Clone)]
pub struct TrackedMap<V> {
    entries: HashMap<String, V, crate::FastHasher>,
    dirty: HashSet<String, crate::FastHasher>,
    removed: HashSet<String, crate::FastHasher>,
    /// Whether changes are noted at all: not for a checkpoint store that keeps nothing
    /// (`memory`), where a copy of the key and a set insert per change bought nothing.
    tracking: bool,
}

impl<V> Default for TrackedMap<V> {
    fn default() -> Self {
        Self { entries: HashMap::default(), dirty: HashSet::default(), removed: HashSet::default(), tracking: true }
    }
}

impl<V: Default> TrackedMap<V> {
    /// The entry for `key`, created empty if absent, marked changed. The key is allocated
    /// only for a new entry or the first change since the last checkpoint.
    pub fn entry_mut(&mut self, key: &str) -> &mut V {
        self.entry_mut_created(key).0
    }

    /// As [`Self::entry_mut`], and whether this call created the entry.
    pub fn entry_mut_created(&mut self, key: &str) -> (&mut V, bool) {
        let created = !self.entries.contains_key(key);
        if created {
            if self.tracking {
                self.removed.remove(key);
            }
            self.entries.insert(key.to_string(), V::default());
        }
        if self.tracking && !self.dirty.contains(key) {
            self.dirty.insert(key.to_string());
        }
        let Some(value) = self.entries.get_mut(key) else { unreachable!("inserted above") };
        (value, created)
    }
}

impl<V> TrackedMap<V> {
    pub fn from_entries(entries: impl IntoIterator<Item = (String, V)>) -> Self {
        Self { entries: entries.into_iter().collect(), ..Self::default() }
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.entries.iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values()
    }

    pub fn remove(&mut self, key: &str) {
        if self.entries.remove(key).is_some() && self.tracking {
            self.dirty.remove(key);
            self.removed.insert(key.to_string());
        }
    }

    /// Removes the `count` entries with the smallest `age` (least recently used first).
    pub fn evict_oldest(&mut self, count: usize, age: impl Fn(&V) -> i64) -> usize {
        let mut by_age: Vec<(i64, String)> = self.entries.iter().map(|(k, v)| (age(v), k.clone())).collect();
        let count = count.min(by_age.len());
        if count == 0 {
            return 0;
        }
        by_age.select_nth_unstable(count - 1);
        for (_, key) in by_age.into_iter().take(count) {
            self.remove(&key);
        }
        count
    }

    /// Keys changed and keys removed since the last call; clears both. If writing them
    /// fails, hand them back with [`Self::requeue`].
    pub fn take_changes(&mut self) -> (Vec<String>, Vec<String>) {
        let dirty = std::mem::take(&mut self.dirty).into_iter().filter(|k| self.entries.contains_key(k)).collect();
        let removed = std::mem::take(&mut self.removed).into_iter().collect();
        (dirty, removed)
    }

    /// Changes whose checkpoint write failed: written with the next one.
    pub fn requeue(&mut self, dirty: Vec<String>, removed: Vec<String>) {
        if !self.tracking {
            return;
        }
        for key in removed {
            if !self.entries.contains_key(&key) {
                self.removed.insert(key);
            }
        }
        self.dirty.extend(dirty.into_iter().filter(|k| self.entries.contains_key(k)));
    }

    /// Marks every entry changed (for a full checkpoint).
    pub fn mark_all_changed(&mut self) {
        if self.tracking {
            self.dirty = self.entries.keys().cloned().collect();
        }
    }

    /// Notes changes from now on (`true`, the default) or not (and forgets those noted):
    /// off for a state whose checkpoint store keeps nothing.
    pub fn set_tracking(&mut self, tracking: bool) {
        self.tracking = tracking;
        if !tracking {
            self.dirty = HashSet::default();
            self.removed = HashSet::default();
        }
    }
}

/// Results remembered per input offset until that offset is committed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct RecentResults<R> {
    by_offset: BTreeMap<i64, R>,
}

impl<R: Clone> RecentResults<R> {
    pub fn remember(&mut self, offset: i64, result: R) {
        self.by_offset.insert(offset, result);
    }

    pub fn recall(&self, offset: i64) -> Option<R> {
        self.by_offset.get(&offset).cloned()
    }

    /// Offsets below `offset` were committed: they are never replayed to this state again.
    pub fn forget_before(&mut self, offset: i64) {
        self.by_offset = self.by_offset.split_off(&offset);
    }
}

/// One partition's state as a checkpoint sees it: metadata (including the applied offset)
/// and keyed entries.
pub trait Checkpointed: Default + Send + 'static {
    type Meta: Serialize + DeserializeOwned;
    type Entry: Serialize + DeserializeOwned + Default;
    /// Layout version; a checkpoint of another version is not restored.
    const VERSION: u32;
    fn meta(&self) -> Self::Meta;
    fn meta_version(meta: &Self::Meta) -> u32;
    fn applied_offset(&self) -> Option<i64>;
    fn entries(&self) -> &TrackedMap<Self::Entry>;
    fn entries_mut(&mut self) -> &mut TrackedMap<Self::Entry>;
    fn restore(meta: Self::Meta, entries: TrackedMap<Self::Entry>) -> Self;
    /// Offsets below `offset` were committed (drop what was remembered for replays).
    fn committed_before(&mut self, offset: i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_noted_only_while_tracking() {
        let mut map: TrackedMap<u32> = TrackedMap::default();
        *map.entry_mut("a") = 1;
        *map.entry_mut("b") = 2;
        map.remove("b");
        assert_eq!(map.take_changes(), (vec!["a".to_string()], vec!["b".to_string()]));
        assert_eq!(map.take_changes(), (vec![], vec![]), "taken once");

        *map.entry_mut("c") = 3;
        map.set_tracking(false);
        *map.entry_mut("a") += 1;
        map.remove("c");
        map.mark_all_changed();
        map.requeue(vec!["a".into()], vec!["c".into()]);
        assert_eq!(map.take_changes(), (vec![], vec![]), "nothing noted, and what was noted before is forgotten");
        assert_eq!((map.get("a"), map.get("c"), map.len()), (Some(&2), None, 1), "the entries themselves change as ever");

        map.set_tracking(true);
        *map.entry_mut("d") = 4;
        assert_eq!(map.take_changes(), (vec!["d".to_string()], vec![]));
    }
}
