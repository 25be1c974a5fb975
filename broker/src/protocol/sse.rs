//! The Server-Sent Events wire format: how a Pusher frame is written as an SSE event, the cursor
//! an SSE stream carries in its `id:` lines, and the token that opens private and presence
//! channels to an SSE client.
//!
//! An event is written as
//!
//! ```text
//! id: <cursor>                      (only when the stream's position moved)
//! event: <event name>
//! data: {"channel": ..., "data": ..., "offset"?: ..., "epoch"?: ..., "user_id"?: ...}
//! ```
//!
//! `data` is exactly what the Pusher frame carries (usually a JSON-encoded string). The cursor is
//! opaque to clients: base64url of `{"a": app id, "c": {channel: [epoch, offset]}}`, one entry per
//! history channel of the stream. A reconnecting `EventSource` sends it back as `Last-Event-ID`.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::since::Since;

/// Sent first on every stream: how long a browser waits before reconnecting.
pub const RETRY_MS: u64 = 1000;

/// A comment line that keeps proxies from closing an idle stream.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// The most bytes of a cursor a client may send back.
pub const MAX_CURSOR_LEN: usize = 64 * 1024;

/// Why a cursor sent back by a client was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CursorError {
    #[error("the cursor is over {MAX_CURSOR_LEN} bytes")]
    TooLong,
    #[error("the cursor is not one this server wrote")]
    Malformed,
    #[error("the cursor belongs to another app")]
    OtherApp,
}

/// Where an SSE stream is in each of its history channels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(rename = "a")]
    app: String,
    /// Channel -> (epoch, last offset seen). An empty epoch: the channel had no history yet.
    #[serde(rename = "c")]
    channels: BTreeMap<String, (String, u64)>,
}

impl Cursor {
    pub fn new(app: &str) -> Cursor {
        Cursor {
            app: app.to_owned(),
            channels: BTreeMap::new(),
        }
    }

    /// Reads a cursor this server wrote for `app`.
    pub fn decode(app: &str, text: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_CURSOR_LEN {
            return Err(CursorError::TooLong);
        }
        let json = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| CursorError::Malformed)?;
        let cursor: Cursor = serde_json::from_slice(&json).map_err(|_| CursorError::Malformed)?;
        if cursor.app != app {
            return Err(CursorError::OtherApp);
        }
        Ok(cursor)
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("a cursor always serialises"))
    }

    /// Where to resume `channel` from, if the cursor has been there.
    pub fn since(&self, channel: &str) -> Option<Since> {
        self.channels.get(channel).map(|(epoch, offset)| Since {
            epoch: epoch.clone(),
            offset: *offset,
        })
    }

    /// Keeps only the channels of the stream.
    pub fn retain(&mut self, channels: &[&str]) {
        self.channels.retain(|c, _| channels.contains(&c.as_str()));
    }

    fn set(&mut self, channel: &str, epoch: &str, offset: u64) -> bool {
        let position = (epoch.to_owned(), offset);
        match self.channels.get_mut(channel) {
            Some(current) if *current == position => false,
            Some(current) => {
                *current = position;
                true
            }
            None => {
                self.channels.insert(channel.to_owned(), position);
                true
            }
        }
    }
}

/// The string an app's backend signs to open private and presence channels to an SSE client:
/// `sse:{channels}:{expires}` or, with presence data, `sse:{channels}:{expires}:{channel_data}`.
/// `channels` is the `channels` query parameter exactly as sent.
pub fn token_string(channels: &str, expires: u64, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("sse:{channels}:{expires}:{data}"),
        None => format!("sse:{channels}:{expires}"),
    }
}

/// The first bytes of every stream.
pub fn preamble() -> Bytes {
    Bytes::from(format!("retry: {RETRY_MS}\n\n"))
}

/// A Pusher frame as it arrives from a channel or the connection.
#[derive(Deserialize)]
struct PusherFrame<'a> {
    #[serde(borrow)]
    event: &'a str,
    #[serde(borrow, default)]
    channel: Option<&'a str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user_id: Option<&'a str>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(borrow, default)]
    epoch: Option<&'a str>,
}

#[derive(Serialize)]
struct SseData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
}

/// The epoch and offset a history channel's `subscription_succeeded` reports.
#[derive(Deserialize)]
struct Position {
    epoch: Option<String>,
    offset: u64,
}

/// A frame written as SSE, once for every SSE stream it goes to: its `event:` and `data:` lines,
/// and the history position it moves a stream's cursor to.
#[derive(Debug)]
pub struct Encoded {
    body: Bytes,
    /// (channel, epoch, offset) of a history event or a history channel's confirmation.
    position: Option<(String, String, u64)>,
}

