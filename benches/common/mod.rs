//! Set-up every benchmark shares: a scratch database on the bench's PostgreSQL, free loopback
//! ports, and child processes that die with the benchmark.
#![allow(dead_code)]
#![allow(clippy::disallowed_methods)] // tests and benchmarks read their own TEST_*/BENCH_* settings

pub mod measure;
#[cfg(feature = "sim")]
pub mod translating;

use std::process::Child;
use std::time::Duration;

/// A database of its own, created on `BENCH_DATABASE_URL`'s server and dropped by `drop_now`.
pub struct ScratchDatabase {
    admin_url: String,
    pub name: String,
    /// Connection URL of the scratch database.
    pub url: url::Url,
}

impl ScratchDatabase {
    pub async fn create() -> Self {
        let admin_url = std::env::var("BENCH_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("cb_bench_{}", uuid::Uuid::new_v4().simple());
        let admin = callbridge::db::connect_direct(&admin_url)
            .await
            .expect("PostgreSQL reachable at BENCH_DATABASE_URL");
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("creating the scratch database");
        let mut url = url::Url::parse(&admin_url).expect("BENCH_DATABASE_URL is a URL");
        url.set_path(&format!("/{name}"));
        Self {
            admin_url,
            name,
            url,
        }
    }

    /// Drops the database, forcing off any connection still open.
    pub async fn drop_now(self) {
        let dropped = async {
            let admin = callbridge::db::connect_direct(&self.admin_url).await?;
            admin
                .batch_execute(&format!(
                    "drop database if exists {} with (force)",
                    self.name
                ))
                .await?;
            Ok::<_, anyhow::Error>(())
        };
        if let Err(error) = dropped.await {
            eprintln!("could not drop scratch database {}: {error:#}", self.name);
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// A child process killed (and reaped) when the guard goes out of scope.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `q` quantile of nanosecond samples (sorts them).
pub fn quantile(values: &mut [u64], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    Duration::from_nanos(values[((values.len() as f64 * q) as usize).min(values.len() - 1)])
}

/// Waits until something listens on the loopback `port` (a child server starting).
pub async fn wait_for_port(port: u16) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing listens on {port}");
}
