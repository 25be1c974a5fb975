//! Client WebSocket frames (RFC 6455 §5), decoded as they arrive and refused as early as the
//! bytes allow: a data frame whose declared length takes its message over the limit is refused
//! at its header, before any of its payload is read; reserved bits, unmasked frames, unknown
//! opcodes, fragmented or long control frames and stray continuations are protocol errors;
//! text that is not UTF-8 (checked once a message is whole) is refused as such. Each refusal
//! carries the close code RFC 6455 gives it (see [`FrameError::close_code`]).
//!
//! Fragmented messages are put together here, so what comes out is whole messages and control
//! frames. The decoder keeps no more than one message's payload (at most the limit).
//!
//! The server's own frames are encoded here too ([`text_frame`], [`pong_frame`],
//! [`close_frame`]): whole and unmasked, so one encoding serves every socket.

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;

/// The longest header of a client frame: 2 bytes, an 8-byte length and a 4-byte mask.
pub const MAX_HEADER_LEN: usize = 14;

/// A control frame carries at most this much payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// What a client sent: a whole message or a control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// A close frame, with its code and reason when it had them.
    Close(Option<(u16, String)>),
}

/// Why a client's frames were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message of {declared} bytes is over the limit of {limit} bytes")]
    TooBig { declared: u64, limit: usize },
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

impl FrameError {
    /// The close code RFC 6455 §7.4.1 gives this refusal.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooBig { .. } => 1009,
            FrameError::InvalidUtf8 => 1007,
            FrameError::Protocol(_) => 1002,
        }
    }

    /// The disconnect metric's reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::TooBig { .. } => "frame_too_large",
            FrameError::InvalidUtf8 => "invalid_utf8",
            FrameError::Protocol(_) => "protocol_error",
        }
    }
}

/// A frame's opcode (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn of(bits: u8) -> Result<Opcode, FrameError> {
        Ok(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return Err(FrameError::Protocol("unknown opcode")),
        })
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A frame's header, as far as the bytes given allow.
#[derive(Debug)]
struct Header {
    fin: bool,
    opcode: Opcode,
    /// The masking key; `None` while its bytes have not all arrived.
    mask: Option<[u8; 4]>,
    /// Bytes of the header itself.
    len: usize,
    /// Bytes of payload it declares.
    payload: u64,
}

/// Reads a client frame's header from the start of `src`; `None` until its length is there.
/// Every check that the first bytes allow is made on them, before the rest arrives.
fn header(src: &[u8]) -> Result<Option<Header>, FrameError> {
    let (Some(&first), Some(&second)) = (src.first(), src.get(1)) else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(FrameError::Protocol(
            "reserved bits set, and no extension was negotiated",
        ));
    }
    let fin = first & 0x80 != 0;
    let opcode = Opcode::of(first & 0x0F)?;
    if second & 0x80 == 0 {
        return Err(FrameError::Protocol("client frames must be masked"));
    }
    let short = u64::from(second & 0x7F);
    if opcode.is_control() && (!fin || short > MAX_CONTROL_PAYLOAD) {
        return Err(FrameError::Protocol(
            "control frames are at most 125 bytes and never fragmented",
        ));
    }
    let (payload, at) = match short {
        126 => match src.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match src.get(2..10) {
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(FrameError::Protocol("payload length has its top bit set"));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (n, 2),
    };
    let mask = src.get(at..at + 4).map(|m| m.try_into().expect("4 bytes"));
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        len: at + 4,
        payload,
    }))
}

/// A fragmented message being put together.
#[derive(Debug)]
struct Fragments {
    text: bool,
    data: BytesMut,
}

/// Decodes one client's frames; a message's payload may be at most `limit` bytes.
#[derive(Debug)]
pub struct Decoder {
    limit: usize,
    fragments: Option<Fragments>,
}

