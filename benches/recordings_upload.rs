//! Streaming a 1 GiB recording through the container (`POST /api/recordings` on the release
//! binary, its own process): peak RSS of that process (`VmHWM`; goal < 64 MiB) and
//! throughput, against a direct upload of the same bytes to the same S3 server in the same
//! run (one presigned PUT, what a browser's direct upload does). Needs PostgreSQL
//! (`BENCH_DATABASE_URL`) and an S3 server (`BENCH_S3_ENDPOINT`, default s3s-fs on
//! 127.0.0.1:9100 as `.ci/bench.sh` starts it). `BENCH_RECORDING_BYTES` changes the size.
#![allow(clippy::disallowed_methods)] // tests and benchmarks read their own TEST_*/BENCH_* settings

mod common;

use common::measure::ResultFile;

use common::{ChildGuard, ScratchDatabase, free_port};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use callbridge::config::Config;
use callbridge::storage::Storage;
use sha2::{Digest as _, Sha256};

const CHUNK: usize = 1024 * 1024;

struct Server {
    child: ChildGuard,
    port: u16,
}

/// `VmHWM` / `VmRSS` of a process, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// The body: a WAV header then a fixed pseudo-random MiB repeated (incompressible enough:
/// nothing on the path compresses), produced on the fly so the client holds ~1 MiB.
fn body_chunks(total: usize) -> impl Iterator<Item = Bytes> {
    let mut block = vec![0u8; CHUNK];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for byte in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    let mut first = block.clone();
    first[..4].copy_from_slice(b"RIFF");
    first[4..8].copy_from_slice(&((total - 8) as u32).to_le_bytes());
    first[8..16].copy_from_slice(b"WAVEfmt ");
    let (first, block) = (Bytes::from(first), Bytes::from(block));
    (0..total.div_ceil(CHUNK)).map(move |i| {
        let chunk = if i == 0 { first.clone() } else { block.clone() };
        chunk.slice(..CHUNK.min(total - i * CHUNK))
    })
}

