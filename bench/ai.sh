#!/usr/bin/env bash
# The AI gateway's added latency, in one run, on this machine (see BENCHMARKS.md).
#
#   bench/ai.sh                          # 5 rounds of 8 s each, 10 connections, ~500 requests/s
#   RATE=1000 ROUNDS=7 bench/ai.sh
#
# What it does: an OpenAI-compatible mock provider (nginx answering a fixed chat completion
# with usage, and a fixed stream of 8 chunks plus the usage chunk and [DONE]) on the load
# core, and `tollgate dev` on the proxy core with an AI service over it: API-key auth, a
# subscription, a token budget (never exhausted) and usage and cost in every call record.
# wrk sends the same chat completion request at the same moderate rate (each connection
# waits so that together they send about RATE requests/s) to the mock directly and through
# the edge, plain and streamed, in ROUNDS interleaved rounds. The verdict is the added p99
# (through the edge minus direct, per round, median over the rounds): at most 1 ms.
#
# Everything listens on 127.0.0.1 only; every process it starts is stopped on exit.
#
# Environment (all optional):
#   RATE=500           requests/s over all connections (a moderate load, well below saturation)
#   CONNECTIONS=10     wrk connections                 THREADS=1    wrk threads
#   DURATION=8         seconds of each measurement     WARMUP=5     seconds of warm-up
#   ROUNDS=5           interleaved rounds              (later rounds warm up for 1 s)
#   PROXY_CPU=1        core for the edge               LOAD_CPU=0   core for wrk + the mock
#   BASE_PORT=18100    ports BASE_PORT.. are used (the first free ones)
#   SKIP_BUILD=1       use the existing target/production/tollgate
#   TOLLGATE_BIN=path  use this tollgate binary (implies SKIP_BUILD=1)
#   KEEP_TMP=1         keep the temp dir (configs, logs, call records) for inspection
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RATE="${RATE:-500}"
DURATION="${DURATION:-8}"
ROUNDS="${ROUNDS:-5}"
WARMUP="${WARMUP:-5}"
CONNECTIONS="${CONNECTIONS:-10}"
THREADS="${THREADS:-1}"
PROXY_CPU="${PROXY_CPU:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
BASE_PORT="${BASE_PORT:-18100}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TOLLGATE="${TOLLGATE_BIN:-$TARGET_DIR/production/tollgate}"

log() { printf '==> %s\n' "$*" >&2; }
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
die() { printf 'bench/ai: %s\n' "$*" >&2; exit 1; }

for v in RATE DURATION ROUNDS WARMUP CONNECTIONS THREADS PROXY_CPU LOAD_CPU BASE_PORT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((RATE >= 1 && ROUNDS >= 1)) || die "RATE and ROUNDS must be at least 1"
# Each connection sends its next request DELAY ms after the previous answer.
DELAY=$((CONNECTIONS * 1000 / RATE))

# shellcheck source=bench/harness.sh
source "$ROOT/bench/harness.sh"

free_port MOCK_PORT

# --- the mock provider: OpenAI's wire format, fixed answers -------------------------------
# (nginx strings: no `$`, which nginx would read as a variable.)
COMPLETION='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the benchmark mock, in a few words."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22}}'
chunk() { # $1 delta JSON, $2 finish_reason JSON
  printf 'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":%s,"finish_reason":%s}]}\\n\\n' "$1" "$2"
}
STREAM=$(chunk '{"role":"assistant","content":""}' null)
for w in Hello from the benchmark mock, in a few; do STREAM+=$(chunk "{\"content\":\"$w \"}" null); done
STREAM+=$(chunk '{}' '"stop"')
STREAM+='data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22}}\n\ndata: [DONE]\n\n'
nginx_conf "$TMP" mock "  server {
    listen 127.0.0.1:$MOCK_PORT;
    location = /plain/v1/chat/completions { default_type application/json; return 200 '$COMPLETION'; }
    location = /stream/v1/chat/completions { default_type text/event-stream; return 200 '$STREAM'; }
  }"

