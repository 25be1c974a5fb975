//! Pusher WebSocket frames: a cheap classifier for the hot receive path and a full parser for the
//! rare control frames (connection_established, subscription results, presence events, errors).

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};

static PING: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"pusher:ping\""));

/// A frame from the server, parsed.
#[derive(Debug, Clone, Deserialize)]
pub struct Frame {
    pub event: String,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub data: Option<Value>,
    /// The event's offset in its channel's history (Chorus history channels only).
    #[serde(default)]
    pub offset: Option<u64>,
    /// The epoch of that history (Chorus history channels only).
    #[serde(default)]
    pub epoch: Option<String>,
}

/// What a `pusher_internal:subscription_succeeded` of a history channel says about its position
/// and, after a `since`, about the recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// `None` for a history channel never written (or a server without history).
    pub epoch: Option<String>,
    /// The channel's last offset when the subscription took effect.
    pub offset: Option<u64>,
    /// `Some(true)`: every event after the `since` offset follows; `None` when no `since` was given
    /// (or the server does not know the extension).
    pub recovered: Option<bool>,
}

impl Frame {
    pub fn parse(text: &str) -> Result<Frame> {
        Ok(serde_json::from_str(text)?)
    }

    /// `data` as JSON: the server sends a JSON-encoded string, except where a client sent an object.
    pub fn data_json(&self) -> Value {
        match &self.data {
            Some(Value::String(s)) => {
                serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
            }
            Some(other) => other.clone(),
            None => Value::Null,
        }
    }

