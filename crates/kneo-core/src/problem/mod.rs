//! RFC 9457 problem details: reading them from an upstream's error response
//! ([`Problem`]), and kneo's one vocabulary for the problems it answers with
//! itself ([`ProblemType`], [`ProblemResponse`]), in kneo-server's layers and
//! in `kneo proxy` alike.
//!
//! # kneo's problem types
//!
//! Every problem kneo makes has a `type` under one scheme, `urn:kneo:problem:`
//! followed by a name: a URN names the problem and is not a page to fetch
//! (RFC 9457 §3.1.1 allows a type URI that does not resolve). The `code`
//! member carries kneo's machine code ([`codes`](crate::codes)); clients
//! should branch on `code` or on the status, and read `type` as a stable
//! name.
//!
//! | `type` | title | status | made by |
//! |---|---|---|---|
//! | `urn:kneo:problem:upstream-unreachable` | Upstream unreachable | 502 | an upstream that could not be reached or hung up |
//! | `urn:kneo:problem:upstream-timeout` | Upstream timed out | 504 | an upstream that did not answer in time |
//! | `urn:kneo:problem:upstream-failed` | Upstream failed | 502 | an upstream's own failure (5xx, auth, an unreadable answer) |
//! | `urn:kneo:problem:not-found` | Not found | 404 | an upstream's 404 |
//! | `urn:kneo:problem:conflict` | Conflict | 409 | an upstream's 409 |
//! | `urn:kneo:problem:rate-limited` | Rate limited | 429 | an upstream's 429, or its rate limit spent beyond the longest wait |
//! | `urn:kneo:problem:overloaded` | Too many connections | 503 | `kneo proxy` at `--max-connections` |
//! | `urn:kneo:problem:bad-request` | Bad request | 400, 405 | a request that cannot be forwarded or read |
//! | `urn:kneo:problem:idempotency-key-missing` | Idempotency-Key required | 400 | kneo-server, a route that requires a key |
//! | `urn:kneo:problem:idempotency-key-invalid` | Invalid Idempotency-Key | 400 | kneo-server |
//! | `urn:kneo:problem:request-body-too-large` | Request body too large | 413 | kneo-server, a keyed body over the limit |
//! | `urn:kneo:problem:idempotency-key-in-use` | Request in progress | 409 | kneo-server, the key's request still runs |
//! | `urn:kneo:problem:idempotency-key-mismatch` | Idempotency-Key reused | 422 | kneo-server, another request under the key |
//! | `urn:kneo:problem:response-not-stored` | Response not stored | 410 | kneo-server, the key's answer was not kept |
//! | `urn:kneo:problem:upstream-outcome-unknown` | Upstream outcome unknown | 502, 504 | kneo-server, a gateway's answer that may have been applied |
//! | `urn:kneo:problem:store-unavailable` | Idempotency store unavailable | 503 | kneo-server, the store could not be reached |
//! | `urn:kneo:problem:rolled-back` | Request rolled back | 503 | kneo-server, a transactional response that failed before it was complete |
//! | `urn:kneo:problem:interrupted` | Request interrupted | 500 | kneo-server, a handler that stopped while it ran |
//!
//! [`ProblemType::of_error`] is the one mapping from a [`kneo::Error`](crate::Error)
//! (an upstream's failure) to the status and type a server or a gateway
//! answers its own caller with. A problem a user makes with
//! [`ProblemResponse::new`] is `about:blank` unless given a type.

mod parse;
mod response;
mod types;

pub use parse::{Problem, PROBLEM_JSON};
pub use response::ProblemResponse;
pub use types::{ProblemType, TYPE_PREFIX};
