//! `kneo proxy` against nginx and against no proxy at all, side by side,
//! on loopback: the same upstream, the same load generator.
//!
//! ```text
//! cargo build --release -p kneo-cli
//! cargo bench -p kneo-proxy --bench proxy
//! ```
//!
//! The upstream is a hyper server answering `200` with a 64-byte body. The
//! load generator keeps `BENCH_CONNS` (64) HTTP/1.1 connections busy for
//! `BENCH_SECS` (10) seconds after a 1 s warm-up, one request at a time per
//! connection, and reports requests/s, p50 and p99. Everything runs on this
//! machine's loopback interface and stops by itself.
//!
//! - `kneo`: the release `kneo` binary next to this bench (or `KNEO_BIN`),
//!   `kneo proxy` with its defaults (one worker per CPU), then with
//!   `--workers 1`; access log to /dev/null.
//! - With `wrk` installed (Debian's package), every target is measured a
//!   second time by `wrk -t1 -cBENCH_CONNS --latency`, as nginx users
//!   measure.
//! - `nginx`: Debian's, started here with its own config in a temp dir:
//!   `worker_processes 2`, `proxy_pass` to an upstream block with
//!   `keepalive 64`, access log to /dev/null. Skipped, with a note, when
//!   `nginx` is not installed.
//! - The proxy's peak RSS is `VmHWM` from `/proc/PID/status` (nginx: master
//!   and workers summed).
//! - The proxy's CPU time per request, user and system, from
//!   `/proc/PID/stat` over the hyper load's run, warm-up included (nginx:
//!   master and workers summed): what the proxy itself costs, whatever the
//!   load generator and the upstream took of the shared cores.
//! - With valgrind installed, the instructions per proxied request under
//!   callgrind, of `kneo proxy --workers 1` and of nginx (one process,
//!   `master_process off`): the difference between a run of 1,200 requests
//!   and one of 200 (startup cancels out), over 1,000.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

