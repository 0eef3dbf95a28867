//! The media bridge under load, measured so that it cannot flatter: N simulated calls, both
//! tracks, each frame due on a fixed 20 ms grid (open loop, src/sim/loadgen.rs), latency from
//! the due time of the frame completing each 100 ms batch to the batch's arrival at the
//! AssemblyAI simulator, and the generator's own lag beside it. The floor, on the same
//! ladder in the same run: a bare tokio WebSocket relay (byte search, base64 decode, batch,
//! forward). CPU per frame of the service and of the PostgreSQL backends serving it, RSS per
//! live call, PostgreSQL transactions per live call per minute in steady state and the
//! statements behind them by cause (read on the wire). Each phase (one target at one N) has
//! calls of its own, frames tagged with the phase, and ends with a drain: every upstream
//! session closed and nothing more arriving, so no phase's leftovers count in the next. The
//! run fails (exit 1) when any frame is lost, doubled, or arrives in another phase. Writes
//! `media_bridge.json` (docs/BENCHMARKS.md, ADR 0046).
//!
//! Settings: `BENCH_CALLS` (the ladder, default `250,500,1000,2000`), `BENCH_CALL_SECONDS`
//! (default 12), `BENCH_TARGETS` (`bridge,floor`), `BENCH_LEDGER_CALLS` (default 500; 0 skips
//! the ledger comparison), `BENCH_LEDGER_REPEATS` (split on/off phases, default 3),
//! `BENCH_LEDGER_SECONDS` (default 10), `BENCH_PIN` (0: no pinning), `BENCH_AAI_TLS` (0: the
//! AssemblyAI simulator over plain `ws://` instead of TLS).
#![allow(clippy::disallowed_methods)] // tests and benchmarks read their own TEST_*/BENCH_* settings

mod common;
/// The PostgreSQL wire reader the tests count statements with (ADR 0038): here it tells
/// which cause each statement of a live call's steady state belongs to.
#[path = "../tests/common/pg_wire.rs"]
mod pg_wire;

use common::measure::{self, PgMeter, ResultFile};
use common::{ChildGuard, ScratchDatabase, free_port, wait_for_port};

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callbridge::sim::assemblyai::AssemblyAiSim;
use callbridge::sim::loadgen::{self, Drain, Fault, Ledger, Plan};
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

/// One phase of one target (the bridge, the floor, or one side of the ledger comparison).
#[derive(Serialize)]
struct Row {
    target: &'static str,
    #[serde(flatten)]
    report: loadgen::Report,
    /// CPU of the process doing the relaying, µs per frame planned.
    service_cpu_us_per_frame: f64,
    /// Its share of its core while the phase ran (from the grid's start to the drain's end).
    service_cpu_share: f64,
    /// CPU of the PostgreSQL backends serving the service, µs per frame.
    postgres_cpu_us_per_frame: f64,
    /// The generator's (and simulator's) share of its CPU while the phase ran.
    generator_cpu_share: f64,
    /// The generator could not keep its own schedule: its lag p99 is over a frame period, or
    /// its core was (nearly) full. The phase then measures the generator, not the target.
    generator_saturated: bool,
    /// The target fell behind the offered load: a frame's audio arrived more than a frame
    /// period late at p99 while the generator kept its schedule, or its core was (nearly)
    /// full. Reported, not a failure (ADR 0046); loss is a failure whatever the load.
    target_saturated: bool,
    /// RSS growth from the idle service to the middle of this run, per live call (an upper
    /// bound: it includes one-off growth of the process).
    rss_kib_per_call: f64,
    /// PostgreSQL transactions per live call per minute, in the middle of the run.
    postgres_transactions_per_call_minute: f64,
    /// The service's statements per live call per minute in the same window, by cause (read
    /// on the wire: every executed statement, a preparation counted as one).
    postgres_statements_per_call_minute: Vec<(String, f64)>,
    /// Transactions beyond the service's statements, per live call per minute: PostgreSQL
    /// runs one in the replica's `LISTEN` backend for each notifying transaction it reads
    /// (final turns and partial batches notify), so they are NOTIFY's cost, not statements.
    postgres_listener_transactions_per_call_minute: f64,
    /// Wall-clock seconds of the whole phase (connecting, streaming, draining, metering).
    wall_seconds: f64,
    /// Upstream sessions of earlier phases still open when this one started (its
    /// isolation failed; asserted 0).
    leftover_sessions: usize,
    /// Ledger comparison phases: usage rows the phase's calls left, and the number expected
    /// (one per AssemblyAI session with the ledger on, none with it off); asserted equal.
    ledger_entries: Option<(i64, i64)>,
    /// Calls this target carried (the ledger comparison splits a phase's calls between two).
    calls_routed: usize,
}

