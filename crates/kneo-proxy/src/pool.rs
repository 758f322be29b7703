//! [`Pool`]: the HTTP/1.1 connections of a plain `http://` upstream,
//! driven by the request that uses them.
//!
//! hyper-util's pooled client runs each connection as a task of its own: a
//! request crosses a channel to that task, is written and read there, and
//! its answer comes back through another channel, two task wake-ups each
//! way; and the pool is a map keyed by scheme and authority, hashed three
//! times a request. A proxy has one upstream, and (thread-per-core) one
//! pool per thread. Here a connection is a value: a request takes one from
//! the pool (or connects), polls hyper's connection itself while it waits
//! for the head, and hands it to the response body, which goes on polling
//! it while the body streams and puts it back once the body has ended. A
//! body dropped before its end takes its connection with it (closed: the
//! rest of that answer is nobody's).
//!
//! An idle connection is not polled: whether the upstream closed it is
//! checked when it is taken (one poll, with no task to wake), and a request
//! that a reused connection could not send (closed meanwhile) is sent on a
//! new one, as hyper-util does. Every 5 s a task of the pool's runtime
//! drops the idle connections that have ended or are older than
//! [`IDLE_TIMEOUT`]; at most [`MAX_IDLE`] are kept.
//!
//! HTTP/2 (h2c, or `https://` where ALPN may pick it) stays with
//! hyper-util's client: many requests share one connection there, and it
//! needs a task of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use kneo::core::Sent;
use kneo::BoxError;
use tokio::time::Instant;
use tower_service::Service;

/// An idle connection older than this is closed when next met (as
/// hyper-util's default pool does after 90 s).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The most idle connections a pool keeps.
pub(crate) const MAX_IDLE: usize = 1024;

/// How often idle connections are looked over: those the upstream closed
/// (their socket would linger half-closed) and those past [`IDLE_TIMEOUT`]
/// are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// A pool of HTTP/1.1 connections to one `http://` upstream. Clones share
/// it.
pub(crate) struct Pool<B> {
    shared: Arc<Shared<B>>,
}

impl<B> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Pool {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<B> {
    connector: HttpConnector,
    /// `http://host:port`, what is connected to.
    target: Uri,
    /// Most recently used last.
    idle: Mutex<Vec<Idle<B>>>,
    /// Whether the task that sweeps `idle` runs (started with the first
    /// idle connection, on that runtime: the worker's).
    sweeping: std::sync::atomic::AtomicBool,
}

struct Idle<B> {
    conn: Box<Conn<B>>,
    since: Instant,
}

/// One connection: the handle requests are sent on, and hyper's connection
/// itself, polled by whoever has it.
struct Conn<B> {
    send: http1::SendRequest<B>,
    /// `None` once it has ended. (Boxed and unnamed: its type would bind
    /// `B` wherever a pool is named.)
    conn: Option<Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>>,
    pool: Arc<Shared<B>>,
}

impl<B> Pool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A pool connecting to `target` (`http://host:port`) within
    /// `connect_timeout`.
    pub(crate) fn new(target: Uri, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        Pool {
            shared: Arc::new(Shared {
                connector,
                target,
                idle: Mutex::new(Vec::new()),
                sweeping: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B> Shared<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<Box<Conn<B>>> {
        let mut idle = lock(&self.idle);
        while let Some(Idle { mut conn, since }) = idle.pop() {
            if since.elapsed() < IDLE_TIMEOUT && conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    /// Drops the idle connections that have ended or aged out.
    fn sweep(&self) {
        lock(&self.idle)
            .retain_mut(|idle| idle.since.elapsed() < IDLE_TIMEOUT && idle.conn.is_open());
    }

    /// Starts the sweeping task, once, on this runtime; it ends with the pool.
    fn start_sweeping(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.sweeping.load(Ordering::Relaxed) || self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Relaxed);
            return;
        };
        let pool = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                match pool.upgrade() {
                    Some(pool) => pool.sweep(),
                    None => return,
                }
            }
        });
    }

    async fn connect(self: &Arc<Self>) -> Result<Box<Conn<B>>, BoxError> {
        let io = self.connector.clone().call(self.target.clone()).await?;
        let (send, conn) = http1::handshake(io).await?;
        Ok(Box::new(Conn {
            send,
            conn: Some(Box::pin(conn)),
            pool: self.clone(),
        }))
    }
}

impl<B> Conn<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Drives the connection (writes, reads); once it has ended it is
    /// dropped, which also fails a request it had not sent.
    fn poll_conn(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = &mut self.conn {
            if conn.as_mut().poll(cx).is_ready() {
                self.conn = None;
            }
        }
    }

    /// Polls it once with no task to wake: `false` when it has ended (the
    /// upstream closed it while it was idle, say) or cannot take a request.
    fn is_open(&mut self) -> bool {
        self.poll_conn(&mut Context::from_waker(Waker::noop()));
        self.conn.is_some() && self.send.is_ready()
    }

    /// Back to the pool when it can take another request; else closed.
    fn release(mut self: Box<Self>) {
        if !self.is_open() {
            return;
        }
        let pool = self.pool.clone();
        {
            let mut idle = lock(&pool.idle);
            if idle.len() < MAX_IDLE {
                idle.push(Idle {
                    conn: self,
                    since: Instant::now(),
                });
            }
        }
        pool.start_sweeping();
    }
}

