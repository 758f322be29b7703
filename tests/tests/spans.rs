//! Tracing spans named as OpenTelemetry names HTTP client attributes: one per
//! logical request, one per attempt, never a secret in a field.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::Request;
use http_body_util::Full;
use kneo_tests::{fast, Reply, ScriptedServer};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// One span: its name and fields.
type Recorded = (String, BTreeMap<String, String>);

/// Every span, in order of creation.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Recorded>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// The index of a span in `Spans`, kept in its extensions.
struct Index(usize);

impl<S> Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        if let Some(parent) = ctx.span(id).and_then(|s| s.parent()) {
            fields.insert("parent".to_owned(), parent.name().to_owned());
        }
        let mut all = self.0.lock().expect("not poisoned");
        all.push((attrs.metadata().name().to_owned(), fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Index(all.len() - 1));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let ext = span.extensions();
        let Some(Index(i)) = ext.get::<Index>() else {
            return;
        };
        let mut all = self.0.lock().expect("not poisoned");
        values.record(&mut Fields(&mut all[*i].1));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_retried_twice_has_three_attempt_spans_under_one_request_span() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = ScriptedServer::start(vec![
        Reply::status(503),
        Reply::status(502),
        Reply::json(200, "{}"),
    ])
    .await;
    let client = kneo::Client::builder()
        .base_url(server.url(""))
        .api_key("sk-live-planted")
        .layer(fast())
        .build()
        .expect("builds");
    client
        .request(
            Request::get("/v1/runs?api_key=sk-query-planted")
                .body(Full::default())
                .expect("valid"),
        )
        .await
        .expect("200 on the third attempt");

    let all = spans.0.lock().expect("not poisoned").clone();
    let requests: Vec<_> = all.iter().filter(|(n, _)| n == "kneo.request").collect();
    let attempts: Vec<_> = all.iter().filter(|(n, _)| n == "kneo.attempt").collect();
    assert_eq!(requests.len(), 1, "{all:?}");
    assert_eq!(attempts.len(), 3, "{all:?}");
    let request = &requests[0].1;
    let id = request["kneo.request_id"].clone();
    assert_eq!(id.len(), 36, "a stamped id: {request:?}");
    assert_eq!(request["http.request.method"], "GET");
    assert_eq!(request["server.address"], "127.0.0.1");
    assert_eq!(request["http.response.status_code"], "200");
    assert_eq!(request["kneo.attempts"], "3");
    assert!(
        request["url.full"].ends_with("/v1/runs?api_key=…"),
        "{request:?}"
    );
    for (n, (_, attempt)) in attempts.iter().enumerate() {
        assert_eq!(attempt["http.request.resend_count"], n.to_string());
        assert_eq!(attempt["kneo.attempt"], (n + 1).to_string());
        assert_eq!(attempt["kneo.request_id"], id);
        assert_eq!(attempt["parent"], "kneo.request");
    }
    assert_eq!(attempts[0].1["http.response.status_code"], "503");
    assert_eq!(attempts[0].1["error.type"], "server");
    assert_eq!(attempts[2].1["http.response.status_code"], "200");
    assert!(!attempts[2].1.contains_key("error.type"));
    let everything = format!("{all:?}");
    for secret in ["sk-live-planted", "sk-query-planted", "Bearer"] {
        assert!(!everything.contains(secret), "{secret} in {everything}");
    }
}
