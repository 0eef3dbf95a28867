//! HTTP load on the release binary, run as its own process. Authenticated `GET /api/calls`
//! (newest 50) at 64 connections from 200 users in 20 organisations (a session each,
//! requests spread over them), with the session cache on (default) and off, each with the
//! service's and PostgreSQL's CPU per request; the same at a constant offered rate with
//! latency from the due time. Telnyx webhooks flat out, then a realistic mix (several event
//! types, duplicates, out of order) at a constant rate; then every event twice, shuffled,
//! with PostgreSQL restarted midway. A webhook lost or doubled fails the run (exit 1).
//! Baseline in the same run: `GET /healthz` through the same client. Writes
//! `http_load.json` (docs/BENCHMARKS.md). Needs PostgreSQL (`BENCH_DATABASE_URL`).
//!
//! To compare two builds of the service back to back with the same load generator,
//! `BENCH_SERVER_BIN` names the service binary to start instead of this build's, and
//! `BENCH_SERVER_ENV` (`NAME=value,NAME=value`) adds settings to the service's environment.
#![allow(clippy::disallowed_methods)] // tests and benchmarks read their own TEST_*/BENCH_* settings

mod common;

use common::measure::{self, PgMeter, ResultFile};
use common::{ChildGuard, ScratchDatabase, free_port};

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use callbridge::sim::telnyx::TelnyxSim;
use http_body_util::{BodyExt as _, Full};
use rand::seq::SliceRandom as _;

const CONNECTIONS: usize = 64;
/// Telnyx webhooks per second the service must absorb (issue 4).
const WEBHOOK_GOAL_RATE: f64 = 2_000.0;

struct Outcome {
    ok: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// Open loop only: how late the generator started each request after its due time.
    lags: Vec<Duration>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn quantile(&self, q: f64) -> Duration {
        quantile_of(&self.latencies, q)
    }

    /// The figures of the result file, in ms and per second.
    fn figures(&self) -> serde_json::Value {
        serde_json::json!({
            "requests_per_second": self.rate(),
            "ok": self.ok,
            "errors": self.errors,
            "p50_ms": self.quantile(0.5).as_secs_f64() * 1e3,
            "p99_ms": self.quantile(0.99).as_secs_f64() * 1e3,
            "generator_lag_p99_ms": quantile_of(&self.lags, 0.99).as_secs_f64() * 1e3,
        })
    }
}

