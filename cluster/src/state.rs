//! The replicated state: what every node agrees on once a log entry is applied.
//!
//! Cluster members and their addresses (and how many times each was admitted), the desired
//! members (from a members file, by revision) and the nodes an operator retired, channel interest
//! (which nodes have local subscribers of which channel), presence sets (each user with a
//! connection count per node, so a node's death removes exactly the users that were only there),
//! and the position (epoch, next offset) of every history channel. Applying a [`Request`] is a
//! pure, deterministic function of the state and the request; the whole state is what a snapshot
//! holds.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::desired::DesiredMembers;
use crate::history_batch::{HistoryRun, KeyPlacement, Placement, PublishedKeys};
use crate::types::{NodeId, PresenceChange, PresenceEvent, PresenceUserRef, Request, Response};
use crate::webhook_marks::WebhookMarks;

/// A channel of an app.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChannelKey {
    pub app: String,
    pub channel: String,
}

impl ChannelKey {
    pub fn new(app: &str, channel: &str) -> ChannelKey {
        ChannelKey {
            app: app.to_owned(),
            channel: channel.to_owned(),
        }
    }
}

/// A user in a presence channel: the info its first connection gave, and how many of its
/// connections are in the channel on each node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceMember {
    pub user_info: String,
    pub connections: BTreeMap<NodeId, u64>,
}

/// Where a history channel stands, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPosition {
    pub epoch: String,
    /// The offset the next event will get (offsets start at 1).
    pub next_offset: u64,
}

/// Maps keyed by a struct cannot be JSON objects: they are written as lists of pairs.
pub(crate) mod as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

/// The state every node holds in memory and rebuilds from a snapshot and the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicatedState {
    members: BTreeMap<NodeId, String>,
    #[serde(with = "as_pairs")]
    interest: BTreeMap<ChannelKey, BTreeSet<NodeId>>,
    #[serde(with = "as_pairs")]
    presence: BTreeMap<ChannelKey, BTreeMap<String, PresenceMember>>,
    #[serde(with = "as_pairs")]
    history: BTreeMap<ChannelKey, HistoryPosition>,
    /// How many times each node was admitted into `members` (absent, then added): a node sees
    /// from its own count that it was removed and taken back, even when it applies both at once.
    /// Never decreases; kept when the member is removed.
    #[serde(default)]
    admissions: BTreeMap<NodeId, u64>,
    /// The members the cluster should have, at the newest revision proposed (none without a
    /// members file).
    #[serde(default)]
    desired: Option<DesiredMembers>,
    /// The nodes an operator took out (`chorus cluster remove`), not to be taken back from a
    /// static peer list.
    #[serde(default)]
    retired: BTreeSet<NodeId>,
    /// How far each webhook has been sent of the committed changes.
    #[serde(default)]
    webhooks_sent: WebhookMarks,
    /// The idempotency keys of history events placed recently, by app (see
    /// [`crate::history_batch`]).
    #[serde(default)]
    published_keys: BTreeMap<String, PublishedKeys>,
}

impl ReplicatedState {
    /// Applies one request and says what it did.
    pub fn apply(&mut self, request: &Request) -> Response {
        match request {
            Request::AddMember { id, addr } => {
                if self.members.insert(*id, addr.clone()).is_none() {
                    *self.admissions.entry(*id).or_default() += 1;
                }
                Response::Applied
            }
            Request::RemoveMember { id, .. } => Response::MemberRemoved {
                users_left: self.remove_member(*id),
            },
            Request::SetDesiredMembers(desired) => {
                let newer = self
                    .desired
                    .as_ref()
                    .is_none_or(|held| desired.revision > held.revision);
                if newer {
                    self.desired = Some(desired.clone());
                }
                Response::Applied
            }
            Request::SetRetired { id, retired } => {
                if *retired {
                    self.retired.insert(*id);
                } else {
                    self.retired.remove(id);
                }
                Response::Applied
            }
            Request::UpdateInterest {
                node,
                reset,
                changes,
            } => {
                if *reset {
                    self.clear_interest(*node);
                }
                for change in changes {
                    let key = ChannelKey::new(&change.app, &change.channel);
                    self.set_interest(*node, key, change.present);
                }
                Response::Applied
            }
            Request::UpdatePresence {
                node,
                reset,
                changes,
            } => Response::Presence {
                events: self.update_presence(*node, *reset, changes),
            },
            Request::HistoryAppend {
                app,
                channel,
                fresh_epoch,
                events,
                except: _,
            } => {
                let key = ChannelKey::new(app, channel);
                let (epoch, first_offset) = self.place_history(key, fresh_epoch, events.len());
                Response::HistoryAppended {
                    epoch,
                    first_offset,
                }
            }
            Request::WebhooksSent { target, through } => {
                self.webhooks_sent.advance(target, *through);
                Response::Applied
            }
            Request::HistoryBatch {
                app,
                time_ms,
                key_window_ms,
                runs,
            } => Response::HistoryBatchPlaced {
                runs: self.place_batch(app, *time_ms, *key_window_ms, runs),
            },
        }
    }

