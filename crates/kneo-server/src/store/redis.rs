//! [`RedisStore`]: records in Redis, shared by every server of a fleet.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::aio::ConnectionManagerConfig;
use redis::{Client, ClientTlsConfig, Script, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::{Acquire, Store, StoreError};
use crate::record::{Claim, Completed, FencingToken, Fingerprint, RecordKey, MAX_DURATION};

/// The default key prefix.
pub const DEFAULT_REDIS_PREFIX: &str = "kneo:idempotency:";
/// The default limit on each Redis command, connecting included.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Replaces the claim (the exact value `ARGV[1]`) with the record `ARGV[2]`
/// for `ARGV[3]` ms; 1 when done, 0 when the claim no longer holds.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    return 1
end
return 0",
    )
});

/// Deletes the claim (the exact value `ARGV[1]`); 1 when done, 0 otherwise.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0",
    )
});

/// Extends the claim (the exact value `ARGV[1]`) to `ARGV[2]` ms from now;
/// 1 when done, 0 when the claim no longer holds.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0",
    )
});

/// A [`Store`] in Redis (7.0 or later, or Valkey), for servers that share keys.
///
/// Each key is one Redis string, `<prefix><scope hex>:<key>`, holding the
/// [`Record`](crate::idempotency::Record) in its compact encoding:
///
/// - **claim**: `SET key <claim> NX PX <lease> GET`: one command that claims a
///   free key or returns what is there (a claim or a completed record), so a
///   replay costs exactly this one command;
/// - **complete**: a Lua script (by `EVALSHA`) that swaps the claim for the
///   record with `PX <ttl>` only if the key still holds *this* claim (its
///   fencing token is part of the value);
/// - **renew**: a Lua script that moves the claim's expiry to `lease` from
///   now only if the key still holds this claim (the layer's heartbeat, every
///   third of the lease while the work runs);
/// - **release**: a Lua script that deletes the key only if it still holds
///   this claim.
///
/// A first request costs 2 commands (claim, complete), a replay 1. The scripts
/// are loaded when the store connects and after a Redis restart (redis-rs
/// retries a `NOSCRIPT` with `SCRIPT LOAD`). Every command is bounded by
/// [`timeout`](RedisStoreBuilder::timeout), so an unreachable Redis fails
/// fast (and the layer fails closed); the `ConnectionManager` reconnects in
/// the background.
///
/// Fencing tokens are random 64-bit numbers: a claim is told apart from a
/// later claim on the same key with odds of 2⁻⁶⁴ of a collision.
///
/// **Redis must not evict.** Every claim and record has a TTL, so any
/// `maxmemory-policy` but `noeviction` (`volatile-ttl` first of all) may
/// drop an in-flight claim under memory pressure and let a second request
/// run beside the first. [`connect`](RedisStoreBuilder::connect) reads the
/// policy (`INFO memory`) and refuses such a Redis when it has a memory limit
/// (see [`allow_eviction`](RedisStoreBuilder::allow_eviction)). Run it with
/// `maxmemory-policy noeviction`: when full, Redis then refuses new writes,
/// which the layer answers with `503` (fail closed), and never forgets a claim.
///
/// **A claim that timed out is taken back.** When the claim's `SET` does not
/// answer within the timeout (the layer answers `503`), it may still be
/// executed later; the store then releases that very claim in the
/// background, so it never locks the key for a lease nobody holds.
///
/// **Managed Redis** (Azure Cache, ElastiCache with in-transit encryption,
/// Upstash) takes TLS and an ACL user: `rediss://user:password@host:port/`
/// connects over TLS (rustls), checking the server's certificate against the
/// platform's roots; [`ca_certificate`](RedisStoreBuilder::ca_certificate)
/// trusts a private CA instead, and
/// [`client_certificate`](RedisStoreBuilder::client_certificate) presents a
/// client certificate to a Redis that asks for one. The URL (its password)
/// and the keys are never printed: not by `Debug`, nor in errors or logs.
/// An application that picks its own rustls crypto provider installs it
/// before connecting a `rediss://` store; otherwise the store installs ring
/// as the process' default.
///
/// ```no_run
/// use kneo_server::{IdempotencyLayer, RedisStore};
///
/// # async fn demo() -> Result<(), kneo_server::store::StoreError> {
/// let store = RedisStore::builder("redis://127.0.0.1:6379/")
///     .prefix("payments:idem:")
///     .connect()
///     .await?;
/// let layer = IdempotencyLayer::new(store);
///
/// // Over TLS, as an ACL user, with a private CA.
/// let ca = std::fs::read("/etc/redis/ca.pem").expect("the CA certificate");
/// let store = RedisStore::builder("rediss://app:s3cret@redis.internal:6380/")
///     .ca_certificate(ca)
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Configures and connects a [`RedisStore`].
///
/// Its `Debug` shows neither the URL (it may carry a password) nor the
/// certificates and key: only whether they are set.
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    timeout: Duration,
    allow_eviction: bool,
    ca: Option<Vec<u8>>,
    client: Option<ClientTlsConfig>,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so that a new field must be placed here on purpose.
        let Self {
            url,
            prefix,
            timeout,
            allow_eviction,
            ca,
            client,
        } = self;
        f.debug_struct("RedisStoreBuilder")
            .field("tls", &is_tls(url))
            .field("prefix", prefix)
            .field("timeout", timeout)
            .field("allow_eviction", allow_eviction)
            .field("ca_certificate", &ca.is_some())
            .field("client_certificate", &client.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// The prefix of every key (default [`DEFAULT_REDIS_PREFIX`]).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The limit on each command and on each connection attempt (default
    /// [`DEFAULT_REDIS_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects to a Redis that may evict keys under memory pressure (a
    /// `maxmemory-policy` other than `noeviction`), with a warning instead
    /// of an error. Only for a Redis whose memory limit you are sure is
    /// never reached: an evicted claim lets a second request run beside the
    /// first, an evicted record lets a retry run again.
    pub fn allow_eviction(mut self) -> Self {
        self.allow_eviction = true;
        self
    }

    /// Trusts the CA certificates in `pem` (one or more PEM blocks) to sign
    /// the server's certificate, **instead of** the platform's roots: for a
    /// Redis behind a private CA, or a test's. Needs a `rediss://` URL.
    ///
    /// Without it, a `rediss://` URL is checked against the platform's roots
    /// (or the PEM file `SSL_CERT_FILE` names), which is what managed Redis
    /// services need.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// Presents this client certificate chain and its private key (both PEM)
    /// to a Redis that authenticates clients by certificate (mutual TLS,
    /// `tls-auth-clients yes`). Needs a `rediss://` URL. The key is never
    /// printed.
    pub fn client_certificate(
        mut self,
        chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client = Some(ClientTlsConfig {
            client_cert: chain_pem.into(),
            client_key: key_pem.into(),
        });
        self
    }

    /// The redis-rs client: plain, or TLS with the certificates given.
    fn client(&self) -> Result<Client, StoreError> {
        let tls = is_tls(&self.url);
        if tls {
            ensure_crypto_provider();
        }
        if self.ca.is_none() && self.client.is_none() {
            return Client::open(self.url.as_str()).map_err(StoreError::unavailable);
        }
        if !tls {
            return Err(StoreError::unavailable(
                "a CA or client certificate needs a rediss:// URL",
            ));
        }
        if let Some(ca) = &self.ca {
            // redis-rs would take a PEM without a certificate as an empty
            // set of roots, and every handshake would then fail as untrusted.
            let certificates = CertificateDer::pem_slice_iter(ca)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    StoreError::unavailable(format!("the CA certificate is not valid PEM: {e}"))
                })?;
            if certificates.is_empty() {
                return Err(StoreError::unavailable(
                    "the CA certificate PEM holds no certificate",
                ));
            }
        }
        let certificates = TlsCertificates {
            client_tls: self.client.clone(),
            root_cert: self.ca.clone(),
        };
        Client::build_with_tls(self.url.as_str(), certificates).map_err(StoreError::unavailable)
    }

    /// Connects, checks that Redis will not evict claims, and loads the scripts.
    ///
    /// Fails when Redis cannot be reached now, or when it may evict keys
    /// (`maxmemory` set and a `maxmemory-policy` other than `noeviction`;
    /// see [`allow_eviction`](Self::allow_eviction)); once connected, the
    /// store reconnects by itself after an outage.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let client = self.client()?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(self.timeout);
        let conn = within(
            self.timeout * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await?;
        let store = RedisStore {
            conn,
            prefix: self.prefix.into(),
            timeout: self.timeout,
        };
        store.check_eviction(self.allow_eviction).await?;
        for script in [&*COMPLETE, &*RENEW, &*RELEASE] {
            let mut conn = store.conn.clone();
            within(store.timeout, script.load_async(&mut conn)).await?;
        }
        Ok(store)
    }
}

