//! [`RatioBudget`]: retries as a share of requests over a sliding window,
//! exact for any ratio.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::budget::Budget;

/// How finely a retry is divided: deposits and withdrawals are counted in
/// thousandths of a retry, so a ratio is kept to 0.1%.
const UNIT: i64 = 1000;
/// How many slots the window is cut into.
const SLOTS: usize = 10;

/// A tower [`Budget`] that allows `ratio` retries per request over the last
/// `ttl`, plus a floor of `min_per_sec` retries a second, like tower's
/// `TpsBudget`, but exact for every ratio.
///
/// tower's `TpsBudget` turns a ratio at or below 1 into "one retry per
/// `1 / ratio` requests" and truncates, so `0.6` allows a retry for every
/// request and `0.3` one for every 3 (tower issue #857). Here both are kept
/// in thousandths of a retry: `0.6` allows 6 retries per 10 requests.
///
/// ```
/// use std::time::Duration;
/// use kneo::retry::{Budget, RatioBudget};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let budget = RatioBudget::new(Duration::from_secs(10), 0, 0.6);
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// assert_eq!((0..10).filter(|_| budget.withdraw()).count(), 6);
/// # }
/// ```
#[derive(Debug)]
pub struct RatioBudget {
    start: Instant,
    slot_len: Duration,
    /// The tick (`elapsed / slot_len`) the current slot belongs to.
    tick: AtomicU64,
    slots: [AtomicI64; SLOTS],
    rotate: Mutex<()>,
    /// The floor, in thousandths: `min_per_sec` a second over the window.
    reserve: i64,
    /// What one request deposits, in thousandths.
    deposit: i64,
}

impl RatioBudget {
    /// `ratio` retries per request over a sliding window of `ttl` (clamped
    /// to 1–60 s, as tower's), plus `min_per_sec` retries a second. `ratio`
    /// is clamped to 0–1000; a ratio that is not a number is 0.
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f32) -> Self {
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1000.0)
        };
        RatioBudget {
            start: Instant::now(),
            slot_len: ttl / SLOTS as u32,
            tick: AtomicU64::new(0),
            slots: Default::default(),
            rotate: Mutex::new(()),
            reserve: i64::from(min_per_sec) * i64::try_from(ttl.as_secs()).unwrap_or(60) * UNIT,
            // Rounded, not truncated: 0.6 is 600 thousandths.
            deposit: (f64::from(ratio) * UNIT as f64).round() as i64,
        }
    }

    /// The slot of now, after clearing those that left the window.
    fn current(&self) -> &AtomicI64 {
        let now = (self.start.elapsed().as_nanos() / self.slot_len.as_nanos().max(1)) as u64;
        if now > self.tick.load(Ordering::Acquire) {
            let _guard = self.rotate.lock().unwrap_or_else(|p| p.into_inner());
            let last = self.tick.load(Ordering::Acquire);
            if now > last {
                // Clear every slot passed over since the last tick (all of
                // them after a quiet window).
                for t in (last + 1)..=now.min(last + SLOTS as u64) {
                    self.slots[(t % SLOTS as u64) as usize].store(0, Ordering::Release);
                }
                self.tick.store(now, Ordering::Release);
            }
        }
        &self.slots[(now % SLOTS as u64) as usize]
    }

    fn balance(&self) -> i64 {
        self.reserve
            + self
                .slots
                .iter()
                .map(|s| s.load(Ordering::Acquire))
                .sum::<i64>()
    }
}

impl Budget for RatioBudget {
    fn deposit(&self) {
        self.current().fetch_add(self.deposit, Ordering::AcqRel);
    }

    fn withdraw(&self) -> bool {
        let slot = self.current();
        if self.balance() >= UNIT {
            slot.fetch_sub(UNIT, Ordering::AcqRel);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fractional_ratios_are_exact() {
        for (ratio, allowed) in [
            (0.6, 6),
            (0.3, 3),
            (0.25, 2),
            (0.1, 1),
            (1.0, 10),
            (1.5, 15),
        ] {
            let budget = RatioBudget::new(Duration::from_secs(10), 0, ratio);
            for _ in 0..10 {
                budget.deposit();
            }
            let got = (0..20).filter(|_| budget.withdraw()).count();
            assert_eq!(got, allowed, "ratio {ratio}");
        }
        // tower's, for the record: 0.6 allows one retry per deposit.
        let tower = tower::retry::budget::TpsBudget::new(Duration::from_secs(10), 0, 0.6);
        for _ in 0..10 {
            tower.deposit();
        }
        assert_eq!((0..20).filter(|_| tower.withdraw()).count(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_leave_the_window_and_the_floor_stays() {
        let budget = RatioBudget::new(Duration::from_secs(10), 1, 0.5);
        for _ in 0..10 {
            budget.deposit();
        }
        // 5 from deposits, 10 from the floor (1 a second over 10 s).
        assert_eq!((0..100).filter(|_| budget.withdraw()).count(), 15);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            (0..100).filter(|_| budget.withdraw()).count(),
            10,
            "the floor alone"
        );
    }
}
