//! `InflightSet<T>`: the work an actor (a block actor or a stage) has started and not finished,
//! kept outside the actor instance so a restarted instance re-issues it. Each entry has an id,
//! the item, and the task running it (aborted when the item is re-issued or given up).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::task::AbortHandle;

/// One item in flight.
pub struct Inflight<T> {
    pub id: u64,
    pub item: T,
    /// The task running it, if it runs as its own task.
    pub task: Option<AbortHandle>,
}

/// Items in flight, in the order they were added.
pub struct InflightSet<T> {
    entries: Mutex<Vec<Inflight<T>>>,
    next: AtomicU64,
}

impl<T> Default for InflightSet<T> {
    fn default() -> Self {
        InflightSet {
            entries: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        }
    }
}

impl<T> InflightSet<T> {
    /// The entries (a poisoned lock is recovered: entries are only ever added or removed whole).
    pub fn lock(&self) -> MutexGuard<'_, Vec<Inflight<T>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Records `item`; returns its id.
    pub fn add(&self, item: T) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().push(Inflight {
            id,
            item,
            task: None,
        });
        id
    }
    /// Forgets item `id` (it finished).
    pub fn remove(&self, id: u64) {
        self.lock().retain(|e| e.id != id);
    }
    /// Records the task running item `id` (ignored when the item already finished).
    pub fn set_task(&self, id: u64, task: AbortHandle) {
        if let Some(e) = self.lock().iter_mut().find(|e| e.id == id) {
            e.task = Some(task);
        }
    }
    /// Removes every entry (the owner gives up on them; the caller answers them). Their tasks are
    /// aborted.
    pub fn drain(&self) -> Vec<T> {
        std::mem::take(&mut *self.lock())
            .into_iter()
            .map(|e| {
                if let Some(t) = e.task {
                    t.abort();
                }
                e.item
            })
            .collect()
    }
    pub fn len(&self) -> usize {
        self.lock().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Clone> InflightSet<T> {
    /// The entries `pick` selects (it may update them, e.g. stamp the new owner), for re-issue by
    /// a new instance: their old tasks are aborted, and they stay in the set under the same ids.
    pub fn reissue(&self, mut pick: impl FnMut(&mut T) -> bool) -> Vec<(u64, T)> {
        let mut picked = Vec::new();
        for e in self.lock().iter_mut() {
            if pick(&mut e.item) {
                if let Some(t) = e.task.take() {
                    t.abort();
                }
                picked.push((e.id, e.item.clone()));
            }
        }
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reissue_keeps_ids_and_drain_empties() {
        let set = InflightSet::<(u32, bool)>::default();
        let a = set.add((1, false));
        let b = set.add((2, true));
        let c = set.add((3, true));
        set.remove(b);
        assert_eq!(set.len(), 2);
        // The picked entries come back as `pick` left them (e.g. stamped with the new epoch).
        let again = set.reissue(|item| std::mem::replace(&mut item.1, false));
        assert_eq!(again, vec![(c, (3, false))]);
        assert!(
            set.reissue(|item| item.1).is_empty(),
            "picked state was updated"
        );
        assert_eq!(
            set.reissue(|_| true)
                .iter()
                .map(|e| e.0)
                .collect::<Vec<_>>(),
            [a, c]
        );
        assert_eq!(set.drain(), vec![(1, false), (3, false)]);
        assert!(set.is_empty());
    }
}