    /// The channels whose interest `request` may change, looked at before it is applied: those
    /// it names, and with a reset or a member's removal those the node has now.
    pub fn interest_touched_by(&self, request: &Request) -> Vec<ChannelKey> {
        match request {
            Request::UpdateInterest {
                node,
                reset,
                changes,
            } => {
                let mut keys: Vec<ChannelKey> = changes
                    .iter()
                    .map(|change| ChannelKey::new(&change.app, &change.channel))
                    .collect();
                if *reset {
                    keys.extend(self.interest_of(*node));
                }
                keys.sort_unstable();
                keys.dedup();
                keys
            }
            Request::RemoveMember { id, .. } => self.interest_of(*id),
            Request::AddMember { .. }
            | Request::SetDesiredMembers(_)
            | Request::SetRetired { .. }
            | Request::UpdatePresence { .. }
            | Request::HistoryAppend { .. }
            | Request::WebhooksSent { .. }
            | Request::HistoryBatch { .. } => Vec::new(),
        }
    }

    /// Gives `count` events of a history channel their offsets: returns the channel's epoch
    /// (`fresh_epoch` if it had no history yet) and the first event's offset.
    fn place_history(&mut self, key: ChannelKey, fresh_epoch: &str, count: usize) -> (String, u64) {
        let position = self.history.entry(key).or_insert_with(|| HistoryPosition {
            epoch: fresh_epoch.to_owned(),
            next_offset: 1,
        });
        let first_offset = position.next_offset;
        position.next_offset += count as u64;
        (position.epoch.clone(), first_offset)
    }

    /// Places the runs of a history batch in order: each event at its channel's next offset,
    /// but an event whose key was placed on its channel within the window at the offset it got
    /// then, and not again. Keys older than the window (by the entries' times) are forgotten
    /// first.
    fn place_batch(
        &mut self,
        app: &str,
        time_ms: u64,
        key_window_ms: u64,
        runs: &[HistoryRun],
    ) -> Vec<Vec<Placement>> {
        if let Some(keys) = self.published_keys.get_mut(app) {
            keys.forget_expired(time_ms, key_window_ms);
            if keys.is_empty() {
                self.published_keys.remove(app);
            }
        }
        let mut placed = Vec::with_capacity(runs.len());
        for run in runs {
            let key = ChannelKey::new(app, &run.channel);
            let mut run_placed = Vec::with_capacity(run.events.len());
            for i in 0..run.events.len() {
                let known = run.key(i).and_then(|k| {
                    let keys = self.published_keys.get(app)?;
                    keys.placed(k, &run.channel)
                });
                if let Some(first) = known {
                    run_placed.push(Placement {
                        epoch: first.epoch.clone(),
                        offset: first.offset,
                        repeat: true,
                    });
                    continue;
                }
                let (epoch, offset) = self.place_history(key.clone(), &run.fresh_epoch, 1);
                if let Some(k) = run.key(i) {
                    let at = KeyPlacement {
                        channel: run.channel.clone(),
                        epoch: epoch.clone(),
                        offset,
                    };
                    let keys = self.published_keys.entry(app.to_owned()).or_default();
                    keys.remember(k, time_ms, at);
                }
                run_placed.push(Placement {
                    epoch,
                    offset,
                    repeat: false,
                });
            }
            placed.push(run_placed);
        }
        placed
    }

    /// How many idempotency keys of `app` the state remembers.
    pub fn published_keys(&self, app: &str) -> usize {
        self.published_keys.get(app).map_or(0, PublishedKeys::len)
    }

