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

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` child process.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Durable servers: the directory of the append-only file.
    dir: Option<PathBuf>,
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
        let dir = std::env::temp_dir().join(format!(
            "kneo-redis-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory for redis");
        Self::start_in(Some(dir))
    }

    fn start_in(dir: Option<PathBuf>) -> Option<RedisServer> {
        if find_on_path("redis-server").is_none() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("redis-server not on PATH, and CI=true: the Redis tests must run in CI");
            }
            println!("skipped: redis-server not on PATH");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = RedisServer {
            port,
            child: None,
            dir,
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]);
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
            if self.try_command("PING").is_ok_and(|r| r == "PONG") {
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

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
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
