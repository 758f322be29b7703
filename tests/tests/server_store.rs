//! The `Store` contract (see `kneo_server::store::Store`), as one suite run
//! against every store: `MemoryStore`, `RedisStore` on a real `redis-server`,
//! plain and as managed Redis runs (`rediss://` with an ACL user, on a
//! TLS-only port), and `PostgresStore` (each skipped with a printed reason
//! when its server is not installed; a failure under `CI=true`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use kneo_server::idempotency::{
    Completed, Completion, Fingerprint, RecordKey, Scope, StoredResponse,
};
use kneo_server::store::{Acquire, Store};
use kneo_server::RedisStore;
use kneo_tests::redis::{RedisServer, TLS_PASSWORD, TLS_USER};

const LONG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(300);
/// A TTL or lease that must outlast a few store calls on a loaded machine
/// before it ends.
const LASTING: Duration = Duration::from_secs(2);
/// What each store call of the tests may take (a store's timeout is an upper
/// bound on every call, so well above what a loaded machine needs).
const STORE_TIMEOUT: Duration = Duration::from_secs(3);

fn key(k: &str) -> RecordKey {
    RecordKey::new(Scope::of(b"Bearer test"), k)
}

fn fp(body: &str) -> Fingerprint {
    Fingerprint::of(&Method::POST, "/orders", body.as_bytes())
}

fn record(body: &str, n: u8) -> Completed {
    Completed::new(
        fp(body),
        Completion::Stored(StoredResponse::new(
            StatusCode::CREATED,
            vec![(
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("application/json"),
            )],
            Bytes::from(vec![n; 100]),
        )),
    )
}

async fn claim<St: Store>(store: &St, k: &str, body: &str, lease: Duration) -> Acquire {
    store
        .claim(&key(k), fp(body), lease)
        .await
        .expect("store up")
}

async fn claimed<St: Store>(
    store: &St,
    k: &str,
    lease: Duration,
) -> kneo_server::idempotency::Claim {
    match claim(store, k, "a", lease).await {
        Acquire::Claimed(c) => c,
        other => panic!("expected a claim, got {other:?}"),
    }
}

/// Of many concurrent claims on a free key exactly one wins; the others see
/// the winner's fingerprint.
async fn claim_is_exclusive<St: Store>(store: St) {
    let store = Arc::new(store);
    let results = join_all((0..100).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { claim(&*store, "race", "a", LONG).await })
    }))
    .await;
    let mut wins = 0;
    for r in results {
        match r.expect("task") {
            Acquire::Claimed(_) => wins += 1,
            Acquire::InFlight(holder) => assert_eq!(holder, fp("a")),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wins, 1);
}

/// A completed record is returned to every later claim, with its fingerprint
/// (the store does not compare fingerprints), until its TTL ends.
async fn completed_record_is_returned_until_its_ttl<St: Store>(store: St) {
    let c = claimed(&store, "done", LONG).await;
    assert!(store
        .complete(&key("done"), &c, &record("a", 1), LASTING)
        .await
        .expect("up"));
    assert_eq!(
        claim(&store, "done", "a", LONG).await,
        Acquire::Completed(record("a", 1))
    );
    assert_eq!(
        claim(&store, "done", "other", LONG).await,
        Acquire::Completed(record("a", 1)),
        "fingerprints are the layer's business"
    );
    tokio::time::sleep(LASTING + Duration::from_millis(200)).await;
    assert!(
        matches!(claim(&store, "done", "a", LONG).await, Acquire::Claimed(_)),
        "TTL over"
    );
}

