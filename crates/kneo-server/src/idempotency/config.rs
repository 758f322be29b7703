//! What every request through one [`IdempotencyLayer`](super::IdempotencyLayer)
//! shares: its settings, and their defaults and bounds.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::record::scope::{CredentialScope, MakeScope};
pub use crate::record::MAX_DURATION;

/// The default cap on a keyed request's body: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// The default cap on a stored response body: 1 MiB.
pub const DEFAULT_MAX_RESPONSE: usize = 1 << 20;
/// The default lease of an in-flight claim: 60 s.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// The default life of a completed record: 24 h.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The default bound on how long one request's work keeps its claim alive
/// by renewing it: 15 minutes.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(15 * 60);

/// The shortest lease a layer uses (a shorter one is raised to it): 100 ms.
pub const MIN_LEASE: Duration = Duration::from_millis(100);
/// Configuration shared by every request through one layer.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) methods: Vec<Method>,
    pub(crate) require: bool,
    pub(crate) scope: Arc<dyn MakeScope>,
    pub(crate) max_body: usize,
    pub(crate) max_response: usize,
    pub(crate) lease: Duration,
    pub(crate) ttl: Duration,
    pub(crate) max_hold: Duration,
    pub(crate) wait_for_first: Duration,
    pub(crate) fail_open: bool,
}

impl Config {
    /// `true` when a response body of `len` bytes is over `max_response`:
    /// not stored (a retry of its key gets `410`).
    pub(crate) fn too_big_to_store(&self, len: u64) -> bool {
        usize::try_from(len).map_or(true, |len| len > self.max_response)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            methods: vec![Method::POST, Method::PATCH],
            require: false,
            scope: Arc::new(CredentialScope::new()),
            max_body: DEFAULT_MAX_BODY,
            max_response: DEFAULT_MAX_RESPONSE,
            lease: DEFAULT_LEASE,
            ttl: DEFAULT_TTL,
            max_hold: DEFAULT_MAX_HOLD,
            wait_for_first: Duration::ZERO,
            fail_open: false,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("methods", &self.methods)
            .field("require", &self.require)
            .field("max_body", &self.max_body)
            .field("max_response", &self.max_response)
            .field("lease", &self.lease)
            .field("ttl", &self.ttl)
            .field("max_hold", &self.max_hold)
            .field("wait_for_first", &self.wait_for_first)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}
