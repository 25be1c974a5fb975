//! What a `pusher_internal:subscription_succeeded` says, typed and serialised in one place: on a
//! presence channel the members, on a history channel the channel's position (`epoch`,
//! `offset`) and, for a client that resumed, whether it was `recovered`.

use serde::Serialize;

use super::frame::{self, Frame};
use super::presence::MemberList;

/// A confirmation's data. Empty (`{}`) on a channel that is neither presence nor history.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Confirmation {
    #[serde(flatten)]
    pub history: Option<HistoryPosition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<MemberList>,
}

/// Where a history channel stands when a subscriber joins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryPosition {
    /// `None` (`null`) while the channel has no history yet.
    pub epoch: Option<String>,
    /// The offset of its newest event (0 when it has none).
    pub offset: u64,
    /// Whether everything after the client's `since` follows; only when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

impl HistoryPosition {
    /// The same position, saying the client's `since` could not be recovered.
    pub fn unrecovered(self) -> HistoryPosition {
        HistoryPosition {
            recovered: Some(false),
            ..self
        }
    }
}

impl Confirmation {
    pub fn of_history(position: HistoryPosition) -> Confirmation {
        Confirmation {
            history: Some(position),
            presence: None,
        }
    }

    /// The frame that confirms a subscription to `channel`.
    pub fn frame(&self, channel: &str) -> Frame {
        let data = serde_json::to_value(self).expect("confirmations always serialise");
        frame::subscription_succeeded(channel, &data)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn data(c: &Confirmation) -> Value {
        let frame: Value = serde_json::from_str(&c.frame("c").text).unwrap();
        assert_eq!(frame["event"], "pusher_internal:subscription_succeeded");
        serde_json::from_str(frame["data"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn each_field_appears_only_where_it_applies() {
        assert_eq!(data(&Confirmation::default()), json!({}));
        let fresh = HistoryPosition {
            epoch: None,
            offset: 0,
            recovered: None,
        };
        assert_eq!(
            data(&Confirmation::of_history(fresh)),
            json!({"epoch": null, "offset": 0})
        );
        let resumed = HistoryPosition {
            epoch: Some("e1".into()),
            offset: 7,
            recovered: Some(true),
        };
        let ann = "ann".to_owned();
        let both = Confirmation {
            history: Some(resumed.clone().unrecovered()),
            presence: Some(MemberList::new([(&ann, &Value::Null)])),
        };
        assert_eq!(
            data(&both),
            json!({"epoch": "e1", "offset": 7, "recovered": false,
                   "presence": {"ids": ["ann"], "hash": {"ann": null}, "count": 1}})
        );
    }
}
