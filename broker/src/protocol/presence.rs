//! Presence on the wire: the member a client joins as (the `channel_data` its app's backend
//! signed), and the member list a presence subscription is confirmed with.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::channel;

/// A presence identity, from the `channel_data` the app's backend signed.
#[derive(Debug, Clone)]
pub struct Member {
    pub user_id: String,
    pub user_info: Value,
}

/// Parses and checks presence `channel_data`: `{"user_id": ..., "user_info"?: ...}`, the user id
/// at most `max_user_id_len` bytes and the info at most `max_user_info_bytes`.
pub fn parse_member(
    channel_data: &str,
    max_user_id_len: usize,
    max_user_info_bytes: usize,
) -> Result<Member, String> {
    #[derive(Deserialize)]
    struct ChannelData {
        user_id: Value,
        #[serde(default)]
        user_info: Option<Box<RawValue>>,
    }
    let data: ChannelData = serde_json::from_str(channel_data)
        .map_err(|e| format!("channel_data must be a JSON object with a user_id: {e}"))?;
    let user_id = match data.user_id {
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        _ => return Err("user_id must be a string or a number".into()),
    };
    channel::validate_user_id(&user_id, max_user_id_len).map_err(|e| format!("user_id: {e}"))?;
    let user_info = match data.user_info {
        Some(raw) if raw.get().len() > max_user_info_bytes => {
            return Err(format!("user_info is over {max_user_info_bytes} bytes"))
        }
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| e.to_string())?,
        None => Value::Null,
    };
    Ok(Member { user_id, user_info })
}

/// The members a presence subscription is confirmed with: `{"ids", "hash", "count"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberList {
    ids: Vec<String>,
    hash: Map<String, Value>,
    count: usize,
}

impl MemberList {
    /// The list of `members` (user id and info), in that order.
    pub fn new<'a>(members: impl IntoIterator<Item = (&'a String, &'a Value)>) -> MemberList {
        let mut ids = Vec::new();
        let mut hash = Map::new();
        for (id, info) in members {
            ids.push(id.clone());
            hash.insert(id.clone(), info.clone());
        }
        MemberList {
            count: ids.len(),
            ids,
            hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_is_checked_against_the_limits() {
        let parse = |text| parse_member(text, 5, 20);
        let m = parse(r#"{"user_id":"ann","user_info":{"n":1}}"#).unwrap();
        assert_eq!(m.user_id, "ann");
        assert_eq!(m.user_info, serde_json::json!({"n": 1}));
        assert_eq!(parse(r#"{"user_id":42}"#).unwrap().user_id, "42");
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"user_id":null}"#,
            r#"{"user_id":["a"]}"#,
            r#"{"user_id":""}"#,
            r#"{"user_id":"toolong"}"#,
            r#"{"user_id":"a","user_info":{"name":"far too long for the limit"}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_member_list_names_each_member_once_in_order() {
        let (ann, bob) = ("ann".to_owned(), "bob".to_owned());
        let info = serde_json::json!({"n": 1});
        let list = MemberList::new([(&bob, &Value::Null), (&ann, &info)]);
        assert_eq!(
            serde_json::to_value(list).unwrap(),
            serde_json::json!({"ids": ["bob", "ann"], "hash": {"bob": null, "ann": {"n": 1}}, "count": 2})
        );
    }
}
