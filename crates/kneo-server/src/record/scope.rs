//! Whose key is it: the [`Scope`] of a request, from a pluggable [`MakeScope`];
//! by default [`CredentialScope`], a keyed hash of every credential the
//! request carries (its docs state the security property).

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use http::request::Parts;
use http::HeaderName;
use kneo_core::credential::Credentials;
use sha2::{Digest, Sha256};

use super::fingerprint::hex;

/// The caller a key belongs to, as a 32-byte digest of whatever identifies
/// them (so a credential is never kept raw).
///
/// Keys are looked up per scope: one caller can neither replay nor block
/// another's key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope([u8; 32]);

impl Scope {
    /// The scope identified by `bytes` (a tenant id, an account number):
    /// their plain SHA-256.
    ///
    /// Plain, not keyed, because what a closure returns is meant to be an
    /// identifier, not a secret: its scope is then the same in every
    /// deployment and needs no secret to agree on. A plain digest of a
    /// password can be reversed with a dictionary, so **do not feed it a
    /// credential**: scope credentials with [`CredentialScope`] (which takes
    /// any header with [`header`](CredentialScope::header)).
    pub fn of(bytes: impl AsRef<[u8]>) -> Self {
        Scope(Sha256::digest(bytes.as_ref()).into())
    }

