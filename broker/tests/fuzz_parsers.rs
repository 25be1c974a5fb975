//! Structured fuzzing (proptest, stable Rust) of every broker parser that sees network input:
//! WebSocket frames, Pusher client messages, socket ids, signed API queries, the API's publish
//! bodies and SSE cursors.
//! Properties, not only "no panic": frames decode to exactly what was encoded however the bytes
//! are split, no message over the limit ever comes out, errors are typed; a query signed here
//! (with an HMAC of the test's own) verifies and any change to it does not; a cursor reads back
//! what it holds.
//!
//! The normal test command runs a few hundred cases each; `PROPTEST_CASES=1000000` runs long.

use base64::Engine;
use bytes::BytesMut;
use hmac::{Hmac, KeyInit, Mac};
use proptest::prelude::*;

use chorus_broker::config::Limits;
use chorus_broker::protocol::frame::{parse_client_message, ClientMessage, SocketId};
use chorus_broker::protocol::publish::{parse_batch, parse_event, PublishError};
use chorus_broker::protocol::signature::{verify_query, RequestAuthError, SignedQuery};
use chorus_broker::protocol::sse::{Cursor, CursorError, MAX_CURSOR_LEN};
use chorus_broker::protocol::websocket::{encode_client_frame, Decoder, FrameError, Incoming};

/// A message a client may send, and how it is cut into frames.
#[derive(Debug, Clone)]
enum Sent {
    Text(String, Vec<usize>),
    Binary(Vec<u8>, Vec<usize>),
    Ping(Vec<u8>),
}

fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![
        (".{0,300}", prop::collection::vec(1usize..100, 0..4)).prop_map(|(t, c)| Sent::Text(t, c)),
        (
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(1usize..100, 0..4)
        )
            .prop_map(|(b, c)| Sent::Binary(b, c)),
        prop::collection::vec(any::<u8>(), 0..=125).prop_map(Sent::Ping),
    ]
}

/// The frames of a message cut at `cuts` (fragment lengths), and what it decodes to.
fn frames_of(sent: &Sent, mask: [u8; 4]) -> (Vec<u8>, Incoming) {
    let (opcode, payload, cuts, expected) = match sent {
        Sent::Text(t, c) => (
            1,
            t.as_bytes().to_vec(),
            c,
            Incoming::Text(t.as_str().into()),
        ),
        Sent::Binary(b, c) => (2, b.clone(), c, Incoming::Binary(b.clone().into())),
        Sent::Ping(p) => {
            return (
                encode_client_frame(true, 9, mask, p),
                Incoming::Ping(p.clone().into()),
            )
        }
    };
    let mut out = Vec::new();
    let mut rest = &payload[..];
    let mut first = true;
    for &cut in cuts {
        if cut >= rest.len() {
            break;
        }
        out.extend(encode_client_frame(
            false,
            if first { opcode } else { 0 },
            mask,
            &rest[..cut],
        ));
        rest = &rest[cut..];
        first = false;
    }
    out.extend(encode_client_frame(
        true,
        if first { opcode } else { 0 },
        mask,
        rest,
    ));
    (out, expected)
}

fn payload_len(m: &Incoming) -> usize {
    match m {
        Incoming::Text(t) => t.len(),
        Incoming::Binary(b) | Incoming::Ping(b) | Incoming::Pong(b) => b.len(),
        Incoming::Close(_) => 0,
    }
}

/// Feeds `bytes` to a decoder in chunks of `chunk` bytes, as a socket would deliver them.
fn decode_in_chunks(
    limit: usize,
    bytes: &[u8],
    chunk: usize,
) -> (Vec<Incoming>, Option<FrameError>, usize) {
    let mut decoder = Decoder::new(limit);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut most_buffered = 0;
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        most_buffered = most_buffered.max(buf.len());
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e), most_buffered),
            }
        }
    }
    (out, None, most_buffered)
}