/// Writes a Pusher frame (JSON text) as an SSE event.
pub fn encode(frame: &str) -> Encoded {
    let Ok(f) = serde_json::from_str::<PusherFrame>(frame) else {
        // Every frame the server builds parses; keep the stream well-formed regardless.
        return Encoded {
            body: Bytes::from_static(b": unreadable frame dropped\n\n"),
            position: None,
        };
    };
    let position = match (f.channel, f.offset, f.epoch, f.data) {
        (Some(channel), Some(offset), Some(epoch), _) => {
            Some((channel.to_owned(), epoch.to_owned(), offset))
        }
        (Some(channel), None, _, Some(data))
            if f.event == "pusher_internal:subscription_succeeded" =>
        {
            serde_json::from_str::<String>(data.get())
                .ok()
                .and_then(|text| serde_json::from_str::<Position>(&text).ok())
                .map(|p| (channel.to_owned(), p.epoch.unwrap_or_default(), p.offset))
        }
        _ => None,
    };
    let data = SseData {
        channel: f.channel,
        data: f.data,
        user_id: f.user_id,
        offset: f.offset,
        epoch: f.epoch,
    };
    let mut out = Vec::with_capacity(frame.len() + 32);
    out.extend_from_slice(b"event: ");
    // Event names hold no control characters (they are checked where they enter).
    out.extend_from_slice(f.event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    serde_json::to_writer(&mut out, &data).expect("writing to a Vec cannot fail");
    out.extend_from_slice(b"\n\n");
    Encoded {
        body: Bytes::from(out),
        position,
    }
}

/// The event for one stream: the shared lines, after an `id:` line when the event moves the
/// stream's cursor.
pub fn event(encoded: &Encoded, cursor: &mut Cursor) -> Bytes {
    match &encoded.position {
        Some((channel, epoch, offset)) if cursor.set(channel, epoch, *offset) => {
            let id = cursor.encode();
            let mut out = Vec::with_capacity(id.len() + 5 + encoded.body.len());
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(id.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(&encoded.body);
            Bytes::from(out)
        }
        _ => encoded.body.clone(),
    }
}

/// The last event of a stream the server closes: `pusher:error` with the close code.
pub fn closing(code: u16, message: &str) -> Bytes {
    let data = serde_json::json!({"code": code, "message": message});
    Bytes::from(format!("event: pusher:error\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame;

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn plain_events_carry_no_id() {
        let mut cursor = Cursor::new("1");
        let f = frame::event("news", "update", r#"{"a":1}"#);
        assert_eq!(
            text(event(&encode(&f.text), &mut cursor)),
            "event: update\ndata: {\"channel\":\"news\",\"data\":\"{\\\"a\\\":1}\"}\n\n"
        );
        assert_eq!(cursor, Cursor::new("1"));
    }

    #[test]
    fn history_events_move_the_cursor_and_it_round_trips() {
        let mut cursor = Cursor::new("1");
        let f = frame::history_event("chat", "msg", "hi", 7, "E1");
        let out = text(event(&encode(&f.text), &mut cursor));
        let id = out.lines().next().unwrap().strip_prefix("id: ").unwrap();
        let back = Cursor::decode("1", id).unwrap();
        assert_eq!(back.since("chat").unwrap().offset, 7);
        assert_eq!(back.since("chat").unwrap().epoch, "E1");
        assert!(out.contains("\"offset\":7,\"epoch\":\"E1\""));
        assert_eq!(Cursor::decode("2", id), Err(CursorError::OtherApp));
        assert_eq!(Cursor::decode("1", "%%%"), Err(CursorError::Malformed));
        assert_eq!(Cursor::decode("1", "e30"), Err(CursorError::Malformed));
        assert_eq!(
            Cursor::decode("1", &"A".repeat(MAX_CURSOR_LEN + 1)),
            Err(CursorError::TooLong)
        );
    }

    #[test]
    fn confirmations_of_history_channels_set_the_start() {
        let mut cursor = Cursor::new("1");
        let data = serde_json::json!({"epoch": null, "offset": 0, "recovered": false});
        let f = frame::subscription_succeeded("chat", &data);
        let out = text(event(&encode(&f.text), &mut cursor));
        assert!(out.starts_with("id: "), "{out}");
        assert_eq!(cursor.since("chat").unwrap().epoch, "");
        // A confirmation without a position (not a history channel) leaves the cursor alone.
        let f = frame::subscription_succeeded("news", &serde_json::json!({}));
        assert!(text(event(&encode(&f.text), &mut cursor)).starts_with("event: "));
        assert!(cursor.since("news").is_none());
    }

    #[test]
    fn token_strings() {
        assert_eq!(token_string("a,b", 10, None), "sse:a,b:10");
        assert_eq!(
            token_string("presence-x", 10, Some(r#"{"user_id":"u"}"#)),
            r#"sse:presence-x:10:{"user_id":"u"}"#
        );
    }
}