    /// The scope of requests that identify no caller, for a closure: the
    /// digest of nothing. ([`CredentialScope`] gives requests without a
    /// credential a keyed scope of their own.)
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
/// is hashed into the scope with [`Scope::of`] (a plain SHA-256: return an
/// identifier such as a tenant id, never a credential):
///
/// ```
/// use http::Request;
/// use kneo_server::idempotency::{CredentialScope, MakeScope, Scope};
///
/// // One scope per tenant, from a header the auth layer in front set.
/// let per_tenant = |req: &http::request::Parts| {
///     req.headers.get("x-tenant").map(|v| v.as_bytes().to_vec()).unwrap_or_default()
/// };
/// let (parts, ()) = Request::post("/").header("x-tenant", "acme").body(()).unwrap().into_parts();
/// assert_eq!(per_tenant.scope(&parts), Scope::of(b"acme"));
///
/// // The default: every credential header, keyed.
/// let scope = CredentialScope::new();
/// let tenant = |key: &str| Request::post("/").header("x-api-key", key).body(()).unwrap().into_parts().0;
/// assert_ne!(scope.scope(&tenant("tenant1")), scope.scope(&tenant("tenant2")));
/// assert_eq!(scope.scope(&tenant("tenant1")), scope.scope(&tenant("tenant1")));
/// assert_ne!(scope.scope(&tenant("tenant1")), Scope::of(b"tenant1"), "keyed, not plain");
/// ```
///
/// An implementation MUST give two requests the same scope only when they
/// come from the same caller, and SHOULD give a caller's retry the scope of
/// its first request (or the retry runs again). It MUST NOT block: it runs
/// on every keyed request, before the store is asked.
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

/// The secret [`CredentialScope`] uses when the deployment gives none.
///
/// It is **public** (it is right here): scopes keyed with it can be tested
/// against guessed credentials by anyone who can read the store's key names.
/// Good for tests and a single process; give a shared store your own with
/// [`CredentialScope::secret`].
pub const DEFAULT_SCOPE_SECRET: &[u8] = b"kneo-server default scope secret: public, for tests only";

/// The default [`MakeScope`]: an HMAC-SHA256, under a deployment's secret, of
/// every credential the request carries.
///
/// The credential is the values of `Authorization`, `Proxy-Authorization`,
/// `X-Api-Key` and `Api-Key`, plus the [headers](Self::header) and
/// [cookies](Self::cookie) added, written as
/// [`Credentials::write`] does. A request carrying none of them has the one
/// anonymous scope of this secret.
///
/// ```
/// use http::Request;
/// use kneo_server::idempotency::{CredentialScope, MakeScope};
///
/// let scope = CredentialScope::new()
///     .header(http::HeaderName::from_static("x-tenant-key"))
///     .cookie("session")
///     .secret(b"32 random bytes from the deployment's secret store");
/// let request = |cookie: &str| {
///     Request::post("/orders").header("cookie", cookie).body(()).unwrap().into_parts().0
/// };
/// // Two sessions, two callers; another analytics cookie, the same caller.
/// assert_ne!(scope.scope(&request("session=alice")), scope.scope(&request("session=bob")));
/// assert_eq!(
///     scope.scope(&request("session=alice; _ga=1")),
///     scope.scope(&request("_ga=2; session=alice")),
/// );
/// // Another secret, other scopes.
/// let other = CredentialScope::new().cookie("session").secret(b"another deployment");
/// assert_ne!(scope.scope(&request("session=alice")), other.scope(&request("session=alice")));
/// // Debug names the headers and cookies, never the secret.
/// assert!(!format!("{scope:?}").contains("random"));
/// ```
///
/// # The security property
///
/// A record is filed under *(scope, key)*, so the scope decides who may be
/// handed a stored response. Two callers whose requests carry different
/// credentials get different scopes, and so never see each other's answers
/// (nor block each other's keys), whichever header the credential travels
/// in: by default it reads `Authorization`,
/// `Proxy-Authorization`, `X-Api-Key` (Anthropic) and `Api-Key` (Azure
/// OpenAI), each value framed so that an absent header differs from an empty
/// one and no two header sets collide (the rule is
/// [`kneo_core::credential`], the one kneo's client throttle uses too).
/// More headers are added with [`header`](Self::header).
///
/// **Cookies are opt-in, by name** ([`cookie`](Self::cookie)): a
/// browser's whole `Cookie` header changes between retries (analytics,
/// rotated tokens), so hashing it would turn an honest retry into a second
/// execution. Name the cookie that identifies the session; the others are
/// never read.
///
/// **The scope cannot be reversed.** It is an HMAC-SHA256 of the credential
/// under a secret the deployment provides ([`secret`](Self::secret)), so
/// the scope visible in a store (a Redis key name, a Postgres row) cannot be
/// checked against a dictionary of passwords without the secret. Without one,
/// the scope is keyed with [`DEFAULT_SCOPE_SECRET`], which is public: fine
/// for tests and a single process with a [`MemoryStore`](crate::MemoryStore),
/// **not for a shared store**, whose key names anyone with read access to it
/// could then test guesses against. Every server sharing a store must use
/// the same secret (another secret is another scope: retries through another
/// server would run again); changing it orphans the records made under the
/// old one for their TTL.
///
/// **Credential rotation.** A refreshed token (an OAuth access token renewed
/// between a request and its retry) is a new credential, so a new scope: the
/// retry runs again. When credentials rotate faster than retries end, scope
/// by what they stand for, the tenant or account id your authentication
/// layer resolved, with a closure (see [`MakeScope`]) instead.
#[derive(Clone)]
pub struct CredentialScope {
    credentials: Credentials,
    /// The MAC keyed with the secret, cloned per request: the secret itself
    /// is not kept.
    mac: Hmac<Sha256>,
    secret_set: bool,
}

impl CredentialScope {
    /// The four default headers, no cookies, keyed with the public
    /// [`DEFAULT_SCOPE_SECRET`] until [`secret`](Self::secret) is called.
    pub fn new() -> Self {
        CredentialScope {
            credentials: Credentials::new(),
            mac: keyed(DEFAULT_SCOPE_SECRET),
            secret_set: false,
        }
    }

    /// Adds a header that carries a credential (a tenant key, a custom token
    /// header) to the four defaults.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.credentials = self.credentials.header(name);
        self
    }

    /// Adds a cookie, by its exact name, that identifies the caller (a
    /// session id). Cookies are opt-in: other cookies are never read, so a
    /// retry whose analytics cookie changed keeps its scope.
    pub fn cookie(mut self, name: impl Into<String>) -> Self {
        self.credentials = self.credentials.cookie(name);
        self
    }

    /// Keys the scope with the deployment's secret (at least 32 random bytes
    /// recommended), so the scopes in the store cannot be checked against
    /// guessed credentials. Every server sharing a store must use the same
    /// one. The secret is not kept, only the MAC state made from it.
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.mac = keyed(secret.as_ref());
        self.secret_set = true;
        self
    }

    /// Which headers and cookies are read.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }
}

impl Default for CredentialScope {
    /// [`CredentialScope::new`].
    fn default() -> Self {
        Self::new()
    }
}

