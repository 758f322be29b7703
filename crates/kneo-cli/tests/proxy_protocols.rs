//! What callers speak, through the built `kneo proxy`: WebSocket upgrades,
//! HTTP/2 with prior knowledge (h2c) from callers and to the upstream, and
//! gRPC (a real tonic client and server) with its trailers.
//!
//! Timing is only ever asserted from below; the timeouts around awaits are
//! guards against a hang, not claims.

use kneo_tests::guarded;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kneo_tests::proxy_client::{connect, keyed_post};
use kneo_tests::sidecar::Sidecar;
use kneo_tests::{Reply, ScriptedServer};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

async fn sidecar(upstream: &str, args: &[&str]) -> Sidecar {
    let kneo = std::path::Path::new(env!("CARGO_BIN_EXE_kneo"));
    Sidecar::start_with_admin(kneo, upstream, args)
        .await
        .expect("starts")
}

/// One HTTP/1.1 GET on a connection of its own: status and body.
async fn h1_get(url: &str) -> (StatusCode, String) {
    try_h1_get(url).await.expect("an answer")
}

/// `callers` GETs of `url` at once, each on a connection of its own: every
/// one is answered `200` with `body`.
async fn all_answer(url: &str, callers: usize, body: &str) {
    let callers: Vec<_> = (0..callers)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move { h1_get(&url).await })
        })
        .collect();
    for caller in callers {
        let (status, answered) = caller.await.expect("the caller task");
        assert_eq!((status, answered.as_str()), (StatusCode::OK, body));
    }
}

