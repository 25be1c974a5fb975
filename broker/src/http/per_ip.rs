//! Per-client-address limits on WebSocket and SSE connections: how many may be open at once and
//! how many handshakes may start each second. Both are off (0) unless configured. A connection
//! holds a [`Slot`] while it is open; dropping the slot gives its place back.
//!
//! Which address is the client's is decided by `client_ip.rs` (a trusted proxy's
//! `X-Forwarded-For`); a request whose client is not known is not limited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

/// Why a client address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many open connections from this address (at most {0})")]
    TooManyOpen(u32),
    #[error("too many connection attempts from this address (at most {0} per second)")]
    TooFast(u32),
}

impl Refusal {
    /// The refusal metric's reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::TooManyOpen(_) => "ip_connections",
            Refusal::TooFast(_) => "ip_handshakes",
        }
    }
}

/// One address's counts.
#[derive(Debug)]
struct Count {
    open: u32,
    /// The start of the current one-second window, and the handshakes in it.
    window: Instant,
    handshakes: u32,
}

struct Inner {
    max_open: u32,
    max_per_sec: u32,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    by_ip: HashMap<IpAddr, Count>,
    /// Addresses kept after the last sweep of idle ones: the next sweep comes at twice that.
    kept: usize,
}

/// The counts of every client address of the node.
#[derive(Clone)]
pub struct PerIp(Arc<Inner>);

/// A place taken by one open connection; given back when dropped.
pub struct Slot {
    taken: Option<(PerIp, IpAddr)>,
}

impl Slot {
    /// A connection that counts against no address.
    pub fn unlimited() -> Slot {
        Slot { taken: None }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((per_ip, ip)) = self.taken.take() {
            per_ip.release(ip);
        }
    }
}

impl PerIp {
    /// At most `max_open` open connections and `max_per_sec` handshakes a second per address;
    /// 0: no limit.
    pub fn new(max_open: u32, max_per_sec: u32) -> PerIp {
        PerIp(Arc::new(Inner {
            max_open,
            max_per_sec,
            counts: Mutex::new(Counts::default()),
        }))
    }

    fn enabled(&self) -> bool {
        self.0.max_open > 0 || self.0.max_per_sec > 0
    }

    /// Counts a handshake from `ip` at `now` and takes a place for its connection; refused when
    /// the address is over either limit. `None` (a client not known) is never limited.
    pub fn admit(&self, ip: Option<IpAddr>, now: Instant) -> Result<Slot, Refusal> {
        let Some(ip) = ip.filter(|_| self.enabled()) else {
            return Ok(Slot::unlimited());
        };
        let inner = &self.0;
        let mut counts = inner.counts.lock();
        counts.sweep(now);
        let count = counts.by_ip.entry(ip).or_insert(Count {
            open: 0,
            window: now,
            handshakes: 0,
        });
        if now.duration_since(count.window).as_secs() >= 1 {
            count.window = now;
            count.handshakes = 0;
        }
        count.handshakes = count.handshakes.saturating_add(1);
        if inner.max_per_sec > 0 && count.handshakes > inner.max_per_sec {
            return Err(Refusal::TooFast(inner.max_per_sec));
        }
        if inner.max_open > 0 && count.open >= inner.max_open {
            return Err(Refusal::TooManyOpen(inner.max_open));
        }
        count.open += 1;
        Ok(Slot {
            taken: Some((self.clone(), ip)),
        })
    }

    fn release(&self, ip: IpAddr) {
        if let Some(count) = self.0.counts.lock().by_ip.get_mut(&ip) {
            count.open = count.open.saturating_sub(1);
        }
    }

    /// Addresses with counts kept (open connections, or handshakes this second).
    pub fn tracked(&self) -> usize {
        self.0.counts.lock().by_ip.len()
    }
}

impl Counts {
    /// Forgets addresses with nothing open and no handshake this second, once the map has
    /// doubled since the last sweep: the map stays within twice the addresses in use.
    fn sweep(&mut self, now: Instant) {
        if self.by_ip.len() < (2 * self.kept).max(1024) {
            return;
        }
        self.by_ip
            .retain(|_, c| c.open > 0 || now.duration_since(c.window).as_secs() < 1);
        self.kept = self.by_ip.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(open: u32, per_sec: u32) -> PerIp {
        PerIp::new(open, per_sec)
    }

    #[test]
    fn open_connections_are_limited_per_address_and_given_back() {
        let per_ip = limits(2, 0);
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let now = Instant::now();
        let first = per_ip.admit(Some(a), now).unwrap();
        let _second = per_ip.admit(Some(a), now).unwrap();
        assert_eq!(
            per_ip.admit(Some(a), now).err(),
            Some(Refusal::TooManyOpen(2))
        );
        assert!(
            per_ip.admit(Some(b), now).is_ok(),
            "another address is not limited"
        );
        assert!(
            per_ip.admit(None, now).is_ok(),
            "an unknown client is not limited"
        );
        drop(first);
        assert!(per_ip.admit(Some(a), now).is_ok());
    }

    #[test]
    fn handshakes_are_limited_per_second() {
        let per_ip = limits(0, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            drop(per_ip.admit(Some(a), t0).unwrap());
        }
        assert_eq!(per_ip.admit(Some(a), t0).err(), Some(Refusal::TooFast(3)));
        assert!(per_ip.admit(Some(a), t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn off_tracks_nothing_and_idle_addresses_are_swept() {
        let off = limits(0, 0);
        let now = Instant::now();
        let _slot = off.admit(Some("10.0.0.1".parse().unwrap()), now).unwrap();
        assert_eq!(off.tracked(), 0);
        let per_ip = limits(0, 5);
        for i in 0..5000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            drop(per_ip.admit(Some(ip), now).unwrap());
        }
        // 5000 kept (all in their second); 5000 more, two seconds on: the sweep when the map
        // doubles forgets the 5000 idle ones and keeps every address of this second.
        let later = now + Duration::from_secs(2);
        for i in 0..5000u32 {
            let ip = IpAddr::from((i + 10_000).to_be_bytes());
            drop(per_ip.admit(Some(ip), later).unwrap());
        }
        assert_eq!(per_ip.tracked(), 5000, "the idle addresses are forgotten");
        let first = IpAddr::from(10_000u32.to_be_bytes());
        for _ in 0..4 {
            drop(per_ip.admit(Some(first), later).unwrap());
        }
        assert_eq!(
            per_ip.admit(Some(first), later).err(),
            Some(Refusal::TooFast(5)),
            "a kept address keeps its count"
        );
    }
}