fn quantile_of(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// A request the load loop sends: method, path, headers, body.
type Req = hyper::Request<Full<Bytes>>;

/// One keep-alive HTTP/1.1 connection of the load generator: raw hyper, not a pooled client
/// (the generator shares the two cores with the server and PostgreSQL, so it must be lean).
struct Connection {
    port: u16,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Connection {
    fn new(port: u16) -> Self {
        Self { port, sender: None }
    }

    /// Sends one request, (re)connecting first when needed; whether it was answered 2xx
    /// with its whole body. A failed connection is dropped, and the next send opens another.
    async fn send(&mut self, request: Req) -> bool {
        if self.sender.is_none() {
            self.sender = connect(self.port).await;
        }
        let Some(sender) = self.sender.as_mut() else {
            return false;
        };
        if sender.ready().await.is_err() {
            self.sender = None;
            return false;
        }
        match sender.send_request(request).await {
            Ok(response) => {
                let success = response.status().is_success();
                response.into_body().collect().await.is_ok() && success
            }
            Err(_) => {
                self.sender = None;
                false
            }
        }
    }
}

/// What one connection's task counted: answered, failed, latencies of the answered, lags.
type Tally = (usize, usize, Vec<Duration>, Vec<Duration>);

async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
    elapsed: impl Fn() -> Duration,
) -> Outcome {
    let mut outcome = Outcome {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        lags: Vec::new(),
    };
    for task in tasks {
        let (ok, errors, latencies, lags) = task.await.unwrap();
        outcome.ok += ok;
        outcome.errors += errors;
        outcome.latencies.extend(latencies);
        outcome.lags.extend(lags);
    }
    outcome.elapsed = elapsed();
    outcome
}

/// Closed loop: `CONNECTIONS` connections, each sending requests made by `make(i)` back to
/// back for `duration`.
async fn load<F>(port: u16, duration: Duration, make: F) -> Outcome
where
    F: Fn(usize) -> Req + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let counter = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks = (0..CONNECTIONS)
        .map(|_| {
            let (make, counter) = (make.clone(), counter.clone());
            tokio::spawn(async move {
                let (mut ok, mut errors, mut latencies) = (0, 0, Vec::new());
                let mut connection = Connection::new(port);
                while started.elapsed() < duration {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    if connection.send(make(i)).await {
                        ok += 1;
                        latencies.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (ok, errors, latencies, Vec::new())
            })
        })
        .collect();
    gather(tasks, || started.elapsed()).await
}

/// Open loop: request `i` is due at `start + i / rate`, whoever is free sends it, and its
/// latency counts from when it was due (a late send is the server's delay too, so queueing
/// is not hidden). How Telnyx delivers: at its own pace, not when we are ready.
async fn paced<F>(port: u16, rate: f64, duration: Duration, make: F) -> Outcome
where
    F: Fn(usize) -> Req + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let counter = Arc::new(AtomicUsize::new(0));
    let total = (rate * duration.as_secs_f64()) as usize;
    let started = tokio::time::Instant::now();
    let tasks = (0..CONNECTIONS)
        .map(|_| {
            let (make, counter) = (make.clone(), counter.clone());
            tokio::spawn(async move {
                let (mut ok, mut errors, mut latencies, mut lags) = (0, 0, Vec::new(), Vec::new());
                let mut connection = Connection::new(port);
                loop {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due).await;
                    lags.push(due.elapsed());
                    if connection.send(make(i)).await {
                        ok += 1;
                        latencies.push(due.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (ok, errors, latencies, lags)
            })
        })
        .collect();
    gather(tasks, || started.elapsed()).await
}

async fn connect(port: u16) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

fn get(path: &str, cookie: Option<&str>) -> Req {
    let mut request = hyper::Request::get(path).header("host", "127.0.0.1");
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.body(Full::default()).expect("a valid request")
}

/// The server process (killed when this is dropped) and its port.
struct Server {
    child: ChildGuard,
    port: u16,
}

/// The service on `cpu` when pinned; `extra` environment on top of the bench's own.
async fn start_server(
    database_url: &str,
    public_key: &str,
    cpu: Option<usize>,
    extra: &[(&str, &str)],
) -> Server {
    let port = free_port();
    let binary = std::env::var("BENCH_SERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_callbridge").to_owned());
    let settings = std::env::var("BENCH_SERVER_ENV").unwrap_or_default();
    let settings = settings
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.trim(), value.trim()));
    let child = measure::command_on(cpu, &binary)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs([
            ("APP_ENV", "development"),
            // Load generators: the per-session and per-IP request limits would throttle them.
            ("RATE_LIMIT_SESSION_PER_MIN", "0"),
            ("RATE_LIMIT_ANONYMOUS_PER_MIN", "0"),
            ("BIND_ADDRESS", "127.0.0.1"),
            ("PORT", &port.to_string()),
            ("DATABASE_URL", database_url),
            ("RUN_MIGRATIONS_ON_START", "true"),
            ("DATABASE_POOL_MAX_SIZE", "24"),
            ("DATABASE_POOL_TIMEOUT_MS", "5000"),
            ("R2_ENDPOINT", "http://127.0.0.1:9"),
            ("R2_CREATE_BUCKET", "false"),
            ("LOG_LEVEL", "error"),
            ("LOG_FORMAT", "json"),
            ("TELNYX_API_KEY", "bench"),
            ("TELNYX_PUBLIC_KEY", public_key),
            ("TELNYX_CONNECTION_ID", "bench"),
            ("TELNYX_API_BASE", "http://127.0.0.1:9/v2"),
        ])
        .envs(settings)
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the release binary starts");
    let server = Server {
        child: ChildGuard(child),
        port,
    };
    for _ in 0..300 {
        if reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server did not start");
}

/// Where the load generator runs when pinned; the service runs on `SERVICE_CPU`.
const GENERATOR_CPU: usize = 1;
const SERVICE_CPU: usize = 0;

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let pinned = measure::pinning() && measure::pin_self(GENERATOR_CPU);
    callbridge::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if !runtime.block_on(run(pinned)) {
        std::process::exit(1);
    }
}

