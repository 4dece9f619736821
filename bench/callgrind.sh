#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind (see BENCHMARKS.md).
#
#   bench/callgrind.sh                       # target/production/tollgate, no policies
#   PATH_Q=/keyed bench/callgrind.sh         # the API-key route instead
#   TOLLGATE_BIN=target/release/tollgate bench/callgrind.sh
#
# Instruction counts do not depend on how busy the machine is, unlike requests/s, so they
# tell whether a change to the request path made it cheaper. What it does: starts an
# upstream (nginx answering a small static 200) and `tollgate dev` under callgrind on one
# core (so the edge runs its single-threaded runtime, as in bench/run.sh), applies the same
# config as bench/run.sh, warms up, zeroes the counters, drives the proxy with wrk for
# DURATION seconds, dumps the counters and prints instructions per request. The profile is
# kept in OUT for `callgrind_annotate --inclusive=yes OUT/callgrind.out.*`.
#
# Everything listens on 127.0.0.1 only; every process it starts is stopped on exit.
#
# Environment (all optional):
#   DURATION=15   seconds of load          OUT=dir   where the profile goes (a temp dir)
#   PATH_Q=/      the path to request      BASE_PORT=19100 (ports BASE_PORT..+6 are used)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${TOLLGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/production/tollgate}"
DURATION="${DURATION:-15}"
PATH_Q="${PATH_Q:-/}"
BASE_PORT="${BASE_PORT:-19100}"
OUT="${OUT:-$(mktemp -d /tmp/tollgate-callgrind.XXXXXX)}"

die() { printf 'callgrind: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
for tool in valgrind callgrind_control callgrind_annotate nginx wrk curl taskset; do
  command -v "$tool" >/dev/null || die "$tool is missing (bench/run.sh installs nginx and wrk; valgrind: apt-get install valgrind)"
done
[[ -x "$BIN" ]] || die "$BIN not found (cargo build --profile production -p tollgate)"
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"   # the script changes directory
[[ "$DURATION" =~ ^[0-9]+$ && "$BASE_PORT" =~ ^[0-9]+$ ]] || die "DURATION and BASE_PORT must be whole numbers"

UP=$BASE_PORT GRPC=$((BASE_PORT + 1)) HTTP=$((BASE_PORT + 2)) LISTEN=$((BASE_PORT + 3))
ADMIN=$((BASE_PORT + 4)) PEER=$((BASE_PORT + 5))
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

upstream_nginx_conf "$OUT" upstream "$UP"
nginx -p "$OUT/upstream" -c "$OUT/upstream/nginx.conf" &
PIDS+=($!)

cd "$OUT"
taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" "$BIN" dev \
  --data-dir "$OUT/data" --grpc "127.0.0.1:$GRPC" --http "127.0.0.1:$HTTP" \
  --listen "127.0.0.1:$LISTEN" --admin "127.0.0.1:$ADMIN" --peer "127.0.0.1:$PEER" >"$OUT/tollgate.log" 2>&1 &
TG=$!
PIDS+=("$TG")
for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/healthz" && break; sleep 0.2; done
curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/healthz" || die "tollgate did not start (see $OUT/tollgate.log)"

export TOLLGATE_SERVER="http://127.0.0.1:$GRPC"
TOLLGATE_TOKEN="$(cat "$OUT/data/admin.token")"
export TOLLGATE_TOKEN
KEY=$(apply_bench_config "$BIN" "$UP" "$OUT")
code=
for _ in $(seq 300); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "apikey: $KEY" "http://127.0.0.1:$LISTEN$PATH_Q" || true)
  [[ $code == 200 ]] && break
  sleep 0.2
done
[[ $code == 200 ]] || die "$PATH_Q did not answer 200 (last: $code)"

taskset -c 1 wrk -t1 -c16 -d3s -H "apikey: $KEY" "http://127.0.0.1:$LISTEN$PATH_Q" >/dev/null
callgrind_control -z "$TG" >/dev/null
taskset -c 1 wrk -t1 -c16 -d"${DURATION}s" -H "apikey: $KEY" "http://127.0.0.1:$LISTEN$PATH_Q" >"$OUT/wrk.txt"
callgrind_control -d "$TG" >/dev/null
sleep 1

N=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")
grep -q 'Non-2xx' "$OUT/wrk.txt" && die "non-2xx answers during the load: $(cat "$OUT/wrk.txt")"
PROFILE=$(ls -t "$OUT"/callgrind.out.* | head -n1)
TOTAL=$(callgrind_annotate "$PROFILE" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
[[ -n $N && -n $TOTAL ]] || die "could not read the request count or the instruction total"
echo "requests: $N  instructions: $TOTAL  per request: $((TOTAL / N))  ($PATH_Q; profile: $PROFILE)"
