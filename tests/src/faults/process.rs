//! [`ServerProcess`]: the `fault_server` binary, a
//! [`FaultServer`](super::FaultServer) on a shared `RedisStore` in a process
//! of its own, killable mid-handler. (Workload 4's `kneo proxy` is
//! [`Sidecar`](crate::sidecar::Sidecar).)

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::Mutex;

use super::server::{Effects, Stall};

/// How long a child has to print its address.
const STARTUP: Duration = Duration::from_secs(20);

/// Spawns `command` with piped stdout (killed on drop) and returns it with
/// its stdout's lines.
fn spawn(mut command: Command, what: &str) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let stdout = child.stdout.take().expect("invariant: stdout is piped");
    (child, BufReader::new(stdout).lines())
}

async fn first_line(lines: &mut Lines<BufReader<ChildStdout>>, what: &str) -> String {
    match tokio::time::timeout(STARTUP, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        Ok(_) => panic!("{what} exited before printing its address"),
        Err(_) => panic!("{what} printed nothing in {STARTUP:?}"),
    }
}

/// One `fault_server` process: axum behind kneo-server's `IdempotencyLayer`
/// on a `RedisStore`. Its effects (journal lines on its stdout) are recorded
/// into the workload's [`Effects`] as they are printed, so they outlive the
/// process. With a [`Stall`], the instance that gets the stalled request
/// first is killed (`SIGKILL`) once it says it entered the handler.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    addr: SocketAddr,
    child: Arc<Mutex<Child>>,
    killed: Arc<AtomicBool>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // The journal reader holds the child too, until its stdout ends:
        // kill it here, or it outlives the workload.
        if let Ok(mut child) = self.child.try_lock() {
            let _ = child.start_kill();
        }
    }
}

impl ServerProcess {
    /// Starts `bin` (the `fault_server` binary) as instance `name`.
    pub async fn start(
        bin: &Path,
        name: &str,
        redis_url: &str,
        lease: Duration,
        stall: Option<&Stall>,
        effects: Arc<Effects>,
    ) -> ServerProcess {
        let mut command = Command::new(bin);
        command
            .args(["--redis", redis_url])
            .args(["--lease-ms", &lease.as_millis().to_string()]);
        if let Some(stall) = stall {
            command
                .args(["--stall-id", &stall.id.to_string()])
                .arg("--stall-marker")
                .arg(&stall.marker);
        }
        let what = format!("fault_server {name}");
        let (child, mut lines) = spawn(command, &what);
        let first = first_line(&mut lines, &what).await;
        let addr = first
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{what}: unexpected first line {first:?}"));
        let child = Arc::new(Mutex::new(child));
        let killed = Arc::new(AtomicBool::new(false));
        let (task_child, task_killed, task_name) = (child.clone(), killed.clone(), name.to_owned());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut words = line.split(' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("effect"), Some(id), Some(key)) => {
                        let id = id.parse().expect("fault_server journals numeric ids");
                        let key = (key != "-").then_some(key);
                        effects.record_from(&task_name, id, key);
                    }
                    (Some("unavailable"), None, None) => effects.add_unavailable(),
                    (Some("entered"), Some(_), None) => {
                        // Mid-handler, before the effect: kill the process.
                        task_killed.store(true, Ordering::SeqCst);
                        let _ = task_child.lock().await.start_kill();
                    }
                    _ => eprintln!("fault_server {task_name}: {line}"),
                }
            }
        });
        ServerProcess {
            name: name.to_owned(),
            addr,
            child,
            killed,
        }
    }

    /// The instance's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it was killed mid-handler.
    pub fn was_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}
