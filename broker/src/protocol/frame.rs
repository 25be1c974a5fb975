//! Pusher protocol frames: parsing what clients send, and building what the server sends.
//!
//! A client frame is JSON `{"event", "channel"?, "data"?}`. A server frame carries `data` as a
//! JSON-encoded string, except where a client sent an object (client events are relayed as they
//! came). Outgoing frames are built once into a [`Frame`] whose bytes every subscriber shares.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::since::Since;
use super::sse;
use super::websocket;

pub use super::socket_id::{SocketId, SocketIds};

/// An encoded server frame, shared by every connection it goes to.
#[derive(Debug, Clone)]
pub struct Frame {
    pub text: ByteString,
    /// When the message entered the node (for the publish-to-write latency histogram).
    pub published_at: Instant,
    /// The frame as each transport writes it, made by the first connection of that transport
    /// it goes to.
    wire: Arc<Wire>,
}

#[derive(Debug, Default)]
struct Wire {
    websocket: OnceLock<Bytes>,
    sse: OnceLock<sse::Encoded>,
}

impl Frame {
    /// A frame encoded earlier (e.g. a cache channel's last event read back from the store).
    pub fn from_text(text: String) -> Frame {
        Frame::from_json(text)
    }

    fn from_json(json: String) -> Frame {
        Frame {
            text: ByteString::from(json),
            published_at: Instant::now(),
            wire: Arc::default(),
        }
    }

    /// The frame as a WebSocket text frame (header and payload), encoded once for every socket
    /// it goes to: server frames are unmasked, so the bytes are the same on each.
    pub fn websocket(&self) -> &Bytes {
        self.wire
            .websocket
            .get_or_init(|| websocket::text_frame(&self.text))
    }

    /// The frame as an SSE event, encoded once for every SSE stream it goes to.
    pub fn sse(&self) -> &sse::Encoded {
        self.wire.sse.get_or_init(|| sse::encode(&self.text))
    }

    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

#[derive(Serialize)]
struct Out<'a, D: Serialize + ?Sized> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: &'a D,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

fn encode<D: Serialize + ?Sized>(
    event: &str,
    channel: Option<&str>,
    data: &D,
    user_id: Option<&str>,
) -> Frame {
    let out = Out {
        event,
        channel,
        data,
        user_id,
    };
    Frame::from_json(serde_json::to_string(&out).expect("frames always serialise"))
}

/// An event published on a channel; `data` is the string the publisher sent.
pub fn event(channel: &str, event_name: &str, data: &str) -> Frame {
    encode(event_name, Some(channel), data, None)
}

/// An event of a history channel: it also carries its offset and the channel's epoch, which
/// pusher-js ignores and a recovering client remembers.
pub fn history_event(
    channel: &str,
    event_name: &str,
    data: &str,
    offset: u64,
    epoch: &str,
) -> Frame {
    #[derive(Serialize)]
    struct Out<'a> {
        event: &'a str,
        channel: &'a str,
        data: &'a str,
        offset: u64,
        epoch: &'a str,
    }
    let out = Out {
        event: event_name,
        channel,
        data,
        offset,
        epoch,
    };
    Frame::from_json(serde_json::to_string(&out).expect("frames always serialise"))
}

/// A client event relayed as the client sent it (object data stays an object).
pub fn client_event(
    channel: &str,
    event_name: &str,
    data: &RawValue,
    user_id: Option<&str>,
) -> Frame {
    encode(event_name, Some(channel), data, user_id)
}

/// A protocol frame whose data is a JSON object encoded as a string.
pub fn internal(event_name: &str, channel: Option<&str>, data: &serde_json::Value) -> Frame {
    encode(event_name, channel, &data.to_string(), None)
}

pub fn connection_established(socket_id: SocketId, activity_timeout: u64) -> Frame {
    internal(
        "pusher:connection_established",
        None,
        &serde_json::json!({"socket_id": socket_id.to_string(), "activity_timeout": activity_timeout}),
    )
}

/// `pusher:error`; `code` is `None` for errors the protocol gives no code.
pub fn error(code: Option<u16>, message: &str) -> Frame {
    encode(
        "pusher:error",
        None,
        &serde_json::json!({"code": code, "message": message}),
        None,
    )
}

pub fn pong() -> Frame {
    encode("pusher:pong", None, &serde_json::json!({}), None)
}

pub fn ping() -> Frame {
    encode("pusher:ping", None, &serde_json::json!({}), None)
}

pub fn subscription_succeeded(channel: &str, data: &serde_json::Value) -> Frame {
    internal(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        data,
    )
}

/// `pusher:subscription_error` with `{type, error, status}`.
pub fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> Frame {
    encode(
        "pusher:subscription_error",
        Some(channel),
        &serde_json::json!({"type": kind, "error": message, "status": status}),
        None,
    )
}

pub fn cache_miss(channel: &str) -> Frame {
    encode(
        "pusher:cache_miss",
        Some(channel),
        &serde_json::json!({}),
        None,
    )
}

