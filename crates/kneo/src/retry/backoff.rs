//! Exponential backoff with full jitter.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Exponential backoff with "full jitter": before retry `n` (1-based) wait a
/// uniformly random time in `[0, min(cap, base * factor^(n-1))]`.
///
/// Written here rather than taken from `tower::retry::backoff`, whose jitter
/// is added on top of the exponential delay: full jitter spreads a herd of
/// clients that failed together better (the AWS architecture blog's
/// "Exponential Backoff And Jitter" measures it).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    factor: u32,
    cap: Duration,
    rng: Option<Arc<Mutex<fastrand::Rng>>>,
}

impl Backoff {
    /// Base 200 ms, factor 2, cap 10 s.
    pub fn new() -> Self {
        Backoff {
            base: Duration::from_millis(200),
            factor: 2,
            cap: Duration::from_secs(10),
            rng: None,
        }
    }

    /// The first delay's upper bound.
    pub fn base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// How much the bound grows per retry (1 = constant).
    pub fn factor(mut self, factor: u32) -> Self {
        self.factor = factor.max(1);
        self
    }

    /// The largest bound.
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// Draws jitter from a seeded generator (shared by all clones), for
    /// reproducible tests and simulations.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = Some(Arc::new(Mutex::new(fastrand::Rng::with_seed(seed))));
        self
    }

    /// The upper bound of the wait before retry `retry` (1-based).
    pub fn bound(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(63);
        let growth = self.factor.checked_pow(exp).unwrap_or(u32::MAX);
        self.base.saturating_mul(growth).min(self.cap)
    }

    /// A jittered wait before retry `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let bound = u64::try_from(self.bound(retry).as_nanos()).unwrap_or(u64::MAX);
        let nanos = match &self.rng {
            Some(rng) => rng
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .u64(0..=bound),
            None => fastrand::u64(0..=bound),
        };
        Duration::from_nanos(nanos)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_grow_and_cap() {
        let b = Backoff::new();
        let ms = Duration::from_millis;
        assert_eq!(b.bound(1), ms(200));
        assert_eq!(b.bound(2), ms(400));
        assert_eq!(b.bound(6), ms(6400));
        assert_eq!(b.bound(7), ms(10_000));
        assert_eq!(b.bound(u32::MAX), ms(10_000));
    }

    #[test]
    fn jitter_stays_within_bound_and_seed_repeats() {
        let a = Backoff::new().seed(7);
        let b = Backoff::new().seed(7);
        for n in 1..20 {
            let d = a.delay(n);
            assert!(d <= a.bound(n));
            assert_eq!(d, b.delay(n));
        }
    }
}
