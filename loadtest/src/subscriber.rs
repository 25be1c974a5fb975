//! A subscribed receiver: connects, subscribes to one public channel, then counts stamped events
//! (loss, duplicates, order, latency) until told to stop, answering pings on the way.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::common::Target;
use crate::deliveries::Deliveries;
use crate::error::{Error, Result};
use crate::payload;
use crate::pusher::frame::{self, Frame, Kind};
use crate::pusher::signing::private_channel_auth;
use crate::pusher::ws::{self, Ws};
use crate::sequence::{Arrival, Tracker};

/// How many latencies a receiver buffers before taking the shared histogram's lock.
const LATENCY_BATCH: usize = 256;

/// A connection that is subscribed.
pub struct Subscribed {
    pub ws: Ws,
}

/// Connects connection `index` and subscribes it to `channel` (public, or `private-` with a
/// signature made from the app secret).
pub async fn connect_and_subscribe(
    target: &Target,
    index: usize,
    channel: &str,
    timeout: Duration,
) -> Result<Subscribed> {
    let mut conn = ws::connect(target, index, timeout).await?;
    let auth = channel.starts_with("private-").then(|| {
        private_channel_auth(
            &target.creds.key,
            &target.creds.secret,
            &conn.socket_id,
            channel,
        )
    });
    ws::subscribe(&mut conn.ws, channel, auth.as_deref(), None, timeout).await?;
    Ok(Subscribed { ws: conn.ws })
}

/// Running receivers by connection index.
pub type Receivers = Vec<(usize, JoinHandle<Received>)>;

/// What a receiver saw by the time it stopped.
#[derive(Debug)]
pub struct Received {
    pub tracker: Tracker,
    /// Why the connection ended before it was told to stop, if it did.
    pub ended_early: Option<Error>,
    /// `pusher:error` frames received while open.
    pub pusher_errors: u64,
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// The counting every receiver does with the stamps it finds: order, duplicates, deliveries and
/// latencies (buffered, flushed into the shared histogram in batches).
pub struct StampCounter {
    pub tracker: Tracker,
    latencies: Vec<u64>,
    index: usize,
    deliveries: Arc<Deliveries>,
}

impl StampCounter {
    pub fn new(index: usize, deliveries: Arc<Deliveries>) -> StampCounter {
        StampCounter {
            tracker: Tracker::default(),
            latencies: Vec::with_capacity(LATENCY_BATCH),
            index,
            deliveries,
        }
    }

    /// Counts one received stamp (a duplicate only in the tracker).
    pub fn count(&mut self, stamp: payload::Stamp) {
        if self.tracker.observe(stamp.stream, stamp.seq) != Arrival::Duplicate {
            let now = payload::now_us();
            self.deliveries.count(self.index, now);
            self.latencies.push(now.saturating_sub(stamp.sent_us));
            if self.latencies.len() >= LATENCY_BATCH {
                self.deliveries
                    .flush_latencies(self.index, &mut self.latencies);
            }
        }
    }

