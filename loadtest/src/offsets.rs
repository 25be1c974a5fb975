//! Exact accounting of one history subscriber: the offsets it must see (every one after the offset
//! its first subscription was confirmed at, up to the channel's last), the ones it saw, and the
//! resubscriptions in between.
//!
//! A subscriber that comes back asks for everything after the highest offset it saw. A recovered
//! resubscription must continue exactly there; a refused one (`recovered: false`) jumps to the
//! offset the server confirmed, and what it skipped stays missing: lost. Offsets are numbered
//! 1, 2, 3, ... per channel; the bookkeeping is [`crate::sequence::Tracker`] on one stream, with
//! offset `base + 1` as sequence number 0.

use crate::sequence::{Arrival, Tracker};

/// How one event's offset fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next offset.
    Next,
    /// Past one or more offsets never seen: a gap.
    AfterGap,
    /// An offset missed earlier, arriving late.
    Late,
    /// An offset already seen, or one at or before the first confirmed offset.
    Duplicate,
    /// From another epoch than the subscriber's: not counted as a delivery.
    OtherEpoch,
}

/// One subscriber's view of its channel.
#[derive(Debug, Clone)]
pub struct OffsetTracker {
    /// The epoch the subscriber follows (`None` until the channel was ever written).
    epoch: Option<String>,
    /// The channel's offset when the subscriber first subscribed: it expects every offset after it.
    base: u64,
    /// The highest offset seen, or the offset a refused resubscription restarted from.
    last: u64,
    tracker: Tracker,
    /// Times an offset was skipped (by the server, or by a refused recovery).
    pub gaps: u64,
    pub other_epoch: u64,
    /// Offsets at or before `base` (never expected).
    pub before_base: u64,
}

impl OffsetTracker {
    /// The tracker of a subscriber whose first subscription was confirmed at `offset` of `epoch`.
    pub fn new(epoch: Option<String>, offset: u64) -> OffsetTracker {
        OffsetTracker {
            epoch,
            base: offset,
            last: offset,
            tracker: Tracker::default(),
            gaps: 0,
            other_epoch: 0,
            before_base: 0,
        }
    }

    /// What to put in the `since` of a resubscription: the epoch and the highest offset seen.
    /// `None` while the epoch is not known (the channel was empty and no event came yet).
    pub fn since(&self) -> Option<(&str, u64)> {
        self.epoch.as_deref().map(|e| (e, self.last))
    }

    /// The highest offset seen (or restarted from).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Records a delivered event.
    pub fn observe(&mut self, epoch: Option<&str>, offset: u64) -> Seen {
        match (&self.epoch, epoch) {
            (Some(mine), Some(theirs)) if mine != theirs => {
                self.other_epoch += 1;
                return Seen::OtherEpoch;
            }
            (None, Some(theirs)) => self.epoch = Some(theirs.to_owned()),
            _ => {}
        }
        if offset <= self.base {
            self.before_base += 1;
            return Seen::Duplicate;
        }
        let gap = offset > self.last + 1;
        let arrival = self.tracker.observe(0, offset - self.base - 1);
        match arrival {
            Arrival::Duplicate => Seen::Duplicate,
            Arrival::Late => Seen::Late,
            Arrival::InOrder => {
                self.last = offset;
                if gap {
                    self.gaps += 1;
                    Seen::AfterGap
                } else {
                    Seen::Next
                }
            }
        }
    }

    /// Records a resubscription's confirmation. A refused recovery restarts from the confirmed
    /// offset: what lay between is skipped (a gap, counted lost unless it arrives anyway).
    pub fn resubscribed(&mut self, recovered: bool, epoch: Option<&str>, offset: Option<u64>) {
        if recovered {
            return;
        }
        if let Some(e) = epoch {
            if self.epoch.as_deref() != Some(e) && self.epoch.is_some() {
                self.other_epoch += 1;
                return;
            }
            self.epoch = Some(e.to_owned());
        }
        if let Some(offset) = offset.filter(|&o| o > self.last) {
            self.gaps += 1;
            self.last = offset;
        }
    }

    /// Offsets this subscriber had to see when the channel's last offset is `last_offset`.
    pub fn expected(&self, last_offset: u64) -> u64 {
        last_offset.saturating_sub(self.base)
    }

    /// Distinct expected offsets seen.
    pub fn delivered(&self) -> u64 {
        self.tracker.unique
    }

    pub fn duplicates(&self) -> u64 {
        self.tracker.duplicates + self.before_base
    }

    pub fn out_of_order(&self) -> u64 {
        self.tracker.out_of_order
    }

    /// Expected offsets never seen, up to `last_offset`.
    pub fn lost(&self, last_offset: u64) -> u64 {
        self.tracker.lost(&[self.expected(last_offset)], &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_run_with_a_recovered_resubscription() {
        let mut t = OffsetTracker::new(Some("e".into()), 10);
        assert_eq!(t.observe(Some("e"), 11), Seen::Next);
        assert_eq!(t.observe(Some("e"), 12), Seen::Next);
        assert_eq!(t.since(), Some(("e", 12)));
        // Reconnects; the replay continues exactly after 12.
        t.resubscribed(true, Some("e"), Some(15));
        for o in 13..=20 {
            assert_eq!(t.observe(Some("e"), o), Seen::Next);
        }
        assert_eq!(t.expected(20), 10);
        assert_eq!(t.delivered(), 10);
        assert_eq!((t.lost(20), t.duplicates(), t.gaps), (0, 0, 0));
        // Events published but not received yet count as lost.
        assert_eq!(t.lost(23), 3);
    }

    #[test]
    fn gaps_duplicates_and_late_offsets() {
        let mut t = OffsetTracker::new(Some("e".into()), 0);
        for o in [1, 2, 5, 5, 3, 2, 6] {
            t.observe(Some("e"), o);
        }
        // Saw 1 2 3 5 6; 5 and 2 twice; 3 late; one gap (2 -> 5).
        assert_eq!(t.delivered(), 5);
        assert_eq!(t.duplicates(), 2);
        assert_eq!(t.out_of_order(), 1);
        assert_eq!(t.gaps, 1);
        assert_eq!(t.lost(6), 1);
        assert_eq!(t.since(), Some(("e", 6)));
    }

    #[test]
    fn a_refused_recovery_skips_to_the_confirmed_offset() {
        let mut t = OffsetTracker::new(Some("e".into()), 0);
        t.observe(Some("e"), 1);
        t.observe(Some("e"), 2);
        t.resubscribed(false, Some("e"), Some(7));
        assert_eq!(t.since(), Some(("e", 7)));
        assert_eq!(t.observe(Some("e"), 8), Seen::Next);
        assert_eq!(t.gaps, 1);
        // 3..=7 were never delivered.
        assert_eq!(t.lost(8), 5);
        assert_eq!(t.delivered(), 3);
    }

    #[test]
    fn offsets_before_the_first_subscription_and_other_epochs() {
        let mut t = OffsetTracker::new(None, 4);
        assert_eq!(t.since(), None);
        assert_eq!(t.observe(Some("e"), 4), Seen::Duplicate);
        assert_eq!(t.since(), Some(("e", 4)));
        assert_eq!(t.observe(Some("f"), 5), Seen::OtherEpoch);
        assert_eq!(t.observe(Some("e"), 5), Seen::Next);
        assert_eq!((t.duplicates(), t.other_epoch, t.delivered()), (1, 1, 1));
    }
}