    fn set_interest(&mut self, node: NodeId, key: ChannelKey, present: bool) {
        if present {
            self.interest.entry(key).or_default().insert(node);
        } else if let Some(nodes) = self.interest.get_mut(&key) {
            nodes.remove(&node);
            if nodes.is_empty() {
                self.interest.remove(&key);
            }
        }
    }

    fn clear_interest(&mut self, node: NodeId) {
        self.interest.retain(|_, nodes| {
            nodes.remove(&node);
            !nodes.is_empty()
        });
    }

    /// Applies a node's presence changes (after clearing its presence, with `reset`); returns
    /// the users that joined or left cluster-wide, by channel and user id.
    fn update_presence(
        &mut self,
        node: NodeId,
        reset: bool,
        changes: &[PresenceChange],
    ) -> Vec<PresenceEvent> {
        let mut touched: BTreeSet<ChannelKey> = changes
            .iter()
            .map(|c| ChannelKey::new(&c.app, &c.channel))
            .collect();
        if reset {
            touched.extend(self.presence_channels_of(node));
        }
        let before = self.users_of(&touched);
        if reset {
            self.clear_presence(node);
        }
        for change in changes {
            let key = ChannelKey::new(&change.app, &change.channel);
            match &change.user_info {
                Some(user_info) => {
                    let users = self.presence.entry(key).or_default();
                    let member =
                        users
                            .entry(change.user_id.clone())
                            .or_insert_with(|| PresenceMember {
                                user_info: user_info.clone(),
                                connections: BTreeMap::new(),
                            });
                    member.connections.insert(node, 1);
                }
                None => {
                    if let Some(users) = self.presence.get_mut(&key) {
                        if let Some(member) = users.get_mut(&change.user_id) {
                            member.connections.remove(&node);
                            if member.connections.is_empty() {
                                users.remove(&change.user_id);
                            }
                        }
                        if users.is_empty() {
                            self.presence.remove(&key);
                        }
                    }
                }
            }
        }
        before
            .into_iter()
            .flat_map(|(key, was)| {
                let now = self.presence.get(&key);
                user_changes(&key, &was, now)
            })
            .collect()
    }

    /// The users that joined or left presence channels between this state and `later`: what a
    /// node that skips from one to the other (installing a snapshot) tells its subscribers.
    pub fn presence_changes_to(&self, later: &ReplicatedState) -> Vec<PresenceEvent> {
        let channels: BTreeSet<&ChannelKey> =
            self.presence.keys().chain(later.presence.keys()).collect();
        channels
            .into_iter()
            .flat_map(|key| {
                let was: BTreeSet<String> = self
                    .presence
                    .get(key)
                    .map(|users| users.keys().cloned().collect())
                    .unwrap_or_default();
                user_changes(key, &was, later.presence.get(key))
            })
            .collect()
    }