/// Names the headers and cookies, and whether a secret was set; never the secret.
impl fmt::Debug for CredentialScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialScope")
            .field("headers", &self.credentials.headers())
            .field("cookies", &self.credentials.cookies())
            .field("secret", &if self.secret_set { "set" } else { "default" })
            .finish()
    }
}

impl MakeScope for CredentialScope {
    fn scope(&self, request: &Parts) -> Scope {
        let mut mac = self.mac.clone();
        self.credentials
            .write(&request.headers, |bytes| mac.update(bytes));
        Scope(mac.finalize().into_bytes().into())
    }
}

fn keyed(secret: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .expect("invariant: HMAC takes a key of any length")
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::post("/orders");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).expect("valid").into_parts().0
    }

    #[test]
    fn each_credential_header_separates_tenants() {
        let scope = CredentialScope::new();
        for name in [
            "authorization",
            "proxy-authorization",
            "x-api-key",
            "api-key",
        ] {
            let one = scope.scope(&parts(&[(name, "tenant1")]));
            let two = scope.scope(&parts(&[(name, "tenant2")]));
            assert_ne!(one, two, "{name}");
            assert_eq!(one, scope.scope(&parts(&[(name, "tenant1")])), "{name}");
            // With a shared Authorization, the other header still separates.
            if name != "authorization" {
                let shared = |v| scope.scope(&parts(&[("authorization", "Bearer k"), (name, v)]));
                assert_ne!(shared("tenant1"), shared("tenant2"), "{name}");
            }
        }
    }

    #[test]
    fn absent_empty_and_other_headers() {
        let scope = CredentialScope::new();
        let none = scope.scope(&parts(&[]));
        assert_ne!(none, scope.scope(&parts(&[("x-api-key", "")])));
        assert_eq!(
            none,
            scope.scope(&parts(&[("x-tenant", "a")])),
            "not a credential by default"
        );
        let custom = CredentialScope::new().header(HeaderName::from_static("x-tenant"));
        assert_ne!(
            custom.scope(&parts(&[("x-tenant", "a")])),
            custom.scope(&parts(&[("x-tenant", "b")]))
        );
    }

    #[test]
    fn cookies_only_by_name_and_only_when_asked() {
        let by_default = CredentialScope::new();
        assert_eq!(
            by_default.scope(&parts(&[("cookie", "session=a")])),
            by_default.scope(&parts(&[("cookie", "session=b")])),
            "cookies are opt-in"
        );
        let sessions = CredentialScope::new().cookie("session");
        assert_ne!(
            sessions.scope(&parts(&[("cookie", "session=a")])),
            sessions.scope(&parts(&[("cookie", "session=b")]))
        );
        assert_eq!(
            sessions.scope(&parts(&[("cookie", "_ga=1; session=a; csrf=x")])),
            sessions.scope(&parts(&[
                ("cookie", "csrf=y; session=a"),
                ("cookie", "_ga=2")
            ])),
            "an unrelated cookie changing keeps the scope"
        );
    }

    #[test]
    fn keyed_not_a_plain_digest_and_the_secret_matters() {
        let credential = "Basic YWxpY2U6aHVudGVyMg==";
        let request = parts(&[("authorization", credential)]);
        let default = CredentialScope::new().scope(&request);
        assert_ne!(default, Scope::of(credential), "not the plain SHA-256");
        let mut material = Vec::new();
        Credentials::new().write(&request.headers, |b| material.extend_from_slice(b));
        assert_ne!(
            default,
            Scope::of(&material),
            "not the SHA-256 of the material either"
        );

        let mut mac = keyed(DEFAULT_SCOPE_SECRET);
        mac.update(&material);
        let want: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(default.as_bytes(), &want, "HMAC-SHA256 of the material");

        let a = CredentialScope::new().secret("a").scope(&request);
        let b = CredentialScope::new().secret("b").scope(&request);
        assert_ne!(a, b);
        assert_ne!(a, default);
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let scope = CredentialScope::new()
            .cookie("session")
            .secret("hunter2-hunter2");
        let debug = format!("{scope:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("x-api-key") && debug.contains("session") && debug.contains("set"));
        assert!(format!("{:?}", CredentialScope::new()).contains("default"));
    }
}
