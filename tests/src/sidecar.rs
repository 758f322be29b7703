//! [`Sidecar`]: the real `kneo proxy` binary as a child process on
//! `127.0.0.1:0`, for the fault workloads (workload 4), the proxy's memory
//! bound ([`proxy_rss`](crate::proxy_rss)) and the black-box tests of
//! `kneo proxy`; and [`command`] with [`assert_refused`] for a command line
//! it must refuse.
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! use kneo_tests::sidecar::Sidecar;
//!
//! let proxy = Sidecar::start("target/debug/kneo".as_ref(), "http://127.0.0.1:9000", &[]).await?;
//! println!("kneo proxy (pid {}) on {}", proxy.pid(), proxy.addr());
//! # Ok(())
//! # }
//! ```

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tokio::sync::Notify;

use crate::guarded;
use crate::proxy_client::{self, Got};

/// A guard against a hang while the proxy starts, not a claim about speed.
const STARTUP_GUARD: Duration = Duration::from_secs(30);

/// `kneo proxy --listen 127.0.0.1:0 ARGS` with the `kneo` binary at `kneo`,
/// its standard input closed: the command line every [`Sidecar`] runs (with
/// `--upstream` among `ARGS`), for a test to add to (its environment, say)
/// before [`Sidecar::spawn`] or [`assert_refused`].
pub fn command(kneo: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(kneo);
    command
        .args(["proxy", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null());
    command
}

/// Runs `command` (a [`command`]) to its exit, and asserts that `kneo
/// proxy` refused it as a bad command line: exit 2, nothing on standard
/// output, one line on standard error (then, for an argument error, clap's
/// usage line) starting `error: `, and `secret` quoted nowhere. `case`
/// names the case in a failure.
pub async fn assert_refused(command: Command, case: &str, secret: &str) {
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let out = guarded("exit", command.output()).await.expect("ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{case}: {stderr}");
    assert!(out.stdout.is_empty(), "{case}: nothing on stdout");
    // One line, then (for an argument error) clap's usage line.
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.len() == 1
            || lines
                .get(2)
                .is_some_and(|l| l.starts_with("Usage: kneo proxy")),
        "{case}: {stderr:?}"
    );
    assert!(stderr.starts_with("error: "), "{case}: {stderr:?}");
    assert!(!stderr.contains(secret), "{case}: {stderr:?}");
}

/// A `kneo proxy` child process; killed when dropped.
#[derive(Debug)]
pub struct Sidecar {
    child: Child,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    startup: Value,
    log: Arc<AccessLog>,
    /// How many access-log lines [`next_log`](Self::next_log) returned.
    read: usize,
}

/// What the proxy printed after its startup line.
#[derive(Debug, Default)]
struct AccessLog {
    lines: Mutex<Vec<String>>,
    /// Its standard output is closed (it exited).
    closed: AtomicBool,
    /// Woken at each line, and once closed.
    changed: Notify,
}

impl Sidecar {
    /// `kneo proxy --upstream UPSTREAM --listen 127.0.0.1:0 ARGS` with the
    /// `kneo` binary at `kneo`, once it printed its startup line. Its
    /// standard output (one access-log line per request) is drained by a
    /// thread until it exits.
    pub async fn start(kneo: &Path, upstream: &str, args: &[&str]) -> Result<Sidecar, String> {
        Self::start_with_env(kneo, upstream, args, &[]).await
    }

    /// [`start`](Self::start) with `--admin 127.0.0.1:0` before `args`: its
    /// [`admin`](Self::admin) address serves `/metrics` and the health
    /// checks.
    pub async fn start_with_admin(
        kneo: &Path,
        upstream: &str,
        args: &[&str],
    ) -> Result<Sidecar, String> {
        let all = [&["--admin", "127.0.0.1:0"][..], args].concat();
        Self::start(kneo, upstream, &all).await
    }

