//! [`FaultRelay`]: a TCP relay on `127.0.0.1:0` that injects one seeded fault
//! per connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// What the relay does with one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Fault {
    /// Relays both ways untouched.
    Pass,
    /// Resets the client's connection (`SO_LINGER` 0) before reading
    /// anything: the request never reaches a server.
    ResetBeforeRequest,
    /// Forwards the request, reads the server's whole response, then resets
    /// the client's connection without writing any of it: the request was
    /// applied and the client cannot know. The dangerous case.
    ResetAfterRequest,
    /// Forwards the request and writes half of the server's response (for
    /// small responses, a cut inside the head), then closes the client's
    /// connection.
    CutResponse,
    /// Forwards the request and writes the server's response head and half
    /// its body, then closes the client's connection: the client has a
    /// success status and a body that breaks off.
    CutBody,
    /// Waits [`FaultConfig::delay`], then relays untouched.
    Delay,
}

impl Fault {
    /// Every kind, in the order the counters print.
    pub const ALL: [Fault; 6] = [
        Fault::Pass,
        Fault::ResetBeforeRequest,
        Fault::ResetAfterRequest,
        Fault::CutResponse,
        Fault::CutBody,
        Fault::Delay,
    ];

    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Pass => "pass",
            Fault::ResetBeforeRequest => "reset_before_request",
            Fault::ResetAfterRequest => "reset_after_request",
            Fault::CutResponse => "cut_response",
            Fault::CutBody => "cut_body",
            Fault::Delay => "delay",
        }
    }

    fn index(self) -> usize {
        Fault::ALL
            .iter()
            .position(|f| *f == self)
            .expect("invariant: ALL lists every fault")
    }
}

/// How often, and which, faults the relay injects.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FaultConfig {
    /// The share of connections that get a fault (0.0..=1.0).
    pub rate: f64,
    /// Relative weights of the faults, in the order `ResetBeforeRequest`,
    /// `ResetAfterRequest`, `CutResponse`, `CutBody`, `Delay`.
    pub mix: [u32; 5],
    /// How long a [`Fault::Delay`] waits.
    pub delay: Duration,
    /// The seed of the per-connection picks.
    pub seed: u64,
    /// The bound on one relayed connection; past it the relay drops both ends.
    pub connection_limit: Duration,
}

impl FaultConfig {
    /// `rate` faults, an even mix of the five, 5 ms delays, seeded with `seed`.
    pub fn new(rate: f64, seed: u64) -> Self {
        FaultConfig {
            rate: rate.clamp(0.0, 1.0),
            mix: [1, 1, 1, 1, 1],
            delay: Duration::from_millis(5),
            seed,
            connection_limit: Duration::from_secs(30),
        }
    }

    /// Sets the relative weights of the five faults.
    pub fn mix(mut self, mix: [u32; 5]) -> Self {
        self.mix = mix;
        self
    }

    /// Sets the delay of [`Fault::Delay`].
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    fn pick(&self, rng: &mut fastrand::Rng) -> Fault {
        let total: u32 = self.mix.iter().sum();
        if total == 0 || rng.f64() >= self.rate {
            return Fault::Pass;
        }
        let mut n = rng.u32(0..total);
        for (weight, fault) in self.mix.iter().zip(&Fault::ALL[1..]) {
            if n < *weight {
                return *fault;
            }
            n -= weight;
        }
        unreachable!("invariant: n < total")
    }
}

/// Connections per fault kind, counted as they are accepted.
#[derive(Debug, Default)]
pub struct FaultCounts([AtomicU64; 6]);

impl FaultCounts {
    /// Connections that got `fault`.
    pub fn get(&self, fault: Fault) -> u64 {
        self.0[fault.index()].load(Ordering::SeqCst)
    }

    /// Connections accepted.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::SeqCst)).sum()
    }

    /// Connections that got a fault other than `Pass`.
    pub fn faults(&self) -> u64 {
        self.total() - self.get(Fault::Pass)
    }

    fn add(&self, fault: Fault) {
        self.0[fault.index()].fetch_add(1, Ordering::SeqCst);
    }
}