/// `true` for a `rediss://` (or `valkeys://`) URL: TLS.
fn is_tls(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
    })
}

/// redis-rs builds its TLS configuration with the process' default rustls
/// crypto provider, and rustls can only choose one by itself when a single
/// provider is compiled in. So, unless the application installed one (it
/// then keeps it), ring is installed: the TLS connection never panics
/// because another crate of the application compiled in a second provider.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only when another thread installed one first: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Runs a redis future within `limit`; a timeout or an error is "unavailable".
async fn within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(StoreError::unavailable(e)),
        Err(elapsed) => Err(StoreError::unavailable(elapsed)),
    }
}

impl RedisStore {
    /// Starts configuring a store for the Redis at `url`:
    /// `redis://host:port/db`, or `rediss://user:password@host:port/db` for
    /// TLS and an ACL user (managed Redis). The URL is never printed.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_REDIS_PREFIX.to_owned(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            allow_eviction: false,
            ca: None,
            client: None,
        }
    }

    /// Refuses (or, when allowed, warns about) a Redis that may evict keys:
    /// every claim and record has a TTL, so every `volatile-*` and
    /// `allkeys-*` policy can drop an in-flight claim. Read from
    /// `INFO memory`, which managed Redis services allow where `CONFIG` is
    /// renamed; when it cannot be read, a warning says so.
    async fn check_eviction(&self, allow: bool) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let info: String = match within(
            self.timeout,
            redis::cmd("INFO").arg("memory").query_async(&mut conn),
        )
        .await
        {
            Ok(info) => info,
            Err(error) => {
                tracing::warn!(%error, "cannot read Redis' maxmemory-policy; make sure it is noeviction");
                return Ok(());
            }
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let policy = field("maxmemory_policy").unwrap_or("noeviction");
        let limited = field("maxmemory").is_some_and(|m| m != "0");
        match (policy, limited, allow) {
            ("noeviction", _, _) => Ok(()),
            (policy, false, _) | (policy, true, true) => {
                tracing::warn!(
                    maxmemory_policy = policy,
                    "Redis may evict idempotency claims and records under memory pressure \
                     (a second request could then run beside the first); set maxmemory-policy noeviction"
                );
                Ok(())
            }
            (policy, true, false) => Err(StoreError::unavailable(format!(
                "Redis has a memory limit and maxmemory-policy {policy}, so it may evict in-flight \
                 claims and let a request run twice; set maxmemory-policy noeviction \
                 (or build the store with allow_eviction)"
            ))),
        }
    }

    /// Connects with the defaults.
    pub async fn connect(url: impl Into<String>) -> Result<RedisStore, StoreError> {
        Self::builder(url).connect().await
    }

    /// The Redis key of a record.
    pub fn redis_key(&self, key: &RecordKey) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn script(
        &self,
        script: &Script,
        key: &RecordKey,
        args: &[&[u8]],
    ) -> Result<bool, StoreError> {
        let mut invocation = script.key(self.redis_key(key));
        for arg in args {
            invocation.arg(*arg);
        }
        let mut conn = self.conn.clone();
        let done: i64 = within(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(done == 1)
    }
}

