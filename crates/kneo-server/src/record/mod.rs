//! What a record is, below both the layer and the stores: the key it is
//! kept under ([`RecordKey`]: the caller's scope and key), the request's
//! [`Fingerprint`], and what is kept ([`Claim`], [`Completed`], [`Record`]).
//! The public names are re-exported from [`idempotency`](crate::idempotency).

pub(crate) mod fingerprint;
pub(crate) mod key;
pub(crate) mod scope;
pub(crate) mod stored;

use std::time::Duration;

pub use fingerprint::Fingerprint;
pub use key::{RecordKey, MAX_KEY_LEN};
pub use scope::{CredentialScope, MakeScope, Scope, DEFAULT_SCOPE_SECRET};
pub use stored::{Claim, Completed, Completion, DecodeError, FencingToken, Record, StoredResponse};

/// The longest lease, TTL or hold a layer uses (a longer one is lowered to
/// it): 366 days, far from any clock's or store's overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 60 * 60);
