//! How records are written: a compact binary encoding (postcard) behind a tag byte, and JSON read
//! back for the records an earlier version wrote.
//!
//! A binary record starts with [`BINARY`], a byte no JSON text starts with (JSON starts with
//! `{`, `[`, `"`, a digit, `-`, `t`, `f`, `n` or whitespace), so one look at the first byte tells
//! the two apart: a database written before the binary encoding reads as it did, and what is
//! written from now on is the binary one. The binary encoding is not self-describing: the types
//! written with it must not use serde attributes that need one (`untagged`, `flatten`,
//! `skip_serializing_if`, `serde_json::Value`).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Result, StorageError};

/// The first byte of a binary record.
pub const BINARY: u8 = 0xB1;

/// `value` as a binary record: [`BINARY`], then its postcard encoding.
pub fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    postcard::to_extend(value, vec![BINARY]).map_err(|e| StorageError::Unencodable {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

/// A record written by [`encode`], or as JSON by an earlier version. A binary record must be
/// read whole: bytes left over mean it is not what was asked for.
pub fn decode<T: DeserializeOwned>(key: &[u8], record: &[u8]) -> Result<T> {
    let corrupt = |reason: String| StorageError::Corrupt {
        key: format!("{key:?}"),
        reason,
    };
    match record.split_first() {
        Some((&BINARY, body)) => match postcard::take_from_bytes(body) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(corrupt(format!("{} bytes left over", rest.len()))),
            Err(e) => Err(corrupt(e.to_string())),
        },
        _ => serde_json::from_slice(record).map_err(|e| corrupt(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Record {
        name: String,
        at: u64,
        note: Option<String>,
    }

    fn record() -> Record {
        Record {
            name: "chat".into(),
            at: 1_700_000_000_000,
            note: None,
        }
    }

    #[test]
    fn binary_records_round_trip_and_are_smaller_than_json() {
        let bytes = encode("record", &record()).unwrap();
        assert_eq!(bytes[0], BINARY);
        assert_eq!(decode::<Record>(b"k", &bytes).unwrap(), record());
        assert!(bytes.len() < serde_json::to_vec(&record()).unwrap().len() / 2);
    }

    #[test]
    fn json_records_of_an_earlier_version_are_still_read() {
        let json = br#"{"name":"chat","at":1700000000000,"note":null}"#;
        assert_eq!(decode::<Record>(b"k", json).unwrap(), record());
        let spaced = b"  [1, 2]";
        assert_eq!(decode::<Vec<u8>>(b"k", spaced).unwrap(), vec![1, 2]);
    }

    #[test]
    fn truncated_padded_or_garbled_records_are_corrupt() {
        let bytes = encode("record", &record()).unwrap();
        for bad in [
            &bytes[..bytes.len() - 1],
            &[bytes.as_slice(), &[0]].concat()[..],
            &[BINARY][..],
            &[][..],
            b"{\"name\":",
        ] {
            assert!(
                matches!(
                    decode::<Record>(b"k", bad),
                    Err(StorageError::Corrupt { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