/// [`h1_get`], or the error when the connection closed without an answer
/// (a proxy past twice its connection limit closes at once).
async fn try_h1_get(url: &str) -> Result<(StatusCode, String), hyper::Error> {
    let uri: http::Uri = url.parse().expect("a URL");
    let authority = uri.authority().expect("absolute").as_str().to_owned();
    guarded("an HTTP/1.1 GET", async {
        let stream = TcpStream::connect(&authority).await.expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::get(uri.path())
            .header("host", authority)
            .body(Full::<Bytes>::default())
            .expect("valid");
        let res = send.send_request(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
}

/// A WebSocket echo server on loopback: every text or binary message comes
/// back as it was.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_connect(proxy: &Sidecar, path: &str) -> Socket {
    let url = format!("ws://{}{path}", proxy.addr());
    let (ws, res) = guarded(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("the handshake through the proxy succeeds");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(res.headers()["via"], "1.1 kneo");
    assert!(res.headers().contains_key("x-request-id"));
    ws
}

async fn echo(ws: &mut Socket, message: Message) {
    guarded("the echo", ws.send(message.clone()))
        .await
        .expect("sent");
    let back = guarded("the echo", ws.next())
        .await
        .expect("open")
        .expect("a message");
    assert_eq!(back, message);
}

#[tokio::test]
async fn a_websocket_echo_round_trips_through_the_proxy() {
    let upstream = echo_server().await;
    let proxy = sidecar(&format!("http://{upstream}"), &[]).await;
    let mut ws = ws_connect(&proxy, "/chat").await;
    assert_eq!(proxy.metric("kneo_proxy_tunnels_open").await, 1.0);

    echo(&mut ws, Message::text("hello through kneo")).await;
    echo(&mut ws, Message::binary(vec![0u8, 1, 2, 255])).await;
    // Bigger than one TCP segment, both ways.
    echo(&mut ws, Message::binary(vec![7u8; 256 * 1024])).await;
    guarded("the close", ws.close(None)).await.expect("closed");
    drop(ws);

    guarded("the tunnel closing", async {
        while proxy.metric("kneo_proxy_tunnels_open").await != 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(proxy.metric("kneo_proxy_tunnels_total").await, 1.0);
    assert_eq!(
        proxy
            .metric(r#"kneo_proxy_requests_total{outcome="upstream",class="1xx"}"#)
            .await,
        1.0,
        "the handshake is recorded once, with its 101"
    );
    assert_eq!(
        proxy.metric("kneo_proxy_upstream_attempts_total").await,
        1.0,
        "sent once"
    );
}

#[tokio::test]
async fn a_refused_upgrade_is_passed_on_and_never_retried() {
    // An upstream that is no WebSocket server: a 503 would be retried for a
    // plain GET; a handshake is sent once and its answer passed on.
    let upstream = ScriptedServer::start(vec![Reply::status(503), Reply::status(503)]).await;
    let proxy = sidecar(&upstream.url(""), &[]).await;
    let url = format!("ws://{}/chat", proxy.addr());
    let refused = guarded("the handshake", tokio_tungstenite::connect_async(url)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        other => panic!("expected the upstream's 503, got {other:?}"),
    }
    assert_eq!(upstream.count(), 1, "never retried");
    let sent = &upstream.requests()[0];
    assert_eq!(sent.header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(sent.header("connection").as_deref(), Some("upgrade"));
    assert!(sent.header("idempotency-key").is_none(), "never keyed");
    assert!(sent.header("sec-websocket-key").is_some());
    assert_eq!(proxy.metric("kneo_proxy_tunnels_total").await, 0.0);
}

#[tokio::test]
async fn a_keyed_request_asking_to_upgrade_stays_under_the_idempotency_layer() {
    let upstream = ScriptedServer::start(vec![Reply::json(201, r#"{"id":"ch_1"}"#)]).await;
    let proxy = sidecar(&upstream.url(""), &["--idempotency", "memory"]).await;
    let send = || async {
        let mut sender = connect(proxy.addr()).await;
        let req = keyed_post("/charges", "up-1")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("valid");
        let res = guarded("a keyed upgrade", sender.send_request(req))
            .await
            .expect("an answer");
        let replayed = res.headers().get("idempotent-replayed").is_some();
        (res.status(), replayed)
    };
    assert_eq!(send().await, (StatusCode::CREATED, false));
    assert_eq!(
        send().await,
        (StatusCode::CREATED, true),
        "the retry is replayed"
    );
    assert_eq!(upstream.count(), 1, "run once");
    assert!(upstream.requests()[0].header("upgrade").is_none());
    assert_eq!(proxy.metric("kneo_proxy_tunnels_total").await, 0.0);
}

#[tokio::test]
async fn an_open_tunnel_holds_its_connection_slot() {
    let upstream = echo_server().await;
    let proxy = sidecar(&format!("http://{upstream}"), &["--max-connections", "1"]).await;
    let mut ws = ws_connect(&proxy, "/chat").await;
    echo(&mut ws, Message::text("one")).await;

    // The handshake's connection became the tunnel: it still counts. (A
    // connection the proxy still counts, a readiness probe's say, can put
    // a GET past twice the limit, closed unanswered: it is sent again.)
    let url = format!("http://{}/other", proxy.addr());
    let status = guarded("an answer", async {
        loop {
            match try_h1_get(&url).await {
                Ok((status, _)) => break status,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    guarded("the close", ws.close(None)).await.expect("closed");
    drop(ws);
    guarded("the slot freed", async {
        // A plain GET to the echo server is not a handshake: it gets the
        // server's refusal, which is an upstream answer, not the proxy's 503.
        // Until the slot is freed a GET gets the 503, or, while the proxy
        // still counts the last refused connection too (past twice the
        // limit), a connection closed at once.
        while try_h1_get(&url).await.map_or(true, |(status, _)| {
            status == StatusCode::SERVICE_UNAVAILABLE
        }) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn sigterm_lets_an_open_tunnel_run_until_the_drain_timeout_then_cuts_it() {
    let upstream = echo_server().await;
    // Long enough that a loaded machine gets from the signal to the echo
    // inside it: the echo must come before the cut, so the drain timeout
    // is, to this test, an upper bound on that path.
    let mut proxy = sidecar(&format!("http://{upstream}"), &["--drain-timeout", "5"]).await;
    let mut ws = ws_connect(&proxy, "/chat").await;

    proxy.terminate().expect("SIGTERM sent");
    let signalled = Instant::now();
    // Draining: the listener closes, the tunnel still carries messages.
    guarded("the listener closed", async {
        while TcpStream::connect(proxy.addr()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    echo(&mut ws, Message::text("still here while draining")).await;

    // At the drain timeout the tunnel is cut and the proxy exits.
    let ended = guarded("the tunnel cut", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    });
    ended.await;
    assert!(
        signalled.elapsed() >= Duration::from_millis(4900),
        "cut only at the drain timeout, after {:?}",
        signalled.elapsed()
    );
    let status = guarded("exit", async {
        loop {
            if let Some(status) = proxy.try_wait() {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(status.code(), Some(0));
}

/// An HTTP/2 connection with prior knowledge (h2c) to `addr`.
async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("the HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

#[tokio::test]
async fn h2c_callers_are_answered_and_forwarded() {
    let upstream = ScriptedServer::with(|_, req| {
        Reply::json(200, &format!(r#"{{"path":"{}"}}"#, req.uri.path()))
    })
    .await;
    let proxy = sidecar(&upstream.url("/api"), &[]).await;
    let mut send = guarded("h2c", h2c(proxy.addr())).await;

    let mut answers = Vec::new();
    for (method, path, body) in [("GET", "/runs/7", ""), ("POST", "/runs", r#"{"a":1}"#)] {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", proxy.addr()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("valid");
        let res = guarded("an h2c answer", send.send_request(req))
            .await
            .expect("an answer");
        assert_eq!(res.version(), http::Version::HTTP_2);
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().contains_key("x-request-id"));
        let body = res.into_body().collect().await.expect("body").to_bytes();
        answers.push(String::from_utf8_lossy(&body).into_owned());
    }
    assert_eq!(
        answers,
        [r#"{"path":"/api/runs/7"}"#, r#"{"path":"/api/runs"}"#]
    );
    let sent = upstream.requests();
    assert_eq!(sent[1].body, r#"{"a":1}"#);
    assert_eq!(sent[1].header("via").as_deref(), Some("2 kneo"));
    assert_eq!(
        sent[1].header("host"),
        Some(upstream.addr().to_string()),
        "the upstream's host, from the caller's :authority"
    );
    assert!(sent[1].header("x-forwarded-host").is_some());
    assert!(
        sent[1].header("idempotency-key").is_some(),
        "the POST is keyed as over HTTP/1.1"
    );
}

#[tokio::test]
async fn an_h2c_connection_over_the_limit_gets_503_then_goaway() {
    let upstream = ScriptedServer::start(vec![Reply::status(200)]).await;
    let proxy = sidecar(&upstream.url(""), &["--max-connections", "1"]).await;
    let url = format!("http://{}/x", proxy.addr());
    let get = || {
        Request::get(&url)
            .body(Full::<Bytes>::default())
            .expect("valid")
    };
    let mut first = guarded("h2c", h2c(proxy.addr())).await;
    let res = guarded("the first", first.send_request(get()))
        .await
        .expect("an answer");
    assert_eq!(res.status(), StatusCode::OK);

    let stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    let (mut second, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("the HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let res = guarded("the second", second.send_request(get()))
        .await
        .expect("an answer");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    // Then GOAWAY: the server ends the connection.
    guarded("the second connection closed", conn)
        .await
        .expect("the connection task")
        .expect("closed cleanly");
    assert_eq!(upstream.count(), 1, "the 503 was the proxy's");
}

#[tokio::test]
async fn curl_with_http2_prior_knowledge_gets_200() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: curl is not on PATH");
        return;
    }
    let upstream = ScriptedServer::start(vec![Reply::json(200, r#"{"ok":true}"#)]).await;
    let proxy = sidecar(&upstream.url(""), &[]).await;
    let url = format!("http://{}/ping", proxy.addr());
    let out = guarded(
        "curl",
        tokio::process::Command::new("curl")
            .args([
                "-sS",
                "--http2-prior-knowledge",
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .arg(&url)
            .output(),
    )
    .await
    .expect("curl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl: {stdout} {:?}", out.stderr);
    assert_eq!(stdout, "{\"ok\":true}\n200 2");
}

/// An HTTP/2-only (h2c) upstream that counts the connections requests came
/// on (the proxy's readiness probe opens one that carries none) and the most
/// requests it had in flight at once; each answer waits `hold` first.
async fn h2_upstream(hold: Duration) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let now = Arc::new(AtomicUsize::new(0));
    {
        let (connections, most) = (connections.clone(), most.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (connections, most, now) = (connections.clone(), most.clone(), now.clone());
                let first = Arc::new(std::sync::Once::new());
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    first.call_once(|| {
                        connections.fetch_add(1, Ordering::SeqCst);
                    });
                    let (most, now) = (most.clone(), now.clone());
                    async move {
                        let in_flight = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(in_flight, Ordering::SeqCst);
                        tokio::time::sleep(hold).await;
                        now.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"h2"))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
    }
    (addr, connections, most)
}

#[tokio::test]
async fn an_h2c_upstream_gets_one_connection_per_worker_for_50_concurrent_requests() {
    let (addr, connections, most) = h2_upstream(Duration::from_millis(200)).await;
    let proxy = sidecar(&format!("http://{addr}"), &["--upstream-h2c"]).await;
    // 50 callers on HTTP/1.1, each on a connection of its own.
    let url = format!("http://{}/multiplexed", proxy.addr());
    all_answer(&url, 50, "h2").await;
    // Each worker has a pool of its own (as many as `--workers` says,
    // `KNEO_PROXY_WORKERS` here, else one per CPU).
    let workers = std::env::var("KNEO_PROXY_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let opened = connections.load(Ordering::SeqCst);
    assert!(
        (1..=workers).contains(&opened),
        "{opened} connections for {workers} workers"
    );
    assert!(
        most.load(Ordering::SeqCst) > 1,
        "requests shared it at once: at most {} in flight",
        most.load(Ordering::SeqCst)
    );
}

/// An https upstream on `localhost` that offers `h2` and `http/1.1` by ALPN
/// with a certificate of `tls`'s CA; counts, by the protocol picked, the
/// connections requests came on. Each answer waits `hold` first.
async fn tls_upstream(
    tls: &kneo_tests::tls::Tls,
    hold: Duration,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{crypto, ServerConfig};

    let chain = CertificateDer::pem_file_iter(tls.dir.join("server.pem"))
        .expect("the server's PEM")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(tls.dir.join("server.key")).expect("the key");
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("a server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    // The readiness probe connects without TLS: nothing to serve.
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                    let first = Arc::new(std::sync::Once::new());
                    let protocol = String::from_utf8_lossy(&alpn.unwrap_or_default()).into_owned();
                    let h2 = protocol == "h2";
                    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let (seen, protocol) = (seen.clone(), protocol.clone());
                        first.call_once(|| seen.lock().expect("lock").push(protocol));
                        async move {
                            tokio::time::sleep(hold).await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"tls",
                            ))))
                        }
                    });
                    let io = TokioIo::new(stream);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
    }
    (addr, seen)
}

#[tokio::test]
async fn an_https_upstream_that_picks_h2_by_alpn_gets_one_connection() {
    let Some(tls) = kneo_tests::tls::Tls::generate_if_openssl() else {
        return;
    };
    let (addr, seen) = tls_upstream(&tls, Duration::from_millis(200)).await;
    let kneo = std::path::Path::new(env!("CARGO_BIN_EXE_kneo"));
    let ca = tls.dir.join("ca.pem");
    let upstream = format!("https://localhost:{}", addr.port());
    // One worker: one pool, which the request below warms (a pool is per
    // worker, and which worker a connection reaches is the kernel's choice).
    let proxy = Sidecar::start_with_env(
        kneo,
        &upstream,
        &["--workers", "1"],
        &[("SSL_CERT_FILE", &ca)],
    )
    .await
    .expect("starts");
    let url = format!("http://{}/over-tls", proxy.addr());
    // One request first: until ALPN has said h2, the pool cannot know the
    // connection will be shared, so a cold burst may open a few (hyper-util
    // keeps the first to finish its handshake and drops the rest, but one
    // finishing after the first was pooled is kept too).
    let (status, _) = h1_get(&url).await;
    assert_eq!(status, StatusCode::OK);
    all_answer(&url, 20, "tls").await;
    assert_eq!(
        *seen.lock().expect("lock"),
        ["h2"],
        "one connection for all 21 requests, HTTP/2 picked by ALPN"
    );
}

/// gRPC messages as raw bytes: tonic's framing, no protobuf.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A gRPC service, `kneo.test.Echo`, written as tonic's code generation
/// would: `Reverse` (unary) answers its message reversed, with a header
/// `x-served-by`; `Count` (server streaming) answers `n` messages for a
/// message `n`, then fails with `RESOURCE_EXHAUSTED` and a trailer
/// `x-quota-reset`, so the status can only arrive in trailers.
#[derive(Debug, Clone, Copy)]
struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "kneo.test.Echo";
}

type Answer = http::Response<tonic::body::Body>;

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let mut grpc = tonic::server::Grpc::new(Raw);
        match req.uri().path() {
            "/kneo.test.Echo/Reverse" => Box::pin(async move {
                let reverse = tower::service_fn(|req: tonic::Request<Bytes>| async move {
                    let mut reversed = req.into_inner().to_vec();
                    reversed.reverse();
                    let mut res = tonic::Response::new(Bytes::from(reversed));
                    res.metadata_mut()
                        .insert("x-served-by", "echo".parse().expect("ascii"));
                    Ok::<_, tonic::Status>(res)
                });
                Ok(grpc.unary(reverse, req).await)
            }),
            "/kneo.test.Echo/Count" => Box::pin(async move {
                let count = tower::service_fn(|req: tonic::Request<Bytes>| async move {
                    let n = req.into_inner().first().copied().unwrap_or(0);
                    let mut status = tonic::Status::resource_exhausted("quota spent");
                    status
                        .metadata_mut()
                        .insert("x-quota-reset", "60".parse().expect("ascii"));
                    let messages = (0..n)
                        .map(|i| Ok(Bytes::from(format!("message {i}"))))
                        .chain(std::iter::once(Err(status)));
                    Ok::<_, tonic::Status>(tonic::Response::new(futures_util::stream::iter(
                        messages.collect::<Vec<_>>(),
                    )))
                });
                Ok(grpc.server_streaming(count, req).await)
            }),
            _ => Box::pin(async { Ok(tonic::Status::unimplemented("no such method").into_http()) }),
        }
    }
}

#[tokio::test]
async fn grpc_unary_and_server_streaming_pass_through_with_trailers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        Some((listener.accept().await.map(|(s, _)| s), listener))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Echo)
            .serve_with_incoming(incoming),
    );
    let proxy = sidecar(&format!("http://{upstream}"), &["--upstream-h2c"]).await;

    let channel = guarded(
        "the gRPC channel",
        tonic::transport::Channel::from_shared(format!("http://{}", proxy.addr()))
            .expect("a URL")
            .connect(),
    )
    .await
    .expect("connects to the proxy over h2c");
    let mut grpc = tonic::client::Grpc::new(channel);

    // Unary: the answer, its header metadata, and grpc-status 0 in trailers.
    guarded("ready", grpc.ready()).await.expect("ready");
    let res = guarded(
        "the unary call",
        grpc.unary(
            tonic::Request::new(Bytes::from_static(b"kneo")),
            http::uri::PathAndQuery::from_static("/kneo.test.Echo/Reverse"),
            Raw,
        ),
    )
    .await
    .expect("the unary call succeeds");
    assert_eq!(res.metadata().get("x-served-by").expect("header"), "echo");
    assert_eq!(res.metadata().get("via").expect("via"), "2 kneo");
    assert_eq!(res.into_inner(), Bytes::from_static(b"oenk"));

    // Server streaming: three messages, then a status only trailers carry.
    guarded("ready", grpc.ready()).await.expect("ready");
    let res = guarded(
        "the streaming call",
        grpc.server_streaming(
            tonic::Request::new(Bytes::from_static(&[3])),
            http::uri::PathAndQuery::from_static("/kneo.test.Echo/Count"),
            Raw,
        ),
    )
    .await
    .expect("the stream starts");
    let mut stream = res.into_inner();
    let mut got = Vec::new();
    let status = loop {
        match guarded("a message", stream.message()).await {
            Ok(Some(m)) => got.push(String::from_utf8_lossy(&m).into_owned()),
            Ok(None) => panic!("the stream ended without its status: trailers lost"),
            Err(status) => break status,
        }
    };
    assert_eq!(got, ["message 0", "message 1", "message 2"]);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.message(), "quota spent");
    assert_eq!(
        status.metadata().get("x-quota-reset").expect("the trailer"),
        "60"
    );

    // An unknown method: a trailers-only answer, passed on.
    guarded("ready", grpc.ready()).await.expect("ready");
    let missing = guarded(
        "the unknown call",
        grpc.unary::<Bytes, Bytes, _>(
            tonic::Request::new(Bytes::new()),
            http::uri::PathAndQuery::from_static("/kneo.test.Echo/Missing"),
            Raw,
        ),
    )
    .await
    .expect_err("unimplemented");
    assert_eq!(missing.code(), tonic::Code::Unimplemented);
}
