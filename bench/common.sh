# Shared by bench/run.sh and bench/callgrind.sh (sourced, not run): the upstream and proxy
# configs and the Tollgate config both measure. Callers define `die`.

# Writes DIR/NAME/nginx.conf: one worker, no access log, long keep-alive, then the given
# server block(s). $1 dir, $2 name, $3 server block(s).
nginx_conf() {
  local d="$1/$2"
  mkdir -p "$d"
  cat >"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $d/body;
  proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/fastcgi;
  uwsgi_temp_path $d/uwsgi;
  scgi_temp_path $d/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  tcp_nodelay on;
$3
}
EOF
}

# The upstream: a small static 200 on 127.0.0.1:$3. $1 dir, $2 name.
upstream_nginx_conf() {
  nginx_conf "$1" "$2" "  server {
    listen 127.0.0.1:$3;
    location / { default_type text/plain; return 200 \"hello from the upstream\\n\"; }
  }"
}

# Applies the benchmark's config with tollgate $1 (TOLLGATE_SERVER and TOLLGATE_TOKEN set),
# routing to the upstream on port $2, working in directory $3, and prints an API key for the
# keyed and limited services.
apply_bench_config() {
  local bin=$1 up_port=$2 dir=$3 key_json key
  cat >"$dir/bench.yaml" <<EOF
tenants:
  - name: bench
upstreams:
  - name: static
    tenant: bench
    targets:
      - url: "http://127.0.0.1:$up_port"
services:
  - name: open              # no policies: route, proxy
    tenant: bench
    version: v1
    auth: []
    upstream: static
    routes:
      - paths: ["/"]
  - name: keyed             # API-key auth and a subscription check
    tenant: bench
    version: v1
    auth: [api_key]
    approval: auto
    upstream: static
    routes:
      - paths: ["/keyed"]
  - name: limited           # API-key auth, a subscription check and a cluster rate limit
    tenant: bench
    version: v1
    auth: [api_key]
    approval: auto
    upstream: static
    policies: [per-app]
    routes:
      - paths: ["/limited"]
policies:
  - name: per-app           # high enough never to refuse: measures the counting
    tenant: bench
    rate_limit: {limit: 1000000000, window: 1s, key: app, scope: cluster}
apps:
  - name: bench-app
    tenant: bench
subscriptions:
  - {app: bench-app, service: keyed, tenant: bench}
  - {app: bench-app, service: limited, tenant: bench}
EOF
  (cd "$dir" && timeout 120 "$bin" apply -f bench.yaml >"$dir/apply.log") || die "tollgate apply failed: $(cat "$dir/apply.log")"
  key_json=$(cd "$dir" && timeout 120 "$bin" key create --app bench-app --tenant bench -o json)
  key=$(printf '%s' "$key_json" | sed -n 's/.*"key"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' | head -n1)
  [[ -n $key ]] || die "no key in: $key_json"
  printf '%s\n' "$key"
}