    /// Flushes the buffered latencies and gives the tracker back.
    pub fn finish(mut self) -> Tracker {
        self.deliveries
            .flush_latencies(self.index, &mut self.latencies);
        self.tracker
    }
}

/// Counts stamped events on `ws` into `tracker` and `deliveries` until `stop` turns true.
pub async fn receive(
    mut ws: Ws,
    index: usize,
    deliveries: Arc<Deliveries>,
    stop: watch::Receiver<bool>,
) -> Received {
    let mut counter = StampCounter::new(index, deliveries);
    let mut ended_early = None;
    let mut pusher_errors = 0;
    // Made once: re-creating it for every message would cost more than the message.
    let stopped = stopped(stop);
    tokio::pin!(stopped);
    {
        loop {
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => match frame::classify(text.as_bytes()) {
                        Kind::Stamped(stamp) => counter.count(stamp),
                        Kind::Ping => {
                            if let Err(e) = ws.send(Message::text(frame::pong())).await {
                                ended_early = Some(e.into());
                                break;
                            }
                        }
                        Kind::Other => {
                            if Frame::parse(&text).is_ok_and(|f| f.event == "pusher:error") {
                                pusher_errors += 1;
                            }
                        }
                    },
                    Some(Ok(Message::Close(close))) => {
                        ended_early = Some(Error::Closed { code: close.map(|c| u16::from(c.code)) });
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        ended_early = Some(e.into());
                        break;
                    }
                    None => {
                        ended_early = Some(Error::Closed { code: None });
                        break;
                    }
                }
            }
        }
    }
    let tracker = counter.finish();
    if ended_early.is_none() {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
    Received {
        tracker,
        ended_early,
        pusher_errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::{resolve_node, Target};
    use crate::payload::{encode, Stamp};
    use crate::pusher::signing::Credentials;
    use std::time::Instant;
    use tokio::net::TcpListener;

    /// A one-connection fake Pusher server: handshake, subscription, a scripted burst of events
    /// (out of order, duplicated), then a ping whose pong it reports.
    async fn fake_server(listener: TcpListener) -> bool {
        let mut ws = crate::pusher::ws::accept_fake(&listener).await;
        let sub = ws.next().await.unwrap().unwrap();
        let sub: serde_json::Value = serde_json::from_str(sub.to_text().unwrap()).unwrap();
        assert_eq!(sub["event"], "pusher:subscribe");
        assert_eq!(sub["data"]["channel"], "private-c");
        // A private channel: the auth is the HMAC of "1.2:private-c".
        assert_eq!(
            sub["data"]["auth"],
            private_channel_auth("k", "s", "1.2", "private-c")
        );
        ws.send(Message::text(
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"private-c","data":"{}"}"#,
        ))
        .await
        .unwrap();
        for seq in [0u64, 2, 1, 1, 4] {
            let data = encode(
                Stamp {
                    stream: 0,
                    seq,
                    sent_us: payload::now_us(),
                },
                64,
            );
            let frame = format!(r#"{{"event":"lt","channel":"private-c","data":"{data}"}}"#);
            ws.send(Message::text(frame)).await.unwrap();
        }
        ws.send(Message::text(r#"{"event":"pusher:ping","data":"{}"}"#))
            .await
            .unwrap();
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains("pusher:pong") => return true,
                Some(Ok(_)) => continue,
                _ => return false,
            }
        }
    }

    #[tokio::test]
    async fn counts_a_scripted_stream_and_answers_pings() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(fake_server(listener));
        let node = resolve_node(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        let target = Target {
            ws_nodes: vec![node.clone()],
            api_nodes: vec![node],
            creds: Credentials {
                app_id: "1".into(),
                key: "k".into(),
                secret: "s".into(),
            },
            source_ips: vec![std::net::Ipv4Addr::new(127, 0, 0, 2)],
        };
        let sub = connect_and_subscribe(&target, 0, "private-c", Duration::from_secs(5))
            .await
            .unwrap();
        let deliveries = Arc::new(Deliveries::new());
        let (stop_tx, stop_rx) = watch::channel(false);
        let receiver = tokio::spawn(receive(sub.ws, 7, deliveries.clone(), stop_rx));
        assert!(server.await.unwrap(), "the harness answered pusher:ping");
        let deadline = Instant::now() + Duration::from_secs(5);
        while deliveries.delivered() < 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop_tx.send(true).unwrap();
        let r = receiver.await.unwrap();
        assert_eq!(r.tracker.unique, 4);
        assert_eq!(r.tracker.duplicates, 1);
        assert_eq!(r.tracker.out_of_order, 1);
        // 0..5 were "published": 3 never came.
        assert_eq!(r.tracker.lost(&[5], &[]), 1);
        assert_eq!(deliveries.delivered(), 4);
        assert_eq!(deliveries.latency().len(), 4);
    }
}
