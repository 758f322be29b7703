//! `kneo proxy` in front of a plain `http://` upstream keeps its HTTP/1.1
//! connections in a pool that the requests drive themselves: what a caller
//! should see of it, through the built binary. Answers reuse a connection
//! once their body has ended (by length or by chunks), a connection the
//! upstream closed while idle costs no request, and an answer cut off is
//! not followed by a reuse of its broken connection.
//!
//! Timeouts around awaits are guards against a hang, not claims.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use kneo_tests::guarded;
use kneo_tests::sidecar::Sidecar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn sidecar(upstream: SocketAddr) -> Sidecar {
    let kneo = std::path::Path::new(env!("CARGO_BIN_EXE_kneo"));
    // One worker: one pool, so "the same connection" is well defined.
    Sidecar::start(
        kneo,
        &format!("http://{upstream}"),
        &["--workers", "1", "--max-attempts", "1"],
    )
    .await
    .expect("kneo proxy starts")
}

/// A caller's keep-alive connection to the proxy.
struct Caller(hyper::client::conn::http1::SendRequest<Empty<Bytes>>);

impl Caller {
    async fn connect(addr: SocketAddr) -> Caller {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Caller(send)
    }

    async fn get(&mut self, path: &str) -> (StatusCode, Bytes) {
        guarded("the proxy answers", async {
            self.0
                .ready()
                .await
                .expect("the caller's connection is open");
            let req = Request::get(path)
                .header("host", "proxy")
                .body(Empty::new())
                .expect("a request");
            let res = self.0.send_request(req).await.expect("an answer");
            let status = res.status();
            let body = res.into_body().collect().await.expect("a body").to_bytes();
            (status, body)
        })
        .await
    }
}

/// A hyper upstream that counts the connections requests came on (the
/// proxy's readiness probe connects without one): `/fixed` is 64 bytes
/// with a length, `/chunked` 256 KiB in 64 chunks without one.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let used = Arc::new(AtomicUsize::new(0));
    let count = used.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let first = std::sync::Once::new();
            let count = count.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                first.call_once(|| {
                    count.fetch_add(1, Ordering::SeqCst);
                });
                async move {
                    let body = if req.uri().path() == "/chunked" {
                        let chunks = (0..64).map(|_| {
                            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'c'; 4096])))
                        });
                        StreamBody::new(futures_util::stream::iter(chunks)).boxed()
                    } else {
                        Full::new(Bytes::from_static(&[b'f'; 64])).boxed()
                    };
                    Ok::<_, Infallible>(Response::new(body))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    (addr, used)
}

#[tokio::test]
async fn answers_read_to_their_end_leave_their_connection_for_the_next_request() {
    let (upstream, used) = counting_upstream().await;
    let proxy = sidecar(upstream).await;
    let mut caller = Caller::connect(proxy.addr()).await;
    for i in 0..20 {
        let path = if i % 2 == 0 { "/fixed" } else { "/chunked" };
        let (status, body) = caller.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let expected = if path == "/fixed" { 64 } else { 64 * 4096 };
        assert_eq!(body.len(), expected, "{path}");
    }
    let opened = used.load(Ordering::SeqCst);
    assert_eq!(
        opened, 1,
        "20 requests one after another opened {opened} upstream connections"
    );
}

/// A raw upstream: answers each request on a connection with 5 bytes and
/// keep-alive, then closes the connection once it has been idle for 50 ms
/// after an answer (a server's idle timeout), without a `Connection: close`
/// to warn of it. Counts the requests, and the connections it so closed.
async fn closing_upstream() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (count, idle_closed) = (requests.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (count, idle_closed) = (count.clone(), idle_closed.clone());
            tokio::spawn(async move {
                let mut buf = vec![0; 8192];
                let mut seen = Vec::new();
                // The idle timeout runs only once a request was answered: a
                // new connection waits for its first request however slowly
                // a loaded proxy sends it.
                let mut answered = false;
                loop {
                    let read = if answered {
                        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf))
                            .await
                        {
                            Ok(read) => read,
                            Err(_) => {
                                // Idle: close.
                                drop(stream);
                                idle_closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    } else {
                        stream.read(&mut buf).await
                    };
                    let n = match read {
                        Ok(n) if n > 0 => n,
                        // Closed by the proxy.
                        _ => return,
                    };
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        count.fetch_add(1, Ordering::SeqCst);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                        answered = true;
                    }
                }
            });
        }
    });
    (addr, requests, closed)
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_costs_no_request() {
    let (upstream, requests, closed) = closing_upstream().await;
    let proxy = sidecar(upstream).await;
    let mut caller = Caller::connect(proxy.addr()).await;
    for round in 0..3 {
        let (status, body) = caller.get("/again").await;
        assert_eq!(status, StatusCode::OK, "round {round}: {body:?}");
        assert_eq!(&body[..], b"hello");
        // Past the upstream's idle timeout: the pooled connection is gone.
        guarded("the upstream closes the idle connection", async {
            while closed.load(Ordering::SeqCst) <= round {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(requests.load(Ordering::SeqCst), 3, "each request sent once");
}

#[tokio::test]
async fn an_answer_cut_off_is_not_followed_by_a_reuse_of_its_connection() {
    // Promises 100 bytes, sends 10 and keeps the connection open: the
    // proxy's caller gets a cut body; the next request must not be sent on
    // that connection (whose next bytes would be the rest of this body).
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 8192];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                let answer: &[u8] = if buf[..n].starts_with(b"GET /cut ") {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nwhole"
                };
                let _ = stream.write_all(answer).await;
                // Hold the connection open.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let proxy = sidecar(upstream).await;

    // The first caller gives up on the cut body.
    let mut first = Caller::connect(proxy.addr()).await;
    let cut = guarded("the head", async {
        first.0.ready().await.expect("open");
        let req = Request::get("/cut")
            .header("host", "proxy")
            .body(Empty::new())
            .expect("a request");
        first.0.send_request(req).await.expect("the head")
    })
    .await;
    assert_eq!(cut.status(), StatusCode::OK);
    let mut body = cut.into_body();
    let start = guarded("the first bytes", body.frame())
        .await
        .expect("a frame")
        .expect("data");
    assert_eq!(start.into_data().expect("data").len(), 10);
    drop(body);
    drop(first);

    let mut second = Caller::connect(proxy.addr()).await;
    let (status, whole) = second.get("/whole").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&whole[..], b"whole");
}
