//! Session resolution: cached lookups/s and p99, uncached (database) p99, each against a
//! baseline measured in the same run on the same machine. Needs PostgreSQL
//! (`BENCH_DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/postgres).
#![allow(clippy::disallowed_methods)] // tests and benchmarks read their own TEST_*/BENCH_* settings

mod common;

use common::ScratchDatabase;
use common::measure::ResultFile;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callbridge::auth::SessionResolver;
use callbridge::config::Config;
use callbridge::db::Db;

struct Stats {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn stats(mut samples: Vec<Duration>, total: Duration) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Stats {
        per_second: samples.len() as f64 / total.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

async fn measure<F, Fut>(iterations: usize, mut call: F) -> Stats
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..iterations / 10 {
        call().await;
    }
    let mut samples = Vec::with_capacity(iterations);
    let started = Instant::now();
    for _ in 0..iterations {
        let t = Instant::now();
        call().await;
        samples.push(t.elapsed());
    }
    stats(samples, started.elapsed())
}

fn row(name: &str, ours: &Stats, baseline: &Stats, baseline_name: &str) {
    println!(
        "| {name:<34} | {:>10.0}/s | {:>9.1?} | {:>9.1?} | {baseline_name:<28} | {:>10.0}/s | {:>9.1?} | {:>6.2}x |",
        ours.per_second,
        ours.p50,
        ours.p99,
        baseline.per_second,
        baseline.p99,
        ours.p99.as_secs_f64() / baseline.p99.as_secs_f64()
    );
}

fn main() {
    // `cargo test`/nextest also build and list bench targets; only `cargo bench` runs them.
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

async fn run() {
    let scratch = ScratchDatabase::create().await;
    let url = scratch.url.clone();

    let env = |ttl: &str| {
        [
            ("DATABASE_URL", url.as_str()),
            ("AUTH_SESSION_CACHE_TTL_SECS", ttl),
            ("DATABASE_POOL_MAX_SIZE", "4"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    };
    let cached_config = Config::load_from(None, env("60")).unwrap();
    let uncached_config = Config::load_from(None, env("0")).unwrap();
    callbridge::app::prepare_database(&cached_config)
        .await
        .unwrap();

    let db = Db::connect(&cached_config.database).unwrap();
    let client = db.client().await.unwrap();
    let user: i32 = client
        .query_one("insert into authjs.users (name, email) values ('Bench', 'bench@example.com') returning id", &[])
        .await
        .unwrap()
        .get(0);
    let token = uuid::Uuid::new_v4().to_string();
    client
        .execute(
            r#"insert into authjs.sessions ("userId", expires, "sessionToken") values ($1, now() + interval '1 day', $2)"#,
            &[&user, &token],
        )
        .await
        .unwrap();
    drop(client);

    let cached = SessionResolver::new(db.clone(), &cached_config.auth);
    let uncached = SessionResolver::new(
        Db::connect(&uncached_config.database).unwrap(),
        &uncached_config.auth,
    );

    // Baselines: the least any cache could do (a locked map lookup), and the least any
    // database lookup could cost (one trivial round trip through the same pool).
    let map: Mutex<HashMap<String, Arc<u64>>> =
        Mutex::new(HashMap::from([(token.clone(), Arc::new(1))]));
    let baseline_map = measure(200_000, || {
        let hit = map.lock().unwrap().get(&token).cloned();
        std::hint::black_box(hit);
        async {}
    })
    .await;
    let cached_stats = measure(200_000, || async {
        std::hint::black_box(cached.resolve(&token).await.unwrap().unwrap());
    })
    .await;
    let baseline_db = measure(3_000, || async {
        let client = db.client().await.unwrap();
        client.query_one("select 1", &[]).await.unwrap();
    })
    .await;
    let uncached_stats = measure(3_000, || async {
        std::hint::black_box(uncached.resolve(&token).await.unwrap().unwrap());
    })
    .await;

    println!("\nSession resolution (one task, this machine)\n");
    println!(
        "| {:<34} | {:>12} | {:>9} | {:>9} | {:<28} | {:>12} | {:>9} | {:>7} |",
        "measure", "throughput", "p50", "p99", "baseline (same run)", "throughput", "p99", "p99 ×"
    );
    println!("|{}|", "-".repeat(153));
    row(
        "cached lookup",
        &cached_stats,
        &baseline_map,
        "Mutex<HashMap> get",
    );
    row(
        "uncached lookup (session+user+orgs)",
        &uncached_stats,
        &baseline_db,
        "select 1 via the same pool",
    );

    let figures = |stats: &Stats| {
        serde_json::json!({
            "per_second": stats.per_second,
            "p50_us": stats.p50.as_secs_f64() * 1e6,
            "p99_us": stats.p99.as_secs_f64() * 1e6,
        })
    };
    let mut result = ResultFile::new("sessions");
    result.set("cached", figures(&cached_stats));
    result.set("cached_floor_mutex_hashmap", figures(&baseline_map));
    result.set("uncached", figures(&uncached_stats));
    result.set("uncached_floor_select_1", figures(&baseline_db));
    result.row(
        "cached lookup p99",
        format!("{:.2?}", cached_stats.p99),
        format!("Mutex<HashMap> get {:.2?}", baseline_map.p99),
        "",
    );
    result.row(
        "uncached lookup (session + user + organisations) p99",
        format!(
            "{:.2?} ({:.0}/s, one task)",
            uncached_stats.p99, uncached_stats.per_second
        ),
        format!("select 1 via the same pool {:.2?}", baseline_db.p99),
        "",
    );
    result.write(true, &[]);

    drop(cached);
    drop(uncached);
    drop(db);
    tokio::time::sleep(Duration::from_millis(200)).await;
    scratch.drop_now().await;
}
