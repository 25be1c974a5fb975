//! Pusher's `subscription_count` webhook: how many subscriptions a channel has in the whole
//! cluster, sent after its count changes.
//!
//! The count is the sum of every node's local subscriptions, which the cluster does not commit
//! (only which nodes have any), so the node where a count changed sends it: it notes the channel
//! ([`SubscriptionCounts::changed`]), and [`send_counts`] lets the changes of a second settle,
//! asks every node for the channels' counts at once and queues one event per channel whose
//! count differs from the last this node sent. A burst of subscriptions makes one event; two
//! nodes whose counts of one channel change in the same second may both send it. Presence
//! channels have none (their members have `member_added`/`member_removed`), as on Pusher.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::event::{WebhookEvent, WebhookKind};
use super::Webhooks;
use crate::protocol::channel::ChannelKind;

/// How long the changes of a count settle before it is asked for and sent.
const SETTLE: Duration = Duration::from_secs(1);

/// The channels whose local count changed since the counts were last sent.
#[derive(Default)]
pub struct SubscriptionCounts {
    changed: Mutex<BTreeSet<String>>,
    wake: Notify,
}

impl SubscriptionCounts {
    /// Notes that this node's count of `channel` changed.
    pub fn changed(&self, channel: &str) {
        if ChannelKind::of(channel).is_presence() {
            return;
        }
        if self.changed.lock().insert(channel.to_owned()) {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.changed.lock())
            .into_iter()
            .collect()
    }
}

/// Sends the counts of the channels whose count changed on this node, for as long as the node
/// runs; `count(channels)` answers their subscriptions in the whole cluster (none: absent).
pub async fn send_counts<F, Fut>(webhooks: Webhooks, count: F)
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = BTreeMap<String, usize>>,
{
    if !webhooks.wants(WebhookKind::SubscriptionCount) {
        return;
    }
    let counts = &webhooks.inner.counts;
    let mut last_sent: HashMap<String, usize> = HashMap::new();
    loop {
        counts.wake.notified().await;
        tokio::time::sleep(SETTLE).await;
        let channels = counts.take();
        if channels.is_empty() {
            continue;
        }
        let now = count(channels.clone()).await;
        for channel in channels {
            let subscription_count = now.get(&channel).copied().unwrap_or(0);
            let before = match subscription_count {
                0 => last_sent.remove(&channel),
                n => last_sent.insert(channel.clone(), n),
            };
            if before.unwrap_or(0) != subscription_count {
                webhooks.queue_local(WebhookEvent::SubscriptionCount {
                    id: super::local_id(),
                    channel,
                    subscription_count,
                });
            }
        }
    }
}
