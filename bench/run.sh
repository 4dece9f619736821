#!/usr/bin/env bash
# Tollgate vs nginx as a reverse proxy, in one run, on this machine (see BENCHMARKS.md).
#
#   bench/run.sh                         # 5 rounds of 8 s per proxy, 64 connections, 1 wrk thread
#   DURATION=30 CONNECTIONS=128 bench/run.sh
#
# What it does: builds `tollgate` (the `production` profile: release with LTO), starts an upstream (nginx answering a small
# static 200) and two proxies in front of it: nginx as a plain reverse proxy (keep-alive to
# the upstream) and `tollgate dev` with a route `/` to the same upstream and no policies.
# Each proxy gets core 1 (taskset); wrk and the upstream share core 0. Each proxy is warmed
# up, then driven by wrk for the same duration, one after the other; a third scenario drives
# Tollgate with API-key auth on (`auth: [api_key]`, an app, a subscription and a key), a
# fourth with API-key auth plus a cluster-scope rate limit (counted, never refusing). The
# four run in ROUNDS interleaved rounds (nginx, Tollgate, with a key, with a key and a limit,
# again...), so that drift in the machine's speed hits all alike; the verdict uses the
# median ratio.
# Prints requests/s, p50, p99, the proxy's CPU use (100% = its core saturated) and CPU time
# per request (user + system), how busy the load core was (wrk + upstream), and the ratios,
# then a Markdown table.
#
# Everything listens on 127.0.0.1 only; every process it starts is stopped on exit.
#
# Environment (all optional):
#   DURATION=8         seconds of each measurement     WARMUP=5     seconds of warm-up
#   ROUNDS=5           interleaved rounds              (later rounds warm up for 1 s)
#   CONNECTIONS=64     wrk connections                 THREADS=1    wrk threads
#   PROXY_CPU=1        core for the proxy under test   LOAD_CPU=0   core for wrk + upstream
#   BASE_PORT=18000    ports BASE_PORT.. are used (the first free ones)
#   SKIP_BUILD=1       use the existing target/production/tollgate
#   TOLLGATE_BIN=path  use this tollgate binary (implies SKIP_BUILD=1)
#   BASELINE_BIN=path  also measure this (older) tollgate binary in the same rounds, on `/`
#                      and `/limited`, and report the current one's ratio to it (what a
#                      change costs, measured in one run): `git worktree add /tmp/base REV`,
#                      then build it there with its own CARGO_TARGET_DIR (a shared target
#                      dir mixes the two trees' crates)
#   KEEP_TMP=1         keep the temp dir (configs, logs) for inspection
#   PERF_OUT=dir       also record each measured proxy with `perf record` into dir
#                      (PERF_FREQ=499, PERF_CALLGRAPH=dwarf,16384 by default)
#                      (perf runs on the load core; it perturbs the figures a little)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${DURATION:-8}"
ROUNDS="${ROUNDS:-5}"
WARMUP="${WARMUP:-5}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-1}"
PROXY_CPU="${PROXY_CPU:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
BASE_PORT="${BASE_PORT:-18000}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TOLLGATE="${TOLLGATE_BIN:-$TARGET_DIR/production/tollgate}"

log() { printf '==> %s\n' "$*" >&2; }
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

for v in DURATION ROUNDS WARMUP CONNECTIONS THREADS PROXY_CPU LOAD_CPU BASE_PORT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done

# shellcheck source=bench/harness.sh
source "$ROOT/bench/harness.sh"

for v in UP_PORT NGINX_PORT; do free_port "$v"; done

upstream_nginx_conf "$TMP" upstream "$UP_PORT"
# nginx as a plain reverse proxy, keep-alive to the upstream (the usual production setup).
nginx_conf "$TMP" proxy "  upstream backend { server 127.0.0.1:$UP_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }"


