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

# --- tools --------------------------------------------------------------------------------
APT_UPDATED=0
apt_update_once() {
  [[ $APT_UPDATED -eq 1 ]] && return 0
  [[ $(id -u) -eq 0 ]] || die "missing tools (nginx, wrk, curl); install them (needs root) and run again"
  log "apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  APT_UPDATED=1
}
apt_install() {
  apt_update_once
  log "apt-get install -y $*"
  # RUNLEVEL=1: the package's scripts must not start a system-wide nginx on port 80.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq "$@" >/dev/null
}
has_candidate() { apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [0-9]'; }

if ! command -v nginx >/dev/null; then
  apt_update_once
  # `nginx` is the real package on Debian 12 and 13 (nginx-light is transitional from 13 on).
  if has_candidate nginx; then apt_install nginx; else apt_install nginx-light; fi
fi
command -v wrk >/dev/null || apt_install wrk
command -v curl >/dev/null || apt_install curl
command -v taskset >/dev/null || apt_install util-linux
command -v nginx >/dev/null || die "nginx is still missing after the install"
command -v wrk >/dev/null || die "wrk is still missing after the install"

CORES=$(nproc)
((PROXY_CPU < CORES && LOAD_CPU < CORES)) || die "PROXY_CPU/LOAD_CPU must be below nproc ($CORES)"
[[ $PROXY_CPU != "$LOAD_CPU" ]] || log "warning: the proxy shares core $PROXY_CPU with wrk and the upstream"

# --- build --------------------------------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" != 1 && -z "${TOLLGATE_BIN:-}" ]]; then
  log "cargo build --profile production -p tollgate"
  (cd "$ROOT" && cargo build --profile production -p tollgate --quiet)
fi
[[ -x "$TOLLGATE" ]] || die "$TOLLGATE not found (build it, or unset SKIP_BUILD)"

# --- processes and cleanup ----------------------------------------------------------------
TMP="$(mktemp -d /tmp/tollgate-bench.XXXXXX)"
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ "${KEEP_TMP:-0}" == 1 || $rc -ne 0 ]]; then
    log "logs and configs kept in $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The next port from BASE_PORT on that nothing listens on.
NEXT_PORT=$BASE_PORT
free_port() { # $1: the variable to set
  local p=$NEXT_PORT
  while (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do
    p=$((p + 1))
    ((p < BASE_PORT + 1000)) || die "no free port from $BASE_PORT on"
  done
  NEXT_PORT=$((p + 1))
  printf -v "$1" '%s' "$p"
}

# waits (at most $2 s) until `curl` on URL $1 answers status $3 (default 200)
wait_http() {
  local url=$1 secs=$2 want=${3:-200} code
  for _ in $(seq $((secs * 10))); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "${@:4}" "$url" || true)
    [[ $code == "$want" ]] && return 0
    sleep 0.1
  done
  die "$url did not answer $want within ${secs}s (last: $code)"
}

for v in UP_PORT NGINX_PORT TG_LISTEN TG_ADMIN TG_GRPC TG_HTTP TG_PEER; do free_port "$v"; done

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

LAST_PID=
start() { # $1 cpu, $2 log, rest: command; sets LAST_PID
  local cpu=$1 out=$2
  shift 2
  taskset -c "$cpu" "$@" >"$out" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

log "upstream nginx on 127.0.0.1:$UP_PORT (core $LOAD_CPU)"
start "$LOAD_CPU" "$TMP/upstream/out.log" nginx -p "$TMP/upstream" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf"
wait_http "http://127.0.0.1:$UP_PORT/" 10

log "nginx reverse proxy on 127.0.0.1:$NGINX_PORT (core $PROXY_CPU)"
start "$PROXY_CPU" "$TMP/proxy/out.log" nginx -p "$TMP/proxy" -e "$TMP/proxy/error.log" -c "$TMP/proxy/nginx.conf"
NGINX_PID=$LAST_PID
wait_http "http://127.0.0.1:$NGINX_PORT/" 10

log "tollgate dev: proxy 127.0.0.1:$TG_LISTEN, admin API 127.0.0.1:$TG_GRPC (core $PROXY_CPU)"
cd "$TMP"
start "$PROXY_CPU" "$TMP/tollgate.log" "$TOLLGATE" dev \
  --data-dir "$TMP/tollgate-data" \
  --grpc "127.0.0.1:$TG_GRPC" --http "127.0.0.1:$TG_HTTP" \
  --listen "127.0.0.1:$TG_LISTEN" --admin "127.0.0.1:$TG_ADMIN" --peer "127.0.0.1:$TG_PEER"
TG_PID=$LAST_PID
cd "$ROOT"
wait_http "http://127.0.0.1:$TG_ADMIN/readyz" 60

export TOLLGATE_SERVER="http://127.0.0.1:$TG_GRPC"
TOLLGATE_TOKEN="$(cat "$TMP/tollgate-data/admin.token")"
export TOLLGATE_TOKEN
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

# --- measurement --------------------------------------------------------------------------
# "user system" CPU time (clock ticks) used so far by a process (all its threads) and its
# child processes (nginx's worker).
cpu_ticks() {
  local user=0 sys=0 pid f
  for pid in "$1" $(pgrep -P "$1" || true); do
    f=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    f=${f##*) }                      # drop "pid (comm) "
    read -r -a a <<<"$f"
    user=$((user + a[11]))           # utime (field 14)
    sys=$((sys + a[12]))             # stime (field 15)
  done
  echo "$user $sys"
}
HZ=$(getconf CLK_TCK)

# "busy total" jiffies of core $1 so far (from /proc/stat; idle and iowait are not busy)
core_jiffies() {
  awk -v c="cpu$1" '$1 == c {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat
}
busy_pct() { # $1 "busy total" before, $2 after
  awk -v a="$1" -v b="$2" 'BEGIN {split(a, x, " "); split(b, y, " "); d = y[2] - x[2]; printf "%.0f", d ? 100 * (y[1] - x[1]) / d : 0}'
}

# wrk latency like "1.23ms", "850.00us", "1.02s" -> milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
    printf "%.2f", n
  }'
}

