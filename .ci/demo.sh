#!/usr/bin/env bash
# `make demo`: the service and every simulator in one process, one interpreted call.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh
ensure_postgres
cargo run --quiet --features sim --bin callbridge -- demo
