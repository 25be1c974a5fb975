//! The cluster secret: every request to a node's cluster port carries it in a header, and a
//! request without it, or with another, is refused. Compared in constant time, so the answer's
//! timing does not tell how much of a guess was right.

use subtle::ConstantTimeEq;

/// The header that carries the secret.
pub const SECRET_HEADER: &str = "x-chorus-cluster-secret";

/// The shared secret of a cluster.
#[derive(Clone)]
pub struct ClusterSecret(String);

impl ClusterSecret {
    pub fn new(secret: impl Into<String>) -> ClusterSecret {
        ClusterSecret(secret.into())
    }

    /// True when `presented` is the secret (an empty one never is).
    pub fn admits(&self, presented: &[u8]) -> bool {
        !presented.is_empty() && self.0.as_bytes().ct_eq(presented).into()
    }

    /// The secret, to send in [`SECRET_HEADER`].
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_secret_is_admitted() {
        let secret = ClusterSecret::new("a-long-cluster-secret");
        assert!(secret.admits(b"a-long-cluster-secret"));
        assert!(!secret.admits(b"a-long-cluster-secreT"));
        assert!(!secret.admits(b"a-long-cluster-secret "));
        assert!(!secret.admits(b"a-long"));
        assert!(!secret.admits(b""));
        assert_eq!(format!("{secret:?}"), "ClusterSecret(..)");
        assert!(
            !ClusterSecret::new("").admits(b""),
            "no secret is no secret"
        );
    }
}
