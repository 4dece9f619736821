#!/usr/bin/env bash
# Forms the Tollgate cluster once, after control-plane.yaml is applied (deploy/README.md,
# "Kubernetes"). Safe to run again: each step is skipped when already done.
#   1. `tollgate cluster init` on tollgate-cp-0 (node 1). The CLI prints the bootstrap admin
#      token once; it also stays in ./tollgate-data/admin.token on that pod's volume, which
#      is what the CLI run there by `kubectl exec` uses.
#   2. `tollgate cluster add-node` for tollgate-cp-1 (node 2) and tollgate-cp-2 (node 3).
#   3. A token of role edge, stored as the Secret tollgate-edge-join-token (key `token`)
#      that edge.yaml reads; it is never printed.
# Needs kubectl (with access to the namespace) and python3 on this machine.
# Usage: deploy/kubernetes/bootstrap.sh [NAMESPACE]     (default: tollgate)
set -euo pipefail

ns="${1:-tollgate}"
k() { kubectl --namespace "$ns" "$@"; }
# The CLI inside pod 0: it talks to its own node (--server default http://127.0.0.1:7700, or
# the container's TOLLGATE_SERVER with mTLS, deploy/README.md) and reads the admin token from
# ./tollgate-data/admin.token (the pod's working directory).
cli() { k exec tollgate-cp-0 -c control-plane -- tollgate "$@"; }
step() { printf '\n== %s\n' "$*"; }

step "waiting for the control-plane pods"
k rollout status statefulset/tollgate-cp --timeout=10m

step "1. cluster init on tollgate-cp-0 (node 1)"
if k exec tollgate-cp-0 -c control-plane -- test -s tollgate-data/admin.token; then
  echo "already initialized (tollgate-cp-0 has tollgate-data/admin.token)"
else
  cli cluster init
fi

voters() {
  cli cluster status -o json | python3 -c '
import json, sys
print(" ".join(str(n["node_id"]) for n in json.load(sys.stdin)["nodes"] if n["voter"]))'
}

for ordinal in 1 2; do
  id=$((ordinal + 1))
  addr="tollgate-cp-${ordinal}.tollgate-cp.${ns}.svc:7700"
  step "2. cluster add-node --node-id ${id} --addr ${addr}"
  if [[ " $(voters) " == *" ${id} "* ]]; then
    echo "node ${id} is already a voter"
  else
    cli cluster add-node --node-id "${id}" --addr "${addr}"
  fi
done

step "3. the edges' join token (Secret tollgate-edge-join-token)"
if k get secret tollgate-edge-join-token >/dev/null 2>&1; then
  echo "the Secret exists; to replace it: tollgate token revoke <id>, kubectl delete secret, run again"
else
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (
    umask 077
    cli token create --role edge --label kubernetes-edges -o json |
      python3 -c 'import json, sys; sys.stdout.write(json.load(sys.stdin)["token"])' >"$tmp/token"
  )
  k create secret generic tollgate-edge-join-token --from-file=token="$tmp/token"
  k label secret tollgate-edge-join-token app.kubernetes.io/part-of=tollgate
fi

step "cluster status"
cli cluster status
