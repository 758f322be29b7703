//! The proxy's counters, in a `prometheus-client` registry.

use std::fmt;
use std::time::Duration;

use http::StatusCode;
use kneo::retry::RatioBudget;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tower::retry::budget::Budget;

use crate::outcome::ExchangeOutcome;

/// Status classes, as labels.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

type Labels = [(&'static str, &'static str); 2];

/// Every metric the proxy keeps, registered under the prefix `kneo_proxy`.
///
/// - `kneo_proxy_requests_total{outcome, class}`: requests answered, every
///   one once, by [outcome](ExchangeOutcome::as_str) (`upstream`, `unreachable`,
///   `timeout`, `overloaded`, `bad_request`, `rate_limited`, `replayed`,
///   `idempotency`) and status class (`2xx`...);
/// - `kneo_proxy_upstream_attempts_total`: requests sent upstream, retries included;
/// - `kneo_proxy_retries_total`: of those, retries;
/// - `kneo_proxy_budget_refusals_total`: retries the budget refused;
/// - `kneo_proxy_in_flight`: requests waiting for an answer;
/// - `kneo_proxy_request_duration_seconds`: time to the response head, retries and waits included;
/// - `kneo_proxy_open_connections`: caller connections open;
/// - `kneo_proxy_connections_total{worker}`: caller connections accepted, by
///   [worker](crate::Workers) (`0` for [`serve`](crate::serve));
/// - `kneo_proxy_overload_connections_total`: connections over `max_connections`;
/// - `kneo_proxy_tunnels_total`: upgrades the upstream accepted (`101`), each
///   a tunnel joining the two connections (WebSocket, say);
/// - `kneo_proxy_tunnels_open`: of those, open now.
pub struct Metrics {
    pub(crate) registry: Registry,
    requests: Family<Labels, Counter>,
    /// Handles into `requests` for the pairs that occur, by outcome then
    /// class: increments on the hot path take no lock.
    handles: Vec<[Option<Counter>; CLASSES.len()]>,
    attempts: Counter,
    retries: Counter,
    pub(crate) budget_refusals: Counter,
    pub(crate) in_flight: Gauge,
    duration: Histogram,
    pub(crate) open_connections: Gauge,
    pub(crate) overload_connections: Counter,
    accepted: Family<[(&'static str, String); 1], Counter>,
    pub(crate) tunnels: Counter,
    pub(crate) tunnels_open: Gauge,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kneo_proxy");
        let family = Family::<Labels, Counter>::default();
        let handles = ExchangeOutcome::ALL
            .iter()
            .map(|&outcome| {
                CLASSES.map(|class| {
                    let occurs = match outcome {
                        ExchangeOutcome::Upstream | ExchangeOutcome::Replayed => true,
                        ExchangeOutcome::BadRequest | ExchangeOutcome::RateLimited => {
                            class == "4xx"
                        }
                        ExchangeOutcome::Idempotency => class == "4xx" || class == "5xx",
                        _ => class == "5xx",
                    };
                    occurs.then(|| {
                        family
                            .get_or_create_owned(&[("outcome", outcome.as_str()), ("class", class)])
                    })
                })
            })
            .collect();
        registry.register(
            "requests",
            "Requests answered, by outcome and status class",
            family.clone(),
        );
        let attempts = Counter::default();
        registry.register(
            "upstream_attempts",
            "Requests sent upstream, retries included",
            attempts.clone(),
        );
        let retries = Counter::default();
        registry.register("retries", "Retries sent upstream", retries.clone());
        let budget_refusals = Counter::default();
        registry.register(
            "budget_refusals",
            "Retries the retry budget refused",
            budget_refusals.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight",
            "Requests waiting for an answer",
            in_flight.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.0005, 2.0, 18));
        registry.register(
            "request_duration_seconds",
            "Time to the response head, retries and waits included",
            duration.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Caller connections open",
            open_connections.clone(),
        );
        let overload_connections = Counter::default();
        registry.register(
            "overload_connections",
            "Caller connections over max_connections",
            overload_connections.clone(),
        );
        let accepted = Family::<[(&'static str, String); 1], Counter>::default();
        registry.register(
            "connections",
            "Caller connections accepted, by worker",
            accepted.clone(),
        );
        let tunnels = Counter::default();
        registry.register(
            "tunnels",
            "Upgrades the upstream accepted (101), each a tunnel",
            tunnels.clone(),
        );
        let tunnels_open = Gauge::default();
        registry.register("tunnels_open", "Tunnels open", tunnels_open.clone());
        Metrics {
            registry,
            requests: family,
            handles,
            attempts,
            retries,
            budget_refusals,
            in_flight,
            duration,
            open_connections,
            overload_connections,
            accepted,
            tunnels,
            tunnels_open,
        }
    }

    /// Records one answered request.
    pub(crate) fn record(
        &self,
        outcome: ExchangeOutcome,
        status: StatusCode,
        attempts: u32,
        elapsed: Duration,
    ) {
        let class = match status.as_u16() {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        match &self.handles[outcome as usize][class] {
            Some(counter) => {
                counter.inc();
            }
            None => {
                let labels = [("outcome", outcome.as_str()), ("class", CLASSES[class])];
                self.requests.get_or_create(&labels).inc();
            }
        };
        if attempts > 0 {
            self.attempts.inc_by(u64::from(attempts));
            self.retries.inc_by(u64::from(attempts - 1));
        }
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// The counter of connections `worker` accepts.
    pub(crate) fn accepted(&self, worker: usize) -> Counter {
        self.accepted
            .get_or_create_owned(&[("worker", worker.to_string())])
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// kneo's `RatioBudget`, counting refusals.
pub(crate) struct CountingBudget {
    pub(crate) inner: RatioBudget,
    pub(crate) refusals: Counter,
}

impl Budget for CountingBudget {
    fn deposit(&self) {
        self.inner.deposit();
    }

    fn withdraw(&self) -> bool {
        let ok = self.inner.withdraw();
        if !ok {
            self.refusals.inc();
        }
        ok
    }
}

/// One more on a gauge while it lives: a request in flight, an open tunnel.
#[derive(Debug)]
pub(crate) struct Held(Gauge);

impl Held {
    pub(crate) fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}