proptest! {
    /// Messages come out exactly as sent, whatever the fragmenting and however the socket
    /// splits the bytes; each whole and within the limit, or refused as too big.
    #[test]
    fn frames_round_trip_within_the_limit(
        messages in prop::collection::vec(sent(), 1..6),
        mask in any::<[u8; 4]>(),
        chunk in 1usize..200,
        limit in 0usize..400,
    ) {
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for m in &messages {
            let (frames, decoded) = frames_of(m, mask);
            bytes.extend(frames);
            expected.push(decoded);
        }
        let (out, error, _) = decode_in_chunks(limit, &bytes, chunk);
        let fits = expected.iter().take_while(|m| {
            matches!(m, Incoming::Ping(_)) || payload_len(m) <= limit
        }).count();
        prop_assert_eq!(&out[..], &expected[..fits]);
        for m in &out {
            prop_assert!(matches!(m, Incoming::Ping(_)) || payload_len(m) <= limit);
        }
        if fits < expected.len() {
            prop_assert!(matches!(error, Some(FrameError::TooBig { .. })), "{:?}", error);
        } else {
            prop_assert_eq!(error, None);
        }
    }

    /// Arbitrary bytes never panic, never yield a message over the limit, and never make the
    /// decoder hold more than a frame header and the limit beyond one read.
    #[test]
    fn arbitrary_bytes_are_decoded_or_refused_with_a_close_code(
        bytes in prop::collection::vec(any::<u8>(), 0..2000),
        chunk in 1usize..300,
        limit in 0usize..500,
    ) {
        let (out, error, most_buffered) = decode_in_chunks(limit, &bytes, chunk);
        for m in &out {
            prop_assert!(payload_len(m) <= limit.max(125));
        }
        if let Some(e) = error {
            prop_assert!([1002, 1007, 1009].contains(&e.close_code()));
        }
        prop_assert!(most_buffered <= 14 + limit.max(125) + chunk);
    }

    /// A header that declares more than the limit is refused before its payload arrives.
    #[test]
    fn an_oversized_header_is_refused_alone(
        declared in 1u64..(1 << 62),
        limit in 0usize..100_000,
        opcode in prop::sample::select(vec![1u8, 2]),
    ) {
        prop_assume!(declared > limit as u64);
        let mut header = vec![0x80 | opcode, 0xFF];
        header.extend_from_slice(&declared.to_be_bytes());
        let mut buf = BytesMut::from(&header[..]);
        let refused = Decoder::new(limit).decode(&mut buf);
        prop_assert_eq!(refused, Err(FrameError::TooBig { declared, limit }));
    }

    /// Any text is a client message or a typed error; a subscribe built here is read back.
    #[test]
    fn client_messages_parse_or_fail_typed(text in ".{0,400}") {
        let _ = parse_client_message(&text);
    }

    #[test]
    fn subscribes_read_back(
        channel in "[A-Za-z0-9_=@,.;-]{1,100}",
        auth in proptest::option::of("[a-z0-9:]{1,80}"),
        as_string in any::<bool>(),
    ) {
        let data = serde_json::json!({"channel": channel, "auth": auth});
        let data = if as_string { serde_json::Value::String(data.to_string()) } else { data };
        let text = serde_json::json!({"event": "pusher:subscribe", "data": data}).to_string();
        match parse_client_message(&text) {
            Ok(ClientMessage::Subscribe(s)) => {
                prop_assert_eq!(s.channel, channel);
                prop_assert_eq!(s.auth, auth);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// Socket ids: anything parses or is refused; what parses prints back the same.
    #[test]
    fn socket_ids_round_trip(text in "[0-9.]{0,24}|.{0,24}", a in any::<u32>(), b in any::<u32>()) {
        if let Ok(id) = text.parse::<SocketId>() {
            prop_assert_eq!(id.to_string().parse::<SocketId>(), Ok(id));
        }
        let id = SocketId { high: a, low: b };
        prop_assert_eq!(id.to_string().parse::<SocketId>(), Ok(id));
    }

    /// A query signed with the app's secret verifies; changing any parameter, the method or the
    /// path makes it fail; arbitrary parameters never panic.
    #[test]
    fn signed_queries_verify_and_tampering_fails(
        extra in prop::collection::vec(("[a-z_]{1,12}", "[ -~]{0,30}"), 0..5),
        tamper in any::<prop::sample::Index>(),
        garbage in prop::collection::vec((".{0,20}", ".{0,40}"), 0..8),
    ) {
        let now = 1_700_000_000i64;
        let mut params: Vec<(String, String)> = vec![
            ("auth_key".into(), "key".into()),
            ("auth_timestamp".into(), now.to_string()),
            ("auth_version".into(), "1.0".into()),
            ("body_md5".into(), "0".repeat(32)),
        ];
        for (k, v) in extra {
            if !params.iter().any(|(pk, _)| *pk == k) {
                params.push((k, v));
            }
        }
        let mut sorted = params.clone();
        sorted.sort();
        let query: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let to_sign = format!("POST\n/apps/1/events\n{}", query.join("&"));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(to_sign.as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        let mut signed = params.clone();
        signed.push(("auth_signature".into(), signature));
        let check = |method: &str, path: &str, params: &[(String, String)]| {
            verify_query(&SignedQuery { method, path, params }, "key", "secret", now)
        };
        prop_assert!(check("POST", "/apps/1/events", &signed).is_ok());
        prop_assert!(check("GET", "/apps/1/events", &signed).is_err());
        prop_assert!(check("POST", "/apps/2/events", &signed).is_err());
        let i = tamper.index(params.len());
        let mut changed = signed.clone();
        changed[i].1.push('x');
        prop_assert!(check("POST", "/apps/1/events", &changed).is_err());
        let _ = check("POST", "/", &garbage);
        let refused = check("POST", "/apps/1/events", &params);
        prop_assert_eq!(refused, Err(RequestAuthError::Missing("auth_signature")));
    }

    /// A cursor reads back the channels it holds; anything else is refused typed.
    #[test]
    fn cursors_read_back_or_are_refused(
        app in "[a-z0-9-]{1,10}",
        channels in prop::collection::btree_map("[a-z0-9-]{1,20}", ("[a-f0-9]{0,16}", any::<u64>()), 0..5),
        garbage in ".{0,200}",
    ) {
        let json = serde_json::json!({"a": app, "c": channels});
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string());
        let cursor = Cursor::decode(&app, &text).unwrap();
        for (channel, (epoch, offset)) in &channels {
            let since = cursor.since(channel).unwrap();
            prop_assert_eq!(&since.epoch, epoch);
            prop_assert_eq!(since.offset, *offset);
        }
        prop_assert_eq!(Cursor::decode(&app, &cursor.encode()), Ok(cursor));
        prop_assert_eq!(Cursor::decode("OTHER", &text), Err(CursorError::OtherApp));
        match Cursor::decode(&app, &garbage) {
            Ok(c) => prop_assert_eq!(Cursor::decode(&app, &c.encode()), Ok(c)),
            Err(e) => prop_assert!(matches!(e, CursorError::Malformed | CursorError::OtherApp)),
        }
        let long = "A".repeat(MAX_CURSOR_LEN + 1);
        prop_assert_eq!(Cursor::decode(&app, &long), Err(CursorError::TooLong));
    }

    /// Publish bodies: whatever is accepted is within the app's limits; a well-formed event is
    /// accepted exactly when it fits them, and reads back what it said.
    #[test]
    fn publish_bodies_are_within_the_limits_or_refused(
        garbage in ".{0,300}",
        name in "[a-z0-9_-]{1,12}",
        channels in prop::collection::vec("[a-zA-Z0-9_=@,.;-]{1,12}", 1..6),
        data in ".{0,80}",
        max_message_bytes in 1usize..100,
        max_channels_per_trigger in 1usize..5,
        max_batch_events in 1usize..4,
        batch_len in 0usize..6,
    ) {
        let limits = Limits {
            max_message_bytes,
            max_channels_per_trigger,
            max_batch_events,
            ..Limits::default()
        };
        let within = |t: &chorus_broker::protocol::publish::Trigger| {
            !t.channels.is_empty()
                && t.channels.len() <= max_channels_per_trigger
                && t.data.len() <= max_message_bytes
                && !t.name.starts_with("pusher")
        };
        if let Ok(t) = parse_event(&limits, garbage.as_bytes()) {
            prop_assert!(within(&t), "{t:?}");
        }
        if let Ok(ts) = parse_batch(&limits, garbage.as_bytes()) {
            prop_assert!(ts.len() <= max_batch_events && ts.iter().all(within));
        }
        let body = serde_json::json!({"name": name, "data": data, "channels": channels});
        let fits = data.len() <= max_message_bytes && channels.len() <= max_channels_per_trigger;
        match parse_event(&limits, body.to_string().as_bytes()) {
            Ok(t) => {
                prop_assert!(fits);
                prop_assert_eq!(&t.name, &name);
                prop_assert_eq!(&t.data, &data);
                prop_assert_eq!(&t.channels, &channels);
            }
            Err(PublishError::TooLarge(_)) => prop_assert!(data.len() > max_message_bytes),
            Err(PublishError::BadRequest(e)) => {
                prop_assert!(channels.len() > max_channels_per_trigger, "{e}")
            }
        }
        let one = serde_json::json!({"name": name, "data": "x", "channel": channels[0]});
        let batch = serde_json::json!({"batch": vec![one; batch_len]});
        let parsed = parse_batch(&limits, batch.to_string().as_bytes());
        prop_assert_eq!(parsed.is_ok(), batch_len <= max_batch_events && max_message_bytes >= 1);
    }
}