fn stream_body(total: usize) -> reqwest::Body {
    reqwest::Body::wrap_stream(futures_util::stream::iter(
        body_chunks(total).map(Ok::<_, std::io::Error>),
    ))
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

async fn run() {
    let total: usize = std::env::var("BENCH_RECORDING_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024 * 1024 * 1024);
    let s3_endpoint =
        std::env::var("BENCH_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9100".into());
    let s3_key = std::env::var("BENCH_S3_ACCESS_KEY").unwrap_or_else(|_| "cbtest".into());
    let s3_secret =
        std::env::var("BENCH_S3_SECRET_KEY").unwrap_or_else(|_| "cbtest-secret-key".into());
    let bucket = format!(
        "cb-bench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let scratch = ScratchDatabase::create().await;
    let url = scratch.url.clone();

    let env: Vec<(String, String)> = [
        ("APP_ENV", "development"),
        // Load generators: the per-session and per-IP request limits would throttle them.
        ("RATE_LIMIT_SESSION_PER_MIN", "0"),
        ("RATE_LIMIT_ANONYMOUS_PER_MIN", "0"),
        ("BIND_ADDRESS", "127.0.0.1"),
        ("DATABASE_URL", url.as_str()),
        ("RUN_MIGRATIONS_ON_START", "true"),
        ("R2_ENDPOINT", &s3_endpoint),
        ("R2_ACCESS_KEY_ID", &s3_key),
        ("R2_SECRET_ACCESS_KEY", &s3_secret),
        ("R2_BUCKET", &bucket),
        ("RECORDINGS_MAX_BYTES", "4294967296"),
        ("LOG_LEVEL", "error"),
        ("LOG_FORMAT", "json"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = Config::load_from(None, env.clone()).unwrap();
    let storage = Storage::new(&config.storage);
    storage
        .ensure_bucket()
        .await
        .expect("the S3 server is reachable");

    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_callbridge"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the release binary starts");
    let server = Server {
        child: ChildGuard(child),
        port,
    };
    let base = format!("http://127.0.0.1:{}", server.port);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    for _ in 0..300 {
        if http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let db = callbridge::db::connect_direct(url.as_str()).await.unwrap();
    let user: i32 = db
        .query_one(
            "insert into authjs.users (name, email) values ('Bench', 'b@example.com') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let token = uuid::Uuid::new_v4().to_string();
    db.execute(
        r#"insert into authjs.sessions ("userId", expires, "sessionToken") values ($1, now() + interval '1 day', $2)"#,
        &[&user, &token],
    )
    .await
    .unwrap();

    let mut hasher = Sha256::new();
    for chunk in body_chunks(total) {
        hasher.update(&chunk);
    }
    let expected_sha = hex::encode(hasher.finalize());
    let pid = server.child.0.id();
    let rss_before = memory_kib(pid, "VmRSS:");

    // Through the container.
    let started = Instant::now();
    let response = http
        .post(format!("{base}/api/recordings"))
        .header("cookie", format!("authjs.session-token={token}"))
        .header("origin", "http://localhost:3000")
        .header("content-type", "audio/wav")
        .header("content-length", total.to_string())
        .body(stream_body(total))
        .send()
        .await
        .expect("the upload request");
    let status = response.status();
    let recording: serde_json::Value = response.json().await.unwrap_or_default();
    let through = started.elapsed();
    let peak_kib = memory_kib(pid, "VmHWM:");
    let rss_after = memory_kib(pid, "VmRSS:");
    assert_eq!(status, 201, "upload failed: {recording}");
    assert_eq!(recording["versions"][0]["size_bytes"], total);
    assert_eq!(recording["versions"][0]["sha256"], expected_sha.as_str());

    // Direct to the same S3 server: one presigned PUT of the same bytes.
    let direct_key = "bench/direct.wav";
    let (put_url, _) = callbridge::storage::objects::presign_put(
        &storage,
        direct_key,
        "audio/wav",
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let put = http
        .put(put_url)
        .header("content-type", "audio/wav")
        .header("content-length", total.to_string())
        .body(stream_body(total))
        .send()
        .await
        .expect("the direct PUT");
    let direct = started.elapsed();
    assert!(put.status().is_success(), "direct PUT: {}", put.status());

    let mib = total as f64 / (1024.0 * 1024.0);
    let rate = |d: Duration| mib / d.as_secs_f64();
    println!(
        "\nRecording upload, {mib:.0} MiB, release binary; client, server, S3 (s3s-fs) and PostgreSQL share this machine\n"
    );
    println!(
        "| path | seconds | MiB/s | vs direct (same run) | server peak RSS (VmRSS before) | goal |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    println!(
        "| direct presigned PUT to S3 (baseline) | {:.2} | {:.1} | 1.00x | | |",
        direct.as_secs_f64(),
        rate(direct)
    );
    println!(
        "| POST /api/recordings (multipart, {} MiB parts) | {:.2} | {:.1} | {:.2}x | {:.1} MiB ({:.1} MiB) | peak RSS < 64 MiB |",
        config.recordings.part_size / (1024 * 1024),
        through.as_secs_f64(),
        rate(through),
        rate(through) / rate(direct),
        peak_kib as f64 / 1024.0,
        rss_before as f64 / 1024.0,
    );
    // Read from outside the process, in this one run: the peak (VmHWM, the high-water mark
    // since start) and its growth over the resident set just before the upload.
    println!(
        "\nupload memory: {mib:.0} MiB through POST /api/recordings: server peak RSS (VmHWM) {:.1} MiB, \
         growth {:.1} MiB over VmRSS before the upload ({:.1} MiB), VmRSS after {:.1} MiB; \
         goal peak < 64 MiB: {}",
        peak_kib as f64 / 1024.0,
        peak_kib.saturating_sub(rss_before) as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        if peak_kib < 64 * 1024 {
            "met"
        } else {
            "MISSED"
        }
    );

    let mut result = ResultFile::new("recordings_upload");
    result.set("mib", mib);
    result.set("direct_mib_per_second", rate(direct));
    result.set("upload_mib_per_second", rate(through));
    result.set("server_peak_rss_mib", peak_kib as f64 / 1024.0);
    result.set("server_rss_before_mib", rss_before as f64 / 1024.0);
    result.set("server_rss_after_mib", rss_after as f64 / 1024.0);
    result.row(
        "POST /api/recordings, 1 GiB: throughput",
        format!("{:.1} MiB/s", rate(through)),
        format!("direct presigned PUT {:.1} MiB/s", rate(direct)),
        "",
    );
    result.row(
        "POST /api/recordings, 1 GiB: server peak RSS (VmHWM)",
        format!("{:.1} MiB", peak_kib as f64 / 1024.0),
        format!("idle {:.1} MiB", rss_before as f64 / 1024.0),
        "< 64 MiB",
    );
    result.write(true, &[]);

    // Leave no gigabytes behind.
    drop(server);
    let listed = storage
        .client()
        .list_objects_v2()
        .bucket(storage.bucket())
        .send()
        .await
        .unwrap();
    for object in listed.contents() {
        if let Some(key) = object.key() {
            let _ = callbridge::storage::objects::delete(&storage, key).await;
        }
    }
    let _ = storage
        .client()
        .delete_bucket()
        .bucket(storage.bucket())
        .send()
        .await;
    drop(db);
    scratch.drop_now().await;
}
