//! HMAC-SHA256 signatures: channel auth, user sign-in and signed HTTP API requests.
//!
//! Every comparison of a signature the client sent is constant-time (`Mac::verify_slice`).

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Seconds an API request's `auth_timestamp` may differ from the node's clock.
pub const TIMESTAMP_WINDOW_SECS: i64 = 600;

fn mac(secret: &str) -> HmacSha256 {
    HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length")
}

/// Hex HMAC-SHA256 of `message` keyed with `secret`.
pub fn sign(secret: &str, message: &str) -> String {
    let mut mac = mac(secret);
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a hex signature in constant time.
pub fn verify(secret: &str, message: &str, signature_hex: &str) -> bool {
    let Ok(signature) = hex::decode(signature_hex) else {
        return false;
    };
    let mut mac = mac(secret);
    mac.update(message.as_bytes());
    mac.verify_slice(&signature).is_ok()
}

/// Checks a client's `auth` field, `"{key}:{hex signature}"`, for the given string to sign.
pub fn verify_auth(key: &str, secret: &str, auth: &str, to_sign: &str) -> bool {
    match auth.split_once(':') {
        Some((auth_key, signature)) => auth_key == key && verify(secret, to_sign, signature),
        None => false,
    }
}

/// The string signed for a private or encrypted channel, or for a presence channel.
pub fn channel_string(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The string signed for `pusher:signin`.
pub fn signin_string(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Hex MD5 of a request body, as in `body_md5`.
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// Why a signed API request was refused (all answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestAuthError {
    #[error("missing query parameter {0}")]
    Missing(&'static str),
    #[error("query parameter {0} is given twice")]
    Duplicate(String),
    #[error("auth_key does not match the app")]
    WrongKey,
    #[error("auth_version must be 1.0")]
    WrongVersion,
    #[error("auth_timestamp is not a number")]
    BadTimestamp,
    #[error("auth_timestamp is more than {TIMESTAMP_WINDOW_SECS} s away from the server's clock")]
    StaleTimestamp,
    #[error("body_md5 does not match the body")]
    BodyMd5Mismatch,
    #[error("invalid signature: expected HMAC-SHA256 hex of {0:?}")]
    BadSignature(String),
}

/// A request to verify: method, path and the URL-decoded query parameters, in any order.
pub struct SignedQuery<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub params: &'a [(String, String)],
}

/// A request to verify with its body.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub params: &'a [(String, String)],
    pub body: &'a [u8],
}

/// What a verified query's signature says of the body: its MD5, or that it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBody(Option<String>);

impl SignedBody {
    /// The signature covers no body: a request with one is refused without reading it.
    pub fn must_be_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Checks the body against the MD5 the signature covers.
    pub fn check(&self, body: &[u8]) -> Result<(), RequestAuthError> {
        match &self.0 {
            Some(md5) if !md5.eq_ignore_ascii_case(&body_md5(body)) => {
                Err(RequestAuthError::BodyMd5Mismatch)
            }
            None if !body.is_empty() => Err(RequestAuthError::Missing("body_md5")),
            _ => Ok(()),
        }
    }
}

/// Verifies the query of a request signed as the Pusher HTTP API requires, before its body is
/// read: the key, version, timestamp and signature. The body's MD5 is signed in the query; the
/// body is checked against it once read ([`SignedBody::check`]).
pub fn verify_query(
    req: &SignedQuery<'_>,
    key: &str,
    secret: &str,
    now_secs: i64,
) -> Result<SignedBody, RequestAuthError> {
    let mut params: Vec<&(String, String)> = req.params.iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = params.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(RequestAuthError::Duplicate(w[0].0.clone()));
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let auth_key = get("auth_key").ok_or(RequestAuthError::Missing("auth_key"))?;
    let timestamp = get("auth_timestamp").ok_or(RequestAuthError::Missing("auth_timestamp"))?;
    let version = get("auth_version").ok_or(RequestAuthError::Missing("auth_version"))?;
    let signature = get("auth_signature").ok_or(RequestAuthError::Missing("auth_signature"))?;
    if auth_key != key {
        return Err(RequestAuthError::WrongKey);
    }
    if version != "1.0" {
        return Err(RequestAuthError::WrongVersion);
    }
    let timestamp: i64 = timestamp
        .parse()
        .map_err(|_| RequestAuthError::BadTimestamp)?;
    if (now_secs - timestamp).abs() > TIMESTAMP_WINDOW_SECS {
        return Err(RequestAuthError::StaleTimestamp);
    }
    let query = params
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let to_sign = format!("{}\n{}\n{}", req.method, req.path, query);
    if !verify(secret, &to_sign, signature) {
        return Err(RequestAuthError::BadSignature(to_sign));
    }
    Ok(SignedBody(get("body_md5").map(str::to_owned)))
}

/// Verifies a request and its body: [`verify_query`], then [`SignedBody::check`].
pub fn verify_request(
    req: &SignedRequest<'_>,
    key: &str,
    secret: &str,
    now_secs: i64,
) -> Result<(), RequestAuthError> {
    let query = SignedQuery {
        method: req.method,
        path: req.path,
        params: req.params,
    };
    verify_query(&query, key, secret, now_secs)?.check(req.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values from Pusher's published channel-auth example.
    #[test]
    fn private_channel_signature_matches_the_reference() {
        let sig = sign(
            "7ad3773142a6692b25b8",
            &channel_string("1234.1234", "private-foobar", None),
        );
        assert_eq!(
            sig,
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(verify_auth(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            &format!("278d425bdf160c739803:{sig}"),
            "1234.1234:private-foobar"
        ));
        assert!(!verify_auth(
            "other",
            "7ad3773142a6692b25b8",
            &format!("other:{}", &sig[..63]),
            "1234.1234:private-foobar"
        ));
        assert!(!verify_auth("k", "s", "no-colon", "x"));
        assert!(!verify_auth("k", "s", "k:zz", "x"));
    }

    #[test]
    fn presence_and_signin_strings() {
        assert_eq!(
            channel_string("1.2", "presence-a", Some("{\"user_id\":\"u\"}")),
            "1.2:presence-a:{\"user_id\":\"u\"}"
        );
        assert_eq!(signin_string("1.2", "{}"), "1.2::user::{}");
    }

    fn signed(params: &mut Vec<(String, String)>, method: &str, path: &str, secret: &str) {
        let mut sorted = params.clone();
        sorted.sort();
        let query = sorted
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let sig = sign(secret, &format!("{method}\n{path}\n{query}"));
        params.push(("auth_signature".into(), sig));
    }

    fn base_params(body: &[u8], ts: i64) -> Vec<(String, String)> {
        vec![
            ("auth_key".into(), "key".into()),
            ("auth_timestamp".into(), ts.to_string()),
            ("auth_version".into(), "1.0".into()),
            ("body_md5".into(), body_md5(body)),
        ]
    }

    #[test]
    fn request_signing_round_trip_and_tampering() {
        let body = br#"{"name":"e","channel":"c","data":"{}"}"#;
        let mut params = base_params(body, 1000);
        signed(&mut params, "POST", "/apps/1/events", "secret");
        let req = |params: &[(String, String)], body: &[u8], method: &str| {
            verify_request(
                &SignedRequest {
                    method,
                    path: "/apps/1/events",
                    params,
                    body,
                },
                "key",
                "secret",
                1100,
            )
        };
        assert_eq!(req(&params, body, "POST"), Ok(()));
        assert_eq!(
            req(&params, b"{}", "POST"),
            Err(RequestAuthError::BodyMd5Mismatch)
        );
        assert!(matches!(
            req(&params, body, "GET"),
            Err(RequestAuthError::BadSignature(_))
        ));
        let stale = verify_request(
            &SignedRequest {
                method: "POST",
                path: "/apps/1/events",
                params: &params,
                body,
            },
            "key",
            "secret",
            1000 + TIMESTAMP_WINDOW_SECS + 1,
        );
        assert_eq!(stale, Err(RequestAuthError::StaleTimestamp));
        let mut dup = params.clone();
        dup.push(("auth_key".into(), "key".into()));
        assert!(matches!(
            req(&dup, body, "POST"),
            Err(RequestAuthError::Duplicate(_))
        ));
        let missing: Vec<_> = params
            .iter()
            .filter(|(k, _)| k != "auth_timestamp")
            .cloned()
            .collect();
        assert_eq!(
            req(&missing, body, "POST"),
            Err(RequestAuthError::Missing("auth_timestamp"))
        );
    }

    #[test]
    fn get_with_body_md5_of_empty_body_is_accepted() {
        let mut params = base_params(b"", 50);
        params.push(("info".into(), "user_count".into()));
        signed(&mut params, "GET", "/apps/1/channels", "secret");
        let ok = verify_request(
            &SignedRequest {
                method: "GET",
                path: "/apps/1/channels",
                params: &params,
                body: b"",
            },
            "key",
            "secret",
            60,
        );
        assert_eq!(ok, Ok(()));
    }
}