impl Row {
    /// The invariants: the report's (nothing lost, doubled, stale or undrained) and a clean
    /// slate at the start.
    fn check(&self) -> Result<(), String> {
        let mut broken = Vec::new();
        if let Err(failure) = self.report.check() {
            broken.push(failure);
        }
        if let Some((found, expected)) = self.ledger_entries
            && found != expected
        {
            broken.push(format!(
                "usage ledger: {found} row(s) for the phase's calls, {expected} expected"
            ));
        }
        if self.leftover_sessions > 0 {
            broken.push(format!(
                "{} upstream session(s) of an earlier phase still open at its start",
                self.leftover_sessions
            ));
        }
        if broken.is_empty() {
            Ok(())
        } else {
            Err(broken.join("; "))
        }
    }
}

/// One phase's target: its name, the process doing the relaying and its idle RSS, and the
/// URL of the stream for a call's token.
struct Target {
    name: &'static str,
    /// The ledger comparison's services: `USAGE_LEDGER` on or off, and the phase then
    /// checks the ledger rows its calls left (each session's, or none).
    ledger: Option<bool>,
    /// The `application_name` its connections give PostgreSQL, when two targets share a
    /// phase (their backends' CPU is then told apart by it).
    application: Option<&'static str>,
    pid: u32,
    idle_rss: u64,
    url: Arc<dyn Fn(&str) -> String + Send + Sync>,
}

/// What every phase shares: the simulator, the meter, the wire reader, and calls to stream.
struct Phases {
    sim: AssemblyAiSim,
    meter: PgMeter,
    wire: Arc<pg_wire::PgWire>,
    db: tokio_postgres::Client,
    org: uuid::Uuid,
    secret: &'static str,
}

