//! Publishing what one HTTP API request carries (one event, or a batch), all or nothing.
//!
//! Each event is first staged ([`Pending::stage`]): its frames for channels without history,
//! the events for history channels, and the idempotency keys it claims. Then [`Pending::settle`]
//! publishes everything or nothing:
//!
//! 1. every frame of a channel without history is admitted by its channel on this node; one too
//!    far behind refuses the whole request (429);
//! 2. the history events are committed by the cluster as one log entry; not committed in time,
//!    nothing else of the request goes out (503), and what step 1 took is given back (the entry
//!    may still be committed later: a retry with idempotency keys stores it once);
//! 3. the admitted frames go out, here and to the other nodes;
//! 4. cache channels' last events are made durable.
//!
//! A key this node claimed for a channel without history is in progress until the request is
//! answered: a repeat arriving meanwhile is told so (409), not answered as a publish that may
//! yet be refused; once out, a repeat within the window is answered as the first was and not
//! delivered again (see [`crate::recent_keys`]). The settling runs to its end even when the
//! publisher goes away before the answer.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

use crate::apps::App;
use crate::http::api::{storage_error, ApiError};
use crate::node::Node;
use crate::protocol::channel::ChannelKind;
use crate::protocol::frame::{self, Frame, SocketId};
use crate::protocol::publish::Trigger;
use crate::recent_keys::{Claim, Claims};
use crate::router;

/// What a publish request leaves to do before it is acknowledged.
pub struct Pending {
    /// Frames of channels without history, in order.
    live: Vec<(String, Frame, Option<SocketId>)>,
    /// History events, to be committed by the cluster.
    history: router::PendingHistory,
    /// A cache channel's last event will be stored and must be made durable.
    cached: bool,
    /// The idempotency keys this request claimed for its frames of channels without history.
    claims: Claims,
}

impl Pending {
    pub fn new(app: &App) -> Pending {
        Pending {
            live: Vec::new(),
            history: router::PendingHistory::default(),
            cached: false,
            claims: app.history.recent_keys.claims(),
        }
    }

    /// Stages a validated event: on a history channel it joins the history events; on any other
    /// channel its frame joins the live ones, unless its idempotency key went out from this node
    /// within the app's window (a repeat). Refused (409) while another request holds the key.
    pub fn stage(&mut self, app: &App, t: &Trigger) -> Result<(), ApiError> {
        let live = |c: &String| !app.history.keeps(c);
        let mut repeat = false;
        if let Some(key) = t.key.as_deref().filter(|_| t.channels.iter().any(live)) {
            let window = Duration::from_secs(app.limits.idempotency_window_secs);
            match self.claims.claim(key, window) {
                Claim::Fresh => {}
                Claim::Repeat => repeat = true,
                Claim::InProgress => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!(
                            "a publish with idempotency key {key} is still in progress; \
                             send this again once it is answered"
                        ),
                    ))
                }
            }
        }
        for c in &t.channels {
            if app.history.keeps(c) {
                app.metrics.published_api.inc();
                self.history
                    .push(c, t.except, &t.name, &t.data, t.key.as_deref());
            } else if !repeat {
                app.metrics.published_api.inc();
                let frame = frame::event(c, &t.name, &t.data);
                self.live.push((c.clone(), frame, t.except));
                self.cached |= ChannelKind::of(c).cache;
            }
        }
        Ok(())
    }

    /// Publishes what was staged, all or nothing (see the module's doc), and returns where each
    /// history event was placed. Runs to its end on its own task: a publisher that goes away
    /// does not cut a publish in half.
    pub async fn settle(
        self,
        node: &web::Data<Node>,
        app: &Arc<App>,
    ) -> Result<Vec<router::HistoryPlaced>, ApiError> {
        let (node, app) = (node.clone(), app.clone());
        actix_rt::spawn(async move { self.publish(&node, &app).await })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "a publish's task failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the publish failed")
            })?
    }

    async fn publish(self, node: &Node, app: &App) -> Result<Vec<router::HistoryPlaced>, ApiError> {
        let Pending {
            live,
            history,
            cached,
            claims,
        } = self;
        // Dropped on a refusal below, `admitted` gives back what it took and `claims` its keys.
        let admitted = router::admit_all(app, live).map_err(|e| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{e}; nothing of this request was published"),
            )
        })?;
        let mut placed = Vec::new();
        if !history.is_empty() {
            let window = Duration::from_secs(app.limits.idempotency_window_secs);
            placed = history
                .publish(&node.cluster, app, window)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "history publish not committed");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "the history events were not committed in time (they may still \
                             be) and nothing else of this request was published; publish it \
                             again, with idempotency keys to store them once: {e}"
                        ),
                    )
                })?;
        }
        router::publish_admitted(app, admitted);
        claims.confirm();
        if cached {
            app.history.store.flush().await.map_err(storage_error)?;
        }
        Ok(placed)
    }
}

/// The answer to a publish: `body`, with where each history event was placed, in the order
/// given (the same for a repeat of an idempotent publish).
pub fn answer(mut body: Map<String, Value>, placed: Vec<router::HistoryPlaced>) -> HttpResponse {
    if !placed.is_empty() {
        let history = placed
            .into_iter()
            .map(|p| json!({"channel": p.channel, "epoch": p.epoch, "offset": p.offset}))
            .collect();
        body.insert("history".into(), Value::Array(history));
    }
    HttpResponse::Ok().json(Value::Object(body))
}
