//! kneo-proxy: a gateway sidecar. Any HTTP client (Python, Node, a shell
//! script) sends plain HTTP to it; it forwards upstream through the kneo
//! stack (request ids, idempotency keys, honest retries with `Retry-After`,
//! a retry budget) and hands the upstream's answer back unchanged, or a typed
//! problem when there is none.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use kneo_proxy::{Proxy, ProxyConfig};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Nothing listens on port 1: the proxy answers for the upstream.
//! let config = ProxyConfig::new("http://127.0.0.1:1").unwrap().client(kneo::ClientLayer::new().max_attempts(1));
//! let proxy: Proxy<Full<Bytes>> = Proxy::new(&config, None).unwrap();
//! let req = Request::get("/runs/7").header("x-request-id", "order-7").body(Full::default()).unwrap();
//! let res = proxy.oneshot(req).await.unwrap();
//!
//! assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! assert_eq!(res.headers()["x-request-id"], "order-7");
//! let body: serde_json::Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
//! assert_eq!(body["code"], "api_connection");
//! assert_eq!(body["request_id"], "order-7");
//! assert_eq!(body["attempts"], 1);
//! # }
//! ```
//!
//! # The pieces
//!
//! - [`Proxy`]: the forwarding `Service`. kneo's [`ClientLayer`](kneo::ClientLayer)
//!   (request id, idempotency key, retry) over [`Connections`] (HTTP/1.1
//!   connections driven by their own requests, or hyper-util's client for HTTP/2),
//!   with [`MapErrorLayer::map_responses(false)`](kneo::map_error::MapErrorLayer::map_responses)
//!   at the bottom so that upstream answers, 4xx and 5xx included, pass
//!   through after the retry decision, bodies streaming.
//! - [`headers::rewrite`]: the header rules (hop-by-hop, `X-Forwarded-*`,
//!   `Via`), one pure function.
//! - The problem answers (`502`, `504`, `503`), documented on [`ExchangeOutcome`].
//! - [`Admin`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`Workers`]: thread-per-core serving (a listener, a runtime and a pool
//!   per worker), what `kneo proxy` runs.
//! - [`serve`] and [`serve_admin`]: hyper's HTTP/1 and HTTP/2 (h2c, prior
//!   knowledge) servers with a header-read timeout, a header size limit, a
//!   connection limit and a graceful drain; upgrades (WebSocket) are
//!   forwarded once and joined into a tunnel on `101`.
//!
//! Flags, signals and the access log's format are the binary's (`kneo
//! proxy`); this crate takes a [`ProxyConfig`], a [`ServerConfig`], a
//! shutdown future and an [`Exchange`] hook.
//!
//! # Problem answers
//!
//! | status | when | `type` | `code` |
//! |---|---|---|---|
//! | 502 | the upstream could not be reached, or hung up | `urn:kneo:problem:upstream-unreachable` | `api_connection` |
//! | 504 | the per-attempt timeout or the deadline ran out | `urn:kneo:problem:upstream-timeout` | `api_timeout` |
//! | 503 | the proxy is at `max_connections` | `urn:kneo:problem:overloaded` | `too_many_connections` |
//! | 400 | the request target cannot be forwarded | `urn:kneo:problem:bad-request` | `invalid_request` |
//!
//! Each has `title`, `status`, `detail`, and the extensions `code`, `kind`,
//! `request_id` and `attempts`, and carries `X-Request-ID`.
//!
//! # One request id, every answer recorded
//!
//! [`serve`] settles each request's id before anything else sees it: the
//! caller's `X-Request-ID` when it is valid (1–128 visible ASCII
//! characters), else a new UUID v4 made as kneo's `RequestIdLayer` makes
//! them. A layer in front ([`serve_with`]), the kneo stack and the upstream
//! all see that one id, and every answer carries it, unless the upstream
//! answered with an `X-Request-ID` of its own, which the caller gets
//! unchanged (the [`Exchange`] has both: [`Exchange::request_id`] and
//! [`Exchange::upstream_request_id`]).
//!
//! Every answer is recorded once, in the [`Metrics`]
//! (`kneo_proxy_requests_total{outcome, class}`) and the [`Exchange`] hook,
//! whoever made it: [`ExchangeOutcome::as_str`] names it.
//!
//! | outcome | answer | attempts |
//! |---|---|---|
//! | `upstream` | the upstream's, passed on | 1 or more |
//! | `unreachable`, `timeout`, `overloaded`, `bad_request`, `rate_limited` | the problems above | as made |
//! | `replayed` | a stored answer replayed by the layer in front (`Idempotent-Replayed: true`) | 0 |
//! | `idempotency` | the idempotency layer's own problems: `400`, `409`, `410`, `413`, `422`, `503` | 0 |
//!
//! Answers the layer in front made by itself also get this request's
//! `X-Request-ID` when they carry none, and `Via` when they carry none (a
//! replay keeps the `Via` of the answer it replays).
//!
//! With kneo-server's idempotency layer in front, a replay answers with the
//! **retry's** `X-Request-ID`; the id of the request whose answer it is, when
//! that answer only echoed it, is under `Original-Request` (Stripe's
//! header). An `X-Request-ID` the upstream set itself is part of its answer
//! and is replayed as it was:
//!
//! ```http
//! HTTP/1.1 201 Created
//! idempotent-replayed: true
//! original-request: order-7
//! x-request-id: order-7-retry
//! via: 1.1 kneo
//! ```

mod admin;
mod arrival;
mod body;
mod config;
mod detach;
mod forward;
pub mod headers;
mod metrics;
mod outcome;
pub mod path;
mod pool;
mod problem;
mod server;
mod shared;
mod upgrade;
mod workers;

pub use admin::Admin;
pub use body::ProxyBody;
pub use config::{ConfigError, ProxyConfig, ServerConfig, Upstream};
pub use detach::{Detach, DetachFuture};
pub use forward::{Incoming, Proxy, ResponseFuture};
pub use metrics::Metrics;
pub use outcome::{Exchange, ExchangeHook, ExchangeLog, ExchangeOutcome, FLUSH_EVERY};
pub use pool::{Connections, ConnectionsFuture, UpstreamBody};
pub use problem::{METHOD_NOT_ALLOWED, TOO_MANY_CONNECTIONS};
pub use server::{front, serve, serve_admin, serve_with, Drained, Front, FrontBody};
pub use shared::ClientAddr;
pub use shared::Health;
pub use workers::{MakeFront, Workers};
