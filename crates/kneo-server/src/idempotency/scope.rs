//! Whose key is it: the [`Scope`] of a request, from a pluggable [`MakeScope`].

use std::fmt;

use http::header::AUTHORIZATION;
use http::request::Parts;
use sha2::{Digest, Sha256};

use super::fingerprint::hex;

/// The caller a key belongs to, as a SHA-256 digest of whatever identifies
/// them (so a credential is never kept raw).
///
/// Keys are looked up per scope: one caller can neither replay nor block
/// another's key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope([u8; 32]);

impl Scope {
    /// The scope identified by `bytes` (an API key, a tenant id, ...).
    pub fn of(bytes: impl AsRef<[u8]>) -> Self {
        Scope(Sha256::digest(bytes.as_ref()).into())
    }

    /// The scope of requests that identify no caller: the digest of nothing.
    pub fn anonymous() -> Self {
        Scope::of([])
    }

    /// The 32 bytes of the digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({})", hex(&self.0[..8]))
    }
}

/// Makes the [`Scope`] of a request, before its body is read.
///
/// Implemented for closures `Fn(&Parts) -> impl AsRef<[u8]>`, whose output
/// is hashed into the scope:
///
/// ```
/// use http::Request;
/// use kneo_server::idempotency::{AuthorizationScope, MakeScope, Scope};
///
/// // One scope per tenant, from a header the auth layer in front set.
/// let per_tenant = |req: &http::request::Parts| {
///     req.headers.get("x-tenant").map(|v| v.as_bytes().to_vec()).unwrap_or_default()
/// };
/// let (parts, ()) = Request::post("/").header("x-tenant", "acme").body(()).unwrap().into_parts();
/// assert_eq!(per_tenant.scope(&parts), Scope::of(b"acme"));
///
/// // The default: the Authorization header's value, hashed.
/// let (parts, ()) = Request::post("/").header("authorization", "Bearer k1").body(()).unwrap().into_parts();
/// assert_eq!(AuthorizationScope.scope(&parts), Scope::of(b"Bearer k1"));
/// ```
pub trait MakeScope: Send + Sync + 'static {
    /// The scope of the request with these parts.
    fn scope(&self, request: &Parts) -> Scope;
}

impl<F, T> MakeScope for F
where
    F: Fn(&Parts) -> T + Send + Sync + 'static,
    T: AsRef<[u8]>,
{
    fn scope(&self, request: &Parts) -> Scope {
        Scope::of(self(request))
    }
}

/// The default [`MakeScope`]: the SHA-256 of the `Authorization` header's
/// value; [`Scope::anonymous`] when there is none.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthorizationScope;

impl MakeScope for AuthorizationScope {
    fn scope(&self, request: &Parts) -> Scope {
        match request.headers.get(AUTHORIZATION) {
            Some(value) => Scope::of(value.as_bytes()),
            None => Scope::anonymous(),
        }
    }
}
