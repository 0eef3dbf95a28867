//! The media bridge under load, measured so that it cannot flatter: N simulated calls, both
//! tracks, each frame due on a fixed 20 ms grid (open loop, src/sim/loadgen.rs), latency from
//! the due time of the frame completing each 100 ms batch to the batch's arrival at the
//! AssemblyAI simulator, and the generator's own lag beside it. The floor, on the same
//! ladder in the same run: a bare tokio WebSocket relay (byte search, base64 decode, batch,
//! forward). CPU per frame of the service and of the PostgreSQL backends serving it, RSS per
//! live call, PostgreSQL transactions per live call per minute in steady state. The run
//! fails (exit 1) when any frame is lost or doubled. Writes `media_bridge.json`
//! (docs/BENCHMARKS.md).
#![allow(clippy::disallowed_methods)] // tests and benchmarks read their own TEST_*/BENCH_* settings

mod common;

use common::measure::{self, PgMeter, ResultFile};
use common::{ChildGuard, ScratchDatabase, free_port, wait_for_port};

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callbridge::sim::assemblyai::AssemblyAiSim;
use callbridge::sim::loadgen::{self, Fault, Ledger, Plan};
use serde::Serialize;

/// The floor relay runs from this binary: it gets the service's allocator, so the comparison
/// is of the bridge's work, not of two allocators.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where the generator (with the AssemblyAI simulator) and the relays run when pinned.
const GENERATOR_CPU: usize = 1;
const SERVICE_CPU: usize = 0;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|a| a == "--relay") {
        let port: u16 = args[position + 1].parse().expect("a port");
        let upstream = args[position + 2].clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("the relay's port");
            loadgen::floor_relay(listener, upstream, "bench-aai-key".into()).await;
        });
        return;
    }
    if !args.iter().any(|arg| arg == "--bench") {
        return;
    }
    let pinned = measure::pinning() && measure::pin_self(GENERATOR_CPU);
    callbridge::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let passed = runtime.block_on(run(pinned));
    if !passed {
        std::process::exit(1);
    }
}

/// One run through one target (the bridge or the floor) at one N.
#[derive(Serialize)]
struct Row {
    target: &'static str,
    #[serde(flatten)]
    report: loadgen::Report,
    /// CPU of the process doing the relaying, µs per frame planned.
    service_cpu_us_per_frame: f64,
    /// CPU of the PostgreSQL backends serving the service, µs per frame.
    postgres_cpu_us_per_frame: f64,
    /// The generator's (and simulator's) share of its CPU while the run lasted.
    generator_cpu_share: f64,
    /// RSS growth from the idle service to the middle of this run, per live call (an upper
    /// bound: it includes one-off growth of the process).
    rss_kib_per_call: f64,
    /// PostgreSQL transactions per live call per minute, in the middle of the run.
    postgres_transactions_per_call_minute: f64,
}