    /// The presence channels `node` has connections in.
    fn presence_channels_of(&self, node: NodeId) -> Vec<ChannelKey> {
        self.presence
            .iter()
            .filter(|(_, users)| users.values().any(|m| m.connections.contains_key(&node)))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The user ids present in each of `channels`.
    fn users_of(&self, channels: &BTreeSet<ChannelKey>) -> BTreeMap<ChannelKey, BTreeSet<String>> {
        channels
            .iter()
            .map(|key| {
                let users = self
                    .presence
                    .get(key)
                    .map(|users| users.keys().cloned().collect())
                    .unwrap_or_default();
                (key.clone(), users)
            })
            .collect()
    }

    /// Drops every presence connection of `node`; returns the users that were only there.
    fn clear_presence(&mut self, node: NodeId) -> Vec<PresenceUserRef> {
        let mut users_left = Vec::new();
        self.presence.retain(|key, users| {
            users.retain(|user_id, member| {
                member.connections.remove(&node);
                let keep = !member.connections.is_empty();
                if !keep {
                    users_left.push(PresenceUserRef {
                        app: key.app.clone(),
                        channel: key.channel.clone(),
                        user_id: user_id.clone(),
                    });
                }
                keep
            });
            !users.is_empty()
        });
        users_left
    }

    /// Drops a member with its interest and presence connections; returns the users whose last
    /// connection was there.
    fn remove_member(&mut self, id: NodeId) -> Vec<PresenceUserRef> {
        self.members.remove(&id);
        self.clear_interest(id);
        self.clear_presence(id)
    }

    /// Every member and its cluster address.
    pub fn members(&self) -> &BTreeMap<NodeId, String> {
        &self.members
    }

    /// How many times node `id` was admitted into the members, while it is one; `None` while it
    /// is not a member. A change means the node was removed and taken back since.
    pub fn admission(&self, id: NodeId) -> Option<u64> {
        self.members
            .contains_key(&id)
            .then(|| self.admissions.get(&id).copied().unwrap_or_default())
    }

    /// The members the cluster should have, if a members file declared them.
    pub fn desired(&self) -> Option<&DesiredMembers> {
        self.desired.as_ref()
    }

    /// The nodes an operator took out of the cluster.
    /// How far each webhook has been sent of the committed changes.
    pub fn webhooks_sent(&self) -> &WebhookMarks {
        &self.webhooks_sent
    }

    pub fn retired(&self) -> &BTreeSet<NodeId> {
        &self.retired
    }

    /// The nodes with local subscribers of a channel.
    pub fn interested_nodes(&self, app: &str, channel: &str) -> Vec<NodeId> {
        self.interest
            .get(&ChannelKey::new(app, channel))
            .map(|nodes| nodes.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether some node has local subscribers of a channel: it is occupied, cluster-wide.
    pub fn is_occupied(&self, key: &ChannelKey) -> bool {
        self.interest.contains_key(key)
    }

    /// Every channel some node has local subscribers of, with those nodes.
    pub fn interest(&self) -> impl Iterator<Item = (&ChannelKey, &BTreeSet<NodeId>)> {
        self.interest.iter()
    }

    /// The channels `node` has local subscribers of.
    pub fn interest_of(&self, node: NodeId) -> Vec<ChannelKey> {
        self.interest
            .iter()
            .filter(|(_, nodes)| nodes.contains(&node))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The users of a presence channel, by user id.
    pub fn presence_members(
        &self,
        app: &str,
        channel: &str,
    ) -> Option<&BTreeMap<String, PresenceMember>> {
        self.presence.get(&ChannelKey::new(app, channel))
    }

    /// Every history channel and where it stands.
    pub fn history_positions(&self) -> impl Iterator<Item = (&ChannelKey, &HistoryPosition)> {
        self.history.iter()
    }

    /// Where a history channel stands, if it was ever written.
    pub fn history_position(&self, app: &str, channel: &str) -> Option<&HistoryPosition> {
        self.history.get(&ChannelKey::new(app, channel))
    }
}

/// The users of a presence channel that left (were in `was`, are not in `now`) and joined.
fn user_changes(
    key: &ChannelKey,
    was: &BTreeSet<String>,
    now: Option<&BTreeMap<String, PresenceMember>>,
) -> Vec<PresenceEvent> {
    let event = |user_id: &String, joined: Option<String>| PresenceEvent {
        app: key.app.clone(),
        channel: key.channel.clone(),
        user_id: user_id.clone(),
        joined,
    };
    let left = was
        .iter()
        .filter(|user_id| now.is_none_or(|users| !users.contains_key(*user_id)))
        .map(|user_id| event(user_id, None));
    let joined = now
        .into_iter()
        .flatten()
        .filter(|(user_id, _)| !was.contains(*user_id))
        .map(|(user_id, member)| event(user_id, Some(member.user_info.clone())));
    left.chain(joined).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Departure, InterestChange};
    use chorus_storage::StoredEvent;

    fn interest(node: NodeId, channel: &str, present: bool) -> Request {
        Request::UpdateInterest {
            node,
            reset: false,
            changes: vec![InterestChange {
                app: "1".into(),
                channel: channel.into(),
                present,
            }],
        }
    }

    fn presence(node: NodeId, reset: bool, users: &[(&str, bool)]) -> Request {
        Request::UpdatePresence {
            node,
            reset,
            changes: users
                .iter()
                .map(|&(user, present)| PresenceChange {
                    app: "1".into(),
                    channel: "presence-room".into(),
                    user_id: user.into(),
                    user_info: present.then(|| format!("{{\"name\":\"{user}@{node}\"}}")),
                })
                .collect(),
        }
    }

    fn join(user: &str, node: NodeId) -> Request {
        presence(node, false, &[(user, true)])
    }

    fn leave(user: &str, node: NodeId) -> Request {
        presence(node, false, &[(user, false)])
    }

    /// `+user` joined, `-user` left.
    fn described(events: Vec<PresenceEvent>) -> Vec<String> {
        events
            .into_iter()
            .map(|e| {
                format!(
                    "{}{}",
                    if e.joined.is_some() { "+" } else { "-" },
                    e.user_id
                )
            })
            .collect()
    }

    /// What the request made happen: `+user` joined, `-user` left.
    fn events(state: &mut ReplicatedState, request: Request) -> Vec<String> {
        match state.apply(&request) {
            Response::Presence { events } => described(events),
            other => panic!("presence request answered {other:?}"),
        }
    }

    fn changed(state: &mut ReplicatedState, request: Request) -> bool {
        !events(state, request).is_empty()
    }

    fn user_ids(state: &ReplicatedState) -> Vec<String> {
        state
            .presence_members("1", "presence-room")
            .map(|users| users.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn history(channel: &str, epoch: &str, events: usize) -> Request {
        Request::HistoryAppend {
            app: "1".into(),
            channel: channel.into(),
            fresh_epoch: epoch.into(),
            events: (0..events)
                .map(|n| StoredEvent {
                    event: "e".into(),
                    data: n.to_string(),
                    time_ms: 1,
                })
                .collect(),
            except: None,
        }
    }

    #[test]
    fn interest_is_added_per_node_and_removed_when_the_last_node_goes() {
        let mut state = ReplicatedState::default();
        state.apply(&interest(1, "news", true));
        state.apply(&interest(2, "news", true));
        state.apply(&interest(2, "news", true));
        state.apply(&interest(3, "sport", true));
        assert_eq!(state.interested_nodes("1", "news"), vec![1, 2]);
        assert_eq!(state.interested_nodes("2", "news"), Vec::<NodeId>::new());
        state.apply(&interest(1, "news", false));
        assert_eq!(state.interested_nodes("1", "news"), vec![2]);
        state.apply(&interest(2, "news", false));
        state.apply(&interest(2, "never", false));
        assert_eq!(state.interested_nodes("1", "news"), Vec::<NodeId>::new());
        assert_eq!(
            state.interest.len(),
            1,
            "an unwatched channel leaves no entry"
        );
    }

    #[test]
    fn an_interest_update_applies_its_changes_in_order_after_an_optional_reset() {
        let change = |channel: &str, present| InterestChange {
            app: "1".into(),
            channel: channel.into(),
            present,
        };
        let mut state = ReplicatedState::default();
        state.apply(&interest(1, "stale", true));
        state.apply(&interest(2, "stale", true));
        state.apply(&Request::UpdateInterest {
            node: 1,
            reset: false,
            changes: vec![
                change("news", true),
                change("flap", true),
                change("flap", false),
            ],
        });
        assert_eq!(state.interested_nodes("1", "news"), vec![1]);
        assert_eq!(state.interested_nodes("1", "flap"), Vec::<NodeId>::new());
        assert_eq!(
            state.interest_of(1),
            vec![ChannelKey::new("1", "news"), ChannelKey::new("1", "stale")]
        );

        state.apply(&Request::UpdateInterest {
            node: 1,
            reset: true,
            changes: vec![change("sport", true)],
        });
        assert_eq!(state.interest_of(1), vec![ChannelKey::new("1", "sport")]);
        assert_eq!(
            state.interested_nodes("1", "stale"),
            vec![2],
            "another node's interest stays"
        );
    }

    #[test]
    fn presence_is_per_node_and_a_user_joins_and_leaves_once_cluster_wide() {
        let mut state = ReplicatedState::default();
        assert_eq!(events(&mut state, join("ann", 1)), ["+ann"], "first node");
        assert!(!changed(&mut state, join("ann", 1)), "declared again");
        assert!(!changed(&mut state, join("ann", 2)), "another node");
        assert_eq!(events(&mut state, join("bob", 2)), ["+bob"]);
        let users = state.presence_members("1", "presence-room").unwrap();
        assert_eq!(users["ann"].connections, BTreeMap::from([(1, 1), (2, 1)]));
        assert_eq!(
            users["ann"].user_info, "{\"name\":\"ann@1\"}",
            "the first node's info is kept"
        );

        assert!(!changed(&mut state, leave("ann", 1)), "still on node 2");
        assert!(!changed(&mut state, leave("ann", 1)), "a repeated leave");
        assert!(!changed(&mut state, leave("nobody", 1)));
        assert_eq!(user_ids(&state), ["ann", "bob"]);

        // Node 2 restarts and declares what it has now: bob is gone, carol came.
        let reset = presence(2, true, &[("ann", true), ("carol", true)]);
        assert_eq!(events(&mut state, reset), ["-bob", "+carol"]);
        assert_eq!(user_ids(&state), ["ann", "carol"]);
        assert_eq!(events(&mut state, leave("ann", 2)), ["-ann"], "last node");
        assert_eq!(events(&mut state, leave("carol", 2)), ["-carol"]);
        assert!(state.presence_members("1", "presence-room").is_none());
    }

    #[test]
    fn skipping_from_one_state_to_another_tells_who_joined_and_left() {
        let mut before = ReplicatedState::default();
        before.apply(&join("ann", 1));
        before.apply(&join("bob", 2));
        let mut after = before.clone();
        after.apply(&leave("bob", 2));
        after.apply(&join("carol", 3));
        after.apply(&join("ann", 3));
        let changes = described(before.presence_changes_to(&after));
        assert_eq!(changes, ["-bob", "+carol"]);
        assert!(after.presence_changes_to(&after).is_empty());
    }

    #[test]
    fn removing_a_member_drops_its_interest_and_the_users_only_it_had() {
        let mut state = ReplicatedState::default();
        state.apply(&Request::AddMember {
            id: 1,
            addr: "10.0.0.1:6002".into(),
        });
        state.apply(&Request::AddMember {
            id: 2,
            addr: "10.0.0.2:6002".into(),
        });
        state.apply(&interest(1, "news", true));
        state.apply(&interest(2, "news", true));
        state.apply(&interest(2, "sport", true));
        state.apply(&join("ann", 1));
        state.apply(&join("ann", 2));
        state.apply(&join("bob", 2));
        state.apply(&join("bob", 2));

        let response = state.apply(&Request::RemoveMember {
            id: 2,
            why: Departure::DeclaredDead,
        });
        assert_eq!(
            response,
            Response::MemberRemoved {
                users_left: vec![PresenceUserRef {
                    app: "1".into(),
                    channel: "presence-room".into(),
                    user_id: "bob".into(),
                }]
            }
        );
        assert_eq!(
            state.members(),
            &BTreeMap::from([(1, "10.0.0.1:6002".to_owned())])
        );
        assert_eq!(state.interested_nodes("1", "news"), vec![1]);
        assert_eq!(state.interested_nodes("1", "sport"), Vec::<NodeId>::new());
        assert_eq!(user_ids(&state), ["ann"]);
    }

    #[test]
    fn a_member_removed_and_added_again_has_a_new_admission() {
        let mut state = ReplicatedState::default();
        let add = |addr: &str| Request::AddMember {
            id: 2,
            addr: addr.into(),
        };
        assert_eq!(state.admission(2), None);
        state.apply(&add("10.0.0.2:6002"));
        assert_eq!(state.admission(2), Some(1));
        state.apply(&add("10.0.0.9:6002"));
        assert_eq!(
            state.admission(2),
            Some(1),
            "a new address is no new admission"
        );
        state.apply(&Request::RemoveMember {
            id: 2,
            why: Departure::DeclaredDead,
        });
        assert_eq!(state.admission(2), None);
        state.apply(&add("10.0.0.9:6002"));
        assert_eq!(state.admission(2), Some(2));
    }

    #[test]
    fn a_newer_desired_revision_is_adopted_and_an_older_one_never() {
        let desired = |revision: u64, ids: &[NodeId]| {
            Request::SetDesiredMembers(DesiredMembers {
                revision,
                members: ids.iter().map(|id| (*id, format!("n{id}:6002"))).collect(),
            })
        };
        let ids = |state: &ReplicatedState| {
            let desired = state.desired().unwrap();
            let ids: Vec<NodeId> = desired.members.keys().copied().collect();
            (desired.revision, ids)
        };
        let mut state = ReplicatedState::default();
        assert_eq!(state.desired(), None);
        state.apply(&desired(3, &[0, 1, 2]));
        assert_eq!(ids(&state), (3, vec![0, 1, 2]));
        state.apply(&desired(4, &[0, 1, 2, 3, 4]));
        assert_eq!(ids(&state), (4, vec![0, 1, 2, 3, 4]));
        state.apply(&desired(3, &[0, 1, 2]));
        assert_eq!(ids(&state), (4, vec![0, 1, 2, 3, 4]), "an older revision");
        state.apply(&desired(4, &[0]));
        assert_eq!(ids(&state), (4, vec![0, 1, 2, 3, 4]), "the same revision");
        state.apply(&desired(9, &[0, 1, 2]));
        assert_eq!(ids(&state), (9, vec![0, 1, 2]));

        state.apply(&Request::SetRetired {
            id: 4,
            retired: true,
        });
        assert_eq!(state.retired(), &BTreeSet::from([4]));
        let json = serde_json::to_vec(&state).unwrap();
        assert_eq!(
            serde_json::from_slice::<ReplicatedState>(&json).unwrap(),
            state
        );
        state.apply(&Request::SetRetired {
            id: 4,
            retired: false,
        });
        assert!(state.retired().is_empty());
    }

    #[test]
    fn history_offsets_are_dense_and_the_first_epoch_stays() {
        let mut state = ReplicatedState::default();
        assert_eq!(
            state.apply(&history("chat", "e1", 3)),
            Response::HistoryAppended {
                epoch: "e1".into(),
                first_offset: 1
            }
        );
        assert_eq!(
            state.apply(&history("chat", "other", 2)),
            Response::HistoryAppended {
                epoch: "e1".into(),
                first_offset: 4
            }
        );
        assert_eq!(
            state.apply(&history("log", "e2", 1)),
            Response::HistoryAppended {
                epoch: "e2".into(),
                first_offset: 1
            }
        );
        assert_eq!(
            state.history_position("1", "chat"),
            Some(&HistoryPosition {
                epoch: "e1".into(),
                next_offset: 6
            })
        );
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let mut state = ReplicatedState::default();
        state.apply(&Request::AddMember {
            id: 7,
            addr: "node-7:6002".into(),
        });
        state.apply(&interest(7, "news", true));
        state.apply(&join("ann", 7));
        state.apply(&history("chat", "e1", 2));
        state.apply(&keyed_batch("chat", "k1", 1_000));
        assert_eq!(state.published_keys("1"), 1);
        let json = serde_json::to_vec(&state).unwrap();
        let back: ReplicatedState = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, state);

        // A snapshot written before idempotency keys were kept loads, with none.
        let mut old: serde_json::Value = serde_json::from_slice(&json).unwrap();
        old.as_object_mut().unwrap().remove("published_keys");
        let mut back: ReplicatedState = serde_json::from_value(old).unwrap();
        assert_eq!(back.published_keys("1"), 0);
        assert_eq!(
            back.history_position("1", "chat"),
            state.history_position("1", "chat")
        );
        // And the key read back from the snapshot still makes a repeat.
        let mut again = serde_json::from_slice::<ReplicatedState>(&json).unwrap();
        assert_eq!(
            again.apply(&keyed_batch("chat", "k1", 2_000)),
            state.clone().apply(&keyed_batch("chat", "k1", 2_000))
        );
        let Response::HistoryBatchPlaced { runs } = again.apply(&keyed_batch("chat", "k1", 3_000))
        else {
            panic!("not placed");
        };
        assert!(runs[0][0].repeat && runs[0][0].offset == 3, "{runs:?}");
        back.apply(&keyed_batch("chat", "k1", 3_000));
        assert_eq!(back.published_keys("1"), 1);
    }

    fn keyed_batch(channel: &str, key: &str, time_ms: u64) -> Request {
        Request::HistoryBatch {
            app: "1".into(),
            time_ms,
            key_window_ms: 60_000,
            runs: vec![crate::history_batch::HistoryRun {
                channel: channel.into(),
                fresh_epoch: "e9".into(),
                events: vec![StoredEvent {
                    event: "e".into(),
                    data: key.into(),
                    time_ms,
                }],
                except: None,
                keys: vec![Some(key.into())],
            }],
        }
    }
}
