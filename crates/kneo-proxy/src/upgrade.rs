//! Upgrades (RFC 9110 §7.8): WebSocket, and any other protocol a caller asks
//! to switch to on HTTP/1.1 ([`upgrade_protocol`]).
//!
//! The handshake is forwarded once, as it came (headers rewritten, the
//! upgrade kept), on an HTTP/1.1 upstream connection of its own: never
//! retried (nothing of it is replayable once the upstream may have switched)
//! and never keyed (it is not the kneo stack's request). On `101 Switching
//! Protocols` the caller's connection and the upstream's are joined byte for
//! byte, both ways, until either side closes; any other answer is passed on
//! as it is. A tunnel counts against `max_connections` as the caller's
//! connection did, and a drain waits for it up to the drain timeout, then
//! cuts it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kneo::BoxError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::ProxyBody;
use crate::config::{ConfigError, ProxyConfig};
use crate::headers::{keep_upgrade, rewrite, Hop};
use crate::metrics::Held;
use crate::outcome::{Exchange, ExchangeOutcome};
use crate::pool::UpstreamBody;
use crate::problem::ProblemAnswer;
use crate::shared::{finish_problem, record, upstream_request_id, Shared};
use kneo::transport::{Alpn, Connector};

pub(crate) use crate::headers::upgrade_protocol;

/// The upgrade client and the tunnels it opened.
pub(crate) struct Upgrades {
    /// HTTP/1.1 only: an upgrade takes its connection out of any pool.
    client: Client<Connector, Incoming>,
    /// The limit on the upstream's answer to a handshake.
    answer_timeout: Option<Duration>,
    tunnels: TaskTracker,
    cut: CancellationToken,
}

impl Upgrades {
    pub(crate) fn new(config: &ProxyConfig) -> Result<Upgrades, ConfigError> {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(config.connector(Alpn::Http1)?);
        Ok(Upgrades {
            client,
            answer_timeout: config.client.retry_layer().attempt_timeout_value(),
            tunnels: TaskTracker::new(),
            cut: CancellationToken::new(),
        })
    }

    /// Waits for every open tunnel to close (no new ones are counted after
    /// this begins: the listener is closed by then).
    pub(crate) async fn closed(&self) {
        self.tunnels.close();
        self.tunnels.wait().await;
    }

    /// Cuts every open tunnel (the drain timeout ran out).
    pub(crate) fn cut(&self) {
        self.cut.cancel();
    }
}

/// Forwards `req` from `peer`, a handshake asking for `protocol`; on `101`,
/// joins the two connections in a task that keeps `hold` (the caller
/// connection's count) until the tunnel closes.
pub(crate) async fn forward<H>(
    upgrades: Arc<Upgrades>,
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    peer: IpAddr,
    protocol: HeaderValue,
    hold: H,
) -> Response<ProxyBody>
where
    H: Send + 'static,
{
    let start = Instant::now();
    let caller = hyper::upgrade::on(&mut req);
    let (mut parts, body) = req.into_parts();
    let method = parts.method.clone();
    let original = parts.uri.clone();
    let sent_id = parts.headers.get(kneo::core::X_REQUEST_ID).cloned();
    if let Err(answer) = shared.retarget(&mut parts, Some(peer)) {
        return finish_problem(&shared, *answer, &method, &original, start);
    }
    keep_upgrade(&mut parts.headers, protocol);
    let sent = upgrades.client.request(Request::from_parts(parts, body));
    let answered = match upgrades.answer_timeout {
        Some(limit) => tokio::time::timeout(limit, sent).await,
        None => Ok(sent.await),
    };
    let mut res = match answered {
        Ok(Ok(res)) => res,
        failed => {
            let detail = match &failed {
                Ok(Err(e)) => chain(e),
                _ => "no answer within the attempt timeout".to_owned(),
            };
            let mut answer = ProblemAnswer::handshake_failed(failed.is_err(), &detail);
            answer.request_id = sent_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return finish_problem(&shared, answer, &method, &original, start);
        }
    };
    shared.health.mark_upstream_seen();
    let switched = res.status() == StatusCode::SWITCHING_PROTOCOLS;
    let accepted = res.headers().get(http::header::UPGRADE).cloned();
    if switched {
        let upstream = hyper::upgrade::on(&mut res);
        join(&upgrades, &shared, caller, upstream, hold);
    }
    let (mut parts, body) = res.into_parts();
    rewrite(
        &mut parts.headers,
        &Hop::Response {
            version: parts.version,
        },
    );
    if let (true, Some(accepted)) = (switched, accepted) {
        keep_upgrade(&mut parts.headers, accepted);
    }
    if let Some(sent) = &sent_id {
        parts
            .headers
            .entry(kneo::core::X_REQUEST_ID)
            .or_insert_with(|| sent.clone());
    }
    parts.version = Version::HTTP_11;
    record(
        &shared,
        &Exchange {
            request_id: sent_id.as_ref().and_then(|v| v.to_str().ok()),
            upstream_request_id: upstream_request_id(&parts.headers, sent_id.as_ref()),
            method: &method,
            path: original.path(),
            status: parts.status,
            attempts: 1,
            upstream_time: start.elapsed(),
            outcome: ExchangeOutcome::Upstream,
        },
    );
    Response::from_parts(parts, ProxyBody::upstream(UpstreamBody::plain(body)))
}

/// The tunnel: once both sides have switched, bytes both ways until either
/// side closes (the other is then shut for writing and drained), or until
/// the drain cuts it.
fn join<H: Send + 'static>(
    upgrades: &Upgrades,
    shared: &Shared,
    caller: OnUpgrade,
    upstream: OnUpgrade,
    hold: H,
) {
    let metrics = &shared.metrics;
    metrics.tunnels.inc();
    let open = Held::new(&metrics.tunnels_open);
    let cut = upgrades.cut.clone();
    upgrades.tunnels.spawn(async move {
        let _hold = hold;
        let _open = open;
        let joined = async {
            let (caller, upstream) = tokio::try_join!(caller, upstream)?;
            let (mut caller, mut upstream) = (TokioIo::new(caller), TokioIo::new(upstream));
            tokio::io::copy_bidirectional(&mut caller, &mut upstream).await?;
            Ok::<_, BoxError>(())
        };
        tokio::select! {
            ended = joined => if let Err(e) = ended {
                tracing::debug!(target: "kneo::proxy", "tunnel ended: {e}");
            },
            () = cut.cancelled() => {
                tracing::debug!(target: "kneo::proxy", "tunnel cut at the drain timeout");
            }
        }
    });
}

/// An error and its sources, `: `-joined (hyper's and the OS's words).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
