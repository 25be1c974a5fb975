//! A subscribed SSE receiver: counts stamped events (loss, duplicates, order, latency) on one
//! stream until told to stop, the same accounting as the WebSocket receiver in [`crate::subscriber`].
//! An SSE client sends nothing after its request: the server's heartbeats need no answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::common::Target;
use crate::deliveries::Deliveries;
use crate::error::Result;
use crate::payload;
use crate::pusher::sse::{self, SseStream};
use crate::subscriber::{stopped, Received, StampCounter};

/// Opens stream `index` on `channel` (for [`crate::ramp::run_with`]).
pub async fn connect(
    target: Arc<Target>,
    index: usize,
    channel: String,
    timeout: Duration,
) -> Result<SseStream> {
    sse::subscribe(&target, index, &channel, timeout).await
}

/// Counts stamped events on `stream` into a tracker and `deliveries` until `stop` turns true.
pub async fn receive(
    mut stream: SseStream,
    index: usize,
    deliveries: Arc<Deliveries>,
    stop: watch::Receiver<bool>,
) -> Received {
    let mut counter = StampCounter::new(index, deliveries);
    let mut ended_early = None;
    let mut pusher_errors = 0;
    let stopped = stopped(stop);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            event = stream.next_event() => match event {
                Ok(event) => {
                    if let Some(stamp) = payload::find(&event) {
                        counter.count(stamp);
                    } else if sse::event_name(&event) == Some(b"pusher:error") {
                        pusher_errors += 1;
                    }
                }
                Err(e) => {
                    ended_early = Some(e);
                    break;
                }
            }
        }
    }
    Received {
        tracker: counter.finish(),
        ended_early,
        pusher_errors,
    }
}
