//! [`Workers`]: thread-per-core serving. One listening socket per worker on
//! one address (`SO_REUSEPORT`: the kernel spreads new connections over
//! them), each served by a thread of its own with a current-thread runtime
//! and its own upstream connection pool, so a request is accepted,
//! forwarded and answered on one thread, without crossing to another.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, ProxyConfig, ServerConfig};
use crate::forward::Proxy;
use crate::server::{serve_inner, Drained, Front};

/// The backlog of each worker's listening socket (tokio's and Linux's
/// `somaxconn` default).
const BACKLOG: i32 = 1024;

/// What each worker puts in front of its own proxy (kneo-server's
/// idempotency layer, say), made once per worker from that worker's
/// [`Proxy`] so that it forwards through the worker's own pool.
pub type MakeFront = Arc<dyn Fn(&Proxy) -> Result<Front, ConfigError> + Send + Sync>;

/// Listening sockets for thread-per-core serving, bound before anything is
/// served (so the address can be printed, and a port in use is an error up
/// front).
///
/// ```no_run
/// use kneo_proxy::{Proxy, ProxyConfig, ServerConfig, Workers};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = ProxyConfig::new("http://127.0.0.1:9000")?;
/// let proxy: Proxy = Proxy::new(&config, None)?;
/// let workers = Workers::bind("127.0.0.1:8080".parse()?, 2)?;
/// // Serves for a minute, then drains (a signal, in a real program).
/// let shutdown = tokio::time::sleep(std::time::Duration::from_secs(60));
/// let drained = workers
///     .serve(&proxy, &config, None, &ServerConfig::new(), shutdown)
///     .await?;
/// assert!(drained.completed());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Workers {
    listeners: Vec<std::net::TcpListener>,
    local: SocketAddr,
}

impl Workers {
    /// Binds `addr` `workers` times (at least once), each socket with
    /// `SO_REUSEPORT`. With port 0 the first socket picks a free port and
    /// the others take the same one. More than one worker needs a Unix.
    pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<Workers> {
        let workers = workers.max(1);
        if workers > 1 && !cfg!(unix) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "more than one worker needs SO_REUSEPORT (a Unix)",
            ));
        }
        let mut listeners = Vec::with_capacity(workers);
        let mut local = addr;
        for _ in 0..workers {
            let listener = listen(local)?;
            local = listener.local_addr()?;
            listeners.push(listener);
        }
        Ok(Workers { listeners, local })
    }

    /// The address every worker listens on (the port picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.listeners.len()
    }

    /// Always `false`: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// Serves every worker as [`serve_with`](crate::serve_with) serves one
    /// listener, until `shutdown` resolves; then every worker drains, and
    /// this returns once all have (`completed` when none was cut off).
    ///
    /// Worker 0 forwards through `proxy`; each other worker through a proxy
    /// of its own made by [`Proxy::with_body`] from `config`: its own
    /// connection pool, and the same metrics (one set of counters: their
    /// totals are every worker's), health, access log and retry budget.
    /// `front`, when given, is made once per worker from the worker's
    /// proxy. `max_connections` counts the connections of every worker.
    ///
    /// A worker's runtime runs until every worker has drained: what a
    /// worker started may be in use by another (a tunnel's copy loop, a
    /// shared store's connection).
    pub async fn serve(
        self,
        proxy: &Proxy,
        config: &ProxyConfig,
        front: Option<MakeFront>,
        server: &ServerConfig,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<Drained> {
        let stop = CancellationToken::new();
        let released = CancellationToken::new();
        let (done, mut drained) = tokio::sync::mpsc::unbounded_channel::<Drained>();
        let mut threads: Vec<JoinHandle<()>> = Vec::with_capacity(self.listeners.len());
        let mut started = Ok(());
        for (worker, listener) in self.listeners.into_iter().enumerate() {
            let spawned = spawn_worker(
                worker,
                listener,
                proxy,
                config,
                front.as_ref(),
                server,
                Signals {
                    stop: stop.clone(),
                    released: released.clone(),
                    done: done.clone(),
                },
            );
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    started = Err(e);
                    break;
                }
            }
        }
        drop(done);
        if started.is_ok() {
            shutdown.await;
        }
        stop.cancel();
        let mut cut = false;
        while let Some(worker) = drained.recv().await {
            cut |= !worker.completed();
        }
        released.cancel();
        // The threads end at once now; joined off this runtime's thread.
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
        started.map(|()| Drained::new(cut))
    }
}

/// One `SO_REUSEPORT` listening socket on `addr`, non-blocking, for tokio.
fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// How [`Workers::serve`] and its workers tell each other what happened.
struct Signals {
    /// Cancelled when `shutdown` resolved: drain.
    stop: CancellationToken,
    /// Cancelled once every worker has drained: end the runtime.
    released: CancellationToken,
    /// How each worker's drain ended: sent once, then dropped.
    done: tokio::sync::mpsc::UnboundedSender<Drained>,
}

/// Starts worker `worker` on a thread of its own.
fn spawn_worker(
    worker: usize,
    listener: std::net::TcpListener,
    proxy: &Proxy,
    config: &ProxyConfig,
    front: Option<&MakeFront>,
    server: &ServerConfig,
    signals: Signals,
) -> io::Result<JoinHandle<()>> {
    let proxy = if worker == 0 {
        proxy.clone()
    } else {
        proxy.with_body(config).map_err(io::Error::other)?
    };
    let front = front
        .map(|make| make(&proxy))
        .transpose()
        .map_err(io::Error::other)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = server.clone();
    std::thread::Builder::new()
        .name(format!("kneo-worker-{worker}"))
        .spawn(move || {
            runtime.block_on(async move {
                let drained = match TcpListener::from_std(listener) {
                    Ok(listener) => {
                        let shutdown = signals.stop.cancelled();
                        serve_inner(listener, proxy.clone(), front, &server, worker, shutdown).await
                    }
                    Err(e) => {
                        tracing::warn!(target: "kneo::proxy", "worker {worker} cannot listen: {e}");
                        Drained::new(false)
                    }
                };
                let Signals { released, done, .. } = signals;
                // Dropped once sent: `serve` waits for every sender to go
                // (a worker that panicked drops its own).
                let _ = done.send(drained);
                drop(done);
                released.cancelled().await;
                // Anything recorded after the drain (a late tunnel's end).
                proxy.shared().flush_log();
            });
            runtime.shutdown_background();
        })
}