/// A frame a client sent, before its event is interpreted.
#[derive(Debug, Deserialize)]
pub struct ClientFrame {
    pub event: String,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

/// What a client asked for.
#[derive(Debug)]
pub enum ClientMessage {
    Ping,
    Pong,
    Subscribe(SubscribeData),
    Unsubscribe {
        channel: String,
    },
    Signin(SigninData),
    /// `client-*` on a channel.
    ClientEvent {
        event: String,
        channel: String,
        data: Box<RawValue>,
    },
}

#[derive(Debug, Deserialize)]
pub struct SubscribeData {
    pub channel: String,
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub channel_data: Option<String>,
    /// Chorus extension: the last event the client saw on this history channel.
    #[serde(default)]
    pub since: Option<Since>,
}

#[derive(Debug, Deserialize)]
pub struct SigninData {
    pub auth: String,
    pub user_data: String,
}

#[derive(Debug, Deserialize)]
struct UnsubscribeData {
    channel: String,
}

/// Why a client frame was not understood (answered with `pusher:error`, code null).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame is not a JSON object with a string `event`: {0}")]
    NotJson(String),
    #[error("`{event}` needs a `data` object: {reason}")]
    BadData { event: String, reason: String },
    #[error("client events need a `channel`")]
    MissingChannel,
    #[error("unknown event `{0}`")]
    UnknownEvent(String),
}

/// `data` may arrive as an object or as a JSON-encoded string of one.
fn data_object<T: for<'de> Deserialize<'de>>(
    event: &str,
    data: Option<&RawValue>,
) -> Result<T, FrameError> {
    let bad = |reason: String| FrameError::BadData {
        event: event.to_owned(),
        reason,
    };
    let raw = data.ok_or_else(|| bad("missing".into()))?.get();
    let parsed = if raw.starts_with('"') {
        let inner: String = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        serde_json::from_str(&inner)
    } else {
        serde_json::from_str(raw)
    };
    parsed.map_err(|e| bad(e.to_string()))
}

/// Interprets one text frame from a client.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, FrameError> {
    let frame: ClientFrame =
        serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
    let data = frame.data.as_deref();
    match frame.event.as_str() {
        "pusher:ping" => Ok(ClientMessage::Ping),
        "pusher:pong" => Ok(ClientMessage::Pong),
        "pusher:subscribe" => Ok(ClientMessage::Subscribe(data_object(&frame.event, data)?)),
        "pusher:unsubscribe" => {
            let d: UnsubscribeData = data_object(&frame.event, data)?;
            Ok(ClientMessage::Unsubscribe { channel: d.channel })
        }
        "pusher:signin" => Ok(ClientMessage::Signin(data_object(&frame.event, data)?)),
        name if name.starts_with("client-") => {
            let channel = frame.channel.ok_or(FrameError::MissingChannel)?;
            let data = frame
                .data
                .unwrap_or_else(|| RawValue::from_string("null".into()).expect("valid JSON"));
            Ok(ClientMessage::ClientEvent {
                event: frame.event,
                channel,
                data,
            })
        }
        _ => Err(FrameError::UnknownEvent(frame.event)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_carry_string_data() {
        let f = event("chat", "msg", "{\"a\":1}");
        let v: serde_json::Value = serde_json::from_str(&f.text).unwrap();
        assert_eq!(v["event"], "msg");
        assert_eq!(v["channel"], "chat");
        assert_eq!(v["data"], "{\"a\":1}");
        let f = connection_established("1.2".parse().unwrap(), 120);
        let v: serde_json::Value = serde_json::from_str(&f.text).unwrap();
        let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["socket_id"], "1.2");
        assert_eq!(data["activity_timeout"], 120);
    }

    #[test]
    fn client_events_keep_object_data_and_add_user_id() {
        let raw = RawValue::from_string("{\"x\":[1,2]}".into()).unwrap();
        let f = client_event("presence-a", "client-typing", &raw, Some("u1"));
        let v: serde_json::Value = serde_json::from_str(&f.text).unwrap();
        assert_eq!(v["data"]["x"][1], 2);
        assert_eq!(v["user_id"], "u1");
    }

    #[test]
    fn parses_client_messages() {
        assert!(matches!(
            parse_client_message(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        ));
        match parse_client_message(
            r#"{"event":"pusher:subscribe","data":{"channel":"private-a","auth":"k:s"}}"#,
        ) {
            Ok(ClientMessage::Subscribe(s)) => {
                assert_eq!(s.channel, "private-a");
                assert_eq!(s.auth.as_deref(), Some("k:s"));
            }
            other => panic!("{other:?}"),
        }
        // data as a JSON-encoded string, as some clients send it
        match parse_client_message(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#) {
            Ok(ClientMessage::Subscribe(s)) => assert_eq!(s.channel, "a"),
            other => panic!("{other:?}"),
        }
        match parse_client_message(r#"{"event":"client-x","channel":"private-a","data":{"k":1}}"#) {
            Ok(ClientMessage::ClientEvent {
                event,
                channel,
                data,
            }) => {
                assert_eq!(event, "client-x");
                assert_eq!(channel, "private-a");
                assert_eq!(data.get(), "{\"k\":1}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_malformed_frames() {
        let cases = [
            "not json",
            "[]",
            "{}",
            r#"{"event":1}"#,
            r#"{"event":"pusher:subscribe"}"#,
            r#"{"event":"pusher:subscribe","data":{"channel":5}}"#,
            r#"{"event":"pusher:subscribe","data":"not json"}"#,
            r#"{"event":"pusher:unsubscribe","data":{}}"#,
            r#"{"event":"pusher:signin","data":{"auth":"x"}}"#,
            r#"{"event":"client-x","data":{}}"#,
            r#"{"event":"pusher:nope","data":{}}"#,
            r#"{"event":"hello"}"#,
        ];
        for text in cases {
            assert!(parse_client_message(text).is_err(), "{text}");
        }
    }
}
