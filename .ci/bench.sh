#!/usr/bin/env bash
# `make bench`: every benchmark, each printing its table with in-run floors and writing its
# result file; then .ci/bench-report.py checks the files are complete (invariants held) and
# regenerates docs/BENCHMARKS.md and docs/bench-results.json from them. Exits non-zero when a
# benchmark failed or a result file is missing or incomplete.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh
ensure_postgres
export BENCH_RESULTS_DIR="${BENCH_RESULTS_DIR:-$PWD/target/bench-results}"
rm -rf "$BENCH_RESULTS_DIR"
mkdir -p "$BENCH_RESULTS_DIR"
status=0
benches=(--bench sessions --bench http_load --bench media_bridge --bench translated_calls --bench interpreted_calls --bench recordings_upload)
# Build first, so the time below is bench time only (issue 15: at most 15 minutes).
cargo bench --no-run --features sim "${benches[@]}"
started=$SECONDS
cargo bench --no-fail-fast --features sim "${benches[@]:0:10}" || status=1
# The recording upload bench needs an S3 server (s3s-fs, as `make test` starts it).
export BENCH_S3_ENDPOINT="${BENCH_S3_ENDPOINT:-http://127.0.0.1:9100}"
export BENCH_S3_ACCESS_KEY="${BENCH_S3_ACCESS_KEY:-cbtest}"
export BENCH_S3_SECRET_KEY="${BENCH_S3_SECRET_KEY:-cbtest-secret-key}"
bench_dir="${TMPDIR:-/tmp}/callbridge-bench-$$"
mkdir -p "$bench_dir"
trap 'stop_pidfile "$bench_dir/s3.pid"; rm -rf "$bench_dir"' EXIT
start_s3 "${BENCH_S3_ENDPOINT##*:}" "$bench_dir/s3" "$BENCH_S3_ACCESS_KEY" "$BENCH_S3_SECRET_KEY" "$bench_dir/s3.pid"
cargo bench --features sim --bench recordings_upload || status=1
export BENCH_TOTAL_SECONDS=$((SECONDS - started))
echo "make bench: $BENCH_TOTAL_SECONDS s of bench time (build excluded)"
python3 .ci/bench-report.py "$BENCH_RESULTS_DIR" || status=1
exit "$status"
