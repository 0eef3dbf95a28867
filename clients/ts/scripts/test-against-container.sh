#!/usr/bin/env bash
# The TypeScript client's tests (`node --test`) against the real container: regenerates the
# types and checks they are committed, type-checks client + tests with `tsc --strict`, then
# starts the provider simulators (`callbridge sim`) and the container (`callbridge serve`) on
# free loopback ports against a scratch database, signs a user in the way Auth.js does (a
# `sessions` row), and runs test/*.test.ts compiled, which call every operation of the
# document through the typed client and validate each answer against its schema.
#
#   bash clients/ts/scripts/test-against-container.sh
#   CALLBRIDGE_BIN=/path/to/callbridge bash clients/ts/scripts/test-against-container.sh
#
# Needs: the container binary built with `--features sim` (`make test` builds it; this script
# never runs cargo), Node 20 + npm, PostgreSQL as for `make test`, and s3s-fs on
# TEST_S3_ENDPOINT (started here when nothing answers there).
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROOT=$PWD
. .ci/lib.sh

BIN=${CALLBRIDGE_BIN:-${CARGO_TARGET_DIR:-target}/debug/callbridge}
[ -x "$BIN" ] || { echo "clients/ts: no container binary at $BIN (build it with cargo --features sim, or set CALLBRIDGE_BIN)" >&2; exit 1; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
DB="cbts_$(date +%s)_$$"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/callbridge-ts.XXXXXX")
S3_ENDPOINT=${TEST_S3_ENDPOINT:-http://127.0.0.1:9100}
S3_ACCESS_KEY=${TEST_S3_ACCESS_KEY:-cbtest}
S3_SECRET_KEY=${TEST_S3_SECRET_KEY:-cbtest-secret-key}
CONTAINER_PID=""
SIM_PID=""

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

command -v node >/dev/null || { echo "clients/ts: Node 20 is required" >&2; exit 1; }
ensure_postgres

cd "$ROOT/clients/ts"
if [ ! -x node_modules/.bin/tsc ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "npm ci (clients/ts)"
  npm ci --no-audit --no-fund --loglevel=error
fi
log "clients/ts: generated types up to date, tsc --strict"
npm run --silent check:types
rm -rf dist
npx tsc -p .

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

start_s3 "${S3_ENDPOINT##*:}" "$WORK/s3" "$S3_ACCESS_KEY" "$S3_SECRET_KEY" "$WORK/s3.pid"

log "starting the provider simulators (callbridge sim)"
"$BIN" sim --telnyx-port "$(free_port)" >"$WORK/sim.log" 2>&1 &
SIM_PID=$!
for _ in $(seq 1 100); do
  grep -q "ELEVENLABS_API_KEY" "$WORK/sim.log" && break
  kill -0 "$SIM_PID" 2>/dev/null || { echo "clients/ts: callbridge sim exited (built without --features sim?)" >&2; exit 1; }
  sleep 0.1
done
# `  NAME=value` settings, several on a line for some providers.
SIM_ENV=()
while read -r setting; do SIM_ENV+=("$setting"); done < <(grep -oE '[A-Z][A-Z0-9_]+=[^ ]+' "$WORK/sim.log")
[ "${#SIM_ENV[@]}" -ge 8 ] || { echo "clients/ts: could not read the simulators' settings" >&2; exit 1; }
TELNYX_SIM_URL=$(grep -oE 'TELNYX_API_BASE=[^ ]+' "$WORK/sim.log" | sed -e 's/^TELNYX_API_BASE=//' -e 's#/v2$##')

psql -q -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -c "create database \"$DB\"" >/dev/null
PORT=$(free_port)
BASE="http://127.0.0.1:$PORT"
ORIGIN=http://localhost:3000
AAI_WEBHOOK_SECRET=ts-client-webhook-secret
CONTAINER_ENV=(
  APP_ENV=development BIND_ADDRESS=127.0.0.1 PORT="$PORT" PUBLIC_BASE_URL="$BASE"
  DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB" RUN_MIGRATIONS_ON_START=true
  R2_ENDPOINT="$S3_ENDPOINT" R2_ACCESS_KEY_ID="$S3_ACCESS_KEY" R2_SECRET_ACCESS_KEY="$S3_SECRET_KEY"
  R2_BUCKET="cbts-$$-$(date +%s)" R2_CREATE_BUCKET=true
  AUTH_SECRET=ts-client-tests-auth-secret-0123456789abcdef ALLOWED_ORIGINS="$ORIGIN"
  ASSEMBLYAI_WEBHOOK_SECRET="$AAI_WEBHOOK_SECRET" LOG_FORMAT=json LOG_LEVEL=warn
  DIAL_MAX_CONCURRENT_PER_USER=20 DIAL_MAX_PER_MINUTE_PER_USER=60
  "${SIM_ENV[@]}"
)
log "starting the container on $BASE (database $DB)"
env "${CONTAINER_ENV[@]}" "$BIN" serve >"$WORK/container.log" 2>&1 &
CONTAINER_PID=$!
for _ in $(seq 1 600); do
  curl -fsS -o /dev/null --max-time 2 "$BASE/readyz" 2>/dev/null && break
  kill -0 "$CONTAINER_PID" 2>/dev/null || { echo "clients/ts: the container exited" >&2; exit 1; }
  sleep 0.1
done
curl -fsS -o /dev/null "$BASE/readyz"

# Users and a session exactly as @auth/pg-adapter writes them (the token stored as is).
sql() { psql -qAt -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d "$DB" -v ON_ERROR_STOP=1 -c "$1"; }
user() { sql "insert into authjs.users (name, email) values ('$1', '$2') returning id" | head -n1; }
SUFFIX=$$$(date +%s)
MAIN_USER=$(user "TS Client" "ts-client-$SUFFIX@example.com")
SESSION_TOKEN=$(node -e 'console.log(crypto.randomUUID())')
sql "insert into authjs.sessions (\"userId\", expires, \"sessionToken\") values ($MAIN_USER, now() + interval '30 days', '$SESSION_TOKEN')" >/dev/null
# Two more users with sessions: they join the main user's organisation by invitation, and
# invite the main user into theirs.
session() {
  local token
  token=$(node -e 'console.log(crypto.randomUUID())')
  sql "insert into authjs.sessions (\"userId\", expires, \"sessionToken\") values ($1, now() + interval '30 days', '$token')" >/dev/null
  echo "$token"
}
MEMBER_A=$(user "Member A" "member-a-$SUFFIX@example.com")
MEMBER_B=$(user "Member B" "member-b-$SUFFIX@example.com")
MEMBER_SESSIONS="$(session "$MEMBER_A"),$(session "$MEMBER_B")"
MEMBER_EMAILS="member-a-$SUFFIX@example.com,member-b-$SUFFIX@example.com"
ADDABLE_EMAIL="addable-$SUFFIX@example.com"
DEBUG_TOKEN=$(env "${CONTAINER_ENV[@]}" "$BIN" debug-token --ttl-secs 600 | tail -n1)

log "clients/ts: node --test against the container"
CALLBRIDGE_URL="$BASE" SESSION_TOKEN="$SESSION_TOKEN" ALLOWED_ORIGIN="$ORIGIN" \
  MEMBER_USER_IDS="$MEMBER_A,$MEMBER_B" MEMBER_SESSIONS="$MEMBER_SESSIONS" MEMBER_EMAILS="$MEMBER_EMAILS" \
  ADDABLE_EMAIL="$ADDABLE_EMAIL" DEBUG_TOKEN="$DEBUG_TOKEN" \
  TELNYX_SIM_URL="$TELNYX_SIM_URL" AAI_WEBHOOK_SECRET="$AAI_WEBHOOK_SECRET" \
  SNAPSHOT="$ROOT/edge-shim/openapi.json" \
  node --test --test-concurrency=1 --test-timeout=120000 --test-force-exit dist/test/*.test.js
