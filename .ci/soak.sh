#!/usr/bin/env bash
# `make soak`: the stress runs at full scale, then the upload's memory. Every soak scenario is
# its own test binary `tests/soak_<name>.rs`; with CALLBRIDGE_SOAK=long it runs at full
# scale (its short form runs inside `make test`). Each asserts its invariants from the
# database and prints one line starting with `soak <name>:`; the 1 GiB upload bench
# (benches/recordings_upload.rs) reports the server's peak and growth RSS read from
# /proc/<pid>/status. A summary of every figure is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh

ensure_postgres
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export TEST_S3_ENDPOINT="${TEST_S3_ENDPOINT:-http://127.0.0.1:9100}"
export TEST_S3_ACCESS_KEY="${TEST_S3_ACCESS_KEY:-cbtest}"
export TEST_S3_SECRET_KEY="${TEST_S3_SECRET_KEY:-cbtest-secret-key}"
export BENCH_S3_ENDPOINT="${BENCH_S3_ENDPOINT:-$TEST_S3_ENDPOINT}"
export BENCH_S3_ACCESS_KEY="${BENCH_S3_ACCESS_KEY:-$TEST_S3_ACCESS_KEY}"
export BENCH_S3_SECRET_KEY="${BENCH_S3_SECRET_KEY:-$TEST_S3_SECRET_KEY}"

run_dir="${TMPDIR:-/tmp}/callbridge-soak-$$"
mkdir -p "$run_dir"
trap 'stop_pidfile "$run_dir/s3.pid"; rm -rf "$run_dir"' EXIT
start_s3 "${TEST_S3_ENDPOINT##*:}" "$run_dir/s3" "$TEST_S3_ACCESS_KEY" "$TEST_S3_SECRET_KEY" "$run_dir/s3.pid"

status=0
log "soak scenarios at full scale (CALLBRIDGE_SOAK=long), one at a time"
# One at a time (--no-capture runs serially): the figures are per scenario, not a contest
# for the same cores.
if cargo nextest --version >/dev/null 2>&1; then
  CALLBRIDGE_SOAK=long cargo nextest run --features sim -E 'binary(/^soak_/)' --run-ignored all \
    --no-capture --no-fail-fast 2>&1 | tee "$run_dir/soak.log" || status=1
else
  tests=()
  for file in tests/soak_*.rs; do tests+=(--test "$(basename "$file" .rs)"); done
  CALLBRIDGE_SOAK=long cargo test --features sim "${tests[@]}" --no-fail-fast -- \
    --nocapture --include-ignored --test-threads 1 2>&1 | tee "$run_dir/soak.log" || status=1
fi

log "1 GiB upload: the server's memory from outside the process (VmHWM, VmRSS)"
cargo bench --features sim --bench recordings_upload 2>&1 | tee "$run_dir/upload.log" || status=1

echo
log "soak figures"
# One line per scenario, each with the figures issue #19 asks for: turns produced vs stored
# and the gap error per track (rolling_restart), deliveries per second overall and through
# the PostgreSQL restart (webhook_storm), the 5xx count (bad_input), and the AssemblyAI
# faults' turns and gaps; then the upload's peak and growth RSS. A scenario that printed
# nothing (it failed before its figures) is named, so a missing figure cannot go unnoticed.
for file in tests/soak_*.rs; do
  name="$(basename "$file" .rs)"
  name="${name#soak_}"
  grep -h "^soak $name:" "$run_dir/soak.log" || { echo "soak $name: (no figures: the scenario failed before printing them)"; status=1; }
done
grep -h '^upload memory' "$run_dir/upload.log" || { echo "upload memory: (no figures: the bench failed before printing them)"; status=1; }
if [ "$status" -ne 0 ]; then
  echo "make soak: FAILED (see above)" >&2
fi
exit "$status"
