//! Which channels of an app are occupied, by how many subscriptions and which presence users: a
//! view of one node's channels ([`local_view`]), and the cluster's, merged from every node's
//! ([`ChannelView::merge`]). Channels are the union of the nodes' channels, subscription counts
//! are summed, and a channel's users are the union of the nodes' users (a user connected on two
//! nodes counts once), in the order the first node to report each one listed it.
//!
//! The [`ChannelQuery`] and the [`ChannelView`] are also the question and the answer the nodes
//! exchange on their cluster ports (see `crate::http::peers`).

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::actors::messages::GetMembers;
use crate::apps::App;
use crate::registry::ChannelAddr;

/// Which channels a query is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Every occupied channel whose name starts with this.
    Prefix(String),
    /// These channels (those of them that are occupied).
    Names(Vec<String>),
}

/// A question about an app's channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelQuery {
    pub app: String,
    pub selection: Selection,
    /// Whether to list the users of presence channels (for `user_count` and `/users`).
    #[serde(default)]
    pub users: bool,
}

/// One occupied channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Occupancy {
    pub subscription_count: usize,
    /// The ids of its presence users, when they were asked for; empty on other channels.
    #[serde(default)]
    pub users: Vec<String>,
}

/// The occupied channels a query selected, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelView {
    pub channels: BTreeMap<String, Occupancy>,
}

impl ChannelView {
    /// Adds another node's view to this one.
    pub fn merge(&mut self, other: ChannelView) {
        for (name, theirs) in other.channels {
            let ours = self.channels.entry(name).or_default();
            // Saturating: a count another node sent is not trusted to leave room.
            ours.subscription_count = ours
                .subscription_count
                .saturating_add(theirs.subscription_count);
            if ours.users.is_empty() {
                ours.users = theirs.users;
                continue;
            }
            let mut known: HashSet<String> = ours.users.iter().cloned().collect();
            ours.users.extend(
                theirs
                    .users
                    .into_iter()
                    .filter(|user| known.insert(user.clone())),
            );
        }
    }

    /// The channel named `name`, if it is occupied.
    pub fn get(&self, name: &str) -> Option<&Occupancy> {
        self.channels.get(name)
    }
}

/// This node's view of the channels `query` selects of `app`.
pub async fn local_view(app: &App, query: &ChannelQuery) -> ChannelView {
    let summaries = match &query.selection {
        Selection::Prefix(prefix) => app.channels.list(prefix),
        Selection::Names(names) => names
            .iter()
            .filter_map(|name| app.channels.get(name))
            .collect(),
    };
    let mut view = ChannelView::default();
    for summary in summaries {
        let users = match (&summary.addr, query.users) {
            (ChannelAddr::Presence(addr), true) => addr.send(GetMembers).await.unwrap_or_default(),
            _ => Vec::new(),
        };
        view.channels.insert(
            summary.name,
            Occupancy {
                subscription_count: summary.subscriptions,
                users,
            },
        );
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(channels: &[(&str, usize, &[&str])]) -> ChannelView {
        ChannelView {
            channels: channels
                .iter()
                .map(|(name, count, users)| {
                    let occupancy = Occupancy {
                        subscription_count: *count,
                        users: users.iter().map(|u| (*u).to_owned()).collect(),
                    };
                    ((*name).to_owned(), occupancy)
                })
                .collect(),
        }
    }

    #[test]
    fn merging_unites_channels_sums_subscriptions_and_counts_each_user_once() {
        let mut merged = view(&[("news", 2, &[]), ("presence-room", 2, &["ann", "bob"])]);
        merged.merge(view(&[("presence-room", 3, &["bob", "cid", "ann", "dan"])]));
        merged.merge(view(&[
            ("sport", 1, &[]),
            ("presence-room", 1, &["eve", "cid"]),
        ]));
        assert_eq!(
            merged,
            view(&[
                ("news", 2, &[]),
                ("presence-room", 6, &["ann", "bob", "cid", "dan", "eve"]),
                ("sport", 1, &[]),
            ])
        );
    }

    #[test]
    fn merging_nothing_changes_nothing() {
        let mut merged = view(&[("presence-room", 1, &["ann"])]);
        merged.merge(ChannelView::default());
        assert_eq!(merged, view(&[("presence-room", 1, &["ann"])]));
        let mut empty = ChannelView::default();
        empty.merge(view(&[("presence-room", 1, &["ann"])]));
        assert_eq!(empty, view(&[("presence-room", 1, &["ann"])]));
    }

    #[test]
    fn the_query_and_view_travel_as_json() {
        let query = ChannelQuery {
            app: "1".into(),
            selection: Selection::Prefix("presence-".into()),
            users: true,
        };
        let text = serde_json::to_string(&query).unwrap();
        assert_eq!(
            text,
            r#"{"app":"1","selection":{"prefix":"presence-"},"users":true}"#
        );
        assert_eq!(serde_json::from_str::<ChannelQuery>(&text).unwrap(), query);
        let answer: ChannelView =
            serde_json::from_str(r#"{"channels":{"news":{"subscription_count":3}}}"#).unwrap();
        assert_eq!(answer, view(&[("news", 3, &[])]));
    }
}
