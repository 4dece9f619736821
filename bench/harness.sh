# Shared by bench/run.sh and bench/ai.sh (sourced, not run, once the caller has set ROOT,
# TOLLGATE, DURATION, WARMUP, CONNECTIONS, THREADS, PROXY_CPU, LOAD_CPU, BASE_PORT and
# defined `log` and `die`): the tools, the build, the processes and their cleanup, free
# ports, and wrk runs with the CPU each process used.

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

LAST_PID=
start() { # $1 cpu, $2 log, rest: command; sets LAST_PID
  local cpu=$1 out=$2
  shift 2
  taskset -c "$cpu" "$@" >"$out" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# Picks ports TG_LISTEN, TG_ADMIN, TG_GRPC, TG_HTTP and TG_PEER, starts `tollgate dev` with
# them on the proxy core (state in $TMP/tollgate-data), waits until its edge is ready, and
# exports TOLLGATE_SERVER and TOLLGATE_TOKEN for the CLI; sets TG_PID.
start_tollgate_dev() {
  for v in TG_LISTEN TG_ADMIN TG_GRPC TG_HTTP TG_PEER; do free_port "$v"; done
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
}

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
# work (builds, tests) on this 2-core machine skews every figure, so say so. Sets QUIET.
check_quiet() {
  local before
  before=$(core_jiffies "")
  sleep 2
  QUIET=$(busy_pct "$before" "$(core_jiffies "")")
  if ((QUIET > 5)); then
    log "warning: the machine is ${QUIET}% busy before the load starts; the figures will be skewed"
  fi
}

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

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : sprintf("%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
