//! `kneo proxy`: the gateway sidecar of `kneo-proxy`, as a process.
//!
//! ```text
//! $ kneo proxy --upstream http://127.0.0.1:9000 --listen 127.0.0.1:8080 --admin 127.0.0.1:9901
//! {"listening":"127.0.0.1:8080","admin":"127.0.0.1:9901","upstream":"http://127.0.0.1:9000"}
//! {"request_id":"5f0c…","method":"GET","path":"/runs/7","status":200,"attempts":1,"upstream_ms":1.204,"outcome":"upstream"}
//! ```
//!
//! Standard output: exactly one JSON line once both listeners are bound,
//! then one JSON access-log line per answered request, whoever answered it
//! (the path without its query, which may carry keys; `upstream_request_id`
//! only when the upstream answered with an id of its own; `outcome` one of
//! `upstream`, `unreachable`, `timeout`, `overloaded`, `bad_request`,
//! `rate_limited`, `replayed`, `idempotency`). Diagnostics go to standard
//! error. Bad flags or an unusable `--upstream`: what is wrong (and the
//! usage line) on standard error and exit 2, before
//! anything is bound. SIGTERM or SIGINT: stop accepting, `/readyz` answers
//! 503, in-flight requests finish for up to `--drain-timeout`, exit 0.

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use http::HeaderName;
use kneo::core::credential::Credentials;
use kneo_proxy::{
    Admin, Exchange, ExchangeLog, MakeFront, Proxy, ProxyConfig, ServerConfig, Upstream, Workers,
};
use kneo_server::idempotency::CredentialScope;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::output;
use crate::secs::{non_negative_secs, positive_secs};
use crate::stack::StackArgs;

/// The options of `kneo proxy`.
#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// Where every request goes: http://host:port, optionally with a path
    /// prefix (http://host:port/api joins /runs into /api/runs).
    #[arg(long, value_name = "URL", value_parser = parse_upstream)]
    upstream: String,

    /// Speak HTTP/2 to a plain http:// upstream with prior knowledge (h2c):
    /// requests share one connection. An https:// upstream is offered
    /// HTTP/2 by ALPN without this flag. Upgrades (WebSocket) still use
    /// HTTP/1.1.
    #[arg(long)]
    upstream_h2c: bool,

    /// The address to serve callers on (port 0 picks a free port). Callers
    /// may speak HTTP/1.1 or HTTP/2 with prior knowledge (h2c, as gRPC
    /// clients do).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", value_parser = parse_addr)]
    listen: SocketAddr,

    /// Serving threads, each with its own listening socket on --listen
    /// (SO_REUSEPORT), its own runtime and its own upstream connections: a
    /// request stays on the thread that accepted it [default: the number of
    /// CPUs].
    #[arg(long, value_name = "N", env = "KNEO_PROXY_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,

    /// The address of /healthz, /readyz and /metrics [default: none].
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    admin: Option<SocketAddr>,

    #[command(flatten)]
    stack: StackArgs,

    /// Retries allowed as a percentage of requests (over 10 s, beside a floor
    /// of 10 retries a second), so a sidecar does not multiply an outage.
    #[arg(long, value_name = "P", allow_negative_numbers = true, default_value = "20", value_parser = parse_percent)]
    budget_percent: f32,

    /// Caller connections served at once; one more is answered 503.
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,

    /// How long in-flight requests may run on after SIGTERM or SIGINT, in seconds.
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, default_value = "30", value_parser = non_negative_secs)]
    drain_timeout: Duration,

    /// How long a caller has to send a request head, in seconds.
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, default_value = "10", value_parser = positive_secs)]
    header_timeout: Duration,

    /// Enforce Idempotency-Key in front of the upstream (kneo-server's
    /// layer): a retried POST is answered from the stored response, a
    /// concurrent one gets 409. `memory` for one sidecar, `redis://HOST:PORT`
    /// (or `rediss://USER:PASSWORD@HOST:PORT` for managed Redis: TLS, a
    /// private CA's certificate in `SSL_CERT_FILE`) for a fleet sharing one
    /// Redis, `postgres://…` for a fleet sharing one database (its
    /// `kneo_idempotency` table is created if missing). Keys are per caller:
    /// a caller is an HMAC-SHA256 of its Authorization, Proxy-Authorization,
    /// X-Api-Key and Api-Key values (and the --scope-header and
    /// --scope-cookie ones), keyed with the secret in the environment
    /// variable KNEO_SCOPE_SECRET (at least 16 bytes, the same on every
    /// sidecar sharing a store; without it a public default, fine for
    /// `memory` only).
    #[arg(long, value_name = "memory|redis://HOST:PORT|postgres://…", value_parser = parse_idempotency)]
    idempotency: Option<IdempotencyStore>,

    /// With --idempotency: the largest keyed request body read (bytes, or
    /// with KiB/MiB); a larger one is answered 413 and not forwarded.
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    max_idempotent_body: usize,

    /// With --idempotency: the largest response kept for replays (bytes, or
    /// with KiB/MiB); a larger one still reaches its caller, and a retry of
    /// its key is answered 410.
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    max_stored_response: usize,

    /// Another header that identifies the caller for --idempotency, besides
    /// Authorization, Proxy-Authorization, X-Api-Key and Api-Key
    /// (repeatable). The rate-limit throttle tells callers apart by it too.
    #[arg(long, value_name = "NAME", value_parser = parse_header_name)]
    scope_header: Vec<HeaderName>,

    /// A cookie, by name, that identifies the caller for --idempotency, such
    /// as a session id (repeatable; the throttle tells callers apart by it too). Cookies are opt-in: other cookies never
    /// count, as they change between retries.
    #[arg(long, value_name = "NAME", value_parser = parse_cookie_name)]
    scope_cookie: Vec<String>,

    /// Log retries (`kneo::retry` at INFO) on standard error.
    #[arg(short, long)]
    verbose: bool,
}

