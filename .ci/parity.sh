#!/usr/bin/env bash
# Edge ↔ container parity (docs/STRANGLER.md): one list of HTTP cases
# (edge-shim/parity/cases.mjs) and WebSocket cases (edge-shim/parity/ws-cases.mjs) sent to the
# container directly and through the edge shim running in workerd (`wrangler dev --local`) with
# the edge owning every route that has an edge handler; status, bodies, the headers that
# matter, WebSocket messages and the database effects must match. Both sides stream to one
# AssemblyAI simulator (edge-shim/parity/aai-sim.mjs, Node + ws) started here.
# It also checks the edge's OpenAPI snapshot (edge-shim/openapi.json) against the container's
# /api/openapi.json and that src/generated/openapi.d.ts is generated from that snapshot.
#
#   bash .ci/parity.sh                      # binary: ${CARGO_TARGET_DIR:-target}/debug/callbridge
#   CALLBRIDGE_BIN=/path/to/callbridge bash .ci/parity.sh
#
# The container enforces the edge signature (EDGE_SHARED_SECRET): run.mjs signs what it sends
# to it directly as the shim would; /api/openapi.json is on its unsigned allow-list for the
# snapshot check.
# Creates a fresh database; then, for each AUTH_TOKEN_STORAGE in PARITY_STORAGES (default
# "raw dual hashed"), starts the container and wrangler on free loopback ports with it and runs
# edge-shim/parity/run.mjs; always stops both and drops the database. Prints a total
# `parity: N passed, M failed`; exits non-zero on any mismatch or setup failure.
# PARITY_KEEP_LOGS=1 keeps the container/wrangler/simulator logs and prints where;
# PARITY_VERBOSE=1 prints each case's (container) body or WebSocket messages.
# PARITY_REHEARSE=1 (`make rehearse`) runs only the job phase (parity/jobs-run.mjs) and the
# retirement rehearsal: webhooks, telnyx.event and the cron tasks at the edge with no container
# worker, then what still needs the container. The full suite (make test) runs both too.
# Needs: the built container binary (this script never runs cargo), Node 20 + npm,
# PostgreSQL on PGHOST:PGPORT (default 127.0.0.1:5432) reachable as PGUSER (default postgres)
# without a password (trust), as the local cluster is set up.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. .ci/lib.sh

BIN=${CALLBRIDGE_BIN:-${CARGO_TARGET_DIR:-target}/debug/callbridge}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
DB="parity_$(date +%s)_$$"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/callbridge-parity.XXXXXX")
# The same value on both sides: the shim signs what it forwards with it.
EDGE_SECRET=parity-edge-shared-secret
CONTAINER_PID=""
WRANGLER_PID=""
SIM_PID=""
AAI_KEY=parity-assemblyai-key
SUMMARY_PRINTED=""

if [ ! -x "$BIN" ]; then
  echo "parity: no container binary at $BIN (build it with cargo, or set CALLBRIDGE_BIN)" >&2
  echo "parity: 0 passed, 1 failed"
  exit 1
fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

stop_servers() {
  if [ -n "$WRANGLER_PID" ]; then
    kill -TERM -- "-$WRANGLER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$WRANGLER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$WRANGLER_PID" 2>/dev/null || true
    WRANGLER_PID=""
  fi
  if [ -n "$CONTAINER_PID" ]; then
    kill -TERM "$CONTAINER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$CONTAINER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$CONTAINER_PID" 2>/dev/null || true
    CONTAINER_PID=""
  fi
}

