//! [`Arrival`]: a request handed to a layer in front of the proxy, and the
//! recording of the answers that layer makes by itself.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, VIA};
use http::{Method, Request, Response, Uri, Version};
use kneo::core::X_REQUEST_ID;
use tokio::time::Instant;

use crate::headers::{rewrite, Hop};
use crate::outcome::{Exchange, ExchangeOutcome};
use crate::shared::{record, upstream_request_id, Recorded, Shared};

/// `Idempotent-Replayed` (kneo-server's header; this crate does not depend
/// on kneo-server).
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A request handed to a layer in front of the proxy, as it arrived: what
/// recording its answer needs when that layer answered by itself.
pub(crate) struct Arrival {
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    request_id: Option<HeaderValue>,
    start: Instant,
}

impl Arrival {
    /// `req`'s arrival now; `request_id` is its [settled](settle_request_id) id.
    pub(crate) fn new<B>(
        shared: &Arc<Shared>,
        req: &Request<B>,
        request_id: Option<HeaderValue>,
    ) -> Arrival {
        Arrival {
            shared: shared.clone(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            request_id,
            start: Instant::now(),
        }
    }

    /// Finishes `res`, the front's answer: one the proxy forwarded was
    /// recorded already (its mark is taken off). Any other is recorded here,
    /// [`ExchangeOutcome::Replayed`] or [`ExchangeOutcome::Idempotency`] with no attempts,
    /// and gets the headers the proxy's own answers carry: this request's
    /// `X-Request-ID` when it has none, and the response rules of
    /// [`rewrite`] (this hop's `Via`) unless it has a `Via` already (a
    /// replay of an answer this proxy forwarded keeps the one it had).
    pub(crate) fn finish<B>(self, res: &mut Response<B>) {
        if res.extensions_mut().remove::<Recorded>().is_some() {
            return;
        }
        let replayed = res
            .headers()
            .get(IDEMPOTENT_REPLAYED)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let outcome = if replayed {
            ExchangeOutcome::Replayed
        } else {
            ExchangeOutcome::Idempotency
        };
        let headers = res.headers_mut();
        if let Some(id) = &self.request_id {
            headers.entry(X_REQUEST_ID).or_insert_with(|| id.clone());
        }
        if !headers.contains_key(VIA) {
            rewrite(
                headers,
                &Hop::Response {
                    version: Version::HTTP_11,
                },
            );
        }
        record(
            &self.shared,
            &Exchange {
                request_id: self.request_id.as_ref().and_then(|id| id.to_str().ok()),
                upstream_request_id: upstream_request_id(res.headers(), self.request_id.as_ref()),
                method: &self.method,
                path: self.uri.path(),
                status: res.status(),
                attempts: 0,
                upstream_time: self.start.elapsed(),
                outcome,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use bytes::Bytes;
    use http_body_util::Full;

    use crate::config::ProxyConfig;
    use crate::forward::Proxy;
    use crate::outcome::ExchangeHook;

    /// What the hook saw: request id, upstream id, status, attempts, outcome.
    type Line = (Option<String>, Option<String>, u16, u32, &'static str);

    fn proxy() -> (Proxy<Full<Bytes>>, Arc<Mutex<Vec<Line>>>) {
        let seen: Arc<Mutex<Vec<Line>>> = Arc::default();
        let hook: ExchangeHook = {
            let seen = seen.clone();
            Box::new(move |ex: &Exchange<'_>| {
                seen.lock().expect("not poisoned").push((
                    ex.request_id().map(str::to_owned),
                    ex.upstream_request_id().map(str::to_owned),
                    ex.status().as_u16(),
                    ex.attempts(),
                    ex.outcome().as_str(),
                ));
            })
        };
        let config = ProxyConfig::new("http://127.0.0.1:1").expect("a valid upstream");
        let proxy = Proxy::new(&config, Some(hook)).expect("the proxy builds");
        (proxy, seen)
    }

    #[tokio::test]
    async fn answers_the_front_made_are_recorded_once_with_this_requests_id() {
        let (proxy, seen) = proxy();
        let arrive = |id: &'static str| {
            let req = Request::post("/charges")
                .header(X_REQUEST_ID, id)
                .body(())
                .expect("valid");
            Arrival::new(proxy.shared(), &req, Some(HeaderValue::from_static(id)))
        };

        // A replay of an answer this proxy forwarded: its Via is kept.
        let mut replay = Response::builder()
            .status(201)
            .header("idempotent-replayed", "true")
            .header("original-request", "first-1")
            .header(VIA, "1.1 kneo")
            .body(())
            .expect("valid");
        arrive("retry-2").finish(&mut replay);
        assert_eq!(replay.headers()[X_REQUEST_ID], "retry-2");
        assert_eq!(replay.headers()["original-request"], "first-1");
        assert_eq!(replay.headers()[VIA], "1.1 kneo");

        // A replay of an answer whose id the upstream set: kept, and logged.
        let mut own = Response::builder()
            .status(200)
            .header("idempotent-replayed", "true")
            .header(X_REQUEST_ID, "req_upstream1")
            .body(())
            .expect("valid");
        arrive("retry-3").finish(&mut own);
        assert_eq!(own.headers()[X_REQUEST_ID], "req_upstream1");
        assert_eq!(own.headers()[VIA], "1.1 kneo");

        // The layer's own problem: gets this request's id and Via.
        let mut problem = Response::builder().status(422).body(()).expect("valid");
        arrive("other-4").finish(&mut problem);
        assert_eq!(problem.headers()[X_REQUEST_ID], "other-4");
        assert_eq!(problem.headers()[VIA], "1.1 kneo");

        // One the proxy forwarded was recorded by it: not again, unmarked.
        let mut forwarded = Response::new(());
        forwarded.extensions_mut().insert(Recorded);
        arrive("first-1").finish(&mut forwarded);
        assert!(forwarded.extensions().get::<Recorded>().is_none());
        assert!(!forwarded.headers().contains_key(VIA));

        let id = |s: &str| Some(s.to_owned());
        assert_eq!(
            *seen.lock().expect("not poisoned"),
            [
                (id("retry-2"), None, 201, 0, "replayed"),
                (id("retry-3"), id("req_upstream1"), 200, 0, "replayed"),
                (id("other-4"), None, 422, 0, "idempotency"),
            ]
        );
        let metrics = proxy.metrics().encode();
        for series in [
            r#"kneo_proxy_requests_total{outcome="replayed",class="2xx"} 2"#,
            r#"kneo_proxy_requests_total{outcome="idempotency",class="4xx"} 1"#,
            r#"kneo_proxy_requests_total{outcome="idempotency",class="5xx"} 0"#,
            "kneo_proxy_upstream_attempts_total 0",
        ] {
            assert!(metrics.contains(series), "{series} in\n{metrics}");
        }
    }
}