/// A connection lent to a response body, whatever the request body type.
trait Lease: Send {
    fn poll_conn(&mut self, cx: &mut Context<'_>);
    fn release(self: Box<Self>);
}

impl<B> Lease for Conn<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn poll_conn(&mut self, cx: &mut Context<'_>) {
        Conn::poll_conn(self, cx);
    }

    fn release(self: Box<Self>) {
        Conn::release(self);
    }
}

impl<B> Service<Request<B>> for Pool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<UpstreamBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        Box::pin(send(self.shared.clone(), req))
    }
}

/// Sends `req` on a pooled connection (or a new one), driving it until the
/// head arrives.
async fn send<B>(
    pool: Arc<Shared<B>>,
    mut req: Request<B>,
) -> Result<Response<UpstreamBody>, BoxError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    // HTTP/1.1 to an origin: the request line carries the path and query.
    let origin = req
        .uri()
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    *req.uri_mut() = origin;
    loop {
        let (mut conn, reused) = match pool.checkout() {
            Some(conn) => (conn, true),
            None => match pool.connect().await {
                Ok(conn) => (conn, false),
                Err(e) => return Err(Box::new(kneo::Error::network(e, Sent::of(&req)).connect())),
            },
        };
        let mut response = std::pin::pin!(conn.send.try_send_request(req));
        let answer = std::future::poll_fn(|cx| {
            conn.poll_conn(cx);
            response.as_mut().poll(cx)
        })
        .await;
        match answer {
            Ok(res) => {
                return Ok(res.map(|body| UpstreamBody {
                    body,
                    lease: Some(conn),
                }))
            }
            Err(mut e) => match e.take_message() {
                // Closed while idle, before the request went out: on a new
                // connection (it was never sent).
                Some(unsent) if reused => req = unsent,
                _ => return Err(Box::new(e.into_error())),
            },
        }
    }
}

/// An upstream's response body (inside a [`ProxyBody`](crate::ProxyBody)):
/// hyper's, and the connection it arrives on
/// when that is one of the proxy's own pool (polled as the body is, and back in
/// the pool once the body has ended).
pub struct UpstreamBody {
    body: Incoming,
    lease: Option<Box<dyn Lease>>,
}

impl UpstreamBody {
    /// A body whose connection something else drives (hyper-util's client).
    pub(crate) fn plain(body: Incoming) -> Self {
        UpstreamBody { body, lease: None }
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("body", &self.body)
            .field("pooled", &self.lease.is_some())
            .finish()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(lease) = &mut this.lease {
            lease.poll_conn(cx);
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.release(),
            // hyper stops polling a body that says it has ended.
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            // A broken body: its connection is in no state to reuse.
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Read to its end, its connection can take another request; cut
        // off, the connection goes with it.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

/// The service under a [`Proxy`](crate::Proxy)'s kneo stack: for a plain
/// `http://` upstream, a pool of HTTP/1.1 connections (one per worker) that
/// the requests drive themselves, with no task per connection: a request
/// polls its connection while it waits for the head, its response body goes
/// on polling it and puts it back once the body has ended, a body dropped
/// before its end closes it. Where HTTP/2 may be spoken (`--upstream-h2c`,
/// `https://`), hyper-util's pooled client.
pub struct Connections<B>(Kind<B>);

enum Kind<B> {
    Pooled(Pool<B>),
    /// Shared, not copied, by every clone of the stack (one per request).
    Shared(Arc<hyper_util::client::legacy::Client<kneo::transport::Connector, B>>),
}

impl<B> Connections<B> {
    pub(crate) fn pooled(pool: Pool<B>) -> Self {
        Connections(Kind::Pooled(pool))
    }

    pub(crate) fn shared(
        client: hyper_util::client::legacy::Client<kneo::transport::Connector, B>,
    ) -> Self {
        Connections(Kind::Shared(Arc::new(client)))
    }
}

impl<B> Clone for Connections<B> {
    fn clone(&self) -> Self {
        Connections(match &self.0 {
            Kind::Pooled(pool) => Kind::Pooled(pool.clone()),
            Kind::Shared(client) => Kind::Shared(client.clone()),
        })
    }
}

impl<B> std::fmt::Debug for Connections<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::Pooled(_) => "Connections(HTTP/1.1 pool)",
            Kind::Shared(_) => "Connections(hyper-util client)",
        })
    }
}

impl<B> Service<Request<B>> for Connections<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<UpstreamBody>;
    type Error = BoxError;
    type Future = ConnectionsFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.0 {
            Kind::Pooled(pool) => pool.poll_ready(cx),
            // hyper-util's client is always ready.
            Kind::Shared(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ConnectionsFuture(match &mut self.0 {
            Kind::Pooled(pool) => FutureKind::Pooled(pool.call(req)),
            Kind::Shared(client) => FutureKind::Shared(client.request(req)),
        })
    }
}

/// The response future of [`Connections`].
pub struct ConnectionsFuture(FutureKind);

enum FutureKind {
    Pooled(<Pool<Incoming> as Service<Request<Incoming>>>::Future),
    Shared(hyper_util::client::legacy::ResponseFuture),
}

impl std::fmt::Debug for ConnectionsFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionsFuture").finish_non_exhaustive()
    }
}

impl Future for ConnectionsFuture {
    type Output = Result<Response<UpstreamBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            FutureKind::Pooled(future) => future.as_mut().poll(cx),
            FutureKind::Shared(future) => Pin::new(future)
                .poll(cx)
                .map_ok(|res| res.map(UpstreamBody::plain))
                .map_err(Into::into),
        }
    }
}