    /// The socket id of a `pusher:connection_established` frame.
    pub fn socket_id(&self) -> Result<String> {
        if self.event != "pusher:connection_established" {
            return Err(self.unexpected("pusher:connection_established"));
        }
        self.data_json()
            .get("socket_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Error::Protocol("connection_established without socket_id".into()))
    }

    /// A `pusher:error` frame as an error; other frames as a protocol error naming what was expected.
    pub fn unexpected(&self, expected: &str) -> Error {
        if self.event == "pusher:error" {
            let data = self.data_json();
            Error::ServerRejected {
                code: data.get("code").and_then(Value::as_i64),
                message: data
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            }
        } else if self.event == "pusher:subscription_error" {
            Error::SubscriptionFailed {
                channel: self.channel.clone().unwrap_or_default(),
                data: self.data_json().to_string(),
            }
        } else {
            Error::Protocol(format!("expected {expected}, got {}", self.event))
        }
    }

    /// The `user_id` of a presence member_added / member_removed frame.
    pub fn member_user_id(&self) -> Option<String> {
        match self.data_json().get("user_id")? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// The history position a `subscription_succeeded` frame carries.
    pub fn position(&self) -> Position {
        let data = self.data_json();
        Position {
            epoch: data.get("epoch").and_then(Value::as_str).map(str::to_owned),
            offset: data.get("offset").and_then(Value::as_u64),
            recovered: data.get("recovered").and_then(Value::as_bool),
        }
    }

    /// The member count of a presence `subscription_succeeded` frame.
    pub fn presence_count(&self) -> Option<u64> {
        self.data_json().get("presence")?.get("count")?.as_u64()
    }
}

/// What the receive loop needs to know about a frame, decided without a JSON parse when possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A benchmark event carrying a stamp.
    Stamped(crate::payload::Stamp),
    /// `pusher:ping`: answer with [`pong`].
    Ping,
    /// Anything else: parse it with [`Frame::parse`] if it matters.
    Other,
}

pub fn classify(frame: &[u8]) -> Kind {
    if let Some(stamp) = crate::payload::find(frame) {
        Kind::Stamped(stamp)
    } else if PING.find(frame).is_some() {
        Kind::Ping
    } else {
        Kind::Other
    }
}

pub fn pong() -> String {
    r#"{"event":"pusher:pong","data":{}}"#.to_owned()
}

/// A `pusher:subscribe` frame; `auth` and `channel_data` only for private and presence channels.
pub fn subscribe(channel: &str, auth: Option<&str>, channel_data: Option<&str>) -> String {
    let mut data = json!({ "channel": channel });
    if let Some(auth) = auth {
        data["auth"] = json!(auth);
    }
    if let Some(cd) = channel_data {
        data["channel_data"] = json!(cd);
    }
    json!({ "event": "pusher:subscribe", "data": data }).to_string()
}

/// A `pusher:subscribe` to a public history channel with Chorus's `since` extension: replay every
/// event after `offset` of `epoch`.
pub fn subscribe_since(channel: &str, epoch: &str, offset: u64) -> String {
    json!({
        "event": "pusher:subscribe",
        "data": { "channel": channel, "since": { "epoch": epoch, "offset": offset } },
    })
    .to_string()
}

pub fn unsubscribe(channel: &str) -> String {
    json!({ "event": "pusher:unsubscribe", "data": { "channel": channel } }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{self, Stamp};

    #[test]
    fn parses_connection_established() {
        let f = Frame::parse(
            r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":120}"}"#,
        )
        .unwrap();
        assert_eq!(f.socket_id().unwrap(), "123.456");
    }

    #[test]
    fn pusher_error_becomes_a_typed_error() {
        let f = Frame::parse(r#"{"event":"pusher:error","data":{"code":4001,"message":"no app"}}"#)
            .unwrap();
        match f.socket_id().unwrap_err() {
            Error::ServerRejected { code, message } => {
                assert_eq!(code, Some(4001));
                assert_eq!(message, "no app");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn subscription_error_names_the_channel() {
        let f = Frame::parse(
            r#"{"event":"pusher:subscription_error","channel":"private-a","data":"{\"type\":\"AuthError\",\"status\":401}"}"#,
        )
        .unwrap();
        assert!(matches!(
            f.unexpected("pusher_internal:subscription_succeeded"),
            Error::SubscriptionFailed { channel, .. } if channel == "private-a"
        ));
    }

    #[test]
    fn presence_frames() {
        let ok = Frame::parse(
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"presence-a","data":"{\"presence\":{\"ids\":[\"1\"],\"hash\":{\"1\":null},\"count\":1}}"}"#,
        )
        .unwrap();
        assert_eq!(ok.presence_count(), Some(1));
        let added = Frame::parse(
            r#"{"event":"pusher_internal:member_added","channel":"presence-a","data":"{\"user_id\":\"u-7\",\"user_info\":{}}"}"#,
        )
        .unwrap();
        assert_eq!(added.member_user_id().as_deref(), Some("u-7"));
        let numeric =
            Frame::parse(r#"{"event":"pusher_internal:member_removed","data":{"user_id":42}}"#)
                .unwrap();
        assert_eq!(numeric.member_user_id().as_deref(), Some("42"));
    }

    #[test]
    fn history_events_and_positions() {
        let e = Frame::parse(
            r#"{"event":"lt-bench","channel":"history-a","data":"x","offset":41,"epoch":"9f2c"}"#,
        )
        .unwrap();
        assert_eq!((e.offset, e.epoch.as_deref()), (Some(41), Some("9f2c")));
        let plain = Frame::parse(r#"{"event":"lt-bench","channel":"a","data":"x"}"#).unwrap();
        assert_eq!((plain.offset, plain.epoch), (None, None));
        let ok = Frame::parse(
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"history-a","data":"{\"epoch\":\"9f2c\",\"offset\":45,\"recovered\":true}"}"#,
        )
        .unwrap();
        assert_eq!(
            ok.position(),
            Position {
                epoch: Some("9f2c".into()),
                offset: Some(45),
                recovered: Some(true)
            }
        );
        let fresh = Frame::parse(
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"history-a","data":"{\"epoch\":null,\"offset\":0}"}"#,
        )
        .unwrap();
        assert_eq!(fresh.position().epoch, None);
        assert_eq!(fresh.position().recovered, None);
        let since: Value = serde_json::from_str(&subscribe_since("history-a", "9f2c", 41)).unwrap();
        assert_eq!(since["data"]["channel"], "history-a");
        assert_eq!(since["data"]["since"]["epoch"], "9f2c");
        assert_eq!(since["data"]["since"]["offset"], 41);
    }

    #[test]
    fn classifies_without_parsing() {
        let stamp = Stamp {
            stream: 1,
            seq: 2,
            sent_us: 3,
        };
        let bench = format!(
            r#"{{"event":"lt","channel":"c","data":"{}"}}"#,
            payload::encode(stamp, 40)
        );
        assert_eq!(classify(bench.as_bytes()), Kind::Stamped(stamp));
        assert_eq!(
            classify(br#"{"event":"pusher:ping","data":{}}"#),
            Kind::Ping
        );
        assert_eq!(classify(pong().as_bytes()), Kind::Other);
        assert_eq!(
            classify(br#"{"event":"pusher_internal:subscription_succeeded"}"#),
            Kind::Other
        );
    }

    #[test]
    fn subscribe_frames_carry_auth_only_when_given() {
        let public: Value = serde_json::from_str(&subscribe("a", None, None)).unwrap();
        assert_eq!(public["event"], "pusher:subscribe");
        assert_eq!(public["data"]["channel"], "a");
        assert!(public["data"].get("auth").is_none());
        let presence: Value = serde_json::from_str(&subscribe(
            "presence-a",
            Some("k:s"),
            Some("{\"user_id\":\"1\"}"),
        ))
        .unwrap();
        assert_eq!(presence["data"]["auth"], "k:s");
        assert_eq!(presence["data"]["channel_data"], "{\"user_id\":\"1\"}");
    }
}