/// A released key is free; releasing twice, or after completion, does nothing.
async fn release_frees_the_key_once<St: Store>(store: St) {
    let c = claimed(&store, "rel", LONG).await;
    assert!(store.release(&key("rel"), &c).await.expect("up"));
    assert!(
        !store.release(&key("rel"), &c).await.expect("up"),
        "already released"
    );
    let c2 = claimed(&store, "rel", LONG).await;
    assert_ne!(c2.token(), c.token(), "a new claim, a new token");
    assert!(
        !store
            .complete(&key("rel"), &c, &record("a", 1), LONG)
            .await
            .expect("up"),
        "old token"
    );
    assert!(store
        .complete(&key("rel"), &c2, &record("a", 2), LONG)
        .await
        .expect("up"));
    assert!(
        !store.release(&key("rel"), &c2).await.expect("up"),
        "completed, not released"
    );
    assert_eq!(
        claim(&store, "rel", "a", LONG).await,
        Acquire::Completed(record("a", 2))
    );
}

/// After its lease a claim is gone: the key can be claimed again, and the
/// stale claim can neither complete nor release, before or after the new
/// claim completes.
async fn stale_claims_are_fenced<St: Store>(store: St) {
    let stale = claimed(&store, "fence", SHORT).await;
    tokio::time::sleep(SHORT + Duration::from_millis(100)).await;
    assert!(
        !store
            .complete(&key("fence"), &stale, &record("a", 1), LONG)
            .await
            .expect("up"),
        "lease over, nobody else yet"
    );
    let fresh = claimed(&store, "fence", LONG).await;
    assert_ne!(fresh.token(), stale.token());
    assert!(!store
        .complete(&key("fence"), &stale, &record("a", 1), LONG)
        .await
        .expect("up"));
    assert!(!store.release(&key("fence"), &stale).await.expect("up"));
    assert!(
        matches!(
            claim(&store, "fence", "a", LONG).await,
            Acquire::InFlight(_)
        ),
        "the fresh claim still holds"
    );
    assert!(store
        .complete(&key("fence"), &fresh, &record("a", 2), LONG)
        .await
        .expect("up"));
    assert!(!store
        .complete(&key("fence"), &stale, &record("a", 1), LONG)
        .await
        .expect("up"));
    assert_eq!(
        claim(&store, "fence", "a", LONG).await,
        Acquire::Completed(record("a", 2))
    );
}

/// Scope and key both name the record.
async fn scope_and_key_name_the_record<St: Store>(store: St) {
    let alice = RecordKey::new(Scope::of(b"Bearer alice"), "k");
    let bob = RecordKey::new(Scope::of(b"Bearer bob"), "k");
    assert!(matches!(
        store.claim(&alice, fp("a"), LONG).await,
        Ok(Acquire::Claimed(_))
    ));
    assert!(matches!(
        store.claim(&bob, fp("a"), LONG).await,
        Ok(Acquire::Claimed(_))
    ));
    assert!(matches!(
        claim(&store, "k2", "a", LONG).await,
        Acquire::Claimed(_)
    ));
}

/// A record too big to store is kept as its status only.
async fn not_stored_outcome_round_trips<St: Store>(store: St) {
    let c = claimed(&store, "big", LONG).await;
    let done = Completed::new(fp("a"), Completion::NotStored(StatusCode::OK));
    assert!(store
        .complete(&key("big"), &c, &done, LONG)
        .await
        .expect("up"));
    assert_eq!(
        claim(&store, "big", "a", LONG).await,
        Acquire::Completed(done)
    );
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(kneo_server::MemoryStore::new()).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(redis) = super::RedisServer::start() else { return };
                    super::$name(super::redis_store(&redis, "kneo:test:").await).await
                }
            )*
        }
        mod redis_tls {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(redis) = super::RedisServer::start_tls() else { return };
                    super::$name(super::redis_tls_store(&redis).await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(pg) = kneo_tests::postgres::PostgresServer::start() else { return };
                    super::$name(super::postgres_store(&pg).await).await
                }
            )*
        }
    };
}

