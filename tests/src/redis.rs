//! A real `redis-server` for tests: started on a free loopback port, with
//! persistence off (or, [durable](RedisServer::start_durable), an append-only
//! file fsynced on every write), stopped on drop.
//!
//! ```no_run
//! use kneo_tests::redis::RedisServer;
//!
//! let Some(mut redis) = RedisServer::start() else { return }; // skipped: not installed
//! let url = redis.url();
//! redis.stop();    // an outage...
//! redis.restart(); // ...and back, on the same port
//! # let _ = url;
//! ```
//!
//! Without `redis-server` on `PATH`, [`RedisServer::start`] prints
//! `skipped: redis-server not on PATH` and returns `None`; under `CI=true` it
//! panics instead, so CI never skips these tests silently.
//!
//! [`RedisServer::start_tls`] starts one as managed Redis services run: TLS
//! only (no plain port), with certificates made for the test by `openssl`
//! (a CA, and a server certificate for `127.0.0.1` and `localhost`), and
//! only an ACL user ([`TLS_USER`] with [`TLS_PASSWORD`]; `default` is off):
//!
//! ```no_run
//! use kneo_tests::redis::RedisServer;
//!
//! let Some(redis) = RedisServer::start_tls() else { return }; // skipped
//! let url = redis.url(); // rediss://kneo:s3cret@127.0.0.1:PORT/
//! let ca = redis.ca_pem().expect("a TLS server has a CA");
//! # let _ = (url, ca);
//! ```

use crate::tls::Tls;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The ACL user of a [TLS server](RedisServer::start_tls).
pub const TLS_USER: &str = "kneo";
/// The password of [`TLS_USER`].
pub const TLS_PASSWORD: &str = "s3cret";

/// A running `redis-server` child process.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Durable servers: the directory of the append-only file.
    dir: Option<PathBuf>,
    /// TLS servers: their certificates.
    tls: Option<Tls>,
}

/// `true` when `name` is on `PATH`; otherwise `false` after printing why the
/// test is skipped, or a panic under `CI=true`.
fn installed(name: &str) -> bool {
    if find_on_path(name).is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{name} not on PATH, and CI=true: the Redis tests must run in CI");
    }
    println!("skipped: {name} not on PATH");
    false
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kneo-{what}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory for redis");
    dir
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

impl RedisServer {
    /// Starts a server, or `None` (with a printed reason) when `redis-server`
    /// is not installed. Panics under `CI=true` when it is not.
    pub fn start() -> Option<RedisServer> {
        Self::start_in(None)
    }

    /// Starts a durable server: an append-only file fsynced on every write
    /// (`appendfsync always`) in a fresh temporary directory, so a
    /// [`restart`](Self::restart), even after a kill, comes back with every
    /// write it acknowledged. What a fleet relying on Redis for idempotency
    /// runs: a restart that forgets claims and records would run retries again.
    pub fn start_durable() -> Option<RedisServer> {
        Self::start_in(Some(temp_dir("redis")))
    }

    /// Starts a server as managed Redis runs: TLS only (`--port 0`), a
    /// certificate signed by a CA made for it ([`ca_pem`](Self::ca_pem)), and
    /// one ACL user, [`TLS_USER`] with [`TLS_PASSWORD`] (`default` is off). Its
    /// [`url`](Self::url) is `rediss://kneo:s3cret@127.0.0.1:PORT/`. `None`
    /// (with a printed reason) without `redis-server` or `openssl`; a panic
    /// under `CI=true`. [`command`](Self::command) is not available on it.
    pub fn start_tls() -> Option<RedisServer> {
        Self::start_tls_with(false)
    }

    /// [`start_tls`](Self::start_tls), and the server also requires a client
    /// certificate signed by its CA (`--tls-auth-clients yes`): see
    /// [`client_certificate`](Self::client_certificate).
    pub fn start_tls_mutual() -> Option<RedisServer> {
        Self::start_tls_with(true)
    }

