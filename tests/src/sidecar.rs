//! [`Sidecar`]: the real `kneo proxy` binary as a child process on
//! `127.0.0.1:0`, for the fault workloads (workload 4) and the proxy's
//! memory bound ([`proxy_rss`](crate::proxy_rss)).
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

/// A guard against a hang while the proxy starts, not a claim about speed.
const STARTUP_GUARD: Duration = Duration::from_secs(30);

/// A `kneo proxy` child process; killed when dropped.
#[derive(Debug)]
pub struct Sidecar {
    child: Child,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    log: Arc<AccessLog>,
}

/// What the proxy printed after its startup line.
#[derive(Debug, Default)]
struct AccessLog {
    lines: Mutex<Vec<String>>,
    /// Its standard output is closed (it exited).
    closed: AtomicBool,
}

impl Sidecar {
    /// `kneo proxy --upstream UPSTREAM --listen 127.0.0.1:0 ARGS` with the
    /// `kneo` binary at `kneo`, once it printed its startup line. Its
    /// standard output (one access-log line per request) is drained by a
    /// thread until it exits.
    pub async fn start(kneo: &Path, upstream: &str, args: &[&str]) -> Result<Sidecar, String> {
        Self::start_with_env(kneo, upstream, args, &[]).await
    }

    /// [`start`](Self::start), with `env` added to its environment
    /// (`SSL_CERT_FILE` for a test's CA, say).
    pub async fn start_with_env(
        kneo: &Path,
        upstream: &str,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Result<Sidecar, String> {
        let mut child = Command::new(kneo)
            .args(["proxy", "--upstream", upstream])
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", kneo.display()))?;
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
            }
            kept.closed.store(true, Ordering::Release);
        });
        let mut sidecar = Sidecar {
            child,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            log,
        };
        let first = match tokio::time::timeout(STARTUP_GUARD, first_rx).await {
            Ok(Ok(Some(Ok(line)))) => line,
            Ok(_) => return Err("kneo proxy exited before its startup line".to_owned()),
            Err(_) => return Err(format!("no startup line after {STARTUP_GUARD:?}")),
        };
        let startup: serde_json::Value = serde_json::from_str(&first)
            .map_err(|e| format!("the startup line is not JSON ({e}): {first}"))?;
        sidecar.listen = startup["listening"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("no `listening` address in the startup line: {first}"))?;
        sidecar.admin = startup["admin"].as_str().and_then(|a| a.parse().ok());
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

    /// Where it serves `/metrics` and the health checks, when started with
    /// `--admin`.
    pub fn admin(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Sends it SIGTERM (with `kill`), as an orchestrator stops it.
    pub fn terminate(&self) -> Result<(), String> {
        let pid = self.child.id().to_string();
        match Command::new("kill").args(["-TERM", &pid]).status() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("kill -TERM {pid}: {status}")),
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
