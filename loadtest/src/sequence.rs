//! Exact loss / duplicate / reorder accounting for one receiver.
//!
//! Every publisher stream numbers its events on each channel 0, 1, 2, ... and sends them one after
//! the other, so a receiver expects each stream's numbers in order. Gaps are kept as ranges, so the
//! memory used is proportional to the number of holes, not to the number of events.

use std::collections::BTreeMap;

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next number expected, or one past a gap.
    InOrder,
    /// A number that had been skipped earlier: delivered, but out of order.
    Late,
    /// A number already received.
    Duplicate,
}

/// The state of one publisher stream as seen by one receiver.
#[derive(Debug, Default, Clone)]
struct Stream {
    /// One past the highest number received.
    next: u64,
    /// Skipped numbers not received yet, as half-open ranges `start -> end`.
    holes: BTreeMap<u64, u64>,
}

impl Stream {
    fn observe(&mut self, seq: u64) -> Arrival {
        if seq >= self.next {
            if seq > self.next {
                self.holes.insert(self.next, seq);
            }
            self.next = seq + 1;
            return Arrival::InOrder;
        }
        let Some((&start, &end)) = self.holes.range(..=seq).next_back() else {
            return Arrival::Duplicate;
        };
        if seq >= end {
            return Arrival::Duplicate;
        }
        self.holes.remove(&start);
        if start < seq {
            self.holes.insert(start, seq);
        }
        if seq + 1 < end {
            self.holes.insert(seq + 1, end);
        }
        Arrival::Late
    }

    /// Numbers below `sent` never received, not counting those in `failed` (publishes the server refused).
    fn missing(&self, sent: u64, failed: &[u64]) -> u64 {
        let mut missing: u64 = self
            .holes
            .iter()
            .map(|(&s, &e)| e.min(sent).saturating_sub(s))
            .sum();
        missing += sent.saturating_sub(self.next);
        let failed_missing = failed
            .iter()
            .filter(|&&f| f < sent && !self.received(f))
            .count() as u64;
        missing.saturating_sub(failed_missing)
    }

    fn received(&self, seq: u64) -> bool {
        if seq >= self.next {
            return false;
        }
        match self.holes.range(..=seq).next_back() {
            Some((_, &end)) => seq >= end,
            None => true,
        }
    }
}

/// Per-receiver accounting over all publisher streams of its channel.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    streams: Vec<Stream>,
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl Tracker {
    pub fn observe(&mut self, stream: u32, seq: u64) -> Arrival {
        let i = stream as usize;
        if i >= self.streams.len() {
            self.streams.resize_with(i + 1, Stream::default);
        }
        let arrival = self.streams[i].observe(seq);
        match arrival {
            Arrival::InOrder => self.unique += 1,
            Arrival::Late => {
                self.unique += 1;
                self.out_of_order += 1;
            }
            Arrival::Duplicate => self.duplicates += 1,
        }
        arrival
    }

    /// Events lost: `sent[s]` is how many events stream `s` published on this receiver's channel,
    /// `failed[s]` the numbers whose publish was refused (not expected).
    pub fn lost(&self, sent: &[u64], failed: &[Vec<u64>]) -> u64 {
        let empty = Stream::default();
        sent.iter()
            .enumerate()
            .map(|(s, &n)| {
                let stream = self.streams.get(s).unwrap_or(&empty);
                let f = failed.get(s).map(Vec::as_slice).unwrap_or(&[]);
                stream.missing(n, f)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_loses_nothing() {
        let mut t = Tracker::default();
        for seq in 0..100 {
            assert_eq!(t.observe(0, seq), Arrival::InOrder);
        }
        assert_eq!(t.unique, 100);
        assert_eq!(t.lost(&[100], &[]), 0);
        // Events published but not (yet) received count as lost.
        assert_eq!(t.lost(&[103], &[]), 3);
    }

    #[test]
    fn gaps_late_arrivals_and_duplicates() {
        let mut t = Tracker::default();
        for seq in [0, 1, 5, 6, 3, 3, 0, 2, 9] {
            t.observe(0, seq);
        }
        // Received 0 1 2 3 5 6 9; 3 and 0 twice; 3 and 2 late.
        assert_eq!(t.unique, 7);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.out_of_order, 2);
        // Missing 4, 7, 8 of 0..10.
        assert_eq!(t.lost(&[10], &[]), 3);
        // A refused publish is not expected.
        assert_eq!(t.lost(&[10], &[vec![7]]), 2);
        // A refused publish that arrived anyway does not reduce the loss.
        assert_eq!(t.lost(&[10], &[vec![5]]), 3);
    }

    #[test]
    fn streams_are_independent() {
        let mut t = Tracker::default();
        t.observe(0, 0);
        t.observe(2, 0);
        t.observe(2, 1);
        assert_eq!(t.observe(2, 0), Arrival::Duplicate);
        assert_eq!(t.lost(&[1, 2, 2], &[]), 2);
    }

    #[test]
    fn a_huge_gap_costs_one_range() {
        let mut t = Tracker::default();
        t.observe(0, 0);
        t.observe(0, u64::MAX / 2);
        assert_eq!(t.streams[0].holes.len(), 1);
        assert_eq!(t.observe(0, 1000), Arrival::Late);
        assert_eq!(t.streams[0].holes.len(), 2);
    }
}
