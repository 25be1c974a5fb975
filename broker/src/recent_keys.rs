//! The idempotency keys of an app's recent publishes to channels without history, as this node
//! saw them: a publish whose key this node took within the window is a repeat, answered as the
//! first one was and not delivered again.
//!
//! This is what one node can honestly promise: the window is per node, so a repeat sent to
//! another node is delivered again. (History channels do better: their window lives in the
//! cluster's replicated state, see `chorus_cluster::history_batch`.) At most [`MAX_KEYS`] keys
//! per app are kept, the oldest forgotten first.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The most keys one app's window holds on a node.
pub const MAX_KEYS: usize = 100_000;

/// One app's recent keys on this node.
#[derive(Default)]
pub struct RecentKeys(Mutex<Window>);

#[derive(Default)]
struct Window {
    /// Each key and when it was taken.
    taken: HashMap<String, Instant>,
    /// The keys in the order they were taken (a key given back stays here until its turn comes,
    /// then is skipped).
    order: VecDeque<(Instant, String)>,
}

impl RecentKeys {
    /// Takes `key` for a publish: `false` when it was taken within `window` (a repeat).
    pub fn take(&self, key: &str, window: Duration) -> bool {
        let now = Instant::now();
        let mut w = self.0.lock();
        w.forget_older_than(now, window);
        if w.taken.contains_key(key) {
            return false;
        }
        w.taken.insert(key.to_owned(), now);
        w.order.push_back((now, key.to_owned()));
        while w.taken.len() > MAX_KEYS {
            w.forget_oldest();
        }
        true
    }

    /// Gives back a key whose publish was refused: a retry is then no repeat.
    pub fn give_back(&self, key: &str) {
        self.0.lock().taken.remove(key);
    }
}

impl Window {
    fn forget_older_than(&mut self, now: Instant, window: Duration) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < window {
                break;
            }
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((at, key)) = self.order.pop_front() {
            if self.taken.get(&key) == Some(&at) {
                self.taken.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_a_repeat_within_its_window_and_not_once_given_back_or_past_it() {
        let keys = RecentKeys::default();
        let long = Duration::from_secs(300);
        assert!(keys.take("a", long));
        assert!(!keys.take("a", long), "a repeat");
        keys.give_back("a");
        assert!(keys.take("a", long), "given back: no repeat");
        assert!(!keys.take("a", long), "taken again");
        let none = RecentKeys::default();
        assert!(none.take("b", Duration::ZERO), "a window of nothing");
        assert!(none.take("b", Duration::ZERO));
    }

    #[test]
    fn the_oldest_keys_go_first_past_the_bound() {
        let keys = RecentKeys::default();
        let long = Duration::from_secs(300);
        for n in 0..=MAX_KEYS {
            assert!(keys.take(&n.to_string(), long));
        }
        assert_eq!(keys.0.lock().taken.len(), MAX_KEYS);
        assert!(keys.take("0", long), "the oldest was forgotten");
        assert!(!keys.take(&MAX_KEYS.to_string(), long));
    }
}
