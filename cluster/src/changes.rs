//! What the cluster commits, as the node is told of it: each change an applied log entry made
//! to the replicated state that someone outside the cluster may act on, typed, with the index of
//! its entry.
//!
//! The changes are cluster-wide and come once per change, in log order, on every node alike:
//! history events placed, a user joining or leaving a presence channel (its first connection on
//! any node, its last anywhere), a channel occupied or vacated (its first node with local
//! subscribers, its last), a node admitted into the members or leaving them. Changes of one
//! entry share its index and are listed in the order they happened (a removed node's users leave,
//! then the channels it alone had are vacated, then it leaves). A node that installs a snapshot
//! skips entries: it is told the net changes between the state it had and the snapshot's, with
//! the snapshot's last index.
//!
//! [`apply`] applies a request and derives its changes, [`between`] derives a snapshot's.

use chorus_storage::StoredEvent;

use crate::state::{ChannelKey, ReplicatedState};
use crate::types::{Departure, NodeId, PresenceEvent, Request, Response};
use crate::webhook_marks::{WebhookMark, WebhookTarget};

/// One committed change, with the index of the log entry that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub index: u64,
    pub change: Change,
}

/// A change to the replicated state, as the node is told of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// History events, already stored in this node's history when the node is told.
    History(HistoryCommit),
    /// A user joined (`joined` is its info) or left a presence channel, cluster-wide.
    Presence(PresenceEvent),
    /// A channel got its first subscriber anywhere in the cluster.
    ChannelOccupied(ChannelKey),
    /// A channel lost its last subscriber anywhere in the cluster.
    ChannelVacated(ChannelKey),
    /// A node was admitted into the members: at first, or taken back after it was declared dead.
    NodeAdmitted { id: NodeId, addr: String },
    /// A node left the members (`why` is `None` when this node skipped the entry that said why,
    /// installing a snapshot).
    NodeLeft { id: NodeId, why: Option<Departure> },
    /// The leader's webhook `target` has everything committed up to `through`: what is queued
    /// for it up to there is no longer needed (see [`crate::webhook_marks`]).
    WebhooksSent {
        target: WebhookTarget,
        through: WebhookMark,
    },
}

/// History events committed in one log entry, as every node applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryCommit {
    pub app: String,
    pub channel: String,
    pub epoch: String,
    /// The offset of the first event; the others follow densely.
    pub first_offset: u64,
    pub events: Vec<StoredEvent>,
    /// The socket id of the connection the publisher asked to leave out, if any.
    pub except: Option<String>,
}

/// What applying one request did.
pub(crate) struct Applied {
    /// What the proposer is answered.
    pub(crate) response: Response,
    /// The changes, in the order they happened.
    pub(crate) changes: Vec<Change>,
    /// The channels whose interest may have changed (the interest index follows them).
    pub(crate) interest_touched: Vec<ChannelKey>,
}

/// Applies `request` to `state` and says what it changed.
pub(crate) fn apply(state: &mut ReplicatedState, request: Request) -> Applied {
    let interest_touched = state.interest_touched_by(&request);
    let occupied_before: Vec<bool> = interest_touched
        .iter()
        .map(|key| state.is_occupied(key))
        .collect();
    let member_before = member_named(&request).map(|id| (id, state.admission(id)));
    let mark_before = marked_target(&request).map(|target| state.webhooks_sent().of(target));
    let response = state.apply(&request);

    let mut changes = presence_changes(&response);
    for (key, was) in interest_touched.iter().zip(occupied_before) {
        changes.extend(occupancy_change(key, was, state.is_occupied(key)));
    }
    if let Some((id, admission_before)) = member_before {
        let admission = state.admission(id);
        changes.extend(member_change(&request, id, admission_before, admission));
    }
    if let (Some(before), Request::WebhooksSent { target, through }) = (mark_before, &request) {
        if before.is_none_or(|held| held < *through) {
            changes.push(Change::WebhooksSent {
                target: target.clone(),
                through: *through,
            });
        }
    }
    changes.extend(history_commits(request, &response));
    Applied {
        response,
        changes,
        interest_touched,
    }
}

