//! Which waiting webhook events go in the next request: the oldest first, except that a
//! `channel_vacated` waits out the vacate delay, and a channel occupied again within it sends
//! neither event (as Pusher does: a page reload is not an empty channel). Only the channel that
//! waits is held back: its later events stay behind its vacate, so each channel's events still
//! go in the order they were committed, while other channels' go on.
//!
//! [`plan`] is a pure function of what waits and the time, so it is tested here on its own.

use std::collections::HashSet;

use super::event::WebhookKind;

/// What the planner needs to know of one waiting event.
#[derive(Debug, Clone)]
pub struct Waiting<'a> {
    pub kind: WebhookKind,
    pub channel: &'a str,
    /// When it was queued, in ms since the Unix epoch.
    pub queued_ms: u64,
}

/// What to do with the waiting events, by their place in the list given.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// To send now, in order.
    pub send: Vec<usize>,
    /// Pairs of a vacate and the occupation that followed it within the delay: never sent.
    pub cancel: Vec<usize>,
    /// When the first vacate held back is due, if any: look again then.
    pub due_ms: Option<u64>,
}

/// Plans the next request of at most `limit` events out of `waiting` (oldest first) at `now_ms`.
pub fn plan(waiting: &[Waiting<'_>], now_ms: u64, vacate_delay_ms: u64, limit: usize) -> Plan {
    let mut plan = Plan::default();
    let mut held: HashSet<&str> = HashSet::new();
    let mut cancelled: HashSet<usize> = HashSet::new();
    for (i, event) in waiting.iter().enumerate() {
        if plan.send.len() >= limit {
            break;
        }
        if cancelled.contains(&i) || held.contains(event.channel) {
            continue;
        }
        if event.kind == WebhookKind::ChannelVacated {
            let due = event.queued_ms.saturating_add(vacate_delay_ms);
            if let Some(j) = occupied_again(waiting, i, due, &cancelled) {
                cancelled.extend([i, j]);
                continue;
            }
            if now_ms < due {
                held.insert(event.channel);
                plan.due_ms = Some(plan.due_ms.map_or(due, |d| d.min(due)));
                continue;
            }
        }
        plan.send.push(i);
    }
    plan.cancel = cancelled.into_iter().collect();
    plan.cancel.sort_unstable();
    plan
}

/// The `channel_occupied` of the channel vacated at `vacated` that was queued before `due`, if
/// one waits after it.
fn occupied_again(
    waiting: &[Waiting<'_>],
    vacated: usize,
    due: u64,
    cancelled: &HashSet<usize>,
) -> Option<usize> {
    let channel = waiting[vacated].channel;
    waiting
        .iter()
        .enumerate()
        .skip(vacated + 1)
        .take_while(|(_, e)| e.queued_ms < due)
        .find(|(j, e)| {
            e.kind == WebhookKind::ChannelOccupied && e.channel == channel && !cancelled.contains(j)
        })
        .map(|(j, _)| j)
}

#[cfg(test)]
mod tests {
    use super::*;
    use WebhookKind::*;

    fn at(kind: WebhookKind, channel: &str, queued_ms: u64) -> Waiting<'_> {
        Waiting {
            kind,
            channel,
            queued_ms,
        }
    }

    #[test]
    fn events_go_oldest_first_up_to_the_limit() {
        let waiting = [
            at(ChannelOccupied, "a", 1),
            at(MemberAdded, "a", 2),
            at(ClientEvent, "b", 3),
        ];
        assert_eq!(plan(&waiting, 10, 3000, 2).send, [0, 1]);
        assert_eq!(plan(&waiting, 10, 3000, 20).send, [0, 1, 2]);
    }

    #[test]
    fn a_vacate_waits_out_its_delay_holding_back_only_its_channel() {
        let waiting = [
            at(ChannelVacated, "a", 100),
            at(ChannelOccupied, "b", 200),
            at(MemberAdded, "a", 5000),
        ];
        let early = plan(&waiting, 1000, 3000, 20);
        assert_eq!(
            early.send,
            [1],
            "b goes on; a's later event stays behind its vacate"
        );
        assert_eq!(early.due_ms, Some(3100));
        assert!(early.cancel.is_empty());
        let late = plan(&waiting, 3100, 3000, 20);
        assert_eq!(late.send, [0, 1, 2]);
        assert_eq!(late.due_ms, None);
    }

    #[test]
    fn a_channel_occupied_again_within_the_delay_sends_neither() {
        let waiting = [
            at(ChannelVacated, "a", 100),
            at(ChannelOccupied, "a", 2000),
            at(MemberAdded, "a", 2001),
        ];
        let p = plan(&waiting, 2500, 3000, 20);
        assert_eq!(p.cancel, [0, 1]);
        assert_eq!(p.send, [2]);
    }

    #[test]
    fn an_occupation_after_the_delay_is_a_new_one() {
        let waiting = [at(ChannelVacated, "a", 100), at(ChannelOccupied, "a", 3100)];
        let p = plan(&waiting, 4000, 3000, 20);
        assert!(p.cancel.is_empty());
        assert_eq!(p.send, [0, 1]);
        let no_delay = [at(ChannelVacated, "a", 100), at(ChannelOccupied, "a", 100)];
        assert_eq!(plan(&no_delay, 100, 0, 20).send, [0, 1]);
    }

    #[test]
    fn flapping_cancels_pair_by_pair() {
        let waiting = [
            at(ChannelVacated, "a", 100),
            at(ChannelOccupied, "a", 200),
            at(ChannelVacated, "a", 300),
            at(ChannelOccupied, "a", 400),
            at(ChannelVacated, "a", 500),
        ];
        let p = plan(&waiting, 600, 3000, 20);
        assert_eq!(p.cancel, [0, 1, 2, 3]);
        assert!(p.send.is_empty(), "the last vacate still waits");
        assert_eq!(p.due_ms, Some(3500));
    }
}
