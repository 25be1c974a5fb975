//! The bytes of a forwarding stream (see [`crate::forward`]): what a node writes into the body of
//! its long-lived `POST` to another node's cluster port, and what that node answers.
//!
//! The request body is a sequence of records, each a length (`u32`, little-endian) and that many
//! bytes. An empty record is a heartbeat (the stream is alive, nothing to deliver). Any other
//! holds one [`ForwardedFrame`]: the app id, the channel and the socket left out (each a `u16`
//! length and UTF-8 bytes; no socket is an empty one), then the frame itself, the rest of the
//! record. The receiver sets the largest record it takes and refuses a longer one as soon as its
//! length prefix has arrived, before buffering any of it.
//!
//! The answer's body is a sequence of acknowledgements, each the number of frames the receiver
//! has taken from this stream so far (`u64`, little-endian).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::forward::ForwardedFrame;

/// The header naming the sending node (its id) on a forwarding stream.
pub const FROM_HEADER: &str = "x-chorus-forward-from";

/// Bytes of a record's length prefix.
const PREFIX: usize = 4;

/// Bytes of an acknowledgement.
pub const ACK_BYTES: usize = 8;

/// Appends `frame` as one record to `out`. A field longer than its `u16` length can say is not
/// encoded (`false`): app ids, channel names and socket ids are far shorter.
pub fn encode_frame(frame: &ForwardedFrame, out: &mut BytesMut) -> bool {
    let except = frame.except.as_deref().unwrap_or("");
    let fields = [frame.app.as_str(), frame.channel.as_str(), except];
    if fields
        .iter()
        .any(|field| field.len() > usize::from(u16::MAX))
    {
        return false;
    }
    let body = fields.iter().map(|field| 2 + field.len()).sum::<usize>() + frame.frame.len();
    let Ok(length) = u32::try_from(body) else {
        return false;
    };
    out.reserve(PREFIX + body);
    out.put_u32_le(length);
    for field in fields {
        out.put_u16_le(field.len() as u16);
        out.put_slice(field.as_bytes());
    }
    out.put_slice(frame.frame.as_bytes());
    true
}

/// Appends a heartbeat record to `out`.
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.put_u32_le(0);
}

/// An acknowledgement of `frames` frames taken so far.
pub fn encode_ack(frames: u64) -> Bytes {
    Bytes::copy_from_slice(&frames.to_le_bytes())
}

/// What a record holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    Heartbeat,
    Frame(ForwardedFrame),
}

/// Why a stream's bytes were refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("a record of {declared} bytes, over the {limit} taken")]
    TooLong { declared: usize, limit: usize },
    #[error("a record whose fields overrun it")]
    Truncated,
    #[error("a field that is not UTF-8")]
    NotUtf8,
}

/// Splits the bytes of a stream, as they arrive, into records of at most `limit` bytes. It holds
/// at most one record's bytes beyond what it was last given.
#[derive(Debug)]
pub struct RecordReader {
    buffer: BytesMut,
    limit: usize,
}

impl RecordReader {
    pub fn new(limit: usize) -> RecordReader {
        RecordReader {
            buffer: BytesMut::new(),
            limit,
        }
    }

    /// Takes the next bytes of the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole record, `None` until one has arrived; an error (the stream is then
    /// unusable) as soon as a length prefix is over the limit.
    pub fn next_record(&mut self) -> Result<Option<Record>, WireError> {
        let Some(prefix) = self.buffer.get(..PREFIX) else {
            return Ok(None);
        };
        let declared = u32::from_le_bytes(prefix.try_into().expect("four bytes")) as usize;
        if declared > self.limit {
            return Err(WireError::TooLong {
                declared,
                limit: self.limit,
            });
        }
        if self.buffer.len() < PREFIX + declared {
            return Ok(None);
        }
        self.buffer.advance(PREFIX);
        let mut body = self.buffer.split_to(declared);
        if declared == 0 {
            return Ok(Some(Record::Heartbeat));
        }
        let app = take_field(&mut body)?;
        let channel = take_field(&mut body)?;
        let except = take_field(&mut body)?;
        let frame = String::from_utf8(body.to_vec()).map_err(|_| WireError::NotUtf8)?;
        Ok(Some(Record::Frame(ForwardedFrame {
            app,
            channel,
            frame,
            except: (!except.is_empty()).then_some(except),
        })))
    }
}

