//! The harness's error type: every failure a scenario can report, with the context needed to act on it.

use std::io;

/// Anything that stops a scenario or one of its connections.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad target URL {url:?}: {reason}")]
    BadTarget { url: String, reason: String },
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("websocket error: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("HTTP error: {0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP {status} from {url}: {body}")]
    HttpStatus {
        url: String,
        status: u16,
        body: String,
    },
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("server sent pusher:error {code:?}: {message}")]
    ServerRejected { code: Option<i64>, message: String },
    #[error("subscription to {channel} failed: {data}")]
    SubscriptionFailed { channel: String, data: String },
    #[error("connection closed by the server (code {code:?})")]
    Closed { code: Option<u16> },
    #[error("timed out while {0}")]
    Timeout(&'static str),
    #[error("worker process failed: {0}")]
    Worker(String),
    #[error("invalid arguments: {0}")]
    Args(String),
    #[error("report error: {0}")]
    Report(String),
    #[error("while {phase}: {source}")]
    During {
        phase: &'static str,
        source: Box<Error>,
    },
}

impl Error {
    /// A short stable label used to count failures by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadTarget { .. } => "bad_target",
            Error::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => "connection_refused",
                io::ErrorKind::ConnectionReset => "connection_reset",
                io::ErrorKind::AddrNotAvailable => "addr_not_available",
                io::ErrorKind::AddrInUse => "addr_in_use",
                _ if e.raw_os_error() == Some(libc::EMFILE) => "too_many_open_files",
                _ => "io",
            },
            Error::WebSocket(_) => "websocket",
            Error::Http(_) => "http",
            Error::HttpStatus { .. } => "http_status",
            Error::Json(_) => "json",
            Error::Protocol(_) => "protocol",
            Error::ServerRejected { .. } => "pusher_error",
            Error::SubscriptionFailed { .. } => "subscription_error",
            Error::Closed { .. } => "closed",
            Error::Timeout(_) => "timeout",
            Error::Worker(_) => "worker",
            Error::Args(_) => "args",
            Error::Report(_) => "report",
            Error::During { source, .. } => source.kind(),
        }
    }

    /// This error, saying which phase of a scenario it stopped.
    pub fn during(self, phase: &'static str) -> Error {
        Error::During {
            phase,
            source: Box::new(self),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_names_where_and_keeps_the_kind() {
        let e = Error::Timeout("connecting").during("reading the last offsets");
        assert_eq!(e.kind(), "timeout");
        assert_eq!(
            e.to_string(),
            "while reading the last offsets: timed out while connecting"
        );
    }
}