/// The history events a request placed, as commits of consecutive offsets of one channel: one
/// for a `HistoryAppend`, one per run of a `HistoryBatch` with the events its keys did not
/// make repeats.
fn history_commits(request: Request, response: &Response) -> Vec<Change> {
    match (request, response) {
        (
            Request::HistoryAppend {
                app,
                channel,
                events,
                except,
                ..
            },
            Response::HistoryAppended {
                epoch,
                first_offset,
            },
        ) => vec![Change::History(HistoryCommit {
            app,
            channel,
            epoch: epoch.clone(),
            first_offset: *first_offset,
            events,
            except,
        })],
        (
            Request::HistoryBatch { app, runs, .. },
            Response::HistoryBatchPlaced { runs: placed },
        ) => runs
            .into_iter()
            .zip(placed)
            .filter_map(|(run, placed)| {
                let mut fresh = run
                    .events
                    .into_iter()
                    .zip(placed)
                    .filter(|(_, at)| !at.repeat)
                    .peekable();
                let (epoch, first_offset) =
                    fresh.peek().map(|(_, at)| (at.epoch.clone(), at.offset))?;
                Some(Change::History(HistoryCommit {
                    app: app.clone(),
                    channel: run.channel,
                    epoch,
                    first_offset,
                    events: fresh.map(|(event, _)| event).collect(),
                    except: run.except,
                }))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The changes between `before` and `after`, as a node that skips from one to the other
/// (installing a snapshot) is told them: users that left and joined, channels occupied and
/// vacated, nodes admitted and gone. History is not among them: the skipped events are fetched
/// again ([`crate::history_repair`]), never delivered live.
pub(crate) fn between(before: &ReplicatedState, after: &ReplicatedState) -> Vec<Change> {
    let mut changes: Vec<Change> = before
        .presence_changes_to(after)
        .into_iter()
        .map(Change::Presence)
        .collect();
    let mut channels: Vec<&ChannelKey> = before
        .interest()
        .chain(after.interest())
        .map(|(key, _)| key)
        .collect();
    channels.sort_unstable();
    channels.dedup();
    for key in channels {
        changes.extend(occupancy_change(
            key,
            before.is_occupied(key),
            after.is_occupied(key),
        ));
    }
    let mut ids: Vec<NodeId> = before
        .members()
        .keys()
        .chain(after.members().keys())
        .copied()
        .collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        match (before.admission(id), after.admission(id)) {
            (was, Some(now)) if was != Some(now) => changes.push(Change::NodeAdmitted {
                id,
                addr: after.members()[&id].clone(),
            }),
            (Some(_), None) => changes.push(Change::NodeLeft { id, why: None }),
            _ => {}
        }
    }
    let marks = before.webhooks_sent().advanced_in(after.webhooks_sent());
    changes.extend(
        (marks.into_iter()).map(|(target, through)| Change::WebhooksSent { target, through }),
    );
    changes
}

/// The users that joined or left presence channels, as applying a request answered.
fn presence_changes(response: &Response) -> Vec<Change> {
    match response {
        Response::Presence { events } => events.iter().cloned().map(Change::Presence).collect(),
        Response::MemberRemoved { users_left } => users_left
            .iter()
            .map(|user| {
                Change::Presence(PresenceEvent {
                    app: user.app.clone(),
                    channel: user.channel.clone(),
                    user_id: user.user_id.clone(),
                    joined: None,
                })
            })
            .collect(),
        Response::Applied
        | Response::HistoryAppended { .. }
        | Response::HistoryBatchPlaced { .. } => Vec::new(),
    }
}

fn occupancy_change(key: &ChannelKey, was: bool, is: bool) -> Option<Change> {
    match (was, is) {
        (false, true) => Some(Change::ChannelOccupied(key.clone())),
        (true, false) => Some(Change::ChannelVacated(key.clone())),
        _ => None,
    }
}

/// The webhook whose mark a request moves.
fn marked_target(request: &Request) -> Option<&WebhookTarget> {
    match request {
        Request::WebhooksSent { target, .. } => Some(target),
        _ => None,
    }
}

/// The node a request admits or removes.
fn member_named(request: &Request) -> Option<NodeId> {
    match request {
        Request::AddMember { id, .. } | Request::RemoveMember { id, .. } => Some(*id),
        _ => None,
    }
}

/// A node admitted (its admission count changed: a new address is no admission) or gone.
fn member_change(
    request: &Request,
    id: NodeId,
    before: Option<u64>,
    after: Option<u64>,
) -> Option<Change> {
    match (request, before, after) {
        (Request::AddMember { addr, .. }, _, Some(now)) if before != Some(now) => {
            Some(Change::NodeAdmitted {
                id,
                addr: addr.clone(),
            })
        }
        (Request::RemoveMember { why, .. }, Some(_), None) => Some(Change::NodeLeft {
            id,
            why: Some(*why),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{InterestChange, PresenceChange};

    fn interest(node: NodeId, reset: bool, channels: &[(&str, bool)]) -> Request {
        Request::UpdateInterest {
            node,
            reset,
            changes: channels
                .iter()
                .map(|&(channel, present)| InterestChange {
                    app: "1".into(),
                    channel: channel.into(),
                    present,
                })
                .collect(),
        }
    }

    fn join(node: NodeId, user: &str) -> Request {
        Request::UpdatePresence {
            node,
            reset: false,
            changes: vec![PresenceChange {
                app: "1".into(),
                channel: "presence-room".into(),
                user_id: user.into(),
                user_info: Some("{}".into()),
            }],
        }
    }

    fn add(id: NodeId) -> Request {
        Request::AddMember {
            id,
            addr: format!("n{id}:6002"),
        }
    }

    /// The changes as short words: `+news` occupied, `-news` vacated, `+ann` joined, `-ann`
    /// left, `node+2` admitted, `node-2` gone, `history@4` placed at offset 4.
    fn described(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|change| match change {
                Change::History(c) => format!("history@{}", c.first_offset),
                Change::Presence(e) if e.joined.is_some() => format!("+{}", e.user_id),
                Change::Presence(e) => format!("-{}", e.user_id),
                Change::ChannelOccupied(key) => format!("+{}", key.channel),
                Change::ChannelVacated(key) => format!("-{}", key.channel),
                Change::NodeAdmitted { id, .. } => format!("node+{id}"),
                Change::NodeLeft { id, .. } => format!("node-{id}"),
                Change::WebhooksSent { through, .. } => format!("sent@{}", through.index),
            })
            .collect()
    }

    fn changes(state: &mut ReplicatedState, request: Request) -> Vec<String> {
        described(&apply(state, request).changes)
    }

    #[test]
    fn a_channel_is_occupied_by_its_first_node_and_vacated_by_its_last() {
        let mut state = ReplicatedState::default();
        assert_eq!(
            changes(&mut state, interest(1, false, &[("news", true)])),
            ["+news"]
        );
        assert!(changes(&mut state, interest(2, false, &[("news", true)])).is_empty());
        assert!(changes(&mut state, interest(1, false, &[("news", false)])).is_empty());
        assert_eq!(
            changes(&mut state, interest(2, false, &[("news", false)])),
            ["-news"]
        );
        assert!(
            changes(
                &mut state,
                interest(2, false, &[("flap", true), ("flap", false)])
            )
            .is_empty(),
            "a channel that comes and goes in one entry changed nothing"
        );

        state.apply(&interest(1, false, &[("stale", true), ("kept", true)]));
        assert_eq!(
            changes(
                &mut state,
                interest(1, true, &[("kept", true), ("fresh", true)])
            ),
            ["+fresh", "-stale"],
            "a reset vacates what the node no longer has, in channel order"
        );
    }

    #[test]
    fn a_webhook_mark_is_a_change_when_it_moves_forward_and_a_snapshot_catches_it_up() {
        let sent = |index| Request::WebhooksSent {
            target: WebhookTarget {
                app: "1".into(),
                url: "http://hook".into(),
            },
            through: WebhookMark { index, seq: 0 },
        };
        let mut state = ReplicatedState::default();
        let before = state.clone();
        assert_eq!(changes(&mut state, sent(5)), ["sent@5"]);
        assert!(changes(&mut state, sent(4)).is_empty(), "an older mark");
        assert!(changes(&mut state, sent(5)).is_empty(), "the same mark");
        assert_eq!(described(&between(&before, &state)), ["sent@5"]);
        assert!(between(&state, &state).is_empty());
    }

    #[test]
    fn a_removed_node_takes_its_users_then_its_channels_then_itself() {
        let mut state = ReplicatedState::default();
        assert_eq!(changes(&mut state, add(1)), ["node+1"]);
        assert_eq!(changes(&mut state, add(2)), ["node+2"]);
        let moved = Request::AddMember {
            id: 2,
            addr: "elsewhere:6002".into(),
        };
        assert!(changes(&mut state, moved).is_empty(), "a new address");
        state.apply(&interest(1, false, &[("shared", true)]));
        state.apply(&interest(2, false, &[("shared", true), ("alone", true)]));
        assert_eq!(changes(&mut state, join(2, "ann")), ["+ann"]);
        assert!(changes(&mut state, join(1, "ann")).is_empty());
        assert_eq!(changes(&mut state, join(2, "bob")), ["+bob"]);

        let removal = Request::RemoveMember {
            id: 2,
            why: Departure::Removed,
        };
        let applied = apply(&mut state, removal.clone());
        assert_eq!(described(&applied.changes), ["-bob", "-alone", "node-2"]);
        assert_eq!(
            applied.changes.last(),
            Some(&Change::NodeLeft {
                id: 2,
                why: Some(Departure::Removed)
            })
        );
        assert!(changes(&mut state, removal).is_empty(), "removed once");
        assert_eq!(changes(&mut state, add(2)), ["node+2"], "taken back");
    }

    #[test]
    fn history_is_placed_with_its_events_and_the_socket_left_out() {
        let mut state = ReplicatedState::default();
        let append = |events: usize| Request::HistoryAppend {
            app: "1".into(),
            channel: "chat".into(),
            fresh_epoch: "e1".into(),
            events: (0..events)
                .map(|n| StoredEvent {
                    event: "said".into(),
                    data: n.to_string(),
                    time_ms: 1,
                })
                .collect(),
            except: Some("1.2".into()),
        };
        assert_eq!(changes(&mut state, append(3)), ["history@1"]);
        let applied = apply(&mut state, append(2));
        let Change::History(commit) = &applied.changes[0] else {
            panic!("{:?}", applied.changes);
        };
        assert_eq!(
            (
                commit.epoch.as_str(),
                commit.first_offset,
                commit.events.len()
            ),
            ("e1", 4, 2)
        );
        assert_eq!(commit.except.as_deref(), Some("1.2"));
        assert_eq!(
            applied.response,
            Response::HistoryAppended {
                epoch: "e1".into(),
                first_offset: 4
            }
        );
    }

    fn batch(time_ms: u64, runs: &[(&str, &[Option<&str>])]) -> Request {
        Request::HistoryBatch {
            app: "1".into(),
            time_ms,
            key_window_ms: 1_000,
            runs: runs
                .iter()
                .map(|(channel, keys)| crate::history_batch::HistoryRun {
                    channel: (*channel).into(),
                    fresh_epoch: format!("{channel}-epoch"),
                    events: keys
                        .iter()
                        .map(|key| StoredEvent {
                            event: "said".into(),
                            data: key.unwrap_or("-").into(),
                            time_ms,
                        })
                        .collect(),
                    except: None,
                    keys: keys.iter().map(|k| k.map(str::to_owned)).collect(),
                })
                .collect(),
        }
    }

    fn offsets(response: &Response) -> Vec<Vec<(u64, bool)>> {
        let Response::HistoryBatchPlaced { runs } = response else {
            panic!("{response:?}");
        };
        runs.iter()
            .map(|run| run.iter().map(|at| (at.offset, at.repeat)).collect())
            .collect()
    }

    #[test]
    fn a_history_batch_is_one_entry_and_a_repeated_key_is_placed_once() {
        let mut state = ReplicatedState::default();
        let first = batch(
            10_000,
            &[
                ("chat", &[Some("a"), None]),
                ("log", &[Some("b")]),
                ("chat", &[Some("c")]),
            ],
        );
        let applied = apply(&mut state, first.clone());
        assert_eq!(
            described(&applied.changes),
            ["history@1", "history@1", "history@3"]
        );
        assert_eq!(
            offsets(&applied.response),
            [
                vec![(1, false), (2, false)],
                vec![(1, false)],
                vec![(3, false)]
            ]
        );

        // The same request again, within the window: answered with the same offsets, nothing
        // placed but the event without a key.
        let again = apply(
            &mut state,
            batch(
                10_900,
                &[
                    ("chat", &[Some("a"), None]),
                    ("log", &[Some("b")]),
                    ("chat", &[Some("c")]),
                ],
            ),
        );
        assert_eq!(described(&again.changes), ["history@4"]);
        assert_eq!(
            offsets(&again.response),
            [
                vec![(1, true), (4, false)],
                vec![(1, true)],
                vec![(3, true)]
            ]
        );
        let Change::History(commit) = &again.changes[0] else {
            panic!("{:?}", again.changes);
        };
        assert_eq!((commit.channel.as_str(), commit.events.len()), ("chat", 1));
        assert_eq!(state.published_keys("1"), 3);

        // Past the window, measured in the entries' times: placed again.
        let later = apply(&mut state, batch(11_100, &[("log", &[Some("b")])]));
        assert_eq!(offsets(&later.response), [vec![(2, false)]]);
        assert_eq!(
            state.published_keys("1"),
            1,
            "a, b and c forgotten; b again"
        );
    }

    #[test]
    fn a_history_append_of_an_old_log_is_still_read_and_applied() {
        let logged = r#"{"HistoryAppend":{"app":"1","channel":"chat","fresh_epoch":"e","events":[{"event":"x","data":"d","time_ms":1}]}}"#;
        let request: Request = serde_json::from_str(logged).unwrap();
        let mut state = ReplicatedState::default();
        assert_eq!(changes(&mut state, request), ["history@1"]);
    }

    #[test]
    fn skipping_to_a_later_state_tells_the_net_changes() {
        let mut before = ReplicatedState::default();
        before.apply(&add(1));
        before.apply(&add(2));
        before.apply(&interest(2, false, &[("gone", true), ("stays", true)]));
        before.apply(&join(2, "ann"));
        let mut after = before.clone();
        after.apply(&Request::RemoveMember {
            id: 2,
            why: Departure::DeclaredDead,
        });
        after.apply(&add(3));
        after.apply(&interest(3, false, &[("stays", true), ("new", true)]));
        after.apply(&join(3, "bob"));
        assert_eq!(
            described(&between(&before, &after)),
            ["-ann", "+bob", "-gone", "+new", "node-2", "node+3"]
        );
        assert!(between(&after, &after).is_empty());
    }
}