# How busy the whole machine is while none of the benchmark's processes does anything: other
# work (builds, tests) on this 2-core machine skews every figure, so say so.
QUIET_BEFORE=$(core_jiffies "")
sleep 2
QUIET=$(busy_pct "$QUIET_BEFORE" "$(core_jiffies "")")
if ((QUIET > 5)); then
  log "warning: the machine is ${QUIET}% busy before the load starts; the figures will be skewed"
fi

declare -A RPS P50 P99 CPU USEC LOAD OTHER NON2XX ERRS
run_wrk() { # $1 label, $2 pid of the proxy, $3 url, rest: extra wrk args
  local label=$1 pid=$2 url=$3 out="$TMP/wrk-$1.txt" t0 t1 l0 l1 p0 p1 perf_pid=
  shift 3
  local warmup=$WARMUP
  [[ $label == *.1 ]] || warmup=1
  log "$label: warm-up ${warmup}s"
  timeout $((warmup + 30)) taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${warmup}s" "$@" "$url" >/dev/null
  log "$label: ${DURATION}s, $CONNECTIONS connections, $THREADS thread(s)"
  if [[ -n "${PERF_OUT:-}" ]]; then
    mkdir -p "$PERF_OUT"
    taskset -c "$LOAD_CPU" perf record -F "${PERF_FREQ:-499}" --call-graph "${PERF_CALLGRAPH:-dwarf,16384}" -p "$pid" -o "$PERF_OUT/$label.perf.data" \
      -- sleep "$DURATION" >"$PERF_OUT/$label.perf.log" 2>&1 &
    perf_pid=$!
  fi
  t0=$(cpu_ticks "$pid")
  l0=$(core_jiffies "$LOAD_CPU")
  p0=$(core_jiffies "$PROXY_CPU")
  timeout $((DURATION + 60)) taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" \
    --timeout 5s --latency "$@" "$url" >"$out"
  t1=$(cpu_ticks "$pid")
  l1=$(core_jiffies "$LOAD_CPU")
  p1=$(core_jiffies "$PROXY_CPU")
  [[ -z $perf_pid ]] || wait "$perf_pid" || true
  LOAD[$label]=$(busy_pct "$l0" "$l1")
  sed 's/^/    /' "$out" >&2
  RPS[$label]=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  P50[$label]=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
  P99[$label]=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
  NON2XX[$label]=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
  ERRS[$label]=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")
  CPU[$label]=$(awk -v a="$t0" -v b="$t1" -v hz="$HZ" -v s="$DURATION" \
    'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.0f", 100 * (y[1] + y[2] - x[1] - x[2]) / hz / s}')
  # CPU microseconds per request, user + system
  USEC[$label]=$(awk -v a="$t0" -v b="$t1" -v hz="$HZ" -v n="$(awk '/requests in/ {print $1}' "$out")" \
    'BEGIN {split(a, x, " "); split(b, y, " "); u = 1e6 * (y[1] - x[1]) / hz / n; k = 1e6 * (y[2] - x[2]) / hz / n; printf "%.1f (%.1f + %.1f)", u + k, u, k}')
  # time the proxy's core spent on anything but the proxy (other processes, interrupts)
  OTHER[$label]=$(($(busy_pct "$p0" "$p1") - CPU[$label]))
  if ((OTHER[$label] > 10)); then
    log "warning: during $label, ${OTHER[$label]}% of core $PROXY_CPU went to other work"
  fi
  [[ -n ${RPS[$label]} ]] || die "$label: could not read wrk's output ($out)"
  if [[ -n ${NON2XX[$label]} || -n ${ERRS[$label]} ]]; then
    log "warning: $label had ${NON2XX[$label]:-0} non-2xx answers and ${ERRS[$label]:-0} socket errors"
  fi
}

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

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : sprintf("%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
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