/// Where `--idempotency` keeps its records.
#[derive(Clone)]
pub(crate) enum IdempotencyStore {
    /// In this process.
    Memory,
    /// In Redis, at this URL.
    Redis(String),
    /// In Postgres, at this URL.
    Postgres(String),
}

/// Never prints the URL: it may carry a password.
impl std::fmt::Debug for IdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdempotencyStore::Memory => f.write_str("Memory"),
            IdempotencyStore::Redis(_) => f.write_str("Redis(..)"),
            IdempotencyStore::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

/// `memory` or `redis://…`. The message never quotes the value.
fn parse_idempotency(s: &str) -> Result<IdempotencyStore, String> {
    match s {
        "memory" => Ok(IdempotencyStore::Memory),
        url if url.starts_with("redis://") || url.starts_with("rediss://") => {
            Ok(IdempotencyStore::Redis(url.to_owned()))
        }
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(IdempotencyStore::Postgres(url.to_owned()))
        }
        _ => Err("must be memory, redis://HOST:PORT or postgres://…".to_owned()),
    }
}

/// The environment variable holding the secret of `--idempotency`'s scopes.
/// Never a flag: flags show in `ps`.
const SCOPE_SECRET: &str = "KNEO_SCOPE_SECRET";

/// The shortest `KNEO_SCOPE_SECRET` accepted, in bytes.
const MIN_SCOPE_SECRET: usize = 16;

/// Who a key belongs to under `--idempotency`.
struct Scoping {
    scope: CredentialScope,
    /// Whether `KNEO_SCOPE_SECRET` keyed it (else the public default).
    keyed: bool,
}

/// The idempotency layer each worker puts in front of its proxy, when asked
/// for: one store for every worker.
async fn front(
    args: &ProxyArgs,
    store: &IdempotencyStore,
    scoping: Scoping,
    config: &ProxyConfig,
) -> Result<MakeFront, String> {
    use kneo_server::{MemoryStore, PostgresStore, RedisStore};

    // Once a shared store is reached (an unreachable one is the one error line).
    let warn_unkeyed = || {
        if !scoping.keyed {
            eprintln!(
                "kneo proxy: warning: {SCOPE_SECRET} is not set; callers' scopes in the shared \
                 store are keyed with kneo's public default secret"
            );
        }
    };
    let scope = &scoping.scope;
    Ok(match store {
        IdempotencyStore::Memory => {
            make_front(args.idempotency_layer(MemoryStore::new(), scope), config)
        }
        IdempotencyStore::Redis(url) => {
            let store = RedisStore::connect(url.clone())
                .await
                .map_err(|e| format!("cannot reach the Redis of --idempotency: {e}"))?;
            warn_unkeyed();
            make_front(args.idempotency_layer(store, scope), config)
        }
        IdempotencyStore::Postgres(url) => {
            let store = PostgresStore::connect(url)
                .await
                .map_err(|e| format!("cannot reach the Postgres of --idempotency: {e}"))?;
            store.migrate().await.map_err(|_| {
                "cannot create the kneo_idempotency table in the Postgres of --idempotency"
                    .to_owned()
            })?;
            warn_unkeyed();
            make_front(args.idempotency_layer(store, scope), config)
        }
    })
}

