#!/usr/bin/env bash
# Schemathesis conformance run (issue 20): starts the provider simulators (`callbridge sim`)
# and the container (`callbridge serve`) on free loopback ports against a scratch database,
# signs a user in the way Auth.js does (a `sessions` row, sent as the bearer token), and runs
# `st run` over every operation of the served document (GET /api/openapi.json): MAX_EXAMPLES
# (20) generated cases per operation, checking that every status is documented, every
# Content-Type is the documented one and every body validates against its schema. 5xx answers
# are reported too (not_a_server_error). Same setup as clients/ts/scripts/test-against-container.sh.
#
#   bash .ci/schemathesis.sh
#   CALLBRIDGE_BIN=/path/to/callbridge bash .ci/schemathesis.sh [extra st run arguments]
#
# Needs: the container binary built with `--features sim` (never runs cargo), Schemathesis 4.x
# (`pip install schemathesis`), PostgreSQL as for `make test`, and s3s-fs on TEST_S3_ENDPOINT
# (started here when nothing answers there). Reports (JUnit, NDJSON, HAR, the container's log)
# go to $ST_REPORT_DIR (default target/schemathesis). The request rate limits are off unless
# ST_RATE_LIMITS=on; ST_TIMEOUT (600 s) bounds the run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. .ci/lib.sh

