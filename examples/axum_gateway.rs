//! An axum gateway that calls an upstream API through kneo and turns every
//! `kneo::Error` into an RFC 9457 `application/problem+json` response that
//! keeps the request id, with kneo-server's `ProblemResponse` (feature
//! `axum`): a handler returns `Result<_, ProblemResponse>` and uses `?` on
//! kneo calls.
//!
//! ```text
//! cargo run --example axum_gateway
//! ```
//!
//! It starts a mock upstream and the gateway on loopback, calls the gateway a
//! few times, prints what came back, and exits.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::Full;
use kneo::retry::{Backoff, RetryLayer};
use kneo::{Client, ClientLayer};
use kneo_server::ProblemResponse;
use serde_json::{json, Value};

/// `GET /runs/{id}`: the upstream's run, passed through.
async fn get_run(
    State(upstream): State<Client>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ProblemResponse> {
    let mut req = http::Request::get(format!("/runs/{id}"));
    // Keep the caller's request id end to end (kneo keeps it if well formed).
    if let Some(rid) = headers.get("x-request-id") {
        req = req.header("x-request-id", rid);
    }
    let req = req
        .body(Full::<Bytes>::default())
        .map_err(kneo::Error::invalid_request)?;
    // What the upstream's failure means for *our* caller is one function,
    // `ProblemResponse::from_error`, which `?` calls: 404 and 429 pass on,
    // the rest is a 502 (or 504) without the upstream's details.
    let res = upstream.request(req).await?;
    let value = upstream.read_json(res).await?;
    Ok(Json(value))
}

/// The gateway app over an upstream client.
fn gateway(upstream: Client) -> Router {
    Router::new()
        .route("/runs/{id}", get(get_run))
        .with_state(upstream)
}

/// A mock upstream: run 1 exists, run 7 does not, run 9 is always overloaded.
fn mock_upstream() -> Router {
    async fn run(Path(id): Path<u64>) -> Response {
        match id {
            1 => Json(json!({"id": 1, "status": "done"})).into_response(),
            9 => (StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response(),
            _ => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": {"code": "run_not_found", "message": format!("run {id} does not exist")}})),
            )
                .into_response(),
        }
    }
    Router::new().route("/runs/{id}", get(run))
}

async fn serve(app: Router) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

async fn start() -> Result<String, Box<dyn std::error::Error>> {
    let upstream_url = serve(mock_upstream()).await?;
    let upstream = Client::builder()
        .base_url(upstream_url)
        .layer(
            ClientLayer::new()
                .retry(RetryLayer::new().backoff(Backoff::new().base(Duration::from_millis(10)))),
        )
        .build()?;
    Ok(serve(gateway(upstream)).await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gateway_url = start().await?;
    println!("gateway at {gateway_url}");
    let caller = Client::builder()
        .base_url(&gateway_url)
        .layer(ClientLayer::new().max_attempts(1))
        .build()?;
    for path in ["/runs/1", "/runs/7", "/runs/9"] {
        let req = http::Request::get(path)
            .header("x-request-id", format!("demo{}", &path[6..]))
            .body(Full::default())?;
        match caller.request(req).await {
            Ok(res) => println!("GET {path} -> {}", res.status()),
            Err(e) => println!(
                "GET {path} -> {:?}: {}",
                e.kind(),
                e.body().as_json().map_or(String::new(), Value::to_string)
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn get(path: &str, request_id: &str) -> (StatusCode, HeaderMap, Value) {
        let base = start().await.expect("gateway starts");
        let transport =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let req = http::Request::get(format!("{base}{path}"))
            .header("x-request-id", request_id)
            .body(Full::default())
            .expect("valid request");
        let res = transport.request(req).await.expect("gateway answers");
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).expect("json body"),
        )
    }

    #[tokio::test]
    async fn success_passes_through() {
        let (status, _, body) = get("/runs/1", "ok-1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "done");
    }

    #[tokio::test]
    async fn not_found_becomes_problem_json_with_the_request_id() {
        let (status, headers, body) = get("/runs/7", "caller-req-7").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(headers["x-request-id"], "caller-req-7");
        assert_eq!(body["status"], 404);
        assert_eq!(body["code"], "run_not_found");
        assert_eq!(body["request_id"], "caller-req-7");
        assert_eq!(body["detail"], "run 7 does not exist");
    }

    #[tokio::test]
    async fn upstream_outage_is_502_without_details() {
        let (status, headers, body) = get("/runs/9", "caller-req-9").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(headers["x-request-id"], "caller-req-9");
        assert_eq!(body["code"], "server_error");
        assert!(
            !body["detail"]
                .as_str()
                .expect("detail")
                .contains("overloaded"),
            "5xx details are not leaked"
        );
    }
}