/// `layer` over a worker's proxy (with a pool of its own for the layer's
/// request body).
fn make_front<St>(layer: kneo_server::IdempotencyLayer<St>, config: &ProxyConfig) -> MakeFront
where
    St: kneo_server::Store + Clone + Send + Sync + 'static,
{
    use kneo_server::idempotency::RequestBody;
    use tower::Layer;

    let config = config.clone();
    Arc::new(move |proxy: &Proxy| {
        let inner: Proxy<RequestBody<kneo_proxy::Incoming>> = proxy.with_body(&config)?;
        Ok(kneo_proxy::front(layer.layer(inner)))
    })
}

/// `--scope-header`: an HTTP header name. The message never quotes the value.
fn parse_header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.trim().as_bytes())
        .map_err(|_| "not a valid HTTP header name".to_owned())
}

/// `--scope-cookie`: a cookie name (an RFC 6265 token). The message never
/// quotes the value.
fn parse_cookie_name(s: &str) -> Result<String, String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !s.is_empty() && s.bytes().all(tchar) {
        Ok(s.to_owned())
    } else {
        Err("not a cookie name (letters, digits and !#$%&'*+-.^_`|~)".to_owned())
    }
}

/// `KNEO_SCOPE_SECRET`, when set: at least 16 bytes of UTF-8. No message
/// quotes it.
fn parse_scope_secret(value: Option<OsString>) -> Result<Option<String>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let secret = value
        .into_string()
        .map_err(|_| format!("{SCOPE_SECRET} is not valid UTF-8"))?;
    if secret.len() < MIN_SCOPE_SECRET {
        return Err(format!(
            "{SCOPE_SECRET} is shorter than {MIN_SCOPE_SECRET} bytes (use 32 random ones, e.g. `openssl rand -hex 32`)"
        ));
    }
    Ok(Some(secret))
}

impl ProxyArgs {
    /// The scope of `--idempotency`, from the flags and `secret` (the value
    /// of `KNEO_SCOPE_SECRET`, read only with `--idempotency`).
    fn scoping(&self, secret: Option<OsString>) -> Result<Scoping, String> {
        let mut scope = CredentialScope::new();
        if self.idempotency.is_none() {
            if !self.scope_header.is_empty() || !self.scope_cookie.is_empty() {
                return Err("--scope-header and --scope-cookie need --idempotency".to_owned());
            }
            return Ok(Scoping {
                scope,
                keyed: false,
            });
        }
        for name in &self.scope_header {
            scope = scope.header(name.clone());
        }
        for name in &self.scope_cookie {
            scope = scope.cookie(name.as_str());
        }
        let secret = parse_scope_secret(secret)?;
        let keyed = secret.is_some();
        if let Some(secret) = secret {
            scope = scope.secret(secret);
        }
        Ok(Scoping { scope, keyed })
    }

    /// kneo-server's layer over `store`, as the flags configure it.
    fn idempotency_layer<St>(
        &self,
        store: St,
        scope: &CredentialScope,
    ) -> kneo_server::IdempotencyLayer<St> {
        kneo_server::IdempotencyLayer::new(store)
            .scope(scope.clone())
            .max_body(self.max_idempotent_body)
            .max_response(self.max_stored_response)
    }

    fn proxy_config(&self) -> Result<ProxyConfig, String> {
        let mut client = self.stack.layer();
        if !self.scope_header.is_empty() || !self.scope_cookie.is_empty() {
            // The callers --idempotency tells apart are the callers whose
            // announced rate limits the throttle keeps apart.
            let mut credentials = Credentials::new();
            for name in &self.scope_header {
                credentials = credentials.header(name.clone());
            }
            for name in &self.scope_cookie {
                credentials = credentials.cookie(name.as_str());
            }
            let throttle = client.throttle_layer().credentials(credentials);
            client = client.throttle(throttle);
        }
        let config = ProxyConfig::new(&self.upstream)
            .map_err(|e| format!("invalid value for --upstream: {e}"))?
            .client(client)
            .budget_percent(Some(self.budget_percent))
            .map_err(|e| format!("invalid value for --budget-percent: {e}"))?
            .upstream_h2c(self.upstream_h2c)
            .map_err(|e| format!("invalid value for --upstream-h2c: {e}"))?;
        Ok(config)
    }