async fn run(pinned: bool) -> bool {
    let scratch = ScratchDatabase::create().await;
    let db_url = scratch.url.clone();
    let sim = AssemblyAiSim::start("bench-aai-key", 0).await.unwrap();
    let port = free_port();
    let secret = "bench-auth-secret-bench-auth-secret";
    let service_cpu = pinned.then_some(SERVICE_CPU);
    let server = start_server(
        port,
        db_url.as_str(),
        secret,
        &sim.streaming_url(),
        service_cpu,
        true,
    );
    wait_for_port(port).await;
    let relay_port = free_port();
    let upstream = format!(
        "{}?speech_model=universal-streaming-english&encoding=pcm_mulaw&sample_rate=8000",
        sim.streaming_url()
    );
    let relay = ChildGuard(
        measure::command_on(
            service_cpu,
            &std::env::current_exe().unwrap().to_string_lossy(),
        )
        .args(["--relay", &relay_port.to_string(), &upstream])
        .spawn()
        .unwrap(),
    );
    wait_for_port(relay_port).await;

    let counts: Vec<usize> = std::env::var("BENCH_CALLS")
        .unwrap_or_else(|_| "250,500,1000,2000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let seconds: usize = std::env::var("BENCH_CALL_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let db = callbridge::db::connect_direct(db_url.as_str())
        .await
        .unwrap();
    let org = uuid::Uuid::now_v7();
    db.execute(
        "insert into organisations (id, name) values ($1, 'bench')",
        &[&org],
    )
    .await
    .unwrap();
    let max_calls = counts.iter().copied().max().unwrap_or(0);
    let call_ids: Vec<uuid::Uuid> = db
        .query(
            "insert into calls (id, organisation_id, direction, from_number, to_number, status)
             select gen_random_uuid(), $1, 'outbound', '+1', '+2', 'answered' from generate_series(1, $2)
             returning id",
            &[&org, &(max_calls as i32)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tokens: Arc<Vec<String>> = Arc::new(
        call_ids
            .iter()
            .map(|id| callbridge::calls::stream_token::mint(secret.as_bytes(), *id, now + 3600))
            .collect(),
    );
    let mut meter = PgMeter::new(db_url.as_str(), &scratch.name).await;
    let service_idle_rss = measure::rss_kib(server.0.id());
    let relay_idle_rss = measure::rss_kib(relay.0.id());

    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for &calls in &counts {
        for target in ["bridge", "floor"] {
            // Each stream's frames on the grid: a multiple of 5 per track, so every frame
            // belongs to a full 100 ms batch.
            let plan = Plan {
                calls,
                frames: seconds * 50,
                fault: Fault::None,
            };
            let (pid, idle_rss) = match target {
                "bridge" => (server.0.id(), service_idle_rss),
                _ => (relay.0.id(), relay_idle_rss),
            };
            let tokens = tokens.clone();
            let url = move |i: usize| match target {
                "bridge" => format!("ws://127.0.0.1:{port}/media/telnyx/{}", tokens[i]),
                _ => format!("ws://127.0.0.1:{relay_port}/"),
            };
            let row = run_once(plan, &sim, pid, idle_rss, &mut meter, url, target).await;
            println!(
                "{target} {calls}: p99 {} µs from due, lag p99 {} µs, lost {}, doubled {}, {:.2} µs CPU/frame",
                row.report.latency_p99_us,
                row.report.generator_lag_p99_us,
                row.report.lost,
                row.report.doubled,
                row.service_cpu_us_per_frame
            );
            if let Err(failure) = row.report.check() {
                failures.push(format!("{target}: {failure}"));
            }
            rows.push(row);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    // Issue 17: what the usage ledger costs per frame, same run, same calls: a second
    // service with `USAGE_LEDGER=false`, alternated with the first (on, off, on, off) so
    // drift in the machine's load falls on both.
    let ledger_calls: usize = std::env::var("BENCH_LEDGER_CALLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
        .min(max_calls);
    let mut ledger_rows = Vec::new();
    if ledger_calls > 0 {
        let off_port = free_port();
        let off_server = start_server(
            off_port,
            db_url.as_str(),
            secret,
            &sim.streaming_url(),
            service_cpu,
            false,
        );
        wait_for_port(off_port).await;
        let off_idle_rss = measure::rss_kib(off_server.0.id());
        for target in ["bridge", "bridge-ledger-off", "bridge", "bridge-ledger-off"] {
            let plan = Plan {
                calls: ledger_calls,
                frames: seconds * 50,
                fault: Fault::None,
            };
            let (pid, idle_rss, target_port) = match target {
                "bridge" => (server.0.id(), service_idle_rss, port),
                _ => (off_server.0.id(), off_idle_rss, off_port),
            };
            let tokens = tokens.clone();
            let url =
                move |i: usize| format!("ws://127.0.0.1:{target_port}/media/telnyx/{}", tokens[i]);
            let row = run_once(plan, &sim, pid, idle_rss, &mut meter, url, target).await;
            println!(
                "{target} {ledger_calls} (ledger comparison): {:.2} µs CPU/frame, lost {}, doubled {}",
                row.service_cpu_us_per_frame, row.report.lost, row.report.doubled
            );
            if let Err(failure) = row.report.check() {
                failures.push(format!("{target} (ledger comparison): {failure}"));
            }
            ledger_rows.push(row);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        drop(off_server);
    }

    print_table(&rows, seconds, pinned);
    print_table(&ledger_rows, seconds, pinned);
    let mut result = ResultFile::new("media_bridge");
    result.set("seconds_per_call", seconds);
    result.set(
        "pinning",
        if pinned {
            "generator and AssemblyAI simulator on CPU 1; service and floor relay on CPU 0; PostgreSQL unpinned"
        } else {
            "none"
        },
    );
    result.set("rows", &rows);
    result.set("ledger_rows", &ledger_rows);
    let largest = |target: &str| {
        rows.iter()
            .filter(|r| {
                r.target == target && r.report.latency_p99_us < 5_000 && r.report.check().is_ok()
            })
            .map(|r| r.report.calls)
            .max()
            .unwrap_or(0)
    };
    result.set("largest_calls_p99_under_5ms_bridge", largest("bridge"));
    result.set("largest_calls_p99_under_5ms_floor", largest("floor"));
    result.row(
        "largest N at p99 < 5 ms from due time, 0 lost",
        largest("bridge").to_string(),
        largest("floor").to_string(),
        "≥ 1,000",
    );
    for pair in rows.chunks(2) {
        let [bridge, floor] = pair else { continue };
        let n = bridge.report.calls;
        let ms = |us: u32| format!("{:.2} ms", f64::from(us) / 1e3);
        result.row(
            &format!("{n} calls: added latency p99 from due time (generator lag p99)"),
            format!(
                "{} ({})",
                ms(bridge.report.latency_p99_us),
                ms(bridge.report.generator_lag_p99_us)
            ),
            format!(
                "{} ({})",
                ms(floor.report.latency_p99_us),
                ms(floor.report.generator_lag_p99_us)
            ),
            "< 5 ms",
        );
        result.row(
            &format!("{n} calls: CPU per frame, service + PostgreSQL"),
            format!(
                "{:.2} + {:.2} µs = {:.2}× floor",
                bridge.service_cpu_us_per_frame,
                bridge.postgres_cpu_us_per_frame,
                (bridge.service_cpu_us_per_frame + bridge.postgres_cpu_us_per_frame)
                    / floor.service_cpu_us_per_frame.max(1e-9)
            ),
            format!("{:.2} µs", floor.service_cpu_us_per_frame),
            "≤ 3 µs, ≤ 1.5× floor",
        );
        result.row(
            &format!("{n} calls: RSS per live call"),
            format!("{:.0} KiB", bridge.rss_kib_per_call),
            format!("{:.0} KiB", floor.rss_kib_per_call),
            "≤ 64 KiB",
        );
        result.row(
            &format!("{n} calls: PostgreSQL transactions per live call per minute"),
            format!("{:.1}", bridge.postgres_transactions_per_call_minute),
            String::new(),
            "≤ 6 (one per 10 s)",
        );
        result.row(
            &format!("{n} calls: frames planned / lost / doubled"),
            format!(
                "{} / {} / {}",
                bridge.report.frames_planned, bridge.report.lost, bridge.report.doubled
            ),
            format!(
                "{} / {} / {}",
                floor.report.frames_planned, floor.report.lost, floor.report.doubled
            ),
            "0 lost, 0 doubled (asserted)",
        );
        result.row(
            &format!("{n} calls: generator CPU share of its core"),
            format!("{:.0}%", bridge.generator_cpu_share * 100.0),
            format!("{:.0}%", floor.generator_cpu_share * 100.0),
            "< 100% (else the generator is the ceiling)",
        );
    }
    if !ledger_rows.is_empty() {
        let mean = |target: &str, figure: fn(&Row) -> f64| {
            let picked: Vec<f64> = ledger_rows
                .iter()
                .filter(|r| r.target == target)
                .map(figure)
                .collect();
            picked.iter().sum::<f64>() / picked.len().max(1) as f64
        };
        let service = |r: &Row| r.service_cpu_us_per_frame;
        let postgres = |r: &Row| r.postgres_cpu_us_per_frame;
        let on = mean("bridge", service) + mean("bridge", postgres);
        let off = mean("bridge-ledger-off", service) + mean("bridge-ledger-off", postgres);
        let added = (on - off) / off.max(1e-9) * 100.0;
        result.set("ledger_cpu_us_per_frame_on", on);
        result.set("ledger_cpu_us_per_frame_off", off);
        result.set("ledger_added_cpu_percent", added);
        result.row(
            &format!(
                "{ledger_calls} calls: CPU per frame (service + PostgreSQL), usage ledger on vs off (mean of two runs each, alternated)"
            ),
            format!("on {on:.2} µs, off {off:.2} µs: {added:+.1} %"),
            String::new(),
            "< 5 % added (issue 17)",
        );
    }
    for failure in &failures {
        eprintln!("INVARIANT BROKEN: {failure}");
    }
    result.write(failures.is_empty(), &failures);
    drop((relay, server, db, meter));
    tokio::time::sleep(Duration::from_millis(500)).await;
    scratch.drop_now().await;
    failures.is_empty()
}

/// The service under test, pinned to `cpu` when given; `ledger` is `USAGE_LEDGER`.
/// BENCH_SERVER_BIN / BENCH_SERVER_WRAPPER: run another build of the server, or the same
/// under a profiler (e.g. `heaptrack -o /tmp/bridge` with a `system-allocator` build, or
/// `valgrind --tool=callgrind` for instructions per frame).
fn start_server(
    port: u16,
    db_url: &str,
    secret: &str,
    streaming_url: &str,
    cpu: Option<usize>,
    ledger: bool,
) -> ChildGuard {
    let server_bin = std::env::var("BENCH_SERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_callbridge").into());
    let wrapper: Vec<String> = std::env::var("BENCH_SERVER_WRAPPER")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = measure::command_on(cpu, program);
            command.args(args).arg(&server_bin);
            command
        }
        None => measure::command_on(cpu, &server_bin),
    };
    ChildGuard(
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs([
                ("APP_ENV", "development"),
                ("RATE_LIMIT_SESSION_PER_MIN", "0"),
                ("RATE_LIMIT_ANONYMOUS_PER_MIN", "0"),
                ("BIND_ADDRESS", "127.0.0.1"),
                ("PORT", &port.to_string()),
                ("DATABASE_URL", db_url),
                ("RUN_MIGRATIONS_ON_START", "true"),
                ("DATABASE_POOL_MAX_SIZE", "16"),
                ("R2_ENDPOINT", "http://127.0.0.1:9"),
                ("R2_CREATE_BUCKET", "false"),
                ("LOG_LEVEL", "error"),
                ("AUTH_SECRET", secret),
                ("ASSEMBLYAI_API_KEY", "bench-aai-key"),
                ("ASSEMBLYAI_STREAMING_URL", streaming_url),
                ("USAGE_LEDGER", if ledger { "true" } else { "false" }),
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn run_once(
    plan: Plan,
    sim: &AssemblyAiSim,
    pid: u32,
    idle_rss: u64,
    meter: &mut PgMeter,
    url: impl Fn(usize) -> String,
    target: &'static str,
) -> Row {
    let ledger = Arc::new(Ledger::new(plan));
    let probe = ledger.clone();
    sim.set_probe(Arc::new(move |chunk| probe.on_chunk(chunk)));
    let me = std::process::id();
    let service_before = measure::cpu_seconds(pid);
    let generator_before = measure::cpu_seconds(me);
    meter.start().await;
    let wall = Instant::now();
    let streaming = Duration::from_millis(plan.frames as u64 * 20);
    // In the middle of the run: RSS, and PostgreSQL's transactions over a window where
    // every stream is live (after connecting and the first seconds, before any stops).
    let sampler = {
        let (url, database) = meter.connection();
        tokio::spawn(async move {
            let client = callbridge::db::connect_direct(&url).await.ok()?;
            // The grid starts once every stream is connected; wait for the streams first.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let window = streaming.saturating_sub(Duration::from_secs(5));
            let first = transactions(&client, &database).await;
            tokio::time::sleep(window).await;
            let rss = measure::rss_kib(pid);
            let second = transactions(&client, &database).await;
            // The first reading is two transactions of its own.
            Some((rss, (second - first - 2).max(0), window))
        })
    };
    let report = loadgen::play(plan, ledger, url, Duration::from_secs(1)).await;
    let elapsed = wall.elapsed().as_secs_f64();
    let service_cpu = measure::cpu_seconds(pid) - service_before;
    let generator_cpu = measure::cpu_seconds(me) - generator_before;
    let pg = meter.stop().await;
    let (rss, mid_transactions, window) =
        sampler
            .await
            .ok()
            .flatten()
            .unwrap_or((0, 0, Duration::ZERO));
    let frames = plan.frames_planned().max(1) as f64;
    Row {
        target,
        service_cpu_us_per_frame: service_cpu * 1e6 / frames,
        postgres_cpu_us_per_frame: pg.cpu_seconds * 1e6 / frames,
        generator_cpu_share: generator_cpu / elapsed,
        rss_kib_per_call: rss.saturating_sub(idle_rss) as f64 / plan.calls.max(1) as f64,
        postgres_transactions_per_call_minute: if target.starts_with("bridge") && !window.is_zero()
        {
            mid_transactions as f64 / plan.calls.max(1) as f64 / (window.as_secs_f64() / 60.0)
        } else {
            0.0
        },
        report,
    }
}

/// Transactions committed or rolled back in the database so far (its statistics as
/// flushed; each reading costs one transaction of its own, subtracted by the caller).
async fn transactions(client: &tokio_postgres::Client, database: &str) -> i64 {
    let _ = client
        .batch_execute("select pg_stat_clear_snapshot()")
        .await;
    client
        .query_one(
            "select (xact_commit + xact_rollback)::bigint from pg_stat_database where datname = $1",
            &[&database],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

fn print_table(rows: &[Row], seconds: usize, pinned: bool) {
    println!(
        "\nMedia bridge: simulated calls × 2 tracks, a frame per track due every 20 ms for {seconds} s (open loop); pinned: {pinned}\n"
    );
    println!(
        "| target | calls | frames planned | sent | lost | doubled | p50 from due | p99 from due | generator lag p99 | generator CPU share | service CPU/frame | PostgreSQL CPU/frame | RSS/call | PG transactions/call/min |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let r = &row.report;
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0}% | {:.2} µs | {:.2} µs | {:.0} KiB | {:.1} |",
            row.target,
            r.calls,
            r.frames_planned,
            r.frames_sent,
            r.lost,
            r.doubled,
            f64::from(r.latency_p50_us) / 1e3,
            f64::from(r.latency_p99_us) / 1e3,
            f64::from(r.generator_lag_p99_us) / 1e3,
            row.generator_cpu_share * 100.0,
            row.service_cpu_us_per_frame,
            row.postgres_cpu_us_per_frame,
            row.rss_kib_per_call,
            row.postgres_transactions_per_call_minute
        );
    }
}
