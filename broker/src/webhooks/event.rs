//! The webhook events, each as Pusher's documentation gives its body, plus an `id` that stays
//! the same across retries and nodes so a receiver can drop a duplicate.

use chorus_cluster::Change;
use serde::{Deserialize, Serialize};

/// The kinds of webhook event, by Pusher's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookKind {
    ChannelOccupied,
    ChannelVacated,
    MemberAdded,
    MemberRemoved,
    ClientEvent,
    CacheMiss,
    SubscriptionCount,
}

impl WebhookKind {
    pub const ALL: [WebhookKind; 7] = [
        WebhookKind::ChannelOccupied,
        WebhookKind::ChannelVacated,
        WebhookKind::MemberAdded,
        WebhookKind::MemberRemoved,
        WebhookKind::ClientEvent,
        WebhookKind::CacheMiss,
        WebhookKind::SubscriptionCount,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WebhookKind::ChannelOccupied => "channel_occupied",
            WebhookKind::ChannelVacated => "channel_vacated",
            WebhookKind::MemberAdded => "member_added",
            WebhookKind::MemberRemoved => "member_removed",
            WebhookKind::ClientEvent => "client_event",
            WebhookKind::CacheMiss => "cache_miss",
            WebhookKind::SubscriptionCount => "subscription_count",
        }
    }

    pub fn parse(name: &str) -> Option<WebhookKind> {
        WebhookKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One event of a webhook request's `events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum WebhookEvent {
    ChannelOccupied {
        id: String,
        channel: String,
    },
    ChannelVacated {
        id: String,
        channel: String,
    },
    MemberAdded {
        id: String,
        channel: String,
        user_id: String,
    },
    MemberRemoved {
        id: String,
        channel: String,
        user_id: String,
    },
    /// `data` as the client sent it, as a string (a JSON value other than a string is sent
    /// encoded, as Pusher does); `user_id` only on presence channels.
    ClientEvent {
        id: String,
        channel: String,
        event: String,
        data: String,
        socket_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
    CacheMiss {
        id: String,
        channel: String,
    },
    /// How many subscriptions the channel has in the whole cluster.
    SubscriptionCount {
        id: String,
        channel: String,
        subscription_count: usize,
    },
}

impl WebhookEvent {
    pub fn kind(&self) -> WebhookKind {
        match self {
            WebhookEvent::ChannelOccupied { .. } => WebhookKind::ChannelOccupied,
            WebhookEvent::ChannelVacated { .. } => WebhookKind::ChannelVacated,
            WebhookEvent::MemberAdded { .. } => WebhookKind::MemberAdded,
            WebhookEvent::MemberRemoved { .. } => WebhookKind::MemberRemoved,
            WebhookEvent::ClientEvent { .. } => WebhookKind::ClientEvent,
            WebhookEvent::CacheMiss { .. } => WebhookKind::CacheMiss,
            WebhookEvent::SubscriptionCount { .. } => WebhookKind::SubscriptionCount,
        }
    }

    pub fn channel(&self) -> &str {
        match self {
            WebhookEvent::ChannelOccupied { channel, .. }
            | WebhookEvent::ChannelVacated { channel, .. }
            | WebhookEvent::MemberAdded { channel, .. }
            | WebhookEvent::MemberRemoved { channel, .. }
            | WebhookEvent::ClientEvent { channel, .. }
            | WebhookEvent::CacheMiss { channel, .. }
            | WebhookEvent::SubscriptionCount { channel, .. } => channel,
        }
    }

    /// The event a committed change calls for, if any, with the id its place in the log gives
    /// it (the same on every node): `index-seq`. The app is the change's own.
    pub fn of_change(index: u64, seq: u32, change: &Change) -> Option<WebhookEvent> {
        let id = format!("{index}-{seq}");
        Some(match change {
            Change::ChannelOccupied(key) => WebhookEvent::ChannelOccupied {
                id,
                channel: key.channel.clone(),
            },
            Change::ChannelVacated(key) => WebhookEvent::ChannelVacated {
                id,
                channel: key.channel.clone(),
            },
            Change::Presence(event) if event.joined.is_some() => WebhookEvent::MemberAdded {
                id,
                channel: event.channel.clone(),
                user_id: event.user_id.clone(),
            },
            Change::Presence(event) => WebhookEvent::MemberRemoved {
                id,
                channel: event.channel.clone(),
                user_id: event.user_id.clone(),
            },
            Change::History(_)
            | Change::NodeAdmitted { .. }
            | Change::NodeLeft { .. }
            | Change::WebhooksSent { .. } => return None,
        })
    }

    pub fn id(&self) -> &str {
        match self {
            WebhookEvent::ChannelOccupied { id, .. }
            | WebhookEvent::ChannelVacated { id, .. }
            | WebhookEvent::MemberAdded { id, .. }
            | WebhookEvent::MemberRemoved { id, .. }
            | WebhookEvent::ClientEvent { id, .. }
            | WebhookEvent::CacheMiss { id, .. }
            | WebhookEvent::SubscriptionCount { id, .. } => id,
        }
    }
}

/// A client event's `data` as a webhook carries it: a string as it is, anything else encoded.
pub fn client_data(data: &serde_json::value::RawValue) -> String {
    match serde_json::from_str::<String>(data.get()) {
        Ok(text) => text,
        Err(_) => data.get().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_pushers_shape() {
        let event = WebhookEvent::MemberAdded {
            id: "7-0".into(),
            channel: "presence-room".into(),
            user_id: "u1".into(),
        };
        let json: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "member_added", "id": "7-0",
                "channel": "presence-room", "user_id": "u1"})
        );
        let back: WebhookEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
        assert_eq!(back.kind().name(), "member_added");
    }

    #[test]
    fn a_client_events_user_id_appears_only_when_known() {
        let event = WebhookEvent::ClientEvent {
            id: "x".into(),
            channel: "private-a".into(),
            event: "client-typing".into(),
            data: "{}".into(),
            socket_id: "1.2".into(),
            user_id: None,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert!(json.get("user_id").is_none());
        assert_eq!(json["name"], "client_event");
    }

    #[test]
    fn client_data_is_a_string() {
        let raw = |s: &str| serde_json::value::RawValue::from_string(s.to_owned()).unwrap();
        assert_eq!(client_data(&raw(r#""hi""#)), "hi");
        assert_eq!(client_data(&raw(r#"{"a":1}"#)), r#"{"a":1}"#);
    }

    #[test]
    fn every_kind_parses_back_from_its_name() {
        for kind in WebhookKind::ALL {
            assert_eq!(WebhookKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(WebhookKind::parse("subscription_counts"), None);
    }
}
