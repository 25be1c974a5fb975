//! The HTTP API's publish bodies: one event (`POST /events`) or a batch (`POST /batch_events`),
//! parsed and checked against an app's limits into [`Trigger`]s, and the `info` attributes a
//! request may ask for. Plain functions of the bytes, so they can be fuzzed alone.

use serde::Deserialize;
use serde_json::Value;

use crate::config::Limits;
use crate::protocol::channel;
use crate::protocol::frame::SocketId;

/// Why a publish body was refused: the API answers 400 or 413 with the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
}

fn bad(message: impl Into<String>) -> PublishError {
    PublishError::BadRequest(message.into())
}

/// One event as published over the API.
#[derive(Debug, Deserialize)]
struct EventBody {
    name: String,
    data: Value,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BatchBody {
    batch: Vec<EventBody>,
}

/// Which channel attributes a request asked for in `info`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InfoWanted {
    pub user_count: bool,
    pub subscription_count: bool,
}

impl InfoWanted {
    /// `user_count,subscription_count` (and `cache`, which asks for nothing more); an unknown
    /// attribute is refused.
    pub fn parse(info: Option<&str>) -> Result<InfoWanted, PublishError> {
        let mut wanted = InfoWanted::default();
        for attr in info
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match attr {
                "user_count" => wanted.user_count = true,
                "subscription_count" => wanted.subscription_count = true,
                "cache" => {}
                other => return Err(bad(format!("unknown info attribute {other:?}"))),
            }
        }
        Ok(wanted)
    }

    pub fn any(self) -> bool {
        self.user_count || self.subscription_count
    }
}

/// A validated event, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub name: String,
    /// The data as subscribers get it: a JSON string as it is, anything else as its JSON text.
    pub data: String,
    /// At least one, at most the app's `max_channels_per_trigger`, each a valid name.
    pub channels: Vec<String>,
    pub except: Option<SocketId>,
    pub info: InfoWanted,
    /// A repeat of a publish with this key within the app's window is answered as the first
    /// one was and delivered once.
    pub key: Option<String>,
}

/// The longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 64;

/// Checks an idempotency key (from the body or the `X-Idempotency-Key` header): 1 to
/// [`MAX_IDEMPOTENCY_KEY_BYTES`] bytes.
pub fn validate_key(key: &str) -> Result<(), PublishError> {
    if key.is_empty() {
        return Err(bad("idempotency_key is empty"));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(bad(format!(
            "idempotency_key is {} bytes, over the limit of {MAX_IDEMPOTENCY_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

/// The body of `POST /events`.
pub fn parse_event(limits: &Limits, body: &[u8]) -> Result<Trigger, PublishError> {
    let event: EventBody = json(body)?;
    validate(limits, event, false)
}

/// The body of `POST /batch_events`: every event is validated, so an invalid one refuses the
/// whole batch.
pub fn parse_batch(limits: &Limits, body: &[u8]) -> Result<Vec<Trigger>, PublishError> {
    let batch: BatchBody = json(body)?;
    let max = limits.max_batch_events;
    if batch.batch.len() > max {
        return Err(bad(format!("at most {max} events per batch")));
    }
    batch
        .batch
        .into_iter()
        .map(|e| validate(limits, e, true))
        .collect()
}

fn json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, PublishError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

fn validate(limits: &Limits, body: EventBody, batch: bool) -> Result<Trigger, PublishError> {
    channel::validate_event_name(&body.name, limits.max_event_name_len)
        .map_err(|e| bad(format!("invalid event name: {e}")))?;
    if body.name.starts_with("pusher:") || body.name.starts_with("pusher_internal:") {
        return Err(bad(
            "event names starting with pusher: are reserved for the protocol",
        ));
    }
    let channels = match (body.channel, body.channels) {
        (Some(c), None) => vec![c],
        (None, Some(cs)) if !batch => cs,
        (Some(_), Some(_)) => return Err(bad("give channel or channels, not both")),
        _ if batch => return Err(bad("each batch event needs a channel")),
        _ => return Err(bad("channel or channels is required")),
    };
    if channels.is_empty() {
        return Err(bad("channels is empty"));
    }
    if channels.len() > limits.max_channels_per_trigger {
        return Err(bad(format!(
            "at most {} channels per event",
            limits.max_channels_per_trigger
        )));
    }
    for c in &channels {
        channel::validate_channel_name(c, limits.max_channel_name_len)
            .map_err(|e| bad(format!("invalid channel name {c:?}: {e}")))?;
    }
    let data = match body.data {
        Value::String(s) => s,
        other => other.to_string(),
    };
    if data.len() > limits.max_message_bytes {
        return Err(PublishError::TooLarge(format!(
            "event data is {} bytes, over the limit of {}",
            data.len(),
            limits.max_message_bytes
        )));
    }
    let except = match body.socket_id {
        Some(s) => Some(
            s.parse::<SocketId>()
                .map_err(|_| bad(format!("invalid socket_id {s:?}")))?,
        ),
        None => None,
    };
    let info = InfoWanted::parse(body.info.as_deref())?;
    if let Some(key) = &body.idempotency_key {
        validate_key(key)?;
    }
    Ok(Trigger {
        name: body.name,
        data,
        channels,
        except,
        info,
        key: body.idempotency_key,
    })
}
