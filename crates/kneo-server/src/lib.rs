//! kneo-server: tower middleware for HTTP API servers, the server half of
//! kneo.
//!
//! kneo's client stamps an `Idempotency-Key` on every POST and PATCH and
//! retries keyed requests; that is only safe when the server honours the key.
//! [`IdempotencyLayer`] makes it so with one `.layer(..)`: a keyed request
//! runs once, concurrent duplicates wait, retries get the stored response.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use kneo_server::{IdempotencyLayer, MemoryStore};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let runs = Arc::new(AtomicUsize::new(0));
//! let handler = {
//!     let runs = runs.clone();
//!     service_fn(move |_req: Request<_>| {
//!         let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
//!         async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("charge {n}"))))) }
//!     })
//! };
//! let svc = IdempotencyLayer::new(MemoryStore::new()).layer(handler);
//!
//! let charge = || Request::post("/charges").header("idempotency-key", "k-1").body(Full::new(Bytes::from("10 EUR"))).unwrap();
//! let first = svc.clone().oneshot(charge()).await.unwrap();
//! let retry = svc.clone().oneshot(charge()).await.unwrap();
//!
//! assert_eq!(runs.load(Ordering::SeqCst), 1, "the retry did not run the handler");
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! assert_eq!(first.into_body().collect().await.unwrap().to_bytes(), "charge 1");
//! assert_eq!(retry.into_body().collect().await.unwrap().to_bytes(), "charge 1");
//! # }
//! ```
//!
//! | module | what it has |
//! |---|---|
//! | [`idempotency`] | the layer, key parsing, fingerprint, records |
//! | [`store`] | the [`Store`] contract, [`MemoryStore`], `RedisStore` (feature `redis`) |
//! | [`problem`] | kneo-core's RFC 9457 problems, re-exported: kneo's one problem vocabulary and `kneo::Error` → problem (feature `axum` for `IntoResponse`) |

pub mod idempotency;
mod record;
pub mod store;
#[cfg(feature = "postgres")]
pub mod transactional;

pub use idempotency::{Idempotency, IdempotencyLayer};
pub use kneo_core::problem;
pub use kneo_core::problem::ProblemResponse;
#[cfg(feature = "postgres")]
pub use store::PostgresStore;
#[cfg(feature = "redis")]
pub use store::RedisStore;
pub use store::{MemoryStore, Store};