/// `renew` extends only the claim it names, and only while it holds.
async fn renew_extends_only_its_own_live_claim<St: Store>(store: St) {
    let c = claimed(&store, "renewed", LASTING).await;
    assert!(store.renew(&key("renewed"), &c, LONG).await.expect("up"));
    tokio::time::sleep(LASTING + Duration::from_millis(200)).await;
    assert!(
        matches!(
            claim(&store, "renewed", "a", LONG).await,
            Acquire::InFlight(_)
        ),
        "renewed past its first lease"
    );
    // A claim that ended cannot be brought back, nor can another's be renewed.
    let old = claimed(&store, "lapsed", Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let new = claimed(&store, "lapsed", LONG).await;
    assert!(!store.renew(&key("lapsed"), &old, LONG).await.expect("up"));
    assert!(store
        .complete(&key("lapsed"), &new, &record("a", 1), LONG)
        .await
        .expect("up"));
    assert!(
        !store.renew(&key("lapsed"), &new, LONG).await.expect("up"),
        "a completed record is not a claim"
    );
}

/// No duration a caller passes overflows a clock or a Redis command: the
/// store keeps it within its bound instead of panicking or refusing.
async fn huge_durations_are_bounded<St: Store>(store: St) {
    let c = claimed(&store, "huge", Duration::MAX).await;
    assert!(store
        .renew(&key("huge"), &c, Duration::MAX)
        .await
        .expect("up"));
    assert!(store
        .complete(&key("huge"), &c, &record("a", 1), Duration::MAX)
        .await
        .expect("up"));
    assert!(matches!(
        claim(&store, "huge", "a", LONG).await,
        Acquire::Completed(_)
    ));
}

suite!(
    renew_extends_only_its_own_live_claim,
    huge_durations_are_bounded,
    claim_is_exclusive,
    completed_record_is_returned_until_its_ttl,
    release_frees_the_key_once,
    stale_claims_are_fenced,
    scope_and_key_name_the_record,
    not_stored_outcome_round_trips,
);

async fn postgres_store(pg: &kneo_tests::postgres::PostgresServer) -> kneo_server::PostgresStore {
    let store = kneo_server::PostgresStore::connect(&pg.url())
        .await
        .expect("postgres is up")
        .timeout(STORE_TIMEOUT);
    store.migrate().await.expect("the migration runs");
    store.migrate().await.expect("and runs again");
    store
}

async fn redis_store(redis: &RedisServer, prefix: &str) -> RedisStore {
    redis_store_timing_out(redis, prefix, STORE_TIMEOUT).await
}

/// A store whose every command is bounded by `timeout`.
async fn redis_store_timing_out(
    redis: &RedisServer,
    prefix: &str,
    timeout: Duration,
) -> RedisStore {
    RedisStore::builder(redis.url())
        .prefix(prefix)
        .timeout(timeout)
        .connect()
        .await
        .expect("redis-server is up")
}

/// Two stores with different prefixes on one Redis do not see each other;
/// keys are named `<prefix><scope hex>:<key>` and hold the compact encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_prefix_separates_stores_and_names_keys() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = redis_store(&redis, "app-a:").await;
    let b = redis_store(&redis, "app-b:").await;
    let c = claimed(&a, "k", LONG).await;
    assert!(matches!(
        claim(&b, "k", "a", LONG).await,
        Acquire::Claimed(_)
    ));
    let name = a.redis_key(&key("k"));
    assert!(name.starts_with("app-a:") && name.ends_with(":k"), "{name}");
    assert!(
        !name.contains("test"),
        "the scope is a digest, not the credential"
    );
    assert_eq!(
        redis.command(&format!("STRLEN {name}")),
        "42",
        "version, tag, token, fingerprint"
    );
    let pttl: i64 = redis
        .command(&format!("PTTL {name}"))
        .parse()
        .expect("integer");
    assert!(
        pttl > 0 && pttl <= 60_000,
        "the lease is the key's expiry: {pttl}"
    );
    assert!(a
        .complete(&key("k"), &c, &record("a", 1), Duration::from_secs(86_400))
        .await
        .expect("up"));
    let pttl: i64 = redis
        .command(&format!("PTTL {name}"))
        .parse()
        .expect("integer");
    assert!(pttl > 60_000, "the record's TTL replaced the lease: {pttl}");
}