impl Phases {
    /// `n` calls of their own for one phase, and their stream tokens: a phase never
    /// streams a call an earlier phase streamed, so nothing of the service's state for a
    /// call (a stream to re-attach, positions, replayed audio) carries over between phases.
    async fn fresh_calls(&self, n: usize) -> (Vec<uuid::Uuid>, Vec<String>) {
        let ids: Vec<uuid::Uuid> = self
            .db
            .query(
                "insert into calls (id, organisation_id, direction, from_number, to_number, status)
                 select gen_random_uuid(), $1, 'outbound', '+1', '+2', 'answered' from generate_series(1, $2)
                 returning id",
                &[&self.org, &(n as i32)],
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
        let tokens = ids
            .iter()
            .map(|id| {
                callbridge::calls::stream_token::mint(self.secret.as_bytes(), *id, now + 3600)
            })
            .collect();
        (ids, tokens)
    }

    /// One phase: `calls` fresh calls for `seconds`, call `i` through `targets[route(i)]`,
    /// then drained; a row per target. The ledger rows are checked when a target is one of
    /// the ledger comparison's.
    async fn run_on(
        &mut self,
        targets: &[&Target],
        route: impl Fn(usize) -> usize,
        calls: usize,
        seconds: usize,
    ) -> Vec<Row> {
        let phase_started = Instant::now();
        // The previous phase drained: nothing of it may still be open upstream.
        let leftover = self.sim.open_sessions();
        let (ids, tokens) = self.fresh_calls(calls).await;
        let tokens = Arc::new(tokens);
        // Each stream's frames on the grid: a multiple of 5 per track, so every frame
        // belongs to a full 100 ms batch.
        let plan = Plan {
            calls,
            frames: seconds * 50,
            fault: Fault::None,
        };
        let checks_ledger = targets.iter().any(|t| t.ledger.is_some());
        let mut rows = run_once(
            plan,
            &self.sim,
            targets,
            route,
            &mut self.meter,
            &self.wire,
            move |i| tokens[i].clone(),
            phase_started,
            checks_ledger.then_some((&self.db, ids.as_slice())),
        )
        .await;
        for row in &mut rows {
            row.leftover_sessions = leftover;
        }
        rows
    }

    /// Runs one phase: `calls` fresh calls for `seconds` through `target`, then drains.
    async fn run(&mut self, target: &Target, calls: usize, seconds: usize) -> Row {
        let row = self
            .run_on(&[target], |_| 0, calls, seconds)
            .await
            .remove(0);
        println!(
            "{} {calls}: sessions open in {} ms, p99 {} µs from due, lag p99 {} µs, lost {}, doubled {}, stale {}, drained in {} ms, {:.2} µs CPU/frame ({:.0}% of its core), generator {:.0}%, {} flushes deferred, {:.1} s",
            target.name,
            row.report.upstream_ready_ms,
            row.report.latency_p99_us,
            row.report.generator_lag_p99_us,
            row.report.lost,
            row.report.doubled,
            row.report.stale,
            row.report.drain_ms,
            row.service_cpu_us_per_frame,
            row.service_cpu_share * 100.0,
            row.generator_cpu_share * 100.0,
            row.report.deferred_flushes,
            row.wall_seconds,
        );
        row
    }

    /// The ledger comparison's phase: `calls` fresh calls for `seconds`, every other call
    /// through `first` and the rest through `second`, at the same time; a row for each.
    async fn run_split(
        &mut self,
        first: &Target,
        second: &Target,
        calls: usize,
        seconds: usize,
    ) -> Vec<Row> {
        let rows = self
            .run_on(&[first, second], |i| i % 2, calls, seconds)
            .await;
        for row in &rows {
            println!(
                "{} {} of {calls} (at once with the other): {:.2} + {:.2} µs CPU/frame (service + PostgreSQL), ledger rows {:?}, p99 {} µs from due, lost {}, {:.1} s",
                row.target,
                row.calls_routed,
                row.service_cpu_us_per_frame,
                row.postgres_cpu_us_per_frame,
                row.ledger_entries,
                row.report.latency_p99_us,
                row.report.lost,
                row.wall_seconds,
            );
        }
        rows
    }
}

/// `Max open files` (soft) of this process: each call is a socket here and three in the
/// relaying process (the stream and one upstream per track).
fn open_files_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

async fn run(pinned: bool) -> bool {
    let bench_started = Instant::now();
    let scratch = ScratchDatabase::create().await;
    let db_url = scratch.url.clone();
    // AssemblyAI is reached over TLS in production, by the bridge and the floor alike
    // (ADR 0060); BENCH_AAI_TLS=0 for a binary without the simulators' test root.
    let sim = if setting("BENCH_AAI_TLS", 1) == 1 {
        AssemblyAiSim::start_tls("bench-aai-key", 0).await
    } else {
        AssemblyAiSim::start("bench-aai-key", 0).await
    }
    .unwrap();
    // The generator's audio never pauses, so every track's turn would end at the same moment
    // every 4 s; spread, the same turns arrive as independent conversations' do.
    sim.spread_turn_ends();
    // Four seconds of non-stop speech is a dozen words or more, not the default script's
    // three to six: with lines that short a turn ran out of words after a second and a
    // half, its partials stopped growing, and the bridge held the rest of the turn's audio
    // (ADR 0059) where a real speaker's words would have kept coming and been made final.
    sim.set_script(&[
        "hello this is a test call from the benchmark and we will keep on talking for a while",
        "can you hear me clearly now because the line seems to be working well from this side",
        "thank you very much for your help today I think that is everything we needed to cover",
    ]);
    // The service reaches PostgreSQL through the wire reader, which sorts its statements by
    // cause; the meter and the bench's own connections go direct.
    let pg_address = format!(
        "{}:{}",
        db_url.host_str().unwrap_or("127.0.0.1"),
        db_url.port().unwrap_or(5432)
    );
    let pg_address: std::net::SocketAddr = tokio::net::lookup_host(pg_address.as_str())
        .await
        .unwrap()
        .next()
        .expect("PostgreSQL's address");
    let wire = Arc::new(pg_wire::PgWire::start(pg_address).await);
    let mut service_db_url = db_url.clone();
    service_db_url.set_ip_host(wire.address.ip()).unwrap();
    service_db_url.set_port(Some(wire.address.port())).unwrap();
    let port = free_port();
    let secret = "bench-auth-secret-bench-auth-secret";
    let service_cpu = pinned.then_some(SERVICE_CPU);
    let server = start_server(
        port,
        service_db_url.as_str(),
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
    let targets: Vec<String> = std::env::var("BENCH_TARGETS")
        .unwrap_or_else(|_| "bridge,floor".into())
        .split(',')
        .map(|t| t.trim().to_owned())
        .collect();
    let seconds: usize = setting("BENCH_CALL_SECONDS", 12);
    let max_calls = counts.iter().copied().max().unwrap_or(0);
    let open_files = open_files_limit();
    if let Some(limit) = open_files
        && (limit as usize) < max_calls * 4 + 256
    {
        eprintln!(
            "warning: open files limit {limit} is below what {max_calls} calls need (about {}): raise `ulimit -n`",
            max_calls * 4 + 256
        );
    }
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
    let meter = PgMeter::new(db_url.as_str(), &scratch.name).await;
    let mut phases = Phases {
        sim,
        meter,
        wire,
        db,
        org,
        secret,
    };
    let bridge = Target {
        name: "bridge",
        ledger: None,
        application: None,
        pid: server.0.id(),
        idle_rss: measure::rss_kib(server.0.id()),
        url: Arc::new(move |token: &str| format!("ws://127.0.0.1:{port}/media/telnyx/{token}")),
    };
    let floor = Target {
        name: "floor",
        ledger: None,
        application: None,
        pid: relay.0.id(),
        idle_rss: measure::rss_kib(relay.0.id()),
        url: Arc::new(move |_: &str| format!("ws://127.0.0.1:{relay_port}/")),
    };

    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for &calls in &counts {
        for target in [&bridge, &floor] {
            if !targets.iter().any(|t| t == target.name) {
                continue;
            }
            let row = phases.run(target, calls, seconds).await;
            if let Err(failure) = row.check() {
                failures.push(format!("{}: {failure}", target.name));
            }
            rows.push(row);
        }
    }

    // Issue 17: what the usage ledger costs per frame, same run. Two fresh services, started
    // together, identical but for `USAGE_LEDGER` (the ladder's service, grown by 2,000
    // calls, would carry its history into one side), serve the same phase at the same time:
    // every other call through each, so the machine's noise (which moved one service's CPU
    // per frame by ±15 % from one phase to the next) falls on both alike. Each phase has
    // calls of its own, is drained like the ladder's, and its ledger rows are checked (each
    // session's with the ledger on, none with it off). Which service takes the even calls
    // alternates between repeats. Compared: CPU per frame, service + PostgreSQL (its own
    // backends, by `application_name`), within each phase.
    let ledger_calls: usize = setting("BENCH_LEDGER_CALLS", 500usize);
    let ledger_repeats: usize = setting("BENCH_LEDGER_REPEATS", 3usize);
    let ledger_seconds: usize = setting("BENCH_LEDGER_SECONDS", 10usize);
    let mut ledger_rows = Vec::new();
    if ledger_calls > 0 && ledger_repeats > 0 {
        let twin = |on: bool, application: &str| {
            let port = free_port();
            let mut url = service_db_url.clone();
            url.query_pairs_mut()
                .append_pair("application_name", application);
            let server = start_server(
                port,
                url.as_str(),
                secret,
                &phases.sim.streaming_url(),
                service_cpu,
                on,
            );
            (port, server)
        };
        let ((on_port, on_server), (off_port, off_server)) =
            (twin(true, LEDGER_ON), twin(false, LEDGER_OFF));
        wait_for_port(on_port).await;
        wait_for_port(off_port).await;
        let target = |name: &'static str, on: bool, port: u16, server: &ChildGuard| Target {
            name,
            ledger: Some(on),
            application: Some(name),
            pid: server.0.id(),
            idle_rss: measure::rss_kib(server.0.id()),
            url: Arc::new(move |token: &str| format!("ws://127.0.0.1:{port}/media/telnyx/{token}")),
        };
        let bridge_on = target(LEDGER_ON, true, on_port, &on_server);
        let bridge_off = target(LEDGER_OFF, false, off_port, &off_server);
        // A service's first calls pay for its pool's connections and first preparations:
        // one short phase first, checked but not compared.
        for row in phases
            .run_split(&bridge_on, &bridge_off, ledger_calls, 4)
            .await
        {
            if let Err(failure) = row.check() {
                failures.push(format!("{} (ledger warm-up): {failure}", row.target));
            }
        }
        for repeat in 0..ledger_repeats {
            let (first, second) = if repeat % 2 == 0 {
                (&bridge_on, &bridge_off)
            } else {
                (&bridge_off, &bridge_on)
            };
            for row in phases
                .run_split(first, second, ledger_calls, ledger_seconds)
                .await
            {
                if let Err(failure) = row.check() {
                    failures.push(format!("{} (ledger comparison): {failure}", row.target));
                }
                ledger_rows.push(row);
            }
        }
        drop((on_server, off_server));
    }

    print_table(&rows, seconds, pinned);
    print_table(&ledger_rows, ledger_seconds, pinned);
    let mut result = ResultFile::new("media_bridge");
    result.set("seconds_per_call", seconds);
    result.set("open_files_limit", open_files);
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
            .filter(|r| r.target == target && r.report.latency_p99_us < 5_000 && r.check().is_ok())
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
    for &n in &counts {
        let find = |target: &str| {
            rows.iter()
                .find(|r| r.target == target && r.report.calls == n)
        };
        let (Some(bridge), floor) = (find("bridge"), find("floor")) else {
            continue;
        };
        let on_floor = |figure: &dyn Fn(&Row) -> String| floor.map(figure).unwrap_or_default();
        let ms = |us: u32| format!("{:.2} ms", f64::from(us) / 1e3);
        let saturated = |row: &Row| {
            let mut notes = Vec::new();
            if row.target_saturated {
                notes.push("target saturated");
            }
            if row.generator_saturated {
                notes.push("generator saturated");
            }
            if notes.is_empty() {
                String::new()
            } else {
                format!(" [{}]", notes.join(", "))
            }
        };
        result.row(
            &format!("{n} calls: added latency p99 from due time (generator lag p99)"),
            format!(
                "{} ({}){}",
                ms(bridge.report.latency_p99_us),
                ms(bridge.report.generator_lag_p99_us),
                saturated(bridge)
            ),
            on_floor(&|floor| {
                format!(
                    "{} ({}){}",
                    ms(floor.report.latency_p99_us),
                    ms(floor.report.generator_lag_p99_us),
                    saturated(floor)
                )
            }),
            "< 5 ms",
        );
        result.row(
            &format!("{n} calls: CPU per frame, service + PostgreSQL"),
            format!(
                "{:.2} + {:.2} µs{}",
                bridge.service_cpu_us_per_frame,
                bridge.postgres_cpu_us_per_frame,
                floor
                    .map(|floor| format!(
                        " = {:.2}× floor",
                        (bridge.service_cpu_us_per_frame + bridge.postgres_cpu_us_per_frame)
                            / floor.service_cpu_us_per_frame.max(1e-9)
                    ))
                    .unwrap_or_default()
            ),
            on_floor(&|floor| format!("{:.2} µs", floor.service_cpu_us_per_frame)),
            "≤ 3 µs, ≤ 1.5× floor",
        );
        result.row(
            &format!("{n} calls: RSS per live call"),
            format!("{:.0} KiB", bridge.rss_kib_per_call),
            on_floor(&|floor| format!("{:.0} KiB", floor.rss_kib_per_call)),
            "≤ 64 KiB",
        );
        result.row(
            &format!(
                "{n} calls: PostgreSQL transactions per live call per minute (statements by cause)"
            ),
            format!(
                "{:.1} (statements: {}; listener reading notifications {:.2})",
                bridge.postgres_transactions_per_call_minute,
                by_cause(&bridge.postgres_statements_per_call_minute),
                bridge.postgres_listener_transactions_per_call_minute
            ),
            String::new(),
            "≤ 6 (one per 10 s)",
        );
        result.row(
            &format!(
                "{n} calls: frames planned / lost / doubled / stale (sessions open before the grid; drain)"
            ),
            format!(
                "{} / {} / {} / {} ({:.1} s; {:.1} s)",
                bridge.report.frames_planned,
                bridge.report.lost,
                bridge.report.doubled,
                bridge.report.stale,
                bridge.report.upstream_ready_ms as f64 / 1e3,
                bridge.report.drain_ms as f64 / 1e3
            ),
            on_floor(&|floor| {
                format!(
                    "{} / {} / {} / {} ({:.1} s; {:.1} s)",
                    floor.report.frames_planned,
                    floor.report.lost,
                    floor.report.doubled,
                    floor.report.stale,
                    floor.report.upstream_ready_ms as f64 / 1e3,
                    floor.report.drain_ms as f64 / 1e3
                )
            }),
            "0 lost, 0 doubled, 0 stale (asserted)",
        );
        result.row(
            &format!("{n} calls: CPU share of its core, target (generator)"),
            format!(
                "{:.0}% ({:.0}%)",
                bridge.service_cpu_share * 100.0,
                bridge.generator_cpu_share * 100.0
            ),
            on_floor(&|floor| {
                format!(
                    "{:.0}% ({:.0}%)",
                    floor.service_cpu_share * 100.0,
                    floor.generator_cpu_share * 100.0
                )
            }),
            "generator < 100% (else it is the ceiling)",
        );
    }
    if !ledger_rows.is_empty() {
        let comparison = LedgerComparison::of(&ledger_rows);
        result.set("ledger_comparison", &comparison);
        result.row(
            &format!(
                "{ledger_calls} calls: CPU per frame (service + PostgreSQL), usage ledger on vs off, half the calls each at the same time ({} phases: median [min–max])",
                comparison.pairs
            ),
            format!(
                "on {:.2} [{:.2}–{:.2}] µs, off {:.2} [{:.2}–{:.2}] µs: {:+.1} % (phases {:+.1} to {:+.1} %): {}",
                comparison.on_median,
                comparison.on_min,
                comparison.on_max,
                comparison.off_median,
                comparison.off_min,
                comparison.off_max,
                comparison.added_percent_median,
                comparison.added_percent_min,
                comparison.added_percent_max,
                comparison.verdict
            ),
            String::new(),
            "< 5 % added (issue 17)",
        );
    }
    let bench_seconds = bench_started.elapsed().as_secs_f64();
    result.set("bench_seconds", bench_seconds);
    println!("\nmedia_bridge: {bench_seconds:.0} s in all");
    for failure in &failures {
        eprintln!("INVARIANT BROKEN: {failure}");
    }
    result.write(failures.is_empty(), &failures);
    drop((relay, server, phases));
    tokio::time::sleep(Duration::from_millis(500)).await;
    scratch.drop_now().await;
    failures.is_empty()
}

/// `heartbeats 0.4, turns 28.0, …` (statements per live call per minute by cause).
fn by_cause(causes: &[(String, f64)]) -> String {
    causes
        .iter()
        .map(|(cause, n)| format!("{cause} {n:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ledger comparison's two services.
const LEDGER_ON: &str = "bridge-ledger-on";
const LEDGER_OFF: &str = "bridge-ledger-off";

/// The ledger's cost from the split phases: CPU per frame (service + PostgreSQL) of each
/// side as median and range, and the added cost within each phase (both sides served it at
/// the same time, so the machine's load was the same for both).
#[derive(Serialize)]
struct LedgerComparison {
    pairs: usize,
    on_median: f64,
    on_min: f64,
    on_max: f64,
    off_median: f64,
    off_min: f64,
    off_max: f64,
    added_percent_median: f64,
    added_percent_min: f64,
    added_percent_max: f64,
    /// `shown` when every pair added < 5 %, `refuted` when every pair added ≥ 5 %, else
    /// `not decided (noise)`: the pairs disagree.
    verdict: &'static str,
}

impl LedgerComparison {
    fn of(rows: &[Row]) -> Self {
        let cpu = |r: &Row| r.service_cpu_us_per_frame + r.postgres_cpu_us_per_frame;
        let mut on: Vec<f64> = rows
            .iter()
            .filter(|r| r.target == LEDGER_ON)
            .map(cpu)
            .collect();
        let mut off: Vec<f64> = rows
            .iter()
            .filter(|r| r.target == LEDGER_OFF)
            .map(cpu)
            .collect();
        let mut added: Vec<f64> = rows
            .chunks(2)
            .filter_map(|pair| {
                let [a, b] = pair else { return None };
                let (on, off) = if a.target == LEDGER_ON {
                    (a, b)
                } else {
                    (b, a)
                };
                Some((cpu(on) - cpu(off)) / cpu(off).max(1e-9) * 100.0)
            })
            .collect();
        let (on_median, on_min, on_max) = spread(&mut on);
        let (off_median, off_min, off_max) = spread(&mut off);
        let (_, added_percent_min, added_percent_max) = spread(&mut added);
        let verdict = if added_percent_max < 5.0 {
            "shown"
        } else if added_percent_min >= 5.0 {
            "refuted"
        } else {
            "not decided (noise)"
        };
        Self {
            pairs: added.len(),
            on_median,
            on_min,
            on_max,
            off_median,
            off_min,
            off_max,
            added_percent_median: (on_median - off_median) / off_median.max(1e-9) * 100.0,
            added_percent_min,
            added_percent_max,
            verdict,
        }
    }
}

/// Median, minimum and maximum (sorts the values); zeros when there are none.
fn spread(values: &mut [f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (median, values[0], values[n - 1])
}

/// The service under test, pinned to `cpu` when given; `ledger` is `USAGE_LEDGER`.
/// `measure::serve_command` reads BENCH_SERVER_BIN / BENCH_SERVER_WRAPPER (e.g.
/// `heaptrack -o /tmp/bridge` with a `system-allocator` build, or callgrind).
fn start_server(
    port: u16,
    db_url: &str,
    secret: &str,
    streaming_url: &str,
    cpu: Option<usize>,
    ledger: bool,
) -> ChildGuard {
    ChildGuard(
        measure::serve_command(cpu, port, db_url, secret)
            .envs([
                ("ASSEMBLYAI_API_KEY", "bench-aai-key"),
                ("ASSEMBLYAI_STREAMING_URL", streaming_url),
                ("USAGE_LEDGER", if ledger { "true" } else { "false" }),
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// How long a phase may take to drain after its last frame was sent before the frames still
/// missing count as lost: far beyond any backlog a phase builds in 12 s.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// Nothing arriving for this long (with every upstream session closed) ends the drain.
const DRAIN_QUIET: Duration = Duration::from_millis(500);

/// One phase of `plan` through `targets`, call `i` through `targets[route(i)]`: one row per
/// target. With two targets (the ledger comparison) both serve at the same moment, so the
/// machine's noise falls on both alike; each row's CPU is its own process's and its own
/// PostgreSQL backends' (told apart by `application_name`), per frame it was sent. The
/// frame report, transactions and statements are the phase's, shared by its rows.
#[allow(clippy::too_many_arguments)]
async fn run_once(
    plan: Plan,
    sim: &AssemblyAiSim,
    targets: &[&Target],
    route: impl Fn(usize) -> usize,
    meter: &mut PgMeter,
    wire: &Arc<pg_wire::PgWire>,
    token: impl Fn(usize) -> String,
    phase_started: Instant,
    usage: Option<(&tokio_postgres::Client, &[uuid::Uuid])>,
) -> Vec<Row> {
    let ledger = Arc::new(Ledger::new(plan));
    let probe = ledger.clone();
    sim.set_probe(Arc::new(move |chunk| probe.on_chunk(chunk)));
    let pids: Vec<u32> = targets.iter().map(|t| t.pid).collect();
    let calls_of: Vec<usize> = (0..targets.len())
        .map(|t| (0..plan.calls).filter(|&i| route(i) == t).count())
        .collect();
    let me = std::process::id();
    // Every CPU of the phase counts per frame, connecting and draining included.
    let service_before: Vec<f64> = pids.iter().map(|&pid| measure::cpu_seconds(pid)).collect();
    meter.start().await;
    let streaming = loadgen::FRAME_PERIOD * plan.slots() as u32;
    // From the grid's start: CPU of the targets and of the generator, and in the middle of
    // the run (every stream live, past its first seconds, before any stops) RSS,
    // PostgreSQL's transactions and the service's statements by cause.
    let sampler = {
        let (url, database) = meter.connection();
        let (ledger, wire, pids) = (ledger.clone(), wire.clone(), pids.clone());
        tokio::spawn(async move {
            let client = callbridge::db::connect_direct(&url).await.ok()?;
            while !ledger.started() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let cpu = (
                Instant::now(),
                pids.iter()
                    .map(|&pid| measure::cpu_seconds(pid))
                    .collect::<Vec<_>>(),
                measure::cpu_seconds(me),
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            let window = streaming.saturating_sub(Duration::from_secs(4));
            let first = transactions(&client, &database).await;
            wire.reset();
            tokio::time::sleep(window).await;
            let trips = wire.trips();
            let rss: Vec<u64> = pids.iter().map(|&pid| measure::rss_kib(pid)).collect();
            let second = transactions(&client, &database).await;
            // The first reading is two transactions of its own.
            Some((cpu, rss, (second - first - 2).max(0), trips, window))
        })
    };
    let drain = Drain {
        quiet: DRAIN_QUIET,
        limit: DRAIN_LIMIT,
        open: Box::new({
            let sim = sim.clone();
            move || sim.open_sessions()
        }),
        // Bridge and floor both open a session per track when a stream starts; the grid
        // waits for them (a phase measures streaming, not a herd of handshakes).
        sessions_per_call: 2,
    };
    let urls: Vec<_> = targets.iter().map(|t| t.url.clone()).collect();
    let report = loadgen::play_drained(plan, ledger, |i| urls[route(i)](&token(i)), drain).await;
    let (service_drained, generator_after, after) = (
        pids.iter()
            .map(|&pid| measure::cpu_seconds(pid))
            .collect::<Vec<_>>(),
        measure::cpu_seconds(me),
        Instant::now(),
    );
    // The ledger comparison counts the ledger's whole cost: its rows are written (within a
    // second of each session's end, by the replica's writer) before any CPU is read, and
    // the rows are checked, so "on" cannot look cheap by writing nothing.
    let mut ledger_entries = vec![None; targets.len()];
    if let Some((db, ids)) = usage {
        let deadline = Instant::now() + Duration::from_secs(10);
        for (t, target) in targets.iter().enumerate() {
            let Some(on) = target.ledger else { continue };
            let mine: Vec<uuid::Uuid> = (0..ids.len())
                .filter(|&i| route(i) == t)
                .map(|i| ids[i])
                .collect();
            let expected = if on { 2 * mine.len() as i64 } else { 0 };
            let found = loop {
                let found = ledger_rows_of(db, &mine).await;
                if found == expected || Instant::now() >= deadline {
                    break found;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            ledger_entries[t] = Some((found, expected));
        }
    }
    let pg = meter.stop().await;
    let mut pg_cpu = vec![pg.cpu_seconds; targets.len()];
    if targets.len() > 1 {
        for (t, target) in targets.iter().enumerate() {
            pg_cpu[t] = match target.application {
                Some(application) => meter.cpu_of_application(application).await,
                None => 0.0,
            };
        }
    }
    let service_after: Vec<f64> = match usage {
        // Read after the writer's statement and PostgreSQL's statistics (`meter.stop`).
        Some(_) => pids.iter().map(|&pid| measure::cpu_seconds(pid)).collect(),
        None => service_drained.clone(),
    };
    let sampled = sampler.await.ok().flatten();
    let all_calls = plan.calls.max(1) as f64;
    let frame_period_us = loadgen::FRAME_PERIOD.as_micros() as u32;
    let (generator_share, window_figures) = match &sampled {
        Some(((at, _, generator_before), _, transactions, trips, window)) => {
            let elapsed = after.duration_since(*at).as_secs_f64();
            let minutes = window.as_secs_f64() / 60.0;
            let statements: Vec<(String, f64)> = statements_by_cause(trips)
                .into_iter()
                .map(|(cause, n)| (cause, n as f64 / all_calls / minutes.max(1e-9)))
                .collect();
            (
                (generator_after - generator_before) / elapsed.max(1e-9),
                Some((
                    *transactions as f64 / all_calls / minutes.max(1e-9),
                    statements,
                )),
            )
        }
        None => (0.0, None),
    };
    let generator_saturated =
        generator_share >= 0.95 || report.generator_lag_p99_us > frame_period_us;
    targets
        .iter()
        .enumerate()
        .map(|(t, target)| {
            let share = calls_of[t] as f64 / all_calls;
            let frames = (plan.frames_planned() as f64 * share).max(1.0);
            let calls = calls_of[t].max(1) as f64;
            let (service_share, rss) = match &sampled {
                Some(((at, service_at_grid, _), rss, ..)) => (
                    (service_drained[t] - service_at_grid[t])
                        / after.duration_since(*at).as_secs_f64().max(1e-9),
                    rss[t],
                ),
                None => (0.0, 0),
            };
            let target_saturated = service_share >= 0.95
                || (!generator_saturated
                    && report
                        .latency_p99_us
                        .saturating_sub(report.generator_lag_p99_us)
                        > frame_period_us);
            let is_bridge = target.name.starts_with("bridge");
            let (transactions, statements) = match (&window_figures, is_bridge) {
                (Some((transactions, statements)), true) => (*transactions, statements.clone()),
                _ => (0.0, Vec::new()),
            };
            Row {
                target: target.name,
                service_cpu_us_per_frame: (service_after[t] - service_before[t]) * 1e6 / frames,
                service_cpu_share: service_share,
                postgres_cpu_us_per_frame: pg_cpu[t] * 1e6 / frames,
                generator_cpu_share: generator_share,
                generator_saturated,
                target_saturated,
                rss_kib_per_call: rss.saturating_sub(target.idle_rss) as f64 / calls,
                postgres_transactions_per_call_minute: transactions,
                postgres_listener_transactions_per_call_minute: if is_bridge {
                    (transactions - statements.iter().map(|(_, n)| n).sum::<f64>()).max(0.0)
                } else {
                    0.0
                },
                postgres_statements_per_call_minute: statements,
                wall_seconds: phase_started.elapsed().as_secs_f64(),
                leftover_sessions: 0,
                ledger_entries: ledger_entries[t],
                calls_routed: calls_of[t],
                report: report.clone(),
            }
        })
        .collect()
}

/// The service's statements on the wire, by what caused them: the batched heartbeats and
/// stream claims, final turns stored, partial captions published, usage ledger writes,
/// preparations (a statement the connection had not prepared yet), and the rest.
fn statements_by_cause(trips: &[pg_wire::RoundTrip]) -> Vec<(String, usize)> {
    const CAUSES: [(&str, &[&str]); 4] = [
        ("heartbeats", &["media_streams", "media_stream_positions"]),
        ("turns", &["transcript_turns"]),
        ("partials", &["pg_notify($1, p)"]),
        ("usage", &["usage_ledger"]),
    ];
    let mut counts: Vec<(String, usize)> = CAUSES
        .iter()
        .map(|(cause, _)| (cause.to_string(), 0))
        .chain([("prepare".to_string(), 0), ("other".to_string(), 0)])
        .collect();
    for trip in trips {
        if trip.is_empty() {
            counts[CAUSES.len()].1 += 1;
            continue;
        }
        for sql in trip {
            let cause = CAUSES
                .iter()
                .position(|(_, needles)| needles.iter().any(|n| sql.contains(n)))
                .unwrap_or(CAUSES.len() + 1);
            counts[cause].1 += 1;
        }
    }
    counts
}

/// Usage ledger rows of `calls`.
async fn ledger_rows_of(db: &tokio_postgres::Client, calls: &[uuid::Uuid]) -> i64 {
    db.query_one(
        "select count(*) from usage_ledger where call_id = any($1)",
        &[&calls],
    )
    .await
    .map(|r| r.get(0))
    .unwrap_or(-1)
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
        "| target | calls | frames planned | sent | lost | doubled | stale | drain | p50 from due | p99 from due | generator lag p99 | generator CPU share | target CPU share | service CPU/frame | PostgreSQL CPU/frame | RSS/call | PG transactions/call/min | statements/call/min by cause | listener transactions/call/min | phase |"
    );
    println!(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
    );
    for row in rows {
        let r = &row.report;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} s | {:.2} ms | {:.2} ms | {:.2} ms | {:.0}% | {:.0}% | {:.2} µs | {:.2} µs | {:.0} KiB | {:.1} | {} | {:.2} | {:.1} s |",
            row.target,
            row.calls_routed,
            r.frames_planned,
            r.frames_sent,
            r.lost,
            r.doubled,
            r.stale,
            r.drain_ms as f64 / 1e3,
            f64::from(r.latency_p50_us) / 1e3,
            f64::from(r.latency_p99_us) / 1e3,
            f64::from(r.generator_lag_p99_us) / 1e3,
            row.generator_cpu_share * 100.0,
            row.service_cpu_share * 100.0,
            row.service_cpu_us_per_frame,
            row.postgres_cpu_us_per_frame,
            row.rss_kib_per_call,
            row.postgres_transactions_per_call_minute,
            by_cause(&row.postgres_statements_per_call_minute),
            row.postgres_listener_transactions_per_call_minute,
            row.wall_seconds,
        );
    }
}
