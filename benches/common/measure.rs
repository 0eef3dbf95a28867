//! What every benchmark counts the same way: CPU and memory of a process from `/proc`, the
//! CPU of the PostgreSQL backends serving a database, statements PostgreSQL ran for it, CPU
//! pinning, and the machine-readable result file each benchmark writes (docs/BENCHMARKS.md).

use std::process::Command;

/// User + system CPU seconds of a process (or a thread of it), from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = cpu_user_system(pid);
    user + system
}

/// User and system (kernel: system calls, the loopback network stack, wake-ups) CPU seconds
/// of a process, apart: where the work goes tells what to make cheaper.
pub fn cpu_user_system(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    let hz = clock_ticks_per_second();
    (ticks(11) / hz, ticks(12) / hz)
}

fn clock_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux this runs on; `getconf` says so when it can.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The PostgreSQL side of a run against one database: the CPU of every backend connected to
/// it (from `/proc/<pid>/stat` of the pids `pg_stat_activity` lists) and the transactions it
/// committed or rolled back (`pg_stat_database`; the service runs each statement outside an
/// explicit transaction unless it needs one, so this counts round trips that did work).
/// Read through a connection of our own, whose own work is left out.
pub struct PgMeter {
    client: tokio_postgres::Client,
    url: String,
    database: String,
    backends: Vec<(u32, f64)>,
    transactions: i64,
}

impl PgMeter {
    pub async fn new(url: &str, database: &str) -> Self {
        let client = callbridge::db::connect_direct(url)
            .await
            .expect("PostgreSQL reachable for the meter");
        Self {
            client,
            url: url.to_owned(),
            database: database.to_owned(),
            backends: Vec::new(),
            transactions: 0,
        }
    }

    async fn backend_pids(&self) -> Vec<u32> {
        self.backends_by_application()
            .await
            .into_iter()
            .map(|(pid, _)| pid)
            .collect()
    }

    /// The database's backends (but the meter's own) and the `application_name` each
    /// connected with.
    async fn backends_by_application(&self) -> Vec<(u32, String)> {
        self.client
            .query(
                "select pid, application_name from pg_stat_activity
                 where datname = $1 and pid <> pg_backend_pid()",
                &[&self.database],
            )
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, String>(1)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// CPU seconds since `start` of the backends that connected as `application` (call
    /// after [`Self::stop`], which waits for the statistics).
    pub async fn cpu_of_application(&self, application: &str) -> f64 {
        let mut cpu = 0.0;
        for (pid, name) in self.backends_by_application().await {
            if name != application {
                continue;
            }
            let before = self
                .backends
                .iter()
                .find(|(p, _)| *p == pid)
                .map_or(0.0, |(_, c)| *c);
            cpu += (cpu_seconds(pid) - before).max(0.0);
        }
        cpu
    }

    async fn transactions_now(&self) -> i64 {
        // A fresh snapshot each time; the meter's own two statements per reading are removed.
        let _ = self
            .client
            .batch_execute("select pg_stat_clear_snapshot()")
            .await;
        self.client
            .query_one(
                "select (xact_commit + xact_rollback)::bigint from pg_stat_database where datname = $1",
                &[&self.database],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0)
    }

    /// The URL and database name, for a reader of its own.
    pub fn connection(&self) -> (String, String) {
        (self.url.clone(), self.database.clone())
    }

    /// Starts a measurement window.
    pub async fn start(&mut self) {
        self.backends = self
            .backend_pids()
            .await
            .into_iter()
            .map(|pid| (pid, cpu_seconds(pid)))
            .collect();
        self.transactions = self.transactions_now().await;
    }

    /// CPU seconds of the database's backends and transactions since `start`. Backends that
    /// connected during the window count from zero; ones that ended during it are lost
    /// (the service's pool keeps its connections, so none do in these runs).
    pub async fn stop(&self) -> PgUsage {
        // Backends flush their statistics at most once a second when idle.
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        let mut cpu = 0.0;
        let pids = self.backend_pids().await;
        for pid in &pids {
            let before = self
                .backends
                .iter()
                .find(|(p, _)| p == pid)
                .map_or(0.0, |(_, c)| *c);
            cpu += (cpu_seconds(*pid) - before).max(0.0);
        }
        // Each reading is two transactions of the meter's own connection.
        let transactions = (self.transactions_now().await - self.transactions - 2).max(0);
        PgUsage {
            cpu_seconds: cpu,
            backends: pids.len(),
            transactions,
        }
    }
}

pub struct PgUsage {
    pub cpu_seconds: f64,
    pub backends: usize,
    pub transactions: i64,
}

/// CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether the run pins the load generator and the service to different CPUs: with
/// `taskset` and at least two CPUs, unless `BENCH_PIN=0`.
pub fn pinning() -> bool {
    std::env::var("BENCH_PIN").map_or(true, |v| v != "0")
        && cpus() >= 2
        && Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Pins this process (all its threads so far; later ones inherit) to `cpu`. Call before
/// building the runtime.
pub fn pin_self(cpu: usize) -> bool {
    Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `program` started under `taskset -c <cpu>` when pinning (taskset execs it, so the child's
/// pid is the program's).
pub fn command_on(cpu: Option<usize>, program: &str) -> Command {
    match cpu {
        Some(cpu) => {
            let mut command = Command::new("taskset");
            command.args(["-c", &cpu.to_string(), program]);
            command
        }
        None => Command::new(program),
    }
}

/// `callbridge serve` on `port`, pinned to `cpu` when given, with the settings every bench's
/// service shares (development, no per-session or per-IP limits that would throttle a load
/// generator, migrations on start, no R2, quiet logs); callers add their providers' settings
/// and spawn it. `BENCH_SERVER_BIN` runs another build of the server (a before/after with the
/// same load), `BENCH_SERVER_WRAPPER` runs it under a profiler (e.g.
/// `valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p`).
pub fn serve_command(
    cpu: Option<usize>,
    port: u16,
    database_url: &str,
    auth_secret: &str,
) -> Command {
    let server_bin = std::env::var("BENCH_SERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_callbridge").into());
    let wrapper: Vec<String> = std::env::var("BENCH_SERVER_WRAPPER")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = command_on(cpu, program);
            command.args(args).arg(&server_bin);
            command
        }
        None => command_on(cpu, &server_bin),
    };
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
            ("DATABASE_URL", database_url),
            ("RUN_MIGRATIONS_ON_START", "true"),
            ("DATABASE_POOL_MAX_SIZE", "16"),
            ("R2_ENDPOINT", "http://127.0.0.1:9"),
            ("R2_CREATE_BUCKET", "false"),
            ("LOG_LEVEL", "error"),
            ("AUTH_SECRET", auth_secret),
        ]);
    command
}