/// An unreachable Redis fails fast with a store error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_a_store_error() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let store = redis_store(&redis, "kneo:test:").await;
    redis.stop();
    let err = store
        .claim(&key("k"), fp("a"), LONG)
        .await
        .expect_err("down");
    assert!(
        err.to_string().starts_with("idempotency store unavailable"),
        "{err}"
    );
    assert!(!err.is_full() && !err.is_corrupt());
}

/// A value that is not a record is a typed error (503 upstream), not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_garbage_value_is_corrupt() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = redis_store(&redis, "kneo:test:").await;
    let name = store.redis_key(&key("junk"));
    assert_eq!(redis.command(&format!("SET {name} garbage")), "OK");
    let err = store
        .claim(&key("junk"), fp("a"), LONG)
        .await
        .expect_err("corrupt");
    assert!(err.is_corrupt(), "{err}");
}

/// A claim whose `SET` timed out (Redis paused its writes past the store's
/// timeout) lands late; the store takes it back, so the key is free again
/// soon after, not locked for the whole lease by a claim nobody holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_claim_that_timed_out_does_not_strand_its_key() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // The timeout is the subject: far shorter than the pause, which is long
    // enough that the claim is sent while it lasts however slow the machine.
    let store = redis_store_timing_out(&redis, "kneo:test:", Duration::from_millis(300)).await;
    assert_eq!(redis.command("CLIENT PAUSE 5000 WRITE"), "OK");
    let err = store
        .claim(&key("paused"), fp("a"), LONG)
        .await
        .expect_err("timed out while paused");
    assert!(err.is_timeout(), "{err}");
    // The paused SET runs when the pause ends; the release follows it.
    let mut free = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // While paused, later claims time out too (and are taken back too).
        let attempt = store.claim(&key("paused"), fp("a"), LONG).await;
        if matches!(attempt, Ok(Acquire::Claimed(_))) {
            free = true;
            break;
        }
    }
    assert!(free, "the key was still held by the claim that timed out");
}

/// A Redis that may evict keys with a TTL (every claim and record has one)
/// is refused at connect, unless explicitly allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_that_may_evict_claims_is_refused() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    assert_eq!(redis.command("CONFIG SET maxmemory 64mb"), "OK");
    assert_eq!(
        redis.command("CONFIG SET maxmemory-policy volatile-ttl"),
        "OK"
    );
    let err = RedisStore::builder(redis.url())
        .connect()
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains("maxmemory-policy volatile-ttl"),
        "{err}"
    );
    RedisStore::builder(redis.url())
        .allow_eviction()
        .connect()
        .await
        .expect("allowed explicitly");
    assert_eq!(
        redis.command("CONFIG SET maxmemory-policy noeviction"),
        "OK"
    );
    redis_store(&redis, "kneo:test:").await;
}

/// A store on a [TLS server](RedisServer::start_tls): `rediss://` as its ACL
/// user, trusting the CA the test made.
async fn redis_tls_store(redis: &RedisServer) -> RedisStore {
    RedisStore::builder(redis.url())
        .ca_certificate(redis.ca_pem().expect("a TLS server"))
        .prefix("kneo:test:")
        .timeout(STORE_TIMEOUT)
        .connect()
        .await
        .expect("redis-server is up, over TLS")
}

/// `rediss://user:password@…` with the TLS server's CA: a store error that
/// names neither the URL nor the password.
async fn tls_connect_error(url: String, ca: &[u8]) -> String {
    let builder = RedisStore::builder(url)
        .ca_certificate(ca)
        .timeout(STORE_TIMEOUT);
    let err = builder.connect().await.expect_err("refused");
    let text = format!("{err} / {err:?}");
    assert!(text.starts_with("idempotency store unavailable"), "{text}");
    text
}

