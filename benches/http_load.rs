//! HTTP load on the release binary, run as its own process: Telnyx webhooks (verified +
//! stored + deduplicated) per second and ack p99, and authenticated `GET /api/calls`
//! (newest 50) at 64 connections. Baseline in the same run: `GET /healthz` through the same
//! client (the HTTP ceiling of this machine with client, server and Postgres sharing it).
//! Then a resilience phase: every event twice, shuffled, with PostgreSQL restarted midway;
//! zero lost, zero doubled. Needs PostgreSQL (`BENCH_DATABASE_URL`).
#![allow(clippy::disallowed_methods)] // tests and benchmarks read their own TEST_*/BENCH_* settings

mod common;

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
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }
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

/// What one connection's task counted: answered, failed, latencies of the answered.
type Tally = (usize, usize, Vec<Duration>);

async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
    elapsed: impl Fn() -> Duration,
) -> Outcome {
    let mut outcome = Outcome {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for task in tasks {
        let (ok, errors, latencies) = task.await.unwrap();
        outcome.ok += ok;
        outcome.errors += errors;
        outcome.latencies.extend(latencies);
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
                (ok, errors, latencies)
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
                let (mut ok, mut errors, mut latencies) = (0, 0, Vec::new());
                let mut connection = Connection::new(port);
                loop {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due).await;
                    if connection.send(make(i)).await {
                        ok += 1;
                        latencies.push(due.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (ok, errors, latencies)
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
    _child: ChildGuard,
    port: u16,
}

async fn start_server(database_url: &str, public_key: &str) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_callbridge"))
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
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the release binary starts");
    let server = Server {
        _child: ChildGuard(child),
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

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    callbridge::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
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

async fn run() {
    let scratch = ScratchDatabase::create().await;
    let url = scratch.url.clone();
    let sim = TelnyxSim::start("bench", 0).await.unwrap();
    let server = start_server(url.as_str(), &sim.public_key_base64()).await;
    let base = format!("http://127.0.0.1:{}", server.port);
    let db = callbridge::db::connect_direct(url.as_str()).await.unwrap();

    // A signed-in user with 200 calls in their personal organisation.
    let user: i32 = db
        .query_one(
            "insert into authjs.users (name, email) values ('Bench', 'b@example.com') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let token = uuid::Uuid::new_v4().to_string();
    db.execute(r#"insert into authjs.sessions ("userId", expires, "sessionToken") values ($1, now() + interval '1 day', $2)"#, &[&user, &token]).await.unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap();
    let cookie = format!("authjs.session-token={token}");
    let me: serde_json::Value = client
        .get(format!("{base}/api/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org: uuid::Uuid = me["organisations"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    db.execute(
        "insert into calls (id, organisation_id, direction, from_number, to_number, status, created_at)
         select gen_random_uuid(), $1, 'outbound', '+14155550100', '+14155550123', 'ended', now() - (g || ' seconds')::interval
         from generate_series(1, 200) g",
        &[&org],
    ).await.unwrap();

    let window = Duration::from_secs(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let warm = Duration::from_secs(2);

    let port = server.port;
    load(port, warm, |_| get("/healthz", None)).await;
    let baseline = load(port, window, |_| get("/healthz", None)).await;

    let k = cookie.clone();
    load(port, warm, move |_| get("/api/calls", Some(&k))).await;
    let k = cookie.clone();
    let calls = load(port, window, move |_| get("/api/calls", Some(&k))).await;

    // Pre-signed unique events, so signing costs nothing inside the timed window.
    let sign_range = |range: std::ops::Range<usize>| -> Arc<Vec<(Bytes, String, String)>> {
        Arc::new(range.map(|i| {
            let (body, ts, sig) = signed(&sim, &sim.event("call.initiated", serde_json::json!({"call_control_id": format!("v3:bench-{i}"), "direction": "outgoing"})));
            (Bytes::from(body), ts, sig)
        }).collect())
    };
    let budget = 12_000 * window.as_secs() as usize;
    let events = sign_range(0..budget);
    let goal_events =
        sign_range(budget..budget + (WEBHOOK_GOAL_RATE as usize + 1) * window.as_secs() as usize);
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
    // As fast as 64 connections go (throughput), then at the goal rate (latency at that rate).
    let webhooks = load(port, window, webhook(events)).await;
    let at_goal = paced(port, WEBHOOK_GOAL_RATE, window, webhook(goal_events)).await;
    let stored: i64 = db
        .query_one("select count(*) from webhook_inbox", &[])
        .await
        .unwrap()
        .get(0);
    let jobs: i64 = db
        .query_one("select count(*) from jobs", &[])
        .await
        .unwrap()
        .get(0);

    // Resilience: 3,000 events, each delivered twice, shuffled, Postgres restarted midway;
    // the sender re-delivers on any non-2xx like Telnyx does.
    db.batch_execute("truncate webhook_inbox; truncate jobs")
        .await
        .unwrap();
    let unique = 3_000;
    let mut deliveries: Vec<(Vec<u8>, String, String)> = (0..unique)
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
    let resilient_stored: i64 = db
        .query_one("select count(*) from webhook_inbox", &[])
        .await
        .unwrap()
        .get(0);
    let resilient_jobs: i64 = db
        .query_one("select count(*) from jobs", &[])
        .await
        .unwrap()
        .get(0);

    println!(
        "\nHTTP load, {CONNECTIONS} connections, {}s windows; client, server and PostgreSQL share this 2-core machine\n",
        window.as_secs()
    );
    println!("| scenario | ok req/s | errors | p50 | p99 | vs GET /healthz (same run) | goal |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    println!(
        "| GET /healthz (baseline) | {:.0} | {} | {:.2?} | {:.2?} | 1.00x | |",
        baseline.rate(),
        baseline.errors,
        baseline.quantile(0.5),
        baseline.quantile(0.99)
    );
    println!(
        "| GET /api/calls (session + newest 50) | {:.0} | {} | {:.2?} | {:.2?} | {:.2}x | >= 6000/s, p99 < 20 ms |",
        calls.rate(),
        calls.errors,
        calls.quantile(0.5),
        calls.quantile(0.99),
        calls.rate() / baseline.rate()
    );
    println!(
        "| POST /webhooks/telnyx (verify + store + enqueue) | {:.0} | {} | {:.2?} | {:.2?} | {:.2}x | >= 2000/s, ack p99 < 20 ms |",
        webhooks.rate(),
        webhooks.errors,
        webhooks.quantile(0.5),
        webhooks.quantile(0.99),
        webhooks.rate() / baseline.rate()
    );
    println!(
        "| POST /webhooks/telnyx at {WEBHOOK_GOAL_RATE:.0}/s offered (open loop, latency from due time) | {:.0} | {} | {:.2?} | {:.2?} | {:.2}x | ack p99 < 20 ms |",
        at_goal.rate(),
        at_goal.errors,
        at_goal.quantile(0.5),
        at_goal.quantile(0.99),
        at_goal.rate() / baseline.rate()
    );
    println!(
        "\nWebhooks accepted {} → inbox rows {stored}, jobs {jobs} (each must equal the unique events sent)",
        webhooks.ok + at_goal.ok
    );
    println!(
        "Resilience: {unique} unique events × 2 deliveries, shuffled, {} re-deliveries after non-2xx, PostgreSQL restart: {restart} → inbox {resilient_stored}, jobs {resilient_jobs} (lost {}, doubled {})",
        retries.load(Ordering::Relaxed),
        unique as i64 - resilient_stored.min(unique as i64),
        (resilient_stored - unique as i64).max(0)
    );

    drop(server);
    drop(db);
    tokio::time::sleep(Duration::from_millis(300)).await;
    scratch.drop_now().await;
}
