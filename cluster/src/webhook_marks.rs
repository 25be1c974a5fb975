//! How far each webhook has been sent of what the cluster committed: the delivered-up-to marks.
//!
//! Every node queues the webhooks that committed changes call for (channels occupied and
//! vacated, users joining and leaving presence channels), each at the position of its change in
//! the log; only the leader sends them. Once its receiver has them, the leader proposes the new
//! mark of that webhook ([`crate::Request::WebhooksSent`]); every node then drops what it queued
//! up to the mark, so a new leader resumes where the old one stopped. The marks live in the
//! replicated state, so a node that installs a snapshot learns them too. A mark only moves
//! forward: an older one proposed late changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a queued webhook stands among the committed changes: the log index of the entry that
/// made its change and the change's place among that entry's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WebhookMark {
    pub index: u64,
    pub seq: u32,
}

/// A webhook of an app, by its URL (its place in the configuration may change between runs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WebhookTarget {
    pub app: String,
    pub url: String,
}

/// Each webhook's mark: everything at or before it is sent, or dropped for good.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookMarks {
    #[serde(with = "crate::state::as_pairs")]
    sent: BTreeMap<WebhookTarget, WebhookMark>,
}

impl WebhookMarks {
    /// Moves `target`'s mark to `through` if that is further; says whether it moved.
    pub fn advance(&mut self, target: &WebhookTarget, through: WebhookMark) -> bool {
        match self.sent.get_mut(target) {
            Some(mark) if *mark >= through => false,
            Some(mark) => {
                *mark = through;
                true
            }
            None => {
                self.sent.insert(target.clone(), through);
                true
            }
        }
    }

    /// The mark of `target`, if it ever had one.
    pub fn of(&self, target: &WebhookTarget) -> Option<WebhookMark> {
        self.sent.get(target).copied()
    }

    /// The marks of `later` that are further than these: what a node that skips from this
    /// state to `later` (installing a snapshot) must catch up on.
    pub fn advanced_in(&self, later: &WebhookMarks) -> Vec<(WebhookTarget, WebhookMark)> {
        later
            .sent
            .iter()
            .filter(|(target, mark)| self.of(target).is_none_or(|held| held < **mark))
            .map(|(target, mark)| (target.clone(), *mark))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> WebhookTarget {
        WebhookTarget {
            app: "1".into(),
            url: url.into(),
        }
    }

    fn mark(index: u64, seq: u32) -> WebhookMark {
        WebhookMark { index, seq }
    }

    #[test]
    fn a_mark_only_moves_forward() {
        let mut marks = WebhookMarks::default();
        assert!(marks.advance(&target("a"), mark(5, 1)));
        assert!(!marks.advance(&target("a"), mark(5, 0)), "older");
        assert!(!marks.advance(&target("a"), mark(5, 1)), "the same");
        assert!(marks.advance(&target("a"), mark(6, 0)));
        assert_eq!(marks.of(&target("a")), Some(mark(6, 0)));
        assert_eq!(marks.of(&target("b")), None);
    }

    #[test]
    fn a_snapshot_tells_the_marks_that_moved_and_survives_json() {
        let mut before = WebhookMarks::default();
        before.advance(&target("a"), mark(3, 0));
        before.advance(&target("b"), mark(9, 0));
        let mut after = before.clone();
        after.advance(&target("a"), mark(7, 2));
        after.advance(&target("c"), mark(1, 0));
        assert_eq!(
            before.advanced_in(&after),
            [(target("a"), mark(7, 2)), (target("c"), mark(1, 0))]
        );
        let json = serde_json::to_string(&after).unwrap();
        assert_eq!(serde_json::from_str::<WebhookMarks>(&json).unwrap(), after);
    }
}
