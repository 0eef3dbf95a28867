#!/usr/bin/env bash
# `make bench`: every benchmark, each printing its table with in-run baselines.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh
ensure_postgres
cargo bench --features sim --bench sessions --bench http_load