/// Whole milliseconds for `PX`/`PEXPIRE`: at least 1 (Redis refuses 0), at
/// most [`MAX_DURATION`](MAX_DURATION) (Redis refuses
/// what overflows its clock).
fn millis(d: Duration) -> u64 {
    let d = d.min(MAX_DURATION);
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStore {
    /// A claim whose `SET` timed out may still land after the caller was
    /// told the store is unavailable: nobody would hold it, and it would
    /// lock the key for its whole lease. So it is released in the
    /// background, fenced by its own value (never anyone else's claim),
    /// until that succeeds or the lease is over; a `SET` that never lands
    /// costs a few `EVALSHA`s, backing off from 50 ms to 1 s.
    fn take_back(&self, key: &RecordKey, claim: Claim, lease: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, key) = (self.clone(), key.clone());
        runtime.spawn(async move {
            let until = tokio::time::Instant::now() + lease.min(MAX_DURATION);
            let mut wait = Duration::from_millis(50);
            while tokio::time::Instant::now() + wait < until {
                tokio::time::sleep(wait).await;
                if let Ok(true) = store.release(&key, &claim).await {
                    tracing::info!(
                        idempotency_key = %key.key(),
                        "a claim that timed out landed late; released it"
                    );
                    return;
                }
                wait = (wait * 2).min(Duration::from_secs(1));
            }
        });
    }
}