log "upstream nginx on 127.0.0.1:$UP_PORT (core $LOAD_CPU)"
start "$LOAD_CPU" "$TMP/upstream/out.log" nginx -p "$TMP/upstream" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf"
wait_http "http://127.0.0.1:$UP_PORT/" 10

log "nginx reverse proxy on 127.0.0.1:$NGINX_PORT (core $PROXY_CPU)"
start "$PROXY_CPU" "$TMP/proxy/out.log" nginx -p "$TMP/proxy" -e "$TMP/proxy/error.log" -c "$TMP/proxy/nginx.conf"
NGINX_PID=$LAST_PID
wait_http "http://127.0.0.1:$NGINX_PORT/" 10

start_tollgate_dev
KEY=$(apply_bench_config "$TOLLGATE" "$UP_PORT" "$TMP")
wait_http "http://127.0.0.1:$TG_LISTEN/" 10
wait_http "http://127.0.0.1:$TG_LISTEN/keyed" 10 401
wait_http "http://127.0.0.1:$TG_LISTEN/keyed" 10 200 -H "apikey: $KEY"
wait_http "http://127.0.0.1:$TG_LISTEN/limited" 10 200 -H "apikey: $KEY"

if [[ -n "${BASELINE_BIN:-}" ]]; then
  [[ -x "$BASELINE_BIN" ]] || die "BASELINE_BIN $BASELINE_BIN is not an executable"
  for v in BL_LISTEN BL_ADMIN BL_GRPC BL_HTTP BL_PEER; do free_port "$v"; done
  log "baseline tollgate dev ($BASELINE_BIN): proxy 127.0.0.1:$BL_LISTEN (core $PROXY_CPU)"
  mkdir -p "$TMP/base"
  cd "$TMP/base"
  start "$PROXY_CPU" "$TMP/baseline.log" "$BASELINE_BIN" dev \
    --data-dir "$TMP/base/tollgate-data" \
    --grpc "127.0.0.1:$BL_GRPC" --http "127.0.0.1:$BL_HTTP" \
    --listen "127.0.0.1:$BL_LISTEN" --admin "127.0.0.1:$BL_ADMIN" --peer "127.0.0.1:$BL_PEER"
  BL_PID=$LAST_PID
  cd "$ROOT"
  wait_http "http://127.0.0.1:$BL_ADMIN/readyz" 60
  BL_KEY=$(TOLLGATE_SERVER="http://127.0.0.1:$BL_GRPC" TOLLGATE_TOKEN="$(cat "$TMP/base/tollgate-data/admin.token")" \
    apply_bench_config "$BASELINE_BIN" "$UP_PORT" "$TMP/base")
  wait_http "http://127.0.0.1:$BL_LISTEN/" 10
  wait_http "http://127.0.0.1:$BL_LISTEN/limited" 10 200 -H "apikey: $BL_KEY"
fi

check_quiet

((ROUNDS >= 1)) || die "ROUNDS must be at least 1"
for r in $(seq "$ROUNDS"); do
  run_wrk "nginx.$r" "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/"
  run_wrk "tollgate.$r" "$TG_PID" "http://127.0.0.1:$TG_LISTEN/"
  run_wrk "tollgate-auth.$r" "$TG_PID" "http://127.0.0.1:$TG_LISTEN/keyed" -H "apikey: $KEY"
  run_wrk "tollgate-limit.$r" "$TG_PID" "http://127.0.0.1:$TG_LISTEN/limited" -H "apikey: $KEY"
  if [[ -n "${BASELINE_BIN:-}" ]]; then
    run_wrk "baseline.$r" "$BL_PID" "http://127.0.0.1:$BL_LISTEN/"
    run_wrk "baseline-limit.$r" "$BL_PID" "http://127.0.0.1:$BL_LISTEN/limited" -H "apikey: $BL_KEY"
  fi
done