/// A wrong password is a clear store error, which does not carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_wrong_password_is_a_store_error_without_it() {
    let Some(redis) = RedisServer::start_tls() else {
        return;
    };
    let ca = redis.ca_pem().expect("a TLS server");
    let wrong = "not-the-Pa55word";
    let url = format!("rediss://{TLS_USER}:{wrong}@127.0.0.1:{}/", redis.port());
    let text = tls_connect_error(url, ca).await;
    assert!(text.contains("Password authentication failed"), "{text}");
    assert!(!text.contains(wrong), "the password leaked: {text}");
    // No user at all: `default` is off.
    let url = format!("rediss://127.0.0.1:{}/", redis.port());
    let text = tls_connect_error(url, ca).await;
    assert!(text.contains("NOAUTH"), "{text}");
}

/// A plain `redis://` URL on the TLS-only port fails (within the store's
/// timeout), and says nothing of the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_port_refuses_plain_redis() {
    let Some(redis) = RedisServer::start_tls() else {
        return;
    };
    let url = format!(
        "redis://{TLS_USER}:{TLS_PASSWORD}@127.0.0.1:{}/",
        redis.port()
    );
    let err = RedisStore::builder(url)
        .timeout(Duration::from_millis(300))
        .connect()
        .await
        .expect_err("not TLS");
    let text = format!("{err} / {err:?}");
    assert!(text.starts_with("idempotency store unavailable"), "{text}");
    assert!(!text.contains(TLS_PASSWORD), "{text}");
}

/// The server's certificate is checked: without its CA (the platform's roots
/// do not hold it), or with another CA, `rediss://` does not connect; and
/// `rediss://` to a plain Redis fails the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_checks_the_server_certificate() {
    let (Some(redis), Some(other)) = (RedisServer::start_tls(), RedisServer::start_tls()) else {
        return;
    };
    let err = RedisStore::builder(redis.url())
        .timeout(STORE_TIMEOUT)
        .connect()
        .await
        .expect_err("the platform's roots do not hold the test's CA");
    assert!(!err.to_string().contains(TLS_PASSWORD), "{err}");
    let text = tls_connect_error(redis.url(), other.ca_pem().expect("TLS")).await;
    assert!(!text.contains(TLS_PASSWORD), "{text}");
    redis_tls_store(&redis).await;

    let Some(plain) = RedisServer::start() else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{}/", plain.port());
    tls_connect_error(url, redis.ca_pem().expect("TLS")).await;
}

/// Neither `Debug` of the builder nor of the store shows the URL's password
/// or the client's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_debug_shows_no_secret() {
    let Some(redis) = RedisServer::start_tls_mutual() else {
        return;
    };
    let (chain, key) = redis.client_certificate().expect("mutual TLS");
    let builder = RedisStore::builder(redis.url())
        .ca_certificate(redis.ca_pem().expect("TLS"))
        .client_certificate(chain, key);
    let shown = format!("{builder:?}");
    assert!(!shown.contains(TLS_PASSWORD), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(shown.contains("tls: true"), "{shown}");
    let store = builder.connect().await.expect("mutual TLS connects");
    let shown = format!("{store:?}");
    assert!(!shown.contains(TLS_PASSWORD), "{shown}");
}

/// A Redis that requires a client certificate accepts the store that
/// presents one signed by its CA, and refuses one that does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_mutual_needs_the_client_certificate() {
    let Some(redis) = RedisServer::start_tls_mutual() else {
        return;
    };
    let (chain, key) = redis.client_certificate().expect("mutual TLS");
    let store = RedisStore::builder(redis.url())
        .ca_certificate(redis.ca_pem().expect("TLS"))
        .client_certificate(chain, key)
        .connect()
        .await
        .expect("presents its certificate");
    assert!(matches!(
        claim(&store, "m", "a", LONG).await,
        Acquire::Claimed(_)
    ));
    tls_connect_error(redis.url(), redis.ca_pem().expect("TLS")).await;
}