log "mock provider (nginx) on 127.0.0.1:$MOCK_PORT (core $LOAD_CPU)"
start "$LOAD_CPU" "$TMP/mock/out.log" nginx -p "$TMP/mock" -e "$TMP/mock/error.log" -c "$TMP/mock/nginx.conf"
MOCK_PID=$LAST_PID
wait_http "http://127.0.0.1:$MOCK_PORT/plain/v1/chat/completions" 10 200 -d '{}'
curl -s -d '{}' "http://127.0.0.1:$MOCK_PORT/stream/v1/chat/completions" | grep -q '^data: \[DONE\]$' ||
  die "the mock's stream does not end with [DONE]: $(curl -s -d '{}' "http://127.0.0.1:$MOCK_PORT/stream/v1/chat/completions")"

start_tollgate_dev
cat >"$TMP/ai.yaml" <<EOF
tenants: [{name: bench}]
ai_providers:
  - {name: plain, tenant: bench, kind: openai, base_url: "http://127.0.0.1:$MOCK_PORT/plain",
     api_key_secret: provider-key, allow_internal_addresses: true,
     models: [{name: m, input_per_mtok: 2.0, output_per_mtok: 8.0}]}
  - {name: stream, tenant: bench, kind: openai, base_url: "http://127.0.0.1:$MOCK_PORT/stream",
     api_key_secret: provider-key, allow_internal_addresses: true,
     models: [{name: m, input_per_mtok: 2.0, output_per_mtok: 8.0}]}
policies:
  - {name: budget, tenant: bench, token_limit: {tokens_per_minute: 1000000000000, key: app}}
services:
  - {name: ai, tenant: bench, auth: [api_key], approval: auto, policies: [budget],
     ai: {models: ["plain/m", "stream/m"]}, routes: [{paths: [/ai]}]}
apps: [{name: bench-app, tenant: bench}]
subscriptions: [{app: bench-app, service: ai, tenant: bench}]
EOF
printf 'tenants: [{name: bench}]\n' >"$TMP/tenant.yaml"
(cd "$TMP" && timeout 60 "$TOLLGATE" apply -f tenant.yaml >"$TMP/apply.log" 2>&1 &&
  printf 'sk-bench-provider-key' | timeout 60 "$TOLLGATE" secret set provider-key --tenant bench >>"$TMP/apply.log" 2>&1 &&
  timeout 120 "$TOLLGATE" apply -f ai.yaml >>"$TMP/apply.log" 2>&1) || die "tollgate apply failed: $(cat "$TMP/apply.log")"
KEY_JSON=$(cd "$TMP" && timeout 60 "$TOLLGATE" key create --app bench-app --tenant bench -o json)
KEY=$(printf '%s' "$KEY_JSON" | sed -n 's/.*"key"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' | head -n1)
[[ -n $KEY ]] || die "no key in: $KEY_JSON"

# wrk scripts: the same request, at the same pace, to the mock and to the edge.
body() { # $1 model, $2 stream (true/false)
  printf '{"model":"%s","stream":%s,"max_tokens":64,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello to the benchmark."}]}' "$1" "$2"
}
script() { # $1 file, $2 body
  cat >"$1" <<EOF
wrk.method = "POST"
wrk.body = '$2'
wrk.headers["Content-Type"] = "application/json"
function delay() return $DELAY end
EOF
}
script "$TMP/direct-plain.lua" "$(body m false)"
script "$TMP/direct-stream.lua" "$(body m true)"
script "$TMP/edge-plain.lua" "$(body plain/m false)"
script "$TMP/edge-stream.lua" "$(body stream/m true)"
EDGE="http://127.0.0.1:$TG_LISTEN/ai/v1/chat/completions"
wait_http "$EDGE" 10 200 -H "apikey: $KEY" -H 'content-type: application/json' -d "$(body plain/m false)"
curl -s -H "apikey: $KEY" -H 'content-type: application/json' -d "$(body stream/m true)" "$EDGE" | grep -q '^data: \[DONE\]' ||
  die "the edge's stream does not end with [DONE]"

