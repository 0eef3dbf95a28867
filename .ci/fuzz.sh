#!/usr/bin/env bash
# `make fuzz` (issue 14 items 11 and 12): every cargo-fuzz target for FUZZ_SECS seconds
# (default 600), one after the other on one core, then Schemathesis's long run against the
# container and the simulators: ST_LONG_EXAMPLES cases per operation (default 200) with the
# request limits off, then ST_LONG_LIMITED_EXAMPLES (default 50) with the deployment's limits
# on. A summary (executions per target, crashes, Schemathesis's totals) is printed at the end
# and written to $FUZZ_REPORT (default target/fuzz-report.txt).
#
#   make fuzz                       # everything, 10 minutes per target
#   FUZZ_SECS=30 make fuzz          # a quick pass
#   FUZZ_TARGETS="audio_sniff" FUZZ_SCHEMATHESIS=off make fuzz
#
# Fuzz builds use the nightly toolchain (`cargo +nightly fuzz`, installed with
# `cargo install cargo-fuzz` when missing) and their own target directory
# (FUZZ_TARGET_DIR, default target/fuzz) so they never invalidate the stable build. The
# committed seeds are fuzz/corpus/<target>/seed-*; what libFuzzer adds goes to a scratch
# corpus. A crash leaves its input in fuzz/artifacts/<target>/ and fails the run: turn it
# into a regression test in the normal suite (docs/SECURITY.md, "Fuzzing").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. .ci/lib.sh

FUZZ_SECS=${FUZZ_SECS:-600}
FUZZ_TARGETS=${FUZZ_TARGETS:-"telnyx_webhook telnyx_media_frame assemblyai_message auth_credential audio_sniff ws_client_frames"}
FUZZ_TARGET_DIR=${FUZZ_TARGET_DIR:-$ROOT/target/fuzz}
FUZZ_REPORT=${FUZZ_REPORT:-$ROOT/target/fuzz-report.txt}
# libFuzzer's per-input limits: a parser that takes a second or a gigabyte on one input is a
# finding too.
FUZZ_ARGS=(-timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1)

command -v cargo-fuzz >/dev/null || {
  log "installing cargo-fuzz (once)"
  cargo install cargo-fuzz --locked
}

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/callbridge-fuzz.XXXXXX")
trap 'rm -rf "$run_dir"' EXIT
mkdir -p "$(dirname "$FUZZ_REPORT")"
: >"$FUZZ_REPORT"
status=0

log "building the fuzz targets (nightly, $FUZZ_TARGET_DIR)"
CARGO_TARGET_DIR=$FUZZ_TARGET_DIR cargo +nightly fuzz build -O

for target in $FUZZ_TARGETS; do
  log "fuzzing $target for ${FUZZ_SECS}s"
  mkdir -p "$run_dir/corpus/$target"
  set +e
  CARGO_TARGET_DIR=$FUZZ_TARGET_DIR cargo +nightly fuzz run -O "$target" \
    "$run_dir/corpus/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$FUZZ_SECS" "${FUZZ_ARGS[@]}" >"$run_dir/$target.log" 2>&1
  code=$?
  set -e
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$run_dir/$target.log" | grep -oE '[0-9]+$' | tail -n1)
  crashes=$(find "fuzz/artifacts/$target" -type f 2>/dev/null | wc -l)
  line=$(printf 'fuzz %-20s %10s executions in %ss, exit %s, %s artifact(s)' "$target" "${execs:-?}" "$FUZZ_SECS" "$code" "$crashes")
  echo "$line" | tee -a "$FUZZ_REPORT"
  if [ "$code" -ne 0 ]; then
    status=1
    tail -n 40 "$run_dir/$target.log" >&2
  fi
done

if [ "${FUZZ_SCHEMATHESIS:-on}" = on ]; then
  log "building the container with the simulators for Schemathesis"
  cargo build --features sim --bin callbridge
  for limits in off on; do
    if [ "$limits" = off ]; then examples=${ST_LONG_EXAMPLES:-200}; else examples=${ST_LONG_LIMITED_EXAMPLES:-50}; fi
    log "Schemathesis long run: $examples examples per operation, request limits $limits"
    set +e
    ST_RATE_LIMITS=$limits MAX_EXAMPLES=$examples ST_TIMEOUT=${ST_LONG_TIMEOUT:-3600} \
      ST_REPORT_DIR="$ROOT/target/schemathesis-long-limits-$limits" \
      bash .ci/schemathesis.sh >"$run_dir/st-$limits.log" 2>&1
    code=$?
    set -e
    summary=$(grep -E '^(Test cases|API Operations|Failures|[0-9]+ (passed|failed))|[0-9]+ generated' "$run_dir/st-$limits.log" | tr '\n' ' ')
    echo "schemathesis limits=$limits examples=$examples exit=$code: $summary" | tee -a "$FUZZ_REPORT"
    cp "$run_dir/st-$limits.log" "$ROOT/target/schemathesis-long-limits-$limits/st.log" 2>/dev/null || true
    [ "$code" -eq 0 ] || { status=1; tail -n 60 "$run_dir/st-$limits.log" >&2; }
  done
fi

log "summary ($FUZZ_REPORT)"
cat "$FUZZ_REPORT"
exit "$status"