fn signed(sim: &TelnyxSim, envelope: &serde_json::Value) -> (Vec<u8>, String, String) {
    let body = serde_json::to_vec(envelope).unwrap();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let signature = sim.sign(ts, &body);
    (body, ts.to_string(), signature)
}

async fn run(pinned: bool) -> bool {
    let scratch = ScratchDatabase::create().await;
    let url = scratch.url.clone();
    let sim = TelnyxSim::start("bench", 0).await.unwrap();
    let cpu = pinned.then_some(SERVICE_CPU);
    let server = start_server(url.as_str(), &sim.public_key_base64(), cpu, &[]).await;
    let base = format!("http://127.0.0.1:{}", server.port);
    let db = callbridge::db::connect_direct(url.as_str()).await.unwrap();
    let cookies = Arc::new(seed_users(&db).await);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap();
    let mut meter = PgMeter::new(url.as_str(), &scratch.name).await;
    let mut result = ResultFile::new("http_load");
    let mut failures = Vec::new();

    let window = Duration::from_secs(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let warm = Duration::from_secs(2);
    // The constant offered rate of the open-loop GET runs.
    let offered: f64 = std::env::var("BENCH_HTTP_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_000.0);

    let port = server.port;
    load(port, warm, |_| get("/healthz", None)).await;
    let baseline = measured(
        &server,
        &mut meter,
        load(port, window, |_| get("/healthz", None)),
    )
    .await;

    // Request i comes from user i mod 200: every session is in use all the time.
    let spread = |cookies: Arc<Vec<String>>| {
        move |i: usize| get("/api/calls", Some(&cookies[i % cookies.len()]))
    };
    let one = Arc::new(vec![cookies[0].clone()]);
    load(port, warm, spread(one.clone())).await;
    let one_session = measured(&server, &mut meter, load(port, window, spread(one))).await;
    load(port, warm, spread(cookies.clone())).await;
    let cached = measured(
        &server,
        &mut meter,
        load(port, window, spread(cookies.clone())),
    )
    .await;
    let cached_paced = measured(
        &server,
        &mut meter,
        paced(port, offered, window, spread(cookies.clone())),
    )
    .await;
    // Session cache off: every request resolves its session in PostgreSQL.
    let uncached_server = start_server(
        url.as_str(),
        &sim.public_key_base64(),
        cpu,
        &[("AUTH_SESSION_CACHE_TTL_SECS", "0")],
    )
    .await;
    let uport = uncached_server.port;
    load(uport, warm, spread(cookies.clone())).await;
    let uncached = measured(
        &uncached_server,
        &mut meter,
        load(uport, window, spread(cookies.clone())),
    )
    .await;
    let uncached_paced = measured(
        &uncached_server,
        &mut meter,
        paced(uport, offered, window, spread(cookies.clone())),
    )
    .await;
    drop(uncached_server);

    // Webhooks flat out: pre-signed unique events, so signing costs nothing inside the window.
    let sign_range = |range: std::ops::Range<usize>| -> Arc<Vec<(Bytes, String, String)>> {
        Arc::new(range.map(|i| {
            let (body, ts, sig) = signed(&sim, &sim.event("call.initiated", serde_json::json!({"call_control_id": format!("v3:bench-{i}"), "direction": "outgoing"})));
            (Bytes::from(body), ts, sig)
        }).collect())
    };
    let budget = 12_000 * window.as_secs() as usize;
    let events = sign_range(0..budget);
    let webhook = |events: Arc<Vec<(Bytes, String, String)>>| {
        move |i: usize| {
            let (body, ts, sig) = &events[i % events.len()];
            hyper::Request::post("/webhooks/telnyx")
                .header("host", "127.0.0.1")
                .header("content-type", "application/json")
                .header("telnyx-timestamp", ts)
                .header("telnyx-signature-ed25519", sig)
                .body(Full::new(body.clone()))
                .expect("a valid request")
        }
    };
    let webhooks = measured(&server, &mut meter, load(port, window, webhook(events))).await;
    let (stored, jobs) = inbox_and_jobs(&db).await;
    let expected = webhooks.outcome.ok.min(budget) as i64;
    if webhooks.outcome.errors > 0 || stored != expected || jobs != expected {
        failures.push(format!(
            "webhooks flat out: {} acknowledged ({} errors) → inbox {stored}, jobs {jobs}",
            webhooks.outcome.ok, webhooks.outcome.errors
        ));
    }

    // A realistic mix at a constant rate: five event types per call, one delivery in ten
    // repeated a little later (Telnyx retries), each call's events out of order.
    db.batch_execute("truncate webhook_inbox; truncate jobs")
        .await
        .unwrap();
    let (mix, unique) = webhook_mix(&sim, (WEBHOOK_GOAL_RATE * window.as_secs_f64()) as usize);
    let mix_len = mix.len();
    let at_goal = measured(
        &server,
        &mut meter,
        paced(port, WEBHOOK_GOAL_RATE, window, webhook(Arc::new(mix))),
    )
    .await;
    let (mix_stored, mix_jobs) = inbox_and_jobs(&db).await;
    if at_goal.outcome.errors > 0 || mix_stored != unique as i64 || mix_jobs != unique as i64 {
        failures.push(format!(
            "webhook mix: {mix_len} deliveries of {unique} events, {} errors → inbox {mix_stored}, jobs {mix_jobs}",
            at_goal.outcome.errors
        ));
    }

    // Resilience: 3,000 events, each delivered twice, shuffled, Postgres restarted midway;
    // the sender re-delivers on any non-2xx like Telnyx does.
    db.batch_execute("truncate webhook_inbox; truncate jobs")
        .await
        .unwrap();
    let unique_resilience = 3_000;
    let mut deliveries: Vec<(Vec<u8>, String, String)> = (0..unique_resilience)
        .map(|i| {
            signed(
                &sim,
                &sim.event(
                    "call.answered",
                    serde_json::json!({"call_control_id": format!("v3:r-{i}")}),
                ),
            )
        })
        .collect();
    deliveries.extend(deliveries.clone());
    deliveries.shuffle(&mut rand::rng());
    let deliveries = Arc::new(deliveries);
    let next = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let restart = std::env::var("BENCH_RESTART_POSTGRES")
        .map(|v| v != "0")
        .unwrap_or(true)
        && Command::new("pg_ctlcluster")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
    let senders: Vec<_> = (0..16)
        .map(|_| {
            let (c, d, n, r) = (
                client.clone(),
                deliveries.clone(),
                next.clone(),
                retries.clone(),
            );
            let url = format!("{base}/webhooks/telnyx");
            tokio::spawn(async move {
                loop {
                    let i = n.fetch_add(1, Ordering::Relaxed);
                    let Some((body, ts, sig)) = d.get(i) else {
                        break;
                    };
                    loop {
                        let sent = c
                            .post(&url)
                            .header("content-type", "application/json")
                            .header("telnyx-timestamp", ts)
                            .header("telnyx-signature-ed25519", sig)
                            .body(body.clone())
                            .send()
                            .await;
                        if sent.is_ok_and(|r| r.status().is_success()) {
                            break;
                        }
                        r.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();
    if restart {
        while next.load(Ordering::Relaxed) < deliveries.len() / 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let version = std::fs::read_dir("/etc/postgresql")
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .unwrap_or_default();
        let status = Command::new("pg_ctlcluster")
            .args([
                "--skip-systemctl-redirect",
                &version,
                "main",
                "restart",
                "-m",
                "fast",
            ])
            .status();
        println!(
            "(PostgreSQL restarted mid-run: {:?})",
            status.map(|s| s.success())
        );
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let db = callbridge::db::connect_direct(url.as_str()).await.unwrap();
    let (resilient_stored, resilient_jobs) = inbox_and_jobs(&db).await;
    let lost = unique_resilience as i64 - resilient_stored.min(unique_resilience as i64);
    let doubled = (resilient_stored - unique_resilience as i64).max(0);
    if lost > 0 || doubled > 0 || resilient_jobs != resilient_stored {
        failures.push(format!(
            "resilience: {unique_resilience} events × 2 → inbox {resilient_stored}, jobs {resilient_jobs}"
        ));
    }

    println!(
        "\nHTTP load, {CONNECTIONS} connections, {}s windows, {USERS} users in {ORGS} organisations; pinned: {pinned}\n",
        window.as_secs()
    );
    println!(
        "| scenario | ok req/s | errors | p50 | p99 | generator lag p99 | service CPU/req | PostgreSQL CPU/req | PG transactions/req |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let scenarios: [(&str, &str, &Measured); 8] = [
        ("healthz", "GET /healthz (baseline)", &baseline),
        (
            "calls_one_session",
            "GET /api/calls, 1 session (cache hit every time)",
            &one_session,
        ),
        (
            "calls_cached",
            "GET /api/calls, 200 sessions, cache on",
            &cached,
        ),
        (
            "calls_cached_paced",
            "GET /api/calls, 200 sessions, cache on, constant rate",
            &cached_paced,
        ),
        (
            "calls_uncached",
            "GET /api/calls, 200 sessions, cache off",
            &uncached,
        ),
        (
            "calls_uncached_paced",
            "GET /api/calls, 200 sessions, cache off, constant rate",
            &uncached_paced,
        ),
        (
            "webhooks_flat_out",
            "POST /webhooks/telnyx, unique events, flat out",
            &webhooks,
        ),
        (
            "webhooks_mix_paced",
            "POST /webhooks/telnyx, mix at 2,000/s (latency from due)",
            &at_goal,
        ),
    ];
    for (key, label, m) in scenarios {
        let o = &m.outcome;
        println!(
            "| {label} | {:.0} | {} | {:.2?} | {:.2?} | {:.2?} | {:.3} ms | {:.3} ms | {:.2} |",
            o.rate(),
            o.errors,
            o.quantile(0.5),
            o.quantile(0.99),
            quantile_of(&o.lags, 0.99),
            m.service_cpu_ms_per_request,
            m.postgres_cpu_ms_per_request,
            m.postgres_transactions_per_request
        );
        result.set(key, m.figures());
    }
    let per = |m: &Measured| {
        format!(
            "{:.0}/s, p99 {:.2} ms; CPU/req service {:.3} ms + PostgreSQL {:.3} ms; {:.2} PG transactions/req",
            m.outcome.rate(),
            m.outcome.quantile(0.99).as_secs_f64() * 1e3,
            m.service_cpu_ms_per_request,
            m.postgres_cpu_ms_per_request,
            m.postgres_transactions_per_request
        )
    };
    let floor = format!("GET /healthz {:.0}/s", baseline.outcome.rate());
    result.row(
        "GET /api/calls, 200 sessions, cache off, 64 connections",
        per(&uncached),
        floor.clone(),
        "≥ 5,000/s, p99 < 20 ms, PostgreSQL ≤ 0.15 ms/req",
    );
    result.row(
        "GET /api/calls, 200 sessions, cache on, 64 connections",
        per(&cached),
        floor.clone(),
        "≥ 7,000/s",
    );
    result.row(
        "GET /api/calls, 1 session (every request a cache hit)",
        per(&one_session),
        floor,
        "",
    );
    let paced_row = |m: &Measured| {
        format!(
            "{:.0}/s done, p99 {:.2} ms from due (generator lag p99 {:.2} ms)",
            m.outcome.rate(),
            m.outcome.quantile(0.99).as_secs_f64() * 1e3,
            quantile_of(&m.outcome.lags, 0.99).as_secs_f64() * 1e3
        )
    };
    result.row(
        &format!("GET /api/calls at {offered:.0}/s offered, cache off"),
        paced_row(&uncached_paced),
        String::new(),
        "p99 < 20 ms",
    );
    result.row(
        &format!("GET /api/calls at {offered:.0}/s offered, cache on"),
        paced_row(&cached_paced),
        String::new(),
        "p99 < 20 ms",
    );
    result.row(
        "POST /webhooks/telnyx, unique events, 64 connections flat out",
        per(&webhooks),
        String::new(),
        "≥ 2,000/s",
    );
    result.row(
        "POST /webhooks/telnyx, mix (5 types, 10% re-delivered, out of order) at 2,000/s",
        paced_row(&at_goal),
        String::new(),
        "ack p99 < 20 ms",
    );
    result.row(
        "webhooks lost / doubled (flat out, mix, resilience with PostgreSQL restart)",
        format!(
            "{} / {}",
            (expected - stored).max(0) + (unique as i64 - mix_stored).max(0) + lost,
            (stored - expected).max(0) + (mix_stored - unique as i64).max(0) + doubled
        ),
        String::new(),
        "0 / 0 (asserted)",
    );
    println!(
        "\nWebhooks flat out: {} acknowledged → inbox {stored}, jobs {jobs}. Mix: {mix_len} deliveries of {unique} events → inbox {mix_stored}, jobs {mix_jobs}.",
        webhooks.outcome.ok
    );
    println!(
        "Resilience: {unique_resilience} unique events × 2 deliveries, shuffled, {} re-deliveries after non-2xx, PostgreSQL restart: {restart} → inbox {resilient_stored}, jobs {resilient_jobs} (lost {lost}, doubled {doubled})",
        retries.load(Ordering::Relaxed),
    );
    result.set("connections", CONNECTIONS);
    result.set("window_seconds", window.as_secs());
    result.set("users", USERS);
    result.set("organisations", ORGS);
    result.set("offered_rate_get", offered);
    result.set("offered_rate_webhooks", WEBHOOK_GOAL_RATE);
    result.set(
        "pinning",
        if pinned {
            "load generator on CPU 1; service on CPU 0; PostgreSQL unpinned"
        } else {
            "none"
        },
    );
    result.set(
        "webhooks",
        serde_json::json!({
            "flat_out_acknowledged": webhooks.outcome.ok, "flat_out_inbox": stored, "flat_out_jobs": jobs,
            "mix_deliveries": mix_len, "mix_unique_events": unique, "mix_inbox": mix_stored, "mix_jobs": mix_jobs,
            "resilience_unique_events": unique_resilience, "resilience_redeliveries": retries.load(Ordering::Relaxed),
            "resilience_postgres_restarted": restart, "resilience_inbox": resilient_stored, "resilience_jobs": resilient_jobs,
            "resilience_lost": lost, "resilience_doubled": doubled,
        }),
    );
    for failure in &failures {
        eprintln!("INVARIANT BROKEN: {failure}");
    }
    result.write(failures.is_empty(), &failures);

    drop(server);
    drop(db);
    drop(meter);
    tokio::time::sleep(Duration::from_millis(300)).await;
    scratch.drop_now().await;
    failures.is_empty()
}

const USERS: usize = 200;
const ORGS: usize = 20;
const CALLS_PER_ORG: i32 = 200;

/// 200 users in 20 organisations, each with a session, a personal organisation (as the
/// service would create) and the shared organisation active; 200 calls per organisation.
/// Returns each user's session cookie.
async fn seed_users(db: &tokio_postgres::Client) -> Vec<String> {
    let mut organisations = Vec::new();
    for o in 0..ORGS {
        let org = uuid::Uuid::now_v7();
        db.execute(
            "insert into organisations (id, name) values ($1, $2)",
            &[&org, &format!("bench org {o}")],
        )
        .await
        .unwrap();
        db.execute(
            "insert into calls (id, organisation_id, direction, from_number, to_number, status, created_at)
             select gen_random_uuid(), $1, 'outbound', '+14155550100', '+14155550123', 'ended', now() - (g || ' seconds')::interval
             from generate_series(1, $2) g",
            &[&org, &CALLS_PER_ORG],
        )
        .await
        .unwrap();
        organisations.push(org);
    }
    let mut cookies = Vec::new();
    for u in 0..USERS {
        let user: i32 = db
            .query_one(
                "insert into authjs.users (name, email) values ($1, $2) returning id",
                &[&format!("Bench {u}"), &format!("bench{u}@example.com")],
            )
            .await
            .unwrap()
            .get(0);
        let user_id = user.to_string();
        let token = uuid::Uuid::new_v4().to_string();
        db.execute(r#"insert into authjs.sessions ("userId", expires, "sessionToken") values ($1, now() + interval '1 day', $2)"#, &[&user, &token]).await.unwrap();
        let personal = uuid::Uuid::now_v7();
        let shared = organisations[u % ORGS];
        db.batch_execute(&format!(
            "insert into organisations (id, name, personal_owner_id) values ('{personal}', 'Personal', '{user_id}');
             insert into memberships (organisation_id, user_id, role) values ('{personal}', '{user_id}', 'owner'), ('{shared}', '{user_id}', 'member');
             insert into user_settings (user_id, active_organisation_id) values ('{user_id}', '{shared}');"
        ))
        .await
        .unwrap();
        cookies.push(format!("authjs.session-token={token}"));
    }
    // Statistics, as autovacuum gathers within a minute on any live database. Without
    // them the planner's plan for a page (cached per connection for the whole run) is a
    // bitmap scan and sort of every call of the organisation, and the service re-reads
    // the relation's size on every request: a table no deployment ever has.
    db.batch_execute("analyze").await.unwrap();
    cookies
}

/// `deliveries` signed Telnyx deliveries shaped like real traffic: per call, five event
/// types; within each call the order is shuffled; one delivery in ten is repeated a few
/// places later. Returns the deliveries and the number of distinct events among them.
fn webhook_mix(sim: &TelnyxSim, deliveries: usize) -> (Vec<(Bytes, String, String)>, usize) {
    const TYPES: [&str; 5] = [
        "call.initiated",
        "call.answered",
        "streaming.started",
        "streaming.stopped",
        "call.hangup",
    ];
    let mut rng = rand::rng();
    let mut out: Vec<(Bytes, String, String)> = Vec::with_capacity(deliveries);
    let mut unique = 0;
    let mut call = 0;
    while out.len() < deliveries {
        let mut events: Vec<(Bytes, String, String)> = TYPES
            .iter()
            .map(|kind| {
                let (body, ts, sig) = signed(
                    sim,
                    &sim.event(
                        kind,
                        serde_json::json!({"call_control_id": format!("v3:mix-{call}"), "direction": "incoming"}),
                    ),
                );
                (Bytes::from(body), ts, sig)
            })
            .collect();
        events.shuffle(&mut rng);
        for event in events {
            if out.len() >= deliveries {
                break;
            }
            unique += 1;
            out.push(event.clone());
            if unique % 10 == 0 && out.len() < deliveries {
                let at = out
                    .len()
                    .saturating_sub(rand::Rng::random_range(&mut rng, 0..4usize));
                out.insert(at, event);
            }
        }
        call += 1;
    }
    (out, unique)
}

async fn inbox_and_jobs(db: &tokio_postgres::Client) -> (i64, i64) {
    let count = |sql: &'static str| async move {
        db.query_one(sql, &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(-1)
    };
    (
        count("select count(*) from webhook_inbox").await,
        count("select count(*) from jobs").await,
    )
}

/// A run with the CPU it cost the service and PostgreSQL.
struct Measured {
    outcome: Outcome,
    service_cpu_ms_per_request: f64,
    postgres_cpu_ms_per_request: f64,
    postgres_transactions_per_request: f64,
}

impl Measured {
    fn figures(&self) -> serde_json::Value {
        let mut figures = self.outcome.figures();
        figures["service_cpu_ms_per_request"] = self.service_cpu_ms_per_request.into();
        figures["postgres_cpu_ms_per_request"] = self.postgres_cpu_ms_per_request.into();
        figures["postgres_transactions_per_request"] =
            self.postgres_transactions_per_request.into();
        figures
    }
}

async fn measured(
    server: &Server,
    meter: &mut PgMeter,
    run: impl Future<Output = Outcome>,
) -> Measured {
    let pid = server.child.0.id();
    let before = measure::cpu_seconds(pid);
    meter.start().await;
    let outcome = run.await;
    let service = measure::cpu_seconds(pid) - before;
    let pg = meter.stop().await;
    let requests = outcome.ok.max(1) as f64;
    Measured {
        service_cpu_ms_per_request: service * 1e3 / requests,
        postgres_cpu_ms_per_request: pg.cpu_seconds * 1e3 / requests,
        postgres_transactions_per_request: pg.transactions as f64 / requests,
        outcome,
    }
}