cleanup() {
  local status=$?
  set +e
  stop_servers
  if [ -n "$SIM_PID" ]; then kill -TERM "$SIM_PID" 2>/dev/null; wait "$SIM_PID" 2>/dev/null; SIM_PID=""; fi
  stop_pidfile "$WORK/s3.pid"
  psql -q -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres \
    -c "drop database if exists \"$DB\" with (force)" >/dev/null 2>&1
  if [ "$status" -ne 0 ] && [ -z "${PARITY_KEEP_LOGS:-}" ]; then
    for f in "$WORK"/container.log "$WORK"/wrangler.log "$WORK"/aai-sim.log; do
      [ -s "$f" ] && { echo "---- last lines of $(basename "$f")" >&2; tail -n 40 "$f" >&2; }
    done
  fi
  rm -rf "$ROOT/edge-shim/parity/.wrangler" # wrangler's bundle of the parity Worker
  # A setup failure (no server, no database) still ends with the summary line.
  [ -z "$SUMMARY_PRINTED" ] && [ "$status" -ne 0 ] && echo "parity: 0 passed, 1 failed"
  [ -n "${PARITY_KEEP_LOGS:-}" ] && echo "parity: logs kept in $WORK" >&2 || rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

wait_http() { # URL SECONDS PID NAME
  local url=$1 seconds=$2 pid=$3 name=$4
  for _ in $(seq 1 $((seconds * 10))); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "parity: $name exited before answering $url" >&2
      return 1
    fi
    curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "parity: $name did not answer $url within $seconds s" >&2
  return 1
}

command -v node >/dev/null || { echo "parity: Node 20 is required" >&2; exit 1; }
ensure_postgres

cd "$ROOT/edge-shim"
if [ ! -x node_modules/.bin/wrangler ] || [ ! -d node_modules/pg ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "npm ci (edge-shim)"
  npm ci --no-audit --no-fund --loglevel=error
fi
TELNYX_PUBLIC_KEY=$(node --input-type=module -e 'import { TELNYX_PUBLIC_KEY } from "./parity/fixtures.mjs"; console.log(TELNYX_PUBLIC_KEY)')
# POST /webhooks/assemblyai: the same secret on both sides (parity/cases.mjs sends it).
AAI_WEBHOOK_SECRET=$(node --input-type=module -e 'import { AAI_WEBHOOK_SECRET } from "./parity/fixtures.mjs"; console.log(AAI_WEBHOOK_SECRET)')

log "starting the AssemblyAI simulator (parity/aai-sim.mjs)"
node parity/aai-sim.mjs --port 0 --key "$AAI_KEY" >"$WORK/aai-sim.log" 2>&1 &
SIM_PID=$!
SIM_PORT=""
for _ in $(seq 1 100); do
  SIM_PORT=$(sed -nE 's/^listening ([0-9]+)$/\1/p' "$WORK/aai-sim.log")
  [ -n "$SIM_PORT" ] && break
  kill -0 "$SIM_PID" 2>/dev/null || { echo "parity: the AssemblyAI simulator exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$SIM_PORT" ] || { echo "parity: the AssemblyAI simulator did not start" >&2; exit 1; }
AAI_URL="ws://127.0.0.1:$SIM_PORT/v3/ws"

# The recordings phase (parity/recordings-run.mjs): an s3s-fs the container's worker stores
# recordings in (the edge stores them in its R2 binding), AssemblyAI's async API on a port both
# sides are told (the phase serves it), and the webhook base both give AssemblyAI.
S3_PORT=$(free_port)
S3_DIR="$WORK/s3"
start_s3 "$S3_PORT" "$S3_DIR" cbtest cbtest-secret-key "$WORK/s3.pid"
export PARITY_S3_ENDPOINT="http://127.0.0.1:$S3_PORT" PARITY_S3_DIR="$S3_DIR" PARITY_S3_BUCKET=parity-recordings
PARITY_AAI_ASYNC_PORT=$(free_port)
export PARITY_AAI_ASYNC_PORT PARITY_WEBHOOK_BASE=http://parity.test
# The Telnyx Call Control stand-in of the call.max_duration phase (parity/max-duration-run.mjs)
# listens here while the phase runs; the parity Worker's TELNYX_API_BASE names it.
PARITY_TELNYX_PORT=$(free_port)
export PARITY_TELNYX_PORT

log "creating database $DB"
psql -q -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -c "create database \"$DB\"" >/dev/null

# One round: the container and the shim with AUTH_TOKEN_STORAGE=$1, then the whole suite.
round() {
  local storage=$1
  DIRECT_PORT=$(free_port)
  SHIM_PORT=$(free_port)
  log "[$storage] starting the container ($BIN) on 127.0.0.1:$DIRECT_PORT"
  # AUTH_SESSION_CACHE_TTL_SECS=0: the suite resets the database between its two passes; a
  # session cached by the container in the first pass would outlive that reset.
  # The same settings for `serve` here and for the `worker` the job phase starts
  # (parity/jobs-run.mjs; it points TELNYX_API_BASE at its own recorder).
  local container_env=(APP_ENV=development BIND_ADDRESS=127.0.0.1 PORT="$DIRECT_PORT"
    DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB" RUN_MIGRATIONS_ON_START=true
    R2_ENDPOINT=http://127.0.0.1:9 R2_CREATE_BUCKET=false LOG_FORMAT=json LOG_LEVEL=warn
    TELNYX_API_KEY=parity TELNYX_CONNECTION_ID=parity TELNYX_PUBLIC_KEY="$TELNYX_PUBLIC_KEY"
    TELNYX_API_BASE=http://127.0.0.1:9/v2 AUTH_TOKEN_STORAGE="$storage" AUTH_SESSION_CACHE_TTL_SECS=0
    ALLOWED_ORIGINS=http://localhost:3000 EDGE_SHARED_SECRET="$EDGE_SECRET"
    EDGE_UNSIGNED_PATHS=/healthz,/readyz,/metrics,/api/openapi.json
    ASSEMBLYAI_API_KEY="$AAI_KEY" ASSEMBLYAI_STREAMING_URL="$AAI_URL" MEDIA_BATCH_MS=100
    ASSEMBLYAI_WEBHOOK_SECRET="$AAI_WEBHOOK_SECRET")
  printf '%s\n' "${container_env[@]}" | grep -v '^PORT=' >"$WORK/worker.env"
  env "${container_env[@]}" "$BIN" serve >>"$WORK/container.log" 2>&1 &
  CONTAINER_PID=$!
  # /healthz, not /readyz: the R2 endpoint is deliberately unreachable here.
  wait_http "http://127.0.0.1:$DIRECT_PORT/healthz" 60 "$CONTAINER_PID" container

  log "[$storage] starting the shim (wrangler dev --local) on 127.0.0.1:$SHIM_PORT"
  # Hyperdrive's local connection string points at the container's database; Miniflare wants
  # a password in it, which trust authentication ignores.
  CLOUDFLARE_HYPERDRIVE_LOCAL_CONNECTION_STRING_HYPERDRIVE="postgres://$PGUSER:parity@$PGHOST:$PGPORT/$DB" \
  WRANGLER_SEND_METRICS=false WRANGLER_LOG_PATH="$WORK/wrangler-logs" \
    setsid npx wrangler dev -c parity/wrangler.parity.jsonc --local --ip 127.0.0.1 --port "$SHIM_PORT" \
    --persist-to "$WORK/wrangler-state" --show-interactive-dev-session=false \
    --var "ORIGIN_URL:http://127.0.0.1:$DIRECT_PORT" --var "EDGE_SHARED_SECRET:$EDGE_SECRET" \
    --var "TELNYX_PUBLIC_KEY:$TELNYX_PUBLIC_KEY" --var "AUTH_TOKEN_STORAGE:$storage" --var PARITY_OWNER:edge \
    --var "ASSEMBLYAI_API_KEY:$AAI_KEY" --var "ASSEMBLYAI_STREAMING_URL:$AAI_URL" --var MEDIA_BATCH_MS:100 \
    --var "ASSEMBLYAI_WEBHOOK_SECRET:$AAI_WEBHOOK_SECRET" --test-scheduled \
    --var "ASSEMBLYAI_API_BASE:http://127.0.0.1:$PARITY_AAI_ASYNC_PORT" --var "WEBHOOK_BASE_URL:$PARITY_WEBHOOK_BASE" \
    --var "R2_ENDPOINT:$PARITY_S3_ENDPOINT" --var "R2_BUCKET:$PARITY_S3_BUCKET" --var R2_ACCESS_KEY_ID:cbtest \
    --var R2_SECRET_ACCESS_KEY:cbtest-secret-key \
    --var "TELNYX_API_BASE:http://127.0.0.1:$PARITY_TELNYX_PORT/v2" --var TELNYX_API_KEY:parity \
    </dev/null >>"$WORK/wrangler.log" 2>&1 &
  WRANGLER_PID=$!
  wait_http "http://127.0.0.1:$SHIM_PORT/healthz" 90 "$WRANGLER_PID" wrangler

  if [ -z "$OPENAPI_CHECKED" ]; then
    OPENAPI_CHECKED=1
    log "checking the edge's OpenAPI snapshot and generated types against the container"
    if node scripts/openapi.mjs check "http://127.0.0.1:$DIRECT_PORT/api/openapi.json"; then
      extra_passed=$((extra_passed + 1))
    else
      extra_failed=$((extra_failed + 1))
    fi
    if node scripts/openapi.mjs check-types; then
      extra_passed=$((extra_passed + 1))
    else
      extra_failed=$((extra_failed + 1))
    fi
  fi

  log "[$storage] running the parity suite"
  # Its exit status is not needed: the counts decide (a crashed runner prints "0 passed, 1 failed").
  node parity/run.mjs --direct "http://127.0.0.1:$DIRECT_PORT" --shim "http://127.0.0.1:$SHIM_PORT" \
    --db "postgres://$PGUSER@$PGHOST:$PGPORT/$DB" --aai "http://127.0.0.1:$SIM_PORT" --storage "$storage" --bin "$BIN" --worker-env "$WORK/worker.env" ${PARITY_REHEARSE:+--rehearse} --edge-secret "$EDGE_SECRET" ${PARITY_VERBOSE:+--verbose} | tee "$WORK/round-$storage.out" || true
  stop_servers
}

OPENAPI_CHECKED=""
extra_passed=0
extra_failed=0
passed=0
failed=0
for storage in ${PARITY_STORAGES:-raw dual hashed}; do
  round "$storage"
  line=$(grep -E '^parity: [0-9]+ passed, [0-9]+ failed$' "$WORK/round-$storage.out" | tail -n1 || true)
  if [ -z "$line" ]; then line="parity: 0 passed, 1 failed"; fi
  p=$(sed -E 's/^parity: ([0-9]+) passed.*/\1/' <<<"$line")
  f=$(sed -E 's/.* ([0-9]+) failed$/\1/' <<<"$line")
  passed=$((passed + p))
  failed=$((failed + f))
done
passed=$((passed + extra_passed))
failed=$((failed + extra_failed))
SUMMARY_PRINTED=1
echo "parity: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
