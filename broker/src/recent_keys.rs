//! The idempotency keys of an app's recent publishes to channels without history, as this node
//! saw them: a publish whose key this node took within the window is a repeat, answered as the
//! first one was and not delivered again.
//!
//! A key is claimed by a request before anything of it goes out, and stays *in progress* until
//! the request is answered: confirmed, it marks a publish that went out (a later claim is a
//! repeat); dropped unconfirmed (the publish was refused, or never finished), it is given back
//! (a retry is no repeat). A claim of a key in progress is told so, rather than answered as a
//! repeat of a publish that may yet be refused.
//!
//! This is what one node can honestly promise: the window is per node, so a repeat sent to
//! another node is delivered again. (History channels do better: their window lives in the
//! cluster's replicated state, see `chorus_cluster::history_batch`.) At most [`MAX_KEYS`] keys
//! per app are kept, the oldest forgotten first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The most keys one app's window holds on a node.
pub const MAX_KEYS: usize = 100_000;

/// One app's recent keys on this node.
#[derive(Default)]
pub struct RecentKeys(Arc<Mutex<Window>>);

/// What a claim of a key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Not seen within the window: claimed, in progress.
    Fresh,
    /// A publish with this key went out within the window.
    Repeat,
    /// Another request holds this key and has not been answered yet.
    InProgress,
}

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyState {
    InProgress,
    Published,
}

#[derive(Default)]
struct Window {
    /// Each key, when it was claimed and where it stands.
    taken: HashMap<String, (Instant, KeyState)>,
    /// The keys in the order they were claimed (a key given back stays here until its turn
    /// comes, then is skipped).
    order: VecDeque<(Instant, String)>,
}

/// The keys one request claimed: given back when dropped, unless [`Claims::confirm`]ed.
pub struct Claims {
    window: Arc<Mutex<Window>>,
    keys: Vec<(String, Instant)>,
}

impl RecentKeys {
    /// An empty set of claims, for one request.
    pub fn claims(&self) -> Claims {
        Claims {
            window: self.0.clone(),
            keys: Vec::new(),
        }
    }
}

impl Claims {
    /// Claims `key` for this request, unless a publish took it within `window` or holds it (this
    /// request's own earlier claim of it included: a repeat).
    pub fn claim(&mut self, key: &str, window: Duration) -> Claim {
        if self.keys.iter().any(|(claimed, _)| claimed == key) {
            // An earlier event of the same request: it publishes this one.
            return Claim::Repeat;
        }
        let now = Instant::now();
        let mut w = self.window.lock();
        w.forget_older_than(now, window);
        match w.taken.get(key) {
            Some((_, KeyState::Published)) => return Claim::Repeat,
            Some((_, KeyState::InProgress)) => return Claim::InProgress,
            None => {}
        }
        w.taken.insert(key.to_owned(), (now, KeyState::InProgress));
        w.order.push_back((now, key.to_owned()));
        while w.taken.len() > MAX_KEYS {
            w.forget_oldest();
        }
        self.keys.push((key.to_owned(), now));
        Claim::Fresh
    }

    /// The request's publish went out: its keys now mark repeats.
    pub fn confirm(mut self) {
        let mut w = self.window.lock();
        for (key, at) in self.keys.drain(..) {
            if let Some(taken) = w.taken.get_mut(&key).filter(|(when, _)| *when == at) {
                taken.1 = KeyState::Published;
            }
        }
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut w = self.window.lock();
        for (key, at) in self.keys.drain(..) {
            if w.taken.get(&key).is_some_and(|(when, _)| *when == at) {
                w.taken.remove(&key);
            }
        }
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
            if self.taken.get(&key).is_some_and(|(when, _)| *when == at) {
                self.taken.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(300);

    #[test]
    fn a_key_is_in_progress_until_confirmed_then_a_repeat_within_its_window() {
        let keys = RecentKeys::default();
        let mut first = keys.claims();
        assert_eq!(first.claim("a", LONG), Claim::Fresh);
        assert_eq!(
            first.claim("a", LONG),
            Claim::Repeat,
            "twice in one request"
        );
        assert_eq!(keys.claims().claim("a", LONG), Claim::InProgress);
        first.confirm();
        assert_eq!(keys.claims().claim("a", LONG), Claim::Repeat);
        let mut none = keys.claims();
        assert_eq!(none.claim("b", Duration::ZERO), Claim::Fresh);
        none.confirm();
        assert_eq!(
            keys.claims().claim("b", Duration::ZERO),
            Claim::Fresh,
            "a window of nothing"
        );
    }

    #[test]
    fn claims_dropped_unconfirmed_are_given_back() {
        let keys = RecentKeys::default();
        let mut refused = keys.claims();
        assert_eq!(refused.claim("a", LONG), Claim::Fresh);
        assert_eq!(refused.claim("b", LONG), Claim::Fresh);
        drop(refused);
        let mut retry = keys.claims();
        assert_eq!(
            retry.claim("a", LONG),
            Claim::Fresh,
            "given back: no repeat"
        );
        retry.confirm();
        assert_eq!(keys.claims().claim("a", LONG), Claim::Repeat);
        assert_eq!(keys.claims().claim("b", LONG), Claim::Fresh);
    }

    #[test]
    fn the_oldest_keys_go_first_past_the_bound() {
        let keys = RecentKeys::default();
        for n in 0..=MAX_KEYS {
            let mut claims = keys.claims();
            assert_eq!(claims.claim(&n.to_string(), LONG), Claim::Fresh);
            claims.confirm();
        }
        assert_eq!(keys.0.lock().taken.len(), MAX_KEYS);
        assert_eq!(keys.claims().claim("0", LONG), Claim::Fresh, "forgotten");
        assert_eq!(
            keys.claims().claim(&MAX_KEYS.to_string(), LONG),
            Claim::Repeat
        );
    }
}
