//! A real Postgres for tests: `initdb` into a temporary directory (once per
//! test process, then copied for each server), `postgres` on a free
//! loopback port, stopped and removed on drop.
//!
//! ```no_run
//! use kneo_tests::postgres::PostgresServer;
//!
//! let Some(pg) = PostgresServer::start() else { return }; // skipped: not installed
//! let url = pg.url(); // postgres://postgres@127.0.0.1:PORT/postgres
//! # let _ = url;
//! ```
//!
//! Also kneo-server's Postgres bench's server (a dev-dependency there), with
//! `pg_stat_statements` preloaded through [`PostgresServer::start_with`].
//!
//! The server refuses to run as root, so as root (CI) `initdb` and
//! `postgres` run as the `postgres` user (through `setpriv`, which execs, so
//! the child is the server itself). The binaries are found on `PATH` or in
//! Debian's `/usr/lib/postgresql/*/bin`. Without them, [`PostgresServer::start`]
//! prints `skipped: …` and returns `None`; under `CI=true` it panics, so CI
//! never skips these tests silently.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running `postgres` child process and its data directory.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    dir: PathBuf,
    child: Child,
}

/// Where `initdb` and `postgres` are.
fn bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
    });
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` as a command, run as the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--clear-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kneo-pg-{what}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory for postgres");
    if is_root() {
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
        assert!(
            chown.is_ok_and(|s| s.success()),
            "chown {} to postgres",
            dir.display()
        );
    }
    dir
}

/// A data directory made by `initdb`, shared by every test process as a
/// cache (each server starts from a copy): one per Postgres installation,
/// `kneo-pg-template-<bin dir>` in the temp directory, made once and kept,
/// rather than one per process left behind.
fn template(bin: &Path) -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let name: String = bin
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let cached = std::env::temp_dir().join(format!("kneo-pg-template{name}"));
        let data = cached.join("data");
        if data.join("PG_VERSION").is_file() {
            return data;
        }
        let dir = scratch("template");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Another process may have made it meanwhile: the first rename wins,
        // and a loser's copy is removed.
        if std::fs::rename(&dir, &cached).is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        assert!(
            data.join("PG_VERSION").is_file(),
            "the template cluster at {}",
            data.display()
        );
        data
    })
}

/// Where `initdb` and `postgres` are, or `None` (with a printed reason)
/// when Postgres is not installed. Panics under `CI=true` when it is not.
fn installed() -> Option<PathBuf> {
    let bin = bin_dir();
    if bin.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("initdb/postgres not found (PATH, /usr/lib/postgresql/*/bin), and CI=true: the Postgres tests must run in CI");
        }
        println!("skipped: initdb/postgres not found on PATH or in /usr/lib/postgresql/*/bin");
    }
    bin
}

impl PostgresServer {
    /// Starts a server, or `None` (with a printed reason) when Postgres is
    /// not installed. Panics under `CI=true` when it is not.
    pub fn start() -> Option<PostgresServer> {
        let bin = installed()?;
        Some(Self::launch(&bin, &[]).unwrap_or_else(|why| panic!("{why}")))
    }

    /// Starts a server with more `postgres -c` settings, such as
    /// `"shared_preload_libraries=pg_stat_statements"`: `Ok(None)` when
    /// Postgres is not installed (as [`start`](Self::start)), `Err` with the
    /// reason when the server exits before it is ready (a library that is not
    /// installed, a setting it refuses).
    pub fn start_with(settings: &[&str]) -> Result<Option<PostgresServer>, String> {
        match installed() {
            Some(bin) => Self::launch(&bin, settings).map(Some),
            None => Ok(None),
        }
    }

    /// A server from a copy of the template cluster, on a free port.
    fn launch(bin: &Path, settings: &[&str]) -> Result<PostgresServer, String> {
        let template = template(bin);
        let dir = scratch("server");
        let data = dir.join("data");
        let copy = Command::new("cp")
            .arg("-a")
            .arg(template)
            .arg(&data)
            .status();
        assert!(copy.is_ok_and(|s| s.success()), "copy the template cluster");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut command = as_postgres(&bin.join("postgres"));
        command
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ]);
        for setting in settings {
            command.args(["-c", setting]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        // Dropped (stopped, its directory removed) when it does not get ready.
        let mut server = PostgresServer { port, dir, child };
        server.wait_ready(&data)?;
        Ok(server)
    }

    /// Waits until `postmaster.pid` says the server accepts connections;
    /// why not when it exits first or 30 s pass.
    fn wait_ready(&mut self, data: &Path) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let status = std::fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
            if status.lines().nth(7).is_some_and(|l| l.trim() == "ready") {
                return Ok(());
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                return Err(format!(
                    "postgres on port {} exited before it was ready: {exit}",
                    self.port
                ));
            }
            if started.elapsed() >= Duration::from_secs(30) {
                return Err(format!(
                    "postgres on port {} did not become ready",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // SIGINT is Postgres' fast shutdown: clients cut, shared memory freed.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
