//! Pusher signatures: the signed query string of the HTTP API and the auth strings of private and
//! presence channel subscriptions (HMAC-SHA256, hex, keyed with the app secret).

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Hex HMAC-SHA256 of `message` keyed with `secret`.
pub fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Hex MD5 of a request body, the `body_md5` parameter.
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// Auth string for subscribing `socket_id` to a private channel: `key:HMAC("{socket_id}:{channel}")`.
pub fn private_channel_auth(key: &str, secret: &str, socket_id: &str, channel: &str) -> String {
    format!(
        "{key}:{}",
        hmac_hex(secret, &format!("{socket_id}:{channel}"))
    )
}

/// Auth string for a presence channel, which also signs the exact `channel_data` JSON text.
pub fn presence_channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: &str,
) -> String {
    format!(
        "{key}:{}",
        hmac_hex(secret, &format!("{socket_id}:{channel}:{channel_data}"))
    )
}

/// Percent-encodes a query value, leaving RFC 3986 unreserved characters as they are.
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The credentials an HTTP API request is signed with.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub app_id: String,
    pub key: String,
    pub secret: String,
}

impl Credentials {
    /// The full query string (already URL-encoded, without the leading `?`) of a signed API request.
    ///
    /// `extra` holds the request's own parameters. The signed string is
    /// `"{METHOD}\n{path}\n{params}"` where params are all parameters except `auth_signature`,
    /// sorted by key, `k=v` joined with `&`, not URL-escaped.
    pub fn signed_query(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &[u8],
        timestamp: u64,
    ) -> String {
        let timestamp = timestamp.to_string();
        let md5 = (!body.is_empty()).then(|| body_md5(body));
        let mut params: Vec<(&str, &str)> = vec![
            ("auth_key", &self.key),
            ("auth_timestamp", &timestamp),
            ("auth_version", "1.0"),
        ];
        if let Some(md5) = &md5 {
            params.push(("body_md5", md5));
        }
        params.extend_from_slice(extra);
        params.sort_by(|a, b| a.0.cmp(b.0));
        let unescaped: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let to_sign = format!("{method}\n{path}\n{}", unescaped.join("&"));
        let signature = hmac_hex(&self.secret, &to_sign);
        let mut query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", encode_query_value(v)))
            .collect();
        query.push(format!("auth_signature={signature}"));
        query.join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            app_id: "3".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
        }
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        assert_eq!(
            hmac_hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn md5_of_known_strings() {
        assert_eq!(body_md5(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(body_md5(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn private_auth_is_key_colon_hmac_of_socket_and_channel() {
        let c = creds();
        let auth = private_channel_auth(&c.key, &c.secret, "1234.1234", "private-foobar");
        assert_eq!(
            auth,
            format!(
                "278d425bdf160c739803:{}",
                hmac_hex("7ad3773142a6692b25b8", "1234.1234:private-foobar")
            )
        );
        assert_eq!(
            auth,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    #[test]
    fn presence_auth_signs_channel_data() {
        let c = creds();
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let auth = presence_channel_auth(&c.key, &c.secret, "1234.1234", "presence-foobar", data);
        assert_eq!(
            auth,
            format!(
                "278d425bdf160c739803:{}",
                hmac_hex(
                    "7ad3773142a6692b25b8",
                    &format!("1234.1234:presence-foobar:{data}")
                )
            )
        );
    }

    #[test]
    fn signed_query_sorts_params_and_signs_method_path_query() {
        let c = creds();
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let q = c.signed_query("POST", "/apps/3/events", &[], body, 1353088179);
        let md5 = body_md5(body);
        assert_eq!(md5, "ec365a775a4cd0599faeb73354201b6f");
        let expected_sig = hmac_hex(
            &c.secret,
            &format!(
                "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5={md5}"
            ),
        );
        // The worked example of the Pusher HTTP API reference.
        assert_eq!(
            expected_sig,
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
        assert_eq!(
            q,
            format!(
                "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5={md5}&auth_signature={expected_sig}"
            )
        );
    }

    #[test]
    fn signed_query_without_body_has_no_md5_and_encodes_values() {
        let c = creds();
        let q = c.signed_query(
            "GET",
            "/apps/3/channels",
            &[
                ("info", "user_count,subscription_count"),
                ("filter_by_prefix", "presence-"),
            ],
            b"",
            1,
        );
        assert!(!q.contains("body_md5"));
        // Sorted: auth_*, filter_by_prefix, info; the signature is over unescaped values.
        assert!(q.starts_with("auth_key=278d425bdf160c739803&auth_timestamp=1&auth_version=1.0&filter_by_prefix=presence-&info=user_count%2Csubscription_count&auth_signature="));
        let sig = q.rsplit("auth_signature=").next().unwrap();
        assert_eq!(
            sig,
            hmac_hex(
                &c.secret,
                "GET\n/apps/3/channels\nauth_key=278d425bdf160c739803&auth_timestamp=1&auth_version=1.0&filter_by_prefix=presence-&info=user_count,subscription_count"
            )
        );
    }
}