    fn server_config(&self) -> ServerConfig {
        ServerConfig::new()
            .max_connections(self.max_connections as usize)
            .drain_timeout(self.drain_timeout)
            .header_read_timeout(self.header_timeout)
    }
}

/// `http(s)://host[:port][/prefix]`, as [`Upstream::parse`] takes it. The
/// message never quotes the URL.
fn parse_upstream(s: &str) -> Result<String, String> {
    Upstream::parse(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

/// A size in bytes: `65536`, `64KiB`, `1MiB` (also `KB`/`MB` as 1000s).
fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| "not a size (bytes, or with KiB/MiB)".to_owned())?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err("unknown unit (use bytes, KiB, MiB or GiB)".to_owned()),
    };
    n.checked_mul(scale).ok_or_else(|| "too large".to_owned())
}

/// `IP:PORT`.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "not an address (IP:PORT, e.g. 127.0.0.1:8080)".to_owned())
}

/// A percentage from 0 to 1000.
fn parse_percent(s: &str) -> Result<f32, String> {
    let p = s
        .trim()
        .parse::<f32>()
        .ok()
        .filter(|p| p.is_finite())
        .ok_or_else(|| "not a number".to_owned())?;
    if !(0.0..=1000.0).contains(&p) {
        return Err("must be from 0 to 1000".to_owned());
    }
    Ok(p)
}

/// Runs `kneo proxy` to the end: exit 0 after a drain, 1 when a listener
/// cannot be bound, 2 for a bad flag.
pub(crate) fn main(args: ProxyArgs) -> ExitCode {
    let config = match args.proxy_config() {
        Ok(config) => config,
        Err(message) => return output::usage(&message),
    };
    let scoping = match args.scoping(std::env::var_os(SCOPE_SECRET)) {
        Ok(scoping) => scoping,
        Err(message) => return output::usage(&message),
    };
    crate::init_tracing(args.verbose);
    // The signals, the admin endpoints and a shared store's connection run
    // here; requests on the workers' own threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(&args, &config, scoping)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The startup line.
#[derive(Serialize)]
struct Listening {
    listening: String,
    admin: Option<String>,
    upstream: String,
}

/// Binds `--listen` once per worker and `--admin`: a message and exit 1
/// when either cannot be bound.
async fn bind(args: &ProxyArgs) -> Result<(Workers, Option<TcpListener>), ExitCode> {
    let workers = args.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    let workers = Workers::bind(args.listen, workers).map_err(|e| {
        eprintln!("error: cannot listen on {}: {e}", args.listen);
        ExitCode::FAILURE
    })?;
    let admin = match args.admin {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            eprintln!("error: cannot listen on {addr} (--admin): {e}");
            ExitCode::FAILURE
        })?),
        None => None,
    };
    Ok((workers, admin))
}

async fn run(args: &ProxyArgs, config: &ProxyConfig, scoping: Scoping) -> ExitCode {
    let (workers, admin_listener) = match bind(args).await {
        Ok(bound) => bound,
        Err(code) => return code,
    };
    let startup = Listening {
        listening: workers.local_addr().to_string(),
        admin: admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string()),
        upstream: config.upstream().to_string(),
    };

    let proxy: Proxy = match Proxy::new(config, Some(Box::new(AccessLog))) {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let front = match &args.idempotency {
        Some(store) => match front(args, store, scoping, config).await {
            Ok(front) => Some(front),
            Err(message) => return output::usage(&message),
        },
        None => None,
    };
    let signals = Signals::watch();
    if output::print(&startup, 0) != ExitCode::SUCCESS {
        return ExitCode::FAILURE;
    }

    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signals.recv().await;
        let _ = stop.send(true);
    });
    let server_config = args.server_config();
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = admin_listener.map(|l| {
        let admin = Admin::new(&proxy);
        let config = server_config.clone();
        tokio::spawn(async move {
            kneo_proxy::serve_admin(l, admin, &config, async {
                let _ = admin_stopped.await;
            })
            .await;
        })
    });

    let drain = args.drain_timeout;
    let shutdown = async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|stop| *stop).await;
        eprintln!(
            "kneo proxy: shutting down; in-flight requests have {:.1}s to finish",
            drain.as_secs_f64()
        );
    };
    let drained = workers
        .serve(&proxy, config, front, &server_config, shutdown)
        .await;
    let code = match drained {
        Ok(drained) if !drained.completed() => {
            eprintln!("kneo proxy: the drain timeout ran out; cutting off what is left");
            ExitCode::SUCCESS
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot start the workers: {e}");
            ExitCode::FAILURE
        }
    };
    let _ = admin_stop.send(());
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    code
}

