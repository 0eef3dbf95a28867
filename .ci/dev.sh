#!/usr/bin/env bash
# `make dev`: the service on local defaults: real PostgreSQL, s3s-fs as the R2 stand-in,
# migrations applied at start, providers disabled until their keys are set. It runs the
# `all` role: HTTP, webhooks and media *and* the worker (jobs, cron, stream re-attach), so a
# webhook is processed and a call goes through its whole life with nothing else started.
# tests/first_day.rs starts the binary exactly this way (same role, same defaults).
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh

ensure_postgres
export APP_ENV="${APP_ENV:-development}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/callbridge}"
export R2_ENDPOINT="${R2_ENDPOINT:-http://127.0.0.1:9000}"
export R2_ACCESS_KEY_ID="${R2_ACCESS_KEY_ID:-callbridge-dev}"
export R2_SECRET_ACCESS_KEY="${R2_SECRET_ACCESS_KEY:-callbridge-dev-secret}"

database=$(python3 -c 'import sys,urllib.parse as u; print(u.urlparse(sys.argv[1]).path.lstrip("/"))' "$DATABASE_URL")
admin_url=$(python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path="/postgres").geturl())' "$DATABASE_URL")
if ! psql "$admin_url" -Atc "select 1 from pg_database where datname = '$database'" | grep -q 1; then
  log "creating database $database"
  psql "$admin_url" -qc "create database \"$database\""
fi

dev_dir="$PWD/.dev"
mkdir -p "$dev_dir"
trap 'stop_pidfile "$dev_dir/s3.pid"' EXIT
start_s3 "${R2_ENDPOINT##*:}" "$dev_dir/s3" "$R2_ACCESS_KEY_ID" "$R2_SECRET_ACCESS_KEY" "$dev_dir/s3.pid"

role="${CALLBRIDGE_ROLE:-all}"
log "starting callbridge $role on http://127.0.0.1:${PORT:-8080} (ctrl-c to stop)"
# The `sim` feature only adds the `sim`/`demo` subcommands; it keeps one build for
# `make dev`, `make demo` and `make test` (no second compile of the crate).
cargo run --features sim --bin callbridge -- "$role"