check_quiet
for r in $(seq "$ROUNDS"); do
  run_wrk "direct-plain.$r" "$MOCK_PID" "http://127.0.0.1:$MOCK_PORT/plain/v1/chat/completions" -s "$TMP/direct-plain.lua"
  run_wrk "edge-plain.$r" "$TG_PID" "$EDGE" -s "$TMP/edge-plain.lua" -H "apikey: $KEY"
  run_wrk "direct-stream.$r" "$MOCK_PID" "http://127.0.0.1:$MOCK_PORT/stream/v1/chat/completions" -s "$TMP/direct-stream.lua"
  run_wrk "edge-stream.$r" "$TG_PID" "$EDGE" -s "$TMP/edge-stream.lua" -H "apikey: $KEY"
done

# Every call left a record with its usage and cost (what the AI path does on each request).
RECORDS="$TMP/tollgate-data/edge/calls/calls.jsonl"
[[ -f $RECORDS ]] || RECORDS=$(find "$TMP/tollgate-data" -name calls.jsonl | head -n1)
COSTED=$(grep -c '"cost_usd":' "$RECORDS" 2>/dev/null || true)

diff_ms() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a - b}'; }
ADDED_PLAIN=() ADDED_STREAM=() ADDED50_PLAIN=() ADDED50_STREAM=() ROWS=""
for r in $(seq "$ROUNDS"); do
  for kind in plain stream; do
    d="direct-$kind.$r" e="edge-$kind.$r"
    a99=$(diff_ms "${P99[$e]}" "${P99[$d]}")
    a50=$(diff_ms "${P50[$e]}" "${P50[$d]}")
    if [[ $kind == plain ]]; then ADDED_PLAIN+=("$a99") ADDED50_PLAIN+=("$a50"); else ADDED_STREAM+=("$a99") ADDED50_STREAM+=("$a50"); fi
    ROWS+="| $r | $kind, direct to the mock | ${RPS[$d]} | ${P50[$d]} | ${P99[$d]} | | |"$'\n'
    ROWS+="| $r | $kind, through the edge | ${RPS[$e]} | ${P50[$e]} | ${P99[$e]} | ${CPU[$e]}% / ${USEC[$e]} | +$a50 / +$a99 |"$'\n'
  done
done
M_PLAIN=$(median "${ADDED_PLAIN[@]}")
M_STREAM=$(median "${ADDED_STREAM[@]}")
within() { awk -v v="$1" -v max="$2" 'BEGIN {print (v <= max) ? "meets" : "ABOVE"}'; }

cat <<EOF

## AI gateway: added latency ($(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))

wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency, each connection pausing ${DELAY} ms between requests (about $RATE requests/s in all), on core $LOAD_CPU with the mock provider (nginx answering a fixed OpenAI chat completion, or a stream of 10 events); the edge on core $PROXY_CPU with API-key auth, a subscription, a token budget and a call record with usage and cost ($COSTED records with a cost at the end); $ROUNDS interleaved rounds. Machine busy before the load: ${QUIET}%.

| round | request | requests/s | p50 (ms) | p99 (ms) | edge CPU / µs per request | added p50 / p99 (ms) |
| ---: | --- | ---: | ---: | ---: | ---: | ---: |
${ROWS%$'\n'}

- **Added p99, plain chat completion: ${M_PLAIN} ms** (median of ${ADDED_PLAIN[*]}; target <= 1 ms: $(within "$M_PLAIN" 1))
- **Added p99, streamed chat completion: ${M_STREAM} ms** (median of ${ADDED_STREAM[*]}; target <= 1 ms: $(within "$M_STREAM" 1))
- Added p50: plain $(median "${ADDED50_PLAIN[@]}") ms, streamed $(median "${ADDED50_STREAM[@]}") ms
EOF
