//! The benchmark payload: a stamp (stream, sequence number, send time) at the front of the event data,
//! padded to the requested size, found in a received frame by a byte search instead of a JSON parse.
//!
//! Only `#`, `:`, digits and `x` are used, so the stamp reads the same after the server has
//! JSON-encoded the data (once or twice).

use std::time::{SystemTime, UNIX_EPOCH};

use memchr::memmem::Finder;
use std::sync::LazyLock;

/// What every stamped payload starts with.
pub const MARKER: &str = "#LT1:";

static FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(MARKER.as_bytes()));

/// Identifies one published event: its publisher stream, its place in that stream on its channel,
/// and when it was sent (or scheduled, for fixed-rate publishing), in microseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub stream: u32,
    pub seq: u64,
    pub sent_us: u64,
}

/// Microseconds since the Unix epoch, by the wall clock that publishers and receivers share.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The event data for `stamp`, padded with `x` to `size` bytes (never shorter than the stamp).
pub fn encode(stamp: Stamp, size: usize) -> String {
    let mut s = format!("{MARKER}{}:{}:{}:", stamp.stream, stamp.seq, stamp.sent_us);
    if s.len() < size {
        s.extend(std::iter::repeat_n('x', size - s.len()));
    }
    s
}

/// Finds and decodes the stamp in a received frame; `None` when the frame carries none.
pub fn find(frame: &[u8]) -> Option<Stamp> {
    let start = FINDER.find(frame)? + MARKER.len();
    let mut rest = &frame[start..];
    let stream = take_number(&mut rest)?;
    let seq = take_number(&mut rest)?;
    let sent_us = take_number(&mut rest)?;
    Some(Stamp {
        stream: u32::try_from(stream).ok()?,
        seq,
        sent_us,
    })
}

/// Parses decimal digits up to a `:` and advances past it.
fn take_number(rest: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for (i, &b) in rest.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            }
            b':' if i > 0 => {
                *rest = &rest[i + 1..];
                return Some(value);
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_server_frame() {
        let stamp = Stamp {
            stream: 7,
            seq: 123_456,
            sent_us: 1_700_000_000_123_456,
        };
        let data = encode(stamp, 100);
        assert_eq!(data.len(), 100);
        let frame = format!(
            r#"{{"event":"lt","channel":"lt-1","data":{}}}"#,
            serde_json::to_string(&data).unwrap()
        );
        assert_eq!(find(frame.as_bytes()), Some(stamp));
    }

    #[test]
    fn never_truncates_the_stamp() {
        let stamp = Stamp {
            stream: 0,
            seq: 1,
            sent_us: 2,
        };
        assert_eq!(encode(stamp, 0), "#LT1:0:1:2:");
    }

    #[test]
    fn rejects_frames_without_a_complete_stamp() {
        assert_eq!(find(br#"{"event":"pusher:ping","data":"{}"}"#), None);
        assert_eq!(find(b"#LT1:1:2"), None);
        assert_eq!(find(b"#LT1:1::3:"), None);
        assert_eq!(find(b"#LT1:a:2:3:"), None);
        assert_eq!(find(b"#LT1:99999999999:2:3:"), None);
        assert_eq!(find(b"#LT1:1:99999999999999999999999:3:"), None);
    }
}