    fn start_tls_with(mutual: bool) -> Option<RedisServer> {
        if !installed("redis-server") || !installed("openssl") {
            return None;
        }
        Some(Self::launch(None, Some(Tls::generate(mutual))))
    }

    fn start_in(dir: Option<PathBuf>) -> Option<RedisServer> {
        if !installed("redis-server") {
            return None;
        }
        Some(Self::launch(dir, None))
    }

    fn launch(dir: Option<PathBuf>, tls: Option<Tls>) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = RedisServer {
            port,
            child: None,
            dir,
            tls,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(tls) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(tls.dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(tls.dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(tls.dir.join("ca.pem"))
                .args([
                    "--tls-auth-clients",
                    if tls.client.is_some() { "yes" } else { "no" },
                ])
                .args(["--user", TLS_USER, "on", &format!(">{TLS_PASSWORD}")])
                .args(["~*", "&*", "+@all", "--user", "default", "off"]),
        };
        match &self.dir {
            Some(dir) => command
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ])
                .arg("--dir")
                .arg(dir),
            None => command.args(["--save", "", "--appendonly", "no"]),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            // A TLS server's plain `PING` would need a TLS client: it is up
            // once its port accepts connections.
            let up = match self.tls {
                None => self.try_command("PING").is_ok_and(|r| r == "PONG"),
                Some(_) => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            };
            if up {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis://127.0.0.1:PORT/`; for a [TLS server](Self::start_tls),
    /// `rediss://kneo:s3cret@127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}/", self.port),
            Some(_) => format!(
                "rediss://{TLS_USER}:{TLS_PASSWORD}@127.0.0.1:{}/",
                self.port
            ),
        }
    }

    /// A TLS server's CA certificate (PEM), which signed its certificate.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.tls.as_ref().map(|tls| tls.ca_pem.as_slice())
    }

    /// The file of [`ca_pem`](Self::ca_pem), for what reads a CA from a file
    /// (`SSL_CERT_FILE`, `redis-cli --cacert`).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|tls| tls.dir.join("ca.pem"))
    }

    /// A [mutual TLS](Self::start_tls_mutual) server's client certificate
    /// and key (PEM), signed by its CA.
    pub fn client_certificate(&self) -> Option<(&[u8], &[u8])> {
        let (chain, key) = self.tls.as_ref()?.client.as_ref()?;
        Some((chain, key))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (an outage); [`restart`](Self::restart) brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (if running) and starts again on the same port: empty, or for a
    /// [durable](Self::start_durable) server with what it had.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Sends one inline command and returns the reply as text (a simple
    /// string, an integer, or a bulk string).
    pub fn command(&self, command: &str) -> String {
        self.try_command(command)
            .unwrap_or_else(|e| panic!("redis command {command:?}: {e}"))
    }

    fn try_command(&self, command: &str) -> std::io::Result<String> {
        assert!(
            self.tls.is_none(),
            "RedisServer::command speaks plain RESP, not TLS"
        );
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("{command}\r\n").as_bytes())?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        let bad = |what: &str| std::io::Error::other(format!("{what}: {line:?}"));
        match line.as_bytes().first() {
            Some(b'+' | b':') => Ok(line[1..].to_owned()),
            Some(b'$') => {
                let len: usize = line[1..].parse().map_err(|_| bad("bulk length"))?;
                let mut buf = vec![0; len + 2];
                reader.read_exact(&mut buf)?;
                buf.truncate(len);
                String::from_utf8(buf).map_err(|_| bad("bulk text"))
            }
            _ => Err(bad("unexpected reply")),
        }
    }

    /// `CONFIG RESETSTAT`: zeroes the command statistics.
    pub fn reset_stats(&self) {
        assert_eq!(self.command("CONFIG RESETSTAT"), "OK");
    }

    /// Calls per command from `INFO commandstats` (lowercase names, such as
    /// `set`, `evalsha`, `config|resetstat`), without the `INFO` calls.
    pub fn command_calls(&self) -> BTreeMap<String, u64> {
        let info = self.command("INFO commandstats");
        info.lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = stats.split(',').find_map(|f| f.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .filter(|(name, _)| name != "info")
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
