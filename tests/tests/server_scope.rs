//! kneo-server's default scope as a security property: a stored answer is
//! replayed only to the caller whose credential made it, whichever header
//! carries the credential, and the scope a store shows cannot be reversed.
//!
//! The handler is a `service_fn` behind `IdempotencyLayer` that counts its
//! runs and answers `run N`, so a replay to the wrong caller would show as a
//! body of another run.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use kneo_server::idempotency::{
    CredentialScope, MakeScope, RecordKey, RequestBody, Scope, IDEMPOTENT_REPLAYED,
};
use kneo_server::{IdempotencyLayer, MemoryStore, RedisStore, Store};
use kneo_tests::redis::RedisServer;
use tower::{Layer, Service, ServiceExt};

/// What a caller got: the status, whether it was a replay, the body.
#[derive(Debug)]
struct Got {
    status: StatusCode,
    replayed: bool,
    body: String,
}

/// The handler's runs, and the layered service.
struct App<S> {
    runs: Arc<AtomicUsize>,
    svc: S,
}

fn app<St: Store + Clone>(
    layer: IdempotencyLayer<St>,
) -> App<
    impl Service<
            Request<Full<Bytes>>,
            Response = Response<impl http_body::Body<Data = Bytes, Error = impl std::fmt::Debug>>,
            Error = impl std::fmt::Debug,
        > + Clone,
> {
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = {
        let runs = runs.clone();
        tower::service_fn(move |_req: Request<RequestBody<Full<Bytes>>>| {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(201)
                        .body(Full::new(Bytes::from(format!("run {run}"))))
                        .expect("valid"),
                )
            }
        })
    };
    App {
        runs,
        svc: layer.layer(handler),
    }
}