    /// [`start`](Self::start), with `env` added to its environment
    /// (`SSL_CERT_FILE` for a test's CA, say).
    pub async fn start_with_env(
        kneo: &Path,
        upstream: &str,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Result<Sidecar, String> {
        let mut command = command(kneo, &[&["--upstream", upstream][..], args].concat());
        command.envs(env.iter().copied());
        Self::spawn(command).await
    }

    /// Runs `command` (a [`command`] with `--upstream`, which a test may
    /// have added to) once it printed its startup line; its standard error
    /// is the test's.
    pub async fn spawn(mut command: Command) -> Result<Sidecar, String> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", command.get_program().display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| "no standard output".to_owned())?;
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let log = Arc::new(AccessLog::default());
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = first_tx.send(first);
            // Keep draining, so access-log lines never fill the pipe.
            for line in lines {
                let Ok(line) = line else { break };
                kept.lines.lock().expect("not poisoned").push(line);
                kept.changed.notify_waiters();
            }
            kept.closed.store(true, Ordering::Release);
            kept.changed.notify_waiters();
        });
        let mut sidecar = Sidecar {
            child,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            startup: Value::Null,
            log,
            read: 0,
        };
        let first = match tokio::time::timeout(STARTUP_GUARD, first_rx).await {
            Ok(Ok(Some(Ok(line)))) => line,
            Ok(_) => return Err("kneo proxy exited before its startup line".to_owned()),
            Err(_) => return Err(format!("no startup line after {STARTUP_GUARD:?}")),
        };
        let startup: Value = serde_json::from_str(&first)
            .map_err(|e| format!("the startup line is not JSON ({e}): {first}"))?;
        sidecar.listen = startup["listening"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("no `listening` address in the startup line: {first}"))?;
        sidecar.admin = startup["admin"].as_str().and_then(|a| a.parse().ok());
        sidecar.startup = startup;
        Ok(sidecar)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where it serves callers.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// `http://ADDR` followed by `path`: a URL of [`addr`](Self::addr).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listen, path)
    }

    /// Where it serves `/metrics` and the health checks, when started with
    /// `--admin`.
    pub fn admin(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Its startup line, as printed.
    pub fn startup(&self) -> &Value {
        &self.startup
    }

    /// Sends it SIGTERM (with `kill`), as an orchestrator stops it.
    pub fn terminate(&self) -> Result<(), String> {
        self.signal("TERM")
    }

    /// Sends it the signal `name` (`TERM`, `INT`, …) with `kill`.
    pub fn signal(&self, name: &str) -> Result<(), String> {
        let pid = self.child.id().to_string();
        match Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
        {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("kill -{name} {pid}: {status}")),
            Err(e) => Err(format!("cannot run kill: {e}")),
        }
    }

    /// Its exit status, once it has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The access-log lines it printed so far (standard output after the
    /// startup line).
    pub fn access_log(&self) -> Vec<String> {
        self.log.lines.lock().expect("not poisoned").clone()
    }

    /// The next access-log line, as JSON: the first after those this
    /// returned before. Panics once it exited without one, or after
    /// [`GUARD`](crate::GUARD).
    pub async fn next_log(&mut self) -> Value {
        let n = self.read;
        let line = guarded(
            "an access-log line",
            self.wait_for_log(|lines| lines.get(n).cloned()),
        )
        .await
        .expect("kneo proxy is still printing");
        self.read += 1;
        serde_json::from_str(&line).expect("access-log lines are JSON")
    }

    /// The access-log line of the request whose `request_id` is `id`, as
    /// JSON, once it is written. Panics as [`next_log`](Self::next_log).
    pub async fn logged(&self, id: &str) -> Value {
        let find = |lines: &[String]| {
            lines
                .iter()
                .map(|l| serde_json::from_str::<Value>(l).expect("access-log lines are JSON"))
                .find(|l| l["request_id"] == id)
        };
        guarded(
            &format!("the access-log line of {id}"),
            self.wait_for_log(find),
        )
        .await
        .unwrap_or_else(|| panic!("kneo proxy exited without logging {id}"))
    }

    /// `found` of the access log, once it is something; `None` once the
    /// proxy exited without.
    async fn wait_for_log<T>(&self, mut found: impl FnMut(&[String]) -> Option<T>) -> Option<T> {
        loop {
            let changed = self.log.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // Closed is read first: every line was kept before it was set.
            let closed = self.log.closed.load(Ordering::Acquire);
            if let Some(found) = found(&self.log.lines.lock().expect("not poisoned")) {
                return Some(found);
            }
            if closed {
                return None;
            }
            changed.await;
        }
    }

    /// GET `path` on the [`admin`](Self::admin) listener (it panics without
    /// one): the status and the body.
    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let got = self.admin_send(path).await;
        (got.status, String::from_utf8_lossy(&got.body).into_owned())
    }

    /// Its `/metrics` (a 200, UTF-8).
    pub async fn metrics(&self) -> String {
        let got = self.admin_send("/metrics").await;
        assert_eq!(got.status, StatusCode::OK);
        String::from_utf8(got.body.to_vec()).expect("UTF-8")
    }

    /// The value of one `series` (`name` or `name{labels}`) in its
    /// [`metrics`](Self::metrics); 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().expect("a number"))
    }

    async fn admin_send(&self, path: &str) -> Got {
        let admin = self.admin.expect("kneo proxy started with --admin");
        let req = Request::get(format!("http://{admin}{path}"))
            .body(Full::<Bytes>::default())
            .expect("valid");
        proxy_client::send(req).await
    }

    /// Waits for it to exit and its standard output to be read to the end:
    /// its exit status. `guard` is a guard against a hang, not a claim.
    pub async fn exited(&mut self, guard: Duration) -> Result<ExitStatus, String> {
        let wait = async {
            loop {
                if let Some(status) = self.child.try_wait().ok().flatten() {
                    if self.log.closed.load(Ordering::Acquire) {
                        return status;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(guard, wait)
            .await
            .map_err(|_| format!("kneo proxy still running after {guard:?}"))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