/// A fault-injecting TCP relay on `127.0.0.1:0` in front of one or more
/// targets (taken in turn, one per connection; a target that refuses the
/// connection is skipped for the next, as a load balancer fails over from a
/// dead instance). Each accepted connection gets
/// one [`Fault`], picked by a `fastrand::Rng` seeded with
/// [`FaultConfig::seed`]. Dropped, it stops accepting and drops every relayed
/// connection.
///
/// The faults that read the server's response read it to end of stream, so
/// the server must close each connection after one response (HTTP/1
/// keep-alive off), as [`FaultServer`](super::FaultServer) does.
#[derive(Debug)]
pub struct FaultRelay {
    addr: SocketAddr,
    counts: Arc<FaultCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultRelay {
    /// Starts relaying to `targets` with `config`.
    pub async fn start(targets: Vec<SocketAddr>, config: FaultConfig) -> FaultRelay {
        assert!(!targets.is_empty(), "a relay needs a target");
        let targets: Arc<[SocketAddr]> = targets.into();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let counts = Arc::new(FaultCounts::default());
        let rng = Mutex::new(fastrand::Rng::with_seed(config.seed));
        let task = {
            let counts = counts.clone();
            tokio::spawn(async move {
                // The connections live in this set: aborting the accept task
                // drops them all.
                let mut connections = JoinSet::new();
                let mut next = 0usize;
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { continue };
                            let fault = config.pick(&mut rng.lock().expect("not poisoned"));
                            counts.add(fault);
                            let (targets, first) = (targets.clone(), next % targets.len());
                            next = next.wrapping_add(1);
                            let (delay, limit) = (config.delay, config.connection_limit);
                            connections.spawn(async move {
                                let _ = tokio::time::timeout(
                                    limit,
                                    relay(client, &targets, first, fault, delay),
                                )
                                .await;
                            });
                        }
                        Some(_) = connections.join_next() => {}
                    }
                }
            })
        };
        FaultRelay { addr, counts, task }
    }

    /// The relay's address: point the client here.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections per fault kind so far.
    pub fn counts(&self) -> &FaultCounts {
        &self.counts
    }
}

/// Drops `stream` with `SO_LINGER` 0: the peer sees a reset, not an orderly close.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Connects to `targets[first]`, else to the next that accepts.
async fn connect(targets: &[SocketAddr], first: usize) -> std::io::Result<TcpStream> {
    let mut last = None;
    for i in 0..targets.len() {
        match TcpStream::connect(targets[(first + i) % targets.len()]).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("invariant: a relay has a target"))
}

async fn relay(
    mut client: TcpStream,
    targets: &[SocketAddr],
    first: usize,
    fault: Fault,
    delay: Duration,
) -> std::io::Result<()> {
    match fault {
        Fault::ResetBeforeRequest => {
            reset(client);
            Ok(())
        }
        Fault::Pass | Fault::Delay => {
            if fault == Fault::Delay {
                tokio::time::sleep(delay).await;
            }
            let mut server = connect(targets, first).await?;
            tokio::io::copy_bidirectional(&mut client, &mut server).await?;
            Ok(())
        }
        Fault::ResetAfterRequest | Fault::CutResponse | Fault::CutBody => {
            let mut server = connect(targets, first).await?;
            // The request goes through; the response is held back until the
            // server closes (it has then read the whole request and answered).
            let mut response = Vec::new();
            let (mut up, mut down) = ([0u8; 8192], [0u8; 8192]);
            loop {
                tokio::select! {
                    read = client.read(&mut up) => match read {
                        // The client hung up first: nothing left to fault.
                        Ok(0) | Err(_) => return Ok(()),
                        Ok(n) => server.write_all(&up[..n]).await?,
                    },
                    read = server.read(&mut down) => match read? {
                        0 => break,
                        n => response.extend_from_slice(&down[..n]),
                    },
                }
            }
            let cut = match fault {
                Fault::CutResponse => response.len() / 2,
                Fault::CutBody => {
                    let head = response
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map_or(0, |i| i + 4);
                    head + (response.len() - head) / 2
                }
                _ => {
                    reset(client);
                    return Ok(());
                }
            };
            client.write_all(&response[..cut]).await?;
            client.shutdown().await?;
            Ok(())
        }
    }
}