/// The result file of one benchmark: `$BENCH_RESULTS_DIR/<name>.json` (default
/// `target/bench-results`), with where and when it was measured. `.ci/bench-report.py`
/// checks every file is complete and renders docs/BENCHMARKS.md from them.
pub struct ResultFile {
    name: String,
    figures: serde_json::Map<String, serde_json::Value>,
    table: Vec<serde_json::Value>,
}

impl ResultFile {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            figures: serde_json::Map::new(),
            table: Vec::new(),
        }
    }

    /// A row of the benchmark's table in docs/BENCHMARKS.md: what was measured, the figure,
    /// the floor measured in the same run (or empty), and the goal (or empty).
    pub fn row(&mut self, measure: &str, figure: String, floor: String, goal: &str) {
        self.table.push(serde_json::json!({
            "measure": measure, "figure": figure, "floor": floor, "goal": goal,
        }));
    }

    pub fn set(&mut self, key: &str, value: impl serde::Serialize) {
        self.figures.insert(
            key.to_owned(),
            serde_json::to_value(value).expect("a figure serialises"),
        );
    }

    /// Writes the file; `complete` is false when an invariant failed (the report script
    /// refuses incomplete files).
    pub fn write(mut self, complete: bool, failures: &[String]) {
        let run = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let dirty = !run("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
        self.figures
            .insert("benchmark".into(), self.name.clone().into());
        self.figures.insert(
            "commit".into(),
            run("git", &["rev-parse", "--short=12", "HEAD"]).into(),
        );
        self.figures.insert("dirty_tree".into(), dirty.into());
        self.figures.insert(
            "date".into(),
            run("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).into(),
        );
        self.figures
            .insert("host".into(), run("hostname", &[]).into());
        self.figures.insert(
            "cpu_model".into(),
            std::fs::read_to_string("/proc/cpuinfo")
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .unwrap_or("")
                .trim()
                .into(),
        );
        self.figures.insert("cpus".into(), cpus().into());
        self.figures.insert(
            "load_average".into(),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
                .into(),
        );
        self.figures
            .insert("table".into(), std::mem::take(&mut self.table).into());
        self.figures.insert("complete".into(), complete.into());
        self.figures
            .insert("invariant_failures".into(), failures.to_vec().into());
        let dir =
            std::env::var("BENCH_RESULTS_DIR").unwrap_or_else(|_| "target/bench-results".into());
        std::fs::create_dir_all(&dir).expect("the results directory");
        let path = format!("{dir}/{}.json", self.name);
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&self.figures).expect("JSON"),
        )
        .expect("writing the result file");
        println!("\nresult file: {path}");
    }
}
