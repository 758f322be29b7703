//! [`RetryQuota`]: a cost-weighted token bucket for retries, on by default.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A cost-weighted token bucket for retries, in the style of the AWS SDKs'
/// retry quota and gRPC's retry throttling: on by default in [`RetryLayer`](super::RetryLayer).
///
/// Each partition (a request's authority, `host:port`) has a bucket of
/// [`capacity`](RetryQuota::capacity) tokens (500), full to begin with. A
/// retry withdraws tokens by its cause; when the bucket cannot pay, the
/// failure is returned instead of retried:
///
/// | cause | cost (default) |
/// |---|---|
/// | no response: a timeout, a connection failure, a reset | 10 |
/// | a retryable status with no `Retry-After` (502, 503, 504, ...) | 5 |
/// | a status with a `Retry-After` the server asked for (a 429, say) | 1 |
///
/// A success refunds what its request spent on retries, or 1 token when it
/// needed none, up to the capacity. So in a total outage a partition gets at
/// most `capacity / cost` retries (100 for 503s) before retrying stops, and
/// the bucket refills as soon as requests succeed again; with occasional
/// failures the successes keep it full and every request may use all its
/// attempts. Unlike a ratio budget, no fraction of traffic is ever reserved
/// or forbidden: it bites only in storms.
///
/// The buckets belong to one service and its clones (made by one
/// `RetryLayer::layer` call).
///
/// ```
/// use kneo::retry::{RetryLayer, RetryQuota};
///
/// // Fewer retries in an outage: 20 retries of 503s before it stops.
/// let layer = RetryLayer::new().quota(RetryQuota::new().capacity(100));
/// // Or none at all: every request may use every attempt.
/// let unbounded = RetryLayer::new().no_budget();
/// # let _ = (layer, unbounded);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryQuota {
    capacity: u32,
    transport_cost: u32,
    status_cost: u32,
    advised_cost: u32,
    success_refund: u32,
}

impl RetryQuota {
    /// 500 tokens; a retry costs 10 after no response, 5 after a status, 1
    /// after a status with `Retry-After`; a success refunds 1.
    pub fn new() -> Self {
        RetryQuota {
            capacity: 500,
            transport_cost: 10,
            status_cost: 5,
            advised_cost: 1,
            success_refund: 1,
        }
    }

    /// The tokens a partition's bucket holds when full.
    pub fn capacity(mut self, tokens: u32) -> Self {
        self.capacity = tokens;
        self
    }

    /// The cost of a retry after no response (timeout, connect, reset).
    pub fn transport_cost(mut self, tokens: u32) -> Self {
        self.transport_cost = tokens;
        self
    }

    /// The cost of a retry after a retryable status without `Retry-After`.
    pub fn status_cost(mut self, tokens: u32) -> Self {
        self.status_cost = tokens;
        self
    }

    /// The cost of a retry the server asked for with `Retry-After`.
    pub fn advised_cost(mut self, tokens: u32) -> Self {
        self.advised_cost = tokens;
        self
    }

    /// What a success that needed no retry puts back.
    pub fn success_refund(mut self, tokens: u32) -> Self {
        self.success_refund = tokens;
        self
    }
}

impl Default for RetryQuota {
    fn default() -> Self {
        Self::new()
    }
}

/// Why an attempt is retried, for its cost.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cause {
    Transport,
    Status,
    Advised,
}

/// The buckets of one service and its clones.
#[derive(Debug)]
pub(crate) struct Buckets {
    quota: RetryQuota,
    /// Partitions below capacity; a partition not here is full.
    below: Mutex<HashMap<String, u32>>,
    /// How many partitions are below capacity: zero is the fast path.
    len: AtomicUsize,
}

impl Buckets {
    pub(crate) fn new(quota: RetryQuota) -> Self {
        Buckets {
            quota,
            below: Mutex::new(HashMap::new()),
            len: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, u32>> {
        // Nothing panics while holding the lock.
        self.below.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the cost of a retry for `cause` from `partition`'s bucket;
    /// `Some(cost)` when it could pay.
    pub(crate) fn withdraw(&self, partition: &str, cause: Cause) -> Option<u32> {
        let q = &self.quota;
        let cost = match cause {
            Cause::Transport => q.transport_cost,
            Cause::Status => q.status_cost,
            Cause::Advised => q.advised_cost,
        };
        let mut below = self.lock();
        let tokens = below.entry(partition.to_owned()).or_insert(q.capacity);
        let paid = (*tokens >= cost).then(|| {
            *tokens -= cost;
            cost
        });
        if *tokens >= q.capacity {
            below.remove(partition);
        }
        self.len.store(below.len(), Ordering::Release);
        paid
    }

    /// A success: puts back what it spent on retries, or the success refund.
    pub(crate) fn refund(&self, partition: &str, spent: u32) {
        if self.len.load(Ordering::Acquire) == 0 {
            return; // every bucket is full
        }
        let amount = if spent > 0 {
            spent
        } else {
            self.quota.success_refund
        };
        let mut below = self.lock();
        if let Some(tokens) = below.get_mut(partition) {
            *tokens = tokens.saturating_add(amount);
            if *tokens >= self.quota.capacity {
                below.remove(partition);
            }
        }
        self.len.store(below.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_gets_capacity_over_cost_retries_and_successes_refill() {
        let b = Buckets::new(RetryQuota::new());
        let paid = std::iter::repeat_with(|| b.withdraw("api:443", Cause::Status))
            .take(1000)
            .filter(Option::is_some)
            .count();
        assert_eq!(paid, 100, "500 tokens at 5 a retry");
        assert!(b.withdraw("api:443", Cause::Advised).is_none(), "empty");
        assert!(
            b.withdraw("other:443", Cause::Transport).is_some(),
            "one bucket per partition"
        );
        for _ in 0..10 {
            b.refund("api:443", 0);
        }
        assert_eq!(
            b.withdraw("api:443", Cause::Status),
            Some(5),
            "refilled by successes"
        );
        b.refund("api:443", 5);
        b.refund("other:443", 10);
        assert_eq!(
            b.len.load(Ordering::Acquire),
            1,
            "a full bucket is forgotten"
        );
    }
}