impl<S, B> App<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    /// POST /orders with key `k1`, the same body, and these headers.
    async fn post(&self, headers: &[(&str, &str)]) -> Got {
        let mut req = Request::post("/orders").header("idempotency-key", "k1");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(Bytes::from_static(b"{\"n\":1}")))
            .expect("valid");
        let res = self.svc.clone().oneshot(req).await.expect("answered");
        let status = res.status();
        let replayed = res
            .headers()
            .get(IDEMPOTENT_REPLAYED)
            .is_some_and(|v| v == "true");
        let body = res
            .into_body()
            .collect()
            .await
            .expect("whole body")
            .to_bytes();
        Got {
            status,
            replayed,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// For each credential header: the same key from tenant1 and tenant2 runs
/// twice, neither replayed to the other; tenant1 again is tenant1's replay.
#[tokio::test]
async fn each_credential_header_keeps_tenants_apart() {
    for header in [
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
    ] {
        let app = app(IdempotencyLayer::new(MemoryStore::new()));
        // A shared Authorization does not merge them (the case).
        let shared = if header == "authorization" {
            None
        } else {
            Some(("authorization", "Bearer K"))
        };
        let with = |tenant| -> Vec<(&str, &str)> {
            shared.into_iter().chain([(header, tenant)]).collect()
        };

        let one = app.post(&with("tenant1")).await;
        assert_eq!(
            (one.status, one.replayed, one.body.as_str()),
            (StatusCode::CREATED, false, "run 1"),
            "{header}"
        );
        let two = app.post(&with("tenant2")).await;
        assert_eq!(two.status, StatusCode::CREATED, "{header}");
        assert!(
            !two.replayed,
            "{header}: tenant1's answer replayed to tenant2"
        );
        assert_eq!(two.body, "run 2", "{header}");
        assert_eq!(app.runs(), 2, "{header}");

        let again = app.post(&with("tenant1")).await;
        assert!(again.replayed, "{header}: the same credential is a replay");
        assert_eq!(again.body, "run 1", "{header}: tenant1's own answer");
        let again = app.post(&with("tenant2")).await;
        assert!(again.replayed, "{header}");
        assert_eq!(again.body, "run 2", "{header}");
        assert_eq!(app.runs(), 2, "{header}");
    }
}

#[tokio::test]
async fn an_absent_header_is_not_an_empty_one() {
    let app = app(IdempotencyLayer::new(MemoryStore::new()));
    let absent = app.post(&[]).await;
    let empty = app.post(&[("x-api-key", "")]).await;
    assert_eq!((absent.body.as_str(), absent.replayed), ("run 1", false));
    assert_eq!((empty.body.as_str(), empty.replayed), ("run 2", false));
    assert!(app.post(&[]).await.replayed);
    assert!(app.post(&[("x-api-key", "")]).await.replayed);
    assert_eq!(app.runs(), 2);
}

#[tokio::test]
async fn an_added_header_keeps_tenants_apart() {
    let scope = CredentialScope::new().header(HeaderName::from_static("x-tenant-key"));
    let app = app(IdempotencyLayer::new(MemoryStore::new()).scope(scope));
    assert_eq!(app.post(&[("x-tenant-key", "t1")]).await.body, "run 1");
    let other = app.post(&[("x-tenant-key", "t2")]).await;
    assert_eq!((other.body.as_str(), other.replayed), ("run 2", false));

    // Not a credential by default: the same caller for the default scope.
    let default = self::app(IdempotencyLayer::new(MemoryStore::new()));
    default.post(&[("x-tenant-key", "t1")]).await;
    assert!(default.post(&[("x-tenant-key", "t2")]).await.replayed);
}

#[tokio::test]
async fn an_opted_in_cookie_separates_sessions_and_other_cookies_do_not() {
    let scope = CredentialScope::new().cookie("session");
    let app = app(IdempotencyLayer::new(MemoryStore::new()).scope(scope));
    let alice = app.post(&[("cookie", "session=alice; _ga=GA1.1")]).await;
    let bob = app.post(&[("cookie", "session=bob; _ga=GA1.1")]).await;
    assert_eq!((alice.body.as_str(), alice.replayed), ("run 1", false));
    assert_eq!(
        (bob.body.as_str(), bob.replayed),
        ("run 2", false),
        "bob got alice's answer"
    );

    // Alice's retry, after her analytics and CSRF cookies changed: a replay.
    let retry = app
        .post(&[
            ("cookie", "_ga=GA1.2; csrf=rotated"),
            ("cookie", "session=alice"),
        ])
        .await;
    assert!(retry.replayed, "an honest retry ran again");
    assert_eq!(retry.body, "run 1");
    assert_eq!(app.runs(), 2);
}

#[tokio::test]
async fn cookies_are_opt_in_so_a_changed_cookie_header_is_still_a_replay() {
    let app = app(IdempotencyLayer::new(MemoryStore::new()));
    let first = app
        .post(&[("authorization", "Bearer a"), ("cookie", "_ga=1")])
        .await;
    let retry = app
        .post(&[("authorization", "Bearer a"), ("cookie", "_ga=2; x=y")])
        .await;
    assert_eq!(first.body, "run 1");
    assert!(retry.replayed);
    assert_eq!(retry.body, "run 1");
    assert_eq!(app.runs(), 1);
}

/// The case: `Basic alice:hunter2` and a Redis `KEYS`. The key name
/// holds the HMAC of the credential, not its SHA-256 nor that of its
/// material, and another secret gives another name.
#[tokio::test]
async fn the_redis_key_shows_no_plain_digest_of_the_credential() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::connect(redis.url()).await.expect("redis is up");
    let credential = "Basic YWxpY2U6aHVudGVyMg=="; // alice:hunter2
    let request = || {
        Request::post("/orders")
            .header("authorization", credential)
            .body(())
            .expect("valid")
            .into_parts()
            .0
    };

    let app = app(IdempotencyLayer::new(store.clone()));
    assert_eq!(
        app.post(&[("authorization", credential)]).await.body,
        "run 1"
    );
    assert_eq!(redis.command("DBSIZE"), "1");
    let name = redis.command("RANDOMKEY");

    let hmac_scope = CredentialScope::new().scope(&request());
    assert_eq!(name, store.redis_key(&RecordKey::new(hmac_scope, "k1")));
    let hex = |scope: Scope| {
        RecordKey::new(scope, "k1")
            .to_string()
            .split(':')
            .next()
            .map(str::to_owned)
            .expect("hex")
    };
    let plain = hex(Scope::of(credential));
    let password = hex(Scope::of("hunter2"));
    assert!(!name.contains(&plain), "{name} shows SHA-256(credential)");
    assert!(!name.contains(&password), "{name}");
    let mut material = Vec::new();
    kneo::credential::Credentials::new()
        .write(&request().headers, |b| material.extend_from_slice(b));
    assert!(
        !name.contains(&hex(Scope::of(&material))),
        "{name} shows SHA-256(material)"
    );

    // A deployment's own secret: another name for the same caller and key.
    redis.command("FLUSHALL");
    let secret = CredentialScope::new().secret("the deployment's 32 random bytes");
    let app = self::app(IdempotencyLayer::new(store.clone()).scope(secret.clone()));
    app.post(&[("authorization", credential)]).await;
    let name_with_secret = redis.command("RANDOMKEY");
    assert_eq!(
        name_with_secret,
        store.redis_key(&RecordKey::new(secret.scope(&request()), "k1"))
    );
    assert_ne!(name_with_secret, name);
}
