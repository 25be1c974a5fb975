//! Socket ids: two unsigned integers joined by a dot, as Pusher's are. They are bound into auth
//! signatures, so nobody may guess another connection's: each is a counter passed through a
//! keyed permutation of 64 bits (a four-round Feistel network whose round function is SHA-256
//! under a key drawn at start). A permutation never repeats, so ids are unique on the node
//! without remembering any; a key nobody knows makes each id look random.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// A socket's id: two unsigned integers joined by a dot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    pub high: u32,
    pub low: u32,
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.high, self.low)
    }
}

impl FromStr for SocketId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (a, b) = s.split_once('.').ok_or(())?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 10 && p.bytes().all(|c| c.is_ascii_digit());
        if !digits(a) || !digits(b) {
            return Err(());
        }
        Ok(SocketId {
            high: a.parse().map_err(|_| ())?,
            low: b.parse().map_err(|_| ())?,
        })
    }
}

/// Rounds of the Feistel network: four make a strong pseudorandom permutation.
const ROUNDS: u8 = 4;

/// Hands out the socket ids of one node.
#[derive(Debug)]
pub struct SocketIds {
    key: [u8; 32],
    next: AtomicU64,
}

impl Default for SocketIds {
    fn default() -> Self {
        SocketIds::with_key(rand::random())
    }
}

impl SocketIds {
    /// Ids under `key` (tests give one; a node draws it at random).
    pub fn with_key(key: [u8; 32]) -> SocketIds {
        SocketIds {
            key,
            next: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> SocketId {
        self.permute(self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn permute(&self, n: u64) -> SocketId {
        let (mut left, mut right) = ((n >> 32) as u32, n as u32);
        for round in 0..ROUNDS {
            let mixed = left ^ self.round(round, right);
            left = right;
            right = mixed;
        }
        SocketId {
            high: left,
            low: right,
        }
    }

    fn round(&self, round: u8, half: u32) -> u32 {
        let digest = Sha256::new()
            .chain_update(self.key)
            .chain_update([round])
            .chain_update(half.to_be_bytes())
            .finalize();
        u32::from_be_bytes(digest[..4].try_into().expect("4 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_back_and_bad_ones_are_refused() {
        let id: SocketId = "123.456".parse().unwrap();
        assert_eq!(id.to_string(), "123.456");
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "a.b",
            "1.2.3",
            "-1.2",
            "99999999999.1",
            "1.2 ",
        ] {
            assert!(bad.parse::<SocketId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_unique_and_share_nothing_visible() {
        let ids = SocketIds::default();
        let drawn: Vec<SocketId> = (0..100_000).map(|_| ids.next()).collect();
        let unique: std::collections::HashSet<_> = drawn.iter().collect();
        assert_eq!(unique.len(), drawn.len());
        for id in &drawn[..100] {
            assert_eq!(id.to_string().parse::<SocketId>(), Ok(*id));
        }
        // Consecutive ids share neither half, and each bit is set in about half of them.
        let shared = drawn
            .windows(2)
            .filter(|w| w[0].high == w[1].high || w[0].low == w[1].low)
            .count();
        assert!(shared < 5, "{shared} consecutive ids share a half");
        for bit in 0..32 {
            let set = drawn.iter().filter(|id| id.low >> bit & 1 == 1).count();
            assert!((45_000..55_000).contains(&set), "bit {bit} set {set} times");
        }
    }

    #[test]
    fn another_key_gives_other_ids() {
        let (a, b) = (SocketIds::with_key([1; 32]), SocketIds::with_key([2; 32]));
        assert_ne!(a.next(), b.next());
    }
}
