#!/usr/bin/env bash
# `make test`: every test suite against real local servers (PostgreSQL, s3s-fs).
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh

ensure_postgres
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export TEST_S3_ENDPOINT="${TEST_S3_ENDPOINT:-http://127.0.0.1:9100}"
export TEST_S3_ACCESS_KEY="${TEST_S3_ACCESS_KEY:-cbtest}"
export TEST_S3_SECRET_KEY="${TEST_S3_SECRET_KEY:-cbtest-secret-key}"

run_dir="${TMPDIR:-/tmp}/callbridge-test-$$"
mkdir -p "$run_dir"
trap 'stop_pidfile "$run_dir/s3.pid"; rm -rf "$run_dir"' EXIT
start_s3 "${TEST_S3_ENDPOINT##*:}" "$run_dir/s3" "$TEST_S3_ACCESS_KEY" "$TEST_S3_SECRET_KEY" "$run_dir/s3.pid"

# Databases left by an interrupted run (templates are kept: they are reused). Only those
# created over an hour ago with nobody connected: another run on this machine may be live.
psql "$TEST_DATABASE_URL" -Atc "select datname from pg_database d where datname like 'cbt\_%' and datname not like 'cbt\_template\_%'
    and (pg_stat_file('base/' || oid || '/PG_VERSION')).modification < now() - interval '1 hour'
    and not exists (select 1 from pg_stat_activity a where a.datname = d.datname)" 2>/dev/null |
  while read -r stale; do psql "$TEST_DATABASE_URL" -qc "drop database if exists \"$stale\" with (force)" >/dev/null 2>&1 || true; done

# The edge shim's packages first: the Rust suites run its wrangler dry-runs too
# (tests/api/deployment_checklist.rs).
if ! command -v npm >/dev/null; then
  echo "npm is required for the edge-shim tests (Node 20: see docs/TOOLING.md)" >&2
  exit 1
fi
(cd edge-shim && { [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund --loglevel=error; })

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-targets --features sim --no-fail-fast
else
  cargo test --all-targets --features sim --no-fail-fast
fi
cargo test --doc

# The edge shim: strict type-check and its tests inside workerd (offline).
(cd edge-shim && npx tsc --noEmit && npm test)

# The frontend's TypeScript client (clients/ts): generated types current, tsc --strict, and
# every operation called through it against the container built above (docs/API_CONTRACT.md).
bash clients/ts/scripts/test-against-container.sh

# Schemathesis's short run (make conformance at ST_SHORT_EXAMPLES cases per operation) with
# the same binary: no 5xx and no answer the document does not describe (docs/SECURITY.md,
# "Schema testing"). The long run is in `make fuzz`.
command -v st >/dev/null || pip install -q 'schemathesis>=4,<5'
MAX_EXAMPLES=${ST_SHORT_EXAMPLES:-10} ST_TIMEOUT=${ST_SHORT_TIMEOUT:-240} bash .ci/schemathesis.sh

# Edge ↔ container parity: the same cases against the container and through the shim in
# workerd, with the binary nextest just built (docs/STRANGLER.md).
bash .ci/parity.sh
