//! A token bucket: `rate` tokens per second, at most `burst` saved up. Used by
//! the relay (per device connection: frames over the rate are refused) and by
//! the store service (per app: requests over the rate wait).
//!
//! Architecture invariant: plain arithmetic on `Instant`s; no tokio, no locks.

use std::time::{Duration, Instant};

/// One bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens kept (and the starting amount).
    burst: f64,
    /// Tokens now (may be fractional).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A `rate` of 0 is treated as 1 per second.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes a token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    /// [`take`](Self::take) at a given time (for tests).
    pub fn take_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes a token now, or says how long to wait until one is due. A
    /// waiting caller's token is reserved (the bucket goes negative), so
    /// callers queue fairly instead of racing.
    pub fn reserve(&mut self) -> Option<Duration> {
        self.reserve_at(Instant::now())
    }

    /// [`reserve`](Self::reserve) at a given time (for tests).
    pub fn reserve_at(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            None
        } else {
            Some(Duration::from_secs_f64(-self.tokens / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5);
        b.last = t0;
        for _ in 0..5 {
            assert!(b.take_at(t0));
        }
        assert!(!b.take_at(t0), "burst spent");
        assert!(
            b.take_at(t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!b.take_at(t0 + Duration::from_millis(150)));
        // Saving up stops at the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(b.take_at(later));
        }
        assert!(!b.take_at(later));
    }

    #[test]
    fn reserve_queues_waiters_in_turn() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 1);
        b.last = t0;
        assert_eq!(b.reserve_at(t0), None);
        let first = b.reserve_at(t0).expect("must wait");
        let second = b.reserve_at(t0).expect("must wait longer");
        assert!((first.as_secs_f64() - 0.1).abs() < 1e-9, "{first:?}");
        assert!((second.as_secs_f64() - 0.2).abs() < 1e-9, "{second:?}");
    }
}