BIN=${CALLBRIDGE_BIN:-${CARGO_TARGET_DIR:-target}/debug/callbridge}
[ -x "$BIN" ] || { echo "schemathesis: no container binary at $BIN (build it with cargo --features sim, or set CALLBRIDGE_BIN)" >&2; exit 1; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
command -v st >/dev/null || { echo "schemathesis: st not found (pip install schemathesis)" >&2; exit 1; }
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
DB="cbst_$(date +%s)_$$"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/callbridge-st.XXXXXX")
S3_ENDPOINT=${TEST_S3_ENDPOINT:-http://127.0.0.1:9100}
S3_ACCESS_KEY=${TEST_S3_ACCESS_KEY:-cbtest}
S3_SECRET_KEY=${TEST_S3_SECRET_KEY:-cbtest-secret-key}
MAX_EXAMPLES=${MAX_EXAMPLES:-20}
REPORT_DIR=${ST_REPORT_DIR:-$ROOT/target/schemathesis}
CONTAINER_PID=""
SIM_PID=""
# The request rate limits (docs/SECURITY.md) are off by default so that the cases reach the
# handlers instead of mostly 429s; ST_RATE_LIMITS=on keeps the deployment defaults.
LIMITS_ENV=()
if [ "${ST_RATE_LIMITS:-off}" != on ]; then
  LIMITS_ENV=(RATE_LIMIT_ANONYMOUS_PER_MIN=0 RATE_LIMIT_SESSION_PER_MIN=0 RATE_LIMIT_AUTH_FAILURES_PER_MIN=0
    DIAL_MAX_CONCURRENT_PER_USER=20 DIAL_MAX_PER_MINUTE_PER_USER=60)
fi

cleanup() {
  local status=$?
  set +e
  for pid in "$CONTAINER_PID" "$SIM_PID"; do
    [ -n "$pid" ] || continue
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  stop_pidfile "$WORK/s3.pid"
  psql -q -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -c "drop database if exists \"$DB\" with (force)" >/dev/null 2>&1
  if [ "$status" -ne 0 ]; then
    for f in "$WORK"/container.log "$WORK"/sim.log; do
      [ -s "$f" ] && { echo "---- last lines of $(basename "$f")" >&2; tail -n 30 "$f" >&2; }
    done
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_postgres

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start_s3 "${S3_ENDPOINT##*:}" "$WORK/s3" "$S3_ACCESS_KEY" "$S3_SECRET_KEY" "$WORK/s3.pid"

log "starting the provider simulators (callbridge sim)"
"$BIN" sim --telnyx-port "$(free_port)" >"$WORK/sim.log" 2>&1 &
SIM_PID=$!
for _ in $(seq 1 100); do
  grep -q "ELEVENLABS_API_KEY" "$WORK/sim.log" && break
  kill -0 "$SIM_PID" 2>/dev/null || { echo "schemathesis: callbridge sim exited (built without --features sim?)" >&2; exit 1; }
  sleep 0.1
done
SIM_ENV=()
while read -r setting; do SIM_ENV+=("$setting"); done < <(grep -oE '[A-Z][A-Z0-9_]+=[^ ]+' "$WORK/sim.log")
[ "${#SIM_ENV[@]}" -ge 8 ] || { echo "schemathesis: could not read the simulators' settings" >&2; exit 1; }

psql -q -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -c "create database \"$DB\"" >/dev/null
PORT=$(free_port)
BASE="http://127.0.0.1:$PORT"
CONTAINER_ENV=(
  APP_ENV=development BIND_ADDRESS=127.0.0.1 PORT="$PORT" PUBLIC_BASE_URL="$BASE"
  DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB" RUN_MIGRATIONS_ON_START=true
  R2_ENDPOINT="$S3_ENDPOINT" R2_ACCESS_KEY_ID="$S3_ACCESS_KEY" R2_SECRET_ACCESS_KEY="$S3_SECRET_KEY"
  R2_BUCKET="cbst-$$-$(date +%s)" R2_CREATE_BUCKET=true
  AUTH_SECRET=schemathesis-run-auth-secret-0123456789abcdef ALLOWED_ORIGINS=http://localhost:3000
  ASSEMBLYAI_WEBHOOK_SECRET=schemathesis-webhook-secret LOG_FORMAT=json LOG_LEVEL=warn
  "${LIMITS_ENV[@]}"
  "${SIM_ENV[@]}"
)
log "starting the container on $BASE (database $DB)"
env "${CONTAINER_ENV[@]}" "$BIN" serve >"$WORK/container.log" 2>&1 &
CONTAINER_PID=$!
for _ in $(seq 1 600); do
  curl -fsS -o /dev/null --max-time 2 "$BASE/readyz" 2>/dev/null && break
  kill -0 "$CONTAINER_PID" 2>/dev/null || { echo "schemathesis: the container exited" >&2; exit 1; }
  sleep 0.1
done
curl -fsS -o /dev/null "$BASE/readyz"

# A user and a session exactly as @auth/pg-adapter writes them (the token stored as is).
sql() { psql -qAt -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d "$DB" -v ON_ERROR_STOP=1 -c "$1"; }
USER_ID=$(sql "insert into authjs.users (name, email) values ('Schemathesis', 'st-$$$(date +%s)@example.com') returning id" | head -n1)
SESSION_TOKEN=$(python3 -c 'import uuid; print(uuid.uuid4())')
sql "insert into authjs.sessions (\"userId\", expires, \"sessionToken\") values ($USER_ID, now() + interval '30 days', '$SESSION_TOKEN')" >/dev/null
# An organisation of the user's own, so that the operations scoped to the active organisation
# reach their handlers instead of answering 403 (no organisation).
curl -fsS -o /dev/null -X POST "$BASE/api/orgs" -H "Authorization: Bearer $SESSION_TOKEN" \
  -H 'Content-Type: application/json' -d '{"name":"Schemathesis"}'
DEBUG_TOKEN=$(env "${CONTAINER_ENV[@]}" "$BIN" debug-token --ttl-secs 900 | tail -n1)

mkdir -p "$REPORT_DIR"
log "st run $BASE/api/openapi.json ($MAX_EXAMPLES examples per operation)"
# The session as the bearer token (no Origin needed); the debug token for /internal/debug/*.
# Security parameters are not generated: every request carries the real session. The
# stateful phase is left out to keep the run to seconds (no links in the document yet).
ST_CMD=(st run "$BASE/api/openapi.json" --url "$BASE"
  --checks status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,not_a_server_error
  --max-examples "$MAX_EXAMPLES" --phases examples,coverage,fuzzing --workers 2
  --generation-with-security-parameters false --request-timeout 10
  --suppress-health-check all --continue-on-failure --no-color --generation-database none
  -H "Authorization: Bearer $SESSION_TOKEN" -H "X-Debug-Token: $DEBUG_TOKEN"
  --report junit,ndjson,har --report-dir "$REPORT_DIR" "$@")
set +e
# From the report directory: st keeps its crash store (for `st replay ID`) in .schemathesis/.
cd "$REPORT_DIR"
PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$ROOT/.ci${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=schemathesis_hooks \
  timeout "${ST_TIMEOUT:-600}" "${ST_CMD[@]}"
ST_STATUS=$?
set -e
cd "$ROOT"
cp "$WORK/container.log" "$REPORT_DIR/container.log" 2>/dev/null || true
exit "$ST_STATUS"