impl Decoder {
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            limit,
            fragments: None,
        }
    }

    /// The most payload one message may have.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes the next message or control frame off the front of `buf`; `None` while more bytes
    /// are needed. A frame that makes its message too big fails as soon as its header is in
    /// `buf`. After an error the connection must be closed: the stream is out of step.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        loop {
            let Some(h) = header(buf)? else {
                return Ok(None);
            };
            self.check_sequence(&h)?;
            let total = h.len as u64 + h.payload;
            let (Some(mask), true) = (h.mask, buf.len() as u64 >= total) else {
                return Ok(None);
            };
            buf.advance(h.len);
            let mut payload = buf.split_to(h.payload as usize);
            unmask(&mut payload, mask);
            if let Some(incoming) = self.take(&h, payload)? {
                return Ok(Some(incoming));
            }
        }
    }

    /// Refuses a frame out of sequence, or one that takes its message over the limit, from its
    /// header alone.
    fn check_sequence(&self, h: &Header) -> Result<(), FrameError> {
        let so_far = match (h.opcode, &self.fragments) {
            (op, _) if op.is_control() => return Ok(()),
            (Opcode::Continuation, None) => {
                return Err(FrameError::Protocol("continuation frame with no message"))
            }
            (Opcode::Continuation, Some(f)) => f.data.len() as u64,
            (_, Some(_)) => {
                return Err(FrameError::Protocol(
                    "new message before the fragmented one ended",
                ))
            }
            (_, None) => 0,
        };
        let declared = so_far.saturating_add(h.payload);
        if declared > self.limit as u64 {
            return Err(FrameError::TooBig {
                declared,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// What a whole frame adds: a message once it is complete, a control frame at once.
    fn take(&mut self, h: &Header, payload: BytesMut) -> Result<Option<Incoming>, FrameError> {
        match h.opcode {
            Opcode::Ping => Ok(Some(Incoming::Ping(payload.freeze()))),
            Opcode::Pong => Ok(Some(Incoming::Pong(payload.freeze()))),
            Opcode::Close => close(payload.freeze()).map(Some),
            Opcode::Text | Opcode::Binary if h.fin => {
                message(h.opcode == Opcode::Text, payload).map(Some)
            }
            Opcode::Text | Opcode::Binary => {
                self.fragments = Some(Fragments {
                    text: h.opcode == Opcode::Text,
                    data: payload,
                });
                Ok(None)
            }
            Opcode::Continuation => {
                let f = self.fragments.as_mut().expect("checked in sequence");
                f.data.extend_from_slice(&payload);
                if !h.fin {
                    return Ok(None);
                }
                let f = self.fragments.take().expect("checked in sequence");
                message(f.text, f.data).map(Some)
            }
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

fn message(text: bool, data: BytesMut) -> Result<Incoming, FrameError> {
    if !text {
        return Ok(Incoming::Binary(data.freeze()));
    }
    ByteString::try_from(data.freeze())
        .map(Incoming::Text)
        .map_err(|_| FrameError::InvalidUtf8)
}

/// A close frame's payload: nothing, or a code a peer may send and a UTF-8 reason.
fn close(payload: Bytes) -> Result<Incoming, FrameError> {
    match payload.len() {
        0 => return Ok(Incoming::Close(None)),
        1 => return Err(FrameError::Protocol("close frame with a one-byte payload")),
        _ => {}
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    if !close_code_allowed(code) {
        return Err(FrameError::Protocol("close code not allowed on the wire"));
    }
    let reason = std::str::from_utf8(&payload[2..]).map_err(|_| FrameError::InvalidUtf8)?;
    Ok(Incoming::Close(Some((code, reason.to_owned()))))
}

/// Close codes a peer may send (RFC 6455 §7.4 and the IANA registry): never 1004-1006 or 1015,
/// which are reserved, nor anything below 1000 or above 4999.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The most a close frame's reason may take: a control frame's payload less the code.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD as usize - 2;

/// Appends a frame's first two bytes and its length (RFC 6455 §5.2): 7 bits, or 126 and 16
/// bits, or 127 and 64 bits. `mask_bit` is 0x80 on a client's frame, 0 on a server's.
fn put_header(out: &mut Vec<u8>, first: u8, mask_bit: u8, len: usize) {
    out.push(first);
    match len {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
}

/// A whole, unmasked server frame: the same bytes for every socket it is written to.
fn server_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 10);
    put_header(&mut out, 0x80 | opcode, 0, payload.len());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A server's text frame.
pub fn text_frame(text: &str) -> Bytes {
    server_frame(0x1, text.as_bytes())
}

/// A server's pong, echoing at most a control frame's payload of the ping.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    server_frame(
        0xA,
        &payload[..payload.len().min(MAX_CONTROL_PAYLOAD as usize)],
    )
}

/// A server's close frame: the code, and as much of the reason as a control frame holds (cut
/// at a character boundary).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    server_frame(0x8, &payload)
}

/// Encodes a client frame (masked), for tests and fuzzing: the inverse of [`Decoder::decode`].
pub fn encode_client_frame(fin: bool, opcode: u8, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + MAX_HEADER_LEN);
    put_header(
        &mut out,
        if fin { 0x80 } else { 0 } | (opcode & 0x0F),
        0x80,
        payload.len(),
    );
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [1, 2, 3, 4];

    fn decode_all(limit: usize, bytes: &[u8]) -> Result<Vec<Incoming>, FrameError> {
        let mut decoder = Decoder::new(limit);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = decoder.decode(&mut buf)? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn a_huge_declared_length_is_refused_from_the_header_alone() {
        let mut header = vec![0x81, 0xFF];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        // Not even the mask is needed: the length is known.
        let err = decode_all(1024, &header).unwrap_err();
        assert_eq!(err.close_code(), 1009);
    }

    #[test]
    fn fragments_are_joined_and_limited_as_one_message() {
        let mut bytes = encode_client_frame(false, 1, MASK, b"hel");
        bytes.extend(encode_client_frame(true, 9, MASK, b"p"));
        bytes.extend(encode_client_frame(true, 0, MASK, b"lo"));
        assert_eq!(
            decode_all(5, &bytes).unwrap(),
            vec![
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Text("hello".into())
            ]
        );
        let err = decode_all(4, &bytes).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooBig {
                declared: 5,
                limit: 4
            }
        );
    }

    #[test]
    fn rfc_violations_get_their_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (encode_client_frame(true, 1, MASK, b"\xff\xfe"), 1007),
            (
                {
                    let mut f = encode_client_frame(true, 1, MASK, b"x");
                    f[0] |= 0x40;
                    f
                },
                1002,
            ),
            (vec![0x81, 0x01, b'x'], 1002),
            (encode_client_frame(true, 3, MASK, b""), 1002),
            (encode_client_frame(false, 9, MASK, b""), 1002),
            (encode_client_frame(true, 9, MASK, &[0; 126]), 1002),
            (encode_client_frame(true, 0, MASK, b"x"), 1002),
            (encode_client_frame(true, 8, MASK, &[3]), 1002),
            (
                encode_client_frame(true, 8, MASK, &1005u16.to_be_bytes()),
                1002,
            ),
            (encode_client_frame(true, 8, MASK, b"\x03\xe8\xff"), 1007),
            (
                [
                    encode_client_frame(false, 1, MASK, b"a"),
                    encode_client_frame(true, 1, MASK, b"b"),
                ]
                .concat(),
                1002,
            ),
        ];
        for (bytes, code) in cases {
            let err = decode_all(1024, &bytes).unwrap_err();
            assert_eq!(err.close_code(), code, "{bytes:x?}: {err}");
        }
    }

    #[test]
    fn a_close_frame_gives_its_code_and_reason() {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let bytes = encode_client_frame(true, 8, MASK, &payload);
        assert_eq!(
            decode_all(16, &bytes).unwrap(),
            vec![Incoming::Close(Some((1000, "bye".into())))]
        );
    }

    #[test]
    fn server_frames_are_the_bytes_actix_http_writes() {
        use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser};
        let actix = |payload: &[u8], op: OpCode| {
            let mut dst = BytesMut::new();
            Parser::write_message(&mut dst, payload, op, true, false);
            dst.freeze()
        };
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let text = "x".repeat(len);
            assert_eq!(
                text_frame(&text),
                actix(text.as_bytes(), OpCode::Text),
                "{len}"
            );
        }
        for len in [0, 125] {
            let payload = vec![7u8; len];
            assert_eq!(pong_frame(&payload), actix(&payload, OpCode::Pong));
        }
        assert_eq!(pong_frame(&[7; 200]), actix(&[7; 125], OpCode::Pong));
        let mut dst = BytesMut::new();
        let reason = CloseReason {
            code: CloseCode::Other(4100),
            description: Some("slow".into()),
        };
        Parser::write_close(&mut dst, Some(reason), false);
        assert_eq!(close_frame(4100, "slow"), dst.freeze());
        // A long reason is cut to fit a control frame, never inside a character.
        let long = "é".repeat(100);
        let frame = close_frame(4200, &long);
        assert_eq!(frame.len(), 2 + 2 + 122);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}