verdict() { awk -v r="$1" -v min="$2" 'BEGIN {print (r >= min) ? "meets" : "BELOW"}'; }
R_TGS=() R_AUTHS=() R_LIMITS=() R_BASES=() R_BASE_LIMITS=() ROWS="" OTHERS=""
for r in $(seq "$ROUNDS"); do
  rt=$(ratio "${RPS[tollgate.$r]}" "${RPS[nginx.$r]}")
  ra=$(ratio "${RPS[tollgate-auth.$r]}" "${RPS[tollgate.$r]}")
  rl=$(ratio "${RPS[tollgate-limit.$r]}" "${RPS[tollgate.$r]}")
  R_TGS+=("$rt") R_AUTHS+=("$ra") R_LIMITS+=("$rl")
  LABELS=(nginx tollgate tollgate-auth tollgate-limit)
  if [[ -n "${BASELINE_BIN:-}" ]]; then
    rb=$(ratio "${RPS[tollgate.$r]}" "${RPS[baseline.$r]}")
    rbl=$(ratio "${RPS[tollgate-limit.$r]}" "${RPS[baseline-limit.$r]}")
    R_BASES+=("$rb") R_BASE_LIMITS+=("$rbl")
    LABELS+=(baseline baseline-limit)
  fi
  for l in "${LABELS[@]}"; do
    case $l in
      nginx) name="nginx, reverse proxy" rel="1.00 (baseline)" ;;
      tollgate) name="Tollgate, no policies" rel="${rt}x nginx" ;;
      tollgate-auth) name="Tollgate, API-key auth" rel="${ra}x no-policy" ;;
      tollgate-limit) name="Tollgate, API-key auth + cluster rate limit" rel="${rl}x no-policy" ;;
      baseline) name="baseline binary, no policies" rel="current ${rb}x of it" ;;
      baseline-limit) name="baseline binary, API-key auth + cluster rate limit" rel="current ${rbl}x of it" ;;
    esac
    k="$l.$r"
    ROWS+="| $r | $name | ${RPS[$k]} | ${P50[$k]} | ${P99[$k]} | ${CPU[$k]}% | ${USEC[$k]} | ${LOAD[$k]}% | $rel |"$'\n'
    OTHERS+="${OTHER[$k]}% "
  done
done
R_TG=$(median "${R_TGS[@]}")
R_AUTH=$(median "${R_AUTHS[@]}")
R_LIMIT=$(median "${R_LIMITS[@]}")

cat <<EOF

## Tollgate vs nginx ($(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))

wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency (core $LOAD_CPU, with the upstream); each proxy on core $PROXY_CPU; $ROUNDS interleaved rounds; $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}'). Machine busy before the load: ${QUIET}% (of all cores); other work on core $PROXY_CPU during the runs: ${OTHERS% }.

| round | proxy | requests/s | p50 (ms) | p99 (ms) | proxy CPU | CPU µs/request (user + sys) | core $LOAD_CPU busy | ratio |
| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |
${ROWS%$'\n'}

- **Tollgate, no policies: ${R_TG}x nginx** (median of ${R_TGS[*]}; target >= 0.8x: $(verdict "$R_TG" 0.8))
- **Tollgate with API-key auth: ${R_AUTH}x no-policy** (median of ${R_AUTHS[*]}; target >= 0.9x: $(verdict "$R_AUTH" 0.9))
- **Tollgate with API-key auth and a cluster rate limit: ${R_LIMIT}x no-policy** (median of ${R_LIMITS[*]}; target >= 0.9x: $(verdict "$R_LIMIT" 0.9))
EOF
if [[ -n "${BASELINE_BIN:-}" ]]; then
  cat <<EOF
- **Current vs the baseline binary, no policies: $(median "${R_BASES[@]}")x** (median of ${R_BASES[*]})
- **Current vs the baseline binary, API-key auth + cluster rate limit: $(median "${R_BASE_LIMITS[@]}")x** (median of ${R_BASE_LIMITS[*]})
EOF
fi