const BODY: &[u8; 64] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo test --benches` runs this with no `--bench`: build-check only.
    if !std::env::args().any(|a| a == "--bench") {
        println!("proxy bench: run it with `cargo bench -p kneo-proxy --bench proxy`");
        return;
    }
    let secs = env_or("BENCH_SECS", 10).clamp(1, 120);
    let conns = env_or("BENCH_CONNS", 64).clamp(1, 512) as usize;

    let upstream = start_upstream();
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("load runtime");
    let tmp = std::env::temp_dir().join(format!("kneo-proxy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");

    println!(
        "proxy bench: {conns} connections, {secs} s per target after 1 s warm-up, upstream {upstream}"
    );
    // BENCH_ONLY=callgrind skips the load runs.
    let load_runs = std::env::var("BENCH_ONLY").map_or(true, |v| v != "callgrind");
    let wrk = which("wrk");
    if load_runs && wrk.is_none() {
        println!("wrk is not installed (apt-get install -y wrk); the hyper load generator only");
    }
    let mut rows = Vec::new();
    if load_runs {
        let direct = load.block_on(run_load(upstream, conns, secs));
        let by_wrk = wrk
            .as_deref()
            .and_then(|wrk| run_wrk(wrk, upstream, conns, secs));
        rows.push(Row {
            name: "direct".to_owned(),
            stats: direct,
            by_wrk,
            rss: None,
            cpu: None,
        });
    }

    match kneo_bin() {
        Some(_) if !load_runs => {}
        Some(bin) => {
            // Thread-per-core with one worker per CPU (the default), and one.
            for workers in [None, Some("1")] {
                let port = free_port();
                let mut command = Command::new(&bin);
                command
                    .args(["proxy", "--upstream", &format!("http://{upstream}")])
                    .args(["--listen", &format!("127.0.0.1:{port}")]);
                if let Some(n) = workers {
                    command.args(["--workers", n]);
                }
                let child = command
                    .env_remove("KNEO_PROXY_WORKERS")
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("spawn kneo proxy");
                let mut child = Guard(child);
                let addr = wait_listening(port);
                let pids = [child.0.id()];
                let (stats, cpu) = measured(&pids, || load.block_on(run_load(addr, conns, secs)));
                let by_wrk = wrk.as_deref().and_then(|wrk| run_wrk(wrk, addr, conns, secs));
                let rss = vm_hwm(child.0.id());
                let name = match workers {
                    None => "kneo proxy".to_owned(),
                    Some(n) => format!("kneo proxy --workers {n}"),
                };
                rows.push(Row {
                    name,
                    stats,
                    by_wrk,
                    rss,
                    cpu,
                });
                terminate(&mut child.0);
            }
        }
        None => println!(
            "kneo binary not found: build it with `cargo build --release -p kneo-cli` (or set KNEO_BIN); skipping kneo"
        ),
    }

    if !load_runs {
    } else if which("nginx").is_some() {
        let port = free_port();
        let child = start_nginx(&tmp, upstream, port);
        let mut child = Guard(child);
        let addr = wait_listening(port);
        let pids = nginx_pids(child.0.id());
        let (stats, cpu) = measured(&pids, || load.block_on(run_load(addr, conns, secs)));
        let by_wrk = wrk
            .as_deref()
            .and_then(|wrk| run_wrk(wrk, addr, conns, secs));
        let rss = nginx_rss(child.0.id());
        rows.push(Row {
            name: "nginx".to_owned(),
            stats,
            by_wrk,
            rss,
            cpu,
        });
        terminate(&mut child.0);
    } else {
        println!("nginx is not installed (apt-get install -y nginx); skipping nginx");
    }

    println!();
    println!(
        "| target | requests/s | p50 | p99 | errors | wrk requests/s | wrk p99 | proxy peak RSS | proxy CPU a request (user + sys) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let s = &row.stats;
        println!(
            "| {} | {:.0} | {:.0} µs | {:.0} µs | {} | {} | {} | {} | {} |",
            row.name,
            s.rps,
            s.p50_us,
            s.p99_us,
            s.errors,
            row.by_wrk
                .as_ref()
                .map_or("-".to_owned(), |w| format!("{:.0}", w.rps)),
            row.by_wrk
                .as_ref()
                .map_or("-".to_owned(), |w| format!("{:.0} µs", w.p99_us)),
            row.rss.map_or("-".to_owned(), |kb| format!(
                "{:.1} MiB",
                kb as f64 / 1024.0
            )),
            row.cpu.as_ref().map_or("-".to_owned(), |c| format!(
                "{:.1} + {:.1} µs",
                c.user_us, c.sys_us
            )),
        );
    }

    if which("valgrind").is_none() {
        println!("\nvalgrind is not installed; no instruction count");
    } else {
        if let Some(bin) = kneo_bin() {
            let kneo = |port: u16| {
                let mut command = Command::new(&bin);
                command
                    .args(["proxy", "--upstream", &format!("http://{upstream}")])
                    .args(["--listen", &format!("127.0.0.1:{port}"), "--workers", "1"]);
                command
            };
            instructions("kneo proxy --workers 1", &tmp, &load, kneo);
        }
        if which("nginx").is_some() {
            let nginx = |port: u16| nginx_command(&tmp, upstream, port, Nginx::Callgrind);
            instructions("nginx, one process", &tmp, &load, nginx);
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// One target's figures.
struct Row {
    name: String,
    stats: Stats,
    by_wrk: Option<WrkStats>,
    /// Peak RSS, KiB.
    rss: Option<u64>,
    cpu: Option<Cpu>,
}

/// CPU time a request, in µs.
struct Cpu {
    user_us: f64,
    sys_us: f64,
}

/// Runs `load` and the CPU time `pids` spent meanwhile, a request.
fn measured(pids: &[u32], load: impl FnOnce() -> Stats) -> (Stats, Option<Cpu>) {
    let before = cpu_ticks(pids);
    let stats = load();
    let after = cpu_ticks(pids);
    let cpu = before.zip(after).and_then(|((u0, s0), (u1, s1))| {
        // `/proc` counts in USER_HZ, 100 a second on Linux.
        let per = |ticks: u64| ticks as f64 * 10_000.0 / stats.answered as f64;
        (stats.answered > 0).then(|| Cpu {
            user_us: per(u1.saturating_sub(u0)),
            sys_us: per(s1.saturating_sub(s0)),
        })
    });
    (stats, cpu)
}

/// User and system CPU time of `pids` (every thread), in clock ticks.
fn cpu_ticks(pids: &[u32]) -> Option<(u64, u64)> {
    let mut total = (0, 0);
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command's closing parenthesis: state is the
        // first, utime and stime the 12th and 13th.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace().skip(11);
        total.0 += fields.next()?.parse::<u64>().ok()?;
        total.1 += fields.next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Prints the instructions per proxied request of the proxy `command`
/// starts on a port: callgrind over 1,200 and over 200 requests.
fn instructions(
    name: &str,
    tmp: &Path,
    load: &tokio::runtime::Runtime,
    command: impl Fn(u16) -> Command,
) {
    let few = callgrind(tmp, load, &command, 200);
    let many = callgrind(tmp, load, &command, 1200);
    match (few, many) {
        (Some(few), Some(many)) if many > few => println!(
            "\ncallgrind: {} instructions per proxied request ({name}, 1,200 vs 200 requests)",
            (many - few) / 1000,
        ),
        _ => println!("\ncallgrind: no usable totals for {name}"),
    }
}

/// Kills the child on drop (a panic mid-bench leaves nothing running).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGTERM, then wait for the exit.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `KNEO_BIN`, or the release `kneo` next to this bench's directory.
fn kneo_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("KNEO_BIN") {
        return Some(PathBuf::from(bin));
    }
    // target/release/deps/proxy-HASH -> target/release/kneo
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("kneo");
    bin.is_file().then_some(bin)
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_listening(port: u16) -> SocketAddr {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing listens on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    addr
}

/// The upstream: hyper on its own one-thread runtime, `200` and 64 bytes.
fn start_upstream() -> SocketAddr {
    let std_listener = StdListener::bind("127.0.0.1:0").expect("bind upstream");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("upstream runtime");
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).expect("tokio listener");
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    addr
}

struct Stats {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    /// Every request answered, warm-up included.
    answered: u64,
}

/// `conns` connections, each sending GETs one after another: 1 s of
/// warm-up, then `secs` measured.
async fn run_load(addr: SocketAddr, conns: usize, secs: u64) -> Stats {
    let warm = Instant::now() + Duration::from_secs(1);
    let end = warm + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(connection_loop(addr, warm, end)))
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut answered = 0;
    for task in tasks {
        let (l, e, a) = task.await.expect("load task");
        latencies.extend(l);
        errors += e;
        answered += a;
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default() as f64
    };
    Stats {
        rps: latencies.len() as f64 / secs as f64,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
        answered,
    }
}

/// One connection's requests: latencies in µs of those finished after
/// `warm`, errors, and how many were answered in all.
async fn connection_loop(addr: SocketAddr, warm: Instant, end: Instant) -> (Vec<u32>, u64, u64) {
    let mut latencies = Vec::with_capacity(100_000);
    let mut errors = 0;
    let mut answered = 0;
    'connect: while Instant::now() < end {
        let Ok(stream) = TcpStream::connect(addr).await else {
            errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
        else {
            errors += 1;
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < end {
            let req = Request::get("/bench")
                .header("host", "bench")
                .body(Empty::new())
                .expect("valid");
            let start = Instant::now();
            let ok = match sender.send_request(req).await {
                Ok(res) => res.status().is_success() && res.into_body().collect().await.is_ok(),
                Err(_) => false,
            };
            if !ok {
                errors += 1;
                continue 'connect;
            }
            answered += 1;
            if start >= warm {
                latencies.push(start.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            if sender.ready().await.is_err() {
                continue 'connect;
            }
        }
    }
    (latencies, errors, answered)
}

/// What `wrk` measured.
struct WrkStats {
    rps: f64,
    p99_us: f64,
}

/// `wrk -t1 -c CONNS -d SECS s --latency` against `addr` (after a 1 s
/// warm-up run), as nginx users measure; `None` when it fails.
fn run_wrk(wrk: &Path, addr: SocketAddr, conns: usize, secs: u64) -> Option<WrkStats> {
    let url = format!("http://{addr}/bench");
    let run = |secs: u64| {
        Command::new(wrk)
            .args([
                "-t1",
                &format!("-c{conns}"),
                &format!("-d{secs}s"),
                "--latency",
            ])
            .arg(&url)
            .stderr(Stdio::null())
            .output()
            .ok()
    };
    run(1)?;
    let out = run(secs)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| wrk_duration_us(v.trim()))?;
    Some(WrkStats { rps, p99_us: p99 })
}

/// `812.00us`, `3.90ms`, `1.02s` in µs.
fn wrk_duration_us(v: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// `VmHWM` of `pid`, in KiB.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// nginx's master and workers, summed.
fn nginx_rss(master: u32) -> Option<u64> {
    let mut total = vm_hwm(master)?;
    for child in nginx_pids(master).into_iter().skip(1) {
        total += vm_hwm(child).unwrap_or(0);
    }
    Some(total)
}

/// How nginx runs: as in production for the load, or as one process
/// that callgrind can follow.
#[derive(Clone, Copy)]
enum Nginx {
    Load,
    Callgrind,
}

/// nginx's children (its workers), after the master.
fn nginx_pids(master: u32) -> Vec<u32> {
    let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .unwrap_or_default();
    std::iter::once(master)
        .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
        .collect()
}

fn start_nginx(tmp: &Path, upstream: SocketAddr, port: u16) -> Child {
    nginx_command(tmp, upstream, port, Nginx::Load)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nginx")
}

/// nginx with its own config in `tmp`, proxying `port` to `upstream`.
fn nginx_command(tmp: &Path, upstream: SocketAddr, port: u16, how: Nginx) -> Command {
    let dir = tmp.join(format!("nginx-{port}"));
    std::fs::create_dir_all(dir.join("logs")).expect("nginx dir");
    let d = dir.display();
    let (workers, master) = match how {
        Nginx::Load => (2, "on"),
        Nginx::Callgrind => (1, "off"),
    };
    let conf = format!(
        r#"worker_processes {workers};
daemon off;
master_process {master};
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log /dev/null;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream up {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("write nginx.conf");
    let nginx = which("nginx").expect("nginx on PATH");
    let mut command = Command::new(nginx);
    command.arg("-p").arg(&dir).arg("-c").arg(&path);
    command
}

/// Total instructions of the proxy `command` starts, under callgrind,
/// serving `requests` requests one after another.
fn callgrind(
    tmp: &Path,
    load: &tokio::runtime::Runtime,
    command: &impl Fn(u16) -> Command,
    requests: usize,
) -> Option<u64> {
    let out = tmp.join(format!("callgrind.{requests}.out"));
    let port = free_port();
    let target = command(port);
    let child = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(target.get_program())
        .args(target.get_args())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut child = Guard(child);
    let addr = wait_listening(port);
    let served = load.block_on(async {
        let stream = match TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(e) => {
                println!("callgrind: connect failed: {e}");
                return None;
            }
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        for i in 0..requests {
            sender.ready().await.ok()?;
            let req = Request::get("/bench")
                .header("host", "bench")
                .body(Empty::new())
                .ok()?;
            let res = match sender.send_request(req).await {
                Ok(res) => res,
                Err(e) => {
                    println!("callgrind: request {i} failed: {e}");
                    return None;
                }
            };
            if let Err(e) = res.into_body().collect().await {
                println!("callgrind: body failed: {e}");
                return None;
            }
        }
        Some(())
    });
    terminate(&mut child.0);
    if served.is_none() {
        println!("callgrind: the {requests}-request run failed");
        return None;
    }
    let text = match std::fs::read_to_string(&out) {
        Ok(text) => text,
        Err(e) => {
            println!("callgrind: cannot read {}: {e}", out.display());
            return None;
        }
    };
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
