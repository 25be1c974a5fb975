//! Reading an HTTP API request's body within its limits: a declared length over the limit is
//! refused before anything is read; bytes must keep coming (never a longer silence than the
//! idle time) and the whole body must arrive within its deadline (the idle time plus its length
//! at the minimum rate); a body without a declared length stops at the first byte over the limit.

use std::time::Duration;

use actix_web::http::header::CONTENT_LENGTH;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::http::edge::BodyDeadline;

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is over {0} bytes")]
    TooLarge(usize),
    #[error("request body did not arrive in time ({0:?} at most, no pause over {1:?})")]
    TooSlow(Duration, Duration),
    #[error("invalid Content-Length")]
    BadLength,
    #[error("reading the body: {0}")]
    Broken(String),
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TooSlow(..) => StatusCode::REQUEST_TIMEOUT,
            BodyError::BadLength | BodyError::Broken(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// The length a request declares, refused when over `limit` (nothing is read).
pub fn declared_len(req: &HttpRequest, limit: usize) -> Result<Option<usize>, BodyError> {
    let Some(value) = req.headers().get(CONTENT_LENGTH) else {
        return Ok(None);
    };
    let len: u64 = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or(BodyError::BadLength)?;
    if len > limit as u64 {
        return Err(BodyError::TooLarge(limit));
    }
    Ok(Some(len as usize))
}

/// Reads a body of at most `limit` bytes (`declared` when the request said) within `deadline`.
pub async fn read(
    mut payload: web::Payload,
    declared: Option<usize>,
    limit: usize,
    deadline: BodyDeadline,
) -> Result<web::Bytes, BodyError> {
    let expected = declared.unwrap_or(limit);
    let whole = deadline.for_len(expected);
    let ends = Instant::now() + whole;
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0));
    loop {
        let wait = ends
            .saturating_duration_since(Instant::now())
            .min(deadline.idle);
        let chunk = match tokio::time::timeout(wait, payload.next()).await {
            Err(_) => return Err(BodyError::TooSlow(whole, deadline.idle)),
            Ok(None) => return Ok(body.freeze()),
            Ok(Some(chunk)) => chunk.map_err(|e| BodyError::Broken(e.to_string()))?,
        };
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
}