/// SIGTERM and SIGINT, watched from before the startup line is printed,
/// so a signal sent as soon as it is read is not the default (fatal) one.
struct Signals {
    #[cfg(unix)]
    watched: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn watch() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Signals {
                    watched: Some((term, int)),
                },
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!(
                        "kneo proxy: cannot watch SIGTERM or SIGINT ({e}); Ctrl-C still works"
                    );
                    Signals { watched: None }
                }
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves on the first SIGTERM or SIGINT (Ctrl-C elsewhere).
    async fn recv(self) {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = self.watched {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// One access-log line. `upstream_request_id` is there only when the
/// upstream answered with an `X-Request-ID` of its own (not the one sent).
#[derive(Serialize)]
struct AccessLine<'a> {
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_request_id: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    status: u16,
    attempts: u32,
    upstream_ms: f64,
    outcome: &'static str,
}

/// The access log: each serving thread writes its lines into a buffer of
/// its own, written to standard output when it passes [`LOG_BUFFER`] bytes
/// and when the worker flushes it (every
/// [`FLUSH_EVERY`](kneo_proxy::FLUSH_EVERY) and after its drain, so no line
/// is lost on SIGTERM). No lock and no other thread on a request's way, as
/// nginx's `access_log … buffer= flush=`.
struct AccessLog;

/// The bytes a thread's access-log buffer holds before it is written out.
const LOG_BUFFER: usize = 32 * 1024;

thread_local! {
    static LOG_LINES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl ExchangeLog for AccessLog {
    fn record(&self, ex: &Exchange<'_>) {
        let line = AccessLine {
            request_id: ex.request_id(),
            upstream_request_id: ex.upstream_request_id(),
            method: ex.method().as_str(),
            path: ex.path(),
            status: ex.status().as_u16(),
            attempts: ex.attempts(),
            upstream_ms: (ex.upstream_time().as_secs_f64() * 1e6).round() / 1e3,
            outcome: ex.outcome().as_str(),
        };
        LOG_LINES.with_borrow_mut(|buffer| {
            if output::write_line(buffer, &line).is_ok() && buffer.len() >= LOG_BUFFER {
                write_out(buffer);
            }
        });
    }

    fn flush(&self) {
        LOG_LINES.with_borrow_mut(write_out);
    }
}

/// Writes `buffer` to standard output and empties it.
fn write_out(buffer: &mut Vec<u8>) {
    if buffer.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(buffer);
    let _ = out.flush();
    buffer.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_and_addresses() {
        assert_eq!(parse_percent("20"), Ok(20.0));
        assert_eq!(parse_percent("0"), Ok(0.0));
        for bad in ["-1", "1001", "NaN", "inf", "lots"] {
            assert!(parse_percent(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_addr("127.0.0.1:0").is_ok());
        assert!(parse_addr("localhost:80").is_err());
        assert!(parse_upstream("http://u:secret@h/").is_err());
        assert_eq!(parse_bytes("65536"), Ok(65_536));
        assert_eq!(parse_bytes("64KiB"), Ok(65_536));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("2MB"), Ok(2_000_000));
        for bad in ["", "MiB", "-1", "1 TB", "1.5MiB", "99999999999999999999GiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn scope_names_and_secrets() {
        assert_eq!(
            parse_header_name("X-Tenant-Key"),
            Ok(HeaderName::from_static("x-tenant-key"))
        );
        assert!(parse_header_name("bad name").is_err());
        assert!(parse_header_name("").is_err());
        assert_eq!(
            parse_cookie_name("__Host-session"),
            Ok("__Host-session".to_owned())
        );
        for bad in ["", "a b", "a=b", "a;b", "sé"] {
            assert!(parse_cookie_name(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(parse_scope_secret(None), Ok(None));
        let long = "0123456789abcdef";
        assert_eq!(
            parse_scope_secret(Some(long.into())),
            Ok(Some(long.to_owned()))
        );
        for short in ["", "hunter2"] {
            let err = parse_scope_secret(Some(short.into())).expect_err("too short");
            assert!(
                err.contains("KNEO_SCOPE_SECRET") && (short.is_empty() || !err.contains(short)),
                "{err}"
            );
        }
    }
}