impl Store for RedisStore {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Acquire, StoreError> {
        let claim = Claim::new(FencingToken::new(fastrand::u64(..)), fingerprint);
        let value = claim.encode();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.redis_key(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis(lease))
            .arg("GET");
        let mut conn = self.conn.clone();
        let existing: Option<Vec<u8>> = match within(self.timeout, cmd.query_async(&mut conn)).await
        {
            Ok(existing) => existing,
            Err(error) => {
                self.take_back(key, claim, lease);
                return Err(error);
            }
        };
        let Some(bytes) = existing else {
            return Ok(Acquire::Claimed(claim));
        };
        Acquire::held(&bytes)
    }

    async fn complete(
        &self,
        key: &RecordKey,
        claim: &Claim,
        record: &Completed,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let claim = claim.encode();
        let record = record.encode();
        let ttl = millis(ttl).to_string();
        self.script(&COMPLETE, key, &[&claim, &record, ttl.as_bytes()])
            .await
    }

    async fn renew(
        &self,
        key: &RecordKey,
        claim: &Claim,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let claim = claim.encode();
        let lease = millis(lease).to_string();
        self.script(&RENEW, key, &[&claim, lease.as_bytes()]).await
    }

    async fn release(&self, key: &RecordKey, claim: &Claim) -> Result<bool, StoreError> {
        let claim = claim.encode();
        self.script(&RELEASE, key, &[&claim]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "rediss://app:Pa55-word@redis.example:6380/";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIE1vcmUgc2VjcmV0IHRoYW4gYSBwYXNzd29yZA==\n-----END PRIVATE KEY-----\n";

    #[test]
    fn debug_shows_neither_the_url_nor_the_key() {
        let builder = RedisStore::builder(URL)
            .ca_certificate("ca")
            .client_certificate("chain", KEY);
        let shown = format!("{builder:?}");
        for secret in [
            "Pa55-word",
            "app:",
            "redis.example",
            "PRIVATE KEY",
            "MC4CAQ",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("tls: true"), "{shown}");
        assert!(shown.contains("client_certificate: true"), "{shown}");
    }

    #[test]
    fn tls_is_told_by_the_scheme() {
        assert!(is_tls(URL));
        assert!(is_tls("REDISS://h/") && is_tls("valkeys://h/"));
        assert!(!is_tls("redis://h/") && !is_tls("rediss") && !is_tls(""));
    }

    #[test]
    fn tls_options_are_checked_before_connecting() {
        let err = RedisStore::builder("redis://app:Pa55-word@127.0.0.1:1/")
            .ca_certificate("ca")
            .client()
            .expect_err("a CA certificate needs rediss://");
        let text = format!("{err} {err:?}");
        assert!(
            text.contains("rediss://") && !text.contains("Pa55"),
            "{text}"
        );

        let err = RedisStore::builder(URL)
            .ca_certificate("no PEM block here")
            .client()
            .expect_err("no certificate");
        assert!(err.to_string().contains("holds no certificate"), "{err}");

        let err = RedisStore::builder(URL)
            .ca_certificate("-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n")
            .client()
            .expect_err("not base64");
        assert!(err.to_string().contains("not valid PEM"), "{err}");
    }

    #[test]
    fn a_tls_client_has_a_crypto_provider() {
        RedisStore::builder(URL).client().expect("a client");
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
