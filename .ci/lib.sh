#!/usr/bin/env bash
# Shared helpers for .ci scripts and the Makefile: tool installs and local servers.
# Tools live outside the clone (TOOLS_DIR) so CI and later runs reuse them.
set -euo pipefail

TOOLS_DIR="${TOOLS_DIR:-$HOME/.cache/callbridge-tools}"
S3S_VERSION=0.14.1
export PATH="$TOOLS_DIR/bin:$HOME/.cargo/bin:$PATH"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# s3s-fs: a real S3 server that verifies SigV4 and presigned URLs and, like R2, has no
# bucket versioning (docs/TOOLING.md). Newer versions need a newer rustc: pinned.
ensure_s3s_fs() {
  if [ -x "$TOOLS_DIR/bin/s3s-fs" ] && "$TOOLS_DIR/bin/s3s-fs" --version 2>/dev/null | grep -q "$S3S_VERSION"; then
    return
  fi
  log "installing s3s-fs $S3S_VERSION into $TOOLS_DIR (about 2 minutes, once)"
  cargo install "s3s-fs@$S3S_VERSION" --locked --features binary --root "$TOOLS_DIR"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_s3 PORT DATA_DIR ACCESS_KEY SECRET_KEY PIDFILE: starts s3s-fs unless PORT answers.
start_s3() {
  local port=$1 data=$2 access=$3 secret=$4 pidfile=$5
  if port_open "$port"; then
    log "S3 server already listening on 127.0.0.1:$port"
    return
  fi
  ensure_s3s_fs
  mkdir -p "$data"
  log "starting s3s-fs on 127.0.0.1:$port (data in $data)"
  nohup "$TOOLS_DIR/bin/s3s-fs" --host 127.0.0.1 --port "$port" \
    --access-key "$access" --secret-key "$secret" "$data" >"$data.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    port_open "$port" && return
    sleep 0.1
  done
  echo "s3s-fs did not start; see $data.log" >&2
  exit 1
}

stop_pidfile() {
  local pidfile=$1
  if [ -f "$pidfile" ]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  fi
}

# PostgreSQL: start the machine's cluster if it is installed but not answering.
ensure_postgres() {
  local host=${PGHOST_CHECK:-127.0.0.1} port=${PGPORT_CHECK:-5432}
  if pg_isready -q -h "$host" -p "$port" 2>/dev/null; then return; fi
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
  fi
  for _ in $(seq 1 50); do
    pg_isready -q -h "$host" -p "$port" 2>/dev/null && return
    sleep 0.2
  done
  echo "PostgreSQL is not reachable on $host:$port. Install it (apt-get install postgresql) or set TEST_DATABASE_URL / DATABASE_URL." >&2
  exit 1
}
