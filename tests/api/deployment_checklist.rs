//! docs/DEPLOYMENT_CHECKLIST.md cannot drift: every command in its `sh` blocks is run here in
//! its dry-run form (the `# dry run:` comment, else the command itself, which then must
//! change nothing), with `callbridge` on PATH being the binary under test and a complete
//! production configuration in the environment. Each must exit 0.

use crate::common;

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BINARY: &str = env!("CARGO_BIN_EXE_callbridge");

/// `(command, dry-run form)` for every command line of the checklist's `sh` blocks.
fn checklist_commands() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("docs/DEPLOYMENT_CHECKLIST.md"))
        .expect("the checklist exists");
    let mut commands = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_block = !in_block && trimmed == "```sh";
            continue;
        }
        if !in_block || trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (command, dry_run) = match trimmed.split_once("# dry run:") {
            Some((command, dry_run)) => (command.trim(), dry_run.trim()),
            None => (trimmed, trimmed),
        };
        commands.push((command.to_owned(), dry_run.to_owned()));
    }
    commands
}

#[tokio::test]
async fn every_checklist_command_runs_in_its_dry_run_form() {
    let commands = checklist_commands();
    let programs: Vec<&str> = commands
        .iter()
        .filter_map(|(command, _)| command.split_whitespace().next())
        .collect();
    for expected in ["make", "callbridge", "cd"] {
        assert!(
            programs.contains(&expected),
            "the checklist lost its {expected} commands: {commands:?}"
        );
    }

    let database = common::fresh_database().await;
    let bin_dir = Path::new(BINARY).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (command, dry_run) in &commands {
        let started = std::time::Instant::now();
        let output = Command::new("bash")
            .args(["-euo", "pipefail", "-c", dry_run])
            .current_dir(ROOT)
            .env_clear()
            .env("PATH", &path)
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("WRANGLER_SEND_METRICS", "false")
            .envs(common::PRODUCTION_ENV.iter().copied())
            // A local database needs no sslmode=require, even in production.
            .env("DATABASE_URL", common::database_url(&database))
            .env("DATABASE_DIRECT_URL", common::database_url(&database))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "`{dry_run}` (for `{command}`) failed with {}:\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("ok in {:?}: {dry_run}", started.elapsed());
    }

    // The dry-run migration changed nothing: the template's schema is already complete.
    let status = Command::new(BINARY)
        .args(["migrate", "--dry-run"])
        .env_clear()
        .env("APP_ENV", "production")
        .env("DATABASE_DIRECT_URL", common::database_url(&database))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(stdout.contains("0 pending migration(s)"), "{stdout}");
    common::drop_database_blocking(&database);
}

#[tokio::test]
async fn migrate_dry_run_lists_pending_migrations_on_an_empty_database_and_writes_nothing() {
    let (admin, connection) =
        tokio_postgres::connect(&common::admin_database_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let name = format!("cbt_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("create database {name}"))
        .await
        .unwrap();
    let output = Command::new(BINARY)
        .args(["migrate", "--dry-run"])
        .env_clear()
        .env("APP_ENV", "production")
        .env("DATABASE_DIRECT_URL", common::database_url(&name))
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let embedded = callbridge::db::MIGRATOR.iter().count();
    let pending = stdout.lines().filter(|l| l.starts_with("pending ")).count();
    assert_eq!(pending, embedded, "{stdout}");
    assert!(stdout.contains(&format!("{embedded} pending migration(s)")));
    let (client, connection) =
        tokio_postgres::connect(&common::database_url(&name), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let tables: i64 = client
        .query_one(
            "select count(*) from pg_tables where schemaname not in ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .unwrap()
        .get("count");
    assert_eq!(tables, 0, "a dry run creates nothing");
    drop(client);
    common::drop_database_blocking(&name);
}