fn take_field(body: &mut BytesMut) -> Result<String, WireError> {
    if body.len() < 2 {
        return Err(WireError::Truncated);
    }
    let length = usize::from(body.get_u16_le());
    if body.len() < length {
        return Err(WireError::Truncated);
    }
    let field = body.split_to(length);
    String::from_utf8(field.to_vec()).map_err(|_| WireError::NotUtf8)
}

/// Reads the acknowledgements of a stream's answer as they arrive.
#[derive(Debug, Default)]
pub struct AckReader {
    partial: Vec<u8>,
}

impl AckReader {
    /// Takes the next bytes of the answer; returns the latest acknowledgement they complete.
    pub fn push(&mut self, mut bytes: &[u8]) -> Option<u64> {
        let mut latest = None;
        while !bytes.is_empty() {
            let wanted = ACK_BYTES - self.partial.len();
            let taken = wanted.min(bytes.len());
            self.partial.extend_from_slice(&bytes[..taken]);
            bytes = &bytes[taken..];
            if self.partial.len() == ACK_BYTES {
                let ack = u64::from_le_bytes(self.partial[..].try_into().expect("eight bytes"));
                latest = Some(ack);
                self.partial.clear();
            }
        }
        latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(app: &str, channel: &str, text: &str, except: Option<&str>) -> ForwardedFrame {
        ForwardedFrame {
            app: app.to_owned(),
            channel: channel.to_owned(),
            frame: text.to_owned(),
            except: except.map(str::to_owned),
        }
    }

    #[test]
    fn records_come_back_as_written_whatever_the_chunks() {
        let frames = [
            frame("1", "news", r#"{"event":"e","data":"é"}"#, None),
            frame("app-2", "private-x", "", Some("123.456")),
        ];
        let mut bytes = BytesMut::new();
        encode_frame(&frames[0], &mut bytes);
        encode_heartbeat(&mut bytes);
        encode_frame(&frames[1], &mut bytes);
        for chunk in [1, 3, 7, bytes.len()] {
            let mut reader = RecordReader::new(1024);
            let mut records = Vec::new();
            for piece in bytes.chunks(chunk) {
                reader.push(piece);
                while let Some(record) = reader.next_record().unwrap() {
                    records.push(record);
                }
            }
            assert_eq!(
                records,
                [
                    Record::Frame(frames[0].clone()),
                    Record::Heartbeat,
                    Record::Frame(frames[1].clone())
                ]
            );
        }
    }

    #[test]
    fn a_long_record_is_refused_at_its_prefix() {
        let mut reader = RecordReader::new(100);
        reader.push(&101u32.to_le_bytes());
        assert_eq!(
            reader.next_record(),
            Err(WireError::TooLong {
                declared: 101,
                limit: 100
            })
        );
        let mut reader = RecordReader::new(100);
        reader.push(&100u32.to_le_bytes());
        assert_eq!(reader.next_record(), Ok(None), "waits for the rest");
    }

    #[test]
    fn fields_that_overrun_their_record_are_refused() {
        let mut reader = RecordReader::new(100);
        let mut bytes = BytesMut::new();
        bytes.put_u32_le(3);
        bytes.put_u16_le(5);
        bytes.put_u8(b'a');
        reader.push(&bytes);
        assert_eq!(reader.next_record(), Err(WireError::Truncated));
        let mut reader = RecordReader::new(100);
        let mut bytes = BytesMut::new();
        bytes.put_u32_le(9);
        bytes.put_u16_le(1);
        bytes.put_u8(0xff);
        bytes.put_u16_le(0);
        bytes.put_u16_le(0);
        bytes.put_u16_le(0);
        reader.push(&bytes);
        assert_eq!(reader.next_record(), Err(WireError::NotUtf8));
    }

    #[test]
    fn acknowledgements_are_read_across_chunks() {
        let mut acks = AckReader::default();
        let mut bytes = encode_ack(7).to_vec();
        bytes.extend_from_slice(&encode_ack(300));
        assert_eq!(acks.push(&bytes[..5]), None);
        assert_eq!(acks.push(&bytes[5..12]), Some(7));
        assert_eq!(acks.push(&bytes[12..]), Some(300));
    }
}
